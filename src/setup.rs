//! Checking the command line's directories and opening the layers.
//!
//! Everything that can be wrong with the user's input is found by
//! [`validate`] before anything is written or mounted; its error is one
//! line for the user. Layer roots are opened here, by path and following
//! symlinks (containers-storage passes its `l/SHORTID` links); below the
//! roots every access is by descriptor.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{Config, LowerLayer, Plyfs, UpperLayer};
use crate::idmap::IdMap;
use crate::lower::LowerObj;
use crate::options::{MountOptions, RedirectMode};
use crate::ovl_xattr::Prefix;
use crate::sys::{self, Errno};
use crate::workdir::{self, WorkDir};

/// Default entry/attribute timeout: plyfs is the only writer of its layers.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86400);

/// Directories that passed validation, opened.
pub struct Checked {
    pub lowers: Vec<(PathBuf, OwnedFd)>,
    pub upper: Option<(PathBuf, OwnedFd)>,
    pub work: Option<(PathBuf, OwnedFd)>,
    pub mountpoint: PathBuf,
}

fn describe(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.code()).to_string()
}

/// Opens a directory given on the command line, with a clear message for
/// each way it can fail.
fn open_dir(what: &str, path: &Path) -> Result<OwnedFd, String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{what} {}: path contains a NUL byte", path.display()))?;
    match sys::fs::open_cwd(&c, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => Ok(fd),
        Err(e) if e.code() == libc::ENOENT => {
            Err(format!("{what} {} does not exist", path.display()))
        }
        Err(e) if e.code() == libc::ENOTDIR => {
            Err(format!("{what} {} is not a directory", path.display()))
        }
        Err(e) => Err(format!(
            "cannot open {what} {}: {}",
            path.display(),
            describe(e)
        )),
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `a` is `b` or lies inside it.
fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

pub fn validate(o: &MountOptions, mountpoint: &Path) -> Result<Checked, String> {
    if o.lowers.is_empty() {
        return Err("missing lowerdir=: at least one lower directory is required".into());
    }
    if o.lowers.len() > 500 {
        return Err(format!(
            "too many lower directories ({}, at most 500)",
            o.lowers.len()
        ));
    }
    match (&o.upper, &o.work) {
        (Some(_), None) => return Err("upperdir= needs workdir= as well".into()),
        (None, Some(_)) => return Err("workdir= needs upperdir= as well".into()),
        _ => {}
    }
    let mut lowers = Vec::new();
    for l in &o.lowers {
        lowers.push((l.clone(), open_dir("lowerdir", l)?));
    }
    let mut upper = None;
    let mut work = None;
    if let (Some(u), Some(w)) = (&o.upper, &o.work) {
        let ufd = open_dir("upperdir", u)?;
        let wfd = open_dir("workdir", w)?;
        let ust = sys::fs::fstat(ufd.as_fd())
            .map_err(|e| format!("cannot stat upperdir: {}", describe(e)))?;
        let wst = sys::fs::fstat(wfd.as_fd())
            .map_err(|e| format!("cannot stat workdir: {}", describe(e)))?;
        if ust.dev != wst.dev {
            return Err(format!(
                "workdir {} must be on the same filesystem as upperdir {}",
                w.display(),
                u.display()
            ));
        }
        let (cu, cw) = (canonical(u), canonical(w));
        if cu == cw {
            return Err("upperdir and workdir must be different directories".into());
        }
        if within(&cu, &cw) || within(&cw, &cu) {
            return Err(format!(
                "upperdir {} and workdir {} must not be inside each other",
                u.display(),
                w.display()
            ));
        }
        for (lp, _) in &lowers {
            let cl = canonical(lp);
            for (what, p, c) in [("upperdir", u, &cu), ("workdir", w, &cw)] {
                if within(c, &cl) || within(&cl, c) {
                    return Err(format!(
                        "{what} {} and lowerdir {} must not be inside each other",
                        p.display(),
                        lp.display()
                    ));
                }
            }
        }
        upper = Some((u.clone(), ufd));
        work = Some((w.clone(), wfd));
    }
    match std::fs::metadata(mountpoint) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "mountpoint {} does not exist",
                mountpoint.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot use mountpoint {}: {e}",
                mountpoint.display()
            ));
        }
    }
    Ok(Checked {
        lowers,
        upper,
        work,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// Chooses the marker prefix: `user.overlay.` when asked (`userxattr`) or
/// when this process may not write `trusted.*` attributes on the upper
/// filesystem, else `trusted.overlay.` like a rootful kernel mount.
fn choose_prefix(o: &MountOptions, work: &WorkDir) -> Prefix {
    if o.userxattr {
        return Prefix::User;
    }
    let probe = c"trusted.overlay.plyfs-probe";
    let dir = match sys::fs::openat(work.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        Ok(d) => d,
        Err(_) => return Prefix::User,
    };
    match sys::xattr::fset(dir.as_fd(), probe, b"1", 0) {
        Ok(()) => {
            let _ = sys::xattr::fremove(dir.as_fd(), probe);
            Prefix::Trusted
        }
        Err(_) => Prefix::User,
    }
}

/// Opens the layers and builds the filesystem. Prepares the work directory
/// (the first write to disk).
pub fn build(o: &MountOptions, c: Checked) -> Result<Plyfs, String> {
    let euid = sys::process::geteuid();
    let mut lowers = Vec::new();
    for (i, (path, fd)) in c.lowers.into_iter().enumerate() {
        let dir = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| format!("cannot read lowerdir {}: {}", path.display(), describe(e)))?;
        let fs_magic = sys::fs::fs_type(fd.as_fd()).unwrap_or(0);
        let uuid = sys::handle::fs_uuid(dir.as_fd());
        let root = LowerObj::root(i, fd, path.clone())
            .map_err(|e| format!("cannot stat lowerdir {}: {}", path.display(), describe(e)))?;
        lowers.push(LowerLayer {
            path,
            root: Arc::new(root),
            fs_magic,
            uuid,
        });
    }
    let mut prefix = if o.userxattr || euid != 0 {
        Prefix::User
    } else {
        Prefix::Trusted
    };
    let upper = match (c.upper, c.work) {
        (Some((upath, ufd)), Some((wpath, wfd))) => {
            // Cleaning the work directory also drops a kernel volatile
            // mount's `work/incompat/volatile` mark, as containers-storage
            // does before it mounts.
            let work = WorkDir::prepare(wfd).map_err(|e| {
                format!(
                    "cannot prepare workdir {}: {}",
                    wpath.display(),
                    describe(e)
                )
            })?;
            if o.volatile {
                // Like a volatile kernel mount: mark the upper as possibly
                // inconsistent, so a kernel mount refuses it until removed.
                let _ = workdir::mark_volatile(&work);
            }
            prefix = choose_prefix(o, &work);
            let dev = sys::fs::fstat(ufd.as_fd())
                .map_err(|e| format!("cannot stat upperdir: {}", describe(e)))?
                .dev;
            Some(UpperLayer {
                path: upath,
                root: Arc::new(ufd),
                dev,
                work,
            })
        }
        _ => None,
    };
    let cfg = Config {
        prefix,
        volatile: o.volatile,
        ttl: o
            .timeout
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TTL),
        can_chown: euid == 0,
        euid,
        egid: sys::process::getegid(),
        uids: IdMap::new(o.uid_map.clone(), squash(o.squash_to_uid, o.squash_to_root)),
        gids: IdMap::new(o.gid_map.clone(), squash(o.squash_to_gid, o.squash_to_root)),
        static_nlink: o.static_nlink,
        noacl: o.noacl,
        xattr_permissions: o.xattr_permissions,
        redirect: o.redirect.unwrap_or(match prefix {
            Prefix::Trusted => RedirectMode::On,
            // A kernel `userxattr` mount refuses to follow redirects: keep
            // unprivileged uppers readable by it.
            Prefix::User => RedirectMode::Copy,
        }),
        passthrough: o.passthrough,
        writeback: o.writeback,
    };
    Plyfs::new(cfg, upper, lowers, o.ino32)
        .map_err(|e| format!("cannot set up the mount: {}", describe(e)))
}

fn squash(id: Option<u32>, root: bool) -> Option<u32> {
    id.or(if root { Some(0) } else { None })
}
