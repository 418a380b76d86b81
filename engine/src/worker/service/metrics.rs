//! The worker's Prometheus metrics (`kiln_worker_…`, listed in `docs/metrics.md`), served on
//! `--metrics-listen` when given.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::metrics::{RpcCalls, register_rpc_calls};
use crate::worker::executor::ExecutorCounters;

/// Where the input a worker reads comes from: `controller` for chunks pushed in calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    /// The input's source.
    pub source: &'static str,
}

/// How a plugin build ended: `built`, `failed`, or `cached` (no cargo run).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    /// The build's outcome.
    pub outcome: &'static str,
}

/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub chunks_done: Counter,
    pub chunks_failed: Counter,
    pub chunk_seconds: Histogram,
    pub input_bytes: Family<SourceLabels, Counter>,
    pub builds: Family<BuildLabels, Counter>,
    pub build_seconds: Histogram,
    pub warm_builds: Family<BuildLabels, Counter>,
    pub jobs_prepared: Gauge,
    pub calls_waited: Counter,
    pub rpc: RpcCalls,
    pub executors: ExecutorCounters,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            chunks_done: Counter::default(),
            chunks_failed: Counter::default(),
            // 1 ms to about 9 minutes: a chunk of a few lines to a slow 4 MiB chunk.
            chunk_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 11)),
            input_bytes: Family::default(),
            builds: Family::default(),
            // 0.25 s (a warm build of the plugin alone) to about 17 minutes.
            build_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            warm_builds: Family::default(),
            jobs_prepared: Gauge::default(),
            calls_waited: Counter::default(),
            rpc: RpcCalls::default(),
            executors: ExecutorCounters::default(),
        }
    }
}

impl WorkerMetrics {
    /// The worker's metrics, registered in `registry` under `kiln_worker_`.
    pub fn register(registry: &mut Registry) -> WorkerMetrics {
        let metrics = WorkerMetrics::default();
        let registry = registry.sub_registry_with_prefix("kiln_worker");
        registry.register("chunks_done", "Chunks this worker ran to a partial", metrics.chunks_done.clone());
        registry.register(
            "chunks_failed",
            "Chunks that failed here (plugin error, crash, timeout, interruption)",
            metrics.chunks_failed.clone(),
        );
        registry.register_with_unit(
            "chunk",
            "Time a chunk took in the executor (a call's time shared by its chunks)",
            Unit::Seconds,
            metrics.chunk_seconds.clone(),
        );
        registry.register_with_unit(
            "input",
            "Input bytes this worker read, by source",
            Unit::Bytes,
            metrics.input_bytes.clone(),
        );
        registry.register("builds", "Plugin builds asked for, by outcome", metrics.builds.clone());
        registry.register_with_unit(
            "build",
            "Time a plugin build took with cargo (cached libraries not counted)",
            Unit::Seconds,
            metrics.build_seconds.clone(),
        );
        registry.register(
            "warm_builds",
            "Background builds of the plugin template's dependencies at start, by outcome (built, already, failed)",
            metrics.warm_builds.clone(),
        );
        registry.register("jobs_prepared", "Jobs prepared on this worker now", metrics.jobs_prepared.clone());
        registry.register(
            "calls_waited",
            "Calls (batches of chunks, combines) that arrived while every slot was busy and waited here for one: sent ahead by the controller (pipelined slots)",
            metrics.calls_waited.clone(),
        );
        registry.register("executor_starts", "Executor processes started", metrics.executors.starts.clone());
        registry.register(
            "executor_crashes",
            "Executor processes that ended by themselves (crash, abort, memory limit)",
            metrics.executors.crashes.clone(),
        );
        register_rpc_calls(registry, &metrics.rpc);
        metrics
    }

    /// Counts input bytes this worker read itself, from an input read by reference.
    pub fn read_by_reference(&self, bytes: u64) {
        if bytes > 0 {
            self.input_bytes.get_or_create(&SourceLabels { source: "reference" }).inc_by(bytes);
        }
    }

    /// Counts a call's chunks: `failed` of the `n` failed, and the call took `elapsed`.
    pub fn record_call(&self, n: usize, failed: usize, bytes: u64, elapsed: Duration) {
        self.chunks_done.inc_by(n.saturating_sub(failed) as u64);
        self.chunks_failed.inc_by(failed as u64);
        self.input_bytes.get_or_create(&SourceLabels { source: "controller" }).inc_by(bytes);
        if n > 0 {
            let each = elapsed.as_secs_f64() / n as f64;
            for _ in 0..n {
                self.chunk_seconds.observe(each);
            }
        }
    }
}
