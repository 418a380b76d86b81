//! The whole app in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven through WebDriver. A user registers, uploads the word-count
//! example as a task, runs it on the built-in "local" cluster, sees the plugin compiling before
//! the chunks run, watches the progress reach 100 % and reads the result; a plugin whose output holds markup sees it escaped; a plugin
//! that does not compile shows cargo's error. A user's account, runs and pages hold up: the
//! runs page lists only the user's runs, the 404 page is the app's, tables fit a phone or say
//! they scroll, the password can be changed and the account deleted with its data. Screenshots of the result pages are saved under
//! the test's temporary directory (`CARGO_TARGET_TMPDIR/kiln-web-screenshots`).

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use db::TestDb;
use fantoccini::{Client, ClientBuilder, Locator};
use kiln_web::WebConfig;
use web::TestWeb;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a run may take in the browser: the first one may build the plugin's dependencies.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// How long chromedriver may take to answer.
const DRIVER_STARTUP: Duration = Duration::from_secs(30);

/// A plugin whose output is a string holding a script tag.
const MARKUP_PLUGIN: &str = r#"
use kiln_plugin_api::{Chunk, MapReduce};

pub struct Markup;

impl MapReduce for Markup {
    type Partial = u64;
    type Output = String;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(Markup)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        Ok(chunk.lines().count() as u64)
    }

    fn aggregate(&self, _partials: Vec<u64>) -> Result<String, String> {
        Ok("<script>alert(1)</script>".to_owned())
    }
}

kiln_plugin_api::export_plugin!(Markup);
"#;

/// chromedriver on a free port, in a process group of its own with the Chromium it starts;
/// the whole group is killed when this is dropped (also when the test fails).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        use std::os::unix::process::CommandExt;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {CHROMEDRIVER}: {e}: apt-get install -y chromium chromium-driver")
            });
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + DRIVER_STARTUP;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; Chromium and its helpers are in the group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium with a fresh profile in `profile`.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    browser_with(driver, profile, None).await
}

/// A headless Chromium showing pages as a phone 390 pixels wide does.
async fn phone(driver: &Driver, profile: &Path) -> Client {
    let metrics = serde_json::json!({ "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 1.0 } });
    browser_with(driver, profile, Some(metrics)).await
}

/// A headless Chromium with a fresh profile in `profile`, and Chromium's mobile emulation when
/// given.
async fn browser_with(driver: &Driver, profile: &Path, mobile: Option<serde_json::Value>) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ];
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), "chrome".into());
    let mut options = serde_json::json!({ "binary": CHROMIUM, "args": args });
    if let Some(mobile) = mobile {
        options["mobileEmulation"] = mobile;
    }
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.expect("a WebDriver session")
}

/// A file of the repository, by a canonical path (chromedriver uploads only those).
fn repo_file(path: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("web/ has a parent");
    root.join(path).canonicalize().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-web-screenshots")
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::create_dir_all(screenshot_dir()).expect("screenshot dir");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// The text of the element with this id, or "" when there is none (yet).
async fn text_of(client: &Client, id: &str) -> String {
    match client.find(Locator::Id(id)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element with this id exists; answers its text.
async fn wait_for(client: &Client, id: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(element) = client.find(Locator::Id(id)).await {
            return element.text().await.unwrap_or_default();
        }
        if Instant::now() > deadline {
            let source = client.source().await.unwrap_or_default();
            panic!("#{id} did not appear within {timeout:?}; the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fill(client: &Client, id: &str, text: &str) {
    client.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}")).send_keys(text).await.expect("typing");
}

async fn click(client: &Client, id: &str) {
    client.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}")).click().await.expect("clicking");
}

/// Creates a task from the plugin file at `plugin` through the form; answers the task's page URL.
async fn create_task(client: &Client, base: &str, title: &str, plugin: &Path) -> String {
    client.goto(&format!("{base}/tasks/new")).await.expect("the new task page");
    fill(client, "title", title).await;
    fill(client, "description", "created in a real browser").await;
    fill(client, "plugin", &plugin.display().to_string()).await;
    click(client, "save-task").await;
    assert_eq!(wait_for(client, "task-title", Duration::from_secs(30)).await, title);
    client.current_url().await.expect("url").to_string()
}

/// Starts the task shown at `task_url` on the local cluster with `input`; the browser ends on
/// the run's page.
async fn start_on_local(client: &Client, task_url: &str, input: &Path) {
    client.goto(task_url).await.expect("the task page");
    click(client, "start-task").await;
    let cluster = wait_for(client, "cluster", Duration::from_secs(30)).await;
    assert!(cluster.contains("local (built in)"), "the local cluster is offered: {cluster}");
    fill(client, "input", &input.display().to_string()).await;
    click(client, "start-run").await;
    wait_for(client, "run", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_runs_word_count_in_the_browser_and_reads_escaped_results_and_errors() {
    let web = TestWeb::start(TestDb::sqlite(), |config: &mut WebConfig| {
        config.embedded_cluster = true;
        // Many small chunks on one worker of one slot, so that the run lasts while the page is
        // watched also on an idle machine (two workers of two slots took two seconds).
        config.chunk_bytes = 4 << 10;
        config.embedded_workers = 1;
        config.worker_processes = 1;
    })
    .await;
    let files = tempfile::tempdir().expect("temp dir");
    let files_path = files.path().canonicalize().expect("canonical temp dir");
    let driver = Driver::start();
    let client = browser(&driver, &files_path.join("profile")).await;
    let base = web.base.clone();

    // Register.
    client.goto(&format!("{base}/users/register")).await.expect("the register page");
    fill(&client, "email", "browser@example.com").await;
    fill(&client, "password", "correct horse battery").await;
    click(&client, "register").await;
    assert_eq!(wait_for(&client, "current-user", Duration::from_secs(30)).await, "browser@example.com");

    // Word count over an input of many chunks.
    let wordcount = repo_file("examples/plugins/wordcount/src/lib.rs");
    let task_url = create_task(&client, &base, "Word count", &wordcount).await;
    let mut text = String::new();
    // Large enough (about 12 MB in 4 KiB chunks) that the run lasts while the page is watched.
    for i in 0..250_000u32 {
        text.push_str(&format!(
            "the quick fox {} jumps over lazy dog number {}\n",
            ["red", "brown", "grey"][i as usize % 3],
            i % 7
        ));
    }
    let input = files_path.join("input.txt");
    std::fs::write(&input, &text).expect("write the input");
    start_on_local(&client, &task_url, &input).await;

    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut seen_running = false;
    let mut seen_live_axes = false;
    let mut live_labels = Vec::new();
    let mut observed: Vec<(String, String)> = Vec::new();
    // The building phase as the page showed it, with the chunks done then.
    let mut seen_building: Option<(String, String)> = None;
    loop {
        let percent = text_of(&client, "percent").await;
        let state = text_of(&client, "state").await;
        let build = text_of(&client, "build").await;
        if seen_building.is_none() && build.starts_with("Compiling") {
            seen_building = Some((build, text_of(&client, "chunks").await));
            screenshot(&client, "wordcount-building.png").await;
        }
        // Progress between the ends, in whatever state the run shows while its chunks run
        // (they start while the input still uploads).
        let ongoing = !["succeeded", "failed"].contains(&state.as_str());
        if observed.last() != Some(&(percent.clone(), state.clone())) {
            observed.push((percent.clone(), state.clone()));
        }
        if ongoing && !seen_running && percent != "0 %" && percent != "100 %" {
            seen_running = true;
            screenshot(&client, "wordcount-progress.png").await;
        }
        if ongoing && !seen_live_axes {
            // One call reads every label at once, while the page redraws them.
            let script = "return Array.from(document.querySelectorAll('#chart .x-label')).map(l => l.textContent);";
            let labels = client.execute(script, vec![]).await.unwrap_or_default();
            live_labels = serde_json::from_value::<Vec<String>>(labels).unwrap_or_default();
            seen_live_axes = live_labels.len() == 5 && live_labels.iter().all(|label| label.ends_with(" s"));
        }
        if percent == "100 %" {
            break;
        }
        assert_ne!(state, "failed", "{}", client.source().await.unwrap_or_default());
        assert!(Instant::now() < deadline, "the progress did not reach 100 %: {percent} {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = wait_for(&client, "result", RUN_TIMEOUT).await;
    assert_eq!(text_of(&client, "percent").await, "100 %");
    assert_eq!(text_of(&client, "state").await, "succeeded");
    let counted: BTreeMap<String, u64> = serde_json::from_str(&shown).expect("the page shows the result as JSON");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *expected.entry(word.to_owned()).or_default() += 1;
    }
    assert_eq!(counted, expected);
    assert!(seen_running, "the page showed the progress of the run while it ran: {observed:?}");
    let (building, chunks_then) = seen_building.expect("the page showed the plugin compiling before the chunks ran");
    assert!(chunks_then.starts_with("0 / "), "chunks ran while the page said {building:?}: {chunks_then}");
    let build_duration = text_of(&client, "build-duration").await;
    assert!(build_duration.ends_with(" s") || build_duration.ends_with(" ms"), "{build_duration:?}");
    let phases = text_of(&client, "phases").await;
    assert!(phases.contains("building"), "the timeline has the building phase: {phases}");
    assert!(seen_live_axes, "the live chart has a time axis in seconds: last seen {live_labels:?}");
    let chunks = text_of(&client, "chunks").await;
    let n_chunks: u64 = chunks.split(" / ").nth(1).and_then(|n| n.parse().ok()).expect("chunks done / in all");
    assert_finished_figures(&client, n_chunks).await;
    screenshot(&client, "wordcount-result.png").await;

    // "Run again" runs the task on the same input, kept by the server, to the same result.
    let first_run = client.current_url().await.expect("url").path().to_owned();
    click(&client, "run-again").await;
    wait_for(&client, "run", Duration::from_secs(30)).await;
    let again = client.current_url().await.expect("url").path().to_owned();
    assert_ne!(again, first_run, "a new run");
    let shown = wait_for(&client, "result", RUN_TIMEOUT).await;
    let counted_again: BTreeMap<String, u64> = serde_json::from_str(&shown).expect("the result as JSON");
    assert_eq!(counted_again, expected, "the run again gives the same result");
    let again_id: i64 = again.trim_start_matches("/runs/").parse().expect("a run id");
    let stored = web.web.store().run_by_id(again_id).await.expect("the store").expect("the run again");
    assert_eq!(stored.input_bytes, text.len() as i64, "the same input, whole");
    // The run names the version of the plugin it used: the hash of the task's source.
    let run_hash = text_of(&client, "plugin-hash").await;
    client.goto(&format!("{task_url}/source")).await.expect("the task's source");
    assert_eq!(text_of(&client, "source-hash").await, run_hash, "the run used the task's source");

    // Output with markup is shown as text, and runs no script.
    let markup = files_path.join("markup").join("lib.rs");
    std::fs::create_dir_all(markup.parent().unwrap()).unwrap();
    std::fs::write(&markup, MARKUP_PLUGIN).unwrap();
    let task_url = create_task(&client, &base, "Markup <b>output</b>", &markup).await;
    start_on_local(&client, &task_url, &input).await;
    let shown = wait_for(&client, "result", RUN_TIMEOUT).await;
    assert_eq!(shown, "\"<script>alert(1)</script>\"");
    assert!(client.get_alert_text().await.is_err(), "no alert was raised");
    let source = client.source().await.expect("page source");
    assert!(source.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || source.contains("&#60;script&#62;alert(1)"));
    assert!(!source.contains("<script>alert(1)</script>"));
    // A run of a second or so still has its table and a chart with axes.
    assert_finished_figures(&client, 1).await;
    screenshot(&client, "markup-result.png").await;

    // A crate that does not compile shows cargo's diagnostics.
    let broken = repo_file("engine/tests/fixtures/plugins/no-compile/src/lib.rs");
    let task_url = create_task(&client, &base, "Does not compile", &broken).await;
    start_on_local(&client, &task_url, &input).await;
    let error = wait_for(&client, "error", RUN_TIMEOUT).await;
    assert!(error.contains("error[E0308]: mismatched types"), "{error}");
    assert!(error.contains("src/lib.rs:16"), "{error}");
    assert!(text_of(&client, "error-section").await.contains("The plugin does not compile"));
    screenshot(&client, "build-error.png").await;

    client.close().await.expect("close the browser");
    drop(driver);
    web.stop().await;
}

/// Checks that the page of an ended run (after its reload) shows the per-worker table, whose
/// chunks add up to at least `n_chunks`, a throughput chart with both axes labelled, and the
/// plugin's hash.
async fn assert_finished_figures(client: &Client, n_chunks: u64) {
    let mut chunks = 0;
    for row in client.find_all(Locator::Css("#workers tbody tr")).await.expect("the workers' rows") {
        let cells = row.find_all(Locator::Css("td")).await.expect("cells");
        chunks += cells[2].text().await.expect("chunks").parse::<u64>().expect("a number of chunks");
    }
    assert!(chunks >= n_chunks, "the finished run's workers did {chunks} of {n_chunks} chunks");
    let labels = |css: &'static str| async move {
        let mut texts = Vec::new();
        for label in client.find_all(Locator::Css(css)).await.expect("labels") {
            texts.push(label.text().await.expect("a label"));
        }
        texts
    };
    let x = labels("#chart .x-label").await;
    assert!(x.len() == 5 && x[0] == "0 s" && x.iter().all(|l| l.ends_with(" s")), "time axis: {x:?}");
    let y = labels("#chart .y-label").await;
    assert!(y.len() == 5 && y.iter().all(|l| l.ends_with("/s")), "throughput axis: {y:?}");
    let line = client.find(Locator::Id("chart-line")).await.expect("the line").attr("points").await.expect("points");
    assert!(line.is_some_and(|points| points.split(' ').count() >= 2), "the chart draws the throughput");
    let phases = text_of(client, "phases").await;
    assert!(phases.contains("submitting") && phases.contains("running"), "the run's timeline: {phases}");
    let hash = text_of(client, "plugin-hash").await;
    assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()), "the run records its plugin: {hash}");
}

/// Waits until the page's URL ends with `path`.
async fn wait_for_path(client: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = client.current_url().await.expect("url");
        if url.path() == path {
            return;
        }
        assert!(Instant::now() < deadline, "the browser did not get to {path}: at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(client: &Client, base: &str, email: &str, password: &str) {
    client.goto(&format!("{base}/users/log_in")).await.expect("the log-in page");
    fill(client, "email", email).await;
    fill(client, "password", password).await;
    click(client, "log-in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_account_runs_and_pages_hold_up_in_the_browser_and_on_a_phone() {
    const PASSWORD: &str = "correct horse battery";
    const NEW_PASSWORD: &str = "staple grapefruit lantern";
    let web = TestWeb::start(TestDb::sqlite(), |_| {}).await;
    let base = web.base.clone();
    let key = format!("kiln-key-v2.{}.key-0123456789", "0".repeat(64));
    let wordcount = repo_file("examples/plugins/wordcount/src/lib.rs");

    // Another user, with a task, a cluster that cannot be reached and a run on it.
    let other = web.browser();
    other.register("other@example.com", PASSWORD).await;
    let other_task =
        other.create_task("Other's task", "lib.rs", std::fs::read(&wordcount).unwrap()).await.redirect_id();
    let other_cluster = other.create_cluster("other-down", "127.0.0.1:1", &key).await.redirect_id();
    let other_run = other.start_run(other_task, other_cluster, b"a b\n".to_vec(), "").await.redirect_id();

    let files = tempfile::tempdir().expect("temp dir");
    let files_path = files.path().canonicalize().expect("canonical temp dir");
    let input = files_path.join("input.txt");
    std::fs::write(&input, "one two\nthree\n").unwrap();
    let driver = Driver::start();
    let client = browser(&driver, &files_path.join("profile")).await;
    client.goto(&format!("{base}/users/register")).await.expect("the register page");
    fill(&client, "email", "me@example.com").await;
    fill(&client, "password", PASSWORD).await;
    click(&client, "register").await;
    wait_for(&client, "current-user", Duration::from_secs(30)).await;
    let task_url = create_task(&client, &base, "Mine", &wordcount).await;
    client.goto(&format!("{base}/clusters/new")).await.expect("the new cluster page");
    fill(&client, "name", "down").await;
    fill(&client, "controller_address", "127.0.0.1:1").await;
    fill(&client, "api_key", &key).await;
    click(&client, "save-cluster").await;
    wait_for(&client, "cluster-name", Duration::from_secs(30)).await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        client.goto(&task_url).await.expect("the task page");
        click(&client, "start-task").await;
        fill(&client, "input", &input.display().to_string()).await;
        click(&client, "start-run").await;
        let error = wait_for(&client, "error", Duration::from_secs(60)).await;
        assert!(error.contains("cannot connect to the controller at 127.0.0.1:1"), "{error}");
        mine.push(client.current_url().await.expect("url").path().to_owned());
    }

    // The runs page lists this user's runs only, and filters them by state.
    client.goto(&format!("{base}/runs")).await.expect("the runs page");
    let source = client.source().await.expect("page source");
    for run in &mine {
        assert!(source.contains(&format!("href=\"{run}\"")), "{run} is listed: {source}");
    }
    assert!(!source.contains(&format!("href=\"/runs/{other_run}\"")), "another user's run is not listed");
    assert!(!source.contains("Other&#39;s task") && !source.contains("other-down"), "{source}");
    assert_eq!(text_of(&client, "runs-shown").await, "2 runs.");
    client.goto(&format!("{base}/runs?state=succeeded")).await.expect("the filtered runs page");
    assert_eq!(text_of(&client, "runs-shown").await, "0 runs succeeded.");
    client.goto(&format!("{base}/runs?state=failed")).await.expect("the filtered runs page");
    assert_eq!(text_of(&client, "runs-shown").await, "2 runs failed.");
    // Each task's card says how its last run went.
    client.goto(&format!("{base}/tasks")).await.expect("the tasks page");
    assert!(text_of(&client, "tasks").await.contains("Last run: failed"));

    // An unknown address gets the app's own page, in its layout, with the security headers.
    client.goto(&format!("{base}/no/such/page")).await.expect("a missing page");
    let heading = client.find(Locator::Css("main h1")).await.expect("a heading").text().await.unwrap();
    assert_eq!(heading, "404 · Not Found");
    assert_eq!(text_of(&client, "current-user").await, "me@example.com", "in the site's layout");
    kiln_engine::tls::install_process_provider();
    let missing = reqwest::get(format!("{base}/no/such/page")).await.expect("a response");
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    for header in ["content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"] {
        assert!(missing.headers().contains_key(header), "the 404 page lacks {header}");
    }
    screenshot(&client, "not-found.png").await;

    // On a phone 390 pixels wide, the run history fits or says it scrolls sideways, and the
    // page itself never scrolls sideways.
    let cookie = client.get_named_cookie("kiln_session").await.expect("the session cookie");
    let small = phone(&driver, &files_path.join("phone-profile")).await;
    small.goto(&format!("{base}/users/log_in")).await.expect("a page of the site");
    small.add_cookie(cookie.into_owned()).await.expect("the session in the phone's browser");
    for page in ["/runs", &task_url.replace(&base, "")] {
        small.goto(&format!("{base}{page}")).await.expect("the page on a phone");
        let widths = small
            .execute(
                "const box = document.querySelector('.scroll'); const hint = box.previousElementSibling; \
                 return [window.innerWidth, document.documentElement.scrollWidth, box.scrollWidth, box.clientWidth, \
                 hint && hint.classList.contains('scroll-hint') && getComputedStyle(hint).display !== 'none' \
                 && hint.getBoundingClientRect().height > 0];",
                vec![],
            )
            .await
            .expect("the widths");
        let widths = widths.as_array().expect("an array");
        assert_eq!(widths[0].as_f64(), Some(390.0), "the phone's viewport: {widths:?}");
        assert!(widths[1].as_f64().unwrap() <= 390.0, "{page}: the page scrolls sideways: {widths:?}");
        let fits = widths[2].as_f64().unwrap() <= widths[3].as_f64().unwrap();
        assert!(fits || widths[4] == true, "{page}: the table neither fits nor says it scrolls: {widths:?}");
    }
    let png = small.screenshot().await.expect("a screenshot");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("a PNG header"));
    assert_eq!(width, 390, "the screenshot is as wide as the phone");
    screenshot(&small, "phone-task-runs.png").await;
    small.close().await.expect("close the phone's browser");

    // Change the password, then log in with the new one only.
    client.goto(&format!("{base}/users/account")).await.expect("the account page");
    fill(&client, "current-password", PASSWORD).await;
    fill(&client, "new-password", NEW_PASSWORD).await;
    click(&client, "change-password").await;
    assert!(wait_for(&client, "account-notice", Duration::from_secs(30)).await.contains("password is changed"));
    click(&client, "log-out").await;
    wait_for_path(&client, "/users/log_in").await;
    log_in(&client, &base, "me@example.com", PASSWORD).await;
    assert_eq!(wait_for(&client, "form-error", Duration::from_secs(30)).await, "wrong e-mail address or password");
    log_in(&client, &base, "me@example.com", NEW_PASSWORD).await;
    assert_eq!(wait_for(&client, "current-user", Duration::from_secs(30)).await, "me@example.com");

    // Delete the account: its rows and its plugin file go, the other user's stay.
    let me = web.web.store().user_by_email("me@example.com").await.unwrap().expect("the account").id;
    let plugin_files = || std::fs::read_dir(web.dir.path().join("data/plugins")).unwrap().count();
    assert_eq!(plugin_files(), 2);
    client.goto(&format!("{base}/users/account")).await.expect("the account page");
    fill(&client, "delete-password", NEW_PASSWORD).await;
    click(&client, "delete-account").await;
    client.accept_alert().await.expect("the confirmation");
    wait_for_path(&client, "/users/register").await;
    let store = web.web.store();
    assert_eq!(store.user_by_email("me@example.com").await.unwrap(), None);
    assert!(store.user_runs(me, None, 10).await.unwrap().is_empty() && store.tasks(me).await.unwrap().is_empty());
    assert!(store.clusters(me).await.unwrap().is_empty());
    assert_eq!(plugin_files(), 1, "only the other user's plugin file is left");
    let other_id = store.user_by_email("other@example.com").await.unwrap().expect("the other account").id;
    assert_eq!(store.user_runs(other_id, None, 10).await.unwrap().len(), 1);
    log_in(&client, &base, "me@example.com", NEW_PASSWORD).await;
    wait_for(&client, "form-error", Duration::from_secs(30)).await;

    client.close().await.expect("close the browser");
    drop(driver);
    web.stop().await;
}
