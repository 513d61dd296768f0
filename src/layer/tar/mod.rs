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

use std::io;

mod read;
mod write;

pub use read::Reader;
pub use write::Writer;

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
    pub(crate) fn flag(self) -> u8 {
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
    pub(crate) fn header_only(self) -> bool {
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

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Sum of the header bytes with the checksum field read as spaces.
pub(crate) fn checksum(block: &[u8; BLOCK]) -> u64 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::read::parse_pax_time;
    use super::write::{finish_block, pax_record, pax_time, put_num, put_octal};
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
