//! Perch: a Prometheus-compatible monitoring agent for ARM single-board computers.
//!
//! The story of a sample, in the order the modules are laid out:
//!
//! 1. [`config`] turns flags and a `prometheus.yml` into a validated [`config::Config`]; code
//!    past it never sees raw input.
//! 2. [`scrape`] finds targets (the config's `static_configs`, files for `file_sd_configs`
//!    polled for changes, DNS for `dns_sd_configs` and multicast DNS for `mdns_sd_configs`
//!    through its own async resolver), fetches each on its schedule over HTTP, parses the exposition text
//!    with a zero-copy pull parser, adds `job`/`instance` and the synthetic series (`up`, …),
//!    applies the job's limits, and writes one scrape as one batch through the storage seam's
//!    `Appender`.
//! 3. [`storage`] is that seam (`Appender`, `Querier`) and the store behind it: per-series heads
//!    in RAM, flushed as compressed blocks into a ring of CRC-framed segment files on flash under
//!    a hard byte budget (`docs/format.md`).
//! 4. [`promql`] evaluates PromQL (parsed by the `promql-parser` crate) over a `Querier`.
//! 5. [`web`] serves the Prometheus HTTP API (queries, metadata, status, remote write, import),
//!    federation, remote read and the export with a cursor, Perch's own `/metrics`, and the
//!    built-in web UI (`web::ui`) that reads that API. [`remote`] pushes samples to
//!    `remote_write` receivers: live, and after an outage from the store's records.
//! 6. [`runtime`] runs all of it on one OS thread: a `smol` local executor (async-io's reactor),
//!    the clock, signals and the wiring of the tasks.
//!
//! [`model`] holds the shared vocabulary (labels, samples, matchers) and [`telemetry`] Perch's
//! own counters. Dependencies point one way:
//! `model` ← `storage` ← `scrape`; `promql` → `storage`; `web` → `promql`, `storage`, and
//! `scrape` for the targets' state and the text parser (import endpoint), and `remote` for the
//! senders' state; `remote` → `storage`, `scrape` (relabeling, name resolution); `runtime` wires them
//! together (and `perch import`). Nothing imports `web`; `storage` never imports `promql` or
//! `scrape`.
#![deny(unsafe_code)]

pub mod config;
pub mod model;
pub mod promql;
pub mod remote;
pub mod runtime;
pub mod scrape;
pub mod storage;
pub mod telemetry;
pub mod web;
