//! Offline collection, pulled later: federation, remote read and export with a cursor, against
//! Perch itself and (ignored tests) a real Prometheus 2.42 on the other side.

use crate::support::{
    free_port, perch_import, raw_request, temp_dir, wait_until, Fixture, Perch, Prometheus,
};
use perch::web::remote_read::{pb, xor};
use prost::Message;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// First timestamp of the generated history (ms) and its step.
const T0: i64 = 1_700_000_000_000;
const STEP: i64 = 15_000;

/// Series text → samples (t ms, value bits).
type Samples = BTreeMap<String, Vec<(i64, u64)>>;

/// A synthetic history: four series over `n` steps from `from`, values that exercise the codecs.
fn history(from: usize, n: usize) -> (String, Samples) {
    let mut text = String::new();
    let mut want = Samples::new();
    let series: [(&str, &str); 4] = [
        ("temp_celsius", "temp_celsius{room=\"a\"}"),
        ("temp_celsius", "temp_celsius{room=\"b\"}"),
        ("pulses_total", "pulses_total"),
        ("odd_ratio", "odd_ratio{kind=\"x\"}"),
    ];
    let mut last_family = "";
    for (k, (family, s)) in series.iter().enumerate() {
        if *family != last_family {
            text.push_str(&format!("# TYPE {family} unknown\n"));
            last_family = family;
        }
        for i in from..from + n {
            let t = T0 + i as i64 * STEP;
            let v = match k {
                0 => 20.0 + (i % 40) as f64 * 0.1,
                1 => 18.5 - (i % 13) as f64 * 0.25,
                2 => (i * 7) as f64,
                _ => 1.0 / (1 + i % 9) as f64,
            };
            text.push_str(&format!("{s} {v:?} {}.{:03}\n", t / 1000, t % 1000));
            want.entry(s.to_string())
                .or_default()
                .push((t, v.to_bits()));
        }
    }
    text.push_str("# EOF\n");
    (text, want)
}

/// `perch import` of `text` into `dir/data`.
fn import(dir: &Path, name: &str, text: &str) {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    perch_import(&f, &dir.join("data"), &[]);
}

/// The samples of an OpenMetrics export body, by series text.
fn parse_openmetrics(body: &str, into: &mut Samples) {
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics document ends with # EOF"
    );
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.rsplitn(3, ' ');
        let (ts, v, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
        let t = secs.parse::<i64>().unwrap() * 1000 + format!("{frac:0<3}").parse::<i64>().unwrap();
        let v: f64 = match v {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        into.entry(s.to_owned()).or_default().push((t, v.to_bits()));
    }
}

/// Calls the export with `cursor` until it says there is no more; returns the samples, the
/// final cursor and the number of pages.
fn export_all(port: u16, cursor: Option<&str>, extra: &str) -> (Samples, String, usize) {
    let mut got = Samples::new();
    let mut cursor = cursor.map(str::to_owned);
    let mut pages = 0;
    loop {
        let mut path = format!("/api/v1/export?{extra}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = raw_request(port, "GET", &path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        parse_openmetrics(&r.text(), &mut got);
        pages += 1;
        let next = r.header("perch-export-cursor").unwrap().to_owned();
        let more = r.header("perch-export-more").unwrap() == "true";
        cursor = Some(next.clone());
        if !more {
            return (got, next, pages);
        }
    }
}

#[test]
fn export_pages_with_a_cursor_that_survives_a_restart() {
    let dir = temp_dir("export-cursor");
    // Four imports, four records: pages end at record boundaries.
    let mut want = Samples::new();
    for part in 0..4 {
        let (text, w) = history(part * 120, 120);
        import(&dir, &format!("part{part}.om"), &text);
        for (k, v) in w {
            want.entry(k).or_default().extend(v);
        }
    }
    let perch = Perch::start_in(dir, Some(""), &[]);
    // Small pages: several calls; together every sample once, bit for bit.
    let (got, cursor, pages) = export_all(perch.port, None, "limit=500");
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(got, want);
    // A streamed answer's size is counted as sent (it was 0 while the body was streamed).
    let size_sum = |port: u16| -> f64 {
        let m = raw_request(port, "GET", "/metrics", &[], b"").text();
        m.lines()
            .find_map(|l| l.strip_prefix("perch_http_response_size_bytes_sum{handler=\"export\"} "))
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let before = size_sum(perch.port);
    let page = raw_request(perch.port, "GET", "/api/v1/export?limit=500", &[], b"");
    assert!(page.body.len() > 1000);
    assert_eq!(size_sum(perch.port) - before, page.body.len() as f64);
    // Nothing new since: an empty document, the same cursor.
    let (got, again, _) = export_all(perch.port, Some(&cursor), "");
    assert!(got.is_empty());
    assert_eq!(again, cursor);
    // Restart with more history imported meanwhile: the old cursor gives exactly the new part.
    let (_, dir) = perch.stop();
    let (text, want_more) = history(480, 240);
    import(&dir, "second.om", &text);
    let perch = Perch::start_in(dir, Some(""), &[]);
    let (got, _, _) = export_all(perch.port, Some(&cursor), "");
    assert_eq!(got, want_more);
    // Matchers and a time range narrow it.
    let end = (T0 + 99 * STEP) as f64 / 1000.0;
    let (got, _, _) = export_all(
        perch.port,
        None,
        &format!(
            "match[]=temp_celsius%7Broom%3D%22a%22%7D&start={}&end={end}",
            T0 / 1000
        ),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got["temp_celsius{room=\"a\"}"].len(), 100);
    // Bad parameters are the API's bad_data errors.
    for bad in ["cursor=x-1", "limit=0", "match[]=%7B", "start=2&end=1"] {
        let (s, b) = perch.get(&format!("/api/v1/export?{bad}"));
        assert_eq!(s, 400, "{bad}: {b}");
        assert!(b.contains("\"errorType\":\"bad_data\""), "{b}");
    }
    // gzip when asked, like every API answer.
    let r = raw_request(
        perch.port,
        "GET",
        "/api/v1/export",
        &[("Accept-Encoding", "gzip")],
        b"",
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut text)
        .unwrap();
    let mut got = Samples::new();
    parse_openmetrics(&text, &mut got);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 4 * 720);
}

#[test]
fn an_export_loads_back_with_perch_import() {
    let dir = temp_dir("export-reimport");
    let (text, want) = history(0, 300);
    import(&dir, "h.om", &text);
    let perch = Perch::start_in(dir, Some(""), &[]);
    let r = raw_request(perch.port, "GET", "/api/v1/export", &[], b"");
    assert_eq!(r.status, 200);
    let second = temp_dir("export-reimport-2");
    import(&second, "export.om", &r.text());
    let copy = Perch::start_in(second, Some(""), &[]);
    let (got, _, _) = export_all(copy.port, None, "");
    assert_eq!(got, want);
}

fn read_request(queries: Vec<pb::Query>, types: Vec<i32>) -> Vec<u8> {
    let req = pb::ReadRequest {
        queries,
        accepted_response_types: types,
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn query(matchers: &[(i32, &str, &str)], start: i64, end: i64) -> pb::Query {
    pb::Query {
        start_timestamp_ms: start,
        end_timestamp_ms: end,
        matchers: matchers
            .iter()
            .map(|(t, n, v)| pb::LabelMatcher {
                r#type: *t,
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        hints: None,
    }
}

fn series_text(labels: &[pb::Label]) -> String {
    let name = labels.iter().find(|l| l.name == "__name__").unwrap();
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != "__name__")
        .map(|l| format!("{}=\"{}\"", l.name, l.value))
        .collect();
    if rest.is_empty() {
        name.value.clone()
    } else {
        format!("{}{{{}}}", name.value, rest.join(","))
    }
}

const READ_HEADERS: &[(&str, &str)] = &[
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
    ("X-Prometheus-Remote-Read-Version", "0.1.0"),
];

#[test]
fn remote_read_answers_samples_and_streamed_chunks() {
    let dir = temp_dir("remote-read");
    let (text, want) = history(0, 480);
    import(&dir, "h.om", &text);
    let config = "global:\n  external_labels:\n    site: greenhouse\n";
    let perch = Perch::start_in(dir, Some(config), &[]);
    let end = T0 + 480 * STEP;
    let all = query(&[(2, "__name__", ".+"), (0, "site", "greenhouse")], T0, end);
    // The external label's equality matcher means "absent here, added on the way out".
    let with_ext: Samples = want.clone();

    // SAMPLES.
    let body = read_request(
        vec![all.clone(), query(&[(0, "__name__", "nope")], T0, end)],
        vec![],
    );
    let r = raw_request(perch.port, "POST", "/api/v1/read", READ_HEADERS, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(r.header("content-encoding"), Some("snappy"));
    let resp =
        pb::ReadResponse::decode(&snap::raw::Decoder::new().decompress_vec(&r.body).unwrap()[..])
            .unwrap();
    assert_eq!(resp.results.len(), 2);
    assert!(resp.results[1].timeseries.is_empty());
    let mut got = Samples::new();
    for ts in &resp.results[0].timeseries {
        assert!(ts
            .labels
            .iter()
            .any(|l| l.name == "site" && l.value == "greenhouse"));
        let labels: Vec<pb::Label> = ts
            .labels
            .iter()
            .filter(|l| l.name != "site")
            .cloned()
            .collect();
        got.insert(
            series_text(&labels),
            ts.samples
                .iter()
                .map(|s| (s.timestamp, s.value.to_bits()))
                .collect(),
        );
    }
    assert_eq!(got, with_ext);

    // STREAMED_XOR_CHUNKS: frames with a CRC-32C, one series each, XOR chunks of ≤ 120.
    let body = read_request(vec![all], vec![1, 0]);
    let r = raw_request(perch.port, "POST", "/api/v1/read", READ_HEADERS, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse")
    );
    assert_eq!(r.header("content-encoding"), None);
    let mut rest = &r.body[..];
    let mut got = Samples::new();
    while !rest.is_empty() {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = rest[0];
            rest = &rest[1..];
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let crc = u32::from_be_bytes(rest[..4].try_into().unwrap());
        let data = &rest[4..4 + len];
        assert_eq!(crc32c::crc32c(data), crc, "frame checksum");
        rest = &rest[4 + len..];
        let msg = pb::ChunkedReadResponse::decode(data).unwrap();
        assert_eq!(msg.chunked_series.len(), 1);
        let s = &msg.chunked_series[0];
        let labels: Vec<pb::Label> = s
            .labels
            .iter()
            .filter(|l| l.name != "site")
            .cloned()
            .collect();
        let e = got.entry(series_text(&labels)).or_default();
        for c in &s.chunks {
            assert_eq!(c.r#type, 1);
            let samples = xor::decode(&c.data).unwrap();
            assert!(samples.len() <= 120);
            assert_eq!(samples[0].t, c.min_time_ms);
            assert_eq!(samples.last().unwrap().t, c.max_time_ms);
            e.extend(samples.iter().map(|s| (s.t, s.v.to_bits())));
        }
    }
    assert_eq!(got, with_ext);

    // Errors: not snappy; only unknown response types.
    let r = raw_request(perch.port, "POST", "/api/v1/read", READ_HEADERS, b"garbage");
    assert_eq!(r.status, 400);
    let body = read_request(vec![query(&[(0, "__name__", "up")], 0, 1)], vec![7]);
    let r = raw_request(perch.port, "POST", "/api/v1/read", READ_HEADERS, &body);
    assert_eq!(r.status, 400);
    assert!(r
        .text()
        .contains("does not support any of the requested response types"));
}

#[test]
fn federate_serves_the_newest_sample_of_each_series() {
    let target = Fixture::start(vec![
        b"# TYPE a_metric gauge\na_metric{x=\"1\"} 1\na_metric{x=\"2\"} 2.5\nb_metric 1e-05\n"
            .to_vec(),
    ]);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    site: greenhouse\nscrape_configs:\n  - job_name: fx\n    static_configs:\n      - targets: [\"{}\"]\n",
        target.addr
    );
    let perch = Perch::start("federate", Some(&config));
    wait_until(Duration::from_secs(20), || {
        perch
            .get("/api/v1/query?query=b_metric")
            .1
            .contains("1e-05")
            || perch
                .get("/api/v1/query?query=b_metric")
                .1
                .contains("0.00001")
    });
    // Two selectors that overlap: each series once, families by name.
    let (s, body) =
        perch.get("/federate?match[]=a_metric&match[]=%7B__name__%3D~%22a_metric%7Cb_metric%22%7D");
    assert_eq!(s, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5, "{body}");
    assert_eq!(lines[0], "# TYPE a_metric untyped");
    let inst = &target.addr;
    let prefix =
        format!("a_metric{{instance=\"{inst}\",job=\"fx\",x=\"1\",site=\"greenhouse\"}} 1 ");
    assert!(lines[1].starts_with(&prefix), "{}", lines[1]);
    assert!(
        lines[2].contains("x=\"2\"") && lines[2].contains("} 2.5 "),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "# TYPE b_metric untyped");
    assert!(lines[4].contains("} 1e-05 "), "{}", lines[4]);
    let ts: i64 = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ts > 1_600_000_000_000, "a millisecond timestamp: {ts}");
    // No match[]: an empty answer; a bad one: 400.
    assert_eq!(perch.get("/federate"), (200, String::new()));
    assert_eq!(perch.get("/federate?match[]=%7B").0, 400);
    // Delimited protobuf when asked.
    let r = raw_request(
        perch.port,
        "GET",
        "/federate?match[]=b_metric",
        &[(
            "Accept",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3",
        )],
        b"",
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("encoding=delimited"));
    assert!(r.body.len() > 10 && r.body[0] as usize == r.body.len() - 1);
}

fn json(port: u16, path: &str) -> Value {
    let r = raw_request(port, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Asserts that `query_range` of `q` over (start, end, step) in seconds has data at Perch and
/// agrees between Prometheus (on `theirs`) and Perch (on `ours`).
fn same_range(theirs: u16, ours: u16, q: &str, (start, end, step): (f64, f64, f64)) {
    let enc: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
    let path = format!("/api/v1/query_range?query={enc}&start={start}&end={end}&step={step}");
    let t = json(theirs, &path);
    let o = json(ours, &path);
    assert!(
        !o["data"]["result"].as_array().unwrap().is_empty(),
        "{q}: no data"
    );
    assert!(
        same_data(&t["data"], &o["data"]),
        "{q}:\n{}\n{}",
        t["data"],
        o["data"]
    );
}

/// Whether two API `data` objects agree: the same series and timestamps, values equal or
/// within a relative 1e-12 (Perch sums as Prometheus 3.x does, with compensation; 2.42 sums
/// plainly, so the last digits of an aggregation may differ).
fn same_data(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) if x != y => {
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_data(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_data(v, w)))
        }
        (x, y) => x == y,
    }
}

#[test]
#[ignore = "needs prometheus (Debian's prometheus 2.42)"]
fn a_real_prometheus_federates_from_perch() {
    let target = Fixture::start(vec![
        b"a_metric{x=\"1\"} 1\na_metric{x=\"2\"} 2.5\nb_metric 1e-05\n".to_vec(),
    ]);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    site: greenhouse\nscrape_configs:\n  - job_name: fx\n    static_configs:\n      - targets: [\"{}\"]\n",
        target.addr
    );
    let perch = Perch::start("federate-live", Some(&config));
    let prom = Prometheus::start(
        "federate-prom",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: federate\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['{{job=\"fx\"}}']\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            perch.port
        ),
        &[],
    );
    let q = "/api/v1/query?query=%7Bjob%3D%22fx%22%7D";
    wait_until(Duration::from_secs(30), || {
        json(prom.port, q)["data"]["result"]
            .as_array()
            .unwrap()
            .len()
            >= 7
    });
    // The same series (with Perch's external label) and values on both sides.
    let set = |v: Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut m = r["metric"].as_object().unwrap().clone();
                m.insert("site".into(), Value::String("greenhouse".into()));
                (
                    Value::Object(m).to_string(),
                    r["value"][1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let theirs = set(json(prom.port, q));
    let ours = set(json(perch.port, q));
    // `up` and the scrape series change every scrape; compare the fixture's series exactly
    // and the rest by name.
    let fixed = |v: &Vec<(String, String)>| -> Vec<(String, String)> {
        v.iter()
            .filter(|(m, _)| m.contains("_metric"))
            .cloned()
            .collect()
    };
    assert_eq!(fixed(&theirs), fixed(&ours));
    let names =
        |v: &Vec<(String, String)>| -> Vec<String> { v.iter().map(|x| x.0.clone()).collect() };
    assert_eq!(names(&theirs), names(&ours));
    assert!(theirs
        .iter()
        .all(|(m, _)| m.contains("\"site\":\"greenhouse\"")));
}

#[test]
#[ignore = "needs prometheus (Debian's prometheus 2.42)"]
fn a_real_prometheus_remote_reads_perch_history() {
    let dir = temp_dir("remote-read-live");
    let (text, _) = history(0, 480);
    import(&dir, "h.om", &text);
    let perch = Perch::start_in(dir, Some(""), &[]);
    let prom = Prometheus::start(
        "remote-read-prom",
        &format!(
            "remote_read:\n  - url: http://127.0.0.1:{}/api/v1/read\n    read_recent: true\n",
            perch.port
        ),
        &[],
    );
    let (start, end) = (T0 / 1000, (T0 + 479 * STEP) / 1000);
    for q in [
        "temp_celsius",
        "rate(pulses_total[5m])",
        "sum by (room) (temp_celsius)",
        "max_over_time(odd_ratio[10m])",
        "avg(temp_celsius) - min(temp_celsius)",
    ] {
        same_range(prom.port, perch.port, q, (start as f64, end as f64, 60.0));
    }
}

#[test]
#[ignore = "needs prometheus, promtool (Debian's prometheus 2.42) and ../shared"]
fn the_exported_recording_loads_into_prometheus_with_promtool() {
    let recording = crate::support::data_dir().join("../../../shared/data/node-1s.om.zst");
    assert!(recording.exists(), "needs ../shared/data/node-1s.om.zst");
    let dir = temp_dir("export-recording");
    perch_import(
        &recording,
        &dir.join("data"),
        &["--storage.tsdb.retention.time", "100y"],
    );
    let perch = Perch::start_in(dir, Some(""), &["--storage.tsdb.retention.time", "100y"]);
    let r = raw_request(perch.port, "GET", "/api/v1/export?limit=10000000", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("perch-export-more"), Some("false"));
    let text = r.text();
    let prom = Prometheus::with_openmetrics("export-recording-prom", &text);
    // The recording's last ten minutes.
    let end = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
        .floor();
    let start = end - 600.0;
    for q in [
        "count({__name__=~\".+\"})",
        "sum(rate(node_cpu_seconds_total[1m]))",
        "node_memory_MemAvailable_bytes",
        "sum by (device) (rate(node_network_receive_bytes_total[5m]))",
        "max_over_time(node_load1[2m])",
    ] {
        same_range(prom.port, perch.port, q, (start, end, 15.0));
    }
}

/// The samples of `query` (a range selector) at `at_s`, by series text, from an API.
fn raw_samples(port: u16, query: &str, at_s: f64) -> BTreeMap<String, Vec<(i64, String)>> {
    let enc: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let v = json(port, &format!("/api/v1/query?query={enc}&time={at_s}"));
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().unwrap() {
        let mut m = r["metric"].as_object().unwrap().clone();
        m.remove("site");
        let key = Value::Object(m).to_string();
        let points: Vec<(i64, String)> = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.insert(key, points);
    }
    out
}

fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A sender Perch scraping a counter every second and pushing to `url`; the receiver is
/// stopped for a while, the sender restarted during the outage, the receiver started again.
/// Then the receiver must hold every sample the sender stored up to a cut-off, once.
fn outage_scenario(url: &str, receiver_port: u16, stop: &mut dyn FnMut(), start: &mut dyn FnMut()) {
    let target = Fixture::serve("text/plain; version=0.0.4", false, |n| {
        format!("# TYPE pushed_total counter\npushed_total {n}\n").into_bytes()
    });
    let config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    site: greenhouse\nscrape_configs:\n  - job_name: fx\n    static_configs:\n      - targets: [\"{}\"]\nremote_write:\n  - url: {url}\n    name: central\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n      capacity: 20\n      max_samples_per_send: 10\n      backfill_samples_per_second: 100000\n",
        target.addr
    );
    let dir = temp_dir("push-sender");
    let flags = ["--storage.flush-interval", "1s"];
    let sender = Perch::start_in(dir, Some(&config), &flags);
    std::thread::sleep(Duration::from_secs(4));
    stop();
    std::thread::sleep(Duration::from_secs(5));
    // Restarted in the middle of the outage.
    let (code, dir) = sender.stop();
    assert_eq!(code, Some(0));
    let sender = Perch::start_in(dir, Some(&config), &flags);
    std::thread::sleep(Duration::from_secs(5));
    start();
    // Caught up: nothing pending, nothing queued beyond live traffic.
    wait_until(Duration::from_secs(60), || {
        let (_, m) = sender.get("/metrics");
        m.lines()
            .any(|l| l.starts_with("perch_remote_write_pending_bytes{") && l.ends_with(" 0"))
            && m.lines().any(|l| {
                l.starts_with("perch_remote_write_samples_sent_total{")
                    && l.contains("backfill")
                    && !l.ends_with(" 0")
            })
    });
    std::thread::sleep(Duration::from_secs(3));
    // Everything stored up to a few seconds ago, on both sides.
    let cut = unix_now_s() - 4.0;
    // Wider than the test: no sample sits on the window's left edge (2.42 and 3.x differ there).
    let q = "{job=\"fx\"}[30m]";
    let ours = raw_samples(sender.port, q, cut);
    // The wait above can end before the epoch holding the outage's last samples is classified
    // (it needs its flush first); on a loaded machine its backfill then lands a little later.
    // Up to 30 s more, then the comparison below says what differs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut theirs = raw_samples(receiver_port, q, cut);
    while theirs != ours && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        theirs = raw_samples(receiver_port, q, cut);
    }
    assert!(ours.len() >= 5, "{ours:?}");
    let total: usize = ours.values().map(Vec::len).sum();
    assert!(total > 5 * 15, "{total} samples");
    for (series, samples) in &ours {
        let got = theirs.get(series).cloned().unwrap_or_default();
        assert_eq!(&got, samples, "{series}: receiver differs");
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn remote_write_catches_up_after_an_outage_and_a_restart() {
    // The receiver is a second Perch (its remote-write endpoint accepts older data).
    let dir = temp_dir("push-receiver");
    let port = free_port();
    let receiver = RefCell::new(Some(Perch::start_on(port, dir, Some(""), &[])));
    let saved: RefCell<Option<std::path::PathBuf>> = RefCell::new(None);
    let url = format!("http://127.0.0.1:{port}/api/v1/write");
    let mut stop = || {
        let p = receiver.borrow_mut().take().unwrap();
        let (_, dir) = p.stop();
        *saved.borrow_mut() = Some(dir);
    };
    let mut start = || {
        let dir = saved.borrow_mut().take().unwrap();
        *receiver.borrow_mut() = Some(Perch::start_on(port, dir, Some(""), &[]));
    };
    outage_scenario(&url, port, &mut stop, &mut start);
}

#[test]
#[ignore = "needs prometheus (Debian's prometheus 2.42)"]
fn remote_write_to_a_real_prometheus_survives_an_outage_and_a_restart() {
    let flags = ["--web.enable-remote-write-receiver"];
    let prom = RefCell::new(Prometheus::start(
        "push-prom",
        "storage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
        &flags,
    ));
    let port = prom.borrow().port;
    let url = format!("http://127.0.0.1:{port}/api/v1/write");
    let mut stop = || prom.borrow_mut().kill();
    let mut start = || prom.borrow_mut().restart(&flags);
    outage_scenario(&url, port, &mut stop, &mut start);
}
