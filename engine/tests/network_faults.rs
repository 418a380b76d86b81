//! Faults of the network between real processes (DESIGN §4, issue 15): a controller, three
//! workers and a `kiln` client, with in-test proxies (`util/faulty_link.rs`) on the links a
//! test breaks. Each worker reaches the controller through one link ("up": its registration,
//! heartbeats and plugin fetches) and is dialled back through another (`--advertise`: the
//! controller's calls carrying chunks), so a partition holds both directions. The plugin,
//! `ordered`, answers each chunk's first line and line count and concatenates them, so every
//! result is checked against the input's own chunks, in order, once each; and no job is left
//! running at the end.

#[path = "util/cluster.rs"]
mod cluster;
#[path = "util/faulty_link.rs"]
mod faulty_link;
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Cluster, Daemon, Follower, JOB_TIMEOUT, JOIN_TOKEN, kiln_command, worker_token};
use faulty_link::FaultyLink;
use kiln_engine::client::Client;
use kiln_engine::rpc::Secret;
use serde_json::{Value, json};
use util::{fixture, plugin_target_dir, shared_cache_dir};

/// 1000-byte chunks of the 10-byte lines below: chunk `k` holds lines `100k+1..=100k+100`.
const CHUNK: &str = "1000";
const LINES_PER_CHUNK: usize = 100;

/// `n_chunks` chunks' worth of 10-byte lines (`line00001\n`, ...).
fn write_lines(dir: &Path, n_chunks: usize) -> PathBuf {
    let text: String = (1..=n_chunks * LINES_PER_CHUNK).map(|i| format!("line{i:05}\n")).collect();
    let path = dir.join("lines.txt");
    std::fs::write(&path, text).expect("input written");
    path
}

/// What `ordered` must answer for [`write_lines`]`(n_chunks)`, computed from the cutting rule
/// alone: each chunk's first line and its 100 lines, in input order.
fn expected_pieces(n_chunks: usize) -> Value {
    let pieces: Vec<Value> = (0..n_chunks)
        .map(|k| json!({"first": format!("line{:05}", k * LINES_PER_CHUNK + 1), "lines": LINES_PER_CHUNK}))
        .collect();
    Value::Array(pieces)
}

/// The plugin's flags: every chunk sleeps `ms`, so a job lasts long enough to be hit.
fn job_flags(ms: u64) -> Vec<String> {
    ["--params", &format!("sleep-ms={ms}"), "--chunk-size", CHUNK].map(str::to_owned).to_vec()
}

/// A worker behind two links: `up` carries its calls to the controller, `down` the
/// controller's calls to it.
struct LinkedWorker {
    up: FaultyLink,
    down: FaultyLink,
    /// Its index in `cluster.workers`.
    index: usize,
}

impl LinkedWorker {
    /// Starts a worker of 2 processes behind fresh links and adds it to the cluster.
    fn start(cluster: &mut Cluster) -> LinkedWorker {
        let up = FaultyLink::to(cluster.controller.addr);
        LinkedWorker::start_behind(cluster, up, FaultyLink::unaimed())
    }

    /// Starts a worker of 2 processes behind the links given (`down` not yet aimed) and adds it
    /// to the cluster.
    fn start_behind(cluster: &mut Cluster, up: FaultyLink, down: FaultyLink) -> LinkedWorker {
        let mut command = kiln_command();
        command
            .args(["worker", "--processes", "2", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--controller", &up.addr.to_string(), "--advertise", &down.addr.to_string()])
            .args(["--join-token", &worker_token(&cluster.controller, JOIN_TOKEN)])
            // One build of the plugin serves every worker of every test, so that all three
            // take chunks from the start of each job.
            .arg("--cache-dir")
            .arg(shared_cache_dir())
            .env("KILN_TARGET_DIR", plugin_target_dir());
        let worker = Daemon::start(command);
        // The controller's dial-back waits in the link until it knows where the worker listens.
        down.aim(worker.addr);
        cluster.workers.push(worker);
        LinkedWorker { up, down, index: cluster.workers.len() - 1 }
    }

    /// The address the controller knows the worker by.
    fn address(&self) -> String {
        self.down.addr.to_string()
    }

    fn stall(&self) {
        self.up.stall();
        self.down.stall();
    }

    fn heal(&self) {
        self.up.heal();
        self.down.heal();
    }

    /// Delays every byte on both links by `delay` each way: a round trip of twice `delay`.
    fn delay_both_ways(&self, delay: Duration) {
        self.up.delay(delay, delay);
        self.down.delay(delay, delay);
    }

    /// Delays everything the worker sends by `delay`, on both links, as a slow interface of
    /// its host would.
    fn delay_sending(&self, delay: Duration) {
        self.up.delay(delay, Duration::ZERO);
        self.down.delay(Duration::ZERO, delay);
    }
}

/// A controller and three workers, each behind its own links.
fn linked_cluster() -> (Cluster, Vec<LinkedWorker>) {
    let mut cluster = Cluster::start(0);
    let linked = (0..3).map(|_| LinkedWorker::start(&mut cluster)).collect();
    cluster.wait_workers(3);
    (cluster, linked)
}

/// The only job of the cluster, once `kiln submit` has created it.
fn the_job(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).expect("jobs are JSON");
        if let Some(job) = jobs[0]["id"].as_u64() {
            return job;
        }
        assert!(Instant::now() < deadline, "no job was created");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the job has stored `n` partials.
fn wait_done(cluster: &Cluster, job: u64, n: u64) -> Value {
    cluster.wait_status(job, JOB_TIMEOUT, |status| status["chunks_done"].as_u64() >= Some(n))
}

/// Checks that the job succeeded with exactly the pieces of its input, in order, and that no
/// job of the cluster is left unfinished.
fn check(cluster: &Cluster, job: u64, n_chunks: usize) {
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), expected_pieces(n_chunks), "the partials in input order, once each");
    let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).expect("jobs are JSON");
    let unfinished: Vec<&Value> = jobs
        .as_array()
        .expect("a list of jobs")
        .iter()
        .filter(|job| !matches!(job["state"].as_str(), Some("Succeeded" | "Failed" | "Cancelled")))
        .collect();
    assert!(unfinished.is_empty(), "jobs left unfinished: {unfinished:#?}");
}

/// Waits until the worker at `address` is registered and live.
fn wait_registered(cluster: &Cluster, address: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let info = cluster.cluster_info();
        let live = info["workers"].as_array().is_some_and(|workers| workers.iter().any(|w| w["address"] == address));
        if live {
            return;
        }
        assert!(Instant::now() < deadline, "the worker at {address} did not register again; cluster: {info:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_partitioned_mid_job_loses_its_chunks_and_serves_again_once_healed() {
    let (cluster, linked) = linked_cluster();
    let n_chunks = 90;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(200).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let victim = &linked[0];
    let busy = |status: &Value| {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["address"] == victim.address().as_str() && w["in_flight"].as_u64() > Some(0))
    };
    let status =
        cluster.wait_status(job, JOB_TIMEOUT, |status| status["chunks_done"].as_u64() >= Some(6) && busy(status));
    assert!(status["chunks_done"].as_u64() < Some(n_chunks as u64 / 2), "the job is mid-way: {status:#}");

    // Longer than the controller's heartbeat timeout: the worker is lost and its chunks run
    // elsewhere; what it sent meanwhile arrives once the partition heals, late.
    victim.stall();
    std::thread::sleep(Duration::from_secs(6));
    let during = cluster.status(job);
    victim.heal();

    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    assert!(status["lost_workers"].as_u64() >= Some(1), "the partitioned worker was declared lost: {during:#}");
    wait_registered(&cluster, &victim.address(), Duration::from_secs(60));

    // Work goes on, on all three.
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(100).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    let served = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["address"] == victim.address().as_str() && w["chunks_done"].as_u64() > Some(0));
    assert!(served, "the healed worker got work: {status:#}");
    assert!(cluster.workers[victim.index].stderr().contains("registered with the controller"));
}

#[test]
fn the_controller_cut_from_every_worker_finishes_the_job_once_healed() {
    let (cluster, linked) = linked_cluster();
    let n_chunks = 60;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(200).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_done(&cluster, job, 6);

    for worker in &linked {
        worker.stall();
    }
    std::thread::sleep(Duration::from_secs(6));
    let during = cluster.cluster_info();
    assert_eq!(during["workers"].as_array().map(Vec::len), Some(0), "every worker is lost: {during:#}");
    let stalled = cluster.status(job);
    assert_eq!(stalled["state"], "Running", "the job waits for workers: {stalled:#}");
    for worker in &linked {
        worker.heal();
    }

    check(&cluster, job, n_chunks);
    cluster.wait_workers(3);
}

#[test]
fn a_client_cut_shorter_than_its_patience_follows_the_job_to_its_exact_result() {
    let (cluster, _linked) = linked_cluster();
    let client_link = FaultyLink::to(cluster.controller.addr);
    let n_chunks = 60;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let follower = Follower::start(&cluster, &client_link.addr.to_string(), "ordered", &input, &job_flags(200));
    let job = the_job(&cluster);
    wait_done(&cluster, job, 6);

    // Shorter than a watch call's deadline: the call answers late.
    client_link.stall();
    std::thread::sleep(Duration::from_secs(4));
    client_link.heal();
    // Longer than a watch call's deadline, shorter than the watcher's patience: the watcher
    // reconnects, after the job has ended meanwhile.
    client_link.cut();
    std::thread::sleep(Duration::from_secs(25));
    client_link.heal();

    let followed = follower.finish(JOB_TIMEOUT);
    assert!(followed.success, "kiln submit did not follow the job to its end:\n{}", followed.stderr);
    let output: Value = serde_json::from_str(&followed.stdout).expect("kiln submit prints the result");
    assert_eq!(output, expected_pieces(n_chunks));
    check(&cluster, job, n_chunks);
}

#[test]
fn a_client_cut_longer_than_its_patience_gives_up_and_the_job_finishes_alone() {
    let (cluster, _linked) = linked_cluster();
    let client_link = FaultyLink::to(cluster.controller.addr);
    let n_chunks = 60;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let mut flags = job_flags(200);
    flags.extend(["--patience".to_owned(), "15".to_owned()]);
    let follower = Follower::start(&cluster, &client_link.addr.to_string(), "ordered", &input, &flags);
    let job = the_job(&cluster);
    wait_done(&cluster, job, 6);

    client_link.cut();
    let followed = follower.finish(Duration::from_secs(120));
    assert!(!followed.success, "kiln submit claimed success without its controller:\n{}", followed.stdout);
    assert!(followed.stdout.is_empty(), "no result without the controller: {}", followed.stdout);
    assert!(followed.stderr.contains(&format!("job {job}")), "the message names the job:\n{}", followed.stderr);
    check(&cluster, job, n_chunks);
}

#[test]
fn the_controller_killed_while_running_resumes_to_the_exact_ordered_result() {
    let (mut cluster, _linked) = linked_cluster();
    let n_chunks = 90;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let controller = cluster.controller.addr.to_string();
    let follower = Follower::start(&cluster, &controller, "ordered", &input, &job_flags(200));
    let job = the_job(&cluster);
    wait_done(&cluster, job, n_chunks as u64 / 4);

    cluster.kill_controller();
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_controller();

    let followed = follower.finish(JOB_TIMEOUT);
    assert!(followed.success, "kiln submit did not follow the job to its end:\n{}", followed.stderr);
    let output: Value = serde_json::from_str(&followed.stdout).expect("kiln submit prints the result");
    assert_eq!(output, expected_pieces(n_chunks));
    check(&cluster, job, n_chunks);
    cluster.wait_workers(3);
}

#[test]
fn a_gray_worker_seconds_away_stays_registered_and_the_job_finishes_exactly() {
    let (cluster, linked) = linked_cluster();
    let gray = &linked[0];
    // Longer than the controller's heartbeat timeout and the heartbeat's deadline on a quick
    // link: the worker may be lost once, when the link gets slow at a stroke, and must then
    // register again over the slow link, and stay.
    gray.delay_sending(Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(4));
    wait_registered(&cluster, &gray.address(), Duration::from_secs(60));

    let n_chunks = 60;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(200).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    let lost: Vec<&Value> = status["workers"].as_array().unwrap().iter().filter(|w| w["lost"] == true).collect();
    assert!(lost.is_empty(), "no worker was lost during the job: {status:#}");
    wait_registered(&cluster, &gray.address(), Duration::from_secs(1));
    let log = cluster.workers[gray.index].stderr();
    assert!(!log.contains("cannot connect"), "the gray worker could always connect:\n{log}");
}

#[test]
fn with_every_worker_link_delayed_the_result_is_exact_and_in_order() {
    let (cluster, linked) = linked_cluster();
    // 300 ms round trips on every link: each call waits on the link as long as its chunk
    // runs, so calls of many slots overlap on the wire and answer out of order.
    for worker in &linked {
        worker.up.delay(Duration::from_millis(150), Duration::from_millis(150));
        worker.down.delay(Duration::from_millis(150), Duration::from_millis(150));
    }
    let n_chunks = 120;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(50).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    let served = status["workers"].as_array().unwrap().iter().filter(|w| w["chunks_done"].as_u64() > Some(0)).count();
    assert_eq!(served, 3, "every worker served over its slow links: {status:#}");
    cluster.wait_workers(3);
}

/// The worker's count of calls that arrived while both its slots were busy and waited there
/// for one (`kiln_worker_calls_waited_total`), read from its metrics endpoint.
fn calls_waited(worker: &Daemon) -> f64 {
    let stderr = worker.stderr();
    let addr: SocketAddr = stderr
        .lines()
        .find_map(|line| line.strip_prefix("metrics on http://"))
        .and_then(|rest| rest.trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("the worker printed no metrics address:\n{stderr}"));
    let mut stream = TcpStream::connect(addr).expect("connect to the worker's metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").expect("ask for metrics");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the metrics");
    let name = "kiln_worker_calls_waited_total ";
    let line = response.lines().find(|line| line.starts_with(name));
    line.and_then(|line| line[name.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}in the worker's metrics:\n{response}"))
}

/// The controller's view of the worker at `address` in `kiln cluster --json`, if it is live.
fn worker_summary(cluster: &Cluster, address: &str) -> Option<Value> {
    let info = cluster.cluster_info();
    info["workers"].as_array()?.iter().find(|w| w["address"] == address).cloned()
}

#[test]
fn with_delayed_links_each_worker_holds_calls_ahead_of_its_slots_and_the_result_is_exact() {
    let (cluster, linked) = linked_cluster();
    // 200 ms round trips: longer than a chunk's run, so a slot that waited for its next call
    // after each answer would idle most of the time.
    for worker in &linked {
        worker.delay_both_ways(Duration::from_millis(100));
    }
    let n_chunks = 60;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(150).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    let done: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["chunks_done"].as_u64().unwrap()).sum();
    assert_eq!(done, n_chunks as u64, "each chunk counted once: {status:#}");
    for worker in &linked {
        let waited = calls_waited(&cluster.workers[worker.index]);
        assert!(waited > 0.0, "the worker at {} had a call waiting while both slots ran: {status:#}", worker.address());
    }
    for worker in &linked {
        let summary = worker_summary(&cluster, &worker.address()).expect("the worker is live");
        assert_eq!(summary["held_ahead"], 0, "nothing is held ahead once the job ended: {summary:#}");
        assert_eq!(summary["in_flight"], 0, "{summary:#}");
    }
}

#[test]
fn a_worker_killed_while_it_holds_calls_ahead_loses_none_of_their_chunks() {
    let (mut cluster, linked) = linked_cluster();
    for worker in &linked {
        worker.delay_both_ways(Duration::from_millis(100));
    }
    let n_chunks = 90;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(300).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let victim = &linked[0];
    // Both slots busy and calls sent ahead: the controller counts them in flight.
    let deadline = Instant::now() + JOB_TIMEOUT;
    let holding = loop {
        let summary = worker_summary(&cluster, &victim.address());
        if let Some(summary) = summary.filter(|w| w["held_ahead"].as_u64() > Some(0)) {
            break summary;
        }
        assert!(Instant::now() < deadline, "the worker never held calls ahead: {:#}", cluster.status(job));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(holding["in_flight"].as_u64() > Some(2), "more chunks in flight than slots: {holding:#}");
    let before = cluster.status(job);
    assert!(before["chunks_done"].as_u64() < Some(n_chunks as u64 / 2), "the job is mid-way: {before:#}");

    cluster.workers[victim.index].kill();

    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    assert!(status["lost_workers"].as_u64() >= Some(1), "the killed worker was declared lost: {status:#}");
    let done: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["chunks_done"].as_u64().unwrap()).sum();
    assert_eq!(done, n_chunks as u64, "each chunk counted once, none twice: {status:#}");
}

#[test]
fn a_worker_whose_dial_back_times_out_keeps_trying_and_joins_once_healed() {
    let mut cluster = Cluster::start(0);
    // The controller's dial-back connects to the link and gets no handshake: it times out, and
    // the worker's activation fails with that.
    let down = FaultyLink::unaimed();
    down.stall();
    let up = FaultyLink::to(cluster.controller.addr);
    let linked = LinkedWorker::start_behind(&mut cluster, up, down);
    let deadline = Instant::now() + JOB_TIMEOUT;
    let worker = &mut cluster.workers[linked.index];
    while worker.is_running() && !worker.stderr().contains("cannot reach the worker at") {
        assert!(Instant::now() < deadline, "the dial-back never failed:\n{}", worker.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A dial-back that timed out is a link that may come back: the worker retries, as after
    // any failed connection, rather than exiting as if the controller had refused it.
    assert!(worker.is_running(), "the worker gave up:\n{}", worker.stderr());
    assert!(worker.stderr().contains("retrying"), "{}", worker.stderr());
    assert!(cluster.cluster_info()["workers"].as_array().unwrap().is_empty(), "it is not live yet");

    linked.down.heal();
    wait_registered(&cluster, &linked.address(), JOB_TIMEOUT);
    let n_chunks = 20;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(10).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    check(&cluster, job, n_chunks);
}

#[test]
fn a_result_asked_for_while_the_controller_restarts_is_read_once_it_is_back() {
    let mut cluster = Cluster::start(1);
    let n_chunks = 10;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(0).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(cluster.wait_ended(job)["state"], "Succeeded");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = cluster.controller.addr.to_string();
    let client = runtime.block_on(Client::connect(&addr, Secret::new(cluster.api_key()))).unwrap();

    // The controller goes away just as `kiln submit` asks for the result of the job it saw
    // end, and comes back: the result is stored, and the client asks again until it gets it.
    cluster.kill_controller();
    let reading = runtime.spawn(async move { client.result(job).await });
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_controller();
    let result = runtime.block_on(reading).unwrap().expect("the result is read once the controller is back");
    assert_eq!(serde_json::from_str::<Value>(&result).unwrap(), expected_pieces(n_chunks));
}

#[test]
fn a_gray_worker_s_chunks_are_copied_while_the_job_runs_and_the_worker_stays_in_use() {
    let (cluster, linked) = linked_cluster();
    let gray = &linked[0];
    // Every answer of the gray worker comes 1.5 s late: its chunks run far beyond the others'
    // times (100 ms), but it stays registered.
    gray.delay_sending(Duration::from_millis(1500));
    let n_chunks = 150;
    let input = write_lines(cluster.dir.path(), n_chunks);
    let job = cluster.submit_detached(
        &fixture("ordered"),
        &input,
        &job_flags(100).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let first_copy = cluster.wait_status(job, JOB_TIMEOUT, |status| {
        let ended = matches!(status["state"].as_str(), Some("Succeeded" | "Failed" | "Cancelled"));
        status["speculative"].as_u64() >= Some(1) || ended
    });
    assert!(first_copy["speculative"].as_u64() >= Some(1), "no copy while the job ran: {first_copy:#}");
    // Chunks done and every copy running, counted once each, still leave chunks queued: the
    // copy started during the job, not at its tail.
    let running: u64 = first_copy["workers"].as_array().unwrap().iter().map(|w| w["in_flight"].as_u64().unwrap()).sum();
    let done = first_copy["chunks_done"].as_u64().unwrap();
    assert!(done + running < n_chunks as u64, "a copy started while chunks were queued: {first_copy:#}");

    check(&cluster, job, n_chunks);
    let status = cluster.status(job);
    let gray_status = status["workers"].as_array().unwrap().iter().find(|w| w["address"] == gray.address().as_str());
    let gray_status = gray_status.unwrap_or_else(|| panic!("the gray worker got calls: {status:#}"));
    assert_eq!(gray_status["lost"], false, "the gray worker was never lost: {status:#}");
    assert!(status["speculative"].as_u64() >= Some(1), "{status:#}");
    wait_registered(&cluster, &gray.address(), Duration::from_secs(1));
}
