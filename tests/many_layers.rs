//! Many lower layers (containers-storage allows 500), given as symlinks like
//! its `l/SHORTID` links, and lower-only mounts with several layers.

mod common;

use common::*;

#[test]
fn five_hundred_symlinked_lowers() {
    if !require_fuse("five_hundred_symlinked_lowers") {
        return;
    }
    let l = Layers::new(500);
    // Each layer adds a file and overrides a shared one; layer i also
    // deletes the file of layer i+1 every tenth layer.
    for i in 0..500 {
        write(
            &l.lower(i).join(format!("own/f{i}")),
            format!("{i}").as_bytes(),
        );
        write(&l.lower(i).join("shared"), format!("layer {i}").as_bytes());
        if i % 10 == 0 && i + 1 < 500 {
            whiteout_path_for(&l, i, &format!("own/f{}", i + 1));
        }
    }
    // containers-storage passes short symlinks to the layer directories.
    let links = l.dir.path().join("l");
    std::fs::create_dir(&links).unwrap();
    let mut lowerdir = Vec::new();
    for i in 0..500 {
        let link = links.join(format!("L{i:03}"));
        std::os::unix::fs::symlink(l.lower(i), &link).unwrap();
        lowerdir.push(link.display().to_string());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        l.upper.display(),
        l.work.display()
    );
    let m = PlyfsMount::start(&l.mnt, &opts, &[]).expect("mount 500 lowers");
    assert_eq!(std::fs::read(m.mnt.join("shared")).unwrap(), b"layer 0");
    let n = std::fs::read_dir(m.mnt.join("own")).unwrap().count();
    // 500 files minus the 50 whited out ones (layers 1, 11, 21, ...).
    assert_eq!(n, 450);
    assert!(!m.mnt.join("own/f1").exists());
    assert_eq!(std::fs::read(m.mnt.join("own/f499")).unwrap(), b"499");
    std::fs::write(m.mnt.join("own/f250"), b"changed").unwrap();
    assert_eq!(std::fs::read(l.upper.join("own/f250")).unwrap(), b"changed");
}

fn whiteout_path_for(l: &Layers, layer: usize, rel: &str) {
    let p = l.lower(layer).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    if require_root("whiteouts in lowers") {
        whiteout(&p);
    } else {
        // Unprivileged: the OCI form.
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        write(&p.with_file_name(format!(".wh.{name}")), b"");
    }
}

#[test]
fn more_than_five_hundred_lowers_is_refused() {
    let l = Layers::new(501);
    let out = std::process::Command::new(PLYFS)
        .args(["-o", &format!("lowerdir={}", l.lowerdir())])
        .arg(&l.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many lower directories"));
    assert!(!is_mounted(&l.mnt));
}

#[test]
fn lower_only_mount_with_several_layers() {
    if !require_fuse("lower_only_mount_with_several_layers") {
        return;
    }
    let l = Layers::new(3);
    write(&l.lower(2).join("a"), b"bottom");
    write(&l.lower(1).join("a"), b"middle");
    write(&l.lower(0).join("b"), b"top");
    write(&l.lower(2).join("dir/x"), b"x");
    write(&l.lower(0).join("dir/y"), b"y");
    let m = l.mount_ro();
    assert_eq!(std::fs::read(m.mnt.join("a")).unwrap(), b"middle");
    let mut names: Vec<_> = std::fs::read_dir(m.mnt.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["x", "y"]);
    let err = std::fs::write(m.mnt.join("a"), b"no").unwrap_err();
    assert_eq!(errno(&err), libc::EROFS);
}
