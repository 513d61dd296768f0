//! Mount options that change what the mount shows (containers-storage's
//! options, fuse-overlayfs semantics): uid/gid mapping, squashing,
//! `static_nlink`, `noacl`, `xattr_permissions`, `ino32_t`. Each test mounts
//! plyfs for real over its own layers. Needs root (foreign owners, allow_other
//! for the unprivileged caller) and /dev/fuse.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn ready(test: &str) -> bool {
    require_root(test) && require_fuse(test)
}

fn mount_with(l: &Layers, extra: &str) -> PlyfsMount {
    PlyfsMount::start(&l.mnt, &format!("{},{extra}", l.options()), &[]).expect("mount plyfs")
}

fn owner(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    (md.uid(), md.gid())
}

fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// Runs `touch PATH` as `uid:gid` (no supplementary groups).
fn touch_as(uid: u32, gid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("touch")
        .arg(path)
        .status()
        .expect("setpriv")
        .success()
}

#[test]
fn uid_gid_mapping_shows_host_ids_and_stores_container_ids() {
    if !ready("uid_gid_mapping_shows_host_ids_and_stores_container_ids") {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    for (name, uid, gid) in [("a", 0, 0), ("b", 7, 8), ("c", 70000, 70000)] {
        write(&lo.join(name), b"x");
        chown(&lo.join(name), uid, gid).expect("chown lower");
    }
    std::fs::create_dir(lo.join("d")).expect("mkdir");
    std::fs::set_permissions(lo.join("d"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let m = mount_with(
        &l,
        "uidmapping=0:100000:65536,gidmapping=0:200000:1000:1000:300000:64536",
    );
    let mnt = &m.mnt;
    assert_eq!(owner(mnt), (100000, 200000), "root dir");
    assert_eq!(owner(&mnt.join("a")), (100000, 200000));
    assert_eq!(owner(&mnt.join("b")), (100007, 200008));
    // Outside every range: the overflow id.
    assert_eq!(owner(&mnt.join("c")), (65534, 65534));

    // chown through the mount stores container ids (second gid range too).
    chown(&mnt.join("b"), 100020, 300005).expect("chown mapped");
    assert_eq!(owner(&mnt.join("b")), (100020, 300005));
    assert_eq!(owner(&l.upper.join("b")), (20, 1005), "stored ids");
    // An id no range maps cannot be stored.
    let e = chown(&mnt.join("b"), 5, 5).expect_err("chown to an unmapped id");
    assert_eq!(errno(&e), libc::EINVAL);
    assert_eq!(owner(&l.upper.join("b")), (20, 1005), "unchanged");

    // A new file made by host id 100030 is stored as container id 30.
    assert!(
        touch_as(100030, 200031, &mnt.join("d/new")),
        "create as 100030"
    );
    assert_eq!(owner(&mnt.join("d/new")), (100030, 200031));
    assert_eq!(owner(&l.upper.join("d/new")), (30, 31));
    m.unmount();
}

#[test]
fn squash_to_root_and_to_ids() {
    if !ready("squash_to_root_and_to_ids") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    chown(&l.lower(0).join("f"), 1234, 5678).expect("chown lower");
    std::fs::create_dir(l.lower(0).join("d")).expect("mkdir");
    chown(&l.lower(0).join("d"), 42, 43).expect("chown lower");

    let m = mount_with(&l, "squash_to_root");
    for p in ["f", "d"] {
        assert_eq!(owner(&m.mnt.join(p)), (0, 0), "{p} squashed to root");
    }
    m.unmount();

    let m = mount_with(&l, "squash_to_uid=1000,squash_to_gid=1001");
    for p in ["", "f", "d"] {
        assert_eq!(owner(&m.mnt.join(p)), (1000, 1001), "{p:?} squashed");
    }
    // Squashing only changes what is shown: the layers keep their owners.
    assert_eq!(owner(&l.lower(0).join("f")), (1234, 5678));
    m.unmount();
}

#[test]
fn static_nlink_reports_one_for_directories() {
    if !ready("static_nlink_reports_one_for_directories") {
        return;
    }
    let l = Layers::new(2);
    for i in 0..2 {
        std::fs::create_dir_all(l.lower(i).join(format!("d/sub{i}"))).expect("mkdir");
    }
    // Only in one layer: its real link count (merged ones report 1 anyway,
    // like the kernel).
    std::fs::create_dir_all(l.lower(1).join("e/a")).expect("mkdir");
    std::fs::create_dir_all(l.lower(1).join("e/b")).expect("mkdir");
    let m = l.mount();
    assert_eq!(std::fs::metadata(m.mnt.join("e")).expect("stat").nlink(), 4);
    m.unmount();

    let m = mount_with(&l, "static_nlink");
    assert_eq!(std::fs::metadata(m.mnt.join("e")).expect("stat").nlink(), 1);
    assert_eq!(std::fs::metadata(m.mnt.join("d")).expect("stat").nlink(), 1);
    assert_eq!(std::fs::metadata(&m.mnt).expect("stat").nlink(), 1);
    // Files keep their real link count.
    write(&m.mnt.join("d/f"), b"x");
    std::fs::hard_link(m.mnt.join("d/f"), m.mnt.join("d/g")).expect("link");
    assert_eq!(
        std::fs::metadata(m.mnt.join("d/f")).expect("stat").nlink(),
        2
    );
    m.unmount();
}

/// `system.posix_acl_access` for user::rw-, user:1000:r--, group::r--,
/// mask::r--, other::--- (not expressible as mode bits, so it is stored).
fn small_acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn noacl_turns_posix_acls_off() {
    if !ready("noacl_turns_posix_acls_off") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");

    let m = l.mount();
    set_xattr(&m.mnt.join("f"), "system.posix_acl_access", &small_acl()).expect("ACL by default");
    assert!(get_xattr(&m.mnt.join("f"), "system.posix_acl_access").is_ok());
    m.unmount();

    let m = mount_with(&l, "noacl");
    let e = set_xattr(&m.mnt.join("f"), "system.posix_acl_access", &small_acl())
        .expect_err("no ACLs with noacl");
    assert_eq!(errno(&e), libc::EOPNOTSUPP);
    let e = get_xattr(&m.mnt.join("f"), "system.posix_acl_access").expect_err("no ACLs");
    assert_eq!(errno(&e), libc::EOPNOTSUPP);
    m.unmount();
}

#[test]
fn xattr_permissions_keeps_owner_and_mode_in_an_xattr() {
    if !ready("xattr_permissions_keeps_owner_and_mode_in_an_xattr") {
        return;
    }
    const ATTR: &str = "user.containers.override_stat";
    let l = Layers::new(1);
    let f = l.lower(0).join("f");
    write(&f, b"x");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    set_xattr(&f, ATTR, b"1000:1001:0640").expect("set override");

    let m = mount_with(&l, "xattr_permissions=2");
    let mf = m.mnt.join("f");
    let md = std::fs::metadata(&mf).expect("stat");
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    assert!(md.is_file());
    let names: Vec<Vec<u8>> = xattrs(&mf).into_iter().map(|(n, _)| n).collect();
    assert!(
        !names.contains(&ATTR.as_bytes().to_vec()),
        "override attribute hidden"
    );

    // chmod and chown change the override, not the real file.
    std::fs::set_permissions(&mf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown(&mf, 2000, 2001).expect("chown");
    let md = std::fs::metadata(&mf).expect("stat");
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (2000, 2001, 0o600)
    );
    let up = l.upper.join("f");
    assert_eq!(
        get_xattr(&up, ATTR).expect("override in upper"),
        b"2000:2001:0600"
    );
    let real = std::fs::metadata(&up).expect("stat upper");
    assert_eq!(
        (real.uid(), real.gid(), real.mode() & 0o7777),
        (0, 0, 0o644)
    );
    m.unmount();
}

#[test]
fn ino32_t_keeps_inode_numbers_below_2_32() {
    if !ready("ino32_t_keeps_inode_numbers_below_2_32") {
        return;
    }
    let l = Layers::new(2);
    for i in 0..2 {
        for j in 0..20 {
            write(&l.lower(i).join(format!("f{i}-{j}")), b"x");
        }
    }
    let m = mount_with(&l, "ino32_t");
    write(&m.mnt.join("new"), b"y");
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&m.mnt).expect("readdir") {
        let e = e.expect("entry");
        let ino = std::fs::symlink_metadata(e.path()).expect("lstat").ino();
        assert!(ino < 1 << 32, "{:?} has st_ino {ino:#x}", e.path());
        assert!(seen.insert(ino), "{:?}: st_ino {ino} seen twice", e.path());
        assert_eq!(
            std::os::unix::fs::DirEntryExt::ino(&e),
            ino,
            "d_ino == st_ino"
        );
    }
    assert_eq!(seen.len(), 41);
    m.unmount();
}

/// `xino=`: with layers on two filesystems, numbers from the second one
/// carry its index in the top bits (auto, on) or come from a per-mount
/// counter (off); the upper filesystem keeps its real numbers either way.
#[test]
fn xino_decides_numbers_of_other_filesystems() {
    if !ready("xino_decides_numbers_of_other_filesystems") {
        return;
    }
    let l = Layers::new(1);
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "plyfs-test-xino"])
        .arg(l.lower(0))
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            umount(self.0);
        }
    }
    let _tmpfs = Unmount(l.lower(0));
    write(&l.lower(0).join("lower"), b"l");
    write(&l.upper.join("upper"), b"u");
    let real = std::fs::metadata(l.lower(0).join("lower")).unwrap().ino();
    let real_upper = std::fs::metadata(l.upper.join("upper")).unwrap().ino();
    for (xino, tagged) in [("auto", true), ("on", true), ("off", false)] {
        let m = mount_with(&l, &format!("xino={xino}"));
        let ino = std::fs::metadata(m.mnt.join("lower")).unwrap().ino();
        if tagged {
            assert_eq!(ino, (1 << 56) | real, "xino={xino}");
        } else {
            assert!(ino >= 0xff00_0000_0000_0000, "xino=off: {ino:x}");
        }
        let up = std::fs::metadata(m.mnt.join("upper")).unwrap().ino();
        assert_eq!(up, real_upper, "xino={xino}");
        drop(m);
    }
}
