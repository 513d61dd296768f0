//! Unmounting detaches plyfs's own mount and nothing else: not a mount
//! below it at the same path, not another mount stacked on top of it.

mod common;

use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for a test; unmounted on drop if it is still on top.
struct Tmpfs {
    mnt: std::path::PathBuf,
    device: Option<String>,
}

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "plyfs-test"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success());
        Tmpfs {
            mnt: at.to_path_buf(),
            device: top_mount_device(at),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if top_mount_device(&self.mnt) == self.device {
            umount(&self.mnt);
        }
    }
}

fn umount_cmd(at: &Path) {
    let out = Command::new("umount").arg(at).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the daemon of `m` has exited (it does once its mount went).
fn wait_exit(m: &mut PlyfsMount) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.exited() {
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn umount_leaves_the_mount_below_in_place() {
    if !require_root("umount_leaves_the_mount_below_in_place") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    let _tmp = Tmpfs::mount(&l.mnt);
    std::fs::write(l.mnt.join("on-tmpfs"), b"t").unwrap();
    let mut m = PlyfsMount::start(&l.mnt, &format!("lowerdir={}", l.lowerdir()), &[]).unwrap();
    assert!(l.mnt.join("f").exists());
    umount_cmd(&l.mnt);
    wait_exit(&mut m);
    assert!(
        l.mnt.join("on-tmpfs").exists(),
        "the tmpfs below the plyfs mount was unmounted too"
    );
}

#[test]
fn stacked_mounts_unmount_one_at_a_time() {
    if !require_root("stacked_mounts_unmount_one_at_a_time") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("zero"), b"0");
    write(&l.lower(1).join("one"), b"1");
    let mut a =
        PlyfsMount::start(&l.mnt, &format!("lowerdir={}", l.lower(0).display()), &[]).unwrap();
    let mut b =
        PlyfsMount::start(&l.mnt, &format!("lowerdir={}", l.lower(1).display()), &[]).unwrap();
    assert!(l.mnt.join("one").exists());
    umount_cmd(&l.mnt);
    wait_exit(&mut b);
    assert!(
        l.mnt.join("zero").exists(),
        "unmounting the top plyfs mount also removed the one below"
    );
    umount_cmd(&l.mnt);
    wait_exit(&mut a);
    assert!(!is_mounted(&l.mnt));
}

/// SIGTERM to a daemon whose mount is covered by another mount must not
/// unmount the one on top (it would, unmounting by path).
#[test]
fn sigterm_to_a_covered_mount_leaves_the_top_one() {
    if !require_root("sigterm_to_a_covered_mount_leaves_the_top_one") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("zero"), b"0");
    write(&l.lower(1).join("one"), b"1");
    let mut a =
        PlyfsMount::start(&l.mnt, &format!("lowerdir={}", l.lower(0).display()), &[]).unwrap();
    let _b = PlyfsMount::start(&l.mnt, &format!("lowerdir={}", l.lower(1).display()), &[]).unwrap();
    // SAFETY: kill with the pid of a child we spawned.
    unsafe {
        libc::kill(a.pid() as i32, libc::SIGTERM);
    }
    wait_exit(&mut a);
    assert!(
        l.mnt.join("one").exists(),
        "SIGTERM to the covered daemon unmounted the mount on top"
    );
}

/// SIGTERM unmounts cleanly also when the mount started a background
/// thread before serving (the work dir's remover, for an earlier mount's
/// leftovers): that thread blocks the signals too, so the kernel cannot
/// hand SIGTERM to it and kill the daemon without an unmount.
#[test]
fn sigterm_with_work_dir_leftovers_unmounts_cleanly() {
    if !require_root("sigterm_with_work_dir_leftovers_unmounts_cleanly") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    // What an interrupted earlier mount leaves in work/work.
    let left = l.work.join("work/old-staging");
    std::fs::create_dir_all(left.join("a/b")).unwrap();
    write(&left.join("a/b/f"), b"y");
    for _ in 0..5 {
        let m = l.mount();
        assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"x");
        let st = m.unmount();
        assert!(st.is_some_and(|s| s.success()), "plyfs exit status {st:?}");
        assert!(!is_mounted(&l.mnt));
        std::fs::create_dir_all(left.join("a/b")).unwrap();
    }
}
