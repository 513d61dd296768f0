//! uid/gid translation between the layers (host ids) and the merged view
//! (container ids), with fuse-overlayfs' `uidmapping`/`gidmapping` and
//! `squash_to_*` semantics.

use crate::options::IdRange;

/// The id shown for a host id that no range maps (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Clone, Debug, Default)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    /// Every id appears as this one (squash_to_uid/gid/root).
    squash: Option<u32>,
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>, squash: Option<u32>) -> IdMap {
        IdMap { ranges, squash }
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty() && self.squash.is_none()
    }

    /// Host id on disk -> id shown in the merged view.
    pub fn to_view(&self, host: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return host;
        }
        for r in &self.ranges {
            if host >= r.host && host - r.host < r.len {
                return r.container + (host - r.host);
            }
        }
        OVERFLOW_ID
    }

    /// Id from a request (merged view) -> host id to store. Unmapped ids
    /// cannot be stored: EINVAL, as chown(2) reports for unmapped ids.
    pub fn to_host(&self, view: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(view);
        }
        self.ranges
            .iter()
            .find(|r| view >= r.container && view - r.container < r.len)
            .map(|r| r.host + (view - r.container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways() {
        let m = IdMap::new(
            vec![
                IdRange {
                    container: 0,
                    host: 1000,
                    len: 1,
                },
                IdRange {
                    container: 1,
                    host: 100000,
                    len: 65536,
                },
            ],
            None,
        );
        assert_eq!(m.to_view(1000), 0);
        assert_eq!(m.to_view(100005), 6);
        assert_eq!(m.to_view(5), OVERFLOW_ID);
        assert_eq!(m.to_host(0), Some(1000));
        assert_eq!(m.to_host(6), Some(100005));
        assert_eq!(m.to_host(70000), None);
    }

    #[test]
    fn identity_and_squash() {
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!(id.to_view(42), 42);
        assert_eq!(id.to_host(42), Some(42));
        let sq = IdMap::new(vec![], Some(0));
        assert_eq!(sq.to_view(1234), 0);
        assert_eq!(sq.to_host(7), Some(7));
    }
}
