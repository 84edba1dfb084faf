//! A writer for big files written once, front to back: whole blocks go to
//! the disk with `O_DIRECT`, past the page cache. The store's blob temp
//! files are written with it, and so are exported archives.
//!
//! A layer blob is written once, fsynced, and read back rarely (export,
//! unpacking a snapshot), so caching it buys little, and filling the page
//! cache with hundreds of megabytes costs more than the disk write itself:
//! on a VM whose free memory the host reclaims, each new page-cache page is
//! a fault on the host. Measured on the 2-core CI VM, 554 MB took 1.8 s
//! buffered and 0.4 s direct (`dd oflag=direct`). An archive `estiba save`
//! writes is the same: hundreds of megabytes another program reads later,
//! if at all on this machine.
//!
//! A blob's writer also hashes what it writes: a whole chunk is hashed on a
//! second thread while it is written, so the disk and the hash overlap.
//!
//! `O_DIRECT` needs the buffer, the file offset and the length aligned to
//! the device's block; [`ALIGN`] (4 KiB) covers every common device. The
//! tail that is not a whole block is written buffered, after `O_DIRECT` is
//! turned off. File systems that refuse `O_DIRECT` (EINVAL when it is set or
//! at the first write) get buffered writes throughout.

use super::fsutil::TempFile;
use crate::{Digest, Hasher};
use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

/// Alignment of buffer, offsets and lengths for `O_DIRECT`.
pub(super) const ALIGN: usize = 4096;
/// Bytes gathered before each write: large enough that the device sees
/// big requests, small enough to stay out of the way in memory.
pub(super) const CHUNK: usize = 1 << 20;

/// One aligned block of the buffer.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
pub(super) struct Block(pub(super) [u8; ALIGN]);

/// Chunks at least this large are hashed on a second thread.
const PARALLEL_HASH: usize = 256 * 1024;

/// Buffers writes into aligned [`CHUNK`]s and writes them to a file (a
/// blob's temp file, hashing them as they go out, or any file opened for
/// writing at its start: [`DirectWriter::to_file`]).
pub struct DirectWriter<F: Borrow<File>> {
    file: F,
    hasher: Option<Hasher>,
    /// Grown as bytes come, up to a [`CHUNK`]: a small blob (a config, a
    /// manifest, a tiny layer) costs only the blocks it fills.
    blocks: Vec<Block>,
    /// Bytes of `blocks` in use.
    len: usize,
    /// Bytes written to the file so far.
    offset: u64,
    /// `O_DIRECT` is set on the file.
    direct: bool,
    /// Bytes to write again over what went to the file already
    /// ([`DirectWriter::rewrite`]), once `O_DIRECT` is off at the end.
    rewrites: Vec<(u64, Vec<u8>)>,
    /// Whole chunks are written by a thread while the next one fills
    /// ([`DirectWriter::in_background`]).
    background: bool,
    /// The chunk that thread is writing.
    in_flight: Option<std::thread::JoinHandle<Written>>,
    /// The buffer of the chunk written before, to fill again.
    spare: Vec<Block>,
    /// The file, for the writing threads: duplicated once, not per chunk.
    shared: Option<std::sync::Arc<File>>,
}

/// A chunk written in the background, and what it took along.
struct Written {
    blocks: Vec<Block>,
    hasher: Option<Hasher>,
    result: io::Result<()>,
    /// The file refused `O_DIRECT` at this write, which went buffered.
    went_buffered: bool,
}

impl<F: Borrow<File>> std::fmt::Debug for DirectWriter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("file", self.file.borrow())
            .field("len", &self.len)
            .field("direct", &self.direct)
            .finish()
    }
}

impl DirectWriter<TempFile> {
    /// A writer into a blob's temp file, direct if the file system allows
    /// it, hashing what it writes.
    pub(crate) fn new(file: TempFile) -> Self {
        let mut writer = DirectWriter::to_file(file);
        writer.hasher = Some(Hasher::new());
        writer
    }

    /// The temp file, for error messages.
    pub(crate) fn get_ref(&self) -> &TempFile {
        &self.file
    }

    /// Writes everything buffered and gives back the file (`O_DIRECT` off)
    /// and the digest of all that was written.
    pub(crate) fn finish(mut self) -> io::Result<(TempFile, Digest)> {
        self.write_all_out()?;
        let digest = self.hasher.take().unwrap_or_default().finish();
        Ok((self.file, digest))
    }
}

impl<F: Borrow<File>> DirectWriter<F> {
    /// A writer into `file` (a `File` or a `&File`, open for writing, at
    /// offset 0 and empty), direct if the file system allows it; nothing is
    /// hashed. Nothing reaches the file before a whole [`CHUNK`] is
    /// buffered: [`finish_file`](DirectWriter::finish_file) writes the rest.
    pub fn to_file(file: F) -> Self {
        let direct = set_direct(file.borrow(), true).is_ok();
        DirectWriter {
            file,
            hasher: None,
            blocks: Vec::new(),
            len: 0,
            offset: 0,
            direct,
            rewrites: Vec::new(),
            background: false,
            in_flight: None,
            spare: Vec::new(),
            shared: None,
        }
    }

    /// Writes each whole chunk from a thread of its own while the caller
    /// fills the next (one chunk of memory more), hashing it there too:
    /// the caller's thread never waits on the disk unless it is a chunk
    /// ahead. For a writer fed as fast as the disk takes it, such as an
    /// export writing a layer blob and the archive from one compression.
    pub fn in_background(mut self) -> Self {
        self.background = true;
        self
    }

    /// How many bytes were written into it so far.
    pub fn position(&self) -> u64 {
        self.offset + self.len as u64
    }

    /// Overwrites bytes written earlier, from offset `at` (up to
    /// [`position`](DirectWriter::position)): in the buffer if they are
    /// still there, else in the file when the writer finishes (a tar
    /// header filled in once what follows it is known).
    pub fn rewrite(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let end = at + bytes.len() as u64;
        if end > self.position() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot rewrite up to byte {end}: {} written",
                    self.position()
                ),
            ));
        }
        // What already went to the file waits for the end; the rest is
        // still in the buffer.
        let sent = (self.offset.saturating_sub(at) as usize).min(bytes.len());
        if sent > 0 {
            self.rewrites.push((at, bytes[..sent].to_vec()));
        }
        if sent < bytes.len() {
            let from = (at + sent as u64 - self.offset) as usize;
            as_bytes(&mut self.blocks)[from..from + bytes.len() - sent]
                .copy_from_slice(&bytes[sent..]);
        }
        Ok(())
    }

    /// Writes everything buffered (`O_DIRECT` off for the last partial
    /// block) and gives back the file.
    pub fn finish_file(mut self) -> io::Result<F> {
        self.write_all_out()?;
        Ok(self.file)
    }

    fn write_all_out(&mut self) -> io::Result<()> {
        self.wait()?;
        let whole = self.len / ALIGN * ALIGN;
        self.write_out(whole)?;
        if self.direct {
            set_direct(self.file.borrow(), false)?;
            self.direct = false;
        }
        self.write_out(self.len)?;
        for (at, bytes) in std::mem::take(&mut self.rewrites) {
            std::os::unix::fs::FileExt::write_all_at(self.file.borrow(), &bytes, at)?;
        }
        Ok(())
    }

    /// Writes the first `n` buffered bytes (all of them, or whole blocks
    /// when direct) and moves the rest to the front.
    fn write_out(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let bytes = as_bytes(&mut self.blocks);
        let written = write_chunk(
            self.file.borrow(),
            &bytes[..n],
            self.offset,
            self.direct,
            self.hasher.as_mut(),
        );
        if written? {
            self.direct = false;
        }
        bytes.copy_within(n..self.len, 0);
        self.len -= n;
        self.offset += n as u64;
        Ok(())
    }

    /// Hands the full buffer to a thread that writes it (and hashes it),
    /// after the chunk before is written; the next chunk fills the buffer
    /// that one gives back.
    fn send_chunk(&mut self) -> io::Result<()> {
        self.wait()?;
        let file = match &self.shared {
            Some(file) => std::sync::Arc::clone(file),
            None => {
                let file = std::sync::Arc::new(self.file.borrow().try_clone()?);
                self.shared = Some(std::sync::Arc::clone(&file));
                file
            }
        };
        let mut next = std::mem::take(&mut self.spare);
        next.resize(CHUNK / ALIGN, Block([0; ALIGN]));
        let mut blocks = std::mem::replace(&mut self.blocks, next);
        let mut hasher = self.hasher.take();
        let (offset, direct) = (self.offset, self.direct);
        self.offset += CHUNK as u64;
        self.len = 0;
        let handle = std::thread::Builder::new()
            .name("estiba-write".to_string())
            .spawn(move || {
                let chunk = &as_bytes(&mut blocks)[..CHUNK];
                let written = write_chunk(&file, chunk, offset, direct, hasher.as_mut());
                let went_buffered = matches!(written, Ok(true));
                Written {
                    blocks,
                    hasher,
                    result: written.map(|_| ()),
                    went_buffered,
                }
            })?;
        self.in_flight = Some(handle);
        Ok(())
    }

    /// Waits for the chunk in the background, if any, and takes back its
    /// buffer and hasher.
    fn wait(&mut self) -> io::Result<()> {
        let Some(handle) = self.in_flight.take() else {
            return Ok(());
        };
        let written = handle
            .join()
            .map_err(|_| io::Error::other("the thread writing a chunk panicked"))?;
        self.spare = written.blocks;
        self.hasher = written.hasher;
        if written.went_buffered {
            self.direct = false;
        }
        written.result
    }
}

/// Writes `chunk` at the file's position, `offset`, hashing it on a second
/// thread meanwhile when it is big; `Ok(true)` when the file refused
/// `O_DIRECT` at this write (accepted when set, EINVAL on write) and the
/// chunk went buffered from `offset` (a failed write may have left part).
fn write_chunk(
    mut file: &File,
    chunk: &[u8],
    offset: u64,
    direct: bool,
    hasher: Option<&mut Hasher>,
) -> io::Result<bool> {
    let written = match hasher {
        Some(hasher) if chunk.len() >= PARALLEL_HASH => std::thread::scope(|s| {
            s.spawn(|| hasher.update(chunk));
            file.write_all(chunk)
        }),
        Some(hasher) => {
            hasher.update(chunk);
            file.write_all(chunk)
        }
        None => file.write_all(chunk),
    };
    match written {
        Ok(()) => Ok(false),
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
            set_direct(file, false)?;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(chunk)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// The blocks as the bytes they are.
pub(super) fn as_bytes(blocks: &mut [Block]) -> &mut [u8] {
    // SAFETY: `Block` is `repr(C)` around a byte array with no padding, so
    // the slice is `blocks.len() * ALIGN` contiguous, initialized bytes,
    // borrowed mutably for as long as the result lives.
    unsafe {
        std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), blocks.len() * ALIGN)
    }
}

impl<F: Borrow<File>> Write for DirectWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len == CHUNK {
            if self.background {
                self.send_chunk()?;
            } else {
                self.write_out(CHUNK)?;
            }
        }
        let len = self.len;
        let n = buf.len().min(CHUNK - len);
        let blocks = (len + n).div_ceil(ALIGN);
        if self.blocks.len() < blocks {
            let grown = blocks.max(self.blocks.len() * 2).min(CHUNK / ALIGN);
            self.blocks.resize(grown, Block([0; ALIGN]));
        }
        as_bytes(&mut self.blocks)[len..len + n].copy_from_slice(&buf[..n]);
        self.len += n;
        Ok(n)
    }

    /// Buffered bytes stay until a whole chunk is there or the writer is
    /// finished: nothing reads the temp file before then.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns `O_DIRECT` on or off for `file`.
pub(super) fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = file.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let mut flags = OFlag::from_bits_retain(flags);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4099) as u8).collect()
    }

    /// Writes `data` through a file writer in pieces of `piece` bytes
    /// (each whole chunk from a thread of its own with `background`) and
    /// reads the file back.
    fn through_file_writer(
        dir: &std::path::Path,
        data: &[u8],
        piece: usize,
        background: bool,
    ) -> Vec<u8> {
        let path = dir.join("out");
        let file = File::create(&path).expect("create");
        let mut writer = DirectWriter::to_file(&file);
        if background {
            writer = writer.in_background();
        }
        for part in data.chunks(piece.max(1)) {
            writer.write_all(part).expect("write");
        }
        writer.finish_file().expect("finish");
        drop(file);
        let mut back = Vec::new();
        let mut file = File::open(&path).expect("open");
        file.read_to_end(&mut back).expect("read");
        back
    }

    #[test]
    fn bytes_are_rewritten_in_the_buffer_and_in_the_file() {
        for background in [false, true] {
            rewrites_land(background);
        }
    }

    fn rewrites_land(background: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let file = File::create(&path).expect("create");
        let mut data = pattern(3 * CHUNK + 1000);
        let mut writer = DirectWriter::to_file(&file);
        if background {
            writer = writer.in_background();
        }
        writer.write_all(&data[..CHUNK + 700]).expect("write");
        assert_eq!(writer.position(), (CHUNK + 700) as u64);
        // Gone to the file, straddling the buffer's start, in the buffer.
        let patches: [(usize, usize); 4] = [
            (0, 512),
            (CHUNK - 100, 300),
            (CHUNK + 100, 600),
            (5000, 4096),
        ];
        for (i, (at, len)) in patches.into_iter().enumerate() {
            let bytes = vec![i as u8 + 1; len];
            writer.rewrite(at as u64, &bytes).expect("rewrite");
            data[at..at + len].copy_from_slice(&bytes);
        }
        // Not written yet: refused.
        assert!(writer.rewrite(CHUNK as u64 + 600, &[0; 101]).is_err());
        writer.write_all(&data[CHUNK + 700..]).expect("write");
        writer.finish_file().expect("finish");
        drop(file);
        let mut back = Vec::new();
        let mut file = File::open(&path).expect("open");
        file.read_to_end(&mut back).expect("read");
        assert!(back == data, "background {background}");
    }

    #[test]
    fn a_file_gets_every_byte_whatever_the_length() {
        // The temp dir (O_DIRECT where its file system allows it) and tmpfs,
        // where it may be refused.
        let disk = tempfile::tempdir().expect("tempdir");
        let shm = std::path::Path::new("/dev/shm");
        let shm = shm
            .is_dir()
            .then(|| tempfile::tempdir_in(shm).expect("tempdir"));
        for dir in std::iter::once(disk.path()).chain(shm.as_ref().map(|d| d.path())) {
            for len in [
                0,
                1,
                ALIGN - 1,
                ALIGN,
                ALIGN + 1,
                CHUNK - 1,
                CHUNK,
                CHUNK + 512,
                3 * CHUNK + 7,
            ] {
                let data = pattern(len);
                for (piece, background) in [511, 65536, CHUNK + 1]
                    .into_iter()
                    .flat_map(|p| [(p, false), (p, true)])
                {
                    let back = through_file_writer(dir, &data, piece, background);
                    assert!(
                        back == data,
                        "{len} bytes in pieces of {piece} under {dir:?}, background {background}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_blob_hashed_in_the_background_has_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(4 * CHUNK + 4097);
        for background in [false, true] {
            let temp = TempFile::create(dir.path(), "blob").expect("temp");
            let mut writer = DirectWriter::new(temp);
            if background {
                writer = writer.in_background();
            }
            for part in data.chunks(300_001) {
                writer.write_all(part).expect("write");
            }
            let (temp, digest) = writer.finish().expect("finish");
            assert_eq!(digest, Digest::of(&data), "background {background}");
            let back = std::fs::read(temp.path()).expect("read");
            assert!(back == data, "background {background}");
        }
    }
}
