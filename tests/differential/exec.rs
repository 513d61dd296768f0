//! Runs one operation below a root directory.

use super::*;

// ---------------------------------------------------------------------------
// Executor: runs one operation below a root directory
// ---------------------------------------------------------------------------

pub(crate) fn abs(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

pub(crate) fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(abs(root, rel).as_os_str().as_bytes()).expect("path")
}

pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Done` when `r == 0`, else the errno.
pub(crate) fn check(r: libc::c_int) -> Outcome {
    if r == 0 {
        Outcome::Done
    } else {
        Outcome::Err(last_errno())
    }
}

/// Opens with O_NONBLOCK so that opening a FIFO never blocks (write-opens
/// fail with ENXIO without a reader on both filesystems).
pub(crate) fn open(p: &CString, flags: i32, mode: u32) -> Result<i32, i32> {
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 { Err(last_errno()) } else { Ok(fd) }
}

/// Closes `fd`; a failing close (e.g. a FUSE flush error) is an outcome too.
pub(crate) fn close(fd: i32, o: Outcome) -> Outcome {
    // SAFETY: fd was opened by us and is closed once.
    let r = unsafe { libc::close(fd) };
    if r != 0 && !matches!(o, Outcome::Err(_)) {
        Outcome::Err(last_errno())
    } else {
        o
    }
}

pub(crate) fn write_at(fd: i32, data: &[u8], off: Option<u64>) -> Outcome {
    let mut done = 0usize;
    while done < data.len() || data.is_empty() {
        let rest = &data[done..];
        // SAFETY: buffer valid for its length.
        let n = unsafe {
            match off {
                Some(o) => libc::pwrite(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    (o + done as u64) as i64,
                ),
                None => libc::write(fd, rest.as_ptr().cast(), rest.len()),
            }
        };
        if n < 0 {
            return Outcome::Err(last_errno());
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Outcome::Count(done as i64)
}

pub(crate) fn stat_raw(p: &CString, follow: bool) -> Result<libc::stat, i32> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and out-pointer.
    let r = unsafe {
        if follow {
            libc::stat(p.as_ptr(), st.as_mut_ptr())
        } else {
            libc::lstat(p.as_ptr(), st.as_mut_ptr())
        }
    };
    if r != 0 {
        return Err(last_errno());
    }
    // SAFETY: stat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub(crate) fn kind_of_mode(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

pub(crate) fn stat_view(st: &libc::stat) -> StatView {
    let kind = kind_of_mode(st.st_mode);
    StatView {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: matches!(kind, 'f' | 'l').then_some(st.st_size as u64),
        nlink: (kind != 'd').then_some(st.st_nlink),
    }
}

pub(crate) fn list_xattrs(p: &CString, nofollow: bool) -> Outcome {
    let mut buf = vec![0u8; 65536];
    // SAFETY: buffer valid for its length.
    let n = unsafe {
        if nofollow {
            libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if n < 0 {
        return Outcome::Err(last_errno());
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).expect("name");
        let mut val = vec![0u8; 65536];
        // SAFETY: buffers valid for their lengths.
        let m = unsafe {
            if nofollow {
                libc::lgetxattr(
                    p.as_ptr(),
                    cname.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            } else {
                libc::getxattr(
                    p.as_ptr(),
                    cname.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            }
        };
        if m < 0 {
            // A listed name that cannot be read is a difference worth seeing.
            val = format!("<{}>", errno_name(last_errno())).into_bytes();
        } else {
            val.truncate(m as usize);
        }
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    out.sort();
    Outcome::Xattrs(out)
}

/// One filesystem under test: its mount point and the fds kept open by
/// [`Op::Open`].
pub(crate) struct FsState {
    pub(crate) root: PathBuf,
    pub(crate) fds: [Option<i32>; SLOTS],
}

impl FsState {
    pub(crate) fn new(root: &Path) -> FsState {
        FsState {
            root: root.to_path_buf(),
            fds: [None; SLOTS],
        }
    }

    pub(crate) fn close_slot(&mut self, slot: usize) -> Outcome {
        match self.fds[slot].take() {
            // SAFETY: an fd we opened, closed once.
            Some(fd) => check(unsafe { libc::close(fd) }),
            None => Outcome::Err(libc::EBADF),
        }
    }

    pub(crate) fn close_all(&mut self) {
        for i in 0..SLOTS {
            self.close_slot(i);
        }
    }
}

impl Drop for FsState {
    fn drop(&mut self) {
        // Open fds would keep the mounts busy.
        self.close_all();
    }
}

pub(crate) fn exec(fs: &mut FsState, op: &Op) -> Outcome {
    let fd = |fs: &FsState, slot: usize| fs.fds[slot].ok_or(libc::EBADF);
    match op {
        Op::Open { slot, path, mode } => {
            fs.close_slot(*slot);
            match open(&cpath(&fs.root, path), mode.flags(), 0o644) {
                Ok(fd) => {
                    fs.fds[*slot] = Some(fd);
                    Outcome::Done
                }
                Err(e) => Outcome::Err(e),
            }
        }
        Op::FdRead { slot, off, len } => match fd(fs, *slot) {
            Err(e) => Outcome::Err(e),
            Ok(fd) => {
                let mut buf = vec![0u8; *len];
                // SAFETY: buffer valid for its length.
                let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), *off as i64) };
                if n < 0 {
                    Outcome::Err(last_errno())
                } else {
                    buf.truncate(n as usize);
                    Outcome::Data(buf)
                }
            }
        },
        Op::FdWrite {
            slot,
            off,
            len,
            fill,
        } => match fd(fs, *slot) {
            Err(e) => Outcome::Err(e),
            Ok(fd) => {
                // SAFETY: fcntl on our fd.
                let append = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_APPEND != 0;
                write_at(fd, &pattern(*fill, *len), (!append).then_some(*off))
            }
        },
        Op::FdTruncate { slot, size } => match fd(fs, *slot) {
            Err(e) => Outcome::Err(e),
            // SAFETY: ftruncate on our fd.
            Ok(fd) => check(unsafe { libc::ftruncate(fd, *size as i64) }),
        },
        Op::FdStat { slot } => match fd(fs, *slot) {
            Err(e) => Outcome::Err(e),
            Ok(fd) => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: fstat into a valid out-pointer.
                if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
                    Outcome::Err(last_errno())
                } else {
                    // SAFETY: fstat succeeded.
                    Outcome::Stat(stat_view(&unsafe { st.assume_init() }))
                }
            }
        },
        Op::FdReaddir { slot } => match fd(fs, *slot) {
            Err(e) => Outcome::Err(e),
            Ok(fd) => getdents(fd),
        },
        Op::FdClose { slot } => fs.close_slot(*slot),
        Op::AsUser { id, op } => {
            // Per-thread (the raw syscalls, not glibc's process-wide
            // setuid); a non-zero fsuid also drops the file capabilities.
            // SAFETY: plain syscalls.
            unsafe {
                libc::setfsgid(*id);
                libc::setfsuid(*id);
            }
            let o = exec(fs, op);
            // SAFETY: as above; back to root (capabilities come back).
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
            o
        }
        _ => exec_path(&fs.root, op),
    }
}

/// Rewinds a directory fd and lists it with getdents64: sorted `name:type`
/// (type from d_type), without `.` and `..`.
pub(crate) fn getdents(fd: i32) -> Outcome {
    // SAFETY: lseek on our fd.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
        return Outcome::Err(last_errno());
    }
    let mut names = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: getdents64 into a buffer valid for its length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Outcome::Err(last_errno());
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let rec = &buf[off..n as usize];
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            let dtype = rec[18];
            let name = &rec[19..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                let t = match dtype {
                    libc::DT_DIR => 'd',
                    libc::DT_REG => 'f',
                    libc::DT_LNK => 'l',
                    libc::DT_FIFO => 'p',
                    libc::DT_CHR => 'c',
                    libc::DT_BLK => 'b',
                    libc::DT_SOCK => 's',
                    _ => '?',
                };
                names.push(format!("{}:{t}", String::from_utf8_lossy(name)));
            }
            off += reclen.max(1);
        }
    }
    names.sort();
    Outcome::Names(names)
}

pub(crate) fn exec_path(root: &Path, op: &Op) -> Outcome {
    match op {
        Op::Open { .. }
        | Op::FdRead { .. }
        | Op::FdWrite { .. }
        | Op::FdTruncate { .. }
        | Op::FdStat { .. }
        | Op::FdReaddir { .. }
        | Op::FdClose { .. }
        | Op::AsUser { .. } => unreachable!("fd ops run in exec"),
        Op::Remount => unreachable!("Pair::step remounts"),
        Op::Access { path, mask } => {
            // SAFETY: valid C string.
            check(unsafe { libc::access(cpath(root, path).as_ptr(), *mask) })
        }
        Op::Mknod { path, kind } => {
            let (mode, dev) = match kind {
                'p' => (libc::S_IFIFO | 0o644, 0),
                'w' => (libc::S_IFCHR | 0o644, 0),
                'c' => (libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
                _ => (libc::S_IFSOCK | 0o755, 0),
            };
            // SAFETY: valid C string.
            check(unsafe { libc::mknod(cpath(root, path).as_ptr(), mode, dev) })
        }
        Op::Chown {
            path,
            uid,
            gid,
            nofollow,
        } => {
            let p = cpath(root, path);
            // SAFETY: valid C string.
            check(unsafe {
                if *nofollow {
                    libc::lchown(p.as_ptr(), *uid, *gid)
                } else {
                    libc::chown(p.as_ptr(), *uid, *gid)
                }
            })
        }
        Op::Create {
            path,
            excl,
            trunc,
            mode,
        } => {
            let mut flags = libc::O_CREAT | libc::O_WRONLY;
            if *excl {
                flags |= libc::O_EXCL;
            }
            if *trunc {
                flags |= libc::O_TRUNC;
            }
            match open(&cpath(root, path), flags, *mode) {
                Ok(fd) => close(fd, Outcome::Done),
                Err(e) => Outcome::Err(e),
            }
        }
        Op::Write {
            path,
            off,
            len,
            fill,
        } => match open(&cpath(root, path), libc::O_WRONLY, 0) {
            Ok(fd) => close(fd, write_at(fd, &pattern(*fill, *len), Some(*off))),
            Err(e) => Outcome::Err(e),
        },
        Op::Append { path, len, fill } => {
            match open(&cpath(root, path), libc::O_WRONLY | libc::O_APPEND, 0) {
                Ok(fd) => close(fd, write_at(fd, &pattern(*fill, *len), None)),
                Err(e) => Outcome::Err(e),
            }
        }
        Op::Truncate { path, size } => {
            // SAFETY: valid C string.
            check(unsafe { libc::truncate(cpath(root, path).as_ptr(), *size as i64) })
        }
        Op::Mkdir { path, mode } => {
            // SAFETY: valid C string.
            check(unsafe { libc::mkdir(cpath(root, path).as_ptr(), *mode) })
        }
        Op::Rmdir { path } => {
            // SAFETY: valid C string.
            check(unsafe { libc::rmdir(cpath(root, path).as_ptr()) })
        }
        Op::Unlink { path } => {
            // SAFETY: valid C string.
            check(unsafe { libc::unlink(cpath(root, path).as_ptr()) })
        }
        Op::Rename { from, to, flags } => {
            let (a, b) = (cpath(root, from), cpath(root, to));
            // SAFETY: valid C strings.
            check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    *flags,
                )
            })
        }
        Op::Link { from, to } => {
            let (a, b) = (cpath(root, from), cpath(root, to));
            // SAFETY: valid C strings.
            check(unsafe { libc::link(a.as_ptr(), b.as_ptr()) })
        }
        Op::Symlink { target, path } => {
            let t = CString::new(target.as_str()).expect("target");
            // SAFETY: valid C strings.
            check(unsafe { libc::symlink(t.as_ptr(), cpath(root, path).as_ptr()) })
        }
        Op::Chmod { path, mode } => {
            // SAFETY: valid C string.
            check(unsafe { libc::chmod(cpath(root, path).as_ptr(), *mode) })
        }
        Op::SetXattr {
            path,
            name,
            value,
            flags,
            nofollow,
        } => {
            let (p, n) = (
                cpath(root, path),
                CString::new(name.as_str()).expect("name"),
            );
            // SAFETY: valid C strings and buffer.
            check(unsafe {
                if *nofollow {
                    libc::lsetxattr(
                        p.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        *flags,
                    )
                } else {
                    libc::setxattr(
                        p.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        *flags,
                    )
                }
            })
        }
        Op::RemoveXattr {
            path,
            name,
            nofollow,
        } => {
            let (p, n) = (
                cpath(root, path),
                CString::new(name.as_str()).expect("name"),
            );
            // SAFETY: valid C strings.
            check(unsafe {
                if *nofollow {
                    libc::lremovexattr(p.as_ptr(), n.as_ptr())
                } else {
                    libc::removexattr(p.as_ptr(), n.as_ptr())
                }
            })
        }
        Op::ListXattr { path, nofollow } => list_xattrs(&cpath(root, path), *nofollow),
        Op::Readdir { path } => match std::fs::read_dir(abs(root, path)) {
            Err(e) => Outcome::Err(errno(&e)),
            Ok(rd) => {
                let mut names = Vec::new();
                for e in rd {
                    match e {
                        Ok(e) => {
                            // The d_type as reported (file_type() only
                            // falls back to lstat without one).
                            let t = e.file_type().map(kind_char).unwrap_or('?');
                            names.push(format!("{}:{t}", e.file_name().to_string_lossy()))
                        }
                        Err(e) => return Outcome::Err(errno(&e)),
                    }
                }
                names.sort();
                Outcome::Names(names)
            }
        },
        Op::Stat { path, follow } => match stat_raw(&cpath(root, path), *follow) {
            Ok(st) => Outcome::Stat(stat_view(&st)),
            Err(e) => Outcome::Err(e),
        },
        Op::Read { path } => match open(&cpath(root, path), libc::O_RDONLY, 0) {
            Err(e) => Outcome::Err(e),
            Ok(fd) => {
                let mut data = Vec::new();
                let mut buf = vec![0u8; 65536];
                let o = loop {
                    // SAFETY: buffer valid for its length.
                    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        break Outcome::Err(last_errno());
                    }
                    if n == 0 {
                        break Outcome::Data(std::mem::take(&mut data));
                    }
                    data.extend_from_slice(&buf[..n as usize]);
                };
                close(fd, o)
            }
        },
        Op::Readlink { path } => match std::fs::read_link(abs(root, path)) {
            Ok(t) => Outcome::Data(t.as_os_str().as_bytes().to_vec()),
            Err(e) => Outcome::Err(errno(&e)),
        },
        Op::Utimens {
            path,
            sec,
            nsec,
            nofollow,
        } => {
            let p = cpath(root, path);
            let times = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: *sec,
                    tv_nsec: *nsec,
                },
            ];
            let flags = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            // SAFETY: valid C string and times array.
            let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), flags) };
            if r != 0 {
                return Outcome::Err(last_errno());
            }
            match stat_raw(&p, !*nofollow) {
                Ok(st) => Outcome::Mtime(st.st_mtime, st.st_mtime_nsec),
                Err(e) => Outcome::Err(e),
            }
        }
    }
}
