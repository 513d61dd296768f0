//! Command line: which systems, workloads and sizes.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;


// ---------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Kernel,
    Plyfs,
    FuseOverlayfs,
    /// plyfs with `uring=on` (needs enable_uring=Y) / `uring=off`.
    PlyfsUring,
    PlyfsDevFuse,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Kernel => "kernel",
            System::Plyfs => "plyfs",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::PlyfsUring => "plyfs-uring",
            System::PlyfsDevFuse => "plyfs-devfuse",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<System> {
        match s {
            "kernel" | "overlay" | "overlayfs" => Some(System::Kernel),
            "plyfs" => Some(System::Plyfs),
            "fuse-overlayfs" | "fuse" => Some(System::FuseOverlayfs),
            "plyfs-uring" => Some(System::PlyfsUring),
            "plyfs-devfuse" => Some(System::PlyfsDevFuse),
            _ => None,
        }
    }

    pub(crate) fn is_fuse(self) -> bool {
        self != System::Kernel
    }
}

pub(crate) struct Config {
    pub(crate) dir: PathBuf,
    pub(crate) rebuild: bool,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) systems: Option<Vec<System>>,
    pub(crate) reps: usize,
    pub(crate) quick: bool,
    pub(crate) list: bool,
    pub(crate) json: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) mem: bool,
}

pub(crate) fn usage() -> &'static str {
    "usage: cargo bench --bench overlay -- [--list] [--only W1,W2] \
     [--systems plyfs,kernel,fuse-overlayfs] [--reps N] [--quick] [--dir PATH] \
     [--rebuild] [--json PATH] [--timeout SECS] [--no-mem]"
}

pub(crate) fn parse_args() -> Result<Config, String> {
    let default_json = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("bench-results.json"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results.json"),
    };
    let mut c = Config {
        dir: PathBuf::from("/var/tmp/plyfs-bench"),
        rebuild: false,
        only: None,
        systems: None,
        reps: 0,
        quick: false,
        list: false,
        json: default_json,
        timeout: Duration::from_secs(900),
        mem: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--list" => c.list = true,
            "--quick" => c.quick = true,
            "--rebuild" => c.rebuild = true,
            "--no-mem" => c.mem = false,
            "--dir" => c.dir = PathBuf::from(value("--dir")?),
            "--json" => c.json = PathBuf::from(value("--json")?),
            "--reps" => {
                c.reps = value("--reps")?
                    .parse()
                    .map_err(|_| "--reps needs a number".to_string())?;
                if c.reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
            }
            "--timeout" => {
                let s: u64 = value("--timeout")?
                    .parse()
                    .map_err(|_| "--timeout needs seconds".to_string())?;
                c.timeout = Duration::from_secs(s.max(1));
            }
            "--only" => {
                c.only = Some(
                    value("--only")?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--systems" => {
                let mut v = Vec::new();
                for s in value("--systems")?.split(',').filter(|s| !s.is_empty()) {
                    v.push(System::parse(s).ok_or(format!("unknown system {s:?}"))?);
                }
                c.systems = Some(v);
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if c.reps == 0 {
        c.reps = if c.quick { 1 } else { 3 };
    }
    let d = c.dir.as_os_str().as_bytes();
    if d.contains(&b',') || d.contains(&b':') {
        return Err("--dir must not contain ',' or ':' (it goes into mount options)".into());
    }
    Ok(c)
}
