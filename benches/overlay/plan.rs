//! What a run will cost, said before it starts: disk space and time.

use std::path::Path;

use crate::*;

/// Rough seconds one timed run takes (mount, drop caches, workload,
/// unmount), measured on a 2-CPU VM: full 1,306 s for 196 runs.
const SECS_PER_RUN_FULL: f64 = 7.0;
const SECS_PER_RUN_QUICK: f64 = 1.5;

pub(crate) struct Estimate {
    /// Bytes the tree takes (0 when cached).
    pub(crate) tree_bytes: u64,
    /// Bytes one run's upper layer can take (copy-up of the big file, the
    /// sequential write, the untar).
    pub(crate) run_bytes: u64,
    pub(crate) free_bytes: Option<u64>,
    pub(crate) seconds: f64,
}

fn du(paths: &[&str]) -> u64 {
    std::process::Command::new("du")
        .arg("-sbc")
        .args(paths)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .and_then(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = cstr(dir);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs into a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail * st.f_frsize)
}

pub(crate) fn estimate(
    cfg: &Config,
    sizes: &Sizes,
    selected: &[&Workload],
    build: bool,
) -> Estimate {
    // The tree: copies of the sources, the big file, the untar tarball.
    let tree_bytes = if build {
        du(sizes.sources) + sizes.big + sizes.big / 4
    } else {
        0
    };
    let run_bytes = sizes.big + sizes.seq_write + sizes.big / 4;
    let systems = cfg.systems.as_ref().map_or(3, Vec::len) as f64;
    let modes = if cfg.userns { 2.0 } else { 1.0 };
    let per_run = if cfg.quick {
        SECS_PER_RUN_QUICK
    } else {
        SECS_PER_RUN_FULL
    };
    let runs = selected.len() as f64 * systems * cfg.reps() as f64 * modes;
    let build_secs = if build {
        if cfg.quick { 30.0 } else { 300.0 }
    } else {
        0.0
    };
    // The memory report and the layer diff figures: a few runs more.
    let extra = if cfg.no_mem {
        0.0
    } else {
        systems * per_run * 2.0
    } + 6.0 * per_run;
    Estimate {
        tree_bytes,
        run_bytes,
        free_bytes: free_bytes(&cfg.dir),
        seconds: runs * per_run + build_secs + extra,
    }
}

impl Estimate {
    pub(crate) fn need(&self) -> u64 {
        self.tree_bytes + self.run_bytes
    }

    pub(crate) fn describe(&self, dir: &Path) -> String {
        let gib = |b: u64| b as f64 / GIB as f64;
        format!(
            "needs: about {:.1} GiB in {} ({:.1} GiB tree{}, {:.1} GiB per run, freed after it; \
             {} free) and about {:.0} minutes (a rough figure from a 2-CPU VM)",
            gib(self.need()),
            dir.display(),
            gib(self.tree_bytes),
            if self.tree_bytes == 0 {
                " (cached)"
            } else {
                " to build once"
            },
            gib(self.run_bytes),
            self.free_bytes
                .map_or("? GiB".into(), |f| format!("{:.1} GiB", gib(f))),
            (self.seconds / 60.0).ceil()
        )
    }

    /// An error when the disk is too small.
    pub(crate) fn shortfall(&self) -> Option<String> {
        let free = self.free_bytes?;
        (free < self.need()).then(|| {
            format!(
                "not enough space: {:.1} GiB needed, {:.1} GiB free (use --dir or --quick)",
                self.need() as f64 / GIB as f64,
                free as f64 / GIB as f64
            )
        })
    }
}
