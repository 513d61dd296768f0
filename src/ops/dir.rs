//! Directory handles: opendir, readdir, readdirplus, releasedir, fsyncdir.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::attr::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::handles::DirHandle;
use crate::listing::{DOT_OFFSET, DOTDOT_OFFSET, Listing};
use crate::names::Name;
use crate::node::Node;
use crate::sys::{self, Errno};
use crate::table::Held;

/// One entry as readdir returns it.
pub struct DirItem {
    pub ino: u64,
    /// Offset of the entry after this one.
    pub next: u64,
    pub kind: u32,
    pub name: Box<[u8]>,
}

/// What readdirplus hands over for one entry: the node and its attributes,
/// or for a names-only entry just the name, type and d_ino (no reference).
pub enum PlusEntry<'a> {
    Full(&'a FileAttr, u64),
    NamesOnly,
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

    /// The listing a handle reads at `offset`. Reading from the start
    /// (opendir, rewinddir) takes the directory's current listing, shared by
    /// all handles and rebuilt only after the directory changed; later reads
    /// keep the handle's listing, and since offsets are name hashes any
    /// listing continues any other correctly.
    fn listing_for(&self, ino: u64, fh: u64, offset: u64) -> Result<(Arc<Node>, Arc<Listing>)> {
        let Some(h) = self.handles.dir(fh) else {
            // No handle (the kernel opens directories itself): the current
            // listing; name-hash offsets make any listing continue any other.
            let node = self.node(ino)?;
            if !node.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let l = self.current_listing(&node)?;
            return Ok((node, l));
        };
        let mut g = h.listing.lock();
        if let Some(l) = g.as_ref()
            && offset > 0
        {
            return Ok((h.node.clone(), l.clone()));
        }
        let l = self.current_listing(&h.node)?;
        *g = Some(l.clone());
        Ok((h.node.clone(), l))
    }

    /// The directory's listing at its current version (cached in the node).
    pub fn current_listing(&self, dir: &Arc<Node>) -> Result<Arc<Listing>> {
        let mut cache = dir.listing.lock();
        let current = dir.version.load(Ordering::Relaxed);
        if let Some(l) = cache.as_ref().filter(|l| l.version == current) {
            return Ok(l.clone());
        }
        let l = Arc::new(self.build_listing(dir)?);
        *cache = Some(l.clone());
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

    /// Entries after directory offset `offset`; `add` returns false once
    /// the reply is full.
    pub fn do_readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem) -> bool,
    ) -> Result<()> {
        let (dir, l) = self.listing_for(ino, fh, offset)?;
        if offset < DOT_OFFSET
            && !add(DirItem {
                ino: dir.ino,
                next: DOT_OFFSET,
                kind: libc::S_IFDIR,
                name: b".".as_slice().into(),
            })
        {
            return Ok(());
        }
        if offset < DOTDOT_OFFSET
            && !add(DirItem {
                ino: self.parent_ino(&dir),
                next: DOTDOT_OFFSET,
                kind: libc::S_IFDIR,
                name: b"..".as_slice().into(),
            })
        {
            return Ok(());
        }
        for e in &l.entries[l.first_after(offset)..] {
            let item = DirItem {
                ino: e.ino,
                next: e.cookie,
                kind: e.kind,
                name: e.name.clone(),
            };
            if !add(item) {
                break;
            }
        }
        Ok(())
    }

    /// Like [`Plyfs::do_readdir`], with each entry looked up (the kernel takes
    /// a reference on every entry it accepts, except `.` and `..`).
    /// `add` returns false when the entry did not fit; its reference is then
    /// given back. Returns the references of the entries added, for the
    /// caller to hand to the kernel once the reply is sent. An error after
    /// some entries were added ends the reply there (the next read
    /// continues after them).
    pub fn do_readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirItem, PlusEntry<'_>) -> bool,
    ) -> Result<Vec<Held<'_>>> {
        let mut refs = Vec::new();
        let (dir, l) = self.listing_for(ino, fh, offset)?;
        for (off, name) in [
            (DOT_OFFSET, b".".as_slice()),
            (DOTDOT_OFFSET, b"..".as_slice()),
        ] {
            if offset >= off {
                continue;
            }
            let node = if off == DOT_OFFSET {
                dir.clone()
            } else {
                self.node(self.parent_ino(&dir))
                    .unwrap_or_else(|_| dir.clone())
            };
            let attr = self.node_attr(&node)?;
            let item = DirItem {
                ino: node.ino,
                next: off,
                kind: libc::S_IFDIR,
                name: name.into(),
            };
            if !add(&item, PlusEntry::Full(&attr, node.generation)) {
                return Ok(refs);
            }
        }
        // Decided once per listing: names-only entries for non-directories?
        let names_only = if offset <= DOTDOT_OFFSET {
            let n = self.plus.start_listing();
            dir.lazy_listed.store(n, Ordering::Relaxed);
            n
        } else {
            dir.lazy_listed.load(Ordering::Relaxed)
        };
        let mut added = 0usize;
        for e in &l.entries[l.first_after(offset)..] {
            if names_only && e.kind != libc::S_IFDIR {
                let item = DirItem {
                    ino: e.ino,
                    next: e.cookie,
                    kind: e.kind,
                    name: e.name.clone(),
                };
                if !add(&item, PlusEntry::NamesOnly) {
                    break;
                }
                added += 1;
                continue;
            }
            let looked_up = self
                .entry_found(&dir, e, &l.stack)
                .and_then(|found| self.remember(&dir, &Name::new(&e.name)?, found));
            let (node, attr) = match looked_up {
                Ok(r) => r,
                // Removed since the listing was made.
                Err(err) if err.code() == libc::ENOENT => continue,
                Err(err) if added > 0 => {
                    log::debug!("listing {dir:?} stops at {:?}: {err:?}", e.name);
                    break;
                }
                Err(err) => return Err(err),
            };
            let item = DirItem {
                ino: node.ino,
                next: e.cookie,
                kind: node.kind,
                name: e.name.clone(),
            };
            if !add(&item, PlusEntry::Full(&attr, node.generation)) {
                // Dropped: the reference goes back.
                break;
            }
            added += 1;
            refs.push(node);
        }
        Ok(refs)
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
        let d = sys::fs::open_dir_here(fd.as_fd())?;
        sys::io::fsync(d.as_fd(), datasync)
    }
}
