//! Compressed forms of layers: the store keeps built layers uncompressed
//! (blob digest = diff id), and an export or a push needs them gzip- or
//! zstd-compressed. Compressing is the slow part of both, so the blob a
//! layer compressed into is kept, and a record says which one it is: one
//! small JSON [`Descriptor`] per (diff id, [`Codec`]) under
//! `estiba/compressed-v1/<diff id hex>.<gzip|zstd>` for the format's default
//! level and `….<gzip|zstd>-<level>` for another, so a blob made at one
//! level is never served for another.
//!
//! Like a cache record, a record is only a pointer: one whose blob is gone
//! is a miss, and it is derived data ([`Store::prune`] keeps it, and its
//! blob, while the layer is kept in some form; `prune --all` drops it).
//! Records are written atomically (temp file and rename) after their blob
//! is committed, so a record never names a blob that was not whole.

use super::blobs::complete_blob_exists;
use super::{fsutil, Store, StoreError};
use crate::oci::{Codec, Compression, Descriptor};
use crate::Digest;
use std::fs;
use std::io;
use std::path::PathBuf;

impl Store {
    /// `estiba/compressed-v1`.
    pub(super) fn compressed_dir(&self) -> PathBuf {
        self.estiba_dir().join("compressed-v1")
    }

    pub(super) fn compressed_path(&self, diff_id: &Digest, codec: Codec) -> PathBuf {
        self.compressed_dir()
            .join(format!("{}.{}", diff_id.hex(), record_suffix(codec)))
    }

    /// The blob holding the layer `diff_id` compressed with `codec` (a
    /// [`Compression`] means its default level), as
    /// [`Store::record_compressed`] recorded it (with the OCI media type of
    /// the compression), if the record is there and its blob still is. A
    /// record that does not parse, names another compression, or whose blob
    /// is gone or of another size counts as absent: a miss only costs
    /// compressing again. `Compression::None` is the layer itself: its blob
    /// is named by `diff_id` and needs no record.
    pub fn compressed_blob(
        &self,
        diff_id: &Digest,
        codec: impl Into<Codec>,
    ) -> Result<Option<Descriptor>, StoreError> {
        let codec = codec.into();
        let compression = codec.compression;
        if compression == Compression::None {
            let path = self.blob_path(diff_id);
            return Ok(fs::metadata(&path)
                .ok()
                .filter(fs::Metadata::is_file)
                .map(|m| Descriptor::new(compression.oci_media_type(), *diff_id, m.len())));
        }
        let path = self.compressed_path(diff_id, codec);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::io_err("read", &path)(e)),
        };
        Ok(parse_record(&bytes, compression).filter(|d| self.blob_has_size(&d.digest, d.size)))
    }

    /// Records that blob `blob` holds the layer `diff_id` compressed with
    /// `codec` (gzip or zstd, as `blob.media_type` says too), atomically
    /// replacing any previous record for that codec. Store the blob first:
    /// a record naming a blob that is not there is refused. The caller
    /// vouches that the blob decompresses to `diff_id`;
    /// [`Store::compressed_blob`] returns it as recorded here, with the OCI
    /// media type and no annotations.
    pub fn record_compressed(
        &self,
        diff_id: &Digest,
        codec: impl Into<Codec>,
        blob: &Descriptor,
    ) -> Result<(), StoreError> {
        let codec = codec.into();
        let compression = match Compression::from_media_type(&blob.media_type) {
            Some(c @ (Compression::Gzip | Compression::Zstd)) if c == codec.compression => c,
            _ => {
                return Err(StoreError::NotCompressedLayer {
                    media_type: blob.media_type.clone(),
                })
            }
        };
        if !self.blob_has_size(&blob.digest, blob.size) {
            return Err(StoreError::MissingBlob {
                digest: blob.digest,
            });
        }
        let record = Descriptor::new(compression.oci_media_type(), blob.digest, blob.size);
        let bytes = serde_json::to_vec(&record).map_err(|source| StoreError::Encode {
            what: "compressed layer record",
            source,
        })?;
        fsutil::create_dir_mode(&self.compressed_dir(), super::PRIVATE_MODE)?;
        fsutil::atomic_write(
            &self.tmp_dir(),
            &self.compressed_path(diff_id, codec),
            &bytes,
            false,
        )
    }

    /// Whether blob `digest` is here, whole (`size` bytes).
    pub(super) fn blob_has_size(&self, digest: &Digest, size: u64) -> bool {
        complete_blob_exists(&self.blob_path(digest), size)
    }
}

/// A record's descriptor, if it parses and is of `compression`.
pub(super) fn parse_record(bytes: &[u8], compression: Compression) -> Option<Descriptor> {
    serde_json::from_slice::<Descriptor>(bytes)
        .ok()
        .filter(|d| Compression::from_media_type(&d.media_type) == Some(compression))
}

/// What follows the diff id in a record's name: the compression's name,
/// and `-<level>` unless it is the default level.
fn record_suffix(codec: Codec) -> String {
    if codec.is_default() {
        codec.compression.name().to_string()
    } else {
        format!("{}-{}", codec.compression.name(), codec.level)
    }
}

/// What a file name under `compressed-v1` says: the diff id and the codec;
/// `None` for a name that is not one of ours.
pub(super) fn parse_compressed_name(name: &str) -> Option<(Digest, Codec)> {
    let (hex, kind) = name.split_once('.')?;
    let codec = [Compression::Gzip, Compression::Zstd]
        .into_iter()
        .find_map(|c| {
            let level = match kind.strip_prefix(c.name())? {
                "" => return Some(Codec::default_for(c)),
                rest => rest.strip_prefix('-')?.parse().ok()?,
            };
            let codec = Codec {
                compression: c,
                level,
            };
            // One name per codec: the default level has no suffix.
            (Codec::levels(c).contains(&level) && !codec.is_default()).then_some(codec)
        })?;
    Some((super::gc::hex_digest(hex)?, codec))
}
