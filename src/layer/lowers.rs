//! The merged view of the lower layers, for the parts of a diff that need
//! it: the content a redirected directory brings along, and the data of
//! metacopy files.
//!
//! It is plyfs's own read-only filesystem over the lowers, used in-process
//! without FUSE, so lower whiteouts (kernel, xattr and OCI), opaque
//! directories and redirects inside the lowers mean exactly what they mean
//! under a mount. Nothing here writes: a mount without an upper layer never
//! does.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::fs::Plyfs;
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::Node;
use crate::options::MountOptions;
use crate::sys::{self, Errno, fs::Stat};

/// The lower layers, merged.
pub struct LowerView {
    fs: Arc<Plyfs>,
}

/// A looked-up object of the merged lowers; its lookup is released when
/// dropped.
pub struct LowerRef {
    fs: Arc<Plyfs>,
    node: Arc<Node>,
}

impl Clone for LowerRef {
    fn clone(&self) -> LowerRef {
        if self.node.ino != crate::ino::ROOT
            && let Some(h) = self.fs.table.hold(self.node.ino)
        {
            // One more reference, given back by this clone's drop.
            h.into_kernel();
        }
        LowerRef {
            fs: self.fs.clone(),
            node: self.node.clone(),
        }
    }
}

impl Drop for LowerRef {
    fn drop(&mut self) {
        if self.node.ino != crate::ino::ROOT {
            self.fs.do_forget(self.node.ino, 1);
        }
    }
}

impl LowerView {
    /// Opens the layers (top first) and the data-only layers below them
    /// (`lowerdir=A::D`), following symlinks in the paths given. Metacopy
    /// files in the lowers are followed (as with `metacopy=on`), so their
    /// data is that of the file their chain ends at, never the zeros of a
    /// placeholder.
    pub fn open(paths: &[PathBuf], data: &[PathBuf]) -> Result<LowerView, String> {
        let open = |p: &PathBuf| -> Result<(PathBuf, OwnedFd), String> {
            let c = CString::new(p.as_os_str().as_bytes())
                .map_err(|_| format!("lower {}: path contains a NUL byte", p.display()))?;
            let fd = sys::fs::open_cwd(&c, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
                format!(
                    "cannot open lower {}: {}",
                    p.display(),
                    std::io::Error::from_raw_os_error(e.code())
                )
            })?;
            Ok((p.clone(), fd))
        };
        let lowers = paths.iter().map(open).collect::<Result<Vec<_>, _>>()?;
        let data_fds = data.iter().map(open).collect::<Result<Vec<_>, _>>()?;
        let o = MountOptions {
            lowers: paths.to_vec(),
            data_lowers: data.to_vec(),
            metacopy: Some(true),
            ..MountOptions::default()
        };
        let checked = crate::setup::Checked {
            lowers,
            data: data_fds,
            upper: None,
            work: None,
            mountpoint: PathBuf::from("/"),
            in_use: Vec::new(),
        };
        let fs = crate::setup::build(&o, checked)?;
        Ok(LowerView { fs: Arc::new(fs) })
    }

    /// The root of the merged lowers.
    pub fn root(&self) -> Result<LowerRef, Errno> {
        Ok(LowerRef {
            fs: self.fs.clone(),
            node: self.fs.node(crate::ino::ROOT)?,
        })
    }

    /// Looks `name` up in the directory `dir`.
    pub fn lookup(&self, dir: &LowerRef, name: &[u8]) -> Result<Option<LowerRef>, Errno> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let name = Name::new(name)?;
        Ok(self
            .fs
            .do_lookup(dir.node.ino, &name)?
            .map(|(held, _)| LowerRef {
                fs: self.fs.clone(),
                // The reference is given back when the LowerRef drops.
                node: held.into_kernel(),
            }))
    }

    /// Looks up a path given as components from the root.
    pub fn lookup_path(&self, comps: &[Vec<u8>]) -> Result<Option<LowerRef>, Errno> {
        let mut cur = self.root()?;
        for c in comps {
            match self.lookup(&cur, c)? {
                Some(next) => cur = next,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The visible names in the directory `dir`, with their `S_IFMT` kinds.
    pub fn list(&self, dir: &LowerRef) -> Result<Vec<(Vec<u8>, u32)>, Errno> {
        let l = self.fs.current_listing(&dir.node)?;
        Ok(l.entries
            .iter()
            .map(|e| (e.name.to_vec(), e.kind))
            .collect())
    }
}

impl LowerRef {
    pub fn is_dir(&self) -> bool {
        self.node.is_dir()
    }

    /// The real object shown (the top one of a merged directory).
    fn object(&self) -> Result<Arc<LowerObj>, Errno> {
        self.node.top_lower()
    }

    /// `lstat` of the real object.
    pub fn stat(&self) -> Result<Stat, Errno> {
        self.object()?.stat()
    }

    /// Parent descriptor and name of the real object (EINVAL for a layer
    /// root, which has none).
    pub fn locate(&self) -> Result<(Arc<OwnedFd>, Name), Errno> {
        self.object()?.locate()
    }

    /// Opens the file's data for reading (regular files): the real object,
    /// or for a metacopy file the end of its chain (a lower layer or a
    /// data-only one).
    pub fn open_data(&self) -> Result<OwnedFd, Errno> {
        let meta = self.node.metacopy();
        if let Some(d) = meta {
            return self.fs.open_metacopy_data(&d, libc::O_RDONLY);
        }
        let (pfd, name) = self.locate()?;
        sys::fs::openat(
            pfd.as_fd(),
            name.as_cstr(),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )
    }
}
