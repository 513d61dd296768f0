//! Metadata of layer objects as tar headers, and back.
//!
//! Attributes travel in the user's view: overlay markers (`trusted.overlay.*`,
//! `user.overlay.*`) never enter an archive, and user attributes stored
//! escaped as `...overlay.overlay.X` enter it as `...overlay.X`; extraction
//! escapes them again (`ovl_xattr::to_stored`), so a layer written from a
//! rootful upper reads the same in a rootless one and the reverse.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;

use crate::idmap::IdMap;
use crate::layer::tar::{Header, Kind};
use crate::override_stat;
use crate::ovl_xattr::{self, Visible};
use crate::sys::{self, Errno, fs::Stat};

/// How owners stored in layer directories become owners in an archive:
/// id maps (`--uidmap`/`--gidmap`, `uidmapping=` semantics: stored `C+i`
/// is `H+i` in the archive), and the attribute that holds the real owner
/// and mode on setups that cannot chown (`xattr_permissions=1|2`).
#[derive(Clone, Debug, Default)]
pub struct Ids {
    pub uids: IdMap,
    pub gids: IdMap,
    /// `user.fuseoverlayfs.override_stat` or `user.containers.override_stat`.
    pub override_attr: Option<&'static str>,
}

impl Ids {
    /// The override attribute for `xattr_permissions=` level `n`.
    pub fn override_for(n: u8) -> Option<&'static str> {
        match n {
            1 => Some(override_stat::FUSE_OVERLAYFS),
            2 => Some(override_stat::CONTAINERS),
            _ => None,
        }
    }
}

/// Attribute (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The archive kind of a file type, None for sockets (tar has none).
pub fn kind_of(st: &Stat) -> Option<Kind> {
    Some(match st.file_type() {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFCHR => Kind::Char,
        libc::S_IFBLK => Kind::Block,
        libc::S_IFIFO => Kind::Fifo,
        _ => return None,
    })
}

/// User-visible attributes of `name` in `dir`, sorted, markers dropped and
/// escaped names unescaped.
pub fn visible_xattrs(dir: BorrowedFd<'_>, name: &CStr) -> Result<Xattrs, Errno> {
    let list = match sys::xattr::list_at(dir, name) {
        Ok(l) => l,
        Err(e) if e.code() == libc::ENOTSUP || e.code() == libc::EPERM => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for stored in sys::xattr::split_list(&list) {
        let shown = match ovl_xattr::classify(stored) {
            Visible::Hidden => continue,
            Visible::Plain(n) => n.to_vec(),
            Visible::Unescaped(n) => n,
        };
        let Ok(c) = CString::new(stored) else {
            continue;
        };
        match sys::xattr::get_at(dir, name, &c) {
            Ok(v) => out.push((shown, v)),
            // Removed since the listing.
            Err(e) if e.code() == libc::ENODATA => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// A header for the object `name` in `dir` whose `lstat` is `st`, at
/// archive path `path`: mode, owner (mapped), mtime, attributes, and the
/// symlink target or device number. Sockets give None.
pub fn header_for(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &Stat,
    path: Vec<u8>,
    ids: &Ids,
) -> Result<Option<Header>, Errno> {
    let mut xattrs = visible_xattrs(dir, name)?;
    let mut st = *st;
    if let Some(attr) = ids.override_attr
        && let Some(i) = xattrs.iter().position(|(n, _)| n == attr.as_bytes())
    {
        // The owner and mode the mount shows; the attribute itself is the
        // mount's bookkeeping, not the user's.
        let (_, v) = xattrs.remove(i);
        if let Some(o) = override_stat::parse(&v) {
            st.uid = o.uid;
            st.gid = o.gid;
            st.mode = (st.mode & libc::S_IFMT) | o.mode;
            // Devices and FIFOs kept as empty files where mknod was refused.
            if let Some((ft, dev)) = o.kind
                && st.is_reg()
                && matches!(ft, libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO)
            {
                st.mode = ft | o.mode;
                st.rdev = dev;
            }
        }
    }
    let Some(kind) = kind_of(&st) else {
        return Ok(None);
    };
    let mut h = Header::new(path, kind);
    h.mode = st.mode & 0o7777;
    h.uid = ids.uids.to_view(st.uid);
    h.gid = ids.gids.to_view(st.gid);
    h.mtime = st.mtime;
    h.xattrs = xattrs;
    match kind {
        Kind::File => h.size = st.size,
        Kind::Symlink => h.link = sys::fs::readlinkat(dir, name)?,
        Kind::Char | Kind::Block => h.dev = (libc::major(st.rdev), libc::minor(st.rdev)),
        _ => {}
    }
    Ok(Some(h))
}

/// The attribute name to store on disk for an archive attribute: escaped
/// when it would read as an overlay marker.
pub fn stored_xattr_name(name: &[u8]) -> Vec<u8> {
    ovl_xattr::to_stored(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let mut st = Stat {
            dev: 0,
            ino: 0,
            mode: libc::S_IFSOCK | 0o755,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        };
        assert_eq!(kind_of(&st), None);
        st.mode = libc::S_IFBLK;
        assert_eq!(kind_of(&st), Some(Kind::Block));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            stored_xattr_name(b"trusted.overlay.opaque"),
            b"trusted.overlay.overlay.opaque"
        );
        assert_eq!(stored_xattr_name(b"user.x"), b"user.x");
    }
}
