//! The ingest endpoints: `POST /api/v1/write` (Prometheus remote write 1.0) and
//! `POST /api/v1/import/prometheus` (text-format lines, as VictoriaMetrics accepts them).
//!
//! Both decode the whole request into series with their samples, group the samples per series
//! (by [`Labels`]), sort each series by time (a timestamp seen twice in one request keeps one of
//! its samples) and hand everything to the store's import
//! ([`Storage::import_job`](crate::storage::Storage::import_job)), which also accepts samples
//! older than what the store holds. A request is written whole or not at all: any error
//! answers before anything is written.
//!
//! All of it runs in slices ([`crate::model::slice`]): decompressing (gzip), parsing or
//! decoding (series by series), grouping, sorting and the store's import yield to the executor
//! every couple of milliseconds, so a request of a million samples does not hold up scrapes.
//! Snappy blocks are decoded by [`super::snappy`], which works in steps (the `snap` crate
//! decodes a block only whole: 74 ms at the largest body allowed). The agent's imports are
//! compressed at the live flush's zstd level: level 19 (`perch import`'s) takes tens of
//! milliseconds per frame.
//!
//! Remote write follows Prometheus 2.42's receiver (`storage/remote/write_handler.go`): the body
//! is a snappy block (raw format, not framed) of a protobuf `prometheus.WriteRequest`; success is
//! `204 No Content`; a body that does not decompress or decode is `400` with a plain-text reason.
//! Differences, all on the strict side: a series without a metric name, with a label name that
//! is not `[a-zA-Z_][a-zA-Z0-9_]*` or with a label name twice is a `400` for the whole request
//! (2.42 fails such a request too, with a 500 from its head appender, or stores the series);
//! a `Content-Encoding` other than snappy or a `Content-Type` asking for another protobuf message
//! than `prometheus.WriteRequest` (remote write 2.0) is `415`, as newer Prometheus answers.
//! Exemplars, native histograms and metadata are decoded only as far as needed to skip them.
//!
//! The import endpoint takes the text format 0.0.4 as the scraper parses it
//! ([`TextParser`], so `# HELP`/`# TYPE` lines and comments are skipped), with optional integer
//! millisecond timestamps; a line without one gets the time the request was received (or the
//! `timestamp` query parameter, in ms, as VictoriaMetrics). The body may be gzip-compressed
//! (`Content-Encoding: gzip`). A line that does not parse is a `400` naming the line.
//!
//! Both take repeated `extra_label=name=value` query parameters (as VictoriaMetrics): the label is
//! set on every series, replacing a label of the same name (an empty value removes it).
//!
//! Bounds: the body is bounded by the server ([`super::http::Limits`]). The decompressed size is
//! bounded by [`MAX_DECOMPRESSED_BYTES`], checked before decompressing where the format says the
//! size up front (snappy) and while inflating (gzip). What the decoded request holds in memory is
//! bounded by [`MAX_DECODED_BYTES`]: for remote write a cheap walk over the protobuf wire format
//! estimates it before anything is allocated (a protobuf message can take many times its wire
//! size once decoded, e.g. an empty label is 2 bytes on the wire and a few dozen in memory);
//! for the import, parsing stops once it is exceeded. Past a bound the answer is `413`.
//! Nothing here panics on input.

use super::api::is_label_name;
use super::http::{Request, Response};
use crate::model::slice::{Slicer, StepSort, SLICE};
use crate::model::{Labels, LabelsBuilder, Sample, METRIC_NAME};
use crate::scrape::parse::{Entry, TextParser};
use std::collections::HashMap;
use std::io::Read;

/// Series, lines or chunks handled between two looks at the slice's clock.
const SLICE_CHECK_EVERY: u32 = 64;

/// The largest decompressed body accepted (remote write and gzip-compressed imports).
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// The most memory the decoded series and samples of one request may take (an estimate).
pub const MAX_DECODED_BYTES: usize = 128 << 20;

/// The remote-write messages, shared with the sender.
pub use crate::remote::pb;

/// Why an ingest request failed: each maps to a status and a plain-text reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// 400: the body is not what the endpoint takes.
    BadRequest(String),
    /// 413: the body decompresses or decodes to more than the bounds allow.
    TooLarge(String),
    /// 415: an encoding or message type the endpoint does not take.
    Unsupported(String),
    /// 500: the store failed.
    Storage(String),
}

impl IngestError {
    pub fn status(&self) -> u16 {
        match self {
            IngestError::BadRequest(_) => 400,
            IngestError::TooLarge(_) => 413,
            IngestError::Unsupported(_) => 415,
            IngestError::Storage(_) => 500,
        }
    }

    /// The answer, as Go's `http.Error` writes it: the reason and a newline.
    pub fn response(&self) -> Response {
        let (IngestError::BadRequest(m)
        | IngestError::TooLarge(m)
        | IngestError::Unsupported(m)
        | IngestError::Storage(m)) = self;
        Response::text(self.status(), format!("{m}\n"))
    }
}

/// The series of one request, ready for [`Storage::import`](crate::storage::Storage::import).
pub type Items = Vec<(Labels, Vec<Sample>)>;

/// What a decoded remote-write request held besides float samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub exemplars: usize,
    pub histograms: usize,
}

/// The `extra_label=name=value` query parameters, in order.
pub fn extra_labels(query: &str) -> Result<Vec<(String, String)>, IngestError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "extra_label" {
            continue;
        }
        let Some((n, val)) = v.split_once('=') else {
            return Err(IngestError::BadRequest(format!(
                "missing '=' in extra_label {v:?} (want extra_label=name=value)"
            )));
        };
        if !is_label_name(n) {
            return Err(IngestError::BadRequest(format!(
                "invalid label name {n:?} in extra_label"
            )));
        }
        out.push((n.to_owned(), val.to_owned()));
    }
    Ok(out)
}

/// Checks the remote-write request headers: the encoding must be snappy (or absent, as old
/// clients send it) and the message `prometheus.WriteRequest` (the 1.0 default).
pub fn check_remote_write_headers(req: &Request) -> Result<(), IngestError> {
    if let Some(enc) = req.header("content-encoding") {
        if !enc.trim().eq_ignore_ascii_case("snappy") {
            return Err(IngestError::Unsupported(format!(
                "{enc} encoding (compression) is not accepted by this server; only snappy is acceptable"
            )));
        }
    }
    if let Some(ct) = req.header("content-type") {
        let proto = ct
            .split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim() == "proto")
            .map(|(_, v)| v.trim());
        if let Some(p) = proto.filter(|p| *p != "prometheus.WriteRequest") {
            return Err(IngestError::Unsupported(format!(
                "{p} protobuf message is not accepted by this server; accepted [prometheus.WriteRequest]"
            )));
        }
    }
    Ok(())
}

/// Decompresses a snappy block, bounded by [`MAX_DECOMPRESSED_BYTES`] before allocating, in
/// one go.
pub fn snappy_decompress(body: &[u8]) -> Result<Vec<u8>, IngestError> {
    futures_lite::future::block_on(snappy_decompress_in_slices(body, &mut Slicer::none()))
}

/// As [`snappy_decompress`], 64 KiB of output at a time ([`super::snappy`]), with the slicer
/// consulted between.
pub async fn snappy_decompress_in_slices(
    body: &[u8],
    slicer: &mut Slicer,
) -> Result<Vec<u8>, IngestError> {
    let bad = |e: super::snappy::InflateError| IngestError::BadRequest(e.to_string());
    let len = super::snappy::decompressed_len(body).map_err(bad)?;
    if len > MAX_DECOMPRESSED_BYTES {
        return Err(IngestError::TooLarge(format!(
            "decompressed body of {len} bytes exceeds the limit of {MAX_DECOMPRESSED_BYTES} bytes"
        )));
    }
    let mut inflate = super::snappy::Inflate::new(body).map_err(bad)?;
    let chunk = if slicer.is_sliced() {
        64 << 10
    } else {
        usize::MAX
    };
    while !inflate.step(chunk).map_err(bad)? {
        slicer.pause().await;
    }
    Ok(inflate.finish())
}

/// Calls `f(field number, payload)` for each length-delimited field of one protobuf message and
/// skips the others; stops quietly at malformed input (the real decoder reports it).
fn each_field(mut b: &[u8], f: &mut dyn FnMut(u32, &[u8])) {
    use prost::encoding::{decode_key, decode_varint, WireType};
    while !b.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut b) else {
            return;
        };
        let skip = match wire {
            WireType::Varint => match decode_varint(&mut b) {
                Ok(_) => 0,
                Err(_) => return,
            },
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let Some(len) = decode_varint(&mut b)
                    .ok()
                    .and_then(|l| usize::try_from(l).ok())
                else {
                    return;
                };
                let Some(payload) = b.get(..len) else {
                    return;
                };
                f(tag, payload);
                len
            }
            WireType::StartGroup | WireType::EndGroup => return,
        };
        match b.get(skip..) {
            Some(rest) => b = rest,
            None => return,
        }
    }
}

/// An estimate of the memory one `TimeSeries` takes once decoded, from its wire format alone.
fn series_size(series: &[u8]) -> usize {
    use std::mem::size_of;
    let mut n = size_of::<pb::TimeSeries>();
    each_field(series, &mut |tag, payload| {
        let add = match tag {
            1 => size_of::<pb::Label>() + payload.len(),
            2 => size_of::<pb::Sample>(),
            _ => 0,
        };
        n = n.saturating_add(add);
    });
    n
}

/// Writes label pairs as `{a="1", b="2"}` for error messages (cut to a few hundred bytes).
fn pairs_text(pairs: &[pb::Label]) -> String {
    let mut s = String::from("{");
    for (i, l) in pairs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&l.name);
        s.push_str("=\"");
        let _ = crate::model::write_escaped(&mut s, &l.value);
        s.push('"');
        if s.len() > 300 {
            s.push_str(", …");
            break;
        }
    }
    s.push('}');
    s
}

/// The labels of one remote-write series, checked: label names valid and unique, a metric name.
fn series_labels(
    mut pairs: Vec<pb::Label>,
    extra: &[(String, String)],
) -> Result<Labels, IngestError> {
    pairs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = pairs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(IngestError::BadRequest(format!(
            "invalid labels for series {}: duplicated label {}",
            pairs_text(&pairs),
            w[0].name
        )));
    }
    if let Some(l) = pairs.iter().find(|l| !is_label_name(&l.name)) {
        return Err(IngestError::BadRequest(format!(
            "invalid label name {:?} in series {}",
            l.name,
            pairs_text(&pairs)
        )));
    }
    let mut b = LabelsBuilder::new();
    for l in &pairs {
        b.set(&l.name, &l.value);
    }
    for (n, v) in extra {
        b.set(n, v);
    }
    let labels = b.take();
    if labels.metric_name().is_empty() {
        return Err(IngestError::BadRequest(format!(
            "invalid series {}: no metric name",
            pairs_text(&pairs)
        )));
    }
    Ok(labels)
}

/// Sorts each series by time (one sample per timestamp is kept) and the series by labels.
async fn finish(mut items: Items, slicer: &mut Slicer) -> Items {
    for (_, samples) in &mut items {
        slicer.tick().await;
        if !samples.windows(2).all(|w| w[0].t < w[1].t) {
            samples.sort_by_key(|s| s.t);
            samples.dedup_by_key(|s| s.t);
        }
    }
    // Similar series side by side compress better; new series get ids in this order.
    sort_by_labels(items, slicer).await
}

/// Sorts series by their labels, in slices.
async fn sort_by_labels(items: Items, slicer: &mut Slicer) -> Items {
    let mut sort = StepSort::new(items);
    while !sort.run(|a, b| a.0.cmp(&b.0), || slicer.is_up()) {
        slicer.next_slice().await;
    }
    sort.take()
}

/// One field of a protobuf message.
struct Field<'a> {
    tag: u32,
    wire: prost::encoding::WireType,
    /// The payload of a length-delimited field (empty for the others).
    payload: &'a [u8],
}

/// The next field of a protobuf message (the others' payloads are skipped). Errors read as
/// `prost`'s.
fn next_field<'a>(b: &mut &'a [u8]) -> Result<Option<Field<'a>>, String> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    if b.is_empty() {
        return Ok(None);
    }
    let (tag, wire) = decode_key(b).map_err(|e| e.to_string())?;
    if wire != WireType::LengthDelimited {
        skip_field(wire, tag, b, DecodeContext::default()).map_err(|e| e.to_string())?;
        return Ok(Some(Field {
            tag,
            wire,
            payload: &[],
        }));
    }
    let underflow = || "failed to decode Protobuf message: buffer underflow".to_owned();
    let len = decode_varint(b).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|_| underflow())?;
    let Some(payload) = b.get(..len) else {
        return Err(underflow());
    };
    *b = &b[len..];
    Ok(Some(Field { tag, wire, payload }))
}

/// Decodes a remote-write body (snappy-compressed `WriteRequest`) into series grouped and
/// sorted for import, in one go.
pub fn decode_remote_write(
    body: &[u8],
    extra: &[(String, String)],
) -> Result<(Items, Dropped), IngestError> {
    futures_lite::future::block_on(decode_remote_write_in_slices(
        body,
        extra,
        &mut Slicer::none(),
    ))
}

/// As [`decode_remote_write`], in slices of `slicer`: the series are decoded one at a time
/// (the request is walked field by field, as `prost` would, with the same errors), grouped and
/// sorted with yields between. Only decompressing is one piece: snappy inflates the largest
/// body allowed ([`MAX_DECOMPRESSED_BYTES`]) in tens of milliseconds.
pub async fn decode_remote_write_in_slices(
    body: &[u8],
    extra: &[(String, String)],
    slicer: &mut Slicer,
) -> Result<(Items, Dropped), IngestError> {
    use prost::encoding::WireType;
    use prost::Message;
    let raw = snappy_decompress_in_slices(body, slicer).await?;
    let bad = |e: String| IngestError::BadRequest(e);
    // What the decoded series take, estimated from the wire before each is decoded.
    let mut size = 0usize;
    let mut dropped = Dropped::default();
    let mut by_series: HashMap<Labels, Vec<Sample>> = HashMap::new();
    let mut rest = raw.as_slice();
    while let Some(Field { tag, wire, payload }) = next_field(&mut rest).map_err(bad)? {
        slicer.tick().await;
        if tag != 1 && tag != 3 {
            continue;
        }
        let field = if tag == 1 { "timeseries" } else { "metadata" };
        if wire != WireType::LengthDelimited {
            return Err(bad(format!(
                "failed to decode Protobuf message: WriteRequest.{field}: invalid wire type: {wire:?} (expected LengthDelimited)"
            )));
        }
        if tag == 3 {
            // Skipped, but checked as the whole request's decode would check it.
            pb::Ignored::decode(payload).map_err(|e| bad(e.to_string()))?;
            continue;
        }
        size = size.saturating_add(series_size(payload));
        if size > MAX_DECODED_BYTES {
            return Err(IngestError::TooLarge(format!(
                "the request decodes to more than the limit of {MAX_DECODED_BYTES} bytes"
            )));
        }
        let ts = pb::TimeSeries::decode(payload).map_err(|e| bad(e.to_string()))?;
        dropped.exemplars += ts.exemplars.len();
        dropped.histograms += ts.histograms.len();
        let labels = series_labels(ts.labels, extra)?;
        if ts.samples.is_empty() {
            continue;
        }
        let samples = ts.samples.iter().map(|s| Sample {
            t: s.timestamp,
            v: s.value,
        });
        by_series.entry(labels).or_default().extend(samples);
    }
    drop(raw);
    let mut items = Vec::with_capacity(by_series.len());
    for item in by_series {
        slicer.tick().await;
        items.push(item);
    }
    Ok((finish(items, slicer).await, dropped))
}

/// Inflates a gzip body (all members), bounded by [`MAX_DECOMPRESSED_BYTES`], in one go.
pub fn gunzip(body: &[u8]) -> Result<Vec<u8>, IngestError> {
    futures_lite::future::block_on(gunzip_in_slices(body, &mut Slicer::none()))
}

/// As [`gunzip`], 64 KiB of output at a time, with the slicer ticked between.
pub async fn gunzip_in_slices(body: &[u8], slicer: &mut Slicer) -> Result<Vec<u8>, IngestError> {
    const CHUNK: usize = 64 << 10;
    let mut out = Vec::new();
    let mut gz = flate2::read::MultiGzDecoder::new(body).take(MAX_DECOMPRESSED_BYTES as u64 + 1);
    loop {
        let at = out.len();
        out.resize(at + CHUNK, 0);
        let n = gz
            .read(&mut out[at..])
            .map_err(|e| IngestError::BadRequest(format!("gzip: {e}")))?;
        out.truncate(at + n);
        if n == 0 {
            break;
        }
        if out.len() > MAX_DECOMPRESSED_BYTES {
            return Err(IngestError::TooLarge(format!(
                "decompressed body exceeds the limit of {MAX_DECOMPRESSED_BYTES} bytes"
            )));
        }
        // Each chunk is about 0.1–0.3 ms of inflating: the clock is read every time.
        slicer.pause().await;
    }
    Ok(out)
}

/// Line `n` (1-based) of `body`, cut to a readable length, for error messages.
fn line_text(body: &[u8], n: usize) -> String {
    let line = body
        .split(|&c| c == b'\n')
        .nth(n.saturating_sub(1))
        .unwrap_or_default();
    let cut = line.get(..120).unwrap_or(line);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < line.len() {
        s.push('…');
    }
    s
}

/// Parses an import body (text format 0.0.4) into series grouped and sorted for import; lines
/// without a timestamp get `default_t` (ms). In one go.
pub fn parse_import(
    body: &[u8],
    default_t: i64,
    extra: &[(String, String)],
) -> Result<Items, IngestError> {
    futures_lite::future::block_on(parse_import_in_slices(
        body,
        default_t,
        extra,
        &mut Slicer::none(),
    ))
}

/// As [`parse_import`], in slices of `slicer`.
pub async fn parse_import_in_slices(
    body: &[u8],
    default_t: i64,
    extra: &[(String, String)],
    slicer: &mut Slicer,
) -> Result<Items, IngestError> {
    let bad = |e: crate::scrape::parse::ParseError| {
        IngestError::BadRequest(format!(
            "cannot parse line {}: {} (line: {:?})",
            e.line,
            e.kind,
            line_text(body, e.line)
        ))
    };
    let mut parser = TextParser::new(body);
    let mut items: Items = Vec::new();
    // The raw `name{labels}` text of a line to its series, to parse each series' labels once.
    let mut by_text: HashMap<&[u8], usize> = HashMap::new();
    let mut pairs = Vec::new();
    let mut size = 0usize;
    loop {
        slicer.tick().await;
        let Some(entry) = parser.next_entry() else {
            break;
        };
        let s = match entry {
            Ok(Entry::Sample(s)) => s,
            Ok(_) => continue,
            Err(e) => return Err(bad(e)),
        };
        let i = match by_text.get(s.series) {
            Some(&i) => i,
            None => {
                s.parse_labels(&mut pairs).map_err(bad)?;
                let mut b = LabelsBuilder::new();
                for (n, v) in &pairs {
                    b.set(n, v);
                }
                b.set(METRIC_NAME, s.name);
                for (n, v) in extra {
                    b.set(n, v);
                }
                let labels = b.take();
                if labels.metric_name().is_empty() {
                    return Err(IngestError::BadRequest(format!(
                        "extra_label removes the metric name of {}",
                        s.name
                    )));
                }
                size = size.saturating_add(
                    labels.heap_bytes() + s.series.len() + 4 * std::mem::size_of::<usize>(),
                );
                items.push((labels, Vec::new()));
                by_text.insert(s.series, items.len() - 1);
                items.len() - 1
            }
        };
        size = size.saturating_add(std::mem::size_of::<Sample>());
        if size > MAX_DECODED_BYTES {
            return Err(IngestError::TooLarge(format!(
                "the request holds more samples than fit in {MAX_DECODED_BYTES} bytes; split it"
            )));
        }
        if let Some((_, samples)) = items.get_mut(i) {
            samples.push(Sample {
                t: s.timestamp.unwrap_or(default_t),
                v: s.value,
            });
        }
    }
    drop(by_text);
    // Lines may spell one series differently (label order, a trailing comma): merge them.
    let items = sort_by_labels(items, slicer).await;
    let mut merged: Items = Vec::with_capacity(items.len());
    for (labels, samples) in items {
        slicer.tick().await;
        match merged.last_mut() {
            Some((l, s)) if *l == labels => s.extend(samples),
            _ => merged.push((labels, samples)),
        }
    }
    Ok(finish(merged, slicer).await)
}

/// The `timestamp` query parameter of the import (ms), if given.
pub fn import_timestamp(query: &str) -> Result<Option<i64>, IngestError> {
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "timestamp") {
        None => Ok(None),
        Some((_, v)) if v.is_empty() => Ok(None),
        Some((_, v)) => v.parse::<i64>().map(Some).map_err(|_| {
            IngestError::BadRequest(format!(
                "invalid timestamp {v:?} (want integer milliseconds since the epoch)"
            ))
        }),
    }
}

impl super::WebState {
    /// `POST /api/v1/write`. Decoded and written in slices ([`crate::model::slice`]), so a
    /// big request does not hold up scrapes.
    pub(super) async fn remote_write(&self, req: &Request) -> Response {
        let mut slicer = Slicer::new(Some(SLICE), SLICE_CHECK_EVERY);
        let r = async {
            check_remote_write_headers(req)?;
            let extra = extra_labels(&req.query)?;
            let (items, dropped) =
                decode_remote_write_in_slices(&req.body, &extra, &mut slicer).await?;
            if dropped != Dropped::default() {
                log::debug!(
                    "remote write: dropped {} exemplars and {} native histogram samples",
                    dropped.exemplars,
                    dropped.histograms
                );
            }
            self.import(items).await
        }
        .await;
        match r {
            Ok(()) => Response::no_content(),
            Err(e) => {
                log::debug!("remote write: {e:?}");
                e.response()
            }
        }
    }

    /// `POST /api/v1/import/prometheus`, in slices as [`Self::remote_write`].
    pub(super) async fn import_prometheus(&self, req: &Request, now_ms: i64) -> Response {
        let mut slicer = Slicer::new(Some(SLICE), SLICE_CHECK_EVERY);
        let r = async {
            let extra = extra_labels(&req.query)?;
            let t = import_timestamp(&req.query)?.unwrap_or(now_ms);
            let gz;
            let body = match req.header("content-encoding").map(str::trim) {
                None | Some("") => req.body.as_slice(),
                Some(e) if e.eq_ignore_ascii_case("gzip") => {
                    gz = gunzip_in_slices(&req.body, &mut slicer).await?;
                    gz.as_slice()
                }
                Some(e) if e.eq_ignore_ascii_case("identity") => req.body.as_slice(),
                Some(e) => {
                    return Err(IngestError::Unsupported(format!(
                        "unsupported Content-Encoding {e:?}; only gzip is accepted"
                    )))
                }
            };
            let items = parse_import_in_slices(body, t, &extra, &mut slicer).await?;
            self.import(items).await
        }
        .await;
        match r {
            Ok(()) => Response::no_content(),
            Err(e) => e.response(),
        }
    }

    /// Writes `items` through the store's import job, a slice at a time.
    async fn import(&self, items: Items) -> Result<(), IngestError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut job = self.storage.import_job(items);
        crate::storage::import_in_slices(&mut *job)
            .await
            .map(|_| ())
            .map_err(|e| IngestError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::time::Duration;

    fn label(n: &str, v: &str) -> pb::Label {
        pb::Label {
            name: n.into(),
            value: v.into(),
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> pb::TimeSeries {
        pb::TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples: samples
                .iter()
                .map(|&(t, v)| pb::Sample {
                    value: v,
                    timestamp: t,
                })
                .collect(),
            exemplars: Vec::new(),
            histograms: Vec::new(),
        }
    }

    fn body(ts: Vec<pb::TimeSeries>) -> Vec<u8> {
        let req = pb::WriteRequest {
            timeseries: ts,
            metadata: Vec::new(),
        };
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    fn status(r: Result<(Items, Dropped), IngestError>) -> u16 {
        r.map(|_| 204).unwrap_or_else(|e| e.status())
    }

    /// Runs `f` to the end on an executor beside a task that counts how often it got to run.
    fn run_counting<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
        let ex = async_executor::LocalExecutor::new();
        let ran = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let counter = {
            let ran = ran.clone();
            ex.spawn(async move {
                loop {
                    ran.set(ran.get() + 1);
                    futures_lite::future::yield_now().await;
                }
            })
        };
        let out = futures_lite::future::block_on(ex.run(f));
        drop(counter);
        (out, ran.get())
    }

    #[test]
    fn decoding_in_slices_yields_and_gives_what_one_go_gives() {
        // Series out of label order, some split in two, samples out of time order.
        let mut ts = Vec::new();
        for i in (0..3000).rev() {
            let name = format!("m{}", i % 7);
            let id = i.to_string();
            let l = [("__name__", name.as_str()), ("i", id.as_str())];
            ts.push(series(&l, &[(2000, i as f64), (1000, 0.5)]));
            if i % 5 == 0 {
                ts.push(series(&l, &[(3000, 3.0)]));
            }
        }
        let b = body(ts);
        let whole = decode_remote_write(&b, &[]).unwrap();
        let (sliced, ran) = run_counting(async {
            let mut slicer = Slicer::new(Some(Duration::ZERO), 1);
            decode_remote_write_in_slices(&b, &[], &mut slicer).await
        });
        assert_eq!(sliced.unwrap(), whole);
        assert!(ran > 3000, "{ran}");

        let text: String = (0..3000)
            .rev()
            .map(|i| format!("m{}{{i=\"{i}\"}} {i} {}\n", i % 7, 1000 + i % 3))
            .collect();
        let whole = parse_import(text.as_bytes(), 0, &[]).unwrap();
        let (sliced, ran) = run_counting(async {
            let mut slicer = Slicer::new(Some(Duration::ZERO), 1);
            parse_import_in_slices(text.as_bytes(), 0, &[], &mut slicer).await
        });
        assert_eq!(sliced.unwrap(), whole);
        assert!(ran > 3000, "{ran}");

        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(text.repeat(10).as_bytes()).unwrap();
        let gz = z.finish().unwrap();
        let (sliced, ran) = run_counting(async {
            let mut slicer = Slicer::new(Some(Duration::ZERO), 1);
            gunzip_in_slices(&gz, &mut slicer).await
        });
        assert_eq!(sliced.unwrap(), text.repeat(10).as_bytes());
        assert!(ran >= text.len() * 10 / (64 << 10), "{ran}");
    }

    #[test]
    fn a_malformed_metadata_field_is_a_400_as_the_whole_decode_gives() {
        let good = pb::WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1000, 1.0)])],
            metadata: Vec::new(),
        }
        .encode_to_vec();
        // Field 3 (metadata), length-delimited, holding a truncated varint.
        let mut bad = good.clone();
        bad.extend_from_slice(&[0x1a, 0x02, 0x08, 0x80]);
        assert!(pb::WriteRequest::decode(bad.as_slice()).is_err());
        for raw in [&good, &bad] {
            let b = snap::raw::Encoder::new().compress_vec(raw).unwrap();
            let whole = pb::WriteRequest::decode(raw.as_slice()).is_ok();
            assert_eq!(status(decode_remote_write(&b, &[])) == 204, whole);
        }
    }

    #[test]
    fn round_trip_groups_sorts_and_dedups() {
        let b = body(vec![
            series(
                &[("job", "a"), ("__name__", "up"), ("empty", "")],
                &[(3000, 1.0), (1000, 0.5), (2000, f64::NAN)],
            ),
            series(&[("__name__", "x")], &[(5, 5e-324)]),
            // The same series again, out of order and with a duplicate timestamp.
            series(
                &[("__name__", "up"), ("job", "a")],
                &[(1500, 7.0), (3000, 9.0)],
            ),
            // No samples: not written.
            series(&[("__name__", "none")], &[]),
        ]);
        let (items, dropped) = decode_remote_write(&b, &[]).unwrap();
        assert_eq!(dropped, Dropped::default());
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].0,
            Labels::from_pairs(&[("__name__", "up"), ("job", "a")])
        );
        let got: Vec<(i64, u64)> = items[0].1.iter().map(|s| (s.t, s.v.to_bits())).collect();
        let want: Vec<(i64, u64)> = [(1000, 0.5), (1500, 7.0), (2000, f64::NAN), (3000, 1.0)]
            .iter()
            .map(|&(t, v): &(i64, f64)| (t, v.to_bits()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(items[1].0.metric_name(), "x");
        assert_eq!(items[1].1[0].v.to_bits(), 1);
        // (-0.0 is not sent: proto3 omits a double equal to 0, in prost as in Prometheus's Go.)
    }

    #[test]
    fn staleness_markers_keep_their_bits() {
        let stale = f64::from_bits(crate::model::STALE_NAN);
        let b = body(vec![series(&[("__name__", "up")], &[(1, stale)])]);
        let (items, _) = decode_remote_write(&b, &[]).unwrap();
        assert!(crate::model::is_stale(items[0].1[0].v));
    }

    #[test]
    fn exemplars_histograms_and_metadata_are_skipped() {
        // Real content in the skipped fields: an exemplar with labels, a histogram with
        // varint, double and packed fields, metadata with strings.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Exemplar {
            #[prost(message, repeated, tag = "1")]
            labels: Vec<pb::Label>,
            #[prost(double, tag = "2")]
            value: f64,
            #[prost(int64, tag = "3")]
            timestamp: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Histogram {
            #[prost(uint64, tag = "1")]
            count_int: u64,
            #[prost(double, tag = "3")]
            sum: f64,
            #[prost(sint32, tag = "4")]
            schema: i32,
            #[prost(sint64, repeated, tag = "12")]
            positive_deltas: Vec<i64>,
            #[prost(int64, tag = "15")]
            timestamp: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct FullSeries {
            #[prost(message, repeated, tag = "1")]
            labels: Vec<pb::Label>,
            #[prost(message, repeated, tag = "2")]
            samples: Vec<pb::Sample>,
            #[prost(message, repeated, tag = "3")]
            exemplars: Vec<Exemplar>,
            #[prost(message, repeated, tag = "4")]
            histograms: Vec<Histogram>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Metadata {
            #[prost(int32, tag = "1")]
            kind: i32,
            #[prost(string, tag = "2")]
            family: String,
            #[prost(string, tag = "4")]
            help: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct FullRequest {
            #[prost(message, repeated, tag = "1")]
            timeseries: Vec<FullSeries>,
            #[prost(message, repeated, tag = "3")]
            metadata: Vec<Metadata>,
        }
        let req = FullRequest {
            timeseries: vec![
                FullSeries {
                    labels: vec![label("__name__", "c_total")],
                    samples: vec![pb::Sample {
                        value: 2.0,
                        timestamp: 10,
                    }],
                    exemplars: vec![Exemplar {
                        labels: vec![label("trace_id", "abc")],
                        value: 1.0,
                        timestamp: 9,
                    }],
                    histograms: Vec::new(),
                },
                FullSeries {
                    labels: vec![label("__name__", "h")],
                    samples: Vec::new(),
                    exemplars: Vec::new(),
                    histograms: vec![
                        Histogram {
                            count_int: 3,
                            sum: 1.5,
                            schema: -2,
                            positive_deltas: vec![1, -1, 2],
                            timestamp: 10,
                        };
                        2
                    ],
                },
            ],
            metadata: vec![Metadata {
                kind: 1,
                family: "c_total".into(),
                help: "A counter.".into(),
            }],
        };
        let b = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap();
        let (items, dropped) = decode_remote_write(&b, &[]).unwrap();
        assert_eq!(
            dropped,
            Dropped {
                exemplars: 1,
                histograms: 2
            }
        );
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].1, vec![Sample { t: 10, v: 2.0 }]);
    }

    #[test]
    fn bad_labels_are_rejected() {
        for labels in [
            &[("job", "a")][..],
            &[("__name__", "")],
            &[("__name__", "up"), ("job", "a"), ("job", "b")],
            &[("__name__", "up"), ("job", "a"), ("job", "")],
            &[("__name__", "up"), ("bad-name", "a")],
            &[("__name__", "up"), ("", "a")],
            &[("__name__", "up"), ("0x", "a")],
        ] {
            let r = decode_remote_write(&body(vec![series(labels, &[(1, 1.0)])]), &[]);
            assert_eq!(status(r), 400, "{labels:?}");
        }
        // Label names as Prometheus 2.42 has them are fine, in any order.
        let ok = body(vec![series(
            &[("zz", "1"), ("_a", "2"), ("__name__", "up"), ("A9_", "3")],
            &[(1, 1.0)],
        )]);
        assert_eq!(status(decode_remote_write(&ok, &[])), 204);
    }

    #[test]
    fn extra_labels_apply() {
        let extra =
            extra_labels("extra_label=env%3Dprod&x=1&extra_label=job=&extra_label=a==b").unwrap();
        assert_eq!(
            extra,
            [("env", "prod"), ("job", ""), ("a", "=b")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let b = body(vec![series(
            &[("__name__", "up"), ("job", "x")],
            &[(1, 1.0)],
        )]);
        let (items, _) = decode_remote_write(&b, &extra).unwrap();
        assert_eq!(
            items[0].0,
            Labels::from_pairs(&[("__name__", "up"), ("a", "=b"), ("env", "prod")])
        );
        for q in [
            "extra_label=noequals",
            "extra_label=bad-name=1",
            "extra_label==v",
        ] {
            assert_eq!(extra_labels(q).unwrap_err().status(), 400, "{q}");
        }
        // Removing the metric name is an error.
        let no_name = [("__name__".to_owned(), String::new())];
        assert_eq!(status(decode_remote_write(&b, &no_name)), 400);
    }

    #[test]
    fn bad_bodies_are_400_never_a_panic() {
        let good = body(vec![series(
            &[("__name__", "up"), ("job", "prometheus")],
            &[(1, 1.0), (2, 2.0)],
        )]);
        let raw = snap::raw::Decoder::new().decompress_vec(&good).unwrap();
        // Garbage, an empty body (a valid empty request), truncated bodies.
        assert_eq!(status(decode_remote_write(b"not snappy at all", &[])), 400);
        assert_eq!(status(decode_remote_write(&[0xff; 16], &[])), 400);
        for n in 0..good.len() {
            let s = status(decode_remote_write(&good[..n], &[]));
            assert!(s == 400 || (n == 0 && s == 204), "cut at {n}: {s}");
        }
        // Valid snappy around truncated or corrupt protobuf.
        let enc = |p: &[u8]| snap::raw::Encoder::new().compress_vec(p).unwrap();
        for n in 1..raw.len() {
            let r = decode_remote_write(&enc(&raw[..n]), &[]);
            assert!(matches!(status(r), 400 | 204), "protobuf cut at {n}");
        }
        assert_eq!(status(decode_remote_write(&enc(&[0x0a, 0x7f]), &[])), 400);
        assert_eq!(status(decode_remote_write(&enc(&[0xff; 12]), &[])), 400);
        // Invalid UTF-8 in a label value.
        let mut bad = pb::WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
            metadata: Vec::new(),
        }
        .encode_to_vec();
        let at = bad.iter().rposition(|&c| c == b'p').unwrap();
        bad[at] = 0xff;
        assert_eq!(status(decode_remote_write(&enc(&bad), &[])), 400);
        // Every single-byte corruption of the protobuf: an answer, never a panic.
        for i in 0..raw.len() {
            for x in [0x00, 0x80, 0xff, 0x08, 0x0a] {
                let mut r = raw.clone();
                r[i] = x;
                let _ = decode_remote_write(&enc(&r), &[]);
            }
        }
    }

    #[test]
    fn oversized_bodies_are_413() {
        // A snappy header claiming more than the bound: refused before allocating.
        let mut claim = Vec::new();
        let mut n = (MAX_DECOMPRESSED_BYTES + 1) as u64;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        claim.extend_from_slice(&[0; 8]);
        assert_eq!(status(decode_remote_write(&claim, &[])), 413);
        // Within the decompressed bound, but millions of empty labels: over the decoded bound.
        let empty_label = [0x0a, 0x00];
        let mut inner = Vec::new();
        for _ in 0..(4 << 20) {
            inner.extend_from_slice(&empty_label);
        }
        let mut msg = vec![0x0a];
        let mut len = inner.len() as u64;
        while len >= 0x80 {
            msg.push((len as u8) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(&inner);
        assert!(msg.len() < MAX_DECOMPRESSED_BYTES);
        let b = snap::raw::Encoder::new().compress_vec(&msg).unwrap();
        assert!(series_size(&inner) > MAX_DECODED_BYTES);
        assert_eq!(status(decode_remote_write(&b, &[])), 413);
        // A gzip bomb.
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![b'\n'; 1 << 20];
        for _ in 0..=(MAX_DECOMPRESSED_BYTES >> 20) {
            z.write_all(&zeros).unwrap();
        }
        let bomb = z.finish().unwrap();
        assert_eq!(gunzip(&bomb).unwrap_err().status(), 413);
        assert_eq!(gunzip(b"\x1f\x8b garbage").unwrap_err().status(), 400);
    }

    #[test]
    fn headers_as_prometheus_sends_them() {
        let mut req = Request {
            method: "POST".into(),
            headers: vec![
                ("Content-Encoding".into(), "snappy".into()),
                ("Content-Type".into(), "application/x-protobuf".into()),
                ("X-Prometheus-Remote-Write-Version".into(), "0.1.0".into()),
            ],
            ..Request::default()
        };
        assert!(check_remote_write_headers(&req).is_ok());
        req.headers[1].1 = "application/x-protobuf;proto=prometheus.WriteRequest".into();
        assert!(check_remote_write_headers(&req).is_ok());
        req.headers[1].1 = "application/x-protobuf;proto=io.prometheus.write.v2.Request".into();
        assert_eq!(check_remote_write_headers(&req).unwrap_err().status(), 415);
        req.headers[1].1 = "application/x-protobuf".into();
        req.headers[0].1 = "gzip".into();
        assert_eq!(check_remote_write_headers(&req).unwrap_err().status(), 415);
        req.headers.clear();
        assert!(check_remote_write_headers(&req).is_ok());
    }

    #[test]
    fn import_text_with_and_without_timestamps() {
        let text = b"# HELP a_total A counter.\n# TYPE a_total counter\n\
            a_total{x=\"1\",y=\"2\"} 3 2000\n\
            a_total{y=\"2\",x=\"1\"} 1 1000\n\
            a_total{x=\"1\",y=\"2\"} 9 1000\n\
            b 1.5e3\n\
            b NaN 5\n";
        let extra = [("env".to_owned(), "t".to_owned())];
        let items = parse_import(text, 7777, &extra).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].0,
            Labels::from_pairs(&[
                ("__name__", "a_total"),
                ("env", "t"),
                ("x", "1"),
                ("y", "2")
            ])
        );
        // Two lines for one timestamp: one is kept.
        let ts: Vec<i64> = items[0].1.iter().map(|s| s.t).collect();
        assert_eq!(ts, [1000, 2000]);
        assert_eq!(items[0].1[1].v, 3.0);
        assert_eq!(items[1].1.len(), 2);
        assert_eq!(items[1].1[0].t, 5);
        assert!(items[1].1[0].v.is_nan());
        assert_eq!(items[1].1[1], Sample { t: 7777, v: 1500.0 });
        assert_eq!(import_timestamp("timestamp=123").unwrap(), Some(123));
        assert_eq!(import_timestamp("a=b").unwrap(), None);
        assert_eq!(import_timestamp("timestamp=1.5").unwrap_err().status(), 400);
    }

    #[test]
    fn import_errors_name_the_line() {
        let e = parse_import(b"a 1\nb{x=\"1\"} oops\nc 3\n", 0, &[]).unwrap_err();
        let IngestError::BadRequest(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains("line 2") && m.contains("oops"), "{m}");
        let e = parse_import(b"a 1\nb{x=\"1\",x=\"2\"} 1\n", 0, &[]).unwrap_err();
        assert!(
            matches!(&e, IngestError::BadRequest(m) if m.contains("line 2")),
            "{e:?}"
        );
        for bad in [
            &b"a 1 2 3"[..],
            b"{x=\"1\"} 1",
            b"a{x=\"\xff\"} 1",
            b"a 1 1.5",
        ] {
            assert_eq!(parse_import(bad, 0, &[]).unwrap_err().status(), 400);
        }
        assert!(parse_import(b"", 0, &[]).unwrap().is_empty());
        // Every prefix of a valid body: an answer, never a panic.
        let text = b"# TYPE a gauge\na{x=\"1\\\"\"} 1 1\nb 2\n";
        for n in 0..text.len() {
            let _ = parse_import(&text[..n], 0, &[]);
        }
    }
}
