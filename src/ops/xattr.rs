//! Extended attributes of merged objects. Overlay markers are hidden; names
//! in the overlay namespace are stored escaped (see `ovl_xattr`).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::{Plyfs, Result};
use crate::names::Name;
use crate::node::Node;
use crate::ops::fileattr::Change;
use crate::ovl_xattr::{self, Visible};
use crate::sys::{self, Errno};

/// Attributes the kernel reads on nearly every write, chown and permission
/// check: `security.capability` (to drop it on write) and the POSIX ACLs.
/// Their absence is remembered per node.
fn xattr_probe_bit(name: &[u8]) -> u8 {
    match name {
        b"security.capability" => 1,
        b"system.posix_acl_access" => 2,
        b"system.posix_acl_default" => 4,
        _ => 0,
    }
}

/// How to reach a real object for xattr calls: (parent directory, name), or
/// an open descriptor for layer roots, which have no parent.
#[allow(clippy::large_enum_variant)] // short-lived, on the stack
pub(crate) enum RealRef {
    At(Arc<OwnedFd>, Name),
    Open(OwnedFd),
}

impl RealRef {
    pub(crate) fn get(&self, attr: &CString) -> Result<Vec<u8>> {
        match self {
            RealRef::At(d, n) => sys::xattr::get_at(d.as_fd(), n.as_cstr(), attr),
            RealRef::Open(fd) => sys::xattr::fget(fd.as_fd(), attr),
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<u8>> {
        match self {
            RealRef::At(d, n) => sys::xattr::list_at(d.as_fd(), n.as_cstr()),
            RealRef::Open(fd) => sys::xattr::flist(fd.as_fd()),
        }
    }

    pub(crate) fn set(&self, attr: &CString, value: &[u8], flags: i32) -> Result<()> {
        match self {
            RealRef::At(d, n) => sys::xattr::set_at(d.as_fd(), n.as_cstr(), attr, value, flags),
            RealRef::Open(fd) => sys::xattr::fset(fd.as_fd(), attr, value, flags),
        }
    }

    /// (immutable, append-only) of the real object.
    pub(crate) fn protection_attrs(&self) -> Result<(bool, bool)> {
        match self {
            RealRef::At(d, n) => sys::fs::protection_attrs(d.as_fd(), n.as_cstr()),
            RealRef::Open(fd) => sys::fs::protection_attrs(fd.as_fd(), c""),
        }
    }

    pub(crate) fn remove(&self, attr: &CString) -> Result<()> {
        match self {
            RealRef::At(d, n) => sys::xattr::remove_at(d.as_fd(), n.as_cstr(), attr),
            RealRef::Open(fd) => sys::xattr::fremove(fd.as_fd(), attr),
        }
    }
}

fn open_dir(fd: &OwnedFd) -> Result<OwnedFd> {
    sys::fs::open_dir_here(fd.as_fd())
}

impl Plyfs {
    pub(crate) fn real_ref(&self, node: &Arc<Node>) -> Result<RealRef> {
        if node.has_upper() {
            if node.ino == crate::ino::ROOT {
                return Ok(RealRef::Open(open_dir(&self.upper_layer()?.root)?));
            }
            return match (self.upper_loc(node), self.pinned(node)) {
                (Ok((pfd, name)), _) => Ok(RealRef::At(pfd, name)),
                // Unlinked but still open: through the pinned descriptor.
                (Err(e), Some(pin)) if e.code() == libc::ENOENT && node.kind == libc::S_IFREG => {
                    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
                    Ok(RealRef::Open(sys::fs::reopen(pin.as_fd(), flags)?))
                }
                (Err(e), _) => Err(e),
            };
        }
        let lower = node.top_lower()?;
        if lower.parent.is_none() {
            return Ok(RealRef::Open(open_dir(lower.dir_fd()?.as_ref())?));
        }
        let (pfd, name) = lower.locate()?;
        Ok(RealRef::At(pfd, name))
    }

    fn check_acl(&self, name: &[u8]) -> Result<()> {
        if self.cfg.noacl && name.starts_with(b"system.posix_acl_") {
            return Err(Errno::EOPNOTSUPP);
        }
        if self.is_override_attr(name) {
            return Err(Errno::ENODATA);
        }
        Ok(())
    }

    pub fn do_getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.check_acl(name)?;
        let node = self.node(ino)?;
        let bit = xattr_probe_bit(name);
        if bit != 0 && node.xattr_absent.load(Ordering::Relaxed) & bit != 0 {
            return Err(Errno::ENODATA);
        }
        let attr = CString::new(ovl_xattr::to_stored(name)).map_err(|_| Errno::EINVAL)?;
        let res = self.real_ref(&node)?.get(&attr);
        if bit != 0 && matches!(&res, Err(e) if e.code() == libc::ENODATA) {
            node.xattr_absent.fetch_or(bit, Ordering::Relaxed);
        }
        res
    }

    /// The NUL-separated list of visible attribute names.
    pub fn do_listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let raw = self.real_ref(&node)?.list()?;
        let mut out = Vec::with_capacity(raw.len());
        for n in sys::xattr::split_list(&raw) {
            if (self.cfg.noacl && n.starts_with(b"system.posix_acl_")) || self.is_override_attr(n) {
                continue;
            }
            match ovl_xattr::classify(n) {
                Visible::Plain(n) => out.extend_from_slice(n),
                Visible::Unescaped(n) => out.extend_from_slice(&n),
                Visible::Hidden => continue,
            }
            out.push(0);
        }
        Ok(out)
    }

    pub fn do_setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.check_acl(name)?;
        let node = self.node(ino)?;
        self.upper_layer()?;
        self.check_change(&node, Change::Meta)?;
        self.copy_up(&node)?;
        node.xattr_absent.store(0, Ordering::Relaxed);
        let attr = CString::new(ovl_xattr::to_stored(name)).map_err(|_| Errno::EINVAL)?;
        self.real_ref(&node)?.set(&attr, value, flags)
    }

    pub fn do_removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        self.check_acl(name)?;
        let node = self.node(ino)?;
        self.upper_layer()?;
        self.check_change(&node, Change::Meta)?;
        let attr = CString::new(ovl_xattr::to_stored(name)).map_err(|_| Errno::EINVAL)?;
        if !node.has_upper() {
            // Like the kernel: no copy-up just to learn the name is absent.
            self.real_ref(&node)?.get(&attr)?;
        }
        self.copy_up(&node)?;
        node.xattr_absent.store(0, Ordering::Relaxed);
        self.real_ref(&node)?.remove(&attr)
    }
}
