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
        let root = self
            .lowers
            .load()
            .by_id(layer)
            .ok_or(Errno::EIO)?
            .root
            .clone();
        let mut map = LinkMap::new();
        scan(&root, &mut map)?;
        let map = Arc::new(map);
        self.link_maps.insert(layer, map.clone());
        Ok(map)
    }

    /// Other names, visible in the merged view, of the lower file `lower`
    /// (its own name, `own`, excluded). Their parent directories are copied
    /// up, ready for linking.
    /// The names come from the node's own names (those the kernel looked
    /// up) and from the layer's link map, its paths found in the merged view
    /// as they are or under a directory renamed since.
    pub fn lower_siblings(
        &self,
        node: &Arc<Node>,
        lower: &Arc<LowerObj>,
        own: (&Arc<Node>, &Name),
    ) -> Result<Vec<Sibling<'_>>> {
        let mut out: Vec<Sibling<'_>> = Vec::new();
        let aliases = node.state.read().aliases.clone();
        for a in aliases {
            let Some(parent) = self.table.hold(a.parent) else {
                continue;
            };
            self.add_sibling(&mut out, lower, own, vec![parent], &a.name)?;
        }
        let map = self.link_map(lower.layer())?;
        let Some(paths) = map.get(&(lower.dev, lower.ino)) else {
            log::debug!("no other names for {lower:?} in a map of {}", map.len());
            return Ok(out);
        };
        log::debug!("{} names for {lower:?}", paths.len());
        for p in paths {
            let Some((last, dirs)) = p.split_last() else {
                continue;
            };
            let path = match self.walk_merged(dirs)? {
                Some(path) => path,
                None => match self.moved_lower_dir(lower.layer(), dirs)? {
                    Some(dir) => vec![dir],
                    None => continue,
                },
            };
            self.add_sibling(&mut out, lower, own, path, last)?;
        }
        Ok(out)
    }

    /// Adds `name` under the last directory of `path` (the root when
    /// empty) if it is not already there, is not the copied name itself,
    /// and still shows this very lower file.
    fn add_sibling<'a>(
        &'a self,
        out: &mut Vec<Sibling<'a>>,
        lower: &Arc<LowerObj>,
        own: (&Arc<Node>, &Name),
        path: Vec<Held<'a>>,
        name: &[u8],
    ) -> Result<()> {
        let parent = match path.last() {
            Some(h) => (**h).clone(),
            None => self.node(crate::ino::ROOT)?,
        };
        let name = Name::new(name)?;
        let same =
            |p: &Arc<Node>, n: &Name| Arc::ptr_eq(p, &parent) && n.as_bytes() == name.as_bytes();
        if same(own.0, own.1) {
            return Ok(());
        }
        if out.iter().any(|s| {
            let p = s
                .parent()
                .cloned()
                .or_else(|| self.node(crate::ino::ROOT).ok());
            p.is_some_and(|p| same(&p, &s.name))
        }) {
            return Ok(());
        }
        match self.resolve(&parent, &name)? {
            Lookup::Found(f)
                if (f.upper.is_none() || self.index_only_name(&f, &parent, &name))
                    && f.lowers
                        .first()
                        .is_some_and(|l| (l.dev, l.ino) == (lower.dev, lower.ino)) => {}
            _ => return Ok(()),
        }
        self.copy_up(&parent)?;
        out.push(Sibling { path, name });
        Ok(())
    }

    /// A directory node known to the kernel that merges the lower directory
    /// at `comps` in layer `layer`: where that directory went when it was
    /// renamed (its path in the merged view no longer leads to it).
    fn moved_lower_dir(&self, layer: usize, comps: &[Box<[u8]>]) -> Result<Option<Held<'_>>> {
        let Some(root) = self.lowers.load().by_id(layer).map(|l| l.root.clone()) else {
            return Ok(None);
        };
        let mut cur = root;
        for c in comps {
            let name = Name::new(c)?;
            let fd = cur.dir_fd()?;
            match sys::fs::lstatat(fd.as_fd(), name.as_cstr()) {
                Ok(st) if st.is_dir() => cur = Arc::new(LowerObj::from_stat(&cur, c, &st)),
                _ => return Ok(None),
            }
        }
        let want = (cur.dev, cur.ino);
        for dir in self.table.dirs() {
            let merges = {
                let s = dir.state.read();
                s.lowers.stack().iter().any(|l| (l.dev, l.ino) == want)
            };
            if merges && let Some(d) = self.table.hold(dir.ino) {
                return Ok(Some(d));
            }
        }
        Ok(None)
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
                    self.kernel.attrs_changed(parent.ino);
                    self.kernel.attrs_changed(node.ino);
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
        self.kernel.attrs_changed(parent.ino);
        Ok(())
    }
}

/// One directory being walked by [`scan`]: its entries and the next one.
struct Frame {
    dir: Arc<LowerObj>,
    entries: Vec<sys::dirent::RawEntry>,
    next: usize,
}

impl Frame {
    fn open(dir: Arc<LowerObj>) -> Result<Frame> {
        let fd = dir.dir_fd()?;
        let open = sys::fs::open_dir_here(fd.as_fd())?;
        let mut entries = Vec::new();
        sys::dirent::read_dir(open.as_fd(), |e| entries.push(e))?;
        Ok(Frame {
            dir,
            entries,
            next: 0,
        })
    }
}

/// Walks a lower layer, recording files with more than one link. Depth
/// first with an explicit stack of directories (any depth); descriptors
/// come from the bounded cache, which reopens evicted ones.
fn scan(root: &Arc<LowerObj>, map: &mut LinkMap) -> Result<()> {
    let mut stack = vec![Frame::open(root.clone())?];
    // Names from the layer root to the directory on top of the stack.
    let mut path: Vec<Box<[u8]>> = Vec::new();
    while let Some(top) = stack.last_mut() {
        let Some(e) = top.entries.get(top.next) else {
            stack.pop();
            path.pop();
            continue;
        };
        top.next += 1;
        if whiteout::oci_name(&e.name) != whiteout::OciName::Plain || e.d_type == libc::DT_CHR {
            continue;
        }
        let dir = top.dir.clone();
        let name = Name::new(&e.name)?;
        let fd = dir.dir_fd()?;
        let st = match sys::fs::lstatat(fd.as_fd(), name.as_cstr()) {
            Ok(st) => st,
            Err(_) => continue,
        };
        if st.is_dir() {
            let child = Arc::new(LowerObj::from_stat(&dir, name.as_bytes(), &st));
            stack.push(Frame::open(child)?);
            path.push(name.as_bytes().into());
        } else if st.nlink > 1 {
            let mut p = path.clone();
            p.push(name.as_bytes().into());
            map.entry((st.dev, st.ino)).or_default().push(p);
        }
    }
    Ok(())
}
