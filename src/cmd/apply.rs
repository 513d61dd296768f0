//! `plyfs apply [--oci] LAYER.tar DIR`

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use crate::layer::apply::{ApplyOptions, Format, apply};
use crate::layer::meta::Ids;
use crate::ovl_xattr::Prefix;

const AFTER_HELP: &str = "\
Kernel format (the default): .wh.NAME becomes a whiteout (a 0/0 character
device; where mknod is refused, an xattr whiteout), .wh..wh..opq becomes
overlay.opaque=y, so DIR can be a lowerdir of plyfs and of kernel overlayfs.
Markers are trusted.overlay.* as root, user.overlay.* otherwise (or with
--userxattr). --oci keeps the .wh. files instead (the form containers-storage
keeps for a mount program).

Hostile archives: entries with absolute paths, '..', names over 255 bytes,
a parent that is not a directory (or is a symlink), hard links to anything but
a file inside DIR, and device nodes without privilege are refused one by one
(reported on standard error; the exit status is then 1); nothing outside DIR
is touched and symlinks are stored, never followed.

LAYER may be - for standard input. Compressed layers: decompress on the way,
e.g. zstd -dc layer.tar.zst | plyfs apply - DIR

Examples:
  plyfs apply layer.tar /img/layer3
  plyfs apply --oci layer.tar /var/lib/containers/storage/overlay/ID/diff
";

/// Extract a layer tar into a directory, in kernel overlay (or OCI) format
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Keep OCI whiteout files (.wh.NAME, .wh..wh..opq) as they are
    #[arg(long)]
    oci: bool,

    /// Write user.overlay.* markers even as root
    #[arg(long)]
    userxattr: bool,

    /// Do not set owners from the archive (the default when not root)
    #[arg(long)]
    no_same_owner: bool,

    /// Map layer uids H+i to stored uids C+i (as the mount option uidmapping=)
    #[arg(long, value_name = "C:H:S[:C:H:S...]")]
    uidmap: Option<String>,

    /// Map layer gids H+i to stored gids C+i (as gidmapping=)
    #[arg(long, value_name = "C:H:S[:C:H:S...]")]
    gidmap: Option<String>,

    /// Print a summary on standard error
    #[arg(short = 'v', long)]
    verbose: bool,

    /// The layer tar, or - for standard input
    #[arg(value_name = "LAYER")]
    layer: PathBuf,

    /// Where to extract (created if missing)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Names the compression of a stream by its first bytes.
fn compression(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip (zcat)")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd (zstd -dc)")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz (xz -dc)")
    } else if head.starts_with(b"BZh") {
        Some("bzip2 (bzip2 -dc)")
    } else {
        None
    }
}

pub fn run(a: Args) -> Result<i32, String> {
    let mut o = ApplyOptions::for_caller();
    if a.oci {
        o.format = Format::Oci;
    }
    if a.userxattr {
        o.prefix = Prefix::User;
    }
    if a.no_same_owner {
        o.chown = false;
    }
    o.ids = Ids {
        uids: super::id_map("--uidmap", a.uidmap.as_deref())?,
        gids: super::id_map("--gidmap", a.gidmap.as_deref())?,
        override_attr: None,
    };
    let inp: Box<dyn Read> = if a.layer.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&a.layer)
                .map_err(|e| format!("cannot open {}: {e}", a.layer.display()))?,
        )
    };
    let mut inp = BufReader::with_capacity(1 << 20, inp);
    let head = inp
        .fill_buf()
        .map_err(|e| format!("reading {}: {e}", a.layer.display()))?;
    if let Some(kind) = compression(head) {
        return Err(format!(
            "{} is compressed with {kind}: decompress it into plyfs apply - DIR",
            a.layer.display()
        ));
    }
    let mut report = |path: &[u8], why: &str| {
        eprintln!(
            "plyfs apply: refused {:?}: {why}",
            String::from_utf8_lossy(path)
        );
    };
    let stats = apply(inp, &a.dir, &o, &mut report)?;
    if a.verbose {
        eprintln!(
            "plyfs apply: {} entries, {} refused, {} whiteouts, {} opaque directories, {} bytes of data{}",
            stats.entries,
            stats.refused,
            stats.whiteouts,
            stats.opaque_dirs,
            stats.data_bytes,
            if stats.dropped_attrs > 0 {
                format!(", {} owners or attributes not set", stats.dropped_attrs)
            } else {
                String::new()
            }
        );
    }
    if stats.refused > 0 {
        eprintln!(
            "plyfs apply: {} of {} entries refused",
            stats.refused, stats.entries
        );
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression() {
        assert!(compression(&[0x1f, 0x8b, 8]).is_some());
        assert!(compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]).is_some());
        assert!(compression(b"usr/\0\0\0").is_none());
    }
}
