//! What the system under test costs, read from /proc: CPU time (utime + stime of the whole
//! process, all threads included, from `/proc/<pid>/stat`) before and after a measured
//! window, resident memory (VmRSS from `/proc/<pid>/status`, and VmData for what was
//! allocated whether touched or not), and the whole machine's busy time (/proc/stat), so
//! that CPU used by anything else during a window shows up as noise.

use std::collections::BTreeMap;
use std::io;

/// A process to watch, with a label for reports (`gw1`, `archiver`, `node1`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub label: String,
    pub pid: u32,
}

impl std::str::FromStr for Proc {
    type Err = String;

    /// `label=pid` or a bare pid (then labelled by its number).
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, pid) = match s.split_once('=') {
            Some((label, pid)) => (label.trim().to_owned(), pid.trim()),
            None => (s.trim().to_owned(), s.trim()),
        };
        let pid = pid
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not a pid or label=pid"))?;
        Ok(Self { label, pid })
    }
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// (utime, stime) in ticks from the text of `/proc/<pid>/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// A `kB` field (`VmRSS`, `VmData`, …) from the text of `/proc/<pid>/status`.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// Busy ticks of all CPUs from the text of /proc/stat (everything but idle and iowait).
pub fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(t.first()? + t.get(1)? + t.get(2)? + t.get(5)? + t.get(6)? + t.get(7).unwrap_or(&0))
}

/// Seconds all CPUs of the machine have been busy so far.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_machine_busy_ticks(&stat)? as f64 / ticks_per_second())
}

/// CPU seconds the process has used so far: (in user space, in the kernel).
pub fn cpu_split(pid: u32) -> io::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user, kernel) = parse_stat_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
    let hz = ticks_per_second();
    Ok((user as f64 / hz, kernel as f64 / hz))
}

/// CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    cpu_split(pid).map(|(user, kernel)| user + kernel)
}

/// Resident memory in KiB.
pub fn rss_kb(pid: u32) -> io::Result<u64> {
    status_kb(pid, "VmRSS")
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kb(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kb(&status, field)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {field}")))
}

/// The processes whose cost is reported: the system under test, optionally the broker
/// (reported apart, as both systems share it; every node of a cluster, summed), and always
/// this tool itself.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub system: Vec<Proc>,
    pub broker: Vec<u32>,
}

/// CPU seconds of every watched process at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    /// (user, kernel) seconds per labelled process.
    system: BTreeMap<String, (f64, f64)>,
    broker: Option<f64>,
    own: f64,
    machine: Option<f64>,
    at: std::time::Instant,
}

/// CPU seconds used between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct CpuUsed {
    /// Per labelled process of the system under test.
    pub by_process: BTreeMap<String, f64>,
    pub system: f64,
    /// The part of `system` spent in the kernel (syscalls, TCP, scheduling).
    pub system_kernel: f64,
    pub broker: Option<f64>,
    /// This benchmark tool (the load generator shares the machine).
    pub bench: f64,
    /// Every CPU of the machine, busy seconds.
    pub machine: f64,
    /// Wall-clock seconds between the two snapshots.
    pub wall: f64,
}

impl CpuUsed {
    /// Busy CPU seconds of anything not watched (other programs on the machine): noise.
    pub fn other(&self) -> f64 {
        (self.machine - self.system - self.broker.unwrap_or(0.0) - self.bench).max(0.0)
    }

    /// How busy the whole machine was, in percent of all its CPUs.
    pub fn machine_busy_pct(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if self.wall > 0.0 {
            100.0 * self.machine / (self.wall * cpus)
        } else {
            0.0
        }
    }
}

impl Watched {
    /// Reads the CPU time of every process; a process that is gone counts as 0.
    pub fn cpu(&self) -> CpuSnapshot {
        CpuSnapshot {
            system: self
                .system
                .iter()
                .map(|p| (p.label.clone(), cpu_split(p.pid).unwrap_or((0.0, 0.0))))
                .collect(),
            broker: (!self.broker.is_empty()).then(|| {
                self.broker
                    .iter()
                    .map(|&pid| cpu_seconds(pid).unwrap_or(0.0))
                    .sum()
            }),
            own: cpu_seconds(std::process::id()).unwrap_or(0.0),
            machine: machine_busy_seconds(),
            at: std::time::Instant::now(),
        }
    }

    /// Waits until the system and the broker together use less than `cores` CPUs (measured
    /// over 250 ms), so a window does not start while the last one's backlog is still being
    /// worked off (durable queues of a slow subscriber, a peer's write buffers). Gives up
    /// after `limit`; returns whether they went idle.
    pub async fn wait_idle(&self, cores: f64, limit: std::time::Duration) -> bool {
        if self.system.is_empty() && self.broker.is_empty() {
            return true;
        }
        let deadline = std::time::Instant::now() + limit;
        let mut last = self.cpu();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let now = self.cpu();
            let used = last.until(&now);
            let busy = (used.system + used.broker.unwrap_or(0.0)) / used.wall.max(1e-3);
            if busy < cores {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            last = now;
        }
    }

    /// A memory field (`VmRSS`, `VmData`) of each system process, KiB; a process that is
    /// gone counts as 0.
    pub fn memory(&self, field: &str) -> BTreeMap<String, u64> {
        self.system
            .iter()
            .map(|p| (p.label.clone(), status_kb(p.pid, field).unwrap_or(0)))
            .collect()
    }
}

impl CpuSnapshot {
    /// What was used from `self` to `later`.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUsed {
        let used = |label: &str, (user, kernel): (f64, f64)| {
            let (u0, k0) = self.system.get(label).copied().unwrap_or((0.0, 0.0));
            ((user - u0).max(0.0), (kernel - k0).max(0.0))
        };
        let by_process: BTreeMap<String, f64> = later
            .system
            .iter()
            .map(|(label, now)| {
                let (user, kernel) = used(label, *now);
                (label.clone(), user + kernel)
            })
            .collect();
        let system_kernel = later
            .system
            .iter()
            .map(|(label, now)| used(label, *now).1)
            .fold(0.0, |a, b| a + b);
        CpuUsed {
            system: by_process.values().fold(0.0, |a, b| a + b),
            system_kernel,
            by_process,
            broker: match (self.broker, later.broker) {
                (Some(a), Some(b)) => Some((b - a).max(0.0)),
                _ => None,
            },
            bench: (later.own - self.own).max(0.0),
            machine: match (self.machine, later.machine) {
                (Some(a), Some(b)) => (b - a).max(0.0),
                _ => 0.0,
            },
            wall: later.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (tokio (worker) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some((250, 75)));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn rss_comes_from_vmrss() {
        let status = "Name:\tgateway\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nVmData:\t 99 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(12345));
        assert_eq!(parse_status_kb(status, "VmData"), Some(99));
        assert_eq!(parse_status_kb("Name: x\n", "VmRSS"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\n";
        assert_eq!(
            parse_machine_busy_ticks(stat),
            Some(100 + 5 + 50 + 3 + 2 + 1)
        );
        assert!(machine_busy_seconds().is_some());
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(rss_kb(me).unwrap() > 0);
    }

    #[test]
    fn labels_and_bare_pids() {
        let p: Proc = "gw1=123".parse().unwrap();
        assert_eq!((p.label.as_str(), p.pid), ("gw1", 123));
        let p: Proc = "456".parse().unwrap();
        assert_eq!((p.label.as_str(), p.pid), ("456", 456));
        assert!("gw1=x".parse::<Proc>().is_err());
    }
}
