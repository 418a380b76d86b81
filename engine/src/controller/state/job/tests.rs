//! Unit tests of a job in memory, and the fixture other modules' tests build jobs with.

use super::*;

/// A queued job of `n_chunks` one-line chunks, in groups of 4.
pub(in crate::controller) fn job(n_chunks: u64) -> Job {
    let spec = JobSpec {
        owner: "cli".into(),
        plugin_hash: "h".into(),
        params: String::new(),
        processes: 2,
        input_name: "in".into(),
        input_files: Vec::new(),
        input_urls: Vec::new(),
        max_attempts: 0,
        chunk_size: 0,
        memory_limit: 0,
        chunk_timeout_ms: 0,
        speculative: true,
    };
    let mut job = Job::new(1, spec, 0, Spool::new(std::path::PathBuf::from("/nonexistent"), 0));
    job.groups = Groups::new(4);
    job.append_chunks((0..n_chunks).map(|i| ChunkMeta {
        file: 0,
        offset: i * 10,
        len: 10,
        first_line: i + 1,
        n_lines: 1,
    }));
    job.bytes_total = n_chunks * 10;
    job.set_state(JobState::Queued);
    job
}

#[test]
fn groups_cover_the_chunks_and_only_full_ones_combine() {
    let mut job = job(10);
    assert_eq!(job.groups.iter().map(|g| g.members()).collect::<Vec<_>>(), vec![4, 4, 2]);
    for index in [0, 1, 2, 3, 8, 9] {
        job.queue.remove(&index);
        job.count_done(index, None);
    }
    assert_eq!(job.groups_to_combine().collect::<Vec<_>>(), vec![0], "the short last group is left whole");
    assert_eq!((job.chunks_done, job.lines_done, job.bytes_done), (6, 6, 60));
    assert_eq!(job.undone_from, 4, "chunks 0 to 3 are done, 4 is not");
    assert!(!job.ready_to_aggregate());
    job.stop_combining();
    assert_eq!(job.groups_to_combine().count(), 0);
}

#[test]
fn forgetting_a_worker_requeues_its_chunks_without_an_attempt() {
    let mut job = job(3);
    job.queue.remove(&1);
    job.chunks[1].running.push(RunningCopy::start(5, false, Arc::from([1])));
    job.prepared.insert(5, Prep::Ready);
    job.progress_of(5, "w5").in_flight = 1;
    assert!(job.forget_worker(5));
    assert!(job.queue.contains(&1));
    assert_eq!(job.chunks[1].failures, 0);
    assert!(!job.prepared.contains_key(&5));
    assert_eq!((job.lost_workers, job.workers[&5].lost), (1, true));
    assert!(!job.forget_worker(5), "nothing left to forget");
    assert_eq!(job.lost_workers, 1, "a worker is lost once");
}

#[test]
fn finalizing_clears_the_work_and_names_the_workers_to_release() {
    let mut job = job(3);
    job.prepared.insert(4, Prep::Ready);
    let before = job.published().seq;
    let (record, release) = job.finalize(JobState::Cancelled, None, None);
    assert_eq!(release, vec![4]);
    assert_eq!(record.figures.state, JobState::Cancelled);
    assert!(job.queue.is_empty());
    job.publish();
    assert_eq!(job.published().seq, record.figures.seq);
    assert!(job.published().seq > before);
}
