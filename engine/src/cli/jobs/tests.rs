//! Unit tests of how job commands word a job: counts, progress, status and summary.

use super::text::*;
use kiln_engine::rpc::JobStatus;

#[test]
fn counts_read_as_english() {
    assert_eq!(plural(1, "chunk"), "1 chunk");
    assert_eq!(plural(0, "worker"), "0 workers");
    assert_eq!(plural(3, "retry"), "3 retries");
    assert_eq!(plural(2, "speculative copy"), "2 speculative copies");
    assert_eq!(shorten("sleep-at=1:150", 60), "sleep-at=1:150");
}

#[test]
fn progress_and_status_show_what_the_job_went_through() {
    let mut status: JobStatus = serde_json::from_value(serde_json::json!({
        "id": 3, "seq": 9, "state": "Running", "plugin_hash": "ab", "params": "", "input_name": "in.txt",
        "processes": 2, "n_chunks": 10, "chunks_done": 4, "lines_done": 40, "bytes_done": 400,
        "bytes_total": 1000, "retries": 0, "workers": [], "created_ms": 0, "started_ms": null,
        "finished_ms": null, "failure": null
    }))
    .unwrap();
    assert_eq!(progress_message(&status), "running on 0 workers", "nothing went wrong");
    status.retries = 2;
    status.lost_workers = 1;
    (status.speculative, status.speculative_won) = (2, 1);
    assert_eq!(
        progress_message(&status),
        "running on 0 workers, 2 retries, 1 lost worker, 2 speculative copies (1 finished first)"
    );
    let described = describe(&status);
    assert!(described.contains("2 retries, 1 lost worker, 2 speculative copies (1 finished first)"), "{described}");
    assert_eq!(shorten("日本語テキスト", 3), "日本語…");

    status.build = Some(kiln_engine::rpc::build::BuildProgress {
        crates_done: 12,
        crates_total: 41,
        current: "abi_stable".to_owned(),
        started_ms: now_ms(),
        ..Default::default()
    });
    assert!(describe(&status).contains("  build: Compiling (12/41): abi_stable, 0."), "{}", describe(&status));
    (status.started_ms, status.finished_ms) = (Some(10_000), Some(12_500));
    if let Some(build) = status.build.as_mut() {
        (build.started_ms, build.finished_ms) = (1_000, Some(9_400));
    }
    let described = describe(&status);
    assert!(described.contains(", ran 2.5 s") && described.contains("  build: Built in 8.4 s"), "{described}");
    assert!(summary(&status).ends_with(" in 2.50 s (0.0 MB/s) on 0 workers, 2 retries, 1 lost worker, 2 speculative copies (1 finished first), plugin built in 8.4 s"), "{}", summary(&status));
}
