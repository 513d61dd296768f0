//! Objects in read-only lower layers.
//!
//! Lower layers never change under a mount, so a lower object is found again
//! by walking from its layer root through the names it was found under; each
//! object keeps its parent, and directories cache an `O_PATH` descriptor.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock, Weak};

use crate::fdcache::{FdHolder, FdSlot};
use crate::names::Name;
use crate::ovl_xattr::Prefix;
use crate::sys::{self, Errno, fs::Stat};
use crate::whiteout::{self, OpaqueValue};

/// Markers of a lower directory, read once on first use.
#[derive(Clone, Debug, Default)]
pub struct LowerDirInfo {
    /// Hides the layers below (`overlay.opaque=y` or `.wh..wh..opq`).
    pub opaque: bool,
    /// May contain xattr whiteouts (`overlay.opaque=x`).
    pub xattr_whiteouts: bool,
    /// `overlay.redirect` (a directory renamed in a layer that was an upper
    /// layer once): where the layers below keep its content.
    pub redirect: Option<Box<[u8]>>,
}

/// A set of entry names.
type NameSet = std::collections::HashSet<Box<[u8]>>;

pub struct LowerObj {
    /// Index into the mount's lower layers (0 = top lower).
    pub layer: usize,
    pub parent: Option<Arc<LowerObj>>,
    pub name: Box<[u8]>,
    pub dev: u64,
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    fd: FdSlot,
    dir_info: OnceLock<LowerDirInfo>,
    /// Directories: names hidden by OCI `.wh.NAME` markers in this
    /// directory, read once on the first lookup that misses here (`None`:
    /// there are none, the common case).
    oci_whiteouts: OnceLock<Option<Box<NameSet>>>,
    /// For layer roots, the path the user gave (for messages).
    pub root_path: Option<std::path::PathBuf>,
}

impl Drop for LowerObj {
    /// Drops a chain of otherwise unreferenced ancestors in a loop: the
    /// default drop would recurse once per directory level.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(p) = next {
            next = match Arc::try_unwrap(p) {
                Ok(mut obj) => obj.parent.take(),
                Err(_) => None,
            };
        }
    }
}

impl FdHolder for LowerObj {
    fn slot(&self) -> &FdSlot {
        &self.fd
    }
}

impl std::fmt::Debug for LowerObj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LowerObj(layer {}, {:?}, ino {})",
            self.layer,
            String::from_utf8_lossy(&self.name),
            self.ino
        )
    }
}

impl LowerObj {
    /// The root directory of lower layer `layer`, opened at start-up.
    pub fn root(layer: usize, fd: OwnedFd, path: std::path::PathBuf) -> Result<LowerObj, Errno> {
        let st = sys::fs::fstat(fd.as_fd())?;
        Ok(LowerObj {
            layer,
            parent: None,
            name: Box::new([]),
            dev: st.dev,
            ino: st.ino,
            kind: st.file_type(),
            fd: FdSlot::pinned(Arc::new(fd)),
            dir_info: OnceLock::new(),
            oci_whiteouts: OnceLock::new(),
            root_path: Some(path),
        })
    }

    /// A child found under `parent` with the given identity.
    pub fn child(parent: &Arc<LowerObj>, name: &[u8], dev: u64, ino: u64, kind: u32) -> LowerObj {
        LowerObj {
            layer: parent.layer,
            parent: Some(parent.clone()),
            name: name.into(),
            dev,
            ino,
            kind,
            fd: FdSlot::empty(),
            dir_info: OnceLock::new(),
            oci_whiteouts: OnceLock::new(),
            root_path: None,
        }
    }

    pub fn from_stat(parent: &Arc<LowerObj>, name: &[u8], st: &Stat) -> LowerObj {
        LowerObj::child(parent, name, st.dev, st.ino, st.file_type())
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// `O_PATH` descriptor of this directory, reopened from the parent if it
    /// was evicted. ESTALE if something else now sits at the name.
    ///
    /// Iterative: evicted ancestors are reopened top-down from the nearest
    /// one still cached, so any directory depth works on a thread's stack.
    pub fn dir_fd(self: &Arc<Self>) -> Result<Arc<OwnedFd>, Errno> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd);
        }
        // Walk up to the nearest object with a cached descriptor.
        let mut chain: Vec<Arc<LowerObj>> = vec![self.clone()];
        let mut fd = loop {
            let Some(parent) = chain.last().and_then(|o| o.parent.clone()) else {
                return Err(Errno::EIO);
            };
            if let Some(fd) = parent.fd.get() {
                break fd;
            }
            chain.push(parent);
        };
        // Reopen down again, one name at a time.
        while let Some(obj) = chain.pop() {
            fd = obj.reopen_from(&fd)?;
        }
        Ok(fd)
    }

    /// Opens this directory by name in its parent's descriptor `pfd` and
    /// caches it.
    fn reopen_from(self: &Arc<Self>, pfd: &OwnedFd) -> Result<Arc<OwnedFd>, Errno> {
        let name = Name::new(&self.name)?;
        let fd = sys::fs::open_dir_path(pfd.as_fd(), name.as_cstr())?;
        // O_DIRECTORY|O_NOFOLLOW already rule out anything but a directory;
        // a reopen after eviction must also find the same one.
        if self.fd.filled_once() && sys::fs::fstat(fd.as_fd())?.ino != self.ino {
            log::warn!("lower layer changed under the mount at {self:?}");
            return Err(Errno::ESTALE);
        }
        let weak: Weak<dyn FdHolder> = Arc::downgrade(self) as Weak<dyn FdHolder>;
        let parent = self
            .parent
            .as_ref()
            .map(|p| Arc::downgrade(p) as Weak<dyn FdHolder>);
        Ok(self.fd.fill(fd, weak, parent))
    }

    /// The parent directory descriptor and name through which this object is
    /// reached. Layer roots have no parent: EINVAL.
    pub fn locate(&self) -> Result<(Arc<OwnedFd>, Name), Errno> {
        let parent = self.parent.as_ref().ok_or(Errno::EINVAL)?;
        Ok((parent.dir_fd()?, Name::new(&self.name)?))
    }

    /// Fresh `lstat` of this object.
    pub fn stat(self: &Arc<Self>) -> Result<Stat, Errno> {
        if self.is_dir() {
            let fd = self.dir_fd()?;
            return sys::fs::fstat(fd.as_fd());
        }
        let (pfd, name) = self.locate()?;
        sys::fs::lstatat(pfd.as_fd(), name.as_cstr())
    }

    /// Whether this directory holds an OCI whiteout (`.wh.NAME`) for `name`.
    /// The directory is read once to learn its markers, which replaces one
    /// `lstat` per name missing here.
    pub fn has_oci_whiteout(self: &Arc<Self>, name: &[u8]) -> Result<bool, Errno> {
        if let Some(set) = self.oci_whiteouts.get() {
            return Ok(set.as_ref().is_some_and(|s| s.contains(name)));
        }
        let fd = self.dir_fd()?;
        let dir = sys::fs::openat_noatime(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut set = std::collections::HashSet::new();
        sys::dirent::read_dir(dir.as_fd(), |e| {
            if let whiteout::OciName::Whiteout(target) = whiteout::oci_name(&e.name) {
                set.insert(Box::<[u8]>::from(target));
            }
        })?;
        let found = set.contains(name);
        let _ = self
            .oci_whiteouts
            .set((!set.is_empty()).then(|| Box::new(set)));
        Ok(found)
    }

    /// Opaque and xattr-whiteout markers of this directory (cached).
    pub fn dir_info(self: &Arc<Self>) -> Result<&LowerDirInfo, Errno> {
        if let Some(info) = self.dir_info.get() {
            return Ok(info);
        }
        let info = self.read_dir_info()?;
        Ok(self.dir_info.get_or_init(|| info))
    }

    fn read_dir_info(self: &Arc<Self>) -> Result<LowerDirInfo, Errno> {
        let both = Prefix::BOTH;
        let markers = match &self.parent {
            Some(_) => {
                let (pfd, name) = self.locate()?;
                whiteout::dir_markers(pfd.as_fd(), name.as_cstr(), &both)?
            }
            None => {
                // A layer root has no parent descriptor: read through an
                // open descriptor of the directory itself.
                let fd = self.dir_fd()?;
                let dir = sys::fs::open_dir_here(fd.as_fd())?;
                root_markers(dir.as_fd(), &both)
            }
        };
        let mut opaque = markers.opaque == OpaqueValue::Opaque;
        if !opaque {
            let fd = self.dir_fd()?;
            let marker = Name::new(whiteout::OCI_OPAQUE)?;
            opaque = match sys::fs::lstatat(fd.as_fd(), marker.as_cstr()) {
                Ok(_) => true,
                Err(e) if e.code() == libc::ENOENT => false,
                Err(e) => return Err(e),
            };
        }
        Ok(LowerDirInfo {
            opaque,
            xattr_whiteouts: markers.opaque == OpaqueValue::XattrWhiteouts,
            redirect: markers.redirect.map(Into::into),
        })
    }
}

/// Markers of a directory given as an open descriptor (layer roots).
pub fn root_markers(dir: std::os::fd::BorrowedFd<'_>, prefixes: &[Prefix]) -> whiteout::DirMarkers {
    let mut m = whiteout::DirMarkers::default();
    for p in prefixes {
        if let Ok(v) = sys::xattr::fget(dir, &p.name(crate::ovl_xattr::OPAQUE)) {
            let o = whiteout::parse_opaque(&v);
            if o == OpaqueValue::Opaque || m.opaque == OpaqueValue::None {
                m.opaque = o;
            }
        }
        if let Ok(v) = sys::xattr::fget(dir, &p.name(crate::ovl_xattr::IMPURE)) {
            m.impure |= v == b"y";
        }
    }
    m
}
