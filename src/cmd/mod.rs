//! Subcommands of the `plyfs` binary (`plyfs diff`, `plyfs apply`, ...).
//!
//! The mount syntax (`plyfs [-f] [-d] -o ... MNT`, `plyfs SOURCE MNT -o ...`)
//! stays as it is: `main.rs` asks [`is_subcommand`] about the command line
//! and only then hands it to this parser. To add a subcommand: a module
//! here with its clap `Args` and `run`, a variant in `Command` and its
//! arm in [`main`], and a row in [`TABLE`] (a test checks the two agree).

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

pub mod apply;
pub mod diff;
pub mod docs;
pub mod layer;
pub mod status;

/// One subcommand: its name and a one-line summary (for `plyfs --help`).
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
}

/// Every subcommand, in the order `plyfs --help` lists them.
pub const TABLE: &[Entry] = &[
    Entry {
        name: "diff",
        about: "write an upper directory as an OCI layer tar (its changes over the lowers)",
    },
    Entry {
        name: "apply",
        about: "extract a layer tar into a directory, in kernel overlay (or OCI) format",
    },
    Entry {
        name: "status",
        about: "show a live mount's layers, options, daemon, I/O modes and request figures",
    },
    Entry {
        name: "layer",
        about: "add a lower layer to a live mount (layer add MNT DIR), or remove one",
    },
    Entry {
        name: "man",
        about: "print the manual page plyfs(1)",
    },
    Entry {
        name: "completions",
        about: "print shell completions (bash, zsh, fish, elvish, powershell)",
    },
];

#[derive(Parser, Debug)]
#[command(
    name = "plyfs",
    version,
    about = "plyfs layer and maintenance commands"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Diff(diff::Args),
    Apply(apply::Args),
    Status(status::Args),
    Layer(layer::Args),
    Man(docs::ManArgs),
    Completions(docs::CompletionsArgs),
}

/// Whether the command line names a subcommand. A mount(8) call whose
/// SOURCE happens to be a subcommand name (`plyfs diff /mnt -o
/// lowerdir=...`) is still a mount.
pub fn is_subcommand(args: &[OsString]) -> bool {
    let Some(first) = args.get(1) else {
        return false;
    };
    if !TABLE
        .iter()
        .any(|e| first.as_encoded_bytes() == e.name.as_bytes())
    {
        return false;
    }
    let mount_opts = args.iter().skip(2).any(|a| {
        let b = a.as_encoded_bytes();
        b.windows(9).any(|w| w == b"lowerdir=")
    });
    !mount_opts
}

/// The subcommand list for `plyfs --help`.
pub fn summary() -> String {
    let mut s = String::from("Subcommands (plyfs COMMAND --help for each):\n");
    for e in TABLE {
        s.push_str(&format!("  {:<18}{}\n", e.name, e.about));
    }
    s
}

/// Parses and runs a subcommand; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line, like the mount command's errors.
            eprintln!(
                "plyfs: {} (see plyfs COMMAND --help)",
                crate::cli::one_line(&e)
            );
            return 1;
        }
    };
    let res = match cli.command {
        Command::Diff(a) => diff::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Status(a) => status::run(a),
        Command::Layer(a) => layer::run(a),
        Command::Man(a) => docs::man(a),
        Command::Completions(a) => docs::completions(a),
    };
    match res {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("plyfs: {msg}");
            1
        }
    }
}

/// Parses `C:H:S[:C:H:S...]` for `--uidmap`/`--gidmap`.
fn id_map(key: &str, v: Option<&str>) -> Result<crate::idmap::IdMap, String> {
    let ranges = match v {
        Some(v) => crate::options::parse_id_map(key, v.as_bytes())?,
        None => Vec::new(),
    };
    Ok(crate::idmap::IdMap::new(ranges, None))
}

/// Splits `--lower` values (repeatable, colon separated, `\:` escapes;
/// layers after a `::` are data-only, as in `lowerdir=`). Returns (regular
/// layers, data-only layers).
fn lower_list(
    values: &[OsString],
) -> Result<(Vec<std::path::PathBuf>, Vec<std::path::PathBuf>), String> {
    use std::os::unix::ffi::OsStrExt;
    let path = |p: Vec<u8>| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&p));
    let (mut regular, mut data) = (Vec::new(), Vec::new());
    for v in values {
        let (r, d) = crate::options::parse_lowerdir(v.as_bytes())
            .map_err(|e| e.replace("option lowerdir", "--lower"))?;
        if !data.is_empty() && !r.is_empty() {
            return Err("--lower: a regular layer cannot follow a data-only one".into());
        }
        regular.extend(r.into_iter().map(path));
        data.extend(d.into_iter().map(path));
    }
    if regular.is_empty() && !data.is_empty() {
        return Err("--lower: data-only layers need a regular layer above them".into());
    }
    Ok((regular, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn table_matches_parser() {
        let cmd = Cli::command();
        let parsed: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        let table: Vec<&str> = TABLE.iter().map(|e| e.name).collect();
        assert_eq!(parsed, table);
    }

    #[test]
    fn dispatch() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_subcommand(&v(&["plyfs", "diff", "/u"])));
        assert!(is_subcommand(&v(&["plyfs", "apply", "l.tar", "/d"])));
        assert!(is_subcommand(&v(&["plyfs", "status", "/m"])));
        assert!(is_subcommand(&v(&["plyfs", "layer", "add", "/m", "/d"])));
        assert!(!is_subcommand(&v(&["plyfs", "-o", "lowerdir=/a", "/m"])));
        assert!(!is_subcommand(&v(&[
            "plyfs",
            "overlay",
            "/m",
            "-o",
            "lowerdir=/a"
        ])));
        assert!(!is_subcommand(&v(&[
            "plyfs",
            "diff",
            "/m",
            "-o",
            "rw,lowerdir=/a"
        ])));
        assert!(!is_subcommand(&v(&["plyfs"])));
    }
}
