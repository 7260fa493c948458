//! PromQL scripts in Prometheus's promqltest language, run through Perch's public API
//! (`perch::promql::Engine` over `perch::storage::flash::FlashStorage` in memory).
//!
//! - `our_cases`: every `tests/data/promql/*.test` must pass completely: results, the
//!   annotations the script asks for, and the range-mode and `@`-invariance re-runs. A script
//!   starts in the default engine mode; a comment line `# perch: delayed-name-removal on` (or
//!   `off`) switches delayed `__name__` removal for the evals after it.
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

use crate::support::{wait_until, Fixture, Perch};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        let outcomes = runner::run(&text, false, |_| true);
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

/// `--enable-feature=promql-delayed-name-removal` reaches the engine of a running Perch: a query
/// that reads `__name__` after unary minus answers with it and fails without it (two series
/// with the same labels once the names are gone), as in Prometheus with and without the flag.
#[test]
fn enable_feature_flag_reaches_the_engine() {
    let fixture = Fixture::start(vec![b"a_total{x=\"1\"} 5\nb_total{x=\"1\"} 7\n".to_vec()]);
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: two\n    static_configs:\n      - targets: [\"{}\"]\n",
        fixture.addr
    );
    // count({x="1"}) and label_replace(-{x="1"}, "n", "$1", "__name__", "(.+)")
    let count = "/api/v1/query?query=count%28%7Bx%3D%221%22%7D%29";
    let query = "/api/v1/query?query=label_replace%28-%7Bx%3D%221%22%7D%2C%20%22n%22%2C%20%22%241%22%2C%20%22__name__%22%2C%20%22%28.%2B%29%22%29";
    for (name, args, delayed) in [
        ("delayed-name-off", &[][..], false),
        (
            "delayed-name-on",
            &["--enable-feature=promql-delayed-name-removal"][..],
            true,
        ),
    ] {
        let perch = Perch::start_with(name, Some(&config), args);
        wait_until(Duration::from_secs(30), || {
            perch.get(count).1.contains(r#""2"]"#)
        });
        let (status, body) = perch.get(query);
        if delayed {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(r#""n":"a_total""#), "{body}");
            assert!(body.contains(r#""n":"b_total""#), "{body}");
            assert!(!body.contains("__name__"), "{body}");
        } else {
            assert_eq!(status, 422, "{body}");
            assert!(
                body.contains("vector cannot contain metrics with the same labelset"),
                "{body}"
            );
        }
    }
}
