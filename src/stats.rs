//! Request counters per FUSE operation, for tuning: logged at unmount and
//! on SIGUSR1 (at info level: run with -d or RUST_LOG=plyfs=info).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// FUSE operations plyfs counts.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        pub enum Op { $($name),* }
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

ops!(
    lookup,
    forget,
    getattr,
    setattr,
    readlink,
    mknod,
    mkdir,
    unlink,
    rmdir,
    symlink,
    rename,
    link,
    open,
    read,
    write,
    flush,
    release,
    fsync,
    opendir,
    readdir,
    readdirplus,
    releasedir,
    fsyncdir,
    statfs,
    setxattr,
    getxattr,
    listxattr,
    removexattr,
    access,
    create,
    fallocate,
    lseek,
    copy_file_range,
);

// Sized from the list above, so adding an operation cannot index past it.
static COUNTS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

#[inline]
pub fn count(op: Op) {
    COUNTS[op as usize].fetch_add(1, Ordering::Relaxed);
}

/// "op=count ..." for every operation seen so far.
pub fn summary() -> String {
    let mut s = String::new();
    for (i, c) in COUNTS.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            s.push_str(&format!("{}={} ", NAMES[i], n));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_counter() {
        count(Op::lookup);
        count(Op::copy_file_range);
        assert_eq!(NAMES.len(), COUNTS.len());
        assert!(summary().contains("copy_file_range=1"));
    }
}
