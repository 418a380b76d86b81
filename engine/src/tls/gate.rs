//! Bounded before authenticated: a server-side link reads frames of at most
//! [`PRE_AUTH_FRAME_BYTES`] until a call on it has passed its credential check, and only then
//! frames up to [`MAX_FRAME_BYTES`](crate::rpc::MAX_FRAME_BYTES). A stranger, who has no credential, can therefore make a
//! server hold no more than a small, fixed amount of memory per connection (the frame, the TLS
//! buffers), and the servers cap how many such connections they keep (see
//! `controller::links` and `worker::service`) and for how long ([`PRE_AUTH_TIMEOUT`]).
//!
//! Clients keep to it by making a small call first on every new connection and waiting for its
//! answer before they send anything large (the client library's hello, the controller's first
//! call to a worker it dialled, a worker's registration or heartbeat).

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::rpc::pieces::max_frame_bytes;

/// The largest frame a server reads before a call on the link passed its credential check:
/// every first call (a hello, a registration, a heartbeat) fits many times over.
pub const PRE_AUTH_FRAME_BYTES: usize = 64 << 10;

/// How long a connection may stay without an authenticated call before the server closes it:
/// the TLS handshake and the first call take milliseconds on any real link.
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a link has carried an authenticated call; shared by the link's frame decoder and the
/// service answering its calls. Holds the connection's place among the unauthenticated ones
/// until it opens.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    open: AtomicBool,
    /// What the connection holds while unauthenticated (its place under the servers' caps),
    /// released when the gate opens.
    held: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Gate {
    /// A closed gate holding `held` until it opens.
    pub fn closed(held: impl Any + Send) -> Gate {
        Gate { inner: Arc::new(Inner { open: AtomicBool::new(false), held: Mutex::new(Some(Box::new(held))) }) }
    }

    /// An open gate: for a link whose peer was authenticated by its TLS handshake.
    pub fn opened() -> Gate {
        Gate { inner: Arc::new(Inner { open: AtomicBool::new(true), held: Mutex::new(None) }) }
    }

    /// Records that a call on the link passed its credential check: large frames are read from
    /// now on, and the connection no longer counts as unauthenticated.
    pub fn open(&self) {
        if !self.inner.open.swap(true, Ordering::AcqRel) {
            drop(self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
    }

    /// Whether a call on the link passed its credential check.
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    /// The largest frame the link may read now.
    pub fn max_frame(&self) -> usize {
        if self.is_open() { max_frame_bytes() } else { PRE_AUTH_FRAME_BYTES }
    }

    /// Resolves once `after` has passed with the gate still closed; never otherwise.
    pub async fn still_closed_after(&self, after: Duration) {
        tokio::time::sleep(after).await;
        if self.is_open() {
            std::future::pending::<()>().await;
        }
    }
}

/// The furthest ahead a call's deadline may lie; no client asks for more than minutes.
const MAX_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Refuses a call whose deadline lies more than [`MAX_DEADLINE`] ahead. tarpc (0.38) reads a
/// call's deadline as a duration from now and adds it to `Instant::now()` unchecked, which
/// panics past the clock's range: any peer could make a server's connection task panic with
/// one frame, before authentication (found by the `rpc_frames` fuzz target). A call is tarpc's
/// `ClientMessage::Request` under bincode's defaults: its variant 0, then the deadline's
/// seconds and nanoseconds, each a variable-length integer. Other frames pass unread.
pub(super) fn check_deadline(frame: &[u8]) -> io::Result<()> {
    let mut rest = frame;
    if varint(&mut rest) != Some(0) {
        return Ok(());
    }
    let (Some(secs), Some(nanos)) = (varint(&mut rest), varint(&mut rest)) else { return Ok(()) };
    // Past what a `Duration` holds, tarpc's decoding fails by itself.
    let secs = secs.saturating_add(nanos / 1_000_000_000);
    if secs > MAX_DEADLINE.as_secs() as u128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a call's deadline lies {secs} s ahead, more than the {} s allowed", MAX_DEADLINE.as_secs()),
        ));
    }
    Ok(())
}

/// Reads one of bincode's variable-length integers: a byte below 251 is the value; 251, 252,
/// 253 and 254 announce a little-endian u16, u32, u64 and u128.
fn varint(rest: &mut &[u8]) -> Option<u128> {
    let (&first, tail) = rest.split_first()?;
    let width = match first {
        0..=250 => {
            *rest = tail;
            return Some(u128::from(first));
        }
        251 => 2,
        252 => 4,
        253 => 8,
        _ => 16,
    };
    let bytes = tail.get(..width)?;
    *rest = &tail[width..];
    let mut value = [0u8; 16];
    value[..width].copy_from_slice(bytes);
    Some(u128::from_le_bytes(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::MAX_FRAME_BYTES;

    #[test]
    fn a_call_whose_deadline_lies_past_the_clock_is_refused_before_tarpc_reads_it() {
        use bincode::Options;

        // A real call as tarpc writes it, its deadline ~1000 s ahead: read where tarpc put it.
        let mut context = tarpc::context::current();
        context.deadline = std::time::Instant::now() + Duration::from_secs(1000);
        let call = tarpc::ClientMessage::Request(tarpc::Request { context, id: 7, message: "x".to_owned() });
        let frame = bincode::DefaultOptions::new().serialize(&call).unwrap();
        let mut rest = &frame[..];
        assert_eq!(varint(&mut rest), Some(0));
        assert!((990..=1000).contains(&varint(&mut rest).unwrap()), "{frame:?}");
        check_deadline(&frame).unwrap();

        // The same call with its seconds set to u64::MAX, as a peer may send it.
        let mut far = vec![0u8, 253];
        far.extend(u64::MAX.to_le_bytes());
        far.extend(&frame[4..]);
        let error = check_deadline(&far).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        // A cancellation and a cut frame pass to tarpc, which refuses what it cannot read.
        check_deadline(&[1, 0, 0]).unwrap();
        check_deadline(&[0, 253, 1]).unwrap();
    }

    #[test]
    fn opening_releases_what_the_gate_held_once() {
        let held = Arc::new(());
        let gate = Gate::closed(Arc::clone(&held));
        assert_eq!(Arc::strong_count(&held), 2);
        assert_eq!(gate.max_frame(), PRE_AUTH_FRAME_BYTES);
        gate.clone().open();
        assert_eq!(Arc::strong_count(&held), 1);
        gate.open();
        assert!(gate.is_open() && Gate::opened().is_open());
        assert_eq!(gate.max_frame(), MAX_FRAME_BYTES);
    }
}
