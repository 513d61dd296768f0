//! Inode numbers and devices: unique across the mount, stable for a file's
//! life (copy-up, rename, cache eviction), shared by hard links, one st_dev.

mod common;
mod sem;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use sem::*;

/// Every path below `root` (root included) with its lstat.
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = vec![(root.to_path_buf(), lstat(root).unwrap())];
    let mut i = 0;
    while i < out.len() {
        let (p, md) = out[i].clone();
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let q = e.unwrap().path();
                let md = lstat(&q).unwrap();
                out.push((q, md));
            }
        }
        i += 1;
    }
    out
}

/// Asserts that no two distinct objects share an inode number. Objects
/// with nlink > 1 are allowed to share only with paths of identical
/// content (their hard links).
fn assert_unique_inos(root: &Path) -> usize {
    let all = walk(root);
    let mut by_ino: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for (p, md) in &all {
        by_ino.entry(md.ino()).or_default().push(p);
    }
    for (ino, paths) in &by_ino {
        if paths.len() > 1 {
            let md = lstat(paths[0]).unwrap();
            assert!(
                md.is_file() && md.nlink() as usize >= paths.len(),
                "st_ino {ino} shared by distinct objects: {paths:?}"
            );
        }
    }
    all.len()
}

/// Drops the kernel's dentry/inode caches so FUSE forgets its nodes and
/// has to look names up again.
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches");
}

fn ino(p: &Path) -> u64 {
    lstat(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

fn populate(l: &Layers) {
    for (i, layer) in [&l.upper, &l.lowers[0], &l.lowers[1]].iter().enumerate() {
        for j in 0..20 {
            write(
                &layer.join(format!("shared/f{j}")),
                format!("{i}").as_bytes(),
            );
            write(&layer.join(format!("own{i}/f{j}")), b"x");
        }
        std::os::unix::fs::symlink("f0", layer.join(format!("shared/l{i}"))).unwrap();
        std::fs::create_dir_all(layer.join(format!("shared/d{i}/sub"))).unwrap();
    }
}

#[test]
fn inode_numbers_are_unique_across_the_mount() {
    let l = Layers::new(2);
    populate(&l);
    let m = l.mount();
    // Mix in copied-up, new, and renamed objects.
    std::fs::write(m.mnt.join("own1/f3"), b"copied").unwrap();
    std::fs::write(m.mnt.join("own2/new"), b"new").unwrap();
    std::fs::rename(m.mnt.join("own2/f4"), m.mnt.join("own0/moved")).unwrap();
    std::fs::create_dir(m.mnt.join("shared/newdir")).unwrap();
    let n = assert_unique_inos(&m.mnt);
    assert!(n > 90, "walked only {n} entries");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let before: Vec<u64> = walk(&m.mnt).iter().map(|(_, md)| md.ino()).collect();
        drop_caches();
        let after: Vec<u64> = walk(&m.mnt).iter().map(|(_, md)| md.ino()).collect();
        assert_eq!(before, after, "numbers changed after cache eviction");
    }
}

/// A tmpfs mounted on `dir` (root only); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

#[test]
fn inode_numbers_are_unique_when_layers_are_on_different_filesystems() {
    if !require_root("inode_numbers_are_unique_when_layers_are_on_different_filesystems") {
        return;
    }
    // Two fresh tmpfs instances hand out the same inode numbers for files
    // created in the same order, so the real numbers collide.
    let l = Layers::new(2);
    let _t0 = Tmpfs::mount(l.lower(0));
    let _t1 = Tmpfs::mount(l.lower(1));
    for lo in &l.lowers {
        for j in 0..30 {
            write(&lo.join(format!("f{j}")), b"x");
        }
    }
    for j in 0..15 {
        write(&l.lower(1).join(format!("only1-{j}")), b"x");
        write(&l.lower(0).join(format!("sub/only0-{j}")), b"x");
    }
    assert_eq!(ino(&l.lower(0).join("f3")), ino(&l.lower(1).join("f3")));
    let m = l.mount();
    let n = assert_unique_inos(&m.mnt);
    assert!(n > 50);
    std::fs::write(m.mnt.join("only1-2"), b"copied up").unwrap();
    std::fs::write(m.mnt.join("newfile"), b"n").unwrap();
    assert_unique_inos(&m.mnt);
}

#[test]
fn inode_number_is_stable_across_copy_up() {
    let l = Layers::new(2);
    write(&l.lower(1).join("d/f"), b"lower");
    write(&l.lower(0).join("d/g"), b"lower");
    std::os::unix::fs::symlink("f", l.lower(1).join("d/link")).unwrap();
    let m = l.mount();
    let d = m.mnt.join("d");
    let before: Vec<u64> = ["", "f", "g", "link"]
        .iter()
        .map(|n| ino(&d.join(n)))
        .collect();
    std::fs::write(d.join("f"), b"now in upper").unwrap();
    std::fs::set_permissions(d.join("g"), PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(d.join("link"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&d, PermissionsExt::from_mode(0o700)).unwrap();
    assert!(l.upper.join("d/f").exists() && l.upper.join("d/g").exists());
    let after: Vec<u64> = ["", "f", "g", "link"]
        .iter()
        .map(|n| ino(&d.join(n)))
        .collect();
    assert_eq!(before, after);
    // An open fd's fstat agrees too.
    let f = std::fs::File::open(d.join("f")).unwrap();
    assert_eq!(f.metadata().unwrap().ino(), before[1]);
}

#[test]
fn inode_number_is_stable_across_cache_eviction_and_rename() {
    if !require_root("inode_number_is_stable_across_cache_eviction_and_rename") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/lowfile"), b"lower");
    write(&l.lower(0).join("d/copied"), b"lower");
    write(&l.upper.join("d/upfile"), b"upper");
    let m = l.mount();
    let d = m.mnt.join("d");
    std::fs::write(d.join("new"), b"new").unwrap();
    let names = ["", "lowfile", "copied", "upfile", "new"];
    let before: Vec<u64> = names.iter().map(|n| ino(&d.join(n))).collect();
    std::fs::write(d.join("copied"), b"copied up").unwrap();
    drop_caches();
    let after: Vec<u64> = names.iter().map(|n| ino(&d.join(n))).collect();
    assert_eq!(before, after, "after copy-up + cache eviction");
    std::fs::rename(d.join("copied"), m.mnt.join("renamed")).unwrap();
    std::fs::rename(d.join("new"), d.join("new2")).unwrap();
    drop_caches();
    assert_eq!(ino(&m.mnt.join("renamed")), before[2]);
    assert_eq!(ino(&d.join("new2")), before[4]);
}

#[test]
fn hard_links_share_inode_number_and_count_links() {
    let l = Layers::new(1);
    write(&l.upper.join("a"), b"pre-existing upper link");
    std::fs::hard_link(l.upper.join("a"), l.upper.join("b")).unwrap();
    write(&l.lower(0).join("c"), b"lower");
    let m = l.mount();
    let (a, b) = (
        lstat(&m.mnt.join("a")).unwrap(),
        lstat(&m.mnt.join("b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!((a.nlink(), b.nlink()), (2, 2));

    std::fs::hard_link(m.mnt.join("c"), m.mnt.join("c2")).unwrap();
    std::fs::write(m.mnt.join("new"), b"n").unwrap();
    std::fs::hard_link(m.mnt.join("new"), m.mnt.join("new2")).unwrap();
    std::fs::hard_link(m.mnt.join("new"), m.mnt.join("new3")).unwrap();
    for (x, y, n) in [("c", "c2", 2), ("new", "new3", 3), ("new2", "new3", 3)] {
        let (mx, my) = (
            lstat(&m.mnt.join(x)).unwrap(),
            lstat(&m.mnt.join(y)).unwrap(),
        );
        assert_eq!(mx.ino(), my.ino(), "{x} vs {y}");
        assert_eq!((mx.nlink(), my.nlink()), (n, n), "{x} vs {y}");
    }
    std::fs::remove_file(m.mnt.join("new2")).unwrap();
    assert_eq!(lstat(&m.mnt.join("new")).unwrap().nlink(), 2);
    std::fs::remove_file(m.mnt.join("a")).unwrap();
    assert_eq!(lstat(&m.mnt.join("b")).unwrap().nlink(), 1);
    assert_unique_inos(&m.mnt);
}

#[test]
fn lower_hard_links_match_kernel() {
    if !require_root("lower_hard_links_match_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("x"), b"linked in lower");
        std::fs::hard_link(l.lower(0).join("x"), l.lower(0).join("y")).unwrap();
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        let (x, y) = (
            lstat(&mnt.join("x")).unwrap(),
            lstat(&mnt.join("y")).unwrap(),
        );
        (x.ino() == y.ino(), x.nlink(), y.nlink())
    });
    assert_eq!(p, k);
}

#[test]
fn st_dev_is_the_same_for_the_whole_mount() {
    if !require_root("st_dev_is_the_same_for_the_whole_mount") {
        return;
    }
    let l = Layers::new(2);
    populate(&l);
    // One lower on another filesystem.
    let _t = Tmpfs::mount(l.lower(1));
    write(&l.lower(1).join("tmpfs-file"), b"t");
    write(&l.lower(1).join("shared/f0"), b"t");
    let m = l.mount();
    std::fs::write(m.mnt.join("own0/f1"), b"copied").unwrap();
    let dev = lstat(&m.mnt).unwrap().dev();
    for (p, md) in walk(&m.mnt) {
        assert_eq!(md.dev(), dev, "{} has another st_dev", p.display());
    }
    let f = std::fs::File::open(m.mnt.join("tmpfs-file")).unwrap();
    assert_eq!(f.metadata().unwrap().dev(), dev, "fstat");
}

#[test]
fn inode_numbers_are_unique_when_upper_and_lower_numbers_collide() {
    if !require_root("inode_numbers_are_unique_when_upper_and_lower_numbers_collide") {
        return;
    }
    // Upper+work on one fresh tmpfs, the lower on another: both hand out
    // the same small inode numbers.
    let l = Layers::new(1);
    let _tl = Tmpfs::mount(l.lower(0));
    let updir = l.dir.path().join("upfs");
    std::fs::create_dir(&updir).unwrap();
    let _tu = Tmpfs::mount(&updir);
    let (upper, work) = (updir.join("upper"), updir.join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    for j in 0..30 {
        write(&l.lower(0).join(format!("l{j}")), b"lower");
        write(&upper.join(format!("u{j}")), b"upper");
    }
    write(&l.lower(0).join("d/x"), b"");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lower(0).display(),
        upper.display(),
        work.display()
    );
    let m = PlyfsMount::start(&l.mnt, &opts, &[]).unwrap();
    assert_unique_inos(&m.mnt);
    let before = ino(&m.mnt.join("l5"));
    for j in 0..10 {
        std::fs::write(m.mnt.join(format!("l{j}")), b"copied").unwrap();
        std::fs::write(m.mnt.join(format!("new{j}")), b"new").unwrap();
    }
    std::fs::write(m.mnt.join("d/y"), b"").unwrap();
    assert_unique_inos(&m.mnt);
    assert_eq!(ino(&m.mnt.join("l5")), before);
    // Also once the kernel has forgotten every node.
    drop_caches();
    assert_unique_inos(&m.mnt);
    assert_eq!(ino(&m.mnt.join("l5")), before);
}
