//! A real `kiln-web` for tests, started in-process on 127.0.0.1:0 in its own temporary data
//! directory, and a browser-like HTTP client (cookies kept, redirects not followed) with
//! helpers for the app's forms.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_web::{RunningWeb, WebConfig};
use reqwest::StatusCode;
use reqwest::cookie::{CookieStore, Jar};
use reqwest::multipart::{Form, Part};

use crate::db::TestDb;

/// How long a run on the embedded cluster may take: the first one of a test run builds the
/// plugin's dependencies.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// A web server and its data directory.
pub struct TestWeb {
    pub web: RunningWeb,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub db: TestDb,
}

impl TestWeb {
    /// A server on `db`, without the embedded cluster unless `configure` turns it on.
    pub async fn start(db: TestDb, configure: impl FnOnce(&mut WebConfig)) -> TestWeb {
        TestWeb::start_in(tempfile::tempdir().expect("temp dir"), db, configure).await
    }

    /// A server on `db` whose data directory is `dir/data` (to start again on the same data).
    pub async fn start_in(dir: tempfile::TempDir, db: TestDb, configure: impl FnOnce(&mut WebConfig)) -> TestWeb {
        let mut config = WebConfig::new(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = Some(db.url.clone());
        config.embedded_cluster = false;
        config.executor_program = Some(PathBuf::from(env!("CARGO_BIN_EXE_kiln-web")));
        config.plugin_target_dir = Some(plugin_target_dir());
        configure(&mut config);
        let web = kiln_web::start(config).await.unwrap_or_else(|e| panic!("kiln-web starts on {:?}: {e}", db.backend));
        let base = format!("http://{}", web.local_addr());
        TestWeb { web, base, dir, db }
    }

    /// A new browser for this server.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    /// Stops the server and drops its database.
    pub async fn stop(self) {
        self.web.shutdown().await;
    }

    /// Stops the server and hands back its data directory and database, to start it again.
    pub async fn stop_keeping_data(self) -> (tempfile::TempDir, TestDb) {
        self.web.shutdown().await;
        (self.dir, self.db)
    }
}

/// The cargo target directory every test builds plugins in (shared with the engine's tests),
/// so that abi_stable and serde compile once.
pub fn plugin_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-target")
}

/// A browser: a cookie jar and the server's address.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
    pub base: String,
}

/// A response's status, `Location` and body.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    async fn from(response: reqwest::Response) -> Page {
        let status = response.status();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.text().await.unwrap_or_default();
        Page { status, location, body }
    }

    /// The id at the end of the `Location` this answer redirects to.
    pub fn redirect_id(&self) -> i64 {
        let location = self.location.as_deref().unwrap_or_else(|| panic!("no redirect: {} {}", self.status, self.body));
        location.rsplit('/').next().and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("no id in {location}"))
    }
}

impl Browser {
    /// A browser with an empty cookie jar.
    pub fn new(base: &str) -> Browser {
        let jar = Arc::new(Jar::default());
        // reqwest's rustls takes the process's crypto provider (the engine compiles no other).
        kiln_engine::tls::install_process_provider();
        let client = reqwest::Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        Browser { client, jar, base: base.to_owned() }
    }

    /// A browser holding only the cookie `name=value` (a copy of someone's cookie).
    pub fn with_cookie(base: &str, name: &str, value: &str) -> Browser {
        let browser = Browser::new(base);
        let url = reqwest::Url::parse(base).expect("base url");
        browser.jar.add_cookie_str(&format!("{name}={value}; Path=/"), &url);
        browser
    }

    /// The value of this browser's cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let url = reqwest::Url::parse(&self.base).expect("base url");
        let header = self.jar.cookies(&url)?;
        let header = header.to_str().ok()?.to_owned();
        header.split("; ").find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Page {
        Page::from(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    /// The CSRF token of the forms on `path`.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        csrf_in(&page.body).unwrap_or_else(|| panic!("no CSRF token on {path}: {} {}", page.status, page.body))
    }

    /// POSTs an url-encoded form to `path`, as is.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        Page::from(self.client.post(self.url(path)).form(fields).send().await.expect("POST")).await
    }

    /// POSTs an url-encoded form to `path` with the CSRF token of the page `form_page`.
    pub async fn submit(&self, form_page: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf(form_page).await;
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    /// POSTs a multipart form to `path`.
    pub async fn post_multipart(&self, path: &str, form: Form) -> Page {
        Page::from(self.client.post(self.url(path)).multipart(form).send().await.expect("POST multipart")).await
    }

    /// Registers and stays logged in.
    pub async fn register(&self, email: &str, password: &str) -> Page {
        self.submit("/users/register", "/users/register", &[("email", email), ("password", password)]).await
    }

    /// Logs in.
    pub async fn log_in(&self, email: &str, password: &str) -> Page {
        self.submit("/users/log_in", "/users/log_in", &[("email", email), ("password", password)]).await
    }

    /// Logs out.
    pub async fn log_out(&self) -> Page {
        self.submit("/tasks", "/users/log_out", &[]).await
    }

    /// Creates a task from a plugin file; answers the response (a redirect to the task).
    pub async fn create_task(&self, title: &str, file_name: &str, plugin: Vec<u8>) -> Page {
        let csrf = self.csrf("/tasks/new").await;
        let form = Form::new()
            .text("csrf_token", csrf)
            .text("title", title.to_owned())
            .text("description", "made by a test")
            .part("plugin", Part::bytes(plugin).file_name(file_name.to_owned()));
        self.post_multipart("/tasks", form).await
    }

    /// Saves a cluster; answers the response (a redirect to the cluster).
    pub async fn create_cluster(&self, name: &str, address: &str, api_key: &str) -> Page {
        self.submit(
            "/clusters/new",
            "/clusters",
            &[("name", name), ("controller_address", address), ("api_key", api_key)],
        )
        .await
    }

    /// The id of the user's "local" cluster, as the start page of `task` offers it.
    pub async fn local_cluster(&self, task: i64) -> i64 {
        let page = self.get(&format!("/tasks/{task}/start")).await.body;
        let at = page.find(">local (built in)").expect("the local cluster is offered");
        let option = &page[page[..at].rfind("<option").expect("an option")..at];
        let value = option.split("value=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("a value");
        value.parse().expect("a cluster id")
    }

    /// Starts a task on a cluster with an input; answers the response (a redirect to the run).
    pub async fn start_run(&self, task: i64, cluster: i64, input: Vec<u8>, params: &str) -> Page {
        let csrf = self.csrf(&format!("/tasks/{task}/start")).await;
        let form = Form::new()
            .text("csrf_token", csrf)
            .text("cluster_id", cluster.to_string())
            .text("processes", "2")
            .text("params", params.to_owned())
            .part("input", Part::bytes(input).file_name("input.txt"));
        self.post_multipart(&format!("/tasks/{task}/start"), form).await
    }

    /// Waits until the run's page says it has ended, failing the test after `timeout`; answers
    /// the page.
    pub async fn finished_run(&self, run: i64, timeout: Duration) -> Page {
        let deadline = Instant::now() + timeout;
        loop {
            let page = self.get(&format!("/runs/{run}")).await;
            if page.body.contains("data-finished=\"true\"") {
                return page;
            }
            assert!(Instant::now() < deadline, "run {run} did not end:\n{}", page.body);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The progress messages of a run, from its websocket, until it ends.
pub async fn progress_messages(browser: &Browser, run: i64) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/runs/{run}/ws", browser.base.replace("http://", "ws://"));
    let mut request = url.as_str().into_client_request().expect("ws request");
    let cookie = format!("kiln_session={}", browser.cookie("kiln_session").expect("logged in"));
    request.headers_mut().insert("cookie", cookie.parse().expect("cookie header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("the progress websocket opens");
    let mut messages = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        let Ok(text) = message.to_text() else { continue };
        let Ok(progress) = serde_json::from_str::<serde_json::Value>(text) else { continue };
        let finished = progress["finished"].as_bool() == Some(true);
        messages.push(progress);
        if finished {
            break;
        }
    }
    messages
}

/// The value of the first `csrf_token` field in a page.
pub fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf_token\" value=\"")? + "name=\"csrf_token\" value=\"".len();
    let rest = &html[at..];
    Some(rest[..rest.find('"')?].to_owned())
}
