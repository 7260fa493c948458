//! The loop of one target: wait for its slot, fetch, parse, append, commit, report.
//!
//! The scrape cache maps the raw bytes of a series in the body (`name{labels}` as written) to its
//! storage reference, so a series seen before costs one hash lookup: no label parsing, no index
//! lookup. A body that fails to parse is rolled back whole; then, as for a failed fetch, every
//! series of the last good scrape gets a staleness marker and only the synthetic series are
//! written.

use super::parse::{Entry, ParseError, TextParser};
use super::{client, Health, Target, TargetStatus};
use crate::model::{Labels, LabelsBuilder, STALE_NAN};
use crate::storage::{AppendError, Appender, SeriesRef, Storage};
use crate::telemetry::{ScrapeResult, Telemetry};
use futures_lite::FutureExt;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cache entries not seen for this many scrapes are dropped.
const CACHE_KEEP_SCRAPES: u64 = 10;

struct CacheEntry {
    r: SeriesRef,
    last_seen: u64,
}

/// What one pass over a body added.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    scraped: usize,
    added: usize,
}

/// The scraper of one target.
pub struct Scraper {
    target: Target,
    storage: Rc<dyn Storage>,
    telemetry: Rc<Telemetry>,
    status: Rc<RefCell<TargetStatus>>,
    cache: HashMap<Box<[u8]>, CacheEntry>,
    /// References written by the last successful scrape, sorted; they go stale if not seen again.
    live: Vec<SeriesRef>,
    current: Vec<SeriesRef>,
    generation: u64,
    body: Vec<u8>,
}

/// Wall-clock now in ms.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stable 64-bit FNV-1a hash, for the scrape offset (the same on every platform and run).
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Scraper {
    pub fn new(
        target: Target,
        storage: Rc<dyn Storage>,
        telemetry: Rc<Telemetry>,
        status: Rc<RefCell<TargetStatus>>,
    ) -> Self {
        Scraper {
            target,
            storage,
            telemetry,
            status,
            cache: HashMap::new(),
            live: Vec::new(),
            current: Vec::new(),
            generation: 0,
            body: Vec::new(),
        }
    }

    /// The next scrape time after `now` (ms): wall-clock aligned, offset by the target's hash.
    fn next_slot(&self, now: i64) -> i64 {
        let interval = self.target.interval.as_millis().max(1) as i64;
        let offset = (fnv64(&self.target.labels.to_string()) % interval as u64) as i64;
        let base = now - now.rem_euclid(interval) + offset;
        if base > now {
            base
        } else {
            base + interval
        }
    }

    /// Scrapes forever; cancelled by dropping the task.
    pub async fn run(mut self) {
        loop {
            let now = now_ms();
            let slot = self.next_slot(now);
            async_io::Timer::after(Duration::from_millis((slot - now) as u64)).await;
            self.scrape_once().await;
        }
    }

    /// One scrape: fetch, append, report, commit.
    pub async fn scrape_once(&mut self) {
        let start_ms = now_ms();
        let started = Instant::now();
        let timeout = self.target.timeout;
        let headers = format!(
            "X-Prometheus-Scrape-Timeout-Seconds: {}\r\n",
            timeout.as_secs_f64()
        );
        let mut body = std::mem::take(&mut self.body);
        let fetched = client::fetch(
            &self.target.address,
            &self.target.path_and_query,
            &headers,
            self.target.body_limit,
            &mut body,
        )
        .or(async {
            async_io::Timer::after(timeout).await;
            Err(client::FetchError::Timeout)
        })
        .await;
        let duration = started.elapsed();
        self.generation += 1;

        let mut app = self.storage.appender();
        let (result, error, counts) = match fetched {
            Ok(_content_type) => match self.append_body(&mut *app, &body, start_ms) {
                Ok(c) => (ScrapeResult::Success, String::new(), c),
                Err(e) => {
                    app.rollback();
                    app = self.storage.appender();
                    (ScrapeResult::ParseError, e.to_string(), Counts::default())
                }
            },
            Err(client::FetchError::Timeout) => (
                ScrapeResult::Timeout,
                client::FetchError::Timeout.to_string(),
                Counts::default(),
            ),
            Err(e) => (ScrapeResult::FetchError, e.to_string(), Counts::default()),
        };
        self.body = body;
        let up = result == ScrapeResult::Success;
        if !up {
            self.current.clear();
        }
        self.mark_stale(&mut *app, start_ms);
        self.report(&mut *app, start_ms, up, duration, counts);
        if let Err(e) = app.commit() {
            log::error!("committing scrape of {}: {e}", self.target.url());
        }
        if up {
            let gen = self.generation;
            self.cache
                .retain(|_, e| gen.saturating_sub(e.last_seen) < CACHE_KEEP_SCRAPES);
        } else {
            log::debug!("scrape of {} failed: {error}", self.target.url());
        }
        self.telemetry.scrape_done(&self.target.job, result);
        let mut st = self.status.borrow_mut();
        st.health = if up { Health::Up } else { Health::Down };
        st.last_error = error;
        st.last_scrape_ms = start_ms;
        st.last_scrape_duration = duration;
        st.last_samples = counts.scraped;
    }

    /// Parses `body` and appends every sample; an error leaves the batch to be rolled back.
    fn append_body(
        &mut self,
        app: &mut dyn Appender,
        body: &[u8],
        ts: i64,
    ) -> Result<Counts, ParseError> {
        let mut counts = Counts::default();
        let mut parser = TextParser::new(body);
        self.current.clear();
        // Borrows from `body`, so it lives for this call only (one allocation per scrape).
        let mut pairs: Vec<(&str, Cow<'_, str>)> = Vec::new();
        let mut builder = LabelsBuilder::new();
        let mut result = Ok(());
        while let Some(entry) = parser.next_entry() {
            let s = match entry {
                Ok(Entry::Sample(s)) => s,
                Ok(_) => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            counts.scraped += 1;
            let t = match s.timestamp {
                Some(t) if self.target.honor_timestamps => t,
                _ => ts,
            };
            let cached = self.cache.get_mut(s.series).map(|e| {
                e.last_seen = self.generation;
                e.r
            });
            let appended = match cached {
                Some(r) => match app.append_ref(r, t, s.value) {
                    Err(AppendError::UnknownRef) => None,
                    other => Some(other.map(|_| r)),
                },
                None => None,
            };
            let appended = match appended {
                Some(a) => a,
                None => {
                    if let Err(e) = s.parse_labels(&mut pairs) {
                        result = Err(e);
                        break;
                    }
                    let labels = self.series_labels(&mut builder, s.name, &pairs);
                    match app.append(&labels, t, s.value) {
                        Ok(r) => {
                            if self.cache.len() < 4 * 1024 * 1024 {
                                self.cache.insert(
                                    s.series.into(),
                                    CacheEntry {
                                        r,
                                        last_seen: self.generation,
                                    },
                                );
                            }
                            counts.added += 1;
                            Ok(r)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match appended {
                // As Prometheus: series with their own timestamps are not tracked for staleness.
                Ok(r) if s.timestamp.is_none() || !self.target.honor_timestamps => {
                    self.current.push(r)
                }
                Ok(_) => {}
                Err(e) => {
                    self.telemetry
                        .samples_rejected
                        .set(self.telemetry.samples_rejected.get() + 1);
                    log::debug!("{}: sample rejected: {e}", self.target.url());
                }
            }
        }
        result.map(|_| counts)
    }

    /// The stored labels of a scraped series: its own plus the target's, with conflicts resolved
    /// as Prometheus does (`honor_labels`, or the scraped one renamed to `exported_<name>`).
    fn series_labels(
        &self,
        b: &mut LabelsBuilder,
        name: &str,
        pairs: &[(&str, Cow<'_, str>)],
    ) -> Labels {
        b.take();
        for (n, v) in pairs {
            b.set(n, v);
        }
        b.set(crate::model::METRIC_NAME, name);
        for l in &self.target.labels {
            let existing = b.get(&l.name).to_owned();
            if existing.is_empty() {
                b.set(&l.name, &l.value);
            } else if !self.target.honor_labels {
                let mut exported = format!("exported_{}", l.name);
                while !b.get(&exported).is_empty() {
                    exported.insert_str(0, "exported_");
                }
                b.set(&exported, &existing);
                b.set(&l.name, &l.value);
            }
        }
        b.take()
    }

    /// Appends staleness markers for series of the last good scrape not seen in this one.
    fn mark_stale(&mut self, app: &mut dyn Appender, ts: i64) {
        self.current.sort_unstable();
        self.current.dedup();
        for r in &self.live {
            if self.current.binary_search(r).is_err() {
                let _ = app.append_ref(*r, ts, f64::from_bits(STALE_NAN));
            }
        }
        std::mem::swap(&mut self.live, &mut self.current);
        self.current.clear();
    }

    /// Appends the synthetic series of this scrape.
    fn report(&self, app: &mut dyn Appender, ts: i64, up: bool, d: Duration, c: Counts) {
        let values = [
            ("up", if up { 1.0 } else { 0.0 }),
            ("scrape_duration_seconds", d.as_secs_f64()),
            ("scrape_samples_scraped", c.scraped as f64),
            ("scrape_samples_post_metric_relabeling", c.scraped as f64),
            ("scrape_series_added", c.added as f64),
        ];
        for (name, v) in values {
            let mut b = LabelsBuilder::new();
            for l in &self.target.labels {
                b.set(&l.name, &l.value);
            }
            b.set(crate::model::METRIC_NAME, name);
            if let Err(e) = app.append(&b.take(), ts, v) {
                log::debug!("{}: {name} rejected: {e}", self.target.url());
            }
        }
    }
}
