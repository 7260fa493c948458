//! A fast, non-cryptographic hasher for the hot maps (scrape cache, series lookup).
//!
//! The keys come from scrape bodies and the config, which an attacker on the LAN could shape;
//! the maps they go into are bounded by the config's limits, so worst-case collisions cost time
//! within those bounds, never memory. The mixing is FxHash's (rustc's): a multiply and a rotate
//! per 8 bytes.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style hasher.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(26) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.add(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(a) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // A final avalanche so the low bits that hashbrown uses depend on every input bit.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash>(t: T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(t)
    }

    #[test]
    fn distinguishes_near_keys() {
        assert_ne!(h(b"abc".as_slice()), h(b"abd".as_slice()));
        assert_ne!(h(b"".as_slice()), h(b"\0".as_slice()));
        assert_ne!(h(b"12345678".as_slice()), h(b"123456789".as_slice()));
        let mut m: FastMap<Vec<u8>, u32> = FastMap::default();
        for i in 0..10_000u32 {
            m.insert(format!("metric{{i=\"{i}\"}}").into_bytes(), i);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(b"metric{i=\"77\"}".as_slice()), Some(&77));
    }
}
