//! Hostile layers: symlinks pointing out of the layers, directories swapped
//! for symlinks while mounted, `..`-looking names and chains. plyfs must
//! never read or write outside the layer roots by itself.
//!
//! Layout: the layers live in `T/lower0..`, `T/upper`, `T/work`; the
//! sentinel `T/sentinel` is what relative links resolve to *from inside a
//! layer* (`../sentinel` from a layer root). The mount is at `T/deep/a/mnt`,
//! so the same relative links, followed by the kernel from the mount (which
//! is legitimate, kernel overlayfs does the same), lead to the decoy
//! `T/deep/a/sentinel` instead. Anything showing up in or read from the
//! sentinel therefore means plyfs itself followed a link inside a layer.
//! Absolute links are only used with operations that must not follow them.

mod common;

use common::*;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const SECRET: &[u8] = b"SECRET-outside-the-layers";

struct Hostile {
    l: Layers,
    sentinel: PathBuf,
    decoy: PathBuf,
    mnt: PathBuf,
}

impl Hostile {
    fn new(lowers: usize) -> Hostile {
        let l = Layers::new(lowers);
        let t = l.dir.path().to_path_buf();
        let sentinel = t.join("sentinel");
        write(&sentinel.join("secret"), SECRET);
        write(&sentinel.join("f"), SECRET);
        write(&sentinel.join("onlyinsentinel"), SECRET);
        write(&sentinel.join("c/file"), SECRET);
        write(&sentinel.join("inner/g"), SECRET);
        std::fs::create_dir(sentinel.join("sub")).unwrap();
        let _ = set_xattr(&sentinel, "user.sentinel", SECRET);
        let decoy = t.join("deep/a/sentinel");
        std::fs::create_dir_all(decoy.join("c")).unwrap();
        std::fs::create_dir_all(decoy.join("inner")).unwrap();
        let mnt = t.join("deep/a/mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        Hostile {
            l,
            sentinel,
            decoy,
            mnt,
        }
    }

    fn mount(&self) -> PlyfsMount {
        PlyfsMount::start(&self.mnt, &self.l.options(), &[]).expect("mount plyfs")
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// Everything observable about a tree, including inode numbers and
/// change times (any write, chmod, chown, xattr change or rename shows).
fn deep_state(root: &Path) -> Vec<String> {
    fn rec(root: &Path, p: &Path, out: &mut Vec<String>) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            out.push(format!("{}: gone", p.display()));
            return;
        };
        let content = if md.is_file() {
            fnv(&std::fs::read(p).unwrap_or_default())
        } else if md.file_type().is_symlink() {
            fnv(std::fs::read_link(p).unwrap().as_os_str().as_bytes())
        } else {
            0
        };
        out.push(format!(
            "{:?} kind={} mode={:o} uid={} gid={} size={} ino={} nlink={} mtime={}.{} ctime={}.{} content={:x} xattrs={:?}",
            p.strip_prefix(root).unwrap(),
            kind_char(md.file_type()),
            md.mode(),
            md.uid(),
            md.gid(),
            if md.is_dir() { 0 } else { md.size() },
            md.ino(),
            md.nlink(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            content,
            xattrs(p)
        ));
        if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                rec(root, &p.join(n), out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, root, &mut out);
    out
}

/// The sentinel, the test root's own entries and /etc/passwd.
fn outside_state(h: &Hostile) -> Vec<String> {
    let mut s = deep_state(&h.sentinel);
    let mut top: Vec<_> = std::fs::read_dir(h.l.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    s.push(format!("top: {top:?}"));
    let pw = std::fs::symlink_metadata("/etc/passwd").unwrap();
    s.push(format!(
        "passwd: size={} mtime={}.{} ctime={}.{} ino={} mode={:o}",
        pw.size(),
        pw.mtime(),
        pw.mtime_nsec(),
        pw.ctime(),
        pw.ctime_nsec(),
        pw.ino(),
        pw.mode()
    ));
    s
}

fn assert_outside_unchanged(h: &Hostile, before: &[String], when: &str) {
    let after = outside_state(h);
    if before != after.as_slice() {
        let mut d = String::new();
        for l in before.iter().filter(|l| !after.contains(l)) {
            d += &format!("- {l}\n");
        }
        for l in after.iter().filter(|l| !before.contains(l)) {
            d += &format!("+ {l}\n");
        }
        panic!("outside of the layers changed ({when}):\n{d}");
    }
}

/// Reads a file through the mount; the content must never be the secret.
fn read_not_secret(p: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(p).ok()?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).ok()?;
    assert!(
        !v.windows(SECRET.len()).any(|w| w == SECRET),
        "read the sentinel's secret through {}",
        p.display()
    );
    Some(v)
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn symlink(target: &[u8], at: &Path) {
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), at)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

fn readlink(p: &Path) -> Vec<u8> {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// open(2) with raw flags; returns the fd (closed) or the errno.
fn open_raw(p: &Path, flags: i32) -> Result<(), i32> {
    let c = cpath(p);
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: we own fd.
    unsafe {
        libc::close(fd);
    }
    Ok(())
}

fn drop_caches() {
    // Makes the kernel forget cached dentries/inodes so plyfs must look
    // names up again (FUSE FORGET, then LOOKUP).
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

fn assert_no_panic(m: &PlyfsMount) {
    let log = m.log();
    assert!(!log.contains("panicked"), "plyfs panicked:\n{log}");
}

/// Links out of the layers in the top lower: absolute and relative, to
/// `/`, `../..`, `/etc/passwd`, the sentinel, chains and `..`-like names.
fn populate_links(h: &Hostile) -> Vec<(String, Vec<u8>)> {
    let lo = h.l.lower(0);
    let abs_sentinel = h.sentinel.as_os_str().as_bytes().to_vec();
    let links: Vec<(&str, Vec<u8>)> = vec![
        ("root", b"/".to_vec()),
        ("up2", b"../..".to_vec()),
        ("passwd", b"/etc/passwd".to_vec()),
        ("abs_sentinel", abs_sentinel.clone()),
        ("abs_secret", [abs_sentinel, b"/secret".to_vec()].concat()),
        ("rel_sentinel", b"../sentinel".to_vec()),
        ("rel_secret", b"../sentinel/secret".to_vec()),
        ("dotdot", b"..".to_vec()),
        ("...", b"../..".to_vec()),
        ("..a", b"../sentinel".to_vec()),
        (".. ", b"./../sentinel".to_vec()),
        ("chain1", b"chain2".to_vec()),
        ("chain2", b"./chain3".to_vec()),
        ("chain3", b"dotdot/sentinel".to_vec()),
        ("dangle", b"../sentinel/created_by_dangle".to_vec()),
        ("sub/rel2", b"../../sentinel".to_vec()),
        ("sub/dotdots", b"../../../../../../../../..".to_vec()),
    ];
    std::fs::create_dir_all(lo.join("sub")).unwrap();
    for (name, target) in &links {
        symlink(target, &lo.join(name));
    }
    links.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

#[test]
fn outward_symlinks_are_listed_and_read_verbatim() {
    let h = Hostile::new(2);
    let links = populate_links(&h);
    // A lower below holds a real directory under one of the link names:
    // the link on top hides it.
    write(&h.l.lower(1).join("rel_sentinel/lowerfile"), b"hidden");
    write(&h.l.lower(1).join("plain"), b"plain");
    let before = outside_state(&h);
    let m = h.mount();
    for (name, target) in &links {
        let p = h.m(name);
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {name}: {e}"));
        assert!(md.file_type().is_symlink(), "{name} should be a symlink");
        assert_eq!(md.size(), target.len() as u64, "{name} size");
        assert_eq!(&readlink(&p), target, "readlink {name}");
        // Never followed by plyfs for xattrs.
        assert!(
            get_xattr(&p, "user.sentinel").is_err(),
            "lgetxattr on {name} returned the target's xattr"
        );
        assert!(
            !xattrs(&p).iter().any(|(n, _)| n == b"user.sentinel"),
            "llistxattr on {name} lists the target's xattr"
        );
        // O_NOFOLLOW on the link itself: ELOOP, as on any filesystem.
        assert_eq!(
            open_raw(&p, libc::O_RDONLY | libc::O_NOFOLLOW),
            Err(libc::ELOOP),
            "{name}"
        );
    }
    // Readdir shows symlinks as symlinks.
    for e in std::fs::read_dir(h.m("")).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if links.iter().any(|(l, _)| *l == n) {
            assert!(e.file_type().unwrap().is_symlink(), "{n} type in readdir");
        }
    }
    // Followed by the kernel from the mount, relative links go to the
    // decoy; the hidden lower directory stays hidden.
    assert!(!h.m("rel_sentinel/lowerfile").exists());
    assert!(read_not_secret(&h.m("rel_secret")).is_none());
    assert!(read_not_secret(&h.m("..a/secret")).is_none());
    assert!(read_not_secret(&h.m("chain1/secret")).is_none());
    assert!(read_not_secret(&h.m("sub/rel2/secret")).is_none());
    assert_eq!(std::fs::read(h.m("plain")).unwrap(), b"plain");
    drop_caches();
    for (name, target) in &links {
        assert_eq!(
            &readlink(&h.m(name)),
            target,
            "readlink {name} after forget"
        );
    }
    assert_outside_unchanged(&h, &before, "after reading");
    assert_no_panic(&m);
}

#[test]
fn writes_through_outward_symlinks_never_land_outside() {
    let h = Hostile::new(1);
    populate_links(&h);
    let before = outside_state(&h);
    let m = h.mount();
    // Each of these is followed by the kernel from the mount: it may create
    // something in the decoy (that is what the kernel does), never in the
    // sentinel.
    let attempts = [
        "rel_sentinel/newfile",
        "..a/newfile2",
        ".. /newfile3",
        "chain1/newfile4",
        "sub/rel2/newfile5",
        "dangle",
        "rel_sentinel/c/newfile6",
    ];
    for a in attempts {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(h.m(a))
            .map(|mut f| std::io::Write::write_all(&mut f, b"written"));
    }
    let _ = std::fs::create_dir(h.m("rel_sentinel/newdir"));
    let _ = std::fs::write(h.m("rel_secret"), b"overwrite");
    let _ = std::fs::rename(h.m("dotdot"), h.m("rel_sentinel/moved"));
    // O_CREAT|O_NOFOLLOW on a dangling link: never creates the target.
    assert_eq!(
        open_raw(
            &h.m("sub/rel2"),
            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW
        ),
        Err(libc::ELOOP)
    );
    assert!(
        matches!(
            open_raw(
                &h.m("dangle"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
            ),
            Err(libc::EEXIST)
        ),
        "O_CREAT|O_EXCL on a symlink must fail with EEXIST"
    );
    // The kernel-followed writes went to the decoy.
    assert_eq!(std::fs::read(h.decoy.join("newfile")).unwrap(), b"written");
    assert_eq!(
        std::fs::read(h.decoy.join("created_by_dangle")).unwrap(),
        b"written"
    );
    assert_outside_unchanged(&h, &before, "after writes through links");
    // Nothing was created in the layers' parent by way of `..` chains.
    drop(m);
    let lower_links = h.l.lower(0).join("rel_sentinel");
    assert!(
        std::fs::symlink_metadata(&lower_links)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_outside_unchanged(&h, &before, "after unmount");
}

#[test]
fn readlink_returns_targets_verbatim() {
    let h = Hostile::new(1);
    let long: Vec<u8> = std::iter::repeat_n(b"../x/".as_slice(), 800)
        .flatten()
        .copied()
        .collect();
    let targets: Vec<(&str, Vec<u8>)> = vec![
        ("slash", b"/".to_vec()),
        ("dots", b"..".to_vec()),
        ("messy", b"a//b/./c/../".to_vec()),
        ("trailing", b"dir/".to_vec()),
        ("spaces", b" lead and trail ".to_vec()),
        ("newline", b"line1\nline2".to_vec()),
        ("binary", b"\xff\xfe/\x01x".to_vec()),
        ("long", long.clone()),
        ("self", b"self".to_vec()),
    ];
    for (n, t) in &targets {
        symlink(t, &h.l.lower(0).join(n));
    }
    let before = outside_state(&h);
    let m = h.mount();
    for (n, t) in &targets {
        assert_eq!(&readlink(&h.m(n)), t, "readlink {n}");
    }
    // Created through the mount: stored and returned verbatim.
    for (n, t) in &targets {
        let name = format!("new_{n}");
        symlink(t, &h.m(&name));
        assert_eq!(&readlink(&h.m(&name)), t, "readlink {name}");
        assert_eq!(&readlink(&h.l.upper.join(&name)), t, "upper {name}");
    }
    // After a copy-up (rename) as well.
    for (n, t) in &targets {
        let to = format!("moved_{n}");
        std::fs::rename(h.m(n), h.m(&to)).unwrap();
        assert_eq!(&readlink(&h.m(&to)), t, "readlink {to}");
        assert_eq!(&readlink(&h.l.upper.join(&to)), t, "upper {to}");
    }
    drop_caches();
    for (n, t) in &targets {
        assert_eq!(&readlink(&h.m(&format!("moved_{n}"))), t);
    }
    assert_outside_unchanged(&h, &before, "readlink");
    assert_no_panic(&m);
}

fn lutimes(p: &Path) -> i32 {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid path and two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }
}

fn assert_link(p: &Path, target: &[u8]) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(
        md.file_type().is_symlink(),
        "{} is not a symlink",
        p.display()
    );
    assert_eq!(readlink(p), target, "{}", p.display());
}

#[test]
fn copy_up_of_symlink_copies_the_link() {
    if !require_root("copy_up_of_symlink_copies_the_link") {
        return;
    }
    let h = Hostile::new(1);
    let abs_sentinel = h.sentinel.as_os_str().as_bytes().to_vec();
    let abs_secret = [abs_sentinel.clone(), b"/secret".to_vec()].concat();
    let lo = h.l.lower(0);
    symlink(&abs_sentinel, &lo.join("a_chown"));
    symlink(&abs_secret, &lo.join("a_utime"));
    symlink(b"../sentinel/secret", &lo.join("r_xattr"));
    symlink(b"../sentinel", &lo.join("r_rename"));
    symlink(&abs_secret, &lo.join("a_link"));
    symlink(b"/etc/passwd", &lo.join("passwd"));
    write(&lo.join("d/plain"), b"plain");
    symlink(b"../../sentinel", &lo.join("d/r_nested"));
    let before = outside_state(&h);
    let m = h.mount();

    std::os::unix::fs::lchown(h.m("a_chown"), Some(1234), Some(5678)).unwrap();
    assert_link(&h.l.upper.join("a_chown"), &abs_sentinel);
    let md = std::fs::symlink_metadata(h.l.upper.join("a_chown")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let md = std::fs::symlink_metadata(h.m("a_chown")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    assert_eq!(
        lutimes(&h.m("a_utime")),
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    assert_link(&h.l.upper.join("a_utime"), &abs_secret);
    assert_eq!(
        std::fs::symlink_metadata(h.l.upper.join("a_utime"))
            .unwrap()
            .mtime(),
        2_000_000
    );

    set_xattr(&h.m("r_xattr"), "trusted.plyfs-test", b"v").unwrap();
    assert_link(&h.l.upper.join("r_xattr"), b"../sentinel/secret");
    assert_eq!(
        get_xattr(&h.m("r_xattr"), "trusted.plyfs-test").unwrap(),
        b"v"
    );

    std::fs::rename(h.m("r_rename"), h.m("r_renamed")).unwrap();
    assert_link(&h.l.upper.join("r_renamed"), b"../sentinel");
    let wh = std::fs::symlink_metadata(h.l.upper.join("r_rename")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);

    // link(2) does not follow: the link itself is copied up and linked.
    std::fs::hard_link(h.m("a_link"), h.m("a_link2")).unwrap();
    assert_link(&h.l.upper.join("a_link"), &abs_secret);
    assert_link(&h.l.upper.join("a_link2"), &abs_secret);
    assert_link(&h.m("a_link2"), &abs_secret);

    std::os::unix::fs::lchown(h.m("passwd"), Some(42), Some(42)).unwrap();
    assert_link(&h.l.upper.join("passwd"), b"/etc/passwd");

    // A nested link: copy-up of the parent directory, then of the link.
    std::os::unix::fs::lchown(h.m("d/r_nested"), Some(7), Some(7)).unwrap();
    assert_link(&h.l.upper.join("d/r_nested"), b"../../sentinel");
    assert!(
        std::fs::symlink_metadata(h.l.upper.join("d"))
            .unwrap()
            .is_dir()
    );
    assert!(!h.l.upper.join("d/plain").exists());

    // The lower links are untouched.
    assert_link(&lo.join("a_chown"), &abs_sentinel);
    assert_eq!(
        std::fs::symlink_metadata(lo.join("a_chown")).unwrap().uid(),
        0
    );
    drop_caches();
    assert_link(&h.m("a_chown"), &abs_sentinel);
    assert_link(&h.m("r_renamed"), b"../sentinel");
    assert_outside_unchanged(&h, &before, "copy-up of symlinks");
    assert_no_panic(&m);
}

/// Opens `rel` below `root` with RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH: the
/// kernel follows no link on the way, so whatever this reaches was reached
/// without the kernel following anything. Sentinel data seen this way means
/// plyfs followed a link inside a layer.
/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn open_beneath(root: &OwnedFd, rel: &str, flags: i32) -> Result<OwnedFd, i32> {
    let rel = if rel.is_empty() { "." } else { rel };
    let c = CString::new(rel).unwrap();
    let creating = flags & libc::O_CREAT != 0;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if creating { 0o644 } else { 0 },
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
    };
    // SAFETY: openat2 with a valid dirfd, C string and open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn join_rel(d: &str, name: &str) -> String {
    if d.is_empty() {
        name.to_string()
    } else {
        format!("{d}/{name}")
    }
}

fn read_fd_not_secret(fd: OwnedFd, what: &str) {
    let mut f = std::fs::File::from(fd);
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    assert!(
        !v.windows(SECRET.len()).any(|w| w == SECRET),
        "read the sentinel's secret through {what} (no symlink followed by the kernel)"
    );
}

/// Exercises the directory `d` of the mount (which was swapped for a link
/// to the sentinel behind plyfs' back) without letting the kernel follow
/// any symlink: reads must never return the secret, listings never show
/// it, writes never land in the sentinel. Errors are fine.
fn poke(h: &Hostile, d: &str) {
    let root = OwnedFd::from(std::fs::File::open(&h.mnt).expect("open mnt"));
    let Ok(dir) = open_beneath(&root, d, libc::O_RDONLY | libc::O_DIRECTORY) else {
        // `d` now shows as a symlink (or is gone): nothing plyfs-internal to
        // probe through it.
        return;
    };
    let listed = names(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())));
    assert!(
        !listed
            .iter()
            .any(|n| n == "onlyinsentinel" || n == "secret"),
        "readdir of {d} shows the sentinel: {listed:?}"
    );
    for n in ["f", "secret", "onlyinsentinel", "inner/g", "c/file"] {
        let rel = join_rel(d, n);
        if let Ok(fd) = open_beneath(&root, &rel, libc::O_RDONLY) {
            assert_ne!(n, "onlyinsentinel", "{rel} is visible");
            read_fd_not_secret(fd, &rel);
        }
    }
    let dfd = dir.as_raw_fd();
    let at = |n: &str| CString::new(n).unwrap();
    if let Ok(fd) = open_beneath(
        &root,
        &join_rel(d, "newfile"),
        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
    ) {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), b"new");
    }
    if let Ok(fd) = open_beneath(&root, &join_rel(d, "f"), libc::O_WRONLY | libc::O_APPEND) {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), b"+appended");
    }
    if let Ok(fd) = open_beneath(
        &root,
        &join_rel(d, "c/file"),
        libc::O_WRONLY | libc::O_TRUNC,
    ) {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), b"overwritten");
    }
    if let Ok(fd) = open_beneath(&root, &join_rel(d, "c"), libc::O_RDONLY | libc::O_DIRECTORY) {
        let f = std::fs::File::from(fd);
        let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let name = at("user.poked");
        // SAFETY: valid fd, name and buffer.
        unsafe {
            libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0);
        }
    }
    if let Ok(inner) = open_beneath(
        &root,
        &join_rel(d, "inner"),
        libc::O_PATH | libc::O_DIRECTORY,
    ) {
        // SAFETY: valid dirfd and name.
        unsafe {
            libc::unlinkat(inner.as_raw_fd(), at("g").as_ptr(), 0);
        }
    }
    // SAFETY (all below): *at calls with a valid dirfd and C strings; none
    // follows a final symlink.
    unsafe {
        libc::mkdirat(dfd, at("newdir").as_ptr(), 0o755);
        libc::symlinkat(at("x").as_ptr(), dfd, at("newlink").as_ptr());
        libc::renameat(dfd, at("f").as_ptr(), dfd, at("f.renamed").as_ptr());
        libc::unlinkat(dfd, at("secret").as_ptr(), 0);
        libc::unlinkat(dfd, at("sub").as_ptr(), libc::AT_REMOVEDIR);
        libc::mknodat(dfd, at("fifo").as_ptr(), libc::S_IFIFO | 0o644, 0);
        let mut st = std::mem::zeroed::<libc::stat>();
        let r = libc::fstatat(
            dfd,
            at("onlyinsentinel").as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        );
        assert_ne!(r, 0, "{d}/onlyinsentinel is visible");
    }
}

/// The same through ordinary paths: the kernel follows links it sees in
/// the merged view from the mount. Only meaningful when the links are
/// relative (they then lead to the decoy, never the sentinel).
fn poke_paths(h: &Hostile, d: &str) {
    let p = |s: &str| h.m(&join_rel(d, s));
    let _ = read_not_secret(&p("f"));
    let _ = read_not_secret(&p("secret"));
    let _ = read_not_secret(&p("onlyinsentinel"));
    let _ = read_not_secret(&p("inner/g"));
    let _ = read_not_secret(&p("c/file"));
    let listed = names(&h.m(d));
    assert!(
        !listed
            .iter()
            .any(|n| n == "onlyinsentinel" || n == "secret"),
        "readdir of {d} shows the sentinel: {listed:?}"
    );
    let _ = std::fs::write(p("newfile"), b"new");
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(p("f"))
        .map(|mut f| {
            let _ = std::io::Write::write_all(&mut f, b"+appended");
        });
    let _ = std::fs::create_dir(p("newdir"));
    let _ = std::os::unix::fs::symlink("x", p("newlink"));
    let _ = std::fs::rename(p("f"), p("f.renamed"));
    let _ = std::fs::remove_file(p("secret"));
    let _ = std::fs::remove_file(p("inner/g"));
    let _ = set_xattr(&p("c"), "user.poked", b"1");
    let _ = std::fs::set_permissions(p("c"), std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let _ = std::fs::write(p("c/file"), b"overwritten");
    let _ = std::fs::remove_dir(p("sub"));
}

/// Which layer to swap a directory in.
#[derive(Clone, Copy, Debug)]
enum Swap {
    Lower,
    Upper,
}

fn swap_dir_for_link_while_mounted(which: Swap, absolute: bool) {
    let h = Hostile::new(1);
    let layer = match which {
        Swap::Lower => h.l.lower(0).to_path_buf(),
        Swap::Upper => h.l.upper.clone(),
    };
    write(&layer.join("d/f"), b"original f");
    write(&layer.join("d/inner/g"), b"original g");
    write(&layer.join("d/c/file"), b"original c");
    write(&layer.join("x/y/z/f"), b"deep f");
    let before = outside_state(&h);
    let m = h.mount();
    // Get everything into the kernel's and plyfs' caches.
    assert_eq!(std::fs::read(h.m("d/f")).unwrap(), b"original f");
    assert_eq!(std::fs::read(h.m("d/inner/g")).unwrap(), b"original g");
    assert_eq!(std::fs::read(h.m("x/y/z/f")).unwrap(), b"deep f");
    let _ = names(&h.m("d"));
    let _ = names(&h.m("x/y/z"));

    // Behind plyfs' back: d -> sentinel, x/y -> sentinel.
    let target_d: Vec<u8> = if absolute {
        h.sentinel.as_os_str().as_bytes().to_vec()
    } else {
        b"../sentinel".to_vec()
    };
    let target_y: Vec<u8> = if absolute {
        h.sentinel.as_os_str().as_bytes().to_vec()
    } else {
        b"../../sentinel".to_vec()
    };
    std::fs::rename(layer.join("d"), layer.join("d.orig")).unwrap();
    symlink(&target_d, &layer.join("d"));
    std::fs::rename(layer.join("x/y"), layer.join("x/y.orig")).unwrap();
    symlink(&target_y, &layer.join("x/y"));

    let all = |h: &Hostile| {
        for d in ["d", "x/y/z", "x/y", "x"] {
            poke(h, d);
            if !absolute {
                poke_paths(h, d);
            }
        }
    };
    all(&h);
    assert_outside_unchanged(&h, &before, "after swap, cached");

    // Forgotten by the kernel: plyfs must look names up again, without
    // following the new links. (If the merged view now shows `d` as a
    // symlink, following it from the mount is the kernel's business; poke
    // does not let the kernel follow, poke_paths only follows relative
    // links, which lead to the decoy.)
    drop_caches();
    all(&h);
    assert_outside_unchanged(&h, &before, "after swap and forget");
    assert_no_panic(&m);
    drop(m);
    assert_outside_unchanged(&h, &before, "after unmount");
}

#[test]
fn lower_dir_swapped_for_relative_link_while_mounted() {
    swap_dir_for_link_while_mounted(Swap::Lower, false);
}

#[test]
fn lower_dir_swapped_for_absolute_link_while_mounted() {
    swap_dir_for_link_while_mounted(Swap::Lower, true);
}

#[test]
fn upper_dir_swapped_for_relative_link_while_mounted() {
    swap_dir_for_link_while_mounted(Swap::Upper, false);
}

#[test]
fn upper_dir_swapped_for_absolute_link_while_mounted() {
    swap_dir_for_link_while_mounted(Swap::Upper, true);
}

/// The layer roots and the work dir themselves replaced by links to the
/// sentinel after mounting: plyfs keeps using what it opened.
#[test]
fn layer_roots_and_workdir_swapped_while_mounted() {
    let h = Hostile::new(2);
    write(&h.l.lower(0).join("f"), b"lower0 f");
    write(&h.l.lower(0).join("h"), b"lower0 h");
    write(&h.l.lower(1).join("c/file"), b"lower1 c");
    write(&h.l.lower(1).join("g"), b"lower1 g");
    write(&h.l.upper.join("u"), b"upper u");
    let m = h.mount();
    let t = h.l.dir.path();
    let abs = h.sentinel.as_os_str().as_bytes().to_vec();
    for (p, target) in [
        (h.l.lower(0).to_path_buf(), abs.clone()),
        (h.l.lower(1).to_path_buf(), b"sentinel".to_vec()),
        (h.l.upper.clone(), abs.clone()),
    ] {
        let moved = p.with_extension("moved");
        std::fs::rename(&p, &moved).unwrap();
        symlink(&target, &p);
    }
    // The staging directory inside work.
    let staging = h.l.work.join("work");
    if staging.exists() {
        std::fs::rename(&staging, h.l.work.join("work.moved")).unwrap();
        symlink(&abs, &staging);
    }
    // (Taken after our own renames above.)
    let before = outside_state(&h);
    for round in 0..2 {
        if round == 0 {
            assert_eq!(std::fs::read(h.m("f")).unwrap(), b"lower0 f");
        } else {
            // poke appended to f and renamed it.
            assert_eq!(
                std::fs::read(h.m("f.renamed")).unwrap(),
                b"lower0 f+appended"
            );
        }
        assert_eq!(
            std::fs::read(h.m("u")).unwrap(),
            b"upper u",
            "round {round}"
        );
        let listed = names(&h.m(""));
        assert!(
            !listed
                .iter()
                .any(|n| n == "onlyinsentinel" || n == "secret"),
            "root shows the sentinel: {listed:?}"
        );
        poke(&h, "");
        poke(&h, "c");
        // Copy-ups go through the work dir.
        let _ = std::fs::write(h.m("g"), b"copied up");
        let _ = std::fs::write(h.m("c/file"), b"copied up");
        let _ = std::fs::remove_file(h.m("h"));
        drop_caches();
    }
    assert_outside_unchanged(&h, &before, "after swapping roots");
    let _ = t;
    assert_no_panic(&m);
    drop(m);
    assert_outside_unchanged(&h, &before, "after unmount");
    // Writes went to the original upper.
    let up = h.l.upper.with_extension("moved");
    assert_eq!(std::fs::read(up.join("g")).unwrap(), b"copied up");
    assert_eq!(std::fs::read(up.join("newfile")).unwrap(), b"new");
}

/// Names that look like path syntax or OCI whiteouts of `.`/`..` must not
/// confuse lookups or hide anything.
#[test]
fn dot_like_names_and_oci_whiteouts_of_dots() {
    let h = Hostile::new(2);
    let lo = h.l.lower(0);
    for n in ["...", "..a", ".. ", " ..", "\\..", ".\n."] {
        write(&lo.join(n), n.as_bytes());
    }
    // OCI whiteouts whose names would whiteout "." and "..".
    write(&lo.join(".wh.."), b"");
    write(&lo.join(".wh..."), b"");
    write(&lo.join("d/.wh.."), b"");
    write(&lo.join("d/.wh..."), b"");
    write(&h.l.lower(1).join("d/keep"), b"keep");
    write(&h.l.lower(1).join("keep"), b"keep");
    let before = outside_state(&h);
    let m = h.mount();
    for n in ["...", "..a", ".. ", " ..", "\\..", ".\n."] {
        assert_eq!(std::fs::read(h.m(n)).unwrap(), n.as_bytes(), "{n:?}");
    }
    assert_eq!(std::fs::read(h.m("keep")).unwrap(), b"keep");
    assert_eq!(std::fs::read(h.m("d/keep")).unwrap(), b"keep");
    // `..` still leads to the parent.
    assert_eq!(std::fs::read(h.m("d/../keep")).unwrap(), b"keep");
    assert_eq!(
        std::fs::canonicalize(h.m("d/..")).unwrap(),
        std::fs::canonicalize(h.m("")).unwrap()
    );
    let listed = names(&h.m("d"));
    assert!(listed.contains(&"keep".to_string()), "{listed:?}");
    assert!(!listed.iter().any(|n| n == "." || n == ".."), "{listed:?}");
    // Deleting a dot-like name leaves a whiteout for exactly that name.
    std::fs::remove_file(h.m("...")).unwrap();
    assert!(!h.m("...").exists());
    assert!(h.m("..a").exists());
    assert_outside_unchanged(&h, &before, "dot-like names");
    assert_no_panic(&m);
}
