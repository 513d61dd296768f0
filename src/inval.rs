//! Telling the kernel that what it caches went stale.
//!
//! The kernel keeps attributes for the whole cache timeout (a day by
//! default). Replies carry fresh attributes for what a request changes, but
//! plyfs also changes real objects on its own: a copy-up renames into the
//! parent directory and restores its times (new ctime), marks it impure,
//! links other names of a hard link; a readdir clears a stale impure mark.
//! Each such change invalidates the cached attributes of the nodes
//! concerned (`FUSE_NOTIFY_INVAL_INODE` for attributes only), so that
//! `stat` never shows a ctime older than the real one (`tar` reports "file
//! changed as we read it" otherwise).
//!
//! A change of the lower layers (`plyfs layer`) changes what names mean:
//! then cached entries, listings and attributes of directories go too.
//! Entry invalidations take the parent directory's lock in the kernel, so
//! they are sent only from outside request handlers (the control thread).

use std::sync::OnceLock;

/// What plyfs asks of the kernel's caches.
pub trait Notify: Send + Sync {
    /// Attributes of `ino`, and its cached data from `offset` (`len` 0:
    /// to the end; a negative offset: attributes only).
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()>;
    /// The entry `name` in directory `parent`.
    fn inval_entry(&self, parent: u64, name: &[u8]) -> std::io::Result<()>;
    /// Every cached entry of the mount (Linux 6.16+; EINVAL before).
    fn inc_epoch(&self) -> std::io::Result<()>;
}

impl Notify for fuser::Notifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        fuser::Notifier::inval_inode(self, fuser::INodeNo(ino), offset, len)
    }

    fn inval_entry(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        fuser::Notifier::inval_entry(
            self,
            fuser::INodeNo(parent),
            std::ffi::OsStr::from_bytes(name),
        )
    }

    fn inc_epoch(&self) -> std::io::Result<()> {
        fuser::Notifier::inc_epoch(self)
    }
}

/// Sends invalidations once the mount is live.
#[derive(Default)]
pub struct KernelCache {
    send: OnceLock<Box<dyn Notify>>,
}

/// ENOENT: the kernel no longer knows the node or entry; fine.
fn report(what: &str, res: std::io::Result<()>) {
    if let Err(e) = res
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        log::debug!("cannot invalidate {what}: {e}");
    }
}

impl KernelCache {
    /// Installs the sender (from the FUSE session, after mounting).
    pub fn connect(&self, send: Box<dyn Notify>) {
        let _ = self.send.set(send);
    }

    /// The kernel's cached attributes of node `ino` are stale.
    pub fn attrs_changed(&self, ino: u64) {
        if let Some(send) = self.send.get() {
            report(
                &format!("the attributes of {ino}"),
                send.inval_inode(ino, -1, 0),
            );
        }
    }

    /// Attributes and cached listing of directory `ino` are stale.
    pub fn dir_changed(&self, ino: u64) {
        if let Some(send) = self.send.get() {
            report(&format!("directory {ino}"), send.inval_inode(ino, 0, 0));
        }
    }

    /// The cached entry `name` of directory `parent` (positive or
    /// negative) is stale. Not from a request handler (see above).
    pub fn entry_changed(&self, parent: u64, name: &[u8]) {
        if let Some(send) = self.send.get() {
            report(
                &format!("entry {:?} of {parent}", String::from_utf8_lossy(name)),
                send.inval_entry(parent, name),
            );
        }
    }

    /// Every cached entry is stale; false when the kernel cannot do that
    /// at once (then each must be invalidated by name).
    pub fn all_entries_changed(&self) -> bool {
        if std::env::var_os("PLYFS_NO_EPOCH").is_some() {
            // Tests of the entry-by-entry fallback.
            return false;
        }
        match self.send.get() {
            Some(send) => match send.inc_epoch() {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("no FUSE_NOTIFY_INC_EPOCH: {e}");
                    false
                }
            },
            None => false,
        }
    }

    /// Whether invalidations can be sent (the mount is live).
    pub fn connected(&self) -> bool {
        self.send.get().is_some()
    }
}
