//! Section 12: word count with its input by reference in a local S3-compatible server.
//!
//! moto's standalone server (PyPI's `moto[server]`, which `.ci/run` installs for the tests;
//! found and started by the tests' own `engine/tests/util/moto.rs`) holds the bench's word
//! corpus cut at line ends into [`OBJECTS`] objects. A controller that allows the bucket and
//! one worker of 2 processes, both with the `AWS_*` environment that points at the server,
//! count `s3://BUCKET/PREFIX`: the controller lists the objects and plans splits, the worker
//! reads its splits' byte ranges from the server. Alternating, round by round, with the same
//! corpus by reference as one `file://` file and with the streaming baseline; every output is
//! checked equal to the baseline's count. Without moto the section says how to install it.

#[path = "../../../engine/tests/util/moto.rs"]
mod moto;

use std::path::PathBuf;

use anyhow::Context;

use self::moto::Moto;
use super::cluster::{Cluster, Options};
use super::cluster_measures::{PROCESSES, by_reference, check_word_count, tiny_input};
use super::measures::{Baseline, STREAMING_THREADS, ratio_of, throughput};
use super::report::{Report, Target};
use super::{Bench, Samples, corpus, streaming};

const BUCKET: &str = "kiln-bench";

/// The corpus in this many objects, so that the listing and each object's splits count.
const OBJECTS: usize = 8;

pub fn s3_word_count(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let input = corpus::words(&bench.inputs(), bench.size)?;
    let bytes = std::fs::metadata(&input)?.len();
    report.section(
        "12. Word count with input in a local S3-compatible server",
        &format!(
            "The {} MiB word corpus of section 1, cut at line ends into {OBJECTS} objects in moto's \
             standalone S3 server on this machine's loopback (plain HTTP, authentication \
             off); `kiln submit --input s3://{BUCKET}/words` to a controller started with \
             `--input-url-allow s3://{BUCKET}/` and one worker of {PROCESSES} processes, both given \
             the server as `AWS_ENDPOINT_URL`: the worker reads its splits' byte ranges from the \
             server, the controller only lists and plans. Alternating round by round with the same \
             corpus as one `file://` file (as in section 1) and with the streaming baseline; every \
             output checked equal to the baseline's count. moto is a Python test server, not a \
             production store: its speed bounds this figure.",
            bytes >> 20
        ),
    );
    let Some(program) = moto::find_moto() else {
        report.paragraph(&format!(
            "Not measured: no moto_server on this machine (looked at `KILN_TEST_MOTO`, \
             `/opt/kiln-ci-venv/bin/moto_server` and `PATH`). Install it as `.ci/run` does, `{}`, \
             then rerun this section with `cargo xtask bench --only s3 --output /tmp/s3.md`.",
            moto::INSTALL
        ));
        return Ok(());
    };
    let moto = match Moto::launch(&program, false) {
        Ok(moto) => moto,
        Err(why) => {
            report.paragraph(&format!(
                "Not measured: {why}. Reinstall it as `.ci/run` does (`{}`), then rerun this \
                 section with `cargo xtask bench --only s3 --output /tmp/s3.md`.",
                moto::INSTALL
            ));
            return Ok(());
        }
    };
    let parts = corpus::plain_parts(&bench.inputs(), &input, OBJECTS)?;
    eprintln!("s3: putting {} MiB in {OBJECTS} objects into moto", bytes >> 20);
    moto.upload(BUCKET, &parts, "words/")
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot put the corpus into moto at {}", moto.endpoint))?;
    let base = Baseline { expected: streaming::word_count(&input, STREAMING_THREADS)?, input, bytes };

    let options = Options {
        controller_args: vec!["--input-url-allow".to_owned(), format!("s3://{BUCKET}/")],
        env: moto.env(&moto.secret).into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
        ..Options::default()
    };
    let cluster = Cluster::start_with(bench, 1, PROCESSES, options)?;
    let plugin = bench.example("wordcount");
    let processes = PROCESSES.to_string();
    let args = ["--processes", processes.as_str()];
    cluster.submit(&plugin, &tiny_input(bench)?, &args)?;
    let (s3_url, file_url) = (PathBuf::from(format!("s3://{BUCKET}/words")), by_reference(&base.input));
    let submit = |url: &PathBuf| check_word_count(&cluster.submit(&plugin, url, &args)?.output, &base.expected);
    eprintln!(
        "s3: kiln submit --input s3://…, --input file://… and the streaming baseline, alternating ({} rounds)",
        bench.runs
    );
    let samples = Samples::alternating(
        bench.runs,
        &mut [&mut || submit(&s3_url), &mut || submit(&file_url), &mut || base.stream()],
    )?;
    let [s3, file, streamed] = <[Samples; 3]>::try_from(samples).expect("three measures");
    let memory = cluster.peak_memory()?;
    drop(cluster);

    report.figure(
        &format!("`kiln submit --input s3://{BUCKET}/words` ({OBJECTS} objects in moto)"),
        &throughput(bytes, &s3),
        Target::None,
    );
    let ratio = ratio_of(&streamed, &s3);
    report.figure(
        "S3 by reference ÷ streaming baseline",
        &format!("{ratio:.2}×"),
        Target::AtLeast(ratio, 0.9, "≥ 0.9×"),
    );
    report.figure("`kiln submit --input file://…` (same rounds)", &throughput(bytes, &file), Target::None);
    let file_ratio = ratio_of(&streamed, &file);
    report.figure(
        "`file://` by reference ÷ streaming baseline",
        &format!("{file_ratio:.2}×"),
        Target::AtLeast(file_ratio, 0.9, "≥ 0.9×"),
    );
    report.figure("streaming baseline (same rounds)", &throughput(bytes, &streamed), Target::None);
    let mib = |bytes: u64| format!("{} MiB", bytes >> 20);
    report.figure("controller peak memory (VmHWM) over these runs", &mib(memory.controller), Target::None);
    Ok(())
}
