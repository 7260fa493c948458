//! `scheme: https` (issue #4): scrapes over TLS against fixture targets with the certificates
//! of `tests/data/tls/` (see its `gen.sh`), with `tls_config` as Prometheus configures it.
//! Only in builds with the `tls` feature (the default).

use crate::scrape::{api, query};
use crate::support::{data_dir, threads, wait_until, ConnPolicy, Fixture, Perch};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A file of `tests/data/tls/`, as a config names it.
fn tls_file(name: &str) -> String {
    data_dir().join("tls").join(name).display().to_string()
}

/// Every target's health and last error, by job, once each was scraped `n` times.
fn health_after(port: u16, jobs: usize, n: usize) -> BTreeMap<String, (String, String)> {
    wait_until(Duration::from_secs(30), || {
        let r = query(port, &format!("count_over_time(up[1h]) >= {n}"));
        r.as_array().unwrap().len() == jobs
    });
    let targets = api(port, "/api/v1/targets?state=active");
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    targets["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                text(&t["scrapePool"]),
                (text(&t["health"]), text(&t["lastError"])),
            )
        })
        .collect()
}

/// One job per way of trusting (or not) an https target: the test CA (by IP and by name),
/// `insecure_skip_verify` without a CA, a client certificate for a target that asks for one,
/// and the failures: a CA that did not sign the server's certificate, a `server_name` the
/// certificate is not for, no client certificate where one is asked for. Keep-alive works over
/// TLS: the target scraped through the test CA (alone on its fixture) gets one connection; and
/// Perch keeps to its three threads (no TLS thread).
#[test]
fn https_targets_with_tls_config() {
    let body = |n: usize| format!("secure_total {n}\n").into_bytes();
    let keep = ConnPolicy::KeepAlive(Duration::from_secs(60));
    let kept = Fixture::tls(keep, false, body);
    let plain = Fixture::tls(keep, false, body);
    let mtls = Fixture::tls(keep, true, body);
    let port = |f: &Fixture| f.addr.rsplit(':').next().unwrap().to_owned();
    let jobs = [
        (
            "ca",
            kept.addr.clone(),
            format!("ca_file: {}", tls_file("ca.crt")),
        ),
        (
            "by_name",
            format!("localhost:{}", port(&plain)),
            format!("ca_file: {}", tls_file("ca.crt")),
        ),
        (
            "insecure",
            plain.addr.clone(),
            "insecure_skip_verify: true".into(),
        ),
        (
            "client_cert",
            mtls.addr.clone(),
            format!(
                "{{ca_file: {}, cert_file: {}, key_file: {}}}",
                tls_file("ca.crt"),
                tls_file("client.crt"),
                tls_file("client.key")
            ),
        ),
        (
            "wrong_ca",
            plain.addr.clone(),
            format!("ca_file: {}", tls_file("other-ca.crt")),
        ),
        (
            "wrong_name",
            plain.addr.clone(),
            format!(
                "{{ca_file: {}, server_name: other.example}}",
                tls_file("ca.crt")
            ),
        ),
        (
            "no_client_cert",
            mtls.addr.clone(),
            format!("ca_file: {}", tls_file("ca.crt")),
        ),
    ];
    let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
    for (job, target, tls) in &jobs {
        let tls = if tls.starts_with('{') {
            tls.clone()
        } else {
            format!("{{{tls}}}")
        };
        config.push_str(&format!(
            "  - job_name: {job}\n    scheme: https\n    tls_config: {tls}\n    static_configs:\n      - targets: ['{target}']\n"
        ));
    }
    let perch = Perch::start("scrape-tls", Some(&config));
    let health = health_after(perch.port, jobs.len(), 3);
    for job in ["ca", "by_name", "insecure", "client_cert"] {
        assert_eq!(health[job], ("up".into(), String::new()), "{job}");
        let stored = query(
            perch.port,
            &format!("count_over_time(secure_total{{job=\"{job}\"}}[1h])"),
        );
        let stored: usize = stored[0]["value"][1].as_str().unwrap().parse().unwrap();
        assert!(stored >= 3, "{job}: {stored} samples");
    }
    let down = |job: &str, words: &str| {
        let (h, e) = &health[job];
        assert_eq!(h, "down", "{job}");
        assert!(e.contains(words), "{job}: {e:?} should say {words:?}");
    };
    down("wrong_ca", "x509: certificate signed by unknown authority");
    down("wrong_name", "not valid for name \"other.example\"");
    down("no_client_cert", "tls: received fatal alert");
    // TLS runs on the executor: no thread beyond the executor, async-io and fsync threads.
    assert!(
        threads(perch.pid()) <= 3,
        "{} threads",
        threads(perch.pid())
    );
    // Keep-alive over TLS: the `ca` job's target, alone on its fixture, has one connection.
    assert!(kept.hits() >= 3);
    assert_eq!(kept.conns(), 1, "{} scrapes", kept.hits());
}
