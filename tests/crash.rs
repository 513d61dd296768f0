//! Crash consistency (issue 9): the plyfs daemon is killed with SIGKILL at
//! random moments of a mixed workload (copy-ups of large lower files,
//! metadata copy-ups, renames of files and of lower directories, unlinks,
//! new files made durable with fsync, with and without rename), 50 rounds
//! in CI, alternating passthrough on and off, on uppers that live through
//! several crashes (reset every few rounds). After every crash:
//!
//! - the next plyfs mount leaves nothing in `WORKDIR/work`;
//! - every file whose fsync returned has its data; every completed
//!   metadata change (chmod, rename, unlink) is there; an interrupted one
//!   is either done or not, never half done (one name, not two or none);
//! - no half-copied file is visible: a large lower file shows either its
//!   lower data or its lower data with the completed patch, in full;
//! - the upper passes the upper-layer fsck (`common/upper_check.rs`);
//! - kernel overlayfs mounting the same directories shows what plyfs shows.
//!
//! `PLYFS_CRASH_ROUNDS=N` (default 50; 200 with `PLYFS_STRESS_LONG=1`),
//! `PLYFS_CRASH_SEED=S` replays a run, `PLYFS_CRASH_SELFTEST=1` plants a
//! half-copied file after the second crash to show the checks catch it.

mod common;
#[path = "common/monitor.rs"]
mod monitor;
#[path = "common/upper_check.rs"]
mod upper_check;

use common::*;
use monitor::*;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WORKERS: usize = 3;
const BIG: usize = 8;
/// Large enough that a copy-up (with its fsync) takes a while.
const BIG_SIZE: usize = 32 << 20;
const PATCH_AT: u64 = 8192;
const SMALL: usize = 60;
const DIRS: usize = 6;
const DIR_FILES: usize = 5;
/// Rounds on one upper before it is replaced by an empty one.
const CHAIN: u64 = 5;

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn patch(i: usize) -> Vec<u8> {
    data(0xbad0 + i as u64, 4096)
}

/// The lower layer's content, kept in memory for the checks.
struct Lower {
    big: Vec<Vec<u8>>,
    small: Vec<Vec<u8>>,
    dirs: Vec<BTreeMap<Vec<u8>, EntryInfo>>,
}

fn build_lower(l: &Layers) -> Lower {
    let root = l.lower(0);
    let big: Vec<Vec<u8>> = (0..BIG).map(|i| data(100 + i as u64, BIG_SIZE)).collect();
    for (i, d) in big.iter().enumerate() {
        write(&root.join(format!("big/b{i}")), d);
    }
    let small: Vec<Vec<u8>> = (0..SMALL)
        .map(|i| data(1000 + i as u64, 100 + (i * 997) % 8000))
        .collect();
    for (i, d) in small.iter().enumerate() {
        write(&root.join(format!("small/s{i}")), d);
    }
    std::fs::create_dir_all(root.join("moved")).expect("mkdir moved");
    for i in 0..DIRS {
        for j in 0..DIR_FILES {
            write(
                &root.join(format!("dirs/d{i}/sub/f{j}")),
                &data(5000 + (i * 10 + j) as u64, 3000),
            );
        }
    }
    let dirs = (0..DIRS)
        .map(|i| snapshot(&root.join(format!("dirs/d{i}"))))
        .collect();
    std::fs::create_dir_all(root.join("dur")).expect("mkdir dur");
    Lower { big, small, dirs }
}

// ---- the model ---------------------------------------------------------------

/// What may be seen of one object after a crash: what was completed, and
/// what was in flight when the daemon died.
#[derive(Clone, Debug, Default)]
struct Big {
    /// A patch write was attempted (its data may or may not have reached
    /// plyfs before the crash, unless fsynced).
    patch_tried: bool,
    /// The patch was fsynced: it must be there.
    patch_synced: bool,
    chmod_done: bool,
    chmod_tried: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Home,
    Moved,
    Gone,
}

#[derive(Clone, Debug)]
struct Small {
    done: Loc,
    inflight: Option<Loc>,
}

#[derive(Clone, Debug)]
struct Dir {
    /// false: `dirs/dI`, true: `dirs/rI`.
    renamed: bool,
    inflight: bool,
}

#[derive(Default)]
struct Model {
    big: Vec<Big>,
    small: Vec<Small>,
    dirs: Vec<Dir>,
    /// Files whose fsync (and rename, when made by rename) returned.
    durable: BTreeMap<PathBuf, u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            big: vec![Big::default(); BIG],
            small: vec![
                Small {
                    done: Loc::Home,
                    inflight: None
                };
                SMALL
            ],
            dirs: vec![
                Dir {
                    renamed: false,
                    inflight: false
                };
                DIRS
            ],
            durable: BTreeMap::new(),
        }
    }
}

fn small_path(root: &Path, i: usize, loc: Loc) -> PathBuf {
    match loc {
        Loc::Home => root.join(format!("small/s{i}")),
        Loc::Moved => root.join(format!("moved/s{i}")),
        Loc::Gone => PathBuf::new(),
    }
}

fn dir_path(root: &Path, i: usize, renamed: bool) -> PathBuf {
    root.join(format!("dirs/{}{i}", if renamed { 'r' } else { 'd' }))
}

/// Checks what `root` shows against the model; returns the violations.
fn check_model(root: &Path, m: &Model, lower: &Lower) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, b) in m.big.iter().enumerate() {
        let p = root.join(format!("big/b{i}"));
        let got = match std::fs::read(&p) {
            Ok(g) => g,
            Err(e) => {
                bad.push(format!("big/b{i}: {e}"));
                continue;
            }
        };
        let mut patched = lower.big[i].clone();
        patched[PATCH_AT as usize..PATCH_AT as usize + 4096].copy_from_slice(&patch(i));
        let is_lower = got == lower.big[i];
        let is_patched = got == patched;
        if !(is_lower || is_patched) {
            let first = got
                .iter()
                .zip(&lower.big[i])
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(lower.big[i].len()));
            bad.push(format!(
                "big/b{i}: half-copied or corrupt: {} bytes, first difference from the lower data at {first}",
                got.len()
            ));
        } else if is_patched && !b.patch_tried {
            bad.push(format!("big/b{i}: patched without a patch"));
        } else if is_lower && b.patch_synced {
            bad.push(format!("big/b{i}: fsynced patch lost"));
        }
        let mode = std::fs::metadata(&p).map(|md| md.permissions().mode() & 0o777);
        match mode {
            Ok(0o600) if b.chmod_tried => {}
            Ok(0o644) if !b.chmod_done => {}
            other => bad.push(format!("big/b{i}: mode {other:?}, model {b:?}")),
        }
    }
    for (i, s) in m.small.iter().enumerate() {
        let at: Vec<Loc> = [Loc::Home, Loc::Moved]
            .into_iter()
            .filter(|l| std::fs::symlink_metadata(small_path(root, i, *l)).is_ok())
            .collect();
        let seen = match at.as_slice() {
            [] => Loc::Gone,
            [one] => *one,
            _ => {
                bad.push(format!("s{i}: visible under two names {at:?}"));
                continue;
            }
        };
        if seen != s.done && Some(seen) != s.inflight {
            bad.push(format!("s{i}: at {seen:?}, model {s:?}"));
        }
        if seen != Loc::Gone {
            let p = small_path(root, i, seen);
            if std::fs::read(&p).ok().as_ref() != Some(&lower.small[i]) {
                bad.push(format!(
                    "{}: content differs from the lower file",
                    p.display()
                ));
            }
        }
    }
    for (i, d) in m.dirs.iter().enumerate() {
        let at: Vec<bool> = [false, true]
            .into_iter()
            .filter(|r| dir_path(root, i, *r).is_dir())
            .collect();
        match at.as_slice() {
            [r] if *r == d.renamed || d.inflight => {
                let got = snapshot(&dir_path(root, i, *r));
                if got != lower.dirs[i] {
                    bad.push(format!(
                        "dir {i}: content differs:\n{}",
                        diff(&lower.dirs[i], &got, "lower", "merged")
                    ));
                }
            }
            other => bad.push(format!("dir {i}: seen as renamed={other:?}, model {d:?}")),
        }
    }
    for (p, h) in &m.durable {
        match std::fs::read(root.join(p)) {
            Ok(got) if fnv(&got) == *h => {}
            Ok(got) => bad.push(format!(
                "{}: fsynced file has other data ({} bytes)",
                p.display(),
                got.len()
            )),
            Err(e) => bad.push(format!("{}: fsynced file: {e}", p.display())),
        }
    }
    bad
}

// ---- the workload --------------------------------------------------------------

/// Shared between the workers and the killer.
struct Run {
    mnt: PathBuf,
    killed: AtomicBool,
    ops: AtomicU64,
    /// Copy-ups of big files started but not finished when the kill came.
    copyups_cut: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// One worker's part of the model: objects `i` with `i % WORKERS == w`.
fn worker(run: &Run, w: usize, seed: u64, round: u64, mut m: Model) -> Model {
    let mut rng = SmallRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9));
    let root = &run.mnt;
    let mine = |n: usize, rng: &mut SmallRng| {
        let k = (n - w).div_ceil(WORKERS);
        w + WORKERS * rng.gen_range(0..k)
    };
    let mut seq = 0u64;
    loop {
        if run.killed.load(Ordering::Relaxed) {
            break;
        }
        let pick = rng.gen_range(0..100);
        let r: std::io::Result<()> = (|| {
            match pick {
                0..=14 => {
                    // Copy-up of a big lower file by writing into it.
                    let i = mine(BIG, &mut rng);
                    let first = !m.big[i].patch_tried && !m.big[i].chmod_tried;
                    m.big[i].patch_tried = true;
                    let sync = rng.gen_bool(0.5);
                    let res = (|| {
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(root.join(format!("big/b{i}")))?;
                        f.write_all_at(&patch(i), PATCH_AT)?;
                        if sync {
                            f.sync_all()?;
                        }
                        Ok(())
                    })();
                    if res.is_ok() && sync {
                        m.big[i].patch_synced = true;
                    }
                    if res.is_err() && first && run.killed.load(Ordering::Relaxed) {
                        run.copyups_cut.fetch_add(1, Ordering::Relaxed);
                    }
                    res
                }
                15..=24 => {
                    // Metadata-only change: still a full copy-up.
                    let i = mine(BIG, &mut rng);
                    let first = !m.big[i].patch_tried && !m.big[i].chmod_tried;
                    m.big[i].chmod_tried = true;
                    let res = std::fs::set_permissions(
                        root.join(format!("big/b{i}")),
                        std::fs::Permissions::from_mode(0o600),
                    );
                    if res.is_ok() {
                        m.big[i].chmod_done = true;
                    } else if first && run.killed.load(Ordering::Relaxed) {
                        run.copyups_cut.fetch_add(1, Ordering::Relaxed);
                    }
                    res
                }
                25..=54 => {
                    let i = mine(SMALL, &mut rng);
                    let to = match m.small[i].done {
                        Loc::Home => Loc::Moved,
                        Loc::Moved => Loc::Home,
                        Loc::Gone => return Ok(()),
                    };
                    m.small[i].inflight = Some(to);
                    let res = std::fs::rename(
                        small_path(root, i, m.small[i].done),
                        small_path(root, i, to),
                    );
                    if res.is_ok() {
                        m.small[i].done = to;
                        m.small[i].inflight = None;
                    }
                    res
                }
                55..=61 => {
                    let i = mine(SMALL, &mut rng);
                    if m.small[i].done == Loc::Gone {
                        return Ok(());
                    }
                    m.small[i].inflight = Some(Loc::Gone);
                    let res = std::fs::remove_file(small_path(root, i, m.small[i].done));
                    if res.is_ok() {
                        m.small[i].done = Loc::Gone;
                        m.small[i].inflight = None;
                    }
                    res
                }
                62..=84 => {
                    // A new file made durable, directly or by rename.
                    seq += 1;
                    let name = PathBuf::from(format!("dur/r{round}-w{w}-{seq}"));
                    let content = data(seed ^ (seq << 8) ^ w as u64, rng.gen_range(1..300_000));
                    let via_rename = rng.gen_bool(0.5);
                    let target = if via_rename {
                        PathBuf::from(format!("dur/.tmp-r{round}-w{w}-{seq}"))
                    } else {
                        name.clone()
                    };
                    let mut f = std::fs::File::create(root.join(&target))?;
                    f.write_all(&content)?;
                    f.sync_all()?;
                    drop(f);
                    if via_rename {
                        std::fs::rename(root.join(&target), root.join(&name))?;
                        std::fs::File::open(root.join("dur"))?.sync_all()?;
                    }
                    m.durable.insert(name, fnv(&content));
                    Ok(())
                }
                _ => {
                    let i = mine(DIRS, &mut rng);
                    m.dirs[i].inflight = true;
                    let r = m.dirs[i].renamed;
                    let res = std::fs::rename(dir_path(root, i, r), dir_path(root, i, !r));
                    if res.is_ok() {
                        m.dirs[i].renamed = !r;
                    }
                    if res.is_ok() || !run.killed.load(Ordering::Relaxed) {
                        m.dirs[i].inflight = false;
                    }
                    res
                }
            }
        })();
        match r {
            Ok(()) => {
                run.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) if run.killed.load(Ordering::Relaxed) => break,
            Err(e) => {
                if let Ok(mut v) = run.errors.lock() {
                    v.push(format!("worker {w}, op {pick}, before the kill: {e}"));
                }
                break;
            }
        }
    }
    m
}

/// Merges the workers' models (each owns its own objects).
fn merge(parts: Vec<Model>) -> Model {
    let mut out = Model::new();
    for (w, p) in parts.into_iter().enumerate() {
        for i in (w..BIG).step_by(WORKERS) {
            out.big[i] = p.big[i].clone();
        }
        for i in (w..SMALL).step_by(WORKERS) {
            out.small[i] = p.small[i].clone();
        }
        for i in (w..DIRS).step_by(WORKERS) {
            out.dirs[i] = p.dirs[i].clone();
        }
        out.durable.extend(p.durable);
    }
    out
}

/// After a check, what completed stays the baseline of the next round: an
/// in-flight operation is resolved by what the disk shows.
fn settle(m: &mut Model, root: &Path) {
    for (i, s) in m.small.iter_mut().enumerate() {
        s.done = if small_path(root, i, Loc::Home).exists() {
            Loc::Home
        } else if small_path(root, i, Loc::Moved).exists() {
            Loc::Moved
        } else {
            Loc::Gone
        };
        s.inflight = None;
    }
    for (i, d) in m.dirs.iter_mut().enumerate() {
        d.renamed = dir_path(root, i, true).is_dir();
        d.inflight = false;
    }
    for (i, b) in m.big.iter_mut().enumerate() {
        let mode = std::fs::metadata(root.join(format!("big/b{i}")))
            .map(|md| md.permissions().mode() & 0o777)
            .unwrap_or(0);
        b.chmod_done = mode == 0o600;
        b.chmod_tried = b.chmod_done;
        if !b.patch_synced {
            // Whatever the disk holds now is what a later check must find.
            let got = std::fs::read(root.join(format!("big/b{i}"))).unwrap_or_default();
            let mut at = [0u8; 4096];
            at.copy_from_slice(&got[PATCH_AT as usize..PATCH_AT as usize + 4096]);
            b.patch_tried = at == patch(i)[..];
            b.patch_synced = b.patch_tried;
        }
    }
}

fn rounds() -> u64 {
    env_num("PLYFS_CRASH_ROUNDS", 50, 200)
}

#[test]
fn kill_9_at_random_moments() {
    let test = "kill_9_at_random_moments";
    if !require_root(test) || !require_fuse(test) {
        return;
    }
    let seed: u64 = std::env::var("PLYFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("{test}: seed {seed} (replay with PLYFS_CRASH_SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let l = Layers::new(1);
    let lower = Arc::new(build_lower(&l));
    let mut model = Model::new();
    let n = rounds();
    let (mut ops, mut leftovers_seen, mut cut, mut whiteouts, mut redirects) = (0, 0, 0, 0, 0);
    let mut durable_checks = 0;
    let mut peak_rss = 0u64;
    let mut peak_fds = 0usize;
    let started = Instant::now();
    for round in 0..n {
        if round % CHAIN == 0 && round > 0 {
            // A fresh upper: the next chain of crashes starts from scratch.
            std::fs::remove_dir_all(&l.upper).expect("rm upper");
            std::fs::remove_dir_all(&l.work).expect("rm work");
            std::fs::create_dir(&l.upper).expect("mkdir upper");
            std::fs::create_dir(&l.work).expect("mkdir work");
            model = Model::new();
        }
        let pt = if round % 2 == 0 { "on" } else { "off" };
        let what = format!("round {round} (passthrough={pt}, seed {seed})");
        let opts = format!("{},passthrough={pt}", l.options());
        let m =
            PlyfsMount::start(&l.mnt, &opts, &[]).unwrap_or_else(|e| panic!("{what}: mount: {e}"));
        // Leftovers are moved aside at mount and removed in the background
        // once the mount is live (a huge one must not delay the mount).
        let deadline = Instant::now() + Duration::from_secs(60);
        let leftovers = loop {
            let left = upper_check::work_leftovers(&l.work);
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            leftovers.is_empty(),
            "{what}: work dir not emptied by the mount: {leftovers:?}"
        );
        let pid = m.pid();
        let run = Arc::new(Run {
            mnt: m.mnt.clone(),
            killed: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            copyups_cut: AtomicU64::new(0),
            errors: Default::default(),
        });
        let round_seed = rng.r#gen::<u64>();
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let run = run.clone();
                let part = Model {
                    big: model.big.clone(),
                    small: model.small.clone(),
                    dirs: model.dirs.clone(),
                    durable: BTreeMap::new(),
                };
                std::thread::spawn(move || worker(&run, w, round_seed, round, part))
            })
            .collect();
        // Half the kills come early, while the big files are being copied up.
        let after = if rng.gen_bool(0.5) {
            rng.gen_range(20..400)
        } else {
            rng.gen_range(150..1800)
        };
        std::thread::sleep(Duration::from_millis(after));
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_fds = peak_fds.max(fd_count(pid));
        run.killed.store(true, Ordering::Relaxed);
        // SAFETY: kill of the daemon this test started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut parts = Vec::new();
        for h in handles {
            while !h.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: a worker hangs after the kill"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            parts.push(h.join().expect("worker panicked"));
        }
        let errors = std::mem::take(&mut *run.errors.lock().expect("errors"));
        assert!(
            errors.is_empty(),
            "{what}: errors before the kill:\n{}",
            errors.join("\n")
        );
        // The dead mount answers ENOTCONN: the guard unmounts it lazily.
        drop(m);
        let durable_before = std::mem::take(&mut model.durable);
        let mut merged = merge(parts);
        merged.durable.extend(durable_before);
        model = merged;
        ops += run.ops.load(Ordering::Relaxed);
        cut += run.copyups_cut.load(Ordering::Relaxed);
        if !upper_check::work_leftovers(&l.work).is_empty() {
            leftovers_seen += 1;
        }

        if std::env::var_os("PLYFS_CRASH_SELFTEST").is_some() && round == 1 {
            // Proves the checks bite: a half-copied big file in the upper.
            let half = &lower.big[0][..BIG_SIZE / 2];
            std::fs::create_dir_all(l.upper.join("big")).expect("mkdir");
            std::fs::write(l.upper.join("big/b0"), half).expect("plant a half file");
        }
        // Remount: staging leftovers go, and the model holds.
        let m = PlyfsMount::start(&l.mnt, &opts, &[])
            .unwrap_or_else(|e| panic!("{what}: remount: {e}"));
        // Leftovers are moved aside at mount and removed in the background
        // once the mount is live (a huge one must not delay the mount).
        let deadline = Instant::now() + Duration::from_secs(60);
        let leftovers = loop {
            let left = upper_check::work_leftovers(&l.work);
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            leftovers.is_empty(),
            "{what}: leftovers after the remount: {leftovers:?}"
        );
        let bad = check_model(&m.mnt, &model, &lower);
        durable_checks += model.durable.len();
        assert!(
            bad.is_empty(),
            "{what}: after the crash:\n{}",
            bad.join("\n")
        );
        let live = snapshot(&m.mnt);
        settle(&mut model, &m.mnt);
        let log = m.log();
        assert!(!log.contains("panicked"), "{what}: plyfs panicked:\n{log}");
        drop(m);
        let census = upper_check::check_with_kernel(&l, &live, &what);
        whiteouts += census.whiteouts;
        redirects += census.redirects;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{test}: {n} kills in {secs:.0}s, {ops} operations completed, {cut} copy-ups cut short by the kill, \
         {leftovers_seen} rounds left staging debris (all removed by the next mount), \
         {durable_checks} checks of fsynced files, {whiteouts} whiteouts / {redirects} redirects checked"
    );
    report(
        "kill -9 crash rounds",
        &format!("{n} rounds, passthrough on/off alternating, seed {seed}"),
        &format!("{ops} ops, {cut} copy-ups cut, {leftovers_seen} rounds with debris"),
        0,
        None,
    );
    eprintln!(
        "{test}: daemon peak RSS {:.1} MiB, peak fds {peak_fds}",
        peak_rss as f64 / 1024.0
    );
}

/// The upper checker finds what it is meant to find.
#[test]
fn upper_checker_flags_malformed_markers() {
    use upper_check::*;
    if !require_root("upper_checker_flags_malformed_markers") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/f"), b"x");
    // Well-formed: a whiteout, an opaque dir, a redirect to a lower dir.
    whiteout(&l.upper.join("gone"));
    std::fs::create_dir_all(l.upper.join("o")).unwrap();
    set_xattr(&l.upper.join("o"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::create_dir_all(l.upper.join("moved")).unwrap();
    set_xattr(&l.upper.join("moved"), "trusted.overlay.redirect", b"d").unwrap();
    let (p, census) = check_upper(&l.upper, &l.lowers, Prefix::Trusted);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(
        (census.whiteouts, census.opaque, census.redirects),
        (1, 1, 1)
    );
    // Malformed ones.
    std::fs::write(l.upper.join("file"), b"data").unwrap();
    set_xattr(&l.upper.join("file"), "trusted.overlay.opaque", b"y").unwrap();
    set_xattr(&l.upper.join("o"), "trusted.overlay.redirect", b"../x").unwrap();
    set_xattr(
        &l.upper.join("moved"),
        "trusted.overlay.origin",
        b"\x00\xfb\x05",
    )
    .unwrap();
    set_xattr(&l.upper.join("moved"), "trusted.overlay.bogus", b"1").unwrap();
    std::fs::create_dir_all(l.upper.join("lost")).unwrap();
    set_xattr(
        &l.upper.join("lost"),
        "trusted.overlay.redirect",
        b"/no/such",
    )
    .unwrap();
    std::fs::write(l.upper.join(".wh.old"), b"").unwrap();
    let (p, _) = check_upper(&l.upper, &l.lowers, Prefix::Trusted);
    let all = p.join("\n");
    for want in [
        "/file: overlay.opaque on a non-directory",
        "/o: directory both opaque and redirected",
        "/o: malformed relative redirect",
        "/moved: malformed overlay.origin",
        "/moved: unknown marker overlay.bogus",
        "/lost: redirect \"/no/such\" leads to no lower directory",
        "/.wh.old: OCI whiteout name",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // A real plyfs upper with copy-ups (origins), whiteouts, an opaque
    // directory and a redirect passes.
    let l = Layers::new(1);
    write(&l.lower(0).join("a/f"), b"1");
    write(&l.lower(0).join("a/g"), b"2");
    write(&l.lower(0).join("b/h"), b"3");
    let m = l.mount();
    std::fs::write(m.mnt.join("a/f"), b"changed").unwrap();
    std::fs::remove_file(m.mnt.join("a/g")).unwrap();
    std::fs::rename(m.mnt.join("b"), m.mnt.join("b2")).unwrap();
    std::fs::remove_dir_all(m.mnt.join("a")).unwrap();
    std::fs::create_dir(m.mnt.join("a")).unwrap();
    drop(m);
    let census = assert_upper_ok(&l.upper, &l.lowers, Prefix::Trusted);
    assert!(
        census.whiteouts >= 1 && census.redirects == 1 && census.opaque == 1,
        "{census:?}"
    );
}
