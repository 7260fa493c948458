//! Ingest benchmark: the cost of the scrape path per sample, over real scrape bodies.
//!
//! `cargo bench --bench ingest` reads the recorded bodies in `../shared/data/` in place and
//! prints, per body, the median over several rounds of:
//! - parse: the text parser alone, every label parsed (ns per sample, MB/s);
//! - ingest: parse + scrape cache + append + commit into the flash store the agent runs on (over
//!   a memory backend, not flushed), as a scraper does from its second scrape on (ns per
//!   sample), and the store's memory per series afterwards;
//! - allocs/scrape: heap allocations (and reallocations) of one such scrape after warm-up,
//!   counted by a wrapper around the system allocator, into a fresh such store. The target is
//!   zero per sample: a scrape may allocate a few times in total, never once per sample.

use perch::scrape::parse::{Entry, TextParser};
use perch::scrape::scraper::Scraper;
use perch::scrape::{targets_of, TargetStatus};
use perch::storage::flash::{FlashOptions, FlashStorage};
use perch::storage::Storage;
use perch::telemetry::Telemetry;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;

/// The system allocator, counting allocations and reallocations.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counter is a relaxed atomic increment that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn parse_all(body: &[u8]) -> usize {
    let mut p = TextParser::new(body);
    let mut labels = Vec::new();
    let mut n = 0;
    while let Some(e) = p.next_entry() {
        if let Ok(Entry::Sample(s)) = e {
            s.parse_labels(&mut labels).expect("recorded body parses");
            n += 1;
        }
    }
    n
}

fn scraper(storage: Rc<dyn Storage>) -> Scraper {
    let cfg = perch::config::parse_yaml(
        "scrape_configs:\n  - job_name: bench\n    static_configs: [{targets: ['127.0.0.1:9100']}]\n",
        "bench",
    )
    .unwrap();
    let target = targets_of(&cfg.scrape_configs[0]).remove(0);
    let status = Rc::new(RefCell::new(TargetStatus::new(target.clone())));
    Scraper::new(target, storage, Rc::new(Telemetry::new(0.0)), status)
}

/// The flash store with its default bounds, over a memory backend.
fn flash_store() -> FlashStorage {
    FlashStorage::in_memory(FlashOptions::default()).expect("an empty flash store opens")
}

/// Heap allocations of one scrape of `body` into `storage`, after warm-up (the mean over
/// several, as a buffer may grow now and then, e.g. a store cutting a new chunk).
fn allocs_per_scrape(storage: Rc<dyn Storage>, body: &[u8]) -> f64 {
    let mut s = scraper(storage);
    let mut ts = 1_700_000_000_000i64;
    for _ in 0..300 {
        ts += 1000;
        s.ingest(Ok(body), ts, Duration::ZERO);
    }
    let reps = 100;
    let before = allocs();
    for _ in 0..reps {
        ts += 1000;
        s.ingest(Ok(body), ts, Duration::ZERO);
    }
    (allocs() - before) as f64 / reps as f64
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    println!(
        "{:<28} {:>8} {:>17} {:>10} {:>17} {:>15} {:>13} {:>14}",
        "body",
        "samples",
        "parse ns/sample",
        "parse MB/s",
        "ingest ns/sample",
        "store B/series",
        "allocs/scrape",
        "allocs/sample"
    );
    for name in [
        "node-exporter.prom",
        "prometheus-self.prom",
        "victoriametrics-self.prom",
    ] {
        let path = dir.join(name);
        let body = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the benchmark reads ../shared/data in place)",
                path.display()
            )
        });
        let samples = parse_all(&body);

        let mut parse_ns = Vec::new();
        let mut parse_mbs = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let reps = 50;
            for _ in 0..reps {
                std::hint::black_box(parse_all(std::hint::black_box(&body)));
            }
            let el = t.elapsed().as_secs_f64();
            parse_ns.push(el * 1e9 / (reps * samples) as f64);
            parse_mbs.push((reps * body.len()) as f64 / el / 1e6);
        }

        let storage: Rc<dyn Storage> = Rc::new(flash_store());
        let mut s = scraper(storage.clone());
        let mut ts = 1_700_000_000_000i64;
        // The first scrape fills the cache and creates the series; it is not counted.
        s.ingest(Ok(&body), ts, Duration::ZERO);
        let mut ingest_ns = Vec::new();
        for _ in 0..ROUNDS {
            let reps = 50;
            let t = Instant::now();
            for _ in 0..reps {
                ts += 1000;
                s.ingest(Ok(&body), ts, Duration::ZERO);
            }
            ingest_ns.push(t.elapsed().as_secs_f64() * 1e9 / (reps * samples) as f64);
        }
        let stats = storage.stats();
        let allocs = allocs_per_scrape(Rc::new(flash_store()), &body);
        println!(
            "{:<28} {:>8} {:>17.0} {:>10.1} {:>17.0} {:>15.0} {:>13.1} {:>14.4}",
            name,
            samples,
            median(parse_ns),
            median(parse_mbs),
            median(ingest_ns),
            stats.memory_bytes as f64 / stats.series as f64,
            allocs,
            allocs / samples as f64
        );
    }
}
