//! Converting a layer object's `stat` into the attributes the merged view
//! reports.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::idmap::IdMap;
use crate::sys::fs::Stat;

/// The attributes the merged view reports for one node. plyfs's own type,
/// so that only the FUSE glue (`fuse.rs`) knows the FUSE library's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAttr {
    /// Node id (fuser reports it as st_ino).
    pub ino: u64,
    pub size: u64,
    /// In 512-byte units.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// `S_IFMT` bits.
    pub kind: u32,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Encoded as the kernel's `new_encode_dev`.
    pub rdev: u32,
    pub blksize: u32,
}

impl FileAttr {
    /// The attributes of a negative entry (node id 0), which the kernel
    /// caches for the entry timeout.
    pub fn negative() -> FileAttr {
        FileAttr {
            ino: 0,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            kind: libc::S_IFREG,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}

/// `S_IFMT` bits for a `DT_*` value (0 for `DT_UNKNOWN`).
pub fn kind_from_dtype(d_type: u8) -> u32 {
    match d_type {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_REG => libc::S_IFREG,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => 0,
    }
}

pub fn system_time(t: (i64, u32)) -> SystemTime {
    let (s, ns) = t;
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns)
    } else {
        UNIX_EPOCH - Duration::new(s.unsigned_abs(), 0) + Duration::new(0, ns)
    }
}

/// The kernel's `new_encode_dev` (FUSE carries rdev in 32 bits).
pub fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The kernel's `new_decode_dev`.
pub fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

pub struct AttrOpts<'a> {
    pub uids: &'a IdMap,
    pub gids: &'a IdMap,
    pub static_nlink: bool,
}

/// Attributes of node `ino` whose real object has `st`. `merged_dir` is set
/// for a directory that merges several layers: like the kernel, its link
/// count is reported as 1 (meaning "unknown" to tools such as find).
pub fn make(ino: u64, st: &Stat, merged_dir: bool, o: &AttrOpts<'_>) -> FileAttr {
    let is_dir = st.is_dir();
    let nlink = if is_dir && (merged_dir || o.static_nlink) {
        1
    } else {
        st.nlink.min(u32::MAX as u64) as u32
    };
    FileAttr {
        ino,
        size: st.size,
        blocks: st.blocks,
        atime: system_time(st.atime),
        mtime: system_time(st.mtime),
        ctime: system_time(st.ctime),
        kind: st.mode & libc::S_IFMT,
        perm: (st.mode & 0o7777) as u16,
        nlink,
        uid: o.uids.to_view(st.uid),
        gid: o.gids.to_view(st.gid),
        rdev: encode_dev(st.rdev),
        blksize: st.blksize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_encoding_round_trips() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 17), (259, 65536), (4095, 1048575)] {
            let d = libc::makedev(ma, mi);
            assert_eq!(decode_dev(encode_dev(d)), d, "{ma}:{mi}");
        }
    }

    #[test]
    fn times_before_epoch() {
        let t = system_time((-2, 500_000_000));
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::new(1, 500_000_000)
        );
    }
}
