//! Open files: open, read, write, flush, release, fsync, fallocate, lseek,
//! copy_file_range.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::fs::{Plyfs, Result};
use crate::handles::OpenFile;
use crate::node::Node;
use crate::ops::fileattr::Change;
use crate::sys::{self, Errno};

/// Whether open flags ask for writing (which needs the upper copy).
pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Opens a lower object without updating its access time, like kernel
/// overlayfs; O_NOATIME needs ownership or CAP_FOWNER, so fall back.
pub fn open_noatime(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &crate::names::Name,
    flags: i32,
) -> Result<OwnedFd> {
    sys::fs::openat_noatime(dir, name.as_cstr(), flags)
}

impl Plyfs {
    /// Flags used to open a real file for a request's open flags.
    pub fn real_open_flags(&self, flags: i32) -> i32 {
        // O_DIRECT stays with the kernel's side of the handle (it bypasses
        // the FUSE page cache): plyfs's own buffers are not aligned for it,
        // and the kernel's writeback may write partial pages through any
        // handle of the file.
        let mut f = (flags
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC | libc::O_DIRECT))
            | libc::O_NOFOLLOW;
        if self.io.writeback() {
            // The kernel's writeback cache reads pages of write-only files
            // and does appends itself.
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    /// Opens the real file of `node` (upper if it has one), copying it up
    /// first when `flags` write.
    pub fn open_node_fd(&self, node: &Arc<Node>, flags: i32, caller_uid: u32) -> Result<OwnedFd> {
        if node.kind != libc::S_IFREG {
            return Err(if node.is_dir() {
                Errno::EISDIR
            } else {
                Errno::ENXIO
            });
        }
        if wants_write(flags) {
            self.upper_layer()?;
            self.check_change(
                node,
                Change::Write {
                    append: flags & libc::O_APPEND != 0,
                    truncate: flags & libc::O_TRUNC != 0,
                },
            )?;
            // O_TRUNC: the data would be thrown away right after.
            self.copy_up_with_data(node, flags & libc::O_TRUNC != 0)?;
        }
        let real = self.real_open_flags(flags);
        let meta = node.metacopy();
        let fd = if let Some(d) = meta.filter(|_| !wants_write(flags)) {
            // A metacopy file: its data is in another layer.
            self.open_metacopy_data(&d, real)?
        } else if node.has_upper() {
            self.open_upper(node, real)?
        } else {
            let lower = node.top_lower()?;
            let (pfd, name) = lower.locate()?;
            let fd = open_noatime(pfd.as_fd(), &name, real)?;
            self.refuse_lower_metacopy(fd.as_fd())?;
            fd
        };
        if flags & libc::O_TRUNC != 0 {
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                // open(O_RDONLY|O_TRUNC) truncates too (the kernel checked
                // write permission): through a writable descriptor.
                let w = self.open_upper(node, libc::O_WRONLY | libc::O_NOFOLLOW)?;
                self.quota_measure(
                    node,
                    w.as_fd(),
                    |_, _| 0,
                    || sys::io::ftruncate(w.as_fd(), 0),
                )?;
            } else {
                self.quota_measure(
                    node,
                    fd.as_fd(),
                    |_, _| 0,
                    || sys::io::ftruncate(fd.as_fd(), 0),
                )?;
            }
            if caller_uid != 0 {
                self.kill_suid(node, fd.as_fd())?;
            }
        }
        Ok(fd)
    }

    /// Truncation by a caller without CAP_FSETID (taken as: not root)
    /// drops setuid, and setgid when group-executable, as the VFS does.
    /// The kernel leaves this to the filesystem for an atomic O_TRUNC open.
    fn kill_suid(&self, node: &Arc<Node>, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        let mode = u32::from(self.node_attr(node)?.perm);
        let mut kill = mode & libc::S_ISUID;
        if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            kill |= libc::S_ISGID;
        }
        if kill == 0 {
            return Ok(());
        }
        if self.override_attr().is_some() {
            self.store_override(node, None, None, Some(mode & !kill))?;
        } else {
            sys::fs::fchmod(fd, mode & !kill & 0o7777)?;
        }
        // The open reply carries no attributes.
        self.kernel.attrs_changed(node.ino);
        Ok(())
    }

    pub fn do_open(&self, ino: u64, flags: i32, caller_uid: u32) -> Result<(u64, Arc<OpenFile>)> {
        let node = self.node(ino)?;
        let fd = self.open_node_fd(&node, flags, caller_uid)?;
        let on_upper = self.upper_has_data(&node);
        Ok(self.register_file(node, fd, on_upper, flags))
    }

    pub fn register_file(
        &self,
        node: Arc<Node>,
        fd: OwnedFd,
        on_upper: bool,
        flags: i32,
    ) -> (u64, Arc<OpenFile>) {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        self.handles
            .add_file(OpenFile::new(node, fd, on_upper, flags))
    }

    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.handles.file(fh).ok_or(Errno::EBADF)
    }

    /// A read-only handle opened on a lower file follows the file to the
    /// upper layer once it was copied up (as kernel overlayfs does).
    pub fn refresh_handle(&self, f: &OpenFile) -> Result<()> {
        if f.is_on_upper() || !self.upper_has_data(&f.node) {
            return Ok(());
        }
        let fd = self.open_upper(&f.node, self.real_open_flags(f.flags))?;
        f.switch_to_upper(fd);
        Ok(())
    }

    pub fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let f = self.handle(fh)?;
        self.refresh_handle(&f)?;
        sys::io::pread_vec(f.fd().as_fd(), size as usize, offset)
    }

    pub fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let f = self.handle(fh)?;
        if !f.is_on_upper() {
            return Err(Errno::EBADF);
        }
        let fd = f.fd();
        self.quota_write(&f.node, fd.as_fd(), offset, data.len() as u64, || {
            sys::io::pwrite_all(fd.as_fd(), data, offset)
        })
    }

    pub fn do_release(&self, fh: u64) {
        if let Some(f) = self.handles.remove_file(fh) {
            crate::tuning::released(&f);
            self.quota_release(&f.node, f.fd().as_fd());
        }
    }

    pub fn do_fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let f = self.handle(fh)?;
        if self.cfg.volatile || !f.is_on_upper() {
            return Ok(());
        }
        sys::io::fsync(f.fd().as_fd(), datasync)
    }

    pub fn do_fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let f = self.handle(fh)?;
        if !f.is_on_upper() {
            return Err(Errno::EBADF);
        }
        let fd = f.fd();
        self.quota_fallocate(&f.node, fd.as_fd(), mode, offset, len, || {
            sys::io::fallocate(fd.as_fd(), mode, offset, len)
        })
    }

    pub fn do_lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        // With the writeback cache the kernel may hold dirty pages (and a
        // larger size) plyfs has not seen: SEEK_DATA/SEEK_HOLE answered from
        // the upper file would skip that data or fail with ENXIO. ENOSYS
        // makes the kernel answer from its own size (all data, no holes).
        if self.io.writeback() {
            return Err(Errno::ENOSYS);
        }
        let f = self.handle(fh)?;
        self.refresh_handle(&f)?;
        sys::io::lseek(f.fd().as_fd(), offset, whence)
    }

    pub fn do_copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        let fin = self.handle(fh_in)?;
        let fout = self.handle(fh_out)?;
        self.refresh_handle(&fin)?;
        if !fout.is_on_upper() {
            return Err(Errno::EBADF);
        }
        let len = len.min(1 << 30) as usize;
        let out = fout.fd();
        self.quota_write(&fout.node, out.as_fd(), off_out, len as u64, || {
            sys::io::copy_file_range(fin.fd().as_fd(), off_in, out.as_fd(), off_out, len)
        })
    }
}
