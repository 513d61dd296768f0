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
    /// Data-only lower layers (below the regular ones).
    pub data: Vec<(PathBuf, OwnedFd)>,
    pub upper: Option<(PathBuf, OwnedFd)>,
    pub work: Option<(PathBuf, OwnedFd)>,
    pub mountpoint: PathBuf,
    /// Exclusive locks on the upper and work directories, held for the
    /// life of the mount: two mounts writing one upper corrupt it.
    pub in_use: Vec<OwnedFd>,
}

pub(crate) fn describe(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.code()).to_string()
}

/// Opens a directory given on the command line, with a clear message for
/// each way it can fail.
pub(crate) fn open_dir(what: &str, path: &Path) -> Result<OwnedFd, String> {
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

pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `a` is `b` or lies inside it.
pub(crate) fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

/// The error for `allow_other` that fusermount3 would refuse.
pub const ALLOW_OTHER_REFUSED: &str = "option allow_other needs 'user_allow_other' in \
    /etc/fuse.conf when not mounting as root";

/// Whether /etc/fuse.conf lets unprivileged users mount with allow_other.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

pub fn validate(o: &MountOptions, mountpoint: &Path) -> Result<Checked, String> {
    if o.allow_other && sys::process::geteuid() != 0 && !user_allow_other() {
        return Err(ALLOW_OTHER_REFUSED.into());
    }
    if o.lowers.is_empty() {
        return Err("missing lowerdir=: at least one lower directory is required".into());
    }
    if o.lowers.len() + o.data_lowers.len() > 500 {
        return Err(format!(
            "too many lower directories ({}, at most 500)",
            o.lowers.len() + o.data_lowers.len()
        ));
    }
    // Conflicting kernel features are refused before anything is opened.
    crate::features::resolve(
        o,
        o.upper.is_some(),
        o.userxattr || sys::process::geteuid() != 0,
    )?;
    match (&o.upper, &o.work) {
        (Some(_), None) => return Err("upperdir= needs workdir= as well".into()),
        (None, Some(_)) => return Err("workdir= needs upperdir= as well".into()),
        _ => {}
    }
    let open_lower = |what: &str, l: &PathBuf| -> Result<(PathBuf, OwnedFd), String> {
        let fd = open_dir(what, l)?;
        let fd = match private_lower(&fd) {
            Some(clone) => clone,
            None => {
                refuse_mountpoint_inside(what, l, &canonical(l), mountpoint)?;
                fd
            }
        };
        Ok((l.clone(), fd))
    };
    let mut lowers = Vec::new();
    for l in &o.lowers {
        lowers.push(open_lower("lowerdir", l)?);
    }
    let mut data = Vec::new();
    for l in &o.data_lowers {
        data.push(open_lower("data-only lowerdir", l)?);
    }
    let nregular = lowers.len();
    lowers.extend(data);
    refuse_overlapping_lowers(&lowers)?;
    let data = lowers.split_off(nregular);
    let mut upper = None;
    let mut work = None;
    let mut in_use = Vec::new();
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
        for (lp, _) in lowers.iter().chain(&data) {
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
        match (
            sys::mount::mount_id(ufd.as_fd()),
            sys::mount::mount_id(wfd.as_fd()),
        ) {
            (Ok(a), Ok(b)) if a != b => {
                return Err(format!(
                    "workdir {} and upperdir {} must be on the same mount",
                    w.display(),
                    u.display()
                ));
            }
            _ => {}
        }
        refuse_incompat_work(w, &wfd)?;
        in_use.push(lock_in_use("upperdir", u, &ufd)?);
        in_use.push(lock_in_use("workdir", w, &wfd)?);
        let (ufd, wfd) = match private_upper(&cu, &cw, &ufd, &wfd) {
            Some(pair) => pair,
            None => {
                for (what, p, c) in [("upperdir", u, &cu), ("workdir", w, &cw)] {
                    refuse_mountpoint_inside(what, p, c, mountpoint)?;
                }
                (ufd, wfd)
            }
        };
        upper = Some((u.clone(), ufd));
        work = Some((w.clone(), wfd));
    }
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "mountpoint {} is not a directory",
                mountpoint.display()
            ));
        }
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
        data,
        upper,
        work,
        mountpoint: mountpoint.to_path_buf(),
        in_use,
    })
}

/// Like the kernel, a directory may be only one lower layer, and lower
/// layers may not lie inside each other.
fn refuse_overlapping_lowers(lowers: &[(PathBuf, OwnedFd)]) -> Result<(), String> {
    let idents: Vec<Option<(u64, u64)>> = lowers
        .iter()
        .map(|(_, fd)| sys::fs::fstat(fd.as_fd()).ok().map(|st| (st.dev, st.ino)))
        .collect();
    let canon: Vec<PathBuf> = lowers.iter().map(|(p, _)| canonical(p)).collect();
    for i in 0..lowers.len() {
        for j in 0..i {
            let (a, b) = (&lowers[j].0, &lowers[i].0);
            if idents[i].is_some() && idents[i] == idents[j] {
                return Err(format!(
                    "lowerdir {} is given twice (as {} and {})",
                    canon[i].display(),
                    a.display(),
                    b.display()
                ));
            }
            if within(&canon[i], &canon[j]) || within(&canon[j], &canon[i]) {
                return Err(format!(
                    "lowerdir {} and lowerdir {} overlap (one is inside the other)",
                    a.display(),
                    b.display()
                ));
            }
        }
    }
    Ok(())
}

/// The kernel refuses a work directory that holds `work/incompat/*` (a
/// volatile mount leaves `incompat/volatile`: after a crash its upper may
/// miss data it claimed to have written). plyfs does the same.
fn refuse_incompat_work(w: &Path, wfd: &OwnedFd) -> Result<(), String> {
    let Ok(work) = sys::fs::open_dir_path(wfd.as_fd(), workdir::WORK) else {
        return Ok(());
    };
    let Ok(inc) = sys::fs::open_dir_path(work.as_fd(), workdir::INCOMPAT) else {
        return Ok(());
    };
    let Ok(dir) = sys::fs::open_dir_here(inc.as_fd()) else {
        return Ok(());
    };
    let mut names = Vec::new();
    let _ = sys::dirent::read_dir(dir.as_fd(), |e| names.push(e.name));
    names.sort();
    if let Some(feature) = names.first() {
        let feature = String::from_utf8_lossy(feature);
        return Err(format!(
            "workdir {} has incompat feature '{feature}' (work/incompat/{feature}): the upper was \
             mounted {feature} and may be inconsistent after a crash, so overlayfs refuses it; \
             remove {}/work/incompat to mount it anyway",
            w.display(),
            w.display()
        ));
    }
    Ok(())
}

/// Takes the exclusive in-use lock of an upper or work directory. A daemon
/// that just unmounted may still be finishing: wait a little for it.
fn lock_in_use(what: &str, path: &Path, fd: &OwnedFd) -> Result<OwnedFd, String> {
    let lock = sys::fs::open_dir_here(fd.as_fd())
        .map_err(|e| format!("cannot open {what} {}: {}", path.display(), describe(e)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sys::fs::try_lock_exclusive(lock.as_fd()) {
            Ok(()) => return Ok(lock),
            Err(e) if e.code() == libc::EWOULDBLOCK && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.code() == libc::EWOULDBLOCK => {
                return Err(format!(
                    "{what} {} is in use by another plyfs mount (two mounts writing one upper corrupt it)",
                    path.display()
                ));
            }
            // Filesystems without flock: nothing to check with.
            Err(_) => return Ok(lock),
        }
    }
}

/// Same object (device and inode) behind two descriptors.
fn same_object(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (sys::fs::fstat(a.as_fd()), sys::fs::fstat(b.as_fd())) {
        (Ok(x), Ok(y)) => (x.dev, x.ino) == (y.dev, y.ino),
        _ => false,
    }
}

/// A private clone of the mount a lower layer lives on, rooted at the
/// layer and read-only (see `sys::mount`); `None` where this process may
/// not clone mounts (unprivileged, or locked mounts in a user namespace).
pub(crate) fn private_lower(fd: &OwnedFd) -> Option<OwnedFd> {
    let clone = match sys::mount::clone_tree(fd.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("no private mount for a lower layer: {e:?}");
            return None;
        }
    };
    if let Err(e) = sys::mount::make_readonly_noatime(clone.as_fd()) {
        log::debug!("cannot make a lower layer's private mount read-only: {e:?}");
    }
    same_object(fd, &clone).then_some(clone)
}

/// Private clones of the upper and work directories, on one clone of the
/// mount they share (renames between them must stay on one mount): the
/// mount is cloned at their deepest common directory and walked down by
/// name. `None` when cloning is not allowed or the walk does not find the
/// same directories.
fn private_upper(cu: &Path, cw: &Path, ufd: &OwnedFd, wfd: &OwnedFd) -> Option<(OwnedFd, OwnedFd)> {
    let common: PathBuf = cu
        .components()
        .zip(cw.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let base = open_dir("common directory", &common).ok()?;
    let clone = match sys::mount::clone_tree(base.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("no private mount for the upper layer: {e:?}");
            return None;
        }
    };
    let walk = |target: &Path| -> Option<OwnedFd> {
        let rel = target.strip_prefix(&common).ok()?;
        let mut cur = sys::fs::dup(clone.as_fd()).ok()?;
        for c in rel.components() {
            let name = CString::new(c.as_os_str().as_bytes()).ok()?;
            cur = sys::fs::open_dir_path(cur.as_fd(), &name).ok()?;
        }
        Some(cur)
    };
    let (u, w) = (walk(cu)?, walk(cw)?);
    (same_object(ufd, &u) && same_object(wfd, &w)).then_some((u, w))
}

/// Without a private clone, a mountpoint inside a layer would show plyfs
/// its own mount there: its lookups would wait on themselves. Refuse it.
pub(crate) fn refuse_mountpoint_inside(
    what: &str,
    path: &Path,
    canon: &Path,
    mountpoint: &Path,
) -> Result<(), String> {
    let m = canonical(mountpoint);
    if m != canon && within(&m, canon) {
        return Err(format!(
            "mountpoint {} lies inside {what} {}; that needs a private copy of the layer's mount \
             (CAP_SYS_ADMIN: run as root or in a user namespace, e.g. unshare -Urm)",
            mountpoint.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Chooses the marker prefix: `user.overlay.` when asked (`userxattr`) or
/// when this process may not write `trusted.*` attributes on the upper
/// filesystem, else `trusted.overlay.` like a rootful kernel mount.
fn choose_prefix(o: &MountOptions, work: &WorkDir) -> Prefix {
    if o.userxattr {
        return Prefix::User;
    }
    let probe = c"trusted.overlay.plyfs-probe";
    let dir = match sys::fs::open_dir_here(work.fd()) {
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
    let mut in_use = c.in_use;
    let euid = sys::process::geteuid();
    let mut lowers = Vec::new();
    let mut data_layers = Vec::new();
    let nregular = c.lowers.len();
    // Absolute, as `plyfs status` shows them and `plyfs layer` compares
    // them after the daemon has left its working directory.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    for (i, (path, fd)) in c.lowers.into_iter().chain(c.data).enumerate() {
        let path = absolute(path);
        let dir = sys::fs::open_dir_here(fd.as_fd())
            .map_err(|e| format!("cannot read lowerdir {}: {}", path.display(), describe(e)))?;
        let fs_magic = sys::fs::fs_type(fd.as_fd()).unwrap_or(0);
        let uuid = sys::handle::fs_uuid(dir.as_fd());
        // Data-only layers are numbered after the regular ones; ids keep
        // the layers' order (see `lowerset`).
        let root = LowerObj::root(crate::lowerset::FIRST_ID + i, fd, path.clone())
            .map_err(|e| format!("cannot stat lowerdir {}: {}", path.display(), describe(e)))?;
        let layer = LowerLayer {
            path,
            root: Arc::new(root),
            fs_magic,
            uuid,
        };
        if i < nregular {
            lowers.push(layer);
        } else {
            data_layers.push(layer);
        }
    }
    let mut prefix = if o.userxattr || euid != 0 {
        Prefix::User
    } else {
        Prefix::Trusted
    };
    let upper = match (c.upper, c.work) {
        (Some((upath, ufd)), Some((wpath, wfd))) => {
            // A leftover `incompat/volatile` was refused in `validate`; the
            // volatile mark of this mount is set once it is mounted.
            let work = WorkDir::prepare(wfd).map_err(|e| {
                format!(
                    "cannot prepare workdir {}: {}",
                    wpath.display(),
                    describe(e)
                )
            })?;
            prefix = choose_prefix(o, &work);
            let dev = sys::fs::fstat(ufd.as_fd())
                .map_err(|e| format!("cannot stat upperdir: {}", describe(e)))?
                .dev;
            Some(UpperLayer {
                path: absolute(upath),
                root: Arc::new(ufd),
                dev,
                work,
                in_use: std::mem::take(&mut in_use),
            })
        }
        _ => None,
    };
    let mut features = crate::features::resolve(o, upper.is_some(), prefix == Prefix::User)?;
    // uuid=off applies where all layers share one filesystem (else the
    // layer UUIDs are needed to tell handles apart), as in the kernel.
    let devs: Vec<u64> = lowers
        .iter()
        .map(|l| l.root.dev)
        .chain(upper.as_ref().map(|u| u.dev))
        .collect();
    if features.uuid == crate::options::UuidMode::Off && devs.iter().any(|d| *d != devs[0]) {
        features.uuid = crate::options::UuidMode::Null;
    }
    let index = match &upper {
        Some(u) => {
            let root = sys::fs::openat(u.root.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| {
                    format!("cannot read upperdir {}: {}", u.path.display(), describe(e))
                })?;
            let (uuid_mode, _) = crate::ovl_uuid::init(features.uuid, root.as_fd(), prefix);
            if features.uuid != crate::options::UuidMode::Off {
                features.uuid = uuid_mode;
            }
            let off = features.uuid == crate::options::UuidMode::Off;
            let null = [0u8; 16];
            let top = lowers.first().ok_or("missing lowerdir=")?;
            let top_fd = top.root.dir_fd().map_err(|e| {
                format!(
                    "cannot open lowerdir {}: {}",
                    top.path.display(),
                    describe(e)
                )
            })?;
            let layers = crate::index::SetupLayers {
                work_base: u.work.base.as_fd(),
                upper_root: u.root.as_fd(),
                upper_uuid: if off {
                    null
                } else {
                    sys::handle::fs_uuid(root.as_fd())
                },
                top_lower_root: top_fd.as_fd(),
                lower_uuid: if off { null } else { top.uuid },
                prefix,
            };
            let ix = crate::index::setup(features.index, &layers)?;
            features.index = ix.as_ref().is_some_and(|i| i.active);
            ix
        }
        None => None,
    };
    let cfg = Config {
        features,
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
        redirect: features.redirect.unwrap_or(match prefix {
            Prefix::Trusted => RedirectMode::On,
            // A kernel `userxattr` mount refuses to follow redirects: keep
            // unprivileged uppers readable by it.
            Prefix::User => RedirectMode::Copy,
        }),
        passthrough: o.passthrough,
        writeback: o.writeback,
        xino: o.xino,
    };
    let volatile = cfg.volatile;
    let mut fs = Plyfs::new(cfg, upper, lowers, o.ino32)
        .map_err(|e| format!("cannot set up the mount: {}", describe(e)))?;
    fs.data_layers = data_layers;
    fs.index = index;
    fs.quota = crate::quota::setup(
        o.size_limit,
        o.inodes_limit,
        fs.upper.as_ref(),
        prefix,
        volatile,
    )?;
    Ok(fs)
}

fn squash(id: Option<u32>, root: bool) -> Option<u32> {
    id.or(if root { Some(0) } else { None })
}
