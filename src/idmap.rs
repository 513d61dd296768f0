//! uid/gid translation with fuse-overlayfs' `uidmapping`/`gidmapping` and
//! `squash_to_*` semantics.
//!
//! `uidmapping=C:H:S` means: an id `C+i` stored in the layers is reported as
//! `H+i` (in the daemon's user namespace), for `0 <= i < S`. containers-storage
//! uses it to keep layers unshifted on disk (container ids) while a
//! container whose user namespace maps `C -> H` sees its own ids. Ids of
//! new files and of chown requests are translated back before they are
//! stored. Stored ids outside every range are reported as the overflow id.

use crate::options::IdRange;

/// The id shown for an id no range maps (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Clone, Debug, Default)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    /// Every object is shown as owned by this id (squash_to_uid/gid/root).
    squash: Option<u32>,
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>, squash: Option<u32>) -> IdMap {
        IdMap { ranges, squash }
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty() && self.squash.is_none()
    }

    /// Stored id -> id reported to the kernel.
    pub fn to_view(&self, stored: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return stored;
        }
        self.ranges
            .iter()
            .find(|r| stored >= r.container && stored - r.container < r.len)
            .map(|r| r.host + (stored - r.container))
            .unwrap_or(OVERFLOW_ID)
    }

    /// Id from a request -> id to store. `None` for an id outside every
    /// range (it cannot be represented in the layers).
    pub fn to_stored(&self, view: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(view);
        }
        self.ranges
            .iter()
            .find(|r| view >= r.host && view - r.host < r.len)
            .map(|r| r.container + (view - r.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> IdMap {
        // fuse-overlayfs' man page example: uidmapping=0:1000:1:1:110000:65536
        IdMap::new(
            vec![
                IdRange {
                    container: 0,
                    host: 1000,
                    len: 1,
                },
                IdRange {
                    container: 1,
                    host: 110000,
                    len: 65536,
                },
            ],
            None,
        )
    }

    #[test]
    fn stored_ids_are_reported_shifted() {
        let m = example();
        assert_eq!(m.to_view(0), 1000);
        assert_eq!(m.to_view(1), 110000);
        assert_eq!(m.to_view(5), 110004);
        assert_eq!(m.to_view(70000), OVERFLOW_ID);
    }

    #[test]
    fn requests_are_stored_unshifted() {
        let m = example();
        assert_eq!(m.to_stored(1000), Some(0));
        assert_eq!(m.to_stored(110004), Some(5));
        assert_eq!(m.to_stored(42), None);
    }

    #[test]
    fn identity_and_squash() {
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!(id.to_view(42), 42);
        assert_eq!(id.to_stored(42), Some(42));
        let sq = IdMap::new(vec![], Some(0));
        assert_eq!(sq.to_view(1234), 0);
        assert_eq!(sq.to_stored(7), Some(7));
    }
}
