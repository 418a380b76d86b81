//! A job's input on the controller, with fake workers (`util/fake_cluster.rs`,
//! `util/fake_worker.rs`): chunks run while the input still uploads, an upload cut by a
//! restart resumes where the stored file ends, an empty input aggregates nothing, and input
//! that is not UTF-8 fails the job naming its line.

#[path = "util/fake_cluster.rs"]
mod fake_cluster;
#[path = "util/fake_worker.rs"]
mod fake_worker;

use fake_cluster::{CHUNK_SIZE, Cluster, connect, long, start_controller, words};
use fake_worker::{check, quick, runs_of};
use kiln_engine::rpc::pieces::SharedBytes;
use kiln_engine::rpc::{FailureKind, JobId, JobSpec, JobState, RpcError};
use tarpc::context;

// Jobs whose input the tests upload piece by piece, cut where they choose.
impl Cluster {
    /// Creates a job of the word count, without input.
    async fn create(&self, processes: u32) -> JobId {
        let spec = JobSpec {
            owner: "cli".into(),
            plugin_hash: self.upload_plugin().await,
            params: String::new(),
            processes,
            input_name: "words.txt".into(),
            input_files: Vec::new(),
            input_urls: Vec::new(),
            max_attempts: 0,
            chunk_size: CHUNK_SIZE,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        };
        self.client.create_job(context::current(), self.key.clone(), spec).await.unwrap().unwrap()
    }

    /// Uploads `bytes` at `offset`, in pieces of 3,000 bytes.
    async fn upload(&self, job: JobId, mut offset: u64, bytes: &[u8]) {
        for piece in bytes.chunks(3_000) {
            let sent = SharedBytes::from(piece.to_vec());
            self.client
                .upload_input(context::current(), self.key.clone(), job, 0, offset, sent)
                .await
                .unwrap()
                .unwrap();
            offset += piece.len() as u64;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_input_aggregates_no_partials_and_bad_input_names_its_line() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 1).await;
    let empty = cluster.submit("", 1, 0).await;
    let status = cluster.finish(empty).await;
    assert_eq!((status.state, status.n_chunks), (JobState::Succeeded, 0));
    assert_eq!(cluster.result(empty).await.unwrap(), "{}");

    let spec = JobSpec {
        owner: "cli".into(),
        plugin_hash: cluster.upload_plugin().await,
        params: String::new(),
        processes: 1,
        input_name: "bad.txt".into(),
        input_files: Vec::new(),
        input_urls: Vec::new(),
        max_attempts: 0,
        chunk_size: 0,
        memory_limit: 0,
        chunk_timeout_ms: 0,
        speculative: true,
    };
    let job = cluster.client.create_job(context::current(), cluster.key.clone(), spec).await.unwrap().unwrap();
    let bytes = SharedBytes::from(b"fine\nnot \xff utf-8\n".to_vec());
    cluster.client.upload_input(context::current(), cluster.key.clone(), job, 0, 0, bytes).await.unwrap().unwrap();
    let short = cluster.client.finish_input(long(), cluster.key.clone(), job, 99).await.unwrap();
    assert!(matches!(&short, Err(RpcError::Invalid(m)) if m.contains("received 17 bytes")), "{short:?}");
    let finished = cluster.client.finish_input(long(), cluster.key.clone(), job, 17).await.unwrap();
    assert!(matches!(&finished, Err(RpcError::Invalid(m)) if m.contains("line 2")), "{finished:?}");
    let again = cluster.client.finish_input(long(), cluster.key.clone(), job, 17).await.unwrap();
    assert!(matches!(&again, Err(RpcError::Invalid(m)) if m.contains("line 2")), "{again:?}");
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind), (JobState::Failed, FailureKind::Input));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_run_while_the_input_is_still_uploading() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 2).await;
    let text = words(15, 3000);
    let half = text[..text.len() / 2].rfind('\n').unwrap() + 1;
    let job = cluster.create(2).await;
    cluster.upload(job, 0, &text.as_bytes()[..half]).await;
    let early = cluster.wait_until(job, |status| status.chunks_done >= 5).await;
    assert_eq!(early.state, JobState::Uploading, "the input is not complete yet: {early:?}");
    assert!(early.bytes_done <= half as u64);
    cluster.upload(job, half as u64, &text.as_bytes()[half..]).await;
    cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap().unwrap();
    let done = cluster.finish(job).await;
    assert_eq!((done.state, done.bytes_total, done.lines_done), (JobState::Succeeded, text.len() as u64, 3000));
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(runs_of(&worker, job) as u64, done.n_chunks, "each chunk ran once");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_restart_resumes_where_the_file_ends_and_keeps_its_done_chunks() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("before", quick(), 2).await;
    let text = words(16, 3000);
    // Mid-line, so that the restart has bytes to cut again.
    let cut_at = text.len() * 2 / 5 + 7;
    let job = cluster.create(2).await;
    cluster.upload(job, 0, &text.as_bytes()[..cut_at]).await;
    let before = cluster.wait_until(job, |status| status.chunks_done >= 5).await;
    let Cluster { dir, controller, key, faults, attempts, .. } = cluster;
    controller.shutdown().await;
    worker.kill().await;

    let controller = start_controller(dir.path()).await;
    let client = connect(controller.local_addr()).await;
    let cluster = Cluster { dir, controller, client, key, faults, attempts };
    let resumed = cluster.watch(job, 0).await;
    assert_eq!((resumed.state, resumed.bytes_total), (JobState::Uploading, cut_at as u64), "{resumed:?}");
    let after = cluster.worker("after", quick(), 2).await;
    // The client resends its last piece (acknowledged and ignored), then goes on.
    let resend = cut_at - 1000;
    cluster.upload(job, resend as u64, &text.as_bytes()[resend..]).await;
    cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap().unwrap();
    let done = cluster.finish(job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let rerun = runs_of(&after, job) as u64;
    assert!(
        rerun <= done.n_chunks - before.chunks_done,
        "{rerun} chunks ran again, {} were stored",
        before.chunks_done
    );
    after.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_that_is_not_utf8_fails_the_job_during_its_upload() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 1).await;
    let job = cluster.create(1).await;
    let mut text = words(17, 200).into_bytes();
    text.extend_from_slice(b"bad \xff byte\n");
    text.extend_from_slice(words(18, 200).as_bytes());
    let sent = SharedBytes::from(text.clone());
    let refused = cluster.client.upload_input(context::current(), cluster.key.clone(), job, 0, 0, sent).await.unwrap();
    assert!(matches!(&refused, Err(RpcError::Invalid(m)) if m.contains("line 201")), "{refused:?}");
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind), (JobState::Failed, FailureKind::Input));
    let late = SharedBytes::from(b"more\n".to_vec());
    let more =
        cluster.client.upload_input(context::current(), cluster.key.clone(), job, 0, text.len() as u64, late).await;
    assert!(matches!(&more.unwrap(), Err(RpcError::Invalid(m)) if m.contains("line 201")), "the failure is kept");
    worker.kill().await;
    cluster.stop().await;
}
