//! Blobs under `blobs/sha256/<hex>`: streamed into a temp file while being
//! hashed, fsynced, and renamed under their digest, so a name only ever
//! holds the complete content it names.

use super::direct::DirectWriter;
use super::direct_read::BlobReader;
use super::fsutil::{self, io_err, TempFile};
use super::{Store, StoreError};
use crate::{Digest, Hasher};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Writes one blob: bytes go to a temp file and into a hasher as they come,
/// never all into memory. [`commit`](BlobWriter::commit) names the blob;
/// dropping the writer without committing removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    out: DirectWriter<TempFile>,
    size: u64,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    /// Writes and hashes each whole chunk on a thread of its own while the
    /// next one fills ([`DirectWriter::in_background`]).
    pub fn in_background(self) -> Self {
        BlobWriter {
            out: self.out.in_background(),
            ..self
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stores the blob under the digest of what was written and returns the
    /// digest and size. If the store already has that blob, the temp file
    /// is simply dropped.
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        self.finish(None)
    }

    /// Like [`commit`](BlobWriter::commit), but errors (storing nothing) if
    /// the content does not hash to `expected`: for blobs fetched by digest.
    pub fn commit_expect(self, expected: &Digest) -> Result<(Digest, u64), StoreError> {
        self.finish(Some(expected))
    }

    fn finish(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let BlobWriter {
            out,
            size,
            blobs_dir,
        } = self;
        let path = out.get_ref().path().to_path_buf();
        let (temp, digest) = out.finish().map_err(io_err("write", &path))?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        let dest = blobs_dir.join(digest.hex());
        if complete_blob_exists(&dest, size) {
            return Ok((digest, size));
        }
        temp.persist(&dest)?;
        fsutil::fsync_dir(&blobs_dir)?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf).map_err(|e| self.wrap(e))?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().map_err(|e| self.wrap(e))
    }
}

impl BlobWriter {
    /// An `io::Error` that still names the temp file (through its source).
    fn wrap(&self, e: io::Error) -> io::Error {
        let kind = e.kind();
        io::Error::new(kind, io_err("write", self.out.get_ref().path())(e))
    }

    /// `write_all` with a [`StoreError`] naming the temp file.
    fn write_all_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.out.write_all(bytes) {
            return Err(io_err("write", self.out.get_ref().path())(e));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }
}

/// A regular file of the right size is already there: a blob is only ever
/// renamed into place complete, so the size check only guards against
/// outside damage.
pub(super) fn complete_blob_exists(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

impl Store {
    /// A writer for a new blob.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let temp = TempFile::create(&self.tmp_dir(), "blob")?;
        Ok(BlobWriter {
            out: DirectWriter::new(temp),
            size: 0,
            blobs_dir: self.blobs_dir(),
        })
    }

    /// Stores `bytes` as a blob; a no-op if it is already there.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), StoreError> {
        let digest = Digest::of(bytes);
        let size = bytes.len() as u64;
        if complete_blob_exists(&self.blob_path(&digest), size) {
            return Ok((digest, size));
        }
        let mut w = self.blob_writer()?;
        w.write_all_bytes(bytes)?;
        w.commit_expect(&digest)
    }

    /// Whether the blob is in the store.
    pub fn has_blob(&self, d: &Digest) -> bool {
        fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// Where the blob is (or would be).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob { digest: *d }
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// Opens a blob to read it once, front to back (an export, a push):
    /// past the page cache unless it is there already ([`BlobReader`]).
    pub fn open_blob_stream(&self, d: &Digest) -> Result<BlobReader, StoreError> {
        Ok(BlobReader::new(self.open_blob(d)?))
    }

    /// [`open_blob_stream`](Store::open_blob_stream) reading `chunk` bytes
    /// at a time (5 chunks of memory): bigger requests for a copy that
    /// waits on the disk, such as an archive's of a kept blob
    /// ([`LARGE_CHUNK`](super::direct_read::LARGE_CHUNK)).
    pub fn open_blob_stream_chunked(
        &self,
        d: &Digest,
        chunk: usize,
    ) -> Result<BlobReader, StoreError> {
        Ok(BlobReader::with_chunk(self.open_blob(d)?, chunk))
    }

    /// Reads a whole blob into memory, checking it against its digest: for
    /// manifests, configs and other small JSON blobs.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &self.blob_path(d)))?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(StoreError::CorruptBlob { digest: *d, actual });
        }
        Ok(bytes)
    }

    /// Re-hashes a blob, streaming, and errors if its content does not match
    /// its name.
    pub fn verify_blob(&self, d: &Digest) -> Result<(), StoreError> {
        let mut file = self.open_blob(d)?;
        let mut hasher = Hasher::new();
        io::copy(&mut file, &mut hasher).map_err(io_err("read", &self.blob_path(d)))?;
        let actual = hasher.finish();
        if actual != *d {
            return Err(StoreError::CorruptBlob { digest: *d, actual });
        }
        Ok(())
    }
}
