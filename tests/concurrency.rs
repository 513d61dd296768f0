//! Concurrent creates, renames, unlinks, mkdir/rmdir, stat and readdir in
//! shared and private directories: only the errors a racing program must
//! expect, no hang (watchdog), and afterwards the live view equals a fresh
//! plyfs mount and a kernel overlayfs mount of the same layers on disk.

mod common;

use common::*;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const SHARED: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(4);
/// Far beyond what the work needs: only a hang gets here.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Errors a program racing with others in the same directories must
/// expect. Anything else is a plyfs bug.
const EXPECTED: &[i32] = &[
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::ENOTDIR,
    libc::EISDIR,
    // Renaming a directory that has lower content (like kernel overlay
    // without redirect_dir).
    libc::EXDEV,
];

struct Shared {
    mnt: PathBuf,
    /// Each thread uses its own names (in the same directories), and does
    /// not stat what readdir shows of the others'.
    disjoint: bool,
    /// Whether mkdir/rmdir are among the operations.
    dirs: bool,
    stop: AtomicBool,
    ops: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn check<T>(&self, what: &str, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if !EXPECTED.contains(&errno(&e)) {
                    let mut errs = self.errors.lock().unwrap();
                    if errs.len() < 50 {
                        errs.push(format!("{what}: {e}"));
                    }
                }
                None
            }
        }
    }
}

fn pick_dir(rng: &mut SmallRng, own: &Path, s: &Shared) -> PathBuf {
    match rng.gen_range(0..SHARED + 2) {
        i if i < SHARED => s.mnt.join(format!("shared{i}")),
        i if i == SHARED => s.mnt.clone(),
        _ => own.to_path_buf(),
    }
}

fn pick_name(rng: &mut SmallRng, id: usize, s: &Shared) -> String {
    // Names from the lower (copy-up, whiteouts) and new ones, few enough
    // that threads collide all the time (unless disjoint).
    let base = if rng.gen_bool(0.4) {
        format!("l{}", rng.gen_range(0..6))
    } else {
        format!("n{}", rng.gen_range(0..10))
    };
    if s.disjoint {
        format!("{base}_{id}")
    } else {
        base
    }
}

fn worker(id: usize, s: Arc<Shared>) {
    let mut rng = SmallRng::seed_from_u64(0x9e37_79b9 ^ id as u64);
    let own = s.mnt.join(format!("t{id}"));
    let mut counter = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        counter += 1;
        let dir = pick_dir(&mut rng, &own, &s);
        let name = pick_name(&mut rng, id, &s);
        let p = dir.join(&name);
        let what = format!("t{id} #{counter}");
        let mut op = rng.gen_range(0..12);
        if !s.dirs && (op == 6 || op == 7) {
            op = 8;
        }
        match op {
            0 | 1 => {
                if let Some(mut f) =
                    s.check(&format!("{what} create {p:?}"), std::fs::File::create(&p))
                {
                    s.check(
                        &format!("{what} write {p:?}"),
                        f.write_all(format!("t{id}:{counter}\n").as_bytes()),
                    );
                }
            }
            2 => {
                let r = std::fs::OpenOptions::new().append(true).open(&p);
                if let Some(mut f) = s.check(&format!("{what} append {p:?}"), r) {
                    s.check(
                        &format!("{what} append-write {p:?}"),
                        f.write_all(format!("t{id}:{counter}\n").as_bytes()),
                    );
                }
            }
            3 | 4 => {
                let to = pick_dir(&mut rng, &own, &s).join(pick_name(&mut rng, id, &s));
                s.check(
                    &format!("{what} rename {p:?} -> {to:?}"),
                    std::fs::rename(&p, &to),
                );
            }
            5 => {
                s.check(&format!("{what} unlink {p:?}"), std::fs::remove_file(&p));
            }
            6 => {
                s.check(&format!("{what} mkdir {p:?}"), std::fs::create_dir(&p));
            }
            7 => {
                s.check(&format!("{what} rmdir {p:?}"), std::fs::remove_dir(&p));
            }
            8 => {
                s.check(&format!("{what} stat {p:?}"), std::fs::symlink_metadata(&p));
            }
            9 => {
                s.check(&format!("{what} read {p:?}"), std::fs::read(&p));
            }
            _ => {
                // Readdir, and stat what it lists (entries may vanish).
                let target = if rng.gen_bool(0.5) {
                    dir.clone()
                } else {
                    p.clone()
                };
                if let Some(rd) = s.check(
                    &format!("{what} opendir {target:?}"),
                    std::fs::read_dir(&target),
                ) {
                    for e in rd {
                        if let Some(e) = s.check(&format!("{what} readdir {target:?}"), e) {
                            let mine = e.file_name().to_string_lossy().ends_with(&format!("_{id}"));
                            if s.disjoint && !mine {
                                continue;
                            }
                            s.check(
                                &format!("{what} stat listed {:?}", e.path()),
                                std::fs::symlink_metadata(e.path()),
                            );
                        }
                    }
                }
            }
        }
        s.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lower content under the names the workers use (`suffixes`: "" for
/// shared names, "_ID" for each thread's own).
fn populate(l: &Layers, suffixes: &[String]) {
    for sfx in suffixes {
        for i in 0..SHARED {
            for j in 0..5 {
                write(
                    &l.lower(0).join(format!("shared{i}/l{j}{sfx}")),
                    format!("lower {i}/{j}\n").as_bytes(),
                );
            }
            // A lower directory among the names (rename gives EXDEV, rmdir
            // ENOTEMPTY until emptied).
            write(
                &l.lower(0).join(format!("shared{i}/l5{sfx}/inner")),
                b"inner\n",
            );
        }
        for j in 0..3 {
            write(&l.lower(0).join(format!("l{j}{sfx}")), b"lower root\n");
        }
    }
    std::fs::create_dir_all(l.lower(0).join("l4/sub")).unwrap();
    write(&l.lower(0).join("l4/sub/f"), b"deep\n");
}

/// Runs `threads` workers for RUN_FOR; panics on a hang or on unexpected
/// errors (with the daemon's log).
fn hammer(m: &PlyfsMount, threads: usize, disjoint: bool, dirs: bool) -> u64 {
    let mnt = &m.mnt;
    for id in 0..threads {
        std::fs::create_dir(mnt.join(format!("t{id}"))).expect("mkdir own dir");
    }
    let s = Arc::new(Shared {
        mnt: mnt.to_path_buf(),
        disjoint,
        dirs,
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let (tx, rx) = mpsc::channel();
    for id in 0..threads {
        let s = s.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            worker(id, s);
            let _ = tx.send(id);
        });
    }
    std::thread::sleep(RUN_FOR);
    s.stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + WATCHDOG;
    for _ in 0..threads {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            // Dropping the mount guard (during unwinding) aborts the
            // connection, which frees the stuck threads.
            panic!(
                "hang: workers did not finish within {WATCHDOG:?} after stop ({} ops done)",
                s.ops.load(Ordering::Relaxed)
            );
        }
    }
    let errs = s.errors.lock().unwrap();
    assert!(
        errs.is_empty(),
        "unexpected errors:\n{}\nplyfs log:\n{}",
        errs.join("\n"),
        m.log()
    );
    s.ops.load(Ordering::Relaxed)
}

fn check_consistent(l: &Layers, live: &std::collections::BTreeMap<Vec<u8>, EntryInfo>) {
    // A fresh plyfs mount reads the same tree back from disk.
    let m = l.mount();
    let fresh = snapshot(&m.mnt);
    drop(m);
    let d = diff(live, &fresh, "live plyfs", "fresh plyfs");
    assert!(d.is_empty(), "live view differs from disk:\n{d}");
    // And kernel overlayfs agrees about what is on disk.
    if require_root("concurrency kernel comparison") {
        let k = l.mount_kernel("");
        let kernel = snapshot(&k.mnt);
        drop(k);
        let d = diff(live, &kernel, "plyfs", "kernel overlayfs");
        assert!(d.is_empty(), "plyfs differs from kernel overlayfs:\n{d}");
    }
}

#[test]
fn concurrent_namespace_operations() {
    let l = Layers::new(1);
    populate(&l, &[String::new()]);
    let m = l.mount();
    let ops = hammer(&m, 6, false, true);
    eprintln!("{ops} operations");
    let live = snapshot(&m.mnt);
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
    drop(m);
    check_consistent(&l, &live);
    // Nothing left behind in the staging dir.
    let staged: Vec<_> = std::fs::read_dir(l.work.join("work"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "work/work not empty: {staged:?}");
}

#[test]
fn concurrent_operations_after_forget() {
    // The same with the kernel dropping its caches now and then, so plyfs
    // handles FORGET racing with lookups and renames.
    if !require_root("concurrent_operations_after_forget") {
        return;
    }
    let l = Layers::new(1);
    populate(&l, &[String::new()]);
    let m = l.mount();
    let stop = Arc::new(AtomicBool::new(false));
    let dropper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let ops = hammer(&m, 4, false, true);
    stop.store(true, Ordering::Relaxed);
    dropper.join().unwrap();
    eprintln!("{ops} operations");
    let live = snapshot(&m.mnt);
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
    drop(m);
    check_consistent(&l, &live);
}

/// Each thread with its own names in the shared directories.
fn own_names(dirs: bool) {
    const THREADS: usize = 6;
    let l = Layers::new(1);
    let sfx: Vec<String> = (0..THREADS).map(|i| format!("_{i}")).collect();
    populate(&l, &sfx);
    let m = l.mount();
    let ops = hammer(&m, THREADS, true, dirs);
    eprintln!("{ops} operations");
    let live = snapshot(&m.mnt);
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
    drop(m);
    check_consistent(&l, &live);
}

#[test]
fn concurrent_file_operations_on_own_names_in_shared_dirs() {
    // Same directories, distinct names per thread: directory-level
    // concurrency (locks, listings, copy-up of shared parents, renames
    // between shared directories) without two threads racing on one name.
    own_names(false);
}

#[test]
fn concurrent_file_and_dir_operations_on_own_names_in_shared_dirs() {
    own_names(true);
}

#[test]
fn same_name_recreate_vs_read() {
    // Minimal form of the race: one thread recreates a name, another reads
    // it. Kernel overlayfs only ever gives ENOENT here.
    let l = Layers::new(1);
    write(&l.lower(0).join("d/f"), b"lower");
    let m = l.mount();
    let p = m.mnt.join("d/f");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::write(&p, b"x");
                let _ = std::fs::remove_file(&p);
            }
        })
    };
    let mut bad = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) && bad.len() < 10 {
        if let Err(e) = std::fs::read(&p)
            && errno(&e) != libc::ENOENT
        {
            bad.push(e.to_string());
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(bad.is_empty(), "unexpected errors: {bad:?}");
}
