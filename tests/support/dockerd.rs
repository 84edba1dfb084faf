//! A private dockerd for tests that use `docker build` as the reference
//! builder (DESIGN.md, "Real components for tests").
//!
//! It runs Debian's dockerd with no bridge, no iptables and no forwarding, so
//! it never creates a network, with its data root, exec root, pid file and
//! socket in a temporary directory. The client is the Debian `/usr/bin/docker`
//! pointed at that socket (a newer client elsewhere on PATH may insist on
//! buildx). Dropping the guard stops the daemon by the PID this process
//! started (SIGTERM, a grace period, then SIGKILL), unmounts whatever the
//! daemon left mounted under its directory and removes it, also when the
//! test fails.

#[path = "child.rs"]
mod child;
#[path = "ci.rs"]
mod ci;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's docker.io installs the daemon (`/usr/sbin`) and where
/// other packagings put it.
const DOCKERD: &[&str] = &["/usr/sbin/dockerd", "/usr/bin/dockerd"];
/// The Debian client, matching the daemon's API version.
const DOCKER: &str = "/usr/bin/docker";
/// How long the daemon gets to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running dockerd this process started; stopped and cleaned up on drop.
#[derive(Debug)]
pub(crate) struct Dockerd {
    child: Child,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    sock: PathBuf,
}

impl Dockerd {
    /// Starts a dockerd, or says why it cannot: inside CI (`CI` set to
    /// anything but `false`/`0`) that panics, since CI must run the test;
    /// elsewhere it prints a `skipped:` line naming the test and the reason
    /// and returns `None`.
    pub(crate) fn start_or_skip(test: &str) -> Option<Dockerd> {
        match Dockerd::start() {
            Ok(d) => Some(d),
            Err(why) => {
                ci::skip_or_fail(test, "dockerd (the reference builder)", &why);
                None
            }
        }
    }

    /// Starts the daemon and waits until it answers.
    pub(crate) fn start() -> Result<Dockerd, String> {
        let dockerd = DOCKERD
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "no dockerd at {} (install Debian's docker.io: scripts/test-deps does)",
                    DOCKERD.join(" or ")
                )
            })?;
        if !Path::new(DOCKER).exists() {
            return Err(format!("no docker client at {DOCKER} (Debian's docker.io)"));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err("dockerd needs root".to_owned());
        }
        // Short paths: the socket path must fit in sun_path (108 bytes), and
        // so must containerd's sockets under the exec root.
        let base = if Path::new("/tmp").is_dir() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("estiba-dockerd-")
            .tempdir_in(&base)
            .map_err(|e| format!("creating a directory in {}: {e}", base.display()))?;
        let root = dir.path().to_path_buf();
        let sock = root.join("docker.sock");
        let mut cmd = Command::new(dockerd);
        cmd.args([
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ])
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("exec"))
        .arg("--pidfile")
        .arg(root.join("pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()));
        // If this test dies without running Drop, the daemon gets SIGTERM.
        let child = child::spawn(&mut cmd, &root.join("dockerd.log"), libc::SIGTERM)?;
        let mut d = Dockerd {
            child,
            dir: Some(dir),
            root,
            sock,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "dockerd exited ({status}) before answering; its log ends:\n{}",
                    self.log_tail()
                ));
            }
            let ok = self
                .docker()
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "dockerd did not answer on {} within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.sock.display(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of the daemon's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        child::log_tail(&self.root.join("dockerd.log"), 20)
    }

    /// A `docker` client command talking to this daemon only: no
    /// `DOCKER_HOST`/`DOCKER_CONTEXT` from the environment, and a client
    /// config directory of its own.
    pub(crate) fn docker(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env("DOCKER_CONFIG", self.root.join("client"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()));
        cmd
    }

    /// `DOCKER_BUILDKIT=1 docker build --network=none`: the reference build.
    pub(crate) fn build(&self) -> Command {
        let mut cmd = self.docker();
        cmd.env("DOCKER_BUILDKIT", "1")
            .env("BUILDKIT_PROGRESS", "plain")
            .args(["build", "--network=none"]);
        cmd
    }

    fn stop(&mut self) {
        child::stop(&mut self.child, STOP_TIMEOUT);
        self.kill_own_containerd();
        self.unmount_all();
    }

    /// dockerd runs a containerd of its own, with its pid file under our
    /// exec root; a daemon killed by SIGKILL leaves it behind. Only a process
    /// whose command line names our directory is touched.
    fn kill_own_containerd(&self) {
        let pidfile = self.root.join("exec/containerd/containerd.pid");
        let Ok(text) = std::fs::read_to_string(&pidfile) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.root.to_string_lossy());
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Unmounts every mount point under our directory, deepest first.
    fn unmount_all(&self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.root.to_string_lossy().into_owned();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        for p in points {
            // A path can be mounted over more than once: unmount until it
            // is gone.
            for _ in 0..8 {
                if nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            child::remove_dir(dir);
        }
    }
}
