//! Test support: a fixture target, the real `perch` binary on a free port, a tiny HTTP client.
//!
//! Test code may use threads and blocking I/O freely; only Perch itself is single-threaded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository's `tests/data`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scrape target that serves `bodies` in turn, then the last one again and again.
pub struct Fixture {
    pub addr: String,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
}

/// What a fixture does with a connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnPolicy {
    /// Says `Connection: close` and closes it (as the fixture always did).
    Close,
    /// Closes it without saying so first.
    CloseSilently,
    /// Says `Connection: close` but keeps it open, waiting for another request.
    SayCloseKeepOpen,
    /// Keeps it open for more requests; closes it when idle this long.
    KeepAlive(Duration),
}

impl Fixture {
    pub fn start(bodies: Vec<Vec<u8>>) -> Fixture {
        Fixture::start_with(bodies, "text/plain; version=0.0.4", false)
    }

    /// A target with a given `Content-Type`, gzip-compressing its bodies if asked.
    pub fn start_with(bodies: Vec<Vec<u8>>, content_type: &'static str, gzip: bool) -> Fixture {
        Fixture::serve(content_type, gzip, move |n| {
            bodies[n.min(bodies.len() - 1)].clone()
        })
    }

    /// A target that answers its n-th request (from 0) with `body(n)`.
    pub fn serve(
        content_type: &'static str,
        gzip: bool,
        body: impl Fn(usize) -> Vec<u8> + Send + 'static,
    ) -> Fixture {
        Fixture::handle(content_type, gzip, move |n, _| (200, body(n)))
    }

    /// A target that answers its n-th request (from 0), whose head is `head` (request line and
    /// headers), with `answer(n, head)`: a status and a body.
    pub fn handle(
        content_type: &'static str,
        gzip: bool,
        answer: impl Fn(usize, &str) -> (u16, Vec<u8>) + Send + 'static,
    ) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Fixture::handle_on(listener, content_type, gzip, answer)
    }

    /// As [`Fixture::handle`], on a listener the caller bound (e.g. in a network namespace).
    pub fn handle_on(
        listener: TcpListener,
        content_type: &'static str,
        gzip: bool,
        answer: impl Fn(usize, &str) -> (u16, Vec<u8>) + Send + 'static,
    ) -> Fixture {
        Fixture::with_policy(listener, ConnPolicy::Close, content_type, gzip, answer)
    }

    /// A target that answers `body(n)` and treats its connections as `policy` says.
    pub fn keeping(
        policy: ConnPolicy,
        body: impl Fn(usize) -> Vec<u8> + Send + 'static,
    ) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Fixture::with_policy(
            listener,
            policy,
            "text/plain; version=0.0.4",
            false,
            move |n, _| (200, body(n)),
        )
    }

    /// An `https` target with `tests/data/tls/server.crt` (for 127.0.0.1 and localhost, signed
    /// by `ca.crt`) that answers `body(n)`; it asks for a client certificate signed by `ca.crt`
    /// when `client_auth` is set.
    #[cfg(feature = "tls")]
    pub fn tls(
        policy: ConnPolicy,
        client_auth: bool,
        body: impl Fn(usize) -> Vec<u8> + Send + 'static,
    ) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = Arc::new(tls_server_config(client_auth));
        Fixture::serving(
            listener,
            policy,
            "text/plain; version=0.0.4",
            false,
            move |n, _| (200, body(n)),
            Some(config),
        )
    }

    /// As [`Fixture::handle_on`], each connection in its own thread and treated as `policy`
    /// says; the answers are made one at a time.
    pub fn with_policy(
        listener: TcpListener,
        policy: ConnPolicy,
        content_type: &'static str,
        gzip: bool,
        answer: impl Fn(usize, &str) -> (u16, Vec<u8>) + Send + 'static,
    ) -> Fixture {
        Fixture::serving(listener, policy, content_type, gzip, answer, None)
    }

    /// As [`Fixture::with_policy`], over TLS with `tls` if given.
    fn serving(
        listener: TcpListener,
        policy: ConnPolicy,
        content_type: &'static str,
        gzip: bool,
        answer: impl Fn(usize, &str) -> (u16, Vec<u8>) + Send + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Fixture {
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, c) = (hits.clone(), conns.clone());
        let answer = Arc::new(Mutex::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, answer, tls) = (h.clone(), answer.clone(), tls.clone());
                std::thread::spawn(move || {
                    if let ConnPolicy::KeepAlive(idle) = policy {
                        let _ = s.set_read_timeout(Some(idle));
                    }
                    let answer = |head: &str| {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        (answer.lock().unwrap())(n, head)
                    };
                    match tls {
                        None => serve_conn(s, policy, content_type, gzip, answer),
                        Some(config) => {
                            let conn = rustls::ServerConnection::new(config).unwrap();
                            let mut tls = rustls::StreamOwned::new(conn, s);
                            serve_conn(&mut tls, policy, content_type, gzip, answer);
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                        }
                    }
                });
            }
        });
        Fixture { addr, hits, conns }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// The https fixture's server config (see [`Fixture::tls`]); also the https remote-write
/// receiver's (`remote_tls`).
#[cfg(feature = "tls")]
pub fn tls_server_config(client_auth: bool) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = data_dir().join("tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(certs, key).unwrap()
}

/// Answers the requests on one connection as `policy` says, each with `answer(head)`.
fn serve_conn(
    mut s: impl Read + Write,
    policy: ConnPolicy,
    content_type: &str,
    gzip: bool,
    mut answer: impl FnMut(&str) -> (u16, Vec<u8>),
) {
    loop {
        let mut buf = [0u8; 4096];
        let mut req = Vec::new();
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                // EOF, or idle too long (a read timeout).
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let (status, plain) = answer(&String::from_utf8_lossy(&req));
        let (body, encoding) = if gzip {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&plain).unwrap();
            (e.finish().unwrap(), "Content-Encoding: gzip\r\n")
        } else {
            (plain, "")
        };
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Error",
        };
        let close = match policy {
            ConnPolicy::Close | ConnPolicy::SayCloseKeepOpen => "Connection: close\r\n",
            _ => "",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{encoding}Content-Length: {}\r\n{close}\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
        if matches!(policy, ConnPolicy::Close | ConnPolicy::CloseSilently) {
            return;
        }
    }
}

/// A running `perch` binary; killed when dropped.
pub struct Perch {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// A fresh, empty directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    // Unique per call: tests of one process may ask for the same name (a test's files and the
    // peer it starts), and must not wipe each other's.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Perch {
    /// Starts perch with `config` (None: the built-in default) and waits until it is ready.
    pub fn start(name: &str, config: Option<&str>) -> Perch {
        Perch::start_in(temp_dir(name), config, &[])
    }

    /// As [`Perch::start`], with extra command-line arguments.
    pub fn start_with(name: &str, config: Option<&str>, args: &[&str]) -> Perch {
        Perch::start_in(temp_dir(name), config, args)
    }

    /// Starts perch on the data under `dir` (kept across restarts), with extra flags.
    pub fn start_in(dir: PathBuf, config: Option<&str>, extra: &[&str]) -> Perch {
        Perch::start_on(free_port(), dir, config, extra)
    }

    /// As [`Perch::start_in`], listening on `port`.
    pub fn start_on(port: u16, dir: PathBuf, config: Option<&str>, extra: &[&str]) -> Perch {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_perch"));
        if let Some(c) = config {
            let f = dir.join("prometheus.yml");
            std::fs::write(&f, c).unwrap();
            cmd.arg("--config.file").arg(&f);
        }
        cmd.arg("--storage.tsdb.path")
            .arg(dir.join("data"))
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--log.level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start perch");
        let p = Perch { child, port, dir };
        wait_until(Duration::from_secs(20), || {
            get(p.port, "/-/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        p
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.port, path).expect("GET")
    }

    pub fn post_form(&self, path: &str, form: &str) -> (u16, String) {
        request(self.port, "POST", path, Some(form)).expect("POST")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Perch {
    /// Sends SIGTERM and waits; returns the exit code. The data directory is kept.
    pub fn stop(mut self) -> (Option<i32>, PathBuf) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let code = self.child.wait().ok().and_then(|s| s.code());
        let dir = std::mem::take(&mut self.dir);
        (code, dir)
    }
}

impl Perch {
    /// SIGKILL, as a power cut would; the data directory is kept.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.dir)
    }
}

impl Drop for Perch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `f` every 50 ms until it is true; panics after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    request(port, "GET", path, None)
}

/// One HTTP/1.1 request with `Connection: close` (a form body for POST when given); returns
/// status and body text. An error when nothing could be sent or no answer came.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let headers: &[(&str, &str)] = match form {
        Some(_) => &[("Content-Type", "application/x-www-form-urlencoded")],
        None => &[],
    };
    let body = form.unwrap_or("").as_bytes();
    let r = try_raw_request(port, method, path, headers, body, Duration::from_secs(30))?;
    Ok((r.status, r.text()))
}

/// Number of OS threads of a process.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A real Prometheus 2.42 (Debian's `prometheus`) on a free loopback port and a fresh
/// directory; killed and its directory removed when dropped.
pub struct Prometheus {
    pub child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts one with `config` (YAML) and extra flags, and waits until it is ready.
    pub fn start(name: &str, config: &str, extra: &[&str]) -> Prometheus {
        Prometheus::start_in(temp_dir(name), config, extra)
    }

    /// One holding the given OpenMetrics samples, loaded with `promtool tsdb
    /// create-blocks-from openmetrics`.
    pub fn with_openmetrics(name: &str, openmetrics: &str) -> Prometheus {
        let dir = temp_dir(name);
        let om = dir.join("data.om");
        std::fs::write(&om, openmetrics).unwrap();
        let st = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .expect("promtool must be installed");
        assert!(st.success());
        Prometheus::start_in(
            dir,
            "global:\n  scrape_interval: 1h\n",
            &["--storage.tsdb.retention.time=100y"],
        )
    }

    fn start_in(dir: PathBuf, config: &str, extra: &[&str]) -> Prometheus {
        std::fs::write(dir.join("p.yml"), config).unwrap();
        let port = free_port();
        let child = Prometheus::spawn(&dir, port, extra);
        let p = Prometheus { child, port, dir };
        p.wait_ready();
        p
    }

    fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Child {
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("p.yml").display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be installed (Debian's prometheus package)")
    }

    fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), || {
            get(self.port, "/-/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
    }

    /// Kills it, keeping its data and port for [`Prometheus::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same data and port, with `extra` flags.
    pub fn restart(&mut self, extra: &[&str]) {
        self.child = Prometheus::spawn(&self.dir, self.port, extra);
        self.wait_ready();
    }
}

/// `perch import FILE --storage.tsdb.path DIR [extra…]`; panics with its stderr if it fails,
/// returns its stdout.
pub fn perch_import(file: &Path, data: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .arg("import")
        .arg(file)
        .arg("--storage.tsdb.path")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response read whole: status, headers (names lowercased) and the body, de-chunked.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`, any body and headers; the answer whole, with
/// a chunked body decoded (and checked to end with its final chunk).
pub fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    try_raw_request(port, method, path, headers, body, Duration::from_secs(60))
        .expect("an HTTP answer")
}

/// As [`raw_request`], with a read timeout; an error when connecting or sending fails or no
/// response head came back (a connection cut after the head keeps what arrived).
pub fn try_raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        if resp.is_empty() {
            return Err(e);
        }
    }
    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no HTTP response head",
        ));
    };
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut raw = resp[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &raw[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a chunk size line");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16)
                .expect("a hex chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n", "chunk framing");
            rest = &rest[size + 2..];
        }
        raw = out;
    }
    Ok(RawResponse {
        status,
        headers,
        body: raw,
    })
}
