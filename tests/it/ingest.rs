//! The ingest endpoints against the real binary: remote write (`/api/v1/write`) and the text
//! import (`/api/v1/import/prometheus`) write samples that the query API gives back bit-exactly;
//! bad bodies get their 4xx; and (ignored, needs prometheus) a real Prometheus 2.42 remote-writes
//! its own scrapes into Perch, which then answers like it for every series.

use crate::support::{free_port, get, temp_dir, wait_until, Perch};
use perch::web::ingest::pb;
use prost::Message;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A config that scrapes nothing: the store holds only what the test writes.
const NO_SCRAPES: &str = "global:\n  scrape_interval: 15s\n";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// POSTs raw bytes with extra headers; returns status, response headers and body.
/// A POST; returns status, the head's headers as text, and the body as text.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let r = crate::support::raw_request(port, "POST", path, headers, body);
    let head: Vec<String> = r.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    (r.status, head.join("\r\n"), r.text())
}

/// The headers Prometheus sends with a remote-write request.
const RW_HEADERS: &[(&str, &str)] = &[
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
    ("User-Agent", "Prometheus/2.42.0"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// A series to send: label pairs and (t ms, value) samples.
type RwSeries<'a> = (&'a [(&'a str, &'a str)], Vec<(i64, f64)>);

fn rw_body(series: &[RwSeries]) -> Vec<u8> {
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: (*n).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(t, v)| pb::Sample {
                        value: v,
                        timestamp: t,
                    })
                    .collect(),
                exemplars: Vec::new(),
                histograms: Vec::new(),
            })
            .collect(),
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn json(perch: &Perch, path: &str) -> Value {
    let (s, b) = perch.get(path);
    assert_eq!(s, 200, "{path}: {b}");
    serde_json::from_str(&b).unwrap()
}

/// The (t ms, value bits) points of a matrix series from a `query_range` answer.
fn points(series: &Value) -> Vec<(i64, u64)> {
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
            let v = match p[1].as_str().unwrap() {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                s => s.parse::<f64>().unwrap(),
            };
            (t, v.to_bits())
        })
        .collect()
}

/// The matrix of `query` over `[start, end]` ms at `step` ms, by metric (as JSON text).
fn range(perch: &Perch, query: &str, start: i64, end: i64, step: i64) -> Vec<(String, Value)> {
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let v = json(
        perch,
        &format!(
            "/api/v1/query_range?query={q}&start={}&end={}&step={}",
            start as f64 / 1000.0,
            end as f64 / 1000.0,
            step as f64 / 1000.0
        ),
    );
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"].to_string(), s.clone()))
        .collect()
}

#[test]
fn remote_write_round_trip() {
    let perch = Perch::start("rw", Some(NO_SCRAPES));
    let t0 = (now_ms() - 3_600_000) / 15_000 * 15_000;
    let values: Vec<f64> = vec![
        0.1 + 0.2,
        1e308,
        -3.5,
        5e-324,
        123_456_789.123_456_78,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1.0 / 3.0,
        42.0,
        -1e-300,
    ];
    let all: Vec<(i64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (t0 + 15_000 * i as i64, v))
        .collect();
    let a: &[(&str, &str)] = &[("__name__", "rw_test"), ("job", "rw"), ("k", "a")];
    // Labels in any order; the second series needs no sorting either.
    let b: &[(&str, &str)] = &[("k", "b"), ("job", "rw"), ("__name__", "rw_test")];
    // First the newer half, then the older half out of order: older than the head by then.
    let newer = all[5..].to_vec();
    let mut older = all[..5].to_vec();
    older.reverse();
    let (s, head, body) = post(
        perch.port,
        "/api/v1/write",
        RW_HEADERS,
        &rw_body(&[(a, newer.clone()), (b, vec![all[9]])]),
    );
    assert_eq!(s, 204, "{head}\n{body}");
    assert!(body.is_empty());
    let (s, _, body) = post(
        perch.port,
        "/api/v1/write",
        RW_HEADERS,
        &rw_body(&[(a, older.clone()), (b, vec![all[0]])]),
    );
    assert_eq!(s, 204, "{body}");

    let got = range(&perch, "rw_test", t0, t0 + 15_000 * 9, 15_000);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].1["metric"],
        serde_json::json!({"__name__": "rw_test", "job": "rw", "k": "a"})
    );
    let want: Vec<(i64, u64)> = all.iter().map(|&(t, v)| (t, v.to_bits())).collect();
    assert_eq!(points(&got[0].1), want);
    // Series b: its two samples; the steps between them see the older one (lookback).
    let pb = points(&got[1].1);
    assert_eq!(pb.first(), Some(&want[0]));
    assert_eq!(pb.last(), Some(&want[9]));

    // Bad bodies: 400 with a reason, nothing written; 415 for another encoding.
    for (body, what) in [
        (b"garbage".to_vec(), "garbage"),
        (rw_body(&[(a, vec![(t0, 1.0)])])[..10].to_vec(), "truncated"),
        (
            rw_body(&[(&[("job", "x")], vec![(t0, 1.0)])]),
            "no metric name",
        ),
        (
            rw_body(&[(&[("__name__", "x"), ("a-b", "1")], vec![(t0, 1.0)])]),
            "bad label name",
        ),
    ] {
        let (s, _, b) = post(perch.port, "/api/v1/write", RW_HEADERS, &body);
        assert_eq!(s, 400, "{what}: {b}");
        assert!(!b.trim().is_empty(), "{what}: a reason");
    }
    let gz = [("Content-Encoding", "gzip")];
    let (s, _, _) = post(perch.port, "/api/v1/write", &gz, &rw_body(&[]));
    assert_eq!(s, 415);
    let (s, _) = perch.get("/api/v1/write");
    assert_eq!(s, 405);
    let (_, m) = perch.get("/metrics");
    for line in [
        "perch_http_requests_total{code=\"204\",handler=\"remote_write\"} 2",
        "perch_http_requests_total{code=\"400\",handler=\"remote_write\"} 4",
        "perch_http_requests_total{code=\"415\",handler=\"remote_write\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing from /metrics");
    }
}

#[test]
fn import_round_trip() {
    let perch = Perch::start("import", Some(NO_SCRAPES));
    let t0 = (now_ms() - 3_600_000) / 15_000 * 15_000;
    let mut text = String::from("# HELP imp_total A counter.\n# TYPE imp_total counter\n");
    let values = [
        "0.30000000000000004",
        "1e308",
        "-3.5",
        "5e-324",
        "+Inf",
        "0.1",
    ];
    // Out of order on purpose.
    for (i, v) in values.iter().enumerate().rev() {
        text.push_str(&format!(
            "imp_total{{path=\"/a\",code=\"200\"}} {v} {}\n",
            t0 + 15_000 * i as i64
        ));
    }
    text.push_str("imp_now{x=\"1\"} 7.25\n");
    let before = now_ms();
    let (s, _, b) = post(
        perch.port,
        "/api/v1/import/prometheus?extra_label=env=test&extra_label=dc=north",
        &[("Content-Type", "text/plain")],
        text.as_bytes(),
    );
    let after = now_ms();
    assert_eq!(s, 204, "{b}");

    let got = range(&perch, "imp_total", t0, t0 + 15_000 * 5, 15_000);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1["metric"],
        serde_json::json!({"__name__": "imp_total", "code": "200", "dc": "north", "env": "test", "path": "/a"})
    );
    let want: Vec<(i64, u64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v: f64 = v.replace("+Inf", "inf").parse().unwrap();
            (t0 + 15_000 * i as i64, v.to_bits())
        })
        .collect();
    assert_eq!(points(&got[0].1), want);

    // The line without a timestamp got the time of the request.
    let v = json(&perch, "/api/v1/query?query=timestamp(imp_now)");
    let r = &v["data"]["result"][0];
    assert_eq!(
        r["metric"],
        serde_json::json!({"dc": "north", "env": "test", "x": "1"})
    );
    let t = (r["value"][1].as_str().unwrap().parse::<f64>().unwrap() * 1000.0).round() as i64;
    assert!((before..=after).contains(&t), "{before} <= {t} <= {after}");
    let v = json(&perch, "/api/v1/query?query=imp_now");
    assert_eq!(v["data"]["result"][0]["value"][1], "7.25");

    // Gzip, and the timestamp parameter for lines without one.
    use flate2::write::GzEncoder;
    let mut z = GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(b"imp_gz 1\nimp_gz{a=\"b\"} 2 ").unwrap();
    z.write_all(format!("{}\n", t0 + 1).as_bytes()).unwrap();
    let (s, _, b) = post(
        perch.port,
        &format!("/api/v1/import/prometheus?timestamp={t0}"),
        &[("Content-Encoding", "gzip")],
        &z.finish().unwrap(),
    );
    assert_eq!(s, 204, "{b}");
    let got = range(&perch, "imp_gz", t0, t0, 1000);
    assert_eq!(
        got.len(),
        1,
        "only the series without `a` has a sample at t0"
    );
    assert_eq!(points(&got[0].1), [(t0, 1f64.to_bits())]);
    let v = json(
        &perch,
        &format!(
            "/api/v1/query?query=timestamp(imp_gz%7Ba%3D%22b%22%7D)&time={}",
            t0 / 1000 + 1
        ),
    );
    let t = v["data"]["result"][0]["value"][1].as_str().unwrap();
    assert_eq!(t, format!("{}", (t0 + 1) as f64 / 1000.0));

    // A bad line: 400 naming it, and nothing of the request written.
    let (s, _, b) = post(
        perch.port,
        "/api/v1/import/prometheus",
        &[],
        format!("imp_bad 1 {t0}\nimp_bad{{x=\"1\"}} one {t0}\n").as_bytes(),
    );
    assert_eq!(s, 400);
    assert!(b.contains("line 2"), "{b}");
    let v = json(&perch, "/api/v1/series?match[]=imp_bad");
    assert_eq!(v["data"], serde_json::json!([]));
    let (s, _, _) = post(
        perch.port,
        "/api/v1/import/prometheus?extra_label=nope",
        &[],
        b"a 1\n",
    );
    assert_eq!(s, 400);
    let (_, m) = perch.get("/metrics");
    assert!(
        m.contains("perch_http_requests_total{code=\"204\",handler=\"import_prometheus\"} 2"),
        "{m}"
    );
}

/// Queries a server (Prometheus or Perch) by port; the parsed answer. HTTP/1.0, so that Go
/// answers without chunked encoding.
fn query_port(port: u16, path: &str) -> Value {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = c.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let (head, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let s = head.split_whitespace().nth(1).unwrap_or("");
    assert_eq!(s, "200", "{path}: {b}");
    serde_json::from_str(b).unwrap()
}

/// The result list of a range query, sorted by metric, as JSON text per series.
fn range_port(port: u16, query: &str, start: i64, end: i64) -> Vec<String> {
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let v = query_port(
        port,
        &format!(
            "/api/v1/query_range?query={q}&start={}&end={}&step=1",
            start as f64 / 1000.0,
            end as f64 / 1000.0
        ),
    );
    sorted_results(&v)
}

/// The result list of a query answer, as JSON text per series, sorted.
fn sorted_results(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "needs prometheus (Debian package prometheus)"]
fn remote_write_from_prometheus() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let started = Instant::now();
    let perch = Perch::start("rw-prom", Some(NO_SCRAPES));
    let dir = temp_dir("rw-prom-server");
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n\
         remote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
        perch.port
    );
    std::fs::write(dir.join("p.yml"), config).unwrap();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("p.yml").display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be installed");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _guard = Kill(prom, dir);
    wait_until(Duration::from_secs(20), || {
        get(port, "/-/ready")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    // About ten scrapes.
    let count = |p: u16, t: i64| -> String {
        let v = query_port(
            p,
            &format!(
                "/api/v1/query?query=count_over_time(up%7Bjob%3D%22prometheus%22%7D%5B1m%5D)&time={}",
                t as f64 / 1000.0
            ),
        );
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .to_owned()
    };
    wait_until(Duration::from_secs(25), || {
        count(port, now_ms()).parse::<u32>().unwrap_or(0) >= 10
    });
    // Compare at an instant a little in the past, once the remote write has caught up to it.
    let end = now_ms() - 2_000;
    let start = end - 8_000;
    wait_until(Duration::from_secs(15), || {
        count(perch.port, end) == count(port, end)
    });
    assert_ne!(count(port, end), "0");

    let mut failures = Vec::new();
    for q in [
        "up{job=\"prometheus\"}",
        "prometheus_build_info",
        "count_over_time(up[1m])",
        "scrape_samples_scraped",
        "prometheus_tsdb_head_series",
        "sum by (code) (prometheus_http_requests_total)",
        // (Not rate/increase here: at the start of a counter the engine extrapolates as newer
        // Prometheus does, not as 2.42, which is a PromQL matter, not an ingest one.)
        // Every series Prometheus scraped from itself, all of their samples.
        "{job=\"prometheus\"}",
    ] {
        let want = range_port(port, q, start, end);
        let got = range_port(perch.port, q, start, end);
        if want.is_empty() {
            failures.push(format!("{q}: Prometheus has no data"));
        } else if got != want {
            let missing = want.iter().filter(|w| !got.contains(w)).count();
            let extra = got.iter().filter(|g| !want.contains(g)).count();
            let first = want.iter().find(|w| !got.contains(w));
            let other = got.iter().find(|g| !want.contains(g));
            failures.push(format!(
                "{q}: {} series in Prometheus, {} in Perch; {missing} differ or are missing, {extra} extra; e.g. {first:?}\n  Perch: {other:?}",
                want.len(),
                got.len()
            ));
        }
    }
    // Every raw sample of the last minute, of every series Prometheus scraped from itself.
    let raw = |p: u16| -> Vec<String> {
        let v = query_port(
            p,
            &format!(
                "/api/v1/query?query=%7Bjob%3D%22prometheus%22%7D%5B1m%5D&time={}",
                end as f64 / 1000.0
            ),
        );
        sorted_results(&v)
    };
    let (want, got) = (raw(port), raw(perch.port));
    if want != got {
        let first = want.iter().find(|w| !got.contains(w));
        let other = got.iter().find(|g| !want.contains(g));
        failures.push(format!(
            "raw samples: {} series in Prometheus, {} in Perch; e.g. {first:?}\n  Perch: {other:?}",
            want.len(),
            got.len()
        ));
    }
    // The same series names and labels over the range.
    let series = |p: u16| -> Value {
        query_port(
            p,
            &format!(
                "/api/v1/series?match[]=%7Bjob%3D%22prometheus%22%7D&start={}&end={}",
                start as f64 / 1000.0,
                end as f64 / 1000.0
            ),
        )["data"]
            .clone()
    };
    let (want, got) = (series(port), series(perch.port));
    if want != got {
        failures.push(format!(
            "series: {} in Prometheus, {} in Perch",
            want.as_array().map_or(0, |a| a.len()),
            got.as_array().map_or(0, |a| a.len())
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// The shared recording's text: every sample line as (series, value text, ms timestamp).
fn recording_samples() -> Vec<(String, String, i64)> {
    let path = crate::support::data_dir().join("../../../shared/data/node-1s.om.zst");
    let file = std::fs::File::open(&path).expect("needs ../shared/data/node-1s.om.zst");
    let mut text = String::new();
    zstd::stream::read::Decoder::new(file)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut f = l.rsplitn(3, ' ');
            let (ts, v, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            // Seconds with up to three decimals, read exactly (no float rounding).
            let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
            let ms = secs.parse::<i64>().unwrap() * 1000
                + format!("{frac:0<3}")[..3].parse::<i64>().unwrap();
            (s.to_owned(), v.to_owned(), ms)
        })
        .collect()
}

#[test]
#[ignore = "needs ../shared (the shared recording)"]
fn import_endpoint_round_trips_the_shared_recording() {
    let samples = recording_samples();
    assert_eq!(samples.len(), 1_871_927);
    let perch = Perch::start("import-recording", Some(""));
    // In slices of whole lines, as a backfill script would send them.
    // Bodies stay under the server's 8 MiB request bound.
    for chunk in samples.chunks(40_000) {
        let mut body = String::with_capacity(chunk.len() * 120);
        for (s, v, t) in chunk {
            body.push_str(&format!("{s} {v} {t}\n"));
        }
        let (status, _, b) = post(
            perch.port,
            "/api/v1/import/prometheus",
            &[],
            body.as_bytes(),
        );
        assert_eq!(status, 204, "{b}");
    }
    // Every sample back, bit for bit, one metric at a time.
    let mut want: std::collections::BTreeMap<String, Vec<(i64, u64)>> = Default::default();
    for (s, v, t) in &samples {
        let v: f64 = match v.as_str() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        want.entry(s.split('{').next().unwrap().to_owned())
            .or_default()
            .push((*t, v.to_bits()));
    }
    let end = samples.iter().map(|s| s.2).max().unwrap();
    let start = samples.iter().map(|s| s.2).min().unwrap();
    let window = (end - start) / 1000 + 10;
    let mut total = 0;
    for (name, mut expected) in want {
        let v = json(
            &perch,
            &format!(
                "/api/v1/query?query=%7B__name__%3D%22{name}%22%7D%5B{window}s%5D&time={}",
                (end + 1) as f64 / 1000.0
            ),
        );
        let mut got: Vec<(i64, u64)> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(points)
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got.len(), expected.len(), "{name}");
        assert!(got == expected, "{name}: values differ");
        total += got.len();
    }
    assert_eq!(total, 1_871_927);
}
