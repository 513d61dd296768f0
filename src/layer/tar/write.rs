//! Writing archives: ustar headers, plus a PAX `x` header only for what
//! ustar cannot hold.

use std::io::{self, Write};

use super::{BLOCK, Header, Kind, checksum, invalid};

/// Writes `value` as zero-padded octal filling `field` but its last byte
/// (a NUL); false if it does not fit.
pub(crate) fn put_octal(field: &mut [u8], value: u64) -> bool {
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
pub(crate) fn put_base256(field: &mut [u8], value: u64) {
    field.fill(0);
    let bytes = value.to_be_bytes();
    let n = field.len();
    let take = bytes.len().min(n);
    field[n - take..].copy_from_slice(&bytes[bytes.len() - take..]);
    field[0] |= 0x80;
}

/// A numeric field: octal when it fits, else base-256 (which every reader
/// that also reads PAX understands; PAX records carry the value as well).
pub(crate) fn put_num(field: &mut [u8], value: u64) -> bool {
    if put_octal(field, value) {
        true
    } else {
        put_base256(field, value);
        false
    }
}

/// PAX time value: seconds with an optional fraction, shortest form.
pub(crate) fn pax_time(sec: i64, nsec: u32) -> String {
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
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
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

pub(crate) fn finish_block(block: &mut [u8; BLOCK]) {
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
