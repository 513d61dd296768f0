//! The seeded operation generator.

use super::*;

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

/// Names used everywhere (lower trees and new names) so that new names often
/// collide with whiteouts, lower names and names in other directories.
pub(crate) const VOCAB: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "dir", "sub", "x", "y",
];

pub(crate) const XATTR_NAMES: &[&str] = &[
    "user.a",
    "user.a",
    "user.b",
    "user.b",
    "user.c",
    "trusted.t",
    "trusted.overlay.opaque",
    "trusted.overlay.x",
];

pub(crate) const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o777, 0o1777, 0o2755, 0o4755,
];

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

pub(crate) fn depth(p: &str) -> usize {
    if p.is_empty() {
        0
    } else {
        p.split('/').count()
    }
}

pub(crate) struct Gen {
    pub(crate) rng: SmallRng,
    /// `PLYFS_DIFF_ALL`: ignore [`KNOWN_DIVERGENCES`].
    pub(crate) all: bool,
    /// The kernel runs with `index=on`.
    pub(crate) index: bool,
    pub(crate) kinds: Vec<(OpKind, u32)>,
    pub(crate) total: u32,
}

impl Gen {
    pub(crate) fn new(seed: u64, variant: &Variant) -> Gen {
        let kinds: Vec<(OpKind, u32)> = WEIGHTS
            .iter()
            .copied()
            .filter(|(k, _)| (variant.allowed)(*k))
            .collect();
        let total = kinds.iter().map(|(_, w)| w).sum();
        Gen {
            rng: SmallRng::seed_from_u64(seed ^ 0x6f70_735f_6765_6e21),
            all: env_flag("PLYFS_DIFF_ALL"),
            index: variant.kernel_opts.contains("index=on"),
            kinds,
            total,
        }
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    pub(crate) fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.rng.gen_range(0..v.len())])
        }
    }

    pub(crate) fn vocab(&mut self) -> &'static str {
        VOCAB[self.rng.gen_range(0..VOCAB.len())]
    }

    /// An existing path whose kind satisfies `pred`.
    pub(crate) fn existing(&mut self, m: &Model, pred: impl Fn(char) -> bool) -> Option<String> {
        let v = m.paths_where(pred);
        self.pick(&v).map(|s| s.to_string())
    }

    pub(crate) fn dir(&mut self, m: &Model) -> String {
        if self.chance(0.1) {
            return String::new();
        }
        self.existing(m, |k| k == 'd').unwrap_or_default()
    }

    /// A name in a known directory (may or may not exist).
    pub(crate) fn new_name(&mut self, m: &Model) -> String {
        let d = self.dir(m);
        let n = self.vocab();
        join(&d, n)
    }

    /// A path seen at some time (often removed since).
    pub(crate) fn ghost(&mut self, m: &Model) -> String {
        let n = m.seen.len();
        if n == 0 {
            return self.new_name(m);
        }
        let i = self.rng.gen_range(0..n);
        m.seen.iter().nth(i).cloned().unwrap_or_default()
    }

    /// Below a non-directory or a missing directory (ENOTDIR / ENOENT).
    pub(crate) fn bogus(&mut self, m: &Model) -> String {
        let base = if self.chance(0.5) {
            self.existing(m, |k| k != 'd')
                .unwrap_or_else(|| "nodir".into())
        } else {
            join(&self.dir(m), "nodir")
        };
        let n = self.vocab();
        join(&base, n)
    }

    /// A path for an operation on something that should usually exist.
    pub(crate) fn target(&mut self, m: &Model, pred: impl Fn(char) -> bool) -> String {
        let r: f64 = self.rng.r#gen();
        if r < 0.6
            && let Some(p) = self.existing(m, pred)
        {
            return p;
        }
        if r < 0.75
            && let Some(p) = self.existing(m, |_| true)
        {
            return p;
        }
        if r < 0.87 {
            self.ghost(m)
        } else if r < 0.97 {
            self.new_name(m)
        } else {
            self.bogus(m)
        }
    }

    /// A path for something to be created (usually does not exist yet).
    pub(crate) fn fresh(&mut self, m: &Model) -> String {
        let r: f64 = self.rng.r#gen();
        if r < 0.55 {
            self.new_name(m)
        } else if r < 0.8 {
            self.ghost(m)
        } else if r < 0.95 {
            self.existing(m, |_| true)
                .unwrap_or_else(|| self.new_name(m))
        } else {
            self.bogus(m)
        }
    }

    /// A directory with no children in the model.
    pub(crate) fn existing_empty_dir(&mut self, m: &Model) -> Option<String> {
        let dirs: Vec<&String> = m
            .paths_where(|k| k == 'd')
            .into_iter()
            .filter(|d| {
                m.live
                    .range::<String, _>((*d).clone()..)
                    .nth(1)
                    .is_none_or(|(next, _)| !is_under(next, d))
            })
            .collect();
        self.pick(&dirs).map(|s| s.to_string())
    }

    /// Mostly a name the path has (as seen on the kernel mount, which
    /// lookups do not change), else one from [`XATTR_NAMES`].
    pub(crate) fn xattr_name(&mut self, m: &Model, path: &str) -> String {
        if self.chance(0.6)
            && let Outcome::Xattrs(x) = list_xattrs(&cpath(&m.kernel_root, path), true)
        {
            let names: Vec<String> = x.into_iter().map(|(n, _)| n).collect();
            if let Some(n) = self.pick(&names) {
                return n.clone();
            }
        }
        self.pick(XATTR_NAMES).expect("names").to_string()
    }

    pub(crate) fn file(&mut self, m: &Model) -> String {
        self.target(m, |k| k == 'f')
    }

    /// A symlink target that never leaves the mount: relative, without
    /// `..`, so it resolves below the symlink's directory wherever the link
    /// is moved (an escaping link would write into the other layer trees).
    pub(crate) fn link_target(&mut self, m: &Model) -> String {
        let r: f64 = self.rng.r#gen();
        if r < 0.5 {
            self.vocab().to_string()
        } else if r < 0.8 {
            let a = self.vocab();
            let b = self.vocab();
            format!("{a}/{b}")
        } else if r < 0.95 {
            self.existing(m, |_| true).unwrap_or_else(|| "a".into())
        } else {
            "missing".into()
        }
    }

    pub(crate) fn mode(&mut self) -> u32 {
        *self.pick(MODES).expect("modes")
    }

    pub(crate) fn size(&mut self) -> u64 {
        let r: f64 = self.rng.r#gen();
        if r < 0.25 {
            0
        } else if r < 0.55 {
            self.rng.gen_range(1..200)
        } else if r < 0.85 {
            self.rng.gen_range(200..20_000)
        } else {
            self.rng.gen_range(20_000..200_000)
        }
    }

    pub(crate) fn len(&mut self) -> usize {
        if self.chance(0.1) {
            self.rng.gen_range(4096..70_000)
        } else {
            self.rng.gen_range(0..4096)
        }
    }

    pub(crate) fn kind(&mut self) -> OpKind {
        let mut x = self.rng.gen_range(0..self.total);
        for (k, w) in &self.kinds {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        unreachable!("weights")
    }

    pub(crate) fn next(&mut self, m: &Model) -> Op {
        loop {
            let op = self.generate(m);
            let known = KNOWN_DIVERGENCES
                .iter()
                .any(|(_, f, with_index)| (*with_index || !self.index) && f(&op, m));
            if self.all || !known {
                return op;
            }
        }
    }

    pub(crate) fn generate(&mut self, m: &Model) -> Op {
        let op = self.generate_one(m);
        let fd_op = matches!(
            op,
            Op::FdRead { .. }
                | Op::FdWrite { .. }
                | Op::FdTruncate { .. }
                | Op::FdStat { .. }
                | Op::FdReaddir { .. }
                | Op::FdClose { .. }
                | Op::Remount
        );
        if !fd_op && self.chance(AS_USER_SHARE) {
            Op::AsUser {
                id: USER_ID,
                op: Box::new(op),
            }
        } else {
            op
        }
    }

    pub(crate) fn generate_one(&mut self, m: &Model) -> Op {
        let not_dir = |k: char| k != 'd';
        let is_dir = |k: char| k == 'd';
        match self.kind() {
            OpKind::Create => Op::Create {
                path: if self.chance(0.7) {
                    self.fresh(m)
                } else {
                    self.file(m)
                },
                excl: self.chance(0.5),
                trunc: self.chance(0.3),
                mode: self.mode(),
            },
            OpKind::Write => Op::Write {
                path: self.file(m),
                off: match self.rng.gen_range(0..4) {
                    0 => 0,
                    1 => self.rng.gen_range(0..4096),
                    2 => self.rng.gen_range(0..150_000),
                    _ => self.rng.gen_range(0..300),
                },
                len: self.len(),
                fill: self.rng.r#gen(),
            },
            OpKind::Append => Op::Append {
                path: self.file(m),
                len: self.len(),
                fill: self.rng.r#gen(),
            },
            OpKind::Truncate => Op::Truncate {
                path: self.file(m),
                size: self.size(),
            },
            OpKind::Mkdir => Op::Mkdir {
                path: self.fresh(m),
                mode: if self.chance(0.8) { 0o755 } else { self.mode() },
            },
            OpKind::Rmdir => Op::Rmdir {
                // Often a directory that looks empty (per the model; merged
                // directories may still have hidden lower entries).
                path: match self.existing_empty_dir(m) {
                    Some(d) if self.chance(0.5) => d,
                    _ => self.target(m, is_dir),
                },
            },
            OpKind::Unlink => Op::Unlink {
                path: self.target(m, not_dir),
            },
            k @ (OpKind::Rename | OpKind::RenameNoreplace) => {
                let from = self.target(m, |_| true);
                let to = match self.rng.gen_range(0..10) {
                    0..=4 => self.fresh(m),
                    5..=6 => self.target(m, not_dir),
                    7..=8 => self.target(m, is_dir),
                    _ => {
                        // Into its own subtree (EINVAL) or next to itself.
                        let n = self.vocab();
                        join(&from, n)
                    }
                };
                Op::Rename {
                    from,
                    to,
                    flags: if k == OpKind::RenameNoreplace {
                        libc::RENAME_NOREPLACE
                    } else {
                        0
                    },
                }
            }
            OpKind::RenameExchange => {
                let from = self.target(m, |_| true);
                let to = if self.chance(0.8) {
                    self.target(m, |_| true)
                } else {
                    self.fresh(m)
                };
                Op::Rename {
                    from,
                    to,
                    flags: libc::RENAME_EXCHANGE,
                }
            }
            OpKind::Link => Op::Link {
                from: self.target(m, not_dir),
                to: self.fresh(m),
            },
            OpKind::Symlink => Op::Symlink {
                target: self.link_target(m),
                path: self.fresh(m),
            },
            OpKind::Chmod => Op::Chmod {
                path: if self.chance(0.03) {
                    String::new()
                } else {
                    self.target(m, |_| true)
                },
                mode: self.mode(),
            },
            OpKind::SetXattr => {
                let len = self.rng.gen_range(0..24);
                let path = self.target(m, |k| k == 'f' || k == 'd');
                Op::SetXattr {
                    name: self.xattr_name(m, &path),
                    path,
                    value: pattern(self.rng.r#gen(), len),
                    flags: match self.rng.gen_range(0..5) {
                        0 => libc::XATTR_CREATE,
                        1 => libc::XATTR_REPLACE,
                        _ => 0,
                    },
                    nofollow: self.chance(0.3),
                }
            }
            OpKind::RemoveXattr => {
                let with: Vec<&String> = m.xattrs.keys().collect();
                let path = match self.pick(&with) {
                    Some(p) if self.chance(0.6) => (*p).clone(),
                    _ => self.target(m, |k| k == 'f' || k == 'd'),
                };
                Op::RemoveXattr {
                    name: self.xattr_name(m, &path),
                    path,
                    nofollow: self.chance(0.3),
                }
            }
            OpKind::ListXattr => Op::ListXattr {
                path: self.target(m, |_| true),
                nofollow: self.chance(0.5),
            },
            OpKind::Readdir => Op::Readdir {
                path: if self.chance(0.1) {
                    String::new()
                } else {
                    self.target(m, is_dir)
                },
            },
            OpKind::Stat => Op::Stat {
                path: if self.chance(0.03) {
                    String::new()
                } else {
                    self.target(m, |_| true)
                },
                follow: self.chance(0.3),
            },
            OpKind::Read => Op::Read { path: self.file(m) },
            OpKind::Readlink => Op::Readlink {
                path: self.target(m, |k| k == 'l'),
            },
            OpKind::Mknod => Op::Mknod {
                path: self.fresh(m),
                kind: *self.pick(&['p', 'w', 'c', 's']).expect("kinds"),
            },
            OpKind::Chown => Op::Chown {
                path: self.target(m, |_| true),
                uid: *self.pick(&[0, 1000, 1001]).expect("ids"),
                gid: *self.pick(&[0, 1000, 1002]).expect("ids"),
                nofollow: self.chance(0.4),
            },
            OpKind::Open => {
                let mode = *self.pick(&OpenMode::ALL).expect("modes");
                Op::Open {
                    slot: self.rng.gen_range(0..SLOTS),
                    path: match mode {
                        OpenMode::Directory => self.target(m, is_dir),
                        OpenMode::CreateRw if self.chance(0.5) => self.fresh(m),
                        _ => self.file(m),
                    },
                    mode,
                }
            }
            OpKind::Remount => Op::Remount,
            OpKind::Access => Op::Access {
                path: self.target(m, |_| true),
                mask: *self
                    .pick(&[
                        libc::F_OK,
                        libc::R_OK,
                        libc::W_OK,
                        libc::X_OK,
                        libc::R_OK | libc::W_OK | libc::X_OK,
                    ])
                    .expect("masks"),
            },
            k @ (OpKind::FdRead
            | OpKind::FdWrite
            | OpKind::FdTruncate
            | OpKind::FdStat
            | OpKind::FdReaddir
            | OpKind::FdClose) => {
                // Directory fds for FdReaddir, others for the rest.
                let want_dir = k == OpKind::FdReaddir;
                let open: Vec<usize> = (0..SLOTS)
                    .filter(|i| m.open[*i] && (k == OpKind::FdClose || m.slot_dir[*i] == want_dir))
                    .collect();
                // Mostly a slot that is open (EBADF is dull).
                let slot = match self.pick(&open) {
                    Some(s) if self.chance(0.95) => *s,
                    _ => self.rng.gen_range(0..SLOTS),
                };
                let off = if self.chance(0.5) {
                    self.rng.gen_range(0..300)
                } else {
                    self.rng.gen_range(0..150_000)
                };
                match k {
                    OpKind::FdRead => Op::FdRead {
                        slot,
                        off,
                        len: self.len().max(1),
                    },
                    OpKind::FdWrite => Op::FdWrite {
                        slot,
                        off,
                        len: self.len(),
                        fill: self.rng.r#gen(),
                    },
                    OpKind::FdTruncate => Op::FdTruncate {
                        slot,
                        size: self.size(),
                    },
                    OpKind::FdStat => Op::FdStat { slot },
                    OpKind::FdReaddir => Op::FdReaddir { slot },
                    _ => Op::FdClose { slot },
                }
            }
            OpKind::Utimens => Op::Utimens {
                path: self.target(m, |_| true),
                sec: self.rng.gen_range(0..2_000_000_000),
                nsec: if self.chance(0.5) {
                    0
                } else {
                    self.rng.gen_range(0..1_000_000_000)
                },
                nofollow: self.chance(0.3),
            },
        }
    }
}
