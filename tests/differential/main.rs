//! Differential test: the same seeded random sequence of filesystem
//! operations runs on plyfs and on kernel overlayfs (the reference), each
//! over its own copy of an identical seeded random layer tree (2-3 lower
//! layers with merged, lower-only and opaque directories, kernel-format
//! whiteouts, hard links, symlinks, a FIFO, xattrs, foreign owners), in
//! each of [`VARIANTS`]: `plain` (redirect_dir=off on both) and `redirect`
//! (directory renames and moves recorded with `overlay.redirect`). Each CI
//! run does 2 variants x 7 seeds x 1000 operations.
//!
//! Checked:
//! - after every operation: success or the exact errno, and any data
//!   returned (file contents, sorted directory listings with d_type, stat
//!   fields, xattrs, mtimes);
//! - every [`SNAPSHOT_EVERY`] operations and at the end: the whole merged
//!   trees (`common::snapshot`) and which names share an inode;
//! - at each [`Op::Remount`]: which paths changed st_ino (none should);
//! - at the end: the two upper layers (same whiteouts, opaque/impure
//!   markers, origin presence), then each filesystem mounted over the layers
//!   the other one wrote must show the same tree.
//!
//! Operations are an [`Op`] enum (`ops.rs`), made by a [`Gen`]erator
//! (`generate.rs`) from a [`Model`] of known names (`model.rs`) and run by
//! [`exec`] (`exec.rs`) against a mount point, over layer trees built by
//! `trees.rs`; [`Pair`] (here) holds both mounts. Known plyfs bugs are kept out of the way by
//! [`KNOWN_DIVERGENCES`] (operations not generated),
//! [`KNOWN_UPPER_DIVERGENCES`]; remove the entries as plyfs gets fixed
//! (`PLYFS_DIFF_ALL=1` turns them all off, to see which still matter).
//!
//! Environment:
//! - `PLYFS_DIFF_SEED=N`: run only seed N (replay).
//! - `PLYFS_DIFF_OPS=N`: operations per seed (default [`DEFAULT_OPS`]).
//! - `PLYFS_DIFF_VARIANT=NAME`: run only that entry of [`VARIANTS`] or
//!   [`EXTRA_VARIANTS`].
//! - `PLYFS_DIFF_RANDOM=N`: run N clock-derived seeds instead of one.
//! - `PLYFS_DIFF_TRACE=1`: print every operation and both results.
//! - `PLYFS_DIFF_SHRINK=1`: on a mismatch, shrink the layer tree and the
//!   operation list to a minimal reproduction (slow) and print it.
//! - `PLYFS_DIFF_KEEP=1`: keep the layer trees of a failing run.
//! - `PLYFS_DIFF_ALL=1`: ignore the known divergences (to check fixes).
//!
//! Replay a failure: `PLYFS_DIFF_SEED=N PLYFS_DIFF_OPS=M cargo test --test
//! differential -- --nocapture` (the failure message prints the exact line).
//! Needs root (kernel overlayfs, mknod, trusted.* xattrs) and /dev/fuse.

#[path = "../common/mod.rs"]
mod common;
mod exec;
mod generate;
mod model;
mod ops;
mod trees;

use common::*;
use exec::*;
use generate::*;
use model::*;
use ops::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use trees::*;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Seeds always run (besides one derived from the clock).
pub(crate) const FIXED_SEEDS: &[u64] = &[1, 2, 3, 4, 5, 0xC0FFEE];
/// Operations per seed unless `PLYFS_DIFF_OPS` says otherwise.
pub(crate) const DEFAULT_OPS: usize = 1000;
/// Full-tree comparison interval (in operations).
pub(crate) const SNAPSHOT_EVERY: usize = 50;
/// How many previous operations a failure message shows.
pub(crate) const HISTORY_SHOWN: usize = 30;

/// One configuration under test: kernel mount options, matching plyfs
/// options and which kinds of operations are generated.
pub(crate) struct Variant {
    pub(crate) name: &'static str,
    /// Extra `-o` options for `mount -t overlay`.
    pub(crate) kernel_opts: &'static str,
    /// Extra `-o` options for plyfs (appended to the layer options).
    pub(crate) plyfs_opts: &'static str,
    /// Which operation kinds to generate.
    pub(crate) allowed: fn(OpKind) -> bool,
    /// Whether the upper layers must match too (not when plyfs records a
    /// directory move differently, e.g. by copying instead of a redirect).
    pub(crate) compare_uppers: bool,
}

pub(crate) fn all_ops(_: OpKind) -> bool {
    true
}

/// The configurations run by default. Plain overlay: with
/// `redirect_dir=off` both the kernel and plyfs refuse (EXDEV) to rename a
/// directory that has lower content, so renames of any directory are fair
/// game. Redirect: directory renames and moves recorded with
/// `overlay.redirect` on both sides (plyfs's default).
pub(crate) const VARIANTS: &[Variant] = &[
    Variant {
        name: "plain",
        kernel_opts: "redirect_dir=off,index=off,metacopy=off",
        plyfs_opts: "redirect_dir=off",
        allowed: all_ops,
        compare_uppers: true,
    },
    Variant {
        name: "redirect",
        kernel_opts: "redirect_dir=on,index=off,metacopy=off",
        plyfs_opts: "redirect_dir=on",
        allowed: all_ops,
        compare_uppers: true,
    },
];

/// Configurations not run by default (not passing yet); run one with
/// `PLYFS_DIFF_VARIANT=NAME`, and move it to [`VARIANTS`] once it passes.
/// (`allowed` can restrict the generated operations, e.g. to leave out
/// directory renames while they are unsupported.)
pub(crate) const EXTRA_VARIANTS: &[Variant] = &[
    // plyfs copies moved directories instead: the merged view must be the
    // kernel's with redirects, and each must mount the other's upper.
    Variant {
        name: "copy",
        kernel_opts: "redirect_dir=on,index=off,metacopy=off",
        plyfs_opts: "redirect_dir=copy",
        allowed: all_ops,
        compare_uppers: false,
    },
    // Kernel with the inode index, which keeps lower hard links together
    // on copy-up as plyfs always does: writes to lower hard links are
    // generated here. The uppers differ (the kernel links copied-up names
    // one by one, through its index). Not default yet: when a lower hard
    // link's other name is hidden (whiteout, opaque dir), plyfs reports the
    // visible link count after copy-up (1) and the kernel the lower one (2).
    Variant {
        name: "index",
        kernel_opts: "redirect_dir=on,index=on",
        plyfs_opts: "redirect_dir=on",
        allowed: all_ops,
        compare_uppers: false,
    },
];

/// Known plyfs divergences from the kernel that would otherwise stop every
/// run at the same place. Each entry names the bug and a predicate on a
/// generated operation (with the current model); matching operations are not
/// generated. Keep this empty unless a bug blocks the rest of the run, and
/// remove the entry as soon as plyfs is fixed.
/// The third element says whether the divergence remains when the kernel
/// runs with `index=on`.
pub(crate) type Divergence = (&'static str, fn(&Op, &Model) -> bool, bool);
pub(crate) const KNOWN_DIVERGENCES: &[Divergence] = &[(
    "plyfs divergence: a file with hard links inside a lower layer is \
         copied up together with its other names (\"link up\", like the \
         kernel with index=on); the kernel with index=off copies up only the \
         name written to, so the other names keep the old data and nlink",
    modifies_lower_hardlink,
    false,
)];

/// Known differences in what plyfs leaves in the upper layer (the merged
/// views agree). Each entry names the bug and adjusts the two upper
/// snapshots (plyfs, kernel) so that only this difference disappears.
pub(crate) type UpperDivergence = (&'static str, fn(&mut Snap, &mut Snap));
pub(crate) const KNOWN_UPPER_DIVERGENCES: &[UpperDivergence] = &[
    (
        "kernel quirk (not a plyfs bug): renaming a pure upper directory \
         into a merged one marks it opaque before the rename itself, so the \
         marker stays when the rename then fails (e.g. ENOTEMPTY); plyfs \
         checks first",
        ignore_opaque_only_in_kernel,
    ),
    (
        "kernel quirk (not a plyfs bug): a directory rename that then fails \
         (e.g. ENOTEMPTY) has already copied up the source directory (or \
         set its redirect) and marked the parent impure; plyfs checks first",
        ignore_redirected_only_in_kernel,
    ),
    (
        "kernel quirk (not a plyfs bug): a rename that then fails has \
         already marked the target directory impure; plyfs checks first. \
         A kernel-only impure mark is ignored where no entry of the plyfs \
         upper directory has an origin (so none needs the mark)",
        ignore_unneeded_kernel_impure,
    ),
];

pub(crate) const OPAQUE: &[u8] = b"trusted.overlay.opaque";
pub(crate) const REDIRECT: &[u8] = b"trusted.overlay.redirect";
pub(crate) const IMPURE: &[u8] = b"trusted.overlay.impure";
pub(crate) const ORIGIN: &[u8] = b"trusted.overlay.origin";

/// The value of the xattr `name` of a snapshot entry.
pub(crate) fn xattr_of<'a>(e: &'a EntryInfo, name: &[u8]) -> Option<&'a [u8]> {
    e.xattrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

pub(crate) fn has_xattr(e: &EntryInfo, name: &[u8]) -> bool {
    xattr_of(e, name).is_some()
}

/// `path` split into its parent and last name ("" is the root).
pub(crate) fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

/// Drops `trusted.overlay.opaque` from kernel-upper directories whose
/// plyfs-upper twin lacks it.
pub(crate) fn ignore_opaque_only_in_kernel(p: &mut Snap, k: &mut Snap) {
    for (path, ke) in k.iter_mut() {
        let only_kernel = has_xattr(ke, OPAQUE)
            && p.get(path)
                .is_some_and(|pe| pe.kind == 'd' && !has_xattr(pe, OPAQUE));
        if ke.kind == 'd' && only_kernel {
            ke.xattrs.retain(|(n, _)| n != OPAQUE);
        }
    }
}

/// Drops kernel-upper directories with a redirect that the plyfs upper
/// lacks (or just that redirect, when plyfs has the directory). (A
/// redirect plyfs needed and lacked would show in the merged views.)
pub(crate) fn ignore_redirected_only_in_kernel(p: &mut Snap, k: &mut Snap) {
    let extra: Vec<Vec<u8>> = k
        .iter()
        .filter(|(path, e)| {
            e.kind == 'd'
                && has_xattr(e, REDIRECT)
                && p.get(*path).is_none_or(|pe| !has_xattr(pe, REDIRECT))
        })
        .map(|(path, _)| path.clone())
        .collect();
    // A failed rename may also have made a relative redirect absolute
    // (same lower directory as plyfs's relative one).
    for (path, ke) in k.iter_mut() {
        let Some(pe) = p.get(path) else { continue };
        if let (Some(kr), Some(pr)) = (xattr_of(ke, REDIRECT), xattr_of(pe, REDIRECT))
            && !pr.starts_with(b"/")
            && kr == lower_path(p, path)
        {
            let pr = pr.to_vec();
            ke.xattrs.retain(|(n, _)| n != REDIRECT);
            ke.xattrs.push((REDIRECT.to_vec(), pr));
            ke.xattrs.sort();
        }
    }
    for path in extra {
        if p.contains_key(&path) {
            if let Some(ke) = k.get_mut(&path) {
                ke.xattrs.retain(|(n, _)| n != REDIRECT);
            }
        } else {
            k.retain(|q, _| q != &path && !q.starts_with(&[path.as_slice(), b"/"].concat()));
        }
    }
}

/// The absolute lower path a directory of an upper snapshot stands for,
/// following redirects (relative ones through the parent's lower path).
pub(crate) fn lower_path(s: &Snap, path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return Vec::new();
    }
    let (parent, name) = split_path(path);
    match s.get(path).and_then(|e| xattr_of(e, REDIRECT)) {
        Some(r) if r.starts_with(b"/") => r.to_vec(),
        r => {
            let mut out = lower_path(s, parent);
            out.push(b'/');
            out.extend_from_slice(r.unwrap_or(name));
            out
        }
    }
}

pub(crate) fn ignore_unneeded_kernel_impure(p: &mut Snap, k: &mut Snap) {
    for (path, ke) in k.iter_mut() {
        let Some(pe) = p.get(path) else { continue };
        if ke.kind != 'd' || !has_xattr(ke, IMPURE) || has_xattr(pe, IMPURE) {
            continue;
        }
        let needed = p.iter().any(|(q, e)| {
            !q.is_empty() && split_path(q).0 == path.as_slice() && has_xattr(e, ORIGIN)
        });
        if !needed {
            ke.xattrs.retain(|(n, _)| n != IMPURE);
        }
    }
}

/// Whether `op` may copy up (or rename) a file that has hard links inside a
/// lower layer. Checks the name as given and with symlinks resolved on the
/// kernel mount, so a write through a symlink to such a file counts too.
pub(crate) fn modifies_lower_hardlink(op: &Op, m: &Model) -> bool {
    let paths: Vec<&String> = match op {
        Op::AsUser { op, .. } => return modifies_lower_hardlink(op, m),
        Op::Create { path, .. }
        | Op::Write { path, .. }
        | Op::Append { path, .. }
        | Op::Truncate { path, .. }
        | Op::Chmod { path, .. }
        | Op::SetXattr { path, .. }
        | Op::RemoveXattr { path, .. }
        | Op::Utimens { path, .. } => vec![path],
        Op::Rename { from, to, .. } => vec![from, to],
        Op::Link { from, .. } => vec![from],
        Op::Open { path, mode, .. } if !matches!(mode, OpenMode::Ro | OpenMode::Directory) => {
            vec![path]
        }
        Op::Chown { path, .. } => vec![path],
        _ => vec![],
    };
    paths.into_iter().any(|p| {
        m.lower_links.contains(p) || m.lower_links.contains(&m.resolve(p)) || m.is_lower_link_now(p)
    })
}

// ---------------------------------------------------------------------------
// Running one seed
// ---------------------------------------------------------------------------

pub(crate) type Snap = BTreeMap<Vec<u8>, EntryInfo>;

pub(crate) fn show_entry(e: &EntryInfo) -> String {
    let x: Vec<String> = e
        .xattrs
        .iter()
        .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), short_bytes(v)))
        .collect();
    format!(
        "{} mode={:o} uid={} gid={} size={} content={:016x} rdev={} xattrs={x:?}",
        e.kind, e.mode, e.uid, e.gid, e.size, e.content, e.rdev
    )
}

/// Like `common::diff`, but printing names and xattrs as text; at most
/// `max` lines.
pub(crate) fn diff_text(a: &Snap, b: &Snap, an: &str, bn: &str, max: usize) -> String {
    let mut out = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let name = String::from_utf8_lossy(k);
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("only in {an}: {name} ({})", show_entry(x))),
            (None, Some(y)) => out.push(format!("only in {bn}: {name} ({})", show_entry(y))),
            (Some(x), Some(y)) if x != y => out.push(format!(
                "differs {name}:\n  {an}: {}\n  {bn}: {}",
                show_entry(x),
                show_entry(y)
            )),
            _ => {}
        }
    }
    let n = out.len();
    if n > max {
        out.truncate(max);
        out.push(format!("... ({} more)", n - max));
    }
    out.join("\n")
}

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        v.parse()
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Upper-layer xattrs whose values legitimately differ between two trees
/// (file handles and filesystem ids): only their presence is compared.
pub(crate) fn upper_xattr_value_ignored(name: &[u8]) -> bool {
    [
        &b"trusted.overlay.origin"[..],
        b"trusted.overlay.uuid",
        b"trusted.overlay.nlink",
    ]
    .contains(&name)
}

/// The kind of a mismatch; the shrinker keeps only candidates that fail
/// the same way, so it does not wander off to another bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    /// Op name, plyfs outcome shape, kernel outcome shape.
    Op(String, String, String),
    Merged,
    /// Hard-link groups (names sharing st_ino) differ.
    Links,
    /// The first upper difference: which side has it, or which fields
    /// differ.
    Upper(String),
    /// Which filesystem, mounted over what the other one wrote, showed
    /// what.
    Cross(String),
}

/// Describes the first difference of two snapshots for [`Sig`].
pub(crate) fn first_difference(a: &Snap, b: &Snap) -> String {
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => return format!("only first: {}", x.kind),
            (None, Some(y)) => return format!("only second: {}", y.kind),
            (Some(x), Some(y)) if x != y => {
                let mut f = Vec::new();
                for (name, differs) in [
                    ("kind", x.kind != y.kind),
                    ("mode", x.mode != y.mode),
                    ("owner", x.uid != y.uid || x.gid != y.gid),
                    ("size", x.size != y.size),
                    ("content", x.content != y.content),
                    ("rdev", x.rdev != y.rdev),
                    ("xattrs", x.xattrs != y.xattrs),
                ] {
                    if differs {
                        f.push(name);
                    }
                }
                return format!("differs: {}", f.join(","));
            }
            _ => {}
        }
    }
    String::new()
}

pub(crate) fn op_name(op: &Op) -> String {
    if let Op::AsUser { op, .. } = op {
        return format!("AsUser:{}", op_name(op));
    }
    let d = format!("{op:?}");
    d.split([' ', '{', '(']).next().unwrap_or("?").to_string()
}

/// The errno name, or the kind of data.
pub(crate) fn shape(o: &Outcome) -> String {
    match o {
        Outcome::Err(e) => errno_name(*e),
        other => {
            let d = format!("{other:?}");
            d.split('(').next().unwrap_or("?").to_string()
        }
    }
}

pub(crate) fn op_sig(op: &Op, rp: &Outcome, rk: &Outcome) -> Sig {
    Sig::Op(op_name(op), shape(rp), shape(rk))
}

pub(crate) fn plyfs_options(l: &Layers, variant: &Variant) -> String {
    if variant.plyfs_opts.is_empty() {
        l.options()
    } else {
        format!("{},{}", l.options(), variant.plyfs_opts)
    }
}

pub(crate) fn kernel_options(l: &Layers, variant: &Variant) -> String {
    if variant.kernel_opts.is_empty() {
        l.options()
    } else {
        format!("{},{}", l.options(), variant.kernel_opts)
    }
}

/// Snapshots of the two upper layers, normalized for comparison: without
/// inode-specific xattrs and [`KNOWN_UPPER_DIVERGENCES`].
pub(crate) fn upper_snapshots(lp: &Layers, lk: &Layers) -> (Snap, Snap) {
    let strip = |mut s: Snap| {
        for v in s.values_mut() {
            for (k, val) in v.xattrs.iter_mut() {
                if upper_xattr_value_ignored(k) {
                    *val = b"<varies>".to_vec();
                }
            }
        }
        s
    };
    let mut up = strip(snapshot(&lp.upper));
    let mut uk = strip(snapshot(&lk.upper));
    for (_, normalize) in KNOWN_UPPER_DIVERGENCES
        .iter()
        .filter(|_| !env_flag("PLYFS_DIFF_ALL"))
    {
        normalize(&mut up, &mut uk);
    }
    (up, uk)
}

/// st_ino of every path below `root` (relative paths).
pub(crate) fn inode_map(root: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.metadata() else { continue };
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            out.insert(rel, md.ino());
            if md.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

/// Groups (2+) of non-directory names that share an inode number: the
/// hard links as the filesystem presents them.
pub(crate) fn link_groups(root: &Path) -> BTreeSet<Vec<String>> {
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, ino) in inode_map(root) {
        if std::fs::symlink_metadata(root.join(&p)).is_ok_and(|m| !m.is_dir()) {
            by_ino.entry(ino).or_default().push(p);
        }
    }
    by_ino
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

/// Differences of the hard-link groups of both mounts (empty if none).
pub(crate) fn link_groups_diff(pm: &Path, km: &Path) -> String {
    let (gp, gk) = (link_groups(pm), link_groups(km));
    if gp == gk {
        return String::new();
    }
    let only = |a: &BTreeSet<Vec<String>>, b: &BTreeSet<Vec<String>>| {
        a.difference(b).cloned().collect::<Vec<_>>()
    };
    format!(
        "names sharing an inode differ: only plyfs {:?}, only kernel {:?}",
        only(&gp, &gk),
        only(&gk, &gp)
    )
}

/// Both filesystems over identical layer trees: plyfs over `lp`, the kernel
/// over `lk`.
pub(crate) struct Pair<'v> {
    pub(crate) variant: &'v Variant,
    // Field order is drop order: fds, then mounts, then the trees.
    pub(crate) fsp: FsState,
    pub(crate) fsk: FsState,
    pub(crate) plyfs: Option<PlyfsMount>,
    pub(crate) kernel: Option<KernelMount>,
    pub(crate) lp: Option<Layers>,
    pub(crate) lk: Option<Layers>,
}

impl<'v> Pair<'v> {
    /// Builds the trees (`lenient` for the shrinker's partial specs) and
    /// mounts both.
    pub(crate) fn new(
        nlayers: usize,
        spec: &[Build],
        lenient: bool,
        variant: &'v Variant,
    ) -> Result<Pair<'v>, String> {
        let lp = Layers::new(nlayers);
        let lk = Layers::new(nlayers);
        for l in [&lp, &lk] {
            if lenient {
                materialize_lenient(spec, l);
            } else {
                materialize(spec, l);
            }
        }
        for i in 0..nlayers {
            let d = diff(&snapshot(lp.lower(i)), &snapshot(lk.lower(i)), "1", "2");
            assert!(d.is_empty(), "layer copies differ (test bug):\n{d}");
        }
        let mut pair = Pair {
            variant,
            fsp: FsState::new(&lp.mnt),
            fsk: FsState::new(&lk.mnt),
            plyfs: None,
            kernel: None,
            lp: Some(lp),
            lk: Some(lk),
        };
        pair.mount()?;
        Ok(pair)
    }

    pub(crate) fn lp(&self) -> &Layers {
        self.lp.as_ref().expect("layers")
    }

    pub(crate) fn lk(&self) -> &Layers {
        self.lk.as_ref().expect("layers")
    }

    pub(crate) fn mount(&mut self) -> Result<(), String> {
        let (lp, lk) = (self.lp(), self.lk());
        let p = PlyfsMount::start(&lp.mnt, &plyfs_options(lp, self.variant), &[])?;
        let k = KernelMount::mount(&lk.mnt, &kernel_options(lk, self.variant))?;
        self.plyfs = Some(p);
        self.kernel = Some(k);
        Ok(())
    }

    /// Closes the kept fds and unmounts both.
    pub(crate) fn unmount(&mut self) {
        self.fsp.close_all();
        self.fsk.close_all();
        self.plyfs.take();
        self.kernel.take();
    }

    pub(crate) fn plyfs_log(&self) -> String {
        self.plyfs.as_ref().map(|m| m.log()).unwrap_or_default()
    }

    /// Runs `op` on both.
    pub(crate) fn step(&mut self, op: &Op) -> (Outcome, Outcome) {
        if let Op::Remount = op {
            // Inode numbers must survive a remount as they do on the
            // kernel: the outcome is the list of paths whose st_ino changed.
            let before = (inode_map(&self.lp().mnt), inode_map(&self.lk().mnt));
            self.unmount();
            if let Err(e) = self.mount() {
                panic!("remount failed: {e}");
            }
            let after = (inode_map(&self.lp().mnt), inode_map(&self.lk().mnt));
            let changed = |b: &BTreeMap<String, u64>, a: &BTreeMap<String, u64>| {
                let names = b
                    .iter()
                    .filter(|(p, i)| a.get(*p).is_some_and(|j| j != *i))
                    .map(|(p, _)| p.clone());
                Outcome::Names(names.collect())
            };
            return (changed(&before.0, &after.0), changed(&before.1, &after.1));
        }
        (exec(&mut self.fsp, op), exec(&mut self.fsk, op))
    }

    /// The merged trees (plyfs, kernel).
    pub(crate) fn snapshots(&self) -> (Snap, Snap) {
        (snapshot(&self.lp().mnt), snapshot(&self.lk().mnt))
    }

    /// Ends the run: unmounts, compares the upper layers, then mounts each
    /// filesystem over the layers the other one wrote (they must be
    /// interchangeable): both must show `expected`.
    pub(crate) fn finish(&mut self, expected: &Snap) -> Option<(Sig, String)> {
        self.unmount();
        let (up, uk) = upper_snapshots(self.lp(), self.lk());
        let d = diff_text(&up, &uk, "plyfs upper", "kernel upper", 40);
        if self.variant.compare_uppers && !d.is_empty() {
            return Some((
                Sig::Upper(first_difference(&up, &uk)),
                format!("upper layers differ:\n{d}"),
            ));
        }
        let (lp, lk) = (self.lp(), self.lk());
        let seen = match KernelMount::mount(&lp.mnt, &kernel_options(lp, self.variant)) {
            Ok(k) => snapshot(&k.mnt),
            Err(e) => {
                let what = format!("kernel overlayfs cannot mount the layers plyfs wrote: {e}");
                return Some((Sig::Cross("kernel mount".into()), what));
            }
        };
        let d = diff_text(&seen, expected, "kernel over plyfs's upper", "expected", 40);
        if !d.is_empty() {
            let sig = Sig::Cross(format!("kernel: {}", first_difference(&seen, expected)));
            return Some((sig, format!("kernel mounted over plyfs's upper:\n{d}")));
        }
        let seen = match PlyfsMount::start(&lk.mnt, &plyfs_options(lk, self.variant), &[]) {
            Ok(p) => snapshot(&p.mnt),
            Err(e) => {
                let what = format!("plyfs cannot mount the layers the kernel wrote: {e}");
                return Some((Sig::Cross("plyfs mount".into()), what));
            }
        };
        let d = diff_text(
            &seen,
            expected,
            "plyfs over the kernel's upper",
            "expected",
            40,
        );
        if !d.is_empty() {
            let sig = Sig::Cross(format!("plyfs: {}", first_difference(&seen, expected)));
            return Some((sig, format!("plyfs mounted over the kernel's upper:\n{d}")));
        }
        None
    }
}

/// Mounts both filesystems over fresh copies of `spec`, runs `ops`, and
/// returns the first difference (per-op result, merged trees at the end,
/// upper layers and cross-mounts after unmounting), or None.
pub(crate) fn replay(
    nlayers: usize,
    spec: &[Build],
    ops: &[Op],
    variant: &Variant,
) -> Option<(Sig, String)> {
    let mut pair = Pair::new(nlayers, spec, true, variant).ok()?;
    for (i, op) in ops.iter().enumerate() {
        let (rp, rk) = pair.step(op);
        if rp != rk {
            let what = format!("op #{i} {op:?}: plyfs {rp:?}, kernel {rk:?}");
            return Some((op_sig(op, &rp, &rk), what));
        }
    }
    let (sp, sk) = pair.snapshots();
    let d = diff_text(&sp, &sk, "plyfs", "kernel", 10);
    if !d.is_empty() {
        return Some((Sig::Merged, format!("merged trees differ:\n{d}")));
    }
    let d = link_groups_diff(&pair.lp().mnt, &pair.lk().mnt);
    if !d.is_empty() {
        return Some((Sig::Links, d));
    }
    pair.finish(&sk)
}

/// Shrinks a failing run to a small tree and a short op list.
pub(crate) fn shrink(nlayers: usize, spec: &[Build], ops: &[Op], variant: &Variant) -> String {
    let started = Instant::now();
    let mut runs = 0;
    let Some((sig, _)) = replay(nlayers, spec, ops, variant) else {
        return "shrink: the recorded ops do not reproduce on fresh mounts".into();
    };
    let same = |r: Option<(Sig, String)>| r.is_some_and(|(s, _)| s == sig);
    let mut spec = spec.to_vec();
    let mut ops = ddmin(ops.to_vec(), &mut |o: &[Op]| {
        runs += 1;
        same(replay(nlayers, &spec, o, variant))
    });
    spec = ddmin(spec, &mut |sp: &[Build]| {
        runs += 1;
        same(replay(nlayers, sp, &ops, variant))
    });
    ops = ddmin(ops, &mut |o: &[Op]| {
        runs += 1;
        same(replay(nlayers, &spec, o, variant))
    });
    let what = replay(nlayers, &spec, &ops, variant)
        .map(|(_, w)| w)
        .unwrap_or_default();
    let spec_s: Vec<String> = spec.iter().map(|b| format!("  {b:?}")).collect();
    let ops_s: Vec<String> = ops.iter().map(|o| format!("  {o:?}")).collect();
    format!(
        "shrunk in {runs} runs ({:.1?}) to {nlayers} layers (lower0 = top):\n{}\nops:\n{}\n=> {what}",
        started.elapsed(),
        spec_s.join("\n"),
        ops_s.join("\n")
    )
}

/// One seeded run: the pair of mounts plus what is needed to report.
pub(crate) struct Run<'v> {
    pub(crate) seed: u64,
    pub(crate) nlayers: usize,
    pub(crate) spec: Vec<Build>,
    /// Every op run so far (for the shrinker).
    pub(crate) ops: Vec<Op>,
    pub(crate) nops: usize,
    pub(crate) variant: &'v Variant,
    pub(crate) trace: bool,
    pub(crate) pair: Pair<'v>,
    pub(crate) history: Vec<String>,
    /// Per operation name: (succeeded, failed) on the kernel.
    pub(crate) stats: BTreeMap<String, (u32, u32)>,
    /// The kernel's merged tree at the last comparison.
    pub(crate) last: Snap,
}

impl Run<'_> {
    pub(crate) fn replay_line(&self, ops: usize) -> String {
        format!(
            "PLYFS_DIFF_SEED={} PLYFS_DIFF_OPS={ops} PLYFS_DIFF_VARIANT={} cargo test --test differential -- --nocapture",
            self.seed, self.variant.name
        )
    }

    /// Unmounts, optionally keeps the trees, and panics with `what`.
    pub(crate) fn fail(&mut self, what: String, ops_to_replay: usize) -> ! {
        let log = self.pair.plyfs_log();
        self.pair.unmount();
        let mut kept = String::new();
        if env_flag("PLYFS_DIFF_KEEP") {
            for (name, l) in [
                ("plyfs", self.pair.lp.take()),
                ("kernel", self.pair.lk.take()),
            ] {
                if let Some(l) = l {
                    let Layers { dir, .. } = l;
                    kept += &format!("kept {name} trees in {}\n", dir.keep().display());
                }
            }
        }
        let start = self.history.len().saturating_sub(HISTORY_SHOWN);
        let hist = self.history[start..].join("\n");
        let log: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        let shrunk = if env_flag("PLYFS_DIFF_SHRINK") {
            shrink(self.nlayers, &self.spec, &self.ops, self.variant)
        } else {
            "(PLYFS_DIFF_SHRINK=1 shrinks this to a minimal tree and op list)".into()
        };
        panic!(
            "differential mismatch (variant {}, seed {}):\n{what}\n\
             replay: {}\n\
             (PLYFS_DIFF_TRACE=1 prints every op, PLYFS_DIFF_KEEP=1 keeps the trees)\n\
             {kept}last ops (index: op => kernel result):\n{hist}\n\
             plyfs log tail (newest first):\n{log}\n{shrunk}",
            self.variant.name,
            self.seed,
            self.replay_line(ops_to_replay)
        );
    }

    pub(crate) fn compare_snapshots(&mut self, after: usize) {
        let (sp, sk) = self.pair.snapshots();
        let d = diff_text(&sp, &sk, "plyfs", "kernel", 40);
        if !d.is_empty() {
            // An empty side usually means the walk itself failed.
            let root = Op::Readdir {
                path: String::new(),
            };
            let root_p = exec_path(&self.pair.lp().mnt, &root);
            let root_k = exec_path(&self.pair.lk().mnt, &root);
            self.fail(
                format!(
                    "merged trees differ after {after} ops:\n{d}\n\
                     readdir of the roots: plyfs {root_p:?}, kernel {root_k:?}"
                ),
                after.max(1),
            );
        }
        let d = link_groups_diff(&self.pair.lp().mnt, &self.pair.lk().mnt);
        if !d.is_empty() {
            self.fail(format!("after {after} ops: {d}"), after.max(1));
        }
        self.last = sk;
    }
}

pub(crate) fn run_seed(seed: u64, nops: usize, variant: &Variant) -> Model {
    let started = Instant::now();
    let mut trng = SmallRng::seed_from_u64(seed);
    let nlayers = trng.gen_range(2..=3);
    let spec = gen_tree(&mut trng, nlayers);
    let pair = Pair::new(nlayers, &spec, false, variant).expect("mount");
    let km = pair.lk().mnt.clone();
    let mut run = Run {
        seed,
        nlayers,
        spec: spec.clone(),
        ops: Vec::new(),
        nops,
        variant,
        trace: env_flag("PLYFS_DIFF_TRACE"),
        pair,
        history: Vec::new(),
        stats: BTreeMap::new(),
        last: Snap::new(),
    };
    run.compare_snapshots(0);
    let mut model = Model {
        kernel_root: std::fs::canonicalize(&km).expect("kernel mount"),
        lower_links: spec
            .iter()
            .flat_map(|b| match b {
                Build::HardLink { from, to, .. } => vec![from.clone(), to.clone()],
                _ => vec![],
            })
            .collect(),
        ..Model::default()
    };
    model.lower_link_inos = model
        .lower_links
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(abs(&model.kernel_root, p)).ok())
        .map(|md| std::os::unix::fs::MetadataExt::ino(&md))
        .collect();
    model.refresh(&run.last);
    let initial = model.live.len();
    let mut generator = Gen::new(seed, variant);
    for i in 0..run.nops {
        let op = generator.next(&model);
        run.ops.push(op.clone());
        model.prepare(&op);
        let (rp, rk) = run.pair.step(&op);
        if run.trace {
            eprintln!("#{i}: {op:?}\n    plyfs  {rp:?}\n    kernel {rk:?}");
        }
        if rp != rk {
            run.fail(
                format!(
                    "op #{i} of {}: {op:?}\n  plyfs:  {rp:?}\n  kernel: {rk:?}",
                    run.nops
                ),
                i + 1,
            );
        }
        let st = run.stats.entry(op_name(&op)).or_default();
        if matches!(rk, Outcome::Err(_)) {
            st.1 += 1;
        } else {
            st.0 += 1;
        }
        run.history.push(format!("#{i}: {op:?} => {rk:?}"));
        model.apply(&op, &rk);
        if (i + 1) % SNAPSHOT_EVERY == 0 || i + 1 == run.nops {
            run.compare_snapshots(i + 1);
            model.refresh(&run.last);
        }
    }
    let expected = std::mem::take(&mut run.last);
    if let Some((_, what)) = run.pair.finish(&expected) {
        let n = run.nops;
        run.fail(format!("after {n} ops: {what}"), n);
    }
    eprintln!(
        "differential: variant {} seed {seed}: {nlayers} layers, {} ops, {initial} -> {} paths, ok in {:.1?}",
        variant.name,
        run.nops,
        model.live.len(),
        started.elapsed()
    );
    let stats: Vec<String> = run
        .stats
        .iter()
        .map(|(k, (ok, err))| format!("{k} {ok}/{err}"))
        .collect();
    eprintln!("  ok/failed per op: {}", stats.join(", "));
    model
}

pub(crate) fn variants() -> Vec<&'static Variant> {
    let only = std::env::var("PLYFS_DIFF_VARIANT").ok();
    let v: Vec<&Variant> = match only.as_deref() {
        None => VARIANTS.iter().collect(),
        Some(o) => VARIANTS
            .iter()
            .chain(EXTRA_VARIANTS)
            .filter(|v| v.name == o)
            .collect(),
    };
    assert!(!v.is_empty(), "PLYFS_DIFF_VARIANT={only:?} matches nothing");
    v
}

pub(crate) fn nops() -> usize {
    env_u64("PLYFS_DIFF_OPS").map_or(DEFAULT_OPS, |n| n as usize)
}

pub(crate) fn ready(name: &str) -> bool {
    require_root(name) && require_fuse(name)
}

/// The fixed seeds, or only `PLYFS_DIFF_SEED` when set.
#[test]
pub(crate) fn differential_fixed_seeds() {
    if !ready("differential_fixed_seeds") {
        return;
    }
    let seeds: Vec<u64> = match env_u64("PLYFS_DIFF_SEED") {
        Some(s) => vec![s],
        None => FIXED_SEEDS.to_vec(),
    };
    for v in variants() {
        for &s in &seeds {
            run_seed(s, nops(), v);
        }
    }
}

/// One seed from the clock, so every CI run explores something new. The
/// seed is printed (and is in any failure message) for replay.
#[test]
pub(crate) fn differential_time_seed() {
    if !ready("differential_time_seed") {
        return;
    }
    if env_u64("PLYFS_DIFF_SEED").is_some() {
        eprintln!("differential_time_seed: PLYFS_DIFF_SEED is set, nothing to do");
        return;
    }
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        % 1_000_000_007;
    // PLYFS_DIFF_RANDOM=N runs N clock seeds (for longer local runs).
    for i in 0..env_u64("PLYFS_DIFF_RANDOM").unwrap_or(1) {
        let seed = base + i;
        eprintln!("differential_time_seed: seed {seed}");
        for v in variants() {
            run_seed(seed, nops(), v);
        }
    }
}

#[test]
fn ddmin_shrinks_to_the_culprits() {
    let all: Vec<u32> = (0..50).collect();
    let min = ddmin(all, &mut |s: &[u32]| s.contains(&7) && s.contains(&31));
    assert_eq!(min, vec![7, 31]);
}
