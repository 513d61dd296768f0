//! The chain of directory descriptors from a tree's root down to the
//! directory being worked on, with a bounded number of them open.
//!
//! Layer tools walk trees of any depth (10,000 levels and more) without
//! recursion and without joining path strings, so they hold a descriptor
//! for each level. Only the deepest [`MAX_OPEN`] levels (and the root) keep
//! theirs open; a closed level is reopened through `..` of its child when the
//! walk climbs back to it, and must still be the same directory (device and
//! inode), or the walk fails with ESTALE.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, Errno, SysResult};

/// Descriptors kept open besides the root's.
pub const MAX_OPEN: usize = 64;

struct Level {
    fd: Option<OwnedFd>,
    ident: (u64, u64),
}

pub struct DirChain {
    levels: Vec<Level>,
    /// Flags used to reopen a level through `..`.
    flags: i32,
    open: usize,
    /// Index of the shallowest level (besides the root) still open.
    first_open: usize,
}

impl DirChain {
    /// A chain whose root is `root`; levels are reopened with `flags`
    /// (`O_DIRECTORY` is added).
    pub fn new(root: OwnedFd, flags: i32) -> SysResult<DirChain> {
        let st = sys::fs::fstat(root.as_fd())?;
        Ok(DirChain {
            levels: vec![Level {
                fd: Some(root),
                ident: (st.dev, st.ino),
            }],
            flags: flags | libc::O_DIRECTORY,
            open: 0,
            first_open: 1,
        })
    }

    /// Number of levels below the root.
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The deepest level's descriptor.
    pub fn top(&self) -> BorrowedFd<'_> {
        // The deepest level is always open (push stores it, pop reopens it).
        match self.levels.last().and_then(|l| l.fd.as_ref()) {
            Some(fd) => fd.as_fd(),
            None => sys::fs::cwd(),
        }
    }

    /// Identity (device, inode) of the deepest level.
    pub fn top_ident(&self) -> (u64, u64) {
        self.levels.last().map(|l| l.ident).unwrap_or((0, 0))
    }

    /// Descends into `fd`, a directory the caller opened below the top.
    pub fn push(&mut self, fd: OwnedFd) -> SysResult<()> {
        let st = sys::fs::fstat(fd.as_fd())?;
        self.levels.push(Level {
            fd: Some(fd),
            ident: (st.dev, st.ino),
        });
        self.open += 1;
        while self.open > MAX_OPEN && self.first_open < self.levels.len() - 1 {
            self.levels[self.first_open].fd = None;
            self.first_open += 1;
            self.open -= 1;
        }
        Ok(())
    }

    /// Climbs one level (never above the root).
    pub fn pop(&mut self) -> SysResult<()> {
        if self.levels.len() <= 1 {
            return Err(Errno::EINVAL);
        }
        let child = self.levels.pop().and_then(|l| l.fd);
        self.open = self.open.saturating_sub(1);
        let top = self.levels.len() - 1;
        if self.levels[top].fd.is_none() {
            let child = child.ok_or(Errno::EIO)?;
            let fd = sys::fs::openat(child.as_fd(), c"..", self.flags, 0)?;
            let st = sys::fs::fstat(fd.as_fd())?;
            if (st.dev, st.ino) != self.levels[top].ident {
                return Err(Errno::ESTALE);
            }
            self.levels[top].fd = Some(fd);
            self.open += 1;
            self.first_open = top;
        }
        if self.first_open > self.levels.len() - 1 {
            self.first_open = self.levels.len().max(2) - 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn deep_chain_keeps_few_descriptors() {
        let tmp = std::env::temp_dir().join(format!("plyfs-dirchain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).unwrap();
        let c = CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
        let root = sys::fs::open_cwd(&c, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        let mut chain = DirChain::new(root, libc::O_RDONLY).unwrap();
        let before = sys::fs::open_fd_count();
        let mut idents = vec![chain.top_ident()];
        for _ in 0..300 {
            sys::fs::mkdirat(chain.top(), c"d", 0o755).unwrap();
            let fd = sys::fs::openat(
                chain.top(),
                c"d",
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .unwrap();
            chain.push(fd).unwrap();
            idents.push(chain.top_ident());
        }
        assert!(sys::fs::open_fd_count() <= before + MAX_OPEN + 2);
        for _ in 0..300 {
            assert_eq!(chain.top_ident(), idents.pop().unwrap());
            chain.pop().unwrap();
        }
        assert_eq!(chain.top_ident(), idents.pop().unwrap());
        assert!(chain.pop().is_err());
        drop(chain);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
