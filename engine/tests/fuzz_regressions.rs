//! What the fuzz targets (`fuzz/`, see README's "Fuzzing") found, kept as tests: each input
//! that crashed a target runs here through the same check (`kiln_engine::fuzzing`), beside a
//! test of the behaviour it broke. The seeds of the fuzz corpus run through their checks too,
//! so a check that no longer holds on them fails here and not only under `cargo fuzz`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kiln_engine::fuzzing;
use kiln_engine::plugin_source::{SourceLimits, SourceTree};
use kiln_engine::worker::executor::protocol::{Request, Response};

/// The system allocator, noting the largest single allocation while armed: how a test sees
/// that a decoder allocates what a header announces rather than what arrived.
struct Noting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Noting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Noting = Noting;

/// The largest single allocation `work` makes (other tests of this file may add theirs: they
/// allocate little).
fn largest_allocation(work: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    work();
    ARMED.store(false, Ordering::Relaxed);
    LARGEST.load(Ordering::Relaxed)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .filter(|(name, _)| name.starts_with("seed-"))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn the_seeds_of_every_fuzz_target_pass_its_check() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("archive", fuzzing::archive),
        ("executor_pipe", fuzzing::executor_pipe),
        ("chunk_cutter", fuzzing::chunk_cutter),
        ("input_decoder", fuzzing::input_decoder),
        ("rpc_frames", fuzzing::rpc_frames),
    ];
    for (target, check) in targets {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seed");
        for (name, data) in seeds {
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "fuzz/corpus/{target}/{name} fails its check");
        }
    }
}

/// A `.tar.gz` of `entries`: (path, contents or `None` for a directory, symlink target).
fn tar_gz(entries: &[(&str, Option<&str>, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for &(path, contents, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        match (contents, link) {
            (_, Some(target)) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
            (Some(text), None) => {
                header.set_size(text.len() as u64);
                builder.append_data(&mut header, path, text.as_bytes()).unwrap();
            }
            (None, None) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, &b""[..]).unwrap();
            }
        }
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

const MANIFEST: &str = "[package]\nname = \"wc\"\nversion = \"0.1.0\"\n";

#[test]
fn a_symlink_named_like_a_left_out_directory_does_not_bring_it_back() {
    // `.cargo/` is never taken from an upload (cargo would honour its config.toml on the
    // worker); a symlink `.cargo -> cfg` used to be resolved into a copy of `cfg/` under that name.
    let archive = tar_gz(&[
        ("Cargo.toml", Some(MANIFEST), None),
        ("cfg/config.toml", Some("[build]\nrustc-wrapper = \"/bin/true\"\n"), None),
        ("src/lib.rs", Some("pub fn f() {}\n"), None),
        (".cargo", None, Some("cfg")),
        ("src/target", None, Some("../cfg")),
        ("lib", None, Some("src")),
    ]);
    let tree = SourceTree::from_tar_gz(&archive).unwrap();
    let paths: Vec<&str> = tree.paths().collect();
    assert_eq!(paths, ["Cargo.toml", "cfg/config.toml", "lib/lib.rs", "src/lib.rs"]);
    let mut input = vec![1u8];
    input.extend(&archive);
    fuzzing::archive(&input);
}

#[test]
fn a_frame_header_announcing_gigabytes_allocates_only_what_arrives() {
    // An executor runs plugin code, which can write anything on the pipe: a header announcing
    // 4 GiB followed by a few bytes used to allocate the 4 GiB before reading them.
    let mut wire = (4u64 << 30).to_le_bytes().to_vec();
    wire.extend([12u8; 100]);
    let mut responses = &wire[..];
    let largest = largest_allocation(|| {
        let error = Response::read_from(&mut responses).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
        let mut requests = &wire[..];
        Request::read_from(&mut requests).unwrap_err();
    });
    assert!(largest < 64 << 20, "reading a cut frame allocated {largest} bytes");
    let mut input = vec![1u8];
    input.extend(&wire);
    fuzzing::executor_pipe(&input);
}

#[test]
fn small_limits_hold_for_zip_archives_too() {
    let limits = SourceLimits { max_files: 1, max_bytes: 1 << 10 };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in [("Cargo.toml", MANIFEST), ("src/lib.rs", "pub fn f() {}\n")] {
        zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let error = SourceTree::from_zip_with_limits(&bytes, &limits).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the plugin source has more than 1 files: leave out target/, data and generated files"
    );
    let tree = SourceTree::from_zip_with_limits(&bytes, &SourceLimits::default()).unwrap();
    assert_eq!(tree.package_name(), "wc");
}

#[test]
fn a_server_error_in_an_answer_keeps_its_detail_though_tarpc_changes_its_kind() {
    // `rpc_frames` as a client reading the controller's answers: an answer whose error has kind
    // 1 (`PermissionDenied`) is written back by tarpc as 2 and read as `ConnectionRefused`, and
    // the check used to call that a message changing across the wire. tarpc's, not Kiln's: the
    // check now holds the detail, the part Kiln shows, to the round trip.
    let crash = [2u8, 0, 15, 0, 0, 0, 4, 0, 1, 1, 0, 0, 0, 0, 0, 0, 23];
    fuzzing::rpc_frames(&crash);
    let frame = [0u8, 1, 1, 3, b'n', b'o', b'!'];
    let mut input = vec![2u8, 0, 15];
    input.extend((frame.len() as u32).to_be_bytes());
    input.extend(frame);
    fuzzing::rpc_frames(&input);
}

#[test]
fn a_call_whose_deadline_overflows_the_clock_is_refused_not_a_panic() {
    // `rpc_frames` as the controller's server, gate closed: a call whose context deadline is
    // some 10^19 s ahead made tarpc panic adding it to `Instant::now()` (found with seed 1 in CI's
    // run). The servers' frame decoder now refuses such a call before tarpc reads it.
    let crash = [
        0u8, 0, 15, 0, 0, 0, 32, 0, 253, 253, 253, 253, 253, 253, 42, 253, 253, 63, 253, 253, 7, 3, 3, 97, 99, 0, 0, 0,
        98, 0, 1, 2, 7, 1, 107, 21, 1, 0, 0, 4, 97, 10, 98, 10,
    ];
    fuzzing::rpc_frames(&crash);
}
