//! The web app over HTTP, against a real server on 127.0.0.1:0 with a real HTTP client:
//! accounts and sessions, per-user authorization, CSRF, escaping, upload limits and the login
//! rate limit. Every test runs on SQLite and on PostgreSQL.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::time::Duration;

use db::TestDb;
use futures::StreamExt;
use kiln_web::WebConfig;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use sqlx::Row;
use web::{Browser, TestWeb};

const PASSWORD: &str = "correct horse battery";

/// A cluster address where nothing listens: runs on it fail at once.
const NOWHERE: &str = "127.0.0.1:1";

/// How long a run on a cluster that cannot take it may take to end.
const FAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `test` against a fresh server on SQLite, then on PostgreSQL.
async fn check(configure: impl Fn(&mut WebConfig), test: impl AsyncFn(&TestWeb)) {
    for db in TestDb::both().await {
        let web = TestWeb::start(db, |config| configure(config)).await;
        test(&web).await;
        web.stop().await;
    }
}

fn defaults(_: &mut WebConfig) {}

/// A logged-in browser for a new user.
async fn user(web: &TestWeb, email: &str) -> Browser {
    let browser = web.browser();
    let page = browser.register(email, PASSWORD).await;
    assert_eq!((page.status, page.location.as_deref()), (StatusCode::SEE_OTHER, Some("/tasks")), "{}", page.body);
    browser
}

fn plugin_source() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plugins/wordcount/src/lib.rs")).expect("wordcount")
}

#[tokio::test]
async fn users_register_log_in_and_log_out() {
    check(defaults, async |web| {
        let browser = user(web, "Ada@Example.com").await;
        let tasks = browser.get("/tasks").await;
        assert_eq!(tasks.status, StatusCode::OK);
        assert!(tasks.body.contains("ada@example.com"), "the header names the user");

        let out = browser.log_out().await;
        assert_eq!((out.status, out.location.as_deref()), (StatusCode::SEE_OTHER, Some("/users/log_in")));
        let after = browser.get("/tasks").await;
        assert_eq!((after.status, after.location.as_deref()), (StatusCode::SEE_OTHER, Some("/users/log_in")));

        let wrong = browser.log_in("ada@example.com", "wrong password").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.body.contains("wrong e-mail address or password"));
        let again = browser.log_in("ADA@example.com", PASSWORD).await;
        assert_eq!((again.status, again.location.as_deref()), (StatusCode::SEE_OTHER, Some("/tasks")));
        assert_eq!(browser.get("/tasks").await.status, StatusCode::OK);
        assert_eq!(browser.get("/").await.location.as_deref(), Some("/tasks"));

        let taken = web.browser().register("ada@example.com", PASSWORD).await;
        assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(taken.body.contains("an account with this e-mail address exists already"));
        let short = web.browser().register("bob@example.com", "short").await;
        assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(short.body.contains("at least 8 characters"));
    })
    .await;
}

#[tokio::test]
async fn guessable_passwords_are_refused_with_advice() {
    check(defaults, async |web| {
        for weak in ["password123", "qwertyuiop", "bob@example.com1"] {
            let page = web.browser().register("bob@example.com", weak).await;
            assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{weak}");
            assert!(page.body.contains("this password is too easy to guess"), "{weak}: {}", page.body);
        }
        let common = web.browser().register("bob@example.com", "password1").await;
        assert!(common.body.contains("common password") && common.body.contains("unrelated words"), "{}", common.body);
        let pool = sqlx::AnyPool::connect(&web.db.url).await.expect("connect to the app's database");
        let users = sqlx::query("SELECT id FROM users").fetch_all(&pool).await.unwrap();
        assert!(users.is_empty(), "no account was made");
        pool.close().await;
        user(web, "bob@example.com").await;
    })
    .await;
}

#[tokio::test]
async fn passwords_are_stored_as_argon2_hashes() {
    check(defaults, async |web| {
        user(web, "hash@example.com").await;
        let pool = sqlx::AnyPool::connect(&web.db.url).await.expect("connect to the app's database");
        let row = sqlx::query("SELECT password_hash FROM users WHERE email = $1")
            .bind("hash@example.com")
            .fetch_one(&pool)
            .await
            .unwrap();
        let hash: String = row.try_get("password_hash").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(!hash.contains(PASSWORD));
        let sessions = sqlx::query("SELECT token_hash FROM sessions").fetch_all(&pool).await.unwrap();
        assert_eq!(sessions.len(), 1);
        pool.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_session_cookie_stops_working_after_logout() {
    check(defaults, async |web| {
        let browser = user(web, "leave@example.com").await;
        let cookie = browser.cookie("kiln_session").expect("a session cookie");
        let copy = Browser::with_cookie(&web.base, "kiln_session", &cookie);
        assert_eq!(copy.get("/tasks").await.status, StatusCode::OK, "the cookie alone is the session");
        assert_eq!(browser.log_out().await.status, StatusCode::SEE_OTHER);
        let refused = copy.get("/tasks").await;
        assert_eq!((refused.status, refused.location.as_deref()), (StatusCode::SEE_OTHER, Some("/users/log_in")));
        let made_up = Browser::with_cookie(&web.base, "kiln_session", &"0".repeat(64));
        assert_eq!(made_up.get("/clusters").await.status, StatusCode::SEE_OTHER);
    })
    .await;
}

#[tokio::test]
async fn pages_need_a_logged_in_user() {
    check(defaults, async |web| {
        let anonymous = web.browser();
        for path in ["/tasks", "/tasks/new", "/tasks/1", "/clusters", "/clusters/1", "/runs/1", "/runs/1/result.json"] {
            let page = anonymous.get(path).await;
            assert_eq!(
                (page.status, page.location.as_deref()),
                (StatusCode::SEE_OTHER, Some("/users/log_in")),
                "{path}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn another_users_tasks_clusters_and_runs_are_not_found() {
    check(defaults, async |web| {
        let a = user(web, "a@example.com").await;
        let task = a.create_task("A's task", "lib.rs", plugin_source()).await.redirect_id();
        let cluster = a.create_cluster("A's cluster", NOWHERE, "key-of-a-0123456789").await.redirect_id();
        let run = a.start_run(task, cluster, b"a b c\n".to_vec(), "").await.redirect_id();
        a.finished_run(run, FAIL_TIMEOUT).await;

        let b = user(web, "b@example.com").await;
        let b_csrf = b.csrf("/tasks").await;
        let gets = [
            format!("/tasks/{task}"),
            format!("/tasks/{task}/edit"),
            format!("/tasks/{task}/start"),
            format!("/clusters/{cluster}"),
            format!("/clusters/{cluster}/edit"),
            format!("/runs/{run}"),
            format!("/runs/{run}/ws"),
            format!("/runs/{run}/result.json"),
        ];
        for path in &gets {
            let page = b.get(path).await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "GET {path}");
            assert!(!page.body.contains("A&#39;s") && !page.body.contains("A's"), "GET {path} shows nothing of A's");
        }
        let posts = [
            format!("/tasks/{task}"),
            format!("/tasks/{task}/delete"),
            format!("/tasks/{task}/start"),
            format!("/clusters/{cluster}"),
            format!("/clusters/{cluster}/delete"),
            format!("/runs/{run}/cancel"),
        ];
        for path in &posts {
            let page = b
                .post(
                    path,
                    &[("csrf_token", &b_csrf), ("title", "mine"), ("name", "mine"), ("controller_address", "h:1")],
                )
                .await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "POST {path}");
        }

        // B cannot run its own task on A's cluster either.
        let b_task = b.create_task("B's task", "lib.rs", plugin_source()).await.redirect_id();
        let refused = b.start_run(b_task, cluster, b"x\n".to_vec(), "").await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(refused.body.contains("choose one of your clusters"));

        // A's objects are untouched.
        assert!(a.get(&format!("/tasks/{task}")).await.body.contains("A&#39;s task"));
        assert_eq!(a.get(&format!("/clusters/{cluster}")).await.status, StatusCode::OK);
        assert_eq!(a.get(&format!("/runs/{run}")).await.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn posts_without_a_valid_csrf_token_are_refused() {
    check(defaults, async |web| {
        let browser = user(web, "csrf@example.com").await;
        let task = browser.create_task("Kept", "lib.rs", plugin_source()).await.redirect_id();
        let cluster_fields = [("name", "forged"), ("controller_address", "h:7700"), ("api_key", "k")];
        for token in [None, Some("0".repeat(64))] {
            let mut fields = cluster_fields.to_vec();
            if let Some(token) = &token {
                fields.push(("csrf_token", token));
            }
            let forged = browser.post("/clusters", &fields).await;
            assert_eq!(forged.status, StatusCode::FORBIDDEN, "{token:?}");
            assert!(forged.body.contains("this form has expired or did not come from this site"));
            let mut delete = Vec::new();
            if let Some(token) = &token {
                delete.push(("csrf_token", token.as_str()));
            }
            assert_eq!(browser.post(&format!("/tasks/{task}/delete"), &delete).await.status, StatusCode::FORBIDDEN);
            assert_eq!(browser.post("/users/log_out", &delete).await.status, StatusCode::FORBIDDEN);
        }
        let upload =
            Form::new().text("title", "forged").part("plugin", Part::bytes(plugin_source()).file_name("lib.rs"));
        assert_eq!(browser.post_multipart("/tasks", upload).await.status, StatusCode::FORBIDDEN);
        let anonymous = web.browser();
        let register = anonymous.post("/users/register", &[("email", "x@example.com"), ("password", PASSWORD)]).await;
        assert_eq!(register.status, StatusCode::FORBIDDEN);

        // Nothing changed, and the session still works.
        let clusters = browser.get("/clusters").await;
        assert!(!clusters.body.contains("forged"));
        assert!(browser.get(&format!("/tasks/{task}")).await.body.contains("Kept"));
        assert_eq!(browser.get("/tasks").await.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn what_users_write_is_escaped_in_pages() {
    check(defaults, async |web| {
        let browser = user(web, "xss@example.com").await;
        let title = "<script>alert('title')</script>";
        let task = browser.create_task(title, "lib.rs", plugin_source()).await.redirect_id();
        let cluster = browser.create_cluster("<img src=x onerror=alert(1)>", NOWHERE, "<b>key</b>-0123456789").await;
        let cluster = cluster.redirect_id();
        for path in [
            "/tasks".to_owned(),
            format!("/tasks/{task}"),
            format!("/tasks/{task}/start"),
            "/clusters".to_owned(),
            format!("/clusters/{cluster}"),
        ] {
            let page = browser.get(&path).await;
            assert!(!page.body.contains("<script>alert"), "{path}");
            assert!(!page.body.contains("<img src=x"), "{path}");
        }
        assert!(browser.get(&format!("/tasks/{task}")).await.body.contains("&#60;script&#62;alert(&#39;title&#39;)"));
        let shown = browser.get(&format!("/clusters/{cluster}")).await.body;
        assert!(shown.contains("…6789") && !shown.contains("<b>key</b>"), "the API key is never shown whole");
    })
    .await;
}

#[tokio::test]
async fn oversize_uploads_are_refused_with_a_message() {
    let limits = |config: &mut WebConfig| {
        config.max_plugin_bytes = 16 << 10;
        config.max_upload_bytes = 64 << 10;
    };
    check(limits, async |web| {
        let browser = user(web, "big@example.com").await;
        let big_plugin = vec![b'/'; 20 << 10];
        let refused = browser.create_task("Too big", "lib.rs", big_plugin).await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.body.contains("the plugin is too large: at most 16.0 KiB is accepted"), "{}", refused.body);
        assert!(!browser.get("/tasks").await.body.contains("Too big"));

        let task = browser.create_task("Small", "lib.rs", plugin_source()).await.redirect_id();
        let cluster = browser.create_cluster("c", NOWHERE, "key-0123456789").await.redirect_id();
        let input = "word ".repeat(20_000).into_bytes();
        let refused = browser.start_run(task, cluster, input, "").await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.body.contains("the input file is too large: at most 64.0 KiB is accepted"), "{}", refused.body);
        assert!(browser.get(&format!("/tasks/{task}")).await.body.contains("No runs yet"));
        let uploads = std::fs::read_dir(web.dir.path().join("data/uploads")).unwrap().count();
        assert_eq!(uploads, 0, "refused uploads leave no file behind");

        let not_a_plugin = browser.create_task("Notes", "notes.txt", b"hello".to_vec()).await;
        assert_eq!(not_a_plugin.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(not_a_plugin.body.contains("is not a plugin: upload a lib.rs, or a .tar.gz, .tgz or .zip of a crate"));
    })
    .await;
}

#[tokio::test]
async fn login_attempts_are_rate_limited() {
    check(defaults, async |web| {
        user(web, "target@example.com").await;
        let attacker = web.browser();
        for _ in 0..5 {
            assert_eq!(attacker.log_in("target@example.com", "guess").await.status, StatusCode::UNAUTHORIZED);
        }
        let limited = attacker.log_in("target@example.com", PASSWORD).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "even the right password waits");
        assert!(limited.body.contains("too many failed logins: try again in"), "{}", limited.body);
        let other = attacker.log_in("someone@example.com", "guess").await;
        assert_eq!(other.status, StatusCode::UNAUTHORIZED, "another address is not limited");
    })
    .await;
}

#[tokio::test]
async fn a_run_on_an_unreachable_cluster_fails_with_the_reason() {
    check(defaults, async |web| {
        let browser = user(web, "down@example.com").await;
        let task = browser.create_task("T", "lib.rs", plugin_source()).await.redirect_id();
        let key = format!("kiln-key-v2.{}.key-0123456789", "0".repeat(64));
        let cluster = browser.create_cluster("down", NOWHERE, &key).await.redirect_id();
        let run = browser.start_run(task, cluster, b"a b\n".to_vec(), "").await.redirect_id();
        let page = browser.finished_run(run, FAIL_TIMEOUT).await;
        assert!(page.body.contains("state-failed"), "{}", page.body);
        assert!(page.body.contains("cannot connect to the controller at 127.0.0.1:1"), "{}", page.body);
        let task_page = browser.get(&format!("/tasks/{task}")).await;
        assert!(task_page.body.contains(&format!("/runs/{run}")), "the task lists its runs");
        let cluster_page = browser.get(&format!("/clusters/{cluster}")).await;
        assert!(cluster_page.body.contains("Cannot reach the cluster"), "{}", cluster_page.body);
        assert!(cluster_page.body.contains(&format!("/runs/{run}")), "the cluster lists its runs");
    })
    .await;
}

#[tokio::test]
async fn the_progress_websocket_serves_only_pages_of_this_site() {
    check(defaults, async |web| {
        let browser = user(web, "ws@example.com").await;
        let task = browser.create_task("T", "lib.rs", plugin_source()).await.redirect_id();
        let cluster = browser.create_cluster("down", NOWHERE, "key-0123456789").await.redirect_id();
        let run = browser.start_run(task, cluster, b"a b\n".to_vec(), "").await.redirect_id();
        browser.finished_run(run, FAIL_TIMEOUT).await;
        let cookie = format!("kiln_session={}", browser.cookie("kiln_session").unwrap());
        let url = format!("{}/runs/{run}/ws", web.base.replace("http://", "ws://"));
        let request = |origin: &str| {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.as_str().into_client_request().unwrap();
            request.headers_mut().insert("cookie", cookie.parse().unwrap());
            request.headers_mut().insert("origin", origin.parse().unwrap());
            request
        };
        let (mut socket, _) =
            tokio_tungstenite::connect_async(request(&web.base)).await.expect("the site's own page may connect");
        let first = socket.next().await.expect("a message").expect("a good message");
        let progress: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!((progress["state"].as_str(), progress["finished"].as_bool()), (Some("failed"), Some(true)));
        let _ = socket.close(None).await;

        let foreign = tokio_tungstenite::connect_async(request("http://evil.example")).await;
        let Err(error) = foreign else { panic!("a page of another site may not follow a run") };
        let error = error.to_string();
        assert!(error.contains("403"), "{error}");
    })
    .await;
}

/// Whether a response carries the app's security headers.
fn has_security_headers(response: &reqwest::Response) -> Result<(), String> {
    let headers = response.headers();
    let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    let checks = [
        ("x-content-type-options", headers.get("x-content-type-options").is_some_and(|v| v == "nosniff")),
        ("x-frame-options", headers.get("x-frame-options").is_some_and(|v| v == "DENY")),
        ("referrer-policy", headers.get("referrer-policy").is_some_and(|v| v == "same-origin")),
        ("content-security-policy", csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'")),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((name, _)) => {
            Err(format!("{} {}: {name} missing or wrong in {headers:?}", response.status(), response.url()))
        }
        None => Ok(()),
    }
}

#[tokio::test]
async fn every_response_has_the_security_headers_and_errors_get_the_apps_page() {
    check(defaults, async |web| {
        let browser = user(web, "headers@example.com").await;
        let client = &browser.client;
        let cases = [
            (reqwest::Method::GET, "/tasks", StatusCode::OK),
            (reqwest::Method::GET, "/static/app.css", StatusCode::OK),
            (reqwest::Method::GET, "/static/run.js", StatusCode::OK),
            (reqwest::Method::GET, "/", StatusCode::SEE_OTHER),
            (reqwest::Method::GET, "/no/such/page", StatusCode::NOT_FOUND),
            (reqwest::Method::GET, "/static/nope.css", StatusCode::NOT_FOUND),
            (reqwest::Method::GET, "/tasks/999999", StatusCode::NOT_FOUND),
            (reqwest::Method::DELETE, "/tasks", StatusCode::METHOD_NOT_ALLOWED),
            (reqwest::Method::PUT, "/users/log_in", StatusCode::METHOD_NOT_ALLOWED),
        ];
        for (method, path, status) in cases {
            let response = client.request(method.clone(), browser.url(path)).send().await.expect("request");
            assert_eq!(response.status(), status, "{method} {path}");
            has_security_headers(&response).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            if status.is_client_error() {
                let body = response.text().await.unwrap();
                let reason = status.canonical_reason().unwrap();
                assert!(
                    body.contains(&format!("<h1>{} · {reason}</h1>", status.as_u16()))
                        && body.contains("<link rel=\"stylesheet\" href=\"/static/app.css\">")
                        && body.contains("headers@example.com"),
                    "{method} {path}: not the app's page in its layout: {body}"
                );
            }
        }
        // A visitor who is not logged in gets the same page, without a user.
        let anonymous = web.browser().client.get(format!("{}/nowhere", web.base)).send().await.unwrap();
        has_security_headers(&anonymous).unwrap();
        let body = anonymous.text().await.unwrap();
        assert!(body.contains("404 · Not Found") && body.contains("/static/app.css"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn a_controller_that_is_not_the_keys_is_named_on_the_cluster_and_run_pages() {
    use kiln_engine::controller::{ControllerConfig, start};
    use kiln_engine::tls::Fingerprint;
    let dir = tempfile::tempdir().unwrap();
    let controller = start(ControllerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()))
        .await
        .expect("a controller starts");
    let address = controller.local_addr().to_string();
    // The right secret, but the fingerprint of another cluster's CA.
    let other = Fingerprint::of(b"another cluster's CA");
    let key = format!("kiln-key-v2.{other}.{}", controller.api_key().expose());
    check(defaults, async |web| {
        let browser = user(web, "pinned@example.com").await;
        let task = browser.create_task("T", "lib.rs", plugin_source()).await.redirect_id();
        let cluster = browser.create_cluster("elsewhere", &address, &key).await.redirect_id();
        let expected = format!("the controller at {address} is not the one this key belongs to");
        let cluster_page = browser.get(&format!("/clusters/{cluster}")).await;
        assert!(cluster_page.body.contains(&expected), "{}", cluster_page.body);
        let run = browser.start_run(task, cluster, b"a b\n".to_vec(), "").await.redirect_id();
        let page = browser.finished_run(run, FAIL_TIMEOUT).await;
        assert!(page.body.contains("state-failed") && page.body.contains(&expected), "{}", page.body);
    })
    .await;
    assert!(controller.client_key().to_text().contains(&controller.fingerprint().unwrap().to_hex()));
    controller.shutdown().await;
}

#[tokio::test]
async fn a_run_is_started_again_only_by_its_owner_with_its_kept_input_which_goes_with_the_account() {
    check(defaults, async |web| {
        let owner = user(web, "again@example.com").await;
        let task = owner.create_task("T", "lib.rs", plugin_source()).await.redirect_id();
        let key = format!("kiln-key-v2.{}.key-0123456789", "0".repeat(64));
        let cluster = owner.create_cluster("down", NOWHERE, &key).await.redirect_id();
        let run = owner.start_run(task, cluster, b"kept input\n".to_vec(), "p=1").await.redirect_id();
        owner.finished_run(run, FAIL_TIMEOUT).await;
        let inputs = web.dir.path().join("data/inputs");
        let kept: Vec<_> = std::fs::read_dir(&inputs).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(kept.len(), 1, "the run's input is kept");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), b"kept input\n");

        // Another user can neither start it again nor learn that it exists.
        let stranger = user(web, "stranger@example.com").await;
        let csrf = stranger.csrf("/tasks").await;
        let refused = stranger.post(&format!("/runs/{run}/again"), &[("csrf_token", &csrf)]).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
        // The owner needs the form's CSRF token.
        let forged = owner.post(&format!("/runs/{run}/again"), &[("csrf_token", "forged")]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);

        let page = owner.get(&format!("/runs/{run}")).await.body;
        assert!(page.contains("id=\"run-again\"") && page.contains("kept until"), "{page}");
        let again = owner.submit(&format!("/runs/{run}"), &format!("/runs/{run}/again"), &[]).await.redirect_id();
        assert_ne!(again, run);
        owner.finished_run(again, FAIL_TIMEOUT).await;
        let stored = web.web.store().run_by_id(again).await.unwrap().expect("the run again");
        assert_eq!((stored.task_id, stored.cluster_id, stored.params.as_str()), (task, cluster, "p=1"));
        assert_eq!(stored.input_bytes, 11);
        assert_eq!(std::fs::read_dir(&inputs).unwrap().count(), 2, "each run names its own kept input");

        // Deleting the account removes the kept inputs with the rows.
        let deleted = owner.submit("/users/account", "/users/delete", &[("password", PASSWORD)]).await;
        assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
        assert_eq!(std::fs::read_dir(&inputs).unwrap().count(), 0, "no kept input is left");
        assert_eq!(web.web.store().run_by_id(run).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_tasks_plugin_source_is_shown_escaped_to_its_owner_only() {
    check(defaults, async |web| {
        let owner = user(web, "source@example.com").await;
        let mut source = plugin_source();
        source.extend_from_slice(b"\n// <script>alert('source')</script>\n");
        let task = owner.create_task("T", "lib.rs", source).await.redirect_id();
        let page = owner.get(&format!("/tasks/{task}/source")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("<code>src/lib.rs</code>") && page.body.contains("Cargo.toml"), "{}", page.body);
        assert!(page.body.contains("impl MapReduce for WordCount"), "the file's text is shown");
        let escaped = page.body.contains("&lt;script&gt;alert(") || page.body.contains("&#60;script&#62;alert(");
        assert!(escaped && !page.body.contains("<script>alert("), "escaped");
        let hash = page.body.split("id=\"source-hash\">").nth(1).and_then(|rest| rest.split('<').next()).unwrap();
        assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
        let stranger = user(web, "no-source@example.com").await;
        assert_eq!(stranger.get(&format!("/tasks/{task}/source")).await.status, StatusCode::NOT_FOUND);
    })
    .await;
}
