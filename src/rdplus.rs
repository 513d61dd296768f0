//! Choosing, per directory listing, whether readdirplus entries of
//! non-directories carry full attributes.
//!
//! Full attributes cost the daemon one `lstat` per entry (cold: an inode
//! read), which a name-only walk such as `find -type f` never needs; without
//! them a stat walk (`ls -l`, `find -printf %s`, `tar`) pays one LOOKUP round
//! trip per entry instead. Names-only entries have node id 0, which the
//! kernel takes as a plain directory entry (name, d_ino, type) without
//! attributes or a lookup reference; anything that then stats the name
//! sends a LOOKUP. The policy watches for such LOOKUPs of
//! non-directories in lazily listed directories: they mean stat walks, and
//! switch listings to full attributes; in full mode every 32nd directory is
//! listed lazily as a probe, and when no LOOKUP hits a probe before the next
//! one, listings go back to lazy. Directories always get full attributes:
//! every walk descends into them.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const PROBE_EVERY: u32 = 32;

#[derive(Debug)]
pub struct PlusPolicy {
    lazy: AtomicBool,
    listings: AtomicU32,
    hits: AtomicU32,
}

impl Default for PlusPolicy {
    fn default() -> Self {
        PlusPolicy {
            lazy: AtomicBool::new(std::env::var_os("PLYFS_NO_LAZY").is_none()),
            listings: AtomicU32::new(0),
            hits: AtomicU32::new(0),
        }
    }
}

impl PlusPolicy {
    /// Called when a directory listing starts (offset 0); true if its
    /// non-directory entries should be lazy.
    pub fn start_listing(&self) -> bool {
        if std::env::var_os("PLYFS_NO_LAZY").is_some() {
            return false;
        }
        if self.lazy.load(Ordering::Relaxed) {
            return true;
        }
        let n = self.listings.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(PROBE_EVERY) {
            return false;
        }
        // A probe: if the previous probe saw no LOOKUP, walks stopped
        // stat-ing entries.
        if self.hits.swap(0, Ordering::Relaxed) == 0 && n > PROBE_EVERY {
            self.lazy.store(true, Ordering::Relaxed);
        }
        true
    }

    /// A LOOKUP of a non-directory in a lazily listed directory.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        if self.lazy.swap(false, Ordering::Relaxed) {
            self.listings.store(0, Ordering::Relaxed);
        }
    }

    pub fn is_lazy(&self) -> bool {
        self.lazy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_on_lookups_and_back_without() {
        let p = PlusPolicy::default();
        assert!(p.start_listing());
        p.hit();
        assert!(!p.is_lazy());
        // Full listings, with a lazy probe every PROBE_EVERY.
        let mut lazy = 0;
        for _ in 0..PROBE_EVERY {
            if p.start_listing() {
                lazy += 1;
                p.hit();
            }
        }
        assert_eq!(lazy, 1);
        assert!(!p.is_lazy());
        // Two probes without any hit: back to lazy.
        for _ in 0..PROBE_EVERY * 2 {
            p.start_listing();
        }
        assert!(p.is_lazy());
    }
}
