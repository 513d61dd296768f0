//! An fsck for overlay upper layers: walks an upper directory (without
//! following anything) and checks that every on-disk overlay marker is
//! well-formed and where the kernel's format allows it:
//!
//! - whiteouts are 0/0 character devices (empty, no marker xattrs); no
//!   OCI `.wh.*` names (plyfs writes kernel format only);
//! - `overlay.opaque` is `y` or `x` on a directory; xattr whiteouts
//!   (`overlay.whiteout`) are empty regular files inside an `x` directory;
//! - `overlay.redirect` sits on a directory that is not opaque, is a single
//!   name or an absolute path of valid components, and leads to a directory
//!   in some lower layer;
//! - `overlay.origin` is empty or a well-formed `ovl_fb` whose UUID is that
//!   of a lower filesystem (or zero) and whose handle opens an object of the
//!   same type in a lower layer;
//! - `overlay.impure` is `y` on a directory; `metacopy` is well-formed on a
//!   regular file; no unknown `overlay.*` marker.
//!
//! And [`work_leftovers`] lists what a crash left in `WORKDIR/work`.
//!
//! Declared from a test with `#[path = "common/upper_check.rs"] mod
//! upper_check;` next to `mod common;`. Needs root for `trusted.*` and
//! `open_by_handle_at`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::common::xattrs;

/// Which marker namespace the upper uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Trusted,
    User,
}

impl Prefix {
    fn bytes(self) -> &'static [u8] {
        match self {
            Prefix::Trusted => b"trusted.overlay.",
            Prefix::User => b"user.overlay.",
        }
    }
}

/// Counts of what the walk saw, for reports.
#[derive(Debug, Default, Clone)]
pub struct Census {
    pub entries: usize,
    pub whiteouts: usize,
    pub opaque: usize,
    pub redirects: usize,
    pub origins: usize,
    pub impure: usize,
}

/// Problems found (empty when the upper is well-formed) and a census.
pub fn check_upper(upper: &Path, lowers: &[PathBuf], prefix: Prefix) -> (Vec<String>, Census) {
    let mut c = Checker {
        upper: upper.to_path_buf(),
        lowers: lowers.to_vec(),
        lower_uuids: lowers.iter().map(|l| fs_uuid(l)).collect(),
        prefix,
        problems: Vec::new(),
        census: Census::default(),
        lower_paths: BTreeMap::new(),
    };
    c.walk();
    (c.problems, c.census)
}

/// Panics with every problem found in `upper`.
pub fn assert_upper_ok(upper: &Path, lowers: &[PathBuf], prefix: Prefix) -> Census {
    let (problems, census) = check_upper(upper, lowers, prefix);
    assert!(
        problems.is_empty(),
        "upper layer {} is not well-formed:\n{}",
        upper.display(),
        problems.join("\n")
    );
    census
}

/// Entries in `WORKDIR/work` (staging leftovers).
pub fn work_leftovers(work: &Path) -> Vec<String> {
    std::fs::read_dir(work.join("work"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

struct Checker {
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    lower_uuids: Vec<[u8; 16]>,
    prefix: Prefix,
    problems: Vec<String>,
    census: Census,
    /// Where each upper directory's lower content lives (relative path
    /// below the lower roots), after redirects.
    lower_paths: BTreeMap<PathBuf, PathBuf>,
}

impl Checker {
    fn problem(&mut self, rel: &Path, what: String) {
        if self.problems.len() < 200 {
            self.problems.push(format!("/{}: {what}", rel.display()));
        }
    }

    fn walk(&mut self) {
        self.lower_paths.insert(PathBuf::new(), PathBuf::new());
        let root = self.upper.clone();
        self.check_entry(Path::new(""), &root);
        // Iterative, so deep trees do not overflow the stack.
        let mut dirs = vec![PathBuf::new()];
        while let Some(rel) = dirs.pop() {
            let abs = self.upper.join(&rel);
            let Ok(rd) = std::fs::read_dir(&abs) else {
                self.problem(&rel, "cannot read directory".into());
                continue;
            };
            let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
            names.sort();
            let opaque_x = self.marker(&abs, "opaque").as_deref() == Some(b"x".as_slice());
            for name in names {
                let crel = rel.join(&name);
                let cabs = abs.join(&name);
                self.census.entries += 1;
                if name.as_bytes().starts_with(b".wh.") {
                    self.problem(&crel, "OCI whiteout name in an upper layer".into());
                }
                let is_dir = self.check_entry(&crel, &cabs);
                if !opaque_x && self.marker(&cabs, "whiteout").is_some() {
                    self.problem(
                        &crel,
                        "xattr whiteout outside a directory marked opaque=x".into(),
                    );
                }
                if is_dir {
                    dirs.push(crel);
                }
            }
        }
    }

    fn marker(&self, abs: &Path, name: &str) -> Option<Vec<u8>> {
        let want: Vec<u8> = [self.prefix.bytes(), name.as_bytes()].concat();
        xattrs(abs)
            .into_iter()
            .find(|(n, _)| *n == want)
            .map(|(_, v)| v)
    }

    /// Checks one entry; returns whether it is a directory to descend.
    fn check_entry(&mut self, rel: &Path, abs: &Path) -> bool {
        let Ok(md) = std::fs::symlink_metadata(abs) else {
            self.problem(rel, "vanished during the check".into());
            return false;
        };
        let ft = md.file_type();
        let is_dir = ft.is_dir();
        let is_whiteout = ft.is_char_device() && md.rdev() == 0;
        if is_whiteout {
            self.census.whiteouts += 1;
            if md.len() != 0 {
                self.problem(rel, format!("whiteout with size {}", md.len()));
            }
        }
        let pfx = self.prefix.bytes();
        let markers: Vec<(String, Vec<u8>)> = xattrs(abs)
            .into_iter()
            .filter_map(|(n, v)| {
                n.strip_prefix(pfx)
                    .map(|s| (String::from_utf8_lossy(s).into_owned(), v))
            })
            .collect();
        if is_whiteout && !markers.is_empty() {
            self.problem(rel, format!("whiteout carries markers {markers:?}"));
        }
        let mut opaque = false;
        let mut redirect = None;
        for (name, value) in &markers {
            match name.as_str() {
                "opaque" => {
                    self.census.opaque += 1;
                    opaque = value.as_slice() == b"y";
                    if !is_dir {
                        self.problem(rel, "overlay.opaque on a non-directory".into());
                    }
                    if value.as_slice() != b"y" && value.as_slice() != b"x" {
                        self.problem(rel, format!("overlay.opaque = {value:?}"));
                    }
                }
                "redirect" => {
                    self.census.redirects += 1;
                    if !is_dir {
                        self.problem(rel, "overlay.redirect on a non-directory".into());
                    }
                    redirect = Some(value.clone());
                }
                "origin" => {
                    self.census.origins += 1;
                    self.check_origin(rel, &md, value);
                }
                "impure" => {
                    self.census.impure += 1;
                    if !is_dir || value.as_slice() != b"y" {
                        self.problem(rel, format!("overlay.impure = {value:?} (dir: {is_dir})"));
                    }
                }
                "whiteout" => {
                    if !ft.is_file() || md.len() != 0 {
                        self.problem(
                            rel,
                            "overlay.whiteout on a non-empty or non-regular file".into(),
                        );
                    }
                }
                "metacopy" => {
                    let ok = ft.is_file()
                        && (value.is_empty()
                            || (value.len() >= 4
                                && value[0] == 0
                                && value[1] as usize == value.len()));
                    if !ok {
                        self.problem(rel, format!("malformed overlay.metacopy {value:?}"));
                    }
                }
                "uuid" if rel.as_os_str().is_empty() => {}
                "nlink" | "upper" | "protattr" => {}
                n if n.starts_with("overlay.") => {} // an escaped user attribute
                other => self.problem(rel, format!("unknown marker overlay.{other}")),
            }
        }
        if is_dir {
            self.note_lower_path(rel, redirect.as_deref(), opaque);
        }
        is_dir
    }

    /// Records where this directory's lower content is, validating its
    /// redirect if it has one.
    fn note_lower_path(&mut self, rel: &Path, redirect: Option<&[u8]>, opaque: bool) {
        let parent_lower = rel
            .parent()
            .and_then(|p| self.lower_paths.get(p).cloned())
            .unwrap_or_default();
        let own = match rel.file_name() {
            Some(n) => parent_lower.join(n),
            None => PathBuf::new(),
        };
        let Some(r) = redirect else {
            self.lower_paths.insert(rel.to_path_buf(), own);
            return;
        };
        if opaque {
            self.problem(rel, "directory both opaque and redirected".into());
        }
        let valid_component = |c: &[u8]| {
            !c.is_empty() && c != b"." && c != b".." && c.len() <= 255 && !c.contains(&0)
        };
        let target = if let Some(abs) = r.strip_prefix(b"/") {
            if !abs.split(|&b| b == b'/').all(valid_component) {
                self.problem(
                    rel,
                    format!(
                        "malformed absolute redirect {:?}",
                        String::from_utf8_lossy(r)
                    ),
                );
                return;
            }
            PathBuf::from(std::ffi::OsStr::from_bytes(abs))
        } else {
            if r.contains(&b'/') || !valid_component(r) {
                self.problem(
                    rel,
                    format!(
                        "malformed relative redirect {:?}",
                        String::from_utf8_lossy(r)
                    ),
                );
                return;
            }
            parent_lower.join(std::ffi::OsStr::from_bytes(r))
        };
        let found = self
            .lowers
            .iter()
            .any(|l| std::fs::symlink_metadata(l.join(&target)).is_ok_and(|m| m.is_dir()));
        if !found {
            self.problem(
                rel,
                format!(
                    "redirect {:?} leads to no lower directory",
                    String::from_utf8_lossy(r)
                ),
            );
        }
        self.lower_paths.insert(rel.to_path_buf(), target);
    }

    fn check_origin(&mut self, rel: &Path, md: &std::fs::Metadata, v: &[u8]) {
        if v.is_empty() {
            return;
        }
        // The kernel may store the fb behind one alignment byte.
        let fb = if v.len() > 21 && v[0] == 0 && v[1] == 0 && v[2] == 0xfb {
            &v[1..]
        } else {
            v
        };
        if fb.len() < 21 || fb[0] != 0 || fb[1] != 0xfb || fb[2] as usize != fb.len() {
            self.problem(rel, format!("malformed overlay.origin {v:02x?}"));
            return;
        }
        if fb[3] & !0b11 != 0 {
            self.problem(
                rel,
                format!("overlay.origin with unknown flags {:#x}", fb[3]),
            );
        }
        let uuid: [u8; 16] = fb[5..21].try_into().unwrap_or([0; 16]);
        if uuid != [0; 16] && !self.lower_uuids.contains(&uuid) {
            self.problem(
                rel,
                "overlay.origin UUID is not a lower filesystem's".into(),
            );
            return;
        }
        let handle_type = fb[4] as i32;
        let fid = &fb[21..];
        let mut opened = None;
        for (l, lu) in self.lowers.iter().zip(&self.lower_uuids) {
            if uuid != [0; 16] && *lu != uuid {
                continue;
            }
            if let Some(fd) = open_by_handle(l, handle_type, fid) {
                opened = Some(fd);
                break;
            }
        }
        let Some(fd) = opened else {
            self.problem(
                rel,
                "overlay.origin opens nothing in the lower layers".into(),
            );
            return;
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat into a valid out-pointer on an open descriptor.
        let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
        if r == 0 {
            // SAFETY: fstat succeeded.
            let lower_kind = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
            if lower_kind != md.mode() & libc::S_IFMT {
                self.problem(
                    rel,
                    format!(
                        "overlay.origin is a {:o} object, the upper one a {:o}",
                        lower_kind,
                        md.mode() & libc::S_IFMT
                    ),
                );
            }
        }
    }
}

/// Opens (O_PATH) the object a file handle names, on the filesystem of
/// `mount_dir`.
fn open_by_handle(mount_dir: &Path, handle_type: i32, fid: &[u8]) -> Option<OwnedFd> {
    #[repr(C)]
    struct Raw {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 128],
    }
    if fid.len() > 128 {
        return None;
    }
    let dir = std::fs::File::open(mount_dir).ok()?;
    let mut raw = Raw {
        handle_bytes: fid.len() as u32,
        handle_type,
        f_handle: [0; 128],
    };
    raw.f_handle[..fid.len()].copy_from_slice(fid);
    // SAFETY: `raw` is a file_handle with room for its announced bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            &mut raw as *mut Raw,
            libc::O_PATH,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new descriptor we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The UUID of the filesystem holding `path` (FS_IOC_GETFSUUID; zeroes when
/// unknown), as overlayfs records it in `overlay.origin`.
fn fs_uuid(path: &Path) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return [0; 16];
    };
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if fd < 0 {
        return [0; 16];
    }
    // SAFETY: we own the new descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: `out` matches the size the ioctl encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut out as *mut FsUuid2) };
    if r < 0 || out.len != 16 {
        return [0; 16];
    }
    out.uuid
}

/// Options of the kernel overlay mount used for comparisons: follow the
/// redirects plyfs writes; no index or metacopy (plyfs writes neither).
pub const KERNEL_OPTS: &str = "redirect_dir=on,index=off,metacopy=off";

/// The check every stress, crash and fault run ends with (plyfs must be
/// unmounted): the upper is well-formed, and kernel overlayfs mounting the
/// same directories shows exactly `live`, what plyfs showed.
pub fn check_with_kernel(
    l: &crate::common::Layers,
    live: &BTreeMap<Vec<u8>, crate::common::EntryInfo>,
    what: &str,
) -> Census {
    let census = assert_upper_ok(&l.upper, &l.lowers, Prefix::Trusted);
    let k = crate::common::KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS}", l.options()))
        .unwrap_or_else(|e| panic!("{what}: kernel overlayfs refuses the layers: {e}"));
    let kernel = crate::common::snapshot(&k.mnt);
    drop(k);
    let d = crate::common::diff(live, &kernel, "plyfs", "kernel overlayfs");
    assert!(
        d.is_empty(),
        "{what}: kernel overlayfs shows something else:\n{d}"
    );
    census
}
