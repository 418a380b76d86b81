//! A job's input: an ordered list of files.
//!
//! A user names the input with sources, in order: files, directories (their files, sorted by
//! path) and glob patterns on this machine ([`expand`]), which the client uploads or run-local
//! reads; or URLs (`s3://`, `http://`, `https://`, `file://`) that the workers read by
//! reference ([`is_reference`]). Each file keeps the name the user gave it (the path as
//! written, or the directory as written joined with the file's path inside it), which plugins
//! see in `Chunk::file`. Compressed files are told by their first bytes and read decompressed
//! ([`decode`]).

pub mod allow;
pub mod compressed;
pub mod decode;
pub mod reference;
pub mod split;

use std::path::{Path, PathBuf};

/// A file of the input on this machine, with the name the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Its name as the user gave it: the path as written, or the directory or pattern as
    /// written joined with the file's path below it.
    pub name: String,
    /// Where to open it.
    pub path: PathBuf,
}

/// Why the input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// No source was given.
    #[error("no input given: name at least one file, directory, pattern or URL")]
    Empty,
    /// A source on this machine could not be read.
    #[error("cannot read the input {name}: {source}")]
    Read {
        /// The source or file as the user gave it.
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A directory or pattern holds no file.
    #[error("the input {name} holds no file: {why}")]
    NoFiles { name: String, why: &'static str },
    /// A pattern is not a valid glob.
    #[error("the input pattern {pattern} is not valid: {message}")]
    Pattern { pattern: String, message: String },
    /// A URL was given where only files on this machine can be used.
    #[error("the input {url} is a URL: {why}")]
    Reference { url: String, why: String },
    /// A URL that no cluster reads: with credentials, a query or an encoded separator (the message
    /// names no credential).
    #[error("{0}")]
    BadUrl(String),
}

/// Whether `source` names an input by reference (a URL the workers read themselves) rather
/// than a file, directory or pattern on this machine.
pub fn is_reference(source: &str) -> bool {
    ["s3://", "http://", "https://", "file://"]
        .iter()
        .any(|scheme| source.len() >= scheme.len() && source[..scheme.len()].eq_ignore_ascii_case(scheme))
}

/// Whether a name inside a directory is left out: hidden files and those starting with `_`,
/// as Hadoop leaves them out (`.crc` files, `_SUCCESS` markers, editors' swap files).
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|name| name.starts_with('.') || name.starts_with('_'))
}

/// The files of local `sources`, in order: a file as itself, a directory as its files (sorted
/// by path, recursively, leaving out names starting with `.` or `_`), a pattern as the files
/// it matches (sorted by path; directories it matches as their files). Blocking.
pub fn expand(sources: &[String]) -> Result<Vec<InputFile>, InputError> {
    if sources.is_empty() {
        return Err(InputError::Empty);
    }
    let mut files = Vec::new();
    for source in sources {
        if is_reference(source) {
            return Err(InputError::Reference {
                url: source.clone(),
                why: "only a cluster's workers read inputs by reference; give files on this machine".to_owned(),
            });
        }
        if source.contains(['*', '?', '[']) && !Path::new(source).exists() {
            expand_pattern(source, &mut files)?;
        } else {
            expand_path(source, Path::new(source), true, &mut files)?;
        }
    }
    Ok(files)
}

fn expand_pattern(pattern: &str, files: &mut Vec<InputFile>) -> Result<(), InputError> {
    let paths = glob::glob(pattern)
        .map_err(|e| InputError::Pattern { pattern: pattern.to_owned(), message: e.msg.to_owned() })?;
    let mut matched: Vec<PathBuf> = Vec::new();
    for path in paths {
        let path = path.map_err(|e| InputError::Read { name: e.path().display().to_string(), source: e.into() })?;
        matched.push(path);
    }
    matched.sort();
    let before = files.len();
    for path in matched {
        expand_path(&path.display().to_string(), &path, false, files)?;
    }
    if files.len() == before {
        return Err(InputError::NoFiles { name: pattern.to_owned(), why: "the pattern matches no file" });
    }
    Ok(())
}

/// Adds the file at `path`, or the files below the directory at `path`, named after `name`.
/// `named` says the user named this path itself (a directory then must hold a file).
fn expand_path(name: &str, path: &Path, named: bool, files: &mut Vec<InputFile>) -> Result<(), InputError> {
    let read_error = |source| InputError::Read { name: name.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if !meta.is_dir() {
        files.push(InputFile { name: name.to_owned(), path: path.to_owned() });
        return Ok(());
    }
    let before = files.len();
    let mut stack = vec![PathBuf::new()];
    let mut found = Vec::new();
    while let Some(below) = stack.pop() {
        let dir = path.join(&below);
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| InputError::Read { name: Path::new(name).join(&below).display().to_string(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| InputError::Read { name: dir.display().to_string(), source })?;
            if is_hidden(&entry.file_name()) {
                continue;
            }
            let relative = below.join(entry.file_name());
            // Links to files are followed; links to directories are not, so no loop is walked.
            let kind = entry
                .file_type()
                .map_err(|source| InputError::Read { name: relative.display().to_string(), source })?;
            let is_dir = kind.is_dir();
            if is_dir {
                stack.push(relative);
            } else if kind.is_file()
                || (kind.is_symlink() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()))
            {
                found.push(relative);
            }
        }
    }
    found.sort();
    files.extend(found.into_iter().map(|relative| InputFile {
        name: Path::new(name).join(&relative).display().to_string(),
        path: path.join(relative),
    }));
    if named && files.len() == before {
        return Err(InputError::NoFiles { name: name.to_owned(), why: "the directory holds no file" });
    }
    Ok(())
}

/// How a job shows its input: the one file's name, or the first and how many more.
pub fn describe(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[InputFile]) -> Vec<&str> {
        files.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn files_directories_and_patterns_expand_in_order_with_the_names_given() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in ["logs/b.txt", "logs/a.gz", "logs/sub/c.txt", "logs/.hidden", "logs/_SUCCESS", "one.txt"] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), "x\n").unwrap();
        }
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let at = |p: &str| root.join(p).display().to_string();
        let files = expand(&[at("one.txt"), at("logs"), at("logs/*.txt"), at("one.txt")]).unwrap();
        let expected =
            [at("one.txt"), at("logs/a.gz"), at("logs/b.txt"), at("logs/sub/c.txt"), at("logs/b.txt"), at("one.txt")];
        assert_eq!(names(&files), expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(files[3].path, root.join("logs/sub/c.txt"));

        let error = expand(&[at("empty")]).unwrap_err().to_string();
        assert_eq!(error, format!("the input {} holds no file: the directory holds no file", at("empty")));
        let error = expand(&[at("logs/*.csv")]).unwrap_err().to_string();
        assert!(error.ends_with("holds no file: the pattern matches no file"), "{error}");
        let error = expand(&[at("missing.txt")]).unwrap_err().to_string();
        assert!(error.starts_with(&format!("cannot read the input {}: ", at("missing.txt"))), "{error}");
        assert!(expand(&[]).is_err());
        assert!(matches!(expand(&["s3://bucket/key".to_owned()]), Err(InputError::Reference { .. })));
    }

    #[test]
    fn urls_are_told_from_paths() {
        for url in ["s3://b/k", "HTTPS://host/x", "http://h/", "file:///data/x"] {
            assert!(is_reference(url), "{url}");
        }
        for path in ["data/s3:/x", "/tmp/file", "file.txt", "s3"] {
            assert!(!is_reference(path), "{path}");
        }
        assert_eq!(describe(&["a".into(), "b".into(), "c".into()]), "a and 2 more");
    }
}
