//! `cargo xtask new-plugin`: creates a plugin crate from the scaffold in `templates/plugin/`,
//! ready for `cargo test` and `cargo build` against this repository's `kiln-plugin-api`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Arguments of `cargo xtask new-plugin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new crate's package name; the crate is created in a directory of that name.
    pub name: String,
    /// The directory in which to create the crate.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: PathBuf,
}

/// The scaffold's files: their path in the new crate and their text, `{{name}}` not yet
/// replaced. The template's `gitignore` becomes `.gitignore` (a real one would apply to the
/// template directory itself).
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/plugin/Cargo.toml")),
    ("src/lib.rs", include_str!("../../templates/plugin/src/lib.rs")),
    ("README.md", include_str!("../../templates/plugin/README.md")),
    (".gitignore", include_str!("../../templates/plugin/gitignore")),
];

/// The placeholder for the package name in the template.
const NAME_PLACEHOLDER: &str = "{{name}}";

/// Appended to the generated `Cargo.toml`. A plugin is built alone, never as a member of an
/// enclosing workspace (such as this repository's, where `cargo xtask` runs); without this
/// table cargo refuses to build a crate that sits inside another workspace's directory.
const OWN_WORKSPACE: &str = "
# This crate is a workspace of its own, even when it sits inside another workspace's directory:
# Kiln builds each plugin alone.
[workspace]
";

/// Creates the plugin crate `args.path/args.name`.
pub fn run(args: &Args) -> Result<()> {
    validate_package_name(&args.name)?;
    let api_dir = plugin_api_dir()?;
    fs::create_dir_all(&args.path).with_context(|| format!("cannot create {}", args.path.display()))?;
    let crate_dir = args.path.join(&args.name);
    match fs::create_dir(&crate_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            bail!("{} already exists: choose another name or directory", crate_dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", crate_dir.display())),
    }
    if let Err(e) = write_crate(&crate_dir, &args.name, &api_dir) {
        // Leave nothing half-written behind; the directory did not exist before.
        let _ = fs::remove_dir_all(&crate_dir);
        return Err(e);
    }
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

fn write_crate(crate_dir: &Path, name: &str, api_dir: &Path) -> Result<()> {
    for (path, text) in TEMPLATE {
        let mut text = text.replace(NAME_PLACEHOLDER, name);
        if *path == "Cargo.toml" {
            text.push_str(OWN_WORKSPACE);
        }
        write_file(&crate_dir.join(path), &text)?;
    }
    write_file(&crate_dir.join(".cargo/config.toml"), &cargo_config(api_dir))
}

/// The new crate's `.cargo/config.toml`: it points `kiln-plugin-api` at this repository's copy,
/// as Kiln's builder does on a worker, so that plain `cargo test` works in the crate.
fn cargo_config(api_dir: &Path) -> String {
    // A TOML basic string, escaped by hand: the path is the only value.
    let path = api_dir.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# kiln-plugin-api is not published: use the copy in the Kiln checkout this crate was made from.\n\
         # Kiln's builder does the same with its own copy when it builds the plugin on a worker.\n\
         [patch.crates-io]\n\
         kiln-plugin-api = {{ path = \"{path}\" }}\n"
    )
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Names cargo refuses as package names, or accepts only to fail on later.
#[rustfmt::skip]
const RESERVED_NAMES: &[&str] = &[
    // The standard library's crates and cargo's test harness.
    "alloc", "core", "proc_macro", "proc-macro", "std", "test",
    // Directories inside cargo's target directory.
    "build", "deps", "examples", "incremental",
    // Windows device names.
    "aux", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8", "com9", "con", "lpt1",
    "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9", "nul", "prn",
];

/// Rust keywords, which cannot be a library's name (the package name with `-` as `_`).
const KEYWORDS: &[&str] = &[
    "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro",
    "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
    "trait", "true", "try", "type", "typeof", "union", "unsafe", "unsized", "use", "virtual", "where", "while",
    "yield",
];

/// The longest package name crates.io accepts; a longer one is surely a mistake.
const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is a valid cargo package name whose library name is a Rust identifier.
fn validate_package_name(name: &str) -> Result<()> {
    let Some(first) = name.chars().next() else {
        bail!("the plugin name is empty: give a package name such as `my-plugin`")
    };
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        bail!("invalid plugin name {name:?}: {bad:?} is not allowed, use ASCII letters, digits, `-` and `_`")
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        bail!("invalid plugin name {name:?}: it must start with a letter or `_`")
    }
    if name.len() > MAX_NAME_LEN {
        bail!("invalid plugin name {name:?}: longer than {MAX_NAME_LEN} characters")
    }
    let lib_name = name.replace('-', "_");
    if KEYWORDS.contains(&lib_name.as_str()) {
        bail!("invalid plugin name {name:?}: it is a Rust keyword")
    }
    if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        bail!("invalid plugin name {name:?}: the name is reserved by cargo")
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_package_names() {
        for name in ["wordcount", "my-plugin", "my_plugin2", "_private", "A"] {
            assert!(validate_package_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_names_cargo_refuses() {
        let cases = [
            ("", "the plugin name is empty"),
            ("2fast", "it must start with a letter"),
            ("-x", "it must start with a letter"),
            ("my plugin", "' ' is not allowed"),
            ("my.plugin", "'.' is not allowed"),
            ("../escape", "'.' is not allowed"),
            ("café", "'é' is not allowed"),
            ("fn", "it is a Rust keyword"),
            ("std", "reserved by cargo"),
            ("proc-macro", "reserved by cargo"),
            ("CON", "reserved by cargo"),
        ];
        for (name, message) in cases {
            let error = validate_package_name(name).unwrap_err().to_string();
            assert!(error.contains(message), "{name:?}: {error}");
        }
        assert!(validate_package_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn config_points_at_the_api_with_an_escaped_path() {
        let config = cargo_config(Path::new(r#"/a "b"/plugin-api"#));
        assert!(config.contains(r#"kiln-plugin-api = { path = "/a \"b\"/plugin-api" }"#), "{config}");
    }
}
