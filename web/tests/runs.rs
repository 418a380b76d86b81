//! Runs on the embedded cluster, over HTTP and the progress websocket: plugins really build
//! and run (in the shared plugin target directory), progress streams to the page's socket,
//! results are stored, and a restart of the web server picks its runs up again.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use db::TestDb;
use kiln_web::WebConfig;
use reqwest::StatusCode;
use web::{Browser, RUN_TIMEOUT, TestWeb, progress_messages};

/// Small chunks, so that a small input makes many of them.
const CHUNK_BYTES: u64 = 16 << 10;

/// A plugin that counts lines slowly, so that a run lasts long enough to be interrupted.
const SLOW_LINES: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct SlowLines;

impl MapReduce for SlowLines {
    type Partial = u64;
    type Output = u64;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(SlowLines)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        std::thread::sleep(std::time::Duration::from_millis(250));
        Ok(chunk.lines().count() as u64)
    }

    fn aggregate(&self, partials: Vec<u64>) -> Result<u64, String> {
        Ok(partials.iter().sum())
    }
}

kiln_plugin_api::export_plugin!(SlowLines);
"#;

/// A plugin that fails on any line holding "boom", naming the line.
const BOOM: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct Boom;

impl MapReduce for Boom {
    type Partial = u64;
    type Output = u64;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(Boom)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        for (i, line) in chunk.lines().enumerate() {
            if line.contains("boom") {
                return Err(format!("found <boom> on line {}", chunk.first_line() + i as u64));
            }
        }
        Ok(chunk.lines().count() as u64)
    }

    fn aggregate(&self, partials: Vec<u64>) -> Result<u64, String> {
        Ok(partials.iter().sum())
    }
}

kiln_plugin_api::export_plugin!(Boom);
"#;

/// A plugin that panics while reading the line its parameters name, and counts lines.
const PANICS_ON_A_LINE: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct PanicsOnALine(u64);

impl MapReduce for PanicsOnALine {
    type Partial = u64;
    type Output = u64;

    fn new(params: &str) -> Result<Self, String> {
        params.trim().parse().map(PanicsOnALine).map_err(|e| format!("expected a line number: {e}"))
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        let mut lines = 0;
        for (number, _text) in chunk.numbered_lines() {
            lines += 1;
            if number == self.0 {
                panic!("deliberate panic while reading a line");
            }
        }
        Ok(lines)
    }

    fn aggregate(&self, partials: Vec<u64>) -> Result<u64, String> {
        Ok(partials.iter().sum())
    }
}

kiln_plugin_api::export_plugin!(PanicsOnALine);
"#;

/// A plugin that prints a line of markup per chunk and in its aggregate, and counts lines.
const PRINTS_MARKUP: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct Markup;

impl MapReduce for Markup {
    type Partial = u64;
    type Output = u64;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(Markup)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        let lines = chunk.lines().count() as u64;
        println!("<script>chunk at line {}: {lines} lines</script>", chunk.first_line());
        Ok(lines)
    }

    fn aggregate(&self, partials: Vec<u64>) -> Result<u64, String> {
        println!("<b>aggregating {} partials</b>", partials.len());
        Ok(partials.iter().sum())
    }
}

kiln_plugin_api::export_plugin!(Markup);
"#;

fn embedded(config: &mut WebConfig) {
    config.embedded_cluster = true;
    config.embedded_workers = 2;
    config.worker_processes = 1;
    config.chunk_bytes = CHUNK_BYTES;
}

/// About `n_lines` lines of words from a small vocabulary, the same every time.
fn input(n_lines: usize) -> String {
    let words = ["kiln", "fire", "clay", "glaze", "pot", "ash", "Kiln", "cone"];
    let mut state = 7u64;
    let mut text = String::new();
    for _ in 0..n_lines {
        for i in 0..6 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            if i > 0 {
                text.push(' ');
            }
            text.push_str(words[(state >> 33) as usize % words.len()]);
        }
        text.push('\n');
    }
    text
}

async fn registered(web: &TestWeb, email: &str) -> Browser {
    let browser = web.browser();
    assert_eq!(browser.register(email, "correct horse battery").await.status, StatusCode::SEE_OTHER);
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_the_local_cluster_streams_progress_and_stores_its_result() {
    for db in TestDb::both().await {
        let web = TestWeb::start(db, embedded).await;
        let browser = registered(&web, "runner@example.com").await;
        let wordcount = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plugins/wordcount/src/lib.rs"));
        let task = browser.create_task("Word count", "lib.rs", wordcount.unwrap()).await.redirect_id();
        let cluster = browser.local_cluster(task).await;
        let text = input(20_000);
        let run = browser.start_run(task, cluster, text.clone().into_bytes(), "").await.redirect_id();

        let messages = progress_messages(&browser, run).await;
        let last = messages.last().expect("progress messages");
        assert_eq!(last["state"], "succeeded", "{last}");
        assert_eq!(last["percent"], 100.0);
        let n_chunks = last["n_chunks"].as_u64().unwrap();
        assert!(n_chunks > 4, "the input was cut into {n_chunks} chunks");
        assert_eq!(last["chunks_done"].as_u64(), Some(n_chunks));
        assert_eq!(last["bytes_total"].as_u64(), Some(text.len() as u64));
        assert!(
            messages.iter().any(|m| m["state"] == "running" && m["workers"].as_array().is_some_and(|w| !w.is_empty())),
            "some message shows the workers at work: {messages:?}"
        );

        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for word in text.split_whitespace() {
            *expected.entry(word.to_owned()).or_default() += 1;
        }
        let download = browser.get(&format!("/runs/{run}/result.json")).await;
        assert_eq!(download.status, StatusCode::OK);
        let counted: BTreeMap<String, u64> = serde_json::from_str(&download.body).expect("the result is JSON");
        assert_eq!(counted, expected);

        let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
        assert!(page.contains("id=\"duration\"") && page.contains("&#34;Kiln&#34;: "), "{page}");
        let task_page = browser.get(&format!("/tasks/{task}")).await.body;
        assert!(task_page.contains("state-succeeded") && task_page.contains("/s</td>"), "runs with throughput");
        let cluster_page = browser.get(&format!("/clusters/{cluster}")).await.body;
        assert!(cluster_page.contains("2 live workers, "), "{cluster_page}");
        assert!(cluster_page.contains(&format!("/runs/{run}")));
        web.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_watched_again_after_the_web_server_restarts() {
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let browser = registered(&web, "restart@example.com").await;
    let task = browser.create_task("Slow lines", "lib.rs", SLOW_LINES.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let text = input(12_000);
    let n_lines = text.lines().count() as u64;
    let run = browser.start_run(task, cluster, text.into_bytes(), "").await.redirect_id();

    // Stop the server once some chunks are done, well before all are.
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let page = browser.get(&format!("/runs/{run}")).await.body;
        let done = page
            .split("id=\"chunks\">")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(!page.contains("data-finished=\"true\""), "the run ended too soon:\n{page}");
        assert!(Instant::now() < deadline, "the run did not start:\n{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cookie = browser.cookie("kiln_session").unwrap();
    let (dir, db) = web.stop_keeping_data().await;

    let web = TestWeb::start_in(dir, db, embedded).await;
    let browser = Browser::with_cookie(&web.base, "kiln_session", &cookie);
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    assert!(page.contains("state-succeeded"), "{page}");
    let result = browser.get(&format!("/runs/{run}/result.json")).await.body;
    assert_eq!(result.trim(), n_lines.to_string());
    web.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_can_be_cancelled() {
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let browser = registered(&web, "cancel@example.com").await;
    let task = browser.create_task("Slow lines", "lib.rs", SLOW_LINES.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let run = browser.start_run(task, cluster, input(20_000).into_bytes(), "").await.redirect_id();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !browser.get(&format!("/runs/{run}")).await.body.contains("state-running") {
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = browser.submit(&format!("/runs/{run}"), &format!("/runs/{run}/cancel"), &[]).await;
    assert_eq!(cancelled.location, Some(format!("/runs/{run}")));
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    assert!(page.contains("state-cancelled"), "{page}");
    assert!(!page.contains("id=\"cancel-run\""), "an ended run has no cancel button");
    web.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_error_is_shown_with_its_chunk_and_lines() {
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let browser = registered(&web, "boom@example.com").await;
    let task = browser.create_task("Boom", "lib.rs", BOOM.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let mut text = input(3_000);
    text.push_str("this line goes boom\n");
    let n_lines = text.lines().count();
    let run = browser.start_run(task, cluster, text.into_bytes(), "").await.redirect_id();
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    assert!(page.contains("state-failed") && page.contains("The plugin failed"), "{page}");
    // The plugin's own `Err`: its decision, so the run fails at once.
    let message = format!("failed after 1 attempt: found &#60;boom&#62; on line {n_lines}");
    assert!(page.contains(&message), "{page}");
    assert!(page.contains(&format!("-{n_lines}) failed")), "the chunk's line range ends at the line: {page}");
    web.stop().await;
}

/// The text of the run page's error block, its HTML escapes undone.
fn error_block(page: &str) -> String {
    let start = page.find("<pre id=\"error\"").expect("an error block");
    let text = &page[start..];
    let text = &text[text.find('>').unwrap() + 1..text.find("</pre>").unwrap()];
    let unescaped = text.replace("&#60;", "<").replace("&#62;", ">").replace("&#34;", "\"").replace("&#39;", "'");
    unescaped.replace("&#38;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_a_line_deep_in_the_input_is_shown_with_that_line_after_two_attempts() {
    const TARGET: usize = 123_456;
    // Markup, quotes and a control character, which must reach the page escaped; then more
    // than the 200 characters the message quotes.
    const HEAD: &str = "0123456 <b>bold</b> \"quoted\" bell\u{7} ";
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let browser = registered(&web, "panics@example.com").await;
    let task = browser.create_task("Panics", "lib.rs", PANICS_ON_A_LINE.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let mut text = String::new();
    for i in 1..=130_000 {
        if i == TARGET {
            text.push_str(HEAD);
            text.push_str(&"x".repeat(300));
            text.push('\n');
        } else {
            text.push_str(&format!("{i:07} plain\n"));
        }
    }
    let run = browser.start_run(task, cluster, text.into_bytes(), &TARGET.to_string()).await.redirect_id();
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    assert!(page.contains("state-failed") && page.contains("The plugin failed"), "{page}");
    assert!(!page.contains("<b>bold"), "the line's markup is escaped: {page}");
    let error = error_block(&page);
    // The same panic at the same place twice: the run ends then, not after four attempts.
    assert!(error.contains("failed after 2 attempts:\n  panicked at src/lib.rs:"), "{error}");
    assert!(error.contains("deliberate panic while reading a line"), "{error}");
    // The line's number in its file, the file's name and the first 200 characters, quoted
    // with the control character escaped, each on a line of its own under what failed.
    let quoted =
        format!(r#""0123456 <b>bold</b> \"quoted\" bell\u{{7}} {}" (cut)"#, "x".repeat(200 - HEAD.chars().count()));
    let place = format!("\n  on line {TARGET} of input.txt: {quoted}");
    assert!(error.contains(&place), "no {place:?} in:\n{error}");
    assert!(!error.contains('\u{7}'), "a control character got through: {error:?}");
    web.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_plugin_printed_is_shown_escaped_on_the_run_page_apart_from_the_result() {
    let web = TestWeb::start(TestDb::sqlite(), embedded).await;
    let browser = registered(&web, "printer@example.com").await;
    let task = browser.create_task("Markup", "lib.rs", PRINTS_MARKUP.as_bytes().to_vec()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;
    let text = input(3_000);
    let run = browser.start_run(task, cluster, text.clone().into_bytes(), "").await.redirect_id();
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    assert!(page.contains("state-succeeded"), "{page}");
    let download = browser.get(&format!("/runs/{run}/result.json")).await;
    assert_eq!(download.body.trim(), text.lines().count().to_string(), "the result is the count alone");
    assert!(page.contains("id=\"plugin-output\""), "{page}");
    assert!(!page.contains("<script>chunk at line"), "markup the plugin printed is escaped: {page}");
    // The first chunk starts at line 1 and the section names it.
    assert!(page.contains("&#60;script&#62;chunk at line 1: "), "{page}");
    assert!(page.contains("== chunk 0 ("), "{page}");
    // What the aggregate printed on the cluster's worker is there too, after the chunks'.
    let aggregate = page.find("== aggregate stdout\n&#60;b&#62;aggregating ").expect(&page);
    assert!(page.rfind("== chunk ").is_some_and(|last_chunk| last_chunk < aggregate), "{page}");
    web.stop().await;
}

/// Starts a task on a cluster with an input URL instead of an upload; answers the response.
async fn start_run_on_url(browser: &Browser, task: i64, cluster: i64, url: &str) -> i64 {
    let csrf = browser.csrf(&format!("/tasks/{task}/start")).await;
    let form = reqwest::multipart::Form::new()
        .text("csrf_token", csrf)
        .text("cluster_id", cluster.to_string())
        .text("processes", "2")
        .text("params", "")
        .text("input_url", url.to_owned());
    browser.post_multipart(&format!("/tasks/{task}/start"), form).await.redirect_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_an_input_url_on_the_local_cluster_and_a_url_outside_its_roots_fails_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let text = input(8_000);
    std::fs::write(data.path().join("words.txt"), &text).unwrap();
    let root = std::fs::canonicalize(data.path()).unwrap();
    let roots = vec![root.clone()];
    let web = TestWeb::start(TestDb::sqlite(), move |config| {
        embedded(config);
        config.file_input_roots = roots;
    })
    .await;
    let browser = registered(&web, "urls@example.com").await;
    let wordcount = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plugins/wordcount/src/lib.rs"));
    let task = browser.create_task("Word count", "lib.rs", wordcount.unwrap()).await.redirect_id();
    let cluster = browser.local_cluster(task).await;

    let url = format!("file://{}/words.txt", root.display());
    let run = start_run_on_url(&browser, task, cluster, &url).await;
    let messages = progress_messages(&browser, run).await;
    let last = messages.last().expect("progress messages");
    assert_eq!(last["state"], "succeeded", "{last}");
    assert!(last["n_chunks"].as_u64().unwrap() > 4, "the object was split: {last}");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *expected.entry(word.to_owned()).or_default() += 1;
    }
    let download = browser.get(&format!("/runs/{run}/result.json")).await;
    let counted: BTreeMap<String, u64> = serde_json::from_str(&download.body).expect("the result is JSON");
    assert_eq!(counted, expected, "the workers read the URL's object");
    let page = browser.get(&format!("/runs/{run}")).await;
    assert!(page.body.contains(&url), "the run names its input URL");

    let outside = start_run_on_url(&browser, task, cluster, "file:///etc/hostname").await;
    let page = browser.finished_run(outside, RUN_TIMEOUT).await;
    assert!(page.body.contains("state-failed"), "{}", page.body);
    assert!(page.body.contains("outside the directories this controller reads"), "{}", page.body);
    web.stop().await;
}
