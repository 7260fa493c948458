//! The scrape cache of one target: each series as written in its body (a 128-bit keyed
//! fingerprint of `name{labels}`, [`crate::model::hash::fingerprint`]) to its storage reference.
//!
//! Contract: [`ScrapeCache::get_mut`] finds an entry by key, whatever the order of the calls;
//! it is only faster when the calls come in the order the entries were first inserted. A
//! target's body lists its series in the same order scrape after scrape, so the entries are
//! kept in a vector in that order, and a lookup first looks at the entry after the one found
//! last: in the steady state each lookup reads the next 32 bytes of memory, which the CPU
//! prefetches, instead of probing a hash table whose buckets are cold by the next scrape
//! (a probe missing the cache was about 4 % of the agent's CPU with 11 targets at 1 s). An
//! index by key (the fingerprint's first half, 16 bytes a bucket) finds the others: a new
//! series (added after the others, so a series that appears in the middle of a body costs an
//! index lookup for itself and one for the entry after it at every scrape, until it ages out),
//! or a body whose order changed (the lookups after it follow the new order in that scrape).

use crate::model::FastMap;
use crate::storage::SeriesRef;

/// What the cache keeps of a series.
#[derive(Debug, Clone, Copy)]
pub struct CacheEntry {
    /// The stored series, or [`DROPPED`] by `metric_relabel_configs`.
    pub r: SeriesRef,
    /// The scraper's generation (wrapping) when the series was last in a body.
    pub last_seen: u32,
}

/// A cache entry's reference for a series that `metric_relabel_configs` drops (ids are dense
/// from 0, so the largest one is never a series').
pub const DROPPED: SeriesRef = SeriesRef::MAX;

impl CacheEntry {
    pub fn series(&self) -> Option<SeriesRef> {
        (self.r != DROPPED).then_some(self.r)
    }
}

/// An entry with its key: 32 bytes.
struct Slot {
    key: [u64; 2],
    entry: CacheEntry,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

/// See the module doc.
#[derive(Default)]
pub struct ScrapeCache {
    /// In the order they were inserted.
    slots: Vec<Slot>,
    /// A key's first half to its slot. Two keys of one target sharing a first half (odds of
    /// about 2^-64 a pair) only cost the second one its cache entry: it is then looked up as
    /// new at each scrape, which gives the same series (and counts it in
    /// `scrape_series_added` each time).
    index: FastMap<u64, u32>,
    /// Where the next lookup looks first.
    next: usize,
}

impl ScrapeCache {
    /// A body begins: lookups follow the entries from the first.
    pub fn begin(&mut self) {
        self.next = 0;
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot holding `key`: the one after the last found, or the index's.
    fn find(&self, key: &[u64; 2]) -> Option<usize> {
        match self.slots.get(self.next) {
            Some(s) if s.key == *key => Some(self.next),
            _ => self.indexed(key),
        }
    }

    /// The slot holding `key`, by the index.
    fn indexed(&self, key: &[u64; 2]) -> Option<usize> {
        let at = *self.index.get(&key[0])? as usize;
        (self.slots.get(at)?.key == *key).then_some(at)
    }

    /// The entry of `key`; the next lookup looks at the entry after it first.
    pub fn get_mut(&mut self, key: &[u64; 2]) -> Option<&mut CacheEntry> {
        let at = self.find(key)?;
        self.next = at + 1;
        Some(&mut self.slots[at].entry)
    }

    pub fn get(&self, key: &[u64; 2]) -> Option<&CacheEntry> {
        Some(&self.slots[self.indexed(key)?].entry)
    }

    pub fn contains_key(&self, key: &[u64; 2]) -> bool {
        self.get(key).is_some()
    }

    /// Sets the entry of `key`, adding it after the others if it is new.
    pub fn insert(&mut self, key: [u64; 2], entry: CacheEntry) {
        if let Some(e) = self.get_mut(&key) {
            *e = entry;
            return;
        }
        let at = self.slots.len();
        let Ok(pos) = u32::try_from(at) else {
            return;
        };
        if self.index.contains_key(&key[0]) {
            // A first half already taken (see `index`): not cached.
            return;
        }
        self.index.insert(key[0], pos);
        self.slots.push(Slot { key, entry });
        self.next = at + 1;
    }

    /// Keeps the entries for which `keep` holds, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(&CacheEntry) -> bool) {
        let Some(first) = self.slots.iter().position(|s| !keep(&s.entry)) else {
            return;
        };
        let mut kept = first;
        for i in first..self.slots.len() {
            if i > first && keep(&self.slots[i].entry) {
                self.slots.swap(kept, i);
                kept += 1;
            } else {
                self.index.remove(&self.slots[i].key[0]);
            }
        }
        self.slots.truncate(kept);
        // The entries after the first one dropped moved.
        for (i, s) in self.slots.iter().enumerate().skip(first) {
            if let Some(at) = self.index.get_mut(&s.key[0]) {
                *at = i as u32;
            }
        }
        if self.slots.capacity() > 2 * self.slots.len() + 64 {
            self.slots.shrink_to_fit();
            self.index.shrink_to_fit();
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(r: SeriesRef) -> CacheEntry {
        CacheEntry { r, last_seen: 0 }
    }

    fn k(i: u64) -> [u64; 2] {
        [i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i]
    }

    #[test]
    fn finds_every_entry_in_any_order_and_follows_the_body_order() {
        let mut c = ScrapeCache::default();
        c.begin();
        for i in 0..100 {
            assert!(c.get_mut(&k(i)).is_none());
            c.insert(k(i), e(i));
        }
        // In order: each lookup is the slot after the last one.
        c.begin();
        for i in 0..100 {
            assert_eq!(c.next, i as usize);
            assert_eq!(c.get_mut(&k(i)).map(|e| e.r), Some(i));
        }
        // Out of order, and a key never inserted.
        c.begin();
        for i in (0..100).rev().step_by(3) {
            assert_eq!(c.get_mut(&k(i)).map(|e| e.r), Some(i));
        }
        assert!(c.get_mut(&k(1000)).is_none());
        // A second key with the same first half is not cached, and does not hide the first.
        c.insert([k(5)[0], 77], e(500));
        assert_eq!(c.get(&k(5)).map(|e| e.r), Some(5));
        assert!(c.get(&[k(5)[0], 77]).is_none());
        assert_eq!(c.len(), 100);
    }

    #[test]
    fn retain_keeps_order_and_finds_what_it_kept() {
        let mut c = ScrapeCache::default();
        for i in 0..50 {
            c.insert(k(i), e(i));
        }
        c.retain(|e| e.r % 3 != 1);
        let kept: Vec<u64> = (0..50).filter(|i| i % 3 != 1).collect();
        assert_eq!(c.len(), kept.len());
        c.begin();
        for (at, &i) in kept.iter().enumerate() {
            assert_eq!(c.next, at);
            assert_eq!(c.get_mut(&k(i)).map(|e| e.r), Some(i));
        }
        for i in (0..50).filter(|i| i % 3 == 1) {
            assert!(!c.contains_key(&k(i)));
        }
        // Updating an entry keeps its place; a new one goes last.
        c.insert(k(3), e(33));
        c.insert(k(1), e(11));
        assert_eq!(c.get(&k(3)).map(|e| e.r), Some(33));
        c.begin();
        for &i in &kept {
            c.get_mut(&k(i));
        }
        assert_eq!(c.get_mut(&k(1)).map(|e| e.r), Some(11));
        c.retain(|_| false);
        assert_eq!(c.len(), 0);
        assert!(!c.contains_key(&k(0)));
    }
}
