//! `remote_write` over https: a Perch pushes what it scrapes to https receivers, with
//! `tls_config` as Prometheus configures it. The receivers are rustls servers with the
//! certificates of `tests/data/tls/` (see its `gen.sh`). Only in builds with the `tls` feature.

use crate::scrape::{api, query};
use crate::support::{threads, tls_server_config, wait_until, Fixture, Perch};
use perch::remote::pb;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Series text (labels in name order) → samples (t ms, value).
type Series = BTreeMap<String, Vec<(i64, f64)>>;

/// An https remote-write receiver: answers `POST /api/v1/write` with a snappy-compressed
/// `WriteRequest` by 204 and records its series; anything else gets a 400.
struct Receiver {
    port: u16,
    series: Arc<Mutex<Series>>,
    /// Requests received over a completed handshake, those whose handshake resumed a TLS
    /// session, and connections accepted.
    requests: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Arc::new(tls_server_config(false));
        let series = Arc::new(Mutex::new(Series::new()));
        let [requests, resumed, conns] = [0; 3].map(|_| Arc::new(AtomicUsize::new(0)));
        let (s, r, c) = (series.clone(), requests.clone(), conns.clone());
        let rs = resumed.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, s, r, rs) = (config.clone(), s.clone(), r.clone(), rs.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    // None: the handshake failed, or the client went away.
                    let Some((head, body)) = read_request(&mut tls) else {
                        return;
                    };
                    // Counted before the request, so that a reader never sees more requests
                    // than it can see resumptions of them.
                    if tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        rs.fetch_add(1, Ordering::SeqCst);
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let status = match record(&head, &body, &s) {
                        Ok(()) => "204 No Content",
                        Err(e) => {
                            eprintln!("receiver: {e}");
                            "400 Bad Request"
                        }
                    };
                    let answer = format!("HTTP/1.1 {status}\r\nConnection: close\r\n\r\n");
                    let _ = tls.write_all(answer.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Receiver {
            port,
            series,
            requests,
            resumed,
            conns,
        }
    }

    fn samples(&self, series: &str) -> Vec<(i64, f64)> {
        let all = self.series.lock().unwrap();
        all.get(series).cloned().unwrap_or_default()
    }
}

/// Reads one request: its head as text and its body (by `Content-Length`).
fn read_request(s: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = header(&head, "content-length")?.parse().ok()?;
    let mut body = buf.split_off(end);
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Checks a remote-write request as a receiver does and adds its samples to `into`.
fn record(head: &str, body: &[u8], into: &Mutex<Series>) -> Result<(), String> {
    if !head.starts_with("POST /api/v1/write HTTP/1.1\r\n") {
        return Err(format!("not a remote-write request: {head:?}"));
    }
    for (name, want) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ] {
        if header(head, name) != Some(want) {
            return Err(format!("{name} is not {want}: {head:?}"));
        }
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| e.to_string())?;
    let req = pb::WriteRequest::decode(raw.as_slice()).map_err(|e| e.to_string())?;
    let mut all = into.lock().unwrap();
    for ts in req.timeseries {
        let labels: BTreeMap<&str, &str> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let samples = all.entry(text.join(",")).or_default();
        samples.extend(ts.samples.iter().map(|s| (s.timestamp, s.value)));
        samples.sort_by_key(|s| s.0);
        samples.dedup_by_key(|s| s.0);
    }
    Ok(())
}

/// The samples Perch stored for `series` (PromQL), at least `margin_s` seconds old.
fn stored(port: u16, series: &str, margin_s: f64) -> Vec<(i64, f64)> {
    let result = query(port, &format!("{series}[10m]"));
    let Some(values) = result[0]["values"].as_array() else {
        return Vec::new();
    };
    let newest = values.last().and_then(|v| v[0].as_f64()).unwrap_or(0.0);
    values
        .iter()
        .filter(|v| v[0].as_f64().unwrap() <= newest - margin_s)
        .map(|v| {
            let t = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
            (t, v[1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

/// The writer called `name` in `/api/v1/status/remote`.
fn writer(port: u16, name: &str) -> Value {
    let status = api(port, "/api/v1/status/remote");
    let writers = status["remoteWrite"].as_array().unwrap();
    let w = writers.iter().find(|w| w["name"] == name);
    w.cloned().unwrap_or(Value::Null)
}

/// A Perch scraping a counter every second pushes it to an https receiver it trusts through
/// `tls_config.ca_file`, by name (`localhost`: SNI and the certificate's DNS name); every
/// sample stored a few seconds ago has arrived, external labels added, and the connections
/// after the first resumed the TLS session. A second
/// `remote_write` entry trusts a CA that did not sign the receiver's certificate: nothing is
/// posted to that receiver, and the failures are counted in `/metrics` and described in Go's
/// words on `/api/v1/status/remote`. TLS runs on the executor: Perch keeps to its three
/// threads (no TLS thread).
#[test]
fn remote_write_over_https_with_tls_config() {
    let target = Fixture::serve("text/plain; version=0.0.4", false, |n| {
        format!("# TYPE pushed_total counter\npushed_total {n}\n").into_bytes()
    });
    let (good, bad) = (Receiver::start(), Receiver::start());
    let ca = |f: &str| crate::support::data_dir().join("tls").join(f);
    let queue = "queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}";
    let config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    site: greenhouse\n\
         scrape_configs:\n  - job_name: fx\n    static_configs:\n      - targets: ['{}']\n\
         remote_write:\n\
         \x20 - url: https://localhost:{}/api/v1/write\n    name: central\n    tls_config: {{ca_file: {}}}\n    {queue}\n\
         \x20 - url: https://127.0.0.1:{}/api/v1/write\n    name: wrong_ca\n    tls_config: {{ca_file: {}}}\n    {queue}\n",
        target.addr,
        good.port,
        ca("ca.crt").display(),
        bad.port,
        ca("other-ca.crt").display(),
    );
    let perch = Perch::start("remote-tls", Some(&config));

    let series = format!(
        "__name__=\"pushed_total\",instance={:?},job=\"fx\",site=\"greenhouse\"",
        target.addr
    );
    // Every sample stored a few seconds ago has arrived.
    let delivered = |ours: &[(i64, f64)], theirs: &[(i64, f64)]| {
        ours.len() >= 3 && ours.iter().all(|s| theirs.contains(s))
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (ours, theirs) = loop {
        let ours = stored(perch.port, "pushed_total{job=\"fx\"}", 3.0);
        let theirs = good.samples(&series);
        if delivered(&ours, &theirs) || Instant::now() > deadline {
            break (ours, theirs);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        delivered(&ours, &theirs),
        "stored {ours:?}, received {theirs:?}"
    );
    let central = writer(perch.port, "central");
    assert_eq!(central["lastError"], "", "{central}");
    assert!(
        central["samplesSentLive"].as_u64().unwrap() >= 3,
        "{central}"
    );
    // A connection per request; after the first, the TLS session is resumed. (Under load the
    // first samples may share a request: wait for a third.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while good.requests.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let requests = good.requests.load(Ordering::SeqCst);
    assert!(requests >= 3, "{requests} requests");
    assert!(good.conns.load(Ordering::SeqCst) >= requests);
    assert!(
        good.resumed.load(Ordering::SeqCst) >= requests - 1,
        "{requests} requests"
    );

    // The wrong CA: failures counted by reason and described.
    let failures = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("perch_remote_write_failures_total{remote_name=\"wrong_ca\"")
                    && l.contains("reason=\"network\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(20), || {
        failures(&perch.get("/metrics").1) >= 2
    });
    let wrong = writer(perch.port, "wrong_ca");
    let error = wrong["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("x509: certificate signed by unknown authority"),
        "{wrong}"
    );
    assert!(
        wrong["failures"]["network"].as_u64().unwrap() >= 2,
        "{wrong}"
    );
    assert_eq!(wrong["samplesSentLive"], 0, "{wrong}");
    assert!(bad.conns.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        bad.requests.load(Ordering::SeqCst),
        0,
        "nothing is posted to a server whose certificate did not verify"
    );
    assert!(bad.series.lock().unwrap().is_empty());
    assert!(
        threads(perch.pid()) <= 3,
        "{} threads",
        threads(perch.pid())
    );
}
