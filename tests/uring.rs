//! FUSE over io_uring (`uring=`): a mount with `uring=on` serves a
//! representative set of operations through its rings (checked in the
//! kernel's own counters, `/proc/PID/fdinfo` of the daemon's io_uring
//! descriptors), `auto` falls back to /dev/fuse without a word when the
//! kernel does not offer it or refuses the registration, `on` then fails
//! the mount with one clear line, and a daemon in a user namespace
//! (rootless) may use it too.
//!
//! The kernel offers io_uring only while root has set
//! `/sys/module/fuse/parameters/enable_uring`; these tests set it for their
//! mounts and put the old value back (it matters only while a mount is
//! negotiated). They run one at a time.
//!
//! The rest of the suite runs over io_uring with `PLYFS_URING=on` (the
//! default of `uring=`) once the parameter is set; `.ci/run` does that for
//! a subset.

mod common;

use common::*;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test lock with `enable_uring` set as asked; restores it.
struct UringParam {
    old: Option<String>,
    _lock: MutexGuard<'static, ()>,
}

impl UringParam {
    /// None (with a skip notice) when the kernel has no io_uring FUSE.
    fn set(test: &str, on: bool) -> Option<UringParam> {
        if !require_root(test) || !require_fuse(test) {
            return None;
        }
        let lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(old) = std::fs::read_to_string(PARAM) else {
            eprintln!("SKIPPED {test}: this kernel has no FUSE over io_uring ({PARAM})");
            return None;
        };
        std::fs::write(PARAM, if on { "Y" } else { "N" }).expect("set enable_uring");
        Some(UringParam {
            old: Some(old.trim().to_string()),
            _lock: lock,
        })
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = std::fs::write(PARAM, old);
        }
    }
}

/// Completions the daemon's io_uring rings have consumed (one per request
/// plus the wake-up polls), and the number of rings.
fn ring_completions(pid: u32) -> (usize, u64) {
    let mut rings = 0;
    let mut total = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let is_ring = std::fs::read_link(fd.path())
            .map(|l| l.to_string_lossy().contains("io_uring"))
            .unwrap_or(false);
        if !is_ring {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("CqHead:") {
                rings += 1;
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (rings, total)
}

/// Names of the daemon's threads serving rings.
fn ring_threads(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| s.starts_with("fuser-uring"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Starts plyfs in the foreground with info logs.
fn start(l: &Layers, extra_opts: &str, env: &[(&str, &str)]) -> Result<PlyfsMount, String> {
    let mut cmd = Command::new(PLYFS);
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut o = l.options();
    if !extra_opts.is_empty() {
        o.push(',');
        o.push_str(extra_opts);
    }
    PlyfsMount::start_with(cmd, &l.mnt, &o, &[])
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Maps `len` bytes of `f` (shared when `write`), runs `f2` on them.
fn with_mmap<R>(f: &std::fs::File, len: usize, write: bool, f2: impl FnOnce(&mut [u8]) -> R) -> R {
    use std::os::fd::AsRawFd;
    let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
    // SAFETY: mapping a file we hold open; the mapping is unmapped below
    // and not used after.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `p` maps `len` bytes, valid until munmap below.
    let s = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    let r = f2(s);
    // SAFETY: the mapping made above; `s` is not used any more.
    unsafe {
        if write {
            libc::msync(p, len, libc::MS_SYNC);
        }
        libc::munmap(p, len);
    }
    r
}

/// Creates, writes, reads (small and 8 MiB), renames, lists, xattrs, mmap
/// and concurrent work; every result is checked.
fn workload(l: &Layers) {
    let m = &l.mnt;
    // Lower content, read through the mount (lower files are never passed
    // through by default: their reads are FUSE requests).
    let big = pattern(1, 8 << 20);
    assert_eq!(
        std::fs::read(m.join("big")).unwrap(),
        big,
        "8 MiB lower read"
    );
    let mut f = std::fs::File::open(m.join("big")).unwrap();
    let mut buf = vec![0u8; 300_000];
    f.seek(SeekFrom::Start(1_234_567)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, big[1_234_567..1_534_567]);
    with_mmap(&f, big.len(), false, |s| {
        assert!(s == &big[..], "mmap read")
    });
    drop(f);

    // Small files: create, write, read, append, truncate, rename, unlink.
    std::fs::create_dir(m.join("d")).unwrap();
    for i in 0..50 {
        let p = m.join(format!("d/f{i}"));
        std::fs::write(&p, format!("file {i}\n")).unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            std::fs::read_to_string(m.join(format!("d/f{i}"))).unwrap(),
            format!("file {i}\n")
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(names, want, "readdir");
    std::fs::rename(m.join("d/f0"), m.join("d/g0")).unwrap();
    assert!(!m.join("d/f0").exists());
    std::fs::remove_file(m.join("d/f1")).unwrap();
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/f2"))
        .unwrap();
    a.write_all(b"more\n").unwrap();
    drop(a);
    assert_eq!(std::fs::read(m.join("d/f2")).unwrap(), b"file 2\nmore\n");
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("d/f3"))
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(std::fs::read(m.join("d/f3")).unwrap(), b"fi");

    // Copy-up of a lower file, symlink, hard link.
    std::fs::write(m.join("lowfile"), b"changed").unwrap();
    assert_eq!(std::fs::read(l.lower(0).join("lowfile")).unwrap(), b"low");
    std::os::unix::fs::symlink("d/g0", m.join("sl")).unwrap();
    assert_eq!(std::fs::read(m.join("sl")).unwrap(), b"file 0\n");
    std::fs::hard_link(m.join("d/f4"), m.join("hl")).unwrap();
    assert_eq!(std::fs::read(m.join("hl")).unwrap(), b"file 4\n");

    // Extended attributes (ext4 holds values up to about a block).
    let v = pattern(2, 3000);
    set_xattr(&m.join("d/f5"), "user.test", &v).unwrap();
    assert_eq!(get_xattr(&m.join("d/f5"), "user.test").unwrap(), v);

    // A large file written with positioned writes and read back.
    let data = pattern(3, 6 << 20);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(m.join("w"))
        .unwrap();
    for (i, c) in data.chunks(1 << 20).enumerate().rev() {
        f.write_all_at(c, (i << 20) as u64).unwrap();
    }
    f.sync_all().unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "large write read back");
    // Shared writable mapping.
    with_mmap(&f, 4096, true, |s| s[..5].copy_from_slice(b"MMAP!"));
    drop(f);
    let mut head = [0u8; 8];
    std::fs::File::open(m.join("w"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head[..5], b"MMAP!");
    assert_eq!(&head[5..], &data[5..8]);

    // Concurrency: threads on both CPUs' queues at once.
    std::thread::scope(|s| {
        for t in 0..6 {
            s.spawn(move || {
                let dir = m.join(format!("t{t}"));
                std::fs::create_dir(&dir).unwrap();
                for i in 0..100 {
                    let p = dir.join(format!("x{i}"));
                    let body = pattern(t * 1000 + i, 3000 + i as usize);
                    std::fs::write(&p, &body).unwrap();
                    assert_eq!(std::fs::read(&p).unwrap(), body);
                    std::fs::metadata(&p).unwrap();
                    if i % 3 == 0 {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
                assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 66);
            });
        }
    });
}

fn layers_for_workload() -> Layers {
    let l = Layers::new(1);
    write(&l.lower(0).join("big"), &pattern(1, 8 << 20));
    write(&l.lower(0).join("lowfile"), b"low");
    l
}

fn check_served_by_rings(l: &Layers, extra_opts: &str, env: &[(&str, &str)]) {
    let mount = start(l, extra_opts, env).expect("mount");
    let pid = mount.pid();
    assert!(
        mount.log().contains("transport: io_uring"),
        "log: {}",
        mount.log()
    );
    // Every CPU's queue has its threads, each with its own ring.
    let threads = ring_threads(pid);
    for q in 0..possible_cpus() {
        assert!(
            threads
                .iter()
                .any(|t| *t == format!("fuser-uring-{q}")
                    || t.starts_with(&format!("fuser-uring-{q}."))),
            "no thread for queue {q}: {threads:?}"
        );
    }
    let (rings, before) = ring_completions(pid);
    assert_eq!(rings, threads.len());
    workload(l);
    let (_, after) = ring_completions(pid);
    // The workload makes thousands of requests; /dev/fuse now carries
    // only forgets and interrupts.
    assert!(
        after - before > 2000,
        "only {} completions on the rings",
        after - before
    );
    assert!(mount.unmount().is_some_and(|s| s.success()));
}

#[test]
fn uring_on_serves_requests_through_the_rings() {
    let Some(_p) = UringParam::set("uring_on_serves_requests_through_the_rings", true) else {
        return;
    };
    // Default I/O mode as root: passthrough for upper files (open replies
    // carry backing ids through the ring).
    check_served_by_rings(&layers_for_workload(), "uring=on", &[]);
}

#[test]
fn uring_on_without_passthrough_carries_writes() {
    let Some(_p) = UringParam::set("uring_on_without_passthrough_carries_writes", true) else {
        return;
    };
    // Writes and reads of upper files go through FUSE too (writeback cache).
    check_served_by_rings(&layers_for_workload(), "uring=on,passthrough=off", &[]);
    check_served_by_rings(
        &layers_for_workload(),
        "uring=on,passthrough=off,writeback=off",
        &[],
    );
}

#[test]
fn plyfs_uring_env_sets_the_default() {
    let Some(_p) = UringParam::set("plyfs_uring_env_sets_the_default", true) else {
        return;
    };
    check_served_by_rings(&layers_for_workload(), "", &[("PLYFS_URING", "on")]);
    // uring= wins over the environment.
    let l = layers_for_workload();
    let mount = start(&l, "uring=off", &[("PLYFS_URING", "on")]).unwrap();
    assert!(
        mount.log().contains("transport: /dev/fuse"),
        "{}",
        mount.log()
    );
    assert!(ring_threads(mount.pid()).is_empty());
    drop(mount);
    // A bad value is an input error.
    let out = Command::new(PLYFS)
        .env("PLYFS_URING", "fast")
        .args(["-o", &l.options()])
        .arg(&l.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PLYFS_URING: expected auto, on or off"),
        "{err}"
    );
    assert!(!is_mounted(&l.mnt));
}

#[test]
fn uring_auto_uses_the_rings_when_offered_and_off_never() {
    let Some(_p) = UringParam::set("uring_auto_uses_the_rings_when_offered_and_off_never", true)
    else {
        return;
    };
    check_served_by_rings(&layers_for_workload(), "uring=auto", &[]);
    let l = layers_for_workload();
    let mount = start(&l, "uring=off", &[]).unwrap();
    assert!(
        mount.log().contains("transport: /dev/fuse"),
        "{}",
        mount.log()
    );
    assert!(ring_threads(mount.pid()).is_empty());
    assert_eq!(ring_completions(mount.pid()).0, 0);
    workload(&l);
}

/// `uring=on` that cannot get io_uring: one line, exit 1, nothing mounted;
/// in the foreground and daemonized.
fn assert_on_fails(l: &Layers, env: &[(&str, &str)], why: &str) {
    // Someone stats the mount point meanwhile: a request waiting in the
    // abandoned mount must not keep it mounted (regression: EBUSY left a
    // dead mount behind).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::metadata(l.mnt.join("big"));
            }
        });
        let r = start(l, "uring=on", env);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let err = match err {
        Ok(_) => panic!("uring=on mounted without io_uring"),
        Err(e) => e,
    };
    assert!(
        err.contains("cannot mount: uring=on but FUSE over io_uring is not available"),
        "{err}"
    );
    assert!(err.contains(why), "{err}");
    assert!(!is_mounted(&l.mnt));
    let mut cmd = Command::new(PLYFS);
    cmd.args(["-o", &format!("{},uring=on", l.options())])
        .arg(&l.mnt)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("plyfs: cannot mount: uring=on"), "{err}");
    assert!(!is_mounted(&l.mnt));
}

#[test]
fn uring_not_offered_auto_falls_back_and_on_fails() {
    let Some(_p) = UringParam::set("uring_not_offered_auto_falls_back_and_on_fails", false) else {
        return;
    };
    let l = layers_for_workload();
    assert_on_fails(&l, &[], "enable_uring");
    let mount = start(&l, "uring=auto", &[]).unwrap();
    assert!(
        mount.log().contains("transport: /dev/fuse"),
        "{}",
        mount.log()
    );
    assert!(
        !mount.log().contains("WARN") && !mount.log().contains("ERROR"),
        "auto falls back silently: {}",
        mount.log()
    );
    assert!(ring_threads(mount.pid()).is_empty());
    workload(&l);
}

#[test]
fn uring_refused_registration_auto_falls_back_and_on_fails() {
    let Some(_p) = UringParam::set(
        "uring_refused_registration_auto_falls_back_and_on_fails",
        true,
    ) else {
        return;
    };
    // fuser's test hooks: `register` registers with a queue id the kernel
    // rejects (EINVAL), which is how the kernel is told to stay on
    // /dev/fuse; `setup` fails before the INIT reply (as a seccomp filter
    // or kernel.io_uring_disabled would), so io_uring is never promised.
    for (hook, why) in [
        ("register", "the kernel refused the ring registration"),
        ("setup", "cannot create an io_uring"),
    ] {
        let env = [("FUSER_URING_TEST_FAIL", hook)];
        let l = layers_for_workload();
        assert_on_fails(&l, &env, why);
        let mount = start(&l, "uring=auto", &env).unwrap();
        assert!(
            mount.log().contains("transport: /dev/fuse"),
            "{}",
            mount.log()
        );
        assert!(
            !mount.log().contains("WARN") && !mount.log().contains("ERROR"),
            "auto falls back silently: {}",
            mount.log()
        );
        // Requests are not held back waiting for a ring (they would hang).
        workload(&l);
        // The threads that did register are gone.
        assert!(ring_threads(mount.pid()).is_empty());
    }
}

/// Rootless: a daemon in a new user namespace (`unshare -Urm`, no
/// CAP_SYS_ADMIN in the initial namespace, so no passthrough) may use
/// io_uring too: the kernel checks no capability for it.
#[test]
fn uring_in_a_user_namespace() {
    let Some(_p) = UringParam::set("uring_in_a_user_namespace", true) else {
        return;
    };
    if !Command::new("unshare")
        .args(["-Urm", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED uring_in_a_user_namespace: unshare -Urm does not work here");
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("a"), b"lower a\n");
    let log = l.dir.path().join("log");
    let script = r#"set -e
RUST_LOG=info "$1" -f -o "$2,uring=on" "$3" 2>"$4" &
pid=$!
i=0; while ! grep -q "transport:" "$4"; do i=$((i+1)); [ $i -lt 500 ] || exit 9; sleep 0.02; done
cat "$3/a"
echo hello > "$3/b"; cat "$3/b"
for n in 1 2 3 4 5 6 7 8 9 10; do cat "$3/a" "$3/b" >/dev/null; ls "$3" >/dev/null; done
grep -h CqHead /proc/$pid/fdinfo/* 2>/dev/null | awk '{s+=$2} END {print "completions", s}'
umount "$3"
wait $pid
"#;
    let out = Command::new("timeout")
        .args(["60", "unshare", "-Urm", "sh", "-c", script, "sh", PLYFS])
        .arg(l.options())
        .arg(&l.mnt)
        .arg(&log)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("transport: io_uring"), "{log}");
    assert!(
        log.contains("I/O mode: writeback cache"),
        "no passthrough: {log}"
    );
    assert!(stdout.starts_with("lower a\nhello\n"), "{stdout}");
    let n: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("completions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(n > 20, "{stdout}");
    assert!(!is_mounted(&l.mnt));
    assert_eq!(std::fs::read(l.upper.join("b")).unwrap(), b"hello\n");
}

#[test]
fn remount_and_unmount_with_rings_leave_nothing_behind() {
    let Some(_p) = UringParam::set("remount_and_unmount_with_rings_leave_nothing_behind", true)
    else {
        return;
    };
    let l = layers_for_workload();
    for round in 0..3 {
        let mount = start(&l, "uring=on", &[]).unwrap();
        std::fs::write(l.mnt.join(format!("r{round}")), b"x").unwrap();
        for r in 0..=round {
            assert!(l.mnt.join(format!("r{r}")).exists());
        }
        let pid = mount.pid();
        // SIGTERM: the daemon unmounts itself and its rings end.
        let status = mount.unmount();
        assert!(status.is_some_and(|s| s.success()), "round {round}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!is_mounted(&l.mnt));
    }
    // And with an external umount while requests are in flight.
    let mount = start(&l, "uring=on", &[]).unwrap();
    let mnt = l.mnt.clone();
    let reader = std::thread::spawn(move || {
        for _ in 0..200 {
            if std::fs::read(mnt.join("big")).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    umount(&l.mnt);
    reader.join().unwrap();
    assert!(mount.unmount().is_some());
}
