//! `GET|POST /api/v1/export`: the store's history as OpenMetrics text with timestamps, in
//! pages with a resumable cursor — the "pull later" path for a device that was offline.
//!
//! Parameters: `match[]` (repeatable; all series when absent), `start`/`end` (as the query API
//! reads them; everything when absent), `cursor` (from the previous page; the store's start when
//! absent) and `limit` (samples per page, about; default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]).
//!
//! Contract:
//! - Only flushed data is served (what a power cut cannot take back). A page holds whole block
//!   records in the order they were written, so the cursor is exact: a client that always calls
//!   again with the returned cursor sees every flushed sample once — no gap, no duplicate — also
//!   across Perch restarts (the cursor names a segment and an offset, both kept on disk). Data
//!   written later with an older timestamp (an import, a remote-write backfill) comes with the
//!   page that reaches its record.
//! - Headers: `Perch-Export-Cursor` (where the next page starts) and `Perch-Export-More` (`true`
//!   while records remain after it). The body is one OpenMetrics document per page (`# TYPE …
//!   unknown` per family, series sorted, timestamps in seconds, `# EOF`), loadable with `perch
//!   import` and `promtool tsdb create-blocks-from openmetrics`. Staleness markers are not
//!   written (OpenMetrics has no way to say one).
//! - A cursor whose data the ring already deleted gets `410 Gone` with an error saying so and,
//!   in `Perch-Export-Cursor`, where the oldest kept data starts: continuing from there is an
//!   explicit decision to accept the gap.
//! - The body is streamed in pieces of about 64 KiB, yielding between pieces; a page's samples
//!   are held decoded in memory (16 bytes each), which `limit` bounds.

use super::api::{self, ApiError, Params};
use super::expfmt;
use super::http::{BodyStream, Response};
use super::WebState;
use crate::model::slice::{Slicer, StepSort, SLICE};
use crate::model::{is_stale, Labels, Matcher, Sample};
use crate::storage::{Cursor, CursorRange, ExportError, ExportPage};

/// Samples per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 250_000;
/// The most samples a page may be asked to hold.
pub const MAX_LIMIT: usize = 10_000_000;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PIECE: usize = 64 << 10;

impl WebState {
    pub(super) async fn api_export(&self, p: &Params) -> Result<Response, ApiError> {
        let mut sets: Vec<Vec<Matcher>> = Vec::new();
        for s in p.all("match[]") {
            sets.push(api::parse_selector(s).map_err(ApiError::BadData)?);
        }
        if sets.is_empty() {
            sets.push(vec![Matcher::new(
                crate::model::MatchKind::Regex,
                "__name__",
                ".+",
            )
            .map_err(|e| ApiError::Internal(e.to_string()))?]);
        }
        let start = p.time("start", api::MIN_TIME)?;
        let end = p.time("end", api::MAX_TIME)?;
        if end < start {
            return Err(ApiError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        let cursor = match p.get("cursor").filter(|c| !c.is_empty()) {
            Some(c) => Some(
                c.parse::<Cursor>()
                    .map_err(|e| ApiError::BadData(format!("invalid parameter \"cursor\": {e}")))?,
            ),
            None => None,
        };
        let limit = match p.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n > 0 => n.min(MAX_LIMIT),
                _ => {
                    return Err(ApiError::BadData(format!(
                        "invalid parameter \"limit\": {l:?} is not a positive number of samples"
                    )))
                }
            },
            None => DEFAULT_LIMIT,
        };
        let range = CursorRange {
            from: cursor,
            until: None,
        };
        match self.export_in_slices(&sets, range, start, end, limit).await {
            Ok(page) => {
                let (next, more) = (page.next, page.more);
                Ok(
                    Response::streamed(200, CONTENT_TYPE, Box::new(OpenMetricsPage::sorted(page)))
                        .with_header("Perch-Export-Cursor", next.to_string())
                        .with_header("Perch-Export-More", more.to_string()),
                )
            }
            Err(ExportError::RotatedOut { from, oldest }) => {
                log::warn!("export from cursor {from}: its data has rotated out");
                let e = ExportError::RotatedOut { from, oldest };
                let mut body =
                    String::from("{\"status\":\"error\",\"errorType\":\"rotated_out\",\"error\":");
                super::json::string(&mut body, &e.to_string());
                body.push('}');
                Ok(
                    Response::json(410, body)
                        .with_header("Perch-Export-Cursor", oldest.to_string()),
                )
            }
            Err(ExportError::Unsupported) => {
                Err(ApiError::Unavailable(ExportError::Unsupported.to_string()))
            }
            Err(ExportError::Storage(e)) => Err(ApiError::Internal(e.to_string())),
        }
    }
}

impl WebState {
    /// One page of about `limit` samples, gathered in slices by the store's export job, then
    /// sorted by family in slices.
    async fn export_in_slices(
        &self,
        sets: &[Vec<Matcher>],
        range: CursorRange,
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> Result<ExportPage, ExportError> {
        let mut job = self.storage.export_job(sets, range, mint, maxt, limit);
        let page = loop {
            match job.step(Some(std::time::Instant::now() + SLICE))? {
                Some(page) => break page,
                None => futures_lite::future::yield_now().await,
            }
        };
        let mut slicer = Slicer::new(Some(SLICE), 256);
        let mut sort = StepSort::new(page.series);
        while !sort.run(page_order, || slicer.is_up()) {
            slicer.next_slice().await;
        }
        Ok(ExportPage {
            series: sort.take(),
            ..page
        })
    }
}

/// One page written as an OpenMetrics document, family by family, in pieces.
pub struct OpenMetricsPage {
    series: std::vec::IntoIter<(Labels, Vec<Sample>)>,
    last_name: String,
    done: bool,
}

/// Families must not interleave: by metric name first, then the label order.
fn page_order(a: &(Labels, Vec<Sample>), b: &(Labels, Vec<Sample>)) -> std::cmp::Ordering {
    a.0.metric_name()
        .cmp(b.0.metric_name())
        .then_with(|| a.0.cmp(&b.0))
}

impl OpenMetricsPage {
    pub fn new(mut page: ExportPage) -> Self {
        page.series.sort_by(page_order);
        Self::sorted(page)
    }

    /// A page whose series are in [`page_order`] already.
    fn sorted(page: ExportPage) -> Self {
        OpenMetricsPage {
            series: page.series.into_iter(),
            last_name: String::new(),
            done: false,
        }
    }
}

impl BodyStream for OpenMetricsPage {
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        if self.done {
            return None;
        }
        let mut out = String::with_capacity(PIECE + 4096);
        let mut line = String::with_capacity(256);
        while out.len() < PIECE {
            let Some((labels, samples)) = self.series.next() else {
                out.push_str("# EOF\n");
                self.done = true;
                break;
            };
            let name = labels.metric_name();
            if name.is_empty() {
                continue;
            }
            if name != self.last_name {
                out.push_str("# TYPE ");
                out.push_str(name);
                out.push_str(" unknown\n");
                self.last_name = name.to_owned();
            }
            line.clear();
            expfmt::series_name(&mut line, &labels, &[]);
            line.push(' ');
            for s in samples.iter().filter(|s| !is_stale(s.v)) {
                out.push_str(&line);
                expfmt::go_float(&mut out, s.v);
                out.push(' ');
                expfmt::om_timestamp(&mut out, s.t);
                out.push('\n');
            }
        }
        Some(Ok(out.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_one_openmetrics_document() {
        let page = ExportPage {
            series: vec![
                (
                    Labels::from_pairs(&[("__name__", "b"), ("job", "x")]),
                    vec![Sample { t: 1000, v: 1.0 }, Sample { t: 2500, v: 2.5 }],
                ),
                (
                    Labels::from_pairs(&[("__name__", "a")]),
                    vec![
                        Sample { t: 1000, v: 3.0 },
                        Sample {
                            t: 2000,
                            v: f64::from_bits(crate::model::STALE_NAN),
                        },
                    ],
                ),
            ],
            next: Cursor::default(),
            more: false,
        };
        let mut s = OpenMetricsPage::new(page);
        let mut body = Vec::new();
        while let Some(piece) = s.next_chunk() {
            body.extend(piece.unwrap());
        }
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "# TYPE a unknown\na 3 1\n# TYPE b unknown\nb{job=\"x\"} 1 1\nb{job=\"x\"} 2.5 2.5\n# EOF\n"
        );
    }
}
