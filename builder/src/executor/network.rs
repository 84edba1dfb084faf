//! The default network of a RUN step: a private network namespace with
//! outbound connections through Debian's `pasta` (package `passt`), as
//! `docker build` gives a step its own namespace behind NAT.
//!
//! Why pasta: it copies the host's addresses and routes into the namespace
//! (no new network in a private address range, no bridge, no iptables),
//! starts in milliseconds, needs no daemon, and forwards TCP/UDP through
//! ordinary sockets of the host, so outbound traffic follows the host's
//! routes and DNS. slirp4netns would work too, but it numbers its network
//! 10.0.2.0/24 and is slower. What a step must not reach is the host's
//! loopback: pasta maps the gateway address to it unless `--no-map-gw`,
//! and forwards loopback ports both ways unless `-t/-u/-T/-U none`.
//!
//! pasta is started after the init has made the namespace and joins it by
//! a bind mount of `/proc/PID/ns/net`, made in a mount namespace of
//! pasta's own (so it vanishes with pasta): pasta keeps few capabilities,
//! and the ptrace rules would refuse it `/proc/PID/ns/*` of a process with
//! more. The step's command waits (on [`GO_FD`]) until the namespace has a
//! default route, or runs with only `lo` and a warning when pasta is
//! missing or fails.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use super::Publish;

/// The init's end of the go pipe: one byte, [`READY`] or [`WITHOUT`].
pub(super) const GO_FD: RawFd = 4;
/// The namespace is configured.
const READY: u8 = b'1';
/// pasta is missing or failed: the step has only `lo`.
const WITHOUT: u8 = b'0';

/// How long pasta may take to configure the namespace.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The parent's end of the go pipe and the init's, the latter at a high
/// fd so the init's fd shuffle (status pipe to fd 3) cannot clobber it.
pub(super) fn go_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let high = nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let high = unsafe { OwnedFd::from_raw_fd(high) };
    Ok((high, w))
}

/// The init's side: waits for the parent's word. `Ok(true)` when the
/// user-mode network is up, `Ok(false)` when the step runs with `lo` only.
pub(super) fn wait_for_go() -> io::Result<bool> {
    // SAFETY: GO_FD was set up by the parent for this init and nothing
    // else in it owns the descriptor.
    let mut go = unsafe { File::from_raw_fd(GO_FD) };
    let mut byte = [0u8; 1];
    let n = io::Read::read(&mut go, &mut byte)?;
    match (n, byte[0]) {
        (1, READY) => Ok(true),
        (1, WITHOUT) => Ok(false),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "estiba went away before the network was set up",
        )),
    }
}

/// A running pasta serving one step's namespace; killed when dropped.
#[derive(Debug)]
pub(super) struct UserNet {
    /// `None` once dropped.
    child: Option<Child>,
}

/// The pids of the running pastas: [`stop_all`] kills them. A pid leaves
/// the list before its process is reaped, so it is never a stranger's.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

impl UserNet {
    fn new(child: Child) -> UserNet {
        if let Ok(mut running) = RUNNING.lock() {
            running.push(child.id());
        }
        UserNet { child: Some(child) }
    }

    /// pasta's exit status if it has exited.
    fn exited(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut running) = RUNNING.lock() {
            running.retain(|&pid| pid != child.id());
        }
        let _ = child.kill();
        // The kernel takes tens of milliseconds to tear down pasta's
        // namespaces; the step need not wait: a thread reaps it (if no
        // thread can start, it stays a zombie until estiba exits).
        let _ = std::thread::Builder::new()
            .name("pasta-reaper".to_owned())
            .spawn(move || {
                let _ = child.wait();
            });
    }
}

/// Kills every pasta this process runs, for an exit that cannot wait for
/// the steps (Ctrl-C). pasta changes its credentials, which clears the
/// parent-death signal it was started with, so it would outlive estiba.
pub(super) fn stop_all() {
    if let Ok(running) = RUNNING.lock() {
        for &pid in running.iter() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Starts pasta for the namespace of `init_pid`, waits until it has
/// configured it, and tells the init to go on. Returns the running pasta,
/// or `None` and a warning for the step's output when the step gets only
/// `lo`.
pub(super) fn connect(
    init_pid: u32,
    publish: &[Publish],
    scratch: &Path,
    go: OwnedFd,
) -> io::Result<(Option<UserNet>, Option<String>)> {
    let mut go = File::from(go);
    let (net, warning) = match start(init_pid, publish, scratch) {
        Ok(mut net) => match wait_ready(&mut net, init_pid, scratch) {
            Ok(()) => (Some(net), None),
            Err(reason) => (None, Some(reason)),
        },
        Err(reason) => (None, Some(reason)),
    };
    go.write_all(&[if net.is_some() { READY } else { WITHOUT }])?;
    let warning = warning.map(|reason| {
        // Rootless, pasta opens /dev/net/tun as the user.
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun");
        let rootless = crate::rootless::in_user_namespace();
        format!(
            "estiba: warning: no outbound network for this step ({reason}); it has only lo. \
             {} or use --network host or none.\n",
            advice(&reason, rootless, tun.err().as_ref())
        )
    });
    Ok((net, warning))
}

/// Why a step has no network when there is no pasta: then the advice is to
/// install it, whatever else is missing.
const NOT_INSTALLED: &str = "pasta is not installed";

/// What to do about a step left without a network for `reason`: install
/// pasta when it is missing; rootless, open up `/dev/net/tun` when the user
/// cannot (`tun`, the error opening it); else look at pasta itself.
fn advice(reason: &str, rootless: bool, tun: Option<&io::Error>) -> String {
    match tun {
        _ if reason == NOT_INSTALLED => "Install pasta (Debian package passt)".to_owned(),
        Some(e) if rootless => format!(
            "Rootless, pasta needs /dev/net/tun, which you cannot open ({e}): as root, \
             chmod 0666 /dev/net/tun (most distributions' mode)"
        ),
        _ => "Check pasta (Debian package passt)".to_owned(),
    }
}

fn log_path(scratch: &Path) -> PathBuf {
    scratch.join("pasta.log")
}

/// pasta's `-t`/`-u` options: the published ports, else none.
fn port_options(publish: &[Publish]) -> Vec<String> {
    let mut options = Vec::new();
    for (flag, udp) in [("-t", false), ("-u", true)] {
        let specs: Vec<String> = publish
            .iter()
            .filter(|p| p.udp == udp)
            .map(|p| {
                let ports = format!("{}:{}", p.host_port, p.container_port);
                match p.host_ip {
                    Some(ip) => format!("{ip}/{ports}"),
                    None => ports,
                }
            })
            .collect();
        if specs.is_empty() {
            options.extend([flag.to_owned(), "none".to_owned()]);
        }
        for spec in specs {
            options.extend([flag.to_owned(), spec]);
        }
    }
    options
}

/// Spawns `pasta` in the foreground, joined to the step's namespace.
fn start(init_pid: u32, publish: &[Publish], scratch: &Path) -> Result<UserNet, String> {
    let ns_file = scratch.join("netns");
    File::create(&ns_file).map_err(|e| format!("cannot create {}: {e}", ns_file.display()))?;
    let log = File::create(log_path(scratch)).map_err(|e| format!("cannot log pasta: {e}"))?;
    let ns_source = CString::new(format!("/proc/{init_pid}/ns/net"))
        .map_err(|e| format!("a path with NUL: {e}"))?;
    let ns_target = CString::new(ns_file.as_os_str().as_bytes())
        .map_err(|e| format!("a path with NUL: {e}"))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot log pasta: {e}"))?;
    let mut command = Command::new("pasta");
    command
        .args(["--config-net", "--foreground", "--quiet"])
        // pasta still drops every capability it does not need and
        // sandboxes itself; as `nobody` it could not join the namespace.
        .args(["--runas", "0:0"])
        // Nothing forwarded into the step but its published ports, nothing
        // from its loopback to the host's, and the gateway address not
        // mapped to the host.
        .args(port_options(publish))
        .args(["-T", "none", "-U", "none"])
        .arg("--no-map-gw")
        .arg("--netns")
        .arg(&ns_file)
        .arg("--netns-only")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: between fork and exec only async-signal-safe system calls,
    // on strings allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // pasta runs in the foreground as our child; this signal only
            // covers the moments until it changes its credentials (then
            // `stop_all` and the drop of `UserNet` end it).
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            crate::sys::make_mounts_private()?;
            mount(
                Some(ns_source.as_c_str()),
                ns_target.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    match command.spawn() {
        Ok(child) => Ok(UserNet::new(child)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NOT_INSTALLED.to_owned()),
        Err(e) => Err(format!("cannot start pasta: {e}")),
    }
}

/// Waits until the namespace has a default route (pasta adds it last), or
/// pasta exits, or [`SETUP_TIMEOUT`] passes.
fn wait_ready(net: &mut UserNet, init_pid: u32, scratch: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        if has_default_route(init_pid) {
            return Ok(());
        }
        match net.exited() {
            Ok(Some(status)) => {
                let log = std::fs::read_to_string(log_path(scratch)).unwrap_or_default();
                let said = log.lines().rev().find(|l| !l.trim().is_empty());
                return Err(match said {
                    Some(line) => format!("pasta {status}: {}", line.trim()),
                    None => format!("pasta {status}"),
                });
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for pasta: {e}")),
        }
        if started.elapsed() > SETUP_TIMEOUT {
            return Err(format!(
                "pasta did not configure the network in {}s",
                SETUP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Whether the network namespace of `pid` has an IPv4 or IPv6 default route.
fn has_default_route(pid: u32) -> bool {
    let v4 = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap_or_default();
    let v6 = std::fs::read_to_string(format!("/proc/{pid}/net/ipv6_route")).unwrap_or_default();
    default_route_in(&v4, &v6)
}

/// `/proc/net/route` has a line with destination and mask 0, or
/// `/proc/net/ipv6_route` one with destination `::/0` through a device
/// other than `lo`.
fn default_route_in(v4: &str, v6: &str) -> bool {
    let ipv4 = v4.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000"
    });
    let ipv6 = v6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 9
            && fields[0].bytes().all(|b| b == b'0')
            && fields[1] == "00"
            && fields[9] != "lo"
    });
    ipv4 || ipv6
}

/// The resolver configuration of a step on the private network: the
/// host's, without loopback name servers (unreachable from the step);
/// Google's public servers when none is left, as Docker does.
pub(super) fn private_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            let loopback = addr
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
            if loopback {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_fits_why_there_is_no_network() {
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        // Missing pasta: install it, rootless or not, tun or no tun.
        for (rootless, tun) in [(true, Some(&denied)), (false, None)] {
            let said = advice(NOT_INSTALLED, rootless, tun);
            assert!(said.starts_with("Install pasta"), "{said}");
        }
        let said = advice("pasta exit status: 1", true, Some(&denied));
        assert!(said.contains("chmod 0666 /dev/net/tun"), "{said}");
        // pasta is there and the tun device opens: pasta's own error counts.
        let said = advice("pasta exit status: 1", true, None);
        assert!(said.starts_with("Check pasta"), "{said}");
        let said = advice("pasta exit status: 1", false, Some(&denied));
        assert!(said.starts_with("Check pasta"), "{said}");
    }

    #[test]
    fn loopback_name_servers_are_dropped_and_googles_added_when_none_is_left() {
        assert_eq!(
            private_resolv_conf("search lan\nnameserver 127.0.0.53\noptions edns0\n"),
            "search lan\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            private_resolv_conf("nameserver ::1\nnameserver 192.0.2.53\n"),
            "nameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn published_ports_become_pastas_forwards() {
        assert_eq!(port_options(&[]), ["-t", "none", "-u", "none"]);
        let publish = [
            Publish {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                udp: false,
            },
            Publish {
                host_ip: Some("127.0.0.1".parse().expect("ip")),
                host_port: 5353,
                container_port: 53,
                udp: true,
            },
        ];
        assert_eq!(
            port_options(&publish),
            ["-t", "8080:80", "-u", "127.0.0.1/5353:53"]
        );
    }

    #[test]
    fn a_default_route_is_found_in_either_table() {
        let header =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n";
        let v4 = format!("{header}eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(default_route_in(&v4, ""));
        let subnet =
            format!("{header}eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        assert!(!default_route_in(&subnet, ""));
        let lo6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert!(!default_route_in(header, lo6));
        let eth6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert!(default_route_in(header, eth6));
    }
}
