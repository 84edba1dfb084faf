//! Layer compression: gzip and zstd on the way out, and every format an image
//! or an `ADD` source may come in on the way in.
//!
//! A layer blob is named by the digest of its *compressed* bytes, so
//! compressing and hashing happen in one pass ([`CompressWriter`]), and the
//! output must be deterministic: the gzip header carries no file name and no
//! time, and the levels are fixed (gzip 6, zstd 3), so the same tar always
//! gives the same blob with the same libraries.

use estiba_cache::{Digest, Hasher};
use std::fmt;
use std::io::{self, Read, Write};

pub use estiba_cache::Compression;

/// The OCI media type of a layer compressed with `compression`
/// ([`Compression::oci_media_type`]).
pub fn media_type(compression: Compression) -> &'static str {
    compression.oci_media_type()
}

/// What the first bytes of a stream say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detected {
    /// No known compression magic: read as it is.
    Plain,
    /// `1f 8b`.
    Gzip,
    /// `28 b5 2f fd`.
    Zstd,
    /// `BZh`.
    Bzip2,
    /// `fd 37 7a 58 5a 00`.
    Xz,
}

impl Detected {
    /// The layer [`Compression`] this is, if OCI has a media type for it.
    pub fn compression(self) -> Option<Compression> {
        match self {
            Detected::Plain => Some(Compression::None),
            Detected::Gzip => Some(Compression::Gzip),
            Detected::Zstd => Some(Compression::Zstd),
            Detected::Bzip2 | Detected::Xz => None,
        }
    }
}

/// How many leading bytes [`detect`] needs to tell every format apart.
pub const MAGIC_LEN: usize = 6;

/// The format the leading bytes `prefix` announce (pass at least
/// [`MAGIC_LEN`] bytes unless the stream is shorter).
pub fn detect(prefix: &[u8]) -> Detected {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Detected::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Detected::Zstd
    } else if prefix.starts_with(b"BZh") {
        Detected::Bzip2
    } else if prefix.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Detected::Xz
    } else {
        Detected::Plain
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// Reading the input failed (including a corrupt or truncated
    /// compressed input).
    #[error("cannot read the {format} input")]
    Read {
        /// The format being read.
        format: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the {compression} output")]
    Write {
        /// The compression being written.
        compression: Compression,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Compresses everything `reader` yields into `writer` and returns the
/// digest and size of the compressed bytes, computed as they are written.
pub fn compress(
    mut reader: impl Read,
    writer: impl Write,
    compression: Compression,
) -> Result<(Digest, u64), CompressError> {
    let mut out = CompressWriter::new(writer, compression)?;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CompressError::Read {
                    format: "uncompressed".to_string(),
                    source,
                })
            }
        };
        out.write_all(&buf[..n])
            .map_err(|source| CompressError::Write {
                compression,
                source,
            })?;
    }
    let (_, digest, size) = out.finish()?;
    Ok((digest, size))
}

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub(crate) struct DigestWriter<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Hasher::new(),
            size: 0,
        }
    }

    /// The inner writer, the digest and the number of bytes written.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.size)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    None(DigestWriter<W>),
    Gzip(ParallelGzip<DigestWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, DigestWriter<W>>),
}

/// A writer that compresses what it is given into an inner writer, hashing
/// the compressed bytes on the way: write a layer tar into it, then
/// [`finish`](CompressWriter::finish) for the blob digest and size.
pub struct CompressWriter<W: Write> {
    encoder: Encoder<W>,
    compression: Compression,
}

impl<W: Write> fmt::Debug for CompressWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompressWriter")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// gzip level: zlib's default, what Docker and BuildKit use.
const GZIP_LEVEL: u32 = 6;
/// Input per gzip member when compressing in parallel.
const GZIP_CHUNK: usize = 1 << 20;

/// One gzip member of `data`: no file name, mtime 0, OS "unknown", so the
/// bytes are the same on every machine.
fn gzip_member(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(data.len() / 2 + 64),
            flate2::Compression::new(GZIP_LEVEL),
        );
    enc.write_all(data)?;
    enc.finish()
}

/// gzip on every core: the input is cut into fixed 1 MiB chunks, each
/// compressed as its own gzip member, the members written in order. A
/// multi-member stream is plain gzip (RFC 1952) that `gzip -d`, Go's
/// `compress/gzip` (docker, containerd) and flate2 read as one stream; the
/// output depends only on the input, never on the number of threads. An
/// input smaller than a chunk is one member, as a single-threaded encoder
/// would write it, so it only pays for layers big enough to gain.
struct ParallelGzip<W: Write> {
    out: W,
    full: Vec<Vec<u8>>,
    current: Vec<u8>,
    threads: usize,
    wrote: bool,
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W) -> Self {
        ParallelGzip {
            out,
            full: Vec::new(),
            current: Vec::new(),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
            wrote: false,
        }
    }

    /// Compresses the full chunks waiting, in parallel, and writes them in order.
    fn drain(&mut self) -> io::Result<()> {
        let chunks = std::mem::take(&mut self.full);
        let members: Vec<io::Result<Vec<u8>>> = if chunks.len() <= 1 {
            chunks.iter().map(|c| gzip_member(c)).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|c| scope.spawn(move || gzip_member(c)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("gzip worker panicked")))
                    })
                    .collect()
            })
        };
        for member in members {
            self.out.write_all(&member?)?;
            self.wrote = true;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() || !self.wrote && self.full.is_empty() {
            let last = std::mem::take(&mut self.current);
            self.full.push(last);
        }
        self.drain()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK - self.current.len();
        let n = buf.len().min(room);
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == GZIP_CHUNK {
            let chunk = std::mem::replace(&mut self.current, Vec::with_capacity(GZIP_CHUNK));
            self.full.push(chunk);
            if self.full.len() >= self.threads {
                self.drain()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
/// zstd level: zstd's default, what containerd and BuildKit use.
const ZSTD_LEVEL: i32 = 3;

impl<W: Write> CompressWriter<W> {
    /// Starts a compressed stream of `compression` into `writer`.
    pub fn new(writer: W, compression: Compression) -> Result<Self, CompressError> {
        let inner = DigestWriter::new(writer);
        let encoder = match compression {
            Compression::None => Encoder::None(inner),
            // No file name, mtime 0, OS "unknown": the header is the same
            // on every machine.
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(inner)),
            Compression::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(inner, ZSTD_LEVEL).map_err(|source| {
                        CompressError::Write {
                            compression,
                            source,
                        }
                    })?;
                enc.include_checksum(true)
                    .map_err(|source| CompressError::Write {
                        compression,
                        source,
                    })?;
                Encoder::Zstd(enc)
            }
        };
        Ok(CompressWriter {
            encoder,
            compression,
        })
    }

    /// Ends the compressed stream; returns the inner writer and the digest
    /// and size of the compressed bytes.
    pub fn finish(self) -> Result<(W, Digest, u64), CompressError> {
        let compression = self.compression;
        let wrap = |source| CompressError::Write {
            compression,
            source,
        };
        let mut inner = match self.encoder {
            Encoder::None(w) => w,
            Encoder::Gzip(enc) => enc.finish().map_err(wrap)?,
            Encoder::Zstd(enc) => enc.finish().map_err(wrap)?,
        };
        inner.flush().map_err(wrap)?;
        Ok(inner.finish())
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.encoder {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Reads the leading bytes of `reader` (up to [`MAGIC_LEN`]) without losing
/// them: returns what they say and a reader that yields the whole stream.
pub fn sniff<'a>(mut reader: impl Read + 'a) -> io::Result<(Detected, impl Read + 'a)> {
    let mut magic = [0u8; MAGIC_LEN];
    let mut len = 0;
    while len < MAGIC_LEN {
        match reader.read(&mut magic[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let detected = detect(&magic[..len]);
    Ok((
        detected,
        io::Cursor::new(magic).take(len as u64).chain(reader),
    ))
}

/// A reader yielding the decompressed bytes of `reader`, whatever of gzip,
/// zstd, bzip2 or xz it is compressed with (told by its magic bytes), or
/// its bytes as they are when it has no known magic. Concatenated members
/// or frames are read as one stream, as `gzip -d` does; a corrupt or
/// truncated stream makes the returned reader fail with an error.
pub fn decompressing_reader<'a>(
    reader: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, CompressError> {
    let (detected, reader) = sniff(reader).map_err(|source| CompressError::Read {
        format: "compressed".to_string(),
        source,
    })?;
    Ok(match detected {
        Detected::Plain => Box::new(reader),
        Detected::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Detected::Zstd => Box::new(zstd::stream::read::Decoder::new(reader).map_err(|source| {
            CompressError::Read {
                format: "zstd".to_string(),
                source,
            }
        })?),
        Detected::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Detected::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(reader)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn detects_every_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0, 0, 0]), Detected::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Detected::Zstd);
        assert_eq!(detect(b"BZh91A"), Detected::Bzip2);
        assert_eq!(detect(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Detected::Xz);
        assert_eq!(detect(b"ustar"), Detected::Plain);
        assert_eq!(detect(b""), Detected::Plain);
        assert_eq!(detect(&[0x1f]), Detected::Plain);
    }

    #[test]
    fn gzip_is_deterministic_and_names_nothing() {
        let data = sample();
        let mut a = Vec::new();
        let mut b = Vec::new();
        let da = compress(&data[..], &mut a, Compression::Gzip).expect("gzip");
        let db = compress(&data[..], &mut b, Compression::Gzip).expect("gzip");
        assert_eq!(a, b);
        assert_eq!(da, db);
        assert_eq!(da, (Digest::of(&a), a.len() as u64));
        // FLG = 0 (no name, no comment), MTIME = 0, OS = 255.
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn round_trips_through_every_compression() {
        let data = sample();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut blob = Vec::new();
            let (digest, size) = compress(&data[..], &mut blob, c).expect("compress");
            assert_eq!(digest, Digest::of(&blob), "{c}");
            assert_eq!(size, blob.len() as u64, "{c}");
            let mut back = Vec::new();
            decompressing_reader(&blob[..])
                .expect("reader")
                .read_to_end(&mut back)
                .expect("decompress");
            assert_eq!(back, data, "{c}");
            assert_eq!(Compression::from_media_type(media_type(c)), Some(c));
        }
    }

    #[test]
    fn reads_bzip2_and_xz() {
        let data = sample();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).expect("bzip2");
        let bz = bz.finish().expect("bzip2");
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).expect("xz");
        let xz = xz.finish().expect("xz");
        for blob in [bz, xz] {
            let mut back = Vec::new();
            decompressing_reader(&blob[..])
                .expect("reader")
                .read_to_end(&mut back)
                .expect("decompress");
            assert_eq!(back, data);
        }
    }

    #[test]
    fn truncated_streams_fail() {
        let data = sample();
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut blob = Vec::new();
            compress(&data[..], &mut blob, c).expect("compress");
            let cut = &blob[..blob.len() / 2];
            let mut back = Vec::new();
            let result = decompressing_reader(cut)
                .expect("reader")
                .read_to_end(&mut back);
            assert!(result.is_err(), "{c}: truncated stream read without error");
        }
    }

    #[test]
    fn short_plain_input_is_kept() {
        let mut back = Vec::new();
        decompressing_reader(&b"abc"[..])
            .expect("reader")
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back, b"abc");
    }
}

#[cfg(test)]
mod parallel_gzip_tests {
    use super::*;
    use std::io::Read;

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 7 + b'a')
            .collect()
    }

    fn gzip(input: &[u8]) -> (Vec<u8>, Digest) {
        let mut out = Vec::new();
        let (digest, size) = compress(input, &mut out, Compression::Gzip).expect("compress");
        assert_eq!(size, out.len() as u64);
        (out, digest)
    }

    #[test]
    fn multi_member_output_is_gzip_every_reader_reads() {
        let input = data(5 * GZIP_CHUNK + 12_345);
        let (out, digest) = gzip(&input);
        assert_eq!(Digest::of(&out), digest);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .expect("flate2 reads it");
        assert_eq!(back, input);
        // The system's gzip reads it too (docker's Go reader is multistream).
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is installed");
        let mut stdin = child.stdin.take().expect("stdin");
        let feed = std::thread::spawn(move || stdin.write_all(&out));
        let result = child.wait_with_output().expect("gzip runs");
        feed.join().expect("feeder").expect("fed");
        assert!(result.status.success());
        assert_eq!(result.stdout, input);
    }

    #[test]
    fn output_is_deterministic_and_small_inputs_are_one_member() {
        let input = data(3 * GZIP_CHUNK);
        assert_eq!(gzip(&input).0, gzip(&input).0);
        let small = data(1000);
        assert_eq!(gzip(&small).0, gzip_member(&small).expect("member"));
        let empty = gzip(&[]).0;
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .expect("an empty input is a valid empty gzip stream");
        assert!(back.is_empty());
    }
}
