//! Recently read directory listings.
//!
//! The kernel reads a directory a page of entries at a time, each page a
//! request of its own, so the merged listing must outlive one request. But
//! the kernel keeps what it read (`FOPEN_CACHE_DIR`, and its dentry cache),
//! and a walk reads every directory once: keeping each directory's listing
//! for as long as the kernel remembers the directory would cost as much
//! memory as the nodes themselves. So listings are kept here, least
//! recently used first out, up to a budget of entries. A listing being read
//! (not to its end yet) and used in the last second is kept even over
//! budget, up to a hard ceiling: a huge directory being read, or several at
//! once, never loses its listing between two pages. A listing goes when
//! its directory's node does. Open directory handles hold their own
//! reference.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::listing::Listing;
use crate::node::Node;

/// Entries (see [`weight`]) kept in any case.
const BUDGET: usize = 16 * 1024;
/// Entries kept at most, however recently used.
const CEILING: usize = 16 * BUDGET;
/// Listings being read and used this recently stay while under the
/// ceiling.
const RECENT: Duration = Duration::from_secs(1);

struct Cached {
    listing: Arc<Listing>,
    generation: u64,
    /// Tick of the last use (its place in the queue).
    tick: u64,
    used: Instant,
    /// The last read reached the end of the listing.
    done: bool,
}

#[derive(Default)]
struct Inner {
    map: HashMap<u64, Cached>,
    /// Uses in order, oldest first: (node id, tick). Entries whose tick is
    /// no longer the listing's are stale.
    queue: VecDeque<(u64, u64)>,
    tick: u64,
    /// Sum of the listings' [`weight`].
    weight: usize,
}

#[derive(Default)]
pub struct ListingCache {
    inner: Mutex<Inner>,
}

/// What a listing counts for: its entries, and a few more for the listing
/// itself (empty directories are listed too).
fn weight(l: &Listing) -> usize {
    l.entries.len() + 4
}

impl ListingCache {
    /// The cached listing of `dir` if it is still current; `restart`: a
    /// read from the start of the directory.
    pub fn get(&self, dir: &Node, restart: bool) -> Option<Arc<Listing>> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let c = inner.map.get_mut(&dir.ino)?;
        if c.generation != dir.generation || c.listing.version != dir.version() {
            return None;
        }
        c.tick = tick;
        c.used = Instant::now();
        c.done &= !restart;
        let l = c.listing.clone();
        inner.queue.push_back((dir.ino, tick));
        inner.compact();
        Some(l)
    }

    /// Keeps `listing` as the current listing of `dir`.
    pub fn put(&self, dir: &Node, listing: Arc<Listing>) {
        let mut evicted = Vec::new();
        {
            let mut g = self.inner.lock();
            let inner = &mut *g;
            inner.tick += 1;
            let tick = inner.tick;
            inner.weight += weight(&listing);
            let old = inner.map.insert(
                dir.ino,
                Cached {
                    listing,
                    generation: dir.generation,
                    tick,
                    used: Instant::now(),
                    done: false,
                },
            );
            if let Some(old) = old {
                inner.weight -= weight(&old.listing);
                evicted.push(old.listing);
            }
            inner.queue.push_back((dir.ino, tick));
            inner.evict(&mut evicted);
            inner.compact();
        }
        // Listings are freed outside the lock.
        drop(evicted);
    }

    /// A read of `dir`'s listing reached its end.
    pub fn done(&self, dir: &Node) {
        if let Some(c) = self.inner.lock().map.get_mut(&dir.ino)
            && c.generation == dir.generation
        {
            c.done = true;
        }
    }

    /// The node `ino` of generation `generation` is gone: so is its listing.
    pub fn forget(&self, ino: u64, generation: u64) {
        let old = {
            let mut g = self.inner.lock();
            let inner = &mut *g;
            match inner.map.get(&ino) {
                Some(c) if c.generation == generation => {
                    let c = inner.map.remove(&ino);
                    if let Some(c) = &c {
                        inner.weight -= weight(&c.listing);
                    }
                    inner.compact();
                    c
                }
                _ => None,
            }
        };
        drop(old);
    }

    /// Entries held (for tests and statistics).
    pub fn weight(&self) -> usize {
        self.inner.lock().weight
    }
}

impl Inner {
    fn evict(&mut self, out: &mut Vec<Arc<Listing>>) {
        let now = Instant::now();
        // Listings passed over (being read) go to the back: each is looked
        // at once per call.
        let mut budget = self.queue.len();
        while self.weight > BUDGET && self.map.len() > 1 && budget > 0 {
            budget -= 1;
            let Some((ino, tick)) = self.queue.pop_front() else {
                break;
            };
            let Some(c) = self.map.get_mut(&ino) else {
                continue;
            };
            if c.tick != tick {
                continue;
            }
            let reading = !c.done && now.duration_since(c.used) < RECENT;
            if reading && self.weight <= CEILING {
                self.tick += 1;
                c.tick = self.tick;
                self.queue.push_back((ino, self.tick));
                continue;
            }
            if let Some(c) = self.map.remove(&ino) {
                self.weight -= weight(&c.listing);
                out.push(c.listing);
            }
        }
    }

    /// Drops stale queue entries once they are most of the queue.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.queue
                .retain(|(ino, tick)| map.get(ino).is_some_and(|c| c.tick == *tick));
        }
        if self.map.capacity() > 4 * self.map.len() + 64 {
            self.map.shrink_to_fit();
            self.queue.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeState;

    fn listing(n: usize, version: u64) -> Arc<Listing> {
        Arc::new(Listing {
            entries: (0..n)
                .map(|i| crate::listing::ListEntry::test_entry(format!("e{i}").as_bytes()))
                .collect(),
            version,
            stack: Default::default(),
            has_metacopy: false,
        })
    }

    fn dir(ino: u64) -> Node {
        Node::new(ino, libc::S_IFDIR, NodeState::default())
    }

    #[test]
    fn current_listings_are_found() {
        let c = ListingCache::default();
        let d = dir(10);
        assert!(c.get(&d, true).is_none());
        c.put(&d, listing(3, 0));
        assert_eq!(c.get(&d, false).map(|l| l.entries.len()), Some(3));
        // A change of the directory makes it stale.
        d.touch_version();
        assert!(c.get(&d, true).is_none());
        // So does a new node with the same id.
        c.put(&d, listing(3, d.version()));
        assert!(c.get(&d, true).is_some());
        assert!(c.get(&dir(10), true).is_none());
        // The node is forgotten: its listing goes.
        let other = dir(10);
        c.forget(10, other.generation);
        assert!(c.get(&d, true).is_some());
        c.forget(10, d.generation);
        assert!(c.get(&d, true).is_none());
        assert_eq!(c.weight(), 0);
    }

    #[test]
    fn listings_read_to_the_end_go_over_budget() {
        let c = ListingCache::default();
        let dirs: Vec<Node> = (0..40).map(|i| dir(100 + i)).collect();
        for d in &dirs {
            c.put(d, listing(BUDGET / 16, 0));
            c.done(d);
        }
        assert!(c.weight() <= BUDGET, "{}", c.weight());
        // The most recently used stay, the oldest not.
        assert!(c.get(&dirs[39], false).is_some());
        assert!(c.get(&dirs[0], false).is_none());
    }

    #[test]
    fn listings_being_read_stay_up_to_the_ceiling() {
        let c = ListingCache::default();
        let dirs: Vec<Node> = (0..200).map(|i| dir(100 + i)).collect();
        for d in &dirs[..20] {
            c.put(d, listing(BUDGET / 8, 0));
        }
        // Twenty listings being read, 2.5 budgets: all kept.
        for d in &dirs[..20] {
            assert!(c.get(d, false).is_some());
        }
        for d in &dirs[20..] {
            c.put(d, listing(BUDGET / 8, 0));
        }
        assert!(c.weight() <= CEILING + BUDGET / 8 + 4, "{}", c.weight());
        assert!(c.get(&dirs[199], false).is_some());
        assert!(c.get(&dirs[0], false).is_none());
        // Reads abandoned long ago do not count as being read.
        {
            let mut g = c.inner.lock();
            let past = Instant::now() - 2 * RECENT;
            for v in g.map.values_mut() {
                v.used = past;
            }
        }
        let last = dir(1);
        c.put(&last, listing(1, 0));
        assert!(c.weight() <= BUDGET, "{}", c.weight());
        assert!(c.get(&last, false).is_some());
    }
}
