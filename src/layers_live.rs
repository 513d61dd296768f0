//! Adding and removing lower layers of a live mount (`plyfs layer add`,
//! `plyfs layer remove`), as AUFS branches could be.
//!
//! After a change, names mean what they mean in a fresh mount with the new
//! `lowerdir=` list, with these exceptions, all about objects already in
//! use:
//!
//! - An open file keeps the object it was opened on, like a file whose
//!   name was replaced by a rename: it reads the same data even if its
//!   name now shows another file or nothing. It is never copied up through
//!   that stale name (a change of its metadata then fails with ENOENT, as
//!   for an open file whose last name was removed). New opens get what the
//!   name shows now.
//! - A directory the kernel knows (a working directory, an open directory)
//!   follows its name: it lists and looks up the new merged content, and
//!   keeps its inode number. A directory the change hides (a whiteout or a
//!   file over it in the added layer, or it was only in the removed layer)
//!   behaves like a removed one: opening, listing or creating in it fails
//!   with ENOENT.
//! - Removing a layer is refused (EBUSY) while a file opened from it is
//!   open, or an open directory merges one of its directories; the last
//!   lower layer cannot be removed.
//!
//! How: the list is swapped whole (`lowerset`), with a new generation.
//! Every node remembers the generation its lower objects were found with;
//! a node from an older one is brought up to date on its next use
//! ([`Plyfs::refresh`]: its names are resolved again), directories right
//! away. Lower-only directories are registered by name before the swap so
//! that a lookup racing with the change finds their node instead of making
//! a second one. Then the kernel's caches go: every cached entry at once
//! (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16+; before that, each entry the
//! kernel may hold by name), and the attributes and cached listings of
//! every directory. All of this happens on the control thread, never in a
//! request handler (entry invalidation takes directory locks in the
//! kernel). The upper layer is not touched.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use crate::fs::{LowerLayer, Plyfs};
use crate::lower::LowerObj;
use crate::lowerset::Lowers;
use crate::names::Name;
use crate::node::{Alias, Node};
use crate::resolve::{Found, Lookup};
use crate::sys::{self, Errno};

/// Most lower layers a mount may have (as at mount time).
const MAX_LOWERS: usize = 500;

/// Lower-only directories the kernel knew when the list changed, by
/// (parent node, name), while the change is being applied.
#[derive(Default)]
pub struct StaleDirs {
    map: DashMap<(u64, Box<[u8]>), Weak<Node>>,
    active: AtomicBool,
}

impl StaleDirs {
    fn fill(&self, dirs: &[Arc<Node>]) {
        for d in dirs {
            let s = d.state.read();
            if s.upper.is_some() || s.unlinked {
                continue;
            }
            if let Some(a) = s.aliases.first() {
                self.map
                    .insert((a.parent, a.name.as_ref().into()), Arc::downgrade(d));
            }
        }
        self.active.store(true, Ordering::Release);
    }

    fn clear(&self) {
        self.active.store(false, Ordering::Release);
        self.map.clear();
    }

    fn take(&self, parent: u64, name: &[u8]) -> Option<Arc<Node>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let key = (parent, Box::<[u8]>::from(name));
        self.map.remove(&key).and_then(|(_, w)| w.upgrade())
    }
}

type Failure = (Errno, String);

/// A node with the lower objects and names it had before a change.
type Before = (Arc<Node>, Vec<Arc<LowerObj>>, Vec<Alias>);

fn fail(e: Errno, msg: impl Into<String>) -> Failure {
    (e, msg.into())
}

/// Opens `dir` as a lower layer would be at mount time: by path, following
/// symlinks, through a private read-only clone of its mount when allowed.
fn open_layer(dir: &Path, mountpoint: &Path) -> Result<std::os::fd::OwnedFd, Failure> {
    let fd = crate::setup::open_dir("lowerdir", dir).map_err(|m| fail(Errno::ENOENT, m))?;
    match crate::setup::private_lower(&fd) {
        Some(clone) => Ok(clone),
        None => {
            crate::setup::refuse_mountpoint_inside(
                "lowerdir",
                dir,
                &crate::setup::canonical(dir),
                mountpoint,
            )
            .map_err(|m| fail(Errno::EINVAL, m))?;
            Ok(fd)
        }
    }
}

/// `plyfs layer add`: `dir` becomes the top lower layer.
pub fn add(fs: &Arc<Plyfs>, dir: &Path) -> Result<String, Failure> {
    let _g = fs.lowers.change.lock();
    let meta = fs.live.mount.get().cloned().unwrap_or_default();
    let cur = fs.lowers.load();
    if cur.len() >= MAX_LOWERS {
        return Err(fail(
            Errno::EINVAL,
            format!("the mount has {MAX_LOWERS} lower layers already, the most it may have"),
        ));
    }
    let fd = open_layer(dir, &meta.mountpoint)?;
    let st = sys::fs::fstat(fd.as_fd()).map_err(|e| {
        fail(
            e,
            format!(
                "cannot stat {}: {}",
                dir.display(),
                crate::setup::describe(e)
            ),
        )
    })?;
    let canon = crate::setup::canonical(dir);
    for l in cur.iter() {
        if (l.root.dev, l.root.ino) == (st.dev, st.ino) {
            return Err(fail(
                Errno::EEXIST,
                format!(
                    "{} is a lower layer already (as {})",
                    dir.display(),
                    l.path.display()
                ),
            ));
        }
        let cl = crate::setup::canonical(&l.path);
        if crate::setup::within(&canon, &cl) || crate::setup::within(&cl, &canon) {
            return Err(fail(
                Errno::EINVAL,
                format!(
                    "{} and lower layer {} overlap (one is inside the other)",
                    dir.display(),
                    l.path.display()
                ),
            ));
        }
    }
    let mut others: Vec<(&str, PathBuf)> = vec![("mountpoint", meta.mountpoint.clone())];
    if let Some(u) = &fs.upper {
        others.push(("upperdir", u.path.clone()));
    }
    if let Some(w) = &meta.work {
        others.push(("workdir", w.clone()));
    }
    for (what, p) in others {
        let cp = crate::setup::canonical(&p);
        if what == "mountpoint" {
            // A layer holding the mount (as at mount time) needs a private
            // clone, checked above; the mount inside the layer is not.
            if crate::setup::within(&canon, &cp) {
                return Err(fail(
                    Errno::EINVAL,
                    format!(
                        "{} lies inside the mountpoint {}",
                        dir.display(),
                        p.display()
                    ),
                ));
            }
            continue;
        }
        if crate::setup::within(&canon, &cp) || crate::setup::within(&cp, &canon) {
            return Err(fail(
                Errno::EINVAL,
                format!(
                    "{} and {what} {} must not be inside each other",
                    dir.display(),
                    p.display()
                ),
            ));
        }
    }
    let id = cur
        .id_above()
        .ok_or_else(|| fail(Errno::EOVERFLOW, "no layer ids left"))?;
    let dirfd =
        sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            fail(
                e,
                format!(
                    "cannot read {}: {}",
                    dir.display(),
                    crate::setup::describe(e)
                ),
            )
        })?;
    let layer = LowerLayer {
        path: dir.to_path_buf(),
        fs_magic: sys::fs::fs_type(fd.as_fd()).unwrap_or(0),
        uuid: sys::handle::fs_uuid(dirfd.as_fd()),
        root: Arc::new(
            LowerObj::root(id, fd, dir.to_path_buf())
                .map_err(|e| fail(e, format!("cannot stat {}", dir.display())))?,
        ),
    };
    let mut layers = vec![layer];
    layers.extend(cur.iter().cloned());
    let new = apply(fs, layers, Change::Added(id));
    log::info!(
        "added lower layer {} on top ({} lower layers)",
        dir.display(),
        new.len()
    );
    Ok(format!(
        "added {} as the top lower layer ({} lower layers)",
        dir.display(),
        new.len()
    ))
}

/// `plyfs layer remove`: `dir` (a lower layer, by identity or path) leaves.
pub fn remove(fs: &Arc<Plyfs>, dir: &Path) -> Result<String, Failure> {
    let _g = fs.lowers.change.lock();
    let cur = fs.lowers.load();
    let ident = std::fs::metadata(dir).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    });
    let canon = crate::setup::canonical(dir);
    let layer = cur
        .iter()
        .find(|l| ident == Some((l.root.dev, l.root.ino)))
        .or_else(|| {
            cur.iter()
                .find(|l| l.path == dir || crate::setup::canonical(&l.path) == canon)
        })
        .ok_or_else(|| {
            fail(
                Errno::ENOENT,
                format!("{} is not a lower layer of this mount", dir.display()),
            )
        })?;
    if cur.len() == 1 {
        return Err(fail(
            Errno::EINVAL,
            "the only lower layer cannot be removed",
        ));
    }
    let id = layer.root.layer();
    let path = layer.path.clone();
    if let Some(what) = in_use(fs, id) {
        return Err(fail(
            Errno::EBUSY,
            format!("{} is in use: {what}", path.display()),
        ));
    }
    let layers: Vec<LowerLayer> = cur
        .iter()
        .filter(|l| l.root.layer() != id)
        .cloned()
        .collect();
    drop(cur);
    let new = apply(fs, layers, Change::Removed(id));
    log::info!(
        "removed lower layer {} ({} lower layers)",
        path.display(),
        new.len()
    );
    Ok(format!(
        "removed {} ({} lower layers)",
        path.display(),
        new.len()
    ))
}

/// What of layer `id` is open, if anything.
fn in_use(fs: &Plyfs, id: usize) -> Option<String> {
    let (files, dirs) = fs.handles.all();
    let open_files = files
        .iter()
        .filter(|f| !f.is_on_upper() && f.node.state.read().lowers.top_layer() == Some(id))
        .count();
    let open_dirs = dirs
        .iter()
        .filter(|d| d.node.state.read().lowers.has_layer(id))
        .count();
    match (open_files, open_dirs) {
        (0, 0) => None,
        (f, 0) => Some(format!("{f} open file(s)")),
        (0, d) => Some(format!("{d} open director(ies)")),
        (f, d) => Some(format!("{f} open file(s), {d} open director(ies)")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Added(usize),
    Removed(usize),
}

impl Change {
    fn layer(self) -> usize {
        match self {
            Change::Added(id) | Change::Removed(id) => id,
        }
    }
}

/// Installs the new list and brings nodes and the kernel up to date.
fn apply(fs: &Plyfs, layers: Vec<LowerLayer>, change: Change) -> Arc<Lowers> {
    let dirs = fs.table.dirs();
    fs.lowers.stale_dirs.fill(&dirs);
    // What the kernel may cache by name, before names change.
    let before: Vec<Before> = fs
        .table
        .nodes()
        .into_iter()
        .map(|n| {
            let s = n.state.read();
            let (l, a) = (s.lowers.to_vec(n.kind), s.aliases.to_vec());
            drop(s);
            (n, l, a)
        })
        .collect();
    let new = fs.lowers.replace(layers);
    for d in &dirs {
        fs.refresh(d);
    }
    if let Change::Removed(id) = change {
        // Let go of the removed layer's objects now.
        for (n, lowers, _) in &before {
            if lowers.iter().any(|l| l.layer() == id) {
                fs.refresh(n);
            }
        }
        fs.link_maps.remove(&id);
    }
    fs.lowers.stale_dirs.clear();
    invalidate(fs, &before, change);
    new
}

/// Drops what the kernel caches that the change made stale (see the
/// module comment).
fn invalidate(fs: &Plyfs, before: &[Before], change: Change) {
    if !fs.kernel.connected() {
        return;
    }
    let id = change.layer();
    let all = fs.kernel.all_entries_changed();
    for (n, lowers, aliases) in before {
        if n.is_dir() {
            fs.kernel.dir_changed(n.ino);
        }
        // Entries of a removed layer's objects go now (not on their next
        // use), so that the kernel forgets them and their descriptors close.
        let removed_here = change == Change::Removed(id) && lowers.iter().any(|l| l.layer() == id);
        if !all || removed_here {
            for a in aliases {
                fs.kernel.entry_changed(a.parent, &a.name);
            }
        }
    }
    if all {
        return;
    }
    // Without the epoch: names the kernel may have cached as missing that
    // may exist now, from the changed layer's directories.
    for (n, old, _) in before.iter().filter(|(n, _, _)| n.is_dir()) {
        let new = n.state.read().lowers.to_vec(n.kind);
        let stack = match change {
            Change::Added(_) => &new,
            Change::Removed(_) => old,
        };
        let Some(obj) = stack.iter().find(|l| l.layer() == id) else {
            continue;
        };
        let mut names = dir_names(obj);
        if obj.dir_info().is_ok_and(|i| i.opaque) && matches!(change, Change::Removed(_)) {
            for l in new.iter() {
                names.extend(dir_names(l));
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            fs.kernel.entry_changed(n.ino, &name);
        }
    }
}

/// Names in a lower directory, OCI whiteouts as the names they hide.
fn dir_names(obj: &Arc<LowerObj>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(fd) = obj.dir_fd() else {
        return out;
    };
    let Ok(d) = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0) else {
        return out;
    };
    let _ = sys::dirent::read_dir(d.as_fd(), |e| match crate::whiteout::oci_name(&e.name) {
        crate::whiteout::OciName::Whiteout(t) => out.push(t.to_vec()),
        crate::whiteout::OciName::Plain => out.push(e.name),
        _ => {}
    });
    out
}

impl Plyfs {
    /// Brings `node`'s lower objects up to date after a change of the lower
    /// layers (nothing to do, one atomic load, when there was none). Stale
    /// ancestors first, iteratively.
    pub fn refresh(&self, node: &Node) {
        let cur = self.lowers.generation();
        if cur == 0 || node.state.read().layers_gen >= cur {
            return;
        }
        let mut chain: Vec<Arc<Node>> = Vec::new();
        if node.ino != crate::ino::ROOT {
            let mut next = self.parent_of(node).ok().map(|(p, _)| p);
            while let Some(p) = next {
                if p.state.read().layers_gen >= cur || chain.len() > self.table.len() {
                    break;
                }
                next = if p.ino == crate::ino::ROOT {
                    None
                } else {
                    self.parent_of(&p).ok().map(|(p, _)| p)
                };
                chain.push(p);
            }
        }
        while let Some(p) = chain.pop() {
            self.refresh_one(&p);
        }
        self.refresh_one(node);
    }

    fn refresh_one(&self, node: &Node) {
        let lowers = self.lowers.load();
        let generation = lowers.generation;
        let (upper, aliases, unlinked) = {
            let s = node.state.read();
            if s.layers_gen >= generation {
                return;
            }
            (s.upper, s.aliases.clone(), s.unlinked)
        };
        if node.ino == crate::ino::ROOT {
            let mut s = node.state.write();
            if s.layers_gen < generation {
                if !s.opaque {
                    let roots: Vec<Arc<LowerObj>> = lowers.iter().map(|l| l.root.clone()).collect();
                    s.lowers = roots.into();
                    s.stack_checked = false;
                }
                s.layers_gen = generation;
            }
            drop(s);
            node.touch_version();
            return;
        }
        if unlinked || (!node.is_dir() && upper.is_some()) {
            // Its names, if any, show its upper object whatever the lower
            // layers: only objects of removed layers go.
            let mut s = node.state.write();
            keep_present(&mut s.lowers, node.kind, &lowers);
            s.layers_gen = s.layers_gen.max(generation);
            return;
        }
        let mut found: Option<Found> = None;
        let mut lost: Vec<Alias> = Vec::new();
        for a in aliases {
            let Some(parent) = self.table.get(a.parent) else {
                continue;
            };
            let Ok(name) = Name::new(&a.name) else {
                continue;
            };
            match self.resolve(&parent, &name) {
                Ok(Lookup::Found(f)) if same_object(node, &f) => {
                    found.get_or_insert(f);
                }
                Ok(_) => lost.push(a),
                Err(e) => log::debug!("cannot resolve {name:?} again for {node:?}: {e:?}"),
            }
        }
        let mut alias_top = None;
        let mut s = node.state.write();
        if s.layers_gen >= generation {
            return;
        }
        s.aliases.retain(|a| !lost.contains(a));
        match found {
            Some(f) => {
                let old_top = s.lowers.top_ident();
                s.lowers = f.lowers.into();
                s.stack_checked = f.stack_checked;
                let new_top = s.lowers.top_ident();
                if node.is_dir() && upper.is_none() && new_top != old_top {
                    alias_top = new_top;
                }
            }
            None if s.aliases.is_empty() => {
                // Nothing shows this object any more: like a removed name.
                if node.is_dir() {
                    s.unlinked = true;
                    s.lowers = Default::default();
                    s.stack_checked = true;
                } else {
                    // A file hidden by the change, not removed: when a later
                    // change shows it again at a name, that lookup must find
                    // this node (a new node with its number would make the
                    // kernel fail the files still open on it with EIO).
                    keep_present(&mut s.lowers, node.kind, &lowers);
                    s.unlinked = s.lowers.is_empty();
                }
            }
            None => keep_present(&mut s.lowers, node.kind, &lowers),
        }
        s.layers_gen = generation;
        drop(s);
        if let Some(t) = alias_top {
            // Lookups of its name now find its new top directory: same node.
            self.inos.alias(t, node.ino);
        }
        if node.is_dir() {
            node.touch_version();
        }
    }

    /// A lower-only directory about to be remembered while the list is
    /// being changed: if the kernel knew it before, its old node takes the
    /// new objects (so the directory keeps one node and its number).
    pub fn adopt_stale_dir(&self, parent: &Node, name: &Name, f: &Found) {
        if !f.is_dir() || f.upper.is_some() {
            return;
        }
        let Some(node) = self.lowers.stale_dirs.take(parent.ino, name.as_bytes()) else {
            return;
        };
        if node.is_dir() && !node.has_upper() {
            self.take_found(&node, f);
        }
    }

    /// `f` was just found for `node`: a node from an older list of lower
    /// layers takes its objects.
    pub fn note_found(&self, node: &Node, f: &Found) {
        if f.generation > node.state.read().layers_gen && same_object(node, f) {
            self.take_found(node, f);
        }
    }

    fn take_found(&self, node: &Node, f: &Found) {
        let mut s = node.state.write();
        if s.layers_gen >= f.generation {
            return;
        }
        let old_top = s.lowers.top_ident();
        s.lowers = f.lowers.clone().into();
        s.stack_checked = f.stack_checked;
        s.layers_gen = f.generation;
        let new_top = s.lowers.top_ident();
        let lower_dir = node.is_dir() && s.upper.is_none();
        drop(s);
        if lower_dir
            && new_top != old_top
            && let Some(t) = new_top
        {
            self.inos.alias(t, node.ino);
        }
        if node.is_dir() {
            node.touch_version();
        }
    }
}

/// Drops lower objects of layers no longer in `lowers`.
fn keep_present(stack: &mut crate::node::Lowers, kind: u32, lowers: &Lowers) {
    stack.retain(kind, |l| lowers.position(l.layer()).is_some());
}

/// Whether `f`, found at one of `node`'s names, is still the object the
/// node stands for. Directories follow their names; a lower-only file is
/// the same while the same lower file shows.
fn same_object(node: &Node, f: &Found) -> bool {
    if node.kind != f.kind {
        return false;
    }
    let s = node.state.read();
    if node.is_dir() {
        return s.upper.get() == f.upper;
    }
    match (s.upper.get(), f.upper) {
        (Some(a), Some(b)) => a == b,
        (None, None) => s.lowers.top_ident() == f.lowers.first().map(|l| (l.dev, l.ino)),
        // Copied up through another name meanwhile: still this object.
        (None, Some(_)) => true,
        (Some(_), None) => false,
    }
}
