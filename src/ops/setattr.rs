//! setattr: truncate, chmod, chown, utimes. Changes apply to the upper copy,
//! which is made first.

use std::os::fd::AsFd;

use crate::attr::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::ops::fileattr::Change;
use crate::sys::{self, Errno, fs::TimeSpec};

/// The attributes one setattr request changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub fh: Option<u64>,
}

impl Plyfs {
    /// Clears setuid, and setgid with group execute, of a regular file, as
    /// the kernel does when a caller without CAP_FSETID writes or truncates
    /// it: under `FUSE_HANDLE_KILLPRIV_V2` the kernel leaves that to plyfs
    /// (whose own writes, with CAP_FSETID, keep the bits). Returns the new
    /// attributes when something changed.
    pub fn do_kill_suidgid(&self, ino: u64) -> Result<Option<FileAttr>> {
        let attr = self.do_getattr(ino, None)?;
        if attr.kind != libc::S_IFREG {
            return Ok(None);
        }
        let mode = u32::from(attr.perm);
        let mut new = mode & !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            new &= !libc::S_ISGID;
        }
        if new == mode {
            return Ok(None);
        }
        let a = SetAttr {
            mode: Some(new),
            ..SetAttr::default()
        };
        self.do_setattr(ino, a).map(Some)
    }

    pub fn do_setattr(&self, ino: u64, a: SetAttr) -> Result<FileAttr> {
        let node = self.node(ino)?;
        self.upper_layer()?;
        // Refuse what cannot be done before changing anything.
        if a.size.is_some() {
            match node.kind {
                libc::S_IFDIR => return Err(Errno::EISDIR),
                libc::S_IFREG => {}
                _ => return Err(Errno::EINVAL),
            }
        }
        let explicit = |t: Option<TimeSpec>| matches!(t, Some(TimeSpec::Set(..)));
        if a.mode.is_some()
            || a.uid.is_some()
            || a.gid.is_some()
            || explicit(a.atime)
            || explicit(a.mtime)
        {
            self.check_change(&node, Change::Meta)?;
        }
        if a.size.is_some() || a.atime.is_some() || a.mtime.is_some() {
            // Truncating needs write access; touching only "now" too.
            let truncate = a.size.is_some();
            self.check_change(
                &node,
                Change::Write {
                    append: !truncate,
                    truncate,
                },
            )?;
        }
        let handle = a.fh.and_then(|fh| self.handles.file(fh));
        match a.size {
            // Truncation changes the data: it needs the data copied up
            // (not for size 0: it is thrown away).
            Some(size) => self.copy_up_with_data(&node, size == 0)?,
            None => self.copy_up(&node)?,
        }
        // Host ids for the new owner; ids outside the mapping cannot be stored.
        let uid = match a.uid {
            Some(u) => Some(self.cfg.uids.to_stored(u).ok_or(Errno::EINVAL)?),
            None => None,
        };
        let gid = match a.gid {
            Some(g) => Some(self.cfg.gids.to_stored(g).ok_or(Errno::EINVAL)?),
            None => None,
        };
        let (dfd, name) = if node.is_dir() {
            (self.upper_dir_fd(&node)?, None)
        } else {
            match (self.upper_loc(&node), self.pinned(&node)) {
                (Ok((pfd, name)), _) => (pfd, Some(name)),
                // Unlinked but still open (fchmod, futimens...): change
                // the object through its pinned descriptor.
                (Err(e), Some(pin)) if e.code() == libc::ENOENT => (pin, None),
                (Err(e), _) => return Err(e),
            }
        };
        let cname = name.as_ref().map(|n| n.as_cstr()).unwrap_or(c"");
        if self.override_attr().is_some() && (uid.is_some() || gid.is_some() || a.mode.is_some()) {
            // Ownership and mode live in the override xattr.
            self.store_override(&node, uid, gid, a.mode)?;
        } else if uid.is_some() || gid.is_some() {
            sys::fs::lchownat(
                dfd.as_fd(),
                cname,
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = a.mode.filter(|_| self.override_attr().is_none()) {
            sys::fs::chmodat(dfd.as_fd(), cname, mode & 0o7777)?;
        }
        if let Some(size) = a.size {
            let writable =
                handle.filter(|h| h.is_on_upper() && (h.flags & libc::O_ACCMODE) != libc::O_RDONLY);
            let f = match writable {
                Some(h) => h.fd(),
                None => {
                    let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                    std::sync::Arc::new(if cname.is_empty() {
                        sys::fs::reopen(dfd.as_fd(), flags)?
                    } else {
                        sys::fs::openat(dfd.as_fd(), cname, flags, 0)?
                    })
                }
            };
            // Growth by truncation makes a hole: nothing to reserve.
            self.quota_measure(
                &node,
                f.as_fd(),
                |_, _| 0,
                || sys::io::ftruncate(f.as_fd(), size),
            )?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::fs::utimensat(
                dfd.as_fd(),
                cname,
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        self.node_attr(&node)
    }
}
