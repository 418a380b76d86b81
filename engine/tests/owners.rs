//! Owners and the build sandbox: a build script can neither write outside its output nor reach
//! the network, two owners on one worker can neither read nor change each other's files, and a
//! plugin with a crates.io dependency still builds and runs. Builds go through the `kiln`
//! binary as users' crates do.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Cluster, misbehave_totals};
use kiln_engine::owner::Owner;
use serde_json::Value;
use util::{fixture, plugin_target_dir, run_local, word_text};

/// The other owner of the two-owner test; one name in every run, so its dependencies compile
/// once per test target directory.
const OWNER_B: &str = "owner-b";

/// Copies the `evil-build` fixture into `dir` with an `evil.conf` of `directives`.
fn evil_crate(dir: &Path, directives: &[String]) -> PathBuf {
    let source = fixture("evil-build");
    let copy = dir.join("evil-build");
    for file in ["Cargo.toml", "build.rs", "src/lib.rs"] {
        std::fs::create_dir_all(copy.join(file).parent().unwrap()).unwrap();
        std::fs::copy(source.join(file), copy.join(file)).unwrap();
    }
    std::fs::write(copy.join("evil.conf"), directives.join("\n")).unwrap();
    copy
}

/// A listener on a free loopback port that nobody should reach.
fn listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn nobody_connected(listener: &TcpListener) {
    let accepted = listener.accept().map(|(_, peer)| peer);
    assert!(matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock), "a build connected: {accepted:?}");
}

/// Checks a build error says what cargo says when a build script fails, with the script's
/// own reasons for each attempt.
fn check_stopped_build(message: &str, n_writes: usize) {
    assert!(message.contains("failed to run custom build command for `evil-build"), "{message}");
    let Some(reasons) = message.lines().find(|line| line.contains("evil build script was stopped")) else {
        panic!("the build script's panic is missing:\n{message}");
    };
    assert_eq!(reasons.matches("cannot write").count(), n_writes, "{reasons}");
    assert!(reasons.contains("cannot connect to 127.0.0.1:"), "{reasons}");
    assert!(!message.contains("evil build script wrote") && !message.contains("evil build script connected"));
}

#[test]
fn a_build_script_writing_outside_its_output_and_connecting_fails_with_cargos_message_and_does_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let outside = temp.path().join("outside.txt");
    let listener = listener();
    let directives = [format!("write={}", outside.display()), format!("connect={}", listener.local_addr().unwrap())];
    let plugin = evil_crate(temp.path(), &directives);
    let input = temp.path().join("input.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();

    let run = run_local(&plugin, &input, &[]);
    assert!(!run.success, "the evil build succeeded:\n{}", run.stderr);
    check_stopped_build(&run.stderr, 1);
    assert!(!outside.exists(), "the build script wrote outside its output directory");
    nobody_connected(&listener);
}

#[test]
fn a_plugin_with_a_crates_io_dependency_builds_and_runs() {
    let temp = tempfile::tempdir().unwrap();
    let text = word_text(41, 5_000);
    let input = temp.path().join("words.txt");
    std::fs::write(&input, &text).unwrap();

    let run = run_local(&fixture("crates-dep"), &input, &["--chunk-size", "16KiB"]);
    assert!(run.success, "{}", run.stderr);
    let output: Value = serde_json::from_str(&run.stdout).unwrap();
    let bytes: usize = text.lines().map(str::len).sum();
    assert_eq!(output, serde_json::json!({"lines": text.lines().count().to_string(), "bytes": bytes.to_string()}));
}

/// The libraries cached for `owner` in the worker cache `cache_dir`.
fn libraries_of(cache_dir: &Path, owner: &Owner) -> Vec<PathBuf> {
    let plugins = cache_dir.join("owners").join(owner.dir_name()).join("plugins");
    let Ok(entries) = std::fs::read_dir(&plugins) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path().join(format!("plugin{}", std::env::consts::DLL_SUFFIX)))
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found
}

/// The worker's cache directory: the cluster's only `worker-cache-*`.
fn worker_cache(cluster: &Cluster) -> PathBuf {
    let mut caches: Vec<PathBuf> = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("worker-cache-"))
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    caches.remove(0)
}

/// The first file named `name` under `dir`, depth first in name order.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    entries
        .iter()
        .find(|path| path.is_file() && path.file_name().is_some_and(|n| n == name))
        .cloned()
        .or_else(|| entries.iter().filter(|path| path.is_dir()).find_map(|path| find_file(path, name)))
}

fn must_exist(paths: &[&PathBuf], when: &str) {
    for path in paths {
        assert!(path.is_file(), "{} must exist {when} for the test to mean anything", path.display());
    }
}

/// Owner B's `snoop` plugin tries to read `paths`, which exist (checked from the test process)
/// right before and after its job; every read must be refused.
fn b_cannot_read(cluster: &Cluster, input: &Path, paths: &[&PathBuf]) {
    must_exist(paths, "before owner b's plugin runs");
    let names: Vec<String> = paths.iter().map(|path| path.display().to_string()).collect();
    let snooped = cluster.submit(&fixture("snoop"), input, &["--owner", OWNER_B, "--params", &names.join("|")]);
    assert!(snooped.success, "{}", snooped.stderr);
    must_exist(paths, "after owner b's plugin ran");
    let seen: Value = serde_json::from_str(&snooped.stdout).unwrap();
    for name in &names {
        let what = seen[name].as_str().unwrap_or_default();
        assert!(what.starts_with("error: Permission denied"), "owner b's plugin reading {name}: {what}");
    }
}

#[test]
fn two_owners_on_one_worker_cannot_read_or_change_each_others_files() {
    let mut cluster = Cluster::start(0);
    cluster.add_worker(3);
    let owner_a = Owner::key_holder();
    let text = format!("owner a's secret line\n{}", word_text(43, 3_000));
    let input = cluster.dir.path().join("secret.txt");
    std::fs::write(&input, &text).unwrap();

    // Owner B's snoop is built first, so that its runs below are quick while A's job still runs.
    let warm_up = cluster.submit(&fixture("snoop"), &input, &["--owner", OWNER_B]);
    assert!(warm_up.success, "{}", warm_up.stderr);

    // Owner A (the key holder) runs a one-chunk job that sleeps, so its input is on the
    // controller's disk (`inputs/<job>.txt`, deleted when the job ends; the worker keeps
    // chunks in memory only) and its library in the worker's cache.
    let job_a = cluster.submit_detached(&fixture("misbehave"), &input, &["--params", "sleep-at=1:60000"]);
    let cache = worker_cache(&cluster);
    let deadline = Instant::now() + Duration::from_secs(600);
    while libraries_of(&cache, &owner_a).is_empty() {
        assert!(Instant::now() < deadline, "owner a's plugin was never built");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wait_status(job_a, Duration::from_secs(60), |status| status["state"] == "Running");
    let library_a = libraries_of(&cache, &owner_a).remove(0);
    let root_a = plugin_target_dir().join("owners").join(owner_a.dir_name());
    let built_a = root_a.join("target").join("release").join(format!("libmisbehave{}", std::env::consts::DLL_SUFFIX));
    let input_a = cluster.data_dir().join("inputs").join(format!("{job_a}.txt"));
    b_cannot_read(&cluster, &input, &[&input_a, &library_a, &built_a]);

    // Owner B's build script tries to change what A's next build links: a planted crate in A's
    // target directory, A's cached and built libraries, and a source in A's registry.
    let registry_a = root_a.join("cargo-home").join("registry");
    let source_a = find_file(&registry_a, "lib.rs").expect("owner a's registry holds its dependencies' sources");
    let planted = root_a.join("target").join("release").join("deps").join("libplanted.rlib");
    let victims = [&library_a, &built_a, &source_a];
    let before: Vec<Vec<u8>> = victims.iter().map(|path| std::fs::read(path).unwrap()).collect();
    let listener = listener();
    let mut directives: Vec<String> =
        [&planted].into_iter().chain(victims).map(|path| format!("write={}", path.display())).collect();
    directives.push(format!("connect={}", listener.local_addr().unwrap()));
    let evil = evil_crate(cluster.dir.path(), &directives);
    let refused = cluster.submit(&evil, &input, &["--owner", OWNER_B]);
    assert!(!refused.success, "owner b's evil build succeeded:\n{}", refused.stderr);
    check_stopped_build(&refused.stderr, directives.len() - 1);
    assert!(!planted.exists(), "owner b planted a file in owner a's target directory");
    for (path, bytes) in victims.iter().zip(&before) {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "owner b changed {}", path.display());
    }
    nobody_connected(&listener);

    // A's job is unharmed; its result is then in the controller's database (WAL mode), which
    // B's plugin cannot read either; its input is gone.
    let status = cluster.wait_ended(job_a);
    assert_eq!(status["state"], "Succeeded", "{status}");
    assert_eq!(cluster.result(job_a), misbehave_totals(&text));
    assert!(!input_a.exists(), "the controller keeps an ended job's input");
    let database = cluster.data_dir().join("controller.db");
    let wal = cluster.data_dir().join("controller.db-wal");
    b_cannot_read(&cluster, &input, &[&database, &wal]);

    // A's next build (a changed crate, so it compiles again in A's target directory and links
    // A's dependencies) gives the exact result.
    let next = cluster.dir.path().join("misbehave-next");
    for file in ["Cargo.toml", "src/lib.rs"] {
        std::fs::create_dir_all(next.join(file).parent().unwrap()).unwrap();
        std::fs::copy(fixture("misbehave").join(file), next.join(file)).unwrap();
    }
    let lib = next.join("src/lib.rs");
    let mut source = std::fs::read_to_string(&lib).unwrap();
    source.push_str("\n// owner a's next build\n");
    std::fs::write(&lib, source).unwrap();
    let rerun = cluster.submit(&next, &input, &["--chunk-size", "16KiB"]);
    assert!(rerun.success, "{}", rerun.stderr);
    assert_eq!(serde_json::from_str::<Value>(&rerun.stdout).unwrap(), misbehave_totals(&text));
    assert_eq!(libraries_of(&cache, &owner_a).len(), 2, "owner a's next job did not build anew");

    let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).unwrap();
    let mut owners: Vec<(u64, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|job| (job["id"].as_u64().unwrap(), job["owner"].as_str().unwrap()))
        .collect();
    owners.sort();
    let expected: Vec<&str> = vec![OWNER_B, "cli", OWNER_B, OWNER_B, OWNER_B, "cli"];
    assert_eq!(owners.iter().map(|(_, owner)| *owner).collect::<Vec<_>>(), expected);
}
