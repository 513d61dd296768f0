//! `plyfs layer add|remove MOUNTPOINT DIR`

use std::path::{Path, PathBuf};

use crate::control;

const AFTER_HELP: &str = "\
add puts DIR on top of the mount's lower layers (just below the upper layer);
remove takes a lower layer out (EBUSY while a file from it is open). The merged
view changes at once, as if the mount had been made with the new lowerdir=
list: the kernel's cached names, attributes and listings are dropped. Open
files keep the file they were opened on (new opens get what the name shows
now); working and open directories show the new merged content, and one the
change hides behaves as removed (ENOENT). add refuses a directory that is a
layer already, overlaps one, or lies in the upper, work or mount directory.
The upper layer is not changed, and a remount uses the lowerdir= it is given.
Only the mount's owner and root may change it (see plyfs status --help).

Examples:
  plyfs layer add /c/merged /img/hotfix
  plyfs status /c/merged          # shows the new list
  plyfs layer remove /c/merged /img/hotfix
";

/// Add a lower layer to a live mount, or remove one
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Put DIR on top of the lower layers of the mount at MOUNTPOINT
    Add { mountpoint: PathBuf, dir: PathBuf },
    /// Remove the lower layer DIR from the mount at MOUNTPOINT
    Remove { mountpoint: PathBuf, dir: PathBuf },
}

/// An absolute path for the daemon (which runs in `/`): symlinks resolved
/// when the directory exists, else made absolute as given.
fn absolute(dir: &Path) -> Result<PathBuf, String> {
    match std::fs::canonicalize(dir) {
        Ok(p) => Ok(p),
        Err(_) => std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display())),
    }
}

pub fn run(a: Args) -> Result<i32, String> {
    use std::os::unix::ffi::OsStrExt;
    let (verb, mnt, dir) = match &a.action {
        Action::Add { mountpoint, dir } => ("layer-add", mountpoint, dir),
        Action::Remove { mountpoint, dir } => ("layer-remove", mountpoint, dir),
    };
    let dir = absolute(dir)?;
    let socket = control::find(mnt)?;
    let msg = control::call(
        &socket,
        &control::request_line(verb, &[dir.as_os_str().as_bytes()]),
    )?;
    println!("plyfs: {}", msg.trim_end());
    Ok(0)
}
