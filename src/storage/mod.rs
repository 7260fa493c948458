//! The storage seam: what the scraper writes through and what the PromQL engine reads through.
//!
//! - The scraper sees only an [`Appender`]: it appends the samples of one scrape as a batch and
//!   then commits (all become visible together) or rolls back (none do). `append` returns a
//!   [`SeriesRef`] that later scrapes use with `append_ref` to skip label handling (the scrape
//!   cache).
//! - The engine and the API see only a [`Querier`]: select series by matchers over a time range,
//!   list label names and values. Everything a querier returns owns its data, so no borrow of the
//!   store is held across an `.await`: a long query never blocks an append.
//! - [`Storage`] hands out both, and is shared on the one executor thread as `Rc<dyn Storage>`.
//!
//! Semantics follow Prometheus: a sample older than the newest one of its series is rejected as
//! out of order; one with the same timestamp and a different value as a duplicate; one with the
//! same timestamp and value is accepted silently and stored once.
//!
//! [`flash::FlashStorage`] is the one implementation: over files on the card
//! ([`backend::FileBackend`]) in the agent, over memory ([`flash::FlashStorage::in_memory`]) in
//! tests and benchmarks.

pub mod backend;
pub mod block;
pub mod codec;
pub mod flash;
pub mod segment;
pub mod syncer;

use crate::model::{Labels, Matcher, Sample};
use std::fmt;
use std::rc::Rc;

/// A reference to a series, stable for the life of the process (not across restarts).
pub type SeriesRef = u64;

/// Why one sample was not appended. The scrape goes on; the caller counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// Older than the newest sample of its series.
    OutOfOrder,
    /// Same timestamp as the newest sample of its series, different value.
    DuplicateTimestamp,
    /// Older than the retention window allows.
    OutOfBounds,
    /// The reference is not (or no longer) known; the caller appends by labels instead.
    UnknownRef,
    /// The store refuses more series (its memory bound is reached).
    TooManySeries,
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppendError::OutOfOrder => "out of order sample",
            AppendError::DuplicateTimestamp => "duplicate sample for timestamp",
            AppendError::OutOfBounds => "out of bounds",
            AppendError::UnknownRef => "unknown series reference",
            AppendError::TooManySeries => "too many series",
        })
    }
}

impl std::error::Error for AppendError {}

/// An error of the store as a whole (I/O, corruption, a closed store).
#[derive(Debug)]
pub enum StorageError {
    Io(std::io::Error),
    Closed,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io(e) => write!(f, "storage I/O error: {e}"),
            StorageError::Closed => f.write_str("storage is closed"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
    }
}

/// What one commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Samples made visible.
    pub samples: usize,
    /// Series created by this batch.
    pub series_added: usize,
}

/// A batch of samples, made visible all at once by `commit`.
pub trait Appender {
    /// Appends a sample for the series with these labels (created if new). `labels` must hold a
    /// metric name and be valid; the returned reference serves `append_ref` later.
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError>;
    /// Appends a sample for a series already known by reference.
    fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError>;
    /// Makes every sample of the batch visible.
    fn commit(self: Box<Self>) -> Result<CommitStats, StorageError>;
    /// Drops every sample of the batch.
    fn rollback(self: Box<Self>);
}

/// One selected series: its labels and its samples in the selected range, ascending by time.
/// The samples are owned and in memory: a reader walks them as a slice (`as_slice`) or takes
/// the vector back without a copy (`collect`), with no call through a trait object per sample.
pub struct Series {
    pub labels: Labels,
    pub samples: std::vec::IntoIter<Sample>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            labels: Labels::default(),
            samples: Vec::new().into_iter(),
        }
    }
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// The label sets of selected series, dropping their samples.
pub fn labels_of(series: Vec<Series>) -> Vec<Labels> {
    series.into_iter().map(|s| s.labels).collect()
}

/// Read access to the store. Results own their data.
pub trait Querier {
    /// The series matching all `matchers` that have samples in `[mint, maxt]` (inclusive, ms),
    /// sorted by labels, each with its samples in that range.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError>;

    /// [`Querier::select`] as a job done in slices ([`SelectJob::step`]), so a select of many
    /// samples does not hold the executor. Stores that cannot slice one answer in one go.
    fn select_job(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Box<dyn SelectJob + '_> {
        Box::new(Ready(Some(self.select(matchers, mint, maxt))))
    }

    /// The label sets of the series matching `matchers` that have samples in `[mint, maxt]`,
    /// sorted, without their samples. Stores that can answer from their index override this.
    fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        Ok(labels_of(self.select(matchers, mint, maxt)?))
    }

    /// [`Querier::series`] as a job done in slices ([`SeriesJob::step`]). Stores that cannot
    /// slice one answer in one go.
    fn series_job(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Box<dyn SeriesJob + '_> {
        Box::new(Ready(Some(self.series(matchers, mint, maxt))))
    }

    /// Whether [`Querier::label_names`] and [`Querier::label_values`] without matchers are
    /// answered from an index for `[mint, maxt]` (in a moment, whatever the store's size);
    /// otherwise a caller that must not hold the executor lists the series in slices instead.
    fn labels_from_index(&self, mint: i64, maxt: i64) -> bool {
        let _ = (mint, maxt);
        false
    }

    /// The sorted label names of the series matching `matchers` (all series when empty) with
    /// samples in `[mint, maxt]`.
    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError>;

    /// The sorted values of label `name` among the series matching `matchers`, as above.
    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError>;
}

/// Figures about the store for `/metrics` and the status API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub series: u64,
    pub samples_in_memory: u64,
    pub samples_appended_total: u64,
    pub out_of_order_total: u64,
    pub duplicate_total: u64,
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub memory_bytes: u64,
    /// Bytes the store keeps on disk, as `du -sb` counts them (0 for a store in memory).
    pub disk_bytes: u64,
    /// Bytes written to disk since start.
    pub bytes_written_total: u64,
    /// Records found torn or corrupt (skipped, never fatal).
    pub corrupt_records_total: u64,
    /// Failed writes (the samples stay in memory and are written later).
    pub write_errors_total: u64,
    /// Microseconds spent writing and syncing since start, and the longest single write with
    /// its sync (both on the executor thread).
    pub write_micros_total: u64,
    pub write_micros_max: u64,
    pub sync_micros_total: u64,
    pub sync_micros_max: u64,
}

/// The store: hands out appenders and queriers. Shared as `Rc<dyn Storage>` on the executor.
pub trait Storage {
    fn appender(&self) -> Box<dyn Appender>;
    fn querier(&self) -> Box<dyn Querier>;
    /// Writes out what is buffered (a no-op for a store that keeps nothing on disk), in one go.
    fn flush(&self) -> Result<(), StorageError>;
    /// Does about `slice` of a flush's work: `Ok(true)` when the flush is done, `Ok(false)`
    /// when the caller should let other tasks run and call again. A flush in slices writes the
    /// samples held when it began; queries see every sample throughout. [`Storage::flush`]
    /// ends a flush in slices under way first. The default flushes in one go.
    fn flush_step(&self, slice: std::time::Duration) -> Result<bool, StorageError> {
        let _ = slice;
        self.flush().map(|()| true)
    }
    /// After `flush_step` returned `Ok(false)`: what to await before the next step, when the
    /// flush waits for its sync on the fsync thread (see `syncer`); None: just let other tasks
    /// run.
    fn flush_wait(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
        None
    }
    /// Applies retention (by time, counted back from the newest sample; and by size).
    fn housekeeping(&self);
    /// Writes whole series directly, bypassing the order check of appends: the backfill path
    /// (`perch import`, remote write, the import API). Samples of each series ascend by time and
    /// may be older than what the store holds. Returns how many samples were written.
    ///
    /// Runs in one go; [`Storage::import_job`] does the same work in slices.
    fn import(&self, items: Vec<(Labels, Vec<Sample>)>) -> Result<usize, StorageError> {
        let mut job = self.import_job(items);
        loop {
            if let Some(n) = job.step(None)? {
                return Ok(n);
            }
        }
    }
    /// The import of [`Storage::import`] as a job done in slices ([`ImportJob::step`]), so a
    /// big request does not hold the executor.
    fn import_job(&self, items: Vec<(Labels, Vec<Sample>)>) -> Box<dyn ImportJob>;
    fn stats(&self) -> StorageStats;

    /// One page of an export: the flushed samples of the series matching any of `matcher_sets`,
    /// in `[mint, maxt]`, from the block records at or after `from` (the store's start when
    /// `None`), in append order, ending at the record boundary where about `limit` samples have
    /// been gathered. Stores that keep nothing on disk cannot export.
    ///
    /// With a `deadline`, the page also ends (with `more`) once it has passed, at a record
    /// boundary or between two series of a record. A caller that wants a full page in slices
    /// runs [`Storage::export_job`], which keeps its place between slices.
    fn export(
        &self,
        matcher_sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
        deadline: Option<std::time::Instant>,
    ) -> Result<ExportPage, ExportError> {
        let _ = (matcher_sets, range, mint, maxt, limit, deadline);
        Err(ExportError::Unsupported)
    }

    /// The page of [`Storage::export`] as a job done in slices ([`ExportJob::step`]): the
    /// series are found once, each step reads on from where the last one stopped, and the
    /// page's series are made at the end, in slices too. A page of a million samples over
    /// 100k series is seconds of work if every slice starts over.
    fn export_job(
        &self,
        matcher_sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> Box<dyn ExportJob> {
        let _ = (matcher_sets, range, mint, maxt, limit);
        Box::new(NoExport)
    }

    /// Registers the one observer of committed samples (the remote-write sender), or removes
    /// it. While one is registered the store also keeps the log [`Storage::take_writes`] drains.
    fn set_tap(&self, tap: Option<Rc<dyn SampleTap>>) {
        let _ = tap;
    }

    /// The labels of a series by the reference its appends returned.
    fn labels_by_ref(&self, r: SeriesRef) -> Option<Labels> {
        let _ = r;
        None
    }

    /// The records written since the last call, in order (kept only while a tap is set).
    fn take_writes(&self) -> Vec<WriteSpan> {
        Vec::new()
    }

    /// The position after the newest record.
    fn end_cursor(&self) -> Cursor {
        Cursor::default()
    }

    /// The block records in `range`: their positions and bytes, in order.
    fn block_positions(&self, range: CursorRange) -> Vec<(Cursor, u64)> {
        let _ = range;
        Vec::new()
    }

    /// Where the oldest data kept starts (records before it were deleted by retention).
    fn oldest_cursor(&self) -> Cursor {
        Cursor::default()
    }

    /// Bytes of the block records in `range` and the oldest sample time among them.
    fn span_stats(&self, range: CursorRange) -> (u64, Option<i64>) {
        let _ = range;
        (0, None)
    }

    /// Stages a small named state to be written with the next flush (the newest value wins).
    fn set_checkpoint(&self, name: &str, value: Vec<u8>) {
        let _ = (name, value);
    }

    /// The newest value of a named state, as written by a flush (also before a restart).
    fn checkpoint(&self, name: &str) -> Option<Vec<u8>> {
        let _ = name;
        None
    }
}

/// Sees every committed batch of appends: (series reference, sample), in commit order. Called
/// on the executor thread right after the commit; it must only queue, never call back into
/// the store.
pub trait SampleTap {
    fn committed(&self, batch: &[(SeriesRef, Sample)]);
    /// A flush of the heads takes its samples now: what is committed after this call is
    /// written by a later flush (a flush in slices lets scrapes commit while it runs).
    fn flush_began(&self) {}
}

/// A select under way ([`Querier::select_job`]).
pub trait SelectJob {
    /// Works until done (`Ok(Some(series))`, as [`Querier::select`] returns them) or past
    /// `deadline` (`Ok(None)`: call again once other tasks have run); without a deadline, to
    /// the end.
    fn step(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<Vec<Series>>, StorageError>;
}

/// Runs a job's `step` in slices of [`crate::model::slice::SLICE`] (each given a deadline that
/// far ahead), yielding to the executor between them, until it is done: how the serving path
/// runs the store's jobs.
pub async fn in_slices<T>(
    mut step: impl FnMut(Option<std::time::Instant>) -> Result<Option<T>, StorageError>,
) -> Result<T, StorageError> {
    loop {
        let deadline = std::time::Instant::now() + crate::model::slice::SLICE;
        if let Some(out) = step(Some(deadline))? {
            return Ok(out);
        }
        futures_lite::future::yield_now().await;
    }
}

/// [`Querier::select_job`] run [`in_slices`].
pub async fn select_in_slices(
    q: &dyn Querier,
    matchers: &[Matcher],
    mint: i64,
    maxt: i64,
) -> Result<Vec<Series>, StorageError> {
    let mut job = q.select_job(matchers, mint, maxt);
    in_slices(|d| job.step(d)).await
}

/// A listing of series under way ([`Querier::series_job`]).
pub trait SeriesJob {
    /// Works until done (`Ok(Some(label sets))`, sorted, as [`Querier::series`] returns them)
    /// or past `deadline` (`Ok(None)`: call again); without a deadline, to the end.
    fn step(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<Vec<Labels>>, StorageError>;
}

/// [`Querier::series_job`] run [`in_slices`].
pub async fn series_in_slices(
    q: &dyn Querier,
    matchers: &[Matcher],
    mint: i64,
    maxt: i64,
) -> Result<Vec<Labels>, StorageError> {
    let mut job = q.series_job(matchers, mint, maxt);
    in_slices(|d| job.step(d)).await
}

/// A select or a listing answered in one go (for stores that cannot slice them).
struct Ready<T>(Option<Result<Vec<T>, StorageError>>);

impl<T> Ready<T> {
    fn take(&mut self) -> Result<Option<Vec<T>>, StorageError> {
        self.0.take().unwrap_or(Ok(Vec::new())).map(Some)
    }
}

impl SelectJob for Ready<Series> {
    fn step(&mut self, _: Option<std::time::Instant>) -> Result<Option<Vec<Series>>, StorageError> {
        self.take()
    }
}

impl SeriesJob for Ready<Labels> {
    fn step(&mut self, _: Option<std::time::Instant>) -> Result<Option<Vec<Labels>>, StorageError> {
        self.take()
    }
}

/// An import under way ([`Storage::import_job`]).
pub trait ImportJob {
    /// Works until done (`Ok(Some(samples written))`) or past `deadline` (`Ok(None)`: call
    /// again once other tasks have run); without a deadline, to the end. Until it is done,
    /// queries do not see its samples. An error ends the job with nothing written, as does
    /// dropping it unfinished (the series it created are removed again, if still empty).
    fn step(&mut self, deadline: Option<std::time::Instant>)
        -> Result<Option<usize>, StorageError>;
    /// After `step` returned `Ok(None)`: what to await before the next step, when the job
    /// waits for its sync on the fsync thread; None: just let other tasks run.
    fn wait(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
        None
    }
}

/// Runs an import job to its end a slice at a time, waiting for its sync without holding the
/// executor.
pub async fn import_in_slices(job: &mut dyn ImportJob) -> Result<usize, StorageError> {
    loop {
        let deadline = std::time::Instant::now() + crate::model::slice::SLICE;
        if let Some(n) = job.step(Some(deadline))? {
            return Ok(n);
        }
        match job.wait() {
            Some(sync) => sync.await,
            None => futures_lite::future::yield_now().await,
        }
    }
}

/// An export page under way ([`Storage::export_job`]).
pub trait ExportJob {
    /// Works until the page is done (`Ok(Some(page))`) or past `deadline` (`Ok(None)`: call
    /// again once other tasks have run); without a deadline, to the end. The page is what
    /// [`Storage::export`] gives for the same arguments without a deadline when it began, with
    /// two differences. Blocks written after its first step are left to the next page (they
    /// may hold series it has not looked for), and `more` says so. When the ring deletes the
    /// records after those already read between two steps, the page ends with what was read,
    /// `more`, and `next` where the deleted records were (asking from there is told they
    /// rotated out).
    fn step(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<ExportPage>, ExportError>;
}

/// The export job of a store that keeps nothing on disk.
struct NoExport;

impl ExportJob for NoExport {
    fn step(&mut self, _: Option<std::time::Instant>) -> Result<Option<ExportPage>, ExportError> {
        Err(ExportError::Unsupported)
    }
}

/// A half-open range of store positions, either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CursorRange {
    pub from: Option<Cursor>,
    pub until: Option<Cursor>,
}

impl CursorRange {
    /// The range with its open ends closed: the store's start, and past any position.
    pub fn bounds(self) -> (Cursor, Cursor) {
        (
            self.from.unwrap_or_default(),
            self.until.unwrap_or(Cursor::at(u64::MAX, u64::MAX)),
        )
    }
}

/// One append of records: a flush of the heads, or an import (backfill) written directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSpan {
    pub from: Cursor,
    pub until: Cursor,
    /// True for a flush of appended (tapped) samples, false for an import.
    pub flush: bool,
}

/// A position in the store's append order: every block record before it has been exported.
/// It is `segment-offset` (the segment's sequence number and a byte offset in it), both
/// decimal, or `segment-offset-series` for a page that ended inside a large record (an import's):
/// the record at `offset` continues from series id `series`. It stays valid across restarts,
/// since segments are never rewritten and sequence numbers only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    /// Within the record at `offset`, the first series id not yet exported (0: all of it).
    pub series: u64,
}

impl Cursor {
    /// The position of a whole record (or of the byte `offset` in `segment`).
    pub const fn at(segment: u64, offset: u64) -> Cursor {
        Cursor {
            segment,
            offset,
            series: 0,
        }
    }

    /// The same position without the series part: record order only.
    pub const fn record(self) -> Cursor {
        Cursor::at(self.segment, self.offset)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.series == 0 {
            write!(f, "{}-{}", self.segment, self.offset)
        } else {
            write!(f, "{}-{}-{}", self.segment, self.offset, self.series)
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Cursor, String> {
        let bad = || {
            format!("invalid cursor {s:?}: expected <segment>-<offset>, as a previous export returned it")
        };
        let mut parts = s.split('-').map(|p| p.parse::<u64>().map_err(|_| bad()));
        let segment = parts.next().ok_or_else(bad)??;
        let offset = parts.next().ok_or_else(bad)??;
        let series = parts.next().transpose()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Cursor {
            segment,
            offset,
            series,
        })
    }
}

/// One page of an export.
#[derive(Debug, Default)]
pub struct ExportPage {
    /// Series with their samples (ascending by time, staleness markers included), in no
    /// particular order (a consumer that needs one sorts: the OpenMetrics page by family).
    pub series: Vec<(Labels, Vec<Sample>)>,
    /// Where the next page starts.
    pub next: Cursor,
    /// Whether records remain after `next` (another page has data, or may have).
    pub more: bool,
}

/// Why an export could not be served.
#[derive(Debug)]
pub enum ExportError {
    /// The records at `from` were deleted by the ring (size or time retention) before they were
    /// exported. `oldest` is where the oldest records still kept start: continuing from there
    /// accepts the gap.
    RotatedOut {
        from: Cursor,
        oldest: Cursor,
    },
    /// This store keeps nothing on disk.
    Unsupported,
    Storage(StorageError),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::RotatedOut { from, oldest } => write!(
                f,
                "the data at cursor {from} has rotated out of the store (the size or time retention deleted it before it was exported); the oldest data kept starts at cursor {oldest}: ask again with cursor={oldest} to continue past the gap"
            ),
            ExportError::Unsupported => f.write_str("this store keeps no data on disk to export"),
            ExportError::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<StorageError> for ExportError {
    fn from(e: StorageError) -> Self {
        ExportError::Storage(e)
    }
}
