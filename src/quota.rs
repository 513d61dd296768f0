//! `size=` and `inodes=`: a limit on what the upper layer may hold.
//!
//! What counts, here and in the count made at mount time alike: every
//! object of the upper layer once (hard links once), regular files and
//! symlinks with the blocks they occupy (`st_blocks`, so data, holes left
//! out, and an xattr block on filesystems that keep one per file),
//! directories with one block of the upper filesystem each whatever their
//! size, whiteouts nothing (they are links to one shared inode, as the
//! kernel makes them). Objects staged in the work directory count while
//! they are there. `inodes=` counts objects the same way.
//!
//! Every change that adds to the upper layer takes its estimated growth
//! from the free space before it happens ([`Quota::reserve`]): ENOSPC
//! then, with nothing made or written; afterwards the real growth,
//! measured with `fstat`, replaces the estimate. Writes, truncation,
//! `fallocate` and `copy_file_range` are measured per file under a lock of
//! that file (so that concurrent writers to one file do not count each
//! other's growth); copy-ups reserve the lower object's size before the
//! staged copy is made and settle on the staged copy's blocks; new objects
//! reserve an inode (and a block for a directory). Removing a last link
//! gives the space back, or, for a file still open, when its last open
//! handle is released (the space stays in use until then, as on disk).
//!
//! Writes must reach plyfs to be counted: a size-limited mount uses
//! neither kernel passthrough (the kernel would write the upper file
//! directly) nor the writeback cache (a write would succeed in the page
//! cache and fail later, at writeback) (see `tuning`). Writes through
//! shared mappings reach plyfs at writeback, so there an ENOSPC surfaces
//! at msync/fsync, as on any filesystem that allocates late.
//!
//! The usage is kept across mounts in an attribute of `WORKDIR/work`
//! (`trusted.plyfs.usage`, `user.` when unprivileged) written at a clean
//! unmount and removed (durably) when a mount starts, so after a crash the
//! next mount counts the upper again (a walk by descriptors, any depth).
//! A kernel overlay mount recreates `work`, which drops the record too;
//! the record also names the upper root's inode and change time.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::fs::{Plyfs, Result, UpperLayer};
use crate::names::Name;
use crate::node::Node;
use crate::ovl_xattr::Prefix;
use crate::sys::{self, Errno, fs::Stat};

/// Stripes of the per-file measuring lock.
const STRIPES: usize = 64;

pub struct Quota {
    bytes_limit: Option<u64>,
    inodes_limit: Option<u64>,
    bytes: AtomicU64,
    inodes: AtomicU64,
    /// What a directory counts (the upper filesystem's block size).
    dir_bytes: u64,
    /// Allocation unit of the upper filesystem, for estimates.
    block: u64,
    stripes: [Mutex<()>; STRIPES],
    /// Nodes of removed files still open: their space is given back when
    /// the last handle goes.
    orphans: Mutex<HashSet<u64>>,
    /// Name of the attribute keeping the usage across mounts.
    record_attr: CString,
    /// Whether the count at mount came from the record (else a walk).
    pub from_record: bool,
}

/// Usage and limits, for `plyfs status` and statfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub bytes: u64,
    pub inodes: u64,
    pub bytes_limit: Option<u64>,
    pub inodes_limit: Option<u64>,
}

/// Space taken from the free space before a change; given back when
/// dropped unless [`Charge::settle`] replaced it by the measured growth.
#[must_use = "a charge is given back when dropped"]
pub struct Charge<'a> {
    q: &'a Quota,
    bytes: u64,
    inodes: u64,
}

impl Charge<'_> {
    /// The change happened and added `bytes` and `inodes` (which may differ
    /// from the estimate, or be negative).
    pub fn settle(mut self, bytes: i64, inodes: i64) {
        self.q
            .add(bytes - self.bytes as i64, inodes - self.inodes as i64);
        self.bytes = 0;
        self.inodes = 0;
    }
}

impl Charge<'_> {
    /// The change happened; its size is not known: the estimate stays.
    pub fn keep(mut self) {
        self.bytes = 0;
        self.inodes = 0;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.q.add(-(self.bytes as i64), -(self.inodes as i64));
    }
}

fn add_to(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let d = delta.unsigned_abs();
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(d))
        });
    }
}

/// Takes `want` from `counter` if that stays within `limit`.
fn take(counter: &AtomicU64, want: u64, limit: Option<u64>) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| match limit {
            Some(l) if want > 0 && v.saturating_add(want) > l => None,
            _ => Some(v.saturating_add(want)),
        })
        .is_ok()
}

impl Quota {
    pub fn new(
        bytes_limit: Option<u64>,
        inodes_limit: Option<u64>,
        block: u64,
        prefix: Prefix,
    ) -> Quota {
        let block = block.clamp(512, 1 << 20);
        let ns = match prefix {
            Prefix::Trusted => "trusted",
            Prefix::User => "user",
        };
        Quota {
            bytes_limit,
            inodes_limit,
            bytes: AtomicU64::new(0),
            inodes: AtomicU64::new(0),
            dir_bytes: block,
            block,
            stripes: [const { Mutex::new(()) }; STRIPES],
            orphans: Mutex::new(HashSet::new()),
            record_attr: CString::new(format!("{ns}.plyfs.usage")).unwrap_or_default(),
            from_record: false,
        }
    }

    pub fn figures(&self) -> Figures {
        Figures {
            bytes: self.bytes.load(Ordering::Relaxed),
            inodes: self.inodes.load(Ordering::Relaxed),
            bytes_limit: self.bytes_limit,
            inodes_limit: self.inodes_limit,
        }
    }

    /// What `df` shows: the limits as the size, the usage as used, and as
    /// free the smaller of what the limit leaves and what the upper
    /// filesystem has.
    pub fn limit_statfs(&self, st: &mut sys::fs::StatFs) {
        let f = self.figures();
        if let Some(limit) = f.bytes_limit {
            let unit = u64::from(st.frsize.max(1));
            let blocks = limit / unit;
            let left = limit.saturating_sub(f.bytes) / unit;
            st.blocks = blocks;
            st.bfree = st.bfree.min(left);
            st.bavail = st.bavail.min(left);
        }
        if let Some(limit) = f.inodes_limit {
            let left = limit.saturating_sub(f.inodes);
            st.files = limit;
            st.ffree = st.ffree.min(left);
        }
    }

    /// Takes `bytes` and `inodes` from the free space; ENOSPC (and nothing
    /// taken) when either does not fit. Growth of zero always fits, even
    /// over the limit (overwrites and removals stay possible).
    pub fn reserve(&self, bytes: u64, inodes: u64) -> Result<Charge<'_>> {
        if !take(&self.bytes, bytes, self.bytes_limit) {
            return Err(Errno::ENOSPC);
        }
        if !take(&self.inodes, inodes, self.inodes_limit) {
            add_to(&self.bytes, -(bytes as i64));
            return Err(Errno::ENOSPC);
        }
        Ok(Charge {
            q: self,
            bytes,
            inodes,
        })
    }

    /// Adds a measured change (which already happened).
    pub fn add(&self, bytes: i64, inodes: i64) {
        add_to(&self.bytes, bytes);
        add_to(&self.inodes, inodes);
    }

    /// What an object counts (see the module comment).
    pub fn charge_of(&self, st: &Stat) -> u64 {
        match st.file_type() {
            libc::S_IFDIR => self.dir_bytes,
            libc::S_IFCHR if st.rdev == 0 => 0,
            _ => st.blocks * 512,
        }
    }

    /// Whether an object counts as an inode (whiteouts do not).
    pub fn counts_inode(st: &Stat) -> bool {
        !crate::whiteout::is_char_whiteout(st)
    }

    fn round_up(&self, n: u64) -> u64 {
        n.div_ceil(self.block).saturating_mul(self.block)
    }

    /// The most a write of `len` bytes at `offset` can add to a file whose
    /// stat is `st`: nothing for an overwrite inside a fully allocated file,
    /// else the data rounded up plus a block for the filesystem's own
    /// bookkeeping (extent blocks).
    pub fn write_estimate(&self, st: &Stat, offset: u64, len: u64) -> u64 {
        let allocated = st.blocks * 512 >= self.round_up(st.size);
        if offset.saturating_add(len) <= st.size && allocated {
            return 0;
        }
        self.round_up(len).saturating_add(self.block)
    }

    /// The lock that serialises measuring one file.
    fn stripe(&self, key: u64) -> MutexGuard<'_, ()> {
        self.stripes[(key as usize) % STRIPES].lock()
    }

    /// The copy-up of an object with lower stat `st` (`data`: with its
    /// data): an inode, the data's blocks, a block for a directory.
    pub fn copy_estimate(&self, st: &Stat, data: bool) -> u64 {
        match st.file_type() {
            libc::S_IFDIR => self.dir_bytes,
            // Without its data (truncated right after): an empty file.
            libc::S_IFREG if !data => 0,
            libc::S_IFREG => (st.blocks * 512).max(if st.blocks == 0 {
                // A filesystem that reports no blocks: the size.
                self.round_up(st.size)
            } else {
                0
            }),
            _ => st.blocks * 512,
        }
    }
}

/// Counts the upper layer: (bytes, inodes), by the rules above. Iterative,
/// a bounded number of descriptors open at any depth.
pub fn count_tree(root: BorrowedFd<'_>, dir_bytes: u64) -> std::result::Result<(u64, u64), Errno> {
    use crate::layer::dirchain::DirChain;
    let top = sys::fs::openat(root, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut chain = DirChain::new(top, libc::O_RDONLY)?;
    // The root itself: a directory.
    let (mut bytes, mut inodes) = (dir_bytes, 1u64);
    let mut linked: HashSet<u64> = HashSet::new();
    // Per level: subdirectories still to visit.
    let mut pending: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut visit =
        |dir: BorrowedFd<'_>, todo: &mut Vec<Vec<u8>>| -> std::result::Result<(), Errno> {
            let open = sys::fs::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let mut names = Vec::new();
            sys::dirent::read_dir(open.as_fd(), |e| names.push(e.name))?;
            for n in names {
                let name = Name::new(&n)?;
                let st = match sys::fs::lstatat(dir, name.as_cstr()) {
                    Ok(st) => st,
                    Err(e) if e.code() == libc::ENOENT => continue,
                    Err(e) => return Err(e),
                };
                if !Quota::counts_inode(&st) {
                    continue;
                }
                if st.is_dir() {
                    bytes += dir_bytes;
                    inodes += 1;
                    todo.push(n);
                    continue;
                }
                if st.nlink > 1 && !linked.insert(st.ino) {
                    continue;
                }
                bytes += st.blocks * 512;
                inodes += 1;
            }
            Ok(())
        };
    let mut first = true;
    loop {
        if first {
            let mut todo = Vec::new();
            visit(chain.top(), &mut todo)?;
            pending[0] = todo;
            first = false;
        }
        let next = pending.last_mut().and_then(|p| p.pop());
        match next {
            Some(n) => {
                let name = Name::new(&n)?;
                let fd = match sys::fs::openat(
                    chain.top(),
                    name.as_cstr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                ) {
                    Ok(fd) => fd,
                    Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => continue,
                    Err(e) => return Err(e),
                };
                chain.push(fd)?;
                let mut todo = Vec::new();
                visit(chain.top(), &mut todo)?;
                pending.push(todo);
            }
            None => {
                if pending.len() <= 1 {
                    break;
                }
                pending.pop();
                chain.pop()?;
            }
        }
    }
    Ok((bytes, inodes))
}

/// The record kept in `WORKDIR/work`: usage, the directory charge it was
/// counted with, and the upper root's identity and change time.
fn record_text(bytes: u64, inodes: u64, dir_bytes: u64, root: &Stat) -> String {
    format!(
        "plyfs-usage 1 {bytes} {inodes} {dir_bytes} {} {} {}",
        root.ino, root.ctime.0, root.ctime.1
    )
}

fn parse_record(v: &[u8], dir_bytes: u64, root: &Stat) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let f: Vec<&str> = s.split(' ').collect();
    let [magic, "1", bytes, inodes, db, ino, cs, cns] = f.as_slice() else {
        return None;
    };
    if *magic != "plyfs-usage"
        || db.parse::<u64>().ok()? != dir_bytes
        || ino.parse::<u64>().ok()? != root.ino
        || cs.parse::<i64>().ok()? != root.ctime.0
        || cns.parse::<u32>().ok()? != root.ctime.1
    {
        return None;
    }
    Some((bytes.parse().ok()?, inodes.parse().ok()?))
}

fn open_work_dir(upper: &UpperLayer) -> std::result::Result<OwnedFd, Errno> {
    sys::fs::openat(upper.work.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Sets up the limit of a mount with `size=`/`inodes=`: the usage from
/// the record of the last clean unmount, or counted; the record is removed
/// before the mount goes live, so that a crash leaves none behind.
pub fn setup(
    size: Option<u64>,
    inodes: Option<u64>,
    upper: Option<&UpperLayer>,
    prefix: Prefix,
    volatile: bool,
) -> std::result::Result<Option<Quota>, String> {
    if size.is_none() && inodes.is_none() {
        return Ok(None);
    }
    let Some(upper) = upper else {
        // A read-only mount holds nothing: the limit has nothing to limit
        // (containers-storage passes the same options to image mounts).
        log::debug!("size=/inodes= ignored on a mount without an upper layer");
        return Ok(None);
    };
    let describe = |e: Errno| std::io::Error::from_raw_os_error(e.code()).to_string();
    let fs = sys::fs::fstatfs(upper.root.as_fd())
        .map_err(|e| format!("cannot read the upper filesystem: {}", describe(e)))?;
    let block = u64::from(fs.bsize.max(fs.frsize)).max(512);
    let mut q = Quota::new(size, inodes, block, prefix);
    let root = sys::fs::fstat(upper.root.as_fd())
        .map_err(|e| format!("cannot stat upperdir: {}", describe(e)))?;
    let work = open_work_dir(upper)
        .map_err(|e| format!("cannot open the work directory: {}", describe(e)))?;
    let record = sys::xattr::fget(work.as_fd(), &q.record_attr).ok();
    let counted = record
        .as_deref()
        .and_then(|v| parse_record(v, q.dir_bytes, &root));
    let (bytes, inodes) = match counted {
        Some(c) => {
            q.from_record = true;
            c
        }
        None => {
            let t = std::time::Instant::now();
            let c = count_tree(upper.root.as_fd(), q.dir_bytes)
                .map_err(|e| format!("cannot count the upper layer: {}", describe(e)))?;
            log::info!(
                "counted the upper layer: {} bytes, {} inodes in {:?}",
                c.0,
                c.1,
                t.elapsed()
            );
            c
        }
    };
    if record.is_some() {
        match sys::xattr::fremove(work.as_fd(), &q.record_attr) {
            Ok(()) if !volatile => {
                let _ = sys::io::fsync(work.as_fd(), false);
            }
            Ok(()) => {}
            Err(e) => log::warn!("cannot remove the usage record: {e:?}"),
        }
    }
    q.bytes.store(bytes, Ordering::Relaxed);
    q.inodes.store(inodes, Ordering::Relaxed);
    for (what, used, limit) in [("bytes", bytes, size), ("inodes", inodes, q.inodes_limit)] {
        if let Some(l) = limit
            && used > l
        {
            log::warn!(
                "the upper layer already holds {used} {what}, over the limit of {l}: writes fail with ENOSPC until some is removed"
            );
        }
    }
    Ok(Some(q))
}

impl Plyfs {
    /// Writes the usage record at a clean unmount (see the module comment).
    pub fn quota_save(&self) {
        let (Some(q), Some(upper)) = (&self.quota, &self.upper) else {
            return;
        };
        let res = (|| -> std::result::Result<(), Errno> {
            let root = sys::fs::fstat(upper.root.as_fd())?;
            let f = q.figures();
            let text = record_text(f.bytes, f.inodes, q.dir_bytes, &root);
            let work = open_work_dir(upper)?;
            sys::xattr::fset(work.as_fd(), &q.record_attr, text.as_bytes(), 0)?;
            if !self.cfg.volatile {
                sys::io::fsync(work.as_fd(), false)?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            log::warn!("cannot record the upper layer's usage (the next mount counts it): {e:?}");
        }
    }

    /// Runs `op`, a change of the upper regular file open as `fd` (node
    /// `node`) that may add up to `estimate` bytes, and counts its real
    /// growth. ENOSPC before `op` when the estimate does not fit.
    pub fn quota_measure<T>(
        &self,
        node: &Node,
        fd: BorrowedFd<'_>,
        estimate: impl FnOnce(&Quota, &Stat) -> u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.quota_change(node, || sys::fs::fstat(fd), estimate, op)
    }

    /// Like [`Plyfs::quota_measure`], the object reached by `stat`.
    pub fn quota_change<T>(
        &self,
        node: &Node,
        stat: impl Fn() -> Result<Stat>,
        estimate: impl FnOnce(&Quota, &Stat) -> u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(q) = &self.quota else {
            return op();
        };
        let _g = q.stripe(node.ino);
        let before = stat()?;
        let charge = q.reserve(estimate(q, &before), 0)?;
        let res = op();
        let after = stat()
            .map(|st| q.charge_of(&st))
            .unwrap_or_else(|_| q.charge_of(&before));
        charge.settle(after as i64 - q.charge_of(&before) as i64, 0);
        res
    }

    /// `fallocate` with `mode` of `len` bytes at `offset`.
    pub fn quota_fallocate<T>(
        &self,
        node: &Node,
        fd: BorrowedFd<'_>,
        mode: i32,
        offset: u64,
        len: u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let frees = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_COLLAPSE_RANGE) != 0;
        self.quota_measure(
            node,
            fd,
            |q, st| {
                if frees {
                    0
                } else {
                    q.write_estimate(st, offset, len)
                        .max(q.round_up(len).saturating_add(q.block))
                }
            },
            op,
        )
    }

    /// A write of `len` bytes at `offset` through `fd` (see
    /// [`Plyfs::quota_measure`]).
    pub fn quota_write<T>(
        &self,
        node: &Node,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.quota_measure(node, fd, |q, st| q.write_estimate(st, offset, len), op)
    }

    /// Takes space for a new object of type `kind` (an inode; a block for
    /// a directory); settle it with [`Plyfs::quota_made`].
    pub fn quota_new(&self, kind: u32) -> Result<Option<Charge<'_>>> {
        let Some(q) = &self.quota else {
            return Ok(None);
        };
        let bytes = if kind == libc::S_IFDIR {
            q.dir_bytes
        } else {
            0
        };
        q.reserve(bytes, 1).map(Some)
    }

    /// The object a [`Plyfs::quota_new`] or [`Plyfs::quota_copy`] charge
    /// was for now exists, with stat `st`.
    pub fn quota_made(&self, charge: Option<Charge<'_>>, st: &Stat) {
        if let (Some(c), Some(q)) = (charge, &self.quota) {
            let inode = i64::from(Quota::counts_inode(st));
            c.settle(q.charge_of(st) as i64, inode);
        }
    }

    /// Takes space for the copy-up of a lower object with stat `st`.
    pub fn quota_copy(&self, st: &Stat, data: bool) -> Result<Option<Charge<'_>>> {
        let Some(q) = &self.quota else {
            return Ok(None);
        };
        q.reserve(q.copy_estimate(st, data), 1).map(Some)
    }

    /// A copy-up charged with [`Plyfs::quota_copy`] was placed; `staged`
    /// is the stat of the staged copy (its real size replaces the
    /// estimate; unknown: the estimate stays).
    pub fn quota_placed(&self, charge: Option<Charge<'_>>, staged: Option<&Stat>) {
        let Some(c) = charge else { return };
        match staged {
            Some(st) => self.quota_made(Some(c), st),
            None => c.keep(),
        }
    }

    /// The upper object `st` (of node `victim`, if the kernel knows it)
    /// lost its last name. Its space comes back now, or when its last open
    /// handle is released.
    pub fn quota_removed(&self, st: &Stat, victim: Option<&Node>) {
        let Some(q) = &self.quota else { return };
        if !Quota::counts_inode(st) {
            return;
        }
        if let Some(v) = victim
            && st.is_reg()
            && !self.handles.files_of(v.ino).is_empty()
        {
            q.orphans.lock().insert(v.ino);
            return;
        }
        q.add(-(q.charge_of(st) as i64), -1);
    }

    /// A handle of `node` open as `fd` is being released: the last one of
    /// a removed file gives its space back.
    pub fn quota_release(&self, node: &Arc<Node>, fd: BorrowedFd<'_>) {
        let Some(q) = &self.quota else { return };
        if !q.orphans.lock().contains(&node.ino) || !self.handles.files_of(node.ino).is_empty() {
            return;
        }
        if q.orphans.lock().remove(&node.ino) {
            let bytes = sys::fs::fstat(fd).map(|st| q.charge_of(&st)).unwrap_or(0);
            q.add(-(bytes as i64), -1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: u32, size: u64, blocks: u64) -> Stat {
        Stat {
            dev: 1,
            ino: 2,
            mode: kind | 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            blocks,
            blksize: 4096,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    #[test]
    fn reserve_and_settle() {
        let q = Quota::new(Some(10 * 4096), Some(3), 4096, Prefix::User);
        let c = q.reserve(8 * 4096, 1).unwrap();
        assert!(q.reserve(3 * 4096, 0).is_err());
        c.settle(4096, 1);
        assert_eq!(q.figures().bytes, 4096);
        {
            let _dropped = q.reserve(4096, 1).unwrap();
            assert_eq!(q.figures().inodes, 2);
        }
        assert_eq!(q.figures().inodes, 1);
        let _a = q.reserve(0, 1).unwrap();
        let _b = q.reserve(0, 1).unwrap();
        assert_eq!(q.reserve(0, 1).err(), Some(Errno::ENOSPC));
        // A failed inode reservation takes no bytes.
        assert_eq!(q.figures().bytes, 4096);
        // Growth of nothing fits even when full.
        q.add(100 * 4096, 0);
        assert!(q.reserve(0, 0).is_ok());
        q.add(-1_000_000_000, -100);
        assert_eq!(q.figures().bytes, 0);
    }

    #[test]
    fn estimates() {
        let q = Quota::new(None, None, 4096, Prefix::User);
        let full = st(libc::S_IFREG, 8192, 16);
        assert_eq!(q.write_estimate(&full, 0, 8192), 0);
        assert_eq!(q.write_estimate(&full, 4096, 8192), 3 * 4096);
        let sparse = st(libc::S_IFREG, 1 << 20, 0);
        assert_eq!(q.write_estimate(&sparse, 0, 10), 2 * 4096);
        assert_eq!(q.copy_estimate(&full, true), 8192);
        assert_eq!(q.copy_estimate(&full, false), 0);
        assert_eq!(q.copy_estimate(&st(libc::S_IFREG, 10, 0), true), 4096);
        assert_eq!(q.copy_estimate(&st(libc::S_IFDIR, 0, 8), true), 4096);
        assert_eq!(q.charge_of(&st(libc::S_IFCHR, 0, 0)), 0);
        assert!(!Quota::counts_inode(&st(libc::S_IFCHR, 0, 0)));
    }

    #[test]
    fn records() {
        let root = st(libc::S_IFDIR, 4096, 8);
        let t = record_text(123, 4, 4096, &root);
        assert_eq!(parse_record(t.as_bytes(), 4096, &root), Some((123, 4)));
        assert_eq!(parse_record(t.as_bytes(), 1024, &root), None);
        let mut moved = root;
        moved.ctime = (5, 0);
        assert_eq!(parse_record(t.as_bytes(), 4096, &moved), None);
        assert_eq!(parse_record(b"garbage", 4096, &root), None);
    }
}
