//! The controller's Prometheus metrics (`kiln_controller_…`, listed in `docs/metrics.md`),
//! served on `--metrics-listen` when given.
//!
//! What the state knows (jobs by state, each active job's chunks, the queue, live workers and
//! the jobs' figures) is read under the state's lock at each scrape, so it never drifts from
//! what `kiln status` shows; what only passes through (call times, failed attempts, input
//! bytes, RPC calls) is counted as it happens.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::Shared;
use crate::rpc::JobState;
use crate::telemetry::metrics::{RpcCalls, register_rpc_calls};

/// How long a job's own series (`job_chunks_done{job=…}`) stay after it ended, so that a
/// scrape after the end sees its final figures; then they go, so series do not pile up.
const JOB_SERIES_AFTER_END_MS: u64 = 10 * 60 * 1000;

/// Where input bytes come from: `upload` for input a client uploads in pieces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct SourceLabels {
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    /// Named `job_id`, not `job`: Prometheus gives every target a `job` label of its own.
    job_id: String,
    owner: String,
}

/// What the controller counts as it happens.
#[derive(Debug, Clone)]
pub(super) struct ControllerMetrics {
    /// Chunk attempts that failed (each charged an attempt; the last one may fail the job).
    pub chunk_failures: Counter,
    /// Time a chunk took on its worker, seen from the controller (a call's time shared by its
    /// chunks).
    pub chunk_seconds: Histogram,
    /// Input bytes received, by source.
    pub input_bytes: Family<SourceLabels, Counter>,
    /// RPC calls served, by method and outcome.
    pub rpc: RpcCalls,
}

impl ControllerMetrics {
    pub fn new() -> ControllerMetrics {
        ControllerMetrics {
            chunk_failures: Counter::default(),
            // 1 ms to about 9 minutes: a chunk of a few lines to a slow 4 MiB chunk.
            chunk_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 11)),
            input_bytes: Family::default(),
            rpc: RpcCalls::default(),
        }
    }

    /// Registers these metrics and those read from `shared`'s state at each scrape in
    /// `registry`, under `kiln_controller_`.
    pub fn register(&self, registry: &mut Registry, shared: Weak<Shared>) {
        let registry = registry.sub_registry_with_prefix("kiln_controller");
        registry.register("chunk_failures", "Chunk attempts that failed", self.chunk_failures.clone());
        registry.register_with_unit(
            "chunk",
            "Time a chunk took on a worker, as the controller saw its call",
            Unit::Seconds,
            self.chunk_seconds.clone(),
        );
        registry.register_with_unit("input", "Input bytes received, by source", Unit::Bytes, self.input_bytes.clone());
        register_rpc_calls(registry, &self.rpc);
        registry.register_collector(Box::new(StateCollector { shared }));
    }
}

/// Reads the state at each scrape.
struct StateCollector {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

/// The figures of one scrape.
#[derive(Default)]
struct Snapshot {
    jobs: Family<StateLabels, Gauge>,
    job_chunks: Family<JobLabels, Gauge>,
    job_chunks_done: Family<JobLabels, Gauge>,
    job_bytes_done: Family<JobLabels, Gauge>,
    queued_chunks: Gauge,
    workers_live: Gauge,
    slots_busy: Gauge,
    chunks_done: u64,
    bytes_done: u64,
    retries: u64,
    speculative: u64,
    speculative_won: u64,
    lost_workers: u64,
}

impl StateCollector {
    fn snapshot(&self) -> Option<Snapshot> {
        let shared = self.shared.upgrade()?;
        let snapshot = Snapshot::default();
        // Every state is reported, also with no job in it.
        for state in JobState::ALL {
            snapshot.jobs.get_or_create(&StateLabels { state: state.as_str() }).set(0);
        }
        let snapshot = shared.with_state(|st| {
            let mut snapshot = snapshot;
            for job in st.jobs() {
                let status = job.published();
                snapshot.jobs.get_or_create(&StateLabels { state: status.state.as_str() }).inc();
                snapshot.chunks_done += status.chunks_done;
                snapshot.bytes_done += status.bytes_done;
                snapshot.retries += status.retries;
                snapshot.speculative += status.speculative;
                snapshot.speculative_won += status.speculative_won;
                snapshot.lost_workers += status.lost_workers;
                let ended_long_ago =
                    status.finished_ms.is_some_and(|end| super::now_ms().saturating_sub(end) > JOB_SERIES_AFTER_END_MS);
                if ended_long_ago {
                    continue;
                }
                let labels = JobLabels { job_id: job.id.to_string(), owner: status.owner.clone() };
                let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                snapshot.job_chunks.get_or_create(&labels).set(to_i64(status.n_chunks));
                snapshot.job_chunks_done.get_or_create(&labels).set(to_i64(status.chunks_done));
                snapshot.job_bytes_done.get_or_create(&labels).set(to_i64(status.bytes_done));
                if !status.state.is_final() {
                    snapshot.queued_chunks.inc_by(to_i64(job.queue.len() as u64));
                }
            }
            for worker in st.workers().iter() {
                snapshot.workers_live.inc();
                snapshot.slots_busy.inc_by(i64::from(worker.slots_used()));
            }
            snapshot
        });
        Some(snapshot)
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.snapshot() else { return Ok(()) };
        let families = [
            ("jobs", "Jobs this controller run knows, by state", &s.jobs as &dyn EncodeMetric),
            ("job_chunks", "Chunks of each job running or recently ended (all known once its input is)", &s.job_chunks),
            ("job_chunks_done", "Chunks done of each job running or recently ended", &s.job_chunks_done),
            ("queued_chunks", "Chunks waiting for a worker", &s.queued_chunks),
            ("workers_live", "Workers registered and live", &s.workers_live),
            ("slots_busy", "Worker slots running a call now", &s.slots_busy),
        ];
        for (name, help, metric) in families {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let bytes = &s.job_bytes_done;
        bytes.encode(encoder.encode_descriptor(
            "job_input_done",
            "Input bytes done of each job running or recently ended",
            Some(&Unit::Bytes),
            bytes.metric_type(),
        )?)?;
        let counters = [
            ("chunks_done", "Chunks done, of the jobs of this controller run", s.chunks_done),
            ("retries", "Chunk attempts retried after a failure", s.retries),
            ("speculative_copies", "Speculative copies started of slow chunks", s.speculative),
            ("speculative_wins", "Speculative copies that finished first", s.speculative_won),
            ("lost_workers", "Workers lost while running a job's chunks (per job)", s.lost_workers),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let done = ConstCounter::new(s.bytes_done);
        done.encode(encoder.encode_descriptor(
            "input_done",
            "Input bytes done, of the jobs of this controller run",
            Some(&Unit::Bytes),
            done.metric_type(),
        )?)?;
        Ok(())
    }
}
