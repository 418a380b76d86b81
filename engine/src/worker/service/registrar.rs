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

use super::round_trip::RoundTrip;
use super::state::{State, lock};
use crate::rpc::{
    ControllerClient, HEARTBEAT_INTERVAL, PROTOCOL_VERSION, Registration, RpcError, Secret, WorkerCertificate,
    WorkerInfo,
};
use crate::tls::ca::WorkerKey;
use crate::tls::frames;
use crate::tls::key::Trust;
use crate::tls::link::{self, is_wrong_peer};
use crate::tls::{Fingerprint, verify};

/// How long connecting to the controller may take before it counts as away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of a registration call: the controller only records the worker.
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// Deadline of an activation: the controller dials the worker back (at most 10 s) first. Calls
/// add the deadline the measured round trip asks for to these bases.
const ACTIVATE_DEADLINE: Duration = Duration::from_secs(15);

/// How many heartbeats in a row may go unanswered on one connection before the worker
/// connects again: one miss only widens the next deadline (the link may just have got slower).
const MAX_MISSES: u32 = 2;

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
    /// The round trip to the controller, measured across connections; the deadlines of
    /// heartbeats follow it.
    pub(super) round_trip: std::sync::Mutex<RoundTrip>,
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
                        tracing::warn!(controller = %self.controller, "{message}; retrying");
                        away_since = Some(Instant::now());
                    } else {
                        tracing::debug!(controller = %self.controller, "still {message}; retrying");
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
    /// registration if the controller still knows it, else registers anew and activates. A
    /// heartbeat that fails here (the controller may have lost the worker while the link was
    /// slow) leads to registering anew on this fresh link, not to waiting for that heartbeat
    /// to work again.
    async fn join(&self) -> Result<ControllerClient, Refusal> {
        let current = lock(&self.state.link).registration.clone();
        if let Some(registration) = current {
            let (client, _) = self.connect(true).await?;
            match self.heartbeat(&client, &registration).await {
                Ok(()) => {
                    self.state.set_link(|link| link.controller = Some(client.clone()));
                    return Ok(client);
                }
                Err(error) => {
                    if let HeartbeatError::Failed(message) | HeartbeatError::Unanswered(message) = &error {
                        tracing::info!(controller = %self.controller, "{message}; registering again");
                    }
                    self.state.set_link(|link| link.registration = None);
                    self.state.forget_jobs();
                }
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
        let deadline = self.call_deadline(REGISTER_DEADLINE);
        ctx.deadline = Instant::now() + deadline;
        self.state.set_link(|link| link.registering = true);
        let registered = match client.register(ctx, self.join_token.clone(), info.clone()).await {
            Ok(Ok(registration)) => self.install(registration.certificate.as_ref()).map(|()| registration),
            Ok(Err(error)) => Err(refusal(error)),
            Err(error) => Err(self.unanswered("registering", deadline, &error)),
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
        let deadline = self.call_deadline(ACTIVATE_DEADLINE);
        ctx.deadline = Instant::now() + deadline;
        match client.activate(ctx, registration.worker_id, registration.worker_secret.clone()).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(error)) => Err(refusal(error)),
            Err(error) => Err(self.unanswered("activating", deadline, &error)),
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
        let started = Instant::now();
        let link = match link::connect(&self.controller, dial.as_ref(), CONNECT_TIMEOUT).await {
            Ok(link) => {
                // Connecting over TLS takes about one round trip beyond the TCP handshake.
                self.round_trip().record(started.elapsed());
                link
            }
            Err(e) if is_wrong_peer(&e) => {
                return Err(Refusal::Fatal(RpcError::Unauthorized(format!(
                    "the controller at {} is not the one this join token belongs to ({e})",
                    self.controller
                ))));
            }
            Err(e) => return Err(Refusal::Retry(format!("cannot connect to the controller: {e}"))),
        };
        let local_ip = link.local_addr().ip();
        let transport = frames::dialled(link);
        Ok((ControllerClient::new(tarpc::client::Config::default(), transport).spawn(), local_ip))
    }

    /// Renews the certificate when it is two thirds through its life; answers whether it did.
    async fn renew_if_due(&self, client: &ControllerClient, registration: &Registration) -> Result<bool, String> {
        let (Some(key), Some(renew_at)) = (&self.key, lock(&self.state.link).renew_at) else { return Ok(false) };
        if SystemTime::now() < renew_at {
            return Ok(false);
        }
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + self.call_deadline(REGISTER_DEADLINE);
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

    /// Sends heartbeats until the connection fails (or [`MAX_MISSES`] go unanswered in a row)
    /// or the controller forgets the worker.
    async fn heartbeats(&self, client: &ControllerClient) -> Lapse {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut misses = 0;
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
            match self.heartbeat(client, &registration).await {
                Ok(()) => misses = 0,
                Err(HeartbeatError::Forgotten) => return Lapse::Forgotten,
                Err(HeartbeatError::Unanswered(message)) if misses + 1 < MAX_MISSES => {
                    misses += 1;
                    tracing::info!(controller = %self.controller, "{message}; waiting longer for the next one");
                }
                Err(HeartbeatError::Failed(message) | HeartbeatError::Unanswered(message)) => {
                    tracing::warn!(controller = %self.controller, "{message}; connecting again");
                    self.state.set_link(|link| link.controller = None);
                    return Lapse::Disconnected;
                }
            }
        }
    }

    /// Sends one heartbeat with a deadline that follows the measured round trip, and measures
    /// it.
    async fn heartbeat(&self, client: &ControllerClient, registration: &Registration) -> Result<(), HeartbeatError> {
        let deadline = self.round_trip().deadline();
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + deadline;
        let started = Instant::now();
        let answer = client.heartbeat(ctx, registration.worker_id, registration.worker_secret.clone()).await;
        if answer.is_ok() {
            self.round_trip().record(started.elapsed());
        }
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(RpcError::NotFound(_) | RpcError::Unauthorized(_))) => Err(HeartbeatError::Forgotten),
            Ok(Err(error)) => Err(HeartbeatError::Failed(format!("the controller refused a heartbeat: {error}"))),
            Err(tarpc::client::RpcError::DeadlineExceeded) => {
                let message = self.no_answer("a heartbeat", deadline);
                self.round_trip().unanswered(deadline);
                Err(HeartbeatError::Unanswered(message))
            }
            Err(error) => Err(HeartbeatError::Failed(format!("a heartbeat failed: {error}"))),
        }
    }

    fn round_trip(&self) -> std::sync::MutexGuard<'_, RoundTrip> {
        self.round_trip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deadline of a call that takes `base` on a quick link, plus the round trips of a
    /// slow one.
    fn call_deadline(&self, base: Duration) -> Duration {
        base + self.round_trip().deadline()
    }

    /// Why a call got no answer: the link is slow or gone (it connected, so the controller is
    /// reachable), said with the round trip measured so far.
    fn no_answer(&self, call: &str, deadline: Duration) -> String {
        let measured = match self.round_trip().estimate() {
            Some(rtt) => format!("; round trip measured: {} ms", rtt.as_millis()),
            None => String::new(),
        };
        format!("the controller did not answer {call} within {:.1} s{measured}", deadline.as_secs_f64())
    }

    /// A call that failed: unanswered in time (the next deadline is wider), or its connection
    /// broke.
    fn unanswered(&self, call: &str, deadline: Duration, error: &tarpc::client::RpcError) -> Refusal {
        match error {
            tarpc::client::RpcError::DeadlineExceeded => {
                let message = self.no_answer(call, deadline);
                self.round_trip().unanswered(deadline);
                Refusal::Retry(message)
            }
            error => Refusal::Retry(format!("{call} failed: {error}")),
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
    /// No answer came within the deadline: the link is slow, or gone.
    Unanswered(String),
    /// The call failed otherwise.
    Failed(String),
}

/// How a refusal from the controller is taken: for good when the token, version, address or
/// key is refused; else try again, notably when the controller could not dial the worker back
/// ([`RpcError::Unreachable`]: a partition or a slow link heals, like a failed connection).
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
