//! Builds that reuse work, and builds you can watch: a worker compiles the plugin template's
//! dependencies when it starts, beside its registration, so a first upload compiles only the
//! user's own crate; a job's status shows its building phase (crates compiled of the total)
//! before its chunks run, and the build's duration apart from the run's.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Cluster, Daemon, JOIN_TOKEN};
use util::{example, fixture, word_counts, word_text, write_input};

/// How long a cold build of the template's dependencies may take on a busy two-core machine.
const COLD_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The line a worker logs once the warm-up is done.
const WARM: &str = "plugin template's dependencies compiled";

/// A copy of the wordcount example whose package is named `name`, so that its build is its own.
fn wordcount_named(dir: &Path, name: &str) -> PathBuf {
    let crate_dir = dir.join(name);
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    let manifest = std::fs::read_to_string(example("wordcount").join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"wordcount\""), "{manifest}");
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        manifest.replace("name = \"wordcount\"", &format!("name = \"{name}\"")),
    )
    .unwrap();
    std::fs::copy(example("wordcount").join("src/lib.rs"), crate_dir.join("src/lib.rs")).unwrap();
    crate_dir
}

/// Waits until the daemon's stderr holds `line`; answers the stderr then.
fn wait_for_line(daemon: &Daemon, line: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let stderr = daemon.stderr();
        if stderr.contains(line) {
            return stderr;
        }
        assert!(Instant::now() < deadline, "the daemon never logged {line:?}; its stderr:\n{stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_worker_with_an_empty_cache_compiles_the_templates_dependencies_before_its_first_job() {
    let cluster = Cluster::start(0);
    // An empty target directory of its own: nothing is compiled for any owner yet.
    let mut command = cluster.joining_worker(JOIN_TOKEN, 2);
    command.env("KILN_TARGET_DIR", cluster.dir.path().join("empty-target"));
    let worker = Daemon::start(command);
    cluster.wait_workers(1);

    let warmed = wait_for_line(&worker, WARM, COLD_BUILD_TIMEOUT);
    assert!(!warmed.contains("cannot compile the plugin template"), "{warmed}");
    // The warm-up did not hold the registration back: it registered while cargo compiled.
    let registered = warmed.find("registered with the controller").expect("the worker registered");
    assert!(registered < warmed.find(WARM).unwrap(), "{warmed}");
    for dependency in ["abi_stable", "serde", "kiln-plugin-api"] {
        assert!(
            warmed.contains(&format!("Compiling {dependency} ")),
            "the warm-up compiled no {dependency}:\n{warmed}"
        );
    }

    let name = format!("first_upload_{}", std::process::id());
    let plugin = wordcount_named(cluster.dir.path(), &name);
    let text = word_text(3, 2_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let run = cluster.submit(&plugin, &input, &[]);
    assert!(run.success, "kiln submit failed:\n{}", run.stderr);
    let output: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(output, word_counts(&text));

    // The first job's build compiled the plugin's own crate and nothing else.
    let job_build = worker.stderr()[warmed.len()..].to_owned();
    assert!(job_build.contains(&format!("Compiling {name} ")), "the plugin was not built here:\n{job_build}");
    let compiled: Vec<&str> = job_build.lines().filter_map(|line| line.split("Compiling ").nth(1)).collect();
    assert_eq!(compiled.len(), 1, "the first upload compiled more than its own crate: {compiled:?}");
}

#[test]
fn the_building_phase_shows_in_the_status_with_crates_counted_up_before_the_first_chunk() {
    let cluster = Cluster::start(1);
    cluster.wait_workers(1);
    let n_lines = 3_000;
    let text: String = (0..n_lines).map(|i| format!("line {i}\n")).collect();
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let job = cluster.submit_detached(&fixture("slow-build"), &input, &["--chunk-size", "4KiB"]);

    // Poll `kiln status` through the build: (crates done, crates total, chunks done).
    let mut seen: Vec<(u64, u64, u64)> = Vec::new();
    let deadline = Instant::now() + cluster::JOB_TIMEOUT;
    let ended = loop {
        let status = cluster.status(job);
        let build = &status["build"];
        if build.is_object() && build["finished_ms"].is_null() {
            let count = |field: &str| build[field].as_u64().unwrap();
            seen.push((count("crates_done"), count("crates_total"), status["chunks_done"].as_u64().unwrap()));
        }
        if matches!(status["state"].as_str(), Some("Succeeded" | "Failed" | "Cancelled")) {
            break status;
        }
        assert!(Instant::now() < deadline, "job {job} did not end in time: {status:#}");
    };
    assert_eq!(ended["state"], "Succeeded", "{ended:#}");
    assert_eq!(cluster.result(job), serde_json::json!(n_lines));

    // The phase was seen, before any chunk ran, with the crates compiled growing.
    assert!(seen.iter().all(|&(_, _, chunks_done)| chunks_done == 0), "chunks ran while building: {seen:?}");
    let counts: Vec<u64> = seen.iter().map(|&(done, _, _)| done).filter(|&done| done > 0).collect();
    let mut distinct = counts.clone();
    distinct.dedup();
    assert!(distinct.len() >= 2, "the count of crates compiled never grew: {seen:?}");
    assert!(counts.windows(2).all(|pair| pair[0] <= pair[1]), "the count went back: {seen:?}");
    assert!(seen.iter().all(|&(done, total, _)| total == 0 || done <= total), "{seen:?}");

    // Afterwards the build has its own duration, ended before the run started.
    let build = &ended["build"];
    let (build_started, build_finished) =
        (build["started_ms"].as_u64().unwrap(), build["finished_ms"].as_u64().unwrap());
    let run_started = ended["started_ms"].as_u64().unwrap();
    assert!(build_started <= build_finished && build_finished <= run_started, "{ended:#}");
    assert_eq!(build["crates_done"], build["crates_total"]);
    let described = cluster.kiln(&["status", &job.to_string()]);
    assert!(described.success, "{}", described.stderr);
    assert!(described.stdout.contains("  build: Built in "), "{}", described.stdout);
}
