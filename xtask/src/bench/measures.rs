//! The measures of `cargo xtask bench`, one function per section of BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::report::{Report, Target};
use super::{Bench, Samples, baseline, checked, corpus, streaming};

/// Threads of the streaming baseline, as many as Kiln's processes in the word count measures.
pub const STREAMING_THREADS: usize = 2;

/// The word corpus and its count (by the streaming baseline, checked against the rayon one).
pub struct Baseline {
    pub input: PathBuf,
    pub bytes: u64,
    pub expected: BTreeMap<String, u64>,
}

impl Baseline {
    /// One run of the streaming baseline over the corpus, checked.
    pub fn stream(&self) -> anyhow::Result<()> {
        if streaming::word_count(&self.input, STREAMING_THREADS)? != self.expected {
            bail!("the streaming baseline's word count changed between runs");
        }
        Ok(())
    }
}

/// Word count through `kiln run-local` against the streaming baseline, same file and cores,
/// alternating; the earlier rayon baseline beside them for continuity. Opens section 1, which
/// the cluster figures complete.
pub fn word_count(bench: &Bench, report: &mut Report) -> anyhow::Result<Baseline> {
    let input = corpus::words(&bench.inputs(), bench.size)?;
    let bytes = std::fs::metadata(&input)?.len();
    eprintln!("word count: checking the baselines agree");
    let expected = streaming::word_count(&input, STREAMING_THREADS)?;
    if baseline::word_count(&input)? != expected {
        bail!("the streaming and the rayon baselines count differently: no figure reported");
    }
    let base = Baseline { input, bytes, expected };

    // Sandboxed (as always unless told otherwise) and unconfined, to show what the sandbox costs
    // a job's throughput rather than its start.
    let run_local = |insecure: bool| {
        let mut command = bench.kiln();
        command.arg("run-local").arg("--plugin").arg(bench.example("wordcount")).arg("--input").arg(&base.input);
        command.args(["--processes", "2"]);
        if insecure {
            command.arg("--insecure-no-sandbox");
        }
        let output = String::from_utf8(checked(&mut command)?.stdout).context("kiln's output is UTF-8")?;
        let counted: BTreeMap<String, u64> = serde_json::from_str(&output).context("kiln's output is a word count")?;
        if counted != base.expected {
            bail!("kiln's word count differs from the baseline's: no figure reported");
        }
        Ok(())
    };
    eprintln!(
        "word count: streaming baseline, rayon baseline, kiln run-local sandboxed and unconfined, alternating ({} rounds)",
        bench.runs
    );
    let samples = Samples::alternating(
        bench.runs,
        &mut [
            &mut || base.stream(),
            &mut || baseline::word_count(&base.input).map(drop),
            &mut || run_local(false),
            &mut || run_local(true),
        ],
    )?;
    let [streamed, rayon, local, unconfined] = <[Samples; 4]>::try_from(samples).expect("four measures");

    report.section(
        "1. Word count throughput",
        &format!(
            "{} MiB corpus, {} distinct words; every output checked equal to the streaming baseline's. \
             Throughput is input bytes over wall time, including reading the file (from the page cache) \
             and, for Kiln, process and executor start; for the cluster, also uploading the input to \
             the controller and the result back. Each Kiln figure is divided by the streaming baseline \
             measured alternately with it in the same rounds. The streaming baseline is \
             {STREAMING_THREADS} threads that each `pread` their own byte range, cut at line ends, \
             count with FxHash as the wordcount example does, and merge; the rayon baseline (the one \
             of earlier reports) reads the whole file and splits it on one thread first.",
            bytes >> 20,
            base.expected.len()
        ),
    );
    report.figure("streaming word count (baseline)", &throughput(bytes, &streamed), Target::None);
    report.figure("read-then-split rayon word count (earlier baseline)", &throughput(bytes, &rayon), Target::None);
    report.figure("`kiln run-local --processes 2`", &throughput(bytes, &local), Target::None);
    let ratio = ratio_of(&streamed, &local);
    report.figure("run-local ÷ streaming baseline", &format!("{ratio:.2}×"), Target::AtLeast(ratio, 0.9, "≥ 0.9×"));
    report.figure("run-local ÷ rayon baseline", &format!("{:.2}×", ratio_of(&rayon, &local)), Target::None);
    let sandbox_ratio = ratio_of(&unconfined, &local);
    report.figure(
        "`kiln run-local --processes 2 --insecure-no-sandbox`",
        &throughput(bytes, &unconfined),
        Target::None,
    );
    report.figure(
        "sandboxed ÷ unconfined",
        &format!("{sandbox_ratio:.3}×"),
        Target::AtLeast(sandbox_ratio, 0.98, "≥ 0.98× (within 2 %)"),
    );
    Ok(base)
}

/// How fast `ours` is against `reference`: the ratio of their median times, above 1 when ours is faster.
pub fn ratio_of(reference: &Samples, ours: &Samples) -> f64 {
    reference.median().as_secs_f64() / ours.median().as_secs_f64()
}

/// gzip files in the directory of the compressed measure.
const GZIP_PARTS: usize = 8;

/// Word count over a directory of gzip files through `kiln run-local`, against `gzip -dc` of the
/// same files piped into the streaming baseline's stream reader, alternating (section 8).
pub fn compressed(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let source = corpus::words(&bench.inputs(), (bench.size / 4).max(1 << 20))?;
    let dir = corpus::gzip_parts(&bench.inputs(), &source, GZIP_PARTS)?;
    let expected = streaming::word_count(&source, STREAMING_THREADS)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    let compressed_bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).sum::<Result<_, _>>()?;
    let bytes = std::fs::metadata(&source)?.len();

    let zcat = || {
        let mut gzip = std::process::Command::new("gzip")
            .arg("-dc")
            .args(&files)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running gzip -dc")?;
        let counted = streaming::word_count_reader(gzip.stdout.take().context("gzip's stdout")?, STREAMING_THREADS)?;
        if !gzip.wait()?.success() || counted != expected {
            bail!("gzip -dc | the streaming baseline counted differently: no figure reported");
        }
        Ok(())
    };
    let local = || {
        let mut command = bench.kiln();
        command.arg("run-local").arg("--plugin").arg(bench.example("wordcount")).arg("--input").arg(&dir);
        command.args(["--processes", "2"]);
        let output = checked(&mut command)?.stdout;
        let counted: BTreeMap<String, u64> =
            serde_json::from_slice(&output).context("kiln's output is a word count")?;
        if counted != expected {
            bail!("kiln's word count of the gzip directory differs from the plain file's: no figure reported");
        }
        Ok(())
    };
    eprintln!("compressed: kiln run-local over {GZIP_PARTS} gzip files and gzip -dc | baseline, alternating");
    let samples = Samples::alternating(bench.runs, &mut [&mut { zcat }, &mut { local }])?;
    let [zcat, local] = <[Samples; 2]>::try_from(samples).expect("two measures");
    report.section(
        "8. A directory of gzip files",
        &format!(
            "The {} MiB corpus cut at line ends into {GZIP_PARTS} files and compressed with `gzip -6` \
             ({} MiB compressed); throughput is over the uncompressed bytes. The reference is `gzip -dc` \
             of the files in order piped into the streaming baseline's stream reader (one reading \
             thread, {STREAMING_THREADS} counting threads); Kiln decompresses each file as a stream \
             where it is read, one file per chunk sequence. Alternating, outputs checked equal to the \
             plain file's count.",
            bytes >> 20,
            compressed_bytes >> 20
        ),
    );
    report.figure("`gzip -dc | streaming baseline`", &throughput(bytes, &zcat), Target::None);
    report.figure("`kiln run-local --processes 2 --input DIR`", &throughput(bytes, &local), Target::None);
    report.figure("run-local ÷ `gzip -dc | baseline`", &format!("{:.2}×", ratio_of(&zcat, &local)), Target::None);
    Ok(())
}

/// grep and csv-stats throughput through run-local, for the record.
pub fn other_plugins(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let words = corpus::words(&bench.inputs(), bench.size)?;
    let csv = corpus::csv(&bench.inputs(), (bench.size / 4).max(1 << 20))?;
    report.section("6. Other plugins through run-local", "2 processes, plugin already built.");
    for (plugin, input, params) in [("grep", &words, "^the |zzz$"), ("csv-stats", &csv, "1")] {
        eprintln!("{plugin}: kiln run-local");
        let bytes = std::fs::metadata(input)?.len();
        let samples = Samples::collect(bench.runs, true, || {
            checked(
                bench
                    .kiln()
                    .arg("run-local")
                    .arg("--plugin")
                    .arg(bench.example(plugin))
                    .arg("--input")
                    .arg(input)
                    .args(["--processes", "2", "--params", params]),
            )?;
            Ok(())
        })?;
        report.figure(
            &format!("{plugin} `{params}` over {} MiB", bytes >> 20),
            &throughput(bytes, &samples),
            Target::None,
        );
    }
    Ok(())
}

/// Building the wordcount plugin: cold, as the first upload to a warmed-up worker, after an
/// edit, and from the cache.
pub fn builds(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let scratch = bench.work.join("builds");
    let _ = std::fs::remove_dir_all(&scratch);
    let plugin = scratch.join("wordcount");
    copy_dir(&bench.example("wordcount"), &plugin)?;
    let empty = scratch.join("empty.txt");
    std::fs::write(&empty, "")?;
    let run_plugin = |plugin: &Path, cache: &Path, target: &Path| -> anyhow::Result<()> {
        checked(
            bench
                .kiln()
                .env("KILN_CACHE_DIR", cache)
                .env("KILN_TARGET_DIR", target)
                .arg("run-local")
                .arg("--plugin")
                .arg(plugin)
                .arg("--input")
                .arg(&empty),
        )?;
        Ok(())
    };
    let run_empty = |cache: &Path, target: &Path| run_plugin(&plugin, cache, target);

    eprintln!("builds: cold");
    let mut n = 0;
    let cold_runs = if bench.quick { 1 } else { 3 };
    let cold = Samples::collect(cold_runs, false, || {
        n += 1;
        let (cache, target) = (scratch.join(format!("cold-cache-{n}")), scratch.join(format!("cold-target-{n}")));
        let result = run_empty(&cache, &target);
        let _ = std::fs::remove_dir_all(&target);
        result
    })?;

    // What `kiln worker` does at start (`Builder::warm`): build the template as a single
    // `lib.rs`, which compiles its dependencies into the target directory. Each upload after it
    // is a first one (a cache of its own puts its crate copy at a new path).
    eprintln!("builds: first upload to a warmed-up worker");
    let warmed = scratch.join("warmed-target");
    run_plugin(&bench.root.join("templates/plugin/src/lib.rs"), &scratch.join("warm-up-cache"), &warmed)?;
    let mut upload = 0;
    let first_upload = Samples::collect(bench.runs, false, || {
        upload += 1;
        run_empty(&scratch.join(format!("first-upload-cache-{upload}")), &warmed)
    })?;

    eprintln!("builds: warm dependencies");
    let (cache, target) = (scratch.join("cache"), scratch.join("target"));
    run_empty(&cache, &target)?;
    let mut edit = 0;
    let warm = Samples::collect(bench.runs, false, || {
        edit += 1;
        // A new comment is a new source hash: the plugin's crate is rebuilt, nothing else.
        let lib = plugin.join("src/lib.rs");
        let mut text = std::fs::read_to_string(&lib)?;
        text.push_str(&format!("\n// bench edit {edit}\n"));
        std::fs::write(&lib, text)?;
        run_empty(&cache, &target)
    })?;

    eprintln!("builds: cached");
    let cached = Samples::collect(bench.runs * 4, true, || run_empty(&cache, &target))?;

    report.section(
        "4. Plugin build of the wordcount example",
        "Each figure is a whole `kiln run-local` over an empty input, so it includes starting kiln, \
         the executor process and an aggregate of zero partials.",
    );
    report.figure(
        "cold (empty target directory)",
        &cold.describe(),
        Target::AtMost(cold.median(), Duration::from_secs(20), "≤ 20 s"),
    );
    report.figure(
        "first upload to a warmed-up worker (template's dependencies compiled)",
        &first_upload.describe(),
        Target::AtMost(first_upload.median(), Duration::from_secs(3), "≤ 3 s"),
    );
    report.figure(
        "warm dependencies (plugin source edited)",
        &warm.describe(),
        Target::AtMost(warm.median(), Duration::from_secs(1), "≤ 1 s"),
    );
    report.figure(
        "cached (unchanged source)",
        &cached.describe(),
        Target::AtMost(cached.median(), Duration::from_millis(50), "≤ 50 ms"),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// "N MB/s — median (min–max, runs)".
pub fn throughput(bytes: u64, samples: &Samples) -> String {
    let rate = bytes as f64 / 1e6 / samples.median().as_secs_f64();
    format!("{rate:.0} MB/s — {}", samples.describe())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == "Cargo.lock" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(name))?;
        } else {
            std::fs::copy(entry.path(), to.join(name))?;
        }
    }
    Ok(())
}

/// Runs of each kind for the sandbox measure: short runs, so many of them.
const SANDBOX_RUNS: usize = 40;

/// What the sandbox costs each executor start: `kiln run-local` of a one-line job (one
/// executor) sandboxed and with `--insecure-no-sandbox`, alternating so that both see the same
/// machine; the difference of the medians is the set-up (namespaces, landlock, seccomp, the
/// library's copy into the private directory and its removal).
pub fn sandbox_setup(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("sandbox: run-local of one line, {SANDBOX_RUNS} times with and without the sandbox");
    let input = bench.inputs().join("sandbox-one-line.txt");
    std::fs::write(&input, "the quick brown fox\n")?;
    let run = |insecure: bool| -> anyhow::Result<Duration> {
        let mut command = bench.kiln();
        command.arg("run-local").arg("--plugin").arg(bench.example("wordcount")).arg("--input").arg(&input);
        command.args(["--processes", "1"]);
        if insecure {
            command.arg("--insecure-no-sandbox");
        }
        let started = std::time::Instant::now();
        checked(&mut command)?;
        Ok(started.elapsed())
    };
    // Builds the plugin into the cache and warms the page cache.
    run(false)?;
    run(true)?;
    let (mut sandboxed, mut unconfined) = (Vec::new(), Vec::new());
    for _ in 0..SANDBOX_RUNS {
        sandboxed.push(run(false)?);
        unconfined.push(run(true)?);
    }
    let (sandboxed, unconfined) = (Samples::from_durations(sandboxed), Samples::from_durations(unconfined));
    let setup = sandboxed.median().saturating_sub(unconfined.median());
    report.section(
        "7. Sandbox set-up per executor start",
        &format!(
            "`kiln run-local` of a one-line word count (plugin cached, one executor), {SANDBOX_RUNS} runs \
             each way, alternating. The difference of the medians is what entering the sandbox costs one \
             executor start; since an executor serves one job, every job pays it once per executor."
        ),
    );
    report.figure("run-local, sandboxed", &sandboxed.describe(), Target::None);
    report.figure("run-local, `--insecure-no-sandbox`", &unconfined.describe(), Target::None);
    report.figure(
        "sandbox set-up (difference of the medians)",
        &super::human(setup),
        Target::AtMost(setup, Duration::from_millis(5), "≤ 5 ms"),
    );
    Ok(())
}
