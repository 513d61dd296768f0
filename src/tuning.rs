//! FUSE performance settings: which kernel capabilities plyfs asks for and
//! how files and directories are opened.
//!
//! Data I/O uses kernel passthrough when the kernel offers it and plyfs has
//! CAP_SYS_ADMIN (reads, writes and mmap go straight to the layer file);
//! otherwise the kernel's writeback cache with kept page caches. Volatile
//! mounts skip passthrough so that fsync stays a no-op, as fuse-overlayfs
//! does.
//!
//! Transport: FUSE over io_uring (`uring=`) when the kernel offers it
//! (Linux 6.14+, `enable_uring=Y`): one queue per CPU served by a thread
//! pinned to that CPU, one submission per reply-and-next-request instead of
//! a write and a read on /dev/fuse.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use fuser::{
    BackingId, FileAttr, FileHandle, FopenFlags, Generation, InitFlags, KernelConfig, ReplyCreate,
    ReplyOpen, UringStatus,
};

use crate::fs::Plyfs;
use crate::handles::OpenFile;
use crate::options::{Passthrough, Uring};

/// I/O modes settled at FUSE init.
#[derive(Debug, Default)]
pub struct IoModes {
    pub passthrough: AtomicBool,
    pub writeback: AtomicBool,
    /// The kernel leaves the umask to plyfs (`FUSE_DONT_MASK`).
    pub dont_mask: AtomicBool,
    /// The kernel opens directories by itself (`FUSE_NO_OPENDIR_SUPPORT`):
    /// no OPENDIR/RELEASEDIR round trips; readdir reads the directory's
    /// shared listing.
    pub no_opendir: AtomicBool,
    /// `uring=` (see [`IoModes::set_uring`]).
    uring: AtomicU8,
    /// The kernel offered FUSE over io_uring at init.
    uring_offered: AtomicBool,
}

impl IoModes {
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// The `uring=` choice; set before the session starts.
    pub fn set_uring(&self, mode: Uring) {
        self.uring.store(mode as u8, Ordering::Relaxed);
    }

    pub fn uring(&self) -> Uring {
        match self.uring.load(Ordering::Relaxed) {
            x if x == Uring::On as u8 => Uring::On,
            x if x == Uring::Off as u8 => Uring::Off,
            _ => Uring::Auto,
        }
    }

    pub fn mode_name(&self) -> &'static str {
        if self.passthrough() {
            "passthrough"
        } else if self.writeback() {
            "writeback cache"
        } else {
            "cached"
        }
    }
}

const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
const FUSE_MAGIC: i64 = 0x6573_5546;

/// Whether this process can register passthrough backing files
/// (CAP_SYS_ADMIN in the initial user namespace).
fn can_passthrough() -> bool {
    if crate::sys::process::geteuid() != 0 {
        return false;
    }
    // A root inside a user namespace maps only part of the id range.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

/// Asks the kernel for the capabilities plyfs uses; missing ones are
/// simply not used.
pub fn configure(fs: &Plyfs, config: &mut KernelConfig) {
    let caps = config.capabilities();
    let mut want = if fs.cfg.noacl {
        InitFlags::empty()
    } else {
        // The kernel enforces ACLs (default_permissions); plyfs applies the
        // umask itself, only where no default ACL exists, as the VFS does.
        InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK
    };
    if caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT) {
        want |= InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        fs.io.no_opendir.store(true, Ordering::Relaxed);
    }
    want |= InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_EXPORT_SUPPORT;
    let passthrough = fs
        .cfg
        .passthrough
        .map(|p| p != Passthrough::Off)
        .unwrap_or(!fs.cfg.volatile)
        && caps.contains(InitFlags::FUSE_PASSTHROUGH)
        && can_passthrough()
        && counts_writes(fs, "passthrough");
    if passthrough {
        // Layers on a stacked filesystem need depth 2; else stay at 1 so
        // that a plyfs mount may itself be a layer of an overlay mount.
        let stacked = fs
            .layer_fs_types()
            .iter()
            .any(|t| *t == OVERLAYFS_MAGIC || *t == FUSE_MAGIC);
        if config
            .set_max_stack_depth(if stacked { 2 } else { 1 })
            .is_ok()
        {
            want |= InitFlags::FUSE_PASSTHROUGH;
            fs.io.passthrough.store(true, Ordering::Relaxed);
        }
    }
    if !fs.io.passthrough() {
        // plyfs clears setuid/setgid itself on writes, truncates and
        // O_TRUNC opens (fuse.rs), so the kernel stops asking for
        // security.capability before every write (its inodes get S_NOSEC).
        // Not with passthrough: those writes never reach plyfs.
        want |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    }
    if !fs.io.passthrough()
        && fs.cfg.writeback.unwrap_or(true)
        && !fs.read_only()
        && counts_writes(fs, "writeback")
    {
        want |= InitFlags::FUSE_WRITEBACK_CACHE;
        fs.io.writeback.store(
            caps.contains(InitFlags::FUSE_WRITEBACK_CACHE),
            Ordering::Relaxed,
        );
    }
    fs.io.dont_mask.store(
        want.contains(InitFlags::FUSE_DONT_MASK) && caps.contains(InitFlags::FUSE_DONT_MASK),
        Ordering::Relaxed,
    );
    let offered = caps.contains(InitFlags::FUSE_OVER_IO_URING);
    fs.io.uring_offered.store(offered, Ordering::Relaxed);
    if fs.io.uring() != Uring::Off {
        // fuser sets the rings up after init and takes the flag back
        // (staying on /dev/fuse) if that fails.
        want |= InitFlags::FUSE_OVER_IO_URING;
    }
    if let Err(missing) = config.add_capabilities(want & caps) {
        log::debug!("kernel lacks FUSE capabilities {missing:?}");
    }
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_readahead(1 << 20);
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
}

/// A size-limited mount (`size=`, see `quota`) must see every write when
/// it is made: passthrough would let the kernel write the upper file
/// directly, and the writeback cache would accept writes that fail later.
fn counts_writes(fs: &Plyfs, mode: &str) -> bool {
    if fs.quota.is_none() {
        return true;
    }
    let asked = match mode {
        "passthrough" => fs.cfg.passthrough.is_some_and(|p| p != Passthrough::Off),
        _ => fs.cfg.writeback == Some(true),
    };
    if asked {
        log::warn!(
            "{mode}=on is not used with size=/inodes=: writes must go through plyfs to be counted"
        );
    }
    false
}

/// io_uring queue threads (used when the kernel offers it). Two threads per
/// CPU queue, each with one ring entry: a request from a CPU waits only when
/// both are busy. With one, a long request (a 1 GiB copy-up) held up every
/// other request from its CPU for its whole duration (1.3 s stalls of a
/// `stat` loop), where two or /dev/fuse's shared workers kept it under
/// 10 ms; more entries per thread measured no faster.
pub fn ring_threads(cfg: &mut fuser::Config) {
    cfg.uring_threads_per_queue = 2;
    cfg.uring_queue_depth = 1;
}

/// Logs the I/O mode and transport once the session is set up, and fails
/// a `uring=on` mount that could not get io_uring (the caller unmounts).
pub fn check_transport<F: fuser::Filesystem>(
    fs: &Plyfs,
    session: &fuser::Session<F>,
) -> Result<(), String> {
    let status = session.io_uring_status();
    let transport = match status {
        UringStatus::Active { queues, .. } => format!("io_uring ({queues} queues)"),
        _ => "/dev/fuse".to_string(),
    };
    log::info!("I/O mode: {}, transport: {transport}", fs.io.mode_name());
    let _ = fs.live.transport.set(transport);
    if fs.io.uring() != Uring::On || matches!(status, UringStatus::Active { .. }) {
        return Ok(());
    }
    let why = match status {
        UringStatus::Failed(e) => e.clone(),
        _ if !fs.io.uring_offered.load(Ordering::Relaxed) => "the kernel does not offer it \
             (needs Linux 6.14+ and, as root, echo Y > /sys/module/fuse/parameters/enable_uring)"
            .to_string(),
        _ => "not negotiated".to_string(),
    };
    Err(format!(
        "cannot mount: uring=on but FUSE over io_uring is not available: {why}"
    ))
}

/// Open flags for a cached (non-passthrough) file: the page cache stays
/// valid across opens since plyfs is the only writer of its layers.
pub fn file_open_flags(_fs: &Plyfs) -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE
}

pub fn dir_open_flags(_fs: &Plyfs) -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
}

/// How one open of a regular file does its I/O.
enum Mode {
    Passthrough(Arc<BackingId>),
    Cached,
    Busy,
}

/// Chooses the I/O mode of a new handle. The kernel puts an inode either in
/// passthrough mode (all opens share one backing file) or in cached mode
/// (no open passes through), so the choice follows the handles already
/// open on the node; with none open, upper files pass through, and lower
/// files too with `passthrough=all`.
fn choose(fs: &Plyfs, f: &OpenFile, open: impl FnOnce() -> std::io::Result<BackingId>) -> Mode {
    let upper = f.is_on_upper();
    let mut io = f.node.side().io.lock();
    if io.cached_opens > 0 {
        io.cached_opens += 1;
        f.cached.store(true, Ordering::Relaxed);
        return Mode::Cached;
    }
    if let Some((weak, on_upper)) = io.backing.as_ref()
        && let Some(id) = weak.upgrade()
    {
        return if *on_upper == upper {
            Mode::Passthrough(id)
        } else {
            Mode::Busy
        };
    }
    let wanted = upper || fs.cfg.passthrough == Some(Passthrough::All);
    if wanted {
        match open() {
            Ok(id) => {
                let id = Arc::new(id);
                io.backing = Some((Arc::downgrade(&id), upper));
                return Mode::Passthrough(id);
            }
            Err(e) => log::debug!("passthrough refused for {:?}: {e}", f.node),
        }
    }
    io.cached_opens += 1;
    f.cached.store(true, Ordering::Relaxed);
    Mode::Cached
}

/// Called when a handle is released.
pub fn released(f: &OpenFile) {
    if f.cached.load(Ordering::Relaxed) {
        let mut io = f.node.side().io.lock();
        io.cached_opens = io.cached_opens.saturating_sub(1);
    }
}

pub fn reply_open(fs: &Plyfs, reply: ReplyOpen, fh: u64, f: &OpenFile) {
    if !fs.io.passthrough() {
        reply.opened(FileHandle(fh), file_open_flags(fs));
        return;
    }
    let fd = f.fd();
    match choose(fs, f, || reply.open_backing(fd.as_fd())) {
        Mode::Passthrough(id) => {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            *f.backing.lock() = Some(id);
        }
        Mode::Cached => reply.opened(FileHandle(fh), file_open_flags(fs)),
        Mode::Busy => {
            fs.do_release(fh);
            reply.error(fuser::Errno::EBUSY);
        }
    }
}

pub fn reply_create(
    fs: &Plyfs,
    reply: ReplyCreate,
    attr: &FileAttr,
    generation: u64,
    fh: u64,
    f: &OpenFile,
) {
    let ttl = fs.cfg.ttl;
    let g = Generation(generation);
    if !fs.io.passthrough() {
        reply.created(&ttl, attr, g, FileHandle(fh), file_open_flags(fs));
        return;
    }
    let fd = f.fd();
    match choose(fs, f, || reply.open_backing(fd.as_fd())) {
        Mode::Passthrough(id) => {
            reply.created_passthrough(&ttl, attr, g, FileHandle(fh), FopenFlags::empty(), &id);
            *f.backing.lock() = Some(id);
        }
        // A new file has no other opens: cached is the only other outcome.
        _ => reply.created(&ttl, attr, g, FileHandle(fh), file_open_flags(fs)),
    }
}

/// Open-mode bookkeeping of a regular file node.
#[derive(Debug, Default)]
pub struct NodeIo {
    /// Open handles in cached (non-passthrough) mode.
    pub cached_opens: u32,
    /// The backing file shared by passthrough handles, and whether it is
    /// the upper file.
    pub backing: Option<(Weak<BackingId>, bool)>,
}
