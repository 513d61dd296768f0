//! unlink and rmdir.
//!
//! A name that only exists in the upper layer is removed there. A name with
//! something below it is replaced by a whiteout: atomically with
//! `RENAME_WHITEOUT` when the upper layer has an object there (the object
//! moves to the work directory and is deleted from there), or with a new
//! whiteout when it has none.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::fs::{Plyfs, Result};
use crate::names::Name;
use crate::node::Node;
use crate::ops::fileattr::Change;
use crate::resolve::Found;
use crate::sys::{self, Errno};

impl Plyfs {
    pub fn do_unlink(&self, parent: u64, name: &Name) -> Result<()> {
        self.remove_name(parent, name, false)
    }

    pub fn do_rmdir(&self, parent: u64, name: &Name) -> Result<()> {
        self.remove_name(parent, name, true)
    }

    fn remove_name(&self, parent: u64, name: &Name, dir: bool) -> Result<()> {
        let parent = self.node(parent)?;
        self.upper_layer()?;
        self.check_change(&parent, Change::DirRemove)?;
        self.copy_up(&parent)?;
        // An indexed hard link: its name linked up, its count stored.
        let indexed = if dir {
            None
        } else {
            self.index_before_remove(&parent, name)?
        };
        let _g = parent.dir_lock.lock();
        let f = self.resolve_found(&parent, name)?;
        match (dir, f.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        if dir && !self.is_empty_dir(&parent, name, &f)? {
            return Err(Errno::ENOTEMPTY);
        }
        let victim = self.number_of(&f).ok().and_then(|ino| self.table.get(ino));
        if let Some(v) = &victim {
            self.check_change(v, Change::Name)?;
        }
        let pfd = self.upper_dir_fd(&parent)?;
        // Like the kernel, an upper object needs a whiteout only when its
        // name shows below: a moved (redirected) directory's lower content
        // is already hidden at its old name.
        let needs_whiteout = match f.upper {
            Some(_) => self.lower_presence(&parent, name)?,
            None => f.has_lower(),
        };
        let last_link = f.is_dir() || f.stat.nlink <= 1;
        // Pin too when this is the last name plyfs knows of a file with
        // other links (it remembers a bounded number of names): the kernel
        // keeps using the other names without looking them up again, and
        // plyfs must still reach the object then.
        let last_known = |v: &Arc<Node>| {
            v.state
                .read()
                .aliases
                .iter()
                .all(|a| a.parent == parent.ino && *a.name == *name.as_bytes())
        };
        if let Some(v) = victim
            .as_ref()
            .filter(|v| f.upper.is_some() && (last_link || last_known(v)))
        {
            self.pin_inode(v, pfd.as_fd(), name);
        }
        match (f.upper.is_some(), needs_whiteout) {
            (true, true) => self.replace_with_whiteout(&pfd, name)?,
            (true, false) if dir => {
                // Move the directory away first: it may still hold whiteouts.
                let work = self.work()?;
                let tmp = work.temp_name()?;
                sys::fs::renameat2(pfd.as_fd(), name.as_cstr(), work.fd(), tmp.as_cstr(), 0)?;
                work.discard_later(&tmp);
            }
            (true, false) => sys::fs::unlinkat(pfd.as_fd(), name.as_cstr(), false)?,
            (false, _) => self.work()?.make_whiteout(pfd.as_fd(), name.as_cstr())?,
        }
        parent.touch_version();
        if let (Some(u), true) = (f.upper, last_link) {
            self.inos.unalias(u);
            self.quota_removed(&f.stat, victim.as_deref());
        }
        if let Some(v) = &victim {
            v.remove_alias(parent.ino, name.as_bytes());
            if last_link {
                v.state.write().unlinked = true;
            } else if let Some(u) = f.upper.filter(|_| v.state.read().aliases.is_empty()) {
                self.relearn_names(v, &parent, &pfd, u);
            }
        }
        if let Some(u) = indexed {
            self.index_after_remove(u, victim.as_ref());
        }
        Ok(())
    }

    /// A file with other links lost the last name plyfs knew for it:
    /// looks for its other names in the same directory (where hard links
    /// usually are), so that operations needing a name (link, setattr,
    /// open) keep working; elsewhere the pinned descriptor serves.
    fn relearn_names(
        &self,
        v: &Arc<Node>,
        parent: &Arc<Node>,
        pfd: &OwnedFd,
        u: crate::node::Ident,
    ) {
        let Ok(dir) = sys::fs::open_dir_here(pfd.as_fd()) else {
            return;
        };
        let mut found = Vec::new();
        let _ = sys::dirent::read_dir(dir.as_fd(), |e| {
            if e.ino == u.1 && found.len() < 16 {
                found.push(e.name);
            }
        });
        for n in found {
            if let Ok(name) = Name::new(&n)
                && sys::fs::lstatat(pfd.as_fd(), name.as_cstr())
                    .is_ok_and(|st| (st.dev, st.ino) == u && !st.is_dir())
            {
                self.add_alias(v, parent.ino, &name);
            }
        }
    }

    /// Keeps the inode of an upper object that is about to lose its last
    /// name alive while the kernel still holds its node: its inode number is
    /// the node id (fuser reports st_ino as the node id), and the upper
    /// filesystem must not hand that number to a new file before the kernel
    /// forgets the old node. Released when the node is dropped.
    pub fn pin_inode(&self, node: &Node, dir: std::os::fd::BorrowedFd<'_>, name: &Name) {
        match sys::fs::open_path(dir, name.as_cstr()) {
            Ok(fd) => *node.side().pin.lock() = Some(Arc::new(fd)),
            Err(e) => log::debug!("cannot pin {node:?}: {e:?}"),
        }
    }

    /// Atomically swaps the upper object at `name` for a whiteout and
    /// deletes the object.
    pub fn replace_with_whiteout(&self, pfd: &Arc<OwnedFd>, name: &Name) -> Result<()> {
        let work = self.work()?;
        let tmp = work.temp_name()?;
        // RENAME_WHITEOUT makes the whiteout in the directory, so a setgid
        // directory would give it its group; the kernel's whiteouts come
        // from the work directory (owned by the mounter), so stage one there.
        let setgid = sys::fs::fstat(pfd.as_fd())?.mode & libc::S_ISGID != 0;
        let moved = !setgid
            && match sys::fs::renameat2(
                pfd.as_fd(),
                name.as_cstr(),
                work.fd(),
                tmp.as_cstr(),
                sys::fs::RENAME_WHITEOUT,
            ) {
                Ok(()) => true,
                // No RENAME_WHITEOUT on this filesystem.
                Err(e) if matches!(e.code(), libc::EINVAL | libc::EPERM | libc::ENOTSUP) => false,
                Err(e) => return Err(e),
            };
        if !moved {
            // Stage a whiteout and exchange it with the object.
            work.make_whiteout(work.fd(), tmp.as_cstr())?;
            if let Err(e) = sys::fs::renameat2(
                work.fd(),
                tmp.as_cstr(),
                pfd.as_fd(),
                name.as_cstr(),
                sys::fs::RENAME_EXCHANGE,
            ) {
                work.discard(&tmp);
                return Err(e);
            }
        }
        // A file goes at once, so that st_nlink of its other names is exact
        // for the next unlink (which must know the last link); directory
        // trees are removed in the background.
        if sys::fs::unlinkat(work.fd(), tmp.as_cstr(), false).is_err() {
            work.discard_later(&tmp);
        }
        Ok(())
    }

    /// Whether the merged directory found as `name` in `parent` is empty.
    pub fn is_empty_dir(&self, parent: &Arc<Node>, name: &Name, f: &Found) -> Result<bool> {
        // A throwaway node over the same objects (not in the table).
        let alias = crate::node::Alias {
            parent: parent.ino,
            name: name.as_bytes().into(),
        };
        let probe = Arc::new(f.node(0, alias));
        Ok(self.build_listing(&probe)?.entries.is_empty())
    }
}
