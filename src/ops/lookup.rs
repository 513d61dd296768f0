//! lookup, forget, getattr, readlink, statfs, access.

use std::os::fd::AsFd;

use crate::attr::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::names::Name;
use crate::ops::Caller;
use crate::resolve::Lookup;
use crate::sys::{self, Errno, fs::StatFs};
use crate::table::Held;

impl Plyfs {
    /// Looks `name` up in `parent`; `Ok(None)` for a missing name (which the
    /// kernel may cache as a negative entry).
    pub fn do_lookup(&self, parent: u64, name: &Name) -> Result<Option<(Held<'_>, FileAttr)>> {
        let parent = self.node(parent)?;
        match self.resolve(&parent, name)? {
            Lookup::Found(f) => {
                if !f.is_dir()
                    && parent
                        .side_if_any()
                        .is_some_and(|s| s.lazy_listed.load(std::sync::atomic::Ordering::Relaxed))
                {
                    // A walk stats the entries of a names-only listing.
                    self.plus.hit();
                }
                Ok(Some(self.remember(&parent, name, f)?))
            }
            Lookup::Missing { .. } => Ok(None),
        }
    }

    pub fn do_forget(&self, ino: u64, n: u64) {
        if let Some(node) = self.table.forget(ino, n)
            && node.is_dir()
        {
            self.listings.forget(ino, node.generation);
        }
    }

    pub fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr> {
        if let Some(f) = fh.and_then(|fh| self.handles.file(fh)) {
            // An open file answers from its descriptor: this also works after
            // its last name was removed.
            self.refresh_handle(&f)?;
            // A metacopy file's handle reads another object's data: its
            // attributes come from the metadata object.
            if self.handle_is_meta(&f.node, f.is_on_upper()) {
                let st = sys::fs::fstat(f.fd().as_fd())?;
                return self.attr_from(&f.node, &st);
            }
        }
        let node = self.node(ino)?;
        match self.node_attr(&node) {
            // The kernel sends fstat() without a handle: a file whose names
            // are all gone answers from one of its open descriptors.
            Err(e) if e.code() == libc::ENOENT => {
                let f = self
                    .handles
                    .files_of(node.ino)
                    .into_iter()
                    .find(|f| self.handle_is_meta(&f.node, f.is_on_upper()))
                    .ok_or(e)?;
                let st = sys::fs::fstat(f.fd().as_fd())?;
                self.attr_from(&node, &st)
            }
            other => other,
        }
    }

    pub fn do_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        if node.has_upper() {
            let (pfd, name) = self.upper_loc(&node)?;
            return sys::fs::readlinkat(pfd.as_fd(), name.as_cstr());
        }
        let lower = node.top_lower()?;
        let (pfd, name) = lower.locate()?;
        sys::fs::readlinkat(pfd.as_fd(), name.as_cstr())
    }

    /// Statistics of the upper filesystem, or of the top lower layer on a
    /// read-only mount.
    pub fn do_statfs(&self) -> Result<StatFs> {
        let mut st = match &self.upper {
            Some(u) => sys::fs::fstatfs(u.root.as_fd())?,
            None => {
                let root = self.lowers.load().first().ok_or(Errno::EIO)?.root.clone();
                sys::fs::fstatfs(root.dir_fd()?.as_fd())?
            }
        };
        st.namelen = crate::names::NAME_MAX as u32;
        if let Some(q) = &self.quota {
            q.limit_statfs(&mut st);
        }
        Ok(st)
    }

    /// access(2) for mounts without `default_permissions`: the mode bits of
    /// the merged object, and EROFS for writes on a read-only mount.
    pub fn do_access(&self, ino: u64, mask: i32, caller: Caller) -> Result<()> {
        let node = self.node(ino)?;
        let attr = self.node_attr(&node)?;
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK {
            return Ok(());
        }
        let perm = attr.perm as i32;
        if caller.uid == 0 {
            let any_x = perm & 0o111 != 0 || node.is_dir();
            return if mask & libc::X_OK != 0 && !any_x {
                Err(Errno::EACCES)
            } else {
                Ok(())
            };
        }
        let bits = if caller.uid == attr.uid {
            (perm >> 6) & 7
        } else if caller.gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & bits == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}
