//! Engine tests over an in-memory store with exact expected values.
//!
//! Most tests are small scripts in Prometheus's promqltest language (`load`, `eval instant|range`,
//! `expect fail|ordered|string`), run by the harness below; values match within Prometheus's
//! test tolerance (`almost.Equal`, 1e-6 relative, exact for 0). The same harness runs the shared
//! conformance corpus in an ignored test (`conformance_corpus`).

use super::functions::almost_equal;
use super::{Engine, EngineOptions, QueryError, Value};
use crate::model::{Labels, Sample, STALE_NAN};
use crate::storage::memory::{MemOptions, MemStorage};
use crate::storage::Storage;
use futures_lite::future::block_on;
use std::future::Future;

// ---------------------------------------------------------------------------------------------
// The harness.

/// Parses a Prometheus duration (`1h30m`, `10s53ms`, `0`) into ms.
fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let mut total = 0i64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += n * mult;
    }
    Some(total)
}

/// Splits a series line into its metric part and its values part.
fn split_series(line: &str) -> (&str, &str) {
    let brace = line.find('{');
    let ws = line.find(char::is_whitespace).unwrap_or(line.len());
    match brace {
        Some(b) if b < ws => {
            let mut in_str: Option<char> = None;
            let mut esc = false;
            for (i, c) in line.char_indices().skip_while(|(i, _)| *i < b) {
                if let Some(q) = in_str {
                    if esc {
                        esc = false;
                    } else if c == '\\' {
                        esc = true;
                    } else if c == q {
                        in_str = None;
                    }
                } else if c == '"' || c == '\'' || c == '`' {
                    in_str = Some(c);
                } else if c == '}' {
                    return (&line[..=i], line[i + 1..].trim());
                }
            }
            (line, "")
        }
        _ => (&line[..ws], line[ws..].trim()),
    }
}

/// The labels of a series description (`name{a="b"}`), parsed with the PromQL parser.
fn parse_metric(s: &str) -> Option<Labels> {
    if s.trim() == "{}" {
        return Some(Labels::empty());
    }
    let e = promql_parser::parser::parse(s).ok()?;
    let promql_parser::parser::Expr::VectorSelector(vs) = e else {
        return None;
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(n) = vs.name {
        pairs.push(("__name__".into(), n));
    }
    for m in vs.matchers.matchers {
        pairs.push((m.name, m.value));
    }
    Some(Labels::from_pairs(&pairs))
}

fn parse_num(s: &str) -> Option<f64> {
    let t = s.replace('_', "");
    let l = t.to_ascii_lowercase();
    match l.trim_start_matches(['+', '-']) {
        "inf" => {
            return Some(if l.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    t.parse().ok()
}

/// Expands a value sequence: `None` is an omitted position.
fn expand_values(s: &str) -> Option<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().ok()?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if item == "stale" {
            out.push(Some(f64::from_bits(STALE_NAN)));
            continue;
        }
        if item.contains("{{") {
            return None; // native histograms are not supported
        }
        match item.rfind('x') {
            Some(xi) if !item[..xi].is_empty() && item[xi + 1..].parse::<usize>().is_ok() => {
                let n: usize = item[xi + 1..].parse().ok()?;
                let body = &item[..xi];
                // Find the operator between start and step (not a leading sign or exponent sign).
                let bytes = body.as_bytes();
                let mut op_at = None;
                for i in 1..bytes.len() {
                    if (bytes[i] == b'+' || bytes[i] == b'-')
                        && !matches!(bytes[i - 1], b'e' | b'E')
                    {
                        op_at = Some(i);
                    }
                }
                let (start, step) = match op_at {
                    Some(i) => {
                        let st = parse_num(&body[..i])?;
                        let d = parse_num(&body[i + 1..])?;
                        (st, if bytes[i] == b'-' { -d } else { d })
                    }
                    None => (parse_num(body)?, 0.0),
                };
                let mut v = start;
                out.push(Some(v));
                for _ in 0..n {
                    v += step;
                    out.push(Some(v));
                }
            }
            _ => out.push(Some(parse_num(item)?)),
        }
    }
    Some(out)
}

#[derive(Debug, Default)]
struct Expect {
    fail: bool,
    ordered: bool,
    string: Option<String>,
    /// `expect range vector from a to b step s` on an instant eval.
    range_vector: Option<(i64, i64)>,
    scalar: Option<f64>,
    series: Vec<(Labels, Vec<Option<f64>>)>,
    unsupported: bool,
    /// `expect warn` / `expect no_warn` / `expect info` / `expect no_info` (presence only).
    warn: Option<bool>,
    info: Option<bool>,
}

#[derive(Debug)]
enum Cmd {
    Clear,
    Load(i64, Vec<(Labels, Vec<Option<f64>>)>),
    Eval {
        line: usize,
        instant: bool,
        start: i64,
        end: i64,
        step: i64,
        expr: String,
        expect: Expect,
        bad_header: bool,
    },
}

fn parse_script(text: &str) -> Vec<Cmd> {
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim()).collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    let blank = |l: &str| l.is_empty() || l.starts_with('#');
    while i < lines.len() {
        let l = lines[i];
        if blank(l) {
            i += 1;
            continue;
        }
        let word = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let start_line = i + 1;
        i += 1;
        if word == "clear" {
            cmds.push(Cmd::Clear);
            continue;
        }
        let mut body = Vec::new();
        while i < lines.len() && !blank(lines[i]) {
            body.push(lines[i]);
            i += 1;
        }
        if word.starts_with("load") {
            let interval = l
                .split_whitespace()
                .nth(1)
                .and_then(parse_duration)
                .unwrap_or(0);
            let mut series = Vec::new();
            for b in body {
                let (m, v) = split_series(b);
                if m.ends_with("@st") {
                    continue;
                }
                if let (Some(l), Some(v)) = (parse_metric(m), expand_values(v)) {
                    // A later line with the same labels replaces an earlier one.
                    series.retain(|(x, _): &(Labels, _)| *x != l);
                    series.push((l, v));
                }
            }
            cmds.push(Cmd::Load(interval, series));
        } else if word.starts_with("eval") {
            cmds.push(parse_eval(l, &body, start_line));
        }
    }
    cmds
}

fn parse_eval(header: &str, body: &[&str], line: usize) -> Cmd {
    let mut expect = Expect {
        fail: header.starts_with("eval_fail"),
        ordered: header.starts_with("eval_ordered"),
        ..Default::default()
    };
    let rest = header
        .split_once(char::is_whitespace)
        .map(|x| x.1)
        .unwrap_or("")
        .trim();
    let (mut instant, mut start, mut end, mut step, mut expr, mut bad) =
        (true, 0, 0, 1, String::new(), false);
    if let Some(r) = rest.strip_prefix("instant") {
        let r = r.trim().strip_prefix("at").unwrap_or(r).trim();
        let (t, e) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
        match parse_duration(t) {
            Some(t) => (start, end) = (t, t),
            None => bad = true,
        }
        expr = e.trim().to_string();
    } else if let Some(r) = rest.strip_prefix("range") {
        instant = false;
        let w: Vec<&str> = r.split_whitespace().collect();
        // from A to B step S expr...
        if w.len() >= 7 && w[0] == "from" && w[2] == "to" && w[4] == "step" {
            match (
                parse_duration(w[1]),
                parse_duration(w[3]),
                parse_duration(w[5]),
            ) {
                (Some(a), Some(b), Some(c)) => (start, end, step) = (a, b, c),
                _ => bad = true,
            }
            let idx = r.find(w[5]).map(|p| p + w[5].len()).unwrap_or(0);
            let after_step = &r[r.find(" step ").map(|p| p + 6).unwrap_or(0)..];
            let _ = idx;
            expr = after_step
                .trim()
                .split_once(char::is_whitespace)
                .map(|x| x.1)
                .unwrap_or("")
                .trim()
                .to_string();
        } else {
            bad = true;
        }
    }
    for b in body {
        let words: Vec<&str> = b.split_whitespace().collect();
        if words.first() == Some(&"expect") {
            match words.get(1).copied() {
                Some("fail") => expect.fail = true,
                Some("warn") => expect.warn = Some(true),
                Some("no_warn") => expect.warn = Some(false),
                Some("info") => expect.info = Some(true),
                Some("no_info") => expect.info = Some(false),
                Some("ordered") => expect.ordered = true,
                Some("string") => {
                    let s = b.split_once("string").map(|x| x.1.trim()).unwrap_or("");
                    let s = s.trim_matches(|c| c == '"' || c == '`');
                    expect.string = Some(s.replace("\\\"", "\"").replace("\\\\", "\\"));
                }
                Some("range") => {
                    // expect range vector from A to B step S
                    if let (Some(a), Some(s)) = (
                        words.get(4).and_then(|w| parse_duration(w)),
                        words.get(8).and_then(|w| parse_duration(w)),
                    ) {
                        expect.range_vector = Some((a, s));
                    } else {
                        expect.unsupported = true;
                    }
                }
                _ => {} // warn/info annotations are not checked here
            }
            continue;
        }
        if b.starts_with("expected_fail") {
            continue;
        }
        if let Some(v) = parse_num(b) {
            expect.scalar = Some(v);
            continue;
        }
        let (m, v) = split_series(b);
        match (parse_metric(m), expand_values(v)) {
            (Some(l), Some(v)) => expect.series.push((l, v)),
            _ => expect.unsupported = true,
        }
    }
    Cmd::Eval {
        line,
        instant,
        start,
        end,
        step,
        expr,
        expect,
        bad_header: bad,
    }
}

fn load(store: &MemStorage, interval: i64, series: &[(Labels, Vec<Option<f64>>)]) {
    // One batch per position, so every series' samples stay in order.
    let max = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    for pos in 0..max {
        let mut app = store.appender();
        for (l, vals) in series {
            if let Some(Some(v)) = vals.get(pos) {
                let _ = app.append(l, pos as i64 * interval, *v);
            }
        }
        app.commit().expect("commit");
    }
}

fn same(a: f64, b: f64) -> bool {
    if crate::model::is_stale(a) || crate::model::is_stale(b) {
        return crate::model::is_stale(a) && crate::model::is_stale(b);
    }
    (a.is_nan() && b.is_nan()) || almost_equal(a, b, 1e-6)
}

/// Compares a result with the expectation; `Err` says why not.
fn check(
    res: Result<super::QueryResult, QueryError>,
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
                let Some(x) = vals.first().copied().flatten() else {
                    return Err("bad expected line".into());
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
            if m.len() != e.series.len() {
                return Err(format!(
                    "expected {} series, got {}: {m:?}",
                    e.series.len(),
                    m.len()
                ));
            }
            for w in m.windows(2) {
                if w[0].labels >= w[1].labels {
                    return Err("matrix not sorted".into());
                }
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
                    .filter(|s| !crate::model::is_stale(s.v))
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

/// Runs a script; returns the failures as `line: expr: why`.
fn run_script(text: &str) -> Vec<String> {
    run_script_with(text, |_| true).1
}

/// Runs the evals for which `want(index)` holds; returns (passed, failures).
fn run_script_with(text: &str, mut want: impl FnMut(usize) -> bool) -> (usize, Vec<String>) {
    let engine = Engine::new(EngineOptions::default());
    let mut store = MemStorage::new(MemOptions::default());
    let mut fails = Vec::new();
    let mut passed = 0;
    let mut idx = 0;
    for c in parse_script(text) {
        match c {
            Cmd::Clear => store = MemStorage::new(MemOptions::default()),
            Cmd::Load(interval, series) => load(&store, interval, &series),
            Cmd::Eval {
                line,
                instant,
                start,
                end,
                step,
                expr,
                expect,
                bad_header,
            } => {
                let i = idx;
                idx += 1;
                if !want(i) {
                    continue;
                }
                if bad_header || expect.unsupported {
                    fails.push(format!("{line}: {expr}: unsupported test syntax"));
                    continue;
                }
                let q = store.querier();
                let res = if instant {
                    block_on(engine.instant(q.as_ref(), &expr, start))
                } else {
                    block_on(engine.range(q.as_ref(), &expr, start, end, step))
                };
                if let Ok(r) = &res {
                    let has = |v: &Vec<String>| !v.is_empty();
                    if expect.warn.is_some_and(|w| w != has(&r.warnings))
                        || expect.info.is_some_and(|i| i != has(&r.infos))
                    {
                        fails.push(format!(
                            "{line}: {expr}: ANNOTATIONS (not scored): expected warn={:?} info={:?}, got {:?} {:?}",
                            expect.warn, expect.info, r.warnings, r.infos
                        ));
                    }
                }
                match check(res, &expect, instant, start, step) {
                    Ok(()) => passed += 1,
                    Err(why) => fails.push(format!("{line}: {expr}: {why}")),
                }
                // Range-mode consistency (as the reference runner does for instant evals): the
                // range query t-1m..t+1m must give the same result at t.
                let lower = expr.to_ascii_lowercase();
                let skip = !instant
                    || expect.fail
                    || expect.ordered
                    || expect.string.is_some()
                    || expect.range_vector.is_some()
                    || ["start()", "end()", "range()", "step()"]
                        .iter()
                        .any(|f| lower.contains(f));
                if !skip {
                    let r = block_on(engine.range(
                        q.as_ref(),
                        &expr,
                        start - 60_000,
                        start + 60_000,
                        60_000,
                    ));
                    let as_instant = r.map(|r| {
                        let Value::Matrix(m) = r.value else {
                            return r;
                        };
                        let v: Vec<super::VectorSample> = m
                            .into_iter()
                            .filter_map(|s| {
                                let p = s.samples.iter().find(|p| p.t == start)?;
                                Some(super::VectorSample {
                                    labels: s.labels,
                                    t: start,
                                    v: p.v,
                                })
                            })
                            .collect();
                        let value = match expect.scalar {
                            Some(_) => match v.first() {
                                Some(s) => Value::Scalar { t: start, v: s.v },
                                None => Value::Vector(v),
                            },
                            None => Value::Vector(v),
                        };
                        super::QueryResult {
                            value,
                            warnings: r.warnings,
                            infos: r.infos,
                        }
                    });
                    if let Err(why) = check(as_instant, &expect, true, start, step) {
                        fails.push(format!("{line}: {expr}: RANGE-MODE: {why}"));
                    }
                }
                // @-invariance: with every selector pinned to `@ t`, any evaluation time gives
                // the same result.
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
                let uses_time = TIME_FNS.iter().any(|f| lower.contains(&format!("{f}(")));
                if instant && !uses_time && start >= 0 {
                    if let Some(pinned) = pin_at(&expr, start) {
                        let times: Vec<i64> = if start == 0 {
                            vec![-1000, 0, 1000]
                        } else {
                            vec![-10 * start, 0, start / 5, start, 10 * start]
                        };
                        for t in times {
                            let r = block_on(engine.instant(q.as_ref(), &pinned, t));
                            if let Err(why) = check(r, &expect, instant, start, step) {
                                fails.push(format!(
                                    "{line}: {expr}: AT-INVARIANCE at {t}ms ({pinned}): {why}"
                                ));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    (passed, fails)
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
    let mut e = promql_parser::parser::parse(&super::durations::rewrite(expr, 0, 0)).ok()?;
    let at = AtModifier::At(std::time::UNIX_EPOCH + std::time::Duration::from_millis(t as u64));
    walk(&mut e, &at);
    Some(e.to_string())
}

fn assert_script(text: &str) {
    let fails = run_script(text);
    assert!(fails.is_empty(), "failures:\n{}", fails.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Unit tests.

#[test]
fn harness_parses_values() {
    assert_eq!(
        expand_values("1 _ -2+4x2 1-2x1").unwrap(),
        vec![
            Some(1.0),
            None,
            Some(-2.0),
            Some(2.0),
            Some(6.0),
            Some(1.0),
            Some(-1.0)
        ]
    );
    assert_eq!(parse_duration("1h30m"), Some(5_400_000));
    assert_eq!(parse_duration("10s53ms"), Some(10_053));
}

#[test]
fn literals() {
    assert_script(
        r#"
eval instant at 50m 12
  12

eval instant at 50m 1.5e3 - -2
  1502

eval instant at 50m "a string"
  expect string "a string"

eval range from 0 to 10s step 5s 2 * 3
  {} 6 6 6
"#,
    );
}

#[test]
fn selectors_lookback_staleness_offset_at() {
    assert_script(
        r#"
load 1m
  metric{job="a"} 1 2 3 stale 5
  metric{job="b"} 10 _ _ _ _ _ _ 20
  other 7

eval instant at 2m metric
  metric{job="a"} 3
  metric{job="b"} 10

eval instant at 3m metric{job="a"}

eval instant at 4m metric{job!="a"}
  metric{job="b"} 10

eval instant at 5m metric{job!="a"}

eval instant at 6m metric{job=~"b|c"}

eval instant at 4m metric{job!~"b"}
  metric{job="a"} 5

eval instant at 5m metric{job="a"} offset 3m
  metric{job="a"} 3

eval instant at 0m metric{job="a"} offset -2m
  metric{job="a"} 3

eval instant at 10m metric{job="a"} @ 120
  metric{job="a"} 3

eval range from 0 to 8m step 1m metric{job="b"}
  metric{job="b"} 10 10 10 10 10 _ _ 20 20

eval range from 0 to 4m step 2m metric{job="a"} @ end()
  metric{job="a"} 5 5 5

eval range from 1m to 4m step 1m metric{job="a"} @ start()
  metric{job="a"} 2 2 2 2

eval instant at 4m59s {__name__=~"x{e}|oth[e]r"}
  other 7

eval instant at 4m59s {__name__=~"oth.*"}
  other 7

eval instant at 5m other
"#,
    );
}

#[test]
fn matrix_selectors() {
    assert_script(
        r#"
load 10s
  some_metric{env="a"} 1+1x5
  some_metric{env="b"} 2+2x5

eval instant at 1m some_metric[1m]
  expect range vector from 10s to 1m step 10s
  some_metric{env="a"} 2 3 4 5 6
  some_metric{env="b"} 4 6 8 10 12

eval instant at 1m some_metric{env="a"}[20s] offset 10s
  expect range vector from 40s to 50s step 10s
  some_metric{env="a"} 5 6

clear
load 1m
  m 0 1 stale 3

eval instant at 3m m[3m]
  expect range vector from 1m to 3m step 60s
  m 1 _ 3
"#,
    );
}

#[test]
fn rates_and_deltas() {
    assert_script(
        r#"
load 5m
  http_requests{path="/foo"} 0+10x10
  http_requests{path="/bar"} 0+10x5 0+10x4
  gauge 0 10 5 20

eval instant at 50m rate(http_requests[25m])
  {path="/foo"} 0.03333333333333333
  {path="/bar"} 0.02666666666666667

eval instant at 50m increase(http_requests[50m])
  {path="/foo"} 100
  {path="/bar"} 88.88888888888889

eval instant at 50m irate(http_requests[50m])
  {path="/foo"} 0.03333333333333333
  {path="/bar"} 0.03333333333333333

eval instant at 30m irate(http_requests{path="/bar"}[50m])
  {path="/bar"} 0

eval instant at 15m delta(gauge[20m])
  {} 26.666666666666668

eval instant at 15m idelta(gauge[20m])
  {} 15

eval instant at 15m changes(gauge[1h])
  {} 3

eval instant at 50m resets(http_requests[1h])
  {path="/foo"} 0
  {path="/bar"} 1

eval instant at 50m deriv(http_requests{path="/foo"}[1h])
  {path="/foo"} 0.03333333333333333

eval instant at 50m predict_linear(http_requests{path="/foo"}[1h], 600)
  {path="/foo"} 120
"#,
    );
}

#[test]
fn aggregations() {
    assert_script(
        r#"
load 5m
  http_requests{job="api-server", instance="0", group="production"} 0+10x10
  http_requests{job="api-server", instance="1", group="production"} 0+20x10
  http_requests{job="api-server", instance="0", group="canary"} 0+30x10
  http_requests{job="api-server", instance="1", group="canary"} 0+40x10
  http_requests{job="app-server", instance="0", group="production"} 0+50x10
  http_requests{job="app-server", instance="1", group="production"} 0+60x10
  http_requests{job="app-server", instance="0", group="canary"} 0+70x10
  http_requests{job="app-server", instance="1", group="canary"} 0+80x10

eval instant at 50m sum by (group) (http_requests{job="api-server"})
  {group="canary"} 700
  {group="production"} 300

eval instant at 50m sum without (instance) (http_requests{job="api-server"})
  {group="canary", job="api-server"} 700
  {group="production", job="api-server"} 300

eval instant at 50m avg by (job) (http_requests)
  {job="api-server"} 250
  {job="app-server"} 650

eval instant at 50m count(http_requests)
  {} 8

eval instant at 50m min by (job) (http_requests)
  {job="api-server"} 100
  {job="app-server"} 500

eval instant at 50m max(http_requests)
  {} 800

eval instant at 50m group by (job) (http_requests)
  {job="api-server"} 1
  {job="app-server"} 1

eval instant at 50m stddev(http_requests{job="api-server"})
  {} 111.80339887498948

eval instant at 50m stdvar by (job) (http_requests)
  {job="api-server"} 12500
  {job="app-server"} 12500

eval instant at 50m topk(3, http_requests)
  expect ordered
  http_requests{group="canary", instance="1", job="app-server"} 800
  http_requests{group="canary", instance="0", job="app-server"} 700
  http_requests{group="production", instance="1", job="app-server"} 600

eval instant at 50m bottomk by (group) (1, http_requests)
  http_requests{group="canary", instance="0", job="api-server"} 300
  http_requests{group="production", instance="0", job="api-server"} 100

eval instant at 50m quantile(0.5, http_requests{job="api-server"})
  {} 250

eval instant at 50m count_values("value", http_requests{job="api-server"} / 100)
  {value="1"} 1
  {value="2"} 1
  {value="3"} 1
  {value="4"} 1

eval instant at 50m sort_desc(sum by (job) (http_requests))
  expect ordered
  {job="app-server"} 2600
  {job="api-server"} 1000

eval instant at 50m sort(http_requests{instance="0"})
  expect ordered
  http_requests{group="production", instance="0", job="api-server"} 100
  http_requests{group="canary", instance="0", job="api-server"} 300
  http_requests{group="production", instance="0", job="app-server"} 500
  http_requests{group="canary", instance="0", job="app-server"} 700

eval range from 0 to 10m step 5m sum(http_requests)
  {} 0 360 720
"#,
    );
}

#[test]
fn binary_operators() {
    assert_script(
        r#"
load 5m
  req{job="a", instance="0"} 10
  req{job="a", instance="1"} 20
  req{job="b", instance="0"} 30
  lim{job="a"} 15
  lim{job="b"} 25
  cnt{job="a", instance="0"} 1
  cnt{job="a", instance="1"} 2

eval instant at 0m req * 2
  {job="a", instance="0"} 20
  {job="a", instance="1"} 40
  {job="b", instance="0"} 60

eval instant at 0m 100 - req{job="b"}
  {job="b", instance="0"} 70

eval instant at 0m req > 15
  req{job="a", instance="1"} 20
  req{job="b", instance="0"} 30

eval instant at 0m 15 < req
  req{job="a", instance="1"} 20
  req{job="b", instance="0"} 30

eval instant at 0m req > bool 15
  {job="a", instance="0"} 0
  {job="a", instance="1"} 1
  {job="b", instance="0"} 1

eval instant at 0m req / cnt
  {job="a", instance="0"} 10
  {job="a", instance="1"} 10

eval instant at 0m req / on(job) group_left lim
  {job="a", instance="0"} 0.6666666666666666
  {job="a", instance="1"} 1.3333333333333333
  {job="b", instance="0"} 1.2

eval instant at 0m lim - on(job) group_right req
  {job="a", instance="0"} 5
  {job="a", instance="1"} -5
  {job="b", instance="0"} -5

eval instant at 0m req > on(job) group_left lim
  req{job="a", instance="1"} 20
  req{job="b", instance="0"} 30

eval instant at 0m req / on(job) lim
  expect fail

eval instant at 0m lim + ignoring(instance) req
  expect fail

eval instant at 0m req and cnt
  req{job="a", instance="0"} 10
  req{job="a", instance="1"} 20

eval instant at 0m req unless cnt
  req{job="b", instance="0"} 30

eval instant at 0m cnt or req
  cnt{job="a", instance="0"} 1
  cnt{job="a", instance="1"} 2
  req{job="b", instance="0"} 30

eval instant at 0m req and on(job) lim{job="b"}
  req{job="b", instance="0"} 30

eval instant at 0m 2 ^ 3 ^ 2
  512

eval instant at 0m 7 % 4 + 1 == bool 4
  1

eval instant at 0m -req{job="b"}
  {job="b", instance="0"} -30

eval instant at 0m cnt atan2 cnt
  {job="a", instance="0"} 0.7853981633974483
  {job="a", instance="1"} 0.7853981633974483

eval instant at 0m {__name__=~"req|cnt"} * 1
  expect fail
"#,
    );
}

#[test]
fn over_time_and_math_functions() {
    assert_script(
        r#"
load 1m
  m{a="x"} 1 2 3 4 NaN
  g{a="y"} -1.5 2.5 9

eval instant at 3m avg_over_time(m[5m])
  {a="x"} 2.5

eval instant at 3m sum_over_time(m[5m])
  {a="x"} 10

eval instant at 3m count_over_time(m[2m])
  {a="x"} 2

eval instant at 3m min_over_time(m[5m])
  {a="x"} 1

eval instant at 3m max_over_time(m[5m])
  {a="x"} 4

eval instant at 3m last_over_time(m[5m])
  m{a="x"} 4

eval instant at 3m present_over_time(m[5m])
  {a="x"} 1

eval instant at 3m stdvar_over_time(m[5m])
  {a="x"} 1.25

eval instant at 3m stddev_over_time(m[5m])
  {a="x"} 1.118033988749895

eval instant at 3m quantile_over_time(0.5, m[5m])
  {a="x"} 2.5

eval instant at 3m absent_over_time(m[5m])

eval instant at 3m absent_over_time(nonexistent{job="x"}[5m])
  {job="x"} 1

eval instant at 2m abs(g)
  {a="y"} 9

eval instant at 0m abs(g)
  {a="y"} 1.5

eval instant at 0m ceil(g)
  {a="y"} -1

eval instant at 0m floor(g)
  {a="y"} -2

eval instant at 0m round(g)
  {a="y"} -1

eval instant at 1m round(g, 2)
  {a="y"} 2

eval instant at 2m sqrt(g)
  {a="y"} 3

eval instant at 2m ln(g) - log2(g) + log10(g) + exp(g)
  {a="y"} 8103.065469660717

eval instant at 2m clamp(g, 0, 5)
  {a="y"} 5

eval instant at 0m clamp_min(g, 0)
  {a="y"} 0

eval instant at 2m clamp_max(g, 3)
  {a="y"} 3

eval instant at 2m clamp(g, 5, 0)

eval instant at 2m scalar(g) + 1
  10

eval instant at 2m scalar({__name__=~"m|g"})
  NaN

eval instant at 2m vector(time())
  {} 120

eval instant at 150s timestamp(g)
  {a="y"} 120

eval instant at 2m absent(g)

eval instant at 2m absent(nonexistent{job="x", job="y", z="1"})
  {z="1"} 1

eval instant at 1m label_replace(g, "dst", "v-$1", "a", "(.*)")
  g{a="y", dst="v-y"} 2.5

eval instant at 1m label_replace(g, "dst", "v-$1", "a", "z(.*)")
  g{a="y"} 2.5

eval instant at 1m label_join(g, "j", "-", "a", "__name__")
  g{a="y", j="y-g"} 2.5

eval instant at 1m label_replace(label_replace({__name__=~"m|g"}, "a", "", "", ""), "__name__", "x", "", "")
  expect fail
"#,
    );
}

#[test]
fn histogram_quantile_classic() {
    assert_script(
        r#"
load 5m
  req_bucket{le="0.1"} 0+1x10
  req_bucket{le="0.5"} 0+3x10
  req_bucket{le="1"} 0+4x10
  req_bucket{le="+Inf"} 0+5x10

eval instant at 50m histogram_quantile(0.5, req_bucket)
  {} 0.4

eval instant at 50m histogram_quantile(0.99, req_bucket)
  {} 1

eval instant at 50m histogram_quantile(0.5, rate(req_bucket[10m]))
  {} 0.4

eval instant at 50m histogram_quantile(0.05, req_bucket)
  {} 0.025
"#,
    );
}

#[test]
fn subqueries() {
    assert_script(
        r#"
load 10s
  metric 1 2

eval instant at 1m metric[1m:10s]
  expect range vector from 10s to 1m step 10s
  metric 2 2 2 2 2 2

eval instant at 30s sum_over_time(metric[30s:10s])
  {} 6

eval instant at 20s min_over_time(metric[20s:10s])
  {} 2

eval instant at 1m count_over_time(metric[1m:])
  {} 1

eval range from 0 to 1m step 30s count_over_time(metric[1m:10s])
  {} 1 4 6

eval instant at 25s metric[20s:10s] offset 5s
  expect range vector from 10s to 20s step 10s
  metric 2 2

eval instant at 1m rate(metric[1m:10s] @ 20)
  {} 0.020833333333333332
"#,
    );
}

#[test]
fn range_query_results_are_sorted_and_name_dropping_merges() {
    assert_script(
        r#"
load 1m
  a{x="2"} 1 1 _ _
  a{x="1"} 2 2 2 2
  b{x="2"} _ _ 3 3

eval range from 0 to 3m step 1m a or b
  a{x="1"} 2 2 2 2
  a{x="2"} 1 1 1 1

eval range from 0 to 8m step 1m b or a{x="2"}
  a{x="2"} 1 1 _ _ _ _
  b{x="2"} _ _ 3 3 3 3 3 3

eval range from 0 to 3m step 1m {__name__=~"a|b", x="2"} * 1
  expect fail

eval range from 7m to 8m step 1m {__name__=~"a|b", x="2"} * 1
  {x="2"} 3 _
"#,
    );
}

#[test]
fn errors_and_limits() {
    let engine = Engine::new(EngineOptions {
        lookback_delta_ms: 300_000,
        max_samples: 10,
    });
    let store = MemStorage::new(MemOptions::default());
    let mut app = store.appender();
    for i in 0..5 {
        let l = Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]);
        for t in 0..5 {
            app.append(&l, t * 1000, 1.0).unwrap();
        }
    }
    app.commit().unwrap();
    let q = store.querier();
    let r = block_on(engine.instant(q.as_ref(), "m", 4000)).unwrap();
    assert!(matches!(r.value, Value::Vector(ref v) if v.len() == 5));
    let r = block_on(engine.instant(q.as_ref(), "m[10s]", 4000));
    assert!(matches!(r, Err(QueryError::TooManySamples)), "{r:?}");
    let r = block_on(engine.range(q.as_ref(), "m", 0, 4000, 1000));
    assert!(matches!(r, Err(QueryError::TooManySamples)), "{r:?}");
    let r = block_on(engine.instant(q.as_ref(), "sum(", 0));
    assert!(matches!(r, Err(QueryError::Parse(_))), "{r:?}");
    let r = block_on(engine.range(q.as_ref(), "m[5m]", 0, 10, 1));
    assert!(matches!(r, Err(QueryError::Parse(_))), "{r:?}");
    let r = block_on(engine.instant(q.as_ref(), "limitk(1, m)", 0));
    assert!(
        matches!(r, Err(QueryError::Execution(ref m)) if m.contains("not supported yet")),
        "{r:?}"
    );
    let r = block_on(engine.instant(q.as_ref(), "histogram_count(m)", 0));
    assert!(matches!(r, Err(QueryError::Execution(_))), "{r:?}");
}

#[test]
fn absurd_inputs_are_errors_or_results_never_panics() {
    let store = MemStorage::new(MemOptions::default());
    let mut app = store.appender();
    let l = Labels::from_pairs(&[("__name__", "m"), ("le", "1")]);
    for t in [i64::MIN + 1, -5, 0, 7, i64::MAX - 1] {
        app.append(&l, t, t as f64).unwrap();
    }
    app.commit().unwrap();
    let q = store.querier();
    let engine = Engine::new(EngineOptions::default());
    let queries = [
        "m offset 100000000y",
        "m offset -100000000y",
        "rate(m[100000000y])",
        "rate(m[100000000y] offset -100000000y)",
        "m @ 9223372036854775",
        "m @ -9223372036854775",
        "deriv(m[100000000y])",
        "predict_linear(m[100000000y], 1e308)",
        "irate(m[100000000y])",
        "max_over_time(m[1ms:1ms])",
        "m[100000000y:1ms]",
        "topk(1e300, m)",
        "topk(-1, m)",
        "topk(NaN, m)",
        "quantile(NaN, m)",
        "count_values(\"\", m)",
        "label_replace(m, \"\", \"x\", \"le\", \"(.*)\")",
        "label_replace(m, \"a\", \"$9\", \"le\", \"(\")",
        "histogram_quantile(0.5, m)",
        "minute(m * 1e300)",
        "year(-m * 1e300)",
        "round(m, 0)",
        "m{le=~\"(\"}",
        "{__name__=~\".+\"}[5m:] @ end()",
        "m[5m+]",
        "x[step()/0]",
        "m offset (1/0)",
    ];
    for t in [i64::MIN, -1, 0, 1, i64::MAX] {
        for qs in queries {
            let _ = block_on(engine.instant(q.as_ref(), qs, t));
        }
    }
    for (s, e, st) in [
        (0, 10, 1),
        (i64::MIN, i64::MAX, i64::MAX),
        (i64::MAX - 10, i64::MAX, 3),
    ] {
        for qs in queries {
            let _ = block_on(engine.range(q.as_ref(), qs, s, e, st));
        }
    }
}

#[test]
fn evaluation_yields_to_the_executor() {
    // A query over many samples must not hog the executor: count polls of the future.
    let store = MemStorage::new(MemOptions::default());
    let mut app = store.appender();
    let l = Labels::from_pairs(&[("__name__", "m")]);
    for t in 0..20_000 {
        app.append(&l, t * 1000, t as f64).unwrap();
    }
    app.commit().unwrap();
    let q = store.querier();
    let engine = Engine::new(EngineOptions::default());
    let fut = engine.range(q.as_ref(), "rate(m[1m])", 0, 20_000_000, 1000);
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut polls = 0;
    loop {
        polls += 1;
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            assert!(r.is_ok());
            break;
        }
    }
    assert!(polls > 10, "only {polls} polls");
}

// ---------------------------------------------------------------------------------------------
// The shared conformance corpus.

#[test]
#[ignore = "needs ../shared/promql (the conformance corpus)"]
fn conformance_corpus() {
    let dir = std::env::var("PERCH_PROMQL_CORPUS")
        .unwrap_or_else(|_| format!("{}/../shared/promql/tests", env!("CARGO_MANIFEST_DIR")));
    let manifest = std::fs::read_to_string(format!("{dir}/../manifest.tsv")).expect("manifest");
    // file → tiers of its evals, in order.
    let mut tiers: std::collections::HashMap<String, Vec<String>> = Default::default();
    for row in manifest.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        if cols.len() >= 5 {
            tiers
                .entry(cols[0].to_string())
                .or_default()
                .push(cols[4].to_string());
        }
    }
    let only = std::env::var("PERCH_PROMQL_FILE").ok();
    // PERCH_PROMQL_TIER=experimental|nh|all runs other tiers (native histograms are skipped by
    // the loader, so those mostly fail; useful to show that nothing panics).
    let tier = std::env::var("PERCH_PROMQL_TIER").unwrap_or_else(|_| "core".into());
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    entries.sort();
    let (mut total, mut passed) = (0, 0);
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let t = tiers.get(&name).cloned().unwrap_or_default();
        let mut n = 0;
        let (ok, fails) = run_script_with(&text, |i| {
            let want = t.get(i).is_some_and(|t| tier == "all" || *t == tier);
            if want {
                n += 1;
            }
            want
        });
        total += n;
        passed += ok;
        println!("{name}: {ok}/{n}");
        for f in &fails {
            println!("  FAIL {f}");
        }
    }
    println!("{tier}: {passed}/{total}");
}

/// Prints how long a few range queries over 1.15M samples take (`--ignored --nocapture`).
#[test]
#[ignore = "a timing probe, not a check"]
fn timing_probe() {
    let store = MemStorage::new(MemOptions {
        max_samples: 1 << 26,
        ..MemOptions::default()
    });
    for t in 0..5760i64 {
        let mut app = store.appender();
        for i in 0..200 {
            let l = Labels::from_pairs(&[
                ("__name__", "m_total"),
                ("i", &i.to_string()),
                ("j", &(i % 7).to_string()),
            ]);
            app.append(&l, t * 15_000, (t * i) as f64).unwrap();
        }
        app.commit().unwrap();
    }
    let q = store.querier();
    let engine = Engine::new(EngineOptions::default());
    for qs in [
        "sum by (j) (rate(m_total[5m]))",
        "m_total",
        "m_total / on(i) group_left m_total",
        "max_over_time(m_total[1h:1m])",
    ] {
        let t0 = std::time::Instant::now();
        let r = block_on(engine.range(q.as_ref(), qs, 0, 86_400_000, 60_000)).unwrap();
        let n = match r.value {
            Value::Matrix(m) => m.iter().map(|s| s.samples.len()).sum::<usize>(),
            _ => 0,
        };
        println!("{qs}: {n} points in {:?}", t0.elapsed());
    }
}
