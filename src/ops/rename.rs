//! rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! Non-directories are copied up and renamed in the upper layer; the old
//! name gets a whiteout (in the same `renameat2` call) when a lower layer
//! still has something there. A directory that only lives in the upper
//! layer is renamed the same way, and made opaque when it lands on a name
//! that has lower content. A directory with lower content needs a redirect
//! (see `redirect.rs`); without one it fails with EXDEV like the kernel's
//! default.

use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::MutexGuard;

use crate::fs::{Plyfs, Result};
use crate::names::Name;
use crate::node::{Alias, Node};
use crate::ops::fileattr::Change;
use crate::options::RedirectMode;
use crate::ovl_xattr;
use crate::resolve::{Found, Lookup};
use crate::sys::{self, Errno};
use crate::table::Held;

const NOREPLACE: u32 = sys::fs::RENAME_NOREPLACE;
const EXCHANGE: u32 = sys::fs::RENAME_EXCHANGE;

impl Plyfs {
    pub fn do_rename(
        &self,
        parent: u64,
        name: &Name,
        newparent: u64,
        newname: &Name,
        flags: u32,
    ) -> Result<()> {
        if flags & !(NOREPLACE | EXCHANGE) != 0 || flags == NOREPLACE | EXCHANGE {
            return Err(Errno::EINVAL);
        }
        self.upper_layer()?;
        let parent = self.node(parent)?;
        let newparent = self.node(newparent)?;
        // Refuse what cannot succeed before copying anything up, like the
        // kernel: an immovable directory, a non-empty target directory.
        self.check_movable(&parent, name)?;
        if flags & EXCHANGE != 0 {
            self.check_movable(&newparent, newname)?;
        } else if let Lookup::Found(df) = self.resolve(&newparent, newname)?
            && df.is_dir()
            && flags & NOREPLACE == 0
            && self.resolve_found(&parent, name)?.is_dir()
            && !self.is_empty_dir(&newparent, newname, &df)?
        {
            return Err(Errno::ENOTEMPTY);
        }
        // Immutable or append-only operands refuse, as the VFS would.
        self.check_change(&parent, Change::DirRemove)?;
        self.check_change(&newparent, Change::DirAdd)?;
        let src = self.node_at(&parent, name)?;
        self.check_change(&src, Change::Name)?;
        if let Lookup::Found(df) = self.resolve(&newparent, newname)? {
            self.check_change(&newparent, Change::DirRemove)?;
            if let Some(d) = self.number_of(&df).ok().and_then(|i| self.table.get(i)) {
                self.check_change(&d, Change::Name)?;
            }
        }
        // Copy operands up before any directory is locked.
        self.copy_up(&parent)?;
        self.copy_up(&newparent)?;
        self.prepare_operand(&src)?;
        let mut indexed_victim = None;
        if flags & EXCHANGE != 0 {
            let dst = self.node_at(&newparent, newname)?;
            self.prepare_operand(&dst)?;
        } else if !Arc::ptr_eq(&parent, &newparent) || name.as_bytes() != newname.as_bytes() {
            // An indexed hard link about to be replaced: counted as an unlink.
            indexed_victim = self.index_before_remove(&newparent, newname)?;
        }
        let _locks = lock_dirs(&parent, &newparent);
        let sf = self.resolve_found(&parent, name)?;
        if sf.upper.is_none() || sf.upper != src.state.read().upper.get() {
            // Changed since we copied it up: let the caller retry.
            return Err(Errno::ENOENT);
        }
        let dst = self.resolve(&newparent, newname)?;
        let pfd = self.upper_dir_fd(&parent)?;
        let npfd = self.upper_dir_fd(&newparent)?;

        if flags & EXCHANGE != 0 {
            let Lookup::Found(df) = dst else {
                return Err(Errno::ENOENT);
            };
            if df.upper.is_none() {
                return Err(Errno::ENOENT);
            }
            let same = Arc::ptr_eq(&parent, &newparent);
            let dnode = self.number_of(&df).ok().and_then(|i| self.table.get(i));
            if sf.is_dir() {
                self.set_redirect(&src, &pfd, name, same)?;
                self.opaque_if_pure(&src, &sf, &pfd, name, &newparent)?;
            }
            if let Some(d) = dnode.as_ref().filter(|d| d.is_dir()) {
                self.set_redirect(d, &npfd, newname, same)?;
                self.opaque_if_pure(d, &df, &npfd, newname, &parent)?;
            }
            // Metacopy files record where their data is before they move.
            self.set_metacopy_redirect(&src, (&pfd, name), &parent, same)?;
            if let Some(d) = dnode.as_ref().filter(|d| !d.is_dir()) {
                self.set_metacopy_redirect(d, (&npfd, newname), &newparent, same)?;
            }
            sys::fs::renameat2(
                pfd.as_fd(),
                name.as_cstr(),
                npfd.as_fd(),
                newname.as_cstr(),
                EXCHANGE,
            )?;
            let dnode = self.number_of(&df).ok().and_then(|i| self.table.get(i));
            self.move_alias(&src, &parent, name, &newparent, newname);
            if let Some(d) = dnode {
                self.move_alias(&d, &newparent, newname, &parent, name);
            }
            // Entries whose st_ino comes from an origin moved to another
            // directory: it is impure now (readdir must read their origin).
            if !Arc::ptr_eq(&parent, &newparent) {
                if self.has_origin(&sf) {
                    self.mark_impure(&newparent, &npfd);
                }
                if self.has_origin(&df) {
                    self.mark_impure(&parent, &pfd);
                }
            }
            self.after_rename(&parent, &newparent);
            return Ok(());
        }

        let mut replaced: Option<Found> = None;
        let mut over_whiteout = false;
        match dst {
            Lookup::Found(df) => {
                if flags & NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                if sf.upper == df.upper {
                    return Ok(());
                }
                match (sf.is_dir(), df.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
                if df.is_dir() {
                    if !self.is_empty_dir(&newparent, newname, &df)? {
                        return Err(Errno::ENOTEMPTY);
                    }
                    if df.upper.is_some() {
                        // Only whiteouts can be left in it: clear them so the
                        // rename may replace it.
                        let dfd = sys::fs::open_dir_path(npfd.as_fd(), newname.as_cstr())?;
                        crate::rmtree::clean_dir(dfd.as_fd())?;
                    }
                }
                // A lower-only target is simply covered by the source.
                replaced = Some(df);
            }
            Lookup::Missing { whiteout } => over_whiteout = whiteout,
        }
        if sf.is_dir() {
            self.set_redirect(&src, &pfd, name, Arc::ptr_eq(&parent, &newparent))?;
            self.opaque_if_pure(&src, &sf, &pfd, name, &newparent)?;
        } else {
            // A metacopy file records where its data is before it moves.
            let same = Arc::ptr_eq(&parent, &newparent);
            self.set_metacopy_redirect(&src, (&pfd, name), &parent, same)?;
        }
        let src_needs_whiteout = self.lower_presence(&parent, name)?;
        if let Some(df) = replaced
            .as_ref()
            .filter(|d| d.upper.is_some() && (d.is_dir() || d.stat.nlink <= 1))
            && let Some(v) = self.number_of(df).ok().and_then(|i| self.table.get(i))
        {
            self.pin_inode(&v, npfd.as_fd(), newname);
        }
        if over_whiteout && (sf.is_dir() || src_needs_whiteout) {
            // A directory cannot replace a whiteout (a device node) by
            // rename, and a name that needs a whiteout can take this one
            // (as the kernel does): exchange the two, then deal with the
            // whiteout.
            sys::fs::renameat2(
                pfd.as_fd(),
                name.as_cstr(),
                npfd.as_fd(),
                newname.as_cstr(),
                EXCHANGE,
            )?;
            if !src_needs_whiteout {
                sys::fs::unlinkat(pfd.as_fd(), name.as_cstr(), false)?;
            }
        } else if src_needs_whiteout {
            match sys::fs::renameat2(
                pfd.as_fd(),
                name.as_cstr(),
                npfd.as_fd(),
                newname.as_cstr(),
                sys::fs::RENAME_WHITEOUT,
            ) {
                Ok(()) => {}
                Err(e) if matches!(e.code(), libc::EINVAL | libc::EPERM | libc::ENOTSUP) => {
                    sys::fs::renameat2(
                        pfd.as_fd(),
                        name.as_cstr(),
                        npfd.as_fd(),
                        newname.as_cstr(),
                        0,
                    )?;
                    self.work()?.make_whiteout(pfd.as_fd(), name.as_cstr())?;
                }
                Err(e) => return Err(e),
            }
        } else {
            sys::fs::renameat2(
                pfd.as_fd(),
                name.as_cstr(),
                npfd.as_fd(),
                newname.as_cstr(),
                0,
            )?;
        }
        if let Some(df) = replaced {
            let victim = self.number_of(&df).ok().and_then(|i| self.table.get(i));
            if let (Some(u), true) = (df.upper, df.is_dir() || df.stat.nlink <= 1) {
                self.inos.unalias(u);
                self.quota_removed(&df.stat, victim.as_deref());
            }
            if let Some(victim) = victim {
                victim.remove_alias(newparent.ino, newname.as_bytes());
                if df.is_dir() || df.stat.nlink <= 1 || df.upper.is_none() {
                    victim.state.write().unlinked = df.upper.is_some();
                }
            }
        }
        self.move_alias(&src, &parent, name, &newparent, newname);
        if !Arc::ptr_eq(&parent, &newparent) && self.has_origin(&sf) {
            self.mark_impure(&newparent, &npfd);
        }
        self.after_rename(&parent, &newparent);
        if let Some(u) = indexed_victim.filter(|u| Some(*u) != sf.upper) {
            let victim = self.inos_node(u);
            self.index_after_remove(u, victim.as_ref());
        }
        Ok(())
    }

    /// The node at `name` in `parent`, held in the table for as long as the
    /// caller keeps the guard (the kernel may not hold it, or may forget it
    /// while plyfs works on it).
    pub fn node_at(&self, parent: &Arc<Node>, name: &Name) -> Result<Held<'_>> {
        let f = self.resolve_found(parent, name)?;
        let (node, _) = self.remember(parent, name, f)?;
        Ok(node)
    }

    /// Copies a rename operand up. A directory with lower content is
    /// copied alone (it will get a redirect), or with its whole tree
    /// (`redirect_dir=copy`), or refused with EXDEV like the kernel's
    /// default.
    fn prepare_operand(&self, node: &Arc<Node>) -> Result<()> {
        if !node.is_dir() {
            return self.copy_up(node);
        }
        if self.dir_stack(node)?.is_empty() && node.has_upper() {
            return Ok(());
        }
        match self.cfg.redirect {
            RedirectMode::On => self.copy_up(node),
            RedirectMode::Copy => self.copy_up_tree(node),
            RedirectMode::Follow | RedirectMode::NoFollow => Err(Errno::EXDEV),
        }
    }

    /// EXDEV for a directory with lower content when directories may not
    /// be redirected.
    fn check_movable(&self, parent: &Arc<Node>, name: &Name) -> Result<()> {
        if !matches!(
            self.cfg.redirect,
            RedirectMode::Follow | RedirectMode::NoFollow
        ) {
            return Ok(());
        }
        let node = self.node_at(parent, name)?;
        if node.is_dir() && !self.dir_stack(&node)?.is_empty() {
            return Err(Errno::EXDEV);
        }
        Ok(())
    }

    /// Records where a directory's lower content lives before it moves: its
    /// old name (relative) within the same parent, else its absolute lower
    /// path. Like the kernel, longer than 256 bytes is refused with EXDEV.
    fn set_redirect(
        &self,
        dir: &Arc<Node>,
        pfd: &Arc<std::os::fd::OwnedFd>,
        name: &Name,
        same_parent: bool,
    ) -> Result<()> {
        if dir.state.read().lowers.is_empty() {
            return Ok(());
        }
        let existing = dir.redirect();
        let value: Vec<u8> = match existing {
            Some(r) if same_parent || r.first() == Some(&b'/') => r.to_vec(),
            None if same_parent => name.as_bytes().to_vec(),
            _ => self.lower_path(dir)?,
        };
        if value.len() > 256 {
            return Err(Errno::EXDEV);
        }
        let attr = self.cfg.prefix.name(ovl_xattr::REDIRECT);
        sys::xattr::set_at(pfd.as_fd(), name.as_cstr(), &attr, &value, 0)?;
        dir.set_redirect(Some(value.into()));
        self.kernel.attrs_changed(dir.ino);
        Ok(())
    }

    /// A directory without lower content that moves into a merged directory
    /// is made opaque, so it never merges with what the lower layers have
    /// at its new name (the kernel's rule).
    fn opaque_if_pure(
        &self,
        dir: &Arc<Node>,
        f: &Found,
        pfd: &Arc<std::os::fd::OwnedFd>,
        name: &Name,
        newparent: &Arc<Node>,
    ) -> Result<()> {
        if f.opaque || !dir.state.read().lowers.is_empty() || self.dir_stack(newparent)?.is_empty()
        {
            return Ok(());
        }
        self.set_opaque(pfd.as_fd(), name)?;
        dir.state.write().opaque = true;
        self.kernel.attrs_changed(dir.ino);
        Ok(())
    }

    /// Whether a found object has an `overlay.origin` (its st_ino comes
    /// from a lower object) or lower content.
    fn has_origin(&self, f: &Found) -> bool {
        f.origin.is_some() || f.has_lower()
    }

    pub fn set_opaque(&self, dir: std::os::fd::BorrowedFd<'_>, name: &Name) -> Result<()> {
        let attr = self.cfg.prefix.name(ovl_xattr::OPAQUE);
        sys::xattr::set_at(dir, name.as_cstr(), &attr, b"y", 0)
    }

    fn move_alias(
        &self,
        node: &Arc<Node>,
        from: &Arc<Node>,
        name: &Name,
        to: &Arc<Node>,
        newname: &Name,
    ) {
        node.remove_alias(from.ino, name.as_bytes());
        node.add_alias(Alias {
            parent: to.ino,
            name: newname.as_bytes().into(),
        });
    }

    fn after_rename(&self, parent: &Arc<Node>, newparent: &Arc<Node>) {
        parent.touch_version();
        newparent.touch_version();
    }
}

/// Locks one or two directories in a fixed order.
fn lock_dirs<'a>(
    a: &'a Arc<Node>,
    b: &'a Arc<Node>,
) -> (MutexGuard<'a, ()>, Option<MutexGuard<'a, ()>>) {
    if Arc::ptr_eq(a, b) {
        return (a.dir_lock.lock(), None);
    }
    // By node id, then by address: two distinct nodes may share an id (a
    // replaced node still in use by a request).
    let key = |n: &Arc<Node>| (n.ino, Arc::as_ptr(n) as usize);
    if key(a) < key(b) {
        let ga = a.dir_lock.lock();
        (ga, Some(b.dir_lock.lock()))
    } else {
        let gb = b.dir_lock.lock();
        (gb, Some(a.dir_lock.lock()))
    }
}
