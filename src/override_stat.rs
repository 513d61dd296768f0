//! `xattr_permissions=1|2`: ownership and mode kept in an xattr.
//!
//! Rootless setups without enough subordinate ids cannot chown files, so
//! containers-storage (its `force_mask` option) and fuse-overlayfs keep the
//! intended `uid:gid:mode[:type]` in `user.containers.override_stat`
//! (`xattr_permissions=2`) or `user.fuseoverlayfs.override_stat` (`=1`).
//! With the option, plyfs reports those values, writes them on chown and
//! chmod instead of changing the real file, and hides the attribute.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::fs::{Plyfs, Result};
use crate::node::Node;
use crate::sys::{self, Errno, fs::Stat};

pub const CONTAINERS: &str = "user.containers.override_stat";
pub const FUSE_OVERLAYFS: &str = "user.fuseoverlayfs.override_stat";

/// A parsed override value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub mode: u32,
    /// `S_IFMT` bits and device number when the value names a type.
    pub kind: Option<(u32, u64)>,
}

pub fn parse(v: &[u8]) -> Option<Override> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
    let mut parts = s.splitn(4, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let mode = u32::from_str_radix(parts.next()?, 8).ok()? & 0o7777;
    let kind = match parts.next() {
        None | Some("") => None,
        Some("file") => Some((libc::S_IFREG, 0)),
        Some("dir") => Some((libc::S_IFDIR, 0)),
        Some("symlink") => Some((libc::S_IFLNK, 0)),
        Some("pipe") => Some((libc::S_IFIFO, 0)),
        Some("socket") => Some((libc::S_IFSOCK, 0)),
        Some(t) => {
            let (ty, rest) = t.split_once('-')?;
            let (ma, mi) = rest.split_once('-')?;
            let dev = libc::makedev(ma.parse().ok()?, mi.parse().ok()?);
            match ty {
                "block" => Some((libc::S_IFBLK, dev)),
                "char" => Some((libc::S_IFCHR, dev)),
                _ => return None,
            }
        }
    };
    Some(Override {
        uid,
        gid,
        mode,
        kind,
    })
}

pub fn format(o: &Override) -> String {
    format!("{}:{}:0{:o}", o.uid, o.gid, o.mode & 0o7777)
}

impl Plyfs {
    /// The attribute name in use, if the option is on.
    pub fn override_attr(&self) -> Option<&'static str> {
        match self.cfg.xattr_permissions {
            1 => Some(FUSE_OVERLAYFS),
            2 => Some(CONTAINERS),
            _ => None,
        }
    }

    /// The (directory, name) through which the node's real object is
    /// reached, for xattr calls; `None` for layer roots.
    fn xattr_loc(
        &self,
        node: &Arc<Node>,
    ) -> Result<Option<(Arc<std::os::fd::OwnedFd>, crate::names::Name)>> {
        if node.ino == crate::ino::ROOT {
            return Ok(None);
        }
        if node.has_upper() {
            return self.upper_loc(node).map(Some);
        }
        let lower = node.top_lower()?;
        if lower.parent.is_none() {
            return Ok(None);
        }
        lower.locate().map(Some)
    }

    /// Applies a stored override to a stat of the node's real object.
    pub fn apply_override(&self, node: &Arc<Node>, st: &mut Stat) -> Result<()> {
        let Some(attr) = self.override_attr() else {
            return Ok(());
        };
        let Some((dir, name)) = self.xattr_loc(node)? else {
            return Ok(());
        };
        let cattr = std::ffi::CString::new(attr).map_err(|_| Errno::EINVAL)?;
        let v = match sys::xattr::get_at(dir.as_fd(), name.as_cstr(), &cattr) {
            Ok(v) => v,
            Err(e) if matches!(e.code(), libc::ENODATA | libc::ENOTSUP | libc::EPERM) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if let Some(o) = parse(&v) {
            st.uid = o.uid;
            st.gid = o.gid;
            let kind = o.kind.map(|k| k.0).unwrap_or(st.mode & libc::S_IFMT);
            st.mode = kind | o.mode;
            if let Some((_, dev)) = o.kind {
                st.rdev = dev;
            }
        }
        Ok(())
    }

    /// Records new ownership/mode in the override xattr of the node's upper
    /// object (which the caller made sure exists).
    pub fn store_override(
        &self,
        node: &Arc<Node>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<()> {
        let attr = self.override_attr().ok_or(Errno::EINVAL)?;
        let mut st = self.real_stat(node)?;
        self.apply_override(node, &mut st)?;
        let o = Override {
            uid: uid.unwrap_or(st.uid),
            gid: gid.unwrap_or(st.gid),
            mode: mode.unwrap_or(st.mode) & 0o7777,
            kind: None,
        };
        let cattr = std::ffi::CString::new(attr).map_err(|_| Errno::EINVAL)?;
        let value = format(&o);
        match self.xattr_loc(node)? {
            Some((dir, name)) => {
                sys::xattr::set_at(dir.as_fd(), name.as_cstr(), &cattr, value.as_bytes(), 0)
            }
            None => {
                let root = self.upper_layer()?.root.clone();
                let d = sys::fs::open_dir_here(root.as_fd())?;
                sys::xattr::fset(d.as_fd(), &cattr, value.as_bytes(), 0)
            }
        }
    }

    /// Whether an xattr name is the override attribute (hidden from users).
    pub fn is_override_attr(&self, name: &[u8]) -> bool {
        self.override_attr().is_some_and(|a| a.as_bytes() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!(
            parse(b"0:0:0755"),
            Some(Override {
                uid: 0,
                gid: 0,
                mode: 0o755,
                kind: None
            })
        );
        assert_eq!(
            parse(b"1000:100:0644:file").unwrap().kind,
            Some((libc::S_IFREG, 0))
        );
        let dev = parse(b"0:0:0600:char-1-3").unwrap();
        assert_eq!(dev.kind, Some((libc::S_IFCHR, libc::makedev(1, 3))));
        assert_eq!(parse(b"x:0:0755"), None);
        assert_eq!(parse(b"0:0"), None);
        assert_eq!(
            format(&Override {
                uid: 5,
                gid: 6,
                mode: 0o4755,
                kind: None
            }),
            "5:6:04755"
        );
    }
}
