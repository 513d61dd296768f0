//! Metacopy files: regular files whose top object holds metadata only,
//! their data living in a file further down (kernel `metacopy=on`, and
//! the data-only lower layers composefs mounts use).
//!
//! On disk (the kernel's format): the metadata object carries
//! `overlay.metacopy` (empty, or `{version 0, len, flags, digest_algo,
//! digest[len - 4]}`) and is a sparse file of the data's size; its data is
//! found by looking its name (or its `overlay.redirect`: a name in the same
//! directory, or an absolute path from the layer roots) up in the layers
//! below, following further metacopy files, down to a plain regular file.
//! When the last metacopy file on the way has an absolute redirect and no
//! regular layer holds the data, the data-only layers are searched for it
//! on first use (as the kernel's lazy lowerdata lookup).
//!
//! With `metacopy=on`, chown, chmod, utimes, xattr changes, hard links and
//! renames copy a lower regular file up as metadata only; opening it for
//! writing or truncating it copies the data into the upper file in place,
//! then drops the marker (a crash in between leaves a metacopy file whose
//! data still comes from below). Renames and hard links record the redirect
//! the kernel expects. Without `metacopy=on` a metacopy file is refused
//! with EPERM, as the kernel refuses to follow it: it is never served as
//! the zeros of its sparse placeholder.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::Node;
use crate::ovl_xattr::{self, Prefix};
use crate::resolve::{Found, Place, Target, parse_redirect};
use crate::sys::{self, Errno, fs::Stat};
use crate::whiteout;

const BOTH: [Prefix; 2] = [Prefix::Trusted, Prefix::User];
/// `{version, len, flags, digest_algo}` before the digest.
const HEADER: usize = 4;
/// The longest digest (SHA-512).
const MAX_DIGEST: usize = 64;
/// The kernel's `redirect_max` default: longer absolute redirects fail
/// with EXDEV.
pub const REDIRECT_MAX: usize = 256;

/// A parsed `overlay.metacopy` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetacopyValue {
    pub flags: u8,
    /// fs-verity hash algorithm (1 = SHA-256, 2 = SHA-512), 0 for none.
    pub digest_algo: u8,
    pub digest: Vec<u8>,
}

impl MetacopyValue {
    /// Parses a stored value the way the kernel's
    /// `ovl_check_metacopy_xattr` does: empty is a valid marker, anything
    /// else needs version 0 and a length byte matching the value's size.
    pub fn parse(v: &[u8]) -> std::result::Result<MetacopyValue, Errno> {
        if v.is_empty() {
            return Ok(MetacopyValue::default());
        }
        if v.len() < HEADER
            || v.len() > HEADER + MAX_DIGEST
            || v[0] != 0
            || v[1] as usize != v.len()
        {
            return Err(Errno::EIO);
        }
        Ok(MetacopyValue {
            flags: v[2],
            digest_algo: v[3],
            digest: v[HEADER..].to_vec(),
        })
    }

    /// The stored form: empty without flags and digest, as the kernel
    /// writes it.
    pub fn encode(&self) -> Vec<u8> {
        if self.flags == 0 && self.digest_algo == 0 && self.digest.is_empty() {
            return Vec::new();
        }
        let mut v = vec![
            0,
            (HEADER + self.digest.len()) as u8,
            self.flags,
            self.digest_algo,
        ];
        v.extend_from_slice(&self.digest);
        v
    }
}

/// Where the data of a metacopy file is.
#[derive(Debug)]
pub struct DataRef {
    /// The regular file holding the data, once known.
    data: OnceLock<Arc<LowerObj>>,
    /// An absolute path to look up in the data-only layers on first use.
    lazy: Option<Box<[u8]>>,
    /// `overlay.metacopy` of the file's metadata object (its digest).
    pub value: MetacopyValue,
    /// The digest was checked against the data file (`verity=`).
    verified: AtomicBool,
}

impl DataRef {
    pub fn found(data: Arc<LowerObj>, value: MetacopyValue) -> DataRef {
        let cell = OnceLock::new();
        let _ = cell.set(data);
        DataRef {
            data: cell,
            lazy: None,
            value,
            verified: AtomicBool::new(false),
        }
    }

    fn lazy(path: Vec<u8>, value: MetacopyValue) -> DataRef {
        DataRef {
            data: OnceLock::new(),
            lazy: Some(path.into()),
            value,
            verified: AtomicBool::new(false),
        }
    }

    /// The data file, when already known.
    pub fn known(&self) -> Option<&Arc<LowerObj>> {
        self.data.get()
    }

    /// The same data with another metadata value (after a metacopy
    /// copy-up, which writes its own `overlay.metacopy`).
    pub fn with_value(&self, value: MetacopyValue) -> DataRef {
        DataRef {
            data: self.data.clone(),
            lazy: self.lazy.clone(),
            value,
            verified: AtomicBool::new(false),
        }
    }
}

/// Where a chain of metacopy files ended.
enum DataLoc {
    File(Arc<LowerObj>),
    /// In the data-only layers, at this absolute path.
    Lazy(Vec<u8>),
}

/// Reads the metacopy value of a lower file: `None` when it is a plain
/// file, EIO when the value is malformed.
fn parse_markers(m: &whiteout::FileMarkers) -> Result<Option<MetacopyValue>> {
    if !m.metacopy {
        return Ok(None);
    }
    match MetacopyValue::parse(&m.metacopy_value) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            log::warn!("invalid overlay.metacopy value {:?}", m.metacopy_value);
            Err(e)
        }
    }
}

impl Plyfs {
    /// Whether lookups check lower regular files for metacopy markers (and
    /// follow them): with `metacopy=on` or data-only layers. Otherwise a
    /// lower metacopy file is refused when it is opened or copied up
    /// (one check per open instead of one per lookup).
    pub fn follow_metacopy(&self) -> bool {
        self.cfg.features.metacopy || !self.data_layers.is_empty()
    }

    /// Whether the upper object of `node` holds its data (it has one and
    /// is not a metacopy file).
    pub fn upper_has_data(&self, node: &Node) -> bool {
        node.state.read().upper.is_some() && node.metacopy().is_none()
    }

    /// The object an open handle of `node` may stand in for when answering
    /// getattr: false when its descriptor is a data file of another object.
    pub fn handle_is_meta(&self, node: &Node, on_upper: bool) -> bool {
        on_upper || (node.state.read().upper.is_none() && node.metacopy().is_none())
    }

    /// An upper metacopy file was found as `f` (a regular file) in a
    /// directory whose lower stack is `stack`: finds its data.
    pub(crate) fn upper_metacopy(
        &self,
        stack: &[Arc<LowerObj>],
        name: &Name,
        f: &mut Found,
        m: &whiteout::FileMarkers,
    ) -> Result<()> {
        if !self.cfg.features.metacopy {
            log::warn!("refusing to follow metacopy origin for {name:?} (mount with metacopy=on)");
            return Err(Errno::EPERM);
        }
        let Some(value) = parse_markers(m)? else {
            return Ok(());
        };
        let (target, abs) = match m.redirect.as_deref().and_then(parse_redirect) {
            Some(Target::Abs(c)) => (Target::Abs(c), true),
            Some(t) => (t, false),
            None => (Target::Name(name.as_bytes().to_vec()), false),
        };
        let positions = if abs {
            self.lowers.load().iter().map(|l| l.root.clone()).collect()
        } else {
            stack.to_vec()
        };
        let (top, loc) = self.find_data(positions, target, abs, None)?;
        let Some((top, _)) = top else {
            log::warn!("metacopy file {name:?} has no lower data");
            return Err(Errno::EIO);
        };
        f.redirect = m.redirect.clone().map(Into::into);
        f.lowers = vec![top];
        f.metacopy = Some(Arc::new(self.data_ref(loc, value)));
        Ok(())
    }

    fn data_ref(&self, loc: DataLoc, value: MetacopyValue) -> DataRef {
        match loc {
            DataLoc::File(o) => DataRef::found(o, value),
            DataLoc::Lazy(p) => DataRef::lazy(p, value),
        }
    }

    /// A lower regular file was found on top as `f` at `name` in a
    /// directory with lower stack `stack` (lookups that follow metacopy
    /// files only): if it is a metacopy file, finds its data below.
    pub(crate) fn lower_metacopy(
        &self,
        stack: &[Arc<LowerObj>],
        name: &Name,
        f: &mut Found,
    ) -> Result<()> {
        let Some(top) = f.lowers.first().cloned() else {
            return Ok(());
        };
        let (pfd, lname) = top.locate()?;
        let m = whiteout::file_markers(pfd.as_fd(), lname.as_cstr(), &BOTH)?;
        let Some(value) = parse_markers(&m)? else {
            return Ok(());
        };
        let below: Vec<Arc<LowerObj>> = stack
            .iter()
            .filter(|l| l.layer() > top.layer())
            .cloned()
            .collect();
        let (target, abs, positions) = match m.redirect.as_deref().and_then(parse_redirect) {
            Some(Target::Abs(c)) => (
                Target::Abs(c),
                true,
                self.lowers
                    .load()
                    .iter()
                    .filter(|l| l.root.layer() > top.layer())
                    .map(|l| l.root.clone())
                    .collect(),
            ),
            Some(t) => (t, false, below),
            None => (Target::Name(name.as_bytes().to_vec()), false, below),
        };
        let (_, loc) = self.find_data(positions, target, abs, Some((top, f.stat)))?;
        f.metacopy = Some(Arc::new(self.data_ref(loc, value)));
        Ok(())
    }

    /// Follows a metacopy file down the lower layers `positions`, looking
    /// for `target` (a name in each, or an absolute path from their roots),
    /// the way the kernel's `ovl_lookup` does for a metacopy dentry: a
    /// whiteout or anything but a regular file ends the search, further
    /// metacopy files are passed through (their redirects change what is
    /// looked up), and the first plain regular file holds the data. `top`
    /// is the first lower file found (its metadata and st_ino count when
    /// there is no upper one). Without `metacopy=on` the chain may only
    /// end in the data-only layers: going on in a regular layer is refused
    /// (EPERM), as the kernel refuses it.
    #[allow(clippy::type_complexity)]
    fn find_data(
        &self,
        mut positions: Vec<Arc<LowerObj>>,
        mut target: Target,
        mut abs: bool,
        mut top: Option<(Arc<LowerObj>, Stat)>,
    ) -> Result<(Option<(Arc<LowerObj>, Stat)>, DataLoc)> {
        let refuse = || {
            log::warn!("refusing to follow a metacopy file (mount with metacopy=on)");
            Errno::EPERM
        };
        let mut i = 0;
        while i < positions.len() {
            if !self.cfg.features.metacopy {
                return Err(refuse());
            }
            let lo = positions[i].clone();
            i += 1;
            let (pobj, last) = match self.target_place(lo, &mut target)? {
                Place::At(p, last, _) => (p, last),
                Place::Missing => continue,
                Place::Cut => break,
            };
            let pfd = pobj.dir_fd()?;
            let st = match sys::fs::lstatat(pfd.as_fd(), last.as_cstr()) {
                Ok(st) => st,
                Err(e) if e.code() == libc::ENOENT => {
                    if i < positions.len() && pobj.has_oci_whiteout(last.as_bytes())? {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !st.is_reg() {
                // A whiteout, directory or special file: no data here.
                break;
            }
            let m = whiteout::file_markers(pfd.as_fd(), last.as_cstr(), &BOTH)?;
            if m.xattr_whiteout && st.size == 0 && pobj.dir_info()?.xattr_whiteouts {
                break;
            }
            let obj = Arc::new(LowerObj::from_stat(&pobj, last.as_bytes(), &st));
            if top.is_none() {
                top = Some((obj.clone(), st));
            }
            if parse_markers(&m)?.is_none() {
                return Ok((top, DataLoc::File(obj)));
            }
            // Another metacopy file: its redirect says where to go on.
            abs = false;
            match m.redirect.as_deref().and_then(parse_redirect) {
                Some(Target::Abs(c)) => {
                    abs = true;
                    target = Target::Abs(c);
                    positions = self
                        .lowers
                        .load()
                        .iter()
                        .filter(|l| l.root.layer() > obj.layer())
                        .map(|l| l.root.clone())
                        .collect();
                    i = 0;
                }
                Some(Target::Name(n)) => {
                    target = match target {
                        Target::Name(_) => Target::Name(n),
                        Target::Abs(mut c) => {
                            c.pop();
                            c.push(n);
                            Target::Abs(c)
                        }
                    };
                }
                None => {}
            }
        }
        // The regular layers hold no data: an absolute redirect goes on in
        // the data-only layers (looked up on first use).
        if let (Some(_), true, Target::Abs(c)) = (&top, abs, &target)
            && !self.data_layers.is_empty()
        {
            let mut path = Vec::new();
            for comp in c {
                path.push(b'/');
                path.extend_from_slice(comp);
            }
            return Ok((top, DataLoc::Lazy(path)));
        }
        if !self.cfg.features.metacopy {
            return Err(refuse());
        }
        log::warn!("metacopy file with no lower data found");
        Err(Errno::EIO)
    }

    /// The file holding the data of a metacopy file, looking it up in the
    /// data-only layers on first use.
    pub fn metacopy_data(&self, d: &DataRef) -> Result<Arc<LowerObj>> {
        if let Some(o) = d.data.get() {
            return Ok(o.clone());
        }
        let path = d.lazy.as_deref().ok_or(Errno::EIO)?;
        let obj = self.lookup_data_layers(path).inspect_err(|e| {
            log::warn!(
                "lazy lowerdata lookup of {:?} failed: {e:?}",
                String::from_utf8_lossy(path)
            )
        })?;
        Ok(d.data.get_or_init(|| obj).clone())
    }

    /// Looks an absolute path up in the data-only layers, top first: every
    /// component but the last must be a directory, the last a regular file;
    /// symlinks are never followed (the kernel's `LOOKUP_BENEATH |
    /// LOOKUP_NO_SYMLINKS` without `LOOKUP_FOLLOW`: ELOOP in the middle,
    /// ENOENT as the last component). The error of the last layer tried when none
    /// has it.
    pub fn lookup_data_layers(&self, path: &[u8]) -> Result<Arc<LowerObj>> {
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if comps.is_empty() || comps.iter().any(|c| *c == b"." || *c == b"..") {
            return Err(Errno::ENOENT);
        }
        let mut err = Errno::ENOENT;
        'layers: for layer in &self.data_layers {
            let mut cur = layer.root.clone();
            for (i, c) in comps.iter().enumerate() {
                let name = Name::new(c)?;
                let fd = cur.dir_fd()?;
                let st = match sys::fs::lstatat(fd.as_fd(), name.as_cstr()) {
                    Ok(st) => st,
                    Err(e) => {
                        err = e;
                        continue 'layers;
                    }
                };
                let last = i + 1 == comps.len();
                let ok = if last { st.is_reg() } else { st.is_dir() };
                if !ok {
                    // A symlink in the middle is refused (ELOOP); the
                    // last component is not followed, and not a file.
                    err = if st.is_symlink() && !last {
                        Errno::ELOOP
                    } else if last {
                        Errno::ENOENT
                    } else {
                        Errno::ENOTDIR
                    };
                    continue 'layers;
                }
                if st.dev != cur.dev {
                    err = Errno::EXDEV;
                    continue 'layers;
                }
                cur = Arc::new(LowerObj::from_stat(&cur, c, &st));
            }
            return Ok(cur);
        }
        Err(err)
    }

    /// Whether the lower-only listing entry `e` of `dir` is a metacopy
    /// file (readdirplus then takes the full lookup path).
    pub(crate) fn lower_is_metacopy(
        &self,
        _dir: &Arc<Node>,
        e: &crate::listing::ListEntry,
        stack: &[Arc<LowerObj>],
    ) -> Result<bool> {
        let Some(&(si, _)) = e.lowers.first() else {
            return Ok(false);
        };
        let lo = stack.get(si).ok_or(Errno::EIO)?;
        let name = Name::new(&e.name)?;
        let fd = lo.dir_fd()?;
        Ok(whiteout::file_markers(fd.as_fd(), name.as_cstr(), &BOTH)?.metacopy)
    }

    /// Opens the data of a metacopy node for reading: the lower file found
    /// through its chain, checked against the recorded fs-verity digest.
    pub(crate) fn open_metacopy_data(&self, d: &DataRef, flags: i32) -> Result<OwnedFd> {
        let data = self.metacopy_data(d)?;
        let (pfd, name) = data.locate()?;
        let fd = crate::ops::file::open_noatime(pfd.as_fd(), &name, flags)?;
        self.check_verity(d, fd.as_fd())?;
        Ok(fd)
    }

    /// `verity=on|require`: the data file must have the digest recorded in
    /// the metadata object (checked once per node, as the kernel does).
    pub(crate) fn check_verity(&self, d: &DataRef, data: BorrowedFd<'_>) -> Result<()> {
        use crate::options::Verity;
        let mode = self.cfg.features.verity;
        if mode == Verity::Off || d.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        crate::verity::validate(mode, &d.value, data)?;
        d.verified.store(true, Ordering::Release);
        Ok(())
    }

    /// Refuses a lower file that turns out to be a metacopy file (its data
    /// is elsewhere) on a mount whose lookups do not follow them: the
    /// kernel refuses it with EPERM too. `fd` is the open lower file.
    pub(crate) fn refuse_lower_metacopy(&self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.follow_metacopy() {
            return Ok(());
        }
        for p in BOTH {
            match sys::xattr::fget(fd, &p.name(ovl_xattr::METACOPY)) {
                Ok(_) => {
                    log::warn!("refusing to follow a lower metacopy file (mount with metacopy=on)");
                    return Err(Errno::EPERM);
                }
                Err(e)
                    if matches!(
                        e.code(),
                        libc::ENODATA | libc::ENOTSUP | libc::EPERM | libc::EACCES
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// st_blocks of a metacopy file are those of its data (guessed from the
    /// size while the data file is not looked up yet, as the kernel does).
    pub(crate) fn metacopy_stat(&self, node: &Node, st: &mut Stat) {
        if node.kind != libc::S_IFREG {
            return;
        }
        let Some(d) = node.metacopy() else {
            return;
        };
        st.blocks = match d.known().map(|o| o.stat()) {
            Some(Ok(dst)) => dst.blocks,
            _ => {
                let bs = st.blksize.max(512) as u64;
                st.size.div_ceil(bs) * bs / 512
            }
        };
    }

    /// The value a metacopy copy-up of a file whose data is in `data`
    /// records, or `None` when it must copy the data instead
    /// (`verity=require` and the data file has no fs-verity digest).
    pub(crate) fn metacopy_value_for(&self, data: BorrowedFd<'_>) -> Result<Option<MetacopyValue>> {
        use crate::options::Verity;
        match self.cfg.features.verity {
            Verity::Off => Ok(Some(MetacopyValue::default())),
            mode => match crate::verity::measure(data)? {
                Some((algo, digest)) => Ok(Some(MetacopyValue {
                    flags: 0,
                    digest_algo: algo,
                    digest,
                })),
                None if mode == Verity::Require => Ok(None),
                None => Ok(Some(MetacopyValue::default())),
            },
        }
    }

    /// Copies the data of an upper metacopy file into it, in place, then
    /// drops the marker (the kernel's `ovl_copy_up_meta_inode_data`):
    /// until the marker is gone the data keeps coming from below, so a
    /// crash part-way loses nothing. `truncate`: the file is emptied
    /// instead (open with O_TRUNC, truncate to 0).
    pub(crate) fn copy_up_meta_data(&self, node: &Arc<Node>, truncate: bool) -> Result<()> {
        let _g = node.copy_lock.lock();
        let Some(d) = node.metacopy() else {
            return Ok(());
        };
        let out = self.open_upper(node, libc::O_WRONLY | libc::O_NOFOLLOW)?;
        let ust = sys::fs::fstat(out.as_fd())?;
        // Writing drops security.capability: keep it, as the kernel does.
        let caps = match sys::xattr::fget(out.as_fd(), c"security.capability") {
            Ok(v) if ust.size > 0 && !truncate => Some(v),
            Ok(_) => None,
            Err(e) if matches!(e.code(), libc::ENODATA | libc::ENOTSUP) => None,
            Err(e) => return Err(e),
        };
        if truncate {
            sys::io::ftruncate(out.as_fd(), 0)?;
        } else {
            let data = self.metacopy_data(&d)?;
            let (pfd, name) = data.locate()?;
            let input = crate::copyup::open_lower_for_read(pfd.as_fd(), &name)?;
            self.check_verity(&d, input.as_fd())?;
            let dst = sys::fs::fstat(input.as_fd())?;
            let sparse = dst.blocks * 512 < dst.size;
            let devs = (dst.dev, self.upper_layer()?.dev);
            crate::copyup::copy_data(input.as_fd(), out.as_fd(), ust.size, sparse, devs)?;
            if !self.cfg.volatile {
                sys::io::fsync(out.as_fd(), false)?;
            }
        }
        if let Some(v) = caps {
            sys::xattr::fset(out.as_fd(), c"security.capability", &v, 0)?;
        }
        for p in self.upper_prefixes() {
            match sys::xattr::fremove(out.as_fd(), &p.name(ovl_xattr::METACOPY)) {
                Ok(()) => {}
                Err(e) if e.code() == libc::ENODATA => {}
                Err(e) => return Err(e),
            }
        }
        node.set_metacopy(None);
        self.kernel.attrs_changed(node.ino);
        log::debug!("copied up the data of metacopy file {node:?}");
        Ok(())
    }

    /// Records where the data of a metacopy file is before it moves (rename)
    /// or gets another name (link), like the kernel's `ovl_set_redirect`:
    /// its old name within the same directory, else its absolute lower
    /// path (always absolute for a lower hard link or a new link).
    /// `at`: the file's current upper place, `parent`: its current merged
    /// directory. Longer than 256 bytes: EXDEV, as in the kernel.
    pub(crate) fn set_metacopy_redirect(
        &self,
        node: &Arc<Node>,
        at: (&Arc<OwnedFd>, &Name),
        parent: &Arc<Node>,
        same_dir: bool,
    ) -> Result<()> {
        if node.metacopy().is_none() {
            return Ok(());
        }
        let redirect = node.redirect();
        let lower = node.state.read().lowers.top(node.kind);
        let hard_link = match &lower {
            Some(l) => l.stat()?.nlink > 1,
            None => false,
        };
        let absolute = !same_dir || hard_link;
        if let Some(r) = &redirect
            && (!absolute || r.first() == Some(&b'/'))
        {
            return Ok(());
        }
        let own: Vec<u8> = redirect.as_deref().unwrap_or(at.1.as_bytes()).to_vec();
        let value = if absolute {
            let mut v = self.lower_path(parent)?;
            v.push(b'/');
            v.extend_from_slice(&own);
            v
        } else {
            own
        };
        if value.len() > REDIRECT_MAX {
            return Err(Errno::EXDEV);
        }
        let attr = self.cfg.prefix.name(ovl_xattr::REDIRECT);
        sys::xattr::set_at(at.0.as_fd(), at.1.as_cstr(), &attr, &value, 0)?;
        node.set_redirect(Some(value.into()));
        self.kernel.attrs_changed(node.ino);
        Ok(())
    }
}

impl Plyfs {
    /// Before a metacopy file gets another name (link): its absolute
    /// redirect, recorded through one of its current names.
    pub(crate) fn set_link_redirect(&self, node: &Arc<Node>) -> Result<()> {
        if node.metacopy().is_none() {
            return Ok(());
        }
        let (want, aliases) = {
            let s = node.state.read();
            (s.upper.get(), s.aliases.clone())
        };
        for a in aliases {
            let Some(parent) = self.table.get(a.parent) else {
                continue;
            };
            let Ok(pfd) = self.upper_dir_fd(&parent) else {
                continue;
            };
            let name = Name::new(&a.name)?;
            match sys::fs::lstatat(pfd.as_fd(), name.as_cstr()) {
                Ok(st) if Some((st.dev, st.ino)) == want => {
                    return self.set_metacopy_redirect(node, (&pfd, &name), &parent, false);
                }
                _ => continue,
            }
        }
        Err(Errno::ENOENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metacopy_values() {
        assert_eq!(MetacopyValue::parse(b"").unwrap(), MetacopyValue::default());
        assert!(MetacopyValue::default().encode().is_empty());
        let v = MetacopyValue {
            flags: 0,
            digest_algo: 1,
            digest: vec![7; 32],
        };
        let enc = v.encode();
        assert_eq!(&enc[..4], &[0, 36, 0, 1]);
        assert_eq!(MetacopyValue::parse(&enc).unwrap(), v);
        // Too short, wrong version, length byte not matching the value.
        assert!(MetacopyValue::parse(b"\0\x04\0").is_err());
        assert!(MetacopyValue::parse(b"\x01\x04\0\0").is_err());
        assert!(MetacopyValue::parse(b"\0\x05\0\0").is_err());
        assert!(MetacopyValue::parse(&[0, 4, 0, 0]).is_ok());
    }
}
