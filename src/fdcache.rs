//! A bounded cache of `O_PATH` directory descriptors.
//!
//! Directories are reached through cached descriptors so that a lookup costs
//! one `fstatat`. The kernel may keep far more inodes alive than the process
//! may open files (the hard limit is 20000 on our machines for unprivileged
//! users), so cached descriptors are counted against a budget and evicted
//! with a clock sweep; an evicted directory is reopened from its parent by
//! name (one component, `O_NOFOLLOW`) and checked against its inode number.
//!
//! A directory whose children have cached descriptors is not evicted: a
//! reopen then never has to walk down more than one level, even in trees
//! deeper than the budget (which may be exceeded by the depth of the
//! deepest directory in use, no more).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Something that owns an [`FdSlot`] the sweep may empty.
pub trait FdHolder: Send + Sync {
    fn slot(&self) -> &FdSlot;
}

static BUDGET: AtomicUsize = AtomicUsize::new(8192);
static CACHED: AtomicUsize = AtomicUsize::new(0);
static SWEEPING: AtomicBool = AtomicBool::new(false);
/// Beyond this many descriptors even directories protected by cached
/// children are evicted: the process must keep room for open files.
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);
/// How many descriptors the last sweep left cached.
static SWEPT_TO: AtomicUsize = AtomicUsize::new(0);
static QUEUE: Mutex<VecDeque<Weak<dyn FdHolder>>> = Mutex::new(VecDeque::new());

/// Most descriptors the cache holds, however high the open-file limit:
/// the cache speeds up lookups in directories in use, and a walk of a large
/// tree must not keep one descriptor per directory the kernel remembers.
pub const MAX_BUDGET: usize = 4096;

/// Sets the budget from the open-file limit: at most three quarters of it
/// (the rest is for open files), and at most [`MAX_BUDGET`].
pub fn set_budget_from_limit(limit: u64) {
    let most = (limit as usize / 4 * 3).saturating_sub(256);
    CEILING.store(most.max(64), Ordering::Relaxed);
    set_budget(most.min(MAX_BUDGET));
}

/// Sets how many descriptors the cache may hold.
pub fn set_budget(n: usize) {
    BUDGET.store(n.max(64), Ordering::Relaxed);
}

pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// A cached descriptor and the holder of its parent directory's slot.
struct Cached {
    fd: Arc<OwnedFd>,
    parent: Option<Weak<dyn FdHolder>>,
}

/// One cached descriptor. Pinned slots (layer roots) are never evicted and
/// not counted.
pub struct FdSlot {
    fd: Mutex<Option<Cached>>,
    used: AtomicBool,
    pinned: bool,
    /// A descriptor was cached once (later opens are reopens to verify).
    filled_once: AtomicBool,
    /// Cached descriptors of children filled under this one.
    kids: AtomicU32,
}

/// Gives a slot's descriptor up: the count, the parent's protection.
fn release(c: Cached, pinned: bool) {
    if !pinned {
        CACHED.fetch_sub(1, Ordering::Relaxed);
    }
    if let Some(p) = c.parent.and_then(|w| w.upgrade()) {
        p.slot().kids.fetch_sub(1, Ordering::Relaxed);
    }
    // Closing happens here, outside the slot's lock.
    drop(c.fd);
}

impl Default for FdSlot {
    fn default() -> Self {
        FdSlot::empty()
    }
}

impl FdSlot {
    pub fn empty() -> FdSlot {
        FdSlot {
            fd: Mutex::new(None),
            used: AtomicBool::new(false),
            pinned: false,
            filled_once: AtomicBool::new(false),
            kids: AtomicU32::new(0),
        }
    }

    pub fn pinned(fd: Arc<OwnedFd>) -> FdSlot {
        FdSlot {
            fd: Mutex::new(Some(Cached { fd, parent: None })),
            used: AtomicBool::new(true),
            pinned: true,
            filled_once: AtomicBool::new(true),
            kids: AtomicU32::new(0),
        }
    }

    /// The cached descriptor, if any; marks the slot recently used.
    pub fn get(&self) -> Option<Arc<OwnedFd>> {
        let fd = self.fd.lock().as_ref().map(|c| c.fd.clone());
        if fd.is_some() && !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// Caches `fd` unless another thread was faster; returns the cached one.
    /// `holder` is the owner of this slot, so the sweep can find it later;
    /// `parent` the holder of the directory `fd` was opened in, which stays
    /// cached while this one is.
    pub fn fill(
        &self,
        fd: OwnedFd,
        holder: Weak<dyn FdHolder>,
        parent: Option<Weak<dyn FdHolder>>,
    ) -> Arc<OwnedFd> {
        let fd = {
            let mut g = self.fd.lock();
            if let Some(existing) = g.as_ref() {
                return existing.fd.clone();
            }
            let fd = Arc::new(fd);
            let parent = parent.filter(|w| match w.upgrade() {
                Some(p) => {
                    p.slot().kids.fetch_add(1, Ordering::Relaxed);
                    true
                }
                None => false,
            });
            *g = Some(Cached {
                fd: fd.clone(),
                parent,
            });
            fd
        };
        self.used.store(true, Ordering::Relaxed);
        self.filled_once.store(true, Ordering::Relaxed);
        if !self.pinned {
            let n = CACHED.fetch_add(1, Ordering::Relaxed) + 1;
            {
                let mut q = QUEUE.lock();
                q.push_back(holder);
                // Entries of holders dropped since (their slots gave their
                // count back) would stay until a sweep, and a `Weak` keeps
                // its holder's memory allocated: drop them once they are
                // most of the queue, so memory follows the live nodes.
                if q.len() > 2 * n + 1024 {
                    q.retain(|w| w.strong_count() > 0);
                }
            }
            // When the sweep could not get below the budget (directories
            // protected by their cached children), wait for another eighth
            // of it before sweeping again: each sweep walks the queue.
            if n > budget().max(SWEPT_TO.load(Ordering::Relaxed) + budget() / 8) {
                sweep();
            }
        }
        fd
    }

    /// Whether a descriptor was cached before (so a new one is a reopen
    /// after eviction, worth checking against the object's identity).
    pub fn filled_once(&self) -> bool {
        self.filled_once.load(Ordering::Relaxed)
    }

    /// Replaces the cached descriptor (after the object was recreated).
    pub fn clear(&self) {
        let old = self.fd.lock().take();
        if let Some(c) = old {
            release(c, self.pinned);
        }
    }

    fn evict_if_unused(&self) -> bool {
        if self.pinned {
            return false;
        }
        let crowded = CACHED.load(Ordering::Relaxed) > CEILING.load(Ordering::Relaxed);
        if self.kids.load(Ordering::Relaxed) > 0 && !crowded {
            return false;
        }
        if self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        let old = self.fd.lock().take();
        if let Some(c) = old {
            release(c, false);
        }
        true
    }

    fn is_filled(&self) -> bool {
        self.fd.lock().is_some()
    }
}

impl Drop for FdSlot {
    fn drop(&mut self) {
        if let Some(c) = self.fd.get_mut().take() {
            release(c, self.pinned);
        }
    }
}

/// Evicts descriptors not used since the last pass until the cache is back
/// under 7/8 of its budget. One thread sweeps at a time; the queue lock is
/// held only to pop or push one entry.
fn sweep() {
    if SWEEPING.swap(true, Ordering::Acquire) {
        return;
    }
    let target = budget() / 8 * 7;
    let mut budget_steps = QUEUE.lock().len() * 2 + 16;
    while CACHED.load(Ordering::Relaxed) > target && budget_steps > 0 {
        budget_steps -= 1;
        let Some(weak) = QUEUE.lock().pop_front() else {
            break;
        };
        let Some(holder) = weak.upgrade() else {
            continue;
        };
        let slot = holder.slot();
        if !slot.is_filled() {
            continue;
        }
        if !slot.evict_if_unused() {
            QUEUE.lock().push_back(weak);
        }
        // `holder` may be the last reference: drop it outside the queue lock.
        drop(holder);
    }
    SWEPT_TO.store(CACHED.load(Ordering::Relaxed), Ordering::Relaxed);
    SWEEPING.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(FdSlot);
    impl FdHolder for H {
        fn slot(&self) -> &FdSlot {
            &self.0
        }
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn queue_forgets_dropped_holders() {
        for _ in 0..20_000 {
            let h = Arc::new(H(FdSlot::empty()));
            let w: Weak<dyn FdHolder> = Arc::downgrade(&h) as Weak<dyn FdHolder>;
            h.0.fill(devnull(), w, None);
        }
        let len = QUEUE.lock().len();
        assert!(len < 4096, "queue keeps {len} dead entries");
    }

    #[test]
    fn cache_stays_within_budget() {
        set_budget(64);
        let holders: Vec<Arc<H>> = (0..400).map(|_| Arc::new(H(FdSlot::empty()))).collect();
        for h in &holders {
            let w: Weak<dyn FdHolder> = Arc::downgrade(h) as Weak<dyn FdHolder>;
            h.0.fill(devnull(), w, None);
        }
        let filled = holders.iter().filter(|h| h.0.is_filled()).count();
        assert!(filled <= 64 + 1, "filled {filled}");
        drop(holders);
        set_budget(8192);
    }
}
