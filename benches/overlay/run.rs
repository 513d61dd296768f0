//! Running workload commands under a watchdog (timeout, Ctrl-C).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::*;

// system calls fail) on timeout or Ctrl-C.

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) struct Watch {
    pub(crate) deadline: Option<Instant>,
    pub(crate) daemon: Option<i32>,
    pub(crate) groups: Vec<i32>,
    pub(crate) fired: Option<&'static str>,
}

pub(crate) static WATCH: Mutex<Watch> = Mutex::new(Watch {
    deadline: None,
    daemon: None,
    groups: Vec::new(),
    fired: None,
});

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(crate) fn install_watchdog() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is signal safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
            let Some(deadline) = w.deadline else { continue };
            if w.fired.is_some() {
                continue;
            }
            let reason = if INTERRUPTED.load(Ordering::SeqCst) {
                "interrupted"
            } else if Instant::now() > deadline {
                "timed out"
            } else {
                continue;
            };
            w.fired = Some(reason);
            for &g in &w.groups {
                // SAFETY: kill a process group we spawned.
                unsafe { libc::kill(-g, libc::SIGKILL) };
            }
            if let Some(pid) = w.daemon {
                // SAFETY: kill the daemon we spawned; its mount then fails
                // every request with ENOTCONN instead of hanging.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    });
}

pub(crate) fn begin_watch(daemon: Option<u32>, timeout: Duration) {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    w.deadline = Some(Instant::now() + timeout);
    w.daemon = daemon.map(|p| p as i32);
    w.groups.clear();
    w.fired = None;
}

pub(crate) fn end_watch() -> Option<&'static str> {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    w.deadline = None;
    w.daemon = None;
    w.groups.clear();
    w.fired.take()
}

pub(crate) fn watch_group(pid: u32, add: bool) {
    let mut w = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    if add {
        w.groups.push(pid as i32);
    } else {
        w.groups.retain(|&g| g != pid as i32);
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// Spawns `cmds` concurrently (each in its own process group so the
/// watchdog can kill whole pipelines), waits for all, and reports the first
/// failure with the tail of its stderr.
pub(crate) fn run_all(cmds: Vec<Command>, scratch: &Path) -> Result<(), String> {
    let mut children: Vec<(Child, PathBuf, String)> = Vec::new();
    let mut spawn_err = None;
    for (i, mut cmd) in cmds.into_iter().enumerate() {
        let errf = scratch.join(format!("cmd{i}.err"));
        let desc = format!("{:?}", cmd.get_program());
        let file = File::create(&errf).map_err(|e| format!("{}: {e}", errf.display()))?;
        cmd.stdin(Stdio::null())
            .stderr(Stdio::from(file))
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                watch_group(child.id(), true);
                children.push((child, errf, desc));
            }
            Err(e) => {
                spawn_err = Some(format!("spawn {desc}: {e}"));
                break;
            }
        }
    }
    let mut result = match spawn_err {
        Some(e) => Err(e),
        None => Ok(()),
    };
    for (mut child, errf, desc) in children {
        let status = child.wait();
        watch_group(child.id(), false);
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                if result.is_ok() {
                    result = Err(format!("{desc} failed ({s}): {}", tail(&errf)));
                }
            }
            Err(e) => {
                if result.is_ok() {
                    result = Err(format!("wait {desc}: {e}"));
                }
            }
        }
    }
    result
}

pub(crate) fn run(cmd: Command, scratch: &Path) -> Result<(), String> {
    run_all(vec![cmd], scratch)
}

pub(crate) fn cmd<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).stdout(Stdio::null());
    c
}

/// Runs `cmd` and reads its stdout to the end in this process, like
/// `| cat > /dev/null` (GNU tar skips reading files when writing to
/// /dev/null, so its output must go through a pipe).
pub(crate) fn run_to_sink(mut cmd: Command, scratch: &Path) -> Result<u64, String> {
    let errf = scratch.join("sink.err");
    let file = File::create(&errf).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .process_group(0);
    let desc = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    watch_group(child.id(), true);
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let read_result = loop {
        match out.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    drop(out);
    let status = child.wait();
    watch_group(child.id(), false);
    read_result.map_err(|e| format!("reading {desc} output: {e}"))?;
    match status {
        Ok(s) if s.success() => Ok(total),
        Ok(s) => Err(format!("{desc} failed ({s}): {}", tail(&errf))),
        Err(e) => Err(format!("wait {desc}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// The layer tree
