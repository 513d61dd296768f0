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
}
