//! End to end: the real binary scrapes a fixture target, then the query API is checked against
//! exact JSON, recorded from Prometheus 2.42 over the same samples (tests/data/e2e).

use crate::support::{data_dir, wait_until, Fixture, Perch};
use std::time::Duration;

/// The cases of tests/data/e2e/queries.tsv: (name, endpoint, check, form parameters).
pub fn cases() -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(data_dir().join("e2e/queries.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "bad line in queries.tsv: {l}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

pub fn fixture_bodies() -> Vec<Vec<u8>> {
    (1..=3)
        .map(|i| std::fs::read(data_dir().join(format!("e2e/scrape-{i}.prom"))).unwrap())
        .collect()
}

pub fn config_for(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fixture\n    honor_labels: true\n    static_configs:\n      - targets: [\"{target}\"]\n"
    )
}

/// Checks one answer; returns a description of the mismatch, if any.
pub fn check(name: &str, check: &str, status: u16, body: &str) -> Option<String> {
    if check == "exact" {
        let want = std::fs::read_to_string(data_dir().join(format!("e2e/{name}.json"))).unwrap();
        if status != 200 || body != want.trim_end() {
            return Some(format!("{name}: got {status} {body}\n   want 200 {want}"));
        }
        return None;
    }
    let f: Vec<&str> = check.split(' ').collect();
    let (code, kind) = (f[1].parse::<u16>().unwrap(), f[2]);
    let kind_json = format!("\"errorType\":\"{kind}\"");
    if status != code || !body.contains(&kind_json) || !body.starts_with("{\"status\":\"error\"") {
        return Some(format!("{name}: got {status} {body}, want {code} {kind}"));
    }
    None
}

#[test]
fn scrape_store_query_serve() {
    let fixture = Fixture::start(fixture_bodies());
    let perch = Perch::start("e2e", Some(&config_for(&fixture.addr)));
    // Three scrapes bring the three bodies; wait for the third to be committed too.
    wait_until(Duration::from_secs(30), || fixture.hits() >= 3);
    wait_until(Duration::from_secs(10), || {
        let (_, b) = perch.get("/api/v1/query?query=count_over_time(fixture_temperature_celsius%7Bsensor%3D%22cpu%22%7D%5B1m%5D)&time=1700000030");
        b.contains("\"3\"")
    });
    let mut failures = Vec::new();
    for (name, endpoint, chk, params) in cases() {
        let path = format!("/api/v1/{endpoint}");
        let (s, b) = perch.get(&format!("{path}?{params}"));
        failures.extend(check(&name, &chk, s, &b).map(|m| format!("GET {m}")));
        let (s, b) = perch.post_form(&path, &params);
        failures.extend(check(&name, &chk, s, &b).map(|m| format!("POST {m}")));
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The synthetic series of every scrape, with the target's own labels.
    let (_, b) = perch.get("/api/v1/query?query=up");
    assert!(
        b.contains("\"job\":\"fixture\"") && b.contains("\"1\"]"),
        "{b}"
    );
    for name in ["scrape_duration_seconds", "scrape_samples_scraped"] {
        let (_, b) = perch.get(&format!("/api/v1/query?query={name}"));
        assert!(b.contains(&format!("\"__name__\":\"{name}\"")), "{b}");
    }
    let (_, b) = perch.get("/api/v1/query?query=scrape_samples_scraped");
    assert!(b.contains("\"5\"]"), "five samples per scrape: {b}");

    // The metadata the target exposed, in Prometheus 2.42's shapes.
    let (s, b) = perch.get("/api/v1/metadata?metric=fixture_requests_total");
    assert_eq!(s, 200);
    assert_eq!(
        b,
        r#"{"status":"success","data":{"fixture_requests_total":[{"type":"counter","help":"Requests handled.","unit":""}]}}"#
    );
    let (_, b) = perch.get("/api/v1/metadata");
    assert!(b.contains(r#""fixture_temperature_celsius":[{"type":"gauge","help":"Temperature of a sensor.","unit":""}]"#), "{b}");
    let (_, b) = perch.get("/api/v1/targets/metadata?metric=fixture_temperature_celsius&match_target=%7Bjob%3D%22fixture%22%7D");
    assert_eq!(
        b,
        format!(
            r#"{{"status":"success","data":[{{"target":{{"instance":"{}","job":"fixture"}},"type":"gauge","help":"Temperature of a sensor.","unit":""}}]}}"#,
            fixture.addr
        )
    );
    let (_, b) = perch.get("/api/v1/targets/metadata?match_target=%7Bjob%3D%22other%22%7D");
    assert_eq!(b, r#"{"status":"success","data":[]}"#);
}

#[test]
fn openmetrics_and_gzip_bodies_are_scraped() {
    let body = b"# TYPE om_requests counter\nom_requests_total{path=\"/a\"} 7 1700000000.5\nom_requests_created{path=\"/a\"} 1600000000 1700000000.5\n# EOF\n".to_vec();
    let fixture = Fixture::start_with(
        vec![body],
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        true,
    );
    let perch = Perch::start("om", Some(&config_for(&fixture.addr)));
    wait_until(Duration::from_secs(20), || {
        let (_, b) = perch.get("/api/v1/query?query=om_requests_total&time=1700000001");
        b.contains("\"7\"")
    });
    let (_, b) = perch.get("/api/v1/query?query=om_requests_total&time=1700000001");
    assert!(b.contains("[1700000001,\"7\"]"), "{b}");
    let (_, b) = perch.get("/api/v1/query?query=up");
    assert!(b.contains("\"1\"]"), "{b}");
}

#[test]
fn own_metrics_are_served_and_scraped() {
    let perch = Perch::start("self", None);
    let (s, m) = perch.get("/metrics");
    assert_eq!(s, 200);
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "perch_tsdb_samples_appended_total",
        "perch_scrapes_total",
        "perch_http_requests_total{code=\"200\",handler=\"ready\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    let (s, b) = perch.get("/api/v1/targets");
    assert_eq!(s, 200);
    assert!(b.contains("\"scrapePool\":\"perch\""), "{b}");
}

/// The fixture's samples as one OpenMetrics file with timestamps, as promtool and `perch import`
/// read it.
pub fn fixture_openmetrics() -> String {
    let mut text = String::new();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for body in fixture_bodies() {
        for line in String::from_utf8(body).unwrap().lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let mut f = line.rsplitn(3, ' ');
            let (t, v, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            rows.push((s.to_owned(), v.to_owned(), t.to_owned()));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut family = String::new();
    for (s, v, t) in rows {
        let fam = s.split('{').next().unwrap().to_owned();
        if fam != family {
            text.push_str(&format!("# TYPE {fam} gauge\n"));
            family = fam;
        }
        let ms: i64 = t.parse().unwrap();
        text.push_str(&format!("{s} {v} {}.{:03}\n", ms / 1000, ms % 1000));
    }
    text.push_str("# EOF\n");
    text
}

#[test]
#[ignore = "needs prometheus and promtool (Debian package prometheus)"]
fn answers_match_prometheus() {
    use crate::support::{get, Prometheus};
    // Load the same samples into a real Prometheus with promtool and compare its answers with
    // the recorded expectations: the files are what Prometheus says, not what Perch says.
    let prom = Prometheus::with_openmetrics("prom", &fixture_openmetrics());
    let mut failures = Vec::new();
    for (name, endpoint, chk, params) in cases() {
        let (s, b) = get(prom.port, &format!("/api/v1/{endpoint}?{params}")).unwrap();
        failures.extend(check(&name, &chk, s, &b));
    }
    drop(prom);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
