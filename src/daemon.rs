//! Mounting and serving: builds the FUSE session, goes to the background
//! once the mount is live, and unmounts cleanly on SIGTERM/SIGINT/SIGHUP.
//!
//! Threads and fork do not mix, so the process forks before any thread
//! exists. The child builds the filesystem and mounts; it tells the waiting
//! parent "ok" or the error over a pipe, and only then does the parent exit
//! (0 or 1). mount(8) and containers-storage rely on that: when plyfs
//! returns, the mount is there.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};

use crate::fuse::FuseFs;
use crate::options::MountOptions;
use crate::sys;

/// Everything needed to mount, after command-line parsing.
pub struct MountRequest {
    pub options: MountOptions,
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
}

const SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// Runs plyfs; returns the process exit code.
pub fn run(req: MountRequest) -> i32 {
    let checked = match crate::setup::validate(&req.options, &req.mountpoint) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("plyfs: {msg}");
            return 1;
        }
    };
    if req.foreground {
        return match serve(&req, checked, None) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("plyfs: {msg}");
                1
            }
        };
    }
    let (rd, wr) = match sys::process::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("plyfs: cannot create a pipe: {e:?}");
            return 1;
        }
    };
    match sys::process::fork() {
        Err(e) => {
            eprintln!("plyfs: cannot fork: {e:?}");
            1
        }
        Ok(sys::process::Fork::Parent(pid)) => {
            drop(wr);
            wait_for_child(rd, pid)
        }
        Ok(sys::process::Fork::Child) => {
            drop(rd);
            let _ = sys::process::setsid();
            // Errors before the mount is live reach the parent, which prints
            // them; later ones would go to stderr, which is /dev/null by then.
            match serve(&req, checked, Some(wr)) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
    }
}

/// Parent side: waits for the child's verdict.
fn wait_for_child(rd: OwnedFd, pid: libc::pid_t) -> i32 {
    let mut msg = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sys::io::read(rd.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => msg.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    if msg == b"ok" {
        return 0;
    }
    let text = String::from_utf8_lossy(&msg);
    if text.is_empty() {
        let code = sys::process::waitpid(pid).unwrap_or(1);
        eprintln!("plyfs: the mount process exited (status {code}) before the mount was ready");
    } else {
        eprintln!("plyfs: {text}");
    }
    1
}

fn report(pipe: &mut Option<OwnedFd>, msg: &[u8]) {
    if let Some(p) = pipe.take() {
        let _ = sys::io::write_all(p.as_fd(), msg);
    }
}

fn mount_config(o: &MountOptions, source: &Option<String>, read_only: bool) -> fuser::Config {
    let root = sys::process::geteuid() == 0;
    let mut opts = vec![
        MountOption::FSName(
            o.fsname
                .clone()
                .or_else(|| source.clone())
                .unwrap_or_else(|| "plyfs".into()),
        ),
        // Passed to the kernel so /proc/mounts shows "fuse.plyfs".
        MountOption::CUSTOM(format!(
            "subtype={}",
            o.subtype.as_deref().unwrap_or("plyfs")
        )),
    ];
    if o.default_permissions.unwrap_or(true) {
        opts.push(MountOption::DefaultPermissions);
    }
    if root {
        // Like a kernel overlay mount: devices and set-id files work unless
        // the user says otherwise.
        opts.push(if o.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        });
        opts.push(if o.nosuid {
            MountOption::NoSuid
        } else {
            MountOption::Suid
        });
    } else {
        opts.push(MountOption::NoDev);
        opts.push(MountOption::NoSuid);
    }
    if read_only || o.read_only {
        opts.push(MountOption::RO);
    }
    if o.noexec {
        opts.push(MountOption::NoExec);
    }
    if o.noatime {
        opts.push(MountOption::NoAtime);
    }
    if o.sync {
        opts.push(MountOption::Sync);
    }
    if o.dirsync {
        opts.push(MountOption::DirSync);
    }
    if o.auto_unmount {
        opts.push(MountOption::AutoUnmount);
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = opts;
    cfg.acl = if o.allow_other || (root && !o.allow_root) {
        SessionACL::All
    } else if o.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(o.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }));
    cfg.clone_fd = true;
    crate::tuning::ring_threads(&mut cfg);
    cfg
}

/// Explains a failed mount in the user's terms.
fn mount_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        let mode = std::fs::metadata("/dev/fuse")
            .map(|m| {
                format!(
                    "{:o}",
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
                )
            })
            .unwrap_or_else(|_| "unknown".into());
        return format!(
            "cannot mount: permission denied opening /dev/fuse (mode {mode}); \
             unprivileged mounts need /dev/fuse to be mode 0666 and fusermount3 installed ({e})"
        );
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        return format!("cannot mount: {e} (is /dev/fuse present and fusermount3 installed?)");
    }
    format!("cannot mount: {e}")
}

fn serve(
    req: &MountRequest,
    checked: crate::setup::Checked,
    mut pipe: Option<OwnedFd>,
) -> Result<(), String> {
    let limit = sys::process::raise_nofile_limit(1 << 20);
    // Keep a quarter of the descriptors for open files and the rest of us.
    crate::fdcache::set_budget((limit as usize / 4 * 3).saturating_sub(256));
    let _ = sys::process::umask(0);
    let fs = match crate::setup::build(&req.options, checked) {
        Ok(fs) => Arc::new(fs),
        Err(msg) => {
            report(&mut pipe, msg.as_bytes());
            return Err(msg);
        }
    };
    let config = mount_config(&req.options, &req.source, fs.read_only());
    fs.io.set_uring(req.options.uring.unwrap_or_default());
    let mut session = match fuser::Session::new(FuseFs { fs: fs.clone() }, &req.mountpoint, &config)
    {
        Ok(s) => s,
        Err(e) => {
            let msg = mount_error(&e);
            report(&mut pipe, msg.as_bytes());
            return Err(msg);
        }
    };
    if let Err(msg) = crate::tuning::check_transport(&fs, &session) {
        report(&mut pipe, msg.as_bytes());
        abandon(&mut session, &req.mountpoint);
        return Err(msg);
    }
    log::info!(
        "mounted {} with {} lower layer(s){}",
        req.mountpoint.display(),
        fs.lowers.len(),
        if fs.read_only() { ", read-only" } else { "" }
    );
    if pipe.is_some() {
        // Detach from the terminal before telling the parent to exit.
        if let Ok(null) = sys::fs::open_cwd(c"/dev/null", libc::O_RDWR) {
            let _ = sys::process::redirect_stdio(null.as_fd());
        }
        let _ = sys::process::chdir(c"/");
    }
    report(&mut pipe, b"ok");
    if let Err(e) = sys::process::block_signals(&SIGNALS) {
        log::warn!("cannot block signals: {e:?}");
    }
    let mut unmounter = session.unmount_callable();
    let mountpoint = req.mountpoint.clone();
    let _ = std::thread::Builder::new()
        .name("plyfs-signals".into())
        .spawn(move || {
            while let Ok(sig) = sys::process::wait_signal(&SIGNALS) {
                if sig == libc::SIGUSR1 {
                    log::info!("requests: {}", crate::stats::summary());
                    continue;
                }
                log::info!("signal {sig}: unmounting");
                if unmounter.unmount().is_err() {
                    lazy_unmount(&mountpoint);
                }
                break;
            }
        });
    let res = session
        .run()
        .map_err(|e| format!("session ended with an error: {e}"));
    log::info!("requests: {}", crate::stats::summary());
    res
}

/// Mounts in this process and serves from background threads; the mount
/// lasts until the returned session is dropped or unmounted. For embedding
/// plyfs (the demo uses it); the command line uses [`run`].
pub fn spawn(req: &MountRequest) -> Result<fuser::BackgroundSession, String> {
    let checked = crate::setup::validate(&req.options, &req.mountpoint)?;
    let limit = sys::process::raise_nofile_limit(1 << 20);
    crate::fdcache::set_budget((limit as usize / 4 * 3).saturating_sub(256));
    let fs = Arc::new(crate::setup::build(&req.options, checked)?);
    let config = mount_config(&req.options, &req.source, fs.read_only());
    fs.io.set_uring(req.options.uring.unwrap_or_default());
    let mut session = fuser::Session::new(FuseFs { fs: fs.clone() }, &req.mountpoint, &config)
        .map_err(|e| mount_error(&e))?;
    if let Err(msg) = crate::tuning::check_transport(&fs, &session) {
        abandon(&mut session, &req.mountpoint);
        return Err(msg);
    }
    session
        .spawn()
        .map_err(|e| format!("cannot start the session: {e}"))
}

/// Unmounts a mount given up before serving: a request may already wait in
/// it (a plain unmount then fails with EBUSY), so detach it; the session's
/// end then fails that request.
fn abandon<F: fuser::Filesystem>(session: &mut fuser::Session<F>, mountpoint: &Path) {
    if session.unmount().is_err() {
        lazy_unmount(mountpoint);
    }
}

fn lazy_unmount(mountpoint: &Path) {
    if let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) {
        let _ = sys::process::umount_detach(&c);
    }
}
