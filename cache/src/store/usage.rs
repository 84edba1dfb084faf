//! What the store holds, part by part, for `estiba system df`.

use super::{fsutil, Store, StoreError};
use std::fs;
use std::io;
use std::path::Path;

/// One part of the store: how many entries it has and the bytes of file
/// content under it (each inode counted once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// Entries directly in its directory (blobs, snapshots, records, …).
    pub count: u64,
    /// Bytes on disk, hard links counted once.
    pub bytes: u64,
}

/// The store's parts (see the store's layout in the crate docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `blobs/sha256`: layers, configs, manifests.
    pub blobs: Part,
    /// Unpacked layers.
    pub snapshots: Part,
    /// Build cache records (their layers are among the blobs).
    pub cache_records: Part,
    /// `RUN --mount=type=cache` directories.
    pub mount_caches: Part,
    /// Build contexts' stat caches.
    pub stat_caches: Part,
    /// Scratch space of running or killed commands.
    pub scratch: Part,
    /// The whole store.
    pub total: u64,
}

fn part(dir: &Path) -> Result<Part, StoreError> {
    let count = match fs::read_dir(dir) {
        Ok(entries) => entries.count() as u64,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(fsutil::io_err("read directory", dir)(e)),
    };
    Ok(Part {
        count,
        bytes: fsutil::tree_size(dir)?,
    })
}

impl Store {
    /// Walks the store and sizes each part. As slow as reading every
    /// directory of every snapshot.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        Ok(Usage {
            blobs: part(&self.blobs_dir())?,
            snapshots: part(&self.snapshots_dir())?,
            cache_records: part(&self.cache_dir())?,
            mount_caches: part(&self.mount_caches_dir())?,
            stat_caches: part(&self.stat_caches_dir())?,
            scratch: part(&self.tmp_dir())?,
            total: fsutil::tree_size(&self.root)?,
        })
    }
}
