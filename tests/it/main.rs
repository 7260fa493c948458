//! Perch's integration tests: one test binary, a module per area.

mod support;

mod api;
mod cancel;
mod config;
mod crash;
mod discovery;
mod e2e;
mod ingest;
mod lateness;
mod promql;
mod pull;
#[cfg(feature = "tls")]
mod remote_tls;
mod scrape;
mod scrape_parity;
#[cfg(feature = "tls")]
mod scrape_tls;
mod storage;
mod threads;
mod ui;
