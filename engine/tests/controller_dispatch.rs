//! How the controller hands out chunks to fake workers (`util/fake_cluster.rs`,
//! `util/fake_worker.rs`): over two workers with exact counts, combined or not, to a worker
//! that registers late or joins mid-job, never more at once than a worker's processes, in
//! batches when chunks are tiny, and no more for a cancelled job.

#[path = "util/fake_cluster.rs"]
mod fake_cluster;
#[path = "util/fake_worker.rs"]
mod fake_worker;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_cluster::{CHUNK_SIZE, Cluster, long, short_lines, submit_line_per_chunk, words};
use fake_worker::{Knobs, SOON, batches_of, check, quick, runs_of, slow};
use kiln_engine::rpc::{JobState, RpcError};
use tarpc::context;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_on_two_workers_and_counts_exactly() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", slow(5), 2).await;
    let b = cluster.worker("b", slow(5), 2).await;
    let text = words(1, 30_000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let group = kiln_engine::rules::combine::combine_group(CHUNK_SIZE);
    assert_eq!(group, 256, "small chunks make large groups");
    assert!(status.n_chunks > 2 * group, "the input spans several combine groups: {}", status.n_chunks);
    assert_eq!(
        (status.chunks_done, status.bytes_done, status.bytes_total),
        (status.n_chunks, text.len() as u64, text.len() as u64)
    );
    assert_eq!(status.lines_done, 30_000);
    assert!(runs_of(&a, job) > 0 && runs_of(&b, job) > 0, "both workers ran chunks");
    let per_worker: u64 = status.workers.iter().map(|w| w.chunks_done).sum();
    assert_eq!(per_worker, status.n_chunks);
    assert!(status.started_ms.is_some() && status.finished_ms.is_some());
    // Complete groups were merged by `combine`: aggregate got one partial per group and the
    // chunks of the incomplete last group.
    let aggregated = a.record.aggregated.load(Ordering::SeqCst) + b.record.aggregated.load(Ordering::SeqCst);
    assert_eq!(aggregated, status.n_chunks / group + status.n_chunks % group);
    tokio::time::timeout(SOON, async {
        while a.record.released.lock().unwrap().is_empty() || b.record.released.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both workers were told to release the job");
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_without_combine_gets_every_partial_in_order() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", Knobs::default(), 3).await;
    let text = words(2, 3000);
    let job = cluster.submit(&text, 3, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(a.record.aggregated.load(Ordering::SeqCst), status.n_chunks, "one partial per chunk");
    a.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_without_workers_waits_queued_then_runs_when_one_registers() {
    let cluster = Cluster::new().await;
    let text = words(3, 500);
    let job = cluster.submit(&text, 2, 0).await;
    let again = cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap();
    assert_eq!(again, Ok(()), "a repeated finish is acknowledged");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = cluster.watch(job, u64::MAX).await;
    assert_eq!(status.state, JobState::Queued);
    let worker = cluster.worker("late", quick(), 2).await;
    assert_eq!(cluster.finish(job).await.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_joining_mid_job_gets_chunks() {
    let cluster = Cluster::new().await;
    let first = cluster.worker("first", slow(40), 1).await;
    let text = words(4, 3000);
    let job = cluster.submit(&text, 2, 0).await;
    cluster.wait_until(job, |status| status.chunks_done >= 3).await;
    let second = cluster.worker("second", slow(5), 2).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert!(runs_of(&second, job) > runs_of(&first, job), "the faster newcomer took more chunks");
    first.kill().await;
    second.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_stops_dispatching_and_the_next_job_completes() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", slow(50), 2).await;
    let long_text = words(5, 5000);
    let short_text = words(6, 300);
    let long_job = cluster.submit(&long_text, 2, 0).await;
    let short_job = cluster.submit(&short_text, 2, 0).await;
    cluster.wait_until(long_job, |status| status.chunks_done >= 2).await;
    let status = cluster.client.cancel(context::current(), cluster.key.clone(), long_job).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    let runs_at_cancel = runs_of(&worker, long_job);

    let short = cluster.finish(short_job).await;
    assert_eq!(short.state, JobState::Succeeded);
    assert_eq!(cluster.result(short_job).await.unwrap(), check(&short_text));
    // A call sent just before the cancel may reach the worker just after it: at most one per slot.
    assert!(runs_of(&worker, long_job) <= runs_at_cancel + 2, "nothing was dispatched after the cancel");
    assert!(runs_at_cancel < status.n_chunks as usize);
    let result = cluster.result(long_job).await;
    assert!(matches!(&result, Err(RpcError::Invalid(m)) if m.contains("Cancelled")), "{result:?}");
    assert!(worker.record.released.lock().unwrap().contains(&long_job));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_worker_never_exceed_its_slots_and_one_sent_ahead_per_slot() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", slow(15), 8).await;
    let b = cluster.worker("b", slow(15), 8).await;
    let text = words(7, 4000);
    let job = cluster.submit(&text, 3, 0).await;
    assert_eq!(cluster.finish(job).await.state, JobState::Succeeded);
    for worker in [&a, &b] {
        let max = worker.record.max_in_flight.load(Ordering::SeqCst);
        // The job's 3 slots, and a call per slot sent ahead (the default `--prefetch` of 1).
        assert!((2..=6).contains(&max), "at most 6 calls at once, and more than one: {max}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tiny_chunks_travel_in_batches_within_the_slots_and_count_exactly() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", quick(), 2).await;
    let b = cluster.worker("b", quick(), 2).await;
    let n_lines = 5000;
    let text = short_lines(n_lines);
    let job = submit_line_per_chunk(&cluster, &text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!((status.n_chunks, status.chunks_done, status.lines_done), (n_lines, n_lines, n_lines));
    assert_eq!(status.workers.iter().map(|w| w.chunks_done).sum::<u64>(), n_lines, "each chunk counted once");

    let batches: Vec<Vec<u64>> = batches_of(&a).into_iter().chain(batches_of(&b)).collect();
    let mut ran: Vec<u64> = batches.iter().flatten().copied().collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran, (1..=n_lines).collect::<Vec<_>>(), "every chunk was sent");
    let largest = batches.iter().map(Vec::len).max().unwrap();
    assert!(largest > 1 && largest <= 256, "tiny chunks travel in batches of at most 256: {largest}");
    assert!(batches.len() < n_lines as usize / 2, "{} calls for {n_lines} chunks", batches.len());
    for batch in &batches {
        assert!(batch.windows(2).all(|pair| pair[0] < pair[1]), "a batch holds chunks in input order: {batch:?}");
    }
    for worker in [&a, &b] {
        let max = worker.record.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= 4, "at most `processes` calls and as many sent ahead, whatever they carry: {max}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}
