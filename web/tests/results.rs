//! Results of any size: a run's result is read from the cluster in pieces into a file of the
//! data directory (not the database), the run page shows its first 64 KiB cut at a character
//! boundary, the download streams it whole to its owner only, and it goes with the account.
//! A result longer than the server keeps fails the run with the reason.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use db::TestDb;
use kiln_web::WebConfig;
use reqwest::StatusCode;
use sqlx::Row;
use web::{Browser, RUN_TIMEOUT, TestWeb};

const PASSWORD: &str = "correct horse battery";

/// How much of a result the run page shows.
const PREVIEW: usize = 64 << 10;

/// A plugin whose result is every line of its input, in order: as long as the input.
const LINES: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct Lines;

impl MapReduce for Lines {
    type Partial = Vec<String>;
    type Output = Vec<String>;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(Lines)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Vec<String>, String> {
        Ok(chunk.lines().map(str::to_owned).collect())
    }

    fn aggregate(&self, partials: Vec<Vec<String>>) -> Result<Vec<String>, String> {
        Ok(partials.concat())
    }
}

kiln_plugin_api::export_plugin!(Lines);
"#;

fn embedded(config: &mut WebConfig) {
    config.embedded_cluster = true;
    config.embedded_workers = 2;
    config.worker_processes = 1;
    config.chunk_bytes = 16 << 10;
}

/// `n` numbered lines of two- and three-byte characters, so that a cut at a byte count often
/// falls inside one.
fn input(n: usize) -> String {
    (0..n).map(|i| format!("{i:05} é火 {}\n", "ü漢".repeat(i % 7))).collect()
}

async fn registered(web: &TestWeb, email: &str) -> Browser {
    let browser = web.browser();
    assert_eq!(browser.register(email, PASSWORD).await.status, StatusCode::SEE_OTHER);
    browser
}

/// The text of the element `<pre id="ID" ...>` of a page, unescaped as a browser shows it.
fn pre_text(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("<pre id=\"{id}\""))?;
    let text = &page[start..];
    let text = &text[text.find('>')? + 1..text.find("</pre>")?];
    Some(
        text.replace("&#34;", "\"")
            .replace("&#39;", "'")
            .replace("&#60;", "<")
            .replace("&#62;", ">")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#38;", "&")
            .replace("&amp;", "&"),
    )
}

/// The files in `dir`.
fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).expect("the results directory").map(|entry| entry.unwrap().path()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_result_is_kept_in_a_file_previewed_cut_and_downloaded_whole_by_its_owner_only() {
    for db in TestDb::both().await {
        let backend = db.backend;
        let web = TestWeb::start(db, embedded).await;
        let owner = registered(&web, "lines@example.com").await;
        let task = owner.create_task("Lines", "lib.rs", LINES.as_bytes().to_vec()).await.redirect_id();
        let cluster = owner.local_cluster(task).await;
        let text = input(10_000);
        let run = owner.start_run(task, cluster, text.clone().into_bytes(), "").await.redirect_id();
        let page = owner.finished_run(run, RUN_TIMEOUT).await.body;
        assert!(page.contains("state-succeeded"), "{backend:?}: {page}");

        // The download: the whole result, exactly the input's lines as JSON, computed here.
        let response = owner.client.get(owner.url(&format!("/runs/{run}/result.json"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        let disposition = format!("attachment; filename=\"run-{run}-result.json\"");
        assert_eq!(header("content-disposition"), Some(disposition));
        let body = response.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(body, serde_json::to_string(&lines).unwrap(), "{backend:?}: the result is the input's lines");
        assert!(body.len() > 4 * PREVIEW, "the result ({} bytes) is longer than the preview", body.len());

        // The page: the first 64 KiB, cut before the character the 64 KiB boundary falls in.
        let mut end = PREVIEW;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        let shown = pre_text(&page, "result").expect("the page shows the result");
        assert_eq!(shown.len(), end, "{backend:?}: the preview's length");
        assert!(body.starts_with(&shown), "{backend:?}: the preview is the result's beginning");
        assert!(page.contains("Showing the first 64.0 KiB of "), "{page}");
        assert!(page.contains("download the whole result</a>"), "{page}");

        // Kept as a private file of the data directory, not in the database.
        let results = web.dir.path().join("data").join("results");
        let files = files_in(&results);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), body);
        assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
        let pool = sqlx::AnyPool::connect(&web.db.url).await.expect("connect to the app's database");
        let row = sqlx::query("SELECT result, result_bytes FROM runs WHERE id = $1")
            .bind(run)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row.try_get::<Option<String>, _>("result").unwrap(), None, "{backend:?}");
        assert_eq!(row.try_get::<Option<i64>, _>("result_bytes").unwrap(), Some(body.len() as i64));
        pool.close().await;

        // Another user finds neither the run nor its result.
        let stranger = registered(&web, "stranger@example.com").await;
        for path in [format!("/runs/{run}"), format!("/runs/{run}/result.json")] {
            let page = stranger.get(&path).await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "{backend:?}: GET {path}");
            assert!(!page.body.contains("00001 é火"), "{backend:?}: GET {path} shows nothing of the result");
        }

        // The result goes with the account.
        let deleted = owner.submit("/users/account", "/users/delete", &[("password", PASSWORD)]).await;
        assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
        assert!(files_in(&results).is_empty(), "{backend:?}: no result is left");
        web.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_result_is_shown_whole_and_indented() {
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let owner = registered(&web, "short@example.com").await;
    let task = owner.create_task("Lines", "lib.rs", LINES.as_bytes().to_vec()).await.redirect_id();
    let cluster = owner.local_cluster(task).await;
    let text = input(20);
    let run = owner.start_run(task, cluster, text.clone().into_bytes(), "").await.redirect_id();
    let page = owner.finished_run(run, RUN_TIMEOUT).await.body;
    let shown = pre_text(&page, "result").expect("the page shows the result");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(shown, serde_json::to_string_pretty(&lines).unwrap());
    assert!(page.contains("Download the result (") && !page.contains("Showing the first"), "{page}");

    // Deleting the task deletes its runs and their results.
    let results = web.dir.path().join("data").join("results");
    assert_eq!(files_in(&results).len(), 1);
    let deleted = owner.submit(&format!("/tasks/{task}"), &format!("/tasks/{task}/delete"), &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    assert!(files_in(&results).is_empty(), "no result is left");
    web.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_longer_than_the_server_keeps_fails_its_run_with_the_sizes() {
    let web = TestWeb::start(TestDb::sqlite(), |config| {
        embedded(config);
        config.max_result_bytes = 100_000;
    })
    .await;
    let owner = registered(&web, "long@example.com").await;
    let task = owner.create_task("Lines", "lib.rs", LINES.as_bytes().to_vec()).await.redirect_id();
    let cluster = owner.local_cluster(task).await;
    let run = owner.start_run(task, cluster, input(6_000).into_bytes(), "").await.redirect_id();
    let page = owner.finished_run(run, RUN_TIMEOUT).await.body;
    // The embedded controller has the server's limit, refuses the result before any byte is
    // sent, and the page names the server's flag to raise.
    assert!(page.contains("state-failed"), "{page}");
    assert!(page.contains("more than the 97.7 KiB allowed: raise kiln-web --max-result-bytes"), "{page}");
    assert!(files_in(&web.dir.path().join("data").join("results")).is_empty());
    web.stop().await;
}
