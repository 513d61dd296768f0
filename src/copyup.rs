//! Copy-up: making a lower object exist in the upper layer.
//!
//! The copy is built under a temporary name in the work directory (data,
//! owner, xattrs, `overlay.origin`, mode, times, fsync) and renamed into its
//! place, so a crash leaves either no upper object or a complete one.
//! Parents are copied first. One node is copied by one thread at a time;
//! others wait and find the copy done.
//!
//! Locking: a node's `copy_lock` may be held while taking its parent's
//! `dir_lock` (for the final rename); never the reverse, so namespace
//! operations copy their operands up before they lock directories.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::Node;
use crate::origin;
use crate::ovl_xattr;
use crate::sys::{self, Errno, fs::Stat, fs::TimeSpec};
use crate::table::Held;

/// Size of each chunk for the read/write fallback.
const CHUNK: usize = 1 << 20;

/// How much of a regular file a copy-up copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMode {
    /// Data and metadata.
    Full,
    /// Metadata only; the file is emptied right after (O_TRUNC, truncate
    /// to zero), so its data would be thrown away.
    Empty,
    /// Metadata only, marked `overlay.metacopy`: the data stays below
    /// until the file is opened for writing (`metacopy=on`).
    Meta,
}

impl Plyfs {
    /// Ensures `node` exists in the upper layer, copying it (and its parent
    /// directories) up if needed: for a change of metadata (owner, mode,
    /// times, xattrs, a new name), so with `metacopy=on` a regular file's
    /// data stays below.
    pub fn copy_up(&self, node: &Arc<Node>) -> Result<()> {
        let mode = if self.cfg.features.metacopy {
            DataMode::Meta
        } else {
            DataMode::Full
        };
        self.copy_up_opts(node, mode)
    }

    /// Ensures `node` exists in the upper layer with its data, for writing
    /// (`truncate`: the data is about to be thrown away): copies it up, or
    /// completes the copy of a metacopy file.
    pub fn copy_up_with_data(&self, node: &Arc<Node>, truncate: bool) -> Result<()> {
        let mode = if truncate {
            DataMode::Empty
        } else {
            DataMode::Full
        };
        self.copy_up_opts(node, mode)?;
        if node.has_upper() && node.metacopy().is_some() {
            self.copy_up_meta_data(node, truncate)?;
        }
        Ok(())
    }

    /// Copies a directory and everything visible in it up, then makes it
    /// opaque: afterwards it no longer depends on the lower layers and can
    /// move without a redirect. Depth-first with an explicit stack (any
    /// depth); each directory is sealed after its children are copied.
    pub fn copy_up_tree(&self, node: &Arc<Node>) -> Result<()> {
        enum Step<'a> {
            Enter(Held<'a>),
            Seal(Held<'a>),
        }
        let top = self.table.hold(node.ino).ok_or(Errno::ENOENT)?;
        let mut stack = vec![Step::Enter(top)];
        while let Some(step) = stack.pop() {
            match step {
                Step::Enter(n) => {
                    self.copy_up(&n)?;
                    if !n.is_dir() {
                        continue;
                    }
                    let listing = self.build_listing(&n)?;
                    let mut children = Vec::with_capacity(listing.entries.len());
                    for e in &listing.entries {
                        let name = Name::new(&e.name)?;
                        children.push(Step::Enter(self.node_at(&n, &name)?));
                    }
                    stack.push(Step::Seal(n));
                    stack.extend(children);
                }
                Step::Seal(n) => self.seal_copied_dir(&n)?,
            }
        }
        Ok(())
    }

    /// Makes a directory whose whole tree was copied up opaque.
    fn seal_copied_dir(&self, node: &Arc<Node>) -> Result<()> {
        let (pfd, name) = self.upper_loc(node)?;
        self.set_opaque(pfd.as_fd(), &name)?;
        self.kernel.attrs_changed(node.ino);
        let mut s = node.state.write();
        s.opaque = true;
        s.lowers = Default::default();
        s.stack_checked = true;
        drop(s);
        node.touch_version();
        Ok(())
    }

    /// Like [`Plyfs::copy_up`], copying file data as `data` says.
    /// Ancestors without an upper copy are copied first, top-down, in a
    /// loop.
    pub fn copy_up_opts(&self, node: &Arc<Node>, data: DataMode) -> Result<()> {
        if node.has_upper() {
            // An indexed hard link may still need its name linked up.
            if self.index.is_some() {
                return self.index_link_up(node, None);
            }
            return Ok(());
        }
        self.upper_layer()?;
        // A node from before a change of the lower layers no longer shown
        // at its name loses the name here: it must not be copied up there.
        self.refresh(node);
        let mut missing: Vec<Arc<Node>> = Vec::new();
        let mut cur = node.clone();
        loop {
            let (parent, _) = self.parent_of(&cur)?;
            if parent.has_upper() {
                break;
            }
            if missing.len() > self.table.len() {
                log::warn!("the names of {node:?} form a loop");
                return Err(Errno::ELOOP);
            }
            missing.push(parent.clone());
            cur = parent;
        }
        while let Some(dir) = missing.pop() {
            self.copy_up_one(&dir, DataMode::Full)?;
        }
        self.copy_up_one(node, data)
    }

    /// Copies one node up; its parent already has an upper copy.
    fn copy_up_one(&self, node: &Arc<Node>, data: DataMode) -> Result<()> {
        if node.has_upper() {
            return Ok(());
        }
        let (parent, name) = self.parent_of(node)?;
        let lower = node.top_lower()?;
        let lst = lower.stat()?;
        // Other names of a multiply-linked lower file get linked to the
        // copy; with index=on the copy goes through the index.
        let indexed = !node.is_dir() && lst.nlink > 1 && self.index_active();
        let siblings = if !node.is_dir() && lst.nlink > 1 {
            self.lower_siblings(node, &lower, (&parent, &name))?
        } else {
            Vec::new()
        };
        let _g = node.copy_lock.lock();
        if node.has_upper() {
            return Ok(());
        }
        self.copy_up_locked(node, &parent, &name, &lower, &lst, data, indexed)?;
        if !siblings.is_empty() {
            let pfd = self.upper_dir_fd(&parent)?;
            self.link_siblings(node, (&pfd, &name), &siblings);
        }
        if indexed {
            // The overlay still counts the lower links.
            self.index_copied_up(node, lst.nlink)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_up_locked(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &Name,
        lower: &Arc<LowerObj>,
        lst: &Stat,
        data: DataMode,
        indexed: bool,
    ) -> Result<()> {
        let work = self.work()?;
        let (lpfd, lname) = lower.locate()?;
        let st = *lst;
        if st.file_type() != node.kind {
            log::warn!("lower object of {node:?} changed type under the mount");
            return Err(Errno::ESTALE);
        }
        // The copy's space is taken before it is made (see `quota`); given
        // back if it is not placed.
        let charge = self.quota_copy(&st, matches!(data, DataMode::Full))?;
        let tmp = work.temp_name()?;
        let from = node.metacopy();
        let staged = self.stage_copy(lpfd.as_fd(), &lname, &st, &tmp, data, from.as_deref());
        let marked = match staged {
            Ok(m) => m,
            Err(e) => {
                work.discard(&tmp);
                return Err(e);
            }
        };
        let staged_st = match &charge {
            Some(_) => sys::fs::lstatat(work.fd(), tmp.as_cstr()).ok(),
            None => None,
        };
        let pfd = self.upper_dir_fd(parent)?;
        let placed = if indexed {
            self.index_place_staged(node, parent, &pfd, &tmp, name, lower, lst)
        } else {
            let _pg = parent.dir_lock.lock();
            self.place_staged(&pfd, &tmp, name, parent)
        };
        let new = match placed {
            Ok(st) => st,
            Err(e) => {
                work.discard(&tmp);
                return Err(if e.code() == libc::EEXIST {
                    // Something else appeared at the name meanwhile.
                    Errno::ENOENT
                } else {
                    e
                });
            }
        };
        self.quota_placed(charge, staged_st.as_ref());
        let ident = (new.dev, new.ino);
        // A metacopy copy keeps its data below; any other copy has it.
        node.set_metacopy(marked.map(|v| {
            Arc::new(match &from {
                Some(d) => d.with_value(v),
                None => crate::metacopy::DataRef::found(lower.clone(), v),
            })
        }));
        node.state.write().upper = Some(ident).into();
        self.inos.alias(ident, node.ino);
        // New ctime of the copy and of its parent (renamed into, times
        // restored): the kernel's cached ones are stale.
        self.kernel.attrs_changed(node.ino);
        self.kernel.attrs_changed(parent.ino);
        log::debug!("copied up {node:?} as {name:?}");
        Ok(())
    }

    /// Renames a staged object into `parent` as `name`, keeping the parent's
    /// timestamps and marking it impure. Returns the placed object's stat.
    /// The caller holds the parent's `dir_lock`.
    fn place_staged(
        &self,
        pfd: &Arc<OwnedFd>,
        tmp: &Name,
        name: &Name,
        parent: &Arc<Node>,
    ) -> Result<Stat> {
        let work = self.work()?;
        let pst = sys::fs::fstat(pfd.as_fd())?;
        sys::fs::renameat2(
            work.fd(),
            tmp.as_cstr(),
            pfd.as_fd(),
            name.as_cstr(),
            sys::fs::RENAME_NOREPLACE,
        )?;
        // Like the kernel, a copy-up does not change the parent's times.
        let _ = sys::fs::utimensat(
            pfd.as_fd(),
            c"",
            TimeSpec::Set(pst.atime.0, pst.atime.1),
            TimeSpec::Set(pst.mtime.0, pst.mtime.1),
        );
        self.mark_impure(parent, pfd);
        parent.touch_version();
        sys::fs::lstatat(pfd.as_fd(), name.as_cstr())
    }

    /// Sets `overlay.impure=y` on an upper directory: it now holds entries
    /// whose inode numbers come from `overlay.origin`.
    pub fn mark_impure(&self, dir: &Arc<Node>, dfd: &Arc<OwnedFd>) {
        if dir.state.read().impure {
            return;
        }
        self.write_impure(dir, dfd, true);
    }

    /// Removes `overlay.impure` from a pure upper directory whose listing
    /// found no entry numbered from an origin, as the kernel does when it
    /// reads such a directory (best effort: the mark is only a hint).
    pub fn clear_impure(&self, dir: &Arc<Node>, dfd: &Arc<OwnedFd>) {
        self.write_impure(dir, dfd, false);
    }

    /// Sets or removes `overlay.impure` on an upper directory and records
    /// the result in its node (best effort: failures are only logged).
    fn write_impure(&self, dir: &Arc<Node>, dfd: &Arc<OwnedFd>, impure: bool) {
        let attr = self.cfg.prefix.name(ovl_xattr::IMPURE);
        let res = sys::fs::open_dir_here(dfd.as_fd()).and_then(|d| match impure {
            true => sys::xattr::fset(d.as_fd(), &attr, b"y", 0),
            false => sys::xattr::fremove(d.as_fd(), &attr),
        });
        match res {
            Ok(()) => {
                dir.state.write().impure = impure;
                self.kernel.attrs_changed(dir.ino);
            }
            Err(e) if !impure && e.code() == libc::ENODATA => dir.state.write().impure = false,
            Err(e) => log::debug!("cannot set impure={impure} on {dir:?}: {e:?}"),
        }
    }

    /// Builds the copy of the lower object `lname` (in `lpfd`, with stat
    /// `st`) as `tmp` in the work directory. `from`: where the data of a
    /// lower metacopy file is. Returns the `overlay.metacopy` value when
    /// the copy is metadata only.
    fn stage_copy(
        &self,
        lpfd: BorrowedFd<'_>,
        lname: &Name,
        st: &Stat,
        tmp: &Name,
        mut data: DataMode,
        from: Option<&crate::metacopy::DataRef>,
    ) -> Result<Option<crate::metacopy::MetacopyValue>> {
        let wfd = self.work()?.fd();
        let perm = st.mode & 0o7777;
        let mut marked = None;
        match st.file_type() {
            libc::S_IFREG => {
                let out = sys::fs::openat(
                    wfd,
                    tmp.as_cstr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )?;
                let input = open_lower_for_read(lpfd, lname)?;
                // The data: that of a metacopy file's chain, else the file's.
                let data_in = match from {
                    Some(d) => {
                        let (dpfd, dname) = self.metacopy_data(d)?.locate()?;
                        let f = open_lower_for_read(dpfd.as_fd(), &dname)?;
                        self.check_verity(d, f.as_fd())?;
                        Some(f)
                    }
                    None => {
                        self.refuse_lower_metacopy(input.as_fd())?;
                        None
                    }
                };
                let data_fd = data_in.as_ref().map_or(input.as_fd(), |f| f.as_fd());
                if data == DataMode::Meta {
                    match self.metacopy_value_for(data_fd)? {
                        Some(v) => marked = Some(v),
                        // verity=require and no digest: copy the data.
                        None => data = DataMode::Full,
                    }
                }
                match data {
                    DataMode::Full if st.size > 0 => {
                        let dst = sys::fs::fstat(data_fd)?;
                        // Fully allocated files have no holes to look for.
                        let sparse = dst.blocks * 512 < dst.size;
                        let devs = (dst.dev, self.upper_layer()?.dev);
                        copy_data(data_fd, out.as_fd(), st.size, sparse, devs)?;
                    }
                    // A sparse file of the data's size, as the kernel makes.
                    DataMode::Meta => sys::io::ftruncate(out.as_fd(), st.size)?,
                    _ => {}
                }
                self.copy_meta(lpfd, lname, st, wfd, tmp)?;
                if let Some(v) = &marked {
                    let attr = self.cfg.prefix.name(ovl_xattr::METACOPY);
                    sys::xattr::set_at(wfd, tmp.as_cstr(), &attr, &v.encode(), 0)?;
                }
                self.carry_flags(input.as_fd(), out.as_fd(), tmp)?;
                sys::fs::fchmod(out.as_fd(), perm)?;
                sys::fs::futimens(
                    out.as_fd(),
                    TimeSpec::Set(st.atime.0, st.atime.1),
                    TimeSpec::Set(st.mtime.0, st.mtime.1),
                )?;
                // Data reaches the disk before the name does; a metacopy
                // file has none to wait for (the kernel skips it too).
                if !self.cfg.volatile && marked.is_none() {
                    sys::io::fsync(out.as_fd(), false)?;
                }
            }
            libc::S_IFDIR => {
                sys::fs::mkdirat(wfd, tmp.as_cstr(), 0o700)?;
                self.copy_meta(lpfd, lname, st, wfd, tmp)?;
                let dir = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                let input = crate::ops::file::open_noatime(lpfd, lname, dir)?;
                let out = sys::fs::openat(wfd, tmp.as_cstr(), dir, 0)?;
                self.carry_flags(input.as_fd(), out.as_fd(), tmp)?;
                sys::fs::chmodat(wfd, tmp.as_cstr(), perm)?;
                set_times(wfd, tmp, st)?;
            }
            libc::S_IFLNK => {
                let target = sys::fs::readlinkat(lpfd, lname.as_cstr())?;
                let target = std::ffi::CString::new(target).map_err(|_| Errno::EINVAL)?;
                sys::fs::symlinkat(&target, wfd, tmp.as_cstr())?;
                self.copy_meta(lpfd, lname, st, wfd, tmp)?;
                set_times(wfd, tmp, st)?;
            }
            kind => {
                sys::fs::mknodat(wfd, tmp.as_cstr(), kind | 0o600, st.rdev)?;
                self.copy_meta(lpfd, lname, st, wfd, tmp)?;
                sys::fs::chmodat(wfd, tmp.as_cstr(), perm)?;
                set_times(wfd, tmp, st)?;
            }
        }
        Ok(marked)
    }

    /// Owner, xattrs and `overlay.origin` of a staged copy.
    fn copy_meta(
        &self,
        lpfd: BorrowedFd<'_>,
        lname: &Name,
        st: &Stat,
        wfd: BorrowedFd<'_>,
        tmp: &Name,
    ) -> Result<()> {
        match sys::fs::lchownat(wfd, tmp.as_cstr(), st.uid, st.gid) {
            Ok(()) => {}
            // An unprivileged daemon keeps files as its own; the kernel
            // would refuse such a mount altogether.
            Err(e) if e.code() == libc::EPERM && !self.cfg.can_chown => {}
            Err(e) => return Err(e),
        }
        copy_xattrs(lpfd, lname, wfd, tmp)?;
        if let Ok(h) = sys::handle::name_to_handle_at(lpfd, lname.as_cstr()) {
            let uuid = self.lower_uuid_for(st.dev);
            if let Some(v) = origin::encode(&h, &uuid) {
                let attr = self.cfg.prefix.name(ovl_xattr::ORIGIN);
                if let Err(e) = sys::xattr::set_at(wfd, tmp.as_cstr(), &attr, &v, 0) {
                    log::debug!("cannot record origin of {tmp:?}: {e:?}");
                }
            }
        }
        Ok(())
    }

    /// The UUID a lower file handle carries (null with `uuid=off`).
    pub(crate) fn lower_uuid_for(&self, dev: u64) -> [u8; 16] {
        if self.cfg.features.uuid == crate::options::UuidMode::Off {
            return [0; 16];
        }
        self.lowers
            .load()
            .iter()
            .find(|l| l.root.dev == dev)
            .map(|l| l.uuid)
            .unwrap_or([0; 16])
    }
}

impl Plyfs {
    /// Inode flags a copy keeps, and immutable/append-only as
    /// `overlay.protattr` on the staged copy `tmp` (see `ops::fileattr`).
    fn carry_flags(&self, lower: BorrowedFd<'_>, out: BorrowedFd<'_>, tmp: &Name) -> Result<()> {
        if let Some(v) = self.copy_inode_flags(lower, out)? {
            let attr = self.cfg.prefix.name(ovl_xattr::PROTATTR);
            sys::xattr::set_at(self.work()?.fd(), tmp.as_cstr(), &attr, &v, 0)?;
        }
        Ok(())
    }
}

fn set_times(wfd: BorrowedFd<'_>, tmp: &Name, st: &Stat) -> Result<()> {
    sys::fs::utimensat(
        wfd,
        tmp.as_cstr(),
        TimeSpec::Set(st.atime.0, st.atime.1),
        TimeSpec::Set(st.mtime.0, st.mtime.1),
    )
}

/// Opens a lower regular file for reading without following symlinks,
/// without updating its atime when allowed.
pub fn open_lower_for_read(lpfd: BorrowedFd<'_>, lname: &Name) -> Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW;
    sys::fs::openat_noatime(lpfd, lname.as_cstr(), flags)
}

/// Copies every xattr but overlay markers; attributes the target refuses
/// (trusted.* without privilege, user.* on symlinks) are skipped.
pub fn copy_xattrs(
    sfd: BorrowedFd<'_>,
    sname: &Name,
    dfd: BorrowedFd<'_>,
    dname: &Name,
) -> Result<()> {
    let list = match sys::xattr::list_at(sfd, sname.as_cstr()) {
        Ok(l) => l,
        Err(e) if e.code() == libc::ENOTSUP => return Ok(()),
        Err(e) => return Err(e),
    };
    for attr in sys::xattr::split_list(&list) {
        if ovl_xattr::is_marker(attr) {
            continue;
        }
        let Ok(cattr) = std::ffi::CString::new(attr) else {
            continue;
        };
        let value = match sys::xattr::get_at(sfd, sname.as_cstr(), &cattr) {
            Ok(v) => v,
            Err(e) if e.code() == libc::ENODATA => continue,
            Err(e) => return Err(e),
        };
        match sys::xattr::set_at(dfd, dname.as_cstr(), &cattr, &value, 0) {
            Ok(()) => {}
            Err(e) if matches!(e.code(), libc::EPERM | libc::ENOTSUP | libc::EACCES) => {
                log::debug!(
                    "xattr {:?} not copied: {e:?}",
                    String::from_utf8_lossy(attr)
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `size` bytes of file data: shares extents when the filesystem
/// can (FICLONE), else copies with `copy_file_range` or plain reads and
/// writes; for `sparse` files only the data segments, so holes stay holes.
/// `devs` are the (source, destination) devices: a pair that cannot share
/// extents is not asked again (other layers may well be able to).
pub fn copy_data(
    input: BorrowedFd<'_>,
    out: BorrowedFd<'_>,
    size: u64,
    sparse: bool,
    devs: (u64, u64),
) -> Result<()> {
    static NO_CLONE: parking_lot::Mutex<Vec<(u64, u64)>> = parking_lot::Mutex::new(Vec::new());
    if !NO_CLONE.lock().contains(&devs) {
        match sys::io::ficlone(out, input) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY | libc::EXDEV
                ) =>
            {
                NO_CLONE.lock().push(devs);
            }
            Err(_) => {}
        }
    }
    if !sparse {
        copy_range(input, out, 0, size)?;
        return sys::io::ftruncate(out, size);
    }
    let mut pos: u64 = 0;
    while pos < size {
        let data = match sys::io::lseek(input, pos as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            // No data after `pos`: the rest is a hole.
            Err(e) if e.code() == libc::ENXIO => break,
            // No hole support: treat the file as one data segment.
            Err(_) => pos,
        };
        let hole = match sys::io::lseek(input, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        copy_range(input, out, data, hole)?;
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    // Trailing holes and the exact size.
    sys::io::ftruncate(out, size)
}

/// Copies bytes `from..to` (same offsets in both files), with
/// `copy_file_range` where the kernel can, else with reads and writes.
fn copy_range(input: BorrowedFd<'_>, out: BorrowedFd<'_>, from: u64, to: u64) -> Result<()> {
    let mut use_cfr = true;
    let mut off = from;
    while off < to {
        let want = ((to - off) as usize).min(CHUNK * 16);
        let n = if use_cfr {
            match sys::io::copy_file_range(input, off, out, off, want) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.code(),
                        libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP
                    ) =>
                {
                    use_cfr = false;
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            copy_chunk(input, out, off, want.min(CHUNK))?
        };
        if n == 0 {
            // The file shrank under us: stop at what exists.
            break;
        }
        off += n as u64;
    }
    Ok(())
}

fn copy_chunk(input: BorrowedFd<'_>, out: BorrowedFd<'_>, off: u64, len: usize) -> Result<usize> {
    let mut buf = vec![0u8; len];
    let n = sys::io::pread_full(input, &mut buf, off)?;
    sys::io::pwrite_all(out, &buf[..n], off)?;
    Ok(n)
}
