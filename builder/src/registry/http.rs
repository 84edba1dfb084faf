//! A plain blocking HTTP(S) download on the registry client's stack
//! (reqwest, rustls with the system roots, the same connect and
//! inactivity timeouts), for `ADD <url>`: one HTTP stack in estiba.

use super::transport::{CONNECT_TIMEOUT, IDLE_TIMEOUT};
use std::io::Write;

/// A failed download.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The client or its runtime cannot start.
    #[error("cannot start the HTTP client")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Connecting, TLS, or reading the answer failed.
    #[error("the request failed")]
    Request(#[source] reqwest::Error),
    /// The server answered with an error status.
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// The connection went quiet.
    #[error("the server sent nothing for {} s", IDLE_TIMEOUT.as_secs())]
    Stalled,
    /// Writing the body failed.
    #[error("cannot write the download")]
    Write(#[source] std::io::Error),
}

/// What a download's answer said besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// The `Last-Modified` header, as sent.
    pub last_modified: Option<String>,
    /// How many bytes were written.
    pub bytes: u64,
}

/// Streams the body of `GET url` into `out` (following redirects), with a
/// connect timeout and an inactivity timeout but no overall one.
pub fn download(url: &str, out: &mut dyn Write) -> Result<Downloaded, HttpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HttpError::Client(e.into()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("estiba/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HttpError::Client(e.into()))?;
    runtime.block_on(async {
        let mut resp = tokio::time::timeout(IDLE_TIMEOUT, client.get(url).send())
            .await
            .map_err(|_| HttpError::Stalled)?
            .map_err(HttpError::Request)?;
        if !resp.status().is_success() {
            return Err(HttpError::Status(resp.status().as_u16()));
        }
        let last_modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = 0u64;
        while let Some(chunk) = tokio::time::timeout(IDLE_TIMEOUT, resp.chunk())
            .await
            .map_err(|_| HttpError::Stalled)?
            .map_err(HttpError::Request)?
        {
            out.write_all(&chunk).map_err(HttpError::Write)?;
            bytes += chunk.len() as u64;
        }
        Ok(Downloaded {
            last_modified,
            bytes,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A loopback server giving one answer.
    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        format!("http://{addr}/file")
    }

    #[test]
    fn streams_the_body_and_reports_error_statuses() {
        let url = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\nhello",
        );
        let mut out = Vec::new();
        let d = download(&url, &mut out).expect("downloads");
        assert_eq!(out, b"hello");
        assert_eq!(d.bytes, 5);
        assert_eq!(
            d.last_modified.as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );

        let url =
            serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let err = download(&url, &mut Vec::new()).expect_err("404");
        assert!(matches!(err, HttpError::Status(404)), "{err}");

        let url =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort");
        let err = download(&url, &mut Vec::new()).expect_err("cut short");
        assert!(matches!(err, HttpError::Request(_)), "{err}");
    }
}
