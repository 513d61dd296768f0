//! FUSE performance settings: which kernel capabilities plyfs asks for and
//! how files and directories are opened (caching, passthrough).

use fuser::{
    FileAttr, FileHandle, FopenFlags, Generation, InitFlags, KernelConfig, ReplyCreate, ReplyOpen,
};

use crate::fs::Plyfs;
use crate::handles::OpenFile;

/// Asks the kernel for the capabilities plyfs uses; missing ones are
/// simply not used.
pub fn configure(fs: &Plyfs, config: &mut KernelConfig) {
    let want = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_EXPORT_SUPPORT;
    let supported = want & config.capabilities();
    if let Err(missing) = config.add_capabilities(supported) {
        log::debug!("kernel lacks FUSE capabilities {missing:?}");
    }
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
    let _ = fs;
}

pub fn file_open_flags(_fs: &Plyfs) -> FopenFlags {
    FopenFlags::empty()
}

pub fn dir_open_flags(_fs: &Plyfs) -> FopenFlags {
    FopenFlags::empty()
}

pub fn reply_open(fs: &Plyfs, reply: ReplyOpen, fh: u64, _f: &OpenFile) {
    reply.opened(FileHandle(fh), file_open_flags(fs));
}

pub fn reply_create(
    fs: &Plyfs,
    reply: ReplyCreate,
    attr: &FileAttr,
    generation: u64,
    fh: u64,
    _f: &OpenFile,
) {
    reply.created(
        &fs.cfg.ttl,
        attr,
        Generation(generation),
        FileHandle(fh),
        file_open_flags(fs),
    );
}
