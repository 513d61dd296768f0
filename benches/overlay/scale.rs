//! `scale`: the FUSE daemons' memory on a walk of a large tree.
//!
//! The daemon keeps a node for every inode the kernel caches; a walk with
//! a big dentry cache keeps them all. For each size (default 300k and 1M
//! files) a lower layer of directories of 100 empty files is built once
//! under `DIR/scale-<dirs>x100`, then for each FUSE system: mount it with a
//! fresh upper, drop caches, `find MNT -printf '%s\n'` (every entry is
//! stat-ed, so files get nodes too), cold then once more; report the
//! daemon's peak RSS and bytes per entry, its descriptors, and its RSS and
//! descriptors after `echo 3 > drop_caches` (the kernel forgets its inodes).
//!
//! The machine may be shared: if someone else drops caches during the walk
//! the kernel forgets inodes and the peak is too low. The kernel's count of
//! FUSE inodes (`fuse_inode` in /proc/slabinfo) after the walk tells: a run
//! where it did not grow by at least 95% of the entries is repeated (up to
//! three times) and flagged if it never holds.
//!
//! Not part of the default run (a 1M-entry tree, several minutes per
//! system): `--only scale`, sizes with `--scale-sizes 300k,1m`.

use crate::*;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(crate) const WORKLOAD: &str = "scale";
pub(crate) const DESCRIPTION: &str = "daemon memory on a walk of a large lower layer (directories of 100 \
     empty files; find -printf %s, cold then again): peak RSS and bytes per cached entry, RSS and \
     fds after drop_caches; only with --only scale (--scale-sizes 300k,1m)";

/// Files per directory of the scale trees.
const PER_DIR: usize = 100;

/// Parses `300k,1m,50000` into numbers of files.
pub(crate) fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let x = x.trim().to_ascii_lowercase();
            let (num, mul) = match x.strip_suffix('k') {
                Some(n) => (n.to_string(), 1_000),
                None => match x.strip_suffix('m') {
                    Some(n) => (n.to_string(), 1_000_000),
                    None => (x.clone(), 1),
                },
            };
            let n: f64 = num
                .parse()
                .map_err(|_| format!("bad size {x:?} (e.g. 300k, 1m)"))?;
            let files = (n * mul as f64) as usize;
            if files < PER_DIR {
                return Err(format!("size {x:?} is below {PER_DIR} files"));
            }
            Ok(files)
        })
        .collect()
}

/// A built scale tree.
struct ScaleTree {
    lower: PathBuf,
    /// Files and directories below the layer root.
    entries: usize,
}

/// Builds (once) a layer of `files / 100` directories of 100 empty files.
fn ensure_tree(bench_dir: &Path, files: usize) -> Result<ScaleTree, String> {
    let dirs = files / PER_DIR;
    let root = bench_dir.join(format!("scale-{dirs}x{PER_DIR}"));
    let lower = root.join("lower");
    let stamp = root.join("complete");
    let entries = dirs * (PER_DIR + 1);
    if stamp.exists() {
        return Ok(ScaleTree { lower, entries });
    }
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("clean {}: {e}", root.display()))?;
    }
    eprintln!(
        "building scale tree {} ({entries} entries, once) ...",
        root.display()
    );
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    fs::create_dir_all(&lower).map_err(|e| io(&lower, e))?;
    for d in 0..dirs {
        let dir = lower.join(format!("d{d:05}"));
        fs::create_dir(&dir).map_err(|e| io(&dir, e))?;
        for f in 0..PER_DIR {
            let p = dir.join(format!("f{f:03}"));
            File::create(&p).map_err(|e| io(&p, e))?;
        }
    }
    fs::write(&stamp, b"").map_err(|e| io(&stamp, e))?;
    Ok(ScaleTree { lower, entries })
}

/// FUSE inodes the kernel holds, all mounts together (root only).
fn fuse_inodes() -> Option<u64> {
    let slab = fs::read_to_string("/proc/slabinfo").ok()?;
    slab.lines()
        .find(|l| l.starts_with("fuse_inode "))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one walk measured.
pub(crate) struct Figures {
    start: ProcStat,
    walk: ProcStat,
    dropped: ProcStat,
    /// FUSE inodes the kernel gained during the walk.
    held: Option<u64>,
    secs: [f64; 2],
    /// The kernel kept (nearly) every entry: the peak is the real one.
    valid: bool,
}

pub(crate) struct Row {
    files: usize,
    entries: usize,
    system: System,
    attempts: usize,
    result: Result<Figures, String>,
}

pub(crate) struct Env<'a> {
    pub dirs: &'a RunDirs,
    pub bins: &'a Bins,
    pub bench_dir: &'a Path,
    pub can_drop: bool,
    pub timeout: Duration,
}

fn mount(sys: System, lowerdir: &Path, env: &Env) -> Result<Mounted, String> {
    let d = env.dirs;
    if is_mounted(&d.mnt) {
        umount(&d.mnt, libc::MNT_DETACH);
    }
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.display(),
        d.upper.display(),
        d.work.display()
    );
    match sys {
        System::PlyfsUring => opts.push_str(",uring=on"),
        System::PlyfsDevFuse => opts.push_str(",uring=off"),
        _ => {}
    }
    let bin = match sys {
        System::Plyfs | System::PlyfsUring | System::PlyfsDevFuse => &env.bins.plyfs,
        System::PlyfsBase => env
            .bins
            .plyfs_base
            .as_ref()
            .ok_or("plyfs-base needs PLYFS_BASE_BIN")?,
        System::FuseOverlayfs => &env.bins.fuse_overlayfs,
        System::Kernel => return Err("no daemon to measure".into()),
    };
    let log = d.logs.join(format!("scale-{}.log", sys.name()));
    let logf = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(bin)
        .arg("-f")
        .arg("-o")
        .arg(&opts)
        .arg(&d.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut m = Mounted::Fuse {
        mnt: d.mnt.clone(),
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(is_mounted(&d.mnt) && is_fuse(&d.mnt)) {
        if let Some(status) = m.daemon_exit() {
            return Err(format!(
                "{} exited ({status}): {}",
                sys.name(),
                m.log_tail()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not mount within 30 s", sys.name()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(m)
}

fn walk(mnt: &Path, scratch: &Path) -> Result<f64, String> {
    let mut cmd = Command::new("find");
    cmd.arg(mnt)
        .args(["-printf", "%s\\n"])
        .stdout(Stdio::null());
    let t = Instant::now();
    run(cmd, scratch)?;
    Ok(t.elapsed().as_secs_f64())
}

fn measure(sys: System, tree: &ScaleTree, env: &Env) -> Result<Figures, String> {
    env.dirs.reset()?;
    let m = mount(sys, &tree.lower, env)?;
    let pid = m.pid().ok_or("no daemon pid")?;
    let start = proc_stat(pid).ok_or("daemon gone")?;
    if env.can_drop {
        sync_and_drop_caches("3");
    }
    let before = fuse_inodes();
    begin_watch(Some(pid), env.timeout);
    let walked = walk(&env.dirs.mnt, &env.dirs.logs)
        .and_then(|a| Ok([a, walk(&env.dirs.mnt, &env.dirs.logs)?]));
    if let Some(r) = end_watch() {
        return Err(format!("walk {r}"));
    }
    let secs = walked?;
    let walk_stat = proc_stat(pid).ok_or("daemon gone after the walk")?;
    let held = match (before, fuse_inodes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let valid = held.is_none_or(|h| h as f64 >= 0.95 * tree.entries as f64);
    let mut dropped = walk_stat.clone();
    if env.can_drop {
        sync_and_drop_caches("3");
        // FORGETs arrive after the kernel evicts: wait until RSS settles.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(700));
            dropped = proc_stat(pid).ok_or("daemon gone after drop_caches")?;
            if dropped.rss_kib == last {
                break;
            }
            last = dropped.rss_kib;
        }
    }
    drop(m);
    Ok(Figures {
        start,
        walk: walk_stat,
        dropped,
        held,
        secs,
        valid,
    })
}

/// Runs the scale workload for every size and FUSE system.
pub(crate) fn run_all(env: &Env, systems: &[System], sizes: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &files in sizes {
        let tree = match ensure_tree(env.bench_dir, files) {
            Ok(t) => t,
            Err(e) => {
                for &system in systems.iter().filter(|s| s.is_fuse()) {
                    rows.push(Row {
                        files,
                        entries: 0,
                        system,
                        attempts: 0,
                        result: Err(format!("tree: {e}")),
                    });
                }
                continue;
            }
        };
        for &system in systems.iter().filter(|s| s.is_fuse()) {
            let mut attempts = 0;
            let result = loop {
                attempts += 1;
                let r = measure(system, &tree, env);
                match &r {
                    Ok(f) => eprintln!(
                        "  scale        {:>9} {:<15} peak RSS {:.1} MiB, kernel held {:?}{}",
                        tree.entries,
                        system.name(),
                        f.walk.hwm_kib as f64 / 1024.0,
                        f.held,
                        if f.valid {
                            ""
                        } else {
                            " (caches dropped meanwhile?)"
                        }
                    ),
                    Err(e) => eprintln!(
                        "  scale        {} {} FAILED: {e}",
                        tree.entries,
                        system.name()
                    ),
                }
                if !matches!(&r, Ok(f) if !f.valid)
                    || attempts == 3
                    || INTERRUPTED.load(Ordering::SeqCst)
                {
                    break r;
                }
            };
            rows.push(Row {
                files,
                entries: tree.entries,
                system,
                attempts,
                result,
            });
        }
    }
    rows
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn print(rows: &[Row]) {
    println!("memory at scale ({DESCRIPTION}):");
    println!(
        "  {:>9} {:<15} {:>10} {:>11} {:>9} {:>6} {:>8} {:>11} {:>8} {:>12}",
        "entries",
        "system",
        "peak RSS",
        "bytes/entry",
        "start RSS",
        "fds",
        "walk s",
        "after drop",
        "fds",
        "kernel held"
    );
    for r in rows {
        match &r.result {
            Ok(f) => println!(
                "  {:>9} {:<15} {:>6.1} MiB {:>11.0} {:>5.1} MiB {:>6} {:>8} {:>7.1} MiB {:>8} {:>12}{}",
                r.entries,
                r.system.name(),
                mib(f.walk.hwm_kib),
                f.walk.hwm_kib as f64 * 1024.0 / r.entries as f64,
                mib(f.start.rss_kib),
                f.walk.fds,
                format!("{:.1}+{:.1}", f.secs[0], f.secs[1]),
                mib(f.dropped.rss_kib),
                f.dropped.fds,
                f.held.map(|h| h.to_string()).unwrap_or_else(|| "?".into()),
                if f.valid {
                    String::new()
                } else {
                    format!(" NOT ALL CACHED ({} attempts)", r.attempts)
                }
            ),
            Err(e) => println!(
                "  {:>9} {:<15} FAILED: {e}",
                if r.entries > 0 {
                    r.entries.to_string()
                } else {
                    format!("{} files", r.files)
                },
                r.system.name()
            ),
        }
    }
    println!(
        "  bytes/entry = peak RSS / entries; \"kernel held\" = FUSE inodes the kernel gained \
         during the walk (all mounts; fewer than the entries means caches were dropped meanwhile)"
    );
    println!();
}

pub(crate) fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| match &r.result {
            Ok(f) => format!(
                "{{\"entries\": {}, \"system\": {}, \"start_rss_kib\": {}, \"peak_rss_kib\": {}, \
                 \"bytes_per_entry\": {:.1}, \"walk_rss_kib\": {}, \"walk_fds\": {}, \
                 \"walk_seconds\": [{:.3}, {:.3}], \"after_drop_rss_kib\": {}, \
                 \"after_drop_fds\": {}, \"kernel_held\": {}, \"valid\": {}, \"attempts\": {}}}",
                r.entries,
                json_str(r.system.name()),
                f.start.rss_kib,
                f.walk.hwm_kib,
                f.walk.hwm_kib as f64 * 1024.0 / r.entries as f64,
                f.walk.rss_kib,
                f.walk.fds,
                f.secs[0],
                f.secs[1],
                f.dropped.rss_kib,
                f.dropped.fds,
                f.held
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "null".into()),
                f.valid,
                r.attempts
            ),
            Err(e) => format!(
                "{{\"files\": {}, \"system\": {}, \"error\": {}}}",
                r.files,
                json_str(r.system.name()),
                json_str(e)
            ),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// `--only scale`: the memory rows alone, without the layer tree.
pub(crate) fn main(cfg: &Config) -> Result<(), String> {
    let started = Instant::now();
    let sizes = parse_sizes(&cfg.scale_sizes)?;
    let systems = cfg
        .systems
        .clone()
        .unwrap_or_else(|| vec![System::Plyfs, System::FuseOverlayfs]);
    let can_drop = is_root();
    let bins = find_bins(false, false);
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("mkdir {}: {e}", cfg.dir.display()))?;
    let dirs = RunDirs::new(&cfg.dir)?;
    install_watchdog();
    let senv = Env {
        dirs: &dirs,
        bins: &bins,
        bench_dir: &cfg.dir,
        can_drop,
        timeout: Duration::from_secs(cfg.timeout),
    };
    let rows = run_all(&senv, &systems, &sizes);
    let _ = fs::remove_dir_all(&dirs.upper);
    let _ = fs::remove_dir_all(&dirs.work);
    print(&rows);
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("INTERRUPTED: partial results\n");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    let j = format!(
        "{{\n  \"config\": {{\"caches_dropped\": {can_drop}}},\n  \"scale\": {}\n}}\n",
        json(&rows)
    );
    let path = cfg.json_path();
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(&path, j).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}
