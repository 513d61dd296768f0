//! FUSE over io_uring (Linux 6.14+). plyfs patch, see PATCHES.md.
//!
//! After FUSE_INIT (which still travels over /dev/fuse), the server parks
//! "ring entries" in the kernel with `IORING_OP_URING_CMD` on the /dev/fuse
//! descriptor: `FUSE_IO_URING_CMD_REGISTER` hands over a header buffer
//! (`struct fuse_uring_req_header`) and a payload buffer; the kernel
//! completes the command once it has copied a request into them, and
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` sends the reply and parks the entry
//! again, in one submission. There is one kernel queue per possible CPU
//! (a request goes to the queue of the CPU its caller runs on); this module
//! serves each queue from threads pinned to that CPU, each with its own ring.
//! Forgets, interrupts and notifications keep using /dev/fuse, so the
//! /dev/fuse workers keep running beside the rings.
//!
//! Layout of a request in the entry (kernel `fuse_uring_args_to_ring`):
//! `fuse_in_header` in `in_out`, the operation's fixed-size argument in
//! `op_in`, everything else (names, write data, ...) in the payload, whose
//! size is in `ring_ent_in_out.payload_sz`. A reply puts `fuse_out_header`
//! in `in_out` and the whole reply body in the payload. fuser parses
//! requests as one contiguous `/dev/fuse` message, so the two small
//! headers are copied just in front of the payload and the request is
//! parsed in place: write data is never copied.
//!
//! Memory safety: the kernel writes an entry's buffers only while it holds
//! the entry's command, and only in the context of the thread that
//! submitted it (inside its `io_uring_enter` or in task work run on its
//! return to user space; task work run after the ring is closed skips the
//! copy). An entry's buffers are read by this module only after its
//! completion arrived and before its next submission, and freed only after
//! the ring is closed.

use std::alloc::Layout;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::ptr;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use log::warn;
use nix::errno::Errno;
use nix::sys::eventfd::EfdFlags;
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::ll::Operation;
use crate::ll::ResponseErrno;
use crate::ll::{self};
use crate::reply::Reply;
use crate::reply::ReplyRaw;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

// uapi: include/uapi/linux/fuse.h (ABI 7.42).
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, then
/// `struct fuse_uring_ent_in_out { flags, commit_id, payload_sz, .. }`.
const HDR_OP_IN: usize = 128;
const OP_IN_MAX: usize = 128;
const HDR_COMMIT_ID: usize = 256 + 8;
const HDR_PAYLOAD_SZ: usize = 256 + 16;
const HDR_SIZE: usize = 256 + 32;
const IN_HEADER: usize = 40; // struct fuse_in_header
const OUT_HEADER: usize = 16; // struct fuse_out_header
/// Offsets in `struct fuse_uring_cmd_req` (the SQE's 80-byte command area).
const CMD_COMMIT_ID: usize = 8;
const CMD_QID: usize = 16;

const PAGE: usize = 4096;
/// An entry's memory: the kernel's header buffer in the first page, the
/// rebuilt request prefix at the end of the second, the payload after it.
const PAYLOAD_OFF: usize = 2 * PAGE;

/// `user_data` of the eventfd poll that wakes a queue thread.
const WAKE: u64 = u64::MAX;
/// `user_data` of the deliberately invalid registration (see `poison`).
const POISON: u64 = u64::MAX - 1;

/// Whether the session serves requests over io_uring, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringStatus {
    /// The filesystem did not ask for `FUSE_OVER_IO_URING` in `init` (or the
    /// kernel did not offer it, so it could not ask).
    NotRequested,
    /// Setting the rings up or registering them failed; requests use
    /// /dev/fuse. The text says why.
    Failed(String),
    /// Requests are served by ring threads.
    Active {
        /// Kernel queues (one per possible CPU).
        queues: usize,
        /// Threads serving each queue, each with its own ring.
        threads_per_queue: usize,
        /// Ring entries per thread.
        depth: usize,
    },
}

/// Sizes chosen at INIT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub(crate) threads_per_queue: usize,
    pub(crate) depth: usize,
    /// Payload buffer size; the kernel requires at least
    /// max(8 KiB, max_write, max_pages * PAGE_SIZE).
    pub(crate) payload: usize,
}

/// Number of CPUs the kernel may ever bring online (`num_possible_cpus()`),
/// which is its number of queues; every queue needs entries before the
/// kernel switches to the ring.
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(s.trim())
        .ok_or_else(|| io::Error::other(format!("cannot parse the possible CPU list {s:?}")))
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        n += b.checked_sub(a)? + 1;
    }
    (n > 0).then_some(n)
}

/// Memory of one ring entry, shared by its queue thread and the reply
/// sender of the request it holds.
struct EntryMem {
    base: NonNull<u8>,
    layout: Layout,
    payload_cap: usize,
}

// SAFETY: `EntryMem` owns a plain heap allocation; every access goes
// through raw pointers under the protocol described in the module comment
// (the queue thread reads a request before dispatching it, the reply
// sender writes under the slot's lock, the kernel writes only between a
// submission and its completion).
unsafe impl Send for EntryMem {}
// SAFETY: see `Send`; no `&`-reference to the memory is handed out beyond
// the dispatch of one request.
unsafe impl Sync for EntryMem {}

impl EntryMem {
    fn new(payload_cap: usize) -> io::Result<EntryMem> {
        let size = PAYLOAD_OFF
            .checked_add(payload_cap)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let layout = Layout::from_size_align(size, PAGE).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size. Zeroed pages are mapped
        // lazily, so a large payload costs nothing until it is used.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(EntryMem {
            base,
            layout,
            payload_cap,
        })
    }

    fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.layout.size());
        // SAFETY: callers pass offsets within the allocation.
        unsafe { self.base.as_ptr().add(off) }
    }

    fn header_ptr(&self) -> *mut u8 {
        self.at(0)
    }

    fn payload_ptr(&self) -> *mut u8 {
        self.at(PAYLOAD_OFF)
    }

    fn read_u32(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= HDR_SIZE);
        // SAFETY: within the header page; callers read only while the
        // kernel does not own the entry.
        unsafe { ptr::read_unaligned(self.at(off).cast::<u32>()) }
    }

    fn read_u64(&self, off: usize) -> u64 {
        debug_assert!(off + 8 <= HDR_SIZE);
        // SAFETY: as `read_u32`.
        unsafe { ptr::read_unaligned(self.at(off).cast::<u64>()) }
    }

    fn write_u32(&self, off: usize, v: u32) {
        debug_assert!(off + 4 <= HDR_SIZE);
        // SAFETY: within the header page, which no reference covers; the
        // slot's lock orders this write before the commit submission.
        unsafe { ptr::write_unaligned(self.at(off).cast::<u32>(), v) }
    }
}

impl Drop for EntryMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The queue thread
        // closes its ring before dropping its slots, so the kernel no
        // longer writes here.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// Wakes a queue thread for replies sent after `dispatch` returned.
struct Wake {
    efd: EventFd,
    ready: Mutex<Vec<usize>>,
}

impl Wake {
    fn kick(&self) {
        if let Err(e) = self.efd.write(1) {
            error!("io_uring queue wake-up failed: {e}");
        }
    }
}

#[derive(Default)]
struct SlotState {
    /// The queue thread is inside `dispatch` for this entry.
    dispatching: bool,
    /// The request being dispatched is parsed in place and borrows the
    /// payload: a reply sent meanwhile is staged and copied afterwards.
    payload_borrowed: bool,
    replied: bool,
    staged: Option<Vec<u8>>,
}

/// One ring entry.
pub(crate) struct Slot {
    mem: EntryMem,
    index: usize,
    state: Mutex<SlotState>,
    wake: Arc<Wake>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.index)
    }
}

/// Sends a reply into a ring entry (the `ReplySender` of ring requests).
#[derive(Debug)]
pub(crate) struct RingSender {
    slot: Arc<Slot>,
}

impl RingSender {
    pub(crate) fn new(slot: Arc<Slot>) -> RingSender {
        RingSender { slot }
    }

    /// Writes `bufs` (a `fuse_out_header`, then the body) into the entry.
    /// The queue thread commits it once `dispatch` returns, or at once if
    /// the reply comes later from another thread.
    pub(crate) fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let slot = &self.slot;
        let Some((head, body)) = bufs.split_first() else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        if head.len() != OUT_HEADER {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut error = i32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
        let mut body_len: usize = body.iter().map(|b| b.len()).sum();
        if error != 0 {
            body_len = 0;
        } else if body_len > slot.mem.payload_cap {
            error!(
                "FUSE reply of {body_len} bytes exceeds the ring payload of {}; replying EIO",
                slot.mem.payload_cap
            );
            error = -libc::EIO;
            body_len = 0;
        }
        let mut st = slot.state.lock();
        if st.replied {
            return Err(io::Error::other("FUSE request replied twice"));
        }
        if body_len > 0 {
            if st.dispatching && st.payload_borrowed {
                let mut v = Vec::with_capacity(body_len);
                for b in body {
                    v.extend_from_slice(b);
                }
                st.staged = Some(v);
            } else {
                let mut off = 0;
                for b in body {
                    // SAFETY: `off + b.len() <= body_len <= payload_cap`;
                    // no reference covers the payload (the request either
                    // does not use it or its dispatch has ended) and the
                    // kernel does not own the entry until the commit.
                    unsafe {
                        ptr::copy_nonoverlapping(
                            b.as_ptr(),
                            slot.mem.payload_ptr().add(off),
                            b.len(),
                        )
                    };
                    off += b.len();
                }
            }
        }
        // fuse_out_header { len, error, unique } and ring_ent_in_out.payload_sz.
        let mut out = [0u8; OUT_HEADER];
        out[..4].copy_from_slice(&((OUT_HEADER + body_len) as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&error.to_ne_bytes());
        out[8..].copy_from_slice(&head[8..16]);
        // SAFETY: the first 16 bytes of the header page; no reference
        // covers them (the request was copied out before dispatch).
        unsafe { ptr::copy_nonoverlapping(out.as_ptr(), slot.mem.header_ptr(), OUT_HEADER) };
        slot.mem.write_u32(HDR_PAYLOAD_SZ, body_len as u32);
        st.replied = true;
        let deferred = !st.dispatching;
        drop(st);
        if deferred {
            slot.wake.ready.lock().push(slot.index);
            slot.wake.kick();
        }
        Ok(())
    }
}

/// What a queue thread is told to do.
enum Ctl<FS: Filesystem> {
    /// Register the entries with the kernel.
    Register,
    /// Submit a registration the kernel refuses, which makes it give up on
    /// io_uring for this connection (see `Pool::register`).
    Poison,
    /// Serve requests.
    Start(Start<FS>),
}

pub(crate) struct Start<FS: Filesystem> {
    pub(crate) filesystem: Arc<FilesystemHolder<FS>>,
    pub(crate) allowed: SessionACL,
    pub(crate) session_owner: nix::unistd::Uid,
    /// Gets the thread's result when it ends.
    pub(crate) done: crate::session::DoneSender,
}

struct Worker<FS: Filesystem> {
    qid: usize,
    name: String,
    ctl: mpsc::Sender<Ctl<FS>>,
    report: mpsc::Receiver<Result<(), String>>,
    handle: Option<JoinHandle<()>>,
}

impl<FS: Filesystem> Worker<FS> {
    fn send(&self, c: Ctl<FS>) -> Result<(), String> {
        self.ctl
            .send(c)
            .map_err(|_| format!("{} ended early", self.name))
    }

    fn result(&self) -> Result<(), String> {
        self.report
            .recv()
            .unwrap_or_else(|_| Err(format!("{} ended early", self.name)))
    }
}

/// The queue threads of a session, from INIT until `start`.
pub(crate) struct Pool<FS: Filesystem> {
    workers: Vec<Worker<FS>>,
    queues: usize,
    params: Params,
}

impl<FS: Filesystem> std::fmt::Debug for Pool<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("queues", &self.queues)
            .field("params", &self.params)
            .finish()
    }
}

impl<FS: Filesystem> Pool<FS> {
    /// Starts the queue threads and has each set up its ring and buffers,
    /// before the INIT reply promises io_uring to the kernel: once it has,
    /// the kernel holds every request until all queues are registered.
    pub(crate) fn prepare(dev: &Channel, params: Params) -> Result<Pool<FS>, String> {
        if !sqe_layout_ok() {
            return Err("unexpected io_uring SQE layout".into());
        }
        let queues = possible_cpus().map_err(|e| format!("cannot count CPUs: {e}"))?;
        let qid_max = usize::from(u16::MAX);
        if queues > qid_max {
            return Err(format!("{queues} CPUs"));
        }
        // Test hook: fail the ring setup, or have the kernel refuse the
        // registration.
        let fail = std::env::var_os("FUSER_URING_TEST_FAIL");
        if fail
            .as_ref()
            .is_some_and(|v| v.as_encoded_bytes() == b"setup")
        {
            return Err("cannot create an io_uring: refused by FUSER_URING_TEST_FAIL".into());
        }
        let fail_register = fail.is_some_and(|v| v.as_encoded_bytes() == b"register");
        let mut pool = Pool {
            workers: Vec::new(),
            queues,
            params,
        };
        for qid in 0..queues {
            for t in 0..params.threads_per_queue {
                let name = if params.threads_per_queue == 1 {
                    format!("fuser-uring-{qid}")
                } else {
                    format!("fuser-uring-{qid}.{t}")
                };
                let (ctl_tx, ctl_rx) = mpsc::channel();
                let (rep_tx, rep_rx) = mpsc::channel();
                let dev = dev.clone();
                let tname = name.clone();
                let handle = thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        queue_thread::<FS>(qid, tname, dev, params, fail_register, ctl_rx, rep_tx)
                    })
                    .map_err(|e| format!("cannot start a queue thread: {e}"))?;
                pool.workers.push(Worker {
                    qid,
                    name,
                    ctl: ctl_tx,
                    report: rep_rx,
                    handle: Some(handle),
                });
            }
        }
        for w in &pool.workers {
            w.result()?;
        }
        Ok(pool)
    }

    /// Registers every entry, after the INIT reply. Queue 0 goes last:
    /// the kernel switches to the ring once every queue has an entry, so
    /// a failure before that leaves the connection on /dev/fuse. A refused
    /// registration makes the kernel drop io_uring for the connection; when
    /// a queue failed without reaching the kernel, a refused registration
    /// is sent on purpose, so that requests do not wait for a ring that
    /// never gets ready.
    pub(crate) fn register(&mut self) -> Result<(), String> {
        let (first, last): (Vec<usize>, Vec<usize>) =
            (0..self.workers.len()).partition(|&i| self.workers[i].qid != 0);
        let mut failed = None;
        for group in [first, last] {
            for &i in &group {
                if let Err(e) = self.workers[i].send(Ctl::Register) {
                    failed.get_or_insert(e);
                }
            }
            for &i in &group {
                if let Err(e) = self.workers[i].result() {
                    failed.get_or_insert(e);
                }
            }
            if failed.is_some() {
                break;
            }
        }
        let Some(e) = failed else {
            return Ok(());
        };
        // Whatever failed, make sure the kernel stops waiting for the ring.
        let poisoned = self
            .workers
            .iter()
            .any(|w| w.send(Ctl::Poison).is_ok() && w.result().is_ok());
        if !poisoned {
            error!("io_uring fallback: could not tell the kernel; requests may hang");
        }
        Err(e)
    }

    pub(crate) fn status(&self) -> UringStatus {
        UringStatus::Active {
            queues: self.queues,
            threads_per_queue: self.params.threads_per_queue,
            depth: self.params.depth,
        }
    }

    /// Hands the filesystem to the queue threads; returns how many will
    /// report to `start.done`.
    pub(crate) fn start(mut self, start: impl Fn() -> Start<FS>) -> usize {
        let mut n = 0;
        for w in &mut self.workers {
            if w.send(Ctl::Start(start())).is_ok() {
                n += 1;
                // From now on the thread reports through `done`.
                w.handle = None;
            }
        }
        n
    }

    pub(crate) fn queues(&self) -> usize {
        self.queues
    }
}

impl<FS: Filesystem> Drop for Pool<FS> {
    fn drop(&mut self) {
        // Threads not started end when their control channel closes.
        let handles: Vec<_> = self
            .workers
            .drain(..)
            .filter_map(|mut w| w.handle.take())
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Checks that `io_uring::squeue::Entry128` is the kernel's SQE laid out as
/// `set_len` expects (the crate's `UringCmd80` cannot set `len`).
fn sqe_layout_ok() -> bool {
    let e = opcode::UringCmd80::new(types::Fd(7), 0x0102_0304)
        .addr(Some(0x1122_3344_5566_7788))
        .build();
    let bytes = sqe_bytes(&e);
    bytes[0] == opcode::UringCmd80::CODE
        && bytes[4..8] == 7i32.to_ne_bytes()
        && bytes[8..12] == 0x0102_0304u32.to_ne_bytes()
        && bytes[16..24] == 0x1122_3344_5566_7788u64.to_ne_bytes()
        && bytes[24..28] == [0; 4]
}

fn sqe_bytes(e: &squeue::Entry128) -> [u8; 128] {
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    let mut out = [0u8; 128];
    // SAFETY: `Entry128` is a #[repr(C)] 128-byte plain-data struct (the
    // kernel's SQE, built from zeroed memory), so all its bytes are
    // initialized and readable.
    unsafe {
        ptr::copy_nonoverlapping(
            (e as *const squeue::Entry128).cast::<u8>(),
            out.as_mut_ptr(),
            128,
        )
    };
    out
}

/// Sets the SQE's `len` field (byte 24 of `struct io_uring_sqe`), checked by
/// `sqe_layout_ok` before any ring is used.
fn set_len(mut e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is #[repr(C)] over the kernel's SQE, whose `len`
    // is a u32 at offset 24 (uapi layout, verified by `sqe_layout_ok`).
    unsafe {
        ptr::write_unaligned(
            (&mut e as *mut squeue::Entry128)
                .cast::<u8>()
                .add(24)
                .cast::<u32>(),
            len,
        )
    };
    e
}

fn queue_thread<FS: Filesystem>(
    qid: usize,
    name: String,
    dev: Channel,
    params: Params,
    fail_register: bool,
    ctl: mpsc::Receiver<Ctl<FS>>,
    report: mpsc::Sender<Result<(), String>>,
) {
    // These threads start inside `Session::new`, before the application
    // has set up its signal handling (plyfs blocks SIGTERM in all threads
    // and waits for it in one): they must never be the thread a
    // process-directed signal is delivered to.
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None) {
        debug!("cannot block signals in {name}: {e}");
    }
    pin_to_cpu(qid);
    let mut q = match Queue::new(qid, dev, params, fail_register) {
        Ok(q) => q,
        Err(e) => {
            let _ = report.send(Err(format!("{name}: {e}")));
            return;
        }
    };
    let _ = report.send(Ok(()));
    loop {
        match ctl.recv() {
            Ok(Ctl::Register) => {
                let r = q.register().map_err(|e| format!("{name}: {e}"));
                let _ = report.send(r);
            }
            Ok(Ctl::Poison) => {
                let _ = report.send(q.poison().map_err(|e| e.to_string()));
            }
            Ok(Ctl::Start(start)) => {
                let guard = crate::session::DoneGuard::new(name.clone(), start.done);
                let se = SessionEventLoop {
                    thread_name: name.clone(),
                    ch: q.dev.clone(),
                    filesystem: start.filesystem,
                    allowed: start.allowed,
                    session_owner: start.session_owner,
                };
                let r = q.serve(&se);
                if let Err(e) = &r {
                    error!("{name}: {e}; ending the session");
                }
                // The ring closes before the session learns we are done.
                drop(q);
                drop(se);
                guard.finish(r);
                return;
            }
            Err(_) => return,
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let r = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = r {
        debug!("cannot pin the io_uring queue thread to CPU {cpu}: {e}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Register,
    Commit,
}

/// One queue thread's ring and entries.
struct Queue {
    // Field order matters: the ring closes before the entries' memory is
    // freed.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Arc<Slot>>,
    /// `REGISTER` iovecs (header, payload) per entry, at stable addresses.
    iovs: Box<[[libc::iovec; 2]]>,
    last: Vec<Cmd>,
    commit_ids: Vec<u64>,
    live: Vec<bool>,
    wake: Arc<Wake>,
    dev: Channel,
    qid: u16,
    fail_register: bool,
    /// Completions received but not handled yet.
    pending: Vec<(u64, i32)>,
    /// Aligned copy of a request whose headers cannot be rebuilt in place.
    scratch: Vec<u64>,
}

impl Queue {
    fn new(qid: usize, dev: Channel, p: Params, fail_register: bool) -> io::Result<Queue> {
        let depth = p.depth.max(1);
        let entries = u32::try_from(depth + 1).map_err(io::Error::other)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create an io_uring: {e}")))?;
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let wake = Arc::new(Wake {
            efd,
            ready: Mutex::new(Vec::new()),
        });
        let mut slots = Vec::with_capacity(depth);
        let mut iovs = Vec::with_capacity(depth);
        for index in 0..depth {
            let mem = EntryMem::new(p.payload)?;
            iovs.push([
                libc::iovec {
                    iov_base: mem.header_ptr().cast(),
                    iov_len: HDR_SIZE,
                },
                libc::iovec {
                    iov_base: mem.payload_ptr().cast(),
                    iov_len: p.payload,
                },
            ]);
            slots.push(Arc::new(Slot {
                mem,
                index,
                state: Mutex::new(SlotState::default()),
                wake: wake.clone(),
            }));
        }
        Ok(Queue {
            ring,
            slots,
            iovs: iovs.into_boxed_slice(),
            last: vec![Cmd::Register; depth],
            commit_ids: vec![0; depth],
            live: vec![false; depth],
            wake,
            dev,
            qid: qid as u16,
            fail_register,
            pending: Vec::new(),
            scratch: Vec::new(),
        })
    }

    fn dev_fd(&self) -> types::Fd {
        types::Fd(self.dev.as_fd().as_raw_fd())
    }

    fn cmd(&self, commit_id: u64, qid: u16) -> [u8; 80] {
        let mut c = [0u8; 80];
        c[CMD_COMMIT_ID..CMD_COMMIT_ID + 8].copy_from_slice(&commit_id.to_ne_bytes());
        c[CMD_QID..CMD_QID + 2].copy_from_slice(&qid.to_ne_bytes());
        c
    }

    fn register_sqe(&self, i: usize, qid: u16, user_data: u64) -> squeue::Entry128 {
        let iov = self.iovs[i].as_ptr();
        let e = opcode::UringCmd80::new(self.dev_fd(), FUSE_IO_URING_CMD_REGISTER)
            .cmd(self.cmd(0, qid))
            .addr(Some(iov as u64))
            .build()
            .user_data(user_data);
        set_len(e, 2)
    }

    fn push(&mut self, e: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: the SQE points at `self.iovs` and the entries' memory,
        // which live until after the ring is closed (field order of
        // `Queue`).
        let r = unsafe { self.ring.submission().push(e) };
        r.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn push_register(&mut self, i: usize) -> io::Result<()> {
        let qid = if self.fail_register {
            u16::MAX
        } else {
            self.qid
        };
        let e = self.register_sqe(i, qid, i as u64);
        self.last[i] = Cmd::Register;
        self.push(&e)
    }

    fn push_commit(&mut self, i: usize) -> io::Result<()> {
        let e = opcode::UringCmd80::new(self.dev_fd(), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
            .cmd(self.cmd(self.commit_ids[i], self.qid))
            .build()
            .user_data(i as u64);
        self.last[i] = Cmd::Commit;
        self.push(&e)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.wake.efd.as_fd().as_raw_fd());
        let e = squeue::Entry128::from(
            opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(WAKE),
        );
        self.push(&e)
    }

    /// Submits what is queued, retrying interruptions.
    fn submit(&mut self, wait: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(wait) {
                Ok(_) => return Ok(()),
                Err(e)
                    if matches!(
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        Errno::EINTR | Errno::EAGAIN
                    ) => {}
                // Completion queue full: handle what is there first.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn collect(&mut self) {
        for c in self.ring.completion() {
            self.pending.push((c.user_data(), c.result()));
        }
    }

    /// Registers the entries one at a time; a refusal is completed inline,
    /// before `io_uring_enter` returns.
    fn register(&mut self) -> io::Result<()> {
        for i in 0..self.slots.len() {
            self.push_register(i)?;
            self.submit(0)?;
            self.collect();
            if let Some(pos) = self
                .pending
                .iter()
                .position(|&(ud, res)| ud == i as u64 && res < 0)
            {
                let (_, res) = self.pending.remove(pos);
                let e = io::Error::from_raw_os_error(-res);
                if i == 0 {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("the kernel refused the ring registration: {e}"),
                    ));
                }
                // Serve with the entries already registered.
                warn!("io_uring queue {}: entry {i} refused: {e}", self.qid);
                break;
            }
            self.live[i] = true;
        }
        Ok(())
    }

    /// A registration with an invalid queue id: the kernel answers EINVAL
    /// and falls back to /dev/fuse for the connection.
    fn poison(&mut self) -> io::Result<()> {
        let e = self.register_sqe(0, u16::MAX, POISON);
        self.push(&e)?;
        self.submit(0)?;
        self.collect();
        let r = self
            .pending
            .iter()
            .find(|&&(ud, _)| ud == POISON)
            .map(|&(_, r)| r);
        match r {
            Some(r) if r < 0 => Ok(()),
            _ => Err(io::Error::other("no answer to the fallback registration")),
        }
    }

    fn live_entries(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    fn serve<FS: Filesystem>(&mut self, se: &SessionEventLoop<FS>) -> io::Result<()> {
        self.arm_wake()?;
        let mut batch = Vec::new();
        loop {
            if self.live_entries() == 0 {
                return Ok(());
            }
            if self.pending.is_empty() {
                self.submit(1)?;
                self.collect();
            } else {
                // Requests taken during registration: submit, do not wait.
                self.submit(0)?;
            }
            std::mem::swap(&mut batch, &mut self.pending);
            for (ud, res) in batch.drain(..) {
                if ud == WAKE {
                    self.on_wake()?;
                } else if ud == POISON {
                } else if let Ok(i) = usize::try_from(ud) {
                    if i >= self.slots.len() {
                        continue;
                    }
                    if res >= 0 {
                        self.handle(i, se)?;
                    } else {
                        self.on_error(i, -res)?;
                    }
                }
            }
        }
    }

    /// Commits replies sent from other threads after their dispatch ended.
    fn on_wake(&mut self) -> io::Result<()> {
        let _ = self.wake.efd.read();
        let ready = std::mem::take(&mut *self.wake.ready.lock());
        for i in ready {
            self.push_commit(i)?;
        }
        self.arm_wake()
    }

    fn on_error(&mut self, i: usize, errno: i32) -> io::Result<()> {
        match Errno::from_raw(errno) {
            Errno::EINTR | Errno::EAGAIN => {
                return match self.last[i] {
                    Cmd::Register => self.push_register(i),
                    Cmd::Commit => self.push_commit(i),
                };
            }
            // The connection is gone (unmount or abort).
            Errno::ENOTCONN | Errno::ECONNABORTED | Errno::ECANCELED | Errno::ENODEV => {
                self.live[i] = false;
                return Ok(());
            }
            _ => {}
        }
        let e = io::Error::from_raw_os_error(errno);
        if self.last[i] == Cmd::Commit {
            // The kernel dropped this entry; give it a fresh one.
            warn!(
                "io_uring queue {}: commit failed: {e}; registering the entry again",
                self.qid
            );
            return self.push_register(i);
        }
        self.live[i] = false;
        if self.live_entries() == 0 {
            return Err(io::Error::new(
                e.kind(),
                format!("io_uring queue {} lost its last entry: {e}", self.qid),
            ));
        }
        warn!("io_uring queue {}: entry lost: {e}", self.qid);
        Ok(())
    }

    /// Serves the request the kernel put into entry `i`.
    fn handle<FS: Filesystem>(&mut self, i: usize, se: &SessionEventLoop<FS>) -> io::Result<()> {
        let slot = self.slots[i].clone();
        let mem = &slot.mem;
        let mut in_header = [0u8; IN_HEADER];
        // SAFETY: the completion says the kernel has filled the entry; it
        // leaves it alone until the next submission for it.
        unsafe { ptr::copy_nonoverlapping(mem.header_ptr(), in_header.as_mut_ptr(), IN_HEADER) };
        let total =
            u32::from_ne_bytes([in_header[0], in_header[1], in_header[2], in_header[3]]) as usize;
        let unique = u64::from_ne_bytes(in_header[8..16].try_into().unwrap_or_default());
        let commit_id = match mem.read_u64(HDR_COMMIT_ID) {
            0 => unique,
            id => id,
        };
        self.commit_ids[i] = commit_id;
        let payload_sz = mem.read_u32(HDR_PAYLOAD_SZ) as usize;
        let op_size = total
            .checked_sub(IN_HEADER + payload_sz)
            .filter(|&n| n <= OP_IN_MAX && payload_sz <= mem.payload_cap);
        let start = op_size.map(|n| PAYLOAD_OFF - IN_HEADER - n);
        let in_place = start.is_some_and(|s| s % 8 == 0);
        *slot.state.lock() = SlotState {
            dispatching: true,
            payload_borrowed: in_place && payload_sz > 0,
            ..SlotState::default()
        };
        let ch = self.dev.sender();
        if let (Some(op_size), Some(start)) = (op_size, start) {
            self.parse_and_dispatch(
                se, &slot, in_header, op_size, start, payload_sz, in_place, ch,
            );
        } else {
            error!(
                "io_uring queue {}: malformed request (len {total}, payload {payload_sz})",
                self.qid
            );
            reply_error(&slot, ch, unique, ll::Errno::EIO);
        }
        // The request's borrow of the payload has ended.
        let mut st = slot.state.lock();
        st.dispatching = false;
        if !st.replied {
            // Replied later from another thread, which wakes us.
            return Ok(());
        }
        if let Some(staged) = st.staged.take() {
            // SAFETY: `staged.len() <= payload_cap` (checked by the
            // sender); no reference covers the payload any more.
            unsafe { ptr::copy_nonoverlapping(staged.as_ptr(), mem.payload_ptr(), staged.len()) };
        }
        drop(st);
        self.push_commit(i)
    }

    /// Rebuilds the request as one `/dev/fuse` message and dispatches it.
    #[allow(clippy::too_many_arguments)]
    fn parse_and_dispatch<FS: Filesystem>(
        &mut self,
        se: &SessionEventLoop<FS>,
        slot: &Arc<Slot>,
        in_header: [u8; IN_HEADER],
        op_size: usize,
        start: usize,
        payload_sz: usize,
        in_place: bool,
        ch: ChannelSender,
    ) {
        let mem = &slot.mem;
        let unique = u64::from_ne_bytes(in_header[8..16].try_into().unwrap_or_default());
        let len = IN_HEADER + op_size + payload_sz;
        if in_place {
            // SAFETY: the prefix [start, PAYLOAD_OFF) is in the entry's
            // second page, which only this thread touches; `op_in` is in
            // the header page, filled by the kernel.
            let data = unsafe {
                let p = mem.at(start);
                ptr::copy_nonoverlapping(in_header.as_ptr(), p, IN_HEADER);
                ptr::copy_nonoverlapping(mem.at(HDR_OP_IN), p.add(IN_HEADER), op_size);
                std::slice::from_raw_parts(p, len)
            };
            dispatch(se, data, slot, unique, ch);
        } else {
            self.scratch.clear();
            self.scratch.resize(len.div_ceil(8), 0);
            // SAFETY: `scratch` holds at least `len` bytes; the sources are
            // the entry's header and payload, filled by the kernel.
            let data = unsafe {
                let p = self.scratch.as_mut_ptr().cast::<u8>();
                ptr::copy_nonoverlapping(in_header.as_ptr(), p, IN_HEADER);
                ptr::copy_nonoverlapping(mem.at(HDR_OP_IN), p.add(IN_HEADER), op_size);
                ptr::copy_nonoverlapping(mem.payload_ptr(), p.add(IN_HEADER + op_size), payload_sz);
                std::slice::from_raw_parts(p.cast_const(), len)
            };
            dispatch(se, data, slot, unique, ch);
        }
    }
}

fn reply_error(slot: &Arc<Slot>, ch: ChannelSender, unique: u64, errno: ll::Errno) {
    let sender = ReplySender::Ring(RingSender::new(slot.clone()), ch);
    <ReplyRaw as Reply>::new(ll::RequestId(unique), sender).send_ll(&ResponseErrno(errno));
}

fn dispatch<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    data: &[u8],
    slot: &Arc<Slot>,
    unique: u64,
    ch: ChannelSender,
) {
    let Some(req) = RequestWithSender::new_ring(ch.clone(), data, slot.clone()) else {
        reply_error(slot, ch, unique, ll::Errno::EIO);
        return;
    };
    match req.request.operation() {
        Ok(Operation::Destroy(_)) => req.reply::<ReplyEmpty>().ok(),
        Ok(Operation::Forget(_) | Operation::BatchForget(_)) => {
            // No reply is due, but the entry must go back to the kernel.
            req.dispatch(se);
            req.reply::<ReplyEmpty>().ok();
        }
        _ => req.dispatch(se),
    }
}

/// Logs the transport once the session is set up.
pub(crate) fn log_status(status: &UringStatus) {
    match status {
        UringStatus::Active {
            queues,
            threads_per_queue,
            depth,
        } => info!(
            "FUSE over io_uring: {queues} queue(s), {threads_per_queue} thread(s) per queue, {depth} entr{} per thread",
            if *depth == 1 { "y" } else { "ies" }
        ),
        UringStatus::Failed(e) => info!("FUSE over io_uring not used: {e}"),
        UringStatus::NotRequested => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-9,12"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    fn slot(payload: usize) -> Arc<Slot> {
        let wake = Arc::new(Wake {
            efd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap(),
            ready: Mutex::new(Vec::new()),
        });
        Arc::new(Slot {
            mem: EntryMem::new(payload).unwrap(),
            index: 3,
            state: Mutex::new(SlotState::default()),
            wake,
        })
    }

    fn out_header(len: u32, error: i32, unique: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&len.to_ne_bytes());
        h[4..8].copy_from_slice(&error.to_ne_bytes());
        h[8..].copy_from_slice(&unique.to_ne_bytes());
        h
    }

    fn entry_header(s: &Slot) -> (u32, i32, u64, u32) {
        let m = &s.mem;
        (
            m.read_u32(0),
            m.read_u32(4) as i32,
            m.read_u64(8),
            m.read_u32(HDR_PAYLOAD_SZ),
        )
    }

    fn payload(s: &Slot, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        // SAFETY: test-only read of the first `n` payload bytes.
        unsafe { ptr::copy_nonoverlapping(s.mem.payload_ptr(), v.as_mut_ptr(), n) };
        v
    }

    #[test]
    fn reply_goes_into_the_entry() {
        let s = slot(8192);
        s.state.lock().dispatching = true;
        let h = out_header(16 + 8, 0, 77);
        RingSender::new(s.clone())
            .send(&[
                IoSlice::new(&h),
                IoSlice::new(b"hel"),
                IoSlice::new(b"lo, x"),
            ])
            .unwrap();
        assert_eq!(entry_header(&s), (24, 0, 77, 8));
        assert_eq!(payload(&s, 8), b"hello, x");
        let st = s.state.lock();
        assert!(st.replied && st.staged.is_none());
        assert!(s.wake.ready.lock().is_empty());
        assert!(s.wake.efd.read().is_err(), "no wake-up during dispatch");
    }

    #[test]
    fn late_reply_wakes_the_queue() {
        let s = slot(8192);
        let h = out_header(16 + 2, 0, 5);
        RingSender::new(s.clone())
            .send(&[IoSlice::new(&h), IoSlice::new(b"ok")])
            .unwrap();
        assert_eq!(*s.wake.ready.lock(), vec![3]);
        assert_eq!(s.wake.efd.read().unwrap(), 1);
        assert_eq!(payload(&s, 2), b"ok");
    }

    #[test]
    fn reply_is_staged_while_the_request_borrows_the_payload() {
        let s = slot(8192);
        {
            let mut st = s.state.lock();
            st.dispatching = true;
            st.payload_borrowed = true;
        }
        let h = out_header(16 + 4, 0, 9);
        RingSender::new(s.clone())
            .send(&[IoSlice::new(&h), IoSlice::new(b"data")])
            .unwrap();
        assert_eq!(payload(&s, 4), [0; 4], "payload untouched");
        assert_eq!(s.state.lock().staged.as_deref(), Some(&b"data"[..]));
        assert_eq!(entry_header(&s), (20, 0, 9, 4));
    }

    #[test]
    fn errors_and_oversized_replies() {
        let s = slot(8192);
        s.state.lock().dispatching = true;
        let h = out_header(16, -libc::ENOENT, 11);
        RingSender::new(s.clone())
            .send(&[IoSlice::new(&h)])
            .unwrap();
        assert_eq!(entry_header(&s), (16, -libc::ENOENT, 11, 0));
        assert!(
            RingSender::new(s.clone())
                .send(&[IoSlice::new(&h)])
                .is_err(),
            "a second reply is refused"
        );

        let s = slot(8192);
        s.state.lock().dispatching = true;
        let big = vec![1u8; 8193];
        let h = out_header(16 + 8193, 0, 12);
        RingSender::new(s.clone())
            .send(&[IoSlice::new(&h), IoSlice::new(&big)])
            .unwrap();
        assert_eq!(entry_header(&s), (16, -libc::EIO, 12, 0));
    }

    #[test]
    fn sqe_layout() {
        assert!(sqe_layout_ok());
        let e = set_len(
            opcode::UringCmd80::new(types::Fd(3), 1)
                .addr(Some(42))
                .build(),
            2,
        );
        assert_eq!(sqe_bytes(&e)[24..28], 2u32.to_ne_bytes());
    }
}
