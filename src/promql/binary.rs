//! Binary operators: arithmetic, comparisons (filtering or `bool`), `atan2` and the set
//! operators, between scalars and instant vectors, with Prometheus's vector matching
//! (`on`/`ignoring`, `group_left`/`group_right`) and its error messages.
//!
//! Delayed name removal, as Prometheus has it: a vector-scalar arithmetic or `bool` operation
//! marks its results; between two vectors, arithmetic drops the name (and `__type__`/`__unit__`)
//! at once in either mode, a `bool` comparison marks its results, and any other comparison gives
//! unmarked results (the left side's mark is not passed on, as in Prometheus); set operators pass
//! each side's series and marks through.

use super::eval::{
    drop_name, name_dropped, not_supported, Evaluator, Span, StepVec, StepVecBuilder, Val,
};
use super::QueryError;
use crate::model::{Labels, METRIC_NAME};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }

    /// Arithmetic drops the metric name from vector results.
    fn drops_name(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow | Op::Atan2
        )
    }
}

/// The result of `l op r` and whether a comparison holds (always true for arithmetic).
fn elem(op: Op, l: f64, r: f64) -> (f64, bool) {
    match op {
        Op::Add => (l + r, true),
        Op::Sub => (l - r, true),
        Op::Mul => (l * r, true),
        Op::Div => (l / r, true),
        Op::Mod => (l % r, true),
        Op::Pow => (l.powf(r), true),
        Op::Atan2 => (l.atan2(r), true),
        Op::Eq => (l, l == r),
        Op::Ne => (l, l != r),
        Op::Gt => (l, l > r),
        Op::Lt => (l, l < r),
        Op::Ge => (l, l >= r),
        Op::Le => (l, l <= r),
        Op::And | Op::Or | Op::Unless => (l, true),
    }
}

struct Matching {
    on: bool,
    names: Vec<String>,
    card: VectorMatchCardinality,
}

impl Matching {
    /// The match group of a series: the `on` labels, or all but the `ignoring` ones and the
    /// metric name, encoded unambiguously.
    fn signature(&self, l: &Labels) -> String {
        let mut s = String::new();
        for lab in l {
            let inc = if self.on {
                self.names.contains(&lab.name)
            } else {
                lab.name != METRIC_NAME && !self.names.contains(&lab.name)
            };
            if inc {
                s.push_str(&format!(
                    "{}:{}{}:{}",
                    lab.name.len(),
                    lab.name,
                    lab.value.len(),
                    lab.value
                ));
            }
        }
        s
    }

    fn match_labels(&self, l: &Labels) -> Labels {
        if self.on {
            l.filter_names(&self.names, true)
        } else {
            let mut b = l.builder();
            for n in &self.names {
                b.del(n);
            }
            b.del(METRIC_NAME);
            b.take()
        }
    }
}

pub(super) async fn eval(
    ev: &mut Evaluator<'_>,
    be: &BinaryExpr,
    span: Span,
) -> Result<Val, QueryError> {
    let op_s = be.op.to_string();
    let op = Op::parse(&op_s).ok_or_else(|| not_supported(&format!("operator {op_s}")))?;
    let modifier = be.modifier.clone().unwrap_or_default();
    if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
        return Err(not_supported("fill modifiers"));
    }
    let return_bool = modifier.return_bool;
    let (on, names) = match &modifier.matching {
        None => (false, Vec::new()),
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
    };
    let card = if op.is_set() {
        VectorMatchCardinality::ManyToMany
    } else {
        modifier.card.clone()
    };
    let matching = Matching { on, names, card };

    let lhs = ev.eval(&be.lhs, span).await?;
    let rhs = ev.eval(&be.rhs, span).await?;
    let n = span.len();
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => Ok(Val::Scalar(
            l.iter()
                .zip(r.iter())
                .map(|(&a, &b)| {
                    let (v, keep) = elem(op, a, b);
                    if op.is_comparison() {
                        if keep {
                            1.0
                        } else {
                            0.0
                        }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Val::Vector(v), Val::Scalar(s)) => vector_scalar(ev, op, v, &s, false, return_bool, n)
            .await
            .map(Val::Vector),
        (Val::Scalar(s), Val::Vector(v)) => vector_scalar(ev, op, v, &s, true, return_bool, n)
            .await
            .map(Val::Vector),
        (Val::Vector(l), Val::Vector(r)) => {
            let out = if op.is_set() {
                set_op(ev, op, &matching, l, r, n).await?
            } else {
                vector_vector(ev, op, &matching, l, r, return_bool, n).await?
            };
            Ok(Val::Vector(out))
        }
        _ => Err(QueryError::Execution(format!(
            "binary operator {op_s} needs scalar or instant vector operands"
        ))),
    }
}

async fn vector_scalar(
    ev: &mut Evaluator<'_>,
    op: Op,
    v: StepVec,
    s: &[f64],
    swap: bool,
    return_bool: bool,
    n: usize,
) -> Result<StepVec, QueryError> {
    if op.is_set() {
        return Err(QueryError::Execution(
            "set operator not allowed in binary scalar expression".into(),
        ));
    }
    let drop_names = name_dropped(ev.delayed_names());
    let mut b = StepVecBuilder::new(n);
    let mut map: Vec<Option<u32>> = vec![None; v.table.len()];
    for (k, step) in v.steps().enumerate() {
        ev.tick(1).await;
        let sv = s.get(k).copied().unwrap_or(f64::NAN);
        for &(i, x) in step {
            ev.tick(1).await;
            let (l, r) = if swap { (sv, x) } else { (x, sv) };
            let (mut val, mut keep) = elem(op, l, r);
            if op.is_comparison() && swap {
                val = r; // keep the vector's value
            }
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            if !keep {
                continue;
            }
            let j = match map[i as usize] {
                Some(j) => j,
                None => {
                    let (l, mark) = (v.table.get(i), v.table.marked(i));
                    let (l, mark) = if op.drops_name() || return_bool {
                        drop_names(l, mark)
                    } else {
                        (l.clone(), mark)
                    };
                    *map[i as usize].insert(b.intern_marked(l, mark))
                }
            };
            b.push(k, j, val)?;
        }
    }
    Ok(b.finish_yielding(ev).await)
}

/// Go's `labels.Labels.String()`: `{__name__="x", a="b"}`.
fn go_labels(l: &Labels) -> String {
    let mut s = String::from("{");
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&lab.name);
        s.push('=');
        s.push_str(&format!("{:?}", lab.value));
    }
    s.push('}');
    s
}

async fn vector_vector(
    ev: &mut Evaluator<'_>,
    op: Op,
    m: &Matching,
    l: StepVec,
    r: StepVec,
    return_bool: bool,
    n: usize,
) -> Result<StepVec, QueryError> {
    let swapped = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    let include: Vec<String> = match &m.card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            l.labels.clone()
        }
        _ => Vec::new(),
    };
    let (many, one) = if swapped { (&r, &l) } else { (&l, &r) };
    // Match groups as small integers, computed once per series, so each step only indexes.
    let mut sigs = SigIds::default();
    let many_sig: Vec<u32> = many.table.labels.iter().map(|x| sigs.id(m, x)).collect();
    let one_sig: Vec<u32> = one.table.labels.iter().map(|x| sigs.id(m, x)).collect();
    // Per match group: the step it was last filled in, the one-side series and value.
    let mut one_at: Vec<(usize, u32, f64)> = vec![(usize::MAX, 0, 0.0); sigs.len()];
    // Per match group: the step it last matched in (one-to-one).
    let mut matched_at: Vec<usize> = vec![usize::MAX; sigs.len()];
    // (group, output series) pairs matched in this step (many-to-one).
    let mut matched_out: HashSet<(u32, u32)> = HashSet::new();
    let delayed = ev.delayed_names();
    let mut b = StepVecBuilder::new(n);
    let mut cache: HashMap<(u32, u32), u32> = HashMap::new();
    for k in 0..n {
        let (ms, os) = (many.step(k), one.step(k));
        ev.tick(os.len() + 1).await;
        if ms.is_empty() || os.is_empty() {
            continue;
        }
        for &(j, v) in os {
            let sig = one_sig[j as usize] as usize;
            if one_at[sig].0 == k {
                let prev = one_at[sig].1;
                let side = if swapped { "left" } else { "right" };
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    go_labels(&m.match_labels(one.table.get(j))),
                    go_labels(one.table.get(j)),
                    go_labels(one.table.get(prev)),
                )));
            }
            one_at[sig] = (k, j, v);
        }
        matched_out.clear();
        for &(i, v) in ms {
            ev.tick(1).await;
            let sig = many_sig[i as usize];
            let (stamp, j, ov) = one_at[sig as usize];
            if stamp != k {
                continue;
            }
            let (fl, fr) = if swapped { (ov, v) } else { (v, ov) };
            let (mut val, keep) = elem(op, fl, fr);
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let out = match cache.get(&(i, j)) {
                Some(&o) => o,
                None => {
                    let lab = result_labels(
                        op,
                        m,
                        one_to_one,
                        &include,
                        many.table.get(i),
                        one.table.get(j),
                    );
                    let o = if !return_bool {
                        b.intern(lab)
                    } else if delayed {
                        b.intern_marked(lab, true)
                    } else {
                        b.intern(drop_name(&lab))
                    };
                    cache.insert((i, j), o);
                    o
                }
            };
            if one_to_one {
                if matched_at[sig as usize] == k {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                matched_at[sig as usize] = k;
            } else if !matched_out.insert((sig, out)) {
                return Err(QueryError::Execution(
                    "multiple matches for matching labels grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            b.push(k, out, val)?;
        }
    }
    Ok(b.finish_yielding(ev).await)
}

/// Interns match-group signatures as small integers.
#[derive(Default)]
struct SigIds {
    ids: HashMap<String, u32>,
}

impl SigIds {
    fn id(&mut self, m: &Matching, l: &Labels) -> u32 {
        let sig = m.signature(l);
        let n = self.ids.len() as u32;
        *self.ids.entry(sig).or_insert(n)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

fn result_labels(
    op: Op,
    m: &Matching,
    one_to_one: bool,
    include: &[String],
    many: &Labels,
    one: &Labels,
) -> Labels {
    let mut l = if op.drops_name() {
        drop_name(many)
    } else {
        many.clone()
    };
    if one_to_one {
        if m.on {
            l = l.filter_names(&m.names, true);
        } else if !m.names.is_empty() {
            let mut b = l.builder();
            for n in &m.names {
                b.del(n);
            }
            l = b.take();
        }
    }
    if !include.is_empty() {
        let mut b = l.builder();
        for n in include {
            b.set(n, one.get(n));
        }
        l = b.take();
    }
    l
}

async fn set_op(
    ev: &mut Evaluator<'_>,
    op: Op,
    m: &Matching,
    l: StepVec,
    r: StepVec,
    n: usize,
) -> Result<StepVec, QueryError> {
    let mut sigs = SigIds::default();
    let lsig: Vec<u32> = l.table.labels.iter().map(|x| sigs.id(m, x)).collect();
    let rsig: Vec<u32> = r.table.labels.iter().map(|x| sigs.id(m, x)).collect();
    // Per match group: the step in which the other side last had it.
    let mut seen: Vec<usize> = vec![usize::MAX; sigs.len()];
    let mut b = StepVecBuilder::new(n);
    let mut lmap: Vec<Option<u32>> = vec![None; l.table.len()];
    let mut rmap: Vec<Option<u32>> = vec![None; r.table.len()];
    let mut keep_l: Vec<(u32, f64)> = Vec::new();
    let mut keep_r: Vec<(u32, f64)> = Vec::new();
    for k in 0..n {
        let (ls, rs) = (l.step(k), r.step(k));
        ev.tick(ls.len() + rs.len() + 1).await;
        keep_l.clear();
        keep_r.clear();
        match op {
            Op::And => {
                if !ls.is_empty() && !rs.is_empty() {
                    rs.iter()
                        .for_each(|&(j, _)| seen[rsig[j as usize] as usize] = k);
                    keep_l.extend(
                        ls.iter()
                            .filter(|&&(i, _)| seen[lsig[i as usize] as usize] == k),
                    );
                }
            }
            Op::Or => {
                keep_l.extend_from_slice(ls);
                ls.iter()
                    .for_each(|&(i, _)| seen[lsig[i as usize] as usize] = k);
                keep_r.extend(
                    rs.iter()
                        .filter(|&&(j, _)| seen[rsig[j as usize] as usize] != k),
                );
            }
            _ => {
                // unless
                rs.iter()
                    .for_each(|&(j, _)| seen[rsig[j as usize] as usize] = k);
                keep_l.extend(
                    ls.iter()
                        .filter(|&&(i, _)| seen[lsig[i as usize] as usize] != k),
                );
            }
        }
        for &(i, v) in &keep_l {
            let o = match lmap[i as usize] {
                Some(o) => o,
                None => {
                    let o = b.intern_marked(l.table.get(i).clone(), l.table.marked(i));
                    *lmap[i as usize].insert(o)
                }
            };
            b.push(k, o, v)?;
        }
        for &(j, v) in &keep_r {
            let o = match rmap[j as usize] {
                Some(o) => o,
                None => {
                    let o = b.intern_marked(r.table.get(j).clone(), r.table.marked(j));
                    *rmap[j as usize].insert(o)
                }
            };
            b.push(k, o, v)?;
        }
    }
    Ok(b.finish_yielding(ev).await)
}
