//! The workloads, registered in one list (`all()`).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::*;

// Workloads

pub(crate) struct Ctx<'a> {
    pub(crate) mnt: &'a Path,
    pub(crate) tree: &'a Tree,
    pub(crate) sizes: &'a Sizes,
    pub(crate) scratch: &'a Path,
    pub(crate) fio: bool,
}

pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) warm: bool,
    pub(crate) run: fn(&Ctx) -> Result<(), String>,
    pub(crate) describe: fn(&Sizes, Option<&Tree>) -> String,
}

pub(crate) fn stat_walk(c: &Ctx) -> Command {
    let mut cmd = Command::new("find");
    cmd.arg(c.mnt)
        .args(["-printf", "%s\\n"])
        .stdout(Stdio::null());
    cmd
}

pub(crate) fn w_find(c: &Ctx) -> Result<(), String> {
    let mut cmd = Command::new("find");
    cmd.arg(c.mnt).args(["-type", "f"]).stdout(Stdio::null());
    run(cmd, c.scratch)
}

pub(crate) fn w_stat(c: &Ctx) -> Result<(), String> {
    run(stat_walk(c), c.scratch)
}

pub(crate) fn w_ls(c: &Ctx) -> Result<(), String> {
    let dir = c.mnt.join(&c.tree.ls_dir);
    run(
        cmd(
            "ls",
            &[
                OsStr::new("-lR"),
                OsStr::new("--color=never"),
                dir.as_os_str(),
            ],
        ),
        c.scratch,
    )
}

pub(crate) fn w_read_small(c: &Ctx) -> Result<(), String> {
    let mut cmd = Command::new("tar");
    cmd.arg("cf")
        .arg("-")
        .arg("-C")
        .arg(c.mnt)
        .args(&c.tree.sources);
    run_to_sink(cmd, c.scratch).map(drop)
}

pub(crate) fn w_untar(c: &Ctx) -> Result<(), String> {
    let dest = c.mnt.join("plyfs-bench-untar");
    fs::create_dir(&dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
    let mut tar = Command::new("tar");
    tar.arg("xf").arg(&c.tree.tarball).arg("-C").arg(&dest);
    run(tar, c.scratch)?;
    run(cmd::<&str>("sync", &[]), c.scratch)
}

pub(crate) fn w_append(c: &Ctx) -> Result<(), String> {
    for rel in &c.tree.append {
        let p = c.mnt.join(rel);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        f.write_all(b"appended by plyfs-bench\n")
            .map_err(|e| format!("append {}: {e}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn w_chmod(c: &Ctx) -> Result<(), String> {
    for rel in &c.tree.chmod {
        let p = c.mnt.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn w_rm(c: &Ctx) -> Result<(), String> {
    let mut args = vec![std::ffi::OsString::from("-rf")];
    args.extend(
        c.tree
            .rm_dirs
            .iter()
            .map(|d| c.mnt.join(d).into_os_string()),
    );
    run(cmd("rm", &args), c.scratch)
}

pub(crate) fn w_seq_read(c: &Ctx) -> Result<(), String> {
    let mut f_if = OsStr::new("if=").to_os_string();
    f_if.push(c.mnt.join(&c.tree.big));
    run(
        cmd(
            "dd",
            &[
                f_if.as_os_str(),
                OsStr::new("of=/dev/null"),
                OsStr::new("bs=1M"),
                OsStr::new("status=none"),
            ],
        ),
        c.scratch,
    )
}

pub(crate) fn w_first_write(c: &Ctx) -> Result<(), String> {
    let p = c.mnt.join(&c.tree.big);
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| format!("open {}: {e}", p.display()))?;
    f.write_all_at(&[0x5a; 4096], 0)
        .map_err(|e| format!("write: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    // Close explicitly so a failing close is reported.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(format!("close: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn w_seq_write(c: &Ctx) -> Result<(), String> {
    let mut f_of = OsStr::new("of=").to_os_string();
    f_of.push(c.mnt.join("plyfs-bench-seqwrite.bin"));
    let count = format!("count={}", c.sizes.seq_write / MIB);
    run(
        cmd(
            "dd",
            &[
                OsStr::new("if=/dev/zero"),
                f_of.as_os_str(),
                OsStr::new("bs=1M"),
                OsStr::new(&count),
                OsStr::new("conv=fsync"),
                OsStr::new("status=none"),
            ],
        ),
        c.scratch,
    )
}

pub(crate) fn w_rand_read(c: &Ctx) -> Result<(), String> {
    let p = c.mnt.join(&c.tree.big);
    if c.fio {
        let mut cmd = Command::new("fio");
        cmd.arg("--name=randread")
            .arg(format!("--filename={}", p.display()))
            .args([
                "--readonly",
                "--rw=randread",
                "--bs=4k",
                "--ioengine=psync",
                "--direct=0",
                "--invalidate=0",
                "--randrepeat=1",
                "--output-format=terse",
            ])
            .arg(format!("--size={}", c.sizes.rand_span))
            .stdout(Stdio::null());
        return run(cmd, c.scratch);
    }
    // Without fio: every 4 KiB block of the span once, in random order.
    let f = File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut blocks: Vec<u64> = (0..c.sizes.rand_span / 4096).collect();
    Rng(7).shuffle(&mut blocks);
    let mut buf = [0u8; 4096];
    for b in blocks {
        f.read_exact_at(&mut buf, b * 4096)
            .map_err(|e| format!("pread: {e}"))?;
    }
    Ok(())
}

pub(crate) fn w_par_stat(c: &Ctx) -> Result<(), String> {
    run_all(vec![stat_walk(c), stat_walk(c), stat_walk(c)], c.scratch)
}

pub(crate) fn all() -> Vec<Workload> {
    vec![
        Workload {
            name: "find",
            warm: false,
            run: w_find,
            describe: |_, _| "find -type f over the whole tree".into(),
        },
        Workload {
            name: "stat",
            warm: false,
            run: w_stat,
            describe: |_, _| "stat every entry (find -printf %s)".into(),
        },
        Workload {
            name: "stat-warm",
            warm: true,
            run: w_stat,
            describe: |_, _| "stat every entry again, warm (second walk on one mount)".into(),
        },
        Workload {
            name: "ls-lR",
            warm: false,
            run: w_ls,
            describe: |_, t| match t {
                Some(t) => format!("ls -lR of a big lower subtree: {}", t.info("ls_dir")),
                None => "ls -lR of a big lower subtree".into(),
            },
        },
        Workload {
            name: "read-small",
            warm: false,
            run: w_read_small,
            describe: |_, _| "read every small file (tar cf - | pipe)".into(),
        },
        Workload {
            name: "untar",
            warm: false,
            run: w_untar,
            describe: |s, _| format!("untar {} files into the mount + sync", s.untar),
        },
        Workload {
            name: "append",
            warm: false,
            run: w_append,
            describe: |s, _| format!("append to {} lower files (copy-up)", s.append),
        },
        Workload {
            name: "chmod",
            warm: false,
            run: w_chmod,
            describe: |s, _| format!("chmod {} lower files (copy-up)", s.chmod),
        },
        Workload {
            name: "rm-rf",
            warm: false,
            run: w_rm,
            describe: |_, t| match t {
                Some(t) => format!("rm -rf two lower subtrees: {}", t.info("rm_dirs")),
                None => "rm -rf two lower subtrees (whiteouts)".into(),
            },
        },
        Workload {
            name: "seq-read",
            warm: false,
            run: w_seq_read,
            describe: |s, _| format!("sequential read of the {} lower file (dd)", human(s.big)),
        },
        Workload {
            name: "first-write",
            warm: false,
            run: w_first_write,
            describe: |s, _| {
                format!(
                    "first 4 KiB write into the {} lower file (copy-up) + fsync + close",
                    human(s.big)
                )
            },
        },
        Workload {
            name: "seq-write",
            warm: false,
            run: w_seq_write,
            describe: |s, _| format!("sequential write of {} + fsync (dd)", human(s.seq_write)),
        },
        Workload {
            name: "rand-read",
            warm: false,
            run: w_rand_read,
            describe: |s, _| {
                format!(
                    "4k random reads over {} of the big file (fio psync, or pread)",
                    human(s.rand_span)
                )
            },
        },
        Workload {
            name: "par-stat",
            warm: false,
            run: w_par_stat,
            describe: |_, _| "three parallel stat walks".into(),
        },
    ]
}
