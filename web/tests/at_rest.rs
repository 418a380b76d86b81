//! What the web app keeps on disk: its data directory, database and secret key are readable by
//! the server's user only, the database holds no cluster API key in plain text, and a server
//! started without the key that sealed them says so.

#[path = "util/db.rs"]
mod db;
#[path = "util/web.rs"]
mod web;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use db::TestDb;
use kiln_web::sealing::SecretKey;
use reqwest::StatusCode;
use sqlx::Row;
use web::{Browser, TestWeb};

const PASSWORD: &str = "correct horse battery";

/// An API key no test writes anywhere else.
const API_KEY: &str = "kiln-test-key-7f3a9c1e5b2d4f60";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Whether any file under `dir` contains `needle`.
fn found_in_files(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            if let Some(found) = found_in_files(&path, needle) {
                return Some(found);
            }
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            return Some(path.display().to_string());
        }
    }
    None
}

/// A user with a cluster whose key is [`API_KEY`]; answers the browser and the cluster's id.
async fn user_with_cluster(web: &TestWeb) -> (Browser, i64) {
    let browser = web.browser();
    let page = browser.register("keys@example.com", PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = browser.create_cluster("lab", "127.0.0.1:1", API_KEY).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    (browser, page.redirect_id())
}

#[tokio::test]
async fn the_data_directory_database_and_secret_key_are_private_and_hold_no_api_key() {
    let web = TestWeb::start(TestDb::sqlite(), |config| config.database_url = None).await;
    let (browser, cluster) = user_with_cluster(&web).await;
    let data = web.dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "the data directory");
    for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm", "secret.key"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert_eq!(found_in_files(&data, API_KEY.as_bytes()), None, "the API key is in a file");
    // The key is there all the same, sealed: the cluster's page shows its end.
    let page = browser.get(&format!("/clusters/{cluster}")).await;
    assert!(page.body.contains(&format!("…{}", &API_KEY[API_KEY.len() - 4..])), "{}", page.body);

    // Loosened modes are tightened at the next start.
    let (dir, db) = web.stop_keeping_data().await;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("kiln.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let web = TestWeb::start_in(dir, db, |config| config.database_url = None).await;
    assert_eq!((mode(&data), mode(&data.join("kiln.db"))), (0o700, 0o600));
    web.stop().await;
}

#[tokio::test]
async fn the_database_holds_api_keys_only_sealed() {
    for db in TestDb::both().await {
        let backend = db.backend;
        let web = TestWeb::start(db, |_| {}).await;
        user_with_cluster(&web).await;
        let pool = sqlx::AnyPool::connect(&web.db.url).await.expect("connect to the app's database");
        let row = sqlx::query("SELECT api_key FROM clusters WHERE name = 'lab'").fetch_one(&pool).await.unwrap();
        let stored: String = row.try_get("api_key").unwrap();
        assert!(stored.starts_with("v1:") && !stored.contains(&API_KEY[10..]), "{backend:?}: {stored}");
        pool.close().await;
        web.stop().await;
    }
}

#[tokio::test]
async fn a_server_without_the_key_that_sealed_the_api_keys_says_what_to_do() {
    let web = TestWeb::start(TestDb::sqlite(), |_| {}).await;
    let (_, cluster) = user_with_cluster(&web).await;
    let (dir, db) = web.stop_keeping_data().await;
    let key_file = dir.path().join("data").join("secret.key");

    // The key file is gone: the server refuses to start rather than make a new key.
    let saved = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let mut config = kiln_web::WebConfig::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(db.url.clone());
    config.embedded_cluster = false;
    let error = kiln_web::start(config.clone()).await.err().expect("no start without the key").to_string();
    assert!(
        error.contains("holds 1 sealed cluster API keys")
            && error.contains("secret.key is missing")
            && error.contains("restore the file"),
        "{error}"
    );
    assert!(!key_file.exists(), "no new key was written over the loss");

    // Another key (a wrong KILN_WEB_SECRET_KEY): the server starts, and a run on the cluster
    // says why it cannot be used.
    let web = TestWeb::start_in(dir, db, |config| config.secret_key = Some(SecretKey::generate())).await;
    let browser = web.browser();
    assert_eq!(browser.log_in("keys@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let page = browser.get(&format!("/clusters/{cluster}")).await;
    assert!(page.body.contains("unreadable: enter it again"), "{}", page.body);
    let task = browser.create_task("Count", "lib.rs", b"// never built".to_vec()).await;
    let started = browser.start_run(task.redirect_id(), cluster, b"a b\n".to_vec(), "").await;
    assert!(
        started.body.contains("cannot decrypt the API key of cluster") && started.body.contains("secret key changed"),
        "{} {}",
        started.status,
        started.body
    );
    let (dir, db) = web.stop_keeping_data().await;

    // With the right key back, the cluster works again.
    let key = SecretKey::from_hex(&saved, "the saved key").unwrap();
    let web = TestWeb::start_in(dir, db, |config| config.secret_key = Some(key)).await;
    let browser = web.browser();
    assert_eq!(browser.log_in("keys@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let page = browser.get(&format!("/clusters/{cluster}")).await;
    assert!(!page.body.contains("unreadable") && page.body.contains("…4f60"), "{}", page.body);
    web.stop().await;
}
