//! Inode numbers of the merged view.
//!
//! A node's number comes from the identity of the object it started as: the
//! lower object for anything that came from a lower layer (kept across
//! copy-up, and after remount through `overlay.origin`), else the upper
//! object. With every layer on one filesystem the real inode number is used
//! as is, which is unique and stable. Layers on several filesystems get the
//! filesystem's index in the top 8 bits (like the kernel's xino; with
//! `xino=off` they get numbers from the counter instead, unique but not
//! kept across mounts: a FUSE mount has one st_dev, so plyfs cannot show
//! them with their own device as the kernel does). A number
//! that does not fit, or that would be the reserved root id 1, is replaced by
//! one from a counter above every tagged range, remembered for the mount so
//! it never collides.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::node::Ident;

/// FUSE's root node id.
pub const ROOT: u64 = 1;
const TAG_SHIFT: u32 = 56;
const FALLBACK_BASE: u64 = 0xff00_0000_0000_0000;
const INO32_BASE: u64 = 0x8000_0000;

pub struct InoMap {
    /// Distinct st_dev values of the layers, upper (if any) first.
    devs: Vec<u64>,
    ino32: bool,
    /// Tag numbers with their filesystem's index (`xino=auto|on`).
    tag: bool,
    fallback: DashMap<Ident, u64>,
    next: AtomicU64,
    /// Upper objects created by copy-up in this mount, mapped to the number
    /// their node already had.
    aliases: DashMap<Ident, u64>,
}

impl InoMap {
    /// `devs` lists each layer's st_dev, upper first; duplicates are merged.
    pub fn new(devs: &[u64], ino32: bool, tag: bool) -> InoMap {
        let mut distinct: Vec<u64> = Vec::new();
        for d in devs {
            if !distinct.contains(d) {
                distinct.push(*d);
            }
        }
        InoMap {
            devs: distinct,
            ino32,
            tag,
            fallback: DashMap::new(),
            next: AtomicU64::new(if ino32 { INO32_BASE } else { FALLBACK_BASE }),
            aliases: DashMap::new(),
        }
    }

    /// All layers share one filesystem.
    pub fn single_fs(&self) -> bool {
        self.devs.len() == 1
    }

    /// The merged-view number for an object identity.
    pub fn map(&self, ident: Ident) -> u64 {
        if let Some(a) = self.aliases.get(&ident) {
            return *a;
        }
        let (dev, ino) = ident;
        let direct = match self.devs.iter().position(|d| *d == dev) {
            Some(_) if self.single_fs() => Some(ino),
            // xino=off: only the first filesystem keeps real numbers.
            Some(0) if !self.tag => Some(ino),
            Some(idx) if self.tag && ino >> TAG_SHIFT == 0 && idx < 255 => {
                Some(((idx as u64) << TAG_SHIFT) | ino)
            }
            _ => None,
        };
        match direct {
            Some(n) if n > ROOT && (!self.ino32 || n < INO32_BASE) && n < FALLBACK_BASE => n,
            _ => self.allocate(ident),
        }
    }

    fn allocate(&self, ident: Ident) -> u64 {
        *self
            .fallback
            .entry(ident)
            .or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Records that the upper object `upper` now stands for a node numbered
    /// `ino` (after copy-up), so listings and lookups agree with the node.
    pub fn alias(&self, upper: Ident, ino: u64) {
        // `upper` is a new object: an alias left for an earlier object with
        // the same (reused) inode number is stale.
        self.aliases.remove(&upper);
        if self.map(upper) != ino {
            self.aliases.insert(upper, ino);
        }
    }

    /// The upper object `upper` was deleted, or a new object was made with
    /// its (reused) inode number: that object must not inherit the old
    /// node's number.
    pub fn unalias(&self, upper: Ident) {
        self.aliases.remove(&upper);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_fs_uses_real_numbers() {
        let m = InoMap::new(&[10, 10, 10], false, true);
        assert_eq!(m.map((10, 1234)), 1234);
        // 1 is the root's id: never handed out for another object.
        let one = m.map((10, 1));
        assert_ne!(one, 1);
        assert_eq!(m.map((10, 1)), one);
    }

    #[test]
    fn several_filesystems_are_tagged() {
        let m = InoMap::new(&[10, 20, 20, 30], false, true);
        assert_eq!(m.map((10, 5)), 5);
        assert_eq!(m.map((20, 5)), (1 << 56) | 5);
        assert_eq!(m.map((30, 5)), (2 << 56) | 5);
        let big = m.map((20, 1 << 60));
        assert!(big >= FALLBACK_BASE);
        assert_eq!(m.map((20, 1 << 60)), big);
        let unknown = m.map((99, 5));
        assert!(unknown >= FALLBACK_BASE && unknown != big);
    }

    #[test]
    fn aliases_follow_copy_up() {
        let m = InoMap::new(&[10], false, true);
        m.alias((10, 900), 100);
        assert_eq!(m.map((10, 900)), 100);
    }

    #[test]
    fn xino_off_numbers_other_filesystems_from_the_counter() {
        let m = InoMap::new(&[10, 20], false, false);
        assert_eq!(m.map((10, 5)), 5);
        let a = m.map((20, 5));
        assert!(a >= FALLBACK_BASE, "{a:x}");
        assert_eq!(m.map((20, 5)), a);
        assert_ne!(m.map((20, 6)), a);
    }

    #[test]
    fn ino32_stays_below_2_32() {
        let m = InoMap::new(&[10], true, true);
        assert_eq!(m.map((10, 77)), 77);
        let n = m.map((10, 1 << 40));
        assert!(n < 1 << 32);
    }
}
