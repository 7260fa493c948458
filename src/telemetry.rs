//! Perch's own metrics: counters the layers bump, and the `/metrics` text they are served as.
//!
//! A leaf module like [`crate::model`]: the scraper and the web server count into one shared
//! [`Telemetry`] (an `Rc` on the executor thread, interior mutability with `Cell`/`RefCell`);
//! the runtime adds process figures read from `/proc/self` and the store's own figures at render
//! time. Label sets are bounded: scrape results by job (jobs come from the config), HTTP requests
//! by handler (a fixed list of routes) and status code.

use crate::storage::StorageStats;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;

/// How a scrape ended, for `perch_scrapes_total{result=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScrapeResult {
    Success,
    /// Fetching failed (connection, HTTP status, body too large).
    FetchError,
    /// The body did not parse.
    ParseError,
    Timeout,
    /// A limit of the job failed the scrape (`sample_limit`, a label limit, `target_limit`).
    LimitExceeded,
}

impl ScrapeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeResult::Success => "success",
            ScrapeResult::FetchError => "fetch_error",
            ScrapeResult::ParseError => "parse_error",
            ScrapeResult::Timeout => "timeout",
            ScrapeResult::LimitExceeded => "limit_exceeded",
        }
    }
}

/// The counters. One per process, shared.
#[derive(Debug, Default)]
pub struct Telemetry {
    scrapes: RefCell<BTreeMap<(String, ScrapeResult), u64>>,
    http_requests: RefCell<BTreeMap<(&'static str, u16), u64>>,
    /// Request durations and response sizes by handler.
    http_histograms: RefCell<BTreeMap<&'static str, HttpHistograms>>,
    /// How much later than its slot each scrape started, every job together.
    scrape_lateness: RefCell<ScrapeLateness>,
    /// Samples a scrape wanted to store but the store refused (out of order, duplicates, limits).
    pub samples_rejected: Cell<u64>,
    /// `dns_sd_configs` lookups, and those that failed (names kept their targets).
    pub sd_dns_lookups: Cell<u64>,
    pub sd_dns_lookup_failures: Cell<u64>,
    /// `mdns_sd_configs` queries sent, and received packets ignored as malformed.
    pub sd_mdns_queries: Cell<u64>,
    pub sd_mdns_bad_packets: Cell<u64>,
    /// Process start, Unix seconds.
    pub start_time: Cell<f64>,
}

impl Telemetry {
    pub fn new(start_time: f64) -> Self {
        let t = Telemetry::default();
        t.start_time.set(start_time);
        t
    }

    pub fn scrape_done(&self, job: &str, result: ScrapeResult) {
        *self
            .scrapes
            .borrow_mut()
            .entry((job.to_owned(), result))
            .or_default() += 1;
    }

    /// Records how late (seconds) a scrape started after its scheduled slot.
    pub fn scrape_late(&self, seconds: f64) {
        self.scrape_lateness
            .borrow_mut()
            .0
            .observe(seconds.max(0.0));
    }

    pub fn http_request(&self, handler: &'static str, code: u16) {
        *self
            .http_requests
            .borrow_mut()
            .entry((handler, code))
            .or_default() += 1;
    }

    /// Records one request's duration (seconds) and response body size (bytes).
    pub fn http_observe(&self, handler: &'static str, seconds: f64, bytes: u64) {
        let mut h = self.http_histograms.borrow_mut();
        let e = h.entry(handler).or_default();
        e.duration.observe(seconds);
        e.size.observe(bytes as f64);
    }

    /// Renders everything in the text format 0.0.4.
    pub fn render(&self, storage: &StorageStats, out: &mut String) {
        let p = ProcessStats::read();
        let start = self.start_time.get();
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.rss_bytes as f64,
        );
        gauge(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.vsize_bytes as f64,
        );
        counter(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        );
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as f64,
        );
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds as f64,
        );
        gauge(
            out,
            "process_threads",
            "Number of OS threads in the process.",
            p.threads as f64,
        );
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
        let _ = writeln!(out, "# HELP perch_build_info A metric with a constant '1' value labeled by the version of Perch.\n# TYPE perch_build_info gauge\nperch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        gauge(
            out,
            "perch_tsdb_head_series",
            "Number of series in the store.",
            storage.series as f64,
        );
        gauge(
            out,
            "perch_tsdb_head_samples",
            "Number of samples held in memory.",
            storage.samples_in_memory as f64,
        );
        counter(
            out,
            "perch_tsdb_samples_appended_total",
            "Total number of samples appended to the store.",
            storage.samples_appended_total as f64,
        );
        counter(
            out,
            "perch_tsdb_out_of_order_samples_total",
            "Total number of out of order samples rejected.",
            storage.out_of_order_total as f64,
        );
        counter(
            out,
            "perch_tsdb_duplicate_samples_total",
            "Total number of samples rejected for a duplicate timestamp with a different value.",
            storage.duplicate_total as f64,
        );
        gauge(
            out,
            "perch_tsdb_memory_bytes",
            "Approximate bytes of memory the store holds.",
            storage.memory_bytes as f64,
        );
        gauge(
            out,
            "perch_storage_disk_bytes",
            "Bytes the store keeps on disk, everything counted.",
            storage.disk_bytes as f64,
        );
        counter(
            out,
            "perch_storage_written_bytes_total",
            "Bytes the store wrote to disk.",
            storage.bytes_written_total as f64,
        );
        counter(
            out,
            "perch_storage_corrupt_records_total",
            "Torn or corrupt records found and skipped.",
            storage.corrupt_records_total as f64,
        );
        counter(
            out,
            "perch_storage_write_errors_total",
            "Failed writes; their samples stay in memory and are written later.",
            storage.write_errors_total as f64,
        );
        counter(
            out,
            "perch_storage_write_seconds_total",
            "Time spent in the store's appends, and in the fdatasync run in place, on the executor thread.",
            storage.write_micros_total as f64 / 1e6,
        );
        gauge(
            out,
            "perch_storage_write_seconds_max",
            "The longest single append (with its fdatasync, when that runs on the executor thread) since start.",
            storage.write_micros_max as f64 / 1e6,
        );
        counter(
            out,
            "perch_storage_fsync_thread_seconds_total",
            "Time the fsync thread spent in fdatasync for flushes and imports, off the executor.",
            storage.sync_micros_total as f64 / 1e6,
        );
        gauge(
            out,
            "perch_storage_fsync_thread_seconds_max",
            "The longest sync on the fsync thread since start (an SD card's stalls show here).",
            storage.sync_micros_max as f64 / 1e6,
        );
        if let Some(t) = storage.min_time {
            gauge(
                out,
                "perch_tsdb_lowest_timestamp_seconds",
                "Lowest timestamp in the store.",
                t as f64 / 1000.0,
            );
        }
        if let Some(t) = storage.max_time {
            gauge(
                out,
                "perch_tsdb_highest_timestamp_seconds",
                "Highest timestamp in the store.",
                t as f64 / 1000.0,
            );
        }
        counter(
            out,
            "perch_scrape_samples_rejected_total",
            "Scraped samples the store refused (out of order, duplicate, limits).",
            self.samples_rejected.get() as f64,
        );
        for (name, help, v) in [
            (
                "prometheus_sd_dns_lookups_total",
                "The number of DNS-SD lookups.",
                &self.sd_dns_lookups,
            ),
            (
                "prometheus_sd_dns_lookup_failures_total",
                "The number of DNS-SD lookup failures.",
                &self.sd_dns_lookup_failures,
            ),
            (
                "perch_sd_mdns_queries_total",
                "Multicast DNS queries sent by mdns_sd_configs.",
                &self.sd_mdns_queries,
            ),
            (
                "perch_sd_mdns_bad_packets_total",
                "Multicast DNS packets ignored as malformed or too large.",
                &self.sd_mdns_bad_packets,
            ),
        ] {
            counter(out, name, help, v.get() as f64);
        }
        let _ = writeln!(out, "# HELP perch_scrapes_total Scrapes by job and result.\n# TYPE perch_scrapes_total counter");
        for ((job, result), n) in self.scrapes.borrow().iter() {
            let _ = write!(out, "perch_scrapes_total{{job=\"");
            let _ = crate::model::write_escaped(out, job);
            let _ = writeln!(out, "\",result=\"{}\"}} {n}", result.as_str());
        }
        let _ = writeln!(out, "# HELP perch_scrape_lateness_seconds How much later than its scheduled slot a scrape started (a skipped slot counts from the slot missed).\n# TYPE perch_scrape_lateness_seconds histogram");
        self.scrape_lateness
            .borrow()
            .0
            .render_labels(out, "perch_scrape_lateness_seconds", "");
        let _ = writeln!(out, "# HELP perch_http_requests_total HTTP requests by handler and status code.\n# TYPE perch_http_requests_total counter");
        for ((handler, code), n) in self.http_requests.borrow().iter() {
            let _ = writeln!(
                out,
                "perch_http_requests_total{{code=\"{code}\",handler=\"{handler}\"}} {n}"
            );
        }
        let hists = self.http_histograms.borrow();
        let _ = writeln!(out, "# HELP perch_http_request_duration_seconds Latencies of HTTP requests by handler.\n# TYPE perch_http_request_duration_seconds histogram");
        for (handler, h) in hists.iter() {
            h.duration
                .render(out, "perch_http_request_duration_seconds", handler);
        }
        let _ = writeln!(out, "# HELP perch_http_response_size_bytes Sizes of HTTP response bodies (as sent, after compression) by handler.\n# TYPE perch_http_response_size_bytes histogram");
        for (handler, h) in hists.iter() {
            h.size
                .render(out, "perch_http_response_size_bytes", handler);
        }
    }
}

/// Prometheus's buckets for `prometheus_http_request_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[0.1, 0.2, 0.4, 1.0, 3.0, 8.0, 20.0, 60.0, 120.0];
/// Prometheus's buckets for `prometheus_http_response_size_bytes` (100 × 10^i).
const SIZE_BUCKETS: &[f64] = &[1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Buckets for `perch_scrape_lateness_seconds`: 1 ms to 10 s.
const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram (cumulative counts are computed when rendered).
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, handler: &str) {
        let mut labels = String::from("handler=\"");
        let _ = crate::model::write_escaped(&mut labels, handler);
        labels.push('"');
        self.render_labels(out, name, &labels);
    }

    /// Renders `_bucket`, `_sum` and `_count` with `labels` (`a="x",b="y"`, or empty) on each.
    fn render_labels(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c;
            let le = self
                .bounds
                .get(i)
                .map(|b| fmt_value(*b))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}\n{name}_count{braces} {cum}",
            fmt_value(self.sum)
        );
    }
}

#[derive(Debug)]
struct HttpHistograms {
    duration: Histogram,
    size: Histogram,
}

impl Default for HttpHistograms {
    fn default() -> Self {
        HttpHistograms {
            duration: Histogram::new(DURATION_BUCKETS),
            size: Histogram::new(SIZE_BUCKETS),
        }
    }
}

/// The lateness histogram, in a type of its own so [`Telemetry`] keeps its `Default`.
#[derive(Debug)]
struct ScrapeLateness(Histogram);

impl Default for ScrapeLateness {
    fn default() -> Self {
        ScrapeLateness(Histogram::new(LATENESS_BUCKETS))
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
        fmt_value(v)
    );
}

fn counter(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        fmt_value(v)
    );
}

/// A float as the text format writes it (`+Inf`, `NaN`, shortest round-trip digits).
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Figures about this process from `/proc/self` (zeros where unavailable).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    pub fn read() -> Self {
        let mut s = ProcessStats::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; see proc(5).
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                // utime(14) stime(15) num_threads(20) vsize(23) rss(24), counted from field 3.
                // USER_HZ is 100 on every Linux architecture Perch targets.
                s.cpu_seconds = (num(11) + num(12)) as f64 / 100.0;
                s.threads = num(17);
                s.vsize_bytes = num(20);
                s.rss_bytes = num(21) * 4096;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count().saturating_sub(1) as u64;
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
                s.max_fds = line
                    .split_whitespace()
                    .nth(3)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_process_figures() {
        let t = Telemetry::new(1.5);
        t.scrape_done("node", ScrapeResult::Success);
        t.scrape_done("node", ScrapeResult::Success);
        t.http_request("query", 200);
        t.http_observe("query", 0.15, 120);
        t.http_observe("query", 0.05, 20);
        let mut out = String::new();
        t.render(&StorageStats::default(), &mut out);
        assert!(
            out.contains("perch_scrapes_total{job=\"node\",result=\"success\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("perch_http_requests_total{code=\"200\",handler=\"query\"} 1\n"));
        assert!(out.contains("process_start_time_seconds 1.5\n"));
        for line in [
            "perch_http_request_duration_seconds_bucket{handler=\"query\",le=\"0.1\"} 1\n",
            "perch_http_request_duration_seconds_bucket{handler=\"query\",le=\"0.2\"} 2\n",
            "perch_http_request_duration_seconds_count{handler=\"query\"} 2\n",
            "perch_http_response_size_bytes_bucket{handler=\"query\",le=\"100\"} 1\n",
            "perch_http_response_size_bytes_bucket{handler=\"query\",le=\"+Inf\"} 2\n",
            "perch_http_response_size_bytes_sum{handler=\"query\"} 140\n",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
        let p = ProcessStats::read();
        assert!(p.rss_bytes > 0 && p.threads >= 1 && p.open_fds > 0);
    }

    #[test]
    fn renders_scrape_lateness_histogram() {
        let t = Telemetry::new(0.0);
        let mut out = String::new();
        t.render(&StorageStats::default(), &mut out);
        // Served from the start, with zeros, so a rate or a difference never misses a series.
        assert!(
            out.contains("perch_scrape_lateness_seconds_count 0\n"),
            "{out}"
        );
        for v in [0.0004, 0.003, 0.003, 0.07, 1.5, 42.0, -0.002] {
            t.scrape_late(v);
        }
        let mut out = String::new();
        t.render(&StorageStats::default(), &mut out);
        for line in [
            "# TYPE perch_scrape_lateness_seconds histogram\n",
            "perch_scrape_lateness_seconds_bucket{le=\"0.001\"} 2\n",
            "perch_scrape_lateness_seconds_bucket{le=\"0.005\"} 4\n",
            "perch_scrape_lateness_seconds_bucket{le=\"0.05\"} 4\n",
            "perch_scrape_lateness_seconds_bucket{le=\"0.1\"} 5\n",
            "perch_scrape_lateness_seconds_bucket{le=\"1\"} 5\n",
            "perch_scrape_lateness_seconds_bucket{le=\"2.5\"} 6\n",
            "perch_scrape_lateness_seconds_bucket{le=\"10\"} 6\n",
            "perch_scrape_lateness_seconds_bucket{le=\"+Inf\"} 7\n",
            "perch_scrape_lateness_seconds_count 7\n",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("perch_scrape_lateness_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 43.5764).abs() < 1e-9, "{sum}");
    }
}
