//! Where the daemon's log goes.
//!
//! In the foreground, records go to stderr (env_logger's format). Once the
//! daemon is in the background its stderr is /dev/null, so records go to
//! syslog (the journal) instead, or to the file given with `log=FILE`. The
//! level is `RUST_LOG`'s (default `warn`, `debug` with `-d`). The request
//! figures asked for with SIGUSR1 are written whatever the level.
//!
//! Syslog without a dependency: one RFC 3164 datagram per record,
//! `<PRI>plyfs[PID]: LEVEL message`, sent to /dev/log (facility daemon);
//! the journal and rsyslog both read that form. Nothing here blocks a
//! request for long: a datagram send never waits for a full socket
//! (MSG_DONTWAIT), and a record that cannot be sent is dropped.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;

/// The syslog socket; `PLYFS_SYSLOG_SOCKET` overrides it (tests).
const DEV_LOG: &str = "/dev/log";

/// Where records go.
enum Sink {
    Stderr,
    Syslog { sock: UnixDatagram, path: PathBuf },
    File { file: std::fs::File, path: PathBuf },
}

struct Logger {
    /// RUST_LOG's filter and env_logger's stderr format.
    inner: env_logger::Logger,
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

/// Installs the logger (stderr until [`detach`] or [`to_file`]): the level
/// is `RUST_LOG`'s, else `debug` with `-d` and `warn` otherwise.
pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "warn" };
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_micros()
        .build();
    let max = inner.filter();
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        inner,
        sink: Mutex::new(Sink::Stderr),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        let _ = LOGGER.set(logger);
    }
}

/// What `log=` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// syslog (/dev/log), also in the foreground.
    Syslog,
    /// Append to this file.
    File(PathBuf),
}

impl Target {
    pub fn parse(v: &[u8]) -> Result<Target, String> {
        if v == b"syslog" {
            return Ok(Target::Syslog);
        }
        if v.is_empty() {
            return Err("option log: expected syslog or a file name".into());
        }
        use std::os::unix::ffi::OsStrExt;
        Ok(Target::File(PathBuf::from(std::ffi::OsStr::from_bytes(v))))
    }
}

/// Opens the log file of `log=FILE` (created mode 0600, appended to), so
/// that a bad path fails the mount with a message before anything else.
pub fn open_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("option log: cannot open {}: {e}", path.display()))
}

/// From now on records go to `file` (opened by [`open_file`]); the path
/// is kept for `plyfs status`. Absolute, since the daemon leaves its
/// working directory.
pub fn to_file(file: std::fs::File, path: &Path) {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    set_sink(Sink::File { file, path });
}

/// From now on records go to syslog.
pub fn to_syslog() {
    let path = std::env::var_os("PLYFS_SYSLOG_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEV_LOG));
    match UnixDatagram::unbound() {
        Ok(sock) => {
            let _ = sock.set_nonblocking(true);
            set_sink(Sink::Syslog { sock, path });
        }
        Err(e) => log::warn!("no syslog socket: {e}"),
    }
}

/// The daemon went to the background: stderr is /dev/null from now on, so
/// records go to syslog unless they already go to a file.
pub fn detach() {
    let to_stderr = LOGGER
        .get()
        .is_some_and(|l| matches!(*l.sink.lock(), Sink::Stderr));
    if to_stderr {
        to_syslog();
    }
}

fn set_sink(s: Sink) {
    if let Some(l) = LOGGER.get() {
        *l.sink.lock() = s;
    }
}

/// Where records go now, for `plyfs status`: `stderr`, `syslog:PATH` or
/// `file:PATH`.
pub fn destination() -> String {
    match LOGGER.get() {
        None => "none".into(),
        Some(l) => match &*l.sink.lock() {
            Sink::Stderr => "stderr".into(),
            Sink::Syslog { path, .. } => format!("syslog:{}", path.display()),
            Sink::File { path, .. } => format!("file:{}", path.display()),
        },
    }
}

/// The level records must have to be written (RUST_LOG / -d).
pub fn level() -> LevelFilter {
    LOGGER
        .get()
        .map(|l| l.inner.filter())
        .unwrap_or(LevelFilter::Off)
}

/// Writes `msg` whatever the level (what the user asked for with
/// SIGUSR1), at notice priority.
pub fn always(msg: &str) {
    match LOGGER.get() {
        Some(l) => l.write(None, "plyfs", msg),
        None => eprintln!("plyfs: {msg}"),
    }
}

/// syslog priority (facility daemon = 3) of a level.
fn priority(level: Option<Level>) -> u8 {
    let severity = match level {
        Some(Level::Error) => 3,
        Some(Level::Warn) => 4,
        // Notice, for records written whatever the level.
        None => 5,
        Some(Level::Info) => 6,
        Some(Level::Debug | Level::Trace) => 7,
    };
    3 * 8 + severity
}

/// One syslog datagram (RFC 3164 without timestamp and host, which the
/// receiver fills in).
pub fn syslog_line(level: Option<Level>, pid: u32, msg: &str) -> Vec<u8> {
    let label = level.map(|l| l.as_str()).unwrap_or("NOTICE");
    let mut out = format!("<{}>plyfs[{pid}]: {label} ", priority(level)).into_bytes();
    // One record, one line: the journal would split at newlines.
    out.extend(msg.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
    // Datagrams above this size are refused by some receivers.
    out.truncate(8192);
    out
}

/// One line of a log file: UTC time with microseconds, pid, level, target.
pub fn file_line(level: Option<Level>, target: &str, pid: u32, msg: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let label = level.map(|l| l.as_str()).unwrap_or("NOTICE");
    format!(
        "{} plyfs[{pid}] {label:<5} {target}: {msg}\n",
        utc_timestamp(now.as_secs(), now.subsec_micros())
    )
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` for seconds since the epoch.
pub fn utc_timestamp(secs: u64, micros: u32) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Logger {
    fn write(&self, level: Option<Level>, target: &str, msg: &str) {
        let pid = std::process::id();
        let mut sink = self.sink.lock();
        match &mut *sink {
            Sink::Stderr => {
                let label = level.map(|l| l.as_str()).unwrap_or("NOTICE");
                let _ = writeln!(std::io::stderr(), "[{label} {target}] {msg}");
            }
            Sink::Syslog { sock, path } => {
                let _ = sock.send_to(&syslog_line(level, pid, msg), &*path);
            }
            Sink::File { file, .. } => {
                let _ = file.write_all(file_line(level, target, pid, msg).as_bytes());
            }
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if matches!(*self.sink.lock(), Sink::Stderr) {
            self.inner.log(record);
            return;
        }
        let msg = record.args().to_string();
        self.write(Some(record.level()), record.target(), &msg);
    }

    fn flush(&self) {
        if let Sink::File { file, .. } = &mut *self.sink.lock() {
            let _ = file.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            utc_timestamp(951_782_400 + 3661, 42),
            "2000-02-29T01:01:01.000042Z"
        );
        assert_eq!(
            utc_timestamp(1_798_761_599, 0),
            "2026-12-31T23:59:59.000000Z"
        );
    }

    #[test]
    fn syslog_lines() {
        let l = syslog_line(Some(Level::Warn), 7, "a\nb");
        assert_eq!(l, b"<28>plyfs[7]: WARN a b");
        assert!(syslog_line(None, 1, "x").starts_with(b"<29>"));
        assert!(syslog_line(Some(Level::Debug), 1, "x").starts_with(b"<31>"));
        assert_eq!(syslog_line(None, 1, &"x".repeat(10_000)).len(), 8192);
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse(b"syslog").unwrap(), Target::Syslog);
        assert_eq!(
            Target::parse(b"/var/log/p.log").unwrap(),
            Target::File("/var/log/p.log".into())
        );
        assert!(Target::parse(b"").is_err());
    }
}
