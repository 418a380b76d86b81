//! A hostile plugin, uploaded by an ordinary registered user and run on the web app's built-in
//! "local" cluster, tries to read the web app's database and secret key and the embedded
//! controller's data, to reach a port on loopback, to write outside its directory, to read the
//! server's environment, to trace and to mount: the sandbox lets it do none of it, and the next
//! run is fine. (The whole list of attacks, threads and processes that outlive a job included,
//! runs in run-local and on a cluster in the engine's `sandbox*.rs` tests.)

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use db::TestDb;
use reqwest::StatusCode;
use web::{Browser, RUN_TIMEOUT, TestWeb};

/// A plugin that makes every attack its parameters list (one per line: a path to read, or
/// `write:PATH`, `connect:ADDR`, `env:NAME`, `ptrace`, `mount`) and answers, for each, what it
/// got or `denied: ERROR`.
const SNOOP: &str = r#"
use std::collections::BTreeMap;
use std::io::Write;
use kiln_plugin_api::{Chunk, MapReduce};

unsafe extern "C" {
    fn ptrace(request: i64, pid: i32, addr: usize, data: usize) -> i64;
    fn mount(source: *const u8, target: *const u8, fstype: *const u8, flags: u64, data: usize) -> i32;
}

fn attack(line: &str) -> Result<String, String> {
    let err = |e: std::io::Error| e.to_string();
    if let Some(path) = line.strip_prefix("write:") {
        let mut file = std::fs::File::create(path).map_err(err)?;
        file.write_all(b"written by a plugin").map_err(err)?;
        Ok("wrote".to_owned())
    } else if let Some(addr) = line.strip_prefix("connect:") {
        let mut stream = std::net::TcpStream::connect(addr).map_err(err)?;
        stream.write_all(b"hello from a plugin").map_err(err)?;
        Ok("connected".to_owned())
    } else if let Some(name) = line.strip_prefix("env:") {
        std::env::var(name).map_err(|e| e.to_string())
    } else if line == "ptrace" {
        // SAFETY: PTRACE_TRACEME on ourselves; the sandbox refuses it.
        if unsafe { ptrace(0, 0, 0, 0) } == 0 { Ok("traced".to_owned()) } else { Err(err(std::io::Error::last_os_error())) }
    } else if line == "mount" {
        let target = format!("{}\0", std::env::temp_dir().display());
        // SAFETY: NUL-terminated strings; the sandbox refuses the call.
        let done = unsafe { mount(c"none".as_ptr().cast(), target.as_ptr(), c"tmpfs".as_ptr().cast(), 0, 0) };
        if done == 0 { Ok("mounted".to_owned()) } else { Err(err(std::io::Error::last_os_error())) }
    } else {
        std::fs::read(line).map(|bytes| format!("read {} bytes", bytes.len())).map_err(err)
    }
}

pub struct Snoop(Vec<String>);

impl MapReduce for Snoop {
    type Partial = BTreeMap<String, String>;
    type Output = BTreeMap<String, String>;

    fn new(params: &str) -> Result<Self, String> {
        Ok(Snoop(params.lines().map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()))
    }

    fn run(&self, _chunk: &Chunk<'_>) -> Result<Self::Partial, String> {
        Ok(self.0.iter().map(|line| {
            let seen = match attack(line) {
                Ok(got) => got,
                Err(e) => format!("denied: {e}"),
            };
            (line.clone(), seen)
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
    let page = browser.finished_run(run, RUN_TIMEOUT).await.body;
    let result = browser.get(&format!("/runs/{run}/result.json")).await.body;
    (page, result)
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
    // A port on loopback that nobody may reach, a file anybody may write next to, and a
    // variable in the server's environment.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    // (Under the system's temporary directory: the server's own directory is its user's alone.)
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let written = open.path().join("planted");
    // SAFETY: this test binary runs this one test; no other thread reads the environment now.
    unsafe { std::env::set_var("KILN_TEST_SERVER_SECRET", "s3cr3t-of-the-server") };
    let mut params: Vec<String> = targets.iter().map(|path| path.display().to_string()).collect();
    params.extend([
        format!("connect:{}", listener.local_addr().unwrap()),
        format!("write:{}", written.display()),
        "env:KILN_TEST_SERVER_SECRET".to_owned(),
        "ptrace".to_owned(),
        "mount".to_owned(),
    ]);

    let (page, result) = run(&browser, task, cluster, &params.join("\n")).await;
    // The sandbox refuses each attack with an error (EPERM, ENOENT, ...), not by killing the
    // plugin, which reports every refusal: so the run succeeds, and answers "denied" to each.
    assert!(page.contains("state-succeeded"), "the hostile run did not succeed:\n{page}");
    let seen: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    for path in &params {
        let answer = seen[path].as_str().unwrap_or_else(|| panic!("no answer for {path}: {result}"));
        assert!(answer.starts_with("denied"), "the plugin read {path}: {answer}");
    }
    assert!(listener.accept().is_err(), "the plugin reached a port on loopback");
    assert!(!written.exists(), "the plugin wrote {}", written.display());

    // The cluster and the web app are fine: the next run of the same plugin succeeds.
    let (page, result) = run(&browser, task, cluster, "").await;
    assert!(page.contains("state-succeeded"), "{page}");
    assert_eq!(result.trim(), "{}");
    web.stop().await;
}
