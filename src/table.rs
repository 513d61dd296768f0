//! The inode table: node id -> node, with the kernel's lookup counts.
//!
//! The kernel holds a reference per successful lookup (and per readdirplus
//! entry) and gives them back with FORGET. A node stays in the table while
//! the kernel holds references; node ids are reused only with a new
//! generation, and the lookup count carries over so that late FORGETs for the
//! old generation still balance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::node::Node;

struct Slot {
    node: Arc<Node>,
    lookups: u64,
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

#[derive(Default)]
pub struct Table {
    map: DashMap<u64, Slot>,
    /// Nodes in the table, and the largest count since memory was last
    /// handed back.
    live: AtomicUsize,
    peak: AtomicUsize,
    forgets: AtomicUsize,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.map.get(&ino).map(|s| s.node.clone())
    }

    /// Installs a node that is never forgotten (the root).
    pub fn insert_pinned(&self, node: Arc<Node>) {
        self.map.insert(
            node.ino,
            Slot {
                node,
                lookups: u64::MAX / 2,
            },
        );
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
        let (node, replaced) = match self.map.entry(ino) {
            MapEntry::Occupied(mut e) => {
                let slot = e.get_mut();
                slot.lookups = slot.lookups.saturating_add(1);
                if same(&slot.node) {
                    (slot.node.clone(), None)
                } else {
                    let new = Arc::new(make());
                    let old = std::mem::replace(&mut slot.node, new.clone());
                    (new, Some(old))
                }
            }
            MapEntry::Vacant(e) => {
                let node = Arc::new(make());
                e.insert(Slot {
                    node: node.clone(),
                    lookups: 1,
                });
                self.added();
                (node, None)
            }
        };
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
            let mut slot = self.map.get_mut(&ino)?;
            slot.lookups = slot.lookups.saturating_add(1);
            slot.node.clone()
        };
        Some(self.held(node))
    }

    /// Gives back `n` kernel references; the node leaves the table at zero.
    pub fn forget(&self, ino: u64, n: u64) {
        let removed = self.map.remove_if_mut(&ino, |_, slot| {
            slot.lookups = slot.lookups.saturating_sub(n);
            slot.lookups == 0
        });
        if removed.is_some() {
            drop(removed);
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.maybe_release_memory();
        }
    }

    /// When the kernel has forgotten most of a large tree (memory pressure,
    /// drop_caches), hands the freed heap back to the system: the allocator
    /// would otherwise keep the peak.
    fn maybe_release_memory(&self) {
        const EVERY: usize = 4096;
        if self.forgets.fetch_add(1, Ordering::Relaxed) % EVERY != EVERY - 1 {
            return;
        }
        let len = self.live.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= 2 * EVERY && len < peak / 2 {
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
        self.map
            .iter()
            .filter(|s| s.node.is_dir())
            .map(|s| s.node.clone())
            .collect()
    }

    /// Every node, referenced (see [`Table::dirs`]).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.map.iter().map(|s| s.node.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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
