//! Model of known names, used only to pick interesting paths.

use super::*;

// ---------------------------------------------------------------------------
// Model of known names, used only to pick interesting paths
// ---------------------------------------------------------------------------

/// Which paths exist (as last known) and every path ever seen. It need not
/// be exact: it only biases the generator, and it is resynchronised from the
/// kernel mount at every snapshot.
#[derive(Default)]
pub(crate) struct Model {
    pub(crate) live: BTreeMap<String, char>,
    pub(crate) seen: BTreeSet<String>,
    /// Names (in any layer) of files that have hard links inside a lower
    /// layer; used by [`KNOWN_DIVERGENCES`] filters.
    pub(crate) lower_links: BTreeSet<String>,
    /// Their inode numbers on the kernel mount (the lower ones: with
    /// index=off the kernel gives a copied-up hard link a new number), so
    /// the filters still know them after directory renames.
    pub(crate) lower_link_inos: BTreeSet<u64>,
    /// The kernel mount, to resolve symlinks for those filters.
    pub(crate) kernel_root: PathBuf,
    /// Whether an [`Op::Remount`] ran.
    pub(crate) remounted: bool,
    /// Which fd slots are open (on the kernel side).
    pub(crate) open: [bool; SLOTS],
    /// The (symlink-resolved) name each open slot's file has now.
    pub(crate) slot_path: [Option<String>; SLOTS],
    /// Slots whose file lost the name it was opened by (unlinked, removed
    /// or renamed over).
    pub(crate) orphan: [bool; SLOTS],
    /// Slots opened with O_DIRECTORY.
    pub(crate) slot_dir: [bool; SLOTS],
    /// User xattr names per path (as of the last refresh).
    pub(crate) xattrs: BTreeMap<String, Vec<String>>,
    /// Resolved operand names of the op about to run ([`Model::prepare`]):
    /// they must be resolved before a rename moves symlinks around.
    pub(crate) pending: Vec<String>,
}

pub(crate) fn is_under(p: &str, dir: &str) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
}

impl Model {
    pub(crate) fn refresh(&mut self, snap: &BTreeMap<Vec<u8>, EntryInfo>) {
        self.live = snap
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.kind))
            .collect();
        self.xattrs = snap
            .iter()
            .filter(|(_, v)| !v.xattrs.is_empty())
            .map(|(k, v)| {
                let names = v
                    .xattrs
                    .iter()
                    .map(|(n, _)| String::from_utf8_lossy(n).into_owned());
                (String::from_utf8_lossy(k).into_owned(), names.collect())
            })
            .collect();
        self.seen.extend(self.live.keys().cloned());
    }

    /// Whether `p` (itself or what it points to) is, on the kernel mount,
    /// still one of the lower layer's hard-linked files.
    pub(crate) fn is_lower_link_now(&self, p: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = abs(&self.kernel_root, p);
        [std::fs::symlink_metadata(&path), std::fs::metadata(&path)]
            .into_iter()
            .flatten()
            .any(|md| !md.is_dir() && self.lower_link_inos.contains(&md.ino()))
    }

    /// `p` with symlinks resolved on the kernel mount (or `p` itself when
    /// it does not resolve).
    pub(crate) fn resolve(&self, p: &str) -> String {
        std::fs::canonicalize(abs(&self.kernel_root, p))
            .ok()
            .and_then(|c| {
                c.strip_prefix(&self.kernel_root)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| p.to_string())
    }

    pub(crate) fn kind(&self, p: &str) -> Option<char> {
        if p.is_empty() {
            Some('d')
        } else {
            self.live.get(p).copied()
        }
    }

    pub(crate) fn add(&mut self, p: &str, kind: char) {
        self.live.entry(p.to_string()).or_insert(kind);
        self.seen.insert(p.to_string());
    }

    pub(crate) fn take_tree(&mut self, p: &str) -> Vec<(String, char)> {
        let keys: Vec<String> = self
            .live
            .keys()
            .filter(|k| *k == p || is_under(k, p))
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| {
                let v = self.live.remove(&k).expect("key");
                (k[p.len()..].to_string(), v)
            })
            .collect()
    }

    pub(crate) fn put_tree(&mut self, p: &str, tree: Vec<(String, char)>) {
        for (suffix, kind) in tree {
            self.add(&format!("{p}{suffix}"), kind);
        }
    }

    /// Updates the model after `op` had outcome `o` (on the kernel).
    /// Like [`Model::resolve`] for the parent only (for names that were
    /// just removed).
    pub(crate) fn resolve_parent(&self, p: &str) -> String {
        let name = p.rsplit('/').next().unwrap_or(p);
        join(&self.resolve(parent(p)), name)
    }

    /// Call before running `op`.
    pub(crate) fn prepare(&mut self, op: &Op) {
        if let Op::AsUser { op, .. } = op {
            return self.prepare(op);
        }
        self.pending = match op {
            Op::Unlink { path } | Op::Rmdir { path } => vec![self.resolve_parent(path)],
            Op::Rename { from, to, .. } => vec![self.resolve_parent(from), self.resolve_parent(to)],
            _ => vec![],
        };
    }

    pub(crate) fn track_slots(&mut self, op: &Op, ok: bool) {
        match op {
            Op::AsUser { op, .. } => self.track_slots(op, ok),
            Op::Remount => {
                self.remounted = true;
                for i in 0..SLOTS {
                    self.open[i] = false;
                    self.slot_path[i] = None;
                    self.orphan[i] = false;
                    self.slot_dir[i] = false;
                }
            }
            Op::Open { slot, path, mode } => {
                self.open[*slot] = ok;
                self.slot_dir[*slot] = ok && *mode == OpenMode::Directory;
                self.slot_path[*slot] = ok.then(|| self.resolve(path));
                self.orphan[*slot] = false;
            }
            Op::FdClose { slot } => {
                self.open[*slot] = false;
                self.slot_dir[*slot] = false;
                self.slot_path[*slot] = None;
                self.orphan[*slot] = false;
            }
            Op::Unlink { .. } | Op::Rmdir { .. } if ok => {
                let r = self.pending[0].clone();
                for i in 0..SLOTS {
                    if self.slot_path[i].as_deref() == Some(&r) {
                        self.orphan[i] = true;
                    }
                }
            }
            Op::Rename { flags, .. } if ok => {
                let (rf, rt) = (self.pending[0].clone(), self.pending[1].clone());
                if rf == rt {
                    return;
                }
                let exchange = *flags & libc::RENAME_EXCHANGE != 0;
                // `p` moved from below `a` to below `b`?
                let moved = |p: &str, a: &str, b: &str| {
                    (p == a || is_under(p, a)).then(|| format!("{b}{}", &p[a.len()..]))
                };
                for i in 0..SLOTS {
                    let Some(cur) = self.slot_path[i].clone() else {
                        continue;
                    };
                    if let Some(n) = moved(&cur, &rf, &rt) {
                        self.slot_path[i] = Some(n);
                    } else if cur == rt {
                        if exchange {
                            self.slot_path[i] = Some(rf.clone());
                        } else {
                            self.orphan[i] = true;
                        }
                    } else if let Some(n) = moved(&cur, &rt, &rf).filter(|_| exchange) {
                        self.slot_path[i] = Some(n);
                    }
                }
            }
            _ => {}
        }
    }

    pub(crate) fn apply(&mut self, op: &Op, o: &Outcome) {
        self.track_slots(op, !matches!(o, Outcome::Err(_)));
        if matches!(o, Outcome::Err(_)) {
            return;
        }
        match op {
            Op::AsUser { op, .. } => self.apply(op, o),
            Op::Open {
                path,
                mode: OpenMode::CreateRw,
                ..
            } => self.add(path, 'f'),
            Op::Mknod { path, kind } => self.add(path, if *kind == 's' { 's' } else { 'c' }),
            Op::Create { path, .. } => self.add(path, 'f'),
            Op::Mkdir { path, .. } => self.add(path, 'd'),
            Op::Symlink { path, .. } => self.add(path, 'l'),
            Op::Link { from, to } => {
                let k = self.kind(from).unwrap_or('f');
                self.add(to, k)
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                self.take_tree(path);
            }
            Op::Rename { from, to, flags } => {
                if from == to {
                    return;
                }
                let a = self.take_tree(from);
                let b = self.take_tree(to);
                self.put_tree(to, a);
                if *flags & libc::RENAME_EXCHANGE != 0 {
                    self.put_tree(from, b);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn paths_where(&self, pred: impl Fn(char) -> bool) -> Vec<&String> {
        self.live
            .iter()
            .filter(|(_, k)| pred(**k))
            .map(|(p, _)| p)
            .collect()
    }
}
