//! `plyfs apply`: extracts a layer tar into a directory, in kernel overlay
//! format (so the directory can be a lowerdir of plyfs and of kernel
//! overlayfs) or kept in OCI format.
//!
//! Kernel format: `.wh.NAME` becomes a whiteout (a 0/0 character device, or
//! where mknod is refused an xattr whiteout: an empty file with
//! `overlay.whiteout` in a directory marked `overlay.opaque=x`), and
//! `.wh..wh..opq` becomes `overlay.opaque=y` on its directory. A directory
//! that replaces a whiteout of the same layer is made opaque, since the
//! whiteout removed what the layers below had there. OCI format (`--oci`)
//! keeps the marker files as they are.
//!
//! Safety against hostile archives: every entry is created relative to a
//! descriptor of its parent directory, reached from DIR one component at a
//! time with `O_NOFOLLOW|O_DIRECTORY`; absolute paths, `..`, names over 255
//! bytes or paths over 256 KiB, parents that are not directories (a
//! symlink planted by an earlier entry included), hard links whose target
//! is not a non-directory inside DIR, device nodes an unprivileged user
//! cannot make, and entries the reader flags (huge names, sparse files) are
//! refused one by one and reported; the rest is extracted. Symlink targets
//! are data, never followed. Nothing outside DIR is touched.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::layer::dirchain::DirChain;
use crate::layer::meta::{self, Ids};
use crate::layer::tar::{Header, Kind, Reader};
use crate::names::Name;
use crate::ovl_xattr::{self, Prefix};
use crate::sys::{self, Errno, fs::TimeSpec};
use crate::whiteout::{self, OciName};

/// Longest archive path accepted. Entries are created by descriptors one
/// name at a time, so paths may exceed the kernel's PATH_MAX (trees 10,000
/// levels deep); this only bounds what a hostile archive can ask for.
pub const PATH_MAX: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 0/0 whiteouts and `overlay.opaque` (a lowerdir for overlay mounts).
    Kernel,
    /// `.wh.` files kept (what containers-storage stores for a mount
    /// program).
    Oci,
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub format: Format,
    /// Prefix of the markers written in kernel format.
    pub prefix: Prefix,
    pub ids: Ids,
    /// Set owners from the archive (root); otherwise files belong to the
    /// caller, as with `tar --no-same-owner`.
    pub chown: bool,
}

impl ApplyOptions {
    /// Defaults for the calling user: as root `trusted.overlay.*` markers
    /// and archive owners, otherwise `user.overlay.*` and own files.
    pub fn for_caller() -> ApplyOptions {
        let root = sys::process::geteuid() == 0;
        ApplyOptions {
            format: Format::Kernel,
            prefix: if root { Prefix::Trusted } else { Prefix::User },
            ids: Ids::default(),
            chown: root,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub refused: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub data_bytes: u64,
    /// Attributes or owners that could not be set (unprivileged).
    pub dropped_attrs: u64,
}

/// Mode and mtime of a directory, set once its content is in place.
#[derive(Clone, Copy, Debug)]
struct DirMeta {
    mode: u32,
    mtime: (i64, u32),
}

/// Why one entry was refused.
struct Refusal(String);

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Refusal {
        Refusal(std::io::Error::from_raw_os_error(e.code()).to_string())
    }
}

fn refuse<T>(msg: &str) -> Result<T, Refusal> {
    Err(Refusal(msg.to_string()))
}

/// Splits an archive path into checked components; `Ok(vec![])` is DIR.
pub fn split_path(path: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if path.len() > PATH_MAX {
        return Err(format!("path longer than {PATH_MAX} bytes"));
    }
    if path.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    let mut comps = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path with '..'".into()),
            c if c.len() > crate::names::NAME_MAX => {
                return Err("name longer than 255 bytes".into());
            }
            c if c.contains(&0) => return Err("name with a NUL byte".into()),
            c => comps.push(c.to_vec()),
        }
    }
    Ok(comps)
}

fn name(c: &[u8]) -> Result<Name, Refusal> {
    Ok(Name::new(c)?)
}

/// The chain of directories from DIR to the parent of the current entry.
struct Cursor {
    chain: DirChain,
    names: Vec<Vec<u8>>,
    /// Per level: metadata to set when the walk leaves it.
    pending: Vec<Option<DirMeta>>,
}

struct Apply<'a> {
    o: &'a ApplyOptions,
    cur: Cursor,
    /// DIR itself, opened for reading (its own metadata and markers).
    root: OwnedFd,
    root_meta: Option<DirMeta>,
    /// Directories created or updated by an entry, by (dev, ino): their
    /// mode and mtime, set when the walk leaves them.
    dir_meta: HashMap<(u64, u64), DirMeta>,
    /// Unprivileged only: directories whose mode would forbid creating
    /// their content, set at the very end, deepest first.
    late_modes: Vec<(Vec<Vec<u8>>, DirMeta)>,
    buf: Vec<u8>,
    stats: ApplyStats,
    root_user: bool,
}

fn open_dir_path(dir: BorrowedFd<'_>, n: &Name) -> Result<OwnedFd, Errno> {
    sys::fs::open_dir_path(dir, n.as_cstr())
}

/// Whether a directory mode lets its owner create entries in it.
fn writable(mode: u32) -> bool {
    mode & 0o300 == 0o300
}

impl Apply<'_> {
    fn is_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        n: &Name,
        st: &sys::fs::Stat,
    ) -> Result<bool, Errno> {
        if self.o.format != Format::Kernel {
            return Ok(false);
        }
        if whiteout::is_char_whiteout(st) {
            return Ok(true);
        }
        Ok(st.is_reg()
            && st.size == 0
            && whiteout::file_markers(dir, n.as_cstr(), &[self.o.prefix])?.xattr_whiteout)
    }

    /// Sets a directory's metadata when the walk leaves it.
    fn finish_dir(&mut self, parent: BorrowedFd<'_>, n: &Name, m: DirMeta) -> Result<(), Errno> {
        if self.root_user || writable(m.mode) {
            sys::fs::chmodat(parent, n.as_cstr(), m.mode)?;
        }
        let t = TimeSpec::Set(m.mtime.0, m.mtime.1);
        sys::fs::utimensat(parent, n.as_cstr(), t, t)
    }

    fn pop_level(&mut self) -> Result<(), String> {
        let child = self.cur.names.pop().unwrap_or_default();
        let meta = self.cur.pending.pop().flatten();
        self.cur
            .chain
            .pop()
            .map_err(|e| format!("directory changed during extraction: {}", io(e)))?;
        if let Some(m) = meta {
            let n = Name::new(&child).map_err(io)?;
            let top = sys::fs::dup(self.cur.chain.top()).map_err(io)?;
            self.finish_dir(top.as_fd(), &n, m).map_err(io)?;
        }
        Ok(())
    }

    /// Makes the cursor stand in the directory `comps` (creating missing
    /// directories). Fatal errors are `Err(Err(..))`.
    fn goto(&mut self, comps: &[Vec<u8>]) -> Result<Result<(), Refusal>, String> {
        let common = self
            .cur
            .names
            .iter()
            .zip(comps)
            .take_while(|(a, b)| a == b)
            .count();
        while self.cur.names.len() > common {
            self.pop_level()?;
        }
        for c in &comps[common..] {
            if let Err(r) = self.enter(c) {
                return Ok(Err(r));
            }
        }
        Ok(Ok(()))
    }

    fn enter(&mut self, c: &[u8]) -> Result<(), Refusal> {
        let n = name(c)?;
        let top = sys::fs::dup(self.cur.chain.top())?;
        let top = top.as_fd();
        let fd = match open_dir_path(top, &n) {
            Ok(fd) => fd,
            Err(e) if e.code() == libc::ENOENT => {
                sys::fs::mkdirat(top, n.as_cstr(), 0o755)?;
                open_dir_path(top, &n)?
            }
            Err(e) if e.code() == libc::ENOTDIR || e.code() == libc::ELOOP => {
                let st = sys::fs::lstatat(top, n.as_cstr())?;
                if !self.is_whiteout(top, &n, &st)? {
                    return refuse("a parent is not a directory");
                }
                // A directory of this layer where it also removed the lower
                // one: it replaces the whiteout, opaque.
                sys::fs::unlinkat(top, n.as_cstr(), false)?;
                sys::fs::mkdirat(top, n.as_cstr(), 0o755)?;
                self.set_opaque_at(top, &n)?;
                open_dir_path(top, &n)?
            }
            Err(e) => return Err(e.into()),
        };
        let st = sys::fs::fstat(fd.as_fd())?;
        self.cur.chain.push(fd)?;
        self.cur.names.push(c.to_vec());
        self.cur
            .pending
            .push(self.dir_meta.remove(&(st.dev, st.ino)));
        Ok(())
    }

    fn marker(&self, suffix: &str) -> CString {
        self.o.prefix.name(suffix)
    }

    fn set_opaque_at(&mut self, dir: BorrowedFd<'_>, n: &Name) -> Result<(), Errno> {
        self.stats.opaque_dirs += 1;
        sys::xattr::set_at(dir, n.as_cstr(), &self.marker(ovl_xattr::OPAQUE), b"y", 0)
    }

    /// Sets `overlay.opaque` on the current directory; `x` never replaces
    /// `y`.
    fn set_opaque_here(&mut self, value: &[u8]) -> Result<(), Errno> {
        let fd = match self.cur.names.is_empty() {
            true => sys::fs::dup(self.root.as_fd())?,
            false => sys::fs::reopen(self.cur.chain.top(), libc::O_RDONLY | libc::O_DIRECTORY)?,
        };
        let attr = self.marker(ovl_xattr::OPAQUE);
        if value == b"x"
            && let Ok(v) = sys::xattr::fget(fd.as_fd(), &attr)
            && v == b"y"
        {
            return Ok(());
        }
        if value == b"y" {
            self.stats.opaque_dirs += 1;
        }
        sys::xattr::fset(fd.as_fd(), &attr, value, 0)
    }

    /// Kernel format: records that `target` in the current directory is
    /// deleted in this layer.
    fn whiteout(&mut self, target: &[u8]) -> Result<(), Refusal> {
        let n = name(target)?;
        let top = sys::fs::dup(self.cur.chain.top())?;
        let top = top.as_fd();
        match sys::fs::lstatat(top, n.as_cstr()) {
            // The layer itself has the name: a directory of this layer
            // hides what was below it; anything else already does.
            Ok(st) if st.is_dir() => {
                let top = sys::fs::dup(top)?;
                self.set_opaque_at(top.as_fd(), &n)?;
                return Ok(());
            }
            Ok(_) => return Ok(()),
            Err(e) if e.code() == libc::ENOENT => {}
            Err(e) => return Err(e.into()),
        }
        self.stats.whiteouts += 1;
        match whiteout::make_whiteout(top, n.as_cstr()) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == libc::EPERM => {
                // No mknod: an xattr whiteout (kernel 6.7+, plyfs).
                let fd = sys::fs::openat(
                    top,
                    n.as_cstr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0,
                )?;
                sys::xattr::fset(fd.as_fd(), &self.marker(ovl_xattr::WHITEOUT), b"", 0)?;
                self.set_opaque_here(b"x")?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Clears the place for a new object at `n`; returns whether an
    /// existing directory is kept (a directory entry over a directory) and
    /// whether a whiteout was replaced.
    fn make_room(&mut self, n: &Name, new_dir: bool) -> Result<(bool, bool), Refusal> {
        let top = sys::fs::dup(self.cur.chain.top())?;
        let top = top.as_fd();
        let st = match sys::fs::lstatat(top, n.as_cstr()) {
            Ok(st) => st,
            Err(e) if e.code() == libc::ENOENT => return Ok((false, false)),
            Err(e) => return Err(e.into()),
        };
        if st.is_dir() && new_dir {
            return Ok((true, false));
        }
        let was_whiteout = self.is_whiteout(top, n, &st)?;
        if st.is_dir() {
            crate::rmtree::remove_tree(top, n.as_cstr())?;
        } else {
            sys::fs::unlinkat(top, n.as_cstr(), false)?;
        }
        Ok((false, was_whiteout))
    }

    fn set_xattrs(&mut self, dir: BorrowedFd<'_>, n: &Name, h: &Header) {
        for (k, v) in &h.xattrs {
            let stored = meta::stored_xattr_name(k);
            let Ok(c) = CString::new(stored) else {
                self.stats.dropped_attrs += 1;
                continue;
            };
            if sys::xattr::set_at(dir, n.as_cstr(), &c, v, 0).is_err() {
                self.stats.dropped_attrs += 1;
            }
        }
    }

    fn chown(&mut self, dir: BorrowedFd<'_>, n: &std::ffi::CStr, h: &Header) -> Result<(), Errno> {
        if !self.o.chown {
            return Ok(());
        }
        let uid = self.o.ids.uids.to_stored(h.uid);
        let gid = self.o.ids.gids.to_stored(h.gid);
        if uid.is_none() || gid.is_none() {
            self.stats.dropped_attrs += 1;
        }
        sys::fs::lchownat(
            dir,
            n,
            uid.unwrap_or(crate::idmap::OVERFLOW_ID),
            gid.unwrap_or(crate::idmap::OVERFLOW_ID),
        )
    }

    fn entry<R: Read>(
        &mut self,
        h: &Header,
        tar: &mut Reader<R>,
    ) -> Result<Result<(), Refusal>, String> {
        if let Some(p) = &h.problem {
            return Ok(refuse(p));
        }
        let comps = match split_path(&h.path) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Refusal(e))),
        };
        let Some((last, parent)) = comps.split_last() else {
            return Ok(self.root_entry(h));
        };
        if let Err(r) = self.goto(parent)? {
            return Ok(Err(r));
        }
        if self.o.format == Format::Kernel {
            match whiteout::oci_name(last) {
                OciName::Opaque => return Ok(self.set_opaque_here(b"y").map_err(Into::into)),
                OciName::Whiteout(t) => return Ok(self.whiteout(t)),
                OciName::Meta => return Ok(Ok(())),
                OciName::Plain => {}
            }
        } else if whiteout::oci_name(last) == OciName::Meta {
            return Ok(Ok(()));
        }
        let n = match name(last) {
            Ok(n) => n,
            Err(r) => return Ok(Err(r)),
        };
        match h.kind {
            Kind::File => self.file(&n, h, tar),
            Kind::Link => Ok(self.hard_link(&n, h)),
            _ => Ok(self.other(&n, h)),
        }
    }

    fn file<R: Read>(
        &mut self,
        n: &Name,
        h: &Header,
        tar: &mut Reader<R>,
    ) -> Result<Result<(), Refusal>, String> {
        if let Err(r) = self.make_room(n, false) {
            return Ok(Err(r));
        }
        let top = sys::fs::dup(self.cur.chain.top()).map_err(io)?;
        let fd = match sys::fs::openat(
            top.as_fd(),
            n.as_cstr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut done = 0u64;
        loop {
            let got = tar
                .read_data(&mut self.buf)
                .map_err(|e| format!("reading the archive: {e}"))?;
            if got == 0 {
                break;
            }
            sys::io::write_all(fd.as_fd(), &self.buf[..got])
                .map_err(|e| format!("{}: {}", String::from_utf8_lossy(&h.path), io(e)))?;
            done += got as u64;
        }
        self.stats.data_bytes += done;
        let res = (|| -> Result<(), Refusal> {
            if self.chown(top.as_fd(), n.as_cstr(), h).is_err() {
                self.stats.dropped_attrs += 1;
            }
            sys::fs::fchmod(fd.as_fd(), h.mode)?;
            self.set_xattrs(top.as_fd(), n, h);
            let t = TimeSpec::Set(h.mtime.0, h.mtime.1);
            sys::fs::futimens(fd.as_fd(), t, t)?;
            Ok(())
        })();
        Ok(res)
    }

    fn hard_link(&mut self, n: &Name, h: &Header) -> Result<(), Refusal> {
        let comps = split_path(&h.link).map_err(|e| Refusal(format!("link target: {e}")))?;
        let Some((tlast, tdirs)) = comps.split_last() else {
            return refuse("link to the directory itself");
        };
        let mut dir = sys::fs::dup(self.root.as_fd())?;
        for c in tdirs {
            dir = open_dir_path(dir.as_fd(), &name(c)?)
                .map_err(|_| Refusal("link target is not inside the directory".into()))?;
        }
        let tn = name(tlast)?;
        let tst = sys::fs::lstatat(dir.as_fd(), tn.as_cstr())
            .map_err(|_| Refusal("link target does not exist".into()))?;
        if tst.is_dir() {
            return refuse("link target is a directory");
        }
        let top = self.cur.chain.top();
        if let Ok(st) = sys::fs::lstatat(top, n.as_cstr())
            && (st.dev, st.ino) == (tst.dev, tst.ino)
        {
            return Ok(());
        }
        self.make_room(n, false)?;
        let top = self.cur.chain.top();
        sys::fs::linkat(dir.as_fd(), tn.as_cstr(), top, n.as_cstr())?;
        Ok(())
    }

    /// Directories, symlinks, devices and FIFOs.
    fn other(&mut self, n: &Name, h: &Header) -> Result<(), Refusal> {
        let new_dir = h.kind == Kind::Dir;
        let (kept, replaced_whiteout) = self.make_room(n, new_dir)?;
        let top = sys::fs::dup(self.cur.chain.top())?;
        let top = top.as_fd();
        match h.kind {
            Kind::Dir if kept => {}
            Kind::Dir => sys::fs::mkdirat(top, n.as_cstr(), 0o700)?,
            Kind::Symlink => {
                let target = CString::new(h.link.clone())
                    .map_err(|_| Refusal("symlink target with a NUL byte".into()))?;
                sys::fs::symlinkat(&target, top, n.as_cstr())?
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ft = match h.kind {
                    Kind::Char => libc::S_IFCHR,
                    Kind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let rdev = libc::makedev(h.dev.0, h.dev.1);
                sys::fs::mknodat(top, n.as_cstr(), ft | 0o600, rdev).map_err(|e| {
                    if e.code() == libc::EPERM {
                        Refusal("device nodes need privilege (CAP_MKNOD)".into())
                    } else {
                        e.into()
                    }
                })?
            }
            _ => return refuse("unsupported entry type"),
        }
        if self.chown(top, n.as_cstr(), h).is_err() {
            self.stats.dropped_attrs += 1;
        }
        self.set_xattrs(top, n, h);
        if new_dir && replaced_whiteout {
            self.set_opaque_at(top, n)?;
        }
        if h.kind == Kind::Symlink {
            let t = TimeSpec::Set(h.mtime.0, h.mtime.1);
            sys::fs::utimensat(top, n.as_cstr(), t, t)?;
            return Ok(());
        }
        let m = DirMeta {
            mode: h.mode,
            mtime: h.mtime,
        };
        if !new_dir {
            sys::fs::chmodat(top, n.as_cstr(), h.mode)?;
            let t = TimeSpec::Set(h.mtime.0, h.mtime.1);
            sys::fs::utimensat(top, n.as_cstr(), t, t)?;
            return Ok(());
        }
        // A directory: its final mode and mtime once its content is in.
        if self.root_user || writable(h.mode) {
            sys::fs::chmodat(top, n.as_cstr(), h.mode)?;
        } else {
            sys::fs::chmodat(top, n.as_cstr(), h.mode | 0o700)?;
            let mut p = self.cur.names.clone();
            p.push(n.as_bytes().to_vec());
            self.late_modes.push((p, m));
        }
        let t = TimeSpec::Set(h.mtime.0, h.mtime.1);
        sys::fs::utimensat(top, n.as_cstr(), t, t)?;
        let st = sys::fs::lstatat(top, n.as_cstr())?;
        self.dir_meta.insert((st.dev, st.ino), m);
        Ok(())
    }

    /// An entry for DIR itself (`./`).
    fn root_entry(&mut self, h: &Header) -> Result<(), Refusal> {
        if h.kind != Kind::Dir {
            return refuse("only a directory can stand for the extraction directory");
        }
        let fd = sys::fs::dup(self.root.as_fd())?;
        if self.chown(fd.as_fd(), c"", h).is_err() {
            self.stats.dropped_attrs += 1;
        }
        for (k, v) in &h.xattrs {
            let Ok(c) = CString::new(meta::stored_xattr_name(k)) else {
                continue;
            };
            if sys::xattr::fset(fd.as_fd(), &c, v, 0).is_err() {
                self.stats.dropped_attrs += 1;
            }
        }
        self.root_meta = Some(DirMeta {
            mode: h.mode,
            mtime: h.mtime,
        });
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        while !self.cur.names.is_empty() {
            self.pop_level()?;
        }
        let mut late = std::mem::take(&mut self.late_modes);
        late.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (p, m) in late {
            let Some((last, dirs)) = p.split_last() else {
                continue;
            };
            if let Err(r) = self.goto(dirs)? {
                return Err(format!("setting the mode of a directory: {}", r.0));
            }
            let n = Name::new(last).map_err(io)?;
            let top = sys::fs::dup(self.cur.chain.top()).map_err(io)?;
            sys::fs::chmodat(top.as_fd(), n.as_cstr(), m.mode).map_err(io)?;
            let t = TimeSpec::Set(m.mtime.0, m.mtime.1);
            sys::fs::utimensat(top.as_fd(), n.as_cstr(), t, t).map_err(io)?;
        }
        while !self.cur.names.is_empty() {
            self.pop_level()?;
        }
        if let Some(m) = self.root_meta {
            sys::fs::fchmod(self.root.as_fd(), m.mode).map_err(io)?;
            let t = TimeSpec::Set(m.mtime.0, m.mtime.1);
            sys::fs::futimens(self.root.as_fd(), t, t).map_err(io)?;
        }
        Ok(())
    }
}

fn io(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e.code()).to_string()
}

/// Extracts the archive read from `inp` into `dir` (created if missing).
/// Refused entries are reported through `report` and counted; the call
/// fails only when the archive is unreadable or DIR unusable.
pub fn apply<R: Read>(
    inp: R,
    dir: &Path,
    o: &ApplyOptions,
    report: &mut dyn FnMut(&[u8], &str),
) -> Result<ApplyStats, String> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| "directory path contains a NUL byte".to_string())?;
    match sys::fs::mkdirat(sys::fs::cwd(), &c, 0o755) {
        Ok(()) => {}
        Err(e) if e.code() == libc::EEXIST => {}
        Err(e) => return Err(format!("cannot create {}: {}", dir.display(), io(e))),
    }
    let root = sys::fs::open_cwd(&c, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| format!("cannot open {}: {}", dir.display(), io(e)))?;
    let top = sys::fs::open_cwd(&c, libc::O_PATH | libc::O_DIRECTORY).map_err(io)?;
    let mut a = Apply {
        o,
        cur: Cursor {
            chain: DirChain::new(top, libc::O_PATH).map_err(io)?,
            names: Vec::new(),
            pending: Vec::new(),
        },
        root,
        root_meta: None,
        dir_meta: HashMap::new(),
        late_modes: Vec::new(),
        buf: vec![0u8; 1 << 20],
        stats: ApplyStats::default(),
        root_user: sys::process::geteuid() == 0,
    };
    let mut tar = Reader::new(inp);
    while let Some(h) = tar
        .next_entry()
        .map_err(|e| format!("reading the archive: {e}"))?
    {
        a.stats.entries += 1;
        if let Err(r) = a.entry(&h, &mut tar)? {
            a.stats.refused += 1;
            report(&h.path, &r.0);
        }
    }
    a.finish()?;
    Ok(a.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(split_path(b".").unwrap(), Vec::<Vec<u8>>::new());
        assert!(split_path(b"/etc/passwd").is_err());
        assert!(split_path(b"a/../../b").is_err());
        assert!(split_path(b"..").is_err());
        assert!(split_path(&[b'a'; 256]).is_err());
        assert!(split_path(&[b'a'; PATH_MAX + 1]).is_err());
        assert!(split_path(b"a/\xff\xfe").is_ok());
    }
}
