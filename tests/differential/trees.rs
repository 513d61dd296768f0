//! Seeded random lower layer trees.

use super::*;

// ---------------------------------------------------------------------------
// Seeded lower trees
// ---------------------------------------------------------------------------

/// One step of building the lower layers; the same list is applied to both
/// copies so they are identical (except times and inode numbers).
#[derive(Clone, Debug)]
pub(crate) enum Build {
    Dir {
        layer: usize,
        path: String,
        mode: u32,
    },
    File {
        layer: usize,
        path: String,
        size: usize,
        fill: u8,
        mode: u32,
    },
    Symlink {
        layer: usize,
        path: String,
        target: String,
    },
    HardLink {
        layer: usize,
        from: String,
        to: String,
    },
    Fifo {
        layer: usize,
        path: String,
    },
    Whiteout {
        layer: usize,
        path: String,
    },
    Opaque {
        layer: usize,
        path: String,
    },
    Xattr {
        layer: usize,
        path: String,
        name: String,
        value: Vec<u8>,
    },
    Chown {
        layer: usize,
        path: String,
        id: u32,
    },
}

/// Per-layer view while generating: path -> kind ('w' = whiteout).
pub(crate) type LayerMap = BTreeMap<String, char>;

pub(crate) fn parent(p: &str) -> &str {
    p.rfind('/').map(|i| &p[..i]).unwrap_or("")
}

pub(crate) fn ancestors(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut q = parent(p);
    while !q.is_empty() {
        out.push(q.to_string());
        q = parent(q);
    }
    out.reverse();
    out
}

/// Whether `p` can be added to `layer` (its ancestors are dirs or absent and
/// `p` itself is absent).
pub(crate) fn fits(layer: &LayerMap, p: &str) -> bool {
    !layer.contains_key(p)
        && ancestors(p)
            .iter()
            .all(|a| matches!(layer.get(a), None | Some('d')))
}

/// Adds the missing ancestors of `p` as directories.
pub(crate) fn add_ancestors(out: &mut Vec<Build>, layer: &mut LayerMap, li: usize, p: &str) {
    for a in ancestors(p) {
        if !layer.contains_key(&a) {
            layer.insert(a.clone(), 'd');
            out.push(Build::Dir {
                layer: li,
                path: a,
                mode: 0o755,
            });
        }
    }
}

/// The entries (no whiteouts) that layers `from..` show when merged, top
/// to bottom: a whiteout or non-directory hides the name (and its subtree)
/// in the layers below it, an opaque directory hides its children below it.
pub(crate) fn merged_view(
    layers: &[LayerMap],
    opaques: &[BTreeSet<String>],
    from: usize,
) -> BTreeMap<String, char> {
    let mut out: BTreeMap<String, char> = BTreeMap::new();
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    let mut opaque: BTreeSet<String> = BTreeSet::new();
    for j in from..layers.len() {
        for (p, k) in &layers[j] {
            let hidden = blocked.contains(p)
                || ancestors(p)
                    .iter()
                    .any(|a| blocked.contains(a) || opaque.contains(a));
            if hidden || *k == 'w' {
                continue;
            }
            out.entry(p.clone()).or_insert(*k);
        }
        for (p, k) in &layers[j] {
            if *k != 'd' {
                blocked.insert(p.clone());
            }
        }
        opaque.extend(opaques[j].iter().cloned());
    }
    out
}

pub(crate) fn gen_tree(rng: &mut SmallRng, n: usize) -> Vec<Build> {
    // A shared skeleton of directory paths: each layer takes a subset, so
    // many directories are merged across layers and some are lower-only.
    let mut skel: Vec<String> = Vec::new();
    let ndirs = rng.gen_range(8..=14);
    while skel.len() < ndirs {
        let p = if skel.is_empty() || rng.gen_bool(0.3) {
            String::new()
        } else {
            skel[rng.gen_range(0..skel.len())].clone()
        };
        if depth(&p) >= 3 {
            continue;
        }
        let c = join(&p, VOCAB[rng.gen_range(0..VOCAB.len())]);
        if !skel.contains(&c) {
            skel.push(c);
        }
    }

    let mut out = Vec::new();
    let mut layers: Vec<LayerMap> = vec![LayerMap::new(); n];
    let mut opaques: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
    let mut big = 0;
    let fifo_layer = rng.gen_range(0..n);
    // Bottom layer first, so upper layers can white out / make opaque what
    // lies below them.
    for li in (0..n).rev() {
        let mut lm = LayerMap::new();
        for d in &skel {
            if rng.gen_bool(0.6) && fits(&lm, d) {
                add_ancestors(&mut out, &mut lm, li, d);
                lm.insert(d.clone(), 'd');
                // Some world-writable (and sticky) directories, so that the
                // unprivileged caller of `Op::AsUser` can do something.
                let mode = *[0o755, 0o755, 0o700, 0o775, 0o777, 0o1777]
                    .get(rng.gen_range(0..6))
                    .expect("mode");
                out.push(Build::Dir {
                    layer: li,
                    path: d.clone(),
                    mode,
                });
            }
        }
        let mut dirs: Vec<String> = vec![String::new()];
        dirs.extend(
            lm.iter()
                .filter(|(_, k)| **k == 'd')
                .map(|(p, _)| p.clone()),
        );
        for d in &dirs {
            for _ in 0..rng.gen_range(0..=5) {
                let p = join(d, VOCAB[rng.gen_range(0..VOCAB.len())]);
                // Mostly avoid shadowing skeleton dirs with files, but keep a
                // few type conflicts across layers.
                if !fits(&lm, &p) || (skel.contains(&p) && rng.gen_bool(0.8)) {
                    continue;
                }
                let r: f64 = rng.r#gen();
                if r < 0.7 {
                    let size = if big < 3 && rng.gen_bool(0.08) {
                        big += 1;
                        100 * 1024 + rng.gen_range(0..5000)
                    } else {
                        match rng.gen_range(0..10) {
                            0..=1 => 0,
                            2..=6 => rng.gen_range(1..200),
                            _ => rng.gen_range(200..10_000),
                        }
                    };
                    lm.insert(p.clone(), 'f');
                    out.push(Build::File {
                        layer: li,
                        path: p,
                        size,
                        fill: rng.r#gen(),
                        mode: *[0o644, 0o644, 0o600, 0o755, 0o444]
                            .get(rng.gen_range(0..5))
                            .expect("mode"),
                    });
                } else if r < 0.88 {
                    let target = if rng.gen_bool(0.7) {
                        VOCAB[rng.gen_range(0..VOCAB.len())].to_string()
                    } else {
                        format!(
                            "{}/{}",
                            VOCAB[rng.gen_range(0..VOCAB.len())],
                            VOCAB[rng.gen_range(0..VOCAB.len())]
                        )
                    };
                    lm.insert(p.clone(), 'l');
                    out.push(Build::Symlink {
                        layer: li,
                        path: p,
                        target,
                    });
                } else {
                    lm.insert(p.clone(), 'd');
                    out.push(Build::Dir {
                        layer: li,
                        path: p,
                        mode: 0o755,
                    });
                }
            }
        }
        // Hard links inside this layer.
        for _ in 0..rng.gen_range(0..=2) {
            let files: Vec<String> = lm
                .iter()
                .filter(|(_, k)| **k == 'f')
                .map(|(p, _)| p.clone())
                .collect();
            if files.is_empty() {
                break;
            }
            let from = files[rng.gen_range(0..files.len())].clone();
            let d = &dirs[rng.gen_range(0..dirs.len())];
            let to = join(d, VOCAB[rng.gen_range(0..VOCAB.len())]);
            if fits(&lm, &to) {
                lm.insert(to.clone(), 'f');
                out.push(Build::HardLink {
                    layer: li,
                    from,
                    to,
                });
            }
        }
        if li == fifo_layer {
            for _ in 0..10 {
                let d = &dirs[rng.gen_range(0..dirs.len())];
                let p = join(d, VOCAB[rng.gen_range(0..VOCAB.len())]);
                if fits(&lm, &p) {
                    lm.insert(p.clone(), 'p');
                    out.push(Build::Fifo { layer: li, path: p });
                    break;
                }
            }
        }
        // What the layers below show, merged as the kernel merges them.
        // Whiteouts go only where that view has the name, so the directory
        // holding them is merged: in a directory that only one layer
        // provides (e.g. below an opaque one) the kernel lists whiteouts
        // as character devices in readdir while lookup hides them, a
        // kernel quirk plyfs does not copy.
        let below = merged_view(&layers, &opaques, li + 1);
        if !below.is_empty() {
            let names: Vec<String> = below.keys().cloned().collect();
            // Whiteouts of lower names (and one of a name nothing has).
            let mut made = 0;
            for _ in 0..12 {
                if made >= 3 {
                    break;
                }
                let p = if rng.gen_bool(0.9) {
                    names[rng.gen_range(0..names.len())].clone()
                } else {
                    join("", VOCAB[rng.gen_range(0..VOCAB.len())])
                };
                if fits(&lm, &p) {
                    add_ancestors(&mut out, &mut lm, li, &p);
                    lm.insert(p.clone(), 'w');
                    out.push(Build::Whiteout { layer: li, path: p });
                    made += 1;
                }
            }
            // An opaque directory over a lower directory (always in the top
            // layer, sometimes in the middle one).
            if li == 0 || rng.gen_bool(0.5) {
                let lower_dirs: Vec<String> = below
                    .iter()
                    .filter(|(p, k)| **k == 'd' && !p.is_empty())
                    .map(|(p, _)| p.clone())
                    .collect();
                // Not above this layer's whiteouts (see `below`).
                let no_whiteouts =
                    |d: &String| !lm.iter().any(|(w, k)| *k == 'w' && is_under(w, d));
                let existing: Vec<&String> = lower_dirs
                    .iter()
                    .filter(|p| lm.get(*p) == Some(&'d') && no_whiteouts(p))
                    .collect();
                let pick = if !existing.is_empty() {
                    Some(existing[rng.gen_range(0..existing.len())].clone())
                } else {
                    let cands: Vec<&String> = lower_dirs.iter().filter(|p| fits(&lm, p)).collect();
                    if cands.is_empty() {
                        None
                    } else {
                        let p = cands[rng.gen_range(0..cands.len())].clone();
                        add_ancestors(&mut out, &mut lm, li, &p);
                        lm.insert(p.clone(), 'd');
                        out.push(Build::Dir {
                            layer: li,
                            path: p.clone(),
                            mode: 0o755,
                        });
                        let f = join(&p, "opq");
                        lm.insert(f.clone(), 'f');
                        out.push(Build::File {
                            layer: li,
                            path: f,
                            size: 10,
                            fill: 1,
                            mode: 0o644,
                        });
                        Some(p)
                    }
                };
                if let Some(p) = pick {
                    opaques[li].insert(p.clone());
                    out.push(Build::Opaque { layer: li, path: p });
                }
            }
        }
        // user.* xattrs and a few foreign owners.
        let entries: Vec<(String, char)> = lm
            .iter()
            .filter(|(_, k)| **k != 'w')
            .map(|(p, k)| (p.clone(), *k))
            .collect();
        for (p, k) in &entries {
            if matches!(k, 'f' | 'd') && rng.gen_bool(0.2) {
                let len = rng.gen_range(0..16);
                out.push(Build::Xattr {
                    layer: li,
                    path: p.clone(),
                    name: ["user.a", "user.b"][rng.gen_range(0..2)].to_string(),
                    value: pattern(rng.r#gen(), len),
                });
            }
            if rng.gen_bool(0.15) {
                out.push(Build::Chown {
                    layer: li,
                    path: p.clone(),
                    id: 1000,
                });
            }
        }
        layers[li] = lm;
    }
    out
}

pub(crate) fn materialize(spec: &[Build], l: &Layers) {
    for b in spec {
        if let Err(e) = build_one(b, l) {
            panic!("building {b:?}: {e}");
        }
    }
}

/// For the shrinker: a spec with entries removed may miss parents or link
/// sources; make the parents and skip what cannot be built.
pub(crate) fn materialize_lenient(spec: &[Build], l: &Layers) {
    for b in spec {
        let (layer, path) = match b {
            Build::Dir { layer, path, .. }
            | Build::File { layer, path, .. }
            | Build::Symlink { layer, path, .. }
            | Build::Fifo { layer, path }
            | Build::Whiteout { layer, path }
            | Build::Opaque { layer, path }
            | Build::Xattr { layer, path, .. }
            | Build::Chown { layer, path, .. } => (*layer, path),
            Build::HardLink { layer, to, .. } => (*layer, to),
        };
        let p = l.lower(layer).join(path);
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let exists = std::fs::symlink_metadata(&p).is_ok();
        let creates = !matches!(
            b,
            Build::Opaque { .. } | Build::Xattr { .. } | Build::Chown { .. }
        );
        if exists == creates && !matches!(b, Build::Dir { .. }) {
            continue;
        }
        // Errors are expected here (e.g. a removed hard-link source).
        let _ = build_one(b, l);
    }
}

pub(crate) fn build_one(b: &Build, l: &Layers) -> std::io::Result<()> {
    let io = std::io::Error::last_os_error;
    let ok = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io()) };
    match b {
        Build::Dir { layer, path, mode } => {
            let p = l.lower(*layer).join(path);
            std::fs::create_dir_all(&p)?;
            set_mode(&p, *mode)
        }
        Build::File {
            layer,
            path,
            size,
            fill,
            mode,
        } => {
            let p = l.lower(*layer).join(path);
            std::fs::write(&p, pattern(*fill, *size))?;
            set_mode(&p, *mode)
        }
        Build::Symlink {
            layer,
            path,
            target,
        } => std::os::unix::fs::symlink(target, l.lower(*layer).join(path)),
        Build::HardLink { layer, from, to } => {
            let base = l.lower(*layer);
            std::fs::hard_link(base.join(from), base.join(to))
        }
        Build::Fifo { layer, path } => {
            let c = cpath(l.lower(*layer), path);
            // SAFETY: valid C string.
            ok(unsafe { libc::mkfifo(c.as_ptr(), 0o644) })
        }
        Build::Whiteout { layer, path } => {
            let c = cpath(l.lower(*layer), path);
            // SAFETY: valid C string.
            ok(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) })
        }
        Build::Opaque { layer, path } => {
            set_xattr(&l.lower(*layer).join(path), "trusted.overlay.opaque", b"y")
        }
        Build::Xattr {
            layer,
            path,
            name,
            value,
        } => set_xattr(&l.lower(*layer).join(path), name, value),
        Build::Chown { layer, path, id } => {
            let c = cpath(l.lower(*layer), path);
            // SAFETY: valid C string.
            ok(unsafe { libc::lchown(c.as_ptr(), *id, *id) })
        }
    }
}

pub(crate) fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}
