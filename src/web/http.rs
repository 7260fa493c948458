//! HTTP/1.1 server plumbing on the executor: read a request, write a response.
//!
//! Every connection is its own task, so a slow or stalled client only ever holds up itself.
//! Bounds (see [`Limits`]): the request head (431 past it), the body (413 past it), the time to
//! receive a request once it has started, the idle time between requests on a kept-alive
//! connection, and the time to write a response. Parsing uses `httparse`; nothing here panics on
//! input.

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use std::net::TcpStream;
use std::time::Duration;

/// Bounds of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 << 10,
            max_body_bytes: 8 << 20,
            idle_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoding not applied.
    pub path: String,
    /// The raw query string (after `?`), possibly empty.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client accepts a gzip-encoded response (`Accept-Encoding` lists `gzip`), the
    /// one encoding Perch answers with, as Prometheus's compression handler reads the header.
    pub fn accepts_gzip(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("accept-encoding"))
            .flat_map(|(_, v)| v.split(','))
            .any(|e| {
                let mut parts = e.split(';');
                let name = parts.next().unwrap_or("").trim();
                // `gzip;q=0` refuses gzip.
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                name.eq_ignore_ascii_case("gzip") && !refused
            })
    }

    /// The form parameters: a form-encoded POST body's first, then the query string's, as Go's
    /// `Request.Form` orders them (so the first value of a name is what Prometheus reads).
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let is_form = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if self.method == "POST" && is_form {
            out.extend(form_urlencoded::parse(&self.body).into_owned());
        }
        out.extend(form_urlencoded::parse(self.query.as_bytes()).into_owned());
        out
    }
}

/// A body produced piece by piece (an export, a streamed remote read): written with chunked
/// transfer encoding, one piece at a time, yielding to other tasks between pieces. `None` ends
/// the body. A source that fails part-way ends early: the client sees a truncated chunked body
/// (no final zero-length chunk), which HTTP clients report as an error.
pub trait BodyStream {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>>;
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// A streamed body, written after `body` (which is then normally empty).
    pub stream: Option<Box<dyn BodyStream>>,
    /// The answer to a HEAD request: the head as for GET, `Content-Length` included (as Go's
    /// net/http sends it for a body written at once), and no body.
    pub head_only: bool,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("streamed", &self.stream.is_some())
            .field("head_only", &self.head_only)
            .finish()
    }
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            stream: None,
            head_only: false,
        }
    }

    /// A response whose body is produced by `stream`.
    pub fn streamed(status: u16, content_type: &'static str, stream: Box<dyn BodyStream>) -> Self {
        Response {
            stream: Some(stream),
            ..Response::new(status, content_type, Vec::new())
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "application/json", body)
    }

    /// 204 No Content: no body, no content type.
    pub fn no_content() -> Self {
        Response::new(204, "", Vec::new())
    }

    /// A status line and nothing else: no content type, no `Content-Length`, as Go answers a
    /// HEAD request whose handler writes no body (`/-/healthy`, `/-/ready`).
    pub fn bare(status: u16) -> Self {
        Response::new(status, "", Vec::new())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Compresses the body with gzip and marks it so (a no-op for an empty body). Compression
    /// is fast at level 1 and the bodies are in memory already; on failure the body stays as it
    /// was, uncompressed. A body over [`GZIP_IN_ONE_GO_BYTES`] is compressed as it is written
    /// instead, a piece at a time with yields between (it goes out chunked): at 5–10 ms a
    /// megabyte, a big answer compressed whole would hold up scrapes.
    pub fn gzip(&mut self) {
        use std::io::Write;
        if self.headers.iter().any(|(n, _)| *n == "Content-Encoding") {
            return;
        }
        if self.stream.is_none() && !self.head_only && self.body.len() > GZIP_IN_ONE_GO_BYTES {
            self.stream = Some(Box::new(Pieces {
                body: std::mem::take(&mut self.body),
                at: 0,
            }));
        }
        if let Some(inner) = self.stream.take() {
            self.stream = Some(Box::new(GzipStream {
                inner: Some(inner),
                enc: Some(flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::fast(),
                )),
            }));
            self.headers.push(("Content-Encoding", "gzip".into()));
            return;
        }
        if self.body.is_empty() {
            return;
        }
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(self.body.len() / 4 + 32),
            flate2::Compression::fast(),
        );
        if enc.write_all(&self.body).is_ok() {
            if let Ok(z) = enc.finish() {
                self.body = z;
                self.headers.push(("Content-Encoding", "gzip".into()));
            }
        }
    }
}

/// The largest body [`Response::gzip`] compresses in one piece.
pub const GZIP_IN_ONE_GO_BYTES: usize = 256 << 10;

/// A body in memory, handed out 64 KiB at a time.
struct Pieces {
    body: Vec<u8>,
    at: usize,
}

impl BodyStream for Pieces {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        const PIECE: usize = 64 << 10;
        if self.at >= self.body.len() {
            self.body = Vec::new();
            return None;
        }
        let end = (self.at + PIECE).min(self.body.len());
        let piece = self.body[self.at..end].to_vec();
        self.at = end;
        Some(Ok(piece))
    }
}

/// Gzip over a streamed body: each piece is compressed as it comes (the compressor keeps its
/// window across pieces), and the gzip trailer follows the last one.
struct GzipStream {
    inner: Option<Box<dyn BodyStream>>,
    enc: Option<flate2::write::GzEncoder<Vec<u8>>>,
}

impl BodyStream for GzipStream {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        use std::io::Write;
        loop {
            let enc = self.enc.as_mut()?;
            match self.inner.as_mut().and_then(|i| i.next_chunk()) {
                Some(Ok(piece)) => {
                    if let Err(e) = enc.write_all(&piece) {
                        return Some(Err(e.to_string()));
                    }
                    let out = std::mem::take(enc.get_mut());
                    if !out.is_empty() {
                        return Some(Ok(out));
                    }
                }
                Some(Err(e)) => {
                    self.enc = None;
                    return Some(Err(e));
                }
                None => {
                    self.inner = None;
                    let enc = self.enc.take()?;
                    return Some(enc.finish().map_err(|e| e.to_string()));
                }
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        403 => "Forbidden",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (or was idle too long) between requests: no response.
    Closed,
    /// A bad or oversized request: answer with this status, then close.
    Reject(u16, &'static str),
}

/// Reads one request from `stream`. `buf` carries bytes already read past the previous request.
pub async fn read_request(
    stream: &mut Async<TcpStream>,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 4096];
    // Wait for the first byte within the idle timeout, then the rest within the read timeout.
    if buf.is_empty() {
        let n = async { stream.read(&mut chunk).await.ok() }
            .or(async {
                crate::runtime::timer::sleep(limits.idle_timeout).await;
                None
            })
            .await;
        match n {
            Some(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Err(ReadError::Closed),
        }
    }
    async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let method = req.method.unwrap_or("").to_owned();
                    let target = req.path.unwrap_or("/");
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    let version = req.version.unwrap_or(1);
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).trim().to_owned(),
                            )
                        })
                        .collect();
                    let mut r = Request {
                        method,
                        path: path.to_owned(),
                        query: query.to_owned(),
                        headers,
                        body: Vec::new(),
                        keep_alive: false,
                    };
                    let conn = r.header("connection").map(|c| c.to_ascii_lowercase());
                    r.keep_alive = match (version, conn.as_deref()) {
                        (_, Some(c)) if c.contains("close") => false,
                        (0, Some(c)) => c.contains("keep-alive"),
                        (0, None) => false,
                        _ => true,
                    };
                    if r.header("transfer-encoding")
                        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
                    {
                        return Err(ReadError::Reject(
                            400,
                            "chunked request bodies are not supported",
                        ));
                    }
                    let len = match r.header("content-length") {
                        Some(v) => v
                            .parse::<usize>()
                            .map_err(|_| ReadError::Reject(400, "bad Content-Length"))?,
                        None => 0,
                    };
                    if len > limits.max_body_bytes {
                        return Err(ReadError::Reject(413, "request body too large"));
                    }
                    buf.drain(..head_len);
                    while buf.len() < len {
                        let n = stream
                            .read(&mut chunk)
                            .await
                            .map_err(|_| ReadError::Closed)?;
                        if n == 0 {
                            return Err(ReadError::Closed);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    r.body = buf.drain(..len).collect();
                    return Ok(r);
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > limits.max_head_bytes {
                        return Err(ReadError::Reject(431, "request header fields too large"));
                    }
                }
                Err(_) => return Err(ReadError::Reject(400, "malformed HTTP request")),
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|_| ReadError::Closed)?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    .or(async {
        crate::runtime::timer::sleep(limits.read_timeout).await;
        Err(ReadError::Reject(408, "request timeout"))
    })
    .await
}

/// What a handler can await to learn that its client went away: completes when the client
/// closed the connection (a read returns end of file, half-closing counts as Go's server counts
/// it) or the connection failed (reset). The query handlers race their evaluation against it.
pub type ClientGone<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Watches a connection while its request is served (see [`ClientGone`]). Bytes that arrive
/// meanwhile are a pipelined next request, not a disconnect: they are appended to `buf`, the
/// connection's buffer that [`read_request`] reads from next. Once `buf` holds `limit` bytes
/// nothing more is read (the kernel's buffer and TCP flow control hold the rest) and the watch
/// never completes, so the request is served as if unwatched. Dropping the watch loses no byte:
/// a read either completed into `buf` or consumed nothing.
pub fn client_gone<'a>(
    stream: &'a Async<TcpStream>,
    buf: &'a mut Vec<u8>,
    limit: usize,
) -> ClientGone<'a> {
    Box::pin(async move {
        let mut chunk = [0u8; 4096];
        let mut s = stream;
        loop {
            let room = limit.saturating_sub(buf.len()).min(chunk.len());
            if room == 0 {
                return futures_lite::future::pending().await;
            }
            match s.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// What writing a response did.
pub struct Sent {
    /// Whether all of it went out (if not, the connection must be closed).
    pub ok: bool,
    /// The body bytes handed to the connection (of a chunked body: the chunks' data written;
    /// of a body in memory: all of it, or 0 if the write failed).
    pub body_bytes: u64,
}

/// Writes `resp`; not ok if the connection must be closed (write error or timeout).
/// A streamed body is written with chunked encoding, each piece within the write timeout. A
/// body in memory goes out with its head in one write: one system call, and no small head
/// segment for the client to acknowledge before the body follows.
pub async fn write_response(
    stream: &mut Async<TcpStream>,
    resp: &mut Response,
    keep_alive: bool,
    limits: &Limits,
) -> Sent {
    use std::fmt::Write;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if let Some(body) = resp.stream.take().filter(|_| !resp.head_only) {
        let _ = write!(
            head,
            "Content-Type: {}\r\nTransfer-Encoding: chunked\r\n",
            resp.content_type
        );
        for (n, v) in &resp.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        return write_chunked(stream, head, body, limits).await;
    }
    // 204 and 304 have no body, so no content headers (a 304's would describe the 200's body).
    if resp.status != 204
        && resp.status != 304
        && !(resp.content_type.is_empty() && resp.body.is_empty())
    {
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            resp.content_type,
            resp.body.len()
        );
    }
    for (n, v) in &resp.headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if resp.head_only {
        return Sent {
            ok: write_timed(stream, &out, limits).await,
            body_bytes: 0,
        };
    }
    let body_bytes = resp.body.len() as u64;
    // A big body is not copied behind its head (a copy of many megabytes, in one piece).
    if resp.body.len() > GZIP_IN_ONE_GO_BYTES {
        let ok = write_timed(stream, &out, limits).await
            && write_timed(stream, &resp.body, limits).await;
        return Sent {
            ok,
            body_bytes: if ok { body_bytes } else { 0 },
        };
    }
    out.extend_from_slice(&resp.body);
    let ok = write_timed(stream, &out, limits).await;
    Sent {
        ok,
        body_bytes: if ok { body_bytes } else { 0 },
    }
}

/// Writes the head, then every piece of `body` as one chunk, yielding between pieces so a long
/// body never holds up scrapes. Not ok on a write error, a timeout or a failed source.
async fn write_chunked(
    stream: &mut Async<TcpStream>,
    head: String,
    mut body: Box<dyn BodyStream>,
    limits: &Limits,
) -> Sent {
    let mut pending = head.into_bytes();
    let mut body_bytes = 0u64;
    let sent = |ok: bool, body_bytes: u64| Sent { ok, body_bytes };
    loop {
        let piece = match body.next_chunk() {
            Some(Ok(p)) if p.is_empty() => continue,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                log::warn!("streamed response ended early: {e}");
                let _ = write_timed(stream, &pending, limits).await;
                return sent(false, body_bytes);
            }
            None => None,
        };
        match piece {
            Some(p) => {
                pending.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                pending.extend_from_slice(&p);
                pending.extend_from_slice(b"\r\n");
                if !write_timed(stream, &pending, limits).await {
                    return sent(false, body_bytes);
                }
                body_bytes += p.len() as u64;
                pending.clear();
                futures_lite::future::yield_now().await;
            }
            None => {
                pending.extend_from_slice(b"0\r\n\r\n");
                return sent(write_timed(stream, &pending, limits).await, body_bytes);
            }
        }
    }
}

async fn write_timed(stream: &mut Async<TcpStream>, bytes: &[u8], limits: &Limits) -> bool {
    async { stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok() }
        .or(async {
            crate::runtime::timer::sleep(limits.write_timeout).await;
            false
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_big_body_is_gzipped_a_piece_at_a_time_and_a_small_one_whole() {
        let big: Vec<u8> = (0..GZIP_IN_ONE_GO_BYTES * 3)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        let mut r = Response::json(200, big.clone());
        r.gzip();
        assert!(r.body.is_empty());
        let mut stream = r.stream.take().expect("streamed");
        let mut z = Vec::new();
        let mut pieces = 0;
        while let Some(p) = stream.next_chunk() {
            z.extend_from_slice(&p.unwrap());
            pieces += 1;
        }
        assert!(pieces > 3, "{pieces} pieces");
        assert_eq!(gunzip(&z), big);
        assert!(r.headers.contains(&("Content-Encoding", "gzip".into())));

        let small = b"{\"status\":\"success\"}".repeat(100);
        let mut r = Response::json(200, small.clone());
        r.gzip();
        assert!(r.stream.is_none());
        assert_eq!(gunzip(&r.body), small);
    }
}
