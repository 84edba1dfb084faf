//! The system calls `std` does not offer, in one place: extended
//! attributes, timestamps, mount flags, capabilities, pidfds, the loopback
//! interface, signal and descriptor state for `execve`. Each goes through
//! `xattr`, `rustix` or `nix`; the few left on raw `libc` have no safe
//! wrapper there and say why they are sound.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::mount::MsFlags;
use rustix::thread::{CapabilitySet, CapabilitySets};

/// Docker's default capability set (moby `oci/caps/defaults.go`), by number.
pub(crate) const DEFAULT_CAPABILITIES: [u32; 14] = [
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// [`DEFAULT_CAPABILITIES`] as a bit mask (`0xa80425fb`).
pub(crate) fn default_capability_mask() -> u64 {
    DEFAULT_CAPABILITIES
        .iter()
        .fold(0, |mask, cap| mask | (1u64 << cap))
}

/// Removes every capability outside `keep` from the bounding set, so that
/// nothing the step execs can gain it.
pub(crate) fn drop_bounding_set(keep: u64) -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    for cap in 0..=last {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // By number, not by name: a capability newer than rustix goes too.
        let one = CapabilitySet::from_bits_retain(1u64 << cap);
        match rustix::thread::remove_capability_from_bounding_set(one) {
            // A capability this kernel does not know.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// This process's permitted set: every capability it can keep (`RUN
/// --security=insecure` keeps them all).
pub(crate) fn permitted_capabilities() -> io::Result<u64> {
    Ok(rustix::thread::capabilities(None)?.permitted.bits())
}

/// Sets the effective and permitted sets to `caps`, the inheritable and
/// ambient sets to nothing (as Docker since 20.10.14).
pub(crate) fn set_capabilities(caps: u64) -> io::Result<()> {
    let caps = CapabilitySet::from_bits_retain(caps);
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: caps,
            permitted: caps,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    match rustix::thread::clear_ambient_capability_set() {
        // A kernel without ambient capabilities (before 4.3).
        Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Asks for `SIGKILL` when the parent dies. Credential changes reset it,
/// so it is armed again right before `execve`.
pub(crate) fn kill_me_with_parent() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
}

/// Whether the other end of a pipe is closed (its holder is gone).
pub(crate) fn hung_up(fd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&now)).unwrap_or(0);
    ready > 0 && fds[0].revents().contains(PollFlags::HUP)
}

/// Signal dispositions and mask back to their defaults: the Rust runtime
/// ignores SIGPIPE, and ignored signals survive `execve`.
pub(crate) fn reset_signals() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    // By number: nix's `Signal` does not name the real-time signals.
    for signal in 1..65 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL runs no code of ours, so no handler can see
        // half-updated state; numbers the C library reserves or the kernel
        // lacks only fail with EINVAL, which is harmless.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    // An empty mask cannot fail to apply.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Marks every descriptor from 3 up close-on-exec, so the command inherits
/// only its standard streams (estiba itself may have inherited others, such
/// as a make jobserver's pipes).
pub(crate) fn close_on_exec_from_3() -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // Neither nix nor rustix wraps close_range (Linux 5.11+).
    // SAFETY: with CLOSE_RANGE_CLOEXEC the kernel only sets a flag on
    // descriptors; none is closed, so no owner's descriptor goes stale.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // A closed one (the directory listing's own) only yields EBADF.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Ok(())
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings `lo` up in the current network namespace (what `ip link set lo
/// up` does; the kernel then gives it 127.0.0.1 and ::1).
pub(crate) fn bring_up_loopback() -> io::Result<()> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let socket = socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut name = [0; libc::IFNAMSIZ];
    name[0] = b'l' as libc::c_char;
    name[1] = b'o' as libc::c_char;
    let mut req = IfReqFlags {
        name,
        flags: 0,
        _pad: [0; 22],
    };
    let fd = socket.as_fd().as_raw_fd();
    // Neither nix nor rustix wraps the interface-flag ioctls.
    // SAFETY: `req` has the layout of `struct ifreq` (name, then the flags
    // member of the union, padded to the union's full size), so the kernel
    // reads and writes only memory we own; `fd` is open for both calls.
    unsafe {
        check(libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req))?;
        req.flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req))?;
    }
    Ok(())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A pidfd for `pid`: readable once the process exits (Linux 5.3+).
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Whether an xattr call failed because the file system keeps none.
fn no_xattrs_here(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP)
}

/// The names of a file's extended attributes (not following a symlink);
/// none on a file system without them.
pub(crate) fn xattr_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    match xattr::list(path) {
        Ok(names) => Ok(names.map(|n| n.into_vec()).collect()),
        Err(e) if no_xattrs_here(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One extended attribute's value (not following a symlink), `None` if it
/// is not set or the file system keeps none.
pub(crate) fn xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    match xattr::get(path, OsStr::from_bytes(name)) {
        Err(e) if no_xattrs_here(&e) => Ok(None),
        other => other,
    }
}

/// The extended attributes of `path` (not following a symlink) whose names
/// `keep` accepts, sorted by name; none on a file system without them, and
/// one removed since it was listed is left out.
///
/// Called for every file of a context and a layer: a file without xattrs
/// costs one `llistxattr` into a stack buffer and no allocation.
pub(crate) fn read_xattrs(
    path: &Path,
    keep: impl Fn(&[u8]) -> bool,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if no_xattrs_here(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if !keep(name.as_bytes()) {
            continue;
        }
        if let Some(value) = xattr(path, name.as_bytes())? {
            out.push((name.into_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets access and modification times, (seconds, nanoseconds), not
/// following symlinks.
pub(crate) fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let ts = |(sec, nsec): (i64, i64)| TimeSpec::new(sec as _, nsec as _);
    utimensat(
        None,
        path,
        &ts(atime),
        &ts(mtime),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Makes every mount of this process's (new) mount namespace private, so
/// nothing mounted from here on reaches the namespace it was copied from.
/// Allocates nothing: safe between fork and exec.
pub(crate) fn make_mounts_private() -> nix::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Whether this user namespace forbids `setgroups` (`/proc/self/setgroups`
/// says `deny`, as an unprivileged process's own map requires).
pub(crate) fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// The mount flags (`MS_NOSUID`, …) of the mount that holds `path`.
pub(crate) fn mount_flags(path: &Path) -> io::Result<MsFlags> {
    use rustix::fs::StatVfsMountFlags as St;
    // rustix's `ST_*` values are the kernel's on every libc (musl's has no
    // `ST_RELATIME`).
    let st = rustix::fs::statvfs(path)?;
    let mut flags = MsFlags::empty();
    for (st_flag, ms_flag) in [
        (St::NOSUID, MsFlags::MS_NOSUID),
        (St::NODEV, MsFlags::MS_NODEV),
        (St::NOEXEC, MsFlags::MS_NOEXEC),
        (St::NOATIME, MsFlags::MS_NOATIME),
        (St::NODIRATIME, MsFlags::MS_NODIRATIME),
        (St::RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.f_flag.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_capabilities_are_dockers() {
        assert_eq!(default_capability_mask(), 0xa804_25fb);
    }
}
