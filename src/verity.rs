//! fs-verity digests of metacopy files (`verity=on|require`).
//!
//! A metacopy copy-up records the fs-verity digest of the lower data file
//! in `overlay.metacopy` when that file has one; opening a metacopy file
//! whose value carries a digest measures the data file
//! (`FS_IOC_MEASURE_VERITY`) and refuses a mismatch with EIO, as the
//! kernel's `ovl_validate_verity` does. Where the data file's filesystem or
//! the kernel has no fs-verity, a recorded digest cannot be checked: the
//! open fails with EIO and the log says why.

use std::os::fd::BorrowedFd;

use crate::fs::Result;
use crate::metacopy::MetacopyValue;
use crate::options::Verity;
use crate::sys::{self, Errno};

/// The fs-verity digest of an open file as (algorithm, digest); `None`
/// when the file has none or its filesystem cannot have one.
pub fn measure(fd: BorrowedFd<'_>) -> Result<Option<(u8, Vec<u8>)>> {
    match sys::io::measure_verity(fd) {
        Ok((algo, digest)) => Ok(u8::try_from(algo).ok().map(|a| (a, digest))),
        Err(e)
            if matches!(
                e.code(),
                libc::ENODATA | libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a digest recorded in `value` matches a measurement.
pub fn matches(value: &MetacopyValue, measured: &Option<(u8, Vec<u8>)>) -> bool {
    matches!(measured, Some((algo, digest)) if *algo == value.digest_algo && *digest == value.digest)
}

/// Checks the data file `data` of a metacopy file whose metadata object
/// has the value `value`.
pub fn validate(mode: Verity, value: &MetacopyValue, data: BorrowedFd<'_>) -> Result<()> {
    if mode == Verity::Off {
        return Ok(());
    }
    if value.digest_algo == 0 {
        if mode == Verity::Require {
            log::warn!("metacopy file has no fs-verity digest (verity=require)");
            return Err(Errno::EIO);
        }
        return Ok(());
    }
    let measured = match sys::io::measure_verity(data) {
        Ok((algo, digest)) => u8::try_from(algo).ok().map(|a| (a, digest)),
        Err(e) if e.code() == libc::ENODATA => {
            log::warn!("the lower data file of a metacopy file has no fs-verity digest");
            return Err(Errno::EIO);
        }
        Err(e) => {
            log::warn!(
                "cannot check the fs-verity digest of a metacopy file's data: the lower \
                 filesystem or the kernel has no fs-verity ({e:?})"
            );
            return Err(Errno::EIO);
        }
    };
    if !matches(value, &measured) {
        log::warn!("the lower data file of a metacopy file has the wrong fs-verity digest");
        return Err(Errno::EIO);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_comparison() {
        let v = MetacopyValue {
            flags: 0,
            digest_algo: 1,
            digest: vec![1, 2, 3],
        };
        assert!(matches(&v, &Some((1, vec![1, 2, 3]))));
        assert!(!matches(&v, &Some((2, vec![1, 2, 3]))));
        assert!(!matches(&v, &Some((1, vec![1, 2, 4]))));
        assert!(!matches(&v, &None));
    }
}
