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
//!   --scale-sizes S1,S2  file counts of the `scale` trees (default 300k,1m)
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
//! * `--only scale` (not in the default run): the daemons' memory per
//!   cached entry on walks of 300k- and 1M-file trees (see `overlay/scale.rs`).
//!
//! Nothing here asserts on speed: machines are noisy, figures are for people.
//! Mounts are held by guards that unmount on drop (also on panic); Ctrl-C
//! kills the running workload and unwinds through the guards. Mounts left
//! behind by a killed run are detached at the next start.
//!
//! Needs root for kernel overlayfs, kernel whiteouts (mknod 0/0),
//! trusted.overlay.opaque and dropping caches. Without root the tree uses OCI
//! whiteouts (`.wh.NAME`, `.wh..wh..opq`) and caches stay warm (it says so).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Bump when the tree layout or its selection rules change: cached trees
/// with another version are rebuilt.
const TREE_VERSION: u32 = 1;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

#[path = "overlay/scale.rs"]
mod scale;

// ---------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Kernel,
    Plyfs,
    FuseOverlayfs,
    /// plyfs with `uring=on` (needs enable_uring=Y) / `uring=off`.
    PlyfsUring,
    PlyfsDevFuse,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Kernel => "kernel",
            System::Plyfs => "plyfs",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::PlyfsUring => "plyfs-uring",
            System::PlyfsDevFuse => "plyfs-devfuse",
        }
    }

    fn parse(s: &str) -> Option<System> {
        match s {
            "kernel" | "overlay" | "overlayfs" => Some(System::Kernel),
            "plyfs" => Some(System::Plyfs),
            "fuse-overlayfs" | "fuse" => Some(System::FuseOverlayfs),
            "plyfs-uring" => Some(System::PlyfsUring),
            "plyfs-devfuse" => Some(System::PlyfsDevFuse),
            _ => None,
        }
    }

    fn is_fuse(self) -> bool {
        self != System::Kernel
    }
}

struct Config {
    dir: PathBuf,
    rebuild: bool,
    only: Option<Vec<String>>,
    systems: Option<Vec<System>>,
    reps: usize,
    quick: bool,
    list: bool,
    json: PathBuf,
    timeout: Duration,
    mem: bool,
    scale_sizes: Vec<usize>,
}

fn usage() -> &'static str {
    "usage: cargo bench --bench overlay -- [--list] [--only W1,W2] \
     [--systems plyfs,kernel,fuse-overlayfs] [--reps N] [--quick] [--dir PATH] \
     [--rebuild] [--json PATH] [--timeout SECS] [--no-mem] [--scale-sizes 300k,1m]"
}

fn parse_args() -> Result<Config, String> {
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
        scale_sizes: vec![300_000, 1_000_000],
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
            "--scale-sizes" => c.scale_sizes = scale::parse_sizes(&value("--scale-sizes")?)?,
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

/// How big the tree and the workloads are.
struct Sizes {
    sources: &'static [&'static str],
    big: u64,
    rewrites: usize,
    new_files: usize,
    whiteouts: usize,
    top_rewrites: usize,
    top_new: usize,
    top_whiteouts: usize,
    append: usize,
    chmod: usize,
    untar: usize,
    seq_write: u64,
    rand_span: u64,
    /// Largest subtree (entries) picked for ls -lR and rm -rf.
    subtree_limit: usize,
}

const FULL: Sizes = Sizes {
    sources: &["/usr/share", "/usr/include"],
    big: GIB,
    rewrites: 300,
    new_files: 200,
    whiteouts: 100,
    top_rewrites: 50,
    top_new: 20,
    top_whiteouts: 10,
    append: 3000,
    chmod: 2000,
    untar: 8000,
    seq_write: GIB,
    rand_span: 64 * MIB,
    subtree_limit: 8000,
};

const QUICK: Sizes = Sizes {
    sources: &["/usr/include"],
    big: 256 * MIB,
    rewrites: 60,
    new_files: 40,
    whiteouts: 30,
    top_rewrites: 10,
    top_new: 10,
    top_whiteouts: 5,
    append: 300,
    chmod: 200,
    untar: 1000,
    seq_write: 256 * MIB,
    rand_span: 16 * MIB,
    subtree_limit: 2000,
};

// ---------------------------------------------------------------------------
// Small helpers

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn human(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Deterministic pseudo-random numbers (SplitMix64): the same machine gives
/// the same tree and the same file selections.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// Last few hundred bytes of a log file, on one line.
fn tail(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(600);
    let s = String::from_utf8_lossy(&data[start..]);
    s.trim().replace('\n', " | ")
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.lines().next().map(|l| l.trim().to_string())
}

fn sync_and_drop_caches(level: &str) -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", level).is_ok()
}

// ---------------------------------------------------------------------------
// Mount table

fn unescape_mount(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && let Some(v) = std::str::from_utf8(&s[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// (mount point, fs type) for every line of /proc/self/mountinfo.
fn mounts() -> Vec<(PathBuf, String)> {
    let info = fs::read("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if fields.len() <= sep + 1 || fields.len() < 5 {
            continue;
        }
        let mp = PathBuf::from(OsStr::from_bytes(&unescape_mount(fields[4])));
        out.push((mp, String::from_utf8_lossy(fields[sep + 1]).into_owned()));
    }
    out
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(path) else {
        return false;
    };
    mounts().iter().any(|(mp, _)| *mp == canon)
}

/// Filesystem type of the mount holding `path`.
fn fs_type(path: &Path) -> String {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts()
        .into_iter()
        .filter(|(mp, _)| canon.starts_with(mp))
        .max_by_key(|(mp, _)| mp.as_os_str().len())
        .map(|(_, t)| t)
        .unwrap_or_else(|| "?".into())
}

fn umount(path: &Path, flags: i32) -> bool {
    let c = cstr(path);
    // SAFETY: umount2 with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), flags) == 0 }
}

fn is_fuse(path: &Path) -> bool {
    let c = cstr(path);
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs into a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs succeeded, so the struct is initialised.
    r == 0 && unsafe { st.assume_init() }.f_type as u64 == FUSE_SUPER_MAGIC
}

// ---------------------------------------------------------------------------
// Watchdog: kills the running workload (and the FUSE daemon, so that blocked
// system calls fail) on timeout or Ctrl-C.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

struct Watch {
    deadline: Option<Instant>,
    daemon: Option<i32>,
    groups: Vec<i32>,
    fired: Option<&'static str>,
}

static WATCH: Mutex<Watch> = Mutex::new(Watch {
    deadline: None,
    daemon: None,
    groups: Vec::new(),
    fired: None,
});

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_watchdog() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is signal safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
            let Some(deadline) = w.deadline else { continue };
            if w.fired.is_some() {
                continue;
            }
            let reason = if INTERRUPTED.load(Ordering::SeqCst) {
                "interrupted"
            } else if Instant::now() > deadline {
                "timed out"
            } else {
                continue;
            };
            w.fired = Some(reason);
            for &g in &w.groups {
                // SAFETY: kill a process group we spawned.
                unsafe { libc::kill(-g, libc::SIGKILL) };
            }
            if let Some(pid) = w.daemon {
                // SAFETY: kill the daemon we spawned; its mount then fails
                // every request with ENOTCONN instead of hanging.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    });
}

fn begin_watch(daemon: Option<u32>, timeout: Duration) {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    w.deadline = Some(Instant::now() + timeout);
    w.daemon = daemon.map(|p| p as i32);
    w.groups.clear();
    w.fired = None;
}

fn end_watch() -> Option<&'static str> {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    w.deadline = None;
    w.daemon = None;
    w.groups.clear();
    w.fired.take()
}

fn watch_group(pid: u32, add: bool) {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    if add {
        w.groups.push(pid as i32);
    } else {
        w.groups.retain(|&g| g != pid as i32);
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// Spawns `cmds` concurrently (each in its own process group so the
/// watchdog can kill whole pipelines), waits for all, and reports the first
/// failure with the tail of its stderr.
fn run_all(cmds: Vec<Command>, scratch: &Path) -> Result<(), String> {
    let mut children: Vec<(Child, PathBuf, String)> = Vec::new();
    let mut spawn_err = None;
    for (i, mut cmd) in cmds.into_iter().enumerate() {
        let errf = scratch.join(format!("cmd{i}.err"));
        let desc = format!("{:?}", cmd.get_program());
        let file = File::create(&errf).map_err(|e| format!("{}: {e}", errf.display()))?;
        cmd.stdin(Stdio::null())
            .stderr(Stdio::from(file))
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                watch_group(child.id(), true);
                children.push((child, errf, desc));
            }
            Err(e) => {
                spawn_err = Some(format!("spawn {desc}: {e}"));
                break;
            }
        }
    }
    let mut result = match spawn_err {
        Some(e) => Err(e),
        None => Ok(()),
    };
    for (mut child, errf, desc) in children {
        let status = child.wait();
        watch_group(child.id(), false);
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                if result.is_ok() {
                    result = Err(format!("{desc} failed ({s}): {}", tail(&errf)));
                }
            }
            Err(e) => {
                if result.is_ok() {
                    result = Err(format!("wait {desc}: {e}"));
                }
            }
        }
    }
    result
}

fn run(cmd: Command, scratch: &Path) -> Result<(), String> {
    run_all(vec![cmd], scratch)
}

fn cmd<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).stdout(Stdio::null());
    c
}

/// Runs `cmd` and reads its stdout to the end in this process, like
/// `| cat > /dev/null` (GNU tar skips reading files when writing to
/// /dev/null, so its output must go through a pipe).
fn run_to_sink(mut cmd: Command, scratch: &Path) -> Result<u64, String> {
    let errf = scratch.join("sink.err");
    let file = File::create(&errf).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .process_group(0);
    let desc = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    watch_group(child.id(), true);
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let read_result = loop {
        match out.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    drop(out);
    let status = child.wait();
    watch_group(child.id(), false);
    read_result.map_err(|e| format!("reading {desc} output: {e}"))?;
    match status {
        Ok(s) if s.success() => Ok(total),
        Ok(s) => Err(format!("{desc} failed ({s}): {}", tail(&errf))),
        Err(e) => Err(format!("wait {desc}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// The layer tree

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other,
}

struct Ent {
    rel: PathBuf,
    kind: Kind,
}

/// Depth-first walk of `root` in name order, not following symlinks.
fn walk(root: &Path) -> Vec<Ent> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let r = rel.join(&name);
            let Ok(md) = fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            let kind = if md.is_dir() {
                Kind::Dir
            } else if md.is_file() {
                Kind::File
            } else {
                Kind::Other
            };
            if kind == Kind::Dir {
                subdirs.push(r.clone());
            }
            out.push(Ent { rel: r, kind });
        }
        // Reverse so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

/// A built tree, as loaded from its manifest.
struct Tree {
    root: PathBuf,
    base: PathBuf,
    update: PathBuf,
    top: PathBuf,
    /// Top-level directories of `base` holding the copied system files.
    sources: Vec<PathBuf>,
    big: PathBuf,
    big_size: u64,
    append: Vec<PathBuf>,
    chmod: Vec<PathBuf>,
    ls_dir: PathBuf,
    rm_dirs: Vec<PathBuf>,
    tarball: PathBuf,
    info: Vec<(String, String)>,
}

impl Tree {
    fn lowerdir(&self) -> String {
        format!(
            "{}:{}:{}",
            self.top.display(),
            self.update.display(),
            self.base.display()
        )
    }

    fn info(&self, key: &str) -> &str {
        self.info
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    }
}

fn write_list(path: &Path, items: &[PathBuf]) -> std::io::Result<()> {
    let mut data = Vec::new();
    for p in items {
        data.extend_from_slice(p.as_os_str().as_bytes());
        data.push(0);
    }
    fs::write(path, data)
}

fn read_list(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(fs::read(path)?
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(OsStr::from_bytes(s)))
        .collect())
}

fn tree_stamp(quick: bool) -> String {
    format!(
        "plyfs-bench tree v{TREE_VERSION} {} {}",
        if quick { "quick" } else { "full" },
        if is_root() { "root" } else { "rootless" }
    )
}

fn load_tree(root: &Path, quick: bool) -> Option<Tree> {
    let stamp = fs::read_to_string(root.join("COMPLETE")).ok()?;
    if stamp.trim() != tree_stamp(quick) {
        return None;
    }
    let manifest = fs::read_to_string(root.join("manifest.txt")).ok()?;
    let info: Vec<(String, String)> = manifest
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let big_size = get("big_size")?.parse().ok()?;
    let ls = read_list(&root.join("ls.list")).ok()?;
    let t = Tree {
        root: root.to_path_buf(),
        base: root.join("base"),
        update: root.join("update"),
        top: root.join("top"),
        sources: read_list(&root.join("sources.list")).ok()?,
        big: PathBuf::from("big/big.bin"),
        big_size,
        append: read_list(&root.join("append.list")).ok()?,
        chmod: read_list(&root.join("chmod.list")).ok()?,
        ls_dir: ls.into_iter().next()?,
        rm_dirs: read_list(&root.join("rm.list")).ok()?,
        tarball: root.join("untar.tar"),
        info,
    };
    let big_ok = fs::metadata(t.base.join(&t.big))
        .map(|m| m.len() == big_size)
        .unwrap_or(false);
    (big_ok && t.tarball.exists() && t.update.is_dir() && t.top.is_dir()).then_some(t)
}

fn make_whiteout(path: &Path, root: bool) -> std::io::Result<()> {
    if root {
        let c = cstr(path);
        // SAFETY: mknod with a valid C string; a 0/0 char device is the
        // kernel overlayfs whiteout.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    } else {
        let mut name = b".wh.".to_vec();
        name.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
        File::create(path.with_file_name(OsStr::from_bytes(&name))).map(drop)
    }
}

fn make_opaque(dir: &Path, root: bool) -> std::io::Result<()> {
    if root {
        let c = cstr(dir);
        // SAFETY: valid C strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    } else {
        File::create(dir.join(".wh..wh..opq")).map(drop)
    }
}

/// Creates the parents of `rel` in `layer`, copying mode and owner from
/// the base layer (the upper-most copy of a directory decides what a merged
/// directory looks like).
fn ensure_parents(layer: &Path, base: &Path, rel: &Path) -> std::io::Result<()> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut acc = PathBuf::new();
    for comp in parent.components() {
        acc.push(comp);
        let dst = layer.join(&acc);
        if dst.exists() {
            continue;
        }
        fs::create_dir(&dst)?;
        if let Ok(md) = fs::metadata(base.join(&acc)) {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
            if is_root() {
                std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid()))?;
            }
        }
    }
    Ok(())
}

/// Writes `rel` into `layer` as a rewritten copy of the base file.
fn rewrite(layer: &Path, base: &Path, rel: &Path, tag: &str) -> std::io::Result<()> {
    ensure_parents(layer, base, rel)?;
    let src = base.join(rel);
    let md = fs::symlink_metadata(&src)?;
    let mut data = fs::read(&src)?;
    data.extend_from_slice(format!("\n# rewritten in the {tag} layer by plyfs-bench\n").as_bytes());
    let dst = layer.join(rel);
    fs::write(&dst, data)?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    if is_root() {
        std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid()))?;
    }
    Ok(())
}

fn new_file(layer: &Path, base: &Path, rel: &Path, rng: &mut Rng) -> std::io::Result<()> {
    ensure_parents(layer, base, rel)?;
    let len = 256 + rng.below(4096);
    let mut text = String::new();
    while text.len() < len {
        let _ = writeln!(
            text,
            "plyfs-bench new file {} line {}",
            rel.display(),
            rng.next()
        );
    }
    fs::write(layer.join(rel), text)
}

fn write_big_file(path: &Path, size: u64) -> std::io::Result<()> {
    // Real data (not sparse): reads must come from the disk.
    let mut f = File::create(path)?;
    let mut rng = Rng(0xB16_F11E);
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn build_tree(final_root: &Path, sizes: &Sizes, quick: bool) -> Result<Tree, String> {
    let t0 = Instant::now();
    let root = final_root.with_extension("building");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("remove {}: {e}", root.display()))?;
    }
    if final_root.exists() {
        fs::remove_dir_all(final_root)
            .map_err(|e| format!("remove {}: {e}", final_root.display()))?;
    }
    let base = root.join("base");
    let update = root.join("update");
    let top = root.join("top");
    for d in [&base, &update, &top] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let root_user = is_root();
    let mut notes: Vec<String> = Vec::new();
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");

    // Base layer: copies of system directories.
    let mut sources = Vec::new();
    for src in sizes.sources {
        let src = Path::new(src);
        let name = src.file_name().expect("source name");
        if !src.is_dir() {
            notes.push(format!("{} is missing on this machine", src.display()));
            continue;
        }
        eprintln!("  copying {} ...", src.display());
        let st = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(base.join(name))
            .status()
            .map_err(|err| e("cp", err))?;
        if !st.success() {
            notes.push(format!(
                "cp -a {} reported errors (partial copy)",
                src.display()
            ));
        }
        sources.push(PathBuf::from(name));
    }
    if sources.is_empty() {
        return Err("no source directories to copy".into());
    }
    eprintln!("  writing {} of pseudo-random data ...", human(sizes.big));
    fs::create_dir(base.join("big")).map_err(|err| e("mkdir big", err))?;
    write_big_file(&base.join("big/big.bin"), sizes.big).map_err(|err| e("big file", err))?;

    let ents = walk(&base);
    let base_entries = ents.len();
    // Entries copied from the system (the big file and its directory aside).
    let copied = ents.iter().filter(|x| !x.rel.starts_with("big")).count();
    if !quick && copied < 65_000 {
        notes.push(format!(
            "this machine has {copied} entries in /usr/share + /usr/include, \
             fewer than the ~65k of the reference tree"
        ));
    }

    // Subtree sizes of every directory.
    let mut subtree: HashMap<&Path, usize> = HashMap::new();
    for ent in &ents {
        let mut p = ent.rel.parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            *subtree.entry(d).or_default() += 1;
            p = d.parent();
        }
    }
    let depth = |p: &Path| p.components().count();
    let big_dir = Path::new("big");
    let mut rng = Rng(0x5EED_0FB1_E5ED);

    // A directory whited out and an opaque directory, both deep enough
    // not to be the subtrees used by ls -lR / rm -rf.
    let mut deep_dirs: Vec<&Path> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && depth(&x.rel) >= 3)
        .map(|x| x.rel.as_path())
        .collect();
    rng.shuffle(&mut deep_dirs);
    let size_of = |d: &Path| subtree.get(d).copied().unwrap_or(0);
    let wh_dir = deep_dirs
        .iter()
        .copied()
        .find(|d| (5..=200).contains(&size_of(d)))
        .map(Path::to_path_buf);
    let opq_dir = deep_dirs
        .iter()
        .copied()
        .find(|d| {
            (5..=500).contains(&size_of(d))
                && wh_dir
                    .as_ref()
                    .is_none_or(|w| !d.starts_with(w) && !w.starts_with(d))
        })
        .map(Path::to_path_buf);
    let hidden = |p: &Path| {
        wh_dir.as_ref().is_some_and(|w| p.starts_with(w))
            || opq_dir.as_ref().is_some_and(|o| p.starts_with(o))
    };

    let mut files: Vec<PathBuf> = ents
        .iter()
        .filter(|x| x.kind == Kind::File && !x.rel.starts_with(big_dir) && !hidden(&x.rel))
        .filter(|x| !x.rel.as_os_str().as_bytes().contains(&b'\n'))
        .map(|x| x.rel.clone())
        .collect();
    rng.shuffle(&mut files);
    let visible_dirs: Vec<&Path> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && !x.rel.starts_with(big_dir) && !hidden(&x.rel))
        .map(|x| x.rel.as_path())
        .collect();
    if files.is_empty() || visible_dirs.is_empty() {
        return Err("the copied tree has no files".into());
    }

    let take = |n: usize, files: &mut Vec<PathBuf>| -> Vec<PathBuf> {
        let n = n.min(files.len());
        files.drain(..n).collect()
    };
    let whiteouts = take(sizes.whiteouts, &mut files);
    // Remaining files stay visible in the merged view.
    let visible = files.clone();
    let rewrites = take(sizes.rewrites, &mut files);
    let top_rewrites = take(sizes.top_rewrites, &mut files);

    eprintln!("  building the update and top layers ...");
    for rel in &rewrites {
        rewrite(&update, &base, rel, "update").map_err(|err| e("rewrite", err))?;
    }
    for rel in &whiteouts {
        ensure_parents(&update, &base, rel).map_err(|err| e("mkdir", err))?;
        make_whiteout(&update.join(rel), root_user).map_err(|err| e("whiteout", err))?;
    }
    if let Some(w) = &wh_dir {
        ensure_parents(&update, &base, w).map_err(|err| e("mkdir", err))?;
        make_whiteout(&update.join(w), root_user).map_err(|err| e("dir whiteout", err))?;
    }
    if let Some(o) = &opq_dir {
        ensure_parents(&update, &base, o).map_err(|err| e("mkdir", err))?;
        fs::create_dir(update.join(o)).map_err(|err| e("mkdir opaque", err))?;
        make_opaque(&update.join(o), root_user).map_err(|err| e("opaque", err))?;
        for i in 0..5 {
            new_file(&update, &base, &o.join(format!("opaque-new-{i}")), &mut rng)
                .map_err(|err| e("opaque file", err))?;
        }
    }
    let mut update_new = Vec::new();
    for i in 0..sizes.new_files {
        let d = visible_dirs[rng.below(visible_dirs.len())];
        let rel = d.join(format!("plyfs-bench-new-{i}"));
        new_file(&update, &base, &rel, &mut rng).map_err(|err| e("new file", err))?;
        update_new.push(rel);
    }

    // Top layer: a few more rewrites and new files, a new directory, and
    // whiteouts over files that only the update layer has.
    for rel in &top_rewrites {
        rewrite(&top, &base, rel, "top").map_err(|err| e("rewrite", err))?;
    }
    for i in 0..sizes.top_new {
        let d = visible_dirs[rng.below(visible_dirs.len())];
        new_file(
            &top,
            &base,
            &d.join(format!("plyfs-bench-top-{i}")),
            &mut rng,
        )
        .map_err(|err| e("new file", err))?;
    }
    let top_dir = sources[0].join("plyfs-bench-top");
    for i in 0..10 {
        new_file(&top, &base, &top_dir.join(format!("file-{i}")), &mut rng)
            .map_err(|err| e("new file", err))?;
    }
    for rel in update_new.iter().take(sizes.top_whiteouts) {
        ensure_parents(&top, &base, rel).map_err(|err| e("mkdir", err))?;
        make_whiteout(&top.join(rel), root_user).map_err(|err| e("whiteout", err))?;
    }

    // Workload file sets (visible lower files; regular files only, so no
    // workload can follow a symlink out of the tree).
    let mut pool = visible;
    rng.shuffle(&mut pool);
    if pool.len() < sizes.append + sizes.chmod {
        notes.push(format!(
            "only {} visible lower files for append ({}) and chmod ({})",
            pool.len(),
            sizes.append,
            sizes.chmod
        ));
    }
    let append: Vec<PathBuf> = pool.iter().take(sizes.append).cloned().collect();
    let chmod: Vec<PathBuf> = pool
        .iter()
        .skip(sizes.append)
        .chain(pool.iter())
        .take(sizes.chmod.min(pool.len()))
        .cloned()
        .collect();

    // ls -lR and rm -rf subtrees: the largest second-level directories
    // under the size limit.
    let mut second: Vec<(&Path, usize)> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && depth(&x.rel) == 2 && !x.rel.starts_with(big_dir))
        .map(|x| (x.rel.as_path(), size_of(&x.rel)))
        .filter(|(_, n)| *n <= sizes.subtree_limit)
        .collect();
    second.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if second.len() < 3 {
        return Err("not enough second-level directories for ls -lR and rm -rf".into());
    }
    let ls_dir = second[0].0.to_path_buf();
    let rm_dirs: Vec<PathBuf> = second[1..3].iter().map(|(p, _)| p.to_path_buf()).collect();

    // Tarball for the untar workload (files only; tar creates the parents).
    let tar_files: Vec<PathBuf> = ents
        .iter()
        .filter(|x| x.kind == Kind::File && !x.rel.starts_with(big_dir))
        .take(sizes.untar)
        .map(|x| x.rel.clone())
        .collect();
    write_list(&root.join("untar.list"), &tar_files).map_err(|err| e("list", err))?;
    let st = Command::new("tar")
        .arg("cf")
        .arg(root.join("untar.tar"))
        .arg("-C")
        .arg(&base)
        .arg("--null")
        .arg("-T")
        .arg(root.join("untar.list"))
        .status()
        .map_err(|err| e("tar", err))?;
    if !st.success() {
        return Err("tar of the untar set failed".into());
    }

    let count = |p: &Path| walk(p).len();
    let mut info = vec![
        ("base_entries".to_string(), base_entries.to_string()),
        ("update_entries".into(), count(&update).to_string()),
        ("top_entries".into(), count(&top).to_string()),
        ("big_size".into(), sizes.big.to_string()),
        ("rewrites".into(), rewrites.len().to_string()),
        ("whiteouts".into(), whiteouts.len().to_string()),
        ("new_files".into(), update_new.len().to_string()),
        (
            "whiteout_dir".into(),
            wh_dir
                .as_ref()
                .map(|w| format!("{} ({} entries)", w.display(), size_of(w)))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "opaque_dir".into(),
            opq_dir
                .as_ref()
                .map(|o| format!("{} ({} entries)", o.display(), size_of(o)))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "ls_dir".into(),
            format!("{} ({} entries)", ls_dir.display(), second[0].1),
        ),
        (
            "rm_dirs".into(),
            second[1..3]
                .iter()
                .map(|(p, n)| format!("{} ({n})", p.display()))
                .collect::<Vec<_>>()
                .join(" + "),
        ),
        ("untar_files".into(), tar_files.len().to_string()),
        (
            "whiteout_style".into(),
            if root_user {
                "kernel 0/0 + trusted.overlay.opaque"
            } else {
                "OCI .wh."
            }
            .into(),
        ),
        (
            "build_seconds".into(),
            format!("{:.0}", t0.elapsed().as_secs_f64()),
        ),
    ];
    for (i, n) in notes.iter().enumerate() {
        info.push((format!("note{i}"), n.clone()));
    }
    let mut manifest = String::new();
    for (k, v) in &info {
        let _ = writeln!(manifest, "{k}={}", v.replace('\n', " "));
    }
    let w = |name: &str, items: &[PathBuf]| {
        write_list(&root.join(name), items).map_err(|err| format!("{name}: {err}"))
    };
    w("sources.list", &sources)?;
    w("append.list", &append)?;
    w("chmod.list", &chmod)?;
    w("ls.list", std::slice::from_ref(&ls_dir))?;
    w("rm.list", &rm_dirs)?;
    fs::write(root.join("manifest.txt"), manifest).map_err(|err| e("manifest", err))?;
    fs::write(root.join("COMPLETE"), tree_stamp(quick)).map_err(|err| e("stamp", err))?;
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::rename(&root, final_root).map_err(|err| e("rename tree", err))?;
    load_tree(final_root, quick).ok_or_else(|| "the new tree does not load".to_string())
}

// ---------------------------------------------------------------------------
// Mounts

/// Where each run's upper, work and mount point live; reset per run.
struct RunDirs {
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    logs: PathBuf,
}

impl RunDirs {
    fn new(bench_dir: &Path) -> Result<RunDirs, String> {
        let root = bench_dir.join("runs");
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
        };
        for p in [&d.mnt, &d.logs] {
            fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
        Ok(d)
    }

    fn reset(&self) -> Result<(), String> {
        for p in [&self.upper, &self.work] {
            if p.exists() {
                fs::remove_dir_all(p).map_err(|e| format!("clean {}: {e}", p.display()))?;
            }
            fs::create_dir(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
        Ok(())
    }

    fn options(&self, tree: &Tree) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.lowerdir(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// A mounted union; unmounts on drop.
enum Mounted {
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
    fn pid(&self) -> Option<u32> {
        match self {
            Mounted::Fuse { child, .. } => child.as_ref().map(Child::id),
            Mounted::Kernel { .. } => None,
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Mounted::Fuse { log, .. } => tail(log),
            Mounted::Kernel { .. } => String::new(),
        }
    }

    /// The daemon died during the run: its exit status.
    fn daemon_exit(&mut self) -> Option<String> {
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

struct Bins {
    plyfs: PathBuf,
    fuse_overlayfs: PathBuf,
}

fn find_bins() -> Bins {
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
    }
}

fn mount(sys: System, tree: &Tree, dirs: &RunDirs, bins: &Bins) -> Result<Mounted, String> {
    if is_mounted(&dirs.mnt) {
        umount(&dirs.mnt, libc::MNT_DETACH);
    }
    let mut opts = dirs.options(tree);
    match sys {
        System::PlyfsUring => opts.push_str(",uring=on"),
        System::PlyfsDevFuse => opts.push_str(",uring=off"),
        _ => {}
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
    let bin = if sys == System::FuseOverlayfs {
        &bins.fuse_overlayfs
    } else {
        &bins.plyfs
    };
    let log = dirs.logs.join(format!("{}.log", sys.name()));
    let logf = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut c = Command::new(bin);
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
// Workloads

struct Ctx<'a> {
    mnt: &'a Path,
    tree: &'a Tree,
    sizes: &'a Sizes,
    scratch: &'a Path,
    fio: bool,
}

struct Workload {
    name: &'static str,
    warm: bool,
    run: fn(&Ctx) -> Result<(), String>,
    describe: fn(&Sizes, Option<&Tree>) -> String,
}

fn stat_walk(c: &Ctx) -> Command {
    let mut cmd = Command::new("find");
    cmd.arg(c.mnt)
        .args(["-printf", "%s\\n"])
        .stdout(Stdio::null());
    cmd
}

fn w_find(c: &Ctx) -> Result<(), String> {
    let mut cmd = Command::new("find");
    cmd.arg(c.mnt).args(["-type", "f"]).stdout(Stdio::null());
    run(cmd, c.scratch)
}

fn w_stat(c: &Ctx) -> Result<(), String> {
    run(stat_walk(c), c.scratch)
}

fn w_ls(c: &Ctx) -> Result<(), String> {
    let dir = c.mnt.join(&c.tree.ls_dir);
    run(
        cmd(
            "ls",
            &[
                OsStr::new("-lR"),
                OsStr::new("--color=never"),
                dir.as_os_str(),
            ],
        ),
        c.scratch,
    )
}

fn w_read_small(c: &Ctx) -> Result<(), String> {
    let mut cmd = Command::new("tar");
    cmd.arg("cf")
        .arg("-")
        .arg("-C")
        .arg(c.mnt)
        .args(&c.tree.sources);
    run_to_sink(cmd, c.scratch).map(drop)
}

fn w_untar(c: &Ctx) -> Result<(), String> {
    let dest = c.mnt.join("plyfs-bench-untar");
    fs::create_dir(&dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
    let mut tar = Command::new("tar");
    tar.arg("xf").arg(&c.tree.tarball).arg("-C").arg(&dest);
    run(tar, c.scratch)?;
    run(cmd::<&str>("sync", &[]), c.scratch)
}

fn w_append(c: &Ctx) -> Result<(), String> {
    for rel in &c.tree.append {
        let p = c.mnt.join(rel);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        f.write_all(b"appended by plyfs-bench\n")
            .map_err(|e| format!("append {}: {e}", p.display()))?;
    }
    Ok(())
}

fn w_chmod(c: &Ctx) -> Result<(), String> {
    for rel in &c.tree.chmod {
        let p = c.mnt.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    Ok(())
}

fn w_rm(c: &Ctx) -> Result<(), String> {
    let mut args = vec![std::ffi::OsString::from("-rf")];
    args.extend(
        c.tree
            .rm_dirs
            .iter()
            .map(|d| c.mnt.join(d).into_os_string()),
    );
    run(cmd("rm", &args), c.scratch)
}

fn w_seq_read(c: &Ctx) -> Result<(), String> {
    let mut f_if = OsStr::new("if=").to_os_string();
    f_if.push(c.mnt.join(&c.tree.big));
    run(
        cmd(
            "dd",
            &[
                f_if.as_os_str(),
                OsStr::new("of=/dev/null"),
                OsStr::new("bs=1M"),
                OsStr::new("status=none"),
            ],
        ),
        c.scratch,
    )
}

fn w_first_write(c: &Ctx) -> Result<(), String> {
    let p = c.mnt.join(&c.tree.big);
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| format!("open {}: {e}", p.display()))?;
    f.write_all_at(&[0x5a; 4096], 0)
        .map_err(|e| format!("write: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    // Close explicitly so a failing close is reported.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(format!("close: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn w_seq_write(c: &Ctx) -> Result<(), String> {
    let mut f_of = OsStr::new("of=").to_os_string();
    f_of.push(c.mnt.join("plyfs-bench-seqwrite.bin"));
    let count = format!("count={}", c.sizes.seq_write / MIB);
    run(
        cmd(
            "dd",
            &[
                OsStr::new("if=/dev/zero"),
                f_of.as_os_str(),
                OsStr::new("bs=1M"),
                OsStr::new(&count),
                OsStr::new("conv=fsync"),
                OsStr::new("status=none"),
            ],
        ),
        c.scratch,
    )
}

fn w_rand_read(c: &Ctx) -> Result<(), String> {
    let p = c.mnt.join(&c.tree.big);
    if c.fio {
        let mut cmd = Command::new("fio");
        cmd.arg("--name=randread")
            .arg(format!("--filename={}", p.display()))
            .args([
                "--readonly",
                "--rw=randread",
                "--bs=4k",
                "--ioengine=psync",
                "--direct=0",
                "--invalidate=0",
                "--randrepeat=1",
                "--output-format=terse",
            ])
            .arg(format!("--size={}", c.sizes.rand_span))
            .stdout(Stdio::null());
        return run(cmd, c.scratch);
    }
    // Without fio: every 4 KiB block of the span once, in random order.
    let f = File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut blocks: Vec<u64> = (0..c.sizes.rand_span / 4096).collect();
    Rng(7).shuffle(&mut blocks);
    let mut buf = [0u8; 4096];
    for b in blocks {
        f.read_exact_at(&mut buf, b * 4096)
            .map_err(|e| format!("pread: {e}"))?;
    }
    Ok(())
}

fn w_par_stat(c: &Ctx) -> Result<(), String> {
    run_all(vec![stat_walk(c), stat_walk(c), stat_walk(c)], c.scratch)
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "find",
            warm: false,
            run: w_find,
            describe: |_, _| "find -type f over the whole tree".into(),
        },
        Workload {
            name: "stat",
            warm: false,
            run: w_stat,
            describe: |_, _| "stat every entry (find -printf %s)".into(),
        },
        Workload {
            name: "stat-warm",
            warm: true,
            run: w_stat,
            describe: |_, _| "stat every entry again, warm (second walk on one mount)".into(),
        },
        Workload {
            name: "ls-lR",
            warm: false,
            run: w_ls,
            describe: |_, t| match t {
                Some(t) => format!("ls -lR of a big lower subtree: {}", t.info("ls_dir")),
                None => "ls -lR of a big lower subtree".into(),
            },
        },
        Workload {
            name: "read-small",
            warm: false,
            run: w_read_small,
            describe: |_, _| "read every small file (tar cf - | pipe)".into(),
        },
        Workload {
            name: "untar",
            warm: false,
            run: w_untar,
            describe: |s, _| format!("untar {} files into the mount + sync", s.untar),
        },
        Workload {
            name: "append",
            warm: false,
            run: w_append,
            describe: |s, _| format!("append to {} lower files (copy-up)", s.append),
        },
        Workload {
            name: "chmod",
            warm: false,
            run: w_chmod,
            describe: |s, _| format!("chmod {} lower files (copy-up)", s.chmod),
        },
        Workload {
            name: "rm-rf",
            warm: false,
            run: w_rm,
            describe: |_, t| match t {
                Some(t) => format!("rm -rf two lower subtrees: {}", t.info("rm_dirs")),
                None => "rm -rf two lower subtrees (whiteouts)".into(),
            },
        },
        Workload {
            name: "seq-read",
            warm: false,
            run: w_seq_read,
            describe: |s, _| format!("sequential read of the {} lower file (dd)", human(s.big)),
        },
        Workload {
            name: "first-write",
            warm: false,
            run: w_first_write,
            describe: |s, _| {
                format!(
                    "first 4 KiB write into the {} lower file (copy-up) + fsync + close",
                    human(s.big)
                )
            },
        },
        Workload {
            name: "seq-write",
            warm: false,
            run: w_seq_write,
            describe: |s, _| format!("sequential write of {} + fsync (dd)", human(s.seq_write)),
        },
        Workload {
            name: "rand-read",
            warm: false,
            run: w_rand_read,
            describe: |s, _| {
                format!(
                    "4k random reads over {} of the big file (fio psync, or pread)",
                    human(s.rand_span)
                )
            },
        },
        Workload {
            name: "par-stat",
            warm: false,
            run: w_par_stat,
            describe: |_, _| "three parallel stat walks".into(),
        },
    ]
}

// ---------------------------------------------------------------------------
// Runs

struct Cell {
    times: Vec<Option<f64>>,
    errors: Vec<String>,
}

impl Cell {
    fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.times.iter().flatten().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

struct Env<'a> {
    tree: &'a Tree,
    sizes: &'a Sizes,
    dirs: &'a RunDirs,
    bins: &'a Bins,
    fio: bool,
    can_drop: bool,
    timeout: Duration,
}

fn one_run(env: &Env, sys: System, w: &Workload) -> Result<f64, String> {
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
// Daemon memory and fds

#[derive(Clone, Default)]
struct ProcStat {
    hwm_kib: u64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l[k.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ProcStat {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

struct MemReport {
    system: System,
    result: Result<(ProcStat, ProcStat), String>,
}

fn mem_report(env: &Env, sys: System) -> MemReport {
    let result = (|| {
        env.dirs.reset()?;
        let m = mount(sys, env.tree, env.dirs, env.bins)?;
        let pid = m.pid().ok_or("no daemon pid")?;
        let ctx = Ctx {
            mnt: &env.dirs.mnt,
            tree: env.tree,
            sizes: env.sizes,
            scratch: &env.dirs.logs,
            fio: env.fio,
        };
        if env.can_drop {
            sync_and_drop_caches("3");
        }
        begin_watch(Some(pid), env.timeout);
        let walked = w_stat(&ctx);
        if let Some(r) = end_watch() {
            return Err(format!("walk {r}"));
        }
        walked?;
        let after_walk = proc_stat(pid).ok_or("daemon gone after the walk")?;
        if env.can_drop {
            sync_and_drop_caches("2");
        }
        // FORGET requests arrive asynchronously after the kernel evicts.
        std::thread::sleep(Duration::from_secs(2));
        let after_drop = proc_stat(pid).ok_or("daemon gone after drop_caches")?;
        drop(m);
        Ok((after_walk, after_drop))
    })();
    MemReport {
        system: sys,
        result,
    }
}

// ---------------------------------------------------------------------------
// Output

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "null".into(),
    }
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
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
    let all = workloads();
    if cfg.list {
        for w in &all {
            println!("{:<12} {}", w.name, (w.describe)(sizes, None));
        }
        println!("{DIFF_WORKLOAD:<12} {DIFF_DESCRIPTION}");
        println!("{:<12} {}", scale::WORKLOAD, scale::DESCRIPTION);
        return;
    }
    let selected: Vec<&Workload> = match &cfg.only {
        Some(names) => {
            for n in names {
                if n != DIFF_WORKLOAD && n != scale::WORKLOAD && !all.iter().any(|w| w.name == n) {
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
    // Only when asked for: large trees, minutes per system.
    let want_scale = cfg
        .only
        .as_ref()
        .is_some_and(|names| names.iter().any(|n| n == scale::WORKLOAD));
    if let Err(e) = real_main(&cfg, sizes, &selected, want_diff, want_scale) {
        eprintln!("overlay bench: {e}");
        std::process::exit(1);
    }
}

fn real_main(
    cfg: &Config,
    sizes: &Sizes,
    selected: &[&Workload],
    want_diff: bool,
    want_scale: bool,
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
    if selected.is_empty() && !want_diff {
        // `--only scale` needs no layer tree of its own.
        return scale_main(cfg, &systems, &bins, can_drop, started);
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

    let scale_rows = (want_scale && !interrupted).then(|| {
        let senv = scale::Env {
            dirs: &dirs,
            bins: &bins,
            bench_dir: &cfg.dir,
            can_drop,
            timeout: cfg.timeout,
        };
        scale::run_all(&senv, &systems, &cfg.scale_sizes)
    });
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);

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
    if let Some(rows) = &scale_rows {
        scale::print(rows);
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
    j.push(']');
    if let Some(rows) = &scale_rows {
        j.push_str(",\n  \"scale\": ");
        j.push_str(&scale::json(rows));
    }
    j.push_str("\n}\n");
    if let Some(parent) = cfg.json.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(&cfg.json, j).map_err(|e| format!("write {}: {e}", cfg.json.display()))?;
    println!("results written to {}", cfg.json.display());
    Ok(())
}

/// `--only scale`: the memory rows alone, without the layer tree.
fn scale_main(
    cfg: &Config,
    systems: &[System],
    bins: &Bins,
    can_drop: bool,
    started: Instant,
) -> Result<(), String> {
    println!(
        "runs: {} over {}",
        scale::WORKLOAD,
        systems
            .iter()
            .filter(|s| s.is_fuse())
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    let dirs = RunDirs::new(&cfg.dir)?;
    install_watchdog();
    let senv = scale::Env {
        dirs: &dirs,
        bins,
        bench_dir: &cfg.dir,
        can_drop,
        timeout: cfg.timeout,
    };
    let rows = scale::run_all(&senv, systems, &cfg.scale_sizes);
    let _ = fs::remove_dir_all(&dirs.upper);
    let _ = fs::remove_dir_all(&dirs.work);
    scale::print(&rows);
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("INTERRUPTED: partial results\n");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    let j = format!(
        "{{\n  \"config\": {{\"caches_dropped\": {can_drop}}},\n  \"scale\": {}\n}}\n",
        scale::json(&rows)
    );
    if let Some(parent) = cfg.json.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(&cfg.json, j).map_err(|e| format!("write {}: {e}", cfg.json.display()))?;
    println!("results written to {}", cfg.json.display());
    Ok(())
}

// ---------------------------------------------------------------------------
// Layer diff: `plyfs diff` of a large upper against a naive merged-tree walk

const DIFF_WORKLOAD: &str = "diff";
const DIFF_DESCRIPTION: &str = "layer diff of a large upper (untar + appends + chmods + rm -rf + a \
     renamed directory): plyfs diff vs a naive differ walking the merged and lower trees \
     (stat both, read changed files), over plyfs and kernel mounts";

struct DiffFigures {
    upper_entries: usize,
    changed: u64,
    runs: Vec<(String, Vec<Result<f64, String>>)>,
    layer_bytes: u64,
    setup_error: Option<String>,
}

/// A read-only union of `lowerdir` at `mnt`; unmounted on drop.
fn mount_ro(
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
fn naive_diff(merged: &Path, lower: &Path) -> Result<u64, String> {
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

fn count_entries(root: &Path) -> usize {
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

fn diff_bench(env: &Env, reps: usize, root: bool) -> DiffFigures {
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

fn print_diff_figures(d: &DiffFigures) {
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
