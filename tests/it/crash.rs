//! Power cuts from outside: SIGKILL the agent at random moments while it ingests, restart it on
//! the same directory each time, and check that every sample older than the flush window is
//! there, bit for bit, and that nothing reads back wrong.

use crate::support::{temp_dir, wait_until, Fixture, Perch};
use std::time::{Duration, Instant};

const BASE_MS: i64 = 1_700_000_000_000;

/// The value served with request `n`: decimals, integers and values only XOR can hold.
fn value(n: i64) -> f64 {
    match n % 3 {
        0 => n as f64 * 0.25,
        1 => n as f64,
        _ => n as f64 / 7.0,
    }
}

/// A target that serves sample `n` (timestamp BASE + n s) at its n-th request.
fn counting_target() -> Fixture {
    Fixture::serve("text/plain; version=0.0.4", false, |n| {
        let n = n as i64;
        format!(
            "crash_value{{k=\"a\"}} {:?} {}\ncrash_value{{k=\"b\"}} {:?} {}\n",
            value(n),
            BASE_MS + n * 1000,
            -value(n),
            BASE_MS + n * 1000
        )
        .into_bytes()
    })
}

/// Every stored sample of `crash_value{k=...}` as (n, value text), parsed from the API.
fn stored(perch: &Perch, k: &str) -> Vec<(i64, String)> {
    let (s, body) = perch.get(&format!(
        "/api/v1/query?query=crash_value%7Bk%3D%22{k}%22%7D%5B100y%5D&time=1900000000"
    ));
    assert_eq!(s, 200, "{body}");
    let Some(start) = body.find("\"values\":[") else {
        return Vec::new();
    };
    let list = &body[start + 10..];
    let mut out = Vec::new();
    for point in list.split("],[") {
        let point = point
            .trim_start_matches('[')
            .trim_end_matches("]}]}}")
            .trim_end_matches(']');
        let Some((t, v)) = point.split_once(',') else {
            continue;
        };
        let t: f64 = t.parse().unwrap();
        let n = ((t * 1000.0).round() as i64 - BASE_MS) / 1000;
        out.push((n, v.trim_matches('"').to_owned()));
    }
    out
}

#[test]
fn sigkill_at_random_moments_loses_only_the_flush_window() {
    let target = counting_target();
    let addr = &target.addr;
    let config = format!(
        "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\nscrape_configs:\n  - job_name: crash\n    static_configs:\n      - targets: [\"{addr}\"]\n"
    );
    let flush = Duration::from_millis(500);
    // A sample the running agent held this long before the kill was flushed (with slack).
    let window = flush * 2 + Duration::from_millis(300);
    let mut dir = temp_dir("crash");
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..8 {
        let perch = Perch::start_in(
            dir.clone(),
            Some(&config),
            &["--storage.flush-interval", "500ms"],
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(1500 + rng % 1500);
        // Snapshots of what the running agent holds, taken while it runs.
        let started = Instant::now();
        let mut snapshots: Vec<(Instant, Vec<i64>)> = Vec::new();
        while started.elapsed() < run_for {
            let at = Instant::now();
            let held: Vec<i64> = stored(&perch, "a").into_iter().map(|x| x.0).collect();
            snapshots.push((at, held));
            std::thread::sleep(Duration::from_millis(100));
        }
        let killed_at = Instant::now();
        dir = perch.kill();
        let must_have: Vec<i64> = snapshots
            .iter()
            .rev()
            .find(|(at, _)| killed_at.duration_since(*at) >= window)
            .map(|x| x.1.clone())
            .unwrap_or_default();

        let check = Perch::start_in(dir.clone(), Some(""), &[]);
        wait_until(Duration::from_secs(5), || check.get("/-/ready").0 == 200);
        for (k, sign) in [("a", 1.0), ("b", -1.0)] {
            let got = stored(&check, k);
            for (n, v) in &got {
                let want = sign * value(*n);
                let back: f64 = v.parse().unwrap();
                assert_eq!(
                    back.to_bits(),
                    want.to_bits(),
                    "round {round}: sample {n} of {k} reads back {v}"
                );
            }
            let have: std::collections::BTreeSet<i64> = got.iter().map(|x| x.0).collect();
            for n in &must_have {
                assert!(
                    have.contains(n),
                    "round {round}: sample {n} of {k}, held {window:?} before the kill, was lost"
                );
            }
        }
        let (_, d) = check.stop();
        dir = d;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
