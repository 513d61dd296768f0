//! Shared helpers for the integration tests: temporary layer trees, mount
//! guards for plyfs and kernel overlayfs that always unmount (even when a
//! test panics), and tree snapshots for comparisons.
//!
//! Tests that need root (kernel overlay, mknod, trusted.* xattrs) call
//! [`require_root`], which prints why they are skipped when not root. CI
//! runs as root, so there they always run.

#![allow(dead_code)]

pub mod fdtree;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PLYFS: &str = env!("CARGO_BIN_EXE_plyfs");

/// True when running as root; otherwise prints a skip notice for `test`.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (kernel overlayfs, mknod, trusted.* xattrs)");
    }
    root
}

/// True when /dev/fuse exists; otherwise prints a skip notice.
pub fn require_fuse(test: &str) -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("SKIPPED {test}: /dev/fuse is missing");
    }
    ok
}

/// A temporary directory holding `lower0..N`, `upper`, `work` and `mnt`.
pub struct Layers {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Layers {
    /// `n` empty lower layers (lower0 is the top one).
    pub fn new(n: usize) -> Layers {
        let dir = tempfile::Builder::new()
            .prefix("plyfs-test-")
            .tempdir_in(test_root())
            .expect("tempdir");
        let lowers: Vec<PathBuf> = (0..n)
            .map(|i| dir.path().join(format!("lower{i}")))
            .collect();
        for l in &lowers {
            std::fs::create_dir(l).expect("mkdir lower");
        }
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let mnt = dir.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).expect("mkdir");
        }
        Layers {
            dir,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    pub fn lower(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    /// `lowerdir=...,upperdir=...,workdir=...`
    pub fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(),
            self.upper.display(),
            self.work.display()
        )
    }

    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.display().to_string().replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Mounts plyfs over these layers at `mnt`.
    pub fn mount(&self) -> PlyfsMount {
        PlyfsMount::start(&self.mnt, &self.options(), &[]).expect("mount plyfs")
    }

    /// Mounts plyfs read-only (no upper) at `mnt`.
    pub fn mount_ro(&self) -> PlyfsMount {
        PlyfsMount::start(&self.mnt, &format!("lowerdir={}", self.lowerdir()), &[])
            .expect("mount plyfs")
    }

    /// Mounts kernel overlayfs over these layers at `mnt` (root only).
    pub fn mount_kernel(&self, extra: &str) -> KernelMount {
        self.mount_kernel_checked(extra).expect("mount overlay")
    }

    /// Like [`Layers::mount_kernel`], returning the error of a refused mount.
    pub fn mount_kernel_checked(&self, extra: &str) -> Result<KernelMount, String> {
        let mut o = self.options();
        if !extra.is_empty() {
            o.push(',');
            o.push_str(extra);
        }
        KernelMount::mount(&self.mnt, &o)
    }
}

/// Where test trees live: `PLYFS_TEST_DIR` or the system temp dir. It must
/// support xattrs and mknod (ext4 on our machines; not tmpfs for user.*).
pub fn test_root() -> PathBuf {
    std::env::var_os("PLYFS_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// The canonical path of a mountpoint without touching the mountpoint
/// itself (a dead FUSE mount answers every stat with ENOTCONN).
pub fn canonical_mountpoint(path: &Path) -> Option<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(path.file_name()?))
}

/// The device ("major:minor") of the mount on top at `path`, from
/// /proc/self/mountinfo (the mount no other mount there sits on).
pub fn top_mount_device(path: &Path) -> Option<String> {
    let canon = canonical_mountpoint(path)?;
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let want = canon.as_os_str().as_bytes();
    // (id, parent, device) of every mount at the path.
    let here: Vec<(String, String, String)> = info
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            (f.len() > 4 && unescape_mount(f[4]) == want).then(|| {
                let s = |i: usize| String::from_utf8_lossy(f[i]).into_owned();
                (s(0), s(1), s(2))
            })
        })
        .collect();
    here.iter()
        .rev()
        .find(|(id, _, _)| !here.iter().any(|(_, parent, _)| parent == id))
        .map(|(_, _, dev)| dev.clone())
}

/// Whether `path` is a mount point right now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Some(canon) = canonical_mountpoint(path) else {
        return false;
    };
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.as_os_str().as_bytes();
    info.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .map(|mp| unescape_mount(mp) == want)
            .unwrap_or(false)
    })
}

fn unescape_mount(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&s[i + 1..i + 4]).unwrap_or("x"), 8)
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

/// Lazily unmounts `path` (MNT_DETACH).
pub fn umount(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: umount2 with a valid C string.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// A plyfs daemon running in the foreground (`-f`) as a child; dropped, it
/// unmounts and reaps the child (killing it if it does not exit).
pub struct PlyfsMount {
    pub mnt: PathBuf,
    child: Option<Child>,
    pub stderr_path: PathBuf,
    /// Device of this mount: the guard only ever unmounts this one, never
    /// a mount below or on top of it at the same path.
    pub device: Option<String>,
}

impl PlyfsMount {
    /// Starts `plyfs -f -o OPTIONS MNT` plus `extra` arguments and waits
    /// until the mount is live. Returns the daemon's stderr on failure.
    pub fn start(mnt: &Path, options: &str, extra: &[&str]) -> Result<PlyfsMount, String> {
        Self::start_with(Command::new(PLYFS), mnt, options, extra)
    }

    /// Like [`PlyfsMount::start`] with a prepared command (e.g. to run as
    /// another user or with environment variables).
    pub fn start_with(
        mut cmd: Command,
        mnt: &Path,
        options: &str,
        extra: &[&str],
    ) -> Result<PlyfsMount, String> {
        let log = tempfile::Builder::new()
            .prefix("plyfs-log-")
            .tempfile_in(std::env::temp_dir())
            .map_err(|e| e.to_string())?;
        let (file, stderr_path) = log.keep().map_err(|e| e.to_string())?;
        cmd.arg("-f").arg("-o").arg(options).args(extra).arg(mnt);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        // A mount already there (stacked mounts): wait for a new one on top.
        let before = top_mount_device(mnt);
        let mut child = cmd.spawn().map_err(|e| format!("spawn plyfs: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let device = top_mount_device(mnt);
            if device.is_some() && device != before && fuse_ready(mnt) {
                return Ok(PlyfsMount {
                    mnt: mnt.to_path_buf(),
                    child: Some(child),
                    stderr_path,
                    device,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let _ = std::fs::remove_file(&stderr_path);
                return Err(format!("plyfs exited ({status}): {err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if top_mount_device(mnt) != before {
                    umount(mnt);
                }
                return Err("plyfs did not mount within 20s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the daemon has exited (it does once its mount is gone).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status.
    pub fn unmount(mut self) -> Option<std::process::ExitStatus> {
        self.stop()
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SIGTERM makes plyfs unmount itself; fall back to a lazy unmount.
        // SAFETY: kill with a pid we spawned.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        // Generous: on a loaded machine the kernel's final writeback and the
        // work-dir reaper can take a while; a hang still ends the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if self.device.is_some() && top_mount_device(&self.mnt) == self.device {
            umount(&self.mnt);
        }
        status
    }
}

impl Drop for PlyfsMount {
    /// Unmounts, then fails the test if the daemon panicked at any point
    /// (a panic on a request path is a bug even when the test's own checks
    /// passed), unless the test is already failing.
    fn drop(&mut self) {
        self.stop();
        let log = self.log();
        let _ = std::fs::remove_file(&self.stderr_path);
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("plyfs panicked during the test:\n{log}");
        }
    }
}

/// The mount answers requests (statfs reports FUSE).
fn fuse_ready(mnt: &Path) -> bool {
    let Ok(c) = CString::new(mnt.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs into a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs succeeded.
    r == 0 && unsafe { st.assume_init() }.f_type == 0x65735546
}

/// A kernel overlayfs mount; unmounted on drop.
pub struct KernelMount {
    pub mnt: PathBuf,
}

impl KernelMount {
    pub fn mount(mnt: &Path, options: &str) -> Result<KernelMount, String> {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", options])
            .arg(mnt)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(KernelMount {
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        umount(&self.mnt);
    }
}

/// What a snapshot records about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size for files and symlinks; 0 for directories (their sizes differ
    /// between filesystems and are not compared).
    pub size: u64,
    /// FNV-1a hash of the content (files) or the target (symlinks).
    pub content: u64,
    pub rdev: u64,
    /// User-visible xattrs (user.*, trusted.*, security.*), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub fn kind_char(ft: std::fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        '?'
    }
}

/// Lists xattr names and values of `path` without following symlinks.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: buffer is valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).expect("name");
        let mut val = vec![0u8; 65536];
        // SAFETY: buffers are valid for their lengths.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.push((name.to_vec(), val));
        }
    }
    out.sort();
    out
}

/// Records every path below `root` (relative paths as bytes).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, EntryInfo> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, EntryInfo>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let kind = kind_char(md.file_type());
        let (size, content) = match kind {
            'f' => {
                let mut data = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&p) {
                    let _ = f.read_to_end(&mut data);
                }
                (md.len(), fnv(&data))
            }
            'l' => {
                let t = std::fs::read_link(&p).unwrap_or_default();
                (md.len(), fnv(t.as_os_str().as_bytes()))
            }
            _ => (0, 0),
        };
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .as_os_str()
            .as_bytes()
            .to_vec();
        out.insert(
            rel,
            EntryInfo {
                kind,
                mode: md.permissions().mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size,
                content,
                rdev: md.rdev(),
                xattrs: xattrs(&p),
            },
        );
        if kind == 'd' {
            walk(root, &p, out);
        }
    }
}

/// Human-readable difference of two snapshots (empty when equal).
pub fn diff(
    a: &BTreeMap<Vec<u8>, EntryInfo>,
    b: &BTreeMap<Vec<u8>, EntryInfo>,
    an: &str,
    bn: &str,
) -> String {
    let mut out = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => out += &format!("only in {an}: {}\n", String::from_utf8_lossy(k)),
            Some(w) if w != v => {
                out += &format!(
                    "differs {}:\n  {an}: {v:?}\n  {bn}: {w:?}\n",
                    String::from_utf8_lossy(k)
                )
            }
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out += &format!("only in {bn}: {}\n", String::from_utf8_lossy(k));
        }
    }
    out
}

/// Writes `data` to `path`, creating parent directories.
pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir -p");
    }
    std::fs::write(path, data).expect("write");
}

/// Makes a kernel whiteout (0/0 char device) at `path`.
pub fn whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: mknod with a valid path.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    assert_eq!(
        r,
        0,
        "mknod whiteout {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets an xattr on `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    // SAFETY: valid strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads an xattr of `path` (not following symlinks).
pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    let mut val = vec![0u8; 65536];
    // SAFETY: valid strings and buffer.
    let m = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    val.truncate(m as usize);
    Ok(val)
}

/// The errno of an io::Error (0 when none).
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A path from raw bytes.
pub fn bpath(base: &Path, name: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(name))
}

/// Delta debugging (ddmin): removes chunks of `cur` while `fails` still
/// holds, down to single items; used by the randomized tests to shrink a
/// failing case to a minimal one.
pub fn ddmin<T: Clone>(mut cur: Vec<T>, fails: &mut dyn FnMut(&[T]) -> bool) -> Vec<T> {
    let mut n = 2usize;
    while cur.len() >= 2 {
        let chunk = cur.len().div_ceil(n);
        // The first chunk whose removal keeps the failure.
        let reduced = (0..n).find_map(|i| {
            let (a, b) = (i * chunk, ((i + 1) * chunk).min(cur.len()));
            if a >= b {
                return None;
            }
            let cand: Vec<T> = cur[..a].iter().chain(&cur[b..]).cloned().collect();
            fails(&cand).then_some(cand)
        });
        match reduced {
            Some(c) => {
                cur = c;
                n = (n - 1).max(2);
            }
            None if n >= cur.len() => break,
            None => n = (n * 2).min(cur.len()),
        }
    }
    cur
}
