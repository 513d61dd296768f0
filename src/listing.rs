//! Merged directory listings.
//!
//! A listing reads each layer of a directory once, top-down: a name seen in
//! a higher layer shadows lower ones, whiteouts (kernel, xattr or OCI) hide
//! names from the layers below, and OCI marker files are never shown.
//! Upper entries come first, then lower-only entries, each layer in its own
//! order. Offsets are positions in the listing, so telldir/seekdir stay
//! valid for the life of the directory handle.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::attr::kind_from_dtype;
use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::Node;
use crate::resolve::Found;
use crate::sys::{self, Errno};
use crate::whiteout::{self, OciName, OpaqueValue};

/// One visible entry.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub name: Box<[u8]>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// The inode number the entry's node has (or will have).
    pub ino: u64,
    /// The entry exists in the upper layer, with this st_ino.
    pub upper: Option<u64>,
    /// Lower occurrences: (index in the directory's stack, st_ino).
    pub lowers: Vec<(usize, u64)>,
    /// Upper directory entry markers / upper origin, as read while listing.
    pub opaque: bool,
    pub impure: bool,
    pub xattr_whiteouts: bool,
    pub origin: Option<Vec<u8>>,
    /// Upper directory entry with `overlay.redirect`: its lower content is
    /// elsewhere, so the name-matched lower entries do not apply.
    pub redirect: Option<Box<[u8]>>,
    /// Upper metacopy file: its data is elsewhere (full lookup needed).
    pub metacopy: bool,
    /// Directory offset of the entry: a hash of its name, the same in every
    /// listing of the directory (see [`cookie`]).
    pub cookie: u64,
}

#[cfg(test)]
impl ListEntry {
    /// A lower-only file entry named `name`.
    pub fn test_entry(name: &[u8]) -> ListEntry {
        ListEntry {
            name: name.into(),
            kind: libc::S_IFREG,
            ino: 0,
            upper: None,
            lowers: vec![(0, 1)],
            opaque: false,
            impure: false,
            xattr_whiteouts: false,
            origin: None,
            redirect: None,
            metacopy: false,
            cookie: cookie(name),
        }
    }
}

/// Offsets of `.` and `..`; entry cookies are above them.
pub const DOT_OFFSET: u64 = 1;
pub const DOTDOT_OFFSET: u64 = 2;

/// The directory offset of a name. Offsets must mean the same position in
/// every listing of a directory: the kernel's directory cache continues a
/// listing started through one open with entries read through another, as
/// real filesystems' hash cookies allow. So entries are ordered by a hash of
/// their name (62 bits, above the offsets of `.` and `..`), and continuing
/// after an offset means "the first name hashing above it", whatever
/// changed in between.
pub fn cookie(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: spreads similar names apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 2) + DOTDOT_OFFSET + 1
}

/// Sorts entries by cookie and separates the (very rare) equal cookies.
fn assign_cookies(entries: &mut [ListEntry]) {
    entries.sort_by_key(|e| e.cookie);
    for i in 1..entries.len() {
        if entries[i].cookie <= entries[i - 1].cookie {
            entries[i].cookie = entries[i - 1].cookie + 1;
        }
    }
}

impl Listing {
    /// Index of the first entry after directory offset `offset` (which is
    /// past `.` and `..`).
    pub fn first_after(&self, offset: u64) -> usize {
        if offset <= DOTDOT_OFFSET {
            return 0;
        }
        self.entries.partition_point(|e| e.cookie <= offset)
    }
}

/// A directory's merged contents at one moment.
pub struct Listing {
    /// Sorted by `cookie`.
    pub entries: Vec<ListEntry>,
    /// The directory node's version when the listing was made.
    pub version: u64,
    /// The lower stack the listing was made from.
    pub stack: crate::node::Stack,
    /// Some upper entry is a metacopy file.
    pub has_metacopy: bool,
}

enum Seen {
    Hidden,
    /// Visible at `entries[idx]`; `open` while lower directories still merge.
    Visible {
        idx: usize,
        open: bool,
    },
}

fn open_dir(fd: &std::os::fd::OwnedFd) -> Result<std::os::fd::OwnedFd> {
    // Listing a layer directory must not touch its access time.
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    sys::fs::openat_noatime(fd.as_fd(), c".", flags)
}

impl Plyfs {
    /// Reads the merged contents of the directory `dir`.
    pub fn build_listing(&self, dir: &Arc<Node>) -> Result<Listing> {
        let version = dir.version();
        let (has_upper, xwo) = {
            let s = dir.state.read();
            (s.upper.is_some(), s.xattr_whiteouts)
        };
        let stack = self.dir_stack(dir)?;
        let mut seen: HashMap<Box<[u8]>, Seen> = HashMap::new();
        let mut entries: Vec<ListEntry> = Vec::new();

        if has_upper {
            let ufd = self.upper_dir_fd(dir)?;
            let mut raw = Vec::new();
            sys::dirent::read_dir(open_dir(&ufd)?.as_fd(), |e| raw.push(e))?;
            for e in raw {
                let name = Name::new(&e.name)?;
                let mut kind = kind_from_dtype(e.d_type);
                let needs_stat =
                    kind == 0 || kind == libc::S_IFCHR || (xwo && kind == libc::S_IFREG);
                if needs_stat {
                    let st = match sys::fs::lstatat(ufd.as_fd(), name.as_cstr()) {
                        Ok(st) => st,
                        Err(e) if e.code() == libc::ENOENT => continue,
                        Err(e) => return Err(e),
                    };
                    kind = st.file_type();
                    let xattr_wo = xwo
                        && st.is_reg()
                        && st.size == 0
                        && whiteout::file_markers(
                            ufd.as_fd(),
                            name.as_cstr(),
                            self.upper_prefixes(),
                        )?
                        .xattr_whiteout;
                    if whiteout::is_char_whiteout(&st) || xattr_wo {
                        seen.insert(e.name.into(), Seen::Hidden);
                        continue;
                    }
                }
                let mut entry = ListEntry {
                    name: e.name.clone().into(),
                    kind,
                    ino: 0,
                    upper: Some(e.ino),
                    lowers: Vec::new(),
                    opaque: false,
                    impure: false,
                    xattr_whiteouts: false,
                    origin: None,
                    redirect: None,
                    metacopy: false,
                    cookie: 0,
                };
                if kind == libc::S_IFDIR {
                    let m =
                        whiteout::dir_markers(ufd.as_fd(), name.as_cstr(), self.upper_prefixes())?;
                    entry.opaque = m.opaque == OpaqueValue::Opaque;
                    entry.xattr_whiteouts = m.opaque == OpaqueValue::XattrWhiteouts;
                    entry.impure = m.impure;
                    entry.origin = m.origin;
                    entry.redirect = m.redirect.map(Into::into);
                } else {
                    // Every upper non-directory's origin counts, as in
                    // lookups: the kernel clears `impure` from directories
                    // whose entries need no fix-up in its own numbering
                    // (copied-up hard links keep their upper number there).
                    let m =
                        whiteout::file_markers(ufd.as_fd(), name.as_cstr(), self.upper_prefixes())?;
                    entry.origin = m.origin;
                    entry.metacopy = m.metacopy;
                }
                let open = kind == libc::S_IFDIR && !entry.opaque;
                seen.insert(
                    e.name.into(),
                    Seen::Visible {
                        idx: entries.len(),
                        open,
                    },
                );
                entries.push(entry);
            }
            // A pure upper directory (no layers below) is complete here.
            // (Not for throwaway probe nodes, number 0: the real node would
            // keep believing the mark is there.)
            let impure_unneeded = stack.is_empty()
                && dir.ino != 0
                && dir.state.read().impure
                && entries
                    .iter()
                    .all(|e| e.origin.is_none() && e.redirect.is_none());
            if impure_unneeded {
                self.clear_impure(dir, &ufd);
            }
        }

        for (si, lo) in stack.iter().enumerate() {
            let lfd = lo.dir_fd()?;
            let xwo_l = lo.dir_info()?.xattr_whiteouts;
            let mut raw = Vec::new();
            sys::dirent::read_dir(open_dir(&lfd)?.as_fd(), |e| raw.push(e))?;
            let mut oci_hidden: Vec<Vec<u8>> = Vec::new();
            for e in raw {
                match whiteout::oci_name(&e.name) {
                    OciName::Plain => {}
                    OciName::Whiteout(target) => {
                        oci_hidden.push(target.to_vec());
                        continue;
                    }
                    OciName::Opaque | OciName::Meta => continue,
                }
                let mut kind = kind_from_dtype(e.d_type);
                let mut is_whiteout = false;
                let needs_stat =
                    kind == 0 || kind == libc::S_IFCHR || (xwo_l && kind == libc::S_IFREG);
                if needs_stat {
                    let name = Name::new(&e.name)?;
                    let st = match sys::fs::lstatat(lfd.as_fd(), name.as_cstr()) {
                        Ok(st) => st,
                        Err(e) if e.code() == libc::ENOENT => continue,
                        Err(e) => return Err(e),
                    };
                    kind = st.file_type();
                    is_whiteout = whiteout::is_char_whiteout(&st)
                        || (xwo_l
                            && st.is_reg()
                            && st.size == 0
                            && whiteout::file_markers(
                                lfd.as_fd(),
                                name.as_cstr(),
                                &crate::ovl_xattr::Prefix::BOTH,
                            )?
                            .xattr_whiteout);
                }
                match seen.get_mut(&*e.name) {
                    Some(Seen::Hidden) => {}
                    Some(Seen::Visible { idx, open }) => {
                        if *open {
                            if kind == libc::S_IFDIR && !is_whiteout {
                                entries[*idx].lowers.push((si, e.ino));
                            } else {
                                *open = false;
                            }
                        }
                    }
                    None => {
                        if is_whiteout {
                            seen.insert(e.name.into(), Seen::Hidden);
                            continue;
                        }
                        seen.insert(
                            e.name.clone().into(),
                            Seen::Visible {
                                idx: entries.len(),
                                open: kind == libc::S_IFDIR,
                            },
                        );
                        entries.push(ListEntry {
                            name: e.name.into(),
                            kind,
                            ino: 0,
                            upper: None,
                            lowers: vec![(si, e.ino)],
                            opaque: false,
                            impure: false,
                            xattr_whiteouts: false,
                            origin: None,
                            redirect: None,
                            metacopy: false,
                            cookie: 0,
                        });
                    }
                }
            }
            // `.wh.NAME` hides NAME in the layers below this one.
            for t in oci_hidden {
                match seen.get_mut(t.as_slice()) {
                    None => {
                        seen.insert(t.into(), Seen::Hidden);
                    }
                    Some(Seen::Visible { open, .. }) => *open = false,
                    Some(Seen::Hidden) => {}
                }
            }
        }

        let udev = self.upper.as_ref().map(|u| u.dev).unwrap_or(0);
        for e in entries.iter_mut() {
            e.ino = self.entry_number(e, udev, &stack)?;
            e.cookie = cookie(&e.name);
        }
        assign_cookies(&mut entries);
        Ok(Listing {
            has_metacopy: entries.iter().any(|e| e.metacopy),
            entries,
            version,
            stack,
        })
    }

    fn entry_number(&self, e: &ListEntry, udev: u64, stack: &[Arc<LowerObj>]) -> Result<u64> {
        let f = self.entry_found_shallow(e, udev, stack)?;
        self.number_of(&f)
    }

    /// A `Found` for a listing entry without any system call; `stat` is
    /// left empty (the identity fields are what matter).
    fn entry_found_shallow(
        &self,
        e: &ListEntry,
        udev: u64,
        stack: &[Arc<LowerObj>],
    ) -> Result<Found> {
        let lowers = self.entry_lowers(e, stack)?;
        let ident_dev = match e.upper {
            Some(_) => udev,
            None => lowers.first().map(|l| l.dev).unwrap_or(0),
        };
        let st = sys::fs::Stat {
            dev: ident_dev,
            ino: e
                .upper
                .unwrap_or_else(|| lowers.first().map(|l| l.ino).unwrap_or(0)),
            mode: e.kind,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        };
        Ok(Found {
            kind: e.kind,
            stat: st,
            upper: e.upper.map(|i| (udev, i)),
            lowers,
            stack_checked: false,
            opaque: e.opaque,
            impure: e.impure,
            xattr_whiteouts: e.xattr_whiteouts,
            origin: e.origin.clone(),
            redirect: e.redirect.clone(),
            metacopy: None,
            generation: 0,
        })
    }

    fn entry_lowers(&self, e: &ListEntry, stack: &[Arc<LowerObj>]) -> Result<Vec<Arc<LowerObj>>> {
        if e.opaque || e.redirect.is_some() || (e.upper.is_some() && e.kind != libc::S_IFDIR) {
            return Ok(Vec::new());
        }
        e.lowers
            .iter()
            .map(|&(si, ino)| {
                let parent = stack.get(si).ok_or(Errno::EIO)?;
                Ok(Arc::new(LowerObj::child(
                    parent, &e.name, parent.dev, ino, e.kind,
                )))
            })
            .collect()
    }

    /// Full resolution of a listing entry (for readdirplus): stats the top
    /// object; falls back to a regular lookup if the entry changed.
    pub fn entry_found(
        &self,
        dir: &Arc<Node>,
        e: &ListEntry,
        stack: &[Arc<LowerObj>],
    ) -> Result<Found> {
        let name = Name::new(&e.name)?;
        let udev = self.upper.as_ref().map(|u| u.dev).unwrap_or(0);
        let st = if e.upper.is_some() {
            let ufd = self.upper_dir_fd(dir)?;
            sys::fs::lstatat(ufd.as_fd(), name.as_cstr())
        } else {
            let (si, _) = e.lowers.first().copied().ok_or(Errno::EIO)?;
            let lo = stack.get(si).ok_or(Errno::EIO)?;
            sys::fs::lstatat(lo.dir_fd()?.as_fd(), name.as_cstr())
        };
        let expected = e.upper.or_else(|| e.lowers.first().map(|l| l.1));
        // Metacopy files (upper, or lower where lookups follow them) take a
        // full lookup: their data is found through the layers below.
        let lower_metacopy = e.upper.is_none()
            && e.kind == libc::S_IFREG
            && self.follow_metacopy()
            && self.lower_is_metacopy(dir, e, stack)?;
        let plain = !e.metacopy && !lower_metacopy;
        // Hard links the index may know of take a full lookup too.
        let indexed =
            |st: &sys::fs::Stat| self.index.is_some() && e.kind != libc::S_IFDIR && st.nlink > 1;
        match st {
            Ok(st)
                if plain
                    && !indexed(&st)
                    && Some(st.ino) == expected
                    && st.file_type() == e.kind
                    && e.redirect.is_none() =>
            {
                let mut f = self.entry_found_shallow(e, udev, stack)?;
                if let Some(l) = f.lowers.first_mut().filter(|_| e.upper.is_none()) {
                    // The top lower object: take its real device number.
                    if l.dev != st.dev {
                        *l = Arc::new(LowerObj::from_stat(
                            l.parent.as_ref().ok_or(Errno::EIO)?,
                            &e.name,
                            &st,
                        ));
                    }
                }
                f.stat = st;
                // A single candidate needs no opaque trimming.
                // Even a single lower directory may redirect the layers
                // below (a rotated upper): check the stack on first use.
                f.stack_checked = f.lowers.is_empty();
                Ok(f)
            }
            _ => self.resolve_found(dir, &name),
        }
    }
}
