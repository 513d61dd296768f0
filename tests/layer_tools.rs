//! `plyfs diff` and `plyfs apply`, end to end.
//!
//! - Random change sets made through a plyfs mount (`redirect_dir=on`, so
//!   directory renames leave redirects) are written with `plyfs diff`; the
//!   layer must be deterministic and, applied three ways, give back the
//!   mount's merged view: by `plyfs apply` under kernel overlayfs, by an
//!   independent OCI applier (GNU tar extraction plus whiteout handling
//!   written here) over a copy of the lower, and by `plyfs apply --oci`
//!   under a read-only plyfs mount.
//! - Kernel-written uppers (redirects, metacopy), hostile archives, a
//!   10,000-level tree, rootless markers and id maps, and podman (`podman
//!   diff` and `podman export` of a container whose storage uses plyfs).

mod common;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn plyfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(PLYFS)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run plyfs")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Runs `plyfs diff -v`; returns its summary line.
fn diff_layer(upper: &Path, lowers: &[&Path], out: &Path) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![os("diff"), os("-v")];
    let joined = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    if !lowers.is_empty() {
        args.push(os("--lower"));
        args.push(os(&joined));
    }
    args.extend([upper.as_os_str(), os("-o"), out.as_os_str()]);
    let o = plyfs(&args);
    ok(&o, "plyfs diff");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A count from the summary line (`N what`).
fn count(summary: &str, what: &str) -> u64 {
    let i = summary
        .find(what)
        .unwrap_or_else(|| panic!("{what} in {summary}"));
    summary[..i]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn apply_layer(tar: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![os("apply")];
    args.extend(extra.iter().map(|s| os(s)));
    args.extend([tar.as_os_str(), dir.as_os_str()]);
    plyfs(&args)
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mknod(p: &Path, mode: u32, dev: u64) -> bool {
    // SAFETY: mknod with a valid path.
    unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) == 0 }
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    // SAFETY: lchown with a valid path.
    unsafe {
        libc::lchown(cpath(p).as_ptr(), uid, gid);
    }
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: utimensat with a valid path and two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

fn remove_xattr(p: &Path, name: &str) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings.
    unsafe {
        libc::lremovexattr(cpath(p).as_ptr(), n.as_ptr());
    }
}

// ---------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------

/// Snapshot plus what it leaves out that a layer must keep: mtimes of
/// files and which names share an inode.
#[derive(Debug, PartialEq)]
struct Tree {
    entries: BTreeMap<Vec<u8>, EntryInfo>,
    mtimes: BTreeMap<Vec<u8>, (i64, i64)>,
    links: Vec<Vec<Vec<u8>>>,
}

fn tree(root: &Path) -> Tree {
    let entries = snapshot(root);
    let mut mtimes = BTreeMap::new();
    let mut groups: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (k, e) in &entries {
        if e.kind != 'f' {
            continue;
        }
        let md = std::fs::symlink_metadata(bpath(root, k)).unwrap();
        mtimes.insert(k.clone(), (md.mtime(), md.mtime_nsec()));
        if md.nlink() > 1 {
            groups
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(k.clone());
        }
    }
    let mut links: Vec<Vec<Vec<u8>>> = groups.into_values().filter(|g| g.len() > 1).collect();
    links.sort();
    Tree {
        entries,
        mtimes,
        links,
    }
}

fn assert_same(want: &Tree, got: &Tree, what: &str) {
    let d = diff(&want.entries, &got.entries, "mount", what);
    assert!(d.is_empty(), "{what} differs from the merged view:\n{d}");
    assert_eq!(want.mtimes, got.mtimes, "{what}: file mtimes differ");
    assert_eq!(want.links, got.links, "{what}: hard links differ");
}

// ---------------------------------------------------------------------------
// An independent OCI applier: GNU tar extracts, whiteouts handled here
// ---------------------------------------------------------------------------

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

fn copy_dir_meta(from: &Path, to: &Path) {
    let md = std::fs::symlink_metadata(from).unwrap();
    lchown(to, md.uid(), md.gid());
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
    for (n, _) in xattrs(to) {
        remove_xattr(to, std::str::from_utf8(&n).unwrap());
    }
    for (n, v) in xattrs(from) {
        set_xattr(to, std::str::from_utf8(&n).unwrap(), &v).unwrap();
    }
}

/// Applies the layer in `staging` (extracted as is, `.wh.` files included)
/// over `base` with OCI semantics: an opaque marker empties the directory
/// below, `.wh.X` removes X, every other entry replaces what is there
/// (directories merge). Entries are moved, so hard links survive.
fn oci_merge(staging: &Path, base: &Path) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let sdir = staging.join(&rel);
        let bdir = base.join(&rel);
        let mut names: Vec<Vec<u8>> = std::fs::read_dir(&sdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        if names.iter().any(|n| n == b".wh..wh..opq") {
            for e in std::fs::read_dir(&bdir).unwrap() {
                remove_any(&e.unwrap().path());
            }
        }
        for n in &names {
            if let Some(t) = n.strip_prefix(b".wh.")
                && t != b".wh..opq"
            {
                remove_any(&bpath(&bdir, t));
            }
        }
        for n in names.iter().filter(|n| !n.starts_with(b".wh.")) {
            let s = bpath(&sdir, n);
            let b = bpath(&bdir, n);
            let md = std::fs::symlink_metadata(&s).unwrap();
            if md.is_dir() {
                if !std::fs::symlink_metadata(&b).is_ok_and(|m| m.is_dir()) {
                    remove_any(&b);
                    std::fs::create_dir(&b).unwrap();
                }
                copy_dir_meta(&s, &b);
                stack.push(rel.join(std::ffi::OsStr::from_bytes(n)));
            } else {
                remove_any(&b);
                std::fs::rename(&s, &b).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Random lower trees and change sets
// ---------------------------------------------------------------------------

const NAMES: &[&str] = &["a", "b", "c", "dir", "sub", "x", "long-name-file"];

fn pick<'a, T>(rng: &mut SmallRng, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        Some(&v[rng.gen_range(0..v.len())])
    }
}

fn data(rng: &mut SmallRng) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0 => 0,
        1 => rng.gen_range(100_000..300_000),
        _ => rng.gen_range(1..2000),
    };
    let fill: u8 = rng.r#gen();
    (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// Every path below `root` (relative), directories and others.
fn paths(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut others) = (vec![PathBuf::new()], Vec::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut v: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        v.sort();
        for n in v {
            let p = rel.join(&n);
            match std::fs::symlink_metadata(root.join(&p)) {
                Ok(m) if m.is_dir() => {
                    dirs.push(p.clone());
                    stack.push(p);
                }
                Ok(_) => others.push(p),
                Err(_) => {}
            }
        }
    }
    (dirs, others)
}

fn new_path(rng: &mut SmallRng, root: &Path) -> PathBuf {
    let (dirs, _) = paths(root);
    let d = pick(rng, &dirs).cloned().unwrap_or_default();
    d.join(pick(rng, NAMES).unwrap())
}

fn gen_lower(rng: &mut SmallRng, root: &Path) {
    for _ in 0..70 {
        let p = root.join(new_path(rng, root));
        if p.symlink_metadata().is_ok() || p.components().count() > root.components().count() + 4 {
            continue;
        }
        match rng.gen_range(0..10) {
            0..=2 => std::fs::create_dir(&p).unwrap(),
            3..=6 => {
                std::fs::write(&p, data(rng)).unwrap();
                if rng.gen_bool(0.3) {
                    set_xattr(&p, "user.lower", b"v").unwrap();
                }
                set_mtime(&p, 1_600_000_000 + rng.gen_range(0..1000), 0);
            }
            7 => std::os::unix::fs::symlink("target/of/link", &p).unwrap(),
            8 => {
                let (_, files) = paths(root);
                if let Some(f) = pick(rng, &files)
                    && root.join(f).symlink_metadata().unwrap().is_file()
                {
                    let _ = std::fs::hard_link(root.join(f), &p);
                }
            }
            _ => {
                mknod(&p, libc::S_IFIFO | 0o644, 0);
            }
        }
    }
}

/// One random change through the mount; failures (EXDEV, ENOTEMPTY, ...)
/// are part of the game and ignored.
fn random_op(rng: &mut SmallRng, m: &Path) {
    let (dirs, others) = paths(m);
    let any: Vec<PathBuf> = dirs[1..].iter().chain(others.iter()).cloned().collect();
    let files: Vec<PathBuf> = others
        .iter()
        .filter(|p| m.join(p).symlink_metadata().is_ok_and(|x| x.is_file()))
        .cloned()
        .collect();
    match rng.gen_range(0..16) {
        0 | 1 => {
            // Never open a FIFO (it would block).
            let p = m.join(new_path(rng, m));
            if p.symlink_metadata().map_or(true, |x| x.is_file()) {
                let _ = std::fs::write(p, data(rng));
            }
        }
        2 => {
            if let Some(f) = pick(rng, &files) {
                use std::io::Write;
                if let Ok(mut h) = std::fs::OpenOptions::new().append(true).open(m.join(f)) {
                    let _ = h.write_all(b"appended\n");
                }
            }
        }
        3 => {
            let _ = std::fs::create_dir(m.join(new_path(rng, m)));
        }
        4 => {
            if let Some(p) = pick(rng, &any) {
                remove_any(&m.join(p));
            }
        }
        5 | 6 => {
            // Renames, directories included (redirects).
            if let Some(p) = pick(rng, &any) {
                let to = new_path(rng, m);
                let _ = std::fs::rename(m.join(p), m.join(to));
            }
        }
        7 => {
            if let Some(f) = pick(rng, &files) {
                let _ = std::fs::hard_link(m.join(f), m.join(new_path(rng, m)));
            }
        }
        8 => {
            let _ = std::os::unix::fs::symlink("../some/where", m.join(new_path(rng, m)));
        }
        9 => {
            let p = m.join(new_path(rng, m));
            if rng.gen_bool(0.5) {
                mknod(&p, libc::S_IFCHR | 0o600, libc::makedev(1, 3));
            } else {
                mknod(&p, libc::S_IFIFO | 0o640, 0);
            }
        }
        10 => {
            if let Some(p) = pick(rng, &any) {
                let mode = *pick(rng, &[0o600, 0o755, 0o4755, 0o1777, 0o640]).unwrap();
                let p = m.join(p);
                if !p.symlink_metadata().unwrap().is_symlink() {
                    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
                }
            }
        }
        11 => {
            if let Some(p) = pick(rng, &any) {
                lchown(
                    &m.join(p),
                    rng.gen_range(0..3) * 1000,
                    rng.gen_range(0..3) * 100,
                );
            }
        }
        12 => {
            if let Some(f) = pick(rng, &files) {
                set_mtime(
                    &m.join(f),
                    1_700_000_000 + rng.gen_range(0..100),
                    rng.gen_range(0..999_999_999),
                );
            }
        }
        13 => {
            if let Some(p) = pick(rng, &any) {
                let p = m.join(p);
                if !p.symlink_metadata().unwrap().is_symlink() {
                    let name = *pick(rng, &["user.a", "user.b", "trusted.t", "trusted.overlay.x"])
                        .unwrap();
                    let _ = set_xattr(&p, name, format!("v{}", rng.gen_range(0..9)).as_bytes());
                }
            }
        }
        14 => {
            if let Some(p) = pick(rng, &any) {
                remove_xattr(&m.join(p), "user.lower");
            }
        }
        _ => {
            if let Some(f) = pick(rng, &files) {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(m.join(f))
                    .and_then(|h| h.set_len(rng.gen_range(0..5000)));
            }
        }
    }
}

/// Applies `layer` over the single `lower` three ways and compares each
/// result with `want`: `plyfs apply` under kernel overlayfs, GNU tar plus
/// the OCI whiteout rules above over a copy of the lower, and `plyfs apply
/// --oci` under a read-only plyfs mount.
fn verify_layer(layer: &Path, lower: &Path, want: &Tree, what: &str) {
    let d = tempfile::Builder::new()
        .prefix("plyfs-layer-")
        .tempdir_in(test_root())
        .unwrap();
    let d = d.path();
    let lowerdir = lower.display().to_string();

    // 1. plyfs apply (kernel format) as a lowerdir of kernel overlayfs.
    let applied = d.join("applied");
    ok(&apply_layer(layer, &applied, &[]), "plyfs apply");
    let km = d.join("kmnt");
    std::fs::create_dir(&km).unwrap();
    {
        let _k = KernelMount::mount(&km, &format!("lowerdir={}:{lowerdir}", applied.display()))
            .expect("kernel overlay over the applied layer");
        assert_same(
            want,
            &tree(&km),
            &format!("{what}: plyfs apply under kernel overlay"),
        );
    }
    // ... and as a lowerdir of plyfs.
    {
        let m = PlyfsMount::start(
            &km,
            &format!("lowerdir={}:{lowerdir}", applied.display()),
            &[],
        )
        .expect("plyfs over the applied layer");
        assert_same(
            want,
            &tree(&m.mnt),
            &format!("{what}: plyfs apply under plyfs"),
        );
    }

    // 2. An independent applier: GNU tar, whiteouts handled by the test.
    let staging = d.join("staging");
    let base = d.join("base");
    std::fs::create_dir(&staging).unwrap();
    sh(&format!(
        "cp -a {lowerdir} {} && tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C {}",
        base.display(),
        layer.display(),
        staging.display()
    ));
    oci_merge(&staging, &base);
    assert_same(
        want,
        &tree(&base),
        &format!("{what}: GNU tar + OCI whiteouts"),
    );

    // 3. plyfs apply --oci (.wh. files kept), read by a plyfs mount.
    let oci = d.join("oci");
    ok(&apply_layer(layer, &oci, &["--oci"]), "plyfs apply --oci");
    let pm = d.join("pmnt");
    std::fs::create_dir(&pm).unwrap();
    let m = PlyfsMount::start(&pm, &format!("lowerdir={}:{lowerdir}", oci.display()), &[])
        .expect("plyfs over the OCI layer");
    assert_same(
        want,
        &tree(&pm),
        &format!("{what}: plyfs apply --oci under plyfs"),
    );
    drop(m);
}

/// Returns the diff's summary line.
fn round_trip(seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let l = Layers::new(1);
    gen_lower(&mut rng, l.lower(0));
    let want = {
        let m = PlyfsMount::start(&l.mnt, &format!("{},redirect_dir=on", l.options()), &[])
            .expect("mount plyfs");
        for _ in 0..120 {
            random_op(&mut rng, &m.mnt);
        }
        let t = tree(&m.mnt);
        // The upper of a live (quiescent) mount diffs the same as after
        // the unmount.
        diff_layer(&l.upper, &[l.lower(0)], &l.dir.path().join("live.tar"));
        drop(m);
        t
    };
    let d = l.dir.path();
    let layer = d.join("layer.tar");
    let summary = diff_layer(&l.upper, &[l.lower(0)], &layer);
    assert!(
        std::fs::read(&layer).unwrap() == std::fs::read(d.join("live.tar")).unwrap(),
        "seed {seed}: the diff of the live mount differs from the one after unmount"
    );
    // Deterministic: the same upper gives the same bytes.
    let again = d.join("again.tar");
    diff_layer(&l.upper, &[l.lower(0)], &again);
    assert!(
        std::fs::read(&layer).unwrap() == std::fs::read(&again).unwrap(),
        "seed {seed}: two diffs of one upper differ"
    );
    verify_layer(&layer, l.lower(0), &want, &format!("seed {seed}"));
    summary
}

#[test]
fn random_change_sets_round_trip() {
    if !require_root("random_change_sets_round_trip")
        || !require_fuse("random_change_sets_round_trip")
    {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("PLYFS_LAYER_SEED") {
        Ok(s) => vec![s.parse().expect("PLYFS_LAYER_SEED")],
        Err(_) => (1..=12).collect(),
    };
    let mut totals = [0u64; 4];
    for seed in seeds {
        let s = round_trip(seed);
        eprintln!("seed {seed}: {s}");
        for (t, what) in totals.iter_mut().zip([
            " whiteouts",
            " opaque directories",
            " redirected directories",
            " hard links",
        ]) {
            *t += count(&s, what);
        }
    }
    // The random changes must exercise every kind of marker.
    if std::env::var("PLYFS_LAYER_SEED").is_err() {
        assert!(
            totals.iter().all(|&n| n > 0),
            "not every marker kind was exercised: {totals:?}"
        );
    }
}

/// An upper written by kernel overlayfs with `redirect_dir=on,metacopy=on`:
/// renamed directories (relative and absolute redirects, changed after the
/// rename), metacopy files (in place and renamed), whiteouts inside a
/// renamed directory. Without `--lower` such an upper is refused.
#[test]
fn kernel_upper_with_redirects_and_metacopy() {
    if !require_root("kernel_upper_with_redirects_and_metacopy")
        || !require_fuse("kernel_upper_with_redirects_and_metacopy")
    {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    write(&lo.join("same/inner/f"), b"inner\n");
    write(&lo.join("same/inner/gone"), b"gone\n");
    write(&lo.join("far/away/deep/x"), b"x\n");
    write(&lo.join("other/keep"), b"keep\n");
    write(&lo.join("meta"), &vec![7u8; 100_000]);
    write(&lo.join("meta2"), b"metadata only copy\n");
    set_xattr(&lo.join("meta"), "user.m", b"1").unwrap();
    let want = {
        let _k = l.mount_kernel("redirect_dir=on,metacopy=on");
        let m = &l.mnt;
        std::fs::rename(m.join("same/inner"), m.join("same/renamed")).unwrap();
        std::fs::remove_file(m.join("same/renamed/gone")).unwrap();
        write(&m.join("same/renamed/new"), b"new\n");
        std::fs::rename(m.join("far/away"), m.join("other/moved")).unwrap();
        write(&m.join("other/moved/deep/y"), b"y\n");
        std::fs::set_permissions(m.join("meta"), std::fs::Permissions::from_mode(0o600)).unwrap();
        lchown(&m.join("meta2"), 1000, 1000);
        std::fs::rename(m.join("meta2"), m.join("other/meta2")).unwrap();
        tree(m)
    };
    let scan = Command::new("getfattr")
        .args(["-R", "-d", "-m", "trusted.overlay"])
        .arg(&l.upper)
        .output();
    if let Ok(o) = scan {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("redirect=\"inner\"") && text.contains("redirect=\"/far/away\""),
            "kernel did not leave the expected redirects:\n{text}"
        );
        assert!(
            text.contains("metacopy"),
            "kernel made no metacopy file:\n{text}"
        );
    }
    let layer = l.dir.path().join("layer.tar");
    let out = plyfs(&[os("diff"), l.upper.as_os_str(), os("-o"), layer.as_os_str()]);
    assert!(
        !out.status.success(),
        "diff of a redirected upper without --lower succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--lower"),
        "error does not say --lower is needed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = diff_layer(&l.upper, &[lo], &layer);
    assert_eq!(count(&s, " redirected directories"), 2, "{s}");
    assert_eq!(count(&s, " metacopy files"), 2, "{s}");
    verify_layer(&layer, lo, &want, "kernel upper");
}

/// Builds an archive with plyfs's own writer.
fn archive(entries: &[(plyfs::layer::tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut w = plyfs::layer::tar::Writer::new(Vec::new());
    for (h, d) in entries {
        w.append(h).unwrap();
        w.write_data(d).unwrap();
    }
    w.finish().unwrap()
}

fn hdr(
    path: &[u8],
    kind: plyfs::layer::tar::Kind,
    link: &[u8],
    data: &[u8],
) -> (plyfs::layer::tar::Header, Vec<u8>) {
    let mut h = plyfs::layer::tar::Header::new(path.to_vec(), kind);
    h.link = link.to_vec();
    h.size = data.len() as u64;
    (h, data.to_vec())
}

/// Hostile archives: every entry that would reach outside DIR (absolute
/// paths, `..`, symlinked parents, hard links out), or is too large, is
/// refused alone; the rest is extracted and nothing outside DIR changes.
#[test]
fn hostile_archives_are_refused_entry_by_entry() {
    use plyfs::layer::tar::Kind::*;
    let t = tempfile::Builder::new()
        .prefix("plyfs-hostile-")
        .tempdir_in(test_root())
        .unwrap();
    let outside = t.path().join("outside");
    write(&outside.join("secret"), b"secret\n");
    let dir = t.path().join("dir");
    let o = outside.display().to_string();
    let entries = vec![
        hdr(b"ok-before", File, b"", b"fine\n"),
        hdr(b"../escape", File, b"", b"x"),
        hdr(b"sub/../../escape2", File, b"", b"x"),
        hdr(format!("{o}/abs").as_bytes(), File, b"", b"x"),
        hdr(b"evil", Symlink, o.as_bytes(), b""),
        hdr(b"evil/planted", File, b"", b"x"),
        hdr(b"up", Symlink, b"..", b""),
        hdr(b"up/outside/planted", File, b"", b"x"),
        hdr(b"hl-out", Link, b"../outside/secret", b""),
        hdr(b"hl-abs", Link, format!("{o}/secret").as_bytes(), b""),
        hdr(b"hl-through-symlink", Link, b"evil/secret", b""),
        hdr(&[b'n'; 300], File, b"", b"x"),
        hdr(b".wh...", File, b"", b""),
        hdr(b"ok-dir/ok-after", File, b"", b"fine\n"),
        hdr(b"hl-ok", Link, b"ok-before", b""),
        hdr(b"evil", File, b"", b"replaced the symlink\n"),
    ];
    let mut bytes = archive(&entries);
    // A GNU long name of 2 MiB before one more entry.
    let mut long = [0u8; 512];
    long[..13].copy_from_slice(b"././@LongLink");
    long[100..108].copy_from_slice(b"0000644\0");
    long[124..136].copy_from_slice(format!("{:011o}\0", 2 << 20).as_bytes());
    long[156] = b'L';
    long[257..265].copy_from_slice(b"ustar  \0");
    let sum: u32 = long
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    long[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tail = long.to_vec();
    tail.extend(std::iter::repeat_n(b'a', 2 << 20));
    tail.extend(archive(&[
        hdr(b"huge-victim", File, b"", b"x"),
        hdr(b"ok-last", File, b"", b"fine\n"),
    ]));
    bytes.truncate(bytes.len() - 1024);
    bytes.extend(tail);
    let tar = t.path().join("hostile.tar");
    std::fs::write(&tar, &bytes).unwrap();
    let before = snapshot(&outside);
    let out = apply_layer(&tar, &dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "apply of a hostile archive: {err}"
    );
    assert_eq!(snapshot(&outside), before, "something outside DIR changed");
    assert!(!t.path().join("escape").exists() && !t.path().join("escape2").exists());
    for refused in [
        "../escape",
        "abs",
        "evil/planted",
        "up/outside/planted",
        "hl-out",
        "hl-abs",
        "hl-through-symlink",
        "huge-victim",
        ".wh...",
    ] {
        assert!(
            err.contains(refused),
            "{refused} not reported as refused: {err}"
        );
    }
    let got = snapshot(&dir);
    let names: Vec<String> = got
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "evil",
            "hl-ok",
            "ok-before",
            "ok-dir",
            "ok-dir/ok-after",
            "ok-last",
            "up"
        ],
        "extracted entries"
    );
    assert_eq!(
        std::fs::read(dir.join("evil")).unwrap(),
        b"replaced the symlink\n"
    );
    assert_eq!(std::fs::read_link(dir.join("up")).unwrap(), Path::new(".."));
    let a = std::fs::metadata(dir.join("ok-before")).unwrap();
    let b = std::fs::metadata(dir.join("hl-ok")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link inside DIR");
}

/// A tree 10,000 levels deep: diff and apply walk it by descriptors with
/// a bounded number of them open, and paths far beyond PATH_MAX.
#[test]
fn ten_thousand_levels() {
    if !require_root("ten_thousand_levels") {
        return;
    }
    const DEPTH: usize = 10_000;
    let t = tempfile::Builder::new()
        .prefix("plyfs-deep-")
        .tempdir_in(test_root())
        .unwrap();
    let upper = t.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    // SAFETY: plain *at calls on descriptors this test owns.
    unsafe {
        let mut fd = libc::open(cpath(&upper).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0);
        for _ in 0..DEPTH {
            assert_eq!(libc::mkdirat(fd, c("d").as_ptr(), 0o755), 0);
            let next = libc::openat(fd, c("d").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        let f = libc::openat(
            fd,
            c("bottom").as_ptr(),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
        );
        assert_eq!(libc::write(f, b"deep\n".as_ptr().cast(), 5), 5);
        libc::close(f);
        assert_eq!(libc::mknodat(fd, c("gone").as_ptr(), libc::S_IFCHR, 0), 0);
        libc::close(fd);
    }
    let layer = t.path().join("deep.tar");
    let s = diff_layer(&upper, &[], &layer);
    assert_eq!(count(&s, " entries"), DEPTH as u64 + 2, "{s}");
    assert_eq!(count(&s, " whiteouts"), 1, "{s}");
    let dir = t.path().join("applied");
    ok(&apply_layer(&layer, &dir, &[]), "apply of a deep layer");
    // SAFETY: as above.
    unsafe {
        let mut fd = libc::open(cpath(&dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        for i in 0..DEPTH {
            let next = libc::openat(
                fd,
                c("d").as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            );
            assert!(next >= 0, "level {i} missing");
            libc::close(fd);
            fd = next;
        }
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(
            libc::fstatat(fd, c("gone").as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW),
            0
        );
        assert_eq!(
            (st.st_mode & libc::S_IFMT, st.st_rdev),
            (libc::S_IFCHR, 0),
            "whiteout at the bottom"
        );
        let f = libc::openat(fd, c("bottom").as_ptr(), libc::O_RDONLY);
        let mut buf = [0u8; 16];
        assert_eq!(libc::read(f, buf.as_mut_ptr().cast(), 16), 5);
        assert_eq!(&buf[..5], b"deep\n");
        libc::close(f);
        libc::close(fd);
    }
    // Removing such trees needs descriptors too (rm -rf copes).
    sh(&format!("rm -rf {} {}", upper.display(), dir.display()));
}

/// Rootless form: an upper with `user.overlay.*` markers and shifted ids
/// (`--uidmap`), and `plyfs apply` run by an unprivileged user, which
/// writes `user.overlay.*` markers a `userxattr` kernel mount reads.
#[test]
fn rootless_markers_and_id_maps() {
    if !require_root("rootless_markers_and_id_maps") {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("plyfs-rootless-")
        .tempdir_in(test_root())
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lower = t.path().join("lower");
    write(&lower.join("opq/old"), b"old\n");
    write(&lower.join("xw/deleted"), b"deleted\n");
    write(&lower.join("xw/kept"), b"kept\n");
    let upper = t.path().join("upper");
    write(&upper.join("opq/new"), b"new\n");
    set_xattr(&upper.join("opq"), "user.overlay.opaque", b"y").unwrap();
    write(&upper.join("xw/deleted"), b"");
    set_xattr(&upper.join("xw/deleted"), "user.overlay.whiteout", b"").unwrap();
    set_xattr(&upper.join("xw"), "user.overlay.opaque", b"x").unwrap();
    write(&upper.join("owned"), b"ids\n");
    // A rootless upper holds shifted ids (container root is 100000).
    for p in ["opq", "opq/new", "xw", "xw/deleted"] {
        lchown(&upper.join(p), 100_000, 100_000);
    }
    lchown(&upper.join("owned"), 100_005, 100_007);
    let want = {
        let m = t.path().join("m");
        std::fs::create_dir(&m).unwrap();
        let w = t.path().join("w");
        std::fs::create_dir(&w).unwrap();
        let _k = KernelMount::mount(
            &m,
            &format!(
                "lowerdir={},upperdir={},workdir={},userxattr",
                lower.display(),
                upper.display(),
                w.display()
            ),
        )
        .expect("kernel userxattr mount");
        let mut tr = tree(&m);
        let e = tr.entries.get_mut(&b"owned"[..]).unwrap();
        assert_eq!((e.uid, e.gid), (100_005, 100_007));
        for e in tr.entries.values_mut() {
            if e.uid >= 100_000 {
                (e.uid, e.gid) = (e.uid - 100_000, e.gid - 100_000);
            }
        }
        tr
    };
    let layer = t.path().join("layer.tar");
    let o = plyfs(&[
        os("diff"),
        os("--uidmap"),
        os("100000:0:65536"),
        os("--gidmap"),
        os("100000:0:65536"),
        upper.as_os_str(),
        os("-o"),
        layer.as_os_str(),
    ]);
    ok(&o, "diff of a rootless upper");
    let list = Command::new("tar")
        .args(["-tvf"])
        .arg(&layer)
        .arg("--numeric-owner")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("5/7")
            && list.contains("opq/.wh..wh..opq")
            && list.contains("xw/.wh.deleted"),
        "{list}"
    );
    assert!(!list.contains("overlay"), "{list}");
    verify_layer(&layer, &lower, &want, "rootless upper");

    // Unprivileged apply: user.overlay.* markers, files of the caller.
    let dir = t.path().join("byuser");
    std::fs::create_dir(&dir).unwrap();
    lchown(&dir, 65534, 65534);
    std::fs::set_permissions(&layer, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(PLYFS)
        .arg("apply")
        .arg(&layer)
        .arg(&dir)
        .output()
        .unwrap();
    ok(&out, "unprivileged plyfs apply");
    assert_eq!(
        get_xattr(&dir.join("opq"), "user.overlay.opaque").unwrap(),
        b"y"
    );
    assert!(get_xattr(&dir.join("opq"), "trusted.overlay.opaque").is_err());
    let md = std::fs::symlink_metadata(dir.join("owned")).unwrap();
    assert_eq!(
        md.uid(),
        65534,
        "an unprivileged apply keeps files as the caller's"
    );
    let m = t.path().join("m2");
    std::fs::create_dir(&m).unwrap();
    let _k = KernelMount::mount(
        &m,
        &format!("lowerdir={}:{},userxattr", dir.display(), lower.display()),
    )
    .expect("kernel userxattr mount over the user's layer");
    let got = tree(&m);
    let mut want_user = want;
    for (k, e) in want_user.entries.iter_mut() {
        if std::fs::symlink_metadata(bpath(&lower, k)).is_err() || k == b"opq" || k == b"xw" {
            (e.uid, e.gid) = (65534, 65534);
        }
    }
    let d = diff(
        &want_user.entries,
        &got.entries,
        "want",
        "applied by a user",
    );
    assert!(d.is_empty(), "{d}");
}

// ---------------------------------------------------------------------------
// podman: a container whose storage uses plyfs
// ---------------------------------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Throwaway rootful podman storage with plyfs as mount program; removes
/// its containers, images and mounts when dropped.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("timeout");
        c.args(["-k", "10", "180", "podman"])
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!("overlay.mount_program={PLYFS}"))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["rmi", "--all", "--force"][..],
            &["system", "reset", "--force"][..],
        ] {
            let _ = self.cmd(args).output();
        }
        let mut left: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(self.dir.path()))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in left {
            umount(&m);
        }
    }
}

/// Everything but attributes (podman export writes none) and the
/// directories podman mounts over.
fn comparable(root: &Path) -> BTreeMap<Vec<u8>, EntryInfo> {
    snapshot(root)
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with(b"proc/") && !k.starts_with(b"sys/") && !k.starts_with(b"dev/")
        })
        .map(|(k, mut e)| {
            e.xattrs.clear();
            (k, e)
        })
        .collect()
}

/// A container changed with podman (plyfs mounts its root): `plyfs diff`
/// of its upper holds every change `podman diff` reports, and the layer
/// applied under kernel overlay shows what `podman export` exports.
#[test]
fn podman_container_diff_matches() {
    if !require_root("podman_container_diff_matches")
        || !require_fuse("podman_container_diff_matches")
    {
        return;
    }
    for tool in ["podman", "runc", "busybox", "tar"] {
        if !have(tool) {
            eprintln!("SKIPPED podman_container_diff_matches: {tool} is not installed");
            return;
        }
    }
    let p = Podman {
        dir: tempfile::Builder::new()
            .prefix("plyfs-layer-podman-")
            .tempdir_in(test_root())
            .unwrap(),
    };
    let d = p.dir.path().to_path_buf();
    let rootfs = d.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for a in [
        "sh", "echo", "rm", "mv", "chmod", "ln", "mkdir", "cat", "chown", "sleep",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    write(&rootfs.join("etc/gone"), b"gone\n");
    write(&rootfs.join("etc/mode"), b"mode\n");
    write(&rootfs.join("srv/data/a"), b"a\n");
    write(&rootfs.join("srv/data/sub/b"), b"b\n");
    write(&rootfs.join("srv/links/h1"), b"h\n");
    std::fs::hard_link(rootfs.join("srv/links/h1"), rootfs.join("srv/links/h2")).unwrap();
    for sub in ["tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    sh(&format!(
        "tar -C {} -cf {}/rootfs.tar .",
        rootfs.display(),
        d.display()
    ));
    p.ok(&[
        "import",
        &format!("{}/rootfs.tar", d.display()),
        "layerbase",
    ]);
    // Limits runc can set without CAP_SYS_RESOURCE: never above ours.
    let hard = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_max
    };
    let nofile = hard(libc::RLIMIT_NOFILE).min(20000);
    let nproc = hard(libc::RLIMIT_NPROC).min(4096);
    let changes = "set -e; echo new > /newfile; chown 1000:1000 /newfile; rm /etc/gone; \
                   chmod 600 /etc/mode; mv /srv/data /srv/moved; echo more >> /srv/moved/a; \
                   rm /srv/moved/sub/b; echo h2 >> /srv/links/h2; ln -s /newfile /link; \
                   mkdir -p /d1/d2; echo x > /d1/d2/f";
    p.ok(&[
        "run",
        "--name",
        "c1",
        "--network",
        "none",
        "--ulimit",
        &format!("nofile={nofile}:{nofile}"),
        "--ulimit",
        &format!("nproc={nproc}:{nproc}"),
        "layerbase",
        "sh",
        "-c",
        changes,
    ]);
    let upper = p
        .ok(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.UpperDir}}",
            "c1",
        ])
        .trim()
        .to_string();
    let lowers = p
        .ok(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.LowerDir}}",
            "c1",
        ])
        .trim()
        .to_string();
    let layer = d.join("c1.tar");
    let lower_paths: Vec<PathBuf> = lowers.split(':').map(PathBuf::from).collect();
    let lower_refs: Vec<&Path> = lower_paths.iter().map(PathBuf::as_path).collect();
    let summary = diff_layer(Path::new(&upper), &lower_refs, &layer);
    let listing = Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
    let entries: std::collections::BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    // Every change podman reports is in the layer.
    let pdiff = p.ok(&["diff", "c1"]);
    for line in pdiff.lines() {
        let Some((kind, path)) = line.split_once(' ') else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let found = match kind {
            "D" => {
                let (dir, name) = path.rsplit_once('/').map_or(("", path), |(a, b)| (a, b));
                let wh = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                entries.contains(&wh)
            }
            _ => entries.contains(path),
        };
        assert!(
            found,
            "podman diff reports {line:?}, missing from the layer:\n{entries:?}\n{summary}"
        );
    }
    assert!(
        pdiff.contains("D /etc/gone") && pdiff.contains("A /srv/moved"),
        "{pdiff}"
    );
    // The layer over the image's lowers, under kernel overlay, is what
    // podman exports.
    let export = d.join("export");
    std::fs::create_dir(&export).unwrap();
    p.ok(&["export", "-o", &format!("{}/export.tar", d.display()), "c1"]);
    sh(&format!(
        "tar --numeric-owner -xpf {}/export.tar -C {}",
        d.display(),
        export.display()
    ));
    let applied = d.join("applied");
    ok(&apply_layer(&layer, &applied, &[]), "plyfs apply");
    let km = d.join("kmnt");
    std::fs::create_dir(&km).unwrap();
    let _k = KernelMount::mount(&km, &format!("lowerdir={}:{lowers}", applied.display()))
        .expect("kernel overlay");
    let want = comparable(&export);
    let got = comparable(&km);
    let dd = diff(&want, &got, "podman export", "plyfs diff + apply");
    assert!(dd.is_empty(), "{dd}");
}

/// Help texts and one-line errors; the mount syntax is untouched.
#[test]
fn command_line() {
    let help = plyfs(&[os("--help")]);
    ok(&help, "plyfs --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("diff") && text.contains("apply") && text.contains("lowerdir="),
        "{text}"
    );
    for sub in ["diff", "apply"] {
        let h = plyfs(&[os(sub), os("--help")]);
        ok(&h, sub);
        let t = String::from_utf8_lossy(&h.stdout);
        assert!(t.contains(&format!("plyfs {sub}")), "{t}");
    }
    let t = tempfile::Builder::new()
        .prefix("plyfs-cli-")
        .tempdir_in(test_root())
        .unwrap();
    let d = t.path();
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Errors: exit 1, one line naming the problem.
    let o = plyfs(&[
        os("diff"),
        d.join("missing").as_os_str(),
        os("-o"),
        d.join("x.tar").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("cannot open upper") && err(&o).lines().count() == 1,
        "{}",
        err(&o)
    );
    let o = plyfs(&[os("apply")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("<LAYER> <DIR>"), "{}", err(&o));
    std::fs::write(d.join("l.tar.gz"), [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let o = apply_layer(&d.join("l.tar.gz"), &d.join("out"), &[]);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("gzip"),
        "{}",
        err(&o)
    );
    std::fs::write(d.join("junk"), vec![b'j'; 2048]).unwrap();
    let o = apply_layer(&d.join("junk"), &d.join("out"), &[]);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("not a tar"),
        "{}",
        err(&o)
    );
    // A failed diff leaves no partial layer behind; output inside the
    // upper is refused.
    let upper = d.join("upper");
    write(&upper.join("f"), b"f");
    set_xattr(&upper.join("f"), "user.overlay.metacopy", b"").unwrap();
    let out = d.join("partial.tar");
    let o = plyfs(&[os("diff"), upper.as_os_str(), os("-o"), out.as_os_str()]);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("--lower"),
        "{}",
        err(&o)
    );
    assert!(!out.exists(), "a failed diff left {}", out.display());
    let o = plyfs(&[
        os("diff"),
        upper.as_os_str(),
        os("-o"),
        upper.join("in.tar").as_os_str(),
    ]);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("inside the upper"),
        "{}",
        err(&o)
    );
    // mount(8)'s form with a source named like a subcommand is a mount.
    let o = plyfs(&[
        os("diff"),
        d.join("nomnt").as_os_str(),
        os("-o"),
        os("lowerdir=/nonexistent"),
    ]);
    assert!(err(&o).contains("lowerdir"), "{}", err(&o));
}

/// An upper written by fuse-overlayfs' fallbacks (`.wh.NAME` files, a
/// `.wh..wh..opq` file next to the opaque xattr) and an upper with hard
/// links: markers appear once, links as links, sockets are skipped.
#[test]
fn oci_markers_in_upper_and_links() {
    if !require_root("oci_markers_in_upper_and_links") {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("plyfs-ocimarks-")
        .tempdir_in(test_root())
        .unwrap();
    let upper = t.path().join("upper");
    write(&upper.join(".wh.gone"), b"");
    write(&upper.join("opq/.wh..wh..opq"), b"");
    set_xattr(&upper.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    write(&upper.join("opq/new"), b"new");
    write(&upper.join("a/one"), b"linked");
    std::fs::create_dir_all(upper.join("b")).unwrap();
    std::fs::hard_link(upper.join("a/one"), upper.join("b/two")).unwrap();
    std::os::unix::net::UnixListener::bind(upper.join("sock")).unwrap();
    let layer = t.path().join("l.tar");
    let s = diff_layer(&upper, &[], &layer);
    assert!(s.contains("1 sockets skipped"), "{s}");
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(&layer)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.rsplit_once(' ').map_or(l, |x| x.1))
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".wh..wh..opq")).count(),
        1,
        "{list}"
    );
    assert!(
        list.contains(".wh.gone") && list.contains("b/two link to a/one"),
        "{list}"
    );
    assert!(!list.contains("sock"), "{list}");

    // xattr_permissions: owner, mode and device type kept in an attribute.
    let up2 = t.path().join("upper2");
    write(&up2.join("f"), b"f");
    set_xattr(
        &up2.join("f"),
        "user.containers.override_stat",
        b"1000:1001:0640",
    )
    .unwrap();
    write(&up2.join("dev"), b"");
    set_xattr(
        &up2.join("dev"),
        "user.containers.override_stat",
        b"0:0:0666:char-1-3",
    )
    .unwrap();
    let l2 = t.path().join("l2.tar");
    let o = plyfs(&[
        os("diff"),
        os("--xattr-permissions"),
        os("2"),
        up2.as_os_str(),
        os("-o"),
        l2.as_os_str(),
    ]);
    ok(&o, "diff --xattr-permissions 2");
    let list = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-tvf"])
        .arg(&l2)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let flat = list.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("-rw-r----- 1000/1001") && flat.contains("crw-rw-rw- 0/0 1,3"),
        "{list}"
    );
    assert!(!list.contains("override_stat"), "{list}");
}

/// Archives written by GNU tar (GNU long names, POSIX with xattrs, old
/// v7-style) extract to the same tree with `plyfs apply --oci`.
#[test]
fn reads_gnu_tar_archives() {
    if !require_root("reads_gnu_tar_archives") {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("plyfs-gnutar-")
        .tempdir_in(test_root())
        .unwrap();
    let src = t.path().join("src");
    let long = "l".repeat(120);
    let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "f".repeat(90));
    write(&src.join(&long), b"long name\n");
    write(&src.join(&deep).join("file"), &vec![9u8; 70_000]);
    write(&src.join("x/attrs"), b"xattrs\n");
    set_xattr(&src.join("x/attrs"), "user.k", b"v").unwrap();
    set_xattr(&src.join("x/attrs"), "trusted.t", b"tv").unwrap();
    std::os::unix::fs::symlink("l".repeat(150), src.join("x/longlink")).unwrap();
    std::fs::hard_link(src.join("x/attrs"), src.join("hl")).unwrap();
    mknod(&src.join("x/fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &src.join("x/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    lchown(&src.join(&long), 1234, 5678);
    set_mtime(&src.join(&long), 1_234_567_890, 0);
    let want = tree(&src);
    for (fmt, xattrs) in [("gnu", false), ("posix", true), ("ustar", false)] {
        let tar = t.path().join(format!("{fmt}.tar"));
        let out = Command::new("tar")
            .arg(format!("--format={fmt}"))
            .args(if xattrs {
                &["--xattrs", "--xattrs-include=*"][..]
            } else {
                &[][..]
            })
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        if fmt == "ustar" {
            // ustar cannot hold the long names: GNU tar skips them.
            assert!(tar.exists());
        } else {
            ok_status(&out, &format!("tar --format={fmt}"));
        }
        let dir = t.path().join(format!("out-{fmt}"));
        let o = apply_layer(&tar, &dir, &["--oci"]);
        let mut got = tree(&dir);
        let mut want = Tree {
            entries: want.entries.clone(),
            mtimes: want.mtimes.clone(),
            links: want.links.clone(),
        };
        if !xattrs {
            // Only POSIX archives hold sub-second times and attributes.
            for t in want.mtimes.values_mut() {
                t.1 = 0;
            }
            for e in want.entries.values_mut() {
                e.xattrs.clear();
            }
            for e in got.entries.values_mut() {
                e.xattrs.clear();
            }
        }
        if fmt == "ustar" {
            want.entries
                .retain(|k, _| k.len() <= 100 && !k.starts_with(b"ddd"));
            want.mtimes.retain(|k, _| want.entries.contains_key(k));
            want.entries.remove(&b"x/longlink"[..]);
            got.entries.retain(|k, _| want.entries.contains_key(k));
            got.mtimes.retain(|k, _| want.entries.contains_key(k));
        } else {
            ok(&o, &format!("apply of a {fmt} archive"));
        }
        assert_same(&want, &got, &format!("GNU tar --format={fmt}"));
    }
}

fn ok_status(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
