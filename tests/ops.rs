//! Every operation through the mount, checked against the merged view, the
//! upper layer on disk and, where the answer is not obvious, the kernel.

mod common;
mod sem;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use sem::*;
use std::os::unix::fs::DirBuilderExt;

fn enoent(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if errno(&e) == libc::ENOENT)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---- mknod / mkdir / symlink ------------------------------------------------

#[test]
fn mknod_fifo_and_socket() {
    let l = Layers::new(1);
    let m = l.mount();
    mknod(&m.mnt.join("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    mknod(&m.mnt.join("sock"), libc::S_IFSOCK | 0o600, 0).unwrap();
    assert!(lstat(&m.mnt.join("fifo")).unwrap().file_type().is_fifo());
    assert!(lstat(&m.mnt.join("sock")).unwrap().file_type().is_socket());
    assert_eq!(lstat(&m.mnt.join("fifo")).unwrap().mode() & 0o777, 0o640);
    assert!(lstat(&l.upper.join("fifo")).unwrap().file_type().is_fifo());
    assert!(
        lstat(&l.upper.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(ls(&m.mnt), ["fifo", "sock"]);
}

#[test]
fn mknod_char_and_block_devices() {
    if !require_root("mknod_char_and_block_devices") {
        return;
    }
    let l = Layers::new(1);
    let m = l.mount();
    let (c, b) = (libc::makedev(1, 3), libc::makedev(7, 200));
    mknod(&m.mnt.join("null"), libc::S_IFCHR | 0o666, c).unwrap();
    mknod(&m.mnt.join("blk"), libc::S_IFBLK | 0o600, b).unwrap();
    for (dir, name) in [(&m.mnt, "through mount"), (&l.upper, "upper")] {
        let n = lstat(&dir.join("null")).unwrap();
        let k = lstat(&dir.join("blk")).unwrap();
        assert!(n.file_type().is_char_device() && n.rdev() == c, "{name}");
        assert!(k.file_type().is_block_device() && k.rdev() == b, "{name}");
    }
}

#[test]
fn mkdir_creates_upper_directory() {
    let l = Layers::new(1);
    write(&l.lower(0).join("d/x"), b"");
    let m = l.mount();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(m.mnt.join("d/new"))
        .unwrap();
    let md = lstat(&m.mnt.join("d/new")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.mode() & 0o7777, 0o700);
    assert!(l.upper.join("d/new").is_dir());
    assert_eq!(ls(&m.mnt.join("d")), ["new", "x"]);
    let e = std::fs::create_dir(m.mnt.join("d/x")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    let e = std::fs::create_dir(m.mnt.join("d")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
}

#[test]
fn symlink_and_readlink() {
    let l = Layers::new(1);
    std::os::unix::fs::symlink("lower/target", l.lower(0).join("old")).unwrap();
    let m = l.mount();
    std::os::unix::fs::symlink("../some where", m.mnt.join("new")).unwrap();
    assert_eq!(
        std::fs::read_link(m.mnt.join("new")).unwrap().to_str(),
        Some("../some where")
    );
    assert_eq!(
        std::fs::read_link(m.mnt.join("old")).unwrap().to_str(),
        Some("lower/target")
    );
    assert!(
        lstat(&l.upper.join("new"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(lstat(&m.mnt.join("new")).unwrap().len(), 13);
    let e = std::os::unix::fs::symlink("x", m.mnt.join("old")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
}

// ---- unlink / rmdir ----------------------------------------------------------

#[test]
fn unlink_lower_file_leaves_whiteout() {
    if !require_root("unlink_lower_file_leaves_whiteout") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(1).join("f"), b"");
    write(&l.lower(0).join("g"), b"");
    write(&l.upper.join("g"), b"upper over lower");
    let m = l.mount();
    std::fs::remove_file(m.mnt.join("f")).unwrap();
    std::fs::remove_file(m.mnt.join("g")).unwrap();
    assert!(enoent(&m.mnt.join("f")) && enoent(&m.mnt.join("g")));
    assert!(is_whiteout(&l.upper.join("f")));
    assert!(is_whiteout(&l.upper.join("g")));
    assert!(names(&m.mnt).is_empty());
    assert_eq!(err_of(std::fs::remove_file(m.mnt.join("f"))), libc::ENOENT);
}

#[test]
fn unlink_upper_only_file_leaves_no_whiteout() {
    let l = Layers::new(1);
    write(&l.lower(0).join("other"), b"");
    let m = l.mount();
    std::fs::write(m.mnt.join("mine"), b"x").unwrap();
    std::fs::remove_file(m.mnt.join("mine")).unwrap();
    assert!(absent(&l.upper.join("mine")));
    assert!(enoent(&m.mnt.join("mine")));
    // Also for an upper-only file that existed before the mount.
    drop(m);
    write(&l.upper.join("pre"), b"");
    let m = l.mount();
    std::fs::remove_file(m.mnt.join("pre")).unwrap();
    assert!(absent(&l.upper.join("pre")));
}

#[test]
fn rmdir_of_merged_non_empty_dir_is_enotempty() {
    let l = Layers::new(1);
    write(&l.lower(0).join("d/x"), b"");
    std::fs::create_dir(l.upper.join("d")).unwrap();
    write(&l.lower(0).join("e/y"), b"");
    let m = l.mount();
    assert_eq!(
        err_of(std::fs::remove_dir(m.mnt.join("d"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        err_of(std::fs::remove_dir(m.mnt.join("e"))),
        libc::ENOTEMPTY
    );
    assert_eq!(ls(&m.mnt.join("d")), ["x"]);
}

#[test]
fn rmdir_after_all_lower_entries_deleted() {
    if !require_root("rmdir_after_all_lower_entries_deleted") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("d/a"), b"");
    write(&l.lower(1).join("d/b"), b"");
    write(&l.lower(1).join("d/sub/c"), b"");
    write(&l.upper.join("d/u"), b"");
    let m = l.mount();
    let d = m.mnt.join("d");
    std::fs::remove_file(d.join("a")).unwrap();
    std::fs::remove_file(d.join("b")).unwrap();
    std::fs::remove_file(d.join("u")).unwrap();
    assert_eq!(err_of(std::fs::remove_dir(&d)), libc::ENOTEMPTY);
    std::fs::remove_file(d.join("sub/c")).unwrap();
    std::fs::remove_dir(d.join("sub")).unwrap();
    std::fs::remove_dir(&d).unwrap();
    assert!(enoent(&d));
    assert!(is_whiteout(&l.upper.join("d")));
    assert!(leftovers(&l.work).is_empty(), "{:?}", leftovers(&l.work));
}

#[test]
fn rmdir_of_dir_whose_lower_entries_are_whited_out_on_disk() {
    if !require_root("rmdir_of_dir_whose_lower_entries_are_whited_out_on_disk") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/a"), b"");
    write(&l.lower(0).join("d/b"), b"");
    std::fs::create_dir(l.upper.join("d")).unwrap();
    whiteout(&l.upper.join("d/a"));
    whiteout(&l.upper.join("d/b"));
    let m = l.mount();
    assert!(names(&m.mnt.join("d")).is_empty());
    std::fs::remove_dir(m.mnt.join("d")).unwrap();
    assert!(is_whiteout(&l.upper.join("d")));
}

#[test]
fn rmdir_of_upper_only_dir_leaves_nothing() {
    let l = Layers::new(1);
    let m = l.mount();
    std::fs::create_dir(m.mnt.join("d")).unwrap();
    std::fs::write(m.mnt.join("d/f"), b"").unwrap();
    std::fs::remove_file(m.mnt.join("d/f")).unwrap();
    std::fs::remove_dir(m.mnt.join("d")).unwrap();
    assert!(absent(&l.upper.join("d")));
}

#[test]
fn mkdir_over_whiteout_makes_opaque_dir() {
    if !require_root("mkdir_over_whiteout_makes_opaque_dir") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("d/old1"), b"");
        write(&l.lower(0).join("d/sub/old2"), b"");
        write(&l.lower(0).join("f"), b"was a file");
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, l| {
        std::fs::remove_dir_all(mnt.join("d")).unwrap();
        std::fs::create_dir(mnt.join("d")).unwrap();
        std::fs::write(mnt.join("d/new"), b"").unwrap();
        std::fs::remove_file(mnt.join("f")).unwrap();
        std::fs::create_dir(mnt.join("f")).unwrap();
        (
            ls(&mnt.join("d")),
            ls(&mnt.join("f")),
            get_xattr(&l.upper.join("d"), "trusted.overlay.opaque").ok(),
            xattr_names(&mnt.join("d")),
        )
    });
    assert_eq!(k.0, ["new"], "kernel");
    assert_eq!(p.0, k.0);
    assert_eq!(p.1, k.1);
    assert_eq!(p.2.as_deref(), Some(&b"y"[..]), "upper d not opaque");
    assert_eq!(p.3, k.3, "xattrs seen through the mount");
}

#[test]
fn create_over_whiteout_replaces_it() {
    if !require_root("create_over_whiteout_replaces_it") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    let m = l.mount();
    std::fs::remove_file(m.mnt.join("f")).unwrap();
    assert!(is_whiteout(&l.upper.join("f")));
    std::fs::write(m.mnt.join("f"), b"fresh").unwrap();
    assert_eq!(read(&m.mnt.join("f")), b"fresh");
    assert!(lstat(&l.upper.join("f")).unwrap().is_file());
    assert_eq!(ls(&m.mnt), ["f"]);
    assert!(leftovers(&l.work).is_empty(), "{:?}", leftovers(&l.work));
}

// ---- rename ------------------------------------------------------------------

#[test]
fn rename_file_between_directories() {
    if !require_root("rename_file_between_directories") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("a/x"), b"payload");
    std::fs::create_dir(l.lower(0).join("b")).unwrap();
    let m = l.mount();
    std::fs::rename(m.mnt.join("a/x"), m.mnt.join("b/y")).unwrap();
    assert!(enoent(&m.mnt.join("a/x")));
    assert_eq!(read(&m.mnt.join("b/y")), b"payload");
    assert!(is_whiteout(&l.upper.join("a/x")));
    assert_eq!(read(&l.upper.join("b/y")), b"payload");
    assert!(names(&m.mnt.join("a")).is_empty());
    assert_eq!(ls(&m.mnt.join("b")), ["y"]);
    assert_eq!(read(&l.lower(0).join("a/x")), b"payload");
}

#[test]
fn rename_over_existing_lower_file() {
    let l = Layers::new(1);
    write(&l.lower(0).join("src"), b"new content");
    write(&l.lower(0).join("dst"), b"old content");
    let m = l.mount();
    std::fs::rename(m.mnt.join("src"), m.mnt.join("dst")).unwrap();
    assert_eq!(read(&m.mnt.join("dst")), b"new content");
    assert!(enoent(&m.mnt.join("src")));
    assert_eq!(ls(&m.mnt), ["dst"]);
}

#[test]
fn rename_noreplace_fails_with_eexist() {
    if !require_root("rename_noreplace_fails_with_eexist") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("a"), b"a");
    write(&l.lower(0).join("b"), b"b");
    write(&l.lower(0).join("gone"), b"");
    let m = l.mount();
    let e = renameat2(&m.mnt.join("a"), &m.mnt.join("b"), RENAME_NOREPLACE);
    assert_eq!(err_of(e), libc::EEXIST);
    assert_eq!(read(&m.mnt.join("a")), b"a");
    assert_eq!(read(&m.mnt.join("b")), b"b");
    // A whited-out name counts as free.
    std::fs::remove_file(m.mnt.join("gone")).unwrap();
    renameat2(&m.mnt.join("a"), &m.mnt.join("gone"), RENAME_NOREPLACE).unwrap();
    assert_eq!(read(&m.mnt.join("gone")), b"a");
    assert_eq!(ls(&m.mnt), ["b", "gone"]);
}

#[test]
fn rename_exchange_swaps_lower_and_upper_files() {
    let l = Layers::new(1);
    write(&l.lower(0).join("low"), b"from lower");
    write(&l.lower(0).join("d/low2"), b"lower 2");
    let m = l.mount();
    std::fs::write(m.mnt.join("up"), b"from upper").unwrap();
    renameat2(&m.mnt.join("low"), &m.mnt.join("up"), RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&m.mnt.join("low")), b"from upper");
    assert_eq!(read(&m.mnt.join("up")), b"from lower");
    renameat2(&m.mnt.join("up"), &m.mnt.join("d/low2"), RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&m.mnt.join("up")), b"lower 2");
    assert_eq!(read(&m.mnt.join("d/low2")), b"from lower");
    assert_eq!(ls(&m.mnt), ["d", "low", "up"]);
    assert_eq!(
        err_of(renameat2(
            &m.mnt.join("up"),
            &m.mnt.join("nope"),
            RENAME_EXCHANGE
        )),
        libc::ENOENT
    );
}

#[test]
fn rename_upper_only_directory() {
    let l = Layers::new(1);
    write(&l.lower(0).join("lowerdir/x"), b"");
    let m = l.mount();
    std::fs::create_dir_all(m.mnt.join("new/inner")).unwrap();
    std::fs::write(m.mnt.join("new/inner/f"), b"f").unwrap();
    std::fs::rename(m.mnt.join("new"), m.mnt.join("lowerdir/moved")).unwrap();
    assert_eq!(read(&m.mnt.join("lowerdir/moved/inner/f")), b"f");
    assert!(enoent(&m.mnt.join("new")));
    assert!(
        absent(&l.upper.join("new")),
        "no whiteout for an upper-only dir"
    );
    assert_eq!(ls(&m.mnt.join("lowerdir")), ["moved", "x"]);
}

fn dir_rename_setup(l: &Layers) {
    write(&l.lower(1).join("d/x"), b"x");
    write(&l.lower(0).join("d/sub/y"), b"y");
    write(&l.lower(0).join("m/y"), b"");
    write(&l.upper.join("m/z"), b"z");
    std::fs::create_dir(l.lower(0).join("dest")).unwrap();
    write(&l.lower(0).join("f"), b"");
    std::fs::create_dir(l.lower(0).join("empty")).unwrap();
}

/// Renames a lower-only and a merged directory and returns what the
/// mount shows afterwards.
fn dir_rename_op(mnt: &Path) -> Vec<String> {
    let r = |a: &str, b: &str| {
        renameat2(&mnt.join(a), &mnt.join(b), 0)
            .map_err(|e| errno(&e))
            .err()
            .unwrap_or(0)
    };
    let mut out = vec![
        format!("d->d2: {}", r("d", "d2")),
        format!("m->dest/m: {}", r("m", "dest/m")),
        format!("empty->d2: {}", r("empty", "d2")),
    ];
    for dir in ["", "d", "d2", "d2/sub", "dest", "dest/m", "m"] {
        let p = mnt.join(dir);
        out.push(format!(
            "{dir}: {:?}",
            std::fs::read_dir(&p).map(|_| ls(&p)).ok()
        ));
    }
    out
}

#[test]
fn rename_dir_with_lower_content_like_kernel_redirect_dir_on() {
    if !require_root("rename_dir_with_lower_content_like_kernel_redirect_dir_on") {
        return;
    }
    let (p, k) = plyfs_and_kernel_with(2, "", "redirect_dir=on", dir_rename_setup, |mnt, _| {
        dir_rename_op(mnt)
    });
    assert_eq!(k[0], "d->d2: 0", "kernel");
    assert_eq!(p, k);
}

#[test]
fn renamed_dirs_survive_remount_and_read_the_same_in_kernel() {
    if !require_root("renamed_dirs_survive_remount_and_read_the_same_in_kernel") {
        return;
    }
    let l = Layers::new(2);
    dir_rename_setup(&l);
    let live = {
        let m = l.mount();
        dir_rename_op(&m.mnt);
        snapshot(&m.mnt)
    };
    let again = {
        let m = l.mount();
        snapshot(&m.mnt)
    };
    let d = diff(&live, &again, "before remount", "after remount");
    assert!(d.is_empty(), "{d}");
    let kernel = {
        let _k = l.mount_kernel("redirect_dir=on");
        snapshot(&l.mnt)
    };
    let d = diff(&live, &kernel, "plyfs", "kernel on plyfs's upper");
    assert!(d.is_empty(), "{d}");
}

#[test]
fn rename_dir_with_lower_content_is_exdev_with_redirect_dir_off() {
    if !require_root("rename_dir_with_lower_content_is_exdev_with_redirect_dir_off") {
        return;
    }
    let (p, k) = plyfs_and_kernel_with(
        2,
        "redirect_dir=off",
        "redirect_dir=off",
        dir_rename_setup,
        |mnt, _| dir_rename_op(mnt),
    );
    assert_eq!(k[0], format!("d->d2: {}", libc::EXDEV), "kernel");
    assert_eq!(p, k);
}

#[test]
fn rename_file_over_directory_and_back_errors_like_kernel() {
    if !require_root("rename_file_over_directory_and_back_errors_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("f"), b"");
        write(&l.lower(0).join("d/x"), b"");
        std::fs::create_dir(l.lower(0).join("empty")).unwrap();
    };
    let (p, k) = plyfs_and_kernel_with(2, "", "redirect_dir=on", setup, |mnt, _| {
        let r = |a: &str, b: &str| renameat2(&mnt.join(a), &mnt.join(b), 0).map_err(|e| errno(&e));
        (r("f", "d"), r("d", "f"), r("f", "empty"), r("empty", "d"))
    });
    assert_eq!(p, k);
}

// ---- link --------------------------------------------------------------------

#[test]
fn hard_link_shares_inode_and_counts_links() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"linked");
    let m = l.mount();
    std::fs::hard_link(m.mnt.join("f"), m.mnt.join("g")).unwrap();
    std::fs::hard_link(m.mnt.join("g"), m.mnt.join("h")).unwrap();
    let (f, g, h) = (
        lstat(&m.mnt.join("f")).unwrap(),
        lstat(&m.mnt.join("g")).unwrap(),
        lstat(&m.mnt.join("h")).unwrap(),
    );
    assert_eq!(f.ino(), g.ino());
    assert_eq!(f.ino(), h.ino());
    assert_eq!((f.nlink(), g.nlink(), h.nlink()), (3, 3, 3));
    std::fs::write(m.mnt.join("h"), b"via h").unwrap();
    assert_eq!(read(&m.mnt.join("f")), b"via h");
    std::fs::remove_file(m.mnt.join("g")).unwrap();
    assert_eq!(lstat(&m.mnt.join("f")).unwrap().nlink(), 2);
    assert_eq!(lstat(&l.upper.join("f")).unwrap().nlink(), 2);
}

// ---- files -------------------------------------------------------------------

#[test]
fn create_write_read_fsync_fsyncdir() {
    let l = Layers::new(1);
    std::fs::create_dir(l.lower(0).join("d")).unwrap();
    let m = l.mount();
    let p = m.mnt.join("d/file");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all(b"hello world").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    drop(f);
    std::fs::File::open(m.mnt.join("d"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    assert_eq!(
        err_of(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
        ),
        libc::EEXIST
    );
    let mut s = String::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello world");
    assert_eq!(read(&l.upper.join("d/file")), b"hello world");
    // O_TRUNC on a lower file: copy-up of nothing, then empty.
    write(&l.lower(0).join("unused"), b"");
    drop(m);
    write(&l.lower(0).join("t"), b"to be truncated");
    let m = l.mount();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.mnt.join("t"))
        .unwrap();
    assert_eq!(lstat(&m.mnt.join("t")).unwrap().len(), 0);
    assert_eq!(lstat(&l.upper.join("t")).unwrap().len(), 0);
}

#[test]
fn fallocate_modes() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), &[b'x'; 8192]);
    let m = l.mount();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("f"))
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: valid fd for all calls.
    unsafe {
        check(libc::fallocate(fd, 0, 0, 1 << 20)).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        check(libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20)).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        check(libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        ))
        .unwrap();
    }
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0), "hole not punched");
    assert!(buf[4096..].iter().all(|&b| b == b'x'));
    assert_eq!(lstat(&l.upper.join("f")).unwrap().len(), 1 << 20);
}

fn lseek(f: &std::fs::File, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(errno(&std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

fn make_sparse(p: &Path) {
    let f = std::fs::File::create(p).unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    f.write_all_at(&[2u8; 4096], 1 << 20).unwrap();
    f.set_len(2 << 20).unwrap();
}

fn seek_answers(p: &Path) -> Vec<Result<i64, i32>> {
    let f = std::fs::File::open(p).unwrap();
    vec![
        lseek(&f, 0, libc::SEEK_HOLE),
        lseek(&f, 4096, libc::SEEK_DATA),
        lseek(&f, (1 << 20) + 4096, libc::SEEK_HOLE),
        lseek(&f, (1 << 20) + 8192, libc::SEEK_DATA),
        lseek(&f, 3 << 20, libc::SEEK_HOLE),
    ]
}

#[test]
fn seek_data_and_hole_on_sparse_files() {
    let l = Layers::new(1);
    make_sparse(&l.lower(0).join("lower"));
    let want = vec![
        Ok(4096),
        Ok(1 << 20),
        Ok((1 << 20) + 4096),
        Err(libc::ENXIO),
        Err(libc::ENXIO),
    ];
    assert_eq!(seek_answers(&l.lower(0).join("lower")), want, "ext4 itself");
    let m = l.mount();
    assert_eq!(seek_answers(&m.mnt.join("lower")), want, "lower file");
    make_sparse(&m.mnt.join("upper"));
    assert_eq!(seek_answers(&m.mnt.join("upper")), want, "upper file");
}

#[test]
fn copy_file_range_between_files() {
    let l = Layers::new(1);
    let data = pattern(300_000, 3);
    write(&l.lower(0).join("src"), &data);
    let m = l.mount();
    let src = std::fs::File::open(m.mnt.join("src")).unwrap();
    let dst = std::fs::File::create(m.mnt.join("dst")).unwrap();
    let mut off_in: i64 = 1000;
    let mut off_out: i64 = 0;
    let mut left = 200_000usize;
    while left > 0 {
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop(dst);
    assert!(read(&m.mnt.join("dst")) == data[1000..201_000]);
    assert!(read(&l.upper.join("dst")) == data[1000..201_000]);
}

#[test]
fn statfs_reports_upper_filesystem() {
    let l = Layers::new(1);
    let m = l.mount();
    let sf = |p: &Path| {
        let c = cpath(p);
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: valid path and out-pointer.
        check(unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) }).unwrap();
        // SAFETY: statfs succeeded.
        unsafe { st.assume_init() }
    };
    let a = sf(&m.mnt);
    let u = sf(&l.upper);
    assert_eq!(a.f_type, 0x65735546, "f_type is FUSE_SUPER_MAGIC");
    assert_eq!(a.f_blocks * a.f_bsize as u64, u.f_blocks * u.f_bsize as u64);
    assert_eq!(a.f_files, u.f_files);
    assert_eq!(a.f_namelen, 255);
    // Free space moves with other tests writing to the same disk; only
    // check it is in range.
    assert!(a.f_bfree <= a.f_blocks && a.f_bavail <= a.f_bfree);
}

// ---- xattrs ------------------------------------------------------------------

#[test]
fn xattr_get_set_list_remove() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"");
    set_xattr(&l.lower(0).join("f"), "user.lower", b"L").unwrap();
    let m = l.mount();
    let f = m.mnt.join("f");
    assert_eq!(get_xattr(&f, "user.lower").unwrap(), b"L");
    assert_eq!(xattr_names(&f), ["user.lower"]);
    set_xattr(&f, "user.a", b"1").unwrap();
    set_xattr(&f, "user.big", &[7u8; 2000]).unwrap();
    assert_eq!(xattr_names(&f), ["user.a", "user.big", "user.lower"]);
    assert_eq!(get_xattr(&f, "user.big").unwrap(), vec![7u8; 2000]);
    remove_xattr(&f, "user.lower").unwrap();
    assert_eq!(err_of(get_xattr(&f, "user.lower")), libc::ENODATA);
    assert_eq!(err_of(remove_xattr(&f, "user.lower")), libc::ENODATA);
    assert_eq!(xattr_names(&f), ["user.a", "user.big"]);
    // XATTR_CREATE on an existing name, XATTR_REPLACE on a missing one.
    let flagged = |name: &str, flags: i32| {
        let (c, n) = (cpath(&f), std::ffi::CString::new(name).unwrap());
        // SAFETY: valid strings and buffer.
        check(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, flags) })
    };
    assert_eq!(err_of(flagged("user.a", libc::XATTR_CREATE)), libc::EEXIST);
    assert_eq!(
        err_of(flagged("user.none", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    // Size probe (size 0) returns the length.
    let (c, n) = (cpath(&f), std::ffi::CString::new("user.big").unwrap());
    // SAFETY: size 0 probe with a null buffer is allowed.
    let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(len, 2000);
    assert_eq!(get_xattr(&l.upper.join("f"), "user.a").unwrap(), b"1");
}

#[test]
fn overlay_xattrs_are_hidden_and_escaped_like_kernel() {
    if !require_root("overlay_xattrs_are_hidden_and_escaped_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("f"), b"x");
        write(&l.lower(0).join("d/y"), b"y");
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, l| {
        let f = mnt.join("f");
        std::fs::write(&f, b"copied").unwrap(); // gets overlay.origin in upper
        std::fs::write(mnt.join("d/z"), b"").unwrap(); // d gets impure/origin
        let origin = get_xattr(&f, "trusted.overlay.origin").map_err(|e| errno(&e));
        set_xattr(&f, "trusted.overlay.foo", b"bar").unwrap();
        let through = (
            xattr_names(&f),
            get_xattr(&f, "trusted.overlay.foo").unwrap(),
            xattr_names(&mnt.join("d")),
        );
        let on_disk: Vec<String> = xattr_names(&l.upper.join("f"))
            .into_iter()
            .filter(|n| n != "trusted.overlay.origin")
            .collect();
        remove_xattr(&f, "trusted.overlay.foo").unwrap();
        let after = xattr_names(&f);
        (origin, through, on_disk, after)
    });
    assert_eq!(k.2, ["trusted.overlay.overlay.foo"], "kernel on-disk name");
    assert_eq!(p, k);
}

// ---- access / utimensat ------------------------------------------------------

#[test]
fn access_checks() {
    let l = Layers::new(1);
    write(&l.lower(0).join("rw"), b"");
    write(&l.lower(0).join("exe"), b"");
    write(&l.lower(0).join("gone"), b"");
    std::fs::set_permissions(l.lower(0).join("rw"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(l.lower(0).join("exe"), PermissionsExt::from_mode(0o755)).unwrap();
    let m = l.mount();
    std::fs::remove_file(m.mnt.join("gone")).unwrap();
    access(&m.mnt.join("rw"), libc::R_OK | libc::W_OK).unwrap();
    access(&m.mnt.join("exe"), libc::X_OK).unwrap();
    access(&m.mnt, libc::W_OK | libc::X_OK).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Even root needs an x bit to execute.
        assert_eq!(err_of(access(&m.mnt.join("rw"), libc::X_OK)), libc::EACCES);
    }
    assert_eq!(
        err_of(access(&m.mnt.join("gone"), libc::F_OK)),
        libc::ENOENT
    );
    assert_eq!(
        err_of(access(&m.mnt.join("nope"), libc::F_OK)),
        libc::ENOENT
    );
    // access() does not copy up.
    assert!(absent(&l.upper.join("rw")));
}

#[test]
fn utimensat_now_and_omit() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"");
    set_times(&l.lower(0).join("f"), 1_000_000_000, 1_100_000_000);
    let m = l.mount();
    let f = m.mnt.join("f");
    // Only mtime: atime must stay.
    utimens(&f, ts(0, libc::UTIME_OMIT), ts(1_234_567_890, 42)).unwrap();
    let t = times(&f);
    assert_eq!(t, (1_000_000_000, 0, 1_234_567_890, 42));
    // atime = now, mtime untouched.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    utimens(&f, ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)).unwrap();
    let t = times(&f);
    assert!(t.0 >= before - 1, "atime not set to now: {t:?}");
    assert_eq!((t.2, t.3), (1_234_567_890, 42));
    // Both omitted: nothing changes.
    utimens(&f, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_OMIT)).unwrap();
    assert_eq!(times(&f), t);
    assert_eq!(times(&l.upper.join("f")), t);
    // Lower untouched.
    assert_eq!(times(&l.lower(0).join("f")).2, 1_100_000_000);
}

#[test]
fn rename_new_dir_over_deleted_lower_dir_hides_old_contents() {
    if !require_root("rename_new_dir_over_deleted_lower_dir_hides_old_contents") {
        return;
    }
    // A directory moved onto a name whose lower directory was deleted must
    // not merge with that lower directory again (the kernel marks it opaque).
    let setup = |l: &Layers| {
        write(&l.lower(0).join("x/old"), b"");
        write(&l.lower(0).join("t/old"), b"");
        write(&l.lower(0).join("p/x/old"), b"");
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        std::fs::remove_dir_all(mnt.join("x")).unwrap();
        std::fs::create_dir(mnt.join("new")).unwrap();
        std::fs::write(mnt.join("new/mine"), b"").unwrap();
        std::fs::rename(mnt.join("new"), mnt.join("x")).unwrap();
        // Onto an existing, emptied lower directory.
        std::fs::remove_file(mnt.join("t/old")).unwrap();
        std::fs::create_dir(mnt.join("new2")).unwrap();
        std::fs::rename(mnt.join("new2"), mnt.join("t")).unwrap();
        // Into another merged directory.
        std::fs::remove_dir_all(mnt.join("p/x")).unwrap();
        std::fs::create_dir(mnt.join("new3")).unwrap();
        std::fs::rename(mnt.join("new3"), mnt.join("p/x")).unwrap();
        (ls(&mnt.join("x")), ls(&mnt.join("t")), ls(&mnt.join("p/x")))
    });
    assert_eq!(k, (vec!["mine".to_string()], vec![], vec![]), "kernel");
    assert_eq!(p, k);
    // The same must hold after a remount (the state is on disk).
    let l = Layers::new(1);
    setup(&l);
    {
        let m = l.mount();
        std::fs::remove_dir_all(m.mnt.join("x")).unwrap();
        std::fs::create_dir(m.mnt.join("new")).unwrap();
        std::fs::rename(m.mnt.join("new"), m.mnt.join("x")).unwrap();
    }
    let m = l.mount();
    assert!(
        names(&m.mnt.join("x")).is_empty(),
        "{:?}",
        ls(&m.mnt.join("x"))
    );
}

#[test]
fn chmod_of_merged_dir_keeps_its_contents() {
    let l = Layers::new(2);
    write(&l.lower(0).join("d/a"), b"");
    write(&l.lower(1).join("d/b"), b"");
    let m = l.mount();
    std::fs::set_permissions(m.mnt.join("d"), PermissionsExt::from_mode(0o711)).unwrap();
    assert_eq!(lstat(&m.mnt.join("d")).unwrap().mode() & 0o7777, 0o711);
    assert_eq!(ls(&m.mnt.join("d")), ["a", "b"]);
    assert_eq!(lstat(&l.upper.join("d")).unwrap().mode() & 0o7777, 0o711);
    assert!(names(&l.upper.join("d")).is_empty(), "contents copied up");
}

#[test]
fn removing_recreated_name_does_not_resurrect_hidden_lower() {
    if !require_root("removing_recreated_name_does_not_resurrect_hidden_lower") {
        return;
    }
    let setup = |l: &Layers| {
        whiteout(&l.lower(0).join("k"));
        write(&l.lower(1).join("k"), b"hidden by kernel whiteout");
        write(&l.lower(0).join(".wh.o"), b"");
        write(&l.lower(1).join("o"), b"hidden by OCI whiteout");
        write(&l.lower(0).join("p/.wh..wh..opq"), b"");
        write(&l.lower(1).join("p/x"), b"hidden by opaque dir");
        write(&l.lower(0).join("s"), b"shadow");
        write(&l.lower(1).join("s"), b"under the shadow");
    };
    let l = Layers::new(2);
    setup(&l);
    let m = l.mount();
    for name in ["k", "o", "p/x"] {
        let p = m.mnt.join(name);
        assert!(enoent(&p), "{name} visible before");
        std::fs::write(&p, b"new").unwrap();
        assert_eq!(read(&p), b"new");
        std::fs::remove_file(&p).unwrap();
        assert!(enoent(&p), "{name} resurrected after delete");
    }
    // A lower name shadowing another: deleting it hides both.
    std::fs::remove_file(m.mnt.join("s")).unwrap();
    assert!(enoent(&m.mnt.join("s")));
    assert_eq!(ls(&m.mnt), ["p"]);
    assert!(names(&m.mnt.join("p")).is_empty());
    drop(m);
    // And after a remount.
    let m = l.mount();
    assert_eq!(ls(&m.mnt), ["p"]);
    assert!(names(&m.mnt.join("p")).is_empty());
}

#[test]
fn unlinked_open_files_stay_readable_and_writable() {
    let l = Layers::new(1);
    write(&l.lower(0).join("low"), b"lower data");
    let m = l.mount();
    // Lower file open read-only, then deleted.
    let mut f = std::fs::File::open(m.mnt.join("low")).unwrap();
    std::fs::remove_file(m.mnt.join("low")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower data");
    // Upper file open read-write, then deleted.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.mnt.join("up"))
        .unwrap();
    f.write_all_at(b"before", 0).unwrap();
    std::fs::remove_file(m.mnt.join("up")).unwrap();
    f.write_all_at(b"after!", 6).unwrap();
    let mut buf = [0u8; 12];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"beforeafter!");
    assert!(names(&m.mnt).is_empty());
}

/// fstat(2) of an open file whose name was removed: the kernel answers
/// from the open file (nlink 0).
#[test]
fn fstat_after_unlink_works() {
    let l = Layers::new(1);
    write(&l.lower(0).join("low"), b"lower data");
    write(&l.upper.join("old"), b"upper data");
    let m = l.mount();
    let a = std::fs::File::open(m.mnt.join("low")).unwrap();
    let b = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("old"))
        .unwrap();
    let c = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.mnt.join("new"))
        .unwrap();
    c.write_all_at(b"new!", 0).unwrap();
    for n in ["low", "old", "new"] {
        std::fs::remove_file(m.mnt.join(n)).unwrap();
    }
    assert_eq!(a.metadata().expect("fstat lower").len(), 10);
    assert_eq!(b.metadata().expect("fstat upper").len(), 10);
    let md = c.metadata().expect("fstat created");
    assert_eq!((md.len(), md.nlink()), (4, 0));
}

#[test]
fn shared_writable_mmap_of_lower_file() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), &[b'.'; 8192]);
    let m = l.mount();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("f"))
        .unwrap();
    // SAFETY: mapping a file we hold open, 8192 bytes, unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let s = std::slice::from_raw_parts_mut(p as *mut u8, 8192);
        s[..5].copy_from_slice(b"mmap!");
        s[5000..5004].copy_from_slice(b"MMAP");
        check(libc::msync(p, 8192, libc::MS_SYNC)).unwrap();
        libc::munmap(p, 8192);
    }
    drop(f);
    let got = read(&m.mnt.join("f"));
    assert_eq!(&got[..5], b"mmap!");
    assert_eq!(&got[5000..5004], b"MMAP");
    drop(m);
    let up = std::fs::read(l.upper.join("f")).unwrap();
    assert_eq!(&up[..5], b"mmap!");
    assert_eq!(&up[5000..5004], b"MMAP");
    assert_eq!(
        std::fs::read(l.lower(0).join("f")).unwrap(),
        vec![b'.'; 8192]
    );
}

#[test]
fn chown_of_setuid_file_matches_kernel() {
    if !require_root("chown_of_setuid_file_matches_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        for n in ["a", "b"] {
            let p = l.lower(0).join(n);
            write(&p, b"#!/bin/true\n");
            std::os::unix::fs::lchown(&p, Some(1000), Some(1000)).unwrap();
            std::fs::set_permissions(&p, PermissionsExt::from_mode(0o6755)).unwrap();
        }
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        // Copy-up keeps the bits; chown (even by root) clears them.
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("a"))
            .unwrap();
        let a = lstat(&mnt.join("a")).unwrap().mode() & 0o7777;
        std::os::unix::fs::lchown(mnt.join("b"), Some(2000), None).unwrap();
        let b = lstat(&mnt.join("b")).unwrap().mode() & 0o7777;
        (a, b)
    });
    assert_eq!(k.0, 0o6755, "kernel");
    assert_eq!(p, k);
}

/// An unprivileged write clears setuid, and setgid with group execute
/// (with FUSE passthrough the kernel does it before the backing write).
#[test]
fn unprivileged_write_clears_setuid_like_kernel() {
    if !require_root("unprivileged_write_clears_setuid_like_kernel") {
        return;
    }
    let files = [("a", 0o4755), ("b", 0o2775), ("c", 0o2745), ("d", 0o6775)];
    let setup = |l: &Layers| {
        for (n, mode) in files {
            let p = l.lower(0).join(n);
            write(&p, b"#!/bin/true\n");
            std::os::unix::fs::lchown(&p, Some(1000), Some(1000)).unwrap();
            std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
        }
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        let mut modes = Vec::new();
        for (n, _) in files {
            let path = mnt.join(n);
            // Twice: the first write copies up, the second is to the upper file.
            for _ in 0..2 {
                let ok = std::process::Command::new("setpriv")
                    .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
                    .args(["sh", "-c", "printf x >> \"$1\"", "sh"])
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "append to {n} as uid 1000");
            }
            modes.push(lstat(&path).unwrap().mode() & 0o7777);
        }
        modes
    });
    assert_eq!(k, vec![0o755, 0o775, 0o2745, 0o775], "kernel");
    assert_eq!(p, k);
}

/// Writes, truncate(2), ftruncate and open(O_TRUNC) by an unprivileged
/// user clear setuid (and setgid with group execute) as on the kernel, in
/// both I/O modes: FUSE passthrough and cached (with FUSE_HANDLE_KILLPRIV_V2
/// the kernel leaves the clearing to plyfs).
#[test]
fn unprivileged_modifications_clear_setuid_like_kernel() {
    if !require_root("unprivileged_modifications_clear_setuid_like_kernel") {
        return;
    }
    let ops: [(&str, &str); 5] = [
        ("w", "printf x >> \"$1\""),
        ("t", "truncate -s 1 \"$1\""),
        ("o", ": > \"$1\""),
        ("f", "exec 3<>\"$1\" && truncate -s 2 /dev/fd/3"),
        (
            "p",
            "printf yy | dd of=\"$1\" bs=1 seek=3 conv=notrunc status=none",
        ),
    ];
    let modes = [0o4755, 0o2775, 0o2745, 0o6777];
    let setup = |l: &Layers| {
        for (n, _) in ops {
            for (i, mode) in modes.iter().enumerate() {
                // One lower file, one already in the upper layer.
                for (dir, tag) in [(l.lower(0), "l"), (l.upper.as_path(), "u")] {
                    let p = dir.join(format!("{n}{i}{tag}"));
                    write(&p, b"#!/bin/true\n");
                    std::os::unix::fs::lchown(&p, Some(1000), Some(1000)).unwrap();
                    std::fs::set_permissions(&p, PermissionsExt::from_mode(*mode)).unwrap();
                }
            }
        }
    };
    let run = |mnt: &Path, _: &Layers| {
        let mut out = Vec::new();
        for (n, script) in ops {
            for i in 0..modes.len() {
                for tag in ["l", "u"] {
                    let path = mnt.join(format!("{n}{i}{tag}"));
                    let ok = std::process::Command::new("setpriv")
                        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
                        .args(["sh", "-c", script, "sh"])
                        .arg(&path)
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "{script} on {} as uid 1000", path.display());
                    let st = lstat(&path).unwrap();
                    out.push((format!("{n}{i}{tag}"), st.mode() & 0o7777, st.len()));
                }
            }
        }
        out
    };
    for opts in ["", "passthrough=off"] {
        let (p, k) = plyfs_and_kernel_with(1, opts, "", setup, run);
        assert!(
            k.iter().any(|(_, m, _)| *m == 0o755),
            "kernel clears setuid"
        );
        assert_eq!(p, k, "plyfs -o {opts:?}");
    }
}

#[test]
fn directory_nlink_matches_kernel() {
    if !require_root("directory_nlink_matches_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        std::fs::create_dir_all(l.upper.join("uonly/s1")).unwrap();
        std::fs::create_dir_all(l.upper.join("uonly/s2")).unwrap();
        std::fs::create_dir_all(l.lower(0).join("lonly/s1")).unwrap();
        std::fs::create_dir_all(l.lower(0).join("merged/s1")).unwrap();
        std::fs::create_dir_all(l.upper.join("merged/s2")).unwrap();
        write(&l.lower(0).join("f"), b"");
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        ["uonly", "lonly", "merged", "f"]
            .iter()
            .map(|n| lstat(&mnt.join(n)).unwrap().nlink())
            .collect::<Vec<_>>()
    });
    assert_eq!(p, k);
}

#[test]
fn append_writes_from_two_fds() {
    let l = Layers::new(1);
    write(&l.lower(0).join("log"), b"start\n");
    let m = l.mount();
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join("log"))
            .unwrap()
    };
    let (mut a, mut b) = (open(), open());
    for i in 0..50 {
        writeln!(a, "a{i}").unwrap();
        writeln!(b, "b{i}").unwrap();
    }
    drop((a, b));
    let s = String::from_utf8(read(&m.mnt.join("log"))).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 101);
    assert_eq!(lines[0], "start");
    for i in 0..50 {
        assert_eq!(lines[1 + 2 * i], format!("a{i}"));
        assert_eq!(lines[2 + 2 * i], format!("b{i}"));
    }
}

#[test]
fn every_create_kind_over_a_whiteout() {
    if !require_root("every_create_kind_over_a_whiteout") {
        return;
    }
    let l = Layers::new(2);
    for n in ["fifo", "sym", "hard", "ren", "file"] {
        write(&l.lower(0).join(n), b"top");
        write(&l.lower(1).join(n), b"bottom");
    }
    write(&l.lower(0).join("src"), b"src");
    let m = l.mount();
    let p = |n: &str| m.mnt.join(n);
    for n in ["fifo", "sym", "hard", "ren", "file"] {
        std::fs::remove_file(p(n)).unwrap();
        assert!(is_whiteout(&l.upper.join(n)));
    }
    mknod(&p("fifo"), libc::S_IFIFO | 0o600, 0).unwrap();
    std::os::unix::fs::symlink("src", p("sym")).unwrap();
    std::fs::hard_link(p("src"), p("hard")).unwrap();
    std::fs::write(p("tmp"), b"renamed").unwrap();
    std::fs::rename(p("tmp"), p("ren")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p("file"))
        .unwrap()
        .write_all(b"created")
        .unwrap();
    assert!(lstat(&p("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(read(&p("sym")), b"src");
    assert_eq!(read(&p("hard")), b"src");
    assert_eq!(read(&p("ren")), b"renamed");
    assert_eq!(read(&p("file")), b"created");
    assert_eq!(ls(&m.mnt), ["fifo", "file", "hard", "ren", "src", "sym"]);
    for n in ["fifo", "sym", "hard", "ren", "file"] {
        assert!(
            !is_whiteout(&l.upper.join(n)),
            "{n} still a whiteout in upper"
        );
    }
    // Deleting them again must not bring back the lower files.
    for n in ["fifo", "sym", "hard", "ren", "file"] {
        std::fs::remove_file(p(n)).unwrap();
        assert!(enoent(&p(n)), "{n} resurrected");
    }
    assert_eq!(ls(&m.mnt), ["src"]);
}

#[test]
fn open_with_o_creat_on_existing_lower_file_does_not_copy_up() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    let m = l.mount();
    let c = cpath(&m.mnt.join("f"));
    // SAFETY: valid C string; the fd is closed right away.
    let fd =
        check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CREAT, 0o644) }).unwrap();
    // SAFETY: fd was just opened.
    unsafe { libc::close(fd) };
    assert_eq!(read(&m.mnt.join("f")), b"lower");
    assert!(absent(&l.upper.join("f")), "O_CREAT|O_RDONLY copied up");
}

#[test]
fn parent_metadata_comes_from_the_topmost_layer() {
    let l = Layers::new(2);
    write(&l.lower(1).join("d/f"), b"bottom");
    std::fs::create_dir(l.lower(0).join("d")).unwrap();
    std::fs::set_permissions(l.lower(0).join("d"), PermissionsExt::from_mode(0o710)).unwrap();
    std::fs::set_permissions(l.lower(1).join("d"), PermissionsExt::from_mode(0o755)).unwrap();
    set_xattr(&l.lower(0).join("d"), "user.layer", b"top").unwrap();
    set_xattr(&l.lower(1).join("d"), "user.layer", b"bottom").unwrap();
    let m = l.mount();
    assert_eq!(lstat(&m.mnt.join("d")).unwrap().mode() & 0o7777, 0o710);
    assert_eq!(get_xattr(&m.mnt.join("d"), "user.layer").unwrap(), b"top");
    std::fs::write(m.mnt.join("d/f"), b"copied").unwrap();
    assert_eq!(lstat(&l.upper.join("d")).unwrap().mode() & 0o7777, 0o710);
    assert_eq!(get_xattr(&l.upper.join("d"), "user.layer").unwrap(), b"top");
    assert_eq!(get_xattr(&m.mnt.join("d"), "user.layer").unwrap(), b"top");
}

#[test]
fn upper_dir_above_lower_file_does_not_merge_below_it_like_kernel() {
    if !require_root("upper_dir_above_lower_file_does_not_merge_below_it_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.upper.join("x/u"), b"");
        write(&l.lower(0).join("x"), b"a file");
        write(&l.lower(1).join("x/hidden"), b"");
    };
    let (p, k) = plyfs_and_kernel(2, setup, |mnt, _| ls(&mnt.join("x")));
    assert_eq!(k, ["u"], "kernel");
    assert_eq!(p, k);
}

/// A vfs_cap_data v2 value granting cap_net_raw (effective + permitted).
fn file_caps() -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[test]
fn file_capabilities_on_copy_up_write_and_chown_like_kernel() {
    if !require_root("file_capabilities_on_copy_up_write_and_chown_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        for n in ["open", "write", "chown"] {
            let p = l.lower(0).join(n);
            write(&p, b"binary");
            std::fs::set_permissions(&p, PermissionsExt::from_mode(0o755)).unwrap();
            set_xattr(&p, "security.capability", &file_caps()).unwrap();
        }
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, _| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("open"))
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("write"))
            .unwrap()
            .write_all(b"B")
            .unwrap();
        std::os::unix::fs::lchown(mnt.join("chown"), Some(1), None).unwrap();
        ["open", "write", "chown"]
            .iter()
            .map(|n| get_xattr(&mnt.join(n), "security.capability").is_ok())
            .collect::<Vec<_>>()
    });
    assert!(k[0], "kernel keeps caps on copy-up");
    assert_eq!(p, k, "[open, write, chown]: capability still present");
}
