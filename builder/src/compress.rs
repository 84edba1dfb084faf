//! Layer compression: gzip and zstd on the way out, and every format an image
//! or an `ADD` source may come in on the way in.
//!
//! A layer blob is named by the digest of its *compressed* bytes, so
//! compressing and hashing happen in one pass ([`compress`]), and the
//! output must be deterministic: the gzip header carries no file name and no
//! time, and the level is part of what is asked for ([`Codec`]: gzip 2 and
//! zstd 3 by default), so the same tar and codec always give the same blob
//! with the same libraries, on any number of cores.
//!
//! gzip is the slow part of an export or a push. It is libdeflate's: for
//! the size zlib's level 6 gives (docker's and BuildKit's default, Go's
//! `compress/gzip`), libdeflate's level 2 takes 40 to 65% of the time,
//! hence the default level 2. A deflater also searches for matches in
//! random bytes or already compressed files as hard as in text, only to
//! store them as they are in the end, and in base64 of such bytes
//! only to code their literals: [`gzip_member`] tells such data apart
//! first and codes it straight away.

use estiba_cache::{Digest, Hasher};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{mpsc, Arc, Mutex};

mod literals;

pub use estiba_cache::{Codec, Compression};

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
    /// A level the compression does not take.
    #[error("{compression} takes compression levels {min} to {max}, not {level}")]
    Level {
        /// The compression.
        compression: Compression,
        /// The level asked for.
        level: u32,
        /// Its lowest level.
        min: u32,
        /// Its highest level.
        max: u32,
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

/// `compression` at `level` (its default when `None`), if the format takes
/// that level ([`Codec::levels`]). zstd's level 0 is its default, as zstd
/// and BuildKit read it.
pub fn codec(compression: Compression, level: Option<u32>) -> Result<Codec, CompressError> {
    let level = match (compression, level) {
        (_, None) | (Compression::Zstd, Some(0)) => return Ok(Codec::default_for(compression)),
        (_, Some(level)) => level,
    };
    let levels = Codec::levels(compression);
    if !levels.contains(&level) {
        return Err(CompressError::Level {
            compression,
            level,
            min: *levels.start(),
            max: *levels.end(),
        });
    }
    Ok(Codec { compression, level })
}

/// Compresses everything `reader` yields into `writer` with `codec` (a
/// [`Compression`] means its default level) and returns the digest and size
/// of the compressed bytes, computed as they are written.
pub fn compress(
    reader: impl Read,
    writer: impl Write,
    codec: impl Into<Codec>,
) -> Result<(Digest, u64), CompressError> {
    let mut out = DigestWriter::new(writer);
    compress_to(reader, &mut out, codec)?;
    let (_, digest, size) = out.finish();
    Ok((digest, size))
}

/// Compresses everything `reader` yields into `writer` with `codec` and
/// returns the compressed size; nothing is hashed (for a writer that
/// hashes what it is given, as a store's blob writer does).
pub fn compress_to(
    mut reader: impl Read,
    writer: impl Write,
    codec: impl Into<Codec>,
) -> Result<u64, CompressError> {
    let codec = codec.into();
    let compression = codec.compression;
    let mut out = CompressWriter::new(writer, codec)?;
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
    let (_, size) = out.finish()?;
    Ok(size)
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

/// A writer that counts what passes through it.
pub(crate) struct CountWriter<W> {
    pub(crate) inner: W,
    /// Bytes written so far.
    pub(crate) size: u64,
}

impl<W: Write> Write for CountWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    None(CountWriter<W>),
    Gzip(ParallelGzip<CountWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, CountWriter<W>>),
}

/// A writer that compresses what it is given into an inner writer,
/// counting the compressed bytes: write a layer tar into it, then
/// [`finish`](CompressWriter::finish) for the blob size. It does not hash:
/// [`compress`] does, or the writer it is given (a store's blob writer).
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

/// Input per gzip member when compressing in parallel.
const GZIP_CHUNK: usize = 1 << 20;

/// The gzip header of a stored member: no file name, mtime 0, OS
/// "unknown", so the bytes are the same on every machine; XFL as
/// libdeflate sets it for `level` in the members it writes.
fn gzip_header(level: u32) -> [u8; 10] {
    let xfl = match level {
        8.. => 2,
        0..=1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// One gzip chunk of `data` at `level`, cut into runs of [`SEGMENT`]s
/// coded alike ([`segment_codings`]): data deflate cannot shrink goes out
/// as a member of stored blocks, bytes with next to no repeats as a member
/// of literal blocks ([`literals`]), both as deflate itself ends up coding
/// them but without its match search, which costs as much there as on
/// text; each run of the rest is a member deflated by libdeflate at
/// `level` ([`deflate_member`]). The output depends on `data` and `level`
/// only.
fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    gzip_member_into(data, level, Vec::new())
}

/// [`gzip_member`] written into `out` (cleared first): a buffer used
/// again, so the allocator is not asked for a megabyte per member.
fn gzip_member_into(data: &[u8], level: u32, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    out.clear();
    let codings = if level == 0 {
        Vec::new()
    } else {
        segment_codings(data)
    };
    if codings.iter().all(|&c| c == Coding::Deflate) {
        deflate_member(&mut out, data, level)?;
        return Ok(out);
    }
    out.reserve(data.len() + data.len() / 4096 + 64);
    // Runs of segments coded alike, in order: (coding, start, end).
    let mut runs: Vec<(Coding, usize, usize)> = Vec::new();
    for (i, &coding) in codings.iter().enumerate() {
        let (start, end) = (i * SEGMENT, ((i + 1) * SEGMENT).min(data.len()));
        match runs.last_mut() {
            Some((kind, _, run_end)) if *kind == coding => *run_end = end,
            _ => runs.push((coding, start, end)),
        }
    }
    for (coding, start, end) in runs {
        let run = &data[start..end];
        if coding == Coding::Deflate {
            deflate_member(&mut out, run, level)?;
            continue;
        }
        out.extend_from_slice(&gzip_header(level));
        if coding == Coding::Stored {
            stored_blocks(&mut out, run, true);
        } else {
            literals::literal_blocks(&mut out, run, SEGMENT);
        }
        out.extend_from_slice(&libdeflater::crc32(run).to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(run.len() as u32).to_le_bytes());
    }
    Ok(out)
}

thread_local! {
    /// This thread's libdeflate compressor and its level: made once per
    /// worker, not once per member.
    static DEFLATER: RefCell<Option<(u32, libdeflater::Compressor)>> =
        const { RefCell::new(None) };
}

/// `data` as one gzip member deflated by libdeflate at `level`, appended
/// to `out`. libdeflate compresses a whole buffer at once, which is what a
/// member is here, and does it in less time than zlib for the same size:
/// its level 2 (the default) writes about what zlib's level 6 writes (on
/// text 3% less, on binaries 1% more) in 40 to 65% of zlib-rs's time.
fn deflate_member(out: &mut Vec<u8>, data: &[u8], level: u32) -> io::Result<()> {
    let lvl = libdeflater::CompressionLvl::new(level as i32)
        .map_err(|_| io::Error::other(format!("gzip level {level} is out of range")))?;
    DEFLATER.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((kept, compressor)) if *kept == level => compressor,
            _ => &mut slot.insert((level, libdeflater::Compressor::new(lvl))).1,
        };
        let start = out.len();
        out.resize(start + compressor.gzip_compress_bound(data.len()), 0);
        let written = compressor
            .gzip_compress(data, &mut out[start..])
            .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
        out.truncate(start + written);
        Ok(())
    })
}

/// `data` as deflate stored blocks (at most 65,535 bytes each), starting on
/// a byte boundary; the last one is the stream's final block when `last`.
fn stored_blocks(out: &mut Vec<u8>, data: &[u8], last: bool) {
    let mut pieces = data.chunks(usize::from(u16::MAX)).peekable();
    while let Some(piece) = pieces.next() {
        let final_block = last && pieces.peek().is_none();
        // BFINAL, then BTYPE 00 and the padding to the byte boundary.
        out.push(u8::from(final_block));
        let len = piece.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

/// The piece of a member judged on its own: deflate's window.
const SEGMENT: usize = 32 * 1024;

/// How a [`SEGMENT`] of a chunk is coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// By libdeflate: it has repeats to find.
    Deflate,
    /// As literals coded by their frequencies: next to no repeats, but
    /// some bytes more frequent than others (base64 of random or
    /// compressed data).
    Literals,
    /// As it is: next to no repeats and a flat histogram (random bytes,
    /// compressed files), which deflate would store too.
    Stored,
}

/// How each [`SEGMENT`] of `chunk` is coded. A quick search for repeats
/// (what LZ77 matching would find, [`repeated_bytes`]) that finds next to
/// none leaves the match search out; then a flat byte histogram means
/// Huffman codes cannot shorten the segment either. A short last segment
/// is left to deflate. The verdict depends on the bytes only.
fn segment_codings(chunk: &[u8]) -> Vec<Coding> {
    chunk
        .chunks(SEGMENT)
        .zip(repeated_bytes(chunk))
        .map(|(segment, repeats)| {
            if segment.len() < SEGMENT || repeats > REPEATS_MAX {
                Coding::Deflate
            } else if flat_histogram(segment) {
                Coding::Stored
            } else {
                Coding::Literals
            }
        })
        .collect()
}

/// Whether the bytes of `segment` are so evenly spread that coding them
/// by frequency gains next to nothing: Pearson's χ² against the uniform
/// distribution is at most n/16 (coding by frequency saves about
/// χ²/(2 n ln 2) bits a byte, here at most 0.09, about 1%; random bytes
/// give χ² ≈ 255). Integer arithmetic, so the verdict is the same on
/// every machine.
///
/// The bytes counted are a sample, one 64-byte block in
/// [`HISTOGRAM_SAMPLE_ONE_IN`] across the segment: 8 KiB of a segment,
/// where random bytes give χ² ≈ 255 ± 23 against the limit of 512, and
/// base64 (a quarter of the byte values) 3 n. Counting every byte took
/// a third of the time spent judging segments.
fn flat_histogram(segment: &[u8]) -> bool {
    let mut counts = [[0u32; 256]; 4];
    let mut n = 0u64;
    for block in segment.chunks(64).step_by(HISTOGRAM_SAMPLE_ONE_IN) {
        let mut quads = block.chunks_exact(4);
        for q in &mut quads {
            counts[0][usize::from(q[0])] += 1;
            counts[1][usize::from(q[1])] += 1;
            counts[2][usize::from(q[2])] += 1;
            counts[3][usize::from(q[3])] += 1;
        }
        for &b in quads.remainder() {
            counts[0][usize::from(b)] += 1;
        }
        n += block.len() as u64;
    }
    // χ² = Σ (256 c − n)² / (256 n) ≤ n / 16  ⟺  Σ (256 c − n)² ≤ 16 n².
    let spread: u64 = (0..256)
        .map(|b| {
            let c = u64::from(counts[0][b] + counts[1][b] + counts[2][b] + counts[3][b]);
            (c * 256).abs_diff(n).pow(2)
        })
        .sum();
    spread <= 16 * n * n
}

/// [`flat_histogram`] counts one 64-byte block in this many.
const HISTOGRAM_SAMPLE_ONE_IN: usize = 4;

/// For each [`SEGMENT`] of `chunk`, about how many of its bytes repeat
/// bytes seen in the 32 KiB before (in this chunk): an estimate of what
/// LZ77 matching would find. Only anchors are looked up: positions whose
/// four bytes hash to one value in [`ANCHOR_ONE_IN`], which depends on the
/// bytes alone, so a repeated run has its anchors where its source had
/// them; each anchor that matches is followed to the end of the repeat,
/// which is skipped. A hash collision can hide a repeat, never invent one;
/// repeats shorter than a few dozen bytes may go unseen, and on bytes with
/// a flat histogram they are worth next to nothing to deflate. Looking up
/// every position instead took a sixth of an export's time.
///
/// Once a segment has more than [`REPEATS_MAX`] bytes of repeats, the
/// count has said what it is for (deflate), so the search goes on
/// [`REPEATS_WARM`] bytes before the next segment: on text, most of the
/// scan is skipped. The next segment then finds no repeat of the bytes
/// skipped; a segment that repeats one with repeats of its own has those
/// repeats too.
fn repeated_bytes(chunk: &[u8]) -> Vec<usize> {
    let mut last_seen = vec![0u32; 1 << ANCHOR_HASH_BITS];
    let mut repeats = vec![0usize; chunk.len().div_ceil(SEGMENT)];
    // Positions with four bytes from them.
    let Some(positions) = chunk.len().checked_sub(3) else {
        return repeats;
    };
    // The first position no repeat found so far covers.
    let mut p = 0;
    for base in (0..positions).step_by(64) {
        let end = (base + 64).min(positions);
        if p >= end {
            continue;
        }
        // The anchors of this block are found without a branch per byte
        // (a branch taken one time in 16 at random is mispredicted as
        // often), then visited in order, as a scan byte by byte would.
        let mut anchors = anchor_mask(&chunk[base..end + 3]);
        if p > base {
            anchors &= !0u64 << (p - base);
        }
        while anchors != 0 {
            let q = base + anchors.trailing_zeros() as usize;
            anchors &= anchors - 1;
            let w = word_at(chunk, q);
            let slot = (anchor_hash(w) >> (32 - ANCHOR_HASH_BITS)) as usize;
            let seen = last_seen[slot] as usize;
            last_seen[slot] = q as u32;
            p = q + 1;
            if seen < q && q - seen <= ANCHOR_WINDOW && word_at(chunk, seen) == w {
                let len = common_prefix(&chunk[q..], &chunk[seen..], ANCHOR_MAX_MATCH);
                repeats[q / SEGMENT] += len;
                p = q + len;
                if repeats[q / SEGMENT] > REPEATS_MAX {
                    p = p.max((q / SEGMENT + 1) * SEGMENT - REPEATS_WARM);
                }
                if p >= end {
                    break;
                }
                anchors &= !0u64 << (p - base);
            }
        }
    }
    repeats
}

/// Repeats a segment may have and still be coded without deflate's match
/// search ([`segment_codings`]): matches covering 1/128 of a segment save
/// about that much.
const REPEATS_MAX: usize = SEGMENT / 128;
/// Where [`repeated_bytes`] goes on, before the next segment, once a
/// segment has more than [`REPEATS_MAX`]: what it finds there fills its
/// table for the next segment.
const REPEATS_WARM: usize = 4 * 1024;

/// Bits of [`anchor_hash`] that pick the slot of an anchor in
/// [`repeated_bytes`]'s table.
const ANCHOR_HASH_BITS: u32 = 13;
/// How far back [`repeated_bytes`] looks for a repeat: deflate's window.
const ANCHOR_WINDOW: usize = 32 * 1024;
/// The longest repeat [`repeated_bytes`] follows: deflate's longest match.
const ANCHOR_MAX_MATCH: usize = 258;

/// The four bytes of `chunk` at `p`, little-endian.
fn word_at(chunk: &[u8], p: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&chunk[p..p + 4]);
    u32::from_le_bytes(word)
}

/// The hash of the four bytes at a position, which says whether it is an
/// anchor and where [`repeated_bytes`] files it.
fn anchor_hash(word: u32) -> u32 {
    word.wrapping_mul(0x9E37_79B1)
}

/// Which of the positions of `bytes` (each with the three bytes after it:
/// at most 64 positions, so `bytes` is at most 67 long) are anchors, as
/// bits, the first position the lowest. Bits 12 to 15 of [`anchor_hash`]
/// decide, and they depend on the low 16 bits of the word alone (the two
/// bytes at the position) and of the multiplier: a 16-bit product per
/// byte, each eight verdicts packed into a byte by one multiplication.
fn anchor_mask(bytes: &[u8]) -> u64 {
    const _: () = assert!(ANCHOR_ONE_IN == 16);
    let positions = bytes.len().saturating_sub(3);
    match bytes.first_chunk::<65>() {
        Some(block) if positions >= 64 => anchor_mask_64(block),
        // A short block: its bytes padded, the positions past its end cut
        // off.
        _ => {
            let mut padded = [0u8; 67];
            padded[..bytes.len()].copy_from_slice(bytes);
            padded
                .first_chunk::<65>()
                .map_or(0, |block| anchor_mask_64(block) & ((1u64 << positions) - 1))
        }
    }
}

/// The low 16 bits of [`anchor_hash`]'s multiplier.
const ANCHOR_MUL_LOW: u16 = 0x9E37_79B1_u32 as u16;

/// [`anchor_mask`] of 64 positions (`bytes` holds the second byte of the
/// last), sixteen at a time: the two bytes at each position as a 16-bit
/// lane, multiplied, compared, and the verdicts gathered into bits. The
/// same loop in scalar code the compiler vectorizes poorly took three
/// quarters of [`repeated_bytes`]'s time.
#[cfg(target_arch = "x86_64")]
fn anchor_mask_64(bytes: &[u8; 65]) -> u64 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_mullo_epi16,
        _mm_packs_epi16, _mm_set1_epi16, _mm_setzero_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };
    let mut mask = 0u64;
    for k in 0..4 {
        // SAFETY: x86_64 always has SSE2, and each load reads 16 bytes
        // from 16 k or 16 k + 1, at most byte 64 of the 65.
        let sixteen = unsafe {
            let first = _mm_loadu_si128(bytes.as_ptr().add(16 * k).cast());
            let second = _mm_loadu_si128(bytes.as_ptr().add(16 * k + 1).cast());
            let mul = _mm_set1_epi16(ANCHOR_MUL_LOW as i16);
            let top = _mm_set1_epi16(0xF000_u16 as i16);
            let zero = _mm_setzero_si128();
            // Lane i: byte i, then byte i + 1 as the high byte.
            let low = _mm_unpacklo_epi8(first, second);
            let high = _mm_unpackhi_epi8(first, second);
            let low = _mm_cmpeq_epi16(_mm_and_si128(_mm_mullo_epi16(low, mul), top), zero);
            let high = _mm_cmpeq_epi16(_mm_and_si128(_mm_mullo_epi16(high, mul), top), zero);
            // Each lane's all-ones or zero as one byte, in order.
            _mm_movemask_epi8(_mm_packs_epi16(low, high)) as u16
        };
        mask |= u64::from(sixteen) << (16 * k);
    }
    mask
}

/// [`anchor_mask`] of 64 positions, one at a time.
#[cfg(not(target_arch = "x86_64"))]
fn anchor_mask_64(bytes: &[u8; 65]) -> u64 {
    (0..64).fold(0u64, |mask, i| {
        let low = u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        mask | u64::from(low.wrapping_mul(ANCHOR_MUL_LOW) & 0xF000 == 0) << i
    })
}

/// How many leading bytes `a` and `b` share, at most `max`.
fn common_prefix(a: &[u8], b: &[u8], max: usize) -> usize {
    a.iter()
        .zip(b)
        .take(max)
        .take_while(|(x, y)| x == y)
        .count()
}

/// One position in this many is an anchor of [`repeated_bytes`].
const ANCHOR_ONE_IN: u32 = 16;

/// gzip on every core: the input is cut into fixed 1 MiB chunks, each
/// compressed as its own gzip member ([`gzip_member`]) by a pool of worker
/// threads, the members written in order as they come. A multi-member
/// stream is plain gzip (RFC 1952) that `gzip -d`, Go's `compress/gzip`
/// (docker, containerd) and flate2 read as one stream; the output depends
/// only on the input and the level, never on the number of threads or on
/// timing. An input smaller than a chunk is one member, compressed on the
/// caller's thread, as a single-threaded encoder would write it, so only
/// layers big enough to gain start threads.
struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    current: Vec<u8>,
    threads: usize,
    pool: Option<Pool>,
    /// Chunks handed out so far.
    sent: u64,
    /// Members written so far (they are numbered as their chunks).
    written: u64,
    /// Members done before their turn.
    ready: BTreeMap<u64, Vec<u8>>,
    /// Chunk and member buffers done with, to fill again.
    spare_chunks: Vec<Vec<u8>>,
    spare_members: Vec<Vec<u8>>,
}

/// A chunk to compress: its number, its bytes, a buffer for its member.
type Job = (u64, Vec<u8>, Vec<u8>);
/// A chunk compressed: its number, its buffer (to fill again), its member.
type Done = (u64, Vec<u8>, io::Result<Vec<u8>>);

/// The workers of a [`ParallelGzip`]: chunks go in numbered, members come
/// back numbered. Dropping it ends the workers once their chunk is done.
struct Pool {
    jobs: mpsc::SyncSender<Job>,
    done: mpsc::Receiver<Done>,
}

impl Pool {
    fn start(threads: usize, level: u32) -> io::Result<Pool> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(1);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = mpsc::channel();
        for _ in 0..threads {
            let queue = Arc::clone(&queue);
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("estiba-gzip".to_string())
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok((i, chunk, out)) = job else { return };
                    let member = std::panic::catch_unwind(|| gzip_member_into(&chunk, level, out))
                        .unwrap_or_else(|_| Err(io::Error::other("a gzip worker panicked")));
                    if done_tx.send((i, chunk, member)).is_err() {
                        return;
                    }
                })?;
        }
        Ok(Pool { jobs, done })
    }
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W, level: u32) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        ParallelGzip::with_threads(out, level, threads)
    }

    fn with_threads(out: W, level: u32, threads: usize) -> Self {
        ParallelGzip {
            out,
            level,
            current: Vec::new(),
            threads,
            pool: None,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            spare_chunks: Vec::new(),
            spare_members: Vec::new(),
        }
    }

    /// Chunks handed to the workers and not yet written at most (each
    /// worker busy and one waiting): the memory a layer's compression
    /// holds is about twice this in MiB.
    fn max_in_flight(&self) -> u64 {
        self.threads as u64 + 1
    }

    /// Hands chunk `chunk` (the next in order) to the workers, or
    /// compresses it here when there is one thread.
    fn submit(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        if self.threads <= 1 {
            let member = gzip_member(&chunk, self.level)?;
            self.out.write_all(&member)?;
            self.sent += 1;
            self.written += 1;
            return Ok(());
        }
        if self.pool.is_none() {
            self.pool = Some(Pool::start(self.threads, self.level)?);
        }
        let sent = self.sent;
        let out = self.spare_members.pop().unwrap_or_default();
        let pool = self.pool_ref()?;
        pool.jobs
            .send((sent, chunk, out))
            .map_err(|_| io::Error::other("the gzip workers are gone"))?;
        self.sent += 1;
        self.collect(self.max_in_flight())
    }

    fn pool_ref(&self) -> io::Result<&Pool> {
        self.pool
            .as_ref()
            .ok_or_else(|| io::Error::other("no gzip workers"))
    }

    /// Writes the members that are done, in order, waiting for more while
    /// more than `in_flight` chunks are out.
    fn collect(&mut self, in_flight: u64) -> io::Result<()> {
        loop {
            while let Some(member) = self.ready.remove(&self.written) {
                self.out.write_all(&member)?;
                self.written += 1;
                self.spare_members.push(member);
            }
            let waiting = self.sent - self.written;
            if waiting == 0 {
                return Ok(());
            }
            let pool = self.pool_ref()?;
            let (i, mut chunk, member) = if waiting > in_flight {
                pool.done
                    .recv()
                    .map_err(|_| io::Error::other("the gzip workers are gone"))?
            } else {
                match pool.done.try_recv() {
                    Ok(done) => done,
                    Err(_) => return Ok(()),
                }
            };
            self.ready.insert(i, member?);
            chunk.clear();
            self.spare_chunks.push(chunk);
        }
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() || self.sent == 0 {
            let last = std::mem::take(&mut self.current);
            if self.pool.is_none() {
                // One chunk in all: compressed here, no thread started.
                let member = gzip_member(&last, self.level)?;
                self.out.write_all(&member)?;
                self.sent += 1;
                self.written += 1;
            } else {
                self.submit(last)?;
            }
        }
        self.collect(0)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.current.capacity() == 0 {
            self.current = self.spare_chunks.pop().unwrap_or_default();
            self.current.reserve_exact(GZIP_CHUNK);
        }
        let room = GZIP_CHUNK - self.current.len();
        let n = buf.len().min(room);
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == GZIP_CHUNK {
            let chunk = std::mem::take(&mut self.current);
            self.submit(chunk)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> CompressWriter<W> {
    /// Starts a compressed stream of `codec` (a [`Compression`] means its
    /// default level) into `writer`.
    pub fn new(writer: W, codec: impl Into<Codec>) -> Result<Self, CompressError> {
        let Codec { compression, level } = codec.into();
        let inner = CountWriter {
            inner: writer,
            size: 0,
        };
        let encoder = match compression {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(inner, level)),
            Compression::Zstd => {
                let wrap = |source| CompressError::Write {
                    compression,
                    source,
                };
                let level = i32::try_from(level).map_err(|_| {
                    wrap(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("zstd level {level} is out of range"),
                    ))
                })?;
                let mut enc = zstd::stream::write::Encoder::new(inner, level).map_err(wrap)?;
                enc.include_checksum(true).map_err(wrap)?;
                Encoder::Zstd(enc)
            }
        };
        Ok(CompressWriter {
            encoder,
            compression,
        })
    }

    /// Ends the compressed stream; returns the inner writer and the size
    /// of the compressed bytes.
    pub fn finish(self) -> Result<(W, u64), CompressError> {
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
        Ok((inner.inner, inner.size))
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
    use std::process::{Command, Stdio};

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 7 + b'a')
            .collect()
    }

    /// Bytes no compressor can shrink (xorshift64*, seeded).
    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Text deflate shrinks to about a quarter, as `seq` output.
    fn text(len: usize, from: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 16);
        let mut n = from;
        while out.len() < len {
            out.extend_from_slice(format!("{n}\n").as_bytes());
            n += 1;
        }
        out.truncate(len);
        out
    }

    fn gzip(input: &[u8]) -> (Vec<u8>, Digest) {
        let mut out = Vec::new();
        let (digest, size) = compress(input, &mut out, Compression::Gzip).expect("compress");
        assert_eq!(size, out.len() as u64);
        (out, digest)
    }

    /// What a reader other than ours makes of `blob`: `gzip -dc`, and
    /// Python's zlib (the reference implementation, as `gzip.decompress`).
    fn others_read(blob: &[u8]) -> [Vec<u8>; 2] {
        let run = |cmd: &mut Command| {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("the reader is installed");
            let mut stdin = child.stdin.take().expect("stdin");
            let blob = blob.to_vec();
            let feed = std::thread::spawn(move || stdin.write_all(&blob));
            let result = child.wait_with_output().expect("the reader runs");
            feed.join().expect("feeder").expect("fed");
            assert!(result.status.success(), "{cmd:?} failed");
            result.stdout
        };
        [
            run(Command::new("gzip").arg("-dc")),
            run(Command::new("python3").args([
                "-c",
                "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
            ])),
        ]
    }

    /// flate2, `gzip -dc` and Python's zlib all read `blob` as `input`.
    fn every_reader_reads(blob: &[u8], input: &[u8]) {
        assert_eq!(flate2_reads(blob), input);
        for back in others_read(blob) {
            assert_eq!(back, input);
        }
    }

    fn flate2_reads(blob: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut back)
            .expect("flate2 reads it");
        back
    }

    /// zlib's own gzip of `input` at level 6 (the size docker's default
    /// gives) in the same 1 MiB members.
    fn zlib_size(input: &[u8]) -> usize {
        input
            .chunks(GZIP_CHUNK)
            .map(|c| {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                enc.write_all(c).expect("gzip");
                enc.finish().expect("gzip").len()
            })
            .sum()
    }

    #[test]
    fn multi_member_output_is_gzip_every_reader_reads() {
        let input = data(5 * GZIP_CHUNK + 12_345);
        let (out, digest) = gzip(&input);
        assert_eq!(Digest::of(&out), digest);
        every_reader_reads(&out, &input);
    }

    #[test]
    fn output_is_deterministic_and_small_inputs_are_one_member() {
        let input = data(3 * GZIP_CHUNK);
        assert_eq!(gzip(&input).0, gzip(&input).0);
        let small = data(1000);
        let level = Codec::default_for(Compression::Gzip).level;
        assert_eq!(gzip(&small).0, gzip_member(&small, level).expect("member"));
        let empty = gzip(&[]).0;
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .expect("an empty input is a valid empty gzip stream");
        assert!(back.is_empty());
    }

    #[test]
    fn random_bytes_are_stored_as_they_are() {
        let input = random(3 * GZIP_CHUNK + 777, 1);
        let (out, _) = gzip(&input);
        // Stored blocks: the bytes themselves, 5 bytes a block of 64 KiB
        // and 18 a member, no larger than what zlib makes of them.
        assert!(
            out.len() <= input.len() + input.len() / 8192 + 4 * 18,
            "{}",
            out.len()
        );
        assert!(
            out.len() <= zlib_size(&input),
            "{} > zlib's {}",
            out.len(),
            zlib_size(&input)
        );
        let probe = &input[100_000..100_064];
        assert!(
            out.windows(probe.len()).any(|w| w == probe),
            "not stored verbatim"
        );
        every_reader_reads(&out, &input);
    }

    #[test]
    fn mixed_data_stores_only_what_deflate_cannot_shrink() {
        // Text, random bytes, text, then random bytes with a run of zeros
        // in every segment (as tar padding), then a random block repeated:
        // deflate shrinks all but the plain random bytes.
        let mut input = text(300_000, 1);
        input.extend(random(700_000, 2));
        input.extend(text(200_000, 9_000_000));
        for i in 0..8u64 {
            input.extend(random(SEGMENT - 1024, 10 + i));
            input.extend([0u8; 1024]);
        }
        let block = random(4096, 3);
        for _ in 0..64 {
            input.extend(&block);
        }
        input.extend(random(GZIP_CHUNK, 4));
        let (out, _) = gzip(&input);
        let zlib = zlib_size(&input);
        // About what zlib makes of it: within one percent.
        assert!(
            out.len() <= zlib + zlib / 100,
            "{} against zlib's {zlib}",
            out.len()
        );
        assert!(
            out.len() < input.len() - 300_000,
            "the text and the repeats were not deflated"
        );
        every_reader_reads(&out, &input);
    }

    /// [`repeated_bytes`] written a position at a time:
    /// what the anchor masks must find, repeat for repeat.
    fn repeated_bytes_byte_by_byte(chunk: &[u8]) -> Vec<usize> {
        let mut last_seen = vec![0u32; 1 << ANCHOR_HASH_BITS];
        let mut repeats = vec![0usize; chunk.len().div_ceil(SEGMENT)];
        let mut p = 0;
        while p + 4 <= chunk.len() {
            let w = word_at(chunk, p);
            let hash = anchor_hash(w);
            if (hash >> 12) % ANCHOR_ONE_IN != 0 {
                p += 1;
                continue;
            }
            let slot = (hash >> (32 - ANCHOR_HASH_BITS)) as usize;
            let seen = last_seen[slot] as usize;
            last_seen[slot] = p as u32;
            if seen < p && p - seen <= ANCHOR_WINDOW && word_at(chunk, seen) == w {
                let len = common_prefix(&chunk[p..], &chunk[seen..], ANCHOR_MAX_MATCH);
                repeats[p / SEGMENT] += len;
                let next = (p / SEGMENT + 1) * SEGMENT - REPEATS_WARM;
                p += len;
                if repeats[(p - len) / SEGMENT] > REPEATS_MAX {
                    p = p.max(next);
                }
            } else {
                p += 1;
            }
        }
        repeats
    }

    #[test]
    fn anchors_found_a_block_at_a_time_are_those_a_byte_scan_finds() {
        let noise = random(200_000, 11);
        let mut inputs = vec![
            Vec::new(),
            vec![7u8; 3],
            vec![7u8; 70],
            noise.clone(),
            text(100_000, 1),
        ];
        // Repeats of every length around a block's 64 positions and
        // deflate's 258, near and far, ending exactly at block ends.
        let mut mixed = noise[..5000].to_vec();
        for (i, len) in [1usize, 4, 5, 63, 64, 65, 127, 257, 258, 259, 300, 4096]
            .into_iter()
            .enumerate()
        {
            let from = (i * 977) % 4000;
            let copy = mixed[from..from + len.min(mixed.len() - from)].to_vec();
            mixed.extend_from_slice(&copy);
            mixed.extend_from_slice(&noise[5000 + i * 131..5000 + i * 131 + 61 + i]);
        }
        mixed.extend_from_slice(&noise[..40_000]);
        inputs.push(mixed.clone());
        for cut in [
            mixed.len() - 1,
            mixed.len() - 2,
            mixed.len() - 3,
            64 * 100 + 3,
        ] {
            inputs.push(mixed[..cut].to_vec());
        }
        let mut periodic = Vec::new();
        while periodic.len() < 3 * SEGMENT {
            periodic.extend_from_slice(&noise[..1000]);
        }
        inputs.push(periodic);
        for input in &inputs {
            let expected = repeated_bytes_byte_by_byte(input);
            assert_eq!(repeated_bytes(input), expected, "{} bytes", input.len());
        }
        // Every anchor, in blocks of every length.
        for base in (0..3000).step_by(7) {
            for len in [4, 5, 11, 66, 67] {
                let block = &noise[base..base + len];
                let expected = block.windows(4).enumerate().fold(0u64, |mask, (i, w)| {
                    let hash = anchor_hash(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                    mask | u64::from((hash >> 12) % ANCHOR_ONE_IN == 0) << i
                });
                assert_eq!(anchor_mask(block), expected, "at {base}, {len} bytes");
            }
        }
        // The inputs do exercise repeats, and the skip past a segment
        // known to have enough: the periodic input repeats nearly all its
        // bytes, of which a segment counts a few hundred, then the warm-up.
        assert!(
            repeated_bytes_byte_by_byte(&inputs[5])
                .iter()
                .sum::<usize>()
                > REPEATS_MAX
        );
        let periodic = repeated_bytes(inputs.last().expect("periodic"));
        for &n in &periodic[1..3] {
            assert!(
                n > REPEATS_MAX && n < REPEATS_WARM + 2 * REPEATS_MAX,
                "{periodic:?}"
            );
        }
    }

    #[test]
    fn random_bytes_repeated_within_the_window_are_deflated() {
        // Each segment's histogram is flat, but each 5000-byte block comes
        // again right after itself: deflate halves it, storing would not.
        let mut input = Vec::new();
        for i in 0..GZIP_CHUNK / 10_000 {
            let block = random(5000, 100 + i as u64);
            input.extend(&block);
            input.extend(&block);
        }
        let (out, _) = gzip(&input);
        assert!(
            out.len() < input.len() * 6 / 10,
            "{} of {}",
            out.len(),
            input.len()
        );
        every_reader_reads(&out, &input);
    }

    #[test]
    fn compressible_data_shrinks_as_much_as_with_zlib_level_6() {
        let input = text(2 * GZIP_CHUNK, 100_000_000);
        let (out, _) = gzip(&input);
        let zlib = zlib_size(&input);
        assert!(
            out.len() <= zlib + zlib / 50,
            "{} against zlib's {zlib}",
            out.len()
        );
        assert!(out.len() < input.len() / 3);
        // One member a chunk, each with libdeflate's header: no name, no
        // time, OS "unknown".
        assert_eq!(
            out[..10],
            gzip_header(Codec::default_for(Compression::Gzip).level)
        );
        every_reader_reads(&out, &input);
    }

    /// base64 of random bytes (76 characters a line, as `base64` writes).
    fn base64(len: usize, seed: u64) -> Vec<u8> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out: Vec<u8> = random(len, seed)
            .iter()
            .map(|b| ALPHABET[usize::from(b % 64)])
            .collect();
        for i in (76..len).step_by(77) {
            out[i] = b'\n';
        }
        out
    }

    #[test]
    fn bytes_without_repeats_are_coded_as_literals_as_small_as_deflate_makes_them() {
        // base64 of random bytes: no repeats to find, six bits a byte.
        let encoded = base64(GZIP_CHUNK, 3);
        let codings = segment_codings(&encoded);
        assert!(
            codings.iter().all(|&c| c == Coding::Literals),
            "{codings:?}"
        );
        // Text and random bytes keep their codings.
        assert!(segment_codings(&text(GZIP_CHUNK, 1))
            .iter()
            .all(|&c| c == Coding::Deflate));
        assert!(segment_codings(&random(GZIP_CHUNK, 4))
            .iter()
            .all(|&c| c == Coding::Stored));

        let mut input = text(300_000, 1);
        input.extend(base64(2 * GZIP_CHUNK + 1234, 5));
        input.extend(random(200_000, 6));
        let (out, _) = gzip(&input);
        let zlib = zlib_size(&input);
        assert!(
            out.len() <= zlib + zlib / 200,
            "{} against zlib's {zlib}",
            out.len()
        );
        // libdeflate's level 2 on the base64 alone, as a member before.
        let mut deflated = Vec::new();
        deflate_member(&mut deflated, &encoded, 2).expect("deflate");
        let member = gzip_member(&encoded, 2).expect("member");
        assert!(
            member.len() <= deflated.len() + deflated.len() / 500,
            "{} against libdeflate's {}",
            member.len(),
            deflated.len()
        );
        every_reader_reads(&out, &input);
        every_reader_reads(&member, &encoded);
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_threads() {
        let mut input = random(2 * GZIP_CHUNK + 5, 7);
        input.extend(text(GZIP_CHUNK + 3, 1));
        input.extend(random(GZIP_CHUNK / 2, 8));
        let with = |threads| {
            let mut enc = ParallelGzip::with_threads(Vec::new(), 2, threads);
            // Written in uneven pieces, as a tar stream comes.
            for piece in input.chunks(77_777) {
                enc.write_all(piece).expect("write");
            }
            enc.finish().expect("finish")
        };
        let one = with(1);
        assert_eq!(with(2), one);
        assert_eq!(with(5), one);
        assert_eq!(gzip(&input).0, one);
        assert_eq!(flate2_reads(&one), input);
    }

    #[test]
    fn gzip_t_accepts_every_kind_of_member() {
        let mut input = random(GZIP_CHUNK + SEGMENT / 2, 5);
        input.extend(text(GZIP_CHUNK, 1));
        let (out, _) = gzip(&input);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, &out).expect("write");
        let status = Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status()
            .expect("gzip runs");
        assert!(status.success(), "gzip -t rejects the stream");
    }

    #[test]
    fn levels_are_checked_against_the_format() {
        assert_eq!(
            codec(Compression::Gzip, None).expect("default"),
            Codec::default_for(Compression::Gzip)
        );
        assert_eq!(
            codec(Compression::Zstd, Some(19)).expect("zstd 19").level,
            19
        );
        assert_eq!(codec(Compression::Gzip, Some(0)).expect("gzip 0").level, 0);
        assert_eq!(
            codec(Compression::Zstd, Some(0)).expect("zstd 0"),
            Codec::default_for(Compression::Zstd)
        );
        for (c, bad) in [(Compression::Gzip, 10), (Compression::Zstd, 23)] {
            let err = codec(c, Some(bad)).expect_err("out of range");
            assert!(err.to_string().contains(&format!("not {bad}")), "{err}");
        }
    }

    #[test]
    fn levels_are_kept_apart() {
        let input = text(GZIP_CHUNK / 2, 1);
        let at = |codec: Codec| {
            let mut out = Vec::new();
            compress(&input[..], &mut out, codec).expect("compress");
            out
        };
        let gzip = |level| Codec {
            compression: Compression::Gzip,
            level,
        };
        let zstd = |level| Codec {
            compression: Compression::Zstd,
            level,
        };
        assert_eq!(at(gzip(2)), at(Compression::Gzip.into()));
        assert_ne!(at(gzip(2)), at(gzip(6)));
        assert_ne!(at(gzip(1)), at(gzip(9)));
        assert_eq!(at(zstd(3)), at(Compression::Zstd.into()));
        assert_ne!(at(zstd(1)), at(zstd(19)));
        for blob in [
            at(gzip(0)),
            at(gzip(1)),
            at(gzip(9)),
            at(zstd(1)),
            at(zstd(19)),
        ] {
            let mut back = Vec::new();
            decompressing_reader(&blob[..])
                .expect("reader")
                .read_to_end(&mut back)
                .expect("decompress");
            assert_eq!(back, input);
        }
        // The header's XFL: 4 for the fastest levels, 2 from level 8.
        assert_eq!(at(gzip(1))[8], 4);
        assert_eq!(at(gzip(9))[8], 2);
    }
}
