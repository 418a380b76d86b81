//! What plugin code prints, captured per call.
//!
//! Each thread (slot) of an executor has its own pair of pipes, made here before the process
//! starts: the thread unshares its file table and points its descriptors 1 and 2 at them
//! (`process::own_output`), so what the plugin prints while that thread runs a call lands in
//! the slot's pipes, never in the protocol and never mixed with another slot's calls. After each
//! call (each chunk of a batch), before its answer, the thread writes the executor's end mark
//! (random bytes the supervisor chose, [`Mark`]) on both pipes. The supervisor reads the pipes
//! all the time (a full pipe would stop the plugin), cuts them at the marks, and keeps at most
//! [`STREAM_OUTPUT_BYTES`] of each stream per call, counting the rest. When a call answers, the
//! slot's pipes are read to their end and the first call's worth is that answer's
//! [`CapturedOutput`]: the mark came before the answer, so nothing of the call is left behind
//! and nothing of the next call is taken. A crash leaves its last words (a panic message,
//! "memory allocation of N bytes failed") in the pipes, where the supervisor still reads them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most of a call's stdout, and of its stderr, that is kept; the rest is counted.
pub const STREAM_OUTPUT_BYTES: usize = 64 << 10;

/// The bytes that end a call's output on a slot's pipes: chosen at random for each executor,
/// between NULs, so no text a plugin prints holds it by chance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark(Vec<u8>);

impl Mark {
    /// A fresh random mark.
    pub fn random() -> Mark {
        let hex: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        Mark::parse(&hex)
    }

    /// The mark that `hex` (as [`Mark::hex`] writes it) stands for.
    pub fn parse(hex: &str) -> Mark {
        Mark(format!("\0kiln-end-of-call-{hex}\0").into_bytes())
    }

    /// The mark's text as `kiln exec --capture-mark` takes it.
    pub fn hex(&self) -> &str {
        let text = std::str::from_utf8(&self.0).unwrap_or("");
        text.trim_matches('\0').trim_start_matches("kiln-end-of-call-")
    }

    /// The bytes written after each call.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What a call printed: its stdout and stderr (at most [`STREAM_OUTPUT_BYTES`] each, invalid
/// UTF-8 replaced), and how many bytes beyond were cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// What the call wrote on stdout.
    pub stdout: String,
    /// What the call wrote on stderr.
    pub stderr: String,
    /// Bytes written beyond what is kept.
    pub cut: u64,
}

impl CapturedOutput {
    /// Whether the call printed nothing.
    pub fn is_empty(&self) -> bool {
        self.stdout.is_empty() && self.stderr.is_empty() && self.cut == 0
    }

    /// Adds what came after.
    pub fn append(&mut self, later: CapturedOutput) {
        self.stdout.push_str(&later.stdout);
        self.stderr.push_str(&later.stderr);
        self.cut += later.cut;
    }
}

/// One slot's pipes (read ends, non-blocking) and what came on them.
struct Slot {
    pipes: [OwnedFd; 2],
    streams: Mutex<[Stream; 2]>,
}

/// One stream of a slot, cut into calls at the marks.
#[derive(Default)]
struct Stream {
    /// The output of calls whose mark came, oldest first: kept bytes and bytes cut.
    done: VecDeque<(Vec<u8>, u64)>,
    /// The output of the call running now.
    current: Vec<u8>,
    cut: u64,
    /// The last bytes read, which may be the start of a mark.
    carry: Vec<u8>,
    /// Whether the pipe reached its end (every writer closed it).
    ended: bool,
}

impl Stream {
    /// Takes bytes read from the pipe, cutting at the marks.
    fn feed(&mut self, mark: &[u8], bytes: &[u8]) {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(at) = find(&data[start..], mark) {
            self.keep(&data[start..start + at]);
            let call = (std::mem::take(&mut self.current), std::mem::take(&mut self.cut));
            self.done.push_back(call);
            start += at + mark.len();
        }
        // A mark may begin in the last bytes: they wait for the next read.
        let rest = start.max(data.len().saturating_sub(mark.len() - 1));
        self.keep(&data[start..rest]);
        self.carry = data[rest..].to_vec();
    }

    fn keep(&mut self, bytes: &[u8]) {
        let kept = bytes.len().min(STREAM_OUTPUT_BYTES.saturating_sub(self.current.len()));
        self.current.extend_from_slice(&bytes[..kept]);
        self.cut += (bytes.len() - kept) as u64;
    }

    /// The oldest call's output whose mark came; nothing if none did.
    fn pop(&mut self) -> (Vec<u8>, u64) {
        self.done.pop_front().unwrap_or_default()
    }

    /// Everything not taken yet: the process ended, or the call was stopped, mid-call.
    fn rest(&mut self) -> (Vec<u8>, u64) {
        let (mut bytes, mut cut) = (Vec::new(), 0);
        let carry = std::mem::take(&mut self.carry);
        self.keep(&carry);
        self.done.push_back((std::mem::take(&mut self.current), std::mem::take(&mut self.cut)));
        for (more, more_cut) in self.done.drain(..) {
            bytes.extend_from_slice(&more);
            cut += more_cut;
        }
        (bytes, cut)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The capture pipes of an executor's slots.
pub(super) struct Capture {
    slots: Vec<Slot>,
    mark: Mark,
}

impl Capture {
    /// Pipes for `n` slots, cut at `mark`; answers them and the write ends to hand to the
    /// process, in the order `--capture-fds` takes them (slot 0's stdout, slot 0's stderr,
    /// slot 1's stdout...).
    pub(super) fn new(n: usize, mark: Mark) -> io::Result<(Arc<Capture>, Vec<OwnedFd>)> {
        let mut slots = Vec::with_capacity(n);
        let mut write_ends = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            write_ends.extend([out_write, err_write]);
            slots.push(Slot { pipes: [out_read, err_read], streams: Mutex::default() });
        }
        Ok((Arc::new(Capture { slots, mark }), write_ends))
    }

    /// What the oldest call on `slot` that has not been taken printed, once its mark came
    /// (reading the pipes first): the output of the call that just answered there.
    pub(super) fn take(&self, slot: usize) -> CapturedOutput {
        self.take_with(slot, Stream::pop)
    }

    /// Everything `slot`'s pipes held that was not taken: the output of a call that ended
    /// without its mark (its process died, or it was stopped).
    pub(super) fn take_rest(&self, slot: usize) -> CapturedOutput {
        self.take_with(slot, Stream::rest)
    }

    fn take_with(&self, slot: usize, how: fn(&mut Stream) -> (Vec<u8>, u64)) -> CapturedOutput {
        let Some(entry) = self.slots.get(slot) else { return CapturedOutput::default() };
        let mut streams = entry.streams.lock().unwrap_or_else(|e| e.into_inner());
        for (index, stream) in streams.iter_mut().enumerate() {
            read_available(&entry.pipes[index], stream, self.mark.bytes());
        }
        let (stdout, stdout_cut) = how(&mut streams[0]);
        let (stderr, stderr_cut) = how(&mut streams[1]);
        CapturedOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            cut: stdout_cut + stderr_cut,
        }
    }

    /// Starts the thread that keeps the pipes drained, until every pipe has ended or nothing
    /// but the thread holds the capture any more.
    pub(super) fn spawn_reader(capture: &Arc<Capture>) -> io::Result<()> {
        let capture = Arc::clone(capture);
        std::thread::Builder::new().name("kiln-exec-output".to_owned()).spawn(move || capture.drain_until_ended())?;
        Ok(())
    }

    fn drain_until_ended(self: Arc<Capture>) {
        // Woken at least this often to see whether the executor is gone.
        const CHECK: Duration = Duration::from_millis(500);
        loop {
            let mut fds = Vec::new();
            let mut which = Vec::new();
            for (index, slot) in self.slots.iter().enumerate() {
                let streams = slot.streams.lock().unwrap_or_else(|e| e.into_inner());
                for (stream, state) in streams.iter().enumerate() {
                    if !state.ended {
                        fds.push(libc::pollfd { fd: slot.pipes[stream].as_raw_fd(), events: libc::POLLIN, revents: 0 });
                        which.push((index, stream));
                    }
                }
            }
            if fds.is_empty() || Arc::strong_count(&self) == 1 {
                return;
            }
            // SAFETY: `fds` is a valid array of pollfd of the length given.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, CHECK.as_millis() as i32) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for (fd, (index, stream)) in fds.iter().zip(which) {
                if fd.revents != 0 {
                    let slot = &self.slots[index];
                    let mut streams = slot.streams.lock().unwrap_or_else(|e| e.into_inner());
                    read_available(&slot.pipes[stream], &mut streams[stream], self.mark.bytes());
                }
            }
        }
    }
}

/// Reads a pipe until it is empty (or ended), into its stream.
fn read_available(pipe: &OwnedFd, stream: &mut Stream, mark: &[u8]) {
    if stream.ended {
        return;
    }
    let mut buffer = [0u8; 16 << 10];
    loop {
        // SAFETY: reading into a buffer we own, of the length given, from a descriptor we own.
        let read = unsafe { libc::read(pipe.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        match read {
            0 => {
                stream.ended = true;
                return;
            }
            n if n > 0 => stream.feed(mark, &buffer[..n as usize]),
            _ => {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    _ => {
                        stream.ended = true;
                        return;
                    }
                }
            }
        }
    }
}

/// A pipe whose read end is non-blocking; both ends close on exec (the write end is made
/// inheritable in the child only, by [`inherit`]).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the array with two new descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((read, write))
}

/// Has the child keep `fds` open across exec (run in the child, between fork and exec).
pub(super) fn inherit(command: &mut tokio::process::Command, fds: Vec<RawFd>) {
    // SAFETY: fcntl is async-signal-safe and touches only the child's own descriptors.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fd: &OwnedFd, bytes: &[u8]) {
        // SAFETY: writing our own bytes to a descriptor we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    #[test]
    fn each_answer_takes_its_own_calls_output_and_no_more_than_the_bound() {
        let mark = Mark::random();
        assert_eq!(Mark::parse(mark.hex()), mark);
        let (capture, writers) = Capture::new(2, mark.clone()).expect("pipes");
        // Slot 0 ran two calls before the first answer was read; slot 1 is mid-call.
        write(&writers[0], b"first call\n");
        write(&writers[0], mark.bytes());
        write(&writers[1], mark.bytes());
        write(&writers[0], b"second call, ");
        write(&writers[0], &mark.bytes()[..5]);
        write(&writers[3], b"err of slot 1\n");
        assert_eq!(capture.take(0), CapturedOutput { stdout: "first call\n".into(), stderr: String::new(), cut: 0 });
        // The second call's mark comes in two writes.
        write(&writers[0], &mark.bytes()[5..]);
        write(&writers[1], mark.bytes());
        assert_eq!(capture.take(0).stdout, "second call, ");
        assert_eq!(capture.take(0), CapturedOutput::default());
        assert_eq!(capture.take(1), CapturedOutput::default(), "slot 1's call has not ended");
        assert_eq!(capture.take_rest(1).stderr, "err of slot 1\n");
        Capture::spawn_reader(&capture).expect("reader");
        // More than a pipe holds: the reader keeps it flowing, the bound keeps the memory.
        let line = [b'x'; 1000];
        for _ in 0..200 {
            write(&writers[2], &line);
        }
        write(&writers[2], mark.bytes());
        write(&writers[3], mark.bytes());
        let output = capture.take(1);
        assert_eq!(output.stdout.len(), STREAM_OUTPUT_BYTES);
        assert_eq!(output.cut, 200 * 1000 - STREAM_OUTPUT_BYTES as u64);
    }
}
