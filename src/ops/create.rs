//! Creating names: mknod, mkdir, symlink, link and create (open with
//! O_CREAT).
//!
//! A new object goes straight into the parent's upper directory when the
//! name is free there. When the upper layer holds a whiteout at the name,
//! the object is built in the work directory and renamed over the whiteout
//! (a directory is exchanged with it and made opaque), so the lower object
//! never shows through, even after a crash.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::attr::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::names::Name;
use crate::node::Node;
use crate::ops::Caller;
use crate::ops::fileattr::Change;
use crate::ovl_xattr;
use crate::resolve::Found;
use crate::rmtree::remove_tree;
use crate::sys::{self, Errno, fs::Stat};
use crate::table::Held;
use crate::whiteout;

/// What to create.
pub enum NewObject<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Symlink { target: &'a [u8] },
    Special { mode: u32, rdev: u64 },
    Link { source: Arc<Node> },
}

impl NewObject<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, NewObject::Dir { .. })
    }
}

enum UpperSlot {
    Free,
    Whiteout,
    Taken,
}

/// The result of a creation: the new node, its attributes, and for files an
/// open descriptor.
pub struct Created<'a> {
    /// A reference for the reply; given back if the reply is not sent.
    pub node: Held<'a>,
    pub attr: FileAttr,
    pub fd: Option<OwnedFd>,
}

impl Plyfs {
    pub fn do_create_object(
        &self,
        parent: u64,
        name: &Name,
        what: NewObject<'_>,
        caller: Caller,
    ) -> Result<Created<'_>> {
        let parent = self.node(parent)?;
        self.upper_layer()?;
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if let NewObject::Special { mode, rdev: 0 } = what
            && mode & libc::S_IFMT == libc::S_IFCHR
        {
            // A 0/0 character device is a whiteout: like the kernel,
            // overlay users may not create one.
            return Err(Errno::EPERM);
        }
        self.check_change(&parent, Change::DirAdd)?;
        if let NewObject::Link { source } = &what {
            if source.is_dir() {
                return Err(Errno::EPERM);
            }
            self.check_change(source, Change::Name)?;
        }
        // Operands are copied up before the directory is locked.
        self.copy_up(&parent)?;
        if let NewObject::Link { source } = &what {
            self.copy_up(source)?;
            // A metacopy file gets an absolute redirect, so that every
            // name of it finds its data (as the kernel's ovl_link does).
            self.set_link_redirect(source)?;
            // An indexed hard link counts the new name with its upper one.
            self.index_before_link(source)?;
        }
        let _g = parent.dir_lock.lock();
        let pfd = self.upper_dir_fd(&parent)?;
        // The kernel asks to create only names its lookup (under the same
        // directory lock) found missing, so the lower layers need no second
        // look: only the upper slot matters (free, or a whiteout to replace).
        let whiteout = match self.upper_slot(&parent, &pfd, name)? {
            UpperSlot::Free => false,
            UpperSlot::Whiteout => true,
            UpperSlot::Taken => {
                // O_CREAT without O_EXCL on an existing file opens it.
                if let NewObject::File { flags, .. } = what
                    && flags & libc::O_EXCL == 0
                {
                    let f = self.resolve_found(&parent, name)?;
                    return self.open_existing(&parent, name, f, flags, caller.uid);
                }
                return Err(Errno::EEXIST);
            }
        };
        let pst = sys::fs::fstat(pfd.as_fd())?;
        let (uid, gid) = self.new_owner(caller, &pst)?;
        let what = self.apply_umask(what, caller.umask, &pfd)?;
        // A new inode (not a new link) takes its space first (see `quota`).
        let charge = match &what {
            NewObject::Link { .. } => None,
            NewObject::Dir { .. } => self.quota_new(libc::S_IFDIR)?,
            _ => self.quota_new(0)?,
        };
        let mut fd = None;
        let st = if whiteout {
            self.create_staged(&pfd, name, &what, uid, gid, &pst, &mut fd)?
        } else {
            self.create_direct(pfd.as_fd(), name, &what, uid, gid, &pst, &mut fd)?
        };
        self.quota_made(charge, &st);
        parent.touch_version();
        let mut found = Found::upper_only(st);
        found.opaque = what.is_dir() && (whiteout || found.opaque);
        if let NewObject::Link { source } = &what {
            // The new name is another link to the source's upper inode.
            let node = self.table.hold(source.ino).ok_or(Errno::ENOENT)?;
            let attr = self.attr_from(&node, &st)?;
            self.add_alias(&node, parent.ino, name);
            // A copied-up file (st_ino from its origin) now has a name here:
            // readdir must read origins in this directory. After a remount
            // the node may not know its lower object, so ask the file.
            let copied_up = !node.state.read().lowers.is_empty()
                || whiteout::file_markers(pfd.as_fd(), name.as_cstr(), self.upper_prefixes())
                    .is_ok_and(|m| m.origin.is_some());
            if copied_up {
                self.mark_impure(&parent, &pfd);
            }
            return Ok(Created { node, attr, fd });
        }
        // A new inode: any number remembered for an object that had its
        // inode number before is stale (the upper filesystem reuses them).
        self.inos.unalias((st.dev, st.ino));
        let (node, attr) = self.remember(&parent, name, found)?;
        crate::ops::fileattr::created(&node);
        Ok(Created { node, attr, fd })
    }

    fn open_existing(
        &self,
        parent: &Arc<Node>,
        name: &Name,
        f: Found,
        flags: i32,
        caller_uid: u32,
    ) -> Result<Created<'_>> {
        if f.is_dir() {
            return Err(Errno::EISDIR);
        }
        let (node, attr) = self.remember(parent, name, f)?;
        let fd = self.open_node_fd(&node, flags, caller_uid)?;
        Ok(Created {
            node,
            attr,
            fd: Some(fd),
        })
    }

    /// Applies the caller's umask, unless the parent has a default ACL (which
    /// then decides the permissions) or the kernel already applied it.
    fn apply_umask<'a>(
        &self,
        what: NewObject<'a>,
        umask: u32,
        pfd: &OwnedFd,
    ) -> Result<NewObject<'a>> {
        if umask == 0 || !self.io.dont_mask.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(what);
        }
        let has_default_acl = match sys::fs::open_dir_here(pfd.as_fd())
            .and_then(|d| sys::xattr::fget(d.as_fd(), c"system.posix_acl_default"))
        {
            Ok(_) => true,
            Err(e) if matches!(e.code(), libc::ENODATA | libc::ENOTSUP) => false,
            Err(e) => return Err(e),
        };
        if has_default_acl {
            return Ok(what);
        }
        let m = |mode: u32| mode & !(umask & 0o777);
        Ok(match what {
            NewObject::File { mode, flags } => NewObject::File {
                mode: m(mode),
                flags,
            },
            NewObject::Dir { mode } => NewObject::Dir { mode: m(mode) },
            NewObject::Special { mode, rdev } => NewObject::Special {
                mode: m(mode),
                rdev,
            },
            other => other,
        })
    }

    /// What the upper layer holds at `name` in the directory `pfd`.
    fn upper_slot(&self, parent: &Arc<Node>, pfd: &OwnedFd, name: &Name) -> Result<UpperSlot> {
        match sys::fs::lstatat(pfd.as_fd(), name.as_cstr()) {
            Ok(st) if crate::whiteout::is_char_whiteout(&st) => Ok(UpperSlot::Whiteout),
            Ok(st)
                if st.is_reg()
                    && st.size == 0
                    && parent.state.read().xattr_whiteouts
                    && crate::whiteout::file_markers(
                        pfd.as_fd(),
                        name.as_cstr(),
                        self.upper_prefixes(),
                    )?
                    .xattr_whiteout =>
            {
                Ok(UpperSlot::Whiteout)
            }
            Ok(_) => Ok(UpperSlot::Taken),
            Err(e) if e.code() == libc::ENOENT => Ok(UpperSlot::Free),
            Err(e) => Err(e),
        }
    }

    /// Owner of a new object: the caller, with the group of a set-group-id
    /// parent directory.
    fn new_owner(&self, caller: Caller, parent: &Stat) -> Result<(u32, u32)> {
        let uid = self
            .cfg
            .uids
            .to_stored(caller.uid)
            .ok_or(Errno::EOVERFLOW)?;
        let gid = if parent.mode & libc::S_ISGID != 0 {
            parent.gid
        } else {
            self.cfg
                .gids
                .to_stored(caller.gid)
                .ok_or(Errno::EOVERFLOW)?
        };
        Ok((uid, gid))
    }

    /// Whether any lower layer shows something at `name` in `parent`
    /// (ignoring the upper layer): removing or replacing the name then needs
    /// a whiteout or an opaque directory.
    pub fn lower_presence(&self, parent: &Arc<Node>, name: &Name) -> Result<bool> {
        let stack = self.dir_stack(parent)?;
        for (i, lo) in stack.iter().enumerate() {
            let lfd = lo.dir_fd()?;
            match sys::fs::lstatat(lfd.as_fd(), name.as_cstr()) {
                Ok(st) => return Ok(!crate::whiteout::is_char_whiteout(&st)),
                Err(e) if e.code() == libc::ENOENT => {
                    if i + 1 < stack.len() && lo.has_oci_whiteout(name.as_bytes())? {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Makes the object at `name` in `dir`, owned by `uid:gid`.
    #[allow(clippy::too_many_arguments)]
    fn make_object(
        &self,
        dir: BorrowedFd<'_>,
        name: &Name,
        what: &NewObject<'_>,
        uid: u32,
        gid: u32,
        parent: &Stat,
        fd: &mut Option<OwnedFd>,
    ) -> Result<()> {
        let setgid_dir = parent.mode & libc::S_ISGID != 0;
        let cname = name.as_cstr();
        let mut final_mode = None;
        match what {
            NewObject::File { mode, flags } => {
                let open_flags = self.real_open_flags(*flags) | libc::O_CREAT | libc::O_EXCL;
                let f = sys::fs::openat(dir, cname, open_flags, mode & 0o7777)?;
                *fd = Some(f);
                final_mode = Some(mode & 0o7777);
            }
            NewObject::Dir { mode } => {
                // Like mkdir(2): setuid/setgid are not taken from the mode
                // (setgid comes from the parent).
                let mut m = mode & (0o777 | libc::S_ISVTX);
                if setgid_dir {
                    m |= libc::S_ISGID;
                }
                sys::fs::mkdirat(dir, cname, m)?;
                final_mode = Some(m);
            }
            NewObject::Symlink { target } => {
                let t = CString::new(*target).map_err(|_| Errno::EINVAL)?;
                sys::fs::symlinkat(&t, dir, cname)?;
            }
            NewObject::Special { mode, rdev } => {
                sys::fs::mknodat(dir, cname, *mode, *rdev)?;
                final_mode = Some(mode & 0o7777);
            }
            NewObject::Link { source } => {
                match (self.upper_loc(source), self.pinned(source)) {
                    (Ok((spfd, sname)), _) => {
                        sys::fs::linkat(spfd.as_fd(), sname.as_cstr(), dir, cname)?
                    }
                    // No name plyfs knows (see `relearn_names`): link the
                    // pinned object itself.
                    (Err(e), Some(pin)) if e.code() == libc::ENOENT => {
                        sys::fs::link_fd(pin.as_fd(), dir, cname)?
                    }
                    (Err(e), _) => return Err(e),
                }
                return Ok(());
            }
        }
        if self.cfg.can_chown && (uid != self.cfg.euid || gid != self.cfg.egid || setgid_dir) {
            sys::fs::lchownat(dir, cname, uid, gid)?;
            // chown clears set-id bits of regular files: put them back.
            if let Some(m) = final_mode.filter(|m| m & (libc::S_ISUID | libc::S_ISGID) != 0) {
                match fd.as_ref() {
                    Some(f) => sys::fs::fchmod(f.as_fd(), m)?,
                    None => sys::fs::chmodat(dir, cname, m)?,
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create_direct(
        &self,
        pfd: BorrowedFd<'_>,
        name: &Name,
        what: &NewObject<'_>,
        uid: u32,
        gid: u32,
        pst: &Stat,
        fd: &mut Option<OwnedFd>,
    ) -> Result<Stat> {
        if let Err(e) = self.make_object(pfd, name, what, uid, gid, pst, fd) {
            // Do not leave a half-made object (e.g. chown failed).
            if e.code() != libc::EEXIST && !matches!(what, NewObject::Link { .. }) {
                let _ = sys::fs::unlinkat(pfd, name.as_cstr(), what.is_dir());
            }
            *fd = None;
            return Err(e);
        }
        sys::fs::lstatat(pfd, name.as_cstr())
    }

    /// Builds the object in the work directory and puts it over the
    /// whiteout (or over nothing, for an opaque directory).
    #[allow(clippy::too_many_arguments)]
    fn create_staged(
        &self,
        pfd: &Arc<OwnedFd>,
        name: &Name,
        what: &NewObject<'_>,
        uid: u32,
        gid: u32,
        pst: &Stat,
        fd: &mut Option<OwnedFd>,
    ) -> Result<Stat> {
        let work = self.work()?;
        let tmp = work.temp_name()?;
        let staged = self
            .make_object(work.fd(), &tmp, what, uid, gid, pst, fd)
            .and_then(|()| {
                if what.is_dir() {
                    let attr = self.cfg.prefix.name(ovl_xattr::OPAQUE);
                    sys::xattr::set_at(work.fd(), tmp.as_cstr(), &attr, b"y", 0)?;
                }
                Ok(())
            });
        if let Err(e) = staged {
            *fd = None;
            work.discard(&tmp);
            return Err(e);
        }
        let placed = if what.is_dir() {
            match sys::fs::renameat2(
                work.fd(),
                tmp.as_cstr(),
                pfd.as_fd(),
                name.as_cstr(),
                sys::fs::RENAME_EXCHANGE,
            ) {
                // The whiteout now sits in the work directory.
                Ok(()) => {
                    let _ = remove_tree(work.fd(), tmp.as_cstr());
                    Ok(())
                }
                // No whiteout to exchange with: the name was free.
                Err(e) if e.code() == libc::ENOENT => sys::fs::renameat2(
                    work.fd(),
                    tmp.as_cstr(),
                    pfd.as_fd(),
                    name.as_cstr(),
                    sys::fs::RENAME_NOREPLACE,
                ),
                Err(e) => Err(e),
            }
        } else {
            sys::fs::renameat2(work.fd(), tmp.as_cstr(), pfd.as_fd(), name.as_cstr(), 0)
        };
        if let Err(e) = placed {
            *fd = None;
            work.discard(&tmp);
            return Err(e);
        }
        sys::fs::lstatat(pfd.as_fd(), name.as_cstr())
    }
}
