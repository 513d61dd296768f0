//! The union filesystem's shared state and the helpers every operation
//! uses: finding nodes, reaching their real objects, and reporting
//! attributes. The operations themselves live in `ops/`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use crate::attr::FileAttr;

use crate::attr::{self, AttrOpts};
use crate::fdcache::FdHolder;
use crate::handles::Handles;
use crate::idmap::IdMap;
use crate::ino::{self, InoMap};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::{Alias, Ident, Node, NodeState, Stack};
use crate::ovl_xattr::Prefix;
use crate::sys::{self, Errno, fs::Stat};
use crate::table::Table;
use crate::workdir::WorkDir;

pub type Result<T> = std::result::Result<T, Errno>;

/// A directory entry position: (directory descriptor, name in it).
pub type Place = (Arc<OwnedFd>, Name);

/// Behaviour fixed at mount time.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kernel overlayfs features in effect (metacopy, index, ...).
    pub features: crate::features::Features,
    /// Prefix of the overlay markers this mount writes.
    pub prefix: Prefix,
    /// Skip fsync (podman's `volatile`).
    pub volatile: bool,
    /// Entry and attribute cache timeout handed to the kernel.
    pub ttl: Duration,
    /// The daemon may change file owners (it is root, perhaps in a user
    /// namespace).
    pub can_chown: bool,
    pub euid: u32,
    pub egid: u32,
    pub uids: IdMap,
    pub gids: IdMap,
    pub static_nlink: bool,
    pub noacl: bool,
    pub xattr_permissions: u8,
    /// What renaming a directory with lower content does.
    pub redirect: crate::options::RedirectMode,
    /// `passthrough=`/`writeback=` from the command line (None: automatic).
    pub passthrough: Option<crate::options::Passthrough>,
    pub writeback: Option<bool>,
    /// `xino=`: tag inode numbers with their filesystem (see `ino`).
    pub xino: crate::options::Xino,
}

impl Config {
    pub fn follow_redirects(&self) -> bool {
        self.redirect != crate::options::RedirectMode::NoFollow
    }
}

/// The writable layer and its work directory.
pub struct UpperLayer {
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    pub work: WorkDir,
    /// In-use locks on the upper and work directories (see `setup`).
    pub in_use: Vec<OwnedFd>,
}

/// One read-only layer.
#[derive(Clone)]
pub struct LowerLayer {
    pub path: PathBuf,
    pub root: Arc<LowerObj>,
    pub fs_magic: i64,
    pub uuid: [u8; 16],
}

pub struct Plyfs {
    pub cfg: Config,
    pub upper: Option<UpperLayer>,
    /// The lower layers, top first (changed live by `plyfs layer`).
    pub lowers: crate::lowerset::LowerSet,
    /// Data-only lower layers: reached only through absolute redirects of
    /// metacopy files (see `metacopy`).
    pub data_layers: Vec<LowerLayer>,
    /// The inode index (`WORKDIR/index`), when in use (see `index`).
    pub index: Option<crate::index::IndexDir>,
    pub table: Table,
    pub inos: InoMap,
    pub handles: Handles,
    /// Per lower layer: its multiply-linked files (see `hardlinks`).
    pub link_maps: dashmap::DashMap<usize, Arc<crate::hardlinks::LinkMap>>,
    /// I/O modes negotiated with the kernel.
    pub io: crate::tuning::IoModes,
    /// Whether readdirplus entries carry attributes (see `rdplus`).
    pub plus: crate::rdplus::PlusPolicy,
    /// Invalidates attributes the kernel caches (see `inval`).
    pub kernel: crate::inval::KernelCache,
    /// Recently read directory listings (see `listcache`).
    pub listings: crate::listcache::ListingCache,
    /// `size=`/`inodes=`: the upper layer's limit and usage (see `quota`).
    pub quota: Option<crate::quota::Quota>,
    /// What `plyfs status` reports about the live mount (see `status`).
    pub live: crate::status::LiveInfo,
}

impl Plyfs {
    /// Builds the filesystem over opened layers and installs the root node.
    pub fn new(
        cfg: Config,
        upper: Option<UpperLayer>,
        lowers: Vec<LowerLayer>,
        ino32: bool,
    ) -> Result<Plyfs> {
        let mut devs = Vec::new();
        if let Some(u) = &upper {
            devs.push(u.dev);
        }
        devs.extend(lowers.iter().map(|l| l.root.dev));
        let tag = cfg.xino != crate::options::Xino::Off;
        let fs = Plyfs {
            cfg,
            upper,
            lowers: crate::lowerset::LowerSet::new(lowers),
            data_layers: Vec::new(),
            index: None,
            table: Table::new(),
            inos: InoMap::new(&devs, ino32, tag),
            handles: Handles::new(),
            link_maps: dashmap::DashMap::new(),
            io: Default::default(),
            plus: Default::default(),
            kernel: Default::default(),
            listings: Default::default(),
            quota: None,
            live: Default::default(),
        };
        let root = fs.make_root()?;
        fs.table.insert_pinned(root);
        Ok(fs)
    }

    fn make_root(&self) -> Result<Arc<Node>> {
        let mut state = NodeState::default();
        let mut lowers: Vec<Arc<LowerObj>> =
            self.lowers.load().iter().map(|l| l.root.clone()).collect();
        if let Some(u) = &self.upper {
            let st = sys::fs::fstat(u.root.as_fd())?;
            state.upper = Some((st.dev, st.ino)).into();
            let dir = sys::fs::open_dir_here(u.root.as_fd())?;
            let m = crate::lower::root_markers(dir.as_fd(), &[self.cfg.prefix]);
            state.opaque = m.opaque == crate::whiteout::OpaqueValue::Opaque;
            state.impure = m.impure;
            state.xattr_whiteouts = m.opaque == crate::whiteout::OpaqueValue::XattrWhiteouts;
            if state.opaque {
                lowers.clear();
            }
        }
        state.lowers = lowers.into();
        let node = Arc::new(Node::new(ino::ROOT, libc::S_IFDIR, state));
        if let Some(u) = &self.upper {
            let weak: Weak<dyn FdHolder> = Arc::downgrade(&node) as Weak<dyn FdHolder>;
            let fd = sys::fs::dup(u.root.as_fd())?;
            node.upper_fd().fill(fd, weak, None);
        }
        Ok(node)
    }

    pub fn read_only(&self) -> bool {
        self.upper.is_none()
    }

    /// Filesystem types (f_type) of all layers.
    pub fn layer_fs_types(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lowers.load().iter().map(|l| l.fs_magic).collect();
        if let Some(u) = &self.upper {
            v.push(sys::fs::fs_type(u.root.as_fd()).unwrap_or(0));
        }
        v
    }

    /// EROFS on a mount without an upper layer.
    pub fn upper_layer(&self) -> Result<&UpperLayer> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    pub fn work(&self) -> Result<&WorkDir> {
        Ok(&self.upper_layer()?.work)
    }

    /// The node the kernel calls `ino`, with its lower objects brought
    /// up to date after a change of the lower layers (see `layers_live`).
    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        let node = self.table.get(ino).ok_or(Errno::ENOENT)?;
        self.refresh(&node);
        Ok(node)
    }

    /// `O_PATH` descriptor of a node's upper directory (which must exist),
    /// reopened from its parent by name when it is not cached.
    ///
    /// Iterative: evicted ancestors are reopened top-down from the nearest
    /// one still cached, so any directory depth works on a thread's stack.
    pub fn upper_dir_fd(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = node.upper_fd().get() {
            return Ok(fd);
        }
        if node.ino == ino::ROOT {
            return Ok(self.upper_layer()?.root.clone());
        }
        // Directories have exactly one name: walk up to the nearest cached
        // ancestor, remembering the names on the way.
        let mut chain: Vec<(Arc<Node>, Name, Arc<Node>)> = Vec::new();
        let mut cur = node.clone();
        let mut fd = loop {
            let (parent, name) = self.parent_of(&cur)?;
            chain.push((cur, name, parent.clone()));
            if let Some(fd) = parent.upper_fd().get() {
                break fd;
            }
            if parent.ino == ino::ROOT {
                break self.upper_layer()?.root.clone();
            }
            if chain.len() > self.table.len() {
                // Names that loop: a bookkeeping error, never a real tree.
                log::warn!("the names of {node:?} form a loop");
                return Err(Errno::ELOOP);
            }
            cur = parent;
        };
        while let Some((dir, name, parent)) = chain.pop() {
            fd = self.reopen_upper_dir(&dir, &fd, &name, &parent)?;
        }
        Ok(fd)
    }

    /// Opens the upper directory of `node` as `name` in `pfd`, checks it is
    /// still the node's own, and caches it.
    fn reopen_upper_dir(
        &self,
        node: &Arc<Node>,
        pfd: &OwnedFd,
        name: &Name,
        parent: &Arc<Node>,
    ) -> Result<Arc<OwnedFd>> {
        let fd = sys::fs::open_dir_path(pfd.as_fd(), name.as_cstr())?;
        if node.upper_fd().filled_once() {
            let st = sys::fs::fstat(fd.as_fd())?;
            if node.state.read().upper.get() != Some((st.dev, st.ino)) {
                log::warn!("upper directory of {node:?} changed under the mount");
                return Err(Errno::ESTALE);
            }
        }
        let weak: Weak<dyn FdHolder> = Arc::downgrade(node) as Weak<dyn FdHolder>;
        let pweak: Weak<dyn FdHolder> = Arc::downgrade(parent) as Weak<dyn FdHolder>;
        Ok(node.upper_fd().fill(fd, weak, Some(pweak)))
    }

    /// Parent upper directory and name of a node's upper object. Names of
    /// non-directories are checked against the node's identity (a name may
    /// have been unlinked or reused by another thread meanwhile); a
    /// directory's single name is kept exact by rename and rmdir.
    pub fn upper_loc(&self, node: &Node) -> Result<(Arc<OwnedFd>, Name)> {
        if node.is_dir() {
            return self.upper_alias(node);
        }
        self.upper_named(node).map(|(pfd, name, _)| (pfd, name))
    }

    /// Like [`Plyfs::upper_loc`] for non-directories, with the object's
    /// stat. ENOENT when no name of the node shows its upper object.
    pub fn upper_named(&self, node: &Node) -> Result<(Arc<OwnedFd>, Name, Stat)> {
        let (want, places) = self.upper_places(node)?;
        for (pfd, name) in places {
            match sys::fs::lstatat(pfd.as_fd(), name.as_cstr()) {
                Ok(st) if (st.dev, st.ino) == want => return Ok((pfd, name, st)),
                Ok(_) => continue,
                Err(e) if e.code() == libc::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ENOENT)
    }

    /// The node's upper identity and the (upper parent, name) places where
    /// its names say it is, unchecked.
    fn upper_places(&self, node: &Node) -> Result<(Ident, Vec<Place>)> {
        let (want, aliases) = {
            let s = node.state.read();
            (s.upper.get().ok_or(Errno::ENOENT)?, s.aliases.clone())
        };
        let mut places = Vec::with_capacity(aliases.len());
        for a in aliases {
            let Some(parent) = self.table.get(a.parent) else {
                continue;
            };
            let Ok(pfd) = self.upper_dir_fd(&parent) else {
                continue;
            };
            places.push((pfd, Name::new(&a.name)?));
        }
        // A hard link copied up through the index, at none of these names.
        places.extend(self.index_place(want));
        Ok((want, places))
    }

    /// The pinned descriptor of a node whose names are all gone.
    pub fn pinned(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        node.pin()
    }

    /// Opens a node's upper regular file by one of its names, checking it is
    /// the node's own file, or through its pinned descriptor.
    pub fn open_upper(&self, node: &Node, flags: i32) -> Result<OwnedFd> {
        let (want, places) = self.upper_places(node)?;
        for (pfd, name) in places {
            // O_NONBLOCK: should the name now be a FIFO, do not hang on it.
            match sys::fs::openat(pfd.as_fd(), name.as_cstr(), flags | libc::O_NONBLOCK, 0) {
                Ok(fd) => {
                    let st = sys::fs::fstat(fd.as_fd())?;
                    if (st.dev, st.ino) == want {
                        return Ok(fd);
                    }
                }
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENXIO | libc::ELOOP) => {}
                Err(e) => return Err(e),
            }
        }
        match self.pinned(node) {
            Some(pin) => sys::fs::reopen(pin.as_fd(), flags),
            None => Err(Errno::ENOENT),
        }
    }

    /// Parent upper directory and name of a node, unchecked: the first of
    /// its names whose parent is still known.
    fn upper_alias(&self, node: &Node) -> Result<(Arc<OwnedFd>, Name)> {
        let aliases = node.state.read().aliases.clone();
        let mut last = Errno::ENOENT;
        for a in aliases {
            let Some(parent) = self.table.get(a.parent) else {
                continue;
            };
            match self.upper_dir_fd(&parent) {
                Ok(pfd) => return Ok((pfd, Name::new(&a.name)?)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A name of `node` whose parent node is known: (parent, name).
    pub fn parent_of(&self, node: &Node) -> Result<(Arc<Node>, Name)> {
        let aliases = node.state.read().aliases.clone();
        for a in aliases {
            if let Some(parent) = self.table.get(a.parent) {
                return Ok((parent, Name::new(&a.name)?));
            }
        }
        Err(Errno::ENOENT)
    }

    /// The lower directories merged below `node`, with lower opaque markers
    /// applied (done once per node, lazily for nodes made from listings).
    pub fn dir_stack(&self, node: &Node) -> Result<Stack> {
        self.refresh(node);
        let (stack, checked) = {
            let s = node.state.read();
            (s.lowers.stack(), s.stack_checked)
        };
        if checked || stack.is_empty() {
            return Ok(stack);
        }
        let mut trimmed: Vec<Arc<LowerObj>> = Vec::with_capacity(stack.len());
        let mut redirected = false;
        for l in stack.iter() {
            trimmed.push(l.clone());
            let info = l.dir_info()?;
            if info.opaque {
                break;
            }
            if info.redirect.is_some() && self.cfg.follow_redirects() {
                redirected = true;
                break;
            }
        }
        if redirected {
            // The stack came from matching names in a listing, but a lower
            // directory redirects the layers below it: look it up properly.
            let (parent, name) = self.parent_of(node)?;
            let f = self.resolve_found(&parent, &name)?;
            trimmed = f.lowers;
        }
        let trimmed: Stack = trimmed.into();
        let mut s = node.state.write();
        if !s.stack_checked {
            s.lowers = trimmed.clone().into();
            s.stack_checked = true;
        }
        Ok(s.lowers.stack())
    }

    /// Where a directory's lower content lives, as an absolute path in the
    /// lower layers (`/a/b`; empty for the root). Follows the redirects of
    /// the directory and its ancestors, as the kernel does when it computes
    /// an absolute redirect.
    pub fn lower_path(&self, node: &Arc<Node>) -> Result<Vec<u8>> {
        // Components from `node` upwards, until the root or an absolute
        // redirect gives the start of the path.
        let mut comps: Vec<Box<[u8]>> = Vec::new();
        let mut base: Vec<u8> = Vec::new();
        let mut cur = node.clone();
        while cur.ino != ino::ROOT {
            let redirect = cur.redirect();
            let alias = cur.primary_alias().ok_or(Errno::ENOENT)?;
            if let Some(r) = redirect.as_deref().filter(|r| r.first() == Some(&b'/')) {
                base = r.to_vec();
                break;
            }
            comps.push(redirect.unwrap_or_else(|| alias.name.as_bytes().into()));
            if comps.len() > self.table.len() {
                return Err(Errno::ELOOP);
            }
            cur = self.node(alias.parent)?;
        }
        for c in comps.iter().rev() {
            base.push(b'/');
            base.extend_from_slice(c);
        }
        Ok(base)
    }

    /// Fresh `lstat` of the object a node currently stands for.
    pub fn real_stat(&self, node: &Arc<Node>) -> Result<Stat> {
        let (has_upper, top_lower) = {
            let s = node.state.read();
            (s.upper.is_some(), s.lowers.top(node.kind))
        };
        if has_upper {
            if node.is_dir() {
                return match self.upper_dir_fd(node) {
                    Ok(fd) => sys::fs::fstat(fd.as_fd()),
                    // A removed directory still open somewhere.
                    Err(e) if e.code() == libc::ENOENT => match self.pinned(node) {
                        Some(pin) => sys::fs::fstat(pin.as_fd()),
                        None => Err(e),
                    },
                    Err(e) => Err(e),
                };
            }
            return match self.upper_named(node) {
                Ok((_, _, st)) => Ok(st),
                Err(e) if e.code() == libc::ENOENT => match self.pinned(node) {
                    Some(pin) => sys::fs::fstat(pin.as_fd()),
                    None => Err(e),
                },
                Err(e) => Err(e),
            };
        }
        match top_lower {
            Some(l) => l.stat(),
            None => Err(Errno::ENOENT),
        }
    }

    /// Whether a directory node merges several layers (for st_nlink).
    pub fn is_merged_dir(&self, node: &Node) -> Result<bool> {
        if !node.is_dir() {
            return Ok(false);
        }
        let (upper, n) = {
            let s = node.state.read();
            (s.upper.is_some(), s.lowers.len())
        };
        Ok(match (upper, n) {
            (true, n) => n > 0,
            (false, 0 | 1) => false,
            (false, _) => self.dir_stack(node)?.len() > 1,
        })
    }

    pub fn attr_opts(&self) -> AttrOpts<'_> {
        AttrOpts {
            uids: &self.cfg.uids,
            gids: &self.cfg.gids,
            static_nlink: self.cfg.static_nlink,
        }
    }

    /// Attributes of a node from a fresh stat of its real object.
    pub fn node_attr(&self, node: &Arc<Node>) -> Result<FileAttr> {
        let st = self.real_stat(node)?;
        self.attr_from(node, &st)
    }

    pub fn attr_from(&self, node: &Arc<Node>, st: &Stat) -> Result<FileAttr> {
        let merged = self.is_merged_dir(node)?;
        let mut st = *st;
        // Blocks of a metacopy file's data; nlink of an indexed hard link.
        self.metacopy_stat(node, &mut st);
        self.index_stat(node, &mut st);
        if self.cfg.xattr_permissions > 0 {
            self.apply_override(node, &mut st)?;
        }
        Ok(attr::make(node.ino, &st, merged, &self.attr_opts()))
    }

    /// Records that `node` is reachable as `name` in `parent`.
    pub fn add_alias(&self, node: &Node, parent: u64, name: &Name) {
        node.add_alias(Alias {
            parent,
            name: name.as_bytes().into(),
        });
    }
}
