//! Stress suite (issue 9, reliability): standard tools on a plyfs mount.
//!
//! - `fsx` (the Rust port of the classic exerciser) on a file that starts
//!   in a lower layer: reads, writes, mmap reads and writes, truncates,
//!   fallocate, punch-hole, copy_file_range, sendfile; buffered and
//!   O_DIRECT, with passthrough and without (`passthrough=off`, what
//!   unprivileged users get). See `stress/fsx.rs`.
//! - Load: stress-ng's filesystem stressors, dbench, fio with
//!   `verify=crc32c`, parallel tar/rm loops over lower trees, and a mixed
//!   soak of everything at once. See `stress/load.rs`.
//!
//! Every run samples the daemon's RSS and descriptors (flat once the
//! workload ends), and ends with the upper checked for well-formed markers
//! and mounted by kernel overlayfs, which must show what plyfs showed.
//!
//! CI runs bounded sizes (100k fsx operations per configuration, short
//! load runs). The long run (1M fsx operations per configuration, a
//! 10-minute soak, longer stressors):
//!
//! ```text
//! scripts/stress-long.sh       # or:
//! PLYFS_STRESS_LONG=1 cargo test --release --test stress -- --nocapture --test-threads=1
//! ```
//!
//! Knobs: `PLYFS_STRESS_FSX_OPS`, `PLYFS_STRESS_SEED`, `PLYFS_STRESS_SOAK_SECS`,
//! `PLYFS_STRESS_SECS` (per load tool), `PLYFS_STRESS_REPORT=FILE` (append
//! result rows). Missing tools print SKIPPED; CI installs them all.

mod common;
#[path = "common/monitor.rs"]
mod monitor;
#[path = "common/upper_check.rs"]
mod upper_check;

#[path = "stress/fsx.rs"]
mod fsx;
#[path = "stress/load.rs"]
mod load;
#[path = "stress/regressions.rs"]
mod regressions;

use common::*;
use monitor::*;

use std::path::Path;
use std::time::Duration;

/// Mounts plyfs over `l` with extra `-o` options (e.g. `passthrough=off`).
fn mount_with(l: &Layers, extra: &str) -> PlyfsMount {
    let mut o = l.options();
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    PlyfsMount::start(&l.mnt, &o, &[]).unwrap_or_else(|e| panic!("mount plyfs ({extra}): {e}"))
}

/// Root and /dev/fuse are needed by every test here.
fn runnable(test: &str) -> bool {
    require_root(test) && require_fuse(test)
}

/// The end of every run: the daemon did not panic, its usage is flat once
/// the workload ended, it unmounts cleanly, and the upper is well-formed
/// and shows the same tree under kernel overlayfs.
fn finish(l: &Layers, m: PlyfsMount, sampler: Sampler, what: &str) -> Usage {
    let live = snapshot(&m.mnt);
    let usage = sampler.finish(Duration::from_secs(2));
    let log = m.log();
    assert!(!log.contains("panicked"), "{what}: plyfs panicked:\n{log}");
    eprintln!("{what}: {}", usage.summary());
    usage.assert_flat(what);
    let status = m.unmount();
    assert!(
        status.is_some_and(|s| s.success()),
        "{what}: plyfs exited with {status:?}"
    );
    upper_check::check_with_kernel(l, &live, what);
    usage
}

/// Last `n` lines of a tool's output, for failure messages.
fn tail(out: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(out);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn read_all(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}
