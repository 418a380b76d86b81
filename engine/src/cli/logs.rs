//! `kiln logs JOB`: what a job's plugin printed; and the note `kiln submit` leaves about it.
//!
//! `kiln submit` does not print the plugin's output itself: it may be long (up to
//! `rpc::logs::JOB_OUTPUT_BYTES`) and would bury the result and the summary. After the result
//! it says on stderr how many chunks printed something and the command that shows it.

use kiln_engine::client::Client;
use kiln_engine::rpc::JobId;
use kiln_engine::rpc::logs::PluginOutput;

use super::output::{note, print, println};

/// Prints the outputs as `kiln logs` does: per chunk and stream, a header naming the chunk's
/// file and lines, then the text, then what was cut; JSON with `json`.
pub fn print_outputs(job: JobId, outputs: &[PluginOutput], json: bool) -> anyhow::Result<()> {
    if json {
        return println(serde_json::to_string_pretty(outputs)?);
    }
    if outputs.is_empty() {
        note(format_args!("the plugin of job {job} printed nothing"));
        return Ok(());
    }
    print(outputs.iter().map(PluginOutput::render).collect::<String>())
}

/// After `kiln submit` printed the result: tells on stderr whether the plugin printed anything
/// and how to see it. A failure to ask is only noted: the job and its result are fine.
pub async fn note_printed(client: &Client, job: JobId) {
    match client.plugin_output(job).await {
        Ok(outputs) if outputs.is_empty() => {}
        Ok(outputs) => {
            let chunks = outputs.iter().filter(|output| output.chunk.is_some()).count();
            let aggregate = outputs.iter().any(|output| output.chunk.is_none());
            let what = match (chunks, aggregate) {
                (0, _) => "the plugin's aggregate printed output".to_owned(),
                (1, false) => "1 chunk printed output".to_owned(),
                (n, false) => format!("{n} chunks printed output"),
                (n, true) => format!("{n} chunk{} and the aggregate printed output", if n == 1 { "" } else { "s" }),
            };
            note(format_args!("{what}: kiln logs {job}"));
        }
        Err(error) => {
            note(format_args!("cannot tell whether the plugin printed anything: {error}: try kiln logs {job}"))
        }
    }
}
