//! A layer in the compression an export or a push wants, compressed once.
//!
//! The store keeps built and loaded layers uncompressed (blob digest = diff
//! ID); OCI archives and registries want them gzip- (or zstd-) compressed.
//! [`compressed_layer`] answers with a blob in the store holding the layer
//! compressed as asked: the one a previous export or push made (the store's
//! compressed-layer record), the layer's own blob when it already is in
//! that form (a layer pulled gzip-compressed), or a new blob compressed now,
//! in one pass (read the stored blob, check it, compress, hash, write into
//! the store) and recorded per compression and level, so the next export
//! or push does not compress again. Compression is deterministic
//! ([`crate::compress`]), so the blob is the same whether it was made now
//! or by an earlier run of this version. An older estiba's record may hold
//! other, equally valid bytes: zlib's where libdeflate now deflates, and
//! for the default gzip level (6 then, 2 now) a blob made at level 6.

use crate::compress::{self, decompressing_reader, Codec, CompressError, Compression};
use estiba_cache::DigestReader;
use estiba_cache::{Descriptor, Digest, Store, StoreError};
use std::io::{self, Write};

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
    #[error("cannot store layer {digest} compressed with {codec}")]
    Store {
        /// The layer blob.
        digest: Digest,
        /// The compression asked for.
        codec: Codec,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Compressing (or, for a layer stored in another compression,
    /// decompressing) failed.
    #[error("cannot compress layer {digest} with {codec}")]
    Compress {
        /// The layer blob.
        digest: Digest,
        /// The compression asked for.
        codec: Codec,
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
/// as the image config lists it, is `diff_id`) compressed with `codec` (a
/// [`Compression`] means its default level), with its descriptor (the OCI
/// media type of the compression, or `layer` itself, media type and all,
/// when it already is in that form): [`kept_layer`] if there is one, else
/// [`compress_layer`] now.
///
/// Call it under the store's shared lock (so no prune runs between storing
/// the blob and recording it).
pub fn compressed_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    codec: impl Into<Codec>,
) -> Result<Descriptor, CompressedError> {
    let codec = codec.into();
    match kept_layer(store, layer, diff_id, codec)? {
        Some(kept) => Ok(kept),
        None => compress_layer(store, layer, diff_id, codec, &mut io::sink()),
    }
}

/// The blob holding `layer` compressed with `codec` without compressing
/// anything: `layer` itself when it is stored that way (a layer stored
/// gzip-compressed is its own gzip form, whatever level made it), or the
/// blob an earlier run kept; `None` when it has to be compressed.
pub fn kept_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    codec: impl Into<Codec>,
) -> Result<Option<Descriptor>, CompressedError> {
    let codec = codec.into();
    let stored = stored_compression(layer, diff_id)?;
    if stored == codec.compression {
        return Ok(Some(layer.clone()));
    }
    store
        .compressed_blob(diff_id, codec)
        .map_err(|source| CompressedError::Store {
            digest: layer.digest,
            codec,
            source,
        })
}

/// What `layer`'s media type says it is stored as; an uncompressed layer
/// must be named by its diff ID.
fn stored_compression(
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<Compression, CompressedError> {
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
    Ok(stored)
}

/// Compresses `layer` with `codec` now, in one pass (read the stored blob,
/// check it, compress, hash, write into the store), stores the blob and
/// records it for the next export or push. Every compressed byte is also
/// written to `tee` as it is made (a streamed upload; [`io::sink`] for
/// none); an error of `tee` fails the whole. The stored blob is checked
/// against `layer`'s digest and size, and the uncompressed tar against
/// `diff_id`, as it is read; a mismatch stores nothing, so a caller
/// streaming to `tee` must not commit what it sent until this returns.
pub fn compress_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    codec: impl Into<Codec>,
    tee: &mut dyn Write,
) -> Result<Descriptor, CompressedError> {
    compress_layer_with(store, layer, diff_id, codec, tee, BlobWrites::Inline)
}

/// How the kept blob's chunks reach the disk as a layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobWrites {
    /// On the compressing thread, a chunk at a time: the least memory (a
    /// push compresses and streams two layers at once, under 64 MB).
    Inline,
    /// From a thread of their own while the next chunk fills, one chunk
    /// more of memory: for an export, whose archive gets the same bytes,
    /// where the two writes one after the other on one thread left the
    /// disk idle (the first export of 583 MB: 2.45-2.72 s inline,
    /// 1.92-2.34 s with both in the background).
    Background,
}

/// [`compress_layer`], the kept blob written as `writes` says.
pub fn compress_layer_with(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    codec: impl Into<Codec>,
    tee: &mut dyn Write,
    writes: BlobWrites,
) -> Result<Descriptor, CompressedError> {
    let codec = codec.into();
    let stored = stored_compression(layer, diff_id)?;
    let store_err = |source| CompressedError::Store {
        digest: layer.digest,
        codec,
        source,
    };
    let compress_err = |source| CompressedError::Compress {
        digest: layer.digest,
        codec,
        source,
    };
    let mut blob = DigestReader::new(store.open_blob_stream(&layer.digest).map_err(store_err)?);
    // The blob writer hashes what it is given: the compressed bytes are
    // hashed there, once.
    let mut out = store.blob_writer().map_err(store_err)?;
    if writes == BlobWrites::Background {
        out = out.in_background();
    }
    let mut both = Tee {
        first: &mut out,
        second: tee,
    };
    // An uncompressed layer is its own tar: its digest is the diff ID, and
    // is hashed once.
    let (size, tar_digest) = if stored == Compression::None {
        let size = compress::compress_to(&mut blob, &mut both, codec).map_err(compress_err)?;
        (size, None)
    } else {
        let mut tar = DigestReader::new(decompressing_reader(&mut blob).map_err(compress_err)?);
        let size = compress::compress_to(&mut tar, &mut both, codec).map_err(compress_err)?;
        (size, Some(tar.into_parts().1))
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
    let (digest, written) = out.commit().map_err(store_err)?;
    debug_assert_eq!(written, size);
    let desc = Descriptor::new(codec.compression.oci_media_type(), digest, written);
    if codec.compression != Compression::None {
        store
            .record_compressed(diff_id, codec, &desc)
            .map_err(store_err)?;
    }
    Ok(desc)
}

/// Writes everything to two writers.
struct Tee<'a> {
    first: &'a mut dyn Write,
    second: &'a mut dyn Write,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.first.write(buf)?;
        self.second.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.first.flush()?;
        self.second.flush()
    }
}
