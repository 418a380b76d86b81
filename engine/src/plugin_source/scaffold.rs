//! A new plugin crate from the template in `templates/plugin/`, carried inside the binary: what
//! `kiln new` and `cargo xtask new-plugin` both make (xtask compiles this very file in, so the
//! two cannot drift apart). Only the standard library is used here, for that reason.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The template's files: their path in the new crate and their text, `{{name}}` not yet
/// replaced. The template's `gitignore` becomes `.gitignore` (a real one would apply to the
/// template directory itself).
pub const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../templates/plugin/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../templates/plugin/src/lib.rs")),
    ("README.md", include_str!("../../../templates/plugin/README.md")),
    (".gitignore", include_str!("../../../templates/plugin/gitignore")),
];

/// The placeholder for the package name in the template.
pub const NAME_PLACEHOLDER: &str = "{{name}}";

/// Appended to the generated `Cargo.toml`. A plugin is built alone, never as a member of an
/// enclosing workspace (such as a Kiln checkout's); without this table cargo refuses to build a
/// crate that sits inside another workspace's directory.
const OWN_WORKSPACE: &str = "
# This crate is a workspace of its own, even when it sits inside another workspace's directory:
# Kiln builds each plugin alone.
[workspace]
";

/// Why a crate could not be made; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaffoldError(pub String);

impl fmt::Display for ScaffoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScaffoldError {}

/// Creates the plugin crate `parent/name`, its `kiln-plugin-api` dependency pointed at
/// `api_dir` by a `.cargo/config.toml`; answers the crate's directory. Nothing is left behind
/// when it fails.
pub fn create(parent: &Path, name: &str, api_dir: &Path) -> Result<PathBuf, ScaffoldError> {
    validate_package_name(name)?;
    let io_error =
        |what: &str, path: &Path, e: io::Error| ScaffoldError(format!("cannot {what} {}: {e}", path.display()));
    fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    let crate_dir = parent.join(name);
    match fs::create_dir(&crate_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ScaffoldError(format!(
                "{} already exists: choose another name or directory",
                crate_dir.display()
            )));
        }
        Err(e) => return Err(io_error("create", &crate_dir, e)),
    }
    let written = (|| {
        for (path, text) in TEMPLATE {
            let mut text = text.replace(NAME_PLACEHOLDER, name);
            if *path == "Cargo.toml" {
                text.push_str(OWN_WORKSPACE);
            }
            write_file(&crate_dir.join(path), &text)?;
        }
        write_file(&crate_dir.join(".cargo/config.toml"), &cargo_config(api_dir))
    })();
    if let Err((path, e)) = written {
        // The directory did not exist before.
        let _ = fs::remove_dir_all(&crate_dir);
        return Err(io_error("write", &path, e));
    }
    Ok(crate_dir)
}

/// The new crate's `.cargo/config.toml`: it points `kiln-plugin-api` at `api_dir`, as Kiln's
/// builder does on a worker, so that plain `cargo test` works in the crate.
pub fn cargo_config(api_dir: &Path) -> String {
    // A TOML basic string, escaped by hand: the path is the only value.
    let path = api_dir.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# kiln-plugin-api is not published: use the copy this crate was made with (a Kiln checkout's,\n\
         # or the one the kiln binary carries). Kiln's builder does the same with its own copy when it\n\
         # builds the plugin on a worker.\n\
         [patch.crates-io]\n\
         kiln-plugin-api = {{ path = \"{path}\" }}\n"
    )
}

fn write_file(path: &Path, text: &str) -> Result<(), (PathBuf, io::Error)> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| (parent.to_owned(), e))?;
    }
    fs::write(path, text).map_err(|e| (path.to_owned(), e))
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
pub fn validate_package_name(name: &str) -> Result<(), ScaffoldError> {
    let fail = |why: String| Err(ScaffoldError(why));
    let Some(first) = name.chars().next() else {
        return fail("the plugin name is empty: give a package name such as `my-plugin`".to_owned());
    };
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return fail(format!(
            "invalid plugin name {name:?}: {bad:?} is not allowed, use ASCII letters, digits, `-` and `_`"
        ));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return fail(format!("invalid plugin name {name:?}: it must start with a letter or `_`"));
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!("invalid plugin name {name:?}: longer than {MAX_NAME_LEN} characters"));
    }
    if KEYWORDS.contains(&name.replace('-', "_").as_str()) {
        return fail(format!("invalid plugin name {name:?}: it is a Rust keyword"));
    }
    if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        return fail(format!("invalid plugin name {name:?}: the name is reserved by cargo"));
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

    #[test]
    fn an_existing_directory_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("kiln-scaffold-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let made = create(&dir, "p", Path::new("/api")).unwrap();
        assert!(made.join("src/lib.rs").is_file() && made.join(".gitignore").is_file());
        let manifest = fs::read_to_string(made.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"p\"") && manifest.contains("[workspace]"), "{manifest}");
        let error = create(&dir, "p", Path::new("/api")).unwrap_err();
        assert!(error.0.ends_with("already exists: choose another name or directory"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
