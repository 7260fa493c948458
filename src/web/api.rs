//! The Prometheus HTTP API handlers (`/api/v1/...`).
//!
//! One error envelope ([`ApiError`]) and one mapping from engine errors to `errorType` and HTTP
//! status, as Prometheus: 400 `bad_data`, 422 `execution`, 503 `timeout`, 500 `internal`.
//! Bodies are written in Prometheus's exact JSON layout by [`super::json`].

use super::http::Response;
use super::json;
use super::time::{parse_duration_param, parse_time};
use super::WebState;
use crate::model::{Labels, MatchKind, Matcher, METRIC_NAME};
use crate::promql::{QueryError, QueryResult, Value};
use futures_lite::FutureExt;
use std::fmt::Write;

/// An API error: its `errorType` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadData(String),
    Execution(String),
    Timeout(String),
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (u16, &'static str, &str) {
        match self {
            ApiError::BadData(m) => (400, "bad_data", m),
            ApiError::Execution(m) => (422, "execution", m),
            ApiError::Timeout(m) => (503, "timeout", m),
            ApiError::Internal(m) => (500, "internal", m),
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

fn bad_param(name: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadData(format!("invalid parameter {name:?}: {msg}"))
}

/// Maps an engine error to its API error (one place, as in Prometheus's `returnAPIError`).
fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Parse(m) => bad_param("query", m),
        QueryError::Execution(m) => ApiError::Execution(m),
        QueryError::TooManySamples => ApiError::Execution(e.to_string()),
        QueryError::Storage(s) => ApiError::Internal(s.to_string()),
    }
}

/// The success envelope around `data`, with warnings where there are any.
fn success(data: &str, warnings: &[String]) -> Response {
    let mut s = String::with_capacity(data.len() + 40);
    s.push_str("{\"status\":\"success\",\"data\":");
    s.push_str(data);
    if !warnings.is_empty() {
        s.push_str(",\"warnings\":");
        json::string_array(&mut s, warnings);
    }
    s.push('}');
    Response::json(200, s)
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

    fn time(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => parse_time(v)
                .map_err(|e| bad_param(name, format!("Invalid time value for '{name}': {e}"))),
        }
    }
}

/// Prometheus's `minTime`/`maxTime` for open ranges, in ms.
const MIN_TIME: i64 = -62_135_596_800_000 + 1;
const MAX_TIME: i64 = 253_402_300_799_000;

fn write_value(out: &mut String, v: &Value) {
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
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                json::labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, p) in s.samples.iter().enumerate() {
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
    out.push('}');
}

impl WebState {
    /// The effective timeout of a query: the `timeout` parameter, bounded by `--query.timeout`.
    fn query_timeout(&self, p: &Params) -> Result<std::time::Duration, ApiError> {
        let max = self.config.flags.query_timeout;
        match p.get("timeout") {
            None | Some("") => Ok(max),
            Some(v) => {
                let ms = parse_duration_param(v).map_err(|e| bad_param("timeout", e))?;
                Ok(std::time::Duration::from_millis(ms.max(0) as u64).min(max))
            }
        }
    }

    async fn run_query<F>(&self, p: &Params, fut: F) -> Result<Response, ApiError>
    where
        F: std::future::Future<Output = Result<QueryResult, QueryError>>,
    {
        let timeout = self.query_timeout(p)?;
        let res = async { fut.await.map_err(query_error) }
            .or(async {
                async_io::Timer::after(timeout).await;
                Err(ApiError::Timeout(
                    "query timed out in expression evaluation".into(),
                ))
            })
            .await?;
        let mut data = String::new();
        write_value(&mut data, &res.value);
        Ok(success(&data, &res.warnings))
    }

    /// `/api/v1/query`
    pub async fn api_query(&self, p: &Params, now: i64) -> Result<Response, ApiError> {
        let t = p.time("time", now)?;
        let q = p.get("query").unwrap_or("");
        let querier = self.storage.querier();
        self.run_query(p, self.engine.instant(&*querier, q, t))
            .await
    }

    /// `/api/v1/query_range`
    pub async fn api_query_range(&self, p: &Params) -> Result<Response, ApiError> {
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
        if (end - start) / step > 11_000 {
            return Err(ApiError::BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        let q = p.get("query").unwrap_or("");
        let querier = self.storage.querier();
        self.run_query(p, self.engine.range(&*querier, q, start, end, step))
            .await
    }

    /// The `match[]` selectors of a request, each as a list of matchers.
    fn match_sets(&self, p: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
        p.all("match[]")
            .into_iter()
            .map(|s| parse_selector(s).map_err(|e| bad_param("match[]", e)))
            .collect()
    }

    fn range(&self, p: &Params) -> Result<(i64, i64), ApiError> {
        Ok((p.time("start", MIN_TIME)?, p.time("end", MAX_TIME)?))
    }

    /// `/api/v1/labels`
    pub fn api_labels(&self, p: &Params) -> Result<Response, ApiError> {
        let (mint, maxt) = self.range(p)?;
        let q = self.storage.querier();
        let mut sets = self.match_sets(p)?;
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        let mut names = std::collections::BTreeSet::new();
        for m in &sets {
            let found = q
                .label_names(m, mint, maxt)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            names.extend(found);
        }
        let names: Vec<String> = names.into_iter().collect();
        let mut data = String::new();
        json::string_array(&mut data, &names);
        Ok(success(&data, &[]))
    }

    /// `/api/v1/label/<name>/values`
    pub fn api_label_values(&self, name: &str, p: &Params) -> Result<Response, ApiError> {
        if !is_label_name(name) {
            return Err(ApiError::BadData(format!("invalid label name: {name:?}")));
        }
        let (mint, maxt) = self.range(p)?;
        let q = self.storage.querier();
        let mut sets = self.match_sets(p)?;
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        let mut values = std::collections::BTreeSet::new();
        for m in &sets {
            let found = q
                .label_values(name, m, mint, maxt)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            values.extend(found);
        }
        let values: Vec<String> = values.into_iter().collect();
        let mut data = String::new();
        json::string_array(&mut data, &values);
        Ok(success(&data, &[]))
    }

    /// `/api/v1/series`
    pub fn api_series(&self, p: &Params) -> Result<Response, ApiError> {
        let sets = self.match_sets(p)?;
        if sets.is_empty() {
            return Err(ApiError::BadData("no match[] parameter provided".into()));
        }
        let (mint, maxt) = self.range(p)?;
        let q = self.storage.querier();
        let mut all: std::collections::BTreeSet<Labels> = std::collections::BTreeSet::new();
        for m in &sets {
            for s in q
                .select(m, mint, maxt)
                .map_err(|e| ApiError::Internal(e.to_string()))?
            {
                all.insert(s.labels);
            }
        }
        let mut data = String::from("[");
        for (i, l) in all.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            json::labels(&mut data, l);
        }
        data.push(']');
        Ok(success(&data, &[]))
    }

    /// `/api/v1/targets`
    pub fn api_targets(&self, p: &Params) -> Result<Response, ApiError> {
        let state = p.get("state").unwrap_or("any").to_ascii_lowercase();
        let mut s = String::from("{\"activeTargets\":[");
        if state == "any" || state == "active" || state.is_empty() {
            for (i, st) in self.scrape_status().iter().enumerate() {
                let st = st.borrow();
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"discoveredLabels\":");
                json::labels(&mut s, &st.target.discovered_labels);
                s.push_str(",\"labels\":");
                json::labels(&mut s, &st.target.labels);
                s.push_str(",\"scrapePool\":");
                json::string(&mut s, &st.target.job);
                s.push_str(",\"scrapeUrl\":");
                json::string(&mut s, &st.target.url());
                s.push_str(",\"globalUrl\":");
                json::string(&mut s, &st.target.url());
                s.push_str(",\"lastError\":");
                json::string(&mut s, &st.last_error);
                s.push_str(",\"lastScrape\":");
                let last = if st.last_scrape_ms == 0 {
                    "0001-01-01T00:00:00Z".to_owned()
                } else {
                    super::time::format_rfc3339(st.last_scrape_ms)
                };
                json::string(&mut s, &last);
                let _ = write!(
                    s,
                    ",\"lastScrapeDuration\":{},\"health\":\"{}\",\"scrapeInterval\":",
                    st.last_scrape_duration.as_secs_f64(),
                    st.health.as_str()
                );
                json::string(&mut s, &crate::config::format_duration(st.target.interval));
                s.push_str(",\"scrapeTimeout\":");
                json::string(&mut s, &crate::config::format_duration(st.target.timeout));
                s.push('}');
            }
        }
        s.push_str("],\"droppedTargets\":[]}");
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

/// Label names as Prometheus 2.42 accepts them: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(n: &str) -> bool {
    let mut c = n.bytes();
    matches!(c.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && c.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a series selector (`up{job="x"}`) into matchers, as `match[]` wants it.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{self, Expr};
    let expr = parser::parse(s)?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!(
            "1:1: parse error: expected a series selector, got {s:?}"
        ));
    };
    if !vs.matchers.or_matchers.is_empty() {
        return Err("selectors with `or` are not supported yet".into());
    }
    let mut out = Vec::new();
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(METRIC_NAME, name));
    }
    for m in &vs.matchers.matchers {
        let kind = match m.op {
            MatchOp::Equal => MatchKind::Equal,
            MatchOp::NotEqual => MatchKind::NotEqual,
            MatchOp::Re(_) => MatchKind::Regex,
            MatchOp::NotRe(_) => MatchKind::NotRegex,
        };
        out.push(Matcher::new(kind, &m.name, &m.value).map_err(|e| e.to_string())?);
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err("match[] must contain at least one non-empty matcher".into());
    }
    Ok(out)
}
