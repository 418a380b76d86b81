//! `cargo xtask new-plugin`: creates a plugin crate from the scaffold in `templates/plugin/`,
//! ready for `cargo test` and `cargo build` against this repository's `kiln-plugin-api`. The
//! crate is the one `kiln new` makes: both use the engine's `plugin_source/scaffold.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[path = "../../engine/src/plugin_source/scaffold.rs"]
#[allow(dead_code)] // The engine uses more of it than xtask does.
mod scaffold;

/// Arguments of `cargo xtask new-plugin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new crate's package name; the crate is created in a directory of that name.
    pub name: String,
    /// The directory in which to create the crate.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: PathBuf,
}

/// Creates the plugin crate `args.path/args.name`.
pub fn run(args: &Args) -> Result<()> {
    scaffold::validate_package_name(&args.name)?;
    let crate_dir = scaffold::create(&args.path, &args.name, &plugin_api_dir()?)?;
    println!("created plugin crate {} in {}", args.name, crate_dir.display());
    println!("next: cd {} && cargo test", crate_dir.display());
    Ok(())
}

/// This repository's `plugin-api` directory, found from where xtask was compiled.
fn plugin_api_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    fs::canonicalize(&dir)
        .with_context(|| format!("cannot find kiln-plugin-api at {}: run xtask from a Kiln checkout", dir.display()))
}
