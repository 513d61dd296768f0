//! Layer diff: `plyfs diff` of a large upper against a naive merged-tree walk.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

pub(crate) const DIFF_WORKLOAD: &str = "diff";
pub(crate) const DIFF_DESCRIPTION: &str = "layer diff of a large upper (untar + appends + chmods + rm -rf + a \
     renamed directory): plyfs diff vs a naive differ walking the merged and lower trees \
     (stat both, read changed files), over plyfs and kernel mounts";

pub(crate) struct DiffFigures {
    pub(crate) upper_entries: usize,
    pub(crate) changed: u64,
    pub(crate) runs: Vec<(String, Vec<Result<f64, String>>)>,
    pub(crate) layer_bytes: u64,
    pub(crate) setup_error: Option<String>,
}

/// A read-only union of `lowerdir` at `mnt`; unmounted on drop.
pub(crate) fn mount_ro(
    sys: System,
    lowerdir: &str,
    mnt: &Path,
    bins: &Bins,
    log: &Path,
) -> Result<Mounted, String> {
    let opts = format!("lowerdir={lowerdir}");
    if sys == System::Kernel {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(Mounted::Kernel {
            mnt: mnt.to_path_buf(),
        });
    }
    let logf = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(&bins.plyfs)
        .arg("-f")
        .arg("-o")
        .arg(&opts)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn plyfs: {e}"))?;
    let mut m = Mounted::Fuse {
        mnt: mnt.to_path_buf(),
        child: Some(child),
        log: log.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(is_mounted(mnt) && is_fuse(mnt)) {
        if let Some(status) = m.daemon_exit() {
            return Err(format!("plyfs exited ({status}): {}", m.log_tail()));
        }
        if Instant::now() > deadline {
            return Err("plyfs did not mount within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(m)
}

/// What a differ without access to the upper does (containers-storage's
/// naive differ with a mount program): walk the merged tree, stat each
/// entry and its counterpart in the lowers, read the data of what changed
/// (to archive it), then walk the lowers for deletions. Returns the number
/// of changes found.
pub(crate) fn naive_diff(merged: &Path, lower: &Path) -> Result<u64, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut changed = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = merged.join(&rel);
        for e in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let e = e.map_err(|e| io(&dir, e))?;
            let r = rel.join(e.file_name());
            let mp = merged.join(&r);
            let m = fs::symlink_metadata(&mp).map_err(|e| io(&mp, e))?;
            let differs = match fs::symlink_metadata(lower.join(&r)) {
                Err(_) => true,
                Ok(l) => {
                    (l.mode(), l.uid(), l.gid(), l.rdev()) != (m.mode(), m.uid(), m.gid(), m.rdev())
                        || (!m.is_dir()
                            && (l.size(), l.mtime(), l.mtime_nsec())
                                != (m.size(), m.mtime(), m.mtime_nsec()))
                }
            };
            if differs {
                changed += 1;
                if m.is_file() {
                    let mut f = File::open(&mp).map_err(|e| io(&mp, e))?;
                    std::io::copy(&mut f, &mut std::io::sink()).map_err(|e| io(&mp, e))?;
                }
            }
            if m.is_dir() {
                stack.push(r);
            }
        }
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = lower.join(&rel);
        for e in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let e = e.map_err(|e| io(&dir, e))?;
            let r = rel.join(e.file_name());
            if fs::symlink_metadata(merged.join(&r)).is_err() {
                changed += 1;
            } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(r);
            }
        }
    }
    Ok(changed)
}

pub(crate) fn count_entries(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                n += 1;
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    n
}

pub(crate) fn diff_bench(env: &Env, reps: usize, root: bool) -> DiffFigures {
    let mut fig = DiffFigures {
        upper_entries: 0,
        changed: 0,
        runs: Vec::new(),
        layer_bytes: 0,
        setup_error: None,
    };
    // 1. A large upper: the write workloads, plus a renamed directory.
    let setup = (|| -> Result<(), String> {
        env.dirs.reset()?;
        let _m = mount(System::Plyfs, env.tree, env.dirs, env.bins)?;
        let ctx = Ctx {
            mnt: &env.dirs.mnt,
            tree: env.tree,
            sizes: env.sizes,
            scratch: &env.dirs.logs,
            fio: env.fio,
        };
        eprintln!("  diff: building the upper (untar, append, chmod, rm -rf, rename) ...");
        for w in [w_untar, w_append, w_chmod, w_rm] {
            w(&ctx)?;
        }
        let from = env.dirs.mnt.join(&env.tree.ls_dir);
        let mut to = from.clone().into_os_string();
        to.push("-renamed");
        fs::rename(&from, &to).map_err(|e| format!("rename {}: {e}", from.display()))?;
        Ok(())
    })();
    if let Err(e) = setup {
        fig.setup_error = Some(e);
        return fig;
    }
    fig.upper_entries = count_entries(&env.dirs.upper);
    let lowers = env.tree.lowerdir();
    let merged_lowers = format!("{}:{lowers}", env.dirs.upper.display());
    let mnt2 = env.dirs.mnt.with_file_name("mnt-lower");
    let _ = fs::create_dir_all(&mnt2);
    let mut systems = vec![(System::Plyfs, "naive walk over plyfs mounts")];
    if root {
        systems.push((System::Kernel, "naive walk over kernel overlay"));
    }
    let mut runs: Vec<(String, Vec<Result<f64, String>>)> =
        vec![("plyfs diff (upper + --lower)".into(), Vec::new())];
    runs.extend(systems.iter().map(|(_, n)| (n.to_string(), Vec::new())));
    for rep in 1..=reps {
        // plyfs diff, streaming the layer into a pipe that counts it.
        if env.can_drop {
            sync_and_drop_caches("3");
        }
        let t = Instant::now();
        let mut c = Command::new(&env.bins.plyfs);
        c.arg("diff")
            .arg("--lower")
            .arg(&lowers)
            .arg(&env.dirs.upper);
        let r = run_to_sink(c, &env.dirs.logs).map(|bytes| {
            fig.layer_bytes = bytes;
            t.elapsed().as_secs_f64()
        });
        eprintln!("  diff         rep {rep} plyfs diff      {r:?}");
        runs[0].1.push(r);
        for (i, (sys, _)) in systems.iter().enumerate() {
            let r = (|| -> Result<f64, String> {
                let log = env.dirs.logs.join("diff-merged.log");
                let _a = mount_ro(*sys, &merged_lowers, &env.dirs.mnt, env.bins, &log)?;
                let log2 = env.dirs.logs.join("diff-lower.log");
                let _b = mount_ro(*sys, &lowers, &mnt2, env.bins, &log2)?;
                if env.can_drop {
                    sync_and_drop_caches("3");
                }
                let t = Instant::now();
                fig.changed = naive_diff(&env.dirs.mnt, &mnt2)?;
                Ok(t.elapsed().as_secs_f64())
            })();
            eprintln!("  diff         rep {rep} naive {:<9} {r:?}", sys.name());
            runs[i + 1].1.push(r);
        }
    }
    fig.runs = runs;
    fig
}

pub(crate) fn print_diff_figures(d: &DiffFigures) {
    println!("layer diff ({DIFF_DESCRIPTION}):");
    if let Some(e) = &d.setup_error {
        println!("  FAILED to build the upper: {e}\n");
        return;
    }
    println!(
        "  upper: {} entries; layer {}; the naive walk found {} changes",
        d.upper_entries,
        human(d.layer_bytes),
        d.changed
    );
    let median = |v: &[Result<f64, String>]| {
        let mut t: Vec<f64> = v.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t.get(t.len() / 2).copied()
    };
    let base = d.runs.first().and_then(|(_, v)| median(v));
    for (name, v) in &d.runs {
        let m = median(v);
        let ratio = match (m, base) {
            (Some(m), Some(b)) if b > 0.0 => format!(" ({:.1}x plyfs diff)", m / b),
            _ => String::new(),
        };
        let errs: Vec<&String> = v.iter().filter_map(|r| r.as_ref().err()).collect();
        println!(
            "  {name:<34} {}{ratio}{}",
            m.map(|m| format!("{m:.3} s"))
                .unwrap_or_else(|| "FAILED".into()),
            if errs.is_empty() {
                String::new()
            } else {
                format!(
                    " [errors: {}]",
                    errs.iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
    }
    println!();
}
