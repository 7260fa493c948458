//! The scrape HTTP client: one GET over a fresh TCP connection, on the executor.
//!
//! Input: a target address (`host:port`), a path with query, a timeout and a body bound. Output:
//! the response body in a caller-owned buffer (reused from scrape to scrape), or a
//! [`FetchError`] saying what went wrong in words a person can act on.
//!
//! Contract:
//! - Everything runs on the async-io reactor; nothing blocks. Names are resolved without
//!   `getaddrinfo`: IP literals, `localhost`, `/etc/hosts` (a small local file), then DNS
//!   through the async [`crate::scrape::resolver`] (A, else AAAA, along the search list of
//!   `/etc/resolv.conf`). No answers are cached: each scrape asks again, as Go's resolver does.
//! - The timeout bounds the whole exchange, connect to last byte (the caller races it).
//! - Responses: `Content-Length`, `Transfer-Encoding: chunked`, or read-to-close bodies, gzip
//!   or not (`Accept-Encoding: gzip`, as Prometheus); any status but 200 is an error. The body,
//!   decompressed, is never larger than `body_limit`.
//! - `Accept` prefers OpenMetrics as Prometheus 2.42 does; the caller picks the parser from the
//!   returned `Content-Type`.

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The address is not `host:port` or the host cannot be resolved.
    Resolve(String),
    /// Connecting, writing or reading failed.
    Io(String),
    /// The server answered with a status other than 200.
    Status(u16, String),
    /// The response head is not valid HTTP.
    BadResponse(String),
    /// The body is larger than the limit (the largest size accepted).
    BodyTooLarge(usize),
    /// The request could not be made (e.g. a credentials file cannot be read); 2.42's text.
    Request(String),
    /// The scrape took longer than its timeout.
    Timeout,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Resolve(m) => write!(f, "{m}"),
            FetchError::Io(m) | FetchError::Request(m) => write!(f, "{m}"),
            FetchError::Status(c, r) => write!(f, "server returned HTTP status {c} {r}"),
            FetchError::BadResponse(m) => write!(f, "invalid HTTP response: {m}"),
            // 2.42's text exactly; the limit is in the job's config.
            FetchError::BodyTooLarge(_) => f.write_str("body size limit exceeded"),
            FetchError::Timeout => f.write_str("context deadline exceeded"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Splits `host:port` (or `[v6]:port`) and resolves the host without blocking: as
/// [`resolve_local`], then by DNS.
pub async fn resolve(addr: &str) -> Result<SocketAddr, FetchError> {
    match resolve_local(addr)? {
        Ok(sa) => Ok(sa),
        Err((host, port)) => {
            let err = |m: String| FetchError::Resolve(format!("lookup {host}: {m}"));
            let conf =
                crate::scrape::resolver::ResolvConf::system().map_err(|e| err(e.to_string()))?;
            match crate::scrape::resolver::lookup_host(&conf, host).await {
                Ok(Some(ip)) => Ok(SocketAddr::new(ip, port)),
                Ok(None) => Err(err("no such host".into())),
                Err(e) => Err(err(e.to_string())),
            }
        }
    }
}

/// Resolves what needs no network: IP literals, `localhost` and `/etc/hosts` names. `Ok(Err)`:
/// the host and port, to be looked up in DNS.
pub fn resolve_local(addr: &str) -> Result<Result<SocketAddr, (&str, u16)>, FetchError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(Ok(sa));
    }
    let bad = || FetchError::Resolve(format!("address {addr:?}: want host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Ok(SocketAddr::new(ip, port)));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
        if let Some(ip) = lookup_hosts(&hosts, host) {
            return Ok(Ok(SocketAddr::new(ip, port)));
        }
    }
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(bad());
    }
    Ok(Err((host, port)))
}

/// Finds `host` in the text of an `/etc/hosts` file; IPv4 answers are preferred.
fn lookup_hosts(hosts: &str, host: &str) -> Option<IpAddr> {
    let mut found: Option<IpAddr> = None;
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.eq_ignore_ascii_case(host)) {
            if ip.is_ipv4() {
                return Some(ip);
            }
            found.get_or_insert(ip);
        }
    }
    found
}

/// Fetches `http://{addr}{path_and_query}` into `body` (cleared first); returns the response's
/// `Content-Type` (empty if none).
pub async fn fetch(
    addr: &str,
    path_and_query: &str,
    extra_headers: &str,
    body_limit: usize,
    body: &mut Vec<u8>,
) -> Result<String, FetchError> {
    body.clear();
    let sa = resolve(addr).await?;
    let mut stream = Async::<TcpStream>::connect(sa)
        .await
        .map_err(|e| FetchError::Io(format!("dial tcp {sa}: {e}")))?;
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Perch/{}\r\n\
         Accept: {ACCEPT}\r\nAccept-Encoding: gzip\r\n\
         {extra_headers}Connection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| FetchError::Io(format!("write to {sa}: {e}")))?;

    // Read until the head is complete; what follows it is the start of the body.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let (head_len, status, reason, content_type, length, chunked, gzip) = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| FetchError::Io(format!("read from {sa}: {e}")))?;
        if n == 0 {
            return Err(FetchError::BadResponse(
                "connection closed before the response head was complete".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut ctype = String::new();
                let mut length = None;
                let mut chunked = false;
                let mut gzip = false;
                for h in resp.headers.iter() {
                    let v = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-type") {
                        ctype = v.into_owned();
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(v.trim().parse::<usize>().map_err(|_| {
                            FetchError::BadResponse(format!("bad Content-Length {v:?}"))
                        })?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("content-encoding") {
                        gzip = v.trim().eq_ignore_ascii_case("gzip");
                    }
                }
                break (
                    len,
                    resp.code.unwrap_or(0),
                    resp.reason.unwrap_or("").to_owned(),
                    ctype,
                    length,
                    chunked,
                    gzip,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
                return Err(FetchError::BadResponse(
                    "response head larger than 64 KiB".into(),
                ))
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(FetchError::BadResponse(e.to_string())),
        }
    };
    if status != 200 {
        return Err(FetchError::Status(status, reason));
    }
    if let Some(len) = length {
        if len > body_limit {
            return Err(FetchError::BodyTooLarge(body_limit));
        }
    }
    let mut raw = buf.split_off(head_len);
    // The rest of the body, bounded: chunked framing costs a little over the payload.
    let raw_limit = body_limit
        .saturating_add(body_limit / 8)
        .saturating_add(4096);
    loop {
        if let Some(len) = length {
            if raw.len() >= len {
                raw.truncate(len);
                break;
            }
        }
        if raw.len() > raw_limit {
            return Err(FetchError::BodyTooLarge(body_limit));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| FetchError::Io(format!("read from {sa}: {e}")))?;
        if n == 0 {
            if let Some(len) = length {
                if raw.len() < len {
                    return Err(FetchError::Io(format!(
                        "unexpected EOF: got {} of {len} body bytes",
                        raw.len()
                    )));
                }
            }
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if chunked && raw.ends_with(b"0\r\n\r\n") && dechunk(&raw, body, usize::MAX).is_ok() {
            return finish(body, body_limit, content_type, gzip);
        }
    }
    if chunked {
        dechunk(&raw, body, body_limit)?;
    } else {
        *body = raw;
    }
    finish(body, body_limit, content_type, gzip)
}

fn finish(
    body: &mut Vec<u8>,
    limit: usize,
    content_type: String,
    gzip: bool,
) -> Result<String, FetchError> {
    if gzip {
        // The limit bounds the body as the parser sees it, decompressed.
        use std::io::Read;
        let mut out = Vec::with_capacity(body.len() * 4);
        flate2::read::GzDecoder::new(body.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| FetchError::BadResponse(format!("bad gzip body: {e}")))?;
        *body = out;
    }
    if body.len() > limit {
        return Err(FetchError::BodyTooLarge(limit));
    }
    Ok(content_type)
}

/// The `Accept` header, as Prometheus 2.42 sends it: OpenMetrics preferred, then the text format.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Decodes a complete chunked body into `out`.
fn dechunk(mut raw: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), FetchError> {
    out.clear();
    let bad = |m: &str| FetchError::BadResponse(format!("bad chunked encoding: {m}"));
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("missing chunk size line"))?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| bad("size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("size"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(());
        }
        if raw.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        if out.len() + size > limit {
            return Err(FetchError::BodyTooLarge(limit));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_literals_and_hosts_file() {
        let local = |a| resolve_local(a).unwrap().unwrap();
        assert_eq!(local("127.0.0.1:9100").port(), 9100);
        assert!(local("[::1]:9100").is_ipv6());
        assert!(local("localhost:1").ip().is_loopback());
        assert!(resolve_local("nohost").is_err());
        assert_eq!(
            resolve_local("gw.invalid:80").unwrap(),
            Err(("gw.invalid", 80)),
            "left to DNS"
        );
        let hosts = "# c\n10.0.0.5 gw gw.lan\n::1 ip6-localhost\n";
        assert_eq!(
            lookup_hosts(hosts, "GW.lan"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(lookup_hosts(hosts, "none"), None);
    }

    #[test]
    fn dechunks() {
        let mut out = Vec::new();
        dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", &mut out, 100).unwrap();
        assert_eq!(out, b"abcde");
        assert!(dechunk(b"3\r\nab", &mut out, 100).is_err());
        assert!(matches!(
            dechunk(b"3\r\nabc\r\n0\r\n\r\n", &mut out, 2),
            Err(FetchError::BodyTooLarge(2))
        ));
    }
}
