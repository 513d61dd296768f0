//! Process-level calls used at start-up: forking into the background,
//! signals, limits and identity.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{SysResult, check};

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// `fork()`. Call only while the process has a single thread.
pub fn fork() -> SysResult<Fork> {
    // SAFETY: plyfs forks before it starts any thread, so the child inherits a
    // consistent, single-threaded address space.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(super::last_errno()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Points stdin, stdout and stderr at `fd` (e.g. /dev/null).
pub fn redirect_stdio(fd: BorrowedFd<'_>) -> SysResult<()> {
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        check(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    }
    Ok(())
}

pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: plain syscall on a valid string.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Sets the process umask and returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

pub fn geteuid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::getegid() }
}

pub fn getpid() -> i32 {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

/// Raises the soft (and, when allowed, the hard) open-file limit as far as
/// possible; returns the soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    // Privileged processes may raise the hard limit too.
    if lim.rlim_max < want {
        let bigger = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: `bigger` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &bigger) } == 0 {
            return want;
        }
    }
    let target = libc::rlimit {
        rlim_cur: lim.rlim_max.min(want.max(lim.rlim_cur)),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `target` is a valid rlimit within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &target) } == 0 {
        target.rlim_cur
    } else {
        lim.rlim_cur
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` in the calling thread; threads spawned afterwards
/// inherit the mask, so only a `wait_signal` caller receives them.
pub fn block_signals(signals: &[i32]) -> SysResult<()> {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; the old mask is not needed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(super::Errno::from_i32(ret));
    }
    Ok(())
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> SysResult<i32> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` a valid out-pointer.
    let ret = unsafe { libc::sigwait(&set, &mut sig) };
    if ret != 0 {
        return Err(super::Errno::from_i32(ret));
    }
    Ok(sig)
}

/// Waits for a child process and returns its exit status code.
pub fn waitpid(pid: libc::pid_t) -> SysResult<i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    })
}

/// Returns free heap memory to the system (glibc `malloc_trim(0)`).
pub fn malloc_trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
