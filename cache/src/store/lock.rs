//! The store-wide lock: builds and readers share it, garbage collection
//! takes it alone, so nothing a build is about to use disappears under it.
//!
//! It is a `flock` on `estiba/lock`. `flock` locks belong to an open file
//! description, so every call opens the file anew: two locks taken in one
//! process conflict exactly as they would across processes. That also means
//! a thread holding a shared lock that asks for the exclusive one waits for
//! itself forever; drop the shared lock first.

use super::fsutil::{self, LockKind};
use super::{Store, StoreError};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A held store lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    exclusive: bool,
    /// For an exclusive lock, the handle's count of exclusive locks held.
    held: Option<Arc<AtomicUsize>>,
}

impl StoreLock {
    /// Whether this is the exclusive (GC) lock.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Store {
    /// Takes the shared lock, waiting while someone holds the exclusive one.
    /// Hold it for the whole of a build or of anything that reads blobs.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(LockKind::Shared, false)?
            .ok_or_else(|| would_block(&self.estiba_dir().join("lock")))
    }

    /// Takes the exclusive lock, waiting until no one holds any lock. Needed
    /// by [`Store::prune`].
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(LockKind::Exclusive, false)?
            .ok_or_else(|| would_block(&self.estiba_dir().join("lock")))
    }

    /// The shared lock if it is free now, `None` if someone holds the
    /// exclusive one (so a CLI can say what it waits for).
    pub fn try_lock_shared(&self) -> Result<Option<StoreLock>, StoreError> {
        self.lock(LockKind::Shared, true)
    }

    /// The exclusive lock if no one holds any lock now, else `None`.
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, StoreError> {
        self.lock(LockKind::Exclusive, true)
    }

    fn lock(&self, kind: LockKind, nonblocking: bool) -> Result<Option<StoreLock>, StoreError> {
        let path = self.estiba_dir().join("lock");
        let Some(file) = fsutil::lock_file(&path, kind, nonblocking)? else {
            return Ok(None);
        };
        let exclusive = kind == LockKind::Exclusive;
        let held = exclusive.then(|| {
            self.exclusive_held.fetch_add(1, Ordering::SeqCst);
            Arc::clone(&self.exclusive_held)
        });
        Ok(Some(StoreLock {
            _file: file,
            exclusive,
            held,
        }))
    }

    /// Whether an exclusive lock is held through this handle or a clone.
    pub(crate) fn holds_exclusive(&self) -> bool {
        self.exclusive_held.load(Ordering::SeqCst) > 0
    }

    /// Runs `f` holding the exclusive `estiba/index.lock`, which serialises
    /// read-modify-write of `index.json` (and first-time layout creation).
    pub(crate) fn with_index_lock<T>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.estiba_dir().join("index.lock");
        let _lock = fsutil::lock_file(&path, LockKind::Exclusive, false)?
            .ok_or_else(|| would_block(&path))?;
        f()
    }
}

/// A blocking flock never reports "would block"; if it somehow did, say so
/// as an I/O error on the lock file rather than panic.
fn would_block(path: &Path) -> StoreError {
    StoreError::Io {
        action: "lock",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
    }
}
