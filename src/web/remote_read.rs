//! `POST /api/v1/read`: the Prometheus remote-read protocol, so a central Prometheus with
//! `remote_read: [{url: http://gateway:9090/api/v1/read, read_recent: true}]` queries Perch's
//! history as if it were its own.
//!
//! The request is a snappy block of a protobuf `prometheus.ReadRequest` (bounded by the HTTP
//! body limit and [`super::ingest::MAX_DECOMPRESSED_BYTES`]). Each query's matchers select
//! series over `[start_timestamp_ms, end_timestamp_ms]`, as Prometheus 2.42's read handler does:
//! - an equality matcher on an external label with the external value matches series *without*
//!   that label (they get it on the way out); the series' own labels win over external ones;
//! - the response type is the first of `accepted_response_types` that Perch knows; none listed
//!   means `SAMPLES`;
//! - `SAMPLES`: one snappy-compressed `ReadResponse` with raw samples (staleness markers
//!   included), at most `--storage.remote.read-sample-limit` samples per query, past which the
//!   answer is `400 exceeded sample limit (N)`;
//! - `STREAMED_XOR_CHUNKS`: frames of `uvarint length | CRC-32C (big-endian) | ChunkedReadResponse`,
//!   one series per frame (a long series is split over frames of about
//!   `--storage.remote.read-max-bytes-in-frame`), series sorted, each chunk Prometheus's XOR
//!   encoding of up to 120 samples ([`xor`]). Streamed, yielding between frames.
//!
//! The request is decompressed and each query selected in slices
//! ([`crate::storage::select_in_slices`]); a `SAMPLES` answer is encoded a series at a time
//! and snappy-compressed in 64 KiB fragments (their element streams, concatenated under one
//! length, are one valid raw block), with yields between, so a big read does not hold up
//! scrapes.
//!
//! Errors: a body that is not snappy/protobuf, or asks only for unknown response types, gets
//! 400 with the reason as text; a bad regex gets 500, as in Prometheus.

use super::http::{BodyStream, Request, Response};
use super::ingest::{pb::Label, pb::Sample as PbSample, snappy_decompress_in_slices, IngestError};
use super::WebState;
use crate::model::slice::{Slicer, SLICE};
use crate::model::{Labels, MatchKind, Matcher, Sample};
use crate::storage::{select_in_slices, Series};
use prost::Message;

/// The remote-read messages (`prompb/remote.proto`, `types.proto`).
pub mod pb {
    pub use crate::remote::pb::{Label, Sample, TimeSeries};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadRequest {
        #[prost(message, repeated, tag = "1")]
        pub queries: Vec<Query>,
        /// `ResponseType`: 0 = SAMPLES, 1 = STREAMED_XOR_CHUNKS.
        #[prost(int32, repeated, tag = "2")]
        pub accepted_response_types: Vec<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Query {
        #[prost(int64, tag = "1")]
        pub start_timestamp_ms: i64,
        #[prost(int64, tag = "2")]
        pub end_timestamp_ms: i64,
        #[prost(message, repeated, tag = "3")]
        pub matchers: Vec<LabelMatcher>,
        #[prost(message, optional, tag = "4")]
        pub hints: Option<ReadHints>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelMatcher {
        /// 0 = EQ, 1 = NEQ, 2 = RE, 3 = NRE.
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub value: String,
    }

    /// Read but not used: Perch selects the exact range whatever the hints say.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadHints {
        #[prost(int64, tag = "1")]
        pub step_ms: i64,
        #[prost(string, tag = "2")]
        pub func: String,
        #[prost(int64, tag = "3")]
        pub start_ms: i64,
        #[prost(int64, tag = "4")]
        pub end_ms: i64,
        #[prost(string, repeated, tag = "5")]
        pub grouping: Vec<String>,
        #[prost(bool, tag = "6")]
        pub by: bool,
        #[prost(int64, tag = "7")]
        pub range_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadResponse {
        #[prost(message, repeated, tag = "1")]
        pub results: Vec<QueryResult>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryResult {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ChunkedReadResponse {
        #[prost(message, repeated, tag = "1")]
        pub chunked_series: Vec<ChunkedSeries>,
        #[prost(int64, tag = "2")]
        pub query_index: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ChunkedSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub chunks: Vec<Chunk>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Chunk {
        #[prost(int64, tag = "1")]
        pub min_time_ms: i64,
        #[prost(int64, tag = "2")]
        pub max_time_ms: i64,
        /// 1 = XOR.
        #[prost(int32, tag = "3")]
        pub r#type: i32,
        #[prost(bytes = "vec", tag = "4")]
        pub data: Vec<u8>,
    }

    pub const SAMPLES: i32 = 0;
    pub const STREAMED_XOR_CHUNKS: i32 = 1;
    pub const CHUNK_XOR: i32 = 1;
}

const STREAMED_CONTENT_TYPE: &str =
    "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

/// Samples per XOR chunk, as Prometheus cuts them.
const SAMPLES_PER_CHUNK: usize = 120;

/// Why a read request failed: the HTTP status and the message.
struct ReadError(u16, String);

impl WebState {
    pub(super) async fn remote_read(&self, req: &Request) -> Response {
        match self.remote_read_inner(req).await {
            Ok(r) => r,
            Err(ReadError(code, msg)) => Response::text(code, format!("{msg}\n")),
        }
    }

    async fn remote_read_inner(&self, req: &Request) -> Result<Response, ReadError> {
        let mut slicer = Slicer::new(Some(SLICE), 64);
        let raw = snappy_decompress_in_slices(&req.body, &mut slicer)
            .await
            .map_err(|e| {
                let (IngestError::BadRequest(m)
                | IngestError::TooLarge(m)
                | IngestError::Unsupported(m)
                | IngestError::Storage(m)) = &e;
                ReadError(e.status(), m.clone())
            })?;
        let rr = decode_request(&raw, &mut slicer).await?;
        let config = self.config();
        let external: Vec<Label> = config
            .file
            .global
            .external_labels
            .iter()
            .map(|l| Label {
                name: l.name.clone(),
                value: l.value.clone(),
            })
            .collect();
        let streamed = negotiate(&rr.accepted_response_types)?;
        let querier = self.storage.querier();
        // Select every query first: an error then still gets a clean status.
        let mut results: Vec<Vec<Series>> = Vec::with_capacity(rr.queries.len());
        for q in &rr.queries {
            let matchers = to_matchers(&q.matchers, &external)?;
            let series = select_in_slices(
                &*querier,
                &matchers,
                q.start_timestamp_ms,
                q.end_timestamp_ms,
            )
            .await
            .map_err(|e| ReadError(500, e.to_string()))?;
            results.push(series);
        }
        if streamed {
            let frames = Frames {
                queries: results.into_iter().map(|r| r.into_iter()).collect(),
                query: 0,
                external,
                max_bytes: config.flags.remote_read_max_bytes_in_frame,
                pending: None,
            };
            return Ok(Response::streamed(
                200,
                STREAMED_CONTENT_TYPE,
                Box::new(frames),
            ));
        }
        let limit = config.flags.remote_read_sample_limit;
        // The `ReadResponse` written field by field: each `QueryResult` (field 1) holds its
        // series (field 1 each), encoded one at a time.
        let mut encoded = Vec::new();
        for series in results {
            let mut n = 0usize;
            let mut result = Vec::new();
            for s in series {
                slicer.tick().await;
                n += s.samples.len();
                if limit > 0 && n > limit {
                    return Err(ReadError(400, format!("exceeded sample limit ({limit})")));
                }
                let labels = merge_labels(&s.labels, &external);
                encode_series(&labels, s.samples.as_slice(), &mut result, &mut slicer).await;
            }
            prost::encoding::encode_key(
                1,
                prost::encoding::WireType::LengthDelimited,
                &mut encoded,
            );
            prost::encoding::encode_varint(result.len() as u64, &mut encoded);
            encoded.extend_from_slice(&result);
        }
        let body = snappy_compress_in_slices(&encoded, &mut slicer)
            .await
            .map_err(|e| ReadError(500, e.to_string()))?;
        Ok(Response::new(200, "application/x-protobuf", body)
            .with_header("Content-Encoding", "snappy"))
    }
}

/// Appends `TimeSeries { labels, samples }` as field 1 to `out`, bytes as prost writes them,
/// with ticks as it goes: its length first (a pass over the samples), then its fields, so a
/// series of millions of samples is not one piece.
async fn encode_series(
    labels: &[Label],
    samples: &[Sample],
    out: &mut Vec<u8>,
    slicer: &mut Slicer,
) {
    use prost::encoding::{encode_key, encode_varint, message, WireType};
    const PER_TICK: usize = 4096;
    let pb = |x: &Sample| PbSample {
        value: x.v,
        timestamp: x.t,
    };
    let mut len: usize = labels.iter().map(|l| message::encoded_len(1, l)).sum();
    for part in samples.chunks(PER_TICK) {
        len += part
            .iter()
            .map(|x| message::encoded_len(2, &pb(x)))
            .sum::<usize>();
        slicer.tick_by(part.len()).await;
    }
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    for l in labels {
        message::encode(1, l, out);
    }
    for part in samples.chunks(PER_TICK) {
        for x in part {
            message::encode(2, &pb(x), out);
        }
        slicer.tick_by(part.len()).await;
    }
}

/// Decodes a `ReadRequest` a query at a time, with a tick between queries: a request of many
/// queries is as long to decode as it is big, and the body limit allows megabytes. Equal to
/// `ReadRequest::decode` (fields in any order, repeated fields packed or not, unknown skipped).
async fn decode_request(raw: &[u8], slicer: &mut Slicer) -> Result<pb::ReadRequest, ReadError> {
    use prost::encoding::{decode_key, decode_varint, int32, skip_field, DecodeContext, WireType};
    let bad = |e: prost::DecodeError| ReadError(400, e.to_string());
    let mut buf = raw;
    let mut rr = pb::ReadRequest::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(bad)?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                let len = decode_varint(&mut buf).map_err(bad)?;
                let Some(len) = usize::try_from(len).ok().filter(|&l| l <= buf.len()) else {
                    return Err(ReadError(
                        400,
                        "failed to decode Protobuf message: buffer underflow".into(),
                    ));
                };
                rr.queries
                    .push(pb::Query::decode(&buf[..len]).map_err(bad)?);
                buf = &buf[len..];
                slicer.tick().await;
            }
            (2, _) => int32::merge_repeated(
                wire,
                &mut rr.accepted_response_types,
                &mut buf,
                DecodeContext::default(),
            )
            .map_err(bad)?,
            _ => skip_field(wire, tag, &mut buf, DecodeContext::default()).map_err(bad)?,
        }
    }
    Ok(rr)
}

/// A raw snappy block of `data`, compressed 64 KiB at a time: each fragment's elements refer
/// only within it, so their element streams after one length header form one valid block.
async fn snappy_compress_in_slices(
    data: &[u8],
    slicer: &mut Slicer,
) -> Result<Vec<u8>, snap::Error> {
    const FRAGMENT: usize = 64 << 10;
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    prost::encoding::encode_varint(data.len() as u64, &mut out);
    let mut enc = snap::raw::Encoder::new();
    let mut buf = vec![0; snap::raw::max_compress_len(FRAGMENT)];
    for piece in data.chunks(FRAGMENT) {
        let n = enc.compress(piece, &mut buf)?;
        // Skip the fragment's own length header.
        let header = super::snappy::varint_len(piece.len());
        out.extend_from_slice(&buf[header..n]);
        slicer.pause().await;
    }
    Ok(out)
}

/// The first accepted response type Perch knows: `Ok(true)` for streamed chunks.
fn negotiate(accepted: &[i32]) -> Result<bool, ReadError> {
    if accepted.is_empty() {
        return Ok(false);
    }
    for t in accepted {
        match *t {
            pb::SAMPLES => return Ok(false),
            pb::STREAMED_XOR_CHUNKS => return Ok(true),
            _ => {}
        }
    }
    let names: Vec<String> = accepted.iter().map(|t| t.to_string()).collect();
    Err(ReadError(
        400,
        format!(
            "server does not support any of the requested response types: [{}]; supported: [SAMPLES STREAMED_XOR_CHUNKS]",
            names.join(" ")
        ),
    ))
}

/// The request's matchers, with an equality matcher on an external label's own value turned
/// into "label absent" (the stored series do not carry external labels).
fn to_matchers(ms: &[pb::LabelMatcher], external: &[Label]) -> Result<Vec<Matcher>, ReadError> {
    ms.iter()
        .map(|m| {
            let kind = match m.r#type {
                0 => MatchKind::Equal,
                1 => MatchKind::NotEqual,
                2 => MatchKind::Regex,
                3 => MatchKind::NotRegex,
                t => return Err(ReadError(500, format!("invalid matcher type {t}"))),
            };
            let ext = external.iter().find(|l| l.name == m.name);
            let value = match ext {
                Some(l) if kind == MatchKind::Equal && l.value == m.value => "",
                _ => m.value.as_str(),
            };
            Matcher::new(kind, &m.name, value).map_err(|e| ReadError(500, e.to_string()))
        })
        .collect()
}

/// The series' labels with the external labels it lacks, sorted by name (its own value wins).
fn merge_labels(labels: &Labels, external: &[Label]) -> Vec<Label> {
    let mut out: Vec<Label> = labels
        .iter()
        .map(|l| Label {
            name: l.name.clone(),
            value: l.value.clone(),
        })
        .collect();
    for e in external {
        if !labels.has(&e.name) {
            out.push(e.clone());
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The streamed answer: one frame per series (or per part of a long series), query by query.
struct Frames {
    queries: Vec<std::vec::IntoIter<Series>>,
    query: usize,
    external: Vec<Label>,
    max_bytes: usize,
    /// The series being framed: its labels, its samples, and the first not yet framed. Its
    /// chunks are encoded a frame at a time, so a long series costs a frame's work per call
    /// (the HTTP writer yields between calls), not its whole length at once.
    pending: Option<(Vec<Label>, Vec<Sample>, usize)>,
}

impl BodyStream for Frames {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        loop {
            if let Some((labels, samples, next)) = &mut self.pending {
                let label_bytes: usize = labels.iter().map(|l| l.encoded_len()).sum();
                let budget = self.max_bytes.saturating_sub(label_bytes) as isize;
                let mut left = budget;
                let mut frame: Vec<pb::Chunk> = Vec::new();
                while *next < samples.len() {
                    let end = (*next + SAMPLES_PER_CHUNK).min(samples.len());
                    let c = &samples[*next..end];
                    *next = end;
                    let chunk = pb::Chunk {
                        min_time_ms: c[0].t,
                        max_time_ms: c[c.len() - 1].t,
                        r#type: pb::CHUNK_XOR,
                        data: xor::encode(c),
                    };
                    left -= chunk.encoded_len() as isize;
                    frame.push(chunk);
                    if left <= 0 {
                        break;
                    }
                }
                if frame.is_empty() {
                    self.pending = None;
                    continue;
                }
                let msg = pb::ChunkedReadResponse {
                    chunked_series: vec![pb::ChunkedSeries {
                        labels: labels.clone(),
                        chunks: frame,
                    }],
                    query_index: self.query as i64,
                };
                return Some(Ok(frame_bytes(&msg.encode_to_vec())));
            }
            let q = self.queries.get_mut(self.query)?;
            match q.next() {
                Some(s) => {
                    // The select's vector, reused in place.
                    let samples: Vec<Sample> = s.samples.collect();
                    self.pending = Some((merge_labels(&s.labels, &self.external), samples, 0));
                }
                None => self.query += 1,
            }
        }
    }
}

/// `uvarint(len) | CRC-32C(data) big-endian | data`, as Prometheus's `ChunkedWriter` frames.
fn frame_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 14);
    let mut n = data.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Prometheus's XOR chunk encoding (`tsdb/chunkenc`, "Gorilla" with millisecond timestamps),
/// written from its description: a big-endian u16 sample count, then a bit stream (most
/// significant bit first) of
/// - the first timestamp as a signed varint and the first value's 64 bits;
/// - the second timestamp's delta as an unsigned varint and the value XOR-encoded;
/// - then per sample the delta-of-delta in the buckets `0` | `10`+14 bits | `110`+17 bits |
///   `1110`+20 bits | `1111`+64 bits, and the value XOR-encoded.
///
/// A value is XOR-encoded against the previous one: `0` when equal; else `1`, then either `0`
/// and the meaningful bits in the previous window (when the new leading and trailing zero counts
/// fit in it), or `1`, 5 bits of leading zeros (at most 31), 6 bits of meaningful bit count (64
/// written as 0) and those bits.
pub mod xor {
    use crate::model::Sample;

    struct Bits {
        bytes: Vec<u8>,
        /// Free bits in the last byte (0 = start a new byte).
        free: u8,
    }

    impl Bits {
        fn bit(&mut self, b: bool) {
            if self.free == 0 {
                self.bytes.push(0);
                self.free = 8;
            }
            self.free -= 1;
            if b {
                if let Some(last) = self.bytes.last_mut() {
                    *last |= 1 << self.free;
                }
            }
        }

        fn bits(&mut self, v: u64, n: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }

        fn byte(&mut self, b: u8) {
            self.bits(b as u64, 8);
        }

        fn uvarint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.byte((v as u8) | 0x80);
                v >>= 7;
            }
            self.byte(v as u8);
        }
    }

    fn fits(x: i64, n: u32) -> bool {
        -((1i64 << (n - 1)) - 1) <= x && x <= 1i64 << (n - 1)
    }

    /// Encodes up to 65535 samples as one XOR chunk.
    pub fn encode(samples: &[Sample]) -> Vec<u8> {
        let n = samples.len().min(u16::MAX as usize);
        let mut w = Bits {
            bytes: Vec::with_capacity(2 + n * 2),
            free: 0,
        };
        w.bytes.extend_from_slice(&(n as u16).to_be_bytes());
        let (mut t_prev, mut delta_prev, mut v_prev) = (0i64, 0i64, 0u64);
        let (mut leading, mut trailing) = (0xffu8, 0u8);
        for (i, s) in samples[..n].iter().enumerate() {
            let v = s.v.to_bits();
            match i {
                0 => {
                    // Signed varint: zigzag.
                    w.uvarint(((s.t << 1) ^ (s.t >> 63)) as u64);
                    w.bits(v, 64);
                }
                1 => {
                    delta_prev = s.t.wrapping_sub(t_prev);
                    w.uvarint(delta_prev as u64);
                    xor_value(&mut w, v, v_prev, &mut leading, &mut trailing);
                }
                _ => {
                    let delta = s.t.wrapping_sub(t_prev);
                    let dod = delta.wrapping_sub(delta_prev);
                    if dod == 0 {
                        w.bit(false);
                    } else if fits(dod, 14) {
                        w.bits(0b10, 2);
                        w.bits(dod as u64 & ((1 << 14) - 1), 14);
                    } else if fits(dod, 17) {
                        w.bits(0b110, 3);
                        w.bits(dod as u64 & ((1 << 17) - 1), 17);
                    } else if fits(dod, 20) {
                        w.bits(0b1110, 4);
                        w.bits(dod as u64 & ((1 << 20) - 1), 20);
                    } else {
                        w.bits(0b1111, 4);
                        w.bits(dod as u64, 64);
                    }
                    delta_prev = delta;
                    xor_value(&mut w, v, v_prev, &mut leading, &mut trailing);
                }
            }
            t_prev = s.t;
            v_prev = v;
        }
        w.bytes
    }

    fn xor_value(w: &mut Bits, v: u64, prev: u64, leading: &mut u8, trailing: &mut u8) {
        let x = v ^ prev;
        if x == 0 {
            w.bit(false);
            return;
        }
        w.bit(true);
        let lead = (x.leading_zeros() as u8).min(31);
        let trail = x.trailing_zeros() as u8;
        if *leading != 0xff && lead >= *leading && trail >= *trailing {
            w.bit(false);
            w.bits(x >> *trailing, 64 - *leading as u32 - *trailing as u32);
            return;
        }
        *leading = lead;
        *trailing = trail;
        w.bit(true);
        w.bits(lead as u64, 5);
        let sig = 64 - lead as u32 - trail as u32;
        w.bits(sig as u64 & 63, 6);
        w.bits(x >> trail, sig);
    }

    /// Decodes a chunk: the reader's side of the same description, for tests and tools.
    pub fn decode(b: &[u8]) -> Option<Vec<Sample>> {
        let n = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        let mut r = Reader { b: &b[2..], pos: 0 };
        let mut out = Vec::with_capacity(n);
        let (mut t, mut delta, mut v) = (0i64, 0i64, 0u64);
        let (mut leading, mut trailing) = (0u32, 0u32);
        for i in 0..n {
            match i {
                0 => {
                    let z = r.uvarint()?;
                    t = ((z >> 1) as i64) ^ -((z & 1) as i64);
                    v = r.bits(64)?;
                }
                _ => {
                    if i == 1 {
                        delta = r.uvarint()? as i64;
                    } else {
                        let mut prefix = 0;
                        while prefix < 4 && r.bit()? {
                            prefix += 1;
                        }
                        let width = [0, 14, 17, 20, 64][prefix];
                        let dod = if width == 0 {
                            0
                        } else {
                            let raw = r.bits(width)?;
                            if width < 64 && raw > 1 << (width - 1) {
                                raw as i64 - (1i64 << width)
                            } else {
                                raw as i64
                            }
                        };
                        delta = delta.wrapping_add(dod);
                    }
                    t = t.wrapping_add(delta);
                    if r.bit()? {
                        if r.bit()? {
                            leading = r.bits(5)? as u32;
                            let mut sig = r.bits(6)? as u32;
                            if sig == 0 {
                                sig = 64;
                            }
                            trailing = 64 - leading - sig;
                        }
                        let sig = 64 - leading - trailing;
                        v ^= r.bits(sig)? << trailing;
                    }
                }
            }
            out.push(Sample {
                t,
                v: f64::from_bits(v),
            });
        }
        Some(out)
    }

    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn bit(&mut self) -> Option<bool> {
            let byte = *self.b.get(self.pos / 8)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1 == 1;
            self.pos += 1;
            Some(bit)
        }

        fn bits(&mut self, n: u32) -> Option<u64> {
            let mut v = 0u64;
            for _ in 0..n {
                v = (v << 1) | self.bit()? as u64;
            }
            Some(v)
        }

        fn uvarint(&mut self) -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = self.bits(8)?;
                v |= (b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn known_bytes_of_a_small_chunk() {
            // Worked by hand from the description: t0 = 1000 → zigzag 2000 → varint d0 0f;
            // v0 = 1.0 → 3ff0000000000000; t1 = 2000 → delta 1000 → e8 07; v1 = 1.0 → bit 0;
            // t2 = 3000 → dod 0 → bit 0; v2 = 2.0 → xor 0x7ff0…0 (lead 1, trail 52, sig 11):
            // bits 1 1 00001 001011 11111111111.
            let s = [
                Sample { t: 1000, v: 1.0 },
                Sample { t: 2000, v: 1.0 },
                Sample { t: 3000, v: 2.0 },
            ];
            let got = encode(&s);
            let mut want = vec![0x00, 0x03, 0xd0, 0x0f];
            want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
            want.extend_from_slice(&[0xe8, 0x07]);
            // 0 0 1 1 00001 001011 11111111111 → 0011 0000 1001 0111 1111 1111 11(000000)
            want.extend_from_slice(&[0x30, 0x97, 0xff, 0xc0]);
            assert_eq!(got, want);
        }

        #[test]
        fn round_trips_every_kind_of_value_and_gap() {
            let mut s = Vec::new();
            let mut t = -5_000i64;
            let values = [
                0.0,
                -0.0,
                1.0,
                1.5,
                f64::NAN,
                f64::from_bits(crate::model::STALE_NAN),
                f64::INFINITY,
                1e300,
                -3.25e-200,
                42.0,
                42.0,
                7.0,
            ];
            for (i, v) in values.iter().cycle().take(300).enumerate() {
                t += [1, 15_000, 15_001, 14_990, 70_000, 1 << 40, 3][i % 7];
                s.push(Sample { t, v: *v });
            }
            for chunk in s.chunks(120) {
                let back = decode(&encode(chunk)).unwrap();
                assert_eq!(back.len(), chunk.len());
                for (a, b) in back.iter().zip(chunk) {
                    assert_eq!(a.t, b.t);
                    assert_eq!(a.v.to_bits(), b.v.to_bits());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_encoded_in_pieces_as_prost_encodes_it_whole() {
        let labels = vec![Label {
            name: "__name__".into(),
            value: "m".into(),
        }];
        for n in [0usize, 1, 4096, 10_001] {
            let samples: Vec<Sample> = (0..n)
                .map(|k| Sample {
                    t: k as i64 * 15_000 - 7,
                    v: if k % 3 == 0 { k as f64 } else { -0.5 },
                })
                .collect();
            let mut got = Vec::new();
            futures_lite::future::block_on(encode_series(
                &labels,
                &samples,
                &mut got,
                &mut Slicer::none(),
            ));
            let ts = pb::TimeSeries::new(
                labels.clone(),
                samples
                    .iter()
                    .map(|x| PbSample {
                        value: x.v,
                        timestamp: x.t,
                    })
                    .collect(),
            );
            let mut want = Vec::new();
            prost::encoding::message::encode(1, &ts, &mut want);
            assert!(got == want, "{n} samples");
        }
    }

    #[test]
    fn a_request_decodes_a_query_at_a_time_as_prost_decodes_it_whole() {
        let query = |i: i64| pb::Query {
            start_timestamp_ms: i,
            end_timestamp_ms: i + 1000,
            matchers: vec![pb::LabelMatcher {
                r#type: 0,
                name: "__name__".into(),
                value: format!("m{i}"),
            }],
            hints: None,
        };
        let rr = pb::ReadRequest {
            queries: (0..50).map(query).collect(),
            accepted_response_types: vec![1, 0],
        };
        let raw = rr.encode_to_vec();
        let got = futures_lite::future::block_on(decode_request(&raw, &mut Slicer::none()));
        assert!(got.ok() == Some(rr.clone()));
        // Unpacked repeated enums, fields out of order, an unknown field: as prost reads them.
        let mut odd = Vec::new();
        prost::encoding::int32::encode(2, &1, &mut odd);
        prost::encoding::uint64::encode(9, &7, &mut odd);
        prost::encoding::message::encode(1, &query(5), &mut odd);
        prost::encoding::int32::encode(2, &0, &mut odd);
        let want = pb::ReadRequest::decode(&odd[..]).unwrap();
        let got = futures_lite::future::block_on(decode_request(&odd, &mut Slicer::none()));
        assert!(got.ok() == Some(want));
        // A truncated request is an error, as for prost.
        for cut in [1, 7, raw.len() / 2, raw.len() - 1] {
            let got =
                futures_lite::future::block_on(decode_request(&raw[..cut], &mut Slicer::none()));
            assert!(got.is_err(), "cut at {cut}");
            assert!(pb::ReadRequest::decode(&raw[..cut]).is_err());
        }
    }

    #[test]
    fn fragments_compressed_apart_form_one_snappy_block() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| {
                let x = i.wrapping_mul(2654435761);
                if i % 3 == 0 {
                    x.to_le_bytes()
                } else {
                    (i / 97).to_le_bytes()
                }
            })
            .collect();
        for len in [0, 1, 65_536, 65_537, data.len()] {
            let block = futures_lite::future::block_on(snappy_compress_in_slices(
                &data[..len],
                &mut Slicer::none(),
            ))
            .unwrap();
            let back = snap::raw::Decoder::new().decompress_vec(&block).unwrap();
            assert!(back == data[..len], "len {len}");
        }
    }

    #[test]
    fn external_label_equality_means_absent() {
        let ext = vec![Label {
            name: "site".into(),
            value: "greenhouse".into(),
        }];
        let m = |t, n: &str, v: &str| pb::LabelMatcher {
            r#type: t,
            name: n.into(),
            value: v.into(),
        };
        let got = to_matchers(
            &[
                m(0, "site", "greenhouse"),
                m(0, "job", "node"),
                m(2, "site", "green.*"),
            ],
            &ext,
        )
        .ok()
        .unwrap();
        assert!(got[0].matches(""));
        assert!(!got[0].matches("greenhouse"));
        assert!(got[1].matches("node"));
        assert!(got[2].matches("greenhouse"));
    }

    #[test]
    fn merged_labels_keep_the_series_own_value() {
        let ext = vec![
            Label {
                name: "instance".into(),
                value: "ext".into(),
            },
            Label {
                name: "site".into(),
                value: "g".into(),
            },
        ];
        let l = Labels::from_pairs(&[("__name__", "up"), ("instance", "own")]);
        let names: Vec<String> = merge_labels(&l, &ext)
            .into_iter()
            .map(|l| format!("{}={}", l.name, l.value))
            .collect();
        assert_eq!(names, ["__name__=up", "instance=own", "site=g"]);
    }

    #[test]
    fn frames_carry_length_and_castagnoli_crc() {
        let f = frame_bytes(b"123456789");
        assert_eq!(f[0], 9);
        // CRC-32C("123456789") = 0xe3069283, the standard check value.
        assert_eq!(&f[1..5], &[0xe3, 0x06, 0x92, 0x83]);
        assert_eq!(&f[5..], b"123456789");
    }
}
