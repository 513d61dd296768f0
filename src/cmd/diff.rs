//! `plyfs diff [--lower L1:L2...] UPPER [-o FILE]`

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::layer::diff::{DiffOptions, diff};
use crate::layer::meta::Ids;

const AFTER_HELP: &str = "\
The layer is an uncompressed OCI image-spec tar (PAX), written from the upper
directory alone: kernel whiteouts (0/0 devices), xattr whiteouts and .wh. files
become .wh.NAME, opaque directories get .wh..wh..opq, hard links stay hard
links; owners, modes, mtimes, xattrs (but overlay markers) and devices are kept.
A directory renamed with overlay.redirect is written in full under its new name
(opaque) and its old name whited out; metacopy files carry their data, found
through their lower chain (metacopy lowers, absolute redirects into data-only
layers given after '::'). Both need the lower layers (--lower); without them
such an upper is refused.
Entries are sorted: the same upper gives the same bytes.

Live mounts: the upper of a mounted plyfs or kernel overlay can be diffed, but
the result is a consistent snapshot only while nothing writes to the mount
(pause the container first: podman pause / podman commit --pause).

Compression: pipe it, e.g. plyfs diff UPPER | zstd > layer.tar.zst

Examples:
  plyfs diff /c/diff -o layer.tar
  plyfs diff --lower /img/app:/img/base /c/diff | gzip > layer.tar.gz
  plyfs diff --lower /img/meta::/img/objects /c/diff -o layer.tar
  podman unshare plyfs diff ~/.local/share/containers/storage/overlay/ID/diff -o l.tar
";

/// Write an upper directory as an OCI layer tar (its changes over the lowers)
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Lower layers, top first (colon separated or repeated; data-only
    /// layers after `::`, as in lowerdir=); needed for redirected
    /// directories and metacopy files
    #[arg(short = 'l', long = "lower", value_name = "L1:L2...")]
    lower: Vec<OsString>,

    /// Write the layer to FILE instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,

    /// Map stored uids C+i to H+i in the layer (as the mount option uidmapping=)
    #[arg(long, value_name = "C:H:S[:C:H:S...]")]
    uidmap: Option<String>,

    /// Map stored gids C+i to H+i in the layer (as gidmapping=)
    #[arg(long, value_name = "C:H:S[:C:H:S...]")]
    gidmap: Option<String>,

    /// Owners and modes kept in user.fuseoverlayfs.override_stat (1) or
    /// user.containers.override_stat (2), as the mount option xattr_permissions=
    #[arg(long, value_name = "0|1|2", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    xattr_permissions: u8,

    /// Print a summary on standard error
    #[arg(short = 'v', long)]
    verbose: bool,

    /// The upper directory
    #[arg(value_name = "UPPER")]
    upper: PathBuf,
}

pub fn run(a: Args) -> Result<i32, String> {
    let (lowers, data_lowers) = super::lower_list(&a.lower)?;
    let o = DiffOptions {
        upper: a.upper.clone(),
        lowers,
        data_lowers,
        ids: Ids {
            uids: super::id_map("--uidmap", a.uidmap.as_deref())?,
            gids: super::id_map("--gidmap", a.gidmap.as_deref())?,
            override_attr: Ids::override_for(a.xattr_permissions),
        },
    };
    let stats = match &a.output {
        Some(path) => {
            if let (Ok(u), Some(Ok(p))) = (
                std::fs::canonicalize(&a.upper),
                path.parent()
                    .map(|p| {
                        if p.as_os_str().is_empty() {
                            std::path::Path::new(".")
                        } else {
                            p
                        }
                    })
                    .map(std::fs::canonicalize),
            ) && p.starts_with(&u)
            {
                return Err(format!(
                    "output {} must not be inside the upper directory",
                    path.display()
                ));
            }
            let f = std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let regular = f.metadata().is_ok_and(|m| m.is_file());
            let written = (|| {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                let s = diff(&o, &mut w)?;
                let f = w
                    .into_inner()
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                if regular {
                    f.sync_all()
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                }
                Ok::<_, String>(s)
            })();
            match written {
                Ok(s) => s,
                Err(e) => {
                    // No half-written layer is left behind.
                    if regular {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            }
        }
        None => {
            let out = std::io::stdout();
            if out.is_terminal() {
                return Err("refusing to write a tar to a terminal: use -o FILE or a pipe".into());
            }
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out.lock());
            let s = diff(&o, &mut w)?;
            w.flush().map_err(|e| format!("writing the layer: {e}"))?;
            s
        }
    };
    if a.verbose {
        eprintln!(
            "plyfs diff: {} entries ({} whiteouts, {} opaque directories, {} redirected directories, {} metacopy files, {} hard links), {} bytes of data{}",
            stats.entries,
            stats.whiteouts,
            stats.opaque_dirs,
            stats.redirected_dirs,
            stats.metacopy_files,
            stats.hard_links,
            stats.data_bytes,
            if stats.skipped > 0 {
                format!(", {} sockets skipped", stats.skipped)
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}
