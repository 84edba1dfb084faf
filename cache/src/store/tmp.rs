//! Temp entries under `estiba/tmp`, and how the store tells a live one from
//! what a killed command left behind.
//!
//! Every entry is named `PREFIX-PID.START-N-RANDOM`: the process that made
//! it (its pid and its start time, field 22 of `/proc/PID/stat`, so a reused
//! pid is not taken for the owner) is in its name from the moment it
//! exists, and the owner holds an `flock` on it for as long as it uses it.
//! An entry is dead when its owner is gone and no one holds its lock; only
//! dead entries are ever removed, so any command, holding the shared store
//! lock, can clean up after killed ones while other builds go on
//! ([`Store::remove_leftovers`]). Garbage collection, under the exclusive
//! lock, also removes unlocked entries whose name names no owner.

use super::fsutil::{self, io_err, LockKind};
use super::gc::PruneReport;
use super::{Store, StoreError};
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process a temp entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pid: u32,
    /// Clock ticks after boot the process started at; 0 when `/proc` could
    /// not say.
    start: u64,
}

impl Owner {
    /// This process.
    pub(crate) fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start: start_time(pid).ok().flatten().unwrap_or(0),
            }
        })
    }

    /// The owner a temp entry's name records, if it records one.
    pub(crate) fn of_name(name: &str) -> Option<Owner> {
        let mut parts = name.rsplitn(4, '-');
        let (_random, _n, owner, _prefix) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let (pid, start) = owner.split_once('.')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }

    /// Whether the process still runs (or cannot be proven gone).
    pub(crate) fn is_alive(self) -> bool {
        match start_time(self.pid) {
            Ok(None) => false,
            Ok(Some(start)) => self.start == 0 || start == self.start,
            // Unreadable /proc: assume the owner lives rather than delete
            // what might be in use.
            Err(_) => true,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.pid, self.start)
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), `None`
/// if there is no such process.
fn start_time(pid: u32) -> io::Result<Option<u64>> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: fields are counted from the last ')'.
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(malformed)?;
    let start = after
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Some(start))
}

/// A directory under `estiba/tmp` that this process owns and holds locked;
/// removed (whatever its permissions) when dropped, unless
/// [`kept`](TempDir::keep). If the process dies first, the next command
/// removes it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// An open handle on the directory, `flock`ed while it lives.
    lock: File,
    kept: bool,
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place (to be renamed elsewhere) and returns
    /// its path. Whatever is still there once this process ends is removed
    /// by a later command.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fsutil::remove_dir_all_force(&self.path);
        }
    }
}

/// Which temp entries a sweep removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Unlocked entries whose owner is gone: safe beside running builds.
    DeadOwners,
    /// Also unlocked entries whose name names no owner: only while no
    /// build can run (the exclusive lock).
    Unowned,
}

impl Store {
    /// A new, empty directory under `estiba/tmp`, on the store's file
    /// system so what is built there can be renamed into the store.
    /// `prefix` says what it is for (`upper`, `run`, `load`). Its mode is
    /// 0755 less the umask: an overlay upper dir gives the container's root
    /// its mode. (The store's own directories keep others out.)
    pub fn temp_dir(&self, prefix: &str) -> Result<TempDir, StoreError> {
        let tmp = self.tmp_dir();
        let mut attempts = 0;
        let path = loop {
            let path = tmp.join(fsutil::unique_name(prefix));
            match DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                }
                Err(e) => return Err(io_err("create directory", &path)(e)),
            }
        };
        let lock = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(io_err("open", &path)(e));
            }
        };
        let dir = TempDir {
            path,
            lock,
            kept: false,
        };
        fsutil::flock(&dir.lock, LockKind::Exclusive, false).map_err(io_err("lock", &dir.path))?;
        Ok(dir)
    }

    /// Removes what killed or crashed commands left in `estiba/tmp`: entries
    /// whose owning process is gone and that no one holds locked. Never
    /// touches a live command's entries, so call it holding the shared store
    /// lock while other builds run. Only the temp counts of the report are
    /// set.
    pub fn remove_leftovers(&self) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        self.sweep_tmp(Sweep::DeadOwners, &mut report)?;
        Ok(report)
    }

    /// Removes the temp entries `sweep` allows, counting them in `report`.
    pub(crate) fn sweep_tmp(
        &self,
        sweep: Sweep,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        let read = match fs::read_dir(&tmp) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read directory", &tmp)(e)),
        };
        for entry in read {
            let entry = entry.map_err(io_err("read directory", &tmp))?;
            let name = entry.file_name();
            let path = entry.path();
            match Owner::of_name(&name.to_string_lossy()) {
                Some(owner) if owner.is_alive() => continue,
                None if sweep == Sweep::DeadOwners => continue,
                _ => {}
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", &path)(e)),
            };
            // Hold the entry's lock (if it is a file or directory we can
            // lock) while removing it: a held lock means something still
            // uses it, and holding it keeps a second cleaner away.
            let _held = if meta.is_file() || meta.is_dir() {
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("open", &path)(e)),
                };
                if !fsutil::flock(&file, LockKind::Exclusive, true)
                    .map_err(io_err("lock", &path))?
                {
                    continue;
                }
                Some(file)
            } else {
                None
            };
            report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
            report.tmp_removed += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_record_their_owner() {
        let me = Owner::current();
        assert_ne!(me.start, 0, "/proc/self/stat gives a start time");
        let name = fsutil::unique_name("stale-snapshot");
        assert_eq!(Owner::of_name(&name), Some(me));
        assert!(me.is_alive());
        assert_eq!(Owner::of_name("upper-Ab3xYz"), None);
        assert_eq!(Owner::of_name("blob-dead"), None);
        let gone = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(!gone.is_alive(), "a reused pid is not the owner");
    }
}
