//! st_ino stays the same across copy-up, directory renames and remounts:
//! plyfs derives it from the lower object (kept in `overlay.origin` once the
//! object is copied up), not from the upper copy.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn inos(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, md.ino());
            if md.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn build(l: &Layers) {
    write(&l.lower(1).join("d/base"), b"base");
    write(&l.lower(1).join("d/sub/deep"), b"deep");
    write(&l.lower(0).join("d/top"), b"top");
    write(&l.lower(1).join("hl/a"), b"linked");
    std::fs::hard_link(l.lower(1).join("hl/a"), l.lower(1).join("hl/b")).unwrap();
    std::os::unix::fs::symlink("base", l.lower(1).join("d/link")).unwrap();
    write(&l.lower(0).join("keep"), b"keep");
}

#[test]
fn inode_numbers_survive_copy_up_rename_and_remount() {
    if !require_root("inode_numbers_survive_copy_up_rename_and_remount") {
        return;
    }
    let l = Layers::new(2);
    build(&l);
    let before = {
        let m = l.mount();
        let before = inos(&m.mnt);
        // Copy-ups of every kind, a directory rename (redirect) and a hard
        // link written through one name.
        std::fs::write(m.mnt.join("d/base"), b"changed").unwrap();
        set_xattr(&m.mnt.join("d/top"), "user.k", b"v").unwrap();
        std::fs::set_permissions(
            m.mnt.join("d/sub/deep"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join("hl/b"))
            .unwrap();
        std::fs::write(m.mnt.join("hl/a"), b"new").unwrap();
        std::fs::rename(m.mnt.join("d"), m.mnt.join("renamed")).unwrap();
        let during = inos(&m.mnt);
        // Same numbers within the mount (renamed paths map back).
        for (k, v) in &before {
            let k2 = k.replacen("d", "renamed", 1);
            let now = during.get(k).or_else(|| during.get(&k2)).copied();
            assert_eq!(now, Some(*v), "{k} changed number in the mount");
        }
        during
    };
    // A fresh daemon sees the same numbers.
    let m = l.mount();
    let after = inos(&m.mnt);
    assert_eq!(before, after, "inode numbers changed across remount");
    assert_eq!(
        std::fs::symlink_metadata(m.mnt.join("hl/a")).unwrap().ino(),
        std::fs::symlink_metadata(m.mnt.join("hl/b")).unwrap().ino()
    );
    assert_eq!(std::fs::read(m.mnt.join("hl/b")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(m.mnt.join("renamed/base")).unwrap(),
        b"changed"
    );
}

#[test]
fn readdir_d_ino_matches_stat_after_remount() {
    if !require_root("readdir_d_ino_matches_stat_after_remount") {
        return;
    }
    let l = Layers::new(2);
    build(&l);
    {
        let m = l.mount();
        std::fs::write(m.mnt.join("d/base"), b"changed").unwrap();
        std::fs::write(m.mnt.join("d/new"), b"new").unwrap();
        std::fs::rename(m.mnt.join("d/sub"), m.mnt.join("d/sub2")).unwrap();
    }
    let m = l.mount();
    for dir in ["", "d", "d/sub2", "hl"] {
        let p = m.mnt.join(dir);
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            use std::os::unix::fs::DirEntryExt;
            assert_eq!(e.ino(), md.ino(), "d_ino of {:?}", e.path());
        }
    }
}
