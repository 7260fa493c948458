//! A query stops when its client goes away, and only then: end of file on the connection
//! cancels it (Prometheus's 499 `canceled`, counted in `perch_http_requests_total`), a pipelined
//! next request does not.
//!
//! The slow query needs no data: `sum_over_time(vector(1)[7d:1s])` over 10,000 steps sums a
//! week of one-second points per step (about a minute in a debug build); a day's window over
//! 1,000 steps takes about a second. The assertions are on the counter, which only the
//! cancellation path moves, and on CPU time with a wide margin.

use crate::support::{wait_until, Perch};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn query_range_request(query: &str, end: u32, extra_header: &str) -> String {
    let form = format!(
        "query={}&start=0&end={end}&step=1&timeout=5m",
        form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
    );
    format!(
        "POST /api/v1/query_range HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra_header}Content-Length: {}\r\n\r\n{form}",
        form.len()
    )
}

/// The value of the first sample line of `/metrics` that starts with `prefix`, 0 if none.
fn metric(perch: &Perch, prefix: &str) -> f64 {
    let (status, body) = perch.get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const CANCELED: &str = "perch_http_requests_total{code=\"499\",handler=\"query_range\"}";

#[test]
fn a_query_stops_when_its_client_closes_the_connection() {
    let perch = Perch::start("cancel", None);
    let mut s = TcpStream::connect(("127.0.0.1", perch.port)).unwrap();
    let req = query_range_request("sum_over_time(vector(1)[7d:1s])", 10_000, "");
    s.write_all(req.as_bytes()).unwrap();
    // Let it run for a while; it must not have answered.
    std::thread::sleep(Duration::from_secs(1));
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow query answered within a second: it is not slow enough for this test"
    );
    assert_eq!(metric(&perch, CANCELED), 0.0);
    let closed = Instant::now();
    drop(s);

    // Only the cancellation path counts a 499; uncanceled, the query would run for about a
    // minute (or until its 5 min timeout).
    wait_until(Duration::from_secs(20), || metric(&perch, CANCELED) == 1.0);
    eprintln!("canceled {:?} after the close", closed.elapsed());
    // And it no longer burns CPU: an evaluation would use about all of one core.
    let cpu = || metric(&perch, "process_cpu_seconds_total ");
    let before = cpu();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu() - before;
    assert!(
        used < 1.0,
        "{used} s of CPU in 3 s after the query was canceled"
    );
    // The server is fine: the next query on a new connection answers.
    let (status, body) =
        crate::support::request(perch.port, "POST", "/api/v1/query", Some("query=vector(1)"))
            .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_pipelined_request_during_a_query_is_not_a_disconnect() {
    let perch = Perch::start("cancel-pipelined", None);
    let mut s = TcpStream::connect(("127.0.0.1", perch.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = query_range_request("sum_over_time(vector(1)[1d:1s])", 1_000, "");
    s.write_all(req.as_bytes()).unwrap();
    // The next request arrives while the first one's query runs (about a second).
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:.300}");
    assert!(
        text.contains("{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\""),
        "{text:.300}"
    );
    assert!(text.ends_with("Perch is Healthy.\n"), "{text:.300}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2);
    assert_eq!(metric(&perch, CANCELED), 0.0);
}
