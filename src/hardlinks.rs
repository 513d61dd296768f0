//! Hard links in lower layers survive copy-up.
//!
//! When a lower file with several names is copied up, plyfs links every
//! other name of that inode that is visible in the merged view to the new
//! upper file. The upper then holds ordinary hard links, so the names stay
//! one file (same st_ino, shared data, right st_nlink) for plyfs, after a
//! remount, and for any kernel overlay mount of the same upper, with or
//! without `index=on`. The kernel's own scheme (an index directory) keeps
//! names apart under a default kernel mount; this one does not.
//!
//! The other names are found by scanning the lower layer once per mount for
//! files with more than one link.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::{Ident, Node};
use crate::resolve::Lookup;
use crate::sys::{self, Errno};
use crate::table::Held;
use crate::whiteout;

/// Paths (as components from the layer root) of multiply-linked files,
/// by identity.
pub type LinkMap = HashMap<Ident, Vec<Vec<Box<[u8]>>>>;

/// A name of a copied-up file's inode, to be linked next to it. Holds the
/// directories on its path so they stay reachable until it is linked.
pub struct Sibling<'a> {
    path: Vec<Held<'a>>,
    pub name: Name,
}

impl Sibling<'_> {
    fn parent(&self) -> Option<&Arc<Node>> {
        self.path.last().map(|h| &**h)
    }
}

impl Plyfs {
    /// The hard-link map of lower layer `layer`, built on first use.
    fn link_map(&self, layer: usize) -> Result<Arc<LinkMap>> {
        if let Some(m) = self.link_maps.get(&layer) {
            return Ok(m.clone());
        }
        let root = self.lowers.get(layer).ok_or(Errno::EIO)?.root.clone();
        let mut map = LinkMap::new();
        let mut path = Vec::new();
        scan(&root, &mut path, &mut map)?;
        let map = Arc::new(map);
        self.link_maps.insert(layer, map.clone());
        Ok(map)
    }

    /// Other names, visible in the merged view, of the lower file `lower`
    /// (its own name, `own`, excluded). Their parent directories are copied
    /// up, ready for linking.
    pub fn lower_siblings(
        &self,
        lower: &Arc<LowerObj>,
        own: (&Arc<Node>, &Name),
    ) -> Result<Vec<Sibling<'_>>> {
        let map = self.link_map(lower.layer)?;
        let Some(paths) = map.get(&(lower.dev, lower.ino)) else {
            log::debug!("no other names for {lower:?} in a map of {}", map.len());
            return Ok(Vec::new());
        };
        log::debug!("{} names for {lower:?}", paths.len());
        let mut out = Vec::new();
        for p in paths {
            let Some((last, dirs)) = p.split_last() else {
                continue;
            };
            let Some(path) = self.walk_merged(dirs)? else {
                continue;
            };
            let parent = path
                .last()
                .map(|h| (**h).clone())
                .unwrap_or(self.node(crate::ino::ROOT)?);
            let name = Name::new(last)?;
            if Arc::ptr_eq(&parent, own.0) && name.as_bytes() == own.1.as_bytes() {
                continue;
            }
            // Only a name that still shows this very lower file.
            match self.resolve(&parent, &name)? {
                Lookup::Found(f)
                    if f.upper.is_none()
                        && f.lowers
                            .first()
                            .is_some_and(|l| (l.dev, l.ino) == (lower.dev, lower.ino)) => {}
                _ => continue,
            }
            self.copy_up(&parent)?;
            out.push(Sibling { path, name });
        }
        Ok(out)
    }

    /// The directory nodes along a path of names from the root (held), if
    /// every component is a visible directory.
    fn walk_merged(&self, comps: &[Box<[u8]>]) -> Result<Option<Vec<Held<'_>>>> {
        let mut path: Vec<Held<'_>> = Vec::new();
        for c in comps {
            let cur = match path.last() {
                Some(h) => (**h).clone(),
                None => self.node(crate::ino::ROOT)?,
            };
            let name = Name::new(c)?;
            match self.resolve(&cur, &name)? {
                Lookup::Found(f) if f.is_dir() => {}
                _ => return Ok(None),
            }
            path.push(self.node_at(&cur, &name)?);
        }
        Ok(Some(path))
    }

    /// Links the placed upper file `(pfd, name)` at each sibling's name.
    pub fn link_siblings(
        &self,
        node: &Arc<Node>,
        src: (&std::os::fd::OwnedFd, &Name),
        siblings: &[Sibling<'_>],
    ) {
        for s in siblings {
            let parent = match s.parent() {
                Some(p) => p.clone(),
                None => match self.node(crate::ino::ROOT) {
                    Ok(r) => r,
                    Err(_) => continue,
                },
            };
            let res = self.upper_dir_fd(&parent).and_then(|dfd| {
                let _g = parent.dir_lock.lock();
                sys::fs::linkat(
                    src.0.as_fd(),
                    src.1.as_cstr(),
                    dfd.as_fd(),
                    s.name.as_cstr(),
                )?;
                Ok(dfd)
            });
            match res {
                Ok(dfd) => {
                    self.mark_impure(&parent, &dfd);
                    parent.touch_version();
                    self.add_alias(node, parent.ino, &s.name);
                }
                Err(e) => log::warn!("cannot link {:?} to its copied-up hard link: {e:?}", s.name),
            }
        }
    }
}

impl Plyfs {
    /// A name that still shows the lower object of a node already copied up
    /// through another hard link (e.g. one the copy-up did not find because a
    /// directory was renamed since): link it to the upper file now, so the
    /// names stay one file on disk as well.
    pub fn link_up(&self, node: &Arc<Node>, parent: &Arc<Node>, name: &Name) -> Result<()> {
        self.copy_up(parent)?;
        let (spfd, sname) = self.upper_loc(node)?;
        let pfd = self.upper_dir_fd(parent)?;
        let _g = parent.dir_lock.lock();
        match sys::fs::lstatat(pfd.as_fd(), name.as_cstr()) {
            Err(e) if e.code() == libc::ENOENT => {}
            // Something is there now (or a whiteout): leave it.
            _ => return Ok(()),
        }
        sys::fs::linkat(spfd.as_fd(), sname.as_cstr(), pfd.as_fd(), name.as_cstr())?;
        self.mark_impure(parent, &pfd);
        parent.touch_version();
        Ok(())
    }
}

/// Walks a lower layer, recording files with more than one link.
fn scan(dir: &Arc<LowerObj>, path: &mut Vec<Box<[u8]>>, map: &mut LinkMap) -> Result<()> {
    let fd = dir.dir_fd()?;
    let open = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut entries = Vec::new();
    sys::dirent::read_dir(open.as_fd(), |e| entries.push(e))?;
    drop(open);
    for e in entries {
        if whiteout::oci_name(&e.name) != whiteout::OciName::Plain {
            continue;
        }
        let name = Name::new(&e.name)?;
        if e.d_type == libc::DT_DIR || e.d_type == libc::DT_UNKNOWN {
            let st = match sys::fs::lstatat(fd.as_fd(), name.as_cstr()) {
                Ok(st) => st,
                Err(_) => continue,
            };
            if st.is_dir() {
                let child = Arc::new(LowerObj::from_stat(dir, &e.name, &st));
                path.push(e.name.clone().into());
                let r = scan(&child, path, map);
                path.pop();
                r?;
                continue;
            }
        }
        if e.d_type == libc::DT_CHR {
            continue;
        }
        let st = match sys::fs::lstatat(fd.as_fd(), name.as_cstr()) {
            Ok(st) => st,
            Err(_) => continue,
        };
        if !st.is_dir() && st.nlink > 1 {
            let mut p = path.clone();
            p.push(e.name.into());
            map.entry((st.dev, st.ino)).or_default().push(p);
        }
    }
    Ok(())
}
