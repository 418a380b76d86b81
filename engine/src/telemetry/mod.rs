//! What the services tell their operator: logs (human-readable or JSON lines, filtered by
//! `RUST_LOG`) and Prometheus metrics on an address of their own.
//!
//! # Layout
//! - this file: [`LogFormat`] and [`init_logging`], shared by `kiln` and `kiln-web`.
//! - [`metrics`]: the `/metrics` endpoint, the process's memory and CPU, and RPC calls counted
//!   by method and outcome. Each role registers its own metrics (`controller`, `worker`,
//!   `kiln-web`); `docs/metrics.md` lists them all.

pub mod metrics;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message and fields.
    #[default]
    Human,
    /// One JSON object per line for log collectors: `timestamp`, `level`, `target`, `fields`
    /// (with `message`), the current `span` and every enclosing span in `spans`, each with its
    /// fields (`job`, `chunk`, `worker`, `owner`).
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG`, else by `default_filter` (such as
/// `info` or `info,sqlx=warn`). Call it once, at the start of `main`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}
