//! The store, against SQLite and PostgreSQL alike: every test runs on a fresh database of
//! each kind.

#[path = "util/db.rs"]
mod db;

use std::future::Future;

use sqlx::Row;

use db::TestDb;
use kiln_web::sealing::SecretKey;
use kiln_web::store::clusters::{ClusterFields, LOCAL_CLUSTER, UnreadableKey};
use kiln_web::store::runs::{NewRun, ResultFile, RunEnding, RunProgress, RunState, RunsOf, StoredResult};
use kiln_web::store::tasks::{Plugin, PluginContent, PluginKind};
use kiln_web::store::{Store, StoreError, now_ms};

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL database.
async fn check<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for db in TestDb::both().await {
        let store =
            Store::open(&db.url, SecretKey::generate()).await.unwrap_or_else(|e| panic!("open {:?}: {e}", db.backend));
        assert_eq!(store.backend(), db.backend);
        test(store.clone()).await;
        store.close().await;
    }
}

fn plugin(text: &str) -> Plugin {
    Plugin {
        name: "lib.rs".into(),
        kind: PluginKind::RustFile,
        content: PluginContent::Bytes(text.as_bytes().to_vec()),
    }
}

fn cluster_fields(name: &str) -> ClusterFields {
    ClusterFields {
        name: name.into(),
        controller_address: "10.0.0.1:7700".into(),
        api_key: Some("key-0123456789abcdef".into()),
    }
}

/// Two users, each with a task and a cluster: (user a, user b, a's task, a's cluster).
async fn two_users(store: &Store) -> (i64, i64, i64, i64) {
    let a = store.create_user("a@example.com", "$argon2id$a").await.unwrap().id;
    let b = store.create_user("b@example.com", "$argon2id$b").await.unwrap().id;
    let task = store.create_task(a, "Count", "words", &plugin("// a")).await.unwrap().id;
    let cluster = store.create_cluster(a, &cluster_fields("lab")).await.unwrap().id;
    store.create_task(b, "B's", "", &plugin("// b")).await.unwrap();
    (a, b, task, cluster)
}

fn new_run(task_id: i64, cluster_id: i64) -> NewRun {
    NewRun {
        task_id,
        cluster_id,
        input_name: "input.txt".into(),
        input_bytes: 1000,
        processes: 2,
        params: String::new(),
    }
}

#[tokio::test]
async fn emails_are_unique_whatever_their_case() {
    check(|store| async move {
        let user = store.create_user(" Ada@Example.com ", "$argon2id$x").await.unwrap();
        assert_eq!(user.email, "ada@example.com");
        let again = store.create_user("ADA@example.com", "$argon2id$y").await.unwrap_err();
        assert!(matches!(again, StoreError::Duplicate(_)), "{again:?}");
        assert_eq!(again.to_string(), "an account with this e-mail address already exists");
        assert_eq!(store.user_by_email("ada@EXAMPLE.com").await.unwrap(), Some(user.clone()));
        assert_eq!(store.user(user.id).await.unwrap(), Some(user));
        assert_eq!(store.user_by_email("nobody@example.com").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn sessions_are_found_by_token_hash_until_they_expire_or_end() {
    check(|store| async move {
        let user = store.create_user("s@example.com", "$argon2id$x").await.unwrap();
        let hour = 3_600_000;
        store.create_session(user.id, "hash-live", "csrf-1", now_ms() + hour).await.unwrap();
        store.create_session(user.id, "hash-old", "csrf-2", now_ms() - 1).await.unwrap();
        let session = store.session("hash-live", hour).await.unwrap().expect("live session");
        assert_eq!(
            (session.user_id, session.email.as_str(), session.csrf_token.as_str()),
            (user.id, "s@example.com", "csrf-1")
        );
        assert_eq!(store.session("hash-old", hour).await.unwrap(), None);
        assert_eq!(store.delete_expired_sessions(hour).await.unwrap(), 1);
        assert!(store.delete_session("hash-live").await.unwrap());
        assert_eq!(store.session("hash-live", hour).await.unwrap(), None);
        assert!(!store.delete_session("hash-live").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn clusters_are_seen_and_changed_only_by_their_owner() {
    check(|store| async move {
        let (a, b, _, cluster) = two_users(&store).await;
        let mine = store.cluster(a, cluster).await.unwrap().expect("a's cluster");
        assert_eq!(mine.api_key.as_deref(), Ok("key-0123456789abcdef"));
        assert_eq!(mine.api_key_hint(), "…cdef");
        assert_eq!(store.cluster(b, cluster).await.unwrap(), None);
        assert!(store.clusters(b).await.unwrap().is_empty());
        assert!(!store.update_cluster(b, cluster, &cluster_fields("stolen")).await.unwrap());
        assert!(!store.delete_cluster(b, cluster).await.unwrap());

        // Editing without a new key keeps the stored one.
        let fields = ClusterFields { name: "lab 2".into(), controller_address: "h:1".into(), api_key: None };
        assert!(store.update_cluster(a, cluster, &fields).await.unwrap());
        let edited = store.cluster(a, cluster).await.unwrap().unwrap();
        assert_eq!((edited.name.as_str(), edited.api_key.as_deref()), ("lab 2", Ok("key-0123456789abcdef")));
        let fields = ClusterFields { api_key: Some(" new-key-0123456789 ".into()), ..fields };
        assert!(store.update_cluster(a, cluster, &fields).await.unwrap());
        assert_eq!(store.cluster(a, cluster).await.unwrap().unwrap().api_key.as_deref(), Ok("new-key-0123456789"));

        let duplicate = store.create_cluster(a, &cluster_fields("lab 2")).await.unwrap_err();
        assert_eq!(duplicate.to_string(), "a cluster with this name already exists");
        store.create_cluster(b, &cluster_fields("lab 2")).await.expect("names are unique per user only");
        assert!(store.delete_cluster(a, cluster).await.unwrap());
        assert_eq!(store.cluster(a, cluster).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn the_local_cluster_is_made_once_per_user_and_is_not_editable() {
    check(|store| async move {
        let (a, b, _, _) = two_users(&store).await;
        let local = store.ensure_local_cluster(a).await.unwrap();
        assert_eq!(store.ensure_local_cluster(a).await.unwrap(), local);
        let local_b = store.ensure_local_cluster(b).await.unwrap();
        assert_ne!(local, local_b);
        let clusters = store.clusters(a).await.unwrap();
        assert_eq!(clusters.len(), 2);
        assert!(clusters[0].embedded && clusters[0].name == LOCAL_CLUSTER, "the local cluster comes first");
        assert!(!store.update_cluster(a, local, &cluster_fields("mine")).await.unwrap());
        assert!(!store.delete_cluster(a, local).await.unwrap());
        assert_eq!(store.user_ids().await.unwrap(), vec![a, b]);
    })
    .await;
}

#[tokio::test]
async fn tasks_keep_their_plugin_and_are_seen_only_by_their_owner() {
    check(|store| async move {
        let (a, b, task, _) = two_users(&store).await;
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let archive = Plugin {
            name: "crate.tar.gz".into(),
            kind: PluginKind::TarGz,
            content: PluginContent::Bytes(bytes.clone()),
        };
        assert!(store.update_task(a, task, "Count <words>", "new", Some(&archive)).await.unwrap());
        let shown = store.task(a, task).await.unwrap().expect("a's task");
        assert_eq!(
            (shown.title.as_str(), shown.plugin_name.as_str(), shown.plugin_kind.as_str()),
            ("Count <words>", "crate.tar.gz", "tar.gz")
        );
        assert_eq!(shown.plugin_size, 70_000);
        assert_eq!(store.task_plugin(a, task).await.unwrap(), Some(archive.clone()));

        assert!(store.update_task(a, task, "Renamed", "", None).await.unwrap());
        assert_eq!(store.task_plugin(a, task).await.unwrap(), Some(archive), "the plugin is kept");

        // A plugin kept as a file: the row names it and holds none of its bytes.
        let file = PluginContent::File { file: "0123-lib.rs".into(), size: 49 << 20 };
        let in_file = Plugin { name: "lib.rs".into(), kind: PluginKind::RustFile, content: file };
        assert!(store.update_task(a, task, "Filed", "", Some(&in_file)).await.unwrap());
        assert_eq!(store.task_plugin(a, task).await.unwrap(), Some(in_file));
        assert_eq!(store.task(a, task).await.unwrap().unwrap().plugin_size, 49 << 20);

        assert_eq!(store.task(b, task).await.unwrap(), None);
        assert_eq!(store.task_plugin(b, task).await.unwrap(), None);
        assert!(!store.update_task(b, task, "x", "", None).await.unwrap());
        assert!(!store.delete_task(b, task).await.unwrap());
        assert_eq!(store.tasks(a).await.unwrap().len(), 1);
        assert_eq!(store.tasks(b).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_run_needs_the_users_own_task_and_cluster() {
    check(|store| async move {
        let (a, b, task, cluster) = two_users(&store).await;
        let b_cluster = store.create_cluster(b, &cluster_fields("b")).await.unwrap().id;
        assert_eq!(store.create_run(b, &new_run(task, b_cluster)).await.unwrap(), None);
        assert_eq!(store.create_run(a, &new_run(task, b_cluster)).await.unwrap(), None);
        let run = store.create_run(a, &new_run(task, cluster)).await.unwrap().expect("a's run");
        assert_eq!(
            (run.state, run.task_title.as_str(), run.cluster_name.as_str()),
            (RunState::Submitting, "Count", "lab")
        );
        assert_eq!(store.run(b, run.id).await.unwrap(), None);
        assert_eq!(store.run_result(b, run.id).await.unwrap(), None);
        assert!(store.task_runs(b, task, 10).await.unwrap().is_empty());
        assert!(store.cluster_runs(b, cluster, 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_run_records_its_job_progress_and_ending_once() {
    check(|store| async move {
        let (a, _, task, cluster) = two_users(&store).await;
        let run = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        assert!(store.set_run_job(run, 42, RunState::Queued).await.unwrap());
        let progress = RunProgress { n_chunks: 4, chunks_done: 2, lines_done: 20, bytes_done: 500, retries: 1 };
        let started = now_ms();
        assert!(store.update_run_progress(run, RunState::Running, &progress, Some(started)).await.unwrap());
        // A later report does not move the start.
        assert!(store.update_run_progress(run, RunState::Running, &progress, Some(started + 5)).await.unwrap());
        let seen = store.run(a, run).await.unwrap().unwrap();
        assert_eq!(
            (seen.job_id, seen.state, seen.progress, seen.started_at),
            (Some(42), RunState::Running, progress, Some(started))
        );
        assert_eq!(store.unfinished_runs().await.unwrap().len(), 1);

        let ending = RunEnding {
            state: RunState::Succeeded,
            result: Some(ResultFile { file: "run-1-x.json".into(), bytes: 7 }),
            error_kind: None,
            error: None,
            started_at: None,
            finished_at: started + 2000,
            progress: Some(RunProgress { chunks_done: 4, ..progress }),
            plugin_output: Some("== chunk 0 (in lines 1-4) stdout\n<b>4</b>\n".into()),
        };
        assert!(store.finish_run(run, &ending).await.unwrap());
        let failed = RunEnding { state: RunState::Failed, error: Some("late".into()), ..ending.clone() };
        assert!(!store.finish_run(run, &failed).await.unwrap(), "the first ending stays");
        assert!(!store.update_run_progress(run, RunState::Running, &progress, None).await.unwrap());
        let done = store.run(a, run).await.unwrap().unwrap();
        assert_eq!(done.progress.chunks_done, 4);
        assert_eq!((done.state, done.duration_ms(), done.error.as_deref()), (RunState::Succeeded, Some(2000), None));
        assert_eq!(done.throughput_bps(), Some(500.0));
        let stored = StoredResult::File(ResultFile { file: "run-1-x.json".into(), bytes: 7 });
        assert_eq!(store.run_result(a, run).await.unwrap(), Some(Some(stored)));
        // The result's file is listed with the run's user, task and cluster, and only theirs.
        for of in [RunsOf::All, RunsOf::User(a), RunsOf::Task { user_id: a, task_id: task }] {
            assert_eq!(store.run_result_files(of).await.unwrap(), ["run-1-x.json"], "{of:?}");
        }
        assert_eq!(store.run_result_files(RunsOf::Cluster { user_id: a, cluster_id: cluster }).await.unwrap().len(), 1);
        assert!(store.run_result_files(RunsOf::User(a + 1000)).await.unwrap().is_empty());
        assert!(store.run_result_files(RunsOf::Task { user_id: a, task_id: task + 1000 }).await.unwrap().is_empty());
        let printed = store.run_plugin_output(a, run).await.unwrap();
        assert_eq!(printed, Some(ending.plugin_output.clone()), "what the plugin printed is kept with the run");
        assert!(store.unfinished_runs().await.unwrap().is_empty());
        assert_eq!(store.task_runs(a, task, 10).await.unwrap().len(), 1);
        assert_eq!(store.cluster_runs(a, cluster, 10).await.unwrap()[0].id, run);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_task_or_a_cluster_deletes_their_runs() {
    check(|store| async move {
        let (a, _, task, cluster) = two_users(&store).await;
        let other_task = store.create_task(a, "Other", "", &plugin("// c")).await.unwrap().id;
        let first = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        let second = store.create_run(a, &new_run(other_task, cluster)).await.unwrap().unwrap().id;
        assert!(store.delete_task(a, task).await.unwrap());
        assert_eq!(store.run(a, first).await.unwrap(), None);
        assert!(store.run(a, second).await.unwrap().is_some());
        assert!(store.delete_cluster(a, cluster).await.unwrap());
        assert_eq!(store.run(a, second).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn reopening_a_database_keeps_its_rows_and_migrates_nothing_twice() {
    for db in TestDb::both().await {
        let key = SecretKey::generate();
        let store = Store::open(&db.url, key.clone()).await.unwrap();
        let user = store.create_user("keep@example.com", "$argon2id$x").await.unwrap();
        store.close().await;
        let reopened = Store::open(&db.url, key).await.unwrap_or_else(|e| panic!("reopen {:?}: {e}", db.backend));
        assert_eq!(reopened.user(user.id).await.unwrap().map(|u| u.email), Some("keep@example.com".into()));
        reopened.close().await;
    }
}

/// A connection of the test's own to the store's database, to see the rows as they are stored.
async fn raw(db: &TestDb) -> sqlx::AnyPool {
    sqlx::AnyPool::connect(&db.url).await.expect("connect to the database")
}

#[tokio::test]
async fn api_keys_are_sealed_in_the_database_and_bound_to_their_row() {
    for db in TestDb::both().await {
        let key = SecretKey::generate();
        let store = Store::open(&db.url, key.clone()).await.unwrap();
        let (a, b, _, cluster) = two_users(&store).await;
        let b_cluster = store.create_cluster(b, &cluster_fields("b")).await.unwrap().id;
        let pool = raw(&db).await;
        let stored: Vec<String> = sqlx::query("SELECT api_key FROM clusters ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get("api_key").unwrap())
            .collect();
        assert_eq!(stored.len(), 2);
        for value in &stored {
            assert!(value.starts_with("v1:") && !value.contains("0123456789abcdef"), "{:?}: {value}", db.backend);
        }
        assert_ne!(stored[0], stored[1], "the same key seals differently for each row");

        // B copies a's sealed key into their own row: it does not open there.
        sqlx::query("UPDATE clusters SET api_key = $1 WHERE id = $2")
            .bind(&stored[0])
            .bind(b_cluster)
            .execute(&pool)
            .await
            .unwrap();
        let moved = store.cluster(b, b_cluster).await.unwrap().unwrap();
        assert_eq!(moved.api_key, Err(UnreadableKey { cluster_id: b_cluster, name: "b".into() }));
        assert_eq!(store.unreadable_api_keys().await.unwrap().len(), 1);
        assert_eq!(store.cluster(a, cluster).await.unwrap().unwrap().api_key.as_deref(), Ok("key-0123456789abcdef"));
        store.close().await;

        // Another secret key opens none of them, and says what to do.
        let other = Store::open(&db.url, SecretKey::generate()).await.unwrap();
        let error = other.cluster(a, cluster).await.unwrap().unwrap().api_key.unwrap_err().to_string();
        assert!(
            error.contains("cannot decrypt the API key of cluster \"lab\"")
                && error.contains("secret key changed")
                && error.contains("enter the key again"),
            "{error}"
        );
        other.close().await;
        pool.close().await;
    }
}

#[tokio::test]
async fn api_keys_stored_in_plain_text_are_sealed_once() {
    for db in TestDb::both().await {
        let key = SecretKey::generate();
        let store = Store::open(&db.url, key.clone()).await.unwrap();
        let (a, _, _, cluster) = two_users(&store).await;
        // A row as a web app from before sealing wrote it.
        let pool = raw(&db).await;
        sqlx::query("UPDATE clusters SET api_key = 'plain-0123456789abcdef', api_key_sealed = 0 WHERE id = $1")
            .bind(cluster)
            .execute(&pool)
            .await
            .unwrap();
        let local = store.ensure_local_cluster(a).await.unwrap();
        assert_eq!(store.seal_plain_api_keys().await.unwrap(), 1, "{:?}", db.backend);
        assert_eq!(store.seal_plain_api_keys().await.unwrap(), 0, "nothing twice");
        let row = sqlx::query("SELECT api_key, api_key_sealed FROM clusters WHERE id = $1")
            .bind(cluster)
            .fetch_one(&pool)
            .await
            .unwrap();
        let stored: String = row.try_get("api_key").unwrap();
        assert!(!stored.contains("plain-") && row.try_get::<i64, _>("api_key_sealed").unwrap() == 1, "{stored}");
        assert_eq!(store.cluster(a, cluster).await.unwrap().unwrap().api_key.as_deref(), Ok("plain-0123456789abcdef"));
        assert_eq!(store.cluster(a, local).await.unwrap().unwrap().api_key.as_deref(), Ok(""));
        assert_eq!(store.sealed_api_key_count().await.unwrap(), 1, "the local cluster has no key");
        pool.close().await;
        store.close().await;
    }
}

#[test]
fn both_databases_have_the_same_migrations() {
    let names = |dir: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"));
}

#[tokio::test]
async fn a_session_idle_longer_than_the_timeout_ends_and_a_request_keeps_one_alive() {
    check_raw(|store, pool| async move {
        let user = store.create_user("idle@example.com", "$argon2id$x").await.unwrap();
        let (hour, minute) = (3_600_000, 60_000);
        let id = store.create_session(user.id, "hash-idle", "csrf", now_ms() + 24 * hour).await.unwrap();
        // Its last request was two hours ago.
        exec(&pool, "UPDATE sessions SET last_seen_at = $1 WHERE id = $2", now_ms() - 2 * hour, id).await;
        assert_eq!(store.session("hash-idle", hour).await.unwrap(), None, "idle beyond an hour");
        let session = store.session("hash-idle", 3 * hour).await.unwrap().expect("within three hours");
        assert!(now_ms() - session.last_seen_at < minute, "the request counted as activity");
        assert!(store.session("hash-idle", hour).await.unwrap().is_some(), "active again");
        assert_eq!(store.delete_expired_sessions(hour).await.unwrap(), 0);
        exec(&pool, "UPDATE sessions SET last_seen_at = $1 WHERE id = $2", now_ms() - 2 * hour, id).await;
        assert_eq!(store.delete_expired_sessions(hour).await.unwrap(), 1, "the sweep removes idle sessions");
    })
    .await;
}

/// Runs `test` with a store and a raw connection to its database, on a fresh SQLite database,
/// then on a fresh PostgreSQL database.
async fn check_raw<F, Fut>(test: F)
where
    F: Fn(Store, sqlx::AnyPool) -> Fut,
    Fut: Future<Output = ()>,
{
    for db in TestDb::both().await {
        let store = Store::open(&db.url, SecretKey::generate()).await.expect("the store opens");
        test(store.clone(), raw(&db).await).await;
        store.close().await;
    }
}

/// Runs one statement with two BIGINT parameters, to set what no store call sets.
async fn exec(pool: &sqlx::AnyPool, sql: &str, a: i64, b: i64) {
    sqlx::query(sql).bind(a).bind(b).execute(pool).await.expect("the statement runs");
}

/// How many rows of `table` belong to `user_id`.
async fn rows_of(pool: &sqlx::AnyPool, table: &str, user_id: i64) -> i64 {
    let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table} WHERE user_id = $1"))
        .bind(user_id)
        .fetch_one(pool)
        .await
        .expect("a count");
    row.try_get("n").expect("n")
}

#[tokio::test]
async fn logging_out_everywhere_ends_every_session_or_all_but_the_current_one() {
    check(|store| async move {
        let (a, b, _, _) = two_users(&store).await;
        let hour = 3_600_000;
        let keep = store.create_session(a, "a-1", "c", now_ms() + hour).await.unwrap();
        store.create_session(a, "a-2", "c", now_ms() + hour).await.unwrap();
        store.create_session(b, "b-1", "c", now_ms() + hour).await.unwrap();
        assert_eq!(store.delete_user_sessions(a, Some(keep)).await.unwrap(), 1);
        assert!(
            store.session("a-1", hour).await.unwrap().is_some() && store.session("a-2", hour).await.unwrap().is_none()
        );
        assert_eq!(store.delete_user_sessions(a, None).await.unwrap(), 1);
        assert!(store.session("a-1", hour).await.unwrap().is_none());
        assert!(store.session("b-1", hour).await.unwrap().is_some(), "another user's session is untouched");
        assert!(store.set_password_hash(a, "$argon2id$new").await.unwrap());
        assert_eq!(store.user(a).await.unwrap().unwrap().password_hash, "$argon2id$new");
    })
    .await;
}

#[tokio::test]
async fn deleting_an_account_removes_its_sessions_clusters_tasks_and_runs_and_nothing_else() {
    check_raw(|store, pool| async move {
        let (a, b, task, cluster) = two_users(&store).await;
        let b_cluster = store.create_cluster(b, &cluster_fields("b-lab")).await.unwrap().id;
        let b_task = store.tasks(b).await.unwrap()[0].id;
        store.create_run(a, &new_run(task, cluster)).await.unwrap().expect("a's run");
        store.create_run(b, &new_run(b_task, b_cluster)).await.unwrap().expect("b's run");
        store.create_session(a, "a-s", "c", now_ms() + 3_600_000).await.unwrap();
        store.create_session(b, "b-s", "c", now_ms() + 3_600_000).await.unwrap();

        assert!(store.delete_user(a).await.unwrap());
        assert_eq!(store.user(a).await.unwrap(), None);
        assert_eq!(store.user_by_email("a@example.com").await.unwrap(), None);
        for table in ["sessions", "clusters", "tasks", "runs"] {
            assert_eq!(rows_of(&pool, table, a).await, 0, "{table} of the deleted user");
            assert_eq!(rows_of(&pool, table, b).await, 1, "{table} of the other user");
        }
        assert!(!store.delete_user(a).await.unwrap(), "deleting twice finds no one");
        // The address is free again.
        store.create_user("a@example.com", "$argon2id$again").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_users_runs_are_listed_by_state_and_each_task_knows_its_last_run() {
    check(|store| async move {
        let (a, b, task, cluster) = two_users(&store).await;
        let first = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        let ending = RunEnding {
            state: RunState::Failed,
            result: None,
            error_kind: Some("plugin".into()),
            error: Some("boom".into()),
            started_at: None,
            finished_at: now_ms(),
            progress: None,
            plugin_output: None,
        };
        store.finish_run(first, &ending).await.unwrap();
        let second = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        let ids = |runs: Vec<kiln_web::store::runs::Run>| runs.iter().map(|run| run.id).collect::<Vec<_>>();
        assert_eq!(ids(store.user_runs(a, None, 10).await.unwrap()), vec![second, first]);
        assert_eq!(ids(store.user_runs(a, Some(RunState::Failed), 10).await.unwrap()), vec![first]);
        assert_eq!(ids(store.user_runs(a, Some(RunState::Submitting), 10).await.unwrap()), vec![second]);
        assert!(store.user_runs(b, None, 10).await.unwrap().is_empty(), "b sees none of a's runs");
        assert_eq!(store.last_run_states(a).await.unwrap(), vec![(task, RunState::Submitting)]);
        assert!(store.last_run_states(b).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_runs_kept_input_and_figures_are_stored_and_expire() {
    check(|store| async move {
        let (a, _, task, cluster) = two_users(&store).await;
        let run = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        let later = store.create_run(a, &new_run(task, cluster)).await.unwrap().unwrap().id;
        store.keep_run_input(run, "run-1-x.txt", now_ms() - 1).await.unwrap();
        store.keep_run_input(later, "run-2-y.txt", now_ms() + 3_600_000).await.unwrap();
        assert_eq!(store.run(a, run).await.unwrap().unwrap().kept_input(), None, "its time has passed");
        assert_eq!(store.run(a, later).await.unwrap().unwrap().kept_input(), Some("run-2-y.txt"));
        let mut files = store.run_input_files().await.unwrap();
        files.sort();
        assert_eq!(files, ["run-1-x.txt", "run-2-y.txt"]);
        assert_eq!(store.expire_run_inputs(now_ms()).await.unwrap(), ["run-1-x.txt"]);
        assert_eq!(store.run_input_files().await.unwrap(), ["run-2-y.txt"]);
        assert_eq!(store.user_run_input_files(a).await.unwrap(), ["run-2-y.txt"]);

        assert!(store.save_run_figures(run, "abc123", "{\"samples\":[[10,5]]}", false).await.unwrap());
        assert_eq!(store.run_figures(a, run).await.unwrap(), Some(Some("{\"samples\":[[10,5]]}".to_owned())));
        assert_eq!(store.run(a, run).await.unwrap().unwrap().plugin_hash.as_deref(), Some("abc123"));
        let ending = RunEnding {
            state: RunState::Succeeded,
            result: Some(ResultFile { file: "run-2-z.json".into(), bytes: 1 }),
            error_kind: None,
            error: None,
            started_at: None,
            finished_at: now_ms(),
            progress: None,
            plugin_output: None,
        };
        store.finish_run(run, &ending).await.unwrap();
        // A late progress update does not overwrite the figures of the ending; the ending's do.
        assert!(!store.save_run_figures(run, "abc123", "{}", false).await.unwrap());
        assert!(store.save_run_figures(run, "abc123", "{\"samples\":[]}", true).await.unwrap());
        assert_eq!(store.run_figures(a, run).await.unwrap(), Some(Some("{\"samples\":[]}".to_owned())));
    })
    .await;
}
