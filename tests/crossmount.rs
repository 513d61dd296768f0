//! Cross-mount compatibility with kernel overlayfs: the same lower, upper
//! and work directories must show the same tree whether plyfs or the kernel
//! wrote them, and whichever of the two reads them afterwards.
//!
//! Random cases (seeded, replayable): each seed builds a random tree of 2-3
//! lower layers in kernel format only (0/0 whiteouts,
//! `trusted.overlay.opaque=y`, hard links within a layer, fifos, symlinks,
//! user.*/trusted.* xattrs, escaped `trusted.overlay.overlay.*`; no OCI
//! `.wh.` files, which the kernel does not read), runs a random workload
//! through one implementation (writes, appends, truncates, creates over
//! deleted names, unlink/rmdir/rm -r of lower and upper names, mkdir over
//! deleted names, renames of files and directories with lower content,
//! moves into other directories, renames back, RENAME_EXCHANGE, hard links,
//! symlinks, chmod/chown, set/remove xattrs, fifos) and records a full
//! snapshot. Then:
//! - the other implementation mounts the same directories and must show
//!   the same tree and the same hard-link groups (names sharing st_ino);
//! - plyfs mounts again: same tree, and (plyfs against plyfs only) the same
//!   st_ino for every path; the kernel mounts again: same tree;
//! - the upper layer is "rotated" below a fresh upper as the top lower
//!   layer (as image builders do) and both must still show the tree;
//! - `alternating_writers`: plyfs and the kernel take turns writing (and in
//!   `alternating_writers_layer_per_phase` each turn gets a new upper).
//!
//! Failures print the seed, the replay command, the op log (as shell
//! commands run in the mount point) and the differences. Environment:
//! - `PLYFS_CROSS_SEED=N`: run only seed N; `PLYFS_CROSS_OPS=N`: workload
//!   length (default 200);
//! - `PLYFS_CROSS_MINIMIZE=1`: shrink a failing workload (delta debugging,
//!   replaying on the same layers) and print the minimal op list;
//! - `PLYFS_CROSS_KEEP=1`: keep the layer directories (path printed);
//! - `PLYFS_CROSS_VERBOSE=1`: print every op log.
//!
//! ```sh
//! PLYFS_CROSS_SEED=7 PLYFS_CROSS_OPS=300 cargo test --test crossmount -- --nocapture
//! PLYFS_CROSS_SEED=7 PLYFS_CROSS_MINIMIZE=1 cargo test --test crossmount -- --exact plyfs_writes_kernel_reads
//! ```
//!
//! Compared: names, types, contents, modes, owners, symlink targets, rdev,
//! xattrs (tests/common `snapshot`; directory sizes are not), and hard-link
//! groups. Known, intended differences, so not compared: st_ino values
//! between the kernel and plyfs (plyfs keeps the lower number of a copied-up
//! hard link, the kernel with index=off uses the upper one), OCI whiteouts
//! (plyfs reads them, the kernel does not: not used here), and what a
//! write through one name of a lower hard link does (the kernel with
//! index=off breaks the link, plyfs keeps it: each is checked to be read
//! the same by the other). The kernel's own live view can report d_ino !=
//! st_ino after some of its renames and links (right after a remount it
//! does not), so d_ino is checked on plyfs views and on kernel mounts of
//! plyfs's layers only. Kernel mounts use `redirect_dir=on` (plyfs's
//! default in trusted-xattr mode), `index=off` (the kernel default, and
//! what containers-storage uses) and `metacopy=off`.
//!
//! The plyfs bugs these tests found have minimal reproductions at the end
//! of this file; all are fixed and stay as regression tests.

mod common;
mod sem;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use common::*;
use sem::*;

/// Seeds run by default (each in both directions).
const DEFAULT_SEEDS: &[u64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
];
/// Workload length by default.
const DEFAULT_OPS: usize = 200;
/// Options of every kernel mount (see the module comment).
const KERNEL_OPTS: &str = "redirect_dir=on,index=off,metacopy=off";

fn seeds() -> Vec<u64> {
    match std::env::var("PLYFS_CROSS_SEED") {
        Ok(s) => vec![s.trim().parse().expect("PLYFS_CROSS_SEED must be a number")],
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn ops_len() -> usize {
    match std::env::var("PLYFS_CROSS_OPS") {
        Ok(s) => s.trim().parse().expect("PLYFS_CROSS_OPS must be a number"),
        Err(_) => DEFAULT_OPS,
    }
}

// ---- mounts ------------------------------------------------------------------

fn mount_kernel(l: &Layers) -> KernelMount {
    KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS}", l.options()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Moves the upper layer below, as the new top lower layer, and gives the
/// layers a fresh, empty upper and work directory.
fn rotate(l: &mut Layers) {
    let n = l.lowers.len();
    let to = l.dir.path().join(format!("rotated{n}"));
    std::fs::rename(&l.upper, &to).expect("move upper");
    l.lowers.insert(0, to);
    std::fs::create_dir(&l.upper).expect("new upper");
    std::fs::remove_dir_all(&l.work).expect("remove work");
    std::fs::create_dir(&l.work).expect("new work");
}

// ---- views and comparisons ------------------------------------------------------

type Snap = BTreeMap<Vec<u8>, EntryInfo>;

/// A full snapshot plus the st_ino of every path ("" is the root) and the
/// d_ino its directory listing reported.
struct View {
    snap: Snap,
    inos: BTreeMap<Vec<u8>, u64>,
    dinos: BTreeMap<Vec<u8>, u64>,
}

fn view(root: &Path) -> View {
    use std::os::unix::fs::DirEntryExt;
    let snap = snapshot(root);
    let mut inos = BTreeMap::new();
    let mut dinos = BTreeMap::new();
    inos.insert(Vec::new(), lstat(root).expect("stat root").ino());
    let mut dirs = vec![PathBuf::new()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&d)) else {
            continue;
        };
        for e in rd.flatten() {
            let rel = d.join(e.file_name());
            let key = rel.as_os_str().as_bytes().to_vec();
            dinos.insert(key.clone(), e.ino());
            if let Ok(md) = lstat(&root.join(&rel)) {
                inos.insert(key, md.ino());
                if md.is_dir() {
                    dirs.push(rel);
                }
            }
        }
    }
    View { snap, inos, dinos }
}

/// readdir's d_ino must equal st_ino (the kernel fixes d_ino up in
/// directories marked `overlay.impure`; plyfs promises the same).
fn dino_mismatches(v: &View, name: &str) -> String {
    let mut out = String::new();
    for (k, d) in &v.dinos {
        if let Some(i) = v.inos.get(k)
            && i != d
        {
            out += &format!("{name}: /{}: d_ino {d}, st_ino {i}\n", show(k));
        }
    }
    out
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// For every non-directory with other names of the same inode: the sorted
/// list of all its names.
fn link_groups(v: &View) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, e) in &v.snap {
        if e.kind != 'd' {
            by_ino.entry(v.inos[k]).or_default().push(k.clone());
        }
    }
    let mut out = BTreeMap::new();
    for names in by_ino.into_values().filter(|n| n.len() > 1) {
        for n in &names {
            out.insert(n.clone(), names.clone());
        }
    }
    out
}

/// Entries that share an st_ino must be one file: no directories, and the
/// same type, content, mode, owner and xattrs (tar, cp -a and du take equal
/// st_ino for a hard link).
fn ino_consistency(v: &View, name: &str) -> String {
    let mut by_ino: BTreeMap<u64, Vec<&Vec<u8>>> = BTreeMap::new();
    for (k, ino) in &v.inos {
        by_ino.entry(*ino).or_default().push(k);
    }
    let mut out = String::new();
    for (ino, paths) in by_ino.iter().filter(|(_, p)| p.len() > 1) {
        let first = v.snap.get(paths[0]);
        let one_file = paths.iter().all(|p| {
            let e = v.snap.get(*p);
            e.is_some() && e.map(|e| e.kind) != Some('d') && e == first
        });
        if !one_file {
            out += &format!("{name}: st_ino {ino} shared by different objects:\n");
            for p in paths {
                out += &format!("    {}: {:?}\n", show(p), v.snap.get(*p));
            }
        }
    }
    out
}

/// Differences between two views of the same directories (empty when they
/// agree): the snapshot and the hard-link groups.
fn compare(a: &View, b: &View, an: &str, bn: &str) -> String {
    diff(&a.snap, &b.snap, an, bn) + &link_diff(a, b, an, bn)
}

/// Paths (present in both views) whose hard-link groups differ.
fn link_diff(a: &View, b: &View, an: &str, bn: &str) -> String {
    let mut out = String::new();
    let (ga, gb) = (link_groups(a), link_groups(b));
    for k in a.snap.keys().filter(|k| b.snap.contains_key(*k)) {
        let (x, y) = (ga.get(k), gb.get(k));
        if x != y {
            let fmt = |g: Option<&Vec<Vec<u8>>>| {
                g.map(|g| g.iter().map(|p| show(p)).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            out += &format!(
                "hard links of {} differ:\n  {an}: {:?}\n  {bn}: {:?}\n",
                show(k),
                fmt(x),
                fmt(y)
            );
        }
    }
    out
}

/// What a check is about, so that a test can look at some of them (and a
/// known plyfs bug in one aspect does not hide the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aspect {
    /// The other implementation shows the writer's tree; st_ino is shared
    /// only by names of one file.
    Cross,
    /// The other implementation shows the same hard links (names sharing
    /// st_ino; the numbers themselves differ by design).
    Links,
    /// A plyfs (or kernel) remount shows the same tree.
    Remount,
    /// plyfs st_ino values (and so its hard-link groups) survive remounts.
    Inodes,
    /// readdir's d_ino equals st_ino in every view.
    Dino,
    /// The kernel reads the upper layer rotated into a lower one.
    RotatedKernel,
    /// plyfs reads the upper layer rotated into a lower one.
    RotatedPlyfs,
}

/// Collects findings of one case and prints them (plus the seed, replay
/// line and op log) for the aspects a test asked for.
struct Report {
    case: String,
    want: &'static [Aspect],
    findings: Vec<String>,
}

impl Report {
    fn new(case: String, want: &'static [Aspect]) -> Report {
        Report {
            case,
            want,
            findings: Vec::new(),
        }
    }

    fn check(&mut self, aspect: Aspect, what: &str, d: String) {
        if !d.is_empty() && self.want.contains(&aspect) {
            self.findings.push(format!("--- {what}:\n{d}"));
        }
    }

    /// Errors that mean "broken on-disk state" rather than a refused
    /// operation are findings too.
    fn check_log(&mut self, aspect: Aspect, what: &str, log: &[String]) {
        let bad: Vec<&String> = log
            .iter()
            .filter(|l| {
                ["# EIO", "# ESTALE", "# errno 117"]
                    .iter()
                    .any(|e| l.ends_with(e))
            })
            .collect();
        if !bad.is_empty() {
            let d = bad.iter().map(|l| format!("{l}\n")).collect::<String>();
            self.check(aspect, what, d);
        }
    }

    /// The headings of the findings ("--- what:").
    fn titles(&self) -> Vec<String> {
        self.findings
            .iter()
            .map(|f| f.lines().next().unwrap_or("").to_string())
            .collect()
    }

    fn text(&self, log: &[String]) -> Option<String> {
        if self.findings.is_empty() {
            return None;
        }
        let mut s = format!("==== {} FAILED\n", self.case);
        for f in &self.findings {
            s += f;
        }
        if !log.is_empty() {
            s += "--- op log (paths relative to the mount; # result):\n";
            for l in log {
                s += l;
                s += "\n";
            }
        }
        Some(s)
    }
}

/// With `PLYFS_CROSS_KEEP` set, leaves the layer directories on disk for
/// inspection (and prints where).
fn keep_if_asked(l: Layers) {
    if std::env::var_os("PLYFS_CROSS_KEEP").is_some() {
        eprintln!("layers kept in {}", l.dir.path().display());
        std::mem::forget(l);
    }
}

fn finish(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// ---- random layered trees --------------------------------------------------------

/// Names used at every level of every layer, so that layers overlap (and
/// sometimes disagree about types). a..d are mostly directories.
const POOL: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];
const FILE_MODES: &[u32] = &[0o644, 0o600, 0o755, 0o444, 0o640, 0o4755, 0o2755, 0o700];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750];
const OWNERS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (4242, 100), (0, 4243)];

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path")
}

fn lchown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

fn chmod(p: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Opens without blocking: a name picked for writing may have become a fifo
/// (then the open fails with ENXIO instead of waiting for a reader).
fn open_nb(o: &mut std::fs::OpenOptions, p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    o.custom_flags(libc::O_NONBLOCK).open(p)
}

/// `std::fs::write` that never blocks on a fifo.
fn write_file(p: &Path, data: &[u8]) -> std::io::Result<()> {
    open_nb(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        p,
    )?
    .write_all(data)
}

fn truncate(p: &Path, len: u64) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid C string.
    check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) }).map(|_| ())
}

struct LayerBuilder<'a> {
    rng: &'a mut SmallRng,
    root: PathBuf,
    layer: usize,
    bottom: bool,
    /// Regular files made in this layer (candidates for hard links).
    files: Vec<PathBuf>,
    budget: usize,
}

impl LayerBuilder<'_> {
    fn fill(&mut self, rel: &Path, depth: usize) {
        let k = match depth {
            0 => self.rng.gen_range(4..=6),
            1 => self.rng.gen_range(2..=4),
            _ => self.rng.gen_range(1..=3),
        };
        let names: Vec<&str> = POOL.choose_multiple(self.rng, k).copied().collect();
        for name in names {
            if self.budget == 0 {
                return;
            }
            self.budget -= 1;
            let rel = rel.join(name);
            let p = self.root.join(&rel);
            let dirish = name < "e";
            let roll = self.rng.gen_range(0..100);
            let dir_chance = if depth >= 3 {
                0
            } else if dirish {
                75
            } else {
                10
            };
            if roll < dir_chance {
                std::fs::create_dir(&p).unwrap();
                if !self.bottom && self.rng.gen_ratio(1, 6) {
                    set_xattr(&p, "trusted.overlay.opaque", b"y").unwrap();
                }
                self.xattrs(&p);
                self.fill(&rel, depth + 1);
                let (u, g) = *OWNERS.choose(self.rng).unwrap();
                lchown(&p, u, g).unwrap();
                chmod(&p, *DIR_MODES.choose(self.rng).unwrap()).unwrap();
                continue;
            }
            match self.rng.gen_range(0..100) {
                0..=11 => {
                    // A whiteout, usually over a name of a layer below;
                    // in the bottom layer it hides nothing.
                    whiteout(&p);
                    continue;
                }
                12..=21 => {
                    let target = ["e", "../a/f", "/etc/passwd", "nowhere", "g"]
                        .choose(self.rng)
                        .unwrap();
                    std::os::unix::fs::symlink(target, &p).unwrap();
                }
                22..=26 => {
                    mknod(&p, libc::S_IFIFO | 0o644, 0).unwrap();
                }
                27..=41 if !self.files.is_empty() => {
                    let src = self.files.choose(self.rng).unwrap().clone();
                    std::fs::hard_link(self.root.join(src), &p).unwrap();
                    continue;
                }
                _ => {
                    let mut data = Vec::new();
                    let line = format!("L{} {}\n", self.layer, rel.display());
                    let n = if self.rng.gen_ratio(1, 20) {
                        6000
                    } else {
                        self.rng.gen_range(0..60)
                    };
                    for _ in 0..n {
                        data.extend_from_slice(line.as_bytes());
                    }
                    std::fs::write(&p, &data).unwrap();
                    if self.rng.gen_ratio(1, 25) {
                        // Sparse tail: holes must read as zeros everywhere.
                        truncate(&p, 1 << 20).unwrap();
                    }
                    chmod(&p, *FILE_MODES.choose(self.rng).unwrap()).unwrap();
                    self.xattrs(&p);
                    self.files.push(rel.clone());
                }
            }
            let (u, g) = *OWNERS.choose(self.rng).unwrap();
            lchown(&p, u, g).unwrap();
            if std::fs::symlink_metadata(&p).unwrap().is_file() {
                // chown cleared set-id bits; put the chosen mode back.
                chmod(&p, *FILE_MODES.choose(self.rng).unwrap()).unwrap();
            }
        }
    }

    fn xattrs(&mut self, p: &Path) {
        if self.rng.gen_ratio(1, 3) {
            for i in 0..self.rng.gen_range(1..=3) {
                let v = format!("v{}-{}", self.layer, self.rng.gen_range(0..1000));
                set_xattr(p, &format!("user.k{i}"), v.as_bytes()).unwrap();
            }
        }
        if self.rng.gen_ratio(1, 12) {
            set_xattr(p, "trusted.t0", b"trusted value").unwrap();
        }
        if self.rng.gen_ratio(1, 15) {
            // A user xattr named trusted.overlay.esc, stored escaped as
            // the kernel does.
            set_xattr(p, "trusted.overlay.overlay.esc", b"escaped").unwrap();
        }
    }
}

/// A random tree of 2-3 lower layers for `seed`.
fn build_layers(seed: u64) -> Layers {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(2..=3);
    let l = Layers::new(n);
    for i in (0..n).rev() {
        let mut b = LayerBuilder {
            rng: &mut rng,
            root: l.lower(i).to_path_buf(),
            layer: i,
            bottom: i == n - 1,
            files: Vec::new(),
            budget: 45,
        };
        b.fill(Path::new(""), 0);
    }
    l
}

// ---- random workload -------------------------------------------------------------

fn errname(e: &std::io::Error) -> String {
    let n = errno(e);
    let name = match n {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EXDEV => "EXDEV",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENODATA => "ENODATA",
        libc::EBUSY => "EBUSY",
        libc::EIO => "EIO",
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

/// One operation of a workload, with everything needed to replay it.
/// Written data is the tag `<N>` repeated to the length.
#[derive(Clone, Debug)]
enum Op {
    WriteAt(PathBuf, u64, usize, usize),
    Append(PathBuf, usize, usize),
    Truncate(PathBuf, u64),
    Create(PathBuf, usize, usize),
    Unlink(PathBuf),
    Rmdir(PathBuf),
    RmTree(PathBuf),
    Mkdir(PathBuf),
    Rename(PathBuf, PathBuf),
    Exchange(PathBuf, PathBuf),
    Link(PathBuf, PathBuf),
    Symlink(String, PathBuf),
    Chmod(PathBuf, u32),
    Chown(PathBuf, u32, u32),
    SetXattr(PathBuf, &'static str, String),
    RemoveXattr(PathBuf, &'static str),
    Mkfifo(PathBuf),
}

fn sh(p: &Path) -> String {
    let s = p.display().to_string();
    if s.is_empty() { ".".into() } else { s }
}

fn tagged(tag: usize, len: usize) -> Vec<u8> {
    format!("<{tag}>")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

impl Op {
    fn apply(&self, mnt: &Path) -> std::io::Result<()> {
        let p = |r: &Path| mnt.join(r);
        match self {
            Op::WriteAt(f, off, len, tag) => {
                let data = tagged(*tag, *len);
                open_nb(std::fs::OpenOptions::new().write(true), &p(f))
                    .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &data, *off))
            }
            Op::Append(f, len, tag) => open_nb(std::fs::OpenOptions::new().append(true), &p(f))
                .and_then(|mut f| f.write_all(&tagged(*tag, *len))),
            Op::Truncate(f, len) => truncate(&p(f), *len),
            Op::Create(f, len, tag) => write_file(&p(f), &tagged(*tag, *len)),
            Op::Unlink(f) => std::fs::remove_file(p(f)),
            Op::Rmdir(d) => std::fs::remove_dir(p(d)),
            Op::RmTree(d) => std::fs::remove_dir_all(p(d)),
            Op::Mkdir(d) => std::fs::create_dir(p(d)),
            Op::Rename(a, b) => std::fs::rename(p(a), p(b)),
            Op::Exchange(a, b) => renameat2(&p(a), &p(b), RENAME_EXCHANGE),
            Op::Link(a, b) => std::fs::hard_link(p(a), p(b)),
            Op::Symlink(t, l) => std::os::unix::fs::symlink(t, p(l)),
            Op::Chmod(f, m) => chmod(&p(f), *m),
            Op::Chown(f, u, g) => lchown(&p(f), *u, *g),
            Op::SetXattr(f, n, v) => set_xattr(&p(f), n, v.as_bytes()),
            Op::RemoveXattr(f, n) => remove_xattr(&p(f), n),
            Op::Mkfifo(f) => mknod(&p(f), libc::S_IFIFO | 0o640, 0),
        }
    }

    /// The operation as a shell command run in the mount point.
    fn shell(&self) -> String {
        match self {
            Op::WriteAt(f, off, len, tag) => format!(
                "printf '<{tag}>%.0s' $(seq {len}) | head -c {len} | dd of={} bs=1 seek={off} conv=notrunc status=none",
                sh(f)
            ),
            Op::Append(f, len, tag) => {
                format!(
                    "printf '<{tag}>%.0s' $(seq {len}) | head -c {len} >> {}",
                    sh(f)
                )
            }
            Op::Truncate(f, len) => format!("truncate -s {len} {}", sh(f)),
            Op::Create(f, len, tag) => {
                format!(
                    "printf '<{tag}>%.0s' $(seq {len}) | head -c {len} > {}",
                    sh(f)
                )
            }
            Op::Unlink(f) => format!("rm {}", sh(f)),
            Op::Rmdir(d) => format!("rmdir {}", sh(d)),
            Op::RmTree(d) => format!("rm -r {}", sh(d)),
            Op::Mkdir(d) => format!("mkdir {}", sh(d)),
            Op::Rename(a, b) => format!("mv -T {} {}  # rename(2)", sh(a), sh(b)),
            Op::Exchange(a, b) => {
                format!("mv --exchange {} {}  # renameat2 EXCHANGE", sh(a), sh(b))
            }
            Op::Link(a, b) => format!("ln {} {}", sh(a), sh(b)),
            Op::Symlink(t, l) => format!("ln -s {t} {}", sh(l)),
            Op::Chmod(f, m) => format!("chmod {m:o} {}", sh(f)),
            Op::Chown(f, u, g) => format!("chown -h {u}:{g} {}", sh(f)),
            Op::SetXattr(f, n, v) => format!("setfattr -h -n {n} -v {v} {}", sh(f)),
            Op::RemoveXattr(f, n) => format!("setfattr -h -x {n} {}", sh(f)),
            Op::Mkfifo(f) => format!("mkfifo -m 640 {}", sh(f)),
        }
    }
}

/// One entry of the current view: path (relative), type, link count.
#[derive(Clone)]
struct Ent {
    rel: PathBuf,
    kind: char,
    nlink: u64,
}

fn listing(root: &Path) -> Vec<Ent> {
    let mut out = vec![Ent {
        rel: PathBuf::new(),
        kind: 'd',
        nlink: 1,
    }];
    let mut i = 0;
    while i < out.len() {
        if out[i].kind == 'd' {
            let dir = root.join(&out[i].rel);
            let mut names: Vec<_> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
                Err(_) => Vec::new(),
            };
            names.sort();
            for n in names {
                let rel = out[i].rel.join(&n);
                if let Ok(md) = lstat(&root.join(&rel)) {
                    out.push(Ent {
                        rel,
                        kind: kind_char(md.file_type()),
                        nlink: md.nlink(),
                    });
                }
            }
        }
        i += 1;
    }
    out
}

/// Picks random operations on the current view (the choice depends only
/// on the seed and on what the mount shows, so a seed replays).
struct Workload {
    rng: SmallRng,
    step: usize,
    /// Names removed so far (mkdir and create over them make opaque dirs
    /// and replace whiteouts).
    deleted: Vec<PathBuf>,
    /// Successful renames, for "rename back".
    renames: Vec<(PathBuf, PathBuf)>,
}

impl Workload {
    fn len(&mut self) -> usize {
        if self.rng.gen_ratio(1, 10) {
            self.rng.gen_range(5000..70000)
        } else {
            self.rng.gen_range(1..400)
        }
    }

    /// A name for a new entry in `dir`: from the shared pool (often taken,
    /// or a deleted lower name) or a fresh one.
    fn new_name(&mut self, dir: &Path) -> PathBuf {
        if self.rng.gen_ratio(3, 5) {
            dir.join(POOL.choose(&mut self.rng).unwrap())
        } else {
            dir.join(format!("n{}", self.rng.gen_range(0..6)))
        }
    }

    fn pick(&mut self, ents: &[Ent], f: impl Fn(&Ent) -> bool) -> Option<PathBuf> {
        let c: Vec<&Ent> = ents.iter().filter(|e| f(e)).collect();
        c.choose(&mut self.rng).map(|e| e.rel.clone())
    }

    /// The next operation, or None when the roll found no candidate.
    fn next(&mut self, ents: &[Ent]) -> Option<Op> {
        let file = |e: &Ent| e.kind == 'f';
        let nondir = |e: &Ent| e.kind != 'd';
        let dir = |e: &Ent| e.kind == 'd';
        let sub = |e: &Ent| e.kind == 'd' && !e.rel.as_os_str().is_empty();
        let linked = |e: &Ent| e.kind == 'f' && e.nlink > 1;
        let fd = |e: &Ent| e.kind == 'f' || e.kind == 'd';
        let tag = self.step;
        let op = match self.rng.gen_range(0..125) {
            // Write in place, possibly past the end.
            0..=9 => {
                let f = self.pick(ents, file)?;
                Op::WriteAt(f, self.rng.gen_range(0..5000), self.len(), tag)
            }
            // Write through one name of a hard-linked file.
            10..=14 => {
                let f = self.pick(ents, linked)?;
                Op::WriteAt(f, self.rng.gen_range(0..5000), self.len(), tag)
            }
            15..=20 => {
                let f = self.pick(ents, file)?;
                Op::Append(f, self.len(), tag)
            }
            21..=25 => {
                let f = self.pick(ents, file)?;
                let len = if self.rng.gen_bool(0.5) {
                    0
                } else {
                    self.rng.gen_range(0..9000)
                };
                Op::Truncate(f, len)
            }
            // Create (or overwrite) a file.
            26..=33 => {
                let d = self.pick(ents, dir)?;
                let f = self.new_name(&d);
                Op::Create(f, self.len(), tag)
            }
            34..=41 => Op::Unlink(self.pick(ents, nondir)?),
            // Remove a name of a hard-linked file.
            42..=44 => Op::Unlink(self.pick(ents, linked)?),
            45..=47 => Op::Rmdir(self.pick(ents, sub)?),
            // Remove a small subtree (big ones would leave little to work on).
            48..=51 => {
                let small = |e: &Ent| {
                    sub(e) && ents.iter().filter(|x| x.rel.starts_with(&e.rel)).count() <= 8
                };
                Op::RmTree(self.pick(ents, small)?)
            }
            // mkdir, half of the time over a deleted name (an opaque
            // directory over a whiteout).
            52..=59 => {
                if self.rng.gen_bool(0.5) && !self.deleted.is_empty() {
                    Op::Mkdir(self.deleted.choose(&mut self.rng).unwrap().clone())
                } else {
                    let d = self.pick(ents, dir)?;
                    Op::Mkdir(self.new_name(&d))
                }
            }
            // Rename a non-directory, or a directory (with lower content:
            // a redirect): same dir or into another one, maybe over an
            // existing name.
            60..=67 => {
                let f = self.pick(ents, nondir)?;
                self.rename_to_somewhere(ents, f)?
            }
            68..=77 => {
                let d = self.pick(ents, sub)?;
                self.rename_to_somewhere(ents, d)?
            }
            78..=82 => {
                let (from, to) = self.renames.pop()?;
                Op::Rename(to, from)
            }
            83..=84 => {
                let a = self.pick(ents, sub)?;
                let b = self.pick(ents, |e| !e.rel.as_os_str().is_empty())?;
                Op::Exchange(a, b)
            }
            85..=91 => {
                let f = self.pick(ents, |e| e.kind == 'f' || e.kind == 'l')?;
                let d = self.pick(ents, dir)?;
                Op::Link(f, self.new_name(&d))
            }
            92..=95 => {
                let d = self.pick(ents, dir)?;
                Op::Symlink(format!("t{tag}/../x"), self.new_name(&d))
            }
            96..=99 => {
                let f = self.pick(ents, |e| e.kind != 'l')?;
                let is_dir = lstat_kind(ents, &f) == 'd';
                let modes = if is_dir { DIR_MODES } else { FILE_MODES };
                Op::Chmod(f, *modes.choose(&mut self.rng).unwrap())
            }
            100..=103 => {
                let f = self.pick(ents, |_| true)?;
                let (u, g) = *OWNERS.choose(&mut self.rng).unwrap();
                Op::Chown(f, u, g)
            }
            104..=110 => {
                let f = self.pick(ents, fd)?;
                let n = [
                    "user.k0",
                    "user.k1",
                    "user.w",
                    "trusted.t0",
                    "trusted.overlay.esc",
                ];
                Op::SetXattr(f, n.choose(&mut self.rng).unwrap(), format!("s{tag}"))
            }
            111..=115 => {
                let f = self.pick(ents, fd)?;
                let n = ["user.k0", "user.k1", "user.k2", "user.w", "trusted.t0"];
                Op::RemoveXattr(f, n.choose(&mut self.rng).unwrap())
            }
            116..=118 => {
                let d = self.pick(ents, dir)?;
                Op::Mkfifo(self.new_name(&d))
            }
            // Create a file over a deleted name (replaces a whiteout).
            _ => {
                let f = self.deleted.choose(&mut self.rng)?.clone();
                Op::Create(f, self.len(), tag)
            }
        };
        Some(op)
    }

    fn rename_to_somewhere(&mut self, ents: &[Ent], src: PathBuf) -> Option<Op> {
        let to = if self.rng.gen_bool(0.4) {
            self.new_name(src.parent().unwrap_or(Path::new("")))
        } else {
            // Into another directory, not below itself.
            let d = self.pick(ents, |d| d.kind == 'd' && !d.rel.starts_with(&src))?;
            if self.rng.gen_bool(0.5) {
                d.join(src.file_name().unwrap())
            } else {
                self.new_name(&d)
            }
        };
        (to != src).then_some(Op::Rename(src, to))
    }

    /// Bookkeeping after an operation succeeded.
    fn done(&mut self, op: &Op) {
        match op {
            Op::Unlink(p) | Op::Rmdir(p) | Op::RmTree(p) => self.deleted.push(p.clone()),
            Op::Rename(a, b) => {
                self.deleted.push(a.clone());
                self.renames.push((a.clone(), b.clone()));
            }
            _ => {}
        }
    }
}

fn lstat_kind(ents: &[Ent], rel: &Path) -> char {
    ents.iter()
        .find(|e| e.rel == rel)
        .map(|e| e.kind)
        .unwrap_or('?')
}

/// A workload that was run: each operation with its result.
#[derive(Clone, Default)]
struct OpLog(Vec<(usize, Op, String)>);

impl OpLog {
    fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(i, op, r)| format!("{i:4}  {}  # {r}", op.shell()))
            .collect()
    }

    fn ops(&self) -> Vec<Op> {
        self.0.iter().map(|(_, op, _)| op.clone()).collect()
    }
}

fn apply_logged(mnt: &Path, step: usize, op: Op, log: &mut OpLog) -> bool {
    let r = op.apply(mnt);
    let res = match &r {
        Ok(()) => "ok".to_string(),
        Err(e) => errname(e),
    };
    log.0.push((step, op, res));
    r.is_ok()
}

/// Runs `ops` random operations for `seed` through the mount at `mnt`.
fn run_workload(mnt: &Path, seed: u64, ops: usize) -> OpLog {
    let mut w = Workload {
        rng: SmallRng::seed_from_u64(seed ^ 0x5eed_f0b5),
        step: 0,
        deleted: Vec::new(),
        renames: Vec::new(),
    };
    let mut log = OpLog::default();
    for step in 0..ops {
        w.step = step;
        let ents = listing(mnt);
        if let Some(op) = w.next(&ents)
            && apply_logged(mnt, step, op.clone(), &mut log)
        {
            w.done(&op);
        }
    }
    log
}

/// Replays recorded operations (for minimizing a failure), with `walk` after
/// the same listings as the random run (plyfs's state depends on which
/// nodes it knows and how it learned about them).
fn replay(mnt: &Path, ops: &[Op], walk: bool) -> OpLog {
    let mut log = OpLog::default();
    for (i, op) in ops.iter().enumerate() {
        if walk {
            listing(mnt);
        }
        apply_logged(mnt, i, op.clone(), &mut log);
    }
    log
}

// ---- cases -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Plyfs,
    Kernel,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Plyfs => Side::Kernel,
            Side::Kernel => Side::Plyfs,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Plyfs => "plyfs",
            Side::Kernel => "kernel",
        }
    }
}

enum Guard {
    Plyfs(PlyfsMount),
    /// Unmounted when dropped.
    Kernel {
        _mount: KernelMount,
    },
}

fn mount_side(l: &Layers, side: Side) -> Guard {
    match side {
        Side::Plyfs => Guard::Plyfs(l.mount()),
        Side::Kernel => Guard::Kernel {
            _mount: mount_kernel(l),
        },
    }
}

/// What a writer does in its session.
#[derive(Clone)]
enum Work {
    /// Only look.
    Nothing,
    /// `ops` random operations for `seed`.
    Random(u64, usize),
    /// Recorded operations (minimizing), with the same listings before
    /// each as a random run.
    Replay(Vec<Op>),
    /// Fixed operations, without listings.
    Direct(Vec<Op>),
}

/// Mounts `side`, runs `work`, and returns the op log and a view taken
/// before unmounting.
fn session(l: &Layers, side: Side, work: &Work) -> (OpLog, View) {
    let g = mount_side(l, side);
    let log = match work {
        Work::Nothing => OpLog::default(),
        Work::Random(seed, ops) => run_workload(&l.mnt, *seed, *ops),
        Work::Replay(ops) => replay(&l.mnt, ops, true),
        Work::Direct(ops) => replay(&l.mnt, ops, false),
    };
    let v = view(&l.mnt);
    if let Guard::Plyfs(m) = g {
        // A clean exit: plyfs finishes its work-dir cleanup on unmount.
        let st = m.unmount();
        assert!(st.is_some_and(|s| s.success()), "plyfs exit status {st:?}");
    }
    (log, v)
}

/// st_ino values that differ between two plyfs views of the same tree.
fn ino_changes(a: &View, b: &View, an: &str, bn: &str) -> String {
    let mut out = String::new();
    for (k, i) in &a.inos {
        if let Some(j) = b.inos.get(k)
            && i != j
        {
            out += &format!("st_ino of /{} changed: {an} {i}, {bn} {j}\n", show(k));
        }
    }
    out
}

/// One seed: `writer` runs the workload, then the other implementation,
/// plyfs again and the kernel again read the same directories; then the
/// upper layer is rotated below a fresh one and both read it.
#[derive(Clone, Copy, Debug)]
struct Case {
    seed: u64,
    writer: Side,
    want: &'static [Aspect],
}

fn one_way_case(c: Case, work: &Work) -> (Report, OpLog) {
    let Case { seed, writer, want } = c;
    let mut l = build_layers(seed);
    let reader = writer.other();
    let ops = match work {
        Work::Random(_, n) => *n,
        Work::Replay(v) | Work::Direct(v) => v.len(),
        Work::Nothing => 0,
    };
    let mut rep = Report::new(
        format!(
            "{} writes, {} reads: PLYFS_CROSS_SEED={seed} PLYFS_CROSS_OPS={ops} ({} lowers)",
            writer.name(),
            reader.name(),
            l.lowers.len()
        ),
        want,
    );
    let (w, r) = (writer.name(), reader.name());
    let (log, first) = session(&l, writer, work);
    if std::env::var_os("PLYFS_CROSS_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: {} entries\n{}",
            first.snap.len(),
            log.lines().join("\n")
        );
    }
    rep.check_log(Aspect::Cross, &format!("{w} workload"), &log.lines());
    rep.check(
        Aspect::Cross,
        &format!("{w} view"),
        ino_consistency(&first, w),
    );
    // The kernel's own live view is left out: after some of its own renames
    // and links it reports d_ino != st_ino until remounted (not plyfs's
    // business). Every plyfs view, and the kernel's view of what plyfs
    // wrote (which needs plyfs's `overlay.impure` marks), must agree.
    if writer == Side::Plyfs {
        rep.check(
            Aspect::Dino,
            &format!("{w} view"),
            dino_mismatches(&first, w),
        );
    }
    let (_, other) = session(&l, reader, &Work::Nothing);
    rep.check(
        Aspect::Cross,
        &format!("{r} mount of the layers {w} wrote"),
        diff(&first.snap, &other.snap, w, r),
    );
    rep.check(
        Aspect::Links,
        &format!("{r} mount of the layers {w} wrote"),
        link_diff(&first, &other, w, r),
    );
    rep.check(
        Aspect::Cross,
        &format!("{r} view"),
        ino_consistency(&other, r),
    );
    rep.check(
        Aspect::Dino,
        &format!("{r} view"),
        dino_mismatches(&other, r),
    );
    // plyfs once more (after the kernel mount in both directions): the same
    // tree, and the same st_ino as plyfs's first mount.
    let ply = if writer == Side::Plyfs {
        &first
    } else {
        &other
    };
    let (_, again) = session(&l, Side::Plyfs, &Work::Nothing);
    rep.check(
        Aspect::Remount,
        "plyfs remount",
        diff(&ply.snap, &again.snap, "plyfs", "plyfs remount"),
    );
    rep.check(
        Aspect::Inodes,
        "st_ino after a plyfs remount",
        compare(ply, &again, "plyfs", "plyfs remount")
            + &ino_changes(ply, &again, "plyfs", "plyfs remount"),
    );
    rep.check(
        Aspect::Dino,
        "plyfs remount",
        dino_mismatches(&again, "plyfs remount"),
    );
    let (_, k2) = session(&l, Side::Kernel, &Work::Nothing);
    rep.check(
        Aspect::Dino,
        "kernel remount",
        dino_mismatches(&k2, "kernel remount"),
    );
    rep.check(
        Aspect::Remount,
        "kernel remount after plyfs mounts",
        diff(&first.snap, &k2.snap, w, "kernel remount"),
    );
    rotate(&mut l);
    let (_, rk) = session(&l, Side::Kernel, &Work::Nothing);
    rep.check(
        Aspect::RotatedKernel,
        "kernel, upper rotated into a lower layer",
        diff(&first.snap, &rk.snap, w, "kernel rotated"),
    );
    let (_, rp) = session(&l, Side::Plyfs, &Work::Nothing);
    rep.check(
        Aspect::RotatedPlyfs,
        "plyfs, upper rotated into a lower layer",
        diff(&first.snap, &rp.snap, w, "plyfs rotated"),
    );
    keep_if_asked(l);
    (rep, log)
}

/// With `PLYFS_CROSS_MINIMIZE` set, shrinks a failing workload to a
/// minimal one that fails the same first check, and prints it.
fn minimize_if_asked(c: Case, rep: &Report, log: &OpLog) {
    if std::env::var_os("PLYFS_CROSS_MINIMIZE").is_none() || rep.findings.is_empty() {
        return;
    }
    let title = rep.titles()[0].clone();
    let quiet = |ops: &[Op]| {
        let (r, _) = one_way_case(c, &Work::Replay(ops.to_vec()));
        r.titles().contains(&title)
    };
    let min = ddmin(log.ops(), &mut |o: &[Op]| quiet(o));
    let (r, l) = one_way_case(c, &Work::Replay(min));
    eprintln!(
        "==== minimized (seed {}, {} writes, same layers):\n{}\n{}",
        c.seed,
        c.writer.name(),
        l.lines().join("\n"),
        r.findings.join("")
    );
}

fn run_seeds(writer: Side, want: &'static [Aspect]) {
    let ops = ops_len();
    let mut failures = Vec::new();
    for seed in seeds() {
        let c = Case { seed, writer, want };
        let (rep, log) = one_way_case(c, &Work::Random(seed, ops));
        minimize_if_asked(c, &rep, &log);
        if let Some(t) = rep.text(&log.lines()) {
            failures.push(t);
        }
    }
    finish(failures);
}

// ---- direction A: plyfs writes, the kernel reads -----------------------------------

/// plyfs runs the workload; the kernel shows the same tree and hard links;
/// so do a plyfs remount and a kernel remount, and both with the upper
/// rotated into a lower layer.
#[test]
fn plyfs_writes_kernel_reads() {
    if !require_root("plyfs_writes_kernel_reads") {
        return;
    }
    run_seeds(
        Side::Plyfs,
        &[
            Aspect::Cross,
            Aspect::Links,
            Aspect::Remount,
            Aspect::RotatedKernel,
            Aspect::RotatedPlyfs,
        ],
    );
}

/// After a plyfs workload (and a kernel mount), a plyfs remount reports
/// the same st_ino for every path, so the same hard links, and d_ino =
/// st_ino everywhere (also for the kernel on plyfs's layers).
#[test]
fn plyfs_writes_st_ino_stable_across_remount() {
    if !require_root("plyfs_writes_st_ino_stable_across_remount") {
        return;
    }
    run_seeds(Side::Plyfs, &[Aspect::Inodes, Aspect::Dino]);
}

// ---- direction B: the kernel writes, plyfs reads -----------------------------------

/// The kernel (redirect_dir=on) runs the workload; plyfs shows the same
/// tree and hard links, with stable st_ino and d_ino = st_ino across its
/// remounts, and leaves the layers so that the kernel still shows that
/// tree; both show it with the upper rotated into a lower layer.
#[test]
fn kernel_writes_plyfs_reads() {
    if !require_root("kernel_writes_plyfs_reads") {
        return;
    }
    run_seeds(
        Side::Kernel,
        &[
            Aspect::Cross,
            Aspect::Links,
            Aspect::Remount,
            Aspect::Inodes,
            Aspect::Dino,
            Aspect::RotatedKernel,
            Aspect::RotatedPlyfs,
        ],
    );
}

// ---- both write, in turns ------------------------------------------------------------

/// plyfs and the kernel take turns writing the same layers, each phase on
/// top of what the other left (redirects of redirects, whiteouts and opaque
/// dirs of either); after every phase the other one shows the same tree.
/// With `rotate`, each phase starts on a fresh upper with the previous
/// upper rotated into the top lower layer (a layer per phase, as image
/// builds stack them).
fn alternating(rotate_each: bool, want: &'static [Aspect]) {
    let ops = ops_len();
    let mut failures = Vec::new();
    for seed in seeds() {
        let mut l = build_layers(seed);
        let mut rep = Report::new(
            format!(
                "alternating writers{}: PLYFS_CROSS_SEED={seed} PLYFS_CROSS_OPS={ops} ({} lowers)",
                if rotate_each { ", rotating" } else { "" },
                l.lowers.len()
            ),
            want,
        );
        let mut log = Vec::new();
        for phase in 0..4u64 {
            let writer = if phase % 2 == 0 {
                Side::Plyfs
            } else {
                Side::Kernel
            };
            if rotate_each && phase > 0 {
                rotate(&mut l);
                log.push("---- upper rotated into a lower layer".to_string());
            }
            let (w, r) = (writer.name(), writer.other().name());
            log.push(format!("---- phase {phase}: {w} writes"));
            let work = Work::Random(seed + 1000 * phase, ops / 2);
            let (plog, mine) = session(&l, writer, &work);
            let plog = plog.lines();
            rep.check_log(
                Aspect::Cross,
                &format!("phase {phase}: {w} workload"),
                &plog,
            );
            log.extend(plog);
            let (_, theirs) = session(&l, writer.other(), &Work::Nothing);
            let what = format!("phase {phase}: {r} after {w} wrote");
            rep.check(Aspect::Cross, &what, diff(&mine.snap, &theirs.snap, w, r));
            rep.check(Aspect::Links, &what, link_diff(&mine, &theirs, w, r));
        }
        if let Some(t) = rep.text(&log) {
            failures.push(t);
        }
        keep_if_asked(l);
    }
    finish(failures);
}

#[test]
fn alternating_writers() {
    if !require_root("alternating_writers") {
        return;
    }
    alternating(false, &[Aspect::Cross, Aspect::Links]);
}

#[test]
fn alternating_writers_layer_per_phase() {
    if !require_root("alternating_writers_layer_per_phase") {
        return;
    }
    alternating(true, &[Aspect::Cross]);
}

// ---- fixed scenarios -------------------------------------------------------------

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The paths of a view (sorted, lossy), for exact expectations.
fn paths(v: &View) -> Vec<String> {
    v.snap.keys().map(|k| show(k)).collect()
}

/// Runs `ops` through `writer` (each must succeed; names are looked up
/// directly, no listing first) and returns its view.
fn write_with(l: &Layers, writer: Side, ops: &[Op]) -> View {
    let (log, v) = session(l, writer, &Work::Direct(ops.to_vec()));
    let failed: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| !l.ends_with("# ok"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        writer.name(),
        failed.join("\n")
    );
    v
}

/// Asserts that `b` shows the same tree and hard links as `a`.
fn assert_same(a: &View, b: &View, an: &str, bn: &str) {
    let d = compare(a, b, an, bn);
    assert!(d.is_empty(), "{an} vs {bn}:\n{d}");
}

/// Kernel xattr whiteouts in a lower layer: a zero-size file with
/// `trusted.overlay.whiteout` in a directory marked
/// `trusted.overlay.opaque=x` (not opaque: it only says "holds xattr
/// whiteouts"), over a file and over a directory of the layer below.
fn xattr_whiteout_layers() -> Layers {
    let l = Layers::new(2);
    let (top, bottom) = (l.lower(0), l.lower(1));
    write(&bottom.join("x/gone"), b"gone");
    write(&bottom.join("x/keep"), b"keep");
    write(&bottom.join("x/sub/deep"), b"deep");
    write(&bottom.join("y/dirgone/f"), b"f");
    write(&bottom.join("y/stay"), b"stay");
    for d in ["x", "y"] {
        std::fs::create_dir(top.join(d)).unwrap();
        set_xattr(&top.join(d), "trusted.overlay.opaque", b"x").unwrap();
    }
    for w in ["x/gone", "y/dirgone"] {
        write(&top.join(w), b"");
        set_xattr(&top.join(w), "trusted.overlay.whiteout", b"").unwrap();
    }
    write(&top.join("x/new"), b"new");
    l
}

fn xattr_whiteout_ops() -> Vec<Op> {
    vec![
        // A file over the xattr-whited-out file, a dir over the
        // xattr-whited-out dir (the lower one's content stays hidden).
        Op::Create(p("x/gone"), 5, 1),
        Op::Mkdir(p("y/dirgone")),
        Op::Create(p("y/dirgone/f2"), 3, 2),
        Op::Unlink(p("x/keep")),
        // A dir with xattr whiteouts renamed (a redirect), and a new dir
        // at its old name (opaque).
        Op::Rename(p("x"), p("x2")),
        Op::Mkdir(p("x")),
        Op::Create(p("x2/sub/deep2"), 4, 3),
    ]
}

fn xattr_whiteouts(writer: Side) {
    let l = xattr_whiteout_layers();
    let (_, k) = session(&l, Side::Kernel, &Work::Nothing);
    let (_, ply) = session(&l, Side::Plyfs, &Work::Nothing);
    assert_eq!(
        paths(&k),
        ["x", "x/keep", "x/new", "x/sub", "x/sub/deep", "y", "y/stay"],
        "kernel before"
    );
    assert_same(&k, &ply, "kernel", "plyfs");
    let mine = write_with(&l, writer, &xattr_whiteout_ops());
    assert_eq!(
        paths(&mine),
        [
            "x",
            "x2",
            "x2/gone",
            "x2/new",
            "x2/sub",
            "x2/sub/deep",
            "x2/sub/deep2",
            "y",
            "y/dirgone",
            "y/dirgone/f2",
            "y/stay"
        ],
        "{} after the ops",
        writer.name()
    );
    let (_, theirs) = session(&l, writer.other(), &Work::Nothing);
    assert_same(&mine, &theirs, writer.name(), writer.other().name());
}

#[test]
fn xattr_whiteouts_plyfs_writes_kernel_reads() {
    if !require_root("xattr_whiteouts_plyfs_writes_kernel_reads") {
        return;
    }
    xattr_whiteouts(Side::Plyfs);
}

#[test]
fn xattr_whiteouts_kernel_writes_plyfs_reads() {
    if !require_root("xattr_whiteouts_kernel_writes_plyfs_reads") {
        return;
    }
    xattr_whiteouts(Side::Kernel);
}

/// A layer with directories to move around (no hard links).
fn rename_layers() -> Layers {
    let l = Layers::new(2);
    let (top, bottom) = (l.lower(0), l.lower(1));
    write(&bottom.join("d/a"), b"a");
    write(&bottom.join("d/sub/b"), b"b");
    write(&top.join("d/keep"), b"keep");
    write(&top.join("d/sub/deeper/c"), b"c");
    write(&bottom.join("e/f"), b"f");
    write(&top.join("g/h"), b"h");
    set_xattr(&top.join("d/sub"), "user.tag", b"sub").unwrap();
    l
}

/// Directory renames with lower content: redirects, a redirect inside a
/// redirected dir, a new (opaque) dir at a vacated name.
fn rename_ops() -> Vec<Op> {
    vec![
        Op::Rename(p("d"), p("d2")),
        Op::Rename(p("d2/sub"), p("top")),
        Op::Mkdir(p("d")),
        Op::Create(p("d/new"), 3, 1),
        Op::Rename(p("e"), p("d2/e")),
        Op::Unlink(p("d2/a")),
        Op::Rename(p("g"), p("top/g2")),
        Op::Create(p("top/deeper/c2"), 2, 2),
    ]
}

/// Renames on top of a rotated upper: moving dirs whose content comes
/// from a lower layer that itself has redirects, and one back to its
/// original name.
fn rotated_rename_ops() -> Vec<Op> {
    vec![
        Op::Rename(p("d2"), p("d3")),
        Op::Rename(p("top/deeper"), p("d3/deeper2")),
        Op::Rename(p("d3/e"), p("e")),
        Op::Rename(p("top"), p("d/top")),
        Op::Create(p("d3/deeper2/c3"), 2, 3),
    ]
}

const ROTATED_1: &[&str] = &[
    "d",
    "d/new",
    "d2",
    "d2/e",
    "d2/e/f",
    "d2/keep",
    "top",
    "top/b",
    "top/deeper",
    "top/deeper/c",
    "top/deeper/c2",
    "top/g2",
    "top/g2/h",
];

const ROTATED_2: &[&str] = &[
    "d",
    "d/new",
    "d/top",
    "d/top/b",
    "d/top/g2",
    "d/top/g2/h",
    "d3",
    "d3/deeper2",
    "d3/deeper2/c",
    "d3/deeper2/c2",
    "d3/deeper2/c3",
    "d3/keep",
    "e",
    "e/f",
];

/// `writer` renames dirs; the upper is rotated into a lower layer; the
/// other implementation reads it; `writer` renames again on top; the other
/// implementation reads that. With `writer_rereads`, the writer's own
/// views of the rotated stack are compared too.
fn rotated_upper(writer: Side, writer_rereads: bool) {
    let (w, r) = (writer.name(), writer.other().name());
    let mut l = rename_layers();
    let mine = write_with(&l, writer, &rename_ops());
    assert_eq!(paths(&mine), ROTATED_1, "{w} before rotating");
    rotate(&mut l);
    let (_, theirs) = session(&l, writer.other(), &Work::Nothing);
    assert_same(&mine, &theirs, w, &format!("{r} rotated"));
    if writer_rereads {
        let (_, again) = session(&l, writer, &Work::Nothing);
        assert_same(&mine, &again, w, &format!("{w} rotated"));
    }
    let mine = write_with(&l, writer, &rotated_rename_ops());
    let (_, theirs) = session(&l, writer.other(), &Work::Nothing);
    assert_eq!(paths(&theirs), ROTATED_2, "{r} after {w} renamed on top");
    if writer_rereads {
        assert_same(&mine, &theirs, w, r);
    }
}

/// plyfs renames dirs, its upper becomes a lower layer, plyfs renames
/// more on top; the kernel shows the expected trees, and plyfs the same.
#[test]
fn rotated_upper_plyfs_writes_kernel_reads() {
    if !require_root("rotated_upper_plyfs_writes_kernel_reads") {
        return;
    }
    rotated_upper(Side::Plyfs, true);
}

/// The kernel renames dirs, its upper becomes a lower layer, the kernel
/// renames more on top (a redirect through a redirected lower dir); plyfs
/// shows the same trees.
#[test]
fn rotated_upper_kernel_writes_plyfs_reads() {
    if !require_root("rotated_upper_kernel_writes_plyfs_reads") {
        return;
    }
    rotated_upper(Side::Kernel, true);
}

fn volatile_mark(l: &Layers) -> PathBuf {
    l.work.join("work/incompat/volatile")
}

/// A kernel `volatile` mount leaves `WORKDIR/work/incompat/volatile`, and
/// the kernel refuses to mount those dirs again (its sign that the upper
/// may be inconsistent after a crash). plyfs mounts them anyway: it empties
/// `WORKDIR/work` at start, as it does for its own staging leftovers, which
/// also removes the mark, so the kernel mounts them again afterwards.
#[test]
fn kernel_volatile_leftover() {
    if !require_root("kernel_volatile_leftover") {
        return;
    }
    let l = rename_layers();
    let live = {
        let _k = KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS},volatile", l.options()))
            .unwrap_or_else(|e| panic!("{e}"));
        for op in rename_ops() {
            op.apply(&l.mnt).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        view(&l.mnt)
    };
    assert!(volatile_mark(&l).is_dir(), "kernel left no volatile mark");
    let again = KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS}", l.options()));
    assert!(again.is_err(), "the kernel mounted after a volatile mount");
    drop(again);
    refused_then_cleared(&l);
    let (_, ply) = session(&l, Side::Plyfs, &Work::Nothing);
    assert_same(&live, &ply, "kernel volatile", "plyfs");
    let (_, k) = session(&l, Side::Kernel, &Work::Nothing);
    assert_same(&live, &k, "kernel volatile", "kernel after plyfs");
}

/// Like the kernel, plyfs refuses a work dir with the volatile mark; once
/// it is removed (as containers-storage does before mounting), it mounts.
fn refused_then_cleared(l: &Layers) {
    let err = PlyfsMount::start(&l.mnt, &l.options(), &[])
        .err()
        .expect("plyfs mounted a volatile leftover");
    assert!(err.contains("incompat feature 'volatile'"), "{err}");
    std::fs::remove_dir_all(l.work.join("work/incompat")).unwrap();
}

/// plyfs `volatile` leaves the same mark, so the kernel refuses those dirs
/// too (like after its own volatile mount), and so does plyfs.
#[test]
fn plyfs_volatile_leaves_kernel_mark() {
    if !require_root("plyfs_volatile_leaves_kernel_mark") {
        return;
    }
    let l = rename_layers();
    let live = {
        let m = PlyfsMount::start(&l.mnt, &format!("{},volatile", l.options()), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        for op in rename_ops() {
            op.apply(&l.mnt).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        let v = view(&l.mnt);
        m.unmount();
        v
    };
    assert!(volatile_mark(&l).is_dir(), "plyfs left no volatile mark");
    let k = KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS}", l.options()));
    assert!(
        k.is_err(),
        "the kernel mounted after a plyfs volatile mount"
    );
    drop(k);
    refused_then_cleared(&l);
    let (_, ply) = session(&l, Side::Plyfs, &Work::Nothing);
    assert_same(&live, &ply, "plyfs volatile", "plyfs");
    let (_, k) = session(&l, Side::Kernel, &Work::Nothing);
    assert_same(&live, &k, "plyfs volatile", "kernel after plyfs");
}

// ---- plyfs bugs found by the random tests: minimal reproductions -----------------
//
// All fixed; they stay as regression tests.

fn ino_of(p: &Path) -> u64 {
    lstat(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

fn sorted_names(d: &Path) -> Vec<String> {
    ls(d)
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// A copied-up file is deleted and a new object reuses its upper inode:
/// plyfs keeps mapping that upper inode to the deleted file's (lower)
/// st_ino, so the new object's st_ino changes at the next mount. In shell:
/// `echo x > l0/f; plyfs ...; echo y >> m/f; rm m/f; ln -s t m/s1 ...;
/// stat -c %i m/s*; umount; plyfs ...; stat -c %i m/s*` (one number differs,
/// and equals the lower inode of `f`).
#[test]
fn st_ino_of_recycled_upper_inode() {
    if !require_root("st_ino_of_recycled_upper_inode") {
        return;
    }
    let l = Layers::new(1);
    for i in 0..4 {
        write(&l.lower(0).join(format!("f{i}")), b"lower");
    }
    let before: Vec<(String, u64)> = {
        let m = l.mount();
        for i in 0..4 {
            let f = m.mnt.join(format!("f{i}"));
            Op::Append(f.clone(), 3, i).apply(Path::new("/")).unwrap();
            std::fs::remove_file(&f).unwrap();
        }
        // ext4 hands freed inodes out again soon: some of these reuse the
        // upper inodes of the copies just deleted.
        for i in 0..16 {
            std::os::unix::fs::symlink("t", m.mnt.join(format!("s{i}"))).unwrap();
        }
        let v = ls(&m.mnt)
            .into_iter()
            .map(|n| {
                let i = ino_of(&m.mnt.join(&n));
                (n, i)
            })
            .collect();
        m.unmount();
        v
    };
    let m = l.mount();
    let after: Vec<(String, u64)> = ls(&m.mnt)
        .into_iter()
        .map(|n| {
            let i = ino_of(&m.mnt.join(&n));
            (n, i)
        })
        .collect();
    assert_eq!(before, after, "st_ino before and after remount");
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// A directory with `overlay.redirect` in a lower layer (e.g. a rotated
/// upper) shows its redirected content when looked up by name, but not
/// when its node was first made by a listing of its parent. In shell:
/// `mkdir -p l1/a r/n3/n0; touch l1/a/h; setfattr -n trusted.overlay.redirect
/// -v /a r/n3/n0; plyfs -o lowerdir=r:l1 m; ls m/n3; ls m/n3/n0` (empty;
/// the kernel lists h).
#[test]
fn lower_redirect_after_readdir() {
    if !require_root("lower_redirect_after_readdir") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(1).join("a/h"), b"h");
    std::fs::create_dir_all(l.lower(0).join("n3/n0")).unwrap();
    set_xattr(&l.lower(0).join("n3/n0"), "trusted.overlay.redirect", b"/a").unwrap();
    let kernel = {
        let _k = KernelMount::mount(&l.mnt, &format!("{},{KERNEL_OPTS}", l.options())).unwrap();
        sorted_names(&l.mnt.join("n3"));
        sorted_names(&l.mnt.join("n3/n0"))
    };
    assert_eq!(kernel, ["h"], "kernel");
    let by_name = {
        let _m = l.mount();
        sorted_names(&l.mnt.join("n3/n0"))
    };
    assert_eq!(by_name, ["h"], "plyfs, looked up by name");
    let after_listing = {
        let _m = l.mount();
        sorted_names(&l.mnt.join("n3"));
        sorted_names(&l.mnt.join("n3/n0"))
    };
    assert_eq!(after_listing, ["h"], "plyfs, after listing the parent");
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// Following an absolute redirect, the kernel looks the path up in each
/// lower layer and stops at a layer where an ancestor is an opaque
/// directory, a whiteout or not a directory; plyfs goes on into the layers
/// below and shows content they hide. In shell (the opaque case):
/// `mkdir -p l0/b/a/d l1/b/a/d; touch l0/b/a/d/e l1/b/a/d/hidden;
/// setfattr -n trusted.overlay.opaque -v y l0/b/a; mount -t overlay ...
/// -o lowerdir=l0:l1,...,redirect_dir=on m; mv m/b/a/d m/z; umount m;
/// plyfs ... m; ls m/z` (plyfs: e hidden; kernel: e). Also when plyfs did the
/// `mv` (after a remount).
#[test]
fn redirect_through_cut_off_path() {
    if !require_root("redirect_through_cut_off_path") {
        return;
    }
    let mut wrong = Vec::new();
    for cut in ["opaque", "whiteout", "file"] {
        for writer in [Side::Kernel, Side::Plyfs] {
            // The top layer has a/b/d, the middle one cuts a/b/d off (at
            // a), the bottom one has a/b/d too (hidden).
            let l = Layers::new(3);
            write(&l.lower(0).join("a/b/d/e"), b"e");
            write(&l.lower(2).join("a/b/d/hidden"), b"hidden");
            match cut {
                "opaque" => {
                    std::fs::create_dir(l.lower(1).join("a")).unwrap();
                    set_xattr(&l.lower(1).join("a"), "trusted.overlay.opaque", b"y").unwrap();
                }
                "whiteout" => whiteout(&l.lower(1).join("a")),
                _ => write(&l.lower(1).join("a"), b"file"),
            }
            write_with(&l, writer, &[Op::Rename(p("a/b/d"), p("z"))]);
            for reader in [Side::Kernel, Side::Plyfs] {
                let g = mount_side(&l, reader);
                let names = sorted_names(&l.mnt.join("z"));
                drop(g);
                if names != ["e"] {
                    wrong.push(format!(
                        "{cut}: {} renamed, {} lists z as {names:?}",
                        writer.name(),
                        reader.name()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "expected z = [e]:\n{}", wrong.join("\n"));
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// plyfs maps a copied-up file to its origin's st_ino only where the
/// directory is marked `overlay.impure`; the kernel reads `overlay.origin`
/// of every upper file it looks up (and with a lower hard link and
/// index=off uses the upper inode). After the kernel moves one name of a
/// copied-up lower hard link into a directory it does not mark impure,
/// plyfs reports two st_ino for one file. In shell: `echo x > l0/a/h;
/// ln l0/a/h l0/b/f; plyfs ...; mkdir m/n4; echo y > m/a/h; umount m;
/// mount -t overlay ...; mv m/b/f m/n4/b; umount m; plyfs ...;
/// stat -c %i m/a/h m/n4/b` (two numbers; the kernel shows one).
#[test]
fn st_ino_of_hard_link_moved_by_kernel() {
    if !require_root("st_ino_of_hard_link_moved_by_kernel") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("a/h"), b"old");
    std::fs::create_dir(l.lower(0).join("b")).unwrap();
    std::fs::hard_link(l.lower(0).join("a/h"), l.lower(0).join("b/f")).unwrap();
    write_with(
        &l,
        Side::Plyfs,
        &[Op::Mkdir(p("n4")), Op::Create(p("a/h"), 3, 1)],
    );
    write_with(&l, Side::Kernel, &[Op::Rename(p("b/f"), p("n4/b"))]);
    for side in [Side::Kernel, Side::Plyfs] {
        let g = mount_side(&l, side);
        let (a, b) = (ino_of(&l.mnt.join("a/h")), ino_of(&l.mnt.join("n4/b")));
        drop(g);
        assert_eq!(a, b, "{}: st_ino of a/h and n4/b (one file)", side.name());
    }
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// plyfs's link(2) of a copied-up file into another directory, and its
/// RENAME_EXCHANGE of a merged directory into another one, do not mark
/// the new parent `overlay.impure` (the kernel does; plyfs's plain rename
/// does too). Effects: after a remount plyfs reports the upper inode for
/// the new name and the origin's for the old one (two st_ino for one file),
/// and the kernel reading plyfs's upper reports d_ino != st_ino there. In
/// shell: `mkdir -p l0/d l0/b; echo x > l0/d/f; plyfs ...; ln m/d/f m/b/h;
/// umount m; plyfs ...; stat -c %i m/d/f m/b/h` (two numbers;
/// `getfattr -n trusted.overlay.impure u/b`: missing), and `mkdir -p l0/d
/// l0/p; touch l0/d/f; plyfs ...; mkdir m/p/n4; mv --exchange m/p/n4 m/d;
/// umount m; mount -t overlay ...; ls -i m/p; stat -c %i m/p/n4` (differ).
#[test]
fn impure_mark_on_link_and_exchange() {
    if !require_root("impure_mark_on_link_and_exchange") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/f"), b"x");
    write(&l.lower(0).join("e/g"), b"g");
    std::fs::create_dir_all(l.lower(0).join("b")).unwrap();
    std::fs::create_dir_all(l.lower(0).join("p")).unwrap();
    let live = write_with(
        &l,
        Side::Plyfs,
        &[
            Op::Link(p("d/f"), p("b/h")),
            Op::Mkdir(p("p/n4")),
            Op::Exchange(p("p/n4"), p("e")),
        ],
    );
    let (_, again) = session(&l, Side::Plyfs, &Work::Nothing);
    let (_, kernel) = session(&l, Side::Kernel, &Work::Nothing);
    let ino = |v: &View, k: &str| v.inos[&k.as_bytes().to_vec()];
    assert_eq!(ino(&live, "d/f"), ino(&live, "b/h"), "live");
    let mut wrong = Vec::new();
    if ino(&again, "d/f") != ino(&again, "b/h") {
        wrong.push("plyfs remount: d/f and b/h (one file) have two st_ino\n".to_string());
    }
    wrong.push(dino_mismatches(&kernel, "kernel on plyfs's upper"));
    for d in ["b", "p"] {
        if get_xattr(&l.upper.join(d), "trusted.overlay.impure").is_err() {
            wrong.push(format!("upper/{d} is not marked impure\n"));
        }
    }
    let wrong = wrong.concat();
    assert!(wrong.is_empty(), "{wrong}");
}

/// Regression test (this was a plyfs bug, fixed on main; the text says what
/// went wrong):
/// A lower hard link whose names sit in a renamed (redirected) directory:
/// once plyfs looked both names up, a write through one name copies the
/// file up under the name looked up last only, and the sibling search
/// (which walks the merged view by the lower path) finds no other name.
/// The live mount shows both names with the new data; a remount and the
/// kernel show the written name with its old content (the write is lost
/// there) and the other name with the new one. In shell:
/// `mkdir -p l0/d; echo old > l0/d/a; ln l0/d/a l0/d/e; plyfs ...;
/// mv m/d m/z; stat m/z/a m/z/e; echo new >> m/z/a; umount m` (upper/z
/// holds only e) `; plyfs ...; cat m/z/a` ("old"). With a third name
/// outside (`ln l0/d/a l0/e2`), `stat m/z/a` and a write through e2, z/a is
/// not linked either (old after a remount).
#[test]
fn lower_hard_link_in_renamed_dir() {
    if !require_root("lower_hard_link_in_renamed_dir") {
        return;
    }
    let mut wrong = Vec::new();
    // (names to look up before the write, the name written through)
    for (looked, written) in [(&["z/a", "z/e"][..], "z/a"), (&["z/a"][..], "e2")] {
        let l = Layers::new(1);
        write(&l.lower(0).join("d/a"), b"old");
        for n in ["d/e", "e2"] {
            std::fs::hard_link(l.lower(0).join("d/a"), l.lower(0).join(n)).unwrap();
        }
        let contents = |mnt: &Path| -> Vec<String> {
            ["z/a", "z/e", "e2"]
                .iter()
                .map(|n| String::from_utf8_lossy(&std::fs::read(mnt.join(n)).unwrap()).into_owned())
                .collect()
        };
        let live = {
            let m = l.mount();
            std::fs::rename(m.mnt.join("d"), m.mnt.join("z")).unwrap();
            for n in looked.iter() {
                lstat(&m.mnt.join(n)).unwrap();
            }
            Op::Append(p(written), 3, 9).apply(&m.mnt).unwrap();
            let v = contents(&m.mnt);
            m.unmount();
            v
        };
        let (again, kernel) = {
            let g = mount_side(&l, Side::Plyfs);
            let a = contents(&l.mnt);
            drop(g);
            let g = mount_side(&l, Side::Kernel);
            let k = contents(&l.mnt);
            drop(g);
            (a, k)
        };
        if live != again || live != kernel {
            wrong.push(format!(
                "looked up {looked:?}, wrote {written}: [z/a, z/e, e2] live {live:?}, plyfs remount {again:?}, kernel {kernel:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Following a redirect path through a lower layer, the kernel applies the
/// redirects of the directories on that path in that layer (a rotated upper
/// holds such redirects); plyfs looks the path up literally in the layers
/// below and misses the content. This is what a kernel rename of a
/// subdirectory of a redirected lower directory records. In shell:
/// `mkdir -p l1/d/sub/deeper l0/top/deeper u/x; touch l1/d/sub/deeper/c;
/// setfattr -n trusted.overlay.redirect -v /d/sub l0/top; setfattr -n
/// trusted.overlay.redirect -v /top/deeper u/x; plyfs -o lowerdir=l0:l1,... m;
/// ls m/x` (empty; the kernel lists c).
#[test]
fn redirect_through_redirected_lower_dir() {
    if !require_root("redirect_through_redirected_lower_dir") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(1).join("d/sub/deeper/c"), b"c");
    std::fs::create_dir_all(l.lower(0).join("top/deeper")).unwrap();
    std::fs::create_dir(l.upper.join("x")).unwrap();
    set_xattr(
        &l.lower(0).join("top"),
        "trusted.overlay.redirect",
        b"/d/sub",
    )
    .unwrap();
    set_xattr(
        &l.upper.join("x"),
        "trusted.overlay.redirect",
        b"/top/deeper",
    )
    .unwrap();
    for side in [Side::Kernel, Side::Plyfs] {
        let g = mount_side(&l, side);
        let names = sorted_names(&l.mnt.join("x"));
        drop(g);
        assert_eq!(names, ["c"], "{} lists x", side.name());
    }
}

/// The kernel drops `overlay.impure` from a directory when none of its
/// entries needs a d_ino fix-up in the kernel's numbering, which uses the
/// upper inode for a copied-up lower hard link (index=off). plyfs numbers
/// such a file by its origin, but trusts the missing mark in listings: its
/// readdir d_ino (and readdirplus attributes) give the upper inode, lookups
/// the origin's, so one file shows two st_ino. In shell: `mkdir -p l0/c;
/// echo x > l0/c/f; ln l0/c/f l0/e; plyfs ...; mkdir m/x; ln m/c/f m/x/h;
/// umount m; mount -t overlay ...; ls m/x; umount m` (u/x loses
/// trusted.overlay.impure) `; plyfs ...; ls -i m/x; stat -c %i m/x/h m/c/f`
/// (d_ino differs from st_ino; after `ls -l m m/c; ls -l m/x` even st_ino of
/// m/x/h and m/c/f differ).
#[test]
fn st_ino_after_kernel_drops_impure() {
    if !require_root("st_ino_after_kernel_drops_impure") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("c/f"), b"x");
    std::fs::hard_link(l.lower(0).join("c/f"), l.lower(0).join("e")).unwrap();
    write_with(
        &l,
        Side::Plyfs,
        &[Op::Mkdir(p("x")), Op::Link(p("c/f"), p("x/h"))],
    );
    {
        let _k = mount_kernel(&l);
        sorted_names(&l.mnt.join("x"));
    }
    assert!(
        get_xattr(&l.upper.join("x"), "trusted.overlay.impure").is_err(),
        "the kernel kept the impure mark (this repro relies on it dropping it)"
    );
    let (_, v) = session(&l, Side::Plyfs, &Work::Nothing);
    let mut wrong = dino_mismatches(&v, "plyfs");
    let ino = |k: &str| v.inos[&k.as_bytes().to_vec()];
    if ino("x/h") != ino("c/f") || ino("e") != ino("c/f") {
        wrong += &format!(
            "one file, several st_ino: x/h {}, c/f {}, e {}\n",
            ino("x/h"),
            ino("c/f"),
            ino("e")
        );
    }
    assert!(wrong.is_empty(), "{wrong}");
}
