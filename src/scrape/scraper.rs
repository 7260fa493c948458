//! The loop of one target: wait for its slot, fetch, parse, append, commit, report.
//!
//! The scrape cache maps the raw bytes of a series in the body (`name{labels}` as written), kept
//! as a 128-bit keyed fingerprint ([`crate::model::hash::fingerprint`]) rather than a copy of the
//! text, to its storage reference, so a series seen before costs one lookup ([`super::cache`]:
//! in the steady state the entry after the last one found): no label parsing, no index lookup.
//! A body that fails to parse, or breaks a limit of the job (`sample_limit`, `label_limit`,
//! `label_name_length_limit`, `label_value_length_limit`), is rolled back whole;
//! then, as for a failed fetch, every series of the last good scrape gets a staleness marker and
//! only the synthetic series are written — with the counts 2.42 reports for such a scrape
//! (samples parsed up to the error, or all of them for `sample_limit`). A pool over its
//! `target_limit` sets a forced error: its targets are not fetched, and fail with that error.
//!
//! When a target goes away (its discovery no longer lists it), its task is dropped and
//! [`EndOfRun`] writes what 2.42 writes then: staleness markers for its series and its
//! synthetic series, stamped with the time of the scrape that would have come next, written
//! a little over one interval after that (so a target that comes back in time is not marked).
//!
//! A body is parsed and appended in slices of [`SLICE`], yielding to the executor in
//! between, with the batch open across the yields. The store checks the order of each sample
//! again at the commit, since another batch (a target writing the same series, as
//! `honor_labels` allows) may have committed meanwhile, and it keeps the series an open batch
//! created even if housekeeping runs in between.

use super::cache::{CacheEntry, ScrapeCache, DROPPED};
use super::parse::{Entry, Format, TextParser};
use super::{client, relabel, Health, Target, TargetStatus};
use crate::config::ScrapeLimits;
use crate::model::hash::fingerprint;
use crate::model::slice::{Slicer, SLICE};
use crate::model::{Labels, LabelsBuilder, STALE_NAN};
use crate::storage::{AppendError, Appender, SeriesRef, Storage};
use crate::telemetry::{ScrapeResult, Telemetry};
use futures_lite::FutureExt;
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far a scrape may start from its slot and still be stamped with the slot's time.
const TIMESTAMP_TOLERANCE_MS: i64 = 2;

/// The clock is read every this many entries of a body while it is ingested in slices.
const SLICE_CHECK_EVERY: u32 = 64;

/// Cache entries not seen for this many scrapes are dropped.
const CACHE_KEEP_SCRAPES: u64 = 10;

/// What one pass over a body added.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    scraped: usize,
    /// Samples left after `metric_relabel_configs`.
    post_relabel: usize,
    /// Series not in the scrape cache (as 2.42 counts `scrape_series_added`).
    added: usize,
}

/// The names of the synthetic series, in the order they are written.
const REPORT_NAMES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// A pool's forced error (`target_limit` exceeded), shared by its scrapers; `None`: scrape.
pub type ForcedError = Rc<RefCell<Option<String>>>;

/// The scraper of one target.
pub struct Scraper {
    target: Target,
    storage: Rc<dyn Storage>,
    telemetry: Rc<Telemetry>,
    status: Rc<RefCell<TargetStatus>>,
    cache: ScrapeCache,
    /// References written by the last successful scrape, sorted; they go stale if not seen again.
    /// Shared with the target's [`EndOfRun`].
    live: Rc<RefCell<Vec<SeriesRef>>>,
    forced_error: ForcedError,
    current: Vec<SeriesRef>,
    generation: u64,
    /// The metadata lines (TYPE, HELP, UNIT) of the last body that was read, as one
    /// fingerprint of them all in order, and how many there were: see [`MetadataRun`].
    metadata_seen: MetadataRun,
    /// The synthetic series ([`REPORT_NAMES`] order): labels built once, and each one's
    /// reference once the store gave it, so that reporting a scrape allocates nothing.
    report: [(Labels, Option<SeriesRef>); 5],
    /// The connection kept open from the last scrape, if its response allowed it (HTTP
    /// keep-alive); a failed or timed-out scrape leaves none.
    conn: Option<client::Conn>,
    /// The target's offset within its interval (ms), from a hash of its labels: computed once,
    /// as formatting the labels allocates.
    slot_offset: i64,
}

/// The metadata lines of one body, in order: a fingerprint of them all, their count, and the
/// body's format (the two formats unescape a help text differently).
///
/// Applying a body's metadata lines to the target's metadata ([`Scraper::note_metadata`], the
/// last line for a metric's field wins) a second time changes nothing, so a body whose lines
/// are those of the last body read needs none of its lines noted: the map already holds what
/// they say. Only a body whose lines differ (in text, order or number) is parsed a second time
/// for them. A node exporter's body has more metadata lines than samples (566 and 507), and
/// noting each (a map probe and a comparison of its help text, cold in the cache) cost about
/// as much as appending the samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct MetadataRun {
    fingerprint: [u64; 2],
    lines: usize,
    format: Option<Format>,
}

/// The last line of `text` (the entry the parser just read; comments and blank lines it skipped
/// before it come first), without its line end.
fn last_line(text: &[u8]) -> &[u8] {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    text.rsplit(|&b| b == b'\n').next().unwrap_or(text)
}

impl MetadataRun {
    /// Adds a line (its bytes as written in the body).
    fn add(&mut self, line: &[u8]) {
        const M: [u64; 2] = [0xa076_1d64_78bd_642f, 0xe703_7ed1_a0b4_28db];
        let f = fingerprint(line);
        for i in 0..2 {
            self.fingerprint[i] = (self.fingerprint[i].rotate_left(29) ^ f[i]).wrapping_mul(M[i]);
        }
        self.lines += 1;
    }
}

/// Wall-clock now in ms.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock now in µs.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
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
        let report = REPORT_NAMES.map(|name| (report_labels(&target, name), None));
        Scraper {
            report,
            storage,
            telemetry,
            status,
            cache: ScrapeCache::default(),
            live: Rc::new(RefCell::new(Vec::new())),
            forced_error: Rc::new(RefCell::new(None)),
            current: Vec::new(),
            generation: 0,
            metadata_seen: MetadataRun::default(),
            conn: None,
            slot_offset: slot_offset(&target),
            target,
        }
    }

    /// Shares the pool's forced error (`target_limit`) with this scraper.
    pub fn with_forced_error(mut self, forced: ForcedError) -> Self {
        self.forced_error = forced;
        self
    }

    /// What is needed to mark the target's series stale after its task is dropped.
    pub fn end_of_run(&self) -> EndOfRun {
        EndOfRun {
            target: self.target.clone(),
            slot_offset: self.slot_offset,
            storage: self.storage.clone(),
            status: self.status.clone(),
            live: self.live.clone(),
        }
    }

    /// The next scrape time after `now` (ms): wall-clock aligned, offset by the target's hash.
    fn next_slot(&self, now: i64) -> i64 {
        next_slot(&self.target, self.slot_offset, now)
    }

    /// Scrapes forever; cancelled by dropping the task.
    ///
    /// Each scrape's lateness goes to `perch_scrape_lateness_seconds`: how long after its slot
    /// it started. Its slot is the one after the slot of the previous scrape; when the previous
    /// scrape overran (or the thread was held up past a slot) that slot was skipped and the
    /// scraper waits for the next, and the lateness counts from the skipped one, so a missed
    /// slot shows as a lateness of at least one interval, once.
    pub async fn run(mut self) {
        // The slot (ms) of the last scrape: the latest slot at or before its start.
        let mut last_slot: Option<i64> = None;
        loop {
            let now = now_us();
            // Strictly after `now`, so the sleep is never negative.
            let slot = self.next_slot(now.div_euclid(1000));
            crate::runtime::timer::sleep(Duration::from_micros((slot * 1000 - now) as u64)).await;
            let (late_us, this_slot) = self.lateness(last_slot, slot, now_us());
            self.telemetry.scrape_late(late_us as f64 / 1e6);
            last_slot = Some(this_slot);
            self.scrape_once(Some(slot)).await;
        }
    }

    /// The lateness (µs) of a scrape that waited for `slot` (ms) and starts at `start` (µs), the
    /// previous one having had `last_slot`; and the slot of this one, for the next call.
    fn lateness(&self, last_slot: Option<i64>, slot: i64, start: i64) -> (i64, i64) {
        let interval = self.target.interval.as_millis().max(1) as i64;
        let due = last_slot.map_or(slot, |l| (l + interval).min(slot));
        let late_us = (start - due * 1000).max(0);
        (late_us, self.next_slot(start.div_euclid(1000)) - interval)
    }

    /// One scrape: fetch, append, report, commit. `slot` is the scheduled start (ms), if any.
    pub async fn scrape_once(&mut self, slot: Option<i64>) {
        let now = now_ms();
        let forced = self.forced_error.borrow().clone();
        // As Prometheus (`scrape.timestamp-tolerance`): a scrape that starts within a few ms of
        // its slot is stamped with the slot, so a target's timestamps are exactly one interval
        // apart and cost nothing to store.
        let start_ms = match slot {
            Some(s) if (now - s).abs() <= TIMESTAMP_TOLERANCE_MS => s,
            _ => now,
        };
        let started = Instant::now();
        if let Some(e) = forced {
            self.fail(e, ScrapeResult::LimitExceeded, start_ms, started.elapsed());
            return;
        }
        let timeout = self.target.timeout;
        // As 2.42 writes it (Go's shortest float: `10`, `1.5`).
        let mut headers = format!(
            "X-Prometheus-Scrape-Timeout-Seconds: {}\r\n",
            timeout.as_secs_f64()
        );
        let auth = self.target.auth.as_ref().map(|a| a.header()).transpose();
        // The body lives only for this scrape: a gateway with many targets does not keep a
        // copy of every target's last body (a node exporter's is ~60 KB). Its buffer comes
        // from a small pool shared by all targets (see [`client::BodyPool`]).
        let mut body = client::BodyPool::take();
        let fetched = match auth {
            Ok(auth) => {
                if let Some(a) = auth {
                    headers.push_str(&format!("Authorization: {a}\r\n"));
                }
                let req = client::Request {
                    addr: &self.target.address,
                    path_and_query: &self.target.path_and_query,
                    headers: &headers,
                    body_limit: self.target.body_limit,
                    tls: self.target.tls.as_ref(),
                };
                client::fetch(&mut self.conn, &req, &mut body)
                    .or(async {
                        crate::runtime::timer::sleep(timeout).await;
                        Err(client::FetchError::Timeout)
                    })
                    .await
            }
            // 2.42 fails the request, in Go's words for a failed GET.
            Err(e) => Err(client::FetchError::Request(format!(
                "Get {:?}: {e}",
                self.target.url()
            ))),
        };
        let duration = started.elapsed();
        let format = match &fetched {
            Ok(content_type) => Format::from_content_type(content_type),
            Err(_) => Format::Text004,
        };
        let fetched = fetched.map(|_| body.as_slice());
        self.ingest_in_slices(fetched, format, start_ms, duration, Some(SLICE))
            .await;
        client::BodyPool::give_back(body);
    }

    /// Writes the outcome of one scrape started at `ts` (ms) that took `duration`: the parsed
    /// body (or the fetch error), staleness markers, and the synthetic series, in one batch.
    /// Returns the result as counted in telemetry.
    pub fn ingest(
        &mut self,
        fetched: Result<&[u8], client::FetchError>,
        ts: i64,
        duration: Duration,
    ) -> ScrapeResult {
        self.ingest_format(fetched, Format::Text004, ts, duration)
    }

    /// As [`Scraper::ingest`], for a body in `format`.
    pub fn ingest_format(
        &mut self,
        fetched: Result<&[u8], client::FetchError>,
        format: Format,
        ts: i64,
        duration: Duration,
    ) -> ScrapeResult {
        // Without a slice the future never waits: it completes in this one poll.
        futures_lite::future::block_on(self.ingest_in_slices(fetched, format, ts, duration, None))
    }

    /// As [`Scraper::ingest_format`]; with a `slice`, the body is parsed and appended in slices
    /// of about that long, yielding to the executor between them, so a big body (100k samples
    /// take tens of ms) does not hold up other scrapes, queries or the flush. The batch stays
    /// open across the yields and is committed (or rolled back) as one.
    pub async fn ingest_in_slices(
        &mut self,
        fetched: Result<&[u8], client::FetchError>,
        format: Format,
        ts: i64,
        duration: Duration,
        slice: Option<Duration>,
    ) -> ScrapeResult {
        self.generation += 1;
        let mut app = self.storage.appender();
        let (result, error, counts) = match fetched {
            Ok(body) => {
                let (counts, r) = self.append_body(&mut *app, body, format, ts, slice).await;
                match r {
                    Ok(()) => (ScrapeResult::Success, String::new(), counts),
                    Err((result, e)) => {
                        app.rollback();
                        app = self.storage.appender();
                        (result, e, counts)
                    }
                }
            }
            Err(client::FetchError::Timeout) => (
                ScrapeResult::Timeout,
                client::FetchError::Timeout.to_string(),
                Counts::default(),
            ),
            Err(e) => (ScrapeResult::FetchError, e.to_string(), Counts::default()),
        };
        self.finish(app, ts, duration, result, error, counts)
    }

    /// A scrape that failed before fetching (the pool's forced error): staleness markers and
    /// the synthetic series only.
    pub fn fail(
        &mut self,
        error: String,
        result: ScrapeResult,
        ts: i64,
        duration: Duration,
    ) -> ScrapeResult {
        self.generation += 1;
        let app = self.storage.appender();
        self.finish(app, ts, duration, result, error, Counts::default())
    }

    /// Writes staleness markers and the synthetic series into `app`, commits, and records the
    /// outcome in the target's status.
    fn finish(
        &mut self,
        mut app: Box<dyn Appender + '_>,
        ts: i64,
        duration: Duration,
        result: ScrapeResult,
        error: String,
        counts: Counts,
    ) -> ScrapeResult {
        let up = result == ScrapeResult::Success;
        if !up {
            self.current.clear();
        }
        self.mark_stale(&mut *app, ts);
        self.report(&mut *app, ts, up, duration, counts);
        if let Err(e) = app.commit() {
            log::error!("committing scrape of {}: {e}", self.target.url());
        }
        if up {
            let gen = self.generation as u32;
            self.cache
                .retain(|e| u64::from(gen.wrapping_sub(e.last_seen)) < CACHE_KEEP_SCRAPES);
        } else {
            log::debug!("scrape of {} failed: {error}", self.target.url());
        }
        self.telemetry.scrape_done(&self.target.job, result);
        let mut st = self.status.borrow_mut();
        st.health = if up { Health::Up } else { Health::Down };
        st.last_error = error;
        st.last_scrape_ms = ts;
        st.last_scrape_duration = duration;
        st.last_samples = counts.scraped;
        result
    }

    /// Parses `body` and appends every sample; an error (the body does not parse,
    /// `metric_relabel_configs` removed a series' name, a limit is exceeded) leaves the batch to
    /// be rolled back. The counts are those up to the error, as 2.42 reports them; past
    /// `sample_limit` the body is still read to the end, to count it.
    ///
    /// `metric_relabel_configs` and the label limits run only for series not in the cache; a
    /// series relabeling drops is cached as dropped, so it costs one lookup on later scrapes.
    ///
    /// With a `slice`, it yields to the executor whenever that long has passed since it last
    /// ran (the clock is read every [`SLICE_CHECK_EVERY`] entries).
    async fn append_body(
        &mut self,
        app: &mut dyn Appender,
        body: &[u8],
        format: Format,
        ts: i64,
        slice: Option<Duration>,
    ) -> (Counts, Result<(), (ScrapeResult, String)>) {
        let limits = self.target.limits;
        // As 2.42's limitAppender: every sample offered to the store counts; past the limit
        // nothing more is appended, and the scrape fails once the body is read to the end.
        let full = |c: &Counts| limits.sample_limit > 0 && c.post_relabel >= limits.sample_limit;
        let mut over_sample_limit = false;
        let mut counts = Counts::default();
        let mut parser = TextParser::with_format(body, format);
        self.current.clear();
        // Borrows from `body`, so it lives for this call only (one allocation per scrape).
        let mut pairs: Vec<(&str, Cow<'_, str>)> = Vec::new();
        let mut builder = LabelsBuilder::new();
        let mut result = Ok(());
        let mut slicer = Slicer::new(slice, SLICE_CHECK_EVERY);
        let mut metadata = MetadataRun {
            format: Some(format),
            ..MetadataRun::default()
        };
        self.cache.begin();
        loop {
            slicer.tick().await;
            let from = parser.pos();
            let Some(entry) = parser.next_entry() else {
                break;
            };
            let s = match entry {
                Ok(Entry::Sample(s)) => s,
                Ok(_) => {
                    // Noted after the body, and only if its metadata lines changed.
                    metadata.add(last_line(body.get(from..parser.pos()).unwrap_or_default()));
                    continue;
                }
                Err(e) => {
                    result = Err((ScrapeResult::ParseError, e.to_string()));
                    break;
                }
            };
            counts.scraped += 1;
            let t = match s.timestamp {
                Some(t) if self.target.honor_timestamps => t,
                _ => ts,
            };
            let key = fingerprint(s.series);
            let cached = self.cache.get_mut(&key).map(|e| {
                e.last_seen = self.generation as u32;
                e.series()
            });
            if let Some(None) = cached {
                continue;
            }
            let appended = match cached.flatten() {
                Some(_) if full(&counts) => {
                    over_sample_limit = true;
                    counts.post_relabel += 1;
                    continue;
                }
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
                        result = Err((ScrapeResult::ParseError, e.to_string()));
                        break;
                    }
                    let mut labels = self.series_labels(&mut builder, s.name, &pairs);
                    if !self.target.metric_relabel_configs.is_empty() {
                        match relabel::process(labels, &self.target.metric_relabel_configs) {
                            Some(l) if !l.is_empty() => labels = l,
                            _ => {
                                self.cache_insert(key, None);
                                continue;
                            }
                        }
                        if labels.metric_name().is_empty() {
                            result = Err((
                                ScrapeResult::ParseError,
                                "missing metric name (__name__ label)".into(),
                            ));
                            break;
                        }
                    }
                    if let Err(e) = check_label_limits(&labels, &limits) {
                        result = Err((ScrapeResult::LimitExceeded, e));
                        break;
                    }
                    if full(&counts) {
                        over_sample_limit = true;
                        counts.post_relabel += 1;
                        continue;
                    }
                    match app.append(&labels, t, s.value) {
                        Ok(r) => {
                            self.cache_insert(key, Some(r));
                            // A series known to the cache is not new, even when the store
                            // forgot its reference (as 2.42 counts).
                            if cached.is_none() {
                                counts.added += 1;
                            }
                            Ok(r)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            counts.post_relabel += 1;
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
        if result.is_ok() && over_sample_limit {
            result = Err((ScrapeResult::LimitExceeded, "sample limit exceeded".into()));
        }
        if metadata != self.metadata_seen {
            self.note_metadata_lines(body, format, metadata.lines, &mut slicer)
                .await;
            self.metadata_seen = metadata;
        }
        (counts, result)
    }

    /// Notes the first `lines` metadata lines of `body` in order, as [`Scraper::note_metadata`]
    /// (a second parse of the body, for a body whose metadata lines changed).
    async fn note_metadata_lines(
        &self,
        body: &[u8],
        format: Format,
        lines: usize,
        slicer: &mut Slicer,
    ) {
        let mut parser = TextParser::with_format(body, format);
        let mut noted = 0;
        while noted < lines {
            slicer.tick().await;
            match parser.next_entry() {
                Some(Ok(Entry::Sample(_))) => {}
                Some(Ok(e)) => {
                    self.note_metadata(e);
                    noted += 1;
                }
                Some(Err(_)) | None => break,
            }
        }
    }

    /// Keeps a TYPE, HELP or UNIT line in the target's metadata (changed entries only, so a
    /// scrape that repeats them allocates nothing). Entries are shared between targets.
    fn note_metadata(&self, e: Entry<'_>) {
        use super::parse::MetricType;
        use super::MetricMetadata;
        /// The one field a metadata line states.
        enum Said<'a> {
            Kind(&'static str),
            Help(&'a str),
            Unit(&'a str),
        }
        let (metric, said) = match &e {
            Entry::Type { metric, kind } => (
                metric,
                Said::Kind(match kind {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                    MetricType::Histogram => "histogram",
                    MetricType::GaugeHistogram => "gaugehistogram",
                    MetricType::Summary => "summary",
                    MetricType::Info => "info",
                    MetricType::Stateset => "stateset",
                    MetricType::Untyped | MetricType::Unknown => "unknown",
                }),
            ),
            Entry::Help { metric, text } => (metric, Said::Help(text)),
            Entry::Unit { metric, unit } => (metric, Said::Unit(unit)),
            Entry::Sample(_) => return,
        };
        let mut st = self.status.borrow_mut();
        let current = st.metadata.get(*metric);
        let differs = |m: &MetricMetadata| match said {
            Said::Kind(k) => m.kind != k,
            Said::Help(t) => *m.help != *t,
            Said::Unit(u) => *m.unit != *u,
        };
        match current {
            Some(m) if !differs(m) => return,
            None if st.metadata.len() >= super::MAX_METADATA_PER_TARGET => return,
            _ => {}
        }
        let mut m = current.map_or_else(
            || MetricMetadata {
                kind: "unknown",
                ..Default::default()
            },
            |m| MetricMetadata::clone(m),
        );
        match said {
            Said::Kind(k) => m.kind = k,
            Said::Help(t) => m.help = t.into(),
            Said::Unit(u) => m.unit = u.into(),
        }
        let (name, m) = super::shared_metadata(metric, m);
        st.metadata.insert(name, m);
    }

    /// Remembers the reference of the series written `series` in the body (`None`: dropped).
    fn cache_insert(&mut self, key: [u64; 2], r: Option<SeriesRef>) {
        if self.cache.len() < 4 * 1024 * 1024 {
            self.cache.insert(
                key,
                CacheEntry {
                    r: r.unwrap_or(DROPPED),
                    last_seen: self.generation as u32,
                },
            );
        }
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
        let mut live = self.live.borrow_mut();
        for r in live.iter() {
            if self.current.binary_search(r).is_err() {
                let _ = app.append_ref(*r, ts, f64::from_bits(STALE_NAN));
            }
        }
        std::mem::swap(&mut *live, &mut self.current);
        self.current.clear();
    }

    /// Appends the synthetic series of this scrape.
    fn report(&mut self, app: &mut dyn Appender, ts: i64, up: bool, d: Duration, c: Counts) {
        let values = [
            if up { 1.0 } else { 0.0 },
            d.as_secs_f64(),
            c.scraped as f64,
            c.post_relabel as f64,
            c.added as f64,
        ];
        for ((labels, known), v) in self.report.iter_mut().zip(values) {
            let by_ref = match *known {
                Some(r) => match app.append_ref(r, ts, v) {
                    Err(AppendError::UnknownRef) => None,
                    other => Some(other),
                },
                None => None,
            };
            let result = by_ref.unwrap_or_else(|| {
                app.append(labels, ts, v).map(|r| {
                    *known = Some(r);
                })
            });
            if let Err(e) = result {
                log::debug!("{}: {} rejected: {e}", self.target.url(), labels);
            }
        }
    }
}

/// The labels of the synthetic series `name` of `target`.
fn report_labels(target: &Target, name: &str) -> Labels {
    let mut b = target.labels.builder();
    b.set(crate::model::METRIC_NAME, name);
    b.take()
}

/// Appends the synthetic series of `target` with `values` (in [`REPORT_NAMES`] order).
fn append_report(app: &mut dyn Appender, target: &Target, ts: i64, values: [f64; 5]) {
    for (name, v) in REPORT_NAMES.into_iter().zip(values) {
        if let Err(e) = app.append(&report_labels(target, name), ts, v) {
            log::debug!("{}: {name} rejected: {e}", target.url());
        }
    }
}

/// The offset (ms) of `target`'s scrapes within its interval: a hash of its labels.
fn slot_offset(target: &Target) -> i64 {
    let interval = target.interval.as_millis().max(1) as u64;
    (fnv64(&target.labels.to_string()) % interval) as i64
}

/// The next scrape time of `target` after `now` (ms): wall-clock aligned, plus `offset` (see
/// [`slot_offset`]).
fn next_slot(target: &Target, offset: i64, now: i64) -> i64 {
    let interval = target.interval.as_millis().max(1) as i64;
    let base = now - now.rem_euclid(interval) + offset;
    if base > now {
        base
    } else {
        base + interval
    }
}

/// 2.42's `verifyLabelLimits`, with its messages (names and values cut at 50 characters).
fn check_label_limits(labels: &Labels, limits: &ScrapeLimits) -> Result<(), String> {
    fn cut(s: &str) -> &str {
        s.char_indices().nth(50).map_or(s, |(i, _)| &s[..i])
    }
    let metric = cut(labels.metric_name());
    if limits.label_limit > 0 && labels.len() > limits.label_limit {
        return Err(format!(
            "label_limit exceeded (metric: {metric}, number of labels: {}, limit: {})",
            labels.len(),
            limits.label_limit
        ));
    }
    if limits.label_name_length_limit == 0 && limits.label_value_length_limit == 0 {
        return Ok(());
    }
    for l in labels {
        let n = limits.label_name_length_limit;
        if n > 0 && l.name.len() > n {
            return Err(format!(
                "label_name_length_limit exceeded (metric: {metric}, label name: {}, length: {}, limit: {n})",
                cut(&l.name),
                l.name.len()
            ));
        }
        let n = limits.label_value_length_limit;
        if n > 0 && l.value.len() > n {
            return Err(format!(
                "label_value_length_limit exceeded (metric: {metric}, label name: {}, value: {:?}, length: {}, limit: {n})",
                cut(&l.name),
                cut(&l.value),
                l.value.len()
            ));
        }
    }
    Ok(())
}

/// What a dropped target's task leaves to do: mark its series stale, as 2.42's
/// `endOfRunStaleness`. Made by [`Scraper::end_of_run`] before the scraper's task starts.
pub struct EndOfRun {
    target: Target,
    /// The scraper's [`slot_offset`].
    slot_offset: i64,
    storage: Rc<dyn Storage>,
    status: Rc<RefCell<TargetStatus>>,
    live: Rc<RefCell<Vec<SeriesRef>>>,
}

impl EndOfRun {
    /// Waits for the slot the next scrape would have had, then one more interval and a tenth,
    /// and writes staleness markers stamped with that slot for the series of the last scrape
    /// and the synthetic series. Nothing if the target was never scraped. Cancelled by
    /// dropping the task (on shutdown, or when the target comes back meanwhile).
    pub async fn run(self) {
        if self.status.borrow().last_scrape_ms == 0 {
            return;
        }
        let now = now_us();
        let stale_ms = next_slot(&self.target, self.slot_offset, now.div_euclid(1000));
        crate::runtime::timer::sleep(Duration::from_micros((stale_ms * 1000 - now) as u64)).await;
        let interval = self.target.interval;
        crate::runtime::timer::sleep(interval + interval / 10).await;
        self.write(stale_ms);
    }

    /// Writes the markers at `ts` (ms).
    pub fn write(&self, ts: i64) {
        let stale = f64::from_bits(STALE_NAN);
        let mut app = self.storage.appender();
        for r in self.live.borrow().iter() {
            // Out of order when the target came back and was scraped meanwhile: ignored.
            let _ = app.append_ref(*r, ts, stale);
        }
        append_report(&mut *app, &self.target, ts, [stale; 5]);
        if let Err(e) = app.commit() {
            log::error!("staleness markers for {}: {e}", self.target.url());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale, Matcher};
    use crate::storage::flash::{FlashOptions, FlashStorage};

    fn scraper(honor_labels: bool) -> (Scraper, Rc<dyn Storage>) {
        scraper_with(&format!("    honor_labels: {honor_labels}\n"))
    }

    /// A scraper of a job with `extra` (indented YAML fields) added.
    fn scraper_with(extra: &str) -> (Scraper, Rc<dyn Storage>) {
        let yaml = format!(
            "scrape_configs:\n  - job_name: j\n{extra}    static_configs: [{{targets: ['h:1'], labels: {{env: lab}}}}]\n"
        );
        let cfg = crate::config::parse_yaml(&yaml, "t").unwrap();
        let target = super::super::targets_of(&cfg.scrape_configs[0]).remove(0);
        let storage: Rc<dyn Storage> =
            Rc::new(FlashStorage::in_memory(FlashOptions::default()).unwrap());
        let status = Rc::new(RefCell::new(TargetStatus::new(target.clone())));
        let telemetry = Rc::new(Telemetry::new(0.0));
        (
            Scraper::new(target, storage.clone(), telemetry, status),
            storage,
        )
    }

    /// All samples of series named `name`, as (labels text, samples).
    fn series(storage: &Rc<dyn Storage>, name: &str) -> Vec<(String, Vec<(i64, f64)>)> {
        storage
            .querier()
            .select(&[Matcher::equal("__name__", name)], i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.labels.to_string(),
                    s.samples.map(|x| (x.t, x.v)).collect(),
                )
            })
            .collect()
    }

    const D: Duration = Duration::from_millis(5);

    #[test]
    fn a_big_body_is_ingested_in_slices_with_other_tasks_run_between() {
        let (mut s, storage) = scraper(false);
        let n = 20_000;
        let body: String = (0..n).map(|i| format!("m{{i=\"{i}\"}} {i}\n")).collect();
        let ex = async_executor::LocalExecutor::new();
        let ran = Rc::new(std::cell::Cell::new(0usize));
        let other = {
            let (ran, storage) = (ran.clone(), storage.clone());
            ex.spawn(async move {
                loop {
                    // The batch is open: none of its samples is visible yet.
                    if ran.get() % 256 == 0 {
                        assert!(series(&storage, "m").is_empty());
                    }
                    ran.set(ran.get() + 1);
                    futures_lite::future::yield_now().await;
                }
            })
        };
        let sliced = s.ingest_in_slices(
            Ok(body.as_bytes()),
            Format::Text004,
            1000,
            D,
            Some(Duration::ZERO),
        );
        let r = futures_lite::future::block_on(ex.run(sliced));
        drop(other);
        assert_eq!(r, ScrapeResult::Success);
        // A zero slice yields at every clock check.
        assert!(
            ran.get() >= n / SLICE_CHECK_EVERY as usize,
            "{} runs",
            ran.get()
        );
        let got = series(&storage, "m");
        assert_eq!(got.len(), n);
        let mut values: Vec<f64> = got
            .iter()
            .map(|(_, v)| {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].0, 1000);
                v[0].1
            })
            .collect();
        values.sort_by(f64::total_cmp);
        assert!(values.iter().enumerate().all(|(i, v)| *v == i as f64));
    }

    #[test]
    fn metadata_lines_are_noted_as_each_body_says_them_whether_or_not_they_changed() {
        let (mut s, _) = scraper(false);
        let help = |s: &Scraper, m: &str| {
            let st = s.status.borrow();
            st.metadata.get(m).map(|m| (m.kind, m.help.to_string()))
        };
        let one = b"# HELP a first\n# TYPE a gauge\na 1\n# HELP b bee\n# HELP b later\nb 2\n";
        s.ingest(Ok(one), 1000, D);
        assert_eq!(help(&s, "a"), Some(("gauge", "first".into())));
        // The last line for a field wins.
        assert_eq!(help(&s, "b"), Some(("unknown", "later".into())));
        // The same body again: nothing changes (its lines are not noted again).
        s.ingest(Ok(one), 2000, D);
        assert_eq!(help(&s, "b"), Some(("unknown", "later".into())));
        // A changed line after unchanged ones: every line is noted in order.
        let two = b"# HELP a first\n# TYPE a gauge\na 1\n# HELP b bee\n# HELP b changed\nb 2\n";
        s.ingest(Ok(two), 3000, D);
        assert_eq!(help(&s, "b"), Some(("unknown", "changed".into())));
        // The same lines less the last: what is left of the body wins, as if noted afresh.
        let three = b"# HELP a first\n# TYPE a gauge\na 1\n# HELP b bee\nb 2\n";
        s.ingest(Ok(three), 4000, D);
        assert_eq!(help(&s, "b"), Some(("unknown", "bee".into())));
        // A body that fails to parse keeps the lines before its error, as before.
        s.ingest(
            Ok(b"# TYPE a counter\na 1\n{bad\n# HELP a never\n"),
            5000,
            D,
        );
        assert_eq!(help(&s, "a"), Some(("counter", "first".into())));
        s.ingest(Ok(one), 6000, D);
        assert_eq!(help(&s, "a"), Some(("gauge", "first".into())));
        assert_eq!(help(&s, "b"), Some(("unknown", "later".into())));
        // The same bytes in the other format say another help text (OpenMetrics unescapes `\"`).
        let quoted = b"# HELP q say \\\"hi\\\"\nq 1\n# EOF\n";
        s.ingest_format(Ok(quoted), Format::Text004, 7000, D);
        assert_eq!(help(&s, "q"), Some(("unknown", r#"say \"hi\""#.into())));
        s.ingest_format(Ok(quoted), Format::OpenMetrics, 8000, D);
        assert_eq!(help(&s, "q"), Some(("unknown", r#"say "hi""#.into())));
        // A comment before a line is not part of it.
        assert_eq!(last_line(b"# a comment\n\n# HELP x y\n"), b"# HELP x y");
        assert_eq!(last_line(b"# HELP x y\r\n"), b"# HELP x y");
        assert_eq!(last_line(b"# HELP x y"), b"# HELP x y");
    }

    #[test]
    fn the_cache_forgets_a_series_ten_scrapes_after_it_was_last_seen() {
        let (mut s, _) = scraper(false);
        s.ingest(Ok(b"kept 1\ngone 1\n"), 1000, D);
        for k in 2..=10 {
            s.ingest(Ok(b"kept 1\n"), k * 1000, D);
            assert!(s.cache.contains_key(&fingerprint(b"gone")), "scrape {k}");
        }
        s.ingest(Ok(b"kept 1\n"), 11_000, D);
        assert!(!s.cache.contains_key(&fingerprint(b"gone")));
        assert!(s
            .cache
            .get(&fingerprint(b"kept"))
            .is_some_and(|e| e.series().is_some()));
    }

    #[test]
    fn lateness_counts_from_the_slot_and_a_skipped_slot_once() {
        let (s, _) = scraper(false);
        let i = s.target.interval.as_millis() as i64;
        let slot = s.next_slot(1_700_000_000_000);
        // On time, then 3 ms late: measured from the slot waited for.
        assert_eq!(s.lateness(None, slot, slot * 1000), (0, slot));
        assert_eq!(s.lateness(None, slot, slot * 1000 + 3_000), (3_000, slot));
        let next = slot + i;
        assert_eq!(s.lateness(Some(slot), next, next * 1000 + 250), (250, next));
        // The previous scrape overran its interval: the slot after it was skipped, and this
        // scrape, which waited for the one after, is late by one interval and a bit.
        let after = slot + 2 * i;
        assert_eq!(
            s.lateness(Some(slot), after, after * 1000 + 40),
            (i * 1000 + 40, after)
        );
        // The thread was held up for 2.5 intervals past the slot waited for: late by that, and
        // the slots passed are not counted again by the next scrape.
        let start = slot * 1000 + 5 * i * 500;
        assert_eq!(
            s.lateness(Some(slot - i), slot, start),
            (5 * i * 500, slot + 2 * i)
        );
        let next = slot + 3 * i;
        assert_eq!(
            s.lateness(Some(slot + 2 * i), next, next * 1000 + 10),
            (10, next)
        );
        // A clock stepped back never gives a negative lateness.
        assert_eq!(s.lateness(Some(slot), slot + i, slot * 1000).0, 0);
    }

    #[test]
    fn stores_samples_with_target_labels_and_synthetic_series() {
        let (mut s, st) = scraper(false);
        let r = s.ingest(Ok(b"a{x=\"1\"} 1\na{x=\"2\"} 2\nb 3 500\n"), 1000, D);
        assert_eq!(r, ScrapeResult::Success);
        assert_eq!(
            series(&st, "a"),
            vec![
                (
                    r#"a{env="lab", instance="h:1", job="j", x="1"}"#.into(),
                    vec![(1000, 1.0)]
                ),
                (
                    r#"a{env="lab", instance="h:1", job="j", x="2"}"#.into(),
                    vec![(1000, 2.0)]
                ),
            ]
        );
        // honor_timestamps is on by default.
        assert_eq!(series(&st, "b")[0].1, vec![(500, 3.0)]);
        assert_eq!(series(&st, "up")[0].1, vec![(1000, 1.0)]);
        assert_eq!(
            series(&st, "scrape_samples_scraped")[0].1,
            vec![(1000, 3.0)]
        );
        assert_eq!(series(&st, "scrape_series_added")[0].1, vec![(1000, 3.0)]);
        assert_eq!(
            series(&st, "scrape_duration_seconds")[0].1,
            vec![(1000, 0.005)]
        );
        // The second scrape of the same body is served from the cache: nothing new added.
        s.ingest(Ok(b"a{x=\"1\"} 1\na{x=\"2\"} 2\nb 3 500\n"), 2000, D);
        assert_eq!(series(&st, "scrape_series_added")[0].1[1], (2000, 0.0));
    }

    #[test]
    fn a_body_that_does_not_parse_stores_nothing_from_it() {
        let (mut s, st) = scraper(false);
        s.ingest(Ok(b"a 1\n"), 1000, D);
        let r = s.ingest(Ok(b"a 2\nc 3\nbroken line here\n"), 2000, D);
        assert_eq!(r, ScrapeResult::ParseError);
        assert!(series(&st, "c").is_empty() || series(&st, "c")[0].1.is_empty());
        let a = &series(&st, "a")[0].1;
        assert_eq!(a[0], (1000, 1.0));
        assert_eq!(a.len(), 2, "only a staleness marker follows");
        assert!(is_stale(a[1].1) && a[1].0 == 2000);
        assert_eq!(series(&st, "up")[0].1[1], (2000, 0.0));
        let err = s.status.borrow().last_error.clone();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn vanished_series_and_failed_scrapes_get_staleness_markers() {
        let (mut s, st) = scraper(false);
        s.ingest(Ok(b"a 1\nb 1\n"), 1000, D);
        s.ingest(Ok(b"a 2\n"), 2000, D);
        let b = &series(&st, "b")[0].1;
        assert_eq!(b.len(), 2);
        assert!(is_stale(b[1].1));
        s.ingest(Err(client::FetchError::Timeout), 3000, D);
        let a = &series(&st, "a")[0].1;
        assert!(is_stale(a[2].1) && a[2].0 == 3000);
        // Not marked twice.
        s.ingest(Err(client::FetchError::Timeout), 4000, D);
        assert_eq!(series(&st, "a")[0].1.len(), 3);
        assert_eq!(s.status.borrow().last_error, "context deadline exceeded");
    }

    #[test]
    fn openmetrics_bodies_with_second_timestamps() {
        let (mut s, st) = scraper(false);
        let body = b"# TYPE a counter\na_total 3 1.5\nb 2\n# EOF\n";
        let r = s.ingest_format(Ok(body), Format::OpenMetrics, 1000, D);
        assert_eq!(r, ScrapeResult::Success);
        assert_eq!(series(&st, "a_total")[0].1, vec![(1500, 3.0)]);
        assert_eq!(series(&st, "b")[0].1, vec![(1000, 2.0)]);
        // Without `# EOF` an OpenMetrics body fails whole.
        let r = s.ingest_format(Ok(b"b 3\n"), Format::OpenMetrics, 2000, D);
        assert_eq!(r, ScrapeResult::ParseError);
    }

    #[test]
    fn label_conflicts_follow_honor_labels() {
        let (mut s, st) = scraper(false);
        s.ingest(Ok(b"a{job=\"other\",instance=\"x\"} 1\n"), 1000, D);
        assert_eq!(
            series(&st, "a")[0].0,
            r#"a{env="lab", exported_instance="x", exported_job="other", instance="h:1", job="j"}"#
        );
        let (mut s, st) = scraper(true);
        s.ingest(Ok(b"a{job=\"other\"} 1\n"), 1000, D);
        assert_eq!(
            series(&st, "a")[0].0,
            r#"a{env="lab", instance="h:1", job="other"}"#
        );
    }

    #[test]
    fn metric_relabel_configs_drop_keep_and_rewrite() {
        let (mut s, st) = scraper_with(
            r#"    metric_relabel_configs:
      - {source_labels: [__name__], regex: 'go_.*', action: drop}
      - {source_labels: [__name__, mode], regex: 'cpu;(idle|user)', action: keep}
      - {source_labels: [mode], regex: '(.*)', target_label: state, replacement: 'cpu_$1'}
      - {regex: 'mode|env', action: labeldrop}
"#,
        );
        let body = b"go_gc 1\ncpu{mode=\"idle\"} 2\ncpu{mode=\"user\"} 3\ncpu{mode=\"iowait\"} 4\n";
        assert_eq!(s.ingest(Ok(body), 1000, D), ScrapeResult::Success);
        assert!(series(&st, "go_gc").is_empty());
        let cpu: Vec<String> = series(&st, "cpu").into_iter().map(|x| x.0).collect();
        assert_eq!(
            cpu,
            vec![
                r#"cpu{instance="h:1", job="j", state="cpu_idle"}"#,
                r#"cpu{instance="h:1", job="j", state="cpu_user"}"#,
            ]
        );
        assert_eq!(
            series(&st, "scrape_samples_scraped")[0].1,
            vec![(1000, 4.0)]
        );
        assert_eq!(
            series(&st, "scrape_samples_post_metric_relabeling")[0].1,
            vec![(1000, 2.0)]
        );
        assert_eq!(series(&st, "scrape_series_added")[0].1, vec![(1000, 2.0)]);
        // Dropped series are remembered as dropped; kept ones by reference.
        assert!(s
            .cache
            .get(&fingerprint(b"go_gc"))
            .is_some_and(|e| e.series().is_none()));
        assert!(s
            .cache
            .get(&fingerprint(b"cpu{mode=\"iowait\"}"))
            .is_some_and(|e| e.series().is_none()));
        assert!(s
            .cache
            .get(&fingerprint(b"cpu{mode=\"idle\"}"))
            .is_some_and(|e| e.series().is_some()));
        // The second scrape is served from the cache, with the same outcome.
        s.ingest(Ok(body), 2000, D);
        assert!(series(&st, "go_gc").is_empty());
        assert_eq!(series(&st, "cpu")[0].1, vec![(1000, 2.0), (2000, 2.0)]);
        assert_eq!(
            series(&st, "scrape_samples_post_metric_relabeling")[0].1[1],
            (2000, 2.0)
        );
        assert_eq!(series(&st, "scrape_series_added")[0].1[1], (2000, 0.0));
        // No staleness markers for the kept series.
        assert_eq!(series(&st, "cpu")[1].1.len(), 2);
    }

    #[test]
    fn metric_relabeling_that_removes_the_name_fails_the_scrape() {
        let (mut s, st) =
            scraper_with("    metric_relabel_configs: [{regex: __name__, action: labeldrop}]\n");
        assert_eq!(s.ingest(Ok(b"a 1\n"), 1000, D), ScrapeResult::ParseError);
        assert_eq!(
            s.status.borrow().last_error,
            "missing metric name (__name__ label)"
        );
        assert_eq!(series(&st, "up")[0].1, vec![(1000, 0.0)]);
    }

    /// The value of each synthetic series at `t`, in [`REPORT_NAMES`] order.
    fn report_at(st: &Rc<dyn Storage>, t: i64) -> Vec<f64> {
        REPORT_NAMES
            .iter()
            .map(|n| {
                series(st, n)[0]
                    .1
                    .iter()
                    .find(|x| x.0 == t)
                    .map(|x| x.1)
                    .unwrap()
            })
            .collect()
    }

    /// Samples stored for the series named `name` (0 when it has none or does not exist).
    fn stored(st: &Rc<dyn Storage>, name: &str) -> usize {
        series(st, name).iter().map(|s| s.1.len()).sum()
    }

    #[test]
    fn over_the_sample_limit_nothing_is_stored_and_the_counts_are_2_42s() {
        // 2.42 (tests/data/scrape/limits-2.42.json): up 0, scraped 5, post-relabeling 5,
        // series added 3 and then 0, "sample limit exceeded", no sample of the body stored.
        let (mut s, st) = scraper_with("    sample_limit: 3\n");
        let body = b"a 1\nb 2\nc 3\nd 4\ne 5\n";
        assert_eq!(s.ingest(Ok(body), 1000, D), ScrapeResult::LimitExceeded);
        assert_eq!(s.status.borrow().last_error, "sample limit exceeded");
        assert_eq!(report_at(&st, 1000), vec![0.0, 0.005, 5.0, 5.0, 3.0]);
        s.ingest(Ok(body), 2000, D);
        assert_eq!(report_at(&st, 2000), vec![0.0, 0.005, 5.0, 5.0, 0.0]);
        for n in ["a", "b", "c", "d", "e"] {
            assert_eq!(stored(&st, n), 0, "{n}");
        }
        // A good scrape first: its series go stale when the limit is hit.
        let (mut s, st) = scraper_with("    sample_limit: 3\n");
        s.ingest(Ok(b"a 1\n"), 1000, D);
        s.ingest(Ok(body), 2000, D);
        let a = &series(&st, "a")[0].1;
        assert_eq!(a.len(), 2);
        assert!(is_stale(a[1].1) && a[1].0 == 2000);
        // The limit counts samples after metric_relabel_configs.
        let (mut s, st) = scraper_with(
            "    sample_limit: 3\n    metric_relabel_configs: [{source_labels: [__name__], regex: '[ab]', action: drop}]\n",
        );
        assert_eq!(s.ingest(Ok(body), 1000, D), ScrapeResult::Success);
        assert_eq!(report_at(&st, 1000), vec![1.0, 0.005, 5.0, 3.0, 3.0]);
        assert_eq!(s.ingest(Ok(body), 2000, D), ScrapeResult::Success);
    }

    #[test]
    fn label_limits_fail_the_scrape_with_2_42s_messages() {
        for (extra, body, want) in [
            (
                "    label_limit: 4\n",
                &b"m{a=\"1\",b=\"2\",c=\"3\"} 1\n"[..],
                // 6 in 2.42's run: this target has one label more (env).
                "label_limit exceeded (metric: m, number of labels: 7, limit: 4)",
            ),
            (
                "    label_name_length_limit: 10\n",
                b"m{averyveryverylonglabelname=\"1\"} 1\n",
                "label_name_length_limit exceeded (metric: m, label name: averyveryverylonglabelname, length: 26, limit: 10)",
            ),
            (
                "    label_value_length_limit: 10\n",
                b"m{a=\"averyveryverylonglabelvalue_________________________________________________________________________\"} 1\n",
                "label_value_length_limit exceeded (metric: m, label name: a, value: \"averyveryverylonglabelvalue_______________________\", length: 100, limit: 10)",
            ),
        ] {
            let (mut s, st) = scraper_with(extra);
            assert_eq!(s.ingest(Ok(body), 1000, D), ScrapeResult::LimitExceeded);
            assert_eq!(s.status.borrow().last_error, want);
            // As 2.42: the sample is counted as scraped, not as kept.
            assert_eq!(report_at(&st, 1000), vec![0.0, 0.005, 1.0, 0.0, 0.0]);
            assert_eq!(stored(&st, "m"), 0);
        }
        // Within the limits (the target's labels count): stored.
        let (mut s, _) = scraper_with("    label_limit: 5\n    label_value_length_limit: 5\n");
        assert_eq!(
            s.ingest(Ok(b"m{a=\"1\"} 1\n"), 1000, D),
            ScrapeResult::Success
        );
    }

    #[test]
    fn a_failed_parse_reports_the_samples_read_before_it() {
        // 2.42: scraped 2, post-relabeling 2, series added 2 (then 0), up 0.
        let (mut s, st) = scraper(false);
        s.ingest(Ok(b"a 1\nb 2\nbroken line here\n"), 1000, D);
        assert_eq!(report_at(&st, 1000), vec![0.0, 0.005, 2.0, 2.0, 2.0]);
        s.ingest(Ok(b"a 1\nb 2\nbroken line here\n"), 2000, D);
        assert_eq!(report_at(&st, 2000), vec![0.0, 0.005, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn a_forced_error_fails_without_fetching_and_marks_series_stale() {
        let (s, st) = scraper(false);
        let forced: ForcedError = Rc::new(RefCell::new(None));
        let mut s = s.with_forced_error(forced.clone());
        s.ingest(Ok(b"a 1\n"), 1000, D);
        let e = "target_limit exceeded (number of targets: 2, limit: 1)";
        *forced.borrow_mut() = Some(e.into());
        futures_lite::future::block_on(s.scrape_once(None));
        assert_eq!(s.status.borrow().last_error, e);
        assert_eq!(s.status.borrow().health, Health::Down);
        let a = &series(&st, "a")[0].1;
        assert!(a.len() == 2 && is_stale(a[1].1));
        assert_eq!(series(&st, "up")[0].1[1].1, 0.0);
    }

    #[test]
    fn end_of_run_marks_the_last_series_and_the_synthetic_ones_stale() {
        let (mut s, st) = scraper(false);
        let end = s.end_of_run();
        s.ingest(Ok(b"a 1\nb 2\n"), 1000, D);
        drop(s);
        end.write(3000);
        for n in ["a", "b", "up", "scrape_series_added"] {
            let v = &series(&st, n)[0].1;
            assert_eq!(v.len(), 2, "{n}");
            assert!(v[1].0 == 3000 && is_stale(v[1].1), "{n}");
        }
    }

    #[test]
    fn credentials_and_the_timeout_header_are_sent() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\na 1\n")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let yaml = format!(
            "scrape_configs:\n  - job_name: j\n    scrape_timeout: 1500ms\n    basic_auth: {{username: user, password: pass}}\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        );
        let cfg = crate::config::parse_yaml(&yaml, "t").unwrap();
        let target = super::super::targets_of(&cfg.scrape_configs[0]).remove(0);
        let storage: Rc<dyn Storage> =
            Rc::new(FlashStorage::in_memory(FlashOptions::default()).unwrap());
        let status = Rc::new(RefCell::new(TargetStatus::new(target.clone())));
        let mut s = Scraper::new(target, storage, Rc::new(Telemetry::new(0.0)), status);
        futures_lite::future::block_on(s.scrape_once(None));
        let req = server.join().unwrap();
        // As 2.42 sent them (tests/data/scrape/headers-2.42.txt).
        assert!(
            req.contains("\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\nX-Prometheus-Scrape-Timeout-Seconds: 1.5\r\n"),
            "{req}"
        );
        assert_eq!(s.status.borrow().health, Health::Up);
    }
}
