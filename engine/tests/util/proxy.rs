//! A recording TCP proxy for tests: listens on a loopback port from 127.0.0.1:0, forwards
//! every connection to its target and keeps every byte that crossed it, each direction of each
//! connection apart. Included with `#[path = "util/proxy.rs"] mod proxy;`. Its threads end
//! with their connections; the listener's thread ends when the proxy is dropped.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bytes of one direction of one connection.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    recordings: Arc<Mutex<Vec<Recording>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards connections on a fresh loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let recordings: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (all, stopped) = (Arc::clone(&recordings), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else { continue };
                let (up, down) = (Recording::default(), Recording::default());
                all.lock().unwrap().extend([Arc::clone(&up), Arc::clone(&down)]);
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), up);
                pump(server, client, down);
            }
        });
        Proxy { addr, recordings, stop }
    }

    /// Every direction of every connection so far (client to server, then server to client).
    pub fn streams(&self) -> Vec<Vec<u8>> {
        self.recordings.lock().unwrap().iter().map(|r| r.lock().unwrap().clone()).collect()
    }

    /// How many bytes crossed the proxy.
    pub fn total_bytes(&self) -> usize {
        self.streams().iter().map(Vec::len).sum()
    }

    /// Whether `needle` crossed the proxy in any direction.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.streams().iter().any(|stream| stream.windows(needle.len()).any(|window| window == needle))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, recording, until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, recording: Recording) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recording.lock().unwrap().extend_from_slice(&buffer[..n]);
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}
