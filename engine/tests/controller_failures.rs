//! What a failing chunk costs on the controller, with fake workers that fail chunks on purpose
//! (`util/fake_cluster.rs`, `util/fake_worker.rs`): a retry on another worker, only its own
//! attempt inside a batch, the job once attempts run out; a lost worker costs no attempt, and
//! a build failure fails the job with cargo's diagnostics.

#[path = "util/fake_cluster.rs"]
mod fake_cluster;
#[path = "util/fake_worker.rs"]
mod fake_worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_cluster::{CHUNK_SIZE, Cluster, short_lines, submit_line_per_chunk, words};
use fake_worker::{Faults, Knobs, SOON, batches_of, check, quick, slow};
use kiln_engine::rpc::{FailureKind, JobState};
use tarpc::context;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_inside_batches_cost_only_their_own_chunk_and_keep_the_others_partials() {
    let failing = [700, 1234, 2000];
    let cluster = Cluster::with_faults(Faults { lines: HashSet::from(failing), ..Faults::default() }).await;
    let a = cluster.worker("a", quick(), 2).await;
    let b = cluster.worker("b", quick(), 2).await;
    let n_lines = 3000;
    let text = short_lines(n_lines);
    let job = submit_line_per_chunk(&cluster, &text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, failing.len() as u64, "one retry per failing chunk");

    // Each failing chunk's first attempt came in a batch with others, whose partials were kept:
    // every other chunk ran exactly once, the failing ones twice, the retry on the other worker.
    let attempts = cluster.attempts.lock().unwrap().clone();
    let mut runs: BTreeMap<u64, Vec<(&str, bool)>> = BTreeMap::new();
    for (worker, line, succeeded) in attempts {
        runs.entry(line).or_default().push((worker, succeeded));
    }
    assert_eq!(runs.len() as u64, n_lines);
    for (line, tries) in runs {
        if !failing.contains(&line) {
            assert_eq!(tries, vec![(tries[0].0, true)], "chunk {line} ran again although its partial came back");
            continue;
        }
        assert_eq!(tries.len(), 2, "chunk {line}: {tries:?}");
        assert!(!tries[0].1 && tries[1].1 && tries[0].0 != tries[1].0, "chunk {line}: {tries:?}");
        let failed_on = if tries[0].0 == "a" { &a } else { &b };
        let first_call = batches_of(failed_on).into_iter().find(|batch| batch.contains(&line)).unwrap();
        assert!(first_call.len() > 1, "chunk {line} failed alone, not inside a batch: {first_call:?}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_failing_every_time_inside_batches_fails_the_job_naming_it_alone() {
    let line = 1500;
    let faults = Faults { lines: HashSet::from([line]), always: true, ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let worker = cluster.worker("w", quick(), 2).await;
    let job = submit_line_per_chunk(&cluster, &short_lines(3000), 2, 3).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Failed);
    let failure = status.failure.expect("a failure");
    // The same failure twice: deterministic, so the job fails then, not after its 3 attempts.
    assert_eq!((failure.kind, failure.attempts), (FailureKind::Plugin, 2));
    assert_eq!(failure.message, format!("injected failure at line {line}"));
    let span = failure.chunk.expect("the chunk is named");
    assert_eq!((span.index, span.first_line, span.last_line), (line - 1, line, line));
    assert_eq!(status.retries, 1, "only the failing chunk was charged");
    let first_call = batches_of(&worker).into_iter().find(|batch| batch.contains(&line)).unwrap();
    assert!(first_call.len() > 1, "the chunk first failed alone, not inside a batch: {first_call:?}");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_failing_once_is_retried_on_another_worker_and_the_result_is_exact() {
    let faults = Faults { lines: HashSet::from([1]), ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let a = cluster.worker("a", slow(5), 2).await;
    let b = cluster.worker("b", slow(5), 2).await;
    let text = words(8, 2000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, 1);
    let attempts: Vec<_> = cluster.attempts.lock().unwrap().iter().filter(|(_, line, _)| *line == 1).copied().collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_ne!(attempts[0].0, attempts[1].0, "the retry ran on the other worker");
    assert!(!attempts[0].2 && attempts[1].2);
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_failing_every_time_fails_the_job_after_max_attempts() {
    let text = words(9, 400);
    let second_chunk_line = text[..CHUNK_SIZE as usize].matches('\n').count() as u64 + 1;
    // A different message each time: not a repeated fault, so every attempt is used.
    let faults = Faults { lines: HashSet::from([second_chunk_line]), always: true, varying: true, ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let worker = cluster.worker("w", quick(), 2).await;
    let job = cluster.submit(&text, 2, 3).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Failed);
    let failure = status.failure.expect("a failure");
    assert_eq!(failure.kind, FailureKind::Plugin);
    assert_eq!(failure.message, format!("injected failure 3 at line {second_chunk_line}"));
    assert_eq!(failure.attempts, 3);
    let span = failure.chunk.expect("the chunk is named");
    assert_eq!((span.index, span.first_line), (1, second_chunk_line));
    assert!(span.last_line > span.first_line);
    assert_eq!(status.retries, 2);
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_worker_chunks_run_elsewhere_without_counting_an_attempt() {
    let cluster = Cluster::new().await;
    let stuck = cluster.worker("stuck", slow(60_000), 2).await;
    let text = words(10, 1500);
    let job = cluster.submit(&text, 2, 0).await;
    tokio::time::timeout(SOON, async {
        while stuck.record.in_flight.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stuck worker took chunks");
    let healthy = cluster.worker("healthy", quick(), 2).await;
    stuck.kill().await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, 0, "a lost worker costs no attempt");
    let info = cluster.client.cluster_info(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(info.workers.iter().map(|w| w.worker_id).collect::<Vec<_>>(), vec![healthy.worker_id]);
    healthy.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_failure_fails_the_job_with_the_diagnostics() {
    let cluster = Cluster::new().await;
    let diagnostics = "error[E0425]: cannot find value `x` in this scope".to_owned();
    let worker = cluster.worker("w", Knobs { build_error: Some(diagnostics.clone()), ..quick() }, 1).await;
    let job = cluster.submit(&words(11, 100), 1, 0).await;
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind, failure.message), (JobState::Failed, FailureKind::Build, diagnostics));
    worker.kill().await;
    cluster.stop().await;
}
