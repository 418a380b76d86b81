//! The workers the controller knows: registered ones waiting to be activated, and live ones
//! with their connection and the slots their calls hold.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use crate::rpc::{HEARTBEAT_INTERVAL, Secret, WorkerClient, WorkerId, WorkerInfo, WorkerSummary};

/// How long a registered worker may take to call `activate` before its registration is
/// dropped.
const PENDING_TIMEOUT: Duration = Duration::from_secs(60);

/// How many of its round trips a worker may stay silent before it counts as lost (beyond the
/// configured heartbeat timeout, the floor): a worker on a slow link ("gray") answers late but
/// answers, and losing it would throw its work away again and again.
pub(in crate::controller) const SILENCE_RTT_MULTIPLE: u32 = 4;

/// The longest a worker may stay silent, however slow its link: past this, a worker that is
/// away holds its chunks back for too long.
pub(in crate::controller) const SILENCE_CEILING: Duration = Duration::from_secs(60);

/// A worker registered and not yet activated.
pub(in crate::controller) struct PendingWorker {
    info: WorkerInfo,
    secret: Secret,
    since: Instant,
}

impl PendingWorker {
    /// A worker that registered now with `info`, given `secret`.
    pub fn new(info: WorkerInfo, secret: Secret) -> PendingWorker {
        PendingWorker { info, secret, since: Instant::now() }
    }

    /// What the worker said of itself when it registered.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// Whether `secret` is the one the worker was given.
    pub fn secret_matches(&self, secret: &Secret) -> bool {
        self.secret.matches(secret)
    }
}

/// A registered worker.
pub(in crate::controller) struct WorkerEntry {
    id: WorkerId,
    info: WorkerInfo,
    secret: Secret,
    client: WorkerClient,
    last_seen: Instant,
    /// The round trip to the worker as last measured: how long dialling it back took at first
    /// (a TLS handshake is one round trip), then the time between its heartbeats beyond their
    /// interval (a worker sends the next one when the last is answered), smoothed.
    round_trip: Duration,
    /// Calls holding a slot (batches of chunks and combines), over all jobs.
    slots_used: u32,
    /// Chunks in those calls.
    chunks_in_flight: u32,
    chunks_done: u64,
    /// Ends the connection's dispatch task, which fails every call in flight.
    connection: AbortHandle,
}

/// What a call to a worker needs.
#[derive(Clone)]
pub(in crate::controller) struct WorkerHandle {
    pub id: WorkerId,
    pub client: WorkerClient,
    secret: Secret,
}

impl WorkerHandle {
    /// The worker's secret, for a call.
    pub fn secret(&self) -> Secret {
        self.secret.clone()
    }
}

impl WorkerEntry {
    /// A worker that joined now, reached through `client` after dialling it back took
    /// `round_trip`; aborting `connection` closes it.
    pub fn new(
        id: WorkerId,
        info: WorkerInfo,
        secret: Secret,
        client: WorkerClient,
        connection: AbortHandle,
        round_trip: Duration,
    ) -> WorkerEntry {
        WorkerEntry {
            id,
            info,
            secret,
            client,
            last_seen: Instant::now(),
            round_trip,
            slots_used: 0,
            chunks_in_flight: 0,
            chunks_done: 0,
            connection,
        }
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// What the worker said of itself when it registered.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// Whether `secret` is the worker's.
    pub fn secret_matches(&self, secret: &Secret) -> bool {
        self.secret.matches(secret)
    }

    /// When the worker's last heartbeat came.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Records a heartbeat now, and what the time since the last one says of the round trip.
    pub fn seen(&mut self) {
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_seen);
        self.round_trip = smoothed_round_trip(self.round_trip, gap.saturating_sub(HEARTBEAT_INTERVAL));
        self.last_seen = now;
    }

    /// How long the worker may stay silent before it counts as lost: `floor` (the configured
    /// heartbeat timeout), or [`SILENCE_RTT_MULTIPLE`] round trips on a slow link, at most
    /// [`SILENCE_CEILING`].
    pub fn silence_limit(&self, floor: Duration) -> Duration {
        floor.max((self.round_trip * SILENCE_RTT_MULTIPLE).min(SILENCE_CEILING))
    }

    /// Calls holding a slot on the worker, over all jobs.
    pub fn slots_used(&self) -> u32 {
        self.slots_used
    }

    /// Calls sent beyond the worker's slots, which wait there for one to free (pipelined
    /// slots): what the controller knows; the worker may have started some already.
    pub fn held_ahead(&self) -> u32 {
        self.slots_used.saturating_sub(self.info.processes.max(1))
    }

    /// A call carrying `n_chunks` chunks (0 for a combine) takes a slot.
    pub fn take_slot(&mut self, n_chunks: u32) {
        self.slots_used += 1;
        self.chunks_in_flight += n_chunks;
    }

    /// A call carrying `n_chunks` chunks ended and frees its slot.
    pub fn free_slot(&mut self, n_chunks: u32) {
        self.slots_used = self.slots_used.saturating_sub(1);
        self.chunks_in_flight = self.chunks_in_flight.saturating_sub(n_chunks);
    }

    /// Counts chunks whose partials from this worker were stored.
    pub fn count_done(&mut self, n_chunks: u64) {
        self.chunks_done += n_chunks;
    }

    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle { id: self.id, client: self.client.clone(), secret: self.secret.clone() }
    }

    /// Closes the connection to the worker.
    pub fn disconnect(&self) {
        self.connection.abort();
    }

    pub fn summary(&self, now: Instant) -> WorkerSummary {
        WorkerSummary {
            worker_id: self.id,
            address: self.info.address.clone(),
            hostname: self.info.hostname.clone(),
            processes: self.info.processes,
            in_flight: self.chunks_in_flight,
            held_ahead: self.held_ahead(),
            chunks_done: self.chunks_done,
            last_seen_ms: u64::try_from(now.duration_since(self.last_seen).as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The round trip estimate after a new sample: up at once (a link that got slower must not cost
/// the worker its registration), down slowly (one quick answer does not make a link fast).
fn smoothed_round_trip(estimate: Duration, sample: Duration) -> Duration {
    if sample >= estimate { sample } else { (estimate * 7 + sample) / 8 }
}

/// The live workers (registered and activated, not lost) and the pending ones.
#[derive(Default)]
pub(in crate::controller) struct Workers {
    live: BTreeMap<WorkerId, WorkerEntry>,
    pending: BTreeMap<WorkerId, PendingWorker>,
}

impl Workers {
    pub fn get(&self, worker_id: WorkerId) -> Option<&WorkerEntry> {
        self.live.get(&worker_id)
    }

    pub fn get_mut(&mut self, worker_id: WorkerId) -> Option<&mut WorkerEntry> {
        self.live.get_mut(&worker_id)
    }

    /// Whether the worker is live.
    pub fn contains(&self, worker_id: WorkerId) -> bool {
        self.live.contains_key(&worker_id)
    }

    /// The live workers' ids, lowest first.
    pub fn ids(&self) -> Vec<WorkerId> {
        self.live.keys().copied().collect()
    }

    /// The live workers, by id.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.live.values()
    }

    /// Calls holding a slot on a worker; `u32::MAX` for one not live, so that it sorts last.
    pub fn load(&self, worker_id: WorkerId) -> u32 {
        self.live.get(&worker_id).map_or(u32::MAX, WorkerEntry::slots_used)
    }

    /// Keeps a registered worker until it activates, dropping registrations that waited too
    /// long.
    pub fn add_pending(&mut self, worker_id: WorkerId, pending: PendingWorker) {
        self.pending.retain(|_, pending| pending.since.elapsed() < PENDING_TIMEOUT);
        self.pending.insert(worker_id, pending);
    }

    pub fn pending(&self, worker_id: WorkerId) -> Option<&PendingWorker> {
        self.pending.get(&worker_id)
    }

    /// Removes a pending worker's registration.
    pub fn take_pending(&mut self, worker_id: WorkerId) -> Option<PendingWorker> {
        self.pending.remove(&worker_id)
    }

    /// Adds a live worker; its loss goes through [`State::lose_worker`](super::State).
    pub(super) fn insert(&mut self, entry: WorkerEntry) {
        self.live.insert(entry.id, entry);
    }

    pub(super) fn remove(&mut self, worker_id: WorkerId) -> Option<WorkerEntry> {
        self.live.remove(&worker_id)
    }

    /// Closes every connection and forgets every worker.
    pub(super) fn disconnect_all(&mut self) {
        for worker in self.live.values() {
            worker.disconnect();
        }
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_rises_at_once_and_falls_slowly() {
        let rtt = smoothed_round_trip(Duration::from_millis(10), Duration::from_secs(3));
        assert_eq!(rtt, Duration::from_secs(3));
        let rtt = smoothed_round_trip(rtt, Duration::ZERO);
        assert_eq!(rtt, Duration::from_millis(2625));
    }
}
