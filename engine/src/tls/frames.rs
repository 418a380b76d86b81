//! The tarpc transport over a [`Link`]: each message in bincode (its default options), in a
//! frame of a 4-byte big-endian length and the message. That is the wire tokio-util's
//! `LengthDelimitedCodec` and tokio-serde's `Bincode` made, without their buffers.
//!
//! Those kept one read buffer and one write buffer per connection, each grown to the largest
//! frame the connection ever carried (to twice its size while growing) and kept at that size,
//! and they copied every outgoing message from the vector bincode wrote it into to the write
//! buffer. On the controller the pieces of uploads (8 MiB), the chunks it sends (4 MiB each)
//! and the partials of a combine (up to 16 MiB) then sat in memory twice, and stayed resident
//! after the job.
//!
//! Here an outgoing message is written once, after its header, into a vector of exactly its
//! size, which is written to the link and then freed; small messages share one vector, so that
//! they still leave in one write. An incoming frame larger than [`INLINE_FRAME`] is read into a
//! vector of exactly its size, straight from the link, decoded and freed; smaller ones are read
//! through one small buffer. No connection keeps more than that small buffer between frames.
//!
//! A frame's header is checked against the link's limit before any room is made for its body:
//! a fixed one for links this process dialled, the [`Gate`]'s for links a server accepted (see
//! `gate`), where a call's deadline is checked too before tarpc reads it.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bincode::Options;
use bytes::{Buf, BufMut, BytesMut};
use futures::{Sink, Stream};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::gate::{Gate, check_deadline};
use super::link::Link;
use crate::rpc::MAX_FRAME_BYTES;
use crate::rpc::pieces::max_frame_bytes;

/// Frames whose message is at most this long are read through the connection's small buffer;
/// larger ones into a vector of their own. As large as the largest frame read before
/// authentication, so that an unauthenticated connection never has one.
pub const INLINE_FRAME: usize = super::gate::PRE_AUTH_FRAME_BYTES;

/// The room the small buffer is given when it runs short: a frame of [`INLINE_FRAME`] with its
/// header, so one read can finish any inline frame.
const READ_ROOM: usize = INLINE_FRAME + 4;

/// Messages up to this size (header included) are written into one shared vector, up to this
/// size in all, so that a burst of small ones leaves in one write.
const COALESCE: usize = 64 << 10;

/// The length of a frame's header.
const HEADER: usize = 4;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// The largest frame a link may read: fixed, or following a server's gate.
#[derive(Clone)]
pub enum Limit {
    /// A link this process dialled: frames up to this many bytes.
    Fixed(usize),
    /// A link a server accepted: its gate's limit, and calls' deadlines checked.
    Gated(Gate),
}

impl Limit {
    /// The largest frame the link may read now.
    fn max_read(&self) -> usize {
        match self {
            Limit::Fixed(max) => *max,
            Limit::Gated(gate) => gate.max_frame(),
        }
    }

    /// The largest frame the link may write: a server answers up to the protocol's limit.
    fn max_written(&self) -> usize {
        match self {
            Limit::Fixed(max) => *max,
            Limit::Gated(_) => MAX_FRAME_BYTES,
        }
    }
}

/// The error for a frame over the limit. Its words are the ones tokio-util's codec used, which
/// clients look for to tell a peer that is not Kiln's (`client::error`).
fn too_big(kind: io::ErrorKind, len: usize, max: usize) -> io::Error {
    io::Error::new(kind, format!("frame size too big: {len} bytes, at most {max} allowed"))
}

/// A frame read whole: from the small buffer or in a vector of its own.
pub enum Frame {
    Inline(BytesMut),
    Own(Vec<u8>),
}

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Frame::Inline(bytes) => bytes,
            Frame::Own(bytes) => bytes,
        }
    }
}

/// Where the next bytes read from the link go.
pub enum Room<'a> {
    /// The small buffer, with room made for at least one inline frame.
    Inline(&'a mut BytesMut),
    /// The body of a large frame: the vector and how many bytes it still lacks.
    Own(&'a mut Vec<u8>, usize),
}

/// The reading half of the framing, apart from the link (the fuzz target drives it too).
pub struct FrameReader {
    limit: Limit,
    inline: BytesMut,
    /// A large frame being read: its body so far and its full length.
    own: Option<(Vec<u8>, usize)>,
}

impl FrameReader {
    pub fn new(limit: Limit) -> FrameReader {
        FrameReader { limit, inline: BytesMut::new(), own: None }
    }

    /// The next whole frame from what was read, if there is one; an error for a header over
    /// the limit or (on a server's link) a call whose deadline tarpc cannot hold.
    pub fn frame(&mut self) -> io::Result<Option<Frame>> {
        if let Some((body, len)) = &self.own {
            if body.len() < *len {
                return Ok(None);
            }
            let (body, _) = self.own.take().expect("a large frame is being read");
            return self.checked(Frame::Own(body)).map(Some);
        }
        if self.inline.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.inline[..HEADER].try_into().expect("four bytes")) as usize;
        let max = self.limit.max_read();
        if len > max {
            return Err(too_big(io::ErrorKind::InvalidData, len, max));
        }
        if self.inline.len() >= HEADER + len {
            self.inline.advance(HEADER);
            let frame = self.inline.split_to(len);
            return self.checked(Frame::Inline(frame)).map(Some);
        }
        if len > INLINE_FRAME {
            // Everything in the small buffer past the header belongs to this frame.
            let mut body = Vec::with_capacity(len);
            body.extend_from_slice(&self.inline[HEADER..]);
            self.inline.clear();
            self.own = Some((body, len));
            return self.frame();
        }
        Ok(None)
    }

    fn checked(&self, frame: Frame) -> io::Result<Frame> {
        if let Limit::Gated(_) = self.limit {
            check_deadline(&frame)?;
        }
        Ok(frame)
    }

    /// Where the next bytes read go. Call [`FrameReader::frame`] first: the room is for the
    /// frame it did not find whole.
    pub fn room(&mut self) -> Room<'_> {
        match &mut self.own {
            Some((body, len)) => {
                let lacking = *len - body.len();
                Room::Own(body, lacking)
            }
            None => {
                if self.inline.capacity() - self.inline.len() < READ_ROOM / 4 {
                    self.inline.reserve(READ_ROOM);
                }
                Room::Inline(&mut self.inline)
            }
        }
    }

    /// Takes what it has room for of `bytes`, as a read from the link would; answers how many.
    /// Call [`FrameReader::frame`] first, as for [`FrameReader::room`].
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        match self.room() {
            Room::Inline(buffer) => {
                let n = bytes.len().min(buffer.capacity() - buffer.len());
                buffer.extend_from_slice(&bytes[..n]);
                n
            }
            Room::Own(body, lacking) => {
                let n = bytes.len().min(lacking);
                body.extend_from_slice(&bytes[..n]);
                n
            }
        }
    }

    /// Whether a frame was begun and not finished (the link closing now cuts it).
    pub fn is_inside_a_frame(&self) -> bool {
        self.own.is_some() || !self.inline.is_empty()
    }

    /// What the reader holds now, in bytes of capacity: for tests of its bounds.
    pub fn held(&self) -> usize {
        self.inline.capacity() + self.own.as_ref().map_or(0, |(body, _)| body.capacity())
    }
}

/// Frames a link this process dialled for tarpc: frames up to this process's limit
/// ([`max_frame_bytes`]) both ways.
pub fn dialled<In, Out>(link: Link) -> Frames<In, Out> {
    Frames::new(link, Limit::Fixed(max_frame_bytes()))
}

/// Frames a link a server accepted for tarpc: small frames only until `gate` opens.
pub fn accepted<In, Out>(link: Link, gate: Gate) -> Frames<In, Out> {
    Frames::new(link, Limit::Gated(gate))
}

/// A tarpc transport over a link: reads `In` messages, writes `Out` ones (see the module's
/// documentation).
pub struct Frames<In, Out> {
    link: Link,
    reader: FrameReader,
    /// Encoded frames waiting to be written, and how much of the first one is.
    queue: VecDeque<Vec<u8>>,
    written: usize,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Frames<In, Out> {
    /// Frames `link`, reading frames of at most what `limit` allows.
    pub fn new(link: Link, limit: Limit) -> Frames<In, Out> {
        Frames { link, reader: FrameReader::new(limit), queue: VecDeque::new(), written: 0, _messages: PhantomData }
    }

    fn queued(&self) -> usize {
        self.queue.iter().map(Vec::len).sum::<usize>() - self.written
    }
}

impl<In: for<'de> serde::Deserialize<'de>, Out> Stream for Frames<In, Out> {
    type Item = io::Result<In>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<In>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.reader.frame()? {
                let message = options().deserialize(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                return Poll::Ready(Some(message));
            }
            let link = Pin::new(&mut this.link);
            let read = match this.reader.room() {
                Room::Inline(buffer) => ready!(poll_read_buf(link, cx, buffer)),
                Room::Own(body, lacking) => ready!(poll_read_buf(link, cx, &mut body.limit(lacking))),
            }?;
            if read == 0 {
                if this.reader.is_inside_a_frame() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed inside a frame",
                    ))));
                }
                return Poll::Ready(None);
            }
        }
    }
}

impl<In, Out: serde::Serialize> Sink<Out> for Frames<In, Out> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A message waits until what is queued is (mostly) written: at most one large frame
        // is held at a time.
        if self.queued() >= COALESCE {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Out) -> io::Result<()> {
        let this = self.get_mut();
        let len = options().serialized_size(&message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let max = this.reader.limit.max_written();
        if len > max {
            return Err(too_big(io::ErrorKind::InvalidInput, len, max));
        }
        let framed = HEADER + len;
        // A small message joins the last vector of small ones where it fits.
        let joins = framed <= COALESCE && this.queue.back().is_some_and(|last| last.len() + framed <= COALESCE);
        if !joins {
            this.queue.push_back(Vec::with_capacity(if framed <= COALESCE { COALESCE } else { framed }));
        }
        let out = this.queue.back_mut().expect("a vector to write into");
        out.put_u32(len as u32);
        options().serialize_into(&mut *out, &message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some(front) = this.queue.front() {
            let n = ready!(Pin::new(&mut this.link).poll_write(cx, &front[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
            if this.written == front.len() {
                this.queue.pop_front();
                this.written = 0;
            }
        }
        Pin::new(&mut this.link).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().link).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Messages of every size class: empty, small, around the inline limit, large.
    fn messages() -> Vec<Vec<u8>> {
        let sizes = [0, 1, 100, INLINE_FRAME - 10, INLINE_FRAME, INLINE_FRAME + 1, 3 << 20, 5, 9 << 20, 7];
        sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as u8).collect()).collect()
    }

    /// Two ends of a plain TCP connection on loopback, framed.
    async fn pair() -> (Frames<Vec<u8>, Vec<u8>>, Frames<Vec<u8>, Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (dialled, accepted) =
            tokio::join!(super::super::link::connect(&addr, None, std::time::Duration::from_secs(5)), async {
                super::super::link::accept(listener.accept().await.unwrap().0, None).await
            });
        (
            Frames::new(dialled.unwrap(), Limit::Fixed(MAX_FRAME_BYTES)),
            Frames::new(accepted.unwrap(), Limit::Fixed(MAX_FRAME_BYTES)),
        )
    }

    /// Sends every message from `from` while `to` reads them; answers what `to` read.
    async fn cross(
        from: &mut Frames<Vec<u8>, Vec<u8>>,
        to: &mut Frames<Vec<u8>, Vec<u8>>,
        sent: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        let send = async {
            for message in sent {
                from.feed(message.clone()).await.unwrap();
            }
            from.flush().await.unwrap();
        };
        let receive = async {
            let mut got = Vec::new();
            for _ in 0..sent.len() {
                got.push(to.next().await.unwrap().unwrap());
            }
            got
        };
        tokio::join!(send, receive).1
    }

    #[tokio::test]
    async fn messages_of_every_size_cross_in_order_both_ways_and_nothing_large_stays_held() {
        let (mut a, mut b) = pair().await;
        let sent = messages();
        assert!(cross(&mut a, &mut b, &sent).await == sent, "the messages arrived changed or out of order");
        assert!(cross(&mut b, &mut a, &sent).await == sent, "the messages arrived changed or out of order");
        for end in [&a, &b] {
            assert!(end.queue.is_empty(), "a written frame is still held");
            assert!(end.reader.held() <= 2 * READ_ROOM, "{} bytes held after the frames", end.reader.held());
        }
        drop(a);
        assert!(b.next().await.is_none(), "a closed connection ends the stream");
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_by_the_sender_and_a_header_over_it_by_the_reader() {
        let (a, mut b) = pair().await;
        let mut a: Frames<Vec<u8>, Vec<u8>> = Frames { reader: FrameReader::new(Limit::Fixed(1 << 20)), ..a };
        let error = a.send(vec![0; 2 << 20]).await.unwrap_err();
        assert!(error.to_string().contains("frame size too big"), "{error}");
        // The reader refuses it at its header, before making room for it.
        b.reader.limit = Limit::Fixed(1 << 20);
        let mut raw = Frames::<Vec<u8>, Vec<u8>>::new(a.link, Limit::Fixed(MAX_FRAME_BYTES));
        raw.send(vec![0; 2 << 20]).await.unwrap();
        let error = b.next().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("frame size too big"), "{error}");
        assert!(b.reader.held() < 1 << 20, "{} bytes held", b.reader.held());
    }

    /// A reader of a server's link under `gate`, fed `wire`; its first frame, if whole.
    fn read(gate: &Gate, wire: &[u8]) -> (FrameReader, io::Result<Option<Vec<u8>>>) {
        let mut reader = FrameReader::new(Limit::Gated(gate.clone()));
        let mut rest = wire;
        loop {
            match reader.frame() {
                Ok(None) if !rest.is_empty() => rest = &rest[reader.feed(rest)..],
                other => return (reader, other.map(|frame| frame.map(|frame| frame.to_vec()))),
            }
        }
    }

    fn header(length: u32) -> Vec<u8> {
        length.to_be_bytes().to_vec()
    }

    #[test]
    fn a_closed_gate_refuses_a_large_frame_at_its_header_and_an_open_one_takes_it() {
        let gate = Gate::closed(());
        let (reader, refused) = read(&gate, &header(511 << 20));
        let error = refused.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(reader.held() < 1 << 20, "room was reserved for the frame: {}", reader.held());

        let small = [header(3), b"abc".to_vec()].concat();
        assert_eq!(read(&gate, &small).1.unwrap().as_deref(), Some(&b"abc"[..]));

        gate.open();
        let (_, waiting) = read(&gate, &header(8 << 20));
        assert_eq!(waiting.unwrap(), None, "waits for the body");
    }

    #[test]
    fn a_servers_link_refuses_a_call_whose_deadline_lies_past_the_clock() {
        use bincode::Options;
        let mut context = tarpc::context::current();
        context.deadline = std::time::Instant::now() + std::time::Duration::from_secs(1000);
        let call = tarpc::ClientMessage::Request(tarpc::Request { context, id: 7, message: "x".to_owned() });
        let frame = bincode::DefaultOptions::new().serialize(&call).unwrap();
        let wire = [header(frame.len() as u32), frame.clone()].concat();
        assert_eq!(read(&Gate::closed(()), &wire).1.unwrap(), Some(frame.clone()), "a call a day ahead passes");
        // Its seconds set to u64::MAX, as a peer may send it.
        let far = [vec![0u8, 253], u64::MAX.to_le_bytes().to_vec(), frame[4..].to_vec()].concat();
        let wire = [header(far.len() as u32), far].concat();
        let error = read(&Gate::closed(()), &wire).1.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[test]
    fn the_small_buffer_stays_small_whatever_the_frames_and_reads() {
        // Frames of every inline size, read in pieces of every size: the small buffer never
        // grows past a few inline frames.
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..400usize {
            let len = (i * 7919) % (INLINE_FRAME + 1);
            wire.extend_from_slice(&(len as u32).to_be_bytes());
            wire.extend((0..len).map(|j| (i + j) as u8));
            expected.push(len);
        }
        for piece in [1, 7, 4096, 16 << 10, 100 << 10] {
            let mut reader = FrameReader::new(Limit::Fixed(MAX_FRAME_BYTES));
            let mut got = Vec::new();
            for read in wire.chunks(piece) {
                let mut rest = read;
                loop {
                    match reader.frame().unwrap() {
                        Some(frame) => got.push(frame.len()),
                        None if rest.is_empty() => break,
                        None => rest = &rest[reader.feed(rest)..],
                    }
                    assert!(reader.held() <= 4 * READ_ROOM, "{} bytes held, reads of {piece}", reader.held());
                }
            }
            assert_eq!(got, expected, "reads of {piece}");
            assert!(!reader.is_inside_a_frame());
        }
    }
}
