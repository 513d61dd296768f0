//! Whiteout and opaque-directory formats.
//!
//! Read: kernel whiteouts (0/0 character devices), kernel xattr whiteouts
//! (zero-size files with `overlay.whiteout` inside a directory whose
//! `overlay.opaque` is `x`), `overlay.opaque=y`, and in lower layers the
//! OCI/AUFS names `.wh.NAME` and `.wh..wh..opq`.
//! Written: only the kernel format (0/0 character devices, `opaque=y`).

use std::os::fd::BorrowedFd;

use crate::ovl_xattr::{self, Prefix};
use crate::sys::fs::Stat;
use crate::sys::{self, SysResult};

/// OCI/AUFS whiteout prefix.
pub const OCI_PREFIX: &[u8] = b".wh.";
/// OCI/AUFS opaque marker file name.
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";

/// True for the kernel's whiteout: a character device with number 0/0.
pub fn is_char_whiteout(st: &Stat) -> bool {
    st.file_type() == libc::S_IFCHR && st.rdev == 0
}

/// What an OCI marker name means in a lower layer.
#[derive(Debug, PartialEq, Eq)]
pub enum OciName<'a> {
    /// Not a marker: an ordinary entry.
    Plain,
    /// `.wh.NAME`: hides NAME in the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// Other AUFS metadata (`.wh..wh.plnk`, ...): hidden, no effect.
    Meta,
}

pub fn oci_name(name: &[u8]) -> OciName<'_> {
    if name == OCI_OPAQUE {
        return OciName::Opaque;
    }
    match name.strip_prefix(OCI_PREFIX) {
        None => OciName::Plain,
        Some(rest) if rest.starts_with(OCI_PREFIX) => OciName::Meta,
        Some(b"") => OciName::Meta,
        Some(rest) => OciName::Whiteout(rest),
    }
}

/// The `.wh.NAME` marker for `name`, if it fits in NAME_MAX.
pub fn oci_whiteout_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + OCI_PREFIX.len() > crate::names::NAME_MAX {
        return None;
    }
    let mut v = OCI_PREFIX.to_vec();
    v.extend_from_slice(name);
    Some(v)
}

/// Meaning of an `overlay.opaque` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpaqueValue {
    #[default]
    None,
    /// `y`: hides everything below.
    Opaque,
    /// `x`: not opaque, but may hold xattr whiteouts.
    XattrWhiteouts,
}

pub fn parse_opaque(v: &[u8]) -> OpaqueValue {
    match v {
        b"y" => OpaqueValue::Opaque,
        b"x" => OpaqueValue::XattrWhiteouts,
        _ => OpaqueValue::None,
    }
}

/// Overlay markers found on one directory (from a single `listxattr`, and
/// value reads only for the names present).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirMarkers {
    pub opaque: OpaqueValue,
    pub impure: bool,
    pub origin: Option<Vec<u8>>,
    pub redirect: Option<Vec<u8>>,
}

/// Overlay markers of a non-directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileMarkers {
    pub origin: Option<Vec<u8>>,
    pub xattr_whiteout: bool,
    pub metacopy: bool,
    /// The `overlay.metacopy` value (empty, or version/len/flags/digest).
    pub metacopy_value: Vec<u8>,
    /// `overlay.redirect` of a metacopy file: where its data is.
    pub redirect: Option<Vec<u8>>,
    /// `overlay.nlink` of an indexed hard link (see `index`).
    pub nlink: Option<Vec<u8>>,
}

/// Reads the overlay markers of `name` in `dir`. `prefixes` lists which
/// prefixes count (upper: the mount's own; lowers: both).
fn read_markers(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    prefixes: &[Prefix],
    mut on: impl FnMut(&str, Vec<u8>),
) -> SysResult<()> {
    let list = match sys::xattr::list_at(dir, name) {
        Ok(l) => l,
        // Filesystems without xattrs have no markers.
        Err(e) if e.code() == libc::ENOTSUP || e.code() == libc::EPERM => return Ok(()),
        Err(e) => return Err(e),
    };
    if list.is_empty() {
        return Ok(());
    }
    for attr in sys::xattr::split_list(&list) {
        for p in prefixes {
            if let Some(suffix) = attr.strip_prefix(p.bytes()) {
                let Ok(suffix) = std::str::from_utf8(suffix) else {
                    continue;
                };
                if suffix.contains('.') {
                    continue;
                }
                let Ok(cattr) = std::ffi::CString::new(attr) else {
                    continue;
                };
                match sys::xattr::get_at(dir, name, &cattr) {
                    Ok(v) => on(suffix, v),
                    Err(e) if e.code() == libc::ENODATA => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

pub fn dir_markers(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    prefixes: &[Prefix],
) -> SysResult<DirMarkers> {
    let mut m = DirMarkers::default();
    read_markers(dir, name, prefixes, |suffix, v| match suffix {
        ovl_xattr::OPAQUE => {
            let o = parse_opaque(&v);
            // `y` from any prefix wins over `x`.
            if o == OpaqueValue::Opaque || m.opaque == OpaqueValue::None {
                m.opaque = o;
            }
        }
        ovl_xattr::IMPURE => m.impure = v == b"y",
        ovl_xattr::ORIGIN => m.origin = Some(v),
        ovl_xattr::REDIRECT => m.redirect = Some(v),
        _ => {}
    })?;
    Ok(m)
}

pub fn file_markers(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    prefixes: &[Prefix],
) -> SysResult<FileMarkers> {
    let mut m = FileMarkers::default();
    read_markers(dir, name, prefixes, |suffix, v| match suffix {
        ovl_xattr::ORIGIN => m.origin = Some(v),
        ovl_xattr::WHITEOUT => m.xattr_whiteout = true,
        ovl_xattr::METACOPY => {
            m.metacopy = true;
            m.metacopy_value = v;
        }
        ovl_xattr::REDIRECT => m.redirect = Some(v),
        ovl_xattr::NLINK => m.nlink = Some(v),
        _ => {}
    })?;
    Ok(m)
}

/// Creates a kernel whiteout (0/0 character device) at `name` in `dir`.
pub fn make_whiteout(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> SysResult<()> {
    sys::fs::mknodat(dir, name, libc::S_IFCHR, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(oci_name(b"file"), OciName::Plain);
        assert_eq!(oci_name(b".wh.file"), OciName::Whiteout(b"file"));
        assert_eq!(oci_name(b".wh..wh..opq"), OciName::Opaque);
        assert_eq!(oci_name(b".wh..wh.plnk"), OciName::Meta);
        assert_eq!(oci_name(b".wh."), OciName::Meta);
        assert_eq!(oci_name(b".whfile"), OciName::Plain);
        assert_eq!(oci_whiteout_name(b"a"), Some(b".wh.a".to_vec()));
        assert_eq!(oci_whiteout_name(&[b'a'; 252]), None);
    }

    #[test]
    fn opaque_values() {
        assert_eq!(parse_opaque(b"y"), OpaqueValue::Opaque);
        assert_eq!(parse_opaque(b"x"), OpaqueValue::XattrWhiteouts);
        assert_eq!(parse_opaque(b"n"), OpaqueValue::None);
        assert_eq!(parse_opaque(b""), OpaqueValue::None);
    }

    #[test]
    fn char_whiteout() {
        let mut st = Stat {
            dev: 1,
            ino: 2,
            mode: libc::S_IFCHR,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        };
        assert!(is_char_whiteout(&st));
        st.rdev = libc::makedev(1, 3);
        assert!(!is_char_whiteout(&st));
        st.rdev = 0;
        st.mode = libc::S_IFREG;
        assert!(!is_char_whiteout(&st));
    }
}
