//! Extended attributes addressed as (directory descriptor, name).
//!
//! `getxattrat` and friends (Linux 6.13+) act on one name relative to a
//! directory without following a final symlink. On older kernels the same is
//! done through `/proc/self/fd/DIR/NAME` with the `l*xattr` calls: the magic
//! link only stands for `DIR`, and `NAME` is still a single, unfollowed
//! component.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{Errno, SysResult, check, check_size};

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// 0 = unknown, 1 = the *xattrat calls work, 2 = use the /proc fallback.
static AT_CALLS: AtomicU8 = AtomicU8::new(0);

fn use_at_calls() -> bool {
    AT_CALLS.load(Ordering::Relaxed) != 2
}

fn note_enosys<T>(res: SysResult<T>) -> Option<SysResult<T>> {
    match res {
        Err(e) if e.code() == libc::ENOSYS => {
            AT_CALLS.store(2, Ordering::Relaxed);
            None
        }
        other => {
            AT_CALLS.store(1, Ordering::Relaxed);
            Some(other)
        }
    }
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).map_err(|_| Errno::EINVAL)
}

fn get_raw(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    if use_at_calls() {
        let args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: `args` points at `buf`, writable for `size` bytes.
        let ret = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = note_enosys(check_size(ret as libc::ssize_t)) {
            return r;
        }
    }
    let path = proc_path(dir, name)?;
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

fn grow_loop(mut call: impl FnMut(&mut [u8]) -> SysResult<usize>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.code() == libc::ERANGE && buf.len() < 256 * 1024 => {
                let len = buf.len() * 8;
                buf.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Value of `attr` on `name` in `dir`; ENODATA when it is absent.
pub fn get_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<Vec<u8>> {
    grow_loop(|buf| get_raw(dir, name, attr, buf))
}

/// The NUL-separated list of attribute names on `name` in `dir`.
pub fn list_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    grow_loop(|buf| {
        if use_at_calls() {
            // SAFETY: `buf` is writable for its length.
            let ret = unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if let Some(r) = note_enosys(check_size(ret as libc::ssize_t)) {
                return r;
            }
        }
        let path = proc_path(dir, name)?;
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

pub fn set_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    if use_at_calls() {
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: `args` points at `value`, readable for `size` bytes.
        let ret = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = note_enosys(check(ret as libc::c_int)) {
            return r.map(drop);
        }
    }
    let path = proc_path(dir, name)?;
    // SAFETY: `value` is readable for its length.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn remove_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<()> {
    if use_at_calls() {
        // SAFETY: plain syscall on a valid fd and strings.
        let ret = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
            )
        };
        if let Some(r) = note_enosys(check(ret as libc::c_int)) {
            return r.map(drop);
        }
    }
    let path = proc_path(dir, name)?;
    // SAFETY: plain syscall on valid strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), attr.as_ptr()) }).map(drop)
}

/// `fgetxattr` on an open (non-`O_PATH`) descriptor.
pub fn fget(fd: BorrowedFd<'_>, attr: &CStr) -> SysResult<Vec<u8>> {
    grow_loop(|buf| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    })
}

/// `flistxattr` on an open (non-`O_PATH`) descriptor.
pub fn flist(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    grow_loop(|buf| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

pub fn fset(fd: BorrowedFd<'_>, attr: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: `value` is readable for its length.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn fremove(fd: BorrowedFd<'_>, attr: &CStr) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd and string.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), attr.as_ptr()) }).map(drop)
}

/// Splits a NUL-separated name list.
pub fn split_list(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|n| !n.is_empty())
}
