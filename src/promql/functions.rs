//! PromQL functions: per-step functions over instant vectors and window functions over range
//! vectors, with Prometheus 3.x's numerics (Kahan summation, rate extrapolation, …).
//!
//! Every function except `last_over_time`, `first_over_time`, `sort*`, `label_*` and `vector`
//! drops the metric name from its results: at once, or with delayed name removal by marking the
//! series (`name_dropped`), which `last_over_time`/`first_over_time` pass on from a subquery and
//! `label_replace`/`label_join` clear when they write `__name__`, as Prometheus does.

use super::eval::{
    drop_name, name_dropped, not_supported, same_labelset, selector_matchers, unparen, Evaluator,
    RangeArg, Span, StepVec, StepVecBuilder, Val, PER_SERIES_WORK,
};
use super::QueryError;
use crate::model::{Labels, MatchKind, Sample, METRIC_NAME};
use promql_parser::parser::{Call, Expr};
use std::cmp::Ordering;
use std::collections::HashMap;

fn arg<'a>(args: &[&'a Expr], i: usize, fname: &str) -> Result<&'a Expr, QueryError> {
    args.get(i).copied().ok_or_else(|| {
        QueryError::Parse(format!("wrong number of arguments for function {fname}()"))
    })
}

pub(super) async fn call(ev: &mut Evaluator<'_>, c: &Call, span: Span) -> Result<Val, QueryError> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let n = span.len();
    let a0 = || arg(&args, 0, name);
    let drop_names = name_dropped(ev.delayed_names());
    match name {
        "time" => Ok(Val::Scalar(
            (0..n).map(|i| span.ts(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let s = ev.eval_scalar(a0()?, span).await?;
            let mut b = StepVecBuilder::new(n);
            let i = b.intern(Labels::empty());
            for (k, v) in s.into_iter().enumerate() {
                b.push(k, i, v)?;
            }
            Ok(Val::Vector(b.finish_yielding(ev).await))
        }
        "scalar" => {
            let v = ev.eval_vector(a0()?, span).await?;
            Ok(Val::Scalar(
                v.steps()
                    .map(|s| if s.len() == 1 { s[0].1 } else { f64::NAN })
                    .collect(),
            ))
        }
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "acos"
        | "acosh" | "asin" | "asinh" | "atan" | "atanh" | "cos" | "cosh" | "sin" | "sinh"
        | "tan" | "tanh" | "deg" | "rad" => {
            let f = math_fn(name);
            let v = ev.eval_vector(a0()?, span).await?;
            Ok(Val::Vector(
                transform(ev, v, n, drop_names, |_, x| Some(f(x))).await?,
            ))
        }
        "round" => {
            let v = ev.eval_vector(a0()?, span).await?;
            let to = match args.get(1) {
                Some(e) => ev.eval_scalar(e, span).await?,
                None => vec![1.0; n],
            };
            Ok(Val::Vector(
                transform(ev, v, n, drop_names, |k, x| {
                    let inv = 1.0 / to[k];
                    Some((x * inv + 0.5).floor() / inv)
                })
                .await?,
            ))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let v = ev.eval_vector(a0()?, span).await?;
            let p1 = ev.eval_scalar(arg(&args, 1, name)?, span).await?;
            let p2 = match name {
                "clamp" => ev.eval_scalar(arg(&args, 2, name)?, span).await?,
                _ => Vec::new(),
            };
            Ok(Val::Vector(
                transform(ev, v, n, drop_names, |k, x| match name {
                    "clamp" => {
                        let (lo, hi) = (p1[k], p2[k]);
                        if hi < lo {
                            None
                        } else {
                            Some(go_max(lo, go_min(hi, x)))
                        }
                    }
                    "clamp_min" => Some(go_max(p1[k], x)),
                    _ => Some(go_min(p1[k], x)),
                })
                .await?,
            ))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let f = date_fn(name);
            match args.first() {
                None => {
                    let mut b = StepVecBuilder::new(n);
                    let i = b.intern(Labels::empty());
                    for k in 0..n {
                        b.push(k, i, f(span.ts(k).div_euclid(1000)))?;
                    }
                    Ok(Val::Vector(b.finish_yielding(ev).await))
                }
                Some(e) => {
                    let v = ev.eval_vector(e, span).await?;
                    Ok(Val::Vector(
                        transform(ev, v, n, drop_names, |_, x| Some(f(x as i64))).await?,
                    ))
                }
            }
        }
        "timestamp" => {
            let e = unparen(a0()?);
            if let Expr::VectorSelector(vs) = e {
                return Ok(Val::Vector(ev.select_vector(vs, span, true).await?));
            }
            let v = ev.eval_vector(e, span).await?;
            Ok(Val::Vector(
                transform(ev, v, n, drop_names, |k, _| {
                    Some(span.ts(k) as f64 / 1000.0)
                })
                .await?,
            ))
        }
        "absent" => {
            let e = a0()?;
            let v = ev.eval_vector(e, span).await?;
            let mut b = StepVecBuilder::new(n);
            let mut idx = None;
            for k in 0..n {
                if v.step(k).is_empty() {
                    let i = match idx {
                        Some(i) => i,
                        None => *idx.insert(b.intern(absent_labels(e))),
                    };
                    b.push(k, i, 1.0)?;
                }
            }
            Ok(Val::Vector(b.finish_yielding(ev).await))
        }
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(a0()?, span).await?;
            let desc = name == "sort_desc";
            if n > 1 {
                ev.warn("PromQL warning: sort is ineffective for range queries since results are always ordered by labels".into());
            }
            for k in 0..v.step_count() {
                // NaN sorts last either way.
                v.step_mut(k)
                    .sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
                        (true, true) => Ordering::Equal,
                        (true, false) => Ordering::Greater,
                        (false, true) => Ordering::Less,
                        _ if desc => b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal),
                        _ => a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal),
                    });
            }
            Ok(Val::Vector(v))
        }
        "label_replace" => {
            let v = ev.eval_vector(a0()?, span).await?;
            let dst = string_arg(ev, &args, 1, name, span).await?;
            let repl = string_arg(ev, &args, 2, name, span).await?;
            let src = string_arg(ev, &args, 3, name, span).await?;
            let re_s = string_arg(ev, &args, 4, name, span).await?;
            let re = Some(())
                .filter(|_| ev.valid_utf8(&re_s))
                .and_then(|_| regex::Regex::new(&format!("^(?s:{re_s})$")).ok())
                .ok_or_else(|| {
                    QueryError::Execution(format!(
                        "invalid regular expression in label_replace(): {re_s}"
                    ))
                })?;
            if !ev.valid_label_name(&dst) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            // Writing `__name__` keeps the name a delayed removal would have dropped.
            let relabel = |l: &Labels, mark: bool| {
                let sv = l.get(&src);
                match re.captures(sv) {
                    Some(caps) => {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        let mut b = l.builder();
                        b.set(&dst, &res);
                        (b.take(), mark && dst != METRIC_NAME)
                    }
                    None => (l.clone(), mark),
                }
            };
            // Series that end up with the same labels merge unless they overlap.
            Ok(Val::Vector(
                transform(ev, v, n, relabel, |_, x| Some(x)).await?,
            ))
        }
        "label_join" => {
            let v = ev.eval_vector(a0()?, span).await?;
            let dst = string_arg(ev, &args, 1, name, span).await?;
            let sep = string_arg(ev, &args, 2, name, span).await?;
            let mut srcs = Vec::new();
            for i in 3..args.len() {
                let s = string_arg(ev, &args, i, name, span).await?;
                if !ev.valid_label_name(&s) {
                    return Err(QueryError::Execution(format!(
                        "invalid source label name in label_join(): {s}"
                    )));
                }
                srcs.push(s);
            }
            if !ev.valid_label_name(&dst) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let relabel = |l: &Labels, mark: bool| {
                let joined = srcs.iter().map(|s| l.get(s)).collect::<Vec<_>>().join(&sep);
                let mut b = l.builder();
                b.set(&dst, &joined);
                (b.take(), mark && dst != METRIC_NAME)
            };
            Ok(Val::Vector(
                transform(ev, v, n, relabel, |_, x| Some(x)).await?,
            ))
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(a0()?, span).await?;
            let v = ev.eval_vector(arg(&args, 1, name)?, span).await?;
            ev.check_quantiles(&q);
            classic_buckets(ev, v, n, |ev, k, name, b| {
                let (res, forced) = bucket_quantile(q[k], b);
                if forced {
                        ev.info(format!("PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile){}", for_metric_name(name)));
                }
                res
            })
            .await
        }
        "histogram_fraction" => {
            let lo = ev.eval_scalar(a0()?, span).await?;
            let hi = ev.eval_scalar(arg(&args, 1, name)?, span).await?;
            let v = ev.eval_vector(arg(&args, 2, name)?, span).await?;
            classic_buckets(ev, v, n, |_, k, _, b| bucket_fraction(lo[k], hi[k], b)).await
        }
        "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "changes" | "resets"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "last_over_time" | "first_over_time" | "present_over_time"
        | "stddev_over_time" | "stdvar_over_time" => {
            let ra = ev.range_arg(a0()?, span).await?;
            let keep_name = name == "last_over_time" || name == "first_over_time";
            let out = match name {
                // Windows only move forward: the extremes and the counter resets of a series
                // are found once, not once per window that holds them.
                "max_over_time" | "min_over_time" => {
                    let mut ext = SlidingExtreme::new(name == "max_over_time");
                    over_windows(ev, &ra, span, false, |w, c, _| Some(ext.at(w, c))).await?
                }
                "rate" | "increase" => {
                    let mut resets = Resets::default();
                    over_windows(ev, &ra, span, false, |w, c, _| {
                        let r = resets.within(w, c);
                        extrapolated_rate(w, c, Some(r), name == "rate")
                    })
                    .await?
                }
                _ => {
                    let f = window_fn(name);
                    over_windows(ev, &ra, span, keep_name, |w, c, _| f(w, c)).await?
                }
            };
            if (name == "rate" || name == "increase") && out.points() > 0 {
                for (l, _) in &ra.series {
                    let m = l.metric_name();
                    if !m.is_empty()
                        && !["_total", "_sum", "_count", "_bucket"]
                            .iter()
                            .any(|s| m.ends_with(s))
                    {
                        ev.info(format!("PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {m:?}"));
                    }
                }
            }
            ev.free(ra.series).await;
            Ok(Val::Vector(out))
        }
        "predict_linear" => {
            let ra = ev.range_arg(a0()?, span).await?;
            let d = ev.eval_scalar(arg(&args, 1, name)?, span).await?;
            Ok(Val::Vector(
                over_windows(ev, &ra, span, false, |w, c, k| {
                    if w.len() < 2 {
                        return None;
                    }
                    let (slope, intercept) = linear_regression(w, c.ts);
                    Some(slope * d[k] + intercept)
                })
                .await?,
            ))
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(a0()?, span).await?;
            let ra = ev.range_arg(arg(&args, 1, name)?, span).await?;
            ev.check_quantiles(&q);
            let mut buf = Vec::new();
            Ok(Val::Vector(
                over_windows(ev, &ra, span, false, |w, _, k| {
                    buf.clear();
                    buf.extend(w.iter().map(|s| s.v));
                    Some(quantile(q[k], &mut buf))
                })
                .await?,
            ))
        }
        "absent_over_time" => {
            let e = a0()?;
            let ra = ev.range_arg(e, span).await?;
            let mut b = StepVecBuilder::new(n);
            let mut idx = None;
            for k in 0..n {
                let ts = span.ts(k);
                let read: usize = ra.series.iter().map(|(_, s)| ra.window(s, ts).len()).sum();
                ev.read_samples(read);
                if read == 0 {
                    let i = match idx {
                        Some(i) => i,
                        None => *idx.insert(b.intern(absent_labels(e))),
                    };
                    b.push(k, i, 1.0)?;
                }
            }
            Ok(Val::Vector(b.finish_yielding(ev).await))
        }
        _ => Err(not_supported(&format!("function {name}()"))),
    }
}

async fn string_arg(
    ev: &mut Evaluator<'_>,
    args: &[&Expr],
    i: usize,
    fname: &str,
    span: Span,
) -> Result<String, QueryError> {
    match ev.eval(arg(args, i, fname)?, span).await? {
        Val::Str(s) => Ok(s),
        _ => Err(QueryError::Execution(format!(
            "expected a string as argument {} of {fname}()",
            i + 1
        ))),
    }
}

/// Maps every point of `v` through `f` (per step) and every label set and its delayed-removal
/// mark through `lf`, rejecting a label set twice in one step.
pub(super) async fn transform(
    ev: &mut Evaluator<'_>,
    v: StepVec,
    n: usize,
    lf: impl Fn(&Labels, bool) -> (Labels, bool),
    mut f: impl FnMut(usize, f64) -> Option<f64>,
) -> Result<StepVec, QueryError> {
    let mut b = StepVecBuilder::new(n);
    let mut map: Vec<Option<u32>> = vec![None; v.table.len()];
    for (k, step) in v.steps().enumerate() {
        for &(i, x) in step {
            ev.tick(1).await;
            let Some(y) = f(k, x) else { continue };
            let j = match map[i as usize] {
                Some(j) => j,
                None => {
                    let (l, mark) = lf(v.table.get(i), v.table.marked(i));
                    *map[i as usize].insert(b.intern_marked(l, mark))
                }
            };
            b.push(k, j, y)?;
        }
        ev.tick(1).await;
    }
    Ok(b.finish_yielding(ev).await)
}

/// What a window function knows about the window besides its samples.
pub(super) struct WindowCtx<'a> {
    /// The evaluation time.
    pub ts: i64,
    /// The window `(range_start, range_end]` (ms).
    pub range_start: i64,
    pub range_end: i64,
    /// Which series of the range argument this is, and all its samples: the window is
    /// `all[first..first + w.len()]`. Across the steps of one series both window edges only
    /// move forward, which lets a function carry work over from one window to the next.
    pub series: usize,
    pub all: &'a [Sample],
    pub first: usize,
}

/// Applies `f` to each series' window at each step; a series with any result becomes one output
/// series (two with the same labels are an error, as in Prometheus).
pub(super) async fn over_windows(
    ev: &mut Evaluator<'_>,
    ra: &RangeArg,
    span: Span,
    keep_name: bool,
    mut f: impl FnMut(&[Sample], &WindowCtx, usize) -> Option<f64>,
) -> Result<StepVec, QueryError> {
    let n = span.len();
    let mut b = StepVecBuilder::new(n);
    let mut points = 0;
    let delayed = ev.delayed_names();
    for (series, (labels, samples)) in ra.series.iter().enumerate() {
        let mut idx = None;
        for k in 0..n {
            let ts = span.ts(k);
            let (lo, hi) = ra.window_bounds(samples, ts);
            let Some(w) = samples.get(lo..hi).filter(|w| !w.is_empty()) else {
                continue;
            };
            ev.read_samples(w.len());
            let end = ra.ref_time(ts);
            let c = WindowCtx {
                ts,
                range_start: end.saturating_sub(ra.range),
                range_end: end,
                series,
                all: samples,
                first: lo,
            };
            let Some(v) = f(w, &c, k) else { continue };
            let new_series = idx.is_none();
            let i = match idx {
                Some(i) => i,
                None => {
                    if delayed {
                        // The labels stay (the series are distinct); a name to drop is marked,
                        // and a subquery's mark passes through `last_over_time` too.
                        let mark = !keep_name || ra.marked(series);
                        *idx.insert(b.intern_marked(labels.clone(), mark))
                    } else {
                        let l = if keep_name {
                            labels.clone()
                        } else {
                            drop_name(labels)
                        };
                        let before = b.series();
                        let i = b.intern(l);
                        if b.series() == before {
                            return Err(same_labelset());
                        }
                        *idx.insert(i)
                    }
                }
            };
            b.push(k, i, v)?;
            points += 1;
            let labels_work = if new_series { PER_SERIES_WORK } else { 0 };
            ev.tick(w.len() + 1 + labels_work).await;
        }
    }
    ev.add_samples(points)?;
    Ok(b.finish_yielding(ev).await)
}

/// `max_over_time` / `min_over_time` over windows that only move forward: a queue of the
/// candidates for the extreme (indices ascending, values descending for max), so each sample is
/// pushed and popped once per series instead of visited once per window holding it.
///
/// Same answer as Prometheus's loop (`if v > m || isNaN(m) { m = v }` from the first sample):
/// the extreme of the window's non-NaN values, the earliest of equal ones (so `-0` and `0`
/// keep their order), and the first sample (NaN) when all are NaN.
struct SlidingExtreme {
    max: bool,
    /// The series and the window `[start, end)` the queue was built for.
    series: usize,
    start: usize,
    end: usize,
    queue: std::collections::VecDeque<(usize, f64)>,
}

impl SlidingExtreme {
    fn new(max: bool) -> Self {
        SlidingExtreme {
            max,
            series: usize::MAX,
            start: 0,
            end: 0,
            queue: std::collections::VecDeque::new(),
        }
    }

    fn at(&mut self, w: &[Sample], c: &WindowCtx) -> f64 {
        let (lo, hi) = (c.first, c.first + w.len());
        // A new series, or a window not overlapping (or not after) the last one: start afresh.
        if c.series != self.series || lo < self.start || lo >= self.end || hi < self.end {
            self.queue.clear();
            self.series = c.series;
            self.end = lo;
        }
        self.start = lo;
        for (j, s) in c.all.iter().enumerate().take(hi).skip(self.end) {
            let v = s.v;
            if v.is_nan() {
                continue;
            }
            while let Some(&(_, b)) = self.queue.back() {
                if (self.max && b < v) || (!self.max && b > v) {
                    self.queue.pop_back();
                } else {
                    break;
                }
            }
            self.queue.push_back((j, v));
        }
        self.end = hi;
        while self.queue.front().is_some_and(|&(j, _)| j < lo) {
            self.queue.pop_front();
        }
        match self.queue.front() {
            Some(&(_, v)) => v,
            None => w[0].v,
        }
    }
}

/// The counter resets of one series (indices `j` with `all[j] < all[j - 1]`), found once per
/// series; [`Resets::within`] gives those inside a window, in order.
#[derive(Default)]
struct Resets {
    series: Option<usize>,
    at: Vec<usize>,
}

impl Resets {
    fn within(&mut self, w: &[Sample], c: &WindowCtx) -> &[usize] {
        if self.series != Some(c.series) {
            self.series = Some(c.series);
            self.at.clear();
            self.at.extend(
                c.all
                    .windows(2)
                    .enumerate()
                    .filter(|(_, p)| p[1].v < p[0].v)
                    .map(|(j, _)| j + 1),
            );
        }
        // Resets between the window's first and last sample: first < j < first + len.
        let from = self.at.partition_point(|&j| j <= c.first);
        let to = self.at.partition_point(|&j| j < c.first + w.len());
        self.at.get(from..to).unwrap_or(&[])
    }
}

type WindowFn = fn(&[Sample], &WindowCtx) -> Option<f64>;

fn window_fn(name: &str) -> WindowFn {
    match name {
        "delta" => |w, c| extrapolated_rate(w, c, None, false),
        "irate" => |w, _| instant_value(w, true),
        "idelta" => |w, _| instant_value(w, false),
        "deriv" => |w, _| {
            if w.len() < 2 {
                return None;
            }
            Some(linear_regression(w, w[0].t).0)
        },
        "changes" => |w, _| {
            let mut n = 0;
            for p in w.windows(2) {
                let (a, b) = (p[0].v, p[1].v);
                if a != b && !(a.is_nan() && b.is_nan()) {
                    n += 1;
                }
            }
            Some(n as f64)
        },
        "resets" => |w, _| Some(w.windows(2).filter(|p| p[1].v < p[0].v).count() as f64),
        "avg_over_time" => |w, _| Some(avg(w)),
        "sum_over_time" => |w, _| {
            let (sum, c) = finite_sum(w, 0.0).unwrap_or_else(|| kahan_sum(w, 0.0, kahan_inc));
            Some(if sum.is_infinite() { sum } else { sum + c })
        },
        "count_over_time" => |w, _| Some(w.len() as f64),
        "last_over_time" => |w, _| w.last().map(|s| s.v),
        "first_over_time" => |w, _| w.first().map(|s| s.v),
        "present_over_time" => |_, _| Some(1.0),
        "stddev_over_time" => |w, _| Some(variance(w).sqrt()),
        _ => |w, _| Some(variance(w)),
    }
}

/// Kahan-Neumaier summation step: adds `inc` to `sum` with compensation `c`.
#[inline]
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// [`kahan_inc`] for a sum that stays finite, without a comparison: Knuth's TwoSum gives the
/// rounding error of `sum + inc` exactly, as the Neumaier branch does (both are exact whenever
/// nothing overflows, and the exact error is one number), so the compensation comes out the
/// same to the bit. (A zero error may differ in sign, which adding it to `c` cannot show: `c`
/// starts at `+0` and so is never `-0`.) A running sum that once is infinite or NaN stays so,
/// and an overflow inside TwoSum leaves `c` infinite or NaN: a loop of these whose final sum
/// and compensation are finite did exactly what a loop of `kahan_inc` does. When they are not,
/// the caller runs that loop instead.
#[inline(always)]
pub(super) fn kahan_inc_finite(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let back = t - sum;
    let err = (sum - (t - back)) + (inc - back);
    (t, c + err)
}

/// The Kahan sum (and its compensation) of the values of `w` added to `start`, each added by
/// `step` ([`kahan_inc`] or [`kahan_inc_finite`]).
#[inline(always)]
fn kahan_sum(w: &[Sample], start: f64, step: impl Fn(f64, f64, f64) -> (f64, f64)) -> (f64, f64) {
    let (mut sum, mut c) = (start, 0.0);
    for s in w {
        (sum, c) = step(s.v, sum, c);
    }
    (sum, c)
}

/// [`kahan_sum`] on the fast path, if the sum stays finite (see [`kahan_inc_finite`]).
fn finite_sum(w: &[Sample], start: f64) -> Option<(f64, f64)> {
    let (sum, c) = kahan_sum(w, start, kahan_inc_finite);
    (sum.is_finite() && c.is_finite()).then_some((sum, c))
}

/// The mean, summing directly while the sum stays finite and incrementally after.
fn avg(w: &[Sample]) -> f64 {
    let Some((first, rest)) = w.split_first() else {
        return f64::NAN;
    };
    // The common case: the sum never overflows.
    match finite_sum(rest, first.v) {
        Some((sum, c)) => (sum + c) / w.len() as f64,
        None => avg_loop(first.v, rest),
    }
}

/// The mean as Prometheus's loop computes it, switching to an incremental mean once the sum
/// would overflow.
fn avg_loop(first: f64, rest: &[Sample]) -> f64 {
    let (mut sum, mut c, mut count) = (first, 0.0, 1.0);
    let (mut mean, mut incremental) = (0.0, false);
    for v in rest.iter().map(|s| s.v) {
        count += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(v, sum, c);
            if !ns.is_infinite() {
                (sum, c) = (ns, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        (sum + c) / count
    }
}

fn variance(w: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in w {
        count += 1.0;
        let delta = s.v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (s.v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// rate/increase/delta: the change over the window, extrapolated towards the window's edges.
/// A counter (`resets` given: the indices in `c.all` where it went down, see [`Resets`]) adds
/// the value before each reset, in order, as Prometheus's loop over the window does.
fn extrapolated_rate(
    w: &[Sample],
    c: &WindowCtx,
    resets: Option<&[usize]>,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    let is_counter = resets.is_some();
    for &j in resets.unwrap_or(&[]) {
        if let Some(prev) = c.all.get(j.wrapping_sub(1)) {
            result += prev.v;
        }
    }
    // In f64: extreme timestamps must not overflow.
    let mut to_start = (first.t as f64 - c.range_start as f64) / 1000.0;
    let mut to_end = (c.range_end as f64 - last.t as f64) / 1000.0;
    let sampled = (last.t as f64 - first.t as f64) / 1000.0;
    let avg_step = sampled / (w.len() - 1) as f64;
    let threshold = avg_step * 1.1;
    if to_start >= threshold {
        to_start = avg_step / 2.0;
    }
    if is_counter && result > 0.0 && first.v >= 0.0 {
        // A counter does not go below zero: do not extrapolate past where it would be zero.
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg_step / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= (c.range_end as f64 - c.range_start as f64) / 1000.0;
    }
    Some(result * factor)
}

/// irate/idelta: from the last two samples of the window.
fn instant_value(w: &[Sample], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (a, b) = (w[w.len() - 2], w[w.len() - 1]);
    let mut v = if is_rate && b.v < a.v {
        b.v // a counter reset
    } else {
        b.v - a.v
    };
    if is_rate {
        if b.t == a.t {
            return None;
        }
        v /= (b.t as f64 - a.t as f64) / 1000.0;
    }
    Some(v)
}

/// Least-squares slope and intercept, x in seconds relative to `intercept_t`.
fn linear_regression(w: &[Sample], intercept_t: i64) -> (f64, f64) {
    let Some((first, rest)) = w.split_first() else {
        return (f64::NAN, f64::NAN);
    };
    let init_y = first.v;
    if rest.iter().all(|s| s.v == init_y) {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let n = w.len() as f64;
    // The four sums, first on the fast path (see `kahan_inc_finite`).
    let mut sums = regression_sums(w, intercept_t, kahan_inc_finite);
    if !sums.iter().all(|(s, c)| s.is_finite() && c.is_finite()) {
        sums = regression_sums(w, intercept_t, kahan_inc);
    }
    let [(sx, cx), (sy, cy), (sxy, cxy), (sx2, cx2)] = sums;
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// The Kahan sums (with compensations) of x, y, xy and x² over `w`, x in seconds relative to
/// `intercept_t`, each added by `step`.
#[inline(always)]
fn regression_sums(
    w: &[Sample],
    intercept_t: i64,
    step: impl Fn(f64, f64, f64) -> (f64, f64),
) -> [(f64, f64); 4] {
    let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    for s in w {
        let x = (s.t as f64 - intercept_t as f64) / 1000.0;
        (sx, cx) = step(x, sx, cx);
        (sy, cy) = step(s.v, sy, cy);
        (sxy, cxy) = step(x * s.v, sxy, cxy);
        (sx2, cx2) = step(x * x, sx2, cx2);
    }
    [(sx, cx), (sy, cy), (sxy, cxy), (sx2, cx2)]
}

/// The φ-quantile of `values` (sorted in place), interpolating between neighbours.
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0);
    let hi = (lo + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lo as usize] * (1.0 - weight) + values[hi as usize] * weight
}

/// Go's `math.Max`: NaN wins.
pub(super) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
pub(super) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn math_fn(name: &str) -> fn(f64) -> f64 {
    match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x // 0, -0 and NaN stay as they are
            }
        },
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        "deg" => |x| x * 180.0 / std::f64::consts::PI,
        _ => |x| x * std::f64::consts::PI / 180.0, // rad
    }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn date_fn(name: &str) -> fn(i64) -> f64 {
    match name {
        "minute" => |s| s.rem_euclid(3600).div_euclid(60) as f64,
        "hour" => |s| s.rem_euclid(86_400).div_euclid(3600) as f64,
        "day_of_week" => |s| (s.div_euclid(86_400) + 4).rem_euclid(7) as f64,
        "day_of_month" => |s| civil_from_days(s.div_euclid(86_400)).2 as f64,
        "day_of_year" => |s| {
            let days = s.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            ((1..m).map(|mm| days_in_month(y, mm)).sum::<i64>() + d) as f64
        },
        "days_in_month" => |s| {
            let (y, m, _) = civil_from_days(s.div_euclid(86_400));
            days_in_month(y, m) as f64
        },
        "month" => |s| civil_from_days(s.div_euclid(86_400)).1 as f64,
        _ => |s| civil_from_days(s.div_euclid(86_400)).0 as f64, // year
    }
}

/// The labels `absent()` gives: the selector's equality matchers, except names matched twice.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let Ok(matchers) = selector_matchers(vs) else {
        return Labels::empty();
    };
    let mut b = crate::model::LabelsBuilder::new();
    let mut has: Vec<&str> = Vec::new();
    for m in &matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.kind == MatchKind::Equal && !has.contains(&m.name.as_str()) {
            b.set(&m.name, &m.value);
            has.push(&m.name);
        } else {
            b.del(&m.name);
        }
    }
    b.take()
}

/// Applies `f` per step to the classic histograms in `v`: series grouped by their labels without
/// `le`, each with its buckets `(upper bound, count)`. Series without a valid `le` are skipped
/// with a warning. The results have neither `le` nor the metric name (with delayed name removal:
/// keep the name, marked). `f` gets the evaluator, the step, the metric name for annotations
/// (`""` without delayed name removal, as in Prometheus) and the buckets.
async fn classic_buckets(
    ev: &mut Evaluator<'_>,
    v: StepVec,
    n: usize,
    mut f: impl FnMut(&mut Evaluator<'_>, usize, &str, &mut [(f64, f64)]) -> f64,
) -> Result<Val, QueryError> {
    let delayed = ev.delayed_names();
    let mut b = StepVecBuilder::new(n);
    let mut groups: HashMap<Labels, u32> = HashMap::new();
    let mut group_labels: Vec<Labels> = Vec::new();
    let mut group_out: Vec<Option<u32>> = Vec::new();
    // Per input series: its bucket bound and group.
    let mut info: Vec<Option<(f64, u32)>> = Vec::with_capacity(v.table.len());
    for l in &v.table.labels {
        let le = l.get("le");
        match parse_go_float(le) {
            Some(bound) => {
                let mut key = l.builder();
                key.del("le");
                let key = key.take();
                let g = match groups.get(&key) {
                    Some(&g) => g,
                    None => {
                        let g = group_labels.len() as u32;
                        group_labels.push(if delayed {
                            key.clone()
                        } else {
                            drop_name(&key)
                        });
                        group_out.push(None);
                        groups.insert(key, g);
                        g
                    }
                };
                info.push(Some((bound, g)));
            }
            None => {
                let name = if delayed { l.metric_name() } else { "" };
                ev.warn(format!(
                    "PromQL warning: bucket label \"le\" is missing or has a malformed value of \"{le}\"{}",
                    for_metric_name(name)
                ));
                info.push(None);
            }
        }
    }
    let mut per_group: Vec<Vec<(f64, f64)>> = vec![Vec::new(); group_labels.len()];
    let mut order: Vec<u32> = Vec::new();
    for (k, step) in v.steps().enumerate() {
        per_group.iter_mut().for_each(|g| g.clear());
        order.clear();
        for &(i, x) in step {
            if let Some((bound, g)) = info[i as usize] {
                if per_group[g as usize].is_empty() {
                    order.push(g);
                }
                per_group[g as usize].push((bound, x));
            }
        }
        for &g in &order {
            let labels = &group_labels[g as usize];
            let name = if delayed { labels.metric_name() } else { "" };
            let res = f(ev, k, name, &mut per_group[g as usize]);
            let o = match group_out[g as usize] {
                Some(o) => o,
                None => *group_out[g as usize].insert(b.intern_marked(labels.clone(), delayed)),
            };
            // Two groups that differ only in their metric names collide here, as in Prometheus.
            b.push(k, o, res)?;
        }
        ev.tick(step.len() + 1).await;
    }
    Ok(Val::Vector(b.finish_yielding(ev).await))
}

/// Prometheus's suffix naming the metric in an annotation, `""` for no name.
fn for_metric_name(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" for metric name {name:?}")
    }
}

/// Sorts buckets by bound and merges buckets with equal bounds; false if there is no `+Inf`
/// bucket.
fn sort_and_coalesce(buckets: &mut [(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return None,
    }
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    Some(merged)
}

/// The fraction of observations between `lower` and `upper` in classic buckets, interpolating
/// linearly within buckets (no observations counted inside an infinite-width bucket).
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut [(f64, f64)]) -> f64 {
    let Some(buckets) = sort_and_coalesce(buckets) else {
        return f64::NAN;
    };
    let count = buckets[buckets.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if buckets[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, &(upper_bound, c)) in buckets.iter().enumerate() {
        if i > 0 {
            lower_bound = buckets[i - 1].0;
        }
        let interpolate = |v: f64| -> f64 {
            if lower_bound == f64::NEG_INFINITY {
                return c;
            }
            rank + (c - rank) * (v - lower_bound) / (upper_bound - lower_bound)
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = c;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// Parses a float as Go's `strconv.ParseFloat` does for the usual spellings.
pub(super) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim_start_matches(['+', '-']);
    if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
        return Some(if s.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// The quantile of classic buckets `(upper bound, cumulative count)`; also whether the counts had
/// to be forced monotonic.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    let Some(mut merged) = sort_and_coalesce(buckets) else {
        return (f64::NAN, false);
    };
    let buckets = &mut merged;
    // Ensure monotonic counts, ignoring tiny floating-point deltas.
    let mut forced = false;
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    if buckets.len() < 2 {
        return (f64::NAN, forced);
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * observations;
    let last = buckets.len() - 1;
    let b = buckets[..last].partition_point(|b| b.1 < rank);
    if b == last {
        return (buckets[last - 1].0, forced);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return (buckets[0].0, forced);
    }
    let mut start = 0.0;
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

/// Prometheus's `almost.Equal`.
pub(super) fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    let abs_sum = a.abs() + b.abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let f = date_fn("day_of_year");
        assert_eq!(f(365 * 86_400), 1.0);
        assert_eq!(date_fn("day_of_week")(0), 4.0); // a Thursday
        assert_eq!(date_fn("days_in_month")(86_400 * 40), 28.0);
    }

    #[test]
    fn quantiles() {
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(0.5, &mut v), 2.5);
        assert_eq!(quantile(0.0, &mut v), 1.0);
        assert_eq!(quantile(2.0, &mut v), f64::INFINITY);
        let mut b = vec![(0.1, 1.0), (f64::INFINITY, 4.0), (0.5, 3.0)];
        let (r, _) = bucket_quantile(0.5, &mut b);
        assert!((r - 0.3).abs() < 1e-12);
    }

    /// Deterministic test data: a counter through SipHash with fixed keys.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            use std::hash::{Hash, Hasher};
            self.0 += 1;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.0.hash(&mut h);
            h.finish()
        }

        /// Values that stress the sums: wide magnitudes, both signs, ties, zeros, NaN.
        fn value(&mut self) -> f64 {
            let r = self.next();
            let mag = f64::powi(10.0, (r % 40) as i32 - 20);
            match r % 23 {
                0 => 0.0,
                1 => -0.0,
                2 => f64::NAN,
                3 => 5.0,
                4 => (r >> 8) as f64,
                _ => ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * mag,
            }
        }

        fn series(&mut self, len: usize, nan: bool) -> Vec<Sample> {
            let mut t = 1_700_000_000_000i64;
            (0..len)
                .map(|_| {
                    t += 900 + (self.next() % 200) as i64;
                    let mut v = self.value();
                    if !nan && v.is_nan() {
                        v = 1.0;
                    }
                    Sample { t, v }
                })
                .collect()
        }
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn two_sum_is_neumaier_to_the_bit() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..200_000 {
            let (sum, inc) = (r.value(), r.value());
            let c = r.value().abs() * 1e-17;
            let (t1, c1) = kahan_inc(inc, sum, c);
            let (t2, c2) = kahan_inc_finite(inc, sum, c);
            if t1.is_finite() && c2.is_finite() {
                assert!(same(t1, t2) && same(c1, c2), "{sum:e} + {inc:e}, c {c:e}");
            }
        }
        // Near the top of the range TwoSum may overflow: the fast path must then give up.
        for (sum, inc) in [
            (f64::MAX, -f64::MAX),
            (f64::MAX * 0.75, -f64::MAX),
            (1e308, 9e307),
        ] {
            let (t, c) = kahan_inc_finite(inc, sum, 0.0);
            let (t1, c1) = kahan_inc(inc, sum, 0.0);
            assert!(!t.is_finite() || !c.is_finite() || (same(t, t1) && same(c, c1)));
        }
    }

    #[test]
    fn fast_sums_agree_with_the_loops() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let big = [f64::MAX, f64::MAX, -f64::MAX, 1.0, f64::INFINITY];
        let big: Vec<Sample> = big
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample {
                t: i as i64 * 1000,
                v,
            })
            .collect();
        let mut cases: Vec<Vec<Sample>> = (2..=big.len()).map(|n| big[..n].to_vec()).collect();
        for len in [1, 2, 3, 10, 61, 300] {
            for _ in 0..400 {
                let nan = r.next() % 3 != 0;
                cases.push(r.series(len, nan));
            }
        }
        for w in &cases {
            let (s1, c1) = kahan_sum(w, 0.0, kahan_inc);
            if let Some((s2, c2)) = finite_sum(w, 0.0) {
                assert!(same(s1, s2) && same(c1, c2));
            }
            assert!(same(avg(w), avg_loop(w[0].v, &w[1..])));
            let at = w[w.len() / 2].t;
            let fast = regression_sums(w, at, kahan_inc_finite);
            if fast.iter().all(|(s, c)| s.is_finite() && c.is_finite()) {
                let careful = regression_sums(w, at, kahan_inc);
                for (a, b) in fast.iter().zip(&careful) {
                    assert!(same(a.0, b.0) && same(a.1, b.1), "{fast:?} {careful:?}");
                }
            }
        }
    }

    #[test]
    fn sliding_extremes_and_resets_match_each_window() {
        let mut r = Rng(0xD1B5_4A32_D192_ED03);
        // One state across rounds, each round a new series: the state must start afresh.
        let (mut max, mut min, mut resets) = (
            SlidingExtreme::new(true),
            SlidingExtreme::new(false),
            Resets::default(),
        );
        for series in 0..300 {
            let len = 1 + (r.next() % 200) as usize;
            let mut w = r.series(len, true);
            if series % 3 == 0 {
                // Counters: mostly rising, now and then reset.
                let mut v = 0.0;
                for s in &mut w {
                    v = if r.next() % 17 == 0 {
                        0.0
                    } else {
                        v + (r.next() % 5) as f64
                    };
                    s.v = v;
                }
            }
            let (mut lo, mut hi) = (0usize, 0usize);
            while hi < len {
                hi = (hi + 1 + (r.next() % 9) as usize).min(len);
                lo = lo.max(hi.saturating_sub(1 + (r.next() % 40) as usize));
                if r.next() % 5 == 0 {
                    lo = hi - 1; // a jump with no overlap
                }
                let win = &w[lo..hi];
                let c = WindowCtx {
                    ts: 0,
                    range_start: win[0].t - 1,
                    range_end: win[win.len() - 1].t,
                    series,
                    all: &w,
                    first: lo,
                };
                let naive = |max: bool| {
                    let mut m = win[0].v;
                    for s in win {
                        if (max && s.v > m) || (!max && s.v < m) || m.is_nan() {
                            m = s.v;
                        }
                    }
                    m
                };
                assert!(same(max.at(win, &c), naive(true)), "max {lo}..{hi}");
                assert!(same(min.at(win, &c), naive(false)), "min {lo}..{hi}");
                // The resets Prometheus's loop over this window would add, in its order.
                let want: Vec<usize> = (lo + 1..hi).filter(|&j| w[j].v < w[j - 1].v).collect();
                assert_eq!(resets.within(win, &c), want.as_slice(), "resets {lo}..{hi}");
            }
        }
    }
}
