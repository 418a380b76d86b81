//! Bounded before authenticated: a server-side link reads frames of at most
//! [`PRE_AUTH_FRAME_BYTES`] until a call on it has passed its credential check, and only then
//! frames up to [`MAX_FRAME_BYTES`]. A stranger, who has no credential, can therefore make a
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

use bytes::{Bytes, BytesMut};
use tarpc::tokio_serde::formats::Bincode;
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use super::link::Link;
use crate::rpc::MAX_FRAME_BYTES;

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
        if self.is_open() { MAX_FRAME_BYTES } else { PRE_AUTH_FRAME_BYTES }
    }

    /// Resolves once `after` has passed with the gate still closed; never otherwise.
    pub async fn still_closed_after(&self, after: Duration) {
        tokio::time::sleep(after).await;
        if self.is_open() {
            std::future::pending::<()>().await;
        }
    }
}

/// Length-delimited frames whose largest incoming size follows a [`Gate`]; outgoing frames may
/// be as large as [`MAX_FRAME_BYTES`].
pub struct GatedCodec {
    inner: LengthDelimitedCodec,
    gate: Gate,
}

impl GatedCodec {
    /// Frames ruled by `gate`.
    pub fn new(gate: Gate) -> GatedCodec {
        let inner = LengthDelimitedCodec::builder().max_frame_length(PRE_AUTH_FRAME_BYTES).new_codec();
        GatedCodec { inner, gate }
    }
}

impl Decoder for GatedCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, io::Error> {
        // Checked when a frame's header is read, before any room is reserved for its body.
        self.inner.set_max_frame_length(self.gate.max_frame());
        self.inner.decode(src)
    }
}

impl Encoder<Bytes> for GatedCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), io::Error> {
        self.inner.set_max_frame_length(MAX_FRAME_BYTES);
        self.inner.encode(frame, dst)
    }
}

/// A server's tarpc transport over a link whose frame limit follows a [`Gate`].
pub type GatedTransport<In, Out> = tarpc::tokio_serde::Framed<Framed<Link, GatedCodec>, In, Out, Bincode<In, Out>>;

/// Frames a server's link for tarpc, reading small frames until `gate` opens.
pub fn transport<In, Out>(link: Link, gate: Gate) -> GatedTransport<In, Out>
where
    In: for<'de> serde::Deserialize<'de>,
    Out: serde::Serialize,
{
    tarpc::tokio_serde::Framed::new(Framed::new(link, GatedCodec::new(gate)), Bincode::default())
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    fn header(length: u32) -> BytesMut {
        let mut buffer = BytesMut::new();
        buffer.put_u32(length);
        buffer
    }

    #[test]
    fn a_closed_gate_refuses_a_large_frame_at_its_header_and_an_open_one_takes_it() {
        let gate = Gate::closed(());
        let mut codec = GatedCodec::new(gate.clone());
        let mut announced = header(511 << 20);
        let error = codec.decode(&mut announced).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(announced.capacity() < 1 << 20, "room was reserved for the frame: {}", announced.capacity());

        let mut small = header(3);
        small.put_slice(b"abc");
        assert_eq!(codec.decode(&mut small).unwrap().as_deref(), Some(&b"abc"[..]));

        gate.open();
        let mut codec = GatedCodec::new(gate);
        let mut announced = header(8 << 20);
        assert_eq!(codec.decode(&mut announced).unwrap(), None, "waits for the body");
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
