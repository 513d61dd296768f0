//! File handles and filesystem identity (for `overlay.origin`).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{SysResult, check};

/// An exportable file handle, as `name_to_handle_at` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(dir, name, AT_EMPTY_PATH if name is empty)`; never
/// follows a final symlink. Needs no privilege.
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<FileHandle> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `raw` has room for MAX_HANDLE_SZ handle bytes, as announced in
    // `handle_bytes`; `mount_id` is a valid out-pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    check(ret as libc::c_int)?;
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    })
}

/// The 16-byte UUID of the filesystem holding `fd` (`FS_IOC_GETFSUUID`,
/// Linux 6.8+). Filesystems without one report all zeroes, as the kernel's
/// overlayfs does when it encodes such a handle.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: `out` is a valid out-pointer of the size the ioctl encodes.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut out as *mut FsUuid2) };
    if ret < 0 || out.len as usize != 16 {
        return [0; 16];
    }
    out.uuid
}
