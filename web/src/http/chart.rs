//! The throughput chart of an ended run, drawn on the server as SVG from the run's stored
//! samples: throughput (bytes per second, in a unit that fits) against the time since the run
//! began (seconds), with both axes ticked and labelled. A run of one second still has its
//! samples (the first at its start), so it gets a chart too. Live runs are drawn by
//! `static/run.js` the same way.

use super::format;

/// The plot area inside the SVG's `viewBox="0 0 640 220"`.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 628.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 184.0;

/// Ticks on each axis, ends included.
const TICKS: u32 = 5;

/// A labelled position on an axis (an x or a y coordinate of the SVG).
pub struct Tick {
    pub at: String,
    pub label: String,
}

/// What the template draws.
pub struct Chart {
    /// The throughput as steps, `x,y x,y …` in SVG coordinates.
    pub line: String,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: Vec<Tick>,
    /// The unit of the y axis (`MiB/s`).
    pub y_unit: &'static str,
}

/// The chart of `samples` (`[ms since the start, bytes done]`), or `None` when there is no
/// interval to draw.
pub fn throughput(samples: &[[u64; 2]]) -> Option<Chart> {
    // Each interval between samples (the first from the start, at nothing done) at its rate.
    let mut steps = Vec::new();
    let mut previous = [0u64, 0u64];
    for sample in samples {
        if sample[0] > previous[0] {
            let rate = sample[1].saturating_sub(previous[1]) as f64 * 1000.0 / (sample[0] - previous[0]) as f64;
            steps.push((previous[0], sample[0], rate));
            previous = *sample;
        }
    }
    let end_ms = steps.last()?.1;
    let top_rate = steps.iter().map(|step| step.2).fold(0.0, f64::max);
    let (unit_size, y_unit) = rate_unit(top_rate);
    let y_max = nice_ceiling(top_rate / unit_size).max(1.0);
    let x_max = nice_ceiling(end_ms as f64 / 1000.0);
    let x = |ms: u64| LEFT + (ms as f64 / 1000.0) / x_max * (RIGHT - LEFT);
    let y = |rate: f64| BOTTOM - (rate / unit_size) / y_max * (BOTTOM - TOP);
    let mut points = Vec::with_capacity(steps.len() * 2);
    for (from, to, rate) in &steps {
        points.push(format!("{:.1},{:.1}", x(*from), y(*rate)));
        points.push(format!("{:.1},{:.1}", x(*to), y(*rate)));
    }
    let tick = |n: u32| f64::from(n) / f64::from(TICKS - 1);
    let x_ticks = (0..TICKS)
        .map(|n| Tick {
            at: format!("{:.1}", LEFT + tick(n) * (RIGHT - LEFT)),
            label: format!("{} s", number(tick(n) * x_max)),
        })
        .collect();
    let y_ticks = (0..TICKS)
        .map(|n| Tick {
            at: format!("{:.1}", BOTTOM - tick(n) * (BOTTOM - TOP)),
            label: format!("{} {y_unit}", number(tick(n) * y_max)),
        })
        .collect();
    Some(Chart { line: points.join(" "), x_ticks, y_ticks, y_unit })
}

/// A phase of a run's timeline: its state, when it began, how long it lasted, and where its
/// bar lies on a line 0 to 640 wide.
pub struct Phase {
    pub state: String,
    pub duration: String,
    pub x: String,
    pub width: String,
}

/// The phases of a run from `created_ms` (submitting) through `phases` to `end_ms`.
pub fn timeline(created_ms: i64, phases: &[(String, u64)], end_ms: i64) -> Vec<Phase> {
    let mut starts: Vec<(String, i64)> = vec![("submitting".to_owned(), created_ms)];
    for (state, at) in phases {
        let at = i64::try_from(*at).unwrap_or(i64::MAX).max(starts.last().map_or(created_ms, |s| s.1));
        starts.push((state.clone(), at));
    }
    // The final state is the end, not a phase.
    let end = starts.last().filter(|(state, _)| is_final(state)).map_or(end_ms, |last| last.1);
    starts.retain(|(state, _)| !is_final(state));
    let span = (end - created_ms).max(1) as f64;
    let mut out = Vec::new();
    for (i, (state, from)) in starts.iter().enumerate() {
        let to = starts.get(i + 1).map_or(end, |next| next.1).max(*from);
        out.push(Phase {
            state: state.clone(),
            duration: format::duration(to - from),
            x: format!("{:.1}", (from - created_ms) as f64 / span * 640.0),
            width: format!("{:.1}", ((to - from) as f64 / span * 640.0).max(1.0)),
        });
    }
    out
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// The unit of a rate: its size in bytes per second and its name.
fn rate_unit(bytes_per_second: f64) -> (f64, &'static str) {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut size = 1.0;
    let mut unit = 0;
    while bytes_per_second / size >= 1024.0 && unit < UNITS.len() - 1 {
        size *= 1024.0;
        unit += 1;
    }
    (size, UNITS[unit])
}

/// The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `value` (and above 0).
fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * power).find(|nice| *nice >= value * 0.999_999).unwrap_or(10.0 * power)
}

/// A tick's number: whole when it is, else with as few decimals as it needs (at most 2).
fn number(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The byte count shown beside a worker, for the table.
pub fn bytes(n: u64) -> String {
    format::bytes(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_second_run_has_axes_in_seconds_and_a_rate_unit_that_fits() {
        // 3 MiB in the first half second, 1 MiB in the second.
        let chart = throughput(&[[500, 3 << 20], [1000, 4 << 20]]).expect("a chart");
        assert_eq!(chart.y_unit, "MiB/s");
        let x: Vec<&str> = chart.x_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(x, ["0 s", "0.25 s", "0.5 s", "0.75 s", "1 s"]);
        let y: Vec<&str> = chart.y_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(y, ["0 MiB/s", "2.5 MiB/s", "5 MiB/s", "7.5 MiB/s", "10 MiB/s"]);
        // Two steps: 6 MiB/s to 0.5 s, then 2 MiB/s to 1 s (the right end).
        assert_eq!(chart.line, "64.0,80.8 346.0,80.8 346.0,149.6 628.0,149.6");
    }

    #[test]
    fn a_timeline_has_each_phase_from_its_start_to_the_next_and_ends_with_the_run() {
        let phases = [("queued".to_owned(), 1_100), ("running".to_owned(), 1_300), ("succeeded".to_owned(), 2_000)];
        let timeline = timeline(1_000, &phases, 2_500);
        let shown: Vec<(&str, &str, &str)> =
            timeline.iter().map(|p| (p.state.as_str(), p.duration.as_str(), p.x.as_str())).collect();
        assert_eq!(
            shown,
            [("submitting", "100 ms", "0.0"), ("queued", "200 ms", "64.0"), ("running", "700 ms", "192.0")]
        );
        assert_eq!(timeline[2].width, "448.0");
    }

    #[test]
    fn no_interval_no_chart() {
        assert!(throughput(&[]).is_none());
        assert!(throughput(&[[0, 0]]).is_none());
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
    }
}
