//! The rootless run: the bench starts itself again inside a new user and
//! mount namespace (`unshare --user --map-root-user --mount`, as
//! `unshare -Urm` does), where kernel overlayfs needs `userxattr` and FUSE
//! passthrough is refused (it needs CAP_SYS_ADMIN in the initial
//! namespace). Dropping caches is not allowed there either, so the child
//! asks this process over a socket to do it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

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
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(&exe)
        .args(&args)
        .env(DROP_FD, fd.to_string())
        .spawn()
        .map_err(|e| format!("spawn unshare (util-linux): {e}"))?;
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
