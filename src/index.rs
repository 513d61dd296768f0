//! The kernel's inode index (`index=on`): lower hard links stay one file
//! after copy-up, in the kernel's own format.
//!
//! On disk (`Documentation/filesystems/overlayfs.rst`, `fs/overlayfs/`):
//! `WORKDIR/index/<hex of the lower file's origin handle>` is a hard link
//! to the upper copy of a lower hard link. A copy-up goes into the index
//! first and is then linked at the name written to ("link up"); names not
//! linked up find the upper copy through the index. The kernel links up
//! a name when it is changed; a FUSE request that changes an inode does
//! not say through which name, so plyfs links up every name of the inode
//! visible in the merged view at once (the names its copy-up of lower hard
//! links already finds), which a kernel mount reads the same way. `overlay.nlink` on the
//! upper inode keeps the overlay's link count relative to the upper or
//! lower inode's (`U+1`, `L-2`), updated before every link, unlink or
//! rename, so that it stays right across mounts. When the last name goes,
//! the index entry goes too. At mount the upper root's `overlay.origin`
//! records the top lower layer and the index directory's `overlay.upper`
//! the upper root: another pairing is refused, as the kernel refuses it.
//!
//! An index left by a kernel `index=on` mount is read even by a plyfs
//! mount without `index=on` (its names then stay one file instead of
//! showing the old lower data); only `index=on` creates entries.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use dashmap::DashMap;

use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::{Ident, Node};
use crate::origin;
use crate::ovl_xattr::{self, Prefix};
use crate::resolve::{Found, Lookup};
use crate::sys::{self, Errno, fs::Stat, fs::TimeSpec};
use crate::whiteout;

const BOTH: [Prefix; 2] = [Prefix::Trusted, Prefix::User];
pub const INDEX: &std::ffi::CStr = c"index";

/// `WORKDIR/index` of a mount.
pub struct IndexDir {
    /// `O_PATH` descriptor of the directory.
    fd: Arc<OwnedFd>,
    /// `index=on`: copy-ups of lower hard links create entries. Without it
    /// an existing index is only read.
    pub active: bool,
    /// Upper inodes known to be indexed, with their entry names.
    names: DashMap<Ident, Box<[u8]>>,
    /// Indexed inodes whose visible names were all linked up.
    linked: dashmap::DashSet<Ident>,
}

impl IndexDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The entry name of an indexed upper inode.
    pub fn name_of(&self, upper: Ident) -> Option<Box<[u8]>> {
        self.names.get(&upper).map(|n| n.clone())
    }

    fn remember(&self, upper: Ident, name: &[u8]) {
        self.names.insert(upper, name.into());
    }
}

/// An encoded file handle of `fd` (a directory, `O_PATH` is enough).
fn handle_value(
    fd: BorrowedFd<'_>,
    uuid: &[u8; 16],
    flags: u8,
) -> std::result::Result<Vec<u8>, String> {
    let h = sys::handle::name_to_handle_at(fd, c"")
        .map_err(|e| format!("the filesystem does not support file handles ({e:?})"))?;
    origin::encode_with(&h, uuid, flags).ok_or_else(|| "file handle too long".to_string())
}

/// Checks that the xattr `attr` of the directory `dir` (open for reading)
/// holds `want`, storing it when missing.
fn verify_or_set(
    dir: BorrowedFd<'_>,
    attr: &std::ffi::CStr,
    want: &[u8],
) -> std::result::Result<bool, String> {
    match sys::xattr::fget(dir, attr) {
        Ok(v) => Ok(v == want),
        Err(e) if e.code() == libc::ENODATA => {
            sys::xattr::fset(dir, attr, want, 0)
                .map_err(|e| format!("cannot set {attr:?} ({e:?})"))?;
            Ok(true)
        }
        Err(e) => Err(format!("cannot read {attr:?} ({e:?})")),
    }
}

/// What [`setup`] needs to know of the layers.
pub struct SetupLayers<'a> {
    /// The user's workdir (holding `index`).
    pub work_base: BorrowedFd<'a>,
    pub upper_root: BorrowedFd<'a>,
    pub upper_uuid: [u8; 16],
    pub top_lower_root: BorrowedFd<'a>,
    pub lower_uuid: [u8; 16],
    pub prefix: Prefix,
}

/// Prepares the index at mount time. `active` (`index=on`): verifies or
/// records which lower and upper layers belong together, creates the
/// index directory and clears leftovers of interrupted operations;
/// `Ok(None)` when the layers cannot be indexed (the kernel then falls
/// back to `index=off` as well). Inactive: an existing, non-empty index
/// is opened for reading.
pub fn setup(active: bool, l: &SetupLayers<'_>) -> std::result::Result<Option<IndexDir>, String> {
    let open = |base: BorrowedFd<'_>| sys::fs::open_dir_path(base, INDEX);
    if !active {
        let Ok(fd) = open(l.work_base) else {
            return Ok(None);
        };
        let Ok(dir) = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        else {
            return Ok(None);
        };
        let mut any = false;
        let _ = sys::dirent::read_dir(dir.as_fd(), |_| any = true);
        return Ok(any.then(|| IndexDir {
            fd: Arc::new(fd),
            active: false,
            names: DashMap::new(),
            linked: Default::default(),
        }));
    }
    let lower_fh = match handle_value(l.top_lower_root, &l.lower_uuid, 0) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("lower layer: {e}; falling back to index=off");
            return Ok(None);
        }
    };
    let upper_fh = match handle_value(l.upper_root, &l.upper_uuid, origin::FLAG_PATH_UPPER) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("upper layer: {e}; falling back to index=off");
            return Ok(None);
        }
    };
    let root = sys::fs::openat(l.upper_root, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| format!("cannot open the upper root ({e:?})"))?;
    if !verify_or_set(root.as_fd(), &l.prefix.name(ovl_xattr::ORIGIN), &lower_fh)? {
        return Err(
            "index=on: the upper layer was used with other lower layers (the upper \
                    root's overlay.origin is not the top lower layer); mount with index=off or \
                    use a new upper"
                .into(),
        );
    }
    match sys::fs::mkdirat(l.work_base, INDEX, 0) {
        Ok(()) => {}
        Err(e) if e.code() == libc::EEXIST => {}
        Err(e) => return Err(format!("cannot create the index directory ({e:?})")),
    }
    let fd = open(l.work_base).map_err(|e| format!("cannot open the index directory ({e:?})"))?;
    let dir = sys::fs::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| format!("cannot read the index directory ({e:?})"))?;
    if !verify_or_set(dir.as_fd(), &l.prefix.name(ovl_xattr::UPPER), &upper_fh)? {
        return Err(
            "index=on: the index directory belongs to another upper layer (its \
                    overlay.upper differs); remove WORKDIR/index or mount with index=off"
                .into(),
        );
    }
    let ix = IndexDir {
        fd: Arc::new(fd),
        active: true,
        names: DashMap::new(),
        linked: Default::default(),
    };
    cleanup(&ix, dir.as_fd());
    Ok(Some(ix))
}

/// Removes what interrupted operations leave in the index: temporary
/// entries (`#...`) and entries whose every name is gone (overlay link
/// count 0), as the kernel's `ovl_indexdir_cleanup` does.
fn cleanup(ix: &IndexDir, dir: BorrowedFd<'_>) {
    let mut names = Vec::new();
    let _ = sys::dirent::read_dir(dir, |e| names.push(e.name));
    for n in names {
        let Ok(name) = Name::new(&n) else { continue };
        if n.first() == Some(&b'#') {
            let _ = crate::rmtree::remove_tree(ix.fd(), name.as_cstr());
            continue;
        }
        let Ok(st) = sys::fs::lstatat(ix.fd(), name.as_cstr()) else {
            continue;
        };
        if !st.is_reg() || st.nlink != 1 {
            continue;
        }
        if let Ok(m) = whiteout::file_markers(ix.fd(), name.as_cstr(), &BOTH)
            && let Some(NlinkRel::Upper(d)) = m.nlink.as_deref().and_then(parse_nlink)
            && st.nlink as i64 + d <= 0
        {
            log::info!("removing orphan index entry {name:?}");
            let _ = sys::fs::unlinkat(ix.fd(), name.as_cstr(), false);
        }
    }
}

/// `overlay.nlink`: the overlay's link count relative to the upper or the
/// lower inode's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NlinkRel {
    Upper(i64),
    Lower(i64),
}

fn parse_nlink(v: &[u8]) -> Option<NlinkRel> {
    let s = std::str::from_utf8(v).ok()?;
    let (base, n) = s.split_at_checked(1)?;
    if !n.starts_with(['+', '-']) {
        return None;
    }
    let n: i64 = n.parse().ok()?;
    match base {
        "U" => Some(NlinkRel::Upper(n)),
        "L" => Some(NlinkRel::Lower(n)),
        _ => None,
    }
}

fn format_nlink(base: char, diff: i64) -> Vec<u8> {
    format!("{base}{diff:+}").into_bytes()
}

impl Plyfs {
    /// `index=on` is in effect (copy-ups of lower hard links are indexed).
    pub fn index_active(&self) -> bool {
        self.index.as_ref().is_some_and(|i| i.active)
    }

    /// The index entry name of a lower object: its encoded origin handle,
    /// in hexadecimal.
    fn index_name(&self, lower: &Arc<LowerObj>) -> Result<Name> {
        let (pfd, name) = lower.locate()?;
        let h = sys::handle::name_to_handle_at(pfd.as_fd(), name.as_cstr())?;
        let uuid = self.lower_uuid_for(lower.dev);
        let v = origin::encode(&h, &uuid).ok_or(Errno::EIO)?;
        Name::new(&origin::hex(&v))
    }

    /// A lower non-directory with several links was found on top as `f`:
    /// if the index holds its upper copy, that copy is what the name shows.
    pub(crate) fn index_lookup(&self, f: &mut Found) -> Result<()> {
        let Some(ix) = &self.index else {
            return Ok(());
        };
        let Some(lower) = f.lowers.first().cloned() else {
            return Ok(());
        };
        let Ok(name) = self.index_name(&lower) else {
            return Ok(());
        };
        let st = match sys::fs::lstatat(ix.fd(), name.as_cstr()) {
            Ok(st) => st,
            Err(e) if e.code() == libc::ENOENT => return Ok(()),
            Err(e) => return Err(e),
        };
        if st.file_type() != f.kind {
            log::warn!("bad index entry {name:?} for {lower:?}");
            return Err(Errno::EIO);
        }
        let m = whiteout::file_markers(ix.fd(), name.as_cstr(), &BOTH)?;
        if m.metacopy && f.metacopy.is_none() {
            if !self.cfg.features.metacopy {
                log::warn!("refusing to follow the metacopy index entry {name:?}");
                return Err(Errno::EPERM);
            }
            let value = crate::metacopy::MetacopyValue::parse(&m.metacopy_value)?;
            f.metacopy = Some(Arc::new(crate::metacopy::DataRef::found(lower, value)));
        }
        ix.remember((st.dev, st.ino), name.as_bytes());
        f.upper = Some((st.dev, st.ino));
        f.stat = st;
        f.origin = m.origin;
        Ok(())
    }

    /// An upper non-directory with an origin and several links was found as
    /// `f`: it is indexed when the index entry of its origin is this inode.
    pub(crate) fn index_check_upper(&self, f: &Found) {
        let (Some(ix), Some(u), Some(o)) = (&self.index, f.upper, f.origin.as_deref()) else {
            return;
        };
        if o.is_empty() || ix.names.contains_key(&u) {
            return;
        }
        let Ok(name) = Name::new(&origin::hex(o)) else {
            return;
        };
        if let Ok(st) = sys::fs::lstatat(ix.fd(), name.as_cstr())
            && (st.dev, st.ino) == u
        {
            ix.remember(u, name.as_bytes());
        }
    }

    /// The index entry of an indexed node (`O_PATH` directory, name), as
    /// a place where its upper object is found when no name of it is.
    pub(crate) fn index_place(&self, upper: Ident) -> Option<(Arc<OwnedFd>, Name)> {
        let ix = self.index.as_ref()?;
        let name = ix.name_of(upper)?;
        Some((ix.fd.clone(), Name::new(&name).ok()?))
    }

    /// The overlay's link count of an indexed upper inode with stat `st`
    /// and entry `name`, from `overlay.nlink` (`None` without one).
    fn overlay_nlink_raw(
        &self,
        name: &Name,
        st: &Stat,
        lower: Option<&Arc<LowerObj>>,
    ) -> Option<i64> {
        let ix = self.index.as_ref()?;
        let rel = whiteout::file_markers(ix.fd(), name.as_cstr(), &BOTH)
            .ok()
            .and_then(|m| m.nlink)
            .and_then(|v| parse_nlink(&v))?;
        Some(match rel {
            NlinkRel::Upper(d) => st.nlink as i64 + d,
            NlinkRel::Lower(d) => lower?.stat().ok()?.nlink as i64 + d,
        })
    }

    /// Like [`Plyfs::overlay_nlink_raw`], falling back to the upper count
    /// (as the kernel does) when there is no usable value.
    fn overlay_nlink(&self, name: &Name, st: &Stat, lower: Option<&Arc<LowerObj>>) -> u64 {
        match self.overlay_nlink_raw(name, st, lower) {
            Some(n) if n > 0 => n as u64,
            _ => st.nlink,
        }
    }

    /// st_nlink of an indexed hard link is the overlay's count (names in
    /// the merged view), kept in `overlay.nlink` as the kernel keeps it.
    pub(crate) fn index_stat(&self, node: &Node, st: &mut Stat) {
        let Some(ix) = &self.index else {
            return;
        };
        if node.kind == libc::S_IFDIR {
            return;
        }
        let (upper, lower) = {
            let s = node.state.read();
            (s.upper.get(), s.lowers.top(node.kind))
        };
        let Some(name) = upper.and_then(|u| ix.name_of(u)) else {
            return;
        };
        let Ok(name) = Name::new(&name) else { return };
        // `st` may be a name's or the index entry's stat: the same inode.
        st.nlink = self.overlay_nlink(&name, st, lower.as_ref());
    }

    fn write_nlink(&self, name: &Name, base: char, diff: i64) -> Result<()> {
        let ix = self.index.as_ref().ok_or(Errno::EIO)?;
        let attr = self.cfg.prefix.name(ovl_xattr::NLINK);
        sys::xattr::set_at(ix.fd(), name.as_cstr(), &attr, &format_nlink(base, diff), 0)
    }

    /// Stores the overlay link count of an indexed inode relative to its
    /// upper count, before an operation that changes both together.
    fn index_store_upper_rel(&self, upper: Ident, lower: Option<&Arc<LowerObj>>) -> Result<()> {
        let Some(ix) = &self.index else {
            return Ok(());
        };
        let Some(name) = ix.name_of(upper) else {
            return Ok(());
        };
        let name = Name::new(&name)?;
        let st = sys::fs::lstatat(ix.fd(), name.as_cstr())?;
        let n = self.overlay_nlink(&name, &st, lower);
        self.write_nlink(&name, 'U', n as i64 - st.nlink as i64)
    }

    /// Places a staged copy of the lower hard link `lower` (stat `lst`)
    /// into the index, then links it at `name` in `parent` (the kernel's
    /// copy-up "to index" and link-up). Returns the stat of the new name.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn index_place_staged(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        pfd: &Arc<OwnedFd>,
        tmp: &Name,
        name: &Name,
        lower: &Arc<LowerObj>,
        lst: &Stat,
    ) -> Result<Stat> {
        let ix = self.index.as_ref().ok_or(Errno::EIO)?;
        let iname = self.index_name(lower)?;
        sys::fs::renameat2(
            self.work()?.fd(),
            tmp.as_cstr(),
            ix.fd(),
            iname.as_cstr(),
            sys::fs::RENAME_NOREPLACE,
        )?;
        let ist = sys::fs::lstatat(ix.fd(), iname.as_cstr())?;
        ix.remember((ist.dev, ist.ino), iname.as_bytes());
        // Until now the overlay counted the lower links.
        let n = lst.nlink as i64;
        self.write_nlink(&iname, 'U', n - ist.nlink as i64)?;
        self.link_up_from_index(node, parent, pfd, name, &iname, n, lst.nlink)
    }

    /// Links the index entry `iname` at `name` in `parent` (upper `pfd`),
    /// keeping `overlay.nlink` right on both sides of the link, the
    /// parent's times, and its impure mark. `n`: the overlay link count.
    #[allow(clippy::too_many_arguments)]
    fn link_up_from_index(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        pfd: &Arc<OwnedFd>,
        name: &Name,
        iname: &Name,
        n: i64,
        lower_nlink: u64,
    ) -> Result<Stat> {
        let ix = self.index.as_ref().ok_or(Errno::EIO)?;
        self.mark_impure(parent, pfd);
        self.write_nlink(iname, 'L', n - lower_nlink as i64)?;
        {
            let _g = parent.dir_lock.lock();
            let pst = sys::fs::fstat(pfd.as_fd())?;
            sys::fs::linkat(ix.fd(), iname.as_cstr(), pfd.as_fd(), name.as_cstr())?;
            let _ = sys::fs::utimensat(
                pfd.as_fd(),
                c"",
                TimeSpec::Set(pst.atime.0, pst.atime.1),
                TimeSpec::Set(pst.mtime.0, pst.mtime.1),
            );
        }
        parent.touch_version();
        self.kernel.attrs_changed(parent.ino);
        self.kernel.attrs_changed(node.ino);
        let st = sys::fs::lstatat(pfd.as_fd(), name.as_cstr())?;
        self.write_nlink(iname, 'U', n - st.nlink as i64)?;
        self.add_alias(node, parent.ino, name);
        Ok(st)
    }

    /// Whether `f` (found at `name` in `parent`) is an indexed file that
    /// only the index holds at that name (not linked up yet).
    pub(crate) fn index_only_name(&self, f: &Found, parent: &Arc<Node>, name: &Name) -> bool {
        let (Some(ix), Some(u)) = (&self.index, f.upper) else {
            return false;
        };
        if !ix.names.contains_key(&u) {
            return false;
        }
        if !parent.has_upper() {
            return true;
        }
        let Ok(pfd) = self.upper_dir_fd(parent) else {
            return false;
        };
        matches!(sys::fs::lstatat(pfd.as_fd(), name.as_cstr()), Err(e) if e.code() == libc::ENOENT)
    }

    /// Before a change to an indexed file: links every name of it visible
    /// in the merged view that only the index holds (`at`, a name the
    /// change came through, first), keeping `overlay.nlink` right.
    pub(crate) fn index_link_up(
        &self,
        node: &Arc<Node>,
        at: Option<(&Arc<Node>, &Name)>,
    ) -> Result<()> {
        let Some(ix) = &self.index else {
            return Ok(());
        };
        if node.is_dir() {
            return Ok(());
        }
        let (upper, lower) = {
            let s = node.state.read();
            (s.upper.get(), s.lowers.top(node.kind))
        };
        let (Some(u), Some(lower)) = (upper, lower) else {
            return Ok(());
        };
        let Some(iname) = ix.name_of(u) else {
            return Ok(());
        };
        if ix.linked.contains(&u) && at.is_none() {
            return Ok(());
        }
        let (parent, name) = match at {
            Some((p, n)) => (p.clone(), Name::new(n.as_bytes())?),
            None => self.parent_of(node)?,
        };
        let iname = Name::new(&iname)?;
        let lower_nlink = lower.stat()?.nlink;
        let siblings = self.lower_siblings(node, &lower, (&parent, &name))?;
        self.copy_up(&parent)?;
        let pfd = self.upper_dir_fd(&parent)?;
        let _g = node.copy_lock.lock();
        let ist = sys::fs::lstatat(ix.fd(), iname.as_cstr())?;
        let n = self.overlay_nlink(&iname, &ist, Some(&lower)) as i64;
        if matches!(sys::fs::lstatat(pfd.as_fd(), name.as_cstr()), Err(e) if e.code() == libc::ENOENT)
        {
            self.link_up_from_index(node, &parent, &pfd, &name, &iname, n, lower_nlink)?;
        }
        if !siblings.is_empty() {
            self.link_siblings(node, (&ix.fd, &iname), &siblings);
            let ist = sys::fs::lstatat(ix.fd(), iname.as_cstr())?;
            self.write_nlink(&iname, 'U', n - ist.nlink as i64)?;
        }
        ix.linked.insert(u);
        Ok(())
    }

    /// After a copy-up through the index that linked the other names of
    /// the inode too: the overlay count `n` relative to the upper one.
    pub(crate) fn index_copied_up(&self, node: &Node, n: u64) -> Result<()> {
        let Some(ix) = &self.index else {
            return Ok(());
        };
        let Some(u) = node.state.read().upper.get() else {
            return Ok(());
        };
        let Some(iname) = ix.name_of(u) else {
            return Ok(());
        };
        let iname = Name::new(&iname)?;
        let ist = sys::fs::lstatat(ix.fd(), iname.as_cstr())?;
        self.write_nlink(&iname, 'U', n as i64 - ist.nlink as i64)?;
        ix.linked.insert(u);
        Ok(())
    }

    /// Before a name of a non-directory goes away (unlink, or replaced by a
    /// rename): an indexed file gets its upper name first (a lower hard
    /// link not yet copied up is copied up, as the kernel does with
    /// `index=on`), and its overlay link count is stored relative to the
    /// upper one. Returns the upper inode when it is indexed.
    pub(crate) fn index_before_remove(
        &self,
        parent: &Arc<Node>,
        name: &Name,
    ) -> Result<Option<Ident>> {
        let Some(ix) = &self.index else {
            return Ok(None);
        };
        let f = match self.resolve(parent, name)? {
            Lookup::Found(f) if !f.is_dir() => f,
            _ => return Ok(None),
        };
        let indexed = f.upper.is_some_and(|u| ix.names.contains_key(&u));
        let fresh_link = f.upper.is_none() && ix.active && f.stat.nlink > 1;
        if !indexed && !fresh_link {
            return Ok(None);
        }
        let node = self.node_at(parent, name)?;
        self.copy_up(&node)?;
        self.index_link_up(&node, Some((parent, name)))?;
        let (upper, lower) = {
            let s = node.state.read();
            (s.upper.get(), s.lowers.top(node.kind))
        };
        let Some(u) = upper.filter(|u| ix.names.contains_key(u)) else {
            return Ok(None);
        };
        self.index_store_upper_rel(u, lower.as_ref())?;
        Ok(Some(u))
    }

    /// After a name of the indexed inode `upper` went away: when it was the
    /// last one, the index entry goes too (with the upper inode pinned for
    /// the kernel's open references).
    pub(crate) fn index_after_remove(&self, upper: Ident, node: Option<&Arc<Node>>) {
        let Some(ix) = &self.index else { return };
        let Some(iname) = ix.name_of(upper) else {
            return;
        };
        let Ok(iname) = Name::new(&iname) else { return };
        let Ok(st) = sys::fs::lstatat(ix.fd(), iname.as_cstr()) else {
            return;
        };
        let lower = node.and_then(|n| n.state.read().lowers.top(n.kind));
        match self.overlay_nlink_raw(&iname, &st, lower.as_ref()) {
            Some(n) if n <= 0 => {}
            _ => return,
        }
        if st.nlink != 1 {
            // Names the overlay does not count (a lower link added under
            // the mount): count what the upper has, as the kernel does.
            let _ = self.write_nlink(&iname, 'U', -1);
            return;
        }
        if let Some(n) = node {
            self.pin_inode(n, ix.fd(), &iname);
            n.state.write().unlinked = true;
        }
        match sys::fs::unlinkat(ix.fd(), iname.as_cstr(), false) {
            Ok(()) => {
                ix.names.remove(&upper);
                self.inos.unalias(upper);
            }
            Err(e) => log::warn!("cannot remove index entry {iname:?}: {e:?}"),
        }
    }

    /// The node in the table standing for the upper inode `upper`.
    pub(crate) fn inos_node(&self, upper: Ident) -> Option<Arc<Node>> {
        self.table.get(self.inos.map(upper))
    }

    /// Before a new name of `node` is linked: the overlay count is stored
    /// relative to the upper one, which the link raises with it.
    pub(crate) fn index_before_link(&self, node: &Arc<Node>) -> Result<()> {
        let (upper, lower) = {
            let s = node.state.read();
            (s.upper.get(), s.lowers.top(node.kind))
        };
        match upper {
            Some(u) => self.index_store_upper_rel(u, lower.as_ref()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nlink_values() {
        assert_eq!(parse_nlink(b"U+0"), Some(NlinkRel::Upper(0)));
        assert_eq!(parse_nlink(b"U-1"), Some(NlinkRel::Upper(-1)));
        assert_eq!(parse_nlink(b"L+2"), Some(NlinkRel::Lower(2)));
        assert_eq!(parse_nlink(b"X+2"), None);
        assert_eq!(parse_nlink(b"U2"), None);
        assert_eq!(parse_nlink(b""), None);
        assert_eq!(format_nlink('U', 0), b"U+0");
        assert_eq!(format_nlink('U', -1), b"U-1");
        assert_eq!(format_nlink('L', 3), b"L+3");
    }
}
