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

/// A 128-bit fingerprint of `bytes`, keyed per process: what the scrape cache keeps instead of
/// each series' text (about 40 bytes a series, plus the allocator's share).
///
/// Two lanes, each a multiply-fold per 8 bytes (the 128-bit product of the state and a constant,
/// its halves xor-ed) from its own random start, then the length, then an avalanche. The keys
/// come from std's `RandomState` (random per process), so no input can be prepared to collide;
/// two different series of one target share a fingerprint with a probability of about 2^-128
/// per pair. (Only a target's own series share its cache, so even a collision could mix up only
/// that target's series.)
pub fn fingerprint(bytes: &[u8]) -> [u64; 2] {
    use std::sync::OnceLock;
    static KEYS: OnceLock<[u64; 2]> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        use std::hash::BuildHasher;
        let r = std::collections::hash_map::RandomState::new();
        [r.hash_one(1u64) | 1, r.hash_one(2u64) | 1]
    });
    const M: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0xd6e8_feb8_6659_fd93];
    let fold = |x: u64, m: u64| {
        let p = (x as u128).wrapping_mul(m as u128);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let mut lanes = *keys;
    let mut add = |w: u64| {
        lanes[0] = fold(lanes[0] ^ w, M[0]);
        lanes[1] = fold(lanes[1] ^ w.rotate_left(32), M[1]);
    };
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        add(u64::from_le_bytes(a));
    }
    let rest = chunks.remainder();
    let mut a = [0u8; 8];
    a[..rest.len()].copy_from_slice(rest);
    add(u64::from_le_bytes(a));
    add(bytes.len() as u64);
    lanes.map(|mut x| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    })
}

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

    #[test]
    fn fingerprints_tell_series_apart() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            let text = format!("node_cpu_seconds_total{{cpu=\"{i}\",mode=\"idle\"}}");
            assert!(seen.insert(fingerprint(text.as_bytes())), "{text}");
        }
        // Lengths and trailing zero bytes count; the same text gives the same fingerprint.
        for a in [
            &b""[..],
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"12345678",
            b"12345678\0",
        ] {
            assert!(seen.insert(fingerprint(a)), "{a:?}");
        }
        assert_eq!(fingerprint(b"up"), fingerprint(b"up"));
    }
}
