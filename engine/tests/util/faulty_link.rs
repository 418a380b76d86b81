//! A TCP proxy that plays a bad network between two of a test's processes: it listens on a
//! loopback port from 127.0.0.1:0 and forwards every connection to its target, and the test
//! can at any time delay each direction, throttle it, stall it (hold every byte, as a
//! partition that drops packets does, delivering them once it heals), or cut it (drop every
//! connection and refuse new ones, as a host that went away), then heal it. Included with
//! `#[path = "util/faulty_link.rs"] mod faulty_link;`, and by `cargo xtask bench`, whose
//! pipelining measure puts workers behind delayed links (it needs only tokio).
//!
//! It runs on its own tokio runtime, so the tests stay synchronous; dropping the link ends its
//! runtime and with it every connection and the listener.
//!
//! Direction names: "up" is what the connecting side sends (a worker's calls to the controller
//! when the worker connects through the link), "down" what comes back.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How a link treats the bytes crossing it now. Changes apply to bytes read from then on
/// (delay, rate) or at once (stall, cut).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Conditions {
    /// Added to every byte going up (from the connecting side to the target).
    pub delay_up: Duration,
    /// Added to every byte going down.
    pub delay_down: Duration,
    /// Bytes per second in each direction; `None` for no limit.
    pub rate: Option<u64>,
    /// Holds every byte (and new connections) until healed.
    pub stalled: bool,
    /// Every connection dropped, new ones refused.
    pub cut: bool,
}

/// A running link.
pub struct FaultyLink {
    /// Where to connect to go through the link.
    pub addr: SocketAddr,
    conditions: watch::Sender<Conditions>,
    target: watch::Sender<Option<SocketAddr>>,
    /// Counts connections cut, so that each connection ends on the cut after its start.
    cuts: watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The largest piece read at once; a throttled link sends it in smaller steps.
const PIECE: usize = 16 << 10;

impl FaultyLink {
    /// A link to `target`.
    pub fn to(target: SocketAddr) -> FaultyLink {
        let link = FaultyLink::unaimed();
        link.aim(target);
        link
    }

    /// A link whose target is given later with [`FaultyLink::aim`] (for a daemon that must be
    /// told the link's address before it starts and says its own once it runs): connections
    /// made before then wait for it.
    pub fn unaimed() -> FaultyLink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the link's runtime starts");
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("the link binds");
        let addr = listener.local_addr().expect("the link has an address");
        let (conditions, _) = watch::channel(Conditions::default());
        let (target, _) = watch::channel(None);
        let (cuts, _) = watch::channel(0);
        let (conditions_rx, target_rx, cuts_rx) = (conditions.subscribe(), target.subscribe(), cuts.subscribe());
        runtime.spawn(accept_loop(listener, conditions_rx, target_rx, cuts_rx));
        FaultyLink { addr, conditions, target, cuts, runtime: Some(runtime) }
    }

    /// Sets where connections go.
    pub fn aim(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }

    /// The conditions now.
    pub fn conditions(&self) -> Conditions {
        *self.conditions.borrow()
    }

    /// Delays each direction by its own amount.
    pub fn delay(&self, up: Duration, down: Duration) {
        self.conditions.send_modify(|c| (c.delay_up, c.delay_down) = (up, down));
    }

    /// Limits each direction to `bytes_per_second` (`None`: no limit).
    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        self.conditions.send_modify(|c| c.rate = bytes_per_second);
    }

    /// Holds every byte in both directions, and new connections, until [`FaultyLink::heal`].
    pub fn stall(&self) {
        self.conditions.send_modify(|c| c.stalled = true);
    }

    /// Drops every connection now and refuses new ones until [`FaultyLink::heal`].
    pub fn cut(&self) {
        self.conditions.send_modify(|c| c.cut = true);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Ends a stall or a cut; delays and throttling stay.
    pub fn heal(&self) {
        self.conditions.send_modify(|c| (c.stalled, c.cut) = (false, false));
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    conditions: watch::Receiver<Conditions>,
    target: watch::Receiver<Option<SocketAddr>>,
    cuts: watch::Receiver<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if conditions.borrow().cut {
            // Refused: closed before a byte crosses.
            drop(client);
            continue;
        }
        let (conditions, mut target, mut cuts) = (conditions.clone(), target.clone(), cuts.clone());
        let cut_at_start = *cuts.borrow_and_update();
        tokio::spawn(async move {
            let connection = async {
                let Ok(addr) = target.wait_for(Option::is_some).await.map(|addr| (*addr).expect("some")) else {
                    return;
                };
                // A stalled link holds the connection too, as a lost SYN would.
                let mut held = conditions.clone();
                if held.wait_for(|c| !c.stalled).await.is_err() {
                    return;
                }
                let Ok(server) = TcpStream::connect(addr).await else { return };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = pump(client_read, server_write, conditions.clone(), |c| c.delay_up);
                let down = pump(server_read, client_write, conditions.clone(), |c| c.delay_down);
                tokio::join!(up, down);
            };
            tokio::select! {
                () = connection => {}
                _ = cuts.wait_for(|n| *n > cut_at_start) => {}
            }
        });
    }
}

/// Forwards one direction, each piece `delay` after it was read, paced to the rate, held while
/// stalled; shuts the write side down once the read side ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conditions: watch::Receiver<Conditions>,
    delay_of: fn(&Conditions) -> Duration,
) {
    let (pieces, mut arriving) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = {
        let conditions = conditions.clone();
        async move {
            let mut buffer = vec![0u8; PIECE];
            loop {
                match from.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let due = Instant::now() + delay_of(&conditions.borrow());
                        if pieces.send((due, buffer[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut conditions = conditions;
        while let Some((due, piece)) = arriving.recv().await {
            tokio::time::sleep_until(due).await;
            let mut rest = &piece[..];
            while !rest.is_empty() {
                if conditions.wait_for(|c| !c.stalled).await.is_err() {
                    return;
                }
                let rate = conditions.borrow().rate;
                let step = match rate {
                    // Steps of a tenth of a second's worth, so pacing stays smooth.
                    Some(rate) => rest.len().min((rate / 10).max(1) as usize),
                    None => rest.len(),
                };
                if to.write_all(&rest[..step]).await.is_err() {
                    return;
                }
                rest = &rest[step..];
                if let Some(rate) = rate {
                    tokio::time::sleep(Duration::from_secs_f64(step as f64 / rate.max(1) as f64)).await;
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
