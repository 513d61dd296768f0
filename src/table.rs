//! The inode table: node id -> node, with the kernel's lookup counts.
//!
//! The kernel holds a reference per successful lookup (and per readdirplus
//! entry) and gives them back with FORGET. A node stays in the table while
//! the kernel holds references; node ids are reused only with a new
//! generation, and the lookup count carries over so that late FORGETs for the
//! old generation still balance.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::node::Node;

/// A node in the table with the kernel's lookup count. Found by node id
/// (the node's own `ino`, not stored twice): one table entry is a pointer
/// and a count, which matters with a node per cached entry.
struct Slot {
    node: Arc<Node>,
    /// Changed only under the shard's write lock.
    lookups: AtomicU64,
}

impl Slot {
    fn new(node: Arc<Node>, lookups: u64) -> Slot {
        Slot {
            node,
            lookups: AtomicU64::new(lookups),
        }
    }

    fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    fn set_lookups(&self, n: u64) {
        self.lookups.store(n, Ordering::Relaxed);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.node.ino == other.node.ino
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.node.ino.hash(state)
    }
}

impl std::borrow::Borrow<u64> for Slot {
    fn borrow(&self) -> &u64 {
        &self.node.ino
    }
}

/// Hashes node ids (already unique numbers) with a cheap mix.
#[derive(Clone, Copy, Default)]
struct IdHash;

struct IdHasher(u64);

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // splitmix64's finalizer.
        let mut h = self.0;
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type Shard = RwLock<HashSet<Slot, IdHash>>;

const SHARDS: usize = 64;

/// The shard of node id `ino` (other bits than the ones the shard's own
/// hash table uses).
fn shard_of(ino: u64) -> usize {
    (ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

/// One reference on a node in the table, taken by plyfs: either for its
/// own work (copying a tree up must reach the nodes by id) or for a reply
/// to the kernel that will carry the node. Released when dropped, so an
/// error before the reply gives it back; [`Held::into_kernel`] hands it
/// to the kernel once the reply carrying the node is built (the kernel
/// then returns it with FORGET).
pub struct Held<'a> {
    table: &'a Table,
    node: Arc<Node>,
    handed_over: bool,
}

impl std::ops::Deref for Held<'_> {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.table.forget(self.node.ino, 1);
        }
    }
}

impl Held<'_> {
    /// The reference now belongs to the kernel.
    pub fn into_kernel(mut self) -> Arc<Node> {
        self.handed_over = true;
        self.node.clone()
    }
}

pub struct Table {
    shards: Box<[Shard]>,
    /// Nodes in the table, and the largest count since memory was last
    /// handed back.
    live: AtomicUsize,
    peak: AtomicUsize,
    forgets: AtomicUsize,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            forgets: AtomicUsize::new(0),
        }
    }
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    fn shard(&self, ino: u64) -> &Shard {
        &self.shards[shard_of(ino)]
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.shard(ino).read().get(&ino).map(|s| s.node.clone())
    }

    /// Installs a node that is never forgotten (the root).
    pub fn insert_pinned(&self, node: Arc<Node>) {
        let mut shard = self.shard(node.ino).write();
        if shard.replace(Slot::new(node, u64::MAX / 2)).is_none() {
            drop(shard);
            self.added();
        }
    }

    /// Takes one reference on the node for `ino`. If a node with that id
    /// exists and `same` says it is the object just resolved, it is
    /// returned; otherwise `make` builds a new node that replaces it.
    /// `same` and `make` run under the table's shard lock: no I/O in them.
    pub fn remember(
        &self,
        ino: u64,
        same: impl FnOnce(&Arc<Node>) -> bool,
        make: impl FnOnce() -> Node,
    ) -> Held<'_> {
        let mut shard = self.shard(ino).write();
        let (node, replaced) = match shard.get(&ino) {
            Some(slot) => {
                let lookups = slot.lookups().saturating_add(1);
                if same(&slot.node) {
                    slot.set_lookups(lookups);
                    (slot.node.clone(), None)
                } else {
                    let new = Arc::new(make());
                    let old = shard.replace(Slot::new(new.clone(), lookups));
                    (new, old)
                }
            }
            None => {
                let node = Arc::new(make());
                shard.insert(Slot::new(node.clone(), 1));
                drop(shard);
                self.added();
                return self.held(node);
            }
        };
        drop(shard);
        // The replaced node may hold the last reference to other nodes'
        // objects: drop it after the shard lock is released.
        drop(replaced);
        self.held(node)
    }

    fn held(&self, node: Arc<Node>) -> Held<'_> {
        Held {
            table: self,
            node,
            handed_over: false,
        }
    }

    /// Takes one more reference on a node already in the table.
    pub fn hold(&self, ino: u64) -> Option<Held<'_>> {
        let node = {
            let shard = self.shard(ino).write();
            let slot = shard.get(&ino)?;
            slot.set_lookups(slot.lookups().saturating_add(1));
            slot.node.clone()
        };
        Some(self.held(node))
    }

    /// Gives back `n` kernel references; the node leaves the table at zero
    /// and is returned.
    pub fn forget(&self, ino: u64, n: u64) -> Option<Arc<Node>> {
        let removed = {
            let mut shard = self.shard(ino).write();
            let slot = shard.get(&ino)?;
            let left = slot.lookups().saturating_sub(n);
            slot.set_lookups(left);
            if left > 0 {
                return None;
            }
            let removed = shard.take(&ino);
            // Hand the table's own memory back once it is mostly empty.
            if shard.capacity() > 4 * shard.len() + 64 {
                shard.shrink_to_fit();
            }
            removed
        };
        let node = removed.map(|s| s.node)?;
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.maybe_release_memory();
        Some(node)
    }

    /// When the kernel has forgotten most of a large tree (memory pressure,
    /// drop_caches), hands the freed heap back to the system: the allocator
    /// would otherwise keep the peak. Each halving of the table trims, down
    /// to small tables: the nodes forgotten last (directories, whose
    /// children went first) are spread over the whole heap, and each keeps
    /// a page resident until it goes too.
    fn maybe_release_memory(&self) {
        const EVERY: usize = 256;
        if self.forgets.fetch_add(1, Ordering::Relaxed) % EVERY != EVERY - 1 {
            return;
        }
        let len = self.live.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= 4 * EVERY && len < peak / 2 {
            self.peak.store(len, Ordering::Relaxed);
            crate::sys::process::malloc_trim();
        }
    }

    /// Counts a node added to the table.
    fn added(&self) {
        let len = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        if len > self.peak.load(Ordering::Relaxed) {
            self.peak.store(len, Ordering::Relaxed);
        }
    }

    /// Directory nodes, referenced (for scans that must not hold the map's
    /// shard locks while they look inside nodes).
    pub fn dirs(&self) -> Vec<Arc<Node>> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            v.extend(
                shard
                    .read()
                    .iter()
                    .filter(|s| s.node.is_dir())
                    .map(|s| s.node.clone()),
            );
        }
        v
    }

    /// Every node, referenced (see [`Table::dirs`]).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            v.extend(shard.read().iter().map(|s| s.node.clone()));
        }
        v
    }

    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeState;

    fn node(ino: u64) -> Node {
        Node::new(ino, libc::S_IFREG, NodeState::default())
    }

    #[test]
    fn lookups_and_forget() {
        let t = Table::new();
        let a = t.remember(5, |_| true, || node(5)).into_kernel();
        let b = t.remember(5, |_| true, || node(5)).into_kernel();
        assert!(Arc::ptr_eq(&a, &b));
        t.forget(5, 1);
        assert!(t.get(5).is_some());
        t.forget(5, 1);
        assert!(t.get(5).is_none());
    }

    #[test]
    fn a_reference_not_handed_over_is_given_back() {
        let t = Table::new();
        let kept = t.remember(5, |_| true, || node(5)).into_kernel();
        {
            let _failed_reply = t.remember(5, |_| true, || node(5));
            let _held = t.hold(5);
        }
        t.forget(5, 1);
        assert!(t.get(5).is_none(), "references leaked");
        drop(kept);
    }

    #[test]
    fn replacement_keeps_count() {
        let t = Table::new();
        let a = t.remember(7, |_| true, || node(7)).into_kernel();
        let b = t.remember(7, |_| false, || node(7)).into_kernel();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_ne!(a.generation, b.generation);
        // The old generation's reference is forgotten later: the new node stays.
        t.forget(7, 1);
        assert!(Arc::ptr_eq(&t.get(7).unwrap(), &b));
        t.forget(7, 1);
        assert!(t.get(7).is_none());
    }
}
