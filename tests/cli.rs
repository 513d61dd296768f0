//! The command line and the daemon: bad input is refused with one line and
//! leaves no trace, harmless options are accepted, daemon mode returns only
//! once the mount is live, unmounting ends the daemon, mount(8)/fstab work,
//! permissions as root and unprivileged mounts (fusermount3, user
//! namespaces), and read-only mounts.

mod common;

use common::*;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests that change /dev/fuse's mode run one at a time.
static DEV_FUSE: Mutex<()> = Mutex::new(());

const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Helpers

struct Output {
    /// None when the command had to be killed after the timeout.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `cmd` with output to files (a daemonizing child may keep the
/// descriptors), killing it after `timeout`.
fn run_for(mut cmd: Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (op, ep) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&op).expect("out"))
        .stderr(std::fs::File::create(&ep).expect("err"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read_to_string(&op).unwrap_or_default(),
        stderr: std::fs::read_to_string(&ep).unwrap_or_default(),
    }
}

fn run(cmd: Command) -> Output {
    run_for(cmd, Duration::from_secs(60))
}

fn plyfs<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(PLYFS);
    // The checks on stderr assume the default log level.
    c.args(args).env_remove("RUST_LOG");
    c
}

/// `setpriv` to nobody, running `prog args...`.
fn as_nobody(prog: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(prog)
        .env_remove("RUST_LOG");
    c
}

/// Live (non-zombie) processes whose argv[0] is plyfs and which have `mnt`
/// as one of their arguments.
fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_bytes();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let Some(argv0) = args.first() else {
            continue;
        };
        let is_plyfs = Path::new(OsStr::from_bytes(argv0))
            .file_name()
            .map(|n| n == "plyfs")
            .unwrap_or(false);
        if is_plyfs && args.iter().skip(1).any(|a| *a == want) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the parenthesised command name.
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The /proc/mounts line for `mnt` (the last one if stacked).
fn mounts_line(mnt: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let want = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .map(str::to_string)
}

/// The comma-separated mount options of the /proc/mounts line.
fn mount_opts(line: &str) -> Vec<String> {
    line.split(' ')
        .nth(3)
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Cleans up a daemonized plyfs: unmounts `mnt` and ends every plyfs
/// process serving it, whatever state the test left it in.
struct Daemon {
    mnt: PathBuf,
}

impl Daemon {
    fn new(mnt: &Path) -> Daemon {
        Daemon {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        let mnt = self.mnt.clone();
        if !wait_until(Duration::from_secs(5), || daemon_pids(&mnt).is_empty()) {
            umount(&self.mnt);
            for pid in daemon_pids(&self.mnt) {
                // SAFETY: kill with a pid of a plyfs serving our mountpoint.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        while is_mounted(&self.mnt) {
            umount(&self.mnt);
        }
    }
}

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir tmpfs");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "plyfs-test-tmpfs"])
            .arg(dir)
            .status()
            .expect("mount tmpfs");
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

/// Sets /dev/fuse's mode and restores the old one on drop.
struct DevFuseMode {
    old: u32,
}

impl DevFuseMode {
    fn set(mode: u32) -> DevFuseMode {
        let old = std::fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(mode))
            .expect("chmod /dev/fuse");
        DevFuseMode { old }
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.old));
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
    if std::fs::symlink_metadata(p).expect("stat").is_dir() {
        for e in std::fs::read_dir(p).expect("readdir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `sh -c script` as nobody.
fn sh_as_nobody(script: &str) -> Output {
    let mut c = as_nobody("sh");
    c.arg("-c").arg(script);
    run(c)
}

/// Unmounts with `how` (a command and its args before the mountpoint),
/// then checks the daemon exits and the mount is gone.
fn unmount_and_check_exit(how: Command, mnt: &Path, pids: &[i32]) {
    let prog = how.get_program().to_owned();
    let args: Vec<OsString> = how.get_args().map(|a| a.to_owned()).collect();
    // A child another test thread is spawning can hold a copy of our
    // descriptors into the mount for a moment (between fork and exec), which
    // makes the unmount fail with "target is busy": retry briefly.
    let mut attempt = 0;
    let out = loop {
        let mut c = Command::new(&prog);
        c.args(&args).arg(mnt);
        let out = run(c);
        attempt += 1;
        if out.code() == Some(0) || !out.stderr.contains("busy") || attempt == 20 {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.code(), Some(0), "unmount failed: {}", out.stderr);
    assert!(!is_mounted(mnt), "still mounted after unmount");
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|&p| !alive(p))),
        "plyfs daemon {pids:?} still running after unmount"
    );
}

fn opt_arg(s: &str) -> OsString {
    OsString::from(s)
}

// ---------------------------------------------------------------------------
// Bad input: exit 1, one line, nothing mounted, nothing written.

/// Runs plyfs with `args` (in daemon mode and with -f) and checks it is
/// refused cleanly: exit code 1, exactly one line on stderr that mentions
/// all of `words`, nothing mounted, no plyfs left running, and no change
/// at all below the test's directory.
fn assert_rejected(l: &Layers, mnt: &Path, args: &[OsString], words: &[&str]) {
    for foreground in [false, true] {
        let before = snapshot(l.dir.path());
        let mut full: Vec<OsString> = Vec::new();
        if foreground {
            full.push("-f".into());
        }
        full.extend(args.iter().cloned());
        let _guard = Daemon::new(mnt);
        // A foreground plyfs that wrongly mounts would serve forever.
        let out = run_for(plyfs(&full), Duration::from_secs(20));
        let ctx = format!("plyfs {full:?}\nstderr: {:?}", out.stderr);
        assert_eq!(out.code(), Some(1), "exit code; {ctx}");
        let text = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
        assert!(
            !text.is_empty() && !text.contains('\n'),
            "want exactly one line on stderr; {ctx}"
        );
        assert!(text.starts_with("plyfs: "), "{ctx}");
        for w in words {
            assert!(
                text.to_lowercase().contains(&w.to_lowercase()),
                "message should mention {w:?}; {ctx}"
            );
        }
        assert!(out.stdout.is_empty(), "stdout: {:?}; {ctx}", out.stdout);
        assert!(!is_mounted(mnt), "mounted anyway; {ctx}");
        assert!(daemon_pids(mnt).is_empty(), "plyfs still running; {ctx}");
        let after = snapshot(l.dir.path());
        let d = diff(&before, &after, "before", "after");
        assert!(d.is_empty(), "files changed:\n{d}{ctx}");
        assert!(!l.work.join("work").exists(), "work/work created; {ctx}");
    }
}

fn o(l: &Layers, opts: &str) -> Vec<OsString> {
    vec![opt_arg("-o"), opt_arg(opts), l.mnt.clone().into()]
}

#[test]
fn rejects_missing_lowerdir() {
    let l = Layers::new(1);
    let args = o(
        &l,
        &format!(
            "upperdir={},workdir={}",
            l.upper.display(),
            l.work.display()
        ),
    );
    assert_rejected(&l, &l.mnt, &args, &["lowerdir"]);
    assert_rejected(&l, &l.mnt, &[l.mnt.clone().into()], &["lowerdir"]);
}

#[test]
fn rejects_nonexistent_lowerdir() {
    let l = Layers::new(1);
    let missing = l.dir.path().join("no-such-lower");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l.lowerdir(),
        missing.display(),
        l.upper.display(),
        l.work.display()
    );
    assert_rejected(
        &l,
        &l.mnt,
        &o(&l, &opts),
        &["does not exist", &missing.display().to_string()],
    );
}

#[test]
fn rejects_lowerdir_that_is_a_file() {
    let l = Layers::new(1);
    let file = l.dir.path().join("a-file");
    write(&file, b"x");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        file.display(),
        l.upper.display(),
        l.work.display()
    );
    assert_rejected(
        &l,
        &l.mnt,
        &o(&l, &opts),
        &["not a directory", &file.display().to_string()],
    );
}

#[test]
fn rejects_upperdir_without_workdir() {
    let l = Layers::new(1);
    let opts = format!("lowerdir={},upperdir={}", l.lowerdir(), l.upper.display());
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["workdir"]);
}

#[test]
fn rejects_workdir_without_upperdir() {
    let l = Layers::new(1);
    let opts = format!("lowerdir={},workdir={}", l.lowerdir(), l.work.display());
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["upperdir"]);
}

#[test]
fn rejects_workdir_on_other_filesystem() {
    if !require_root("rejects_workdir_on_other_filesystem") {
        return;
    }
    let l = Layers::new(1);
    let t = l.dir.path().join("tmpfs");
    let _tmpfs = Tmpfs::mount(&t);
    let work = t.join("work");
    std::fs::create_dir(&work).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        l.upper.display(),
        work.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["same filesystem"]);
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    // And the other way round.
    let upper = t.join("upper");
    std::fs::create_dir(&upper).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        upper.display(),
        l.work.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["same filesystem"]);
}

#[test]
fn rejects_upper_and_work_nested() {
    let l = Layers::new(1);
    // work inside upper
    let w = l.upper.join("w");
    std::fs::create_dir(&w).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        l.upper.display(),
        w.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["inside"]);
    // upper inside work
    let u = l.work.join("u");
    std::fs::create_dir(&u).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        u.display(),
        l.work.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["inside"]);
    // the same directory
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        l.upper.display(),
        l.upper.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["upperdir", "workdir"]);
}

#[test]
fn rejects_upper_inside_lower_and_lower_inside_upper() {
    let l = Layers::new(2);
    let up = l.lower(1).join("up");
    std::fs::create_dir(&up).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lowerdir(),
        up.display(),
        l.work.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["inside", "lowerdir"]);
    let low = l.upper.join("low");
    std::fs::create_dir(&low).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        low.display(),
        l.upper.display(),
        l.work.display()
    );
    assert_rejected(&l, &l.mnt, &o(&l, &opts), &["inside", "lowerdir"]);
}

#[test]
fn rejects_missing_mountpoint() {
    let l = Layers::new(1);
    let mnt = l.dir.path().join("no-such-mnt");
    let args = vec![opt_arg("-o"), l.options().into(), mnt.clone().into()];
    assert_rejected(
        &l,
        &mnt,
        &args,
        &["mountpoint", "does not exist", &mnt.display().to_string()],
    );
}

#[test]
fn rejects_unknown_mount_option() {
    let l = Layers::new(1);
    let args = o(&l, &format!("{},frobnicate", l.options()));
    assert_rejected(&l, &l.mnt, &args, &["unknown option", "frobnicate"]);
    let args = o(&l, &format!("{},xino=maybe", l.options()));
    assert_rejected(&l, &l.mnt, &args, &["xino"]);
}

#[test]
fn rejects_unknown_flag() {
    let l = Layers::new(1);
    let args = vec![
        opt_arg("--frobnicate"),
        opt_arg("-o"),
        l.options().into(),
        l.mnt.clone().into(),
    ];
    assert_rejected(&l, &l.mnt, &args, &["frobnicate"]);
}

#[test]
fn rejects_missing_mountpoint_argument() {
    let l = Layers::new(1);
    let args = vec![opt_arg("-o"), l.options().into()];
    assert_rejected(&l, &l.mnt, &args, &["mountpoint"]);
}

// ---------------------------------------------------------------------------
// Accepted options, --help/--version, long flags

/// Mounts in daemon mode with `args`, checks it is usable at once, and
/// returns the daemon guard and the pids serving it.
fn daemon_mount(args: &[OsString], mnt: &Path) -> (Daemon, Vec<i32>) {
    let guard = Daemon::new(mnt);
    let out = run(plyfs(args));
    assert_eq!(out.code(), Some(0), "plyfs {args:?} failed: {}", out.stderr);
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
    assert!(
        is_mounted(mnt),
        "plyfs returned 0 but {mnt:?} is not mounted"
    );
    let pids = daemon_pids(mnt);
    assert_eq!(pids.len(), 1, "one plyfs daemon expected, found {pids:?}");
    (guard, pids)
}

#[test]
fn harmless_options_are_accepted() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    let opts = format!(
        "{},rw,dev,suid,nodev,nosuid,noatime,relatime,lazytime,exec,context=\"system_u:object_r:x:s0:c1,c2\",,",
        l.options()
    );
    let (_g, pids) = daemon_mount(&[opt_arg("-o"), opts.into(), l.mnt.clone().into()], &l.mnt);
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"lower");
    std::fs::write(l.mnt.join("g"), b"new").unwrap();
    assert_eq!(std::fs::read(l.upper.join("g")).unwrap(), b"new");
    let line = mounts_line(&l.mnt).expect("in /proc/mounts");
    let mo = mount_opts(&line);
    for want in ["rw", "nodev", "nosuid", "noatime"] {
        assert!(mo.iter().any(|x| x == want), "{want} missing: {line}");
    }
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
}

#[test]
fn podman_options_are_accepted() {
    let l = Layers::new(2);
    write(&l.lower(1).join("f"), b"lower");
    let opts = format!("{},,volatile,xattr_permissions=2,private", l.options());
    let (_g, pids) = daemon_mount(&[opt_arg("-o"), opts.into(), l.mnt.clone().into()], &l.mnt);
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"lower");
    std::fs::write(l.mnt.join("f"), b"changed").unwrap();
    assert_eq!(std::fs::read(l.upper.join("f")).unwrap(), b"changed");
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
}

#[test]
fn help_and_version() {
    let out = run(plyfs(["--help"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("lowerdir"), "{}", out.stdout);
    assert!(out.stdout.contains("upperdir"), "{}", out.stdout);
    assert!(out.stdout.contains("workdir"), "{}", out.stdout);
    let out = run(plyfs(["-h"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let out = run(plyfs(["--version"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.starts_with("plyfs"), "{}", out.stdout);
}

#[test]
fn long_flags() {
    let l = Layers::new(2);
    write(&l.lower(0).join("a"), b"top");
    write(&l.lower(1).join("a"), b"bottom");
    write(&l.lower(1).join("b"), b"only bottom");
    let args: Vec<OsString> = vec![
        "--lower".into(),
        l.lower(0).into(),
        "--lower".into(),
        l.lower(1).into(),
        "--upper".into(),
        l.upper.clone().into(),
        "--work".into(),
        l.work.clone().into(),
        l.mnt.clone().into(),
    ];
    let (_g, pids) = daemon_mount(&args, &l.mnt);
    assert_eq!(std::fs::read(l.mnt.join("a")).unwrap(), b"top");
    assert_eq!(std::fs::read(l.mnt.join("b")).unwrap(), b"only bottom");
    std::fs::write(l.mnt.join("c"), b"new").unwrap();
    assert_eq!(std::fs::read(l.upper.join("c")).unwrap(), b"new");
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
}

// ---------------------------------------------------------------------------
// Daemon mode

#[test]
fn daemon_returns_when_mount_is_live() {
    // Repeated: a race between "returned" and "mounted" would show only
    // sometimes.
    for i in 0..5 {
        let l = Layers::new(1);
        write(&l.lower(0).join("f"), format!("round {i}").as_bytes());
        let g = Daemon::new(&l.mnt);
        let out = run(plyfs([
            opt_arg("-o"),
            l.options().into(),
            l.mnt.clone().into(),
        ]));
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        // No waiting: the mount must be usable right away.
        assert_eq!(
            std::fs::read(l.mnt.join("f")).unwrap(),
            format!("round {i}").as_bytes()
        );
        let line = mounts_line(&l.mnt).expect("in /proc/mounts");
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], "plyfs", "{line}");
        assert_eq!(f[2], "fuse.plyfs", "{line}");
        let pids = daemon_pids(&l.mnt);
        assert_eq!(pids.len(), 1, "{pids:?}");
        unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
        drop(g);
    }
}

#[test]
fn source_argument_is_fsname() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    let args: Vec<OsString> = vec![
        "my-source".into(),
        l.mnt.clone().into(),
        "-o".into(),
        l.options().into(),
    ];
    let (_g, pids) = daemon_mount(&args, &l.mnt);
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"x");
    let line = mounts_line(&l.mnt).expect("in /proc/mounts");
    let canon = std::fs::canonicalize(&l.mnt).unwrap();
    assert!(
        line.starts_with(&format!("my-source {} fuse.plyfs ", canon.display())),
        "{line}"
    );
    let mut c = Command::new("fusermount3");
    c.arg("-u");
    unmount_and_check_exit(c, &l.mnt, &pids);
}

#[test]
fn umount_ends_daemon() {
    let l = Layers::new(1);
    let (_g, pids) = daemon_mount(
        &[opt_arg("-o"), l.options().into(), l.mnt.clone().into()],
        &l.mnt,
    );
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
}

#[test]
fn fusermount3_u_ends_daemon() {
    let l = Layers::new(1);
    let (_g, pids) = daemon_mount(
        &[opt_arg("-o"), l.options().into(), l.mnt.clone().into()],
        &l.mnt,
    );
    let mut c = Command::new("fusermount3");
    c.arg("-u");
    unmount_and_check_exit(c, &l.mnt, &pids);
}

/// Starts `plyfs -f`, sends `sig`, and expects a clean exit (status 0) with
/// the mount gone.
fn signal_unmounts(sig: i32) {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    let _g = Daemon::new(&l.mnt);
    let log = l.dir.path().join("log");
    let mut child = Command::new(PLYFS)
        .arg("-f")
        .arg("-o")
        .arg(l.options())
        .arg(&l.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || is_mounted(&l.mnt)
            && l.mnt.join("f").exists()),
        "plyfs -f did not mount: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::fs::read(l.mnt.join("f")).unwrap();
    // SAFETY: kill our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let logtext = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("plyfs -f did not exit on signal {sig}; log: {logtext}");
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log: {logtext}"
    );
    assert!(!is_mounted(&l.mnt), "still mounted after signal {sig}");
    assert!(!logtext.contains("panicked"), "{logtext}");
}

#[test]
fn sigterm_unmounts_cleanly() {
    signal_unmounts(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_cleanly() {
    signal_unmounts(libc::SIGINT);
}

/// With a file still open the unmount cannot complete at once: the mount
/// must at least be detached, and the daemon must exit once the file is
/// closed.
#[test]
fn sigterm_with_open_file_detaches_then_exits() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    let (_g, pids) = daemon_mount(
        &[opt_arg("-o"), l.options().into(), l.mnt.clone().into()],
        &l.mnt,
    );
    let open = std::fs::File::open(l.mnt.join("f")).unwrap();
    // SAFETY: signal the daemon we started.
    unsafe {
        libc::kill(pids[0], libc::SIGTERM);
    }
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(&l.mnt)),
        "still mounted after SIGTERM with an open file"
    );
    // The open file still works until it is closed.
    use std::io::Read;
    let mut s = String::new();
    (&open).read_to_string(&mut s).unwrap();
    assert_eq!(s, "x");
    drop(open);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pids[0])),
        "daemon did not exit after the last file was closed"
    );
}

#[test]
fn sigterm_to_daemon_unmounts_cleanly() {
    let l = Layers::new(1);
    let (_g, pids) = daemon_mount(
        &[opt_arg("-o"), l.options().into(), l.mnt.clone().into()],
        &l.mnt,
    );
    // SAFETY: signal the daemon we started.
    unsafe {
        libc::kill(pids[0], libc::SIGTERM);
    }
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pids[0])),
        "daemon did not exit on SIGTERM"
    );
    assert!(!is_mounted(&l.mnt));
}

// ---------------------------------------------------------------------------
// mount(8)

/// Points /usr/local/bin/plyfs at the built binary for mount.fuse3, holding
/// a lock so concurrent test binaries do not fight over it; restores the
/// previous state on drop.
struct SbinLink {
    lock: std::fs::File,
    old: Option<PathBuf>,
}

const LINK: &str = "/usr/local/bin/plyfs";

impl SbinLink {
    fn install(test: &str) -> Option<SbinLink> {
        if !require_root(test) {
            return None;
        }
        let lock = std::fs::File::create("/tmp/plyfs-usr-local-bin.lock").expect("lock file");
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let old = match std::fs::symlink_metadata(LINK) {
            Ok(md) if md.file_type().is_symlink() => Some(std::fs::read_link(LINK).unwrap()),
            Ok(_) => {
                eprintln!("SKIPPED {test}: {LINK} exists and is not a symlink");
                return None;
            }
            Err(_) => None,
        };
        let _ = std::fs::remove_file(LINK);
        std::os::unix::fs::symlink(PLYFS, LINK).expect("symlink /usr/local/bin/plyfs");
        Some(SbinLink { lock, old })
    }
}

impl Drop for SbinLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(LINK);
        if let Some(old) = &self.old {
            let _ = std::os::unix::fs::symlink(old, LINK);
        }
        let _ = &self.lock;
    }
}

#[test]
fn mount_t_fuse_plyfs() {
    let Some(_link) = SbinLink::install("mount_t_fuse_plyfs") else {
        return;
    };
    let l = Layers::new(2);
    write(&l.lower(1).join("f"), b"bottom");
    let g = Daemon::new(&l.mnt);
    let mut c = Command::new("mount");
    c.args(["-t", "fuse.plyfs", "srcname"])
        .arg(&l.mnt)
        .arg("-o")
        .arg(l.options());
    let out = run(c);
    assert_eq!(out.code(), Some(0), "mount: {}{}", out.stdout, out.stderr);
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"bottom");
    std::fs::write(l.mnt.join("f"), b"top").unwrap();
    assert_eq!(std::fs::read(l.upper.join("f")).unwrap(), b"top");
    let line = mounts_line(&l.mnt).expect("mounted");
    let canon = std::fs::canonicalize(&l.mnt).unwrap();
    assert!(
        line.starts_with(&format!("srcname {} fuse.plyfs ", canon.display())),
        "{line}"
    );
    let pids = daemon_pids(&l.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
    drop(g);
}

#[test]
fn mount_from_fstab() {
    let Some(_link) = SbinLink::install("mount_from_fstab") else {
        return;
    };
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"fstab");
    let fstab = l.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\nfstabsrc {} fuse.plyfs {},noatime,nofail 0 0\n",
            l.mnt.display(),
            l.options()
        ),
    )
    .unwrap();
    let g = Daemon::new(&l.mnt);
    let mut c = Command::new("mount");
    c.arg("-T").arg(&fstab).arg(&l.mnt);
    let out = run(c);
    assert_eq!(
        out.code(),
        Some(0),
        "mount -T: {}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"fstab");
    let line = mounts_line(&l.mnt).expect("mounted");
    assert!(line.starts_with("fstabsrc "), "{line}");
    assert!(line.contains(" fuse.plyfs "), "{line}");
    assert!(mount_opts(&line).iter().any(|o| o == "noatime"), "{line}");
    let pids = daemon_pids(&l.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
    drop(g);
}

// ---------------------------------------------------------------------------
// Permissions

#[test]
fn root_mount_has_allow_other_and_default_permissions() {
    if !require_root("root_mount_has_allow_other_and_default_permissions") {
        return;
    }
    let l = Layers::new(1);
    chmod(l.dir.path(), 0o755);
    write(&l.lower(0).join("public"), b"public");
    chmod(&l.lower(0).join("public"), 0o644);
    write(&l.lower(0).join("secret"), b"secret");
    chmod(&l.lower(0).join("secret"), 0o600);
    let m = l.mount();
    let line = mounts_line(&l.mnt).expect("mounted");
    let mo = mount_opts(&line);
    assert!(mo.iter().any(|o| o == "allow_other"), "{line}");
    assert!(mo.iter().any(|o| o == "default_permissions"), "{line}");

    let p = m.mnt.join("public").display().to_string();
    let s = m.mnt.join("secret").display().to_string();
    let out = sh_as_nobody(&format!("cat '{p}'"));
    assert_eq!(
        out.code(),
        Some(0),
        "nobody cannot read 0644: {}",
        out.stderr
    );
    assert_eq!(out.stdout, "public");
    let out = sh_as_nobody(&format!("echo x >> '{p}'"));
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    let out = sh_as_nobody(&format!("cat '{s}'"));
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    let out = sh_as_nobody(&format!("touch '{}'", m.mnt.join("new").display()));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    // Nothing was copied up or created by the refused writes.
    assert_eq!(std::fs::read_dir(&l.upper).unwrap().count(), 0);
    assert_eq!(std::fs::read(l.mnt.join("public")).unwrap(), b"public");
    drop(m);
}

/// A tree for an unprivileged mount: layers owned by nobody, below a
/// directory nobody can enter.
fn nobody_layers() -> Layers {
    let l = Layers::new(1);
    chmod(l.dir.path(), 0o755);
    write(&l.lower(0).join("keep"), b"keep");
    write(&l.lower(0).join("change"), b"old");
    write(&l.lower(0).join("gone"), b"gone");
    write(&l.lower(0).join("d/x"), b"x");
    write(&l.lower(0).join("d/y"), b"y");
    for p in [&l.lowers[0], &l.upper, &l.work, &l.mnt] {
        chown_tree(p, NOBODY, NOBODY);
    }
    l
}

/// Copy-up, whiteout and opaque dir as nobody; markers must be user.*.
fn check_unprivileged_writes(l: &Layers, run_sh: &dyn Fn(&str) -> Output) {
    let m = l.mnt.display().to_string();
    let out = run_sh(&format!(
        "set -e; cd '{m}'; cat keep; echo new > change; rm gone; rm -r d; mkdir d; echo z > d/z; ls -a d"
    ));
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("keep"), "{}", out.stdout);
    assert_eq!(std::fs::read(l.upper.join("change")).unwrap(), b"new\n");
    assert_eq!(std::fs::read(l.lower(0).join("change")).unwrap(), b"old");
    let md = std::fs::symlink_metadata(l.upper.join("gone")).unwrap();
    assert!(
        md.file_type().is_char_device() && md.rdev() == 0,
        "whiteout should be a 0/0 char device: {md:?}"
    );
    assert_eq!(
        get_xattr(&l.upper.join("d"), "user.overlay.opaque").ok(),
        Some(b"y".to_vec()),
        "opaque marker must be user.overlay.opaque"
    );
    assert!(get_xattr(&l.upper.join("d"), "trusted.overlay.opaque").is_err());
    // `ls -a d` in the mount (only nobody may look: no allow_other).
    assert!(out.stdout.ends_with(".\n..\nz\n"), "{}", out.stdout);
    for e in std::fs::read_dir(&l.upper).unwrap() {
        let md = std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert_eq!(md.uid(), NOBODY, "upper files belong to nobody");
    }
}

#[test]
fn unprivileged_mount_through_fusermount3() {
    if !require_root("unprivileged_mount_through_fusermount3") {
        return;
    }
    let _lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
    let _mode = DevFuseMode::set(0o666);
    let l = nobody_layers();
    let g = Daemon::new(&l.mnt);
    let mut c = as_nobody(PLYFS);
    c.arg("-o").arg(l.options()).arg(&l.mnt);
    let out = run(c);
    assert_eq!(out.code(), Some(0), "plyfs as nobody: {}", out.stderr);
    assert!(is_mounted(&l.mnt));
    let line = mounts_line(&l.mnt).unwrap();
    assert!(line.contains(" fuse.plyfs "), "{line}");
    assert!(line.contains("user_id=65534"), "{line}");
    let pids = daemon_pids(&l.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    check_unprivileged_writes(&l, &|s| sh_as_nobody(s));
    let mut c = as_nobody("fusermount3");
    c.arg("-u");
    unmount_and_check_exit(c, &l.mnt, &pids);
    drop(g);
}

#[test]
fn unprivileged_mount_in_user_namespace() {
    if !require_root("unprivileged_mount_in_user_namespace") {
        return;
    }
    let _lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
    let _mode = DevFuseMode::set(0o666);
    let l = nobody_layers();
    let _g = Daemon::new(&l.mnt);
    let m = l.mnt.display().to_string();
    // The mount lives in the namespace: mount, use and unmount there.
    let script = format!(
        "set -e; '{PLYFS}' -o '{}' '{m}'; cd '{m}'; cat keep; echo new > change; rm gone; \
         rm -r d; mkdir d; echo z > d/z; ls -a d; cd /; grep ' {m} ' /proc/mounts; umount '{m}'",
        l.options()
    );
    let mut c = as_nobody("unshare");
    c.args(["-Urm", "sh", "-c", &script]);
    let out = run(c);
    if out.code() != Some(0) {
        // The only acceptable failure is a clear one-line refusal.
        let line = out.stderr.trim();
        panic!(
            "plyfs in unshare -Urm failed: {line:?} (stdout {:?})",
            out.stdout
        );
    }
    assert!(out.stdout.contains("fuse.plyfs"), "{}", out.stdout);
    assert!(out.stdout.starts_with("keep"), "{}", out.stdout);
    assert!(!is_mounted(&l.mnt));
    assert!(
        wait_until(Duration::from_secs(10), || daemon_pids(&l.mnt).is_empty()),
        "daemon in the namespace did not exit"
    );
    // The namespace's root is nobody outside: same on-disk result.
    assert_eq!(std::fs::read(l.upper.join("change")).unwrap(), b"new\n");
    let md = std::fs::symlink_metadata(l.upper.join("gone")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0, "{md:?}");
    assert_eq!(
        get_xattr(&l.upper.join("d"), "user.overlay.opaque").ok(),
        Some(b"y".to_vec())
    );
    assert!(get_xattr(&l.upper.join("d"), "trusted.overlay.opaque").is_err());
    assert_eq!(std::fs::read(l.upper.join("d/z")).unwrap(), b"z\n");
}

/// plyfs as nobody with /dev/fuse at 0600: exit 1, one line naming
/// /dev/fuse and its mode.
fn dev_fuse_refusal(test: &str, foreground: bool) {
    if !require_root(test) {
        return;
    }
    let _lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
    let _mode = DevFuseMode::set(0o600);
    let l = nobody_layers();
    let _g = Daemon::new(&l.mnt);
    let mut c = as_nobody(PLYFS);
    if foreground {
        c.arg("-f");
    }
    c.arg("-o").arg(l.options()).arg(&l.mnt);
    let out = run_for(c, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let text = out.stderr.trim_end();
    assert!(!text.contains('\n'), "one line expected: {text:?}");
    assert!(text.starts_with("plyfs: "), "{text}");
    assert!(text.contains("/dev/fuse"), "{text}");
    assert!(text.contains("600"), "should show the mode: {text}");
    assert!(!is_mounted(&l.mnt));
    assert!(daemon_pids(&l.mnt).is_empty());
}

#[test]
fn unprivileged_mount_without_dev_fuse_access_is_explained_foreground() {
    dev_fuse_refusal(
        "unprivileged_mount_without_dev_fuse_access_is_explained_foreground",
        true,
    );
}

#[test]
fn unprivileged_mount_without_dev_fuse_access_is_explained_daemon() {
    dev_fuse_refusal(
        "unprivileged_mount_without_dev_fuse_access_is_explained_daemon",
        false,
    );
}

/// `work/work` exists but is a file: the work dir cannot be prepared. This
/// is found after the fork (while building the filesystem); still exit 1,
/// one line, nothing mounted.
fn unpreparable_workdir(foreground: bool) {
    let l = Layers::new(1);
    write(&l.work.join("work"), b"not a directory");
    let _g = Daemon::new(&l.mnt);
    let mut args = vec![];
    if foreground {
        args.push(opt_arg("-f"));
    }
    args.extend(o(&l, &l.options()));
    let out = run_for(plyfs(&args), Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let text = out.stderr.trim_end();
    assert!(!text.contains('\n'), "one line expected: {text:?}");
    assert!(text.starts_with("plyfs: "), "{text}");
    assert!(text.contains("workdir"), "{text}");
    assert!(!is_mounted(&l.mnt));
    assert!(daemon_pids(&l.mnt).is_empty());
}

#[test]
fn rejects_unpreparable_workdir_foreground() {
    unpreparable_workdir(true);
}

#[test]
fn rejects_unpreparable_workdir_daemon() {
    unpreparable_workdir(false);
}

// ---------------------------------------------------------------------------
// Read-only

#[test]
fn lower_only_is_read_only() {
    let l = Layers::new(2);
    write(&l.lower(0).join("f"), b"top");
    write(&l.lower(1).join("d/g"), b"g");
    let m = l.mount_ro();
    let line = mounts_line(&l.mnt).expect("mounted");
    assert!(mount_opts(&line).iter().any(|o| o == "ro"), "{line}");
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"top");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(errno(&e), libc::EROFS, "{what}: {e}");
    };
    erofs(std::fs::write(m.mnt.join("new"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("f"))
            .map(drop),
        "open for write",
    );
    erofs(std::fs::create_dir(m.mnt.join("nd")), "mkdir");
    erofs(std::fs::remove_file(m.mnt.join("f")), "unlink");
    erofs(std::fs::remove_file(m.mnt.join("d/g")), "unlink in dir");
    erofs(std::fs::rename(m.mnt.join("f"), m.mnt.join("f2")), "rename");
    erofs(
        std::fs::set_permissions(m.mnt.join("f"), std::fs::Permissions::from_mode(0o600)),
        "chmod",
    );
    erofs(std::os::unix::fs::symlink("x", m.mnt.join("l")), "symlink");
    erofs(set_xattr(&m.mnt.join("f"), "user.x", b"1"), "setxattr");
    drop(m);
    assert_eq!(std::fs::read(l.lower(0).join("f")).unwrap(), b"top");
}

#[test]
fn lower_only_daemon_mode_is_read_only() {
    let l = Layers::new(2);
    write(&l.lower(1).join("f"), b"x");
    let (_g, pids) = daemon_mount(
        &[
            opt_arg("-o"),
            format!("lowerdir={}", l.lowerdir()).into(),
            l.mnt.clone().into(),
        ],
        &l.mnt,
    );
    let line = mounts_line(&l.mnt).expect("mounted");
    assert!(mount_opts(&line).iter().any(|o| o == "ro"), "{line}");
    let e = std::fs::write(l.mnt.join("g"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS);
    unmount_and_check_exit(Command::new("umount"), &l.mnt, &pids);
}

// ---------------------------------------------------------------------------
// Inputs the kernel refuses (issue 9): refused here too, with one line.

#[test]
fn rejects_regular_file_as_mountpoint() {
    let l = Layers::new(1);
    let f = l.dir.path().join("file");
    write(&f, b"x");
    let args = vec![opt_arg("-o"), opt_arg(&l.options()), f.clone().into()];
    assert_rejected(&l, &f, &args, &["not a directory"]);
}

#[test]
fn rejects_duplicate_and_overlapping_lowerdirs() {
    let l = Layers::new(1);
    let l0 = l.lower(0).display().to_string();
    std::fs::create_dir(l.lower(0).join("sub")).unwrap();
    std::os::unix::fs::symlink(l.lower(0), l.dir.path().join("alias")).unwrap();
    let alias = l.dir.path().join("alias").display().to_string();
    for (lowers, words) in [
        (format!("{l0}:{l0}"), &["lowerdir", "twice"][..]),
        (format!("{l0}:{alias}"), &["lowerdir", "twice"]),
        (format!("{l0}:{l0}/sub"), &["lowerdir", "overlap"]),
        (format!("{l0}/sub:{l0}"), &["lowerdir", "overlap"]),
    ] {
        let opts = format!(
            "lowerdir={lowers},upperdir={},workdir={}",
            l.upper.display(),
            l.work.display()
        );
        assert_rejected(&l, &l.mnt, &o(&l, &opts), words);
    }
}

#[test]
fn rejects_lower_flag_together_with_lowerdir_option() {
    let l = Layers::new(2);
    let args = vec![
        opt_arg("--lower"),
        l.lower(1).into(),
        opt_arg("-o"),
        opt_arg(&format!("lowerdir={}", l.lower(0).display())),
        l.mnt.clone().into(),
    ];
    assert_rejected(&l, &l.mnt, &args, &["--lower", "lowerdir="]);
}

/// Like the kernel: a work directory with `work/incompat/volatile` (left by
/// a volatile mount, which may have lost data in a crash) is refused, with
/// a line that says what to remove; plyfs's own volatile mounts leave the
/// same mark, which kernel overlayfs honours.
#[test]
fn leftover_volatile_mark_is_refused_like_the_kernel() {
    if !require_root("leftover_volatile_mark_is_refused_like_the_kernel") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    {
        let m = PlyfsMount::start(&l.mnt, &format!("{},volatile", l.options()), &[]).unwrap();
        std::fs::write(m.mnt.join("f"), b"upper").unwrap();
    }
    assert!(l.work.join("work/incompat/volatile/dirty").exists());
    assert!(
        l.mount_kernel_checked("").is_err(),
        "kernel mounted a volatile leftover"
    );
    for extra in ["", ",volatile"] {
        let _guard = Daemon::new(&l.mnt);
        let out = run_for(
            plyfs([
                opt_arg("-o"),
                opt_arg(&format!("{}{extra}", l.options())),
                l.mnt.clone().into(),
            ]),
            Duration::from_secs(20),
        );
        assert_eq!(out.code(), Some(1), "{}", out.stderr);
        let line = out.stderr.trim_end();
        assert!(!line.contains('\n'), "one line: {line:?}");
        for w in ["volatile", "incompat", "remove"] {
            assert!(line.contains(w), "{w}: {line:?}");
        }
        assert!(!is_mounted(&l.mnt));
        assert!(l.work.join("work/incompat/volatile/dirty").exists());
    }
    std::fs::remove_dir_all(l.work.join("work/incompat")).unwrap();
    let m = l.mount();
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"upper");
}

/// Two mounts writing one upper corrupt it: the second is refused while
/// the first is live, and allowed once it is gone.
#[test]
fn second_mount_on_the_same_upper_is_refused() {
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"lower");
    let m = l.mount();
    let other = l.dir.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let _guard = Daemon::new(&other);
    let out = run_for(
        plyfs([opt_arg("-o"), opt_arg(&l.options()), other.clone().into()]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
    assert!(!is_mounted(&other));
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"lower");
    drop(m);
    let m2 = PlyfsMount::start(&other, &l.options(), &[]).expect("mount after the first ended");
    assert_eq!(std::fs::read(m2.mnt.join("f")).unwrap(), b"lower");
}

/// The mountpoint may lie inside a layer: plyfs reaches its layers through
/// private clones of their mounts (as the kernel does), so it sees the
/// directory below its own mount and never waits on itself.
#[test]
fn mountpoint_inside_a_layer_is_served() {
    if !require_root("mountpoint_inside_a_layer_is_served") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("mnt/below-in-lower"), b"x");
    write(&l.upper.join("umnt/below-in-upper"), b"y");
    for (mnt, shown) in [
        (l.lower(0).join("mnt"), "below-in-lower"),
        (l.upper.join("umnt"), "below-in-upper"),
    ] {
        let m = PlyfsMount::start(&mnt, &l.options(), &[]).expect("mount inside a layer");
        let inner = mnt.join(mnt.file_name().unwrap());
        let mut ls = Command::new("ls");
        ls.arg(&inner);
        let out = run_for(ls, Duration::from_secs(10));
        assert_eq!(
            out.code(),
            Some(0),
            "ls {}: {}",
            inner.display(),
            out.stderr
        );
        assert_eq!(out.stdout.trim(), shown);
        std::fs::write(inner.join("new"), b"n").unwrap();
        drop(m);
    }
}

#[test]
fn mountpoint_inside_a_lower_is_refused_without_privilege() {
    if !require_root("mountpoint_inside_a_lower_is_refused_without_privilege") {
        return;
    }
    let l = nobody_layers();
    let inside = l.lower(0).join("d");
    let _guard = Daemon::new(&inside);
    let mut c = as_nobody(PLYFS);
    c.arg("-f").arg("-o").arg(l.options()).arg(&inside);
    let out = run_for(c, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let line = out.stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {line:?}");
    assert!(line.contains("inside lowerdir"), "{line:?}");
    assert!(!l.work.join("work").exists(), "work/work created");
}

/// allow_other as an unprivileged user without `user_allow_other` in
/// /etc/fuse.conf: one line naming the setting, nothing written.
#[test]
fn unprivileged_allow_other_is_refused_clearly() {
    if !require_root("unprivileged_allow_other_is_refused_clearly") {
        return;
    }
    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        eprintln!("SKIPPED: /etc/fuse.conf allows user_allow_other here");
        return;
    }
    let _lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
    let _mode = DevFuseMode::set(0o666);
    let l = nobody_layers();
    let _guard = Daemon::new(&l.mnt);
    let mut c = as_nobody(PLYFS);
    c.arg("-o")
        .arg(format!("{},allow_other", l.options()))
        .arg(&l.mnt);
    let out = run_for(c, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let line = out.stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {line:?}");
    assert!(line.contains("user_allow_other"), "{line:?}");
    assert!(!line.contains("/dev/fuse ("), "blames /dev/fuse: {line:?}");
    assert!(!l.work.join("work").exists(), "work/work created");
}

/// Every option README's table lists is in `plyfs --help` too.
#[test]
fn help_lists_every_option_of_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("### Options")
        .nth(1)
        .expect("README has an options table");
    let out = run(plyfs(["--help"]));
    let help = out.stdout;
    let mut checked = 0;
    for row in table.lines().skip_while(|l| !l.starts_with("| `")) {
        if !row.starts_with('|') {
            break;
        }
        let first = row.split('|').nth(1).unwrap_or("");
        if row.contains("accepted and ignored") {
            continue;
        }
        for tok in first.split('`').skip(1).step_by(2) {
            let key = tok.split('=').next().unwrap_or(tok);
            assert!(
                help.contains(key),
                "README lists option {tok:?}, plyfs --help does not mention {key:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} options found in README");
}

/// `plyfs man` and `plyfs completions` come from the clap definitions: the
/// page names every mount option of --help and every subcommand.
#[test]
fn man_page_and_completions() {
    let man = run(plyfs(["man"]));
    assert_eq!(man.code(), Some(0), "{}", man.stderr);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH plyfs 1"),
        "{}",
        man.stdout
    );
    for word in [
        "lowerdir=",
        "redirect_dir=",
        "passthrough=",
        "plyfs\\-diff(1)",
        "plyfs\\-apply(1)",
    ] {
        assert!(man.stdout.contains(word), "man page lacks {word:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(plyfs([
        OsStr::new("man"),
        OsStr::new("--dir"),
        dir.path().as_os_str(),
    ]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for page in ["plyfs.1", "plyfs-diff.1", "plyfs-apply.1"] {
        assert!(dir.path().join(page).exists(), "{page} not written");
    }
    for shell in ["bash", "zsh", "fish"] {
        let c = run(plyfs(["completions", shell]));
        assert_eq!(c.code(), Some(0), "{shell}: {}", c.stderr);
        assert!(
            c.stdout.contains("diff") && c.stdout.contains("lower"),
            "{shell}"
        );
    }
}
