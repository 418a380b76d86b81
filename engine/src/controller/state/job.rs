//! A job in memory: its chunks, combine groups and per-worker figures, what its workers have
//! prepared, and where its aggregation stands. What to start next is decided by `plan`; the
//! answers of workers are applied by `dispatch`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::info;

mod fold;
mod status;

use super::chunk::{Chunk, GroupState, RunningCopy};
use super::spool::Spool;
use super::timings::ChunkTimes;
use super::workers::WorkerEntry;
use crate::controller::now_ms;
use crate::controller::store::{ChunkMeta, ChunkRow, Figures, FinalRecord, JobRow};
use crate::input::reference::InputObject;
use crate::rpc::build::BuildProgress;
use crate::rpc::input::ChunkSpan;
use crate::rpc::{JobFailure, JobId, JobSpec, JobState, JobStatus, WorkerId, WorkerProgress};
use crate::rules::combine::Groups;
use crate::rules::deadlines::chunk_call_deadline;
use crate::rules::{combine, retry};

/// Whether a worker is ready to run a job's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::controller) enum Prep {
    Preparing,
    Ready,
    /// The worker could not prepare the job; it gets none of its work.
    Failed,
}

/// Where a job's aggregation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::controller) enum Aggregation {
    Idle,
    Running(WorkerId),
    /// The output came back and is being written.
    Storing,
}

/// A job in memory.
pub(in crate::controller) struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    /// The names of the input's files, by position.
    file_names: Arc<[String]>,
    /// The objects of an input read by reference, by position (empty for an upload).
    objects: Arc<[InputObject]>,
    /// Changed through [`Job::set_state`], which logs it, and [`Job::finalize`].
    state: JobState,
    created_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    failure: Option<JobFailure>,
    /// Whether `finish_input` is cutting the input now.
    finishing_input: bool,
    /// Input bytes received so far; all of them once the input is complete.
    bytes_total: u64,
    /// The chunks cut so far: `chunks.len()`, kept by [`Job::append_chunks`].
    n_chunks: u64,
    pub chunks: Vec<Chunk>,
    /// Chunks waiting for a worker, by index (lowest first).
    pub queue: BTreeSet<u64>,
    /// The combine groups, each with where its merge stands.
    groups: Groups<GroupState>,
    /// Whether the plugin combines; unknown until a worker answers a `combine`.
    combines: Option<bool>,
    /// The figures of chunks done, moved together (with their groups' arrivals and the
    /// per-worker figures) by [`Job::count_done`].
    chunks_done: u64,
    /// Every chunk before this index is done, so scans for running chunks start here.
    undone_from: u64,
    lines_done: u64,
    bytes_done: u64,
    retries: u64,
    lost_workers: u64,
    speculative: u64,
    speculative_won: u64,
    /// Whether `lost_workers` or the speculative figures changed since they were stored.
    figures_dirty: bool,
    /// How long the chunks that completed in this run of the controller took.
    pub times: ChunkTimes,
    /// Per-worker figures: chunks done there, and in flight (kept with the workers' slots by
    /// [`Job::start_call`] and [`Job::end_call`]).
    workers: BTreeMap<WorkerId, WorkerProgress>,
    pub prepared: HashMap<WorkerId, Prep>,
    /// The plugin's build, from the first prepare on (see `job/status.rs`).
    build: Option<BuildProgress>,
    aggregation: Aggregation,
    aggregate_failures: u32,
    spool: Arc<tokio::sync::Mutex<Spool>>,
    seq: u64,
    status: watch::Sender<JobStatus>,
}

impl Job {
    /// A new job waiting for its input.
    pub fn new(id: JobId, spec: JobSpec, created_ms: u64, spool: Spool) -> Job {
        Job::with_seq(id, spec, JobState::Uploading, created_ms, spool, 0)
    }

    fn with_seq(id: JobId, spec: JobSpec, state: JobState, created_ms: u64, spool: Spool, seq: u64) -> Job {
        let group_size = combine::combine_group(spec.chunk_size);
        let published = Figures::new(state, created_ms, seq).status(id, &spec);
        let file_names: Arc<[String]> = match spec.input_files.is_empty() {
            true => Arc::from([spec.input_name.clone()]),
            false => spec.input_files.clone().into(),
        };
        Job {
            id,
            spec,
            file_names,
            objects: Arc::from([]),
            state,
            created_ms,
            started_ms: None,
            finished_ms: None,
            failure: None,
            finishing_input: false,
            bytes_total: 0,
            n_chunks: 0,
            chunks: Vec::new(),
            queue: BTreeSet::new(),
            groups: Groups::new(group_size),
            combines: None,
            chunks_done: 0,
            undone_from: 0,
            lines_done: 0,
            bytes_done: 0,
            retries: 0,
            lost_workers: 0,
            speculative: 0,
            speculative_won: 0,
            figures_dirty: false,
            times: ChunkTimes::default(),
            workers: BTreeMap::new(),
            prepared: HashMap::new(),
            build: None,
            aggregation: Aggregation::Idle,
            aggregate_failures: 0,
            spool: Arc::new(tokio::sync::Mutex::new(spool)),
            seq,
            status: watch::Sender::new(published),
        }
    }

    /// A job resumed from the store after a restart: done chunks stay done, the others are
    /// queued again. Its `seq` starts above any the previous run can have reached (it is
    /// derived from the clock), so a watcher's old `seen_seq` never matches by chance.
    pub fn resume(row: JobRow, chunks: Vec<ChunkRow>, combined: &[u64], spool: Spool) -> Job {
        let figures = row.figures;
        let state = match figures.state {
            JobState::Aggregating => JobState::Running,
            state => state,
        };
        let mut job = Job::with_seq(row.id, row.spec, state, figures.created_ms, spool, now_ms().saturating_mul(1000));
        job.started_ms = figures.started_ms;
        job.build = figures.build;
        job.retries = figures.retries;
        job.lost_workers = figures.lost_workers;
        job.speculative = figures.speculative;
        job.speculative_won = figures.speculative_won;
        job.combines = row.combines;
        // The group size is stored when the input is complete; until then it follows the spec.
        if state != JobState::Uploading {
            job.groups = Groups::new(row.combine_group);
        }
        job.bytes_total = figures.bytes_total;
        job.append_chunks(chunks.iter().map(|c| c.meta));
        for (index, row) in chunks.iter().enumerate() {
            job.chunks[index].failures = row.attempts;
            if row.done {
                job.queue.remove(&(index as u64));
                job.count_done(index as u64, None);
            }
        }
        for &group in combined {
            if let Some(group) = job.groups.get_mut(group as usize) {
                group.state = GroupState::Combined;
            }
        }
        if job.combines == Some(false) {
            job.stop_combining();
        }
        job.status.send_replace(job.snapshot());
        job
    }

    /// Adds chunks cut from the input, in order after those the job has, to its queue and to
    /// groups of `group_size` consecutive chunks for `combine`. Chunks arrive while the input
    /// uploads, so the last group fills up as they come.
    pub fn append_chunks(&mut self, metas: impl IntoIterator<Item = ChunkMeta>) {
        for meta in metas {
            let index = self.chunks.len() as u64;
            self.chunks.push(Chunk {
                meta,
                done: false,
                storing: false,
                failures: 0,
                running: Vec::new(),
                failed_on: Vec::new(),
                last_fault: None,
                speculated: false,
            });
            self.queue.insert(index);
            let combines = self.combines;
            self.groups.add_chunk(|| if combines == Some(false) { GroupState::Raw } else { GroupState::Open });
        }
        self.n_chunks = self.chunks.len() as u64;
    }

    pub fn state(&self) -> JobState {
        self.state
    }

    pub fn failure(&self) -> Option<&JobFailure> {
        self.failure.as_ref()
    }

    /// Every chunk before this index is done.
    pub fn undone_from(&self) -> u64 {
        self.undone_from
    }

    /// How many consecutive chunks a combine group holds.
    pub fn group_size(&self) -> u64 {
        self.groups.size()
    }

    /// The job's spooled input.
    pub fn spool(&self) -> Arc<tokio::sync::Mutex<Spool>> {
        Arc::clone(&self.spool)
    }

    /// Records that chunks were dispatched: a queued job becomes running, and the first time
    /// the start is recorded. Answers when it started, if that is to be stored now.
    pub fn mark_running(&mut self) -> Option<u64> {
        // A job still uploading stays `Uploading` until its input is complete.
        if self.started_ms.is_some() && self.state != JobState::Queued {
            return None;
        }
        let started_ms = *self.started_ms.get_or_insert_with(now_ms);
        if self.state == JobState::Queued {
            self.set_state(JobState::Running);
        }
        Some(started_ms)
    }

    /// Input bytes received so far; all of them once the input is complete.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total
    }

    /// Records that the input holds `bytes` so far.
    pub fn received(&mut self, bytes: u64) {
        self.bytes_total = bytes;
    }

    /// Whether a `finish_input` call is cutting the input's end now.
    pub fn finishing_input(&self) -> bool {
        self.finishing_input
    }

    /// A `finish_input` call starts cutting the input's end (`true`), or gave up (`false`).
    pub fn set_finishing_input(&mut self, finishing: bool) {
        self.finishing_input = finishing;
    }

    /// The input is complete, `bytes_total` bytes, ending with the chunks `metas`: the job is
    /// queued, or running if its first chunks were dispatched while it uploaded.
    pub fn input_finished(&mut self, metas: impl IntoIterator<Item = ChunkMeta>, bytes_total: u64) {
        self.append_chunks(metas);
        self.bytes_total = bytes_total;
        self.finishing_input = false;
        self.set_state(if self.started_ms.is_some() { JobState::Running } else { JobState::Queued });
    }

    /// Whether the whole input has arrived and is cut: until then more chunks may come (those
    /// cut so far run meanwhile) and the job cannot aggregate.
    pub fn input_complete(&self) -> bool {
        !matches!(self.state, JobState::Uploading)
    }

    /// The number of chunks this job may have in flight on a worker: the spec's `processes`,
    /// or the worker's own when the spec leaves it at 0.
    pub fn slots_on(&self, worker: &WorkerEntry) -> u32 {
        if self.spec.processes > 0 { self.spec.processes } else { worker.info().processes.max(1) }
    }

    /// How long a call running `n_chunks` of this job's chunks may take: the job's chunk
    /// timeout (or the executor's default) twice over per chunk, as a crash may make the worker
    /// run a chunk again alone, plus room for queueing and transfer, so that the worker reports
    /// a slow chunk rather than being cut off here.
    pub fn call_deadline(&self, n_chunks: usize) -> Duration {
        let timeout = (self.spec.chunk_timeout_ms > 0).then(|| Duration::from_millis(self.spec.chunk_timeout_ms));
        chunk_call_deadline(timeout, n_chunks)
    }

    pub fn max_attempts(&self) -> u32 {
        retry::max_attempts(self.spec.max_attempts)
    }

    pub fn span(&self, index: u64) -> ChunkSpan {
        let meta = self.chunks.get(index as usize).map(|c| c.meta);
        let (file, first_line, n_lines) = meta.map_or((0, 0, 0), |m| (m.file, m.first_line, m.n_lines));
        let file = self.file_name(file).to_owned();
        // A chunk whose first line is unknown (0: read by reference, mid-object) has no last.
        let last_line = if first_line == 0 { 0 } else { first_line + n_lines.saturating_sub(1) };
        ChunkSpan { index, file, first_line, last_line }
    }

    /// The name of the input's file number `file`.
    pub fn file_name(&self, file: u32) -> &str {
        self.file_names.get(file as usize).map_or("", String::as_str)
    }

    /// The names of the input's files, by position.
    pub fn file_names(&self) -> Arc<[String]> {
        Arc::clone(&self.file_names)
    }

    /// The objects of an input read by reference (empty for an upload).
    pub fn objects(&self) -> Arc<[InputObject]> {
        Arc::clone(&self.objects)
    }

    /// Sets the objects of an input read by reference, which name its files.
    pub fn set_objects(&mut self, objects: Vec<InputObject>) {
        self.file_names = objects.iter().map(|object| object.url.clone()).collect();
        self.objects = objects.into();
    }

    /// Counts a chunk as done (by `worker`, if known) and its group's arrival.
    pub fn count_done(&mut self, index: u64, worker: Option<WorkerId>) {
        let Some(chunk) = self.chunks.get_mut(index as usize) else { return };
        // Queued again while a straggling call still carried it (see `speculation`).
        self.queue.remove(&index);
        chunk.done = true;
        chunk.storing = false;
        chunk.running.clear();
        let meta = chunk.meta;
        self.chunks_done += 1;
        self.lines_done += meta.n_lines;
        self.bytes_done += meta.len;
        self.groups.arrive(index);
        if let Some(progress) = worker.and_then(|id| self.workers.get_mut(&id)) {
            progress.chunks_done += 1;
            progress.lines_done += meta.n_lines;
            progress.bytes_done += meta.len;
        }
        while self.chunks.get(self.undone_from as usize).is_some_and(|chunk| chunk.done) {
            self.undone_from += 1;
        }
    }

    /// The per-worker figures of a worker, made on first use.
    pub fn progress_of(&mut self, worker_id: WorkerId, address: &str) -> &mut WorkerProgress {
        self.workers.entry(worker_id).or_insert_with(|| WorkerProgress {
            worker_id,
            address: address.to_owned(),
            chunks_done: 0,
            lines_done: 0,
            bytes_done: 0,
            in_flight: 0,
            lost: false,
        })
    }

    /// Starts a call on `worker` carrying `batch`, chunks taken off the queue: each gets a
    /// copy, and the call holds a slot on the worker and counts in the job's figures of chunks
    /// in flight there. Answers the call's cancellation.
    pub fn start_call(&mut self, worker: &mut WorkerEntry, batch: Arc<[u64]>) -> Arc<Notify> {
        self.start_copies(worker, batch, false)
    }

    /// Starts a speculative copy of the running chunk `index`, alone in a call on `worker`
    /// (see `speculation`). Answers the call's cancellation.
    pub fn start_speculative_copy(&mut self, worker: &mut WorkerEntry, index: u64) -> Arc<Notify> {
        let cancel = self.start_copies(worker, Arc::from([index]), true);
        if let Some(chunk) = self.chunks.get_mut(index as usize) {
            chunk.speculated = true;
        }
        self.speculative += 1;
        self.figures_dirty = true;
        cancel
    }

    fn start_copies(&mut self, worker: &mut WorkerEntry, batch: Arc<[u64]>, speculative: bool) -> Arc<Notify> {
        let worker_id = worker.id();
        let copy = RunningCopy::start(worker_id, speculative, Arc::clone(&batch));
        let cancel = Arc::clone(&copy.cancel);
        for &index in batch.iter() {
            if let Some(chunk) = self.chunks.get_mut(index as usize) {
                chunk.running.push(copy.clone());
            }
        }
        self.times.copies_started(copy.since);
        let n_chunks = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        worker.take_slot(n_chunks);
        self.progress_of(worker_id, &worker.info().address).in_flight += n_chunks;
        cancel
    }

    /// Ends a call of `worker_id` carrying the chunks `indices` whose cancellation is `cancel`:
    /// its chunks leave the job's figure in flight on the worker. Answers the call's copies,
    /// one per chunk in order (`None` where the chunk no longer had it).
    pub fn end_call(
        &mut self,
        worker_id: WorkerId,
        indices: impl ExactSizeIterator<Item = u64>,
        cancel: &Arc<Notify>,
    ) -> Vec<Option<RunningCopy>> {
        let n_chunks = u32::try_from(indices.len()).unwrap_or(u32::MAX);
        if let Some(progress) = self.workers.get_mut(&worker_id) {
            progress.in_flight = progress.in_flight.saturating_sub(n_chunks);
        }
        indices.map(|index| self.chunks.get_mut(index as usize).and_then(|chunk| chunk.take_copy(cancel))).collect()
    }

    /// Puts a chunk back in the queue unless it is done, being stored, or still running
    /// elsewhere.
    pub fn requeue_if_idle(&mut self, index: u64) {
        if let Some(chunk) = self.chunks.get(index as usize)
            && !chunk.done
            && !chunk.storing
            && chunk.running.is_empty()
        {
            self.queue.insert(index);
        }
    }

    /// How many of this job's chunks have a copy running on `worker_id`.
    pub fn chunks_running_on(&self, worker_id: WorkerId) -> u64 {
        self.chunks.iter().filter(|chunk| chunk.running.iter().any(|copy| copy.worker == worker_id)).count() as u64
    }

    /// Forgets a lost worker: its chunks, merges and aggregation go back to be done again,
    /// without counting an attempt; it counts as lost for the job when it had prepared it or
    /// was running its work. Answers whether anything changed.
    pub fn forget_worker(&mut self, worker_id: WorkerId) -> bool {
        let mut changed = self.prepared.remove(&worker_id).is_some();
        let mut orphans = Vec::new();
        for (index, chunk) in self.chunks.iter_mut().enumerate() {
            let before = chunk.running.len();
            chunk.running.retain(|copy| copy.worker != worker_id);
            if chunk.running.len() != before {
                orphans.push(index as u64);
            }
        }
        for index in orphans {
            self.requeue_if_idle(index);
            changed = true;
        }
        for group in self.groups.iter_mut() {
            if group.state == GroupState::Combining(worker_id) {
                group.state = GroupState::Open;
                changed = true;
            }
        }
        if self.aggregation == Aggregation::Running(worker_id) {
            self.aggregation = Aggregation::Idle;
            changed = true;
        }
        if let Some(progress) = self.workers.get_mut(&worker_id) {
            changed |= progress.in_flight != 0;
            progress.in_flight = 0;
        }
        if changed {
            self.lost_workers += 1;
            self.figures_dirty = true;
            if let Some(progress) = self.workers.get_mut(&worker_id) {
                progress.lost = true;
            }
        }
        changed
    }

    /// Changes the job's state, logging it; publishing is the caller's.
    pub fn set_state(&mut self, state: JobState) {
        if self.state != state {
            info!(job = self.id, from = ?self.state, to = ?state, "job state changed");
            self.state = state;
        }
    }

    /// Ends the job in memory: nothing more is dispatched and late results are ignored. The
    /// caller writes the record, then publishes. Answers the record and the workers that
    /// prepared the job, to release.
    pub fn finalize(
        &mut self,
        state: JobState,
        failure: Option<JobFailure>,
        result: Option<String>,
    ) -> (FinalRecord, Vec<WorkerId>) {
        self.set_state(state);
        let finished_ms = now_ms();
        self.finished_ms = Some(finished_ms);
        self.failure = failure;
        self.queue.clear();
        for chunk in &mut self.chunks {
            // Stop what still runs: the workers end executors that run nothing else.
            for copy in chunk.running.drain(..) {
                copy.cancel.notify_one();
            }
        }
        for progress in self.workers.values_mut() {
            progress.in_flight = 0;
        }
        self.aggregation = Aggregation::Idle;
        let prepared: Vec<WorkerId> = self.prepared.drain().map(|(worker, _)| worker).collect();
        let record = FinalRecord { job: self.id, figures: self.figures(self.seq + 1), result };
        // The chunks are no longer needed; the figures above stay for the status.
        self.chunks = Vec::new();
        self.groups.clear();
        (record, prepared)
    }
}

#[cfg(test)]
pub(in crate::controller) mod tests;
