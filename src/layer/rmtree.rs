//! Removing a directory tree by descriptors, without recursion.
//!
//! Used when an archive entry replaces a directory with something else.
//! Every name is removed relative to a descriptor of its directory, opened
//! with `O_NOFOLLOW`: a symlink in the tree is removed, never followed.

use std::os::fd::BorrowedFd;

use crate::layer::dirchain::DirChain;
use crate::names::Name;
use crate::sys::{self, SysResult};

/// Removes `name` in `dir` and, if it is a directory, everything below it.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &Name) -> SysResult<()> {
    match sys::fs::unlinkat(dir, name.as_cstr(), false) {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == libc::EISDIR || e.code() == libc::EPERM => {}
        Err(e) => return Err(e),
    }
    let top = open(dir, name)?;
    let mut chain = DirChain::new(top, libc::O_RDONLY)?;
    // Names of the directories entered below `name`, deepest last.
    let mut names: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut subdir = None;
        let mut entries = Vec::new();
        // The directory may have been read before a subdirectory was
        // entered: read it from the start.
        sys::io::lseek(chain.top(), 0, libc::SEEK_SET)?;
        sys::dirent::read_dir(chain.top(), |e| entries.push(e.name))?;
        for e in entries {
            let n = Name::new(&e)?;
            match sys::fs::unlinkat(chain.top(), n.as_cstr(), false) {
                Ok(()) => {}
                Err(err) if err.code() == libc::EISDIR || err.code() == libc::EPERM => {
                    subdir = Some(n);
                    break;
                }
                Err(err) if err.code() == libc::ENOENT => {}
                Err(err) => return Err(err),
            }
        }
        if let Some(n) = subdir {
            let fd = open(chain.top(), &n)?;
            chain.push(fd)?;
            names.push(n.as_bytes().to_vec());
            continue;
        }
        // This directory is empty now.
        match names.pop() {
            Some(child) => {
                chain.pop()?;
                let n = Name::new(&child)?;
                sys::fs::unlinkat(chain.top(), n.as_cstr(), true)?;
            }
            None => break,
        }
    }
    drop(chain);
    sys::fs::unlinkat(dir, name.as_cstr(), true)
}

fn open(dir: BorrowedFd<'_>, name: &Name) -> SysResult<std::os::fd::OwnedFd> {
    sys::fs::openat(
        dir,
        name.as_cstr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsFd;

    #[test]
    fn removes_deep_trees_and_keeps_symlink_targets() {
        let tmp = std::env::temp_dir().join(format!("plyfs-rmtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("keep")).unwrap();
        std::fs::write(tmp.join("keep/f"), b"x").unwrap();
        let mut p = tmp.join("t");
        for i in 0..200 {
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(format!("f{i}")), b"x").unwrap();
            std::os::unix::fs::symlink(tmp.join("keep"), p.join("l")).unwrap();
            p = p.join("d");
        }
        let c = CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
        let root = sys::fs::open_cwd(&c, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        remove_tree(root.as_fd(), &Name::new(b"t").unwrap()).unwrap();
        assert!(!tmp.join("t").exists());
        assert!(tmp.join("keep/f").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
