//! The plugin builder: reading uploads safely, hashing them, and building them with real cargo
//! into cached libraries.
//!
//! Every test that compiles shares one cargo target directory, so abi_stable and serde compile
//! once per test run; each test has its own cache directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use kiln_engine::owner::Owner;
use kiln_engine::plugin_source::{SourceError, SourceLimits, SourceTree, read_source, read_source_with_limits};
use kiln_engine::worker::builder::{BuildError, BuildEvent, Builder, BuilderConfig};

const MANIFEST: &str = r#"[package]
name = "linecount"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
kiln-plugin-api = "0.1"
"#;

const LIB_RS: &str = r#"use kiln_plugin_api::{Chunk, MapReduce};

/// Counts lines.
pub struct LineCount;

impl MapReduce for LineCount {
    type Partial = u64;
    type Output = u64;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(LineCount)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
        Ok(chunk.lines().count() as u64)
    }

    fn aggregate(&self, partials: Vec<u64>) -> Result<u64, String> {
        Ok(partials.iter().sum())
    }
}

kiln_plugin_api::export_plugin!(LineCount);
"#;

/// A builder with a fresh cache in `cache_dir` and the tests' shared target directory,
/// building in the sandbox like a worker.
fn builder(cache_dir: &Path) -> Builder {
    Builder::new(BuilderConfig {
        cache_dir: cache_dir.to_owned(),
        target_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-target"),
        cargo: PathBuf::from("cargo"),
        sandbox: Some(PathBuf::from(env!("CARGO_BIN_EXE_kiln"))),
    })
}

/// The owner of every build here: the same as the other tests', so dependencies compile once.
fn cli() -> Owner {
    Owner::key_holder()
}

/// Writes `files` (path, contents) under `dir` and returns `dir`.
fn write_crate(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (path, contents) in files {
        let full = dir.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, contents).unwrap();
    }
    dir.to_owned()
}

/// A plugin crate whose `lib.rs` differs by `tag`, so each test builds its own plugin.
fn plugin_crate(dir: &Path, tag: &str) -> SourceTree {
    let lib = format!("{LIB_RS}\n// {tag}\n");
    read_source(&write_crate(dir, &[("Cargo.toml", MANIFEST), ("src/lib.rs", &lib)])).unwrap()
}

/// Builds `source`, collecting the progress lines.
async fn build(
    builder: &Builder,
    source: &SourceTree,
) -> (Result<kiln_engine::worker::builder::BuiltPlugin, BuildError>, Vec<String>) {
    let (result, lines, _) = build_counting(builder, source).await;
    (result, lines)
}

/// Builds `source`, collecting the progress lines and the crate counts (done, total, current).
async fn build_counting(
    builder: &Builder,
    source: &SourceTree,
) -> (Result<kiln_engine::worker::builder::BuiltPlugin, BuildError>, Vec<String>, Vec<(u32, u32, String)>) {
    let lines = Mutex::new(Vec::new());
    let crates = Mutex::new(Vec::new());
    let progress = |event: BuildEvent<'_>| match event {
        BuildEvent::Line(line) => lines.lock().unwrap().push(line.to_owned()),
        BuildEvent::Crates { done, total, current } => crates.lock().unwrap().push((done, total, current.to_owned())),
    };
    let result = builder.build(&cli(), source, &progress).await;
    (result, lines.into_inner().unwrap(), crates.into_inner().unwrap())
}

/// An entry of a test archive.
#[derive(Clone, Copy)]
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
}

/// Writes a .tar.gz of `items`, setting names raw so that unsafe ones get in.
fn tar_gz(path: &Path, items: &[Item]) -> PathBuf {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for item in items {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, link): (&str, &[u8], _, &str) = match *item {
            Item::File(name, data) => (name, data, tar::EntryType::Regular, ""),
            Item::Symlink(name, target) => (name, b"", tar::EntryType::Symlink, target),
            Item::HardLink(name, target) => (name, b"", tar::EntryType::Link, target),
            Item::Fifo(name) => (name, b"", tar::EntryType::Fifo, ""),
        };
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append(&header, data).unwrap();
    }
    fs::write(path, archive.into_inner().unwrap().finish().unwrap()).unwrap();
    path.to_owned()
}

/// Writes a .zip of `items` (files and symlinks), deflated.
fn zip(path: &Path, items: &[Item]) -> PathBuf {
    let mut archive = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for item in items {
        match *item {
            Item::File(name, data) => {
                let mode = if name.ends_with(".sh") { 0o755 } else { 0o644 };
                archive.start_file(name, options.unix_permissions(mode)).unwrap();
                archive.write_all(data).unwrap();
            }
            Item::Symlink(name, target) => archive.add_symlink(name, target, options).unwrap(),
            _ => unreachable!("zip archives in these tests hold files and symlinks"),
        }
    }
    archive.finish().unwrap();
    path.to_owned()
}

/// Checks that reading `path` is refused with a message naming `entry`, and returns it.
fn check_refused(path: &Path, limits: &SourceLimits, entry: &str) -> String {
    let error = read_source_with_limits(path, limits).expect_err("the source should be refused").to_string();
    assert!(error.contains(entry), "error should name `{entry}`: {error}");
    error
}

#[tokio::test]
async fn builds_a_valid_crate_into_a_library_exporting_the_api_version() {
    let temp = tempfile::tempdir().unwrap();
    let source = plugin_crate(&temp.path().join("crate"), "valid");
    let builder = builder(&temp.path().join("cache"));

    let started = Instant::now();
    let (result, progress, crates) = build_counting(&builder, &source).await;
    let built = result.unwrap();
    eprintln!("build took {:?}", started.elapsed());
    // Cargo's progress through the crates: counted up to a total read from its resolution
    // (the plugin, its API, abi_stable and the rest: more than a handful), never past it.
    let &(done, total, _) = crates.last().expect("crate counts were reported");
    assert!(total > 5 && done == total, "{crates:?}");
    assert!(crates.iter().all(|(done, total, _)| *total == 0 || done <= total), "{crates:?}");
    assert!(crates.windows(2).all(|pair| pair[0].0 <= pair[1].0), "the count never goes back: {crates:?}");
    assert!(crates.iter().any(|(_, _, current)| current == "linecount"), "{crates:?}");

    assert!(!built.cached);
    assert_eq!(built.hash, source.hash());
    let owners = temp.path().join("cache/owners").join(cli().dir_name());
    assert!(built.library.starts_with(owners.join("plugins").join(&built.hash)), "{built:?}");
    let library = fs::read(&built.library).unwrap();
    assert!(library.windows(23).any(|window| window == b"kiln_plugin_api_version"));
    assert!(progress.iter().any(|line| line.starts_with("Compiling linecount")), "{progress:?}");
    assert_eq!(builder.cargo_invocations(), 1);
    // The crate was built from a copy made its own workspace; the upload is left alone.
    let copy = fs::read_to_string(owners.join("src/linecount/Cargo.toml")).unwrap();
    assert!(copy.ends_with("\n[workspace]\n"), "{copy}");
    assert!(!temp.path().join("crate/Cargo.lock").exists());
}

#[tokio::test]
async fn an_unchanged_crate_comes_from_the_cache_without_cargo() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let source = plugin_crate(&temp.path().join("crate"), "cached");
    let first = builder(&cache).build(&cli(), &source, &|_| {}).await.unwrap();

    let no_cargo =
        Builder::new(BuilderConfig { cargo: temp.path().join("no-such-cargo"), ..BuilderConfig::new(&cache) });
    let started = Instant::now();
    let again = read_source(&temp.path().join("crate")).unwrap();
    let second = no_cargo.build(&cli(), &again, &|_| {}).await.unwrap();
    eprintln!("cached build took {:?}", started.elapsed());

    assert!(second.cached);
    assert_eq!(second.library, first.library);
    assert_eq!(no_cargo.cargo_invocations(), 0);
    assert_eq!(no_cargo.cached(&cli(), &first.hash).await, Some(second));
    assert_eq!(no_cargo.cached(&cli(), "../../etc").await, None);
}

#[tokio::test]
async fn concurrent_builds_of_one_crate_run_cargo_once() {
    let temp = tempfile::tempdir().unwrap();
    let source = plugin_crate(&temp.path().join("crate"), "concurrent");
    let builder = builder(&temp.path().join("cache"));
    let other = builder.clone();

    let first = tokio::spawn({
        let source = source.clone();
        async move { builder.build(&cli(), &source, &|_| {}).await }
    });
    let second = other.build(&cli(), &source, &|_| {}).await.unwrap();
    let first = first.await.unwrap().unwrap();

    assert_eq!(other.cargo_invocations(), 1);
    assert_eq!(first.library, second.library);
    assert!(first.cached != second.cached, "one built, one waited: {first:?} {second:?}");
}

#[tokio::test]
async fn a_second_build_after_an_edit_compiles_only_the_plugin_and_reuses_its_incremental_cache() {
    let temp = tempfile::tempdir().unwrap();
    // A package name no other test uses, so that its incremental directory is its own.
    let package = format!("edited_{}_{}", std::process::id(), temp.path().file_name().unwrap().to_str().unwrap());
    let package: String = package.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let manifest = MANIFEST.replace("name = \"linecount\"", &format!("name = \"{package}\""));
    let crate_dir = temp.path().join("crate");
    let builder = builder(&temp.path().join("cache"));
    let incremental = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("plugin-target/owners")
        .join(cli().dir_name())
        .join("target/release/incremental");
    let incremental_dirs = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&incremental)
            .map(|entries| entries.map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        names.retain(|name| name.starts_with(&format!("{package}-")));
        names.sort();
        names
    };

    let first = read_source(&write_crate(&crate_dir, &[("Cargo.toml", &manifest), ("src/lib.rs", LIB_RS)])).unwrap();
    let first = builder.build(&cli(), &first, &|_| {}).await.unwrap();
    assert!(first.compiled.contains(&package), "{:?}", first.compiled);
    let after_first = incremental_dirs();
    assert_eq!(after_first.len(), 1, "the plugin's crate is compiled incrementally, in one directory: {after_first:?}");

    // An edit of the plugin's code: lines are counted twice over.
    let edited = LIB_RS.replace("chunk.lines().count() as u64", "2 * chunk.lines().count() as u64");
    assert_ne!(edited, LIB_RS);
    let second = read_source(&write_crate(&crate_dir, &[("src/lib.rs", &edited)])).unwrap();
    assert_ne!(second.hash(), first.hash);
    let second = builder.build(&cli(), &second, &|_| {}).await.unwrap();

    // Cargo's JSON messages: every dependency was fresh, only the plugin was compiled...
    assert_eq!(second.compiled, std::slice::from_ref(&package), "only the edited plugin is compiled again");
    // ... in the same incremental directory as the first build, which rustc reuses (a crate at a
    // new path would be a new crate to cargo, with a directory of its own and nothing to reuse).
    assert_eq!(incremental_dirs(), after_first);
    assert_ne!(second.library, first.library);
}

#[tokio::test]
async fn a_single_rs_file_builds_through_the_template() {
    let temp = tempfile::tempdir().unwrap();
    let template_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/plugin/src/lib.rs");
    let upload = temp.path().join("wordcount.rs");
    fs::copy(&template_lib, &upload).unwrap();

    let source = read_source(&upload).unwrap();
    assert_eq!(source.package_name(), "plugin");
    assert_eq!(source.paths().collect::<Vec<_>>(), ["Cargo.toml", "src/lib.rs"]);
    let built = builder(&temp.path().join("cache")).build(&cli(), &source, &|_| {}).await.unwrap();
    assert!(fs::metadata(&built.library).unwrap().len() > 0);
}

#[test]
fn a_crate_hashes_the_same_as_directory_tar_gz_and_zip() {
    let temp = tempfile::tempdir().unwrap();
    let files: [(&str, &str); 3] = [("Cargo.toml", MANIFEST), ("src/lib.rs", LIB_RS), ("tools/run.sh", "#!/bin/sh\n")];
    let dir = write_crate(&temp.path().join("linecount"), &files);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("tools/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Left out at any depth, whatever the form.
    write_crate(
        &dir,
        &[("target/release/junk", "x"), (".git/HEAD", "x"), (".cargo/config.toml", "x"), ("src/target/x", "x")],
    );

    // As `tar czf linecount.tgz linecount` makes it: everything under one top directory.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    tar.append_dir_all("linecount", &dir).unwrap();
    let tgz = temp.path().join("linecount.tgz");
    fs::write(&tgz, tar.into_inner().unwrap().finish().unwrap()).unwrap();
    let items: Vec<Item> = files.iter().map(|(path, text)| Item::File(path, text.as_bytes())).collect();
    let zipped = zip(&temp.path().join("linecount.zip"), &items);

    let from_dir = read_source(&dir).unwrap();
    assert_eq!(from_dir.paths().collect::<Vec<_>>(), ["Cargo.toml", "src/lib.rs", "tools/run.sh"]);
    assert_eq!(from_dir.package_name(), "linecount");
    assert_eq!(from_dir.hash().len(), 64);
    assert_eq!(read_source(&tgz).unwrap().hash(), from_dir.hash());
    assert_eq!(read_source(&zipped).unwrap().hash(), from_dir.hash());
    let round_trip = SourceTree::from_tar_gz(&from_dir.to_tar_gz()).unwrap();
    assert_eq!(round_trip, from_dir);
    assert_eq!(from_dir.to_tar_gz(), round_trip.to_tar_gz(), "packing is deterministic");

    // The executable bit is part of the crate.
    let plain = write_crate(&temp.path().join("plain"), &files);
    assert_ne!(read_source(&plain).unwrap().hash(), from_dir.hash());
}

#[test]
fn archive_entries_that_escape_the_crate_are_refused_before_anything_is_written() {
    let temp = tempfile::tempdir().unwrap();
    let uploads = temp.path().join("uploads");
    fs::create_dir(&uploads).unwrap();
    let cache = temp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let manifest = Item::File("Cargo.toml", MANIFEST.as_bytes());
    let limits = SourceLimits::default();
    let cases: [(&str, Item, &str); 7] = [
        ("dotdot", Item::File("../x", b"x"), "`..`"),
        ("nested-dotdot", Item::File("src/../../x", b"x"), "`..`"),
        ("absolute", Item::File("/etc/x", b"x"), "absolute"),
        ("link-out", Item::Symlink("src/out", "../../outside"), "outside the crate"),
        ("link-absolute", Item::Symlink("passwd", "/etc/passwd"), "absolute"),
        ("hard-link", Item::HardLink("hard", "/etc/passwd"), "hard links"),
        ("fifo", Item::Fifo("pipe"), "fifos"),
    ];
    for (name, item, reason) in cases {
        let (Item::File(entry, _) | Item::Symlink(entry, _) | Item::HardLink(entry, _) | Item::Fifo(entry)) = item;
        let entry = format!("`{entry}`");
        let error = check_refused(&tar_gz(&uploads.join(format!("{name}.tgz")), &[manifest, item]), &limits, &entry);
        assert!(error.contains(reason), "{error}");
        if let Item::File(..) | Item::Symlink(..) = item {
            let error = check_refused(&zip(&uploads.join(format!("{name}.zip")), &[manifest, item]), &limits, &entry);
            assert!(error.contains(reason), "{error}");
        }
    }
    // A link that escapes only through another link is refused, and so is a loop.
    let chained = [manifest, Item::Symlink("z/up", ".."), Item::Symlink("esc", "z/up/..")];
    check_refused(&tar_gz(&uploads.join("chained.tgz"), &chained), &limits, "`esc`");
    let looping = [manifest, Item::Symlink("src/self", "..")];
    check_refused(&tar_gz(&uploads.join("loop.tgz"), &looping), &limits, "`src/self`");
    // A file under a symlink would be written through it.
    let through = [manifest, Item::Symlink("evil", "src"), Item::File("evil/x", b"x")];
    check_refused(&tar_gz(&uploads.join("through.tgz"), &through), &limits, "`evil/x`");

    let names = |dir: &Path| fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    assert_eq!(names(temp.path()).len(), 2, "nothing next to the uploads: {:?}", names(temp.path()));
    assert!(names(&cache).is_empty());
    assert!(
        names(&uploads)
            .iter()
            .all(|name| name.to_string_lossy().ends_with("tgz") || name.to_string_lossy().ends_with("zip"))
    );
}

#[test]
fn symlinks_inside_the_crate_become_copies() {
    let temp = tempfile::tempdir().unwrap();
    let items = [
        Item::File("wc/Cargo.toml", MANIFEST.as_bytes()),
        Item::File("wc/src/lib.rs", LIB_RS.as_bytes()),
        Item::Symlink("wc/src/alias.rs", "lib.rs"),
        Item::Symlink("wc/docs", "src"),
        Item::Symlink("wc/dangling", "nowhere"),
    ];
    let source = read_source(&tar_gz(&temp.path().join("wc.tar.gz"), &items)).unwrap();
    let paths: Vec<&str> = source.paths().collect();
    assert_eq!(paths, ["Cargo.toml", "docs/alias.rs", "docs/lib.rs", "src/alias.rs", "src/lib.rs"]);
    assert_eq!(source.file("docs/alias.rs"), Some(LIB_RS.as_bytes()));
}

#[test]
fn sources_over_the_file_or_size_limits_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let small = SourceLimits { max_files: 5, max_bytes: 1024 * 1024 };
    let manifest = ("Cargo.toml", MANIFEST);
    let many: Vec<(String, &str)> = (0..5).map(|i| (format!("src/f{i}.rs"), "")).collect();
    let mut files: Vec<(&str, &str)> = many.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    files.push(manifest);
    let dir = write_crate(&temp.path().join("many"), &files);
    let error = check_refused(&dir, &small, "more than 5 files");
    assert!(matches!(read_source_with_limits(&dir, &small), Err(SourceError::TooManyFiles { limit: 5 })), "{error}");

    // Bombs: 8 MiB of zeros compress to a few KiB, but reading stops at the limit.
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let bombs = [
        tar_gz(
            &temp.path().join("bomb.tgz"),
            &[Item::File("Cargo.toml", MANIFEST.as_bytes()), Item::File("data", &zeros)],
        ),
        zip(
            &temp.path().join("bomb.zip"),
            &[Item::File("Cargo.toml", MANIFEST.as_bytes()), Item::File("data", &zeros)],
        ),
        // Skipped directories still count while decompressing.
        tar_gz(
            &temp.path().join("hidden.tgz"),
            &[Item::File("Cargo.toml", MANIFEST.as_bytes()), Item::File("target/x", &zeros)],
        ),
    ];
    for bomb in &bombs {
        assert!(fs::metadata(bomb).unwrap().len() < 100 * 1024);
        check_refused(bomb, &small, "unpacks to more than 1048576 bytes");
    }
    let tgz = fs::read(&bombs[0]).unwrap();
    assert!(matches!(SourceTree::from_tar_gz_with_limits(&tgz, &small), Err(SourceError::TooLarge { .. })));
}

#[test]
fn sources_without_a_package_manifest_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let limits = SourceLimits::default();
    let cases = [
        ("none", vec![("src/lib.rs", LIB_RS)], "no Cargo.toml at its root"),
        ("workspace", vec![("Cargo.toml", "[workspace]\nmembers = [\"a\"]\n")], "no [package] section"),
        (
            "broken",
            vec![("Cargo.toml", "[package\nname = 1")],
            "Cargo.toml is not valid: unclosed table, expected `]` at line 1",
        ),
    ];
    for (name, files, message) in cases {
        check_refused(&write_crate(&temp.path().join(name), &files), &limits, message);
    }
    check_refused(&temp.path().join("notes.txt"), &limits, "notes.txt");
    fs::write(temp.path().join("notes.txt"), "x").unwrap();
    check_refused(&temp.path().join("notes.txt"), &limits, "unsupported plugin source");
}

#[tokio::test]
async fn a_type_error_comes_back_as_rustc_diagnostics() {
    let temp = tempfile::tempdir().unwrap();
    let lib = LIB_RS.replace("Ok(chunk.lines().count() as u64)", "let n: u64 = \"many\";\n        Ok(n)");
    let line = lib.lines().position(|l| l.contains("\"many\"")).unwrap() + 1;
    let dir = write_crate(&temp.path().join("crate"), &[("Cargo.toml", MANIFEST), ("src/lib.rs", &lib)]);
    let builder = builder(&temp.path().join("cache"));

    let (result, _) = build(&builder, &read_source(&dir).unwrap()).await;
    let error = result.expect_err("a type error fails the build");
    let message = error.to_string();
    assert!(matches!(error, BuildError::Compile { .. }), "{message}");
    assert!(message.contains(&format!("src/lib.rs:{line}:")), "{message}");
    assert!(message.contains("mismatched types"), "{message}");
    assert!(!temp.path().join("cache/owners").join(cli().dir_name()).join("plugins").exists());
}

#[tokio::test]
async fn a_crate_without_a_cdylib_is_told_to_add_one() {
    let temp = tempfile::tempdir().unwrap();
    let manifest = "[package]\nname = \"rlibonly\"\nversion = \"0.1.0\"\nedition = \"2024\"\n";
    let dir = write_crate(&temp.path().join("crate"), &[("Cargo.toml", manifest), ("src/lib.rs", "pub fn f() {}\n")]);

    let (result, _) = build(&builder(&temp.path().join("cache")), &read_source(&dir).unwrap()).await;
    let message = result.expect_err("nothing to load").to_string();
    assert!(message.contains("`rlibonly`") && message.contains("crate-type = [\"cdylib\"]"), "{message}");
}

#[tokio::test]
async fn a_cargo_failure_before_compiling_carries_cargos_stderr() {
    let temp = tempfile::tempdir().unwrap();
    let manifest = format!("{MANIFEST}missing-helper = {{ path = \"../no-such-helper\" }}\n");
    let dir = write_crate(&temp.path().join("crate"), &[("Cargo.toml", &manifest), ("src/lib.rs", LIB_RS)]);

    let (result, progress) = build(&builder(&temp.path().join("cache")), &read_source(&dir).unwrap()).await;
    let error = result.expect_err("the dependency does not exist");
    let message = error.to_string();
    assert!(matches!(error, BuildError::Cargo { .. }), "{message}");
    assert!(message.contains("cargo failed") && message.contains("no-such-helper"), "{message}");
    assert!(!progress.is_empty());
}

#[test]
fn the_builder_is_shareable_across_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    shareable::<Builder>();
    let builder = Builder::new(BuilderConfig::new("cache"));
    assert!(builder.config().cache_dir.is_absolute());
    assert_eq!(builder.config().target_dir, builder.config().cache_dir.join("target"));
    let source = SourceTree::from_single_file(b"").unwrap();
    send(&builder.build(&cli(), &source, &|_| {}));
}
