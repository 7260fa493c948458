//! The store seen from outside: data survives a clean restart, and the byte budget holds.

use crate::e2e::{cases, check, config_for, fixture_bodies};
use crate::support::{temp_dir, wait_until, Fixture, Perch};
use std::time::Duration;

fn du_bytes(dir: &std::path::Path) -> u64 {
    let mut total = std::fs::metadata(dir).map(|m| m.len()).unwrap_or(0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

#[test]
fn samples_survive_a_restart() {
    let fixture = Fixture::start(fixture_bodies());
    let perch = Perch::start_in(temp_dir("restart"), Some(&config_for(&fixture.addr)), &[]);
    wait_until(Duration::from_secs(30), || fixture.hits() >= 3);
    wait_until(Duration::from_secs(10), || {
        let (_, b) = perch.get("/api/v1/query?query=count_over_time(fixture_temperature_celsius%7Bsensor%3D%22cpu%22%7D%5B1m%5D)&time=1700000030");
        b.contains("\"3\"")
    });
    let (code, dir) = perch.stop();
    assert_eq!(code, Some(0));
    assert!(
        std::fs::read_dir(dir.join("data")).unwrap().count() > 0,
        "nothing written"
    );
    // Restarted with no scrape jobs: every answer must come from disk.
    let perch = Perch::start_in(dir, Some(""), &[]);
    let mut failures = Vec::new();
    for (name, endpoint, chk, params) in cases() {
        let (s, b) = perch.get(&format!("/api/v1/{endpoint}?{params}"));
        failures.extend(check(&name, &chk, s, &b));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_byte_budget_holds_while_scraping() {
    let fixture = Fixture::start(vec![std::fs::read(
        crate::support::data_dir().join("e2e/scrape-1.prom"),
    )
    .unwrap()]);
    let dir = temp_dir("budget");
    let data = dir.join("data");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: [\"{}\"]\n",
        fixture.addr
    );
    let perch = Perch::start_in(
        dir,
        Some(&config),
        &[
            "--storage.tsdb.retention.size",
            "20KB",
            "--storage.flush-interval",
            "1s",
        ],
    );
    let start = std::time::Instant::now();
    let mut max = 0;
    while start.elapsed() < Duration::from_secs(6) {
        max = max.max(du_bytes(&data));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(max > 0, "nothing written");
    assert!(max <= 20 * 1024, "{max} bytes under a 20KB budget");
    let (s, b) = perch.get("/api/v1/query?query=up");
    assert_eq!(s, 200);
    assert!(b.contains("\"1\"]"), "{b}");
}

#[test]
fn import_then_query_gives_prometheus_answers() {
    for compressed in [false, true] {
        let dir = temp_dir("import");
        let text = crate::e2e::fixture_openmetrics();
        let file = if compressed {
            let f = dir.join("fixture.om.zst");
            std::fs::write(&f, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
            f
        } else {
            let f = dir.join("fixture.om");
            std::fs::write(&f, &text).unwrap();
            f
        };
        let said = crate::support::perch_import(&file, &dir.join("data"), &[]);
        assert!(said.contains("imported 15 samples of 5 series"), "{said}");
        let perch = Perch::start_in(dir, Some(""), &[]);
        let mut failures = Vec::new();
        for (name, endpoint, chk, params) in cases() {
            let (s, b) = perch.get(&format!("/api/v1/{endpoint}?{params}"));
            failures.extend(check(&name, &chk, s, &b));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn import_reports_the_bad_line() {
    let dir = temp_dir("import-bad");
    let f = dir.join("bad.om");
    std::fs::write(&f, "a 1 1.5\na{ 2 3\n# EOF\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_perch"))
        .arg("import")
        .arg(&f)
        .arg("--storage.tsdb.path")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
