//! Reading `/proc/self/mountinfo` (plyfs patch): which mount is on top at
//! a mountpoint, so that unmounting by path only ever detaches our own.

/// One line of mountinfo, reduced to what the unmount check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) id: u64,
    pub(crate) parent: u64,
    pub(crate) device: (u32, u32),
}

/// Undoes mountinfo's octal escapes (`\\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn parse_line(line: &[u8]) -> Option<(MountEntry, Vec<u8>)> {
    let mut f = line.split(|&b| b == b' ');
    let id = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
    let parent = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
    let dev = std::str::from_utf8(f.next()?).ok()?;
    let (maj, min) = dev.split_once(':')?;
    let device = (maj.parse().ok()?, min.parse().ok()?);
    let _root = f.next()?;
    let point = unescape(f.next()?);
    Some((
        MountEntry {
            id,
            parent,
            device,
        },
        point,
    ))
}

/// The mounts at `mountpoint`, in mountinfo order.
fn mounts_at(text: &[u8], mountpoint: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(parse_line)
        .filter(|(_, p)| p == mountpoint)
        .map(|(e, _)| e)
        .collect()
}

/// The mount on top at `mountpoint`: the one no other mount there sits on.
fn top_of(entries: &[MountEntry]) -> Option<MountEntry> {
    entries
        .iter()
        .rev()
        .find(|e| !entries.iter().any(|o| o.parent == e.id && o.id != e.id))
        .copied()
}

fn read() -> Option<Vec<u8>> {
    std::fs::read("/proc/self/mountinfo").ok()
}

/// The mount on top at `mountpoint` (an absolute, canonical path).
pub(crate) fn top_mount(mountpoint: &[u8]) -> Option<MountEntry> {
    top_of(&mounts_at(&read()?, mountpoint))
}

/// Whether a mount with `device` is at `mountpoint`, on top or covered.
pub(crate) fn has_device(mountpoint: &[u8], device: (u32, u32)) -> bool {
    read().is_some_and(|t| mounts_at(&t, mountpoint).iter().any(|e| e.device == device))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
        30 22 0:40 / /a\\040b rw - tmpfs x rw\n\
        31 30 0:41 / /a\\040b rw - fuse.plyfs plyfs rw\n\
        32 22 0:42 / /c rw - tmpfs y rw\n";

    #[test]
    fn finds_the_top_of_stacked_mounts() {
        let at = mounts_at(INFO, b"/a b");
        assert_eq!(at.len(), 2);
        assert_eq!(top_of(&at).map(|e| e.device), Some((0, 41)));
        assert_eq!(top_of(&mounts_at(INFO, b"/c")).map(|e| e.device), Some((0, 42)));
        assert!(top_of(&mounts_at(INFO, b"/none")).is_none());
    }
}
