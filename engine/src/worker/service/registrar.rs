//! Keeping the worker registered with its controller: connecting (over TLS, checking the
//! controller against the CA the join token pins before the token is sent), registering with
//! the join token and the worker's public key, connecting again with the certificate it got and
//! activating, heartbeats, renewing the certificate before it expires, and starting over (with
//! backoff) when the controller is away or forgot the worker.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use serde_bytes::ByteBuf;
use tarpc::context;
use tokio::sync::watch;

use super::state::{State, lock};
use crate::rpc::{
    ControllerClient, HEARTBEAT_INTERVAL, PROTOCOL_VERSION, Registration, RpcError, Secret, WorkerCertificate,
    WorkerInfo,
};
use crate::tls::ca::WorkerKey;
use crate::tls::key::Trust;
use crate::tls::link::{self, is_wrong_peer};
use crate::tls::{Fingerprint, verify};

/// How long connecting to the controller may take before it counts as away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of a registration call: the controller only records the worker.
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// Deadline of an activation: the controller dials the worker back (at most 5 s) first.
const ACTIVATE_DEADLINE: Duration = Duration::from_secs(15);

/// Deadline of a heartbeat: well under the controller's timeout for silent workers (3 s), so a
/// stuck call is noticed while the worker still counts as alive.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(2);

/// The first and the longest pause between attempts to reach the controller.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Keeps the worker registered: connects, registers, sends heartbeats, renews its certificate,
/// and starts over when the controller goes away or forgets the worker.
pub(super) struct Registrar {
    pub(super) controller: String,
    pub(super) trust: Trust,
    /// The join token's secret, sent only over a verified link.
    pub(super) join_token: Secret,
    /// The worker's key pair; `None` on a plaintext cluster.
    pub(super) key: Option<Arc<WorkerKey>>,
    pub(super) advertise: Option<String>,
    pub(super) local_addr: SocketAddr,
    pub(super) processes: u32,
    pub(super) state: Arc<State>,
}

/// Why the heartbeat loop ended.
enum Lapse {
    /// The connection failed, or the certificate was renewed: reconnect, and keep the
    /// registration if the controller does.
    Disconnected,
    /// The controller does not know this registration: register again.
    Forgotten,
}

impl Registrar {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>, refused: watch::Sender<Option<RpcError>>) {
        let mut backoff = BACKOFF_FIRST;
        let mut away_since: Option<Instant> = None;
        loop {
            let attempt = self.join();
            let joined = tokio::select! {
                joined = attempt => joined,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            match joined {
                Ok(client) => {
                    backoff = BACKOFF_FIRST;
                    if let Some(since) = away_since.take() {
                        tracing::info!(controller = %self.controller, after = ?since.elapsed(), "controller is back");
                    }
                    let lapse = tokio::select! {
                        lapse = self.heartbeats(&client) => lapse,
                        _ = stop.wait_for(|stop| *stop) => return,
                    };
                    if let Lapse::Forgotten = lapse {
                        tracing::info!(controller = %self.controller, "the controller forgot this worker; registering again");
                        self.state.set_link(|link| link.registration = None);
                        self.state.forget_jobs();
                    }
                    continue;
                }
                Err(Refusal::Fatal(error)) => {
                    tracing::error!(controller = %self.controller, %error, "the controller refused this worker");
                    let _ = refused.send(Some(error));
                    return;
                }
                Err(Refusal::Retry(message)) => {
                    if away_since.is_none() {
                        tracing::warn!(controller = %self.controller, "cannot reach the controller ({message}); retrying");
                        away_since = Some(Instant::now());
                    } else {
                        tracing::debug!(controller = %self.controller, "still cannot reach the controller: {message}");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Connects to the controller and makes that link the worker's: keeps the current
    /// registration if the controller still knows it, else registers anew and activates.
    async fn join(&self) -> Result<ControllerClient, Refusal> {
        let current = lock(&self.state.link).registration.clone();
        if let Some(registration) = current {
            let (client, _) = self.connect(true).await?;
            match heartbeat(&client, &registration).await {
                Ok(()) => {
                    self.state.set_link(|link| link.controller = Some(client.clone()));
                    return Ok(client);
                }
                Err(HeartbeatError::Forgotten) => {
                    self.state.set_link(|link| link.registration = None);
                    self.state.forget_jobs();
                }
                Err(HeartbeatError::Failed(message)) => return Err(Refusal::Retry(message)),
            }
        }
        let (client, local_ip) = self.connect(false).await?;
        let info = WorkerInfo {
            protocol: PROTOCOL_VERSION,
            address: self.advertised(local_ip),
            processes: self.processes,
            hostname: hostname(),
            public_key: ByteBuf::from(self.key.as_ref().map(|key| key.public_key()).unwrap_or_default()),
        };
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + REGISTER_DEADLINE;
        self.state.set_link(|link| link.registering = true);
        let registered = match client.register(ctx, self.join_token.clone(), info.clone()).await {
            Ok(Ok(registration)) => self.install(registration.certificate.as_ref()).map(|()| registration),
            Ok(Err(error)) => Err(refusal(error)),
            Err(error) => Err(Refusal::Retry(error.to_string())),
        };
        let activated = match registered {
            Ok(registration) => {
                // The controller calls with the new secret as soon as it has dialled back.
                self.state.set_link(|link| link.registration = Some(registration.clone()));
                self.activate(client, &registration).await
            }
            Err(refused) => Err(refused),
        };
        self.state.set_link(|link| link.registering = false);
        match activated {
            Ok(client) => {
                tracing::info!(
                    controller = %self.controller,
                    worker_id = lock(&self.state.link).registration.as_ref().map_or(0, |r| r.worker_id),
                    address = %info.address,
                    "registered with the controller"
                );
                self.state.set_link(|link| link.controller = Some(client.clone()));
                Ok(client)
            }
            Err(refused) => {
                self.state.set_link(|link| {
                    link.registration = None;
                    link.controller = None;
                });
                Err(refused)
            }
        }
    }

    /// Activates a registration, over a link presenting its certificate (a new one on TLS).
    async fn activate(
        &self,
        client: ControllerClient,
        registration: &Registration,
    ) -> Result<ControllerClient, Refusal> {
        let client = if self.key.is_some() { self.connect(true).await?.0 } else { client };
        // The controller dials back and may prepare a job, which fetches its plugin over this
        // link, before `activate` answers: the link must be in place first.
        self.state.set_link(|link| link.controller = Some(client.clone()));
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + ACTIVATE_DEADLINE;
        match client.activate(ctx, registration.worker_id, registration.worker_secret.clone()).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(error)) => Err(refusal(error)),
            Err(error) => Err(Refusal::Retry(error.to_string())),
        }
    }

    /// Takes a certificate from the controller: serves the controller's calls with it and
    /// presents it on the link to the controller.
    fn install(&self, certificate: Option<&WorkerCertificate>) -> Result<(), Refusal> {
        let (Some(key), Trust::Pinned(pinned)) = (&self.key, self.trust) else { return Ok(()) };
        let invalid = |message: String| Refusal::Fatal(RpcError::Invalid(message));
        let Some(certificate) = certificate else {
            return Err(invalid("the controller sent no certificate: run the same kiln version on both".to_owned()));
        };
        if Fingerprint::of(&certificate.ca) != pinned {
            return Err(invalid("the controller sent a CA other than the one the join token pins".to_owned()));
        }
        let ca = CertificateDer::from(certificate.ca.to_vec());
        let identity = key
            .certified(CertificateDer::from(certificate.cert.to_vec()), ca.clone())
            .map_err(|e| invalid(e.to_string()))?;
        let server = verify::worker_server(&ca, Arc::clone(&identity)).map_err(|e| invalid(e.to_string()))?;
        let renew_at = renewal_time(certificate.expires_ms);
        self.state.set_link(|link| {
            link.server_tls = Some(server);
            link.identity = Some(identity);
            link.renew_at = renew_at;
        });
        Ok(())
    }

    /// Connects to the controller, with the worker's certificate when `identified` (and one is
    /// held); answers the client and the local address of the connection.
    async fn connect(&self, identified: bool) -> Result<(ControllerClient, IpAddr), Refusal> {
        let identity = if identified { lock(&self.state.link).identity.clone() } else { None };
        let dial = verify::dial_controller(self.trust, &self.controller, None, identity)
            .map_err(|e| Refusal::Fatal(RpcError::Invalid(e.to_string())))?;
        let link = match link::connect(&self.controller, dial.as_ref(), CONNECT_TIMEOUT).await {
            Ok(link) => link,
            Err(e) if is_wrong_peer(&e) => {
                return Err(Refusal::Fatal(RpcError::Unauthorized(format!(
                    "the controller at {} is not the one this join token belongs to ({e})",
                    self.controller
                ))));
            }
            Err(e) => return Err(Refusal::Retry(e.to_string())),
        };
        let local_ip = link.local_addr().ip();
        let transport = link::transport(link);
        Ok((ControllerClient::new(tarpc::client::Config::default(), transport).spawn(), local_ip))
    }

    /// Renews the certificate when it is two thirds through its life; answers whether it did.
    async fn renew_if_due(&self, client: &ControllerClient, registration: &Registration) -> Result<bool, String> {
        let (Some(key), Some(renew_at)) = (&self.key, lock(&self.state.link).renew_at) else { return Ok(false) };
        if SystemTime::now() < renew_at {
            return Ok(false);
        }
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + REGISTER_DEADLINE;
        let public_key = ByteBuf::from(key.public_key());
        match client.renew(ctx, registration.worker_id, registration.worker_secret.clone(), public_key).await {
            Ok(Ok(certificate)) => {
                self.install(Some(&certificate)).map_err(|_| "the renewed certificate is unusable".to_owned())?;
                tracing::info!(controller = %self.controller, "renewed the worker's certificate");
                Ok(true)
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Sends heartbeats until the connection fails or the controller forgets the worker.
    async fn heartbeats(&self, client: &ControllerClient) -> Lapse {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(registration) = lock(&self.state.link).registration.clone() else { return Lapse::Forgotten };
            match self.renew_if_due(client, &registration).await {
                Ok(true) => return Lapse::Disconnected,
                Ok(false) => {}
                Err(message) => {
                    tracing::warn!(controller = %self.controller, "renewing the certificate failed ({message}); registering again");
                    return Lapse::Forgotten;
                }
            }
            match heartbeat(client, &registration).await {
                Ok(()) => {}
                Err(HeartbeatError::Forgotten) => return Lapse::Forgotten,
                Err(HeartbeatError::Failed(message)) => {
                    tracing::warn!(controller = %self.controller, "heartbeat failed ({message}); reconnecting");
                    self.state.set_link(|link| link.controller = None);
                    return Lapse::Disconnected;
                }
            }
        }
    }

    /// The address the controller should dial.
    fn advertised(&self, local_ip: IpAddr) -> String {
        if let Some(address) = &self.advertise {
            return address.clone();
        }
        if self.local_addr.ip().is_unspecified() {
            // Listening on every interface: the one that reaches the controller will do.
            return SocketAddr::new(local_ip, self.local_addr.port()).to_string();
        }
        self.local_addr.to_string()
    }
}

/// Why joining the controller did not work.
enum Refusal {
    /// The controller said no for good.
    Fatal(RpcError),
    /// It is away or failed; try again later.
    Retry(String),
}

enum HeartbeatError {
    /// The controller does not know this registration (it restarted, or declared us lost).
    Forgotten,
    /// The call failed.
    Failed(String),
}

async fn heartbeat(client: &ControllerClient, registration: &Registration) -> Result<(), HeartbeatError> {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + HEARTBEAT_DEADLINE;
    match client.heartbeat(ctx, registration.worker_id, registration.worker_secret.clone()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(RpcError::NotFound(_) | RpcError::Unauthorized(_))) => Err(HeartbeatError::Forgotten),
        Ok(Err(error)) => Err(HeartbeatError::Failed(error.to_string())),
        Err(error) => Err(HeartbeatError::Failed(error.to_string())),
    }
}

/// How a refusal from the controller is taken: for good when the token, version, address or
/// key is refused; else try again.
fn refusal(error: RpcError) -> Refusal {
    match error {
        error @ (RpcError::Unauthorized(_) | RpcError::VersionMismatch { .. } | RpcError::Invalid(_)) => {
            Refusal::Fatal(error)
        }
        error => Refusal::Retry(error.to_string()),
    }
}

/// When a certificate expiring at `expires_ms` is two thirds through its life (counted from
/// now, when it is received).
fn renewal_time(expires_ms: u64) -> Option<SystemTime> {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_millis(expires_ms);
    let left = expires.duration_since(SystemTime::now()).unwrap_or_default();
    Some(SystemTime::now() + left * 2 / 3)
}

/// This machine's host name, for display on the controller.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok && end > 0 { String::from_utf8_lossy(&buffer[..end]).into_owned() } else { "unknown".to_owned() }
}
