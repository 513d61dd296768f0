//! Daemon resource sampling for the stress, crash and fault suites: a
//! background thread records the plyfs daemon's resident memory and open
//! descriptors while a workload runs; afterwards the figures are checked
//! for growth once the workload has ended, and reported in one line per
//! run (also appended to `$PLYFS_STRESS_REPORT` when set, so the long run
//! can print a table).
//!
//! Declared from a test with `#[path = "common/monitor.rs"] mod monitor;`
//! next to `mod common;`.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Resident memory of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process (0 when it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Makes the kernel forget unused dentries and inodes (FUSE sends FORGET
/// for each, so the daemon can drop what it cached for them).
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

/// `true` when running in the long (documented, not CI) mode.
pub fn long_run() -> bool {
    std::env::var_os("PLYFS_STRESS_LONG").is_some_and(|v| v != "0" && !v.is_empty())
}

/// A number from the environment, or `default` (`long` in the long mode).
pub fn env_num(name: &str, default: u64, long: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number")),
        Err(_) if long_run() => long,
        Err(_) => default,
    }
}

/// Finds an external tool on PATH (or in ~/.cargo/bin for cargo-installed
/// ones); prints a SKIPPED line for `test` when it is missing. CI installs
/// every tool, so there nothing is skipped.
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    for d in ["/usr/sbin", "/sbin", "/root/.cargo/bin"] {
        dirs.push(PathBuf::from(d));
    }
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED {test}: `{name}` is not installed (CI installs it: see .ci/run)");
    }
    found
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: usize,
}

/// Samples a daemon's RSS and descriptor count every `period` until
/// stopped.
pub struct Sampler {
    pid: u32,
    start: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
    /// When the workload ended (set by [`Sampler::workload_done`]).
    done_at: Option<Duration>,
    pub baseline: Sample,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        Self::with_period(pid, Duration::from_millis(100))
    }

    pub fn with_period(pid: u32, period: Duration) -> Sampler {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let baseline = Sample {
            at: Duration::ZERO,
            rss_kib: rss_kib(pid),
            fds: fd_count(pid),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let s = Sample {
                        at: start.elapsed(),
                        rss_kib: rss_kib(pid),
                        fds: fd_count(pid),
                    };
                    if s.rss_kib > 0 {
                        out.push(s);
                    }
                    std::thread::sleep(period);
                }
                out
            })
        };
        Sampler {
            pid,
            start,
            stop,
            thread: Some(thread),
            done_at: None,
            baseline,
        }
    }

    /// Marks the end of the workload; samples after it are the idle tail.
    pub fn workload_done(&mut self) {
        self.done_at = Some(self.start.elapsed());
    }

    /// Keeps sampling an idle daemon for `idle`, dropping the kernel's
    /// caches first, then stops and returns the figures.
    pub fn finish(mut self, idle: Duration) -> Usage {
        if self.done_at.is_none() {
            self.workload_done();
        }
        drop_caches();
        std::thread::sleep(idle);
        drop_caches();
        // Descriptors of forgotten inodes are released as FORGETs arrive.
        let deadline = Instant::now() + Duration::from_secs(15);
        while fd_count(self.pid) > self.baseline.fds + FD_SLACK && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            drop_caches();
        }
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let done = self.done_at.unwrap_or_default();
        let during: Vec<&Sample> = samples.iter().filter(|s| s.at <= done).collect();
        let after: Vec<&Sample> = samples.iter().filter(|s| s.at > done).collect();
        let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let end = during.last().copied().copied().unwrap_or(self.baseline);
        let last = after.last().copied().copied().unwrap_or(end);
        let idle_max_rss = after
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(last.rss_kib);
        Usage {
            baseline: self.baseline,
            peak_rss_kib: peak_rss.max(self.baseline.rss_kib),
            peak_fds: peak_fds.max(self.baseline.fds),
            end,
            last,
            idle_max_rss_kib: idle_max_rss,
            samples: samples.len(),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Descriptors an idle daemon may hold beyond its count right after the
/// mount (the shared whiteout, a few cached directories, ...).
pub const FD_SLACK: usize = 32;
/// Memory an idle daemon may add after the workload ended (allocator
/// noise on a shared machine), in KiB.
pub const RSS_GROWTH_SLACK_KIB: u64 = 16 * 1024;

/// What a [`Sampler`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub baseline: Sample,
    pub peak_rss_kib: u64,
    pub peak_fds: usize,
    /// The last sample while the workload ran.
    pub end: Sample,
    /// The last sample, idle, after caches were dropped.
    pub last: Sample,
    pub idle_max_rss_kib: u64,
    pub samples: usize,
}

impl Usage {
    /// Asserts that the daemon stops growing once the workload ended: its
    /// memory does not climb while idle, and its descriptors come back to
    /// (near) what it held right after mounting.
    pub fn assert_flat(&self, what: &str) {
        assert!(
            self.idle_max_rss_kib
                <= self.end.rss_kib.max(self.baseline.rss_kib) + RSS_GROWTH_SLACK_KIB,
            "{what}: daemon RSS grew after the workload ended: {} KiB at the end, up to {} KiB idle",
            self.end.rss_kib,
            self.idle_max_rss_kib
        );
        assert!(
            self.last.fds <= self.baseline.fds + FD_SLACK,
            "{what}: daemon holds {} fds after the workload and drop_caches (baseline {})",
            self.last.fds,
            self.baseline.fds
        );
    }

    pub fn summary(&self) -> String {
        format!(
            "peak RSS {:.1} MiB, peak fds {}; after: {:.1} MiB, {} fds (baseline {:.1} MiB, {} fds)",
            self.peak_rss_kib as f64 / 1024.0,
            self.peak_fds,
            self.last.rss_kib as f64 / 1024.0,
            self.last.fds,
            self.baseline.rss_kib as f64 / 1024.0,
            self.baseline.fds
        )
    }
}

/// Prints one result row (`| tool | configuration | ops | failures | peak
/// RSS | peak fds | after |`) and appends it to `$PLYFS_STRESS_REPORT`.
pub fn report(tool: &str, config: &str, ops: &str, failures: u64, usage: Option<&Usage>) {
    let (rss, fds, after) = match usage {
        Some(u) => (
            format!("{:.1} MiB", u.peak_rss_kib as f64 / 1024.0),
            u.peak_fds.to_string(),
            format!(
                "{:.1} MiB / {} fds",
                u.last.rss_kib as f64 / 1024.0,
                u.last.fds
            ),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let row = format!("| {tool} | {config} | {ops} | {failures} | {rss} | {fds} | {after} |");
    eprintln!("STRESS-REPORT {row}");
    if let Some(path) = std::env::var_os("PLYFS_STRESS_REPORT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{row}");
    }
}
