//! Blob transfers: downloads streamed to the caller's writer while hashed,
//! resumed with `Range` after a cut connection, verified against the
//! descriptor; uploads streamed from a reader the caller can reopen,
//! monolithic (POST + PUT) or chunked (POST, PATCH…, PUT) above a size,
//! retried from the start on transient failures. A blob is never held in
//! memory whole.

use super::error::RegistryError;
use super::transport::{backoff, Call, Endpoint, IDLE_TIMEOUT, MAX_ATTEMPTS};
use super::{Reference, Registry};
use estiba_cache::oci::Descriptor;
use estiba_cache::{Digest, Hasher};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode, Url};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// The size of the pieces an upload is read in.
const UPLOAD_BUFFER: usize = 256 * 1024;

/// A download in progress: what has been written and hashed so far (not
/// hashed here when the writer hashes it: [`Registry::get_blob_unhashed`]).
struct Download {
    received: u64,
    hasher: Option<Hasher>,
}

/// The reader a blob upload gets from its caller, opened again for each try.
pub type OpenBlob<'a> = &'a (dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Sync);

impl Registry {
    /// Streams blob `desc` of `repo`'s repository into `out`, calling
    /// `progress` with the bytes received so far. Cut connections resume
    /// where they stopped; transient errors are retried with backoff. The
    /// digest and size are checked at the end: on an error `out` may hold
    /// a partial or wrong blob, so write it somewhere that is only kept
    /// when this returns `Ok`.
    pub fn get_blob(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        out: &mut dyn Write,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        self.download(repo, desc, out, progress, Some(Hasher::new()))
    }

    /// [`get_blob`](Registry::get_blob) without hashing the bytes, for a
    /// writer that hashes them itself (a store's blob writer): a pull
    /// hashed every byte twice. The size is still checked; the caller
    /// checks the digest (`commit_expect`) and refuses a mismatch with
    /// [`RegistryError::blob_digest_mismatch`], storing nothing.
    pub fn get_blob_unhashed(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        out: &mut dyn Write,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        self.download(repo, desc, out, progress, None)
    }

    fn download(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        out: &mut dyn Write,
        progress: &(dyn Fn(u64) + Sync),
        hasher: Option<Hasher>,
    ) -> Result<(), RegistryError> {
        let mut state = Download {
            received: 0,
            hasher,
        };
        self.on_pull_endpoints(&repo.registry, |ep| {
            self.get_blob_from(ep, repo, desc, out, progress, &mut state)
        })?;
        let reference = repo.familiar();
        if state.received != desc.size {
            return Err(RegistryError::SizeMismatch {
                digest: desc.digest,
                reference,
                host: repo.registry.clone(),
                expected: desc.size,
                actual: state.received,
            });
        }
        let Some(hasher) = state.hasher else {
            return Ok(());
        };
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                what: super::error::Content::Blob,
                reference,
                host: repo.registry.clone(),
                expected: desc.digest,
                actual,
            });
        }
        Ok(())
    }

    fn get_blob_from(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        desc: &Descriptor,
        out: &mut dyn Write,
        progress: &(dyn Fn(u64) + Sync),
        state: &mut Download,
    ) -> Result<(), RegistryError> {
        let call = Self::pull_call(ep, repo);
        let url = self.url(
            &call,
            &format!("v2/{}/blobs/{}", repo.repository, desc.digest),
        )?;
        let mut failures = 0;
        loop {
            let from = state.received;
            if from == desc.size && from > 0 {
                return Ok(());
            }
            let resp = self.send(&call, &|c| {
                let req = c.get(url.clone());
                if from > 0 {
                    req.header(RANGE, format!("bytes={from}-"))
                } else {
                    req
                }
            })?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::BlobNotFound {
                    digest: desc.digest,
                    reference: call.reference.clone(),
                    host: ep.name.clone(),
                });
            }
            if !status.is_success() {
                return Err(self.status_error(&call, resp, "GET blob", 1));
            }
            let content_range = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let skip =
                resume_skip(from, status.as_u16(), content_range.as_deref()).map_err(|reason| {
                    RegistryError::UnexpectedStatus {
                        status: status.as_u16(),
                        what: "ranged GET blob",
                        reference: call.reference.clone(),
                        host: ep.name.clone(),
                        body: reason.to_string(),
                    }
                })?;
            match self.stream_body(&call, resp, skip, desc, state, out, progress) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    if state.received > from {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    std::thread::sleep(backoff(failures));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies a blob response into `out`, dropping its first `skip` bytes
    /// (already written before the connection was cut).
    #[allow(clippy::too_many_arguments)]
    fn stream_body(
        &self,
        call: &Call<'_>,
        mut resp: reqwest::Response,
        mut skip: u64,
        desc: &Descriptor,
        state: &mut Download,
        out: &mut dyn Write,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        loop {
            let chunk =
                self.block_on(async { tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await });
            let bytes = match chunk {
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(RegistryError::Network {
                        host: call.ep.name.clone(),
                        reference: call.reference.clone(),
                        source: e,
                    })
                }
                Err(_) => {
                    return Err(RegistryError::Stalled {
                        host: call.ep.name.clone(),
                        reference: call.reference.clone(),
                        seconds: IDLE_TIMEOUT.as_secs(),
                    })
                }
            };
            let mut data: &[u8] = &bytes;
            if skip > 0 {
                let n = skip.min(data.len() as u64);
                skip -= n;
                data = &data[n as usize..];
            }
            if data.is_empty() {
                continue;
            }
            let total = state.received + data.len() as u64;
            if total > desc.size {
                return Err(RegistryError::SizeMismatch {
                    digest: desc.digest,
                    reference: call.reference.clone(),
                    host: call.ep.name.clone(),
                    expected: desc.size,
                    actual: total,
                });
            }
            if let Some(hasher) = &mut state.hasher {
                hasher.update(data);
            }
            out.write_all(data).map_err(|source| RegistryError::Write {
                digest: desc.digest,
                reference: call.reference.clone(),
                source,
            })?;
            state.received = total;
            progress(total);
        }
    }

    /// Uploads blob `desc` to `repo`'s repository from the reader `open`
    /// gives (reopened for each try), calling `progress` with the bytes
    /// sent so far. One PUT up to the chunked threshold, PATCHes of the
    /// chunk size above it. Reuses the session a refused mount opened.
    pub fn put_blob(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        open: OpenBlob<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let ep = self.endpoint(&repo.registry)?;
        let call = Self::push_call(&ep, repo);
        let mut failures = 0;
        loop {
            match self.upload_once(&call, repo, desc, open, progress) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && failures + 1 < MAX_ATTEMPTS => {
                    failures += 1;
                    std::thread::sleep(backoff(failures));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads a blob while `produce` makes it: what `produce` writes goes
    /// up as it is written, in PATCH requests of at most the chunk size
    /// (docker's streamed upload), and once `produce` returns `Ok` the
    /// closing PUT names the digest `descriptor` gives (after checking the
    /// size). `label` names the blob in errors until then (a layer's diff
    /// ID). `produce` runs on this thread and is never failed by the
    /// upload: a failed upload stops taking bytes and is reported beside
    /// `produce`'s result, for the caller to upload the finished blob the
    /// ordinary way ([`Registry::put_blob`], with its retries). When
    /// `produce` fails nothing is committed (the session is deleted).
    pub fn put_blob_streamed<T, E>(
        &self,
        repo: &Reference,
        label: Digest,
        produce: impl FnOnce(&mut dyn Write) -> Result<T, E>,
        descriptor: impl Fn(&T) -> Descriptor,
        progress: &(dyn Fn(u64) + Sync),
    ) -> (Result<T, E>, Result<(), RegistryError>) {
        let ep = match self.endpoint(&repo.registry) {
            Ok(ep) => ep,
            Err(e) => return (produce(&mut std::io::sink()), Err(e)),
        };
        let call = Self::push_call(&ep, repo);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(STREAM_QUEUE);
        let (spent_tx, spent) = std::sync::mpsc::channel();
        let (produced, streamed) = std::thread::scope(|s| {
            let call = &call;
            let uploader = s.spawn(move || {
                let mut source = ChannelReader {
                    rx,
                    buf: Vec::new(),
                    pos: 0,
                    spent: spent_tx,
                };
                self.stream_upload(call, repo, label, &mut source, progress)
            });
            let mut pipe = PipeWriter {
                tx: Some(tx),
                spent,
            };
            let produced = produce(&mut pipe);
            drop(pipe);
            let streamed = uploader.join().unwrap_or_else(|_| {
                Err(RegistryError::Read {
                    digest: label,
                    reference: call.reference.clone(),
                    source: std::io::Error::other("the upload thread panicked"),
                })
            });
            (produced, streamed)
        });
        let uploaded = match (&produced, streamed) {
            (Ok(made), Ok((location, sent))) => {
                let desc = descriptor(made);
                if sent == desc.size {
                    self.finish_upload(&call, location, &desc)
                } else {
                    Err(RegistryError::SizeMismatch {
                        digest: desc.digest,
                        reference: call.reference.clone(),
                        host: call.ep.name.clone(),
                        expected: desc.size,
                        actual: sent,
                    })
                }
            }
            (Err(_), Ok((location, _))) => {
                // Best effort: the registry drops stale sessions anyway.
                let _ = self.send(&call, &|c| c.delete(location.clone()));
                Ok(())
            }
            (_, Err(e)) => Err(e),
        };
        (produced, uploaded)
    }

    /// The upload side of [`Registry::put_blob_streamed`]: a session, then
    /// PATCHes of what `source` yields until it ends; the session's last
    /// location and the bytes sent.
    fn stream_upload(
        &self,
        call: &Call<'_>,
        repo: &Reference,
        label: Digest,
        source: &mut ChannelReader,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Url, u64), RegistryError> {
        let mut location = self.start_upload(call, repo)?;
        let chunk = self.opts.upload_chunk_size.max(1);
        let mut sent = 0;
        while !source.at_end() {
            let (resp, n) = self.send_streamed(
                call,
                Method::PATCH,
                location.clone(),
                source,
                label,
                (sent, chunk),
                false,
                false,
                progress,
            )?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.status_error(call, resp, "PATCH blob stream", 1));
            }
            location = self.location(call, &resp)?;
            sent += n;
        }
        Ok((location, sent))
    }

    /// The closing PUT of an upload whose bytes are all sent.
    fn finish_upload(
        &self,
        call: &Call<'_>,
        mut location: Url,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        location
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self.send(call, &|c| {
            c.put(location.clone()).header(CONTENT_LENGTH, "0")
        })?;
        if !resp.status().is_success() {
            return Err(self.status_error(call, resp, "PUT blob", 1));
        }
        Ok(())
    }

    fn upload_once(
        &self,
        call: &Call<'_>,
        repo: &Reference,
        desc: &Descriptor,
        open: OpenBlob<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let pending = self.lock_pending().remove(&(
            repo.registry.clone(),
            repo.repository.clone(),
            desc.digest,
        ));
        let mut location = match pending {
            Some(l) => l,
            None => self.start_upload(call, repo)?,
        };
        let read_err = |source| RegistryError::Read {
            digest: desc.digest,
            reference: call.reference.clone(),
            source,
        };
        let mut reader = open().map_err(read_err)?;
        let mut offset = 0;
        let chunked = desc.size > self.opts.chunked_upload_threshold;
        let chunk = self.opts.upload_chunk_size.max(1);
        let mut failures = 0;
        loop {
            // Chunks go up as PATCHes; the closing PUT carries what is left
            // (everything, for a monolithic upload).
            let last = !chunked || offset >= desc.size;
            let len = if last {
                desc.size - offset
            } else {
                chunk.min(desc.size - offset)
            };
            let mut url = location.clone();
            if last {
                url.query_pairs_mut()
                    .append_pair("digest", &desc.digest.to_string());
            }
            let method = if last { Method::PUT } else { Method::PATCH };
            let sent = self.send_streamed(
                call,
                method,
                url,
                &mut *reader,
                desc.digest,
                (offset, len),
                !last,
                true,
                progress,
            );
            let err = match sent {
                Ok((resp, _)) if last && resp.status().is_success() => return Ok(()),
                Ok((resp, _)) if !last && resp.status() == StatusCode::ACCEPTED => {
                    location = self.location(call, &resp)?;
                    offset += len;
                    failures = 0;
                    continue;
                }
                Ok((resp, _)) => {
                    let what = if last { "PUT blob" } else { "PATCH blob chunk" };
                    return Err(self.status_error(call, resp, what, 1));
                }
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            // A request failed on the way: ask the session how much it
            // holds and go on from there; a session that cannot say is
            // given up (the caller starts a new one).
            failures += 1;
            if failures >= MAX_ATTEMPTS {
                return Err(err.after_attempts(failures));
            }
            std::thread::sleep(backoff(failures));
            let Some(held) = self.upload_status(call, &location) else {
                return Err(err);
            };
            if held > desc.size {
                return Err(err);
            }
            offset = held;
            reader = open().map_err(read_err)?;
            let skipped = std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink())
                .map_err(read_err)?;
            if skipped != offset {
                return Err(read_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob is shorter than its descriptor says",
                )));
            }
        }
    }

    /// How many bytes an upload session holds (`GET` on it: 204 with
    /// `Range: 0-LAST`); `None` when the registry no longer knows it.
    fn upload_status(&self, call: &Call<'_>, location: &Url) -> Option<u64> {
        let resp = self.send(call, &|c| c.get(location.clone())).ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let range = resp.headers().get(RANGE)?.to_str().ok()?;
        let last: u64 = range.trim().strip_prefix("0-")?.parse().ok()?;
        // distribution says `0-0` for an empty session too: sending the
        // first byte again is refused (416) rather than duplicated, and
        // the next status settles it.
        Some(if last == 0 { 0 } else { last + 1 })
    }

    /// POST `/blobs/uploads/`: a new upload session's URL.
    fn start_upload(&self, call: &Call<'_>, repo: &Reference) -> Result<Url, RegistryError> {
        let url = self.url(call, &format!("v2/{}/blobs/uploads/", repo.repository))?;
        let resp = self.send(call, &|c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(call, resp, "POST blob upload", 1));
        }
        self.location(call, &resp)
    }

    /// Sends `range.1` bytes of `reader` as the body of one request,
    /// streamed from a feeder thread; the request counts as stalled when no
    /// byte moves for [`IDLE_TIMEOUT`]. With `exact`, the body is that long
    /// (`Content-Length`) and a reader that ends sooner is an error;
    /// without, it is at most that long and ends where the reader does
    /// (chunked transfer encoding). Returns the answer and the bytes sent.
    #[allow(clippy::too_many_arguments)]
    fn send_streamed(
        &self,
        call: &Call<'_>,
        method: Method,
        url: Url,
        reader: &mut (dyn Read + Send),
        digest: Digest,
        (offset, len): (u64, u64),
        content_range: bool,
        exact: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(reqwest::Response, u64), RegistryError> {
        let auth = self.authorization(call, false)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut req = call
            .ep
            .client
            .request(method, url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        if exact {
            req = req.header(CONTENT_LENGTH, len);
        }
        if content_range && len > 0 {
            req = req.header(CONTENT_RANGE, format!("{}-{}", offset, offset + len - 1));
        }
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let moved = AtomicU64::new(0);
        let (answer, fed) = std::thread::scope(|s| {
            let moved = &moved;
            let feeder = s.spawn(move || -> std::io::Result<()> {
                let mut left = len;
                let mut buf = vec![0u8; UPLOAD_BUFFER];
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = match reader.read(&mut buf[..want]) {
                        Ok(0) if !exact => return Ok(()),
                        Ok(0) => {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("the blob ended {left} bytes before the size its descriptor gives"),
                            );
                            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    left -= n as u64;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    progress(offset + len - left);
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        // The request ended early; its answer says why.
                        return Ok(());
                    }
                }
                Ok(())
            });
            let answer = self.block_on(watch(req.send(), moved));
            (answer, feeder.join())
        });
        match fed {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(RegistryError::Read {
                    digest,
                    reference: call.reference.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(RegistryError::Read {
                    digest,
                    reference: call.reference.clone(),
                    source: std::io::Error::other("the blob reader panicked"),
                })
            }
        }
        match answer {
            Some(Ok(resp)) => {
                let s = resp.status();
                if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() {
                    return Err(self.status_error(call, resp, "blob upload", 1));
                }
                Ok((resp, moved.load(Ordering::Relaxed)))
            }
            Some(Err(e)) => Err(self.network_error(&call.ep.name, &call.reference, e)),
            None => Err(RegistryError::Stalled {
                host: call.ep.name.clone(),
                reference: call.reference.clone(),
                seconds: IDLE_TIMEOUT.as_secs(),
            }),
        }
    }
}

/// Pieces a streamed upload holds between its producer and the request.
const STREAM_QUEUE: usize = 2;

/// The producer's end of a streamed upload: pieces go to the upload
/// thread; once that thread is gone (the upload failed) they are dropped,
/// so the producer is never failed by the upload.
struct PipeWriter {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Pieces the upload is done with, to fill again.
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(tx) = &self.tx {
            let mut piece = self.spent.try_recv().unwrap_or_default();
            piece.clear();
            piece.extend_from_slice(buf);
            if tx.send(piece).is_err() {
                self.tx = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The upload's end: the producer's pieces as one stream, which ends when
/// the producer is done.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    /// Where read pieces go back to the producer.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
}

impl ChannelReader {
    /// Waits for more bytes; `true` when the producer is done and all
    /// its bytes are read.
    fn at_end(&mut self) -> bool {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    let read = std::mem::replace(&mut self.buf, piece);
                    // The producer may be gone: then it needs none.
                    let _ = self.spent.send(read);
                    self.pos = 0;
                }
                Err(_) => return true,
            }
        }
        false
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at_end() {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs `fut` until it ends, or `None` once `moved` has not changed for
/// [`IDLE_TIMEOUT`].
async fn watch<F: std::future::Future>(fut: F, moved: &AtomicU64) -> Option<F::Output> {
    tokio::pin!(fut);
    let mut last = moved.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep(IDLE_TIMEOUT) => {
                let now = moved.load(Ordering::Relaxed);
                if now == last {
                    return None;
                }
                last = now;
            }
        }
    }
}

/// How many bytes of a (re)started blob response to drop, given that
/// `received` bytes are already written: a 200 starts over (drop them
/// all), a 206 starts where its `Content-Range` says.
pub(crate) fn resume_skip(
    received: u64,
    status: u16,
    content_range: Option<&str>,
) -> Result<u64, &'static str> {
    match status {
        200 => Ok(received),
        206 => {
            let range = content_range.ok_or("a partial answer without Content-Range")?;
            let start: u64 = range
                .trim()
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse().ok())
                .ok_or("an unreadable Content-Range")?;
            if start > received {
                return Err("a partial answer starting past the bytes already received");
            }
            Ok(received - start)
        }
        _ => Err("an answer that is neither 200 nor 206"),
    }
}

#[cfg(test)]
mod tests {
    use super::resume_skip;

    #[test]
    fn resumes_where_the_answer_starts() {
        assert_eq!(resume_skip(0, 200, None), Ok(0));
        assert_eq!(
            resume_skip(100, 200, None),
            Ok(100),
            "the server ignored Range: drop what we have"
        );
        assert_eq!(resume_skip(100, 206, Some("bytes 100-199/200")), Ok(0));
        assert_eq!(resume_skip(100, 206, Some("bytes 40-199/*")), Ok(60));
        assert!(
            resume_skip(100, 206, Some("bytes 150-199/200")).is_err(),
            "a gap"
        );
        assert!(resume_skip(100, 206, None).is_err());
        assert!(resume_skip(100, 206, Some("items 1-2/3")).is_err());
        assert!(resume_skip(0, 204, None).is_err());
    }
}
