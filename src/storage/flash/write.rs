//! Writing blocks as a job done in slices: the flush of the heads, and (in one go) an import.
//!
//! Contract:
//! - A [`WriteJob`] does a bounded slice of its work per [`WriteJob::run`] call when given a
//!   deadline, so the executor runs scrapes and queries between slices; without one it runs to
//!   the end. A flush of 100k series is hundreds of milliseconds of work, which must not hold
//!   the executor.
//! - A flush takes from each head only the samples the head held when the job began
//!   (`counts`), and tells the sample tap so (`SampleTap::flush_began`: remote write's
//!   intervals end there); samples appended meanwhile stay in the head for the next flush. It
//!   finds the series with samples by a scan of the series table in slices; a commit to a
//!   series the scan has not reached notes first how many samples its head held (the flush's
//!   number and that count, in the series), so beginning a flush costs nothing per series. Until the
//!   write, queries see the heads whole. After it, the written samples leave the heads a slice
//!   at a time; meanwhile a query finds them both on disk and in a head, and `select` keeps
//!   one copy (it sorts and dedups a series whose parts overlap). So no query misses a sample
//!   or sees one twice.
//! - What is written is what a flush in one go writes: the declarations of the series the
//!   target segment has not seen, the blocks, the checkpoint if due, in one append and one
//!   sync. Other writers (an import, a flush in one go) may change the active segment between
//!   slices: the last slice checks that the declarations were made for the segment written to,
//!   and declares again (a bounded number of times in slices, then in one go) if not.
//! - In slices, the sync runs on the fsync thread (`super::super::syncer`): the job appends,
//!   then waits (`WriteJob::sync_wait`, awaited by the caller) and only then trims. In one go,
//!   it syncs in place.
//! - If the write or its sync fails, the heads are whole and the next flush writes them (in a
//!   new segment). An import whose sync fails notes its series, then reports the error.

use super::{Clock, Store, SyncMode, SERIES_PER_RECORD};
use crate::model::slice::StepSort;
use crate::model::{Labels, Sample};
use crate::storage::block::{self, BlockBuilder};
use crate::storage::codec::HeadChunk;
use crate::storage::segment::{self, RecordKind, RecordRef};
use crate::storage::syncer::SyncTicket;
use crate::storage::{StorageError, WriteSpan};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// What a job writes.
enum Work {
    /// Series ids (ascending) whose heads are flushed, and how many samples of each: found a
    /// slice at a time, by a scan of the series table that has reached slot `scan`, for flush
    /// number `flush`.
    Heads {
        ids: Vec<u64>,
        counts: Vec<u32>,
        scan: usize,
        flush: u32,
    },
    /// Series ids (ascending) with their samples (an import).
    Items(Vec<(u64, Vec<Sample>)>),
}

impl Work {
    /// The series known so far (all of them once [`Work::scanned`]).
    fn len(&self) -> usize {
        match self {
            Work::Heads { ids, .. } => ids.len(),
            Work::Items(v) => v.len(),
        }
    }

    fn id(&self, i: usize) -> u64 {
        match self {
            Work::Heads { ids, .. } => ids[i],
            Work::Items(v) => v[i].0,
        }
    }

    /// Whether every series of the job is known.
    fn scanned(&self, st: &Store) -> bool {
        match self {
            Work::Heads { scan, .. } => *scan >= st.series.slots(),
            Work::Items(_) => true,
        }
    }

    /// Scans up to [`SLOTS_PER_SCAN`] more slots of the series table for heads to flush.
    fn scan(&mut self, st: &Store) {
        let Work::Heads {
            ids,
            counts,
            scan,
            flush,
        } = self
        else {
            return;
        };
        let end = scan.saturating_add(SLOTS_PER_SCAN).min(st.series.slots());
        for (id, s) in st.series.iter_slots(*scan..end) {
            let n = s.flush_count(*flush);
            if n > 0 {
                ids.push(id);
                counts.push(n as u32);
            }
        }
        *scan = end;
    }
}

/// The segment the declarations are made for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// The active segment, with this number: declare the series it has not seen.
    Continue(u64),
    /// A new segment: declare every series.
    New,
}

impl Target {
    /// The segment a write would go to now: the active one, or a new one.
    fn current(st: &Store) -> Target {
        st.active.map_or(Target::New, Target::Continue)
    }
}

/// Series declarations being made for a target: the job's series the target has not seen
/// are picked (`looked` of the job's series so far, into `ids`), sorted by labels, then
/// encoded in records.
struct Declaring {
    target: Target,
    looked: usize,
    ids: Vec<u64>,
    sort: Option<StepSort<u64>>,
    /// Sorted ids, once the sort is done; `encoded` counts those already in records.
    sorted: Vec<u64>,
    encoded: usize,
    /// One context for all the records (none: stored raw), made once the sort is done.
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

enum Phase {
    /// Adding series to blocks; the next one is `next`.
    Blocks {
        next: usize,
    },
    Declare(Box<Declaring>),
    /// Declared for this target; writing.
    Write(Target),
    /// Written without a sync (a flush of the heads in slices); the syncs of `seqs` run on the
    /// fsync thread, its ticket kept here once they are queued. The heads stay whole until
    /// the sync succeeds; a failed sync ends the job as a failed write does.
    Sync {
        /// The segment sealed by this write if any, then the one written to.
        seqs: Vec<u64>,
        ticket: Option<SyncTicket>,
        /// The write's entry for the write log, added once the sync is done.
        span: Option<WriteSpan>,
    },
    /// Written to segment `seq`; noting that in the series and trimming their heads, from
    /// `next` on.
    Trim {
        seq: u64,
        next: usize,
    },
}

/// A flush of the heads or an import, in slices. See the module doc.
pub(in crate::storage) struct WriteJob {
    work: Work,
    level: i32,
    phase: Phase,
    builder: Option<BlockBuilder>,
    /// Block records, framed; refs relative to the start of `blocks`.
    blocks: Vec<u8>,
    block_refs: Vec<RecordRef>,
    /// Declaration records for `target`, framed; refs relative to their start.
    decls: Vec<u8>,
    decl_refs: Vec<RecordRef>,
    /// Times the declarations were made again because the segment changed meanwhile.
    redeclared: u32,
    scratch: Vec<Sample>,
    /// An import's failed sync, reported once its series are noted.
    sync_error: Option<std::io::Error>,
}

/// After this many declarations made again, the next are made in one go: nothing can change
/// the segment between them and the write.
const MAX_REDECLARE_IN_SLICES: u32 = 2;

/// Most series in one block. Ending a block compresses its directory in one piece, the
/// longest step of a flush in slices: at 100k series in one block it took about 10 ms here
/// (`cargo bench --bench storage -- flush`). A live agent of a few thousand series writes one
/// block a flush either way.
const MAX_BLOCK_SERIES: usize = 16_384;

/// Series added to a block between two looks at the clock.
const SERIES_PER_CHECK: usize = 16;
/// Slots of the series table scanned for heads between two looks at the clock. A pass over
/// the whole table when the flush began took 3–4 ms at 100k series here, in one piece (and the
/// allocation of its lists up to 20 ms more, when it met glibc's fast-bin consolidation).
pub(in crate::storage) const SLOTS_PER_SCAN: usize = 2048;
/// Series looked at for declarations between two looks at the clock.
const SERIES_PER_PICK: usize = 4096;
/// Series trimmed between two looks at the clock.
const SERIES_PER_TRIM_CHECK: usize = 256;

impl WriteJob {
    /// A flush of every non-empty head: of the samples each holds now. The series are found
    /// as the job goes (`Work::scan`); a series that gets samples before the scan reaches it
    /// notes how many it had when the flush began (`SeriesEntry::flush_count`). When there is
    /// nothing to flush, a changed checkpoint is written alone (None: at once, when no head
    /// holds a sample).
    pub(in crate::storage) fn heads(st: &mut Store) -> Result<Option<WriteJob>, StorageError> {
        // Samples committed from now on go to the next flush: the tap starts a new interval.
        if let Some(tap) = &st.tap {
            tap.flush_began();
        }
        if st.head_samples == 0 {
            st.write_checkpoint_if_dirty()?;
            return Ok(None);
        }
        st.flush_number = st.flush_number.wrapping_add(1);
        Ok(Some(WriteJob::new(
            Work::Heads {
                ids: Vec::new(),
                counts: Vec::new(),
                scan: 0,
                flush: st.flush_number,
            },
            st.opts.level,
        )))
    }

    /// An import of `items` (ids ascending, samples ascending), compressed at zstd `level`.
    pub(in crate::storage) fn items(items: Vec<(u64, Vec<Sample>)>, level: i32) -> WriteJob {
        WriteJob::new(Work::Items(items), level)
    }

    fn new(work: Work, level: i32) -> WriteJob {
        WriteJob {
            work,
            level,
            phase: Phase::Blocks { next: 0 },
            builder: None,
            blocks: Vec::new(),
            block_refs: Vec::new(),
            decls: Vec::new(),
            decl_refs: Vec::new(),
            redeclared: 0,
            scratch: Vec::new(),
            sync_error: None,
        }
    }

    /// What the job waits for, if it waits for its sync on the fsync thread: the caller
    /// awaits this before the next slice (calling again at once would find it unfinished).
    pub(in crate::storage) fn sync_wait(&self) -> Option<Pin<Box<dyn Future<Output = ()>>>> {
        match &self.phase {
            Phase::Sync {
                ticket: Some(t), ..
            } => Some(t.wait_future()),
            _ => None,
        }
    }

    /// Whether the records are written (the job is syncing them, or noting that in the
    /// series now).
    pub(in crate::storage) fn is_written(&self) -> bool {
        matches!(self.phase, Phase::Trim { .. } | Phase::Sync { .. })
    }

    /// Works until done (`Ok(true)`) or past `deadline` (`Ok(false)`: call again later).
    /// Without a deadline, runs to the end. An error ends the job with nothing changed.
    pub(in crate::storage) fn run(
        &mut self,
        st: &mut Store,
        deadline: Option<Instant>,
    ) -> Result<bool, StorageError> {
        let clock = Clock(deadline);
        loop {
            match &mut self.phase {
                Phase::Blocks { next } => {
                    let start = *next;
                    let done = self.add_blocks(st, start, &clock);
                    match done {
                        Ok(())
                            if matches!(self.work, Work::Heads { .. }) && self.work.len() == 0 =>
                        {
                            // Nothing to flush.
                            st.write_checkpoint_if_dirty()?;
                            return Ok(true);
                        }
                        Ok(()) => {
                            self.end_block();
                            self.phase =
                                Phase::Declare(Box::new(self.declaring(Target::current(st))));
                        }
                        Err(next) => {
                            self.phase = Phase::Blocks { next };
                            return Ok(false);
                        }
                    }
                }
                Phase::Declare(_) => {
                    let Phase::Declare(mut d) =
                        std::mem::replace(&mut self.phase, Phase::Write(Target::New))
                    else {
                        unreachable!()
                    };
                    // Once declarations were made again, they are made in one go, and the
                    // write follows at once: nothing can change the segment in between.
                    let in_one_go = self.redeclared >= MAX_REDECLARE_IN_SLICES;
                    let clock = if in_one_go { &Clock(None) } else { &clock };
                    if !self.declare(st, &mut d, clock) {
                        self.phase = Phase::Declare(d);
                        return Ok(false);
                    }
                    self.phase = Phase::Write(d.target);
                    if in_one_go {
                        continue;
                    }
                }
                Phase::Write(target) => {
                    let target = *target;
                    // A job in slices leaves its sync to the fsync thread; in one go, the
                    // write syncs in place.
                    let sync = if deadline.is_some() {
                        SyncMode::Later
                    } else {
                        SyncMode::Now
                    };
                    if let Some(target) = self.write(st, target, sync)? {
                        self.redeclared += 1;
                        self.phase = Phase::Declare(Box::new(self.declaring(target)));
                        continue;
                    }
                }
                Phase::Sync { seqs, ticket, span } => {
                    let seq = seqs.last().copied().unwrap_or_default();
                    let result = match ticket {
                        None => match st.sync_later(seqs) {
                            Ok(Some(t)) if deadline.is_some() => {
                                // The caller awaits `sync_wait` before the next slice.
                                *ticket = Some(t);
                                return Ok(false);
                            }
                            Ok(Some(t)) => t.wait(),
                            Ok(None) => Ok(Duration::ZERO),
                            Err(e) => Err(e),
                        },
                        Some(t) => match t.try_take() {
                            Some(r) => r,
                            None if deadline.is_some() => return Ok(false),
                            None => t.wait(),
                        },
                    };
                    match result {
                        Ok(took) => {
                            st.counters.note_sync(took);
                            st.writes.extend(span.take());
                            self.phase = Phase::Trim { seq, next: 0 };
                        }
                        Err(e) => {
                            log::error!("syncing segment {seq:016x}: {e}");
                            st.sync_failed(seq);
                            if matches!(self.work, Work::Heads { .. }) {
                                return Err(StorageError::Io(e));
                            }
                            st.writes.extend(span.take());
                            // An import's samples are nowhere else: it notes its series as
                            // written (the store stays whole) and then fails, so the client
                            // sends them again (a sample stored twice is read once).
                            self.sync_error = Some(e);
                            self.phase = Phase::Trim { seq, next: 0 };
                        }
                    }
                }
                Phase::Trim { seq, next } => {
                    let (seq, start) = (*seq, *next);
                    match self.trim(st, seq, start, &clock) {
                        Ok(()) => match self.sync_error.take() {
                            Some(e) => return Err(StorageError::Io(e)),
                            None => return Ok(true),
                        },
                        Err(next) => {
                            self.phase = Phase::Trim { seq, next };
                            return Ok(false);
                        }
                    }
                }
            }
            if clock.up() {
                return Ok(false);
            }
        }
    }

    /// Adds series from `next` on to blocks, and seals them a frame at a time; Err(where to
    /// go on) when the clock is up first.
    fn add_blocks(&mut self, st: &Store, mut next: usize, clock: &Clock) -> Result<(), usize> {
        let max_record = (st.opts.segment_bytes() / 2) as usize;
        let level = self.level;
        let start = next;
        loop {
            // A block being sealed (full, or the last) is sealed first.
            if let Some(bb) = self.builder.as_mut().filter(|b| b.is_sealing()) {
                while !bb.seal_frame() {
                    if clock.up() {
                        return Err(next);
                    }
                }
                self.end_block();
            }
            if next >= self.work.len() && !self.work.scanned(st) {
                self.work.scan(st);
                if clock.up() {
                    return Err(next);
                }
                continue;
            }
            if next >= self.work.len() {
                match self.builder.as_mut() {
                    Some(bb) if !bb.is_empty() => {
                        bb.seal_frame();
                        continue;
                    }
                    _ => return Ok(()),
                }
            }
            if clock.up_after(next - start, SERIES_PER_CHECK) {
                return Err(next);
            }
            let id = self.work.id(next);
            let samples: &[Sample] = match &self.work {
                Work::Items(v) => &v[next].1,
                Work::Heads { counts, .. } => {
                    self.scratch.clear();
                    // A series in a flush has a head, so it cannot have been forgotten.
                    if let Some(s) = st.series.get(&id) {
                        s.head.decode_into(&mut self.scratch);
                    }
                    self.scratch.truncate(counts[next] as usize);
                    &self.scratch
                }
            };
            next += 1;
            if samples.is_empty() {
                continue;
            }
            let bb = self.builder.get_or_insert_with(|| BlockBuilder::new(level));
            bb.add(id, samples);
            // Raw chunk bytes bound the compressed size from above. A block's directory is
            // compressed in one piece when the block ends, so its series are bounded too.
            if bb.raw_len() >= max_record || bb.series() >= MAX_BLOCK_SERIES {
                bb.seal_frame();
            }
        }
    }

    /// Frames the block being built, if any, as a record.
    fn end_block(&mut self) {
        let Some(bb) = self.builder.take().filter(|b| !b.is_empty()) else {
            return;
        };
        let (min_t, max_t) = (bb.min_t, bb.max_t);
        self.block_refs.push(segment::encode_record_with(
            &mut self.blocks,
            RecordKind::Block,
            min_t,
            max_t,
            |out| bb.finish_into(out),
        ));
    }

    /// Starts declarations for `target`: the job's series it has not seen.
    fn declaring(&mut self, target: Target) -> Declaring {
        self.decls.clear();
        self.decl_refs.clear();
        Declaring {
            target,
            looked: 0,
            ids: Vec::new(),
            sort: None,
            sorted: Vec::new(),
            encoded: 0,
            compressor: None,
        }
    }

    /// Sorts and encodes declarations until done (true) or the clock is up (false).
    ///
    /// They are declared in label order: the same metric of different targets (labels that
    /// differ only in `instance`) then sit within the compressor's window of each other. They
    /// are written straight from the symbols, in records of a few hundred series.
    fn declare(&mut self, st: &Store, d: &mut Declaring, clock: &Clock) -> bool {
        while d.looked < self.work.len() {
            let end = d
                .looked
                .saturating_add(SERIES_PER_PICK)
                .min(self.work.len());
            for i in d.looked..end {
                let id = self.work.id(i);
                let unseen = st.series.get(&id).is_some_and(|s| match d.target {
                    Target::Continue(seq) => s.declared_in != seq,
                    Target::New => true,
                });
                if unseen {
                    d.ids.push(id);
                }
            }
            d.looked = end;
            if d.looked < self.work.len() && clock.up() {
                return false;
            }
        }
        let labels_of = |id: u64| -> &[u32] { st.series.get(&id).map_or(&[], |s| &s.labels) };
        let texts = |id| labels_of(id).iter().map(|&sym| st.symbols.get(sym));
        let sort = d
            .sort
            .get_or_insert_with(|| StepSort::new(std::mem::take(&mut d.ids)));
        if !sort.is_done() {
            if !sort.run(|a, b| texts(*a).cmp(texts(*b)), || clock.up()) {
                return false;
            }
            d.sorted = sort.take();
            if !d.sorted.is_empty() {
                d.compressor = block::compressor(self.level);
            }
        }
        while d.encoded < d.sorted.len() {
            let end = (d.encoded + SERIES_PER_RECORD).min(d.sorted.len());
            // (A series gone meanwhile has nothing to declare; a job's series cannot go, as
            // their heads or their import hold them, but a record never names one without
            // labels.)
            let group: Vec<(u64, &[u32])> = d.sorted[d.encoded..end]
                .iter()
                .filter_map(|&id| st.series.get(&id).map(|s| (id, &*s.labels)))
                .collect();
            d.encoded = end;
            if group.is_empty() {
                continue;
            }
            let mut w = block::SeriesWriter::new(group.len());
            for (id, syms) in group {
                w.series(id, syms.len() / 2);
                for sym in syms {
                    w.text(st.symbols.get(*sym));
                }
            }
            let payload = block::seal_using(d.compressor.as_mut(), &w.finish());
            self.decl_refs.push(segment::encode_record(
                &mut self.decls,
                RecordKind::Series,
                0,
                0,
                &payload,
            ));
            if d.encoded < d.sorted.len() && clock.up() {
                return false;
            }
        }
        d.sorted = Vec::new();
        true
    }

    /// Writes the records if the declarations fit the segment written to: Ok(None) when
    /// written (the trim follows), Ok(Some(target)) when they must be made again for `target`
    /// first.
    fn write(
        &mut self,
        st: &mut Store,
        target: Target,
        sync: SyncMode,
    ) -> Result<Option<Target>, StorageError> {
        let seg_bytes = st.opts.segment_bytes();
        let new_segment = target == Target::New;
        // The named states ride along when changed, and once in every segment (so the newest
        // value survives the ring deleting older segments).
        let mut checkpoint = Vec::new();
        let mut checkpoint_ref = None;
        if st.checkpoint_dirty || (new_segment && !st.checkpoints.is_empty()) {
            checkpoint_ref = Some(st.checkpoint_record(&mut checkpoint));
        }
        let records = (self.decls.len() + self.blocks.len() + checkpoint.len()) as u64;
        if let Target::Continue(seq) = target {
            if st.active != Some(seq) {
                // Another writer ended the segment meanwhile.
                return Ok(Some(Target::current(st)));
            }
            let active_bytes = st.segment(seq).map_or(0, |s| s.bytes);
            if active_bytes + records > seg_bytes {
                return Ok(Some(Target::New));
            }
        }
        let need = records
            + if new_segment {
                segment::SEGMENT_HEADER_LEN as u64
            } else {
                0
            };
        let sealed = if new_segment {
            st.seal_active(sync)
        } else {
            None
        };
        st.make_room(need)?;
        // make_room may have deleted the active segment itself.
        if !new_segment && st.active.is_none() {
            return Ok(Some(Target::New));
        }
        let mut refs = std::mem::take(&mut self.decl_refs);
        let at = self.decls.len() as u64;
        refs.extend(self.block_refs.iter().map(|r| RecordRef {
            offset: r.offset + at,
            ..*r
        }));
        let at = at + self.blocks.len() as u64;
        refs.extend(checkpoint_ref.map(|r| RecordRef {
            offset: r.offset + at,
            ..r
        }));
        let now = st.max_time.unwrap_or(0);
        let heads = matches!(self.work, Work::Heads { .. });
        let span = st.write_records(
            &[&self.decls, &self.blocks, &checkpoint],
            refs,
            new_segment,
            now,
            heads,
            sync,
        )?;
        let Some(seq) = st.active else {
            return Err(StorageError::Closed);
        };
        // The records are written: their buffers go now, not with the job.
        self.blocks = Vec::new();
        self.decls = Vec::new();
        self.phase = match sync {
            SyncMode::Now => Phase::Trim { seq, next: 0 },
            SyncMode::Later => Phase::Sync {
                seqs: sealed.into_iter().chain([seq]).collect(),
                ticket: None,
                span,
            },
        };
        Ok(None)
    }

    /// Notes that each series is declared and has data in segment `seq`, and drops the
    /// written samples from the heads, from `next` on; Err(where to go on) when the clock is
    /// up first.
    ///
    /// Every series of the job is declared in `seq` now: those that were not, by this
    /// write. Until a head is trimmed, its written samples are both in the head and on disk;
    /// `select` drops the second copy (it sorts and dedups series whose parts overlap).
    fn trim(
        &mut self,
        st: &mut Store,
        seq: u64,
        mut next: usize,
        clock: &Clock,
    ) -> Result<(), usize> {
        let start = next;
        while next < self.work.len() {
            if clock.up_after(next - start, SERIES_PER_TRIM_CHECK) {
                return Err(next);
            }
            let id = self.work.id(next);
            if let Some(s) = st.series.get_mut(&id) {
                // An import may have written the series to a newer segment meanwhile.
                s.declared_in = s.declared_in.max(seq);
                s.data_in = s.data_in.max(seq);
                if let Work::Items(v) = &mut self.work {
                    // Written: freed a slice at a time, not all at once with the job.
                    v[next].1 = Vec::new();
                }
                if let Work::Heads { counts, .. } = &self.work {
                    let n = counts[next];
                    let before = s.head.heap_bytes();
                    drop_first(&mut s.head, n as usize, &mut self.scratch);
                    let after = s.head.heap_bytes();
                    st.head_bytes = (st.head_bytes + after).saturating_sub(before);
                    st.head_samples = st.head_samples.saturating_sub(u64::from(n));
                }
            }
            next += 1;
        }
        if let Work::Heads { .. } = self.work {
            st.counters.flushes += 1;
        }
        Ok(())
    }
}

/// Series resolved (found or created) between two looks at the clock.
const SERIES_PER_RESOLVE_CHECK: usize = 64;

/// An import of whole series, in slices: the series are found or created, sorted by id, written
/// as a [`WriteJob`], and finally their newest samples become the order check's `last`.
///
/// The series it touches carry its batch number (`SeriesEntry::batch`, registered in
/// `Store::open_batches` by the caller) while it runs, so housekeeping between slices does
/// not forget them. Nothing is written, and no series' `last` changes, until the write.
pub(in crate::storage) struct Import {
    gen: u64,
    level: i32,
    stage: ImportStage,
    samples: usize,
    /// Series this import created (forgotten again if it ends without writing).
    pub(in crate::storage) created: Vec<u64>,
    /// Each series' newest sample, for its `last` once written.
    lasts: Vec<(u64, Sample)>,
}

enum ImportStage {
    Resolve {
        items: std::vec::IntoIter<(Labels, Vec<Sample>)>,
        by_id: Vec<(u64, Vec<Sample>)>,
    },
    Sort(StepSort<(u64, Vec<Sample>)>),
    Write(Box<WriteJob>),
    Finish {
        next: usize,
    },
    Done,
}

impl Import {
    /// An import of `items` (samples ascending by time) as batch `gen`, blocks at `level`.
    pub(in crate::storage) fn new(
        items: Vec<(Labels, Vec<Sample>)>,
        gen: u64,
        level: i32,
    ) -> Import {
        let by_id = Vec::with_capacity(items.len());
        Import {
            gen,
            level,
            stage: ImportStage::Resolve {
                items: items.into_iter(),
                by_id,
            },
            samples: 0,
            created: Vec::new(),
            lasts: Vec::new(),
        }
    }

    /// Whether the import has written its blocks (or had nothing to write).
    pub(in crate::storage) fn is_written(&self) -> bool {
        match &self.stage {
            ImportStage::Finish { .. } | ImportStage::Done => true,
            // Written, and trimming: the records are on disk.
            ImportStage::Write(job) => job.is_written(),
            _ => false,
        }
    }

    /// What the import waits for before its next slice, if it waits for its sync.
    pub(in crate::storage) fn sync_wait(&self) -> Option<Pin<Box<dyn Future<Output = ()>>>> {
        match &self.stage {
            ImportStage::Write(job) => job.sync_wait(),
            _ => None,
        }
    }

    /// Works until done (`Ok(Some(samples written))`) or past `deadline` (`Ok(None)`); without
    /// a deadline, to the end. An error ends the import with nothing written.
    pub(in crate::storage) fn run(
        &mut self,
        st: &mut Store,
        deadline: Option<Instant>,
    ) -> Result<Option<usize>, StorageError> {
        let clock = Clock(deadline);
        loop {
            match &mut self.stage {
                ImportStage::Resolve { items, by_id } => {
                    let mut done = 0;
                    loop {
                        if clock.up_after(done, SERIES_PER_RESOLVE_CHECK) {
                            return Ok(None);
                        }
                        let Some((labels, samples)) = items.next() else {
                            break;
                        };
                        done += 1;
                        let Some(&last) = samples.last() else {
                            continue;
                        };
                        let (id, created) = st
                            .get_or_create(&labels)
                            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
                        if created {
                            self.created.push(id);
                        }
                        if let Some(s) = st.series.get_mut(&id) {
                            // (Batch numbers only go up on a series: see `FlashAppender::push`.)
                            s.batch = s.batch.max(self.gen);
                        }
                        st.max_time = Some(st.max_time.map_or(last.t, |m| m.max(last.t)));
                        self.samples += samples.len();
                        self.lasts.push((id, last));
                        by_id.push((id, samples));
                    }
                    let by_id = std::mem::take(by_id);
                    self.stage = if by_id.is_empty() {
                        ImportStage::Done
                    } else if by_id.windows(2).all(|w| w[0].0 < w[1].0) {
                        ImportStage::Write(Box::new(WriteJob::items(by_id, self.level)))
                    } else {
                        ImportStage::Sort(StepSort::new(by_id))
                    };
                }
                ImportStage::Sort(sort) => {
                    if !sort.run(|a, b| a.0.cmp(&b.0), || clock.up()) {
                        return Ok(None);
                    }
                    let by_id = sort.take();
                    self.stage = ImportStage::Write(Box::new(WriteJob::items(by_id, self.level)));
                }
                ImportStage::Write(job) => {
                    if !job.run(st, deadline)? {
                        return Ok(None);
                    }
                    self.stage = ImportStage::Finish { next: 0 };
                }
                ImportStage::Finish { next } => {
                    let start = *next;
                    while *next < self.lasts.len() {
                        if clock.up_after(*next - start, SERIES_PER_TRIM_CHECK) {
                            return Ok(None);
                        }
                        let (id, last) = self.lasts[*next];
                        *next += 1;
                        if let Some(s) = st.series.get_mut(&id) {
                            if s.last.is_none_or(|l| l.t < last.t) {
                                s.last = Some(last);
                            }
                        }
                    }
                    st.appended_total += self.samples as u64;
                    self.stage = ImportStage::Done;
                }
                ImportStage::Done => return Ok(Some(self.samples)),
            }
            if clock.up() {
                return Ok(None);
            }
        }
    }
}

/// Forgets the oldest `n` samples of a head (those a flush wrote); samples appended since stay.
fn drop_first(head: &mut HeadChunk, n: usize, scratch: &mut Vec<Sample>) {
    if n >= head.len() {
        head.clear();
        return;
    }
    scratch.clear();
    head.decode_into(scratch);
    head.clear();
    for s in &scratch[n..] {
        head.push(s.t, s.v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_first_keeps_the_newer_samples() {
        let mut h = HeadChunk::default();
        for t in 0..10 {
            h.push(t * 1000, t as f64 * 0.5);
        }
        let mut scratch = Vec::new();
        drop_first(&mut h, 7, &mut scratch);
        let mut got = Vec::new();
        h.decode_into(&mut got);
        let want: Vec<(i64, f64)> = (7..10).map(|t| (t * 1000, t as f64 * 0.5)).collect();
        let got: Vec<(i64, f64)> = got.iter().map(|s| (s.t, s.v)).collect();
        assert_eq!(got, want);
        drop_first(&mut h, 3, &mut scratch);
        assert!(h.is_empty());
    }
}
