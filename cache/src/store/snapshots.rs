//! Unpacked layers, one per diff id, under `estiba/snapshots-v1/<hex>/`:
//! `rootfs/` is the layer's tree (an overlayfs lower dir for the steps
//! built on it) and `complete` a marker written only once the tree is
//! whole and on disk.
//!
//! A snapshot is filled in a temp directory, the file system is synced, the
//! marker written, and the directory renamed into place; [`Store::snapshot`]
//! only answers for a directory with the marker, so a half-built tree (a
//! crash, or a power cut before the data reached the disk) is never used.

use super::fsutil::{self, io_err, LockKind};
use super::{Store, StoreError};
use crate::Digest;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub(crate) const MARKER: &str = "complete";
pub(crate) const ROOTFS: &str = "rootfs";

/// A snapshot being built: fill [`path`](SnapshotBuilder::path), then
/// [`commit`](SnapshotBuilder::commit). Dropped without committing, the
/// temp tree is removed.
#[derive(Debug)]
pub struct SnapshotBuilder {
    dir: PathBuf,
    rootfs: PathBuf,
    dest: PathBuf,
    snapshots_dir: PathBuf,
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
    /// first, that snapshot is kept, this one discarded, and its path
    /// returned.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        nix::unistd::syncfs(self.lock.as_raw_fd())
            .map_err(|e| io_err("sync the file system of", &self.dir)(io::Error::from(e)))?;
        let marker = self.dir.join(MARKER);
        let mut file = File::create(&marker).map_err(io_err("create", &marker))?;
        file.write_all(format!("{}\n", self.diff_id).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &marker))?;
        drop(file);
        let final_rootfs = self.dest.join(ROOTFS);
        let mut attempts = 0;
        loop {
            match fs::rename(&self.dir, &self.dest) {
                Ok(()) => {
                    self.done = true;
                    fsutil::fsync_dir(&self.snapshots_dir)?;
                    return Ok(final_rootfs);
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR)
                    ) && attempts < 3 =>
                {
                    attempts += 1;
                    if self.dest.join(MARKER).is_file() {
                        // Someone else finished first; ours goes on drop.
                        return Ok(final_rootfs);
                    }
                    // A leftover without its marker: move it out of the way
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

    /// The tree of the complete snapshot for `diff_id`, if there is one.
    pub fn snapshot(&self, diff_id: &Digest) -> Option<PathBuf> {
        let dir = self.snapshots_dir().join(diff_id.hex());
        dir.join(MARKER).is_file().then(|| dir.join(ROOTFS))
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
            snapshots_dir: self.snapshots_dir(),
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
