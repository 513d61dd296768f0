//! Open file and directory handles.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::listing::Listing;
use crate::node::Node;

/// An open regular file.
pub struct OpenFile {
    pub node: Arc<Node>,
    fd: RwLock<Arc<OwnedFd>>,
    /// The descriptor refers to the upper file (else to a lower one, which
    /// is replaced by the upper file after a copy-up, as the kernel does).
    pub on_upper: AtomicBool,
    /// Open flags, without creation flags.
    pub flags: i32,
    /// Kernel passthrough backing file, kept until release.
    pub backing: Mutex<Option<std::sync::Arc<fuser::BackingId>>>,
    /// The handle does cached (not passthrough) I/O.
    pub cached: AtomicBool,
}

impl OpenFile {
    pub fn new(node: Arc<Node>, fd: OwnedFd, on_upper: bool, flags: i32) -> OpenFile {
        OpenFile {
            node,
            fd: RwLock::new(Arc::new(fd)),
            on_upper: AtomicBool::new(on_upper),
            flags,
            backing: Mutex::new(None),
            cached: AtomicBool::new(false),
        }
    }

    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }

    /// Switches the handle to a new descriptor (the upper copy).
    pub fn switch_to_upper(&self, fd: OwnedFd) {
        *self.fd.write() = Arc::new(fd);
        self.on_upper.store(true, Ordering::Release);
    }

    pub fn is_on_upper(&self) -> bool {
        self.on_upper.load(Ordering::Acquire)
    }
}

/// An open directory with the listing its readdir calls walk through.
pub struct DirHandle {
    pub node: Arc<Node>,
    pub listing: Mutex<Option<Arc<Listing>>>,
}

pub struct Handles {
    files: DashMap<u64, Arc<OpenFile>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles::new()
    }
}

impl Handles {
    pub fn new() -> Handles {
        Handles {
            files: DashMap::new(),
            dirs: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_file(&self, f: OpenFile) -> (u64, Arc<OpenFile>) {
        let id = self.next_id();
        let f = Arc::new(f);
        self.files.insert(id, f.clone());
        (id, f)
    }

    pub fn file(&self, id: u64) -> Option<Arc<OpenFile>> {
        self.files.get(&id).map(|f| f.clone())
    }

    pub fn remove_file(&self, id: u64) -> Option<Arc<OpenFile>> {
        self.files.remove(&id).map(|(_, f)| f)
    }

    pub fn add_dir(&self, d: DirHandle) -> u64 {
        let id = self.next_id();
        self.dirs.insert(id, Arc::new(d));
        id
    }

    pub fn dir(&self, id: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&id).map(|d| d.clone())
    }

    pub fn remove_dir(&self, id: u64) {
        let removed = self.dirs.remove(&id);
        drop(removed);
    }

    /// Open files of a node (to move them to the upper copy after copy-up).
    pub fn files_of(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        self.files
            .iter()
            .filter(|e| e.value().node.ino == ino)
            .map(|e| e.value().clone())
            .collect()
    }

    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    pub fn open_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// Every open file and directory handle (for `plyfs layer remove`).
    pub fn all(&self) -> (Vec<Arc<OpenFile>>, Vec<Arc<DirHandle>>) {
        (
            self.files.iter().map(|e| e.value().clone()).collect(),
            self.dirs.iter().map(|e| e.value().clone()).collect(),
        )
    }
}
