//! Merged-view inodes.
//!
//! A node is one object of the merged tree as the kernel knows it (one FUSE
//! node id, which fuser also reports as st_ino). It records where its
//! content lives: an upper object and/or a stack of lower objects. Upper
//! objects are found through the node's names (an upper entry always sits at
//! the same name as in the merged view); lower objects carry their own way
//! back to their layer root.
//!
//! There is a node for every object the kernel caches, so a walk of a large
//! tree holds hundreds of thousands of them: a node keeps only what every
//! node needs, inline (one name, one lower object without a separate
//! allocation), and what only directories, open files or unlinked objects
//! need in a [`NodeSide`] allocated on first use.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::fdcache::{FdHolder, FdSlot};
use crate::lower::LowerObj;
use crate::names::NameBuf;

/// Identity of a real object: (st_dev, st_ino).
pub type Ident = (u64, u64);

/// A name of a node in the merged tree: (parent node id, entry name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub parent: u64,
    pub name: NameBuf,
}

/// The names of a node, most recent first: one inline (nearly every node
/// has exactly one), more on the heap.
#[derive(Clone, Debug)]
pub struct Aliases(AliasRepr);

#[derive(Clone, Debug)]
enum AliasRepr {
    One(Alias),
    // A thin pointer, so that `Aliases` is no larger than one `Alias`.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Alias>>),
}

impl Default for Aliases {
    fn default() -> Self {
        Aliases(AliasRepr::Many(Box::default()))
    }
}

impl Aliases {
    pub fn one(alias: Alias) -> Aliases {
        Aliases(AliasRepr::One(alias))
    }

    /// Replaces every name with `alias`.
    pub fn set_only(&mut self, alias: Alias) {
        self.0 = AliasRepr::One(alias);
    }

    /// Puts `alias` first (adding it if new) and keeps at most `max` names.
    pub fn put_first(&mut self, alias: Alias, max: usize) {
        if let AliasRepr::One(a) = &self.0
            && *a == alias
        {
            return;
        }
        let mut v = self.to_vec();
        if let Some(pos) = v.iter().position(|a| *a == alias) {
            v.remove(pos);
        }
        v.insert(0, alias);
        v.truncate(max);
        *self = Aliases::from(v);
    }

    pub fn retain(&mut self, keep: impl FnMut(&Alias) -> bool) {
        let mut v = self.to_vec();
        v.retain(keep);
        *self = Aliases::from(v);
    }
}

impl From<Vec<Alias>> for Aliases {
    fn from(mut v: Vec<Alias>) -> Aliases {
        match v.pop() {
            Some(a) if v.is_empty() => Aliases::one(a),
            Some(a) => {
                v.push(a);
                Aliases(AliasRepr::Many(Box::new(v)))
            }
            None => Aliases::default(),
        }
    }
}

impl std::ops::Deref for Aliases {
    type Target = [Alias];
    fn deref(&self) -> &[Alias] {
        match &self.0 {
            AliasRepr::One(a) => std::slice::from_ref(a),
            AliasRepr::Many(v) => v,
        }
    }
}

impl IntoIterator for Aliases {
    type Item = Alias;
    type IntoIter = std::vec::IntoIter<Alias>;
    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            AliasRepr::One(a) => vec![a].into_iter(),
            AliasRepr::Many(v) => v.into_iter(),
        }
    }
}

/// A directory's lower directories, top first. One is held without a
/// slice of its own; the empty stack is shared.
#[derive(Clone)]
pub struct Stack(StackRepr);

#[derive(Clone)]
enum StackRepr {
    One(Arc<LowerObj>),
    Many(Arc<[Arc<LowerObj>]>),
}

/// The empty stack, shared so that nodes without lower objects (everything
/// created in the upper layer) allocate nothing for it.
static NO_LOWERS: std::sync::LazyLock<Arc<[Arc<LowerObj>]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

impl Default for Stack {
    fn default() -> Self {
        Stack(StackRepr::Many(NO_LOWERS.clone()))
    }
}

impl From<Vec<Arc<LowerObj>>> for Stack {
    fn from(mut v: Vec<Arc<LowerObj>>) -> Stack {
        match v.len() {
            0 => Stack::default(),
            1 => match v.pop() {
                Some(l) => Stack(StackRepr::One(l)),
                None => Stack::default(),
            },
            _ => Stack(StackRepr::Many(v.into())),
        }
    }
}

impl std::ops::Deref for Stack {
    type Target = [Arc<LowerObj>];
    fn deref(&self) -> &[Arc<LowerObj>] {
        match &self.0 {
            StackRepr::One(l) => std::slice::from_ref(l),
            StackRepr::Many(s) => s,
        }
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The lower object of a non-directory, kept inline in its node: most
/// nodes of a walk are lower files, and a [`LowerObj`] of their own would
/// cost them an allocation. Made into one when used (see [`Lowers::top`]).
/// Its device is its parent directory's (a file mounted over from another
/// filesystem is kept as a [`LowerObj`]).
#[derive(Clone)]
struct LowerEntry {
    parent: Arc<LowerObj>,
    name: NameBuf,
    ino: u64,
}

/// The lower objects of a node: a directory's stack, or the one lower
/// object a non-directory came from (its origin), if any.
#[derive(Clone)]
pub struct Lowers(LowersRepr);

#[derive(Clone)]
enum LowersRepr {
    Entry(LowerEntry),
    Stack(Stack),
}

impl Default for Lowers {
    fn default() -> Self {
        Lowers(LowersRepr::Stack(Stack::default()))
    }
}

impl From<Stack> for Lowers {
    fn from(s: Stack) -> Lowers {
        Lowers(LowersRepr::Stack(s))
    }
}

impl From<Vec<Arc<LowerObj>>> for Lowers {
    fn from(v: Vec<Arc<LowerObj>>) -> Lowers {
        if let [l] = v.as_slice()
            && !l.is_dir()
            && let Some(parent) = &l.parent
            && parent.dev == l.dev
        {
            return Lowers(LowersRepr::Entry(LowerEntry {
                parent: parent.clone(),
                name: l.name.clone(),
                ino: l.ino,
            }));
        }
        Lowers(LowersRepr::Stack(v.into()))
    }
}

impl Lowers {
    /// The directory stack (empty for a non-directory).
    pub fn stack(&self) -> Stack {
        match &self.0 {
            LowersRepr::Entry(_) => Stack::default(),
            LowersRepr::Stack(s) => s.clone(),
        }
    }

    /// The top lower object; `kind` is its node's (a non-directory's lower
    /// object has its node's type).
    pub fn top(&self, kind: u32) -> Option<Arc<LowerObj>> {
        match &self.0 {
            LowersRepr::Entry(e) => Some(Arc::new(LowerObj::child(
                &e.parent,
                &e.name,
                e.parent.dev,
                e.ino,
                kind,
            ))),
            LowersRepr::Stack(s) => s.first().cloned(),
        }
    }

    /// Identity of the top lower object.
    pub fn top_ident(&self) -> Option<Ident> {
        match &self.0 {
            LowersRepr::Entry(e) => Some((e.parent.dev, e.ino)),
            LowersRepr::Stack(s) => s.first().map(|l| (l.dev, l.ino)),
        }
    }

    /// Every lower object, made into [`LowerObj`]s (see [`Lowers::top`]).
    pub fn to_vec(&self, kind: u32) -> Vec<Arc<LowerObj>> {
        match &self.0 {
            LowersRepr::Entry(_) => self.top(kind).into_iter().collect(),
            LowersRepr::Stack(s) => s.to_vec(),
        }
    }

    /// Id of the top lower object's layer.
    pub fn top_layer(&self) -> Option<usize> {
        match &self.0 {
            LowersRepr::Entry(e) => Some(e.parent.layer()),
            LowersRepr::Stack(s) => s.first().map(|l| l.layer()),
        }
    }

    /// Whether an object of layer `id` is among them.
    pub fn has_layer(&self, id: usize) -> bool {
        match &self.0 {
            LowersRepr::Entry(e) => e.parent.layer() == id,
            LowersRepr::Stack(s) => s.iter().any(|l| l.layer() == id),
        }
    }

    /// Keeps only the objects `keep` accepts.
    pub fn retain(&mut self, kind: u32, keep: impl Fn(&LowerObj) -> bool) {
        let all = self.to_vec(kind);
        if all.iter().all(|l| keep(l)) {
            return;
        }
        *self = all
            .into_iter()
            .filter(|l| keep(l))
            .collect::<Vec<_>>()
            .into();
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            LowersRepr::Entry(_) => 1,
            LowersRepr::Stack(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Lowers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            LowersRepr::Entry(e) => write!(f, "[{:?} in {:?}, ino {}]", e.name, e.parent, e.ino),
            LowersRepr::Stack(s) => s.fmt(f),
        }
    }
}

/// An optional object identity in 16 bytes rather than 24: a device
/// number of `u64::MAX` (never one Linux encodes) stands for none.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaybeIdent {
    dev: u64,
    ino: u64,
}

impl MaybeIdent {
    const NONE: MaybeIdent = MaybeIdent {
        dev: u64::MAX,
        ino: 0,
    };

    pub fn get(self) -> Option<Ident> {
        (self.dev != u64::MAX).then_some((self.dev, self.ino))
    }

    pub fn is_some(self) -> bool {
        self.dev != u64::MAX
    }

    pub fn is_none(self) -> bool {
        !self.is_some()
    }
}

impl Default for MaybeIdent {
    fn default() -> Self {
        MaybeIdent::NONE
    }
}

impl From<Option<Ident>> for MaybeIdent {
    fn from(i: Option<Ident>) -> MaybeIdent {
        match i {
            // A device number that cannot be told from none is not kept.
            Some((dev, ino)) if dev != u64::MAX => MaybeIdent { dev, ino },
            _ => MaybeIdent::NONE,
        }
    }
}

impl std::fmt::Debug for MaybeIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[derive(Debug, Default)]
pub struct NodeState {
    /// Names this node is known under. Directories have exactly one.
    pub aliases: Aliases,
    /// The upper object, once the node exists in the upper layer.
    pub upper: MaybeIdent,
    /// Directories: the lower directories merged below the upper one, top
    /// first. Non-directories: the lower object the node came from (its
    /// origin), if any.
    pub lowers: Lowers,
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
    /// The object has no name left in the merged tree.
    pub unlinked: bool,
    /// Generation of the lower-layer list `lowers` was found with (see
    /// `layers_live`); 0: the list at mount, or not known.
    pub layers_gen: u64,
}

/// What few nodes need: directories (a cached descriptor, a version for
/// listings), open regular files (their I/O mode) and objects whose last
/// name went while the kernel still holds them (a pin).
#[derive(Default)]
pub struct NodeSide {
    /// Cached `O_PATH` descriptor of the upper directory.
    pub upper_fd: FdSlot,
    /// Bumped on every change of a directory's entries (listing caches).
    pub version: AtomicU64,
    /// Directories: the current listing gave names-only entries.
    pub lazy_listed: AtomicBool,
    /// The real object of a node whose last name was removed while the
    /// kernel still references it (see `Plyfs::pin_inode`).
    pub pin: Mutex<Option<Arc<OwnedFd>>>,
    /// How the open handles of a regular file do I/O (see `tuning`).
    pub io: Mutex<crate::tuning::NodeIo>,
    /// `overlay.redirect` of the upper directory: where its lower content
    /// lives (a name in the parent's lower directories, or `/a/b`). Also
    /// that of a metacopy file (where its data is).
    redirect: Mutex<Option<Box<[u8]>>>,
    /// Regular files: the top object holds metadata only and the data is
    /// elsewhere; `None` once the data is copied up.
    metacopy: Mutex<Option<Arc<crate::metacopy::DataRef>>>,
}

pub struct Node {
    pub ino: u64,
    pub generation: u64,
    /// `S_IFMT` bits of the merged object; fixed for the node's life.
    pub kind: u32,
    /// Attributes the kernel keeps asking for (see `xattr_probe_bit`) known
    /// to be absent; cleared by any xattr change through plyfs.
    pub xattr_absent: AtomicU8,
    /// Immutable/append-only protection, once known (see `ops::fileattr`).
    pub prot: AtomicU8,
    /// Serialises copy-up of this node.
    pub copy_lock: Mutex<()>,
    /// Serialises changes to this directory's upper entries. May be taken
    /// while holding a child's `copy_lock`, never the other way round.
    pub dir_lock: Mutex<()>,
    pub state: RwLock<NodeState>,
    side: once_cell::race::OnceBox<NodeSide>,
}

impl FdHolder for Node {
    fn slot(&self) -> &FdSlot {
        self.upper_fd()
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
            xattr_absent: AtomicU8::new(0),
            prot: AtomicU8::new(0),
            copy_lock: Mutex::new(()),
            dir_lock: Mutex::new(()),
            state: RwLock::new(state),
            side: once_cell::race::OnceBox::new(),
        }
    }

    /// The node's side part, made on first use.
    pub fn side(&self) -> &NodeSide {
        self.side.get_or_init(Box::default)
    }

    /// The side part if it was ever made.
    pub fn side_if_any(&self) -> Option<&NodeSide> {
        self.side.get()
    }

    /// Slot of the cached `O_PATH` descriptor of the upper directory.
    pub fn upper_fd(&self) -> &FdSlot {
        &self.side().upper_fd
    }

    /// Version of a directory's entries (see [`Node::touch_version`]).
    pub fn version(&self) -> u64 {
        self.side_if_any()
            .map_or(0, |s| s.version.load(Ordering::Relaxed))
    }

    /// `overlay.redirect` of the upper directory, if any.
    pub fn redirect(&self) -> Option<Box<[u8]>> {
        self.side_if_any()?.redirect.lock().clone()
    }

    pub fn set_redirect(&self, r: Option<Box<[u8]>>) {
        if r.is_some() || self.side_if_any().is_some() {
            *self.side().redirect.lock() = r;
        }
    }

    /// Where the data of a metacopy file is, while it is one.
    pub fn metacopy(&self) -> Option<Arc<crate::metacopy::DataRef>> {
        self.side_if_any()?.metacopy.lock().clone()
    }

    pub fn set_metacopy(&self, m: Option<Arc<crate::metacopy::DataRef>>) {
        if m.is_some() || self.side_if_any().is_some() {
            *self.side().metacopy.lock() = m;
        }
    }

    /// The pinned real object of a node whose names are all gone.
    pub fn pin(&self) -> Option<Arc<OwnedFd>> {
        self.side_if_any()?.pin.lock().clone()
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
            .top(self.kind)
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
            s.aliases.set_only(alias);
            return;
        }
        // Bound the list: the kernel only uses names it looked up recently.
        s.aliases.put_first(alias, 16);
    }

    /// Forgets the name `alias`; marks the node unlinked when it was the last.
    pub fn remove_alias(&self, parent: u64, name: &[u8]) {
        let mut s = self.state.write();
        s.aliases
            .retain(|a| !(a.parent == parent && &*a.name == name));
    }

    pub fn touch_version(&self) {
        self.side().version.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(parent: u64, name: &[u8]) -> Alias {
        Alias {
            parent,
            name: NameBuf::new(name),
        }
    }

    #[test]
    fn aliases_most_recent_first_and_bounded() {
        let mut a = Aliases::one(alias(1, b"a"));
        a.put_first(alias(1, b"a"), 16);
        assert_eq!(a.len(), 1);
        a.put_first(alias(2, b"b"), 16);
        assert_eq!(a.to_vec(), vec![alias(2, b"b"), alias(1, b"a")]);
        a.put_first(alias(1, b"a"), 16);
        assert_eq!(a.to_vec(), vec![alias(1, b"a"), alias(2, b"b")]);
        for i in 0..40u64 {
            a.put_first(alias(i + 10, b"x"), 16);
        }
        assert_eq!(a.len(), 16);
        a.retain(|x| x.parent == 49);
        assert_eq!(a.to_vec(), vec![alias(49, b"x")]);
        a.retain(|_| false);
        assert!(a.is_empty());
        assert_eq!(a.clone().into_iter().count(), 0);
    }

    #[test]
    fn maybe_ident_keeps_what_it_is_given() {
        assert_eq!(MaybeIdent::default().get(), None);
        assert!(MaybeIdent::default().is_none());
        for i in [(0, 0), (1, 2), (u64::MAX - 1, u64::MAX)] {
            let m = MaybeIdent::from(Some(i));
            assert_eq!(m.get(), Some(i));
            assert!(m.is_some());
        }
        assert_eq!(MaybeIdent::from(None).get(), None);
    }

    #[test]
    fn per_node_state_stays_small() {
        // One node per cached entry: these sizes are the daemon's memory
        // per entry of a large walk (see benches/overlay.rs, `scale`).
        assert_eq!(std::mem::size_of::<Aliases>(), 24);
        assert_eq!(std::mem::size_of::<Stack>(), 16);
        assert_eq!(std::mem::size_of::<Lowers>(), 32);
        assert_eq!(std::mem::size_of::<MaybeIdent>(), 16);
        // 144 bytes with the reference counts: a 160-byte malloc chunk
        // (glibc: the request plus 8, in steps of 16). The lower-layer
        // generation of live layer changes (`layers_gen`) took it from 120.
        assert!(
            std::mem::size_of::<Node>() <= 128,
            "{}",
            std::mem::size_of::<Node>()
        );
    }
}
