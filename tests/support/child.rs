//! The life of a daemon a test starts (dockerd, docker-registry): its
//! output into a log file in its temporary directory, death with the
//! thread that started it, a stop by its own PID (SIGTERM, a grace period,
//! then SIGKILL), the end of its log for failure messages, and the removal
//! of its directory.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr into
/// `log`. If the thread that spawns it dies without stopping it (a signal,
/// an abort), the kernel sends the child `death_signal` (`PR_SET_PDEATHSIG`):
/// keep the guard in the test that started it, not in a static shared by
/// test threads.
pub(crate) fn spawn(cmd: &mut Command, log: &Path, death_signal: i32) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cloning the handle of {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("running {}: {e}", cmd.get_program().to_string_lossy()))
}

/// Stops `child` if it still runs: SIGTERM to its PID, up to `grace` for
/// it to exit, then SIGKILL; reaps it either way.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last `n` lines of the log at `path` (empty if unreadable).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes a daemon's temporary directory, warning on stderr when it
/// cannot (a test's cleanup must not panic).
// A cleanup failure is worth a line, not a failed test.
#[allow(clippy::print_stderr)]
pub(crate) fn remove_dir(dir: tempfile::TempDir) {
    let path = dir.path().to_path_buf();
    if let Err(e) = dir.close() {
        eprintln!("warning: removing {}: {e}", path.display());
    }
}
