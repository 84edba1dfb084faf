//! Unpacked layers, one per diff id, under `estiba/snapshots-v1/<hex>/`:
//! `rootfs/` is the layer's tree (an overlayfs lower dir for the steps
//! built on it) and `complete` a marker written only once the tree is
//! whole, naming the diff id and the kernel's boot id.
//!
//! A snapshot is filled in a temp directory, the marker written, and the
//! directory renamed into place; [`Store::snapshot`] only answers for a
//! directory whose marker names its diff id and this boot. Nothing is
//! synced: snapshots are derived data, made again from their verified blob
//! when needed. A killed process loses nothing (the data is in the page
//! cache, which the kernel writes back); a crash of the machine loses what
//! was not written back, but then the boot id has changed, so every
//! snapshot made before is not trusted (not used, made again; `fsck` names
//! it, `gc` removes it). A half-built tree (no marker) is never used
//! either. Blobs, the source of truth, keep their `fsync`.

use super::fsutil::{self, io_err, LockKind};
use super::{Store, StoreError};
use crate::Digest;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub(crate) const MARKER: &str = "complete";
pub(crate) const ROOTFS: &str = "rootfs";
/// Where the kernel tells a random id it chose at boot.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
/// The marker's line that names the boot the snapshot was made in.
const BOOT_PREFIX: &str = "boot ";

/// This boot's id (read once).
pub(crate) fn boot_id() -> io::Result<&'static str> {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id);
    }
    let id = fs::read_to_string(BOOT_ID_FILE)?.trim().to_string();
    if id.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty boot id"));
    }
    Ok(BOOT_ID.get_or_init(|| id))
}

/// What a snapshot's completion marker says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Its first line: the diff id the tree is.
    pub(crate) diff_id: String,
    /// The boot it was made in; `None` from a marker without one.
    pub(crate) boot_id: Option<String>,
}

impl Marker {
    fn parse(text: &str) -> Marker {
        let mut lines = text.lines();
        let diff_id = lines.next().unwrap_or("").trim().to_string();
        let boot_id = lines
            .find_map(|l| l.strip_prefix(BOOT_PREFIX))
            .map(|b| b.trim().to_string());
        Marker { diff_id, boot_id }
    }

    /// Whether the marker was written in this boot.
    pub(crate) fn this_boot(&self) -> bool {
        matches!((&self.boot_id, boot_id()), (Some(ours), Ok(now)) if ours == now)
    }
}

/// The marker of the snapshot directory `dir`, `None` if it has none.
pub(crate) fn read_marker(dir: &Path) -> io::Result<Option<Marker>> {
    match fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => Ok(Some(Marker::parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Some(Marker {
            diff_id: String::new(),
            boot_id: None,
        })),
        Err(e) => Err(e),
    }
}

/// Whether the snapshot directory `dir` may be used as the tree of
/// `diff_id`: complete, that diff id, made in this boot.
pub(crate) fn is_trusted(dir: &Path, diff_id: &Digest) -> bool {
    read_marker(dir)
        .ok()
        .flatten()
        .is_some_and(|m| m.diff_id == diff_id.to_string() && m.this_boot())
}

/// A snapshot being built: fill [`path`](SnapshotBuilder::path), then
/// [`commit`](SnapshotBuilder::commit). Dropped without committing, the
/// temp tree is removed.
#[derive(Debug)]
pub struct SnapshotBuilder {
    dir: PathBuf,
    rootfs: PathBuf,
    dest: PathBuf,
    tmp_dir: PathBuf,
    diff_id: Digest,
    /// An open handle on `dir`, `flock`ed so GC leaves the tree alone.
    lock: File,
    done: bool,
}

impl SnapshotBuilder {
    /// The empty directory to unpack the layer into.
    pub fn path(&self) -> &Path {
        &self.rootfs
    }

    /// The diff id the snapshot will be stored under.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// Makes the snapshot available under its diff id and returns the final
    /// path of its tree. If another builder committed the same diff id
    /// first (in this boot), that snapshot is kept, this one discarded, and
    /// its path returned. Nothing is synced (see the module docs).
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let marker = self.dir.join(MARKER);
        let boot = boot_id().map_err(io_err("read the boot id from", Path::new(BOOT_ID_FILE)))?;
        fs::write(&marker, format!("{}\n{BOOT_PREFIX}{boot}\n", self.diff_id))
            .map_err(io_err("write", &marker))?;
        let final_rootfs = self.dest.join(ROOTFS);
        let mut attempts = 0;
        loop {
            match fs::rename(&self.dir, &self.dest) {
                Ok(()) => {
                    self.done = true;
                    return Ok(final_rootfs);
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR)
                    ) && attempts < 3 =>
                {
                    attempts += 1;
                    if is_trusted(&self.dest, &self.diff_id) {
                        // Someone else finished first; ours goes on drop.
                        return Ok(final_rootfs);
                    }
                    // A leftover without its marker, or from another boot:
                    // move it out of the way
                    // (rename is atomic, so a racing builder cannot see it
                    // half-removed) and delete it.
                    let aside = self.tmp_dir.join(fsutil::unique_name("stale-snapshot"));
                    match fs::rename(&self.dest, &aside) {
                        Ok(()) => {
                            fsutil::remove_dir_all_force(&aside)?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(StoreError::Rename {
                                from: self.dest.clone(),
                                to: aside,
                                source,
                            })
                        }
                    }
                }
                Err(source) => {
                    return Err(StoreError::Rename {
                        from: self.dir.clone(),
                        to: self.dest.clone(),
                        source,
                    })
                }
            }
        }
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        if !self.done {
            let _ = fsutil::remove_dir_all_force(&self.dir);
        }
    }
}

impl Store {
    /// Removes the snapshot directory at `path` (under `snapshots-v1`):
    /// renamed into `estiba/tmp` first, so no one ever finds it complete
    /// but half-removed, and a crash meanwhile leaves only a dead temp entry
    /// the next command removes. Returns the bytes freed, `None` if it was
    /// not there.
    pub(crate) fn remove_snapshot_dir(&self, path: &Path) -> Result<Option<u64>, StoreError> {
        let aside = self.tmp_dir().join(fsutil::unique_name("old-snapshot"));
        match fs::rename(path, &aside) {
            Ok(()) => Ok(Some(fsutil::remove_dir_all_force(&aside)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Rename {
                from: path.to_path_buf(),
                to: aside,
                source,
            }),
        }
    }

    /// The tree of the complete snapshot for `diff_id`, if there is one
    /// made in this boot (one from before may have lost data in a crash:
    /// it is made again).
    pub fn snapshot(&self, diff_id: &Digest) -> Option<PathBuf> {
        let dir = self.snapshots_dir().join(diff_id.hex());
        is_trusted(&dir, diff_id).then(|| dir.join(ROOTFS))
    }

    /// Starts building the snapshot for `diff_id` in a temp directory.
    pub fn snapshot_builder(&self, diff_id: &Digest) -> Result<SnapshotBuilder, StoreError> {
        let tmp_dir = self.tmp_dir();
        let mut attempts = 0;
        let dir = loop {
            let dir = tmp_dir.join(fsutil::unique_name("snapshot"));
            match DirBuilder::new().mode(super::PRIVATE_MODE).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                }
                Err(e) => return Err(io_err("create directory", &dir)(e)),
            }
        };
        let lock = File::open(&dir).map_err(io_err("open", &dir))?;
        let builder = SnapshotBuilder {
            rootfs: dir.join(ROOTFS),
            dir,
            dest: self.snapshots_dir().join(diff_id.hex()),
            tmp_dir,
            diff_id: *diff_id,
            lock,
            done: false,
        };
        fsutil::flock(&builder.lock, LockKind::Exclusive, false)
            .map_err(io_err("lock", &builder.dir))?;
        // The image's `/`: other users inside a build container go through it.
        DirBuilder::new()
            .mode(0o755)
            .create(&builder.rootfs)
            .map_err(io_err("create directory", &builder.rootfs))?;
        Ok(builder)
    }
}
