//! The cached three-layer tree the workloads run on.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::*;

/// Bump when the tree layout or its selection rules change: cached trees
/// with another version are rebuilt.
pub(crate) const TREE_VERSION: u32 = 1;

/// How big the tree and the workloads are.
pub(crate) struct Sizes {
    pub(crate) sources: &'static [&'static str],
    pub(crate) big: u64,
    pub(crate) rewrites: usize,
    pub(crate) new_files: usize,
    pub(crate) whiteouts: usize,
    pub(crate) top_rewrites: usize,
    pub(crate) top_new: usize,
    pub(crate) top_whiteouts: usize,
    pub(crate) append: usize,
    pub(crate) chmod: usize,
    pub(crate) untar: usize,
    pub(crate) seq_write: u64,
    pub(crate) rand_span: u64,
    /// Largest subtree (entries) picked for ls -lR and rm -rf.
    pub(crate) subtree_limit: usize,
}

pub(crate) const FULL: Sizes = Sizes {
    sources: &["/usr/share", "/usr/include"],
    big: GIB,
    rewrites: 300,
    new_files: 200,
    whiteouts: 100,
    top_rewrites: 50,
    top_new: 20,
    top_whiteouts: 10,
    append: 3000,
    chmod: 2000,
    untar: 8000,
    seq_write: GIB,
    rand_span: 64 * MIB,
    subtree_limit: 8000,
};

pub(crate) const QUICK: Sizes = Sizes {
    sources: &["/usr/include"],
    big: 256 * MIB,
    rewrites: 60,
    new_files: 40,
    whiteouts: 30,
    top_rewrites: 10,
    top_new: 10,
    top_whiteouts: 5,
    append: 300,
    chmod: 200,
    untar: 1000,
    seq_write: 256 * MIB,
    rand_span: 16 * MIB,
    subtree_limit: 2000,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Other,
}

pub(crate) struct Ent {
    pub(crate) rel: PathBuf,
    pub(crate) kind: Kind,
}

/// Depth-first walk of `root` in name order, not following symlinks.
pub(crate) fn walk(root: &Path) -> Vec<Ent> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let r = rel.join(&name);
            let Ok(md) = fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            let kind = if md.is_dir() {
                Kind::Dir
            } else if md.is_file() {
                Kind::File
            } else {
                Kind::Other
            };
            if kind == Kind::Dir {
                subdirs.push(r.clone());
            }
            out.push(Ent { rel: r, kind });
        }
        // Reverse so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

/// A built tree, as loaded from its manifest.
pub(crate) struct Tree {
    pub(crate) root: PathBuf,
    pub(crate) base: PathBuf,
    pub(crate) update: PathBuf,
    pub(crate) top: PathBuf,
    /// Top-level directories of `base` holding the copied system files.
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) big: PathBuf,
    pub(crate) big_size: u64,
    pub(crate) append: Vec<PathBuf>,
    pub(crate) chmod: Vec<PathBuf>,
    pub(crate) ls_dir: PathBuf,
    pub(crate) rm_dirs: Vec<PathBuf>,
    pub(crate) tarball: PathBuf,
    pub(crate) info: Vec<(String, String)>,
}

impl Tree {
    pub(crate) fn lowerdir(&self) -> String {
        format!(
            "{}:{}:{}",
            self.top.display(),
            self.update.display(),
            self.base.display()
        )
    }

    pub(crate) fn info(&self, key: &str) -> &str {
        self.info
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    }
}

pub(crate) fn write_list(path: &Path, items: &[PathBuf]) -> std::io::Result<()> {
    let mut data = Vec::new();
    for p in items {
        data.extend_from_slice(p.as_os_str().as_bytes());
        data.push(0);
    }
    fs::write(path, data)
}

pub(crate) fn read_list(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(fs::read(path)?
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(OsStr::from_bytes(s)))
        .collect())
}

pub(crate) fn tree_stamp(quick: bool) -> String {
    format!(
        "plyfs-bench tree v{TREE_VERSION} {} {}",
        if quick { "quick" } else { "full" },
        if is_root() { "root" } else { "rootless" }
    )
}

pub(crate) fn load_tree(root: &Path, quick: bool) -> Option<Tree> {
    let stamp = fs::read_to_string(root.join("COMPLETE")).ok()?;
    if stamp.trim() != tree_stamp(quick) {
        return None;
    }
    let manifest = fs::read_to_string(root.join("manifest.txt")).ok()?;
    let info: Vec<(String, String)> = manifest
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let big_size = get("big_size")?.parse().ok()?;
    let ls = read_list(&root.join("ls.list")).ok()?;
    let t = Tree {
        root: root.to_path_buf(),
        base: root.join("base"),
        update: root.join("update"),
        top: root.join("top"),
        sources: read_list(&root.join("sources.list")).ok()?,
        big: PathBuf::from("big/big.bin"),
        big_size,
        append: read_list(&root.join("append.list")).ok()?,
        chmod: read_list(&root.join("chmod.list")).ok()?,
        ls_dir: ls.into_iter().next()?,
        rm_dirs: read_list(&root.join("rm.list")).ok()?,
        tarball: root.join("untar.tar"),
        info,
    };
    let big_ok = fs::metadata(t.base.join(&t.big))
        .map(|m| m.len() == big_size)
        .unwrap_or(false);
    let ok = big_ok && t.tarball.exists() && t.update.is_dir() && t.top.is_dir();
    if ok && let Err(e) = add_user_opaque(&t) {
        eprintln!("cannot add user.overlay.opaque to the tree: {e}");
    }
    ok.then_some(t)
}

pub(crate) fn make_whiteout(path: &Path, root: bool) -> std::io::Result<()> {
    if root {
        let c = cstr(path);
        // SAFETY: mknod with a valid C string; a 0/0 char device is the
        // kernel overlayfs whiteout.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    } else {
        let mut name = b".wh.".to_vec();
        name.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
        File::create(path.with_file_name(OsStr::from_bytes(&name))).map(drop)
    }
}

/// Marks `dir` opaque: for kernel overlayfs as root (`trusted.overlay.`)
/// and in a user namespace (`userxattr`: `user.overlay.`), so that one tree
/// serves both modes; OCI `.wh..wh..opq` without root.
pub(crate) fn make_opaque(dir: &Path, root: bool) -> std::io::Result<()> {
    if root {
        common::set_xattr(dir, "trusted.overlay.opaque", b"y")?;
        common::set_xattr(dir, "user.overlay.opaque", b"y")
    } else {
        File::create(dir.join(".wh..wh..opq")).map(drop)
    }
}

/// Trees built before the rootless mode carry only the trusted marker.
fn add_user_opaque(t: &Tree) -> std::io::Result<()> {
    let Some(rel) = t.info("opaque_dir").split(" (").next() else {
        return Ok(());
    };
    if rel == "none" || rel == "?" || !is_root() {
        return Ok(());
    }
    let dir = t.update.join(rel);
    if common::get_xattr(&dir, "trusted.overlay.opaque").is_ok()
        && common::get_xattr(&dir, "user.overlay.opaque").is_err()
    {
        common::set_xattr(&dir, "user.overlay.opaque", b"y")?;
    }
    Ok(())
}

/// Creates the parents of `rel` in `layer`, copying mode and owner from
/// the base layer (the upper-most copy of a directory decides what a merged
/// directory looks like).
pub(crate) fn ensure_parents(layer: &Path, base: &Path, rel: &Path) -> std::io::Result<()> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut acc = PathBuf::new();
    for comp in parent.components() {
        acc.push(comp);
        let dst = layer.join(&acc);
        if dst.exists() {
            continue;
        }
        fs::create_dir(&dst)?;
        if let Ok(md) = fs::metadata(base.join(&acc)) {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
            if is_root() {
                std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid()))?;
            }
        }
    }
    Ok(())
}

/// Writes `rel` into `layer` as a rewritten copy of the base file.
pub(crate) fn rewrite(layer: &Path, base: &Path, rel: &Path, tag: &str) -> std::io::Result<()> {
    ensure_parents(layer, base, rel)?;
    let src = base.join(rel);
    let md = fs::symlink_metadata(&src)?;
    let mut data = fs::read(&src)?;
    data.extend_from_slice(format!("\n# rewritten in the {tag} layer by plyfs-bench\n").as_bytes());
    let dst = layer.join(rel);
    fs::write(&dst, data)?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    if is_root() {
        std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid()))?;
    }
    Ok(())
}

pub(crate) fn new_file(
    layer: &Path,
    base: &Path,
    rel: &Path,
    rng: &mut Rng,
) -> std::io::Result<()> {
    ensure_parents(layer, base, rel)?;
    let len = 256 + rng.below(4096);
    let mut text = String::new();
    while text.len() < len {
        let _ = writeln!(
            text,
            "plyfs-bench new file {} line {}",
            rel.display(),
            rng.next()
        );
    }
    fs::write(layer.join(rel), text)
}

pub(crate) fn write_big_file(path: &Path, size: u64) -> std::io::Result<()> {
    // Real data (not sparse): reads must come from the disk.
    let mut f = File::create(path)?;
    let mut rng = Rng(0xB16_F11E);
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

pub(crate) fn build_tree(final_root: &Path, sizes: &Sizes, quick: bool) -> Result<Tree, String> {
    let t0 = Instant::now();
    let root = final_root.with_extension("building");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("remove {}: {e}", root.display()))?;
    }
    if final_root.exists() {
        fs::remove_dir_all(final_root)
            .map_err(|e| format!("remove {}: {e}", final_root.display()))?;
    }
    let base = root.join("base");
    let update = root.join("update");
    let top = root.join("top");
    for d in [&base, &update, &top] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let root_user = is_root();
    let mut notes: Vec<String> = Vec::new();
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");

    // Base layer: copies of system directories.
    let mut sources = Vec::new();
    for src in sizes.sources {
        let src = Path::new(src);
        let name = src.file_name().expect("source name");
        if !src.is_dir() {
            notes.push(format!("{} is missing on this machine", src.display()));
            continue;
        }
        eprintln!("  copying {} ...", src.display());
        let st = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(base.join(name))
            .status()
            .map_err(|err| e("cp", err))?;
        if !st.success() {
            notes.push(format!(
                "cp -a {} reported errors (partial copy)",
                src.display()
            ));
        }
        sources.push(PathBuf::from(name));
    }
    if sources.is_empty() {
        return Err("no source directories to copy".into());
    }
    eprintln!("  writing {} of pseudo-random data ...", human(sizes.big));
    fs::create_dir(base.join("big")).map_err(|err| e("mkdir big", err))?;
    write_big_file(&base.join("big/big.bin"), sizes.big).map_err(|err| e("big file", err))?;

    let ents = walk(&base);
    let base_entries = ents.len();
    // Entries copied from the system (the big file and its directory aside).
    let copied = ents.iter().filter(|x| !x.rel.starts_with("big")).count();
    if !quick && copied < 65_000 {
        notes.push(format!(
            "this machine has {copied} entries in /usr/share + /usr/include, \
             fewer than the ~65k of the reference tree"
        ));
    }

    // Subtree sizes of every directory.
    let mut subtree: HashMap<&Path, usize> = HashMap::new();
    for ent in &ents {
        let mut p = ent.rel.parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            *subtree.entry(d).or_default() += 1;
            p = d.parent();
        }
    }
    let depth = |p: &Path| p.components().count();
    let big_dir = Path::new("big");
    let mut rng = Rng(0x5EED_0FB1_E5ED);

    // A directory whited out and an opaque directory, both deep enough
    // not to be the subtrees used by ls -lR / rm -rf.
    let mut deep_dirs: Vec<&Path> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && depth(&x.rel) >= 3)
        .map(|x| x.rel.as_path())
        .collect();
    rng.shuffle(&mut deep_dirs);
    let size_of = |d: &Path| subtree.get(d).copied().unwrap_or(0);
    let wh_dir = deep_dirs
        .iter()
        .copied()
        .find(|d| (5..=200).contains(&size_of(d)))
        .map(Path::to_path_buf);
    let opq_dir = deep_dirs
        .iter()
        .copied()
        .find(|d| {
            (5..=500).contains(&size_of(d))
                && wh_dir
                    .as_ref()
                    .is_none_or(|w| !d.starts_with(w) && !w.starts_with(d))
        })
        .map(Path::to_path_buf);
    let hidden = |p: &Path| {
        wh_dir.as_ref().is_some_and(|w| p.starts_with(w))
            || opq_dir.as_ref().is_some_and(|o| p.starts_with(o))
    };

    let mut files: Vec<PathBuf> = ents
        .iter()
        .filter(|x| x.kind == Kind::File && !x.rel.starts_with(big_dir) && !hidden(&x.rel))
        .filter(|x| !x.rel.as_os_str().as_bytes().contains(&b'\n'))
        .map(|x| x.rel.clone())
        .collect();
    rng.shuffle(&mut files);
    let visible_dirs: Vec<&Path> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && !x.rel.starts_with(big_dir) && !hidden(&x.rel))
        .map(|x| x.rel.as_path())
        .collect();
    if files.is_empty() || visible_dirs.is_empty() {
        return Err("the copied tree has no files".into());
    }

    let take = |n: usize, files: &mut Vec<PathBuf>| -> Vec<PathBuf> {
        let n = n.min(files.len());
        files.drain(..n).collect()
    };
    let whiteouts = take(sizes.whiteouts, &mut files);
    // Remaining files stay visible in the merged view.
    let visible = files.clone();
    let rewrites = take(sizes.rewrites, &mut files);
    let top_rewrites = take(sizes.top_rewrites, &mut files);

    eprintln!("  building the update and top layers ...");
    for rel in &rewrites {
        rewrite(&update, &base, rel, "update").map_err(|err| e("rewrite", err))?;
    }
    for rel in &whiteouts {
        ensure_parents(&update, &base, rel).map_err(|err| e("mkdir", err))?;
        make_whiteout(&update.join(rel), root_user).map_err(|err| e("whiteout", err))?;
    }
    if let Some(w) = &wh_dir {
        ensure_parents(&update, &base, w).map_err(|err| e("mkdir", err))?;
        make_whiteout(&update.join(w), root_user).map_err(|err| e("dir whiteout", err))?;
    }
    if let Some(o) = &opq_dir {
        ensure_parents(&update, &base, o).map_err(|err| e("mkdir", err))?;
        fs::create_dir(update.join(o)).map_err(|err| e("mkdir opaque", err))?;
        make_opaque(&update.join(o), root_user).map_err(|err| e("opaque", err))?;
        for i in 0..5 {
            new_file(&update, &base, &o.join(format!("opaque-new-{i}")), &mut rng)
                .map_err(|err| e("opaque file", err))?;
        }
    }
    let mut update_new = Vec::new();
    for i in 0..sizes.new_files {
        let d = visible_dirs[rng.below(visible_dirs.len())];
        let rel = d.join(format!("plyfs-bench-new-{i}"));
        new_file(&update, &base, &rel, &mut rng).map_err(|err| e("new file", err))?;
        update_new.push(rel);
    }

    // Top layer: a few more rewrites and new files, a new directory, and
    // whiteouts over files that only the update layer has.
    for rel in &top_rewrites {
        rewrite(&top, &base, rel, "top").map_err(|err| e("rewrite", err))?;
    }
    for i in 0..sizes.top_new {
        let d = visible_dirs[rng.below(visible_dirs.len())];
        new_file(
            &top,
            &base,
            &d.join(format!("plyfs-bench-top-{i}")),
            &mut rng,
        )
        .map_err(|err| e("new file", err))?;
    }
    let top_dir = sources[0].join("plyfs-bench-top");
    for i in 0..10 {
        new_file(&top, &base, &top_dir.join(format!("file-{i}")), &mut rng)
            .map_err(|err| e("new file", err))?;
    }
    for rel in update_new.iter().take(sizes.top_whiteouts) {
        ensure_parents(&top, &base, rel).map_err(|err| e("mkdir", err))?;
        make_whiteout(&top.join(rel), root_user).map_err(|err| e("whiteout", err))?;
    }

    // Workload file sets (visible lower files; regular files only, so no
    // workload can follow a symlink out of the tree).
    let mut pool = visible;
    rng.shuffle(&mut pool);
    if pool.len() < sizes.append + sizes.chmod {
        notes.push(format!(
            "only {} visible lower files for append ({}) and chmod ({})",
            pool.len(),
            sizes.append,
            sizes.chmod
        ));
    }
    let append: Vec<PathBuf> = pool.iter().take(sizes.append).cloned().collect();
    let chmod: Vec<PathBuf> = pool
        .iter()
        .skip(sizes.append)
        .chain(pool.iter())
        .take(sizes.chmod.min(pool.len()))
        .cloned()
        .collect();

    // ls -lR and rm -rf subtrees: the largest second-level directories
    // under the size limit.
    let mut second: Vec<(&Path, usize)> = ents
        .iter()
        .filter(|x| x.kind == Kind::Dir && depth(&x.rel) == 2 && !x.rel.starts_with(big_dir))
        .map(|x| (x.rel.as_path(), size_of(&x.rel)))
        .filter(|(_, n)| *n <= sizes.subtree_limit)
        .collect();
    second.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if second.len() < 3 {
        return Err("not enough second-level directories for ls -lR and rm -rf".into());
    }
    let ls_dir = second[0].0.to_path_buf();
    let rm_dirs: Vec<PathBuf> = second[1..3].iter().map(|(p, _)| p.to_path_buf()).collect();

    // Tarball for the untar workload (files only; tar creates the parents).
    let tar_files: Vec<PathBuf> = ents
        .iter()
        .filter(|x| x.kind == Kind::File && !x.rel.starts_with(big_dir))
        .take(sizes.untar)
        .map(|x| x.rel.clone())
        .collect();
    write_list(&root.join("untar.list"), &tar_files).map_err(|err| e("list", err))?;
    let st = Command::new("tar")
        .arg("cf")
        .arg(root.join("untar.tar"))
        .arg("-C")
        .arg(&base)
        .arg("--null")
        .arg("-T")
        .arg(root.join("untar.list"))
        .status()
        .map_err(|err| e("tar", err))?;
    if !st.success() {
        return Err("tar of the untar set failed".into());
    }

    let count = |p: &Path| walk(p).len();
    let mut info = vec![
        ("base_entries".to_string(), base_entries.to_string()),
        ("update_entries".into(), count(&update).to_string()),
        ("top_entries".into(), count(&top).to_string()),
        ("big_size".into(), sizes.big.to_string()),
        ("rewrites".into(), rewrites.len().to_string()),
        ("whiteouts".into(), whiteouts.len().to_string()),
        ("new_files".into(), update_new.len().to_string()),
        (
            "whiteout_dir".into(),
            wh_dir
                .as_ref()
                .map(|w| format!("{} ({} entries)", w.display(), size_of(w)))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "opaque_dir".into(),
            opq_dir
                .as_ref()
                .map(|o| format!("{} ({} entries)", o.display(), size_of(o)))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "ls_dir".into(),
            format!("{} ({} entries)", ls_dir.display(), second[0].1),
        ),
        (
            "rm_dirs".into(),
            second[1..3]
                .iter()
                .map(|(p, n)| format!("{} ({n})", p.display()))
                .collect::<Vec<_>>()
                .join(" + "),
        ),
        ("untar_files".into(), tar_files.len().to_string()),
        (
            "whiteout_style".into(),
            if root_user {
                "kernel 0/0 + trusted.overlay.opaque"
            } else {
                "OCI .wh."
            }
            .into(),
        ),
        (
            "build_seconds".into(),
            format!("{:.0}", t0.elapsed().as_secs_f64()),
        ),
    ];
    for (i, n) in notes.iter().enumerate() {
        info.push((format!("note{i}"), n.clone()));
    }
    let mut manifest = String::new();
    for (k, v) in &info {
        let _ = writeln!(manifest, "{k}={}", v.replace('\n', " "));
    }
    let w = |name: &str, items: &[PathBuf]| {
        write_list(&root.join(name), items).map_err(|err| format!("{name}: {err}"))
    };
    w("sources.list", &sources)?;
    w("append.list", &append)?;
    w("chmod.list", &chmod)?;
    w("ls.list", std::slice::from_ref(&ls_dir))?;
    w("rm.list", &rm_dirs)?;
    fs::write(root.join("manifest.txt"), manifest).map_err(|err| e("manifest", err))?;
    fs::write(root.join("COMPLETE"), tree_stamp(quick)).map_err(|err| e("stamp", err))?;
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::rename(&root, final_root).map_err(|err| e("rename tree", err))?;
    load_tree(final_root, quick).ok_or_else(|| "the new tree does not load".to_string())
}
