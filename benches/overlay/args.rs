//! Command line: which systems, workloads, sizes and modes (clap, so that
//! `--help` documents every flag).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Kernel,
    Plyfs,
    FuseOverlayfs,
    /// plyfs with `uring=on` (needs enable_uring=Y) / `uring=off`.
    PlyfsUring,
    PlyfsDevFuse,
    /// Another plyfs binary (`PLYFS_BASE_BIN`), for before/after runs.
    PlyfsBase,
}

impl System {
    pub(crate) const ALL: [System; 6] = [
        System::Kernel,
        System::Plyfs,
        System::FuseOverlayfs,
        System::PlyfsDevFuse,
        System::PlyfsUring,
        System::PlyfsBase,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Kernel => "kernel",
            System::Plyfs => "plyfs",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::PlyfsUring => "plyfs-uring",
            System::PlyfsDevFuse => "plyfs-devfuse",
            System::PlyfsBase => "plyfs-base",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<System> {
        match s {
            "kernel" | "overlay" | "overlayfs" => Some(System::Kernel),
            "plyfs" => Some(System::Plyfs),
            "fuse-overlayfs" | "fuse" => Some(System::FuseOverlayfs),
            "plyfs-uring" => Some(System::PlyfsUring),
            "plyfs-devfuse" => Some(System::PlyfsDevFuse),
            "plyfs-base" => Some(System::PlyfsBase),
            _ => None,
        }
    }

    pub(crate) fn is_fuse(self) -> bool {
        self != System::Kernel
    }

    pub(crate) fn is_plyfs(self) -> bool {
        matches!(
            self,
            System::Plyfs | System::PlyfsUring | System::PlyfsDevFuse | System::PlyfsBase
        )
    }
}

fn parse_system(s: &str) -> Result<System, String> {
    System::parse(s).ok_or_else(|| {
        format!("unknown system {s:?} (kernel, plyfs, fuse-overlayfs, plyfs-uring, plyfs-devfuse, plyfs-base)")
    })
}

fn parse_reps(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("needs a number".into()),
    }
}

/// Rootful, rootless, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// As root in the initial namespaces: kernel overlayfs with trusted.*
    /// xattrs, plyfs with FUSE passthrough.
    Rootful,
    /// Inside a new user + mount namespace (ids 0-65535 mapped): kernel
    /// overlayfs with `userxattr`, plyfs without passthrough.
    Rootless,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Rootful => "rootful",
            Mode::Rootless => "rootless (user namespace)",
        }
    }
}

const AFTER_HELP: &str = "\
Environment:
  PLYFS_BIN           plyfs binary to benchmark, e.g. an installed one:
                      PLYFS_BIN=$(command -v plyfs) (default: the release
                      binary cargo built next to this bench)
  PLYFS_BASE_BIN      a second plyfs binary, system plyfs-base (e.g. a build
                      of main, to measure a change before and after)
  FUSE_OVERLAYFS_BIN  fuse-overlayfs binary (default /usr/bin/fuse-overlayfs)

Before it starts, the bench prints the disk space (tree + one run's upper)
and a rough time estimate; it refuses to start when the disk is too small.
Needs root for kernel overlayfs, kernel whiteouts and dropping caches.

Examples:
  cargo bench --bench overlay -- --quick
  cargo bench --bench overlay -- --userns --reps 5
  cargo bench --bench overlay -- --only find,untar --systems kernel,plyfs";

/// plyfs overlay benchmark: kernel overlayfs, plyfs and fuse-overlayfs on
/// the same three-layer tree, cold caches, interleaved repetitions; prints
/// a table of medians and ratios to kernel overlayfs, the FUSE requests
/// plyfs served per workload, and writes JSON plus an SVG chart.
#[derive(Parser, Debug)]
#[command(
    name = "overlay-bench",
    bin_name = "cargo bench --bench overlay --",
    after_help = AFTER_HELP
)]
pub(crate) struct Config {
    /// List the workloads and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Run only these workloads (comma separated names from --list).
    #[arg(long, value_name = "W1,W2", value_delimiter = ',')]
    pub(crate) only: Option<Vec<String>>,
    /// Systems to compare, the first is the baseline of the ratios: kernel,
    /// plyfs, fuse-overlayfs; also plyfs-uring / plyfs-devfuse (plyfs with
    /// uring=on / uring=off), plyfs-base (the binary in PLYFS_BASE_BIN, to
    /// measure a change before and after in one run). Default: kernel,plyfs,fuse-overlayfs, those
    /// available.
    #[arg(long, value_name = "S1,S2", value_delimiter = ',', value_parser = parse_system)]
    pub(crate) systems: Option<Vec<System>>,
    /// Repetitions per workload and system (default 3; 1 with --quick).
    #[arg(long, value_name = "N", value_parser = parse_reps)]
    pub(crate) reps: Option<usize>,
    /// Small tree (/usr/include only, 256 MiB big file, fewer files).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Also run every workload rootless, inside a new user namespace
    /// (kernel overlayfs with userxattr, plyfs without passthrough), after
    /// the rootful run: both tables in one command.
    #[arg(long)]
    pub(crate) userns: bool,
    /// Only the rootless run (see --userns).
    #[arg(long, conflicts_with = "userns")]
    pub(crate) userns_only: bool,
    /// Where the layer tree is cached and the runs happen.
    #[arg(long, value_name = "PATH", default_value = "/var/tmp/plyfs-bench")]
    pub(crate) dir: PathBuf,
    /// Rebuild the cached tree even if it is complete.
    #[arg(long)]
    pub(crate) rebuild: bool,
    /// Results file; the SVG chart goes next to it (same name, .svg), the
    /// rootless run's files get a -userns suffix. Default:
    /// $CARGO_TARGET_DIR/bench-results.json, else target/bench-results.json.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// Give up on one run after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub(crate) timeout: u64,
    /// Skip the daemon memory / fd report.
    #[arg(long)]
    pub(crate) no_mem: bool,
    /// Do not count the FUSE requests plyfs serves per workload (counted
    /// from the daemon's counters, SIGUSR1, before and after each run).
    #[arg(long)]
    pub(crate) no_count: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
    /// Internal: this process is the rootless run, started by the rootful
    /// one inside a user namespace.
    #[arg(long, hide = true)]
    pub(crate) in_userns: bool,
}

impl Config {
    pub(crate) fn reps(&self) -> usize {
        self.reps.unwrap_or(if self.quick { 1 } else { 3 })
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    pub(crate) fn mode(&self) -> Mode {
        if self.in_userns {
            Mode::Rootless
        } else {
            Mode::Rootful
        }
    }

    /// The JSON file of this process's mode.
    pub(crate) fn json_path(&self) -> PathBuf {
        let base =
            self.json
                .clone()
                .unwrap_or_else(|| match std::env::var_os("CARGO_TARGET_DIR") {
                    Some(t) => PathBuf::from(t).join("bench-results.json"),
                    None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results.json"),
                });
        if self.in_userns {
            userns_path(&base)
        } else {
            base
        }
    }
}

/// `x.json` -> `x-userns.json`.
pub(crate) fn userns_path(p: &Path) -> PathBuf {
    let stem = p.file_stem().unwrap_or_default().to_string_lossy();
    let ext = p.extension().map(|e| e.to_string_lossy().into_owned());
    p.with_file_name(match ext {
        Some(e) => format!("{stem}-userns.{e}"),
        None => format!("{stem}-userns"),
    })
}

pub(crate) fn parse_args() -> Result<Config, String> {
    let c = Config::try_parse().map_err(|e| {
        // --help and --version print and exit 0 through clap.
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        e.to_string()
    })?;
    let d = c.dir.as_os_str().as_bytes();
    if d.contains(&b',') || d.contains(&b':') {
        return Err("--dir must not contain ',' or ':' (it goes into mount options)".into());
    }
    Ok(c)
}
