//! PromQL evaluation over a [`Querier`].
//!
//! Role: takes a query string (parsed by the `promql-parser` crate) and a time or a time range,
//! selects series through the storage seam and computes the result the way Prometheus 3.x does
//! with default settings (5m lookback, left-open ranges `(t - d, t]`, no delayed `__name__`
//! removal unless [`EngineOptions::delayed_name_removal`] asks for it, as
//! `--enable-feature=promql-delayed-name-removal` does in Prometheus).
//!
//! Contract:
//! - Nothing panics on input: every unsupported construct or bad argument is a [`QueryError`].
//!   A construct that is not implemented yet is `QueryError::Execution("... not supported yet")`,
//!   never a silently wrong answer.
//! - Evaluation is `async` only to yield: every 65,536 samples or points processed (a few
//!   hundred microseconds of work) the evaluator calls `yield_now()`, so a long query shares the
//!   one executor thread; each yield costs a round through the executor, so not more often than
//!   that. Ordering a large intermediate table by step ([`eval::StepVecBuilder::finish_yielding`])
//!   yields the same way. (Selecting the series happens in one piece, between yields.) Timeouts and client
//!   cancellation drop the future; the evaluator holds no `RefCell` borrow and no state across an
//!   `.await` that would break on drop.
//! - Memory is bounded by [`EngineOptions::max_samples`]: samples loaded and points held by
//!   intermediate results are counted (like Prometheus's `currentSamples`), and going over the
//!   bound is [`QueryError::TooManySamples`]. The peak of that count and the samples read (per
//!   step, as Prometheus counts `totalQueryableSamples`) come back as [`QueryStats`].
//! - Instant vector results keep evaluation order (only `sort`/`sort_desc` order by value);
//!   range results are a matrix sorted by labels, without empty series.
//!
//! How it works: every node is evaluated once for all steps of the query (`eval.rs`), as in
//! Prometheus. An instant vector over steps is a table of distinct label sets plus, per step, the
//! (series, value) pairs present at that step; per-step operators (binary operators,
//! aggregations, simple functions) work step by step on it, and functions over range vectors
//! slide a window over each series' samples.
//!
//! Supported: number and string literals; vector selectors with `=`, `!=`, `=~`, `!~`, `offset`
//! (either sign), `@ <time>`, `@ start()`, `@ end()`, lookback and staleness markers; matrix
//! selectors; subqueries (steps aligned to multiples of the step; the default step is 1m);
//! unary minus; all binary operators with `bool`, `on`/`ignoring`, `group_left`/`group_right`
//! and the set operators; the aggregations `sum min max avg count group stddev stdvar topk
//! bottomk quantile count_values` with `by`/`without`; the functions `rate irate increase delta
//! idelta deriv predict_linear changes resets`, the `*_over_time` family (`avg min max sum count
//! first last present stddev stdvar quantile absent`), `abs ceil floor round exp ln log2 log10
//! sqrt sgn`, the trigonometric functions, `deg rad pi`, `clamp clamp_min clamp_max`, `scalar
//! vector time timestamp absent sort sort_desc label_replace label_join`, `histogram_quantile`
//! and `histogram_fraction` over classic buckets, and the date functions (`minute hour
//! day_of_week day_of_month day_of_year days_in_month month year`). Duration expressions
//! (`x[5m+1m]`, `x[1h:step()*2]`, `offset min_of(step(), 1s)`, `range()`) are computed before
//! parsing (`durations.rs`), since `promql-parser` 0.11 does not know them.
//!
//! Annotations: the warnings and infos Prometheus gives for invalid quantiles, malformed `le`
//! labels, `rate`/`increase` over names that do not look like counters, forced bucket
//! monotonicity and `sort` in range queries, with Prometheus's texts but without the
//! `(line:col)` position (the parser does not give positions).
//!
//! Not supported yet (an `Execution` error): native histograms and the `histogram_*` functions
//! over them, `or` in selectors (`{a="1" or b="2"}`), binary-operator fill modifiers, and what a
//! default Prometheus server rejects as experimental (`limitk`, `limit_ratio`, `info`,
//! `sort_by_label`, `mad_over_time`, `ts_of_*_over_time`, `double_exponential_smoothing`,
//! anchored/smoothed ranges).
//!
//! String literals: `\xNN` and `\NNN` escapes are bytes, as in Go (`literals.rs` decodes them
//! before parsing, since `promql-parser` reads `\xNN` as the character U+00NN). A literal that
//! is not valid UTF-8 is rejected as a label name (`label_replace`, `label_join`,
//! `count_values`) and as a regular expression in `label_replace`, as Prometheus rejects it;
//! elsewhere it is its text with a private-use character standing for each bad byte (shown as
//! U+FFFD in a string result; a label value made of it keeps the private-use characters).
//!
//! Tests: `tests.rs` holds the Rust-only ones (limits, absurd inputs, yielding); scripts in
//! Prometheus's promqltest language (`tests/data/promql/*.test`) and the shared conformance
//! corpus (`$PERCH_PROMQL_CORPUS`, with pass rates per tier and a list of cases that must keep
//! passing) run from `tests/it/promql.rs` through the public API; `benches/promql.rs` times
//! dashboard queries over the shared recording.

mod aggregate;
mod binary;
mod durations;
mod eval;
mod functions;
mod literals;
#[cfg(test)]
mod tests;

use crate::model::{Labels, Sample};
use crate::storage::{Querier, StorageError};
use std::fmt;

/// Limits and defaults of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// How far back an instant selector looks for the newest sample (ms).
    pub lookback_delta_ms: i64,
    /// At most this many samples (loaded or held by intermediate results) at once.
    pub max_samples: usize,
    /// Delayed `__name__` removal, Prometheus's `--enable-feature=promql-delayed-name-removal`
    /// (off by default, as in a Prometheus server): operations that drop the metric name mark
    /// the series instead, so that `label_replace`/`label_join`, `by`/`without` and vector
    /// matching still see `__name__` (and `__type__`/`__unit__`); the marked labels go at the
    /// end of the query, and only then must the label sets be distinct.
    pub delayed_name_removal: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 300_000,
            max_samples: 50_000_000,
            delayed_name_removal: false,
        }
    }
}

/// The step of a subquery without an explicit one (`x[5m:]`): Prometheus uses the global
/// evaluation interval, 1m by default.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Parses a series selector (`up{job="x"}`, as `match[]` takes it) into storage matchers, the
/// selector's metric name included, exactly as the engine reads selectors in a query.
pub fn selector_matchers(s: &str) -> Result<Vec<crate::model::Matcher>, QueryError> {
    match promql_parser::parser::parse(&literals::rewrite(s)).map_err(QueryError::Parse)? {
        promql_parser::parser::Expr::VectorSelector(vs) => eval::selector_matchers(&vs),
        _ => Err(QueryError::Parse(format!(
            "1:1: parse error: expected a series selector, got {s:?}"
        ))),
    }
}

/// `q` with its duration expressions (`x[5m+1m]`, `offset step()`) written out as plain
/// durations and its byte-escaped string literals decoded (`"\xc3\xa9"` is `"é"`), the text the
/// engine hands to `promql-parser`; `step_ms`/`range_ms` stand for `step()`/`range()` (0 for an
/// instant query). For tools that rewrite a query through `promql-parser` (the conformance
/// runner pins selectors with `@`).
pub fn expand_durations(q: &str, step_ms: i64, range_ms: i64) -> String {
    literals::rewrite(&durations::rewrite(q, step_ms, range_ms))
}

/// The PromQL engine. Holds no state between queries.
#[derive(Debug, Clone)]
pub struct Engine {
    opts: EngineOptions,
}

/// The result of a query, with Prometheus's warnings and infos (annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    pub stats: QueryStats,
}

/// What a query read and held: the `samples` of the API's `stats`, with the meaning of
/// Prometheus's `stats.QuerySamples`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// `totalQueryableSamples`: samples read, counted per step as Prometheus counts them — an
    /// instant selector's sample once for each step it is the value at, a range window's samples
    /// once for each step the window is taken at (so overlapping windows count a sample more than
    /// once), a subquery by the windows taken over its result (or, for a whole query that is a
    /// subquery, by what its inner expression read).
    pub total_samples: u64,
    /// `peakSamples`: the most samples held at once, the figure `max_samples` bounds.
    pub peak_samples: usize,
}

/// A query result value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar {
        t: i64,
        v: f64,
    },
    String {
        t: i64,
        s: String,
    },
    /// An instant vector.
    Vector(Vec<VectorSample>),
    /// A range query result, or a range vector returned by an instant query.
    Matrix(Vec<RangeSeries>),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// One series of a matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Why a query failed.
#[derive(Debug)]
pub enum QueryError {
    /// The query does not parse or is not valid for the query type (API: `bad_data`, 400).
    Parse(String),
    /// The query failed during evaluation (API: `execution`, 422).
    Execution(String),
    /// The query would hold more than `max_samples` samples (API: `execution`, 422).
    TooManySamples,
    /// The store failed.
    Storage(StorageError),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Parse(m) => f.write_str(m),
            QueryError::Execution(m) => f.write_str(m),
            QueryError::TooManySamples => f.write_str(
                "query processing would load too many samples into memory in query execution",
            ),
            QueryError::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueryError::Storage(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StorageError> for QueryError {
    fn from(e: StorageError) -> Self {
        QueryError::Storage(e)
    }
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        Engine { opts }
    }

    /// Instant query at `t` (ms).
    pub async fn instant(
        &self,
        q: &dyn Querier,
        expr: &str,
        t: i64,
    ) -> Result<QueryResult, QueryError> {
        let text = expand_durations(expr, 0, 0);
        let e = promql_parser::parser::parse(&text).map_err(QueryError::Parse)?;
        let mut ev = eval::Evaluator::new(q, self.opts, t, t);
        let span = eval::Span {
            start: t,
            end: t,
            step: 1,
        };
        let v = ev.eval_top(&e, span).await?;
        let value = match v {
            eval::Val::Scalar(s) => Value::Scalar {
                t,
                v: s.first().copied().unwrap_or(f64::NAN),
            },
            eval::Val::Str(s) => Value::String {
                t,
                s: literals::display(s),
            },
            eval::Val::Vector(sv) => Value::Vector(sv.into_instant(t)),
            eval::Val::Matrix(m) => Value::Matrix(m),
        };
        Ok(ev.finish(value))
    }

    /// Range query over `[start, end]` every `step` ms (`step > 0`).
    pub async fn range(
        &self,
        q: &dyn Querier,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<QueryResult, QueryError> {
        let text = expand_durations(expr, step, end.saturating_sub(start));
        let e = promql_parser::parser::parse(&text).map_err(QueryError::Parse)?;
        if step <= 0 {
            return Err(QueryError::Parse(
                "zero or negative query resolution step widths are not accepted. Try a positive integer"
                    .into(),
            ));
        }
        if end < start {
            return Err(QueryError::Parse(
                "end timestamp must not be before start time".into(),
            ));
        }
        use promql_parser::parser::value::ValueType;
        let vt = e.value_type();
        if vt != ValueType::Scalar && vt != ValueType::Vector {
            let name = match vt {
                ValueType::Matrix => "range vector",
                _ => "string",
            };
            return Err(QueryError::Parse(format!(
                "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
            )));
        }
        let mut ev = eval::Evaluator::new(q, self.opts, start, end);
        let span = eval::Span { start, end, step };
        let v = ev.eval_top(&e, span).await?;
        let value = match v {
            eval::Val::Scalar(s) => {
                let samples = s
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| Sample { t: span.ts(i), v })
                    .collect();
                Value::Matrix(vec![RangeSeries {
                    labels: Labels::empty(),
                    samples,
                }])
            }
            eval::Val::Vector(sv) => Value::Matrix(sv.into_matrix(span, &mut ev).await),
            eval::Val::Str(_) | eval::Val::Matrix(_) => {
                return Err(QueryError::Execution(
                    "invalid expression type for range query".into(),
                ))
            }
        };
        Ok(ev.finish(value))
    }
}
