//! Mounting and serving: builds the FUSE session, goes to the background
//! once the mount is live, and unmounts cleanly on SIGTERM/SIGINT/SIGHUP.
//!
//! Threads and fork do not mix, so the process forks before any thread
//! exists. The child builds the filesystem and mounts; it tells the waiting
//! parent "ok" or the error over a pipe, and only then does the parent exit
//! (0 or 1). mount(8) and containers-storage rely on that: when plyfs
//! returns, the mount is there.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
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
    // The mount failed: wait until the child is gone (it still undoes what
    // it prepared), so that nothing of it outlives this command.
    let code = sys::process::waitpid(pid).unwrap_or(1);
    let text = String::from_utf8_lossy(&msg);
    if text.is_empty() {
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

/// Explains a failed mount in the user's terms, on one line.
fn mount_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.contains("user_allow_other") {
        return crate::setup::ALLOW_OTHER_REFUSED.into();
    }
    let fuse_denied = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if fuse_denied {
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
             unprivileged mounts need /dev/fuse to be mode 0666 and fusermount3 installed ({text})"
        );
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        return format!("cannot mount: {text} (is /dev/fuse present and fusermount3 installed?)");
    }
    format!("cannot mount: {text}")
}

/// Mounts `fs`; on failure undoes what preparing it wrote, so a failed
/// mount leaves the directories as they were. A volatile mount marks its
/// work directory once it is live, as the kernel does.
fn mount(
    fs: &Arc<crate::fs::Plyfs>,
    mountpoint: &std::path::Path,
    config: &fuser::Config,
) -> Result<fuser::Session<FuseFs>, String> {
    match fuser::Session::new(FuseFs { fs: fs.clone() }, mountpoint, config) {
        Ok(mut s) => {
            if let Err(msg) = crate::tuning::check_transport(fs, &s) {
                // A request may already wait in the mount: fuser detaches
                // it lazily then, and the session's end fails the request.
                if let Err(e) = s.unmount() {
                    log::warn!("cannot unmount the abandoned mount: {e}");
                }
                if let Some(u) = &fs.upper {
                    u.work.undo_prepare();
                }
                return Err(msg);
            }
            fs.kernel.connect(Box::new(s.notifier()));
            if let Some(u) = &fs.upper
                && let Err(e) = u.work.clean_leftovers()
            {
                log::warn!("cannot clear the work directory of an earlier mount: {e:?}");
            }
            if let Some(u) = fs.upper.as_ref().filter(|_| fs.cfg.volatile)
                && let Err(e) = crate::workdir::mark_volatile(&u.work)
            {
                log::warn!("cannot mark the work directory volatile: {e:?}");
            }
            Ok(s)
        }
        Err(e) => {
            if let Some(u) = &fs.upper {
                u.work.undo_prepare();
            }
            Err(mount_error(&e))
        }
    }
}

fn serve(
    req: &MountRequest,
    checked: crate::setup::Checked,
    mut pipe: Option<OwnedFd>,
) -> Result<(), String> {
    // Before any thread starts (threads inherit the mask: the work dir's
    // background remover, the control thread, ring threads, workers): a
    // signal the kernel delivers to a thread that does not block it kills
    // the daemon without unmounting, and only the signal thread below
    // waits for them.
    if let Err(e) = sys::process::block_signals(&SIGNALS) {
        log::warn!("cannot block signals: {e:?}");
    }
    let limit = sys::process::raise_nofile_limit(1 << 20);
    // Keep a quarter of the descriptors for open files and the rest of us.
    crate::fdcache::set_budget_from_limit(limit);
    let _ = sys::process::umask(0);
    // log=FILE is opened first, so that a bad path fails the mount.
    match &req.options.log {
        Some(crate::logging::Target::File(path)) => match crate::logging::open_file(path) {
            Ok(file) => crate::logging::to_file(file, path),
            Err(msg) => {
                report(&mut pipe, msg.as_bytes());
                return Err(msg);
            }
        },
        Some(crate::logging::Target::Syslog) => crate::logging::to_syslog(),
        None => {}
    }
    let fs = match crate::setup::build(&req.options, checked) {
        Ok(fs) => Arc::new(fs),
        Err(msg) => {
            report(&mut pipe, msg.as_bytes());
            return Err(msg);
        }
    };
    let config = mount_config(&req.options, &req.source, fs.read_only());
    fs.io.set_uring(req.options.uring.unwrap_or_default());
    let mut session = match mount(&fs, &req.mountpoint, &config) {
        Ok(s) => s,
        Err(msg) => {
            report(&mut pipe, msg.as_bytes());
            return Err(msg);
        }
    };
    log::info!(
        "mounted {} with {} lower layer(s){}",
        req.mountpoint.display(),
        fs.lowers.load().len(),
        if fs.read_only() { ", read-only" } else { "" }
    );
    let device = record_mount(&fs, req, &config);
    let control = match device.map(|d| crate::control::Server::start(fs.clone(), d)) {
        Some(Ok(s)) => Some(s),
        Some(Err(msg)) => {
            log::warn!("no control channel (plyfs status/layer will not reach this mount): {msg}");
            None
        }
        None => None,
    };
    if pipe.is_some() {
        // Detach from the terminal before telling the parent to exit.
        if let Ok(null) = sys::fs::open_cwd(c"/dev/null", libc::O_RDWR) {
            let _ = sys::process::redirect_stdio(null.as_fd());
        }
        let _ = sys::process::chdir(c"/");
        // stderr is /dev/null now: log to syslog (unless to a file).
        crate::logging::detach();
    }
    report(&mut pipe, b"ok");
    let mut unmounter = session.unmount_callable();
    let _ = std::thread::Builder::new()
        .name("plyfs-signals".into())
        .spawn(move || {
            while let Ok(sig) = sys::process::wait_signal(&SIGNALS) {
                if sig == libc::SIGUSR1 {
                    // Asked for: written whatever the log level.
                    crate::logging::always(&format!("requests: {}", crate::stats::summary()));
                    continue;
                }
                log::info!("signal {sig}: unmounting");
                // fuser detaches only this mount (lazily when busy), never
                // another one stacked on or under it at the same path.
                if let Err(e) = unmounter.unmount() {
                    log::error!("cannot unmount: {e}; stopping without unmounting");
                    std::process::exit(1);
                }
                break;
            }
        });
    let res = session
        .run()
        .map_err(|e| format!("session ended with an error: {e}"));
    drop(control);
    log::info!("requests: {}", crate::stats::summary());
    res
}

/// Records how the mount was made (for `plyfs status`); returns its
/// device number, read without a request to the mount (not served yet).
fn record_mount(
    fs: &crate::fs::Plyfs,
    req: &MountRequest,
    config: &fuser::Config,
) -> Option<(u32, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(req.mountpoint.as_os_str().as_bytes()).ok()?;
    let device = match sys::socket::device_at(sys::fs::cwd(), &path) {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!(
                "cannot read the device of {}: {e:?}",
                req.mountpoint.display()
            );
            None
        }
    };
    let mountpoint = match (req.mountpoint.parent(), req.mountpoint.file_name()) {
        (Some(p), Some(name)) => {
            let p = if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            };
            std::fs::canonicalize(p).map(|p| p.join(name)).ok()
        }
        _ => None,
    }
    .unwrap_or_else(|| std::path::absolute(&req.mountpoint).unwrap_or_default());
    let o = &req.options;
    let _ = fs.live.mount.set(crate::status::MountMeta {
        mountpoint,
        device: device.unwrap_or_default(),
        source: o
            .fsname
            .clone()
            .or_else(|| req.source.clone())
            .unwrap_or_else(|| "plyfs".into()),
        options: o.given.join(","),
        work: o
            .work
            .as_ref()
            .map(|w| std::path::absolute(w).unwrap_or_else(|_| w.clone())),
        threads: config.n_threads.unwrap_or(1),
    });
    device
}

/// Mounts in this process and serves from background threads; the mount
/// lasts until the returned session is dropped or unmounted. For embedding
/// plyfs (the demo uses it); the command line uses [`run`].
pub fn spawn(req: &MountRequest) -> Result<fuser::BackgroundSession, String> {
    let checked = crate::setup::validate(&req.options, &req.mountpoint)?;
    let limit = sys::process::raise_nofile_limit(1 << 20);
    crate::fdcache::set_budget_from_limit(limit);
    let fs = Arc::new(crate::setup::build(&req.options, checked)?);
    let config = mount_config(&req.options, &req.source, fs.read_only());
    fs.io.set_uring(req.options.uring.unwrap_or_default());
    let session = mount(&fs, &req.mountpoint, &config)?;
    record_mount(&fs, req, &config);
    session
        .spawn()
        .map_err(|e| format!("cannot start the session: {e}"))
}
