//! `plyfs diff`: an upper directory written as an OCI layer (a tar change
//! set over the lower layers).
//!
//! The upper directory already is the change set; this walks it (not the
//! merged tree) and translates its markers:
//!
//! - kernel whiteouts (0/0 character devices), xattr whiteouts (inside an
//!   `overlay.opaque=x` directory) and `.wh.NAME` files become `.wh.NAME`;
//! - opaque directories (`overlay.opaque=y`, or a `.wh..wh..opq` file) get a
//!   `.wh..wh..opq` entry;
//! - a directory with `overlay.redirect` (renamed while it had lower
//!   content) is written in full (its merged view: the lower content found
//!   through the redirect plus its upper changes), marked opaque, and the
//!   old name gets a whiteout unless the upper already hides it;
//! - metacopy files (`overlay.metacopy`) carry the data of their lower file;
//! - every other upper object is written with its data, mode, owner, mtime,
//!   attributes (overlay markers dropped), symlink target or device number;
//!   objects with several names in the walk are written once and then as
//!   hard links.
//!
//! Entries are in a fixed order (per directory: opaque marker, whiteouts,
//! then entries, each group sorted by name bytes, depth first), and headers
//! hold nothing that changes when nothing changed (no atime or ctime, no
//! user names), so the same upper gives the same bytes.
//!
//! The walk is by descriptors, one name at a time, with an explicit stack
//! (see [`DirChain`]); nothing is followed. Consistency: the result is a
//! snapshot only if nothing writes the upper during the walk (a live mount
//! must be quiescent, e.g. a paused container), as for kernel overlay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::layer::dirchain::DirChain;
use crate::layer::lowers::{LowerRef, LowerView};
use crate::layer::meta::{self, Ids};
use crate::layer::tar::{Header, Kind, Writer};
use crate::names::Name;
use crate::ovl_xattr::{self, Prefix};
use crate::sys::{self, Errno, fs::Stat};
use crate::whiteout::{self, DirMarkers, OciName, OpaqueValue};

/// What to diff.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    pub upper: PathBuf,
    /// The lower layers, top first; needed only for redirected directories
    /// and metacopy files.
    pub lowers: Vec<PathBuf>,
    pub ids: Ids,
}

/// Counts for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub redirected_dirs: u64,
    pub metacopy_files: u64,
    pub hard_links: u64,
    pub data_bytes: u64,
    /// Sockets, which tar cannot hold.
    pub skipped: u64,
}

/// Where a directory's lower content is, in the merged lowers.
enum LowerLoc {
    /// It has none (opaque, or none below).
    None,
    /// Not looked up yet: `name` in the parent directory's lower.
    Pending(Vec<u8>),
    Ref(LowerRef),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Write the upper's changes.
    Changes,
    /// Write the merged content (inside a redirected directory).
    Full,
}

enum Item {
    Opaque,
    /// Whiteout of this name.
    Whiteout(Vec<u8>),
    Upper {
        name: Vec<u8>,
        st: Stat,
        dir: Option<DirMarkers>,
    },
    /// Full mode: a name only the lowers have.
    Lower(Vec<u8>),
}

struct Frame {
    items: std::vec::IntoIter<Item>,
    /// Length of the archive path of this directory, with its `/`.
    path_len: usize,
    mode: Mode,
    /// This directory is in the upper layer (a level of the chain).
    upper: bool,
    lower: LowerLoc,
}

struct Walk<W: Write> {
    tar: Writer<W>,
    view: Option<LowerView>,
    ids: Ids,
    /// Archive path of the current directory, with a trailing `/`.
    path: Vec<u8>,
    /// (dev, ino) of multiply-linked objects written so far -> their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    upper_root: OwnedFd,
    /// Whiteouts of old names of absolutely redirected directories that
    /// the upper does not hide already (written last).
    late_whiteouts: BTreeSet<Vec<u8>>,
    buf: Vec<u8>,
    stats: DiffStats,
}

fn err_at(path: &[u8], e: Errno) -> String {
    format!(
        "{}: {}",
        show(path),
        std::io::Error::from_raw_os_error(e.code())
    )
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

const NEED_LOWER: &str = "needs the lower layers: pass --lower L1:L2... (top first)";

/// Parses an `overlay.redirect` value: absolute path components, or a name
/// in the same parent; None if unusable (then the own name applies, as in
/// a lookup).
fn parse_redirect(r: &[u8]) -> Option<Result<Vec<Vec<u8>>, Vec<u8>>> {
    if r.first() == Some(&b'/') {
        let comps: Vec<Vec<u8>> = r
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if comps.is_empty() || comps.iter().any(|c| Name::new(c).is_err()) {
            return None;
        }
        return Some(Ok(comps));
    }
    Name::new(r).ok().map(|_| Err(r.to_vec()))
}

/// The `overlay.redirect` of a non-directory (metacopy files), either prefix.
fn file_redirect(dir: BorrowedFd<'_>, name: &Name) -> Result<Option<Vec<u8>>, Errno> {
    for p in Prefix::BOTH {
        match sys::xattr::get_at(dir, name.as_cstr(), &p.name(ovl_xattr::REDIRECT)) {
            Ok(v) => return Ok(Some(v)),
            Err(e) if matches!(e.code(), libc::ENODATA | libc::ENOTSUP | libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What an upper directory entry means.
enum Upper {
    Whiteout(Vec<u8>),
    OpaqueMarker,
    Skip,
    Object(Stat),
}

fn classify(dir: BorrowedFd<'_>, name: &[u8], xattr_whiteouts: bool) -> Result<Upper, Errno> {
    match whiteout::oci_name(name) {
        // An upper written by fuse-overlayfs may hold OCI markers (its
        // fallback when it cannot mknod); they mean the same in a layer.
        OciName::Opaque => return Ok(Upper::OpaqueMarker),
        OciName::Whiteout(t) => return Ok(Upper::Whiteout(t.to_vec())),
        OciName::Meta => return Ok(Upper::Skip),
        OciName::Plain => {}
    }
    let n = Name::new(name)?;
    let st = match sys::fs::lstatat(dir, n.as_cstr()) {
        Ok(st) => st,
        // Removed since the listing (a live mount).
        Err(e) if e.code() == libc::ENOENT => return Ok(Upper::Skip),
        Err(e) => return Err(e),
    };
    if whiteout::is_char_whiteout(&st) {
        return Ok(Upper::Whiteout(name.to_vec()));
    }
    if xattr_whiteouts
        && st.is_reg()
        && st.size == 0
        && whiteout::file_markers(dir, n.as_cstr(), &Prefix::BOTH)?.xattr_whiteout
    {
        return Ok(Upper::Whiteout(name.to_vec()));
    }
    Ok(Upper::Object(st))
}

fn open_dir(dir: BorrowedFd<'_>, name: &Name) -> Result<OwnedFd, Errno> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    sys::fs::openat_noatime(dir, name.as_cstr(), flags)
}

/// Writes the layer for `o.upper` to `out`.
pub fn diff<W: Write>(o: &DiffOptions, out: W) -> Result<DiffStats, String> {
    let c = CString::new(o.upper.as_os_str().as_bytes())
        .map_err(|_| "upper path contains a NUL byte".to_string())?;
    let root = sys::fs::open_cwd(&c, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| {
        format!(
            "cannot open upper {}: {}",
            o.upper.display(),
            std::io::Error::from_raw_os_error(e.code())
        )
    })?;
    let upper_root = sys::fs::dup(root.as_fd()).map_err(|e| err_at(b"", e))?;
    let view = if o.lowers.is_empty() {
        None
    } else {
        Some(LowerView::open(&o.lowers)?)
    };
    let root_markers = crate::lower::root_markers(root.as_fd(), &Prefix::BOTH);
    let mut chain = DirChain::new(root, libc::O_RDONLY).map_err(|e| err_at(b"", e))?;
    let mut w = Walk {
        tar: Writer::new(out),
        view,
        ids: o.ids.clone(),
        path: Vec::new(),
        links: HashMap::new(),
        upper_root,
        late_whiteouts: BTreeSet::new(),
        buf: vec![0u8; 1 << 20],
        stats: DiffStats::default(),
    };
    let root_lower = match &w.view {
        Some(v) => LowerLoc::Ref(v.root().map_err(|e| err_at(b"", e))?),
        None => LowerLoc::None,
    };
    let opaque = root_markers.opaque == OpaqueValue::Opaque;
    let xwo = root_markers.opaque == OpaqueValue::XattrWhiteouts;
    let items = w
        .build_items(&chain, None, Mode::Changes, opaque, xwo)
        .map_err(|e| err_at(b"", e))?;
    let mut frames = vec![Frame {
        items: items.into_iter(),
        path_len: 0,
        mode: Mode::Changes,
        upper: true,
        lower: root_lower,
    }];
    w.run(&mut chain, &mut frames)?;
    for p in std::mem::take(&mut w.late_whiteouts) {
        w.emit_marker(p)?;
        w.stats.whiteouts += 1;
    }
    w.tar
        .finish()
        .map_err(|e| format!("writing the layer: {e}"))?;
    Ok(w.stats)
}

impl<W: Write> Walk<W> {
    fn run(&mut self, chain: &mut DirChain, frames: &mut Vec<Frame>) -> Result<(), String> {
        while let Some(f) = frames.last_mut() {
            let Some(item) = f.items.next() else {
                let f = frames.pop().ok_or("empty stack")?;
                if f.upper && chain.depth() > 0 {
                    chain
                        .pop()
                        .map_err(|e| err_at(&self.path, e))
                        .map_err(|m| format!("{m} (upper changed during the diff?)"))?;
                }
                continue;
            };
            let path_len = f.path_len;
            self.path.truncate(path_len);
            self.item(chain, frames, item)?;
        }
        Ok(())
    }

    /// Writes a marker entry (an empty file) at archive path `path`.
    fn emit_marker(&mut self, path: Vec<u8>) -> Result<(), String> {
        let h = Header::new(path, Kind::File);
        self.tar
            .append(&h)
            .map_err(|e| format!("writing the layer: {e}"))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn item(
        &mut self,
        chain: &mut DirChain,
        frames: &mut Vec<Frame>,
        item: Item,
    ) -> Result<(), String> {
        match item {
            Item::Opaque => {
                let mut p = self.path.clone();
                p.extend_from_slice(whiteout::OCI_OPAQUE);
                self.stats.opaque_dirs += 1;
                self.emit_marker(p)
            }
            Item::Whiteout(name) => {
                let Some(wh) = whiteout::oci_whiteout_name(&name) else {
                    let mut p = self.path.clone();
                    p.extend_from_slice(&name);
                    return Err(format!(
                        "{}: the whiteout of a name longer than 251 bytes cannot be written in an OCI layer",
                        show(&p)
                    ));
                };
                let mut p = self.path.clone();
                p.extend_from_slice(&wh);
                self.stats.whiteouts += 1;
                self.emit_marker(p)
            }
            Item::Upper { name, st, dir } => self.upper_item(chain, frames, name, st, dir),
            Item::Lower(name) => self.lower_item(frames, name),
        }
    }

    /// Lists the directory at the top of the chain (if `upper`) and the
    /// lower directory `lower` (Full mode) into items, in archive order.
    fn build_items(
        &self,
        chain: &DirChain,
        lower: Option<&LowerRef>,
        mode: Mode,
        opaque: bool,
        xattr_whiteouts: bool,
    ) -> Result<Vec<Item>, Errno> {
        self.build_items_in(Some(chain.top()), lower, mode, opaque, xattr_whiteouts)
    }

    fn build_items_in(
        &self,
        upper: Option<BorrowedFd<'_>>,
        lower: Option<&LowerRef>,
        mode: Mode,
        mut opaque: bool,
        xattr_whiteouts: bool,
    ) -> Result<Vec<Item>, Errno> {
        let mut whiteouts: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut objects: BTreeMap<Vec<u8>, Item> = BTreeMap::new();
        let mut marker_file = false;
        if let Some(dir) = upper {
            let mut names = Vec::new();
            sys::dirent::read_dir(dir, |e| names.push(e.name))?;
            for name in names {
                match classify(dir, &name, xattr_whiteouts)? {
                    Upper::Whiteout(t) => {
                        whiteouts.insert(t);
                    }
                    Upper::OpaqueMarker => marker_file = true,
                    Upper::Skip => {}
                    Upper::Object(st) => {
                        let markers = if st.is_dir() {
                            let n = Name::new(&name)?;
                            Some(whiteout::dir_markers(dir, n.as_cstr(), &Prefix::BOTH)?)
                        } else {
                            None
                        };
                        objects.insert(
                            name.clone(),
                            Item::Upper {
                                name,
                                st,
                                dir: markers,
                            },
                        );
                    }
                }
            }
        }
        let mut items = Vec::new();
        match mode {
            Mode::Changes => {
                opaque |= marker_file;
                // The old name of a directory renamed within this one is
                // hidden by a whiteout (the kernel leaves one; add it if
                // not).
                for it in objects.values() {
                    if let Item::Upper {
                        dir: Some(m),
                        name: own,
                        ..
                    } = it
                        && m.opaque != OpaqueValue::Opaque
                        && let Some(Some(Err(old))) = m.redirect.as_deref().map(parse_redirect)
                        && old != *own
                        && !objects.contains_key(&old)
                    {
                        whiteouts.insert(old);
                    }
                }
                if opaque {
                    items.push(Item::Opaque);
                }
                // Sorted by the written name, `.wh.` + name: same order.
                items.extend(whiteouts.into_iter().map(Item::Whiteout));
                items.extend(objects.into_values());
            }
            Mode::Full => {
                if opaque {
                    // Only the redirected directory itself asks for this.
                    items.push(Item::Opaque);
                }
                let mut merged = objects;
                if let (Some(lower), false) = (lower, marker_file) {
                    let view = self.view.as_ref().ok_or(Errno::EINVAL)?;
                    for (name, _) in view.list(lower)? {
                        if !merged.contains_key(&name) && !whiteouts.contains(&name) {
                            merged.insert(name.clone(), Item::Lower(name));
                        }
                    }
                }
                items.extend(merged.into_values());
            }
        }
        Ok(items)
    }

    fn view(&self) -> Result<&LowerView, String> {
        self.view.as_ref().ok_or_else(|| NEED_LOWER.to_string())
    }

    /// Resolves the lower location of `frames[idx]` (and of the pending
    /// ancestors it depends on).
    fn ensure_lower(&self, frames: &mut [Frame], idx: usize) -> Result<Option<LowerRef>, String> {
        let mut j = idx;
        while j > 0 && matches!(frames[j].lower, LowerLoc::Pending(_)) {
            j -= 1;
        }
        for k in j..=idx {
            let resolved = match &frames[k].lower {
                LowerLoc::Pending(name) => {
                    let parent = match frames.get(k.wrapping_sub(1)).map(|f| &f.lower) {
                        Some(LowerLoc::Ref(p)) => Some(p),
                        _ => None,
                    };
                    match parent {
                        Some(p) => self
                            .view()?
                            .lookup(p, name)
                            .map_err(|e| err_at(&self.path, e))?,
                        None => None,
                    }
                }
                _ => continue,
            };
            frames[k].lower = match resolved {
                Some(r) if r.is_dir() => LowerLoc::Ref(r),
                _ => LowerLoc::None,
            };
        }
        match &frames[idx].lower {
            LowerLoc::Ref(r) => Ok(Some(r.clone())),
            _ => Ok(None),
        }
    }

    /// The lower directory a renamed directory's content comes from.
    fn redirect_target(
        &self,
        frames: &mut [Frame],
        redirect: &[u8],
        own: &[u8],
    ) -> Result<Option<LowerRef>, String> {
        let view = self.view()?;
        let idx = frames.len() - 1;
        let found = match parse_redirect(redirect) {
            Some(Ok(comps)) => view.lookup_path(&comps),
            Some(Err(name)) => match self.ensure_lower(frames, idx)? {
                Some(p) => view.lookup(&p, &name),
                None => Ok(None),
            },
            None => match self.ensure_lower(frames, idx)? {
                Some(p) => view.lookup(&p, own),
                None => Ok(None),
            },
        }
        .map_err(|e| err_at(&self.path, e))?;
        Ok(found.filter(LowerRef::is_dir))
    }

    fn upper_item(
        &mut self,
        chain: &mut DirChain,
        frames: &mut Vec<Frame>,
        name: Vec<u8>,
        st: Stat,
        markers: Option<DirMarkers>,
    ) -> Result<(), String> {
        let mode = frames.last().map(|f| f.mode).ok_or("empty stack")?;
        let n = Name::new(&name).map_err(|e| err_at(&self.path, e))?;
        let mut path = self.path.clone();
        path.extend_from_slice(&name);
        let dir = chain.top();
        if st.is_reg() && st.nlink > 1 && self.hard_link(&st, &path, dir, &n)? {
            return Ok(());
        }
        let Some(h) = meta::header_for(dir, n.as_cstr(), &st, path.clone(), &self.ids)
            .map_err(|e| err_at(&path, e))?
        else {
            eprintln!(
                "plyfs diff: {}: sockets cannot be stored in a layer; skipped",
                show(&path)
            );
            self.stats.skipped += 1;
            return Ok(());
        };
        self.append(&h)?;
        if st.is_reg() {
            let fm = whiteout::file_markers(dir, n.as_cstr(), &Prefix::BOTH)
                .map_err(|e| err_at(&path, e))?;
            let fd = if fm.metacopy {
                self.stats.metacopy_files += 1;
                let src = self.metacopy_source(frames, dir, &n, &path)?;
                src.open_data().map_err(|e| err_at(&path, e))?
            } else {
                sys::fs::openat(dir, n.as_cstr(), libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                    .map_err(|e| err_at(&path, e))?
            };
            self.copy_data(fd.as_fd(), st.size, &path)?;
            return Ok(());
        }
        if !st.is_dir() {
            return Ok(());
        }
        let m = markers.unwrap_or_default();
        let opaque = m.opaque == OpaqueValue::Opaque;
        let xwo = m.opaque == OpaqueValue::XattrWhiteouts;
        let (child_mode, lower, emit_opaque) = match (mode, &m.redirect) {
            (Mode::Changes, Some(r)) if !opaque => {
                self.stats.redirected_dirs += 1;
                let target = self
                    .redirect_target(frames, r, &name)
                    .map_err(|e| format!("{}: renamed directory {e}", show(&path)))?;
                if let Some(Ok(comps)) = parse_redirect(r) {
                    self.check_old_location(&comps)?;
                }
                (
                    Mode::Full,
                    target.map_or(LowerLoc::None, LowerLoc::Ref),
                    true,
                )
            }
            (Mode::Changes, _) if opaque => (Mode::Changes, LowerLoc::None, true),
            (Mode::Changes, _) => (Mode::Changes, LowerLoc::Pending(name.clone()), false),
            (Mode::Full, _) if opaque => (Mode::Full, LowerLoc::None, false),
            (Mode::Full, Some(r)) => {
                let t = self.redirect_target(frames, r, &name)?;
                (Mode::Full, t.map_or(LowerLoc::None, LowerLoc::Ref), false)
            }
            (Mode::Full, None) => {
                let parent = match frames.last().map(|f| &f.lower) {
                    Some(LowerLoc::Ref(p)) => Some(p),
                    _ => None,
                };
                let t = match parent {
                    Some(p) => self
                        .view()?
                        .lookup(p, &name)
                        .map_err(|e| err_at(&path, e))?
                        .filter(LowerRef::is_dir),
                    None => None,
                };
                (Mode::Full, t.map_or(LowerLoc::None, LowerLoc::Ref), false)
            }
        };
        let fd = open_dir(dir, &n).map_err(|e| err_at(&path, e))?;
        chain.push(fd).map_err(|e| err_at(&path, e))?;
        let lower_ref = match &lower {
            LowerLoc::Ref(r) => Some(r),
            _ => None,
        };
        let items = self
            .build_items(chain, lower_ref, child_mode, emit_opaque, xwo)
            .map_err(|e| err_at(&path, e))?;
        self.path = path;
        self.path.push(b'/');
        frames.push(Frame {
            items: items.into_iter(),
            path_len: self.path.len(),
            mode: child_mode,
            upper: true,
            lower,
        });
        Ok(())
    }

    fn lower_item(&mut self, frames: &mut Vec<Frame>, name: Vec<u8>) -> Result<(), String> {
        let mut path = self.path.clone();
        path.extend_from_slice(&name);
        let parent = match frames.last().map(|f| &f.lower) {
            Some(LowerLoc::Ref(p)) => p,
            _ => return Ok(()),
        };
        let Some(obj) = self
            .view()?
            .lookup(parent, &name)
            .map_err(|e| err_at(&path, e))?
        else {
            return Ok(());
        };
        let st = obj.stat().map_err(|e| err_at(&path, e))?;
        let (pfd, lname) = obj.locate().map_err(|e| err_at(&path, e))?;
        if st.is_reg() && st.nlink > 1 && self.hard_link(&st, &path, pfd.as_fd(), &lname)? {
            return Ok(());
        }
        let Some(h) = meta::header_for(pfd.as_fd(), lname.as_cstr(), &st, path.clone(), &self.ids)
            .map_err(|e| err_at(&path, e))?
        else {
            self.stats.skipped += 1;
            return Ok(());
        };
        self.append(&h)?;
        if st.is_reg() {
            let fd = obj.open_data().map_err(|e| err_at(&path, e))?;
            return self.copy_data(fd.as_fd(), st.size, &path);
        }
        if st.is_dir() {
            let items = self
                .build_items_in(None, Some(&obj), Mode::Full, false, false)
                .map_err(|e| err_at(&path, e))?;
            self.path = path;
            self.path.push(b'/');
            frames.push(Frame {
                items: items.into_iter(),
                path_len: self.path.len(),
                mode: Mode::Full,
                upper: false,
                lower: LowerLoc::Ref(obj),
            });
        }
        Ok(())
    }

    /// Writes a hard link if this object was written before under another
    /// name; remembers it otherwise.
    fn hard_link(
        &mut self,
        st: &Stat,
        path: &[u8],
        dir: BorrowedFd<'_>,
        name: &Name,
    ) -> Result<bool, String> {
        let key = (st.dev, st.ino);
        let Some(first) = self.links.get(&key) else {
            self.links.insert(key, path.to_vec());
            return Ok(false);
        };
        let mut h = meta::header_for(dir, name.as_cstr(), st, path.to_vec(), &self.ids)
            .map_err(|e| err_at(path, e))?
            .ok_or_else(|| err_at(path, Errno::EINVAL))?;
        h.kind = Kind::Link;
        h.size = 0;
        h.link = first.clone();
        self.append(&h)?;
        self.stats.hard_links += 1;
        Ok(true)
    }

    /// The lower file holding a metacopy file's data.
    fn metacopy_source(
        &self,
        frames: &mut [Frame],
        dir: BorrowedFd<'_>,
        name: &Name,
        path: &[u8],
    ) -> Result<LowerRef, String> {
        let what = |m: String| format!("{}: metacopy file {m}", show(path));
        let view = self.view().map_err(what)?;
        let redirect = file_redirect(dir, name).map_err(|e| err_at(path, e))?;
        let idx = frames.len() - 1;
        let found = match redirect.as_deref().and_then(parse_redirect) {
            Some(Ok(comps)) => view.lookup_path(&comps).map_err(|e| err_at(path, e))?,
            other => {
                let lname = match other {
                    Some(Err(n)) => n,
                    _ => name.as_bytes().to_vec(),
                };
                match self.ensure_lower(frames, idx)? {
                    Some(p) => view.lookup(&p, &lname).map_err(|e| err_at(path, e))?,
                    None => None,
                }
            }
        };
        match found {
            Some(f) if !f.is_dir() && f.stat().is_ok_and(|s| s.is_reg()) => Ok(f),
            _ => Err(what("has no lower file with its data".into())),
        }
    }

    /// Checks that the upper hides the old location of a directory renamed
    /// with an absolute redirect; if not, a whiteout is written for it.
    fn check_old_location(&mut self, comps: &[Vec<u8>]) -> Result<(), String> {
        let mut cur = sys::fs::dup(self.upper_root.as_fd()).map_err(|e| err_at(b"", e))?;
        for (i, c) in comps.iter().enumerate() {
            let n = Name::new(c).map_err(|e| err_at(c, e))?;
            let st = match sys::fs::lstatat(cur.as_fd(), n.as_cstr()) {
                Ok(st) => st,
                Err(e) if e.code() == libc::ENOENT => break,
                Err(e) => return Err(err_at(c, e)),
            };
            if i + 1 == comps.len() || !st.is_dir() {
                // Something (a whiteout, a file, a new directory) is there.
                return Ok(());
            }
            let m = whiteout::dir_markers(cur.as_fd(), n.as_cstr(), &Prefix::BOTH)
                .map_err(|e| err_at(c, e))?;
            if m.opaque == OpaqueValue::Opaque {
                return Ok(());
            }
            cur = sys::fs::open_dir_path(cur.as_fd(), n.as_cstr()).map_err(|e| err_at(c, e))?;
        }
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(());
        };
        let mut p = Vec::new();
        for d in dirs {
            p.extend_from_slice(d);
            p.push(b'/');
        }
        let wh =
            whiteout::oci_whiteout_name(last).ok_or_else(|| err_at(last, Errno::ENAMETOOLONG))?;
        p.extend_from_slice(&wh);
        self.late_whiteouts.insert(p);
        Ok(())
    }

    fn append(&mut self, h: &Header) -> Result<(), String> {
        self.tar
            .append(h)
            .map_err(|e| format!("{}: {e}", show(&h.path)))?;
        self.stats.entries += 1;
        Ok(())
    }

    /// Streams exactly `size` bytes of `fd` into the archive.
    fn copy_data(&mut self, fd: BorrowedFd<'_>, size: u64, path: &[u8]) -> Result<(), String> {
        let mut off = 0u64;
        while off < size {
            let want = (size - off).min(self.buf.len() as u64) as usize;
            let n =
                sys::io::pread_full(fd, &mut self.buf[..want], off).map_err(|e| err_at(path, e))?;
            if n == 0 {
                return Err(format!(
                    "{}: file shrank while being read (diff of a live mount needs it quiescent)",
                    show(path)
                ));
            }
            self.tar
                .write_data(&self.buf[..n])
                .map_err(|e| format!("writing the layer: {e}"))?;
            off += n as u64;
        }
        self.stats.data_bytes += size;
        Ok(())
    }
}
