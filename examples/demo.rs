//! A one-command tour of plyfs: builds two small image layers, mounts them
//! with an upper layer, and shows precedence, copy-up and a whiteout.
//!
//!     cargo run --release --example demo
//!
//! Needs /dev/fuse (root, or fusermount3 with a 0666 /dev/fuse).

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use plyfs::daemon::{MountRequest, spawn};
use plyfs::options::MountOptions;

fn show_tree(title: &str, root: &Path) {
    println!("  {title}:");
    let mut entries = Vec::new();
    collect(root, root, &mut entries);
    entries.sort();
    for e in entries {
        println!("    {e}");
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            out.push(format!("{rel}/"));
            collect(root, &p, out);
        } else if ft.is_char_device() && md.rdev() == 0 {
            out.push(format!("{rel}  (whiteout: 0/0 char device)"));
        } else if ft.is_symlink() {
            out.push(format!(
                "{rel} -> {}",
                fs::read_link(&p).unwrap_or_default().display()
            ));
        } else {
            let text = fs::read_to_string(&p).unwrap_or_default();
            out.push(format!("{rel}  = {:?}", text.trim_end()));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("plyfs-demo-")
        .tempdir_in("/var/tmp")?;
    let d = dir.path();
    let (base, app, upper, work, mnt) = (
        d.join("base"),
        d.join("app"),
        d.join("upper"),
        d.join("work"),
        d.join("merged"),
    );
    for p in [&base, &app, &upper, &work, &mnt] {
        fs::create_dir_all(p)?;
    }
    // The base image layer.
    fs::create_dir_all(base.join("etc"))?;
    fs::write(base.join("etc/os-release"), "NAME=base\n")?;
    fs::write(base.join("etc/motd"), "hello from the base layer\n")?;
    fs::write(base.join("etc/obsolete.conf"), "old setting\n")?;
    // An application layer on top: overrides a file and deletes one with a
    // kernel whiteout (a 0/0 character device), the format kernel overlayfs
    // reads too. Where mknod is refused, the OCI form `.wh.NAME`, which
    // plyfs reads as well (kernel overlayfs does not).
    fs::create_dir_all(app.join("etc"))?;
    fs::write(app.join("etc/os-release"), "NAME=app\n")?;
    let etc = fs::File::open(app.join("etc"))?;
    let kernel_format = plyfs::whiteout::make_whiteout(etc.as_fd(), c"obsolete.conf").is_ok();
    if !kernel_format {
        fs::write(app.join("etc/.wh.obsolete.conf"), "")?;
    }
    fs::create_dir_all(app.join("srv"))?;
    fs::write(app.join("srv/index.html"), "<h1>app</h1>\n")?;

    println!("plyfs demo in {}\n", d.display());
    show_tree("lower layer 'app' (top)", &app);
    show_tree("lower layer 'base'", &base);

    let mut options = MountOptions::default();
    options.apply_str(
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            app.display(),
            base.display(),
            upper.display(),
            work.display()
        )
        .as_bytes(),
    )?;
    let req = MountRequest {
        options,
        source: Some("demo".into()),
        mountpoint: mnt.clone(),
        foreground: true,
    };
    let session = spawn(&req)?;
    println!("\nmounted at {}", mnt.display());
    show_tree(
        "merged view (app wins, obsolete.conf is deleted by the whiteout)",
        &mnt,
    );

    println!(
        "\nwriting to etc/motd (a lower file: copy-up) and deleting etc/os-release (whiteout):"
    );
    fs::write(mnt.join("etc/motd"), "edited in the container\n")?;
    fs::remove_file(mnt.join("etc/os-release"))?;
    fs::create_dir(mnt.join("data"))?;
    fs::write(mnt.join("data/new.txt"), "new file\n")?;
    show_tree("merged view now", &mnt);
    show_tree("upper layer (what changed)", &upper);
    println!(
        "  base layer untouched: etc/motd = {:?}",
        fs::read_to_string(base.join("etc/motd"))?.trim_end()
    );

    let mut plyfs_view = Vec::new();
    collect(&mnt, &mnt, &mut plyfs_view);
    plyfs_view.sort();
    drop(session);
    println!("\nunmounted; the layers are in kernel-overlayfs format:");
    check_with_kernel(
        &[&app, &base],
        &upper,
        &work,
        &mnt,
        kernel_format,
        &plyfs_view,
    )
}

/// Mounts the same directories with kernel overlayfs (as root) and checks
/// that it shows exactly what plyfs showed.
fn check_with_kernel(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    mnt: &Path,
    kernel_format: bool,
    plyfs_view: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    if !kernel_format || plyfs::geteuid() != 0 {
        println!("  (checking with `mount -t overlay` needs root and a kernel-format lower layer)");
        return Ok(());
    }
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .status()?;
    if !st.success() {
        return Err("mount -t overlay failed".into());
    }
    let mut kernel_view = Vec::new();
    collect(mnt, mnt, &mut kernel_view);
    kernel_view.sort();
    let _ = std::process::Command::new("umount").arg(mnt).status();
    if kernel_view != plyfs_view {
        return Err(
            format!("kernel overlayfs shows {kernel_view:?}, plyfs showed {plyfs_view:?}").into(),
        );
    }
    println!("  `mount -t overlay` of the same directories shows the same tree (checked).");
    Ok(())
}
