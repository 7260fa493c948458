//! Sample codecs: how timestamps and values become bytes.
//!
//! Two encodings, each lossless to the bit (NaN payloads, staleness markers, -0.0, ±Inf and
//! subnormals included):
//!
//! - [`HeadChunk`]: the append-only in-memory encoding of a series' samples since the last flush.
//!   Timestamps as zigzag varints of the delta-of-delta (one byte for a regular scrape), values as
//!   a Gorilla XOR bit stream (one bit for an unchanged value). Appending never re-encodes.
//! - [`encode_chunk`] / [`decode_chunk`]: the on-disk chunk of one series in a block. Timestamps
//!   are a start, a step and the exceptions; values are chosen per chunk from: constant, exact
//!   decimals scaled to integers (coded as delta or delta-of-delta zigzag varints, whichever is
//!   smaller), or Gorilla XOR. The block compressor (see `segment`) works on the result, so the
//!   chunk codec aims at making the bytes regular rather than at the last bit.
//!
//! Decoding never panics: a truncated or corrupt chunk is a [`CodecError`].

use crate::model::Sample;
use std::fmt;

/// A chunk that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub &'static str);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt chunk: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

// ---------------------------------------------------------------------------------------------
// Varints.

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A cursor over bytes that reads varints and fixed fields without panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline(always)]
    pub fn uvarint(&mut self) -> Result<u64, CodecError> {
        // Most varints in a chunk are one byte (a regular timestamp, a small delta).
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        self.uvarint_long()
    }

    /// A varint of up to eight bytes (56 bits: timestamps, most integers) from one 8-byte load,
    /// without a branch per byte; longer ones, and ones cut by the end, byte by byte.
    #[inline]
    fn uvarint_long(&mut self) -> Result<u64, CodecError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let word = match rest.first_chunk::<8>() {
            Some(w) => u64::from_le_bytes(*w),
            None => {
                // Near the end: the missing bytes read as zero, a stop past the end (checked).
                let mut a = [0u8; 8];
                a[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(a)
            }
        };
        // The first byte without the continuation bit ends the varint.
        let stops = !word & 0x8080_8080_8080_8080;
        let len = (stops.trailing_zeros() / 8 + 1) as usize;
        if stops == 0 || len > rest.len() {
            return self.uvarint_slow();
        }
        let keep = u64::MAX >> (64 - 8 * len);
        // Pack the 7-bit groups: pairs into 14 bits, then 28, then 56.
        let x = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
        let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
        let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
        let x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
        self.pos += len;
        Ok(x)
    }

    /// A varint read byte by byte, each checked against the end.
    fn uvarint_slow(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(CodecError("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(CodecError("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError("varint too long"));
            }
        }
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<i64, CodecError> {
        self.uvarint().map(unzigzag)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u32_le(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64_le(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    /// The next `N` bytes.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError("length"))?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Gorilla XOR bit streams.

#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits still free in the last byte (0..8; 0: the next bit starts a new byte).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        self.bits(b as u64, 1);
    }

    /// Appends the low `n` bits of `v` (n ≤ 64), most significant first: the free bits of the
    /// last byte first, then whole bytes.
    fn bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let mut n = n;
        let free = self.used as u32;
        if free > 0 {
            let take = n.min(free);
            let chunk = (v >> (n - take)) & low_bits(take);
            if let Some(last) = self.bytes.last_mut() {
                *last |= (chunk << (free - take)) as u8;
            }
            self.used -= take as u8;
            n -= take;
        }
        if n == 0 {
            return;
        }
        // Grow by a quarter, not double: a head holds thousands of these buffers, and doubling
        // would leave a third of their memory unused on average.
        if self.bytes.capacity() - self.bytes.len() < 8 {
            self.bytes.reserve_exact((self.bytes.len() / 4).max(16));
        }
        while n >= 8 {
            n -= 8;
            self.bytes.push((v >> n) as u8);
        }
        if n > 0 {
            self.bytes.push(((v & low_bits(n)) << (8 - n)) as u8);
            self.used = (8 - n) as u8;
        }
    }
}

/// The low `n` bits set (n ≤ 64).
#[inline(always)]
fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[derive(Debug)]
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Result<bool, CodecError> {
        Ok(self.bits(1)? == 1)
    }

    /// Reads `n` bits (n ≤ 64), most significant first: with one 8-byte load where the stream
    /// has 8 bytes left (any n ≤ 56), else a byte at a time.
    #[inline]
    fn bits(&mut self, n: u32) -> Result<u64, CodecError> {
        let at = self.pos / 8;
        let skip = (self.pos % 8) as u32;
        if n > 0 && n + skip <= 64 {
            if let Some(w) = self.bytes.get(at..at + 8) {
                let w = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                self.pos += n as usize;
                return Ok((w << skip) >> (64 - n));
            }
        }
        self.bits_slow(n)
    }

    fn bits_slow(&mut self, n: u32) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut n = n;
        while n > 0 {
            let byte = *self
                .bytes
                .get(self.pos / 8)
                .ok_or(CodecError("truncated bit stream"))?;
            let avail = 8 - (self.pos % 8) as u32;
            let take = n.min(avail);
            let chunk = (byte >> (avail - take)) as u64 & ((1u64 << take) - 1);
            v = if take == 64 {
                chunk
            } else {
                (v << take) | chunk
            };
            self.pos += take as usize;
            n -= take;
        }
        Ok(v)
    }
}

/// Gorilla's value encoder state: the previous value and the previous XOR window.
#[derive(Debug, Clone, Copy, Default)]
struct XorState {
    prev: u64,
    /// Leading and trailing zeros of the current XOR window (`u8::MAX`: none yet).
    leading: u8,
    trailing: u8,
    first: bool,
}

impl XorState {
    fn new() -> Self {
        XorState {
            first: true,
            leading: u8::MAX,
            ..Default::default()
        }
    }

    fn write(&mut self, w: &mut BitWriter, v: u64) {
        if self.first {
            w.bits(v, 64);
            self.first = false;
            self.prev = v;
            return;
        }
        let x = v ^ self.prev;
        self.prev = v;
        if x == 0 {
            w.bit(false);
            return;
        }
        w.bit(true);
        let leading = x.leading_zeros().min(31);
        let trailing = x.trailing_zeros();
        let (pl, pt) = (self.leading as u32, self.trailing as u32);
        if self.leading != u8::MAX && leading >= pl && trailing >= pt {
            w.bit(false);
            w.bits(x >> pt, 64 - pl - pt);
        } else {
            w.bit(true);
            let sig = 64 - leading - trailing;
            w.bits(leading as u64, 5);
            // 64 significant bits are written as 0 (six bits cannot hold 64).
            w.bits((sig & 63) as u64, 6);
            w.bits(x >> trailing, sig);
            self.leading = leading as u8;
            self.trailing = trailing as u8;
        }
    }

    fn read(&mut self, r: &mut BitReader<'_>) -> Result<u64, CodecError> {
        if self.first {
            self.first = false;
            self.prev = r.bits(64)?;
            return Ok(self.prev);
        }
        if !r.bit()? {
            return Ok(self.prev);
        }
        if r.bit()? {
            let leading = r.bits(5)? as u32;
            let mut sig = r.bits(6)? as u32;
            if sig == 0 {
                sig = 64;
            }
            if leading + sig > 64 {
                return Err(CodecError("bad XOR window"));
            }
            self.leading = leading as u8;
            self.trailing = (64 - leading - sig) as u8;
        } else if self.leading == u8::MAX {
            return Err(CodecError("XOR window reused before set"));
        }
        let sig = 64 - self.leading as u32 - self.trailing as u32;
        let x = r.bits(sig)? << self.trailing;
        self.prev ^= x;
        Ok(self.prev)
    }
}

// ---------------------------------------------------------------------------------------------
// The head chunk.

/// Writes a timestamp delta-of-delta with Gorilla's prefix code: `0` for zero (a regular scrape),
/// then 7, 9 or 12 bit two's-complement fields behind `10`, `110`, `1110`, and the full 64 bits
/// behind `1111`.
fn write_dod(w: &mut BitWriter, dod: i64) {
    const FIELDS: [(u64, u32, u32); 3] = [(0b10, 2, 7), (0b110, 3, 9), (0b1110, 4, 12)];
    if dod == 0 {
        w.bit(false);
        return;
    }
    for (prefix, plen, bits) in FIELDS {
        let lo = -(1i64 << (bits - 1));
        let hi = (1i64 << (bits - 1)) - 1;
        if (lo..=hi).contains(&dod) {
            w.bits(prefix, plen);
            w.bits(dod as u64 & ((1u64 << bits) - 1), bits);
            return;
        }
    }
    w.bits(0b1111, 4);
    w.bits(dod as u64, 64);
}

fn read_dod(r: &mut BitReader<'_>) -> Result<i64, CodecError> {
    let mut ones = 0;
    while ones < 4 && r.bit()? {
        ones += 1;
    }
    let bits = match ones {
        0 => return Ok(0),
        1 => 7,
        2 => 9,
        3 => 12,
        _ => return Ok(r.bits(64)? as i64),
    };
    let v = r.bits(bits)?;
    // Sign-extend the field.
    let shift = 64 - bits;
    Ok(((v << shift) as i64) >> shift)
}

/// The samples of one series since the last flush, encoded as they arrive into one bit stream:
/// per sample the timestamp's delta-of-delta (one bit for a regular scrape) and the value's
/// Gorilla XOR (one bit when unchanged). Appending never re-encodes.
#[derive(Debug, Clone)]
pub struct HeadChunk {
    bits: BitWriter,
    xor: XorState,
    count: u32,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
}

impl Default for HeadChunk {
    fn default() -> Self {
        HeadChunk {
            bits: BitWriter::default(),
            xor: XorState::new(),
            count: 0,
            first_t: 0,
            last_t: 0,
            last_delta: 0,
        }
    }
}

impl HeadChunk {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The newest sample, if any.
    pub fn last(&self) -> Option<Sample> {
        (self.count > 0).then_some(Sample {
            t: self.last_t,
            v: f64::from_bits(self.xor.prev),
        })
    }

    pub fn first_t(&self) -> Option<i64> {
        (self.count > 0).then_some(self.first_t)
    }

    /// Appends a sample; the caller keeps timestamps ascending.
    pub fn push(&mut self, t: i64, v: f64) {
        if self.count == 0 {
            self.bits.bits(t as u64, 64);
            self.first_t = t;
        } else {
            let delta = t.wrapping_sub(self.last_t);
            write_dod(&mut self.bits, delta.wrapping_sub(self.last_delta));
            self.last_delta = delta;
        }
        self.xor.write(&mut self.bits, v.to_bits());
        self.last_t = t;
        self.count += 1;
    }

    /// Decodes every sample into `out` (appended).
    pub fn decode_into(&self, out: &mut Vec<Sample>) {
        let mut r = BitReader {
            bytes: &self.bits.bytes,
            pos: 0,
        };
        let mut xor = XorState::new();
        let (mut t, mut delta) = (0i64, 0i64);
        for i in 0..self.count {
            // The stream was written by `push`, so it always decodes; stop quietly if not.
            let d = if i == 0 {
                r.bits(64).map(|v| v as i64)
            } else {
                read_dod(&mut r)
            };
            let Ok(d) = d else { return };
            if i == 0 {
                t = d;
            } else {
                delta = delta.wrapping_add(d);
                t = t.wrapping_add(delta);
            }
            let Ok(v) = xor.read(&mut r) else { return };
            out.push(Sample {
                t,
                v: f64::from_bits(v),
            });
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bits.bytes.capacity()
    }

    /// Forgets every sample and frees the buffer.
    pub fn clear(&mut self) {
        *self = HeadChunk::default();
    }
}

// ---------------------------------------------------------------------------------------------
// The on-disk chunk.

const TS_REGULAR: u8 = 0;
const TS_DOD: u8 = 1;
const V_CONST: u8 = 0;
const V_DECIMAL_DELTA: u8 = 1;
const V_DECIMAL_DOD: u8 = 2;
const V_XOR: u8 = 3;

const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The smallest decimal exponent `e` such that `v == i / 10^e` exactly for an integer `i` with
/// `|i| < 2^53`, or None.
fn decimal_exponent(v: f64) -> Option<usize> {
    if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    (0..POW10.len()).find(|&e| scaled(v, e).is_some())
}

/// `v * 10^e` as an integer, if that reads back exactly.
fn scaled(v: f64, e: usize) -> Option<i64> {
    let p = POW10[e];
    let s = (v * p).round();
    if s.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let i = s as i64;
    ((i as f64 / p).to_bits() == v.to_bits()).then_some(i)
}

/// Encodes samples (ascending timestamps, at least one) as one on-disk chunk, appended to `out`;
/// the first timestamp is written as its distance from `base` (a block's, shared by its chunks).
pub fn encode_chunk(samples: &[Sample], base: i64, out: &mut Vec<u8>) {
    put_uvarint(out, samples.len() as u64);
    let Some(first) = samples.first() else {
        return;
    };
    // Timestamps.
    put_varint(out, first.t.wrapping_sub(base));
    if samples.len() > 1 {
        let step = samples[1].t.wrapping_sub(first.t);
        put_varint(out, step);
        // Regular: one positive step that does not wrap (what a reader accepts as regular).
        let regular = samples
            .windows(2)
            .all(|w| w[1].t.wrapping_sub(w[0].t) == step)
            && regular_last(first.t, step, samples.len()).is_some();
        if regular {
            out.push(TS_REGULAR);
        } else {
            out.push(TS_DOD);
            let mut prev_delta = step;
            for w in samples[1..].windows(2) {
                let d = w[1].t.wrapping_sub(w[0].t);
                put_varint(out, d.wrapping_sub(prev_delta));
                prev_delta = d;
            }
        }
    }
    // Values.
    let v0 = first.v.to_bits();
    if samples.iter().all(|s| s.v.to_bits() == v0) {
        out.push(V_CONST);
        out.extend_from_slice(&v0.to_le_bytes());
        return;
    }
    let exp = samples
        .iter()
        .try_fold(0usize, |e, s| decimal_exponent(s.v).map(|x| x.max(e)));
    let ints: Option<Vec<i64>> = exp.and_then(|e| samples.iter().map(|s| scaled(s.v, e)).collect());
    if let (Some(e), Some(ints)) = (exp, ints) {
        // Both orders of differences, sized; the smaller wins.
        let deltas: Vec<i64> = ints.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        let dods: Vec<i64> = deltas.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        let size = |v: &[i64]| v.iter().map(|x| uvarint_len(zigzag(*x))).sum::<usize>();
        let delta_size = size(&deltas);
        let dod_size = deltas.first().map_or(0, |d| uvarint_len(zigzag(*d))) + size(&dods);
        if dod_size < delta_size {
            out.push(V_DECIMAL_DOD);
            out.push(e as u8);
            put_varint(out, ints[0]);
            put_varint(out, deltas[0]);
            for d in &dods {
                put_varint(out, *d);
            }
        } else {
            out.push(V_DECIMAL_DELTA);
            out.push(e as u8);
            put_varint(out, ints[0]);
            for d in &deltas {
                put_varint(out, *d);
            }
        }
        return;
    }
    out.push(V_XOR);
    let mut w = BitWriter::default();
    let mut x = XorState::new();
    for s in samples {
        x.write(&mut w, s.v.to_bits());
    }
    put_uvarint(out, w.bytes.len() as u64);
    out.extend_from_slice(&w.bytes);
}

/// The last timestamp of `n` samples from `t0` at `step`, if the step is positive and they do
/// not overflow: the regular timestamp mode's rule, for the writer and the reader alike.
fn regular_last(t0: i64, step: i64, n: usize) -> Option<i64> {
    let d = step.checked_mul(i64::try_from(n).ok()?.checked_sub(1)?)?;
    (step > 0).then_some(t0.checked_add(d)?)
}

/// Most samples one chunk may claim, so a corrupt count cannot ask for a huge allocation.
pub const MAX_CHUNK_SAMPLES: u64 = 1 << 24;

/// Decodes one chunk from `r`, appending its samples to `out`.
pub fn decode_chunk(
    r: &mut Reader<'_>,
    base: i64,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    let len = r.buf.len().saturating_sub(r.pos);
    decode_chunk_of(r, len, base, (i64::MIN, i64::MAX), out).map(|_| ())
}

/// As [`decode_chunk`], for a chunk of `len` bytes at `r`'s position that `r` may read past
/// (the bytes after it let varints be read a word at a time): a chunk that reads past `len` is
/// an error, so the result is the same as with `r` cut at `len`. `span`: the times the chunk's
/// samples lie within (its block's); a regular chunk that claims samples outside it is an
/// error before any of them is allocated. True if the chunk's timestamps are known to ascend
/// strictly (one sample, or a regular chunk within the span); false says nothing.
pub fn decode_chunk_of(
    r: &mut Reader<'_>,
    len: usize,
    base: i64,
    span: (i64, i64),
    out: &mut Vec<Sample>,
) -> Result<bool, CodecError> {
    let end = r.pos.saturating_add(len);
    let ascends = decode_chunk_body(r, len, base, span, out)?;
    if r.pos > end {
        return Err(CodecError("chunk longer than its length"));
    }
    Ok(ascends)
}

/// Reads XOR-coded values into `samples` (one each).
fn decode_xor(bytes: &[u8], samples: &mut [Sample]) -> Result<(), CodecError> {
    let mut br = BitReader { bytes, pos: 0 };
    let mut x = XorState::new();
    for s in samples.iter_mut() {
        s.v = f64::from_bits(x.read(&mut br)?);
    }
    Ok(())
}

fn decode_chunk_body(
    r: &mut Reader<'_>,
    len: usize,
    base: i64,
    span: (i64, i64),
    out: &mut Vec<Sample>,
) -> Result<bool, CodecError> {
    let n = r.uvarint()?;
    if n > MAX_CHUNK_SAMPLES {
        return Err(CodecError("sample count too large"));
    }
    let n = n as usize;
    if n == 0 {
        return Ok(true);
    }
    let mut ascends = n == 1;
    let start = out.len();
    // The count is bounded above, and every sample takes at least a byte of the chunk (or the
    // chunk is regular and constant, when n is as stated): reserve once.
    out.reserve(n.min(len.saturating_mul(8)));
    let t0 = base.wrapping_add(r.varint()?);
    if n == 1 {
        out.push(Sample { t: t0, v: 0.0 });
    } else {
        let step = r.varint()?;
        match r.u8()? {
            TS_REGULAR => {
                // The only chunk whose count its bytes do not bound: its samples ascend (the
                // writer's always do) and end within the span, or it is not read at all. Two
                // samples are let through as they are: writers before this check called every
                // two-sample chunk regular, even one whose step wrapped.
                ascends = t0 >= span.0 && regular_last(t0, step, n).is_some_and(|l| l <= span.1);
                if !ascends && n > 2 {
                    return Err(CodecError("regular chunk outside its block's time range"));
                }
                out.extend((0..n as i64).map(|k| Sample {
                    t: t0.wrapping_add(step.wrapping_mul(k)),
                    v: 0.0,
                }));
            }
            TS_DOD => {
                out.push(Sample { t: t0, v: 0.0 });
                let (mut t, mut d) = (t0.wrapping_add(step), step);
                out.push(Sample { t, v: 0.0 });
                for _ in 2..n {
                    d = d.wrapping_add(r.varint()?);
                    t = t.wrapping_add(d);
                    out.push(Sample { t, v: 0.0 });
                }
            }
            _ => return Err(CodecError("unknown timestamp mode")),
        }
    }
    let samples = &mut out[start..];
    match r.u8()? {
        V_CONST => {
            let v = f64::from_bits(r.u64_le()?);
            samples.iter_mut().for_each(|s| s.v = v);
        }
        mode @ (V_DECIMAL_DELTA | V_DECIMAL_DOD) => {
            let e = r.u8()? as usize;
            let p = *POW10.get(e).ok_or(CodecError("bad decimal exponent"))?;
            let mut i = r.varint()?;
            samples[0].v = i as f64;
            if mode == V_DECIMAL_DELTA {
                for s in samples.iter_mut().skip(1) {
                    i = i.wrapping_add(r.varint()?);
                    s.v = i as f64;
                }
            } else {
                let mut delta = 0i64;
                for (k, s) in samples.iter_mut().enumerate().skip(1) {
                    let d = r.varint()?;
                    delta = if k == 1 { d } else { delta.wrapping_add(d) };
                    i = i.wrapping_add(delta);
                    s.v = i as f64;
                }
            }
            // Integers (e = 0, most counters) need no division; others are divided exactly as
            // they were encoded (a multiplication by 10^-e would not read back bit for bit).
            if e > 0 {
                samples.iter_mut().for_each(|s| s.v /= p);
            }
        }
        V_XOR => {
            let len = r.uvarint()? as usize;
            let bytes = r.bytes(len)?;
            decode_xor(bytes, samples)?;
        }
        _ => return Err(CodecError("unknown value mode")),
    }
    Ok(ascends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN;

    fn same(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.t == y.t && x.v.to_bits() == y.v.to_bits())
    }

    /// A regular chunk of `n` samples from `t0` (base 0) at `step`, all 1.5.
    fn regular_chunk(n: u64, t0: i64, step: i64) -> Vec<u8> {
        let mut c = Vec::new();
        put_uvarint(&mut c, n);
        put_varint(&mut c, t0);
        put_varint(&mut c, step);
        c.push(TS_REGULAR);
        c.push(V_CONST);
        c.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        c
    }

    #[test]
    fn a_regular_chunk_ascends_within_its_span_or_is_corrupt() {
        let all = (i64::MIN, i64::MAX);
        for (step, span, ok) in [
            (5i64, all, true),
            (5, (100, 110), true),
            (5, (101, 110), false),
            (5, (100, 109), false),
            (0, all, false),
            (-5, all, false),
            (i64::MAX / 2, all, false),
        ] {
            let c = regular_chunk(3, 100, step);
            let mut out = Vec::new();
            let got = decode_chunk_of(&mut Reader::new(&c), c.len(), 0, span, &mut out);
            assert_eq!(got.is_ok(), ok, "step {step} span {span:?}");
            assert!(got.unwrap_or(true));
            assert_eq!(out.len(), if ok { 3 } else { 0 });
        }
    }

    #[test]
    fn two_samples_an_old_writer_called_regular_still_read() {
        // The step from i64::MIN + 5 to 10^12 wraps: before the regular mode needed an ascending
        // step, such a pair was written regular. It reads back, not known to ascend.
        let (t0, t1) = (i64::MIN + 5, 1_000_000_000_000i64);
        let c = regular_chunk(2, t0, t1.wrapping_sub(t0));
        let mut out = Vec::new();
        let got = decode_chunk_of(&mut Reader::new(&c), c.len(), 0, (t0, t1), &mut out);
        assert_eq!(got, Ok(false));
        assert_eq!(out.iter().map(|s| s.t).collect::<Vec<_>>(), [t0, t1]);
    }

    #[test]
    fn a_few_bytes_cannot_claim_more_samples_than_the_span_holds() {
        // 20 bytes that claim 2^24 samples of one value, 1 ms apart, in a block of 60 s: an
        // error before anything is allocated (they would take 256 MiB).
        let c = regular_chunk(MAX_CHUNK_SAMPLES, 100, 1);
        assert!(c.len() < 24);
        let mut out = Vec::new();
        let got = decode_chunk_of(&mut Reader::new(&c), c.len(), 0, (0, 60_000), &mut out);
        assert!(got.is_err());
        assert!(out.capacity() < 1 << 10, "{}", out.capacity());
    }

    #[test]
    fn timestamps_that_do_not_ascend_round_trip_without_the_regular_mode() {
        for ts in [
            vec![5i64, 5, 5],
            vec![9, 4, -1],
            vec![0, i64::MAX / 2 + 1, i64::MIN + 1],
        ] {
            let samples: Vec<Sample> = ts.iter().map(|&t| Sample { t, v: 2.0 }).collect();
            let mut c = Vec::new();
            encode_chunk(&samples, 0, &mut c);
            let mut out = Vec::new();
            decode_chunk(&mut Reader::new(&c), 0, &mut out).unwrap();
            assert!(same(&samples, &out), "{ts:?}");
        }
    }

    #[test]
    fn bit_streams_match_a_bit_at_a_time_coder() {
        // The stream's layout is on disk: the byte-wise writer and the word-wise reader must
        // agree bit for bit with the plainest coder, for every width at every offset.
        let mut x = 0x1234_5678_9abc_def1u64;
        for lead in 0..8u32 {
            for n in 0..=64u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let fields = [(x >> 3, lead), (x, n), (!x, 64 - n), (x.rotate_left(9), 5)];
                let mut w = BitWriter::default();
                let mut plain: Vec<bool> = Vec::new();
                for (v, width) in fields {
                    w.bits(v, width);
                    plain.extend((0..width).rev().map(|i| v >> i & 1 == 1));
                }
                let mut want = vec![0u8; plain.len().div_ceil(8)];
                for (i, b) in plain.iter().enumerate() {
                    want[i / 8] |= (*b as u8) << (7 - i % 8);
                }
                assert_eq!(w.bytes, want, "lead {lead}, n {n}");
                assert_eq!(w.used as usize, want.len() * 8 - plain.len());
                let mut r = BitReader {
                    bytes: &w.bytes,
                    pos: 0,
                };
                for (v, width) in fields {
                    assert_eq!(r.bits(width).unwrap(), v & low_bits(width), "n {n}");
                }
                assert!(r.bits(w.used as u32 + 1).is_err());
            }
        }
    }

    #[test]
    fn varints_read_the_same_near_the_end_and_far_from_it() {
        let mut x = 7u64;
        for k in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf = Vec::new();
            if k % 2 == 0 {
                put_uvarint(&mut buf, x >> (k % 64));
            }
            // Random bytes, biased to continuation bytes so long and overlong varints occur.
            let mut y = x;
            for _ in 0..12 {
                buf.push(if y % 5 == 0 {
                    y as u8 & 0x7f
                } else {
                    y as u8 | 0x80
                });
                y = y.rotate_left(9);
            }
            for end in 0..buf.len() {
                let mut fast = Reader::new(&buf[..end]);
                let mut slow = Reader::new(&buf[..end]);
                let a = fast.uvarint();
                let b = if slow.buf.first().is_some_and(|b| *b < 0x80) {
                    slow.uvarint()
                } else {
                    slow.uvarint_slow()
                };
                assert_eq!(a, b, "{:?}", &buf[..end]);
                if a.is_ok() {
                    assert_eq!(fast.pos, slow.pos);
                }
            }
        }
    }

    fn round_trip(samples: &[Sample]) -> usize {
        // A block's base is any timestamp: before, inside or after the chunk's, or far off.
        for base in [1_700_000_000_000, i64::MIN, i64::MAX, -5] {
            let mut buf = Vec::new();
            encode_chunk(samples, base, &mut buf);
            let mut out = Vec::new();
            decode_chunk(&mut Reader::new(&buf), base, &mut out).unwrap();
            assert!(same(samples, &out), "base {base}");
        }
        let mut buf = Vec::new();
        encode_chunk(samples, 0, &mut buf);
        let mut out = Vec::new();
        let mut r = Reader::new(&buf);
        decode_chunk(&mut r, 0, &mut out).unwrap();
        assert!(r.is_empty(), "trailing bytes");
        assert!(
            same(samples, &out),
            "chunk round trip:\n{samples:?}\n{out:?}"
        );
        let mut h = HeadChunk::default();
        for s in samples {
            h.push(s.t, s.v);
        }
        let mut out = Vec::new();
        h.decode_into(&mut out);
        assert!(same(samples, &out), "head round trip");
        buf.len()
    }

    fn series(ts: &[i64], vs: &[f64]) -> Vec<Sample> {
        ts.iter().zip(vs).map(|(&t, &v)| Sample { t, v }).collect()
    }

    /// A deterministic xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn regular_constant_series_is_tiny() {
        let s: Vec<Sample> = (0..120)
            .map(|i| Sample {
                t: 1_700_000_000_000 + i * 15_000,
                v: 42.0,
            })
            .collect();
        assert!(round_trip(&s) <= 20);
    }

    #[test]
    fn decimals_and_counters() {
        let ts: Vec<i64> = (0..100).map(|i| 1000 * i).collect();
        let counter: Vec<f64> = (0..100).map(|i| (i * 37 + i * i) as f64).collect();
        assert!(round_trip(&series(&ts, &counter)) < 160);
        let dec: Vec<f64> = (0..100).map(|i| 12345.67 + i as f64 * 0.01).collect();
        round_trip(&series(&ts, &dec));
        let neg: Vec<f64> = (0..100).map(|i| -0.125 * i as f64).collect();
        round_trip(&series(&ts, &neg));
    }

    #[test]
    fn adversarial_values_round_trip_bit_exact() {
        let specials = [
            f64::NAN,
            f64::from_bits(STALE_NAN),
            f64::from_bits(0x7ff8_dead_beef_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE / 3.0,
            5e-324,
            f64::MAX,
            f64::MIN,
            1e300,
            0.1,
            9_007_199_254_740_993.0,
        ];
        let ts: Vec<i64> = (0..specials.len() as i64).collect();
        round_trip(&series(&ts, &specials));
        for v in specials {
            round_trip(&series(&[5, 6, 7], &[v, v, 1.0]));
            round_trip(&series(&[5], &[v]));
        }
    }

    #[test]
    fn huge_timestamp_jumps() {
        let ts = [
            i64::MIN,
            -1,
            0,
            1,
            1_000_000_000_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        round_trip(&series(&ts, &[1.0; 7]));
    }

    #[test]
    fn random_series_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let n = 1 + (rng.next() % 200) as usize;
            let mut t = (rng.next() % 1_000_000_000_000) as i64;
            let mut samples = Vec::new();
            for _ in 0..n {
                t += match case % 3 {
                    0 => 15_000,
                    1 => 1000 + (rng.next() % 5) as i64,
                    _ => (rng.next() % 1_000_000) as i64,
                };
                let v = match case % 4 {
                    0 => f64::from_bits(rng.next()),
                    1 => (rng.next() % 1000) as f64 / 100.0,
                    2 => (rng.next() % 10) as f64,
                    _ => (rng.next() as f64).sqrt(),
                };
                samples.push(Sample { t, v });
            }
            round_trip(&samples);
            cut_chunks_read_the_same_with_bytes_after(&samples, &mut rng);
        }
    }

    /// A chunk cut short decodes (or fails) alike whether the buffer ends at the cut or goes on
    /// with other bytes that `decode_chunk_of` may look at but not use.
    fn cut_chunks_read_the_same_with_bytes_after(samples: &[Sample], rng: &mut Rng) {
        let mut buf = Vec::new();
        encode_chunk(&samples[..samples.len().min(6)], 0, &mut buf);
        let full = buf.len();
        let mut after = buf.clone();
        after.extend((0..16).map(|_| rng.next() as u8));
        for cut in 0..=full {
            let mut a = vec![Sample { t: 1, v: 1.0 }];
            let mut b = a.clone();
            let ra = decode_chunk(&mut Reader::new(&buf[..cut]), 0, &mut a);
            let rb = decode_chunk_of(
                &mut Reader::new(&after),
                cut,
                0,
                (i64::MIN, i64::MAX),
                &mut b,
            );
            assert_eq!(ra.is_ok(), rb.is_ok(), "cut {cut} of {full}");
            if ra.is_ok() {
                assert!(same(&a, &b));
            }
        }
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        let s: Vec<Sample> = (0..50)
            .map(|i| Sample {
                t: i * 1000,
                v: (i * 3) as f64 / 7.0,
            })
            .collect();
        let mut buf = Vec::new();
        encode_chunk(&s, 0, &mut buf);
        let mut rng = Rng(7);
        for i in 0..2000 {
            let mut b = buf.clone();
            if i % 2 == 0 {
                b.truncate((rng.next() as usize) % buf.len());
            } else {
                let k = (rng.next() as usize) % b.len();
                b[k] ^= 1 << (rng.next() % 8);
            }
            let mut out = Vec::new();
            let _ = decode_chunk(&mut Reader::new(&b), 0, &mut out);
        }
        let mut out = Vec::new();
        assert!(decode_chunk(&mut Reader::new(&[0xff; 12]), 0, &mut out).is_err());
    }
}
