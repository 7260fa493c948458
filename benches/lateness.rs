//! Scrape lateness under query load: how late scrapes start while heavy queries run.
//!
//! `cargo bench --bench lateness` starts the release binary (built by cargo for the bench) with
//! two jobs scraped every second: a one-series fixture and a target of 20k counters. After about
//! ten seconds of data it runs a heavy range query (`sum by (g) (rate(...[30s]))` over every big
//! series, the whole stretch, a 10 ms step) back to back from two clients for 30 s, then prints
//! the distribution of `perch_scrape_lateness_seconds` over that phase (p50/p90/p99 interpolated
//! within the buckets as `histogram_quantile` does, the largest bucket reached, the count), and
//! over the quiet warm-up for comparison. The store flushes every 10 s, so flushes of the 20k
//! series fall in both phases. The goal (issue 5): p99 under 100 ms.
//!
//! Options (after `--`): `--series N` sets the big target's size, `--fixture-ms M` the
//! fixture's scrape interval (a short one samples more moments of the big target's ingestion),
//! `--quiet-scrapes K` how many scrapes of the big target the quiet phase waits for (11), and
//! `--no-load` ends after the quiet phase. The scrape path at 100k series, alone:
//! `cargo bench --bench lateness -- --series 100000 --fixture-ms 100 --quiet-scrapes 60 --no-load`.
//! `--ingest-samples N` adds a client that, during the quiet phase, posts a request of N
//! samples (series of 100 samples) every 3 s, alternately a remote write and a gzip-compressed
//! text import; each request's time is printed:
//! `cargo bench --bench lateness -- --series 1000 --fixture-ms 100 --quiet-scrapes 30 --no-load --ingest-samples 1000000`.
//! `--retention-size SIZE` gives Perch `--storage.tsdb.retention.size` (a small one makes
//! flushes start new segments and delete old ones). `--endpoints` then requests each read
//! endpoint over the whole store three times, one endpoint after the other, and prints each
//! one's time and the lateness of the scrapes meanwhile (`--only SUBSTR`: only the paths that
//! contain it):
//! `cargo bench --bench lateness -- --series 100000 --fixture-ms 100 --quiet-scrapes 25 --no-load --endpoints`.

// The integration tests' harness: the fixture target, the real binary, the HTTP client.
#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{temp_dir, try_raw_request, wait_until, Fixture, Perch};

/// The big target's size unless `--series` says otherwise.
const BIG_SERIES: usize = 20_000;
const GROUPS: usize = 20;
const LOAD: Duration = Duration::from_secs(30);
const CLIENTS: usize = 2;
const QUERY: &str = r#"sum by (g) (rate({__name__=~"big.*"}[30s]))"#;
const STEP: f64 = 0.01;
/// Shorter than the run, so that flushes (which share the executor, in slices) fall in both
/// phases, as they would in a longer run at the default 60 s.
const FLUSH_INTERVAL: &str = "10s";

/// The command line after `--`.
struct Options {
    series: usize,
    fixture_ms: u64,
    quiet_scrapes: usize,
    load: bool,
    ingest_samples: usize,
    endpoints: bool,
    /// `--storage.tsdb.retention.size` for Perch, if given.
    retention_size: Option<String>,
    /// With `--endpoints`, only the paths containing this.
    only: Option<String>,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            series: BIG_SERIES,
            fixture_ms: 1000,
            quiet_scrapes: 11,
            load: true,
            ingest_samples: 0,
            endpoints: false,
            retention_size: None,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut number = |what: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what} takes a number"))
            };
            match a.as_str() {
                "--series" => o.series = number("--series") as usize,
                "--fixture-ms" => o.fixture_ms = number("--fixture-ms").max(1),
                "--quiet-scrapes" => o.quiet_scrapes = number("--quiet-scrapes") as usize,
                "--no-load" => o.load = false,
                "--endpoints" => o.endpoints = true,
                "--ingest-samples" => o.ingest_samples = number("--ingest-samples") as usize,
                "--retention-size" => o.retention_size = args.next(),
                "--only" => o.only = args.next(),
                // cargo bench passes `--bench`.
                "--bench" => {}
                other => panic!("unknown option {other}"),
            }
        }
        o
    }
}

fn big_body(series: usize, n: usize) -> String {
    let mut body = String::with_capacity(series * 48);
    body.push_str("# TYPE big_requests_total counter\n");
    for i in 0..series {
        let v = n * (i % 7 + 1);
        body.push_str(&format!(
            "big_requests_total{{g=\"{}\",i=\"{i}\"}} {v}\n",
            i % GROUPS
        ));
    }
    body
}

/// One request with a long read timeout (the heavy queries take seconds); status and body.
fn request(port: u16, method: &str, path: &str, form: &str) -> std::io::Result<(u16, String)> {
    let headers: &[(&str, &str)] = if method == "POST" {
        &[("Content-Type", "application/x-www-form-urlencoded")]
    } else {
        &[]
    };
    let r = try_raw_request(
        port,
        method,
        path,
        headers,
        form.as_bytes(),
        Duration::from_secs(120),
    )?;
    Ok((r.status, r.text()))
}

/// Series of 100 samples a second apart, ending now, `n` samples in all, under `name`.
fn ingest_series(n: usize, name: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    let end = (unix_now() * 1000.0) as i64;
    (0..n.div_ceil(100))
        .map(|i| {
            let samples = (0..100)
                .map(|k| (end - (100 - k) * 1000, (i * 7 + k as usize) as f64 * 0.5))
                .collect();
            (format!("{name}_{}", i % 50), samples)
        })
        .enumerate()
        .map(|(i, (metric, s))| (format!("{metric}{{i=\"{i}\"}}"), s))
        .collect()
}

/// A remote-write body (snappy block of a `WriteRequest`) of `n` samples.
fn remote_write_body(n: usize) -> Vec<u8> {
    use perch::remote::pb;
    use prost::Message;
    let timeseries = ingest_series(n, "rw")
        .into_iter()
        .map(|(series, samples)| {
            let (name, rest) = series.split_once('{').unwrap();
            let i = rest.trim_start_matches("i=\"").trim_end_matches("\"}");
            let label = |n: &str, v: &str| pb::Label {
                name: n.into(),
                value: v.into(),
            };
            let samples = samples
                .into_iter()
                .map(|(t, v)| pb::Sample {
                    value: v,
                    timestamp: t,
                })
                .collect();
            pb::TimeSeries::new(vec![label("__name__", name), label("i", i)], samples)
        })
        .collect();
    let req = pb::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

/// A gzip-compressed text import of `n` samples with timestamps.
fn import_body(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut text = String::new();
    for (series, samples) in ingest_series(n, "imp") {
        for (t, v) in samples {
            text.push_str(&format!("{series} {v} {t}\n"));
        }
    }
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(text.as_bytes()).unwrap();
    z.finish().unwrap()
}

/// Posts a request of `n` samples every 3 s until `stop`, alternating remote write and import.
fn ingest_client(port: u16, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut k = 0;
        while !stop.load(Ordering::SeqCst) {
            let (path, headers, body): (&str, &[(&str, &str)], Vec<u8>) = if k % 2 == 0 {
                let h: &[(&str, &str)] = &[
                    ("Content-Encoding", "snappy"),
                    ("Content-Type", "application/x-protobuf"),
                    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                ];
                ("/api/v1/write", h, remote_write_body(n))
            } else {
                let h: &[(&str, &str)] = &[("Content-Encoding", "gzip")];
                ("/api/v1/import/prometheus", h, import_body(n))
            };
            let t = Instant::now();
            let r = try_raw_request(port, "POST", path, headers, &body, Duration::from_secs(120))
                .expect("ingest request");
            println!(
                "  POST {path}: {n} samples, {} bytes, status {} in {:.2?}",
                body.len(),
                r.status,
                t.elapsed()
            );
            assert_eq!(r.status, 204, "{}", r.text());
            k += 1;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The cumulative buckets of `perch_scrape_lateness_seconds`: (upper bound, count), `+Inf` last.
fn buckets(metrics: &str) -> Vec<(f64, u64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("perch_scrape_lateness_seconds_bucket{le=\""))
        .map(|rest| {
            let (le, count) = rest.split_once("\"} ").expect("bucket line");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("bucket bound")
            };
            (le, count.parse().expect("bucket count"))
        })
        .collect()
}

fn lateness_sum(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("perch_scrape_lateness_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `histogram_quantile(q, …)` over cumulative buckets: linear within the bucket of the rank; in
/// `+Inf`, the largest finite bound.
fn quantile(q: f64, b: &[(f64, u64)]) -> f64 {
    let total = b.last().map_or(0, |x| x.1);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, c) in b {
        if c as f64 >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let in_bucket = (c - prev.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1 as f64) / in_bucket
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, c);
    }
    prev.0
}

fn report(name: &str, before: &str, after: &str) {
    let (b0, b1) = (buckets(before), buckets(after));
    let d: Vec<(f64, u64)> = b1.iter().zip(&b0).map(|(a, b)| (a.0, a.1 - b.1)).collect();
    let count = d.last().map_or(0, |x| x.1);
    let sum = lateness_sum(after) - lateness_sum(before);
    // The largest observation lies in the first bucket holding every observation.
    let max_le = d.iter().find(|x| x.1 == count).map_or(f64::NAN, |x| x.0);
    let lower = d.iter().rev().find(|x| x.1 < count).map_or(0.0, |x| x.0);
    let ms = |s: f64| s * 1000.0;
    println!(
        "{name}: {count} scrapes, lateness p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max in ({:.0} ms, {:.0} ms], mean {:.2} ms",
        ms(quantile(0.5, &d)),
        ms(quantile(0.9, &d)),
        ms(quantile(0.99, &d)),
        ms(lower),
        ms(max_le),
        ms(sum / count.max(1) as f64),
    );
    let line: Vec<String> = d
        .iter()
        .map(|(le, c)| {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                format!("{le}")
            };
            format!("le={le}:{c}")
        })
        .collect();
    println!("  buckets (cumulative): {}", line.join(" "));
}

fn main() {
    let opts = Options::parse();
    let series = opts.series;
    let fixture = Fixture::serve("text/plain; version=0.0.4", false, |_| {
        b"lateness_fixture_value 1\n".to_vec()
    });
    let big = Fixture::serve("text/plain; version=0.0.4", false, move |n| {
        big_body(series, n).into_bytes()
    });
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fixture\n    scrape_interval: {}ms\n    scrape_timeout: {}ms\n    static_configs:\n      - targets: [\"{}\"]\n  - job_name: big\n    static_configs:\n      - targets: [\"{}\"]\n",
        opts.fixture_ms, opts.fixture_ms, fixture.addr, big.addr
    );
    let data_start = unix_now();
    // Started from the release binary cargo builds for the bench; ready when this returns.
    let mut flags = vec!["--storage.flush-interval", FLUSH_INTERVAL];
    if let Some(size) = &opts.retention_size {
        flags.extend(["--storage.tsdb.retention.size", size]);
    }
    let perch = Perch::start_in(temp_dir("lateness-bench"), Some(&config), &flags);
    let port = perch.port;
    println!(
        "{} on :{port}: a fixture every {} ms and a target of {series} series every 1 s",
        env!("CARGO_BIN_EXE_perch"),
        opts.fixture_ms
    );
    let metrics = || {
        request(port, "GET", "/metrics", "")
            .expect("GET /metrics")
            .1
    };
    let start_metrics = metrics();
    let quiet_scrapes = opts.quiet_scrapes;
    let stop_ingest = Arc::new(AtomicBool::new(false));
    let ingest = (opts.ingest_samples > 0)
        .then(|| ingest_client(port, opts.ingest_samples, stop_ingest.clone()));
    wait_until(Duration::from_secs(quiet_scrapes as u64 * 3 + 60), || {
        big.hits.load(Ordering::SeqCst) >= quiet_scrapes
    });
    stop_ingest.store(true, Ordering::SeqCst);
    if let Some(c) = ingest {
        c.join().unwrap();
    }
    let quiet = metrics();
    report("quiet (warm-up, no queries)", &start_metrics, &quiet);
    if opts.endpoints {
        let now = unix_now();
        let all = "match[]=%7B__name__%3D~%22.%2B%22%7D";
        let range = format!("start={:.3}&end={now:.3}", now - 12.0);
        for path in [
            "/api/v1/status/tsdb".to_owned(),
            format!("/api/v1/series?{all}"),
            format!("/api/v1/series?{all}&{range}"),
            "/api/v1/labels".to_owned(),
            "/api/v1/label/i/values".to_owned(),
            format!("/api/v1/label/i/values?{range}"),
            format!("/federate?{all}"),
            format!("/api/v1/export?{all}&limit=1000000"),
            format!("/api/v1/query?query=count(big_requests_total)&time={now:.3}"),
            format!(
                "/api/v1/query_range?query=sum%20by%20(g)(rate(big_requests_total%5B5s%5D))&{range}&step=1"
            ),
            // Every series at every step: the answer's points turned into series.
            format!("/api/v1/query_range?query=big_requests_total&{range}&step=1"),
        ] {
            if opts.only.as_ref().is_some_and(|o| !path.contains(o.as_str())) {
                continue;
            }
            let before = metrics();
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..3 {
                let t = Instant::now();
                let (status, body) = request(port, "GET", &path, "").expect("GET");
                assert_eq!(status, 200, "{path}: {}", &body[..body.len().min(300)]);
                times.push(t.elapsed());
                bytes = body.len();
            }
            times.sort();
            report(
                &format!("{path} ({bytes} B, median {:.1?})", times[1]),
                &before,
                &metrics(),
            );
        }
        // The store's own appends hold the thread too (its syncs run on the fsync thread).
        for line in metrics().lines() {
            if line.starts_with("perch_storage_write_seconds")
                || line.starts_with("perch_storage_fsync_thread_seconds")
            {
                println!("  {line}");
            }
        }
    }
    if !opts.load {
        return;
    }

    let end = unix_now();
    let q: String = form_urlencoded::byte_serialize(QUERY.as_bytes()).collect();
    let form = format!("query={q}&start={data_start:.3}&end={end:.3}&step={STEP}");
    println!(
        "load: {CLIENTS} clients running `{QUERY}` over {:.0} s at a {STEP} s step ({} steps), back to back for {LOAD:?}",
        end - data_start,
        ((end - data_start) / STEP) as u64
    );
    let hits0 = fixture.hits.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (form, stop) = (form.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let (s, b) =
                        request(port, "POST", "/api/v1/query_range", &form).expect("query");
                    assert_eq!(s, 200, "{}", &b[..b.len().min(300)]);
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    std::thread::sleep(LOAD);
    stop.store(true, Ordering::SeqCst);
    let mut times: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let loaded = metrics();
    let elapsed = load_start.elapsed();
    let fixture_scrapes = fixture.hits.load(Ordering::SeqCst) - hits0;
    times.sort();
    println!(
        "{} queries in {elapsed:.1?}: median {:.2?}, slowest {:.2?}; the 1 s fixture was scraped {fixture_scrapes} times",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    report("under query load", &quiet, &loaded);
}
