//! Flash store benchmark (issue 3, "Targets" and "Fast start"): append throughput, select+decode,
//! and start-up time on stores of growing size.
//!
//! `cargo bench --bench storage` prints one table per part; every figure is the median of several
//! runs, and each table states its setup. Files go to a temporary directory under `target/`
//! (`CARGO_TARGET_TMPDIR`), removed afterwards.
//!
//! 1. Append: 10,000 series, one `append_ref` per series and one `commit` per scrape (all series
//!    at one timestamp), counters with small increments and gauges moving by 4 significant
//!    digits; with `Storage::flush` every 60 simulated seconds (to files, fdatasync included, and
//!    to memory) and without (head only). Samples/s of wall time and of CPU time (the thread's
//!    on-CPU time from `/proc/thread-self/schedstat`).
//! 2. Select+decode: stores written by live appends and flushes every 60 simulated seconds (1k
//!    series at 15 s, and 5k series at 1 s: blocks as dense as a live agent's),
//!    then `Querier::select` over the whole hour and every sample iterated; the select of every
//!    series in slices of 2 ms (`Querier::select_job`, as the evaluator runs it): the longest
//!    slice; and the series
//!    with samples in a range cut at both ends (`Querier::series`, as the label and series
//!    endpoints ask), against finding them with a select.
//! 3. Start-up: a synthetic generator fills one store to 64, 256 and 1024 MiB through
//!    `FlashStorage::import` (zstd level 1, values with random mantissas, which barely
//!    compress); at each size a fresh child process (this binary again) times
//!    `FlashStorage::open` and reads its RSS before and after, so the figures are not
//!    flattered or spoiled by the generator's heap. Warm: page cache as the generator left it
//!    (after one untimed open). Cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before each
//!    open (needs root; skipped with a note otherwise).
//! 4. Flush: 5.6k, 20k and 100k series with 60 samples each in a memory store; one flush in
//!    one go, and one in slices of 2 ms as the agent's flush task runs it: the whole flush's
//!    time, and the longest slice (how long the executor is held at once).
//!
//! The allocator is set up as the agent's `main` does it (`runtime::allocator::tune`).

use perch::model::{Labels, Matcher, Sample};
use perch::storage::backend::{Backend, FileBackend, MemBackend};
use perch::storage::flash::{FlashOptions, FlashStorage};
use perch::storage::{SeriesRef, Storage};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The environment variable that makes this binary the start-up child (value: the store dir).
const CHILD_ENV: &str = "PERCH_STORAGE_BENCH_OPEN";
const T0: i64 = 1_700_000_000_000;
/// The byte budget of the start-up stores: above the largest, so nothing is deleted.
const STARTUP_BUDGET: u64 = 2 << 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// splitmix64: a small, fast, seeded generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The thread's time on a CPU so far (schedstat), or `None` where the kernel does not keep it.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Resident set size in bytes (`/proc/self/statm`).
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Peak resident set size in bytes (`VmHWM` of `/proc/self/status`).
fn hwm_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("perch-storage-bench-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn file_backend(dir: &Path) -> Box<dyn Backend> {
    Box::new(FileBackend::new(dir).expect("scratch directory"))
}

// ---------------------------------------------------------------------------------------------
// Realistic series: counters with small increments, gauges with 4 significant digits.

fn labels(i: usize, series: usize) -> Labels {
    let name = if i % 2 == 0 {
        format!("bench_metric_{}_total", i % 97)
    } else {
        format!("bench_gauge_{}", i % 89)
    };
    Labels::from_pairs(&[
        ("__name__", name.as_str()),
        ("group", &(i % 10).to_string()),
        (
            "instance",
            &format!("10.0.{}.{}:9100", i / 250 % 250, i % 250),
        ),
        ("job", "bench"),
        ("series", &format!("{i:0w$}", w = series.to_string().len())),
    ])
}

/// The values of one series over time: even series are counters, odd ones gauges.
struct Values {
    rng: Rng,
    /// Counters: the count; gauges: the integer mantissa (1000..=9999).
    state: Vec<i64>,
    /// Gauges' decimal exponent (value = mantissa / 10^e).
    exp: Vec<i32>,
}

impl Values {
    fn new(series: usize, seed: u64) -> Values {
        let mut rng = Rng(seed);
        let state = (0..series)
            .map(|i| {
                if i % 2 == 0 {
                    rng.below(1 << 30) as i64
                } else {
                    1000 + rng.below(9000) as i64
                }
            })
            .collect();
        let exp = (0..series).map(|_| rng.below(5) as i32).collect();
        Values { rng, state, exp }
    }

    /// The next value of every series (one scrape).
    fn scrape(&mut self, out: &mut Vec<f64>) {
        out.clear();
        for i in 0..self.state.len() {
            let r = self.rng.next();
            let v = if i % 2 == 0 {
                // A counter: often unchanged, else a small increment.
                if r % 4 != 0 {
                    self.state[i] += (r >> 8) as i64 % 20;
                }
                self.state[i] as f64
            } else {
                // A gauge: a random walk in 4 significant digits, e.g. 12.34 or 0.5678.
                let m = &mut self.state[i];
                *m = (*m + ((r >> 8) % 41) as i64 - 20).clamp(1000, 9999);
                *m as f64 / 10f64.powi(self.exp[i])
            };
            out.push(v);
        }
    }
}

/// Appends one scrape by reference and commits it.
fn scrape_into(s: &dyn Storage, refs: &[SeriesRef], t: i64, values: &[f64]) {
    let mut app = s.appender();
    for (r, v) in refs.iter().zip(values) {
        app.append_ref(*r, t, *v).expect("in-order sample");
    }
    app.commit().expect("commit");
}

/// Creates the series with one scrape by labels; returns their refs.
fn create_series(s: &dyn Storage, series: usize, t: i64, values: &[f64]) -> Vec<SeriesRef> {
    let mut app = s.appender();
    let refs = (0..series)
        .map(|i| app.append(&labels(i, series), t, values[i]).unwrap())
        .collect();
    app.commit().unwrap();
    refs
}

// ---------------------------------------------------------------------------------------------
// Part 1: append throughput.

#[derive(Clone, Copy, PartialEq)]
enum FlushTo {
    Nothing,
    Memory,
    Files,
}

fn part_append() {
    const SERIES: usize = 10_000;
    const RUNS: usize = 5;
    println!("== 1. Append throughput (one core, single-threaded) ==");
    println!(
        "setup: {SERIES} series (half counters with small increments, half gauges in 4 significant \
         digits), one append_ref per series and one commit per scrape; series created by labels \
         in an untimed first scrape; a fresh store per run, default FlashOptions (zstd 9 on \
         flush); flush = Storage::flush every 60 simulated s, to a FileBackend (fdatasync) or a \
         MemBackend; median of {RUNS} runs (min..max in brackets)"
    );
    println!(
        "{:<10} {:<26} {:>8} {:>10} {:>8} {:>22} {:>14} {:>11} {:>10}",
        "interval",
        "flush",
        "scrapes",
        "samples",
        "flushes",
        "wall samples/s",
        "CPU samples/s",
        "CPU ns/smp",
        "disk B/smp"
    );
    for (interval_s, scrapes) in [(15i64, 480usize), (1, 600)] {
        // The same values for every run and mode, generated before any timing.
        let mut gen = Values::new(SERIES, 1);
        let mut first = Vec::new();
        gen.scrape(&mut first);
        let mut all = Vec::with_capacity(scrapes);
        for _ in 0..scrapes {
            let mut v = Vec::with_capacity(SERIES);
            gen.scrape(&mut v);
            all.push(v);
        }
        for mode in [FlushTo::Nothing, FlushTo::Memory, FlushTo::Files] {
            let mut wall = Vec::new();
            let mut cpu = Vec::new();
            let mut flushes = 0;
            let mut disk_per_sample = 0.0;
            for run in 0..RUNS {
                let dir = scratch(&format!("append-{interval_s}-{run}"));
                let backend: Box<dyn Backend> = match mode {
                    FlushTo::Files => file_backend(&dir),
                    _ => Box::new(MemBackend::new()),
                };
                let opts = FlashOptions {
                    budget_bytes: 2 << 30,
                    ..FlashOptions::default()
                };
                let (store, _) = FlashStorage::open(backend, opts).unwrap();
                let s: &dyn Storage = &store;
                let refs = create_series(s, SERIES, T0, &first);
                s.flush().unwrap();
                let step = interval_s * 1000;
                let per_flush = (60 / interval_s) as usize;
                flushes = 0;
                let c0 = cpu_time();
                let w0 = Instant::now();
                for (k, values) in all.iter().enumerate() {
                    let t = T0 + (k as i64 + 1) * step;
                    scrape_into(s, &refs, t, values);
                    if mode != FlushTo::Nothing && (k + 1) % per_flush == 0 {
                        s.flush().unwrap();
                        flushes += 1;
                    }
                }
                let w = w0.elapsed();
                let c = match (c0, cpu_time()) {
                    (Some(a), Some(b)) => b - a,
                    _ => w,
                };
                let n = (scrapes * SERIES) as f64;
                wall.push(n / w.as_secs_f64());
                cpu.push(n / c.as_secs_f64());
                let st = s.stats();
                assert_eq!(st.samples_appended_total as usize, (scrapes + 1) * SERIES);
                if mode != FlushTo::Nothing {
                    disk_per_sample = st.disk_bytes as f64 / (scrapes + 1) as f64 / SERIES as f64;
                }
                drop(store);
                let _ = std::fs::remove_dir_all(&dir);
            }
            let flush_label = match mode {
                FlushTo::Nothing => "none (head only)",
                FlushTo::Memory => "every 60 s, MemBackend",
                FlushTo::Files => "every 60 s, files+fdatasync",
            };
            let cpu_med = median(cpu.clone());
            println!(
                "{:<10} {:<26} {:>8} {:>10} {:>8} {:>9.2}M [{:.2}..{:.2}] {:>13.2}M {:>11.0} {:>10}",
                format!("{interval_s} s"),
                flush_label,
                scrapes,
                scrapes * SERIES,
                flushes,
                median(wall.clone()) / 1e6,
                min(&wall) / 1e6,
                max(&wall) / 1e6,
                cpu_med / 1e6,
                1e9 / cpu_med,
                if mode == FlushTo::Nothing {
                    "-".to_owned()
                } else {
                    format!("{disk_per_sample:.3}")
                }
            );
        }
    }
    println!("goal (issue 3): >= 1M samples/s on one core\n");
}

// ---------------------------------------------------------------------------------------------
// Part 2: select + decode.

/// A store of `series` series × 1 h scraped every `every_s` seconds, written by live appends
/// and a flush every 60 s.
fn live_store(dir: &Path, series: usize, every_s: i64) -> FlashStorage {
    let (store, _) = FlashStorage::open(file_backend(dir), FlashOptions::default()).unwrap();
    let mut gen = Values::new(series, 2);
    let mut v = Vec::new();
    gen.scrape(&mut v);
    let refs = create_series(&store, series, T0, &v);
    let per_flush = 60 / every_s;
    for k in 1..3600 / every_s {
        gen.scrape(&mut v);
        scrape_into(&store, &refs, T0 + k * every_s * 1000, &v);
        if (k + 1) % per_flush == 0 {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
    store
}

fn part_select() {
    const WARMUP: usize = 3;
    const RUNS: usize = 21;
    println!("== 2. Select + decode ==");
    println!(
        "setup: stores written by live appends (15 s or 1 s scrapes, one commit per scrape) and \
         Storage::flush every 60 simulated s to a FileBackend (default FlashOptions: zstd 9), \
         1 h of data, everything flushed (no head samples); files in the page cache; then \
         Querier::select over the whole hour and every sample of every series iterated; \
         median of {RUNS} selects after {WARMUP} untimed (min..max in brackets)"
    );
    println!(
        "{:<28} {:<22} {:>7} {:>8} {:>7} {:>22} {:>10}",
        "store", "selector", "blocks", "series", "samples", "ms per select", "ns/sample"
    );
    for (store_series, every_s, selections) in [
        (
            1000usize,
            15i64,
            vec![
                ("{job=\"bench\"}", "job", "bench"),
                ("{group=\"3\"}", "group", "3"),
                ("{series=\"0421\"}", "series", "0421"),
            ],
        ),
        (100, 15, vec![("{job=\"bench\"}", "job", "bench")]),
        // Blocks as dense as a live agent's (several thousand series, 60 samples each): what a
        // graph of a few series over a long range pays per block.
        (
            5000,
            1,
            vec![
                ("{series=\"0421\"}", "series", "0421"),
                ("{group=\"3\"}", "group", "3"),
            ],
        ),
    ] {
        let dir = scratch(&format!("select-{store_series}-{every_s}"));
        let store = live_store(&dir, store_series, every_s);
        let blocks = store.counters().flushes;
        for (shown, name, value) in selections {
            let matchers = [Matcher::equal(name, value)];
            let q = store.querier();
            let mut times = Vec::new();
            let mut got = (0usize, 0usize);
            for run in 0..WARMUP + RUNS {
                let t = Instant::now();
                let sel = q.select(&matchers, T0, T0 + 3600 * 1000).unwrap();
                let mut n = 0usize;
                let mut sum = 0.0f64;
                let series = sel.len();
                for s in sel {
                    for x in s.samples {
                        n += 1;
                        sum += x.v;
                    }
                }
                black_box(sum);
                let el = t.elapsed();
                got = (series, n);
                if run >= WARMUP {
                    times.push(el.as_secs_f64() * 1e3);
                }
            }
            let expect_series = match name {
                "group" => store_series / 10,
                "series" => 1,
                _ => store_series,
            };
            let per_series = 3600 / every_s as usize;
            assert_eq!(got, (expect_series, expect_series * per_series), "{shown}");
            let med = median(times.clone());
            println!(
                "{:<28} {:<22} {:>7} {:>8} {:>7} {:>9.2} [{:.2}..{:.2}] {:>10.1}",
                format!("{store_series} series x 1 h at {every_s} s"),
                shown,
                blocks,
                got.0,
                got.1,
                med,
                min(&times),
                max(&times),
                med * 1e6 / got.1 as f64
            );
        }
        // The same select as the evaluator runs it, in slices of 2 ms: how long the executor is
        // held at once, against the whole select held in one piece before.
        {
            let matchers = [Matcher::equal("job", "bench")];
            let q = store.querier();
            let mut longest = Vec::new();
            let mut totals = Vec::new();
            let mut steps = 0;
            for run in 0..WARMUP + RUNS {
                let t = Instant::now();
                let mut job = q.select_job(&matchers, T0, T0 + 3600 * 1000);
                let mut worst = Duration::ZERO;
                steps = 0;
                let n = loop {
                    let s = Instant::now();
                    let done = job.step(Some(s + Duration::from_millis(2))).unwrap();
                    worst = worst.max(s.elapsed());
                    steps += 1;
                    if let Some(out) = done {
                        break out.len();
                    }
                };
                assert_eq!(n, store_series);
                if run >= WARMUP {
                    longest.push(worst.as_secs_f64() * 1e3);
                    totals.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            println!(
                "{:<28} {:<22} in slices of 2 ms: {:.2} ms in {steps} slices, longest {:.2} ms [{:.2}..{:.2}]",
                format!("{store_series} series x 1 h at {every_s} s"),
                "{job=\"bench\"}",
                median(totals),
                median(longest.clone()),
                min(&longest),
                max(&longest)
            );
        }
        // What /api/v1/series, /labels and /label/<n>/values pay for a range that does not
        // cover the store (Grafana always sends one): the series are found from the blocks'
        // directories; before, they came from a full select of every matching sample.
        let matchers = [Matcher::equal("job", "bench")];
        let (mint, maxt) = (T0 + 90_000, T0 + 3_570_000);
        let q = store.querier();
        let mut by_dir = Vec::new();
        let mut by_select = Vec::new();
        for run in 0..WARMUP + RUNS {
            let t = Instant::now();
            let a = q.series(&matchers, mint, maxt).unwrap();
            let el_dir = t.elapsed();
            let t = Instant::now();
            let b = perch::storage::labels_of(q.select(&matchers, mint, maxt).unwrap());
            let el_sel = t.elapsed();
            assert_eq!(a, b);
            if run >= WARMUP {
                by_dir.push(el_dir.as_secs_f64() * 1e3);
                by_select.push(el_sel.as_secs_f64() * 1e3);
            }
        }
        println!(
            "{:<28} {:<22} series in [+90 s, +3570 s]: {:.2} ms [{:.2}..{:.2}] (from a select: {:.2} ms)",
            format!("{store_series} series x 1 h at {every_s} s"),
            "{job=\"bench\"}",
            median(by_dir.clone()),
            min(&by_dir),
            max(&by_dir),
            median(by_select)
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("goal (issue 3): 1k series x 1 h at 15 s in <= 5 ms\n");
}

// ---------------------------------------------------------------------------------------------
// Part 3: start-up.

/// The child: opens the store in `dir` once and prints one line of figures.
fn child_open(dir: &str) {
    let opts = FlashOptions {
        budget_bytes: STARTUP_BUDGET,
        ..FlashOptions::default()
    };
    let rss0 = rss_bytes();
    let hwm0 = hwm_bytes();
    let t = Instant::now();
    let (store, r) = FlashStorage::open(file_backend(Path::new(dir)), opts).unwrap();
    let el = t.elapsed();
    let rss1 = rss_bytes();
    let hwm1 = hwm_bytes();
    black_box(&store);
    println!(
        "{} {} {} {} {} {} {} {} {}",
        el.as_secs_f64() * 1e3,
        rss0,
        rss1,
        hwm0,
        hwm1,
        r.segments,
        r.blocks,
        r.series,
        r.corrupt_records
    );
}

struct OpenRun {
    ms: f64,
    rss_growth: f64,
    hwm_growth: f64,
    rss_after: f64,
    segments: usize,
    blocks: usize,
    series: usize,
    corrupt: u64,
}

fn run_child(dir: &Path) -> OpenRun {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .output()
        .expect("start-up child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    OpenRun {
        ms: f[0],
        rss_growth: f[2] - f[1],
        hwm_growth: f[4] - f[3],
        rss_after: f[2],
        segments: f[5] as usize,
        blocks: f[6] as usize,
        series: f[7] as usize,
        corrupt: f[8] as u64,
    }
}

fn drop_caches() -> Result<(), String> {
    Command::new("sync").status().map_err(|e| e.to_string())?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| e.to_string())
}

/// The generator: one import per simulated minute, every series with 4 samples at 15 s whose
/// values have random mantissas (about 9 bytes a sample after zstd 1).
struct Generator {
    series: Vec<Labels>,
    rng: Rng,
    t: i64,
    samples: u64,
    elapsed: Duration,
}

const GEN_SERIES: usize = 2000;
const GEN_SAMPLES_PER_IMPORT: i64 = 4;

impl Generator {
    fn fill(&mut self, store: &FlashStorage, dir: &Path, target: u64) {
        let start = Instant::now();
        while store.disk_bytes() < target {
            let items: Vec<(Labels, Vec<Sample>)> = self
                .series
                .iter()
                .map(|l| {
                    let samples = (0..GEN_SAMPLES_PER_IMPORT)
                        .map(|k| Sample {
                            t: self.t + k * 15_000,
                            v: f64::from_bits((0x3ffu64 << 52) | (self.rng.next() >> 12)),
                        })
                        .collect();
                    (l.clone(), samples)
                })
                .collect();
            self.samples += store.import(items, 1).unwrap() as u64;
            self.t += GEN_SAMPLES_PER_IMPORT * 15_000;
        }
        self.elapsed += start.elapsed();
        debug_assert!(dir_bytes(dir) <= target + (1 << 20));
    }
}

fn part_startup() {
    const RUNS: usize = 3;
    const MIB: u64 = 1 << 20;
    const GEN_LIMIT: Duration = Duration::from_secs(180);
    println!("== 3. Start-up (FlashStorage::open) ==");
    println!(
        "setup: one store grown by a synthetic generator through FlashStorage::import at zstd \
         level 1: {GEN_SERIES} series, one import per simulated minute ({GEN_SAMPLES_PER_IMPORT} \
         samples per series at 15 s, values with random mantissas) = one block record of about \
         70 KiB and one fdatasync each, as a live flush of poorly compressible data would write; \
         budget {} MiB (segments of 64 MiB, nothing deleted); FileBackend under target/. At \
         64, 256 and 1024 MiB a fresh child process opens the store; median of {RUNS} opens; \
         warm = page cache as left by the generator plus one untimed open, cold = sync + \
         drop_caches before each open; RSS from /proc/self/statm, peak from VmHWM, read in the \
         child just before and after open",
        STARTUP_BUDGET / MIB
    );
    let dir = scratch("startup");
    let opts = FlashOptions {
        budget_bytes: STARTUP_BUDGET,
        ..FlashOptions::default()
    };
    let (store, _) = FlashStorage::open(file_backend(&dir), opts).unwrap();
    let mut gen = Generator {
        series: (0..GEN_SERIES).map(|i| labels(i, GEN_SERIES)).collect(),
        rng: Rng(3),
        t: T0,
        samples: 0,
        elapsed: Duration::ZERO,
    };
    println!(
        "{:>9} {:>8} {:>7} {:>7} {:>11} {:>9} {:>9} {:>14} {:>13} {:>10}",
        "store MiB",
        "segments",
        "blocks",
        "series",
        "samples",
        "warm ms",
        "cold ms",
        "RSS growth KiB",
        "peak grow KiB",
        "RSS KiB"
    );
    let mut notes = Vec::new();
    for target_mib in [64u64, 256, 1024] {
        let target = target_mib * MIB;
        if gen.elapsed > Duration::ZERO {
            let rate = store.disk_bytes() as f64 / gen.elapsed.as_secs_f64();
            let projected = Duration::from_secs_f64(target as f64 / rate);
            if projected > GEN_LIMIT {
                notes.push(format!(
                    "{target_mib} MiB skipped: generating it would take {:.0} s (> {} s) at {:.1} MiB/s",
                    projected.as_secs_f64(),
                    GEN_LIMIT.as_secs(),
                    rate / MIB as f64
                ));
                continue;
            }
        }
        gen.fill(&store, &dir, target);
        // Warm: one untimed open, then the timed ones.
        let _ = run_child(&dir);
        let warm: Vec<OpenRun> = (0..RUNS).map(|_| run_child(&dir)).collect();
        let mut cold_err = None;
        let mut cold = Vec::new();
        for _ in 0..RUNS {
            if let Err(e) = drop_caches() {
                cold_err = Some(e);
                break;
            }
            cold.push(run_child(&dir));
        }
        let last = &warm[RUNS - 1];
        assert_eq!(last.corrupt, 0);
        let all: Vec<&OpenRun> = warm.iter().chain(&cold).collect();
        let rss_growth = median(all.iter().map(|r| r.rss_growth).collect());
        let hwm_growth = median(all.iter().map(|r| r.hwm_growth).collect());
        let rss_after = median(all.iter().map(|r| r.rss_after).collect());
        println!(
            "{:>9.1} {:>8} {:>7} {:>7} {:>11} {:>9.1} {:>9} {:>14.0} {:>13.0} {:>10.0}",
            store.disk_bytes() as f64 / MIB as f64,
            last.segments,
            last.blocks,
            last.series,
            gen.samples,
            median(warm.iter().map(|r| r.ms).collect()),
            if cold.is_empty() {
                "n/a".to_owned()
            } else {
                format!("{:.1}", median(cold.iter().map(|r| r.ms).collect()))
            },
            rss_growth / 1024.0,
            hwm_growth / 1024.0,
            rss_after / 1024.0
        );
        if let Some(e) = cold_err {
            notes.push(format!("cold opens not measured: drop_caches: {e}"));
        }
    }
    println!(
        "generator: {:.0} MiB, {} samples in {:.1} s = {:.1} MiB/s, {:.2} M samples/s, {:.2} B/sample on disk",
        store.disk_bytes() as f64 / MIB as f64,
        gen.samples,
        gen.elapsed.as_secs_f64(),
        store.disk_bytes() as f64 / MIB as f64 / gen.elapsed.as_secs_f64(),
        gen.samples as f64 / gen.elapsed.as_secs_f64() / 1e6,
        store.disk_bytes() as f64 / gen.samples as f64
    );
    for n in notes {
        println!("note: {n}");
    }
    println!("goal (issue 3, CONTRACT): start-up to ready < 2 s, flat as the store grows; memory after start-up does not grow with data");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

// ---------------------------------------------------------------------------------------------
// Part 4: the flush, in one go and in slices.

/// One flush of `store`: in one go (`slice` None) or in slices; the whole flush's wall time
/// and the longest call, in ms, and the number of calls.
fn time_flush(store: &FlashStorage, slice: Option<Duration>) -> (f64, f64, usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let w0 = Instant::now();
    let Some(slice) = slice else {
        store.flush().unwrap();
        let w = ms(w0.elapsed());
        return (w, w, 1);
    };
    let (mut longest, mut calls) = (0f64, 0);
    loop {
        let c0 = Instant::now();
        let done = store.flush_step(slice).unwrap();
        longest = longest.max(ms(c0.elapsed()));
        calls += 1;
        if done {
            return (ms(w0.elapsed()), longest, calls);
        }
    }
}

fn part_flush() {
    const RUNS: usize = 3;
    const SLICE: Duration = Duration::from_millis(2);
    println!("== 4. Flush: in one go, and in slices (what the agent's flush task does) ==");
    println!(
        "setup: the append part's series and values, 60 scrapes at 1 s into a MemBackend store \
         (default FlashOptions, zstd 9), then one flush; the first flush of a store declares \
         every series (as at the start of each segment), the second only blocks. In slices: \
         Storage::flush_step({} ms) until done. Median of {RUNS} runs of wall ms; the longest \
         call is how long the executor is held at once",
        SLICE.as_millis()
    );
    println!(
        "{:>8} {:<12} {:>14} {:>16} {:>18} {:>8}",
        "series", "flush", "one go ms", "in slices ms", "longest slice ms", "slices"
    );
    for series in [5_600usize, 20_000, 100_000] {
        let mut gen = Values::new(series, 3);
        let mut v = Vec::new();
        for which in ["first", "second"] {
            let (mut one, mut total, mut longest, mut calls) = (vec![], vec![], vec![], 0);
            for run in 0..RUNS {
                for sliced in [false, true] {
                    let (store, _) =
                        FlashStorage::open(Box::new(MemBackend::new()), FlashOptions::default())
                            .unwrap();
                    gen.scrape(&mut v);
                    let refs = create_series(&store, series, T0, &v);
                    let mut t = T0;
                    let mut fill = |store: &FlashStorage| {
                        for _ in 0..60 {
                            t += 1000;
                            gen.scrape(&mut v);
                            scrape_into(store, &refs, t, &v);
                        }
                    };
                    fill(&store);
                    if which == "second" {
                        store.flush().unwrap();
                        fill(&store);
                    }
                    let (w, l, c) = time_flush(&store, sliced.then_some(SLICE));
                    if sliced {
                        total.push(w);
                        longest.push(l);
                        calls = c;
                    } else {
                        one.push(w);
                    }
                    assert_eq!(store.stats().samples_in_memory, 0, "run {run}");
                }
            }
            println!(
                "{:>8} {:<12} {:>14.1} {:>16.1} {:>18.2} {:>8}",
                series,
                which,
                median(one),
                median(total),
                median(longest),
                calls
            );
        }
    }
    println!(
        "goal (brief): long work yields, so a scrape is never late because of it; the lateness \
         bench shows scrapes under flushes\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Part 5: wear — bytes written per sample on the live benchmark's replay load.

/// One row of a replay target: its series (without target labels), value and kind.
struct ReplayRow {
    labels: Vec<(String, String)>,
    v: f64,
    counter: bool,
}

/// The replay targets of `../shared/bench/live_footprint.py`, simulated: the recorded node
/// exporter body with counters growing by one of (0, 0, 1, 2, 5, 17) (fractions by one of
/// (0, 0, 0.001, 0.0042, 0.017), kept to 12 significant digits) and gauges moving with
/// probability 0.3 by a uniform factor within ±1 % (integers rounded, fractions to 4
/// significant digits), once per request; `steps` requests happen between two of ours (the
/// live run has three scrapers).
struct Replay {
    rng: Rng,
    rows: Vec<ReplayRow>,
}

impl Replay {
    fn load(seed: u64) -> Option<Replay> {
        use perch::scrape::parse::{Entry, TextParser};
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/node-exporter.prom");
        let body = std::fs::read(&path).ok()?;
        let mut parser = TextParser::new(&body);
        let mut rows = Vec::new();
        let mut pairs = Vec::new();
        while let Some(e) = parser.next_entry() {
            let Ok(Entry::Sample(s)) = e else { continue };
            if s.parse_labels(&mut pairs).is_err() {
                continue;
            }
            let mut labels = vec![("__name__".to_string(), s.name.to_string())];
            labels.extend(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())));
            let counter = ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .any(|x| s.name.ends_with(x));
            rows.push(ReplayRow {
                labels,
                v: s.value,
                counter,
            });
        }
        Some(Replay {
            rng: Rng(seed),
            rows,
        })
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One request: every value moves once.
    fn step(&mut self) {
        for i in 0..self.rows.len() {
            let v = self.rows[i].v;
            if !v.is_finite() {
                continue;
            }
            let integral = v == v.trunc();
            let nv = if self.rows[i].counter {
                let k = self.rng.below(6) as usize;
                if integral {
                    v + [0.0, 0.0, 1.0, 2.0, 5.0, 17.0][k]
                } else {
                    let x = v + [0.0, 0.0, 0.001, 0.0042, 0.017, 0.0][k % 5];
                    format!("{x:.11e}").parse().unwrap_or(x)
                }
            } else if self.uniform() < 0.3 {
                let w = v * (1.0 + (self.uniform() * 0.02 - 0.01));
                if integral {
                    w.round()
                } else {
                    format!("{w:.3e}").parse().unwrap_or(w)
                }
            } else {
                v
            };
            self.rows[i].v = nv;
        }
    }
}

fn part_wear() {
    const TARGETS: usize = 10;
    const MINUTES: i64 = 10;
    println!("== 5. Wear: bytes written per sample on the live benchmark's replay load ==");
    println!(
        "setup: {TARGETS} simulated replay targets of live_footprint.py (the recorded node \
         exporter body, values moving per request as there), scraped every 1 s for {MINUTES} \
         simulated minutes at aligned timestamps (each target at its own offset), appended and \
         committed per scrape, Storage::flush every 60 s to a FileBackend (default FlashOptions); \
         `steps` requests per scrape interval (the live run has three scrapers). Bytes: every \
         byte the store appended (FlashCounters::bytes_written); the kernel rewrites the \
         partial page of each append on top. Set PERCH_WEAR_KEEP=DIR to keep the store"
    );
    println!(
        "{:>6} {:>8} {:>10} {:>12} {:>10}",
        "steps", "series", "samples", "bytes", "B/sample"
    );
    for steps in [1usize, 3] {
        let Some(first) = Replay::load(1) else {
            println!("../shared/data/node-exporter.prom not found: part skipped");
            return;
        };
        let mut targets: Vec<Replay> = (0..TARGETS as u64)
            .map(|i| Replay {
                rng: Rng(i + 1),
                rows: first
                    .rows
                    .iter()
                    .map(|r| ReplayRow {
                        labels: r.labels.clone(),
                        ..*r
                    })
                    .collect(),
            })
            .collect();
        let dir = match std::env::var("PERCH_WEAR_KEEP") {
            Ok(d) => {
                let d = PathBuf::from(d).join(format!("steps-{steps}"));
                let _ = std::fs::remove_dir_all(&d);
                d
            }
            Err(_) => scratch(&format!("wear-{steps}")),
        };
        let (store, _) = FlashStorage::open(file_backend(&dir), FlashOptions::default()).unwrap();
        let mut offsets = Rng(99);
        let offsets: Vec<i64> = (0..TARGETS).map(|_| offsets.below(1000) as i64).collect();
        let mut refs: Vec<Vec<SeriesRef>> = vec![Vec::new(); TARGETS];
        let mut samples = 0u64;
        for sec in 0..MINUTES * 60 {
            for (ti, target) in targets.iter_mut().enumerate() {
                for _ in 0..steps {
                    target.step();
                }
                let t = T0 + sec * 1000 + offsets[ti];
                let mut app = store.appender();
                if refs[ti].is_empty() {
                    let instance = format!("127.0.0.1:{}", 40000 + ti);
                    for row in &target.rows {
                        let mut pairs: Vec<(&str, &str)> = row
                            .labels
                            .iter()
                            .map(|(n, v)| (n.as_str(), v.as_str()))
                            .collect();
                        pairs.push(("instance", &instance));
                        pairs.push(("job", "replay"));
                        refs[ti].push(app.append(&Labels::from_pairs(&pairs), t, row.v).unwrap());
                    }
                } else {
                    for (r, row) in refs[ti].iter().zip(&target.rows) {
                        app.append_ref(*r, t, row.v).unwrap();
                    }
                }
                app.commit().unwrap();
                samples += target.rows.len() as u64;
            }
            if (sec + 1) % 60 == 0 {
                store.flush().unwrap();
            }
        }
        let bytes = store.counters().bytes_written;
        let series: usize = refs.iter().map(Vec::len).sum();
        println!(
            "{steps:>6} {series:>8} {samples:>10} {bytes:>12} {:>10.3}",
            bytes as f64 / samples as f64
        );
    }
    println!(
        "floor of the values alone: python3 benches/replay_entropy.py --scrapers STEPS; \
         contract (live run, three scrapers): <= 0.5 B/sample written\n"
    );
}

fn main() {
    // The allocator set up as the agent's `main` does (glibc: no fast bins).
    perch::runtime::allocator::tune();
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_open(&dir);
        return;
    }
    // `cargo bench --bench storage -- startup` runs one part (append, select, startup).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |p: &str| only.is_empty() || only.iter().any(|o| o == p);
    if run("append") {
        part_append();
    }
    if run("select") {
        part_select();
    }
    if run("startup") {
        part_startup();
    }
    if run("flush") {
        part_flush();
    }
    if run("wear") {
        part_wear();
    }
    if let Some(parent) = scratch("x").parent() {
        let _ = std::fs::remove_dir_all(parent);
    }
}
