//! The build container's init: a fresh, single-threaded `estiba` process in
//! the namespaces [`super::run`] created. It mounts the overlay, then forks
//! the command: PID 1 of the new PID namespace, which mounts `/proc`, `/dev`,
//! `/sys` and the rest inside the overlay, pivots into it, becomes the
//! image's user and execs. The init waits and exits with the command's
//! status; its mount namespace, and every mount in it, dies with it.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::protocol::{errno, Failure, InitSpec, Message, Reporter};
use super::seccomp::{self, SeccompError};
use super::stubs::{Existing, Stubs};
use super::{network, sys, user, ExtraMount, Network, Security};

/// The init's exit code when the container could not be set up (as
/// `docker run`'s); the reason travels over the status pipe.
const SETUP_FAILED: i32 = 125;

/// Looked up when the step's environment has no `PATH` (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host device nodes bound into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Hidden from the step, as Docker's default spec does.
const MASKED_PATHS: [&str; 11] = [
    "proc/asound",
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Read-only for the step, as Docker's default spec has them.
const READONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

pub(super) fn main() -> ! {
    let mut report = Reporter::from_status_fd();
    let code = match init(&mut report) {
        Ok(code) => code,
        Err(failure) => {
            report.send(&Message::Failed(failure));
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn init(report: &mut Reporter) -> Result<i32, Failure> {
    let spec_path = std::env::args_os()
        .nth(2)
        .ok_or_else(|| Failure::Spec("the init needs the path of its spec".to_owned()))?;
    let bytes = fs::read(&spec_path).map_err(|e| {
        let what = format!("read {}", Path::new(&spec_path).display());
        Failure::setup(what, e)
    })?;
    let spec: InitSpec = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Spec(format!("unreadable spec for the init: {e}")))?;

    match &spec.copy_root {
        // Chroot isolation: no mount namespace, so nothing is mounted.
        Some(_) if spec.chroot => {}
        Some(root) => {
            // Nothing mounted from here on may reach the host's namespace.
            sys::make_mounts_private()
                .map_err(|e| Failure::setup("make the mounts of the build container private", e))?;
            let target = spec.rootfs.display().to_string();
            mnt(
                Some(root),
                &spec.rootfs,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                &target,
            )?;
            remount_bind(&spec.rootfs, MsFlags::MS_NODEV, &target)?;
        }
        None => {
            sys::make_mounts_private()
                .map_err(|e| Failure::setup("make the mounts of the build container private", e))?;
            mount_overlay(&spec)?
        }
    }

    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::setup("create a pipe", e))?;
    // SAFETY: this process is single-threaded: a fresh exec whose main
    // dispatched here before anything could start a thread.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_w);
            let failure = match container(&spec, report, alive_r) {
                Ok(never) => match never {},
                Err(failure) => failure,
            };
            report.send(&Message::Failed(failure));
            // SAFETY: _exit has no preconditions; unlike `process::exit` it
            // runs none of the parent's exit handlers twice in this copy.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            report.close();
            if spec.chroot {
                // What the command left running in its group ends with it:
                // killed once it exited and before it is reaped, so the
                // group's number cannot be another's yet.
                wait_unreaped(child);
                let _ = nix::sys::signal::killpg(child, nix::sys::signal::Signal::SIGKILL);
            }
            let code = wait_for(child);
            drop(alive_w);
            Ok(code)
        }
        Err(e) => Err(Failure::setup("fork the build container's PID 1", e)),
    }
}

/// Waits until `child` has ended, leaving it to be reaped.
fn wait_unreaped(child: Pid) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
}

/// Waits for the command; its exit code, or 128 + the signal that killed it.
fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

/// `lowerdir=…,upperdir=…,workdir=…` with `\`, `,` and `:` escaped.
fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> Vec<u8> {
    fn escaped(out: &mut Vec<u8>, path: &Path) {
        for &b in path.as_os_str().as_bytes() {
            if matches!(b, b'\\' | b',' | b':') {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    let mut out = b"lowerdir=".to_vec();
    for (i, dir) in lower.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        escaped(&mut out, dir);
    }
    out.extend_from_slice(b",upperdir=");
    escaped(&mut out, upper);
    out.extend_from_slice(b",workdir=");
    escaped(&mut out, work);
    out
}

fn mount_overlay(spec: &InitSpec) -> Result<(), Failure> {
    let run = &spec.run;
    if let Some(links) = &spec.lower_links {
        nix::unistd::chdir(links)
            .map_err(|e| Failure::setup(format!("enter the layer links {}", links.display()), e))?;
    }
    let mut options = overlay_options(&spec.lower, &run.upper, &run.work);
    // No redirects or metacopy: the upper dir must stay a self-contained
    // diff that `upper_to_layer_dir` can turn into a layer. A rename of an
    // image directory then copies it, as with Docker's overlay2.
    let mut strict = options.clone();
    if crate::rootless::in_user_namespace() {
        // Rootless: overlayfs's own xattrs in `user.overlay.*`, and with
        // them redirects neither made nor followed (`redirect_dir=off`
        // is refused next to `userxattr`; `nofollow` is its default).
        options.extend_from_slice(b",userxattr");
        strict.extend_from_slice(b",userxattr,index=off,metacopy=off");
    } else {
        strict.extend_from_slice(b",redirect_dir=off,index=off,metacopy=off");
    }
    let target = &spec.rootfs;
    let attempt = |data: &[u8]| {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            // Device nodes in the image or made by the step stay in the
            // layer but cannot be opened (see `mount_dev`).
            MsFlags::MS_NODEV,
            Some(Path::new(&OsString::from_vec(data.to_vec()))),
        )
    };
    // A build step's syncs are skipped (`skip_sync`): so are the overlay's
    // own. Without `volatile`, the overlay's unmount, when the step's last
    // process exits, syncs the whole file system under the upper dir: 35
    // of the 47 ms between an `npm ci`'s end and the step's, waiting for
    // every other process's dirty data too. The upper dir becomes a
    // snapshot, which is derived data (see `SnapshotBuilder::commit`); its
    // layer blob is synced when stored. `volatile` needs Linux 5.10; an
    // older kernel refuses it with EINVAL and mounts without it.
    let mut tries = Vec::with_capacity(3);
    if run.skip_sync {
        let mut volatile = strict.clone();
        volatile.extend_from_slice(b",volatile");
        tries.push(volatile);
    }
    tries.extend([strict, options]);
    let mut mounted = Err(nix::errno::Errno::EINVAL);
    for data in &tries {
        mounted = attempt(data);
        if mounted != Err(nix::errno::Errno::EINVAL) {
            break;
        }
    }
    let _ = nix::unistd::chdir("/");
    mounted.map_err(|e| Failure::Mount {
        what: "overlay".to_owned(),
        target: target.display().to_string(),
        errno: e as i32,
    })
}

/// A mount, its failure naming what and where (`target` as the container
/// sees it).
fn mnt(
    source: Option<&Path>,
    host: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    target: &str,
) -> Result<(), Failure> {
    mount(source, host, fstype, flags, data).map_err(|e| Failure::Mount {
        what: fstype
            .map(str::to_owned)
            .or_else(|| source.map(|s| s.display().to_string()))
            .unwrap_or_default(),
        target: target.to_owned(),
        errno: e as i32,
    })
}

/// Applies `flags` to a bind mount (bind mounts ignore flags other than
/// MS_BIND at first; a remount applies them).
fn remount_bind(host: &Path, flags: MsFlags, target: &str) -> Result<(), Failure> {
    mount(
        None::<&str>,
        host,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(|e| Failure::Mount {
        what: "a remount".to_owned(),
        target: target.to_owned(),
        errno: e as i32,
    })
}

/// Makes a bind mount read-only, with `flags`.
fn remount_ro(host: &Path, flags: MsFlags, target: &str) -> Result<(), Failure> {
    remount_bind(host, MsFlags::MS_RDONLY | flags, target)
}

fn bind_ro(source: &Path, host: &Path, flags: MsFlags, target: &str) -> Result<(), Failure> {
    mnt(Some(source), host, None, MsFlags::MS_BIND, None, target)?;
    remount_ro(host, flags, target)
}

/// PID 1 of the container: everything from mounting `/proc` to `execve`.
/// Returns only on failure.
fn container(
    spec: &InitSpec,
    report: &mut Reporter,
    alive: OwnedFd,
) -> Result<Infallible, Failure> {
    sys::kill_me_with_parent().map_err(|e| Failure::setup("arm the parent-death signal", e))?;
    if sys::hung_up(&alive) {
        // The init died before the death signal was armed.
        // SAFETY: _exit has no preconditions; unlike `process::exit` it
        // runs none of the parent's exit handlers twice in this copy.
        unsafe { libc::_exit(128 + libc::SIGKILL) }
    }
    drop(alive);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let run = &spec.run;
    let rootfs = spec.rootfs.as_path();
    if spec.chroot {
        let root = spec
            .copy_root
            .as_deref()
            .ok_or_else(|| Failure::Spec("chroot isolation without a root".to_owned()))?;
        chroot_setup(spec, root, report)?;
        nix::unistd::chroot(root).map_err(|e| {
            Failure::setup(format!("chroot into {} (needs root)", root.display()), e)
        })?;
        nix::unistd::chdir("/").map_err(|e| Failure::setup("enter the chroot", e))?;
        // A process group of its own, which the init kills once the
        // command is done: there is no PID namespace to end the rest.
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
            .map_err(|e| Failure::setup("start a process group", e))?;
    } else {
        // Placeholders are tracked where the step's writes land: the upper
        // dir, or the copy snapshotter's root itself.
        let mut stubs = match &spec.copy_root {
            Some(root) => Stubs::new(rootfs, root, true, report),
            None => Stubs::new(rootfs, &run.upper, false, report),
        };
        mount_proc(&mut stubs)?;
        mount_dev(&mut stubs, run.host.shm_size, run.tty)?;
        mount_sys(&mut stubs)?;
        if run.security == Security::Sandbox {
            hide_kernel_paths(rootfs)?;
        }
        let etc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        for (target, source) in &spec.etc {
            let host = stubs.ensure(target, false)?;
            bind_ro(source, &host, etc_flags, target)?;
        }
        let mut mounts: Vec<&ExtraMount> = run.mounts.iter().collect();
        mounts.sort_by_key(|m| depth(mount_target(m)));
        for extra in mounts {
            mount_extra(&mut stubs, extra)?;
        }
        for (target, source) in &spec.files {
            let host = stubs.ensure(target, false)?;
            bind_ro(
                source,
                &host,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                target,
            )?;
        }
        stubs.send_stamps();
    }

    if !spec.chroot {
        nix::unistd::sethostname(&spec.hostname)
            .map_err(|e| Failure::setup(format!("set the host name {}", spec.hostname), e))?;
        enter_root(rootfs)?;
    }
    if run.tty {
        // A session of its own, with the terminal on fd 0 as its
        // controlling terminal: job control and ^C work as in docker -t.
        nix::unistd::setsid().map_err(|e| Failure::setup("start a session", e))?;
        // SAFETY: TIOCSCTTY takes an int argument and touches no memory.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(Failure::setup(
                "make the terminal the controlling terminal",
                io::Error::last_os_error(),
            ));
        }
    }
    if run.network == Network::Private && !spec.chroot {
        network::wait_for_go().map_err(|e| Failure::setup("set up the step's network", e))?;
    }
    if run.network != Network::Host && !spec.chroot {
        sys::bring_up_loopback().map_err(|e| Failure::setup("bring up lo", e))?;
    }

    let passwd = fs::read_to_string("/etc/passwd").ok();
    let group = fs::read_to_string("/etc/group").ok();
    let user = user::resolve(&run.user, passwd.as_deref(), group.as_deref())?;
    let workdir = if run.workdir.is_empty() {
        "/"
    } else {
        run.workdir.as_str()
    };
    let workdir_failure = |e: io::Error| Failure::Workdir {
        path: workdir.to_owned(),
        errno: errno(&e),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(workdir)
        .map_err(workdir_failure)?;
    std::env::set_current_dir(workdir).map_err(workdir_failure)?;

    let mut env = run.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let command = run
        .args
        .first()
        .ok_or_else(|| Failure::Spec("no command".to_owned()))?;
    let program = find_program(command, &env)?;
    let c_program = c_string(program.as_os_str().as_bytes(), "the command")?;
    let c_args = run
        .args
        .iter()
        .map(|a| c_string(a.as_bytes(), "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|e| c_string(e.as_bytes(), "an environment variable"))
        .collect::<Result<Vec<_>, _>>()?;

    let caps = match run.security {
        Security::Sandbox => sys::default_capability_mask(),
        Security::Insecure => {
            sys::permitted_capabilities().map_err(|e| Failure::setup("read the capabilities", e))?
        }
    };
    // While CAP_SYS_RESOURCE is still here, so a hard limit may rise.
    for limit in &run.host.ulimits {
        // A negative limit (docker's -1) is unlimited: `None`.
        let rlimit = rustix::process::Rlimit {
            current: u64::try_from(limit.soft).ok(),
            maximum: u64::try_from(limit.hard).ok(),
        };
        rustix::process::setrlimit(limit.resource.raw(), rlimit).map_err(|e| {
            Failure::setup(
                format!("set the ulimit {}", limit.resource.name()),
                io::Error::from(e),
            )
        })?;
    }
    sys::drop_bounding_set(caps).map_err(|e| Failure::setup("drop capabilities", e))?;
    if run.security == Security::Sandbox {
        // While CAP_SYS_ADMIN is still here: no no_new_privs needed. In
        // chroot isolation estiba may lack it: then the filter goes on
        // with no_new_privs (setuid programs gain nothing), never without.
        let mut installed = seccomp::install(caps, run.skip_sync);
        if spec.chroot
            && matches!(&installed, Err(SeccompError::Install(e)) if e.raw_os_error() == Some(libc::EACCES))
        {
            rustix::thread::set_no_new_privs(true)
                .map_err(|e| Failure::setup("set no_new_privs", io::Error::from(e)))?;
            installed = seccomp::install(caps, run.skip_sync);
        }
        installed.map_err(|e| match e {
            SeccompError::Install(e) => Failure::setup("install the seccomp filter", e),
            other => Failure::Seccomp(crate::solve::error_chain(&other)),
        })?;
    }
    let gids: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let ids = format!("{}:{}", user.uid, user.gid);
    // A rootless estiba with only its own ids mapped had to deny
    // setgroups to write its map; the step keeps the groups it has, none of
    // which the namespace maps.
    if !sys::setgroups_denied() {
        nix::unistd::setgroups(&gids)
            .map_err(|e| Failure::setup(format!("set the groups of {ids}"), e))?;
    }
    nix::unistd::setgid(Gid::from_raw(user.gid))
        .map_err(|e| Failure::setup(format!("become {ids}"), e))?;
    nix::unistd::setuid(Uid::from_raw(user.uid))
        .map_err(|e| Failure::setup(format!("become {ids}"), e))?;
    // Root keeps Docker's set; another user ends up with none (setuid
    // already cleared them), as in Docker.
    let keep = if user.uid == 0 { caps } else { 0 };
    sys::set_capabilities(keep).map_err(|e| Failure::setup("set capabilities", e))?;
    sys::kill_me_with_parent().map_err(|e| Failure::setup("arm the parent-death signal", e))?;
    report
        .close_on_exec()
        .and_then(|()| sys::close_on_exec_from_3())
        .map_err(|e| Failure::setup("close inherited file descriptors", e))?;
    sys::reset_signals();
    let e = match nix::unistd::execve(&c_program, &c_args, &c_env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(Failure::Exec {
        command: program.display().to_string(),
        errno: e as i32,
    })
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString, Failure> {
    CString::new(bytes).map_err(|_| {
        Failure::Spec(format!(
            "{what} contains a NUL byte: {}",
            String::from_utf8_lossy(bytes)
        ))
    })
}

fn depth(target: &str) -> usize {
    Path::new(target).components().count()
}

fn mount_target(m: &ExtraMount) -> &str {
    match m {
        ExtraMount::Bind { target, .. } | ExtraMount::Tmpfs { target, .. } => target,
    }
}

fn mount_proc(stubs: &mut Stubs<'_>) -> Result<(), Failure> {
    let host = stubs.ensure("/proc", true)?;
    mnt(
        Some(Path::new("proc")),
        &host,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        None,
        "/proc",
    )
}

/// `/dev`: a `nodev` tmpfs holding Docker's default devices, each a bind
/// mount of the host's node (a bind mount keeps the node usable on a
/// `nodev` parent). Docker limits devices with the device cgroup; here no
/// mount the step can write to allows opening a device node, so a node the
/// step makes (`mknod /dev/fuse c 10 229`, `mknod /tmp/k c 1 11`) or an
/// image brings stays in the layer, as in Docker, but cannot be opened.
fn mount_dev(stubs: &mut Stubs<'_>, shm_size: Option<u64>, tty: bool) -> Result<(), Failure> {
    let dev = stubs.ensure("/dev", true)?;
    let tmpfs = Some(Path::new("tmpfs"));
    mnt(
        tmpfs,
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "/dev",
    )?;
    let point = |target: &str, e: io::Error| Failure::MountPoint {
        target: target.to_owned(),
        errno: errno(&e),
    };
    for name in DEVICES {
        let target = format!("/dev/{name}");
        if fs::symlink_metadata(&target).is_err() {
            continue; // the host has no such node (a minimal CI container)
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(dev.join(name))
            .map_err(|e| point(&target, e))?;
        mnt(
            Some(Path::new(&target)),
            &dev.join(name),
            None,
            MsFlags::MS_BIND,
            None,
            &target,
        )?;
    }
    if tty {
        // The terminal on fd 0 is a pty of the host's devpts, which the
        // container's own devpts instance does not show: it is bound at
        // /dev/console, as runc binds a container's terminal, so the
        // command can find it by name (`tty`, `ttyname`).
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o620)
            .open(dev.join("console"))
            .map_err(|e| point("/dev/console", e))?;
        // By its name in this mount namespace: the descriptor's own mount
        // belongs to the namespace it was opened in, which a bind refuses.
        let pty = fs::read_link("/proc/self/fd/0").map_err(|e| point("/dev/console", e))?;
        mnt(
            Some(pty.as_path()),
            &dev.join("console"),
            None,
            MsFlags::MS_BIND,
            None,
            "/dev/console",
        )?;
    }
    let mkdir = |name: &str, mode: u32| -> Result<PathBuf, Failure> {
        let path = dev.join(name);
        fs::create_dir(&path).map_err(|e| point(&format!("/dev/{name}"), e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| point(&format!("/dev/{name}"), e))?;
        Ok(path)
    };
    let pts = mkdir("pts", 0o755)?;
    let devpts = |data: &str| {
        mnt(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(data),
            "/dev/pts",
        )
    };
    match devpts("newinstance,ptmxmode=0666,mode=0620,gid=5") {
        // A rootless estiba without subordinate ids maps no gid 5 (tty).
        Err(Failure::Mount { errno, .. }) if errno == libc::EINVAL => {
            devpts("newinstance,ptmxmode=0666,mode=0620")?
        }
        other => other?,
    }
    let shm = mkdir("shm", 0o1777)?;
    mnt(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!(
            "mode=1777,size={}k",
            shm_size.map_or(65536, |bytes| bytes.div_ceil(1024))
        )),
        "/dev/shm",
    )?;
    let mqueue = mkdir("mqueue", 0o755)?;
    let mounted = mnt(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
        "/dev/mqueue",
    );
    match mounted {
        // A kernel without POSIX message queues.
        Err(Failure::Mount { errno, .. }) if errno == libc::ENODEV => {
            let _ = fs::remove_dir(&mqueue);
        }
        other => other?,
    }
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(name))
            .map_err(|e| point(&format!("/dev/{name}"), e))?;
    }
    Ok(())
}

/// `/sys`, read-only: a sysfs of the step's network namespace, or the
/// host's bound when sysfs cannot be mounted.
fn mount_sys(stubs: &mut Stubs<'_>) -> Result<(), Failure> {
    let host = stubs.ensure("/sys", true)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let sysfs = mount(
        Some("sysfs"),
        &host,
        Some("sysfs"),
        flags | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    if sysfs.is_ok() {
        return Ok(());
    }
    mnt(
        Some(Path::new("/sys")),
        &host,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        "/sys",
    )?;
    remount_ro(&host, flags, "/sys")
}

/// Docker's masked and read-only paths under `/proc` and `/sys`.
fn hide_kernel_paths(rootfs: &Path) -> Result<(), Failure> {
    let null = rootfs.join("dev/null");
    for rel in MASKED_PATHS {
        let host = rootfs.join(rel);
        let target = format!("/{rel}");
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.is_dir() => mnt(
                Some(Path::new("tmpfs")),
                &host,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
                &target,
            )?,
            Ok(_) => mnt(Some(&null), &host, None, MsFlags::MS_BIND, None, &target)?,
            Err(_) => continue,
        }
    }
    for rel in READONLY_PATHS {
        let host = rootfs.join(rel);
        if fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let target = format!("/{rel}");
        mnt(
            Some(&host),
            &host,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &target,
        )?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        remount_ro(&host, flags, &target)?;
    }
    Ok(())
}

fn mount_extra(stubs: &mut Stubs<'_>, extra: &ExtraMount) -> Result<(), Failure> {
    match extra {
        ExtraMount::Bind {
            source,
            target,
            readonly,
        } => {
            let meta = fs::metadata(source).map_err(|e| Failure::Mount {
                what: source.display().to_string(),
                target: target.clone(),
                errno: errno(&e),
            })?;
            let host = stubs.ensure(target, meta.is_dir())?;
            mnt(
                Some(source),
                &host,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                target,
            )?;
            // Keep the source's nosuid/noexec; never allow devices.
            let kept = sys::mount_flags(&host).unwrap_or(MsFlags::empty());
            let flags = kept | MsFlags::MS_NODEV;
            if *readonly {
                remount_ro(&host, flags, target)
            } else {
                remount_bind(&host, flags, target)
            }
        }
        ExtraMount::Tmpfs { target, size } => {
            let host = stubs.ensure(target, true)?;
            let data = size.map(|s| format!("size={s}"));
            mnt(
                Some(Path::new("tmpfs")),
                &host,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data.as_deref(),
                target,
            )
        }
    }
}

/// `pivot_root` into the overlay and detach the host's root.
/// The step's root in chroot isolation, where nothing can be mounted: the
/// device nodes a `/dev` needs, and the generated `/etc` files and heredoc
/// scripts where the image has none, each reported as a placeholder so
/// that, left alone, it is not part of the layer.
fn chroot_setup(spec: &InitSpec, root: &Path, report: &mut Reporter) -> Result<(), Failure> {
    let mut stubs = Stubs::new(root, root, true, report);
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        stubs.device_if_missing(&format!("/dev/{name}"), major, minor)?;
    }
    for (target, source) in &spec.etc {
        let content = fs::read(source)
            .map_err(|e| Failure::setup(format!("read {}", source.display()), e))?;
        stubs.write(target, &content, 0o644, Existing::Keep)?;
    }
    for (target, source) in &spec.files {
        let content = fs::read(source)
            .map_err(|e| Failure::setup(format!("read {}", source.display()), e))?;
        stubs.write(target, &content, 0o755, Existing::Refuse)?;
    }
    stubs.send_stamps();
    Ok(())
}

fn enter_root(rootfs: &Path) -> Result<(), Failure> {
    let fail = |what: &str, e: nix::errno::Errno| {
        Failure::setup(format!("{what} (into {})", rootfs.display()), e)
    };
    nix::unistd::chdir(rootfs).map_err(|e| fail("enter the root file system", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the host's root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("enter the root file system", e))
}

/// `args[0]` as `execve` needs it: a path as given, or looked up in the
/// step's `PATH` as Go's `exec.LookPath` does for runc.
fn find_program(name: &str, env: &[String]) -> Result<PathBuf, Failure> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Failure::CommandNotFound(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_escape_separators() {
        let opts = overlay_options(
            &[PathBuf::from("/l/a:b"), PathBuf::from("/l/c,d")],
            Path::new("/u\\p"),
            Path::new("/w"),
        );
        assert_eq!(
            String::from_utf8_lossy(&opts),
            "lowerdir=/l/a\\:b:/l/c\\,d,upperdir=/u\\\\p,workdir=/w"
        );
    }
}
