//! Unix-socket details std does not offer: the peer's credentials
//! (`SO_PEERCRED`) and waking a thread blocked in `accept` (`shutdown`);
//! and the device of a mount found by path without asking its filesystem
//! (`statx` with `AT_STATX_DONT_SYNC` and an empty mask).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{SysResult, check};

/// Credentials of the process at the other end of a connected unix socket,
/// as of when it connected (translated into our user namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(sock: BorrowedFd<'_>) -> SysResult<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the size passed.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `shutdown(SHUT_RDWR)`: on a listening socket, wakes a blocked `accept`.
pub fn shutdown(sock: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: plain syscall on a live descriptor.
    check(unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
}

/// The device (major, minor) of the filesystem `path` leads to, following
/// symlinks and mounts. FUSE answers it from the superblock without a
/// request (`AT_STATX_DONT_SYNC`, nothing asked for): it works on a mount
/// whose daemon is busy or hung, and from the daemon itself before it
/// serves requests.
pub fn device_at(dir: BorrowedFd<'_>, path: &CStr) -> SysResult<(u32, u32)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid descriptor, C string and out-pointer.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            0,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    Ok((stx.stx_dev_major, stx.stx_dev_minor))
}
