//! Metacopy files (`metacopy=on`), data-only lower layers (`lowerdir=A::D`,
//! `lowerdir+=`, `datadir+=`) and `verity=`, against kernel overlayfs on
//! the same directories, in both directions: what plyfs writes the kernel
//! reads, and what the kernel writes plyfs reads; without `metacopy=on`
//! both refuse metacopy files the same way (never their zeros).

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::*;

const META: &str = "trusted.overlay.metacopy";
const REDIRECT: &str = "trusted.overlay.redirect";

fn ready(name: &str) -> bool {
    require_root(name) && require_fuse(name)
}

/// 100 KiB of data that is not all zeros.
fn big() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The lower tree the scenarios start from (top lower `lower0`, and a
/// second lower layer under it).
fn populate(l: &Layers) {
    let top = l.lower(0);
    let base = l.lower(1);
    for d in ["a", "b", "c"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    write(&base.join("a/f"), &big());
    write(&base.join("a/g"), b"small data\n");
    write(&base.join("a/h"), b"to be linked\n");
    write(&base.join("a/caps"), b"#!/bin/true\n");
    // A valid v2 file capability (cap_net_bind_service, effective).
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    set_xattr(&base.join("a/caps"), "security.capability", &cap).unwrap();
    write(&base.join("b/hl1"), b"hard linked\n");
    std::fs::hard_link(base.join("b/hl1"), base.join("b/hl2")).unwrap();
    // The top layer changes one file's owner and content.
    std::fs::create_dir_all(top.join("a")).unwrap();
    write(&top.join("a/top"), b"from the top layer\n");
    std::os::unix::fs::lchown(top.join("a/top"), Some(7), Some(8)).unwrap();
}

fn layers() -> Layers {
    let l = Layers::new(2);
    populate(&l);
    l
}

fn kernel(l: &Layers, extra: &str) -> KernelMount {
    l.mount_kernel(extra)
}

fn plyfs(l: &Layers, extra: &str) -> PlyfsMount {
    let o = if extra.is_empty() {
        l.options()
    } else {
        format!("{},{extra}", l.options())
    };
    PlyfsMount::start(&l.mnt, &o, &[]).expect("mount plyfs")
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The metadata-only changes both sides make in several scenarios.
fn meta_changes(m: &Path) {
    std::os::unix::fs::lchown(m.join("a/f"), Some(5), Some(6)).unwrap();
    chmod(&m.join("a/g"), 0o600);
    // utimes by path: opening for writing would copy the data.
    set_mtime(&m.join("a/h"), 1_000_000);
    set_xattr(&m.join("a/top"), "user.note", b"x").unwrap();
    chmod(&m.join("a/caps"), 0o750);
    chmod(&m.join("b/hl1"), 0o640);
}

/// Sets the mtime of `p` by path (utimensat), leaving atime alone.
fn set_mtime(p: &Path, secs: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: c is a NUL-terminated path and ts two valid timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Renames and links of metacopy files (redirects).
fn moves(m: &Path) {
    std::fs::rename(m.join("a/f"), m.join("a/f2")).unwrap();
    std::fs::rename(m.join("a/g"), m.join("c/g2")).unwrap();
    std::fs::hard_link(m.join("a/h"), m.join("c/h-link")).unwrap();
}

/// What an upper layer holds, with handle values (which differ between
/// trees) and the overlay's own uuid masked.
/// (path, size, xattrs) of every upper object.
type UpperView = Vec<(String, u64, Vec<(Vec<u8>, Vec<u8>)>)>;

fn upper_view(l: &Layers) -> UpperView {
    let mut out = Vec::new();
    for (p, e) in snapshot(&l.upper) {
        let x = e
            .xattrs
            .into_iter()
            .map(|(n, v)| {
                if n.ends_with(b".origin") || n.ends_with(b".uuid") {
                    (n, b"<varies>".to_vec())
                } else {
                    (n, v)
                }
            })
            .collect();
        out.push((String::from_utf8_lossy(&p).into_owned(), e.size, x));
    }
    out
}

type Snap = std::collections::BTreeMap<Vec<u8>, EntryInfo>;

fn assert_no_diff(a: &Snap, b: &Snap, an: &str, bn: &str) {
    let d = diff(a, b, an, bn);
    assert!(d.is_empty(), "{an} and {bn} differ:\n{d}");
}

/// Like [`assert_no_diff`] for trees that plyfs and the kernel (with
/// `index=off`) wrote on separate copies of the layers: the names of the
/// lower hard link `b/hl1`/`b/hl2` are left out, since the kernel breaks
/// the link on copy-up and plyfs keeps it (README, "Differences").
fn assert_no_diff_but_hardlinks(a: &Snap, b: &Snap, an: &str, bn: &str) {
    let strip = |s: &Snap| -> Snap {
        s.iter()
            .filter(|(p, _)| !p.starts_with(b"b/hl"))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    };
    assert_no_diff(&strip(a), &strip(b), an, bn);
}

/// chown, chmod, utimes and xattr changes of lower files copy metadata
/// only: the upper files are sparse placeholders carrying the marker, the
/// data still comes from below, and the kernel with `metacopy=on` shows
/// the same tree.
#[test]
fn metadata_changes_copy_no_data() {
    if !ready("metadata_changes_copy_no_data") {
        return;
    }
    let l = layers();
    let seen = {
        let m = plyfs(&l, "metacopy=on");
        meta_changes(&m.mnt);
        assert_eq!(std::fs::read(m.mnt.join("a/f")).unwrap(), big());
        assert_eq!(std::fs::metadata(m.mnt.join("a/f")).unwrap().uid(), 5);
        // st_blocks are the data's, as the kernel reports them.
        let lb = std::fs::metadata(l.lower(1).join("a/f")).unwrap().blocks();
        assert_eq!(std::fs::metadata(m.mnt.join("a/f")).unwrap().blocks(), lb);
        snapshot(&m.mnt)
    };
    for f in ["a/f", "a/g", "a/h", "a/top", "a/caps", "b/hl1"] {
        let p = l.upper.join(f);
        assert_eq!(
            get_xattr(&p, META).unwrap(),
            b"",
            "{f} has no metacopy marker"
        );
        let md = std::fs::metadata(&p).unwrap();
        // No data blocks: at most the block that may hold xattrs.
        assert!(md.blocks() <= 8, "{f}: {} blocks in the upper", md.blocks());
    }
    let k = kernel(&l, "redirect_dir=on,metacopy=on");
    assert_no_diff(
        &seen,
        &snapshot(&k.mnt),
        "plyfs",
        "kernel over plyfs's upper",
    );
    drop(k);
    let again = plyfs(&l, "metacopy=on");
    assert_no_diff(&seen, &snapshot(&again.mnt), "plyfs", "plyfs remount");
}

/// Without `metacopy=on`, a metacopy file in the upper layer is refused
/// with EPERM by plyfs as by the kernel, never served as the zeros of its
/// placeholder.
#[test]
fn metacopy_files_refused_without_metacopy_on() {
    if !ready("metacopy_files_refused_without_metacopy_on") {
        return;
    }
    let l = layers();
    {
        let m = plyfs(&l, "metacopy=on");
        meta_changes(&m.mnt);
    }
    // Reading, stat and a listing of the directory: what each gives.
    let probe = |mnt: &Path| -> Vec<(String, i32, i32)> {
        let mut v: Vec<(String, i32, i32)> = ["a/f", "a/g", "a/h", "a/top", "a/caps", "b/hl2", "c"]
            .iter()
            .map(|f| {
                let r = std::fs::read(mnt.join(f));
                let st = std::fs::symlink_metadata(mnt.join(f));
                (
                    f.to_string(),
                    r.err().map_or(0, |e| errno(&e)),
                    st.err().map_or(0, |e| errno(&e)),
                )
            })
            .collect();
        // The kernel looks entries of an impure directory up for d_ino:
        // the listing fails as a lookup does.
        let listing: std::io::Result<Vec<String>> =
            std::fs::read_dir(mnt.join("a")).and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            });
        match listing {
            Ok(mut names) => {
                names.sort();
                v.push((names.join(","), 0, 0));
            }
            Err(e) => v.push(("readdir a".into(), errno(&e), 0)),
        }
        v
    };
    let k = {
        let k = kernel(&l, "redirect_dir=on,metacopy=off");
        probe(&k.mnt)
    };
    let p = {
        let m = plyfs(&l, "");
        probe(&m.mnt)
    };
    assert_eq!(p, k, "plyfs without metacopy=on vs the kernel");
    assert_eq!(p[0].1, libc::EPERM, "a/f: {p:?}");
}

/// The kernel writes metacopy files (and renames and links them); plyfs
/// reads the same data, owners and modes, and refuses them without
/// `metacopy=on` as the kernel does.
#[test]
fn kernel_metacopy_upper_read_by_plyfs() {
    if !ready("kernel_metacopy_upper_read_by_plyfs") {
        return;
    }
    let l = layers();
    let expected = {
        let k = kernel(&l, "redirect_dir=on,metacopy=on");
        meta_changes(&k.mnt);
        moves(&k.mnt);
        snapshot(&k.mnt)
    };
    assert_eq!(get_xattr(&l.upper.join("a/f2"), REDIRECT).unwrap(), b"f");
    assert_eq!(get_xattr(&l.upper.join("c/g2"), REDIRECT).unwrap(), b"/a/g");
    {
        let m = plyfs(&l, "metacopy=on");
        assert_no_diff(
            &expected,
            &snapshot(&m.mnt),
            "kernel",
            "plyfs over the kernel's upper",
        );
        assert_eq!(std::fs::read(m.mnt.join("a/f2")).unwrap(), big());
    }
    let m = plyfs(&l, "");
    for f in ["a/f2", "c/g2", "c/h-link"] {
        let e = std::fs::read(m.mnt.join(f)).unwrap_err();
        assert_eq!(errno(&e), libc::EPERM, "{f}");
    }
}

/// Renames and hard links of metacopy files record the redirects the
/// kernel records: the same operations on copies of the same layers leave
/// the same upper layers (markers, redirects, sizes).
#[test]
fn renames_and_links_record_kernel_redirects() {
    if !ready("renames_and_links_record_kernel_redirects") {
        return;
    }
    let (lp, lk) = (layers(), layers());
    let sp = {
        let m = plyfs(&lp, "metacopy=on");
        meta_changes(&m.mnt);
        moves(&m.mnt);
        // A rename of a lower file that was not changed before: metadata
        // copy-up and a redirect, no data.
        std::fs::rename(m.mnt.join("a/caps"), m.mnt.join("c/caps2")).unwrap();
        snapshot(&m.mnt)
    };
    let sk = {
        let k = kernel(&lk, "redirect_dir=on,metacopy=on");
        meta_changes(&k.mnt);
        moves(&k.mnt);
        std::fs::rename(k.mnt.join("a/caps"), k.mnt.join("c/caps2")).unwrap();
        snapshot(&k.mnt)
    };
    assert_no_diff_but_hardlinks(&sp, &sk, "plyfs", "kernel");
    // Hard links inside a lower layer: plyfs keeps them together (see
    // README), so its upper differs there; everything else is the same.
    let strip = |v: UpperView| -> UpperView {
        v.into_iter()
            .filter(|(p, _, _)| !p.starts_with("b/hl"))
            .collect()
    };
    assert_eq!(strip(upper_view(&lp)), strip(upper_view(&lk)));
    let k = kernel(&lp, "redirect_dir=on,metacopy=on");
    assert_no_diff(&sp, &snapshot(&k.mnt), "plyfs", "kernel over plyfs's upper");
}

/// Opening a metacopy file for writing copies its data into the upper
/// file (in place, as the kernel does), drops the marker and keeps
/// `security.capability`; truncation copies as well. The kernel does the
/// same on a copy of the layers.
#[test]
fn write_and_truncate_copy_the_data() {
    if !ready("write_and_truncate_copy_the_data") {
        return;
    }
    let script = |m: &Path| {
        meta_changes(m);
        // Open for writing without writing: the data is copied.
        drop(
            std::fs::File::options()
                .read(true)
                .write(true)
                .open(m.join("a/caps"))
                .unwrap(),
        );
        let mut f = std::fs::File::options()
            .append(true)
            .open(m.join("a/g"))
            .unwrap();
        f.write_all(b"appended\n").unwrap();
        drop(f);
        std::fs::File::options()
            .write(true)
            .open(m.join("a/h"))
            .unwrap()
            .set_len(3)
            .unwrap();
        std::fs::File::options()
            .write(true)
            .truncate(true)
            .open(m.join("a/top"))
            .unwrap();
    };
    let (lp, lk) = (layers(), layers());
    let sp = {
        let m = plyfs(&lp, "metacopy=on");
        script(&m.mnt);
        assert_eq!(
            std::fs::read(m.mnt.join("a/g")).unwrap(),
            b"small data\nappended\n"
        );
        assert_eq!(std::fs::read(m.mnt.join("a/h")).unwrap(), b"to ");
        snapshot(&m.mnt)
    };
    let sk = {
        let k = kernel(&lk, "redirect_dir=on,metacopy=on");
        script(&k.mnt);
        snapshot(&k.mnt)
    };
    assert_no_diff_but_hardlinks(&sp, &sk, "plyfs", "kernel");
    for f in ["a/caps", "a/g", "a/h", "a/top"] {
        let e = get_xattr(&lp.upper.join(f), META).unwrap_err();
        assert_eq!(errno(&e), libc::ENODATA, "{f} still has the marker");
    }
    assert!(get_xattr(&lp.upper.join("a/caps"), "security.capability").is_ok());
    // The file still only changed in metadata keeps its marker.
    assert!(get_xattr(&lp.upper.join("a/f"), META).is_ok());
    assert_eq!(
        std::fs::read(lp.upper.join("a/caps")).unwrap(),
        b"#!/bin/true\n",
        "data copied into the upper file"
    );
}

/// A descriptor opened for reading on a metacopy file reads the lower
/// data, and keeps reading the right data after another descriptor wrote
/// (the data was copied up meanwhile).
#[test]
fn read_descriptor_follows_data_copy_up() {
    if !ready("read_descriptor_follows_data_copy_up") {
        return;
    }
    let l = layers();
    let m = plyfs(&l, "metacopy=on");
    chmod(&m.mnt.join("a/g"), 0o644);
    let r = std::fs::File::open(m.mnt.join("a/g")).unwrap();
    let mut buf = [0u8; 5];
    std::os::unix::fs::FileExt::read_exact_at(&r, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"small");
    // fstat through the descriptor: the metadata file's attributes.
    assert_eq!(r.metadata().unwrap().permissions().mode() & 0o777, 0o644);
    let mut w = std::fs::File::options()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.mnt.join("a/g"))
        .unwrap();
    w.write_all(b"SMALL").unwrap();
    drop(w);
    std::os::unix::fs::FileExt::read_exact_at(&r, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"SMALL");
}

// ---- data-only lower layers ---------------------------------------------------------

/// A composefs-style image: a metadata layer of metacopy files whose
/// absolute redirects point into data-only layers (objects by hash).
struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::Builder::new()
            .prefix("plyfs-test-image-")
            .tempdir_in(test_root())
            .unwrap();
        let p = dir.path();
        for d in [
            "meta/etc", "meta/bin", "d1/ab", "d2/cd", "d2/ab", "mnt", "upper", "work", "l2",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        write(&p.join("d1/ab/0001"), b"config from d1\n");
        write(&p.join("d2/ab/0001"), b"shadowed by d1\n");
        write(&p.join("d2/cd/0002"), b"binary from d2\n");
        write(&p.join("d2/cd/0003"), b"not a redirect target\n");
        std::os::unix::fs::symlink("0002", p.join("d2/cd/link")).unwrap();
        let meta = |name: &str, size: u64, redirect: Option<&str>, mode: u32| {
            let f = p.join("meta").join(name);
            std::fs::File::create(&f).unwrap().set_len(size).unwrap();
            chmod(&f, mode);
            set_xattr(&f, META, b"").unwrap();
            if let Some(r) = redirect {
                set_xattr(&f, REDIRECT, r.as_bytes()).unwrap();
            }
        };
        meta("etc/conf", 15, Some("/ab/0001"), 0o640);
        meta("bin/tool", 15, Some("/cd/0002"), 0o755);
        meta("etc/missing", 4, Some("/ab/9999"), 0o644);
        meta("etc/relative", 22, Some("0003"), 0o644);
        meta("etc/via-link", 15, Some("/cd/link"), 0o644);
        write(&p.join("meta/etc/plain"), b"a plain file\n");
        Image { dir }
    }

    fn p(&self, s: &str) -> String {
        self.dir.path().join(s).display().to_string()
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

/// What each name of the image shows: contents, or the errno of reading.
/// (path, contents or errno, mode) of each name of the image.
type ImageView = Vec<(String, Result<Vec<u8>, i32>, Option<u32>)>;

fn image_view(mnt: &Path) -> ImageView {
    let mut out = Vec::new();
    for f in [
        "etc/conf",
        "bin/tool",
        "etc/missing",
        "etc/relative",
        "etc/via-link",
        "etc/plain",
        "ab",
        "cd",
    ] {
        let r = std::fs::read(mnt.join(f)).map_err(|e| errno(&e));
        let mode = std::fs::symlink_metadata(mnt.join(f))
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
        out.push((f.to_string(), r, mode));
    }
    out
}

/// `lowerdir=meta::d1::d2` and the new API's `lowerdir+=`/`datadir+=`:
/// plyfs shows what the kernel shows (data through absolute redirects,
/// data-only layers invisible, missing data ENOENT, relative redirects
/// refused), with and without `metacopy=on`.
#[test]
fn data_only_layers_like_the_kernel() {
    if !ready("data_only_layers_like_the_kernel") {
        return;
    }
    let img = Image::new();
    let legacy = format!(
        "lowerdir={}::{}::{}",
        img.p("meta"),
        img.p("d1"),
        img.p("d2")
    );
    let append = format!(
        "lowerdir+={},datadir+={},datadir+={}",
        img.p("meta"),
        img.p("d1"),
        img.p("d2")
    );
    for (opts, extra) in [
        (&legacy, ""),
        (&legacy, ",metacopy=on"),
        (&append, ""),
        (
            &legacy,
            &*format!(",upperdir={},workdir={}", img.p("upper"), img.p("work")),
        ),
    ] {
        let o = format!("{opts}{extra}");
        let k = {
            let _k = KernelMount::mount(&img.mnt(), &o).unwrap();
            image_view(&img.mnt())
        };
        let p = {
            let _m = PlyfsMount::start(&img.mnt(), &o, &[]).expect("mount plyfs");
            image_view(&img.mnt())
        };
        assert_eq!(p, k, "options {o}");
        assert_eq!(p[0].1, Ok(b"config from d1\n".to_vec()), "{o}");
    }
}

/// A metadata layer with two regular layers needs `metacopy=on` for
/// metacopy files (EPERM otherwise, as in the kernel); a regular layer
/// after a data-only one is refused by both.
#[test]
fn data_only_layers_refusals() {
    if !ready("data_only_layers_refusals") {
        return;
    }
    let img = Image::new();
    let two = format!(
        "lowerdir={}:{}::{}",
        img.p("meta"),
        img.p("l2"),
        img.p("d1")
    );
    for extra in ["", ",metacopy=on"] {
        let o = format!("{two}{extra}");
        let k = {
            let _k = KernelMount::mount(&img.mnt(), &o).unwrap();
            image_view(&img.mnt())
        };
        let _m = PlyfsMount::start(&img.mnt(), &o, &[]).expect("mount plyfs");
        assert_eq!(image_view(&img.mnt()), k, "options {o}");
    }
    for bad in [
        format!(
            "lowerdir={}::{}:{}",
            img.p("meta"),
            img.p("d1"),
            img.p("l2")
        ),
        format!("lowerdir={}:::{}", img.p("meta"), img.p("d1")),
        format!("lowerdir={},lowerdir+={}", img.p("meta"), img.p("l2")),
        format!(
            "lowerdir+={},datadir+={},lowerdir+={}",
            img.p("meta"),
            img.p("d1"),
            img.p("l2")
        ),
    ] {
        assert!(
            KernelMount::mount(&img.mnt(), &bad).is_err(),
            "kernel took {bad}"
        );
        assert!(
            PlyfsMount::start(&img.mnt(), &bad, &[]).is_err(),
            "plyfs took {bad}"
        );
    }
}

/// With an upper layer and `metacopy=on`, chmod of an image file copies
/// its metadata only (the data stays in the data-only layer) and a write
/// copies the data from the data-only layer; the kernel reads the result.
#[test]
fn data_only_layers_copy_up() {
    if !ready("data_only_layers_copy_up") {
        return;
    }
    let img = Image::new();
    let o = format!(
        "lowerdir={}::{}::{},upperdir={},workdir={},metacopy=on",
        img.p("meta"),
        img.p("d1"),
        img.p("d2"),
        img.p("upper"),
        img.p("work")
    );
    let seen = {
        let _m = PlyfsMount::start(&img.mnt(), &o, &[]).expect("mount plyfs");
        let m = img.mnt();
        chmod(&m.join("etc/conf"), 0o600);
        let mut f = std::fs::File::options()
            .append(true)
            .open(m.join("bin/tool"))
            .unwrap();
        f.write_all(b"+patch\n").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read(m.join("etc/conf")).unwrap(),
            b"config from d1\n"
        );
        assert_eq!(
            std::fs::read(m.join("bin/tool")).unwrap(),
            b"binary from d2\n+patch\n"
        );
        image_view(&m)
    };
    let up = img.dir.path().join("upper");
    assert!(get_xattr(&up.join("etc/conf"), META).is_ok());
    assert!(get_xattr(&up.join("bin/tool"), META).is_err());
    assert_eq!(
        std::fs::read(up.join("bin/tool")).unwrap(),
        b"binary from d2\n+patch\n"
    );
    let _k = KernelMount::mount(&img.mnt(), &o).unwrap();
    assert_eq!(image_view(&img.mnt()), seen);
}

// ---- verity ------------------------------------------------------------------------

/// `verity=require`: a metacopy file without a digest is refused on open
/// (EIO), and a metacopy copy-up copies the data instead when the lower
/// file has no fs-verity digest: the same as the kernel. (This kernel and
/// filesystem have no fs-verity, so digests cannot be made here.)
#[test]
fn verity_require_like_the_kernel() {
    if !ready("verity_require_like_the_kernel") {
        return;
    }
    let script = |m: &Path| -> Vec<i32> {
        std::os::unix::fs::lchown(m.join("a/f"), Some(5), Some(6)).unwrap();
        let r = std::fs::read(m.join("a/f")).err().map_or(0, |e| errno(&e));
        vec![r]
    };
    let (lp, lk) = (layers(), layers());
    let rp = {
        let m = plyfs(&lp, "metacopy=on,verity=require");
        script(&m.mnt)
    };
    let rk = {
        let k = kernel(&lk, "redirect_dir=on,metacopy=on,verity=require");
        script(&k.mnt)
    };
    assert_eq!(rp, rk);
    assert_eq!(
        get_xattr(&lp.upper.join("a/f"), META).is_ok(),
        get_xattr(&lk.upper.join("a/f"), META).is_ok()
    );
    // A metacopy upper made without verity, opened with verity=require.
    let l = layers();
    {
        let m = plyfs(&l, "metacopy=on");
        std::os::unix::fs::lchown(m.mnt.join("a/f"), Some(5), Some(6)).unwrap();
    }
    let k = {
        let _k = kernel(&l, "redirect_dir=on,metacopy=on,verity=require");
        std::fs::read(l.mnt.join("a/f")).err().map(|e| errno(&e))
    };
    let m = plyfs(&l, "metacopy=on,verity=require");
    let p = std::fs::read(m.mnt.join("a/f")).err().map(|e| errno(&e));
    assert_eq!(p, k);
    assert_eq!(p, Some(libc::EIO));
}

// ---- plyfs diff / apply ------------------------------------------------------------

fn run_plyfs(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let o = std::process::Command::new(PLYFS)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run plyfs");
    assert!(
        o.status.success(),
        "plyfs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `plyfs diff` of an upper holding metacopy files whose data is in a
/// lower layer (chown of a plain lower file) or at the end of a chain (a
/// metacopy lower file redirected into a data-only layer, given after `::`
/// as in `lowerdir=`): the layer carries the data, never the zeros of the
/// placeholders, and `plyfs apply` of it over the flattened image gives
/// the tree the mount showed.
#[test]
fn diff_carries_metacopy_data_from_lower_and_data_only_layers() {
    if !ready("diff_carries_metacopy_data_from_lower_and_data_only_layers") {
        return;
    }
    let img = Image::new();
    let o = format!(
        "lowerdir={}::{}::{},upperdir={},workdir={},metacopy=on",
        img.p("meta"),
        img.p("d1"),
        img.p("d2"),
        img.p("upper"),
        img.p("work")
    );
    let m = img.mnt();
    let (conf, tool) = {
        let _m = PlyfsMount::start(&m, &o, &[]).expect("mount plyfs");
        chmod(&m.join("etc/conf"), 0o600);
        std::os::unix::fs::lchown(m.join("bin/tool"), Some(3), Some(4)).unwrap();
        std::fs::rename(m.join("bin/tool"), m.join("etc/tool")).unwrap();
        chmod(&m.join("etc/plain"), 0o600);
        (
            std::fs::read(m.join("etc/conf")).unwrap(),
            std::fs::read(m.join("etc/tool")).unwrap(),
        )
    };
    assert_eq!(conf, b"config from d1\n");
    assert_eq!(tool, b"binary from d2\n");
    let up = img.dir.path().join("upper");
    for f in ["etc/conf", "etc/tool", "etc/plain"] {
        assert!(get_xattr(&up.join(f), META).is_ok(), "{f} is not metacopy");
    }
    let layer = img.dir.path().join("layer.tar");
    let lower = format!("{}::{}::{}", img.p("meta"), img.p("d1"), img.p("d2"));
    let out = run_plyfs(&[
        "diff".as_ref(),
        "-v".as_ref(),
        "--lower".as_ref(),
        lower.as_ref(),
        up.as_os_str(),
        "-o".as_ref(),
        layer.as_os_str(),
    ]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("3 metacopy files"), "{summary}");
    // Without the data-only layers the chain has no end: refused, not zeros.
    let short = std::process::Command::new(PLYFS)
        .args([
            "diff".as_ref(),
            "--lower".as_ref(),
            img.p("meta").as_ref(),
            up.as_os_str(),
        ])
        .args(["-o".as_ref(), img.dir.path().join("bad.tar").as_os_str()])
        .output()
        .unwrap();
    assert!(
        !short.status.success(),
        "diff without the data layers succeeded"
    );
    // Applied as a new layer over a flattened copy of the image (data-only
    // layers are not part of the merged tree: the metadata layer with its
    // data filled in), kernel overlayfs and plyfs show what the mount
    // showed.
    let flat = img.dir.path().join("flat");
    for d in ["etc", "bin"] {
        std::fs::create_dir_all(flat.join(d)).unwrap();
    }
    write(&flat.join("etc/conf"), b"config from d1\n");
    write(&flat.join("bin/tool"), b"binary from d2\n");
    write(&flat.join("etc/plain"), b"a plain file\n");
    let applied = img.dir.path().join("applied");
    std::fs::create_dir(&applied).unwrap();
    run_plyfs(&["apply".as_ref(), layer.as_os_str(), applied.as_os_str()]);
    let ro = format!("lowerdir={}:{}", applied.display(), flat.display());
    let check = |who: &str| {
        assert_eq!(
            std::fs::read(m.join("etc/conf")).unwrap(),
            b"config from d1\n",
            "{who}"
        );
        assert_eq!(
            std::fs::read(m.join("etc/tool")).unwrap(),
            b"binary from d2\n",
            "{who}"
        );
        assert!(
            !m.join("bin/tool").exists(),
            "{who}: old name of the rename is back"
        );
        assert_eq!(
            std::fs::read(m.join("etc/plain")).unwrap(),
            b"a plain file\n",
            "{who}"
        );
        let md = std::fs::metadata(m.join("etc/tool")).unwrap();
        assert_eq!((md.uid(), md.gid()), (3, 4), "{who}");
        let mode = |f: &str| std::fs::metadata(m.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode("etc/conf"), mode("etc/plain")),
            (0o600, 0o600),
            "{who}"
        );
    };
    {
        let _k = KernelMount::mount(&m, &ro).unwrap();
        check("kernel");
    }
    let _p = PlyfsMount::start(&m, &ro, &[]).expect("mount plyfs");
    check("plyfs");
}
