//! Data calls on open descriptors.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{Errno, SysResult, check, check_size, retry};

/// Reads up to `len` bytes at `offset` from a regular file into a new
/// buffer, without zero-filling it first (reads of up to 1 MiB are on the
/// data path).
pub fn pread_vec(fd: BorrowedFd<'_>, len: usize, offset: u64) -> SysResult<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let n = retry(|| {
        // SAFETY: the destination is the vector's spare capacity, `len`
        // bytes long; nothing reads it before the kernel has written it.
        check_size(unsafe {
            libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, offset as i64)
        })
    })?;
    // SAFETY: pread64 initialised the first `n <= len` bytes.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at EOF.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = retry(|| {
            // SAFETY: the destination range lies inside `buf`.
            check_size(unsafe {
                libc::pread64(
                    fd.as_raw_fd(),
                    buf[done..].as_mut_ptr().cast(),
                    buf.len() - done,
                    (offset + done as u64) as i64,
                )
            })
        })?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Writes all of `buf` at `offset` (or at the end for `O_APPEND` descriptors).
pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = retry(|| {
            // SAFETY: the source range lies inside `buf`.
            check_size(unsafe {
                libc::pwrite64(
                    fd.as_raw_fd(),
                    buf[done..].as_ptr().cast(),
                    buf.len() - done,
                    (offset + done as u64) as i64,
                )
            })
        })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        done += n;
    }
    Ok(done)
}

/// Plain `read` (used for pipes at start-up).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `buf` is writable for its length.
        check_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

/// Plain `write` of the whole buffer (pipes at start-up).
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        let n = retry(|| {
            // SAFETY: `buf` is readable for its length.
            check_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
        })?;
        buf = &buf[n..];
    }
    Ok(())
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    retry(|| {
        // SAFETY: plain syscall on a valid fd.
        let ret = unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        };
        check(ret).map(drop)
    })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain syscall on a valid fd.
    retry(|| check(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) }).map(drop))
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    let offset = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain syscall on a valid fd.
    retry(|| check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop))
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain syscall on a valid fd.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(super::last_errno())
    } else {
        Ok(ret)
    }
}

/// `copy_file_range` between explicit offsets; returns bytes copied (0 at EOF).
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> SysResult<usize> {
    let mut oi = i64::try_from(off_in).map_err(|_| Errno::EFBIG)?;
    let mut oo = i64::try_from(off_out).map_err(|_| Errno::EFBIG)?;
    retry(|| {
        // SAFETY: offsets are valid out-pointers; fds are live.
        check_size(unsafe {
            libc::copy_file_range(
                fd_in.as_raw_fd(),
                &mut oi,
                fd_out.as_raw_fd(),
                &mut oo,
                len,
                0,
            )
        })
    })
}

/// `ioctl(dst, FICLONE, src)`: share all of `src`'s extents with `dst`.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its integer argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) }).map(drop)
}

/// `FS_IOC_GETFLAGS`: the inode flags (`chattr` letters) of an open file.
pub fn get_inode_flags(fd: BorrowedFd<'_>) -> SysResult<u32> {
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let mut flags: libc::c_int = 0;
    // SAFETY: the kernel writes one int through the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) })?;
    Ok(flags as u32)
}

/// `FS_IOC_SETFLAGS`.
pub fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> SysResult<()> {
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    let flags = flags as libc::c_int;
    // SAFETY: the kernel reads one int through the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS, &flags) }).map(drop)
}

/// Size of `struct fsxattr`.
pub const FSXATTR_SIZE: usize = 28;

/// `FS_IOC_FSGETXATTR`: the extended inode attributes, as raw bytes.
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> SysResult<[u8; FSXATTR_SIZE]> {
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    let mut buf = [0u8; FSXATTR_SIZE];
    // SAFETY: the kernel writes one struct fsxattr (28 bytes) into `buf`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) })?;
    Ok(buf)
}

/// `FS_IOC_FSSETXATTR`.
pub fn set_fsxattr(fd: BorrowedFd<'_>, attr: &[u8; FSXATTR_SIZE]) -> SysResult<()> {
    const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
    // SAFETY: the kernel reads one struct fsxattr (28 bytes) from `attr`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, attr.as_ptr()) }).map(drop)
}

/// `FS_IOC_MEASURE_VERITY`: the fs-verity digest of an open file, as
/// (hash algorithm, digest). ENODATA when the file has no fs-verity;
/// EOPNOTSUPP or ENOTTY where the filesystem or kernel lacks it.
pub fn measure_verity(fd: BorrowedFd<'_>) -> SysResult<(u16, Vec<u8>)> {
    // _IOWR('f', 134, struct fsverity_digest { u16 algo; u16 size; u8 digest[] })
    const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xc004_6686;
    const MAX_DIGEST: usize = 64;
    let mut buf = [0u8; 4 + MAX_DIGEST];
    buf[2..4].copy_from_slice(&(MAX_DIGEST as u16).to_ne_bytes());
    // SAFETY: `buf` holds the header and room for the `digest_size` bytes
    // announced in it, which bounds what the kernel writes.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_MEASURE_VERITY, buf.as_mut_ptr()) })?;
    let algo = u16::from_ne_bytes([buf[0], buf[1]]);
    let size = (u16::from_ne_bytes([buf[2], buf[3]]) as usize).min(MAX_DIGEST);
    Ok((algo, buf[4..4 + size].to_vec()))
}
