//! The controller's RPC surface, with the controller started in-process and fake workers
//! (`util/fake_cluster.rs`, `util/fake_worker.rs`): wrong credentials are refused, a watch
//! answers as soon as a job changes, a job's owner is checked and passed on, and finished and
//! unfinished jobs survive a restart. Dispatch, failures and uploads are in
//! `controller_dispatch.rs`, `controller_failures.rs` and `controller_upload.rs`.

#[path = "util/fake_cluster.rs"]
mod fake_cluster;
#[path = "util/fake_worker.rs"]
mod fake_worker;

use std::time::{Duration, Instant};

use fake_cluster::{Cluster, connect, long, start_controller, words};
use fake_worker::{SOON, check, quick, runs_of, slow};
use kiln_engine::plugin_source::SourceTree;
use kiln_engine::rpc::pieces::SharedBytes;
use kiln_engine::rpc::{JobSpec, JobState, PROTOCOL_VERSION, RpcError, Secret, WorkerInfo};
use serde_bytes::ByteBuf;
use tarpc::context;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_and_nothing_is_created() {
    let cluster = Cluster::new().await;
    let wrong = Secret::new("not the key");
    let c = &cluster.client;
    let archive = ByteBuf::from(SourceTree::from_single_file(b"\n").unwrap().to_tar_gz());
    let spec = JobSpec {
        owner: "cli".into(),
        plugin_hash: "ab".into(),
        params: String::new(),
        processes: 1,
        input_name: "x".into(),
        input_files: Vec::new(),
        input_urls: Vec::new(),
        max_attempts: 0,
        chunk_size: 0,
        memory_limit: 0,
        chunk_timeout_ms: 0,
        speculative: true,
    };
    let refused =
        |result: Result<(), RpcError>| assert!(matches!(result, Err(RpcError::Unauthorized(_))), "{result:?}");
    let ctx = context::current;
    refused(c.upload_plugin(ctx(), wrong.clone(), archive).await.unwrap().map(drop));
    refused(c.create_job(ctx(), wrong.clone(), spec).await.unwrap().map(drop));
    refused(c.upload_input(ctx(), wrong.clone(), 1, 0, 0, SharedBytes::from(vec![1])).await.unwrap());
    refused(c.finish_input(ctx(), wrong.clone(), 1, 1).await.unwrap());
    refused(c.watch(ctx(), wrong.clone(), 1, 0).await.unwrap().map(drop));
    refused(c.result_piece(ctx(), wrong.clone(), 1, 0).await.unwrap().map(drop));
    refused(c.cancel(ctx(), wrong.clone(), 1).await.unwrap().map(drop));
    refused(c.list_jobs(ctx(), wrong.clone()).await.unwrap().map(drop));
    refused(c.cluster_info(ctx(), wrong.clone()).await.unwrap().map(drop));

    let info = |address: String| WorkerInfo {
        protocol: PROTOCOL_VERSION,
        address,
        processes: 1,
        hostname: "h".into(),
        public_key: ByteBuf::new(),
    };
    refused(c.register(ctx(), wrong.clone(), info("127.0.0.1:1".into())).await.unwrap().map(drop));
    let old = WorkerInfo { protocol: PROTOCOL_VERSION + 1, ..info("127.0.0.1:1".into()) };
    let mismatch = c.register(ctx(), cluster.controller.join_token().clone(), old).await.unwrap();
    assert!(matches!(mismatch, Err(RpcError::VersionMismatch { .. })), "{mismatch:?}");

    // A registered worker's id with the wrong secret.
    let worker = cluster.worker("w", quick(), 1).await;
    refused(c.heartbeat(ctx(), worker.worker_id, wrong.clone()).await.unwrap());
    refused(c.fetch_plugin(ctx(), worker.worker_id, wrong.clone(), "ab".into()).await.unwrap().map(drop));
    refused(c.activate(ctx(), worker.worker_id, wrong.clone()).await.unwrap());
    refused(c.remove_worker(ctx(), wrong.clone(), worker.worker_id).await.unwrap());

    let jobs = c.list_jobs(ctx(), cluster.key.clone()).await.unwrap().unwrap();
    assert!(jobs.is_empty(), "no job was created: {jobs:?}");
    let plugins = std::fs::read_dir(cluster.dir.path().join("plugins")).unwrap().count();
    assert_eq!(plugins, 0, "no plugin was stored");
    let cluster_info = c.cluster_info(ctx(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(cluster_info.workers.len(), 1, "only the worker with the right token joined");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_soon_after_a_change_not_after_its_wait() {
    let cluster = Cluster::new().await;
    let job = cluster.submit(&words(12, 200), 1, 0).await;
    let seen = cluster.watch(job, u64::MAX).await.seq;
    let watching = {
        let client = cluster.client.clone();
        let key = cluster.key.clone();
        tokio::spawn(async move { client.watch(long(), key, job, seen).await.unwrap().unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watching.is_finished(), "nothing changed yet, so the watch waits");
    let worker = cluster.worker("w", slow(200), 1).await;
    let changed_at = Instant::now();
    let status = tokio::time::timeout(SOON, watching).await.expect("the watch answered soon").unwrap();
    // The first change after a worker joins is the plugin's build starting (the job stays
    // Queued while it builds, with its progress in `build`) or, once built, the job running.
    assert!(status.seq > seen && (status.build.is_some() || status.state != JobState::Queued), "{status:?}");
    assert!(changed_at.elapsed() < SOON);
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_owner_is_checked_stored_listed_and_sent_to_the_workers() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 2).await;
    let spec = JobSpec { owner: "web:42".into(), ..cluster.spec(2, 0).await };
    let job = cluster.submit_spec(&words(14, 300), spec.clone()).await;
    let status = cluster.finish(job).await;
    assert_eq!((status.state, status.owner.as_str()), (JobState::Succeeded, "web:42"));
    assert_eq!(worker.record.prepared.lock().unwrap().clone(), [(job, "web:42".to_owned())]);
    let jobs = cluster.client.list_jobs(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!((jobs[0].id, jobs[0].owner.as_str()), (job, "web:42"));

    // Owners become directory names on workers: anything but a plain name is refused.
    for owner in ["", "../../etc", "a/b", "web 1", ".x"] {
        let spec = JobSpec { owner: owner.into(), ..spec.clone() };
        let refused = cluster.client.create_job(context::current(), cluster.key.clone(), spec).await.unwrap();
        assert!(matches!(&refused, Err(RpcError::Invalid(m)) if m.contains("owner")), "{owner:?}: {refused:?}");
    }
    let jobs = cluster.client.list_jobs(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1, "no job was created under a refused owner");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_job_and_secrets_survive_a_restart() {
    let cluster = Cluster::new().await;
    assert_eq!(cluster.controller.generated(), vec!["api_key", "join_token"]);
    let worker = cluster.worker("w", quick(), 2).await;
    let text = words(13, 800);
    let job = cluster.submit(&text, 2, 0).await;
    let before = cluster.finish(job).await;
    assert_eq!(before.state, JobState::Succeeded);
    let Cluster { dir, controller, key, .. } = cluster;
    worker.kill().await;
    controller.shutdown().await;

    let controller = start_controller(dir.path()).await;
    assert!(controller.generated().is_empty(), "the stored secrets are used");
    assert!(controller.api_key().matches(&key));
    let client = connect(controller.local_addr()).await;
    let result = client.result_piece(context::current(), key.clone(), job, 0).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(result.bytes.into_vec()).unwrap(), check(&text), "the result, kept on disk");
    let status = client.watch(context::current(), key.clone(), job, 0).await.unwrap().unwrap();
    assert_eq!((status.state, status.chunks_done, status.lines_done), (JobState::Succeeded, before.n_chunks, 800));
    let jobs = client.list_jobs(context::current(), key).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_job_resumes_after_a_restart_without_redoing_stored_chunks() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("before", slow(20), 2).await;
    let text = words(14, 4000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.wait_until(job, |status| status.chunks_done >= 10).await;
    let n_chunks = status.n_chunks;
    let Cluster { dir, controller, key, faults, attempts, .. } = cluster;
    controller.shutdown().await;
    worker.kill().await;

    let controller = start_controller(dir.path()).await;
    let client = connect(controller.local_addr()).await;
    let cluster = Cluster { dir, controller, client, key, faults, attempts };
    let after = cluster.worker("after", quick(), 2).await;
    let done = cluster.finish(job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let rerun = runs_of(&after, job) as u64;
    assert!(rerun <= n_chunks - status.chunks_done, "{rerun} chunks ran again, {} were stored", status.chunks_done);
    after.kill().await;
    cluster.stop().await;
}
