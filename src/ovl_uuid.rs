//! `uuid=`: the overlay's persistent identity, `overlay.uuid` on the upper
//! root, kept the way the kernel keeps it so that either mounts the same
//! upper as the same overlay.
//!
//! `on` stores a random UUID on the upper root when it has none; `auto`
//! (the default) uses a stored one, and stores one on the first mount of
//! a new upper (its root not yet marked impure), else acts as `null`;
//! `null` and `off` leave the upper alone. The kernel reports the UUID as
//! the mount's fsid; a FUSE mount has no field for it (statfs f_fsid of a
//! FUSE mount is the FUSE default), so for plyfs the UUID matters on disk
//! only. `off` also makes file handles carry a null UUID (see `origin`).

use std::os::fd::BorrowedFd;

use crate::options::UuidMode;
use crate::ovl_xattr::{self, Prefix};
use crate::sys::{self, Errno};

/// Applies `mode` to the upper root `root` (a directory descriptor);
/// returns the mode in effect and the overlay's UUID, if it has one.
pub fn init(mode: UuidMode, root: BorrowedFd<'_>, prefix: Prefix) -> (UuidMode, Option<[u8; 16]>) {
    if matches!(mode, UuidMode::Null | UuidMode::Off) {
        return (mode, None);
    }
    let attr = prefix.name(ovl_xattr::UUID);
    match sys::xattr::fget(root, &attr) {
        Ok(v) if v.len() == 16 => {
            let mut u = [0u8; 16];
            u.copy_from_slice(&v);
            return (mode, Some(u));
        }
        Ok(_) => {}
        Err(e) if e.code() == libc::ENODATA => {}
        Err(e) => {
            log::warn!("cannot read the overlay uuid ({e:?}); falling back to uuid=null");
            return (UuidMode::Null, None);
        }
    }
    let mut effective = mode;
    if mode == UuidMode::Auto {
        // An upper already used (impure root) keeps uuid=null, as in the
        // kernel: only a new overlay gets a persistent UUID unasked.
        match sys::xattr::fget(root, &prefix.name(ovl_xattr::IMPURE)) {
            Ok(_) => return (UuidMode::Null, None),
            Err(e) if e.code() == libc::ENODATA => effective = UuidMode::On,
            Err(e) => {
                log::warn!("cannot read the upper root's markers ({e:?}); uuid=null");
                return (UuidMode::Null, None);
            }
        }
    }
    let u = match generate() {
        Ok(u) => u,
        Err(e) => {
            log::warn!("no random UUID ({e:?}); falling back to uuid=null");
            return (UuidMode::Null, None);
        }
    };
    match sys::xattr::fset(root, &attr, &u, 0) {
        Ok(()) => (effective, Some(u)),
        Err(e) => {
            log::warn!("cannot store the overlay uuid ({e:?}); falling back to uuid=null");
            (UuidMode::Null, None)
        }
    }
}

/// A random (version 4) UUID.
fn generate() -> Result<[u8; 16], Errno> {
    let mut u = [0u8; 16];
    sys::process::random_bytes(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}
