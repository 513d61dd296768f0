//! Command line: fuse-overlayfs and mount(8) compatible.
//!
//! `plyfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT`
//! `plyfs SOURCE MOUNTPOINT -o ...` (what `mount -t fuse.plyfs` runs)

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::Parser;

use crate::daemon::MountRequest;
use crate::options::MountOptions;

const AFTER_HELP: &str = "\
Mount options (-o, comma separated):
  lowerdir=A:B:C      read-only layers, leftmost on top (\\: escapes a colon, \\, a comma)
  lowerdir=A::D1::D2  layers after '::' are data-only: reached only through absolute
                      redirects of metacopy files in the layers above (composefs images)
  lowerdir+=DIR, datadir+=DIR   add one layer (new mount API form; repeatable, no escaping)
  upperdir=DIR        writable layer (needs workdir); without it the mount is read-only
  workdir=DIR         directory on the upper's mount, for staging (work/ inside it)
  volatile, fsync=0   never fsync (for throwaway containers); leaves work/incompat/volatile,
                      which (as for the kernel) later mounts refuse until it is removed
  userxattr           write user.overlay.* markers instead of trusted.overlay.*
  redirect_dir=on|copy|follow|off|nofollow   renaming a directory with lower content:
                      record overlay.redirect (on), copy the tree up (copy), EXDEV (follow/off),
                      and with nofollow also ignore existing redirects
  metacopy=on|off     chown/chmod/utimes/xattr changes copy metadata only (overlay.metacopy),
                      data on the first write; off (default) refuses metacopy files (EPERM)
  index=on|off        the kernel's inode index in WORKDIR/index: lower hard links stay one
                      file with the kernel's link counts; the upper remembers its lowers
  nfs_export=on|off   refused when on: a FUSE mount cannot serve NFS handles of forgotten inodes
  uuid=auto|on|null|off   overlay.uuid on the upper (auto: new uppers), null/off: none
  verity=off|on|require   check fs-verity digests recorded in overlay.metacopy on open
                      (require: every metacopy file must have one)
  uidmapping=C:H:S[:C:H:S...], gidmapping=...   ids C+i in the layers show as H+i
                      (as fuse-overlayfs; a user namespace mapping C->H then sees C+i)
  xattr_permissions=0|1|2   keep owner/mode in user.fuseoverlayfs/containers.override_stat
  squash_to_root, squash_to_uid=N, squash_to_gid=N   show every file as owned by N
  static_nlink        report directory link counts as 1
  noacl               disable POSIX ACLs
  xino=off|auto|on    layers on several filesystems: filesystem index in the top bits of
                      inode numbers (auto, on), or per-mount numbers for other filesystems (off)
  ino32_t             keep inode numbers below 2^32
  timeout=SECONDS     kernel cache timeout for names and attributes (default 86400)
  threads=N           worker threads (default: one per CPU)
  passthrough=on|all|off   kernel passthrough (root): upper files (on, default), also lower
                      files opened read-only (all), or none (off)
  writeback=on|off    kernel writeback cache when not passing through (default on)
  uring=auto|on|off   FUSE over io_uring (Linux 6.14+, enable_uring=Y): auto uses
                      it when the kernel offers it, on fails the mount otherwise
                      (default: $PLYFS_URING, else auto)
  size=BYTES          most the upper layer may hold (k, M, G, T suffixes; data, directories,
                      copy-ups; existing content counted): beyond it writes fail with ENOSPC,
                      df shows the limit; kept across remounts; no writeback cache/passthrough
  inodes=N            most objects the upper layer may hold (ENOSPC beyond; df -i shows it)
  log=syslog|FILE     where the daemon logs (default: stderr with -f, else syslog/journal),
                      at RUST_LOG's level (-d: debug); SIGUSR1 writes request figures there
  allow_other, allow_root, default_permissions, auto_unmount, fsname=, subtype=
  ro, nodev, nosuid, noexec, noatime, sync, dirsync
Accepted and ignored: rw, dev, suid, exec, relatime, lazytime, atime, context=..., private, ...

Examples:
  plyfs -o lowerdir=/img/top:/img/base,upperdir=/c/diff,workdir=/c/work /c/merged
  mount -t fuse.plyfs overlay /c/merged -o lowerdir=...,upperdir=...,workdir=...
  plyfs --version     the FUSE protocol and what this kernel offers (passthrough, io_uring)
  plyfs status /c/merged            layers, options, I/O mode, usage, requests (--json)
  plyfs layer add /c/merged /img/x  a new top lower layer, live (layer remove takes one out)
";

/// Mount options, examples, then the subcommands.
fn after_help() -> String {
    format!("{AFTER_HELP}\n{}", crate::cmd::summary())
}

#[derive(Parser, Debug)]
#[command(
    name = "plyfs",
    version,
    about = "A userspace union filesystem, interchangeable with kernel overlayfs",
    after_help = after_help()
)]
pub struct Cli {
    /// Stay in the foreground
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Debug logging (implies -f)
    #[arg(short = 'd', long)]
    pub debug: bool,

    /// Single-threaded (accepted for libfuse compatibility)
    #[arg(short = 's')]
    pub single_threaded: bool,

    /// Mount options, comma separated (may be repeated)
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<OsString>,

    /// Lower directories, top first (repeatable, or colon separated)
    #[arg(long, value_name = "DIR")]
    pub lower: Vec<OsString>,

    /// Upper (writable) directory
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,

    /// Work directory (same filesystem as the upper directory)
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,

    #[arg(
        value_name = "[SOURCE] MOUNTPOINT",
        num_args = 1..=2,
        required = true,
        help = "[SOURCE] MOUNTPOINT"
    )]
    pub paths: Vec<OsString>,
}

impl Cli {
    /// Turns the parsed command line into a mount request.
    pub fn into_request(self) -> Result<MountRequest, String> {
        let mut o = MountOptions::default();
        for opt in &self.options {
            o.apply_str(opt.as_bytes())?;
        }
        // Which of two spellings would win is not obvious: refuse both.
        for (flag, given, opt, set) in [
            (
                "--lower",
                !self.lower.is_empty(),
                "lowerdir=",
                !o.lowers.is_empty(),
            ),
            (
                "--upper",
                self.upper.is_some(),
                "upperdir=",
                o.upper.is_some(),
            ),
            ("--work", self.work.is_some(), "workdir=", o.work.is_some()),
        ] {
            if given && set {
                return Err(format!(
                    "{flag} and -o {opt} both given: use one or the other"
                ));
            }
        }
        if !self.lower.is_empty() {
            let mut lowers = Vec::new();
            for l in &self.lower {
                for p in crate::options::split_lowerdir(l.as_bytes()) {
                    lowers.push(PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(
                        &p,
                    ))));
                }
            }
            o.lowers = lowers;
        }
        if let Some(u) = self.upper {
            o.upper = Some(u);
        }
        if let Some(w) = self.work {
            o.work = Some(w);
        }
        if self.debug {
            o.debug = true;
        }
        if self.single_threaded {
            o.threads = Some(1);
        }
        if o.uring.is_none() {
            o.uring = crate::options::Uring::from_env()?;
        }
        let (source, mountpoint) = match self.paths.as_slice() {
            [m] => (None, m.clone()),
            [s, m] => (Some(s.to_string_lossy().into_owned()), m.clone()),
            _ => return Err("expected [SOURCE] MOUNTPOINT".into()),
        };
        Ok(MountRequest {
            foreground: self.foreground || o.debug,
            options: o,
            source,
            mountpoint: PathBuf::from(mountpoint),
        })
    }
}

/// A clap error as one line (its first paragraph, without the `error: `
/// prefix): plyfs reports every input error on one line.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    msg.join(" ").trim_start_matches("error: ").to_string()
}
