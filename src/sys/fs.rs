//! Namespace and metadata calls, all relative to a directory descriptor.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{SysResult, check, check_size, retry};

/// `struct stat`, reduced to what a filesystem reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            blksize: st.st_blksize as u32,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }

    /// The `S_IFMT` bits.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }
}

/// `statfs` fields reported to the kernel.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A timestamp to set: a value, "now", or "leave unchanged".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    Set(i64, u32),
    Now,
    Omit,
}

impl TimeSpec {
    fn raw(self) -> libc::timespec {
        match self {
            TimeSpec::Set(s, ns) => libc::timespec {
                tv_sec: s,
                tv_nsec: ns as _,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel has just returned to us and
    // that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    retry(|| {
        // SAFETY: `name` is a valid NUL-terminated string and `dir` a live fd.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        check(fd).map(owned)
    })
}

/// Opens `name` under `dir` as an `O_PATH` handle without following a
/// symlink in the last component.
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the directory `name` under `dir` as an `O_PATH` handle; fails with
/// ENOTDIR or ELOOP when `name` is anything else, symlinks included.
pub fn open_dir_path(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
        0,
    )
}

/// Opens an absolute or cwd-relative path, following symlinks (start-up only:
/// the user names layer directories this way).
pub fn open_cwd(path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    openat(cwd(), path, flags, 0)
}

/// The current working directory as a borrowed descriptor.
pub fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel understood by every *at call and is
    // never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

fn fstatat_raw(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `struct stat`.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) };
    check(ret)?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(Stat::from_raw(&st))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Stat> {
    fstatat_raw(dir, name, libc::AT_SYMLINK_NOFOLLOW)
}

/// Stat of the object a descriptor (including `O_PATH`) refers to.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    fstatat_raw(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<StatFs> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid out-pointer for one `struct statfs`.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    let st = unsafe { st.assume_init() };
    Ok(StatFs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namelen as u32,
        frsize: st.f_frsize as u32,
    })
}

/// The filesystem magic number (`f_type`) of a descriptor.
pub fn fs_type(fd: BorrowedFd<'_>) -> SysResult<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid out-pointer for one `struct statfs`.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() }.f_type)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd and string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd and string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: plain syscall on valid strings and fd.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Reads the target of the symlink `name` in `dir` (or of an `O_PATH`
/// symlink descriptor when `name` is empty). The target is returned as bytes
/// and never followed.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let n = check_size(unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() >= libc::PATH_MAX as usize * 2 {
            return Err(super::Errno::ENAMETOOLONG);
        }
        let len = buf.len() * 2;
        buf.resize(len, 0);
    }
}

/// `unlinkat`; pass `dir = true` to remove a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> SysResult<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on a valid fd and string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: plain syscall on valid fds and strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows symlinks.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> SysResult<()> {
    // SAFETY: plain syscall on valid fds and strings.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an
/// id unchanged.
pub fn lchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: plain syscall on a valid fd and string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// Changes the mode of `name` in `dir` without following a symlink. Uses
/// `fchmodat2` (Linux 6.6+) and falls back to `fchmodat`, which is safe here
/// because callers never pass a symlink.
pub fn chmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: plain syscall on a valid fd and string.
    let ret = unsafe {
        libc::syscall(
            452, // fchmodat2
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::c_uint,
            flags,
        )
    };
    match check(ret as libc::c_int) {
        Err(e) if e.code() == libc::ENOSYS && !name.is_empty() => {
            // SAFETY: plain syscall on a valid fd and string.
            check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
        }
        other => other.map(drop),
    }
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`; an empty `name`
/// targets `dir` itself (which may be an `O_PATH` descriptor).
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> SysResult<()> {
    let times = [atime.raw(), mtime.raw()];
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `times` holds two timespecs as the call requires.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> SysResult<()> {
    let times = [atime.raw(), mtime.raw()];
    // SAFETY: `times` holds two timespecs as the call requires.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// Opens the object an `O_PATH` descriptor refers to, with `flags`, through
/// its `/proc/self/fd` entry (regular files and directories only).
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| super::Errno::EINVAL)?;
    openat(cwd(), &path, flags & !libc::O_NOFOLLOW, 0)
}

/// Links the object an `O_PATH` descriptor refers to as `newname` in
/// `newdir`, through its `/proc/self/fd` entry (ENOENT once it has no link
/// left, as for any unlinked inode).
pub fn link_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &CStr) -> SysResult<()> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| super::Errno::EINVAL)?;
    // SAFETY: plain syscall on valid fds and strings.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// Opens `dir` itself again as a readable directory (for listing it or
/// for `f*` calls that need a non-`O_PATH` descriptor).
pub fn open_dir_here(dir: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// `openat` with `O_NOATIME`, so that reading a layer does not update its
/// access times (as kernel overlayfs does); the flag needs ownership or
/// CAP_FOWNER, so without them the open goes ahead without it.
pub fn openat_noatime(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    match openat(dir, name, flags | libc::O_NOATIME, 0) {
        Err(e) if e.code() == libc::EPERM => openat(dir, name, flags, 0),
        other => other,
    }
}

/// Duplicates a descriptor (close-on-exec).
pub fn dup(fd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    fd.try_clone_to_owned().map_err(super::Errno::from)
}

/// Number of descriptors this process has open (counts /proc/self/fd).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: EWOULDBLOCK while another open file
/// description holds the lock.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: plain syscall on a live descriptor.
    retry(|| check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })).map(drop)
}

/// Immutable/append-only attributes (`statx` `stx_attributes`) of `name`
/// in `dir`, or of `dir` itself when `name` is empty: (immutable, append).
pub fn protection_attrs(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<(bool, bool)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: valid descriptor, C string and out-pointer.
    check(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, 0, stx.as_mut_ptr()) })?;
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    let known = stx.stx_attributes_mask;
    let attrs = stx.stx_attributes & known;
    Ok((
        attrs & libc::STATX_ATTR_IMMUTABLE as u64 != 0,
        attrs & libc::STATX_ATTR_APPEND as u64 != 0,
    ))
}
