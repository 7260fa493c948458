//! Resident memory per active series: what each series more costs the running agent.
//!
//! `cargo bench --bench series_memory` starts the release binary (built by cargo for the bench)
//! three times side by side, each scraping one target of N series every second with the default
//! settings (flush every 60 s), for N = 10k, 20k and 40k. Every series is a counter that moves at
//! each scrape, so every head holds a minute of real samples before the flush. Over 75 s (one
//! flush, and the head filling up to it) it samples each agent's `VmRSS` every second and prints
//! the peak and the last sample, then the growth per added series between the sizes. The goal
//! (issue 3): at most 1 KiB more per additional active series at 10k and beyond.
//!
//! `SERIES_MEMORY_SECS` changes the length of the run.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};
use support::{temp_dir, Fixture, Perch};

const SIZES: [usize; 3] = [10_000, 20_000, 40_000];
const NAMES: usize = 40;

/// The body of scrape `n` of a target of `series` counters: 40 metric names, two labels each.
fn body(series: usize, n: usize) -> Vec<u8> {
    let mut b = String::with_capacity(series * 64);
    for name in 0..NAMES {
        b.push_str(&format!("# TYPE series_memory_{name}_total counter\n"));
        for i in (name..series).step_by(NAMES) {
            let v = n * (i % 7 + 1);
            b.push_str(&format!(
                "series_memory_{name}_total{{device=\"dev{}\",shard=\"{i}\"}} {v}\n",
                i / NAMES % 64
            ));
        }
    }
    b.into_bytes()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let secs: u64 = std::env::var("SERIES_MEMORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75);
    let runs: Vec<(usize, Fixture, Perch)> = SIZES
        .iter()
        .map(|&size| {
            let target = Fixture::serve("text/plain; version=0.0.4", false, move |n| {
                body(size, n)
            });
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: series\n    static_configs:\n      - targets: [\"{}\"]\n",
                target.addr
            );
            let perch = Perch::start_in(temp_dir("series-memory"), Some(&config), &[]);
            (size, target, perch)
        })
        .collect();
    println!(
        "{}: {} agents side by side, one target each of {SIZES:?} series at 1 s, {secs} s",
        env!("CARGO_BIN_EXE_perch"),
        SIZES.len()
    );
    let start = Instant::now();
    let mut peak = vec![0u64; runs.len()];
    let mut last = vec![0u64; runs.len()];
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for (k, (_, _, p)) in runs.iter().enumerate() {
            last[k] = rss_kib(p.pid());
            peak[k] = peak[k].max(last[k]);
        }
    }
    for (k, (size, target, p)) in runs.iter().enumerate() {
        let (_, series) = p.get("/api/v1/query?query=count(%7Bjob%3D%22series%22%7D)");
        let stored = series
            .split("\"value\":[")
            .nth(1)
            .and_then(|v| v.split('"').nth(1))
            .unwrap_or("?")
            .to_owned();
        println!(
            "{size:>6} series ({stored} stored, {} scrapes): peak {:.1} MB, last {:.1} MB",
            target.hits(),
            peak[k] as f64 / 1024.0,
            last[k] as f64 / 1024.0
        );
    }
    for k in 1..runs.len() {
        let added = (runs[k].0 - runs[k - 1].0) as f64;
        let per = |v: &[u64]| (v[k] as f64 - v[k - 1] as f64) * 1024.0 / added;
        println!(
            "{} -> {} series: {:.0} B per added series at the peak, {:.0} B at the last sample",
            runs[k - 1].0,
            runs[k].0,
            per(&peak),
            per(&last)
        );
    }
}
