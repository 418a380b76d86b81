//! Workers: registration, the controller's connection to each, heartbeats and loss.
//!
//! A worker registers with the join token and its public key; the controller answers with an
//! id, a fresh secret and a certificate for that key (on TLS), and keeps the worker pending.
//! The worker connects again presenting the certificate and calls `activate`: the controller
//! dials it back at the address it gave (a tarpc [`WorkerClient`] over TLS, checking the
//! worker's certificate) and the worker takes work at once, so that one joining mid-job helps
//! without waiting for a heartbeat. Every worker call must come over a link carrying the
//! certificate issued to that worker ([`Links::check_peer`](super::links::Links)). A worker is
//! lost when its heartbeats stop for the configured timeout ([`run_reaper`]) or the connection
//! to it ends; its work is then done elsewhere. A removed worker's key is refused for good.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Instant;

use rustls::pki_types::ServerName;
use serde_bytes::ByteBuf;
use tarpc::client::{self, NewClient};
use tracing::info;

use super::Shared;
use super::calls::deadline_in;
use super::state::workers::{PendingWorker, WorkerEntry};
use crate::rpc::{
    PROTOCOL_VERSION, Registration, RpcError, Secret, WorkerCertificate, WorkerClient, WorkerId, WorkerInfo,
};
use crate::tls::frames::{self, Frames};
use crate::tls::link;
use crate::tls::verify::Dial;
use crate::tls::{Fingerprint, worker_name};

/// How long dialing a registering worker may take: a TCP and a TLS handshake, over a link that
/// may be slow (a worker seconds away still serves).
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a worker dialled back may take to answer the controller's first call (it answers
/// at once, from memory).
const HELLO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest address or host name a worker may give: enough for any DNS name and port.
const MAX_NAME_LEN: usize = 512;

/// Registers a worker: checks the join token, protocol and key, issues its certificate, and
/// answers its id, secret and certificate. The worker is pending until it calls `activate`.
pub(super) fn register(shared: &Shared, token: &Secret, info: WorkerInfo) -> Result<Registration, RpcError> {
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
    let worker_id = shared.next_worker_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let certificate = shared.links.issue(worker_id, &info.public_key)?;
    let secret = Secret::generate();
    let pending = PendingWorker::new(info, secret.clone());
    shared.with_state(|st| st.workers_mut().add_pending(worker_id, pending));
    Ok(Registration { worker_id, worker_secret: secret, certificate })
}

/// Makes a pending worker live: dials it back (checking its certificate names it) and adds it
/// to the workers that get work. A worker registering again from the same address replaces its
/// old entry. Activating a live worker again changes nothing.
pub(super) async fn activate(
    shared: &Arc<Shared>,
    peer: Option<Fingerprint>,
    worker_id: WorkerId,
    secret: &Secret,
) -> Result<(), RpcError> {
    shared.links.check_peer(peer, worker_id)?;
    let pending = shared.with_state(|st| match st.workers().pending(worker_id) {
        Some(pending) if pending.secret_matches(secret) => Ok(Some(pending.info().clone())),
        Some(_) => Err(RpcError::Unauthorized(format!("wrong secret for worker {worker_id}"))),
        None => match st.workers().get(worker_id) {
            Some(worker) if worker.secret_matches(secret) => Ok(None),
            Some(_) => Err(RpcError::Unauthorized(format!("wrong secret for worker {worker_id}"))),
            None => Err(RpcError::NotFound(format!("worker {worker_id} is not registered: register again"))),
        },
    })?;
    let Some(info) = pending else { return Ok(()) };
    let dialled_at = Instant::now();
    // A dial-back that fails to connect may be a partition or a slow link as well as a wrong
    // address: the worker retries with backoff, and the hint says what to check if it never
    // works. Something else answering at the address (its certificate does not name this
    // worker) is refused for good, as the worker refuses a controller that is not its own.
    let transport = dial(shared, worker_id, &info.address).await.map_err(|e| {
        let message = format!(
            "the controller cannot reach the worker at {}: {e}: give the worker a --listen (or --advertise) \
             address the controller can reach",
            info.address
        );
        if link::is_wrong_peer(&e) { RpcError::Invalid(message) } else { RpcError::Unreachable(message) }
    })?;
    let NewClient { client, dispatch } = WorkerClient::new(client::Config::default(), transport);
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
    // A small first call, answered before any large one is sent: it opens the worker's gate
    // for this link (see `tls::gate`). Job 0 is never a job's id, so releasing it does nothing.
    match client.release(deadline_in(HELLO_DEADLINE), secret.clone(), 0).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(RpcError::Invalid(format!("the worker at {} refused the controller: {error}", info.address)));
        }
        Err(error) => {
            return Err(RpcError::Unreachable(format!(
                "the worker at {} did not answer the controller's first call: {}",
                info.address,
                crate::errors::chain(&error)
            )));
        }
    }
    let info = WorkerInfo { processes: info.processes.max(1), ..info };
    // A TLS handshake is about one round trip: the first measure of the worker's link.
    let round_trip = dialled_at.elapsed();
    let entry = WorkerEntry::new(worker_id, info, secret.clone(), client, connection, round_trip);
    info!(
        worker = worker_id,
        address = %entry.info().address,
        hostname = %entry.info().hostname,
        processes = entry.info().processes,
        round_trip_ms = round_trip.as_millis() as u64,
        "worker joined"
    );
    // False when it was removed while it was being dialled.
    let joined = shared.with_state(|st| st.join_worker(entry));
    if !joined {
        return Err(RpcError::NotFound(format!("worker {worker_id} was removed: register again")));
    }
    shared.reaper_wake.notify_one();
    shared.wake();
    Ok(())
}

/// Issues a live or pending worker a fresh certificate for `public_key`.
pub(super) fn renew(
    shared: &Shared,
    peer: Option<Fingerprint>,
    worker_id: WorkerId,
    secret: &Secret,
    public_key: &[u8],
) -> Result<WorkerCertificate, RpcError> {
    shared.links.check_peer(peer, worker_id)?;
    let known = shared.with_state(|st| {
        st.workers()
            .get(worker_id)
            .map(|w| w.secret_matches(secret))
            .or(st.workers().pending(worker_id).map(|p| p.secret_matches(secret)))
    });
    match known {
        None => Err(RpcError::NotFound(format!("worker {worker_id} is not registered: register again"))),
        Some(false) => Err(RpcError::Unauthorized(format!("wrong secret for worker {worker_id}"))),
        Some(true) => shared
            .links
            .issue(worker_id, public_key)?
            .ok_or_else(|| RpcError::Invalid("this controller runs without TLS: there is nothing to renew".to_owned())),
    }
}

/// Removes a worker (live or pending): its work goes elsewhere, its certificates are revoked
/// and its key refused from now on.
pub(super) async fn remove(shared: &Shared, worker_id: WorkerId) -> Result<(), RpcError> {
    let public_key = shared.with_state(|st| st.remove_worker(worker_id));
    let Some(public_key) = public_key else {
        return Err(RpcError::NotFound(format!("worker {worker_id} is not registered (see kiln cluster)")));
    };
    shared.wake();
    info!(worker = worker_id, "worker removed");
    shared.links.remove(worker_id, &public_key).await
}

type DialTransport =
    Frames<tarpc::Response<crate::rpc::WorkerResponse>, tarpc::ClientMessage<crate::rpc::WorkerRequest>>;

/// Dials worker `worker_id` at `address`: over TLS it must present the certificate naming it.
async fn dial(shared: &Shared, worker_id: WorkerId, address: &str) -> io::Result<DialTransport> {
    let link = match &shared.links.tls {
        Some(tls) => {
            let name = ServerName::try_from(worker_name(worker_id))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let dial = Dial { config: Arc::clone(&tls.dial), name };
            link::connect(address, Some(&dial), DIAL_TIMEOUT).await?
        }
        None => link::connect(address, None, DIAL_TIMEOUT).await?,
    };
    Ok(frames::dialled(link))
}

/// Checks a worker's link, id and secret.
fn check_worker(
    shared: &Shared,
    peer: Option<Fingerprint>,
    worker_id: WorkerId,
    secret: &Secret,
) -> Result<(), RpcError> {
    shared.links.check_peer(peer, worker_id)?;
    shared.with_state(|st| match st.workers().get(worker_id) {
        None => Err(RpcError::NotFound(format!("worker {worker_id} is not registered: register again"))),
        Some(worker) if !worker.secret_matches(secret) => {
            Err(RpcError::Unauthorized(format!("wrong secret for worker {worker_id}")))
        }
        Some(_) => Ok(()),
    })
}

/// Records a heartbeat.
pub(super) fn heartbeat(
    shared: &Shared,
    peer: Option<Fingerprint>,
    worker_id: WorkerId,
    secret: &Secret,
) -> Result<(), RpcError> {
    check_worker(shared, peer, worker_id, secret)?;
    shared.with_state(|st| {
        if let Some(worker) = st.workers_mut().get_mut(worker_id) {
            worker.seen();
        }
    });
    Ok(())
}

/// Sends a worker the plugin archive with this hash.
pub(super) async fn fetch_plugin(
    shared: &Shared,
    peer: Option<Fingerprint>,
    worker_id: WorkerId,
    secret: &Secret,
    hash: &str,
) -> Result<ByteBuf, RpcError> {
    check_worker(shared, peer, worker_id, secret)?;
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
        let (lost, next) = shared.with_state(|st| st.lose_silent_workers(timeout, now));
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
