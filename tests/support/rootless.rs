//! Rootless test users: the tests run as root (CI) and switch to an
//! ordinary user made here to run estiba as it, with `setpriv`. Making a
//! user is idempotent and touches no existing user: the users are estiba's
//! own (`estiba-rootless` with `/etc/subuid` and `/etc/subgid` ranges,
//! `estiba-single` with none), made by `useradd` when missing, their ranges
//! appended once, after every range already there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The user with subordinate ranges.
pub(crate) const RANGED: &str = "estiba-rootless";
/// The user without any: estiba maps only its own ids.
pub(crate) const SINGLE: &str = "estiba-single";
/// How many subordinate ids the ranged user gets (uids 1…65536 inside).
const RANGE: u64 = 65536;

static MAKING: Mutex<()> = Mutex::new(());

/// An ordinary user and a temp dir it owns, with `HOME` inside.
pub(crate) struct User {
    pub(crate) name: &'static str,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    dir: tempfile::TempDir,
}

/// Why rootless tests cannot run here, if they cannot.
pub(crate) fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the rootless tests make a test user and need root".to_owned());
    }
    for tool in ["useradd", "setpriv", "newuidmap", "newgidmap"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is missing (scripts/test-deps installs it)"));
        }
    }
    None
}

/// The end of the last range in a subordinate id file (100000 if none).
fn after_last_range(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':').skip(1);
            let start: u64 = f.next()?.parse().ok()?;
            let count: u64 = f.next()?.parse().ok()?;
            Some(start + count)
        })
        .max()
        .unwrap_or(100_000)
        .max(100_000)
}

fn ensure_range(file: &str, name: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if text.lines().any(|l| l.split(':').next() == Some(name)) {
        return;
    }
    let start = after_last_range(&text);
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{name}:{start}:{RANGE}\n"));
    std::fs::write(file, out).unwrap_or_else(|e| panic!("write {file}: {e}"));
}

fn ensure_user(name: &str) -> (u32, u32) {
    if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
        return (u.uid.as_raw(), u.gid.as_raw());
    }
    let out = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .arg(name)
        .output()
        .expect("useradd runs");
    // 9: made meanwhile by another test binary.
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let u = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("user {name} after useradd"));
    (u.uid.as_raw(), u.gid.as_raw())
}

impl User {
    /// The test user `name` (made if missing; [`RANGED`] gets its ranges)
    /// and a fresh temp dir it owns.
    pub(crate) fn new(name: &'static str) -> User {
        let (uid, gid) = {
            let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
            let ids = ensure_user(name);
            if name == RANGED {
                ensure_range("/etc/subuid", name);
                ensure_range("/etc/subgid", name);
            }
            ids
        };
        let dir = tempfile::Builder::new()
            .prefix("estiba-rootless-")
            .tempdir()
            .expect("tempdir");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        let user = User {
            name,
            uid,
            gid,
            dir,
        };
        user.mkdir("home");
        // The user may not reach the build's binary (a clone under /root,
        // 0700): a link in its own dir (or a copy, across file systems).
        let bin = user.bin();
        std::fs::hard_link(env!("CARGO_BIN_EXE_estiba"), &bin)
            .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_estiba"), &bin).map(drop))
            .expect("the estiba binary in the user's dir");
        user
    }

    /// The estiba binary under test, where the user can run it.
    pub(crate) fn bin(&self) -> PathBuf {
        self.dir().join("estiba")
    }

    /// The user's temp dir.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its `HOME`.
    pub(crate) fn home(&self) -> PathBuf {
        self.dir().join("home")
    }

    /// The store estiba picks for it by default (`$XDG_DATA_HOME/estiba`).
    pub(crate) fn default_store(&self) -> PathBuf {
        self.home().join("data/estiba")
    }

    /// Makes `rel` (and its parents) in the temp dir, owned by the user.
    pub(crate) fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.dir().join(rel);
        std::fs::create_dir_all(&path).expect("mkdir");
        self.give(&path);
        path
    }

    /// Gives the user everything under `path`.
    pub(crate) fn give(&self, path: &Path) {
        for entry in walkdir_all(path) {
            std::os::unix::fs::lchown(&entry, Some(self.uid), Some(self.gid)).expect("chown");
        }
    }

    /// `estiba ARGS` as this user: its ids and groups, a clean environment
    /// with `HOME` and `XDG_DATA_HOME` in its temp dir.
    pub(crate) fn estiba(&self) -> Command {
        self.estiba_after(Command::new("setpriv"))
    }

    /// [`User::estiba`] in a private mount namespace where `/dev/net/tun`
    /// has `mode` (0666 in most distributions, 0600 on some hosts): pasta,
    /// which the default RUN network needs, opens it as the user. The
    /// host's node stays as it is.
    #[allow(dead_code)]
    pub(crate) fn estiba_with_tun(&self, mode: u32) -> Command {
        let tun = self.dir().join(format!("tun-{mode:o}"));
        if !tun.exists() {
            nix::sys::stat::mknod(
                &tun,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(mode),
                nix::sys::stat::makedev(10, 200),
            )
            .expect("mknod tun");
            std::fs::set_permissions(&tun, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .expect("chmod tun");
        }
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "sh", "-c"])
            .arg(format!(
                "mount --make-rprivate / && mount --bind {} /dev/net/tun && exec \"$@\"",
                tun.display()
            ))
            .args(["sh", "setpriv"]);
        self.estiba_after(cmd)
    }

    fn estiba_after(&self, mut cmd: Command) -> Command {
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(self.bin())
            .env_clear()
            .env("HOME", self.home())
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("USER", self.name);
        cmd
    }
}

/// `path` and everything below it (not following symlinks).
fn walkdir_all(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                out.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// The owner of `path` as the host sees it.
#[allow(dead_code)]
pub(crate) fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).expect("stat");
    (m.uid(), m.gid())
}
