//! The work directory: staging area on the upper filesystem.
//!
//! Like the kernel, plyfs stages new objects in `WORKDIR/work` and renames
//! them into place, so a crash never leaves a half-made object in the upper
//! layer. Leftovers are removed when a mount starts (the kernel does the
//! same with its own `work` directory, so both can share one workdir).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::names::Name;
use crate::rmtree::remove_tree;
use crate::sys::{self, Errno};

pub const WORK: &CStr = c"work";
pub const INCOMPAT: &CStr = c"incompat";
pub const VOLATILE: &CStr = c"volatile";

pub struct WorkDir {
    /// The user's workdir.
    pub base: OwnedFd,
    /// `WORKDIR/work`, where objects are staged.
    work: Arc<OwnedFd>,
    counter: AtomicU64,
    tag: u32,
    /// Generation of the shared whiteout (bumped when it is full).
    whiteout_gen: AtomicU64,
    /// Background remover of staged trees (started on first use, after the
    /// daemon forked).
    reaper: OnceLock<Mutex<std::sync::mpsc::Sender<Vec<u8>>>>,
    reaper_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `WORKDIR/work` was made by this mount (removed again if the mount
    /// fails: a failed mount leaves nothing behind).
    created: bool,
}

impl WorkDir {
    /// Creates `WORKDIR/work` if needed. Leftovers of an earlier mount are
    /// removed once this one is live ([`WorkDir::clean_leftovers`]).
    pub fn prepare(base: OwnedFd) -> Result<WorkDir, Errno> {
        let created = match sys::fs::mkdirat(base.as_fd(), WORK, 0o700) {
            Ok(()) => true,
            Err(e) if e.code() == libc::EEXIST => false,
            Err(e) => return Err(e),
        };
        let work = sys::fs::open_dir_path(base.as_fd(), WORK)?;
        Ok(WorkDir {
            base,
            work: Arc::new(work),
            counter: AtomicU64::new(0),
            tag: sys::process::getpid() as u32,
            whiteout_gen: AtomicU64::new(0),
            reaper: OnceLock::new(),
            reaper_thread: Mutex::new(None),
            created,
        })
    }

    /// Moves what an earlier mount left in the work directory (staged
    /// objects of a crash) into one fresh directory and removes that in the
    /// background: a huge or deep leftover must not delay the mount, and
    /// its names must not collide with this mount's. Called once the mount
    /// is live and before it serves (a failed mount writes nothing).
    pub fn clean_leftovers(&self) -> Result<(), Errno> {
        let names = {
            let open = sys::fs::open_dir_here(self.fd())?;
            let mut names = Vec::new();
            sys::dirent::read_dir(open.as_fd(), |e| names.push(e.name))?;
            names
        };
        if names.is_empty() {
            return Ok(());
        }
        let gc = loop {
            let n = self.temp_name()?;
            match sys::fs::mkdirat(self.fd(), n.as_cstr(), 0o700) {
                Ok(()) => break n,
                Err(e) if e.code() == libc::EEXIST => continue,
                Err(e) => return Err(e),
            }
        };
        let gcfd = sys::fs::open_dir_path(self.fd(), gc.as_cstr())?;
        for n in names {
            let name = Name::new(&n)?;
            sys::fs::renameat2(self.fd(), name.as_cstr(), gcfd.as_fd(), name.as_cstr(), 0)?;
        }
        self.discard_later(&gc);
        Ok(())
    }

    /// Undoes [`WorkDir::prepare`] after a failed mount.
    pub fn undo_prepare(&self) {
        if self.created {
            let _ = remove_tree(self.base.as_fd(), WORK);
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// Creates a whiteout at `name` in `dir`. Like the kernel, plyfs links
    /// one shared whiteout kept in the work directory (a link is much
    /// cheaper than allocating an inode per whiteout); a new shared one is
    /// made when it is missing or has too many links, and `mknod` is the
    /// fallback.
    pub fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
        for _ in 0..3 {
            let shared = self.shared_whiteout_name()?;
            match sys::fs::linkat(self.fd(), shared.as_cstr(), dir, name) {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == libc::ENOENT => {
                    // Made on first use (and after the work dir was cleaned).
                    match crate::whiteout::make_whiteout(self.fd(), shared.as_cstr()) {
                        Ok(()) => {}
                        Err(e) if e.code() == libc::EEXIST => {}
                        Err(_) => break,
                    }
                }
                Err(e) if e.code() == libc::EMLINK => {
                    self.whiteout_gen.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.code() == libc::EEXIST => return Err(e),
                Err(_) => break,
            }
        }
        crate::whiteout::make_whiteout(dir, name)
    }

    fn shared_whiteout_name(&self) -> Result<Name, Errno> {
        let g = self.whiteout_gen.load(Ordering::Relaxed);
        Name::new(format!("#plyfs.whiteout.{:x}.{g}", self.tag).as_bytes())
    }

    /// A fresh staging name, unique within this mount.
    pub fn temp_name(&self) -> Result<Name, Errno> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Name::new(format!("#plyfs.{:x}.{:x}", self.tag, n).as_bytes())
    }

    /// Removes a staged directory tree in the background: it already left
    /// the merged view (atomically), and a crash only leaves it for the next
    /// mount's cleanup. Falls back to removing it here.
    pub fn discard_later(&self, name: &Name) {
        let tx = self.reaper.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let work = self.work.clone();
            let spawned = std::thread::Builder::new()
                .name("plyfs-reaper".into())
                .spawn(move || {
                    for n in rx {
                        if let Ok(name) = Name::new(&n)
                            && let Err(e) = remove_tree(work.as_fd(), name.as_cstr())
                        {
                            log::warn!("cannot remove staged {name:?} from the work dir: {e:?}");
                        }
                    }
                });
            match spawned {
                Ok(h) => *self.reaper_thread.lock() = Some(h),
                Err(_) => log::warn!("no background remover: removing staged trees inline"),
            }
            Mutex::new(tx)
        });
        if tx.lock().send(name.as_bytes().to_vec()).is_err() {
            self.discard(name);
        }
    }

    /// At unmount: waits for background removals and drops the shared
    /// whiteout, so a clean unmount leaves the work directory empty.
    pub fn finish(&self) {
        if let Some(tx) = self.reaper.get() {
            // Closing the channel ends the reaper once its queue is empty.
            let (done_tx, _) = std::sync::mpsc::channel();
            let old = std::mem::replace(&mut *tx.lock(), done_tx);
            drop(old);
        }
        if let Some(handle) = self.reaper_thread.lock().take() {
            let _ = handle.join();
        }
        for g in 0..=self.whiteout_gen.load(Ordering::Relaxed) {
            if let Ok(n) = Name::new(format!("#plyfs.whiteout.{:x}.{g}", self.tag).as_bytes()) {
                let _ = sys::fs::unlinkat(self.fd(), n.as_cstr(), false);
            }
        }
    }

    /// Removes a staged object (file, whiteout or directory tree).
    pub fn discard(&self, name: &Name) {
        if let Err(e) = remove_tree(self.fd(), name.as_cstr()) {
            log::warn!("cannot remove staged {name:?} from the work dir: {e:?}");
        }
    }
}

/// Creates `work/incompat/volatile/dirty`, the kernel's mark of a volatile
/// mount: until it is removed, no overlay mounts the upper again.
pub fn mark_volatile(work: &WorkDir) -> Result<(), Errno> {
    let mut dir = sys::fs::dup(work.fd())?;
    for name in [INCOMPAT, VOLATILE] {
        match sys::fs::mkdirat(dir.as_fd(), name, 0o700) {
            Err(e) if e.code() != libc::EEXIST => return Err(e),
            _ => {}
        }
        dir = sys::fs::open_dir_path(dir.as_fd(), name)?;
    }
    match sys::fs::openat(dir.as_fd(), c"dirty", libc::O_WRONLY | libc::O_CREAT, 0o600) {
        Err(e) if e.code() != libc::EEXIST => Err(e),
        _ => Ok(()),
    }
}
