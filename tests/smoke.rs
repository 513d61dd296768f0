//! A first end-to-end check: precedence, copy-up and a whiteout.

mod common;

use common::*;

#[test]
fn precedence_copy_up_and_whiteout() {
    if !require_fuse("precedence_copy_up_and_whiteout") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("top"), b"from top");
    write(&l.lower(1).join("top"), b"from bottom");
    write(&l.lower(1).join("dir/base"), b"base");
    write(&l.lower(0).join("dir/mid"), b"mid");
    let m = l.mount();
    assert_eq!(std::fs::read(m.mnt.join("top")).unwrap(), b"from top");
    let mut names: Vec<_> = std::fs::read_dir(m.mnt.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["base", "mid"]);
    // Copy-up on write.
    std::fs::write(m.mnt.join("dir/base"), b"changed").unwrap();
    assert_eq!(std::fs::read(l.upper.join("dir/base")).unwrap(), b"changed");
    assert_eq!(std::fs::read(l.lower(1).join("dir/base")).unwrap(), b"base");
    // Whiteout on delete.
    std::fs::remove_file(m.mnt.join("top")).unwrap();
    assert!(!m.mnt.join("top").exists());
    let md = std::fs::symlink_metadata(l.upper.join("top")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    drop(m);
    assert!(!is_mounted(&l.mnt));
}
