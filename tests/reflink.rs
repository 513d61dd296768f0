//! Copy-up shares extents on filesystems that can (XFS with reflink): a
//! lower layer on another filesystem, which cannot share with the upper,
//! does not stop the layers that can.

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted XFS image with reflink, unmounted on drop.
struct Xfs {
    mnt: PathBuf,
}

impl Xfs {
    fn new(dir: &Path) -> Option<Xfs> {
        let img = dir.join("xfs.img");
        let mnt = dir.join("xfs");
        std::fs::create_dir(&mnt).ok()?;
        let f = std::fs::File::create(&img).ok()?;
        f.set_len(512 << 20).ok()?;
        let ok = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(Xfs { mnt })
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: valid C string and out-pointer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
        // SAFETY: statvfs succeeded.
        let st = unsafe { st.assume_init() };
        st.f_bfree * st.f_frsize
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        umount(&self.mnt);
    }
}

#[test]
fn copy_up_shares_extents_where_the_filesystem_can() {
    if !require_root("copy_up_shares_extents_where_the_filesystem_can") {
        return;
    }
    let t = Layers::new(1);
    let Some(xfs) = Xfs::new(t.dir.path()) else {
        eprintln!("SKIPPED: mkfs.xfs (xfsprogs) or loop mounts unavailable");
        return;
    };
    let x = &xfs.mnt;
    for d in ["lower", "upper", "work", "mnt"] {
        std::fs::create_dir(x.join(d)).unwrap();
    }
    // lower0 (ext4, the test dir) cannot share extents with the XFS upper.
    write(&t.lower(0).join("small"), b"ext4");
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&x.join("lower/big"), &big);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        t.lower(0).display(),
        x.join("lower").display(),
        x.join("upper").display(),
        x.join("work").display()
    );
    let m = PlyfsMount::start(&x.join("mnt"), &opts, &[]).expect("mount");
    let append = |name: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.mnt.join(name))
            .unwrap();
        std::io::Write::write_all(&mut f, b"!").unwrap();
    };
    append("small");
    let before = xfs.free();
    append("big");
    let used = before.saturating_sub(xfs.free());
    assert!(
        used < 16 << 20,
        "copy-up of a 64 MiB file used {} MiB: extents not shared",
        used >> 20
    );
    let mut want = big.clone();
    want.push(b'!');
    assert!(std::fs::read(m.mnt.join("big")).unwrap() == want);
    drop(m);
}
