//! The single-threaded core, checked from outside: `/proc/<pid>/task` after start-up and after
//! a burst of concurrent HTTP requests, and a clean exit on SIGTERM.

use crate::support::{threads, Perch};

/// The executor's thread plus async-io's fallback thread.
const MAX_THREADS: usize = 2;

#[test]
fn at_most_two_threads_under_load() {
    let perch = Perch::start("threads", None);
    let n = threads(perch.pid());
    assert!((1..=MAX_THREADS).contains(&n), "{n} threads after start-up");
    let port = perch.port;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let path = match i % 4 {
                        0 => "/metrics",
                        1 => "/api/v1/query?query=up",
                        2 => "/api/v1/label/__name__/values",
                        _ => "/api/v1/query_range?query=up&start=0&end=100&step=10",
                    };
                    let (s, _) = crate::support::get(port, path).unwrap();
                    assert_eq!(s, 200, "{path}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let n = threads(perch.pid());
    assert!(
        (1..=MAX_THREADS).contains(&n),
        "{n} threads after 200 requests"
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut perch = Perch::start("sigterm", None);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &perch.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = perch.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
