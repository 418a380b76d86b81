//! What a plugin printed, kept with its job: one [`PluginOutput`] per chunk (or aggregate) that
//! printed anything, bounded per call by the executor (`worker::executor::capture`) and per job
//! by [`JobLogs`], and never part of the result.

use serde::{Deserialize, Serialize};

/// The most of a job's plugin output that is kept (stdout and stderr of all its chunks and its
/// aggregate); what comes beyond is counted as cut.
pub const JOB_OUTPUT_BYTES: u64 = 512 << 10;

/// What the plugin printed while running one chunk of a job, or its aggregate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginOutput {
    /// The chunk's number in the job; `None` for the aggregate.
    pub chunk: Option<u64>,
    /// The name of the chunk's file, as the user gave it (empty for the aggregate).
    pub file: String,
    /// The chunk's first and last line within its file (0 when unknown, and for the aggregate).
    pub first_line: u64,
    /// See `first_line`.
    pub last_line: u64,
    /// What it wrote on stdout.
    pub stdout: String,
    /// What it wrote on stderr.
    pub stderr: String,
    /// Bytes it wrote beyond what is kept.
    pub cut: u64,
}

impl PluginOutput {
    /// Where it comes from, as the user reads it: `chunk 2 (lines.txt lines 201-300)`.
    pub fn origin(&self) -> String {
        match self.chunk {
            None => "aggregate".to_owned(),
            Some(chunk) if self.first_line == 0 => format!("chunk {chunk} ({})", self.file),
            Some(chunk) => format!("chunk {chunk} ({} lines {}-{})", self.file, self.first_line, self.last_line),
        }
    }

    /// The output as `kiln logs` prints it: a header line per stream that has text, then the
    /// text, then a note of what was cut.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (stream, body) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if body.is_empty() {
                continue;
            }
            text.push_str(&format!("== {} {stream}\n{body}", self.origin()));
            if !body.ends_with('\n') {
                text.push('\n');
            }
        }
        if self.cut > 0 {
            if text.is_empty() {
                text.push_str(&format!("== {}\n", self.origin()));
            }
            text.push_str(&format!("[... {} bytes cut]\n", self.cut));
        }
        text
    }
}

/// What the plugin printed running one chunk of a `run_chunks` batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkPrinted {
    /// The chunk's position in the batch, from 0.
    pub position: u32,
    /// What it wrote on stdout.
    pub stdout: String,
    /// What it wrote on stderr.
    pub stderr: String,
    /// Bytes it wrote beyond what is kept.
    pub cut: u64,
}

/// A worker's answer to `run_chunks`: one result per chunk, in order, and what the plugin
/// printed for those chunks that printed anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkResults {
    /// The encoded partial of each chunk, or why it failed, in the batch's order.
    pub results: Vec<Result<serde_bytes::ByteBuf, super::TaskError>>,
    /// What the chunks printed; none for chunks that printed nothing.
    pub printed: Vec<ChunkPrinted>,
    /// The lines of each chunk the worker read by reference, in the batch's order (0 for a
    /// chunk whose text came with the call: the controller counted its lines when it cut it),
    /// so that a job's progress counts the lines of an input read by reference too.
    pub lines: Vec<u64>,
}

/// A worker's answer to `aggregate`: the output's length (the output itself is fetched in
/// pieces with `fetch_output`) and what the plugin printed while it aggregated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Aggregated {
    /// The output JSON's length in bytes.
    pub len: u64,
    /// What the aggregate wrote on stdout.
    pub stdout: String,
    /// What it wrote on stderr.
    pub stderr: String,
    /// Bytes it wrote beyond what is kept.
    pub cut: u64,
}

impl Aggregated {
    /// What the aggregate printed, as the job keeps it; `None` when it printed nothing.
    pub fn printed(&self) -> Option<PluginOutput> {
        (!self.stdout.is_empty() || !self.stderr.is_empty() || self.cut > 0).then(|| PluginOutput {
            chunk: None,
            file: String::new(),
            first_line: 0,
            last_line: 0,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            cut: self.cut,
        })
    }
}

/// A job's plugin output, within [`JOB_OUTPUT_BYTES`]: an output that would pass the bound is
/// trimmed to the room left, the rest counted as cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobLogs {
    outputs: Vec<PluginOutput>,
    kept: u64,
}

impl JobLogs {
    /// Keeps `output` if it holds anything, within the job's bound.
    pub fn add(&mut self, mut output: PluginOutput) {
        if output.stdout.is_empty() && output.stderr.is_empty() && output.cut == 0 {
            return;
        }
        self.kept += trim(&mut output, JOB_OUTPUT_BYTES.saturating_sub(self.kept));
        self.outputs.push(output);
    }

    /// The outputs kept, in the order they came.
    pub fn outputs(&self) -> &[PluginOutput] {
        &self.outputs
    }

    /// Every output, rendered ([`PluginOutput::render`]), in chunk order, the aggregate last.
    pub fn render(&self) -> String {
        let mut outputs: Vec<&PluginOutput> = self.outputs.iter().collect();
        outputs.sort_by_key(|output| output.chunk.unwrap_or(u64::MAX));
        outputs.iter().map(|output| output.render()).collect()
    }
}

/// Trims `output` to at most `room` bytes of text (stdout first), counting the rest as cut, on
/// character boundaries; answers the bytes kept.
pub fn trim(output: &mut PluginOutput, room: u64) -> u64 {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let stdout_room = room.min(output.stdout.len());
    let stderr_room = (room - stdout_room).min(output.stderr.len());
    let mut kept = 0;
    for (text, room) in [(&mut output.stdout, stdout_room), (&mut output.stderr, stderr_room)] {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        output.cut += (text.len() - end) as u64;
        text.truncate(end);
        kept += end as u64;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(chunk: Option<u64>, stdout: &str) -> PluginOutput {
        PluginOutput {
            chunk,
            file: "a.txt".into(),
            first_line: 1,
            last_line: 10,
            stdout: stdout.into(),
            stderr: String::new(),
            cut: 0,
        }
    }

    #[test]
    fn a_job_keeps_no_more_than_its_bound_and_says_what_it_cut() {
        let mut logs = JobLogs::default();
        let big = "é".repeat(JOB_OUTPUT_BYTES as usize / 2);
        logs.add(output(Some(0), &big));
        logs.add(output(Some(1), &big));
        logs.add(output(None, "aggregate"));
        logs.add(output(Some(2), ""));
        let kept: u64 = logs.outputs().iter().map(|o| (o.stdout.len() + o.stderr.len()) as u64).sum();
        let cut: u64 = logs.outputs().iter().map(|o| o.cut).sum();
        assert_eq!(kept + cut, 2 * big.len() as u64 + "aggregate".len() as u64);
        assert!(kept <= JOB_OUTPUT_BYTES, "{kept}");
        assert_eq!(logs.outputs().len(), 3, "an output with nothing is not kept");
        let text = logs.render();
        assert!(text.starts_with("== chunk 0 (a.txt lines 1-10) stdout\n"), "{}", &text[..60]);
        assert!(text.ends_with("== aggregate\n[... 9 bytes cut]\n"), "{}", &text[text.len() - 60..]);
    }
}
