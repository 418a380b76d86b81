//! The commands that talk to a controller with the client library: `submit`, `status`,
//! `result`, `cancel`, `jobs` and `cluster`. Results and `--json` output go to stdout;
//! progress, summaries and errors to stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_engine::client::{Client, ClientError, SubmitOptions};
use kiln_engine::rpc::{JobId, Secret};
use tokio::io::AsyncWriteExt;

use super::output::{note, print, println, stdout_error};
use super::{DEFAULT_CONTROLLER, key_or_stored};

mod text;

use text::{age, describe, progress_message, shorten, summary};

/// How to reach the controller.
#[derive(clap::Args)]
pub struct ControllerFlags {
    /// The controller's address.
    #[arg(long, env = "KILN_CONTROLLER", default_value = DEFAULT_CONTROLLER)]
    controller: String,
    /// The cluster's API key, as the controller printed it (default: the one a controller on
    /// this machine stored).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificates (PEM) to check a controller with an operator's certificate against,
    /// instead of the system roots.
    #[arg(long, env = "KILN_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// `kiln submit`.
#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    controller: ControllerFlags,
    /// The plugin: a crate directory, a .tar.gz or .zip of one, or a single lib.rs file.
    #[arg(long)]
    plugin: PathBuf,
    /// The input: a file, a directory (its files, sorted by path) or a glob pattern, uploaded
    /// to the controller; or a `file://` URL (an object or a prefix) that the workers read
    /// themselves; repeat it for more, in order. UTF-8 text, plain, gzip or zstd (told by its
    /// bytes, decompressed as it is read); lines are the unit of work.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Chunks in flight per worker (default: as many as each worker runs at once).
    #[arg(long)]
    processes: Option<u32>,
    /// Parameters passed to the plugin's `new`.
    #[arg(long, default_value = "")]
    params: String,
    /// Who the job belongs to: workers keep each owner's builds and executors apart
    /// (default: cli, the API key's holder; letters, digits and `._-:@+`).
    #[arg(long, default_value = kiln_engine::owner::KEY_HOLDER)]
    owner: String,
    /// The size of the chunks the input is cut into, e.g. 4MiB or 65536 (default: 4MiB for an
    /// upload; for an input by reference, about four chunks per slot, from 4MiB up to 24MiB).
    #[arg(long, value_parser = crate::parse_size)]
    chunk_size: Option<usize>,
    /// How many times a chunk may be tried before the job fails (default: 4).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// A limit on each executor's address space, e.g. 2GiB, within the workers' own; a chunk
    /// that exceeds it costs an attempt (default: the workers' limit).
    #[arg(long, value_parser = crate::parse_memory_limit)]
    memory_limit: Option<usize>,
    /// The longest one chunk may run, in seconds, within the workers' own timeout; a chunk
    /// that takes longer costs an attempt (default: the workers' timeout).
    #[arg(long)]
    timeout: Option<u64>,
    /// Do not start speculative copies of chunks that run far longer than the others.
    #[arg(long)]
    no_speculation: bool,
    /// Seconds to keep trying to reach a controller that went away (restarted, cut off) while
    /// the input uploads or the job is followed.
    #[arg(long, default_value_t = kiln_engine::client::RECONNECT_PATIENCE.as_secs())]
    patience: u64,
    /// Cancel the job on Ctrl-C (by default the job goes on, and a second Ctrl-C cancels it).
    #[arg(long)]
    cancel_on_interrupt: bool,
    /// Print the job's id and return without waiting for it.
    #[arg(long, conflicts_with = "output")]
    detach: bool,
    /// Write the result to this file (replaced whole once the job succeeds, never left half
    /// written) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// `kiln status`, `kiln result` and `kiln cancel`.
#[derive(clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    controller: ControllerFlags,
    /// The job's id.
    job: JobId,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `kiln cluster`: the workers, or `remove`.
#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Option<ClusterAction>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(clap::Subcommand)]
enum ClusterAction {
    /// Remove a worker: its work goes elsewhere, its certificate is revoked and its key is
    /// refused if it registers again.
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
struct RemoveArgs {
    #[command(flatten)]
    controller: ControllerFlags,
    /// The worker's id (see `kiln cluster`).
    worker: u64,
}

/// `kiln jobs`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    controller: ControllerFlags,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Uploads the plugin and input, then (without `--detach`) shows progress and prints the result.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let options = SubmitOptions {
        owner: args.owner,
        params: args.params,
        processes: args.processes.unwrap_or(0),
        input_name: String::new(),
        input_files: Vec::new(),
        max_attempts: args.max_attempts.unwrap_or(0),
        chunk_size: args.chunk_size.map_or(0, |size| size as u64),
        memory_limit: args.memory_limit.map_or(0, |bytes| bytes as u64),
        chunk_timeout_ms: args.timeout.map_or(0, |seconds| seconds.max(1).saturating_mul(1000)),
        no_speculation: args.no_speculation,
    };
    if let Some(path) = &args.output {
        check_output_dir(path)?;
    }
    block_on(async {
        let client = connect(args.controller).await?;
        client.set_patience(Duration::from_secs(args.patience));
        let bar = progress_bar(0, "{spinner} uploading {bytes} ({bytes_per_sec}) {msg}");
        let retry_bar = bar.clone();
        client.on_retry(move |retrying| {
            let sent = indicatif::HumanBytes(retrying.sent);
            let line = format!("controller unreachable, retrying (job {}, {sent} sent)", retrying.job);
            if retry_bar.is_hidden() {
                note(&line);
            }
            retry_bar.set_message(line);
        });
        let uploaded = |bytes| {
            bar.set_position(bytes);
            bar.set_message("");
        };
        let job = client
            .submit_files(&args.plugin, &args.input, options, &uploaded)
            .await
            .context("cannot submit the job")?;
        bar.finish_and_clear();
        if args.detach {
            return println(job);
        }
        note(format_args!("submitted job {job}"));
        tokio::select! {
            followed = follow(&client, job, args.output.as_deref()) => followed,
            interrupted = on_interrupt(&client, job, args.cancel_on_interrupt) => interrupted,
        }
    })
}

/// How long after a first Ctrl-C a second one cancels the job.
const SECOND_INTERRUPT: Duration = Duration::from_secs(3);

/// `kiln submit` was interrupted (Ctrl-C) while it followed a job; it exits with 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Waits for Ctrl-C while a job is followed. The job runs on the cluster whatever happens to
/// this command: the first Ctrl-C says so and how to follow or cancel it; a second one within
/// [`SECOND_INTERRUPT`] (or the first, with `--cancel-on-interrupt`) cancels it.
async fn on_interrupt(client: &Client, job: JobId, cancel_on_interrupt: bool) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("cannot listen for Ctrl-C")?;
    if !cancel_on_interrupt {
        note(format_args!(
            "\ninterrupted: job {job} goes on without this command; `kiln status {job}` shows where it stands, \
             `kiln result {job}` prints its result once it ends and `kiln cancel {job}` cancels it \
             (press Ctrl-C again within {} s to cancel it now)",
            SECOND_INTERRUPT.as_secs()
        ));
        if tokio::time::timeout(SECOND_INTERRUPT, tokio::signal::ctrl_c()).await.is_err() {
            return Err(Interrupted.into());
        }
    }
    let status = client
        .cancel(job)
        .await
        .with_context(|| format!("cannot cancel job {job}: `kiln cancel {job}` tries again"))?;
    note(format_args!("\ncancelled job {job}: it is {}", status.state.as_str()));
    Err(Interrupted.into())
}

/// Refuses an output file whose directory does not exist, before anything is submitted.
fn check_output_dir(path: &Path) -> anyhow::Result<()> {
    let dir = output_dir(path);
    if !dir.is_dir() {
        anyhow::bail!(
            "cannot write the result to {}: the directory {} does not exist: create it or name another file",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

fn output_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes a job's result to `path` piece by piece as it comes, through a temporary file beside
/// it, so that the file is either the whole result or untouched.
async fn write_output(client: &Client, path: &Path, job: JobId) -> anyhow::Result<()> {
    let cannot_write = |error: std::io::Error| {
        anyhow::Error::new(error).context(format!(
            "cannot write the result of job {job} to {}: it stays on the controller; `kiln result {job}` prints it",
            path.display()
        ))
    };
    let file = tempfile::NamedTempFile::new_in(output_dir(path)).map_err(cannot_write)?;
    let mut out = tokio::fs::File::from_std(file.as_file().try_clone().map_err(cannot_write)?);
    match client.result_to(job, &mut out).await {
        Ok(_) => {}
        Err(ClientError::Output { source, .. }) => return Err(cannot_write(source)),
        Err(error) if error.is_transient() => return Err(result_unreachable(job, &error)),
        Err(error) => return Err(error.into()),
    }
    let finished = async {
        out.write_all(b"\n").await?;
        out.sync_all().await
    };
    finished.await.map_err(cannot_write)?;
    file.persist(path).map_err(|e| cannot_write(e.error))?;
    Ok(())
}

/// Shows a job's progress until it ends, its build first; prints its result (or writes it to
/// `output`) or fails with its reason.
async fn follow(client: &Client, job: JobId, output: Option<&Path>) -> anyhow::Result<()> {
    let building = progress_bar(0, "{spinner} {msg} [{bar:30}] {pos}/{len} crates ({elapsed})");
    let mut running: Option<ProgressBar> = None;
    let mut statuses = std::pin::pin!(client.watch(job));
    let mut last = None;
    while let Some(status) = statuses.next().await {
        let status = status.map_err(|error| {
            anyhow::anyhow!(
                "stopped following job {job}: {}: the job goes on without this command; `kiln status {job}` \
                 shows where it stands, `kiln result {job}` prints its result once it ends and \
                 `kiln cancel {job}` cancels it",
                kiln_engine::errors::chain(&error)
            )
        })?;
        // The build's bar until the build ends (or a chunk is done), then the chunks'.
        let building_now = running.is_none()
            && status.chunks_done == 0
            && !status.state.is_final()
            && status.build.as_ref().is_none_or(|build| !build.is_finished());
        match status.build.as_ref().filter(|_| building_now) {
            Some(build) => {
                building.set_length(u64::from(build.crates_total));
                building.set_position(u64::from(build.crates_done));
                building.set_message(match build.current.as_str() {
                    "" => "compiling the plugin".to_owned(),
                    current => format!("compiling {current}"),
                });
            }
            None if building_now => building.set_message("waiting for a worker to build the plugin"),
            None => {
                let bar = running.get_or_insert_with(|| {
                    building.finish_and_clear();
                    progress_bar(0, "{spinner} {msg} [{bar:30}] {pos}/{len} chunks ({elapsed})")
                });
                bar.set_length(status.n_chunks);
                bar.set_position(status.chunks_done);
                bar.set_message(progress_message(&status));
            }
        }
        last = Some(status);
    }
    building.finish_and_clear();
    if let Some(bar) = running {
        bar.finish_and_clear();
    }
    if let Some(status) = &last {
        note(summary(status));
    }
    // A failure or cancellation comes back as an error with its reason.
    match output {
        Some(path) => {
            write_output(client, path, job).await?;
            note(format_args!("wrote the result to {}", path.display()));
        }
        None => write_result(client, job).await?,
    }
    super::logs::note_printed(client, job).await;
    Ok(())
}

/// The job ended, but the controller went away for longer than the client's patience before
/// its result was read: it is stored there, and `kiln result` fetches it later.
fn result_unreachable(job: JobId, error: &ClientError) -> anyhow::Error {
    anyhow::anyhow!(
        "job {job} ended, but its result could not be fetched: {}: it is kept on the controller; \
         `kiln result {job}` prints it once the controller answers",
        kiln_engine::errors::chain(error)
    )
}

/// Writes the job's result to stdout as it comes from the controller, piece by piece, with a
/// line end after it.
async fn write_result(client: &Client, job: JobId) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    match client.result_to(job, &mut stdout).await {
        Ok(_) => println(""),
        Err(ClientError::Output { source, .. }) => Err(stdout_error(source)),
        Err(error) if error.is_transient() => Err(result_unreachable(job, &error)),
        Err(error) => Err(error.into()),
    }
}

/// `kiln status JOB`.
pub fn status(args: JobArgs) -> anyhow::Result<()> {
    block_on(async {
        let client = connect(args.controller).await?;
        let status = client.status(args.job).await?;
        if args.json { println(serde_json::to_string_pretty(&status)?) } else { print(describe(&status)) }
    })
}

/// `kiln result JOB`.
pub fn result(args: JobArgs) -> anyhow::Result<()> {
    block_on(async {
        let client = connect(args.controller).await?;
        write_result(&client, args.job).await
    })
}

/// `kiln logs JOB`.
pub fn logs(args: JobArgs) -> anyhow::Result<()> {
    block_on(async {
        let client = connect(args.controller).await?;
        let outputs = client.plugin_output(args.job).await?;
        super::logs::print_outputs(args.job, &outputs, args.json)
    })
}

/// `kiln cancel JOB`.
pub fn cancel(args: JobArgs) -> anyhow::Result<()> {
    block_on(async {
        let client = connect(args.controller).await?;
        let status = client.cancel(args.job).await?;
        if args.json {
            println(serde_json::to_string_pretty(&status)?)
        } else {
            println(format_args!("job {} is {}", status.id, status.state.as_str()))
        }
    })
}

/// `kiln jobs`.
pub fn jobs(args: ListArgs) -> anyhow::Result<()> {
    block_on(async {
        let client = connect(args.controller).await?;
        let jobs = client.list().await?;
        if args.json {
            return println(serde_json::to_string_pretty(&jobs)?);
        }
        let mut table =
            format!("{:>6}  {:<12} {:<16} {:>15}  {:<20} INPUT\n", "JOB", "STATE", "OWNER", "CHUNKS", "CREATED");
        for job in jobs {
            let chunks = format!("{}/{}", job.chunks_done, job.n_chunks);
            let created = age(job.created_ms);
            let (state, owner) = (job.state.as_str(), shorten(&job.owner, 16));
            table.push_str(&format!(
                "{:>6}  {:<12} {:<16} {:>15}  {:<20} {}\n",
                job.id, state, owner, chunks, created, job.input_name
            ));
        }
        print(table)
    })
}

/// `kiln cluster` and `kiln cluster remove WORKER`.
pub fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    if let Some(ClusterAction::Remove(remove)) = args.action {
        return block_on(async {
            let client = connect(remove.controller).await?;
            client.remove_worker(remove.worker).await?;
            note(format_args!("removed worker {}", remove.worker));
            Ok(())
        });
    }
    let args = args.list;
    block_on(async {
        let client = connect(args.controller).await?;
        let info = client.cluster_info().await?;
        if args.json {
            return println(serde_json::to_string_pretty(&info)?);
        }
        let mut text =
            format!("controller {}, {} active jobs, {} workers\n", info.version, info.active_jobs, info.workers.len());
        for worker in info.workers {
            text.push_str(&format!(
                "  worker {} at {} ({}): {} processes, {} in flight ({} calls sent ahead), {} chunks done, seen {} ms ago\n",
                worker.worker_id,
                worker.address,
                worker.hostname,
                worker.processes,
                worker.in_flight,
                worker.held_ahead,
                worker.chunks_done,
                worker.last_seen_ms
            ));
        }
        print(text)
    })
}

fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(work)
}

async fn connect(flags: ControllerFlags) -> anyhow::Result<Client> {
    let key = key_or_stored(flags.api_key, "api_key", "--api-key", "KILN_API_KEY")?;
    Ok(Client::connect_with(&flags.controller, Secret::new(key), flags.ca_file.as_deref()).await?)
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
fn progress_bar(length: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests;
