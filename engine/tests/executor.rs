//! An executor contains its plugin: errors and panics fail one call and the executor goes on;
//! a crash or a timeout ends that executor only, and a fresh one serves the next call.

mod util;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kiln_engine::plugin_source::read_source;
use kiln_engine::worker::builder::{Builder, BuilderConfig};
use kiln_engine::worker::executor::{ChunkText, ExecError, Executor, ExecutorConfig, Partials};
use util::{fixture, plugin_target_dir, shared_cache_dir};

async fn misbehave_library() -> PathBuf {
    let mut config = BuilderConfig::new(shared_cache_dir());
    config.target_dir = plugin_target_dir();
    config.sandbox = Some(PathBuf::from(env!("CARGO_BIN_EXE_kiln")));
    let source = read_source(&fixture("misbehave")).expect("fixture readable");
    Builder::new(config)
        .build(&kiln_engine::owner::Owner::key_holder(), &source, &|_| {})
        .await
        .expect("fixture builds")
        .library
}

fn config() -> ExecutorConfig {
    let mut config = ExecutorConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_kiln")), 2);
    config.call_timeout = Duration::from_secs(3);
    config
}

/// A chunk of `n` lines of a file, its first line numbered `first`.
fn lines(first: u64, n: u64) -> ChunkText {
    ChunkText::new("in.txt", first, Bytes::from((first..first + n).map(|i| format!("line{i}\n")).collect::<String>()))
}

#[tokio::test]
async fn a_panic_fails_one_call_and_the_executor_keeps_serving() {
    let library = misbehave_library().await;
    let executor = Executor::start(&config(), &library, "panic-at=5").await.unwrap();
    match executor.run(lines(1, 10)).await {
        Err(ExecError::Plugin(message)) => assert!(message.contains("deliberate panic at line 5"), "{message}"),
        other => panic!("expected the plugin's panic, got {other:?}"),
    }
    assert!(executor.is_alive());
    let partial = executor.run(lines(11, 10)).await.expect("the next chunk runs");
    let output = aggregated(&executor, vec![partial]).await;
    let output: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(output["lines"], 10);
}

#[tokio::test]
async fn a_segfault_ends_the_executor_and_a_fresh_one_takes_over() {
    let library = misbehave_library().await;
    let executor = Executor::start(&config(), &library, "segfault-at=3").await.unwrap();
    match executor.run(lines(1, 5)).await {
        Err(error @ ExecError::Crashed { .. }) => {
            assert!(error.to_string().contains("segmentation fault"), "{error}");
            assert!(error.is_retryable());
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(!executor.is_alive());
    assert!(matches!(executor.run(lines(10, 5)).await, Err(ExecError::Crashed { .. })));

    let fresh = Executor::start(&config(), &library, "segfault-at=3").await.unwrap();
    fresh.run(lines(10, 5)).await.expect("a chunk without line 3 runs");
}

#[tokio::test]
async fn a_call_that_never_returns_times_out_and_kills_only_its_executor() {
    let library = misbehave_library().await;
    let executor = Executor::start(&config(), &library, "loop-at=1").await.unwrap();
    match executor.run(lines(1, 2)).await {
        Err(ExecError::Timeout(after)) => assert_eq!(after, Duration::from_secs(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!executor.is_alive());
    let fresh = Executor::start(&config(), &library, "").await.unwrap();
    fresh.run(lines(1, 2)).await.expect("a fresh executor runs");
}

#[tokio::test]
async fn a_library_that_is_not_a_plugin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_plugin = dir.path().join("libnothing.so");
    std::fs::write(&not_a_plugin, b"not an ELF file").unwrap();
    match Executor::start(&config(), &not_a_plugin, "").await {
        Err(ExecError::Load(message)) => assert!(message.contains("libnothing.so"), "{message}"),
        other => panic!("expected a load error, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_crash_tells_how_many_calls_it_took_down() {
    let library = misbehave_library().await;
    let executor =
        std::sync::Arc::new(Executor::start(&config(), &library, "segfault-at=1,sleep-at=11:2000").await.unwrap());
    let sleeper = {
        let executor = std::sync::Arc::clone(&executor);
        tokio::spawn(async move { executor.run(lines(11, 5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(executor.run(lines(1, 5)).await, Err(ExecError::Crashed { .. })));
    assert!(matches!(sleeper.await.unwrap(), Err(ExecError::Crashed { .. })), "the sleeper went down with it");
    let ending = executor.ending().expect("the executor ended");
    assert!(matches!(ending.cause, ExecError::Crashed { .. }), "{:?}", ending.cause);
    assert_eq!(ending.calls_lost, 2);
}

#[tokio::test]
async fn an_abandoned_call_ends_its_executor_only_when_it_was_alone() {
    let library = misbehave_library().await;
    let executor = Executor::start(&config(), &library, "sleep-at=1:2500,sleep-at=11:2500").await.unwrap();
    // Another call runs beside the abandoned one: the executor goes on.
    let (other, abandoned) = tokio::join!(
        executor.run(lines(11, 5)),
        tokio::time::timeout(Duration::from_millis(300), executor.run(lines(1, 5)))
    );
    assert!(abandoned.is_err(), "the call was abandoned");
    other.expect("the other call finishes");
    assert!(executor.is_alive());
    // Alone, it is ended at once: nothing else can stop the plugin code.
    let abandoned = tokio::time::timeout(Duration::from_millis(300), executor.run(lines(1, 5))).await;
    assert!(abandoned.is_err());
    assert!(!executor.is_alive());
    let ending = executor.ending().expect("the executor ended");
    assert!(matches!(&ending.cause, ExecError::Stopped(why) if why.contains("cancelled")), "{:?}", ending.cause);
}

#[tokio::test]
async fn a_batch_answers_each_chunk_in_order_and_stops_where_its_executor_ended() {
    let library = misbehave_library().await;
    let executor = Executor::start(&config(), &library, "panic-at=15,segfault-at=35").await.unwrap();
    let batch = [1, 11, 21, 31, 41].map(|first| lines(first, 10)).to_vec();
    let outcome = executor.run_batch(batch).await;
    assert_eq!(outcome.answers.len(), 3, "chunks 1, 11 and 21 answered before the crash: {outcome:?}");
    assert!(outcome.answers[0].is_ok() && outcome.answers[2].is_ok(), "{outcome:?}");
    assert!(matches!(&outcome.answers[1], Err(ExecError::Plugin(m)) if m.contains("panic at line 15")), "{outcome:?}");
    assert!(matches!(&outcome.ended, Some(ExecError::Crashed { .. })), "chunk 31 crashed it: {outcome:?}");
    assert_eq!(executor.ending().expect("the executor ended").calls_lost, 1, "a batch is one call");
    assert!(executor.run_batch(Vec::new()).await.answers.is_empty());
}

#[tokio::test]
async fn each_chunk_of_a_batch_has_the_whole_timeout() {
    let library = misbehave_library().await;
    // Three chunks of 1.2 s take longer than the 3 s timeout together, but none does alone.
    let executor = Executor::start(&config(), &library, "sleep-at=1:1200,sleep-at=11:1200,sleep-at=21:1200,loop-at=41")
        .await
        .unwrap();
    let outcome = executor.run_batch([1, 11, 21, 31].map(|first| lines(first, 10)).to_vec()).await;
    assert!(outcome.ended.is_none() && outcome.answers.iter().all(Result::is_ok), "{outcome:?}");
    let outcome = executor.run_batch([31, 41, 51].map(|first| lines(first, 10)).to_vec()).await;
    assert_eq!(outcome.answers.len(), 1, "{outcome:?}");
    assert!(matches!(outcome.ended, Some(ExecError::Timeout(after)) if after == Duration::from_secs(3)), "{outcome:?}");
    assert!(!executor.is_alive());
}

/// Aggregates the partials into a file and reads it back.
async fn aggregated(executor: &Executor, partials: Vec<Bytes>) -> String {
    let mut file = tempfile::tempfile().unwrap();
    let len = executor.aggregate(Partials::InMemory(partials), 1, file.try_clone().unwrap(), u64::MAX).await.unwrap();
    let mut output = String::new();
    std::io::Seek::rewind(&mut file).unwrap();
    std::io::Read::read_to_string(&mut file, &mut output).unwrap();
    assert_eq!(output.len() as u64, len);
    output
}
