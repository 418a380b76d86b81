//! `kiln controller` and `kiln worker`: the cluster's daemons. Each prints `listening on ADDR`
//! on stderr as soon as it is bound, and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kiln_engine::controller::{self, ControllerConfig};
use kiln_engine::rpc::Secret;
use kiln_engine::worker::service::{self, WorkerConfig};

use super::host::HostArgs;
use super::{DEFAULT_CONTROLLER, default_data_dir, key_or_stored, shutdown_signal};

/// `kiln controller`.
#[derive(clap::Args)]
pub struct ControllerArgs {
    /// The address to serve clients and workers on.
    #[arg(long, default_value = DEFAULT_CONTROLLER)]
    listen: SocketAddr,
    /// Where jobs, plugins, inputs and keys are kept (default: $XDG_DATA_HOME/kiln or
    /// ~/.local/share/kiln).
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The key clients must present (default: the one stored in DATA_DIR, or a new one).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The token workers must present to join (default: the one stored in DATA_DIR, or a new
    /// one).
    #[arg(long, env = "KILN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Seconds without a heartbeat after which a worker counts as lost.
    #[arg(long, default_value_t = 3.0)]
    heartbeat_timeout: f64,
    /// Seconds an upload may go without a new byte of input before its job fails as
    /// abandoned and its partial input is deleted (clients retry for 5 minutes by default).
    #[arg(long, default_value_t = kiln_engine::controller::DEFAULT_UPLOAD_ABANDON.as_secs())]
    upload_abandon: u64,
    /// Serve plain TCP instead of TLS: keys, plugins and inputs cross the network readable by
    /// anyone. Only on a loopback address, unless --insecure-plaintext-allow-remote.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Allow --insecure-plaintext on an address other hosts reach.
    #[arg(long, requires = "insecure_plaintext")]
    insecure_plaintext_allow_remote: bool,
    /// A certificate chain (PEM) to present to clients instead of the cluster's own, e.g. for
    /// a public address; clients check it against the system roots or their --ca-file.
    #[arg(long, requires = "tls_key", conflicts_with = "insecure_plaintext")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a worker's certificate is valid; workers renew theirs when two thirds are gone.
    #[arg(long, default_value_t = 86_400)]
    worker_cert_lifetime: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, figures only: bind it to
    /// loopback or a private address). Off unless given.
    #[arg(long, env = "KILN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The largest result a job may have (KiB, MiB, GiB): a job whose output is larger fails
    /// and says so. Results are kept in the data directory.
    #[arg(long, value_parser = crate::parse_size, default_value = "4GiB")]
    max_result_size: usize,
    /// Calls (batches of chunks) sent to each worker per slot ahead of its free slots, to run
    /// as soon as a slot frees: this hides the latency of the link to the worker while its
    /// round trip is shorter than a call's run. 0 sends a call only to a free slot.
    #[arg(long, default_value_t = kiln_engine::controller::DEFAULT_PREFETCH)]
    prefetch: u32,
    /// The longest line an input may have, uploaded or read by reference by the workers (KiB,
    /// MiB, up to 256MiB): a job with a
    /// longer line fails naming it. Each process on a chunk's path holds a few copies of its
    /// longest line, so this bounds their memory where lines are longer than chunks.
    #[arg(long, value_parser = crate::parse_size, default_value = "64MiB")]
    max_line_size: usize,
    /// A directory whose files jobs may name as `file://` inputs, read by the workers
    /// themselves (a filesystem every worker sees at the same path); repeat it for more.
    /// Without it, `file://` inputs are refused.
    #[arg(long, value_name = "DIR")]
    file_input_root: Vec<PathBuf>,
    /// A prefix (`s3://bucket/path`, `https://host/path`) below which jobs may name inputs,
    /// read by the workers themselves with the AWS_* environment of the controller and the
    /// workers; repeat it for more. Without it, s3:// and http(s):// inputs are refused: a
    /// client must not make the cluster fetch arbitrary URLs.
    #[arg(long, value_name = "PREFIX")]
    input_url_allow: Vec<kiln_engine::input::allow::UrlPrefix>,
}

/// `kiln worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The controller's address.
    #[arg(long, env = "KILN_CONTROLLER", default_value = DEFAULT_CONTROLLER)]
    controller: String,
    /// The cluster's join token (default: the one a controller on this machine stored).
    #[arg(long, env = "KILN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    #[command(flatten)]
    host: HostArgs,
    /// The address the worker serves the controller on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address the controller should dial, when it is not the one bound (NAT, containers).
    #[arg(long)]
    advertise: Option<String>,
    /// With a join token of an --insecure-plaintext controller, allow a --listen address
    /// other hosts reach.
    #[arg(long)]
    insecure_plaintext_allow_remote: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, figures only: bind it to
    /// loopback or a private address). Off unless given.
    #[arg(long, env = "KILN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// Runs a controller until SIGINT or SIGTERM.
pub fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir().context("no data directory: set --data-dir or KILN_DATA_DIR")?,
    };
    let mut config = ControllerConfig::new(args.listen, data_dir.clone());
    config.api_key = args.api_key.filter(|key| !key.is_empty()).map(Secret::new);
    config.join_token = args.join_token.filter(|token| !token.is_empty()).map(Secret::new);
    if !(args.heartbeat_timeout.is_finite() && args.heartbeat_timeout > 0.0) {
        anyhow::bail!("--heartbeat-timeout must be a positive number of seconds");
    }
    config.heartbeat_timeout = Duration::from_secs_f64(args.heartbeat_timeout);
    if args.upload_abandon == 0 {
        anyhow::bail!("--upload-abandon must be a positive number of seconds");
    }
    config.upload_abandon = Duration::from_secs(args.upload_abandon);
    config.plaintext = args.insecure_plaintext;
    config.plaintext_allow_remote = args.insecure_plaintext_allow_remote;
    config.operator_cert = args.tls_cert.zip(args.tls_key);
    config.worker_cert_lifetime = Duration::from_secs(args.worker_cert_lifetime.max(1));
    config.metrics_listen = args.metrics_listen;
    config.max_result_bytes = args.max_result_size as u64;
    config.prefetch = args.prefetch;
    config.max_line_bytes = args.max_line_size;
    for root in &args.file_input_root {
        let resolved = std::fs::canonicalize(root)
            .with_context(|| format!("cannot use --file-input-root {}: check the directory", root.display()))?;
        config.file_input_roots.push(resolved);
    }
    config.input_url_allow = args.input_url_allow;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let running = controller::start(config)
            .await
            .with_context(|| format!("cannot start the controller on {}", args.listen))?;
        // Printed once, when made: afterwards they are only in the data directory.
        let generated = running.generated();
        for name in &generated {
            let (what, key, file) = if name.contains("api") {
                ("API key (for clients)", running.client_key(), "api_key")
            } else {
                ("join token (for workers)", running.worker_token(), "join_token")
            };
            eprintln!("generated a new {what}: {} (stored in {})", key.to_text(), data_dir.join(file).display());
        }
        match running.fingerprint() {
            Some(fingerprint) => eprintln!("cluster CA fingerprint: {fingerprint}"),
            None => eprintln!("WARNING: --insecure-plaintext: nothing on this cluster's links is private"),
        }
        if generated.len() < 2 {
            // Keys given on the command line: say the form clients and workers need, not the secret.
            let trust = |key: &kiln_engine::tls::key::Credential| {
                key.to_text().rsplit_once('.').map(|(head, _)| head.to_owned()).unwrap_or_default()
            };
            eprintln!(
                "clients use {}.<API key>, workers {}.<join token>",
                trust(running.client_key()),
                trust(running.worker_token())
            );
        }
        if let Some(addr) = running.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics");
        }
        eprintln!("listening on {}", running.local_addr());
        let signal = shutdown_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        signal
    })
}

/// Runs a worker until SIGINT or SIGTERM, or until the controller refuses it for good.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let join_token = key_or_stored(args.join_token, "join_token", "--join-token", "KILN_JOIN_TOKEN")?;
    let (builder, executor, processes) = args.host.configs()?;
    let mut config = WorkerConfig::new(args.controller, Secret::new(join_token), builder, executor);
    config.processes = u32::try_from(processes).unwrap_or(u32::MAX);
    config.listen = args.listen;
    config.advertise = args.advertise;
    config.plaintext_allow_remote = args.insecure_plaintext_allow_remote;
    config.metrics_listen = args.metrics_listen;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let worker = service::start(config).await?;
        if let Some(addr) = worker.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics");
        }
        eprintln!("listening on {}", worker.local_addr());
        tokio::select! {
            signal = shutdown_signal() => {
                tracing::info!("shutting down");
                worker.shutdown().await;
                signal
            }
            error = worker.failed() => {
                worker.shutdown().await;
                Err(error.into())
            }
        }
    })
}
