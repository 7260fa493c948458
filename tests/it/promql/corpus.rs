//! Scores the shared conformance corpus (`../shared/promql`, see its README).
//!
//! Evals are matched to `manifest.tsv` rows by their order within a file (the k-th `eval` of
//! `x.test` is the k-th row for `x.test`); the expressions must agree, else the mapping is
//! broken and the test fails. A case is named by file and *upstream* line (the manifest's
//! `line`), which does not move when the corpus files are re-cut.
//!
//! `tests/data/promql/passing.tsv` lists the cases that passed once; any of them failing now
//! fails the test. The list only grows: `PERCH_PROMQL_UPDATE_PASSING=1` adds today's new passes
//! (it never removes a line). `PERCH_PROMQL_FILE=<substring>` runs only matching files;
//! `PERCH_PROMQL_VERBOSE=1` lists the failures of every tier, not only `core`, and the
//! annotation and consistency complaints of passing evals.
//!
//! The run is in the engine's default mode, as a default Prometheus server answers. The corpus's
//! reference runner has delayed `__name__` removal on, so a second report re-runs every `core`
//! eval that failed with the engine's `delayed_name_removal` on and lists those that pass that
//! way, then says how many `core` evals pass in one mode or the other.
//! `tests/data/promql/passing_delayed.tsv` lists the cases that passed only in that re-run; any
//! of them failing in both modes fails the test (it grows like `passing.tsv`).
//! `PERCH_PROMQL_DELAYED_NAME_REMOVAL=1` runs the whole corpus with the mode on instead (a
//! report only: the lists are not checked, since they were made in the default mode).

use super::runner::{self, Outcome, PANIC};
use super::{report, test_files};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::path::Path;

const TIERS: [&str; 3] = ["core", "experimental", "nh"];

/// One manifest row.
struct Row {
    line: u32,
    tier: String,
    expr: String,
}

/// (file, upstream line).
type Case = (String, u32);

#[derive(Default, Clone, Copy)]
struct Count {
    passed: usize,
    total: usize,
}

impl Count {
    fn add(&mut self, ok: bool) {
        self.total += 1;
        self.passed += ok as usize;
    }

    fn cell(self) -> String {
        if self.total == 0 {
            "-".into()
        } else {
            format!("{}/{}", self.passed, self.total)
        }
    }

    fn rate(self) -> String {
        if self.total == 0 {
            "-".into()
        } else {
            format!(
                "{}/{} ({:.1} %)",
                self.passed,
                self.total,
                100.0 * self.passed as f64 / self.total as f64
            )
        }
    }
}

fn read_manifest(path: &Path) -> HashMap<String, Vec<Row>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the corpus needs its manifest beside it)",
            path.display()
        )
    });
    let mut m: HashMap<String, Vec<Row>> = HashMap::new();
    for (n, row) in text.lines().enumerate().skip(1) {
        // file line segment side tier kind expr; the expression may contain tabs? It does not,
        // but keep everything after the sixth tab as the expression anyway.
        let cols: Vec<&str> = row.splitn(7, '\t').collect();
        let [file, line, _seg, _side, tier, _kind, expr] = cols[..] else {
            panic!("{}:{}: bad manifest row {row:?}", path.display(), n + 1);
        };
        let line = line
            .parse()
            .unwrap_or_else(|_| panic!("{}:{}: bad line {line:?}", path.display(), n + 1));
        m.entry(file.to_string()).or_default().push(Row {
            line,
            tier: tier.to_string(),
            expr: expr.to_string(),
        });
    }
    m
}

/// The rows of a TSV whose first two columns are file and line, keyed by `(file, line)`; `#`
/// lines and a header row (`file`) are skipped. A missing file has no rows.
fn read_cases(path: &Path) -> BTreeMap<Case, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("file\t") && !l.trim().is_empty())
        .map(|l| {
            let mut c = l.split('\t');
            let file = c.next().unwrap_or_default().to_string();
            let line = c.next().and_then(|x| x.trim().parse().ok());
            let line = line.unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            ((file, line), l.to_string())
        })
        .collect()
}

pub fn run(dir: &Path) {
    let parent = dir.join("..");
    let manifest = read_manifest(&parent.join("manifest.tsv"));
    let delayed = read_cases(&parent.join("needs_delayed_name_removal.tsv"));
    let passing_path = crate::support::data_dir().join("promql/passing.tsv");
    let listed = read_cases(&passing_path);
    let delayed_passing_path = crate::support::data_dir().join("promql/passing_delayed.tsv");
    let listed_delayed = read_cases(&delayed_passing_path);
    let only = std::env::var("PERCH_PROMQL_FILE").ok();
    let verbose = std::env::var_os("PERCH_PROMQL_VERBOSE").is_some();
    let all_delayed = std::env::var_os("PERCH_PROMQL_DELAYED_NAME_REMOVAL").is_some();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npromql conformance corpus: {} (delayed __name__ removal {})",
        dir.display(),
        if all_delayed {
            "ON for every eval: PERCH_PROMQL_DELAYED_NAME_REMOVAL is set"
        } else {
            "off, as in a default Prometheus server"
        }
    );
    let _ = writeln!(
        out,
        "{:<26} {:>10} {:>13} {:>10}   {:>12} {:>12}",
        "file", "core", "experimental", "nh", "annotations", "consistency"
    );
    let mut tiers: BTreeMap<&str, Count> = BTreeMap::new();
    let mut delayed_count = Count::default();
    let (mut annotations, mut consistency) = (Count::default(), Count::default());
    let mut passed_now: BTreeMap<Case, (String, String)> = BTreeMap::new();
    let mut seen: BTreeSet<Case> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut side_notes = Vec::new();
    let mut panics = Vec::new();
    let mut ran_files = BTreeSet::new();
    // The core evals that failed, re-run with delayed name removal: case → (expr, why not).
    let mut rerun: BTreeMap<Case, (String, Result<(), String>)> = BTreeMap::new();
    for path in test_files(dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        ran_files.insert(name.clone());
        let rows = manifest
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: not in the manifest"));
        let text = std::fs::read_to_string(&path).unwrap();
        let outcomes = runner::run(&text, all_delayed, |_| true);
        assert_eq!(
            outcomes.len(),
            rows.len(),
            "{name}: the runner finds {} evals, the manifest {}: the mapping is broken",
            outcomes.len(),
            rows.len()
        );
        let mut file_tiers: BTreeMap<&str, Count> = BTreeMap::new();
        let (mut file_ann, mut file_cons) = (Count::default(), Count::default());
        let mut failed_core: BTreeSet<usize> = BTreeSet::new();
        for (o, row) in outcomes.iter().zip(rows) {
            assert_eq!(
                o.expr.trim(),
                row.expr.trim(),
                "{name}: eval {} (line {} here, {} upstream) does not match the manifest",
                o.index,
                o.line,
                row.line
            );
            let case = (name.clone(), row.line);
            seen.insert(case.clone());
            if o.passed() {
                passed_now.insert(case.clone(), (row.tier.clone(), row.expr.clone()));
            }
            if o.result.as_ref().err().is_some_and(|w| w == PANIC) {
                panics.push(format!("{name}:{} {}", row.line, o.expr));
            }
            if delayed.contains_key(&case) {
                delayed_count.add(o.passed());
            } else {
                file_tiers
                    .entry(tier_key(&row.tier))
                    .or_default()
                    .add(o.passed());
            }
            if o.passed() {
                file_ann.add(o.annotations.is_none());
                file_cons.add(o.consistency.is_none());
            }
            if o.passed() && verbose {
                for why in [&o.annotations, &o.consistency].into_iter().flatten() {
                    let why: String = why.chars().take(300).collect();
                    side_notes.push(format!(
                        "{name}:{} [{}] {}: {why}",
                        row.line, row.tier, o.expr
                    ));
                }
            }
            if !o.passed() && (verbose || row.tier == "core") {
                failures.push(describe(&name, row, o, delayed.contains_key(&case)));
            }
            if !o.passed() && row.tier == "core" {
                failed_core.insert(o.index);
            }
        }
        if !all_delayed && !failed_core.is_empty() {
            for o in runner::run(&text, true, |i| failed_core.contains(&i)) {
                let row = &rows[o.index];
                if o.result.as_ref().err().is_some_and(|w| w == PANIC) {
                    panics.push(format!("{name}:{} {} (delayed)", row.line, o.expr));
                }
                rerun.insert((name.clone(), row.line), (o.expr.clone(), o.result));
            }
        }
        let _ = writeln!(
            out,
            "{:<26} {:>10} {:>13} {:>10}   {:>12} {:>12}",
            name,
            file_tiers.get("core").copied().unwrap_or_default().cell(),
            file_tiers
                .get("experimental")
                .copied()
                .unwrap_or_default()
                .cell(),
            file_tiers.get("nh").copied().unwrap_or_default().cell(),
            file_ann.cell(),
            file_cons.cell(),
        );
        for (k, c) in file_tiers {
            let t = tiers.entry(k).or_default();
            t.passed += c.passed;
            t.total += c.total;
        }
        annotations.passed += file_ann.passed;
        annotations.total += file_ann.total;
        consistency.passed += file_cons.passed;
        consistency.total += file_cons.total;
    }
    let _ = writeln!(out, "pass rates per tier:");
    for t in TIERS {
        let c = tiers.get(t).copied().unwrap_or_default();
        let _ = writeln!(out, "  {t:<13} {}", c.rate());
    }
    let _ = writeln!(
        out,
        "  core evals that need delayed __name__ removal (reported apart, not in the core rate): {}",
        delayed_count.cell()
    );
    let _ = writeln!(
        out,
        "of the passing evals: annotations as asked {}, consistent in the range-mode and @ re-runs {}",
        annotations.cell(),
        consistency.cell()
    );
    if !failures.is_empty() {
        let _ = writeln!(out, "failing {}evals:", if verbose { "" } else { "core " });
        for f in &failures {
            let _ = writeln!(out, "  {f}");
        }
    }

    // The second report: the failing core evals with delayed name removal on.
    let rerun_passed: BTreeSet<&Case> = rerun
        .iter()
        .filter(|(_, (_, r))| r.is_ok())
        .map(|(c, _)| c)
        .collect();
    if !all_delayed {
        let core = tiers.get("core").copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "core evals failing by default, re-run with delayed __name__ removal \
             (--enable-feature=promql-delayed-name-removal): {}",
            Count {
                passed: rerun_passed.len(),
                total: rerun.len()
            }
            .cell()
        );
        for (c, (expr, r)) in &rerun {
            match r {
                Ok(()) => {
                    let _ = writeln!(out, "  passes with it: {}:{} {expr}", c.0, c.1);
                }
                Err(why) => {
                    let why: String = why.chars().take(300).collect();
                    let _ = writeln!(out, "  fails in both modes: {}:{} {expr}: {why}", c.0, c.1);
                }
            }
        }
        let either = Count {
            passed: core.passed + delayed_count.passed + rerun_passed.len(),
            total: core.total + delayed_count.total,
        };
        let _ = writeln!(
            out,
            "core evals passing in one mode or the other: {}{}",
            either.rate(),
            if either.passed == either.total {
                ": all of them"
            } else {
                ""
            }
        );
    }

    if !side_notes.is_empty() {
        let _ = writeln!(out, "passing evals with other complaints:");
        for n in &side_notes {
            let _ = writeln!(out, "  {n}");
        }
    }

    // The regression gate: a listed case that fails now, or that the corpus no longer has.
    let regressed: Vec<&Case> = listed
        .keys()
        .filter(|c| ran_files.contains(&c.0) && !passed_now.contains_key(*c))
        .collect();
    let missing: Vec<&Case> = listed
        .keys()
        .filter(|c| ran_files.contains(&c.0) && !seen.contains(*c))
        .collect();
    let new: Vec<&Case> = passed_now
        .keys()
        .filter(|c| !listed.contains_key(*c))
        .collect();
    let _ = writeln!(
        out,
        "passing.tsv: {} listed, {} regressed, {} new passes not listed yet{}",
        listed.len(),
        regressed.len(),
        new.len(),
        if all_delayed {
            " (made in the default mode: not checked in this run)"
        } else {
            ""
        }
    );
    // The same for the cases that pass only with delayed name removal: each must still pass in
    // one mode or the other.
    let regressed_delayed: Vec<&Case> = listed_delayed
        .keys()
        .filter(|c| {
            ran_files.contains(&c.0) && !passed_now.contains_key(*c) && !rerun_passed.contains(c)
        })
        .collect();
    let new_delayed: Vec<&Case> = rerun_passed
        .iter()
        .copied()
        .filter(|c| !listed_delayed.contains_key(*c))
        .collect();
    if !all_delayed {
        let _ = writeln!(
            out,
            "passing_delayed.tsv: {} listed, {} regressed, {} new passes not listed yet",
            listed_delayed.len(),
            regressed_delayed.len(),
            new_delayed.len()
        );
    }
    if !new_delayed.is_empty() && !all_delayed {
        if std::env::var_os("PERCH_PROMQL_UPDATE_PASSING").is_some() && only.is_none() {
            let tiers_exprs: BTreeMap<Case, (String, String)> = new_delayed
                .iter()
                .map(|c| ((*c).clone(), ("core".to_string(), rerun[*c].0.clone())))
                .collect();
            write_passing(
                &delayed_passing_path,
                PASSING_DELAYED_HEAD,
                &listed_delayed,
                &tiers_exprs,
            );
            let _ = writeln!(
                out,
                "passing_delayed.tsv: added the {} new passes",
                new_delayed.len()
            );
        } else {
            for c in &new_delayed {
                let _ = writeln!(out, "  new pass with delayed name removal: {}:{}", c.0, c.1);
            }
        }
    }
    if all_delayed {
        report(&out);
        assert!(panics.is_empty(), "the engine panicked on: {panics:#?}");
        return;
    }
    if !new.is_empty() {
        if std::env::var_os("PERCH_PROMQL_UPDATE_PASSING").is_some() && only.is_none() {
            write_passing(&passing_path, PASSING_HEAD, &listed, &passed_now);
            let _ = writeln!(out, "passing.tsv: added the {} new passes", new.len());
        } else {
            for c in new.iter().take(20) {
                let _ = writeln!(out, "  new pass: {}:{}", c.0, c.1);
            }
            if new.len() > 20 {
                let _ = writeln!(out, "  … and {} more", new.len() - 20);
            }
            let _ = writeln!(
                out,
                "  (add them with PERCH_PROMQL_UPDATE_PASSING=1 cargo test --test it conformance_corpus)"
            );
        }
    }
    report(&out);
    assert!(panics.is_empty(), "the engine panicked on: {panics:#?}");
    assert!(
        missing.is_empty(),
        "cases listed in passing.tsv that the corpus does not have: {missing:?}"
    );
    assert!(
        regressed.is_empty(),
        "cases listed in {} fail now: {:?}",
        passing_path.display(),
        regressed
    );
    assert!(
        regressed_delayed.is_empty(),
        "cases listed in {} fail now in both modes: {:?}",
        delayed_passing_path.display(),
        regressed_delayed
    );
}

fn tier_key(t: &str) -> &'static str {
    TIERS.into_iter().find(|x| *x == t).unwrap_or("other")
}

fn describe(file: &str, row: &Row, o: &Outcome, delayed: bool) -> String {
    let why = o.result.as_ref().err().cloned().unwrap_or_default();
    let mut why: String = why.chars().take(300).collect();
    if delayed {
        why.push_str(" [needs delayed __name__ removal]");
    }
    format!("{file}:{} [{}] {}: {why}", row.line, row.tier, o.expr)
}

/// Rewrites the list as the union of what it held and what passes now.
/// The head of `passing.tsv`.
const PASSING_HEAD: &str = "# Corpus cases (../shared/promql) that pass: file, upstream line (manifest.tsv), tier, expr.\n\
     # tests/it/promql.rs fails if any of them fails. Only grows: PERCH_PROMQL_UPDATE_PASSING=1\n\
     # adds new passes; a line is removed only with a reason in the commit message.\n";

/// The head of `passing_delayed.tsv`.
const PASSING_DELAYED_HEAD: &str = "# Corpus core cases (../shared/promql) that fail in the engine's default mode (a default\n\
     # Prometheus server's answer differs) and pass with delayed __name__ removal on\n\
     # (EngineOptions::delayed_name_removal, --enable-feature=promql-delayed-name-removal), as the\n\
     # corpus's reference runner has it. tests/it/promql.rs fails if one of them passes in neither\n\
     # mode. Only grows: PERCH_PROMQL_UPDATE_PASSING=1 adds new ones.\n";

fn write_passing(
    path: &Path,
    head: &str,
    listed: &BTreeMap<Case, String>,
    passed_now: &BTreeMap<Case, (String, String)>,
) {
    let mut out = format!("{head}file\tline\ttier\texpr\n");
    let all: BTreeSet<&Case> = listed.keys().chain(passed_now.keys()).collect();
    for c in all {
        match (listed.get(c), passed_now.get(c)) {
            (Some(line), _) => out.push_str(line),
            (None, Some((tier, expr))) => {
                let _ = write!(out, "{}\t{}\t{tier}\t{expr}", c.0, c.1);
            }
            (None, None) => continue,
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
