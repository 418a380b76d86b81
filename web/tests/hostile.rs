//! A hostile plugin, uploaded by an ordinary registered user and run on the web app's built-in
//! "local" cluster, tries to read the web app's database and secret key and the embedded
//! controller's data: the sandbox shows it nothing, and the next run is fine.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::time::{Duration, Instant};

use db::TestDb;
use reqwest::StatusCode;
use web::{Browser, TestWeb};

/// How long a run may take: the first one of a test run builds the plugin's dependencies.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// A plugin that tries to read every path its parameters list (one per line) and answers, for
/// each, how many bytes it read or the error it got.
const SNOOP: &str = r#"
use std::collections::BTreeMap;
use kiln_plugin_api::{Chunk, MapReduce};

pub struct Snoop(Vec<String>);

impl MapReduce for Snoop {
    type Partial = BTreeMap<String, String>;
    type Output = BTreeMap<String, String>;

    fn new(params: &str) -> Result<Self, String> {
        Ok(Snoop(params.lines().map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()))
    }

    fn run(&self, _chunk: &Chunk<'_>) -> Result<Self::Partial, String> {
        Ok(self.0.iter().map(|path| {
            let seen = match std::fs::read(path) {
                Ok(bytes) => format!("read {} bytes", bytes.len()),
                Err(e) => format!("denied: {e}"),
            };
            (path.clone(), seen)
        }).collect())
    }

    fn aggregate(&self, partials: Vec<Self::Partial>) -> Result<Self::Output, String> {
        Ok(partials.into_iter().flatten().collect())
    }
}

kiln_plugin_api::export_plugin!(Snoop);
"#;

/// Runs `task` on `cluster` with `params`; answers the finished run's page and its result.
async fn run(browser: &Browser, task: i64, cluster: i64, params: &str) -> (String, String) {
    let page = browser.start_run(task, cluster, b"one line\n".to_vec(), params).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let run = page.redirect_id();
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let page = browser.get(&format!("/runs/{run}")).await.body;
        if page.contains("data-finished=\"true\"") {
            let result = browser.get(&format!("/runs/{run}/result.json")).await.body;
            return (page, result);
        }
        assert!(Instant::now() < deadline, "run {run} did not end:\n{page}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_plugin_on_the_local_cluster_cannot_read_the_web_apps_or_controllers_files() {
    let web = TestWeb::start(TestDb::sqlite(), |config| {
        config.database_url = None; // the database in the data directory, as the quickstart has it
        config.embedded_cluster = true;
        config.embedded_workers = 1;
        config.worker_processes = 1;
    })
    .await;
    let data = web.dir.path().join("data");
    let targets = [
        data.join("kiln.db"),
        data.join("secret.key"),
        data.join("cluster").join("controller").join("controller.db"),
        std::path::PathBuf::from("/etc/shadow"),
    ];
    for target in &targets[..3] {
        assert!(target.exists(), "{} exists for the plugin to try", target.display());
    }
    let browser = web.browser();
    assert_eq!(browser.register("mallory@example.com", "correct horse battery").await.status, StatusCode::SEE_OTHER);
    let task = browser.create_task("Snoop", "lib.rs", SNOOP.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let params: Vec<String> = targets.iter().map(|path| path.display().to_string()).collect();

    let (page, result) = run(&browser, task, cluster, &params.join("\n")).await;
    if page.contains("state-succeeded") {
        let seen: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
        for path in &params {
            let answer = seen[path].as_str().unwrap_or_else(|| panic!("no answer for {path}: {result}"));
            assert!(answer.starts_with("denied"), "the plugin read {path}: {answer}");
        }
    } else {
        assert!(page.contains("state-failed"), "{page}");
    }

    // The cluster and the web app are fine: the next run of the same plugin succeeds.
    let (page, result) = run(&browser, task, cluster, "").await;
    assert!(page.contains("state-succeeded"), "{page}");
    assert_eq!(result.trim(), "{}");
    web.stop().await;
}
