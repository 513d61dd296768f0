//! Directory handles: opendir, readdir, readdirplus, releasedir, fsyncdir.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::handles::DirHandle;
use crate::listing::Listing;
use crate::names::Name;
use crate::node::Node;
use crate::sys::{self, Errno};

/// One entry as readdir returns it.
pub struct DirItem {
    pub ino: u64,
    /// Offset of the entry after this one.
    pub next: u64,
    pub kind: u32,
    pub name: Box<[u8]>,
}

impl Plyfs {
    pub fn do_opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.handles.add_dir(DirHandle {
            node,
            listing: parking_lot::Mutex::new(None),
        }))
    }

    pub fn do_releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    /// The listing a handle reads at `offset`. Reading from the start again
    /// (rewinddir) picks up changes made since the handle was opened.
    fn listing_for(&self, h: &DirHandle, offset: u64) -> Result<Arc<Listing>> {
        let mut g = h.listing.lock();
        if let Some(l) = g.as_ref() {
            let current = h.node.version.load(Ordering::Relaxed);
            if offset > 0 || l.version == current {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(self.build_listing(&h.node)?);
        *g = Some(l.clone());
        Ok(l)
    }

    fn parent_ino(&self, node: &Node) -> u64 {
        if node.ino == crate::ino::ROOT {
            return crate::ino::ROOT;
        }
        node.primary_alias()
            .map(|a| a.parent)
            .unwrap_or(crate::ino::ROOT)
    }

    /// Entries from `offset` on; `add` returns false once the reply is full.
    pub fn do_readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem) -> bool,
    ) -> Result<()> {
        let h = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let l = self.listing_for(&h, offset)?;
        let dots = [
            (h.node.ino, b".".as_slice()),
            (self.parent_ino(&h.node), b"..".as_slice()),
        ];
        let total = l.entries.len() as u64 + 2;
        let mut i = offset;
        while i < total {
            let item = if i < 2 {
                let (ino, name) = dots[i as usize];
                DirItem {
                    ino,
                    next: i + 1,
                    kind: libc::S_IFDIR,
                    name: name.into(),
                }
            } else {
                let e = &l.entries[(i - 2) as usize];
                DirItem {
                    ino: e.ino,
                    next: i + 1,
                    kind: e.kind,
                    name: e.name.clone(),
                }
            };
            if !add(item) {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    /// Like [`Plyfs::do_readdir`], with each entry looked up (the kernel takes
    /// a reference on every entry it accepts, except `.` and `..`).
    /// `add` returns false when the entry did not fit; its reference is then
    /// given back.
    pub fn do_readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirItem, &FileAttr, u64) -> bool,
    ) -> Result<()> {
        let h = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let l = self.listing_for(&h, offset)?;
        let total = l.entries.len() as u64 + 2;
        let mut i = offset;
        while i < total {
            if i < 2 {
                let node = if i == 0 {
                    h.node.clone()
                } else {
                    self.node(self.parent_ino(&h.node))
                        .unwrap_or_else(|_| h.node.clone())
                };
                let attr = self.node_attr(&node)?;
                let item = DirItem {
                    ino: node.ino,
                    next: i + 1,
                    kind: libc::S_IFDIR,
                    name: if i == 0 {
                        b".".as_slice().into()
                    } else {
                        b"..".as_slice().into()
                    },
                };
                if !add(&item, &attr, node.generation) {
                    break;
                }
                i += 1;
                continue;
            }
            let e = &l.entries[(i - 2) as usize];
            let found = match self.entry_found(&h.node, e, &l.stack) {
                Ok(f) => f,
                // Removed since the listing was made.
                Err(err) if err.code() == libc::ENOENT => {
                    i += 1;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let name = Name::new(&e.name)?;
            let (node, attr) = self.remember(&h.node, &name, found)?;
            let item = DirItem {
                ino: node.ino,
                next: i + 1,
                kind: node.kind,
                name: e.name.clone(),
            };
            if !add(&item, &attr, node.generation) {
                self.table.forget(node.ino, 1);
                break;
            }
            i += 1;
        }
        Ok(())
    }

    pub fn do_fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        if self.cfg.volatile {
            return Ok(());
        }
        let node = self.node(ino)?;
        if !node.has_upper() {
            return Ok(());
        }
        let fd = self.upper_dir_fd(&node)?;
        let d = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        sys::io::fsync(d.as_fd(), datasync)
    }
}
