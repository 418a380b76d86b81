//! Writing to stdout and stderr as Unix tools do: when the reader of stdout goes away
//! (`kiln jobs | head`), the command stops and exits quietly with success, as ripgrep does,
//! instead of panicking; a closed stderr is no reason to fail either.

use std::fmt::Display;
use std::io::{self, Write};

/// Stdout was closed by its reader: not a failure, the command just has no one to tell more.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Writes `text` to stdout and flushes it.
pub fn print(text: impl Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    write!(out, "{text}").and_then(|()| out.flush()).map_err(stdout_error)
}

/// [`print`] with a line end.
pub fn println(text: impl Display) -> anyhow::Result<()> {
    print(format_args!("{text}\n"))
}

/// The error for a failed write to stdout: [`StdoutClosed`] when its reader went away.
pub fn stdout_error(error: io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(error).context("cannot write to stdout")
    }
}

/// Whether a command's error only says that stdout was closed.
pub fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<StdoutClosed>())
}

/// Writes a line to stderr for people (progress, summaries, errors); if stderr is closed there
/// is nowhere to say so, and the command goes on.
pub fn note(text: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}
