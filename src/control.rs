//! The control channel of a live mount: a unix socket through which
//! `plyfs status` and `plyfs layer` talk to the daemon.
//!
//! Where: `RUNDIR/MAJOR:MINOR`, named after the mount's device number
//! (unique among live mounts, and known from the mountpoint without asking
//! the daemon: `statx` answers it from the superblock, and
//! /proc/self/mountinfo lists mounts hidden under another one). RUNDIR is
//! `/run/plyfs` for root, else `$XDG_RUNTIME_DIR/plyfs`,
//! `/run/user/UID/plyfs` or `/tmp/plyfs-UID`, the first the daemon can make
//! or use: a directory of its own, mode 0700, not a symlink; the socket is
//! mode 0600. `PLYFS_RUNTIME_DIR` overrides the choice (both sides).
//!
//! Who: only the mount's owner (the daemon's effective uid) and root;
//! every connection's credentials are checked with `SO_PEERCRED`.
//!
//! Protocol (version 1): the client sends one line, `VERB ARG...`, with
//! arguments percent-encoded (see `status::encode_bytes`); the daemon
//! answers `ok` and a body, or `error ERRNO MESSAGE`, and closes. Verbs:
//! `status` (the body is `status::Status`'s `key value` lines),
//! `layer-add DIR`, `layer-remove DIR` (the body is a message).
//!
//! A mount lazily unmounted (`umount -l`) while busy keeps its daemon and
//! socket until it is released; `plyfs status` without a mountpoint lists
//! every daemon it finds in the runtime directories, those included.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::Plyfs;
use crate::status::{decode_bytes, encode_bytes};
use crate::sys::{self, Errno};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Runtime directories a daemon running as `uid` may use, in order.
fn daemon_dirs(uid: u32) -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("PLYFS_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut v = Vec::new();
    if uid == 0 {
        v.push(PathBuf::from("/run/plyfs"));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(x).join("plyfs"));
    }
    v.push(PathBuf::from(format!("/run/user/{uid}/plyfs")));
    v.push(PathBuf::from(format!("/tmp/plyfs-{uid}")));
    v
}

/// Runtime directories a client looks in for mounts owned by `owners`.
fn client_dirs(owners: &[u32]) -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("PLYFS_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut v = vec![PathBuf::from("/run/plyfs")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(x).join("plyfs"));
    }
    for uid in owners {
        v.push(PathBuf::from(format!("/run/user/{uid}/plyfs")));
        v.push(PathBuf::from(format!("/tmp/plyfs-{uid}")));
    }
    let mut seen = Vec::new();
    v.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    v
}

/// Makes (or accepts) `dir` as a runtime directory: ours, a real
/// directory, closed to others.
fn own_dir(dir: &Path, uid: u32) -> bool {
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    if !m.is_dir() || m.uid() != uid {
        return false;
    }
    if m.mode() & 0o077 != 0 {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_ok();
    }
    true
}

/// The socket's file name for a mount device.
fn socket_name(device: (u32, u32)) -> String {
    format!("{}:{}", device.0, device.1)
}

/// The listening side, in the daemon. Dropped, it stops and removes its
/// socket.
pub struct Server {
    path: PathBuf,
    listener: Arc<UnixListener>,
    ident: (u64, u64),
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Opens the control socket of the mount with device `device` and
    /// serves it from a thread of its own.
    pub fn start(fs: Arc<Plyfs>, device: (u32, u32)) -> Result<Server, String> {
        let uid = sys::process::geteuid();
        let mut tried = Vec::new();
        for dir in daemon_dirs(uid) {
            if !own_dir(&dir, uid) {
                tried.push(dir);
                continue;
            }
            let path = dir.join(socket_name(device));
            // A socket left at this name belongs to a mount that is gone:
            // device numbers are unique among live mounts.
            let _ = std::fs::remove_file(&path);
            let listener = match UnixListener::bind(&path) {
                Ok(l) => l,
                Err(e) => {
                    log::debug!("cannot listen at {}: {e}", path.display());
                    tried.push(dir);
                    continue;
                }
            };
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            let ident = std::fs::symlink_metadata(&path)
                .map(|m| (m.dev(), m.ino()))
                .unwrap_or_default();
            let listener = Arc::new(listener);
            let l = listener.clone();
            let thread = std::thread::Builder::new()
                .name("plyfs-control".into())
                .spawn(move || serve(&fs, &l, uid))
                .map_err(|e| format!("cannot start the control thread: {e}"))?;
            log::debug!("control socket {}", path.display());
            return Ok(Server {
                path,
                listener,
                ident,
                thread: Some(thread),
            });
        }
        Err(format!(
            "no runtime directory for the control socket (tried {})",
            tried
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = sys::socket::shutdown(self.listener.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own socket: a later mount may have taken the name.
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ident);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn serve(fs: &Arc<Plyfs>, listener: &UnixListener, uid: u32) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            // Shut down (the mount is going away).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => {
                log::debug!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = handle(fs, stream, uid) {
            log::debug!("control connection: {e}");
        }
    }
}

fn handle(fs: &Arc<Plyfs>, mut stream: UnixStream, uid: u32) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    // The request is read before any answer, a refusal too: closing with
    // unread data would reset the connection and lose the answer.
    let mut line = Vec::new();
    BufReader::new(&mut stream)
        .take(MAX_REQUEST as u64)
        .read_until(b'\n', &mut line)?;
    let peer = sys::socket::peer_cred(stream.as_fd())
        .map_err(|e| std::io::Error::from_raw_os_error(e.code()))?;
    if peer.uid != uid && peer.uid != 0 {
        log::warn!(
            "control socket: refused uid {} (pid {}): only the mount's owner (uid {uid}) and root may use it",
            peer.uid,
            peer.pid
        );
        return stream.write_all(
            error_line(
                Errno::EACCES,
                "only the mount's owner and root may use its control channel",
            )
            .as_bytes(),
        );
    }
    if line.is_empty() {
        // A client checking that the daemon listens (see `find`).
        return Ok(());
    }
    let answer = match parse_request(&line) {
        Some((verb, args)) => dispatch(fs, &verb, &args),
        None => error_line(Errno::EINVAL, "malformed request"),
    };
    stream.write_all(answer.as_bytes())
}

fn error_line(e: Errno, msg: &str) -> String {
    format!("error {} {}\n", e.code(), encode_bytes(msg.as_bytes()))
}

fn dispatch(fs: &Arc<Plyfs>, verb: &str, args: &[Vec<u8>]) -> String {
    let path = |i: usize| -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        args.get(i)
            .map(|a| PathBuf::from(std::ffi::OsStr::from_bytes(a)))
    };
    let done = |r: Result<String, (Errno, String)>| match r {
        Ok(msg) => format!("ok\n{msg}\n"),
        Err((e, msg)) => error_line(e, &msg),
    };
    match (verb, path(0)) {
        ("status", _) => format!("ok\n{}", crate::status::gather(fs).encode()),
        ("layer-add", Some(dir)) => done(crate::layers_live::add(fs, &dir)),
        ("layer-remove", Some(dir)) => done(crate::layers_live::remove(fs, &dir)),
        _ => error_line(Errno::EINVAL, &format!("unknown request {verb:?}")),
    }
}

/// Splits a request line into its verb and decoded arguments.
fn parse_request(line: &[u8]) -> Option<(String, Vec<Vec<u8>>)> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
    let mut parts = text.split(' ');
    let verb = parts.next().filter(|v| !v.is_empty())?.to_string();
    let args = parts.map(decode_bytes).collect::<Option<Vec<_>>>()?;
    Some((verb, args))
}

/// One request line.
pub fn request_line(verb: &str, args: &[&[u8]]) -> String {
    let mut s = verb.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&encode_bytes(a));
    }
    s.push('\n');
    s
}

/// Sends a request to the daemon listening at `socket`; its body, or the
/// error it answered.
pub fn call(socket: &Path, line: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    s.write_all(line.as_bytes())
        .map_err(|e| format!("cannot send to the daemon: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("cannot read the daemon's answer: {e}"))?;
    let (first, body) = answer.split_once('\n').unwrap_or((&answer, ""));
    if first == "ok" {
        return Ok(body.to_string());
    }
    if let Some(rest) = first.strip_prefix("error ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        let msg = decode_bytes(msg)
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .unwrap_or_default();
        let code: i32 = code.parse().unwrap_or(libc::EIO);
        let what = std::io::Error::from_raw_os_error(code);
        return Err(if msg.is_empty() {
            what.to_string()
        } else {
            format!("{msg} ({what})")
        });
    }
    Err("the daemon gave no answer (did it exit?)".into())
}

/// A mount listed in /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub device: (u32, u32),
    pub mountpoint: Vec<u8>,
    pub fstype: String,
    /// `user_id=` of a FUSE mount (its owner).
    pub owner: Option<u32>,
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = s[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = f.iter().position(|x| *x == b"-") else {
            continue;
        };
        if f.len() < 5 || f.len() < sep + 4 {
            continue;
        }
        let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
        let (Some(id), Some(parent)) = (num(f[0]), num(f[1])) else {
            continue;
        };
        let Some((maj, min)) = std::str::from_utf8(f[2])
            .ok()
            .and_then(|d| d.split_once(':'))
        else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let owner = f[sep + 3]
            .split(|&b| b == b',')
            .find_map(|o| o.strip_prefix(b"user_id="))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        out.push(MountEntry {
            id,
            parent,
            device: (maj, min),
            mountpoint: unescape_octal(f[4]),
            fstype: String::from_utf8_lossy(f[sep + 1]).into_owned(),
            owner,
        });
    }
    out
}

/// The absolute path of a mountpoint, without touching the mount itself
/// (its daemon may be busy).
fn canonical_mountpoint(mnt: &Path) -> PathBuf {
    match (mnt.parent(), mnt.file_name()) {
        (Some(p), Some(name)) => {
            let p = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            std::fs::canonicalize(p)
                .map(|p| p.join(name))
                .unwrap_or_else(|_| mnt.to_path_buf())
        }
        _ => std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf()),
    }
}

/// The control socket of the plyfs mount at `mnt`: the mount on top
/// there first, then mounts it covers.
pub fn find(mnt: &Path) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let canon = canonical_mountpoint(mnt);
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let entries = parse_mountinfo(&info);
    let mut devices: Vec<(u32, u32)> = Vec::new();
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", mnt.display()))?;
    if let Ok(d) = sys::socket::device_at(sys::fs::cwd(), &c) {
        devices.push(d);
    }
    let here: Vec<&MountEntry> = entries
        .iter()
        .filter(|e| e.mountpoint == canon.as_os_str().as_bytes())
        .collect();
    for e in here.iter().rev() {
        if !devices.contains(&e.device) {
            devices.push(e.device);
        }
    }
    let mut owners: Vec<u32> = here.iter().filter_map(|e| e.owner).collect();
    owners.push(sys::process::geteuid());
    let fuse_here = here.iter().any(|e| e.fstype.starts_with("fuse"));
    let dirs = client_dirs(&owners);
    for d in &devices {
        for dir in &dirs {
            let p = dir.join(socket_name(*d));
            if std::fs::symlink_metadata(&p).is_ok() && UnixStream::connect(&p).is_ok() {
                return Ok(p);
            }
        }
    }
    if here.is_empty() {
        return Err(format!("{} is not a mountpoint", canon.display()));
    }
    if !fuse_here {
        return Err(format!("{} is not a plyfs mount", canon.display()));
    }
    Err(format!(
        "no plyfs daemon answers for {} (control sockets looked for in {}; \
         only the mount's owner and root can reach it)",
        canon.display(),
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Every control socket this user can see, for `plyfs status` without a
/// mountpoint (mounts lazily unmounted included).
pub fn all_sockets() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in client_dirs(&[sys::process::geteuid()]) {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_type()
                    .is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
            })
            .map(|e| e.path())
            .collect();
        v.sort();
        out.extend(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let l = request_line("layer-add", &[b"/a b\xff"]);
        assert_eq!(l, "layer-add /a%20b%FF\n");
        let (verb, args) = parse_request(l.as_bytes()).unwrap();
        assert_eq!(verb, "layer-add");
        assert_eq!(args, vec![b"/a b\xff".to_vec()]);
        assert_eq!(parse_request(b"status\n").unwrap().0, "status");
        assert!(parse_request(b"\n").is_none());
        assert!(parse_request(b"x %zz\n").is_none());
    }

    #[test]
    fn mountinfo() {
        let text = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            90 22 0:55 / /var/tmp/a\\040b rw,nosuid,nodev,relatime shared:50 - fuse.plyfs overlay rw,user_id=1000,group_id=1000,default_permissions\n\
            garbage line\n";
        let e = parse_mountinfo(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].device, (0, 55));
        assert_eq!(e[1].mountpoint, b"/var/tmp/a b");
        assert_eq!(e[1].fstype, "fuse.plyfs");
        assert_eq!(e[1].owner, Some(1000));
        assert_eq!(e[0].owner, None);
    }

    #[test]
    fn directories() {
        let d = client_dirs(&[1000, 1000]);
        assert_eq!(d.iter().filter(|p| p.ends_with("plyfs-1000")).count(), 1);
        assert!(daemon_dirs(0).len() >= 2 || std::env::var_os("PLYFS_RUNTIME_DIR").is_some());
    }
}
