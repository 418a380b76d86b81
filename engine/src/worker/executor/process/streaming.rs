//! An aggregate's partials and output on the executor's side: the partials read off the pipe
//! and handed to the aggregating thread in batches ([`feed`]), taken one at a time by the
//! plugin ([`Source`]), and its output written out in pieces as it comes ([`Sink`],
//! [`send_pieces`]).

use std::fs::File;
use std::io::{self, BufWriter};
use std::sync::{Mutex, mpsc};

use abi_stable::std_types::{RNone, ROption, RResult, RSlice, RSome, RString, RVec};
use bytes::Bytes;

use super::super::protocol::{OUTPUT_PIECE_BYTES, PartialsOnPipe, Response, write_piece};
use super::{send, send_with};

/// How many bytes of partials (at most) go to the aggregating thread at a time. Handing them
/// over one by one cost two context switches per partial: an aggregate of 100,000 one-line
/// partials took 2.2 s instead of 0.3 s (bench section 3).
const BATCH_BYTES: usize = 1 << 20;

/// How many partials (at most) go to the aggregating thread at a time.
const BATCH_PARTIALS: usize = 4096;

/// Reads an aggregate's partials off the pipe and hands them to the thread running it, in
/// batches of up to [`BATCH_BYTES`] (a larger partial goes alone). When that thread stopped
/// taking them (the plugin failed before it had them all), the rest are read and dropped, so
/// that the next request is found where it starts.
pub(super) fn feed<R: io::Read>(
    input: &mut R,
    mut partials: PartialsOnPipe,
    to: &mpsc::SyncSender<Vec<Vec<u8>>>,
) -> io::Result<()> {
    let mut taken = true;
    let (mut batch, mut bytes) = (Vec::new(), 0);
    while let Some(partial) = partials.next(input)? {
        if !batch.is_empty() && (bytes + partial.len() > BATCH_BYTES || batch.len() == BATCH_PARTIALS) {
            taken = taken && to.send(std::mem::take(&mut batch)).is_ok();
            bytes = 0;
        }
        bytes += partial.len();
        batch.push(partial);
    }
    if !batch.is_empty() {
        let _ = taken && to.send(batch).is_ok();
    }
    Ok(())
}

/// Why an aggregate failed when its partials stopped arriving (the pipe broke while they did).
pub(super) const STOPPED_COMING: &str = "the aggregate's partials stopped arriving";

/// A pointer to `value` for the plugin to hand back to `Source::next` or `Sink::write`.
pub(super) fn erase<T>(value: &mut T) -> &mut std::ffi::c_void {
    // SAFETY: a reference to a live value; it is only ever turned back into a `&mut T`.
    unsafe { &mut *(value as *mut T).cast::<std::ffi::c_void>() }
}

/// The partials an aggregate takes one at a time, from the thread reading the pipe.
pub(super) struct Source {
    pub(super) partials: mpsc::Receiver<Vec<Vec<u8>>>,
    /// What is left of the batch last received.
    pub(super) batch: std::vec::IntoIter<Vec<u8>>,
    pub(super) left: u64,
    /// The partials stopped arriving before all came (the pipe broke).
    pub(super) stopped: bool,
}

impl Source {
    pub(super) extern "C" fn next(state: *mut std::ffi::c_void) -> RResult<ROption<RVec<u8>>, RString> {
        // SAFETY: `state` is the `Source` that `aggregate_streamed` erased, alive for the call.
        let source = unsafe { &mut *state.cast::<Source>() };
        if source.left == 0 {
            return RResult::ROk(RNone);
        }
        loop {
            if let Some(partial) = source.batch.next() {
                source.left -= 1;
                return RResult::ROk(RSome(RVec::from(partial)));
            }
            match source.partials.recv() {
                Ok(batch) => source.batch = batch.into_iter(),
                Err(_) => {
                    source.stopped = true;
                    return RResult::RErr(STOPPED_COMING.into());
                }
            }
        }
    }
}

/// Where an aggregate's output goes: pieces of the call's answer, sent as the plugin writes.
pub(super) struct Sink<'a> {
    pub(super) output: &'a Mutex<BufWriter<File>>,
    pub(super) call: u64,
    /// The first error writing the pipe; the plugin is told to stop.
    pub(super) error: Option<io::Error>,
}

impl Sink<'_> {
    pub(super) extern "C" fn write(state: *mut std::ffi::c_void, bytes: RSlice<'_, u8>) -> RResult<(), RString> {
        // SAFETY: `state` is the `Sink` that `aggregate_streamed` erased, alive for the call.
        let sink = unsafe { &mut *state.cast::<Sink<'_>>() };
        if sink.error.is_some() {
            return RResult::RErr("the executor's pipe is closed".into());
        }
        for piece in bytes.as_slice().chunks(OUTPUT_PIECE_BYTES) {
            if let Err(e) = send_with(sink.output, |out| write_piece(out, sink.call, piece)) {
                sink.error = Some(e);
                return RResult::RErr("the executor's pipe is closed".into());
            }
        }
        RResult::ROk(())
    }
}

/// Sends a call's answer as `Piece`s of at most [`OUTPUT_PIECE_BYTES`] and a `Done` with the
/// last one, so that the supervisor writes the output out as it comes.
pub(super) fn send_pieces(output: &Mutex<BufWriter<File>>, call: u64, mut bytes: Bytes) -> io::Result<()> {
    while bytes.len() > OUTPUT_PIECE_BYTES {
        let piece = bytes.split_to(OUTPUT_PIECE_BYTES);
        send(output, &Response::Piece { call, bytes: piece })?;
    }
    send(output, &Response::Done { call, bytes })
}
