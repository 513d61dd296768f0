//! Small helpers: units, the seeded RNG, the mount table, caches.

use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

// ---------------------------------------------------------------------------
// Small helpers

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub(crate) fn human(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Deterministic pseudo-random numbers (SplitMix64): the same machine gives
/// the same tree and the same file selections.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// Last few hundred bytes of a log file, on one line.
pub(crate) fn tail(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(600);
    let s = String::from_utf8_lossy(&data[start..]);
    s.trim().replace('\n', " | ")
}

pub(crate) fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.lines().next().map(|l| l.trim().to_string())
}

pub(crate) fn sync_and_drop_caches(level: &str) -> bool {
    if let Some(ok) = drop_caches_via_parent(level) {
        return ok;
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", level).is_ok()
}

/// Whether this process may drop caches (root, or the rootless child of a
/// root parent).
pub(crate) fn can_drop_caches() -> bool {
    drop_caches_via_parent("1").unwrap_or_else(|| {
        is_root()
            && OpenOptions::new()
                .write(true)
                .open("/proc/sys/vm/drop_caches")
                .is_ok()
    })
}

// ---------------------------------------------------------------------------
// Mount table

pub(crate) fn unescape_mount(s: &[u8]) -> Vec<u8> {
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
pub(crate) fn mounts() -> Vec<(PathBuf, String)> {
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

pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(path) else {
        return false;
    };
    mounts().iter().any(|(mp, _)| *mp == canon)
}

/// Filesystem type of the mount holding `path`.
pub(crate) fn fs_type(path: &Path) -> String {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts()
        .into_iter()
        .filter(|(mp, _)| canon.starts_with(mp))
        .max_by_key(|(mp, _)| mp.as_os_str().len())
        .map(|(_, t)| t)
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn umount(path: &Path, flags: i32) -> bool {
    let c = cstr(path);
    // SAFETY: umount2 with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), flags) == 0 }
}

pub(crate) fn is_fuse(path: &Path) -> bool {
    let c = cstr(path);
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs into a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs succeeded, so the struct is initialised.
    r == 0 && unsafe { st.assume_init() }.f_type as u64 == FUSE_SUPER_MAGIC
}

// ---------------------------------------------------------------------------
// Watchdog: kills the running workload (and the FUSE daemon, so that blocked
