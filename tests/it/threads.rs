//! The single-threaded core, checked from outside: `/proc/<pid>/task` after start-up, after
//! flushes and after a burst of concurrent HTTP requests, and a clean exit on SIGTERM.

use crate::support::{threads, wait_until, Perch};
use std::time::Duration;

/// The executor's thread, async-io's fallback thread, and the fsync thread (started by the
/// first flush in slices; see `storage::syncer`).
const MAX_THREADS: usize = 3;

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Every thread is one of the three the brief allows, each once.
fn check_threads(pid: u32, when: &str) {
    let mut names = thread_names(pid);
    assert!((1..=MAX_THREADS).contains(&names.len()), "{names:?} {when}");
    names.sort();
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique, names, "a thread twice {when}");
    for n in &names {
        assert!(
            ["perch", "async-io", "perch-fsync"].contains(&n.as_str()),
            "thread {n:?} {when}: {names:?}"
        );
    }
}

#[test]
fn at_most_three_threads_under_load() {
    let perch = Perch::start_with("threads", None, &["--storage.flush-interval", "1s"]);
    check_threads(perch.pid(), "after start-up");
    // The self-scrape's samples are flushed in slices, so the fsync thread starts.
    wait_until(Duration::from_secs(30), || {
        thread_names(perch.pid()).iter().any(|n| n == "perch-fsync")
    });
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
    check_threads(perch.pid(), "after 200 requests");
    assert_eq!(threads(perch.pid()), MAX_THREADS);
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
