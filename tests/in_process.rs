//! The semantic layer without a mount: a `Plyfs` over temporary layers,
//! driven through its `do_*` functions as the FUSE glue drives them. Fast,
//! and able to check what a mount cannot show, such as the kernel lookup
//! references each reply carries.

mod common;

use common::*;

use plyfs::fs::Plyfs;
use plyfs::names::Name;
use plyfs::ops::dir::PlusEntry;

fn build(l: &Layers) -> Plyfs {
    let o = plyfs::options::MountOptions {
        lowers: l.lowers.clone(),
        upper: Some(l.upper.clone()),
        work: Some(l.work.clone()),
        ..Default::default()
    };
    let checked = plyfs::setup::validate(&o, &l.mnt).expect("validate");
    plyfs::setup::build(&o, checked).expect("build")
}

fn name(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

fn tree() -> Layers {
    let l = Layers::new(2);
    for i in 0..20 {
        write(&l.lower(0).join(format!("d/sub{i}/f")), b"x");
        write(&l.lower(1).join(format!("d/sub{i}/g")), b"y");
        write(&l.lower(1).join(format!("d/file{i}")), b"z");
    }
    l
}

/// A lookup whose reply is not sent (an error after the reference was
/// taken) gives its reference back; one handed to the kernel stays until
/// FORGET.
#[test]
fn lookup_references_go_back_unless_handed_over() {
    let l = tree();
    let fs = build(&l);
    assert_eq!(fs.table.len(), 1);
    let (d, _) = fs.do_lookup(1, &name("d")).unwrap().unwrap();
    let d = d.into_kernel();
    for i in 0..20 {
        let found = fs.do_lookup(d.ino, &name(&format!("sub{i}"))).unwrap();
        drop(found);
    }
    assert_eq!(fs.table.len(), 2, "dropped lookups kept their nodes");
    let (s, _) = fs.do_lookup(d.ino, &name("sub3")).unwrap().unwrap();
    let s = s.into_kernel();
    assert_eq!(fs.table.len(), 3);
    fs.do_forget(s.ino, 1);
    fs.do_forget(d.ino, 1);
    assert_eq!(fs.table.len(), 1);
}

/// readdirplus takes a reference per entry that fits the reply and none
/// for the one that does not; references of a reply never sent go back.
#[test]
fn readdirplus_references_follow_the_reply() {
    if !require_root("readdirplus_references_follow_the_reply") {
        return;
    }
    let l = tree();
    let fs = build(&l);
    let (d, _) = fs.do_lookup(1, &name("d")).unwrap().unwrap();
    let d = d.into_kernel();
    // A reply with room for `.`, `..` and ten entries. Directories carry
    // a node (and a reference); files may go names-only (no reference).
    let (mut n, mut full) = (0, 0);
    let refs = fs
        .do_readdirplus(d.ino, 0, 0, |item, e| {
            n += 1;
            let fits = n <= 12;
            let dot = &*item.name == b"." || &*item.name == b"..";
            if fits && !dot && matches!(e, PlusEntry::Full(..)) {
                full += 1;
            }
            fits
        })
        .unwrap();
    assert!(full > 0);
    assert_eq!(refs.len(), full);
    assert_eq!(fs.table.len(), 2 + full);
    // Not sent: every reference goes back.
    drop(refs);
    assert_eq!(fs.table.len(), 2);
    // Sent: the kernel holds one per entry until it forgets them.
    let refs = fs.do_readdirplus(d.ino, 0, 0, |_, _| true).unwrap();
    assert!(refs.len() >= 20, "{}", refs.len());
    let count = refs.len();
    let nodes: Vec<_> = refs.into_iter().map(|r| r.into_kernel()).collect();
    assert_eq!(fs.table.len(), 2 + count);
    for node in nodes {
        fs.do_forget(node.ino, 1);
    }
    fs.do_forget(d.ino, 1);
    assert_eq!(fs.table.len(), 1);
}

/// A setattr that asks for a size change on a directory is refused before
/// anything else in it (mode, owner) is applied or anything copied up.
#[test]
fn setattr_refuses_a_directory_size_before_changing_anything() {
    use std::os::unix::fs::PermissionsExt;
    let l = tree();
    let fs = build(&l);
    let (d, _) = fs.do_lookup(1, &name("d")).unwrap().unwrap();
    let d = d.into_kernel();
    let a = plyfs::ops::setattr::SetAttr {
        mode: Some(0o700),
        size: Some(0),
        ..Default::default()
    };
    let e = fs.do_setattr(d.ino, a).expect_err("size of a directory");
    assert_eq!(e.code(), libc::EISDIR);
    assert!(!l.upper.join("d").exists(), "copied up anyway");
    let mode = std::fs::metadata(l.lower(0).join("d"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}
