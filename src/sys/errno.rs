//! plyfs's errno type: the error of a failing system call, carried unchanged
//! to the reply. Its own type (not the FUSE library's) so that only the FUSE
//! glue (`fuse.rs`) depends on the library's types.

use std::fmt;

/// A positive errno value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(pub const $name: Errno = Errno(libc::$name);)*
        }

        /// The symbolic name of a known errno value.
        fn name(code: i32) -> Option<&'static str> {
            match code {
                $(libc::$name => Some(stringify!($name)),)*
                _ => None,
            }
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    ERANGE,
    EDEADLK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOVERFLOW,
    EOPNOTSUPP,
    ESTALE,
    EDQUOT,
    ECANCELED,
    ENOTCONN,
    ETIMEDOUT,
    EUCLEAN,
    EBADMSG,
    EILSEQ,
    ENOKEY,
    EKEYREJECTED,
);

impl Errno {
    /// ENOTSUP and EOPNOTSUPP are the same value on Linux.
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);

    /// The errno for a raw value; EIO where the value is not a positive
    /// errno (a caller bug, never a success).
    pub fn from_i32(code: i32) -> Errno {
        if code > 0 { Errno(code) } else { Errno::EIO }
    }

    /// The raw errno value.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.0) {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.0)
    }
}

impl From<Errno> for i32 {
    fn from(e: Errno) -> i32 {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert_eq!(Errno::ENOENT.code(), libc::ENOENT);
        assert_eq!(format!("{:?}", Errno::EXDEV), "EXDEV");
        assert_eq!(Errno::from_i32(0), Errno::EIO);
        assert_eq!(Errno::from_i32(-5), Errno::EIO);
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Errno::from(io), Errno::ENOSPC);
    }
}
