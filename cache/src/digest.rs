//! `sha256:<hex>` digests, the names of everything in the store.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

/// A string that is not a `sha256:` digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Another algorithm, or none.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// Not 64 lower-case hex digits.
    #[error("malformed sha256 digest {0:?}: expected 64 lower-case hex digits")]
    Hex(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest whose 32 bytes are `bytes` (as [`Digest::as_bytes`] gave).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The 32 bytes, for compact binary records.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> String {
        // One table lookup per nibble: this runs for every file of a
        // context on every build (cache keys), so no per-byte formatting.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
        out
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Algorithm(s.to_string()))?;
        // Lowercase only, as digests are written: one table-free pass.
        fn nibble(b: u8) -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            }
        }
        let bad = || DigestError::Hex(s.to_string());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = nibble(pair[0]).ok_or_else(bad)? << 4 | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a \"sha256:<64 hex digits>\" digest string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Computes a digest over bytes written in pieces.
#[derive(Default)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// A new hasher.
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes and counts what is read through it.
#[derive(Debug)]
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: std::io::Read> DigestReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Hasher::new(),
            size: 0,
        }
    }

    /// Reads what is left (so the digest covers the whole stream), then
    /// gives the digest and size of everything read.
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((self.hasher.finish(), self.size))
    }

    /// The inner reader, and the digest and size of what was read so far.
    pub fn into_parts(self) -> (R, Digest, u64) {
        (self.inner, self.hasher.finish(), self.size)
    }
}

impl<R: std::io::Read> std::io::Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A [`DigestReader`] whose hash runs on a thread of its own: what is read
/// is copied there a MiB at a time, so the hash overlaps the caller's reads
/// and writes. For a copy that waits on the disk, such as a kept blob
/// copied into an archive, where the hash was the one thing besides the
/// copy on the caller's thread. At most two MiB wait to be hashed.
pub struct BackgroundDigestReader<R> {
    inner: R,
    size: u64,
    /// Bytes read, not yet sent to the hashing thread.
    pending: Vec<u8>,
    to_hash: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Buffers the hashing thread is done with.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    hashing: Option<std::thread::JoinHandle<Digest>>,
}

/// Bytes sent to the hashing thread at once.
const BACKGROUND_PIECE: usize = 1 << 20;
/// Pieces waiting for the hashing thread, at most.
const BACKGROUND_QUEUE: usize = 2;

impl<R> fmt::Debug for BackgroundDigestReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundDigestReader")
            .field("size", &self.size)
            .finish()
    }
}

impl<R: std::io::Read> BackgroundDigestReader<R> {
    /// Wraps `inner`; the hashing thread starts here.
    pub fn new(inner: R) -> std::io::Result<Self> {
        let (to_hash, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(BACKGROUND_QUEUE);
        let (give_back, spare) = std::sync::mpsc::channel();
        let hashing = std::thread::Builder::new()
            .name("estiba-hash".to_string())
            .spawn(move || {
                let mut hasher = Hasher::new();
                for mut piece in pieces {
                    hasher.update(&piece);
                    piece.clear();
                    // The reader may be gone: then the buffer is freed.
                    let _ = give_back.send(piece);
                }
                hasher.finish()
            })?;
        Ok(BackgroundDigestReader {
            inner,
            size: 0,
            pending: Vec::with_capacity(BACKGROUND_PIECE),
            to_hash: Some(to_hash),
            spare,
            hashing: Some(hashing),
        })
    }

    /// Sends what is pending to the hashing thread.
    fn send(&mut self) -> std::io::Result<()> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BACKGROUND_PIECE));
        let piece = std::mem::replace(&mut self.pending, next);
        let sent = self.to_hash.as_ref().map(|tx| tx.send(piece));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(std::io::Error::other("the hashing thread is gone")),
        }
    }

    /// The inner reader, and the digest and size of what was read so far
    /// (once the hashing thread has hashed all of it).
    pub fn into_parts(mut self) -> std::io::Result<(R, Digest, u64)> {
        if !self.pending.is_empty() {
            self.send()?;
        }
        drop(self.to_hash.take());
        let digest = self
            .hashing
            .take()
            .map(|h| h.join())
            .transpose()
            .map_err(|_| std::io::Error::other("the hashing thread panicked"))?
            .ok_or_else(|| std::io::Error::other("no hashing thread"))?;
        Ok((self.inner, digest, self.size))
    }
}

impl<R: std::io::Read> std::io::Read for BackgroundDigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        self.size += n as u64;
        if self.pending.len() >= BACKGROUND_PIECE {
            self.send()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let d = Digest::of(b"estiba");
        assert_eq!(Digest::from_bytes(*d.as_bytes()), d);
        assert_ne!(Digest::from_bytes([0; 32]), d);
    }

    #[test]
    fn round_trips_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        assert!(matches!(
            "md5:abc".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
        // Right length, one character wrong anywhere: uppercase or not hex.
        let hex = d.hex();
        for (at, wrong) in [(0, 'E'), (63, 'g'), (31, ' '), (32, 'é')] {
            let mut text: Vec<char> = hex.chars().collect();
            text[at] = wrong;
            let text: String = text.into_iter().collect();
            assert!(
                format!("sha256:{text}").parse::<Digest>().is_err(),
                "{text}"
            );
        }
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).ok(), Some(d));
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), Digest::of(b"abc"));
    }

    #[test]
    fn a_background_digest_is_the_digest_of_what_was_read() {
        use std::io::Read;
        let data: Vec<u8> = (0..3_500_000u32)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        for piece in [1usize, 4096, 1 << 20, 3 << 20] {
            let mut r = BackgroundDigestReader::new(&data[..]).expect("start");
            let mut buf = vec![0u8; piece];
            let mut back = Vec::new();
            loop {
                let n = r.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            let (_, digest, size) = r.into_parts().expect("parts");
            assert_eq!(digest, Digest::of(&data), "pieces of {piece}");
            assert_eq!(size, data.len() as u64);
            assert!(back == data);
        }
        // Nothing read: the digest of nothing.
        let r = BackgroundDigestReader::new(&b""[..]).expect("start");
        assert_eq!(r.into_parts().expect("parts").1, Digest::of(b""));
    }
}
