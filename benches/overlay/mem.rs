//! Daemon memory and fd report.

use std::fs::{self};
use std::time::Duration;

use crate::*;

// Daemon memory and fds

#[derive(Clone, Default)]
pub(crate) struct ProcStat {
    pub(crate) hwm_kib: u64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
    pub(crate) threads: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l[k.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ProcStat {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

pub(crate) struct MemReport {
    pub(crate) system: System,
    pub(crate) result: Result<(ProcStat, ProcStat), String>,
}

pub(crate) fn mem_report(env: &Env, sys: System) -> MemReport {
    let result = (|| {
        env.dirs.reset()?;
        let m = mount(sys, env.tree, env.dirs, env.bins)?;
        let pid = m.pid().ok_or("no daemon pid")?;
        let ctx = Ctx {
            mnt: &env.dirs.mnt,
            tree: env.tree,
            sizes: env.sizes,
            scratch: &env.dirs.logs,
            fio: env.fio,
        };
        if env.can_drop {
            sync_and_drop_caches("3");
        }
        begin_watch(Some(pid), env.timeout);
        let walked = w_stat(&ctx);
        if let Some(r) = end_watch() {
            return Err(format!("walk {r}"));
        }
        walked?;
        let after_walk = proc_stat(pid).ok_or("daemon gone after the walk")?;
        if env.can_drop {
            sync_and_drop_caches("2");
        }
        // FORGET requests arrive asynchronously after the kernel evicts.
        std::thread::sleep(Duration::from_secs(2));
        let after_drop = proc_stat(pid).ok_or("daemon gone after drop_caches")?;
        drop(m);
        Ok((after_walk, after_drop))
    })();
    MemReport {
        system: sys,
        result,
    }
}

// ---------------------------------------------------------------------------

impl MemReport {
    pub(crate) fn json(&self) -> String {
        let stat = |s: &ProcStat| {
            format!(
                "{{\"vm_hwm_kib\": {}, \"vm_rss_kib\": {}, \"fds\": {}, \"threads\": {}}}",
                s.hwm_kib, s.rss_kib, s.fds, s.threads
            )
        };
        match &self.result {
            Ok((a, b)) => format!(
                "{{\"system\": {}, \"after_walk\": {}, \"after_drop_caches\": {}}}",
                json_str(self.system.name()),
                stat(a),
                stat(b)
            ),
            Err(e) => format!(
                "{{\"system\": {}, \"error\": {}}}",
                json_str(self.system.name()),
                json_str(e)
            ),
        }
    }
}

pub(crate) fn print_mem(mem: &[MemReport]) {
    if mem.is_empty() {
        return;
    }
    println!(
        "\nFUSE daemon after a cold stat walk of the whole tree, then after echo 2 > drop_caches:"
    );
    for m in mem {
        match &m.result {
            Ok((a, b)) => println!(
                "  {:<15} walk: peak RSS {:.1} MiB, RSS {:.1} MiB, {} fds, {} threads | \
                 after drop: RSS {:.1} MiB, {} fds",
                m.system.name(),
                a.hwm_kib as f64 / 1024.0,
                a.rss_kib as f64 / 1024.0,
                a.fds,
                a.threads,
                b.rss_kib as f64 / 1024.0,
                b.fds
            ),
            Err(e) => println!("  {:<15} FAILED: {e}", m.system.name()),
        }
    }
}
