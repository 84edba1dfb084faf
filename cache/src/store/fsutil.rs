//! File system helpers the store is built from: errors that name their path,
//! `flock`, temp files that are written, synced and renamed into place, and a
//! tree removal that copes with what build containers leave behind.
//!
//! Every temp file or directory under `estiba/tmp` names the process that
//! made it and is `flock`ed by it for as long as it lives, so a cleaner can
//! tell a live temp entry from one a killed process left behind without
//! guessing from ages (see the `tmp` module).

use super::tmp::Owner;
use super::StoreError;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher as _};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Wraps an `io::Error` from `action` on `path`.
pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// `mkdir -p`.
pub(crate) fn create_dir_all(path: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(path).map_err(io_err("create directory", path))
}

/// `mkdir -p` that gives `path` itself `mode` (less the umask) when it
/// makes it; its parents get the usual 0777 less the umask. Returns whether
/// `path` was made; an existing directory is left as it is.
pub(crate) fn create_dir_mode(path: &Path, mode: u32) -> Result<bool, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(io_err("create directory", path)(e)),
    }
}

/// Makes `path` a directory whose permission bits are at most `mode`:
/// made with `mode` where missing, and where it exists with more bits (a
/// store an older estiba made 0755 all the way down) chmod'ed to drop the
/// extra ones. Bits `mode` lacks but the directory has not are left alone,
/// so a stricter mode its owner set stays.
pub(crate) fn private_dir(path: &Path, mode: u32) -> Result<(), StoreError> {
    if create_dir_mode(path, mode)? {
        return Ok(());
    }
    let current = fs::metadata(path).map_err(io_err("inspect", path))?.mode() & 0o7777;
    let tight = current & (mode | 0o7000);
    if tight != current {
        fs::set_permissions(path, fs::Permissions::from_mode(tight))
            .map_err(io_err("restrict the permissions of", path))?;
    }
    Ok(())
}

/// Asks the file system to place each directory made in `dir` where the
/// fewest directories are, as it places those made at its root (ext4's
/// `TOPDIR` flag, `chattr +T`, read by its Orlov allocator), rather than
/// beside `dir`. A build's scratch trees (unpacked snapshots, RUN upper
/// directories) are unrelated to one another, and beside `dir` is where
/// the last build's trees were just deleted: ext4 without a journal skips
/// each inode deleted in the last 30 s one by one (`recently_deleted`)
/// when it allocates a new one, and a cold build after `rm -rf` of a store
/// with 20,000 files took 2 to 3 times as long, nearly all of it system
/// time in that scan. The flag is not inherited: what is made inside each
/// tree stays together. File systems without the flag (or that refuse
/// it) are left as they are: only placement is at stake.
pub(crate) fn spread_subdirs(dir: &Path) {
    let Ok(d) = File::open(dir) else { return };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&d) {
        if !flags.contains(rustix::fs::IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(&d, flags | rustix::fs::IFlags::TOPDIR);
        }
    }
}

/// Makes a directory entry durable: fsync of the directory itself.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// `rename(2)`, with both paths in the error.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| StoreError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// How [`flock`] should lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

/// `flock(2)` on `file`. Blocking unless `nonblocking`; with `nonblocking`,
/// `Ok(false)` means someone else holds a conflicting lock. The lock belongs
/// to the open file description and goes away when the file is closed.
pub(crate) fn flock(file: &File, kind: LockKind, nonblocking: bool) -> io::Result<bool> {
    use rustix::fs::FlockOperation;
    let op = match (kind, nonblocking) {
        (LockKind::Shared, false) => FlockOperation::LockShared,
        (LockKind::Shared, true) => FlockOperation::NonBlockingLockShared,
        (LockKind::Exclusive, false) => FlockOperation::LockExclusive,
        (LockKind::Exclusive, true) => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) if nonblocking => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens (creating it if needed) a lock file and locks it.
pub(crate) fn lock_file(
    path: &Path,
    kind: LockKind,
    nonblocking: bool,
) -> Result<Option<File>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    if flock(&file, kind, nonblocking).map_err(io_err("lock", path))? {
        Ok(Some(file))
    } else {
        Ok(None)
    }
}

/// A name no other process or thread picks, that says which process made
/// it: `PREFIX-PID.START-N-RANDOM`, with this process's [`Owner`], a
/// per-process counter and randomness from the standard library's randomly
/// keyed hasher.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{prefix}-{}-{n}-{:016x}", Owner::current(), h.finish())
}

/// A file under `estiba/tmp`, locked while it lives, removed on drop unless
/// persisted.
#[derive(Debug)]
pub(crate) struct TempFile {
    file: File,
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// Creates a new, empty, locked temp file in `dir`.
    pub(crate) fn create(dir: &Path, prefix: &str) -> Result<TempFile, StoreError> {
        let mut attempts = 0;
        loop {
            let path = dir.join(unique_name(prefix));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(file) => {
                    let temp = TempFile {
                        file,
                        path,
                        persisted: false,
                    };
                    flock(&temp.file, LockKind::Exclusive, false)
                        .map_err(io_err("lock", &temp.path))?;
                    return Ok(temp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                }
                Err(e) => return Err(io_err("create temp file", &path)(e)),
            }
        }
    }

    /// Where the temp file is now.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// fsyncs the content and renames the file to `dest`, replacing what is
    /// there. The caller syncs `dest`'s directory if the rename must survive
    /// a crash.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_err("sync", &self.path))?;
        rename(&self.path, dest)?;
        self.persisted = true;
        Ok(())
    }
}

impl std::borrow::Borrow<fs::File> for TempFile {
    fn borrow(&self) -> &fs::File {
        &self.file
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `dest` atomically: a temp file in `tmp_dir`, fsync,
/// rename, and (with `sync_dir`) fsync of `dest`'s directory.
pub(crate) fn atomic_write(
    tmp_dir: &Path,
    dest: &Path,
    bytes: &[u8],
    sync_dir: bool,
) -> Result<(), StoreError> {
    let mut temp = TempFile::create(tmp_dir, "write")?;
    temp.write_all(bytes)
        .map_err(io_err("write", temp.path()))?;
    temp.persist(dest)?;
    if sync_dir {
        if let Some(parent) = dest.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Removes `path` and everything below it, whatever the permissions: each
/// directory is made `0700` (dropping the sticky bit too) before it is read
/// and emptied, so read-only directories and files owned by other users in
/// a build's tree do not stop the removal. Symbolic links are removed, never
/// followed. Refuses to remove anything with a file system mounted inside it
/// (a leftover bind mount must never turn into deleting the host's files).
/// Returns the bytes of regular files freed (each inode counted once). A
/// missing `path` is not an error.
pub fn remove_dir_all_force(path: &Path) -> Result<u64, StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if !meta.is_dir() {
        let freed = if meta.is_file() { meta.len() } else { 0 };
        return match fs::remove_file(path) {
            Ok(()) => Ok(freed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("remove", path)(e)),
        };
    }
    refuse_mounts_below(path)?;
    let dev = meta.dev();
    let mut freed = 0u64;
    let mut seen = HashSet::new();
    // (directory, already emptied?)
    let mut stack = vec![(path.to_path_buf(), false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove directory", &dir)(e)),
            }
            continue;
        }
        make_dir_writable(&dir);
        stack.push((dir.clone(), true));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let child = entry.path();
            let m = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", &child)(e)),
            };
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(StoreError::MountedInside {
                        path: path.to_path_buf(),
                        mount: child,
                    });
                }
                stack.push((child, false));
                continue;
            }
            if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
                freed += m.len();
            }
            match fs::remove_file(&child) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &child)(e)),
            }
        }
    }
    Ok(freed)
}

/// chmod 0700 unless the directory already is; failure is left for the
/// following read or unlink to report with its path.
fn make_dir_writable(dir: &Path) {
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() && m.mode() & 0o7777 != 0o700 {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
    }
}

/// Errors if `/proc/self/mountinfo` lists a mount point at or below `path`.
/// Without `/proc` the device check during the walk still applies.
fn refuse_mounts_below(path: &Path) -> Result<(), StoreError> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let Ok(abs) = fs::canonicalize(path) else {
        return Ok(());
    };
    for line in info.lines() {
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let mount = PathBuf::from(unescape_mountinfo(field));
        if mount.starts_with(&abs) {
            return Err(StoreError::MountedInside {
                path: path.to_path_buf(),
                mount,
            });
        }
    }
    Ok(())
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Apparent size of the regular files under `path` (each inode once),
/// without following symbolic links.
pub(crate) fn tree_size(path: &Path) -> Result<u64, StoreError> {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let child = entry.path();
            let m = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", &child)(e)),
            };
            if m.is_dir() {
                stack.push(child);
            } else if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
                total += m.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn unique_names_differ() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
    }
}
