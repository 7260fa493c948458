//! Cooperative evaluation, seen from outside: while a query runs for seconds, scrapes keep to
//! their slots (`perch_scrape_lateness_seconds`) and `/metrics` keeps answering.
//!
//! Timing-sensitive by nature, so the bounds are wide: a scrape must not be late by a full
//! interval (1 s), and the fixture must be scraped about once a second through the query.

use crate::support::{get, request, wait_until, Fixture, Perch};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Series served by the big target.
const BIG_SERIES: usize = 20_000;
/// Groups of the `g` label of the big series: the query's output series.
const GROUPS: usize = 20;

/// A target serving `BIG_SERIES` counters that grow with every scrape; returns its address and
/// its hit count.
pub fn big_target() -> (String, Arc<AtomicUsize>) {
    let f = crate::support::Fixture::serve("text/plain; version=0.0.4", false, |n| {
        let n = n + 1;
        let mut body = String::with_capacity(BIG_SERIES * 48);
        body.push_str("# TYPE big_requests_total counter\n");
        for i in 0..BIG_SERIES {
            let g = i % GROUPS;
            let v = n * (i % 7 + 1);
            body.push_str(&format!("big_requests_total{{g=\"{g}\",i=\"{i}\"}} {v}\n"));
        }
        body.into_bytes()
    });
    (f.addr, f.hits)
}

/// `(le, cumulative count)` of every `perch_scrape_lateness_seconds_bucket` line, in order.
pub fn lateness_buckets(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("perch_scrape_lateness_seconds_bucket{le=\""))
        .map(|rest| {
            let (le, count) = rest.split_once("\"} ").expect("bucket line");
            (le.to_owned(), count.parse().expect("bucket count"))
        })
        .collect()
}

fn bucket(buckets: &[(String, u64)], le: &str) -> u64 {
    buckets
        .iter()
        .find(|(l, _)| l == le)
        .unwrap_or_else(|| panic!("no le=\"{le}\" bucket in {buckets:?}"))
        .1
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn scrapes_stay_on_schedule_during_a_query_of_several_seconds() {
    let test_start = Instant::now();
    let fixture = Fixture::start(vec![b"lateness_fixture_value 1\n".to_vec()]);
    let (big, big_hits) = big_target();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fixture\n    static_configs:\n      - targets: [\"{}\"]\n  - job_name: big\n    static_configs:\n      - targets: [\"{big}\"]\n",
        fixture.addr
    );
    let data_start = unix_now();
    let perch = Perch::start("lateness", Some(&config));
    // About ten seconds of data: 200k samples of the big target.
    wait_until(Duration::from_secs(30), || {
        big_hits.load(Ordering::SeqCst) >= 10
    });

    // Every big series over the whole stretch at a small step: each step reads about 30 s of
    // samples of 20k series, so the query takes seconds (5 s in a debug build on 2 cores at a
    // 20 ms step). On a faster machine, the step is halved until it takes 2 s.
    let port = perch.port;
    let mut attempt = 0;
    let (answer, took, hits_during, count_before, reads) = loop {
        let step = 0.02 / (1 << attempt) as f64;
        attempt += 1;
        let end = unix_now();
        let form = format!(
            "query={}&start={data_start:.3}&end={end:.3}&step={step}",
            form_urlencoded::byte_serialize(
                br#"sum by (g) (rate({__name__=~"big.*"}[30s]))"#.as_slice()
            )
            .collect::<String>()
        );
        let hits_before = fixture.hits();
        let (_, before) = perch.get("/metrics");
        let count_before = bucket(&lateness_buckets(&before), "+Inf");
        let q_start = Instant::now();
        let query = std::thread::spawn(move || {
            let r = request(port, "POST", "/api/v1/query_range", Some(&form));
            (r, q_start.elapsed())
        });
        // Meanwhile, /metrics keeps answering and the histogram keeps counting.
        let mut reads = Vec::new();
        while !query.is_finished() {
            let t = Instant::now();
            let (status, body) = get(port, "/metrics").expect("GET /metrics during the query");
            assert_eq!(status, 200);
            reads.push((t.elapsed(), bucket(&lateness_buckets(&body), "+Inf")));
            std::thread::sleep(Duration::from_millis(200));
        }
        let (answer, took) = query.join().unwrap();
        let hits_during = fixture.hits() - hits_before;
        if took >= Duration::from_secs(2) || attempt == 3 {
            break (answer, took, hits_during, count_before, reads);
        }
        eprintln!("query took {took:?} at a {step} s step: again at half the step");
    };
    let (status, body) = answer.expect("query");
    assert_eq!(status, 200, "{}", &body[..body.len().min(500)]);
    assert!(
        body.starts_with("{\"status\":\"success\"") && body.contains("\"g\":\"19\""),
        "{}",
        &body[..body.len().min(500)]
    );
    let hits_total = fixture.hits() + big_hits.load(Ordering::SeqCst);
    let (_, after) = perch.get("/metrics");
    let buckets = lateness_buckets(&after);
    let slowest_read = reads.iter().map(|r| r.0).max().unwrap_or_default();
    eprintln!(
        "query {took:.2?} ({} bytes); fixture scraped {hits_during} times meanwhile; \
         {} /metrics reads, slowest {slowest_read:.2?}; lateness buckets {buckets:?}; \
         test {:.1?}",
        body.len(),
        reads.len(),
        test_start.elapsed()
    );

    // The query must be heavy enough to show anything.
    assert!(
        took >= Duration::from_secs(2),
        "the query took only {took:?}: make it heavier"
    );
    // Scrapes went on during the query, about one a second.
    let secs = took.as_secs();
    assert!(
        hits_during as u64 + 1 >= secs,
        "{hits_during} scrapes of the fixture during a query of {took:?}"
    );
    let during: Vec<u64> = reads.iter().map(|r| r.1).collect();
    assert!(
        during.last().copied().unwrap_or(0) > count_before,
        "the histogram did not count during the query: {count_before} then {during:?}"
    );
    // No scrape was late by a full interval, over the whole run.
    let late_by_an_interval = bucket(&buckets, "+Inf") - bucket(&buckets, "1");
    assert_eq!(
        late_by_an_interval, 0,
        "scrapes late by 1 s or more; buckets: {buckets:?}"
    );
    // Every scrape is counted (before it fetches).
    assert!(
        bucket(&buckets, "+Inf") >= hits_total as u64,
        "{hits_total} scrapes, histogram: {buckets:?}"
    );
}
