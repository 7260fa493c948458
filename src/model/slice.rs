//! Cooperative slices: long work on the executor thread yields every few milliseconds.
//!
//! Contract: everything runs on one thread, so a task that works for 40 ms makes every scrape
//! whose timer fires meanwhile 40 ms late. Work that grows with its input (a scrape body, an
//! ingested request, a flush) counts its units on a [`Slicer`] and yields to the executor once
//! [`SLICE`] has passed since it last ran; the tasks woken meanwhile run first. Without a slice
//! (tests, `perch import`, shutdown) nothing ever waits, so the same async code also runs to
//! the end inside one `block_on` poll.
//!
//! [`StepSort`] is a sort for such work: it stops when told and goes on where it stopped.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

/// How long a piece of work holds the executor before it yields.
pub const SLICE: Duration = Duration::from_millis(2);

/// Counts units of work and yields when a slice is used up. See the module doc.
pub struct Slicer {
    slice: Option<Duration>,
    /// The clock is read once every `every` units.
    every: u32,
    count: u32,
    since: Instant,
}

impl Slicer {
    /// Slices of `slice` (none: never yield), the clock read every `every` units.
    pub fn new(slice: Option<Duration>, every: u32) -> Slicer {
        Slicer {
            slice,
            every: every.max(1),
            count: 0,
            since: Instant::now(),
        }
    }

    /// A slicer that never yields.
    pub fn none() -> Slicer {
        Slicer::new(None, 1)
    }

    /// Whether this slicer ever yields.
    pub fn is_sliced(&self) -> bool {
        self.slice.is_some()
    }

    /// Counts one unit of work; yields first if the slice is used up.
    pub async fn tick(&mut self) {
        self.tick_by(1).await;
    }

    /// Counts `n` units of work (work whose pieces differ in cost); yields first if the slice
    /// is used up.
    pub async fn tick_by(&mut self, n: usize) {
        if self.slice.is_none() {
            return;
        }
        self.count = self
            .count
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.count >= self.every {
            self.count = 0;
            self.pause().await;
        }
    }

    /// Yields now if the slice is used up (a point between two big steps).
    pub async fn pause(&mut self) {
        if let Some(slice) = self.slice {
            if self.since.elapsed() >= slice {
                futures_lite::future::yield_now().await;
                self.since = Instant::now();
            }
        }
    }

    /// Whether the running slice is used up (never, without a slice).
    pub fn is_up(&self) -> bool {
        self.slice.is_some_and(|s| self.since.elapsed() >= s)
    }

    /// Drops the items of `v` one by one with a tick each: freeing a hundred thousand label
    /// sets is tens of milliseconds.
    pub async fn drop_all<T>(&mut self, v: impl IntoIterator<Item = T>) {
        for x in v {
            drop(x);
            self.tick().await;
        }
    }

    /// Yields unconditionally (a sliced step returned before its work was done) and starts a
    /// new slice; does nothing without a slice.
    pub async fn next_slice(&mut self) {
        if self.slice.is_some() {
            futures_lite::future::yield_now().await;
            self.since = Instant::now();
            self.count = 0;
        }
    }
}

/// Items sorted per run before the runs are merged.
const RUN: usize = 256;
/// Items merged between two looks at the clock.
const MERGE_PER_CHECK: usize = 1024;

/// A merge sort that stops when told and goes on where it stopped: runs of [`RUN`] items are
/// sorted whole, then merged pairwise, pass by pass. Items move (`mem::take`), never clone.
/// Not stable: callers whose keys can tie break the tie themselves.
pub struct StepSort<T> {
    a: Vec<T>,
    b: Vec<T>,
    /// Runs sorted so far, in the first stage.
    runs: usize,
    /// The width of the sorted runs being merged, and the start of the pair being merged.
    width: usize,
    lo: usize,
    /// Positions in the left and right halves of the pair being merged (when `merging`).
    i: usize,
    j: usize,
    merging: bool,
    done: bool,
}

impl<T: Default> StepSort<T> {
    pub fn new(items: Vec<T>) -> StepSort<T> {
        let b = if items.len() > RUN {
            std::iter::repeat_with(T::default)
                .take(items.len())
                .collect()
        } else {
            Vec::new()
        };
        StepSort {
            a: items,
            b,
            runs: 0,
            width: RUN,
            lo: 0,
            i: 0,
            j: 0,
            merging: false,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The sorted items (once done).
    pub fn take(&mut self) -> Vec<T> {
        self.b = Vec::new();
        std::mem::take(&mut self.a)
    }

    /// Sorts by `cmp` until done (true) or `stop` says so (false).
    pub fn run(
        &mut self,
        mut cmp: impl FnMut(&T, &T) -> Ordering,
        mut stop: impl FnMut() -> bool,
    ) -> bool {
        let n = self.a.len();
        while self.runs * RUN < n {
            let s = self.runs * RUN;
            let e = (s + RUN).min(n);
            self.a[s..e].sort_unstable_by(&mut cmp);
            self.runs += 1;
            if stop() {
                return false;
            }
        }
        // Items moved since the last look at the clock, across pairs: a pass of many small
        // pairs is as long as one of a few large ones.
        let mut moved = 0;
        while self.width < n {
            while self.lo < n {
                let mid = (self.lo + self.width).min(n);
                let hi = (self.lo + 2 * self.width).min(n);
                if !self.merging {
                    (self.i, self.j, self.merging) = (self.lo, mid, true);
                }
                let (mut i, mut j) = (self.i, self.j);
                while i < mid || j < hi {
                    let left =
                        j >= hi || (i < mid && cmp(&self.a[i], &self.a[j]) != Ordering::Greater);
                    let k = i + j - mid;
                    if left {
                        self.b[k] = std::mem::take(&mut self.a[i]);
                        i += 1;
                    } else {
                        self.b[k] = std::mem::take(&mut self.a[j]);
                        j += 1;
                    }
                    moved += 1;
                    if moved == MERGE_PER_CHECK {
                        moved = 0;
                        if stop() {
                            (self.i, self.j) = (i, j);
                            return false;
                        }
                    }
                }
                self.merging = false;
                self.lo = hi;
            }
            std::mem::swap(&mut self.a, &mut self.b);
            self.width *= 2;
            self.lo = 0;
        }
        self.done = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn without_a_slice_nothing_waits() {
        let mut s = Slicer::none();
        let done = block_on(poll_once(async {
            for _ in 0..10_000 {
                s.tick().await;
            }
            s.next_slice().await;
        }));
        assert!(done.is_some());
    }

    #[test]
    fn a_used_up_slice_yields_at_the_next_clock_read() {
        let mut s = Slicer::new(Some(Duration::ZERO), 4);
        // Three units: the clock is not read yet.
        let first = block_on(poll_once(async {
            for _ in 0..3 {
                s.tick().await;
            }
        }));
        assert!(first.is_some());
        // The fourth reads it, and the zero slice is up.
        assert!(block_on(poll_once(s.tick())).is_none());
    }

    #[test]
    fn step_sort_looks_at_the_clock_every_bounded_number_of_comparisons() {
        // Many runs: the first merge pass is of many pairs smaller than MERGE_PER_CHECK.
        let mut seed = 11;
        let n = 64 * RUN;
        let ids: Vec<u64> = (0..n).map(|_| lcg(&mut seed)).collect();
        let mut s = StepSort::new(ids);
        let since = std::cell::Cell::new(0usize);
        let mut most = 0;
        s.run(
            |a, b| {
                since.set(since.get() + 1);
                a.cmp(b)
            },
            || {
                most = most.max(since.replace(0));
                false
            },
        );
        most = most.max(since.get());
        // A run is sorted whole (n log n comparisons); a merge moves MERGE_PER_CHECK items.
        let bound = (RUN * 16).max(MERGE_PER_CHECK);
        assert!(
            most <= bound,
            "{most} comparisons without a look at the clock"
        );
        assert!(s.is_done());
    }

    #[test]
    fn step_sort_sorts_whatever_it_is_stopped_at() {
        let mut seed = 7;
        for n in [0, 1, 5, RUN - 1, RUN, RUN + 1, 3 * RUN + 17, 9 * RUN] {
            for stop_every in [1usize, 3, 1000, usize::MAX] {
                let ids: Vec<u64> = (0..n).map(|_| lcg(&mut seed) % 5000).collect();
                let mut want = ids.clone();
                want.sort();
                let mut s = StepSort::new(ids);
                let mut calls = 0;
                let mut polls = 0usize;
                while !s.run(
                    |a, b| a.cmp(b),
                    || {
                        polls += 1;
                        polls % stop_every == 0
                    },
                ) {
                    calls += 1;
                    assert!(calls < 10 * n + 10, "no progress");
                }
                assert!(s.is_done());
                assert_eq!(s.take(), want, "n {n}, stop every {stop_every}");
            }
        }
    }
}
