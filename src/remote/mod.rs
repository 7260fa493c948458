//! Pushing samples to `remote_write` receivers, live and after outages, from the store itself.
//!
//! Each `remote_write` entry gets one [`Writer`] task on the executor. It sends in two ways:
//! - **Live.** Every committed scrape is seen through the store's [`SampleTap`] and queued in
//!   memory (at most `queue_config.capacity` samples); the queue is sent in requests of
//!   `max_samples_per_send` samples, or when its oldest sample has waited
//!   `batch_send_deadline`. When the receiver cannot be reached the queue keeps only the newest
//!   samples, so when the link comes back the dashboards are live at once.
//! - **Backfill.** What the live path could not deliver is not kept in a second queue: it is
//!   already in the store's records on flash. The writer keeps a list of *pending* record ranges
//!   (store positions, see [`crate::storage::Cursor`]) and sends them from the newest records to
//!   the oldest, in batches of about 256 KiB of records, each batch sorted by time, at
//!   `backfill_samples_per_second`, and only while the live queue is not behind. Imports and
//!   remote-write data received by Perch are pending too.
//!
//! Which records the live path delivered is tracked per flush interval ("epoch"): the samples
//! committed between the start of one flush and the start of the next (the store says when a
//! flush takes its samples, [`SampleTap::flush_began`]) end up in the records of one flush; when every one of them was acknowledged
//! those records are done, and if any was dropped (queue full, or an outage) the whole flush's
//! records become pending. So a sample is sent at least once; a resend of identical samples
//! (after a restart or a partly failed batch) is possible and harmless to a Prometheus receiver.
//!
//! The writer's position — the records classified so far and the pending ranges — is written
//! as a store checkpoint with each flush (no extra write, no extra fsync). After a restart,
//! everything flushed after the last checkpoint is pending. A first start with a new
//! `remote_write` entry sends only new data, not the history already stored. A pending range
//! that the ring deletes before it was sent is counted in `perch_remote_write_lost_ranges_total`
//! and logged.
//!
//! Requests follow remote write 1.0: a snappy block of a protobuf `WriteRequest`, the external
//! labels added to series that lack them, `write_relabel_configs` applied, the headers
//! Prometheus sends, over http or https ([`client`]). A 2xx answer is success; network errors
//! (TLS errors included), timeouts and 5xx (and 429 with `retry_on_http_429`) are retried with
//! exponential backoff between `min_backoff` and `max_backoff`; any other answer drops that
//! request, counted by reason.

pub mod client;
pub mod pb;

use crate::config::RemoteWriteConfig;
use crate::model::slice::{Slicer, StepSort, SLICE};
use crate::model::{FastMap, Labels, MatchKind, Matcher, Sample};
use crate::storage::{Cursor, CursorRange, ExportError, SampleTap, SeriesRef, Storage, WriteSpan};
use client::SendError;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Records per backfill batch, by their bytes on flash.
const BACKFILL_BATCH_BYTES: u64 = 256 << 10;
/// How often the writer looks at its queue when idle.
const TICK: Duration = Duration::from_millis(200);
/// The most pending ranges kept; past it the oldest two merge (a resend, never a loss).
const MAX_RANGES: usize = 64;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One flush interval's live samples.
#[derive(Debug, Clone, Default)]
struct Epoch {
    /// Samples of this interval still in the queue or in flight.
    outstanding: usize,
    /// Some sample of this interval was dropped from the live queue.
    dropped: bool,
    /// The records its flush wrote, once it has been flushed.
    spans: Vec<WriteSpan>,
    /// A flush took this interval's samples: later commits belong to the next interval.
    sealed: bool,
    closed: bool,
}

/// Counters and gauges for `/metrics` and the status page.
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    pub sent_live: u64,
    pub sent_backfill: u64,
    pub deferred: u64,
    pub failures: BTreeMap<&'static str, u64>,
    pub lost_ranges: u64,
    pub last_success_ms: i64,
    pub last_error: String,
    pub queued: usize,
    pub pending_bytes: u64,
    pub oldest_unsent_ms: Option<i64>,
}

struct State {
    /// (series, sample, epoch number) waiting to be sent live, oldest first.
    queue: VecDeque<(SeriesRef, Sample, u64)>,
    /// Open epochs, oldest first; the last is the current one. `base` numbers the first.
    epochs: VecDeque<Epoch>,
    base: u64,
    /// Every record before this position is either sent or in `pending`.
    classified: Cursor,
    /// Record ranges not sent yet, ascending, disjoint.
    pending: Vec<(Cursor, Cursor)>,
    /// Relabeled labels by series reference (None: dropped by `write_relabel_configs`).
    labels: FastMap<SeriesRef, Option<Labels>>,
    stats: WriterStats,
    dirty: bool,
}

/// One `remote_write` destination.
pub struct Writer {
    cfg: RemoteWriteConfig,
    external: Labels,
    storage: Rc<dyn Storage>,
    st: RefCell<State>,
    stopped: Cell<bool>,
}

impl Writer {
    fn checkpoint_name(&self) -> String {
        format!("remote_write/{}", self.cfg.name)
    }

    fn new(cfg: RemoteWriteConfig, external: Labels, storage: Rc<dyn Storage>) -> Writer {
        let end = storage.end_cursor();
        let w = Writer {
            cfg,
            external,
            storage,
            st: RefCell::new(State {
                queue: VecDeque::new(),
                epochs: VecDeque::from([Epoch::default()]),
                base: 0,
                classified: end,
                pending: Vec::new(),
                labels: FastMap::default(),
                stats: WriterStats::default(),
                dirty: true,
            }),
            stopped: Cell::new(false),
        };
        if let Some((classified, mut pending)) = w
            .storage
            .checkpoint(&w.checkpoint_name())
            .and_then(|b| decode_position(&b))
        {
            // Flushed after the last checkpoint: not known to be sent.
            if classified < end {
                pending.push((classified, end));
            }
            let mut st = w.st.borrow_mut();
            st.pending = normalize(pending);
            log::info!(
                "remote_write {:?}: resuming, {} pending range(s) to send",
                w.cfg.name,
                st.pending.len()
            );
        }
        w
    }

    fn tap(&self, batch: &[(SeriesRef, Sample)]) {
        let mut st = self.st.borrow_mut();
        let epoch = st.base + st.epochs.len() as u64 - 1;
        if let Some(e) = st.epochs.back_mut() {
            e.outstanding += batch.len();
        }
        for (r, s) in batch {
            st.queue.push_back((*r, *s, epoch));
        }
        while st.queue.len() > self.cfg.capacity {
            if let Some((_, _, e)) = st.queue.pop_front() {
                st.stats.deferred += 1;
                let i = (e - st.base) as usize;
                if let Some(ep) = st.epochs.get_mut(i) {
                    ep.outstanding -= 1;
                    ep.dropped = true;
                }
            }
        }
    }

    /// A flush takes the heads' samples now: the current epoch ends here (unless nothing in it
    /// is at risk, all its samples sent: then it simply goes on), and later commits start the
    /// next one.
    fn flush_began(&self) {
        let mut st = self.st.borrow_mut();
        let Some(e) = st.epochs.back_mut() else {
            return;
        };
        if e.outstanding > 0 || e.dropped {
            e.sealed = true;
            st.epochs.push_back(Epoch::default());
        }
    }

    /// After a flush: the records written since the last call join their epochs (a flush) or
    /// the pending list (an import); finished epochs are classified.
    ///
    /// A flush's records hold the samples of every epoch sealed since the last flush that
    /// wrote (a failed flush leaves its samples in the heads for the next one), so each such
    /// epoch takes them all. A flush the writer did not see begin (one that wrote only a
    /// checkpoint, with the epoch unsealed) closes the current epoch, as before flushes ran in
    /// slices.
    fn flushed(&self, writes: &[WriteSpan]) {
        let mut st = self.st.borrow_mut();
        let mut spans = Vec::new();
        for w in writes {
            if w.flush {
                spans.push(*w);
            } else {
                st.pending.push((w.from, w.until));
                st.dirty = true;
            }
        }
        if !spans.is_empty() {
            if !st.epochs.iter().any(|e| e.sealed && !e.closed) {
                if let Some(e) = st.epochs.back_mut() {
                    e.sealed = true;
                }
                st.epochs.push_back(Epoch::default());
            }
            for e in st.epochs.iter_mut().filter(|e| e.sealed && !e.closed) {
                e.spans.extend_from_slice(&spans);
                e.closed = true;
            }
        }
        self.resolve(&mut st);
    }

    /// Classifies finished epochs, oldest first.
    fn resolve(&self, st: &mut State) {
        while st.epochs.len() > 1 {
            let e = &st.epochs[0];
            if !e.closed || e.outstanding > 0 {
                break;
            }
            let e = st.epochs.pop_front().unwrap_or_default();
            st.base += 1;
            if e.dropped {
                st.pending.extend(e.spans.iter().map(|s| (s.from, s.until)));
            }
            if let Some(last) = e.spans.last() {
                st.classified = st.classified.max(last.until);
            }
            st.dirty = true;
        }
        if st.dirty {
            let pending = normalize(std::mem::take(&mut st.pending));
            st.pending = pending;
            self.storage.set_checkpoint(
                &self.checkpoint_name(),
                encode_position(st.classified, &st.pending),
            );
            st.dirty = false;
        }
    }

    /// The labels to send for a stored label set: external labels added where missing, then
    /// `write_relabel_configs`.
    fn outgoing(&self, labels: Labels) -> Option<Labels> {
        let labels = if self.external.is_empty() {
            labels
        } else {
            let mut b = labels.builder();
            for l in self.external.iter() {
                if !labels.has(&l.name) {
                    b.set(&l.name, &l.value);
                }
            }
            b.build()
        };
        crate::scrape::relabel::process(labels, &self.cfg.write_relabel_configs)
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("Content-Encoding".to_owned(), "snappy".to_owned()),
            (
                "Content-Type".to_owned(),
                "application/x-protobuf".to_owned(),
            ),
            (
                "User-Agent".to_owned(),
                format!("Perch/{}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "X-Prometheus-Remote-Write-Version".to_owned(),
                "0.1.0".to_owned(),
            ),
        ];
        if let Some(a) = &self.cfg.authorization {
            h.push(("Authorization".to_owned(), a.clone()));
        }
        h.extend(self.cfg.headers.iter().cloned());
        h
    }

    async fn send(&self, series: Vec<pb::TimeSeries>) -> Result<(), SendError> {
        use prost::Message;
        let req = pb::WriteRequest {
            timeseries: series,
            metadata: Vec::new(),
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .map_err(|e| SendError::Network(e.to_string()))?;
        client::post(
            &self.cfg.host,
            &self.cfg.path,
            self.cfg.tls.as_ref(),
            &self.headers(),
            &body,
            self.cfg.remote_timeout,
        )
        .await
    }

    /// The next live request: up to `max_samples_per_send` queued samples grouped by series.
    fn live_batch(&self) -> (usize, Vec<pb::TimeSeries>) {
        let mut st = self.st.borrow_mut();
        let n = st.queue.len().min(self.cfg.max_samples_per_send);
        let mut by_ref: Vec<(SeriesRef, Vec<pb::Sample>)> = Vec::new();
        let mut index: FastMap<SeriesRef, usize> = FastMap::default();
        for i in 0..n {
            let (r, s, _) = st.queue[i];
            let k = *index.entry(r).or_insert_with(|| {
                by_ref.push((r, Vec::new()));
                by_ref.len() - 1
            });
            by_ref[k].1.push(pb::Sample {
                value: s.v,
                timestamp: s.t,
            });
        }
        let mut out = Vec::with_capacity(by_ref.len());
        for (r, samples) in by_ref {
            let labels = match st.labels.get(&r) {
                Some(l) => l.clone(),
                None => {
                    let l = self.storage.labels_by_ref(r).and_then(|l| self.outgoing(l));
                    st.labels.insert(r, l.clone());
                    l
                }
            };
            if let Some(l) = labels {
                out.push(pb::TimeSeries::new(to_pb(&l), samples));
            }
        }
        (n, out)
    }

    /// Marks the first `n` queued samples as delivered (or given up on).
    fn ack(&self, n: usize) {
        let mut st = self.st.borrow_mut();
        for _ in 0..n {
            let Some((_, _, e)) = st.queue.pop_front() else {
                break;
            };
            let i = (e - st.base) as usize;
            if let Some(ep) = st.epochs.get_mut(i) {
                ep.outstanding = ep.outstanding.saturating_sub(1);
            }
        }
        self.resolve(&mut st);
    }

    fn failed(&self, e: &SendError, what: &str) {
        let mut st = self.st.borrow_mut();
        *st.stats.failures.entry(e.reason()).or_default() += 1;
        let msg = format!("{what}: {e}");
        if st.stats.last_error != msg {
            log::warn!("remote_write {:?} ({}): {msg}", self.cfg.name, self.cfg.url);
        }
        st.stats.last_error = msg;
    }

    fn succeeded(&self, samples: usize, backfill: bool) {
        let mut st = self.st.borrow_mut();
        if backfill {
            st.stats.sent_backfill += samples as u64;
        } else {
            st.stats.sent_live += samples as u64;
        }
        st.stats.last_success_ms = now_ms();
        st.stats.last_error.clear();
    }

    /// The next backfill batch: the newest records of the newest pending range, as requests of
    /// at most `max_samples_per_send` samples in time order. None when nothing is pending.
    /// Ranges the ring deleted meanwhile are dropped (and counted) here.
    ///
    /// A batch is up to [`BACKFILL_BATCH_BYTES`] of records, about a million samples of live
    /// blocks: it is read, sorted and cut into requests in slices, so scrapes run meanwhile.
    async fn backfill_batch(&self) -> Option<(Cursor, Vec<Vec<pb::TimeSeries>>, usize)> {
        'batch: loop {
            let (a, b) = *self.st.borrow().pending.last()?;
            let oldest = self.storage.oldest_cursor();
            if a < oldest {
                // The ring deleted the start of this range before it was sent.
                let lost_until = b.min(oldest);
                log::warn!(
                    "remote_write {:?}: unsent data from {a} to {lost_until} rotated out of the store before it could be sent",
                    self.cfg.name
                );
                self.st.borrow_mut().stats.lost_ranges += 1;
                self.replace_newest_pending((oldest, b));
                continue;
            }
            let positions = self.storage.block_positions(CursorRange {
                from: Some(a),
                until: Some(b),
            });
            if positions.is_empty() {
                // Only series or checkpoint records in range: nothing to send.
                self.replace_newest_pending((b, b));
                continue;
            }
            let mut bytes = 0u64;
            let mut x = positions[positions.len() - 1].0;
            for (at, len) in positions.iter().rev() {
                if bytes > 0 && bytes + len > BACKFILL_BATCH_BYTES {
                    break;
                }
                bytes += len;
                x = *at;
            }
            let all = vec![vec![Matcher::new(MatchKind::Regex, "__name__", ".+").ok()?]];
            let range = CursorRange {
                from: Some(x),
                until: Some(b),
            };
            let mut job = self
                .storage
                .export_job(&all, range, i64::MIN, i64::MAX, usize::MAX);
            let page = loop {
                match job.step(Some(Instant::now() + SLICE)) {
                    Ok(Some(p)) => break p,
                    Ok(None) => futures_lite::future::yield_now().await,
                    // The ring deleted the batch's start meanwhile: counted above, next time.
                    Err(ExportError::RotatedOut { .. }) => continue 'batch,
                    Err(e) => {
                        log::warn!(
                            "remote_write {:?}: reading the backfill: {e}",
                            self.cfg.name
                        );
                        return None;
                    }
                }
            };
            if page.more {
                // The ring deleted records of the batch while it was read (the whole batch was
                // asked for): the loss is counted above, and the batch read again.
                continue 'batch;
            }
            // All samples of the batch by time, then cut into requests.
            let mut slicer = Slicer::new(Some(SLICE), 64);
            let mut flat: Vec<(i64, usize, f64)> = Vec::new();
            let mut labels: Vec<Labels> = Vec::new();
            for (l, samples) in page.series {
                slicer.tick().await;
                let Some(out) = self.outgoing(l) else {
                    continue;
                };
                labels.push(out);
                let k = labels.len() - 1;
                flat.extend(samples.iter().map(|s| (s.t, k, s.v)));
            }
            let mut sort = StepSort::new(flat);
            while !sort.run(|a, b| (a.0, a.1).cmp(&(b.0, b.1)), || slicer.is_up()) {
                slicer.next_slice().await;
            }
            let flat = sort.take();
            let total = flat.len();
            let mut requests = Vec::new();
            for part in flat.chunks(self.cfg.max_samples_per_send) {
                slicer.tick().await;
                let mut by: BTreeMap<usize, Vec<pb::Sample>> = BTreeMap::new();
                for (t, k, v) in part {
                    by.entry(*k).or_default().push(pb::Sample {
                        value: *v,
                        timestamp: *t,
                    });
                }
                requests.push(
                    by.into_iter()
                        .map(|(k, samples)| pb::TimeSeries::new(to_pb(&labels[k]), samples))
                        .collect(),
                );
            }
            return Some((x, requests, total));
        }
    }

    /// The batch down to `x` was delivered: the pending range shrinks from the top.
    fn backfilled(&self, x: Cursor) {
        let a = self.st.borrow().pending.last().map_or(x, |r| r.0);
        self.replace_newest_pending((a, x));
    }

    /// Replaces the newest pending range by `r` (dropped when empty) and records the change.
    fn replace_newest_pending(&self, r: (Cursor, Cursor)) {
        let mut st = self.st.borrow_mut();
        st.pending.pop();
        st.pending.push(r);
        st.dirty = true;
        // `resolve` normalizes the list, which drops an empty range.
        self.resolve(&mut st);
    }

    /// The writer's task: live first, backfill when the live queue is not behind.
    async fn run(self: Rc<Self>) {
        let mut backoff = self.cfg.min_backoff;
        let mut waited_since: Option<Instant> = None;
        while !self.stopped.get() {
            let queued = self.st.borrow().queue.len();
            let due = queued >= self.cfg.max_samples_per_send
                || waited_since.is_some_and(|w| w.elapsed() >= self.cfg.batch_send_deadline);
            if queued > 0 && due {
                waited_since = None;
                let (n, series) = self.live_batch();
                let samples: usize = series.iter().map(|s| s.samples.len()).sum();
                match self.send(series).await {
                    Ok(()) => {
                        self.ack(n);
                        self.succeeded(samples, false);
                        backoff = self.cfg.min_backoff;
                    }
                    Err(e) => {
                        self.failed(&e, "sending live samples");
                        if e.recoverable(self.cfg.retry_on_http_429) {
                            crate::runtime::timer::sleep(backoff).await;
                            backoff = (backoff * 2).min(self.cfg.max_backoff);
                            waited_since = Some(Instant::now() - self.cfg.batch_send_deadline);
                        } else {
                            self.ack(n);
                        }
                    }
                }
                continue;
            }
            if queued > 0 && waited_since.is_none() {
                waited_since = Some(Instant::now());
            }
            // Backfill only with a healthy link and a live queue that is not behind.
            let healthy = self.st.borrow().stats.last_error.is_empty();
            if healthy || queued == 0 {
                if let Some((x, requests, total)) = self.backfill_batch().await {
                    let mut ok = true;
                    for series in requests {
                        let n: usize = series.iter().map(|s| s.samples.len()).sum();
                        match self.send(series).await {
                            Ok(()) => {
                                self.succeeded(n, true);
                                backoff = self.cfg.min_backoff;
                            }
                            Err(e) => {
                                self.failed(&e, "sending backfill");
                                if e.recoverable(self.cfg.retry_on_http_429) {
                                    ok = false;
                                    crate::runtime::timer::sleep(backoff).await;
                                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                                    break;
                                }
                            }
                        }
                        // The rate limit; live samples go out between backfill requests.
                        let pause = n as f64 / self.cfg.backfill_samples_per_second as f64;
                        crate::runtime::timer::sleep(Duration::from_secs_f64(pause.min(10.0)))
                            .await;
                        if self.stopped.get() {
                            return;
                        }
                        if self.st.borrow().queue.len() >= self.cfg.max_samples_per_send {
                            let (n, live) = self.live_batch();
                            let s: usize = live.iter().map(|s| s.samples.len()).sum();
                            if self.send(live).await.is_ok() {
                                self.ack(n);
                                self.succeeded(s, false);
                            }
                        }
                    }
                    if ok {
                        log::debug!(
                            "remote_write {:?}: backfilled {total} samples down to {x}",
                            self.cfg.name
                        );
                        self.backfilled(x);
                    }
                    continue;
                }
            }
            crate::runtime::timer::sleep(TICK).await;
        }
    }

    /// Figures for `/metrics` and the status page.
    pub fn stats(&self) -> WriterStats {
        let st = self.st.borrow();
        let mut s = st.stats.clone();
        s.queued = st.queue.len();
        let mut oldest: Option<i64> = st.queue.front().map(|q| q.1.t);
        for (a, b) in &st.pending {
            let (bytes, o) = self.storage.span_stats(CursorRange {
                from: Some(*a),
                until: Some(*b),
            });
            s.pending_bytes += bytes;
            if let Some(o) = o {
                oldest = Some(oldest.map_or(o, |x| x.min(o)));
            }
        }
        s.oldest_unsent_ms = oldest;
        s
    }

    pub fn config(&self) -> &RemoteWriteConfig {
        &self.cfg
    }
}

fn to_pb(l: &Labels) -> Vec<pb::Label> {
    l.iter()
        .map(|l| pb::Label {
            name: l.name.clone(),
            value: l.value.clone(),
        })
        .collect()
}

/// Sorts and merges ranges; past [`MAX_RANGES`] the oldest merge (over-sending, never losing).
fn normalize(mut v: Vec<(Cursor, Cursor)>) -> Vec<(Cursor, Cursor)> {
    v.retain(|(a, b)| a < b);
    v.sort();
    let mut out: Vec<(Cursor, Cursor)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    while out.len() > MAX_RANGES {
        let second = out.remove(1);
        out[0].1 = second.1;
    }
    out
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_cursor(out: &mut Vec<u8>, c: Cursor) {
    put_uvarint(out, c.segment);
    put_uvarint(out, c.offset);
}

/// The checkpoint: version 1, the classified position, the pending ranges.
fn encode_position(classified: Cursor, pending: &[(Cursor, Cursor)]) -> Vec<u8> {
    let mut out = vec![1u8];
    put_cursor(&mut out, classified);
    put_uvarint(&mut out, pending.len() as u64);
    for (a, b) in pending {
        put_cursor(&mut out, *a);
        put_cursor(&mut out, *b);
    }
    out
}

fn decode_position(b: &[u8]) -> Option<(Cursor, Vec<(Cursor, Cursor)>)> {
    let mut r = crate::storage::codec::Reader::new(b);
    if r.u8().ok()? != 1 {
        return None;
    }
    let cursor = |r: &mut crate::storage::codec::Reader| -> Option<Cursor> {
        Some(Cursor::at(r.uvarint().ok()?, r.uvarint().ok()?))
    };
    let classified = cursor(&mut r)?;
    let n = r.uvarint().ok()? as usize;
    let mut pending = Vec::with_capacity(n.min(MAX_RANGES));
    for _ in 0..n {
        pending.push((cursor(&mut r)?, cursor(&mut r)?));
    }
    Some((classified, pending))
}

/// All writers; the store's one tap fans out to them.
pub struct RemoteWriters {
    pub writers: Vec<Rc<Writer>>,
}

impl SampleTap for RemoteWriters {
    fn committed(&self, batch: &[(SeriesRef, Sample)]) {
        for w in &self.writers {
            w.tap(batch);
        }
    }

    fn flush_began(&self) {
        for w in &self.writers {
            w.flush_began();
        }
    }
}

impl RemoteWriters {
    /// Starts one writer task per config entry and registers the tap (none: no tap).
    pub fn start(
        ex: &async_executor::LocalExecutor<'static>,
        configs: &[RemoteWriteConfig],
        external: &Labels,
        storage: Rc<dyn Storage>,
    ) -> Rc<RemoteWriters> {
        let writers: Vec<Rc<Writer>> = configs
            .iter()
            .map(|c| Rc::new(Writer::new(c.clone(), external.clone(), storage.clone())))
            .collect();
        for w in &writers {
            ex.spawn(w.clone().run()).detach();
        }
        let all = Rc::new(RemoteWriters { writers });
        if all.writers.is_empty() {
            storage.set_tap(None);
        } else {
            storage.set_tap(Some(all.clone()));
        }
        storage.take_writes();
        all
    }

    /// Call after every flush of the store.
    pub fn flushed(&self, storage: &dyn Storage) {
        let writes = storage.take_writes();
        for w in &self.writers {
            w.flushed(&writes);
        }
    }

    /// Stops the tasks (they finish their current request).
    pub fn stop(&self) {
        for w in &self.writers {
            w.stopped.set(true);
        }
    }

    /// Perch's remote-write metrics, in the text format.
    pub fn render(&self, out: &mut String) {
        if self.writers.is_empty() {
            return;
        }
        let stats: Vec<(&Writer, WriterStats)> =
            self.writers.iter().map(|w| (&**w, w.stats())).collect();
        let lbl = |w: &Writer| format!("remote_name=\"{}\",url=\"{}\"", w.cfg.name, w.cfg.url);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {}", crate::telemetry::fmt_value(v));
            }
        };
        family(
            "perch_remote_write_samples_sent_total",
            "counter",
            "Samples delivered, live or backfilled after an outage.",
            stats
                .iter()
                .flat_map(|(w, s)| {
                    [
                        (format!("{},path=\"live\"", lbl(w)), s.sent_live as f64),
                        (
                            format!("{},path=\"backfill\"", lbl(w)),
                            s.sent_backfill as f64,
                        ),
                    ]
                })
                .collect(),
        );
        family(
            "perch_remote_write_failures_total",
            "counter",
            "Failed requests by reason (network, timeout, http_429, http_4xx, http_5xx).",
            stats
                .iter()
                .flat_map(|(w, s)| {
                    ["network", "timeout", "http_429", "http_4xx", "http_5xx"].map(|r| {
                        (
                            format!("{},reason=\"{r}\"", lbl(w)),
                            *s.failures.get(r).unwrap_or(&0) as f64,
                        )
                    })
                })
                .collect(),
        );
        family(
            "perch_remote_write_samples_deferred_total",
            "counter",
            "Samples the live queue could not hold; they are sent from the store later.",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.deferred as f64))
                .collect(),
        );
        family(
            "perch_remote_write_queued_samples",
            "gauge",
            "Samples waiting in the live queue.",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.queued as f64))
                .collect(),
        );
        family(
            "perch_remote_write_pending_bytes",
            "gauge",
            "Bytes of stored records not sent yet (to be backfilled).",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.pending_bytes as f64))
                .collect(),
        );
        family(
            "perch_remote_write_oldest_unsent_timestamp_seconds",
            "gauge",
            "Timestamp of the oldest sample not sent yet (0 when all is sent).",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.oldest_unsent_ms.unwrap_or(0) as f64 / 1000.0))
                .collect(),
        );
        family(
            "perch_remote_write_last_success_timestamp_seconds",
            "gauge",
            "When a request last succeeded (0: never).",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.last_success_ms as f64 / 1000.0))
                .collect(),
        );
        family(
            "perch_remote_write_lost_ranges_total",
            "counter",
            "Unsent ranges of records that rotated out of the store before they were sent.",
            stats
                .iter()
                .map(|(w, s)| (lbl(w), s.lost_ranges as f64))
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::flash::{FlashOptions, FlashStorage};

    fn config(capacity: usize) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url: "http://127.0.0.1:9/api/v1/write".into(),
            host: "127.0.0.1:9".into(),
            path: "/api/v1/write".into(),
            tls: None,
            name: "test".into(),
            remote_timeout: Duration::from_secs(1),
            headers: Vec::new(),
            write_relabel_configs: Vec::new(),
            authorization: None,
            capacity,
            max_samples_per_send: 100,
            batch_send_deadline: Duration::from_secs(5),
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
            retry_on_http_429: false,
            backfill_samples_per_second: 1000,
        }
    }

    fn scrape(store: &FlashStorage, t: i64) {
        let mut app = store.appender();
        for i in 0..3 {
            let l = Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]);
            app.append(&l, t, i as f64).unwrap();
        }
        app.commit().unwrap();
    }

    #[test]
    fn samples_committed_during_a_flush_in_slices_belong_to_the_next_flush() {
        let store = Rc::new(FlashStorage::in_memory(FlashOptions::default()).unwrap());
        let w = Rc::new(Writer::new(config(100), Labels::default(), store.clone()));
        let all = Rc::new(RemoteWriters {
            writers: vec![w.clone()],
        });
        store.set_tap(Some(all.clone()));
        store.take_writes();
        scrape(&store, 1000);
        // The flush takes its samples in its first slice; a scrape commits before it ends.
        assert!(!store.flush_step(Duration::ZERO).unwrap());
        scrape(&store, 2000);
        while !store.flush_step(Duration::ZERO).unwrap() {}
        let first = store.take_writes();
        w.flushed(&first);
        {
            let st = w.st.borrow();
            assert_eq!(st.epochs.len(), 2);
            assert_eq!((st.epochs[0].outstanding, st.epochs[0].closed), (3, true));
            assert_eq!(st.epochs[0].spans, first);
            // The second scrape waits for the flush that writes it.
            assert_eq!((st.epochs[1].outstanding, st.epochs[1].closed), (3, false));
            assert!(st.epochs[1].spans.is_empty());
        }
        store.flush().unwrap();
        let second = store.take_writes();
        assert_eq!(second.len(), 1);
        w.flushed(&second);
        let st = w.st.borrow();
        assert_eq!(st.epochs[1].spans, second);
        assert!(st.epochs[1].closed);
    }

    /// A store on a memory backend (to make its writes or syncs fail) with one writer tapping
    /// it, its write log emptied.
    fn tapped_store() -> (
        Rc<crate::storage::backend::MemBackend>,
        Rc<FlashStorage>,
        Rc<Writer>,
    ) {
        let b = Rc::new(crate::storage::backend::MemBackend::new());
        let (store, _) = FlashStorage::open(Box::new(b.clone()), FlashOptions::default()).unwrap();
        let store = Rc::new(store);
        let w = Rc::new(Writer::new(config(100), Labels::default(), store.clone()));
        store.set_tap(Some(Rc::new(RemoteWriters {
            writers: vec![w.clone()],
        })));
        store.take_writes();
        (b, store, w)
    }

    #[test]
    fn a_failed_flush_leaves_its_epoch_to_the_next_flush_that_writes() {
        let (b, store, w) = tapped_store();
        scrape(&store, 1000);
        b.fail_writes.set(true);
        assert!(store.flush().is_err());
        w.flushed(&store.take_writes());
        scrape(&store, 2000);
        b.fail_writes.set(false);
        store.flush().unwrap();
        let spans = store.take_writes();
        w.flushed(&spans);
        let st = w.st.borrow();
        // Both intervals' samples are in the one flush that wrote: both epochs take its records.
        assert_eq!(st.epochs.len(), 3);
        for e in st.epochs.iter().take(2) {
            assert_eq!((e.outstanding, e.closed, &e.spans), (3, true, &spans));
        }
        assert!(!st.epochs[2].sealed);
    }

    #[test]
    fn a_flush_whose_sync_fails_leaves_its_epoch_to_the_next_flush_that_writes() {
        let (b, store, w) = tapped_store();
        scrape(&store, 1000);
        b.fail_syncs.set(true);
        // In slices: the append lands, its sync fails; the write log does not list it.
        let mut r = Ok(false);
        while r == Ok(false) {
            r = store.flush_step(Duration::ZERO).map_err(|e| e.to_string());
        }
        assert!(r.is_err());
        assert!(store.take_writes().is_empty());
        w.flushed(&[]);
        scrape(&store, 2000);
        b.fail_syncs.set(false);
        while !store.flush_step(Duration::ZERO).unwrap() {}
        let spans = store.take_writes();
        assert_eq!(spans.len(), 1);
        w.flushed(&spans);
        let st = w.st.borrow();
        for e in st.epochs.iter().take(2) {
            assert_eq!((e.outstanding, e.closed, &e.spans), (3, true, &spans));
        }
    }

    fn c(segment: u64, offset: u64) -> Cursor {
        Cursor::at(segment, offset)
    }

    #[test]
    fn positions_round_trip_and_ranges_merge() {
        let p = vec![(c(1, 0), c(1, 100)), (c(2, 5), c(3, 0))];
        let b = encode_position(c(3, 40), &p);
        assert_eq!(decode_position(&b), Some((c(3, 40), p)));
        assert_eq!(decode_position(&[9]), None);
        let n = normalize(vec![
            (c(2, 0), c(2, 50)),
            (c(1, 0), c(1, 10)),
            (c(2, 40), c(2, 90)),
            (c(3, 0), c(3, 0)),
        ]);
        assert_eq!(n, vec![(c(1, 0), c(1, 10)), (c(2, 0), c(2, 90))]);
        let many: Vec<_> = (0..100).map(|i| (c(i, 0), c(i, 10))).collect();
        let n = normalize(many);
        assert_eq!(n.len(), MAX_RANGES);
        assert_eq!(n[0], (c(0, 0), c(36, 10)));
    }
}
