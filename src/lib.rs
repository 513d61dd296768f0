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

pub mod attr;
pub mod cli;
pub mod cmd;
pub mod control;
pub mod copyup;
pub mod daemon;
pub mod fdcache;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod hardlinks;
pub mod idmap;
pub mod ino;
pub mod inval;
pub mod layer;
pub mod layers_live;
pub mod listing;
pub mod logging;
pub mod lower;
pub mod lowerset;
pub mod names;
pub mod node;
pub mod ops;
pub mod options;
pub mod origin;
pub mod override_stat;
pub mod ovl_xattr;
pub mod quota;
pub mod rdplus;
pub mod resolve;
pub mod rmtree;
pub mod setup;
pub mod stats;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
pub mod table;
pub mod tuning;
pub mod version;
pub mod whiteout;
pub mod workdir;
