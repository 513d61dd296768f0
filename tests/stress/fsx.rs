//! fsx on a file that starts in a lower layer, in four configurations:
//! passthrough on (root's default) and off (what unprivileged users get),
//! each buffered and O_DIRECT.
//!
//! The file is read through the mount (read and mmap, filling the page
//! cache with the lower data) before fsx opens it with O_TRUNC, which
//! copies it up. fsx then mixes pread/pwrite, mmap reads and writes with
//! msync and MS_INVALIDATE, truncates, posix_fallocate, punch-hole,
//! copy_file_range, sendfile, fadvise, fsync/fdatasync and close/reopen,
//! checking every byte it reads and the size after every operation.
//!
//! fsx has no O_DIRECT switch: a tiny LD_PRELOAD shim (`odirect_shim.c`,
//! built here with `cc`) adds O_DIRECT to its opens of the test file and
//! bounces misaligned buffers through aligned memory; offsets and lengths
//! are 4 KiB-aligned by fsx's `opsize.align`, as O_DIRECT on the kernel's
//! overlayfs (and plyfs's passthrough) requires. posix_fallocate is off in
//! the O_DIRECT configurations only because fsx then asks for zero-length
//! ranges (EINVAL on any filesystem).

use super::*;

use std::path::PathBuf;
use std::process::Command;

/// fsx's default file length; operations up to 64 KiB.
const FLEN: usize = 256 * 1024;
/// Operations per fsx process (see `run`).
const CHUNK: u64 = 100_000;

struct Config {
    name: &'static str,
    passthrough: &'static str,
    direct: bool,
    seed: u64,
}

fn ops() -> u64 {
    env_num("PLYFS_STRESS_FSX_OPS", 100_000, 1_000_000)
}

fn seed(default: u64) -> u64 {
    match std::env::var("PLYFS_STRESS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("PLYFS_STRESS_SEED must be a number"),
        // The long run explores new sequences; CI replays fixed ones.
        Err(_) if long_run() => {
            default
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
        }
        Err(_) => default,
    }
}

fn toml(direct: bool) -> String {
    let (align, fallocate, min) = if direct { (4096, 0, 4096) } else { (1, 2, 1) };
    format!(
        "flen = {FLEN}\n\
         [opsize]\nmax = 65536\nmin = {min}\nalign = {align}\n\
         [weights]\n\
         close_open = 1\nread = 10\nwrite = 10\nmapread = 10\nmapwrite = 10\n\
         invalidate = 1\ntruncate = 2\nfsync = 0.2\nfdatasync = 0.2\n\
         posix_fallocate = {fallocate}\npunch_hole = 2\nsendfile = 1\n\
         posix_fadvise = 1\ncopy_file_range = 2\n"
    )
}

/// Builds the O_DIRECT shim (once per test binary run).
fn shim() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stress/odirect_shim.c");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plyfs_odirect_shim.so");
            let st = Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
                .arg(&out)
                .arg(src)
                .arg("-ldl")
                .status()
                .expect("run cc (needed to build the O_DIRECT shim)");
            assert!(st.success(), "building the O_DIRECT shim failed");
            out
        })
        .clone()
}

/// Reads the lower file through the mount by read() and by mmap, checking
/// the copy-up source and leaving its pages cached.
fn preread(path: &Path, want: &[u8]) {
    assert!(
        read_all(path) == want,
        "lower data differs through the mount"
    );
    let f = std::fs::File::open(path).expect("open");
    use std::os::fd::AsRawFd;
    // SAFETY: a read-only shared mapping of a file we hold open, of its size.
    let got = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            want.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap the lower file");
        let v = std::slice::from_raw_parts(p as *const u8, want.len()).to_vec();
        libc::munmap(p, want.len());
        v
    };
    assert!(got == want, "lower data differs through mmap");
}

fn run(cfg: Config) {
    let test = format!("fsx_{}", cfg.name);
    if !runnable(&test) {
        return;
    }
    let Some(fsx) = tool("fsx", &test) else {
        return;
    };
    let shim = cfg.direct.then(shim);
    let n = ops();
    // fsx leaks the mapping of every mmap read (no munmap in its
    // `domapread`), so one process cannot go much past 300k operations
    // (vm.max_map_count); longer runs are chunks of at most 100k, each on
    // its own file that starts in the lower layer.
    let chunks = n.div_ceil(CHUNK).max(1);
    let l = Layers::new(1);
    let lower_data: Vec<Vec<u8>> = (0..chunks)
        .map(|i| pattern(cfg.seed * 1000 + i, FLEN))
        .collect();
    for (i, d) in lower_data.iter().enumerate() {
        write(&l.lower(0).join(format!("fsx/file{i}")), d);
    }
    let conf = l.dir.path().join("fsx.toml");
    std::fs::write(&conf, toml(cfg.direct)).expect("write fsx.toml");
    let artifacts = l.dir.path().join("artifacts");
    std::fs::create_dir(&artifacts).expect("mkdir artifacts");

    let m = mount_with(&l, &format!("passthrough={}", cfg.passthrough));
    let seed = seed(cfg.seed);
    let config = format!(
        "passthrough={}, {}, seed {seed}",
        cfg.passthrough,
        if cfg.direct { "O_DIRECT" } else { "buffered" }
    );
    let mut sampler = Sampler::start(m.pid());
    let started = std::time::Instant::now();
    let mut done = 0;
    for i in 0..chunks {
        let this = CHUNK.min(n - done).max(1);
        let file = m.mnt.join(format!("fsx/file{i}"));
        preread(&file, &lower_data[i as usize]);
        let mut cmd = Command::new(&fsx);
        cmd.arg("-N")
            .arg(this.to_string())
            .arg("-S")
            .arg((seed + i).to_string())
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(&artifacts)
            .arg(&file);
        if let Some(shim) = &shim {
            cmd.env("LD_PRELOAD", shim).env("PLYFS_ODIRECT_PATH", &file);
        }
        let out = cmd.output().expect("run fsx");
        let stderr = [&out.stdout[..], &out.stderr[..]].concat();
        let ok = out.status.success() && String::from_utf8_lossy(&stderr).contains("A-OK");
        if !ok {
            report("fsx", &config, &format!("{}", done + this), 1, None);
            panic!(
                "fsx failed ({config}, chunk {i}, seed {}), status {}:\n{}\nplyfs log:\n{}",
                seed + i,
                out.status,
                tail(&stderr, 80),
                m.log()
            );
        }
        done += this;
    }
    sampler.workload_done();
    eprintln!(
        "{test}: {done} ops in {:.1}s ({config})",
        started.elapsed().as_secs_f64()
    );
    // What fsx left is what kernel overlayfs shows too (`finish`).
    let usage = finish(&l, m, sampler, &test);
    report("fsx", &config, &done.to_string(), 0, Some(&usage));
}

#[test]
fn fsx_passthrough_buffered() {
    run(Config {
        name: "passthrough_buffered",
        passthrough: "on",
        direct: false,
        seed: 1,
    });
}

#[test]
fn fsx_passthrough_odirect() {
    run(Config {
        name: "passthrough_odirect",
        passthrough: "on",
        direct: true,
        seed: 2,
    });
}

#[test]
fn fsx_cached_buffered() {
    run(Config {
        name: "cached_buffered",
        passthrough: "off",
        direct: false,
        seed: 3,
    });
}

#[test]
fn fsx_cached_odirect() {
    run(Config {
        name: "cached_odirect",
        passthrough: "off",
        direct: true,
        seed: 4,
    });
}
