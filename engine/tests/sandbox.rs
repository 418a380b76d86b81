//! The sandbox stops a hostile plugin, uploaded as any user would, in `kiln run-local`: it
//! cannot read the cache, a stand-in for the web app's database or /etc/shadow, reach a port
//! on loopback, write outside its temporary directory, see the environment, trace or mount;
//! and no thread, process or file it leaves outlives its job. The next job runs as usual.
//! The same attacks through a real cluster are in `sandbox_cluster.rs`.

#[path = "util/hostile.rs"]
mod hostile;
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostile::{
    Linger, SECRET, SECRET_ENV, assert_every_attack_stopped, assert_not_reached, bait_port, eventually, every_attack,
    expose, heartbeat_path, open_dir, outcome_of, outcomes, plant_secret, tasks_named, unique_name,
};
use serde_json::Value;
use util::{Run, example, fixture, word_counts, word_text, write_input};

/// How long a lingering thread or process may take to show up (the plugin builds first).
const SHOW_UP: Duration = Duration::from_secs(240);

/// A test's directory: a plugin cache of its own with a secret in it, a stand-in for the web
/// app's database, and a directory everybody may write in.
struct Host {
    dir: tempfile::TempDir,
    cache: PathBuf,
    database: PathBuf,
    drop_dir: PathBuf,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    expose(dir.path());
    let cache = dir.path().join("cache");
    plant_secret(&cache.join("secret.txt"));
    let database = plant_secret(&dir.path().join("web").join("kiln.db"));
    let drop_dir = open_dir(&dir.path().join("open"));
    Host { dir, cache, database, drop_dir }
}

impl Host {
    /// `kiln run-local` of the `hostile` fixture (or `plugin`) with its cache and a secret
    /// in its environment.
    fn command(&self, plugin: &Path, input: &Path, params: &str, extra: &[&str]) -> Command {
        let mut command = util::kiln();
        command
            .env("KILN_CACHE_DIR", &self.cache)
            .env(SECRET_ENV, SECRET)
            .arg("run-local")
            .arg("--plugin")
            .arg(plugin)
            .arg("--input")
            .arg(input)
            .args(["--params", params])
            .args(extra);
        command
    }

    fn run(&self, plugin: &Path, input: &Path, params: &str, extra: &[&str]) -> Run {
        self.command(plugin, input, params, extra).output().expect("kiln runs").into()
    }

    fn input(&self, name: &str, text: &str) -> PathBuf {
        write_input(self.dir.path(), name, text)
    }
}

/// The next job on the same host runs and is right.
fn check_next_job(host: &Host) {
    let text = word_text(11, 500);
    let input = host.input("words.txt", &text);
    let run = host.run(&example("wordcount"), &input, "", &[]);
    assert!(run.success, "the next job failed:\n{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), word_counts(&text));
}

#[test]
fn a_plugin_can_read_nothing_of_the_host_reach_no_port_and_write_nowhere() {
    let host = host();
    let listener = bait_port();
    let planted = host.drop_dir.join("planted");
    let tmp_planted = std::env::temp_dir().join(unique_name("kiln-planted-"));
    let params = every_attack(
        &[host.cache.join("secret.txt"), host.database.clone()],
        &[listener.local_addr().unwrap().to_string()],
        &[planted.clone(), tmp_planted.clone()],
    );
    let input = host.input("one.txt", "one line\n");
    let run = host.run(&fixture("hostile"), &input, &params, &[]);
    assert!(run.success, "kiln run-local failed:\n{}", run.stderr);
    let outcomes = outcomes(&run.stdout);
    assert_every_attack_stopped(&outcomes);
    assert!(outcome_of(&outcomes, "ptrace").contains("Operation not permitted"), "{outcomes:#?}");
    assert!(outcome_of(&outcomes, "mount").contains("Operation not permitted"), "{outcomes:#?}");
    assert_not_reached(&listener);
    assert!(!planted.exists() && !tmp_planted.exists(), "the plugin wrote outside its directory");
    check_next_job(&host);
}

#[test]
fn without_the_sandbox_the_same_attacks_succeed_so_the_checks_can_fail() {
    let host = host();
    let planted = host.drop_dir.join("planted");
    let params = format!("read={},write={}", host.database.display(), planted.display());
    let input = host.input("one.txt", "one line\n");
    let run = host.run(&fixture("hostile"), &input, &params, &["--insecure-no-sandbox"]);
    assert!(run.success, "kiln run-local failed:\n{}", run.stderr);
    let outcomes = outcomes(&run.stdout);
    assert!(outcome_of(&outcomes, "read").contains(SECRET), "{outcomes:#?}");
    assert!(planted.exists(), "{outcomes:#?}");
}

#[test]
fn no_thread_process_or_file_of_a_plugin_outlives_its_job() {
    let host = host();
    let linger = Linger::new("hl");
    let input = host.input("one.txt", "one line\n");
    let mut child = host
        .command(&fixture("hostile"), &input, &linger.params, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the job runs, the thread and the process are there: the check below can fail.
    let seen = eventually(SHOW_UP, || {
        let ended = matches!(child.try_wait(), Ok(Some(_)));
        ended || linger.both_running()
    }) && !tasks_named(&linger.thread).is_empty();
    if !seen {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    assert!(seen, "the lingering thread and process never showed up:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kiln run-local failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let outcomes = outcomes(&String::from_utf8_lossy(&output.stdout));
    let heartbeat = heartbeat_path(&outcomes);

    linger.assert_gone();
    assert!(!heartbeat.exists(), "the private directory outlived its job");
    // A thread still alive would write its heartbeat again.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!heartbeat.exists() && !heartbeat.parent().is_some_and(Path::exists), "the heartbeat came back");
    check_next_job(&host);
}
