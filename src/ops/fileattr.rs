//! Inode flags: `lsattr`/`chattr` (FS_IOC_GETFLAGS/SETFLAGS) and the
//! extended form (FS_IOC_FSGETXATTR/FSSETXATTR), as kernel overlayfs does
//! them.
//!
//! Reads come from the real object. A change copies the object up and sets
//! the flags on the upper one, except immutable and append-only: like the
//! kernel (5.15+), plyfs keeps those in `overlay.protattr` ("a", "i") so
//! that copy-ups below an immutable directory stay possible, and enforces
//! them itself (the FUSE kernel module knows nothing of them). A copy-up
//! carries the sync and noatime flags along, and turns real immutable or
//! append-only flags of a lower object into `overlay.protattr`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::{Plyfs, Result};
use crate::node::Node;
use crate::ovl_xattr::{self, Prefix};
use crate::sys::{self, Errno, io::FSXATTR_SIZE};

const FS_SYNC_FL: u32 = 0x08;
const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;
const FS_NOATIME_FL: u32 = 0x80;
const FS_XFLAG_IMMUTABLE: u32 = 0x08;
const FS_XFLAG_APPEND: u32 = 0x10;

/// Flags a copy-up keeps (the kernel's `OVL_COPY_FS_FLAGS_MASK`).
const COPIED_FLAGS: u32 = FS_SYNC_FL | FS_NOATIME_FL;

/// Protection bits cached in `Node::prot` (0: not read yet).
const KNOWN: u8 = 1;
const IMMUTABLE: u8 = 2;
const APPEND: u8 = 4;

/// A change about to be made, for the immutable/append-only checks.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// Opening for writing, or truncating.
    Write { append: bool, truncate: bool },
    /// chmod, chown, utimes, xattrs.
    Meta,
    /// Removing or renaming one of the object's names, or linking it.
    Name,
    /// Adding a name to this directory.
    DirAdd,
    /// Removing a name from this directory.
    DirRemove,
}

fn prot_of_flags(flags: u32) -> u8 {
    let mut p = KNOWN;
    if flags & FS_IMMUTABLE_FL != 0 {
        p |= IMMUTABLE;
    }
    if flags & FS_APPEND_FL != 0 {
        p |= APPEND;
    }
    p
}

fn flags_of_prot(p: u8) -> u32 {
    let mut f = 0;
    if p & IMMUTABLE != 0 {
        f |= FS_IMMUTABLE_FL;
    }
    if p & APPEND != 0 {
        f |= FS_APPEND_FL;
    }
    f
}

/// `overlay.protattr` value: "a" and/or "i" (the kernel's order).
fn protattr_value(p: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if p & APPEND != 0 {
        v.push(b'a');
    }
    if p & IMMUTABLE != 0 {
        v.push(b'i');
    }
    v
}

fn prot_of_protattr(v: &[u8]) -> u8 {
    let mut p = KNOWN;
    for c in v {
        match c {
            b'a' => p |= APPEND,
            b'i' => p |= IMMUTABLE,
            _ => {}
        }
    }
    p
}

/// A node for an object this mount just created: it has no protection
/// flags (they are not inherited), so there is nothing to read later.
pub fn created(node: &Node) {
    node.prot.store(KNOWN, Ordering::Relaxed);
}

impl Plyfs {
    /// The real object of `node` opened for the flag ioctls (regular files
    /// and directories, like the kernel's FUSE module asks for).
    fn attr_fd(&self, node: &Arc<Node>) -> Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW;
        match (node.kind, node.has_upper()) {
            (libc::S_IFDIR, true) => {
                let fd = self.upper_dir_fd(node)?;
                sys::fs::openat(fd.as_fd(), c".", flags | libc::O_DIRECTORY, 0)
            }
            (libc::S_IFDIR, false) => {
                let fd = node.top_lower()?.dir_fd()?;
                sys::fs::openat(fd.as_fd(), c".", flags | libc::O_DIRECTORY, 0)
            }
            (libc::S_IFREG, true) => self.open_upper(node, flags),
            (libc::S_IFREG, false) => {
                let (pfd, name) = node.top_lower()?.locate()?;
                crate::ops::file::open_noatime(pfd.as_fd(), &name, flags)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// Immutable/append-only bits of `node` (read once, then cached).
    fn protection(&self, node: &Arc<Node>) -> Result<u8> {
        let p = node.prot.load(Ordering::Relaxed);
        if p != 0 {
            return Ok(p);
        }
        let mut p = KNOWN;
        let real = self.real_ref(node)?;
        for prefix in Prefix::BOTH {
            if let Ok(v) = real.get(&prefix.name(ovl_xattr::PROTATTR)) {
                p |= prot_of_protattr(&v);
            }
        }
        // Real flags too (set on a layer directly, or by an older kernel).
        match real.protection_attrs() {
            Ok((immutable, append)) => {
                p |= if immutable { IMMUTABLE } else { 0 } | if append { APPEND } else { 0 }
            }
            Err(e) => log::debug!("no inode attributes for {node:?}: {e:?}"),
        }
        node.prot.store(p, Ordering::Relaxed);
        Ok(p)
    }

    /// EPERM when an immutable or append-only object (or directory) forbids
    /// `change`, as the VFS would for a kernel overlay mount.
    pub fn check_change(&self, node: &Arc<Node>, change: Change) -> Result<()> {
        let p = self.protection(node)?;
        if p & (IMMUTABLE | APPEND) == 0 {
            return Ok(());
        }
        let immutable = p & IMMUTABLE != 0;
        let refused = match change {
            Change::Write { append, truncate } => immutable || truncate || !append,
            Change::Meta | Change::Name | Change::DirRemove => true,
            Change::DirAdd => immutable,
        };
        if refused { Err(Errno::EPERM) } else { Ok(()) }
    }

    /// FS_IOC_GETFLAGS of a merged object.
    pub fn do_get_inode_flags(&self, ino: u64) -> Result<u32> {
        let node = self.node(ino)?;
        let fd = self.attr_fd(&node)?;
        let real = sys::io::get_inode_flags(fd.as_fd())?;
        Ok(real | flags_of_prot(self.protection(&node)?))
    }

    /// FS_IOC_SETFLAGS: copies up, keeps immutable/append-only in
    /// `overlay.protattr` and sets the rest on the upper object.
    pub fn do_set_inode_flags(&self, ino: u64, flags: u32) -> Result<()> {
        let node = self.node(ino)?;
        self.upper_layer()?;
        self.copy_up(&node)?;
        self.store_protection(&node, prot_of_flags(flags))?;
        let fd = self.attr_fd(&node)?;
        sys::io::set_inode_flags(fd.as_fd(), flags & !(FS_IMMUTABLE_FL | FS_APPEND_FL))?;
        self.kernel.attrs_changed(node.ino);
        Ok(())
    }

    /// FS_IOC_FSGETXATTR of a merged object.
    pub fn do_get_fsxattr(&self, ino: u64) -> Result<[u8; FSXATTR_SIZE]> {
        let node = self.node(ino)?;
        let fd = self.attr_fd(&node)?;
        let mut attr = sys::io::get_fsxattr(fd.as_fd())?;
        let p = self.protection(&node)?;
        let mut x = xflags(&attr);
        if p & IMMUTABLE != 0 {
            x |= FS_XFLAG_IMMUTABLE;
        }
        if p & APPEND != 0 {
            x |= FS_XFLAG_APPEND;
        }
        attr[..4].copy_from_slice(&x.to_ne_bytes());
        Ok(attr)
    }

    /// FS_IOC_FSSETXATTR, like [`Plyfs::do_set_inode_flags`].
    pub fn do_set_fsxattr(&self, ino: u64, mut attr: [u8; FSXATTR_SIZE]) -> Result<()> {
        let node = self.node(ino)?;
        self.upper_layer()?;
        self.copy_up(&node)?;
        let x = xflags(&attr);
        let mut p = KNOWN;
        if x & FS_XFLAG_IMMUTABLE != 0 {
            p |= IMMUTABLE;
        }
        if x & FS_XFLAG_APPEND != 0 {
            p |= APPEND;
        }
        self.store_protection(&node, p)?;
        let real = x & !(FS_XFLAG_IMMUTABLE | FS_XFLAG_APPEND);
        attr[..4].copy_from_slice(&real.to_ne_bytes());
        let fd = self.attr_fd(&node)?;
        sys::io::set_fsxattr(fd.as_fd(), &attr)?;
        self.kernel.attrs_changed(node.ino);
        Ok(())
    }

    /// Writes (or removes) `overlay.protattr` on the upper object.
    fn store_protection(&self, node: &Arc<Node>, p: u8) -> Result<()> {
        let real = self.real_ref(node)?;
        let attr = self.cfg.prefix.name(ovl_xattr::PROTATTR);
        let value = protattr_value(p);
        if value.is_empty() {
            match real.remove(&attr) {
                Err(e) if e.code() != libc::ENODATA => return Err(e),
                _ => {}
            }
        } else {
            real.set(&attr, &value, 0)?;
        }
        node.prot.store(p, Ordering::Relaxed);
        Ok(())
    }

    /// During copy-up: the flags the copy keeps, from the open lower object
    /// `lower` to the staged copy `upper`; immutable and append-only become
    /// `overlay.protattr` (set by the caller with the other markers).
    /// Returns that marker's value, if any.
    pub fn copy_inode_flags(
        &self,
        lower: BorrowedFd<'_>,
        upper: BorrowedFd<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let flags = match sys::io::get_inode_flags(lower) {
            Ok(f) => f,
            // Filesystems without inode flags have nothing to copy.
            Err(e) if matches!(e.code(), libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if flags & COPIED_FLAGS != 0 {
            let set = sys::io::get_inode_flags(upper).and_then(|now| {
                sys::io::set_inode_flags(upper, (now & !COPIED_FLAGS) | (flags & COPIED_FLAGS))
            });
            match set {
                // Like the kernel: an upper without inode flags loses them.
                Err(e) if matches!(e.code(), libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => {
                    log::debug!("inode flags not copied up: {e:?}");
                }
                other => other?,
            }
        }
        let v = protattr_value(prot_of_flags(flags));
        Ok((!v.is_empty()).then_some(v))
    }
}

fn xflags(attr: &[u8; FSXATTR_SIZE]) -> u32 {
    u32::from_ne_bytes([attr[0], attr[1], attr[2], attr[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protattr_round_trip() {
        for flags in [
            0,
            FS_IMMUTABLE_FL,
            FS_APPEND_FL,
            FS_IMMUTABLE_FL | FS_APPEND_FL,
        ] {
            let p = prot_of_flags(flags);
            assert_eq!(prot_of_protattr(&protattr_value(p)), p);
            assert_eq!(flags_of_prot(p), flags);
        }
        assert_eq!(protattr_value(IMMUTABLE | APPEND), b"ai");
    }
}
