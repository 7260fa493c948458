//! An in-memory store behind the storage seam.
//!
//! Keeps every series' samples in a `Vec` in RAM, with an inverted index (label pair → series)
//! for selection. Nothing survives a restart: this is the store the foundation runs on until the
//! flash store (see `docs/architecture.md`) takes its place behind the same seam, and the store
//! tests use as a reference.
//!
//! Bounds: retention by time counts back from the newest sample in the store (as Prometheus);
//! the number of samples kept is capped at `max_samples` (oldest dropped first, per series, when
//! housekeeping runs) and the number of series at `max_series` (further new series are refused
//! and counted).

use super::{
    AppendError, Appender, CommitStats, Querier, Series, SeriesRef, Storage, StorageError,
    StorageStats,
};
use crate::model::{Labels, MatchKind, Matcher, Sample};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

/// Bounds of the in-memory store.
#[derive(Debug, Clone, Copy)]
pub struct MemOptions {
    /// Samples older than the newest sample minus this are dropped (ms).
    pub retention_ms: i64,
    /// At most this many samples are kept in all.
    pub max_samples: u64,
    /// At most this many series.
    pub max_series: usize,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            retention_ms: 15 * 24 * 3600 * 1000,
            max_samples: 8 << 20,
            max_series: 1 << 20,
        }
    }
}

struct MemSeries {
    labels: Labels,
    samples: Vec<Sample>,
}

#[derive(Default)]
struct Head {
    series: Vec<MemSeries>,
    by_labels: HashMap<Labels, SeriesRef>,
    /// name → value → series refs (ascending).
    postings: HashMap<String, HashMap<String, Vec<SeriesRef>>>,
    samples: u64,
    appended_total: u64,
    out_of_order_total: u64,
    duplicate_total: u64,
    max_time: Option<i64>,
}

impl Head {
    fn get_or_create(
        &mut self,
        labels: &Labels,
        max_series: usize,
    ) -> Result<(SeriesRef, bool), AppendError> {
        if let Some(&r) = self.by_labels.get(labels) {
            return Ok((r, false));
        }
        if self.series.len() >= max_series {
            return Err(AppendError::TooManySeries);
        }
        let r = self.series.len() as SeriesRef;
        for l in labels {
            self.postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default()
                .push(r);
        }
        self.series.push(MemSeries {
            labels: labels.clone(),
            samples: Vec::new(),
        });
        self.by_labels.insert(labels.clone(), r);
        Ok((r, true))
    }

    fn last(&self, r: SeriesRef) -> Option<Sample> {
        self.series.get(r as usize)?.samples.last().copied()
    }

    /// The refs of series that may match: postings of the equality matchers intersected, or all.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let mut lists: Vec<&Vec<SeriesRef>> = Vec::new();
        for m in matchers {
            if m.kind == MatchKind::Equal && !m.value.is_empty() {
                match self.postings.get(&m.name).and_then(|v| v.get(&m.value)) {
                    Some(list) => lists.push(list),
                    None => return Vec::new(),
                }
            }
        }
        if lists.is_empty() {
            return (0..self.series.len() as SeriesRef).collect();
        }
        lists.sort_by_key(|l| l.len());
        let mut out: Vec<SeriesRef> = lists[0].clone();
        for l in &lists[1..] {
            out.retain(|r| l.binary_search(r).is_ok());
        }
        out
    }

    fn matching(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<&MemSeries> {
        let mut v: Vec<&MemSeries> = self
            .candidates(matchers)
            .into_iter()
            .filter_map(|r| self.series.get(r as usize))
            .filter(|s| Matcher::all_match(matchers, &s.labels))
            .filter(|s| {
                let (Some(first), Some(last)) = (s.samples.first(), s.samples.last()) else {
                    return false;
                };
                first.t <= maxt && last.t >= mint
            })
            .collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }
}

/// The in-memory store. Cloning shares the same store.
#[derive(Clone)]
pub struct MemStorage {
    head: Rc<RefCell<Head>>,
    opts: MemOptions,
}

impl MemStorage {
    pub fn new(opts: MemOptions) -> Self {
        MemStorage {
            head: Rc::new(RefCell::new(Head::default())),
            opts,
        }
    }
}

struct MemAppender {
    head: Rc<RefCell<Head>>,
    opts: MemOptions,
    batch: Vec<(SeriesRef, Sample)>,
    /// The newest timestamp appended per series in this batch, to order-check within it.
    batch_last: HashMap<SeriesRef, Sample>,
    series_added: usize,
}

impl MemAppender {
    fn check(&self, r: SeriesRef, t: i64, v: f64) -> Result<bool, AppendError> {
        let last = match self.batch_last.get(&r) {
            Some(s) => Some(*s),
            None => self.head.borrow().last(r),
        };
        match last {
            Some(l) if t < l.t => Err(AppendError::OutOfOrder),
            Some(l) if t == l.t && l.v.to_bits() != v.to_bits() => {
                Err(AppendError::DuplicateTimestamp)
            }
            Some(l) if t == l.t => Ok(false),
            _ => Ok(true),
        }
    }

    fn push(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        match self.check(r, t, v) {
            Ok(true) => {
                self.batch.push((r, Sample { t, v }));
                self.batch_last.insert(r, Sample { t, v });
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                let mut h = self.head.borrow_mut();
                match e {
                    AppendError::OutOfOrder => h.out_of_order_total += 1,
                    AppendError::DuplicateTimestamp => h.duplicate_total += 1,
                    _ => {}
                }
                Err(e)
            }
        }
    }
}

impl Appender for MemAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError> {
        let (r, created) = self
            .head
            .borrow_mut()
            .get_or_create(labels, self.opts.max_series)?;
        if created {
            self.series_added += 1;
        }
        self.push(r, t, v)?;
        Ok(r)
    }

    fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        if r as usize >= self.head.borrow().series.len() {
            return Err(AppendError::UnknownRef);
        }
        self.push(r, t, v)
    }

    fn commit(self: Box<Self>) -> Result<CommitStats, StorageError> {
        let mut h = self.head.borrow_mut();
        let n = self.batch.len();
        for (r, s) in &self.batch {
            if let Some(series) = h.series.get_mut(*r as usize) {
                series.samples.push(*s);
            }
            h.max_time = Some(h.max_time.map_or(s.t, |m| m.max(s.t)));
        }
        h.samples += n as u64;
        h.appended_total += n as u64;
        Ok(CommitStats {
            samples: n,
            series_added: self.series_added,
        })
    }

    fn rollback(self: Box<Self>) {}
}

struct MemQuerier {
    head: Rc<RefCell<Head>>,
}

impl Querier for MemQuerier {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError> {
        let h = self.head.borrow();
        Ok(h.matching(matchers, mint, maxt)
            .into_iter()
            .map(|s| {
                let lo = s.samples.partition_point(|x| x.t < mint);
                let hi = s.samples.partition_point(|x| x.t <= maxt);
                let owned: Vec<Sample> = s.samples[lo..hi].to_vec();
                Series {
                    labels: s.labels.clone(),
                    samples: owned.into_iter(),
                }
            })
            .collect())
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let h = self.head.borrow();
        let mut names = BTreeSet::new();
        for s in h.matching(matchers, mint, maxt) {
            for l in &s.labels {
                if !names.contains(l.name.as_str()) {
                    names.insert(l.name.clone());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let h = self.head.borrow();
        let mut values = BTreeSet::new();
        for s in h.matching(matchers, mint, maxt) {
            let v = s.labels.get(name);
            if !v.is_empty() && !values.contains(v) {
                values.insert(v.to_owned());
            }
        }
        Ok(values.into_iter().collect())
    }
}

impl Storage for MemStorage {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(MemAppender {
            head: self.head.clone(),
            opts: self.opts,
            batch: Vec::new(),
            batch_last: HashMap::new(),
            series_added: 0,
        })
    }

    fn querier(&self) -> Box<dyn Querier> {
        Box::new(MemQuerier {
            head: self.head.clone(),
        })
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn housekeeping(&self) {
        let mut h = self.head.borrow_mut();
        let Some(max_time) = h.max_time else { return };
        let cutoff = max_time.saturating_sub(self.opts.retention_ms);
        // Over the sample cap, drop the oldest fraction of every series alike.
        let over = h.samples.saturating_sub(self.opts.max_samples);
        let total = h.samples.max(1);
        let mut kept = 0u64;
        for s in &mut h.series {
            let mut lo = s.samples.partition_point(|x| x.t < cutoff);
            if over > 0 {
                let share = (s.samples.len() as u64 * over).div_ceil(total);
                lo = lo.max(share as usize);
            }
            let lo = lo.min(s.samples.len());
            if lo > 0 {
                s.samples.drain(..lo);
            }
            kept += s.samples.len() as u64;
        }
        h.samples = kept;
    }

    fn import(&self, items: Vec<(Labels, Vec<Sample>)>) -> Result<usize, StorageError> {
        let mut h = self.head.borrow_mut();
        let mut n = 0;
        for (labels, samples) in items {
            let (r, _) = h
                .get_or_create(&labels, self.opts.max_series)
                .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
            let s = &mut h.series[r as usize].samples;
            s.extend_from_slice(&samples);
            s.sort_by_key(|x| x.t);
            s.dedup_by_key(|x| x.t);
            n += samples.len();
            if let Some(last) = samples.last() {
                h.max_time = Some(h.max_time.map_or(last.t, |m| m.max(last.t)));
            }
        }
        h.samples += n as u64;
        h.appended_total += n as u64;
        Ok(n)
    }

    fn stats(&self) -> StorageStats {
        let h = self.head.borrow();
        let min_time = h
            .series
            .iter()
            .filter_map(|s| s.samples.first())
            .map(|s| s.t)
            .min();
        StorageStats {
            series: h.series.len() as u64,
            samples_in_memory: h.samples,
            samples_appended_total: h.appended_total,
            out_of_order_total: h.out_of_order_total,
            duplicate_total: h.duplicate_total,
            min_time,
            max_time: h.max_time,
            memory_bytes: h
                .series
                .iter()
                .map(|s| s.labels.heap_bytes() as u64 + s.samples.capacity() as u64 * 16)
                .sum(),
            ..StorageStats::default()
        }
    }
}
