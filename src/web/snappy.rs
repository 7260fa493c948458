//! A decoder of raw snappy blocks (remote write's body) that works in steps.
//!
//! Contract: [`Inflate::step`] decodes about as many output bytes as asked and returns, so the
//! ingest endpoint can yield to the executor between steps. The `snap` crate decodes a raw
//! block only whole: 74 ms for the 64 MiB a request may hold, measured on this machine, with
//! every scrape waiting. The format is small (a varint length, then literals and back
//! references), so this decoder is written here; the `snap` crate still encodes (remote write's
//! sender, remote read) and checks this decoder in the tests. Every length and offset is
//! checked against the input, the output and the declared length: corrupt input is an
//! [`InflateError`], never a panic, and the output never grows past the declared length, which
//! the caller bounds before anything is allocated.

use std::fmt;

/// Why a block does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflateError(&'static str);

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snappy: {}", self.0)
    }
}

/// The declared (decompressed) length of a raw block.
pub fn decompressed_len(src: &[u8]) -> Result<usize, InflateError> {
    read_varint(src).map(|(n, _)| n)
}

/// How many bytes the varint of `n` takes (the length header of a block of `n` bytes).
pub fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut n = n >> 7;
    while n > 0 {
        len += 1;
        n >>= 7;
    }
    len
}

/// The varint at the start of `src` (at most 32 bits, as snappy's length), and its size.
fn read_varint(src: &[u8]) -> Result<(usize, usize), InflateError> {
    let mut n: u64 = 0;
    for (i, &b) in src.iter().enumerate().take(5) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(n)
                .map(|n| (n as usize, i + 1))
                .map_err(|_| InflateError("length out of range"));
        }
    }
    Err(InflateError("bad length header"))
}

/// A raw block being decoded.
pub struct Inflate<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    len: usize,
}

impl<'a> Inflate<'a> {
    /// Starts decoding `src`; its declared length must be checked by the caller first
    /// ([`decompressed_len`]): the output is allocated at that size.
    pub fn new(src: &'a [u8]) -> Result<Inflate<'a>, InflateError> {
        let (len, at) = read_varint(src)?;
        Ok(Inflate {
            src,
            pos: at,
            out: Vec::with_capacity(len),
            len,
        })
    }

    /// Decodes until at least `budget` more bytes are out or the block ends: Ok(true) when it
    /// ended, whole.
    pub fn step(&mut self, budget: usize) -> Result<bool, InflateError> {
        let stop = self.out.len().saturating_add(budget);
        while self.out.len() < stop {
            let Some(&tag) = self.src.get(self.pos) else {
                return if self.out.len() == self.len {
                    Ok(true)
                } else {
                    Err(InflateError("block ends before its declared length"))
                };
            };
            self.pos += 1;
            match tag & 3 {
                0 => self.literal(tag)?,
                kind => self.copy(tag, kind)?,
            }
        }
        Ok(self.pos == self.src.len() && self.out.len() == self.len)
    }

    /// The decoded block (once [`Inflate::step`] said it ended).
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// The `n` bytes after the tag, little-endian.
    fn operand(&mut self, n: usize) -> Result<usize, InflateError> {
        let bytes = self
            .src
            .get(self.pos..self.pos + n)
            .ok_or(InflateError("element cut short"))?;
        self.pos += n;
        Ok(bytes
            .iter()
            .rev()
            .fold(0usize, |v, &b| (v << 8) | usize::from(b)))
    }

    fn literal(&mut self, tag: u8) -> Result<(), InflateError> {
        let short = usize::from(tag >> 2);
        let len = if short < 60 {
            short + 1
        } else {
            self.operand(short - 59)?
                .checked_add(1)
                .ok_or(InflateError("literal length out of range"))?
        };
        let bytes = self
            .src
            .get(self.pos..)
            .and_then(|rest| rest.get(..len))
            .ok_or(InflateError("literal runs past the input"))?;
        if self.out.len() + len > self.len {
            return Err(InflateError("output longer than declared"));
        }
        self.out.extend_from_slice(bytes);
        self.pos += len;
        Ok(())
    }

    fn copy(&mut self, tag: u8, kind: u8) -> Result<(), InflateError> {
        let (len, offset) = match kind {
            1 => {
                let len = 4 + usize::from((tag >> 2) & 7);
                (len, (usize::from(tag >> 5) << 8) | self.operand(1)?)
            }
            2 => (1 + usize::from(tag >> 2), self.operand(2)?),
            _ => (1 + usize::from(tag >> 2), self.operand(4)?),
        };
        if offset == 0 || offset > self.out.len() {
            return Err(InflateError("copy from before the start"));
        }
        if self.out.len() + len > self.len {
            return Err(InflateError("output longer than declared"));
        }
        // An offset shorter than the length repeats the last `offset` bytes: copy in pieces of
        // at most `offset`, each reading bytes already out.
        let mut from = self.out.len() - offset;
        let mut left = len;
        while left > 0 {
            let n = left.min(offset);
            self.out.extend_from_within(from..from + n);
            from += n;
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn inflate(src: &[u8], budget: usize) -> Result<Vec<u8>, InflateError> {
        let mut d = Inflate::new(src)?;
        let mut steps = 0;
        while !d.step(budget)? {
            steps += 1;
            assert!(steps <= src.len() * 64 + 10, "no progress");
        }
        Ok(d.finish())
    }

    /// Text with repeats near and far, runs, and random bytes: every element kind.
    fn sample(seed: &mut u64, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            match lcg(seed) % 4 {
                0 => v.extend_from_slice(b"node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} "),
                1 => v.extend(std::iter::repeat_n(b'a', (lcg(seed) % 300) as usize)),
                2 => v.extend((0..lcg(seed) % 100).map(|_| lcg(seed) as u8)),
                _ if v.len() > 70_000 => {
                    let at = (lcg(seed) as usize) % (v.len() - 70_000);
                    v.extend_from_within(at..at + 200);
                }
                _ => v.extend_from_slice(&lcg(seed).to_le_bytes()),
            }
        }
        v.truncate(len);
        v
    }

    #[test]
    fn decodes_what_snap_encodes_whatever_the_step() {
        let mut seed = 11;
        for len in [0, 1, 59, 60, 61, 256, 70_000, 300_000] {
            let data = sample(&mut seed, len);
            let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
            assert_eq!(decompressed_len(&block).unwrap(), len);
            for budget in [1, 7, 4096, usize::MAX] {
                assert_eq!(
                    inflate(&block, budget).unwrap(),
                    data,
                    "len {len}, step {budget}"
                );
            }
        }
    }

    #[test]
    fn corrupt_blocks_are_errors_never_panics_and_agree_with_snap() {
        let mut seed = 5;
        let data = sample(&mut seed, 20_000);
        let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        for _ in 0..3000 {
            let mut b = block.clone();
            match lcg(&mut seed) % 3 {
                0 => {
                    let i = lcg(&mut seed) as usize % b.len();
                    b[i] ^= 1 << (lcg(&mut seed) % 8);
                }
                1 => b.truncate(lcg(&mut seed) as usize % b.len()),
                _ => {
                    let i = lcg(&mut seed) as usize % b.len();
                    b[i] = lcg(&mut seed) as u8;
                }
            }
            let ours = inflate(&b, 1000);
            match snap::raw::Decoder::new().decompress_vec(&b) {
                Ok(theirs) => assert_eq!(ours.unwrap(), theirs),
                Err(_) => assert!(ours.is_err()),
            }
        }
        for bad in [
            &b""[..],
            b"\x80",
            b"\xff\xff\xff\xff\xff\x01",
            b"\x05\x01\x00",
        ] {
            assert!(inflate(bad, 10).is_err(), "{bad:?}");
        }
    }
}
