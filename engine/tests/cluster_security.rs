//! Who may do what on a cluster: clients need the API key, workers the join token, and a
//! worker takes calls only from the controller it registered with (over TLS, from the
//! controller's certificate). Each refusal is checked to
//! leave nothing run.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::time::Duration;

use cluster::{Cluster, JOB_TIMEOUT, kiln_command, misbehave_totals};
use kiln_engine::rpc::{ChunkInput, ExecLimits, JobPlugin, Secret, TaskError, WorkerClient};
use kiln_engine::tls::ca::self_signed;
use kiln_engine::tls::key::Trust;
use kiln_engine::tls::verify::dial_controller;
use kiln_engine::tls::{CONTROLLER_NAME, Fingerprint, worker_name};
use kiln_engine::tls::{frames, link};
use rustls::pki_types::ServerName;
use serde_bytes::ByteBuf;
use serde_json::Value;
use util::{example, fixture, word_text, write_input};

fn jobs(cluster: &Cluster) -> Value {
    let run = cluster.kiln(&["jobs", "--json"]);
    assert!(run.success, "kiln jobs failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn a_wrong_api_key_is_refused_and_nothing_runs() {
    let cluster = Cluster::start(1);
    let input = write_input(cluster.dir.path(), "words.txt", &word_text(1, 500));
    let (plugin, input) = (example("wordcount"), input.to_str().unwrap().to_owned());

    let submit = ["submit", "--plugin", plugin.to_str().unwrap(), "--input", &input];
    let (upper, prefix) = (cluster::API_KEY.to_uppercase(), &cluster::API_KEY[1..]);
    for key in ["wrong-key", upper.as_str(), prefix] {
        let run = cluster.kiln_with_key(&submit, key);
        assert!(!run.success, "submit with key {key:?} succeeded");
        assert!(run.stderr.contains("refused the API key"), "key {key:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    for command in [&["jobs"][..], &["status", "1"], &["result", "1"], &["cancel", "1"], &["cluster"]] {
        let run = cluster.kiln_with_key(command, "wrong-key");
        assert!(!run.success && run.stderr.contains("refused the API key"), "{command:?}: {}", run.stderr);
    }
    assert_eq!(jobs(&cluster), serde_json::json!([]), "no job was created");
}

#[test]
fn a_worker_with_a_wrong_join_token_is_refused_and_gets_no_work() {
    let mut cluster = Cluster::start(0);
    let mut intruder = cluster.worker_with_token("not-the-join-token", 2);
    assert_eq!(intruder.wait_exit(Duration::from_secs(20)), Some(false), "the refused worker keeps running");
    assert!(intruder.stderr().contains("join token"), "worker stderr:\n{}", intruder.stderr());
    assert_eq!(cluster.cluster_info()["workers"], serde_json::json!([]));

    let text = word_text(2, 2_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let job = cluster.submit_detached(&example("wordcount"), &input, &["--chunk-size", "16KiB"]);
    std::thread::sleep(Duration::from_secs(1));
    let status = cluster.status(job);
    assert_eq!((status["state"].as_str(), status["chunks_done"].as_u64()), (Some("Queued"), Some(0)), "{status:#}");

    // The job was fine all along: a worker with the token runs it.
    cluster.add_worker(2);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
}

/// Checks that a stranger's call got no answer: the worker refused its link.
fn refused<T: std::fmt::Debug>(answer: Result<Result<T, TaskError>, tarpc::client::RpcError>, call: &str) {
    assert!(answer.is_err(), "{call} by a stranger was answered: {answer:?}");
}

#[test]
fn a_stranger_calling_a_workers_port_is_refused_and_nothing_runs() {
    let mut cluster = Cluster::start_unconfined(0);
    let worker_addr = cluster.add_worker(1);
    let text: String = (0..4_000).map(|i| format!("line {i} of the input\n")).collect();
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let record = cluster.dir.path().join("runs");
    let intruder_record = cluster.dir.path().join("intruder-runs");
    // The first chunk sleeps, so the job is prepared and running while the stranger calls.
    let params = format!("record={},sleep-at=1:2000", record.display());
    let job = cluster.submit_detached(&fixture("misbehave"), &input, &["--params", &params, "--chunk-size", "16KiB"]);
    cluster.wait_status(job, JOB_TIMEOUT, |status| status["state"] == "Running");

    let plugin_hash = cluster.status(job)["plugin_hash"].as_str().unwrap().to_owned();
    let fingerprint = Fingerprint::from_hex(&cluster::trust_of(&cluster.controller)).unwrap();
    let worker_id = cluster.cluster_info()["workers"][0]["worker_id"].as_u64().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Plain TCP, TLS without a certificate, and TLS with a self-signed certificate that
        // claims to be the controller: the worker takes none of them.
        let pinned = |identity| dial_controller(Trust::Pinned(fingerprint), "x:1", None, identity).unwrap().unwrap();
        let dials = [None, Some(pinned(None)), Some(pinned(Some(self_signed(CONTROLLER_NAME).unwrap())))];
        for dial in dials {
            let addr = worker_addr.to_string();
            let link = match &dial {
                None => link::connect(&addr, None, Duration::from_secs(5)).await,
                Some(dial) => {
                    let name = ServerName::try_from(worker_name(worker_id)).unwrap();
                    link::connect_named(&addr, dial, name, Duration::from_secs(5)).await
                }
            };
            let Ok(link) = link else { continue };
            let worker = WorkerClient::new(tarpc::client::Config::default(), frames::dialled(link)).spawn();
            let ctx = tarpc::context::current;
            let guess = Secret::generate();
            let params = format!("record={}", intruder_record.display());
            let plugin = JobPlugin {
                owner: "cli".into(),
                plugin_hash: plugin_hash.clone(),
                params,
                limits: ExecLimits::default(),
            };
            refused(worker.prepare(ctx(), guess.clone(), 999, plugin).await, "prepare");
            let chunk = ChunkInput {
                file: "in".into(),
                first_line: 1_000_001,
                text: ByteBuf::from(b"stranger's line\n".to_vec()),
                source: None,
            };
            refused(worker.run_chunks(ctx(), guess.clone(), job, vec![chunk]).await, "run_chunks");
            refused(worker.combine(ctx(), guess.clone(), job, vec![]).await, "combine");
            refused(worker.stage_partials(ctx(), guess.clone(), job, 0, vec![]).await, "stage_partials");
            refused(worker.aggregate(ctx(), guess.clone(), job, 0, 0, u64::MAX).await, "aggregate");
            refused(worker.fetch_output(ctx(), guess.clone(), job, 0).await, "fetch_output");
            refused(worker.release(ctx(), guess.clone(), job).await, "release");
        }
    });

    // The job went on undisturbed (not released), and only its own chunks ran, once each.
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), misbehave_totals(&text));
    let runs = std::fs::read_to_string(&record).unwrap();
    assert!(!runs.contains("1000001") && !runs.contains("1000002"), "a stranger's chunk ran: {runs}");
    assert_eq!(runs.lines().count() as u64, status["n_chunks"].as_u64().unwrap());
    assert!(!intruder_record.exists(), "a stranger's plugin instance ran");
}

#[test]
fn generated_keys_are_printed_once_and_kept_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("controller");
    let start = || {
        let mut command = kiln_command();
        command.arg("controller").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&data_dir);
        cluster::Daemon::start(command)
    };

    let first = start();
    let stderr = first.stderr();
    let stored = |file: &str| std::fs::read_to_string(data_dir.join(file)).unwrap().trim().to_owned();
    let (api_key, join_token) = (stored("api_key"), stored("join_token"));
    assert!(api_key.len() >= 32 && join_token.len() >= 32 && api_key != join_token);
    assert!(stderr.contains(&format!("API key (for clients): {api_key}")), "stderr:\n{stderr}");
    assert!(stderr.contains(&format!("join token (for workers): {join_token}")), "stderr:\n{stderr}");
    drop(first);

    let second = start();
    let stderr = second.stderr();
    assert!(!stderr.contains(&api_key) && !stderr.contains("generated"), "keys printed again:\n{stderr}");
    let jobs = kiln_command()
        .args(["jobs", "--controller", &second.addr.to_string(), "--api-key", &api_key])
        .output()
        .unwrap();
    assert!(jobs.status.success(), "the stored key was not kept: {}", String::from_utf8_lossy(&jobs.stderr));
}
