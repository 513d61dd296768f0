//! `plyfs status [--json] [MOUNTPOINT]`

use std::io::Write;
use std::path::PathBuf;

use crate::control;
use crate::status::Status;

const AFTER_HELP: &str = "\
Shows a live mount's lower, upper and work directories, its options, the
daemon (pid, I/O mode: passthrough or writeback cache, transport: /dev/fuse or
io_uring), uptime, the upper layer's size and limit (size=, inodes=), open
files and directories, nodes the kernel holds, memory, where it logs, and
requests per operation with their mean and longest latency.

It asks the daemon over the mount's control channel, a unix socket that only
the mount's owner and root may use (/run/plyfs for root mounts, else
$XDG_RUNTIME_DIR/plyfs, /run/user/UID/plyfs or /tmp/plyfs-UID). A mount that is
covered by another mount is still found; without MOUNTPOINT every mount of this
user is shown, lazily unmounted ones included.

Examples:
  plyfs status /c/merged
  plyfs status --json /c/merged | jq .requests
  podman unshare plyfs status ~/.local/share/containers/storage/overlay/ID/merged
";

/// Show a live mount's layers, options, daemon, I/O modes and request figures
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Print JSON (one object; an array without MOUNTPOINT)
    #[arg(long)]
    json: bool,

    /// The mount (default: every mount this user can reach)
    mountpoint: Option<PathBuf>,
}

fn fetch(socket: &std::path::Path) -> Result<Status, String> {
    let body = control::call(socket, &control::request_line("status", &[]))?;
    Status::decode(&body)
}

pub fn run(a: Args) -> Result<i32, String> {
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, s: &str| {
        out.write_all(s.as_bytes())
            .map_err(|e| format!("cannot write: {e}"))
    };
    match &a.mountpoint {
        Some(m) => {
            let st = fetch(&control::find(m)?)?;
            write(&mut out, &if a.json { st.to_json() } else { st.to_text() })?;
        }
        None => {
            let all: Vec<Status> = control::all_sockets()
                .iter()
                .filter_map(|s| fetch(s).ok())
                .collect();
            if a.json {
                let items: Vec<String> = all
                    .iter()
                    .map(|s| s.to_json().trim_end().to_string())
                    .collect();
                write(&mut out, &format!("[{}]\n", items.join(",")))?;
            } else if all.is_empty() {
                write(&mut out, "no plyfs mounts found\n")?;
            } else {
                let texts: Vec<String> = all.iter().map(Status::to_text).collect();
                write(&mut out, &texts.join("\n"))?;
            }
        }
    }
    Ok(0)
}
