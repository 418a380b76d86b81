//! Workers: registration, the controller's connection to each, heartbeats and loss.
//!
//! A worker registers with the join token; the controller dials it back at the address it
//! gave (a tarpc [`WorkerClient`]) and answers with an id and a fresh secret. The worker takes
//! work at once, so that one joining mid-job helps without waiting for a heartbeat: a call may
//! then reach it just before it has read the answer to `register`, and the worker holds calls
//! with an unknown secret for a moment while it registers. A worker is lost when its
//! heartbeats stop for the configured timeout ([`run_reaper`]) or the connection to it ends;
//! its work is then done elsewhere.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Instant;

use serde_bytes::ByteBuf;
use tarpc::client::{self, NewClient};
use tarpc::tokio_serde::formats::Bincode;
use tokio::task::AbortHandle;
use tracing::info;

use super::Shared;
use super::jobs::State;
use crate::rpc::{
    MAX_FRAME_BYTES, PROTOCOL_VERSION, Registration, RpcError, Secret, WorkerClient, WorkerId, WorkerInfo,
    WorkerSummary,
};

/// How long dialing a registering worker may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest address or host name a worker may give: enough for any DNS name and port.
const MAX_NAME_LEN: usize = 512;

/// A registered worker.
pub(super) struct WorkerEntry {
    pub id: WorkerId,
    pub info: WorkerInfo,
    pub secret: Secret,
    pub client: WorkerClient,
    pub last_seen: Instant,
    /// Calls holding a slot (batches of chunks and combines), over all jobs.
    pub slots_used: u32,
    /// Chunks in those calls.
    pub chunks_in_flight: u32,
    pub chunks_done: u64,
    /// Ends the connection's dispatch task, which fails every call in flight.
    connection: AbortHandle,
}

/// What a call to a worker needs.
#[derive(Clone)]
pub(super) struct WorkerHandle {
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
            chunks_done: self.chunks_done,
            last_seen_ms: u64::try_from(now.duration_since(self.last_seen).as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl State {
    /// Frees the slot a finished call carrying `n_chunks` chunks held on a worker (if it is
    /// still registered).
    pub fn release_slot(&mut self, worker_id: WorkerId, n_chunks: u32) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.slots_used = worker.slots_used.saturating_sub(1);
            worker.chunks_in_flight = worker.chunks_in_flight.saturating_sub(n_chunks);
        }
    }

    /// Removes a lost worker; everything it was doing is done again elsewhere. Answers whether
    /// the worker was registered.
    pub fn lose_worker(&mut self, worker_id: WorkerId, reason: &str) -> bool {
        let Some(worker) = self.workers.remove(&worker_id) else { return false };
        worker.disconnect();
        info!(worker = worker_id, address = %worker.info.address, reason, "worker lost");
        self.releases.retain(|(w, _)| *w != worker_id);
        for job in self.jobs.values_mut() {
            if !job.state.is_final() && job.forget_worker(worker_id) {
                job.publish();
            }
        }
        true
    }
}

/// Registers a worker: checks the join token and protocol, dials it, and answers its id and
/// secret. A worker registering again from the same address replaces its old entry.
pub(super) async fn register(shared: &Arc<Shared>, token: &Secret, info: WorkerInfo) -> Result<Registration, RpcError> {
    if !shared.join_token.matches(token) {
        return Err(RpcError::Unauthorized(
            "wrong join token: give the worker the token the controller printed (--join-token or KILN_JOIN_TOKEN)"
                .into(),
        ));
    }
    if info.protocol != PROTOCOL_VERSION {
        return Err(RpcError::VersionMismatch { controller: PROTOCOL_VERSION, worker: info.protocol });
    }
    if info.address.is_empty() || info.address.len() > MAX_NAME_LEN || info.hostname.len() > MAX_NAME_LEN {
        return Err(RpcError::Invalid(format!(
            "a worker's address must be given and, like its host name, at most {MAX_NAME_LEN} bytes"
        )));
    }
    let transport = dial(&info.address).await.map_err(|e| {
        RpcError::Invalid(format!(
            "cannot reach the worker at {}: {e}: give the worker a --listen address the controller can reach",
            info.address
        ))
    })?;
    let NewClient { client, dispatch } = WorkerClient::new(client::Config::default(), transport);
    let worker_id = shared.next_worker_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let connection = shared.spawn_background(async move {
        let ended = dispatch.await;
        if let Some(shared) = weak.upgrade() {
            let reason = match ended {
                Ok(()) => "its connection closed".to_owned(),
                Err(e) => format!("its connection failed: {e}"),
            };
            if shared.with_state(|st| st.lose_worker(worker_id, &reason)) {
                shared.wake();
            }
        }
    });
    let secret = Secret::generate();
    let entry = WorkerEntry {
        id: worker_id,
        info: WorkerInfo { processes: info.processes.max(1), ..info },
        secret: secret.clone(),
        client,
        last_seen: Instant::now(),
        slots_used: 0,
        chunks_in_flight: 0,
        chunks_done: 0,
        connection,
    };
    info!(
        worker = worker_id,
        address = %entry.info.address,
        hostname = %entry.info.hostname,
        processes = entry.info.processes,
        "worker joined"
    );
    shared.with_state(|st| {
        let stale: Vec<WorkerId> =
            st.workers.values().filter(|w| w.info.address == entry.info.address).map(|w| w.id).collect();
        for old in stale {
            st.lose_worker(old, "it registered again");
        }
        st.workers.insert(worker_id, entry);
    });
    shared.reaper_wake.notify_one();
    shared.wake();
    Ok(Registration { worker_id, worker_secret: secret })
}

async fn dial(
    address: &str,
) -> io::Result<
    tarpc::serde_transport::Transport<
        tokio::net::TcpStream,
        tarpc::Response<crate::rpc::WorkerResponse>,
        tarpc::ClientMessage<crate::rpc::WorkerRequest>,
        Bincode<tarpc::Response<crate::rpc::WorkerResponse>, tarpc::ClientMessage<crate::rpc::WorkerRequest>>,
    >,
> {
    let mut connect = tarpc::serde_transport::tcp::connect(address, Bincode::default);
    connect.config_mut().max_frame_length(MAX_FRAME_BYTES);
    tokio::time::timeout(DIAL_TIMEOUT, connect).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", DIAL_TIMEOUT.as_secs()))
    })?
}

/// Checks a worker's id and secret.
fn check_worker(shared: &Shared, worker_id: WorkerId, secret: &Secret) -> Result<(), RpcError> {
    shared.with_state(|st| match st.workers.get(&worker_id) {
        None => Err(RpcError::NotFound(format!("worker {worker_id} is not registered: register again"))),
        Some(worker) if !worker.secret.matches(secret) => {
            Err(RpcError::Unauthorized(format!("wrong secret for worker {worker_id}")))
        }
        Some(_) => Ok(()),
    })
}

/// Records a heartbeat.
pub(super) fn heartbeat(shared: &Shared, worker_id: WorkerId, secret: &Secret) -> Result<(), RpcError> {
    check_worker(shared, worker_id, secret)?;
    shared.with_state(|st| {
        if let Some(worker) = st.workers.get_mut(&worker_id) {
            worker.last_seen = Instant::now();
        }
    });
    Ok(())
}

/// Sends a worker the plugin archive with this hash.
pub(super) async fn fetch_plugin(
    shared: &Shared,
    worker_id: WorkerId,
    secret: &Secret,
    hash: &str,
) -> Result<ByteBuf, RpcError> {
    check_worker(shared, worker_id, secret)?;
    if !is_plugin_hash(hash) {
        return Err(RpcError::Invalid(format!("`{hash}` is not a plugin hash")));
    }
    match tokio::fs::read(shared.plugin_path(hash)).await {
        Ok(archive) => Ok(ByteBuf::from(archive)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RpcError::NotFound(format!("plugin {hash}"))),
        Err(e) => Err(RpcError::Internal(format!("cannot read plugin {hash}: {e}"))),
    }
}

/// Whether `hash` looks like a plugin hash (hex), which also keeps it a plain file name.
pub(super) fn is_plugin_hash(hash: &str) -> bool {
    !hash.is_empty() && hash.len() <= 128 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Declares lost the workers whose heartbeats stopped. Sleeps until the earliest moment one
/// can expire, or until a worker registers.
pub(super) async fn run_reaper(shared: Arc<Shared>) {
    let timeout = shared.heartbeat_timeout;
    loop {
        let now = Instant::now();
        let (lost, next) = shared.with_state(|st| {
            let expired: Vec<WorkerId> =
                st.workers.values().filter(|w| now.duration_since(w.last_seen) >= timeout).map(|w| w.id).collect();
            let reason = format!("no heartbeat for {} ms", timeout.as_millis());
            for worker_id in &expired {
                st.lose_worker(*worker_id, &reason);
            }
            (!expired.is_empty(), st.workers.values().map(|w| w.last_seen + timeout).min())
        });
        if lost {
            shared.wake();
        }
        match next {
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = shared.reaper_wake.notified() => {}
            },
            None => shared.reaper_wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_hashes_are_plain_hex_names() {
        assert!(is_plugin_hash("0123abcdef"));
        assert!(!is_plugin_hash(""));
        assert!(!is_plugin_hash("../../etc/passwd"));
        assert!(!is_plugin_hash("abc.tar.gz"));
    }
}
