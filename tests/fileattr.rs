//! lsattr/chattr through the mount (FS_IOC_GETFLAGS/SETFLAGS), as kernel
//! overlayfs does them: flags read from the real object, changes copied
//! up, immutable/append-only kept in `overlay.protattr` and enforced.

mod common;

use common::*;

use std::path::Path;
use std::process::Command;

/// Runs a shell script in `dir`; returns (exit code, stdout + stderr with
/// the directory name replaced by `M`).
fn sh(dir: &Path, script: &str) -> (i32, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn layers() -> Layers {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"f\n");
    write(&l.lower(0).join("noatime"), b"n\n");
    write(&l.lower(0).join("d/inner"), b"i\n");
    let st = Command::new("chattr")
        .arg("+A")
        .arg(l.lower(0).join("noatime"))
        .status()
        .unwrap();
    assert!(st.success());
    l
}

/// The same sequence on a kernel overlay mount and on plyfs: every lsattr
/// line and every exit code match, and so do the upper layers' markers.
#[test]
fn chattr_and_lsattr_match_kernel_overlayfs() {
    if !require_root("chattr_and_lsattr_match_kernel_overlayfs") {
        return;
    }
    let script = "\
        lsattr f noatime; lsattr -d d; \
        chattr +A f; echo chattr=$?; lsattr f; \
        chattr +i f; echo chattr=$?; lsattr f; \
        echo x >> f; echo append=$?; rm -f f; echo rm=$?; mv f g; echo mv=$?; \
        chmod 600 f; echo chmod=$?; ln f h; echo ln=$?; \
        chattr -i f; echo chattr=$?; chattr +a f; lsattr f; \
        echo y >> f; echo append=$?; echo z > f; echo trunc=$?; rm -f f; echo rm=$?; \
        chattr -a f; rm -f f; echo rm=$?; \
        chattr +i d; echo chattr=$?; lsattr -d d; touch d/new; echo create=$?; \
        rm -f d/inner; echo unlink=$?; echo w >> d/inner; echo write=$?; \
        chattr -i d; touch d/new; echo create=$?; \
        echo w >> noatime; lsattr noatime";
    let mut runs = Vec::new();
    let mut uppers = Vec::new();
    for kernel in [true, false] {
        let l = layers();
        let (code, out) = if kernel {
            let _k = l.mount_kernel("");
            sh(&l.mnt, script)
        } else {
            let _m = l.mount();
            sh(&l.mnt, script)
        };
        let (_, upper) = sh(
            &l.upper,
            "lsattr noatime; lsattr -d d; getfattr -h -n trusted.overlay.protattr -R . 2>/dev/null",
        );
        runs.push((code, out));
        uppers.push(upper);
    }
    assert_eq!(runs[0], runs[1], "kernel (left) vs plyfs (right)");
    assert_eq!(uppers[0], uppers[1], "upper layers: kernel vs plyfs");
    assert!(
        runs[1].1.contains("----i---------e-------"),
        "{}",
        runs[1].1
    );
}

/// Immutable flags set through plyfs are kept the kernel's way: a kernel
/// mount of the same upper shows and enforces them, and the reverse.
#[test]
fn protection_is_interchangeable_with_kernel_overlayfs() {
    if !require_root("protection_is_interchangeable_with_kernel_overlayfs") {
        return;
    }
    let l = layers();
    {
        let _m = l.mount();
        assert_eq!(sh(&l.mnt, "chattr +i f").0, 0);
    }
    {
        let _k = l.mount_kernel("");
        let (_, out) = sh(
            &l.mnt,
            "lsattr f; echo x >> f; echo append=$?; chattr -i f; chattr +a d/inner",
        );
        assert!(out.contains("----i---------e------- f"), "{out}");
        assert!(!out.contains("append=0"), "{out}");
    }
    let _m = l.mount();
    let (_, out) = sh(
        &l.mnt,
        "lsattr f d/inner; echo x > d/inner; echo trunc=$?; echo y >> d/inner; echo append=$?",
    );
    assert!(out.contains("--------------e------- f"), "{out}");
    assert!(out.contains("-----a--------e------- d/inner"), "{out}");
    assert!(
        !out.contains("trunc=0") && out.contains("append=0"),
        "{out}"
    );
}
