//! The work directory: staging area on the upper filesystem.
//!
//! Like the kernel, plyfs stages new objects in `WORKDIR/work` and renames
//! them into place, so a crash never leaves a half-made object in the upper
//! layer. Leftovers are removed when a mount starts (the kernel does the
//! same with its own `work` directory, so both can share one workdir).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::names::Name;
use crate::sys::{self, Errno};

pub const WORK: &CStr = c"work";
pub const INDEX: &CStr = c"index";
pub const INCOMPAT: &CStr = c"incompat";
pub const VOLATILE: &CStr = c"volatile";

pub struct WorkDir {
    /// The user's workdir.
    pub base: OwnedFd,
    /// `WORKDIR/work`, where objects are staged.
    work: Arc<OwnedFd>,
    counter: AtomicU64,
    tag: u32,
}

impl WorkDir {
    /// Creates `WORKDIR/work` if needed and empties it.
    pub fn prepare(base: OwnedFd) -> Result<WorkDir, Errno> {
        match sys::fs::mkdirat(base.as_fd(), WORK, 0o700) {
            Ok(()) => {}
            Err(e) if e.code() == libc::EEXIST => {}
            Err(e) => return Err(e),
        }
        let work = sys::fs::open_dir_path(base.as_fd(), WORK)?;
        clean_dir(work.as_fd())?;
        Ok(WorkDir {
            base,
            work: Arc::new(work),
            counter: AtomicU64::new(0),
            tag: sys::process::getpid() as u32,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// A fresh staging name, unique within this mount.
    pub fn temp_name(&self) -> Result<Name, Errno> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Name::new(format!("#plyfs.{:x}.{:x}", self.tag, n).as_bytes())
    }

    /// Removes a staged object (file, whiteout or directory tree).
    pub fn discard(&self, name: &Name) {
        if let Err(e) = remove_tree(self.fd(), name.as_cstr()) {
            log::warn!("cannot remove staged {name:?} from the work dir: {e:?}");
        }
    }
}

/// Removes every entry of the directory `dir` (an `O_PATH` descriptor).
pub fn clean_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    let open = sys::fs::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut names = Vec::new();
    sys::dirent::read_dir(open.as_fd(), |e| names.push(e.name))?;
    for n in names {
        let name = Name::new(&n)?;
        remove_tree(dir, name.as_cstr())?;
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively if it is a directory. Never follows
/// symlinks: directories are opened with `O_NOFOLLOW` one level at a time.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    match sys::fs::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == libc::EISDIR || e.code() == libc::EPERM => {}
        Err(e) if e.code() == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::fs::open_dir_path(dir, name)?;
    clean_dir(sub.as_fd())?;
    drop(sub);
    sys::fs::unlinkat(dir, name, true)
}

/// Creates `work/incompat/volatile`, the kernel's mark of a volatile mount.
pub fn mark_volatile(work: &WorkDir) -> Result<(), Errno> {
    match sys::fs::mkdirat(work.fd(), INCOMPAT, 0o700) {
        Ok(()) => {}
        Err(e) if e.code() == libc::EEXIST => {}
        Err(e) => return Err(e),
    }
    let inc = sys::fs::open_dir_path(work.fd(), INCOMPAT)?;
    match sys::fs::mkdirat(inc.as_fd(), VOLATILE, 0o700) {
        Err(e) if e.code() != libc::EEXIST => Err(e),
        _ => Ok(()),
    }
}
