//! Results: medians, ratios, the text and Markdown tables, JSON, and an SVG
//! chart of the ratios.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::*;

/// The times (and plyfs's request counts) of one workload on one system.
#[derive(Default)]
pub(crate) struct Cell {
    pub(crate) times: Vec<Option<f64>>,
    /// Per successful run, when counted.
    pub(crate) requests: Vec<Option<Requests>>,
    pub(crate) errors: Vec<String>,
}

impl Cell {
    pub(crate) fn median(&self) -> Option<f64> {
        median(self.times.iter().flatten().copied().collect())
    }

    /// The median total of the counted runs, and the per-operation counts
    /// of the run closest to it.
    pub(crate) fn requests(&self) -> Option<(u64, &Requests)> {
        let counted: Vec<&Requests> = self.requests.iter().flatten().collect();
        let mut totals: Vec<u64> = counted.iter().map(|r| requests_total(r)).collect();
        totals.sort_unstable();
        let mid = *totals.get(totals.len() / 2)?;
        let closest = counted
            .iter()
            .min_by_key(|r| requests_total(r).abs_diff(mid))?;
        Some((mid, closest))
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// What the figures were measured on: one line for README tables.
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) bench_fs: String,
    pub(crate) bench_dir: String,
    pub(crate) date: String,
    pub(crate) mode: Mode,
}

impl Machine {
    pub(crate) fn probe(dir: &Path, mode: Mode) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map(|k| format!("{:.1} GiB", k as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "?".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory,
            kernel,
            bench_fs: fs_type(dir),
            bench_dir: dir.display().to_string(),
            date,
            mode,
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{} CPUs ({}), {} RAM, Linux {}, bench dir on {}, {}, {}",
            self.nproc,
            self.cpu,
            self.memory,
            self.kernel,
            self.bench_fs,
            self.mode.name(),
            self.date
        )
    }
}

/// Everything one mode's run produced.
pub(crate) struct Results<'a> {
    pub(crate) machine: &'a Machine,
    pub(crate) mode: Mode,
    pub(crate) systems: &'a [System],
    pub(crate) sys_versions: &'a [(System, String)],
    pub(crate) workloads: &'a [&'a Workload],
    pub(crate) sizes: &'a Sizes,
    pub(crate) tree: &'a Tree,
    pub(crate) cells: &'a [Vec<Cell>],
    pub(crate) mem: &'a [MemReport],
    pub(crate) reps: usize,
    pub(crate) quick: bool,
    pub(crate) can_drop: bool,
    pub(crate) interrupted: bool,
    pub(crate) elapsed: f64,
}

impl Results<'_> {
    fn rows(&self) -> impl Iterator<Item = (&&Workload, &Vec<Cell>)> {
        self.workloads.iter().zip(self.cells)
    }

    fn ratio(row: &[Cell], i: usize) -> Option<f64> {
        let b = row[0].median()?;
        let v = row[i].median()?;
        (b > 0.0).then_some(v / b)
    }

    /// Geometric mean of each system's ratios (1.0 for the baseline).
    fn geomeans(&self) -> Vec<(Option<f64>, usize)> {
        (0..self.systems.len())
            .map(|i| {
                if i == 0 {
                    return (Some(1.0), 0);
                }
                let r: Vec<f64> = self
                    .rows()
                    .filter_map(|(_, row)| Self::ratio(row, i))
                    .collect();
                (geomean(&r), r.len())
            })
            .collect()
    }

    /// How noisy the run was: the spread (max - min) / median of every
    /// cell with at least two times, as (median, largest).
    pub(crate) fn noise(&self) -> Option<(f64, f64)> {
        let spreads: Vec<f64> = self
            .cells
            .iter()
            .flatten()
            .filter_map(|c| {
                let t: Vec<f64> = c.times.iter().flatten().copied().collect();
                let m = median(t.clone())?;
                let (lo, hi) = t
                    .iter()
                    .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                (t.len() > 1 && m > 0.0).then(|| (hi - lo) / m)
            })
            .collect();
        let largest = spreads.iter().copied().fold(0.0, f64::max);
        Some((median(spreads)?, largest))
    }

    fn noise_line(&self) -> String {
        match self.noise() {
            Some((m, x)) => format!(
                "noise: spread (max - min) / median of the reps: median {:.0}%, largest {:.0}%{}",
                m * 100.0,
                x * 100.0,
                load_average()
                    .map(|l| format!("; load average {l}"))
                    .unwrap_or_default()
            ),
            None => "noise: one rep, unknown".into(),
        }
    }

    pub(crate) fn baseline(&self) -> System {
        self.systems[0]
    }

    pub(crate) fn table(&self) -> String {
        let col = 20;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "median seconds of {} reps (cold caches unless -warm), ratio to {}:",
            self.reps,
            self.baseline().name()
        );
        let _ = write!(out, "{:<12}", "workload");
        for s in self.systems {
            let _ = write!(out, " {:>col$}", s.name());
        }
        out.push('\n');
        for (w, row) in self.rows() {
            let _ = write!(out, "{:<12}", w.name);
            for (i, cell) in row.iter().enumerate() {
                let ok = cell.times.iter().flatten().count();
                let mut s = match cell.median() {
                    None if cell.times.is_empty() => "-".to_string(),
                    None => "FAILED".to_string(),
                    Some(m) if i == 0 => format!("{m:.3}"),
                    Some(m) => match Self::ratio(row, i) {
                        Some(r) => format!("{m:.3} ({r:.2}x)"),
                        None => format!("{m:.3}"),
                    },
                };
                if ok > 0 && ok < cell.times.len() {
                    let _ = write!(s, " [{ok}/{}]", cell.times.len());
                }
                let _ = write!(out, " {s:>col$}");
            }
            out.push('\n');
        }
        let _ = write!(out, "{:<12}", "geomean");
        for (i, (g, n)) in self.geomeans().into_iter().enumerate() {
            let s = match g {
                Some(g) if i == 0 => format!("{g:.2}x"),
                Some(g) => format!("{g:.2}x ({n} wl)"),
                None => "-".into(),
            };
            let _ = write!(out, " {s:>col$}");
        }
        out.push('\n');
        out.push_str(&self.noise_line());
        out.push('\n');
        out
    }

    /// FUSE requests plyfs served per workload (median of the reps), with
    /// the operations that make up most of them.
    pub(crate) fn requests_table(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.systems.iter().enumerate() {
            if !s.is_plyfs() {
                continue;
            }
            let mut any = false;
            let mut t = format!(
                "FUSE requests served by {} per workload (median run):\n",
                s.name()
            );
            for (w, row) in self.rows() {
                let Some((total, ops)) = row[i].requests() else {
                    continue;
                };
                any = true;
                let mut ops: Vec<&(String, u64)> = ops.iter().collect();
                ops.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                let top: Vec<String> = ops
                    .iter()
                    .filter(|(op, _)| op != "forget")
                    .take(6)
                    .map(|(op, n)| format!("{op} {n}"))
                    .collect();
                let _ = writeln!(t, "  {:<12} {total:>9}  {}", w.name, top.join(", "));
            }
            if any {
                out.push_str(&t);
            }
        }
        out
    }

    pub(crate) fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (w, row) in self.rows() {
            for (s, cell) in self.systems.iter().zip(row) {
                for e in &cell.errors {
                    f.push(format!("{} on {}: {e}", w.name, s.name()));
                }
            }
        }
        f
    }

    /// The table as Markdown, headed by the machine line.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!(
            "{}; median of {} reps, {} caches, seconds (ratio to {}):\n\n| workload |",
            self.machine.line(),
            self.reps,
            if self.can_drop { "cold" } else { "warm" },
            self.baseline().name()
        );
        for s in self.systems {
            let _ = write!(out, " {} |", s.name());
        }
        out.push_str("\n|---|");
        for _ in self.systems {
            out.push_str("---:|");
        }
        out.push('\n');
        for (w, row) in self.rows() {
            let _ = write!(out, "| {} |", w.name);
            for (i, cell) in row.iter().enumerate() {
                let s = match (cell.median(), Self::ratio(row, i)) {
                    (None, _) => "-".to_string(),
                    (Some(m), _) if i == 0 => format!("{m:.2}"),
                    (Some(m), Some(r)) => format!("{m:.2} ({r:.2}x)"),
                    (Some(m), None) => format!("{m:.2}"),
                };
                let _ = write!(out, " {s} |");
            }
            out.push('\n');
        }
        out.push_str("| geomean |");
        for (g, _) in self.geomeans() {
            let _ = write!(out, " {} |", g.map_or("-".into(), |g| format!("{g:.2}x")));
        }
        let _ = write!(out, "\n\n{}\n", self.noise_line());
        out
    }

    pub(crate) fn json(&self) -> String {
        let m = self.machine;
        let mut j = String::from("{\n");
        let _ = writeln!(
            j,
            "  \"machine\": {{\"nproc\": {}, \"cpu\": {}, \"memory\": {}, \"kernel\": {}, \
             \"bench_dir\": {}, \"bench_fs\": {}, \"root\": {}, \"mode\": {}, \"date\": {}}},",
            m.nproc,
            json_str(&m.cpu),
            json_str(&m.memory),
            json_str(&m.kernel),
            json_str(&m.bench_dir),
            json_str(&m.bench_fs),
            is_root(),
            json_str(match self.mode {
                Mode::Rootful => "rootful",
                Mode::Rootless => "rootless",
            }),
            json_str(&m.date),
        );
        let _ = writeln!(
            j,
            "  \"config\": {{\"reps\": {}, \"quick\": {}, \"caches_dropped\": {}, \
             \"interrupted\": {}, \"total_seconds\": {:.1}, \"noise\": {}, \"load_average\": {}}},",
            self.reps,
            self.quick,
            self.can_drop,
            self.interrupted,
            self.elapsed,
            json_str(&self.noise_line()),
            json_str(&load_average().unwrap_or_default())
        );
        j.push_str("  \"tree\": {");
        let tree_fields: Vec<String> = self
            .tree
            .info
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
            .collect();
        j.push_str(&tree_fields.join(", "));
        j.push_str("},\n  \"systems\": [");
        let sys_fields: Vec<String> = self
            .sys_versions
            .iter()
            .map(|(s, v)| {
                format!(
                    "{{\"name\": {}, \"version\": {}}}",
                    json_str(s.name()),
                    json_str(v)
                )
            })
            .collect();
        j.push_str(&sys_fields.join(", "));
        let _ = writeln!(
            j,
            "],\n  \"baseline\": {},",
            json_str(self.baseline().name())
        );
        j.push_str("  \"results\": [\n");
        let mut rows = Vec::new();
        for (w, row) in self.rows() {
            for (i, (s, cell)) in self.systems.iter().zip(row).enumerate() {
                let times: Vec<String> = cell.times.iter().map(|t| json_num(*t)).collect();
                let errors: Vec<String> = cell.errors.iter().map(|e| json_str(e)).collect();
                let requests = match cell.requests() {
                    Some((total, ops)) => {
                        let ops: Vec<String> = ops
                            .iter()
                            .map(|(op, n)| format!("{}: {n}", json_str(op)))
                            .collect();
                        format!("{{\"total\": {total}, \"ops\": {{{}}}}}", ops.join(", "))
                    }
                    None => "null".into(),
                };
                rows.push(format!(
                    "    {{\"workload\": {}, \"description\": {}, \"system\": {}, \"times\": [{}], \
                     \"median\": {}, \"ratio\": {}, \"requests\": {requests}, \"errors\": [{}]}}",
                    json_str(w.name),
                    json_str(&(w.describe)(self.sizes, Some(self.tree))),
                    json_str(s.name()),
                    times.join(", "),
                    json_num(cell.median()),
                    json_num(Self::ratio(row, i)),
                    errors.join(", ")
                ));
            }
        }
        j.push_str(&rows.join(",\n"));
        j.push_str("\n  ],\n  \"geomean_ratio\": {");
        let g: Vec<String> = self
            .systems
            .iter()
            .zip(self.geomeans())
            .map(|(s, (g, _))| format!("{}: {}", json_str(s.name()), json_num(g)))
            .collect();
        j.push_str(&g.join(", "));
        j.push_str("},\n  \"daemon_memory\": [");
        let m: Vec<String> = self.mem.iter().map(MemReport::json).collect();
        j.push_str(&m.join(", "));
        j.push_str("]\n}\n");
        j
    }

    /// A horizontal bar chart of every system's ratio to the baseline per
    /// workload, with the 1.0 line: a picture to paste into an issue.
    pub(crate) fn svg(&self) -> String {
        const COLORS: [&str; 5] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
        let others: Vec<(usize, System)> =
            self.systems.iter().copied().enumerate().skip(1).collect();
        let geo = self.geomeans();
        let mut rows: Vec<(String, Vec<Option<f64>>)> = self
            .rows()
            .map(|(w, row)| {
                let r = others.iter().map(|(i, _)| Self::ratio(row, *i)).collect();
                (w.name.to_string(), r)
            })
            .collect();
        rows.push((
            "geomean".into(),
            others.iter().map(|(i, _)| geo[*i].0).collect(),
        ));
        let max = rows
            .iter()
            .flat_map(|(_, r)| r.iter().flatten().copied())
            .fold(2.0f64, f64::max)
            .min(10.0)
            .ceil();
        let (label_w, plot_w, bar_h) = (110.0, 560.0, 12.0);
        let group_h = bar_h * others.len().max(1) as f64 + 8.0;
        let top = 56.0;
        let height = top + group_h * rows.len() as f64 + 40.0;
        let width = label_w + plot_w + 80.0;
        let x = |r: f64| label_w + plot_w * r.min(max) / max;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"8\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>\n\
             <text x=\"8\" y=\"32\">{}</text>\n",
            xml(&format!(
                "time relative to {} (lower is better), median of {} reps",
                self.baseline().name(),
                self.reps
            )),
            xml(&self.machine.line()),
        );
        // Legend.
        for (k, (_, sys)) in others.iter().enumerate() {
            let lx = label_w + k as f64 * 140.0;
            let _ = writeln!(
                s,
                "<rect x=\"{lx}\" y=\"40\" width=\"10\" height=\"10\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"49\">{}</text>",
                COLORS[k % COLORS.len()],
                lx + 14.0,
                xml(sys.name())
            );
        }
        // Grid lines at every integer ratio.
        let bottom = top + group_h * rows.len() as f64;
        for r in 0..=(max as usize) {
            let gx = x(r as f64);
            let (stroke, wdt) = if r == 1 { ("#000", 1.5) } else { ("#ddd", 1.0) };
            let _ = writeln!(
                s,
                "<line x1=\"{gx}\" y1=\"{top}\" x2=\"{gx}\" y2=\"{bottom}\" stroke=\"{stroke}\" \
                 stroke-width=\"{wdt}\"/><text x=\"{gx}\" y=\"{}\" text-anchor=\"middle\">{r}x</text>",
                bottom + 14.0
            );
        }
        for (g, (name, ratios)) in rows.iter().enumerate() {
            let gy = top + g as f64 * group_h + 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                label_w - 6.0,
                gy + group_h / 2.0,
                xml(name)
            );
            for (k, r) in ratios.iter().enumerate() {
                let Some(r) = r else { continue };
                let by = gy + k as f64 * bar_h;
                let _ = writeln!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{by}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/>\
                     <text x=\"{:.1}\" y=\"{}\">{r:.2}x{}</text>",
                    x(*r) - label_w,
                    bar_h - 2.0,
                    COLORS[k % COLORS.len()],
                    x(*r) + 3.0,
                    by + bar_h - 3.0,
                    if *r > max { " (clipped)" } else { "" }
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The 1, 5 and 15 minute load averages, at the end of the run.
fn load_average() -> Option<String> {
    let l = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub(crate) fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "null".into(),
    }
}

pub(crate) fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}
