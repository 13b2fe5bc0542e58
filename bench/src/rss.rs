//! Resident-set-size tracking of the server processes: a thread polls `/proc/<pid>/status`
//! (`VmRSS`) every 10 ms, and `VmHWM` (the kernel's own peak) is read around each phase. Also
//! the CPU time a process has used, to tell where a phase's cycles went.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(10);

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&s, field)
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// A counter of `/proc/<pid>/io` (`rchar`: bytes the process read through read-like system
/// calls, files and sockets alike; `read_bytes`: bytes fetched from the storage layer).
pub fn io_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    parse_io_field(&s, field)
}

fn parse_io_field(io: &str, field: &str) -> Option<u64> {
    io.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().parse().ok()
    })
}

/// CPU time (user + system) `pid` has used so far, in seconds (`/proc/<pid>/stat`, 100 ticks a
/// second as on every Linux this runs on).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // After the command name (in parentheses, which may hold spaces) come the fields from
    // `state` (field 3) on; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resets the kernel's peak RSS (`VmHWM`) of `pid` to its current RSS (`echo 5 > clear_refs`).
/// Returns false when the kernel refused (then the sampled maximum is all there is).
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[derive(Default)]
struct Peaks {
    phase: AtomicU64,
    run: AtomicU64,
}

/// Polls the RSS of some processes until dropped.
pub struct RssSampler {
    pids: Vec<u32>,
    peaks: Arc<Vec<Peaks>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> anyhow::Result<Self> {
        let peaks: Arc<Vec<Peaks>> = Arc::new(pids.iter().map(|_| Peaks::default()).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pids, peaks, stop) = (pids.clone(), peaks.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for (pid, p) in pids.iter().zip(peaks.iter()) {
                            if let Some(rss) = status_field(*pid, "VmRSS") {
                                p.phase.fetch_max(rss, Ordering::Relaxed);
                                p.run.fetch_max(rss, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(POLL);
                    }
                })?
        };
        Ok(Self {
            pids,
            peaks,
            stop,
            thread: Some(thread),
        })
    }

    fn index(&self, pid: u32) -> Option<usize> {
        self.pids.iter().position(|p| *p == pid)
    }

    /// Starts a new phase: the phase maximum restarts from zero and `VmHWM` is reset, after
    /// folding the old `VmHWM` into the whole-run peak.
    pub fn begin_phase(&self) {
        for (pid, p) in self.pids.iter().zip(self.peaks.iter()) {
            if let Some(hwm) = status_field(*pid, "VmHWM") {
                p.run.fetch_max(hwm, Ordering::Relaxed);
            }
            p.phase.store(0, Ordering::Relaxed);
            reset_hwm(*pid);
        }
    }

    /// Peak RSS of `pid` since [`begin_phase`](Self::begin_phase): the larger of the sampled
    /// maximum and `VmHWM`.
    pub fn phase_peak(&self, pid: u32) -> Option<u64> {
        let p = &self.peaks[self.index(pid)?];
        let hwm = status_field(pid, "VmHWM").unwrap_or(0);
        p.run.fetch_max(hwm, Ordering::Relaxed);
        Some(p.phase.load(Ordering::Relaxed).max(hwm))
    }

    /// Peak RSS of `pid` over the sampler's whole life.
    pub fn run_peak(&self, pid: u32) -> Option<u64> {
        let p = &self.peaks[self.index(pid)?];
        let hwm = status_field(pid, "VmHWM").unwrap_or(0);
        Some(p.run.fetch_max(hwm, Ordering::Relaxed).max(hwm))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kb_fields() {
        let s = "Name:\tmanta\nVmHWM:\t   51200 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(parse_status_field(s, "VmRSS"), Some(20480 * 1024));
        assert_eq!(parse_status_field(s, "VmHWM"), Some(51200 * 1024));
        assert_eq!(parse_status_field(s, "VmSwap"), None);
    }

    #[test]
    fn parses_io_counters() {
        let s = "rchar: 12345\nwchar: 99\nsyscr: 7\nread_bytes: 4096\n";
        assert_eq!(parse_io_field(s, "rchar"), Some(12345));
        assert_eq!(parse_io_field(s, "read_bytes"), Some(4096));
        assert_eq!(parse_io_field(s, "cancelled_write_bytes"), None);
        assert!(io_field(std::process::id(), "rchar").is_some());
    }

    #[test]
    fn parses_cpu_ticks() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn samples_own_process() {
        let me = std::process::id();
        let s = RssSampler::start(vec![me]).expect("start");
        std::thread::sleep(Duration::from_millis(30));
        let peak = s.phase_peak(me).expect("peak");
        assert!(peak > 0);
        assert!(s.run_peak(me).expect("run peak") >= peak);
    }
}
