//! Scraping: targets from the config and from discovery files, fetched on schedule, parsed,
//! written as one batch each.
//!
//! Data flow: [`crate::config::ScrapeConfig`] → target groups (`static_configs`, and from
//! [`discovery`]: the files of `file_sd_configs`, DNS lookups of `dns_sd_configs` through the
//! async [`resolver`], multicast DNS browses of `mdns_sd_configs`) → [`Target`]s (labels `job`, `instance` and the
//! group's labels, after `relabel_configs`) → one task per target on the executor ([`scraper`])
//! that fetches ([`client`], keeping its connection between scrapes; `https` over TLS with the job's
//! [`crate::config::TlsClient`]), parses ([`parse`]) and appends through the storage seam's
//! `Appender`, then commits — or rolls back, so a body that does not parse, or breaks a limit
//! of the job, stores nothing from that scrape.
//!
//! Contract:
//! - A target never overlaps itself; a slow target never delays another (each has its own task).
//! - Scrape times are spread over the interval by a hash of the target (stable across restarts)
//!   and aligned to the wall clock, as Prometheus does.
//! - Every scrape, successful or not, writes `up`, `scrape_duration_seconds`,
//!   `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and `scrape_series_added`.
//! - Series that disappear from a target, or all of its series when a scrape fails, get a
//!   staleness marker; so do a target's series and synthetic series when discovery drops it.
//! - When discovery changes a job's targets, the others keep scraping without a gap
//!   ([`ScrapeManager`]).
//! - The job's limits act as in 2.42: `sample_limit` and the label limits fail a scrape whole,
//!   `body_size_limit` fails the fetch, `target_limit` fails every target of the job.
//! - The state of every target is kept in a [`TargetStatus`] for the API; targets dropped by
//!   `relabel_configs` are kept as their discovered label sets ([`DroppedTarget`]), as
//!   Prometheus keeps them, bounded by the job's target groups.

pub mod cache;
pub mod client;
pub mod discovery;
pub mod parse;
pub mod relabel;
pub mod resolver;
pub mod scraper;
#[cfg(feature = "tls")]
pub mod tls;

use crate::config::{FileConfig, ScrapeConfig, TargetGroup};
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
    /// Largest body accepted, in bytes: one less than the job's `body_size_limit` (a body of
    /// exactly the limit fails in 2.42 too), or [`DEFAULT_BODY_LIMIT`].
    pub body_limit: usize,
    /// The job's limits (`sample_limit`, label limits; the others act elsewhere).
    pub limits: crate::config::ScrapeLimits,
    /// The job's credentials, sent as `Authorization`.
    pub auth: Option<Rc<crate::config::Auth>>,
    /// For an `https` target, the job's TLS client; `None`: plain `http`.
    pub tls: Option<crate::config::TlsClient>,
    /// The job's `metric_relabel_configs`, applied to each new series.
    pub metric_relabel_configs: Rc<Vec<crate::config::RelabelConfig>>,
}

impl Target {
    /// The URL scraped, for the API and logs.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.address, self.path_and_query)
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
    /// TYPE, HELP and UNIT per metric family, as the target last exposed them (unordered: a
    /// scrape looks a family up once per metadata line; the API sorts what it shows). The std
    /// hasher's random keys keep a target from choosing names that collide. Names and entries
    /// are shared between targets ([`shared_metadata`]).
    pub metadata: std::collections::HashMap<Rc<str>, Rc<MetricMetadata>>,
}

/// What a target says about one metric family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MetricMetadata {
    /// As the API names it: counter, gauge, histogram, gaugehistogram, summary, info,
    /// stateset or unknown (the text format's `untyped` included, as Prometheus does).
    pub kind: &'static str,
    pub help: Box<str>,
    pub unit: Box<str>,
}

/// Family names and metadata entries, each held once however many targets say the same (ten
/// node exporters repeat every HELP text: shared, the metadata of the contract's live run
/// takes about a tenth). A copy no target holds any more is dropped when the pool has doubled
/// since it was last swept, so a target that changes its texts cannot grow it without bound.
#[derive(Default)]
struct MetadataPool {
    names: std::collections::HashSet<Rc<str>>,
    entries: std::collections::HashSet<Rc<MetricMetadata>>,
    swept_at: usize,
}

thread_local! {
    // The scrapers run on the executor's one thread.
    static METADATA_POOL: RefCell<MetadataPool> = RefCell::default();
}

/// The shared copies of `name` and `m` (see [`MetadataPool`]).
pub fn shared_metadata(name: &str, m: MetricMetadata) -> (Rc<str>, Rc<MetricMetadata>) {
    METADATA_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let size = p.names.len() + p.entries.len();
        if size > 2 * p.swept_at + 1024 {
            p.names.retain(|n| Rc::strong_count(n) > 1);
            p.entries.retain(|e| Rc::strong_count(e) > 1);
            p.swept_at = p.names.len() + p.entries.len();
        }
        let name = shared(&mut p.names, name, || Rc::from(name));
        let entry = shared(&mut p.entries, &m, || Rc::new(m.clone()));
        (name, entry)
    })
}

/// The copy of `v` in `set`, put there (made by `make`) if it is not yet.
fn shared<T: ?Sized + std::hash::Hash + Eq>(
    set: &mut std::collections::HashSet<Rc<T>>,
    v: &T,
    make: impl FnOnce() -> Rc<T>,
) -> Rc<T> {
    if let Some(have) = set.get(v) {
        return have.clone();
    }
    let new = make();
    set.insert(new.clone());
    new
}

/// Most metric families whose metadata is kept per target.
pub const MAX_METADATA_PER_TARGET: usize = 10_000;

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
            metadata: Default::default(),
        }
    }
}

/// Bound on a scrape body when the job sets no `body_size_limit` (2.42 has none; Perch bounds
/// every buffer).
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// The largest body accepted for a job's `body_size_limit` (0: none set).
pub fn body_limit(body_size_limit: u64) -> usize {
    match body_size_limit {
        0 => DEFAULT_BODY_LIMIT,
        n => (n - 1).min(usize::MAX as u64) as usize,
    }
}

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

/// `host:port` has a port: as Go's `net.SplitHostPort` succeeding (IPv6 hosts in brackets).
fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => h.starts_with('[') && h.ends_with(']'),
        Some((h, _)) => !h.contains('[') && !h.contains(']'),
        None => false,
    }
}

/// What [`populate`] made of one discovered label set.
#[derive(Debug, Clone)]
pub enum Populated {
    /// A target to scrape.
    Active(Box<Target>),
    /// Dropped by `relabel_configs`: the labels it had before relabeling.
    Dropped(Labels),
}

/// The target for one discovered label set, as Prometheus's `PopulateLabels`: the job's
/// defaults fill in what discovery did not set, `relabel_configs` run, and the result gives the
/// URL (`__scheme__`, `__address__`, `__metrics_path__`, `__param_*`), the schedule
/// (`__scrape_interval__`, `__scrape_timeout__`) and the target labels (those not starting with
/// `__`, `instance` defaulting to the address). `Err`: the labels left cannot be scraped (the
/// reason, for the log).
pub fn populate(job: &ScrapeConfig, discovered: &Labels) -> Result<Populated, String> {
    let mut disc = discovered.builder();
    for (name, value) in [
        ("job", job.job_name.clone()),
        (
            "__scrape_interval__",
            crate::config::format_duration(job.scrape_interval),
        ),
        (
            "__scrape_timeout__",
            crate::config::format_duration(job.scrape_timeout),
        ),
        ("__metrics_path__", job.metrics_path.clone()),
        ("__scheme__", job.scheme.clone()),
    ] {
        if discovered.get(name).is_empty() {
            disc.set(name, &value);
        }
    }
    // The first value of each parameter (the others still go into the URL).
    for (i, (k, v)) in job.params.iter().enumerate() {
        if i == 0 || job.params[i - 1].0 != *k {
            disc.set(&format!("__param_{k}"), v);
        }
    }
    let discovered_labels = disc.build();
    let Some(lset) = relabel::process(discovered_labels.clone(), &job.relabel_configs) else {
        return Ok(Populated::Dropped(discovered_labels));
    };
    let mut address = lset.get("__address__").to_owned();
    if address.is_empty() {
        return Err("no address".into());
    }
    let scheme = lset.get("__scheme__");
    if !has_port(&address) {
        match scheme {
            "http" | "" => address.push_str(":80"),
            "https" => address.push_str(":443"),
            _ => return Err(format!("invalid scheme: {scheme:?}")),
        }
    }
    // The job's TLS client serves its `https` targets; a job has one when its scheme is
    // `https` or it has a `tls_config` (see `config::tls`).
    if scheme == "https" && job.tls.is_none() {
        return Err("scheme \"https\": the job has neither scheme: https nor a tls_config".into());
    }
    let tls = if scheme == "https" {
        job.tls.clone()
    } else {
        None
    };
    if address.contains('/') || address.chars().any(char::is_whitespace) {
        return Err(format!("{address:?} is not a valid hostname"));
    }
    let dur = |name: &str, what: &str| -> Result<Duration, String> {
        let d = crate::config::parse_duration(lset.get(name))
            .map_err(|e| format!("error parsing scrape {what}: {e}"))?;
        if d.is_zero() {
            return Err(format!("scrape {what} cannot be 0"));
        }
        Ok(d)
    };
    let interval = dur("__scrape_interval__", "interval")?;
    let timeout = dur("__scrape_timeout__", "timeout")?;
    if timeout > interval {
        return Err(format!(
            "scrape timeout cannot be greater than scrape interval ({:?} > {:?})",
            lset.get("__scrape_timeout__"),
            lset.get("__scrape_interval__")
        ));
    }
    // The query: the job's params, the first value of each replaced by its `__param_` label,
    // plus `__param_` labels for names the job does not have; in name order, as Go's
    // `url.Values.Encode`.
    let mut params: Vec<(String, String)> = Vec::new();
    for (i, (k, v)) in job.params.iter().enumerate() {
        let first = i == 0 || job.params[i - 1].0 != *k;
        let v = match lset.get(&format!("__param_{k}")) {
            p if first && !p.is_empty() => p,
            _ => v,
        };
        params.push((k.clone(), v.to_owned()));
    }
    for l in &lset {
        if let Some(k) = l.name.strip_prefix("__param_") {
            if !job.params.iter().any(|(n, _)| n == k) {
                params.push((k.to_owned(), l.value.clone()));
            }
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut path_and_query = lset.get("__metrics_path__").to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        path_and_query.push(if i == 0 { '?' } else { '&' });
        path_and_query.push_str(&encode_query(k));
        path_and_query.push('=');
        path_and_query.push_str(&encode_query(v));
    }
    let mut labels = LabelsBuilder::new();
    for l in &lset {
        if !l.name.starts_with("__") {
            labels.set(&l.name, &l.value);
        }
    }
    if lset.get("instance").is_empty() {
        labels.set("instance", &address);
    }
    Ok(Populated::Active(Box::new(Target {
        job: job.job_name.clone(),
        address,
        path_and_query,
        interval,
        timeout,
        honor_labels: job.honor_labels,
        honor_timestamps: job.honor_timestamps,
        labels: labels.build(),
        discovered_labels,
        body_limit: body_limit(job.limits.body_size_limit),
        limits: job.limits,
        auth: job.auth.clone().map(Rc::new),
        tls,
        metric_relabel_configs: Rc::new(job.metric_relabel_configs.clone()),
    })))
}

/// A target that `relabel_configs` dropped: only its labels before relabeling, for the targets
/// API's `droppedTargets`, as Prometheus keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTarget {
    /// The scrape pool (job name) it was discovered in.
    pub job: String,
    /// The discovered labels with the job's defaults (`job`, `__scheme__`, …) filled in.
    pub discovered_labels: Labels,
}

/// The targets of one scrape job as relabeling left them. Both lists are in discovery order and
/// bounded by the job's `static_configs`: each dropped target is one label set.
#[derive(Debug, Clone, Default)]
pub struct JobTargets {
    pub active: Vec<Target>,
    pub dropped: Vec<DroppedTarget>,
}

/// The targets of one scrape job: those to scrape, and those `relabel_configs` dropped. Targets
/// that cannot be scraped are left out of both with a warning, as Prometheus logs and skips them.
pub fn resolve_targets(job: &ScrapeConfig) -> JobTargets {
    let mut out = JobTargets::default();
    for group in &job.static_configs {
        for addr in &group.targets {
            match populate(job, &discovered(group, addr)) {
                Ok(Populated::Active(t)) => out.active.push(*t),
                Ok(Populated::Dropped(discovered_labels)) => out.dropped.push(DroppedTarget {
                    job: job.job_name.clone(),
                    discovered_labels,
                }),
                Err(e) => log::warn!("job {:?}: target {addr:?} dropped: {e}", job.job_name),
            }
        }
    }
    out
}

/// The targets of one scrape job to scrape (see [`resolve_targets`]).
pub fn targets_of(job: &ScrapeConfig) -> Vec<Target> {
    resolve_targets(job).active
}

/// The labels of one discovered target: the group's labels and its address.
fn discovered(group: &TargetGroup, addr: &str) -> Labels {
    let mut disc = group.labels.builder();
    disc.set("__address__", addr);
    disc.build()
}

/// Where the manager tells the API about its targets: every pool's active targets (pools in
/// config order, targets in discovery order) and the dropped ones; called after every change.
pub type Publish = Rc<dyn Fn(Vec<Rc<RefCell<TargetStatus>>>, Rc<Vec<DroppedTarget>>)>;

/// One running target: its status and its task.
struct Running {
    /// Labels and URL: a target keeps its task while discovery lists a target with these.
    key: String,
    status: Rc<RefCell<TargetStatus>>,
    task: async_executor::Task<()>,
    end: scraper::EndOfRun,
}

/// A scrape pool: the targets of one job.
struct Pool {
    job: ScrapeConfig,
    /// `target_limit` exceeded: the error every scraper of the pool fails with.
    forced: scraper::ForcedError,
    running: Vec<Running>,
    /// Targets gone from discovery, waiting to write their staleness markers (by key).
    ending: Vec<(String, async_executor::Task<()>)>,
    dropped: Vec<DroppedTarget>,
    /// The discovered groups, one slot per mechanism: the files (0), then each
    /// `dns_sd_configs` and each `mdns_sd_configs` entry in config order.
    discovered: Vec<Vec<TargetGroup>>,
    /// The pool's discovery tasks (they find the pool by its job name).
    tasks: Vec<async_executor::Task<()>>,
}

/// What the pools and their discovery tasks share.
struct Shared {
    ex: Rc<async_executor::LocalExecutor<'static>>,
    storage: Rc<dyn Storage>,
    telemetry: Rc<Telemetry>,
    pools: RefCell<Vec<Pool>>,
    publish: Publish,
}

/// Runs the scrapers of a config; dropping it (or [`ScrapeManager::stop`]) stops them.
///
/// Each job is a pool of targets from its `static_configs`, `file_sd_configs`,
/// `dns_sd_configs` and `mdns_sd_configs`. A pool with file discovery has a task that polls the
/// files ([`discovery`]), each DNS or mDNS discovery has a task that looks up or browses every
/// `refresh_interval`; when the target groups change, the pool is synced as 2.42's `scrapePool.Sync` does: targets still listed keep their
/// task (no gap, the same scrape cache), new ones start, and those gone stop and get staleness
/// markers a little over one interval later ([`scraper::EndOfRun`]). Duplicate targets (same
/// labels and URL) are scraped once. After each sync, a pool with more targets than its
/// `target_limit` fails all of them with 2.42's error.
pub struct ScrapeManager {
    shared: Rc<Shared>,
}

impl ScrapeManager {
    /// Reads the discovery files once, starts one task per target of `cfg` on `ex`, one
    /// discovery task per job with `file_sd_configs` and one per `dns_sd_configs` and
    /// `mdns_sd_configs` entry (their first results come once the executor runs); `publish` hears of every change of the
    /// target lists, the first one before this returns.
    pub fn start(
        ex: &Rc<async_executor::LocalExecutor<'static>>,
        cfg: &FileConfig,
        storage: Rc<dyn Storage>,
        telemetry: Rc<Telemetry>,
        publish: Publish,
    ) -> ScrapeManager {
        let shared = Rc::new(Shared {
            ex: ex.clone(),
            storage,
            telemetry,
            pools: RefCell::new(Vec::new()),
            publish,
        });
        for job in &cfg.scrape_configs {
            shared.add_pool(job);
        }
        let (active, dropped) = shared.lists();
        log::info!(
            "scraping {} targets ({} dropped by relabeling)",
            active.len(),
            dropped.len()
        );
        (shared.publish)(active, dropped);
        ScrapeManager { shared }
    }

    /// Applies a reloaded config: a job whose config is unchanged keeps its pool as it runs
    /// (targets scrape on without a gap, discovery goes on); a changed job's pool starts
    /// afresh, as does a new one; a removed job's pool stops.
    pub fn reload(&mut self, cfg: &FileConfig) {
        let mut old: Vec<Option<Pool>> = std::mem::take(&mut *self.shared.pools.borrow_mut())
            .into_iter()
            .map(Some)
            .collect();
        for job in &cfg.scrape_configs {
            let kept = old
                .iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| p.job == *job))
                .and_then(Option::take);
            match kept {
                Some(pool) => self.shared.pools.borrow_mut().push(pool),
                None => self.shared.add_pool(job),
            }
        }
        // Dropping the others cancels their scrapers and discovery at their next `.await`.
        drop(old);
        let (active, dropped) = self.shared.lists();
        (self.shared.publish)(active, dropped);
    }

    /// Every active target's status, pools in config order.
    pub fn status(&self) -> Vec<Rc<RefCell<TargetStatus>>> {
        self.shared.lists().0
    }

    /// The targets `relabel_configs` dropped.
    pub fn dropped(&self) -> Rc<Vec<DroppedTarget>> {
        self.shared.lists().1
    }

    /// Stops discovery and every scraper (their tasks are cancelled at their next `.await`),
    /// without staleness markers, as 2.42 on shutdown.
    pub fn stop(&mut self) {
        let pools = std::mem::take(&mut *self.shared.pools.borrow_mut());
        drop(pools);
    }
}

/// Polls a pool's discovery files every [`discovery::POLL_INTERVAL`] (or its shortest
/// `refresh_interval`), reads them when they changed or their `refresh_interval` passed, and
/// syncs the pool when the groups changed.
async fn watch_files(shared: Rc<Shared>, pool: String, mut sds: Vec<discovery::FileSd>) {
    let poll = sds
        .iter()
        .map(|s| s.refresh_interval())
        .fold(discovery::POLL_INTERVAL, Duration::min);
    let mut due: Vec<std::time::Instant> = sds
        .iter()
        .map(|s| std::time::Instant::now() + s.refresh_interval())
        .collect();
    loop {
        crate::runtime::timer::sleep(poll).await;
        let now = std::time::Instant::now();
        let mut changed = false;
        for (sd, due) in sds.iter_mut().zip(due.iter_mut()) {
            if now >= *due || sd.changed() {
                changed |= sd.refresh();
                *due = now + sd.refresh_interval();
            }
        }
        if changed {
            shared.update(
                &pool,
                0,
                sds.iter().flat_map(|s| s.groups()).cloned().collect(),
            );
        }
    }
}

/// Looks a `dns_sd_configs` entry's names up now and every `refresh_interval`, and syncs the
/// pool when the groups changed.
async fn watch_dns(shared: Rc<Shared>, pool: String, slot: usize, mut sd: discovery::dns::DnsSd) {
    loop {
        if sd.refresh(&shared.telemetry).await {
            shared.update(&pool, slot, sd.groups().cloned().collect());
        }
        crate::runtime::timer::sleep(sd.refresh_interval()).await;
    }
}

/// Browses an `mdns_sd_configs` entry's service now and every `refresh_interval`, and syncs
/// the pool when the groups changed.
async fn watch_mdns(
    shared: Rc<Shared>,
    pool: String,
    slot: usize,
    mut sd: discovery::mdns::MdnsSd,
) {
    loop {
        if sd.refresh(&shared.telemetry).await {
            shared.update(&pool, slot, sd.groups().cloned().collect());
        }
        crate::runtime::timer::sleep(sd.refresh_interval()).await;
    }
}

impl Shared {
    /// Every pool's active targets and dropped targets.
    fn lists(&self) -> (Vec<Rc<RefCell<TargetStatus>>>, Rc<Vec<DroppedTarget>>) {
        let pools = self.pools.borrow();
        let active = pools
            .iter()
            .flat_map(|p| p.running.iter().map(|r| r.status.clone()))
            .collect();
        let dropped = pools.iter().flat_map(|p| p.dropped.clone()).collect();
        (active, Rc::new(dropped))
    }

    /// Starts the pool of `job`: reads its discovery files once, syncs it, and starts one
    /// discovery task for the files and one per DNS and mDNS entry.
    fn add_pool(self: &Rc<Self>, job: &ScrapeConfig) {
        let mut sds: Vec<discovery::FileSd> = job
            .file_sd_configs
            .iter()
            .map(|c| discovery::FileSd::new(c.clone()))
            .collect();
        for sd in &mut sds {
            sd.refresh();
        }
        // Slot 0: the files' groups; then one slot per DNS and per mDNS config, filled by
        // their tasks (the first lookups run once the executor does).
        let mut slots = vec![sds.iter().flat_map(|s| s.groups()).cloned().collect()];
        slots.resize(
            1 + job.dns_sd_configs.len() + job.mdns_sd_configs.len(),
            Vec::new(),
        );
        let i = {
            let mut pools = self.pools.borrow_mut();
            pools.push(Pool {
                job: job.clone(),
                forced: Rc::new(RefCell::new(None)),
                running: Vec::new(),
                ending: Vec::new(),
                dropped: Vec::new(),
                discovered: slots,
                tasks: Vec::new(),
            });
            pools.len() - 1
        };
        self.sync(i);
        let name = job.job_name.clone();
        let mut tasks = Vec::new();
        if !sds.is_empty() {
            tasks.push(self.ex.spawn(watch_files(self.clone(), name.clone(), sds)));
        }
        let mut slot = 1;
        for c in &job.dns_sd_configs {
            let sd = discovery::dns::DnsSd::new(c.clone());
            tasks.push(
                self.ex
                    .spawn(watch_dns(self.clone(), name.clone(), slot, sd)),
            );
            slot += 1;
        }
        for c in &job.mdns_sd_configs {
            let sd = discovery::mdns::MdnsSd::new(c.clone());
            tasks.push(
                self.ex
                    .spawn(watch_mdns(self.clone(), name.clone(), slot, sd)),
            );
            slot += 1;
        }
        if let Some(p) = self.pools.borrow_mut().get_mut(i) {
            p.tasks = tasks;
        }
    }

    /// Replaces the groups of discovery slot `slot` of the pool of job `name`, syncs the pool
    /// and publishes the new target lists.
    fn update(&self, name: &str, slot: usize, groups: Vec<TargetGroup>) {
        let Some(i) = self
            .pools
            .borrow()
            .iter()
            .position(|p| p.job.job_name == name)
        else {
            return;
        };
        if let Some(s) = self
            .pools
            .borrow_mut()
            .get_mut(i)
            .and_then(|p| p.discovered.get_mut(slot))
        {
            *s = groups;
        }
        self.sync(i);
        let (active, dropped) = self.lists();
        (self.publish)(active, dropped);
    }

    /// Brings pool `i`'s targets in line with its static groups and its discovered groups.
    fn sync(&self, i: usize) {
        let mut pools = self.pools.borrow_mut();
        let Some(pool) = pools.get_mut(i) else {
            return;
        };
        let job = pool.job.clone();
        let discovered_groups = std::mem::take(&mut pool.discovered);
        let mut old: Vec<Option<Running>> = std::mem::take(&mut pool.running)
            .into_iter()
            .map(Some)
            .collect();
        let mut seen = std::collections::HashSet::new();
        pool.dropped.clear();
        let groups = job
            .static_configs
            .iter()
            .chain(discovered_groups.iter().flatten());
        for group in groups {
            for addr in &group.targets {
                let target = match populate(&job, &discovered(group, addr)) {
                    Ok(Populated::Active(t)) => *t,
                    Ok(Populated::Dropped(discovered_labels)) => {
                        pool.dropped.push(DroppedTarget {
                            job: job.job_name.clone(),
                            discovered_labels,
                        });
                        continue;
                    }
                    Err(e) => {
                        log::warn!("job {:?}: target {addr:?} dropped: {e}", job.job_name);
                        continue;
                    }
                };
                let key = format!("{}{}", target.labels, target.url());
                if !seen.insert(key.clone()) {
                    continue;
                }
                let kept = old
                    .iter_mut()
                    .find(|r| r.as_ref().is_some_and(|r| r.key == key))
                    .and_then(Option::take);
                if let Some(r) = kept {
                    // The same target: it keeps scraping; only what discovery said is new.
                    r.status.borrow_mut().target.discovered_labels = target.discovered_labels;
                    pool.running.push(r);
                    continue;
                }
                // Back before its staleness markers were written: they are not needed.
                pool.ending.retain(|(k, _)| *k != key);
                let status = Rc::new(RefCell::new(TargetStatus::new(target.clone())));
                let s = scraper::Scraper::new(
                    target,
                    self.storage.clone(),
                    self.telemetry.clone(),
                    status.clone(),
                )
                .with_forced_error(pool.forced.clone());
                let end = s.end_of_run();
                pool.running.push(Running {
                    key,
                    status,
                    task: self.ex.spawn(s.run()),
                    end,
                });
            }
        }
        pool.discovered = discovered_groups;
        pool.ending.retain(|(_, t)| !t.is_finished());
        for r in old.into_iter().flatten() {
            drop(r.task);
            pool.ending.push((r.key, self.ex.spawn(r.end.run())));
        }
        let limit = job.limits.target_limit;
        *pool.forced.borrow_mut() = (limit > 0 && pool.running.len() > limit).then(|| {
            format!(
                "target_limit exceeded (number of targets: {}, limit: {limit})",
                pool.running.len()
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;
    use crate::storage::flash::{FlashOptions, FlashStorage};

    #[test]
    fn targets_that_say_the_same_share_one_copy_and_unheld_copies_are_swept() {
        let m = |help: &str| MetricMetadata {
            kind: "counter",
            help: help.into(),
            unit: "".into(),
        };
        let (n1, e1) = shared_metadata("node_cpu_seconds_total", m("Seconds the CPUs spent."));
        let (n2, e2) = shared_metadata("node_cpu_seconds_total", m("Seconds the CPUs spent."));
        assert!(Rc::ptr_eq(&n1, &n2) && Rc::ptr_eq(&e1, &e2));
        let (_, other) = shared_metadata("node_cpu_seconds_total", m("Something else."));
        assert!(!Rc::ptr_eq(&e1, &other));
        // A target changing its texts at every scrape: the copies nobody holds are dropped.
        for i in 0..10_000 {
            let _ = shared_metadata(&format!("family_{i}"), m(&format!("text {i}")));
        }
        let pooled = METADATA_POOL.with(|p| {
            let p = p.borrow();
            p.names.len() + p.entries.len()
        });
        assert!(pooled < 5_000, "{pooled}");
        // What is held stays shared.
        let (_, again) = shared_metadata("node_cpu_seconds_total", m("Seconds the CPUs spent."));
        assert!(Rc::ptr_eq(&e1, &again));
    }

    #[test]
    fn reload_keeps_unchanged_jobs_running() {
        let two = "scrape_configs:\n  - job_name: a\n    static_configs: [{targets: ['h1:1']}]\n  - job_name: b\n    static_configs: [{targets: ['h2:1']}]\n";
        let cfg = parse_yaml(two, "t").unwrap();
        let ex = Rc::new(async_executor::LocalExecutor::new());
        let storage: Rc<dyn Storage> =
            Rc::new(FlashStorage::in_memory(FlashOptions::default()).unwrap());
        let publish: Publish = Rc::new(|_, _| {});
        let mut m = ScrapeManager::start(&ex, &cfg, storage, Rc::new(Telemetry::new(0.0)), publish);
        let before = m.status();
        // `a` unchanged, `b` changed (another interval), `c` new.
        let changed = "scrape_configs:\n  - job_name: a\n    static_configs: [{targets: ['h1:1']}]\n  - job_name: b\n    scrape_interval: 30s\n    static_configs: [{targets: ['h2:1']}]\n  - job_name: c\n    static_configs: [{targets: ['h3:1']}]\n";
        m.reload(&parse_yaml(changed, "t").unwrap());
        let after = m.status();
        assert_eq!(after.len(), 3);
        assert!(Rc::ptr_eq(&before[0], &after[0]), "job a kept its scraper");
        assert!(!Rc::ptr_eq(&before[1], &after[1]), "job b started afresh");
        assert_eq!(after[2].borrow().target.labels.get("job"), "c");
        // A job removed: its pool stops.
        m.reload(
            &parse_yaml(
                "scrape_configs:\n  - job_name: c\n    static_configs: [{targets: ['h3:1']}]\n",
                "t",
            )
            .unwrap(),
        );
        let last = m.status();
        assert_eq!(last.len(), 1);
        assert!(Rc::ptr_eq(&after[2], &last[0]));
    }

    #[test]
    fn sync_keeps_listed_targets_starts_new_ones_and_ends_the_rest() {
        let dir = std::env::temp_dir().join(format!("perch-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.json");
        std::fs::write(&file, r#"[{"targets": ["h1:1", "h2:1"]}]"#).unwrap();
        let y = format!(
            "scrape_configs:\n  - job_name: j\n    target_limit: 2\n    static_configs: [{{targets: ['h0:1']}}]\n    file_sd_configs: [{{files: ['{}']}}]\n",
            file.display()
        );
        let cfg = parse_yaml(&y, "t").unwrap();
        let ex = Rc::new(async_executor::LocalExecutor::new());
        let storage: Rc<dyn Storage> =
            Rc::new(FlashStorage::in_memory(FlashOptions::default()).unwrap());
        let published = Rc::new(RefCell::new(Vec::new()));
        let p = published.clone();
        let publish: Publish = Rc::new(move |t, _| *p.borrow_mut() = t);
        let m = ScrapeManager::start(&ex, &cfg, storage, Rc::new(Telemetry::new(0.0)), publish);
        let instances = |m: &ScrapeManager| -> Vec<String> {
            m.status()
                .iter()
                .map(|s| s.borrow().target.labels.get("instance").to_owned())
                .collect()
        };
        assert_eq!(instances(&m), vec!["h0:1", "h1:1", "h2:1"]);
        assert_eq!(published.borrow().len(), 3);
        let st = m.status();
        assert_eq!(
            st[1]
                .borrow()
                .target
                .discovered_labels
                .get("__meta_filepath"),
            file.display().to_string()
        );
        let forced = m.shared.pools.borrow()[0].forced.borrow().clone();
        assert_eq!(
            forced.as_deref(),
            Some("target_limit exceeded (number of targets: 3, limit: 2)")
        );
        // h2 goes, h3 comes, h1 is listed twice.
        std::fs::write(&file, r#"[{"targets": ["h1:1", "h3:1", "h1:1"]}]"#).unwrap();
        let mut sd = discovery::FileSd::new(cfg.scrape_configs[0].file_sd_configs[0].clone());
        sd.refresh();
        m.shared.update("j", 0, sd.groups().cloned().collect());
        assert_eq!(instances(&m), vec!["h0:1", "h1:1", "h3:1"]);
        assert!(
            Rc::ptr_eq(&m.status()[1], &st[1]),
            "h1 kept its task and state"
        );
        assert_eq!(m.shared.pools.borrow()[0].ending.len(), 1, "h2 ends");
        // Down to the limit: the forced error is lifted.
        std::fs::write(&file, "[]").unwrap();
        let mut sd = discovery::FileSd::new(cfg.scrape_configs[0].file_sd_configs[0].clone());
        sd.refresh();
        m.shared.update("j", 0, sd.groups().cloned().collect());
        assert_eq!(instances(&m), vec!["h0:1"]);
        assert!(m.shared.pools.borrow()[0].forced.borrow().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_body_of_exactly_body_size_limit_fails_as_in_2_42() {
        // 2.42 with a 400-byte body: `body_size_limit: 400B` fails, `401B` scrapes.
        assert_eq!(body_limit(400), 399);
        assert_eq!(body_limit(401), 400);
        assert_eq!(body_limit(0), DEFAULT_BODY_LIMIT);
        assert_eq!(
            client::FetchError::BodyTooLarge(399).to_string(),
            "body size limit exceeded"
        );
    }

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

    #[test]
    fn relabel_configs_rewrite_address_path_params_and_labels() {
        let y = r#"
scrape_configs:
  - job_name: blackbox
    params: {module: [http_2xx]}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:9115
      - source_labels: [env]
        regex: prod
        target_label: __metrics_path__
        replacement: /probe
      - source_labels: [__tmp_x, env]
        regex: ';(.*)'
        target_label: stage
        replacement: s-$1
      - source_labels: [__address__]
        regex: '([^:]+):.*'
        target_label: __tmp_host
      - {source_labels: [__scrape_interval__], target_label: every}
      - {regex: 'drop-me', action: drop, source_labels: [__param_target]}
    static_configs:
      - targets: [example.com, 'drop-me']
        labels: {env: prod}
      - targets: ['10.0.0.1:80']
        labels: {env: dev}
"#;
        let c = parse_yaml(y, "t").unwrap();
        let t = targets_of(&c.scrape_configs[0]);
        assert_eq!(t.len(), 2, "drop-me is dropped");
        let dropped = resolve_targets(&c.scrape_configs[0]).dropped;
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].job, "blackbox");
        // As 2.42 lists it: the discovered labels with the job's defaults, before relabeling.
        assert_eq!(
            dropped[0].discovered_labels.to_string(),
            r#"{__address__="drop-me", __metrics_path__="/metrics", __param_module="http_2xx", __scheme__="http", __scrape_interval__="1m", __scrape_timeout__="10s", env="prod", job="blackbox"}"#
        );
        assert_eq!(t[0].address, "127.0.0.1:9115");
        assert_eq!(
            t[0].url(),
            "http://127.0.0.1:9115/probe?module=http_2xx&target=example.com"
        );
        assert_eq!(
            t[0].labels.to_string(),
            r#"{env="prod", every="1m", instance="example.com", job="blackbox", stage="s-prod"}"#
        );
        assert_eq!(t[0].discovered_labels.get("__address__"), "example.com");
        assert_eq!(t[0].discovered_labels.get("__param_module"), "http_2xx");
        assert_eq!(
            t[1].url(),
            "http://127.0.0.1:9115/metrics?module=http_2xx&target=10.0.0.1%3A80"
        );
        assert_eq!(t[1].labels.get("instance"), "10.0.0.1:80");

        // Relabeling the schedule; a target left without an address is not scraped.
        let y = r#"
scrape_configs:
  - job_name: j
    relabel_configs:
      - {target_label: __scrape_interval__, replacement: 30s}
      - {target_label: __scrape_timeout__, replacement: 5s}
      - {source_labels: [gone], regex: yes, target_label: __address__, replacement: ''}
    static_configs:
      - targets: [h]
      - targets: [g]
        labels: {gone: yes}
"#;
        let c = parse_yaml(y, "t").unwrap();
        let t = targets_of(&c.scrape_configs[0]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].interval, Duration::from_secs(30));
        assert_eq!(t[0].timeout, Duration::from_secs(5));
        assert_eq!(t[0].labels.to_string(), r#"{instance="h:80", job="j"}"#);
        // One that cannot be scraped is not a dropped target either: 2.42 logs and skips it.
        assert!(resolve_targets(&c.scrape_configs[0]).dropped.is_empty());
        // Keep with no match drops every target.
        let y = "scrape_configs:\n  - job_name: j\n    relabel_configs: [{source_labels: [job], regex: other, action: keep}]\n    static_configs: [{targets: [h]}]\n";
        let t = resolve_targets(&parse_yaml(y, "t").unwrap().scrape_configs[0]);
        assert!(t.active.is_empty());
        assert_eq!(t.dropped.len(), 1);
    }
}
