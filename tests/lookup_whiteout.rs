//! Lookup precedence, whiteouts and opaque directories.
//!
//! Layers are arranged before mounting; each test checks what the merged
//! view shows by name (stat/read) and by listing. Where the kernel
//! understands the on-disk format, the expected answer is taken from a
//! kernel overlayfs mount of an identical tree.

mod common;
mod sem;

use std::os::unix::fs::{PermissionsExt, symlink};

use common::*;
use sem::*;

fn read(p: &std::path::Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        .unwrap()
}

fn enoent(p: &std::path::Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if errno(&e) == libc::ENOENT)
}

#[test]
fn upper_then_lowers_top_down() {
    let l = Layers::new(3);
    for (i, layer) in [
        l.upper.clone(),
        l.lower(0).into(),
        l.lower(1).into(),
        l.lower(2).into(),
    ]
    .iter()
    .enumerate()
    {
        // Layer i holds names f0..f{i}; name fk is on top in layer k.
        for k in 0..=i {
            write(&layer.join(format!("f{k}")), format!("layer{i}").as_bytes());
        }
    }
    let m = l.mount();
    assert_eq!(read(&m.mnt.join("f0")), "layer0"); // upper
    assert_eq!(read(&m.mnt.join("f1")), "layer1"); // lower0
    assert_eq!(read(&m.mnt.join("f2")), "layer2"); // lower1
    assert_eq!(read(&m.mnt.join("f3")), "layer3"); // lower2
    assert_eq!(ls(&m.mnt), ["f0", "f1", "f2", "f3"]);
}

#[test]
fn directories_merge_across_all_layers() {
    let l = Layers::new(2);
    write(&l.upper.join("d/u"), b"u");
    write(&l.lower(0).join("d/a"), b"a");
    write(&l.lower(1).join("d/b"), b"b");
    write(&l.lower(1).join("d/sub/deep"), b"deep");
    write(&l.lower(0).join("d/sub/mid"), b"mid");
    let m = l.mount();
    assert_eq!(ls(&m.mnt.join("d")), ["a", "b", "sub", "u"]);
    assert_eq!(ls(&m.mnt.join("d/sub")), ["deep", "mid"]);
    assert_eq!(read(&m.mnt.join("d/sub/deep")), "deep");
}

#[test]
fn kernel_whiteout_in_upper_hides_lower_names() {
    if !require_root("kernel_whiteout_in_upper_hides_lower_names") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("file"), b"x");
    write(&l.lower(1).join("dir/inner"), b"y");
    write(&l.lower(1).join("keep"), b"k");
    whiteout(&l.upper.join("file"));
    whiteout(&l.upper.join("dir"));
    let m = l.mount();
    assert!(enoent(&m.mnt.join("file")));
    assert!(enoent(&m.mnt.join("dir")));
    assert!(enoent(&m.mnt.join("dir/inner")));
    assert_eq!(ls(&m.mnt), ["keep"]);
}

#[test]
fn kernel_whiteout_in_lower_hides_only_layers_below() {
    if !require_root("kernel_whiteout_in_lower_hides_only_layers_below") {
        return;
    }
    let l = Layers::new(3);
    // lower1 whites out "a" and "b"; lower2 has both; lower0 re-adds "b".
    whiteout(&l.lower(1).join("a"));
    whiteout(&l.lower(1).join("b"));
    write(&l.lower(2).join("a"), b"bottom a");
    write(&l.lower(2).join("b"), b"bottom b");
    write(&l.lower(0).join("b"), b"top b");
    let m = l.mount();
    assert!(enoent(&m.mnt.join("a")));
    assert_eq!(read(&m.mnt.join("b")), "top b");
    assert_eq!(ls(&m.mnt), ["b"]);
}

#[test]
fn oci_whiteout_hides_name_in_layers_below() {
    let l = Layers::new(3);
    write(&l.lower(0).join(".wh.gone"), b"");
    write(&l.lower(0).join("d/.wh.gonedir"), b"");
    write(&l.lower(1).join("gone"), b"1");
    write(&l.lower(2).join("gone"), b"2");
    write(&l.lower(1).join("d/gonedir/x"), b"x");
    write(&l.lower(1).join("d/stays"), b"s");
    let m = l.mount();
    assert!(enoent(&m.mnt.join("gone")));
    assert!(enoent(&m.mnt.join("d/gonedir")));
    assert!(enoent(&m.mnt.join("d/gonedir/x")));
    assert_eq!(ls(&m.mnt), ["d"]);
    assert_eq!(ls(&m.mnt.join("d")), ["stays"]);
}

#[test]
fn oci_whiteout_in_middle_layer_does_not_hide_layers_above() {
    let l = Layers::new(3);
    write(&l.lower(1).join(".wh.name"), b"");
    write(&l.lower(0).join("name"), b"top");
    write(&l.lower(2).join("name"), b"bottom");
    write(&l.lower(2).join("other"), b"o");
    write(&l.lower(1).join(".wh.other"), b"");
    let m = l.mount();
    assert_eq!(read(&m.mnt.join("name")), "top");
    assert!(enoent(&m.mnt.join("other")));
    assert_eq!(ls(&m.mnt), ["name"]);
}

#[test]
fn oci_whiteout_does_not_hide_entry_in_same_layer() {
    let l = Layers::new(2);
    // An image layer that deleted "f" and re-created it holds both.
    write(&l.lower(0).join(".wh.f"), b"");
    write(&l.lower(0).join("f"), b"recreated");
    write(&l.lower(1).join("f"), b"old");
    let m = l.mount();
    assert_eq!(read(&m.mnt.join("f")), "recreated");
    assert_eq!(ls(&m.mnt), ["f"]);
}

#[test]
fn oci_opaque_marker_hides_lower_directory_contents() {
    let l = Layers::new(3);
    write(&l.lower(0).join("d/top"), b"t");
    write(&l.lower(1).join("d/.wh..wh..opq"), b"");
    write(&l.lower(1).join("d/own"), b"o");
    write(&l.lower(2).join("d/hidden"), b"h");
    write(&l.lower(2).join("d/sub/hidden2"), b"h");
    let m = l.mount();
    assert_eq!(ls(&m.mnt.join("d")), ["own", "top"]);
    assert!(enoent(&m.mnt.join("d/hidden")));
    assert!(enoent(&m.mnt.join("d/sub")));
}

fn xattr_opaque_case(name: &str, value: &[u8]) {
    let l = Layers::new(3);
    write(&l.lower(0).join("d/top"), b"t");
    write(&l.lower(1).join("d/own"), b"o");
    write(&l.lower(2).join("d/hidden"), b"h");
    set_xattr(&l.lower(1).join("d"), name, value).expect("set opaque xattr");
    let m = l.mount();
    assert_eq!(ls(&m.mnt.join("d")), ["own", "top"]);
    assert!(enoent(&m.mnt.join("d/hidden")));
    // The marker itself is private to the overlay.
    assert!(
        !xattr_names(&m.mnt.join("d"))
            .iter()
            .any(|n| n.contains("overlay")),
        "{:?}",
        xattr_names(&m.mnt.join("d"))
    );
}

#[test]
fn trusted_opaque_xattr_hides_lower_directory_contents() {
    if !require_root("trusted_opaque_xattr_hides_lower_directory_contents") {
        return;
    }
    xattr_opaque_case("trusted.overlay.opaque", b"y");
}

#[test]
fn user_opaque_xattr_hides_lower_directory_contents() {
    xattr_opaque_case("user.overlay.opaque", b"y");
}

#[test]
fn opaque_upper_directory_hides_all_lowers() {
    if !require_root("opaque_upper_directory_hides_all_lowers") {
        return;
    }
    let l = Layers::new(2);
    write(&l.upper.join("d/mine"), b"m");
    set_xattr(&l.upper.join("d"), "trusted.overlay.opaque", b"y").unwrap();
    write(&l.lower(0).join("d/a"), b"a");
    write(&l.lower(1).join("d/b"), b"b");
    let m = l.mount();
    assert_eq!(ls(&m.mnt.join("d")), ["mine"]);
    assert!(enoent(&m.mnt.join("d/a")));
}

#[test]
fn non_directory_hides_directories_below() {
    let l = Layers::new(2);
    write(&l.lower(0).join("x"), b"file on top");
    write(&l.lower(1).join("x/child"), b"c");
    symlink("target", l.upper.join("y")).unwrap();
    write(&l.lower(0).join("y/child"), b"c");
    let m = l.mount();
    let md = lstat(&m.mnt.join("x")).unwrap();
    assert!(md.is_file());
    assert_eq!(read(&m.mnt.join("x")), "file on top");
    let e = std::fs::symlink_metadata(m.mnt.join("x/child")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR);
    assert!(lstat(&m.mnt.join("y")).unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(m.mnt.join("y")).unwrap().to_str(),
        Some("target")
    );
}

#[test]
fn directory_above_file_ignores_the_file_and_everything_below() {
    if !require_root("directory_above_file_ignores_the_file_and_everything_below") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("x/a"), b"a");
        write(&l.lower(1).join("x"), b"file in the middle");
        write(&l.lower(2).join("x/b"), b"b");
    };
    let (p, k) = plyfs_and_kernel(3, setup, |mnt, _| {
        (
            lstat(&mnt.join("x")).unwrap().is_dir(),
            ls(&mnt.join("x")),
            enoent(&mnt.join("x/b")),
        )
    });
    assert_eq!(k, (true, vec!["a".to_string()], true), "kernel");
    assert_eq!(p, k);
}

fn marker_layers() -> Layers {
    let l = Layers::new(2);
    write(&l.lower(0).join(".wh.a"), b"");
    write(&l.lower(0).join("d/.wh..wh..opq"), b"");
    write(&l.lower(0).join("d/.wh.b"), b"");
    write(&l.lower(0).join("d/visible"), b"v");
    whiteout(&l.lower(0).join("c"));
    whiteout(&l.upper.join("e"));
    write(&l.lower(1).join("a"), b"a");
    write(&l.lower(1).join("c"), b"c");
    write(&l.lower(1).join("e"), b"e");
    write(&l.lower(1).join("keep"), b"k");
    l
}

#[test]
fn markers_are_never_listed() {
    if !require_root("markers_are_never_listed") {
        return;
    }
    let l = marker_layers();
    let m = l.mount();
    assert_eq!(ls(&m.mnt), ["d", "keep"]);
    assert_eq!(ls(&m.mnt.join("d")), ["visible"]);
}

/// What a listing hides must not be reachable by name either (as in
/// fuse-overlayfs): otherwise `ls` and `stat` disagree about the same name.
#[test]
fn oci_markers_are_not_found_by_name() {
    if !require_root("oci_markers_are_not_found_by_name") {
        return;
    }
    let l = marker_layers();
    let m = l.mount();
    for marker in [".wh.a", "d/.wh..wh..opq", "d/.wh.b"] {
        assert!(enoent(&m.mnt.join(marker)), "{marker} is visible by name");
    }
}

#[test]
fn xattr_whiteout_hides_name_like_kernel() {
    if !require_root("xattr_whiteout_hides_name_like_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.lower(0).join("d/foo"), b"");
        set_xattr(&l.lower(0).join("d/foo"), "trusted.overlay.whiteout", b"").unwrap();
        set_xattr(&l.lower(0).join("d"), "trusted.overlay.opaque", b"x").unwrap();
        write(&l.lower(0).join("d/mine"), b"m");
        write(&l.lower(1).join("d/foo"), b"hidden");
        write(&l.lower(1).join("d/bar"), b"bar");
    };
    let (p, k) = plyfs_and_kernel(2, setup, |mnt, _| {
        (ls(&mnt.join("d")), enoent(&mnt.join("d/foo")))
    });
    assert_eq!(
        k,
        (vec!["bar".to_string(), "mine".to_string()], true),
        "kernel"
    );
    assert_eq!(p, k);
}

#[test]
fn xattr_whiteout_needs_parent_marker_like_kernel() {
    if !require_root("xattr_whiteout_needs_parent_marker_like_kernel") {
        return;
    }
    // Without overlay.opaque=x on the parent, readdir lists the file as a
    // plain entry. (The kernel's lookup still treats it as a whiteout, so
    // only the listing is compared.)
    let setup = |l: &Layers| {
        write(&l.lower(0).join("d/foo"), b"");
        set_xattr(&l.lower(0).join("d/foo"), "trusted.overlay.whiteout", b"").unwrap();
        write(&l.lower(1).join("d/foo"), b"below");
    };
    let (p, k) = plyfs_and_kernel(2, setup, |mnt, _| ls(&mnt.join("d")));
    assert_eq!(k, ["foo"], "kernel");
    assert_eq!(p, k);
}

/// A tree mixing every kernel-format marker; the whole merged view (kinds,
/// modes, owners, contents, visible xattrs) must equal the kernel's.
#[test]
fn mixed_tree_matches_kernel() {
    if !require_root("mixed_tree_matches_kernel") {
        return;
    }
    let setup = |l: &Layers| {
        write(&l.upper.join("top/u"), b"u");
        whiteout(&l.upper.join("top/wo"));
        write(&l.upper.join("shadow"), b"upper shadow");
        write(&l.upper.join("opq/new"), b"n");
        set_xattr(&l.upper.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        write(&l.lower(0).join("top/wo"), b"gone");
        write(&l.lower(0).join("top/l0"), b"l0");
        write(&l.lower(0).join("shadow"), b"lower shadow");
        write(&l.lower(0).join("opq/old"), b"old");
        write(&l.lower(0).join("filedir"), b"f");
        symlink("../shadow", l.lower(0).join("top/link")).unwrap();
        set_xattr(&l.lower(0).join("top/l0"), "user.note", b"hello").unwrap();
        write(&l.lower(1).join("top/l1"), b"l1");
        write(&l.lower(1).join("filedir/x"), b"x");
        write(&l.lower(1).join("dirfile"), b"under a dir");
        std::fs::create_dir(l.lower(0).join("dirfile")).unwrap();
        write(&l.lower(1).join("opq/older"), b"older");
        whiteout(&l.lower(0).join("deep"));
        write(&l.lower(1).join("deep/er/file"), b"d");
    };
    let (p, k) = plyfs_and_kernel(2, setup, |mnt, _| snapshot(mnt));
    let d = diff(&p, &k, "plyfs", "kernel");
    assert!(d.is_empty(), "{d}");
}

#[test]
fn opaque_lower_dir_stays_opaque_after_copy_up() {
    let l = Layers::new(3);
    write(&l.lower(0).join("oci/.wh..wh..opq"), b"");
    write(&l.lower(0).join("oci/own"), b"");
    write(&l.lower(1).join("oci/hidden"), b"");
    write(&l.lower(0).join("ux/own"), b"");
    set_xattr(&l.lower(0).join("ux"), "user.overlay.opaque", b"y").unwrap();
    write(&l.lower(1).join("ux/hidden"), b"");
    {
        let m = l.mount();
        for d in ["oci", "ux"] {
            let p = m.mnt.join(d);
            std::fs::set_permissions(&p, PermissionsExt::from_mode(0o700)).unwrap();
            std::fs::write(p.join("new"), b"").unwrap();
            assert_eq!(ls(&p), ["new", "own"], "{d} after copy-up");
        }
    }
    let m = l.mount();
    for d in ["oci", "ux"] {
        assert_eq!(ls(&m.mnt.join(d)), ["new", "own"], "{d} after remount");
        assert!(enoent(&m.mnt.join(d).join("hidden")));
    }
}

#[test]
fn whiteouts_in_deep_paths() {
    if !require_root("whiteouts_in_deep_paths") {
        return;
    }
    let l = Layers::new(3);
    write(&l.lower(2).join("a/b/c/d/e/f"), b"deep");
    write(&l.lower(2).join("a/b/c/d/keep"), b"k");
    std::fs::create_dir_all(l.lower(1).join("a/b/c/d/e")).unwrap();
    whiteout(&l.lower(1).join("a/b/c/d/e/f"));
    std::fs::create_dir_all(l.lower(0).join("a/b/c")).unwrap();
    write(&l.lower(0).join("a/b/c/.wh.x"), b"");
    write(&l.lower(2).join("a/b/c/x/y"), b"");
    let m = l.mount();
    assert!(names(&m.mnt.join("a/b/c/d/e")).is_empty());
    assert!(enoent(&m.mnt.join("a/b/c/d/e/f")));
    assert_eq!(ls(&m.mnt.join("a/b/c/d")), ["e", "keep"]);
    assert_eq!(ls(&m.mnt.join("a/b/c")), ["d"]);
    assert!(enoent(&m.mnt.join("a/b/c/x/y")));
}
