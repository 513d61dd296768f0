//! Telling the kernel that attributes it caches went stale.
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

use std::sync::OnceLock;

/// Sends attribute invalidations once the mount is live.
#[derive(Default)]
pub struct KernelCache {
    send: OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
}

impl KernelCache {
    /// Installs the sender (from the FUSE session, after mounting).
    pub fn connect(&self, send: Box<dyn Fn(u64) + Send + Sync>) {
        let _ = self.send.set(send);
    }

    /// The kernel's cached attributes of node `ino` are stale.
    pub fn attrs_changed(&self, ino: u64) {
        if let Some(send) = self.send.get() {
            send(ino);
        }
    }
}
