//! `overlay.origin`: the kernel's encoding of a lower object's file handle.
//!
//! `struct ovl_fb { u8 version=0; u8 magic=0xfb; u8 len; u8 flags; u8 type;
//! u8 uuid[16]; u8 fid[]; }` where `len` covers the whole struct, `type` is
//! the handle type from `name_to_handle_at`, `uuid` the lower filesystem's
//! UUID and `fid` the handle bytes. plyfs writes it on copy-up and reads it
//! back to keep a copied-up object's inode number across remounts.

use crate::sys::handle::FileHandle;

const MAGIC: u8 = 0xfb;
const HEADER: usize = 21;
/// `OVL_FH_FLAG_BIG_ENDIAN`: the handle was encoded on a big-endian CPU.
const FLAG_BIG_ENDIAN: u8 = 1 << 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub flags: u8,
    pub fid_type: u8,
    pub uuid: [u8; 16],
    pub fid: Vec<u8>,
}

/// `OVL_FH_FLAG_PATH_UPPER`: the handle is of an upper object.
pub const FLAG_PATH_UPPER: u8 = 1 << 2;

/// Encodes a lower handle as an `overlay.origin` value.
pub fn encode(handle: &FileHandle, uuid: &[u8; 16]) -> Option<Vec<u8>> {
    encode_with(handle, uuid, 0)
}

/// Encodes a handle with extra flags (`FLAG_PATH_UPPER` for an upper
/// object, as in `overlay.upper`).
pub fn encode_with(handle: &FileHandle, uuid: &[u8; 16], flags: u8) -> Option<Vec<u8>> {
    let len = HEADER + handle.bytes.len();
    if len > u8::MAX as usize || !(0..=255).contains(&handle.handle_type) {
        return None;
    }
    let mut v = Vec::with_capacity(len);
    v.push(0);
    v.push(MAGIC);
    v.push(len as u8);
    v.push(
        flags
            | if cfg!(target_endian = "big") {
                FLAG_BIG_ENDIAN
            } else {
                0
            },
    );
    v.push(handle.handle_type as u8);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&handle.bytes);
    Some(v)
}

/// Parses an `overlay.origin` value. The kernel sometimes stores it behind
/// one alignment byte (`ovl_fh`, version 0 with a leading pad); both forms
/// are accepted. Empty or malformed values give `None`.
pub fn decode(v: &[u8]) -> Option<Origin> {
    let fb = if v.len() > HEADER && v[0] == 0 && v[1] == 0 && v[2] == MAGIC {
        &v[1..]
    } else {
        v
    };
    if fb.len() < HEADER || fb[0] != 0 || fb[1] != MAGIC {
        return None;
    }
    let len = fb[2] as usize;
    if len < HEADER || len > fb.len() {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&fb[5..21]);
    Some(Origin {
        flags: fb[3],
        fid_type: fb[4],
        uuid,
        fid: fb[HEADER..len].to_vec(),
    })
}

/// Lower-case hexadecimal of `v` (index entry names).
pub fn hex(v: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(v.len() * 2);
    for b in v {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    out
}

impl Origin {
    #[cfg(test)]
    pub fn handle(&self) -> FileHandle {
        FileHandle {
            handle_type: self.fid_type as i32,
            bytes: self.fid.clone(),
        }
    }

    /// The lower inode number encoded in the handle, for the handle formats
    /// of common filesystems (`fs_magic` is the lower filesystem's f_type).
    pub fn inode_number(&self, fs_magic: i64) -> Option<u64> {
        let f = &self.fid;
        let u32_at = |i: usize| {
            f.get(i..i + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
        };
        let u64_at = |i: usize| {
            f.get(i..i + 8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        };
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const TMPFS: i64 = 0x0102_1994;
        const BTRFS: i64 = 0x9123_683E;
        match (fs_magic, self.fid_type) {
            // FILEID_INO32_GEN(_PARENT): { u32 ino; u32 gen; ... }
            (EXT4 | XFS, 1 | 2) => u32_at(0),
            // XFS 64-bit inode handles: { u64 ino; u32 gen; ... }
            (XFS, 0x81 | 0x82) => u64_at(0),
            // shmem: { u32 gen; u32 ino_lo; u32 ino_hi }
            (TMPFS, 1) if f.len() >= 12 => Some(u32_at(4)? | (u32_at(8)? << 32)),
            // btrfs: { u64 objectid; u64 root; u32 gen; ... }
            (BTRFS, 0x4d..=0x4f) => u64_at(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = FileHandle {
            handle_type: 1,
            bytes: vec![0x53, 0xc0, 0x98, 0x00, 0x81, 0xc5, 0xb9, 0xcf],
        };
        let v = encode(&h, &[0; 16]).unwrap();
        assert_eq!(v.len(), 29);
        assert_eq!(&v[..5], &[0, 0xfb, 29, 0, 1]);
        let o = decode(&v).unwrap();
        assert_eq!(o.handle(), h);
        assert_eq!(o.inode_number(0xEF53), Some(0x0098c053));
    }

    #[test]
    fn kernel_value_decodes() {
        // Value written by kernel overlayfs on this machine for an ext4 file.
        let v = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
            0xc0, 0x98, 0x00, 0x81, 0xc5, 0xb9, 0xcf,
        ];
        let o = decode(&v).unwrap();
        assert_eq!(o.inode_number(0xEF53), Some(10010707));
        assert_eq!(o.inode_number(0x1234), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"").is_none());
        assert!(decode(b"y").is_none());
        assert!(decode(&[0, 0xfb, 200, 0, 1]).is_none());
    }
}
