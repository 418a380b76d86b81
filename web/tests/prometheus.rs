//! A real Prometheus server (Debian's `prometheus`) scrapes a controller, a worker and kiln-web
//! while a run goes through them, each on its own metrics address; its HTTP API then answers
//! the chunks done of that run's job and the live workers, as the run itself counted them.
//!
//! The controller and the worker run in this process, as kiln-web's embedded cluster runs
//! them, each with its own registry and endpoint; kiln-web reaches the controller as a user's
//! cluster, over TLS with its API key.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use db::TestDb;
use kiln_engine::controller::{self, ControllerConfig};
use kiln_engine::rpc::Secret;
use kiln_engine::worker::service::{self as worker_service, WorkerConfig};
use kiln_web::WebConfig;
use reqwest::StatusCode;
use web::{RUN_TIMEOUT, TestWeb, plugin_target_dir};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long Prometheus may take to answer its API, and a query to show a figure.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A Prometheus server with its configuration and data in a temporary directory, killed when
/// dropped (also when the test fails).
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes each `(job, address)` every second.
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the configuration");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PROMETHEUS}: {e}: apt-get install -y prometheus"));
        Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// The vector an instant query answers, once it has at least one sample for which `ok`
    /// holds; fails the test after [`PROMETHEUS_TIMEOUT`].
    async fn query_until(&self, query: &str, ok: impl Fn(f64) -> bool) -> Vec<serde_json::Value> {
        kiln_engine::tls::install_process_provider();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        let mut last = String::new();
        loop {
            let answer = client.get(format!("{}/api/v1/query?query={}", self.base, encoded(query))).send().await;
            if let Ok(answer) = answer {
                last = answer.text().await.unwrap_or_default();
                if let Ok(body) = serde_json::from_str::<serde_json::Value>(&last)
                    && let Some(result) = body["data"]["result"].as_array()
                    && result.iter().any(|sample| value_of(sample).is_some_and(&ok))
                {
                    return result.clone();
                }
            }
            assert!(Instant::now() < deadline, "Prometheus never answered `{query}` as expected; last: {last}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` percent-encoded for a URL's query.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a sample of an instant query's vector.
fn value_of(sample: &serde_json::Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_controller_a_worker_and_the_web_app_during_a_run() {
    let web = TestWeb::start(TestDb::sqlite(), |config: &mut WebConfig| config.metrics_listen = Some(loopback())).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut controller_config = ControllerConfig::new(loopback(), dir.path().join("controller"));
    controller_config.metrics_listen = Some(loopback());
    let controller = controller::start(controller_config).await.expect("the controller starts");
    let (builder, executor) = kiln_engine::worker::host_configs(
        dir.path().join("worker-cache"),
        Some(plugin_target_dir()),
        Path::new(env!("CARGO_BIN_EXE_kiln-web")).to_path_buf(),
        2,
        true,
    );
    let join_token = Secret::new(controller.worker_token().to_text());
    let mut worker_config = WorkerConfig::new(controller.local_addr().to_string(), join_token, builder, executor);
    worker_config.metrics_listen = Some(loopback());
    let worker = worker_service::start(worker_config).await.expect("the worker starts");

    let prometheus = Prometheus::start(&[
        ("controller", controller.metrics_addr().expect("controller metrics")),
        ("worker", worker.metrics_addr().expect("worker metrics")),
        ("web", web.web.metrics_addr().expect("web metrics")),
    ]);
    for job in ["controller", "worker", "web"] {
        prometheus.query_until(&format!("up{{job=\"{job}\"}}"), |up| up == 1.0).await;
    }
    prometheus.query_until("kiln_controller_workers_live", |live| live == 1.0).await;

    // A user runs word count on the cluster through the web app.
    let browser = web.browser();
    assert_eq!(browser.register("ops@example.com", "correct horse battery").await.status, StatusCode::SEE_OTHER);
    let api_key = controller.client_key().to_text();
    let cluster = browser.create_cluster("mine", &controller.local_addr().to_string(), &api_key).await.redirect_id();
    let wordcount = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plugins/wordcount/src/lib.rs"));
    let task = browser.create_task("Word count", "lib.rs", wordcount.expect("the example")).await.redirect_id();
    let text: String = (0..20_000).map(|i| format!("metrics are figures {} and more {}\n", i % 13, i % 7)).collect();
    let run = browser.start_run(task, cluster, text.into_bytes(), "").await.redirect_id();
    browser.finished_run(run, RUN_TIMEOUT).await;
    let stored = web.web.store().run_by_id(run).await.expect("the store").expect("the run");
    assert_eq!(stored.state.as_str(), "succeeded", "{stored:?}");
    let (job, n_chunks) = (stored.job_id.expect("a job"), stored.progress.n_chunks);
    assert!(n_chunks >= 1 && stored.progress.chunks_done == n_chunks, "{stored:?}");

    // The chunks done of the run's job, and the live workers, through Prometheus's API.
    let query = format!("kiln_controller_job_chunks_done{{job_id=\"{job}\",owner=\"web:1\"}}");
    let done = prometheus.query_until(&query, |done| done == n_chunks as f64).await;
    assert_eq!(done.len(), 1, "one series for the job: {done:?}");
    assert_eq!(done[0]["metric"]["instance"], controller.metrics_addr().expect("an address").to_string());
    let live = prometheus.query_until("kiln_controller_workers_live", |live| live == 1.0).await;
    assert_eq!(live.len(), 1, "{live:?}");
    prometheus.query_until("kiln_worker_chunks_done_total", |done| done >= n_chunks as f64).await;
    prometheus.query_until("kiln_web_runs_ended_total{state=\"succeeded\"}", |ended| ended == 1.0).await;
    prometheus.query_until("sum(kiln_web_http_requests_total{status=\"2xx\"})", |n| n > 0.0).await;
    prometheus.query_until("process_resident_memory_bytes{job=\"worker\"}", |bytes| bytes > 0.0).await;

    // Every family kiln-web exposes is documented.
    kiln_engine::tls::install_process_provider();
    let scrape = reqwest::get(format!("http://{}/metrics", web.web.metrics_addr().expect("an address")))
        .await
        .expect("a scrape")
        .text()
        .await
        .expect("its text");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).expect("the docs");
    for line in scrape.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("a TYPE line");
        let shown = if kind == "counter" { format!("`{name}_total`") } else { format!("`{name}`") };
        assert!(docs.contains(&shown), "docs/metrics.md does not document {shown}");
    }

    drop(prometheus);
    worker.shutdown().await;
    controller.shutdown().await;
    web.stop().await;
}
