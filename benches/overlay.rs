//! Benchmark: plyfs against kernel overlayfs and fuse-overlayfs, rootful
//! and rootless.
//!
//! ```text
//! cargo bench --bench overlay -- --help
//! cargo bench --bench overlay -- --userns            # both modes, one command
//! PLYFS_BIN=/usr/local/bin/plyfs cargo bench --bench overlay -- --quick
//! ```
//!
//! What it does:
//! * Builds, once, a three-layer tree from this machine's own files under
//!   `DIR/tree-full` (or `tree-quick`): `base` = copies of /usr/share and
//!   /usr/include plus a 1 GiB file of real (pseudo-random) data; `update` =
//!   rewritten files, new files, kernel 0/0 whiteouts over files and a
//!   directory, an opaque directory; `top` = a few more of each. The tree is
//!   reused until `--rebuild` or until it is missing/incomplete.
//! * States the disk space and a time estimate, then for every workload,
//!   repetition and system (interleaved, every other repetition in reverse:
//!   A1 B1 C1 C2 B2 A2 A3 ...) mounts the same lowers with a fresh
//!   upper/work, drops the page, dentry and inode caches unless the
//!   workload is a warm one (then it runs once untimed first), times the
//!   workload, reads plyfs's request counters, and unmounts.
//! * Prints a table (median seconds, ratio to kernel overlayfs, geometric
//!   mean of the ratios), the FUSE requests plyfs served per workload, the
//!   same table as Markdown with the machine line for README, and writes the
//!   raw figures as JSON and a chart of the ratios as SVG next to it.
//! * With `--userns`, runs everything again inside a user namespace
//!   (module `userns`).
//! * Reports the FUSE daemons' peak RSS and open fds after a tree walk and
//!   after `echo 2 > drop_caches` (the kernel forgets its inodes).
//!
//! Modules: `args` (command line), `tree` (the cached layers), `systems`
//! (mounting, request counters), `workloads` (the list of workloads: add
//! one there), `run` (commands under a watchdog), `report` (table, JSON,
//! SVG), `mem`, `diff` (layer diff figures), `userns`, `util`.
//!
//! Nothing here asserts on speed: machines are noisy, figures are for people.
//! Mounts are held by guards that unmount on drop (also on panic); Ctrl-C
//! kills the running workload and unwinds through the guards. Mounts left
//! behind by a killed run are detached at the next start.
//!
//! Needs root for kernel overlayfs, kernel whiteouts (mknod 0/0),
//! trusted.overlay.opaque and dropping caches. Without root the tree uses OCI
//! whiteouts (`.wh.NAME`, `.wh..wh..opq`) and caches stay warm (it says so).

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "overlay/args.rs"]
mod args;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "overlay/diff.rs"]
mod diff;
#[path = "overlay/mem.rs"]
mod mem;
#[path = "overlay/plan.rs"]
mod plan;
#[path = "overlay/report.rs"]
mod report;
#[path = "overlay/run.rs"]
mod run;
#[path = "overlay/systems.rs"]
mod systems;
#[path = "overlay/tree.rs"]
mod tree;
#[path = "overlay/userns.rs"]
mod userns;
#[path = "overlay/util.rs"]
mod util;
#[path = "overlay/workloads.rs"]
mod workloads;

pub(crate) use {
    args::*, diff::*, mem::*, plan::*, report::*, run::*, systems::*, tree::*, userns::*, util::*,
    workloads::*,
};

pub(crate) struct Env<'a> {
    pub(crate) tree: &'a Tree,
    pub(crate) sizes: &'a Sizes,
    pub(crate) dirs: &'a RunDirs,
    pub(crate) bins: &'a Bins,
    pub(crate) fio: bool,
    pub(crate) can_drop: bool,
    pub(crate) timeout: Duration,
}

/// One timed run: seconds, and the requests plyfs served during it.
pub(crate) fn one_run(
    env: &Env,
    sys: System,
    w: &Workload,
) -> Result<(f64, Option<Requests>), String> {
    env.dirs.reset()?;
    let mut m = mount(sys, env.tree, env.dirs, env.bins)?;
    let ctx = Ctx {
        mnt: &env.dirs.mnt,
        tree: env.tree,
        sizes: env.sizes,
        scratch: &env.dirs.logs,
        fio: env.fio,
    };
    let counting = env.bins.count && sys.is_plyfs();
    begin_watch(m.pid(), env.timeout);
    let res = (|| {
        if w.warm {
            (w.run)(&ctx).map_err(|e| format!("warm-up: {e}"))?;
        } else if env.can_drop {
            sync_and_drop_caches("3");
        }
        let before = if counting { m.requests() } else { None };
        let t = Instant::now();
        (w.run)(&ctx)?;
        let secs = t.elapsed().as_secs_f64();
        let after = if counting { m.requests() } else { None };
        let reqs = before.zip(after).map(|(b, a)| requests_delta(&b, &a));
        Ok((secs, reqs))
    })();
    let fired = end_watch();
    let res = match (fired, res) {
        (Some(reason), r) => Err(format!(
            "{reason} (limit {} s){}",
            env.timeout.as_secs(),
            r.err().map(|e| format!(": {e}")).unwrap_or_default()
        )),
        (None, r) => r,
    };
    res.map_err(|e| {
        let mut e = e;
        if let Some(status) = m.daemon_exit() {
            let _ = write!(e, " [daemon exited: {status}]");
        }
        let log = m.log_tail();
        if !log.is_empty() {
            let _ = write!(e, " [daemon log: {log}]");
        }
        e
    })
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("overlay bench: {e}");
            std::process::exit(2);
        }
    };
    let sizes = if cfg.quick { &QUICK } else { &FULL };
    let all = workloads::all();
    if cfg.list {
        for w in &all {
            println!("{:<12} {}", w.name, (w.describe)(sizes, None));
        }
        println!("{DIFF_WORKLOAD:<12} {DIFF_DESCRIPTION}");
        return;
    }
    let selected: Vec<&Workload> = match &cfg.only {
        Some(names) => {
            for n in names {
                if n != DIFF_WORKLOAD && !all.iter().any(|w| w.name == n) {
                    eprintln!("overlay bench: unknown workload {n:?} (see --list)");
                    std::process::exit(2);
                }
            }
            all.iter()
                .filter(|w| names.iter().any(|n| n == w.name))
                .collect()
        }
        None => all.iter().collect(),
    };
    // The layer diff figures are plyfs's own, measured in the rootful run.
    let want_diff = !cfg.in_userns
        && cfg
            .only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == DIFF_WORKLOAD));
    let rootful = !cfg.userns_only;
    let rootless = cfg.userns || cfg.userns_only;
    let result = (|| {
        if cfg.in_userns {
            return real_main(&cfg, sizes, &selected, false);
        }
        if rootless && !is_root() {
            return Err("--userns needs root (it maps root into the namespace, as \
                        unshare -Ur does, and drops caches from outside)"
                .to_string());
        }
        if rootful {
            real_main(&cfg, sizes, &selected, want_diff)?;
        } else {
            // The child only loads the tree: build it here.
            prepare_tree(&cfg, sizes, &selected)?;
        }
        if rootless && !INTERRUPTED.load(Ordering::SeqCst) {
            println!("\n# rootless run (user namespace)\n");
            run_rootless()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("overlay bench: {e}");
        std::process::exit(1);
    }
}

/// Loads the cached tree, or builds it after saying what that costs.
fn prepare_tree(cfg: &Config, sizes: &Sizes, selected: &[&Workload]) -> Result<Tree, String> {
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("mkdir {}: {e}", cfg.dir.display()))?;
    let tree_root = cfg
        .dir
        .join(if cfg.quick { "tree-quick" } else { "tree-full" });
    let cached = if cfg.rebuild {
        None
    } else {
        load_tree(&tree_root, cfg.quick)
    };
    let est = estimate(cfg, sizes, selected, cached.is_none());
    println!("{}", est.describe(&cfg.dir));
    if let Some(short) = est.shortfall() {
        return Err(short);
    }
    match cached {
        Some(t) => {
            eprintln!("using cached tree {}", tree_root.display());
            Ok(t)
        }
        None if cfg.in_userns => Err("the tree is missing; the rootful parent builds it".into()),
        None => {
            eprintln!("building tree {} (once) ...", tree_root.display());
            build_tree(&tree_root, sizes, cfg.quick)
        }
    }
}

pub(crate) fn real_main(
    cfg: &Config,
    sizes: &Sizes,
    selected: &[&Workload],
    want_diff: bool,
) -> Result<(), String> {
    let started = Instant::now();
    let mode = cfg.mode();
    let root = is_root();
    let bins = find_bins(mode == Mode::Rootless, !cfg.no_count);
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("mkdir {}: {e}", cfg.dir.display()))?;
    let machine = Machine::probe(&cfg.dir, mode);
    let fio = first_line("fio", &["--version"]);
    let plyfs_version = if bins.plyfs.exists() {
        first_line(bins.plyfs.to_str().unwrap_or("plyfs"), &["--version"])
    } else {
        None
    };
    let fo_version = if bins.fuse_overlayfs.exists() {
        Command::new(&bins.fuse_overlayfs)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
                t.push_str(&String::from_utf8_lossy(&o.stderr));
                t.lines()
                    .find(|l| l.contains("fuse-overlayfs"))
                    .map(|l| l.trim().to_string())
            })
    } else {
        None
    };

    println!("# plyfs overlay benchmark, {}", mode.name());
    println!("machine: {}", machine.line());
    println!(
        "tools: {} ({}), {}, {}, {}",
        plyfs_version.as_deref().unwrap_or("MISSING"),
        bins.plyfs.display(),
        fo_version
            .as_deref()
            .unwrap_or("fuse-overlayfs not installed"),
        fio.as_deref()
            .unwrap_or("fio not installed (Rust pread loop)"),
        first_line("tar", &["--version"]).unwrap_or_default(),
    );

    // Systems.
    let mut systems = Vec::new();
    let wanted = cfg
        .systems
        .clone()
        .unwrap_or_else(|| vec![System::Kernel, System::Plyfs, System::FuseOverlayfs]);
    let explicit = cfg.systems.is_some();
    let mut sys_versions: Vec<(System, String)> = Vec::new();
    for s in System::ALL {
        if !wanted.contains(&s) {
            continue;
        }
        let (ok, why, version) = match s {
            System::Kernel => (root, "kernel overlayfs needs root", machine.kernel.clone()),
            System::Plyfs | System::PlyfsUring | System::PlyfsDevFuse => (
                bins.plyfs.exists(),
                "plyfs binary not found (set PLYFS_BIN or cargo build --release)",
                plyfs_version.clone().unwrap_or_default(),
            ),
            System::PlyfsBase => (
                bins.plyfs_base.as_ref().is_some_and(|b| b.exists()),
                "PLYFS_BASE_BIN is not set or missing",
                bins.plyfs_base
                    .as_ref()
                    .and_then(|b| first_line(b.to_str()?, &["--version"]))
                    .unwrap_or_default(),
            ),
            System::FuseOverlayfs => (
                fo_version.is_some(),
                "fuse-overlayfs not installed",
                fo_version.clone().unwrap_or_default(),
            ),
        };
        if ok {
            systems.push(s);
            sys_versions.push((s, version));
        } else if explicit {
            println!("skipping {}: {why}", s.name());
        }
    }
    if systems.is_empty() {
        return Err("no system to benchmark".into());
    }
    let can_drop = can_drop_caches();
    if !can_drop {
        println!("WARNING: cannot drop caches: every run is warm");
    }
    let tree = prepare_tree(cfg, sizes, selected)?;
    println!(
        "tree: {} (lowers top:update:base): base {} entries + {} big file; update {} entries \
         ({} rewritten, {} new, {} whiteouts, whiteout dir {}, opaque dir {}); top {} entries; {}",
        tree.root.display(),
        tree.info("base_entries"),
        human(tree.big_size),
        tree.info("update_entries"),
        tree.info("rewrites"),
        tree.info("new_files"),
        tree.info("whiteouts"),
        tree.info("whiteout_dir"),
        tree.info("opaque_dir"),
        tree.info("top_entries"),
        tree.info("whiteout_style"),
    );
    for (k, v) in &tree.info {
        if k.starts_with("note") {
            println!("NOTE: {v}");
        }
    }
    let reps = cfg.reps();
    println!(
        "runs: {reps} reps, interleaved over {}; {} caches before each cold run",
        systems
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        if can_drop { "dropping" } else { "NOT dropping" }
    );
    println!();

    let dirs = RunDirs::new(&cfg.dir)?;
    install_watchdog();
    let env = Env {
        tree: &tree,
        sizes,
        dirs: &dirs,
        bins: &bins,
        fio: fio.is_some(),
        can_drop,
        timeout: cfg.timeout(),
    };

    // Interleaved: for each workload, rep 1 on every system, then rep 2 ...
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    'outer: for w in selected {
        let mut row: Vec<Cell> = systems.iter().map(|_| Cell::default()).collect();
        for rep in 1..=reps {
            // Every other repetition in reverse order (A1 B1 B2 A2 A3 ...):
            // effects that alternate from one run to the next (the upper's
            // freed blocks on this VM disk alternate fast and slow copy-ups)
            // would otherwise always hit the same system.
            let mut order: Vec<(usize, System)> = systems.iter().copied().enumerate().collect();
            if rep % 2 == 0 {
                order.reverse();
            }
            for (i, sys) in order {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    cells.push(row);
                    break 'outer;
                }
                let r = one_run(&env, sys, w);
                match &r {
                    Ok((t, reqs)) => eprintln!(
                        "  {:<12} rep {rep} {:<15} {t:8.3} s{}",
                        w.name,
                        sys.name(),
                        reqs.as_ref()
                            .map(|r| format!(", {} requests", requests_total(r)))
                            .unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("  {:<12} rep {rep} {:<15} FAILED: {e}", w.name, sys.name())
                    }
                }
                match r {
                    Ok((t, reqs)) => {
                        row[i].times.push(Some(t));
                        row[i].requests.push(reqs);
                    }
                    Err(e) => {
                        row[i].times.push(None);
                        row[i].errors.push(format!("rep {rep}: {e}"));
                    }
                }
            }
        }
        cells.push(row);
    }
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    let diff_figures = if want_diff && !interrupted {
        Some(diff_bench(&env, reps, root))
    } else {
        None
    };

    let mut mem = Vec::new();
    if !cfg.no_mem && !interrupted {
        for &s in systems.iter().filter(|s| s.is_fuse()) {
            eprintln!("  memory/fd report for {} ...", s.name());
            mem.push(mem_report(&env, s));
        }
    }
    let _ = fs::remove_dir_all(&dirs.upper);
    let _ = fs::remove_dir_all(&dirs.work);
    let results = Results {
        machine: &machine,
        mode,
        systems: &systems,
        sys_versions: &sys_versions,
        workloads: selected,
        sizes,
        tree: &tree,
        cells: &cells,
        mem: &mem,
        reps,
        quick: cfg.quick,
        can_drop,
        interrupted,
        elapsed: started.elapsed().as_secs_f64(),
    };
    if !selected.is_empty() {
        println!("{}", results.table());
        println!("{}", results.requests_table());
    }
    if let Some(d) = &diff_figures {
        print_diff_figures(d);
    }
    println!("workloads:");
    for w in selected {
        println!("  {:<12} {}", w.name, (w.describe)(sizes, Some(&tree)));
    }
    let failures = results.failures();
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("  {f}");
        }
    }
    print_mem(&mem);
    if !selected.is_empty() {
        println!("\nMarkdown (for README):\n\n{}", results.markdown());
    }
    if interrupted {
        println!("\nINTERRUPTED: partial results");
    }
    println!("\ntotal time {:.0} s", results.elapsed);

    let json_path = cfg.json_path();
    if let Some(parent) = json_path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(&json_path, results.json())
        .map_err(|e| format!("write {}: {e}", json_path.display()))?;
    println!("results written to {}", json_path.display());
    let svg_path = json_path.with_extension("svg");
    fs::write(&svg_path, results.svg())
        .map_err(|e| format!("write {}: {e}", svg_path.display()))?;
    println!("chart written to {}", svg_path.display());
    Ok(())
}
