//! One remote-write POST over a fresh TCP connection, on the executor, bounded by a timeout.
//!
//! Names are resolved as the scraper resolves them (IP literals, `localhost`, `/etc/hosts`;
//! never `getaddrinfo`). The answer's status decides what the sender does; up to 4 KiB of the
//! body is kept for the log.

use crate::scrape::client::resolve;
use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use std::fmt;
use std::net::TcpStream;
use std::time::Duration;

/// Why a send failed; [`SendError::reason`] is the label of the failure counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Resolving, connecting, writing or reading failed.
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

/// POSTs `body` to `http://{host}{path}` with `headers`; Ok on a 2xx answer.
pub async fn post(
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), SendError> {
    async {
        let sa = resolve(host)
            .await
            .map_err(|e| SendError::Network(e.to_string()))?;
        let mut stream = Async::<TcpStream>::connect(sa)
            .await
            .map_err(|e| SendError::Network(format!("dial tcp {sa}: {e}")))?;
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
        let io = |e: std::io::Error| SendError::Network(format!("{sa}: {e}"));
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        // The status line and a bounded piece of the body are all that matter.
        let mut resp = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
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
        Timer::after(timeout).await;
        Err(SendError::Timeout)
    })
    .await
}
