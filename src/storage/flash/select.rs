//! A select done in slices: the samples of the matching series in a time range.
//!
//! Contract:
//! - [`Select::run`] does a bounded slice of work when given a deadline and goes on where it
//!   stopped on the next call; without one it runs to the end. A select of every series of a
//!   big store decodes millions of samples; the evaluator yields between slices, so scrapes
//!   run meanwhile.
//! - It reads the blocks that overlapped the range when it began, a block at a time and a few
//!   hundred series of a block per look at the clock, then the heads, then sorts the series by
//!   labels. Between slices the store may change:
//!   - A segment the ring deleted meanwhile is skipped: its data is gone for every reader.
//!   - A flush writes blocks and then trims the heads. Blocks written since the select began
//!     are read too, after the heads, for every series (a sample can then be found twice, in
//!     a head and in the new block; series whose parts overlap are sorted and deduplicated, as
//!     imported blocks already are). So no sample that was in the store when the select began
//!     is missed; samples appended since may or may not be seen.
//!   - A series forgotten meanwhile (no data left) is dropped from the answer.
//! - What it returns is what a select in one go returns on an unchanged store: the series with
//!   samples in `[mint, maxt]`, sorted by labels, each with its samples in the range,
//!   ascending.

use super::{block_fetch, io_err, Clock, Store, MAX_RESERVE_SAMPLES};
use crate::model::slice::StepSort;
use crate::model::{Matcher, Sample};
use crate::storage::block::{ascending, keep_within, Block};
use crate::storage::segment::RecordRef;
use crate::storage::{Series, StorageError};
use std::time::Instant;

/// Series of one block decoded between two looks at the clock, at most.
const SERIES_PER_CHECK: usize = 512;
/// Heads decoded between two looks at the clock, at most.
const HEADS_PER_CHECK: usize = 1024;
/// Samples decoded, or moved when a series' vector grows, between two looks at the clock, about
/// (one series' part can exceed it). The vectors of a select over many series grow in step,
/// block after block: without this bound, the block where they all double moved all 512 of a
/// slice's series at once (5k series × 1 h at 1 s: longest slice 3.9 ms, now 2.4).
const SAMPLES_PER_CHECK: usize = 1 << 16;

/// Where the block list ended when it was taken: the newest segment and how many blocks it had.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    blocks: usize,
}

impl Mark {
    fn of(st: &Store) -> Mark {
        st.segments
            .last()
            .map_or(Mark { seq: 0, blocks: 0 }, |s| Mark {
                seq: s.seq,
                blocks: s.blocks.len(),
            })
    }
}

enum Phase {
    /// Reading block `bi` of the list, from series `ki` on.
    Blocks {
        bi: usize,
        ki: usize,
    },
    /// Decoding heads from series `next` on.
    Heads {
        next: usize,
    },
    /// Making the answer's series from `next` on.
    Answer {
        next: usize,
        out: Vec<Series>,
    },
    /// Sorting the answer by labels.
    Sort(StepSort<Series>),
    Done,
}

/// A select under way. See the module doc.
pub(in crate::storage) struct Select {
    mint: i64,
    maxt: i64,
    /// The wanted series (ascending), their samples so far, and whether those still ascend.
    ids: Vec<u64>,
    per: Vec<Vec<Sample>>,
    ordered: Vec<bool>,
    /// How many samples each series had in the first block read: the guess for each block.
    expect: Vec<u32>,
    /// Blocks to read: the segment's number and the record.
    blocks: Vec<(u64, RecordRef)>,
    /// Where the store's blocks ended when `blocks` was last extended.
    mark: Mark,
    /// Whether the blocks written during the select were added (once the heads are read).
    caught_up: bool,
    reserved: bool,
    phase: Phase,
}

impl Select {
    pub(in crate::storage) fn new(
        st: &Store,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Select {
        let ids = st.candidates(matchers);
        let mut select = Select {
            mint,
            maxt,
            per: vec![Vec::new(); ids.len()],
            ordered: vec![true; ids.len()],
            expect: Vec::new(),
            ids,
            blocks: Vec::new(),
            // Before every block: the first listing takes them all.
            mark: Mark { seq: 0, blocks: 0 },
            caught_up: false,
            reserved: false,
            phase: Phase::Blocks { bi: 0, ki: 0 },
        };
        if select.ids.is_empty() {
            select.mark = Mark::of(st);
        } else {
            select.add_blocks_since(st);
        }
        select
    }

    /// Works until done (`Ok(Some(series))`) or past `deadline` (`Ok(None)`: call again);
    /// without a deadline, to the end.
    pub(in crate::storage) fn run(
        &mut self,
        st: &mut Store,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<Series>>, StorageError> {
        let clock = Clock(deadline);
        loop {
            match &mut self.phase {
                Phase::Blocks { bi, ki } => {
                    let (b, k) = (*bi, *ki);
                    if b >= self.blocks.len() {
                        self.phase = if self.caught_up {
                            Phase::Answer {
                                next: 0,
                                out: Vec::new(),
                            }
                        } else {
                            Phase::Heads { next: 0 }
                        };
                        continue;
                    }
                    let next = self.read_block(st, b, k)?;
                    self.phase = match next {
                        Some(k) => Phase::Blocks { bi: b, ki: k },
                        None => Phase::Blocks { bi: b + 1, ki: 0 },
                    };
                }
                Phase::Heads { next } => {
                    let start = *next;
                    let end = slice_end(&self.per, start, HEADS_PER_CHECK, |i| {
                        st.series.get(&self.ids[i]).map_or(0, |s| s.head.len())
                    });
                    self.read_heads(st, start, end);
                    if end < self.ids.len() {
                        self.phase = Phase::Heads { next: end };
                    } else {
                        // Blocks written meanwhile hold samples that may have left the heads
                        // before they were read: read those blocks too, for every series.
                        self.caught_up = true;
                        let from = self.blocks.len();
                        if !self.ids.is_empty() {
                            self.add_blocks_since(st);
                        }
                        self.phase = Phase::Blocks { bi: from, ki: 0 };
                    }
                }
                Phase::Answer { next, out } => {
                    let start = *next;
                    let end = (start + HEADS_PER_CHECK).min(self.ids.len());
                    let mut out = std::mem::take(out);
                    self.answer(st, start, end, &mut out);
                    self.phase = if end < self.ids.len() {
                        Phase::Answer { next: end, out }
                    } else {
                        self.per = Vec::new();
                        Phase::Sort(StepSort::new(out))
                    };
                }
                Phase::Sort(sort) => {
                    if !sort.run(|a, b| a.labels.cmp(&b.labels), || clock.up()) {
                        return Ok(None);
                    }
                    let out = sort.take();
                    self.phase = Phase::Done;
                    return Ok(Some(out));
                }
                Phase::Done => return Ok(Some(Vec::new())),
            }
            if clock.up() {
                return Ok(None);
            }
        }
    }

    /// Reads series `k..` of block `b` (up to [`SERIES_PER_CHECK`] of them): the next series
    /// to read in this block, or None when it is done.
    fn read_block(
        &mut self,
        st: &mut Store,
        b: usize,
        k: usize,
    ) -> Result<Option<usize>, StorageError> {
        let (seq, r) = self.blocks[b];
        let Some((si, block)) = load_listed(st, seq, &r)? else {
            return Ok(None);
        };
        let fetch = block_fetch(&*st.backend, &st.segments[si].name, &r);
        if !self.reserved {
            // Blocks of a live store are alike: guess that each series has as many samples in
            // each block as in the first, and allocate each vector once.
            self.reserved = true;
            let mut counts = vec![0usize; self.ids.len()];
            block
                .sample_counts(&self.ids, &mut counts, &fetch)
                .map_err(io_err)?;
            // Only the blocks wholly inside the range keep all of theirs.
            let inside = self
                .blocks
                .iter()
                .filter(|(_, b)| b.min_t >= self.mint && b.max_t <= self.maxt)
                .count();
            let total: usize = counts.iter().sum();
            if total.saturating_mul(inside) <= MAX_RESERVE_SAMPLES {
                for (v, n) in self.per.iter_mut().zip(&counts) {
                    v.reserve_exact(n * inside);
                }
            }
            self.expect = counts.into_iter().map(|n| n as u32).collect();
        }
        let end = slice_end(&self.per, k, SERIES_PER_CHECK, |i| {
            self.expect.get(i).map_or(0, |&n| n as usize)
        });
        st.counters.corrupt_records += block
            .series_many(
                &self.ids[k..end],
                &mut self.per[k..end],
                &mut self.ordered[k..end],
                self.mint,
                self.maxt,
                &fetch,
            )
            .map_err(io_err)?;
        Ok((end < self.ids.len()).then_some(end))
    }

    /// Appends the head samples in range of series `start..end`.
    fn read_heads(&mut self, st: &Store, start: usize, end: usize) {
        for k in start..end {
            let Some(s) = st.series.get(&self.ids[k]) else {
                continue;
            };
            let v = &mut self.per[k];
            let from = v.len();
            s.head.decode_into(v);
            let ok = ascending(&v[from.saturating_sub(1)..]);
            keep_within(v, from, self.mint, self.maxt, ok);
            self.ordered[k] &= ok;
        }
    }

    /// Lists the blocks in range written since the list was last extended.
    fn add_blocks_since(&mut self, st: &Store) {
        let mark = self.mark;
        self.blocks.extend(
            st.blocks_overlapping(self.mint, self.maxt)
                .map(|(si, k, r)| (st.segments[si].seq, k, r))
                .filter(|&(seq, k, _)| seq > mark.seq || (seq == mark.seq && k >= mark.blocks))
                .map(|(seq, _, r)| (seq, r)),
        );
        self.mark = Mark::of(st);
    }

    /// Adds series `start..end` that have samples to `out`, unsorted: parts that overlap are
    /// ordered by time, first copy kept.
    fn answer(&mut self, st: &Store, start: usize, end: usize, out: &mut Vec<Series>) {
        for k in start..end {
            let Some(s) = st.series.get(&self.ids[k]) else {
                continue;
            };
            let mut v = std::mem::take(&mut self.per[k]);
            if v.is_empty() {
                continue;
            }
            if !self.ordered[k] {
                // Imported blocks may overlap, and a flush during the select adds blocks
                // whose samples were read from a head already.
                v.sort_by_key(|x| x.t);
                v.dedup_by_key(|x| x.t);
            }
            out.push(Series {
                labels: st.symbols.labels(&s.labels),
                samples: v.into_iter(),
            });
        }
    }
}

/// Where the next slice of work on series `start..` ends: after at most `max_series` of them
/// and about [`SAMPLES_PER_CHECK`] samples decoded or moved, with `want(i)` the samples series
/// `i` is expected to get, and a vector without room for them counted as moved whole (a
/// growth). Past `start` while any series is left. Nothing is reserved here: the guess may be
/// far off (an imported first block), and the decoder reserves what each chunk holds.
fn slice_end(
    per: &[Vec<Sample>],
    start: usize,
    max_series: usize,
    want: impl Fn(usize) -> usize,
) -> usize {
    let last = start.saturating_add(max_series).min(per.len());
    let mut work = 0usize;
    let mut end = start;
    while end < last && (end == start || work < SAMPLES_PER_CHECK) {
        let n = want(end);
        let v = &per[end];
        if v.capacity() - v.len() < n {
            work += v.len();
        }
        work += n;
        end += 1;
    }
    end
}

/// The ids (ascending) of the series matching some matchers that have a sample in
/// `[mint, maxt]`, found in slices: the series a select would return, without decoding most
/// samples. First the heads (`HEADS_PER_CHECK` a look at the clock), then the blocks that
/// overlap the range, listed once the heads are done (so a flush meanwhile moves no sample out
/// of sight: a sample that left a head before its turn is in a block on that list). A block
/// wholly inside the range holds a sample in it of every series its directory lists, so it is
/// only walked; one the range cuts decodes the series still not found, `SERIES_PER_CHECK` a
/// look. A segment the ring deleted meanwhile is skipped, as for a select.
pub(in crate::storage) struct IdsIn {
    mint: i64,
    maxt: i64,
    ids: Vec<u64>,
    found: Vec<bool>,
    phase: IdsPhase,
}

enum IdsPhase {
    Heads {
        next: usize,
    },
    /// Block `bi` of `blocks` (whether the range cuts it, its segment's number, the record),
    /// from the `ki`th of the series still not found when it began (`pending`).
    Blocks {
        blocks: Vec<(bool, u64, RecordRef)>,
        bi: usize,
        ki: usize,
        pending: Vec<usize>,
    },
    Done,
}

impl IdsIn {
    pub(in crate::storage) fn new(st: &Store, matchers: &[Matcher], mint: i64, maxt: i64) -> IdsIn {
        let ids = st.candidates(matchers);
        IdsIn {
            mint,
            maxt,
            found: vec![false; ids.len()],
            ids,
            phase: IdsPhase::Heads { next: 0 },
        }
    }

    /// Works until done (`Ok(Some(ids))`) or past `deadline` (`Ok(None)`: call again);
    /// without a deadline, to the end.
    pub(in crate::storage) fn run(
        &mut self,
        st: &mut Store,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u64>>, StorageError> {
        let clock = Clock(deadline);
        loop {
            match &mut self.phase {
                IdsPhase::Heads { next } => {
                    let start = *next;
                    let end = (start + HEADS_PER_CHECK).min(self.ids.len());
                    self.heads(st, start, end);
                    self.phase = if end < self.ids.len() {
                        IdsPhase::Heads { next: end }
                    } else {
                        let mut blocks: Vec<(bool, u64, RecordRef)> = st
                            .blocks_overlapping(self.mint, self.maxt)
                            .map(|(si, _, b)| {
                                let cut = !(b.min_t >= self.mint && b.max_t <= self.maxt);
                                (cut, st.segments[si].seq, b)
                            })
                            .collect();
                        // The blocks wholly inside first: each one settled leaves fewer to decode.
                        blocks.sort_by_key(|(cut, _, _)| *cut);
                        IdsPhase::Blocks {
                            blocks,
                            bi: 0,
                            ki: 0,
                            pending: Vec::new(),
                        }
                    };
                }
                IdsPhase::Blocks {
                    blocks,
                    bi,
                    ki,
                    pending,
                } => {
                    if *ki == 0 {
                        *pending = (0..self.ids.len()).filter(|&k| !self.found[k]).collect();
                    }
                    let Some(&(cut, seq, r)) = blocks.get(*bi).filter(|_| !pending.is_empty())
                    else {
                        self.phase = IdsPhase::Done;
                        let ids = std::mem::take(&mut self.ids);
                        let found = std::mem::take(&mut self.found);
                        return Ok(Some(
                            ids.into_iter()
                                .zip(found)
                                .filter_map(|(id, f)| f.then_some(id))
                                .collect(),
                        ));
                    };
                    let end = if cut {
                        (*ki + SERIES_PER_CHECK).min(pending.len())
                    } else {
                        pending.len()
                    };
                    let part = &pending[*ki..end];
                    read_ids(
                        st,
                        seq,
                        &r,
                        cut,
                        &self.ids,
                        part,
                        &mut self.found,
                        (self.mint, self.maxt),
                    )?;
                    if end < pending.len() {
                        *ki = end;
                    } else {
                        (*bi, *ki) = (*bi + 1, 0);
                    }
                }
                IdsPhase::Done => return Ok(Some(Vec::new())),
            }
            if clock.up() {
                return Ok(None);
            }
        }
    }

    /// Marks the series `start..end` whose head has a sample in range.
    fn heads(&mut self, st: &Store, start: usize, end: usize) {
        let mut scratch = Vec::new();
        for k in start..end {
            let Some(s) = st.series.get(&self.ids[k]) else {
                continue;
            };
            let Some((first, last)) = s.head.first_t().zip(s.head.last()) else {
                continue;
            };
            self.found[k] = if first >= self.mint && last.t <= self.maxt {
                true
            } else if first > self.maxt || last.t < self.mint {
                false
            } else {
                scratch.clear();
                s.head.decode_into(&mut scratch);
                scratch.iter().any(|x| x.t >= self.mint && x.t <= self.maxt)
            };
        }
    }
}

/// Marks which of the series `ids[k]` for `k` in `part` (ascending) block `r` of segment `seq`
/// holds a sample in `range` of: all it lists when the range does not `cut` it, else those
/// whose samples in range decode to any.
#[allow(clippy::too_many_arguments)]
fn read_ids(
    st: &mut Store,
    seq: u64,
    r: &RecordRef,
    cut: bool,
    ids: &[u64],
    part: &[usize],
    found: &mut [bool],
    range: (i64, i64),
) -> Result<(), StorageError> {
    let Some((si, block)) = load_listed(st, seq, r)? else {
        return Ok(());
    };
    if !cut {
        // Both ascending: walk them in step.
        let mut listed = block.ids().peekable();
        for &k in part {
            while listed.next_if(|&b| b < ids[k]).is_some() {}
            if listed.peek() == Some(&ids[k]) {
                found[k] = true;
            }
        }
        return Ok(());
    }
    let want: Vec<u64> = part.iter().map(|&k| ids[k]).collect();
    let mut per = vec![Vec::new(); want.len()];
    let mut ordered = vec![true; want.len()];
    let fetch = block_fetch(&*st.backend, &st.segments[si].name, r);
    st.counters.corrupt_records += block
        .series_many(&want, &mut per, &mut ordered, range.0, range.1, &fetch)
        .map_err(io_err)?;
    for (j, &k) in part.iter().enumerate() {
        found[k] |= !per[j].is_empty();
    }
    Ok(())
}

/// Block `r` of the segment numbered `seq`, listed earlier, with the segment's index now: None
/// if the ring deleted the segment meanwhile (its data is gone for every reader) or the block
/// is damaged (counted).
fn load_listed(
    st: &mut Store,
    seq: u64,
    r: &RecordRef,
) -> Result<Option<(usize, std::rc::Rc<Block>)>, StorageError> {
    let Some(si) = st.segments.iter().position(|s| s.seq == seq) else {
        return Ok(None);
    };
    Ok(st.load_block(si, r)?.map(|b| (si, b)))
}
