//! Scraping as Prometheus 2.42 does it: the limits of a job, credentials, and file discovery
//! with targets coming and going while Perch runs. Recorded 2.42 answers are in
//! `tests/data/scrape/`; the ignored tests check them against a live 2.42.

use crate::support::{
    data_dir, raw_request, temp_dir, wait_until, ConnPolicy, Fixture, Perch, Prometheus,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bodies of the limits fixture, by path.
fn limits_body(path: &str) -> &'static str {
    match path {
        "/five" => "a 1\nb 2\nc 3\nd 4\ne 5\n",
        "/labels" => "m{a=\"1\",b=\"2\",c=\"3\"} 1\n",
        "/longname" => "m{averyveryverylonglabelname=\"1\"} 1\n",
        "/longvalue" => "m{a=\"averyveryverylonglabelvalue_________________________________________________________________________\"} 1\n",
        "/parse" => "a 1\nb 2\nbroken line here\n",
        _ => "ok_metric 1\n",
    }
}

/// The fixture for `limits.yml`: a body per path (`/big` is 400 bytes), `/auth` only with
/// `user:pass`; every request head is kept in the returned list.
fn limits_fixture() -> (Fixture, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    let f = Fixture::handle("text/plain; version=0.0.4", false, move |_, head| {
        h.lock().unwrap().push(head.to_owned());
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        if path == "/auth" && !head.contains("\r\nAuthorization: Basic dXNlcjpwYXNz\r\n") {
            return (401, Vec::new());
        }
        if path == "/big" {
            return (200, "x 1\n".repeat(100).into_bytes());
        }
        (200, limits_body(path).as_bytes().to_vec())
    });
    (f, heads)
}

/// `limits.yml` for a fixture at `addr`, with the password file written into `dir`.
fn limits_config(addr: &str, dir: &Path) -> String {
    let pw = dir.join("password");
    std::fs::write(&pw, "  pass\n").unwrap();
    let port = addr.rsplit(':').next().unwrap();
    std::fs::read_to_string(data_dir().join("scrape/limits.yml"))
        .unwrap()
        .replace("FIXTURE_AGAIN", &format!("localhost:{port}"))
        .replace("FIXTURE", addr)
        .replace("PASSWORD_FILE", &pw.display().to_string())
}

pub(crate) fn api(port: u16, path: &str) -> Value {
    // Read whole, de-chunked (Prometheus answers large bodies chunked).
    let r = raw_request(port, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_str::<Value>(&r.text()).unwrap()["data"].clone()
}

pub(crate) fn query(port: u16, q: &str) -> Value {
    let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
    api(port, &format!("/api/v1/query?query={q}"))["result"].clone()
}

/// What a server made of `limits.yml`, per job: each target's health and last error, the
/// synthetic series' values, `scrape_series_added` at the first scrape, and the names of the
/// series stored from the bodies. Waits until every target was scraped three times.
fn observe_limits(port: u16, jobs: usize) -> Value {
    wait_until(Duration::from_secs(40), || {
        let r = query(port, "count_over_time(up[1h]) >= 3");
        r.as_array().unwrap().len() == jobs + 1
    });
    let mut out = BTreeMap::new();
    let targets = api(port, "/api/v1/targets?state=active");
    for t in targets["activeTargets"].as_array().unwrap() {
        let job = t["scrapePool"].as_str().unwrap().to_owned();
        let e = out
            .entry(job.clone())
            .or_insert_with(|| json!({"targets": []}));
        e["targets"]
            .as_array_mut()
            .unwrap()
            .push(json!({"health": t["health"], "lastError": t["lastError"]}));
    }
    for (job, e) in out.iter_mut() {
        for m in [
            "up",
            "scrape_samples_scraped",
            "scrape_samples_post_metric_relabeling",
        ] {
            let mut vs: Vec<String> = query(port, &format!("{m}{{job=\"{job}\"}}"))
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["value"][1].as_str().unwrap().to_owned())
                .collect();
            vs.sort();
            e[m] = json!(vs);
        }
        let added = query(port, &format!("scrape_series_added{{job=\"{job}\"}}[1h]"));
        let mut first: Vec<String> = added
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["values"][0][1].as_str().unwrap().to_owned())
            .collect();
        first.sort();
        e["scrape_series_added_first"] = json!(first);
        let m: String =
            form_urlencoded::byte_serialize(format!("{{job=\"{job}\"}}").as_bytes()).collect();
        let mut names: Vec<String> = api(port, &format!("/api/v1/series?match[]={m}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["__name__"].as_str().unwrap().to_owned())
            .filter(|n| n != "up" && !n.starts_with("scrape_"))
            .collect();
        names.sort();
        names.dedup();
        e["stored"] = json!(names);
    }
    serde_json::to_value(out).unwrap()
}

fn recorded_limits() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("scrape/limits-2.42.json")).unwrap(),
    )
    .unwrap()
}

/// Every job's limits as 2.42 applies them (tests/data/scrape/limits-2.42.json): a body over
/// `sample_limit` stores nothing and `up` is 0 with "sample limit exceeded"; the label limits,
/// `body_size_limit` (a body of exactly the limit fails) and `target_limit` with 2.42's texts;
/// basic auth from a password file; the counts 2.42 reports for failed scrapes.
#[test]
fn limits_and_credentials_as_prometheus() {
    let (fixture, heads) = limits_fixture();
    let dir = temp_dir("scrape-limits");
    let config = limits_config(&fixture.addr, &dir);
    let perch = Perch::start_in(dir, Some(&config), &[]);
    let mut got = observe_limits(perch.port, 12);
    let mut want = recorded_limits();
    // Perch's parser words its errors its own way (docs/compatibility.md).
    let err = &got["parse"]["targets"][0]["lastError"];
    assert!(err.as_str().unwrap().contains("line 3"), "{err}");
    for v in [&mut got, &mut want] {
        v["parse"]["targets"][0]["lastError"] = json!("");
    }
    let mut diffs = Vec::new();
    for (job, w) in want.as_object().unwrap() {
        if got[job] != *w {
            diffs.push(format!(
                "{job}:\n  perch      {}\n  prometheus {w}",
                got[job]
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // The headers 2.42 sends (tests/data/scrape/headers-2.42.txt).
    assert_bearer_request(&heads.lock().unwrap());
}

/// The same config against a live 2.42: the recorded answers are still what it says.
#[test]
#[ignore = "needs prometheus (Debian's prometheus 2.42)"]
fn limits_recorded_from_a_real_prometheus() {
    let (fixture, heads) = limits_fixture();
    let dir = temp_dir("scrape-limits-prom");
    let config = limits_config(&fixture.addr, &dir);
    let prom = Prometheus::start("scrape-limits-prom", &config, &[]);
    let got = observe_limits(prom.port, 12);
    assert_eq!(got, recorded_limits(), "{got:#}");
    assert_bearer_request(&heads.lock().unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// `{instance="…"}`'s series names that have a (non-stale) sample now.
fn live_names(port: u16, instance: &str) -> Vec<String> {
    let mut v: Vec<String> = query(port, &format!("{{instance=\"{instance}\"}}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["__name__"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn active(port: u16) -> Vec<(String, String)> {
    let t = api(port, "/api/v1/targets?state=active");
    let mut v: Vec<(String, String)> = t["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["labels"]["instance"].as_str().unwrap().to_owned(),
                t["health"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A file_sd file rewritten while the server runs: a target added appears and is scraped, the
/// one that stays keeps scraping without a gap, a removed one disappears and its series (and
/// synthetic series) go stale; a file that does not parse keeps its targets. `start` starts the
/// server with the config, `settle` is how long a file change may take to act.
fn file_sd_scenario(start: &dyn Fn(&str) -> u16, dir: &Path, settle: Duration) {
    let a = Fixture::start(vec![b"from_a 1\n".to_vec()]);
    let b = Fixture::start(vec![b"from_b 2\n".to_vec()]);
    let sd = dir.join("targets.json");
    let write = |targets: &[&str]| {
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = dir.join("targets.json.tmp");
        std::fs::write(
            &tmp,
            json!([{"targets": targets, "labels": {"env": "lab"}}]).to_string(),
        )
        .unwrap();
        std::fs::rename(&tmp, &sd).unwrap();
    };
    write(&[&a.addr]);
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sd\n    file_sd_configs:\n      - files: ['{}/*.json']\n        refresh_interval: 1m\n",
        dir.display()
    );
    let port = start(&config);
    let up = |port: u16| active(port);
    wait_until(settle, || up(port) == vec![(a.addr.clone(), "up".into())]);
    let t = api(port, "/api/v1/targets");
    assert_eq!(
        t["activeTargets"][0]["discoveredLabels"]["__meta_filepath"],
        json!(sd.display().to_string())
    );
    assert_eq!(t["activeTargets"][0]["labels"]["env"], json!("lab"));
    write(&[&a.addr, &b.addr]);
    let mut both = vec![(a.addr.clone(), "up".into()), (b.addr.clone(), "up".into())];
    both.sort();
    wait_until(settle, || up(port) == both);
    // A file that does not parse keeps its targets.
    std::fs::write(&sd, "[{").unwrap();
    std::thread::sleep(settle / 2);
    assert_eq!(up(port).len(), 2);
    write(&[&b.addr]);
    wait_until(settle, || up(port) == vec![(b.addr.clone(), "up".into())]);
    // Stale within a little over two intervals after it went.
    wait_until(Duration::from_secs(10), || {
        live_names(port, &a.addr).is_empty()
    });
    assert_eq!(
        live_names(port, &b.addr),
        vec![
            "from_b",
            "scrape_duration_seconds",
            "scrape_samples_post_metric_relabeling",
            "scrape_samples_scraped",
            "scrape_series_added",
            "up"
        ]
    );
    // A scraped every second while it was listed: no gap when b came or a file broke.
    let r = query(port, &format!("up{{instance=\"{}\"}}[10m]", a.addr));
    let ts: Vec<f64> = r[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_f64().unwrap())
        .collect();
    assert!(ts.len() >= 4, "{ts:?}");
    assert!(
        ts.windows(2).all(|w| (w[1] - w[0] - 1.0).abs() < 0.01),
        "a gap in {ts:?}"
    );
}

#[test]
fn file_sd_targets_come_and_go_while_perch_runs() {
    let dir = temp_dir("scrape-filesd");
    let data = temp_dir("scrape-filesd-data");
    let perch = std::cell::RefCell::new(None);
    // refresh_interval is 1m: changes are seen by polling (every 5 s).
    file_sd_scenario(
        &|config| {
            let p = Perch::start_in(data.clone(), Some(config), &[]);
            let port = p.port;
            *perch.borrow_mut() = Some(p);
            port
        },
        &dir,
        Duration::from_secs(15),
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs prometheus (Debian's prometheus 2.42)"]
fn file_sd_targets_come_and_go_in_a_real_prometheus() {
    let dir = temp_dir("scrape-filesd-prom");
    let prom = std::cell::RefCell::new(None);
    file_sd_scenario(
        &|config| {
            let p = Prometheus::start("scrape-filesd-prom", config, &[]);
            let port = p.port;
            *prom.borrow_mut() = Some(p);
            port
        },
        &dir,
        Duration::from_secs(15),
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The request a scraper sent to `/bearer`: its credentials and timeout header, as 2.42 sends
/// them (tests/data/scrape/headers-2.42.txt).
fn assert_bearer_request(heads: &[String]) {
    let bearer = heads
        .iter()
        .find(|h| h.starts_with("GET /bearer "))
        .unwrap();
    assert!(
        bearer.contains("\r\nAuthorization: Bearer tok\r\n"),
        "{bearer}"
    );
    assert!(
        bearer.contains("\r\nX-Prometheus-Scrape-Timeout-Seconds: 0.5\r\n"),
        "{bearer}"
    );
}

/// Issue #4, HTTP/1.1 keep-alive: one target per way a server may treat its connections, all
/// scraped every second. A keep-alive target gets one connection for all its scrapes; a target
/// that closes after each answer (saying so or not), or that closes a kept connection when it
/// idles for 300 ms, gets a new connection per scrape and never a failed one; a target that
/// says `Connection: close` but leaves the connection open is taken at its word.
#[test]
fn keep_alive_connections_as_each_target_allows() {
    let body = |n: usize| format!("kept_total {n}\n").into_bytes();
    let targets = [
        (
            "keep",
            Fixture::keeping(ConnPolicy::KeepAlive(Duration::from_secs(60)), body),
        ),
        ("close", Fixture::keeping(ConnPolicy::Close, body)),
        ("silent", Fixture::keeping(ConnPolicy::CloseSilently, body)),
        (
            "idle",
            Fixture::keeping(ConnPolicy::KeepAlive(Duration::from_millis(300)), body),
        ),
        (
            "honour",
            Fixture::keeping(ConnPolicy::SayCloseKeepOpen, body),
        ),
    ];
    let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
    for (job, f) in &targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{}']\n",
            f.addr
        ));
    }
    let perch = Perch::start("scrape-keepalive", Some(&config));
    wait_until(Duration::from_secs(30), || {
        targets.iter().all(|(_, f)| f.hits() >= 5)
    });
    for (job, f) in &targets {
        let (hits, conns) = (f.hits(), f.conns());
        if *job == "keep" {
            assert_eq!(conns, 1, "{job}: {hits} scrapes");
        } else {
            // A scrape may have connected and not yet sent its request.
            assert!(
                conns == hits || conns == hits + 1,
                "{job}: {conns} connections, {hits} scrapes"
            );
        }
        // Every scrape succeeded (`up` always 1) and stored the body.
        let over = |f: &str, m: &str| -> usize {
            let r = query(perch.port, &format!("{f}({m}{{job=\"{job}\"}}[1h])"));
            r[0]["value"][1].as_str().unwrap().parse().unwrap()
        };
        let scrapes = over("count_over_time", "up");
        assert!(scrapes >= 5, "{job}: {scrapes} scrapes");
        assert_eq!(
            over("sum_over_time", "up"),
            scrapes,
            "{job}: failed scrapes"
        );
        assert_eq!(
            over("count_over_time", "kept_total"),
            scrapes,
            "{job}: samples"
        );
    }
}
