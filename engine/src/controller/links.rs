//! The controller's links: its keys and TLS set-up (the cluster CA in `<data_dir>/tls/`, its
//! own certificate, the keys it prints), the accept loop with its connection limits, and the
//! certificates it issues to workers, with the removed workers' keys it refuses.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use rustls::{ClientConfig, ServerConfig};
use serde_bytes::ByteBuf;
use tarpc::server::{BaseChannel, Channel};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::service::ControllerService;
use super::{ControllerConfig, ControllerError};
use crate::rpc::{
    Controller as _, ControllerRequest, ControllerResponse, RpcError, Secret, WorkerCertificate, WorkerId,
};
use crate::telemetry::metrics::Counted;
use crate::tls::ca::{ClusterCa, load_operator_cert};
use crate::tls::frames;
use crate::tls::gate::{Gate, PRE_AUTH_TIMEOUT};
use crate::tls::key::{Credential, Role, Trust};
use crate::tls::link::{self, Link};
use crate::tls::{Fingerprint, TlsError, verify};

/// Connections from one IP address: a host runs a worker and a few clients; a web app relaying
/// many users may hold a few dozen.
const MAX_CHANNELS_PER_IP: u32 = 64;

/// Connections in all, so that a flood of them cannot exhaust file descriptors.
const MAX_CHANNELS: usize = 1024;

/// Connections that have made no authenticated call yet, in all and from one IP address: each
/// holds at most a [`PRE_AUTH_FRAME_BYTES`](gate::PRE_AUTH_FRAME_BYTES) frame and its TLS buffers, so strangers together
/// hold a few tens of MiB at most (see [`crate::tls::gate`]).
const MAX_UNAUTHENTICATED: usize = 128;
const MAX_UNAUTHENTICATED_PER_IP: u32 = 16;

/// Requests in flight on one connection: long-polls of many jobs, uploads, and a margin.
const MAX_REQUESTS_PER_CHANNEL: usize = 128;

/// The controller's TLS material, absent on a plaintext controller.
pub(super) struct Tls {
    pub ca: ClusterCa,
    pub server: Arc<ServerConfig>,
    /// For dialling workers back, presenting the controller's certificate.
    pub dial: Arc<ClientConfig>,
}

/// Keys, certificates and removed workers.
pub(super) struct Links {
    pub tls: Option<Tls>,
    pub api_key: Credential,
    pub join_token: Credential,
    pub worker_cert_lifetime: Duration,
    /// Worker certificates issued and not revoked, by the fingerprint of their DER.
    issued: Mutex<HashMap<Fingerprint, Issued>>,
    /// Public keys of removed workers, refused if they register again.
    removed: Mutex<HashSet<Vec<u8>>>,
    removed_path: PathBuf,
}

struct Issued {
    worker_id: WorkerId,
    expires: SystemTime,
}

/// What setting up the links made: the links, and which secrets were written now (to print
/// once).
pub(super) struct SetUp {
    pub links: Links,
    pub generated: Vec<&'static str>,
}

/// Checks the plaintext rules, makes or reads the CA and the keys, and issues the controller's
/// certificate for its addresses.
pub(super) async fn set_up(config: &ControllerConfig) -> Result<SetUp, ControllerError> {
    let data_dir = &config.data_dir;
    let tls_dir = data_dir.join("tls");
    let tls_error = ControllerError::Tls;
    if config.plaintext && !config.plaintext_allow_remote && !config.listen.ip().is_loopback() {
        return Err(ControllerError::PlaintextRemote { addr: config.listen });
    }
    let (tls, client_trust, worker_trust) = if config.plaintext {
        warn!(addr = %config.listen, "--insecure-plaintext: keys, plugins and inputs cross the network readable by anyone");
        (None, Trust::Plaintext, Trust::Plaintext)
    } else {
        let dir = tls_dir.clone();
        let (ca, made) = tokio::task::spawn_blocking(move || ClusterCa::load_or_create(&dir))
            .await
            .map_err(|e| tls_error(TlsError::Certificate(e.to_string())))?
            .map_err(tls_error)?;
        if made {
            info!(fingerprint = %ca.fingerprint(), "made the cluster's certificate authority");
        }
        let own = ca.issue_controller(&certificate_names(config.listen)).map_err(tls_error)?;
        let operator = match &config.operator_cert {
            Some((cert, key)) => Some(load_operator_cert(cert, key).map_err(tls_error)?),
            None => None,
        };
        let client_trust = if operator.is_some() { Trust::WebPki } else { Trust::Pinned(ca.fingerprint()) };
        let server = verify::controller_server(ca.cert(), Arc::clone(&own), operator).map_err(tls_error)?;
        let dial = verify::controller_dial(ca.cert(), own).map_err(tls_error)?;
        let worker_trust = Trust::Pinned(ca.fingerprint());
        (Some(Tls { ca, server, dial }), client_trust, worker_trust)
    };
    let mut generated = Vec::new();
    let (api_key, fresh) =
        load_credential(config.api_key.clone(), &data_dir.join("api_key"), Role::Client, client_trust).await?;
    if fresh {
        generated.push("api_key");
    }
    let (join_token, fresh) =
        load_credential(config.join_token.clone(), &data_dir.join("join_token"), Role::Worker, worker_trust).await?;
    if fresh {
        generated.push("join_token");
    }
    let removed_path = tls_dir.join("removed_workers");
    let removed = match tokio::fs::read_to_string(&removed_path).await {
        Ok(text) => text.lines().filter_map(|line| hex_decode(line.trim())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
        Err(source) => return Err(ControllerError::SecretFile { path: removed_path, source }),
    };
    let links = Links {
        tls,
        api_key,
        join_token,
        worker_cert_lifetime: config.worker_cert_lifetime,
        issued: Mutex::default(),
        removed: Mutex::new(removed),
        removed_path,
    };
    Ok(SetUp { links, generated })
}

impl Links {
    /// Issues worker `worker_id` a certificate for `public_key`; `None` on a plaintext
    /// controller. A removed worker's key is refused.
    pub fn issue(&self, worker_id: WorkerId, public_key: &[u8]) -> Result<Option<WorkerCertificate>, RpcError> {
        let Some(tls) = &self.tls else { return Ok(None) };
        if self.is_removed(public_key) {
            return Err(RpcError::Unauthorized(
                "this worker was removed from the cluster (kiln cluster remove): its key is refused".to_owned(),
            ));
        }
        let (cert, expires) = tls
            .ca
            .issue_worker(worker_id, public_key, self.worker_cert_lifetime)
            .map_err(|e| RpcError::Invalid(e.to_string()))?;
        let now = SystemTime::now();
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued.retain(|_, entry| entry.expires > now);
        issued.insert(Fingerprint::of(&cert), Issued { worker_id, expires });
        let expires_ms = expires.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(Some(WorkerCertificate {
            cert: ByteBuf::from(cert.to_vec()),
            ca: ByteBuf::from(tls.ca.cert().to_vec()),
            expires_ms,
        }))
    }

    /// Checks that a worker call came over a link whose client certificate was issued to
    /// `worker_id`, has not expired and was not revoked (on a plaintext controller, always).
    pub fn check_peer(&self, peer: Option<Fingerprint>, worker_id: WorkerId) -> Result<(), RpcError> {
        if self.tls.is_none() {
            return Ok(());
        }
        let issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        match peer.and_then(|peer| issued.get(&peer)) {
            Some(entry) if entry.worker_id == worker_id && entry.expires > SystemTime::now() => Ok(()),
            Some(entry) if entry.worker_id == worker_id => {
                Err(RpcError::Unauthorized(format!("worker {worker_id}'s certificate expired: register again")))
            }
            _ => Err(RpcError::Unauthorized(format!(
                "this link does not carry the certificate issued to worker {worker_id}: register again"
            ))),
        }
    }

    /// Revokes every certificate of `worker_id` and refuses `public_key` from now on, also
    /// after a restart.
    pub async fn remove(&self, worker_id: WorkerId, public_key: &[u8]) -> Result<(), RpcError> {
        self.issued.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, entry| entry.worker_id != worker_id);
        if public_key.is_empty()
            || !self.removed.lock().unwrap_or_else(PoisonError::into_inner).insert(public_key.to_vec())
        {
            return Ok(());
        }
        let line = format!("{}\n", hex_encode(public_key));
        let write = async {
            if let Some(dir) = self.removed_path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.removed_path).await?;
            file.write_all(line.as_bytes()).await?;
            file.sync_all().await
        };
        write.await.map_err(|e| {
            RpcError::Internal(format!("cannot record the removed worker in {}: {e}", self.removed_path.display()))
        })
    }

    fn is_removed(&self, public_key: &[u8]) -> bool {
        self.removed.lock().unwrap_or_else(PoisonError::into_inner).contains(public_key)
    }
}

/// Accepts connections: runs each TLS handshake in its own task (a slow one holds no one
/// else up), with limits per IP address and in all, on connections and on unauthenticated
/// ones, and serves each link's calls.
pub(super) async fn accept_loop(listener: TcpListener, server: Option<Arc<ServerConfig>>, service: ControllerService) {
    let mut channels = JoinSet::new();
    let all_channels = Arc::new(Semaphore::new(MAX_CHANNELS));
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let per_ip: Arc<Mutex<HashMap<IpAddr, u32>>> = Arc::default();
    let unauthenticated_per_ip: Arc<Mutex<HashMap<IpAddr, u32>>> = Arc::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while channels.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&all_channels).try_acquire_owned() else {
            warn!(peer = %peer, "{MAX_CHANNELS} connections are open: refusing another");
            continue;
        };
        let Some(slot) = IpSlot::take(&per_ip, peer.ip(), MAX_CHANNELS_PER_IP) else {
            warn!(peer = %peer, "{MAX_CHANNELS_PER_IP} connections from this address are open: refusing another");
            continue;
        };
        let Ok(unauthenticated_permit) = Arc::clone(&unauthenticated).try_acquire_owned() else {
            warn!(peer = %peer, "{MAX_UNAUTHENTICATED} connections have made no authenticated call yet: refusing another");
            continue;
        };
        let Some(unauthenticated_slot) = IpSlot::take(&unauthenticated_per_ip, peer.ip(), MAX_UNAUTHENTICATED_PER_IP)
        else {
            warn!(
                peer = %peer,
                "{MAX_UNAUTHENTICATED_PER_IP} connections from this address have made no authenticated call yet: \
                 refusing another"
            );
            continue;
        };
        let gate = Gate::closed((unauthenticated_permit, unauthenticated_slot));
        let (service, server) = (service.clone(), server.clone());
        channels.spawn(async move {
            let _held = (permit, slot);
            let link = match link::accept(tcp, server).await {
                Ok(link) => link,
                Err(e) => {
                    info!(peer = %peer, "closed a connection whose TLS handshake failed: {e}");
                    return;
                }
            };
            serve_link(link, service, gate).await;
        });
    }
}

/// Serves a link's calls until it closes, it breaks, or it goes [`PRE_AUTH_TIMEOUT`] without
/// an authenticated call.
async fn serve_link(link: Link, service: ControllerService, gate: Gate) {
    let peer = link.peer_cert().map(|cert| Fingerprint::of(cert));
    let peer_addr = link.peer_addr();
    let transport = frames::accepted::<tarpc::ClientMessage<ControllerRequest>, tarpc::Response<ControllerResponse>>(
        link,
        gate.clone(),
    )
    .inspect_err(move |e| info!(peer = %peer_addr, "closed a broken connection: {e}"));
    let service = ControllerService { peer, gate: gate.clone(), ..service };
    let calls = service.shared.metrics.rpc.clone();
    let serve = BaseChannel::with_defaults(transport)
        .max_concurrent_requests(MAX_REQUESTS_PER_CHANNEL)
        .execute(Counted::new(service.serve(), calls))
        .for_each_concurrent(None, |request| request);
    tokio::select! {
        () = serve => {}
        () = gate.still_closed_after(PRE_AUTH_TIMEOUT) => {
            info!(
                peer = %peer_addr,
                "closed a connection that made no authenticated call within {} s",
                PRE_AUTH_TIMEOUT.as_secs()
            );
        }
    }
}

/// One connection counted against its IP address's limit, until dropped.
struct IpSlot {
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, u32>>>, ip: IpAddr, limit: u32) -> Option<IpSlot> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot { counts: Arc::clone(counts), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The names the controller's certificate carries besides the cluster name: the address it
/// listens on, this host's name and loopback.
fn certificate_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec![listen.ip().to_string(), "localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0 {
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        names.push(String::from_utf8_lossy(&buffer[..end]).into_owned());
    }
    names
}

/// The given credential (a bare secret or a whole key), or the one stored at `path`, or a new
/// one stored there (mode 0600), always with `trust`; answers whether it was written now (a
/// new one, or a stored one brought to the current form), to be printed once.
async fn load_credential(
    given: Option<Secret>,
    path: &Path,
    role: Role,
    trust: Trust,
) -> Result<(Credential, bool), ControllerError> {
    let what = match role {
        Role::Client => "API key",
        Role::Worker => "join token",
    };
    let file_error = |source| ControllerError::SecretFile { path: path.to_owned(), source };
    let empty = || ControllerError::EmptySecret { what, path: path.to_owned() };
    let secret_of = |text: &str| match Credential::parse(role, text) {
        Ok(credential) => credential.secret,
        Err(_) => Secret::new(text.trim()),
    };
    if let Some(given) = given {
        let secret = secret_of(given.expose());
        return if secret.expose().is_empty() {
            Err(empty())
        } else {
            Ok((Credential::new(role, trust, secret), false))
        };
    }
    let (secret, stored_as) = match tokio::fs::read_to_string(path).await {
        Ok(text) if text.trim().is_empty() => return Err(empty()),
        Ok(text) => (secret_of(&text), Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Secret::generate(), None),
        Err(e) => return Err(file_error(e)),
    };
    let credential = Credential::new(role, trust, secret);
    if stored_as.as_deref() == Some(credential.to_text().as_str()) {
        return Ok((credential, false));
    }
    // New, or stored by an older kiln or under another trust: (re)write it.
    let temporary = path.with_extension("new");
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .await
        .map_err(file_error)?;
    file.write_all(format!("{}\n", credential.to_text()).as_bytes()).await.map_err(file_error)?;
    file.sync_all().await.map_err(file_error)?;
    // The mode above is filtered by the umask; make sure of it.
    tokio::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)).await.map_err(file_error)?;
    tokio::fs::rename(&temporary, path).await.map_err(file_error)?;
    Ok((credential, true))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_keys_round_trip_through_hex() {
        let key = vec![4u8, 0, 255, 17];
        assert_eq!(hex_decode(&hex_encode(&key)), Some(key));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[tokio::test]
    async fn stored_keys_are_written_once_and_old_ones_brought_to_the_new_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api_key");
        let trust = Trust::Pinned(Fingerprint::of(b"ca"));
        let (made, fresh) = load_credential(None, &path, Role::Client, trust).await.unwrap();
        assert!(fresh);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), made.to_text());
        let (again, fresh) = load_credential(None, &path, Role::Client, trust).await.unwrap();
        assert!(!fresh && again == made);

        std::fs::write(&path, "an-old-bare-secret\n").unwrap();
        let (upgraded, fresh) = load_credential(None, &path, Role::Client, trust).await.unwrap();
        assert!(fresh);
        assert_eq!(upgraded.secret.expose(), "an-old-bare-secret");
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), upgraded.to_text());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let given = Secret::new(upgraded.to_text());
        let (from_flag, fresh) = load_credential(Some(given), &path, Role::Client, Trust::Plaintext).await.unwrap();
        assert!(!fresh);
        assert_eq!((from_flag.secret.expose(), from_flag.trust), ("an-old-bare-secret", Trust::Plaintext));
    }
}
