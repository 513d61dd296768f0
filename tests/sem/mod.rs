//! Helpers shared by the union-semantics tests (lookup_whiteout, readdir,
//! copy_up, ops, inodes, names_readonly): thin libc wrappers for calls std
//! does not expose (readdir with d_ino/telldir, renameat2, mknod, utimensat,
//! xattr removal), listing helpers and a plyfs-vs-kernel runner.
//!
//! Use with `mod common; mod sem; use common::*; use sem::*;`.

#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::common::*;

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Turns a libc return value into a Result carrying errno.
pub fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The errno of a result that must have failed.
pub fn err_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => errno(&e),
    }
}

/// Sorted entry names of `dir` (without `.` and `..`), as bytes.
pub fn names(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dirent").file_name().as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

/// Sorted entry names of `dir` as (lossy) strings.
pub fn ls(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

/// One entry as returned by readdir(3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    pub name: Vec<u8>,
    pub ino: u64,
    pub typ: u8,
}

/// A libc directory stream (opendir/readdir/telldir/seekdir/rewinddir).
pub struct Dir {
    ptr: *mut libc::DIR,
}

impl Dir {
    pub fn open(p: &Path) -> io::Result<Dir> {
        let c = cpath(p);
        // SAFETY: valid C string.
        let ptr = unsafe { libc::opendir(c.as_ptr()) };
        if ptr.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(Dir { ptr })
        }
    }

    /// The next entry, or None at the end (panics on a read error).
    pub fn next_entry(&mut self) -> Option<DirEnt> {
        // SAFETY: errno location is thread-local; ptr is an open DIR.
        unsafe {
            *libc::__errno_location() = 0;
            let d = libc::readdir(self.ptr);
            if d.is_null() {
                let e = io::Error::last_os_error();
                assert_eq!(errno(&e), 0, "readdir failed: {e}");
                return None;
            }
            let d = &*d;
            Some(DirEnt {
                name: CStr::from_ptr(d.d_name.as_ptr()).to_bytes().to_vec(),
                ino: d.d_ino,
                typ: d.d_type,
            })
        }
    }

    /// Up to `n` entries.
    pub fn take(&mut self, n: usize) -> Vec<DirEnt> {
        let mut v = Vec::new();
        while v.len() < n {
            match self.next_entry() {
                Some(e) => v.push(e),
                None => break,
            }
        }
        v
    }

    /// All remaining entries.
    pub fn rest(&mut self) -> Vec<DirEnt> {
        self.take(usize::MAX)
    }

    pub fn tell(&mut self) -> i64 {
        // SAFETY: ptr is an open DIR.
        let r = unsafe { libc::telldir(self.ptr) };
        assert!(r >= 0, "telldir: {}", io::Error::last_os_error());
        r
    }

    pub fn seek(&mut self, pos: i64) {
        // SAFETY: ptr is an open DIR; pos came from telldir.
        unsafe { libc::seekdir(self.ptr, pos) }
    }

    pub fn rewind(&mut self) {
        // SAFETY: ptr is an open DIR.
        unsafe { libc::rewinddir(self.ptr) }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: ptr is an open DIR, closed once.
        unsafe {
            libc::closedir(self.ptr);
        }
    }
}

/// Every entry of `dir` (including `.` and `..`) via readdir(3).
pub fn readdir_all(dir: &Path) -> Vec<DirEnt> {
    Dir::open(dir)
        .unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display()))
        .rest()
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings; raw syscall because older glibc lacks a wrapper.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    check(r as libc::c_int).map(|_| ())
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: valid C string.
    check(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(|_| ())
}

pub fn access(p: &Path, how: i32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: valid C string.
    check(unsafe { libc::access(c.as_ptr(), how) }).map(|_| ())
}

/// A timespec for utimensat; use `libc::UTIME_NOW` / `libc::UTIME_OMIT` as
/// nsec for the special values.
pub fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// utimensat without following symlinks.
pub fn utimens(p: &Path, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
    let c = cpath(p);
    let t = [atime, mtime];
    // SAFETY: valid C string and a two-element array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

pub fn remove_xattr(p: &Path, name: &str) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(|_| ())
}

/// xattr names of `p` (not following symlinks), sorted.
pub fn xattr_names(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: buffer valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "listxattr {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    let mut v: Vec<String> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

pub fn lstat(p: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::symlink_metadata(p)
}

/// True when `p` is a kernel whiteout (0/0 character device).
pub fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// True when `p` does not exist (not even as a dangling symlink).
pub fn absent(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// Non-directory entries (and non-empty dirs' contents) left anywhere below
/// `dir`: staging leftovers in a workdir. Empty directories are fine.
/// Files left in the work dir, ignoring the shared whiteout plyfs keeps
/// there (as the kernel does) and waiting up to 2 s for staged trees that
/// plyfs removes in the background.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let found = leftovers_now(dir);
        if found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn leftovers_now(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let shared_whiteout = e
            .file_name()
            .to_string_lossy()
            .starts_with("#plyfs.whiteout.");
        if e.file_type().expect("type").is_dir() {
            out.extend(leftovers_now(&p));
        } else if !shared_whiteout {
            out.push(p);
        }
    }
    out
}

/// Builds two identical layer sets with `setup`, runs `op` on a plyfs mount
/// of the first and a kernel overlayfs mount of the second, and returns
/// (plyfs result, kernel result). Root only (kernel mount).
pub fn plyfs_and_kernel<R>(
    n: usize,
    setup: impl Fn(&Layers),
    op: impl Fn(&Path, &Layers) -> R,
) -> (R, R) {
    let a = Layers::new(n);
    setup(&a);
    let b = Layers::new(n);
    setup(&b);
    let ra = {
        let m = a.mount();
        op(&m.mnt, &a)
    };
    let rb = {
        let _k = b.mount_kernel("");
        op(&b.mnt, &b)
    };
    (ra, rb)
}

/// Like [`plyfs_and_kernel`] with extra mount options for each side
/// (comma separated, may be empty).
pub fn plyfs_and_kernel_with<R>(
    n: usize,
    plyfs_opts: &str,
    kernel_opts: &str,
    setup: impl Fn(&Layers),
    op: impl Fn(&Path, &Layers) -> R,
) -> (R, R) {
    let a = Layers::new(n);
    setup(&a);
    let b = Layers::new(n);
    setup(&b);
    let ra = {
        let m = mount_with(&a, plyfs_opts);
        op(&m.mnt, &a)
    };
    let rb = {
        let _k = b.mount_kernel(kernel_opts);
        op(&b.mnt, &b)
    };
    (ra, rb)
}

/// Mounts plyfs over `l` with extra `-o` options.
pub fn mount_with(l: &Layers, extra: &str) -> PlyfsMount {
    let mut o = l.options();
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    PlyfsMount::start(&l.mnt, &o, &[]).expect("mount plyfs")
}

/// `n` bytes of deterministic pseudo-random data.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sets atime and mtime of `p` to whole seconds (not following symlinks).
pub fn set_times(p: &Path, atime: i64, mtime: i64) {
    utimens(p, ts(atime, 0), ts(mtime, 0)).expect("utimensat");
}

/// (atime, atime_nsec, mtime, mtime_nsec) of `p`.
pub fn times(p: &Path) -> (i64, i64, i64, i64) {
    let m = lstat(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
}
