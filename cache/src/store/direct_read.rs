//! Reading a blob front to back past the page cache ([`BlobReader`]).
//!
//! Blobs are written with `O_DIRECT` ([`super::direct`]), so a layer is
//! usually not in the page cache when an export or a push reads it, and a
//! buffered read would fill the cache with hundreds of megabytes read once.
//! On a VM whose free memory the host reclaims each new page-cache page is
//! a fault on the host: 500 MiB read buffered took 1.34 s (1.30 s of
//! system time) here, with `O_DIRECT` 0.30 s. A blob that is in the page
//! cache is read from the disk all the same: asking the cache first with a
//! read that must not wait (`RWF_NOWAIT`) started its readahead, so the
//! next read of the blob found it cached and went the slow way. A thread
//! reads ahead, so the disk's time overlaps the caller's hashing and
//! writing.

use super::direct::{as_bytes, set_direct, Block, ALIGN};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::mpsc;

/// A blob read from its start with `O_DIRECT` (buffered where the file
/// system refuses it), by a thread of its own that reads up to
/// [`AHEAD`] chunks ahead: the disk works while the caller hashes and
/// writes what came before.
pub struct BlobReader {
    /// The file until the first read starts the reading thread.
    file: Option<File>,
    /// Bytes asked of the disk at once.
    chunk: usize,
    direct: bool,
    chunks: Option<mpsc::Receiver<io::Result<Chunk>>>,
    /// Buffers handed back to the thread to fill again.
    spare: Option<mpsc::Sender<Vec<Block>>>,
    current: Chunk,
    /// `current.blocks[start..current.len]` is not yet handed out.
    start: usize,
    done: bool,
}

/// Chunks read and not yet taken, at most.
const AHEAD: usize = 2;

/// Bytes read at once by default. With [`AHEAD`] this keeps a reader at
/// 1.5 MiB: a push reads two layers at once beside their compression, and
/// three kept blobs as it uploads them. Each request is a VM exit on a
/// virtio disk: 128 KiB requests four ahead cost a first push of 504 MiB
/// 0.1 s more CPU than 512 KiB two ahead (3.52 s against 3.40 s,
/// alternating), for 4-6 MB more peak RSS (51-54 MB). Earlier, with three
/// compressions at once, 1 MiB chunks two ahead took it from 59 to 73 MB.
const CHUNK: usize = 512 << 10;

/// Bytes read at once by a reader that may hold more memory
/// ([`BlobReader::with_chunk`]): the disk here reads 128 KiB requests one
/// after another at 0.69 GB/s and 1 MiB ones at 1.5 GB/s (`dd
/// iflag=direct`), which is what copying a kept blob waits for.
pub const LARGE_CHUNK: usize = 1 << 20;

/// Bytes read from the blob: the first `len` of `blocks`.
struct Chunk {
    blocks: Vec<Block>,
    len: usize,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("direct", &self.direct)
            .field("done", &self.done)
            .finish()
    }
}

impl BlobReader {
    pub(crate) fn new(file: File) -> Self {
        BlobReader::with_chunk(file, CHUNK)
    }

    /// A reader asking the disk for `chunk` bytes at a time (rounded up to
    /// whole blocks): [`AHEAD`] + 1 chunks of memory.
    pub(crate) fn with_chunk(file: File, chunk: usize) -> Self {
        let direct = set_direct(&file, true).is_ok();
        BlobReader {
            file: Some(file),
            chunk: chunk.div_ceil(ALIGN).max(1) * ALIGN,
            direct,
            chunks: None,
            spare: None,
            current: Chunk {
                blocks: Vec::new(),
                len: 0,
            },
            start: 0,
            done: false,
        }
    }

    /// Whether the reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The next chunk from the reading thread (started on the first call);
    /// `false` at the end of the blob.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if let Some(file) = self.file.take() {
            let (chunks_tx, chunks) = mpsc::sync_channel(AHEAD);
            let (spare, spare_rx) = mpsc::channel();
            let chunk = self.chunk;
            std::thread::Builder::new()
                .name("estiba-blob-read".to_string())
                .spawn(move || read_ahead(&file, chunk, &chunks_tx, &spare_rx))?;
            self.chunks = Some(chunks);
            self.spare = Some(spare);
        }
        let Some(chunks) = &self.chunks else {
            return Ok(false);
        };
        let chunk = match chunks.recv() {
            Ok(chunk) => chunk?,
            Err(_) => return Err(io::Error::other("the blob's reading thread ended")),
        };
        let used = std::mem::replace(&mut self.current, chunk);
        if let (Some(spare), false) = (&self.spare, used.blocks.is_empty()) {
            // The thread may be gone (the end was sent): nothing to reuse.
            let _ = spare.send(used.blocks);
        }
        self.start = 0;
        Ok(self.current.len > 0)
    }
}

/// The reading thread: sends each chunk of `file` in order, then an empty
/// one at its end; stops at the first error (sent on) or when the reader
/// is gone.
fn read_ahead(
    file: &File,
    chunk: usize,
    chunks: &mpsc::SyncSender<io::Result<Chunk>>,
    spare: &mpsc::Receiver<Vec<Block>>,
) {
    let mut offset = 0u64;
    loop {
        let mut blocks = spare
            .try_recv()
            .unwrap_or_else(|_| vec![Block([0; ALIGN]); chunk / ALIGN]);
        let read = loop {
            match std::os::unix::fs::FileExt::read_at(file, as_bytes(&mut blocks), offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Accepted when set, refused on read: read buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && is_direct(file) => {
                    if let Err(e) = set_direct(file, false) {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        let end = !matches!(read, Ok(n) if n > 0);
        let sent = chunks.send(read.map(|len| {
            offset += len as u64;
            Chunk { blocks, len }
        }));
        if end || sent.is_err() {
            return;
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.start == self.current.len && !self.next_chunk()? {
            self.done = true;
            return Ok(0);
        }
        let n = out.len().min(self.current.len - self.start);
        let bytes = as_bytes(&mut self.current.blocks);
        out[..n].copy_from_slice(&bytes[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Whether `O_DIRECT` is set on `file`.
fn is_direct(file: &File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)
        .is_ok_and(|flags| OFlag::from_bits_retain(flags).contains(OFlag::O_DIRECT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_every_byte_of_an_uncached_blob() {
        // Not a whole number of blocks, more than a chunk, whatever the
        // chunk (an odd size is rounded up to whole blocks).
        for chunk in [CHUNK, LARGE_CHUNK, 5000] {
            let len = chunk.max(CHUNK) as u32 * 2 + 12_345;
            reads_every_byte(chunk, len);
        }
    }

    fn reads_every_byte(chunk: usize, len: u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        {
            let mut f = File::create(&path).expect("create");
            f.write_all(&bytes).expect("write");
            f.sync_all().expect("sync");
        }
        let f = File::open(&path).expect("open");
        let mut reader = BlobReader::with_chunk(f, chunk);
        let mut back = Vec::new();
        // Odd-sized reads across chunk boundaries.
        let mut piece = vec![0u8; 77_777];
        loop {
            let n = reader.read(&mut piece).expect("read");
            if n == 0 {
                break;
            }
            back.extend_from_slice(&piece[..n]);
        }
        assert_eq!(back.len(), bytes.len(), "chunks of {chunk}");
        assert!(back == bytes, "the bytes read in chunks of {chunk} differ");
    }

    #[test]
    fn an_empty_blob_and_a_reader_dropped_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        File::create(&empty).expect("create");
        let mut all = Vec::new();
        BlobReader::new(File::open(&empty).expect("open"))
            .read_to_end(&mut all)
            .expect("read");
        assert!(all.is_empty());
        // Dropped after one read: its thread, blocked on a full channel,
        // ends instead of keeping the file open.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; 8 * CHUNK]).expect("write");
        let mut reader = BlobReader::new(File::open(&big).expect("open"));
        let mut ten = [0u8; 10];
        reader.read_exact(&mut ten).expect("read");
        assert_eq!(ten, [7u8; 10]);
        drop(reader);
    }
}
