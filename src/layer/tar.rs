//! A small POSIX.1-2001 (PAX) tar writer and a streaming tar reader.
//!
//! Written by hand rather than with the `tar` crate because layer tools need
//! three things that crate does not give together: every header byte under
//! our control (same input, same bytes: no user/group name lookups, sorted
//! PAX records, fixed PAX header names), binary `SCHILY.xattr.*` records as
//! the OCI tooling writes them, and hard limits on everything a hostile
//! archive can make a reader buffer (PAX records, GNU long names), with
//! problems confined to one entry where the stream allows it.
//!
//! The writer emits ustar headers, adding a PAX `x` header only for what
//! ustar cannot hold (long names and link targets, large sizes and ids,
//! sub-second mtimes, xattrs). The reader understands ustar, PAX (`x`,
//! `g`), GNU (`L`/`K` long names, base-256 numbers) and old v7 headers.

use std::io::{self, Read, Write};

pub const BLOCK: usize = 512;

/// Largest PAX extended header or GNU long name the reader accepts.
pub const MAX_META: u64 = 1 << 20;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    /// A hard link to an earlier entry (`link` holds its path).
    Link,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// A type this reader does not extract (GNU sparse, volume labels, ...).
    Unsupported(u8),
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Link => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
            Kind::Unsupported(f) => f,
        }
    }

    /// Entries of these kinds carry no data whatever their size field says
    /// (as GNU tar and Go's archive/tar read them).
    fn header_only(self) -> bool {
        matches!(
            self,
            Kind::Link | Kind::Symlink | Kind::Char | Kind::Block | Kind::Dir | Kind::Fifo
        )
    }
}

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Path inside the archive, without a trailing `/` (the writer adds one
    /// for directories).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Data bytes that follow (regular files only).
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Symlink target or hard-link target path.
    pub link: Vec<u8>,
    /// Device major and minor numbers.
    pub dev: (u32, u32),
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Set by the reader when this entry cannot be trusted or represented
    /// (a name longer than [`MAX_META`], a sparse file, ...); the caller
    /// refuses the entry and goes on with the next one.
    pub problem: Option<String>,
}

impl Header {
    pub fn new(path: Vec<u8>, kind: Kind) -> Header {
        Header {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            problem: None,
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Writes `value` as zero-padded octal filling `field` but its last byte
/// (a NUL); false if it does not fit.
fn put_octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{value:o}");
    if s.len() > digits {
        return false;
    }
    let pad = digits - s.len();
    field[..pad].fill(b'0');
    field[pad..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// GNU base-256: the top bit of the first byte set, then big-endian bytes.
fn put_base256(field: &mut [u8], value: u64) {
    field.fill(0);
    let bytes = value.to_be_bytes();
    let n = field.len();
    let take = bytes.len().min(n);
    field[n - take..].copy_from_slice(&bytes[bytes.len() - take..]);
    field[0] |= 0x80;
}

/// A numeric field: octal when it fits, else base-256 (which every reader
/// that also reads PAX understands; PAX records carry the value as well).
fn put_num(field: &mut [u8], value: u64) -> bool {
    if put_octal(field, value) {
        true
    } else {
        put_base256(field, value);
        false
    }
}

/// PAX time value: seconds with an optional fraction, shortest form.
fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    let (whole, frac, neg) = if sec < 0 {
        // -2 s + 0.5 s is written -1.5.
        ((-(sec + 1)) as u64, 1_000_000_000 - nsec, true)
    } else {
        (sec as u64, nsec, false)
    };
    let f = format!("{frac:09}");
    let f = f.trim_end_matches('0');
    format!("{}{whole}.{f}", if neg { "-" } else { "" })
}

/// One PAX record: `LEN key=value\n`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits `full` into ustar (prefix, name), if it fits.
fn split_ustar(full: &[u8]) -> Option<(&[u8], &[u8])> {
    if full.len() <= 100 {
        return Some((&[], full));
    }
    // The shortest prefix whose remainder fits the 100-byte name field.
    let min = full.len().saturating_sub(101);
    (min..full.len().min(156))
        .find(|&i| full[i] == b'/' && i > 0 && full.len() - i - 1 <= 100 && i + 1 < full.len())
        .map(|i| (&full[..i], &full[i + 1..]))
}

fn checksum(block: &[u8; BLOCK]) -> u64 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u64)
        .sum()
}

fn finish_block(block: &mut [u8; BLOCK]) {
    let sum = checksum(block);
    let s = format!("{sum:06o}");
    block[148..154].copy_from_slice(s.as_bytes());
    block[154] = 0;
    block[155] = b' ';
}

/// ustar header block for `h`, plus the PAX records it needs (sorted).
fn encode(h: &Header) -> io::Result<([u8; BLOCK], Vec<u8>)> {
    let mut b = [0u8; BLOCK];
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut full = h.path.clone();
    if h.kind == Kind::Dir && !full.ends_with(b"/") {
        full.push(b'/');
    }
    match split_ustar(&full) {
        Some((prefix, name)) => {
            b[..name.len()].copy_from_slice(name);
            b[345..345 + prefix.len()].copy_from_slice(prefix);
        }
        None => {
            b[..100].copy_from_slice(&full[..100]);
            pax.push((b"path".to_vec(), full.clone()));
        }
    }
    put_octal(&mut b[100..108], (h.mode & 0o7777) as u64);
    if !put_num(&mut b[108..116], h.uid as u64) {
        pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
    }
    if !put_num(&mut b[116..124], h.gid as u64) {
        pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
    }
    let size = if h.kind == Kind::File { h.size } else { 0 };
    if !put_num(&mut b[124..136], size) {
        pax.push((b"size".to_vec(), size.to_string().into_bytes()));
    }
    let (sec, nsec) = h.mtime;
    if sec < 0 {
        put_octal(&mut b[136..148], 0);
    } else {
        put_num(&mut b[136..148], sec as u64);
    }
    if nsec != 0 || sec < 0 || sec as u64 >= 1 << 33 {
        pax.push((b"mtime".to_vec(), pax_time(sec, nsec).into_bytes()));
    }
    b[156] = h.kind.flag();
    if !h.link.is_empty() {
        if h.link.len() <= 100 {
            b[157..157 + h.link.len()].copy_from_slice(&h.link);
        } else {
            b[157..257].copy_from_slice(&h.link[..100]);
            pax.push((b"linkpath".to_vec(), h.link.clone()));
        }
    }
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    if matches!(h.kind, Kind::Char | Kind::Block) {
        put_num(&mut b[329..337], h.dev.0 as u64);
        put_num(&mut b[337..345], h.dev.1 as u64);
    }
    for (name, value) in &h.xattrs {
        if name.contains(&b'=') || name.contains(&0) || name.is_empty() {
            return Err(invalid(format!(
                "xattr name {:?} cannot be stored in a PAX record",
                String::from_utf8_lossy(name)
            )));
        }
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax.push((key, value.clone()));
    }
    pax.sort();
    let mut records = Vec::new();
    for (k, v) in &pax {
        pax_record(&mut records, k, v);
    }
    finish_block(&mut b);
    Ok((b, records))
}

/// Streams an archive: `append` a header, `write_data` exactly its size,
/// then the next header; `finish` writes the end-of-archive blocks.
pub struct Writer<W: Write> {
    out: W,
    /// Data bytes the current entry still expects.
    remaining: u64,
    /// Padding owed after the current entry's data.
    pad: usize,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            remaining: 0,
            pad: 0,
        }
    }

    fn close_entry(&mut self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(invalid(format!(
                "tar entry is {} bytes short of its size",
                self.remaining
            )));
        }
        if self.pad != 0 {
            self.out.write_all(&[0u8; BLOCK][..self.pad])?;
            self.pad = 0;
        }
        Ok(())
    }

    /// Writes the header(s) of one entry.
    pub fn append(&mut self, h: &Header) -> io::Result<()> {
        self.close_entry()?;
        let (block, records) = encode(h)?;
        if !records.is_empty() {
            let mut x = [0u8; BLOCK];
            let name = b"././@PaxHeader";
            x[..name.len()].copy_from_slice(name);
            put_octal(&mut x[100..108], 0o644);
            put_octal(&mut x[108..116], 0);
            put_octal(&mut x[116..124], 0);
            put_num(&mut x[124..136], records.len() as u64);
            put_octal(&mut x[136..148], 0);
            x[156] = b'x';
            x[257..263].copy_from_slice(b"ustar\0");
            x[263..265].copy_from_slice(b"00");
            finish_block(&mut x);
            self.out.write_all(&x)?;
            self.out.write_all(&records)?;
            let rem = records.len() % BLOCK;
            if rem != 0 {
                self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
            }
        }
        self.out.write_all(&block)?;
        let size = if h.kind == Kind::File { h.size } else { 0 };
        self.remaining = size;
        self.pad = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
        Ok(())
    }

    /// Writes data of the current entry; never more than its header said.
    pub fn write_data(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() as u64 > self.remaining {
            return Err(invalid("tar entry data longer than its size"));
        }
        self.out.write_all(buf)?;
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    /// Writes the two zero blocks that end an archive and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        self.close_entry()?;
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // Base-256; negative values (0xff) are not meaningful here.
        if field[0] == 0xff {
            return None;
        }
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn cstr_field(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Parses a PAX time (`S[.F]`, maybe negative).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.as_bytes().iter().take(9).copied().collect::<Vec<u8>>();
    digits.resize(9, b'0');
    let nsec: u32 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    Some(if !neg {
        (whole, nsec)
    } else if nsec == 0 {
        (-whole, 0)
    } else {
        (-whole - 1, 1_000_000_000 - nsec)
    })
}

/// PAX records of one extended header.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

fn parse_pax(mut data: &[u8], pax: &mut Pax) -> io::Result<()> {
    let bad = || invalid("malformed PAX extended header");
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let num = |v: &[u8]| -> io::Result<u64> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(num(value)?),
            b"uid" => pax.uid = Some(u32::try_from(num(value)?).map_err(|_| bad())?),
            b"gid" => pax.gid = Some(u32::try_from(num(value)?).map_err(|_| bad())?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(bad)?),
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = &k[b"SCHILY.xattr.".len()..];
                pax.xattrs.retain(|(n, _)| n != name);
                pax.xattrs.push((name.to_vec(), value.to_vec()));
            }
            k if k.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
    }
    Ok(())
}

/// Reads an archive one entry at a time; data is read with
/// [`Reader::read_data`] and anything left unread is skipped.
pub struct Reader<R: Read> {
    inp: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    done: bool,
    /// Entries read so far (for messages).
    pub count: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(inp: R) -> Reader<R> {
        Reader {
            inp,
            remaining: 0,
            pad: 0,
            done: false,
            count: 0,
        }
    }

    /// Reads one block; `Ok(false)` on a clean end of input.
    fn block(&mut self, b: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.inp.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(invalid("archive ends in the middle of a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = self.inp.read(&mut buf[..want])?;
            if got == 0 {
                return Err(invalid("archive ends in the middle of an entry"));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads a metadata member (PAX header, GNU long name) of `size` bytes
    /// into memory, or skips it and returns None when it is over the limit.
    fn meta(&mut self, size: u64) -> io::Result<Option<Vec<u8>>> {
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if size > MAX_META {
            self.skip(padded)?;
            return Ok(None);
        }
        let mut v = vec![0u8; padded as usize];
        self.inp.read_exact(&mut v).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("archive ends in the middle of an extended header")
            } else {
                e
            }
        })?;
        v.truncate(size as usize);
        Ok(Some(v))
    }

    /// The next entry, or None at the end of the archive.
    pub fn next_entry(&mut self) -> io::Result<Option<Header>> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.pad;
        self.skip(rest)?;
        self.remaining = 0;
        self.pad = 0;
        let mut pax = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut problem: Option<String> = None;
        let mut b = [0u8; BLOCK];
        loop {
            if !self.block(&mut b)? {
                // No end-of-archive blocks: accept a clean end at a header
                // boundary, as GNU tar does.
                self.done = true;
                return Ok(None);
            }
            if is_zero(&b) {
                self.done = true;
                return Ok(None);
            }
            let bad_sum = || {
                invalid(format!(
                    "header checksum mismatch after entry {} (not a tar archive, or corrupt)",
                    self.count
                ))
            };
            let stored = parse_octal(&b[148..156]).ok_or_else(bad_sum)?;
            let unsigned = checksum(&b);
            let signed: i64 = b
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        x as i8 as i64
                    }
                })
                .sum();
            if stored != unsigned && stored as i64 != signed {
                return Err(bad_sum());
            }
            let flag = b[156];
            let size = parse_octal(&b[124..136]).ok_or_else(|| invalid("bad size field"))?;
            match flag {
                b'x' | b'g' => {
                    let data = self.meta(size)?;
                    match (flag, data) {
                        (b'x', Some(d)) => parse_pax(&d, &mut pax)?,
                        (b'x', None) => {
                            problem = Some("PAX extended header larger than 1 MiB".into())
                        }
                        // Global headers would change every later entry's
                        // meaning; layer tools never write them, and
                        // honouring `path` there is unsafe. Ignored.
                        _ => {}
                    }
                }
                b'L' | b'K' => {
                    let data = self.meta(size)?;
                    match data {
                        Some(mut d) => {
                            while d.last() == Some(&0) {
                                d.pop();
                            }
                            if flag == b'L' {
                                long_name = Some(d);
                            } else {
                                long_link = Some(d);
                            }
                        }
                        None => problem = Some("GNU long name larger than 1 MiB".into()),
                    }
                }
                _ => break,
            }
        }
        self.count += 1;
        let ustar = &b[257..263] == b"ustar\0";
        let mut path = match (pax.path.take(), long_name) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => {
                let name = cstr_field(&b[..100]);
                let prefix = if ustar { cstr_field(&b[345..500]) } else { &[] };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    let mut p = prefix.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(name);
                    p
                }
            }
        };
        let flag = b[156];
        let mut kind = match flag {
            b'0' | b'7' => Kind::File,
            0 if path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            f => Kind::Unsupported(f),
        };
        if pax.sparse && kind == Kind::File {
            kind = Kind::Unsupported(b'S');
        }
        while path.len() > 1 && path.ends_with(b"/") {
            path.pop();
        }
        let link = pax
            .linkpath
            .take()
            .or(long_link)
            .unwrap_or_else(|| cstr_field(&b[157..257]).to_vec());
        let field = |r: std::ops::Range<usize>, what: &str| {
            parse_octal(&b[r]).ok_or_else(|| invalid(format!("bad {what} field")))
        };
        let size = match pax.size {
            Some(s) => s,
            None => field(124..136, "size")?,
        };
        let uid = match pax.uid {
            Some(u) => u,
            None => u32::try_from(field(108..116, "uid")?).map_err(|_| invalid("uid too large"))?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => u32::try_from(field(116..124, "gid")?).map_err(|_| invalid("gid too large"))?,
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => (field(136..148, "mtime")? as i64, 0),
        };
        let dev = if ustar || &b[257..265] == b"ustar  \0" {
            (
                field(329..337, "devmajor")? as u32,
                field(337..345, "devminor")? as u32,
            )
        } else {
            (0, 0)
        };
        let mut xattrs = pax.xattrs;
        xattrs.sort();
        let data = if kind.header_only() { 0 } else { size };
        self.remaining = data;
        self.pad = (BLOCK as u64 - data % BLOCK as u64) % BLOCK as u64;
        if let Kind::Unsupported(f) = kind {
            problem.get_or_insert_with(|| {
                format!("unsupported entry type {:?}", f as char).replace('\'', "")
            });
        }
        Ok(Some(Header {
            path,
            kind,
            mode: (field(100..108, "mode")? & 0o7777) as u32,
            uid,
            gid,
            size: data,
            mtime,
            link,
            dev,
            xattrs,
            problem,
        }))
    }

    /// Reads data of the current entry; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inp.read(&mut buf[..want])?;
        if n == 0 {
            return Err(invalid("archive ends in the middle of a file"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(entries: &[(Header, Vec<u8>)]) -> Vec<(Header, Vec<u8>)> {
        let mut w = Writer::new(Vec::new());
        for (h, d) in entries {
            w.append(h).unwrap();
            w.write_data(d).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        let mut r = Reader::new(&bytes[..]);
        let mut out = Vec::new();
        while let Some(h) = r.next_entry().unwrap() {
            let mut d = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = r.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                d.extend_from_slice(&buf[..n]);
            }
            out.push((h, d));
        }
        out
    }

    #[test]
    fn round_trips_every_field() {
        let mut f = Header::new(b"dir/file".to_vec(), Kind::File);
        f.size = 5;
        f.mode = 0o4755;
        f.uid = 1000;
        f.gid = 100;
        f.mtime = (1_700_000_000, 123_456_789);
        f.xattrs = vec![
            (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0xff]),
            (b"user.a".to_vec(), b"x\ny=z".to_vec()),
        ];
        let mut long = Header::new(vec![b'n'; 300], Kind::File);
        long.uid = 5_000_000;
        long.gid = u32::MAX;
        long.mtime = (-2, 500_000_000);
        let mut deep = Header::new(
            [&[b'd'; 120][..], b"/", &[b'e'; 90][..]].concat(),
            Kind::Dir,
        );
        deep.mode = 0o1777;
        let mut sl = Header::new(b"link".to_vec(), Kind::Symlink);
        sl.link = vec![b't'; 200];
        let mut hl = Header::new(b"hard".to_vec(), Kind::Link);
        hl.link = b"dir/file".to_vec();
        let mut dev = Header::new(b"\xff\xfe-dev".to_vec(), Kind::Block);
        dev.dev = (8, 3_000_000);
        let fifo = Header::new(b"p".to_vec(), Kind::Fifo);
        let entries = vec![
            (f, b"hello".to_vec()),
            (long, Vec::new()),
            (deep, Vec::new()),
            (sl, Vec::new()),
            (hl, Vec::new()),
            (dev, Vec::new()),
            (fifo, Vec::new()),
        ];
        let out = roundtrip(&entries);
        assert_eq!(out, entries);
    }

    #[test]
    fn same_input_same_bytes() {
        let mut h = Header::new(b"a".to_vec(), Kind::File);
        h.xattrs = vec![
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"user.a".to_vec(), b"1".to_vec()),
        ];
        let one = {
            let mut w = Writer::new(Vec::new());
            w.append(&h).unwrap();
            w.finish().unwrap()
        };
        h.xattrs.reverse();
        let two = {
            let mut w = Writer::new(Vec::new());
            w.append(&h).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(one, two);
    }

    #[test]
    fn pax_lengths_and_times() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"abcdef");
        assert_eq!(v, b"15 path=abcdef\n");
        // A record whose length crosses a power of ten.
        let mut v = Vec::new();
        pax_record(&mut v, b"k", &[b'x'; 95]);
        assert_eq!(v.len(), 102);
        assert!(v.starts_with(b"102 k="));
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"7.000000001"), Some((7, 1)));
        assert_eq!(parse_pax_time(b"7.1234567891"), Some((7, 123_456_789)));
    }

    #[test]
    fn writer_enforces_sizes() {
        let mut h = Header::new(b"f".to_vec(), Kind::File);
        h.size = 3;
        let mut w = Writer::new(Vec::new());
        w.append(&h).unwrap();
        assert!(w.write_data(b"abcd").is_err());
        w.write_data(b"ab").unwrap();
        assert!(w.finish().is_err());
    }

    #[test]
    fn refuses_huge_long_names_per_entry() {
        // A GNU long name over the limit makes that entry a problem; the
        // next entry reads normally.
        let mut bytes = Vec::new();
        let mut l = [0u8; BLOCK];
        l[..13].copy_from_slice(b"././@LongLink");
        put_octal(&mut l[100..108], 0o644);
        put_num(&mut l[124..136], MAX_META + 1);
        l[156] = b'L';
        l[257..265].copy_from_slice(b"ustar  \0");
        finish_block(&mut l);
        bytes.extend_from_slice(&l);
        bytes.extend(std::iter::repeat_n(
            b'a',
            (MAX_META + 1).div_ceil(512) as usize * 512,
        ));
        let mut w = Writer::new(Vec::new());
        w.append(&Header::new(b"victim".to_vec(), Kind::File))
            .unwrap();
        w.append(&Header::new(b"next".to_vec(), Kind::File))
            .unwrap();
        bytes.extend(w.finish().unwrap());
        let mut r = Reader::new(&bytes[..]);
        let first = r.next_entry().unwrap().unwrap();
        assert!(first.problem.is_some());
        assert_eq!(first.path, b"victim");
        let second = r.next_entry().unwrap().unwrap();
        assert_eq!(second.path, b"next");
        assert!(second.problem.is_none());
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn rejects_garbage() {
        let bytes = vec![b'x'; 1024];
        assert!(Reader::new(&bytes[..]).next_entry().is_err());
        let empty: &[u8] = &[];
        assert!(Reader::new(empty).next_entry().unwrap().is_none());
        let mut w = Writer::new(Vec::new());
        let mut h = Header::new(b"f".to_vec(), Kind::File);
        h.size = 1000;
        w.append(&h).unwrap();
        w.write_data(&[1; 1000]).unwrap();
        let mut bytes = w.finish().unwrap();
        bytes.truncate(700);
        let mut r = Reader::new(&bytes[..]);
        r.next_entry().unwrap().unwrap();
        let mut buf = vec![0u8; 2000];
        let mut total = 0;
        let err = loop {
            match r.read_data(&mut buf) {
                Ok(0) => panic!("short entry read as complete"),
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert!(total < 1000);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
