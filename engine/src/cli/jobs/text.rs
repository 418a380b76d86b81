//! How the job commands word a job for people: progress lines, summaries, `kiln status`'s
//! description, counts, ages.

use std::time::{SystemTime, UNIX_EPOCH};

use kiln_engine::rpc::{JobState, JobStatus};

pub(super) fn progress_message(status: &JobStatus) -> String {
    let mut message = status.state.as_str().to_owned();
    if status.state == JobState::Running || status.state == JobState::Aggregating {
        let busy = status.workers.iter().filter(|w| w.in_flight > 0).count();
        message.push_str(&format!(" on {}", plural(busy as u64, "worker")));
    }
    message.push_str(&mishaps(status));
    message
}

/// What went wrong along the way and was overcome, as `, 2 retries, 1 lost worker`; empty
/// when nothing did.
pub(super) fn mishaps(status: &JobStatus) -> String {
    let mut text = String::new();
    if status.retries > 0 {
        text.push_str(&format!(", {}", plural(status.retries, "retry")));
    }
    if status.lost_workers > 0 {
        text.push_str(&format!(", {}", plural(status.lost_workers, "lost worker")));
    }
    if status.speculative > 0 {
        let copies = plural(status.speculative, "speculative copy");
        text.push_str(&format!(", {copies} ({} finished first)", status.speculative_won));
    }
    text
}

/// One line for the end of a job: its state, size and speed.
pub(super) fn summary(status: &JobStatus) -> String {
    let seconds = match (status.started_ms, status.finished_ms) {
        (Some(started), Some(finished)) => finished.saturating_sub(started) as f64 / 1000.0,
        _ => 0.0,
    };
    // The run's time and speed leave the build out; the build has its own figure.
    let build = match &status.build {
        Some(build) if build.crates_total > 0 => {
            format!(", plugin built in {:.1} s", build.elapsed_ms(now_ms()) as f64 / 1000.0)
        }
        _ => String::new(),
    };
    format!(
        "job {} {}: {}, {}, {:.1} MB in {:.2} s ({:.1} MB/s) on {}{}{build}",
        status.id,
        status.state.as_str(),
        plural(status.chunks_done, "chunk"),
        plural(status.lines_done, "line"),
        status.bytes_done as f64 / 1e6,
        seconds,
        status.bytes_done as f64 / 1e6 / seconds.max(1e-3),
        plural(status.workers.iter().filter(|w| w.chunks_done > 0).count() as u64, "worker"),
        mishaps(status)
    )
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A job's status as text, for `kiln status`.
pub(super) fn describe(status: &JobStatus) -> String {
    let mut text = format!(
        "job {} of {}: {}, {} of {} chunks, {} lines, {:.1} of {:.1} MB, {}, {}, {} ({} finished first)\n",
        status.id,
        status.owner,
        status.state.as_str(),
        status.chunks_done,
        status.n_chunks,
        status.lines_done,
        status.bytes_done as f64 / 1e6,
        status.bytes_total as f64 / 1e6,
        plural(status.retries, "retry"),
        plural(status.lost_workers, "lost worker"),
        plural(status.speculative, "speculative copy"),
        status.speculative_won
    );
    let processes = match status.processes {
        0 => "as many chunks at once as each worker runs".to_owned(),
        n => format!("{} per worker", plural(u64::from(n), "chunk")),
    };
    text.push_str(&format!(
        "  input {}, params {:?}, {processes}, plugin {}\n",
        status.input_name,
        shorten(&status.params, 60),
        status.plugin_hash.get(..12).unwrap_or(&status.plugin_hash)
    ));
    text.push_str(&format!("  created {}", age(status.created_ms)));
    if let (Some(started), Some(finished)) = (status.started_ms, status.finished_ms) {
        text.push_str(&format!(", ran {:.1} s", finished.saturating_sub(started) as f64 / 1000.0));
    }
    if let Some(finished) = status.finished_ms {
        text.push_str(&format!(", ended {}", age(finished)));
    }
    text.push('\n');
    if let Some(build) = &status.build {
        let now = now_ms();
        match build.is_finished() {
            true => text.push_str(&format!("  build: {}\n", build.describe(now))),
            false => text.push_str(&format!(
                "  build: {}, {:.1} s so far\n",
                build.describe(now),
                build.elapsed_ms(now) as f64 / 1000.0
            )),
        }
    }
    for worker in &status.workers {
        text.push_str(&format!(
            "  worker {} ({}): {} chunks, {} lines, {} in flight{}\n",
            worker.worker_id,
            worker.address,
            worker.chunks_done,
            worker.lines_done,
            worker.in_flight,
            if worker.lost { ", lost" } else { "" }
        ));
    }
    if let Some(failure) = &status.failure {
        text.push_str(&format!("  failed: {}\n", failure.message.trim_end()));
    }
    text
}

/// `n` and a noun, in the plural unless `n` is 1 ("retry" becomes "retries").
pub(super) fn plural(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// How long ago a time (milliseconds since the epoch) was, in words.
pub(super) fn age(ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let seconds = now.saturating_sub(ms) / 1000;
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86400),
    }
}
