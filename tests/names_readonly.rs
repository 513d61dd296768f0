//! Names (non-UTF-8 bytes, NAME_MAX limits) and read-only mounts (no
//! upperdir).

mod common;
mod sem;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use sem::*;

fn enoent(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if errno(&e) == libc::ENOENT)
}

// ---- non-UTF-8 names ---------------------------------------------------------

#[test]
fn non_utf8_names_work_everywhere() {
    if !require_root("non_utf8_names_work_everywhere") {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    write(&bpath(lo, b"lo-\x80\xff"), b"lower");
    write(&bpath(lo, b"gone-\xfe"), b"g");
    write(
        &bpath(&bpath(lo, b"dir-\xc3\x28"), b"\xff\xfe\xfd"),
        b"inner",
    );
    write(&bpath(&l.upper, b"up-\xfe\x81"), b"upper");
    let m = l.mount();
    let mnt = &m.mnt;
    assert_eq!(
        names(mnt),
        vec![
            b"dir-\xc3\x28".to_vec(),
            b"gone-\xfe".to_vec(),
            b"lo-\x80\xff".to_vec(),
            b"up-\xfe\x81".to_vec()
        ]
    );
    assert_eq!(std::fs::read(bpath(mnt, b"lo-\x80\xff")).unwrap(), b"lower");
    assert_eq!(
        std::fs::read(bpath(&bpath(mnt, b"dir-\xc3\x28"), b"\xff\xfe\xfd")).unwrap(),
        b"inner"
    );
    // create
    std::fs::write(bpath(mnt, b"new-\x90\x91"), b"new").unwrap();
    std::fs::create_dir(bpath(mnt, b"newdir-\xaa")).unwrap();
    // rename (lower file, so it also copies up and leaves a whiteout)
    std::fs::rename(bpath(mnt, b"lo-\x80\xff"), bpath(mnt, b"ren-\xa0\xa1")).unwrap();
    // rename into the non-UTF-8 lower dir
    std::fs::rename(
        bpath(mnt, b"up-\xfe\x81"),
        bpath(&bpath(mnt, b"dir-\xc3\x28"), b"moved-\xee"),
    )
    .unwrap();
    // unlink
    std::fs::remove_file(bpath(mnt, b"gone-\xfe")).unwrap();
    assert_eq!(
        names(mnt),
        vec![
            b"dir-\xc3\x28".to_vec(),
            b"new-\x90\x91".to_vec(),
            b"newdir-\xaa".to_vec(),
            b"ren-\xa0\xa1".to_vec()
        ]
    );
    assert_eq!(
        names(&bpath(mnt, b"dir-\xc3\x28")),
        vec![b"moved-\xee".to_vec(), b"\xff\xfe\xfd".to_vec()]
    );
    assert!(enoent(&bpath(mnt, b"lo-\x80\xff")));
    assert!(is_whiteout(&bpath(&l.upper, b"lo-\x80\xff")));
    assert!(is_whiteout(&bpath(&l.upper, b"gone-\xfe")));
    assert_eq!(
        std::fs::read(bpath(&l.upper, b"ren-\xa0\xa1")).unwrap(),
        b"lower"
    );
    // Symlink targets are bytes too.
    let target = std::ffi::OsStr::from_bytes(b"t\x80rget");
    std::os::unix::fs::symlink(target, bpath(mnt, b"ln\xff")).unwrap();
    assert_eq!(
        std::fs::read_link(bpath(mnt, b"ln\xff"))
            .unwrap()
            .as_os_str(),
        target
    );
}

// ---- NAME_MAX ----------------------------------------------------------------

fn long(c: u8, n: usize) -> Vec<u8> {
    vec![c; n]
}

#[test]
fn names_of_255_bytes_work_everywhere() {
    if !require_root("names_of_255_bytes_work_everywhere") {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    let (a, d, e, b) = (
        long(b'a', 255),
        long(b'd', 255),
        long(b'e', 255),
        long(b'b', 255),
    );
    write(&bpath(lo, &a), b"a");
    write(&bpath(&bpath(lo, &d), &e), b"e");
    // A 255-byte non-UTF-8 name.
    let mut nu = long(0xe9, 255);
    nu[0] = b'x';
    write(&bpath(lo, &nu), b"nu");
    let m = l.mount();
    let mnt = &m.mnt;
    assert_eq!(std::fs::read(bpath(mnt, &a)).unwrap(), b"a");
    assert_eq!(std::fs::read(bpath(&bpath(mnt, &d), &e)).unwrap(), b"e");
    assert_eq!(std::fs::read(bpath(mnt, &nu)).unwrap(), b"nu");
    let c = long(b'c', 255);
    std::fs::write(bpath(mnt, &c), b"c").unwrap();
    std::fs::create_dir(bpath(&bpath(mnt, &d), &c)).unwrap();
    // Rename a lower 255-byte name to another one (copy-up + whiteout).
    std::fs::rename(bpath(mnt, &a), bpath(mnt, &b)).unwrap();
    assert!(is_whiteout(&bpath(&l.upper, &a)));
    // Unlink a lower 255-byte name (whiteout with the same long name).
    std::fs::remove_file(bpath(&bpath(mnt, &d), &e)).unwrap();
    std::fs::remove_file(bpath(mnt, &nu)).unwrap();
    assert!(is_whiteout(&bpath(&bpath(&l.upper, &d), &e)));
    assert_eq!(names(mnt), vec![b.clone(), c.clone(), d.clone()]);
    assert_eq!(names(&bpath(mnt, &d)), vec![c.clone()]);
    std::fs::remove_file(bpath(mnt, &c)).unwrap();
    assert!(absent(&bpath(&l.upper, &c)));
}

#[test]
fn names_of_256_bytes_fail_with_enametoolong() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"");
    let m = l.mount();
    let p = bpath(&m.mnt, &long(b'z', 256));
    let f = m.mnt.join("f");
    assert_eq!(err_of(std::fs::write(&p, b"")), libc::ENAMETOOLONG);
    assert_eq!(err_of(lstat(&p)), libc::ENAMETOOLONG);
    assert_eq!(err_of(std::fs::create_dir(&p)), libc::ENAMETOOLONG);
    assert_eq!(
        err_of(std::os::unix::fs::symlink("x", &p)),
        libc::ENAMETOOLONG
    );
    assert_eq!(err_of(std::fs::hard_link(&f, &p)), libc::ENAMETOOLONG);
    assert_eq!(err_of(std::fs::rename(&f, &p)), libc::ENAMETOOLONG);
    assert_eq!(
        err_of(mknod(&p, libc::S_IFIFO | 0o600, 0)),
        libc::ENAMETOOLONG
    );
    // Nothing was created and the rename source is intact.
    assert_eq!(ls(&m.mnt), ["f"]);
    assert_eq!(ls(&l.upper), Vec::<String>::new());
}

// ---- read-only mounts --------------------------------------------------------

fn ro_layers() -> Layers {
    let l = Layers::new(1);
    let lo = l.lower(0);
    write(&lo.join("f"), b"content");
    write(&lo.join("d/inner"), b"i");
    std::fs::create_dir(lo.join("empty")).unwrap();
    std::os::unix::fs::symlink("f", lo.join("link")).unwrap();
    set_xattr(&lo.join("f"), "user.x", b"1").unwrap();
    l
}

#[test]
fn read_only_mount_reads_work() {
    let l = ro_layers();
    let m = l.mount_ro();
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"content");
    assert_eq!(ls(&m.mnt), ["d", "empty", "f", "link"]);
    assert_eq!(ls(&m.mnt.join("d")), ["inner"]);
    assert_eq!(
        std::fs::read_link(m.mnt.join("link")).unwrap().to_str(),
        Some("f")
    );
    assert_eq!(get_xattr(&m.mnt.join("f"), "user.x").unwrap(), b"1");
    assert_eq!(xattr_names(&m.mnt.join("f")), ["user.x"]);
    access(&m.mnt.join("f"), libc::R_OK).unwrap();
    std::fs::File::open(m.mnt.join("d")).unwrap();
    let c = cpath(&m.mnt);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path and out-pointer.
    check(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }).unwrap();
    // SAFETY: statvfs succeeded.
    let st = unsafe { st.assume_init() };
    assert!(st.f_blocks > 0);
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0, "not flagged read-only");
}

#[test]
fn read_only_mount_refuses_every_write_with_erofs() {
    let l = ro_layers();
    let before = snapshot(l.lower(0));
    {
        let m = l.mount_ro();
        let p = |n: &str| m.mnt.join(n);
        let erofs = |what: &str, r: std::io::Result<()>| match r {
            Err(e) if errno(&e) == libc::EROFS => {}
            other => panic!("{what}: expected EROFS, got {other:?}"),
        };
        let open = |n: &str, o: &mut std::fs::OpenOptions| o.open(p(n)).map(|_| ());
        erofs("create", std::fs::write(p("new"), b""));
        erofs(
            "open O_WRONLY",
            open("f", std::fs::OpenOptions::new().write(true)),
        );
        erofs(
            "open O_RDWR",
            open("f", std::fs::OpenOptions::new().read(true).write(true)),
        );
        erofs(
            "open O_TRUNC",
            open("f", std::fs::OpenOptions::new().write(true).truncate(true)),
        );
        erofs("mkdir", std::fs::create_dir(p("newdir")));
        erofs("unlink", std::fs::remove_file(p("f")));
        erofs("rmdir", std::fs::remove_dir(p("empty")));
        erofs("rename", std::fs::rename(p("f"), p("g")));
        erofs("rename dir", std::fs::rename(p("d"), p("d2")));
        erofs(
            "chmod",
            std::fs::set_permissions(p("f"), PermissionsExt::from_mode(0o600)),
        );
        erofs("chown", std::os::unix::fs::lchown(p("f"), Some(1), Some(1)));
        erofs("utimes", utimens(&p("f"), ts(1, 0), ts(1, 0)));
        erofs("setxattr", set_xattr(&p("f"), "user.y", b"2"));
        erofs("removexattr", remove_xattr(&p("f"), "user.x"));
        erofs("symlink", std::os::unix::fs::symlink("x", p("sl")));
        erofs("link", std::fs::hard_link(p("f"), p("hl")));
        erofs("mknod", mknod(&p("fifo"), libc::S_IFIFO | 0o600, 0));
        erofs("access W_OK", access(&p("f"), libc::W_OK));
        let c = cpath(&p("f"));
        // SAFETY: valid C string.
        erofs(
            "truncate",
            check(unsafe { libc::truncate(c.as_ptr(), 0) }).map(|_| ()),
        );
        // Still intact through the mount.
        assert_eq!(std::fs::read(p("f")).unwrap(), b"content");
        assert_eq!(
            lstat(&p("f")).unwrap().mode(),
            lstat(&l.lower(0).join("f")).unwrap().mode()
        );
    }
    let d = diff(&before, &snapshot(l.lower(0)), "before", "after");
    assert!(d.is_empty(), "lower changed:\n{d}");
}

/// Several lowers, no upper: the full merged view equals the kernel's.
#[test]
fn read_only_mount_with_several_lowers_matches_kernel() {
    if !require_root("read_only_mount_with_several_lowers_matches_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("top"), b"0");
        write(&l.lower(1).join("top"), b"1");
        write(&l.lower(2).join("top"), b"2");
        write(&l.lower(0).join("d/a"), b"a");
        write(&l.lower(1).join("d/b"), b"b");
        write(&l.lower(2).join("d/c"), b"c");
        whiteout(&l.lower(0).join("d/c"));
        write(&l.lower(1).join("opq/own"), b"");
        set_xattr(&l.lower(1).join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        write(&l.lower(2).join("opq/hidden"), b"");
        write(&l.lower(1).join("fd"), b"file over dir");
        write(&l.lower(2).join("fd/x"), b"");
        std::fs::create_dir(l.lower(0).join("df")).unwrap();
        write(&l.lower(1).join("df"), b"dir over file");
    };
    let a = Layers::new(3);
    setup(&a);
    let p = {
        let m = a.mount_ro();
        assert_eq!(std::fs::read(m.mnt.join("top")).unwrap(), b"0");
        assert_eq!(ls(&m.mnt.join("d")), ["a", "b"]);
        assert_eq!(ls(&m.mnt.join("opq")), ["own"]);
        snapshot(&m.mnt)
    };
    let b = Layers::new(3);
    setup(&b);
    let k = {
        let _k = KernelMount::mount(&b.mnt, &format!("lowerdir={}", b.lowerdir())).unwrap();
        snapshot(&b.mnt)
    };
    let d = diff(&p, &k, "plyfs", "kernel");
    assert!(d.is_empty(), "{d}");
}

#[test]
fn read_only_mount_with_oci_layers() {
    // The usual shape of an unpacked image: OCI markers in lower layers.
    let l = Layers::new(3);
    write(&l.lower(2).join("etc/passwd"), b"base");
    write(&l.lower(2).join("etc/old.conf"), b"old");
    write(&l.lower(2).join("var/cache/x"), b"x");
    write(&l.lower(1).join("etc/.wh.old.conf"), b"");
    write(&l.lower(1).join("var/cache/.wh..wh..opq"), b"");
    write(&l.lower(1).join("var/cache/y"), b"y");
    write(&l.lower(0).join("etc/passwd"), b"top");
    let m = l.mount_ro();
    assert_eq!(ls(&m.mnt.join("etc")), ["passwd"]);
    assert_eq!(std::fs::read(m.mnt.join("etc/passwd")).unwrap(), b"top");
    assert_eq!(ls(&m.mnt.join("var/cache")), ["y"]);
    let e = std::fs::write(m.mnt.join("etc/new"), b"").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
}

#[test]
fn read_only_mount_open_with_o_creat() {
    let l = ro_layers();
    let m = l.mount_ro();
    let open = |n: &str| {
        let c = cpath(&m.mnt.join(n));
        // SAFETY: valid C string; the fd is closed right away.
        let r = check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CREAT, 0o644) });
        // SAFETY: closing the fd we opened.
        r.map(|fd| unsafe { libc::close(fd) }).map(|_| ())
    };
    open("f").expect("O_CREAT on an existing file opens it");
    assert_eq!(err_of(open("missing")), libc::EROFS);
}
