//! Just enough HTTP/1.1 for the registry harness: reading a message head,
//! copying a request body as it is framed (`Content-Length` or chunked),
//! a one-request client that tells a complete body from a cut one, and the
//! accept loop of the harness's own servers (token issuer, fault proxy).
//!
//! The fault proxy forwards bytes it has parsed with these functions, and
//! the self-tests fetch through it with [`request`], so a truncated answer
//! is seen as such instead of being papered over by a client's retries.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest head (start line plus headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long the client waits on a silent peer before giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A request or response head: the start line and the headers in order.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// `GET /v2/ HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub(crate) start: String,
    /// Name and value pairs as sent (names keep their case).
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request method (first word of the start line).
    pub(crate) fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    /// The request target (second word of the start line).
    pub(crate) fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The response status (second word of the start line), 0 if absent.
    pub(crate) fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The `Content-Length`, if given and a number.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// Whether the body is chunked.
    pub(crate) fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Removes every header named `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Sets header `name` to `value`, replacing what was there.
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    /// The head as it goes on the wire, blank line included.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads one head. `Ok(None)` when the peer closed before sending a byte.
pub(crate) fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too long",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                // Tolerate a stray blank line before the start line.
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let start = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok(Some(Head { start, headers }))
}

/// Copies the body that `head` frames from `r` to `w` byte for byte
/// (chunk size lines and trailers included); returns the bytes copied. A
/// head with neither `Content-Length` nor chunking has no body here
/// (requests; responses are read to the end of the connection instead).
pub(crate) fn copy_body(head: &Head, r: &mut impl BufRead, w: &mut impl Write) -> io::Result<u64> {
    if head.is_chunked() {
        let mut total = 0u64;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(eof("a chunk size line"));
            }
            w.write_all(line.as_bytes())?;
            total += line.len() as u64;
            let size_text = line.trim().split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size line {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers, then the blank line that ends the body.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 {
                        return Err(eof("the chunked trailer"));
                    }
                    w.write_all(t.as_bytes())?;
                    total += t.len() as u64;
                    if t == "\r\n" || t == "\n" {
                        return Ok(total);
                    }
                }
            }
            // The data and its CRLF.
            let n = io::copy(&mut r.by_ref().take(size + 2), w)?;
            total += n;
            if n != size + 2 {
                return Err(eof("a chunk"));
            }
        }
    } else if let Some(len) = head.content_length() {
        let n = io::copy(&mut r.by_ref().take(len), w)?;
        if n != len {
            return Err(eof("a body"));
        }
        Ok(n)
    } else {
        Ok(0)
    }
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed inside {what}"),
    )
}

/// What [`request`] got back.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// The response head.
    pub(crate) head: Head,
    /// The body, de-chunked; as much of it as arrived.
    pub(crate) body: Vec<u8>,
    /// Whether the body arrived whole: all of `Content-Length`, or the
    /// final chunk, or (with neither) the end of the connection.
    pub(crate) complete: bool,
}

impl Response {
    /// The status code.
    pub(crate) fn status(&self) -> u16 {
        self.head.status()
    }
}

/// Sends one request to `addr` (`127.0.0.1:PORT`) over a fresh connection
/// with `Connection: close`, and reads the answer to its end. An answer
/// cut short is `Ok` with `complete == false`; only a failure to connect,
/// send or read a head is an error.
pub(crate) fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let framing = if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        Some(("Content-Length", body.len().to_string()))
    } else {
        None
    };
    send(addr, method, target, headers, framing, body)
}

/// [`request`] with the body sent chunked (`Transfer-Encoding: chunked`),
/// one chunk per element of `chunks`, as streaming upload clients do.
pub(crate) fn request_chunked(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> io::Result<Response> {
    let mut body = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let framing = Some(("Transfer-Encoding", "chunked".to_owned()));
    send(addr, method, target, headers, framing, &body)
}

/// Sends a request whose body is already framed as `framing` says.
fn send(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    framing: Option<(&str, String)>,
    body: &[u8],
) -> io::Result<Response> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Head {
        start: format!("{method} {target} HTTP/1.1"),
        headers: vec![("Host".to_owned(), addr.to_owned())],
    };
    for (n, v) in headers {
        head.set(n, v);
    }
    head.set("Connection", "close");
    if let Some((name, value)) = framing {
        head.set(name, &value);
    }
    let mut w = &stream;
    w.write_all(&head.to_bytes())?;
    w.write_all(body)?;
    w.flush()?;
    let mut r = BufReader::new(&stream);
    // Interim answers (`100 Continue`) come before the real one.
    let head = loop {
        let head = read_head(&mut r)?.ok_or_else(|| eof("the response head"))?;
        if !matches!(head.status(), 100 | 102 | 103) {
            break head;
        }
    };
    let mut body = Vec::new();
    let no_body = method == "HEAD" || matches!(head.status(), 100..=199 | 204 | 304);
    let complete = if no_body {
        true
    } else if head.is_chunked() {
        read_chunked(&mut r, &mut body)
    } else if let Some(len) = head.content_length() {
        let _ = r.by_ref().take(len).read_to_end(&mut body);
        body.len() as u64 == len
    } else {
        r.read_to_end(&mut body).is_ok()
    };
    Ok(Response {
        head,
        body,
        complete,
    })
}

/// De-chunks a body into `out`; whether it ended with the final chunk.
fn read_chunked(r: &mut impl BufRead, out: &mut Vec<u8>) -> bool {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let size_text = line.trim().split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return false;
        };
        if size == 0 {
            return true;
        }
        let before = out.len();
        let _ = r.by_ref().take(size as u64).read_to_end(out);
        let mut crlf = [0u8; 2];
        if out.len() - before != size || r.read_exact(&mut crlf).is_err() {
            return false;
        }
    }
}

/// A server on a free loopback port whose accept loop runs in a thread and
/// hands each connection to `handle` in a thread of its own; stopped on
/// drop (the accept loop ends; connections in flight finish on their own).
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    /// Binds `127.0.0.1:0` and starts accepting; `what` names the server in
    /// errors.
    pub(crate) fn start(
        what: &str,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<LoopbackServer, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("binding a loopback port for {what}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("reading the port of {what}: {e}"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let handle = Arc::clone(&handle);
                    std::thread::spawn(move || handle(conn));
                }
            })
        };
        Ok(LoopbackServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
