//! `plyfs --version`: the program, the FUSE protocol it speaks and what this
//! kernel offers a FUSE filesystem (read from /proc and /sys, no mount).

/// The text `plyfs --version` prints.
pub fn text() -> String {
    let (major, minor) = fuser::protocol_version();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let (kmaj, kmin) = kernel_version(&kernel);
    let at_least = |a: u32, b: u32| (kmaj, kmin) >= (a, b);
    let uring = match std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring") {
        Ok(v) if v.trim() == "Y" => "built in, enabled".to_string(),
        Ok(_) => "built in, off (echo Y > /sys/module/fuse/parameters/enable_uring)".into(),
        Err(_) if at_least(6, 14) => "not built into this kernel".into(),
        Err(_) => "needs Linux 6.14".into(),
    };
    let pages = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .map(|s| format!("{} (fs.fuse.max_pages_limit)", s.trim()))
        .unwrap_or_else(|_| "256".into());
    let yes_no = |b: bool, why: &str| {
        if b {
            "yes".to_string()
        } else {
            format!("no ({why})")
        }
    };
    format!(
        "plyfs {}\n\
         FUSE protocol {major}.{minor}\n\
         kernel {kernel}:\n  \
           passthrough: {}\n  \
           FUSE over io_uring: {uring}\n  \
           max pages per request: {pages}\n  \
           kernel overlayfs (reference): {}\n",
        env!("CARGO_PKG_VERSION"),
        if at_least(6, 9) {
            "yes, for root (CAP_SYS_ADMIN in the initial user namespace)".to_string()
        } else {
            yes_no(false, "needs Linux 6.9")
        },
        yes_no(
            std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")),
            "not loaded; modprobe overlay"
        ),
    )
}

/// (major, minor) of a kernel release string such as "6.18.44-xyz".
fn kernel_version(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions() {
        assert_eq!(super::kernel_version("6.18.44-fc-v1098"), (6, 18));
        assert_eq!(super::kernel_version("5.4.0"), (5, 4));
        assert!(super::text().contains("FUSE protocol 7."));
    }
}
