//! Runs parsed scripts through Perch's engine over a fresh flash store (the store the agent runs,
//! with its segments in memory) and judges every eval on its own (`FORMAT.md` §5.3), going on after a failure. The engine runs in its default mode
//! or with delayed `__name__` removal, as the caller and the script's
//! `# perch: delayed-name-removal on|off` lines say.
//!
//! Each eval gets three separate verdicts:
//! - the result check (values, labels, order with `expect ordered`, the expected failure): this
//!   is the pass rate;
//! - annotations: presence or absence of warnings/infos where the eval asks (`expect warn`,
//!   `expect no_info`, …), not their text (the Go texts carry positions Perch does not have);
//! - consistency (§5.4): the instant eval re-run as a range query t−1m..t+1m, and with every
//!   selector pinned to `@ t` at other evaluation times.

use super::script::{self, Cmd, Eval, Expect};
use futures_lite::future::block_on;
use perch::model::{is_stale, Labels, Sample};
use perch::promql::{Engine, EngineOptions, QueryError, QueryResult, Value, VectorSample};
use perch::storage::flash::{FlashOptions, FlashStorage};
use perch::storage::{Querier, Storage};

/// The failure reason of an eval whose evaluation panicked.
pub const PANIC: &str = "PANIC (the engine must not panic on input)";

/// The verdicts of one eval.
#[derive(Debug)]
pub struct Outcome {
    /// The eval's index among the file's evals (0-based, file order).
    pub index: usize,
    /// The line of the `eval` header in the script.
    pub line: usize,
    pub expr: String,
    /// `Err(why)` when the result check failed.
    pub result: Result<(), String>,
    /// Why the annotations did not match, if they did not.
    pub annotations: Option<String>,
    /// Why a consistency re-run differed, if one did.
    pub consistency: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }

    /// Every complaint, one per line, for a strict run.
    pub fn complaints(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Err(why) = &self.result {
            v.push(format!("{}: {}: {why}", self.line, self.expr));
        }
        if let Some(why) = &self.annotations {
            v.push(format!("{}: {}: ANNOTATIONS: {why}", self.line, self.expr));
        }
        if let Some(why) = &self.consistency {
            v.push(format!("{}: {}: {why}", self.line, self.expr));
        }
        v
    }
}

/// The store the scripts load into: nothing a script writes may be dropped, so retention is a
/// century and the bounds are far above any script (the segments live in RAM: only what is
/// written takes memory).
fn new_store() -> FlashStorage {
    FlashStorage::in_memory(FlashOptions {
        retention_ms: 100 * 365 * 86_400_000,
        budget_bytes: 1 << 30,
        max_series: 1 << 24,
        max_head_bytes: 1 << 30,
        ..FlashOptions::default()
    })
    .expect("an empty store in memory opens")
}

/// The engine as the reference runner configures it (5m lookback; the sample limit is
/// Perch's default, as no case is meant to hit it), with or without delayed name removal
/// (which the reference runner has on and a default Prometheus server off).
fn engine(delayed_name_removal: bool) -> Engine {
    Engine::new(EngineOptions {
        delayed_name_removal,
        ..EngineOptions::default()
    })
}

/// Appends a `load` command's samples and flushes them, so evals read them back from blocks
/// as the agent reads flushed data (the engine's own tests cover the head).
fn load(store: &FlashStorage, interval: i64, series: &[(Labels, Vec<Option<f64>>)]) {
    // One batch per position, so every series' samples stay in order.
    let max = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    for pos in 0..max {
        let mut app = store.appender();
        for (l, vals) in series {
            if let Some(Some(v)) = vals.get(pos) {
                // A sample the store refuses shows up as a failing eval, with its reason.
                let _ = app.append(l, pos as i64 * interval, *v);
            }
        }
        let _ = app.commit();
    }
    // A flush that fails leaves the samples in the head, still visible to the evals.
    let _ = store.flush();
}

/// Runs every eval of a script; `want(index)` selects which (the others are skipped).
/// `delayed` is the engine mode the script starts in (`--enable-feature=promql-delayed-name-removal`);
/// a `# perch: delayed-name-removal on|off` line changes it for the evals after it.
pub fn run(text: &str, delayed: bool, mut want: impl FnMut(usize) -> bool) -> Vec<Outcome> {
    let engines = [engine(false), engine(true)];
    let mut mode = delayed;
    let mut store = new_store();
    let mut out = Vec::new();
    let mut index = 0;
    for cmd in script::parse(text) {
        match cmd {
            Cmd::Clear => store = new_store(),
            Cmd::DelayedNameRemoval(on) => mode = on,
            Cmd::Load {
                interval_ms,
                series,
            } => load(&store, interval_ms, &series),
            Cmd::Eval(ev) => {
                let i = index;
                index += 1;
                if want(i) {
                    let q = store.querier();
                    // The engine must not panic on any input; if it does, the eval fails with
                    // PANIC and the rest of the file still runs.
                    let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_eval(&engines[mode as usize], q.as_ref(), &ev, i)
                    }));
                    out.push(o.unwrap_or_else(|_| Outcome {
                        index: i,
                        line: ev.line,
                        expr: ev.expr.clone(),
                        result: Err(PANIC.into()),
                        annotations: None,
                        consistency: None,
                    }));
                }
            }
        }
    }
    out
}

fn run_eval(engine: &Engine, q: &dyn Querier, ev: &Eval, index: usize) -> Outcome {
    let mut o = Outcome {
        index,
        line: ev.line,
        expr: ev.expr.clone(),
        result: Ok(()),
        annotations: None,
        consistency: None,
    };
    if let Some(why) = &ev.unsupported {
        o.result = Err(format!("unsupported test syntax: {why}"));
        return o;
    }
    let e = &ev.expect;
    let res = if ev.instant {
        block_on(engine.instant(q, &ev.expr, ev.start))
    } else {
        block_on(engine.range(q, &ev.expr, ev.start, ev.end, ev.step))
    };
    if let Ok(r) = &res {
        let has = |v: &Vec<String>| !v.is_empty();
        if e.warn.is_some_and(|w| w != has(&r.warnings))
            || e.info.is_some_and(|i| i != has(&r.infos))
        {
            o.annotations = Some(format!(
                "expected warn={:?} info={:?}, got warnings {:?} infos {:?}",
                e.warn, e.info, r.warnings, r.infos
            ));
        }
    }
    o.result = check(res, e, ev.instant, ev.start, ev.step);
    if ev.instant {
        o.consistency = range_mode(engine, q, ev).or_else(|| at_invariance(engine, q, ev));
    }
    o
}

/// Prometheus's float comparison (`almost.Equal` with ε = 1e-6); NaN equals NaN, a stale
/// marker only a stale marker.
pub fn same(a: f64, b: f64) -> bool {
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    const EPS: f64 = 1e-6;
    if is_stale(a) || is_stale(b) {
        return is_stale(a) && is_stale(b);
    }
    if (a.is_nan() && b.is_nan()) || a == b {
        return true;
    }
    let diff = (a - b).abs();
    let abs_sum = a.abs() + b.abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPS * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

/// Compares a result with the expectation (§5.3); `Err` says why not.
fn check(
    res: Result<QueryResult, QueryError>,
    e: &Expect,
    instant: bool,
    start: i64,
    step: i64,
) -> Result<(), String> {
    if e.fail {
        return match res {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("expected failure, got {:?}", r.value)),
        };
    }
    let r = res.map_err(|err| format!("error: {err}"))?;
    if let Some(s) = &e.string {
        return match r.value {
            Value::String { s: ref got, .. } if got == s => Ok(()),
            v => Err(format!("expected string {s:?}, got {v:?}")),
        };
    }
    if let Some(x) = e.scalar {
        return match r.value {
            Value::Scalar { v, .. } if same(v, x) => Ok(()),
            v => Err(format!("expected scalar {x}, got {v:?}")),
        };
    }
    match r.value {
        Value::Vector(v) => {
            if !instant || e.range_vector.is_some() {
                return Err("got a vector, expected a matrix".into());
            }
            if v.len() != e.series.len() {
                return Err(format!(
                    "expected {} samples, got {}: {v:?}",
                    e.series.len(),
                    v.len()
                ));
            }
            for (pos, (l, vals)) in e.series.iter().enumerate() {
                let (Some(Some(x)), 1) = (vals.first().copied(), vals.len()) else {
                    return Err(format!("{l}: an instant eval expects exactly one value"));
                };
                let found = if e.ordered {
                    v.get(pos).filter(|s| s.labels == *l)
                } else {
                    v.iter().find(|s| s.labels == *l)
                };
                match found {
                    Some(s) if same(s.v, x) => {}
                    Some(s) => return Err(format!("{l}: expected {x}, got {}", s.v)),
                    None => return Err(format!("missing {l} (or out of order): got {v:?}")),
                }
            }
            Ok(())
        }
        Value::Matrix(m) => {
            let (t0, st) = match e.range_vector {
                Some(rv) => rv,
                None if instant => {
                    if e.series.is_empty() && m.is_empty() {
                        return Ok(());
                    }
                    return Err(format!("got a matrix, expected a vector: {m:?}"));
                }
                None => (start, step),
            };
            if e.ordered {
                return Err("`expect ordered` on a matrix result".into());
            }
            if m.len() != e.series.len() {
                return Err(format!(
                    "expected {} series, got {}: {m:?}",
                    e.series.len(),
                    m.len()
                ));
            }
            if m.windows(2).any(|w| w[0].labels >= w[1].labels) {
                return Err("matrix not sorted by labels".into());
            }
            for (l, vals) in &e.series {
                let Some(s) = m.iter().find(|s| s.labels == *l) else {
                    return Err(format!("missing series {l}: got {m:?}"));
                };
                let want: Vec<Sample> = vals
                    .iter()
                    .enumerate()
                    .filter_map(|(k, v)| {
                        v.map(|v| Sample {
                            t: t0 + k as i64 * st,
                            v,
                        })
                    })
                    .filter(|s| !is_stale(s.v))
                    .collect();
                let ok = want.len() == s.samples.len()
                    && want
                        .iter()
                        .zip(&s.samples)
                        .all(|(a, b)| a.t == b.t && same(a.v, b.v));
                if !ok {
                    return Err(format!("{l}: expected {want:?}, got {:?}", s.samples));
                }
            }
            Ok(())
        }
        v => Err(format!("unexpected value {v:?}")),
    }
}

/// §5.4 check 2: the range query t−1m..t+1m (step 1m) must give the same result at t.
fn range_mode(engine: &Engine, q: &dyn Querier, ev: &Eval) -> Option<String> {
    let e = &ev.expect;
    let lower = ev.expr.to_ascii_lowercase();
    if e.fail
        || e.ordered
        || e.string.is_some()
        || e.range_vector.is_some()
        || ["start()", "end()", "range()", "step()"]
            .iter()
            .any(|f| lower.contains(f))
    {
        return None;
    }
    let t = ev.start;
    let r = block_on(engine.range(q, &ev.expr, t - 60_000, t + 60_000, 60_000));
    let as_instant = r.map(|r| {
        let Value::Matrix(m) = r.value else {
            return r;
        };
        let v: Vec<VectorSample> = m
            .into_iter()
            .filter_map(|s| {
                let p = s.samples.iter().find(|p| p.t == t)?;
                Some(VectorSample {
                    labels: s.labels,
                    t,
                    v: p.v,
                })
            })
            .collect();
        let value = match (e.scalar, v.first()) {
            (Some(_), Some(s)) => Value::Scalar { t, v: s.v },
            _ => Value::Vector(v),
        };
        QueryResult {
            value,
            warnings: r.warnings,
            infos: r.infos,
            stats: r.stats,
        }
    });
    check(as_instant, e, true, t, ev.step)
        .err()
        .map(|why| format!("RANGE-MODE: {why}"))
}

/// §5.4 check 1: with every selector pinned to `@ t`, other evaluation times give the same
/// result.
fn at_invariance(engine: &Engine, q: &dyn Querier, ev: &Eval) -> Option<String> {
    const TIME_FNS: [&str; 16] = [
        "days_in_month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "end",
        "hour",
        "minute",
        "month",
        "year",
        "predict_linear",
        "range",
        "start",
        "step",
        "time",
        "timestamp",
        "start_timestamp",
    ];
    let lower = ev.expr.to_ascii_lowercase();
    let t = ev.start;
    if TIME_FNS.iter().any(|f| lower.contains(&format!("{f}("))) || t < 0 {
        return None;
    }
    let pinned = pin_at(&ev.expr, t)?;
    let times: Vec<i64> = if t == 0 {
        vec![-1000, 0, 1000]
    } else {
        vec![-10 * t, 0, t / 5, t, 10 * t]
    };
    for at in times {
        let r = block_on(engine.instant(q, &pinned, at));
        if let Err(why) = check(r, &ev.expect, true, t, ev.step) {
            return Some(format!("AT-INVARIANCE at {at}ms ({pinned}): {why}"));
        }
    }
    None
}

/// The expression with `@ t` on every selector and subquery that has none (not inside a
/// subquery that has one), printed back as PromQL.
fn pin_at(expr: &str, t: i64) -> Option<String> {
    use promql_parser::parser::{AtModifier, Expr};
    fn walk(e: &mut Expr, at: &AtModifier) {
        match e {
            Expr::Aggregate(a) => {
                walk(&mut a.expr, at);
                if let Some(p) = a.param.as_mut() {
                    walk(p, at);
                }
            }
            Expr::Unary(u) => walk(&mut u.expr, at),
            Expr::Binary(b) => {
                walk(&mut b.lhs, at);
                walk(&mut b.rhs, at);
            }
            Expr::Paren(p) => walk(&mut p.expr, at),
            Expr::Subquery(s) if s.at.is_none() => s.at = Some(at.clone()),
            Expr::VectorSelector(v) if v.at.is_none() => v.at = Some(at.clone()),
            Expr::MatrixSelector(m) if m.vs.at.is_none() => m.vs.at = Some(at.clone()),
            Expr::Call(c) => c.args.args.iter_mut().for_each(|a| walk(a, at)),
            _ => {}
        }
    }
    let text = perch::promql::expand_durations(expr, 0, 0);
    let mut e = promql_parser::parser::parse(&text).ok()?;
    let at = AtModifier::At(std::time::UNIX_EPOCH + std::time::Duration::from_millis(t as u64));
    walk(&mut e, &at);
    Some(e.to_string())
}
