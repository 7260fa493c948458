//! The HTTP API as Grafana and scripts use it: every request of Grafana's Prometheus data source
//! (tests/data/grafana/requests.tsv, from ../shared/grafana/REQUESTS.md) with POST and GET,
//! checked against the JSON shapes Grafana reads; Prometheus's errors, methods and codes;
//! gzip, CORS, lifecycle and admin endpoints; and (ignored, needs promtool) promtool's answers
//! against Perch and Prometheus 2.42 over the same data.

use crate::support::{data_dir, wait_until, Fixture, Perch};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The fixture's node-exporter-like series at `t` ms, with values that grow with `i`.
fn node_body(i: u64, t: u64) -> Vec<u8> {
    let l = r#"instance="127.0.0.1:19100",job="node""#;
    let mut s = String::new();
    for (mode, v) in [("idle", 1000), ("user", 200), ("system", 100)] {
        s.push_str(&format!(
            "node_cpu_seconds_total{{cpu=\"0\",mode=\"{mode}\",{l}}} {} {t}\n",
            v + 10 * i
        ));
    }
    for (name, v) in [
        ("node_memory_MemTotal_bytes", 4e9),
        ("node_memory_MemFree_bytes", 1e9),
        ("node_memory_MemAvailable_bytes", 2e9),
        ("node_memory_Cached_bytes", 5e8),
        ("node_memory_Buffers_bytes", 1e8),
        ("node_boot_time_seconds", 1.75e9),
    ] {
        s.push_str(&format!("{name}{{{l}}} {v} {t}\n"));
    }
    s.push_str(&format!(
        "node_time_seconds{{{l}}} {} {t}\n",
        t as f64 / 1000.0
    ));
    s.push_str(&format!(
        "node_context_switches_total{{{l}}} {} {t}\n",
        5000 + 700 * i
    ));
    s.push_str(&format!(
        "node_network_receive_bytes_total{{device=\"eth0\",{l}}} {} {t}\n",
        1_000_000 + 12_345 * i
    ));
    s.push_str(&format!(
        "node_uname_info{{nodename=\"pi\",release=\"6.1\",{l}}} 1 {t}\n"
    ));
    for (le, n) in [("0.1", 5 * i), ("+Inf", 6 * i)] {
        s.push_str(&format!(
            "prometheus_http_request_duration_seconds_bucket{{handler=\"/api/v1/query\",le=\"{le}\",{l}}} {n} {t}\n"
        ));
    }
    s.into_bytes()
}

/// Perch scraping the node fixture (three scrapes at 1759999960, …975, …990 s).
fn node_perch(name: &str, extra: &[&str]) -> (Fixture, Perch) {
    let bodies = (0..3)
        .map(|i| node_body(i, 1_759_999_960_000 + 15_000 * i))
        .collect();
    let fixture = Fixture::start(bodies);
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: node\n    honor_labels: true\n    static_configs:\n      - targets: [\"{}\"]\n",
        fixture.addr
    );
    let mut args = vec!["--storage.tsdb.retention.time", "100y"];
    args.extend_from_slice(extra);
    let perch = Perch::start_with(name, Some(&config), &args);
    wait_until(Duration::from_secs(30), || fixture.hits() >= 4);
    (fixture, perch)
}

/// A raw HTTP/1.1 exchange: status, lower-cased headers, body bytes.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn exchange(port: u16, method: &str, path: &str, form: &str, headers: &[&str]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if method == "POST" || method == "PUT" {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", form.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(form.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Checks `v` (a whole answer) against a shape of requests.tsv; returns what is wrong.
fn check_shape(shape: &str, v: &Value) -> Result<(), String> {
    if v["status"] != "success" {
        return Err(format!("status is not success: {v}"));
    }
    let d = &v["data"];
    let (kind, arg) = shape
        .split_once([':', '='])
        .map(|(k, a)| (k, Some(a)))
        .unwrap_or((shape, None));
    let point_ok =
        |p: &Value| p[0].is_number() && p[1].is_string() && p.as_array().unwrap().len() == 2;
    match kind {
        "scalar2" => (d["resultType"] == "scalar" && d["result"][1] == "2")
            .then_some(())
            .ok_or("want scalar 2".into()),
        "buildinfo" => (d["version"].is_string() && d.get("features").is_none())
            .then_some(())
            .ok_or("want a version and no features".into()),
        "groups" => (d["groups"] == serde_json::json!([]))
            .then_some(())
            .ok_or("want groups []".into()),
        "alerts" => (d["alerts"] == serde_json::json!([]))
            .then_some(())
            .ok_or("want alerts []".into()),
        "exemplars" => (d == &serde_json::json!([]))
            .then_some(())
            .ok_or("want []".into()),
        "metadata" => d.is_object().then_some(()).ok_or("want an object".into()),
        "strings" => {
            let list: Vec<&str> = d
                .as_array()
                .ok_or("want an array")?
                .iter()
                .map(|s| s.as_str().ok_or("want strings"))
                .collect::<Result<_, _>>()?;
            if !list.windows(2).all(|w| w[0] < w[1]) {
                return Err("not sorted".into());
            }
            let want: Vec<&str> = arg
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .collect();
            if shape.contains('=') {
                (list == want)
                    .then_some(())
                    .ok_or(format!("want exactly {want:?}"))
            } else {
                want.iter()
                    .all(|w| list.contains(w))
                    .then_some(())
                    .ok_or(format!("want {want:?} among them"))
            }
        }
        "vector" | "matrix" => {
            if d["resultType"] != kind {
                return Err(format!("want resultType {kind}"));
            }
            let r = d["result"].as_array().ok_or("want a result array")?;
            if arg == Some("non-empty") && r.is_empty() {
                return Err("want a non-empty result".into());
            }
            for s in r {
                let labels_ok = s["metric"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|v| v.is_string()));
                let points_ok = if kind == "vector" {
                    point_ok(&s["value"])
                } else {
                    s["values"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty() && p.iter().all(point_ok))
                };
                if !labels_ok || !points_ok {
                    return Err(format!("bad element {s}"));
                }
            }
            Ok(())
        }
        "series" => {
            let r = d.as_array().ok_or("want an array")?;
            (!r.is_empty() && r.iter().all(|s| s["__name__"].is_string()))
                .then_some(())
                .ok_or("want label sets with __name__".into())
        }
        _ => Err(format!("unknown shape {shape}")),
    }
}

#[test]
fn grafana_requests_succeed_with_post_and_get() {
    let (_fixture, perch) = node_perch("grafana", &[]);
    let text = std::fs::read_to_string(data_dir().join("grafana/requests.tsv")).unwrap();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "bad line: {line}");
        let (id, path, form, shape) = (f[0], f[2], f[3], f[4]);
        let get_path = if form.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{form}")
        };
        for (method, p, body) in [("POST", path, form), ("GET", get_path.as_str(), "")] {
            n += 1;
            // Grafana's Go client always accepts gzip.
            let a = exchange(perch.port, method, p, body, &["Accept-Encoding: gzip"]);
            let body = if a.header("content-encoding") == Some("gzip") {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&a.body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                Answer { body: out, ..a }
            } else {
                failures.push(format!("{id} {method}: not gzipped"));
                a
            };
            if body.status != 200 {
                failures.push(format!(
                    "{id} {method}: status {}: {}",
                    body.status,
                    body.text()
                ));
                continue;
            }
            if body.header("content-type") != Some("application/json") {
                failures.push(format!(
                    "{id} {method}: content type {:?}",
                    body.header("content-type")
                ));
            }
            if let Err(e) = check_shape(shape, &body.json()) {
                failures.push(format!("{id} {method}: {e}: {}", body.text()));
            }
        }
    }
    assert!(n >= 50, "only {n} requests");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (method, path, form, expected status, expected body prefix or substring).
const ANSWERS: &[(&str, &str, &str, u16, &str)] = &[
    // Methods and routes as Prometheus 2.42's router answers them.
    ("DELETE", "/api/v1/query", "", 405, "Method Not Allowed"),
    ("PUT", "/api/v1/query_range", "", 405, "Method Not Allowed"),
    (
        "POST",
        "/api/v1/status/flags",
        "",
        405,
        "Method Not Allowed",
    ),
    ("GET", "/api/v1/nonexistent", "", 404, "404 page not found"),
    ("GET", "/nonexistent", "", 404, "404 page not found"),
    ("OPTIONS", "/api/v1/query", "", 204, ""),
    ("POST", "/-/healthy", "", 405, "Method Not Allowed"),
    // Lifecycle and admin, disabled by default.
    (
        "GET",
        "/-/reload",
        "",
        405,
        "Only POST or PUT requests allowed",
    ),
    (
        "POST",
        "/-/reload",
        "",
        403,
        "Lifecycle API is not enabled.",
    ),
    ("PUT", "/-/quit", "", 403, "Lifecycle API is not enabled."),
    (
        "POST",
        "/api/v1/admin/tsdb/snapshot",
        "",
        500,
        r#"{"status":"error","errorType":"unavailable","error":"admin APIs disabled"}"#,
    ),
    (
        "PUT",
        "/api/v1/admin/tsdb/delete_series",
        "match[]=up",
        500,
        r#""errorType":"unavailable""#,
    ),
    (
        "GET",
        "/api/v1/admin/tsdb/snapshot",
        "",
        405,
        "Method Not Allowed",
    ),
    (
        "DELETE",
        "/api/v1/series",
        "",
        500,
        r#"{"status":"error","errorType":"internal","error":"not implemented"}"#,
    ),
    // Errors with Prometheus's texts.
    (
        "POST",
        "/api/v1/query",
        "query=sum(",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": "#,
    ),
    (
        "POST",
        "/api/v1/query",
        "query=up&time=abc",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"time\": Invalid time value for 'time': cannot parse \"abc\" to a valid timestamp"}"#,
    ),
    (
        "POST",
        "/api/v1/query",
        "query=up&timeout=abc",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"timeout\": cannot parse \"abc\" to a valid duration"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&end=2&step=1",
        400,
        r#""error":"invalid parameter \"start\": cannot parse \"\" to a valid timestamp"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&start=2&end=1&step=1",
        400,
        r#""error":"invalid parameter \"end\": end timestamp must not be before start time"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&start=1&end=2&step=0",
        400,
        r#""error":"invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&start=1&end=2",
        400,
        r#""error":"invalid parameter \"step\": cannot parse \"\" to a valid duration"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=sum(&start=1&end=2&step=1",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"unclosed left parenthesis"}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up%5B5m%5D&start=1&end=2&step=1",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"}"#,
    ),
    (
        "POST",
        "/api/v1/series",
        "",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"no match[] parameter provided"}"#,
    ),
    (
        "POST",
        "/api/v1/series",
        "match[]=%7Ba%3D%22%22%7D",
        400,
        r#""error":"invalid parameter \"match[]\": match[] must contain at least one non-empty matcher"}"#,
    ),
    (
        "GET",
        "/api/v1/label/1a/values",
        "",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid label name: \"1a\""}"#,
    ),
    (
        "GET",
        "/api/v1/labels?limit=-1",
        "",
        400,
        r#""error":"invalid parameter \"limit\": limit must be non-negative"}"#,
    ),
    (
        "GET",
        "/api/v1/metadata?limit=abc",
        "",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"limit must be a number"}"#,
    ),
    (
        "GET",
        "/api/v1/rules?type=x",
        "",
        400,
        r#""error":"invalid parameter \"type\": not supported value \"x\""}"#,
    ),
    (
        "POST",
        "/api/v1/query_exemplars",
        "query=up&start=5&end=1",
        400,
        r#""error":"end timestamp must not be before start timestamp"}"#,
    ),
    (
        "POST",
        "/api/v1/format_query",
        "",
        400,
        r#""error":"invalid parameter \"query\": "#,
    ),
    // Milliseconds by mistake: a clean answer, never a crash.
    (
        "POST",
        "/api/v1/query_exemplars",
        "query=test&start=1759998200123&end=1760000000123",
        200,
        r#"{"status":"success","data":[]}"#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&start=1759998200123&end=1760000000123&step=15",
        400,
        r#""error":"exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"}"#,
    ),
    (
        "POST",
        "/api/v1/query",
        "query=up&time=1760000000123",
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
    ),
    (
        "POST",
        "/api/v1/labels",
        "start=1759998200123&end=1760000000123",
        200,
        r#"{"status":"success","data":[]}"#,
    ),
    (
        "GET",
        "/api/v1/label/job/values?start=1759998200123&end=1760000000123",
        "",
        200,
        r#"{"status":"success","data":[]}"#,
    ),
    (
        "POST",
        "/api/v1/series",
        "match[]=up&start=1759998200123&end=1760000000123",
        200,
        r#"{"status":"success","data":[]}"#,
    ),
    (
        "POST",
        "/api/v1/query",
        "query=1&time=1e30",
        400,
        r#""errorType":"bad_data""#,
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=1&start=-9e15&end=9e15&step=1e-3",
        400,
        r#""errorType":"bad_data""#,
    ),
    // Endpoints with fixed answers, and the truncation warning of `limit`.
    ("POST", "/api/v1/query_exemplars", "query=1", 204, ""),
    (
        "GET",
        "/api/v1/format_query?query=sum(rate(up%5B5m%5D))%20by%20(job)",
        "",
        200,
        r#"{"status":"success","data":"sum by (job) (rate(up[5m]))"}"#,
    ),
    (
        "GET",
        "/api/v1/targets/metadata?match_target=%7Bjob%3D%22node%22%7D",
        "",
        200,
        r#"{"status":"success","data":[]}"#,
    ),
    (
        "GET",
        "/api/v1/alertmanagers",
        "",
        200,
        r#"{"status":"success","data":{"activeAlertmanagers":[],"droppedAlertmanagers":[]}}"#,
    ),
    (
        "GET",
        "/api/v1/status/walreplay",
        "",
        200,
        r#"{"status":"success","data":{"min":0,"max":0,"current":0}}"#,
    ),
    (
        "GET",
        "/api/v1/label/mode/values?limit=2",
        "",
        200,
        r#"{"status":"success","data":["idle","system"],"warnings":["results truncated due to limit"]}"#,
    ),
    (
        "GET",
        "/api/v1/label/mode/values?limit=3",
        "",
        200,
        r#"{"status":"success","data":["idle","system","user"]}"#,
    ),
    (
        "GET",
        "/api/v1/label/U__mo_64_e/values?limit=0",
        "",
        200,
        r#"{"status":"success","data":["idle","system","user"]}"#,
    ),
    (
        "POST",
        "/api/v1/series",
        "match[]=node_cpu_seconds_total&limit=1",
        200,
        r#""warnings":["results truncated due to limit"]}"#,
    ),
    (
        "GET",
        "/api/v1/status/config",
        "",
        200,
        r#"{"status":"success","data":{"yaml":"global:\n  scrape_interval: 1s\n"#,
    ),
    (
        "GET",
        "/api/v1/status/tsdb",
        "",
        200,
        r#"{"status":"success","data":{"headStats":{"numSeries":"#,
    ),
];

#[test]
fn errors_methods_and_fixed_answers_as_prometheus() {
    let (_fixture, perch) = node_perch("answers", &[]);
    let mut failures = Vec::new();
    for (method, path, form, status, want) in ANSWERS {
        let a = exchange(perch.port, method, path, form, &[]);
        let body = a.text();
        if a.status != *status || !body.contains(want) {
            failures.push(format!(
                "{method} {path} {form}: got {} {body:?}, want {status} {want:?}",
                a.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Status endpoints: the shapes of Prometheus 2.42.
    let a = exchange(perch.port, "GET", "/api/v1/status/runtimeinfo", "", &[]);
    let d = &a.json()["data"];
    for key in [
        "startTime",
        "CWD",
        "lastConfigTime",
        "GOGC",
        "GODEBUG",
        "storageRetention",
    ] {
        assert!(d[key].is_string(), "{key} in {d}");
    }
    assert_eq!(d["GOMAXPROCS"], 1);
    assert_eq!(d["reloadConfigSuccess"], true);
    assert_eq!(d["storageRetention"], "100y or 512MiB");
    let a = exchange(perch.port, "GET", "/api/v1/status/flags", "", &[]);
    let d = &a.json()["data"];
    assert!(
        d.as_object().unwrap().values().all(|v| v.is_string()),
        "{d}"
    );
    assert_eq!(d["storage.tsdb.retention.time"], "100y");
    assert_eq!(d["web.enable-lifecycle"], "false");
    assert_eq!(d["enable-feature"], "");
    let a = exchange(perch.port, "GET", "/api/v1/status/tsdb", "", &[]);
    let d = &a.json()["data"];
    assert!(d["headStats"]["numSeries"].as_u64().unwrap() >= 17, "{d}");
    assert_eq!(
        d["seriesCountByMetricName"][0]["name"], "node_cpu_seconds_total",
        "{d}"
    );
    assert_eq!(d["seriesCountByMetricName"][0]["value"], 3);
    assert!(d["seriesCountByLabelValuePair"].as_array().unwrap().len() == 10);

    // Method 405s carry Allow as Go's router writes it.
    let a = exchange(perch.port, "DELETE", "/api/v1/query", "", &[]);
    assert_eq!(a.header("allow"), Some("GET, OPTIONS, POST"));

    // CORS: only with an Origin; `*` for the default `.*`.
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/query?query=1",
        "",
        &["Origin: http://grafana.lan"],
    );
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.header("vary"), Some("Origin"));
    let a = exchange(perch.port, "GET", "/api/v1/query?query=1", "", &[]);
    assert_eq!(a.header("access-control-allow-origin"), None);

    // gzip only when accepted, and never another encoding.
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/labels",
        "",
        &["Accept-Encoding: br, zstd, deflate"],
    );
    assert_eq!(a.header("content-encoding"), None);
    assert!(a.text().starts_with("{\"status\":\"success\""));
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/labels",
        "",
        &["Accept-Encoding: gzip;q=0"],
    );
    assert_eq!(a.header("content-encoding"), None);

    // Every handler is counted, with durations and sizes.
    let m = exchange(perch.port, "GET", "/metrics", "", &[]).text();
    for want in [
        "perch_http_requests_total{code=\"405\",handler=\"query\"}",
        "perch_http_requests_total{code=\"400\",handler=\"query_range\"}",
        "perch_http_request_duration_seconds_bucket{handler=\"status_tsdb\",le=\"+Inf\"}",
        "perch_http_response_size_bytes_count{handler=\"labels\"}",
    ] {
        assert!(m.contains(want), "{want} missing from /metrics");
    }
}

#[test]
fn lifecycle_reload_and_quit_when_enabled() {
    let (_fixture, mut perch) = node_perch(
        "lifecycle",
        &[
            "--web.enable-lifecycle",
            "--web.cors.origin",
            "https?://grafana\\.lan",
        ],
    );
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/query?query=1",
        "",
        &["Origin: https://grafana.lan"],
    );
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://grafana.lan")
    );
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/query?query=1",
        "",
        &["Origin: https://evil.example"],
    );
    assert_eq!(a.header("access-control-allow-origin"), None);

    // Reload picks up a changed file: a second job appears among the targets.
    let cfg = perch.dir.join("prometheus.yml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("  - job_name: extra\n    static_configs:\n      - targets: [\"127.0.0.1:1\"]\n");
    std::fs::write(&cfg, &text).unwrap();
    let a = exchange(perch.port, "POST", "/-/reload", "", &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    let t = exchange(perch.port, "GET", "/api/v1/targets", "", &[]).text();
    assert!(t.contains("\"scrapePool\":\"extra\""), "{t}");
    let c = exchange(perch.port, "GET", "/api/v1/status/config", "", &[]).text();
    assert!(c.contains("job_name: extra"), "{c}");
    // A broken file: 500 with the reason; the old config stays.
    std::fs::write(&cfg, "scrape_configs: [{job_name: x, bogus: 1}]\n").unwrap();
    let a = exchange(perch.port, "POST", "/-/reload", "", &[]);
    assert_eq!(a.status, 500);
    assert!(
        a.text().starts_with("failed to reload config: "),
        "{}",
        a.text()
    );
    let r = exchange(perch.port, "GET", "/api/v1/status/runtimeinfo", "", &[]).json();
    assert_eq!(r["data"]["reloadConfigSuccess"], false);

    let a = exchange(perch.port, "POST", "/-/quit", "", &[]);
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "Requesting termination... Goodbye!\n");
    let mut exited = None;
    wait_until(Duration::from_secs(10), || {
        exited = perch.child.try_wait().unwrap();
        exited.is_some()
    });
    assert!(exited.unwrap().success(), "{exited:?}");
}

/// The node fixture's samples as OpenMetrics for `promtool tsdb create-blocks-from openmetrics`.
fn node_openmetrics() -> String {
    let mut rows: Vec<(String, String, i64)> = Vec::new();
    for i in 0..3 {
        let body = String::from_utf8(node_body(i, 1_759_999_960_000 + 15_000 * i)).unwrap();
        for line in body.lines() {
            let mut f = line.rsplitn(3, ' ');
            let (t, v, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            rows.push((s.to_owned(), v.to_owned(), t.parse().unwrap()));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut text = String::new();
    let mut family = String::new();
    for (s, v, t) in rows {
        let fam = s.split('{').next().unwrap().to_owned();
        if fam != family {
            text.push_str(&format!("# TYPE {fam} gauge\n"));
            family = fam;
        }
        text.push_str(&format!("{s} {v} {}.{:03}\n", t / 1000, t % 1000));
    }
    text.push_str("# EOF\n");
    text
}

#[test]
#[ignore = "needs promtool (Debian package prometheus)"]
fn promtool_answers_match_prometheus() {
    use crate::support::Prometheus;
    use std::process::Command;
    let (_fixture, perch) = node_perch("promtool", &[]);
    let prom = Prometheus::with_openmetrics("promtool-prom", &node_openmetrics());
    let port = prom.port;
    // Only the fixture's series: Perch also holds its scrape's own series (`up`, …).
    let runs: &[&[&str]] = &[
        &[
            "instant",
            "--time=1760000000",
            "{}",
            "node_cpu_seconds_total",
        ],
        &[
            "instant",
            "--time=1759999990",
            "{}",
            "sum by (mode) (rate(node_cpu_seconds_total[1m]))",
        ],
        &[
            "instant",
            "--time=1760000000.123",
            "{}",
            "node_memory_MemTotal_bytes - node_memory_MemFree_bytes",
        ],
        &["instant", "--time=4", "{}", "1+1"],
        &[
            "instant",
            "--time=1760000000",
            "{}",
            "node_uname_info{job=\"node\"}",
        ],
        &[
            "range",
            "--start=1759999900",
            "--end=1760000000",
            "--step=15s",
            "{}",
            "rate(node_context_switches_total[1m])",
        ],
        &[
            "range",
            "--start=1759999900",
            "--end=1760000000",
            "--step=5s",
            "{}",
            "node_network_receive_bytes_total * 8",
        ],
        &[
            "series",
            "--match=node_cpu_seconds_total",
            "--start=1759999000",
            "--end=1760000000",
            "{}",
        ],
        &[
            "series",
            "--match={__name__=~\"node_memory.*\"}",
            "--match=node_uname_info",
            "{}",
        ],
        &["labels", "{}", "mode"],
        &[
            "labels",
            "--match=node_cpu_seconds_total",
            "--start=1759999000",
            "--end=1760000000",
            "{}",
            "cpu",
        ],
        &["labels", "{}", "device"],
    ];
    let run = |port: u16, args: &[&str]| {
        let server = format!("http://127.0.0.1:{port}");
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "{}" { server.as_str() } else { a })
            .collect();
        let out = Command::new("promtool")
            .arg("query")
            .args(&args)
            .output()
            .expect("promtool");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut failures = Vec::new();
    for args in runs {
        let want = run(port, args);
        let got = run(perch.port, args);
        if want.0 != Some(0) || want.1.trim().is_empty() {
            failures.push(format!("{args:?}: Prometheus itself answered {want:?}"));
        } else if got != want {
            failures.push(format!(
                "{args:?}:\n  perch      {got:?}\n  prometheus {want:?}"
            ));
        }
    }
    drop(prom);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `/api/v1/targets` with `state` and `scrapePool`, against the answers a live Prometheus 2.42
/// gave for the same config (tests/data/api/targets*.{yml,json}): targets dropped by
/// `relabel_configs` with their discovered labels, pools in name order.
#[test]
fn targets_active_and_dropped_as_prometheus() {
    let config = std::fs::read_to_string(data_dir().join("api/targets.yml")).unwrap();
    let perch = Perch::start("targets", Some(&config));
    let recorded: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("api/targets-2.42.json")).unwrap(),
    )
    .unwrap();
    let mut failures = Vec::new();
    for case in recorded["cases"].as_array().unwrap() {
        let query = case["query"].as_str().unwrap();
        let a = exchange(
            perch.port,
            "GET",
            &format!("/api/v1/targets{query}"),
            "",
            &[],
        );
        let mut got = a.json();
        for t in got["data"]["activeTargets"].as_array_mut().unwrap() {
            let t = t.as_object_mut().unwrap();
            for k in [
                "globalUrl",
                "lastError",
                "lastScrape",
                "lastScrapeDuration",
                "health",
            ] {
                assert!(t.remove(k).is_some(), "{k} missing");
            }
        }
        if got != case["answer"] {
            failures.push(format!(
                "{query:?}:\n  perch      {got}\n  prometheus {}",
                case["answer"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Byte for byte, as 2.42 wrote it.
    let a = exchange(
        perch.port,
        "GET",
        "/api/v1/targets?state=DROPPED&scrapePool=beta",
        "",
        &[],
    );
    assert_eq!(
        a.text(),
        r#"{"status":"success","data":{"activeTargets":[],"droppedTargets":[{"discoveredLabels":{"__address__":"b1:80","__metrics_path__":"/metrics","__scheme__":"http","__scrape_interval__":"15s","__scrape_timeout__":"10s","job":"beta"}}]}}"#
    );
    // An active target's fields in 2.42's order.
    let t = exchange(
        perch.port,
        "GET",
        "/api/v1/targets?scrapePool=zeta",
        "",
        &[],
    )
    .text();
    let keys = [
        "discoveredLabels",
        "labels",
        "scrapePool",
        "scrapeUrl",
        "globalUrl",
        "lastError",
        "lastScrape",
        "lastScrapeDuration",
        "health",
        "scrapeInterval",
        "scrapeTimeout",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| {
            t.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} in {t}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{t}");
}

/// Queries whose `stats=1` answers are compared with Prometheus 2.42 over the same data: (path
/// and query, whether `peakSamples` is compared too: it follows each engine's own accounting of
/// what it holds, and differs where they hold intermediate results differently).
const STATS_QUERIES: &[(&str, bool)] = &[
    ("/api/v1/query?time=1760000000&query=node_cpu_seconds_total", true),
    ("/api/v1/query?time=1760000000&query=node_cpu_seconds_total%5B1m%5D", true),
    ("/api/v1/query?time=1759999990&query=sum%20by%20(mode)%20(rate(node_cpu_seconds_total%5B1m%5D))", false),
    ("/api/v1/query?time=1760000000&query=max_over_time(node_context_switches_total%5B1m%3A15s%5D)", false),
    ("/api/v1/query?time=1760000000&query=node_context_switches_total%5B1m%3A15s%5D", true),
    ("/api/v1/query?time=1760000000&query=absent_over_time(node_context_switches_total%5B1m%5D)", false),
    ("/api/v1/query?time=4&query=1", true),
    ("/api/v1/query?time=4&query=%22a%22", true),
    ("/api/v1/query_range?start=1759999900&end=1760000000&step=15&query=rate(node_context_switches_total%5B1m%5D)", true),
    ("/api/v1/query_range?start=1759999900&end=1760000000&step=5&query=node_network_receive_bytes_total%20*%208", false),
    ("/api/v1/query_range?start=1759999900&end=1760000000&step=5&query=sum(node_cpu_seconds_total)", false),
];

/// The `"stats":{…}` of a raw answer with every number written as `N`: the layout alone.
fn stats_layout(body: &str) -> String {
    let from = body.find("\"stats\":").unwrap_or(body.len());
    let mut out = String::new();
    let mut in_number = false;
    for c in body[from..].chars() {
        let numeric = c.is_ascii_digit() || ".-+e".contains(c);
        if numeric && (in_number || out.ends_with(':')) {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// `stats` on instant and range queries: 2.42's layout (recorded below from a live server),
/// and the same `totalQueryableSamples` as 2.42 over the same data.
#[test]
fn query_stats_layout() {
    let (_fixture, perch) = node_perch("stats-layout", &[]);
    // 2.42 for `query=up&stats=all` (and any other non-empty value; `stats=` gives none).
    let recorded = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","env":"x","instance":"127.0.0.1:19390","job":"alpha"},"value":[1795624863,"1"]},{"metric":{"__name__":"up","instance":"127.0.0.1:19391","job":"zeta"},"value":[1795624863,"1"]}],"stats":{"timings":{"evalTotalTime":0.000119356,"resultSortTime":0,"queryPreparationTime":0.000072041,"innerEvalTime":0.000037616,"execQueueTime":0.000161584,"execTotalTime":0.000292267},"samples":{"totalQueryableSamples":2,"peakSamples":2}}}}"#;
    let want = stats_layout(recorded);
    for (path, form) in [
        ("/api/v1/query?query=up&stats=all", ""),
        ("/api/v1/query?query=up&stats=1", ""),
        ("/api/v1/query", "query=up&stats=false"),
        (
            "/api/v1/query_range?query=up&start=1759999900&end=1760000000&step=15&stats=all",
            "",
        ),
    ] {
        let method = if form.is_empty() { "GET" } else { "POST" };
        let a = exchange(perch.port, method, path, form, &[]);
        assert_eq!(stats_layout(&a.text()), want, "{path} {form}");
        let v = a.json();
        assert!(
            v["data"]["stats"]["timings"]["execTotalTime"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(v["data"]["result"].is_array());
    }
    for path in ["/api/v1/query?query=up&stats=", "/api/v1/query?query=up"] {
        let v = exchange(perch.port, "GET", path, "", &[]).json();
        assert!(v["data"].get("stats").is_none(), "{path}: {v}");
    }
}

#[test]
#[ignore = "needs promtool and prometheus (Debian package prometheus)"]
fn query_stats_match_prometheus() {
    use crate::support::Prometheus;
    let (_fixture, perch) = node_perch("stats", &[]);
    let prom = Prometheus::with_openmetrics("stats-prom", &node_openmetrics());
    let mut failures = Vec::new();
    for (path, peak) in STATS_QUERIES {
        let path = format!("{path}&stats=1");
        let want = exchange(prom.port, "GET", &path, "", &[]);
        let got = exchange(perch.port, "GET", &path, "", &[]);
        if stats_layout(&got.text()) != stats_layout(&want.text()) {
            failures.push(format!("{path}: {} vs {}", got.text(), want.text()));
        }
        let (w, g) = (
            &want.json()["data"]["stats"]["samples"],
            &got.json()["data"]["stats"]["samples"],
        );
        let same = |k: &str| g[k] == w[k];
        if !same("totalQueryableSamples") || (*peak && !same("peakSamples")) {
            failures.push(format!("{path}:\n  perch      {g}\n  prometheus {w}"));
        }
    }
    drop(prom);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// HEAD and other methods outside the routes, as a live 2.42 answered them (`curl -I`): HEAD
/// only on `/-/healthy` and `/-/ready` (200, no body, no length, no type); anywhere else the
/// 405 or 404 with the `Content-Length` its body would have, and no body.
/// (method, path, status, Allow, Content-Length)
type HeadAnswer = (
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
    Option<&'static str>,
);
const HEAD_ANSWERS: &[HeadAnswer] = &[
    ("HEAD", "/-/ready", 200, None, None),
    ("HEAD", "/-/healthy", 200, None, None),
    (
        "HEAD",
        "/api/v1/query?query=up",
        405,
        Some("GET, OPTIONS, POST"),
        Some("19"),
    ),
    (
        "HEAD",
        "/api/v1/targets",
        405,
        Some("GET, OPTIONS"),
        Some("19"),
    ),
    (
        "HEAD",
        "/api/v1/status/config",
        405,
        Some("GET, OPTIONS"),
        Some("19"),
    ),
    (
        "HEAD",
        "/api/v1/write",
        405,
        Some("OPTIONS, POST"),
        Some("19"),
    ),
    ("HEAD", "/metrics", 405, Some("GET, OPTIONS"), Some("19")),
    (
        "HEAD",
        "/-/reload",
        405,
        Some("GET, OPTIONS, POST, PUT"),
        Some("19"),
    ),
    (
        "HEAD",
        "/-/quit",
        405,
        Some("GET, OPTIONS, POST, PUT"),
        Some("19"),
    ),
    ("HEAD", "/nope", 404, None, Some("19")),
    ("HEAD", "/api/v1/nope", 404, None, Some("19")),
    ("POST", "/metrics", 405, Some("GET, OPTIONS"), Some("19")),
    (
        "POST",
        "/-/ready",
        405,
        Some("GET, HEAD, OPTIONS"),
        Some("19"),
    ),
];

#[test]
fn head_as_prometheus() {
    let perch = Perch::start("head", None);
    let mut failures = Vec::new();
    for &(method, path, status, allow, length) in HEAD_ANSWERS {
        let a = exchange(perch.port, method, path, "", &[]);
        let got = (
            a.status,
            a.header("allow"),
            a.header("content-length"),
            a.body.len(),
        );
        let want_body = if method == "HEAD" { 0 } else { 19 };
        if got != (status, allow, length, want_body) {
            failures.push(format!(
                "{method} {path}: got {got:?}, want {:?}",
                (status, allow, length, want_body)
            ));
        }
        if length.is_none() && a.header("content-type").is_some() {
            failures.push(format!("{method} {path}: a Content-Type without a body"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // On a kept-alive connection the next answer follows the head at once.
    let mut s = TcpStream::connect(("127.0.0.1", perch.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (first, rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(first.contains("Content-Length: 19"), "{raw}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(rest.ends_with("\r\n\r\nPerch is Ready.\n"), "{raw}");
}
