//! Operations the differential test runs and their outcomes.

use super::*;

// ---------------------------------------------------------------------------
// Operations and their outcomes
// ---------------------------------------------------------------------------

/// Paths are relative to the mount point ("" is the root). Names are ASCII.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// open(O_CREAT|O_WRONLY[|O_EXCL][|O_TRUNC], mode)
    Create {
        path: String,
        excl: bool,
        trunc: bool,
        mode: u32,
    },
    /// open(O_WRONLY) + pwrite of `len` pattern bytes at `off`.
    Write {
        path: String,
        off: u64,
        len: usize,
        fill: u8,
    },
    /// open(O_WRONLY|O_APPEND) + write.
    Append {
        path: String,
        len: usize,
        fill: u8,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        flags: i32,
        nofollow: bool,
    },
    RemoveXattr {
        path: String,
        name: String,
        nofollow: bool,
    },
    /// listxattr + getxattr of every name (sorted).
    ListXattr {
        path: String,
        nofollow: bool,
    },
    /// Sorted names of a directory.
    Readdir {
        path: String,
    },
    Stat {
        path: String,
        follow: bool,
    },
    /// Whole content.
    Read {
        path: String,
    },
    Readlink {
        path: String,
    },
    /// utimensat(mtime, atime omitted), then stat and report the mtime.
    Utimens {
        path: String,
        sec: i64,
        nsec: i64,
        nofollow: bool,
    },
    /// mknod: 'p' FIFO, 'w' char 0/0 (looks like a whiteout), 'c' char
    /// 1/3, 's' socket.
    Mknod {
        path: String,
        kind: char,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    /// open() kept in fd slot `slot` (closing what was there before).
    Open {
        slot: usize,
        path: String,
        mode: OpenMode,
    },
    /// pread on a kept fd.
    FdRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    /// pwrite (or write, for O_APPEND fds) on a kept fd.
    FdWrite {
        slot: usize,
        off: u64,
        len: usize,
        fill: u8,
    },
    FdTruncate {
        slot: usize,
        size: u64,
    },
    FdStat {
        slot: usize,
    },
    /// rewind + getdents64 on a kept fd (sorted names with d_type).
    FdReaddir {
        slot: usize,
    },
    FdClose {
        slot: usize,
    },
    /// access(2) with a mask of F_OK/R_OK/W_OK/X_OK.
    Access {
        path: String,
        mask: i32,
    },
    /// Closes the kept fds and unmounts and remounts both filesystems, so
    /// later operations see only what is on disk.
    Remount,
    /// `op` with the thread's fsuid/fsgid set to `id` (an unprivileged
    /// caller: permission checks, no capabilities).
    AsUser {
        id: u32,
        op: Box<Op>,
    },
}

/// How [`Op::Open`] opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    Ro,
    Wo,
    Rw,
    RwTrunc,
    Append,
    CreateRw,
    Directory,
}

impl OpenMode {
    pub(crate) const ALL: [OpenMode; 7] = [
        OpenMode::Ro,
        OpenMode::Wo,
        OpenMode::Rw,
        OpenMode::RwTrunc,
        OpenMode::Append,
        OpenMode::CreateRw,
        OpenMode::Directory,
    ];

    pub(crate) fn flags(self) -> i32 {
        match self {
            OpenMode::Ro => libc::O_RDONLY,
            OpenMode::Wo => libc::O_WRONLY,
            OpenMode::Rw => libc::O_RDWR,
            OpenMode::RwTrunc => libc::O_RDWR | libc::O_TRUNC,
            OpenMode::Append => libc::O_WRONLY | libc::O_APPEND,
            OpenMode::CreateRw => libc::O_RDWR | libc::O_CREAT,
            OpenMode::Directory => libc::O_RDONLY | libc::O_DIRECTORY,
        }
    }
}

/// Number of fd slots for the fd operations.
pub(crate) const SLOTS: usize = 4;

/// Kinds of [`Op`], for weights and the per-variant filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Create,
    Write,
    Append,
    Truncate,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    RenameNoreplace,
    RenameExchange,
    Link,
    Symlink,
    Chmod,
    SetXattr,
    RemoveXattr,
    ListXattr,
    Readdir,
    Stat,
    Read,
    Readlink,
    Utimens,
    Mknod,
    Chown,
    Open,
    FdRead,
    FdWrite,
    FdTruncate,
    FdStat,
    FdReaddir,
    FdClose,
    Access,
    Remount,
}

/// Relative frequencies of the operation kinds.
pub(crate) const WEIGHTS: &[(OpKind, u32)] = &[
    (OpKind::Create, 8),
    (OpKind::Write, 7),
    (OpKind::Append, 4),
    (OpKind::Truncate, 5),
    (OpKind::Mkdir, 6),
    (OpKind::Rmdir, 5),
    (OpKind::Unlink, 7),
    (OpKind::Rename, 8),
    (OpKind::RenameNoreplace, 3),
    (OpKind::RenameExchange, 4),
    (OpKind::Link, 4),
    (OpKind::Symlink, 4),
    (OpKind::Chmod, 4),
    (OpKind::SetXattr, 5),
    (OpKind::RemoveXattr, 3),
    (OpKind::ListXattr, 3),
    (OpKind::Readdir, 6),
    (OpKind::Stat, 8),
    (OpKind::Read, 6),
    (OpKind::Readlink, 3),
    (OpKind::Utimens, 4),
    (OpKind::Mknod, 2),
    (OpKind::Chown, 2),
    (OpKind::Open, 5),
    (OpKind::FdRead, 4),
    (OpKind::FdWrite, 4),
    (OpKind::FdTruncate, 2),
    (OpKind::FdStat, 3),
    (OpKind::FdReaddir, 2),
    (OpKind::FdClose, 3),
    (OpKind::Access, 2),
    (OpKind::Remount, 1),
];

/// Share of path operations run as an unprivileged user ([`Op::AsUser`]).
pub(crate) const AS_USER_SHARE: f64 = 0.12;
/// The unprivileged user (and group) id.
pub(crate) const USER_ID: u32 = 1000;

/// What an operation observably did.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Err(i32),
    Done,
    Count(i64),
    Data(Vec<u8>),
    Names(Vec<String>),
    Stat(StatView),
    Xattrs(Vec<(String, Vec<u8>)>),
    Mtime(i64, i64),
}

/// The compared part of a stat: no inode numbers, no times, no directory
/// sizes, no directory link counts (merged directories report 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatView {
    pub(crate) kind: char,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: Option<u64>,
    pub(crate) nlink: Option<u64>,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Err(e) => write!(f, "Err({})", errno_name(*e)),
            Outcome::Done => write!(f, "Ok"),
            Outcome::Count(n) => write!(f, "Ok({n})"),
            Outcome::Data(d) => write!(f, "Data({})", short_bytes(d)),
            Outcome::Names(n) => write!(f, "Names({n:?})"),
            Outcome::Stat(s) => write!(f, "{s:?}"),
            Outcome::Xattrs(x) => {
                let v: Vec<String> = x
                    .iter()
                    .map(|(k, v)| format!("{k}={}", short_bytes(v)))
                    .collect();
                write!(f, "Xattrs({v:?})")
            }
            Outcome::Mtime(s, n) => write!(f, "Mtime({s}.{n:09})"),
        }
    }
}

pub(crate) fn short_bytes(d: &[u8]) -> String {
    if d.len() <= 24 {
        format!("{:?}", String::from_utf8_lossy(d))
    } else {
        format!("len={} fnv={:016x} head={:?}", d.len(), fnv(d), &d[..16])
    }
}

pub(crate) fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ENOSYS => "ENOSYS",
        _ => "",
    };
    format!("{n}({e})")
}

/// Deterministic content for writes and lower files.
pub(crate) fn pattern(fill: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8)
        .collect()
}
