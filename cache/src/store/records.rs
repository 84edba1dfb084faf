//! The step cache: one small JSON [`CacheRecord`] per cache key under
//! `estiba/cache-v1/<hex>`. A record is only a pointer; the layer it names
//! lives in the blob store, and a record whose blob is gone is a miss.

use super::{fsutil, CacheRecord, Store, StoreError};
use crate::Digest;
use std::fs;
use std::io;
use std::path::PathBuf;

impl Store {
    fn record_path(&self, key: &Digest) -> PathBuf {
        self.cache_dir().join(key.hex())
    }

    /// The record for `key`, if there is a usable one. A record whose layer
    /// blob is missing, or that does not parse (damaged, or written by an
    /// incompatible estiba), counts as absent: a miss only costs a rebuild.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CacheRecord>, StoreError> {
        let path = self.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::io_err("read", &path)(e)),
        };
        let Ok(record) = serde_json::from_slice::<CacheRecord>(&bytes) else {
            return Ok(None);
        };
        if let Some(layer) = &record.layer {
            if !self.has_blob(&layer.digest) {
                return Ok(None);
            }
        }
        Ok(Some(record))
    }

    /// Stores the record for `key`, atomically replacing any previous one.
    pub fn cache_put(&self, key: &Digest, record: &CacheRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            what: "cache record",
            source,
        })?;
        fsutil::atomic_write(&self.tmp_dir(), &self.record_path(key), &bytes, false)
    }

    /// Forgets the record for `key`; `false` if there was none.
    pub fn cache_remove(&self, key: &Digest) -> Result<bool, StoreError> {
        let path = self.record_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(fsutil::io_err("remove", &path)(e)),
        }
    }
}
