//! Aggregation operators (`sum`, `avg`, `topk`, `count_values`, …) with `by`/`without`.
//!
//! Each input series is assigned to a group once (its grouping labels); then every step folds
//! the samples present into per-group accumulators, in order of first appearance, as Prometheus
//! does.
//!
//! Delayed name removal: `by (__name__)` sees the name of a series marked for removal (`without`
//! always drops it); a group's result is marked if any of its members is marked at that step
//! (the last step decides for the whole series, as in Prometheus); `topk`/`bottomk` keep their
//! members' marks; `count_values` gives unmarked results.

use super::eval::{
    not_supported, Evaluator, Span, StepVec, StepVecBuilder, Table, Val, PER_SERIES_WORK,
};
use super::functions::{kahan_inc, quantile};
use super::QueryError;
use crate::model::{Labels, METRIC_NAME};
use promql_parser::parser::{AggregateExpr, LabelModifier};
use std::cmp::Ordering;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Quantile,
    CountValues,
}

/// One group's running state at one step.
#[derive(Clone)]
struct Acc {
    group: u32,
    value: f64,
    mean: f64,
    kahan: f64,
    count: f64,
    incremental: bool,
    /// Members, for quantile (values) and topk/bottomk (series, value).
    members: Vec<(u32, f64)>,
}

pub(super) async fn eval(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    span: Span,
) -> Result<Val, QueryError> {
    let op_name = a.op.to_string().to_ascii_lowercase();
    let op = match op_name.as_str() {
        "sum" => Op::Sum,
        "avg" => Op::Avg,
        "count" => Op::Count,
        "min" => Op::Min,
        "max" => Op::Max,
        "group" => Op::Group,
        "stddev" => Op::Stddev,
        "stdvar" => Op::Stdvar,
        "topk" => Op::Topk,
        "bottomk" => Op::Bottomk,
        "quantile" => Op::Quantile,
        "count_values" => Op::CountValues,
        other => return Err(not_supported(&format!("aggregation {other}"))),
    };
    let n = span.len();
    let mut param = Vec::new();
    let mut value_label = String::new();
    if let Some(p) = &a.param {
        match ev.eval(p, span).await? {
            Val::Scalar(s) => param = s,
            Val::Str(s) => value_label = s,
            _ => {
                return Err(QueryError::Execution(format!(
                    "invalid parameter for aggregation {op_name}"
                )))
            }
        }
    }
    let mut input = ev.eval_vector(&a.expr, span).await?;
    let (without, names): (bool, Vec<String>) = match &a.modifier {
        None => (false, Vec::new()),
        Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
    };
    let grouping = |l: &Labels| -> Labels {
        if without {
            let mut b = l.builder();
            for n in &names {
                b.del(n);
            }
            b.del(METRIC_NAME);
            b.take()
        } else {
            l.filter_names(&names, true)
        }
    };

    match op {
        Op::CountValues => {
            if !ev.valid_label_name(&value_label) {
                return Err(QueryError::Execution(format!(
                    "invalid label name {value_label:?}"
                )));
            }
            return count_values(ev, input, n, &value_label, without, &names, span).await;
        }
        Op::Quantile => ev.check_quantiles(&param),
        Op::Topk | Op::Bottomk if param.iter().any(|k| k.is_nan()) => {
            return Err(QueryError::Execution(format!(
                "Parameter value is NaN for {op_name}"
            )));
        }
        _ => {}
    }

    // Group of each input series: a label set built and hashed per series, so it counts as
    // much work as a few dozen samples.
    let mut groups = Table::default();
    let mut group_of: Vec<u32> = Vec::with_capacity(input.table.len());
    for l in &input.table.labels {
        group_of.push(groups.intern(grouping(l)).0);
        ev.tick(PER_SERIES_WORK).await;
    }

    let k_mode = matches!(op, Op::Topk | Op::Bottomk);
    let mut b = StepVecBuilder::new(n);
    // For topk/bottomk the output keeps the input series' labels.
    let mut out_idx: Vec<Option<u32>> = vec![None; input.table.len()];
    let mut group_out: Vec<Option<u32>> = vec![None; groups.len()];
    let mut slot: Vec<(usize, usize)> = vec![(usize::MAX, 0); groups.len()];
    let mut accs: Vec<Acc> = Vec::new();
    // Only with delayed name removal and marked input: per accumulator, whether a member is
    // marked (kept apart from the fold, which stays as it is without marks).
    let marking = ev.delayed_names() && input.table.has_marks();
    let mut acc_marked: Vec<bool> = Vec::new();
    for (k, step) in input.steps().enumerate() {
        accs.clear();
        let kk = if k_mode {
            let p = param.get(k).copied().unwrap_or(0.0);
            if p < 1.0 {
                continue;
            }
            if p >= usize::MAX as f64 {
                usize::MAX
            } else {
                p as usize
            }
        } else {
            0
        };
        for &(i, v) in step {
            ev.tick(1).await;
            let g = group_of[i as usize];
            let (stamp, pos) = slot[g as usize];
            if stamp != k {
                slot[g as usize] = (k, accs.len());
                accs.push(new_acc(op, g, i, v));
                continue;
            }
            let acc = &mut accs[pos];
            fold(op, acc, i, v, kk);
        }
        if marking {
            acc_marked.clear();
            acc_marked.resize(accs.len(), false);
            for &(i, _) in step {
                if input.table.marked(i) {
                    acc_marked[slot[group_of[i as usize] as usize].1] = true;
                }
            }
        }
        for (a, acc) in accs.iter_mut().enumerate() {
            match op {
                Op::Topk | Op::Bottomk => {
                    let m = &mut acc.members;
                    m.sort_by(|a, b| cmp_nan_last(a.1, b.1, op == Op::Topk));
                    for &(i, v) in m.iter() {
                        let j = match out_idx[i as usize] {
                            Some(j) => j,
                            None => {
                                let l = input.table.get(i).clone();
                                *out_idx[i as usize]
                                    .insert(b.intern_marked(l, input.table.marked(i)))
                            }
                        };
                        b.push(k, j, v)?;
                    }
                }
                _ => {
                    let v = finish(op, acc, param.get(k).copied().unwrap_or(f64::NAN));
                    let g = acc.group;
                    let j = match group_out[g as usize] {
                        Some(j) => j,
                        None => *group_out[g as usize].insert(b.intern(groups.get(g).clone())),
                    };
                    if marking {
                        b.set_mark(j, acc_marked[a]);
                    }
                    b.push(k, j, v)?;
                }
            }
        }
    }
    ev.free(std::mem::take(&mut input.table.labels)).await;
    Ok(Val::Vector(b.finish_yielding(ev).await))
}

/// Orders `a` before `b` by value (descending if `desc`), NaN last.
fn cmp_nan_last(a: f64, b: f64, desc: bool) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ if desc => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn new_acc(op: Op, g: u32, i: u32, v: f64) -> Acc {
    let mut acc = Acc {
        group: g,
        value: v,
        mean: v,
        kahan: 0.0,
        count: 1.0,
        incremental: false,
        members: Vec::new(),
    };
    match op {
        Op::Stddev | Op::Stdvar => {
            acc.value = if v.is_nan() || v.is_infinite() {
                f64::NAN
            } else {
                0.0
            };
        }
        Op::Group => acc.value = 1.0,
        Op::Quantile | Op::Topk | Op::Bottomk => acc.members.push((i, v)),
        _ => {}
    }
    acc
}

fn fold(op: Op, acc: &mut Acc, i: u32, v: f64, k: usize) {
    match op {
        Op::Sum => (acc.value, acc.kahan) = kahan_inc(v, acc.value, acc.kahan),
        Op::Avg => {
            acc.count += 1.0;
            if !acc.incremental {
                let (nv, nc) = kahan_inc(v, acc.value, acc.kahan);
                if !nv.is_infinite() {
                    (acc.value, acc.kahan) = (nv, nc);
                    return;
                }
                acc.incremental = true;
                acc.mean = acc.value / (acc.count - 1.0);
                acc.kahan /= acc.count - 1.0;
            }
            let q = (acc.count - 1.0) / acc.count;
            (acc.mean, acc.kahan) = kahan_inc(v / acc.count, q * acc.mean, q * acc.kahan);
        }
        Op::Count => acc.count += 1.0,
        Op::Group => {}
        Op::Max => {
            if acc.value < v || acc.value.is_nan() {
                acc.value = v;
            }
        }
        Op::Min => {
            if acc.value > v || acc.value.is_nan() {
                acc.value = v;
            }
        }
        Op::Stddev | Op::Stdvar => {
            acc.count += 1.0;
            let delta = v - acc.mean;
            acc.mean += delta / acc.count;
            acc.value += delta * (v - acc.mean);
        }
        Op::Quantile => acc.members.push((i, v)),
        Op::Topk | Op::Bottomk => {
            // Keep the k best, earlier members winning ties (like Prometheus's heap).
            if acc.members.len() < k {
                acc.members.push((i, v));
                return;
            }
            // The worst kept member: for topk the smallest (NaN worst), for bottomk the largest.
            let worse = |a: f64, b: f64| -> bool {
                // true if a is worse than b
                if a.is_nan() {
                    return !b.is_nan();
                }
                if b.is_nan() {
                    return false;
                }
                if op == Op::Topk {
                    a < b
                } else {
                    a > b
                }
            };
            let mut wi = 0;
            for (j, m) in acc.members.iter().enumerate() {
                if worse(m.1, acc.members[wi].1) {
                    wi = j;
                }
            }
            if worse(acc.members[wi].1, v) {
                acc.members.remove(wi);
                acc.members.push((i, v));
            }
        }
        Op::CountValues => {}
    }
}

fn finish(op: Op, acc: &mut Acc, param: f64) -> f64 {
    match op {
        Op::Sum => acc.value + acc.kahan,
        Op::Avg => {
            if acc.incremental {
                acc.mean + acc.kahan
            } else {
                (acc.value + acc.kahan) / acc.count
            }
        }
        Op::Count => acc.count,
        Op::Stdvar => acc.value / acc.count,
        Op::Stddev => (acc.value / acc.count).sqrt(),
        Op::Quantile => {
            let mut vals: Vec<f64> = acc.members.iter().map(|m| m.1).collect();
            quantile(param, &mut vals)
        }
        _ => acc.value,
    }
}

/// `count_values("label", v)`: how many series have each value, per group.
async fn count_values(
    ev: &mut Evaluator<'_>,
    input: StepVec,
    n: usize,
    label: &str,
    without: bool,
    names: &[String],
    _span: Span,
) -> Result<Val, QueryError> {
    let mut b = StepVecBuilder::new(n);
    let mut names = names.to_vec();
    if !without && !names.iter().any(|n| n == label) {
        names.push(label.to_string());
    }
    for (k, step) in input.steps().enumerate() {
        let mut order: Vec<(Labels, f64)> = Vec::new();
        let mut index: std::collections::HashMap<Labels, usize> = Default::default();
        for &(i, v) in step {
            let mut lb = input.table.get(i).builder();
            lb.set(label, &format_go_float(v));
            let l = lb.take();
            let key = if without {
                let mut b = l.builder();
                for n in &names {
                    b.del(n);
                }
                b.del(METRIC_NAME);
                b.take()
            } else {
                l.filter_names(&names, true)
            };
            match index.get(&key) {
                Some(&p) => order[p].1 += 1.0,
                None => {
                    index.insert(key.clone(), order.len());
                    order.push((key, 1.0));
                }
            }
        }
        ev.tick(step.len()).await;
        for (l, c) in order {
            let j = b.intern(l);
            b.push(k, j, c)?;
        }
    }
    Ok(Val::Vector(b.finish_yielding(ev).await))
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
pub(super) fn format_go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}
