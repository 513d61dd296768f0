//! A bounded cache of `O_PATH` directory descriptors.
//!
//! Directories are reached through cached descriptors so that a lookup costs
//! one `fstatat`. The kernel may keep far more inodes alive than the process
//! may open files (the hard limit is 20000 on our machines for unprivileged
//! users), so cached descriptors are counted against a budget and evicted
//! with a clock sweep; an evicted directory is reopened from its parent by
//! name (one component, `O_NOFOLLOW`) and checked against its inode number.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Something that owns an [`FdSlot`] the sweep may empty.
pub trait FdHolder: Send + Sync {
    fn slot(&self) -> &FdSlot;
}

static BUDGET: AtomicUsize = AtomicUsize::new(8192);
static CACHED: AtomicUsize = AtomicUsize::new(0);
static SWEEPING: AtomicBool = AtomicBool::new(false);
static QUEUE: Mutex<VecDeque<Weak<dyn FdHolder>>> = Mutex::new(VecDeque::new());

/// Most descriptors the cache holds, however high the open-file limit:
/// the cache speeds up lookups in directories in use, and a walk of a large
/// tree must not keep one descriptor per directory the kernel remembers.
pub const MAX_BUDGET: usize = 4096;

/// Sets the budget from the open-file limit: at most three quarters of it
/// (the rest is for open files), and at most [`MAX_BUDGET`].
pub fn set_budget_from_limit(limit: u64) {
    set_budget((limit as usize / 4 * 3).saturating_sub(256).min(MAX_BUDGET));
}

/// Sets how many descriptors the cache may hold.
pub fn set_budget(n: usize) {
    BUDGET.store(n.max(64), Ordering::Relaxed);
}

pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Number of evictable descriptors currently cached.
pub fn cached() -> usize {
    CACHED.load(Ordering::Relaxed)
}

/// One cached descriptor. Pinned slots (layer roots) are never evicted and
/// not counted.
pub struct FdSlot {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    used: AtomicBool,
    pinned: bool,
    /// A descriptor was cached once (later opens are reopens to verify).
    filled_once: AtomicBool,
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
        }
    }

    pub fn pinned(fd: Arc<OwnedFd>) -> FdSlot {
        FdSlot {
            fd: Mutex::new(Some(fd)),
            used: AtomicBool::new(true),
            pinned: true,
            filled_once: AtomicBool::new(true),
        }
    }

    /// The cached descriptor, if any; marks the slot recently used.
    pub fn get(&self) -> Option<Arc<OwnedFd>> {
        let fd = self.fd.lock().clone();
        if fd.is_some() && !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// Caches `fd` unless another thread was faster; returns the cached one.
    /// `holder` is the owner of this slot, so the sweep can find it later.
    pub fn fill(&self, fd: OwnedFd, holder: Weak<dyn FdHolder>) -> Arc<OwnedFd> {
        let fd = {
            let mut g = self.fd.lock();
            if let Some(existing) = g.as_ref() {
                return existing.clone();
            }
            let fd = Arc::new(fd);
            *g = Some(fd.clone());
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
            if n > budget() {
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
        if old.is_some() && !self.pinned {
            CACHED.fetch_sub(1, Ordering::Relaxed);
        }
        drop(old);
    }

    fn evict_if_unused(&self) -> bool {
        if self.pinned {
            return false;
        }
        if self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        let old = self.fd.lock().take();
        if old.is_some() {
            CACHED.fetch_sub(1, Ordering::Relaxed);
        }
        // Closing happens here, outside every lock.
        drop(old);
        true
    }

    fn is_filled(&self) -> bool {
        self.fd.lock().is_some()
    }
}

impl Drop for FdSlot {
    fn drop(&mut self) {
        if !self.pinned && self.fd.get_mut().is_some() {
            CACHED.fetch_sub(1, Ordering::Relaxed);
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
            h.0.fill(devnull(), w);
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
            h.0.fill(devnull(), w);
        }
        let filled = holders.iter().filter(|h| h.0.is_filled()).count();
        assert!(filled <= 64 + 1, "filled {filled}");
        drop(holders);
        set_budget(8192);
    }
}
