//! Regression tests for bugs the stress suite found, each the smallest
//! reproduction (the tool that found it is named).

use super::*;

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// A 4 KiB-aligned buffer of `n` bytes inside `v`.
fn aligned(v: &mut Vec<u8>, n: usize) -> &mut [u8] {
    v.resize(n + 4096, 0);
    let off = v.as_ptr().align_offset(4096);
    &mut v[off..off + n]
}

/// O_DIRECT reads of a lower file, O_DIRECT writes to a new file and to a
/// lower file (copy-up), with and without passthrough, give the same
/// results as on kernel overlayfs. Regression: plyfs opened its own
/// descriptor with O_DIRECT, so reads of lower files and every O_DIRECT
/// I/O under passthrough=off failed with EINVAL (plyfs's buffers are not
/// aligned).
#[test]
fn o_direct_on_lower_and_upper_files() {
    if !runnable("o_direct_on_lower_and_upper_files") {
        return;
    }
    for pt in ["on", "off", "all"] {
        let l = Layers::new(1);
        let data = pattern(7, 64 * 1024);
        write(&l.lower(0).join("f"), &data);
        let m = mount_with(&l, &format!("passthrough={pt}"));
        let ops = |root: &Path| -> Vec<u8> {
            let mut buf = Vec::new();
            let direct = |w: bool| {
                let mut o = std::fs::OpenOptions::new();
                o.read(true).write(w).custom_flags(libc::O_DIRECT);
                o
            };
            // Read a lower file.
            let f = direct(false)
                .open(root.join("f"))
                .expect("open lower O_DIRECT");
            let b = aligned(&mut buf, 16384);
            let n = f
                .read_at(b, 4096)
                .unwrap_or_else(|e| panic!("passthrough={pt}: O_DIRECT read of a lower file: {e}"));
            assert_eq!(n, 16384);
            assert!(
                b[..] == data[4096..4096 + 16384],
                "passthrough={pt}: O_DIRECT read data"
            );
            drop(f);
            // Write a new file.
            let mut g = direct(true)
                .create(true)
                .truncate(true)
                .open(root.join("g"))
                .unwrap_or_else(|e| panic!("passthrough={pt}: create O_DIRECT: {e}"));
            let b = aligned(&mut buf, 8192);
            b.copy_from_slice(&data[..8192]);
            g.write_all(b)
                .unwrap_or_else(|e| panic!("passthrough={pt}: O_DIRECT write: {e}"));
            drop(g);
            // Write into the lower file (copy-up), read it back uncached.
            let f = direct(true)
                .open(root.join("f"))
                .expect("open O_RDWR|O_DIRECT");
            let b = aligned(&mut buf, 4096);
            b.fill(0xa5);
            f.write_at(b, 8192)
                .unwrap_or_else(|e| panic!("passthrough={pt}: O_DIRECT write after copy-up: {e}"));
            let b = aligned(&mut buf, 65536);
            let n = f.read_at(b, 0).expect("O_DIRECT read back");
            b[..n].to_vec()
        };
        let got = ops(&m.mnt);
        let mut want = data.clone();
        want[8192..12288].fill(0xa5);
        assert!(
            got == want,
            "passthrough={pt}: data read back with O_DIRECT"
        );
        assert!(
            read_all(&m.mnt.join("f")) == want,
            "passthrough={pt}: buffered read after O_DIRECT write"
        );
        assert!(
            read_all(&m.mnt.join("g")) == data[..8192],
            "passthrough={pt}: new file"
        );
        let live = snapshot(&m.mnt);
        drop(m);
        // The kernel does the same on a fresh upper, and shows plyfs's.
        upper_check::check_with_kernel(&l, &live, "O_DIRECT");
        let k = Layers::new(1);
        write(&k.lower(0).join("f"), &data);
        let km = k.mount_kernel(upper_check::KERNEL_OPTS);
        assert!(ops(&km.mnt) == want, "kernel overlayfs: O_DIRECT data");
    }
}

/// SEEK_DATA/SEEK_HOLE on a file whose data still sits in the kernel's
/// writeback cache (passthrough=off): plyfs answered from the upper file,
/// which did not have that data yet, so SEEK_DATA skipped it or failed
/// with ENXIO (found by stress-ng's `seek` stressor). Now the kernel
/// answers from its own size; kernel overlayfs gives the exact extents,
/// and both are valid answers.
#[test]
fn seek_data_hole_sees_unflushed_writes() {
    if !runnable("seek_data_hole_sees_unflushed_writes") {
        return;
    }
    for pt in ["off", "on"] {
        let l = Layers::new(1);
        let m = mount_with(&l, &format!("passthrough={pt}"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.mnt.join("sparse"))
            .expect("create");
        const AT: i64 = 1 << 20;
        f.write_all_at(&[7u8; 4096], AT as u64).expect("write");
        let seek = |off: i64, whence: i32| {
            // SAFETY: lseek on a descriptor we hold.
            let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
            if r < 0 {
                panic!(
                    "passthrough={pt}: lseek({off}, {whence}): {}",
                    std::io::Error::last_os_error()
                );
            }
            r
        };
        let data = seek(0, libc::SEEK_DATA);
        assert!(
            data <= AT,
            "passthrough={pt}: SEEK_DATA from 0 skipped the data: {data}"
        );
        assert_eq!(seek(AT, libc::SEEK_DATA), AT, "passthrough={pt}");
        assert_eq!(
            seek(AT + 100, libc::SEEK_DATA),
            AT + 100,
            "passthrough={pt}"
        );
        let hole = seek(AT, libc::SEEK_HOLE);
        assert!(
            hole >= AT + 4096,
            "passthrough={pt}: SEEK_HOLE inside the data: {hole}"
        );
        // SAFETY: lseek on a descriptor we hold.
        let past = unsafe { libc::lseek(f.as_raw_fd(), AT + 8192, libc::SEEK_DATA) };
        assert_eq!(past, -1, "passthrough={pt}: SEEK_DATA past the end");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENXIO),
            "passthrough={pt}"
        );
        drop(f);
    }
}

/// A file with more hard links than plyfs remembers names for (16), all
/// made and removed through the mount, as stress-ng's `link` stressor
/// does: plyfs forgot the file's remaining names, so SETATTR (the kernel
/// flushing cached times after an unlink), open, chmod and link of the
/// remaining name failed with ENOENT, and the kernel turned the failed
/// flush into EIO from close() and a sticky writeback error on the mount
/// (syncfs/fsync of unrelated files failed). Also with the other names in
/// another directory, and with a name that shows in the lower layer (the
/// upper object then went through the work dir, and the last unlink was
/// not recognised as such).
#[test]
fn hard_links_beyond_remembered_names_stay_reachable() {
    if !runnable("hard_links_beyond_remembered_names_stay_reachable") {
        return;
    }
    for pt in ["off", "on"] {
        let l = Layers::new(1);
        write(&l.lower(0).join("d1/shadowed"), b"lower");
        let m = mount_with(&l, &format!("passthrough={pt}"));
        let d1 = m.mnt.join("d1");
        let d2 = m.mnt.join("d2");
        std::fs::create_dir(&d2).expect("mkdir d2");
        let mount_dir = std::fs::File::open(&m.mnt).expect("open mount root");
        let syncfs = |what: &str| {
            // SAFETY: syncfs on a descriptor we hold.
            let r = unsafe { libc::syncfs(mount_dir.as_raw_fd()) };
            assert_eq!(
                r,
                0,
                "passthrough={pt}, {what}: syncfs: {}",
                std::io::Error::last_os_error()
            );
        };
        for (base, links_in) in [("base", &d1), ("base2", &d2), ("shadowed", &d1)] {
            let bp = d1.join(base);
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&bp)
                .expect("create");
            for round in 0..3 {
                for j in 0..40 {
                    let n = links_in.join(format!("{base}-n{j}"));
                    std::fs::hard_link(&bp, &n).unwrap_or_else(|e| {
                        panic!("passthrough={pt}, {base} round {round}: link: {e}")
                    });
                    std::fs::symlink_metadata(&n).expect("lstat link");
                }
                for j in 0..40 {
                    std::fs::remove_file(links_in.join(format!("{base}-n{j}"))).expect("unlink");
                }
                f.write_all(b"more").expect("write");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&bp)
                    .unwrap_or_else(|e| panic!("passthrough={pt}, {base}: reopen: {e}"));
                std::fs::set_permissions(&bp, std::os::unix::fs::PermissionsExt::from_mode(0o640))
                    .unwrap_or_else(|e| panic!("passthrough={pt}, {base}: chmod: {e}"));
                syncfs(base);
            }
            // SAFETY: close of a descriptor we own; its error is the point.
            let r = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) };
            assert_eq!(
                r,
                0,
                "passthrough={pt}, {base}: close: {}",
                std::io::Error::last_os_error()
            );
            std::fs::hard_link(&bp, d1.join(format!("{base}-kept")))
                .unwrap_or_else(|e| panic!("passthrough={pt}, {base}: link after: {e}"));
            assert_eq!(read_all(&bp), b"moremoremore", "passthrough={pt}, {base}");
        }
        syncfs("end");
        drop(mount_dir);
        let live = snapshot(&m.mnt);
        drop(m);
        upper_check::check_with_kernel(&l, &live, "hard links");
    }
}
