//! Whether the machine is quiet enough to measure, and who else is using it.
//!
//! Every figure of BENCHMARKS.md is a ratio or a time taken on a 2-core machine: another
//! compile running beside the bench halves the baseline and flatters or ruins every ratio. So
//! the bench looks at the load average and at the processes that used CPU in the last moment,
//! at its start and at its end, writes both into the report, and refuses to start on a busy
//! machine unless told `--allow-busy`, which marks every figure as taken under load.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

/// The 1-minute load average above which the machine counts as busy. The bench itself adds
/// about one to the load while it measures, so this is read before it starts anything.
pub const BUSY_LOAD: f64 = 0.5;

/// How long the CPU use of every process is watched to find the busy ones.
const SAMPLE: Duration = Duration::from_secs(1);

/// A process that used a noticeable share of a core during the sample.
const NOTICEABLE_SHARE: f64 = 0.02;

/// The load and the busy processes at one moment.
pub struct Snapshot {
    /// The 1, 5 and 15-minute load averages.
    pub load: [f64; 3],
    /// Processes that used CPU during the sample, busiest first: (share of one core, pid, command).
    pub busy: Vec<(f64, u32, String)>,
}

impl Snapshot {
    /// Reads the load average, then watches every process's CPU time for [`SAMPLE`]. `ours`
    /// are processes to leave out of the list (the bench itself and its parents).
    pub fn take(ours: &[u32]) -> Snapshot {
        let load = load_average();
        let before = cpu_times();
        std::thread::sleep(SAMPLE);
        let after = cpu_times();
        let ticks = clock_ticks() * SAMPLE.as_secs_f64();
        let mut busy: Vec<(f64, u32, String)> = after
            .into_iter()
            .filter(|(pid, _)| !ours.contains(pid))
            .filter_map(|(pid, (time, command))| {
                let used = time.saturating_sub(before.get(&pid).map_or(0, |(t, _)| *t));
                let share = used as f64 / ticks;
                (share >= NOTICEABLE_SHARE).then_some((share, pid, command))
            })
            .collect();
        busy.sort_by(|a, b| b.0.total_cmp(&a.0));
        Snapshot { load, busy }
    }

    /// Whether the 1-minute load says someone else is using the machine.
    pub fn is_busy(&self) -> bool {
        self.load[0] > BUSY_LOAD
    }

    /// "0.12, 0.30, 0.41; busy: 93 % cc1 (pid 812), ..." or "...; no other process used CPU".
    pub fn describe(&self) -> String {
        let mut text = format!("{:.2}, {:.2}, {:.2}", self.load[0], self.load[1], self.load[2]);
        if self.busy.is_empty() {
            text.push_str("; no other process used CPU in the sampled second");
        } else {
            let list: Vec<String> = self
                .busy
                .iter()
                .take(5)
                .map(|(share, pid, command)| format!("{:.0} % `{command}` (pid {pid})", share * 100.0))
                .collect();
            let _ = write!(text, "; using CPU: {}", list.join(", "));
        }
        text
    }
}

/// The bench's own process and its ancestors (cargo, the shell), which are not "others".
pub fn our_processes() -> Vec<u32> {
    let mut ours = vec![std::process::id()];
    let mut pid = std::process::id();
    while let Some(parent) = parent_of(pid).filter(|&p| p > 1) {
        ours.push(parent);
        pid = parent;
    }
    ours
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses; the fields after the last ')' do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(f64::NAN));
    [(); 3].map(|_| fields.next().unwrap_or(f64::NAN))
}

/// Each process's user and system time in clock ticks, with its command name.
fn cpu_times() -> HashMap<u32, (u64, String)> {
    let mut times = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return times };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let command = stat[open + 1..close].to_owned();
        // Fields after the command: state(0) ppid(1) ... utime(11) stime(12).
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        times.insert(pid, (tick(11) + tick(12), command));
    }
    times
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_spinning_beside_us_is_seen_as_busy() {
        let mut spinner =
            std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh starts");
        let snapshot = Snapshot::take(&our_processes());
        let pid = spinner.id();
        let _ = spinner.kill();
        let _ = spinner.wait();
        // On a loaded machine the spinner gets only its fair share of the cores, which may be
        // small; what matters is that it is listed, by name.
        let seen = snapshot.busy.iter().find(|(_, p, _)| *p == pid);
        assert!(seen.is_some_and(|(_, _, command)| command == "sh"), "{}", snapshot.describe());
        assert!(!snapshot.busy.iter().any(|(_, p, _)| *p == std::process::id()), "the bench itself is not listed");
    }
}
