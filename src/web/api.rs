//! The Prometheus HTTP API handlers (`/api/v1/...`).
//!
//! One error envelope ([`ApiError`]) and one mapping from engine errors to `errorType` and HTTP
//! status, as Prometheus: 400 `bad_data`, 422 `execution`, 503 `timeout`, 499 `canceled` (the
//! client went away while its query ran), 500 `internal`.
//! Bodies are written in Prometheus's exact JSON layout by [`super::json`].

use super::http::{ClientGone, Response};
use super::json;
use super::time::{parse_duration_param, parse_time};
use super::WebState;
use crate::model::slice::{Slicer, SLICE};
use crate::model::{Labels, Matcher};
use crate::promql::{QueryError, QueryResult, QueryStats, Value};
use crate::scrape::MetricMetadata;
use crate::storage::series_in_slices;
use futures_lite::FutureExt;
use std::fmt::Write;
use std::rc::Rc;

/// An API error: its `errorType` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadData(String),
    Execution(String),
    Timeout(String),
    /// The client closed the connection while its query ran.
    Canceled(String),
    Internal(String),
    /// Served with 500, as Prometheus does (e.g. the admin API when disabled).
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (u16, &'static str, &str) {
        match self {
            ApiError::BadData(m) => (400, "bad_data", m),
            ApiError::Execution(m) => (422, "execution", m),
            ApiError::Timeout(m) => (503, "timeout", m),
            ApiError::Canceled(m) => (STATUS_CLIENT_CLOSED, "canceled", m),
            ApiError::Internal(m) => (500, "internal", m),
            ApiError::Unavailable(m) => (500, "unavailable", m),
        }
    }

    /// The error envelope.
    pub fn response(&self) -> Response {
        let (status, kind, msg) = self.parts();
        let mut s = String::from("{\"status\":\"error\",\"errorType\":\"");
        s.push_str(kind);
        s.push_str("\",\"error\":");
        json::string(&mut s, msg);
        s.push('}');
        Response::json(status, s)
    }
}

/// Prometheus's status for a query whose client went away (nginx's "client closed request").
pub const STATUS_CLIENT_CLOSED: u16 = 499;

fn bad_param(name: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadData(format!("invalid parameter {name:?}: {msg}"))
}

/// Maps an engine error to its API error (one place, as in Prometheus's `returnAPIError`).
/// Prometheus names the `query` parameter in parse errors of instant queries only.
fn query_error(e: QueryError, instant: bool) -> ApiError {
    match e {
        QueryError::Parse(m) if instant => bad_param("query", m),
        QueryError::Parse(m) => ApiError::BadData(m),
        QueryError::Execution(m) => ApiError::Execution(m),
        QueryError::TooManySamples => ApiError::Execution(e.to_string()),
        QueryError::Storage(s) => ApiError::Internal(s.to_string()),
    }
}

/// The success envelope around `data`, with warnings where there are any.
pub fn success(data: &str, warnings: &[String]) -> Response {
    success_with_infos(data, warnings, &[])
}

/// The success envelope with warnings and infos (Prometheus 3's annotations), each omitted
/// when empty.
fn success_with_infos(data: &str, warnings: &[String], infos: &[String]) -> Response {
    let mut s = String::with_capacity(data.len() + 40);
    s.push_str(SUCCESS_HEAD);
    s.push_str(data);
    finish_success(s, warnings, infos)
}

/// What a success envelope starts with; its data follows.
const SUCCESS_HEAD: &str = "{\"status\":\"success\",\"data\":";

/// Ends a success envelope that `s` holds up to the end of its data: the warnings and infos,
/// then the closing brace.
fn finish_success(mut s: String, warnings: &[String], infos: &[String]) -> Response {
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if !list.is_empty() {
            s.push_str(",\"");
            s.push_str(key);
            s.push_str("\":");
            json::string_array(&mut s, list);
        }
    }
    s.push('}');
    Response::json(200, s)
}

/// The warning Prometheus adds when `limit` cut a list short.
const TRUNCATED: &str = "results truncated due to limit";

/// `limit` of labels, label values and series as Prometheus 3 reads it: absent or 0 means no
/// limit (`None`).
fn parse_limit(p: &Params) -> Result<Option<usize>, ApiError> {
    match p.get("limit") {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => Err(bad_param("limit", "limit must be non-negative")),
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            Err(_) => Err(bad_param(
                "limit",
                format!("strconv.Atoi: parsing {v:?}: invalid syntax"),
            )),
        },
    }
}

/// Cuts `items` to `limit`; returns the warnings to send.
fn truncate<T>(items: &mut Vec<T>, limit: Option<usize>) -> Vec<String> {
    match limit {
        Some(n) if items.len() > n => {
            items.truncate(n);
            vec![TRUNCATED.to_owned()]
        }
        _ => Vec::new(),
    }
}

/// Calls `f` with each series matching any of `sets` with samples in `[mint, maxt]`, listed in
/// slices (`series_in_slices`) and visited with a slicer: the label endpoints over many series.
async fn for_each_series(
    q: &dyn crate::storage::Querier,
    sets: &[Vec<Matcher>],
    mint: i64,
    maxt: i64,
    mut f: impl FnMut(&Labels),
) -> Result<(), ApiError> {
    let mut slicer = Slicer::new(Some(SLICE), 256);
    for m in sets {
        for labels in series_in_slices(q, m, mint, maxt)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
        {
            slicer.tick().await;
            f(&labels);
        }
    }
    Ok(())
}

/// A sorted list of names or values as the answer's data, cut to `limit` (with 2.42's warning),
/// freed with a slicer (a label may have 100k values).
async fn string_list(mut items: Vec<String>, limit: Option<usize>) -> Result<Response, ApiError> {
    let warnings = truncate(&mut items, limit);
    let mut data = String::new();
    json::string_array(&mut data, &items);
    Slicer::new(Some(SLICE), 1024).drop_all(items).await;
    Ok(success(&data, &warnings))
}

/// Form parameters with the first value of a name, as Go's `FormValue`.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(p: Vec<(String, String)>) -> Self {
        Params(p)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn time(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => parse_time(v)
                .map_err(|e| bad_param(name, format!("Invalid time value for '{name}': {e}"))),
        }
    }
}

/// Prometheus's `minTime`/`maxTime` for open ranges, in ms.
pub const MIN_TIME: i64 = -62_135_596_800_000 + 1;
pub const MAX_TIME: i64 = 253_402_300_799_000;

/// `{"resultType":…,"result":…` of a query answer, without the closing brace.
/// Writes a query's value; the slicer ticks per series and per point, so a big answer (about
/// 28 bytes a point) does not hold up scrapes while it is written.
async fn write_value(out: &mut String, v: &Value, slicer: &mut Slicer) {
    match v {
        Value::Scalar { t, v } => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            json::point(out, *t, *v);
        }
        Value::String { t, s } => {
            out.push_str("{\"resultType\":\"string\",\"result\":[");
            json::timestamp(out, *t);
            out.push(',');
            json::string(out, s);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                slicer.tick().await;
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                json::labels(out, &s.labels);
                out.push_str(",\"value\":");
                json::point(out, s.t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                slicer.tick().await;
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                json::labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, p) in s.samples.iter().enumerate() {
                    slicer.tick().await;
                    if j > 0 {
                        out.push(',');
                    }
                    json::point(out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
}

/// About how many bytes [`write_value`] writes for `v` (a capacity, not a bound).
fn size_hint(v: &Value) -> usize {
    match v {
        Value::Scalar { .. } => 32,
        Value::String { s, .. } => 32 + s.len(),
        Value::Vector(samples) => samples.len() * 160,
        Value::Matrix(series) => series.iter().map(|s| 128 + s.samples.len() * 28).sum(),
    }
}

/// `"stats":{…}` of a query answer, in 2.42's layout (`stats.BuiltinStats`). Perch's engine has
/// no query queue and no separate preparation or sorting phase: their timings are 0, and the
/// evaluation's wall time is the inner, the eval total and the exec total time.
fn write_stats(out: &mut String, elapsed: std::time::Duration, s: &QueryStats) {
    let secs = elapsed.as_secs_f64();
    let timings = [
        ("evalTotalTime", secs),
        ("resultSortTime", 0.0),
        ("queryPreparationTime", 0.0),
        ("innerEvalTime", secs),
        ("execQueueTime", 0.0),
        ("execTotalTime", secs),
    ];
    out.push_str("\"stats\":{\"timings\":{");
    for (i, (name, v)) in timings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":");
        json::number(out, *v);
    }
    let _ = write!(
        out,
        "}},\"samples\":{{\"totalQueryableSamples\":{},\"peakSamples\":{}}}}}",
        s.total_samples, s.peak_samples
    );
}

impl WebState {
    /// The effective timeout of a query: the `timeout` parameter, bounded by `--query.timeout`.
    fn query_timeout(&self, p: &Params) -> Result<std::time::Duration, ApiError> {
        let max = self.config().flags.query_timeout;
        match p.get("timeout") {
            None | Some("") => Ok(max),
            Some(v) => {
                let ms = parse_duration_param(v).map_err(|e| bad_param("timeout", e))?;
                Ok(std::time::Duration::from_millis(ms.max(0) as u64).min(max))
            }
        }
    }

    /// Runs a query raced against its timeout and its client going away (`gone`); whichever
    /// ends first drops the others, so an abandoned evaluation stops at its next yield.
    async fn run_query<F>(
        &self,
        p: &Params,
        fut: F,
        instant: bool,
        gone: ClientGone<'_>,
    ) -> Result<Response, ApiError>
    where
        F: std::future::Future<Output = Result<QueryResult, QueryError>>,
    {
        let timeout = self.query_timeout(p)?;
        let started = std::time::Instant::now();
        let res = async { fut.await.map_err(|e| query_error(e, instant)) }
            .or(async {
                crate::runtime::timer::sleep(timeout).await;
                Err(ApiError::Timeout(
                    "query timed out in expression evaluation".into(),
                ))
            })
            .or(async {
                gone.await;
                Err(ApiError::Canceled(
                    "query was canceled in expression evaluation".into(),
                ))
            })
            .await?;
        let elapsed = started.elapsed();
        // The answer is written straight into the envelope, sized for it up front.
        let mut out = String::with_capacity(256 + size_hint(&res.value));
        out.push_str(SUCCESS_HEAD);
        let mut slicer = Slicer::new(Some(SLICE), 1024);
        write_value(&mut out, &res.value, &mut slicer).await;
        // As 2.42: any non-empty `stats` asks for them; `all` would add per-step figures only
        // with `--enable-feature=promql-per-step-stats`, which Perch does not have.
        if p.get("stats").is_some_and(|v| !v.is_empty()) {
            out.push(',');
            write_stats(&mut out, elapsed, &res.stats);
        }
        out.push('}');
        let QueryResult {
            value,
            warnings,
            infos,
            ..
        } = res;
        // Freeing the label sets and points of 100k series at once held the executor for
        // tens of milliseconds: a series at a time, with ticks.
        match value {
            Value::Matrix(series) => slicer.drop_all(series).await,
            Value::Vector(samples) => slicer.drop_all(samples).await,
            _ => {}
        }
        Ok(finish_success(out, &warnings, &infos))
    }

    /// `/api/v1/query`
    pub async fn api_query(
        &self,
        p: &Params,
        now: i64,
        gone: ClientGone<'_>,
    ) -> Result<Response, ApiError> {
        let t = p.time("time", now)?;
        let q = p.get("query").unwrap_or("");
        let querier = self.storage.querier();
        self.run_query(p, self.engine.instant(&*querier, q, t), true, gone)
            .await
    }

    /// `/api/v1/query_range`
    pub async fn api_query_range(
        &self,
        p: &Params,
        gone: ClientGone<'_>,
    ) -> Result<Response, ApiError> {
        let start = match p.get("start") {
            Some(v) => parse_time(v).map_err(|e| bad_param("start", e))?,
            None => return Err(bad_param("start", "cannot parse \"\" to a valid timestamp")),
        };
        let end = match p.get("end") {
            Some(v) => parse_time(v).map_err(|e| bad_param("end", e))?,
            None => return Err(bad_param("end", "cannot parse \"\" to a valid timestamp")),
        };
        if end < start {
            return Err(bad_param(
                "end",
                "end timestamp must not be before start time",
            ));
        }
        let step =
            parse_duration_param(p.get("step").unwrap_or("")).map_err(|e| bad_param("step", e))?;
        if step <= 0 {
            return Err(bad_param(
                "step",
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end.saturating_sub(start) / step > 11_000 {
            return Err(ApiError::BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        let q = p.get("query").unwrap_or("");
        let querier = self.storage.querier();
        self.run_query(
            p,
            self.engine.range(&*querier, q, start, end, step),
            false,
            gone,
        )
        .await
    }

    /// The `match[]` selectors of a request, each as a list of matchers. Prometheus names the
    /// parameter in the error for `/series` only.
    fn match_sets(&self, p: &Params, name_param: bool) -> Result<Vec<Vec<Matcher>>, ApiError> {
        p.all("match[]")
            .into_iter()
            .map(|s| {
                parse_selector(s).map_err(|e| {
                    if name_param {
                        bad_param("match[]", e)
                    } else {
                        ApiError::BadData(e)
                    }
                })
            })
            .collect()
    }

    fn range(&self, p: &Params) -> Result<(i64, i64), ApiError> {
        Ok((p.time("start", MIN_TIME)?, p.time("end", MAX_TIME)?))
    }

    /// `/api/v1/labels`
    pub async fn api_labels(&self, p: &Params) -> Result<Response, ApiError> {
        let limit = parse_limit(p)?;
        let (mint, maxt) = self.range(p)?;
        let q = self.storage.querier();
        let mut sets = self.match_sets(p, false)?;
        if sets.is_empty() {
            if q.labels_from_index(mint, maxt) {
                // Sorted and distinct already.
                let found = q
                    .label_names(&[], mint, maxt)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                return string_list(found, limit).await;
            }
            sets.push(Vec::new());
        }
        let mut names = std::collections::BTreeSet::new();
        for_each_series(&*q, &sets, mint, maxt, |labels| {
            for l in labels {
                if !names.contains(&l.name) {
                    names.insert(l.name.clone());
                }
            }
        })
        .await?;
        string_list(names.into_iter().collect(), limit).await
    }

    /// `/api/v1/label/<name>/values`
    pub async fn api_label_values(&self, raw_name: &str, p: &Params) -> Result<Response, ApiError> {
        let name = label_name_from_path(raw_name)?;
        let name = name.as_str();
        let limit = parse_limit(p)?;
        let (mint, maxt) = self.range(p)?;
        let q = self.storage.querier();
        let mut sets = self.match_sets(p, false)?;
        if sets.is_empty() {
            if q.labels_from_index(mint, maxt) {
                // Sorted and distinct already.
                let found = q
                    .label_values(name, &[], mint, maxt)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                return string_list(found, limit).await;
            }
            sets.push(Vec::new());
        }
        let mut values = std::collections::BTreeSet::new();
        for_each_series(&*q, &sets, mint, maxt, |labels| {
            let v = labels.get(name);
            if !v.is_empty() && !values.contains(v) {
                values.insert(v.to_owned());
            }
        })
        .await?;
        string_list(values.into_iter().collect(), limit).await
    }

    /// `/api/v1/series`
    pub async fn api_series(&self, p: &Params) -> Result<Response, ApiError> {
        let limit = parse_limit(p)?;
        if p.all("match[]").is_empty() {
            return Err(ApiError::BadData("no match[] parameter provided".into()));
        }
        let (mint, maxt) = self.range(p)?;
        let sets = self.match_sets(p, true)?;
        let q = self.storage.querier();
        let mut slicer = Slicer::new(Some(SLICE), 256);
        // Each set's answer is sorted: one set (the usual case) is the answer as it is.
        let mut all: Vec<Labels> = Vec::new();
        for (k, m) in sets.iter().enumerate() {
            let found = series_in_slices(&*q, m, mint, maxt)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            if k == 0 {
                all = found;
                continue;
            }
            // Merged with what the sets before found, keeping one of each.
            let mut merged = Vec::with_capacity(all.len() + found.len());
            let (mut a, mut b) = (all.into_iter().peekable(), found.into_iter().peekable());
            loop {
                slicer.tick().await;
                let next = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) if x < y => a.next(),
                    (Some(x), Some(y)) if x > y => b.next(),
                    (Some(_), Some(_)) => {
                        b.next();
                        a.next()
                    }
                    (Some(_), None) => a.next(),
                    (None, Some(_)) => b.next(),
                    (None, None) => break,
                };
                merged.extend(next);
            }
            all = merged;
        }
        let warnings = truncate(&mut all, limit);
        let mut data = String::from("[");
        for (i, l) in all.iter().enumerate() {
            slicer.tick().await;
            if i > 0 {
                data.push(',');
            }
            json::labels(&mut data, l);
        }
        data.push(']');
        slicer.drop_all(all).await;
        Ok(success(&data, &warnings))
    }

    /// `/api/v1/targets`, as 2.42: `state` (`active`, `dropped`, `any` or empty; anything else
    /// lists neither) and `scrapePool` filter; pools in name order, targets in config order
    /// within a pool (2.42's order there is its map's); dropped targets with their discovered
    /// labels only.
    pub fn api_targets(&self, p: &Params) -> Result<Response, ApiError> {
        let state = p.get("state").unwrap_or("").to_ascii_lowercase();
        let pool = p.get("scrapePool").filter(|s| !s.is_empty());
        let in_pool = |job: &str| pool.is_none_or(|p| p == job);
        let mut s = String::from("{\"activeTargets\":[");
        if matches!(state.as_str(), "" | "any" | "active") {
            let mut active = self.scrape_status();
            // Stable: config order within a pool.
            active.sort_by(|a, b| a.borrow().target.job.cmp(&b.borrow().target.job));
            let mut first = true;
            for st in &active {
                let st = st.borrow();
                if !in_pool(&st.target.job) {
                    continue;
                }
                if !std::mem::take(&mut first) {
                    s.push(',');
                }
                write_active_target(&mut s, &st);
            }
        }
        s.push_str("],\"droppedTargets\":[");
        if matches!(state.as_str(), "" | "any" | "dropped") {
            let all = self.dropped_targets.borrow().clone();
            let mut dropped: Vec<_> = all.iter().filter(|d| in_pool(&d.job)).collect();
            dropped.sort_by(|a, b| a.job.cmp(&b.job));
            for (i, d) in dropped.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"discoveredLabels\":");
                json::labels(&mut s, &d.discovered_labels);
                s.push('}');
            }
        }
        s.push_str("]}");
        Ok(success(&s, &[]))
    }

    /// `/api/v1/status/buildinfo`
    pub fn api_buildinfo(&self) -> Result<Response, ApiError> {
        let mut s = String::from("{\"version\":");
        json::string(&mut s, env!("CARGO_PKG_VERSION"));
        s.push_str(",\"revision\":\"\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}");
        Ok(success(&s, &[]))
    }
}

/// One element of `activeTargets`, in 2.42's field order.
fn write_active_target(s: &mut String, st: &crate::scrape::TargetStatus) {
    s.push_str("{\"discoveredLabels\":");
    json::labels(s, &st.target.discovered_labels);
    s.push_str(",\"labels\":");
    json::labels(s, &st.target.labels);
    s.push_str(",\"scrapePool\":");
    json::string(s, &st.target.job);
    s.push_str(",\"scrapeUrl\":");
    json::string(s, &st.target.url());
    s.push_str(",\"globalUrl\":");
    json::string(s, &st.target.url());
    s.push_str(",\"lastError\":");
    json::string(s, &st.last_error);
    s.push_str(",\"lastScrape\":");
    let last = if st.last_scrape_ms == 0 {
        "0001-01-01T00:00:00Z".to_owned()
    } else {
        super::time::format_rfc3339(st.last_scrape_ms)
    };
    json::string(s, &last);
    let _ = write!(
        s,
        ",\"lastScrapeDuration\":{},\"health\":\"{}\",\"scrapeInterval\":",
        st.last_scrape_duration.as_secs_f64(),
        st.health.as_str()
    );
    json::string(s, &crate::config::format_duration(st.target.interval));
    s.push_str(",\"scrapeTimeout\":");
    json::string(s, &crate::config::format_duration(st.target.timeout));
    s.push('}');
}

/// Label names as Prometheus 2.42 accepts them: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(n: &str) -> bool {
    let mut c = n.bytes();
    matches!(c.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && c.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a series selector (`up{job="x"}`) into matchers, as `match[]` wants it.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, String> {
    // promql-parser checks a selector as part of a query, which Prometheus's selector parser
    // does not: give the API's own message for an all-empty selector, as Prometheus does.
    let empty = || "match[] must contain at least one non-empty matcher".to_owned();
    let out = crate::promql::selector_matchers(s).map_err(|e| match e {
        QueryError::Parse(m) | QueryError::Execution(m) => {
            if m.contains("at least one non-empty matcher") {
                empty()
            } else {
                m
            }
        }
        other => other.to_string(),
    })?;
    if out.iter().all(|m| m.matches_empty()) {
        return Err(empty());
    }
    Ok(out)
}

/// Decodes `%XX` escapes of a URL path segment; `None` for a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Undoes Prometheus's `U__` value-encoding escaping of a label name (`U__a_2e_b` is `a.b`,
/// `__` is `_`), as `model.UnescapeName` does; `None` if `s` is not validly escaped.
fn unescape_name(s: &str) -> Option<String> {
    let rest = s.strip_prefix("U__")?;
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '_' {
            if !(c.is_ascii_alphanumeric()) {
                return None;
            }
            out.push(c);
            continue;
        }
        let mut hex = String::new();
        loop {
            match chars.next()? {
                '_' => break,
                h if h.is_ascii_hexdigit() && hex.len() < 8 => hex.push(h),
                _ => return None,
            }
        }
        if hex.is_empty() {
            out.push('_');
        } else {
            out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
        }
    }
    Some(out)
}

/// The label name of `/api/v1/label/<name>/values`: percent-decoded, then `U__`-unescaped.
/// A plain name must be a classic label name, as in Prometheus 2.42; an escaped one may hold
/// any UTF-8, as in Prometheus 3.
fn label_name_from_path(raw: &str) -> Result<String, ApiError> {
    let invalid = |n: &str| ApiError::BadData(format!("invalid label name: {n:?}"));
    let name = percent_decode(raw).ok_or_else(|| invalid(raw))?;
    if name.starts_with("U__") {
        if let Some(n) = unescape_name(&name).filter(|n| !n.is_empty()) {
            return Ok(n);
        }
    }
    if is_label_name(&name) {
        Ok(name)
    } else {
        Err(invalid(&name))
    }
}

/// Whether an expression selects any series (Prometheus's `ExtractSelectors` is not empty).
fn has_selector(e: &promql_parser::parser::Expr) -> bool {
    use promql_parser::parser::Expr;
    match e {
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => true,
        Expr::Aggregate(a) => has_selector(&a.expr) || a.param.as_deref().is_some_and(has_selector),
        Expr::Unary(u) => has_selector(&u.expr),
        Expr::Binary(b) => has_selector(&b.lhs) || has_selector(&b.rhs),
        Expr::Paren(p) => has_selector(&p.expr),
        Expr::Subquery(s) => has_selector(&s.expr),
        Expr::Call(c) => c.args.args.iter().any(|a| has_selector(a)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
    }
}

/// `{"type":…,"help":…,"unit":…}`
fn write_metadata(out: &mut String, m: &MetricMetadata) {
    out.push('{');
    write_metadata_fields(out, m);
    out.push('}');
}

fn write_metadata_fields(out: &mut String, m: &MetricMetadata) {
    out.push_str("\"type\":");
    json::string(out, m.kind);
    out.push_str(",\"help\":");
    json::string(out, &m.help);
    out.push_str(",\"unit\":");
    json::string(out, &m.unit);
}

/// `limit` of the metadata endpoints as Prometheus 2.42 reads it: a negative one means none.
fn metadata_limit(p: &Params, name: &str) -> Result<Option<usize>, ApiError> {
    match p.get(name) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            Err(_) => Err(ApiError::BadData(format!("{name} must be a number"))),
        },
    }
}

impl WebState {
    /// `/api/v1/query_exemplars`: Perch stores no exemplars, so every valid query finds none.
    pub fn api_query_exemplars(&self, p: &Params) -> Result<Response, ApiError> {
        let start = p.time("start", MIN_TIME)?;
        let end = p.time("end", MAX_TIME)?;
        if end < start {
            return Err(ApiError::BadData(
                "end timestamp must not be before start timestamp".into(),
            ));
        }
        let expr = promql_parser::parser::parse(p.get("query").unwrap_or(""))
            .map_err(ApiError::BadData)?;
        if !has_selector(&expr) {
            // As Prometheus: nothing to look up, no content.
            return Ok(Response::no_content());
        }
        Ok(success("[]", &[]))
    }

    /// `/api/v1/format_query`: the query as Prometheus's pretty-printer writes it.
    pub fn api_format_query(&self, p: &Params) -> Result<Response, ApiError> {
        let expr = promql_parser::parser::parse(p.get("query").unwrap_or(""))
            .map_err(|e| bad_param("query", e))?;
        let mut data = String::new();
        json::string(&mut data, &expr.prettify());
        Ok(success(&data, &[]))
    }

    /// `/api/v1/metadata`: per metric family, the distinct TYPE/HELP/UNIT the targets exposed,
    /// sorted by name (as Go's JSON writes a map); `limit` metrics, `limit_per_metric` entries.
    pub fn api_metadata(&self, p: &Params) -> Result<Response, ApiError> {
        let limit = metadata_limit(p, "limit")?;
        let per_metric = metadata_limit(p, "limit_per_metric")?;
        let only = p.get("metric").filter(|m| !m.is_empty());
        let mut all: std::collections::BTreeMap<Rc<str>, Vec<Rc<MetricMetadata>>> =
            std::collections::BTreeMap::new();
        for st in self.scrape_status() {
            let st = st.borrow();
            for (name, m) in &st.metadata {
                if only.is_some_and(|o| o != &**name) {
                    continue;
                }
                let list = all.entry(name.clone()).or_default();
                if !list.contains(m) {
                    list.push(m.clone());
                }
            }
        }
        let mut data = String::from("{");
        for (i, (name, list)) in all.iter().take(limit.unwrap_or(usize::MAX)).enumerate() {
            if i > 0 {
                data.push(',');
            }
            json::string(&mut data, name);
            data.push_str(":[");
            for (j, m) in list
                .iter()
                .take(per_metric.unwrap_or(usize::MAX))
                .enumerate()
            {
                if j > 0 {
                    data.push(',');
                }
                write_metadata(&mut data, m);
            }
            data.push(']');
        }
        data.push('}');
        Ok(success(&data, &[]))
    }

    /// `/api/v1/targets/metadata`: the metadata of each target matching `match_target`, for
    /// every metric or the one named by `metric` (then without the `metric` field, as 2.42).
    pub fn api_targets_metadata(&self, p: &Params) -> Result<Response, ApiError> {
        let limit = metadata_limit(p, "limit")?;
        let matchers = match p.get("match_target").filter(|m| !m.is_empty()) {
            Some(m) => {
                crate::promql::selector_matchers(m).map_err(|e| bad_param("match_target", e))?
            }
            None => Vec::new(),
        };
        let metric = p.get("metric").filter(|m| !m.is_empty());
        let mut data = String::from("[");
        let mut n = 0usize;
        for st in self.scrape_status() {
            // As 2.42: the limit is checked before each target.
            if limit.is_some_and(|l| n >= l) {
                break;
            }
            let st = st.borrow();
            if !Matcher::all_match(&matchers, &st.target.labels) {
                continue;
            }
            let mut entries: Vec<(&Rc<str>, &Rc<MetricMetadata>)> = match metric {
                Some(m) => st.metadata.get_key_value(m).into_iter().collect(),
                None => st.metadata.iter().collect(),
            };
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (name, m) in entries {
                if n > 0 {
                    data.push(',');
                }
                n += 1;
                data.push_str("{\"target\":");
                json::labels(&mut data, &st.target.labels);
                if metric.is_none() {
                    data.push_str(",\"metric\":");
                    json::string(&mut data, name);
                }
                data.push(',');
                write_metadata_fields(&mut data, m);
                data.push('}');
            }
        }
        data.push(']');
        Ok(success(&data, &[]))
    }

    /// `/api/v1/rules`: Perch evaluates no rules yet.
    pub fn api_rules(&self, p: &Params) -> Result<Response, ApiError> {
        let typ = p.get("type").unwrap_or("").to_ascii_lowercase();
        if !typ.is_empty() && typ != "alert" && typ != "record" {
            return Err(bad_param("type", format!("not supported value {typ:?}")));
        }
        Ok(success("{\"groups\":[]}", &[]))
    }

    /// `/api/v1/admin/tsdb/*`, as Prometheus answers without `--web.enable-admin-api`; with
    /// it, cleaning tombstones is a no-op (Perch keeps none) and the rest are not supported by
    /// the store yet.
    pub fn api_admin(&self, rest: &str) -> Result<Response, ApiError> {
        if !self.config().flags.enable_admin_api {
            return Err(ApiError::Unavailable("admin APIs disabled".into()));
        }
        match rest {
            "admin/tsdb/clean_tombstones" => Ok(Response::no_content()),
            _ => Err(ApiError::Internal(format!(
                "{} is not supported by Perch's store yet",
                rest.trim_start_matches("admin/tsdb/")
            ))),
        }
    }
}
