//! Reading directories with `getdents64`.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{SysResult, check_size, retry};

/// One raw directory entry. `.` and `..` are skipped by [`read_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub ino: u64,
    /// `DT_*` value; `DT_UNKNOWN` on filesystems that do not fill it.
    pub d_type: u8,
    pub name: Vec<u8>,
}

/// Reads every entry of an open (non-`O_PATH`) directory descriptor and
/// calls `f` for each, skipping `.` and `..`. Reads from the current offset.
pub fn read_dir(fd: BorrowedFd<'_>, mut f: impl FnMut(RawEntry)) -> SysResult<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = retry(|| {
            // SAFETY: `buf` is writable for its length; getdents64 writes at most that.
            check_size(unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                ) as libc::ssize_t
            })
        })?;
        if n == 0 {
            return Ok(());
        }
        parse(&buf[..n], &mut f);
    }
}

/// Parses a `getdents64` buffer. Kept separate from the syscall so it can be
/// tested on hand-made buffers.
fn parse(mut buf: &[u8], f: &mut impl FnMut(RawEntry)) {
    // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
    const HEADER: usize = 19;
    while buf.len() >= HEADER {
        let ino = u64::from_ne_bytes(buf[0..8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([buf[16], buf[17]]) as usize;
        let d_type = buf[18];
        if reclen < HEADER || reclen > buf.len() {
            return;
        }
        let name_area = &buf[HEADER..reclen];
        let len = name_area
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_area.len());
        let name = &name_area[..len];
        if name != b"." && name != b".." {
            f(RawEntry {
                ino,
                d_type,
                name: name.to_vec(),
            });
        }
        buf = &buf[reclen..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, d_type: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut v = vec![0u8; reclen];
        v[0..8].copy_from_slice(&ino.to_ne_bytes());
        v[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        v[18] = d_type;
        v[19..19 + name.len()].copy_from_slice(name);
        v
    }

    #[test]
    fn parses_entries_and_skips_dots() {
        let mut buf = record(1, libc::DT_DIR, b".");
        buf.extend(record(2, libc::DT_DIR, b".."));
        buf.extend(record(7, libc::DT_REG, b"file"));
        buf.extend(record(9, libc::DT_LNK, b"\xff\xfe"));
        let mut out = Vec::new();
        parse(&buf, &mut |e| out.push(e));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name, b"file");
        assert_eq!(out[0].ino, 7);
        assert_eq!(out[1].name, b"\xff\xfe");
        assert_eq!(out[1].d_type, libc::DT_LNK);
    }

    #[test]
    fn stops_on_truncated_record() {
        let mut buf = record(7, libc::DT_REG, b"file");
        buf.truncate(buf.len() - 1);
        let mut n = 0;
        parse(&buf, &mut |_| n += 1);
        assert_eq!(n, 0);
    }
}
