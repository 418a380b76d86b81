//! The `kiln-web` command: parses flags, builds a [`WebConfig`], runs the web app until SIGINT
//! or SIGTERM. With no flags it serves http://127.0.0.1:8080 with SQLite in `./kiln-data` and
//! an embedded cluster. `kiln-web exec` (hidden) is the executor process the embedded workers
//! start to run plugin code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln_engine::telemetry::{LogFormat, init_logging};
use kiln_web::sealing::{SECRET_KEY_ENV, SecretKey};
use kiln_web::{DEFAULT_MAX_UPLOAD_BYTES, WebConfig};

/// Kiln's web application: upload plugins, run them on your clusters, watch them live.
#[derive(Parser)]
#[command(name = "kiln-web", version, about)]
struct Cli {
    /// Where to serve HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the SQLite database, the secret key (`secret.key`, unless KILN_WEB_SECRET_KEY gives
    /// it as 64 hex digits), uploads and the embedded cluster's data live.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "kiln-data")]
    data_dir: PathBuf,
    /// A PostgreSQL URL (postgres://USER@HOST/DB) to use instead of SQLite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Do not start the built-in "local" cluster, for a shared deployment: users then add their
    /// own clusters (the quickstart keeps it).
    #[arg(
        long,
        alias = "no-embedded-cluster",
        env = "KILN_WEB_NO_LOCAL_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_local_cluster: bool,
    /// How many workers the embedded cluster has.
    #[arg(long, default_value_t = 2)]
    embedded_workers: usize,
    /// A directory whose files runs on the embedded cluster may name as `file://` inputs;
    /// repeat it for more. Without it, such inputs are refused.
    #[arg(long, value_name = "DIR")]
    file_input_root: Vec<std::path::PathBuf>,
    /// A prefix (`s3://bucket/path`, `https://host/path`) below which runs on the embedded
    /// cluster may name inputs, read with the AWS_* environment of this server; repeat it for
    /// more. Without it, such inputs are refused: a web user must not make the cluster fetch
    /// arbitrary URLs.
    #[arg(long, value_name = "PREFIX")]
    input_url_allow: Vec<kiln_engine::input::allow::UrlPrefix>,
    /// The largest input file accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// The longest result a run may have, in bytes (kept in the data directory's results/); a
    /// longer one fails the run and says so. The embedded cluster's controller gets the same.
    #[arg(long, default_value_t = kiln_engine::rules::limits::DEFAULT_MAX_RESULT_BYTES)]
    max_result_bytes: u64,
    /// Log a session out after this many minutes without a request.
    #[arg(long, env = "KILN_WEB_SESSION_IDLE_MINUTES", default_value_t = 480)]
    session_idle_minutes: u64,
    /// Keep each run's input this many hours for "Run again" (0: do not keep inputs).
    #[arg(long, env = "KILN_WEB_KEEP_INPUTS_HOURS", default_value_t = 24)]
    keep_inputs_hours: u64,
    /// Mark cookies Secure (when a proxy serves the app over HTTPS).
    #[arg(long)]
    secure_cookies: bool,
    /// Let the embedded cluster run plugins without the sandbox, with this server's rights
    /// (its database, keys, every user's data): only where the host cannot sandbox and every
    /// user is trusted. Every job is logged with a warning.
    #[arg(long)]
    insecure_no_sandbox: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, apart from the site (plain HTTP,
    /// figures only: bind it to loopback or a private address). Off unless given.
    #[arg(long, env = "KILN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How log lines on stderr are written: `human`, or `json` (one object per line, with the
    /// fields of each event's spans); `RUST_LOG` sets the levels.
    #[arg(long, value_enum, env = "KILN_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one plugin over stdin and stdout (started by the embedded workers).
    #[command(hide = true)]
    Exec(kiln_engine::worker::executor::process::ExecArgs),
    /// Run a plugin build's command in the build sandbox (started by Kiln's builder).
    #[command(hide = true, name = "sandboxed-build")]
    SandboxedBuild(kiln_engine::worker::builder::sandboxed::SandboxedBuildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::SandboxedBuild(args)) = cli.command {
        // Confines itself and becomes cargo; it never logs.
        eprintln!("kiln-web sandboxed-build: {}", kiln_engine::worker::builder::sandboxed::run(args));
        return ExitCode::from(70);
    }
    if let Some(Command::Exec(args)) = cli.command {
        // The executor's stderr carries the plugin's own output; it logs nothing itself.
        return match kiln_engine::worker::executor::process::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln-web exec: {e}");
                ExitCode::from(70)
            }
        };
    }
    kiln_engine::memory::tune_for_service();
    init_logging(cli.log_format, "info,sqlx=warn");
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", kiln_engine::errors::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut config = WebConfig::new(cli.data_dir);
    // Only from the environment: a flag's value would show in every process listing.
    if let Some(text) = std::env::var_os(SECRET_KEY_ENV).filter(|text| !text.is_empty()) {
        let text = text.into_string().map_err(|_| anyhow::anyhow!("{SECRET_KEY_ENV} is not 64 hex digits"))?;
        config.secret_key = Some(SecretKey::from_hex(&text, SECRET_KEY_ENV)?);
    }
    config.listen = cli.listen;
    config.database_url = cli.database_url.filter(|url| !url.is_empty());
    config.embedded_cluster = !cli.no_local_cluster;
    config.embedded_workers = cli.embedded_workers;
    for root in &cli.file_input_root {
        let resolved = std::fs::canonicalize(root).map_err(|e| {
            anyhow::anyhow!("cannot use --file-input-root {}: {e}: check the directory", root.display())
        })?;
        config.file_input_roots.push(resolved);
    }
    config.input_url_allow = cli.input_url_allow;
    config.max_upload_bytes = cli.max_upload_bytes;
    config.max_result_bytes = cli.max_result_bytes;
    config.secure_cookies = cli.secure_cookies;
    config.input_retention = std::time::Duration::from_secs(cli.keep_inputs_hours.saturating_mul(3600));
    config.session_idle = std::time::Duration::from_secs(cli.session_idle_minutes.max(1).saturating_mul(60));
    config.sandbox = !cli.insecure_no_sandbox;
    config.metrics_listen = cli.metrics_listen;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let web = kiln_web::start(config).await.context("cannot start kiln-web")?;
        if let Some(addr) = web.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics");
        }
        eprintln!("listening on http://{}", web.local_addr());
        shutdown_signal().await?;
        tracing::info!("shutting down");
        web.shutdown().await;
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for SIGINT"),
        _ = terminate.recv() => Ok(()),
    }
}
