//! Merged-view inodes.
//!
//! A node is one object of the merged tree as the kernel knows it (one FUSE
//! node id, which fuser also reports as st_ino). It records where its
//! content lives: an upper object and/or a stack of lower objects. Upper
//! objects are found through the node's names (an upper entry always sits at
//! the same name as in the merged view); lower objects carry their own way
//! back to their layer root.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::fdcache::{FdHolder, FdSlot};
use crate::lower::LowerObj;

/// Identity of a real object: (st_dev, st_ino).
pub type Ident = (u64, u64);

/// A name of a node in the merged tree: (parent node id, entry name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub parent: u64,
    pub name: Box<[u8]>,
}

#[derive(Debug, Default)]
pub struct NodeState {
    /// Names this node is known under. Directories have exactly one.
    pub aliases: Vec<Alias>,
    /// The upper object, once the node exists in the upper layer.
    pub upper: Option<Ident>,
    /// Directories: the lower directories merged below the upper one, top
    /// first. Non-directories: the lower object the node came from (its
    /// origin), if any.
    pub lowers: Arc<[Arc<LowerObj>]>,
    /// Directories whose stack came from a listing still need their lower
    /// opaque markers applied before the stack is used.
    pub stack_checked: bool,
    /// The upper directory is opaque (`overlay.opaque=y`).
    pub opaque: bool,
    /// The upper directory holds entries copied up or moved in
    /// (`overlay.impure=y`); their st_ino comes from `overlay.origin`.
    pub impure: bool,
    /// Upper directory may contain xattr whiteouts (`overlay.opaque=x`).
    pub xattr_whiteouts: bool,
    /// `overlay.redirect` of the upper directory: where its lower content
    /// lives (a name in the parent's lower directories, or `/a/b`).
    pub redirect: Option<Box<[u8]>>,
    /// The object has no name left in the merged tree.
    pub unlinked: bool,
    /// Generation of the lower-layer list `lowers` was found with (see
    /// `layers_live`); 0: the list at mount, or not known.
    pub layers_gen: u64,
}

pub struct Node {
    pub ino: u64,
    pub generation: u64,
    /// `S_IFMT` bits of the merged object; fixed for the node's life.
    pub kind: u32,
    pub state: RwLock<NodeState>,
    /// Cached `O_PATH` descriptor of the upper directory.
    pub upper_fd: FdSlot,
    /// Serialises copy-up of this node.
    pub copy_lock: Mutex<()>,
    /// Serialises changes to this directory's upper entries. May be taken
    /// while holding a child's `copy_lock`, never the other way round.
    pub dir_lock: Mutex<()>,
    /// Bumped on every change of a directory's entries (listing caches).
    pub version: AtomicU64,
    /// The real object of a node whose last name was removed while the
    /// kernel still references it (see `Plyfs::pin_inode`).
    pub pin: Mutex<Option<Arc<std::os::fd::OwnedFd>>>,
    /// Directories: the current merged listing, shared by open handles.
    pub listing: Mutex<Option<Arc<crate::listing::Listing>>>,
    /// Attributes the kernel keeps asking for (see `xattr_probe_bit`) known
    /// to be absent; cleared by any xattr change through plyfs.
    pub xattr_absent: std::sync::atomic::AtomicU8,
    /// Directories: the current listing gave names-only entries.
    pub lazy_listed: std::sync::atomic::AtomicBool,
    /// Immutable/append-only protection, once known (see `ops::fileattr`).
    pub prot: std::sync::atomic::AtomicU8,
    /// How the open handles of a regular file do I/O (see `tuning`).
    pub io: Mutex<crate::tuning::NodeIo>,
}

impl FdHolder for Node {
    fn slot(&self) -> &FdSlot {
        &self.upper_fd
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({}, kind {:o})", self.ino, self.kind)
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl Node {
    pub fn new(ino: u64, kind: u32, state: NodeState) -> Node {
        Node {
            ino,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            kind,
            state: RwLock::new(state),
            upper_fd: FdSlot::empty(),
            copy_lock: Mutex::new(()),
            dir_lock: Mutex::new(()),
            version: AtomicU64::new(0),
            pin: Mutex::new(None),
            listing: Mutex::new(None),
            xattr_absent: std::sync::atomic::AtomicU8::new(0),
            lazy_listed: std::sync::atomic::AtomicBool::new(false),
            prot: std::sync::atomic::AtomicU8::new(0),
            io: Mutex::new(Default::default()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The lower object a non-directory came from, or the top lower
    /// directory of a directory. EIO for a node without lower content.
    pub fn top_lower(&self) -> Result<Arc<LowerObj>, crate::sys::Errno> {
        self.state
            .read()
            .lowers
            .first()
            .cloned()
            // No lower object left: its layer was removed from the live
            // mount after the kernel looked the name up. ESTALE makes the
            // kernel look the name up again and retry (open, stat).
            .ok_or(crate::sys::Errno::ESTALE)
    }

    pub fn has_upper(&self) -> bool {
        self.state.read().upper.is_some()
    }

    pub fn primary_alias(&self) -> Option<Alias> {
        self.state.read().aliases.first().cloned()
    }

    /// Records `alias` as a name of this node (most recent first).
    pub fn add_alias(&self, alias: Alias) {
        let mut s = self.state.write();
        if self.kind == libc::S_IFDIR {
            s.aliases.clear();
            s.aliases.push(alias);
            return;
        }
        if let Some(pos) = s.aliases.iter().position(|a| *a == alias) {
            s.aliases.remove(pos);
        }
        s.aliases.insert(0, alias);
        // Bound the list: the kernel only uses names it looked up recently.
        s.aliases.truncate(16);
    }

    /// Forgets the name `alias`; marks the node unlinked when it was the last.
    pub fn remove_alias(&self, parent: u64, name: &[u8]) {
        let mut s = self.state.write();
        s.aliases
            .retain(|a| !(a.parent == parent && &*a.name == name));
    }

    pub fn touch_version(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }
}
