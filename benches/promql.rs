//! PromQL benchmark: typical dashboard queries over the shared recording.
//!
//! `cargo bench --bench promql` loads `../shared/data/node-1s.om.zst` (20 minutes of node
//! exporter, Prometheus and VictoriaMetrics scraped every second: 1,576 series, 1.87M samples)
//! into the flash store (over a memory backend, appended a timestamp at a time and flushed every
//! minute of data, as the agent does), then runs each query several times and prints the median and the
//! fastest latency:
//! - as a Grafana panel asks it: a range query over the last hour of the recording at a 15 s
//!   step (240 steps; the recording fills the last 20 minutes of it);
//! - as an instant query at the recording's end.
//!
//! The queries are those of `../shared/bench/query_latency.py` (which compares with Prometheus
//! 2.42 through the HTTP API) plus a rate over ~1.2k series, a sum over all 1,576, and a
//! quantile per handler. The engine is timed alone: no HTTP, no JSON.

use futures_lite::future::block_on;
use perch::model::{Labels, Sample};
use perch::promql::{Engine, EngineOptions, Value};
use perch::scrape::parse::{Entry, Format, TextParser};
use perch::storage::flash::{FlashOptions, FlashStorage};
use perch::storage::Storage;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

const RUNS: usize = 7;
const STEP_MS: i64 = 15_000;
const RANGE_MS: i64 = 3_600_000;

/// Queries run over the recording with each series' name copied into a `metric` label: there no
/// family has more than 155 series, and `rate` over many families drops the names, so their
/// series would collide ("vector cannot contain metrics with the same labelset").
const NAMED_QUERIES: [&str; 2] = [
    // ~1.2k series.
    r#"rate({job=~"node|victoriametrics"}[1m])"#,
    r#"sum by (job) (rate({__name__=~".+"}[5m]))"#,
];

/// Queries run over the recording as it is.
const QUERIES: [&str; 11] = [
    // ../shared/bench/query_latency.py
    "rate(node_cpu_seconds_total[1m])",
    "sum by (mode) (rate(node_cpu_seconds_total[1m]))",
    "topk(5, rate(node_network_receive_bytes_total[1m]))",
    "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[1m])))",
    r#"count by (job) ({__name__=~".+"})"#,
    "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes",
    "avg_over_time(process_resident_memory_bytes[5m])",
    "max_over_time(go_goroutines[10m])",
    "sum by (instance) (increase(process_cpu_seconds_total[2m]))",
    "predict_linear(node_filesystem_free_bytes[10m], 3600)",
    "histogram_quantile(0.99, sum by (handler, le) (rate(prometheus_http_response_size_bytes_bucket[1m])))",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The recording in a flash store over memory, appended as the agent's scrapes append it (one
/// batch per timestamp) and flushed every minute of data as the agent flushes, so queries read
/// 60 s blocks as on a board.
fn store_of(series: &[(Labels, Vec<Sample>)], name_label: bool) -> FlashStorage {
    let store = FlashStorage::in_memory(FlashOptions {
        retention_ms: 100 * 365 * 86_400_000,
        budget_bytes: 1 << 30,
        max_head_bytes: 1 << 30,
        ..FlashOptions::default()
    })
    .expect("an empty flash store opens");
    let labels: Vec<Labels> = series
        .iter()
        .map(|(l, _)| match name_label {
            true => l.builder().set("metric", l.metric_name()).build(),
            false => l.clone(),
        })
        .collect();
    let mut points: Vec<(i64, usize, f64)> = series
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ss))| ss.iter().map(move |s| (s.t, i, s.v)))
        .collect();
    points.sort_by_key(|p| (p.0, p.1));
    let mut refs = vec![None; series.len()];
    let mut flushed_at = points.first().map_or(0, |p| p.0);
    for batch in points.chunk_by(|a, b| a.0 == b.0) {
        let t = batch[0].0;
        if t - flushed_at >= 60_000 {
            store.flush().expect("flush");
            flushed_at = t;
        }
        let mut app = store.appender();
        for &(t, i, v) in batch {
            match refs[i] {
                Some(r) => app.append_ref(r, t, v).expect("append"),
                None => refs[i] = Some(app.append(&labels[i], t, v).expect("append")),
            }
        }
        app.commit().expect("commit");
    }
    store.flush().expect("flush");
    store
}

/// Loads the recording: its series and the newest timestamp (ms).
fn load(path: &Path) -> (Vec<(Labels, Vec<Sample>)>, i64) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the benchmark reads ../shared/data in place)",
            path.display()
        )
    });
    let mut text = Vec::new();
    zstd::stream::read::Decoder::new(file)
        .and_then(|mut d| d.read_to_end(&mut text))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // The recording is grouped by metric family: collect each series' samples first.
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut series: Vec<(Labels, Vec<Sample>)> = Vec::new();
    let mut pairs = Vec::new();
    let mut p = TextParser::with_format(&text, Format::OpenMetrics);
    let mut newest = i64::MIN;
    while let Some(e) = p.next_entry() {
        let s = match e {
            Ok(Entry::Sample(s)) => s,
            Ok(_) => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let t = s.timestamp.expect("the recording has timestamps");
        newest = newest.max(t);
        let i = *index.entry(s.series).or_insert_with(|| {
            s.parse_labels(&mut pairs).expect("recorded labels parse");
            let mut all: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_ref())).collect();
            all.push(("__name__", s.name));
            series.push((Labels::from_pairs(&all), Vec::new()));
            series.len() - 1
        });
        series[i].1.push(Sample { t, v: s.value });
    }
    (series, newest)
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/node-1s.om.zst");
    let t0 = Instant::now();
    let (series, end) = load(&path);
    let samples: usize = series.iter().map(|s| s.1.len()).sum();
    let store = store_of(&series, false);
    let named = store_of(&series, true);
    drop(series);
    println!(
        "loaded {samples} samples of {} series in {:.1} s; range queries: the last 1h at {} s step ({} steps), instant queries at the end; median (min) of {RUNS} runs",
        store.stats().series,
        t0.elapsed().as_secs_f64(),
        STEP_MS / 1000,
        RANGE_MS / STEP_MS + 1
    );
    let start = end - RANGE_MS;
    let engine = Engine::new(EngineOptions::default());
    let (q, qn) = (store.querier(), named.querier());
    println!(
        "{:<104} {:>7} {:>8} {:>17} {:>15}",
        "query", "series", "points", "range ms", "instant ms"
    );
    let all = NAMED_QUERIES
        .iter()
        .map(|e| (qn.as_ref(), *e, "  [+metric]"))
        .chain(QUERIES.iter().map(|e| (q.as_ref(), *e, "")));
    for (q, expr, note) in all {
        let (mut range, mut instant) = (Vec::new(), Vec::new());
        let (mut n_series, mut points) = (0, 0);
        for _ in 0..RUNS {
            let t = Instant::now();
            let r = block_on(engine.range(q, expr, start, end, STEP_MS))
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
            range.push(t.elapsed().as_secs_f64() * 1e3);
            if let Value::Matrix(m) = &r.value {
                n_series = m.len();
                points = m.iter().map(|s| s.samples.len()).sum();
            }
            let t = Instant::now();
            let r =
                block_on(engine.instant(q, expr, end)).unwrap_or_else(|e| panic!("{expr}: {e}"));
            instant.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(r);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{:<104} {:>7} {:>8} {:>8.2} ({:>6.2}) {:>6.3} ({:>6.3})",
            format!("{expr}{note}"),
            n_series,
            points,
            median(range.clone()),
            min(&range),
            median(instant.clone()),
            min(&instant)
        );
    }
}
