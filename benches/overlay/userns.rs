//! The rootless run: the bench starts itself again inside a new user and
//! mount namespace (`unshare --user --mount`, ids 0-65535 mapped to
//! themselves as a rootless user's subordinate range would be), where kernel overlayfs needs `userxattr` and FUSE
//! passthrough is refused (it needs CAP_SYS_ADMIN in the initial
//! namespace). Dropping caches is not allowed there either, so the child
//! asks this process over a socket to do it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use crate::*;

/// Environment variable naming the child's end of the drop-caches socket.
const DROP_FD: &str = "PLYFS_BENCH_DROP_FD";

/// Runs the bench again in a user namespace with the same arguments, and
/// serves its drop-caches requests until it exits.
pub(crate) fn run_rootless() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--userns" && a != "--userns-only")
        .collect();
    args.push("--in-userns".into());
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let fd = theirs.as_raw_fd();
    // SAFETY: clears FD_CLOEXEC on a socket we own, so that the child
    // (through unshare's exec) inherits it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
    }
    // The child waits on stdin until its id maps are written: 65,536 ids
    // from 0, like a rootless user's subordinate range (root alone would
    // leave system-owned files such as 0700 polkit dirs unreadable).
    let mut child = Command::new("unshare")
        .args([
            "--user",
            "--mount",
            "--",
            "sh",
            "-c",
            "read -r _ && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args(&args)
        .env(DROP_FD, fd.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn unshare (util-linux): {e}"))?;
    let mapped = map_ids(child.id());
    let go = child.stdin.take().map(|mut s| s.write_all(b"go\n"));
    if let Err(e) = mapped.and_then(|()| go.unwrap_or(Ok(())).map_err(|e| e.to_string())) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("cannot set up the user namespace: {e}"));
    }
    drop(theirs);
    let server = std::thread::spawn(move || {
        let mut s = ours;
        let mut level = [0u8; 1];
        while s.read_exact(&mut level).is_ok() {
            let ok = sync_and_drop_caches(if level[0] == b'2' { "2" } else { "3" });
            if s.write_all(&[ok as u8]).is_err() {
                break;
            }
        }
    });
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let _ = server.join();
    if status.success() {
        Ok(())
    } else {
        Err(format!("the rootless run failed ({status})"))
    }
}

/// Writes the uid and gid maps of `pid` once it is in its own user
/// namespace.
fn map_ids(pid: u32) -> Result<(), String> {
    let ours = std::fs::read_link("/proc/self/ns/user").map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())? == ours {
        if std::time::Instant::now() > deadline {
            return Err("unshare did not enter a user namespace".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), "0 0 65536\n")
            .map_err(|e| format!("{map}: {e}"))?;
    }
    Ok(())
}

/// In the rootless child: asks the parent to drop caches. None when this
/// process is not such a child.
pub(crate) fn drop_caches_via_parent(level: &str) -> Option<bool> {
    let fd: i32 = std::env::var(DROP_FD).ok()?.parse().ok()?;
    // SAFETY: the parent passed this descriptor for this purpose, and we
    // only borrow it (ManuallyDrop below never closes it).
    let mut s = std::mem::ManuallyDrop::new(unsafe {
        <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    let mut ok = [0u8; 1];
    let sent = s.write_all(level.as_bytes()).is_ok() && s.read_exact(&mut ok).is_ok();
    Some(sent && ok[0] == 1)
}
