//! The scrape HTTP client: one GET on the executor, over the target's kept connection.
//!
//! Input: a [`Request`] (target address `host:port`, path with query, extra headers, body
//! bound, and for `https` the job's TLS client), the target's kept connection ([`Conn`], or
//! none); the caller races a timeout. Output: the response body in a caller-owned buffer, or a
//! [`FetchError`] saying what went wrong in words a person can act on.
//!
//! Contract:
//! - Everything runs on the async-io reactor; nothing blocks. Names are resolved without
//!   `getaddrinfo`: IP literals, `localhost`, `/etc/hosts` (a small local file), then DNS
//!   through the async [`crate::scrape::resolver`] (A, else AAAA, along the search list of
//!   `/etc/resolv.conf`). No answers are cached: each scrape asks again, as Go's resolver does.
//! - HTTP/1.1 keep-alive, as Go's client for Prometheus: a connection is kept between scrapes
//!   when its response was complete and exactly framed (`Content-Length`, or chunked to the last
//!   chunk, with no bytes after it) and the server did not close it (`Connection: close`, or
//!   HTTP/1.0 without `keep-alive`). A kept connection is used again only for the same resolved
//!   address. If it proves dead before the first byte of the response (the write fails, or EOF
//!   or a reset comes first), the request is sent once more on a new connection; after a byte
//!   arrived, never. Read-to-close bodies, errors and timeouts leave no connection behind. A
//!   kept connection costs its socket only: no buffer is kept with it.
//! - `https`: TLS over the TCP connection, handshake on connect ([`crate::scrape::tls`], only
//!   in builds with the `tls` feature; config load refuses `https` in the others). A TLS
//!   error is a [`FetchError::Tls`], worded as Go words it where people know the words.
//!   [`connect`] (connect and handshake) and [`io_error`] serve the remote-write sender too.
//! - The timeout bounds the whole exchange, connect to last byte (the caller races it and
//!   drops the fetch, and with it the connection, whose state is then unknown).
//! - Responses: `Content-Length`, `Transfer-Encoding: chunked` (decoded as it arrives), or
//!   read-to-close bodies, gzip or not (`Accept-Encoding: gzip`, as Prometheus); any status but
//!   200 is an error. The body, decompressed, is never larger than `body_limit`; a body is
//!   refused as soon as it is seen to be larger (from `Content-Length`, or as it arrives).
//! - `Accept` prefers OpenMetrics as Prometheus 2.42 does; the caller picks the parser from the
//!   returned `Content-Type`.

use crate::config::TlsClient;
use async_io::Async;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The address is not `host:port` or the host cannot be resolved.
    Resolve(String),
    /// Connecting, writing or reading failed.
    Io(String),
    /// The TLS handshake failed (e.g. the server's certificate is not trusted).
    Tls(String),
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
            FetchError::Io(m) | FetchError::Tls(m) | FetchError::Request(m) => write!(f, "{m}"),
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

/// What one scrape asks for.
pub struct Request<'a> {
    /// `host:port`.
    pub addr: &'a str,
    pub path_and_query: &'a str,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'a str,
    /// The largest body accepted, decompressed.
    pub body_limit: usize,
    /// The job's TLS client for an `https` target; `None`: plain `http`.
    pub tls: Option<&'a TlsClient>,
}

/// A connection: plain TCP, or TLS over it (boxed: rustls's state is large, and a plain
/// connection should not pay for it). The remote-write sender uses it too ([`connect`]).
pub enum Stream {
    Plain(Async<TcpStream>),
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s.get_ref(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0.get_ref(),
        }
    }

    /// Asks the kernel to report the connection readable only once `bytes` have arrived (or
    /// it closed, or failed): `SO_RCVLOWAT`, on plain TCP only (a TLS stream's bytes on the
    /// socket are records, and rustls may hold some already). Returns whether it was set;
    /// `wait_for(1)` restores the default. Linux caps the mark at half the largest receive
    /// buffer (3 MiB by default) and grows the socket's buffer to fit it.
    fn wait_for(&self, bytes: usize) -> bool {
        match self {
            Stream::Plain(s) => set_rcvlowat(std::os::fd::AsFd::as_fd(s.get_ref()), bytes),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => false,
        }
    }
}

/// `setsockopt(SO_RCVLOWAT)`, which rustix does not offer.
#[allow(unsafe_code)]
fn set_rcvlowat(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket for the duration of the call (borrowed), and the option
    // value is a live `c_int` whose size is passed with it; the call touches nothing else.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// A connection kept open between scrapes of one target (HTTP/1.1 keep-alive), with the
/// address it was opened to: when the target's name resolves elsewhere, a new one is opened.
/// It holds no buffer of its own: a response is read to its exact end, so nothing is left over.
pub struct Conn {
    stream: Stream,
    peer: SocketAddr,
}

/// Connects to `sa` (what `addr`, `host:port`, resolved to) and, with a TLS client, runs the
/// handshake for `addr`'s host (see [`crate::scrape::tls`]): errors are an
/// [`FetchError::Io`] (`dial tcp …`) or a [`FetchError::Tls`] in Go's words.
pub async fn connect(
    sa: SocketAddr,
    addr: &str,
    tls: Option<&TlsClient>,
) -> Result<Stream, FetchError> {
    let tcp = tcp_connect(sa)
        .await
        .map_err(|e| FetchError::Io(format!("dial tcp {sa}: {e}")))?;
    #[cfg(not(feature = "tls"))]
    let _ = addr; // only a handshake needs the host
    Ok(match tls {
        None => Stream::Plain(tcp),
        #[cfg(feature = "tls")]
        Some(tls) => Stream::Tls(Box::new(
            super::tls::handshake(tcp, host_of(addr), tls).await?,
        )),
        #[cfg(not(feature = "tls"))]
        Some(never) => match *never {},
    })
}

/// Connects a TCP socket to `sa`, as `Async::<TcpStream>::connect` does, but without waiting
/// through the reactor for a connect that completed at once. To a server on this host the
/// handshake runs inside the `connect` call, which still answers "in progress"; a poll with a
/// zero timeout sees the socket writable, and the scrape saves a wake-up of the reactor's thread
/// and one of ours (the replay targets of `live_footprint.py` close every connection, so each
/// of their scrapes connects anew). A connect still under way is awaited as before.
async fn tcp_connect(sa: SocketAddr) -> io::Result<Async<TcpStream>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::io::Errno;
    use rustix::net as rn;
    let domain = match sa {
        SocketAddr::V4(_) => rn::AddressFamily::INET,
        SocketAddr::V6(_) => rn::AddressFamily::INET6,
    };
    let fd = rn::socket_with(
        domain,
        rn::SocketType::STREAM,
        rn::SocketFlags::CLOEXEC | rn::SocketFlags::NONBLOCK,
        Some(rn::ipproto::TCP),
    )?;
    let done = match rn::connect(&fd, &sa) {
        Ok(()) => true,
        Err(Errno::INPROGRESS | Errno::WOULDBLOCK) => {
            let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        }
        Err(e) => return Err(e.into()),
    };
    let stream = Async::new_nonblocking(TcpStream::from(fd))?;
    if !done {
        stream.writable().await?;
    }
    // A refused or failed connect is reported here (SO_ERROR), as async-io does.
    match stream.get_ref().take_error()? {
        None => Ok(stream),
        Some(e) => Err(e),
    }
}

impl Conn {
    /// Connects to `sa`, and runs the TLS handshake for an `https` request.
    async fn open(sa: SocketAddr, req: &Request<'_>) -> Result<Conn, FetchError> {
        let stream = connect(sa, req.addr, req.tls).await?;
        Ok(Conn { stream, peer: sa })
    }

    /// Keeps the connection in `slot`, made ready to idle: over TLS, rustls's read buffer is
    /// shrunk.
    fn keep_in(self, slot: &mut Option<Conn>) {
        *slot = Some(self);
        #[cfg(feature = "tls")]
        if let Some(Conn {
            stream: Stream::Tls(s),
            ..
        }) = slot
        {
            super::tls::release_buffers(s);
        }
    }

    /// Whether an idle kept connection still looks usable: neither closed by the server nor
    /// holding bytes nobody asked for (over TLS, e.g. a close_notify). One non-blocking peek
    /// at the socket (async-io made it non-blocking); a connection that dies right after it
    /// is caught by the retry in [`fetch`].
    fn idle_ok(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.tcp().peek(&mut b),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// The host of `host:port` or `[v6]:port`, without port or brackets.
#[cfg(feature = "tls")]
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// How a failed exchange ended: `retry` when the connection died before any byte of the
/// response arrived (the request may be sent again on a new connection).
struct Failed {
    error: FetchError,
    retry: bool,
}

impl From<FetchError> for Failed {
    fn from(error: FetchError) -> Failed {
        Failed {
            error,
            retry: false,
        }
    }
}

/// Fetches `req` into `body` (cleared first); returns the response's `Content-Type` (empty
/// if none).
///
/// `conn` is the target's kept connection: used if there is one to the address `req.addr`
/// resolves to now, and left holding the connection afterwards if the response allows it
/// (complete, framed by `Content-Length` or chunked, and neither `Connection: close` nor an
/// HTTP/1.0 answer without `keep-alive`). A kept connection found dead before any response byte
/// arrived (the write fails, or EOF or a reset comes first) is replaced by a new one and the
/// request sent once more; once response bytes arrived, a failure is the scrape's. Dropping
/// the future (a timeout) drops the connection with it: its state is unknown.
pub async fn fetch(
    conn: &mut Option<Conn>,
    req: &Request<'_>,
    body: &mut Vec<u8>,
) -> Result<String, FetchError> {
    body.clear();
    let sa = resolve(req.addr).await?;
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Perch/{}\r\n\
         Accept: {ACCEPT}\r\nAccept-Encoding: gzip\r\n{}\r\n",
        req.path_and_query,
        req.addr,
        env!("CARGO_PKG_VERSION"),
        req.headers,
    );
    // Taken out, so that an error or a dropped future leaves no connection behind.
    if let Some(mut c) = conn.take().filter(|c| c.peer == sa && c.idle_ok()) {
        match exchange(&mut c.stream, sa, &head, req.body_limit, body).await {
            Ok((content_type, keep)) => {
                if keep {
                    c.keep_in(conn);
                }
                return Ok(content_type);
            }
            Err(Failed { retry: true, .. }) => body.clear(),
            Err(f) => return Err(f.error),
        }
    }
    let mut c = Conn::open(sa, req).await?;
    let (content_type, keep) = exchange(&mut c.stream, sa, &head, req.body_limit, body)
        .await
        .map_err(|f| f.error)?;
    if keep {
        c.keep_in(conn);
    }
    Ok(content_type)
}

/// How the end of a response body is found.
enum Framing {
    Length(usize),
    Chunked(Dechunker),
    /// Read to the end of the connection.
    Close,
}

/// One request and its response on `stream`: the `Content-Type`, and whether the connection
/// may carry another request.
async fn exchange(
    stream: &mut Stream,
    sa: SocketAddr,
    req: &str,
    body_limit: usize,
    body: &mut Vec<u8>,
) -> Result<(String, bool), Failed> {
    let dead = |e| Failed {
        error: io_error(e, "write to", sa),
        retry: true,
    };
    stream.write_all(req.as_bytes()).await.map_err(dead)?;
    stream.flush().await.map_err(dead)?;

    // Read until the head is complete; what follows it is the start of the body.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head = loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => {
                return Err(Failed {
                    error: io_error(e, "read from", sa),
                    retry: buf.is_empty(),
                });
            }
        };
        if n == 0 {
            let error = FetchError::BadResponse(
                "connection closed before the response head was complete".into(),
            );
            return Err(Failed {
                error,
                retry: buf.is_empty(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
    };
    if head.status != 200 {
        return Err(FetchError::Status(head.status, head.reason).into());
    }
    let mut framing = if head.chunked {
        Framing::Chunked(Dechunker::default())
    } else if let Some(len) = head.length {
        if len > body_limit {
            return Err(FetchError::BodyTooLarge(body_limit).into());
        }
        // One allocation of the announced size, not a doubling series of copies; only up to
        // a few MiB ahead of the bytes, as a server may announce more than it sends.
        body.reserve_exact(len.min(4 << 20).saturating_sub(body.len()));
        Framing::Length(len)
    } else {
        Framing::Close
    };
    // The payload as received (gzip still compressed) is bounded as it arrives; a gzip body
    // gets some room, as the limit bounds it decompressed.
    let raw_limit = if head.gzip {
        body_limit
            .saturating_add(body_limit / 8)
            .saturating_add(4096)
    } else {
        body_limit
    };
    // Bytes received and not yet framed: the start of the body after the head, then each read.
    let mut pending = buf.split_off(head.len);
    drop(buf);
    let mut read_size = BODY_READ_MIN;
    // A body of known length is waited for whole, not piece by piece (see `Stream::wait_for`):
    // one wake-up instead of one per segment that arrives, and one read takes it all. `mark`
    // is the low-water mark set on the socket (0: the default, one byte); it never exceeds
    // the bytes still to come, or the last of them would never wake the reader.
    let mut mark = 0usize;
    let clean_end = loop {
        match &mut framing {
            Framing::Length(len) => {
                let take = pending.len().min(*len - body.len());
                body.extend_from_slice(&pending[..take]);
                if body.len() == *len {
                    // Bytes past the end were not asked for: the connection is not reused.
                    break take == pending.len();
                }
            }
            Framing::Chunked(d) => {
                let used = d.feed(&pending, body)?;
                if d.done() {
                    break used == pending.len();
                }
                pending.drain(..used);
            }
            Framing::Close => body.extend_from_slice(&pending),
        }
        if !matches!(framing, Framing::Chunked(_)) {
            pending.clear();
        }
        if body.len() > raw_limit {
            return Err(FetchError::BodyTooLarge(body_limit).into());
        }
        // A framed-by-length or read-to-close body is read straight onto the body's end (no
        // copy), up to twice what the last read brought (the room is zeroed first, so a link
        // that delivers a few KiB a read does not zero 64 KiB each time); a chunked one through
        // `chunk`, to be decoded.
        let read = match &framing {
            Framing::Chunked(_) => stream.read(&mut chunk).await,
            Framing::Length(len) => {
                let rest = *len - body.len();
                let want = rest.min(LOW_WATER_MAX);
                if mark == 0 || mark > want {
                    if stream.wait_for(want) {
                        mark = want;
                    } else if mark > 0 {
                        return Err(FetchError::Io(format!(
                            "setting SO_RCVLOWAT on the connection to {sa} failed"
                        ))
                        .into());
                    }
                }
                let size = if mark > 0 { want } else { rest.min(read_size) };
                read_onto(stream, body, size).await
            }
            Framing::Close => read_onto(stream, body, read_size).await,
        };
        let n = match read {
            Ok(n) => n,
            // A TLS server that ends a read-to-close body without close_notify: the end, as
            // for Go's client.
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof
                    && matches!(framing, Framing::Close) =>
            {
                0
            }
            Err(e) => return Err(io_error(e, "read from", sa).into()),
        };
        if n == 0 {
            match framing {
                Framing::Length(len) => {
                    return Err(FetchError::Io(format!(
                        "unexpected EOF: got {} of {len} body bytes",
                        body.len()
                    ))
                    .into())
                }
                Framing::Chunked(_) => {
                    return Err(
                        FetchError::BadResponse("bad chunked encoding: truncated".into()).into(),
                    )
                }
                Framing::Close => break false,
            }
        }
        if matches!(framing, Framing::Chunked(_)) {
            pending.extend_from_slice(&chunk[..n]);
        } else {
            read_size = n.saturating_mul(2).clamp(BODY_READ_MIN, BODY_READ_MAX);
        }
    };
    let content_type = finish(body, body_limit, head.content_type, head.gzip)?;
    // A kept connection's next response head is read with the default mark.
    let keep = clean_end && head.keep_alive && (mark == 0 || stream.wait_for(1));
    Ok((content_type, keep))
}

/// The fewest and the most bytes one read puts onto a body's end.
const BODY_READ_MIN: usize = 8 << 10;
const BODY_READ_MAX: usize = 64 << 10;
/// The most bytes a scrape asks the kernel to gather before it wakes the reader: the socket's
/// receive buffer grows to hold them, so this bounds what one connection may pin in the kernel.
const LOW_WATER_MAX: usize = 256 << 10;

/// Reads once from `stream` onto the end of `body`, at most `max` bytes.
async fn read_onto<S: AsyncRead + Unpin>(
    stream: &mut S,
    body: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let old = body.len();
    body.resize(old + max, 0);
    let read = stream.read(&mut body[old..]).await;
    body.truncate(old + read.as_ref().map_or(0, |&n| n));
    read
}

/// A failed read or write (`what`: "read from", "write to") on the connection to `sa`; a TLS
/// error in TLS's words.
pub fn io_error(e: io::Error, what: &str, sa: SocketAddr) -> FetchError {
    #[cfg(feature = "tls")]
    if let Some(m) = super::tls::tls_error(&e) {
        return FetchError::Tls(m);
    }
    FetchError::Io(format!("{what} {sa}: {e}"))
}

/// What the scraper needs from a response head.
struct Head {
    /// Its length in bytes.
    len: usize,
    status: u16,
    reason: String,
    content_type: String,
    length: Option<usize>,
    chunked: bool,
    gzip: bool,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    keep_alive: bool,
}

/// Parses a response head at the start of `buf`; `None`: not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, FetchError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
            return Err(FetchError::BadResponse(
                "response head larger than 64 KiB".into(),
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FetchError::BadResponse(e.to_string())),
    };
    let mut head = Head {
        len,
        status: resp.code.unwrap_or(0),
        reason: resp.reason.unwrap_or("").to_owned(),
        content_type: String::new(),
        length: None,
        chunked: false,
        gzip: false,
        keep_alive: false,
    };
    let (mut close, mut keep) = (false, false);
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-type") {
            head.content_type = v.into_owned();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.length = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| FetchError::BadResponse(format!("bad Content-Length {v:?}")))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            head.gzip = v.trim().eq_ignore_ascii_case("gzip");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in v.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    head.keep_alive = !close && (resp.version == Some(1) || keep);
    Ok(Some(head))
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
        // Sized by the length of the data that the gzip trailer states (mod 2^32), so the
        // output is allocated once rather than grown by copies. It is only a guess: bounded by
        // deflate's largest ratio (1032:1), the limit and 16 MiB, it grows past that as needed.
        let stated = match body.len().checked_sub(4).and_then(|at| body.get(at..)) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
            _ => 0,
        };
        let guess = if stated >= body.len() {
            stated.min(body.len().saturating_mul(1032))
        } else {
            body.len().saturating_mul(4)
        };
        let mut out = BodyPool::take();
        out.reserve(guess.min(limit.saturating_add(1)).min(16 << 20));
        let read = flate2::read::GzDecoder::new(body.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut out);
        BodyPool::give_back(std::mem::replace(body, out));
        read.map_err(|e| FetchError::BadResponse(format!("bad gzip body: {e}")))?;
    }
    if body.len() > limit {
        return Err(FetchError::BodyTooLarge(limit));
    }
    Ok(content_type)
}

/// Scrape bodies' buffers, kept between scrapes for the next one of any target.
///
/// A body is needed only while its scrape runs, and scrapes of different targets rarely
/// overlap, so a few buffers serve them all (a gzip body's decompressed copy comes from the
/// pool too). Without the pool every scrape allocated its body afresh; on the musl build
/// (boards) an allocation of that size is fresh pages from the kernel each time, and faulting
/// them in was about 5 % of the agent's CPU with 11 targets at 1 s. Buffers larger than
/// [`BodyPool::MAX_BYTES`] are not kept, so a gateway with big targets does not hold their
/// bodies' memory between scrapes.
pub struct BodyPool;

thread_local! {
    static BODIES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl BodyPool {
    /// Buffers kept at most (a gzip body takes two: as received, and decompressed).
    const KEPT: usize = 3;
    /// The largest buffer kept (capacity).
    const MAX_BYTES: usize = 256 << 10;

    /// An empty buffer, from the pool if it has one.
    pub fn take() -> Vec<u8> {
        BODIES.with_borrow_mut(|p| p.pop()).unwrap_or_default()
    }

    /// Returns a buffer to the pool (or frees it, if it is big or the pool is full).
    pub fn give_back(mut body: Vec<u8>) {
        if body.capacity() > Self::MAX_BYTES || body.capacity() == 0 {
            return;
        }
        body.clear();
        BODIES.with_borrow_mut(|p| {
            if p.len() < Self::KEPT {
                p.push(body);
            }
        });
    }
}

/// The `Accept` header, as Prometheus 2.42 sends it: OpenMetrics preferred, then the text format.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A chunked body decoded as it arrives, so the encoded body is never held whole.
#[derive(Default)]
struct Dechunker {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(usize),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, up to an empty one.
    Trailer,
    Done,
}

impl Dechunker {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can of `input`, appending the payload to `out`; returns how many bytes
    /// it used. A line cut short is left unused, for the next call with more bytes after it.
    /// Once done, nothing more is used: what follows is not part of this response.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, FetchError> {
        let bad = |m: &str| FetchError::BadResponse(format!("bad chunked encoding: {m}"));
        let mut at = 0;
        loop {
            let rest = &input[at..];
            if let ChunkState::Data(left) = self.state {
                let take = left.min(rest.len());
                out.extend_from_slice(&rest[..take]);
                at += take;
                self.state = match left - take {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                if take == rest.len() {
                    return Ok(at);
                }
                continue;
            }
            if self.state == ChunkState::Done {
                return Ok(at);
            }
            let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_CHUNK_LINE {
                    return Err(bad("line too long"));
                }
                return Ok(at);
            };
            let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
            at += eol + 1;
            self.state = match self.state {
                ChunkState::Size => {
                    let text = std::str::from_utf8(line).map_err(|_| bad("size"))?;
                    let text = text.split(';').next().unwrap_or("").trim();
                    match usize::from_str_radix(text, 16).map_err(|_| bad("size"))? {
                        0 => ChunkState::Trailer,
                        n => ChunkState::Data(n),
                    }
                }
                ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                ChunkState::DataEnd => return Err(bad("chunk longer than its size")),
                ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                other => other,
            };
        }
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

    /// Decodes `input` fed in pieces of `step` bytes, as reads would deliver it; the payload
    /// and how many bytes of the input the body took.
    fn dechunk_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), FetchError> {
        let (mut d, mut out, mut pending, mut used) = (Dechunker::default(), vec![], vec![], 0);
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            let n = d.feed(&pending, &mut out)?;
            used += n;
            pending.drain(..n);
            if d.done() {
                return Ok((out, used));
            }
        }
        Err(FetchError::BadResponse("truncated".into()))
    }

    #[test]
    fn dechunks_as_bytes_arrive() {
        let body = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: t\r\n\r\nNEXT";
        for step in [1, 2, 5, body.len()] {
            let (out, used) = dechunk_in_steps(body, step).unwrap();
            assert_eq!(out, b"abcde", "step {step}");
            assert_eq!(used, body.len() - 4, "the bytes after the body are left");
        }
        assert!(dechunk_in_steps(b"3\r\nab", 100).is_err());
        assert!(dechunk_in_steps(b"3\r\nabcd\r\n0\r\n\r\n", 100).is_err());
        assert!(dechunk_in_steps(b"zz\r\n", 100).is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(dechunk_in_steps(&long, 100).is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let keep = |head: &str| parse_head(head.as_bytes()).unwrap().unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }

    /// A server whose n-th accepted connection (from 0) answers the requests on it with
    /// `script[n]` in turn, then keeps it open until the client closes it. An empty answer
    /// closes it on that request without a byte; [`CLOSE`] closes it at once. Returns its
    /// address and the number of connections accepted.
    fn scripted(script: Vec<Vec<&'static str>>) -> (SocketAddr, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for (stream, answers) in listener.incoming().zip(script) {
                count.fetch_add(1, Ordering::SeqCst);
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    for answer in answers {
                        if answer == CLOSE {
                            return;
                        }
                        if !read_request(&mut s) {
                            return;
                        }
                        if answer.is_empty() {
                            return;
                        }
                        s.write_all(answer.as_bytes()).unwrap();
                    }
                    let _ = s.read_to_end(&mut Vec::new());
                });
            }
        });
        (addr, accepted)
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Reads one request head from `s`; false if the connection closed or failed first.
    fn read_request(s: &mut std::net::TcpStream) -> bool {
        use std::io::Read;
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        true
    }

    /// In a script: close the connection now.
    const CLOSE: &str = "close";
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\na 1\n";
    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nb 2\n\r\n0\r\n\r\n";

    /// A plain GET of `/m` from `addr`, for at most 1000 bytes.
    fn request(addr: &str) -> Request<'_> {
        Request {
            addr,
            path_and_query: "/m",
            headers: "",
            body_limit: 1000,
            tls: None,
        }
    }

    /// Fetches `/m` from `addr` through `conn`; the body as text.
    fn get(conn: &mut Option<Conn>, addr: SocketAddr) -> Result<String, FetchError> {
        let mut body = Vec::new();
        let addr = addr.to_string();
        async_io::block_on(fetch(conn, &request(&addr), &mut body))?;
        Ok(String::from_utf8(body).unwrap())
    }

    #[test]
    fn keeps_the_connection_between_fetches() {
        let (addr, accepted) = scripted(vec![vec![OK, CHUNKED, OK]]);
        let mut conn = None;
        assert_eq!(get(&mut conn, addr).unwrap(), "a 1\n");
        assert!(conn.is_some());
        assert_eq!(get(&mut conn, addr).unwrap(), "b 2\n");
        assert_eq!(get(&mut conn, addr).unwrap(), "a 1\n");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Bodies that arrive in pieces, with pauses, on one kept connection: the low-water mark
    /// the client sets for a body never exceeds what is still to come (the last piece of a
    /// body larger than the mark's cap wakes the reader), and it is reset for the next head.
    #[test]
    fn bodies_in_pieces_on_a_kept_connection() {
        use std::io::{Read, Write};
        let sizes = [3 * LOW_WATER_MAX + 12_345, 20_000, 5];
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for size in sizes {
                if !read_request(&mut s) {
                    return;
                }
                let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").unwrap();
                s.flush().unwrap();
                for piece in body.chunks(size / 7 + 1) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    s.write_all(piece).unwrap();
                }
            }
            let _ = s.read_to_end(&mut Vec::new());
        });
        let addr = addr.to_string();
        let req = Request {
            body_limit: 4 << 20,
            ..request(&addr)
        };
        let mut conn = None;
        for size in sizes {
            let mut body = Vec::new();
            let fetched = async_io::block_on(
                // The timer first: a wake-up by it must not let the fetch read on.
                futures_lite::FutureExt::or(
                    async {
                        crate::runtime::timer::sleep(std::time::Duration::from_secs(5)).await;
                        Err(FetchError::Io("the body never completed".into()))
                    },
                    fetch(&mut conn, &req, &mut body),
                ),
            );
            fetched.unwrap();
            assert_eq!(body.len(), size);
            assert!(body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == b'a' + (i % 26) as u8));
            assert!(conn.is_some(), "the connection is kept");
        }
    }

    #[test]
    fn a_kept_connection_dead_before_answering_is_replaced_once() {
        // The first connection takes the second request and closes without a byte.
        let (addr, accepted) = scripted(vec![vec![OK, ""], vec![OK]]);
        let mut conn = None;
        get(&mut conn, addr).unwrap();
        assert_eq!(get(&mut conn, addr).unwrap(), "a 1\n");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(conn.is_some());
    }

    #[test]
    fn no_retry_once_response_bytes_arrived() {
        // A second connection would answer; it must not be asked.
        let (addr, _) = scripted(vec![vec![OK, "HTTP/1.1 200 O", CLOSE], vec![OK]]);
        let mut conn = None;
        get(&mut conn, addr).unwrap();
        let e = get(&mut conn, addr).unwrap_err();
        assert!(
            e.to_string().contains("closed before the response head"),
            "{e}"
        );
        assert!(conn.is_none());
    }

    #[test]
    fn connections_the_response_does_not_allow_are_dropped() {
        for answer in [
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\na 1\n",
            "HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\na 1\n",
            // Read to the end of the connection.
            "HTTP/1.1 200 OK\r\n\r\na 1\n",
            // Bytes past the announced length.
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na 1\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (addr, _) = scripted(vec![vec![answer, CLOSE]]);
            let mut conn = None;
            let _ = get(&mut conn, addr);
            assert!(conn.is_none(), "{answer:?}");
        }
    }

    #[test]
    fn a_new_address_gets_a_new_connection() {
        let (a, _) = scripted(vec![vec![OK, OK]]);
        let (b, accepted_b) = scripted(vec![vec![CHUNKED]]);
        let mut conn = None;
        get(&mut conn, a).unwrap();
        assert_eq!(get(&mut conn, b).unwrap(), "b 2\n");
        assert_eq!(accepted_b.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_fetch_cut_short_leaves_no_connection() {
        use futures_lite::FutureExt;
        // The second request is never answered (the connection stays open).
        let (addr, _) = scripted(vec![vec![OK, "HTTP/1.1 200 OK\r\n"]]);
        let mut conn = None;
        get(&mut conn, addr).unwrap();
        let mut body = Vec::new();
        let timed_out = async_io::block_on(
            fetch(&mut conn, &request(&addr.to_string()), &mut body).or(async {
                crate::runtime::timer::sleep(std::time::Duration::from_millis(200)).await;
                Err(FetchError::Timeout)
            }),
        );
        assert_eq!(timed_out, Err(FetchError::Timeout));
        assert!(conn.is_none());
    }
}
