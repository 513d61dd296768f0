//! Workload `chown-meta`: `chown -R` of a 10,000-file lower tree, the
//! image-build step `metacopy=on` is for. For kernel overlayfs and plyfs,
//! each with `metacopy=off` and `metacopy=on`: the time of the chown (cold
//! caches as root) and the bytes it left in the upper layer (st_blocks of
//! every upper object). Self-contained: its own small tree under
//! `DIR/chown-meta`, its own mounts (guards unmount on drop).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NAME: &str = "chown-meta";
pub const DESCRIPTION: &str = "chown -R of a 10,000-file lower tree (78 MiB): time and bytes in \
     upper, metacopy=on vs off, plyfs vs kernel";

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;
const FILE_SIZE: usize = 8192;

/// The systems compared: (label, plyfs or kernel, extra mount options).
const SYSTEMS: &[(&str, bool, &str)] = &[
    (
        "kernel metacopy=off",
        false,
        "redirect_dir=on,index=off,metacopy=off",
    ),
    (
        "kernel metacopy=on",
        false,
        "redirect_dir=on,index=off,metacopy=on",
    ),
    ("plyfs metacopy=off", true, "metacopy=off"),
    ("plyfs metacopy=on", true, "metacopy=on"),
];

/// Builds the lower tree once (kept between runs).
fn lower_tree(dir: &Path) -> Result<PathBuf, String> {
    let lower = dir.join("lower");
    let done = dir.join("lower.done");
    if done.exists() {
        return Ok(lower);
    }
    let _ = fs::remove_dir_all(&lower);
    let mut data = vec![0u8; FILE_SIZE];
    for d in 0..DIRS {
        let p = lower.join(format!("d{d:03}"));
        fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        for f in 0..FILES_PER_DIR {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i ^ d ^ (f * 7)) as u8;
            }
            let fp = p.join(format!("f{f:03}"));
            fs::write(&fp, &data).map_err(|e| format!("write {}: {e}", fp.display()))?;
        }
    }
    fs::write(&done, b"").map_err(|e| format!("{}: {e}", done.display()))?;
    Ok(lower)
}

/// A mount of one system; unmounted on drop.
struct Mount {
    mnt: PathBuf,
    child: Option<Child>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signal a child we spawned; it unmounts and exits.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    super::umount(&self.mnt, libc::MNT_DETACH);
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if super::is_mounted(&self.mnt) && !super::umount(&self.mnt, 0) {
            super::umount(&self.mnt, libc::MNT_DETACH);
        }
    }
}

fn mount(plyfs: Option<&Path>, opts: &str, mnt: &Path, log: &Path) -> Result<Mount, String> {
    let Some(bin) = plyfs else {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(mnt)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(Mount {
            mnt: mnt.to_path_buf(),
            child: None,
        });
    };
    let logf = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(bin)
        .args(["-f", "-o", opts])
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut m = Mount {
        mnt: mnt.to_path_buf(),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(super::is_mounted(mnt) && super::is_fuse(mnt)) {
        if let Some(Ok(Some(s))) = m.child.as_mut().map(Child::try_wait) {
            return Err(format!("plyfs exited ({s}): {}", super::tail(log)));
        }
        if Instant::now() > deadline {
            return Err("plyfs did not mount within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(m)
}

/// Bytes allocated under `root` (st_blocks * 512 of every object), and how
/// many regular files; iterative.
fn usage(root: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            bytes += md.blocks() * 512;
            if md.is_dir() {
                todo.push(e.path());
            } else if md.is_file() {
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn reset(p: &Path) -> Result<(), String> {
    if p.exists() {
        fs::remove_dir_all(p).map_err(|e| format!("clean {}: {e}", p.display()))?;
    }
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// One timed `chown -R` on a fresh upper: (seconds, upper bytes, upper files).
fn one(
    dir: &Path,
    lower: &Path,
    plyfs: Option<&Path>,
    extra: &str,
    root: bool,
) -> Result<(f64, u64, u64), String> {
    let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
    reset(&upper)?;
    reset(&work)?;
    fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
    if super::is_mounted(&mnt) {
        super::umount(&mnt, libc::MNT_DETACH);
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{extra}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let secs = {
        let _m = mount(plyfs, &opts, &mnt, &dir.join("plyfs.log"))?;
        if root {
            super::sync_and_drop_caches("3");
        }
        let t = Instant::now();
        let out = Command::new("chown")
            .args(["-R", "1234:1234"])
            .arg(&mnt)
            .output()
            .map_err(|e| format!("chown: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "chown -R: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // The result reaches the disk before the mount goes (copy-ups
        // write data; the upper's size is measured after).
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        secs
    };
    let (bytes, files) = usage(&upper);
    Ok((secs, bytes, files))
}

/// Runs the workload `reps` times per system (interleaved) and prints a
/// table; returns it as text for the summary.
pub fn run(bench_dir: &Path, reps: usize, plyfs: &Path, root: bool) -> Result<String, String> {
    if !root {
        return Err("chown-meta needs root (kernel overlayfs, chown)".into());
    }
    let dir = bench_dir.join("chown-meta");
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    eprintln!("  {NAME}: building the lower tree ...");
    let lower = lower_tree(&dir)?;
    let mut results: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); SYSTEMS.len()];
    for rep in 0..reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..SYSTEMS.len()).collect()
        } else {
            (0..SYSTEMS.len()).rev().collect()
        };
        for i in order {
            let (label, is_plyfs, extra) = SYSTEMS[i];
            eprintln!("  {NAME}: {label}, repetition {}", rep + 1);
            let r = one(&dir, &lower, is_plyfs.then_some(plyfs), extra, root)
                .map_err(|e| format!("{label}: {e}"))?;
            results[i].push(r);
        }
    }
    let _ = fs::remove_dir_all(dir.join("upper"));
    let _ = fs::remove_dir_all(dir.join("work"));
    let median = |v: &[(f64, u64, u64)]| -> f64 {
        let mut t: Vec<f64> = v.iter().map(|r| r.0).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let base = median(&results[0]);
    let mut out = format!(
        "{NAME} ({DESCRIPTION}), median of {reps}:\n{:<22} {:>9} {:>9} {:>14} {:>12}\n",
        "system", "seconds", "x k-off", "upper bytes", "upper files"
    );
    for (i, (label, _, _)) in SYSTEMS.iter().enumerate() {
        let m = median(&results[i]);
        let (_, bytes, files) = results[i][results[i].len() - 1];
        out.push_str(&format!(
            "{label:<22} {m:>9.3} {:>8.2}x {bytes:>14} {files:>12}\n",
            m / base
        ));
    }
    Ok(out)
}
