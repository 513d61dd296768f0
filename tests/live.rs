//! Live mounts (issue 13): `plyfs status` over the control channel, the
//! daemon's log (file, syslog, SIGUSR1), the `size=`/`inodes=` limit of the
//! upper layer (concurrent writers and copy-ups, space given back, kept
//! across remounts, rootless), and `plyfs layer add|remove` under
//! concurrent readers. Every test mounts for real.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Tests that change /dev/fuse's mode take this lock.
static DEV_FUSE: Mutex<()> = Mutex::new(());

const NOBODY: u32 = 65534;

fn plyfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(PLYFS)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run plyfs")
}

fn status_json(mnt: &Path) -> serde_json::Value {
    let out = plyfs(&["status".as_ref(), "--json".as_ref(), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "plyfs status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn layer(verb: &str, mnt: &Path, dir: &Path) -> Output {
    plyfs(&[
        "layer".as_ref(),
        verb.as_ref(),
        mnt.as_os_str(),
        dir.as_os_str(),
    ])
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: valid C string and out-pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(r, 0, "statvfs {}", p.display());
    // SAFETY: statvfs succeeded.
    unsafe { st.assume_init() }
}

/// Bytes used as `df` shows them.
fn df_used(p: &Path) -> u64 {
    let s = statvfs(p);
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

/// What the upper layer holds by the rules of `size=` (see src/quota.rs):
/// directories one block, files and symlinks their blocks, hard links
/// once, whiteouts nothing; and the number of objects.
fn upper_usage(root: &Path, block: u64) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (block, 1);
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.file_type().is_dir() {
                bytes += block;
                inodes += 1;
                todo.push(e.path());
                continue;
            }
            if std::os::unix::fs::FileTypeExt::is_char_device(&md.file_type()) && md.rdev() == 0 {
                continue;
            }
            if md.nlink() > 1 && !seen.insert(md.ino()) {
                continue;
            }
            bytes += md.blocks() * 512;
            inodes += 1;
        }
    }
    (bytes, inodes)
}

fn block_size(p: &Path) -> u64 {
    let s = statvfs(p);
    s.f_bsize.max(s.f_frsize)
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
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

/// A daemonized plyfs (no `-f`): unmounted and its daemon ended on drop.
struct Daemon {
    mnt: PathBuf,
    pid: Option<i32>,
}

impl Daemon {
    /// Mounts with `plyfs -o OPTIONS MNT` (the daemon goes to the
    /// background) and `env`.
    fn mount(mnt: &Path, options: &str, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let mut c = Command::new(PLYFS);
        c.arg("-o").arg(options).arg(mnt).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        let mut d = Daemon {
            mnt: mnt.to_path_buf(),
            pid: None,
        };
        let out = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("plyfs");
        assert!(
            out.status.success(),
            "plyfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(mnt));
        d.pid = status_json(mnt)["pid"].as_i64().map(|p| p as i32);
        d
    }

    fn pid(&self) -> i32 {
        self.pid.expect("daemon pid")
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
        if let Some(pid) = self.pid {
            let gone = wait_until(Duration::from_secs(10), || {
                // SAFETY: signal 0 only checks that the pid exists.
                let r = unsafe { libc::kill(pid, 0) };
                r != 0
            });
            if !gone {
                umount(&self.mnt);
                // SAFETY: the daemon this guard started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// plyfs status

#[test]
fn status_json_reports_the_mount() {
    if !require_fuse("status_json_reports_the_mount") {
        return;
    }
    let l = Layers::new(2);
    write(&l.lower(0).join("a"), b"top");
    write(&l.lower(1).join("b"), b"base");
    let m = PlyfsMount::start(
        &l.mnt,
        &format!("{},size=64M,inodes=1000", l.options()),
        &[],
    )
    .expect("mount");
    std::fs::write(l.mnt.join("new"), b"12345").unwrap();
    let held = std::fs::File::open(l.mnt.join("b")).unwrap();
    let j = status_json(&l.mnt);
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(j["proto"], 1, "{j}");
    assert_eq!(j["pid"].as_u64(), Some(u64::from(m.pid())), "{j}");
    assert_eq!(j["owner_uid"].as_u64(), Some(0), "{j}");
    assert_eq!(
        j["mountpoint"].as_str(),
        Some(canon(&l.mnt).as_str()),
        "{j}"
    );
    let lowers: Vec<&str> = j["lowerdirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(lowers, vec![canon(l.lower(0)), canon(l.lower(1))], "{j}");
    assert_eq!(
        j["upperdir"].as_str(),
        Some(canon(&l.upper).as_str()),
        "{j}"
    );
    assert_eq!(j["workdir"].as_str(), Some(canon(&l.work).as_str()), "{j}");
    assert!(j["options"].as_str().unwrap().contains("size=64M"), "{j}");
    assert_eq!(j["read_only"], false, "{j}");
    let transport = j["io"]["transport"].as_str().unwrap();
    assert!(
        transport == "/dev/fuse" || transport.starts_with("io_uring"),
        "{j}"
    );
    // A size limit keeps writes going through plyfs: no writeback cache,
    // no passthrough.
    assert_eq!(j["io"]["mode"].as_str(), Some("cached"), "{j}");
    assert!(j["io"]["threads"].as_u64().unwrap() >= 1, "{j}");
    assert!(j["uptime_ms"].as_u64().is_some(), "{j}");
    assert!(j["open_files"].as_u64().unwrap() >= 1, "{j}");
    assert!(j["nodes"].as_u64().unwrap() >= 3, "{j}");
    assert!(j["rss_bytes"].as_u64().unwrap() > 1 << 20, "{j}");
    assert!(j["fds"].as_u64().unwrap() > 3, "{j}");
    assert_eq!(
        j["upper_size"]["limit_bytes"].as_u64(),
        Some(64 << 20),
        "{j}"
    );
    assert_eq!(j["upper_size"]["limit_inodes"].as_u64(), Some(1000), "{j}");
    // The root and the new file.
    assert_eq!(j["upper_size"]["used_inodes"].as_u64(), Some(2), "{j}");
    assert!(j["upper_size"]["used_bytes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["log"].as_str(), Some("stderr"), "{j}");
    let ops = j["requests"].as_array().unwrap();
    let lookup = ops
        .iter()
        .find(|o| o["op"] == "lookup")
        .expect("lookup counted");
    assert!(lookup["count"].as_u64().unwrap() >= 2, "{j}");
    assert!(lookup["max_ns"].as_u64().unwrap() >= lookup["mean_ns"].as_u64().unwrap());
    assert!(ops.iter().any(|o| o["op"] == "write"), "{j}");
    drop(held);

    // The text form, and every mount without a mountpoint.
    let out = plyfs(&["status".as_ref(), l.mnt.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "lowerdirs:",
        "upperdir:",
        "I/O:",
        "upper size:",
        "requests:",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    let out = plyfs(&["status".as_ref(), "--json".as_ref()]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"].as_u64() == Some(u64::from(m.pid()))),
        "{all}"
    );
    drop(m);
    // Its socket goes with it.
    let out = plyfs(&["status".as_ref(), l.mnt.as_os_str()]);
    assert!(!out.status.success());
}

#[test]
fn status_refuses_other_users() {
    if !require_root("status_refuses_other_users") {
        return;
    }
    let l = Layers::new(1);
    std::fs::set_permissions(l.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = l.dir.path().join("run");
    let mut cmd = Command::new(PLYFS);
    cmd.env("PLYFS_RUNTIME_DIR", &run);
    let m = PlyfsMount::start_with(cmd, &l.mnt, &l.options(), &[]).expect("mount");
    let md = std::fs::metadata(&run).unwrap();
    assert_eq!(md.mode() & 0o777, 0o700, "runtime dir open to others");
    let sock = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .next()
        .expect("a socket")
        .path();
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);

    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", PLYFS])
            .args(["status".as_ref(), l.mnt.as_os_str()])
            .env("PLYFS_RUNTIME_DIR", &run)
            .env_remove("RUST_LOG");
        c.output().expect("setpriv")
    };
    // The directory keeps others out.
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no plyfs daemon answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the socket reachable, the daemon checks who connects.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("only the mount's owner and root"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", PLYFS])
        .args([
            "layer".as_ref(),
            "add".as_ref(),
            l.mnt.as_os_str(),
            "/".as_ref(),
        ])
        .env("PLYFS_RUNTIME_DIR", &run);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        status_json_env(&l.mnt, &run)["lowerdirs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(m.log().contains("refused uid 65534"), "{}", m.log());
}

fn status_json_env(mnt: &Path, run: &Path) -> serde_json::Value {
    let out = Command::new(PLYFS)
        .args(["status".as_ref(), "--json".as_ref(), mnt.as_os_str()])
        .env("PLYFS_RUNTIME_DIR", run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Logs

#[test]
fn daemon_logs_to_file_with_sigusr1_figures() {
    if !require_fuse("daemon_logs_to_file_with_sigusr1_figures") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("f"), b"x");
    let log = l.dir.path().join("plyfs.log");
    let opts = format!("{},log={}", l.options(), log.display());
    let d = Daemon::mount(&l.mnt, &opts, &[("RUST_LOG", "info".as_ref())]);
    assert_eq!(std::fs::read(l.mnt.join("f")).unwrap(), b"x");
    // SAFETY: the daemon this test started.
    unsafe {
        libc::kill(d.pid(), libc::SIGUSR1);
    }
    let has = |s: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(s)
    };
    assert!(
        wait_until(Duration::from_secs(10), || has("requests: ")),
        "no SIGUSR1 figures in {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let pid = format!("plyfs[{}]", d.pid());
    assert!(text.contains(&format!("{pid} INFO ")), "{text}");
    assert!(text.contains("mounted "), "{text}");
    assert!(text.contains("NOTICE plyfs: requests: "), "{text}");
    assert!(text.contains("lookup="), "{text}");
    // Lines start with a UTC timestamp.
    assert!(
        text.lines().all(|l| l.len() > 27 && &l[26..27] == "Z"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    let st = status_json(&l.mnt);
    assert_eq!(
        st["log"].as_str(),
        Some(format!("file:{}", log.display()).as_str())
    );
    drop(d);
    // The daemon is still alive until unmount: a USR1 did not kill it.
    assert!(!is_mounted(&l.mnt));
}

#[test]
fn daemon_logs_to_syslog_in_the_background() {
    if !require_fuse("daemon_logs_to_syslog_in_the_background") {
        return;
    }
    let l = Layers::new(1);
    let sock_path = l.dir.path().join("devlog");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let d = Daemon::mount(
        &l.mnt,
        &l.options(),
        &[
            ("RUST_LOG", "info".as_ref()),
            ("PLYFS_SYSLOG_SOCKET", sock_path.as_os_str()),
        ],
    );
    assert!(std::fs::read_dir(&l.mnt).unwrap().next().is_none());
    // SAFETY: the daemon this test started.
    unsafe {
        libc::kill(d.pid(), libc::SIGUSR1);
    }
    let want = format!("<29>plyfs[{}]: NOTICE requests: ", d.pid());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 9000];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !got.iter().any(|g: &String| g.starts_with(&want)) {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    assert!(
        got.iter().any(|g| g.starts_with(&want)),
        "no SIGUSR1 datagram: {got:?}"
    );
    assert_eq!(
        status_json(&l.mnt)["log"].as_str(),
        Some(format!("syslog:{}", sock_path.display()).as_str())
    );
    drop(d);
}

#[test]
fn bad_log_file_fails_the_mount() {
    let l = Layers::new(1);
    let opts = format!("{},log=/nonexistent/dir/x.log", l.options());
    let out = plyfs(&["-o".as_ref(), opts.as_ref(), l.mnt.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log") && err.contains("/nonexistent/dir/x.log"),
        "{err}"
    );
    assert!(!is_mounted(&l.mnt));
}

// ---------------------------------------------------------------------------
// size= and inodes=

/// Writers fill new files while others copy lower files up, all at once;
/// the upper layer never holds more than the limit, every refusal is
/// ENOSPC, df agrees with the upper's real content, and removing and
/// truncating give the space back.
#[test]
fn size_limit_under_concurrent_writers_and_copy_ups() {
    if !require_fuse("size_limit_under_concurrent_writers_and_copy_ups") {
        return;
    }
    const LIMIT: u64 = 8 << 20;
    let l = Layers::new(1);
    for i in 0..12 {
        write(
            &l.lower(0).join(format!("lower{i}")),
            &vec![b'l'; 512 << 10],
        );
    }
    let block = block_size(&l.upper);
    let m = PlyfsMount::start(&l.mnt, &format!("{},size=8M", l.options()), &[]).expect("mount");
    let sv = statvfs(&l.mnt);
    assert_eq!(sv.f_blocks * sv.f_frsize, LIMIT, "df size");

    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let enospc = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..4 {
        let (mnt, failures, enospc, written) = (
            l.mnt.clone(),
            failures.clone(),
            enospc.clone(),
            written.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let chunk = vec![b'w'; 64 << 10];
            for f in 0..8 {
                let p = mnt.join(format!("w{w}-{f}"));
                let mut file = match std::fs::File::create(&p) {
                    Ok(f) => f,
                    Err(e) if is_enospc(&e) => {
                        enospc.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("create {p:?}: {e}"));
                        return;
                    }
                };
                for _ in 0..8 {
                    match file.write_all(&chunk) {
                        Ok(()) => {
                            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) if is_enospc(&e) => {
                            enospc.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(format!("write {p:?}: {e}"));
                            return;
                        }
                    }
                }
            }
        }));
    }
    for c in 0..2 {
        let (mnt, failures, enospc) = (l.mnt.clone(), failures.clone(), enospc.clone());
        threads.push(std::thread::spawn(move || {
            for i in (c..12).step_by(2) {
                let p = mnt.join(format!("lower{i}"));
                // Appending copies the whole lower file up first.
                match std::fs::OpenOptions::new().append(true).open(&p) {
                    Ok(mut f) => match f.write_all(b"+") {
                        Ok(()) => {}
                        Err(e) if is_enospc(&e) => {
                            enospc.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("append {p:?}: {e}")),
                    },
                    Err(e) if is_enospc(&e) => {
                        enospc.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("open {p:?}: {e}")),
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "errors other than ENOSPC: {failures:?}"
    );
    // 4 x 8 x 512 KiB + 12 x 512 KiB asked for, 8 MiB allowed.
    assert!(
        enospc.load(Ordering::Relaxed) > 0,
        "the limit was never hit"
    );
    let (real, _) = upper_usage(&l.upper, block);
    assert!(
        real <= LIMIT,
        "upper holds {real} bytes, over the limit {LIMIT}"
    );
    assert!(
        real > LIMIT - (1 << 20),
        "upper holds {real} bytes: the limit refused writes too early"
    );
    // Nothing left staged in the work directory.
    assert_eq!(std::fs::read_dir(l.work.join("work")).unwrap().count(), 0);
    let used = df_used(&l.mnt);
    assert_eq!(used, real, "df shows {used} used, the upper holds {real}");
    let j = status_json(&l.mnt);
    assert_eq!(j["upper_size"]["used_bytes"].as_u64(), Some(real), "{j}");
    // Lower files copied up hold all their data.
    for i in 0..12 {
        let up = l.upper.join(format!("lower{i}"));
        if let Ok(md) = std::fs::metadata(&up) {
            assert!(md.len() >= 512 << 10, "partial copy-up of lower{i}");
        }
    }

    // Removing gives the space back; so does truncating.
    for e in std::fs::read_dir(&l.mnt).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('w') {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let (real, _) = upper_usage(&l.upper, block);
    assert_eq!(df_used(&l.mnt), real);
    let copied: Vec<PathBuf> = std::fs::read_dir(&l.upper)
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().unwrap().len() > 0)
        .map(|e| l.mnt.join(e.file_name()))
        .collect();
    assert!(!copied.is_empty());
    for p in &copied {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let (real, _) = upper_usage(&l.upper, block);
    assert_eq!(df_used(&l.mnt), real);
    assert!(real < 64 << 10, "{real}");
    // Now a big file fits again, up to the limit.
    let mut f = std::fs::File::create(l.mnt.join("big")).unwrap();
    let mut n = 0u64;
    let err = loop {
        match f.write_all(&vec![b'b'; 256 << 10]) {
            Ok(()) => n += 256 << 10,
            Err(e) => break e,
        }
        assert!(n <= LIMIT, "wrote past the limit");
    };
    assert!(is_enospc(&err), "{err}");
    assert!(n >= LIMIT - (1 << 20), "only {n} bytes fit");
    // A file removed while open keeps its space until closed.
    std::fs::remove_file(l.mnt.join("big")).unwrap();
    assert!(df_used(&l.mnt) > LIMIT / 2);
    drop(f);
    let (real, _) = upper_usage(&l.upper, block);
    assert!(
        wait_until(Duration::from_secs(5), || df_used(&l.mnt) == real),
        "space of the closed file not given back: df {} upper {real}",
        df_used(&l.mnt)
    );
    drop(m);
}

/// The usage survives a remount (from the record of a clean unmount, or
/// counted again after a crash) and existing content counts at mount.
#[test]
fn size_limit_survives_remount_and_crash() {
    if !require_fuse("size_limit_survives_remount_and_crash") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("lower"), &vec![b'l'; 100 << 10]);
    // Content from before the first limited mount counts.
    write(&l.upper.join("pre/existing"), &vec![b'p'; 300 << 10]);
    let block = block_size(&l.upper);
    let opts = format!("{},size=1M", l.options());
    let m = PlyfsMount::start(&l.mnt, &opts, &[]).expect("mount");
    let (real, inodes) = upper_usage(&l.upper, block);
    assert_eq!(df_used(&l.mnt), real);
    std::fs::write(l.mnt.join("f"), vec![b'f'; 200 << 10]).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(l.mnt.join("lower"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    std::fs::create_dir(l.mnt.join("d")).unwrap();
    std::os::unix::fs::symlink("target", l.mnt.join("d/s")).unwrap();
    let (real, inodes2) = upper_usage(&l.upper, block);
    assert_eq!(inodes2, inodes + 4);
    assert_eq!(df_used(&l.mnt), real);
    // Over the limit: refused whole.
    let e = std::fs::write(l.mnt.join("g"), vec![b'g'; 600 << 10]).unwrap_err();
    assert!(is_enospc(&e), "{e}");
    drop(m);
    let record = get_xattr(&l.work.join("work"), "trusted.plyfs.usage").expect("usage record");
    assert!(record.starts_with(b"plyfs-usage 1 "), "{record:?}");

    let m = PlyfsMount::start(&l.mnt, &opts, &[]).expect("remount");
    let (real, _) = upper_usage(&l.upper, block);
    assert_eq!(df_used(&l.mnt), real, "after a clean remount");
    // The record is gone while mounted: a crash leaves none behind.
    assert!(get_xattr(&l.work.join("work"), "trusted.plyfs.usage").is_err());
    // A crash: the daemon killed, the next mount counts the upper again.
    // SAFETY: the daemon this test started.
    unsafe {
        libc::kill(m.pid() as i32, libc::SIGKILL);
    }
    drop(m);
    // Changed while not mounted.
    write(&l.upper.join("offline"), &vec![b'o'; 64 << 10]);
    let m = PlyfsMount::start(&l.mnt, &opts, &[]).expect("mount after crash");
    let (real, _) = upper_usage(&l.upper, block);
    assert_eq!(df_used(&l.mnt), real, "after a crash");
    drop(m);
}

#[test]
fn inodes_limit() {
    if !require_fuse("inodes_limit") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("lower"), b"l");
    let m = PlyfsMount::start(&l.mnt, &format!("{},inodes=10", l.options()), &[]).expect("mount");
    let sv = statvfs(&l.mnt);
    assert_eq!(sv.f_files, 10);
    assert_eq!(sv.f_ffree, 9, "the root counts");
    std::fs::create_dir(l.mnt.join("d")).unwrap();
    let mut made = 1;
    let err = loop {
        match std::fs::write(l.mnt.join(format!("d/f{made}")), b"x") {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100);
    };
    assert!(is_enospc(&err), "{err}");
    assert_eq!(made, 9);
    assert_eq!(statvfs(&l.mnt).f_ffree, 0);
    // A copy-up needs an inode too; a removal gives one back; a hard link
    // and a whiteout take none.
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(l.mnt.join("lower"))
        .unwrap_err();
    assert!(is_enospc(&e), "{e}");
    std::fs::hard_link(l.mnt.join("d/f1"), l.mnt.join("d/link")).unwrap();
    std::fs::remove_file(l.mnt.join("d/f1")).unwrap();
    std::fs::remove_file(l.mnt.join("d/f2")).unwrap();
    std::fs::remove_file(l.mnt.join("lower")).unwrap();
    assert_eq!(statvfs(&l.mnt).f_ffree, 1);
    std::fs::write(l.mnt.join("again"), b"y").unwrap();
    drop(m);
}

/// `size=` works for an unprivileged user in a user namespace (rootless
/// podman): the limit, df, and the usage record in `user.plyfs.usage`.
#[test]
fn size_limit_rootless() {
    if !require_root("size_limit_rootless") {
        return;
    }
    let _lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
    let old = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
        }
    }
    let _restore = Restore(old);
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let l = Layers::new(1);
    std::fs::set_permissions(l.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&l.lower(0).join("lower"), &vec![b'l'; 300 << 10]);
    for p in [l.lower(0), &l.upper, &l.work, &l.mnt] {
        chown_tree(p, NOBODY);
    }
    let m = l.mnt.display();
    let script = format!(
        "set -e; '{PLYFS}' -o '{},size=1M' '{m}'; cd '{m}'; \
         df -B1 --output=size . | tail -1; \
         echo x >> lower; \
         if head -c 2000000 /dev/zero > big; then echo wrote-all; fi; \
         '{PLYFS}' status --json '{m}' | tr -d '\\n' | grep -o '\"limit_bytes\":[0-9]*'; \
         cd /; umount '{m}'",
        l.options()
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "-Urm", "sh", "-c", &script])
        .env_remove("RUST_LOG")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().next().map(str::trim),
        Some("1048576"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrote-all"), "{stdout}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stdout.contains("\"limit_bytes\":1048576"), "{stdout}");
    assert!(std::fs::metadata(l.upper.join("big")).unwrap().len() < 1 << 20);
    assert_eq!(
        std::fs::metadata(l.upper.join("lower")).unwrap().len(),
        (300 << 10) + 2
    );
    // The daemon writes the record as it ends, which may be just after
    // umount returned.
    let read = || get_xattr(&l.work.join("work"), "user.plyfs.usage");
    wait_until(Duration::from_secs(10), || read().is_ok());
    let record = read().expect("user.* record");
    assert!(record.starts_with(b"plyfs-usage 1 "), "{record:?}");
}

fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("chown");
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

// ---------------------------------------------------------------------------
// plyfs layer add|remove

/// Readers keep reading and listing while a layer comes and goes; names of
/// the changed layer show and go at once (the kernel's cached entries,
/// negative ones included, are dropped); removal is refused while a file of
/// the layer is open; open files keep their object.
#[test]
fn layer_add_remove_under_concurrent_readers() {
    if !require_fuse("layer_add_remove_under_concurrent_readers") {
        return;
    }
    layer_changes(false);
}

/// The same on a kernel without `FUSE_NOTIFY_INC_EPOCH` (before 6.16):
/// cached entries are invalidated one by one.
#[test]
fn layer_add_remove_entry_by_entry() {
    if !require_fuse("layer_add_remove_entry_by_entry") {
        return;
    }
    layer_changes(true);
}

fn layer_changes(no_epoch: bool) {
    let l = Layers::new(2);
    for i in 0..40 {
        write(
            &l.lower(1).join(format!("stable/{i}")),
            format!("base-{i}").as_bytes(),
        );
    }
    write(&l.lower(1).join("shadow"), b"base");
    write(&l.lower(0).join("top"), b"top");
    let new = l.dir.path().join("new");
    write(&new.join("added"), b"added");
    write(&new.join("shadow"), b"new");
    write(&new.join("stable/extra"), b"extra");
    let mut cmd = Command::new(PLYFS);
    if no_epoch {
        cmd.env("PLYFS_NO_EPOCH", "1");
    }
    let m = PlyfsMount::start_with(cmd, &l.mnt, &l.options(), &[]).expect("mount");

    // Names the kernel has cached, as missing and as present.
    assert!(std::fs::metadata(l.mnt.join("added")).is_err());
    assert_eq!(std::fs::read(l.mnt.join("shadow")).unwrap(), b"base");
    let old_shadow = std::fs::File::open(l.mnt.join("shadow")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..3 {
        let (mnt, stop, errors, reads) =
            (l.mnt.clone(), stop.clone(), errors.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % 40;
                let p = mnt.join(format!("stable/{i}"));
                match std::fs::read(&p) {
                    Ok(d) if d == format!("base-{i}").as_bytes() => {}
                    other => errors.lock().unwrap().push(format!("{p:?}: {other:?}")),
                }
                match std::fs::read(mnt.join("shadow")) {
                    Ok(d) if d == b"base" || d == b"new" => {}
                    other => errors.lock().unwrap().push(format!("shadow: {other:?}")),
                }
                if r == 0 {
                    match std::fs::read_dir(mnt.join("stable")) {
                        Ok(rd) => {
                            let n = rd.flatten().filter(|e| e.file_name() != "extra").count();
                            if n != 40 {
                                errors.lock().unwrap().push(format!("listed {n} of 40"));
                            }
                        }
                        Err(e) => errors.lock().unwrap().push(format!("readdir: {e}")),
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    for round in 0..6 {
        let out = layer("add", &l.mnt, &new);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(l.mnt.join("added")).unwrap(),
            b"added",
            "round {round}: new name not visible at once"
        );
        assert_eq!(std::fs::read(l.mnt.join("shadow")).unwrap(), b"new");
        assert_eq!(std::fs::read(l.mnt.join("stable/extra")).unwrap(), b"extra");
        let names: Vec<_> = std::fs::read_dir(&l.mnt)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(names.iter().any(|n| n == "added"), "{names:?}");
        let j = status_json(&l.mnt);
        assert_eq!(
            j["lowerdirs"][0].as_str(),
            Some(std::fs::canonicalize(&new).unwrap().to_str().unwrap())
        );
        assert_eq!(j["lowerdirs"].as_array().unwrap().len(), 3);

        // Busy while a file of the layer is open.
        let held = std::fs::File::open(l.mnt.join("added")).unwrap();
        let out = layer("remove", &l.mnt, &new);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("busy"), "{err}");
        drop(held);
        // The release reaches the daemon right after close returns.
        let mut out = layer("remove", &l.mnt, &new);
        for _ in 0..50 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            out = layer("remove", &l.mnt, &new);
        }
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::metadata(l.mnt.join("added")).is_err(),
            "round {round}: removed name still visible"
        );
        assert_eq!(std::fs::read(l.mnt.join("shadow")).unwrap(), b"base");
        assert!(std::fs::metadata(l.mnt.join("stable/extra")).is_err());
        assert_eq!(
            status_json(&l.mnt)["lowerdirs"].as_array().unwrap().len(),
            2
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "readers saw: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(reads.load(Ordering::Relaxed) > 0);
    // An open file keeps the object it was opened on.
    let mut s = String::new();
    if let Err(e) = (&old_shadow).read_to_string(&mut s) {
        let log = m.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!("read of the old open file: {e}; log: {tail:#?}");
    }
    assert_eq!(s, "base");
    assert_eq!(status_json(&l.mnt)["layer_changes"].as_u64(), Some(12));

    // Refusals: not a layer, the same layer twice, a layer overlapping the
    // upper, the last layer.
    let out = layer("remove", &l.mnt, &new);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a lower layer"));
    assert!(layer("add", &l.mnt, l.lower(0)).status.code() != Some(0));
    assert!(layer("add", &l.mnt, &l.upper).status.code() != Some(0));
    assert!(
        layer("add", &l.mnt, &l.dir.path().join("missing"))
            .status
            .code()
            != Some(0)
    );
    assert!(layer("remove", &l.mnt, l.lower(0)).status.success());
    let out = layer("remove", &l.mnt, l.lower(1));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only lower layer"));
    assert!(std::fs::metadata(l.mnt.join("top")).is_err());
    drop(m);
}

/// A directory the kernel knows follows its name across a change, and
/// writes after a change land in the upper as for a fresh mount; the
/// result mounts the same under kernel overlayfs with the new list.
#[test]
fn layer_add_then_write_matches_kernel_overlay() {
    if !require_root("layer_add_then_write_matches_kernel_overlay") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("d/base"), b"base");
    write(&l.lower(0).join("d/over"), b"old");
    let new = l.dir.path().join("new");
    write(&new.join("d/over"), b"new");
    write(&new.join("d/only"), b"only");
    let m = l.mount();
    let dir = std::fs::File::open(l.mnt.join("d")).unwrap();
    let before = std::fs::metadata(l.mnt.join("d")).unwrap().ino();
    assert!(layer("add", &l.mnt, &new).status.success());
    assert_eq!(std::fs::metadata(l.mnt.join("d")).unwrap().ino(), before);
    std::fs::OpenOptions::new()
        .append(true)
        .open(l.mnt.join("d/over"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    std::fs::remove_file(l.mnt.join("d/only")).unwrap();
    std::fs::write(l.mnt.join("d/mine"), b"mine").unwrap();
    let ours = snapshot(&l.mnt);
    drop(dir);
    drop(m);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        new.display(),
        l.lower(0).display(),
        l.upper.display(),
        l.work.display()
    );
    let k = KernelMount::mount(&l.mnt, &opts).expect("kernel overlay");
    let theirs = snapshot(&l.mnt);
    drop(k);
    let d = diff(&ours, &theirs, "plyfs", "kernel");
    assert!(
        d.is_empty(),
        "plyfs after layer add vs kernel overlay:\n{d}"
    );
    assert_eq!(std::fs::read(l.upper.join("d/over")).unwrap(), b"new+");
}
