//! Merged directory listings through readdir(3): content, `.`/`..`,
//! d_ino consistency, telldir/seekdir, and changes during a listing.

mod common;
mod sem;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use sem::*;

fn name_set(v: &[DirEnt]) -> BTreeSet<Vec<u8>> {
    v.iter()
        .map(|e| e.name.clone())
        .filter(|n| n != b"." && n != b"..")
        .collect()
}

/// Panics if any name appears twice.
fn assert_unique(v: &[DirEnt]) {
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for e in v {
        *count.entry(&e.name).or_default() += 1;
    }
    let dups: Vec<_> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| format!("{} x{c}", String::from_utf8_lossy(n)))
        .collect();
    assert!(dups.is_empty(), "duplicate entries: {dups:?}");
}

fn s(v: &[&str]) -> BTreeSet<Vec<u8>> {
    v.iter().map(|x| x.as_bytes().to_vec()).collect()
}

fn merged_setup(l: &Layers) {
    write(&l.upper.join("d/u1"), b"");
    write(&l.upper.join("d/both"), b"upper");
    whiteout(&l.upper.join("d/gone"));
    write(&l.lower(0).join("d/l0"), b"");
    write(&l.lower(0).join("d/both"), b"lower0");
    write(&l.lower(0).join("d/gone"), b"");
    std::fs::create_dir_all(l.lower(0).join("d/sub")).unwrap();
    write(&l.lower(1).join("d/l1"), b"");
    write(&l.lower(1).join("d/both"), b"lower1");
    write(&l.lower(1).join("d/sub/x"), b"");
    whiteout(&l.lower(0).join("d/gone1"));
    write(&l.lower(1).join("d/gone1"), b"");
}

#[test]
fn merged_listing_is_union_without_duplicates_or_whiteouts() {
    if !require_root("merged_listing_is_union_without_duplicates_or_whiteouts") {
        return;
    }
    let (p, k) = plyfs_and_kernel(2, merged_setup, |mnt, _| {
        let v = readdir_all(&mnt.join("d"));
        assert_unique(&v);
        name_set(&v)
    });
    assert_eq!(k, s(&["both", "l0", "l1", "sub", "u1"]), "kernel");
    assert_eq!(p, k);
}

#[test]
fn dot_and_dotdot_are_listed_once_everywhere() {
    if !require_root("dot_and_dotdot_are_listed_once_everywhere") {
        return;
    }
    let l = Layers::new(2);
    merged_setup(&l);
    write(&l.upper.join("uonly/f"), b"");
    write(&l.lower(1).join("lonly/f"), b"");
    let m = l.mount();
    std::fs::create_dir(m.mnt.join("fresh")).unwrap();
    for dir in ["", "d", "d/sub", "uonly", "lonly", "fresh"] {
        let v = readdir_all(&m.mnt.join(dir));
        for dot in [&b"."[..], b".."] {
            let n = v.iter().filter(|e| e.name == dot).count();
            assert_eq!(
                n,
                1,
                "{dir:?}: {} listed {n} times",
                String::from_utf8_lossy(dot)
            );
        }
    }
    let fresh = readdir_all(&m.mnt.join("fresh"));
    assert_eq!(fresh.len(), 2, "{fresh:?}");
}

#[test]
fn d_ino_and_d_type_match_stat() {
    if !require_root("d_ino_and_d_type_match_stat") {
        return;
    }
    let l = Layers::new(2);
    merged_setup(&l);
    write(&l.upper.join("uonly/f"), b"");
    write(&l.lower(1).join("lonly/f"), b"");
    std::os::unix::fs::symlink("f", l.lower(1).join("lonly/link")).unwrap();
    let m = l.mount();
    // A copied-up file and a freshly created one, too.
    std::fs::write(m.mnt.join("d/l1"), b"copied up").unwrap();
    std::fs::write(m.mnt.join("d/new"), b"new").unwrap();
    for dir in ["", "d", "d/sub", "uonly", "lonly"] {
        let dpath = m.mnt.join(dir);
        for e in readdir_all(&dpath) {
            let path = match &e.name[..] {
                b"." => dpath.clone(),
                b".." if dir.is_empty() => continue, // outside the mount
                b".." => dpath.parent().unwrap().to_path_buf(),
                n => bpath(&dpath, n),
            };
            let md = lstat(&path).unwrap();
            assert_eq!(
                e.ino,
                md.ino(),
                "d_ino of {dir}/{} differs from st_ino",
                String::from_utf8_lossy(&e.name)
            );
            let dt = match kind_char(md.file_type()) {
                'd' => libc::DT_DIR,
                'f' => libc::DT_REG,
                'l' => libc::DT_LNK,
                _ => libc::DT_UNKNOWN,
            };
            assert!(
                e.typ == dt || e.typ == libc::DT_UNKNOWN,
                "d_type of {dir}/{} is {} but the file is {:?}",
                String::from_utf8_lossy(&e.name),
                e.typ,
                md.file_type()
            );
        }
    }
}

/// 1000 visible names spread over three layers with overlaps and whiteouts.
fn big_dir(l: &Layers) -> BTreeSet<Vec<u8>> {
    let name = |i: usize| format!("entry-{i:04}");
    let mut expect = BTreeSet::new();
    std::fs::create_dir_all(l.upper.join("big")).unwrap();
    std::fs::create_dir_all(l.lower(0).join("big")).unwrap();
    std::fs::create_dir_all(l.lower(1).join("big")).unwrap();
    for i in 0..350 {
        write(&l.upper.join("big").join(name(i)), b"u");
    }
    for i in 300..700 {
        write(&l.lower(0).join("big").join(name(i)), b"0");
    }
    for i in 650..1050 {
        write(&l.lower(1).join("big").join(name(i)), b"1");
    }
    // The last 50 are whited out in the upper layer.
    for i in 1000..1050 {
        whiteout(&l.upper.join("big").join(name(i)));
    }
    for i in 0..1000 {
        expect.insert(name(i).into_bytes());
    }
    expect
}

#[test]
fn big_merged_dir_lists_every_name_once() {
    if !require_root("big_merged_dir_lists_every_name_once") {
        return;
    }
    let l = Layers::new(2);
    let expect = big_dir(&l);
    let m = l.mount();
    let v = readdir_all(&m.mnt.join("big"));
    assert_unique(&v);
    assert_eq!(name_set(&v), expect);
}

#[test]
fn telldir_seekdir_round_trip_on_big_dir() {
    if !require_root("telldir_seekdir_round_trip_on_big_dir") {
        return;
    }
    let l = Layers::new(2);
    big_dir(&l);
    let m = l.mount();
    let mut d = Dir::open(&m.mnt.join("big")).unwrap();
    let first = d.take(350);
    assert_eq!(first.len(), 350);
    let pos = d.tell();
    let more = d.take(200);
    assert_eq!(more.len(), 200);
    d.seek(pos);
    let again = d.take(200);
    assert_eq!(again, more, "after seekdir back, the sequence differs");

    // Positions remembered at many points, revisited out of order.
    let mut d = Dir::open(&m.mnt.join("big")).unwrap();
    let mut marks = Vec::new(); // (position, entry read right after it)
    loop {
        let pos = d.tell();
        let Some(e) = d.next_entry() else { break };
        marks.push((pos, e));
        d.take(96);
    }
    assert!(marks.len() >= 10, "{} marks", marks.len());
    for (pos, e) in marks.iter().rev().chain(marks.iter().step_by(3)) {
        d.seek(*pos);
        assert_eq!(d.next_entry().as_ref(), Some(e));
    }
}

/// POSIX: entries neither added nor removed during a listing are returned
/// exactly once; the others may or may not be.
fn listing_survives_changes(dir: &Path, present: &BTreeSet<Vec<u8>>) {
    let mut d = Dir::open(dir).unwrap();
    let mut got = d.take(100);
    let seen_so_far = name_set(&got);
    let unseen: Vec<_> = present.difference(&seen_so_far).cloned().collect();
    // Remove every fourth entry not yet returned, and add new ones.
    let removed: BTreeSet<Vec<u8>> = unseen.iter().step_by(4).cloned().collect();
    for n in &removed {
        std::fs::remove_file(bpath(dir, n)).unwrap();
    }
    for i in 0..60 {
        std::fs::write(dir.join(format!("added-{i:03}")), b"").unwrap();
    }
    got.extend(d.rest());
    assert_unique(&got);
    let got = name_set(&got);
    for n in present.difference(&removed) {
        assert!(got.contains(n), "{} missing", String::from_utf8_lossy(n));
    }
    for n in &got {
        assert!(
            present.contains(n) || n.starts_with(b"added-"),
            "unexpected {}",
            String::from_utf8_lossy(n)
        );
    }
}

#[test]
fn changes_during_listing_of_merged_dir() {
    if !require_root("changes_during_listing_of_merged_dir") {
        return;
    }
    let l = Layers::new(2);
    let expect = big_dir(&l);
    let m = l.mount();
    listing_survives_changes(&m.mnt.join("big"), &expect);
}

#[test]
fn changes_during_listing_of_upper_only_dir() {
    let l = Layers::new(1);
    let mut expect = BTreeSet::new();
    for i in 0..400 {
        let n = format!("u{i:03}");
        write(&l.upper.join("dir").join(&n), b"");
        expect.insert(n.into_bytes());
    }
    let m = l.mount();
    listing_survives_changes(&m.mnt.join("dir"), &expect);
}

#[test]
fn changes_during_listing_of_lower_only_dir() {
    let l = Layers::new(1);
    let mut expect = BTreeSet::new();
    for i in 0..400 {
        let n = format!("l{i:03}");
        write(&l.lower(0).join("dir").join(&n), b"");
        expect.insert(n.into_bytes());
    }
    let m = l.mount();
    listing_survives_changes(&m.mnt.join("dir"), &expect);
}

fn rewind_case(dir: &Path) {
    let mut d = Dir::open(dir).unwrap();
    let before = name_set(&d.rest());
    std::fs::write(dir.join("brand-new"), b"").unwrap();
    let victim = before.iter().next().unwrap().clone();
    std::fs::remove_file(bpath(dir, &victim)).unwrap();
    d.rewind();
    let after = d.rest();
    assert_unique(&after);
    let after = name_set(&after);
    assert!(after.contains(&b"brand-new"[..]), "{after:?}");
    assert!(!after.contains(&victim), "removed entry still listed");
    let mut want = before.clone();
    want.remove(&victim);
    want.insert(b"brand-new".to_vec());
    assert_eq!(after, want);
}

#[test]
fn rewinddir_sees_new_and_removed_entries() {
    if !require_root("rewinddir_sees_new_and_removed_entries") {
        return;
    }
    let l = Layers::new(2);
    merged_setup(&l);
    write(&l.upper.join("uonly/a"), b"");
    write(&l.upper.join("uonly/b"), b"");
    write(&l.lower(1).join("lonly/a"), b"");
    write(&l.lower(1).join("lonly/b"), b"");
    let m = l.mount();
    for dir in ["d", "uonly", "lonly"] {
        rewind_case(&m.mnt.join(dir));
    }
}

#[test]
fn listing_after_copy_up_and_delete_matches_kernel() {
    if !require_root("listing_after_copy_up_and_delete_matches_kernel") {
        return;
    }
    let (p, k) = plyfs_and_kernel(2, merged_setup, |mnt, _| {
        let d = mnt.join("d");
        std::fs::write(d.join("l1"), b"copied").unwrap();
        std::fs::remove_file(d.join("l0")).unwrap();
        std::fs::remove_file(d.join("both")).unwrap();
        std::fs::write(d.join("gone"), b"back").unwrap();
        std::fs::remove_dir_all(d.join("sub")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let v = readdir_all(&d);
        assert_unique(&v);
        (name_set(&v), ls(&d.join("sub")))
    });
    assert_eq!(p, k);
}

#[test]
fn concurrent_listings_while_the_dir_changes() {
    let l = Layers::new(2);
    let mut stable = BTreeSet::new();
    for i in 0..300 {
        let n = format!("s{i:03}");
        let layer = [&l.upper, &l.lowers[0], &l.lowers[1]][i % 3];
        write(&layer.join("d").join(&n), b"");
        stable.insert(n.into_bytes());
    }
    for i in 0..100 {
        write(&l.lower(1).join(format!("d/victim{i:03}")), b"");
    }
    let m = l.mount();
    let dir = m.mnt.join("d");
    let stable = std::sync::Arc::new(stable);
    std::thread::scope(|s| {
        let mutator = s.spawn(|| {
            for i in 0..100 {
                std::fs::write(dir.join(format!("tmp{i}")), b"").unwrap();
                std::fs::remove_file(dir.join(format!("victim{i:03}"))).unwrap();
                if i % 2 == 0 {
                    std::fs::remove_file(dir.join(format!("tmp{i}"))).unwrap();
                }
            }
        });
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (dir, stable) = (&dir, stable.clone());
                s.spawn(move || {
                    for _ in 0..15 {
                        let v = readdir_all(dir);
                        assert_unique(&v);
                        let got = name_set(&v);
                        for n in stable.iter() {
                            assert!(got.contains(n), "{} missing", String::from_utf8_lossy(n));
                        }
                    }
                })
            })
            .collect();
        mutator.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
    let got = name_set(&readdir_all(&dir));
    let mut want: BTreeSet<Vec<u8>> = (*stable).clone();
    for i in (1..100).step_by(2) {
        want.insert(format!("tmp{i}").into_bytes());
    }
    assert_eq!(got, want);
}

#[test]
fn d_ino_stays_equal_to_st_ino_after_cache_eviction() {
    if !require_root("d_ino_stays_equal_to_st_ino_after_cache_eviction") {
        return;
    }
    let l = Layers::new(2);
    merged_setup(&l);
    let m = l.mount();
    let d = m.mnt.join("d");
    std::fs::write(d.join("l1"), b"copied up").unwrap();
    std::fs::write(d.join("new"), b"new").unwrap();
    std::fs::hard_link(d.join("new"), d.join("new-link")).unwrap();
    let st: Vec<(Vec<u8>, u64)> = names(&d)
        .into_iter()
        .map(|n| {
            let ino = lstat(&bpath(&d, &n)).unwrap().ino();
            (n, ino)
        })
        .collect();
    std::fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    let listed: Vec<(Vec<u8>, u64)> = {
        let mut v: Vec<_> = readdir_all(&d)
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| (e.name, e.ino))
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed, st);
}

/// Random writes, unlinks, renames and links in three directories (two
/// merged with lower content, one new); after every step each listing must
/// equal a model of what should be there, and every name must show the
/// content last written through any of its links.
#[test]
fn listings_follow_a_model_under_random_operations() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    let l = Layers::new(2);
    let dirs = ["a", "b", "c"];
    // dir -> name -> file id; file id -> content.
    let mut tree: BTreeMap<&str, BTreeMap<String, usize>> = Default::default();
    let mut content: Vec<String> = Vec::new();
    for d in dirs {
        tree.insert(d, BTreeMap::new());
    }
    for i in 0..6 {
        for (d, layer) in [("a", i % 2), ("b", 1)] {
            let c = format!("lower {d}/f{i}");
            write(&l.lower(layer).join(format!("{d}/f{i}")), c.as_bytes());
            tree.get_mut(d)
                .unwrap()
                .insert(format!("f{i}"), content.len());
            content.push(c);
        }
    }
    let m = l.mount();
    std::fs::create_dir(m.mnt.join("c")).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let pick = |rng: &mut rand::rngs::SmallRng| {
        (
            dirs[rng.gen_range(0..3)],
            format!("f{}", rng.gen_range(0..9)),
        )
    };
    for step in 0..400 {
        let (d, n) = pick(&mut rng);
        let p = m.mnt.join(d).join(&n);
        let what;
        match rng.gen_range(0..4) {
            0 => {
                what = format!("write {d}/{n}");
                let c = format!("step {step}");
                std::fs::write(&p, c.as_bytes()).unwrap();
                match tree[d].get(&n) {
                    Some(&id) => content[id] = c,
                    None => {
                        tree.get_mut(d).unwrap().insert(n, content.len());
                        content.push(c);
                    }
                }
            }
            1 => {
                what = format!("unlink {d}/{n}");
                let present = tree.get_mut(d).unwrap().remove(&n).is_some();
                assert_eq!(std::fs::remove_file(&p).is_ok(), present, "{what}");
            }
            2 => {
                let (d2, n2) = pick(&mut rng);
                what = format!("rename {d}/{n} -> {d2}/{n2}");
                let src = tree[d].get(&n).copied();
                let r = std::fs::rename(&p, m.mnt.join(d2).join(&n2));
                assert_eq!(r.is_ok(), src.is_some(), "{what}: {r:?}");
                // Renaming onto another link of the same file does nothing.
                if let Some(id) = src
                    && tree[d2].get(&n2) != Some(&id)
                {
                    tree.get_mut(d).unwrap().remove(&n);
                    tree.get_mut(d2).unwrap().insert(n2, id);
                }
            }
            _ => {
                let (d2, n2) = pick(&mut rng);
                what = format!("link {d}/{n} -> {d2}/{n2}");
                let src = tree[d]
                    .get(&n)
                    .copied()
                    .filter(|_| !tree[d2].contains_key(&n2));
                let r = std::fs::hard_link(&p, m.mnt.join(d2).join(&n2));
                assert_eq!(r.is_ok(), src.is_some(), "{what}: {r:?}");
                if let Some(id) = src {
                    tree.get_mut(d2).unwrap().insert(n2, id);
                }
            }
        }
        for dd in dirs {
            let got: Vec<String> = ls(&m.mnt.join(dd));
            let want: Vec<String> = tree[dd].keys().cloned().collect();
            assert_eq!(got, want, "step {step} ({what}): listing of {dd}");
            for (name, &id) in &tree[dd] {
                let c = std::fs::read_to_string(m.mnt.join(dd).join(name)).unwrap();
                assert_eq!(
                    c, content[id],
                    "step {step} ({what}): content of {dd}/{name}"
                );
            }
        }
    }
}
