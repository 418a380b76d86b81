//! What a build reports as it goes: cargo's lines, and its progress through the crates (how
//! many of how many, which one now), which the worker passes on to the job's status.
//!
//! Cargo says how many crates a build has only on a terminal's progress bar, so the total
//! comes from `cargo metadata` (its resolution for the host, without dev-dependencies), read
//! beside the build; the crates done are the packages cargo reported an artifact for
//! (compiled or found up to date), and the current one is the last "Compiling" line.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::Command;

/// What a build reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildEvent<'a> {
    /// A line of cargo's output ("Compiling serde v1.0.228") or a compiler warning.
    Line(&'a str),
    /// Cargo's progress through the crates.
    Crates {
        /// Crates compiled or found up to date so far.
        done: u32,
        /// Crates in the build; 0 while not known yet.
        total: u32,
        /// The crate cargo started compiling last; empty before the first.
        current: &'a str,
    },
}

/// The callback a build reports to.
pub type Progress<'a> = &'a (dyn Fn(BuildEvent<'_>) + Send + Sync);

/// Counts the crates of one build from cargo's messages, which arrive on two pipes (artifacts
/// on stdout, "Compiling" lines on stderr), and reports each change.
pub(super) struct CrateCounter<'a> {
    progress: Progress<'a>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Packages with an artifact, by package id.
    done: HashSet<String>,
    total: u32,
    current: String,
}

impl<'a> CrateCounter<'a> {
    pub fn new(progress: Progress<'a>) -> CrateCounter<'a> {
        CrateCounter { progress, counts: Mutex::new(Counts::default()) }
    }

    /// Cargo made (or found fresh) an artifact of the package `package_id`.
    pub fn artifact(&self, package_id: &str) {
        self.change(|counts| counts.done.insert(package_id.to_owned()));
    }

    /// A line of cargo's stderr: "Compiling NAME vX.Y.Z (...)" names the crate now compiling.
    pub fn line(&self, line: &str) {
        let Some(name) = line.trim_start().strip_prefix("Compiling ").and_then(|rest| rest.split(' ').next()) else {
            return;
        };
        self.change(|counts| {
            counts.current = name.to_owned();
            true
        });
    }

    /// The build has `total` crates.
    pub fn total(&self, total: u32) {
        self.change(|counts| {
            counts.total = total;
            true
        });
    }

    /// The build succeeded: every crate it has is done. The total becomes the count of crates
    /// cargo reported, since the resolution `cargo metadata` reads can list a few crates more
    /// (it unifies features across build, normal and dev dependencies, as builds do not).
    pub fn finish(&self) {
        self.change(|counts| {
            counts.total = u32::try_from(counts.done.len()).unwrap_or(u32::MAX);
            counts.current.clear();
            true
        });
    }

    /// Applies `change` and reports the counts when it says they changed; the callback runs
    /// outside the lock.
    fn change(&self, change: impl FnOnce(&mut Counts) -> bool) {
        let report = {
            let mut counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
            change(&mut counts).then(|| {
                let done = u32::try_from(counts.done.len()).unwrap_or(u32::MAX);
                let total = counts.total;
                // A total read from a resolution that missed a crate never reads "13/12".
                (if total > 0 { done.min(total) } else { done }, total, counts.current.clone())
            })
        };
        if let Some((done, total, current)) = report {
            (self.progress)(BuildEvent::Crates { done, total, current: &current });
        }
    }
}

/// How `cargo metadata` is run for a build's crate count: outside the sandbox (it runs no
/// crate code), offline, on the owner's cargo home that the fetch filled.
pub(super) struct MetadataQuery<'a> {
    pub cargo: &'a Path,
    pub manifest: &'a Path,
    pub patch: &'a str,
    pub cargo_home: &'a Path,
    pub work_dir: &'a Path,
    /// The host's target triple, for `--filter-platform`.
    pub host: &'a str,
}

/// The number of crates the build compiles: the packages reachable from the root by normal
/// and build dependencies, on the host. `None` when cargo could not say; the build goes on
/// without a total.
pub(super) async fn count_crates(query: &MetadataQuery<'_>) -> Option<u32> {
    let mut command = Command::new(query.cargo);
    command
        .args(["metadata", "--format-version", "1", "--frozen", "--manifest-path"])
        .arg(query.manifest)
        .arg("--config")
        .arg(query.patch)
        .current_dir(query.work_dir)
        .env("CARGO_HOME", query.cargo_home)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if !query.host.is_empty() {
        command.args(["--filter-platform", query.host]);
    }
    let output = command.output().await.ok()?;
    if !output.status.success() {
        tracing::debug!(manifest = %query.manifest.display(), "cargo metadata failed; the build has no crate total");
        return None;
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    count_reachable(&metadata)
}

/// Counts the nodes of `metadata`'s resolution reachable from its root without dev-dependencies.
fn count_reachable(metadata: &serde_json::Value) -> Option<u32> {
    let resolve = metadata.get("resolve")?;
    let root = resolve.get("root")?.as_str()?;
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in resolve.get("nodes")?.as_array()? {
        let id = node.get("id")?.as_str()?;
        let deps = node.get("deps").and_then(|deps| deps.as_array()).map(Vec::as_slice).unwrap_or_default();
        let targets = deps.iter().filter(|dep| {
            let kinds = dep.get("dep_kinds").and_then(|kinds| kinds.as_array());
            // Older cargo has no dep_kinds: count the dependency.
            kinds.is_none_or(|kinds| kinds.iter().any(|kind| kind.get("kind").and_then(|k| k.as_str()) != Some("dev")))
        });
        edges.insert(id, targets.filter_map(|dep| dep.get("pkg")?.as_str()).collect());
    }
    let mut seen = HashSet::from([root]);
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        for &next in edges.get(id).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(next) {
                pending.push(next);
            }
        }
    }
    u32::try_from(seen.len()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_counts_what_the_root_needs_without_dev_dependencies() {
        let metadata = serde_json::json!({"resolve": {"root": "p", "nodes": [
            {"id": "p", "deps": [
                {"pkg": "a", "dep_kinds": [{"kind": null}]},
                {"pkg": "t", "dep_kinds": [{"kind": "dev"}]},
                {"pkg": "b", "dep_kinds": [{"kind": "build"}]}
            ]},
            {"id": "a", "deps": [{"pkg": "c", "dep_kinds": [{"kind": null}]}]},
            {"id": "b", "deps": []},
            {"id": "c", "deps": []},
            {"id": "t", "deps": [{"pkg": "u", "dep_kinds": [{"kind": null}]}]},
            {"id": "u", "deps": []}
        ]}});
        assert_eq!(count_reachable(&metadata), Some(4));
        assert_eq!(count_reachable(&serde_json::json!({"resolve": null})), None);
    }

    #[test]
    fn the_counter_reports_crates_done_of_the_total_and_the_one_compiling() {
        let events = Mutex::new(Vec::new());
        let record = |event: BuildEvent<'_>| {
            if let BuildEvent::Crates { done, total, current } = event {
                events.lock().unwrap().push((done, total, current.to_owned()));
            }
        };
        let counter = CrateCounter::new(&record);
        counter.line("   Compiling serde v1.0.228");
        counter.artifact("serde 1.0.228");
        counter.artifact("serde 1.0.228");
        counter.line("warning: unused variable");
        counter.total(3);
        counter.line("Compiling abi_stable v0.11.3");
        counter.artifact("abi_stable 0.11.3");
        counter.finish();
        assert_eq!(
            events.into_inner().unwrap(),
            [
                (0, 0, "serde".to_owned()),
                (1, 0, "serde".to_owned()),
                (1, 3, "serde".to_owned()),
                (1, 3, "abi_stable".to_owned()),
                (2, 3, "abi_stable".to_owned()),
                (2, 2, String::new()),
            ]
        );
    }
}
