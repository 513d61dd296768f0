//! Names of overlay-private extended attributes and the escaping rule the
//! kernel uses for them.
//!
//! A mount writes its markers under one prefix: `trusted.overlay.` when it
//! can (CAP_SYS_ADMIN), `user.overlay.` otherwise (the kernel's `userxattr`).
//! Users may still set an attribute named `<prefix>overlay.X` through the
//! mount: like the kernel (6.7+), plyfs stores it escaped as
//! `<prefix>overlay.overlay.X`, so it can never be mistaken for a marker.

use std::ffi::CString;

pub const TRUSTED: &[u8] = b"trusted.overlay.";
pub const USER: &[u8] = b"user.overlay.";

/// Which prefix this mount uses for the markers it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Trusted,
    User,
}

impl Prefix {
    /// Both prefixes, in the order lower layers are read: a layer may have
    /// been written by a rootful or a rootless mount.
    pub const BOTH: [Prefix; 2] = [Prefix::Trusted, Prefix::User];

    pub fn bytes(self) -> &'static [u8] {
        match self {
            Prefix::Trusted => TRUSTED,
            Prefix::User => USER,
        }
    }

    /// Full attribute name for a marker such as `opaque`.
    pub fn name(self, suffix: &str) -> CString {
        let mut v = self.bytes().to_vec();
        v.extend_from_slice(suffix.as_bytes());
        CString::new(v).unwrap_or_default()
    }
}

/// Marker attribute suffixes.
pub const OPAQUE: &str = "opaque";
pub const REDIRECT: &str = "redirect";
pub const ORIGIN: &str = "origin";
pub const IMPURE: &str = "impure";
pub const WHITEOUT: &str = "whiteout";
pub const NLINK: &str = "nlink";
pub const METACOPY: &str = "metacopy";
pub const PROTATTR: &str = "protattr";

/// How the merged view treats one attribute name found on a layer object.
#[derive(Debug, PartialEq, Eq)]
pub enum Visible<'a> {
    /// An ordinary attribute, shown as is.
    Plain(&'a [u8]),
    /// An escaped attribute (`P overlay.overlay.X`), shown as `P overlay.X`.
    Unescaped(Vec<u8>),
    /// An overlay marker, hidden.
    Hidden,
}

/// Classifies a stored attribute name. Both prefixes count as markers, so a
/// layer written by a rootless mount does not leak its markers to a rootful
/// one and the reverse.
pub fn classify(stored: &[u8]) -> Visible<'_> {
    for p in [TRUSTED, USER] {
        if let Some(rest) = stored.strip_prefix(p) {
            if rest.starts_with(b"overlay.") {
                let mut v = p.to_vec();
                v.extend_from_slice(&rest[b"overlay.".len()..]);
                return Visible::Unescaped(v);
            }
            return Visible::Hidden;
        }
    }
    Visible::Plain(stored)
}

/// Maps a name the user asked for to the name stored on the layer object:
/// `P overlay.X` is stored escaped as `P overlay.overlay.X`.
pub fn to_stored(user: &[u8]) -> Vec<u8> {
    for p in [TRUSTED, USER] {
        if let Some(rest) = user.strip_prefix(p) {
            let mut v = p.to_vec();
            v.extend_from_slice(b"overlay.");
            v.extend_from_slice(rest);
            return v;
        }
    }
    user.to_vec()
}

/// True for names that copy-up must not copy verbatim (markers); escaped
/// user attributes are copied like any other.
pub fn is_marker(stored: &[u8]) -> bool {
    matches!(classify(stored), Visible::Hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names() {
        assert_eq!(classify(b"user.foo"), Visible::Plain(b"user.foo"));
        assert_eq!(classify(b"trusted.overlay.opaque"), Visible::Hidden);
        assert_eq!(classify(b"user.overlay.origin"), Visible::Hidden);
        assert_eq!(
            classify(b"trusted.overlay.overlay.opaque"),
            Visible::Unescaped(b"trusted.overlay.opaque".to_vec())
        );
        assert_eq!(
            classify(b"security.selinux"),
            Visible::Plain(b"security.selinux")
        );
    }

    #[test]
    fn escaping_round_trips() {
        let stored = to_stored(b"trusted.overlay.foo");
        assert_eq!(stored, b"trusted.overlay.overlay.foo");
        assert_eq!(
            classify(&stored),
            Visible::Unescaped(b"trusted.overlay.foo".to_vec())
        );
        assert_eq!(to_stored(b"user.x"), b"user.x");
        assert!(is_marker(b"user.overlay.opaque"));
        assert!(!is_marker(b"user.overlay.overlay.opaque"));
    }

    #[test]
    fn prefix_names() {
        assert_eq!(
            Prefix::Trusted.name(OPAQUE).as_bytes(),
            b"trusted.overlay.opaque"
        );
        assert_eq!(Prefix::User.name(ORIGIN).as_bytes(), b"user.overlay.origin");
    }
}
