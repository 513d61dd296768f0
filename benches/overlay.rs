//! Benchmark: plyfs against kernel overlayfs and fuse-overlayfs.
//!
//! ```text
//! cargo bench --bench overlay -- [options]
//!
//!   --list               list the workloads and exit
//!   --only W1,W2         run only these workloads (names from --list)
//!   --systems S1,S2      plyfs, kernel, fuse-overlayfs (default: all available);
//!                        also plyfs-uring / plyfs-devfuse: plyfs with uring=on / off
//!   --reps N             repetitions per workload and system (default 3; 1 with --quick)
//!   --quick              small tree (/usr/include only, 256 MiB big file, fewer files)
//!   --dir PATH           where the layer tree is cached (default /var/tmp/plyfs-bench)
//!   --rebuild            rebuild the cached tree even if it is complete
//!   --json PATH          results file (default $CARGO_TARGET_DIR/bench-results.json,
//!                        else target/bench-results.json)
//!   --timeout SECS       give up on one run after this long (default 900)
//!   --no-mem             skip the daemon memory / fd report
//! ```
//!
//! Environment: `PLYFS_BIN` (plyfs binary; default: the one cargo built for this
//! bench), `FUSE_OVERLAYFS_BIN` (default /usr/bin/fuse-overlayfs).
//!
//! What it does:
//! * Builds, once, a three-layer tree from this machine's own files under
//!   `DIR/tree-full` (or `tree-quick`): `base` = copies of /usr/share and
//!   /usr/include plus a 1 GiB file of real (pseudo-random) data; `update` =
//!   rewritten files, new files, kernel 0/0 whiteouts over files and a
//!   directory, an opaque directory; `top` = a few more of each. The tree is
//!   reused until `--rebuild` or until it is missing/incomplete.
//! * For every workload, repetition and system (interleaved, every other
//!   repetition in reverse: A1 B1 C1 C2 B2 A2 A3 ...)
//!   it mounts the same lowers with a fresh upper/work, drops the page, dentry
//!   and inode caches (`sync; echo 3 > /proc/sys/vm/drop_caches`; root only)
//!   unless the workload is a warm one (then it runs once untimed first),
//!   times the workload, and unmounts.
//! * Prints one table (median seconds, ratio to kernel overlayfs, geometric
//!   mean of the ratios) and writes the raw figures as JSON.
//! * Reports the FUSE daemons' peak RSS and open fds after a tree walk and
//!   after `echo 2 > drop_caches` (the kernel forgets its inodes).
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
#[path = "overlay/diff.rs"]
mod diff;
#[path = "overlay/mem.rs"]
mod mem;
#[path = "overlay/report.rs"]
mod report;
#[path = "overlay/run.rs"]
mod run;
#[path = "overlay/systems.rs"]
mod systems;
#[path = "overlay/tree.rs"]
mod tree;
#[path = "overlay/util.rs"]
mod util;
#[path = "overlay/workloads.rs"]
mod workloads;

pub(crate) use {args::*, diff::*, mem::*, report::*, run::*, systems::*, tree::*, util::*, workloads::*};

pub(crate) struct Env<'a> {
    pub(crate) tree: &'a Tree,
    pub(crate) sizes: &'a Sizes,
    pub(crate) dirs: &'a RunDirs,
    pub(crate) bins: &'a Bins,
    pub(crate) fio: bool,
    pub(crate) can_drop: bool,
    pub(crate) timeout: Duration,
}

pub(crate) fn one_run(env: &Env, sys: System, w: &Workload) -> Result<f64, String> {
    env.dirs.reset()?;
    let mut m = mount(sys, env.tree, env.dirs, env.bins)?;
    let ctx = Ctx {
        mnt: &env.dirs.mnt,
        tree: env.tree,
        sizes: env.sizes,
        scratch: &env.dirs.logs,
        fio: env.fio,
    };
    begin_watch(m.pid(), env.timeout);
    let res = (|| {
        if w.warm {
            (w.run)(&ctx).map_err(|e| format!("warm-up: {e}"))?;
        } else if env.can_drop {
            sync_and_drop_caches("3");
        }
        let t = Instant::now();
        (w.run)(&ctx)?;
        Ok(t.elapsed().as_secs_f64())
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

// ---------------------------------------------------------------------------


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
    let want_diff = cfg
        .only
        .as_ref()
        .is_none_or(|names| names.iter().any(|n| n == DIFF_WORKLOAD));
    if let Err(e) = real_main(&cfg, sizes, &selected, want_diff) {
        eprintln!("overlay bench: {e}");
        std::process::exit(1);
    }
}

pub(crate) fn real_main(
    cfg: &Config,
    sizes: &Sizes,
    selected: &[&Workload],
    want_diff: bool,
) -> Result<(), String> {
    let started = Instant::now();
    let root = is_root();
    let bins = find_bins();
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("mkdir {}: {e}", cfg.dir.display()))?;

    // Machine.
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem_total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let bench_fs = fs_type(&cfg.dir);
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

    println!("# plyfs overlay benchmark");
    println!(
        "machine: {nproc} CPUs ({cpu}), {mem_total} RAM, kernel {kernel}, bench dir {} on {bench_fs}, {}",
        cfg.dir.display(),
        if root { "root" } else { "not root" }
    );
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
    for s in [
        System::Kernel,
        System::Plyfs,
        System::FuseOverlayfs,
        System::PlyfsDevFuse,
        System::PlyfsUring,
    ] {
        if !wanted.contains(&s) {
            continue;
        }
        let (ok, why, version) = match s {
            System::Kernel => (root, "kernel overlayfs needs root", kernel.clone()),
            System::Plyfs | System::PlyfsUring | System::PlyfsDevFuse => (
                bins.plyfs.exists(),
                "plyfs binary not found (set PLYFS_BIN or cargo build --release)",
                plyfs_version.clone().unwrap_or_default(),
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
    let baseline = systems[0];
    let can_drop = root;
    if !can_drop {
        println!("WARNING: not root, cannot drop caches: every run is warm");
    }

    // Tree.
    let tree_root = cfg
        .dir
        .join(if cfg.quick { "tree-quick" } else { "tree-full" });
    let tree = match (cfg.rebuild, load_tree(&tree_root, cfg.quick)) {
        (false, Some(t)) => {
            eprintln!("using cached tree {}", tree_root.display());
            t
        }
        _ => {
            eprintln!("building tree {} (once) ...", tree_root.display());
            build_tree(&tree_root, sizes, cfg.quick)?
        }
    };
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
    println!(
        "runs: {} reps, interleaved over {}; {} caches before each cold run",
        cfg.reps,
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
        timeout: cfg.timeout,
    };

    // Interleaved: for each workload, rep 1 on every system, then rep 2 ...
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    'outer: for w in selected {
        let mut row: Vec<Cell> = systems
            .iter()
            .map(|_| Cell {
                times: Vec::new(),
                errors: Vec::new(),
            })
            .collect();
        for rep in 1..=cfg.reps {
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
                    Ok(t) => eprintln!("  {:<12} rep {rep} {:<15} {t:8.3} s", w.name, sys.name()),
                    Err(e) => {
                        eprintln!("  {:<12} rep {rep} {:<15} FAILED: {e}", w.name, sys.name())
                    }
                }
                match r {
                    Ok(t) => row[i].times.push(Some(t)),
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
        Some(diff_bench(&env, cfg.reps, root))
    } else {
        None
    };

    let mut mem = Vec::new();
    if cfg.mem && !interrupted {
        for &s in systems.iter().filter(|s| s.is_fuse()) {
            eprintln!("  memory/fd report for {} ...", s.name());
            mem.push(mem_report(&env, s));
        }
    }
    let _ = fs::remove_dir_all(&dirs.upper);
    let _ = fs::remove_dir_all(&dirs.work);
    let elapsed = started.elapsed().as_secs_f64();

    // Table.
    let ratio_to_base = |row: &[Cell], i: usize| -> Option<f64> {
        let b = row[0].median()?;
        let v = row[i].median()?;
        (b > 0.0).then_some(v / b)
    };
    let col = 20;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "median seconds of {} reps (cold caches unless -warm), ratio to {}:",
        cfg.reps,
        baseline.name()
    );
    let _ = write!(out, "{:<12}", "workload");
    for s in &systems {
        let _ = write!(out, " {:>col$}", s.name());
    }
    out.push('\n');
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for (w, row) in selected.iter().zip(&cells) {
        let _ = write!(out, "{:<12}", w.name);
        for (i, cell) in row.iter().enumerate() {
            let ok = cell.times.iter().flatten().count();
            let mut s = match cell.median() {
                None if cell.times.is_empty() => "-".to_string(),
                None => "FAILED".to_string(),
                Some(m) if i == 0 => format!("{m:.3}"),
                Some(m) => match ratio_to_base(row, i) {
                    Some(r) => {
                        ratios[i].push(r);
                        format!("{m:.3} ({r:.2}x)")
                    }
                    None => format!("{m:.3}"),
                },
            };
            if ok > 0 && ok < cell.times.len() {
                let _ = write!(s, " [{ok}/{}]", cell.times.len());
            }
            let _ = write!(out, " {s:>col$}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<12}", "geomean");
    let mut geo: Vec<Option<f64>> = Vec::new();
    for (i, r) in ratios.iter().enumerate() {
        let g = if i == 0 { Some(1.0) } else { geomean(r) };
        geo.push(g);
        let s = match g {
            Some(g) if i == 0 => format!("{g:.2}x"),
            Some(g) => format!("{g:.2}x ({} wl)", r.len()),
            None => "-".into(),
        };
        let _ = write!(out, " {s:>col$}");
    }
    out.push('\n');
    if !selected.is_empty() {
        println!("{out}");
    }
    if let Some(d) = &diff_figures {
        print_diff_figures(d);
    }
    println!("workloads:");
    for w in selected {
        println!("  {:<12} {}", w.name, (w.describe)(sizes, Some(&tree)));
    }

    let mut failures = Vec::new();
    for (w, row) in selected.iter().zip(&cells) {
        for (s, cell) in systems.iter().zip(row) {
            for e in &cell.errors {
                failures.push(format!("{} on {}: {e}", w.name, s.name()));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("  {f}");
        }
    }
    if !mem.is_empty() {
        println!(
            "\nFUSE daemon after a cold stat walk of the whole tree, then after echo 2 > drop_caches:"
        );
        for m in &mem {
            match &m.result {
                Ok((a, b)) => println!(
                    "  {:<15} walk: peak RSS {:.1} MiB, RSS {:.1} MiB, {} fds, {} threads | \
                     after drop: RSS {:.1} MiB, {} fds",
                    m.system.name(),
                    a.hwm_kib as f64 / 1024.0,
                    a.rss_kib as f64 / 1024.0,
                    a.fds,
                    a.threads,
                    b.rss_kib as f64 / 1024.0,
                    b.fds
                ),
                Err(e) => println!("  {:<15} FAILED: {e}", m.system.name()),
            }
        }
    }
    if interrupted {
        println!("\nINTERRUPTED: partial results");
    }
    println!("\ntotal time {elapsed:.0} s");

    // JSON.
    let mut j = String::from("{\n");
    let _ = writeln!(
        j,
        "  \"machine\": {{\"nproc\": {nproc}, \"cpu\": {}, \"memory\": {}, \"kernel\": {}, \
         \"bench_dir\": {}, \"bench_fs\": {}, \"root\": {root}}},",
        json_str(&cpu),
        json_str(&mem_total),
        json_str(&kernel),
        json_str(&cfg.dir.display().to_string()),
        json_str(&bench_fs)
    );
    let _ = writeln!(
        j,
        "  \"config\": {{\"reps\": {}, \"quick\": {}, \"caches_dropped\": {can_drop}, \
         \"interrupted\": {interrupted}, \"total_seconds\": {elapsed:.1}}},",
        cfg.reps, cfg.quick
    );
    j.push_str("  \"tree\": {");
    let tree_fields: Vec<String> = tree
        .info
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    j.push_str(&tree_fields.join(", "));
    j.push_str("},\n  \"systems\": [");
    let sys_fields: Vec<String> = sys_versions
        .iter()
        .map(|(s, v)| {
            format!(
                "{{\"name\": {}, \"version\": {}}}",
                json_str(s.name()),
                json_str(v)
            )
        })
        .collect();
    j.push_str(&sys_fields.join(", "));
    let _ = writeln!(j, "],\n  \"baseline\": {},", json_str(baseline.name()));
    j.push_str("  \"results\": [\n");
    let mut rows = Vec::new();
    for (w, row) in selected.iter().zip(&cells) {
        for (i, (s, cell)) in systems.iter().zip(row).enumerate() {
            let times: Vec<String> = cell.times.iter().map(|t| json_num(*t)).collect();
            let errors: Vec<String> = cell.errors.iter().map(|e| json_str(e)).collect();
            rows.push(format!(
                "    {{\"workload\": {}, \"description\": {}, \"system\": {}, \"times\": [{}], \
                 \"median\": {}, \"ratio\": {}, \"errors\": [{}]}}",
                json_str(w.name),
                json_str(&(w.describe)(sizes, Some(&tree))),
                json_str(s.name()),
                times.join(", "),
                json_num(cell.median()),
                json_num(ratio_to_base(row, i)),
                errors.join(", ")
            ));
        }
    }
    j.push_str(&rows.join(",\n"));
    j.push_str("\n  ],\n  \"geomean_ratio\": {");
    let g: Vec<String> = systems
        .iter()
        .zip(&geo)
        .map(|(s, g)| format!("{}: {}", json_str(s.name()), json_num(*g)))
        .collect();
    j.push_str(&g.join(", "));
    j.push_str("},\n  \"daemon_memory\": [");
    let m: Vec<String> = mem
        .iter()
        .map(|m| match &m.result {
            Ok((a, b)) => format!(
                "{{\"system\": {}, \"after_walk\": {{\"vm_hwm_kib\": {}, \"vm_rss_kib\": {}, \
                 \"fds\": {}, \"threads\": {}}}, \"after_drop_caches\": {{\"vm_hwm_kib\": {}, \
                 \"vm_rss_kib\": {}, \"fds\": {}, \"threads\": {}}}}}",
                json_str(m.system.name()),
                a.hwm_kib,
                a.rss_kib,
                a.fds,
                a.threads,
                b.hwm_kib,
                b.rss_kib,
                b.fds,
                b.threads
            ),
            Err(e) => format!(
                "{{\"system\": {}, \"error\": {}}}",
                json_str(m.system.name()),
                json_str(e)
            ),
        })
        .collect();
    j.push_str(&m.join(", "));
    j.push_str("]\n}\n");
    if let Some(parent) = cfg.json.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(&cfg.json, j).map_err(|e| format!("write {}: {e}", cfg.json.display()))?;
    println!("results written to {}", cfg.json.display());
    Ok(())
}

// ---------------------------------------------------------------------------
// Layer diff: `plyfs diff` of a large upper against a naive merged-tree walk
