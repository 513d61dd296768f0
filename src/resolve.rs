//! Resolving a name in a merged directory.
//!
//! Top-down: the upper layer, then each lower directory of the parent's
//! stack. The first object found wins; a whiteout hides the name; a
//! non-directory hides everything below it; directories merge down to the
//! first opaque one.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::attr::FileAttr;

use crate::fs::{Plyfs, Result};
use crate::lower::LowerObj;
use crate::names::Name;
use crate::node::{Alias, Ident, Node, NodeState};
use crate::origin;
use crate::ovl_xattr::Prefix;
use crate::sys::{self, Errno, fs::Stat};
use crate::table::Held;
use crate::whiteout::{self, OpaqueValue};

/// A visible object at some name.
#[derive(Clone, Debug)]
pub struct Found {
    /// `S_IFMT` bits.
    pub kind: u32,
    /// `lstat` of the top object (upper if present).
    pub stat: Stat,
    /// Identity of the upper object, if the name exists in the upper layer.
    pub upper: Option<Ident>,
    /// Directories: the lower stack. Non-directories: the lower object when
    /// there is no upper one.
    pub lowers: Vec<Arc<LowerObj>>,
    /// False when the lower stack still needs its opaque markers applied.
    pub stack_checked: bool,
    /// Upper directory markers.
    pub opaque: bool,
    pub impure: bool,
    pub xattr_whiteouts: bool,
    /// Raw `overlay.origin` of the upper object, when read.
    pub origin: Option<Vec<u8>>,
    /// `overlay.redirect` of an upper directory, or of a metacopy file.
    pub redirect: Option<Box<[u8]>>,
    /// Regular files whose top object holds metadata only: where the data
    /// is (see `metacopy`).
    pub metacopy: Option<Arc<crate::metacopy::DataRef>>,
    /// Generation of the lower-layer list this was found with (0: not
    /// known; see `layers_live`).
    pub generation: u64,
}

/// What to look for in the lower layers: a name in the parent's lower
/// directories, or a path from the layer roots (absolute redirect).
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Name(Vec<u8>),
    Abs(Vec<Vec<u8>>),
}

/// Parses an `overlay.redirect` value; `None` if it is unusable.
pub(crate) fn parse_redirect(r: &[u8]) -> Option<Target> {
    if r.is_empty() || r.contains(&0) {
        return None;
    }
    if r[0] == b'/' {
        let comps: Vec<Vec<u8>> = r
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if comps.is_empty()
            || comps
                .iter()
                .any(|c| c == b"." || c == b".." || c.len() > crate::names::NAME_MAX)
        {
            return None;
        }
        return Some(Target::Abs(comps));
    }
    Name::new(r).ok().map(|_| Target::Name(r.to_vec()))
}

/// Result of a lookup in the lower layers.
enum LowerHit {
    NonDir(Arc<LowerObj>, Stat),
    /// Directories to merge (maybe none), with the stat of the top one when
    /// nothing above it was found.
    Dirs(Vec<Arc<LowerObj>>, Option<Stat>),
}

/// Result of resolving a name.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, on the stack
pub enum Lookup {
    Found(Found),
    /// Nothing visible. `whiteout`: the upper layer holds a whiteout there.
    Missing {
        whiteout: bool,
    },
}

impl Found {
    /// An object found only in the lower layers: a non-directory or the top
    /// of a directory stack.
    fn lower(st: Stat, lowers: Vec<Arc<LowerObj>>) -> Found {
        Found {
            kind: st.file_type(),
            stat: st,
            upper: None,
            lowers,
            stack_checked: true,
            opaque: false,
            impure: false,
            xattr_whiteouts: false,
            origin: None,
            redirect: None,
            metacopy: None,
            generation: 0,
        }
    }

    /// The state of a node standing for this object, known as `alias`.
    pub fn node_state(&self, alias: Alias) -> NodeState {
        NodeState {
            aliases: crate::node::Aliases::one(alias),
            upper: self.upper.into(),
            lowers: self.lowers.clone().into(),
            stack_checked: self.stack_checked,
            opaque: self.opaque,
            impure: self.impure,
            xattr_whiteouts: self.xattr_whiteouts,
            unlinked: false,
            layers_gen: self.generation,
        }
    }

    /// A node standing for this object, known as `alias`.
    pub fn node(&self, ino: u64, alias: Alias) -> Node {
        let node = Node::new(ino, self.kind, self.node_state(alias));
        node.set_redirect(self.redirect.clone());
        node.set_metacopy(self.metacopy.clone());
        node
    }

    /// An object that exists only in the upper layer.
    pub fn upper_only(st: Stat) -> Found {
        Found {
            kind: st.file_type(),
            stat: st,
            upper: Some((st.dev, st.ino)),
            lowers: Vec::new(),
            stack_checked: true,
            opaque: false,
            impure: false,
            xattr_whiteouts: false,
            origin: None,
            redirect: None,
            metacopy: None,
            generation: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Whether something from a lower layer shows at this name (so that
    /// removing it needs a whiteout).
    pub fn has_lower(&self) -> bool {
        !self.lowers.is_empty()
    }
}

/// Whether an entry `st` at `name` in a directory is an xattr whiteout.
fn is_xattr_whiteout(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &Name,
    st: &Stat,
    prefixes: &[Prefix],
) -> Result<bool> {
    if !st.is_reg() || st.size != 0 {
        return Ok(false);
    }
    Ok(whiteout::file_markers(dir, name.as_cstr(), prefixes)?.xattr_whiteout)
}

impl Plyfs {
    /// Prefixes whose markers count in the upper layer.
    pub fn upper_prefixes(&self) -> &'static [Prefix] {
        // Markers from either prefix are honoured, so an upper written by a
        // rootless mount reads the same when mounted by root.
        &Prefix::BOTH
    }

    /// Resolves `name` in the merged directory `parent`.
    pub fn resolve(&self, parent: &Arc<Node>, name: &Name) -> Result<Lookup> {
        let generation = self.lowers.generation();
        let mut res = self.resolve_in(parent, name)?;
        if let Lookup::Found(f) = &mut res {
            f.generation = generation;
        }
        Ok(res)
    }

    fn resolve_in(&self, parent: &Arc<Node>, name: &Name) -> Result<Lookup> {
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let (p_upper, p_xwo) = {
            let s = parent.state.read();
            (s.upper.is_some(), s.xattr_whiteouts)
        };
        let mut top: Option<Found> = None;
        if p_upper {
            let pfd = self.upper_dir_fd(parent)?;
            match sys::fs::lstatat(pfd.as_fd(), name.as_cstr()) {
                Ok(st) => {
                    if whiteout::is_char_whiteout(&st)
                        || (p_xwo
                            && is_xattr_whiteout(pfd.as_fd(), name, &st, self.upper_prefixes())?)
                    {
                        return Ok(Lookup::Missing { whiteout: true });
                    }
                    let mut f = Found::upper_only(st);
                    if st.is_dir() {
                        let m = whiteout::dir_markers(
                            pfd.as_fd(),
                            name.as_cstr(),
                            self.upper_prefixes(),
                        )?;
                        f.opaque = m.opaque == OpaqueValue::Opaque;
                        f.xattr_whiteouts = m.opaque == OpaqueValue::XattrWhiteouts;
                        f.impure = m.impure;
                        f.origin = m.origin;
                        f.redirect = m.redirect.map(Into::into);
                        if f.opaque {
                            return Ok(Lookup::Found(f));
                        }
                        if f.redirect.is_some() && !self.cfg.follow_redirects() {
                            // Like the kernel with redirect_dir=nofollow:
                            // a redirect that would be followed is refused.
                            if !self.dir_stack(parent)?.is_empty() {
                                log::warn!("refusing to follow redirect for {name:?}");
                                return Err(Errno::EPERM);
                            }
                        }
                        top = Some(f);
                    } else {
                        // Like the kernel, every upper non-directory's
                        // origin is read: its st_ino must not depend on
                        // which directory (impure or not) holds the name.
                        let m = whiteout::file_markers(
                            pfd.as_fd(),
                            name.as_cstr(),
                            self.upper_prefixes(),
                        )?;
                        f.origin = m.origin.clone();
                        if m.metacopy && st.is_reg() {
                            // Metadata only: the data is below.
                            let stack = self.dir_stack(parent)?;
                            self.upper_metacopy(&stack, name, &mut f, &m)?;
                        }
                        if st.nlink > 1 && f.origin.is_some() {
                            self.index_check_upper(&f);
                        }
                        return Ok(Lookup::Found(f));
                    }
                }
                Err(e) if e.code() == libc::ENOENT => {}
                Err(e) => return Err(e),
            }
        }
        if whiteout::oci_name(name.as_bytes()) != whiteout::OciName::Plain {
            // OCI markers are metadata of the lower layers, never entries.
            return Ok(match top {
                Some(f) => Lookup::Found(f),
                None => Lookup::Missing { whiteout: false },
            });
        }
        let stack = self.dir_stack(parent)?;
        let target = match top.as_ref().and_then(|f| f.redirect.as_deref()) {
            Some(r) if self.cfg.follow_redirects() => {
                parse_redirect(r).unwrap_or_else(|| Target::Name(name.as_bytes().to_vec()))
            }
            _ => Target::Name(name.as_bytes().to_vec()),
        };
        match self.lower_lookup(&stack, target, top.is_some())? {
            LowerHit::NonDir(obj, st) => {
                let mut f = Found::lower(st, vec![obj]);
                if st.is_reg() && self.follow_metacopy() {
                    self.lower_metacopy(&stack, name, &mut f)?;
                }
                if st.nlink > 1 && self.index.is_some() {
                    // A hard link the index may hold an upper copy of.
                    self.index_lookup(&mut f)?;
                }
                Ok(Lookup::Found(f))
            }
            LowerHit::Dirs(dirs, first) => match top {
                Some(mut f) => {
                    f.lowers = dirs;
                    Ok(Lookup::Found(f))
                }
                None => match first {
                    Some(st) => Ok(Lookup::Found(Found::lower(st, dirs))),
                    None => Ok(Lookup::Missing { whiteout: false }),
                },
            },
        }
    }

    /// Looks a name (or an absolute redirect path) up in the lower layers,
    /// starting with the parent's lower directories, the way the kernel's
    /// `ovl_lookup` does: whiteouts stop the search, a non-directory on top
    /// wins alone, directories merge down to an opaque one, and redirects
    /// found on the way change what is looked up in the layers below.
    fn lower_lookup(
        &self,
        stack: &[Arc<LowerObj>],
        mut target: Target,
        have_dir_above: bool,
    ) -> Result<LowerHit> {
        let roots = || -> Vec<Arc<LowerObj>> {
            self.lowers.load().iter().map(|l| l.root.clone()).collect()
        };
        let mut positions: Vec<Arc<LowerObj>> = match target {
            Target::Abs(_) => roots(),
            Target::Name(_) => stack.to_vec(),
        };
        let mut dirs: Vec<Arc<LowerObj>> = Vec::new();
        let mut first: Option<Stat> = None;
        let mut i = 0;
        let mut stop = false;
        while i < positions.len() && !stop {
            let lo = positions[i].clone();
            i += 1;
            let (pobj, last) = match self.target_place(lo, &mut target)? {
                Place::At(p, last, last_layer) => {
                    stop = last_layer;
                    (p, last)
                }
                Place::Missing => continue,
                Place::Cut => break,
            };
            let pfd = pobj.dir_fd()?;
            let st = match sys::fs::lstatat(pfd.as_fd(), last.as_cstr()) {
                Ok(st) => st,
                Err(e) if e.code() == libc::ENOENT => {
                    // A `.wh.NAME` only matters if layers remain below.
                    if i < positions.len() && pobj.has_oci_whiteout(last.as_bytes())? {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if whiteout::is_char_whiteout(&st)
                || (st.is_reg()
                    && st.size == 0
                    && pobj.dir_info()?.xattr_whiteouts
                    && is_xattr_whiteout(pfd.as_fd(), &last, &st, &Prefix::BOTH)?)
            {
                break;
            }
            let on_top = dirs.is_empty() && !have_dir_above;
            if !st.is_dir() {
                if on_top {
                    let obj = Arc::new(LowerObj::from_stat(&pobj, last.as_bytes(), &st));
                    return Ok(LowerHit::NonDir(obj, st));
                }
                // A non-directory below a directory ends the merge.
                break;
            }
            let obj = Arc::new(LowerObj::from_stat(&pobj, last.as_bytes(), &st));
            if on_top {
                first = Some(st);
            }
            dirs.push(obj.clone());
            let info = obj.dir_info()?;
            if info.opaque {
                break;
            }
            if info.redirect.is_some() && !self.cfg.follow_redirects() && i < positions.len() {
                // redirect_dir=nofollow: the kernel refuses to go on below
                // a redirected lower directory.
                log::warn!("refusing to follow the redirect of {obj:?}");
                return Err(Errno::EPERM);
            }
            if let Some(r) = info
                .redirect
                .as_deref()
                .filter(|_| self.cfg.follow_redirects())
            {
                match parse_redirect(r) {
                    Some(Target::Abs(c)) => {
                        target = Target::Abs(c);
                        stop = false;
                        positions = roots()
                            .into_iter()
                            .filter(|l| l.layer() > obj.layer())
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
        }
        Ok(LowerHit::Dirs(dirs, first))
    }

    /// Walks the directories of a redirect path down from a lower layer's
    /// root, the way the kernel's `ovl_lookup_layer` does: a missing
    /// component skips the layer, a whiteout or non-directory ends the
    /// search, an opaque directory lets this layer answer but no layer below,
    /// and a redirect on a directory on the way changes the path the layers
    /// below are searched for.
    /// Finds `target` in the lower position `lo`: a name in that directory,
    /// or an absolute path walked from that layer's root. A redirect on the
    /// way rewrites `target` for the positions below.
    pub(crate) fn target_place(&self, lo: Arc<LowerObj>, target: &mut Target) -> Result<Place> {
        let (last, dirs) = match &*target {
            Target::Name(n) => return Ok(Place::At(lo, Name::new(n)?, false)),
            Target::Abs(comps) => match comps.split_last() {
                Some((last, dirs)) => (Name::new(last)?, dirs.to_vec()),
                None => return Ok(Place::Cut),
            },
        };
        Ok(match self.walk_lower(&lo, &dirs)? {
            Walk::Dir(p, last_layer, below) => {
                if let Some(mut b) = below {
                    b.push(last.as_bytes().to_vec());
                    *target = Target::Abs(b);
                }
                Place::At(p, last, last_layer)
            }
            Walk::Missing => Place::Missing,
            Walk::Cut => Place::Cut,
        })
    }

    pub(crate) fn walk_lower(&self, root: &Arc<LowerObj>, comps: &[Vec<u8>]) -> Result<Walk> {
        let mut cur = root.clone();
        let mut last_layer = false;
        // The path for the layers below, rewritten by redirects on the way.
        let mut below: Vec<Vec<u8>> = Vec::with_capacity(comps.len());
        let mut redirected = false;
        for c in comps {
            let n = Name::new(c)?;
            let fd = cur.dir_fd()?;
            let st = match sys::fs::lstatat(fd.as_fd(), n.as_cstr()) {
                Ok(st) => st,
                Err(e) if e.code() == libc::ENOENT => {
                    if last_layer || cur.has_oci_whiteout(c)? {
                        return Ok(Walk::Cut);
                    }
                    return Ok(Walk::Missing);
                }
                Err(e) => return Err(e),
            };
            if !st.is_dir() {
                // A whiteout or a non-directory: the path is cut off here.
                return Ok(Walk::Cut);
            }
            cur = Arc::new(LowerObj::from_stat(&cur, c, &st));
            let info = cur.dir_info()?;
            last_layer |= info.opaque;
            below.push(c.clone());
            if info.opaque || !self.cfg.follow_redirects() {
                continue;
            }
            match info.redirect.as_deref().and_then(parse_redirect) {
                // An absolute redirect lifts an opaque ancestor's stop,
                // as in the kernel's `ovl_check_redirect`.
                Some(Target::Abs(r)) => {
                    below = r;
                    last_layer = false;
                }
                Some(Target::Name(n)) => {
                    below.pop();
                    below.push(n);
                }
                None => continue,
            }
            redirected = true;
        }
        Ok(Walk::Dir(cur, last_layer, redirected.then_some(below)))
    }

    /// Resolves and requires a visible object.
    pub fn resolve_found(&self, parent: &Arc<Node>, name: &Name) -> Result<Found> {
        match self.resolve(parent, name)? {
            Lookup::Found(f) => Ok(f),
            Lookup::Missing { .. } => Err(Errno::ENOENT),
        }
    }

    /// The identity that determines the inode number of a found object: the
    /// lower object it came from when known, else the real object.
    pub fn number_ident(&self, f: &Found) -> Result<Ident> {
        let Some(upper) = f.upper else {
            return f.lowers.first().map(|l| (l.dev, l.ino)).ok_or(Errno::EIO);
        };
        if let Some(o) = f.origin.as_deref().and_then(origin::decode) {
            let layers = self.lowers.load();
            for l in &f.lowers {
                let magic = layers.by_id(l.layer()).map(|x| x.fs_magic).unwrap_or(0);
                if o.inode_number(magic) == Some(l.ino) {
                    return Ok((l.dev, l.ino));
                }
            }
            let zero = o.uuid == [0; 16];
            // uuid=off: handles carry a null UUID, and only those count.
            let off = self.cfg.features.uuid == crate::options::UuidMode::Off;
            for layer in layers.iter() {
                if (zero || (!off && layer.uuid == o.uuid))
                    && let Some(ino) = o.inode_number(layer.fs_magic)
                {
                    return Ok((layer.root.dev, ino));
                }
            }
        }
        Ok(upper)
    }

    /// The inode number a found object gets.
    pub fn number_of(&self, f: &Found) -> Result<u64> {
        if let Some(u) = f.upper {
            // Objects copied up in this mount keep their node's number.
            let n = self.inos.map(u);
            if f.origin.is_none() {
                return Ok(n);
            }
        }
        Ok(self.inos.map(self.number_ident(f)?))
    }

    /// Takes a reference on the node for `f`, found as `name` in `parent`,
    /// and returns it with its attributes. The reference goes back to the
    /// table if the caller drops it (an error before the reply).
    pub fn remember(
        &self,
        parent: &Arc<Node>,
        name: &Name,
        f: Found,
    ) -> Result<(Held<'_>, FileAttr)> {
        // A directory known before a change of the lower layers keeps its
        // node (see `layers_live`).
        self.adopt_stale_dir(parent, name, &f);
        let ino = self.number_of(&f)?;
        let origin = if f.upper.is_some() {
            self.number_ident(&f).ok()
        } else {
            None
        };
        let alias = Alias {
            parent: parent.ino,
            name: name.as_bytes().into(),
        };
        let mut sibling = false;
        let node = self.table.remember(
            ino,
            |n| {
                if n.kind != f.kind {
                    return false;
                }
                let s = n.state.read();
                if s.unlinked {
                    return false;
                }
                match (s.upper.get(), f.upper) {
                    (Some(a), Some(b)) => a == b,
                    (None, None) => {
                        s.lowers.top_ident() == f.lowers.first().map(|l| (l.dev, l.ino))
                    }
                    // A name still showing the lower object of a node that
                    // was copied up through another hard link.
                    (Some(_), None) => {
                        sibling = !n.is_dir()
                            && s.lowers.top_ident() == f.lowers.first().map(|l| (l.dev, l.ino));
                        sibling
                    }
                    // The upper copy of this very node, found before the
                    // copy-up that made it recorded it (or after a remount
                    // by another mount): its origin is the node's lower object.
                    (None, Some(_)) => origin.is_some() && s.lowers.top_ident() == origin,
                }
            },
            || f.node(ino, alias.clone()),
        );
        node.add_alias(alias);
        if !sibling {
            self.note_found(&node, &f);
        }
        if f.upper.is_some() && !sibling && node.state.read().upper.is_none() {
            // Copied up by a thread that has not recorded it yet.
            node.state.write().upper = f.upper.into();
        }
        let attr = if sibling {
            if !self.read_only()
                && let Err(e) = self.link_up(&node, parent, name)
            {
                log::debug!("cannot link {name:?} up to its copied-up hard link: {e:?}");
            }
            self.node_attr(&node)?
        } else {
            self.attr_from(&node, &f.stat)?
        };
        Ok((node, attr))
    }
}

/// Where walking a redirect path down one lower layer ended.
/// Where a lookup target is in one lower position (see
/// [`Plyfs::target_place`]). Returned by value and taken apart at once:
/// boxing the name would cost an allocation per layer of a lookup.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Place {
    /// The directory holding the target's last name there, that name, and
    /// whether an opaque directory on the way hides the layers below.
    At(Arc<LowerObj>, Name, bool),
    /// The layers below may still have it.
    Missing,
    /// Cut off for every layer below.
    Cut,
}

pub(crate) enum Walk {
    /// At the directory holding the last component; `true` when an opaque
    /// directory on the way hides the layers below; the directories' path
    /// for the layers below when a redirect on the way changed it.
    Dir(Arc<LowerObj>, bool, Option<Vec<Vec<u8>>>),
    /// A component is missing: the layers below may still have the path.
    Missing,
    /// A whiteout, non-directory or opaque directory cuts the path off for
    /// all layers below.
    Cut,
}
