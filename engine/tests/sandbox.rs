//! The sandbox stops a hostile plugin, uploaded as any user would, in `kiln run-local`: it
//! cannot read the cache, a stand-in for the web app's database or /etc/shadow, reach a port
//! on loopback, write outside its temporary directory, see the environment, trace or mount;
//! and no thread, process or file it leaves outlives its job. The next job runs as usual.
//! The same attacks through a real cluster are in `sandbox_cluster.rs`.

#[path = "util/hostile.rs"]
mod hostile;
mod util;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostile::{
    SECRET, SECRET_ENV, assert_all_stopped, eventually, expose, heartbeat_path, open_dir, outcome_of, outcomes,
    plant_secret, tasks_named, unique_name,
};
use serde_json::Value;
use util::{Run, example, fixture, word_text};

/// How long a lingering thread or process may take to show up (the plugin builds first).
const SHOW_UP: Duration = Duration::from_secs(240);

/// How long the leftovers of a job may take to disappear once it has ended.
const GONE: Duration = Duration::from_secs(10);

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
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn word_counts(text: &str) -> Value {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    counts.into_iter().map(|(word, n)| (word.to_owned(), Value::from(n))).collect()
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let planted = host.drop_dir.join("planted");
    let tmp_planted = std::env::temp_dir().join(unique_name("kiln-planted-"));
    let params = [
        format!("read={}", host.cache.join("secret.txt").display()),
        format!("read={}", host.database.display()),
        "read=/etc/shadow".to_owned(),
        format!("connect={}", listener.local_addr().unwrap()),
        format!("write={}", planted.display()),
        format!("write={}", tmp_planted.display()),
        format!("env={SECRET_ENV}"),
        "ptrace=1".to_owned(),
        "mount=1".to_owned(),
    ]
    .join(",");
    let input = host.input("one.txt", "one line\n");
    let run = host.run(&fixture("hostile"), &input, &params, &[]);
    assert!(run.success, "kiln run-local failed:\n{}", run.stderr);
    let outcomes = outcomes(&run.stdout);
    // Two reads, two writes: the set keeps each distinct outcome line.
    assert_all_stopped(&outcomes, outcomes.len());
    for attack in ["read", "connect", "write", "env", "ptrace", "mount"] {
        assert!(!outcome_of(&outcomes, attack).is_empty(), "no outcome for {attack}: {outcomes:#?}");
    }
    assert!(outcome_of(&outcomes, "env").contains("not found"), "{outcomes:#?}");
    assert!(outcome_of(&outcomes, "ptrace").contains("Operation not permitted"), "{outcomes:#?}");
    assert!(outcome_of(&outcomes, "mount").contains("Operation not permitted"), "{outcomes:#?}");
    assert!(matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock), "the plugin connected");
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
    let name = unique_name("hl");
    let (thread, process) = (format!("{name}-t"), format!("{name}-p"));
    let input = host.input("one.txt", "one line\n");
    let mut child = host
        .command(&fixture("hostile"), &input, &format!("linger={name},hold=2000"), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the job runs, the thread and the process are there: the check below can fail.
    let seen = eventually(SHOW_UP, || {
        let ended = matches!(child.try_wait(), Ok(Some(_)));
        ended || (!tasks_named(&thread).is_empty() && !tasks_named(&process).is_empty())
    }) && !tasks_named(&thread).is_empty();
    if !seen {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    assert!(seen, "the lingering thread and process never showed up:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kiln run-local failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let outcomes = outcomes(&String::from_utf8_lossy(&output.stdout));
    let heartbeat = heartbeat_path(&outcomes);

    assert!(
        eventually(GONE, || tasks_named(&thread).is_empty() && tasks_named(&process).is_empty()),
        "the plugin's thread or process outlived its job"
    );
    assert!(!heartbeat.exists(), "the private directory outlived its job");
    // A thread still alive would write its heartbeat again.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!heartbeat.exists() && !heartbeat.parent().is_some_and(Path::exists), "the heartbeat came back");
    check_next_job(&host);
}
