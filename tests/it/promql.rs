//! PromQL scripts in Prometheus's promqltest language, run through Perch's public API
//! (`perch::promql::Engine` over `perch::storage::memory::MemStorage`).
//!
//! - `our_cases`: every `tests/data/promql/*.test` must pass completely: results, the
//!   annotations the script asks for, and the range-mode and `@`-invariance re-runs.
//! - `conformance_corpus`: when `PERCH_PROMQL_CORPUS` names a directory (`.ci/run` sets it to
//!   `../shared/promql/tests`), every `*.test` there is run and pass rates are printed per tier
//!   and per file (`$PERCH_PROMQL_CORPUS/../manifest.tsv`); the run fails if a case listed in
//!   `tests/data/promql/passing.tsv` fails. Without the variable it is skipped, saying so.
//!
//! Reports go straight to the process's stderr (not `eprintln!`, which the test harness
//! captures), so the rates show in every `cargo test` log.
//!
//! Layout: `script` parses the language, `runner` runs and judges evals, `corpus` scores the
//! shared corpus against its manifest.

mod corpus;
mod runner;
mod script;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes to the real stderr, past the test harness's capture.
pub fn report(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.flush();
}

/// `*.test` files of a directory, sorted by name.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    v.sort();
    v
}

#[test]
fn our_cases() {
    let dir = crate::support::data_dir().join("promql");
    let files = test_files(&dir);
    assert!(!files.is_empty(), "no *.test in {}", dir.display());
    let mut failures = Vec::new();
    let mut evals = 0;
    for p in &files {
        let text = std::fs::read_to_string(p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy();
        let outcomes = runner::run(&text, |_| true);
        assert!(!outcomes.is_empty(), "{name}: no evals");
        evals += outcomes.len();
        for c in outcomes.iter().flat_map(runner::Outcome::complaints) {
            failures.push(format!("{name}:{c}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} complaints in {evals} evals:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn conformance_corpus() {
    let Some(dir) = std::env::var_os("PERCH_PROMQL_CORPUS") else {
        report(
            "promql conformance corpus: SKIPPED (PERCH_PROMQL_CORPUS is not set; .ci/run sets it to ../shared/promql/tests)\n",
        );
        return;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "PERCH_PROMQL_CORPUS={} is not a directory: the corpus is required when the variable is set",
        dir.display()
    );
    corpus::run(&dir);
}
