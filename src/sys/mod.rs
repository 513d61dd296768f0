//! Thin, typed wrappers over the system calls plyfs uses.
//!
//! This module is the only place with `unsafe`. Every wrapper takes borrowed
//! file descriptors and `&CStr` names, returns owned descriptors or plain
//! values, and reports failures as the errno of the failing call, unchanged.

pub mod dirent;
mod errno;
pub mod fs;
pub mod handle;
pub mod io;
pub mod mount;
pub mod process;
pub mod socket;
pub mod xattr;

pub use errno::Errno;

/// Result of a system call wrapper: the value or the call's errno.
pub type SysResult<T> = std::result::Result<T, Errno>;

/// The errno left by the last failing libc call on this thread.
pub(crate) fn last_errno() -> Errno {
    Errno::from_i32(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Turns a `-1`-on-error return value into a `SysResult`.
pub(crate) fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// Same as [`check`] for calls returning `ssize_t`.
pub(crate) fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret as usize)
    }
}

/// Retries a call while it fails with EINTR.
pub(crate) fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(e) if e.code() == libc::EINTR => continue,
            other => return other,
        }
    }
}
