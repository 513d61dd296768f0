//! Directory entry names: byte strings of 1 to 255 bytes without NUL or '/'.
//!
//! Every name that reaches a system call goes through [`Name`], which copies
//! it into a stack buffer with its terminating NUL, so no allocation and no
//! path joining is needed on a request path.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

use crate::sys::Errno;

/// Longest name a layer filesystem accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// A validated, NUL-terminated single path component.
pub struct Name {
    buf: [u8; NAME_MAX + 1],
    len: usize,
}

impl Name {
    /// Validates `name` as one component: not empty, not `.` or `..`, no
    /// `/` or NUL, at most 255 bytes.
    pub fn new(name: &[u8]) -> Result<Name, Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        if name.contains(&0) {
            return Err(Errno::EINVAL);
        }
        let mut buf = [0u8; NAME_MAX + 1];
        buf[..name.len()].copy_from_slice(name);
        Ok(Name {
            buf,
            len: name.len(),
        })
    }

    pub fn from_os(name: &OsStr) -> Result<Name, Errno> {
        Name::new(name.as_bytes())
    }

    pub fn as_cstr(&self) -> &CStr {
        // The buffer holds `len` non-NUL bytes followed by a NUL.
        CStr::from_bytes_with_nul(&self.buf[..=self.len]).unwrap_or(c"")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_os(&self) -> &OsStr {
        OsStr::from_bytes(self.as_bytes())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_os())
    }
}

/// Validates a name received from the kernel: ENAMETOOLONG past 255 bytes,
/// otherwise as [`Name::new`].
pub fn check(name: &OsStr) -> Result<Name, Errno> {
    Name::from_os(name)
}

/// Longest name stored inline in a [`NameBuf`].
const INLINE: usize = 15;

/// Length of an inline name. An enum rather than a `u8` so that its unused
/// values give [`NameBuf`] room for its tag: the type stays 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum InlineLen {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
}

const INLINE_LENS: [InlineLen; INLINE + 1] = [
    InlineLen::L0,
    InlineLen::L1,
    InlineLen::L2,
    InlineLen::L3,
    InlineLen::L4,
    InlineLen::L5,
    InlineLen::L6,
    InlineLen::L7,
    InlineLen::L8,
    InlineLen::L9,
    InlineLen::L10,
    InlineLen::L11,
    InlineLen::L12,
    InlineLen::L13,
    InlineLen::L14,
    InlineLen::L15,
];

/// A stored entry name, kept by every node and lower object (one per entry
/// the kernel caches, so its size counts): up to 15 bytes inline, longer
/// names in one shared heap copy that clones point to. 16 bytes either way.
#[derive(Clone)]
pub struct NameBuf(Repr);

#[derive(Clone)]
enum Repr {
    Inline(InlineLen, [u8; INLINE]),
    Heap(std::sync::Arc<Box<[u8]>>),
}

impl NameBuf {
    pub fn new(name: &[u8]) -> NameBuf {
        match INLINE_LENS.get(name.len()) {
            Some(&len) => {
                let mut buf = [0u8; INLINE];
                buf[..name.len()].copy_from_slice(name);
                NameBuf(Repr::Inline(len, buf))
            }
            None => NameBuf(Repr::Heap(std::sync::Arc::new(name.into()))),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, buf) => &buf[..*len as usize],
            Repr::Heap(b) => b,
        }
    }
}

impl Default for NameBuf {
    fn default() -> Self {
        NameBuf::new(b"")
    }
}

impl std::ops::Deref for NameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for NameBuf {
    fn from(name: &[u8]) -> NameBuf {
        NameBuf::new(name)
    }
}

impl PartialEq for NameBuf {
    fn eq(&self, other: &NameBuf) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for NameBuf {}

impl std::hash::Hash for NameBuf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl std::fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", OsStr::from_bytes(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_bytes_but_nul_and_slash() {
        let n = Name::new(b"\xff\xfe weird name").unwrap();
        assert_eq!(n.as_bytes(), b"\xff\xfe weird name");
        assert_eq!(n.as_cstr().to_bytes(), b"\xff\xfe weird name");
        assert!(Name::new(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(Name::new(&[b'a'; 256]).unwrap_err(), Errno::ENAMETOOLONG);
        assert_eq!(Name::new(b"").unwrap_err(), Errno::EINVAL);
        assert_eq!(Name::new(b".").unwrap_err(), Errno::EINVAL);
        assert_eq!(Name::new(b"..").unwrap_err(), Errno::EINVAL);
        assert_eq!(Name::new(b"a/b").unwrap_err(), Errno::EINVAL);
        assert_eq!(Name::new(b"a\0b").unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn stored_names_keep_their_bytes() {
        assert_eq!(std::mem::size_of::<NameBuf>(), 16);
        for len in [0, 1, 14, 15, 16, 40, 255] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let n = NameBuf::new(&bytes);
            assert_eq!(n.as_bytes(), bytes.as_slice());
            assert_eq!(n.clone(), n);
            assert_eq!(&*n, bytes.as_slice());
        }
        assert_ne!(NameBuf::new(b"abc"), NameBuf::new(b"abd"));
        assert_ne!(NameBuf::new(&[b'a'; 20]), NameBuf::new(&[b'a'; 21]));
    }
}
