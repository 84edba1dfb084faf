//! `ADD <url>`: downloading a file, as BuildKit's HTTP source does.
//!
//! The file is named after the last component of the URL path (or
//! `__unnamed__`), gets mode 0600 and the server's `Last-Modified` time, is
//! streamed to disk while hashed (never held in memory), and must match
//! `--checksum` when one is given. It is not unpacked: ADD extracts only
//! local archives. The HTTP client is the registry client's
//! ([`crate::registry::http`]), with its connect and inactivity timeouts.

use crate::registry::http;
use estiba_cache::{Digest, Hasher};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A failed download.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (DNS, connection, TLS, timeout) or the server said no.
    #[error("cannot download {url}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::HttpError,
    },
    /// Reading the body or writing the file failed.
    #[error("cannot download {url} to {path}")]
    Io {
        /// The URL.
        url: String,
        /// The file being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--checksum` is not `sha256:<hex>`.
    #[error("invalid --checksum {0:?}: expected sha256:<64 hex digits>")]
    BadChecksum(String),
    /// The content is not what `--checksum` says.
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Mismatch {
        /// The URL.
        url: String,
        /// `--checksum`.
        expected: Digest,
        /// What came.
        actual: Digest,
    },
}

/// A downloaded file.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Where it is (inside the directory given to [`download`]).
    pub path: PathBuf,
    /// The name it lands under.
    pub name: String,
    /// The sha256 of its content.
    pub digest: Digest,
}

/// Whether an ADD source is a URL.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The file name BuildKit gives a URL's download.
pub fn file_name(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .split_once('/')
        .map_or("", |(_, p)| p)
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// Downloads `url` into `dir`, checking `checksum` when given.
pub fn download(url: &str, dir: &Path, checksum: Option<&str>) -> Result<Downloaded, FetchError> {
    let expected = match checksum {
        Some(c) => Some(
            c.parse::<Digest>()
                .map_err(|_| FetchError::BadChecksum(c.to_string()))?,
        ),
        None => None,
    };
    let name = file_name(url);
    let path = dir.join(&name);
    let io = |source| FetchError::Io {
        url: url.to_string(),
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut sink = HashingWriter {
        file,
        hasher: Hasher::new(),
    };
    let answer = match http::download(url, &mut sink) {
        Ok(a) => a,
        Err(http::HttpError::Write(source)) => return Err(io(source)),
        Err(source) => {
            return Err(FetchError::Request {
                url: url.to_string(),
                source,
            })
        }
    };
    let modified = answer.last_modified.as_deref().and_then(parse_http_date);
    let HashingWriter { file, hasher } = sink;
    file.sync_all().map_err(io)?;
    drop(file);
    let digest = hasher.finish();
    if let Some(expected) = expected {
        if expected != digest {
            return Err(FetchError::Mismatch {
                url: url.to_string(),
                expected,
                actual: digest,
            });
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    if let Some(t) = modified {
        let ts = nix::sys::time::TimeSpec::new(t, 0);
        nix::sys::stat::utimensat(
            None,
            &path,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io(e.into()))?;
    }
    Ok(Downloaded { path, name, digest })
}

/// A file that hashes what is written to it.
struct HashingWriter {
    file: std::fs::File,
    hasher: Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// An RFC 7231 date (`Wed, 21 Oct 2015 07:28:00 GMT`) as seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, _] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?
        + 1;
    crate::image::parse_rfc3339(&format!("{year}-{month:02}-{day:0>2}T{time}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dates() {
        assert_eq!(file_name("https://example.com/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(file_name("https://example.com/"), "__unnamed__");
        assert_eq!(file_name("http://h:8080/dir/"), "__unnamed__");
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
    }
}
