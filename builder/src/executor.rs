//! The RUN executor: runs one build step in an isolated build container made
//! from Linux primitives, and turns the step's overlay upper dir into an OCI
//! layer directory.
//!
//! [`run`] re-executes the estiba binary as a small init process
//! (`estiba __estiba-run-init SPEC.json`) in new mount, PID, UTS and IPC
//! namespaces (and a network namespace unless [`Network::Host`]). The init is a
//! fresh single-threaded process, so it can mount and fork safely: it mounts
//! the overlay (the parent's layers below, the step's upper dir above), and
//! forks the command, which becomes PID 1 of the new PID namespace, mounts
//! `/proc`, `/dev`, `/sys` and the generated `/etc` files, `pivot_root`s into
//! the overlay, takes the image's user, Docker's default capabilities, and
//! execs. Every mount lives only in the init's private mount namespace, so it
//! disappears with the init, whatever ends it (success, failure, Ctrl-C: the
//! init gets `SIGKILL` when estiba dies). When PID 1 exits the kernel kills
//! what the step left running, so a background process never hangs a build.
//!
//! Mount points the image lacked (`/proc`, `/etc/hosts`, …) have to be created
//! inside the overlay; the init reports each one over a status pipe, and
//! [`run`] removes them from the upper dir afterwards if they are still the
//! empty placeholders it made, so they never reach the layer. Setup failures
//! come back over the same pipe as structured messages and become
//! [`ExecError`]s.

mod copyroot;
mod init;
mod network;
mod protocol;
mod seccomp;
mod stubs;
mod user;
mod whiteout;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use serde::{Deserialize, Serialize};

use crate::sys;

use protocol::{InitSpec, Message};

pub use whiteout::upper_to_layer_dir;

/// The hidden first argument that makes the estiba binary run as the build
/// container's init ([`init_main`]) instead of the CLI.
pub const INIT_ARG: &str = "__estiba-run-init";

/// The longest lower dir list the overlay mount options name by full paths
/// (leaving room in the page for the upper and work dirs and flags).
const LOWER_PATHS_MAX: usize = 3000;

/// The fd on which the init reports setup progress and failures.
const STATUS_FD: RawFd = 3;

/// How long [`run`] keeps reading output after the init exited. Normally
/// the pipes are closed by then (the kernel killed the whole PID namespace);
/// this only bounds the wait if something outside it still holds them.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// The network a step sees.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A new network namespace of its own, with outbound connections
    /// through pasta and the host's loopback out of reach (the default, as
    /// `docker build`'s; see the `network` module).
    #[default]
    Private,
    /// The host's network namespace (`--network host`).
    Host,
    /// A new network namespace with only `lo`, up (`--network none`).
    None,
}

/// How a step is confined (`RUN --security`).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Security {
    /// Docker's defaults: its capability set, its seccomp profile, its
    /// masked and read-only paths under `/proc` and `/sys`.
    #[default]
    Sandbox,
    /// `RUN --security=insecure`, which the build must allow (`--allow
    /// security.insecure`): every capability, no seccomp filter, nothing
    /// masked, as BuildKit's insecure mode.
    Insecure,
}

/// Extra mounts of `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtraMount {
    /// A host file or directory bound (recursively) at `target`.
    Bind {
        /// The host path.
        source: PathBuf,
        /// The absolute path in the container.
        target: String,
        /// Mount it read-only.
        readonly: bool,
    },
    /// A fresh tmpfs at `target`.
    Tmpfs {
        /// The absolute path in the container.
        target: String,
        /// The size limit in bytes (the kernel's default, half the RAM, if
        /// `None`).
        size: Option<u64>,
    },
}

/// Which pipe a chunk of the step's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// One RUN step, as the solver hands it over. Serialized to JSON for the
/// init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Read-only layer directories, top first (overlay `lowerdir` order);
    /// empty for `FROM scratch`.
    pub lower: Vec<PathBuf>,
    /// An empty directory that receives the step's changes (overlay upper).
    pub upper: PathBuf,
    /// An empty directory on the same file system as `upper` (overlay work).
    pub work: PathBuf,
    /// The command line, shell already prepended.
    pub args: Vec<String>,
    /// The environment, `K=V`. The command gets exactly these, plus `HOME`
    /// from the user's passwd entry when it is missing (as runc does).
    pub env: Vec<String>,
    /// `""` (root), `name`, `uid`, `name:group`, `uid:gid`; names resolve in
    /// the image's own `/etc/passwd` and `/etc/group`.
    pub user: String,
    /// The absolute working directory; created (owned by root) if missing.
    pub workdir: String,
    /// The step's network.
    pub network: Network,
    /// The container's host name (`buildkitsandbox`, BuildKit's, when empty).
    pub hostname: String,
    /// Extra read-only files, container path → content, mode 0755 (heredoc
    /// scripts such as `/dev/pipes/EOF`).
    pub files: BTreeMap<String, String>,
    /// `RUN --mount` mounts, applied parents first.
    pub mounts: Vec<ExtraMount>,
    /// Host ports forwarded into a [`Network::Private`] step (`estiba run
    /// -p`); build steps have none.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// The step's confinement.
    #[serde(default)]
    pub security: Security,
    /// What `build --add-host`, `--shm-size` and `--ulimit` ask of every
    /// RUN step.
    #[serde(default)]
    pub host: HostSettings,
    /// The command's standard input, output and error are a terminal
    /// ([`Stdin::Tty`]) that becomes its controlling terminal.
    #[serde(default)]
    pub tty: bool,
    /// `fsync`, `fdatasync`, `sync_file_range`, `syncfs` and `sync` return
    /// success at once, syncing nothing (a seccomp answer, so only under
    /// [`Security::Sandbox`]): build steps, whose changes are derived data
    /// until they become a layer blob, which is synced then. A crash
    /// mid-step loses the step, never a layer. The overlay is mounted
    /// `volatile` too (Linux 5.10 and later), so its unmount syncs nothing;
    /// its work dir cannot serve another overlay afterwards, which a fresh
    /// one per step never does. `estiba run` keeps real syncs.
    #[serde(default)]
    pub skip_sync: bool,
}

/// What the command reads as standard input, and for [`Stdin::Tty`] where
/// it writes too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null`: build steps.
    #[default]
    Null,
    /// estiba's own standard input (`estiba run -i`).
    Inherit,
    /// The slave side of a pseudo-terminal the caller opened (`estiba run
    /// -t`): standard input, output and error all; nothing comes through
    /// the output callback. The caller keeps the fd open until
    /// [`run_with`] returns. Needs [`RunSpec::tty`].
    Tty(RawFd),
}

/// docker's per-container settings a build gives every RUN step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostSettings {
    /// Extra `/etc/hosts` lines, (name, address), after the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// The size of `/dev/shm` in bytes (64 MiB when `None`, docker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// Resource limits set before the command starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

impl HostSettings {
    /// Whether nothing differs from a step's defaults.
    pub fn is_default(&self) -> bool {
        *self == HostSettings::default()
    }
}

/// One `--ulimit NAME=SOFT[:HARD]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ulimit {
    /// The resource.
    pub resource: UlimitResource,
    /// The soft limit (`-1`: unlimited).
    pub soft: i64,
    /// The hard limit (`-1`: unlimited).
    pub hard: i64,
}

/// The limits docker's `--ulimit` names (`docker/go-units` `ulimitNameMapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UlimitResource {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl UlimitResource {
    /// Every resource with its docker name.
    pub const ALL: [(&'static str, UlimitResource); 15] = [
        ("core", UlimitResource::Core),
        ("cpu", UlimitResource::Cpu),
        ("data", UlimitResource::Data),
        ("fsize", UlimitResource::Fsize),
        ("locks", UlimitResource::Locks),
        ("memlock", UlimitResource::Memlock),
        ("msgqueue", UlimitResource::Msgqueue),
        ("nice", UlimitResource::Nice),
        ("nofile", UlimitResource::Nofile),
        ("nproc", UlimitResource::Nproc),
        ("rss", UlimitResource::Rss),
        ("rtprio", UlimitResource::Rtprio),
        ("rttime", UlimitResource::Rttime),
        ("sigpending", UlimitResource::Sigpending),
        ("stack", UlimitResource::Stack),
    ];

    /// The resource named `name` as docker spells it.
    pub fn from_name(name: &str) -> Option<UlimitResource> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// docker's name of the resource.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("?", |(n, _)| n)
    }

    /// The kernel's `RLIMIT_*` resource.
    pub fn raw(self) -> rustix::process::Resource {
        use rustix::process::Resource;
        match self {
            UlimitResource::Core => Resource::Core,
            UlimitResource::Cpu => Resource::Cpu,
            UlimitResource::Data => Resource::Data,
            UlimitResource::Fsize => Resource::Fsize,
            UlimitResource::Locks => Resource::Locks,
            UlimitResource::Memlock => Resource::Memlock,
            UlimitResource::Msgqueue => Resource::Msgqueue,
            UlimitResource::Nice => Resource::Nice,
            UlimitResource::Nofile => Resource::Nofile,
            UlimitResource::Nproc => Resource::Nproc,
            UlimitResource::Rss => Resource::Rss,
            UlimitResource::Rtprio => Resource::Rtprio,
            UlimitResource::Rttime => Resource::Rttime,
            UlimitResource::Sigpending => Resource::Sigpending,
            UlimitResource::Stack => Resource::Stack,
        }
    }
}

/// A host port forwarded to a port of the container (`-p`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The host address to listen on; all when `None`.
    pub host_ip: Option<std::net::IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The container port.
    pub container_port: u16,
    /// UDP rather than TCP.
    pub udp: bool,
}

/// Where [`run_with`] finds the init and puts its scratch files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The estiba binary to re-execute as the init (`/proc/self/exe`; tests
    /// of the library pass the `estiba` binary here).
    pub init_exe: PathBuf,
    /// Where the per-step scratch directory goes (spec, generated `/etc`
    /// files, the overlay mount point). The system temp dir by default.
    pub tmp_dir: PathBuf,
    /// How the step's root file system is made.
    pub snapshotter: Snapshotter,
    /// The command's standard input.
    pub stdin: Stdin,
    /// How the step is kept from the host.
    pub isolation: Isolation,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            init_exe: PathBuf::from("/proc/self/exe"),
            tmp_dir: std::env::temp_dir(),
            snapshotter: Snapshotter::Auto,
            stdin: Stdin::Null,
            isolation: Isolation::Namespaces,
        }
    }
}

/// How a step is kept from the host (`build --isolation`, Buildah's word).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// A build container: new mount, PID, UTS, IPC and network namespaces
    /// (and a user namespace rootless), its own `/proc`, `/dev` and
    /// `/sys`, a seccomp filter, docker's capabilities (`default`).
    #[default]
    Namespaces,
    /// For where namespaces are refused (a container without
    /// `CAP_SYS_ADMIN`, a kernel without user namespaces): no namespace
    /// and no mount at all. The step runs chrooted into a private
    /// flattened copy of its layers (the copy snapshotter's), as estiba's
    /// own user, on the host's network, seeing the host's processes; no
    /// `/proc` or `/sys`, a `/dev` of device nodes (null, zero, full,
    /// random, urandom, tty), the generated `/etc/hosts`, `/etc/hostname`
    /// and `/etc/resolv.conf` where the image has none. Docker's
    /// capabilities and seccomp filter still apply (the filter with
    /// no_new_privs where estiba lacks `CAP_SYS_ADMIN`). `RUN --mount`
    /// and `--network none` need namespaces and are refused. Needs root
    /// (`CAP_SYS_CHROOT`, `CAP_MKNOD`).
    Chroot,
}

impl Isolation {
    /// `default` or `chroot`, as `--isolation` and `ESTIBA_ISOLATION` spell
    /// them (`oci`, Buildah's name for its default, is `default` too).
    pub fn parse(name: &str) -> Option<Isolation> {
        match name {
            "default" | "oci" => Some(Isolation::Namespaces),
            "chroot" => Some(Isolation::Chroot),
            _ => None,
        }
    }

    /// The one warning a build with this isolation prints, if any.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Isolation::Namespaces => None,
            Isolation::Chroot => Some(
                "--isolation chroot: RUN steps get no namespaces: they see the host's \
                 processes, network and mounts, run with estiba's own privileges (root) and \
                 get no /proc or /sys; use it only where the build container's namespaces are refused",
            ),
        }
    }
}

/// How a step's root file system is made and its changes found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Snapshotter {
    /// `ESTIBA_SNAPSHOTTER` if set, else overlayfs, falling back to a copy
    /// for good when the kernel refuses the overlay mount.
    #[default]
    Auto,
    /// overlayfs: the layers below as lower dirs, the changes in the upper dir.
    Overlay,
    /// A private flattened copy of the layers below, compared afterwards
    /// (see the `copyroot` module): slower, works on any file system.
    Copy,
}

/// Set once an overlay mount failed: later steps go straight to the copy.
static OVERLAY_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Snapshotter {
    /// `Auto` made concrete by `ESTIBA_SNAPSHOTTER` (`overlay`, `copy`,
    /// `auto` or unset); other choices stand as they are.
    fn chosen(self) -> Result<Self, ExecError> {
        if self != Snapshotter::Auto {
            return Ok(self);
        }
        match std::env::var("ESTIBA_SNAPSHOTTER").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Snapshotter::Auto),
            Ok("overlay") => Ok(Snapshotter::Overlay),
            Ok("copy") => Ok(Snapshotter::Copy),
            Ok(other) => Err(ExecError::Snapshotter(other.to_owned())),
        }
    }
}

/// Why a step could not run. A command that ran and failed is not an error:
/// [`run`] returns its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The step itself is malformed (empty command, relative mount target).
    #[error("invalid RUN step: {0}")]
    InvalidSpec(String),
    /// A scratch file for the step could not be written.
    #[error("cannot prepare {}", path.display())]
    Prepare {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The init process could not be started, or the namespaces not created.
    #[error("cannot start the build container (new namespaces, then {})", exe.display())]
    Spawn {
        /// The binary that was to run as the init.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the build container's namespaces.
    #[error(
        "cannot create the build container's namespaces: estiba needs root with \
         CAP_SYS_ADMIN, or user namespaces (see the README's rootless section); where both \
         are refused (an unprivileged container), `estiba build --isolation chroot` runs RUN \
         steps without namespaces, with weaker isolation"
    )]
    Namespaces(#[source] io::Error),
    /// Something chroot isolation cannot do.
    #[error("{0}, which --isolation chroot cannot give (it makes no namespaces)")]
    Chroot(String),
    /// Reading the step's output or waiting for it failed.
    #[error("cannot follow the build container")]
    Follow(#[source] io::Error),
    /// A mount failed.
    #[error("cannot mount {what} on {target}")]
    Mount {
        /// What was mounted (`overlay`, `proc`, a host path, …).
        what: String,
        /// The mount point, as the container sees it (or the host path of
        /// the overlay mount point).
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A mount point could not be created in the container.
    #[error("cannot create the mount point {target}")]
    MountPoint {
        /// The container path.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another step of the container's setup failed.
    #[error("cannot {what}")]
    Setup {
        /// What was being done (`pivot_root into …`, `set the host name`, …).
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `USER` names a user the image's `/etc/passwd` lacks.
    #[error("unable to find user {user}: no matching entries in passwd file")]
    UserNotFound {
        /// The user name.
        user: String,
    },
    /// `USER` names a group the image's `/etc/group` lacks.
    #[error("unable to find group {group}: no matching entries in group file")]
    GroupNotFound {
        /// The group name.
        group: String,
    },
    /// The working directory could not be created or entered.
    #[error("cannot enter the working directory {path}")]
    Workdir {
        /// The container path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `args[0]` is not in `$PATH` (docker: `executable file not found in $PATH`).
    #[error("command not found: {command}")]
    CommandNotFound {
        /// `args[0]`.
        command: String,
    },
    /// `execve` of the command failed.
    #[error("cannot execute {command}")]
    Exec {
        /// The resolved path of the command.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The seccomp profile could not be made for this machine.
    #[error("no seccomp filter for the build container: {0}")]
    Seccomp(String),
    /// The init broke its protocol (an unreadable message).
    #[error("the build container's init failed: {0}")]
    Init(String),
    /// A placeholder mount point could not be removed from the upper dir.
    #[error("cannot remove the mount point placeholder {} from the layer", path.display())]
    Cleanup {
        /// The host path in the upper dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// [`upper_to_layer_dir`] could not convert an entry.
    #[error("cannot convert {} to the OCI layer form", path.display())]
    Whiteout {
        /// The host path in the upper dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The copy snapshotter could not copy the layers or the step's changes.
    #[error("cannot copy {} (copy snapshotter)", path.display())]
    CopyRoot {
        /// The path being copied.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `ESTIBA_SNAPSHOTTER` has a value it cannot have.
    #[error("ESTIBA_SNAPSHOTTER={0}: expected overlay, copy or auto")]
    Snapshotter(String),
    /// The upper dir holds overlay metadata no OCI layer can express.
    #[error("cannot convert {}: {what}", path.display())]
    Unconvertible {
        /// The host path in the upper dir.
        path: PathBuf,
        /// What is there.
        what: String,
    },
}

/// The init's entry point, reached through `estiba __estiba-run-init
/// SPEC.json`: sets up the build container and runs the step in it. Never
/// returns; exits with the command's exit code (`128 + signal` if it was
/// killed, 125 if the container could not be set up).
pub fn init_main() -> ! {
    init::main()
}

/// Runs one step in a build container, streaming its output to `output` as
/// it arrives, and returns its exit code (`128 + signal` if it was killed).
/// The step's file changes are left in `spec.upper`, in overlay form (see
/// [`upper_to_layer_dir`]).
pub fn run(spec: &RunSpec, output: &mut dyn FnMut(Stream, &[u8])) -> Result<i32, ExecError> {
    run_with(spec, &RunOptions::default(), output)
}

/// Stops what running steps need outside their build containers (the
/// user-mode networks), for an exit that cannot wait for the steps: a
/// canceled build. The containers themselves die with estiba.
pub fn stop_all() {
    network::stop_all();
}

/// [`run`] with an explicit init binary and scratch directory.
pub fn run_with(
    spec: &RunSpec,
    options: &RunOptions,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<i32, ExecError> {
    validate(spec)?;
    let spec = &absolute_paths(spec)?;
    if options.isolation == Isolation::Chroot {
        validate_chroot(spec)?;
        return run_once(spec, options, true, output);
    }
    match options.snapshotter.chosen()? {
        Snapshotter::Overlay => run_once(spec, options, false, output),
        Snapshotter::Copy => run_once(spec, options, true, output),
        Snapshotter::Auto if OVERLAY_REFUSED.load(std::sync::atomic::Ordering::Relaxed) => {
            run_once(spec, options, true, output)
        }
        Snapshotter::Auto => match run_once(spec, options, false, output) {
            // The overlay mount is the init's first act: nothing ran yet.
            Err(ExecError::Mount { what, source, .. })
                if what == "overlay"
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::ENODEV | libc::EINVAL | libc::EPERM | libc::ENOTSUP)
                    ) =>
            {
                OVERLAY_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                run_once(spec, options, true, output)
            }
            other => other,
        },
    }
}

/// One attempt at [`run_with`], with overlayfs or the copy snapshotter.
fn run_once(
    spec: &RunSpec,
    options: &RunOptions,
    copy: bool,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<i32, ExecError> {
    let scratch = tempfile::Builder::new()
        .prefix("estiba-run-")
        .tempdir_in(absolute(&options.tmp_dir)?)
        .map_err(|source| ExecError::Prepare {
            path: options.tmp_dir.clone(),
            source,
        })?;
    let mut init_spec = prepare(spec, scratch.path())?;
    init_spec.chroot = options.isolation == Isolation::Chroot;
    let copy_root = if copy {
        let dir = scratch.path().join("copy-root");
        std::fs::create_dir(&dir).map_err(|source| ExecError::Prepare {
            path: dir.clone(),
            source,
        })?;
        let root = copyroot::CopyRoot::prepare(&spec.lower, &dir)?;
        init_spec.copy_root = Some(root.dir().to_owned());
        Some(root)
    } else {
        None
    };
    let spec_path = scratch.path().join("spec.json");
    let json = serde_json::to_vec(&init_spec)
        .map_err(|e| ExecError::InvalidSpec(format!("cannot encode the step: {e}")))?;
    write_file(&spec_path, &json, 0o600)?;

    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Spawn {
            exe: options.init_exe.clone(),
            source: e.into(),
        })?;
    let go = match spec.network {
        Network::Private if !init_spec.chroot => {
            Some(network::go_pipe().map_err(|source| ExecError::Spawn {
                exe: options.init_exe.clone(),
                source,
            })?)
        }
        Network::Private | Network::Host | Network::None => None,
    };
    let child = spawn_init(
        spec,
        options,
        &spec_path,
        &status_w,
        go.as_ref().map(|(r, _)| r),
    )?;
    drop(status_w);
    let init_pid = child.id();
    let mut init = InitGuard(Some(child));
    // Kept until the step is over; pasta is killed when dropped. A failure
    // here waits for the init's own report: an init that failed its setup
    // closes the go pipe, and why it failed is the error worth showing.
    let mut net_failure = None;
    let _user_net = match go {
        Some((go_r, go_w)) => {
            drop(go_r);
            match network::connect(init_pid, &spec.publish, scratch.path(), go_w) {
                Ok((net, warning)) => {
                    if let Some(warning) = warning {
                        output(Stream::Stderr, warning.as_bytes());
                    }
                    net
                }
                Err(e) => {
                    net_failure = Some(ExecError::Setup {
                        what: "start the step's network".to_owned(),
                        source: e,
                    });
                    None
                }
            }
        }
        None => None,
    };
    let followed = follow(&mut init, status_r, output);
    let (status, messages) = match followed {
        Ok(done) => done,
        Err(e) => return Err(ExecError::Follow(e)),
    };

    let mut failure = None;
    let mut tracked = stubs::Tracked::default();
    for message in messages {
        match message {
            Message::Created { path, kind } => tracked.created(path, kind),
            Message::Stamp { path, stamp } => tracked.stamp(path, stamp),
            Message::Failed(f) => failure = failure.or(Some(f)),
        }
    }
    // An init killed by a signal may not have outlived the command, whose
    // mount namespace could then still hold the overlay for a moment: leave
    // that upper dir alone (the step failed anyway).
    let cleaned = match (status.signal(), &copy_root) {
        (None, None) => tracked.clean(&spec.upper),
        (None, Some(root)) => root.diff(&tracked, &spec.upper),
        (Some(_), _) => Ok(()),
    };
    if let Some(f) = failure {
        return Err(f.into_error());
    }
    if let Some(e) = net_failure {
        return Err(e);
    }
    cleaned?;
    Ok(exit_code(status))
}

/// What chroot isolation cannot give a step, refused by name.
fn validate_chroot(spec: &RunSpec) -> Result<(), ExecError> {
    let refused = |what: &str| ExecError::Chroot(what.to_owned());
    if !spec.mounts.is_empty() {
        return Err(refused("RUN --mount needs a mount namespace"));
    }
    if spec.network == Network::None {
        return Err(refused("--network none needs a network namespace"));
    }
    if !spec.publish.is_empty() || spec.tty {
        return Err(refused("estiba run needs the build container"));
    }
    Ok(())
}

fn validate(spec: &RunSpec) -> Result<(), ExecError> {
    if spec.args.is_empty() {
        return Err(ExecError::InvalidSpec("no command".to_owned()));
    }
    let targets = spec
        .files
        .keys()
        .map(String::as_str)
        .chain(spec.mounts.iter().map(|m| match m {
            ExtraMount::Bind { target, .. } | ExtraMount::Tmpfs { target, .. } => target.as_str(),
        }));
    for target in targets {
        if !target.starts_with('/') {
            return Err(ExecError::InvalidSpec(format!(
                "mount target {target} is not an absolute path"
            )));
        }
        if Path::new(target).components().count() < 2 {
            return Err(ExecError::InvalidSpec(format!(
                "cannot mount over {target}"
            )));
        }
    }
    if !spec.workdir.is_empty() && !spec.workdir.starts_with('/') {
        return Err(ExecError::InvalidSpec(format!(
            "working directory {} is not an absolute path",
            spec.workdir
        )));
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, ExecError> {
    std::path::absolute(path).map_err(|source| ExecError::Prepare {
        path: path.to_owned(),
        source,
    })
}

/// The step with every host path absolute: the init changes directories.
/// Each lower dir is given once, at its topmost place: overlayfs refuses a
/// lower dir given twice (ELOOP), and an image may hold the same layer
/// twice (two steps that make the same changes). Its lower place decides
/// nothing: its upper copy holds the same entries above it.
fn absolute_paths(spec: &RunSpec) -> Result<RunSpec, ExecError> {
    let mut spec = spec.clone();
    let mut seen = std::collections::BTreeSet::new();
    let mut lower = Vec::with_capacity(spec.lower.len());
    for dir in &spec.lower {
        let dir = absolute(dir)?;
        if seen.insert(dir.clone()) {
            lower.push(dir);
        }
    }
    spec.lower = lower;
    spec.upper = absolute(&spec.upper)?;
    spec.work = absolute(&spec.work)?;
    for extra in spec.mounts.iter_mut() {
        if let ExtraMount::Bind { source, .. } = extra {
            *source = absolute(source)?;
        }
    }
    Ok(spec)
}

/// Writes the scratch files of a step (generated `/etc` files, extra files,
/// the empty lower dir and the mount point) and returns what the init needs.
fn prepare(spec: &RunSpec, scratch: &Path) -> Result<InitSpec, ExecError> {
    let rootfs = scratch.join("rootfs");
    let empty_lower = scratch.join("empty");
    for dir in [&rootfs, &empty_lower] {
        std::fs::create_dir(dir).map_err(|source| ExecError::Prepare {
            path: dir.clone(),
            source,
        })?;
    }
    let mut lower = if spec.lower.is_empty() {
        vec![empty_lower]
    } else {
        spec.lower.clone()
    };
    // Mount options must fit in a page. With many layers the lower dirs
    // are named by short links `0`, `1`, … (as overlay2's `l/` links do):
    // 500 layers, the kernel's limit, fit where 48 snapshot paths did not.
    let mut lower_links = None;
    let length: usize = lower.iter().map(|d| d.as_os_str().len() + 1).sum();
    if length > LOWER_PATHS_MAX {
        let links = scratch.join("l");
        std::fs::create_dir(&links).map_err(|source| ExecError::Prepare {
            path: links.clone(),
            source,
        })?;
        for (i, dir) in lower.iter_mut().enumerate() {
            let link = links.join(i.to_string());
            std::os::unix::fs::symlink(&*dir, &link)
                .map_err(|source| ExecError::Prepare { path: link, source })?;
            *dir = PathBuf::from(i.to_string());
        }
        lower_links = Some(links);
    }
    let hostname = if spec.hostname.is_empty() {
        "buildkitsandbox"
    } else {
        spec.hostname.as_str()
    };
    let mut hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in &spec.host.extra_hosts {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    let resolv = match spec.network {
        Network::Private => network::private_resolv_conf(&host_resolv_conf()),
        Network::Host => host_resolv_conf(),
        Network::None => "# --network none: no name servers\n".to_owned(),
    };
    let mut etc = Vec::new();
    for (target, name, content) in [
        ("/etc/hosts", "hosts", hosts),
        ("/etc/hostname", "hostname", format!("{hostname}\n")),
        ("/etc/resolv.conf", "resolv.conf", resolv),
    ] {
        let path = scratch.join(name);
        write_file(&path, content.as_bytes(), 0o644)?;
        etc.push((target.to_owned(), path));
    }
    let mut files = Vec::new();
    for (i, (target, content)) in spec.files.iter().enumerate() {
        let path = scratch.join(format!("file-{i}"));
        write_file(&path, content.as_bytes(), 0o755)?;
        files.push((target.clone(), path));
    }
    Ok(InitSpec {
        run: spec.clone(),
        hostname: hostname.to_owned(),
        rootfs,
        copy_root: None,
        chroot: false,
        lower,
        lower_links,
        etc,
        files,
    })
}

/// The host's resolver configuration, for a step on the host network.
/// BuildKit's fallback when the host has none: Google's public servers.
fn host_resolv_conf() -> String {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_else(|_| "nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_owned())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ExecError> {
    let prepare = |source| ExecError::Prepare {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(prepare)?;
    io::Write::write_all(&mut file, content).map_err(prepare)?;
    // The umask may have narrowed the mode.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(prepare)
}

/// Starts the init in its new namespaces, its output piped, its status pipe
/// on fd 3.
fn spawn_init(
    spec: &RunSpec,
    options: &RunOptions,
    spec_path: &Path,
    status_w: &OwnedFd,
    go_r: Option<&OwnedFd>,
) -> Result<Child, ExecError> {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network != Network::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if options.isolation == Isolation::Chroot {
        flags = CloneFlags::empty();
    }
    let status_fd = status_w.as_raw_fd();
    // At fd 10 or above (`network::go_pipe`): the status fd's move to fd 3
    // cannot clobber it.
    let go_fd = go_r.map(AsRawFd::as_raw_fd);
    let parent = nix::unistd::getpid().as_raw();
    let mut command = Command::new(&options.init_exe);
    command.arg(INIT_ARG).arg(spec_path).env_clear();
    let spawn_error = |source| ExecError::Spawn {
        exe: options.init_exe.clone(),
        source,
    };
    match options.stdin {
        Stdin::Null => command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Stdin::Inherit => command
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Stdin::Tty(slave) => {
            // SAFETY: the caller keeps `slave` open until run_with returns.
            let slave = unsafe { std::os::fd::BorrowedFd::borrow_raw(slave) };
            let dup = || slave.try_clone_to_owned().map_err(spawn_error);
            command
                .stdin(Stdio::from(dup()?))
                .stdout(Stdio::from(dup()?))
                .stderr(Stdio::from(dup()?))
        }
    };
    // SAFETY: the closure runs between fork and exec; it only makes
    // async-signal-safe system calls and allocates nothing (io::Error from
    // an OS error code does not allocate).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // estiba died before the death signal was armed.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if status_fd == STATUS_FD {
                let fl = libc::fcntl(STATUS_FD, libc::F_GETFD);
                if fl < 0 || libc::fcntl(STATUS_FD, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(status_fd, STATUS_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = go_fd {
                // dup2 leaves the copy open across exec.
                if libc::dup2(fd, network::GO_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if flags.is_empty() {
                return Ok(());
            }
            nix::sched::unshare(flags).map_err(io::Error::from)
        });
    }
    command
        .spawn()
        .map_err(|source| match source.raw_os_error() {
            // exec does not fail with EPERM: the namespaces were refused.
            Some(libc::EPERM) if !flags.is_empty() => ExecError::Namespaces(source),
            _ => ExecError::Spawn {
                exe: options.init_exe.clone(),
                source,
            },
        })
}

/// Kills and reaps the init if [`run`] leaves early (a panicking output
/// callback), so no step outlives its caller.
struct InitGuard(Option<Child>);

impl Drop for InitGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Streams the init's stdout and stderr to `output` and collects its status
/// messages until it has exited and the pipes are drained.
fn follow(
    init: &mut InitGuard,
    status_r: OwnedFd,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> io::Result<(ExitStatus, Vec<Message>)> {
    let Some(child) = init.0.as_mut() else {
        return Err(io::Error::other("the init was already reaped"));
    };
    let pid = child.id();
    // No output pipes when the command writes to a terminal.
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let exit_fd = sys::pidfd_open(pid);

    let mut pipes: [Option<std::fs::File>; 3] =
        [stdout, stderr, Some(status_r)].map(|fd| fd.map(Into::into));
    let mut status_bytes = Vec::new();
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exited.is_none() {
            let done = match &exit_fd {
                // Polled below; only checked when it fires.
                Some(_) => None,
                None => child.try_wait()?,
            };
            if let Some(status) = done {
                exited = Some((status, Instant::now()));
            }
        }
        let open = pipes.iter().any(Option::is_some);
        if let Some((status, at)) = exited {
            if !open || at.elapsed() >= DRAIN_AFTER_EXIT {
                let messages = protocol::parse_messages(&status_bytes);
                init.0 = None;
                return Ok((status, messages));
            }
        } else if !open && exit_fd.is_none() {
            let status = child.wait()?;
            exited = Some((status, Instant::now()));
            continue;
        }

        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        let mut which = Vec::with_capacity(4);
        for (i, pipe) in pipes.iter().enumerate() {
            if let Some(fd) = pipe {
                fds.push(PollFd::new(fd, PollFlags::IN));
                which.push(Some(i));
            }
        }
        if exited.is_none() {
            if let Some(fd) = &exit_fd {
                fds.push(PollFd::new(fd, PollFlags::IN));
                which.push(None);
            }
        }
        let timeout = match (exited, &exit_fd) {
            (Some((_, at)), _) => {
                let left = DRAIN_AFTER_EXIT.saturating_sub(at.elapsed());
                Some(left.clamp(Duration::from_millis(1), Duration::from_secs(1)))
            }
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_millis(20)),
        };
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|pfd| !pfd.revents().is_empty()).collect();
        drop(fds);
        for (ready, slot) in ready.into_iter().zip(&which) {
            if !ready {
                continue;
            }
            match slot {
                None => {
                    let status = child.wait()?;
                    exited = Some((status, Instant::now()));
                }
                Some(i) => {
                    let Some(file) = pipes[*i].as_mut() else {
                        continue;
                    };
                    let got = match file.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    if got == 0 {
                        pipes[*i] = None;
                        continue;
                    }
                    match i {
                        0 => output(Stream::Stdout, &buf[..got]),
                        1 => output(Stream::Stderr, &buf[..got]),
                        _ => status_bytes.extend_from_slice(&buf[..got]),
                    }
                }
            }
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}
