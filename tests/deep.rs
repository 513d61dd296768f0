//! Deep and wide trees: nothing in plyfs may recurse over directory depth
//! or tree size (copy-up of parents, renames, removals, hard-link scans,
//! work-directory cleanup, listings). Kernel overlayfs copies up at depth
//! 30,000; so must plyfs, without the daemon dying.

mod common;

use common::fdtree::{self, Dir};
use common::*;

use std::process::Command;

fn assert_alive(m: &PlyfsMount) {
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
    assert!(
        std::fs::metadata(&m.mnt).is_ok(),
        "mount no longer answers:\n{log}"
    );
}

/// Layers whose trees are too deep for `std::fs::remove_dir_all` (it
/// recurses): `rm -rf` removes them first, when the test ends.
struct DeepLayers(Layers);

impl std::ops::Deref for DeepLayers {
    type Target = Layers;
    fn deref(&self) -> &Layers {
        &self.0
    }
}

impl Drop for DeepLayers {
    fn drop(&mut self) {
        let _ = Command::new("rm")
            .arg("-rf")
            .arg(self.0.dir.path())
            .status();
    }
}

fn deep_layers(n: usize) -> DeepLayers {
    DeepLayers(Layers::new(n))
}

fn write_flags() -> i32 {
    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC
}

/// A write at depth 30,000 copies every parent up (the kernel does it too).
#[test]
fn copy_up_at_depth_30000() {
    if !require_root("copy_up_at_depth_30000") || !require_fuse("copy_up_at_depth_30000") {
        return;
    }
    const DEPTH: usize = 30_000;
    let l = deep_layers(1);
    let bottom = fdtree::chain(l.lower(0), "d", DEPTH).unwrap();
    bottom.write("f", write_flags(), b"lower").unwrap();
    drop(bottom);
    let m = l.mount();
    let d = fdtree::descend(&l.mnt, "d", DEPTH).unwrap();
    d.write("f", libc::O_WRONLY | libc::O_APPEND, b"+upper")
        .unwrap();
    assert_eq!(d.read("f").unwrap(), b"lower+upper");
    drop(d);
    assert_alive(&m);
    drop(m);
    // Every parent exists in the upper layer, the file with its new data.
    let u = fdtree::descend(&l.upper, "d", DEPTH).unwrap();
    assert_eq!(u.read("f").unwrap(), b"lower+upper");
    // And a kernel mount of the same layers agrees.
    drop(u);
    let k = l.mount_kernel("");
    let kd = fdtree::descend(&k.mnt, "d", DEPTH).unwrap();
    assert_eq!(kd.read("f").unwrap(), b"lower+upper");
}

/// A 10,000-deep lower tree: copied up at the bottom, renamed (with a
/// redirect, then by copying the whole tree up), and removed with rm -rf.
#[test]
fn deep_tree_copied_up_renamed_and_removed() {
    if !require_root("deep_tree_copied_up_renamed_and_removed") {
        return;
    }
    const DEPTH: usize = 10_000;
    for redirect in ["on", "copy"] {
        let l = deep_layers(1);
        let top = Dir::open(l.lower(0)).unwrap();
        top.mkdir("top").unwrap();
        let mut d = top.sub("top").unwrap();
        for i in 0..DEPTH {
            d.write("f", write_flags(), format!("{i}").as_bytes())
                .unwrap();
            d.mkdir("d").unwrap();
            d = d.sub("d").unwrap();
        }
        drop(d);
        let m = PlyfsMount::start(
            &l.mnt,
            &format!("{},redirect_dir={redirect}", l.options()),
            &[],
        )
        .expect("mount");
        let bottom = fdtree::descend(&l.mnt.join("top"), "d", DEPTH - 1).unwrap();
        bottom.chmod("f", 0o600).unwrap();
        drop(bottom);
        std::fs::rename(l.mnt.join("top"), l.mnt.join("moved")).unwrap();
        let bottom = fdtree::descend(&l.mnt.join("moved"), "d", DEPTH - 1).unwrap();
        assert_eq!(
            bottom.read("f").unwrap(),
            format!("{}", DEPTH - 1).as_bytes()
        );
        drop(bottom);
        assert_eq!(
            fdtree::count_entries(&l.mnt.join("moved")).unwrap(),
            2 * DEPTH,
            "redirect_dir={redirect}"
        );
        let out = Command::new("rm")
            .arg("-rf")
            .arg(l.mnt.join("moved"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rm -rf with redirect_dir={redirect}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read_dir(&l.mnt).unwrap().next().is_none());
        assert_alive(&m);
        drop(m);
        let k = l.mount_kernel(if redirect == "on" {
            "redirect_dir=on"
        } else {
            ""
        });
        let left: Vec<_> = std::fs::read_dir(&k.mnt).unwrap().collect();
        assert!(
            left.is_empty(),
            "kernel sees {left:?} (redirect_dir={redirect})"
        );
    }
}

/// Copying up one name of a hard link scans the layer for its other names:
/// the scan must cope with a 20,000-deep layer.
#[test]
fn hard_link_scan_of_a_deep_layer() {
    if !require_root("hard_link_scan_of_a_deep_layer") {
        return;
    }
    const DEPTH: usize = 20_000;
    let l = deep_layers(1);
    let bottom = fdtree::chain(l.lower(0), "d", DEPTH).unwrap();
    bottom.write("a", write_flags(), b"shared").unwrap();
    bottom.link("a", "b").unwrap();
    drop(bottom);
    let m = l.mount();
    let d = fdtree::descend(&l.mnt, "d", DEPTH).unwrap();
    d.write("a", libc::O_WRONLY | libc::O_APPEND, b"!").unwrap();
    assert_eq!(d.read("b").unwrap(), b"shared!");
    assert_eq!(d.stat("a").unwrap().st_ino, d.stat("b").unwrap().st_ino);
    drop(d);
    assert_alive(&m);
}

/// Leftovers of a crashed mount in the work directory, 20,000 levels deep,
/// are removed at the next mount.
#[test]
fn deep_leftover_in_workdir_is_cleaned() {
    if !require_root("deep_leftover_in_workdir_is_cleaned") {
        return;
    }
    let l = deep_layers(1);
    std::fs::create_dir(l.work.join("work")).unwrap();
    let bottom = fdtree::chain(&l.work.join("work"), "#plyfs.left", 20_000).unwrap();
    bottom.write("f", write_flags(), b"x").unwrap();
    drop(bottom);
    // The mount does not wait for the leftover: it goes in the background.
    let m = l.mount();
    std::fs::write(m.mnt.join("new"), b"n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let left = loop {
        let left: Vec<_> = std::fs::read_dir(l.work.join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with("#plyfs.whiteout"))
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(left.is_empty(), "work dir still holds {left:?}");
    assert_alive(&m);
}

/// With few descriptors allowed, cached directory descriptors are evicted
/// and reopened from their parents, 5,000 levels deep.
#[test]
fn deep_reopen_with_a_small_descriptor_budget() {
    if !require_root("deep_reopen_with_a_small_descriptor_budget") {
        return;
    }
    const DEPTH: usize = 5_000;
    let l = deep_layers(1);
    let bottom = fdtree::chain(l.lower(0), "d", DEPTH).unwrap();
    bottom.write("f", write_flags(), b"lower").unwrap();
    drop(bottom);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 512 && exec \"$@\"", "sh", PLYFS]);
    let m = PlyfsMount::start_with(cmd, &l.mnt, &l.options(), &[]).expect("mount");
    for round in 0..2 {
        let d = fdtree::descend(&l.mnt, "d", DEPTH).unwrap();
        d.write("f", libc::O_WRONLY | libc::O_APPEND, b"+").unwrap();
        assert_eq!(
            d.read("f").unwrap(),
            if round == 0 {
                &b"lower+"[..]
            } else {
                b"lower++"
            }
        );
        drop(d);
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    }
    assert_alive(&m);
}

/// A directory of 100,000 entries: listed, written into (new names and
/// copy-ups), listed again, then removed.
#[test]
fn directory_of_100000_entries() {
    if !require_root("directory_of_100000_entries") {
        return;
    }
    const N: usize = 100_000;
    let l = deep_layers(1);
    let big = l.lower(0).join("big");
    std::fs::create_dir(&big).unwrap();
    let d = Dir::open(&big).unwrap();
    for i in 0..N {
        d.write(&format!("file-{i:06}"), write_flags(), b"x")
            .unwrap();
    }
    drop(d);
    let m = PlyfsMount::start(&l.mnt, &format!("{},volatile", l.options()), &[]).expect("mount");
    let mbig = l.mnt.join("big");
    assert_eq!(std::fs::read_dir(&mbig).unwrap().count(), N);
    for i in 0..1000 {
        std::fs::write(mbig.join(format!("new-{i}")), b"n").unwrap();
        let p = mbig.join(format!("file-{:06}", i * 97));
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"y").unwrap();
    }
    let names: std::collections::HashSet<_> = std::fs::read_dir(&mbig)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), N + 1000);
    assert_eq!(std::fs::read(mbig.join("file-000097")).unwrap(), b"xy");
    let out = Command::new("rm").arg("-rf").arg(&mbig).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!mbig.exists());
    assert_alive(&m);
    drop(m);
    std::fs::remove_dir_all(l.work.join("work/incompat")).unwrap();
    let k = l.mount_kernel("");
    assert!(!k.mnt.join("big").exists());
}
