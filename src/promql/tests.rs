//! Engine tests that need Rust rather than a script: the sample limit and error kinds, absurd
//! inputs that must give errors or results but never a panic, and cooperative yielding.
//!
//! The scripted cases (promqltest language) and the conformance corpus run from
//! `tests/it/promql.rs` over the public API, with their scripts in `tests/data/promql/`.

use super::{Engine, EngineOptions, QueryError, Value};
use crate::model::Labels;
use crate::storage::flash::{FlashOptions, FlashStorage};
use crate::storage::Storage;
use futures_lite::future::block_on;
use std::future::Future;

/// The flash store over memory, as the agent runs it (minus the card).
fn store() -> FlashStorage {
    FlashStorage::in_memory(FlashOptions::default()).unwrap()
}

#[test]
fn errors_and_limits() {
    let engine = Engine::new(EngineOptions {
        max_samples: 10,
        ..EngineOptions::default()
    });
    let store = store();
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

/// `totalQueryableSamples` and `peakSamples` as Prometheus counts them (the same figures as a
/// live 2.42 where tests/it/api.rs compares them).
#[test]
fn sample_stats() {
    let store = store();
    let mut app = store.appender();
    for i in 0..3 {
        let l = Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]);
        for t in 0..10 {
            app.append(&l, t * 10_000, t as f64).unwrap();
        }
    }
    app.commit().unwrap();
    let q = store.querier();
    let engine = Engine::new(EngineOptions::default());
    let stats = |r: Result<super::QueryResult, QueryError>| {
        let s = r.unwrap().stats;
        (s.total_samples, s.peak_samples)
    };
    // One sample per series at the step.
    assert_eq!(
        stats(block_on(engine.instant(q.as_ref(), "m", 90_000))),
        (3, 3)
    );
    // A window's samples: (60s, 90s] holds 3 per series.
    assert_eq!(
        stats(block_on(engine.instant(q.as_ref(), "m[30s]", 90_000))),
        (9, 9)
    );
    let (total, _) = stats(block_on(engine.instant(
        q.as_ref(),
        "sum(rate(m[30s]))",
        90_000,
    )));
    assert_eq!(total, 9);
    // A range query counts per step: 3 series at 4 steps; windows of 2 samples at 4 steps.
    assert_eq!(
        stats(block_on(engine.range(
            q.as_ref(),
            "m",
            60_000,
            90_000,
            10_000
        ))),
        (12, 12)
    );
    let (total, _) = stats(block_on(engine.range(
        q.as_ref(),
        "rate(m[20s])",
        60_000,
        90_000,
        10_000,
    )));
    assert_eq!(total, 3 * 4 * 2);
    // A subquery argument counts the windows over its result, not what its inner query read.
    let (total, _) = stats(block_on(engine.instant(
        q.as_ref(),
        "max_over_time(sum(m)[30s:10s])",
        90_000,
    )));
    assert_eq!(total, 3);
    // A subquery as the whole query counts what its inner query read.
    let (total, _) = stats(block_on(engine.instant(q.as_ref(), "m[30s:10s]", 90_000)));
    assert_eq!(total, 9);
    // Literals read nothing; a string holds no samples.
    assert_eq!(stats(block_on(engine.instant(q.as_ref(), "1", 0))), (0, 1));
    assert_eq!(
        stats(block_on(engine.instant(q.as_ref(), "\"a\"", 0))),
        (0, 0)
    );
}

#[test]
fn absurd_inputs_are_errors_or_results_never_panics() {
    let store = store();
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
    let store = store();
    let mut app = store.appender();
    let l = Labels::from_pairs(&[("__name__", "m")]);
    for t in 0..20_000 {
        app.append(&l, t * 1000, t as f64).unwrap();
    }
    app.commit().unwrap();
    let q = store.querier();
    let engine = Engine::new(EngineOptions::default());
    let fut = engine.range(q.as_ref(), "sum_over_time(m[10m])", 0, 20_000_000, 1000);
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let (mut polls, mut longest) = (0, std::time::Duration::ZERO);
    let began = std::time::Instant::now();
    loop {
        polls += 1;
        let t = std::time::Instant::now();
        let ready = fut.as_mut().poll(&mut cx);
        longest = longest.max(t.elapsed());
        if let std::task::Poll::Ready(r) = ready {
            assert!(r.is_ok());
            break;
        }
    }
    // It yields once a slice (2 ms) is used up: far fewer polls than slices means some work
    // does not count. (Loose bounds, a yield per 10 ms: a test machine may be busy.)
    let total = began.elapsed();
    assert!(
        total < std::time::Duration::from_millis(10) || polls > 1,
        "one poll of {total:?}"
    );
    assert!(
        polls as f64 >= total.as_secs_f64() / 0.01,
        "{polls} polls in {total:?}, the longest {longest:?}"
    );
}

/// Delayed `__name__` removal is opt-in: the default engine drops names at once, as a default
/// Prometheus server; with the option the same query reads the name and loses it at the end.
/// (The scripted cases are in `tests/data/promql/delayed_name_removal.test`.)
#[test]
fn delayed_name_removal_is_opt_in() {
    assert!(!EngineOptions::default().delayed_name_removal);
    let store = store();
    let mut app = store.appender();
    for name in ["a_total", "b_total"] {
        let l = Labels::from_pairs(&[("__name__", name), ("x", "1")]);
        app.append(&l, 0, 1.0).unwrap();
    }
    app.commit().unwrap();
    let q = store.querier();
    let query = r#"label_replace(-{x="1"}, "n", "$1", "__name__", "(.+)")"#;
    let default = Engine::new(EngineOptions::default());
    let r = block_on(default.instant(q.as_ref(), query, 0));
    assert!(
        matches!(r, Err(QueryError::Execution(ref m)) if m.contains("same labelset")),
        "{r:?}"
    );
    let delayed = Engine::new(EngineOptions {
        delayed_name_removal: true,
        ..EngineOptions::default()
    });
    for r in [
        block_on(delayed.instant(q.as_ref(), query, 0)).map(|r| r.value),
        block_on(delayed.range(q.as_ref(), query, 0, 0, 1000)).map(|r| r.value),
    ] {
        let labels: Vec<Labels> = match r.unwrap() {
            Value::Vector(v) => v.into_iter().map(|s| s.labels).collect(),
            Value::Matrix(m) => m.into_iter().map(|s| s.labels).collect(),
            v => panic!("{v:?}"),
        };
        let mut want = ["a_total", "b_total"].map(|n| Labels::from_pairs(&[("n", n), ("x", "1")]));
        let mut got = labels;
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
