//! RPC messages as they come off a connection: length-delimited frames, read by a server under
//! the pre-authentication gate or by a client, then decoded by tarpc's bincode format.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Choices;
use crate::rpc::pieces::max_frame_bytes;
use crate::rpc::{ControllerRequest, ControllerResponse, WorkerRequest, WorkerResponse};
use crate::tls::frames::{FrameReader, Limit};
use crate::tls::gate::{Gate, PRE_AUTH_FRAME_BYTES};

/// The largest piece the connection is read in here (a TLS record is at most 16 KiB).
const MAX_PIECE: usize = 255 * 16;

/// The most a closed gate's connection may hold however large a frame it announces: a frame
/// within the limit and the piece being read, with room for the buffer's growth.
const PRE_AUTH_HOLD: usize = 4 * (PRE_AUTH_FRAME_BYTES + 4 + MAX_PIECE);

/// Which side reads the frames, and what they hold.
#[derive(Clone, Copy)]
enum Side {
    /// The controller serving clients and workers.
    ControllerServer,
    /// A worker serving the controller.
    WorkerServer,
    /// A client or worker reading the controller's answers.
    ControllerClient,
    /// The controller reading a worker's answers.
    WorkerClient,
}

/// Feeds the payload to a connection's frame decoder in pieces of a chosen size, as one side
/// of the RPC reads it, and decodes each frame as that side's messages. A server reads under a
/// closed gate, which the choices may open after some frames (as a call that passed its
/// credential check does): while closed, no frame may be larger than the pre-authentication
/// limit and the buffer may never grow with what a frame's header announces. A message that
/// decodes must encode to bytes that decode to it again (a call's deadline aside).
pub fn rpc_frames(data: &[u8]) {
    let mut choices = Choices::new(data);
    let side = [Side::ControllerServer, Side::WorkerServer, Side::ControllerClient, Side::WorkerClient]
        [usize::from(choices.byte() % 4)];
    let open_after = choices.byte();
    let piece = choices.between_1_and(255) * 16;
    let input = choices.rest();
    let gate = Gate::closed(());
    let server = matches!(side, Side::ControllerServer | Side::WorkerServer);
    let limit = if server { Limit::Gated(gate.clone()) } else { Limit::Fixed(max_frame_bytes()) };
    let mut reader = FrameReader::new(limit);
    let mut frames = 0usize;
    for read in input.chunks(piece) {
        let mut rest = read;
        loop {
            let closed = server && !gate.is_open();
            let frame = match reader.frame() {
                Ok(Some(frame)) => frame,
                Ok(None) if !rest.is_empty() => {
                    rest = &rest[reader.feed(rest)..];
                    if closed {
                        assert!(reader.held() <= PRE_AUTH_HOLD, "{} bytes held before authentication", reader.held());
                    }
                    continue;
                }
                // Waits for the next read.
                Ok(None) => break,
                // The connection is closed.
                Err(_) => return,
            };
            if closed {
                assert!(frame.len() <= PRE_AUTH_FRAME_BYTES, "a frame of {} bytes before authentication", frame.len());
            }
            assert!(frame.len() <= max_frame_bytes(), "a frame of {} bytes", frame.len());
            let message = match side {
                Side::ControllerServer => request::<ControllerRequest>(&frame),
                Side::WorkerServer => request::<WorkerRequest>(&frame),
                Side::ControllerClient => answer::<ControllerResponse>(&frame),
                Side::WorkerClient => answer::<WorkerResponse>(&frame),
            };
            frames += 1;
            if message && frames > usize::from(open_after) {
                gate.open();
            }
        }
    }
}

/// Decodes a frame as tarpc decodes a call; whether it decoded. A call's context carries its
/// deadline as a time from now, which moves between two encodings; what it asks must not.
fn request<T: Serialize + DeserializeOwned>(frame: &[u8]) -> bool {
    let Some(message) = decode::<tarpc::ClientMessage<T>>(frame) else { return false };
    decode::<tarpc::ClientMessage<T>>(&encode(&message)).expect("an encoded call decodes");
    if let tarpc::ClientMessage::Request(call) = &message {
        check_round_trip(&call.message);
    }
    true
}

/// Decodes a frame as tarpc decodes an answer; whether it decoded. A server's error is checked
/// for its detail only: tarpc (0.38) writes a `ServerError`'s kind as a signed number and reads
/// it as an unsigned one, so under bincode's variable-length integers kind k comes back as kind
/// 2k (found by this target; `fuzz_regressions.rs`). Kiln shows the error as text and never
/// branches on that kind.
fn answer<T: Serialize + DeserializeOwned>(frame: &[u8]) -> bool {
    let Some(message) = decode::<tarpc::Response<T>>(frame) else { return false };
    match &message.message {
        Ok(body) => check_round_trip(body),
        Err(error) => {
            let again = decode::<tarpc::Response<T>>(&encode(&message)).expect("an encoded answer decodes");
            let Err(again) = again.message else { panic!("a server's error came back as an answer") };
            assert_eq!(again.detail, error.detail, "a server's error changes across the wire");
        }
    }
    true
}

fn decode<T: DeserializeOwned>(frame: &[u8]) -> Option<T> {
    bincode::DefaultOptions::new().deserialize(frame).ok()
}

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    bincode::DefaultOptions::new().serialize(message).expect("encoding a decoded message")
}

/// What decoded encodes to bytes that decode and encode to the same bytes again.
fn check_round_trip<T: Serialize + DeserializeOwned>(message: &T) {
    let encoded = encode(message);
    let again = decode::<T>(&encoded).expect("an encoded message decodes");
    assert_eq!(encoded, encode(&again), "a message changes across the wire");
}
