//! The flash store: samples in a ring of append-only segment files, within a fixed byte budget.
//!
//! Write path: the appender batches a scrape; `commit` moves its samples into each series'
//! [`HeadChunk`] in RAM (a few bytes a sample). Every flush interval, a flush turns all heads
//! into compressed block records — with the definitions of series the current segment has not
//! seen yet — and writes them with a single append and a single `fdatasync`. So a power cut
//! loses at most one flush interval, and the device sees one large sequential write a minute
//! instead of one per scrape. The agent flushes in slices that yield to other tasks
//! ([`Storage::flush_step`], the [`write`] module); [`Storage::flush`] flushes in one go.
//!
//! The ring: records go to the newest segment until it holds `segment_bytes`; then a new
//! segment starts. Before any write, the oldest segments are deleted until everything — the
//! directory entry, every segment and the record about to be written — fits in the byte budget,
//! so `du -sb` of the data directory never exceeds it. Retention by time deletes segments whose
//! newest sample is older than the newest sample in the store minus the retention. Sealed data
//! is never rewritten.
//!
//! Every segment declares, before its first block, the series its blocks use, so deleting old
//! segments never orphans data. Opening scans the segments' record headers (checking CRCs),
//! loads the series definitions, and does not read or decode any block: start-up time and memory
//! do not depend on how many samples are stored. A torn or corrupt record is skipped and counted
//! in `corrupt_records`; the store always opens.
//!
//! Reads: `select` finds series through the postings index, reads and decompresses the blocks
//! that overlap the range (the most recent one is cached), and adds the head's samples.
//!
//! Write errors (a full disk, a failing card) never lose the head: it stays in RAM, the error is
//! counted, and the next flush tries again. Out-of-order and duplicate samples are rejected per
//! sample as Prometheus does; `import_series` writes older data directly as blocks.

use super::backend::Backend;
use super::block::{self, Block, BlockError};
use super::codec::{CodecError, HeadChunk};
use super::segment::{self, RecordKind, RecordRef};
use super::{
    AppendError, Appender, CommitStats, Cursor, CursorRange, ExportError, ExportJob, ExportPage,
    ImportJob, Querier, SampleTap, SelectJob, Series, SeriesJob, SeriesRef, Storage, StorageError,
    StorageStats, WriteSpan,
};
use crate::model::{FastMap, Labels, MatchKind, Matcher, Sample};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod select;
mod write;
use write::WriteJob;

/// zstd level of blocks written by `perch import`, offline (measured best on the shared
/// recording). The running agent's imports use the flush's level (`Storage::import_job`).
pub const IMPORT_LEVEL: i32 = 19;

/// Bounds and settings of the flash store.
#[derive(Debug, Clone, Copy)]
pub struct FlashOptions {
    /// Samples older than the newest sample minus this are dropped, a segment at a time (ms).
    pub retention_ms: i64,
    /// Every byte the store keeps, directory entry included.
    pub budget_bytes: u64,
    /// Most series held at once.
    pub max_series: usize,
    /// zstd level for blocks written by flushes (9: measured about 3 % larger than 19 on 60 s
    /// blocks of the shared recording, at a tenth of the CPU; imports use 19).
    pub level: i32,
    /// Most bytes of samples waiting in the heads (while writes fail); past it, new samples are
    /// refused and counted.
    pub max_head_bytes: usize,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions {
            retention_ms: 15 * 24 * 3600 * 1000,
            budget_bytes: 512 << 20,
            max_series: 1 << 20,
            level: 9,
            max_head_bytes: 64 << 20,
        }
    }
}

impl FlashOptions {
    /// The size at which a segment is full: an eighth of the budget, between 16 KiB and 64 MiB.
    pub fn segment_bytes(&self) -> u64 {
        (self.budget_bytes / 8).clamp(16 << 10, 64 << 20)
    }
}

struct SeriesEntry {
    /// The labels as interned symbols: name, value, name, value… in label order.
    labels: Box<[u32]>,
    head: HeadChunk,
    /// The newest sample accepted, flushed or not (for the order check).
    last: Option<Sample>,
    /// The segment whose series record last declared this series (0: none).
    declared_in: u64,
    /// The newest segment holding data of this series (0: none).
    data_in: u64,
    /// The appender batch that last added a sample, and that sample (order checks in a batch).
    batch: u64,
    batch_last: Sample,
    /// The head's length when flush number `mark_flush` began, if samples were committed
    /// since: a flush in slices reads each series' count as it reaches it (see [`WriteJob`]).
    mark_flush: u32,
    mark_count: u32,
}

impl SeriesEntry {
    /// How many samples of the head flush number `flush` takes: those it held when the flush
    /// began.
    fn flush_count(&self, flush: u32) -> usize {
        if self.mark_flush == flush {
            self.mark_count as usize
        } else {
            self.head.len()
        }
    }
}

/// Interned label strings: each distinct name or value is held once, and a series' labels are a
/// few `u32`s. Strings stay interned for the life of the process (they are bounded by the label
/// pairs ever seen, which the series bound limits).
#[derive(Default)]
struct Symbols {
    strings: Vec<Rc<str>>,
    ids: FastMap<Rc<str>, u32>,
}

impl Symbols {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        let rc: Rc<str> = Rc::from(s);
        self.strings.push(rc.clone());
        self.ids.insert(rc, id);
        id
    }

    fn lookup(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn get(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", |s| s)
    }

    fn intern_labels(&mut self, l: &Labels) -> Box<[u32]> {
        l.iter()
            .flat_map(|x| [x.name.as_str(), x.value.as_str()])
            .map(|s| self.intern(s))
            .collect()
    }

    fn labels(&self, syms: &[u32]) -> Labels {
        let pairs: Vec<(&str, &str)> = syms
            .chunks_exact(2)
            .map(|p| (self.get(p[0]), self.get(p[1])))
            .collect();
        Labels::from_sorted_pairs(&pairs)
    }

    /// The value of label `name` ("" when absent).
    fn value(&self, syms: &[u32], name: &str) -> &str {
        let Some(n) = self.lookup(name) else {
            return "";
        };
        syms.chunks_exact(2)
            .find(|p| p[0] == n)
            .map_or("", |p| self.get(p[1]))
    }

    fn equal(&self, syms: &[u32], l: &Labels) -> bool {
        syms.len() == l.len() * 2
            && syms
                .chunks_exact(2)
                .zip(l.iter())
                .all(|(p, x)| self.get(p[0]) == x.name && self.get(p[1]) == x.value)
    }
}

/// The series by id: ids are small and dense (assigned in order, never reused), so a vector
/// indexed by id beats a hash map on the append path. Its methods mirror `HashMap`'s.
#[derive(Default)]
struct SeriesTable {
    slots: Vec<Option<SeriesEntry>>,
    count: usize,
}

impl SeriesTable {
    fn len(&self) -> usize {
        self.count
    }
    fn is_empty(&self) -> bool {
        self.count == 0
    }
    fn get(&self, id: &u64) -> Option<&SeriesEntry> {
        self.slots.get(*id as usize).and_then(Option::as_ref)
    }
    fn get_mut(&mut self, id: &u64) -> Option<&mut SeriesEntry> {
        self.slots.get_mut(*id as usize).and_then(Option::as_mut)
    }
    fn insert(&mut self, id: u64, e: SeriesEntry) {
        let i = id as usize;
        if self.slots.len() <= i {
            // Grow by a quarter, not double: entries are large and there are many.
            if i >= self.slots.capacity() {
                self.slots
                    .reserve_exact(i + 1 - self.slots.len() + self.slots.len() / 4 + 64);
            }
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(e).is_none() {
            self.count += 1;
        }
    }
    fn remove(&mut self, id: &u64) -> Option<SeriesEntry> {
        let e = self.slots.get_mut(*id as usize).and_then(Option::take);
        if e.is_some() {
            self.count -= 1;
        }
        e
    }
    fn iter(&self) -> impl Iterator<Item = (u64, &SeriesEntry)> {
        self.iter_slots(0..self.slots.len())
    }
    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(id, _)| id)
    }
    /// The number of slots (the highest id ever inserted, plus one).
    fn slots(&self) -> usize {
        self.slots.len()
    }
    /// The series in slots `range` (clamped to the table), by id.
    fn iter_slots(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (u64, &SeriesEntry)> {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        self.slots[start..end]
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| e.as_ref().map(|e| ((start + i) as u64, e)))
    }
    fn values(&self) -> impl Iterator<Item = &SeriesEntry> {
        self.slots.iter().filter_map(Option::as_ref)
    }
    fn values_mut(&mut self) -> impl Iterator<Item = &mut SeriesEntry> {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }
}

/// Whether a write syncs before it returns, or leaves the sync to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    Now,
    Later,
}

struct SegmentInfo {
    seq: u64,
    name: String,
    bytes: u64,
    blocks: Vec<RecordRef>,
    /// Series records, for the index written when the segment is sealed.
    series_records: Vec<RecordRef>,
    /// The newest checkpoint record in this segment.
    checkpoint: Option<RecordRef>,
    min_t: i64,
    max_t: i64,
}

/// Counters of the store, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlashCounters {
    pub corrupt_records: u64,
    pub write_errors: u64,
    pub bytes_written: u64,
    /// Time spent in appends and the syncs run in place (on the executor thread), and the
    /// longest one: what an SD card's stalls cost the executor.
    pub write_micros: u64,
    pub write_micros_max: u64,
    /// Time the fsync thread spent on syncs (off the executor), and the longest one.
    pub sync_micros: u64,
    pub sync_micros_max: u64,
    pub flushes: u64,
    pub segments_deleted: u64,
    pub samples_refused_head_full: u64,
}

impl FlashCounters {
    fn note_write(&mut self, took: Duration) {
        let us = took.as_micros() as u64;
        self.write_micros += us;
        self.write_micros_max = self.write_micros_max.max(us);
    }

    fn note_sync(&mut self, took: Duration) {
        let us = took.as_micros() as u64;
        self.sync_micros += us;
        self.sync_micros_max = self.sync_micros_max.max(us);
    }
}

struct Store {
    backend: Box<dyn Backend>,
    opts: FlashOptions,
    series: SeriesTable,
    symbols: Symbols,
    /// The next appender batch number.
    next_batch: u64,
    /// The numbers of the batches open now (appenders neither committed nor dropped). A scrape
    /// yields while it parses a big body, so other work runs while its batch is open; series
    /// such a batch created have no samples yet and must not be forgotten meanwhile.
    open_batches: Vec<u64>,
    /// The sample buffer of the last committed or rolled-back batch, empty, kept for the next
    /// appender so a scrape does not grow a fresh one (its capacity is the largest batch seen,
    /// which the scrape limits bound).
    spare_batch: Vec<(u64, Sample)>,
    /// Series ids by the hash of their labels, so each label set is held once, in its entry.
    by_hash: HashIndex,
    /// name symbol → value symbol → series ids (ascending).
    postings: FastMap<u32, FastMap<u32, Vec<u64>>>,
    next_id: u64,
    segments: Vec<SegmentInfo>,
    /// The segment being appended to, if one was started by this process.
    active: Option<u64>,
    next_seq: u64,
    head_samples: u64,
    head_bytes: usize,
    appended_total: u64,
    out_of_order_total: u64,
    duplicate_total: u64,
    max_time: Option<i64>,
    counters: FlashCounters,
    cache: Option<((u64, u64), Rc<Block>)>,
    /// Named states written with flushes (see [`Storage::set_checkpoint`]).
    checkpoints: std::collections::BTreeMap<String, Vec<u8>>,
    /// A checkpoint changed since it was last written.
    checkpoint_dirty: bool,
    /// The observer of commits, and the log of writes kept for it.
    tap: Option<Rc<dyn SampleTap>>,
    writes: Vec<WriteSpan>,
    /// The flush in slices under way ([`Storage::flush_step`]), if any.
    flushing: Option<WriteJob>,
    /// The number of the last flush begun (wrapping; see [`SeriesEntry::flush_count`]).
    flush_number: u32,
    /// The fsync thread, started by the first flush in slices that syncs there.
    syncer: super::syncer::Syncer,
}

/// Encodes the named states as a checkpoint record body.
fn encode_checkpoints(m: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    use super::codec::put_uvarint;
    let mut out = Vec::new();
    put_uvarint(&mut out, m.len() as u64);
    for (k, v) in m {
        put_uvarint(&mut out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        put_uvarint(&mut out, v.len() as u64);
        out.extend_from_slice(v);
    }
    out
}

fn decode_checkpoints(
    body: &[u8],
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, super::codec::CodecError> {
    use super::codec::{CodecError, Reader};
    let mut r = Reader::new(body);
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..r.uvarint()? {
        let n = r.uvarint()? as usize;
        let k = std::str::from_utf8(r.bytes(n)?).map_err(|_| CodecError("checkpoint name"))?;
        let n = r.uvarint()? as usize;
        m.insert(k.to_owned(), r.bytes(n)?.to_vec());
    }
    Ok(m)
}

/// Series ids by label hash: one id per hash in a flat map, the rare other ids with the same
/// hash on the side (a map of lists would cost a heap allocation per series).
#[derive(Default)]
struct HashIndex {
    first: FastMap<u64, u64>,
    more: FastMap<u64, Vec<u64>>,
}

impl HashIndex {
    fn ids(&self, h: u64) -> impl Iterator<Item = u64> + '_ {
        self.first
            .get(&h)
            .copied()
            .into_iter()
            .chain(self.more.get(&h).into_iter().flatten().copied())
    }

    fn insert(&mut self, h: u64, id: u64) {
        match self.first.entry(h) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(h).or_default().push(id)
            }
        }
    }

    fn remove(&mut self, h: u64, id: u64) {
        if let Some(list) = self.more.get_mut(&h) {
            list.retain(|x| *x != id);
            if self.first.get(&h) == Some(&id) {
                match list.pop() {
                    Some(other) => {
                        self.first.insert(h, other);
                    }
                    None => {
                        self.first.remove(&h);
                    }
                }
            }
            if list.is_empty() {
                self.more.remove(&h);
            }
        } else if self.first.get(&h) == Some(&id) {
            self.first.remove(&h);
        }
    }
}

/// Series declared per series record (about 40 KiB of labels before compression).
const SERIES_PER_RECORD: usize = 256;

fn label_hash(l: &Labels) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<crate::model::hash::FastHasher>::default().hash_one(l)
}

fn io_err(e: std::io::Error) -> StorageError {
    StorageError::Io(e)
}

impl Store {
    /// Adds series `id` with interned labels `syms` to the postings. `sorted`: keep each list
    /// sorted; false appends, for opening a store, whose series records declare series in label
    /// order rather than id order (inserting in place would move a long list's tail once per
    /// series), and [`Store::sort_postings`] must follow.
    fn index(&mut self, id: u64, syms: &[u32], sorted: bool) {
        for p in syms.chunks_exact(2) {
            let list = self
                .postings
                .entry(p[0])
                .or_default()
                .entry(p[1])
                .or_default();
            if !sorted {
                list.push(id);
            } else if let Err(i) = list.binary_search(&id) {
                list.insert(i, id);
            }
        }
    }

    /// Sorts every postings list after unsorted [`Store::index`] calls (lists are runs of ascending
    /// ids, which the stable sort merges).
    fn sort_postings(&mut self) {
        for values in self.postings.values_mut() {
            for list in values.values_mut() {
                list.sort();
                list.dedup();
            }
        }
    }

    fn unindex(&mut self, id: u64, syms: &[u32]) {
        for p in syms.chunks_exact(2) {
            if let Some(values) = self.postings.get_mut(&p[0]) {
                if let Some(list) = values.get_mut(&p[1]) {
                    if let Ok(i) = list.binary_search(&id) {
                        list.remove(i);
                    }
                    if list.is_empty() {
                        values.remove(&p[1]);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(&p[0]);
                }
            }
        }
    }

    /// The id of the series with exactly these labels.
    fn find(&self, labels: &Labels) -> Option<u64> {
        self.by_hash.ids(label_hash(labels)).find(|id| {
            self.series
                .get(id)
                .is_some_and(|s| self.symbols.equal(&s.labels, labels))
        })
    }

    fn get_or_create(&mut self, labels: &Labels) -> Result<(u64, bool), AppendError> {
        if let Some(id) = self.find(labels) {
            return Ok((id, false));
        }
        if self.series.len() >= self.opts.max_series {
            return Err(AppendError::TooManySeries);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_hash.insert(label_hash(labels), id);
        let syms = self.symbols.intern_labels(labels);
        self.index(id, &syms, true);
        self.series.insert(
            id,
            SeriesEntry {
                labels: syms,
                head: HeadChunk::default(),
                last: None,
                declared_in: 0,
                data_in: 0,
                batch: 0,
                batch_last: Sample { t: 0, v: 0.0 },
                mark_flush: 0,
                mark_count: 0,
            },
        );
        Ok((id, true))
    }

    /// Adds a series read from disk (its id is fixed); [`Store::sort_postings`] must follow.
    fn load_series(&mut self, id: u64, labels: Labels, seq: u64) {
        self.next_id = self.next_id.max(id + 1);
        if let Some(e) = self.series.get_mut(&id) {
            e.declared_in = e.declared_in.max(seq);
            return;
        }
        if let Some(other) = self.find(&labels) {
            // The same labels under two ids (cannot happen by this writer): keep the first.
            log::warn!("series {labels} stored under ids {other} and {id}; reading {other}");
            return;
        }
        self.by_hash.insert(label_hash(&labels), id);
        let syms = self.symbols.intern_labels(&labels);
        self.index(id, &syms, false);
        self.series.insert(
            id,
            SeriesEntry {
                labels: syms,
                head: HeadChunk::default(),
                last: None,
                declared_in: seq,
                data_in: seq,
                batch: 0,
                batch_last: Sample { t: 0, v: 0.0 },
                mark_flush: 0,
                mark_count: 0,
            },
        );
    }

    fn candidates(&self, matchers: &[Matcher]) -> Vec<u64> {
        let mut lists: Vec<&Vec<u64>> = Vec::new();
        for m in matchers {
            if m.kind == MatchKind::Equal && !m.value.is_empty() {
                let found = self
                    .symbols
                    .lookup(&m.name)
                    .zip(self.symbols.lookup(&m.value))
                    .and_then(|(n, v)| self.postings.get(&n)?.get(&v));
                match found {
                    Some(list) => lists.push(list),
                    None => return Vec::new(),
                }
            }
        }
        let mut out: Vec<u64> = if lists.is_empty() {
            self.series.keys().collect()
        } else {
            lists.sort_by_key(|l| l.len());
            let mut out = lists[0].clone();
            for l in &lists[1..] {
                out.retain(|r| l.binary_search(r).is_ok());
            }
            out
        };
        out.retain(|id| {
            self.series.get(id).is_some_and(|s| {
                matchers
                    .iter()
                    .all(|m| m.matches(self.symbols.value(&s.labels, &m.name)))
            })
        });
        out
    }

    fn total_bytes(&self) -> u64 {
        self.backend.dir_bytes() + self.segments.iter().map(|s| s.bytes).sum::<u64>()
    }

    fn delete_segment(&mut self, idx: usize) {
        let seg = self.segments.remove(idx);
        if let Err(e) = self.backend.remove(&seg.name) {
            log::error!("removing segment {}: {e}", seg.name);
        }
        self.counters.segments_deleted += 1;
        if self.active == Some(seg.seq) {
            self.active = None;
        }
        self.cache = None;
        self.forget_dataless_series();
    }

    /// A new batch number, registered as open (see `open_batches`).
    fn open_batch(&mut self) -> u64 {
        self.next_batch += 1;
        self.open_batches.push(self.next_batch);
        self.next_batch
    }

    /// Batch `gen` is committed or dropped.
    fn close_batch(&mut self, gen: u64) {
        if let Some(i) = self.open_batches.iter().position(|&g| g == gen) {
            self.open_batches.swap_remove(i);
        }
    }

    /// Forgets the series of `created` (made by batch `gen`) that are still empty: no samples
    /// anywhere, and no other batch touched them since (that one decides when it ends).
    fn forget_created(&mut self, gen: u64, created: Vec<u64>) {
        for id in created {
            let dataless = self.series.get(&id).is_some_and(|s| {
                s.batch == gen
                    && s.head.is_empty()
                    && s.last.is_none()
                    && s.data_in == 0
                    && s.declared_in == 0
            });
            if dataless {
                self.forget(id);
            }
        }
        if self.series.is_empty() {
            self.postings.clear();
        }
    }

    /// Drops series that have no samples left anywhere.
    ///
    /// A series an open batch has touched is kept: an appender's sample is still in its batch,
    /// and an import's blocks may be being written right now (its write may be what is making
    /// room), which would otherwise name a series no segment declares.
    fn forget_dataless_series(&mut self) {
        let oldest = self.segments.first().map_or(u64::MAX, |s| s.seq);
        // Batch numbers ascend: a series touched by the oldest open batch or a later one may
        // have samples waiting in an open batch.
        let open_from = self.open_batches.iter().copied().min().unwrap_or(u64::MAX);
        let gone: Vec<u64> = self
            .series
            .iter()
            .filter(|(_, s)| s.head.is_empty() && s.data_in < oldest && s.batch < open_from)
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            self.forget(id);
        }
        if self.series.is_empty() {
            self.postings.clear();
        }
    }

    /// Removes one series from the maps and the index.
    fn forget(&mut self, id: u64) {
        if let Some(s) = self.series.remove(&id) {
            let labels = self.symbols.labels(&s.labels);
            self.unindex(id, &s.labels);
            self.by_hash.remove(label_hash(&labels), id);
        }
    }

    /// Makes room for `need` more bytes: deletes the oldest segments until they fit.
    fn make_room(&mut self, need: u64) -> Result<(), StorageError> {
        while self.total_bytes() + need > self.opts.budget_bytes {
            if self.segments.is_empty() {
                return Err(StorageError::Io(std::io::Error::other(format!(
                    "a record of {need} bytes does not fit in the storage budget of {} bytes",
                    self.opts.budget_bytes
                ))));
            }
            self.delete_segment(0);
        }
        Ok(())
    }

    /// Writes `records` (already framed, the pieces one after another) as one append to the
    /// active segment, starting a new segment first when needed, then syncs unless `sync` is
    /// [`SyncMode::Later`] (the caller then syncs the segment, see [`Store::sync_later`]). `blocks`
    /// are the records' refs relative to the start of the first piece; `flush` tells the write
    /// log a flush of the heads from an import. The records are readable when this returns; a
    /// write synced later returns its entry for the write log, if the log is kept.
    fn write_records(
        &mut self,
        records: &[&[u8]],
        blocks: Vec<RecordRef>,
        new_segment: bool,
        created_ms: i64,
        flush: bool,
        sync: SyncMode,
    ) -> Result<Option<WriteSpan>, StorageError> {
        let seq = match (new_segment, self.active) {
            (false, Some(seq)) => seq,
            _ => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.active = Some(seq);
                self.segments.push(SegmentInfo {
                    seq,
                    name: segment::segment_name(seq),
                    bytes: 0,
                    blocks: Vec::new(),
                    series_records: Vec::new(),
                    checkpoint: None,
                    min_t: i64::MAX,
                    max_t: i64::MIN,
                });
                seq
            }
        };
        let Some(seg) = self.segments.iter_mut().find(|s| s.seq == seq) else {
            return Err(StorageError::Closed);
        };
        let mut buf = Vec::with_capacity(
            records.iter().map(|r| r.len()).sum::<usize>() + segment::SEGMENT_HEADER_LEN,
        );
        if seg.bytes == 0 {
            buf.extend_from_slice(&segment::segment_header(seq, created_ms));
        }
        let base = seg.bytes + buf.len() as u64;
        for r in records {
            buf.extend_from_slice(r);
        }
        let result = Self::append_timed(&*self.backend, &mut self.counters, &seg.name, &buf, sync);
        match result {
            Ok(()) => {
                let span = WriteSpan {
                    from: Cursor::at(seq, base),
                    until: Cursor::at(seq, seg.bytes + buf.len() as u64),
                    flush,
                };
                seg.bytes += buf.len() as u64;
                // A write synced later joins the write log once its sync is done (the
                // remote-write senders take a failed flush's samples from the next one).
                let unsynced = match (self.tap.is_some(), sync) {
                    (false, _) => None,
                    (true, SyncMode::Now) => {
                        self.writes.push(span);
                        None
                    }
                    (true, SyncMode::Later) => Some(span),
                };
                for mut b in blocks {
                    b.offset += base;
                    if b.kind == RecordKind::Series {
                        seg.series_records.push(b);
                        continue;
                    }
                    if b.kind == RecordKind::Checkpoint {
                        seg.checkpoint = Some(b);
                        self.checkpoint_dirty = false;
                        continue;
                    }
                    seg.min_t = seg.min_t.min(b.min_t);
                    seg.max_t = seg.max_t.max(b.max_t);
                    seg.blocks.push(b);
                }
                self.counters.bytes_written += buf.len() as u64;
                Ok(unsynced)
            }
            Err(e) => {
                // What reached the file is unknown: count it, and continue in a new segment.
                seg.bytes = self.backend.len(&seg.name).unwrap_or(seg.bytes);
                self.active = None;
                self.counters.write_errors += 1;
                Err(io_err(e))
            }
        }
    }

    /// Appends `buf` to file `name`, and syncs it unless `sync` is [`SyncMode::Later`]; the time
    /// is noted as the executor's. (An associated function, as the callers hold a segment of
    /// `self.segments` borrowed.)
    fn append_timed(
        backend: &dyn Backend,
        counters: &mut FlashCounters,
        name: &str,
        buf: &[u8],
        sync: SyncMode,
    ) -> std::io::Result<()> {
        let started = Instant::now();
        let result = backend.append(name, buf).and_then(|_| match sync {
            SyncMode::Now => backend.sync(name),
            SyncMode::Later => Ok(()),
        });
        counters.note_write(started.elapsed());
        result
    }

    /// Starts the sync of segments `seqs` (in order) on the fsync thread; None when it is done
    /// already (a backend without descriptors, or no thread could be started: then it ran
    /// here).
    fn sync_later(&mut self, seqs: &[u64]) -> std::io::Result<Option<super::syncer::SyncTicket>> {
        let mut files = Vec::new();
        for seq in seqs {
            if let Some(name) = self.segment(*seq).map(|s| s.name.clone()) {
                files.extend(self.backend.sync_handle(&name)?);
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        match self.syncer.submit(files) {
            Ok(t) => Ok(Some(t)),
            Err((e, files)) => {
                log::warn!("cannot start the fsync thread ({e}): syncing on the executor");
                let started = Instant::now();
                let r = files.iter().try_for_each(super::syncer::sync_one);
                self.counters.note_write(started.elapsed());
                r.map(|()| None)
            }
        }
    }

    /// A sync of segment `seq` that ran elsewhere failed: what reached the card is unknown, as
    /// for a failed write in place. Writing goes on in a new segment, and the checkpoint is
    /// written again with the next flush.
    fn sync_failed(&mut self, seq: u64) {
        self.counters.write_errors += 1;
        if self.active == Some(seq) {
            self.active = None;
        }
        self.checkpoint_dirty = true;
    }

    /// Ends the active segment with an index of its records and the trailer, so opening the
    /// store reads it in a few reads. Failing that (no room, a write error) the segment is
    /// simply left unsealed: opening then walks its record headers instead.
    ///
    /// With [`SyncMode::Later`] the index is appended but not synced: the segment's number is
    /// returned for the caller to sync (a segment whose index is lost is walked instead).
    fn seal_active(&mut self, sync: SyncMode) -> Option<u64> {
        let seq = self.active.take()?;
        let i = self.segments.iter().position(|s| s.seq == seq)?;
        let seg = &self.segments[i];
        if seg.bytes == 0 {
            return None;
        }
        let mut records: Vec<RecordRef> = seg
            .series_records
            .iter()
            .chain(seg.blocks.iter())
            .chain(seg.checkpoint.iter())
            .copied()
            .collect();
        records.sort_by_key(|r| r.offset);
        let payload = block::seal(&segment::encode_index(&records), 3);
        let mut buf = Vec::with_capacity(payload.len() + 64);
        segment::encode_record(&mut buf, RecordKind::Index, seg.min_t, seg.max_t, &payload);
        let index_at = seg.bytes;
        buf.extend_from_slice(&segment::trailer(index_at));
        if self.total_bytes() + buf.len() as u64 > self.opts.budget_bytes {
            return None;
        }
        let name = seg.name.clone();
        let result = Self::append_timed(&*self.backend, &mut self.counters, &name, &buf, sync);
        match result {
            Ok(()) => {
                self.segments[i].bytes += buf.len() as u64;
                self.counters.bytes_written += buf.len() as u64;
                (sync == SyncMode::Later).then_some(seq)
            }
            Err(e) => {
                log::warn!("sealing segment {name}: {e}");
                self.counters.write_errors += 1;
                self.segments[i].bytes = self.backend.len(&name).unwrap_or(index_at);
                None
            }
        }
    }

    /// Appends the checkpoint record to `out`; returns its ref (offset relative to `out`).
    fn checkpoint_record(&self, out: &mut Vec<u8>) -> RecordRef {
        let payload = block::seal(&encode_checkpoints(&self.checkpoints), 3);
        segment::encode_record(out, RecordKind::Checkpoint, 0, 0, &payload)
    }

    /// Writes the checkpoint alone if it changed since it was last written (a flush with no
    /// samples).
    fn write_checkpoint_if_dirty(&mut self) -> Result<(), StorageError> {
        if !self.checkpoint_dirty {
            return Ok(());
        }
        let now = self.max_time.unwrap_or(0);
        self.write_checkpoint_only(now)
    }

    /// Writes the checkpoint alone (a flush with no samples), to the active segment or a new one.
    fn write_checkpoint_only(&mut self, now_ms: i64) -> Result<(), StorageError> {
        let mut records = Vec::new();
        let r = self.checkpoint_record(&mut records);
        let new_segment = self.active.is_none();
        let need = records.len() as u64
            + if new_segment {
                segment::SEGMENT_HEADER_LEN as u64
            } else {
                0
            };
        self.make_room(need)?;
        let new_segment = new_segment || self.active.is_none();
        self.write_records(
            &[&records],
            vec![r],
            new_segment,
            now_ms,
            true,
            SyncMode::Now,
        )
        .map(|_| ())
    }

    /// Flushes every head in one go (see [`WriteJob`] for the flush in slices).
    fn flush(&mut self) -> Result<(), StorageError> {
        // A flush in slices under way ends first: its samples go before the heads' later ones.
        if self.flushing.is_some() {
            self.flush_slice(None)?;
        }
        self.flush_slice(None).map(|_| ())
    }

    /// Goes on with the flush under way, or starts one, until `deadline` (none: to its end);
    /// true when it is done. An unfinished flush is kept for the next call; a failed one is
    /// dropped, its samples still in the heads.
    fn flush_slice(&mut self, deadline: Option<Instant>) -> Result<bool, StorageError> {
        let mut job = match self.flushing.take() {
            Some(job) => job,
            None => match WriteJob::heads(self)? {
                Some(job) => job,
                None => return Ok(true),
            },
        };
        let done = job.run(self, deadline);
        if let Ok(false) = done {
            self.flushing = Some(job);
        }
        done
    }

    /// The segment numbered `seq`.
    fn segment(&self, seq: u64) -> Option<&SegmentInfo> {
        self.segments.iter().find(|s| s.seq == seq)
    }

    fn housekeeping(&mut self) {
        let Some(max_time) = self.max_time else {
            return;
        };
        let cutoff = max_time.saturating_sub(self.opts.retention_ms);
        while let Some(first) = self.segments.first() {
            let is_active = self.active == Some(first.seq);
            if is_active
                || first.max_t >= cutoff
                || first.max_t == i64::MIN && self.segments.len() == 1
            {
                break;
            }
            self.delete_segment(0);
        }
    }

    /// Loads a block (cached: the last one read): its frame table and directory, from one
    /// read of its first bytes for most blocks. Its frames are fetched as they are needed,
    /// through [`block_fetch`].
    fn load_block(
        &mut self,
        seg_idx: usize,
        r: &RecordRef,
    ) -> Result<Option<Rc<Block>>, StorageError> {
        let seg = &self.segments[seg_idx];
        let key = (seg.seq, r.offset);
        if let Some((k, b)) = &self.cache {
            if *k == key {
                return Ok(Some(b.clone()));
            }
        }
        let total = r.len as usize;
        let fetch = block_fetch(&*self.backend, &seg.name, r);
        let prefix = fetch(0, total.min(block::BLOCK_PREFIX)).map_err(io_err)?;
        let read = if prefix.first().is_some_and(|v| block::reads_in_parts(*v)) {
            Block::read(prefix, total, &fetch)
        } else {
            // A block of an older store: read whole and checked by its record's CRC.
            let payload = if prefix.len() == total {
                Some(prefix).filter(|p| segment::payload_intact(r, p))
            } else {
                segment::read_payload(&*self.backend, &seg.name, r).map_err(io_err)?
            };
            match payload {
                Some(p) => Block::parse(p).map_err(BlockError::Corrupt),
                None => Err(BlockError::Corrupt(CodecError("record fails its CRC"))),
            }
        };
        match read {
            Ok(b) => {
                let b = Rc::new(b.within(r.min_t, r.max_t));
                self.cache = Some((key, b.clone()));
                Ok(Some(b))
            }
            Err(BlockError::Io(e)) => Err(io_err(e)),
            Err(BlockError::Corrupt(e)) => {
                log::warn!("segment {}: block at {}: {e}", seg.name, r.offset);
                self.counters.corrupt_records += 1;
                Ok(None)
            }
        }
    }

    /// The block records that overlap `[mint, maxt]`, in store order: the segment's index, the
    /// block's index in it, the record.
    fn blocks_overlapping(
        &self,
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = (usize, usize, RecordRef)> + '_ {
        self.segments
            .iter()
            .enumerate()
            .filter(move |(_, seg)| seg.max_t >= mint && seg.min_t <= maxt)
            .flat_map(move |(si, seg)| {
                seg.blocks
                    .iter()
                    .enumerate()
                    .filter(move |(_, b)| b.max_t >= mint && b.min_t <= maxt)
                    .map(move |(k, b)| (si, k, *b))
            })
    }

    fn select(
        &mut self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError> {
        let mut job = select::Select::new(self, matchers, mint, maxt);
        loop {
            if let Some(out) = job.run(self, None)? {
                return Ok(out);
            }
        }
    }
}

/// Reads bytes of the block record `r` of segment `name`, by offset within its payload.
fn block_fetch<'a>(
    backend: &'a dyn Backend,
    name: &'a str,
    r: &RecordRef,
) -> impl Fn(usize, usize) -> std::io::Result<Vec<u8>> + 'a {
    let at = r.offset;
    move |off, len| backend.read_exact_at(name, at + off as u64, len)
}

/// The end of a slice of a store job (none: no limit): the flush, an import, a select, a
/// series listing, an export.
struct Clock(Option<Instant>);

impl Clock {
    fn up(&self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// Whether to stop after `done` items of a slice: the clock is read every `every` items,
    /// and a slice does at least that many, whatever it says.
    fn up_after(&self, done: usize, every: usize) -> bool {
        done > 0 && done % every == 0 && self.up()
    }
}

/// Most samples a select reserves room for ahead of decoding them (16 bytes each).
const MAX_RESERVE_SAMPLES: usize = 1 << 21;

impl Store {
    /// The block records whose position is in `range`, in order.
    fn blocks_in(&self, range: CursorRange) -> impl Iterator<Item = (Cursor, &RecordRef)> {
        let (from, until) = range.bounds();
        self.segments.iter().flat_map(move |seg| {
            seg.blocks.iter().filter_map(move |b| {
                let at = Cursor::at(seg.seq, b.offset);
                (at >= from && at < until).then_some((at, b))
            })
        })
    }

    /// The position after the newest record.
    fn end_cursor(&self) -> Cursor {
        match self.segments.last() {
            Some(s) => Cursor::at(s.seq, s.bytes),
            None => Cursor::at(self.next_seq, 0),
        }
    }

    /// Where the oldest data kept starts (the next segment's start when there is none).
    fn oldest_cursor(&self) -> Cursor {
        Cursor::at(self.segments.first().map_or(self.next_seq, |s| s.seq), 0)
    }

    /// One page of an export (see [`Storage::export`]): block records are taken whole, in
    /// append order, from `from` on, until about `limit` samples were gathered.
    fn export(
        &mut self,
        matcher_sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
        deadline: Option<Instant>,
    ) -> Result<ExportPage, ExportError> {
        let ids = self.export_ids(matcher_sets);
        let mut per: Vec<ExportSeries> = vec![(None, Vec::new()); ids.len()];
        let part = self.export_part(&ids, &mut per, range, mint, maxt, limit, deadline)?;
        let mut series = Vec::new();
        export_series(&mut per, 0, &mut series, || false);
        Ok(ExportPage {
            series,
            next: part.next,
            more: part.more,
        })
    }

    /// The series an export of `matcher_sets` reads: ascending, once each.
    fn export_ids(&self, matcher_sets: &[Vec<Matcher>]) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        for set in matcher_sets {
            ids.extend(self.candidates(set));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Reads block records of `range` for the series `ids` (ascending) into `per` (one entry
    /// each, appended to; a series' labels are taken with its first samples, so a series the
    /// ring forgets later keeps them): whole records in append order until about `limit`
    /// samples were gathered, or, with a `deadline`, until it has passed (at a record, or
    /// every 256 series of one; always after some progress, so each call moves on).
    #[allow(clippy::too_many_arguments)]
    fn export_part(
        &mut self,
        ids: &[u64],
        per: &mut [ExportSeries],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
        deadline: Option<Instant>,
    ) -> Result<ExportPart, ExportError> {
        let clock = Clock(deadline);
        let from = range.from;
        let (start, until) = range.bounds();
        let oldest = self.oldest_cursor();
        if from.is_some() && start < oldest && start.segment < self.next_seq {
            return Err(ExportError::RotatedOut {
                from: start,
                oldest,
            });
        }
        let mut gathered = 0usize;
        let mut next = start;
        let mut more = false;
        'segments: for si in 0..self.segments.len() {
            let seg = &self.segments[si];
            let seq = seg.seq;
            if seq < start.segment {
                continue;
            }
            let closed = self.active != Some(seq);
            let blocks: Vec<RecordRef> = seg
                .blocks
                .iter()
                .filter(|b| seq > start.segment || b.offset >= start.offset)
                .copied()
                .collect();
            for r in blocks {
                let at = Cursor::at(seq, r.offset);
                if at >= until {
                    break 'segments;
                }
                // (The clock ends a page only once it has read something: each call moves on.)
                if (gathered >= limit && gathered > 0) || (next > start && clock.up()) {
                    more = true;
                    break 'segments;
                }
                next = Cursor::at(seq, r.offset + 1);
                if r.max_t < mint || r.min_t > maxt || ids.is_empty() {
                    continue;
                }
                let Some(block) = self.load_block(si, &r)? else {
                    continue;
                };
                // A page that ended inside this record continues at its series.
                let first_id = if at == start.record() {
                    start.series
                } else {
                    0
                };
                // The series are read one by one below: fetch their frames together first.
                let fetch = block_fetch(&*self.backend, &self.segments[si].name, &r);
                let from = ids.partition_point(|id| *id < first_id);
                block.prefetch(&ids[from..], &fetch).map_err(io_err)?;
                for (k, id) in ids.iter().enumerate() {
                    if *id < first_id {
                        continue;
                    }
                    // A large record (an import's) is split between pages by series.
                    // (Only past the first series read here: each call moves on.)
                    let stop = *id > first_id && k % 256 == 255 && clock.up();
                    if (gathered >= limit && gathered > 0) || stop {
                        next = Cursor { series: *id, ..at };
                        more = true;
                        break 'segments;
                    }
                    let (labels, samples) = &mut per[k];
                    let before = samples.len();
                    self.counters.corrupt_records += block
                        .series_many(
                            std::slice::from_ref(id),
                            std::slice::from_mut(samples),
                            &mut [true],
                            mint,
                            maxt,
                            &fetch,
                        )
                        .map_err(io_err)?;
                    gathered += samples.len() - before;
                    if labels.is_none() && samples.len() > before {
                        *labels = self.series.get(id).map(|s| self.symbols.labels(&s.labels));
                    }
                }
            }
            // A segment no longer appended to is done with: the next page starts after it, so
            // a cursor never points into a segment that may rotate out with nothing unread.
            if closed && next.segment <= seq && until.segment > seq {
                next = Cursor::at(seq + 1, 0);
            }
        }
        Ok(ExportPart {
            next,
            more,
            gathered,
        })
    }
}

/// A series of an export page being gathered: its labels (taken with its first samples) and
/// samples.
type ExportSeries = (Option<Labels>, Vec<Sample>);

/// Moves the series of `per` with samples, from `per[from]` on, into `out`, each sorted by
/// time and without duplicates (imported records may overlap). Stops when `up()` says so
/// (every 256 series), returning where to go on.
fn export_series(
    per: &mut [ExportSeries],
    from: usize,
    out: &mut Vec<(Labels, Vec<Sample>)>,
    up: impl Fn() -> bool,
) -> Option<usize> {
    for (k, entry) in per.iter_mut().enumerate().skip(from) {
        if k > from && k % 256 == 0 && up() {
            return Some(k);
        }
        let (labels, mut v) = std::mem::take(entry);
        let Some(labels) = labels.filter(|_| !v.is_empty()) else {
            continue;
        };
        if !v.windows(2).all(|w| w[0].t < w[1].t) {
            v.sort_by_key(|x| x.t);
            v.dedup_by_key(|x| x.t);
        }
        out.push((labels, v));
    }
    None
}

/// An export page in slices: see [`ExportJob`].
pub struct FlashExport {
    store: Rc<RefCell<Store>>,
    sets: Vec<Vec<Matcher>>,
    range: CursorRange,
    mint: i64,
    maxt: i64,
    limit: usize,
    /// The series (found at the first step), their labels and samples so far, and how many.
    ids: Option<Vec<u64>>,
    per: Vec<ExportSeries>,
    gathered: usize,
    /// Where the next part starts.
    from: Option<Cursor>,
    /// The page was asked to the store's end: `range.until` is where it ended at the first
    /// step.
    until_was_open: bool,
    /// Once reading is done: where the page ends, and the series made so far.
    end: Option<(Cursor, bool, usize)>,
    series: Vec<(Labels, Vec<Sample>)>,
}

impl ExportJob for FlashExport {
    fn step(&mut self, deadline: Option<Instant>) -> Result<Option<ExportPage>, ExportError> {
        let mut st = self.store.borrow_mut();
        let ids = match &mut self.ids {
            Some(ids) => ids,
            None => {
                // The page is of the records there now: one flushed later may hold series
                // found after this, and comes with the next page.
                if self.range.until.is_none() {
                    self.range.until = Some(st.end_cursor());
                    self.until_was_open = true;
                }
                let ids = st.export_ids(&self.sets);
                self.per = vec![(None, Vec::new()); ids.len()];
                self.ids.insert(ids)
            }
        };
        let clock = Clock(deadline);
        if self.end.is_none() {
            let range = CursorRange {
                from: self.from,
                until: self.range.until,
            };
            let left = self.limit.saturating_sub(self.gathered).max(1);
            match st.export_part(
                ids,
                &mut self.per,
                range,
                self.mint,
                self.maxt,
                left,
                deadline,
            ) {
                Ok(part) => {
                    self.gathered += part.gathered;
                    self.from = Some(part.next);
                    if part.more && self.gathered < self.limit {
                        // (Without a deadline a part ends only at the limit or the end.)
                        return Ok(None);
                    }
                    // Blocks written since the job began follow the page.
                    let later = CursorRange {
                        from: Some(part.next),
                        until: None,
                    };
                    let more =
                        part.more || self.until_was_open && st.blocks_in(later).next().is_some();
                    self.end = Some((part.next, more, 0));
                }
                // The ring deleted what follows the parts read while this yielded: they are
                // the page, and the next request, from where they end, is told.
                Err(ExportError::RotatedOut { from, .. }) if self.from != self.range.from => {
                    self.end = Some((from, true, 0));
                }
                Err(e) => return Err(e),
            }
            if clock.up() {
                return Ok(None);
            }
        }
        let Some((next, more, k)) = self.end else {
            return Ok(None);
        };
        drop(st);
        match export_series(&mut self.per, k, &mut self.series, || clock.up()) {
            Some(k) => {
                self.end = Some((next, more, k));
                Ok(None)
            }
            None => {
                self.per = Vec::new();
                Ok(Some(ExportPage {
                    series: std::mem::take(&mut self.series),
                    next,
                    more,
                }))
            }
        }
    }
}

/// Where a part of an export ended: see [`Store::export_part`].
struct ExportPart {
    next: Cursor,
    more: bool,
    gathered: usize,
}

/// The flash store. Cloning shares it.
#[derive(Clone)]
pub struct FlashStorage {
    store: Rc<RefCell<Store>>,
}

/// What opening found.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenReport {
    pub segments: usize,
    pub series: usize,
    pub blocks: usize,
    pub corrupt_records: u64,
}

impl FlashStorage {
    /// Opens the store in `backend`, whatever state its files are in.
    pub fn open(
        backend: Box<dyn Backend>,
        opts: FlashOptions,
    ) -> Result<(FlashStorage, OpenReport), StorageError> {
        let mut names: Vec<(u64, String)> = backend
            .list()
            .map_err(io_err)?
            .into_iter()
            .filter_map(|n| segment::parse_segment_name(&n).map(|s| (s, n)))
            .collect();
        names.sort();
        let mut st = Store {
            backend,
            opts,
            series: SeriesTable::default(),
            symbols: Symbols::default(),
            next_batch: 1,
            open_batches: Vec::new(),
            spare_batch: Vec::new(),
            by_hash: HashIndex::default(),
            postings: FastMap::default(),
            next_id: 1,
            segments: Vec::new(),
            active: None,
            next_seq: names.last().map_or(1, |(s, _)| s + 1),
            head_samples: 0,
            head_bytes: 0,
            appended_total: 0,
            out_of_order_total: 0,
            duplicate_total: 0,
            max_time: None,
            counters: FlashCounters::default(),
            cache: None,
            checkpoints: Default::default(),
            checkpoint_dirty: false,
            tap: None,
            writes: Vec::new(),
            flushing: None,
            syncer: Default::default(),
            flush_number: 0,
        };
        let mut report = OpenReport::default();
        for (seq, name) in names {
            let records = match segment::read_index(&*st.backend, &name).map_err(io_err)? {
                Some(r) => r,
                None => {
                    let scan = segment::scan(&*st.backend, &name, false).map_err(io_err)?;
                    st.counters.corrupt_records += scan.corrupt;
                    scan.records
                }
            };
            let bytes = st.backend.len(&name).map_err(io_err)?;
            let mut info = SegmentInfo {
                seq,
                name: name.clone(),
                bytes,
                blocks: Vec::new(),
                series_records: Vec::new(),
                checkpoint: None,
                min_t: i64::MAX,
                max_t: i64::MIN,
            };
            for r in &records {
                match r.kind {
                    RecordKind::Series => {
                        let defs = segment::read_payload(&*st.backend, &name, r)
                            .map_err(io_err)?
                            .ok_or(block::CorruptPayload)
                            .and_then(|p| block::open(&p).map_err(|_| block::CorruptPayload))
                            .and_then(|b| {
                                block::decode_series(&b).map_err(|_| block::CorruptPayload)
                            });
                        match defs {
                            Ok(defs) => {
                                for (id, labels) in defs {
                                    st.load_series(id, labels, seq);
                                }
                            }
                            Err(_) => st.counters.corrupt_records += 1,
                        }
                    }
                    RecordKind::Block => {
                        info.min_t = info.min_t.min(r.min_t);
                        info.max_t = info.max_t.max(r.max_t);
                        info.blocks.push(*r);
                    }
                    RecordKind::Checkpoint => info.checkpoint = Some(*r),
                    RecordKind::Index => {}
                }
            }
            report.blocks += info.blocks.len();
            if info.max_t != i64::MIN {
                st.max_time = Some(st.max_time.map_or(info.max_t, |m| m.max(info.max_t)));
            }
            st.segments.push(info);
        }
        st.sort_postings();
        // The newest checkpoint in force; a damaged one falls back to the one before it.
        for seg in st.segments.iter().rev() {
            let Some(r) = seg.checkpoint else {
                continue;
            };
            let decoded = segment::read_payload(&*st.backend, &seg.name, &r)
                .ok()
                .flatten()
                .and_then(|p| block::open(&p).ok())
                .and_then(|b| decode_checkpoints(&b).ok());
            match decoded {
                Some(m) => {
                    st.checkpoints = m;
                    break;
                }
                None => st.counters.corrupt_records += 1,
            }
        }
        // A series' newest sample on disk is not known without reading blocks; order checks for
        // a series start from the newest block time of the store, which is conservative.
        let floor = st.max_time;
        for s in st.series.values_mut() {
            s.last = floor.map(|t| Sample { t, v: f64::NAN });
        }
        report.segments = st.segments.len();
        report.series = st.series.len();
        report.corrupt_records = st.counters.corrupt_records;
        Ok((
            FlashStorage {
                store: Rc::new(RefCell::new(st)),
            },
            report,
        ))
    }

    /// A store over a fresh [`MemBackend`](super::backend::MemBackend): the same store as on
    /// flash, with its segment files in RAM, for tests and benchmarks. Nothing survives the
    /// value; what it writes counts against `opts.budget_bytes` as it would on a card.
    ///
    /// Opening an empty backend reads nothing, so this does not fail in practice; the `Result`
    /// is [`FlashStorage::open`]'s.
    pub fn in_memory(opts: FlashOptions) -> Result<FlashStorage, StorageError> {
        let backend = Box::new(super::backend::MemBackend::new());
        Ok(FlashStorage::open(backend, opts)?.0)
    }

    /// Counters for `/metrics`.
    pub fn counters(&self) -> FlashCounters {
        self.store.borrow().counters
    }

    /// Bytes of everything the store keeps (as `du -sb` counts the directory).
    pub fn disk_bytes(&self) -> u64 {
        self.store.borrow().total_bytes()
    }

    /// Writes whole series of older (or any) data directly as blocks, bypassing the head and the
    /// order check — the backfill path. `items`: labels and samples ascending by time. Blocks are
    /// compressed at zstd `level`.
    pub fn import(
        &self,
        items: Vec<(Labels, Vec<Sample>)>,
        level: i32,
    ) -> Result<usize, StorageError> {
        let mut job = self.import_job_at(items, level);
        loop {
            if let Some(n) = job.step(None)? {
                return Ok(n);
            }
        }
    }

    /// [`FlashStorage::import`] as a job done in slices.
    pub fn import_job_at(&self, items: Vec<(Labels, Vec<Sample>)>, level: i32) -> FlashImport {
        let gen = self.store.borrow_mut().open_batch();
        FlashImport {
            store: self.store.clone(),
            import: write::Import::new(items, gen, level),
            gen,
            failed: false,
        }
    }
}

/// An import under way: see [`write::Import`] and [`ImportJob`].
pub struct FlashImport {
    store: Rc<RefCell<Store>>,
    import: write::Import,
    gen: u64,
    failed: bool,
}

impl ImportJob for FlashImport {
    fn step(&mut self, deadline: Option<Instant>) -> Result<Option<usize>, StorageError> {
        if self.failed {
            return Err(StorageError::Io(std::io::Error::other(
                "the import already failed",
            )));
        }
        let r = self.import.run(&mut self.store.borrow_mut(), deadline);
        self.failed = r.is_err();
        r
    }

    fn wait(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
        self.import.sync_wait()
    }
}

/// An import that ends without writing (an error, or dropped unfinished) removes the series
/// it created that are still empty; one dropped after its write finishes noting it in the
/// series. Either way its series are no longer held.
impl Drop for FlashImport {
    fn drop(&mut self) {
        let Ok(mut st) = self.store.try_borrow_mut() else {
            return;
        };
        if self.import.is_written() {
            // On disk already: noting that in the series is finished at once, or they would
            // look dataless and be forgotten while their blocks are kept.
            if !self.failed {
                let _ = self.import.run(&mut st, None);
            }
        } else {
            st.forget_created(self.gen, std::mem::take(&mut self.import.created));
        }
        st.close_batch(self.gen);
    }
}

struct FlashAppender {
    store: Rc<RefCell<Store>>,
    /// This batch's number: series remember the last batch that touched them.
    gen: u64,
    batch: Vec<(u64, Sample)>,
    series_added: usize,
    /// Series this batch created: a rollback removes them again if they have no samples, so
    /// a failed scrape leaves no empty series behind (as Prometheus's queriers show none).
    created: Vec<u64>,
}

impl FlashAppender {
    fn push(&mut self, id: u64, t: i64, v: f64) -> Result<(), AppendError> {
        let mut st = self.store.borrow_mut();
        let Some(e) = st.series.get_mut(&id) else {
            return Err(AppendError::UnknownRef);
        };
        let last = if e.batch == self.gen {
            Some(e.batch_last)
        } else {
            e.last
        };
        let res = match last {
            Some(l) if t < l.t => Err(AppendError::OutOfOrder),
            Some(l) if t == l.t && l.v.to_bits() != v.to_bits() && !l.v.is_nan() => {
                Err(AppendError::DuplicateTimestamp)
            }
            Some(l) if t == l.t => return Ok(()),
            _ => Ok(()),
        };
        match res {
            Ok(()) => {
                // The newest open batch that touched the series keeps it (its number is what
                // protects the series from housekeeping); an older one, open at the same time,
                // leaves it be and is checked against the committed state at its commit.
                if self.gen >= e.batch {
                    e.batch = self.gen;
                    e.batch_last = Sample { t, v };
                }
                self.batch.push((id, Sample { t, v }));
                Ok(())
            }
            Err(err) => {
                match err {
                    AppendError::OutOfOrder => st.out_of_order_total += 1,
                    AppendError::DuplicateTimestamp => st.duplicate_total += 1,
                    _ => {}
                }
                Err(err)
            }
        }
    }
}

impl Appender for FlashAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError> {
        let (id, created) = self.store.borrow_mut().get_or_create(labels)?;
        if created {
            self.series_added += 1;
            self.created.push(id);
        }
        self.push(id, t, v)?;
        Ok(id)
    }

    fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        self.push(r, t, v)
    }

    fn commit(mut self: Box<Self>) -> Result<CommitStats, StorageError> {
        let mut st = self.store.borrow_mut();
        let flush_number = st.flush_number;
        let mut n = 0;
        let mut kept = 0;
        for i in 0..self.batch.len() {
            let (id, s) = self.batch[i];
            if st.head_bytes >= st.opts.max_head_bytes {
                st.counters.samples_refused_head_full += 1;
                self.batch[kept] = (id, s);
                kept += 1;
                continue;
            }
            let Some(series) = st.series.get_mut(&id) else {
                continue;
            };
            // Checked again: another batch, open at the same time (a scrape yields while it
            // parses a big body), may have committed a sample of this series since `push`.
            match series.last {
                Some(l) if s.t < l.t => {
                    st.out_of_order_total += 1;
                    continue;
                }
                Some(l) if s.t == l.t => {
                    if l.v.to_bits() != s.v.to_bits() && !l.v.is_nan() {
                        st.duplicate_total += 1;
                    }
                    continue;
                }
                _ => {}
            }
            if series.mark_flush != flush_number {
                // The first sample since the last flush began: note what that flush takes.
                series.mark_flush = flush_number;
                series.mark_count = series.head.len() as u32;
            }
            let before = series.head.heap_bytes();
            series.head.push(s.t, s.v);
            series.last = Some(s);
            let grown = series.head.heap_bytes().saturating_sub(before);
            st.head_bytes += grown;
            st.max_time = Some(st.max_time.map_or(s.t, |m| m.max(s.t)));
            self.batch[kept] = (id, s);
            kept += 1;
            n += 1;
        }
        self.batch.truncate(kept);
        st.head_samples += n as u64;
        st.appended_total += n as u64;
        let tap = st.tap.clone();
        drop(st);
        if let Some(tap) = tap {
            tap.committed(&self.batch);
        }
        // Committed: nothing for the drop to roll back.
        self.created.clear();
        Ok(CommitStats {
            samples: n,
            series_added: self.series_added,
        })
    }

    fn rollback(self: Box<Self>) {
        // Dropping rolls back.
    }
}

/// An appender dropped without a commit (a rollback, or its task cancelled while the batch
/// was open) removes the series it created that have no samples, so a failed scrape leaves
/// no empty series behind. A series another batch touched since is left to that batch.
impl Drop for FlashAppender {
    fn drop(&mut self) {
        let Ok(mut st) = self.store.try_borrow_mut() else {
            return;
        };
        st.close_batch(self.gen);
        st.forget_created(self.gen, std::mem::take(&mut self.created));
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        st.spare_batch = batch;
    }
}

struct FlashQuerier {
    store: Rc<RefCell<Store>>,
}

impl Querier for FlashQuerier {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError> {
        self.store.borrow_mut().select(matchers, mint, maxt)
    }

    fn select_job(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Box<dyn SelectJob + '_> {
        let job = select::Select::new(&self.store.borrow(), matchers, mint, maxt);
        Box::new(FlashSelect {
            store: &self.store,
            job,
        })
    }

    fn series_job(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Box<dyn SeriesJob + '_> {
        Box::new(FlashSeries {
            querier: self,
            matchers: matchers.to_vec(),
            mint,
            maxt,
            ids: None,
            finding: None,
            next: 0,
            out: Vec::new(),
            sort: None,
        })
    }

    fn labels_from_index(&self, mint: i64, maxt: i64) -> bool {
        self.covers_all(mint, maxt)
    }

    fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        // The listing in slices, run to its end.
        let mut job = self.series_job(matchers, mint, maxt);
        loop {
            if let Some(out) = job.step(None)? {
                return Ok(out);
            }
        }
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names = BTreeSet::new();
        if matchers.is_empty() && self.covers_all(mint, maxt) {
            let st = self.store.borrow();
            names.extend(st.postings.keys().map(|n| st.symbols.get(*n).to_owned()));
        } else {
            for labels in self.series(matchers, mint, maxt)? {
                for l in &labels {
                    if !names.contains(&l.name) {
                        names.insert(l.name.clone());
                    }
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
        let mut values = BTreeSet::new();
        if matchers.is_empty() && self.covers_all(mint, maxt) {
            let st = self.store.borrow();
            let Some(v) = st.symbols.lookup(name).and_then(|n| st.postings.get(&n)) else {
                return Ok(Vec::new());
            };
            // Distinct already (a map's keys): sorted as borrowed text, then copied once.
            let mut texts: Vec<&str> = v.keys().map(|v| st.symbols.get(*v)).collect();
            texts.sort_unstable();
            return Ok(texts.into_iter().map(str::to_owned).collect());
        } else {
            for labels in self.series(matchers, mint, maxt)? {
                let v = labels.get(name);
                if !v.is_empty() {
                    values.insert(v.to_owned());
                }
            }
        }
        Ok(values.into_iter().collect())
    }
}

/// A listing of series under way: the ids (from the index when the range covers every sample,
/// else found in slices by [`select::IdsIn`]), then their label sets a thousand at a time,
/// then a sort that stops and resumes.
struct FlashSeries<'a> {
    querier: &'a FlashQuerier,
    matchers: Vec<Matcher>,
    mint: i64,
    maxt: i64,
    ids: Option<Vec<u64>>,
    finding: Option<select::IdsIn>,
    next: usize,
    out: Vec<Labels>,
    sort: Option<crate::model::slice::StepSort<Labels>>,
}

impl SeriesJob for FlashSeries<'_> {
    fn step(&mut self, deadline: Option<Instant>) -> Result<Option<Vec<Labels>>, StorageError> {
        let clock = Clock(deadline);
        if self.ids.is_none() {
            if self.finding.is_none() && self.querier.covers_all(self.mint, self.maxt) {
                self.ids = Some(self.querier.store.borrow().candidates(&self.matchers));
            } else {
                let st = &mut *self.querier.store.borrow_mut();
                let finding = self.finding.get_or_insert_with(|| {
                    select::IdsIn::new(st, &self.matchers, self.mint, self.maxt)
                });
                match finding.run(st, deadline)? {
                    Some(ids) => {
                        self.ids = Some(ids);
                        self.finding = None;
                    }
                    None => return Ok(None),
                }
            }
            if clock.up() {
                return Ok(None);
            }
        }
        let ids = self.ids.as_deref().unwrap_or_default();
        while self.sort.is_none() {
            let st = self.querier.store.borrow();
            let end = (self.next + 1024).min(ids.len());
            self.out.extend(
                ids[self.next..end]
                    .iter()
                    .filter_map(|id| st.series.get(id).map(|s| st.symbols.labels(&s.labels))),
            );
            self.next = end;
            if end == ids.len() {
                self.sort = Some(crate::model::slice::StepSort::new(std::mem::take(
                    &mut self.out,
                )));
            }
            if clock.up() {
                return Ok(None);
            }
        }
        let Some(sort) = self.sort.as_mut() else {
            return Ok(Some(Vec::new()));
        };
        if !sort.run(|a, b| a.cmp(b), || clock.up()) {
            return Ok(None);
        }
        Ok(Some(sort.take()))
    }
}

/// A select under way: see [`select::Select`].
struct FlashSelect<'a> {
    store: &'a RefCell<Store>,
    job: select::Select,
}

impl SelectJob for FlashSelect<'_> {
    fn step(&mut self, deadline: Option<Instant>) -> Result<Option<Vec<Series>>, StorageError> {
        self.job.run(&mut self.store.borrow_mut(), deadline)
    }
}

impl FlashQuerier {
    /// True if `[mint, maxt]` covers every sample, so the index alone answers label questions.
    fn covers_all(&self, mint: i64, maxt: i64) -> bool {
        let st = self.store.borrow();
        let min = st
            .segments
            .iter()
            .map(|s| s.min_t)
            .min()
            .unwrap_or(i64::MAX);
        let min = st
            .series
            .values()
            .filter_map(|s| s.head.first_t())
            .fold(min, i64::min);
        mint <= min && maxt >= st.max_time.unwrap_or(i64::MIN)
    }
}

impl Storage for FlashStorage {
    fn appender(&self) -> Box<dyn Appender> {
        let (gen, batch) = {
            let mut st = self.store.borrow_mut();
            let gen = st.open_batch();
            (gen, std::mem::take(&mut st.spare_batch))
        };
        Box::new(FlashAppender {
            store: self.store.clone(),
            gen,
            batch,
            series_added: 0,
            created: Vec::new(),
        })
    }

    fn querier(&self) -> Box<dyn Querier> {
        Box::new(FlashQuerier {
            store: self.store.clone(),
        })
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.store.borrow_mut().flush()
    }

    fn flush_step(&self, slice: Duration) -> Result<bool, StorageError> {
        self.store
            .borrow_mut()
            .flush_slice(Some(Instant::now() + slice))
    }

    fn flush_wait(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
        self.store.borrow().flushing.as_ref()?.sync_wait()
    }

    fn housekeeping(&self) {
        self.store.borrow_mut().housekeeping()
    }

    /// At the live flush's level, not [`IMPORT_LEVEL`]: this is the running agent's import
    /// (remote write, the import API), and a frame at level 19 takes tens of milliseconds to
    /// compress, in one piece. `perch import`, offline, compresses at [`IMPORT_LEVEL`].
    fn import_job(&self, items: Vec<(Labels, Vec<Sample>)>) -> Box<dyn ImportJob> {
        let level = self.store.borrow().opts.level;
        Box::new(self.import_job_at(items, level))
    }

    fn export(
        &self,
        matcher_sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
        deadline: Option<Instant>,
    ) -> Result<ExportPage, ExportError> {
        self.store
            .borrow_mut()
            .export(matcher_sets, range, mint, maxt, limit, deadline)
    }

    fn export_job(
        &self,
        matcher_sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> Box<dyn ExportJob> {
        Box::new(FlashExport {
            store: self.store.clone(),
            sets: matcher_sets.to_vec(),
            range,
            mint,
            maxt,
            limit,
            ids: None,
            per: Vec::new(),
            gathered: 0,
            from: range.from,
            until_was_open: false,
            end: None,
            series: Vec::new(),
        })
    }

    fn set_tap(&self, tap: Option<Rc<dyn SampleTap>>) {
        let mut st = self.store.borrow_mut();
        st.tap = tap;
        st.writes.clear();
    }

    fn labels_by_ref(&self, r: SeriesRef) -> Option<Labels> {
        let st = self.store.borrow();
        st.series.get(&r).map(|s| st.symbols.labels(&s.labels))
    }

    fn take_writes(&self) -> Vec<WriteSpan> {
        std::mem::take(&mut self.store.borrow_mut().writes)
    }

    fn end_cursor(&self) -> Cursor {
        self.store.borrow().end_cursor()
    }

    fn block_positions(&self, range: CursorRange) -> Vec<(Cursor, u64)> {
        let st = self.store.borrow();
        st.blocks_in(range)
            .map(|(at, r)| (at, r.len as u64))
            .collect()
    }

    fn oldest_cursor(&self) -> Cursor {
        self.store.borrow().oldest_cursor()
    }

    fn span_stats(&self, range: CursorRange) -> (u64, Option<i64>) {
        let st = self.store.borrow();
        st.blocks_in(range)
            .fold((0, None), |(bytes, oldest), (_, r)| {
                (
                    bytes + r.len as u64,
                    Some(oldest.map_or(r.min_t, |o: i64| o.min(r.min_t))),
                )
            })
    }

    fn set_checkpoint(&self, name: &str, value: Vec<u8>) {
        let mut st = self.store.borrow_mut();
        if st.checkpoints.get(name) != Some(&value) {
            st.checkpoints.insert(name.to_owned(), value);
            st.checkpoint_dirty = true;
        }
    }

    fn checkpoint(&self, name: &str) -> Option<Vec<u8>> {
        self.store.borrow().checkpoints.get(name).cloned()
    }

    fn stats(&self) -> StorageStats {
        let st = self.store.borrow();
        let min_time = st
            .segments
            .iter()
            .map(|s| s.min_t)
            .chain(st.series.values().filter_map(|s| s.head.first_t()))
            .min()
            .filter(|t| *t != i64::MAX);
        StorageStats {
            series: st.series.len() as u64,
            samples_in_memory: st.head_samples,
            samples_appended_total: st.appended_total,
            out_of_order_total: st.out_of_order_total,
            duplicate_total: st.duplicate_total,
            min_time,
            max_time: st.max_time,
            memory_bytes: st.head_bytes as u64
                + st.series
                    .values()
                    .map(|s| s.labels.len() as u64 * 4 + 96)
                    .sum::<u64>(),
            disk_bytes: st.total_bytes(),
            bytes_written_total: st.counters.bytes_written,
            corrupt_records_total: st.counters.corrupt_records,
            write_errors_total: st.counters.write_errors,
            write_micros_total: st.counters.write_micros,
            write_micros_max: st.counters.write_micros_max,
            sync_micros_total: st.counters.sync_micros,
            sync_micros_max: st.counters.sync_micros_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale, STALE_NAN};
    use crate::storage::backend::{FileBackend, MemBackend};

    fn open(b: &Rc<MemBackend>, opts: FlashOptions) -> FlashStorage {
        FlashStorage::open(Box::new(b.clone()), opts).unwrap().0
    }

    fn labels(i: usize) -> Labels {
        Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string()), ("job", "j")])
    }

    /// A value that exercises the codecs: counters, decimals, specials.
    fn value(i: usize, t: i64) -> f64 {
        match i % 5 {
            0 => (t / 1000) as f64 * 3.0,
            1 => 0.25 * (t / 1000 % 17) as f64,
            2 => f64::from_bits(0x3ff0_0000_0000_0000 ^ (t as u64).wrapping_mul(2654435761)),
            3 if t % 7000 == 0 => f64::from_bits(STALE_NAN),
            3 => -0.0,
            _ => 42.0,
        }
    }

    fn ingest(s: &FlashStorage, series: usize, from: i64, to: i64, step: i64) {
        let mut t = from;
        while t < to {
            let mut app = s.appender();
            for i in 0..series {
                app.append(&labels(i), t, value(i, t)).unwrap();
            }
            app.commit().unwrap();
            t += step;
        }
    }

    /// `flushes` flushes of `series` series, 10 s at 1 s each, from t = 0.
    fn ingest_flushed(s: &FlashStorage, series: usize, flushes: i64) {
        for k in 0..flushes {
            ingest(s, series, k * 10_000, (k + 1) * 10_000, 1000);
            s.flush().unwrap();
        }
    }

    fn all(s: &FlashStorage) -> Vec<(Labels, Vec<Sample>)> {
        s.querier()
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|x| (x.labels, x.samples.collect()))
            .collect()
    }

    fn check_exact(got: &[(Labels, Vec<Sample>)], series: usize, from: i64, to: i64, step: i64) {
        assert_eq!(got.len(), series);
        for (l, samples) in got {
            let i: usize = l.get("i").parse().unwrap();
            let want: Vec<i64> = (0..)
                .map(|k| from + k * step)
                .take_while(|t| *t < to)
                .collect();
            let ts: Vec<i64> = samples.iter().map(|s| s.t).collect();
            assert_eq!(ts, want, "series {i}");
            for s in samples {
                assert_eq!(
                    s.v.to_bits(),
                    value(i, s.t).to_bits(),
                    "series {i} at {}",
                    s.t
                );
            }
        }
    }

    #[test]
    fn a_commit_checks_the_order_again_against_batches_committed_meanwhile() {
        // Two batches open at once (a scrape yields while it parses), writing the same series:
        // both pass the check at append time, and the later commit must not put an older or a
        // conflicting sample into the head.
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        let l = |n: &str| Labels::from_pairs(&[("__name__", n)]);
        let mut app = s.appender();
        app.append(&l("a"), 1000, 1.0).unwrap();
        app.append(&l("b"), 1000, 1.0).unwrap();
        app.commit().unwrap();
        let mut first = s.appender();
        let mut second = s.appender();
        first.append(&l("a"), 3000, 3.0).unwrap();
        second.append(&l("a"), 2000, 2.0).unwrap();
        first.append(&l("b"), 2000, 2.0).unwrap();
        second.append(&l("b"), 2000, 5.0).unwrap();
        second.append(&l("c"), 2000, 5.0).unwrap();
        assert_eq!(first.commit().unwrap().samples, 2);
        assert_eq!(second.commit().unwrap().samples, 1, "only c's sample");
        let stats = s.stats();
        assert_eq!((stats.out_of_order_total, stats.duplicate_total), (1, 1));
        let got: Vec<(String, Vec<Sample>)> = s
            .querier()
            .select(
                &[Matcher::new(MatchKind::Regex, "__name__", ".+").unwrap()],
                0,
                10_000,
            )
            .unwrap()
            .into_iter()
            .map(|x| (x.labels.metric_name().to_owned(), x.samples.collect()))
            .collect();
        let at = |t, v| Sample { t, v };
        assert_eq!(
            got,
            vec![
                ("a".to_owned(), vec![at(1000, 1.0), at(3000, 3.0)]),
                ("b".to_owned(), vec![at(1000, 1.0), at(2000, 2.0)]),
                ("c".to_owned(), vec![at(2000, 5.0)]),
            ]
        );
    }

    #[test]
    fn a_series_an_open_batch_created_survives_a_segment_deletion() {
        // A budget below one segment, so flushes delete the active segment to make room; each
        // deletion forgets series with no data left, but not those an open batch created.
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 12 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let pending = Labels::from_pairs(&[("__name__", "pending")]);
        let mut open_batch = s.appender();
        open_batch.append(&pending, 500, 7.0).unwrap();
        ingest_until_rotated(&s, 10, 0, 1);
        assert_eq!(open_batch.commit().unwrap().samples, 1);
        let got = s
            .querier()
            .select(&[Matcher::equal("__name__", "pending")], 0, 1000)
            .unwrap();
        assert_eq!(got.len(), 1);
        let v: Vec<Sample> = got.into_iter().next().unwrap().samples.collect();
        assert_eq!(v, vec![Sample { t: 500, v: 7.0 }]);
    }

    #[test]
    fn an_older_open_batch_does_not_lower_a_series_hold() {
        // A newer batch creates a series; an older one, open at the same time, writes it too
        // and rolls back. The newer batch's sample must survive a segment deletion between.
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 12 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let x = Labels::from_pairs(&[("__name__", "x")]);
        let mut older = s.appender();
        let mut newer = s.appender();
        newer.append(&x, 500, 7.0).unwrap();
        older.append(&x, 400, 1.0).unwrap();
        older.rollback();
        ingest_until_rotated(&s, 10, 0, 1);
        assert_eq!(newer.commit().unwrap().samples, 1);
        let got = s
            .querier()
            .select(&[Matcher::equal("__name__", "x")], 0, 1000)
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn an_appender_dropped_open_leaves_no_empty_series_behind() {
        // A scrape task cancelled (a reload) while its batch is open drops the appender.
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        let mut app = s.appender();
        app.append(&Labels::from_pairs(&[("__name__", "gone")]), 1000, 1.0)
            .unwrap();
        drop(app);
        assert!(s
            .querier()
            .series(&[], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty());
        assert!(s.store.borrow().open_batches.is_empty());
    }

    /// Series `imp{i}` with `n` samples a second apart from `from`, values from [`value`].
    fn import_items(series: usize, from: i64, n: i64) -> Vec<(Labels, Vec<Sample>)> {
        (0..series)
            .map(|i| {
                let l = Labels::from_pairs(&[("__name__", "imp"), ("i", &i.to_string())]);
                let samples = (0..n)
                    .map(|k| {
                        let t = from + k * 1000;
                        Sample { t, v: value(i, t) }
                    })
                    .collect();
                (l, samples)
            })
            .collect()
    }

    fn check_import(s: &FlashStorage, series: usize, from: i64, n: i64) {
        let got = s
            .querier()
            .select(&[Matcher::equal("__name__", "imp")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(got.len(), series);
        for x in got {
            let i: usize = x.labels.get("i").parse().unwrap();
            let v: Vec<Sample> = x.samples.collect();
            assert_eq!(v.len() as i64, n, "series {i}");
            for (k, smp) in v.iter().enumerate() {
                let t = from + k as i64 * 1000;
                assert_eq!((smp.t, smp.v.to_bits()), (t, value(i, t).to_bits()));
            }
        }
    }

    #[test]
    fn an_import_in_slices_writes_whole_while_scrapes_and_flushes_run_between() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 50, 0, 5000, 1000);
        s.flush().unwrap();
        let (series, n) = (3000, 40);
        let mut job = s.import_job_at(import_items(series, 1_000_000, n), 3);
        let mut steps = 0;
        let mut t = 5000;
        let written = loop {
            // A deadline already past: each step does the least it can.
            if let Some(w) = job.step(Some(Instant::now())).unwrap() {
                break w;
            }
            steps += 1;
            assert!(steps < 100_000, "no progress");
            ingest(&s, 50, t, t + 1000, 1000);
            t += 1000;
            if steps % 7 == 0 {
                // A flush in one go changes the active segment's contents under the import.
                s.flush().unwrap();
            }
            if steps % 11 == 0 {
                s.store.borrow_mut().seal_active(SyncMode::Now);
            }
        };
        drop(job);
        assert!(steps > 10, "{steps} steps");
        assert_eq!(written, series * n as usize);
        check_import(&s, series, 1_000_000, n);
        check_exact(&all(&s), 50, 0, t, 1000);
        s.flush().unwrap();
        let s = open(&b, FlashOptions::default());
        check_import(&s, series, 1_000_000, n);
        check_exact(&all(&s), 50, 0, t, 1000);
    }

    #[test]
    fn an_import_dropped_unfinished_writes_nothing_and_leaves_no_series() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 5, 0, 3000, 1000);
        s.flush().unwrap();
        let bytes = b.total_bytes();
        let mut job = s.import_job_at(import_items(2000, 0, 10), 3);
        assert_eq!(job.step(Some(Instant::now())).unwrap(), None);
        assert!(!s
            .querier()
            .series(&[], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty());
        drop(job);
        assert_eq!(b.total_bytes(), bytes);
        assert_eq!(
            s.querier().series(&[], i64::MIN, i64::MAX).unwrap().len(),
            5
        );
        assert!(s.store.borrow().open_batches.is_empty());
        // The labels import again.
        s.import(import_items(2000, 0, 10), 3).unwrap();
        check_import(&s, 2000, 0, 10);
    }

    #[test]
    fn an_import_whose_sync_fails_reports_it_and_leaves_the_store_whole() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 5, 0, 3000, 1000);
        s.flush().unwrap();
        b.fail_syncs.set(true);
        let mut job = s.import_job_at(import_items(50, 0, 10), 3);
        let mut result = Ok(None);
        for _ in 0..100_000 {
            result = job.step(Some(Instant::now()));
            if !matches!(result, Ok(None)) {
                break;
            }
        }
        assert!(result.is_err(), "the client is told: {result:?}");
        drop(job);
        assert_eq!(s.counters().write_errors, 1);
        // The store is whole: what was written reads back, and sending it again is harmless.
        b.fail_syncs.set(false);
        check_import(&s, 50, 0, 10);
        s.import(import_items(50, 0, 10), 3).unwrap();
        check_import(&s, 50, 0, 10);
        check_import(&open(&b, FlashOptions::default()), 50, 0, 10);
    }

    #[test]
    fn an_import_keeps_its_series_when_their_old_data_is_deleted_meanwhile() {
        // The import's series had data only in the first segment; while the import runs, the
        // ring deletes that segment, which forgets series with no data left, but not these.
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 12 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        s.import(import_items(3, 0, 5), 3).unwrap();
        let mut job = s.import_job_at(import_items(3, 100_000, 20), 3);
        assert_eq!(job.step(Some(Instant::now())).unwrap(), None);
        ingest_until_rotated(&s, 10, 0, 1);
        while job.step(None).unwrap().is_none() {}
        drop(job);
        let got = s
            .querier()
            .select(&[Matcher::equal("__name__", "imp")], 100_000, i64::MAX)
            .unwrap();
        assert_eq!(got.len(), 3);
        let s = open(&b, opts);
        check_import(&s, 3, 100_000, 20);
    }

    #[test]
    fn series_in_a_range_are_those_select_returns() {
        // Flushed blocks, heads, and imported blocks spanning wide ranges, with series that
        // stop and start: every range, cut anywhere, lists exactly the series select returns.
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        for round in 0..6i64 {
            let mut app = s.appender();
            for i in 0..40usize {
                // Series i is scraped in rounds where i % (round + 2) != 0.
                if i % (round as usize + 2) == 0 {
                    continue;
                }
                for k in 0..10 {
                    let t = round * 100_000 + k * 1000;
                    app.append(&labels(i), t, value(i, t)).unwrap();
                }
            }
            app.commit().unwrap();
            if round < 5 {
                s.flush().unwrap();
            }
        }
        s.import(
            (0..5)
                .map(|i| {
                    let samples = [50_000, 350_000]
                        .iter()
                        .map(|&t| Sample { t, v: 1.0 })
                        .collect();
                    (labels(100 + i), samples)
                })
                .collect(),
            3,
        )
        .unwrap();
        let q = s.querier();
        let m = [Matcher::equal("__name__", "m")];
        let mut ranges = vec![(i64::MIN, i64::MAX), (0, 0), (-5, -1), (600_000, 700_000)];
        for a in (0..560_000).step_by(23_000) {
            for len in [0, 999, 4_500, 60_000, 250_000] {
                ranges.push((a, a + len));
            }
        }
        for (mint, maxt) in ranges {
            let want = crate::storage::labels_of(q.select(&m, mint, maxt).unwrap());
            assert_eq!(q.series(&m, mint, maxt).unwrap(), want, "[{mint}, {maxt}]");
            // In slices, a step at a time.
            let mut job = q.series_job(&m, mint, maxt);
            let sliced = loop {
                if let Some(out) = job.step(Some(Instant::now())).unwrap() {
                    break out;
                }
            };
            assert_eq!(sliced, want, "[{mint}, {maxt}] in slices");
        }
    }

    #[test]
    fn a_series_listing_in_slices_misses_no_series_a_flush_moves_meanwhile() {
        // More series than one slice of heads; the range holds only head samples when the
        // listing begins, and a flush moves them to a block after its first step.
        let n = 2500;
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, n, 0, 10_000, 1000);
        s.flush().unwrap();
        ingest(&s, n, 10_000, 12_000, 1000);
        let m = [Matcher::equal("__name__", "m")];
        let (mint, maxt) = (10_500, 11_500);
        let q = s.querier();
        let want = crate::storage::labels_of(q.select(&m, mint, maxt).unwrap());
        assert_eq!(want.len(), n);
        let mut job = q.series_job(&m, mint, maxt);
        let mut steps = 0;
        let got = loop {
            if let Some(out) = job.step(Some(Instant::now())).unwrap() {
                break out;
            }
            steps += 1;
            if steps == 1 {
                s.flush().unwrap();
                assert_eq!(s.stats().samples_in_memory, 0);
            }
        };
        assert!(steps > 1, "{steps} steps");
        assert_eq!(got, want);
    }

    /// Runs a select job to the end with a deadline already past at every step, calling
    /// `between` after each step; returns the answer and the number of steps.
    fn select_in_slices(
        s: &FlashStorage,
        m: &[Matcher],
        mint: i64,
        maxt: i64,
        mut between: impl FnMut(usize),
    ) -> (Vec<(Labels, Vec<Sample>)>, usize) {
        let q = s.querier();
        let mut job = q.select_job(m, mint, maxt);
        let mut steps = 0;
        loop {
            if let Some(out) = job.step(Some(Instant::now())).unwrap() {
                let out = out
                    .into_iter()
                    .map(|x| (x.labels, x.samples.collect()))
                    .collect();
                return (out, steps);
            }
            steps += 1;
            assert!(steps < 1_000_000, "no progress");
            between(steps);
        }
    }

    #[test]
    fn a_select_in_slices_returns_what_one_go_returns() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 1500, 0, 20_000, 1000);
        s.flush().unwrap();
        ingest(&s, 1500, 20_000, 30_000, 1000);
        // Imported blocks overlapping the flushed ones.
        s.import(import_items(50, 5_000, 10), 3).unwrap();
        let m = [Matcher::new(MatchKind::Regex, "__name__", "m|imp").unwrap()];
        for (mint, maxt) in [(i64::MIN, i64::MAX), (3_500, 25_000), (20_000, 20_000)] {
            let want: Vec<(Labels, Vec<Sample>)> = s
                .querier()
                .select(&m, mint, maxt)
                .unwrap()
                .into_iter()
                .map(|x| (x.labels, x.samples.collect()))
                .collect();
            let (got, steps) = select_in_slices(&s, &m, mint, maxt, |_| {});
            assert!(steps > 3, "{steps} steps");
            // Compared by bits: staleness markers are NaN.
            let bits = |v: Vec<(Labels, Vec<Sample>)>| -> Vec<(Labels, Vec<(i64, u64)>)> {
                v.into_iter()
                    .map(|(l, s)| (l, s.iter().map(|x| (x.t, x.v.to_bits())).collect()))
                    .collect()
            };
            assert!(bits(got) == bits(want), "[{mint}, {maxt}]");
        }
    }

    #[test]
    fn a_select_in_slices_misses_nothing_while_flushes_and_scrapes_run_between() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 2000, 0, 10_000, 1000);
        s.flush().unwrap();
        ingest(&s, 2000, 10_000, 20_000, 1000);
        let m = [Matcher::equal("__name__", "m")];
        let mut t = 20_000;
        let (got, steps) = select_in_slices(&s, &m, i64::MIN, i64::MAX, |step| {
            // Scrapes land; flushes in slices and in one go move head samples into blocks
            // the select did not list when it began.
            ingest(&s, 2000, t, t + 1000, 1000);
            t += 1000;
            match step % 5 {
                0 => s.flush().unwrap(),
                2 => while !s.flush_step(Duration::ZERO).unwrap() {},
                _ => {}
            }
        });
        assert!(steps > 5, "{steps} steps");
        // Everything there when the select began, once; later samples may show, in order.
        assert_eq!(got.len(), 2000);
        for (l, v) in &got {
            let i: usize = l.get("i").parse().unwrap();
            assert!(v.windows(2).all(|w| w[0].t < w[1].t), "series {i}");
            let early: Vec<Sample> = v.iter().filter(|x| x.t < 20_000).copied().collect();
            let want: Vec<Sample> = (0..20)
                .map(|k| Sample {
                    t: k * 1000,
                    v: value(i, k * 1000),
                })
                .collect();
            assert_eq!(
                early
                    .iter()
                    .map(|x| (x.t, x.v.to_bits()))
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|x| (x.t, x.v.to_bits()))
                    .collect::<Vec<_>>(),
                "series {i}"
            );
        }
    }

    #[test]
    fn a_rollback_leaves_no_empty_series_behind() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        let l = |n: &str| Labels::from_pairs(&[("__name__", n)]);
        let mut app = s.appender();
        app.append(&l("kept"), 1000, 1.0).unwrap();
        app.commit().unwrap();
        let mut app = s.appender();
        app.append(&l("kept"), 2000, 2.0).unwrap();
        app.append(&l("new"), 2000, 2.0).unwrap();
        app.rollback();
        let names: Vec<String> = s
            .querier()
            .series(&[], i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|l| l.metric_name().to_owned())
            .collect();
        assert_eq!(names, vec!["kept"]);
        // The name can be appended again.
        let mut app = s.appender();
        app.append(&l("new"), 3000, 3.0).unwrap();
        app.commit().unwrap();
        assert_eq!(
            s.querier().series(&[], i64::MIN, i64::MAX).unwrap().len(),
            2
        );
    }

    #[test]
    fn series_declared_in_label_order_are_indexed_in_id_order() {
        // Ids follow creation (0, 1, 2, …); labels sort "0", "1", "10", …, "19", "2", …: the
        // series records list them in label order, and the postings must still ascend.
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 20, 0, 10_000, 1000);
        s.flush().unwrap();
        drop(s);
        let s = open(&b, FlashOptions::default());
        {
            let st = s.store.borrow();
            let lists = st.postings.values().flat_map(|v| v.values());
            assert!(lists.clone().count() > 20);
            assert!(lists.clone().all(|l| l.windows(2).all(|w| w[0] < w[1])));
        }
        let m = |k, n: &str, v: &str| Matcher::new(k, n, v).unwrap();
        let got = s
            .querier()
            .select(
                &[
                    m(MatchKind::Equal, "job", "j"),
                    m(MatchKind::Regex, "i", "1.*"),
                ],
                i64::MIN,
                i64::MAX,
            )
            .unwrap();
        let is: Vec<String> = got.iter().map(|x| x.labels.get("i").to_string()).collect();
        assert_eq!(
            is,
            ["1", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19"]
        );
    }

    #[test]
    fn flushed_data_survives_reopen_bit_exact() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 20, 0, 60_000, 1000);
        s.flush().unwrap();
        ingest(&s, 20, 60_000, 90_000, 1000);
        // Head and blocks together.
        check_exact(&all(&s), 20, 0, 90_000, 1000);
        s.flush().unwrap();
        drop(s);
        let s = open(&b, FlashOptions::default());
        check_exact(&all(&s), 20, 0, 90_000, 1000);
        let three = all(&s).into_iter().find(|x| x.0.get("i") == "3").unwrap();
        assert!(three.1.iter().any(|x| is_stale(x.v)));
        // Appending continues after a reopen.
        ingest(&s, 20, 90_000, 100_000, 1000);
        s.flush().unwrap();
        let s = open(&b, FlashOptions::default());
        check_exact(&all(&s), 20, 0, 100_000, 1000);
        let names = s
            .querier()
            .label_values("i", &[], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(names.len(), 20);
    }

    #[test]
    fn power_cut_loses_at_most_the_unflushed_interval() {
        for torn in [0usize, 1, 39, 40, 41, 100, 5000] {
            let b = Rc::new(MemBackend::new());
            let s = open(&b, FlashOptions::default());
            ingest(&s, 10, 0, 30_000, 1000);
            s.flush().unwrap();
            ingest(&s, 10, 30_000, 60_000, 1000);
            s.flush().unwrap();
            // Written but not synced: a flush that the cut interrupts.
            ingest(&s, 10, 60_000, 70_000, 1000);
            b.fail_writes.set(false);
            drop(s);
            b.power_cut(torn);
            let s = open(&b, FlashOptions::default());
            check_exact(&all(&s), 10, 0, 60_000, 1000);
        }
    }

    #[test]
    fn a_torn_flush_is_detected_and_skipped() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 10, 0, 30_000, 1000);
        s.flush().unwrap();
        let name = b.list().unwrap()[0].clone();
        let synced = b.len(&name).unwrap();
        ingest(&s, 10, 30_000, 60_000, 1000);
        s.flush().unwrap();
        drop(s);
        let full = b.len(&name).unwrap();
        // Cut the second flush's write anywhere: the first one always survives.
        for cut in (synced..full).step_by(7) {
            let b2 = Rc::new(MemBackend::new());
            b2.append(&name, &b.read_exact_at(&name, 0, cut as usize).unwrap())
                .unwrap();
            b2.sync(&name).unwrap();
            let (s, report) =
                FlashStorage::open(Box::new(b2.clone()), FlashOptions::default()).unwrap();
            check_exact(&all(&s), 10, 0, 30_000, 1000);
            assert!(report.corrupt_records <= 1);
        }
    }

    #[test]
    fn never_exceeds_the_byte_budget() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 40 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let mut t = 0;
        for _ in 0..400 {
            ingest(&s, 50, t, t + 10_000, 1000);
            t += 10_000;
            s.flush().unwrap();
            assert!(
                b.total_bytes() <= opts.budget_bytes,
                "{} bytes",
                b.total_bytes()
            );
            assert_eq!(b.total_bytes(), s.disk_bytes());
        }
        // The oldest data went first, whole segments at a time; the newest is all there.
        let got = all(&s);
        assert_eq!(got.len(), 50);
        let first = got[0].1[0].t;
        assert!(first > 0, "{} bytes, {:?}", b.total_bytes(), s.counters());
        check_exact(&got, 50, first, t, 1000);
        assert!(s.counters().segments_deleted > 0);
        // And it reopens the same.
        let s2 = open(&b, opts);
        assert_eq!(all(&s2).len(), 50);
    }

    #[test]
    fn sealed_segments_open_from_their_index() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 128 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let mut t = 0;
        for _ in 0..300 {
            ingest(&s, 50, t, t + 10_000, 1000);
            t += 10_000;
            s.flush().unwrap();
        }
        drop(s);
        let mut names = b.list().unwrap();
        names.sort();
        assert!(names.len() > 2, "{names:?} {} bytes", b.total_bytes());
        let indexed = names
            .iter()
            .filter(|n| segment::read_index(&*b, n).unwrap().is_some())
            .count();
        assert_eq!(
            indexed,
            names.len() - 1,
            "every segment but the newest is sealed"
        );
        let (s2, report) = FlashStorage::open(Box::new(b.clone()), opts).unwrap();
        assert_eq!(report.corrupt_records, 0);
        check_exact(&all(&s2), 50, 0, t, 1000);
        drop(s2);
        // A damaged trailer or index only costs a walk over the headers.
        let first = names[0].clone();
        let len = b.len(&first).unwrap() as usize;
        b.corrupt(&first, |d| d[len - 20] ^= 0xff);
        assert!(segment::read_index(&*b, &first).unwrap().is_none());
        let (s3, _) = FlashStorage::open(Box::new(b.clone()), opts).unwrap();
        check_exact(&all(&s3), 50, 0, t, 1000);
    }

    #[test]
    fn retention_time_counts_from_the_newest_sample() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            retention_ms: 100_000,
            budget_bytes: 1 << 20,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let mut t = 1_000_000;
        for _ in 0..40 {
            ingest(&s, 5, t, t + 10_000, 1000);
            t += 10_000;
            s.flush().unwrap();
            // Seal segments often enough for retention to have whole segments to drop.
            s.store.borrow_mut().active = None;
            s.housekeeping();
        }
        let got = all(&s);
        let oldest = got.iter().map(|x| x.1[0].t).min().unwrap();
        assert!(
            oldest >= t - 100_000 - 10_000,
            "oldest {oldest}, newest {t}"
        );
    }

    #[test]
    fn corruption_is_counted_and_the_rest_served() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest_flushed(&s, 10, 5);
        drop(s);
        let name = b.list().unwrap()[0].clone();
        let len = b.len(&name).unwrap() as usize;
        b.corrupt(&name, |d| d[len * 2 / 3] ^= 0x55);
        let (s, _) = FlashStorage::open(Box::new(b.clone()), FlashOptions::default()).unwrap();
        let got = all(&s);
        let total: usize = got.iter().map(|x| x.1.len()).sum();
        assert!((300..500).contains(&total), "{total}");
        assert!(s.counters().corrupt_records >= 1);
        // Truncated files, garbage files: still opens.
        b.corrupt(&name, |d| d.truncate(len / 2));
        b.append("seg-0000000000000099.perch", b"garbage").unwrap();
        let (s, _) = FlashStorage::open(Box::new(b.clone()), FlashOptions::default()).unwrap();
        let _ = all(&s);
    }

    #[test]
    fn series_lists_labels_from_the_index_or_the_data() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 5, 0, 10_000, 1000);
        s.flush().unwrap();
        ingest(&s, 2, 10_000, 20_000, 1000);
        let q = s.querier();
        let m = [Matcher::equal("__name__", "m")];
        let from_select: Vec<Labels> = q
            .select(&m, i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|x| x.labels)
            .collect();
        assert_eq!(q.series(&m, i64::MIN, i64::MAX).unwrap(), from_select);
        assert_eq!(from_select.len(), 5);
        // Only two series have samples after 10 s.
        assert_eq!(q.series(&m, 10_000, 30_000).unwrap().len(), 2);
        let i = Matcher::equal("i", "3");
        assert_eq!(
            q.series(&[m[0].clone(), i], i64::MIN, i64::MAX)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn out_of_order_and_duplicates_are_rejected() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        let mut app = s.appender();
        app.append(&labels(1), 1000, 1.0).unwrap();
        app.commit().unwrap();
        let mut app = s.appender();
        assert_eq!(
            app.append(&labels(1), 999, 1.0),
            Err(AppendError::OutOfOrder)
        );
        assert_eq!(
            app.append(&labels(1), 1000, 2.0),
            Err(AppendError::DuplicateTimestamp)
        );
        assert!(app.append(&labels(1), 1000, 1.0).is_ok());
        app.commit().unwrap();
        assert_eq!(s.stats().out_of_order_total, 1);
        assert_eq!(all(&s)[0].1.len(), 1);
    }

    #[test]
    fn a_full_disk_keeps_the_head_and_recovers() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 10, 0, 20_000, 1000);
        b.fail_writes.set(true);
        assert!(s.flush().is_err());
        ingest(&s, 10, 20_000, 30_000, 1000);
        check_exact(&all(&s), 10, 0, 30_000, 1000);
        b.fail_writes.set(false);
        s.flush().unwrap();
        let s = open(&b, FlashOptions::default());
        check_exact(&all(&s), 10, 0, 30_000, 1000);
        assert_eq!(s.counters().write_errors, 0);
    }

    /// Runs a flush in slices of no time at all (each does a few series' worth), calling
    /// `between` after every slice; returns the number of slices.
    fn flush_in_slices(s: &FlashStorage, mut between: impl FnMut(usize)) -> usize {
        let mut slices = 1;
        while !s.flush_step(Duration::ZERO).unwrap() {
            between(slices);
            slices += 1;
            assert!(slices < 1_000_000, "the flush makes no progress");
        }
        slices
    }

    #[test]
    fn a_flush_in_slices_writes_what_the_heads_held_and_keeps_later_samples() {
        // More series than one sort run, so the declarations' merge sort is sliced too.
        let n = 2500;
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, n, 0, 10_000, 1000);
        let mut t = 10_000;
        let slices = flush_in_slices(&s, |k| {
            // Scrapes go on between slices; every sample is visible once at every instant
            // (while the heads are trimmed too, when some samples are on disk and in a head).
            if k % 20 == 0 {
                ingest(&s, n, t, t + 1000, 1000);
                t += 1000;
            }
            if k % 5 == 0 {
                check_exact(&all(&s), n, 0, t, 1000);
            }
        });
        let st = s.store.borrow();
        let held: usize = st.series.values().map(|e| e.head.heap_bytes()).sum();
        assert_eq!(st.head_bytes, held);
        drop(st);
        assert!(slices > 20, "{slices} slices");
        assert!(t > 10_000);
        // The flush wrote what the heads held when it began; the rest is still in the heads.
        assert_eq!(
            s.stats().samples_in_memory,
            ((t - 10_000) / 1000) as u64 * n as u64
        );
        check_exact(&all(&s), n, 0, t, 1000);
        let reopened = open(&b, FlashOptions::default());
        check_exact(&all(&reopened), n, 0, 10_000, 1000);
        drop(reopened);
        s.flush().unwrap();
        assert_eq!(s.stats().samples_in_memory, 0);
        check_exact(&all(&open(&b, FlashOptions::default())), n, 0, t, 1000);
    }

    #[test]
    fn a_flush_finds_its_series_in_slices_and_takes_what_each_held_when_it_began() {
        // More series than one slice of the scan for heads: samples committed before the scan
        // reaches a series, and series created meanwhile, wait for the next flush.
        let n = 3 * write::SLOTS_PER_SCAN;
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, n, 0, 10_000, 1000);
        assert!(!s.flush_step(Duration::ZERO).unwrap());
        {
            let st = s.store.borrow();
            let job = st.flushing.as_ref().unwrap();
            assert!(!job.is_written());
        }
        // Every series (scanned or not) and new ones get a sample.
        ingest(&s, n + 10, 10_000, 11_000, 1000);
        flush_in_slices(&s, |_| {});
        assert_eq!(s.stats().samples_in_memory, (n + 10) as u64);
        let reopened = open(&b, FlashOptions::default());
        check_exact(&all(&reopened), n, 0, 10_000, 1000);
        drop(reopened);
        s.flush().unwrap();
        let got = all(&open(&b, FlashOptions::default()));
        let (old, new): (Vec<_>, Vec<_>) = got
            .into_iter()
            .partition(|(l, _)| l.get("i").parse::<usize>().unwrap() < n);
        check_exact(&old, n, 0, 11_000, 1000);
        assert_eq!(new.len(), 10);
        assert!(new.iter().all(|(_, v)| v.len() == 1 && v[0].t == 10_000));
    }

    #[test]
    fn a_flush_in_slices_declares_again_when_the_segment_changes_meanwhile() {
        // More series than one sort run; the change falls in every slice in turn (while
        // blocks are built, while declarations are sorted and encoded, before the write).
        let n = 1100;
        let mut moved = 0;
        for at in 1.. {
            let b = Rc::new(MemBackend::new());
            let s = open(&b, FlashOptions::default());
            ingest(&s, 10, 0, 10_000, 1000);
            s.flush().unwrap();
            ingest(&s, n, 10_000, 20_000, 1000);
            let first = s.store.borrow().active;
            let slices = flush_in_slices(&s, |k| {
                // Another writer ends the segment, then an import of another series starts
                // the next one.
                if k == at {
                    s.store.borrow_mut().seal_active(SyncMode::Now);
                }
                if k == at + 1 {
                    let l = Labels::from_pairs(&[("__name__", "other")]);
                    Storage::import(&s, vec![(l, vec![Sample { t: 1000, v: 1.0 }])]).unwrap();
                }
            });
            if at + 1 >= slices {
                assert!(at > 50, "{slices} slices");
                assert!(
                    moved > 10,
                    "the segment changed before the write {moved} times"
                );
                break;
            }
            // The segment the flush wrote to.
            let written = {
                let st = s.store.borrow();
                let id = st.find(&labels(n - 1)).unwrap();
                st.series.get(&id).unwrap().data_in
            };
            if Some(written) != first {
                moved += 1;
            }
            let early: Vec<_> = all(&open(&b, FlashOptions::default()))
                .into_iter()
                .filter(|(l, _)| l.get("i").parse::<usize>().unwrap() < 10)
                .collect();
            check_exact(&early, 10, 0, 20_000, 1000);
            // Every series is declared in the segment that holds its data: without the other
            // segments, that one alone reads whole.
            let from = if Some(written) == first { 0 } else { 10_000 };
            let written = segment::segment_name(written);
            for name in b.list().unwrap() {
                if name != written {
                    b.remove(&name).unwrap();
                }
            }
            let (early, late): (Vec<_>, Vec<_>) = all(&open(&b, FlashOptions::default()))
                .into_iter()
                .partition(|(l, _)| l.get("i").parse::<usize>().unwrap() < 10);
            check_exact(&early, 10, from, 20_000, 1000);
            assert_eq!(late.len(), n - 10);
            for (_, v) in &late {
                assert_eq!(v.len(), 10);
            }
        }
    }

    #[test]
    fn an_import_during_the_trim_keeps_the_newer_segment() {
        // The import writes series 0 to a newer segment while the flush that wrote it to the
        // older one is still trimming (or earlier): the series must not point back.
        for at in 1.. {
            let b = Rc::new(MemBackend::new());
            let s = open(&b, FlashOptions::default());
            ingest(&s, 300, 10_000, 20_000, 1000);
            let slices = flush_in_slices(&s, |k| {
                if k == at {
                    s.store.borrow_mut().seal_active(SyncMode::Now);
                    let old = (0..5)
                        .map(|k| Sample {
                            t: k * 1000,
                            v: 1.0,
                        })
                        .collect();
                    Storage::import(&s, vec![(labels(0), old)]).unwrap();
                }
            });
            if at >= slices {
                break;
            }
            let st = s.store.borrow();
            let id = st.find(&labels(0)).unwrap();
            let e = st.series.get(&id).unwrap();
            assert_eq!(Some(e.data_in), st.active, "at slice {at}");
            assert_eq!(Some(e.declared_in), st.active, "at slice {at}");
        }
    }

    #[test]
    fn an_import_that_makes_room_by_deleting_the_active_segment_declares_its_series() {
        // A budget below one segment: the import fits the active segment but not the budget, so
        // making room deletes the active segment, and the import's new series (no data
        // anywhere yet) must still be declared where their blocks go.
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 12 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        let mut t = 0;
        while s.disk_bytes() < 7 << 10 {
            ingest(&s, 10, t, t + 10_000, 1000);
            s.flush().unwrap();
            t += 10_000;
        }
        let first = s.store.borrow().active;
        let noisy = |i: u64| -> Vec<Sample> {
            (0..600)
                .map(|k| Sample {
                    t: k * 1000,
                    v: f64::from_bits(0x3ff0_0000_0000_0000 ^ (k as u64 * 2654435761 * (i + 1))),
                })
                .collect()
        };
        let items: Vec<(Labels, Vec<Sample>)> = (0..3)
            .map(|i| {
                (
                    Labels::from_pairs(&[("__name__", "imported"), ("i", &i.to_string())]),
                    noisy(i),
                )
            })
            .collect();
        Storage::import(&s, items).unwrap();
        assert_ne!(
            s.store.borrow().active,
            first,
            "the active segment was not replaced ({} bytes)",
            s.disk_bytes()
        );
        assert!(b.total_bytes() <= opts.budget_bytes);
        let s = open(&b, opts);
        let got = s
            .querier()
            .select(
                &[Matcher::equal("__name__", "imported")],
                i64::MIN,
                i64::MAX,
            )
            .unwrap();
        assert_eq!(got.len(), 3);
        for (i, x) in got.into_iter().enumerate() {
            let v: Vec<Sample> = x.samples.collect();
            let want = noisy(i as u64);
            assert_eq!(v.len(), want.len());
            assert!(v
                .iter()
                .zip(&want)
                .all(|(a, b)| a.t == b.t && a.v.to_bits() == b.v.to_bits()));
        }
    }

    #[test]
    fn a_flush_of_many_series_writes_several_blocks() {
        let n = 16_384 + 100;
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, n, 0, 3000, 1000);
        flush_in_slices(&s, |_| {});
        let blocks: usize = s
            .store
            .borrow()
            .segments
            .iter()
            .map(|g| g.blocks.len())
            .sum();
        assert_eq!(blocks, 2);
        check_exact(&all(&open(&b, FlashOptions::default())), n, 0, 3000, 1000);
    }

    /// Steps a flush in slices until it is done or fails (a bounded number of steps).
    fn flush_in_slices_to_the_end(s: &FlashStorage) -> Result<bool, StorageError> {
        for _ in 0..100_000 {
            let result = s.flush_step(Duration::ZERO);
            if !matches!(result, Ok(false)) {
                return result;
            }
        }
        Ok(false)
    }

    #[test]
    fn a_flush_in_slices_that_fails_to_write_changes_nothing() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 300, 0, 10_000, 1000);
        b.fail_writes.set(true);
        let result = flush_in_slices_to_the_end(&s);
        assert!(result.is_err());
        assert_eq!(s.stats().samples_in_memory, 300 * 10);
        check_exact(&all(&s), 300, 0, 10_000, 1000);
        b.fail_writes.set(false);
        ingest(&s, 300, 10_000, 12_000, 1000);
        flush_in_slices(&s, |_| {});
        check_exact(
            &all(&open(&b, FlashOptions::default())),
            300,
            0,
            12_000,
            1000,
        );
    }

    #[test]
    fn a_flush_in_one_go_ends_a_flush_in_slices_first() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 300, 0, 10_000, 1000);
        assert!(!s.flush_step(Duration::ZERO).unwrap());
        ingest(&s, 300, 10_000, 11_000, 1000);
        s.flush().unwrap();
        assert_eq!(s.stats().samples_in_memory, 0);
        // Nothing is left for the slices, and nothing was written twice.
        assert!(s.flush_step(Duration::ZERO).unwrap());
        check_exact(
            &all(&open(&b, FlashOptions::default())),
            300,
            0,
            11_000,
            1000,
        );
        assert_eq!(s.counters().flushes, 2);
    }

    #[test]
    fn a_flush_in_slices_syncs_on_the_fsync_thread() {
        let dir = std::env::temp_dir().join(format!("perch-flash-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = || Box::new(FileBackend::new(&dir).unwrap());
        let s = FlashStorage::open(backend(), FlashOptions::default())
            .unwrap()
            .0;
        ingest(&s, 300, 0, 10_000, 1000);
        let mut waits = 0;
        loop {
            match s.flush_step(Duration::from_secs(1)).unwrap() {
                true => break,
                false => {
                    if let Some(w) = s.flush_wait() {
                        waits += 1;
                        // Until the sync is done the heads are whole and each sample is
                        // seen once, from the disk or the heads.
                        assert_eq!(s.stats().samples_in_memory, 300 * 10);
                        check_exact(&all(&s), 300, 0, 10_000, 1000);
                        futures_lite::future::block_on(w);
                    }
                }
            }
        }
        assert_eq!(waits, 1, "the flush waited for its sync once");
        assert!(s.store.borrow().syncer.started());
        assert_eq!(s.stats().samples_in_memory, 0);
        // A flush in one go syncs in place.
        ingest(&s, 300, 10_000, 12_000, 1000);
        s.flush().unwrap();
        drop(s);
        let s = FlashStorage::open(backend(), FlashOptions::default())
            .unwrap()
            .0;
        check_exact(&all(&s), 300, 0, 12_000, 1000);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_sync_keeps_the_heads_and_the_next_flush_writes_them() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 300, 0, 10_000, 1000);
        s.flush().unwrap();
        ingest(&s, 300, 10_000, 20_000, 1000);
        b.fail_syncs.set(true);
        let result = flush_in_slices_to_the_end(&s);
        assert!(result.is_err());
        assert_eq!(s.counters().write_errors, 1);
        assert_eq!(s.stats().samples_in_memory, 300 * 10);
        check_exact(&all(&s), 300, 0, 20_000, 1000);
        b.fail_syncs.set(false);
        ingest(&s, 300, 20_000, 21_000, 1000);
        flush_in_slices(&s, |_| {});
        assert_eq!(s.stats().samples_in_memory, 0);
        check_exact(&all(&s), 300, 0, 21_000, 1000);
        // A power cut loses what the failed sync left unsynced; the rewrite is whole.
        b.power_cut(0);
        check_exact(
            &all(&open(&b, FlashOptions::default())),
            300,
            0,
            21_000,
            1000,
        );
    }

    #[test]
    fn import_writes_older_data() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest(&s, 3, 100_000, 110_000, 1000);
        s.flush().unwrap();
        let old: Vec<Sample> = (0..50)
            .map(|k| Sample {
                t: k * 1000,
                v: k as f64,
            })
            .collect();
        s.import(vec![(labels(0), old.clone())], 19).unwrap();
        let s = open(&b, FlashOptions::default());
        let got = all(&s);
        let s0 = &got.iter().find(|x| x.0.get("i") == "0").unwrap().1;
        assert_eq!(&s0[..50], &old[..]);
        assert_eq!(s0.len(), 60);
    }

    /// Ingests `series` series in flushed 10 s slices from `t` on until the ring has deleted
    /// `segments` segments in all; returns the time after the last slice.
    fn ingest_until_rotated(s: &FlashStorage, series: usize, mut t: i64, segments: u64) -> i64 {
        let from = t;
        while s.counters().segments_deleted < segments {
            assert!(t - from < 10_000_000, "no segment was deleted");
            ingest(s, series, t, t + 10_000, 1000);
            t += 10_000;
            s.flush().unwrap();
        }
        t
    }

    /// Pages an export from `from` to its end, returning the samples per series and the cursor
    /// after the last page.
    fn export_all(
        s: &FlashStorage,
        from: Option<Cursor>,
        limit: usize,
    ) -> (
        std::collections::BTreeMap<Labels, Vec<Sample>>,
        Cursor,
        usize,
    ) {
        export_all_by(s, from, limit, || None)
    }

    /// As [`export_all`], each call with the deadline `deadline()` gives.
    fn export_all_by(
        s: &FlashStorage,
        from: Option<Cursor>,
        limit: usize,
        deadline: impl Fn() -> Option<Instant>,
    ) -> (
        std::collections::BTreeMap<Labels, Vec<Sample>>,
        Cursor,
        usize,
    ) {
        let sets = vec![vec![Matcher::equal("__name__", "m")]];
        let mut out: std::collections::BTreeMap<Labels, Vec<Sample>> = Default::default();
        let mut cursor = from;
        let mut pages = 0;
        loop {
            let page = s
                .export(
                    &sets,
                    CursorRange {
                        from: cursor,
                        until: None,
                    },
                    i64::MIN,
                    i64::MAX,
                    limit,
                    deadline(),
                )
                .unwrap();
            pages += 1;
            for (l, v) in page.series {
                out.entry(l).or_default().extend(v);
            }
            cursor = Some(page.next);
            if !page.more {
                return (out, page.next, pages);
            }
        }
    }

    fn as_got(m: std::collections::BTreeMap<Labels, Vec<Sample>>) -> Vec<(Labels, Vec<Sample>)> {
        m.into_iter().collect()
    }

    #[test]
    fn export_pages_cut_by_the_clock_still_move_on_and_hold_everything() {
        // 600 series, so a record is cut between series too (the clock is read every 256).
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest_flushed(&s, 600, 6);
        let (want, end, _) = export_all(&s, None, 1_000_000);
        let (got, end2, pages) = export_all_by(&s, None, 1_000_000, || Some(Instant::now()));
        assert!(pages > 6, "{pages} pages");
        assert_eq!(end2, end);
        let bits =
            |m: std::collections::BTreeMap<Labels, Vec<Sample>>| -> Vec<(Labels, Vec<(i64, u64)>)> {
                m.into_iter()
                    .map(|(l, v)| (l, v.iter().map(|x| (x.t, x.v.to_bits())).collect()))
                    .collect()
            };
        assert!(bits(got) == bits(want));
    }

    /// Runs an export job of `limit` samples from `from`, each step with a deadline already
    /// past (the most steps it can take), calling `between` after each step: its page and steps.
    fn export_job_by(
        s: &FlashStorage,
        from: Option<Cursor>,
        limit: usize,
        mut between: impl FnMut(usize),
    ) -> Result<(ExportPage, usize), ExportError> {
        let sets = vec![vec![Matcher::equal("__name__", "m")]];
        let range = CursorRange { from, until: None };
        let mut job = s.export_job(&sets, range, i64::MIN, i64::MAX, limit);
        let mut steps = 0;
        loop {
            steps += 1;
            if let Some(page) = job.step(Some(Instant::now()))? {
                return Ok((page, steps));
            }
            between(steps);
        }
    }

    #[test]
    fn an_export_job_in_many_steps_gives_the_page_export_gives() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest_flushed(&s, 600, 6);
        let sets = vec![vec![Matcher::equal("__name__", "m")]];
        // Three pages of 9,000 samples (a record and a half), the records written between
        // steps after them.
        let mut cursor = None;
        for pages in 0..3 {
            let range = CursorRange {
                from: cursor,
                until: None,
            };
            let want = s
                .export(&sets, range, i64::MIN, i64::MAX, 9_000, None)
                .unwrap();
            // Scrapes and flushes between the steps: new records and heads are not its page.
            let mut t = 100_000 + pages * 1_000_000;
            let (got, steps) = export_job_by(&s, cursor, 9_000, |k| {
                if k % 3 == 0 {
                    ingest(&s, 10, t, t + 2_000, 1000);
                    t += 2_000;
                    s.flush().unwrap();
                }
            })
            .unwrap();
            assert!(steps > 2, "{steps} steps");
            let sorted = |p: ExportPage| {
                let mut v: Vec<(Labels, Vec<(i64, u64)>)> = p
                    .series
                    .into_iter()
                    .map(|(l, v)| (l, v.iter().map(|x| (x.t, x.v.to_bits())).collect()))
                    .collect();
                v.sort();
                v
            };
            assert!(want.more);
            assert_eq!((got.next, got.more), (want.next, want.more));
            let want = sorted(want);
            assert_eq!(want.iter().map(|x| x.1.len()).sum::<usize>(), 9_000);
            cursor = Some(got.next);
            assert!(sorted(got) == want, "page {pages}");
        }
    }

    #[test]
    fn an_export_job_leaves_blocks_flushed_meanwhile_to_the_next_page() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        ingest_flushed(&s, 600, 6);
        // A series new since the job began, flushed between its steps: its block is not this
        // page's (the job found its series first), and the next page has it whole.
        let (page, steps) = export_job_by(&s, None, 1_000_000, |k| {
            if k == 1 {
                let mut app = s.appender();
                app.append(&labels(5000), 70_000, 1.0).unwrap();
                app.commit().unwrap();
                s.flush().unwrap();
            }
        })
        .unwrap();
        assert!(steps > 2, "{steps} steps");
        let n: usize = page.series.iter().map(|x| x.1.len()).sum();
        assert_eq!(n, 600 * 60);
        assert!(page.series.iter().all(|x| x.0 != labels(5000)));
        assert!(page.more, "blocks remain after the page");
        let (next, _) = export_job_by(&s, Some(page.next), 1_000_000, |_| {}).unwrap();
        assert_eq!(next.series.len(), 1);
        assert_eq!(next.series[0].0, labels(5000));
        assert!(!next.more);
    }

    #[test]
    fn export_keeps_what_it_read_of_a_series_the_ring_forgets_meanwhile() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 40 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        // Series 7000 has data in the first segment only; series 0 in every one.
        let mut app = s.appender();
        for k in 0..100 {
            app.append(&labels(7000), k * 1000, k as f64).unwrap();
        }
        app.commit().unwrap();
        let mut t = 100_000;
        while s.store.borrow().segments.len() < 2 {
            ingest(&s, 1, t, t + 10_000, 1000);
            s.flush().unwrap();
            t += 10_000;
        }
        let mut st = s.store.borrow_mut();
        let second = st.segments[1].seq;
        let ids = st.export_ids(&[vec![Matcher::equal("__name__", "m")]]);
        let mut per: Vec<ExportSeries> = vec![(None, Vec::new()); ids.len()];
        // A part reads the first segment; then the ring deletes it and forgets series 7000;
        // the page still has what the part read of it.
        let range = CursorRange {
            from: None,
            until: Some(Cursor::at(second, 0)),
        };
        let part = st
            .export_part(&ids, &mut per, range, i64::MIN, i64::MAX, usize::MAX, None)
            .unwrap();
        assert!(part.gathered > 100);
        st.delete_segment(0);
        assert!(st.candidates(&[Matcher::equal("i", "7000")]).is_empty());
        let mut out = Vec::new();
        assert!(export_series(&mut per, 0, &mut out, || false).is_none());
        let kept = out
            .iter()
            .find(|x| x.0 == labels(7000))
            .expect("series 7000");
        assert_eq!(kept.1.len(), 100);
        assert!(out.iter().any(|x| x.0 == labels(0)));
    }

    #[test]
    fn an_export_job_that_the_ring_overtakes_returns_what_it_read() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 40 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        ingest_flushed(&s, 300, 4);
        let first = s.oldest_cursor();
        // Once it has read a part, the ring deletes everything it was to read next.
        let mut t = 40_000;
        let (page, _) = export_job_by(&s, Some(first), 1_000_000, |k| {
            if k == 1 {
                t = ingest_until_rotated(&s, 50, t, 3);
            }
        })
        .unwrap();
        assert!(page.more);
        let read: usize = page.series.iter().map(|x| x.1.len()).sum();
        assert!(read > 0);
        // Each series' samples are whole and exact from the start.
        for (_, v) in &page.series {
            assert!(v.iter().enumerate().all(|(i, x)| x.t == i as i64 * 1000));
        }
        // Asking from where it ended is told the records rotated out.
        match export_job_by(&s, Some(page.next), 1_000_000, |_| {}) {
            Err(ExportError::RotatedOut { from, .. }) => assert_eq!(from, page.next),
            other => panic!("expected RotatedOut, got {:?}", other.map(|p| p.1)),
        }
    }

    #[test]
    fn export_pages_resume_exactly_across_reopen() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 1 << 20,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        ingest_flushed(&s, 10, 6);
        // Unflushed samples are not exported.
        ingest(&s, 10, 60_000, 65_000, 1000);
        // Small pages: several calls, and together exactly the flushed samples.
        let (got, cursor, pages) = export_all(&s, None, 150);
        assert!(pages > 2, "{pages} pages");
        check_exact(&as_got(got), 10, 0, 60_000, 1000);
        // Nothing new: an empty page, the same cursor.
        let (got, again, _) = export_all(&s, Some(cursor), 150);
        assert!(got.is_empty());
        assert_eq!(again, cursor);
        // After a restart the cursor still holds: only what was flushed since.
        s.flush().unwrap();
        drop(s);
        let s = open(&b, opts);
        ingest(&s, 10, 65_000, 80_000, 1000);
        s.flush().unwrap();
        let (got, _, _) = export_all(&s, Some(cursor), 1_000_000);
        check_exact(&as_got(got), 10, 60_000, 80_000, 1000);
        // Stale markers are data like any other sample here.
        let (got, _, _) = export_all(&s, None, 1_000_000);
        let three = got.iter().find(|(l, _)| l.get("i") == "3").unwrap();
        assert!(three.1.iter().any(|x| is_stale(x.v)));
    }

    #[test]
    fn export_says_when_the_ring_rotated_past_the_cursor() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 40 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        ingest(&s, 50, 0, 10_000, 1000);
        s.flush().unwrap();
        let (_, cursor, _) = export_all(&s, None, 1_000_000);
        let t = ingest_until_rotated(&s, 50, 10_000, 3);
        let sets = vec![vec![Matcher::equal("__name__", "m")]];
        match s.export(
            &sets,
            CursorRange {
                from: Some(cursor),
                until: None,
            },
            i64::MIN,
            i64::MAX,
            1000,
            None,
        ) {
            Err(ExportError::RotatedOut { from, oldest }) => {
                assert_eq!(from, cursor);
                // Continuing from `oldest` accepts the gap and serves the rest, exactly.
                let (got, _, _) = export_all(&s, Some(oldest), 1_000_000);
                let got = as_got(got);
                let first = got[0].1[0].t;
                check_exact(&got, 50, first, t, 1000);
            }
            other => panic!("expected RotatedOut, got {other:?}"),
        }
        // A cursor of a segment that is closed and fully read is not a gap, however it rotates.
        let (_, end, _) = export_all(&s, None, 1_000_000);
        ingest(&s, 50, t, t + 10_000, 1000);
        s.flush().unwrap();
        let (got, _, _) = export_all(&s, Some(end), 1_000_000);
        check_exact(&as_got(got), 50, t, t + 10_000, 1000);
    }

    #[test]
    fn checkpoints_ride_with_flushes_and_survive_reopen_and_rotation() {
        let b = Rc::new(MemBackend::new());
        let opts = FlashOptions {
            budget_bytes: 40 << 10,
            ..FlashOptions::default()
        };
        let s = open(&b, opts);
        s.set_checkpoint("push", b"one".to_vec());
        // A flush with no samples still writes a changed checkpoint.
        s.flush().unwrap();
        let written = s.counters().bytes_written;
        assert!(written > 0);
        s.flush().unwrap();
        assert_eq!(
            s.counters().bytes_written,
            written,
            "unchanged: not written again"
        );
        assert_eq!(
            open(&b, opts).checkpoint("push").as_deref(),
            Some(&b"one"[..])
        );
        s.set_checkpoint("push", b"two".to_vec());
        // Long after, with the first segments rotated out, the newest value is still there.
        ingest_until_rotated(&s, 50, 0, 3);
        let s2 = open(&b, opts);
        assert_eq!(s2.checkpoint("push").as_deref(), Some(&b"two"[..]));
        assert_eq!(s2.checkpoint("other"), None);
    }

    #[test]
    fn the_tap_sees_commits_and_the_write_log_tells_flushes_from_imports() {
        struct Count(std::cell::Cell<usize>);
        impl SampleTap for Count {
            fn committed(&self, batch: &[(SeriesRef, Sample)]) {
                self.0.set(self.0.get() + batch.len());
            }
        }
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        let tap = Rc::new(Count(std::cell::Cell::new(0)));
        s.set_tap(Some(tap.clone()));
        ingest(&s, 5, 0, 10_000, 1000);
        assert_eq!(tap.0.get(), 50);
        let r = s.appender().append(&labels(0), 20_000, 1.0).unwrap();
        assert_eq!(s.labels_by_ref(r), Some(labels(0)));
        Storage::import(&s, vec![(labels(9), vec![Sample { t: 5, v: 1.0 }])]).unwrap();
        s.flush().unwrap();
        let w = s.take_writes();
        assert_eq!(w.len(), 2);
        assert!(!w[0].flush && w[1].flush);
        assert!(w[0].until <= w[1].from);
        assert_eq!(w[1].until, s.end_cursor());
        assert!(s.take_writes().is_empty());
        let (bytes, oldest) = s.span_stats(CursorRange {
            from: Some(w[0].from),
            until: Some(w[0].until),
        });
        assert!(bytes > 0);
        assert_eq!(oldest, Some(5));
    }

    #[test]
    fn a_large_record_is_split_between_pages_by_series() {
        let b = Rc::new(MemBackend::new());
        let s = open(&b, FlashOptions::default());
        // One import, one record: 50 series × 100 samples.
        let items: Vec<(Labels, Vec<Sample>)> = (0..50)
            .map(|i| {
                let v = (0..100)
                    .map(|k| Sample {
                        t: k * 1000,
                        v: value(i, k * 1000),
                    })
                    .collect();
                (labels(i), v)
            })
            .collect();
        Storage::import(&s, items).unwrap();
        let (got, end, pages) = export_all(&s, None, 500);
        assert!(pages >= 10, "{pages} pages");
        check_exact(&as_got(got), 50, 0, 100_000, 1000);
        // The cursors say so, and read back.
        assert_eq!(end.series, 0);
        let mid = Cursor {
            series: 7,
            ..Cursor::at(3, 40)
        };
        assert_eq!(mid.to_string(), "3-40-7");
        assert_eq!("3-40-7".parse::<Cursor>(), Ok(mid));
        assert_eq!("3-40".parse::<Cursor>(), Ok(Cursor::at(3, 40)));
        assert!("3-40-7-1".parse::<Cursor>().is_err());
        assert!("3".parse::<Cursor>().is_err());
    }

    #[test]
    fn hash_index_keeps_colliding_ids() {
        let mut h = HashIndex::default();
        h.insert(7, 1);
        h.insert(7, 2);
        h.insert(7, 3);
        h.insert(8, 4);
        assert_eq!(h.ids(7).collect::<Vec<_>>(), vec![1, 2, 3]);
        h.remove(7, 1);
        let mut left: Vec<u64> = h.ids(7).collect();
        left.sort();
        assert_eq!(left, vec![2, 3]);
        h.remove(7, 3);
        h.remove(7, 2);
        assert_eq!(h.ids(7).count(), 0);
        assert!(h.more.is_empty() && h.first.len() == 1);
        h.remove(8, 4);
        assert!(h.first.is_empty());
    }
}
