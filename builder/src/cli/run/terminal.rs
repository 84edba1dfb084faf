//! `estiba run -t`: a pseudo-terminal for the command, its output copied
//! to ours and (with `-i`) our input to it, our terminal in raw mode
//! meanwhile so keys such as ^C reach the command as docker's do.

use super::super::Failure;
use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

/// A pseudo-terminal while the command runs; dropping it copies what the
/// command wrote last and puts our terminal back as it was.
pub(crate) struct Session {
    slave: Option<OwnedFd>,
    output: Option<JoinHandle<()>>,
    restore: Option<Termios>,
}

impl Session {
    /// Opens the pseudo-terminal, sized as our own terminal when there is
    /// one; with `interactive`, our input goes to it.
    pub(crate) fn open(interactive: bool) -> Result<Session, Failure> {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let stdin_tty = nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false);
        if interactive && !stdin_tty {
            // docker's own refusal, in its words.
            return Err(Failure::Usage(
                "the input device is not a TTY: leave out -t to pass standard input".to_owned(),
            ));
        }
        let size = window_size(stdout.as_raw_fd()).or_else(|| window_size(stdin.as_raw_fd()));
        let pty =
            nix::pty::openpty(size.as_ref(), None).context("cannot open a pseudo-terminal")?;
        let master = std::fs::File::from(pty.master);
        let reader = master
            .try_clone()
            .context("cannot open a pseudo-terminal")?;
        let output = std::thread::spawn(move || copy_output(reader));
        let mut restore = None;
        if interactive {
            let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal")?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
                .context("cannot set the terminal to raw mode")?;
            restore = Some(saved);
            // Not joined: it blocks reading our input until a key after
            // the command ends, which then finds the terminal gone.
            std::thread::spawn(move || copy_input(master));
        }
        Ok(Session {
            slave: Some(pty.slave),
            output: Some(output),
            restore,
        })
    }

    /// The fd the command gets as standard input, output and error.
    pub(crate) fn slave(&self) -> RawFd {
        self.slave.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // With the last slave fd closed, reading the master ends (EIO)
        // once what the command wrote is read.
        self.slave = None;
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        if let Some(saved) = self.restore.take() {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
        }
    }
}

fn window_size(fd: RawFd) -> Option<nix::pty::Winsize> {
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_row > 0).then_some(size)
}

fn copy_output(mut master: std::fs::File) {
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 8192];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

fn copy_input(mut master: std::fs::File) {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}
