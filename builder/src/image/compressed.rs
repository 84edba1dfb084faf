//! A layer in the compression an export or a push wants, compressed once.
//!
//! The store keeps built and loaded layers uncompressed (blob digest = diff
//! ID); OCI archives and registries want them gzip- (or zstd-) compressed.
//! [`compressed_layer`] answers with a blob in the store holding the layer
//! compressed as asked: the one a previous export or push made (the store's
//! compressed-layer record), the layer's own blob when it already is in
//! that form (a layer pulled gzip-compressed), or a new blob compressed now,
//! in one pass (read the stored blob, check it, compress, hash, write into
//! the store) and recorded, so the next export or push does not compress
//! again. Compression is deterministic ([`crate::compress`]), so the blob
//! is the same whether it was made now or by an earlier run.

use crate::compress::{self, decompressing_reader, CompressError, Compression};
use estiba_cache::DigestReader;
use estiba_cache::{Descriptor, Digest, Store, StoreError};
use std::io;

/// Errors of [`compressed_layer`].
#[derive(Debug, thiserror::Error)]
pub enum CompressedError {
    /// The layer's media type names no layer compression.
    #[error("layer {digest} has media type {media_type:?}, which is not a layer's")]
    MediaType {
        /// The layer blob.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// Reading the layer from the store, or storing its compressed form,
    /// failed.
    #[error("cannot store layer {digest} {compression}-compressed")]
    Store {
        /// The layer blob.
        digest: Digest,
        /// The compression asked for.
        compression: Compression,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Compressing (or, for a layer stored in another compression,
    /// decompressing) failed.
    #[error("cannot compress layer {digest} with {compression}")]
    Compress {
        /// The layer blob.
        digest: Digest,
        /// The compression asked for.
        compression: Compression,
        /// The cause.
        #[source]
        source: CompressError,
    },
    /// The stored layer is not what its descriptor names.
    #[error("layer {digest} is corrupt in the store: it is {size} bytes hashing to {actual}, its descriptor says {expected_size} bytes")]
    CorruptBlob {
        /// The layer blob.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
        /// Its size.
        size: u64,
        /// The size its descriptor says.
        expected_size: u64,
    },
    /// The layer is not the one the image config names.
    #[error("layer {digest} has diff ID {actual}, but its image config says {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        digest: Digest,
        /// The config's diff ID.
        expected: Digest,
        /// The digest of the uncompressed layer.
        actual: Digest,
    },
}

/// A blob in `store` holding the layer `layer` (whose uncompressed digest,
/// as the image config lists it, is `diff_id`) compressed with
/// `compression`, with its descriptor (the OCI media type of
/// `compression`, or `layer` itself, media type and all, when it already is
/// in that form). Compresses only when the store has no record of an
/// earlier run doing it, then records the new blob. The stored blob is
/// checked against `layer`'s digest and size, and the uncompressed tar
/// against `diff_id`, as it is read; a mismatch stores nothing.
///
/// Call it under the store's shared lock (so no prune runs between storing
/// the blob and recording it).
pub fn compressed_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
) -> Result<Descriptor, CompressedError> {
    let stored = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
        CompressedError::MediaType {
            digest: layer.digest,
            media_type: layer.media_type.clone(),
        }
    })?;
    if stored == Compression::None && layer.digest != *diff_id {
        return Err(CompressedError::DiffIdMismatch {
            digest: layer.digest,
            expected: *diff_id,
            actual: layer.digest,
        });
    }
    if stored == compression {
        return Ok(layer.clone());
    }
    let store_err = |source| CompressedError::Store {
        digest: layer.digest,
        compression,
        source,
    };
    if let Some(known) = store
        .compressed_blob(diff_id, compression)
        .map_err(store_err)?
    {
        return Ok(known);
    }
    let compress_err = |source| CompressedError::Compress {
        digest: layer.digest,
        compression,
        source,
    };
    let mut blob = DigestReader::new(io::BufReader::new(
        store.open_blob(&layer.digest).map_err(store_err)?,
    ));
    let mut out = store.blob_writer().map_err(store_err)?;
    // An uncompressed layer is its own tar: its digest is the diff ID, and
    // is hashed once.
    let ((digest, size), tar_digest) = if stored == Compression::None {
        let written = compress::compress(&mut blob, &mut out, compression).map_err(compress_err)?;
        (written, None)
    } else {
        let mut tar = DigestReader::new(decompressing_reader(&mut blob).map_err(compress_err)?);
        let written = compress::compress(&mut tar, &mut out, compression).map_err(compress_err)?;
        (written, Some(tar.into_parts().1))
    };
    // What a decompressor left unread (padding after the stream) is part
    // of the blob too.
    io::copy(&mut blob, &mut io::sink()).map_err(|source| {
        compress_err(CompressError::Read {
            format: stored.to_string(),
            source,
        })
    })?;
    let (_, actual, read) = blob.into_parts();
    if actual != layer.digest || read != layer.size {
        return Err(CompressedError::CorruptBlob {
            digest: layer.digest,
            actual,
            size: read,
            expected_size: layer.size,
        });
    }
    let tar_digest = tar_digest.unwrap_or(actual);
    if tar_digest != *diff_id {
        return Err(CompressedError::DiffIdMismatch {
            digest: layer.digest,
            expected: *diff_id,
            actual: tar_digest,
        });
    }
    out.commit_expect(&digest).map_err(store_err)?;
    let desc = Descriptor::new(compression.oci_media_type(), digest, size);
    if compression != Compression::None {
        store.record_compressed(diff_id, &desc).map_err(store_err)?;
    }
    Ok(desc)
}
