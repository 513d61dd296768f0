//! Trees too deep for paths: every call is relative to a directory
//! descriptor, one name at a time, as plyfs itself works (PATH_MAX is only
//! 4096 bytes; these trees go tens of thousands of levels deep).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

fn c(name: &str) -> CString {
    CString::new(name).expect("name")
}

fn check(r: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// An open directory (O_RDONLY, so it can also be listed).
pub struct Dir(pub OwnedFd);

impl Dir {
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let p = c(path.to_str().expect("utf-8 path"));
        // SAFETY: valid C string; the returned descriptor is owned below.
        let fd = check(
            unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            },
            "open",
        )?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn sub(&self, name: &str) -> std::io::Result<Dir> {
        let n = c(name);
        // SAFETY: valid descriptor and C string.
        let fd = check(
            unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    n.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            },
            "openat",
        )?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn mkdir(&self, name: &str) -> std::io::Result<()> {
        let n = c(name);
        // SAFETY: valid descriptor and C string.
        check(
            unsafe { libc::mkdirat(self.0.as_raw_fd(), n.as_ptr(), 0o755) },
            "mkdirat",
        )
        .map(|_| ())
    }

    /// Creates (or opens) `name` with `flags` and writes `data` to it.
    pub fn write(&self, name: &str, flags: i32, data: &[u8]) -> std::io::Result<()> {
        let n = c(name);
        // SAFETY: valid descriptor and C string.
        let fd = check(
            unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    n.as_ptr(),
                    flags | libc::O_CLOEXEC,
                    0o644,
                )
            },
            "openat file",
        )?;
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut file = std::fs::File::from(f);
        std::io::Write::write_all(&mut file, data)
    }

    pub fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let n = c(name);
        // SAFETY: valid descriptor and C string.
        let fd = check(
            unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    n.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            },
            "openat read",
        )?;
        // SAFETY: a fresh descriptor nobody else owns.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut v)?;
        Ok(v)
    }

    pub fn link(&self, from: &str, to: &str) -> std::io::Result<()> {
        let (a, b) = (c(from), c(to));
        // SAFETY: valid descriptors and C strings.
        check(
            unsafe {
                libc::linkat(
                    self.0.as_raw_fd(),
                    a.as_ptr(),
                    self.0.as_raw_fd(),
                    b.as_ptr(),
                    0,
                )
            },
            "linkat",
        )
        .map(|_| ())
    }

    pub fn chmod(&self, name: &str, mode: u32) -> std::io::Result<()> {
        let n = c(name);
        // SAFETY: valid descriptor and C string.
        check(
            unsafe { libc::fchmodat(self.0.as_raw_fd(), n.as_ptr(), mode, 0) },
            "fchmodat",
        )
        .map(|_| ())
    }

    /// st_mode and st_nlink of `name` (not following symlinks).
    pub fn stat(&self, name: &str) -> std::io::Result<libc::stat> {
        let n = c(name);
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid descriptor, C string and out-pointer.
        check(
            unsafe {
                libc::fstatat(
                    self.0.as_raw_fd(),
                    n.as_ptr(),
                    st.as_mut_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "fstatat",
        )?;
        // SAFETY: fstatat succeeded.
        Ok(unsafe { st.assume_init() })
    }

    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let p = format!("/proc/self/fd/{}", self.0.as_raw_fd());
        let mut v: Vec<String> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }
}

/// Builds `depth` nested directories named `name` under `root`; returns
/// the deepest one.
pub fn chain(root: &Path, name: &str, depth: usize) -> std::io::Result<Dir> {
    let mut d = Dir::open(root)?;
    for _ in 0..depth {
        d.mkdir(name)?;
        d = d.sub(name)?;
    }
    Ok(d)
}

/// Descends `depth` levels of `name` from `root` (e.g. through a mount).
pub fn descend(root: &Path, name: &str, depth: usize) -> std::io::Result<Dir> {
    let mut d = Dir::open(root)?;
    for i in 0..depth {
        d = d
            .sub(name)
            .map_err(|e| std::io::Error::new(e.kind(), format!("level {i}: {e}")))?;
    }
    Ok(d)
}

/// Counts every entry below `root` without recursion (explicit stack of
/// open directories), for trees of any depth.
pub fn count_entries(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let mut stack = vec![Dir::open(root)?];
    while let Some(d) = stack.pop() {
        for name in d.names()? {
            n += 1;
            let st = d.stat(&name)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                stack.push(d.sub(&name)?);
            }
        }
    }
    Ok(n)
}
