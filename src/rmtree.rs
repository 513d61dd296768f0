//! Removing directory trees by descriptors, without recursion: the work
//! directory's staged trees and leftovers, a replaced upper directory's
//! whiteouts, and entries a layer archive replaces. Every name is removed
//! relative to a descriptor of its directory opened with `O_NOFOLLOW`: a
//! symlink in the tree is removed, never followed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::names::Name;
use crate::sys::{self, Errno};

/// Removes every entry of the directory `dir` (an `O_PATH` descriptor).
pub fn clean_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    for n in entry_names(dir)? {
        let name = Name::new(&n)?;
        remove_tree(dir, name.as_cstr())?;
    }
    Ok(())
}

/// Names in the directory `dir` (an `O_PATH` descriptor).
fn entry_names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let open = sys::fs::open_dir_here(dir)?;
    let mut names = Vec::new();
    sys::dirent::read_dir(open.as_fd(), |e| names.push(e.name))?;
    Ok(names)
}

/// How deep [`remove_tree`] descends before it moves a subdirectory up to
/// be removed on its own: keeps its descriptors bounded at any depth.
const REMOVE_DEPTH: usize = 64;

/// Removes `name` in `dir`, recursively if it is a directory. Never follows
/// symlinks: directories are opened with `O_NOFOLLOW` one level at a time.
/// Iterative with an explicit stack; subtrees deeper than `REMOVE_DEPTH`
/// are renamed into `dir` under a fresh name and removed as trees of their
/// own, so neither the stack nor the open descriptors grow with depth.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    match sys::fs::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == libc::EISDIR || e.code() == libc::EPERM => {}
        Err(e) if e.code() == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut trees: Vec<CString> = vec![name.to_owned()];
    while let Some(t) = trees.pop() {
        remove_dir_tree(dir, &t, &mut trees)?;
    }
    Ok(())
}

/// One directory being emptied by [`remove_dir_tree`].
struct RmFrame {
    fd: OwnedFd,
    name: CString,
    entries: Vec<Vec<u8>>,
}

/// Removes the directory `name` in `base` and everything in it; deep
/// subdirectories are moved to `base` and added to `spilled`.
fn remove_dir_tree(
    base: BorrowedFd<'_>,
    name: &CStr,
    spilled: &mut Vec<CString>,
) -> Result<(), Errno> {
    let open = |parent: BorrowedFd<'_>, name: &CStr| -> Result<RmFrame, Errno> {
        let fd = sys::fs::open_dir_path(parent, name)?;
        let entries = entry_names(fd.as_fd())?;
        Ok(RmFrame {
            fd,
            name: name.to_owned(),
            entries,
        })
    };
    let mut stack = match open(base, name) {
        Ok(f) => vec![f],
        Err(e) if e.code() == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    };
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            break;
        };
        let Some(entry) = top.entries.pop() else {
            let done = stack.pop().ok_or(Errno::EIO)?;
            let parent = stack.last().map(|f| f.fd.as_fd()).unwrap_or(base);
            match sys::fs::unlinkat(parent, &done.name, true) {
                Err(e) if e.code() != libc::ENOENT => return Err(e),
                _ => continue,
            }
        };
        let child = Name::new(&entry)?;
        match sys::fs::unlinkat(top.fd.as_fd(), child.as_cstr(), false) {
            Ok(()) => continue,
            Err(e) if e.code() == libc::ENOENT => continue,
            Err(e) if e.code() == libc::EISDIR || e.code() == libc::EPERM => {}
            Err(e) => return Err(e),
        }
        if depth >= REMOVE_DEPTH {
            let spill = spill_name();
            sys::fs::renameat2(
                top.fd.as_fd(),
                child.as_cstr(),
                base,
                &spill,
                sys::fs::RENAME_NOREPLACE,
            )?;
            spilled.push(spill);
            continue;
        }
        let frame = open(top.fd.as_fd(), child.as_cstr())?;
        stack.push(frame);
    }
    Ok(())
}

/// A fresh name for a subtree moved up by [`remove_dir_tree`].
fn spill_name() -> CString {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let s = format!("#plyfs.rm.{:x}.{n:x}", sys::process::getpid());
    // Digits and ASCII only: no NUL inside.
    CString::new(s).unwrap_or_default()
}
