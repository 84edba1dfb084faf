//! What [`super::run`] and the init say to each other: the spec the init
//! reads from its JSON file, and the JSON lines it writes on its status pipe
//! (fd 3): mount point placeholders it created in the overlay, and the
//! reason setup failed, if it did.

use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use serde::{Deserialize, Serialize};

use super::{ExecError, RunSpec, STATUS_FD};

/// Everything the init needs: the step and the scratch files [`super::run`]
/// prepared for it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct InitSpec {
    pub(super) run: RunSpec,
    /// The host name actually used (the default applied).
    pub(super) hostname: String,
    /// The (empty) host directory the overlay is mounted on.
    pub(super) rootfs: PathBuf,
    /// The copy snapshotter's private root file system, bind-mounted on
    /// `rootfs` instead of the overlay (the step writes into it directly).
    pub(super) copy_root: Option<PathBuf>,
    /// Chroot isolation: no namespaces and no mounts; the command runs
    /// chrooted into `copy_root` (see [`super::Isolation::Chroot`]).
    #[serde(default)]
    pub(super) chroot: bool,
    /// The overlay's lower dirs, top first, as the mount options name them:
    /// absolute paths, or with many layers short links relative to
    /// `lower_links` (the empty dir for a step on `scratch`).
    pub(super) lower: Vec<PathBuf>,
    /// The directory holding the short links `0`, `1`, … when there are
    /// too many layers for their paths to fit in the mount options.
    pub(super) lower_links: Option<PathBuf>,
    /// Generated `/etc` files: container path → host file.
    pub(super) etc: Vec<(String, PathBuf)>,
    /// `RunSpec::files`: container path → host file holding the content.
    pub(super) files: Vec<(String, PathBuf)>,
}

/// What kind of placeholder the init made in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum StubKind {
    /// An empty file it created (a file mount point).
    File,
    /// A directory it created (a mount point or the parent of one).
    Dir,
    /// An image directory that creating a mount point in it copied up.
    CopiedUp,
    /// A file it wrote where a mount would go (chroot isolation: the
    /// generated `/etc/hosts`, a heredoc script).
    Written,
    /// A character device it made in `/dev` (chroot isolation).
    Device,
}

/// A directory's times right after setup, to tell later whether the step
/// touched it: (mtime, ctime) as (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

/// One status line from the init.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Message {
    /// A placeholder now in the upper dir; `path` is relative to its root.
    Created { path: PathBuf, kind: StubKind },
    /// The times of a copied-up directory once setup was done.
    Stamp { path: PathBuf, stamp: Stamp },
    /// Setup failed; the command never ran.
    Failed(Failure),
}

/// A setup failure, as it crosses the pipe (an errno instead of an
/// `io::Error`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Failure {
    Spec(String),
    /// A status line [`super::run`] could not read.
    Protocol(String),
    Mount {
        what: String,
        target: String,
        errno: i32,
    },
    MountPoint {
        target: String,
        errno: i32,
    },
    Setup {
        what: String,
        errno: i32,
    },
    UserNotFound(String),
    GroupNotFound(String),
    Workdir {
        path: String,
        errno: i32,
    },
    CommandNotFound(String),
    /// The seccomp profile could not be compiled (its error chain).
    Seccomp(String),
    Exec {
        command: String,
        errno: i32,
    },
}

impl Failure {
    /// A [`Failure::Setup`] from an error of any kind `errno` can express.
    pub(super) fn setup(what: impl Into<String>, e: impl Into<io::Error>) -> Failure {
        Failure::Setup {
            what: what.into(),
            errno: errno(&e.into()),
        }
    }

    pub(super) fn into_error(self) -> ExecError {
        let os = io::Error::from_raw_os_error;
        match self {
            Failure::Spec(detail) => ExecError::InvalidSpec(detail),
            Failure::Protocol(detail) => ExecError::Init(detail),
            Failure::Mount {
                what,
                target,
                errno,
            } => ExecError::Mount {
                what,
                target,
                source: os(errno),
            },
            Failure::MountPoint { target, errno } => ExecError::MountPoint {
                target,
                source: os(errno),
            },
            Failure::Setup { what, errno } => ExecError::Setup {
                what,
                source: os(errno),
            },
            Failure::UserNotFound(user) => ExecError::UserNotFound { user },
            Failure::GroupNotFound(group) => ExecError::GroupNotFound { group },
            Failure::Workdir { path, errno } => ExecError::Workdir {
                path,
                source: os(errno),
            },
            Failure::CommandNotFound(command) => ExecError::CommandNotFound { command },
            Failure::Seccomp(reason) => ExecError::Seccomp(reason),
            Failure::Exec { command, errno } => ExecError::Exec {
                command,
                source: os(errno),
            },
        }
    }
}

/// The errno of an I/O error (EIO when it has none).
pub(super) fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Decodes the status lines; a malformed line becomes a failure message so
/// that it is not silently ignored.
pub(super) fn parse_messages(bytes: &[u8]) -> Vec<Message> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).unwrap_or_else(|e| {
                Message::Failed(Failure::Protocol(format!(
                    "unreadable status line ({e}): {}",
                    String::from_utf8_lossy(line)
                )))
            })
        })
        .collect()
}

/// The init's end of the status pipe.
#[derive(Debug)]
pub(super) struct Reporter {
    file: Option<std::fs::File>,
}

impl Reporter {
    /// Takes fd 3, where [`super::run`] put the status pipe. Without it (the
    /// init started by hand) messages go nowhere.
    pub(super) fn from_status_fd() -> Reporter {
        let open = fcntl(STATUS_FD, FcntlArg::F_GETFD).is_ok();
        // SAFETY: fd 3 is open (F_GETFD just succeeded) and nothing else in
        // this process owns it: the parent put it there for this reporter.
        let file = open.then(|| unsafe { std::fs::File::from_raw_fd(STATUS_FD) });
        Reporter { file }
    }

    /// Writes one message as a single line (one `write`, well under
    /// PIPE_BUF for placeholders, so lines never interleave).
    pub(super) fn send(&mut self, message: &Message) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Ok(mut line) = serde_json::to_vec(message) {
            line.push(b'\n');
            let _ = file.write_all(&line);
        }
    }

    /// Closes the pipe (the init's copy, once the command has its own).
    pub(super) fn close(&mut self) {
        self.file = None;
    }

    /// Marks the pipe close-on-exec, so that the command does not inherit it.
    pub(super) fn close_on_exec(&self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        fcntl(STATUS_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        Ok(())
    }
}
