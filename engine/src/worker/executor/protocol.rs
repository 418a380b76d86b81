//! The framed pipe protocol between the executor supervisor and a `kiln exec` process.
//!
//! Every message is a frame: an 8-byte little-endian length, then a 1-byte tag, then the body.
//! Bodies are written field by field so that a chunk's text or a partial's bytes go onto the
//! pipe without being copied into an intermediate buffer first.
//!
//! The supervisor sends one `Init`, then any number of `Run`, `RunBatch`, `Combine` and
//! `Aggregate`, each with a call number; the executor answers `Ready` (or `StartFailed`, then
//! exits), then one `Done` or `Failed` per call, in any order, and for a `RunBatch` one per
//! chunk, all with the batch's call number and in the batch's order. Each call's answers are
//! preceded by a `Started` naming the thread (slot) that runs it, whose stdout and stderr are
//! that slot's own capture pipes (see `capture`). An `Aggregate`'s output
//! comes as `Piece`s of at most [`OUTPUT_PIECE_BYTES`] before its `Done` (which holds the last
//! piece, or nothing), so that the supervisor can write it out as it comes and never holds it
//! whole. The executor reads an `Aggregate`'s partials one at a time
//! ([`Request::read_incoming`]), each in its own allocation, so that the plugin frees each one
//! once decoded instead of the whole frame staying in memory beside the decoded partials.

use std::io::{self, Read, Write};

use bytes::Bytes;

use super::ChunkText;
use super::staged::StagedPartials;

/// The largest frame either side accepts. Frames are partials and chunks, a few MiB each; the
/// bound only keeps a corrupted length from asking for an absurd allocation.
pub const MAX_FRAME_BYTES: u64 = 8 << 30;

const TAG_INIT: u8 = 1;
const TAG_RUN: u8 = 2;
const TAG_COMBINE: u8 = 3;
const TAG_AGGREGATE: u8 = 4;
const TAG_RUN_BATCH: u8 = 5;
const TAG_READY: u8 = 10;
const TAG_START_FAILED: u8 = 11;
const TAG_DONE: u8 = 12;
const TAG_FAILED: u8 = 13;
const TAG_REFUSED: u8 = 14;
const TAG_PIECE: u8 = 15;
const TAG_STARTED: u8 = 16;

/// How much of a frame is read before more room is made: each step at most doubles what
/// arrived, so a frame cut short costs no more than twice what was sent (or this).
const FIRST_READ_BYTES: usize = 1 << 20;

/// The largest piece of an aggregate's output in one `Piece` frame: the supervisor holds one
/// at a time.
pub const OUTPUT_PIECE_BYTES: usize = 1 << 20;

/// A message from the supervisor to the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Load `library` and create the plugin with `params`. Sent once, first.
    Init { library: String, params: String },
    /// Run one chunk.
    Run { call: u64, chunk: ChunkText },
    /// Run chunks one after another: one answer per chunk, in order, each sent as soon as its
    /// chunk is done.
    RunBatch { call: u64, chunks: Vec<ChunkText> },
    /// Merge the partials of consecutive chunks into one.
    Combine { call: u64, partials: Vec<Bytes> },
    /// Fold the partials, in input order, into the output JSON; `input_files` is how many of
    /// the input's files have chunks (a streaming aggregate's `Partials::input_files`).
    Aggregate { call: u64, input_files: u64, partials: Vec<Bytes> },
    /// An `Aggregate` whose partials are staged in a file: written as the same frame, streamed
    /// from the file (the executor reads it as an `Aggregate`).
    AggregateStaged { call: u64, input_files: u64, partials: StagedPartials },
}

/// A message from the executor to the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The plugin is loaded and created; whether it combines and needs line numbers.
    Ready { api_version: String, combines: bool, line_numbers: bool },
    /// The plugin could not be loaded or created; the executor exits after sending this.
    StartFailed { kind: StartFailure, message: String },
    /// A call succeeded with these bytes (a partial, or the output JSON's last piece).
    Done { call: u64, bytes: Bytes },
    /// A piece of a call's answer, followed by more pieces and then its `Done`.
    Piece { call: u64, bytes: Bytes },
    /// A call failed with the plugin's message: a caught panic (or, from plugins built against
    /// API 0.1.0, which cannot tell, any error).
    Failed { call: u64, message: String },
    /// The plugin returned `Err` with this message: its own decision, not to be retried.
    Refused { call: u64, message: String },
    /// A call starts on the executor's thread `slot`, whose stdout and stderr are that slot's
    /// capture pipes: what comes on them until each answer is that answer's output.
    Started { call: u64, slot: u64 },
}

/// Why an executor could not start its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// The library could not be loaded, or is not a Kiln plugin.
    Load = 1,
    /// The plugin was built against an incompatible API version.
    Incompatible = 2,
    /// The plugin's `new` refused the parameters.
    Init = 3,
    /// The executor could not enter its sandbox (before loading anything).
    Sandbox = 4,
}

impl StartFailure {
    fn from_u8(value: u8) -> io::Result<Self> {
        match value {
            1 => Ok(StartFailure::Load),
            2 => Ok(StartFailure::Incompatible),
            3 => Ok(StartFailure::Init),
            4 => Ok(StartFailure::Sandbox),
            other => Err(invalid(format!("unknown start failure kind {other}"))),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// One field of a frame body: a number, or bytes preceded by their length.
pub(super) enum Part<'a> {
    U64(u64),
    Bytes(&'a [u8]),
}

/// The length a frame of these parts announces (its tag and body).
pub(super) fn frame_len(parts: &[Part<'_>]) -> u64 {
    let body_len: u64 = parts
        .iter()
        .map(|part| match part {
            Part::U64(_) => 8,
            Part::Bytes(bytes) => 8 + bytes.len() as u64,
        })
        .sum();
    body_len + 1
}

/// Writes one frame, the parts' bytes straight from where they are.
fn write_frame<W: Write>(out: &mut W, tag: u8, parts: &[Part<'_>]) -> io::Result<()> {
    out.write_all(&frame_len(parts).to_le_bytes())?;
    out.write_all(&[tag])?;
    for part in parts {
        match part {
            Part::U64(value) => out.write_all(&value.to_le_bytes())?,
            Part::Bytes(bytes) => {
                out.write_all(&(bytes.len() as u64).to_le_bytes())?;
                out.write_all(bytes)?;
            }
        }
    }
    Ok(())
}

/// A chunk's fields: its first line, its file's name and its text.
fn chunk_parts(chunk: &ChunkText) -> [Part<'_>; 3] {
    [Part::U64(chunk.first_line), Part::Bytes(chunk.file.as_bytes()), Part::Bytes(&chunk.text)]
}

fn list_parts(call: u64, partials: &[Bytes]) -> Vec<Part<'_>> {
    let mut parts = vec![Part::U64(call), Part::U64(partials.len() as u64)];
    parts.extend(partials.iter().map(|p| Part::Bytes(p)));
    parts
}

impl Request {
    /// The call's number (0 for `Init`, which is no call).
    pub fn call(&self) -> u64 {
        match self {
            Request::Init { .. } => 0,
            Request::Run { call, .. }
            | Request::RunBatch { call, .. }
            | Request::Combine { call, .. }
            | Request::Aggregate { call, .. }
            | Request::AggregateStaged { call, .. } => *call,
        }
    }

    /// Writes the request as one frame.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        match self {
            Request::AggregateStaged { call, input_files, partials } => {
                out.write_all(&staged_header(*call, *input_files, partials))?;
                io::copy(&mut partials.reader(), out).map(drop)
            }
            request => {
                let (tag, parts) = request.parts();
                write_frame(out, tag, &parts)
            }
        }
    }

    /// The frame's tag and fields, the bytes borrowed from the request. Not for an
    /// `AggregateStaged`, whose partials are in a file (see [`staged_header`]).
    pub(super) fn parts(&self) -> (u8, Vec<Part<'_>>) {
        match self {
            Request::Init { library, params } => {
                (TAG_INIT, vec![Part::Bytes(library.as_bytes()), Part::Bytes(params.as_bytes())])
            }
            Request::Run { call, chunk } => {
                let mut parts = vec![Part::U64(*call)];
                parts.extend(chunk_parts(chunk));
                (TAG_RUN, parts)
            }
            Request::RunBatch { call, chunks } => {
                let mut parts = vec![Part::U64(*call), Part::U64(chunks.len() as u64)];
                parts.extend(chunks.iter().flat_map(chunk_parts));
                (TAG_RUN_BATCH, parts)
            }
            Request::Combine { call, partials } => (TAG_COMBINE, list_parts(*call, partials)),
            Request::Aggregate { call, input_files, partials } => {
                let mut parts = vec![Part::U64(*call), Part::U64(*input_files), Part::U64(partials.len() as u64)];
                parts.extend(partials.iter().map(|p| Part::Bytes(p)));
                (TAG_AGGREGATE, parts)
            }
            Request::AggregateStaged { call, input_files, .. } => {
                (TAG_AGGREGATE, vec![Part::U64(*call), Part::U64(*input_files), Part::U64(0)])
            }
        }
    }

    /// Reads one request; `None` at a clean end of input.
    pub fn read_from<R: Read>(input: &mut R) -> io::Result<Option<Self>> {
        let Some((tag, mut body)) = read_frame(input)? else {
            return Ok(None);
        };
        Request::from_body(tag, &mut body).map(Some)
    }

    fn from_body(tag: u8, body: &mut Body) -> io::Result<Self> {
        let request = match tag {
            TAG_INIT => Request::Init { library: body.string()?, params: body.string()? },
            TAG_RUN => Request::Run { call: body.u64()?, chunk: body.chunk()? },
            TAG_RUN_BATCH => Request::RunBatch { call: body.u64()?, chunks: body.chunks()? },
            TAG_COMBINE => Request::Combine { call: body.u64()?, partials: body.list()? },
            TAG_AGGREGATE => Request::Aggregate { call: body.u64()?, input_files: body.u64()?, partials: body.list()? },
            other => return Err(invalid(format!("unknown request tag {other}"))),
        };
        std::mem::take(body).finish()?;
        Ok(request)
    }
}

impl Response {
    /// Writes the response as one frame.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        match self {
            Response::Ready { api_version, combines, line_numbers } => {
                let flags = u64::from(*combines) | u64::from(*line_numbers) << 1;
                write_frame(out, TAG_READY, &[Part::U64(flags), Part::Bytes(api_version.as_bytes())])
            }
            Response::StartFailed { kind, message } => {
                write_frame(out, TAG_START_FAILED, &[Part::U64(*kind as u64), Part::Bytes(message.as_bytes())])
            }
            Response::Done { call, bytes } => write_frame(out, TAG_DONE, &[Part::U64(*call), Part::Bytes(bytes)]),
            Response::Piece { call, bytes } => write_frame(out, TAG_PIECE, &[Part::U64(*call), Part::Bytes(bytes)]),
            Response::Failed { call, message } => {
                write_frame(out, TAG_FAILED, &[Part::U64(*call), Part::Bytes(message.as_bytes())])
            }
            Response::Refused { call, message } => {
                write_frame(out, TAG_REFUSED, &[Part::U64(*call), Part::Bytes(message.as_bytes())])
            }
            Response::Started { call, slot } => write_frame(out, TAG_STARTED, &[Part::U64(*call), Part::U64(*slot)]),
        }
    }

    /// Reads one response; `None` at a clean end of input.
    pub fn read_from<R: Read>(input: &mut R) -> io::Result<Option<Self>> {
        let Some((tag, mut body)) = read_frame(input)? else {
            return Ok(None);
        };
        let response = match tag {
            TAG_READY => {
                let flags = body.u64()?;
                Response::Ready { combines: flags & 1 != 0, line_numbers: flags & 2 != 0, api_version: body.string()? }
            }
            TAG_START_FAILED => {
                let kind = StartFailure::from_u8(body.u64()? as u8)?;
                Response::StartFailed { kind, message: body.string()? }
            }
            TAG_DONE => Response::Done { call: body.u64()?, bytes: body.bytes()? },
            TAG_PIECE => Response::Piece { call: body.u64()?, bytes: body.bytes()? },
            TAG_FAILED => Response::Failed { call: body.u64()?, message: body.string()? },
            TAG_REFUSED => Response::Refused { call: body.u64()?, message: body.string()? },
            TAG_STARTED => Response::Started { call: body.u64()?, slot: body.u64()? },
            other => return Err(invalid(format!("unknown response tag {other}"))),
        };
        body.finish()?;
        Ok(Some(response))
    }
}

/// The start of the frame of an `Aggregate` of staged partials: everything before the
/// partials themselves, which follow as they are in their file.
pub fn staged_header(call: u64, input_files: u64, partials: &StagedPartials) -> Vec<u8> {
    let body_len = AGGREGATE_HEAD_BYTES as u64 + partials.len();
    let mut header = Vec::with_capacity(8 + 1 + AGGREGATE_HEAD_BYTES);
    header.extend_from_slice(&(body_len + 1).to_le_bytes());
    header.push(TAG_AGGREGATE);
    for field in [call, input_files, partials.count()] {
        header.extend_from_slice(&field.to_le_bytes());
    }
    header
}

/// The fields of an `Aggregate` before its partials: its call, the input's files, the count.
const AGGREGATE_HEAD_BYTES: usize = 24;

/// Reads a frame's length, tag and body; `None` if the input ends before a frame starts.
fn read_frame<R: Read>(input: &mut R) -> io::Result<Option<(u8, Body)>> {
    let Some((tag, len)) = read_head(input)? else {
        return Ok(None);
    };
    Ok(Some((tag, Body { bytes: Bytes::from(read_bytes(input, len)?) })))
}

/// Reads a frame's length and tag; answers the tag and the body's length. `None` if the input
/// ends before a frame starts.
fn read_head<R: Read>(input: &mut R) -> io::Result<Option<(u8, usize)>> {
    let mut len = [0u8; 8];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u64::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(invalid(format!("frame length {len} out of range")));
    }
    let len = usize::try_from(len).map_err(|_| invalid(format!("frame length {len} out of range")))?;
    let mut tag = [0u8; 1];
    input.read_exact(&mut tag)?;
    Ok(Some((tag[0], len - 1)))
}

/// Reads `len` bytes. The room grows with the bytes that arrive, not with what a header
/// announced: an executor runs plugin code, which may write anything on its pipe.
fn read_bytes<R: Read>(input: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while bytes.len() < len {
        let start = bytes.len();
        let step = (len - start).min(start.max(FIRST_READ_BYTES));
        bytes.reserve_exact(step);
        bytes.resize(start + step, 0);
        input.read_exact(&mut bytes[start..])?;
    }
    Ok(bytes)
}

/// A request as the executor reads it: whole, or the head of an `Aggregate`, whose partials
/// are then read one at a time ([`PartialsOnPipe`]), so that the executor never holds them all
/// encoded while the plugin decodes them.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Whole(Request),
    Aggregate { call: u64, input_files: u64, partials: PartialsOnPipe },
}

/// The partials of an `Aggregate` still on the pipe: how many, and how many bytes of the frame
/// they take.
#[derive(Debug, PartialEq)]
pub struct PartialsOnPipe {
    left: u64,
    bytes_left: usize,
}

impl PartialsOnPipe {
    /// How many partials are still to be read.
    pub fn count(&self) -> u64 {
        self.left
    }

    /// Reads the next partial, in its own allocation; `None` once all were read.
    pub fn next<R: Read>(&mut self, input: &mut R) -> io::Result<Option<Vec<u8>>> {
        if self.left == 0 {
            return if self.bytes_left == 0 {
                Ok(None)
            } else {
                Err(invalid(format!("{} unexpected bytes at the end of a frame", self.bytes_left)))
            };
        }
        let mut len = [0u8; 8];
        if self.bytes_left < 8 {
            return Err(invalid("frame body ends early".to_owned()));
        }
        input.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        self.bytes_left -= 8;
        if len > self.bytes_left as u64 {
            return Err(invalid("frame field longer than its frame".to_owned()));
        }
        let partial = read_bytes(input, len as usize)?;
        self.bytes_left -= partial.len();
        self.left -= 1;
        Ok(Some(partial))
    }
}

impl Request {
    /// Reads one request as the executor does: an `Aggregate`'s partials are left on `input`
    /// for [`PartialsOnPipe::next`]. `None` at a clean end of input.
    pub fn read_incoming<R: Read>(input: &mut R) -> io::Result<Option<Incoming>> {
        let Some((tag, len)) = read_head(input)? else {
            return Ok(None);
        };
        if tag != TAG_AGGREGATE {
            let mut body = Body { bytes: Bytes::from(read_bytes(input, len)?) };
            return Request::from_body(tag, &mut body).map(|request| Some(Incoming::Whole(request)));
        }
        if len < AGGREGATE_HEAD_BYTES {
            return Err(invalid("frame body ends early".to_owned()));
        }
        let mut head = [0u8; AGGREGATE_HEAD_BYTES];
        input.read_exact(&mut head)?;
        let [call, input_files, count] =
            [0, 8, 16].map(|at| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes")));
        let bytes_left = len - AGGREGATE_HEAD_BYTES;
        // Each partial takes at least its 8-byte length.
        if count > bytes_left as u64 / 8 {
            return Err(invalid("frame list longer than its frame".to_owned()));
        }
        Ok(Some(Incoming::Aggregate { call, input_files, partials: PartialsOnPipe { left: count, bytes_left } }))
    }
}

/// Writes a piece of a call's answer from where it is (`Response::Piece` without a copy).
pub fn write_piece<W: Write>(out: &mut W, call: u64, bytes: &[u8]) -> io::Result<()> {
    write_frame(out, TAG_PIECE, &[Part::U64(call), Part::Bytes(bytes)])
}

/// A frame body being decoded; byte fields are slices of the frame, not copies.
#[derive(Default)]
struct Body {
    bytes: Bytes,
}

impl Body {
    fn u64(&mut self) -> io::Result<u64> {
        if self.bytes.len() < 8 {
            return Err(invalid("frame body ends early".to_owned()));
        }
        let head = self.bytes.split_to(8);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&head);
        Ok(u64::from_le_bytes(raw))
    }

    fn bytes(&mut self) -> io::Result<Bytes> {
        let len = self.u64()?;
        if len > self.bytes.len() as u64 {
            return Err(invalid("frame field longer than its frame".to_owned()));
        }
        Ok(self.bytes.split_to(len as usize))
    }

    fn string(&mut self) -> io::Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid("frame text is not UTF-8".to_owned()))
    }

    fn list(&mut self) -> io::Result<Vec<Bytes>> {
        let count = self.u64()?;
        // Each entry takes at least its 8-byte length; bound the allocation by what is there.
        if count > self.bytes.len() as u64 / 8 {
            return Err(invalid("frame list longer than its frame".to_owned()));
        }
        (0..count).map(|_| self.bytes()).collect()
    }

    fn chunk(&mut self) -> io::Result<ChunkText> {
        Ok(ChunkText { first_line: self.u64()?, file: self.string()?.into(), text: self.bytes()? })
    }

    fn chunks(&mut self) -> io::Result<Vec<ChunkText>> {
        let count = self.u64()?;
        // Each entry takes at least its line number and two 8-byte lengths.
        if count > self.bytes.len() as u64 / 24 {
            return Err(invalid("frame list longer than its frame".to_owned()));
        }
        (0..count).map(|_| self.chunk()).collect()
    }

    fn finish(self) -> io::Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!("{} unexpected bytes at the end of a frame", self.bytes.len())))
        }
    }
}

#[cfg(test)]
mod tests;
