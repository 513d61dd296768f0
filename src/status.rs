//! What `plyfs status` reports about a live mount: its layers and options,
//! the daemon, I/O modes, request counts and latencies, open handles,
//! nodes, memory, and the upper size limit.
//!
//! The daemon gathers a [`Status`] and sends it over the control channel
//! as `key value` lines (values percent-encoded, so paths may hold any
//! byte); the command decodes it and prints text or JSON. Unknown keys are
//! skipped, so an older command can read a newer daemon's answer.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use crate::fs::Plyfs;
use crate::stats::OpFigures;

/// Facts about the mount known only once it is mounted, for `plyfs status`.
pub struct LiveInfo {
    pub started: Instant,
    pub mount: OnceLock<MountMeta>,
    /// Transport settled at FUSE init ("/dev/fuse", "io_uring (2 queues)").
    pub transport: OnceLock<String>,
}

impl Default for LiveInfo {
    fn default() -> Self {
        LiveInfo {
            started: Instant::now(),
            mount: OnceLock::new(),
            transport: OnceLock::new(),
        }
    }
}

/// How the mount was made.
#[derive(Clone, Debug, Default)]
pub struct MountMeta {
    /// Absolute path of the mountpoint.
    pub mountpoint: PathBuf,
    /// The mount's device (major, minor).
    pub device: (u32, u32),
    pub source: String,
    /// The `-o` options as given, without the layer directories.
    pub options: String,
    /// The work directory as given.
    pub work: Option<PathBuf>,
    pub threads: usize,
}

/// The report (see the module comment).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub proto: u32,
    pub version: String,
    pub pid: u32,
    pub owner: u32,
    pub mountpoint: Vec<u8>,
    pub device: String,
    pub source: String,
    /// Top first.
    pub lowers: Vec<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
    pub work: Option<Vec<u8>>,
    pub options: String,
    pub read_only: bool,
    pub io_mode: String,
    pub transport: String,
    pub threads: u64,
    pub uptime_ms: u64,
    pub open_files: u64,
    pub open_dirs: u64,
    pub nodes: u64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub fds: u64,
    /// Upper size limit and use (see `quota`).
    pub size_limit: Option<u64>,
    pub size_used: Option<u64>,
    pub inodes_limit: Option<u64>,
    pub inodes_used: Option<u64>,
    pub log: String,
    pub layer_changes: u64,
    pub ops: Vec<OpFigures>,
}

/// Protocol version of the `key value` form.
pub const PROTO: u32 = 1;

/// Resident and peak resident memory of this process in bytes, from
/// `/proc/self/status` (VmRSS, VmHWM).
pub fn memory_usage() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn bytes_of(p: &std::path::Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

/// The daemon's side: the status of `fs` now.
pub fn gather(fs: &Plyfs) -> Status {
    let meta = fs.live.mount.get().cloned().unwrap_or_default();
    let (rss, peak) = memory_usage();
    let lowers = fs.lowers.load();
    let quota = fs.quota.as_ref().map(|q| q.figures());
    Status {
        proto: PROTO,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        owner: crate::sys::process::geteuid(),
        mountpoint: bytes_of(&meta.mountpoint),
        device: format!("{}:{}", meta.device.0, meta.device.1),
        source: meta.source,
        lowers: lowers.iter().map(|l| bytes_of(&l.path)).collect(),
        upper: fs.upper.as_ref().map(|u| bytes_of(&u.path)),
        work: meta.work.as_deref().map(bytes_of),
        options: meta.options,
        read_only: fs.read_only(),
        io_mode: fs.io.mode_name().to_string(),
        transport: fs.live.transport.get().cloned().unwrap_or_default(),
        threads: meta.threads as u64,
        uptime_ms: fs.live.started.elapsed().as_millis() as u64,
        open_files: fs.handles.open_files() as u64,
        open_dirs: fs.handles.open_dirs() as u64,
        nodes: fs.table.len() as u64,
        rss_bytes: rss,
        peak_rss_bytes: peak,
        fds: crate::sys::fs::open_fd_count() as u64,
        size_limit: quota.as_ref().and_then(|q| q.bytes_limit),
        size_used: quota.as_ref().map(|q| q.bytes),
        inodes_limit: quota.as_ref().and_then(|q| q.inodes_limit),
        inodes_used: quota.as_ref().map(|q| q.inodes),
        log: crate::logging::destination(),
        layer_changes: lowers.generation,
        ops: crate::stats::snapshot(),
    }
}

/// Percent-encodes bytes for one `key value` line: anything but printable
/// ASCII other than `%` becomes `%XX` (spaces too, so values never split).
pub fn encode_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_graphic() && c != b'%' {
            s.push(c as char);
        } else {
            let _ = write!(s, "%{c:02X}");
        }
    }
    if s.is_empty() {
        // An empty value still takes a field.
        s.push('%');
    }
    s
}

/// Undoes [`encode_bytes`]; `None` for a malformed escape.
pub fn decode_bytes(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Status {
    /// The `key value` lines sent over the control channel.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: &str| {
            let _ = writeln!(s, "{k} {v}");
        };
        kv("proto", &self.proto.to_string());
        kv("version", &encode_bytes(self.version.as_bytes()));
        kv("pid", &self.pid.to_string());
        kv("owner", &self.owner.to_string());
        kv("mountpoint", &encode_bytes(&self.mountpoint));
        kv("device", &encode_bytes(self.device.as_bytes()));
        kv("source", &encode_bytes(self.source.as_bytes()));
        for l in &self.lowers {
            kv("lower", &encode_bytes(l));
        }
        if let Some(u) = &self.upper {
            kv("upper", &encode_bytes(u));
        }
        if let Some(w) = &self.work {
            kv("work", &encode_bytes(w));
        }
        kv("options", &encode_bytes(self.options.as_bytes()));
        kv("read_only", if self.read_only { "1" } else { "0" });
        kv("io_mode", &encode_bytes(self.io_mode.as_bytes()));
        kv("transport", &encode_bytes(self.transport.as_bytes()));
        kv("threads", &self.threads.to_string());
        kv("uptime_ms", &self.uptime_ms.to_string());
        kv("open_files", &self.open_files.to_string());
        kv("open_dirs", &self.open_dirs.to_string());
        kv("nodes", &self.nodes.to_string());
        kv("rss_bytes", &self.rss_bytes.to_string());
        kv("peak_rss_bytes", &self.peak_rss_bytes.to_string());
        kv("fds", &self.fds.to_string());
        for (k, v) in [
            ("size_limit", self.size_limit),
            ("size_used", self.size_used),
            ("inodes_limit", self.inodes_limit),
            ("inodes_used", self.inodes_used),
        ] {
            if let Some(v) = v {
                kv(k, &v.to_string());
            }
        }
        kv("log", &encode_bytes(self.log.as_bytes()));
        kv("layer_changes", &self.layer_changes.to_string());
        for o in &self.ops {
            kv(
                "op",
                &format!("{} {} {} {}", o.name, o.count, o.total_ns, o.max_ns),
            );
        }
        s
    }

    /// Parses [`Status::encode`]'s lines.
    pub fn decode(text: &str) -> Result<Status, String> {
        let mut st = Status::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let bad = || format!("malformed status line {line:?}");
            let bytes = || decode_bytes(v).ok_or_else(bad);
            let string = || bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
            let num = || v.parse::<u64>().map_err(|_| bad());
            match k {
                "proto" => st.proto = v.parse().map_err(|_| bad())?,
                "version" => st.version = string()?,
                "pid" => st.pid = v.parse().map_err(|_| bad())?,
                "owner" => st.owner = v.parse().map_err(|_| bad())?,
                "mountpoint" => st.mountpoint = bytes()?,
                "device" => st.device = string()?,
                "source" => st.source = string()?,
                "lower" => st.lowers.push(bytes()?),
                "upper" => st.upper = Some(bytes()?),
                "work" => st.work = Some(bytes()?),
                "options" => st.options = string()?,
                "read_only" => st.read_only = v == "1",
                "io_mode" => st.io_mode = string()?,
                "transport" => st.transport = string()?,
                "threads" => st.threads = num()?,
                "uptime_ms" => st.uptime_ms = num()?,
                "open_files" => st.open_files = num()?,
                "open_dirs" => st.open_dirs = num()?,
                "nodes" => st.nodes = num()?,
                "rss_bytes" => st.rss_bytes = num()?,
                "peak_rss_bytes" => st.peak_rss_bytes = num()?,
                "fds" => st.fds = num()?,
                "size_limit" => st.size_limit = Some(num()?),
                "size_used" => st.size_used = Some(num()?),
                "inodes_limit" => st.inodes_limit = Some(num()?),
                "inodes_used" => st.inodes_used = Some(num()?),
                "log" => st.log = string()?,
                "layer_changes" => st.layer_changes = num()?,
                "op" => {
                    let f: Vec<&str> = v.split(' ').collect();
                    let [name, count, total, max] = f.as_slice() else {
                        return Err(bad());
                    };
                    let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
                    st.ops.push(OpFigures {
                        name: name.to_string(),
                        count: n(count)?,
                        total_ns: n(total)?,
                        max_ns: n(max)?,
                    });
                }
                _ => {}
            }
        }
        if st.proto == 0 {
            return Err("the daemon's answer has no protocol version".into());
        }
        Ok(st)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} (plyfs {}, pid {}, device {}, owner uid {})",
            lossy(&self.mountpoint),
            self.version,
            self.pid,
            self.device,
            self.owner
        );
        let mut row = |k: &str, v: &str| {
            let _ = writeln!(s, "  {k:<11} {v}");
        };
        row("source:", &self.source);
        for (i, l) in self.lowers.iter().enumerate() {
            row(if i == 0 { "lowerdirs:" } else { "" }, &lossy(l));
        }
        if self.lowers.is_empty() {
            row("lowerdirs:", "(none)");
        }
        match (&self.upper, &self.work) {
            (Some(u), Some(w)) => {
                row("upperdir:", &lossy(u));
                row("workdir:", &lossy(w));
            }
            _ => row("upperdir:", "(none: read-only)"),
        }
        row(
            "options:",
            if self.options.is_empty() {
                "(defaults)"
            } else {
                &self.options
            },
        );
        row(
            "I/O:",
            &format!(
                "{}, {}, {} threads",
                self.io_mode,
                if self.transport.is_empty() {
                    "/dev/fuse"
                } else {
                    &self.transport
                },
                self.threads
            ),
        );
        row("uptime:", &duration(self.uptime_ms));
        if self.layer_changes > 0 {
            row("layers:", &format!("changed {} times", self.layer_changes));
        }
        if let (Some(used), limit) = (self.size_used, self.size_limit) {
            let mut v = match limit {
                Some(l) => format!(
                    "{} of {} used ({:.1}%)",
                    size(used),
                    size(l),
                    used as f64 * 100.0 / l.max(1) as f64
                ),
                None => format!("{} used, no limit", size(used)),
            };
            if let Some(iu) = self.inodes_used {
                match self.inodes_limit {
                    Some(il) => {
                        let _ = write!(v, "; {iu} of {il} inodes");
                    }
                    None => {
                        let _ = write!(v, "; {iu} inodes");
                    }
                }
            }
            row("upper size:", &v);
        }
        row(
            "open:",
            &format!(
                "{} files, {} directories; {} nodes",
                self.open_files, self.open_dirs, self.nodes
            ),
        );
        row(
            "memory:",
            &format!(
                "{} resident (peak {}), {} descriptors",
                size(self.rss_bytes),
                size(self.peak_rss_bytes),
                self.fds
            ),
        );
        row("log:", &self.log);
        if self.ops.is_empty() {
            row("requests:", "none yet");
        } else {
            let total: u64 = self.ops.iter().map(|o| o.count).sum();
            row("requests:", &format!("{total}"));
            let _ = writeln!(
                s,
                "    {:<16} {:>12} {:>10} {:>10}",
                "operation", "count", "mean", "max"
            );
            for o in &self.ops {
                let (mean, max) = if o.total_ns == 0 {
                    ("-".to_string(), "-".to_string())
                } else {
                    (latency(o.mean_ns()), latency(o.max_ns))
                };
                let _ = writeln!(
                    s,
                    "    {:<16} {:>12} {:>10} {:>10}",
                    o.name, o.count, mean, max
                );
            }
        }
        s
    }

    /// The report for tools: one JSON object (paths that are not UTF-8
    /// are shown with U+FFFD in place of their invalid bytes).
    pub fn to_json(&self) -> String {
        let mut j = Json::default();
        j.open('{');
        j.num("proto", u64::from(self.proto));
        j.string("version", &self.version);
        j.num("pid", u64::from(self.pid));
        j.num("owner_uid", u64::from(self.owner));
        j.bytes("mountpoint", &self.mountpoint);
        j.string("device", &self.device);
        j.string("source", &self.source);
        j.key("lowerdirs");
        j.open('[');
        for l in &self.lowers {
            j.item();
            j.raw(&quote(&String::from_utf8_lossy(l)));
        }
        j.close(']');
        match &self.upper {
            Some(u) => j.bytes("upperdir", u),
            None => j.null("upperdir"),
        }
        match &self.work {
            Some(w) => j.bytes("workdir", w),
            None => j.null("workdir"),
        }
        j.string("options", &self.options);
        j.boolean("read_only", self.read_only);
        j.key("io");
        j.open('{');
        j.string("mode", &self.io_mode);
        j.string("transport", &self.transport);
        j.num("threads", self.threads);
        j.close('}');
        j.num("uptime_ms", self.uptime_ms);
        j.num("open_files", self.open_files);
        j.num("open_dirs", self.open_dirs);
        j.num("nodes", self.nodes);
        j.num("rss_bytes", self.rss_bytes);
        j.num("peak_rss_bytes", self.peak_rss_bytes);
        j.num("fds", self.fds);
        j.key("upper_size");
        if self.size_used.is_some() {
            j.open('{');
            j.opt_num("limit_bytes", self.size_limit);
            j.opt_num("used_bytes", self.size_used);
            j.opt_num("limit_inodes", self.inodes_limit);
            j.opt_num("used_inodes", self.inodes_used);
            j.close('}');
        } else {
            j.raw("null");
        }
        j.string("log", &self.log);
        j.num("layer_changes", self.layer_changes);
        j.key("requests");
        j.open('[');
        for o in &self.ops {
            j.item();
            j.open('{');
            j.string("op", &o.name);
            j.num("count", o.count);
            j.num("total_ns", o.total_ns);
            j.num("mean_ns", o.mean_ns());
            j.num("max_ns", o.max_ns);
            j.close('}');
        }
        j.close(']');
        j.close('}');
        j.out.push('\n');
        j.out
    }
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tiny JSON writer: objects and arrays with commas put in for us.
#[derive(Default)]
struct Json {
    out: String,
    /// Per open container: whether it has an element yet.
    first: Vec<bool>,
}

impl Json {
    fn sep(&mut self) {
        if let Some(f) = self.first.last_mut() {
            if !*f {
                self.out.push(',');
            }
            *f = false;
        }
    }
    fn open(&mut self, c: char) {
        self.out.push(c);
        self.first.push(true);
    }
    fn close(&mut self, c: char) {
        self.first.pop();
        self.out.push(c);
    }
    fn item(&mut self) {
        self.sep();
    }
    fn key(&mut self, k: &str) {
        self.sep();
        self.out.push_str(&quote(k));
        self.out.push(':');
    }
    fn raw(&mut self, v: &str) {
        self.out.push_str(v);
    }
    fn string(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(&quote(v));
    }
    fn bytes(&mut self, k: &str, v: &[u8]) {
        self.string(k, &String::from_utf8_lossy(v));
    }
    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }
    fn opt_num(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.null(k),
        }
    }
    fn boolean(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
    }
    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.push_str("null");
    }
}

/// `1.5 GiB`-style sizes.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `12.3µs`, `4.5ms`, `1.20s`.
pub fn latency(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// `3d 04h 05m 06s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m {sec:02}s")
    } else if h > 0 {
        format!("{h}h {m:02}m {sec:02}s")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{}.{:03}s", sec, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            proto: PROTO,
            version: "0.1.0".into(),
            pid: 42,
            owner: 1000,
            mountpoint: b"/m n\xff".to_vec(),
            device: "0:55".into(),
            source: "overlay".into(),
            lowers: vec![b"/a".to_vec(), b"/b%c".to_vec(), Vec::new()],
            upper: Some(b"/u".to_vec()),
            work: Some(b"/w".to_vec()),
            options: "volatile,size=1G".into(),
            read_only: false,
            io_mode: "writeback cache".into(),
            transport: "io_uring (2 queues)".into(),
            threads: 2,
            uptime_ms: 3_723_004,
            open_files: 3,
            open_dirs: 1,
            nodes: 120,
            rss_bytes: 15 << 20,
            peak_rss_bytes: 20 << 20,
            fds: 30,
            size_limit: Some(1 << 30),
            size_used: Some(4096),
            inodes_limit: None,
            inodes_used: Some(3),
            log: "syslog:/dev/log".into(),
            layer_changes: 2,
            ops: vec![OpFigures {
                name: "lookup".into(),
                count: 10,
                total_ns: 50_000,
                max_ns: 20_000,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(Status::decode(&s.encode()).unwrap(), s);
        // Unknown keys from a newer daemon are skipped.
        let mut text = s.encode();
        text.push_str("future_key 1 2 3\n");
        assert_eq!(Status::decode(&text).unwrap(), s);
        assert!(Status::decode("pid x\nproto 1").is_err());
        assert!(Status::decode("pid 1").is_err());
    }

    #[test]
    fn encoding() {
        for b in [&b""[..], b"%", b"a b", b"\xff\x00\n", b"plain/path"] {
            let e = encode_bytes(b);
            assert!(!e.contains(' ') && !e.contains('\n'));
            assert_eq!(decode_bytes(&e).unwrap(), b);
        }
        assert_eq!(decode_bytes("%4"), None);
        assert_eq!(decode_bytes("%zz"), None);
    }

    #[test]
    fn text_and_json() {
        let s = sample();
        let t = s.to_text();
        assert!(t.contains("  lowerdirs:  /a\n"), "{t}");
        assert!(t.contains("1h 02m 03s"), "{t}");
        assert!(t.contains("4.0 KiB of 1.0 GiB used"), "{t}");
        assert!(t.contains("lookup"), "{t}");
        let j = s.to_json();
        assert!(j.starts_with("{\"proto\":1,"), "{j}");
        assert!(j.contains("\"lowerdirs\":[\"/a\",\"/b%c\",\"\"]"), "{j}");
        assert!(j.contains("\"mountpoint\":\"/m n\u{fffd}\""), "{j}");
        assert!(j.contains("\"limit_inodes\":null"), "{j}");
        assert!(j.contains("{\"op\":\"lookup\",\"count\":10,\"total_ns\":50000,\"mean_ns\":5000,\"max_ns\":20000}"), "{j}");
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        assert_eq!(j.matches('[').count(), j.matches(']').count());
        assert_eq!(quote("a\"\\\u{1}"), "\"a\\\"\\\\\\u0001\"");
    }

    #[test]
    fn units() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(latency(999), "999ns");
        assert_eq!(latency(12_345), "12.3µs");
        assert_eq!(latency(2_500_000_000), "2.50s");
        assert_eq!(duration(61_000), "1m 01s");
        assert_eq!(duration(1_500), "1.500s");
        assert_eq!(duration(90_061_000), "1d 01h 01m 01s");
    }
}
