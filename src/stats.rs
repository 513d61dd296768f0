//! Request counters and latencies per FUSE operation, for tuning: shown by
//! `plyfs status`, logged on SIGUSR1 and (at info level) at unmount.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// FUSE operations plyfs counts.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        pub enum Op { $($name),* }
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

ops!(
    lookup,
    forget,
    getattr,
    setattr,
    readlink,
    mknod,
    mkdir,
    unlink,
    rmdir,
    symlink,
    rename,
    link,
    open,
    read,
    write,
    flush,
    release,
    fsync,
    opendir,
    readdir,
    readdirplus,
    releasedir,
    fsyncdir,
    statfs,
    setxattr,
    getxattr,
    listxattr,
    removexattr,
    access,
    create,
    fallocate,
    lseek,
    copy_file_range,
    ioctl,
);

/// Counters of one operation, on a cache line of their own (threads
/// serving different operations do not share one).
#[repr(align(64))]
struct OpStat {
    count: AtomicU64,
    /// Sum and maximum of the time from the request's arrival in the
    /// handler to its reply, in nanoseconds.
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

// Sized from the list above, so adding an operation cannot index past it.
static STATS: [OpStat; NAMES.len()] = [const {
    OpStat {
        count: AtomicU64::new(0),
        total_ns: AtomicU64::new(0),
        max_ns: AtomicU64::new(0),
    }
}; NAMES.len()];

/// Counts one request of `op` (without timing it: FORGET has no reply).
#[inline]
pub fn count(op: Op) {
    STATS[op as usize].count.fetch_add(1, Ordering::Relaxed);
}

/// Counts one request of `op` and times it until the returned guard is
/// dropped (at the end of the handler, after its reply). Two reads of the
/// monotonic clock (vDSO) and two relaxed atomics: no lock.
#[inline]
#[must_use = "the request is timed until the guard is dropped"]
pub fn start(op: Op) -> Timer {
    count(op);
    Timer {
        op,
        start: Instant::now(),
    }
}

/// Times one request (see [`start`]).
pub struct Timer {
    op: Op,
    start: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let s = &STATS[self.op as usize];
        s.total_ns.fetch_add(ns, Ordering::Relaxed);
        // Most requests are not the slowest: read before writing.
        if ns > s.max_ns.load(Ordering::Relaxed) {
            s.max_ns.fetch_max(ns, Ordering::Relaxed);
        }
    }
}

/// Figures of one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpFigures {
    pub name: String,
    pub count: u64,
    /// Sum and maximum of the request latencies, in nanoseconds.
    pub total_ns: u64,
    pub max_ns: u64,
}

impl OpFigures {
    /// Mean latency in nanoseconds (0 without requests).
    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }
}

/// Every operation seen so far, in the order of the operation list.
pub fn snapshot() -> Vec<OpFigures> {
    STATS
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let count = s.count.load(Ordering::Relaxed);
            (count > 0).then(|| OpFigures {
                name: NAMES[i].to_string(),
                count,
                total_ns: s.total_ns.load(Ordering::Relaxed),
                max_ns: s.max_ns.load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// "op=count ..." for every operation seen so far, with the mean and
/// maximum latency of timed ones ("op=count (mean/max µs)").
pub fn summary() -> String {
    let mut s = String::new();
    for f in snapshot() {
        if f.total_ns > 0 {
            s.push_str(&format!(
                "{}={} ({:.1}/{:.1}µs) ",
                f.name,
                f.count,
                f.mean_ns() as f64 / 1000.0,
                f.max_ns as f64 / 1000.0
            ));
        } else {
            s.push_str(&format!("{}={} ", f.name, f.count));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_counter() {
        count(Op::lookup);
        count(Op::copy_file_range);
        assert_eq!(NAMES.len(), STATS.len());
        assert!(summary().contains("copy_file_range="));
        {
            let _t = start(Op::fsyncdir);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let f = snapshot()
            .into_iter()
            .find(|f| f.name == "fsyncdir")
            .unwrap();
        assert!(f.count >= 1 && f.max_ns >= 2_000_000 && f.total_ns >= f.max_ns);
        assert!(f.mean_ns() > 0);
    }
}
