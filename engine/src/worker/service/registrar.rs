//! Keeping the worker registered with its controller: connecting, registering with the join
//! token, heartbeats, and starting over (with backoff) when the controller is away or forgot
//! the worker.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarpc::context;
use tarpc::tokio_serde::formats::Bincode;
use tokio::sync::watch;

use super::state::{State, lock};
use crate::rpc::{
    ControllerClient, HEARTBEAT_INTERVAL, MAX_FRAME_BYTES, PROTOCOL_VERSION, Registration, RpcError, Secret, WorkerInfo,
};

/// How long connecting to the controller may take before it counts as away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of a registration call: the controller only records the worker.
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// Deadline of a heartbeat: well under the controller's timeout for silent workers (3 s), so a
/// stuck call is noticed while the worker still counts as alive.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(2);

/// The first and the longest pause between attempts to reach the controller.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Keeps the worker registered: connects, registers, sends heartbeats, and starts over when the
/// controller goes away or forgets the worker.
pub(super) struct Registrar {
    pub(super) controller: String,
    pub(super) join_token: Secret,
    pub(super) advertise: Option<String>,
    pub(super) local_addr: SocketAddr,
    pub(super) processes: u32,
    pub(super) state: Arc<State>,
}

/// Why the heartbeat loop ended.
enum Lapse {
    /// The connection failed: reconnect, and keep the registration if the controller does.
    Disconnected,
    /// The controller does not know this registration: register again.
    Forgotten,
}

impl Registrar {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>, refused: watch::Sender<Option<RpcError>>) {
        let mut backoff = BACKOFF_FIRST;
        let mut away_since: Option<Instant> = None;
        loop {
            let attempt = async {
                let (client, local_ip) = connect(&self.controller).await.map_err(|e| Refusal::Retry(e.to_string()))?;
                self.join(&client, local_ip).await?;
                Ok::<_, Refusal>(client)
            };
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

    /// Makes `client` the worker's connection: keeps the current registration if the controller
    /// still knows it, else registers anew.
    async fn join(&self, client: &ControllerClient, local_ip: IpAddr) -> Result<(), Refusal> {
        let current = lock(&self.state.link).registration.clone();
        if let Some(registration) = current {
            match heartbeat(client, &registration).await {
                Ok(()) => {
                    self.state.set_link(|link| link.controller = Some(client.clone()));
                    return Ok(());
                }
                Err(HeartbeatError::Forgotten) => {
                    self.state.set_link(|link| link.registration = None);
                    self.state.forget_jobs();
                }
                Err(HeartbeatError::Failed(message)) => return Err(Refusal::Retry(message)),
            }
        }
        let info = WorkerInfo {
            protocol: PROTOCOL_VERSION,
            address: self.advertised(local_ip),
            processes: self.processes,
            hostname: hostname(),
        };
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + REGISTER_DEADLINE;
        self.state.set_link(|link| link.registering = true);
        let answer = client.register(ctx, self.join_token.clone(), info.clone()).await;
        let result = match answer {
            Ok(Ok(registration)) => {
                tracing::info!(
                    controller = %self.controller,
                    worker_id = registration.worker_id,
                    address = %info.address,
                    "registered with the controller"
                );
                self.state.set_link(|link| {
                    link.registration = Some(registration);
                    link.controller = Some(client.clone());
                });
                Ok(())
            }
            Ok(Err(error @ (RpcError::Unauthorized(_) | RpcError::VersionMismatch { .. } | RpcError::Invalid(_)))) => {
                Err(Refusal::Fatal(error))
            }
            Ok(Err(error)) => Err(Refusal::Retry(error.to_string())),
            Err(error) => Err(Refusal::Retry(error.to_string())),
        };
        self.state.set_link(|link| link.registering = false);
        result
    }

    /// Sends heartbeats until the connection fails or the controller forgets the worker.
    async fn heartbeats(&self, client: &ControllerClient) -> Lapse {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(registration) = lock(&self.state.link).registration.clone() else { return Lapse::Forgotten };
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

/// Connects to the controller; answers the client and the local address of the connection.
async fn connect(controller: &str) -> io::Result<(ControllerClient, IpAddr)> {
    let mut connect = tarpc::serde_transport::tcp::connect(controller, Bincode::default);
    connect.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let transport = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    let local_ip = transport.local_addr()?.ip();
    Ok((ControllerClient::new(tarpc::client::Config::default(), transport).spawn(), local_ip))
}

/// This machine's host name, for display on the controller.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok && end > 0 { String::from_utf8_lossy(&buffer[..end]).into_owned() } else { "unknown".to_owned() }
}
