//! The inode index (`index=on`) against kernel overlayfs on the same
//! directories: lower hard links copied up by one stay one file for the
//! other, with the kernel's link counts (`overlay.nlink`), and the layers
//! an index belongs to are checked at mount as the kernel checks them.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn ready(name: &str) -> bool {
    require_root(name) && require_fuse(name)
}

/// A lower layer with one file under three names (a/x, b/y, z), another
/// pair (p/q1, p/q2) of which one name is hidden by a whiteout in a layer
/// above, and a plain file.
fn layers() -> Layers {
    let l = Layers::new(2);
    let base = l.lower(1);
    for d in ["a", "b", "p"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    write(&base.join("a/x"), b"linked\n");
    std::fs::hard_link(base.join("a/x"), base.join("b/y")).unwrap();
    std::fs::hard_link(base.join("a/x"), base.join("z")).unwrap();
    write(&base.join("p/q1"), b"half hidden\n");
    std::fs::hard_link(base.join("p/q1"), base.join("p/q2")).unwrap();
    write(&base.join("plain"), b"plain\n");
    std::fs::create_dir_all(l.lower(0).join("p")).unwrap();
    whiteout(&l.lower(0).join("p/q2"));
    l
}

/// (path, st_nlink, st_ino, mode, content) of every non-directory.
type Facts = Vec<(String, u64, u64, u32, Vec<u8>)>;

fn facts(mnt: &Path) -> Facts {
    let mut out = Vec::new();
    for f in ["a/x", "b/y", "z", "p/q1", "p/q2", "plain"] {
        if let Ok(md) = std::fs::symlink_metadata(mnt.join(f)) {
            out.push((
                f.to_string(),
                md.nlink(),
                md.ino(),
                md.permissions().mode() & 0o7777,
                std::fs::read(mnt.join(f)).unwrap_or_default(),
            ));
        }
    }
    out
}

/// Inode numbers differ between the implementations with index=on (plyfs
/// keeps the lower number, the kernel too, but they are not compared
/// across trees): which names share one is compared instead.
/// (path, st_nlink, names sharing its inode, mode, content).
type Shape = Vec<(String, u64, Vec<String>, u32, Vec<u8>)>;

fn shape(f: &Facts) -> Shape {
    f.iter()
        .map(|(p, n, ino, mode, data)| {
            let same: Vec<String> = f
                .iter()
                .filter(|o| o.2 == *ino)
                .map(|o| o.0.clone())
                .collect();
            (p.clone(), *n, same, *mode, data.clone())
        })
        .collect()
}

fn plyfs(l: &Layers, extra: &str) -> PlyfsMount {
    PlyfsMount::start(&l.mnt, &format!("{},{extra}", l.options()), &[]).expect("mount plyfs")
}

/// Changes through one name of each hard-linked file, then an unlink.
fn script(m: &Path) {
    std::fs::set_permissions(m.join("a/x"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut data = std::fs::read(m.join("b/y")).unwrap();
    data.extend_from_slice(b"more\n");
    std::fs::write(m.join("b/y"), &data).unwrap();
    std::fs::write(m.join("p/q1"), b"rewritten\n").unwrap();
    std::fs::remove_file(m.join("z")).unwrap();
}

/// The same writes on plyfs and on the kernel, both with `index=on`, show
/// the same names, link counts (the kernel's: hidden names count until
/// removed through the overlay), data and modes; each then reads the
/// layers the other wrote the same way.
#[test]
fn index_on_matches_the_kernel_both_ways() {
    if !ready("index_on_matches_the_kernel_both_ways") {
        return;
    }
    let (lp, lk) = (layers(), layers());
    let (before_p, after_p) = {
        let m = plyfs(&lp, "index=on");
        let b = facts(&m.mnt);
        script(&m.mnt);
        (b, facts(&m.mnt))
    };
    let (before_k, after_k) = {
        let k = lk.mount_kernel("index=on,redirect_dir=on");
        let b = facts(&k.mnt);
        script(&k.mnt);
        (b, facts(&k.mnt))
    };
    assert_eq!(shape(&before_p), shape(&before_k), "before the writes");
    assert_eq!(shape(&after_p), shape(&after_k), "after the writes");
    // p/q1's other name is hidden: the kernel still counts it (2).
    assert_eq!(after_p.iter().find(|f| f.0 == "p/q1").unwrap().1, 2);
    assert!(
        std::fs::read_dir(lp.work.join("index")).unwrap().count() >= 2,
        "plyfs made no index entries"
    );
    // Each reads the other's layers.
    {
        let k = lp.mount_kernel("index=on,redirect_dir=on");
        assert_eq!(
            shape(&facts(&k.mnt)),
            shape(&after_p),
            "kernel over plyfs's layers"
        );
    }
    let m = plyfs(&lk, "index=on");
    assert_eq!(
        shape(&facts(&m.mnt)),
        shape(&after_k),
        "plyfs over the kernel's layers"
    );
}

/// Names the kernel's index holds but never linked into the upper (only
/// one name was written to) are the same file under plyfs, with or without
/// `index=on`; a change through one of them keeps them together for the
/// kernel as well.
#[test]
fn kernel_index_entries_read_by_plyfs() {
    if !ready("kernel_index_entries_read_by_plyfs") {
        return;
    }
    let l = layers();
    let expected = {
        let k = l.mount_kernel("index=on,redirect_dir=on");
        std::fs::set_permissions(k.mnt.join("a/x"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(k.mnt.join("a/x"), b"new data\n").unwrap();
        facts(&k.mnt)
    };
    assert!(!l.upper.join("b/y").exists(), "the kernel linked b/y up");
    for opts in ["index=on", "index=off"] {
        let m = plyfs(&l, opts);
        assert_eq!(shape(&facts(&m.mnt)), shape(&expected), "plyfs with {opts}");
    }
    {
        let m = plyfs(&l, "index=on");
        std::fs::set_permissions(m.mnt.join("z"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::remove_file(m.mnt.join("b/y")).unwrap();
    }
    let k = l.mount_kernel("index=on,redirect_dir=on");
    let f = facts(&k.mnt);
    let x = f.iter().find(|e| e.0 == "a/x").unwrap();
    let z = f.iter().find(|e| e.0 == "z").unwrap();
    assert_eq!(
        (x.1, x.3, &x.4[..]),
        (2, 0o640, &b"new data\n"[..]),
        "{f:?}"
    );
    assert_eq!(x.2, z.2);
    assert!(!k.mnt.join("b/y").exists());
}

/// An upper used with `index=on` remembers its lower layers: mounting it
/// over other lower layers with `index=on` is refused by both.
#[test]
fn index_refuses_other_lower_layers() {
    if !ready("index_refuses_other_lower_layers") {
        return;
    }
    let l = layers();
    {
        let _m = plyfs(&l, "index=on");
    }
    let other = Layers::new(1);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=on",
        other.lower(0).display(),
        l.upper.display(),
        l.work.display()
    );
    assert!(
        KernelMount::mount(&l.mnt, &opts).is_err(),
        "kernel mounted it"
    );
    let e = PlyfsMount::start(&l.mnt, &opts, &[])
        .err()
        .expect("plyfs mounted it");
    assert!(e.contains("index=on"), "{e}");
    // Without the index both mount it.
    let off = opts.replace("index=on", "index=off");
    drop(KernelMount::mount(&l.mnt, &off).expect("kernel index=off"));
    drop(PlyfsMount::start(&l.mnt, &off, &[]).expect("plyfs index=off"));
}
