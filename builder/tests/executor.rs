//! The RUN executor end to end, as root, with real namespaces and overlayfs:
//! each test runs steps on a busybox root file system made from Debian's
//! static busybox (installed by `scripts/test-deps`) and checks what the step
//! saw, what it printed, and what it left in the upper dir.
//!
//! The init is the `estiba` binary (`CARGO_BIN_EXE_estiba`): the test binary
//! cannot act as one, so tests go through `run_with`, which `run` wraps.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use estiba::executor::{
    run_with, upper_to_layer_dir, ExecError, ExtraMount, Network, RunOptions, RunSpec, Security,
    Snapshotter, Stream,
};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HOSTNAME: &str = "estiba-test";
const APPLETS: [&str; 29] = [
    "sh", "echo", "cat", "id", "ls", "sleep", "mount", "mkdir", "rm", "env", "sort", "hostname",
    "pwd", "grep", "true", "false", "kill", "stat", "wc", "touch", "head", "readlink", "test",
    "printf", "tr", "cut", "mknod", "unshare", "chroot",
];
/// Set for the helper process of the SIGTERM test: its scratch directory.
const HELPER_ENV: &str = "ESTIBA_EXECUTOR_TEST_HELPER";

/// A busybox image unpacked in `lower`, an empty upper and work dir.
struct Fixture {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// `Auto` unless a test is about one snapshotter (`ESTIBA_SNAPSHOTTER`
    /// then runs the others with the one it names).
    snapshotter: Snapshotter,
}

/// What the layer of the busybox image holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Etc {
    /// `/etc/passwd` and `/etc/group` (users root and app, groups root,
    /// staff with app as a member, app); no hosts, hostname, resolv.conf.
    Users,
    /// No `/etc` at all.
    Missing,
}

impl Fixture {
    fn new(etc: Etc) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let mut f = Fixture::in_dir(&root, etc);
        f._tmp = Some(tmp);
        f
    }

    fn in_dir(root: &Path, etc: Etc) -> Fixture {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: install busybox-static (scripts/test-deps does)"
        );
        let lower = root.join("lower");
        let bin = lower.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link");
        }
        for dir in ["tmp", "root", "home/app", "mnt"] {
            std::fs::create_dir_all(lower.join(dir)).expect("mkdir");
        }
        if etc == Etc::Users {
            std::fs::create_dir_all(lower.join("etc")).expect("mkdir etc");
            std::fs::write(
                lower.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            )
            .expect("passwd");
            std::fs::write(
                lower.join("etc/group"),
                "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
            )
            .expect("group");
        }
        let (upper, work) = (root.join("upper"), root.join("work"));
        std::fs::create_dir(&upper).expect("mkdir upper");
        std::fs::create_dir(&work).expect("mkdir work");
        Fixture {
            _tmp: None,
            root: root.to_owned(),
            lower,
            upper,
            work,
            snapshotter: Snapshotter::Auto,
        }
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec {
            lower: vec![self.lower.clone()],
            upper: self.upper.clone(),
            work: self.work.clone(),
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![PATH.into()],
            user: String::new(),
            workdir: "/".into(),
            network: Network::Host,
            hostname: HOSTNAME.into(),
            files: BTreeMap::new(),
            mounts: Vec::new(),
            publish: Vec::new(),
            security: Security::Sandbox,
            host: Default::default(),
            tty: false,
            skip_sync: false,
        }
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            init_exe: PathBuf::from(env!("CARGO_BIN_EXE_estiba")),
            tmp_dir: self.root.clone(),
            snapshotter: self.snapshotter,
            stdin: Default::default(),
            isolation: Default::default(),
        }
    }

    /// Runs `spec`; its result and everything it printed.
    fn exec(&self, spec: &RunSpec) -> Outcome {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let result = run_with(spec, &self.options(), &mut |stream, bytes| match stream {
            Stream::Stdout => out.extend_from_slice(bytes),
            Stream::Stderr => err.extend_from_slice(bytes),
        });
        Outcome {
            result,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }
    }

    /// Runs a shell script that must exit 0; its stdout.
    fn sh(&self, spec: &RunSpec) -> String {
        let o = self.exec(spec);
        match o.result {
            Ok(0) => o.stdout,
            other => panic!(
                "step {:?} failed: {other:?}\nstdout: {}\nstderr: {}",
                spec.args, o.stdout, o.stderr
            ),
        }
    }

    /// Every path in the upper dir, relative, sorted.
    fn upper_entries(&self) -> Vec<String> {
        let mut found = Vec::new();
        walk(&self.upper, &self.upper, &mut found);
        found.sort();
        found
    }
}

struct Outcome {
    result: Result<i32, ExecError>,
    stdout: String,
    stderr: String,
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(root).expect("prefix");
        found.push(rel.display().to_string());
        if std::fs::symlink_metadata(&path).expect("stat").is_dir() {
            walk(root, &path, found);
        }
    }
}

fn xattr_names(path: &Path) -> Vec<String> {
    xattr::list(path)
        .unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()))
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// Pids of host processes whose command line contains `needle`.
fn processes_matching(needle: &[u8]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let entry = entry.expect("entry");
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Interface names in a `/proc/net/dev`.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn output_is_streamed_as_it_arrives() {
    let f = Fixture::new(Etc::Users);
    let spec = f.spec("echo out; echo err >&2; sleep 0.4; echo late");
    let start = Instant::now();
    let mut chunks: Vec<(Stream, String, Duration)> = Vec::new();
    let code = run_with(&spec, &f.options(), &mut |stream, bytes| {
        chunks.push((
            stream,
            String::from_utf8_lossy(bytes).into_owned(),
            start.elapsed(),
        ));
    })
    .expect("run");
    assert_eq!(code, 0);
    let text = |s: Stream| -> String {
        chunks
            .iter()
            .filter(|c| c.0 == s)
            .map(|c| c.1.as_str())
            .collect()
    };
    assert_eq!(text(Stream::Stdout), "out\nlate\n");
    assert_eq!(text(Stream::Stderr), "err\n");
    let at = |needle: &str| {
        chunks
            .iter()
            .find(|c| c.1.contains(needle))
            .map(|c| c.2)
            .expect(needle)
    };
    assert!(
        at("late") >= at("out") + Duration::from_millis(300),
        "`out` came only with `late`: {chunks:?}"
    );
}

#[test]
fn exit_codes_pass_through() {
    let f = Fixture::new(Etc::Users);
    assert_eq!(f.exec(&f.spec("exit 3")).result.expect("run"), 3);
    assert_eq!(f.exec(&f.spec("false")).result.expect("run"), 1);
    assert_eq!(f.exec(&f.spec("true")).result.expect("run"), 0);
}

/// Image files the change tests delete, keep, replace and move.
fn seed_changes(f: &Fixture) {
    for (path, content) in [("data/gone", "x"), ("data/kept", "y"), ("dir/old", "z")] {
        let p = f.lower.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    std::fs::create_dir_all(f.lower.join("tree/sub")).expect("mkdir");
    std::fs::write(f.lower.join("tree/sub/f"), "f").expect("write");
}

#[test]
fn changes_land_in_upper_and_convert_to_oci_whiteouts() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Overlay;
    seed_changes(&f);
    // Renaming an image directory must copy it (no overlay redirect, which
    // no layer could express).
    f.sh(&f.spec(
        "echo hi > /new && rm /data/gone && rm -rf /dir && mkdir /dir && echo c > /dir/c \
         && mv /tree /moved",
    ));
    assert_eq!(
        std::fs::read_to_string(f.upper.join("new")).expect("new"),
        "hi\n"
    );
    let gone = std::fs::symlink_metadata(f.upper.join("data/gone")).expect("whiteout");
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(xattr_names(&f.upper.join("dir")).contains(&"trusted.overlay.opaque".to_owned()));

    upper_to_layer_dir(&f.upper).expect("convert");
    let wh = std::fs::symlink_metadata(f.upper.join("data/.wh.gone")).expect(".wh.gone");
    assert!(wh.is_file() && wh.len() == 0);
    assert_eq!(wh.mode() & 0o7777, 0o600);
    let opq = std::fs::symlink_metadata(f.upper.join("dir/.wh..wh..opq")).expect("opaque");
    assert!(opq.is_file() && opq.len() == 0);
    assert_eq!(
        f.upper_entries(),
        [
            ".wh.tree",
            "data",
            "data/.wh.gone",
            "dir",
            "dir/.wh..wh..opq",
            "dir/c",
            "moved",
            "moved/sub",
            "moved/sub/f",
            "new",
        ]
    );
    let mut everything = f.upper_entries();
    everything.push(String::new());
    for rel in everything {
        let names = xattr_names(&f.upper.join(&rel));
        assert!(
            names.iter().all(|n| !n.starts_with("trusted.overlay.")),
            "{rel} keeps {names:?}"
        );
    }
}

#[test]
fn generated_files_and_mount_points_never_reach_the_layer() {
    // The image has /etc but no hosts, hostname, resolv.conf; no /dev,
    // /proc, /sys: all get created to be mounted on, and all go again.
    let f = Fixture::new(Etc::Users);
    let out = f.sh(&f.spec(
        "cat /etc/hosts /etc/hostname /etc/resolv.conf >/dev/null && cat /etc/hostname \
         && grep -q 'localhost' /etc/hosts && test -d /proc/self && test -c /dev/null \
         && test -d /sys/class && echo x > /etc/hosts 2>/dev/null; echo done",
    ));
    assert_eq!(out, format!("{HOSTNAME}\ndone\n"));
    assert_eq!(f.upper_entries(), Vec::<String>::new());

    // A step that does change /etc keeps its change, and only it.
    f.sh(&f.spec("echo 1 > /etc/extra"));
    assert_eq!(f.upper_entries(), ["etc", "etc/extra"]);

    // An image without /etc: the directory made for the mounts goes too.
    let bare = Fixture::new(Etc::Missing);
    let out = bare.sh(&bare.spec("cat /etc/hostname"));
    assert_eq!(out, format!("{HOSTNAME}\n"));
    assert_eq!(bare.upper_entries(), Vec::<String>::new());
}

#[test]
fn extra_files_are_mounted_read_only_and_never_reach_the_layer() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec(
        "/dev/pipes/EOF && /opt/tools/run.sh && stat -c %a /opt/tools/run.sh \
         && if echo x > /opt/tools/run.sh; then echo writable; fi",
    );
    spec.files
        .insert("/dev/pipes/EOF".into(), "#!/bin/sh\necho heredoc\n".into());
    spec.files
        .insert("/opt/tools/run.sh".into(), "#!/bin/sh\necho opt\n".into());
    let o = f.exec(&spec);
    assert_eq!(o.result.expect("run"), 0, "{}", o.stderr);
    assert_eq!(o.stdout, "heredoc\nopt\n755\n");
    assert_eq!(f.upper_entries(), Vec::<String>::new());
}

#[test]
fn user_resolves_from_the_images_passwd_and_group() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec("id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status");
    spec.user = "app".into();
    assert_eq!(
        f.sh(&spec),
        "1000\n1000\n1000 50\n\
         CapPrm:\t0000000000000000\n\
         CapEff:\t0000000000000000\n\
         CapBnd:\t00000000a80425fb\n"
    );
    // The generated and extra files are readable by the user too.
    spec.files
        .insert("/dev/pipes/EOF".into(), "#!/bin/sh\necho script\n".into());
    let mut files =
        f.spec("cat /etc/hosts /etc/hostname /etc/resolv.conf >/dev/null && /dev/pipes/EOF");
    files.user = "app".into();
    files.files = spec.files.clone();
    assert_eq!(f.sh(&files), "script\n");
    spec.user = "1000:staff".into();
    assert_eq!(
        f.sh(&spec).lines().take(3).collect::<Vec<_>>(),
        ["1000", "50", "50"]
    );

    // Root gets Docker's default capabilities and nothing more.
    spec.user = String::new();
    assert_eq!(
        f.sh(&spec),
        "0\n0\n0\n\
         CapPrm:\t00000000a80425fb\n\
         CapEff:\t00000000a80425fb\n\
         CapBnd:\t00000000a80425fb\n"
    );

    spec.user = "ghost".into();
    let err = f.exec(&spec).result.expect_err("unknown user");
    assert!(matches!(&err, ExecError::UserNotFound { user } if user == "ghost"));
    assert_eq!(
        err.to_string(),
        "unable to find user ghost: no matching entries in passwd file"
    );
}

#[test]
fn workdir_is_created_owned_by_root() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec("pwd; touch here");
    spec.workdir = "/a/b/c".into();
    spec.user = "app".into();
    // Created as root, so app cannot write in it (as Docker's RUN).
    let o = f.exec(&spec);
    assert_eq!(o.stdout, "/a/b/c\n");
    assert_ne!(o.result.expect("run"), 0);
    let meta = std::fs::metadata(f.upper.join("a/b/c")).expect("workdir in upper");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755));
}

#[test]
fn environment_is_exactly_the_steps() {
    let f = Fixture::new(Etc::Users);
    // `env` itself as the command: a shell would add PWD and SHLVL.
    let mut spec = f.spec("");
    spec.args = vec!["env".into()];
    let sorted = |out: String| {
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    spec.env = vec!["PATH=/bin".into(), "FOO=bar baz".into(), "HOME=/x".into()];
    assert_eq!(sorted(f.sh(&spec)), ["FOO=bar baz", "HOME=/x", "PATH=/bin"]);
    // Without HOME the user's home is added, as runc does.
    spec.env = vec!["PATH=/bin".into()];
    spec.user = "app".into();
    assert_eq!(sorted(f.sh(&spec)), ["HOME=/home/app", "PATH=/bin"]);
}

#[test]
fn network_none_has_only_lo_and_it_is_up() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec("cat /proc/net/dev; echo ---; cat /sys/class/net/lo/flags");
    spec.network = Network::None;
    let out = f.sh(&spec);
    let (dev, flags) = out.split_once("---\n").expect("separator");
    assert_eq!(interfaces(dev), ["lo"]);
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(
        flags & libc::IFF_UP as u32,
        libc::IFF_UP as u32,
        "lo is down"
    );
}

#[test]
fn network_host_sees_the_host_interfaces() {
    let f = Fixture::new(Etc::Users);
    let host = std::fs::read_to_string("/proc/net/dev").expect("host /proc/net/dev");
    let seen = f.sh(&f.spec("cat /proc/net/dev"));
    assert_eq!(interfaces(&seen), interfaces(&host));
}

#[test]
fn the_step_is_isolated_from_the_host() {
    let f = Fixture::new(Etc::Users);
    let secret = f.root.join("secret");
    std::fs::write(&secret, "host secret").expect("write secret");
    let o = f.exec(&f.spec(&format!("cat {}", secret.display())));
    assert_ne!(o.result.expect("run"), 0);
    assert!(!o.stdout.contains("host secret"));

    let listing = f.sh(&f.spec("ls /proc"));
    let pids: Vec<u32> = listing
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(pids.contains(&1), "no PID 1 in {pids:?}");
    assert!(
        pids.iter().all(|&p| p < 10),
        "host processes visible: {pids:?}"
    );
    assert!(!pids.contains(&std::process::id()));

    let o = f.exec(&f.spec("mount -t tmpfs x /mnt"));
    assert_ne!(
        o.result.expect("run"),
        0,
        "mount succeeded without CAP_SYS_ADMIN"
    );
    let o =
        f.exec(&f.spec("mkdir /sys/x || mkdir /proc/sys/x || echo 1 > /proc/sys/vm/drop_caches"));
    assert_ne!(o.result.expect("run"), 0, "/sys or /proc/sys is writable");
    assert_eq!(f.sh(&f.spec("hostname")), format!("{HOSTNAME}\n"));
}

#[test]
fn dev_has_the_standard_nodes() {
    let f = Fixture::new(Etc::Users);
    let out = f.sh(&f.spec(
        "ls /dev | tr '\\n' ' '; echo; echo x > /dev/null; head -c 5 /dev/zero | wc -c; \
         readlink /dev/ptmx; test -c /dev/urandom && test -d /dev/pts && test -d /dev/shm && echo ok",
    ));
    let mut lines = out.lines();
    let listing: Vec<&str> = lines.next().expect("ls").split_whitespace().collect();
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin",
        "stdout", "stderr",
    ] {
        assert!(listing.contains(&node), "/dev lacks {node}: {listing:?}");
    }
    assert_eq!(lines.collect::<Vec<_>>(), ["5", "pts/ptmx", "ok"]);
}

#[test]
fn scratch_steps_get_their_mounts_and_nothing_else() {
    let f = Fixture::new(Etc::Users);
    let cache = f.root.join("cache-src");
    std::fs::create_dir(&cache).expect("mkdir");
    let mut spec = f.spec("");
    spec.lower.clear();
    spec.args = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo hi > /x; echo t > /tmpfs/t; echo c > /cache/c; \
         if echo w > /bin/busybox; then echo writable; fi"
            .into(),
    ];
    spec.mounts = vec![
        ExtraMount::Bind {
            source: "/bin/busybox".into(),
            target: "/bin/busybox".into(),
            readonly: true,
        },
        ExtraMount::Tmpfs {
            target: "/tmpfs".into(),
            size: Some(1 << 20),
        },
        ExtraMount::Bind {
            source: cache.clone(),
            target: "/cache".into(),
            readonly: false,
        },
    ];
    let o = f.exec(&spec);
    assert_eq!(o.result.expect("run"), 0, "{}", o.stderr);
    assert!(!o.stdout.contains("writable"));
    assert_eq!(f.upper_entries(), ["x"]);
    assert_eq!(
        std::fs::read_to_string(cache.join("c")).expect("cache"),
        "c\n"
    );
}

/// A block device of the host (`major minor`), for a step to `mknod`.
fn host_block_device() -> String {
    let first = std::fs::read_dir("/sys/dev/block")
        .expect("/sys/dev/block")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().replace(':', " "))
        .min()
        .expect("the host has a block device");
    first
}

/// Docker's device cgroup lets a step make device nodes but open only its
/// default devices: a node made anywhere (even in `/dev` or a cache mount)
/// or brought by the image stays in the layer and cannot be opened, so a
/// step reaches neither the host's kernel log nor its disks.
#[test]
fn devices_outside_dockers_list_cannot_be_opened() {
    for snapshotter in [Snapshotter::Overlay, Snapshotter::Copy] {
        let mut f = Fixture::new(Etc::Users);
        f.snapshotter = snapshotter;
        let image_node =
            CString::new(f.lower.join("tmp/image-kmsg").as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid path; makes a character device node as root.
        let made = unsafe {
            libc::mknod(
                image_node.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 11),
            )
        };
        assert_eq!(made, 0, "mknod in the lower dir");
        let cache = f.root.join("cache-src");
        std::fs::create_dir(&cache).expect("mkdir");
        let mut spec = f.spec(&format!(
            "mknod /tmp/kmsg c 1 11 && mknod /dev/fuse c 10 229 && \
             mknod /tmp/disk b {} && mknod /cache/kmsg c 1 11 || exit 9; \
             for n in /tmp/kmsg /dev/fuse /cache/kmsg /tmp/image-kmsg; do \
               if (echo estiba-device-probe > $n) 2>/dev/null; then echo open $n; else echo denied $n; fi; \
             done; \
             if (: < /tmp/disk) 2>/dev/null; then echo open /tmp/disk; else echo denied /tmp/disk; fi; \
             echo x > /dev/null && head -c 3 /dev/zero | wc -c",
            host_block_device()
        ));
        spec.mounts = vec![ExtraMount::Bind {
            source: cache.clone(),
            target: "/cache".into(),
            readonly: false,
        }];
        let out = f.sh(&spec);
        assert_eq!(
            out,
            "denied /tmp/kmsg\ndenied /dev/fuse\ndenied /cache/kmsg\n\
             denied /tmp/image-kmsg\ndenied /tmp/disk\n3\n",
            "{snapshotter:?}"
        );
        if snapshotter == Snapshotter::Overlay {
            let node = std::fs::symlink_metadata(f.upper.join("tmp/kmsg")).expect("the node");
            assert!(
                node.file_type().is_char_device(),
                "the layer keeps the node"
            );
            assert_eq!(node.rdev(), libc::makedev(1, 11));
        }
    }
}

#[test]
fn a_missing_command_is_an_error_naming_it() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec("");
    spec.args = vec!["no-such-command".into(), "arg".into()];
    let err = f.exec(&spec).result.expect_err("missing command");
    assert!(matches!(&err, ExecError::CommandNotFound { command } if command == "no-such-command"));
    assert_eq!(err.to_string(), "command not found: no-such-command");
    assert_eq!(f.upper_entries(), Vec::<String>::new());
}

#[test]
fn background_processes_neither_hang_the_step_nor_survive_it() {
    let f = Fixture::new(Etc::Users);
    let start = Instant::now();
    let out = f.sh(&f.spec("sleep 1037 & echo started"));
    assert_eq!(out, "started\n");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "run waited for the background process: {:?}",
        start.elapsed()
    );
    assert_eq!(processes_matching(b"sleep\x001037\x00"), Vec::<u32>::new());
}

/// Not a test of its own: the SIGTERM test runs this in a child process
/// (with `ESTIBA_EXECUTOR_TEST_HELPER` set) and kills it mid-step.
#[test]
fn helper_runs_a_long_step_until_killed() {
    let Some(dir) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let f = Fixture::in_dir(Path::new(&dir), Etc::Users);
    let _ = run_with(
        &f.spec("echo ready; sleep 1039"),
        &f.options(),
        &mut |_, bytes| {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(bytes);
            let _ = stdout.flush();
        },
    );
}

/// Kills the helper process if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_to_estiba_leaves_no_mount_and_no_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut helper = KillOnDrop(
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "helper_runs_a_long_step_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn helper"),
    );
    // The step prints `ready` (after libtest's `test … ... ` on the same line).
    let stdout = helper.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ready = BufReader::new(stdout)
            .lines()
            .any(|l| l.map(|l| l.trim_end().ends_with("ready")).unwrap_or(false));
        let _ = tx.send(ready);
    });
    let ready = rx.recv_timeout(Duration::from_secs(4));
    assert_eq!(ready, Ok(true), "the helper's step never started");

    let tmp_str = tmp.path().display().to_string();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .expect("mounts")
            .lines()
            .filter(|l| l.contains(&tmp_str))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let init_marker = format!("__estiba-run-init\0{tmp_str}");
    // `ready` comes just before the shell execs `sleep`.
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes_matching(b"sleep\x001039\x00").is_empty() {
        assert!(Instant::now() < deadline, "the step's sleep never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(processes_matching(init_marker.as_bytes()).len(), 1);

    // SAFETY: kill with the pid of our own child.
    let ret = unsafe { libc::kill(helper.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(ret, 0);
    let status = helper.0.wait().expect("wait helper");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = (
            processes_matching(b"sleep\x001039\x00"),
            processes_matching(init_marker.as_bytes()),
            mounted(),
        );
        if left == (vec![], vec![], vec![]) {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn a_trivial_step_is_fast() {
    let f = Fixture::new(Etc::Users);
    let mut spec = f.spec("");
    spec.args = vec!["true".into()];
    for network in [Network::Host, Network::None] {
        spec.network = network;
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            assert_eq!(f.exec(&spec).result.expect("run"), 0);
            times.push(start.elapsed());
        }
        times.sort();
        eprintln!(
            "RUN true ({network:?}): min {:?}, median {:?}, max {:?}",
            times[0], times[2], times[4]
        );
        assert!(times[2] < Duration::from_millis(500), "{times:?}");
    }
    assert_eq!(f.upper_entries(), Vec::<String>::new());
}

#[test]
fn the_command_inherits_only_its_standard_streams() {
    let f = Fixture::new(Etc::Users);
    // SAFETY: dup of stdin; the copy is not close-on-exec, like a
    // descriptor estiba could inherit from whoever started it.
    let leaked = unsafe { libc::dup(0) };
    assert!(leaked > 2);
    let mut spec = f.spec("");
    spec.args = vec!["ls".into(), "/proc/self/fd".into()];
    let out = f.sh(&spec);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(leaked) };
    // 3 is the directory `ls` reads.
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
}

/// Without overlayfs, the copy snapshotter runs the step in a flattened
/// copy and leaves the same changes in the upper dir, in overlay form: new
/// and changed entries with their metadata, whiteouts for what is gone, a
/// replaced directory's old entries whited out one by one (where overlayfs
/// marks it opaque), and no mount point placeholder.
#[test]
fn the_copy_snapshotter_leaves_the_changes_in_overlay_form() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Copy;
    seed_changes(&f);
    std::fs::write(f.lower.join("etc/motd"), "same").expect("write");
    let mut spec = f.spec(
        "echo hi > /new && chmod 0640 /new && touch -d '2001-02-03 04:05:06' /new \
         && rm /data/gone && rm -rf /dir && mkdir /dir && echo c > /dir/c \
         && mv /tree /moved && echo more >> /data/kept && mkdir -p /cache/sub",
    );
    spec.mounts.push(ExtraMount::Tmpfs {
        target: "/mnt/scratch".into(),
        size: None,
    });
    f.sh(&spec);

    let gone = std::fs::symlink_metadata(f.upper.join("data/gone")).expect("whiteout");
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    let new = std::fs::symlink_metadata(f.upper.join("new")).expect("new");
    assert_eq!(new.mode() & 0o7777, 0o640);
    assert_eq!(new.mtime(), 981_173_106);
    assert_eq!(
        std::fs::read_to_string(f.upper.join("data/kept")).expect("kept"),
        "y".to_owned() + "more\n"
    );
    upper_to_layer_dir(&f.upper).expect("convert");
    assert_eq!(
        f.upper_entries(),
        [
            ".wh.tree",
            "cache",
            "cache/sub",
            "data",
            "data/.wh.gone",
            "data/kept",
            "dir",
            "dir/.wh.old",
            "dir/c",
            "moved",
            "moved/sub",
            "moved/sub/f",
            "new",
        ],
        "no /etc, /proc, /mnt placeholders; unchanged files stay below"
    );
}

/// A step sees through as many layers as an image has: 150 lower dirs with
/// snapshot-like names (64 hex digits each), whose full paths would need
/// three pages of mount options.
#[test]
fn a_step_runs_on_a_hundred_and_fifty_layers() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Overlay;
    let mut spec = f.spec("ls /layer-files | wc -l; cat /layer-files/000 /layer-files/149");
    let mut layers = Vec::new();
    for i in 0..150 {
        let dir = f
            .root
            .join("snapshots-v1")
            .join(format!("{i:03}{}", "e".repeat(61)))
            .join("rootfs");
        std::fs::create_dir_all(dir.join("layer-files")).expect("mkdir");
        std::fs::write(
            dir.join(format!("layer-files/{i:03}")),
            format!("layer {i}\n"),
        )
        .expect("write");
        layers.push(dir);
    }
    layers.reverse(); // top first
    layers.push(f.lower.clone());
    spec.lower = layers;
    assert_eq!(f.sh(&spec), "150\nlayer 0\nlayer 149\n");
}

#[test]
fn a_failed_overlay_mount_is_an_error_naming_it() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Overlay;
    let mut spec = f.spec("true");
    spec.upper = f.root.join("no-such-upper");
    let err = f.exec(&spec).result.expect_err("overlay without upper dir");
    assert!(
        matches!(&err, ExecError::Mount { what, .. } if what == "overlay"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("cannot mount overlay on "),
        "{err}"
    );
}

/// A static C program that makes one raw system call and prints `ok` or
/// the errno's name (`EPERM`): `probe keyctl|add_key|unshare|clone3`,
/// `probe personality VALUE`, `probe socket FAMILY`, `probe euid`, and
/// `probe fsync|fdatasync|syncfs|sync_file_range` (of descriptor -1).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long r;
    if (argc < 2) return 2;
    const char *what = argv[1];
    const char *arg = argc > 2 ? argv[2] : "0";
    if (!strcmp(what, "keyctl"))
        r = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    else if (!strcmp(what, "add_key"))
        r = syscall(SYS_add_key, "user", "estiba-probe", "x", 1, -2 /* process */);
    else if (!strcmp(what, "personality"))
        r = syscall(SYS_personality, strtoul(arg, 0, 0));
    else if (!strcmp(what, "unshare"))
        r = unshare(CLONE_NEWUSER | CLONE_NEWNS);
    else if (!strcmp(what, "clone3"))
        r = syscall(SYS_clone3, 0, 0);
    else if (!strcmp(what, "socket"))
        r = socket(atoi(arg), SOCK_STREAM, 0);
    else if (!strcmp(what, "fsync"))
        r = syscall(SYS_fsync, -1);
    else if (!strcmp(what, "fdatasync"))
        r = syscall(SYS_fdatasync, -1);
    else if (!strcmp(what, "syncfs"))
        r = syscall(SYS_syncfs, -1);
    else if (!strcmp(what, "sync_file_range"))
        r = syscall(SYS_sync_file_range, -1, 0, 0, 0);
    else if (!strcmp(what, "euid")) {
        printf("%d\n", (int)geteuid());
        return 0;
    } else
        return 2;
    if (r < 0)
        printf("%s\n", strerrorname_np(errno));
    else
        printf("ok\n");
    return 0;
}
"#;

/// Compiles [`PROBE_C`] into the fixture's image as `/bin/probe`, and a
/// setuid-root copy as `/bin/suid-probe`.
fn add_probe(f: &Fixture) {
    let src = f.root.join("probe.c");
    std::fs::write(&src, PROBE_C).expect("write probe.c");
    let bin = f.lower.join("bin/probe");
    let status = Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc runs: install gcc and libc6-dev (scripts/test-deps does)");
    assert!(status.success(), "cc failed on the probe");
    let suid = f.lower.join("bin/suid-probe");
    std::fs::copy(&bin, &suid).expect("copy probe");
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
        .expect("chmod u+s");
}

/// Docker's default seccomp profile confines every step: the kernel
/// keyring, new user and mount namespaces, odd personalities and vsock
/// sockets are refused, clone3 says ENOSYS so C libraries fall back to
/// clone, and what a build normally does still works.
#[test]
fn steps_run_under_dockers_default_seccomp_profile() {
    let f = Fixture::new(Etc::Users);
    add_probe(&f);
    let out = f.sh(&f.spec(
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
         for call in keyctl add_key unshare clone3; do echo $call $(probe $call); done; \
         echo personality-query $(probe personality 0xffffffff); \
         echo personality-linux32 $(probe personality 8); \
         echo personality-no-aslr $(probe personality 0x40000); \
         echo socket-unix $(probe socket 1) socket-alg $(probe socket 38) \
              socket-vsock $(probe socket 40); \
         unshare -U -m -r mount -t tmpfs x /mnt 2>/dev/null && echo escaped || echo confined",
    ));
    assert_eq!(
        out,
        "NoNewPrivs:\t0\nSeccomp:\t2\n\
         keyctl EPERM\nadd_key EPERM\nunshare EPERM\nclone3 ENOSYS\n\
         personality-query ok\npersonality-linux32 ok\npersonality-no-aslr EPERM\n\
         socket-unix ok socket-alg EPERM socket-vsock EPERM\nconfined\n"
    );

    // Root still chroots and makes device nodes (its capabilities allow
    // both), and a setuid-root program still raises a user to root: the
    // filter sets no no_new_privs, as docker's does not.
    let out = f.sh(&f.spec(
        "chroot / true && echo chroot ok; \
         mknod /tmp/null c 1 3 && mknod /tmp/fifo p && echo mknod ok",
    ));
    assert_eq!(out, "chroot ok\nmknod ok\n");
    let mut spec = f.spec("id -u; suid-probe euid");
    spec.user = "app".into();
    assert_eq!(f.sh(&spec), "1000\n0\n");
}

/// A build step's syncs return success without being made
/// ([`RunSpec::skip_sync`]): on descriptor -1 each says `ok` where the
/// kernel says `EBADF`; every other call is answered as before, and a
/// container that keeps its syncs (`estiba run`) gets the kernel's answer.
/// The build step's overlay is `volatile` (Linux 5.10 and later), so its
/// unmount syncs nothing either; the other container's is not.
#[test]
fn build_steps_skip_syncs_and_other_containers_make_them() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Overlay;
    add_probe(&f);
    let script = "for call in fsync fdatasync syncfs sync_file_range keyctl clone3; do \
                  echo $call $(probe $call); done; \
                  echo kept > /tmp/f && sync && cat /tmp/f; \
                  echo volatile $(grep -c '^[^ ]* [^ ]* [^ ]* / / .* overlay .*volatile' \
                  /proc/self/mountinfo)";
    let mut spec = f.spec(script);
    assert_eq!(
        f.sh(&spec),
        "fsync EBADF\nfdatasync EBADF\nsyncfs EBADF\nsync_file_range EBADF\n\
         keyctl EPERM\nclone3 ENOSYS\nkept\nvolatile 0\n"
    );
    spec.skip_sync = true;
    let volatile = u8::from(kernel_at_least(5, 10));
    assert_eq!(
        f.sh(&spec),
        format!(
            "fsync ok\nfdatasync ok\nsyncfs ok\nsync_file_range ok\n\
             keyctl EPERM\nclone3 ENOSYS\nkept\nvolatile {volatile}\n"
        )
    );
}

/// Whether the running kernel is Linux `major`.`minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = nix::sys::utsname::uname().expect("uname");
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// `RUN --security=insecure` (once the build allows it): every capability,
/// no seccomp filter, as BuildKit's insecure mode.
#[test]
fn insecure_steps_run_unconfined() {
    let f = Fixture::new(Etc::Users);
    add_probe(&f);
    let mut spec = f.spec(
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; probe keyctl; \
         mount -t tmpfs x /mnt && echo mounted",
    );
    spec.security = Security::Insecure;
    // Every capability estiba has (root's, the test's own).
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let ours = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff");
    assert_eq!(f.sh(&spec), format!("{ours}\nSeccomp:\t0\nok\nmounted\n"));
}

/// What a type, permission bits, owner, device, link count, content and
/// every xattr (overlayfs's too) say about each entry below `root`, sorted
/// by path; a whiteout by its name and xattrs.
fn describe_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.expect("walk");
        let meta = entry.metadata().expect("lstat");
        let content = if meta.is_file() {
            std::fs::read(entry.path()).expect("read")
        } else {
            Vec::new()
        };
        let mut xattrs: Vec<String> = xattr::list(entry.path())
            .expect("llistxattr")
            .map(|n| {
                let value = xattr::get(entry.path(), &n)
                    .expect("getxattr")
                    .unwrap_or_default();
                format!(
                    "{}={}",
                    n.to_string_lossy(),
                    String::from_utf8_lossy(&value)
                )
            })
            .collect();
        xattrs.sort();
        let rel = entry.path().strip_prefix(root).expect("inside").display();
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            // overlayfs links its whiteouts to one shared inode: only the
            // name of one means something.
            out.push(format!("{rel} whiteout {xattrs:?}"));
            continue;
        }
        out.push(format!(
            "{rel} {:o} {}:{} dev {} nlink {} {:?} {xattrs:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.rdev(),
            meta.nlink(),
            String::from_utf8_lossy(&content),
        ));
    }
    out
}

/// A step's upper dir written as a layer in one walk gives the very tar
/// that converting it to OCI whiteouts and archiving it gives, and is left
/// as that conversion turned back into overlay form leaves it: whiteouts
/// (one in a setgid directory, one sorting before everything as `.wh.`),
/// an opaque directory, a directory moved (copied, its old name whited
/// out), hard and symbolic links, a fifo, a device, names whose order
/// differs between by-name and by-path (`a` and `a-b`), a 0700 directory
/// of another uid, user xattrs, and overlayfs's own xattrs (dropped).
#[test]
fn an_upper_dir_writes_the_layer_its_conversion_would() {
    let mut f = Fixture::new(Etc::Users);
    f.snapshotter = Snapshotter::Overlay;
    seed_changes(&f);
    for dir in ["sg", "zzz"] {
        std::fs::create_dir(f.lower.join(dir)).expect("mkdir");
        std::fs::write(f.lower.join(dir).join("old"), "o").expect("write");
    }
    std::os::unix::fs::chown(f.lower.join("sg"), Some(0), Some(1000)).expect("chown");
    std::fs::set_permissions(
        f.lower.join("sg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .expect("chmod");
    f.sh(&f.spec(
        "echo hi > /new && rm /data/gone && rm -rf /dir && mkdir /dir && echo c > /dir/c \
         && mv /tree /moved && rm /sg/old && rm -rf /zzz \
         && mkdir -p /a/b /a-b && echo x > /a/b/f && ln /a/b/f /a/b/g && ln -s b/f /a/link \
         && echo y > /a-b/f && mkfifo /a/fifo && mknod /a/null c 1 3 && chmod 4755 /a/b/f \
         && mkdir /priv && echo p > /priv/f && chown -R 1000:1000 /priv && chmod 700 /priv",
    ));
    xattr::set(f.upper.join("a/b/f"), "user.estiba", b"file").expect("setxattr");
    xattr::set(f.upper.join("a"), "user.estiba", b"dir").expect("setxattr");
    xattr::set(f.upper.join("a"), "trusted.overlay.impure", b"y").expect("setxattr");
    xattr::set(f.upper.join("new"), "trusted.overlay.origin", b"x").expect("setxattr");

    let converted = f.root.join("converted");
    let status = Command::new("cp")
        .args(["-a", "--preserve=all"])
        .arg(&f.upper)
        .arg(&converted)
        .status()
        .expect("cp");
    assert!(status.success());
    upper_to_layer_dir(&converted).expect("convert");
    let opts = estiba::layer::LayerOptions::default();
    let expected = estiba::layer::write_layer(&converted, Vec::new(), &opts).expect("layer");
    estiba::rootfs::oci_to_overlay(&converted).expect("back to overlay form");

    let tar = estiba::layer::write_upper_layer(&f.upper, Vec::new(), &opts).expect("layer");
    assert!(tar == expected, "the tars differ");
    let listed = estiba::layer::list_layer(&tar[..]).expect("list");
    let names: Vec<&Path> = listed.iter().map(|e| e.path.as_path()).collect();
    for marker in ["sg/.wh.old", ".wh.zzz", "dir/.wh..wh..opq", ".wh.tree"] {
        assert!(
            names.contains(&Path::new(marker)),
            "no {marker} in {names:?}"
        );
    }
    assert_eq!(describe_tree(&f.upper), describe_tree(&converted));
}
