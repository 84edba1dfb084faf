//! Rootless estiba: an ordinary user's estiba moves itself into a user
//! namespace of its own before it does anything else, and from there on
//! runs as it does for root (see DESIGN.md, security model).
//!
//! [`enter`] is called first thing in `main`, while the process is still
//! single-threaded (the kernel refuses `unshare(CLONE_NEWUSER)` to a
//! threaded process). The namespace maps root to the user and, when
//! `/etc/subuid` and `/etc/subgid` give the user ranges, uids and gids
//! 1…N to those ranges, through Debian's `newuidmap`/`newgidmap` (package
//! `uidmap`), which a helper process forked before the `unshare` runs for
//! it from outside the namespace, as Podman and Buildah do. Without ranges
//! the user's own ids are the only ones mapped (the kernel lets a process
//! write that map itself): images whose files belong to other users then
//! fail at the first such file, naming it ([`unmapped_owner_hint`]).
//!
//! Inside the namespace estiba is uid 0 with every capability over what the
//! namespace owns: the build containers' namespaces, overlayfs (with
//! `userxattr`: its whiteouts stay 0/0 character devices, which the kernel
//! lets anyone make, and its opaque directories are marked with
//! `user.overlay.opaque`, see [`overlay_xattr_prefix`]), tmpfs, proc.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

/// Where the kernel says how many user namespaces may exist (0: none).
const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";

/// Debian's and Ubuntu's own switch for unprivileged user namespaces.
const UNPRIVILEGED_USERNS_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";

/// How this estiba process came to run: as root of the host, or rootless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    /// The user's uid outside the namespace.
    pub uid: u32,
    /// The user's name (or uid, when the passwd database has none).
    pub user: String,
    /// Whether only the user's own ids are mapped (no subordinate ranges).
    pub single_mapping: bool,
}

static ENTERED: OnceLock<Entered> = OnceLock::new();

/// Why estiba could not enter its user namespace. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    /// The kernel allows no user namespaces.
    #[error(
        "estiba runs rootless in a user namespace, but this kernel allows none \
         ({MAX_USER_NAMESPACES} is 0): as root, run `sysctl -w user.max_user_namespaces=15000` \
         (and set it in /etc/sysctl.d to keep it), or run estiba as root (with \
         `--isolation chroot` where namespaces are refused too)"
    )]
    Disabled,
    /// Debian's `kernel.unprivileged_userns_clone` is 0.
    #[error(
        "estiba runs rootless in a user namespace, but this kernel allows them only to root \
         ({UNPRIVILEGED_USERNS_CLONE} is 0): as root, run \
         `sysctl -w kernel.unprivileged_userns_clone=1`, or run estiba as root (with \
         `--isolation chroot` where namespaces are refused too)"
    )]
    UnprivilegedDisabled,
    /// `unshare(CLONE_NEWUSER)` failed for another reason (a seccomp
    /// profile, a container runtime that forbids it).
    #[error(
        "cannot create a user namespace for a rootless build; if estiba runs in a container, \
         its seccomp or AppArmor profile must allow unshare(CLONE_NEWUSER); or run estiba as \
         root there with `--isolation chroot` (no namespaces, weaker isolation)"
    )]
    Unshare(#[source] io::Error),
    /// Setting up the helper or the maps failed.
    #[error("cannot {what} for the rootless user namespace")]
    Setup {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `newuidmap` or `newgidmap` refused the map.
    #[error(
        "{tool} refused to map {user}'s range {range} (from {file}): {said}; \
         check that the range in {file} is {user}'s and that {tool} is installed setuid root \
         (Debian package uidmap)"
    )]
    Map {
        /// `newuidmap` or `newgidmap`.
        tool: &'static str,
        /// The user.
        user: String,
        /// `start:count`.
        range: String,
        /// `/etc/subuid` or `/etc/subgid`.
        file: &'static str,
        /// What the tool printed.
        said: String,
    },
}

/// The identity estiba works for, once [`enter`] ran: `None` for root of
/// the host (or anyone [`enter`] left alone).
pub fn entered() -> Option<&'static Entered> {
    ENTERED.get()
}

/// Whether estiba works for the host's root: the store and configuration
/// defaults are root's then (`/var/lib/estiba`, `/etc/estiba`).
pub fn for_host_root() -> bool {
    ENTERED.get().is_none() && nix::unistd::geteuid().is_root()
}

/// Whether this process is in a user namespace other than the host's: its
/// uid map is not the identity over every id. Then overlayfs is mounted
/// with `userxattr` and opaque directories carry `user.overlay.opaque`.
pub fn in_user_namespace() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_identity_map(&map),
        Err(_) => false,
    })
}

fn is_identity_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    lines.len() == 1 && lines[0] == ["0", "0", "4294967295"]
}

/// The prefix of overlayfs's own xattrs in this namespace: `trusted.overlay.`
/// for the host's root, `user.overlay.` in a user namespace (`userxattr`).
pub fn overlay_xattr_prefix() -> &'static str {
    if in_user_namespace() {
        "user.overlay."
    } else {
        "trusted.overlay."
    }
}

/// What to say when a file cannot be given an owner the namespace does not
/// map: how to add a range, as Buildah's message says.
pub fn unmapped_owner_hint() -> String {
    let user = ENTERED
        .get()
        .map(|e| e.user.clone())
        .unwrap_or_else(|| "your user".to_owned());
    format!(
        "estiba runs rootless and this user namespace does not map that id; give {user} \
         subordinate ids in /etc/subuid and /etc/subgid (as root: usermod --add-subuids \
         100000-165535 --add-subgids 100000-165535 {user}), and install newuidmap and \
         newgidmap (Debian package uidmap)"
    )
}

/// One `/etc/subuid` or `/etc/subgid` range: first outside id and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first id outside the namespace.
    pub start: u64,
    /// How many.
    pub count: u64,
}

/// The ranges a subordinate id file gives the user `name` (or uid `uid`),
/// in file order, as shadow's `newuidmap` reads it.
pub fn ranges_in(text: &str, name: &str, uid: u32) -> Vec<Range> {
    let uid = uid.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.trim().splitn(3, ':');
            let owner = fields.next()?;
            let start = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            (owner == name || owner == uid).then_some(Range { start, count })
        })
        .filter(|r| r.count > 0)
        .collect()
}

fn ranges(file: &str, name: &str, uid: u32) -> Vec<Range> {
    fs::read_to_string(file)
        .map(|text| ranges_in(&text, name, uid))
        .unwrap_or_default()
}

/// Moves an ordinary user's estiba into its user namespace (see the module
/// doc); does nothing for root. Call before any thread starts.
pub fn enter() -> Result<(), RootlessError> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(());
    }
    let gid = nix::unistd::getegid();
    if read_number(MAX_USER_NAMESPACES) == Some(0) {
        return Err(RootlessError::Disabled);
    }
    if read_number(UNPRIVILEGED_USERNS_CLONE) == Some(0) {
        return Err(RootlessError::UnprivilegedDisabled);
    }
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let sub_uids = ranges("/etc/subuid", &user, uid.as_raw());
    let sub_gids = ranges("/etc/subgid", &user, uid.as_raw());
    let tools = find_tool("newuidmap").zip(find_tool("newgidmap"));
    let single_mapping = sub_uids.is_empty() || sub_gids.is_empty() || tools.is_none();
    match tools.filter(|_| !single_mapping) {
        Some((newuidmap, newgidmap)) => {
            let maps = [
                (
                    newuidmap,
                    "newuidmap",
                    "/etc/subuid",
                    uid.as_raw(),
                    sub_uids,
                ),
                (
                    newgidmap,
                    "newgidmap",
                    "/etc/subgid",
                    gid.as_raw(),
                    sub_gids,
                ),
            ];
            map_with_helper(&user, maps)?;
        }
        None => map_self(uid, gid)?,
    }
    // The ids the namespace sees; no capability is lost (the kernel keeps
    // a uid-0 process's set across these calls).
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(root.1, root.1, root.1).map_err(|e| setup("become gid 0", e))?;
    nix::unistd::setresuid(root.0, root.0, root.0).map_err(|e| setup("become uid 0", e))?;
    let _ = ENTERED.set(Entered {
        uid: uid.as_raw(),
        user,
        single_mapping,
    });
    Ok(())
}

fn setup(what: &str, e: impl Into<io::Error>) -> RootlessError {
    RootlessError::Setup {
        what: what.to_owned(),
        source: e.into(),
    }
}

fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `name` in `$PATH`, else in `/usr/bin` and `/usr/sbin` (a CI job's
/// `PATH` may be short).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Only the user's own ids, written by the process itself: the kernel
/// allows that map unprivileged once `setgroups` is denied.
fn map_self(uid: Uid, gid: Gid) -> Result<(), RootlessError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| RootlessError::Unshare(e.into()))?;
    let write = |file: &str, text: String| {
        fs::write(file, text).map_err(|e| setup(&format!("write {file}"), e))
    };
    write("/proc/self/setgroups", "deny".to_owned())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))
}

type MapTool = (PathBuf, &'static str, &'static str, u32, Vec<Range>);

/// The full map, written by `newuidmap` and `newgidmap` from a helper
/// forked before the `unshare`: they must run outside the namespace.
fn map_with_helper(user: &str, maps: [MapTool; 2]) -> Result<(), RootlessError> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup("create a pipe", e));
    let (go_r, go_w) = pipe()?;
    let (said_r, said_w) = pipe()?;
    let pid = nix::unistd::getpid().as_raw();
    // SAFETY: estiba is still single-threaded (see `enter`), so the child
    // may allocate and spawn processes as any program does.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(go_w);
            drop(said_r);
            let code = helper(pid, &maps, go_r, said_w);
            // SAFETY: _exit has no preconditions; it runs none of the
            // parent's exit handlers in this copy.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(go_r);
            drop(said_w);
            let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER);
            let mut go = fs::File::from(go_w);
            // The helper maps only after the word; without it, it exits.
            if unshared.is_ok() {
                let _ = go.write_all(b"1");
            }
            drop(go);
            let mut said = String::new();
            let _ = fs::File::from(said_r).read_to_string(&mut said);
            let status = nix::sys::wait::waitpid(child, None);
            unshared.map_err(|e| RootlessError::Unshare(e.into()))?;
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(_) => Err(refusal(user, &maps, &said)),
                Err(e) => Err(setup("wait for the newuidmap helper", e)),
            }
        }
        Err(e) => Err(setup("fork the newuidmap helper", e)),
    }
}

/// The helper's message is `INDEX:what the tool printed`.
fn refusal(user: &str, maps: &[MapTool; 2], said: &str) -> RootlessError {
    let (index, text) = said.split_once(':').unwrap_or(("0", said));
    let (_, tool, file, _, ranges) = &maps[usize::from(index == "1")];
    RootlessError::Map {
        tool,
        user: user.to_owned(),
        range: ranges
            .iter()
            .map(|r| format!("{}:{}", r.start, r.count))
            .collect::<Vec<_>>()
            .join(","),
        file,
        said: text.trim().to_owned(),
    }
}

fn helper(pid: i32, maps: &[MapTool; 2], go: OwnedFd, said: OwnedFd) -> i32 {
    let mut byte = [0u8; 1];
    if !matches!(fs::File::from(go).read(&mut byte), Ok(1)) {
        return 1;
    }
    let mut said = fs::File::from(said);
    for (i, (tool, _, _, id, ranges)) in maps.iter().enumerate() {
        let mut command = Command::new(tool);
        command
            .arg(pid.to_string())
            .args(["0", &id.to_string(), "1"]);
        let mut inside = 1u64;
        for r in ranges {
            command.args([inside.to_string(), r.start.to_string(), r.count.to_string()]);
            inside += r.count;
        }
        match command.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let _ = write!(said, "{i}:{}", String::from_utf8_lossy(&out.stderr));
                return 1;
            }
            Err(e) => {
                let _ = write!(said, "{i}:cannot run {}: {e}", tool.display());
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid_in_file_order() {
        let text = "# comment\nother:100000:65536\nbuild:165536:65536\n1001:300000:10\nbuild:1:0\n";
        assert_eq!(
            ranges_in(text, "build", 1001),
            [
                Range {
                    start: 165536,
                    count: 65536
                },
                Range {
                    start: 300000,
                    count: 10
                }
            ]
        );
        assert!(ranges_in(text, "nobody", 65534).is_empty());
    }

    #[test]
    fn only_the_full_identity_map_is_the_hosts() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_map("0 1000 1\n"));
    }
}
