//! The executor's pipe protocol, both ways: the supervisor (in the worker daemon) decoding what
//! an executor sends, where the executor runs plugin code and may send anything; and the
//! executor decoding the supervisor's requests.

use super::Choices;
use crate::worker::executor::protocol::{Request, Response};
use crate::worker::executor::utf8::Utf8Check;

/// Decodes the payload as a stream of frames (requests or responses, as the first byte says)
/// until it ends or a frame is refused. Every frame decoded must encode to a frame that decodes
/// to the same message, and reading may never hold more than the input (a frame's announced
/// length is not a reason to allocate it). The pieces of an aggregate's output are checked to
/// be UTF-8 as they come, which must agree with checking them whole.
pub fn executor_pipe(data: &[u8]) {
    let mut choices = Choices::new(data);
    let requests = choices.byte() & 1 == 0;
    let mut input = choices.rest();
    let mut output = Vec::new();
    let mut utf8 = Utf8Check::default();
    let mut utf8_ok = true;
    loop {
        if requests {
            let Ok(Some(request)) = Request::read_from(&mut input) else { break };
            let mut wire = Vec::new();
            request.write_to(&mut wire).expect("writing to memory");
            let again = Request::read_from(&mut &wire[..]).expect("a frame just written reads back");
            assert_eq!(again.as_ref(), Some(&request), "a request changes across the pipe");
        } else {
            let Ok(Some(response)) = Response::read_from(&mut input) else { break };
            let mut wire = Vec::new();
            response.write_to(&mut wire).expect("writing to memory");
            let again = Response::read_from(&mut &wire[..]).expect("a frame just written reads back");
            assert_eq!(again.as_ref(), Some(&response), "a response changes across the pipe");
            if let Response::Piece { bytes, .. } | Response::Done { bytes, .. } = &response {
                output.extend_from_slice(bytes);
                utf8_ok &= utf8.take(bytes);
            }
        }
    }
    if utf8_ok {
        utf8_ok = utf8.finish();
    }
    assert_eq!(utf8_ok, std::str::from_utf8(&output).is_ok(), "the UTF-8 check of pieces disagrees with the whole");
}
