//! An executor's calls in flight and the tasks on its pipes: requests written in order,
//! responses matched to their calls, the stderr tail kept to explain a crash.

use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, oneshot, watch};

use super::capture::{Capture, CapturedOutput};
use super::child::{describe_exit, wait_status};
use super::protocol::{Part, Request, Response, frame_len, staged_header};
use super::staged::StagedPartials;
use super::utf8::Utf8Check;
use super::{BatchOutcome, ExecError, Executor};

/// How much of staged partials is read at once while streaming them to the executor.
const STAGED_PIECE_BYTES: usize = 1 << 20;

/// The buffer of the pipe to an executor: a request's small fields (numbers, lengths, file
/// names) are gathered in it, larger ones are written past it from where they are.
const REQUEST_BUFFER_BYTES: usize = 64 << 10;

/// How many lines of the executor's stderr are kept to explain a crash.
const STDERR_TAIL_LINES: usize = 20;

pub(super) type Reply = oneshot::Sender<Result<Bytes, ExecError>>;

/// A call in flight.
pub(super) enum Pending {
    One(Reply),
    Batch(PendingBatch),
    Output(PendingOutput),
}

/// An aggregate in flight: its output is written to a file piece by piece as it comes, counted
/// against a limit (beyond which pieces are only counted) and checked to be UTF-8.
pub(super) struct PendingOutput {
    pub(super) out: std::io::BufWriter<std::fs::File>,
    pub(super) written: u64,
    pub(super) limit: u64,
    pub(super) utf8: Utf8Check,
    /// The first error writing the file or checking the text; the answer once `Done` comes.
    pub(super) error: Option<ExecError>,
    pub(super) reply: oneshot::Sender<Result<u64, ExecError>>,
}

impl PendingOutput {
    /// Takes one piece of the output.
    fn take(&mut self, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        if self.error.is_some() || self.written > self.limit {
            return;
        }
        if !self.utf8.take(bytes) {
            self.error = Some(ExecError::Plugin("the plugin's output is not UTF-8".to_owned()));
            return;
        }
        if let Err(e) = std::io::Write::write_all(&mut self.out, bytes) {
            self.error = Some(ExecError::Output(format!("cannot write the output to its file: {e}")));
        }
    }

    /// Answers the call once its last piece came.
    fn finish(mut self) {
        let outcome = if let Some(error) = self.error.take() {
            Err(error)
        } else if self.written > self.limit {
            Err(ExecError::ResultTooLarge { bytes: self.written, limit: self.limit })
        } else if !self.utf8.finish() {
            Err(ExecError::Plugin("the plugin's output is not UTF-8".to_owned()))
        } else {
            std::io::Write::flush(&mut self.out)
                .map(|()| self.written)
                .map_err(|e| ExecError::Output(format!("cannot write the output to its file: {e}")))
        };
        let _ = self.reply.send(outcome);
    }
}

/// A batch in flight: the answers so far, and when the last one came.
pub(super) struct PendingBatch {
    pub(super) expected: usize,
    pub(super) answers: Vec<Result<Bytes, ExecError>>,
    pub(super) outputs: Vec<CapturedOutput>,
    pub(super) last_answer: Instant,
    pub(super) reply: oneshot::Sender<BatchOutcome>,
}

impl Pending {
    /// Answers the call with what ended the executor (a batch with its answers so far, and
    /// what the chunk that was running printed).
    pub(super) fn fail(self, error: ExecError, output: CapturedOutput) {
        match self {
            Pending::One(reply) => {
                let _ = reply.send(Err(error));
            }
            Pending::Batch(batch) => {
                let outcome = BatchOutcome {
                    answers: batch.answers,
                    outputs: batch.outputs,
                    ended: Some(error),
                    ended_output: output,
                };
                let _ = batch.reply.send(outcome);
            }
            Pending::Output(output) => {
                let _ = output.reply.send(Err(error));
            }
        }
    }
}

/// State shared by an executor's handle and its reader task.
pub(super) struct Shared {
    /// Calls in flight by number; a batch counts as one call.
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    /// Set once the executor is unusable; later calls fail with it at once.
    pub(super) dead: Mutex<Option<ExecError>>,
    /// The calls in flight when the executor was marked dead.
    pub(super) calls_lost: AtomicUsize,
    pub(super) stderr_tail: Mutex<VecDeque<String>>,
    /// Counts the executor's end when a crash (not a stop asked for) was its first cause.
    pub(super) crashes: prometheus_client::metrics::counter::Counter,
    /// The pipes that capture what each slot prints.
    pub(super) capture: Arc<Capture>,
    /// The slot each call in flight runs on, once it has started.
    pub(super) slots: Mutex<HashMap<u64, usize>>,
    /// Output taken from the pipes for calls whose caller has not taken it yet.
    pub(super) outputs: Mutex<HashMap<u64, CapturedOutput>>,
}

impl Shared {
    /// Marks the executor dead (keeping the first cause) and fails every call in flight.
    pub(super) fn fail_all(&self, error: ExecError) {
        let (error, first) = {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            let first = dead.is_none();
            (dead.get_or_insert(error).clone(), first)
        };
        let pending: Vec<(u64, Pending)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if first {
            if matches!(error, ExecError::Crashed { .. }) {
                self.crashes.inc();
            }
            self.calls_lost.store(pending.len(), Ordering::Relaxed);
        } else {
            // Calls that slipped in between the first cause and now went down with it too.
            self.calls_lost.fetch_add(pending.len(), Ordering::Relaxed);
        }
        for (call, entry) in pending {
            let output = self.output_of(call);
            match entry {
                Pending::Batch(_) => entry.fail(error.clone(), output),
                // Kept for the caller, who takes it with the answer.
                entry => {
                    self.stash(call, output);
                    entry.fail(error.clone(), CapturedOutput::default());
                }
            }
        }
    }

    /// Everything taken for `call` so far and all its slot's pipes hold now; the call no
    /// longer has a slot afterwards (it was stopped, or its process ended).
    pub(super) fn output_of(&self, call: u64) -> CapturedOutput {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
        let fresh = slot.map(|slot| self.capture.take_rest(slot)).unwrap_or_default();
        let mut output = self.outputs.lock().unwrap_or_else(|e| e.into_inner()).remove(&call).unwrap_or_default();
        output.append(fresh);
        output
    }

    /// What the call (a batch's chunk) that just answered printed, up to its end mark.
    fn output_of_batch_chunk(&self, call: u64) -> CapturedOutput {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(&call).copied();
        slot.map(|slot| self.capture.take(slot)).unwrap_or_default()
    }

    fn stash(&self, call: u64, output: CapturedOutput) {
        if !output.is_empty() {
            self.outputs.lock().unwrap_or_else(|e| e.into_inner()).entry(call).or_default().append(output);
        }
    }

    /// Takes what the calls in flight printed up to now (the process has ended: all of it) and
    /// answers the last lines of their stderr, which often say why it ended.
    fn in_flight_stderr(&self) -> String {
        let calls: Vec<u64> = self.slots.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let mut tail = String::new();
        for call in calls {
            let output = self.output_of(call);
            let lines: Vec<&str> = output.stderr.lines().collect();
            for line in &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..] {
                tail.push_str(&format!("  {line}\n"));
            }
            self.stash(call, output);
        }
        tail
    }

    pub(super) fn dead(&self) -> Option<ExecError> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().map(|line| format!("  {line}\n")).collect()
    }
}

/// Writes one request onto the executor's pipe and flushes it. The frame's fields go out from
/// where they are (a chunk's text, a combine's partials): small ones gathered in `stdin`'s
/// buffer, large ones written past it, never copied into a frame of their own first.
pub(super) async fn write_request<W: AsyncWrite + Unpin>(stdin: &mut W, request: &Request) -> std::io::Result<()> {
    if let Request::AggregateStaged { call, input_files, partials } = request {
        return write_staged(stdin, staged_header(*call, *input_files, partials), partials).await;
    }
    let (tag, parts) = request.parts();
    stdin.write_all(&frame_len(&parts).to_le_bytes()).await?;
    stdin.write_all(&[tag]).await?;
    for part in &parts {
        match part {
            Part::U64(value) => stdin.write_all(&value.to_le_bytes()).await?,
            Part::Bytes(bytes) => {
                stdin.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
                stdin.write_all(bytes).await?;
            }
        }
    }
    stdin.flush().await
}

/// Writes an aggregate of staged partials, streamed from their file a piece at a time.
async fn write_staged<W: AsyncWrite + Unpin>(
    stdin: &mut W,
    header: Vec<u8>,
    partials: &StagedPartials,
) -> std::io::Result<()> {
    stdin.write_all(&header).await?;
    let mut reader = partials.reader();
    loop {
        let (piece, back) = tokio::task::spawn_blocking(move || {
            let mut piece = vec![0u8; STAGED_PIECE_BYTES];
            let read = std::io::Read::read(&mut reader, &mut piece)?;
            piece.truncate(read);
            Ok::<_, std::io::Error>((piece, reader))
        })
        .await
        .map_err(std::io::Error::other)??;
        reader = back;
        if piece.is_empty() {
            break;
        }
        stdin.write_all(&piece).await?;
    }
    stdin.flush().await
}

/// Writes requests to the executor in the order they were made.
pub(super) async fn write_requests(stdin: ChildStdin, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut stdin = BufWriter::with_capacity(REQUEST_BUFFER_BYTES, stdin);
    while let Some(request) = requests.recv().await {
        if let Err(e) = write_request(&mut stdin, &request).await {
            // The reader will see the process end and explain why; this only stops writing.
            tracing::debug!("executor pipe closed: {e}");
            return;
        }
    }
}

/// Reads responses until the executor's stdout closes, then fails what is left in flight with
/// the reason the process ended.
pub(super) fn read_responses(
    mut stdout: std::io::BufReader<std::fs::File>,
    shared: Arc<Shared>,
    status: watch::Receiver<Option<ExitStatus>>,
    stderr_task: tokio::task::JoinHandle<()>,
) {
    loop {
        match Response::read_from(&mut stdout) {
            Ok(Some(Response::Done { call, bytes })) => answer(&shared, call, Ok(bytes)),
            Ok(Some(Response::Piece { call, bytes })) => piece(&shared, call, &bytes),
            Ok(Some(Response::Failed { call, message })) => answer(&shared, call, Err(ExecError::Plugin(message))),
            Ok(Some(Response::Refused { call, message })) => answer(&shared, call, Err(ExecError::Refused(message))),
            Ok(Some(Response::Started { call, slot })) => {
                shared.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(call, slot as usize);
            }
            Ok(Some(other)) => {
                tracing::warn!("executor sent an unexpected {other:?}");
            }
            Ok(None) | Err(_) => break,
        }
    }
    let status = tokio::runtime::Handle::try_current().ok().and_then(|handle| {
        handle.block_on(async {
            // Let the last words on stderr arrive: they often say why the process ended.
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            wait_status(status).await
        })
    });
    let mut reason = status.map(describe_exit).unwrap_or_else(|| "closed its output".to_owned());
    let stderr = shared.stderr_tail() + &shared.in_flight_stderr();
    // Rust aborts when an allocation fails, which is how a memory limit shows itself.
    if stderr.contains("memory allocation of") {
        reason = format!("ran out of memory and {reason}");
    }
    shared.fail_all(ExecError::Crashed { reason, stderr });
}

pub(super) fn answer(shared: &Shared, call: u64, result: Result<Bytes, ExecError>) {
    // Everything the call printed is in its slot's pipes by now: it wrote before it answered.
    let output = shared.output_of_batch_chunk(call);
    let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    // A call that was abandoned or timed out is no longer there.
    let Some(entry) = pending.get_mut(&call) else { return };
    if let Pending::Batch(batch) = entry {
        batch.answers.push(result);
        batch.outputs.push(output);
        batch.last_answer = Instant::now();
        if batch.answers.len() < batch.expected {
            return;
        }
        if let Some(Pending::Batch(batch)) = pending.remove(&call) {
            drop(pending);
            shared.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
            let outcome = BatchOutcome { answers: batch.answers, outputs: batch.outputs, ..BatchOutcome::default() };
            let _ = batch.reply.send(outcome);
        }
        return;
    }
    // The caller takes the output once it has the answer.
    shared.stash(call, output);
    shared.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
    if let Pending::Output(output) = entry {
        if let Ok(bytes) = &result {
            output.take(bytes);
        }
        if let Some(Pending::Output(mut output)) = pending.remove(&call) {
            drop(pending);
            match result {
                Ok(_) => output.finish(),
                Err(error) => {
                    output.error = Some(error);
                    output.finish();
                }
            }
        }
        return;
    }
    if let Some(Pending::One(reply)) = pending.remove(&call) {
        drop(pending);
        let _ = reply.send(result);
    }
}

/// Takes a piece of a call's answer (an aggregate's output), written out as it comes.
pub(super) fn piece(shared: &Shared, call: u64, bytes: &[u8]) {
    let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    match pending.get_mut(&call) {
        Some(Pending::Output(output)) => output.take(bytes),
        // A call that was abandoned or timed out is no longer there.
        None => {}
        Some(_) => tracing::warn!("executor sent a piece of an answer to a call that answers whole"),
    }
}

/// Keeps the last lines of the executor's stderr and logs them.
pub(super) async fn collect_stderr(stderr: tokio::process::ChildStderr, shared: Arc<Shared>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "kiln::executor", "{line}");
        let mut tail = shared.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Abandons a call whose future is dropped before its answer: forgets it, and ends the
/// executor when no other call is in flight there, as the only way to stop the plugin code
/// still running it (the next call gets a fresh executor).
pub(super) struct AbandonGuard<'a> {
    pub(super) executor: &'a Executor,
    pub(super) call: u64,
    pub(super) armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let alone = {
            let mut pending = self.executor.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.remove(&self.call).is_some() && pending.is_empty()
        };
        // Nobody will read what it printed.
        drop(self.executor.shared.output_of(self.call));
        if alone && self.executor.is_alive() {
            tracing::debug!("the executor's only call was abandoned: ending it");
            self.executor.kill("its only call was cancelled");
        }
    }
}
