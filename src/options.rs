//! Parsing of `-o` mount option strings, compatible with fuse-overlayfs,
//! mount(8)/mount.fuse3 and containers-storage.
//!
//! Option strings are bytes: layer paths may be any bytes but NUL. A comma
//! separates options unless escaped as `\,` or inside double quotes (SELinux
//! `context="a,b"`). In `lowerdir`, `:` separates layers and `\:` escapes it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One contiguous id range of a `uidmapping=C:H:S` option (fuse-overlayfs
/// semantics): ids `C..C+S` stored in the layers are reported as `H..H+S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub len: u32,
}

/// `xino=` (how inode numbers from several filesystems are combined).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Xino {
    Off,
    #[default]
    Auto,
    On,
}

/// `passthrough=`: which opens use kernel FUSE passthrough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passthrough {
    Off,
    /// Files in the upper layer (the default when available). Lower files
    /// opened read-only use the page cache, so a later copy-up and write
    /// through another descriptor stays visible to them.
    Upper,
    /// Every open. Fastest reads of lower files; but while a lower file is
    /// open, opening it for writing fails with EBUSY (the kernel allows one
    /// backing file per inode).
    All,
}

/// `uring=`: whether FUSE requests travel over io_uring (Linux 6.14+ with
/// `/sys/module/fuse/parameters/enable_uring` set) instead of /dev/fuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Uring {
    /// Use it when the kernel offers it, else /dev/fuse.
    #[default]
    Auto,
    /// Fail the mount when it cannot be used.
    On,
    Off,
}

impl Uring {
    pub fn parse(key: &str, v: &[u8]) -> Result<Uring, String> {
        match v {
            b"auto" => Ok(Uring::Auto),
            b"on" => Ok(Uring::On),
            b"off" => Ok(Uring::Off),
            other => Err(format!(
                "option {key}: expected auto, on or off, got {:?}",
                String::from_utf8_lossy(other)
            )),
        }
    }

    /// The default when `uring=` is not given: `PLYFS_URING` from the
    /// environment (lets an administrator or a test run switch transports
    /// for mounts started by other programs, e.g. podman), else auto.
    pub fn from_env() -> Result<Option<Uring>, String> {
        match std::env::var_os("PLYFS_URING") {
            Some(v) if !v.is_empty() => Uring::parse("PLYFS_URING", v.as_encoded_bytes()).map(Some),
            _ => Ok(None),
        }
    }
}

/// `redirect_dir=`: what renaming a directory with lower content does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectMode {
    /// Record the move in `overlay.redirect` (kernel `redirect_dir=on`).
    On,
    /// Copy the whole directory tree up, then move it: no redirect, so any
    /// kernel mount (including `userxattr`, which refuses redirects) shows
    /// the same tree. plyfs' default for unprivileged mounts.
    Copy,
    /// Follow existing redirects, refuse such renames with EXDEV (kernel
    /// `redirect_dir=follow`/`off`).
    Follow,
    /// Neither create nor follow redirects (kernel `nofollow`).
    NoFollow,
}

/// `uuid=`: the overlay's identity and the UUIDs in file handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UuidMode {
    /// Null overlay UUID; file handles carry a null UUID and layer UUIDs
    /// are not checked when decoding them.
    Off,
    /// Null overlay UUID (fsid from the upper filesystem).
    Null,
    /// `overlay.uuid` of the upper root if present; a new upper gets one.
    #[default]
    Auto,
    /// A persistent `overlay.uuid` on the upper root, made if missing.
    On,
}

/// `verity=`: fs-verity digests in `overlay.metacopy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verity {
    #[default]
    Off,
    /// Digests are recorded on metacopy copy-up when the lower file has
    /// one, and checked on open when a metacopy file carries one.
    On,
    /// Like `On`, and every metacopy file must carry a digest (EIO on open
    /// otherwise); copy-up copies data when the lower file has none.
    Require,
}

/// How the lower layers were given: the kernel refuses to mix the legacy
/// `lowerdir=` list with the new mount API's `lowerdir+=`/`datadir+=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LowerSyntax {
    #[default]
    None,
    /// `lowerdir=A:B::D` (a later `lowerdir=` replaces it).
    List,
    /// `lowerdir+=DIR` and `datadir+=DIR`, one layer per option.
    Append,
}

/// Everything the `-o` options (and the long flags) can set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MountOptions {
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (`lowerdir=A::D1::D2`, `datadir+=D`), below
    /// the regular ones: reachable only through absolute redirects of
    /// metacopy files.
    pub data_lowers: Vec<PathBuf>,
    pub lower_syntax: LowerSyntax,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,

    // Standard FUSE / mount(8) options.
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: Option<bool>,
    pub auto_unmount: bool,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub debug: bool,

    // Union behaviour.
    /// Skip fsync (podman's `volatile`, fuse-overlayfs' `fsync=0`).
    pub volatile: bool,
    /// Force `user.overlay.*` xattrs (kernel `userxattr`).
    pub userxattr: bool,
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub static_nlink: bool,
    pub noacl: bool,
    pub xino: Xino,
    pub ino32: bool,
    /// Entry/attribute cache timeout in seconds.
    pub timeout: Option<f64>,
    pub threads: Option<usize>,
    pub xattr_permissions: u8,
    /// `passthrough=off|on|all` (FUSE passthrough when the kernel allows
    /// it; `all` also passes read-only opens of lower files through).
    pub passthrough: Option<Passthrough>,
    /// `writeback=on|off` (kernel writeback cache when not passing through).
    pub writeback: Option<bool>,
    /// `uring=auto|on|off` (None: `PLYFS_URING`, else auto).
    pub uring: Option<Uring>,
    /// `redirect_dir=`; `None` picks by marker prefix (On for trusted.*,
    /// Copy for user.*).
    pub redirect: Option<RedirectMode>,
    /// SELinux label; accepted and passed on to the kernel is not possible
    /// for FUSE, so it is recorded and ignored.
    pub context: Option<String>,
    /// Kernel overlayfs features (`None`: not given; see `features`).
    pub metacopy: Option<bool>,
    pub index: Option<bool>,
    pub nfs_export: Option<bool>,
    pub uuid: Option<UuidMode>,
    pub verity: Option<Verity>,
    /// `log=syslog|FILE`: where the daemon logs (default: stderr in the
    /// foreground, syslog in the background).
    pub log: Option<crate::logging::Target>,
    /// `size=BYTES`: most the upper layer may hold (see `quota`).
    pub size_limit: Option<u64>,
    /// `inodes=N`: most objects the upper layer may hold.
    pub inodes_limit: Option<u64>,
    /// The options as given, without the layer directories (for `plyfs
    /// status`).
    pub given: Vec<String>,
}

/// Splits an option string at unescaped commas outside double quotes.
/// `\,` becomes `,`; other backslash escapes are kept for the value parser.
pub fn split_options(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        match c {
            b'\\' if i + 1 < s.len() => {
                if s[i + 1] == b',' {
                    cur.push(b',');
                } else {
                    cur.push(b'\\');
                    cur.push(s[i + 1]);
                }
                i += 2;
                continue;
            }
            b'"' => {
                in_quotes = !in_quotes;
                cur.push(c);
            }
            b',' if !in_quotes => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out.retain(|o| !o.is_empty());
    out
}

/// Splits a colon-separated list (`--lower A:B`) at unescaped colons and
/// removes the escapes; empty elements are dropped. `-o lowerdir=` values
/// go through [`parse_lowerdir`], which knows data-only layers.
pub fn split_lowerdir(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\\' if i + 1 < v.len() => {
                cur.push(v[i + 1]);
                i += 2;
                continue;
            }
            b':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out.retain(|p| !p.is_empty());
    out
}

/// Layer paths as bytes.
pub type LayerList = Vec<Vec<u8>>;

/// A `lowerdir=` value split the kernel's way: `:` separates layers, `::`
/// puts the layers after it in the data-only group, `\` escapes the next
/// byte. Returns (regular layers, data-only layers).
pub fn parse_lowerdir(v: &[u8]) -> Result<(LayerList, LayerList), String> {
    if v.first() == Some(&b':') {
        return Err(
            "option lowerdir: cannot start with ':' (use lowerdir+= to add a layer)".into(),
        );
    }
    let mut regular = Vec::new();
    let mut data = Vec::new();
    let mut cur = Vec::new();
    // Layers after a `::` are data-only; a regular one may not follow.
    let mut in_data = false;
    let mut i = 0;
    while i <= v.len() {
        match v.get(i) {
            Some(b'\\') if i + 1 < v.len() => {
                cur.push(v[i + 1]);
                i += 2;
                continue;
            }
            Some(b':') | None => {
                let colons = v[i..].iter().take_while(|&&c| c == b':').count();
                if colons > 2 {
                    return Err(
                        "option lowerdir: only single ':' or double '::' sequences of \
                                unescaped colons are allowed"
                            .into(),
                    );
                }
                if i < v.len() && i + colons == v.len() {
                    return Err("option lowerdir: unescaped trailing colon".into());
                }
                if cur.is_empty() {
                    return Err("option lowerdir: empty layer path".into());
                }
                let layer = std::mem::take(&mut cur);
                if in_data {
                    data.push(layer);
                } else {
                    regular.push(layer);
                }
                if colons == 2 {
                    in_data = true;
                } else if colons == 1 && in_data {
                    return Err(
                        "option lowerdir: regular lower layers cannot follow data-only layers \
                         ('::')"
                            .into(),
                    );
                }
                i += colons.max(1);
                continue;
            }
            Some(&c) => cur.push(c),
        }
        i += 1;
    }
    Ok((regular, data))
}

/// Parses a size or count with an optional binary suffix: `k`, `M`, `G`,
/// `T` (either case, also `KiB`-style), like tmpfs's `size=`.
pub fn parse_size(key: &str, v: &[u8]) -> Result<u64, String> {
    let s = text(key, v)?;
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = t.split_at(digits);
    let bad = || {
        format!("option {key}: expected a number with an optional k, M, G or T suffix, got {s:?}")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("option {key}: {s:?} is too large"))
}

/// Removes backslash escapes from a single path value.
pub fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 1 < v.len() {
            out.push(v[i + 1]);
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn path(v: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(v.to_vec()))
}

fn text(key: &str, v: &[u8]) -> Result<String, String> {
    String::from_utf8(v.to_vec()).map_err(|_| format!("option {key}: value is not valid UTF-8"))
}

fn number<T: std::str::FromStr>(key: &str, v: &[u8]) -> Result<T, String> {
    let s = text(key, v)?;
    s.trim()
        .parse()
        .map_err(|_| format!("option {key}: invalid number {s:?}"))
}

fn on_off(key: &str, v: &[u8]) -> Result<bool, String> {
    match v {
        b"on" | b"1" | b"true" | b"yes" => Ok(true),
        b"off" | b"0" | b"false" | b"no" => Ok(false),
        _ => Err(format!(
            "option {key}: expected on or off, got {:?}",
            String::from_utf8_lossy(v)
        )),
    }
}

/// `on` or `off` only, as the kernel's overlay options take them.
fn on_off_strict(key: &str, v: &[u8]) -> Result<bool, String> {
    match v {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(format!(
            "option {key}: expected on or off, got {:?}",
            String::from_utf8_lossy(v)
        )),
    }
}

/// Parses `C:H:S[:C:H:S...]` (fuse-overlayfs mapping syntax).
pub fn parse_id_map(key: &str, v: &[u8]) -> Result<Vec<IdRange>, String> {
    let s = text(key, v)?;
    let nums: Result<Vec<u32>, _> = s.split(':').map(|p| p.trim().parse::<u32>()).collect();
    let nums = nums.map_err(|_| format!("option {key}: expected C:H:S[:C:H:S...], got {s:?}"))?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(format!(
            "option {key}: expected triples C:H:S[:C:H:S...], got {s:?}"
        ));
    }
    let ranges: Vec<IdRange> = nums
        .chunks(3)
        .map(|c| IdRange {
            container: c[0],
            host: c[1],
            len: c[2],
        })
        .collect();
    for r in &ranges {
        if r.len == 0
            || r.container.checked_add(r.len - 1).is_none()
            || r.host.checked_add(r.len - 1).is_none()
        {
            return Err(format!("option {key}: invalid range in {s:?}"));
        }
    }
    Ok(ranges)
}

/// Flags mount(8), mount.fuse3, fstab or container tools pass that have no
/// meaning for plyfs, or whose effect the kernel applies by itself.
const IGNORED: &[&str] = &[
    "rw",
    "dev",
    "suid",
    "exec",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "atime",
    "diratime",
    "nodiratime",
    "iversion",
    "noiversion",
    "async",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
    "bind",
    "rbind",
    "threaded",
    "clone_fd",
    "noxattrs=0",
    // New mount API: record the calling task's credentials. plyfs always
    // reaches the layers with the daemon's own credentials, which is what
    // the flag asks for when the mounter and the caller are one process.
    "override_creds",
];

impl MountOptions {
    /// Applies one `-o` argument (a comma-separated list).
    pub fn apply_str(&mut self, s: &[u8]) -> Result<(), String> {
        for opt in split_options(s) {
            self.apply_one(&opt)?;
            let shown = !(opt.starts_with(b"lowerdir=")
                || opt.starts_with(b"upperdir=")
                || opt.starts_with(b"workdir="));
            if shown {
                self.given.push(String::from_utf8_lossy(&opt).into_owned());
            }
        }
        Ok(())
    }

    /// Applies a single option.
    pub fn apply_one(&mut self, opt: &[u8]) -> Result<(), String> {
        let (key, value) = match opt.iter().position(|&b| b == b'=') {
            Some(i) => (&opt[..i], Some(&opt[i + 1..])),
            None => (opt, None),
        };
        let key_str = String::from_utf8_lossy(key).into_owned();
        let k = key_str.as_str();
        let need = |v: Option<&[u8]>| -> Result<Vec<u8>, String> {
            v.map(<[u8]>::to_vec)
                .ok_or_else(|| format!("option {k} needs a value ({k}=...)"))
        };
        if value.is_none() && IGNORED.contains(&k) {
            return Ok(());
        }
        if let Some(v) = value {
            let full = format!("{k}={}", String::from_utf8_lossy(v));
            if IGNORED.contains(&full.as_str()) {
                return Ok(());
            }
        }
        match k {
            "lowerdir" => {
                let v = need(value)?;
                if v.is_empty() {
                    return Err("option lowerdir: no lower directory given".into());
                }
                let (regular, data) = parse_lowerdir(&v)?;
                // Like the kernel, a later lowerdir= replaces every layer
                // given before (also those of lowerdir+=).
                self.lowers = regular.iter().map(|p| path(p)).collect();
                self.data_lowers = data.iter().map(|p| path(p)).collect();
                self.lower_syntax = LowerSyntax::List;
            }
            "lowerdir+" | "datadir+" => {
                let v = need(value)?;
                if v.is_empty() {
                    return Err(format!("option {k}: no directory given"));
                }
                if self.lower_syntax == LowerSyntax::List {
                    return Err(format!(
                        "option {k}: lowerdir+ and datadir+ cannot follow lowerdir"
                    ));
                }
                // One layer per option, taken literally: no ':' escaping.
                if k == "datadir+" {
                    self.data_lowers.push(path(&v));
                } else if !self.data_lowers.is_empty() {
                    return Err(
                        "option lowerdir+: regular lower layers cannot follow data layers \
                                (datadir+)"
                            .into(),
                    );
                } else {
                    self.lowers.push(path(&v));
                }
                self.lower_syntax = LowerSyntax::Append;
            }
            "upperdir" => self.upper = Some(path(&unescape(&need(value)?))),
            "workdir" => self.work = Some(path(&unescape(&need(value)?))),
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "default_permissions" => self.default_permissions = Some(true),
            "auto_unmount" => self.auto_unmount = true,
            "fsname" => self.fsname = Some(text(k, &need(value)?)?),
            "subtype" => self.subtype = Some(text(k, &need(value)?)?),
            "ro" => self.read_only = true,
            "nodev" => self.nodev = true,
            "nosuid" => self.nosuid = true,
            "noexec" => self.noexec = true,
            "noatime" => self.noatime = true,
            "sync" => self.sync = true,
            "dirsync" => self.dirsync = true,
            "debug" => self.debug = true,
            "volatile" => self.volatile = true,
            "fsync" => self.volatile = !on_off(k, &need(value)?)?,
            "userxattr" => self.userxattr = true,
            "uidmapping" => self.uid_map = parse_id_map(k, &need(value)?)?,
            "gidmapping" => self.gid_map = parse_id_map(k, &need(value)?)?,
            "squash_to_root" => self.squash_to_root = true,
            "squash_to_uid" => self.squash_to_uid = Some(number(k, &need(value)?)?),
            "squash_to_gid" => self.squash_to_gid = Some(number(k, &need(value)?)?),
            "static_nlink" => self.static_nlink = true,
            "noacl" => self.noacl = true,
            "xino" => {
                self.xino = match need(value)?.as_slice() {
                    b"off" => Xino::Off,
                    b"auto" => Xino::Auto,
                    b"on" => Xino::On,
                    other => {
                        return Err(format!(
                            "option xino: expected off, auto or on, got {:?}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                }
            }
            "ino32_t" => self.ino32 = true,
            "timeout" => {
                let t: f64 = number(k, &need(value)?)?;
                if !(t.is_finite() && t >= 0.0) {
                    return Err(format!("option timeout: invalid value {t}"));
                }
                self.timeout = Some(t);
            }
            "threads" | "max_threads" => {
                let n: usize = number(k, &need(value)?)?;
                if n == 0 {
                    return Err(format!("option {k}: must be at least 1"));
                }
                self.threads = Some(n);
            }
            "xattr_permissions" => {
                let n: u8 = number(k, &need(value)?)?;
                if n > 2 {
                    return Err("option xattr_permissions: expected 0, 1 or 2".into());
                }
                self.xattr_permissions = n;
            }
            "passthrough" => {
                self.passthrough = Some(match need(value)?.as_slice() {
                    b"all" => Passthrough::All,
                    v => {
                        if on_off(k, v)? {
                            Passthrough::Upper
                        } else {
                            Passthrough::Off
                        }
                    }
                })
            }
            "writeback" => self.writeback = Some(on_off(k, &need(value)?)?),
            "uring" => self.uring = Some(Uring::parse(k, &need(value)?)?),
            "log" => self.log = Some(crate::logging::Target::parse(&need(value)?)?),
            // 0 means no limit, as for tmpfs.
            "size" => self.size_limit = Some(parse_size(k, &need(value)?)?).filter(|n| *n > 0),
            "inodes" => self.inodes_limit = Some(parse_size(k, &need(value)?)?).filter(|n| *n > 0),
            "context" | "fscontext" | "defcontext" | "rootcontext" => {
                self.context = Some(text(k, &need(value)?)?.trim_matches('"').to_string());
            }
            "redirect_dir" => {
                self.redirect = Some(match need(value)?.as_slice() {
                    b"on" => RedirectMode::On,
                    b"copy" => RedirectMode::Copy,
                    b"follow" | b"off" => RedirectMode::Follow,
                    b"nofollow" => RedirectMode::NoFollow,
                    other => {
                        return Err(format!(
                            "option redirect_dir: expected on, copy, follow, off or nofollow, got {:?}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                })
            }
            "metacopy" => self.metacopy = Some(on_off_strict(k, &need(value)?)?),
            "index" => self.index = Some(on_off_strict(k, &need(value)?)?),
            "nfs_export" => self.nfs_export = Some(on_off_strict(k, &need(value)?)?),
            "uuid" => {
                self.uuid = Some(match need(value)?.as_slice() {
                    b"off" => UuidMode::Off,
                    b"null" => UuidMode::Null,
                    b"auto" => UuidMode::Auto,
                    b"on" => UuidMode::On,
                    other => {
                        return Err(format!(
                            "option uuid: expected off, null, auto or on, got {:?}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                })
            }
            "verity" => {
                self.verity = Some(match need(value)?.as_slice() {
                    b"off" => Verity::Off,
                    b"on" => Verity::On,
                    b"require" => Verity::Require,
                    other => {
                        return Err(format!(
                            "option verity: expected off, on or require, got {:?}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                })
            }
            _ if k.starts_with("x-") || k.starts_with("comment=") => {}
            _ => {
                return Err(format!(
                    "unknown option {:?} (see plyfs --help)",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MountOptions, String> {
        let mut o = MountOptions::default();
        o.apply_str(s.as_bytes())?;
        Ok(o)
    }

    #[test]
    fn basic_layers() {
        let o = parse("lowerdir=/a:/b:/c,upperdir=/u,workdir=/w").unwrap();
        assert_eq!(
            o.lowers,
            vec![PathBuf::from("/a"), "/b".into(), "/c".into()]
        );
        assert_eq!(o.upper, Some("/u".into()));
        assert_eq!(o.work, Some("/w".into()));
    }

    #[test]
    fn escaped_colon_and_comma() {
        let o = parse(r"lowerdir=/a\:x:/b\,y,upperdir=/u\:1,workdir=/w").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a:x"), "/b,y".into()]);
        assert_eq!(o.upper, Some("/u:1".into()));
    }

    #[test]
    fn quoted_context_keeps_commas() {
        let o = parse(r#"lowerdir=/a,context="system_u:object_r:container_file_t:s0:c1,c2",rw"#)
            .unwrap();
        assert_eq!(
            o.context.as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
        assert_eq!(o.lowers.len(), 1);
    }

    #[test]
    fn ignores_harmless_flags_and_empty_elements() {
        let o =
            parse("rw,lowerdir=/a,,dev,suid,relatime,lazytime,exec,noatime,nodev,nosuid,private,,")
                .unwrap();
        assert!(o.noatime && o.nodev && o.nosuid);
        assert_eq!(o.lowers.len(), 1);
    }

    #[test]
    fn podman_options() {
        let o = parse(
            "lowerdir=/l1:/l2,upperdir=/d/diff,workdir=/d/work,,volatile,xattr_permissions=2",
        )
        .unwrap();
        assert!(o.volatile);
        assert_eq!(o.xattr_permissions, 2);
        let o = parse("lowerdir=/a,fsync=0").unwrap();
        assert!(o.volatile);
    }

    #[test]
    fn fuse_options() {
        let o =
            parse("lowerdir=/a,allow_other,default_permissions,auto_unmount,fsname=src,subtype=x")
                .unwrap();
        assert!(o.allow_other && o.auto_unmount);
        assert_eq!(o.default_permissions, Some(true));
        assert_eq!(o.fsname.as_deref(), Some("src"));
        assert_eq!(o.subtype.as_deref(), Some("x"));
    }

    #[test]
    fn mappings() {
        let o =
            parse("lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1").unwrap();
        assert_eq!(o.uid_map.len(), 2);
        assert_eq!(
            o.uid_map[1],
            IdRange {
                container: 1,
                host: 100000,
                len: 65536
            }
        );
        assert!(parse("lowerdir=/a,uidmapping=0:1000").is_err());
        assert!(parse("lowerdir=/a,uidmapping=0:x:1").is_err());
        assert!(parse("lowerdir=/a,uidmapping=0:1:0").is_err());
    }

    #[test]
    fn misc_options() {
        let o = parse("lowerdir=/a,squash_to_uid=5,squash_to_gid=6,static_nlink,noacl,xino=off,ino32_t,timeout=2.5")
            .unwrap();
        assert_eq!(o.squash_to_uid, Some(5));
        assert_eq!(o.squash_to_gid, Some(6));
        assert!(o.static_nlink && o.noacl && o.ino32);
        assert_eq!(o.xino, Xino::Off);
        assert_eq!(o.timeout, Some(2.5));
        assert!(parse("lowerdir=/a,xino=maybe").is_err());
        assert_eq!(
            parse("lowerdir=/a,uring=on").unwrap().uring,
            Some(Uring::On)
        );
        assert_eq!(
            parse("lowerdir=/a,uring=off").unwrap().uring,
            Some(Uring::Off)
        );
        assert_eq!(
            parse("lowerdir=/a,uring=auto").unwrap().uring,
            Some(Uring::Auto)
        );
        assert_eq!(parse("lowerdir=/a").unwrap().uring, None);
        assert!(parse("lowerdir=/a,uring=yes").is_err());
        assert!(parse("lowerdir=/a,uring").is_err());
        assert!(parse("lowerdir=/a,timeout=-1").is_err());
    }

    #[test]
    fn unknown_and_malformed() {
        let e = parse("lowerdir=/a,frobnicate").unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
        assert!(parse("lowerdir").unwrap_err().contains("needs a value"));
        assert!(parse("lowerdir=").is_err());
        assert_eq!(
            parse("lowerdir=/a,metacopy=on").unwrap().metacopy,
            Some(true)
        );
        assert!(parse("lowerdir=/a,metacopy=yes").is_err());
        assert!(parse("lowerdir=/a,index=maybe").is_err());
        assert_eq!(
            parse("lowerdir=/a,redirect_dir=on").unwrap().redirect,
            Some(RedirectMode::On)
        );
        assert_eq!(
            parse("lowerdir=/a,redirect_dir=off").unwrap().redirect,
            Some(RedirectMode::Follow)
        );
        assert!(parse("lowerdir=/a,redirect_dir=maybe").is_err());
    }

    #[test]
    fn non_utf8_paths() {
        let mut o = MountOptions::default();
        o.apply_str(b"lowerdir=/a\xff:/b,upperdir=/u\xfe").unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(o.lowers[0].as_os_str().as_bytes(), b"/a\xff");
        assert_eq!(o.upper.unwrap().as_os_str().as_bytes(), b"/u\xfe");
    }

    #[test]
    fn sizes_and_logs() {
        let o = parse("lowerdir=/a,size=10M,inodes=2k,log=/tmp/x.log").unwrap();
        assert_eq!(o.size_limit, Some(10 << 20));
        assert_eq!(o.inodes_limit, Some(2048));
        assert_eq!(
            o.log,
            Some(crate::logging::Target::File("/tmp/x.log".into()))
        );
        assert_eq!(o.given, vec!["size=10M", "inodes=2k", "log=/tmp/x.log"]);
        assert_eq!(
            parse("lowerdir=/a,size=3G").unwrap().size_limit,
            Some(3 << 30)
        );
        assert_eq!(
            parse("lowerdir=/a,size=1t").unwrap().size_limit,
            Some(1 << 40)
        );
        assert_eq!(
            parse("lowerdir=/a,size=4096").unwrap().size_limit,
            Some(4096)
        );
        assert_eq!(
            parse("lowerdir=/a,size=5KiB").unwrap().size_limit,
            Some(5120)
        );
        assert_eq!(parse("lowerdir=/a,size=0").unwrap().size_limit, None);
        assert!(parse("lowerdir=/a,size=10X").is_err());
        assert!(parse("lowerdir=/a,size=-1").is_err());
        assert!(parse("lowerdir=/a,size=M").is_err());
        assert!(parse("lowerdir=/a,size=99999999999T").is_err());
        assert!(parse("lowerdir=/a,log=").is_err());
        assert_eq!(
            parse("lowerdir=/a,log=syslog").unwrap().log,
            Some(crate::logging::Target::Syslog)
        );
    }

    #[test]
    fn split_helpers() {
        assert_eq!(split_options(b"a,,b"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(split_lowerdir(b"a:b"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(unescape(br"a\:b\\c"), b"a:b\\c".to_vec());
    }

    #[test]
    fn data_only_layers() {
        let o = parse("lowerdir=/l1:/l2::/d1::/d2").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l1"), "/l2".into()]);
        assert_eq!(o.data_lowers, vec![PathBuf::from("/d1"), "/d2".into()]);
        let o = parse(r"lowerdir=/a\:\:b::/d").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a::b")]);
        assert_eq!(o.data_lowers, vec![PathBuf::from("/d")]);
        for bad in [
            "lowerdir=/l1::/d1:/l2",
            "lowerdir=/l1:::/d1",
            "lowerdir=/l1:",
            "lowerdir=/l1::",
            "lowerdir=:/l1",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn new_mount_api_layers() {
        let o = parse("lowerdir+=/a:b,lowerdir+=/c,datadir+=/d,datadir+=/e").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), "/c".into()]);
        assert_eq!(o.data_lowers, vec![PathBuf::from("/d"), "/e".into()]);
        let e = parse("lowerdir=/a,lowerdir+=/b").unwrap_err();
        assert!(e.contains("cannot follow lowerdir"), "{e}");
        let e = parse("lowerdir+=/a,datadir+=/d,lowerdir+=/b").unwrap_err();
        assert!(e.contains("cannot follow data layers"), "{e}");
        // A later legacy list replaces everything, as in the kernel.
        let o = parse("lowerdir+=/a,datadir+=/d,lowerdir=/b").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/b")]);
        assert!(o.data_lowers.is_empty());
    }

    #[test]
    fn kernel_feature_options() {
        let o = parse("lowerdir=/a,metacopy=on,index=off,nfs_export=off,uuid=null,verity=require")
            .unwrap();
        assert_eq!(o.metacopy, Some(true));
        assert_eq!(o.index, Some(false));
        assert_eq!(o.nfs_export, Some(false));
        assert_eq!(o.uuid, Some(UuidMode::Null));
        assert_eq!(o.verity, Some(Verity::Require));
        assert!(parse("lowerdir=/a,uuid=maybe").is_err());
        assert!(parse("lowerdir=/a,verity=yes").is_err());
        assert!(parse("lowerdir=/a,override_creds").is_ok());
    }
}
