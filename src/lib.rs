//! plyfs: a userspace union filesystem on FUSE, interchangeable with kernel
//! overlayfs.
//!
//! Layout: `sys` holds every system call and all raw-pointer code; `options`,
//! `cli` and `setup` turn the command line into opened layers; `fs` holds
//! the mount's state, with `node`/`table`/`ino` for inodes, `lower` and
//! `fdcache` for reaching layer objects, `resolve` and `listing` for the
//! merged view, `copyup` and `workdir` for writes, and `ops/` for each group
//! of operations. `fuse` is the thin glue to the kernel; `daemon` mounts.

// All unsafe code lives in `sys`, each block with a SAFETY comment.
#![deny(unsafe_code)]

pub(crate) mod attr;
pub mod cli;
pub mod cmd;
pub(crate) mod control;
pub(crate) mod copyup;
pub mod daemon;
pub(crate) mod fdcache;
pub(crate) mod features;
pub mod fs;
pub(crate) mod fuse;
pub(crate) mod handles;
pub(crate) mod hardlinks;
pub(crate) mod idmap;
pub(crate) mod index;
pub(crate) mod ino;
pub(crate) mod inval;
pub mod layer;
pub(crate) mod layers_live;
pub(crate) mod listcache;
pub(crate) mod listing;
pub mod logging;
pub(crate) mod lower;
pub(crate) mod lowerset;
pub(crate) mod metacopy;
pub mod names;
pub(crate) mod node;
pub mod ops;
pub mod options;
pub(crate) mod origin;
pub(crate) mod override_stat;
pub(crate) mod ovl_uuid;
pub(crate) mod ovl_xattr;
pub(crate) mod quota;
pub(crate) mod rdplus;
pub(crate) mod resolve;
pub(crate) mod rmtree;
pub mod setup;
pub(crate) mod stats;
pub(crate) mod status;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub(crate) mod table;
pub(crate) mod tuning;
pub(crate) mod verity;
pub mod version;
pub mod whiteout;
pub(crate) mod workdir;

/// The effective uid of this process (for tests and examples that decide
/// between root-only and unprivileged checks).
pub use sys::process::geteuid;
