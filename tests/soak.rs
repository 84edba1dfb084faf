//! Crash safety of the store with the real binary: builds with COPY and RUN
//! steps killed with SIGKILL at random points, then `estiba fsck` is clean,
//! nothing the killed builds left stays once the next command has run, and
//! a rebuild gives the image a fresh store gives; then rounds of concurrent
//! builds with `prune`, `rmi` and `fsck` beside them. Also `fsck --repair`
//! on a damaged layer, `fsck --full` on a damaged snapshot, and a refused
//! `load` that leaves nothing behind.
//!
//! The random delays come from a seed printed on stderr; set
//! `ESTIBA_SOAK_SEED` to replay one.
#![allow(clippy::print_stderr)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/estiba.rs"]
mod support_estiba;
use support_estiba::{estiba, run};

/// Builds that must be killed before they finish.
const KILLS: usize = 30;
/// Attempts allowed to get them (a build may finish before its kill).
const MAX_ATTEMPTS: usize = 90;
/// Rounds of concurrent builds, and builds per round.
const ROUNDS: usize = 5;
const BUILDS_PER_ROUND: usize = 4;
/// Fixed so that builds in different stores give the same image ID.
const EPOCH: &str = "1700000000";

const DOCKERFILE: &str = "\
FROM scratch
ADD rootfs.tar /
COPY data/ /data/
RUN mkdir -p /out && cat /data/* > /out/all && dd if=/dev/zero of=/out/zero bs=1M count=8 2>/dev/null
COPY more.txt /more.txt
RUN --mount=type=cache,target=/cache echo run >> /cache/log && /bin/busybox sha256sum /out/all /more.txt > /out/sums
";

fn ok(cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    out
}

/// A context with a busybox root filesystem as `rootfs.tar` (from Debian's
/// busybox-static) and some files to copy.
fn context(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (scripts/test does)"
    );
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat", "mkdir", "dd", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("data")).expect("mkdir");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(ctx.join("rootfs.tar"))
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    for i in 0..40 {
        let text = format!("file {i}\n").repeat(200 * (i + 1));
        std::fs::write(ctx.join(format!("data/f{i:02}")), text).expect("write");
    }
    std::fs::write(ctx.join("more.txt"), "more\n").expect("write");
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("write");
    ctx
}

/// `estiba build` of `ctx` into `root`, with the fixed epoch.
fn build_cmd(root: &Path, ctx: &Path, extra: &[&str]) -> Command {
    let mut cmd = estiba(root);
    cmd.env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(ctx);
    cmd
}

/// Builds and returns the image ID.
fn build_id(root: &Path, ctx: &Path, extra: &[&str]) -> String {
    let iid = root.with_extension(format!("iid-{}", std::process::id()));
    ok(build_cmd(root, ctx, extra).arg("--iidfile").arg(&iid));
    let id = std::fs::read_to_string(&iid).expect("iidfile");
    let _ = std::fs::remove_file(&iid);
    id.trim().to_string()
}

/// What is in the store's temp dir.
fn tmp_entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("estiba/tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What is in the store's stat cache dir that is not a stat cache (named
/// by the digest of a context's path): temp files a killed build left.
fn stat_cache_strays(root: &Path) -> Vec<String> {
    let dir = root.join("estiba/statcache-v1");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// `estiba fsck` finds nothing; with `full`, snapshots are also compared
/// with their layers.
fn fsck_is_clean(root: &Path, full: bool) {
    let mut cmd = estiba(root);
    cmd.arg("fsck");
    if full {
        cmd.arg("--full");
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "fsck found problems:\n{out}\n{err}");
    assert!(out.contains("no problems"), "{out}");
}

/// A small xorshift generator: the test's delays, replayable from a seed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = match std::env::var("ESTIBA_SOAK_SEED") {
            Ok(s) => s.parse().expect("ESTIBA_SOAK_SEED is a number"),
            Err(_) => RandomState::new().hash_one(std::process::id()) | 1,
        };
        eprintln!("soak seed: {seed} (ESTIBA_SOAK_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// SIGKILL to the build's whole process group (it was started as the
/// leader of its own, so its RUN containers are in it too).
fn kill_group(child: &Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    match nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => panic!("cannot kill the build's process group: {e}"),
    }
    // Reaping estiba does not mean its RUN containers are gone: the kernel
    // tears a pid namespace down after its init's parent has died, and until
    // then they hold the build's temporary directories (in use, so no
    // command may clear them). Wait until none is left alive.
    let pgid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "processes of the killed build (group {pgid}) outlived SIGKILL by 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether any process of the group `pgid` is alive (zombies are not: the
/// machine's init may be slow to reap orphans, and they hold nothing).
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // After the command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        fields.len() > 2 && !matches!(fields[0], "Z" | "X") && fields[2] == pgid.to_string()
    })
}

#[test]
fn builds_killed_at_random_points_leave_a_sound_store_and_concurrent_builds_agree() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ctx = context(tmp.path());
    let mut rng = Rng::new();

    // The reference: a clean build in a fresh store.
    let fresh = tmp.path().join("fresh");
    let started = Instant::now();
    let reference = build_id(&fresh, &ctx, &[]);
    let full = started.elapsed();

    // Builds killed at random points, some from scratch (--no-cache), some
    // on what the killed ones before them left; and some prunes.
    let root = tmp.path().join("store");
    let mut killed = 0;
    let mut attempts = 0;
    // Delays are drawn below a limit per kind of build (uncached, cached);
    // it shrinks whenever such a build finishes before its kill.
    let mut limits = [(full.as_millis() as u64).max(50); 2];
    let mut killed_after = Vec::new();
    let mut prunes_killed = 0;
    while killed < KILLS && attempts < MAX_ATTEMPTS {
        attempts += 1;
        let cached = attempts % 3 == 0;
        let mut cmd = build_cmd(&root, &ctx, &[]);
        if !cached {
            cmd.arg("--no-cache");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn estiba build");
        let delay = rng.below(limits[usize::from(cached)]);
        std::thread::sleep(Duration::from_millis(delay));
        kill_group(&child);
        let status = child.wait().expect("reap the build");
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
            killed_after.push(delay);
        } else {
            assert!(status.success(), "attempt {attempts}: {status}");
            let limit = &mut limits[usize::from(cached)];
            *limit = (*limit * 4 / 5).max(20);
        }
        // Now and then a prune, killed too: GC must be as crash-safe.
        if attempts % 4 == 0 {
            let mut prune = estiba(&root);
            prune.arg("prune");
            if attempts % 8 == 0 {
                prune.arg("--all");
            }
            let mut child = prune
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn estiba prune");
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            kill_group(&child);
            let status = child.wait().expect("reap the prune");
            if status.signal() == Some(libc::SIGKILL) {
                prunes_killed += 1;
            } else {
                assert!(status.success(), "prune after attempt {attempts}: {status}");
            }
        }
    }
    assert!(
        killed >= KILLS,
        "only {killed} of {attempts} builds were killed before they finished"
    );
    killed_after.sort_unstable();
    eprintln!(
        "{killed} builds killed in {attempts} attempts, after {killed_after:?} ms \
         (a clean build took {} ms); {prunes_killed} prunes killed",
        full.as_millis()
    );

    // The next command clears what the killed builds left.
    fsck_is_clean(&root, true);
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
    assert_eq!(stat_cache_strays(&root), Vec::<String>::new());
    assert_eq!(build_id(&root, &ctx, &[]), reference);
    assert_eq!(build_id(&root, &ctx, &["--no-cache"]), reference);
    assert_eq!(tmp_entries(&root), Vec::<String>::new());

    // Rounds of concurrent builds, with prune (or prune --all), fsck and
    // rmi of the round before's tags beside them.
    for round in 0..ROUNDS {
        let mut builds = Vec::new();
        for k in 0..BUILDS_PER_ROUND {
            let iid = tmp.path().join(format!("iid-{round}-{k}"));
            let tag = format!("app:{round}-{k}");
            let mut cmd = build_cmd(&root, &ctx, &["-t", &tag]);
            cmd.arg("--iidfile").arg(&iid);
            if k % 2 == 1 {
                cmd.arg("--no-cache");
            }
            let child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn build");
            builds.push((child, iid));
        }
        let mut prune = estiba(&root);
        prune.arg("prune");
        if round % 2 == 1 {
            prune.arg("--all");
        }
        let prune = prune
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prune");
        // A check beside the builds finds nothing half-done.
        let fsck = estiba(&root)
            .args(["fsck", "--full"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fsck");
        let rmi = (round > 0).then(|| {
            let mut cmd = estiba(&root);
            cmd.arg("rmi");
            for k in 0..BUILDS_PER_ROUND {
                cmd.arg(format!("app:{}-{k}", round - 1));
            }
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rmi")
        });
        for (child, iid) in builds {
            let out = child.wait_with_output().expect("build ends");
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let id = std::fs::read_to_string(&iid).expect("iidfile");
            assert_eq!(id.trim(), reference, "round {round}");
        }
        for other in [prune, fsck].into_iter().chain(rmi) {
            let out = other.wait_with_output().expect("command ends");
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    fsck_is_clean(&root, true);
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
    let images = ok(estiba(&root).arg("images"));
    for k in 0..BUILDS_PER_ROUND {
        assert!(images.contains(&format!("{}-{k}", ROUNDS - 1)), "{images}");
    }
    assert!(!images.contains(&format!("{}-0", ROUNDS - 2)), "{images}");
    assert_eq!(build_id(&root, &ctx, &[]), reference);
}

#[test]
fn fsck_repair_drops_a_damaged_layer_and_the_next_build_makes_it_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ctx = context(tmp.path());
    let root = tmp.path().join("store");
    let id = build_id(&root, &ctx, &["-t", "app:1"]);
    fsck_is_clean(&root, true);

    // Flip one byte of the largest blob: the 8 MB layer of the first RUN.
    let blobs = root.join("blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).expect("stat").len())
        .expect("a blob");
    let mut bytes = std::fs::read(&largest).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&largest, &bytes).expect("damage the blob");
    let name = largest.file_name().expect("name").to_string_lossy();

    let (code, out, err) = run(estiba(&root).arg("fsck"));
    assert_eq!(code, 1, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with(&format!("blob sha256:{name}: content hashes to")));
    assert_eq!(
        lines[1],
        format!("tag docker.io/library/app:1: layer sha256:{name} is damaged")
    );
    assert!(lines[2].starts_with("cache record ") && lines[2].ends_with("is damaged"));
    assert!(err.contains("3 problems"), "{err}");

    let out = ok(estiba(&root).args(["fsck", "--repair"]));
    assert!(
        out.contains("Removed 1 blobs, 1 image entries, 1 cache records"),
        "{out}"
    );
    assert!(out.ends_with("no problems\n"), "{out}");
    fsck_is_clean(&root, true);

    // The step whose layer was dropped runs again; the rest is cached.
    let (code, _, err) = run(&mut build_cmd(&root, &ctx, &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches(" CACHED").count(), 4, "{err}");
    assert_eq!(build_id(&root, &ctx, &[]), id);
    assert_eq!(std::fs::read(&largest).expect("the layer is back"), {
        bytes[at] ^= 0xff;
        bytes
    });
    fsck_is_clean(&root, true);
}

#[test]
fn a_refused_load_leaves_no_blob_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ctx = context(tmp.path());
    let root = tmp.path().join("store");
    build_id(&root, &ctx, &["-t", "app:1"]);
    let archive = tmp.path().join("app.tar");
    ok(estiba(&root)
        .args(["save", "-o"])
        .arg(&archive)
        .arg("app:1"));

    // The same archive, with a name no image can have.
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let tar = |args: &[&str]| {
        let status = Command::new("tar").args(args).status().expect("tar runs");
        assert!(status.success(), "tar {args:?}");
    };
    tar(&[
        "-C",
        &unpacked.to_string_lossy(),
        "-xf",
        &archive.to_string_lossy(),
    ]);
    let manifest = unpacked.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("manifest.json");
    assert!(text.contains("app:1"), "{text}");
    std::fs::write(&manifest, text.replace("app:1", "Not A Name")).expect("write");
    let bad = tmp.path().join("bad.tar");
    let mut args = vec![
        "-C".to_string(),
        unpacked.to_string_lossy().into_owned(),
        "-cf".to_string(),
        bad.to_string_lossy().into_owned(),
    ];
    for entry in std::fs::read_dir(&unpacked).expect("unpacked") {
        args.push(
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    tar(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let other = tmp.path().join("other");
    let (code, _, err) = run(estiba(&other).arg("load").arg("-i").arg(&bad));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid image name \"Not A Name\""), "{err}");
    let blobs: Vec<_> = std::fs::read_dir(other.join("blobs/sha256"))
        .expect("blobs")
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    assert_eq!(tmp_entries(&other), Vec::<String>::new());
    // The sound archive loads, to the same image.
    let out = ok(estiba(&other).arg("load").arg("-i").arg(&archive));
    assert!(out.contains("Loaded image: app:1"), "{out}");
    fsck_is_clean(&other, true);
}

#[test]
fn fsck_full_finds_a_snapshot_that_is_not_its_layer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ctx = context(tmp.path());
    // Whiteouts, an opaque directory, owners, modes, links, and a step
    // after each RUN so that snapshots come both from RUN upper dirs and
    // from unpacked layers.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN mkdir -p /etc/d /opt/keep && echo a > /etc/d/a && echo k > /opt/keep/k \
             && ln -s /etc/d/a /link && chmod 4755 /etc/d/a\n\
         RUN rm /opt/keep/k && rm -rf /etc/d && mkdir /etc/d && echo b > /etc/d/b \
             && ln /etc/d/b /etc/d/hard && chown 10:20 /etc/d/b\n\
         COPY more.txt /etc/d/more\n\
         RUN cat /etc/d/more /etc/d/b\n",
    )
    .expect("write");
    let root = tmp.path().join("store");
    let id = build_id(&root, &ctx, &[]);
    fsck_is_clean(&root, true);

    // Change one file of the snapshot holding /etc/d/b.
    let snapshots = root.join("estiba/snapshots-v1");
    let damaged = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .find(|p| p.join("rootfs/etc/d/b").is_file())
        .expect("the snapshot of the second RUN");
    std::fs::write(damaged.join("rootfs/etc/d/b"), "c\n").expect("write");
    let name = damaged.file_name().expect("name").to_string_lossy();

    // Only --full unpacks the layers again and sees it.
    fsck_is_clean(&root, false);
    let (code, out, err) = run(estiba(&root).args(["fsck", "--full"]));
    assert_eq!(code, 1, "{out}\n{err}");
    let line = format!("snapshot {name}: differs from layer sha256:");
    assert!(out.starts_with(&line), "{out}");
    assert!(
        out.contains(": /etc/d/b is a file 2 bytes sha256:"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");

    let out = ok(estiba(&root).args(["fsck", "--full", "--repair"]));
    assert!(
        out.contains("Removed 0 blobs, 0 image entries, 0 cache records, 1 snapshots"),
        "{out}"
    );
    assert!(!damaged.exists());
    fsck_is_clean(&root, true);
    // The next build unpacks the layer again where a step needs it.
    assert_eq!(build_id(&root, &ctx, &["--no-cache"]), id);
    assert_eq!(
        std::fs::read_to_string(damaged.join("rootfs/etc/d/b")).expect("made again"),
        "b\n"
    );
    fsck_is_clean(&root, true);
}
