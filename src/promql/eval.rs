//! The evaluator: walks the AST once for all steps of a query.
//!
//! Values during evaluation ([`Val`]): a scalar has one value per step; an instant vector over
//! steps ([`StepVec`]) is a table of distinct label sets plus, per step, the `(series, value)`
//! pairs present at that step, in evaluation order; a range vector is only materialised as a
//! [`RangeArg`] (raw samples per series plus range, offset and `@`), from which functions cut a
//! window `(ref - range, ref]` per step.
//!
//! Invariants: every label set in a [`Table`] is distinct; a [`StepVec`] never has the same
//! series twice in one step (that is Prometheus's "vector cannot contain metrics with the same
//! labelset" error, checked by [`StepVecBuilder`]).
//!
//! Delayed `__name__` removal ([`EngineOptions::delayed_name_removal`], off by default): an
//! operation that drops the metric name keeps the labels and *marks* the series instead
//! ([`Table::marked`]; see [`name_dropped`]); `label_replace`/`label_join`, `by`/`without` and
//! vector matching still see the name. [`Evaluator::eval_top`] removes the name and the
//! `__type__`/`__unit__` labels of marked series at the end and only then rejects two equal label
//! sets at one step (series that become equal but never share a step merge). Without the mode no
//! series is ever marked: the marks are an empty vector and every check of one is a bounds check
//! per series, never per point.

use super::{aggregate, binary, functions, EngineOptions, QueryError, RangeSeries, VectorSample};
use super::{QueryResult, QueryStats, Value, DEFAULT_SUBQUERY_STEP_MS};
use crate::model::hash::FastHasher;
use crate::model::slice::StepSort;
use crate::model::FastMap;
use crate::model::{is_stale, Labels, MatchKind, Matcher, Sample, METRIC_NAME};
use crate::storage::Querier;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};
use std::collections::hash_map::Entry;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::pin::Pin;
use std::time::UNIX_EPOCH;

pub(crate) type EvalFuture<'a> = Pin<Box<dyn Future<Output = Result<Val, QueryError>> + 'a>>;

/// The clock is read after this much work (samples or points processed, label sets built):
/// tens of microseconds. The evaluator yields to the executor once a slice
/// ([`crate::model::slice::SLICE`]) has passed since it last did, so a unit of work that is
/// slower than it looks (a label set, a histogram) cannot stretch a slice, and the yields
/// themselves (a round through the executor, a look at the client's socket) stay rare.
const CHECK_EVERY: u32 = 1 << 12;

/// The work counted for a step that builds or frees a label set (an allocation or a few, and
/// a hash): about as much as a few dozen samples.
pub(crate) const PER_SERIES_WORK: usize = 32;

/// The steps of an evaluation: `start, start + step, …, ≤ end` (ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Span {
    pub fn len(&self) -> usize {
        if self.end < self.start || self.step <= 0 {
            return 0;
        }
        ((self.end as i128 - self.start as i128) / self.step as i128) as usize + 1
    }

    pub fn ts(&self, i: usize) -> i64 {
        // In i128: the product may overflow even though the result is within [start, end].
        (self.start as i128 + i as i128 * self.step as i128) as i64
    }
}

/// Distinct label sets, each with an index.
#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    pub labels: Vec<Labels>,
    /// The first index of each label hash; further label sets with the same hash follow
    /// through `chain`. The label sets themselves are only in `labels`: interning clones
    /// nothing.
    index: FastMap<u64, u32>,
    /// Per index, the next index with the same hash (`u32::MAX`: none).
    chain: Vec<u32>,
    /// Per index, whether the series is marked for delayed name removal. Only as long as the
    /// highest marked index needs: empty when nothing is marked (always, without the mode).
    marks: Vec<bool>,
}

impl Table {
    /// The index of `l`, added if new; the flag is true if it was new.
    pub fn intern(&mut self, l: Labels) -> (u32, bool) {
        let h = BuildHasherDefault::<FastHasher>::default().hash_one(&l);
        let i = self.labels.len() as u32;
        match self.index.entry(h) {
            Entry::Vacant(e) => {
                e.insert(i);
            }
            Entry::Occupied(e) => {
                let mut at = *e.get();
                loop {
                    if self.labels[at as usize] == l {
                        return (at, false);
                    }
                    match self.chain[at as usize] {
                        u32::MAX => break,
                        next => at = next,
                    }
                }
                self.chain[at as usize] = i;
            }
        }
        self.labels.push(l);
        self.chain.push(u32::MAX);
        (i, true)
    }

    pub fn get(&self, i: u32) -> &Labels {
        &self.labels[i as usize]
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether series `i` is marked for delayed name removal.
    pub fn marked(&self, i: u32) -> bool {
        self.marks.get(i as usize).copied().unwrap_or(false)
    }

    /// Marks or unmarks series `i`.
    pub fn set_mark(&mut self, i: u32, mark: bool) {
        let i = i as usize;
        if i >= self.marks.len() {
            if !mark {
                return;
            }
            self.marks.resize(i + 1, false);
        }
        self.marks[i] = mark;
    }

    /// Whether any series is marked.
    pub fn has_marks(&self) -> bool {
        self.marks.contains(&true)
    }
}

/// An instant vector at every step of a span.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepVec {
    pub table: Table,
    /// The series present at each step and their values, step after step, each step's in
    /// evaluation order: step `k` is `points[ends[k - 1]..ends[k]]` (from 0 for the first).
    /// Two allocations for the whole vector, however many steps it has.
    points: Vec<(u32, f64)>,
    ends: Vec<usize>,
}

impl StepVec {
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// How many steps the vector has.
    pub fn step_count(&self) -> usize {
        self.ends.len()
    }

    fn step_range(&self, k: usize) -> std::ops::Range<usize> {
        let from = k.checked_sub(1).map_or(0, |p| self.ends[p]);
        from..self.ends[k]
    }

    /// The series present at step `k` and their values (`k` below [`StepVec::step_count`]).
    pub fn step(&self, k: usize) -> &[(u32, f64)] {
        &self.points[self.step_range(k)]
    }

    pub fn step_mut(&mut self, k: usize) -> &mut [(u32, f64)] {
        let r = self.step_range(k);
        &mut self.points[r]
    }

    /// Every step, in order.
    pub fn steps(&self) -> impl ExactSizeIterator<Item = &[(u32, f64)]> + '_ {
        (0..self.ends.len()).map(|k| self.step(k))
    }

    /// The vector at the first (only) step, in evaluation order, stamped with `t`.
    pub fn into_instant(self, t: i64) -> Vec<VectorSample> {
        let first = if self.ends.is_empty() {
            0..0
        } else {
            self.step_range(0)
        };
        let StepVec { table, points, .. } = self;
        let mut labels: Vec<Option<Labels>> = table.labels.into_iter().map(Some).collect();
        points[first]
            .iter()
            .map(|&(i, v)| VectorSample {
                labels: labels[i as usize].take().unwrap_or_default(),
                t,
                v,
            })
            .collect()
    }

    /// One series per label set with points, sorted by labels; yielding to the executor as it
    /// goes: a range query's answer (or a subquery's) over 100k series is millions of points to
    /// move and 100k label sets to sort, which held the executor for tens of milliseconds in
    /// one piece.
    pub async fn into_matrix(self, span: Span, ev: &mut Evaluator<'_>) -> Vec<RangeSeries> {
        const POINTS_PER_TICK: usize = 1 << 12;
        let mut counts = vec![0usize; self.table.len()];
        for part in self.points.chunks(POINTS_PER_TICK) {
            for &(i, _) in part {
                counts[i as usize] += 1;
            }
            ev.tick(part.len()).await;
        }
        let mut samples: Vec<Vec<Sample>> = Vec::with_capacity(counts.len());
        for part in counts.chunks(POINTS_PER_TICK) {
            samples.extend(part.iter().map(|&n| Vec::with_capacity(n)));
            ev.tick(part.len() * PER_SERIES_WORK).await;
        }
        drop(counts);
        let mut moved = 0;
        for (k, step) in self.steps().enumerate() {
            let t = span.ts(k);
            for part in step.chunks(POINTS_PER_TICK) {
                for &(i, v) in part {
                    samples[i as usize].push(Sample { t, v });
                }
                moved += part.len();
                if moved >= POINTS_PER_TICK {
                    ev.tick(moved).await;
                    moved = 0;
                }
            }
        }
        let mut out: Vec<RangeSeries> = Vec::with_capacity(samples.len());
        for (labels, samples) in self.table.labels.into_iter().zip(samples) {
            if !samples.is_empty() {
                out.push(RangeSeries { labels, samples });
                ev.tick(1).await;
            }
        }
        let mut sort = StepSort::new(out);
        while !sort.run(|a, b| a.labels.cmp(&b.labels), || ev.slice_up()) {
            ev.next_slice().await;
        }
        sort.take()
    }

    /// [`StepVec::into_matrix`] with each series' delayed-removal mark beside it (empty if
    /// nothing is marked), for a subquery's result.
    pub async fn into_matrix_marked(
        self,
        span: Span,
        ev: &mut Evaluator<'_>,
    ) -> (Vec<RangeSeries>, Vec<bool>) {
        if !self.table.has_marks() {
            return (self.into_matrix(span, ev).await, Vec::new());
        }
        let marks: Vec<bool> = (0..self.table.len() as u32)
            .map(|i| self.table.marked(i))
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); self.table.len()];
        for (k, step) in self.steps().enumerate() {
            let t = span.ts(k);
            for &(i, v) in step {
                samples[i as usize].push(Sample { t, v });
            }
        }
        let mut out: Vec<(RangeSeries, bool)> = (self.table.labels.into_iter().zip(samples))
            .zip(marks)
            .filter(|((_, s), _)| !s.is_empty())
            .map(|((labels, samples), m)| (RangeSeries { labels, samples }, m))
            .collect();
        out.sort_by(|a, b| a.0.labels.cmp(&b.0.labels));
        out.into_iter().unzip()
    }

    /// The end of delayed name removal: marked series lose `__name__`, `__type__` and
    /// `__unit__`; series that end up with the same labels merge, unless they are both present
    /// at one step, which is Prometheus's "vector cannot contain metrics with the same
    /// labelset". The order within each step is kept.
    pub fn drop_marked_names(self) -> Result<StepVec, QueryError> {
        if !self.table.has_marks() {
            return Ok(self);
        }
        let mut b = StepVecBuilder::new(self.step_count());
        let map: Vec<u32> = (0..self.table.len() as u32)
            .map(|i| {
                let l = self.table.get(i);
                b.intern(if self.table.marked(i) {
                    drop_name(l)
                } else {
                    l.clone()
                })
            })
            .collect();
        for (k, step) in self.steps().enumerate() {
            for &(i, v) in step {
                b.push(k, map[i as usize], v)?;
            }
        }
        Ok(b.finish())
    }
}

/// The end of delayed name removal for a range vector (a subquery as the whole query): marked
/// series lose `__name__`, `__type__` and `__unit__`; series with the same labels then merge, and
/// two samples of them at one time are "vector cannot contain metrics with the same labelset".
/// Sorted by labels, as every matrix result.
pub(crate) fn drop_marked_names_matrix(
    series: Vec<RangeSeries>,
    marks: &[bool],
) -> Result<Vec<RangeSeries>, QueryError> {
    if !marks.contains(&true) {
        return Ok(series);
    }
    let mut out: Vec<RangeSeries> = Vec::with_capacity(series.len());
    let mut index: std::collections::HashMap<Labels, usize> = Default::default();
    let mut merged = false;
    for (i, mut s) in series.into_iter().enumerate() {
        if marks.get(i).copied().unwrap_or(false) {
            s.labels = drop_name(&s.labels);
        }
        match index.entry(s.labels.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                out[*e.get()].samples.extend(s.samples);
                merged = true;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(s);
            }
        }
    }
    if merged {
        for s in &mut out {
            s.samples.sort_by_key(|x| x.t);
            if s.samples.windows(2).any(|w| w[0].t == w[1].t) {
                return Err(same_labelset());
            }
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

pub(crate) fn same_labelset() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// Builds a [`StepVec`] in any order of steps, rejecting a label set seen twice in one step.
/// Points are gathered in one vector and put in step order by [`StepVecBuilder::finish`]
/// (stably, so each step keeps the order its points came in).
pub(crate) struct StepVecBuilder {
    table: Table,
    /// `(step, series, value)` in the order pushed.
    pushed: Vec<(u32, u32, f64)>,
    /// Points per step.
    counts: Vec<usize>,
    /// Whether the steps were pushed in ascending order (then no reordering is needed).
    in_order: bool,
    last: Vec<usize>,
}

impl StepVecBuilder {
    pub fn new(steps: usize) -> Self {
        StepVecBuilder {
            table: Table::default(),
            pushed: Vec::new(),
            counts: vec![0; steps],
            in_order: true,
            last: Vec::new(),
        }
    }

    pub fn intern(&mut self, l: Labels) -> u32 {
        let (i, new) = self.table.intern(l);
        if new {
            self.last.push(usize::MAX);
        }
        i
    }

    /// [`StepVecBuilder::intern`] with a delayed-removal mark for a new label set; a label set
    /// already there keeps its mark (the first series of a merge decides, as in Prometheus).
    pub fn intern_marked(&mut self, l: Labels, mark: bool) -> u32 {
        let (i, new) = self.table.intern(l);
        if new {
            self.last.push(usize::MAX);
            if mark {
                self.table.set_mark(i, true);
            }
        }
        i
    }

    /// Sets the delayed-removal mark of series `i`.
    pub fn set_mark(&mut self, i: u32, mark: bool) {
        self.table.set_mark(i, mark);
    }

    /// How many distinct label sets were interned so far.
    pub fn series(&self) -> usize {
        self.table.len()
    }

    pub fn push(&mut self, step: usize, i: u32, v: f64) -> Result<(), QueryError> {
        let last = &mut self.last[i as usize];
        if *last == step {
            return Err(same_labelset());
        }
        *last = step;
        if let Some(&(prev, _, _)) = self.pushed.last() {
            self.in_order &= prev as usize <= step;
        }
        self.counts[step] += 1;
        self.pushed.push((step as u32, i, v));
        Ok(())
    }

    pub fn finish(self) -> StepVec {
        let (mut sorter, pushed) = self.into_sorter();
        for p in pushed {
            sorter.place(p);
        }
        sorter.done()
    }

    /// As [`StepVecBuilder::finish`], yielding to the executor while it orders a large table by
    /// step (a range query over many series pushes millions of points, series by series).
    pub async fn finish_yielding(self, ev: &mut Evaluator<'_>) -> StepVec {
        let (mut sorter, pushed) = self.into_sorter();
        for part in pushed.chunks(1 << 12) {
            for p in part {
                sorter.place(*p);
            }
            ev.tick(part.len()).await;
        }
        sorter.done()
    }

    /// The table, ready to take the pushed points in any order (none if they came in step
    /// order: then they are already placed), and the points still to place.
    fn into_sorter(self) -> (StepSorter, Vec<(u32, u32, f64)>) {
        let StepVecBuilder {
            table,
            pushed,
            counts,
            in_order,
            ..
        } = self;
        let mut ends = counts;
        let mut total = 0;
        for e in &mut ends {
            total += *e;
            *e = total;
        }
        if in_order {
            // Same size and alignment: collected in place, no new allocation.
            let points = pushed.into_iter().map(|(_, i, v)| (i, v)).collect();
            let sorter = StepSorter {
                table,
                points,
                ends,
                next: Vec::new(),
            };
            return (sorter, Vec::new());
        }
        // A counting sort by step: each point goes to the next free slot of its step.
        let next: Vec<usize> = std::iter::once(0)
            .chain(ends.iter().copied())
            .take(ends.len())
            .collect();
        let sorter = StepSorter {
            table,
            points: vec![(0u32, 0.0f64); total],
            ends,
            next,
        };
        (sorter, pushed)
    }
}

/// A [`StepVec`] being filled by a counting sort of its points by step.
struct StepSorter {
    table: Table,
    points: Vec<(u32, f64)>,
    ends: Vec<usize>,
    /// The next free slot of each step.
    next: Vec<usize>,
}

impl StepSorter {
    fn place(&mut self, (k, i, v): (u32, u32, f64)) {
        let slot = &mut self.next[k as usize];
        self.points[*slot] = (i, v);
        *slot += 1;
    }

    fn done(self) -> StepVec {
        StepVec {
            table: self.table,
            points: self.points,
            ends: self.ends,
        }
    }
}

/// A value during evaluation.
#[derive(Debug)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Str(String),
    Vector(StepVec),
    /// A range vector at the (single) evaluation time: only as the result of an instant query.
    Matrix(Vec<RangeSeries>),
}

impl Val {
    fn points(&self) -> usize {
        match self {
            Val::Scalar(s) => s.len(),
            Val::Str(_) => 0,
            Val::Vector(v) => v.points(),
            Val::Matrix(m) => m.iter().map(|s| s.samples.len()).sum(),
        }
    }
}

/// A range vector over a span: raw samples per series (ascending, no stale markers) and how to
/// cut each step's window `(ref - range, ref]`, `ref = (at or t) - offset`.
pub(crate) struct RangeArg {
    pub series: Vec<(Labels, Vec<Sample>)>,
    /// Per series, whether a subquery's inner expression marked it for delayed name removal
    /// (empty if none is marked).
    pub marks: Vec<bool>,
    pub range: i64,
    pub offset: i64,
    pub at: Option<i64>,
    /// For a subquery, the samples its inner expression read (see [`QueryStats`]): counted only
    /// when the subquery is the whole query; as an argument, the windows over it are counted.
    pub inner_read: u64,
}

impl RangeArg {
    /// Whether series `i` is marked for delayed name removal.
    pub fn marked(&self, i: usize) -> bool {
        self.marks.get(i).copied().unwrap_or(false)
    }

    /// The reference time (right edge) of the window at step time `ts`.
    pub fn ref_time(&self, ts: i64) -> i64 {
        self.at.unwrap_or(ts).saturating_sub(self.offset)
    }

    pub fn window<'a>(&self, samples: &'a [Sample], ts: i64) -> &'a [Sample] {
        let (lo, hi) = self.window_bounds(samples, ts);
        &samples[lo..hi]
    }

    /// Where the window at step time `ts` lies in `samples`: `lo..hi`, `lo <= hi`.
    pub fn window_bounds(&self, samples: &[Sample], ts: i64) -> (usize, usize) {
        let r = self.ref_time(ts);
        let lo = samples.partition_point(|s| s.t <= r.saturating_sub(self.range));
        let hi = samples.partition_point(|s| s.t <= r);
        (lo, hi.max(lo))
    }
}

pub(crate) struct Evaluator<'q> {
    q: &'q dyn Querier,
    pub opts: EngineOptions,
    /// The query's own start and end, for `@ start()` / `@ end()`.
    query_start: i64,
    query_end: i64,
    cur_samples: usize,
    /// The query's statistics so far: `peak_samples` follows `cur_samples`.
    stats: QueryStats,
    /// Counts the work and yields once a slice is used up.
    slicer: crate::model::slice::Slicer,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

impl<'q> Evaluator<'q> {
    pub fn new(q: &'q dyn Querier, opts: EngineOptions, start: i64, end: i64) -> Self {
        Evaluator {
            q,
            opts,
            query_start: start,
            query_end: end,
            cur_samples: 0,
            stats: QueryStats::default(),
            slicer: crate::model::slice::Slicer::new(Some(crate::model::slice::SLICE), CHECK_EVERY),
            warnings: Vec::new(),
            infos: Vec::new(),
        }
    }

    pub fn finish(&mut self, value: Value) -> QueryResult {
        QueryResult {
            value,
            warnings: std::mem::take(&mut self.warnings),
            infos: std::mem::take(&mut self.infos),
            stats: self.stats,
        }
    }

    /// Adds a warning once. Texts are Prometheus's, without the `(line:col)` position, which
    /// `promql-parser` does not give.
    pub fn warn(&mut self, w: String) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    /// Whether `s` is valid UTF-8 as Prometheus reads the query (see `literals.rs`).
    pub fn valid_utf8(&self, s: &str) -> bool {
        super::literals::is_valid(s)
    }

    /// A valid label name: `[a-zA-Z_][a-zA-Z0-9_]*` or, as Prometheus 3.x allows, any non-empty
    /// valid UTF-8 string.
    pub fn valid_label_name(&self, s: &str) -> bool {
        !s.is_empty() && self.valid_utf8(s)
    }

    /// Adds an info annotation once.
    pub fn info(&mut self, i: String) {
        if !self.infos.contains(&i) {
            self.infos.push(i);
        }
    }

    /// Warns about each quantile outside [0, 1].
    pub fn check_quantiles(&mut self, qs: &[f64]) {
        for &q in qs {
            if q.is_nan() || !(0.0..=1.0).contains(&q) {
                self.warn(format!(
                    "PromQL warning: quantile value should be between 0 and 1, got {}",
                    super::aggregate::format_go_float(q)
                ));
            }
        }
    }

    /// Counts `n` more samples held; over the limit is an error.
    pub fn add_samples(&mut self, n: usize) -> Result<(), QueryError> {
        self.cur_samples = self.cur_samples.saturating_add(n);
        self.stats.peak_samples = self.stats.peak_samples.max(self.cur_samples);
        if self.cur_samples > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    /// Counts `n` samples read at one step (`totalQueryableSamples`).
    pub fn read_samples(&mut self, n: usize) {
        self.stats.total_samples = self.stats.total_samples.saturating_add(n as u64);
    }

    /// Checks that a span of `n` steps could be held at all.
    pub fn check_steps(&self, n: usize) -> Result<(), QueryError> {
        if n > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    /// Selects from the store in slices ([`crate::storage::SelectJob`]), yielding between
    /// them: a select of millions of samples is the longest single piece of a query.
    async fn select(
        &mut self,
        matchers: &[crate::model::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<crate::storage::Series>, crate::storage::StorageError> {
        // The select yields as it goes; its slices count in the evaluator's running one, so the
        // evaluator yields at its next look at the clock if the select's last slice was long.
        crate::storage::select_in_slices(self.q, matchers, mint, maxt).await
    }

    /// Frees `items` one by one, counting the work: freeing the label sets of 100k series at
    /// once is tens of milliseconds.
    pub async fn free<T>(&mut self, items: Vec<T>) {
        for x in items {
            drop(x);
            self.tick(PER_SERIES_WORK).await;
        }
    }

    /// Records `n` units of work and yields to the executor once the slice is used up.
    pub async fn tick(&mut self, n: usize) {
        self.slicer.tick_by(n).await;
    }

    /// Whether the running slice is used up (for work that checks the clock itself).
    pub fn slice_up(&self) -> bool {
        self.slicer.is_up()
    }

    /// Yields now and starts a new slice (after work that stopped because its slice was up).
    pub async fn next_slice(&mut self) {
        self.slicer.next_slice().await;
    }

    /// Evaluates the query's expression.
    pub async fn eval_top(&mut self, e: &Expr, span: Span) -> Result<Val, QueryError> {
        self.check_steps(span.len())?;
        match unparen(e) {
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                let arg = self.range_arg(e, span).await?;
                // A subquery counts what its inner expression read, a matrix selector its window.
                let selector = matches!(unparen(e), Expr::MatrixSelector(_));
                self.stats.total_samples = self.stats.total_samples.saturating_add(arg.inner_read);
                let mut out = Vec::new();
                let mut marks = Vec::new();
                for (i, (labels, samples)) in arg.series.iter().enumerate() {
                    let w = arg.window(samples, span.start);
                    if selector {
                        self.read_samples(w.len());
                    }
                    if !w.is_empty() {
                        out.push(RangeSeries {
                            labels: labels.clone(),
                            samples: w.to_vec(),
                        });
                        if !arg.marks.is_empty() {
                            marks.push(arg.marked(i));
                        }
                    }
                }
                Ok(Val::Matrix(drop_marked_names_matrix(out, &marks)?))
            }
            _ => match self.eval(e, span).await? {
                // Only delayed name removal marks series.
                Val::Vector(sv) => Ok(Val::Vector(sv.drop_marked_names()?)),
                v => Ok(v),
            },
        }
    }

    /// Whether names are removed at the end of the query (delayed name removal) rather than at
    /// the operation that drops them.
    pub fn delayed_names(&self) -> bool {
        self.opts.delayed_name_removal
    }

    /// Evaluates `e` at every step of `span`.
    pub fn eval<'a>(&'a mut self, e: &'a Expr, span: Span) -> EvalFuture<'a> {
        Box::pin(async move {
            let before = self.cur_samples;
            let v = self.eval_node(e, span).await?;
            // The children's values are gone now; only this node's result is held.
            self.cur_samples = before;
            self.add_samples(v.points())?;
            Ok(v)
        })
    }

    async fn eval_node(&mut self, e: &Expr, span: Span) -> Result<Val, QueryError> {
        let n = span.len();
        match e {
            Expr::NumberLiteral(l) => Ok(Val::Scalar(vec![l.val; n])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, span).await,
            Expr::Unary(u) => match self.eval(&u.expr, span).await? {
                Val::Scalar(mut s) => {
                    s.iter_mut().for_each(|v| *v = -*v);
                    Ok(Val::Scalar(s))
                }
                Val::Vector(sv) => {
                    // Series that end up with the same labels merge unless they overlap.
                    let n = sv.step_count();
                    let drop_names = name_dropped(self.delayed_names());
                    let out =
                        functions::transform(self, sv, n, drop_names, |_, v| Some(-v)).await?;
                    Ok(Val::Vector(out))
                }
                _ => Err(QueryError::Execution(
                    "unary expression only allowed on expressions of type scalar or vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.select_vector(vs, span, false).await?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(QueryError::Execution(
                "a range vector is only allowed as a function argument or as the whole query"
                    .into(),
            )),
            Expr::Call(c) => functions::call(self, c, span).await,
            Expr::Aggregate(a) => aggregate::eval(self, a, span).await,
            Expr::Binary(b) => binary::eval(self, b, span).await,
            Expr::Extension(_) => Err(not_supported("extension expressions")),
        }
    }

    /// Evaluates an expression that must be a scalar.
    pub async fn eval_scalar(&mut self, e: &Expr, span: Span) -> Result<Vec<f64>, QueryError> {
        match self.eval(e, span).await? {
            Val::Scalar(s) => Ok(s),
            _ => Err(QueryError::Execution("expected a scalar argument".into())),
        }
    }

    /// Evaluates an expression that must be an instant vector.
    pub async fn eval_vector(&mut self, e: &Expr, span: Span) -> Result<StepVec, QueryError> {
        match self.eval(e, span).await? {
            Val::Vector(v) => Ok(v),
            _ => Err(QueryError::Execution(
                "expected an instant vector argument".into(),
            )),
        }
    }

    pub fn at_time(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|a| match a {
            AtModifier::Start => self.query_start,
            AtModifier::End => self.query_end,
            AtModifier::At(st) => match st.duration_since(UNIX_EPOCH) {
                Ok(d) => millis(d),
                Err(e) => millis(e.duration()).saturating_neg(),
            },
        })
    }

    /// The smallest and largest reference times over the span.
    fn ref_bounds(&self, at: Option<i64>, offset: i64, span: Span) -> (i64, i64) {
        match at {
            Some(a) => (a.saturating_sub(offset), a.saturating_sub(offset)),
            None => (
                span.start.saturating_sub(offset),
                span.end.saturating_sub(offset),
            ),
        }
    }

    /// An instant vector selector at every step: the newest sample in `(ref - lookback, ref]`,
    /// unless it is a staleness marker. With `timestamps`, the value is the sample's timestamp in
    /// seconds and the metric name is dropped (for `timestamp()`).
    pub async fn select_vector(
        &mut self,
        vs: &VectorSelector,
        span: Span,
        timestamps: bool,
    ) -> Result<StepVec, QueryError> {
        let matchers = selector_matchers(vs)?;
        let offset = offset_ms(&vs.offset);
        let at = self.at_time(&vs.at);
        let lookback = self.opts.lookback_delta_ms;
        let (min_ref, max_ref) = self.ref_bounds(at, offset, span);
        let series = self
            .select(
                &matchers,
                min_ref.saturating_sub(lookback).saturating_add(1),
                max_ref,
            )
            .await?;
        let n = span.len();
        let mut b = StepVecBuilder::new(n);
        for s in series {
            // One pass over the samples: `samples[..cur]` are at or before the step's
            // reference time.
            let crate::storage::Series { labels, samples } = s;
            let samples = samples.as_slice();
            let mut labels = Some(labels);
            let mut cur = 0usize;
            let mut idx = None;
            let mut count = 0usize;
            for k in 0..n {
                let r = at.unwrap_or(span.ts(k)).saturating_sub(offset);
                while samples.get(cur).is_some_and(|x| x.t <= r) {
                    cur += 1;
                }
                let Some(&last) = cur.checked_sub(1).and_then(|i| samples.get(i)) else {
                    continue;
                };
                if last.t <= r.saturating_sub(lookback) || is_stale(last.v) {
                    continue;
                }
                let i = match idx {
                    Some(i) => i,
                    None => {
                        // Interned once per series: the selected labels move in.
                        let l = labels.take().unwrap_or_default();
                        let i = if timestamps {
                            let (l, mark) = name_dropped(self.delayed_names())(&l, false);
                            b.intern_marked(l, mark)
                        } else {
                            b.intern(l)
                        };
                        idx = Some(i);
                        i
                    }
                };
                let v = if timestamps {
                    last.t as f64 / 1000.0
                } else {
                    last.v
                };
                b.push(k, i, v)?;
                count += 1;
            }
            self.tick(cur + n + PER_SERIES_WORK).await;
            self.read_samples(count);
            self.add_samples(count)?;
        }
        Ok(b.finish_yielding(self).await)
    }

    /// A matrix selector or subquery as a function argument over `span`.
    pub async fn range_arg(&mut self, e: &Expr, span: Span) -> Result<RangeArg, QueryError> {
        match unparen(e) {
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let matchers = selector_matchers(vs)?;
                let offset = offset_ms(&vs.offset);
                let at = self.at_time(&vs.at);
                let range = millis(ms.range);
                let (min_ref, max_ref) = self.ref_bounds(at, offset, span);
                let selected = self
                    .select(
                        &matchers,
                        min_ref.saturating_sub(range).saturating_add(1),
                        max_ref,
                    )
                    .await?;
                let mut series = Vec::with_capacity(selected.len());
                for s in selected {
                    // Filtered in place: the selected vector is reused, not copied.
                    let samples: Vec<Sample> = s.samples.filter(|x| !is_stale(x.v)).collect();
                    self.tick(samples.len()).await;
                    self.add_samples(samples.len())?;
                    series.push((s.labels, samples));
                }
                Ok(RangeArg {
                    series,
                    marks: Vec::new(),
                    range,
                    offset,
                    at,
                    inner_read: 0,
                })
            }
            Expr::Subquery(sq) => self.subquery(sq, span).await,
            _ => Err(QueryError::Execution(
                "expected a range vector argument".into(),
            )),
        }
    }

    /// Evaluates a subquery's inner expression at the multiples of its step that fall in the
    /// windows of all steps of `span`.
    async fn subquery(&mut self, sq: &SubqueryExpr, span: Span) -> Result<RangeArg, QueryError> {
        let step = match sq.step {
            Some(d) if d.as_millis() > 0 => millis(d),
            _ => DEFAULT_SUBQUERY_STEP_MS,
        };
        let offset = offset_ms(&sq.offset);
        let at = self.at_time(&sq.at);
        let range = millis(sq.range);
        let (min_ref, max_ref) = self.ref_bounds(at, offset, span);
        let left = min_ref.saturating_sub(range);
        let mut start = step * (left / step);
        if start <= left {
            start = start.saturating_add(step);
        }
        let mut series = Vec::new();
        let mut marks = Vec::new();
        // What the inner expression reads is not the caller's (see `RangeArg::inner_read`).
        let read_before = self.stats.total_samples;
        if start <= max_ref {
            let inner = Span {
                start,
                end: max_ref,
                step,
            };
            self.check_steps(inner.len())?;
            match self.eval(&sq.expr, inner).await? {
                Val::Vector(sv) => {
                    let (m, mk) = if self.delayed_names() {
                        sv.into_matrix_marked(inner, self).await
                    } else {
                        (sv.into_matrix(inner, self).await, Vec::new())
                    };
                    marks = mk;
                    for rs in m {
                        series.push((rs.labels, rs.samples));
                    }
                }
                Val::Scalar(s) => {
                    let samples = s
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| Sample { t: inner.ts(i), v })
                        .collect();
                    series.push((Labels::empty(), samples));
                }
                _ => {
                    return Err(QueryError::Execution(
                        "subquery is only allowed on instant vectors".into(),
                    ))
                }
            }
        }
        let inner_read = self.stats.total_samples - read_before;
        self.stats.total_samples = read_before;
        Ok(RangeArg {
            series,
            marks,
            range,
            offset,
            at,
            inner_read,
        })
    }
}

pub(crate) fn not_supported(what: &str) -> QueryError {
    QueryError::Execution(format!("{what} not supported yet"))
}

/// `e` without enclosing parentheses.
pub(crate) fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// A duration in ms, saturating (absurd durations must not wrap around or panic).
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => millis(*d),
        Some(Offset::Neg(d)) => millis(*d).saturating_neg(),
        None => 0,
    }
}

/// The labels without the metric name (and the `__type__`/`__unit__` metadata labels, which
/// Prometheus drops with it).
pub(crate) fn drop_name(l: &Labels) -> Labels {
    if !l.has(METRIC_NAME) && !l.has("__type__") && !l.has("__unit__") {
        return l.clone();
    }
    let mut b = l.builder();
    b.del(METRIC_NAME).del("__type__").del("__unit__");
    b.take()
}

/// What an operation that drops the metric name does to a series' labels and mark: without
/// delayed name removal the name and `__type__`/`__unit__` go at once; with it the labels stay
/// and the series is marked, to lose them at the end of the query.
pub(crate) fn name_dropped(delayed: bool) -> impl Fn(&Labels, bool) -> (Labels, bool) + Copy {
    move |l, _| {
        if delayed {
            (l.clone(), true)
        } else {
            (drop_name(l), false)
        }
    }
}

/// The storage matchers of a selector: its matchers plus `__name__="<name>"`.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    use promql_parser::label::MatchOp;
    if !vs.matchers.or_matchers.is_empty() {
        return Err(not_supported("'or' in label matchers"));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(METRIC_NAME, name));
    }
    for m in &vs.matchers.matchers {
        let kind = match m.op {
            MatchOp::Equal => MatchKind::Equal,
            MatchOp::NotEqual => MatchKind::NotEqual,
            MatchOp::Re(_) => MatchKind::Regex,
            MatchOp::NotRe(_) => MatchKind::NotRegex,
        };
        // Go's regexp refuses a pattern that is not valid UTF-8.
        if matches!(kind, MatchKind::Regex | MatchKind::NotRegex)
            && !super::literals::is_valid(&m.value)
        {
            return Err(QueryError::Parse(format!(
                "error parsing regexp: invalid UTF-8: `{}`",
                super::literals::display(m.value.clone())
            )));
        }
        let mm = match Matcher::new(kind, &m.name, &m.value) {
            Ok(mm) => mm,
            // Go accepts some patterns Rust's regex does not (`a{b}`); the parser has already
            // rewritten those into an equivalent it could compile: use that.
            Err(e) => match &m.op {
                MatchOp::Re(re) | MatchOp::NotRe(re) => {
                    let inner = re
                        .as_str()
                        .strip_prefix("^(?:")
                        .and_then(|x| x.strip_suffix(")$"))
                        .ok_or_else(|| QueryError::Parse(e.to_string()))?;
                    Matcher::new(kind, &m.name, inner)
                        .map_err(|e| QueryError::Parse(e.to_string()))?
                }
                _ => return Err(QueryError::Parse(e.to_string())),
            },
        };
        out.push(mm);
    }
    Ok(out)
}
