//! Copy-up: what is preserved, what triggers it, and its side conditions
//! (parents first, lower untouched, sparseness, origin marker, clean
//! workdir, concurrency, fds opened before the copy-up).

mod common;
mod sem;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

use common::*;
use sem::*;

const DATA: &[u8] = b"the original lower content\n";
const F_ATIME: (i64, i64) = (1_200_000_000, 123_456_789);
const F_MTIME: (i64, i64) = (1_100_000_000, 987_654_321);
const D_TIMES: (i64, i64) = (1_000_000_000, 1_000_000_001);

/// What copy-up must carry over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
    /// Without the overlay's own markers.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<u8>,
}

fn attrs(p: &Path) -> Attrs {
    let md = lstat(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    Attrs {
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs: xattrs(p)
            .into_iter()
            .filter(|(n, _)| !n.starts_with(b"trusted.overlay."))
            .collect(),
        data: if md.is_file() {
            // O_NOATIME: the check itself must not move the atime it checks.
            let mut v = Vec::new();
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME)
                .open(p)
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        } else {
            Vec::new()
        },
    }
}

/// lower0/dir/f with a distinctive mode, owner, times and xattrs; `dir` too.
fn fixture() -> Layers {
    let l = Layers::new(1);
    let dir = l.lower(0).join("dir");
    let f = dir.join("f");
    write(&f, DATA);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(&f, Some(1234), Some(5678)).unwrap();
    set_xattr(&f, "user.foo", b"bar").unwrap();
    set_xattr(&f, "trusted.baz", b"qux").unwrap();
    utimens(&f, ts(F_ATIME.0, F_ATIME.1), ts(F_MTIME.0, F_MTIME.1)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(&dir, Some(1111), Some(2222)).unwrap();
    set_xattr(&dir, "user.dirattr", b"d").unwrap();
    set_times(&dir, D_TIMES.0, D_TIMES.1);
    l
}

/// Runs `op` on `mnt/dir/f` of a fresh fixture and checks the upper copy
/// against the lower's attributes changed by `expect`. `dir_changes`: the
/// op modifies the directory itself (its mtime is then not compared).
fn trigger(op: impl Fn(&Path), expect: impl Fn(&mut Attrs, &Attrs), dir_changes: bool) -> Layers {
    let l = fixture();
    let lower_f = l.lower(0).join("dir/f");
    let lower_d = l.lower(0).join("dir");
    // snapshot() reads files (moving atimes), so it goes first.
    let lower_snap = snapshot(l.lower(0));
    let before_f = attrs(&lower_f);
    let before_d = attrs(&lower_d);
    {
        let m = l.mount();
        op(&m.mnt);
    }
    assert!(l.upper.join("dir").is_dir(), "parent not copied up");
    let upper_f = l.upper.join("dir/f");
    if lstat(&upper_f).is_ok() && !is_whiteout(&upper_f) {
        let got = attrs(&upper_f);
        let mut want = before_f.clone();
        expect(&mut want, &got);
        assert_eq!(got, want, "upper copy");
    }
    let mut got_d = attrs(&l.upper.join("dir"));
    let mut want_d = before_d.clone();
    if dir_changes {
        got_d.mtime = want_d.mtime;
        got_d.atime = want_d.atime;
    }
    want_d.data.clear();
    got_d.data.clear();
    assert_eq!(got_d, want_d, "copied-up parent directory");
    // The lower layer is never modified (not even its atimes).
    assert_eq!(attrs(&lower_f), before_f, "lower file changed");
    assert_eq!(attrs(&lower_d), before_d, "lower dir changed");
    let d = diff(&lower_snap, &snapshot(l.lower(0)), "before", "after");
    assert!(d.is_empty(), "lower layer changed:\n{d}");
    assert!(leftovers(&l.work).is_empty(), "{:?}", leftovers(&l.work));
    l
}

#[test]
fn open_for_write_copies_everything() {
    if !require_root("open_for_write_copies_everything") {
        return;
    }
    trigger(
        |m| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(m.join("dir/f"))
                .unwrap();
        },
        |_, _| {},
        false,
    );
}

#[test]
fn truncate_triggers_copy_up() {
    if !require_root("truncate_triggers_copy_up") {
        return;
    }
    let l = trigger(
        |m| {
            let c = cpath(&m.join("dir/f"));
            // SAFETY: valid C string.
            check(unsafe { libc::truncate(c.as_ptr(), 5) }).unwrap();
        },
        |a, got| {
            a.data.truncate(5);
            a.mtime = got.mtime; // truncate sets mtime (checked below)
        },
        false,
    );
    // truncate changes mtime: only check it moved on from the lower's.
    let md = lstat(&l.upper.join("dir/f")).unwrap();
    assert_ne!((md.mtime(), md.mtime_nsec()), F_MTIME);
}

#[test]
fn chmod_triggers_copy_up() {
    if !require_root("chmod_triggers_copy_up") {
        return;
    }
    trigger(
        |m| std::fs::set_permissions(m.join("dir/f"), PermissionsExt::from_mode(0o604)).unwrap(),
        |a, _| a.mode = 0o604,
        false,
    );
}

#[test]
fn chown_triggers_copy_up() {
    if !require_root("chown_triggers_copy_up") {
        return;
    }
    trigger(
        |m| std::os::unix::fs::lchown(m.join("dir/f"), Some(4321), Some(8765)).unwrap(),
        |a, _| {
            a.uid = 4321;
            a.gid = 8765;
        },
        false,
    );
}

#[test]
fn utimes_triggers_copy_up() {
    if !require_root("utimes_triggers_copy_up") {
        return;
    }
    trigger(
        |m| utimens(&m.join("dir/f"), ts(1_300_000_000, 5), ts(1_310_000_000, 6)).unwrap(),
        |a, _| {
            a.atime = (1_300_000_000, 5);
            a.mtime = (1_310_000_000, 6);
        },
        false,
    );
}

#[test]
fn setxattr_triggers_copy_up() {
    if !require_root("setxattr_triggers_copy_up") {
        return;
    }
    trigger(
        |m| set_xattr(&m.join("dir/f"), "user.added", b"1").unwrap(),
        |a, _| {
            a.xattrs.push((b"user.added".to_vec(), b"1".to_vec()));
            a.xattrs.sort();
        },
        false,
    );
}

#[test]
fn removexattr_triggers_copy_up() {
    if !require_root("removexattr_triggers_copy_up") {
        return;
    }
    trigger(
        |m| remove_xattr(&m.join("dir/f"), "user.foo").unwrap(),
        |a, _| a.xattrs.retain(|(n, _)| n != b"user.foo"),
        false,
    );
}

#[test]
fn link_triggers_copy_up() {
    if !require_root("link_triggers_copy_up") {
        return;
    }
    let l = trigger(
        |m| std::fs::hard_link(m.join("dir/f"), m.join("dir/f2")).unwrap(),
        |_, _| {},
        true,
    );
    let a = lstat(&l.upper.join("dir/f")).unwrap();
    let b = lstat(&l.upper.join("dir/f2")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn rename_triggers_copy_up() {
    if !require_root("rename_triggers_copy_up") {
        return;
    }
    let l = trigger(
        |m| std::fs::rename(m.join("dir/f"), m.join("dir/g")).unwrap(),
        |_, _| {},
        true,
    );
    let want = attrs(&l.lower(0).join("dir/f"));
    let got = attrs(&l.upper.join("dir/g"));
    // rename changes only ctime; everything compared here is preserved.
    assert_eq!(got, want);
    assert!(is_whiteout(&l.upper.join("dir/f")));
}

#[test]
fn reading_does_not_copy_up_or_touch_lower() {
    if !require_root("reading_does_not_copy_up_or_touch_lower") {
        return;
    }
    let l = fixture();
    let before = attrs(&l.lower(0).join("dir/f"));
    {
        let m = l.mount();
        assert_eq!(std::fs::read(m.mnt.join("dir/f")).unwrap(), DATA);
        std::fs::OpenOptions::new()
            .read(true)
            .open(m.mnt.join("dir/f"))
            .unwrap();
    }
    assert!(absent(&l.upper.join("dir")), "read-only access copied up");
    let mut after = attrs(&l.lower(0).join("dir/f"));
    after.atime = before.atime; // see reading_keeps_atime_like_kernel
    assert_eq!(after, before, "lower changed");
}

/// The kernel reads lower files with O_NOATIME: neither the lower file's
/// atime nor the atime shown in the mount moves on a read.
#[test]
fn reading_keeps_atime_like_kernel() {
    if !require_root("reading_keeps_atime_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("f"), DATA);
        utimens(
            &l.lower(0).join("f"),
            ts(F_ATIME.0, F_ATIME.1),
            ts(F_MTIME.0, F_MTIME.1),
        )
        .unwrap();
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, l| {
        std::fs::read(mnt.join("f")).unwrap();
        let a = lstat(&mnt.join("f")).unwrap();
        let b = lstat(&l.lower(0).join("f")).unwrap();
        ((a.atime(), a.atime_nsec()), (b.atime(), b.atime_nsec()))
    });
    assert_eq!(k, (F_ATIME, F_ATIME), "kernel");
    assert_eq!(p, k, "(mount atime, lower atime) after a read");
}

#[test]
fn parents_are_copied_first_with_their_metadata() {
    if !require_root("parents_are_copied_first_with_their_metadata") {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    write(&lo.join("a/b/c/file"), b"deep");
    for (i, d) in ["a", "a/b", "a/b/c"].iter().enumerate() {
        let p = lo.join(d);
        let i = i as u32;
        std::fs::set_permissions(&p, PermissionsExt::from_mode(0o700 + 0o10 * i + i)).unwrap();
        std::os::unix::fs::lchown(&p, Some(100 + i), Some(200 + i)).unwrap();
        set_xattr(&p, "user.level", d.as_bytes()).unwrap();
    }
    for (i, d) in ["a/b/c", "a/b", "a"].iter().enumerate() {
        set_times(
            &lo.join(d),
            1_000_000_000 + i as i64,
            1_000_001_000 + i as i64,
        );
    }
    let want: Vec<Attrs> = ["a", "a/b", "a/b/c"]
        .iter()
        .map(|d| attrs(&lo.join(d)))
        .collect();
    {
        let m = l.mount();
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join("a/b/c/file"))
            .unwrap()
            .write_all(b"!")
            .unwrap();
    }
    for (i, d) in ["a", "a/b", "a/b/c"].iter().enumerate() {
        assert_eq!(attrs(&l.upper.join(d)), want[i], "upper {d}");
    }
    assert_eq!(std::fs::read(l.upper.join("a/b/c/file")).unwrap(), b"deep!");
    assert_eq!(std::fs::read(lo.join("a/b/c/file")).unwrap(), b"deep");
}

#[test]
fn lower_layer_is_never_modified() {
    if !require_root("lower_layer_is_never_modified") {
        return;
    }
    let l = Layers::new(2);
    for (i, lo) in l.lowers.iter().enumerate() {
        write(&lo.join(format!("d/file{i}")), b"data");
        write(&lo.join("d/shared"), format!("layer {i}").as_bytes());
        write(&lo.join(format!("only{i}/x")), b"x");
        std::os::unix::fs::symlink("file0", lo.join(format!("d/link{i}"))).unwrap();
        mknod(&lo.join(format!("d/fifo{i}")), libc::S_IFIFO | 0o644, 0).unwrap();
    }
    let before: Vec<_> = l.lowers.iter().map(|p| snapshot(p)).collect();
    {
        let m = l.mount();
        let d = m.mnt.join("d");
        std::fs::write(d.join("shared"), b"new").unwrap();
        std::fs::write(d.join("file1"), b"new").unwrap();
        std::fs::remove_file(d.join("file0")).unwrap();
        std::fs::rename(d.join("link0"), d.join("link-renamed")).unwrap();
        std::os::unix::fs::lchown(d.join("link1"), Some(7), Some(7)).unwrap();
        std::fs::set_permissions(d.join("fifo0"), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::set_permissions(m.mnt.join("only1"), PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::remove_dir_all(m.mnt.join("only0")).unwrap();
        std::fs::write(m.mnt.join("only1/new"), b"n").unwrap();
        set_xattr(&d.join("fifo1"), "trusted.t", b"v").unwrap();
    }
    for (i, lo) in l.lowers.iter().enumerate() {
        let d = diff(&before[i], &snapshot(lo), "before", "after");
        assert!(d.is_empty(), "lower{i} changed:\n{d}");
    }
}

#[test]
fn other_kinds_copy_up_with_metadata() {
    if !require_root("other_kinds_copy_up_with_metadata") {
        return;
    }
    let l = Layers::new(1);
    let lo = l.lower(0);
    std::os::unix::fs::symlink("some/target", lo.join("link")).unwrap();
    mknod(&lo.join("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    mknod(&lo.join("chr"), libc::S_IFCHR | 0o600, libc::makedev(1, 3)).unwrap();
    std::fs::create_dir(lo.join("dir")).unwrap();
    write(&lo.join("dir/inner"), b"i");
    for n in ["link", "fifo", "chr", "dir"] {
        std::os::unix::fs::lchown(lo.join(n), Some(42), Some(43)).unwrap();
    }
    let before = snapshot(lo);
    {
        let m = l.mount();
        // Metadata changes that leave the compared fields as they were.
        for n in ["link", "fifo", "chr", "dir"] {
            set_xattr(&m.mnt.join(n), "trusted.mark", b"1").unwrap();
            remove_xattr(&m.mnt.join(n), "trusted.mark").unwrap();
        }
        assert_eq!(ls(&m.mnt.join("dir")), ["inner"]);
    }
    let mut after = snapshot(&l.upper);
    // Only the directory itself is copied up, not its contents.
    assert!(after.remove(&b"dir/inner"[..]).is_none());
    let mut want = before.clone();
    want.remove(&b"dir/inner"[..]);
    for v in after.values_mut() {
        v.xattrs
            .retain(|(n, _)| !n.starts_with(b"trusted.overlay."));
    }
    let d = diff(&want, &after, "lower", "upper");
    assert!(d.is_empty(), "{d}");
}

#[test]
fn sparse_file_stays_sparse() {
    let l = Layers::new(1);
    let size: u64 = 100 << 20;
    {
        let f = std::fs::File::create(l.lower(0).join("sparse")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 50 << 20).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
    }
    {
        let m = l.mount();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("sparse"))
            .unwrap();
        f.write_all_at(b"H", 0).unwrap();
        drop(f);
        let f = std::fs::File::open(m.mnt.join("sparse")).unwrap();
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, 50 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        f.read_exact_at(&mut buf[..4], size - 4).unwrap();
        assert_eq!(&buf[..4], b"tail");
        f.read_exact_at(&mut buf[..4], 0).unwrap();
        assert_eq!(&buf[..4], b"Head");
        f.read_exact_at(&mut buf, 10 << 20).unwrap();
        assert_eq!(buf, [0; 6]);
    }
    let md = lstat(&l.upper.join("sparse")).unwrap();
    assert_eq!(md.len(), size);
    // Three 4 KiB data blocks; allow generous slack but far below 100 MiB.
    assert!(
        md.blocks() * 512 < 4 << 20,
        "upper copy uses {} bytes",
        md.blocks() * 512
    );
}

#[test]
fn large_file_copies_correctly() {
    let l = Layers::new(1);
    let data = pattern(20 << 20, 7);
    write(&l.lower(0).join("big"), &data);
    {
        let m = l.mount();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join("big"))
            .unwrap();
        f.write_all(b"END").unwrap();
        drop(f);
        let mut got = Vec::new();
        std::fs::File::open(m.mnt.join("big"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got.len(), data.len() + 3);
        assert!(
            got[..data.len()] == data[..],
            "content differs through the mount"
        );
    }
    let up = std::fs::read(l.upper.join("big")).unwrap();
    assert_eq!(&up[data.len()..], b"END");
    assert!(up[..data.len()] == data[..], "upper content differs");
}

#[test]
fn copy_up_records_origin_and_leaves_workdir_clean() {
    if !require_root("copy_up_records_origin_and_leaves_workdir_clean") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/f"), b"x");
    {
        let m = l.mount();
        std::fs::write(m.mnt.join("d/f"), b"y").unwrap();
        // The marker is private: not visible through the mount.
        assert!(
            !xattr_names(&m.mnt.join("d/f"))
                .iter()
                .any(|n| n.contains("overlay"))
        );
    }
    let origin = get_xattr(&l.upper.join("d/f"), "trusted.overlay.origin")
        .expect("trusted.overlay.origin on the copied-up file");
    assert!(!origin.is_empty());
    assert!(leftovers(&l.work).is_empty(), "{:?}", leftovers(&l.work));
}

#[test]
fn concurrent_copy_up_makes_one_copy() {
    let l = Layers::new(1);
    const THREADS: usize = 16;
    for round in 0..4 {
        write(&l.lower(0).join(format!("f{round}")), &[b'.'; THREADS]);
    }
    let m = l.mount();
    for round in 0..4 {
        let path = m.mnt.join(format!("f{round}"));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.write_all_at(&[b'A' + i as u8], i as u64).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let want: Vec<u8> = (0..THREADS).map(|i| b'A' + i as u8).collect();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            want,
            "round {round}: a write was lost"
        );
    }
    drop(m);
    for round in 0..4 {
        let want: Vec<u8> = (0..THREADS).map(|i| b'A' + i as u8).collect();
        assert_eq!(
            std::fs::read(l.upper.join(format!("f{round}"))).unwrap(),
            want
        );
    }
    assert_eq!(names(&l.upper).len(), 4);
    assert!(leftovers(&l.work).is_empty(), "{:?}", leftovers(&l.work));
}

#[test]
fn read_only_fd_sees_data_written_after_copy_up() {
    if !require_root("read_only_fd_sees_data_written_after_copy_up") {
        return;
    }
    let setup = |l: &Layers| write(&l.lower(0).join("f"), b"old data");
    let op = |mnt: &Path, _: &Layers| {
        let mut ro = std::fs::File::open(mnt.join("f")).unwrap();
        let mut first = [0u8; 3];
        ro.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"old");
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(mnt.join("f"))
            .unwrap();
        w.write_all(b"NEW DATA!").unwrap();
        drop(w);
        ro.seek(SeekFrom::Start(0)).unwrap();
        let mut got = Vec::new();
        ro.read_to_end(&mut got).unwrap();
        String::from_utf8_lossy(&got).into_owned()
    };
    let (p, k) = plyfs_and_kernel(1, setup, op);
    assert_eq!(k, "NEW DATA!", "kernel");
    assert_eq!(p, k);
}

#[test]
fn read_only_mmap_style_pread_after_copy_up_by_truncate() {
    // The same through pread on an fd opened before a truncate-based copy-up.
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"0123456789");
    let m = l.mount();
    let ro = std::fs::File::open(m.mnt.join("f")).unwrap();
    let mut b = [0u8; 4];
    ro.read_exact_at(&mut b, 0).unwrap();
    let c = cpath(&m.mnt.join("f"));
    // SAFETY: valid C string.
    check(unsafe { libc::truncate(c.as_ptr(), 4) }).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("f"))
        .unwrap()
        .write_all_at(b"abcd", 0)
        .unwrap();
    ro.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"abcd");
    assert_eq!(ro.metadata().unwrap().len(), 4);
}

#[test]
fn copy_up_of_file_with_o_noatime_unfriendly_owner() {
    // A lower file owned by someone else and unreadable by its mode still
    // copies up for root (CAP_DAC_OVERRIDE), like the kernel.
    if !require_root("copy_up_of_file_with_o_noatime_unfriendly_owner") {
        return;
    }
    let l = Layers::new(1);
    let f = l.lower(0).join("secret");
    write(&f, b"s3cret");
    std::fs::set_permissions(&f, PermissionsExt::from_mode(0o000)).unwrap();
    std::os::unix::fs::lchown(&f, Some(999), Some(999)).unwrap();
    let m = l.mount();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.mnt.join("secret"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(std::fs::read(m.mnt.join("secret")).unwrap(), b"s3cret!");
    let md = lstat(&l.upper.join("secret")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0, 999));
}

/// A POSIX ACL in the kernel's xattr format: (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const ACL_UNDEFINED_ID: u32 = u32::MAX;

fn sample_acl() -> Vec<u8> {
    acl(&[
        (0x01, 6, ACL_UNDEFINED_ID), // user::rw-
        (0x02, 7, 1000),             // user:1000:rwx
        (0x04, 4, ACL_UNDEFINED_ID), // group::r--
        (0x10, 5, ACL_UNDEFINED_ID), // mask::r-x
        (0x20, 4, ACL_UNDEFINED_ID), // other::r--
    ])
}

#[test]
fn posix_acls_are_copied_up_and_inherited_like_kernel() {
    if !require_root("posix_acls_are_copied_up_and_inherited_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        let f = l.lower(0).join("d/f");
        write(&f, b"acl");
        set_xattr(&f, "system.posix_acl_access", &sample_acl()).unwrap();
        let d = l.lower(0).join("d");
        set_xattr(&d, "system.posix_acl_default", &sample_acl()).unwrap();
    };
    let (p, k) = plyfs_and_kernel(1, setup, |mnt, l| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("d/f"))
            .unwrap()
            .write_all(b"!")
            .unwrap();
        std::fs::write(mnt.join("d/new"), b"").unwrap();
        std::fs::create_dir(mnt.join("d/newdir")).unwrap();
        let get = |p: &Path, n: &str| get_xattr(p, n).ok();
        (
            get(&l.upper.join("d/f"), "system.posix_acl_access"),
            get(&mnt.join("d/f"), "system.posix_acl_access"),
            lstat(&mnt.join("d/f")).unwrap().mode() & 0o7777,
            get(&l.upper.join("d"), "system.posix_acl_default"),
            get(&mnt.join("d/new"), "system.posix_acl_access"),
            lstat(&mnt.join("d/new")).unwrap().mode() & 0o7777,
            get(&mnt.join("d/newdir"), "system.posix_acl_default"),
        )
    });
    assert_eq!(k.0.as_deref(), Some(&sample_acl()[..]), "kernel");
    assert_eq!(p, k);
}

/// Lower hard links stay one file after copy-up (plyfs links every visible
/// name into the upper layer): what the mount shows equals the kernel's
/// `index=on` behaviour, and the upper holds both names as one inode.
fn lower_hard_link_case(list_first: bool) {
    let setup = |l: &Layers| {
        write(&l.lower(0).join("d/x"), b"orig");
        std::fs::hard_link(l.lower(0).join("d/x"), l.lower(0).join("d/y")).unwrap();
        write(&l.lower(0).join("d/other"), b"");
    };
    let (p, k) = plyfs_and_kernel_with(1, "", "index=on", setup, |mnt, _| {
        if list_first {
            for n in ["d/x", "d/y"] {
                lstat(&mnt.join(n)).unwrap();
            }
        }
        let before = lstat(&mnt.join("d/x")).unwrap().ino();
        std::fs::write(mnt.join("d/x"), b"new").unwrap();
        let (x, y) = (
            lstat(&mnt.join("d/x")).unwrap(),
            lstat(&mnt.join("d/y")).unwrap(),
        );
        (
            ls(&mnt.join("d")),
            std::fs::read(mnt.join("d/x")).ok(),
            std::fs::read(mnt.join("d/y")).ok(),
            (x.ino() == y.ino(), x.ino() == before, x.nlink(), y.nlink()),
        )
    });
    assert_eq!(
        k.0,
        ["other".to_string(), "x".to_string(), "y".to_string()],
        "kernel"
    );
    assert_eq!(k.2.as_deref(), Some(&b"new"[..]), "kernel index=on");
    assert_eq!(p, k);
}

#[test]
fn copy_up_of_lower_hard_link_keeps_one_file() {
    if !require_root("copy_up_of_lower_hard_link_keeps_one_file") {
        return;
    }
    lower_hard_link_case(false);
}

#[test]
fn copy_up_of_lower_hard_link_after_lookup_keeps_one_file() {
    if !require_root("copy_up_of_lower_hard_link_after_lookup_keeps_one_file") {
        return;
    }
    lower_hard_link_case(true);
}

#[test]
fn lower_hard_links_are_plain_links_in_upper_after_copy_up() {
    let l = Layers::new(1);
    write(&l.lower(0).join("a/x"), b"orig");
    std::fs::create_dir(l.lower(0).join("b")).unwrap();
    std::fs::hard_link(l.lower(0).join("a/x"), l.lower(0).join("b/y")).unwrap();
    {
        let m = l.mount();
        std::fs::write(m.mnt.join("a/x"), b"new").unwrap();
        assert_eq!(std::fs::read(m.mnt.join("b/y")).unwrap(), b"new");
    }
    let (x, y) = (
        lstat(&l.upper.join("a/x")).unwrap(),
        lstat(&l.upper.join("b/y")).unwrap(),
    );
    assert_eq!((x.ino(), x.nlink()), (y.ino(), 2));
    assert_eq!(std::fs::read(l.lower(0).join("b/y")).unwrap(), b"orig");
    // A remount sees one file too.
    let m = l.mount();
    assert_eq!(std::fs::read(m.mnt.join("b/y")).unwrap(), b"new");
    assert_eq!(ls(&m.mnt.join("a")), ["x"]);
}

/// Changes plyfs makes on its own during a copy-up (the parent renamed
/// into and its times restored, impure marks, other names of a hard link
/// linked in their directories) reach the kernel's attribute cache: stat
/// through the mount shows the real ctime right away, and tar does not
/// report "file changed as we read it".
#[test]
fn copy_up_refreshes_cached_attributes() {
    if !require_root("copy_up_refreshes_cached_attributes") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let l = Layers::new(1);
    write(&l.lower(0).join("d/f"), b"f");
    write(&l.lower(0).join("d/g"), b"g");
    write(&l.lower(0).join("e/h"), b"h");
    std::fs::hard_link(l.lower(0).join("e/h"), l.lower(0).join("d/h")).unwrap();
    let m = l.mount();
    let ctime = |p: &std::path::Path| {
        let md = std::fs::symlink_metadata(p).unwrap();
        // Merged directories report st_nlink 1 (like the kernel's).
        let nlink = if md.is_dir() { 0 } else { md.nlink() };
        (
            md.ctime(),
            md.ctime_nsec(),
            md.mtime(),
            md.mtime_nsec(),
            nlink,
        )
    };
    // Fill the kernel's attribute cache first.
    for p in ["", "d", "e", "d/f", "e/h"] {
        ctime(&m.mnt.join(p));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    for (file, dirs) in [("d/f", &["", "d"][..]), ("d/h", &["e"])] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join(file))
            .unwrap();
        std::io::Write::write_all(&mut f, b"+").unwrap();
        drop(f);
        for d in dirs.iter().chain([&file]) {
            assert_eq!(
                ctime(&m.mnt.join(d)),
                ctime(&l.upper.join(d)),
                "cached attributes of {d:?} after copying {file} up"
            );
        }
    }
    let out = std::process::Command::new("tar")
        .args(["cf", "/dev/null", "-C"])
        .arg(&m.mnt)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
