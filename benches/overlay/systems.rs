//! Mounting kernel overlayfs, plyfs and fuse-overlayfs with a guard.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

// ---------------------------------------------------------------------------
// Mounts

/// Where each run's upper, work and mount point live; reset per run.
pub(crate) struct RunDirs {
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) mnt: PathBuf,
    pub(crate) logs: PathBuf,
    /// Held while the runs use these directories.
    _lock: File,
}

impl RunDirs {
    pub(crate) fn new(bench_dir: &Path) -> Result<RunDirs, String> {
        let root = bench_dir.join("runs");
        // Two benches on one directory would mount over each other's
        // upper and work: the second refuses.
        let lock_path = bench_dir.join("runs.lock");
        let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // SAFETY: flock on a file we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "another benchmark is running in {} (use another --dir)",
                bench_dir.display()
            ));
        }
        // Detach anything a killed run left mounted here.
        for (mp, _) in mounts() {
            if mp.starts_with(&root) {
                eprintln!("detaching stale mount {}", mp.display());
                umount(&mp, libc::MNT_DETACH);
            }
        }
        let d = RunDirs {
            upper: root.join("upper"),
            work: root.join("work"),
            mnt: root.join("mnt"),
            logs: root.join("logs"),
            _lock: lock,
        };
        for p in [&d.mnt, &d.logs] {
            fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
        Ok(d)
    }

    pub(crate) fn reset(&self) -> Result<(), String> {
        for p in [&self.upper, &self.work] {
            if p.exists() {
                fs::remove_dir_all(p).map_err(|e| format!("clean {}: {e}", p.display()))?;
            }
            fs::create_dir(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
        Ok(())
    }

    pub(crate) fn options(&self, tree: &Tree) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.lowerdir(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// A mounted union; unmounts on drop.
pub(crate) enum Mounted {
    Kernel {
        mnt: PathBuf,
    },
    Fuse {
        mnt: PathBuf,
        child: Option<Child>,
        log: PathBuf,
    },
}

impl Mounted {
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Mounted::Fuse { child, .. } => child.as_ref().map(Child::id),
            Mounted::Kernel { .. } => None,
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        match self {
            Mounted::Fuse { log, .. } => tail(log),
            Mounted::Kernel { .. } => String::new(),
        }
    }

    /// plyfs's request counters so far: SIGUSR1 makes it log them.
    pub(crate) fn requests(&self) -> Option<Requests> {
        let Mounted::Fuse {
            child: Some(c),
            log,
            ..
        } = self
        else {
            return None;
        };
        let (before, _) = last_requests(log);
        // SAFETY: signal a child we spawned.
        unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let (n, last) = last_requests(log);
            if n > before {
                return last;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// The daemon died during the run: its exit status.
    pub(crate) fn daemon_exit(&mut self) -> Option<String> {
        match self {
            Mounted::Fuse { child: Some(c), .. } => {
                c.try_wait().ok().flatten().map(|s| s.to_string())
            }
            _ => None,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match self {
            Mounted::Kernel { mnt } => {
                if !umount(mnt, 0) {
                    umount(mnt, libc::MNT_DETACH);
                }
            }
            Mounted::Fuse { mnt, child, .. } => {
                if let Some(mut c) = child.take() {
                    // SIGTERM: both daemons unmount themselves and exit.
                    // SAFETY: signal a child we spawned.
                    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                    let deadline = Instant::now() + Duration::from_secs(15);
                    loop {
                        if let Ok(Some(_)) = c.try_wait() {
                            break;
                        }
                        if Instant::now() > deadline {
                            umount(mnt, libc::MNT_DETACH);
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if is_mounted(mnt) && !umount(mnt, 0) {
                    umount(mnt, libc::MNT_DETACH);
                }
            }
        }
    }
}

/// The binaries and how the systems are started.
pub(crate) struct Bins {
    pub(crate) plyfs: PathBuf,
    pub(crate) fuse_overlayfs: PathBuf,
    /// `PLYFS_BASE_BIN`: the plyfs-base system.
    pub(crate) plyfs_base: Option<PathBuf>,
    /// In a user namespace: kernel overlayfs and plyfs with `userxattr`.
    pub(crate) rootless: bool,
    /// Run plyfs at log level info, so that SIGUSR1 logs its request counters.
    pub(crate) count: bool,
}

pub(crate) fn find_bins(rootless: bool, count: bool) -> Bins {
    let plyfs = std::env::var_os("PLYFS_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_plyfs").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("release/plyfs"))
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/plyfs"));
    let fuse_overlayfs = std::env::var_os("FUSE_OVERLAYFS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/fuse-overlayfs"));
    Bins {
        plyfs,
        fuse_overlayfs,
        plyfs_base: std::env::var_os("PLYFS_BASE_BIN").map(PathBuf::from),
        rootless,
        count,
    }
}

/// FUSE requests per operation, as plyfs's counters report them.
pub(crate) type Requests = Vec<(String, u64)>;

/// The last `requests: op=n ...` line of a plyfs log.
fn last_requests(log: &Path) -> (usize, Option<Requests>) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut n = 0;
    let mut last = None;
    for line in text.lines() {
        if let Some((_, counts)) = line.split_once("requests: ") {
            n += 1;
            last = Some(
                counts
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect(),
            );
        }
    }
    (n, last)
}

/// `after - before`, per operation, without zeros.
pub(crate) fn requests_delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .filter_map(|(op, n)| {
            let b = before.iter().find(|(o, _)| o == op).map_or(0, |(_, b)| *b);
            (n > &b).then(|| (op.clone(), n - b))
        })
        .collect()
}

pub(crate) fn requests_total(r: &Requests) -> u64 {
    r.iter().map(|(_, n)| n).sum()
}

pub(crate) fn mount(
    sys: System,
    tree: &Tree,
    dirs: &RunDirs,
    bins: &Bins,
) -> Result<Mounted, String> {
    if is_mounted(&dirs.mnt) {
        umount(&dirs.mnt, libc::MNT_DETACH);
    }
    let mut opts = dirs.options(tree);
    match sys {
        System::PlyfsUring => opts.push_str(",uring=on"),
        System::PlyfsDevFuse => opts.push_str(",uring=off"),
        _ => {}
    }
    if bins.rootless && (sys == System::Kernel || sys.is_plyfs()) {
        opts.push_str(",userxattr");
    }
    if sys == System::Kernel {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&dirs.mnt)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(Mounted::Kernel {
            mnt: dirs.mnt.clone(),
        });
    }
    let bin = match sys {
        System::FuseOverlayfs => &bins.fuse_overlayfs,
        System::PlyfsBase => bins
            .plyfs_base
            .as_ref()
            .ok_or("PLYFS_BASE_BIN is not set")?,
        _ => &bins.plyfs,
    };
    let log = dirs.logs.join(format!("{}.log", sys.name()));
    let logf = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut c = Command::new(bin);
    if bins.count && sys.is_plyfs() {
        c.env("RUST_LOG", "plyfs=info");
    }
    c.arg("-f")
        .arg("-o")
        .arg(&opts)
        .arg(&dirs.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        // Own process group: Ctrl-C reaches the workload, and the guard
        // decides when the daemon goes.
        .process_group(0);
    let child = c
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut m = Mounted::Fuse {
        mnt: dirs.mnt.clone(),
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if is_mounted(&dirs.mnt) && is_fuse(&dirs.mnt) {
            return Ok(m);
        }
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
}

// ---------------------------------------------------------------------------
