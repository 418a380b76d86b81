//! Kiln's developer tasks, run as `cargo xtask TASK` (an alias in `.cargo/config.toml`).
//!
//! Each task is a module with an `Args` struct and a `run` function; `main` only dispatches.

mod bench;
mod chaos;
mod new_plugin;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kiln's developer tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Create a plugin crate from the scaffold in templates/plugin, ready for `cargo test`.
    NewPlugin(new_plugin::Args),
    /// Measure Kiln's speed against a direct rayon program and write BENCHMARKS.md.
    Bench(bench::Args),
    /// Kill processes of a cluster at random while jobs run, and check every job's result.
    Chaos(chaos::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::NewPlugin(args) => new_plugin::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Chaos(args) => chaos::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the error with its causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
