//! Every mount option of the kernel's overlayfs documentation: plyfs
//! accepts what the kernel accepts and refuses what it refuses (conflicting
//! features, bad values), over the same directories; the few intended
//! differences are listed with their reason. Also the on-disk effect of
//! `uuid=`.

mod common;

use common::*;

fn ready(name: &str) -> bool {
    require_root(name) && require_fuse(name)
}

/// Options appended to `lowerdir=L0:L1,upperdir=U,workdir=W`, and whether
/// plyfs is meant to differ from the kernel (with the reason).
const CASES: &[(&str, Option<&str>)] = &[
    ("", None),
    ("metacopy=on", None),
    ("metacopy=off", None),
    ("metacopy=1", None),
    ("index=on", None),
    ("index=off", None),
    ("index=maybe", None),
    ("nfs_export=off", None),
    (
        "nfs_export=on",
        Some("plyfs cannot serve NFS handles of forgotten inodes: refused"),
    ),
    ("nfs_export=on,index=off", None),
    ("nfs_export=on,metacopy=on", None),
    ("uuid=on", None),
    ("uuid=off", None),
    ("uuid=null", None),
    ("uuid=auto", None),
    ("uuid=x", None),
    ("verity=off", None),
    ("verity=on", None),
    ("verity=require", None),
    ("verity=yes", None),
    ("xino=on", None),
    ("xino=off", None),
    ("xino=auto", None),
    ("xino=maybe", None),
    ("redirect_dir=on", None),
    ("redirect_dir=off", None),
    ("redirect_dir=follow", None),
    ("redirect_dir=nofollow", None),
    ("redirect_dir=sideways", None),
    ("metacopy=on,redirect_dir=on", None),
    ("metacopy=on,redirect_dir=off", None),
    ("metacopy=on,redirect_dir=follow", None),
    ("metacopy=on,redirect_dir=nofollow", None),
    ("metacopy=off,redirect_dir=nofollow", None),
    ("userxattr", None),
    ("userxattr,redirect_dir=on", None),
    ("userxattr,redirect_dir=nofollow", None),
    ("userxattr,metacopy=on", None),
    ("volatile", None),
    ("default_permissions", None),
    ("override_creds", None),
    ("index=on,metacopy=on", None),
    ("index=on,volatile", None),
];

/// Mounts the kernel, then plyfs, over fresh copies of the same layers.
fn outcome(opts: &str) -> (Result<(), String>, Result<(), String>) {
    let mk = || {
        let l = Layers::new(2);
        write(&l.lower(1).join("f"), b"x");
        l
    };
    let lk = mk();
    let k = lk.mount_kernel_checked(opts).map(drop);
    let lp = mk();
    let o = if opts.is_empty() {
        lp.options()
    } else {
        format!("{},{opts}", lp.options())
    };
    let p = PlyfsMount::start(&lp.mnt, &o, &[]).map(drop);
    (k, p)
}

#[test]
fn options_accepted_and_refused_like_the_kernel() {
    if !ready("options_accepted_and_refused_like_the_kernel") {
        return;
    }
    let mut bad = Vec::new();
    for (opts, differs) in CASES {
        let (k, p) = outcome(opts);
        let same = k.is_ok() == p.is_ok();
        match differs {
            None if !same => bad.push(format!("{opts}: kernel {k:?}, plyfs {p:?}")),
            Some(why) if same => bad.push(format!("{opts}: expected to differ ({why})")),
            _ => {}
        }
    }
    assert!(
        bad.is_empty(),
        "options handled unlike the kernel:\n{}",
        bad.join("\n")
    );
}

/// Refusals explain themselves the kernel's way.
#[test]
fn refusal_messages() {
    if !ready("refusal_messages") {
        return;
    }
    for (opts, want) in [
        (
            "metacopy=on,redirect_dir=nofollow",
            "conflicting options: metacopy=on,redirect_dir=nofollow",
        ),
        (
            "userxattr,metacopy=on",
            "conflicting options: userxattr,metacopy=on",
        ),
        (
            "nfs_export=on,index=off",
            "conflicting options: nfs_export=on,index=off",
        ),
        ("nfs_export=on", "nfs_export=on is not supported"),
        ("verity=yes", "option verity"),
    ] {
        let (_, p) = outcome(opts);
        let e = p.expect_err(opts);
        assert!(e.contains(want), "{opts}: {e}");
    }
}

/// `uuid=`: a new upper gets `overlay.uuid` on its first mount (auto, the
/// default, and on), an upper already in use does not (auto), null and off
/// never: as the kernel does.
#[test]
fn uuid_marks_the_upper_like_the_kernel() {
    if !ready("uuid_marks_the_upper_like_the_kernel") {
        return;
    }
    let has_uuid = |l: &Layers| get_xattr(&l.upper, "trusted.overlay.uuid").is_ok();
    for (opts, used_before) in [
        ("uuid=auto", false),
        ("uuid=auto", true),
        ("uuid=on", true),
        ("uuid=null", false),
        ("uuid=off", false),
    ] {
        let mk = || {
            let l = Layers::new(1);
            std::fs::create_dir(l.lower(0).join("d")).unwrap();
            if used_before {
                set_xattr(&l.upper, "trusted.overlay.impure", b"y").unwrap();
            }
            l
        };
        let (lk, lp) = (mk(), mk());
        drop(lk.mount_kernel(opts));
        drop(PlyfsMount::start(&lp.mnt, &format!("{},{opts}", lp.options()), &[]).unwrap());
        assert_eq!(
            has_uuid(&lp),
            has_uuid(&lk),
            "{opts}, used before: {used_before}"
        );
        // A later mount keeps the same UUID.
        if has_uuid(&lp) {
            let u = get_xattr(&lp.upper, "trusted.overlay.uuid").unwrap();
            drop(PlyfsMount::start(&lp.mnt, &lp.options(), &[]).unwrap());
            drop(lp.mount_kernel(""));
            assert_eq!(get_xattr(&lp.upper, "trusted.overlay.uuid").unwrap(), u);
        }
    }
}
