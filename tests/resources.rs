//! Resource bounds: the daemon's descriptors do not grow with the number of
//! operations or of files seen, they come back down once the kernel
//! forgets inodes, and nothing panics.

mod common;

use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn drop_caches() {
    // 2 = reclaim dentries and inodes: FUSE sends FORGET for each.
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
}

fn assert_no_panic(m: &PlyfsMount) {
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
}

/// Waits (dropping caches again now and then) until the daemon's fd count
/// is at most `limit`; returns the last count.
fn settle_fds(pid: u32, limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = fd_count(pid);
        if n <= limit || Instant::now() > deadline {
            return n;
        }
        drop_caches();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The issue asks for 100k; `PLYFS_CREATE_UNLINK_LOOPS` can lower it.
fn loops() -> usize {
    std::env::var("PLYFS_CREATE_UNLINK_LOOPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn create_unlink_loop(dir: &Path, n: usize) {
    for i in 0..n {
        // Every other name is new (each create makes a new inode that must
        // be forgotten again); the rest reuse a few names, as a busy temp
        // dir would.
        let p = if i % 2 == 0 {
            dir.join(format!("new{i}"))
        } else {
            dir.join(format!("tmp{}", i % 7))
        };
        std::fs::File::create(&p).unwrap_or_else(|e| panic!("create #{i}: {e}"));
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("unlink #{i}: {e}"));
    }
}

#[test]
fn create_unlink_loop_does_not_leak_fds() {
    let l = Layers::new(1);
    // One directory only in the upper, one merged with the lower (so
    // whiteout handling is involved), one only in the lower (copied up).
    write(&l.lower(0).join("merged/keep"), b"keep");
    write(&l.lower(0).join("lowonly/keep"), b"keep");
    std::fs::create_dir(l.upper.join("merged")).unwrap();
    std::fs::create_dir(l.upper.join("uponly")).unwrap();
    let m = l.mount();
    let pid = m.pid();
    // Warm up so lazily opened descriptors are counted in the baseline.
    for d in ["uponly", "merged", "lowonly"] {
        create_unlink_loop(&m.mnt.join(d), 10);
    }
    let base = fd_count(pid);
    let rss_before = rss_kib(pid);
    let n = loops();
    let per_dir = n / 3;
    let start = Instant::now();
    for d in ["uponly", "merged", "lowonly"] {
        create_unlink_loop(&m.mnt.join(d), per_dir);
    }
    let took = start.elapsed();
    eprintln!("{n} create+unlink through plyfs took {took:?}");
    let after = fd_count(pid);
    let settled = settle_fds(pid, base + 16);
    let rss_after = rss_kib(pid);
    eprintln!("fds {base} -> {after} -> {settled}; rss {rss_before} KiB -> {rss_after} KiB");
    // A loose bound against state kept per inode or per request: 50k
    // leaked inodes of even ~1.3 KiB each would exceed it.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "daemon memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        settled <= base + 16,
        "fd count grew from {base} to {after} ({settled} after forgetting)"
    );
    for d in ["uponly", "merged", "lowonly"] {
        let left: Vec<_> = std::fs::read_dir(m.mnt.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter().all(|n| n == "keep"),
            "{d} has leftovers: {left:?}"
        );
    }
    // The work dir holds nothing afterwards but the shared whiteout plyfs
    // links whiteouts to (as the kernel does).
    let staged: Vec<_> = std::fs::read_dir(l.work.join("work"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.to_string_lossy().starts_with("#plyfs.whiteout."))
        .collect();
    assert!(staged.is_empty(), "work/work not empty: {staged:?}");
    assert_no_panic(&m);
}

/// Builds `n` files in `dirs` directories below `root` directly on disk.
fn big_tree(root: &Path, dirs: usize, n: usize) {
    for d in 0..dirs {
        std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        std::fs::write(root.join(format!("d{}/f{i}", i % dirs)), b"x").unwrap();
    }
}

/// Walks the mount: stat and readdir everything, read some files.
fn walk_all(dir: &Path, count: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        *count += 1;
        if md.is_dir() {
            walk_all(&p, count);
        } else if (*count).is_multiple_of(10) {
            assert_eq!(std::fs::read(&p).unwrap(), b"x");
        }
    }
}

#[test]
fn walking_a_big_tree_then_forgetting_returns_fds() {
    if !require_root("walking_a_big_tree_then_forgetting_returns_fds") {
        return;
    }
    // More files than the machine's hard limit of open files (20000): one
    // descriptor per known inode would fail here.
    const FILES: usize = 25_000;
    let l = Layers::new(2);
    big_tree(l.lower(1), 50, FILES);
    // Some in the top lower and the upper too, merged directories.
    big_tree(l.lower(0), 50, 500);
    big_tree(&l.upper, 50, 500);
    let m = l.mount();
    let pid = m.pid();
    let _ = std::fs::metadata(m.mnt.join("d0"));
    drop_caches();
    std::thread::sleep(Duration::from_millis(200));
    let base = fd_count(pid);
    let mut count = 0;
    let start = Instant::now();
    walk_all(&m.mnt, &mut count);
    eprintln!("walked {count} entries in {:?}", start.elapsed());
    assert_eq!(count, 50 + FILES);
    let peak = fd_count(pid);
    // A second walk while everything is cached works too.
    let mut again = 0;
    walk_all(&m.mnt, &mut again);
    assert_eq!(again, count);
    drop_caches();
    let settled = settle_fds(pid, base + 16);
    eprintln!("fds: baseline {base}, after walk {peak}, after forget {settled}");
    assert!(
        settled <= base + 16,
        "fds did not come back down: baseline {base}, after walk {peak}, after forget {settled}"
    );
    // Still fully usable after forgetting.
    let mut third = 0;
    walk_all(&m.mnt, &mut third);
    assert_eq!(third, count);
    assert_no_panic(&m);
}

#[test]
fn many_open_files_at_once_are_served() {
    // Holding many files open at once through the mount: plyfs needs a
    // descriptor per open file, and must stay within its limit gracefully
    // (EMFILE/ENFILE for the caller at worst, never a crash).
    let l = Layers::new(1);
    big_tree(l.lower(0), 10, 3000);
    let m = l.mount();
    let pid = m.pid();
    let base = fd_count(pid);
    let mut open = Vec::new();
    for i in 0..3000 {
        match std::fs::File::open(m.mnt.join(format!("d{}/f{i}", i % 10))) {
            Ok(f) => open.push(f),
            Err(e) => panic!("open #{i}: {e}"),
        }
    }
    drop(open);
    // Release is asynchronous; wait for the daemon to close them.
    let settled = settle_fds(pid, base + 16);
    assert!(
        settled <= base + 16,
        "baseline {base}, after close {settled}"
    );
    assert_no_panic(&m);
}

/// Walking more directories than the descriptor cache holds keeps the
/// daemon's descriptors bounded by the cache (4096), not by the number of
/// directories the kernel remembers.
#[test]
fn descriptors_stay_bounded_by_the_cache_during_a_walk() {
    if !require_root("descriptors_stay_bounded_by_the_cache_during_a_walk") {
        return;
    }
    const DIRS: usize = 10_000;
    let l = Layers::new(1);
    for i in 0..DIRS {
        std::fs::create_dir_all(l.lower(0).join(format!("d{}/e{i}", i % 100))).unwrap();
    }
    let m = l.mount();
    let mut count = 0;
    walk_all(&m.mnt, &mut count);
    assert_eq!(count, DIRS + 100);
    let fds = fd_count(m.pid());
    eprintln!("{fds} descriptors after walking {count} directories");
    assert!(
        fds < 4096 + 256,
        "{fds} descriptors for {count} directories"
    );
    assert_no_panic(&m);
}

/// Cycles of creating and removing thousands of directories (and writing
/// to copied-up files) keep the daemon's memory flat: nothing is kept per object
/// that no longer exists.
#[test]
fn memory_stays_flat_over_create_remove_cycles() {
    if !require_root("memory_stays_flat_over_create_remove_cycles") {
        return;
    }
    let l = Layers::new(1);
    for i in 0..300 {
        write(&l.lower(0).join(format!("f{i}")), b"x");
    }
    let m = PlyfsMount::start(&l.mnt, &format!("{},volatile", l.options()), &[]).unwrap();
    let cycle = |n: usize| {
        for i in 0..n {
            std::fs::create_dir_all(m.mnt.join(format!("a{i}/b"))).unwrap();
            std::fs::write(m.mnt.join(format!("a{i}/b/f")), b"y").unwrap();
        }
        for i in 0..300 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(m.mnt.join(format!("f{i}")))
                .unwrap();
            std::io::Write::write_all(&mut f, b"z").unwrap();
        }
        for i in 0..n {
            std::fs::remove_dir_all(m.mnt.join(format!("a{i}"))).unwrap();
        }
        drop_caches();
    };
    // Warm up (allocator arenas, thread stacks), then measure.
    for _ in 0..3 {
        cycle(3000);
    }
    let before = rss_kib(m.pid());
    for _ in 0..6 {
        cycle(3000);
    }
    let after = rss_kib(m.pid());
    eprintln!("RSS {before} KiB -> {after} KiB over 6 cycles");
    assert!(
        after < before + 3 * 1024,
        "daemon grew from {before} KiB to {after} KiB"
    );
    assert_no_panic(&m);
}

/// Waits (dropping caches again now and then) until the daemon's resident
/// memory is at most `limit` KiB; returns the last figure.
fn settle_rss(pid: u32, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = rss_kib(pid);
        if n <= limit || Instant::now() > deadline {
            return n;
        }
        drop_caches();
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The daemon's resident memory once it stops changing (FORGETs arrive a
/// while after the kernel evicts).
fn steady_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_kib(pid);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let n = rss_kib(pid);
        if n == last || Instant::now() > deadline {
            return n;
        }
        last = n;
    }
}

/// A walk of a tree of many small directories holds a node per entry while
/// the kernel caches them; once the kernel forgets (drop_caches) the daemon
/// hands the memory back and closes its descriptors, and the next walk
/// works as well. The figures per entry are the benchmark's (`scale`); this
/// only checks that memory and descriptors follow the kernel's cache.
#[test]
fn memory_and_fds_come_back_after_a_big_walk() {
    if !require_root("memory_and_fds_come_back_after_a_big_walk") {
        return;
    }
    const DIRS: usize = 400;
    const PER_DIR: usize = 100;
    let l = Layers::new(1);
    for d in 0..DIRS {
        let dir = l.lower(0).join(format!("d{d:04}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..PER_DIR {
            std::fs::File::create(dir.join(format!("f{f:03}"))).unwrap();
        }
    }
    let m = l.mount();
    let pid = m.pid();
    let walk = || {
        let mut count = 0;
        for d in std::fs::read_dir(&m.mnt).unwrap() {
            let d = d.unwrap().path();
            count += 1;
            for f in std::fs::read_dir(&d).unwrap() {
                let md = std::fs::symlink_metadata(f.unwrap().path()).unwrap();
                assert_eq!(md.len(), 0);
                count += 1;
            }
        }
        assert_eq!(count, DIRS * (PER_DIR + 1));
    };
    // A first walk and forget: allocator arenas and thread stacks exist
    // from then on, what follows measures the nodes.
    walk();
    drop_caches();
    let base_fds = settle_fds(pid, 64);
    let base = steady_rss(pid);
    walk();
    let walked = rss_kib(pid);
    let walk_fds = fd_count(pid);
    // The kernel holds every entry now: the daemon must hold their nodes.
    let grown = walked.saturating_sub(base);
    eprintln!(
        "RSS {base} KiB -> {walked} KiB after walking {} entries, fds {base_fds} -> {walk_fds}",
        DIRS * (PER_DIR + 1)
    );
    assert!(grown > 0, "no node memory measured: {base} -> {walked} KiB");
    assert!(
        walk_fds <= base_fds + DIRS + 16,
        "more descriptors than directories: {base_fds} -> {walk_fds}"
    );
    drop_caches();
    let fds = settle_fds(pid, base_fds + 16);
    let limit = base + grown / 4 + 1024;
    let after = settle_rss(pid, limit);
    eprintln!("after drop_caches: RSS {after} KiB (limit {limit}), fds {fds}");
    assert!(
        fds <= base_fds + 16,
        "descriptors not closed: {base_fds} -> {walk_fds} -> {fds}"
    );
    assert!(
        after <= limit,
        "memory not handed back: {base} KiB -> {walked} KiB -> {after} KiB"
    );
    // Still fully usable after forgetting.
    walk();
    assert_no_panic(&m);
}
