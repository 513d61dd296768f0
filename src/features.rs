//! The kernel overlayfs features a mount asks for (`metacopy=`, `index=`,
//! `nfs_export=`, `redirect_dir=`, `verity=`, `uuid=`, `userxattr`) and how
//! they depend on each other.
//!
//! [`resolve`] follows the kernel's `ovl_fs_params_verify` (as of Linux
//! 6.18): an option given explicitly wins over a default that conflicts
//! with it, two explicit options that conflict are refused with the
//! kernel's message, and a default that conflicts with an explicit option
//! is turned off or on to fit. plyfs additions: `redirect_dir=copy` (never
//! creates redirects, so it suits `userxattr`), and `nfs_export=on` is
//! refused because a FUSE mount cannot serve NFS file handles of inodes the
//! kernel has forgotten.

use crate::options::{MountOptions, RedirectMode, UuidMode, Verity};

/// The features in effect for a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// Metadata-only copy-up and following metacopy files.
    pub metacopy: bool,
    /// The inode index in `WORKDIR/index` (lower hard links).
    pub index: bool,
    pub verity: Verity,
    pub uuid: UuidMode,
    /// `redirect_dir=` after resolution; `None` leaves plyfs's default
    /// (which depends on the marker prefix).
    pub redirect: Option<RedirectMode>,
}

fn redirect_name(r: RedirectMode) -> &'static str {
    match r {
        RedirectMode::On => "on",
        RedirectMode::Copy => "copy",
        RedirectMode::Follow => "follow",
        RedirectMode::NoFollow => "nofollow",
    }
}

/// Works out the features of a mount from its options. `user_markers`:
/// the mount writes `user.overlay.*` markers (`userxattr`, or a daemon that
/// may not write `trusted.*`). Errors are one line for the user.
pub fn resolve(o: &MountOptions, has_upper: bool, user_markers: bool) -> Result<Features, String> {
    let set_metacopy = o.metacopy.is_some();
    let set_index = o.index.is_some();
    let set_nfs = o.nfs_export.is_some();
    let mut metacopy = o.metacopy.unwrap_or(false);
    let mut index = o.index.unwrap_or(false);
    let mut nfs_export = o.nfs_export.unwrap_or(false);
    let mut redirect = o.redirect;
    let mut uuid = o.uuid.unwrap_or_default();
    let verity = o.verity.unwrap_or_default();

    if !has_upper {
        // The index, and a generated uuid, need an upper layer: ignored.
        index = false;
        if uuid == UuidMode::On {
            uuid = UuidMode::Null;
        }
        if redirect == Some(RedirectMode::Follow) {
            redirect = Some(RedirectMode::On);
        }
    }

    // metacopy -> redirect_dir=on: renaming a metacopy file records where
    // its data is.
    if metacopy {
        match redirect {
            Some(RedirectMode::On) => {}
            Some(r) if set_metacopy => {
                return Err(format!(
                    "conflicting options: metacopy=on,redirect_dir={}",
                    redirect_name(r)
                ));
            }
            Some(_) => metacopy = false,
            None => {
                if !user_markers {
                    redirect = Some(RedirectMode::On);
                }
            }
        }
    }

    // nfs_export -> index.
    if nfs_export && !index {
        if !has_upper && redirect != Some(RedirectMode::NoFollow) {
            nfs_export = false;
        } else if set_nfs && set_index {
            return Err("conflicting options: nfs_export=on,index=off".into());
        } else if set_index {
            nfs_export = false;
        } else {
            index = true;
        }
    }
    // nfs_export -> no metacopy.
    if nfs_export && metacopy {
        if set_nfs && set_metacopy {
            return Err("conflicting options: nfs_export=on,metacopy=on".into());
        }
        if set_metacopy {
            nfs_export = false;
        } else {
            metacopy = false;
        }
    }

    // user.overlay.* markers: the kernel neither creates nor follows
    // redirects or metacopy files in that mode (anyone could write them).
    if user_markers {
        if o.userxattr
            && let Some(r @ (RedirectMode::On | RedirectMode::Follow)) = redirect
        {
            return Err(format!(
                "conflicting options: userxattr,redirect_dir={}",
                redirect_name(r)
            ));
        }
        if metacopy && set_metacopy {
            return Err(if o.userxattr {
                "conflicting options: userxattr,metacopy=on".into()
            } else {
                "metacopy=on needs trusted.overlay.* markers (CAP_SYS_ADMIN): a kernel mount \
                 reads user.overlay.* metacopy files only with userxattr, which refuses \
                 metacopy=on"
                    .into()
            });
        }
        metacopy = false;
    }

    if nfs_export {
        return Err(
            "nfs_export=on is not supported by plyfs: NFS file handles of a FUSE mount \
                    need every inode to be found again by its node id after the kernel forgot \
                    it, which plyfs cannot do (index=on keeps lower hard links together)"
                .into(),
        );
    }
    Ok(Features {
        metacopy,
        index,
        verity,
        uuid,
        redirect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(opts: &str, upper: bool, user: bool) -> Result<Features, String> {
        let mut o = MountOptions::default();
        o.apply_str(format!("lowerdir=/a,{opts}").as_bytes())?;
        resolve(&o, upper, user)
    }

    #[test]
    fn defaults_are_off() {
        let f = res("", true, false).unwrap();
        assert!(!f.metacopy && !f.index);
        assert_eq!(f.redirect, None);
        assert_eq!(f.uuid, UuidMode::Auto);
    }

    #[test]
    fn metacopy_and_redirect() {
        let f = res("metacopy=on", true, false).unwrap();
        assert!(f.metacopy);
        assert_eq!(f.redirect, Some(RedirectMode::On));
        for r in ["off", "follow", "nofollow", "copy"] {
            let e = res(&format!("metacopy=on,redirect_dir={r}"), true, false).unwrap_err();
            assert!(
                e.starts_with("conflicting options: metacopy=on,redirect_dir="),
                "{e}"
            );
        }
        // Without an upper layer, follow is as good as on.
        assert!(
            res("metacopy=on,redirect_dir=follow", false, false)
                .unwrap()
                .metacopy
        );
    }

    #[test]
    fn index_and_nfs_export() {
        assert!(res("index=on", true, false).unwrap().index);
        assert!(!res("index=on", false, false).unwrap().index);
        let e = res("nfs_export=on,index=off", true, false).unwrap_err();
        assert_eq!(e, "conflicting options: nfs_export=on,index=off");
        let e = res("nfs_export=on,metacopy=on", true, false).unwrap_err();
        assert_eq!(e, "conflicting options: nfs_export=on,metacopy=on");
        let e = res("nfs_export=on", true, false).unwrap_err();
        assert!(e.contains("not supported by plyfs"), "{e}");
        assert!(res("nfs_export=off,index=on", true, false).unwrap().index);
    }

    #[test]
    fn userxattr_conflicts() {
        let e = res("userxattr,redirect_dir=on", true, true).unwrap_err();
        assert_eq!(e, "conflicting options: userxattr,redirect_dir=on");
        let e = res("userxattr,metacopy=on", true, true).unwrap_err();
        assert_eq!(e, "conflicting options: userxattr,metacopy=on");
        assert!(res("userxattr,redirect_dir=nofollow", true, true).is_ok());
        assert!(res("userxattr,redirect_dir=copy", true, true).is_ok());
        assert!(res("metacopy=on", true, true).is_err());
    }

    #[test]
    fn uuid_without_upper() {
        assert_eq!(res("uuid=on", false, false).unwrap().uuid, UuidMode::Null);
        assert_eq!(res("uuid=off", true, false).unwrap().uuid, UuidMode::Off);
    }
}
