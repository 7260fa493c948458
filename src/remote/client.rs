//! One remote-write POST over a fresh connection, on the executor, bounded by a timeout.
//!
//! Names are resolved, connections made and TLS handshakes run as the scraper does them
//! ([`crate::scrape::client::connect`]: IP literals, `localhost`, `/etc/hosts`, then DNS, never
//! `getaddrinfo`; for `https`, the entry's [`TlsClient`] built at load, the certificate checked
//! against `tls_config.server_name` or the URL's host, TLS errors in Go's words). Each request
//! has its own connection, closed after the answer (`Connection: close`); over TLS, rustls
//! resumes the session of the previous one, so a new connection costs less than a full
//! handshake. The answer's status decides what the sender does; up to 4 KiB of the body is kept
//! for the log.

use crate::config::TlsClient;
use crate::scrape::client::{connect, io_error, resolve, FetchError};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use std::fmt;
use std::time::Duration;

/// Why a send failed; [`SendError::reason`] is the label of the failure counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Resolving, connecting, the TLS handshake, writing or reading failed.
    Network(String),
    Timeout,
    /// The receiver answered with a status other than 2xx.
    Status(u16, String),
}

impl SendError {
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Network(_) => "network",
            SendError::Timeout => "timeout",
            SendError::Status(429, _) => "http_429",
            SendError::Status(s, _) if *s >= 500 => "http_5xx",
            SendError::Status(..) => "http_4xx",
        }
    }

    /// Whether sending the same request again may succeed (Prometheus's rule: network
    /// errors, timeouts and 5xx; 429 when `retry_on_http_429`).
    pub fn recoverable(&self, retry_on_429: bool) -> bool {
        match self {
            SendError::Network(_) | SendError::Timeout => true,
            SendError::Status(429, _) => retry_on_429,
            SendError::Status(s, _) => *s >= 500,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Network(m) => f.write_str(m),
            SendError::Timeout => f.write_str("context deadline exceeded"),
            SendError::Status(s, body) => write!(f, "server returned HTTP status {s}: {body}"),
        }
    }
}

impl From<FetchError> for SendError {
    fn from(e: FetchError) -> SendError {
        SendError::Network(e.to_string())
    }
}

/// POSTs `body` to `http://{host}{path}` with `headers`, or to `https://…` with `tls`; Ok on a
/// 2xx answer.
pub async fn post(
    host: &str,
    path: &str,
    tls: Option<&TlsClient>,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), SendError> {
    async {
        let sa = resolve(host).await?;
        let mut stream = connect(sa, host, tls).await?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(n);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let write = |e| SendError::from(io_error(e, "write to", sa));
        stream.write_all(head.as_bytes()).await.map_err(write)?;
        stream.write_all(body).await.map_err(write)?;
        stream.flush().await.map_err(write)?;
        // The status line and a bounded piece of the body are all that matter.
        let mut resp = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // A TLS receiver that closes without close_notify: the end, as for Go's client.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => 0,
                Err(e) => return Err(io_error(e, "read from", sa).into()),
            };
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&chunk[..n]);
            if resp.len() > 4096 {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let head_len = match r.parse(&resp) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if r.code.is_some() => resp.len(),
            _ => return Err(SendError::Network(format!("{sa}: no valid HTTP response"))),
        };
        let status = r.code.unwrap_or(0);
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&resp[head_len.min(resp.len())..])
            .trim()
            .chars()
            .take(512)
            .collect();
        Err(SendError::Status(status, text))
    }
    .or(async {
        crate::runtime::timer::sleep(timeout).await;
        Err(SendError::Timeout)
    })
    .await
}
