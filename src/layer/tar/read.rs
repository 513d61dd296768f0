//! Reading archives one entry at a time, with limits on what an entry can
//! make the reader buffer.

use std::io::{self, Read};

use super::{BLOCK, Header, Kind, MAX_META, checksum, invalid};

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
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
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
