//! The `kiln-web` command as an operator runs it: a real process started with flags and
//! environment variables.

#[path = "util/db.rs"]
mod db;
#[path = "util/process.rs"]
mod process;
#[path = "util/web.rs"]
mod web;

use process::WebProcess;
use reqwest::StatusCode;
use web::Browser;

const PASSWORD: &str = "correct horse battery";

/// Whether `browser`'s user is offered the "local" cluster, on the clusters page and when
/// starting a task.
async fn offers_local_cluster(browser: &Browser) -> bool {
    let task = browser.create_task("Count", "lib.rs", b"// a task".to_vec()).await.redirect_id();
    let start = browser.get(&format!("/tasks/{task}/start")).await.body;
    let clusters = browser.get("/clusters").await.body;
    let on_start = start.contains("local (built in)");
    assert_eq!(on_start, clusters.contains("built into this server"), "both pages agree: {clusters}");
    on_start
}

/// A browser logged in to `server` as a new user.
async fn new_user(server: &WebProcess) -> Browser {
    let browser = Browser::new(&server.base);
    let page = browser.register("op@example.com", PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    browser
}

#[tokio::test]
async fn the_quickstart_command_offers_the_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let server = WebProcess::start(&dir.path().join("data"), &[], &[]);
    assert!(offers_local_cluster(&new_user(&server).await).await, "{}", server.log());
    assert!(server.log().contains("embedded cluster started"), "{}", server.log());
}

#[tokio::test]
async fn no_local_cluster_runs_without_the_embedded_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The first start has it, so the user gets a "local" row; without it, it is not offered.
    let server = WebProcess::start(&data, &[], &[]);
    assert!(offers_local_cluster(&new_user(&server).await).await);
    drop(server);
    let server = WebProcess::start(&data, &["--no-local-cluster"], &[]);
    let browser = Browser::new(&server.base);
    assert_eq!(browser.log_in("op@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    assert!(!offers_local_cluster(&browser).await);
    assert!(!server.log().contains("embedded cluster started"), "{}", server.log());
}

#[tokio::test]
async fn the_environment_can_turn_the_local_cluster_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = WebProcess::start(dir.path(), &[], &[("KILN_WEB_NO_LOCAL_CLUSTER", "1")]);
    assert!(!offers_local_cluster(&new_user(&server).await).await);
    assert!(!server.log().contains("embedded cluster started"), "{}", server.log());
}
