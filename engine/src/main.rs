//! The `kiln` command: parses flags, builds a configuration, calls the engine, maps errors to
//! exit codes.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln_engine::local::{LocalConfig, run_local};
use kiln_engine::telemetry::{LogFormat, init_logging};

/// Kiln runs your map-reduce plugins over your own machines.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// How log lines on stderr are written: `human`, or `json` (one object per line, with the
    /// job, chunk, worker and owner of each event's spans); `RUST_LOG` sets the levels.
    #[arg(long, global = true, value_enum, env = "KILN_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a plugin and run it over files on this machine, with no cluster.
    RunLocal(RunLocalArgs),
    /// Run a controller: take jobs from clients and spread them over the workers that join.
    Controller(cli::cluster::ControllerArgs),
    /// Run a worker: join a controller, build its plugins and run their chunks.
    Worker(cli::cluster::WorkerArgs),
    /// Submit a job to a controller; show its progress and print its result.
    Submit(cli::jobs::SubmitArgs),
    /// Show a job's status.
    Status(cli::jobs::JobArgs),
    /// Print the result of a job that succeeded.
    Result(cli::jobs::JobArgs),
    /// Cancel a job.
    Cancel(cli::jobs::JobArgs),
    /// Print what a job's plugin printed (stdout and stderr), per chunk.
    Logs(cli::jobs::JobArgs),
    /// List the controller's jobs, newest first.
    Jobs(cli::jobs::ListArgs),
    /// Show the cluster's workers and load, or remove a worker.
    Cluster(cli::jobs::ClusterArgs),
    /// Create a new plugin crate from the template, ready for `cargo test` and `kiln run-local`.
    New(NewArgs),
    /// Serve one plugin over stdin and stdout (started by Kiln itself).
    #[command(hide = true)]
    Exec(kiln_engine::worker::executor::process::ExecArgs),
    /// Run a plugin build's command in the build sandbox (started by Kiln's builder).
    #[command(hide = true, name = "sandboxed-build")]
    SandboxedBuild(kiln_engine::worker::builder::sandboxed::SandboxedBuildArgs),
}

#[derive(clap::Args)]
struct NewArgs {
    /// The new crate's package name; the crate is created in a directory of that name.
    name: String,
    /// The directory in which to create the crate.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// Where the plugin API this kiln carries is written for the crate's `cargo test` (default:
    /// the plugin cache, `~/.cache/kiln`).
    #[arg(long, env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunLocalArgs {
    /// The plugin: a crate directory, a .tar.gz or .zip of one, or a single lib.rs file.
    #[arg(long)]
    plugin: PathBuf,
    /// The input: a file, a directory (its files, sorted by path) or a glob pattern; repeat it
    /// for more, in order. UTF-8 text, plain, gzip or zstd (told by its bytes); lines are the
    /// unit of work.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Parameters passed to the plugin's `new`.
    #[arg(long, default_value = "")]
    params: String,
    /// The size of the chunks the input is cut into, e.g. 4MiB or 65536. By default about four
    /// chunks per process, from 4MiB up to 24MiB (less under --memory-limit).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<usize>,
    /// Attempts at a chunk before the run fails (0: the cluster's default, 4). As on a cluster, a
    /// panic or crash that repeats word for word ends the run at its second attempt, and the
    /// plugin's own `Err` at its first.
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// The largest output the run may have (KiB, MiB, GiB); a larger one fails the run and
    /// says so. The output is kept in TMPDIR until it is printed.
    #[arg(long, value_parser = parse_size, default_value = "4GiB")]
    max_result_size: usize,
    /// The longest line the input may have (KiB, MiB, up to 256MiB); a longer one fails the
    /// run naming it. Memory grows with the longest line where lines are longer than chunks.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    max_line_size: usize,
    #[command(flatten)]
    host: cli::host::HostArgs,
}

/// What the commands that are not daemons log unless `RUST_LOG` says otherwise: Kiln's own
/// warnings, and nothing from the libraries beneath (tarpc's `DeadlineExceeded` during a stall
/// the client recovers from reads as fatal, and a failure reaches the user as an error anyway).
const CLI_LOG_FILTER: &str = "off,kiln=warn,kiln_engine=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    // The daemons say what they do; the other commands only what went wrong.
    let result = match cli.command {
        // The executor's stderr carries the plugin's own output; it logs nothing itself.
        // Confines itself and becomes cargo; it never logs.
        Command::SandboxedBuild(args) => {
            eprintln!("kiln sandboxed-build: {}", kiln_engine::worker::builder::sandboxed::run(args));
            return ExitCode::from(70);
        }
        Command::Exec(args) => {
            kiln_engine::memory::tune_for_executor();
            return match kiln_engine::worker::executor::process::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kiln exec: {e}");
                    ExitCode::from(70)
                }
            };
        }
        Command::RunLocal(args) => logged(format, CLI_LOG_FILTER, || run_local_command(args)),
        Command::Controller(args) => {
            kiln_engine::memory::tune_for_service();
            logged(format, "info", || cli::cluster::run_controller(args))
        }
        Command::Worker(args) => {
            kiln_engine::memory::tune_for_data_path();
            logged(format, "info", || cli::cluster::run_worker(args))
        }
        Command::Submit(args) => {
            // An upload's pieces of 8 MiB pass through it, as chunks through a worker.
            kiln_engine::memory::tune_for_data_path();
            logged(format, CLI_LOG_FILTER, || cli::jobs::submit(args))
        }
        Command::Status(args) => logged(format, CLI_LOG_FILTER, || cli::jobs::status(args)),
        Command::Result(args) => {
            kiln_engine::memory::tune_for_service();
            logged(format, CLI_LOG_FILTER, || cli::jobs::result(args))
        }
        Command::Cancel(args) => logged(format, CLI_LOG_FILTER, || cli::jobs::cancel(args)),
        Command::Logs(args) => logged(format, CLI_LOG_FILTER, || cli::jobs::logs(args)),
        Command::Jobs(args) => logged(format, CLI_LOG_FILTER, || cli::jobs::jobs(args)),
        Command::Cluster(args) => logged(format, CLI_LOG_FILTER, || cli::jobs::cluster(args)),
        Command::New(args) => logged(format, CLI_LOG_FILTER, || new_command(args)),
    };
    report(result)
}

/// Runs a command with logging in `format` at `default_level` (unless RUST_LOG says otherwise).
fn logged(format: LogFormat, default_level: &str, command: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    init_logging(format, default_level);
    command()
}

/// Prints a failure with its causes, each once, on stderr and picks the exit code.
/// A closed stdout (`kiln jobs | head`) is no failure: the command exits quietly.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        // It said what happens to the job already.
        Err(e) if e.is::<cli::jobs::Interrupted>() => ExitCode::from(130),
        Err(e) => {
            cli::output::note(format_args!("error: {}", kiln_engine::errors::chain(e.as_ref())));
            ExitCode::FAILURE
        }
    }
}

fn run_local_command(args: RunLocalArgs) -> anyhow::Result<()> {
    let (builder, executor, processes) = args.host.configs()?;
    let config = LocalConfig {
        plugin: args.plugin,
        inputs: args.input,
        processes,
        params: args.params,
        chunk_size: args.chunk_size,
        builder,
        executor,
        max_attempts: args.max_attempts,
        max_result_bytes: args.max_result_size as u64,
        max_line_bytes: args.max_line_size,
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let progress = |line: &str| cli::output::note(line);
    let report = runtime.block_on(run_local(&config, &progress))?;
    let seconds = report.run_time.as_secs_f64();
    cli::output::note(format_args!(
        "{} lines, {} chunks, {:.1} MB in {:.2} s ({:.0} MB/s){}",
        report.n_lines,
        report.n_chunks,
        report.n_bytes as f64 / 1e6,
        seconds,
        report.n_bytes as f64 / 1e6 / seconds.max(1e-9),
        if report.cached_build { "; plugin from cache" } else { "" }
    ));
    // The output goes to stdout as it is read from its file, never whole in memory.
    let mut stdout = std::io::stdout().lock();
    let mut output = report.output;
    std::io::copy(&mut output, &mut stdout)
        .and_then(|_| std::io::Write::write_all(&mut stdout, b"\n"))
        .and_then(|()| std::io::Write::flush(&mut stdout))
        .map_err(cli::output::stdout_error)?;
    // What the plugin printed follows on stderr: stdout stays the result alone.
    let printed = report.plugin_output.render();
    if !printed.is_empty() {
        cli::output::note(format_args!("plugin output:\n{}", printed.trim_end()));
    }
    Ok(())
}

fn new_command(args: NewArgs) -> anyhow::Result<()> {
    let cache_dir = match args.cache_dir {
        Some(dir) => dir,
        None => default_cache_dir().context("no cache directory: set --cache-dir or KILN_CACHE_DIR")?,
    };
    let cache_dir = std::path::absolute(&cache_dir).context("cannot make the cache directory's path absolute")?;
    let crate_dir = kiln_engine::plugin_source::new_plugin_crate(&args.path, &args.name, &cache_dir)?;
    cli::output::println(format!("created plugin crate {} in {}", args.name, crate_dir.display()))?;
    cli::output::println(format!(
        "next: cd {} && cargo test && kiln run-local --plugin . --input INPUT",
        crate_dir.display()
    ))
}

/// Where plugins are built and cached by default: `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`.
fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("kiln"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("kiln"))
}

/// Parses an executor's memory limit: a size ([`parse_size`]) that an executor can start in,
/// by the same rule the controller checks job specs with.
fn parse_memory_limit(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    kiln_engine::rules::limits::check_memory_limit(bytes as u64).map_err(|error| error.to_string())?;
    Ok(bytes)
}

/// Parses a byte size: a number with an optional KiB, MiB or GiB suffix (K, M, G also do).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| format!("'{text}' is not a size"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    match number.checked_mul(1 << shift) {
        Some(0) => Err("the size must be at least one byte".to_owned()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is too large")),
    }
}
