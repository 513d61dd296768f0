//! Private clones of layer mounts (`open_tree`, `mount_setattr`) and mount
//! identities (`statx`).
//!
//! Like kernel overlayfs, plyfs reaches each layer through a private,
//! non-recursive clone of the mount it lives on: mounts below a layer root
//! (including plyfs's own mountpoint, when it lies inside a layer) do not
//! exist in the clone, so a lookup can never cross into another
//! filesystem, or re-enter this very FUSE mount and deadlock on it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{SysResult, check, retry};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;

/// A detached, non-recursive clone of the mount `dir` lives on, rooted at
/// `dir`. Needs CAP_SYS_ADMIN over the mount namespace (root, or root in a
/// user namespace that owns it): EPERM otherwise.
pub fn clone_tree(dir: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    retry(|| {
        // SAFETY: `dir` is a live descriptor and the path an empty C string.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) };
        // SAFETY: on success open_tree returned a new descriptor we own.
        check(fd as libc::c_int).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the detached mount `root` read-only and noatime: plyfs never
/// writes a lower layer, and now could not even by mistake.
pub fn make_readonly_noatime(root: BorrowedFd<'_>) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` lives for the call and its size is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            root.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r as libc::c_int).map(drop)
}

/// The id of the mount a descriptor is on (`statx` `STATX_MNT_ID`).
pub fn mount_id(fd: BorrowedFd<'_>) -> SysResult<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid descriptor, empty C string and out-pointer.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(super::Errno::ENOTSUP);
    }
    Ok(stx.stx_mnt_id)
}
