//! The filesystem operations, one module per group. Each returns
//! `Result<T, Errno>`; the FUSE glue in `fuse.rs` only decodes and replies.

pub mod create;
pub mod dir;
pub mod file;
pub mod fileattr;
pub mod lookup;
pub mod remove;
pub mod rename;
pub mod setattr;
pub mod xattr;

/// The caller of a request, in merged-view ids.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, for creations (applied by plyfs when the kernel
    /// leaves it to the filesystem, `FUSE_DONT_MASK`).
    pub umask: u32,
}
