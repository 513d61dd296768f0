//! Open flags that reach the real file: O_DIRECT (databases, backup tools)
//! with and without passthrough, on lower and upper files; O_RDONLY|O_TRUNC,
//! which Linux honours when the caller may write the file.

mod common;

use common::*;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BLOCK: usize = 4096;

/// A heap buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).unwrap();
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, BLOCK).unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

fn open(p: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pread_direct(p: &Path, off: i64, len: usize) -> std::io::Result<Vec<u8>> {
    let fd = open(p, libc::O_RDONLY | libc::O_DIRECT)?;
    let mut buf = Aligned::new(len);
    let b = buf.as_mut();
    // SAFETY: valid descriptor and buffer.
    let n = unsafe { libc::pread(fd.as_raw_fd(), b.as_mut_ptr().cast(), len, off) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(b[..n as usize].to_vec())
}

fn pwrite_direct(p: &Path, flags: i32, off: i64, data: &[u8]) -> std::io::Result<()> {
    let fd = open(p, libc::O_WRONLY | libc::O_DIRECT | flags)?;
    let mut buf = Aligned::new(data.len());
    buf.as_mut().copy_from_slice(data);
    // SAFETY: valid descriptor and buffer.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.ptr.cast(), data.len(), off) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    assert_eq!(n as usize, data.len());
    Ok(())
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn direct_io(options: &str) {
    let l = Layers::new(1);
    let lower = pattern(1, 4 * BLOCK);
    write(&l.lower(0).join("lower"), &lower);
    let m = PlyfsMount::start(&l.mnt, &format!("{}{options}", l.options()), &[]).unwrap();
    let p = |n: &str| m.mnt.join(n);
    // Read of a file still only in the lower layer.
    assert_eq!(
        pread_direct(&p("lower"), 0, 4 * BLOCK).unwrap(),
        lower,
        "{options}"
    );
    assert_eq!(
        pread_direct(&p("lower"), BLOCK as i64, BLOCK).unwrap(),
        lower[BLOCK..2 * BLOCK].to_vec()
    );
    // Write into it (copy-up), then read back, directly and through the cache.
    let new = pattern(7, BLOCK);
    pwrite_direct(&p("lower"), 0, BLOCK as i64, &new).unwrap();
    let mut want = lower.clone();
    want[BLOCK..2 * BLOCK].copy_from_slice(&new);
    assert_eq!(pread_direct(&p("lower"), 0, 4 * BLOCK).unwrap(), want);
    assert_eq!(std::fs::read(p("lower")).unwrap(), want);
    // A new file written and read with O_DIRECT.
    let data = pattern(3, 8 * BLOCK);
    pwrite_direct(&p("new"), libc::O_CREAT, 0, &data).unwrap();
    assert_eq!(pread_direct(&p("new"), 0, 8 * BLOCK).unwrap(), data);
    assert_eq!(std::fs::read(p("new")).unwrap(), data);
    drop(m);
    assert_eq!(std::fs::read(l.upper.join("new")).unwrap(), data);
    assert_eq!(std::fs::read(l.upper.join("lower")).unwrap(), want);
}

#[test]
fn o_direct_with_default_options() {
    if require_fuse("o_direct_with_default_options") {
        direct_io("");
    }
}

#[test]
fn o_direct_without_passthrough() {
    if require_fuse("o_direct_without_passthrough") {
        direct_io(",passthrough=off");
    }
}

#[test]
fn o_direct_without_writeback_cache() {
    if require_fuse("o_direct_without_writeback_cache") {
        direct_io(",passthrough=off,writeback=off");
    }
}

/// open(O_RDONLY|O_TRUNC) truncates, on lower and on upper files, and the
/// lower layer keeps its data.
#[test]
fn o_rdonly_o_trunc_truncates() {
    if !require_fuse("o_rdonly_o_trunc_truncates") {
        return;
    }
    let l = Layers::new(1);
    write(&l.lower(0).join("lower"), b"lower data");
    let m = l.mount();
    std::fs::write(m.mnt.join("upper"), b"upper data").unwrap();
    for name in ["lower", "upper"] {
        let p = m.mnt.join(name);
        let fd = open(&p, libc::O_RDONLY | libc::O_TRUNC).unwrap_or_else(|e| panic!("{name}: {e}"));
        let f = std::fs::File::from(fd);
        assert_eq!(f.metadata().unwrap().len(), 0, "{name} (fstat)");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0, "{name} (stat)");
        assert_eq!(std::fs::read(&p).unwrap(), b"", "{name}");
    }
    drop(m);
    assert_eq!(
        std::fs::read(l.lower(0).join("lower")).unwrap(),
        b"lower data"
    );
    assert_eq!(std::fs::read(l.upper.join("lower")).unwrap(), b"");
}
