//! Scraping: targets from the config, fetched on schedule, parsed, written as one batch each.
//!
//! Data flow: [`crate::config::ScrapeConfig`] → [`Target`]s (labels `job`, `instance` and the
//! static group's labels) → one task per target on the executor ([`scraper`]) that fetches
//! ([`client`]), parses ([`parse`]) and appends through the storage seam's `Appender`, then
//! commits — or rolls back, so a body that does not parse stores nothing from that scrape.
//!
//! Contract:
//! - A target never overlaps itself; a slow target never delays another (each has its own task).
//! - Scrape times are spread over the interval by a hash of the target (stable across restarts)
//!   and aligned to the wall clock, as Prometheus does.
//! - Every scrape, successful or not, writes `up`, `scrape_duration_seconds`,
//!   `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and `scrape_series_added`.
//! - Series that disappear from a target, or all of its series when a scrape fails, get a
//!   staleness marker.
//! - The state of every target is kept in a [`TargetStatus`] for the API.

pub mod client;
pub mod parse;
pub mod relabel;
pub mod scraper;

use crate::config::{FileConfig, ScrapeConfig};
use crate::model::{Labels, LabelsBuilder};
use crate::storage::Storage;
use crate::telemetry::Telemetry;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Health of a target, as the targets API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One target to scrape, resolved from the config.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    /// `host:port`, as scraped.
    pub address: String,
    /// Path plus query string, e.g. `/metrics?module=x`.
    pub path_and_query: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    /// The labels added to every scraped series (`job`, `instance`, group labels).
    pub labels: Labels,
    /// The labels before relabeling (`__address__`, `__scheme__`, …), for the API.
    pub discovered_labels: Labels,
    /// Largest body accepted, in bytes.
    pub body_limit: usize,
}

impl Target {
    /// The URL scraped, for the API and logs.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.address, self.path_and_query)
    }
}

/// The live state of one target.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub target: Target,
    pub health: Health,
    pub last_error: String,
    /// Start of the last scrape, ms since the epoch (0: never).
    pub last_scrape_ms: i64,
    pub last_scrape_duration: Duration,
    pub last_samples: usize,
}

impl TargetStatus {
    /// The state of a target not scraped yet.
    pub fn new(target: Target) -> Self {
        TargetStatus {
            target,
            health: Health::Unknown,
            last_error: String::new(),
            last_scrape_ms: 0,
            last_scrape_duration: Duration::ZERO,
            last_samples: 0,
        }
    }
}

/// Default bound on a scrape body until `body_size_limit` is configurable.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// Percent-encodes a URL query component.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The targets of one scrape job.
pub fn targets_of(job: &ScrapeConfig) -> Vec<Target> {
    let mut out = Vec::new();
    let mut path = job.metrics_path.clone();
    for (i, (k, v)) in job.params.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str(&encode_query(k));
        path.push('=');
        path.push_str(&encode_query(v));
    }
    for group in &job.static_configs {
        for addr in &group.targets {
            // As Prometheus 2.x: an address without a port gets the scheme's default port.
            let address = if addr.rsplit_once(':').is_some_and(|(h, p)| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
            }) {
                addr.clone()
            } else {
                format!("{addr}:80")
            };
            let mut disc = LabelsBuilder::new();
            for l in &group.labels {
                disc.set(&l.name, &l.value);
            }
            disc.set("__address__", addr)
                .set("__metrics_path__", &job.metrics_path)
                .set("__scheme__", &job.scheme)
                .set(
                    "__scrape_interval__",
                    &crate::config::format_duration(job.scrape_interval),
                )
                .set(
                    "__scrape_timeout__",
                    &crate::config::format_duration(job.scrape_timeout),
                )
                .set("job", &job.job_name);
            for (k, v) in &job.params {
                disc.set(&format!("__param_{k}"), v);
            }
            let mut labels = LabelsBuilder::new();
            for l in &group.labels {
                labels.set(&l.name, &l.value);
            }
            labels.set("job", &job.job_name).set("instance", &address);
            out.push(Target {
                job: job.job_name.clone(),
                address,
                path_and_query: path.clone(),
                interval: job.scrape_interval,
                timeout: job.scrape_timeout,
                honor_labels: job.honor_labels,
                honor_timestamps: job.honor_timestamps,
                labels: labels.build(),
                discovered_labels: disc.build(),
                body_limit: DEFAULT_BODY_LIMIT,
            });
        }
    }
    out
}

/// Runs the scrapers of a config; dropping it stops them.
pub struct ScrapeManager {
    /// One entry per target, in config order.
    pub status: Vec<Rc<RefCell<TargetStatus>>>,
    tasks: Vec<async_executor::Task<()>>,
}

impl ScrapeManager {
    /// Starts one task per target of `cfg` on `ex`.
    pub fn start(
        ex: &Rc<async_executor::LocalExecutor<'static>>,
        cfg: &FileConfig,
        storage: Rc<dyn Storage>,
        telemetry: Rc<Telemetry>,
    ) -> ScrapeManager {
        let mut status = Vec::new();
        let mut tasks = Vec::new();
        for job in &cfg.scrape_configs {
            for target in targets_of(job) {
                let st = Rc::new(RefCell::new(TargetStatus::new(target.clone())));
                status.push(st.clone());
                let s = scraper::Scraper::new(target, storage.clone(), telemetry.clone(), st);
                tasks.push(ex.spawn(s.run()));
            }
        }
        log::info!("scraping {} targets", status.len());
        ScrapeManager { status, tasks }
    }

    /// Stops every scraper (their tasks are cancelled at their next `.await`).
    pub fn stop(&mut self) {
        self.tasks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    #[test]
    fn targets_get_job_instance_and_group_labels() {
        let c = parse_yaml(
            "scrape_configs:\n  - job_name: n\n    params: {m: ['a b']}\n    static_configs:\n      - targets: [h1:9100, h2]\n        labels: {env: x}\n",
            "t",
        )
        .unwrap();
        let t = targets_of(&c.scrape_configs[0]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0].labels.to_string(),
            r#"{env="x", instance="h1:9100", job="n"}"#
        );
        assert_eq!(t[1].address, "h2:80");
        assert_eq!(t[0].url(), "http://h1:9100/metrics?m=a%20b");
        assert_eq!(t[0].discovered_labels.get("__param_m"), "a b");
    }
}
