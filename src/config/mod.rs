//! Flags and `prometheus.yml` → a validated [`Config`].
//!
//! Two stages, as in ripgrep: [`Flags::parse`] reads the command line (flag names as in
//! Prometheus), [`load_file`] / [`parse_yaml`] read the config file; [`Config`] is the validated
//! result that the rest of Perch sees. Every error names what is wrong (the flag, or the YAML
//! field with its line), so the process can exit before starting anything.
//!
//! The YAML follows Prometheus 2.42: `global` (scrape_interval, scrape_timeout,
//! evaluation_interval, external_labels) and `scrape_configs` (job_name, scrape_interval,
//! scrape_timeout, metrics_path, scheme (`http`, `https`), `tls_config` — see [`tls`] —, params, honor_labels, honor_timestamps, static_configs,
//! file_sd_configs, dns_sd_configs, Perch's mdns_sd_configs, relabel_configs, metric_relabel_configs — see [`relabel`] —, the limits
//! `sample_limit`, `label_limit`, `label_name_length_limit`, `label_value_length_limit`,
//! `body_size_limit`, `target_limit` ([`ScrapeLimits`]), and the credentials `basic_auth`,
//! `authorization`, `bearer_token(_file)` — see [`auth`]). File names in the config
//! (`password_file`, `file_sd_configs.files`, …) are resolved against the config file's
//! directory, as Prometheus does.
//! Unknown fields are errors; sections of Prometheus that Perch does not use yet (`rule_files`,
//! `alerting`, `remote_read`, `storage`, `tracing`) are accepted with one warning each, listed
//! in [`FileConfig::ignored_sections`]. `remote_write` is [`remote`]'s.

pub mod auth;
pub mod duration;
pub mod relabel;
pub mod remote;
pub mod tls;

pub use auth::Auth;
pub use duration::{format_duration, parse_base2_bytes, parse_duration, parse_size};
pub use relabel::{Action, RelabelConfig};
pub use remote::RemoteWriteConfig;
pub use tls::{TlsClient, TlsConfig};

use crate::model::{Labels, LabelsBuilder};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A config error: what is wrong, with the flag or field named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A command-line flag is unknown, missing its value, or has a bad value.
    Flag(String),
    /// The config file could not be read.
    Read { path: String, reason: String },
    /// The config file is not valid YAML or has an unknown field or bad value.
    Yaml { path: String, reason: String },
    /// The config is well-formed but not valid (e.g. a timeout longer than the interval).
    Invalid { path: String, reason: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Flag(m) => write!(f, "{m} (see perch --help)"),
            ConfigError::Read { path, reason } => {
                write!(f, "cannot read config file {path:?}: {reason}")
            }
            ConfigError::Yaml { path, reason } => {
                write!(f, "parsing YAML file {path:?}: {reason}")
            }
            ConfigError::Invalid { path, reason } => {
                write!(f, "invalid config file {path:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The command line, validated.
#[derive(Debug, Clone)]
pub struct Flags {
    pub config_file: Option<PathBuf>,
    pub storage_path: PathBuf,
    pub retention_time: Duration,
    pub retention_size: u64,
    pub flush_interval: Duration,
    pub listen_address: String,
    pub log_level: log::LevelFilter,
    pub lookback_delta: Duration,
    pub query_timeout: Duration,
    pub query_max_samples: usize,
    /// `/-/reload` and `/-/quit` are served (`--web.enable-lifecycle`).
    pub enable_lifecycle: bool,
    /// `/api/v1/admin/...` is served (`--web.enable-admin-api`).
    pub enable_admin_api: bool,
    /// The CORS origin regex as given (`--web.cors.origin`); anchored when compiled.
    pub cors_origin: String,
    /// Most samples one remote-read query may return (SAMPLES responses); 0 = no limit.
    pub remote_read_sample_limit: usize,
    /// Most bytes of one frame of a streamed remote-read response.
    pub remote_read_max_bytes_in_frame: usize,
    /// PromQL removes `__name__` at the end of a query, not at the operation that drops it
    /// (`--enable-feature=promql-delayed-name-removal`).
    pub promql_delayed_name_removal: bool,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            config_file: None,
            storage_path: PathBuf::from("data"),
            retention_time: Duration::from_secs(15 * 24 * 3600),
            retention_size: 512 << 20,
            flush_interval: Duration::from_secs(60),
            listen_address: "0.0.0.0:9090".into(),
            log_level: log::LevelFilter::Info,
            lookback_delta: Duration::from_secs(300),
            query_timeout: Duration::from_secs(120),
            query_max_samples: 50_000_000,
            enable_lifecycle: false,
            enable_admin_api: false,
            cors_origin: ".*".into(),
            remote_read_sample_limit: 50_000_000,
            remote_read_max_bytes_in_frame: 1_048_576,
            promql_delayed_name_removal: false,
        }
    }
}

/// The names `--enable-feature` takes. Prometheus's other feature names are refused: Perch has
/// none of those features.
pub const FEATURES: &[&str] = &["promql-delayed-name-removal"];

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the agent.
    Run(Flags),
    /// Print the help text and exit.
    Help,
    /// Print the version and exit.
    Version,
    /// `perch import FILE`: backfill an OpenMetrics file into the store.
    Import(Flags, PathBuf),
}

/// The flags, their value names and help, in the order `--help` lists them.
pub const FLAG_HELP: &[(&str, &str, &str)] = &[
    ("config.file", "FILE", "Prometheus configuration file. Without it: a built-in config that scrapes Perch's own /metrics every 15s (job \"perch\")."),
    ("storage.tsdb.path", "DIR", "Base path for metrics storage. [default: data/]"),
    ("storage.tsdb.retention.time", "DURATION", "How long to retain samples, counted back from the newest sample. [default: 15d]"),
    ("storage.tsdb.retention.size", "SIZE", "The most bytes the store keeps (B, KB, MB, GB, TB; powers of 1024). [default: 512MB]"),
    ("storage.flush-interval", "DURATION", "How often buffered samples are written out; a power cut loses at most this much. [default: 60s]"),
    ("web.listen-address", "HOST:PORT", "Address to listen on for the UI, API and telemetry. [default: 0.0.0.0:9090]"),
    ("query.lookback-delta", "DURATION", "How far back an instant vector selector looks for a sample. [default: 5m]"),
    ("query.timeout", "DURATION", "Maximum time a query may take before it is aborted. [default: 2m]"),
    ("query.max-samples", "N", "Maximum number of samples a single query can load into memory. [default: 50000000]"),
    ("web.enable-lifecycle", "", "Enable shutdown and reload via HTTP request (POST /-/quit, /-/reload). [default: off]"),
    ("web.enable-admin-api", "", "Enable the API endpoints for admin control actions (/api/v1/admin/...). [default: off]"),
    ("web.cors.origin", "REGEX", "Regex for CORS origin. It is fully anchored. [default: .*]"),
    ("storage.remote.read-sample-limit", "N", "Maximum overall number of samples to return via the remote read interface, in a single query. 0 means no limit. Ignored for streamed responses. [default: 50000000]"),
    ("storage.remote.read-max-bytes-in-frame", "N", "Maximum number of bytes in a single frame of a streamed remote read response. [default: 1048576]"),
    ("enable-feature", "NAME,...", "Enable experimental features (comma-separated; the flag may be repeated). Perch has one: promql-delayed-name-removal (remove __name__ at the end of a query, as Prometheus with the same flag). [default: none]"),
    ("board", "NAME", "Apply a board preset first (rpi-zero-2w, rpi3, rpi4, rpi5, generic; see boards/); flags given here win."),
    ("log.level", "LEVEL", "Only log messages with the given severity or above: debug, info, warn, error. [default: info]"),
];

/// The `--help` text.
pub fn help_text() -> String {
    let mut s = String::from(
        "perch: a Prometheus-compatible monitoring agent for small devices\n\n\
         Usage: perch [FLAGS]\n       perch import FILE [FLAGS]   backfill an OpenMetrics file (.zst too) into the store\n\nFlags:\n  -h, --help     Show this help.\n      --version  Show the version.\n",
    );
    for (name, value, help) in FLAG_HELP {
        if value.is_empty() {
            s.push_str(&format!("      --[no-]{name}\n          {help}\n"));
        } else {
            s.push_str(&format!("      --{name}={value}\n          {help}\n"));
        }
    }
    s
}

/// The board presets built into the binary (the files in `boards/`).
pub const BOARDS: &[(&str, &str)] = &[
    ("generic", include_str!("../../boards/generic.flags")),
    (
        "rpi-zero-2w",
        include_str!("../../boards/rpi-zero-2w.flags"),
    ),
    ("rpi3", include_str!("../../boards/rpi3.flags")),
    ("rpi4", include_str!("../../boards/rpi4.flags")),
    ("rpi5", include_str!("../../boards/rpi5.flags")),
];

/// The flags of a board preset, as command-line arguments.
pub fn board_args(name: &str) -> Result<Vec<String>, ConfigError> {
    let (_, text) = BOARDS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = BOARDS.iter().map(|(n, _)| *n).collect();
        ConfigError::Flag(format!(
            "--board: unknown board {name:?}; known: {}",
            names.join(", ")
        ))
    })?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

impl Flags {
    /// Parses the command line (without the program name). Flags may be given as
    /// `--name value` or `--name=value`, as with Prometheus. A `--board` preset is applied
    /// before the other flags, whatever its position.
    pub fn parse<I>(args: I) -> Result<Command, ConfigError>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString>,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        if args.first().is_some_and(|a| a == "import") {
            args.remove(0);
            // Every flag but --help/--version takes a value: the FILE is the first word that
            // is neither a flag nor a flag's value.
            let mut pos = None;
            let mut i = 0;
            while i < args.len() {
                let a = args[i].to_string_lossy();
                if a == "--help" || a == "-h" || a == "--version" || a.contains('=') {
                    i += 1;
                } else if a.starts_with('-') {
                    i += 2;
                } else {
                    pos = Some(i);
                    break;
                }
            }
            let pos = pos.ok_or_else(|| {
                ConfigError::Flag(
                    "import: missing FILE (perch import FILE [--storage.tsdb.path DIR])".into(),
                )
            })?;
            let file = PathBuf::from(args.remove(pos));
            return match Self::parse(args)? {
                Command::Run(f) => Ok(Command::Import(f, file)),
                other => Ok(other),
            };
        }
        let mut all: Vec<std::ffi::OsString> = Vec::new();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].to_string_lossy();
            if let Some(name) = a.strip_prefix("--board=") {
                all.extend(board_args(name)?.into_iter().map(Into::into));
            } else if a == "--board" {
                let name = args
                    .get(i + 1)
                    .ok_or_else(|| ConfigError::Flag("--board: missing value".into()))?;
                all.extend(
                    board_args(&name.to_string_lossy())?
                        .into_iter()
                        .map(Into::into),
                );
                i += 1;
            } else {
                rest.push(args[i].clone());
            }
            i += 1;
        }
        all.extend(rest);
        Self::parse_plain(all)
    }

    fn parse_plain(args: Vec<std::ffi::OsString>) -> Result<Command, ConfigError> {
        use lexopt::Arg;
        let mut f = Flags::default();
        let mut p = lexopt::Parser::from_args(args);
        let err = |e: lexopt::Error| ConfigError::Flag(e.to_string());
        while let Some(arg) = p.next().map_err(err)? {
            let name = match arg {
                Arg::Short('h') | Arg::Long("help") => return Ok(Command::Help),
                Arg::Long("version") => return Ok(Command::Version),
                Arg::Long(n) => n.to_owned(),
                Arg::Short(c) => return Err(ConfigError::Flag(format!("unknown flag -{c}"))),
                Arg::Value(v) => {
                    return Err(ConfigError::Flag(format!(
                        "unexpected argument {:?}",
                        v.to_string_lossy()
                    )))
                }
            };
            // Boolean flags, as kingpin reads them: `--x`, `--no-x`, `--x=true|false`.
            let (bool_name, negated) = match name.strip_prefix("no-") {
                Some(n) => (n.to_owned(), true),
                None => (name.clone(), false),
            };
            if let Some((n, _, _)) = FLAG_HELP
                .iter()
                .find(|(n, v, _)| *n == bool_name && v.is_empty())
            {
                let on = match p.optional_value() {
                    None => !negated,
                    Some(v) => match (v.to_str(), negated) {
                        (Some("true"), false) => true,
                        (Some("false"), false) => false,
                        _ => {
                            return Err(ConfigError::Flag(format!(
                                "--{name}: expected true or false, got {:?}",
                                v.to_string_lossy()
                            )))
                        }
                    },
                };
                match *n {
                    "web.enable-lifecycle" => f.enable_lifecycle = on,
                    "web.enable-admin-api" => f.enable_admin_api = on,
                    _ => unreachable!("boolean flag listed in FLAG_HELP but not handled"),
                }
                continue;
            }
            if !FLAG_HELP
                .iter()
                .any(|(n, v, _)| *n == name && !v.is_empty())
            {
                return Err(ConfigError::Flag(format!("unknown flag --{name}")));
            }
            let value = p.value().map_err(err)?;
            let value = value
                .into_string()
                .map_err(|_| ConfigError::Flag(format!("--{name}: value is not UTF-8")))?;
            let bad = |reason: String| ConfigError::Flag(format!("--{name}: {reason}"));
            match name.as_str() {
                "board" => {}
                "config.file" => f.config_file = Some(PathBuf::from(value)),
                "storage.tsdb.path" => f.storage_path = PathBuf::from(value),
                "storage.tsdb.retention.time" => {
                    f.retention_time = parse_duration(&value).map_err(bad)?
                }
                "storage.tsdb.retention.size" => {
                    f.retention_size = parse_size(&value).map_err(bad)?
                }
                "storage.flush-interval" => {
                    f.flush_interval = parse_duration(&value).map_err(bad)?;
                    if f.flush_interval.is_zero() {
                        return Err(bad("must be greater than 0".into()));
                    }
                }
                "web.listen-address" => f.listen_address = value,
                "web.cors.origin" => {
                    regex::Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| bad(format!("not a valid regex: {e}")))?;
                    f.cors_origin = value
                }
                "query.lookback-delta" => f.lookback_delta = parse_duration(&value).map_err(bad)?,
                "query.timeout" => f.query_timeout = parse_duration(&value).map_err(bad)?,
                "query.max-samples" => {
                    f.query_max_samples = value
                        .parse()
                        .map_err(|_| bad(format!("not a whole number: {value:?}")))?
                }
                "storage.remote.read-sample-limit" => {
                    f.remote_read_sample_limit = value
                        .parse()
                        .map_err(|_| bad(format!("not a whole number: {value:?}")))?
                }
                "storage.remote.read-max-bytes-in-frame" => {
                    f.remote_read_max_bytes_in_frame = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(format!("not a positive whole number: {value:?}")))?
                }
                "enable-feature" => {
                    // Comma-separated, and repeatable, as in Prometheus.
                    for feature in value.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                        match feature {
                            "promql-delayed-name-removal" => f.promql_delayed_name_removal = true,
                            _ => {
                                return Err(bad(format!(
                                    "unknown feature {feature:?}; Perch knows {}",
                                    FEATURES.join(", ")
                                )))
                            }
                        }
                    }
                }
                "log.level" => {
                    f.log_level = match value.as_str() {
                        "debug" => log::LevelFilter::Debug,
                        "info" => log::LevelFilter::Info,
                        "warn" => log::LevelFilter::Warn,
                        "error" => log::LevelFilter::Error,
                        _ => {
                            return Err(bad(format!(
                                "unknown level {value:?}; use debug, info, warn or error"
                            )))
                        }
                    }
                }
                _ => unreachable!("flag listed in FLAG_HELP but not handled"),
            }
        }
        Ok(Command::Run(f))
    }
}

// ---------------------------------------------------------------------------------------------
// The YAML file, as written.

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `body_size_limit`: a size string (`10MB`), or a plain `0`.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_norway::Value::deserialize(d)?;
    let s = match v {
        serde_norway::Value::String(s) => s,
        serde_norway::Value::Number(n) => n.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "body_size_limit: not a size: {other:?}"
            )))
        }
    };
    parse_base2_bytes(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    global: RawGlobal,
    #[serde(default)]
    scrape_configs: Option<Vec<RawScrapeConfig>>,
    rule_files: Option<serde_norway::Value>,
    alerting: Option<serde_norway::Value>,
    #[serde(default)]
    remote_write: Option<Vec<remote::RawRemoteWrite>>,
    remote_read: Option<serde_norway::Value>,
    storage: Option<serde_norway::Value>,
    tracing: Option<serde_norway::Value>,
    scrape_config_files: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    #[serde(default, deserialize_with = "de_duration")]
    scrape_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    evaluation_interval: Option<Duration>,
    #[serde(default)]
    external_labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "query_log_file")]
    _query_log_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScrapeConfig {
    job_name: String,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_timeout: Option<Duration>,
    metrics_path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    params: Option<BTreeMap<String, Vec<String>>>,
    honor_labels: Option<bool>,
    honor_timestamps: Option<bool>,
    #[serde(default)]
    static_configs: Option<Vec<RawStaticConfig>>,
    #[serde(default)]
    file_sd_configs: Option<Vec<RawFileSdConfig>>,
    #[serde(default)]
    dns_sd_configs: Option<Vec<RawDnsSdConfig>>,
    #[serde(default)]
    mdns_sd_configs: Option<Vec<RawMdnsSdConfig>>,
    #[serde(default)]
    relabel_configs: Option<Vec<Option<relabel::RawRelabelConfig>>>,
    #[serde(default)]
    metric_relabel_configs: Option<Vec<Option<relabel::RawRelabelConfig>>>,
    #[serde(default, deserialize_with = "de_size")]
    body_size_limit: Option<u64>,
    sample_limit: Option<u64>,
    target_limit: Option<u64>,
    label_limit: Option<u64>,
    label_name_length_limit: Option<u64>,
    label_value_length_limit: Option<u64>,
    basic_auth: Option<auth::RawBasicAuth>,
    authorization: Option<auth::RawAuthorization>,
    bearer_token: Option<String>,
    bearer_token_file: Option<String>,
    /// Accepted; Perch never follows redirects (a redirect fails the scrape with its status).
    follow_redirects: Option<bool>,
    /// Accepted; Perch speaks HTTP/1.1 only.
    enable_http2: Option<bool>,
    oauth2: Option<serde_norway::Value>,
    tls_config: Option<tls::RawTlsConfig>,
    proxy_url: Option<serde_norway::Value>,
    proxy_connect_header: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSdConfig {
    #[serde(default)]
    files: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    refresh_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsSdConfig {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    refresh_interval: Option<Duration>,
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMdnsSdConfig {
    service: Option<String>,
    domain: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    refresh_interval: Option<Duration>,
    interface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticConfig {
    #[serde(default)]
    targets: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------------
// The validated file.

/// The validated `global` section.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub evaluation_interval: Duration,
    pub external_labels: Labels,
}

/// One `static_configs` entry: targets (`host:port`) with their extra labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: Labels,
}

/// The limits of one scrape job, as 2.42 applies them; 0 means no limit (for the body, Perch's
/// own bound [`crate::scrape::DEFAULT_BODY_LIMIT`] still applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Most samples per scrape after `metric_relabel_configs`; more fail the scrape whole.
    pub sample_limit: usize,
    /// Most labels per series (`__name__` and the target's labels included).
    pub label_limit: usize,
    /// Longest label name, in bytes.
    pub label_name_length_limit: usize,
    /// Longest label value, in bytes.
    pub label_value_length_limit: usize,
    /// A body (decompressed) of this many bytes or more fails the scrape.
    pub body_size_limit: u64,
    /// Most targets of the job after relabeling; more fail all of them.
    pub target_limit: usize,
}

/// One `file_sd_configs` entry: file patterns (`*` and `?` in the file name), resolved against
/// the config file's directory, and how often they are read again whatever their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSdConfig {
    pub files: Vec<PathBuf>,
    pub refresh_interval: Duration,
}

/// The record type a `dns_sd_configs` entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSdType {
    Srv,
    A,
    Aaaa,
    Mx,
}

/// One `dns_sd_configs` entry, as 2.42: names to look up every `refresh_interval`, and for A,
/// AAAA and MX records the port to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSdConfig {
    pub names: Vec<String>,
    pub refresh_interval: Duration,
    pub kind: DnsSdType,
    /// Required for A, AAAA and MX; ignored for SRV (the record has the port).
    pub port: u16,
}

/// One `mdns_sd_configs` entry (a Perch extension): the DNS-SD service browsed with multicast
/// DNS every `refresh_interval` (see [`crate::scrape::discovery::mdns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsSdConfig {
    /// The service type, e.g. `_prometheus-http._tcp`.
    pub service: String,
    /// The domain, `local` unless set.
    pub domain: String,
    pub refresh_interval: Duration,
    /// The network interface the queries leave by (none: the route to 224.0.0.251 decides).
    pub interface: Option<String>,
}

/// One validated scrape job.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    pub job_name: String,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub metrics_path: String,
    pub scheme: String,
    /// The client for `https` targets: present when the job's scheme is `https` or it has a
    /// `tls_config` (see [`tls`]).
    pub tls: Option<TlsClient>,
    /// URL parameters, in name order, each value in the order written.
    pub params: Vec<(String, String)>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub static_configs: Vec<TargetGroup>,
    /// Targets read from files (see [`crate::scrape::discovery`]).
    pub file_sd_configs: Vec<FileSdConfig>,
    /// Targets from DNS lookups (see [`crate::scrape::discovery::dns`]).
    pub dns_sd_configs: Vec<DnsSdConfig>,
    /// Targets from multicast DNS (see [`crate::scrape::discovery::mdns`]).
    pub mdns_sd_configs: Vec<MdnsSdConfig>,
    pub limits: ScrapeLimits,
    /// The `Authorization` header to send, if any.
    pub auth: Option<Auth>,
    /// Applied to each target's discovered labels.
    pub relabel_configs: Vec<RelabelConfig>,
    /// Applied to each scraped series before it is stored.
    pub metric_relabel_configs: Vec<RelabelConfig>,
}

/// The validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub global: GlobalConfig,
    pub scrape_configs: Vec<ScrapeConfig>,
    /// Where to push samples (see [`crate::remote`]).
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Known Prometheus sections present in the file that Perch does not use.
    pub ignored_sections: Vec<&'static str>,
    /// The file's text as loaded (served by the status API).
    pub source: String,
}

/// Flags plus the config file: everything the runtime needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub flags: Flags,
    pub file: FileConfig,
}

/// The built-in config used without `--config.file`: Perch scrapes its own `/metrics` every 15 s.
pub fn default_yaml(listen_address: &str) -> String {
    let port = listen_address.rsplit(':').next().unwrap_or("9090");
    format!(
        "# Built-in default: Perch scrapes itself.\n\
         global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n\
         scrape_configs:\n  - job_name: perch\n    static_configs:\n      - targets: [\"localhost:{port}\"]\n"
    )
}

/// Reads and validates a config file.
pub fn load_file(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    parse_yaml(&text, &name)
}

/// A valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn check_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn to_labels(
    map: &BTreeMap<String, String>,
    what: &str,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Labels, ConfigError> {
    let mut b = LabelsBuilder::new();
    for (k, v) in map {
        if !check_label_name(k) {
            return Err(invalid(format!("{what}: {k:?} is not a valid label name")));
        }
        b.set(k, v);
    }
    Ok(b.build())
}

/// Checks a `file_sd_configs` file pattern as 2.42 does (a `.json`, `.yml` or `.yaml` name, a
/// `*` only in the last element), and what Perch's matcher supports (`*` and `?` in the file
/// name, no `[` classes).
fn check_file_sd_pattern(p: &str) -> Result<(), String> {
    let bad = || format!("path name {p:?} is not valid for file discovery");
    let (dir, file) = match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    };
    if dir.contains('*') {
        return Err(bad());
    }
    let ext = file.rsplit_once('.').map(|(_, e)| e).ok_or_else(bad)?;
    if !["json", "yml", "yaml", "JSON", "YML", "YAML"].contains(&ext) {
        return Err(bad());
    }
    if p.contains(['[', '\\']) || dir.contains('?') {
        return Err(format!(
            "path name {p:?}: Perch matches only '*' and '?' in the file name (no '[' classes, no patterns in directories)"
        ));
    }
    Ok(())
}

/// Parses and validates config text; `name` names the file in errors, and relative file names
/// in it are resolved against `name`'s directory.
pub fn parse_yaml(text: &str, name: &str) -> Result<FileConfig, ConfigError> {
    let dir = std::path::Path::new(name)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_norway::from_str::<Option<RawFile>>(text)
            .map_err(|e| ConfigError::Yaml {
                path: name.into(),
                reason: e.to_string(),
            })?
            .unwrap_or_default()
    };
    let invalid = |reason: String| ConfigError::Invalid {
        path: name.into(),
        reason,
    };
    let mut ignored = Vec::new();
    for (present, section) in [
        (raw.rule_files.is_some(), "rule_files"),
        (raw.alerting.is_some(), "alerting"),
        (raw.remote_read.is_some(), "remote_read"),
        (raw.storage.is_some(), "storage"),
        (raw.tracing.is_some(), "tracing"),
        (raw.scrape_config_files.is_some(), "scrape_config_files"),
    ] {
        if present {
            ignored.push(section);
        }
    }
    let g = raw.global;
    let scrape_interval = g.scrape_interval.unwrap_or(Duration::from_secs(60));
    let mut scrape_timeout = g.scrape_timeout.unwrap_or(Duration::from_secs(10));
    if g.scrape_timeout.is_none() && scrape_timeout > scrape_interval {
        scrape_timeout = scrape_interval;
    }
    if scrape_interval.is_zero() {
        return Err(invalid(
            "global.scrape_interval must be greater than 0".into(),
        ));
    }
    if scrape_timeout > scrape_interval {
        return Err(invalid(
            "global scrape timeout greater than scrape interval".into(),
        ));
    }
    let global = GlobalConfig {
        scrape_interval,
        scrape_timeout,
        evaluation_interval: g.evaluation_interval.unwrap_or(Duration::from_secs(60)),
        external_labels: to_labels(
            &g.external_labels.unwrap_or_default(),
            "global.external_labels",
            &invalid,
        )?,
    };
    let mut jobs: Vec<ScrapeConfig> = Vec::new();
    let mut system_roots = tls::SystemRoots::default();
    for (i, sc) in raw
        .scrape_configs
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let at = format!("scrape_configs[{i}]");
        if sc.job_name.is_empty() {
            return Err(invalid(format!("{at}.job_name: must not be empty")));
        }
        if jobs.iter().any(|j| j.job_name == sc.job_name) {
            return Err(invalid(format!(
                "{at}.job_name: found multiple scrape configs with job name {:?}",
                sc.job_name
            )));
        }
        let interval = sc.scrape_interval.unwrap_or(global.scrape_interval);
        if interval.is_zero() {
            return Err(invalid(format!(
                "{at}.scrape_interval: must be greater than 0"
            )));
        }
        let timeout = match sc.scrape_timeout {
            Some(t) => t,
            // As Prometheus: the global timeout, but never more than the job's interval.
            None => global.scrape_timeout.min(interval),
        };
        if timeout > interval {
            return Err(invalid(format!(
                "{at}.scrape_timeout: scrape timeout greater than scrape interval for scrape config with job name {:?}",
                sc.job_name
            )));
        }
        if timeout.is_zero() {
            return Err(invalid(format!(
                "{at}.scrape_timeout: must be greater than 0"
            )));
        }
        let scheme = sc.scheme.unwrap_or_else(|| "http".into());
        if scheme != "http" && scheme != "https" {
            return Err(invalid(format!(
                "{at}.scheme: {scheme:?} is not supported (\"http\" or \"https\")"
            )));
        }
        // A client for `https`, whether the job's scheme or one a target is relabeled to.
        let tls = match (sc.tls_config, scheme == "https") {
            (None, false) => None,
            (raw, _) => {
                // Errors name `tls_config`'s fields, or `scheme` when there is none.
                let field = if raw.is_some() {
                    "tls_config"
                } else {
                    "scheme"
                };
                let settings = raw
                    .unwrap_or_default()
                    .validate(&format!("{at}.tls_config"), dir)
                    .map_err(&invalid)?;
                let built = TlsClient::build(settings, &format!("{at}.{field}"), &mut system_roots);
                Some(built.map_err(&invalid)?)
            }
        };
        let metrics_path = sc.metrics_path.unwrap_or_else(|| "/metrics".into());
        if !metrics_path.starts_with('/') {
            return Err(invalid(format!(
                "{at}.metrics_path: {metrics_path:?} must start with '/'"
            )));
        }
        let mut params = Vec::new();
        for (k, vs) in sc.params.unwrap_or_default() {
            for v in vs {
                params.push((k.clone(), v));
            }
        }
        let mut groups = Vec::new();
        for (j, st) in sc
            .static_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let sat = format!("{at}.static_configs[{j}]");
            let targets = st.targets.unwrap_or_default();
            for t in &targets {
                validate_target(t).map_err(|r| invalid(format!("{sat}.targets: {r}")))?;
            }
            groups.push(TargetGroup {
                targets,
                labels: to_labels(
                    &st.labels.unwrap_or_default(),
                    &format!("{sat}.labels"),
                    &invalid,
                )?,
            });
        }
        let rules = |field: &str,
                     what: &str,
                     raw: Option<Vec<Option<relabel::RawRelabelConfig>>>| {
            let mut out = Vec::new();
            for (k, r) in raw.unwrap_or_default().into_iter().enumerate() {
                let r = r.ok_or_else(|| {
                    invalid(format!(
                        "{at}.{field}[{k}]: empty or null {what} relabeling rule in scrape config with job name {:?}",
                        sc.job_name
                    ))
                })?;
                out.push(RelabelConfig::from_raw(r).map_err(|e| {
                    invalid(format!("{at}.{field}[{k}]: {e} (job {:?})", sc.job_name))
                })?);
            }
            Ok::<_, ConfigError>(out)
        };
        let mut file_sd_configs = Vec::new();
        for (j, f) in sc
            .file_sd_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let fat = format!("{at}.file_sd_configs[{j}]");
            let files = f.files.unwrap_or_default();
            if files.is_empty() {
                return Err(invalid(format!(
                    "{fat}.files: file service discovery config must contain at least one path name"
                )));
            }
            let mut paths = Vec::new();
            for p in &files {
                check_file_sd_pattern(p).map_err(|e| invalid(format!("{fat}.files: {e}")))?;
                paths.push(auth::join_dir(dir, p));
            }
            let refresh_interval = f.refresh_interval.unwrap_or(Duration::from_secs(300));
            if refresh_interval.is_zero() {
                return Err(invalid(format!(
                    "{fat}.refresh_interval: must be greater than 0"
                )));
            }
            file_sd_configs.push(FileSdConfig {
                files: paths,
                refresh_interval,
            });
        }
        let mut dns_sd_configs = Vec::new();
        for (j, d) in sc
            .dns_sd_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let dat = format!("{at}.dns_sd_configs[{j}]");
            dns_sd_configs.push(validate_dns_sd(d).map_err(|e| invalid(format!("{dat}{e}")))?);
        }
        let mut mdns_sd_configs = Vec::new();
        for (j, m) in sc
            .mdns_sd_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let mat = format!("{at}.mdns_sd_configs[{j}]");
            mdns_sd_configs.push(validate_mdns_sd(m).map_err(|e| invalid(format!("{mat}{e}")))?);
        }
        auth::refuse_unsupported(
            &at,
            &[
                (sc.proxy_url.is_some(), "proxy_url"),
                (sc.proxy_connect_header.is_some(), "proxy_connect_header"),
                (sc.oauth2.is_some(), "oauth2"),
            ],
        )
        .map_err(&invalid)?;
        let _ = (sc.follow_redirects, sc.enable_http2);
        let auth = auth::RawAuth {
            basic_auth: sc.basic_auth,
            authorization: sc.authorization,
            bearer_token: sc.bearer_token,
            bearer_token_file: sc.bearer_token_file,
        }
        .validate(&at, dir)
        .map_err(&invalid)?;
        let limit = |v: Option<u64>| v.unwrap_or(0).min(usize::MAX as u64) as usize;
        let limits = ScrapeLimits {
            sample_limit: limit(sc.sample_limit),
            label_limit: limit(sc.label_limit),
            label_name_length_limit: limit(sc.label_name_length_limit),
            label_value_length_limit: limit(sc.label_value_length_limit),
            body_size_limit: sc.body_size_limit.unwrap_or(0),
            target_limit: limit(sc.target_limit),
        };
        let relabel_configs = rules("relabel_configs", "target", sc.relabel_configs)?;
        let metric_relabel_configs = rules(
            "metric_relabel_configs",
            "metric",
            sc.metric_relabel_configs,
        )?;
        jobs.push(ScrapeConfig {
            job_name: sc.job_name,
            scrape_interval: interval,
            scrape_timeout: timeout,
            metrics_path,
            scheme,
            tls,
            params,
            honor_labels: sc.honor_labels.unwrap_or(false),
            honor_timestamps: sc.honor_timestamps.unwrap_or(true),
            static_configs: groups,
            file_sd_configs,
            dns_sd_configs,
            mdns_sd_configs,
            limits,
            auth,
            relabel_configs,
            metric_relabel_configs,
        });
    }
    let mut remote_write: Vec<RemoteWriteConfig> = Vec::new();
    for (i, rw) in raw.remote_write.unwrap_or_default().into_iter().enumerate() {
        let c = rw
            .validate(&format!("remote_write[{i}]"), dir, &mut system_roots)
            .map_err(&invalid)?;
        if remote_write.iter().any(|o| o.name == c.name) {
            return Err(invalid(format!(
                "remote_write[{i}].name: found multiple remote write configs with name {:?}",
                c.name
            )));
        }
        remote_write.push(c);
    }
    Ok(FileConfig {
        global,
        scrape_configs: jobs,
        remote_write,
        ignored_sections: ignored,
        source: text.to_owned(),
    })
}

/// Checks a `dns_sd_configs` entry as 2.42 does; an error starts with the field (`.names: …`).
fn validate_dns_sd(d: RawDnsSdConfig) -> Result<DnsSdConfig, String> {
    let names = d.names.unwrap_or_default();
    if names.is_empty() {
        return Err(".names: DNS-SD config must contain at least one SRV record name".into());
    }
    if let Some(n) = names.iter().find(|n| n.is_empty() || n.len() > 253) {
        return Err(format!(".names: {n:?} is not a valid DNS name"));
    }
    let kind = d.kind.unwrap_or_else(|| "SRV".into());
    let kind = match kind.to_ascii_uppercase().as_str() {
        "SRV" => DnsSdType::Srv,
        "A" => DnsSdType::A,
        "AAAA" => DnsSdType::Aaaa,
        "MX" => DnsSdType::Mx,
        _ => return Err(format!(".type: invalid DNS-SD records type {kind}")),
    };
    let port = d.port.unwrap_or(0);
    if kind != DnsSdType::Srv && port == 0 {
        return Err(
            ".port: a port is required in DNS-SD configs for all record types except SRV".into(),
        );
    }
    let refresh_interval = d.refresh_interval.unwrap_or(Duration::from_secs(30));
    if refresh_interval.is_zero() {
        return Err(".refresh_interval: must be greater than 0".into());
    }
    Ok(DnsSdConfig {
        names,
        refresh_interval,
        kind,
        port,
    })
}

/// Checks an `mdns_sd_configs` entry; an error starts with the field (`.service: …`).
fn validate_mdns_sd(m: RawMdnsSdConfig) -> Result<MdnsSdConfig, String> {
    let service = m.service.unwrap_or_else(|| "_prometheus-http._tcp".into());
    // RFC 6763 §7: `_name._tcp` or `_name._udp`, the name 1 to 15 characters.
    let ok = match service.split_once('.') {
        Some((name, proto)) => {
            (proto == "_tcp" || proto == "_udp")
                && name.len() >= 2
                && name.len() <= 16
                && name.starts_with('_')
                && name[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }
        None => false,
    };
    if !ok {
        return Err(format!(
            ".service: {service:?} is not a DNS-SD service type (want e.g. \"_prometheus-http._tcp\")"
        ));
    }
    let domain = m.domain.unwrap_or_else(|| "local".into());
    let domain = domain.trim_end_matches('.').to_owned();
    if domain.is_empty()
        || domain.len() > 200
        || !domain
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.contains(char::is_whitespace))
    {
        return Err(format!(".domain: {domain:?} is not a valid domain"));
    }
    let refresh_interval = m.refresh_interval.unwrap_or(Duration::from_secs(30));
    if refresh_interval.is_zero() {
        return Err(".refresh_interval: must be greater than 0".into());
    }
    if let Some(i) = &m.interface {
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            return Err(format!(".interface: {i:?} is not a network interface name"));
        }
    }
    Ok(MdnsSdConfig {
        service,
        domain,
        refresh_interval,
        interface: m.interface,
    })
}

/// A target is `host[:port]`, without scheme or path (as Prometheus requires).
fn validate_target(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty target address".into());
    }
    if t.contains('/') || t.contains("://") {
        return Err(format!(
            "{t:?} is not a valid target address: give host:port without scheme or path"
        ));
    }
    if t.chars().any(|c| c.is_whitespace()) {
        return Err(format!("{t:?} is not a valid target address"));
    }
    Ok(())
}

impl Config {
    /// Loads the config file named by the flags, or the built-in default.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config_file {
            Some(p) => load_file(p)?,
            None => parse_yaml(&default_yaml(&flags.listen_address), "(built-in default)")?,
        };
        Ok(Config { flags, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Flags, ConfigError> {
        match Flags::parse(args.iter().copied())? {
            Command::Run(f) => Ok(f),
            c => panic!("unexpected {c:?}"),
        }
    }

    #[test]
    fn flags_in_both_forms() {
        let f = run(&[
            "--config.file",
            "p.yml",
            "--storage.tsdb.path=/tmp/d",
            "--storage.tsdb.retention.size",
            "300KB",
            "--storage.tsdb.retention.time=100y",
            "--web.listen-address",
            "127.0.0.1:1234",
            "--storage.flush-interval",
            "5s",
        ])
        .unwrap();
        assert_eq!(f.config_file, Some(PathBuf::from("p.yml")));
        assert_eq!(f.storage_path, PathBuf::from("/tmp/d"));
        assert_eq!(f.retention_size, 300 * 1024);
        assert_eq!(f.listen_address, "127.0.0.1:1234");
        assert_eq!(f.flush_interval, Duration::from_secs(5));
    }

    #[test]
    fn boolean_and_cors_flags() {
        let f = run(&["--web.enable-lifecycle", "--web.enable-admin-api=true"]).unwrap();
        assert!(f.enable_lifecycle && f.enable_admin_api);
        assert_eq!(f.cors_origin, ".*");
        let f = run(&["--web.enable-lifecycle", "--no-web.enable-lifecycle"]).unwrap();
        assert!(!f.enable_lifecycle);
        let f = run(&[
            "--web.enable-admin-api=false",
            "--web.cors.origin",
            "https?://x",
        ])
        .unwrap();
        assert!(!f.enable_admin_api);
        assert_eq!(f.cors_origin, "https?://x");
        assert!(run(&["--web.enable-lifecycle=yes"]).is_err());
        assert!(run(&["--web.cors.origin", "("]).is_err());
        assert!(run(&["--no-web.listen-address"]).is_err());
    }

    #[test]
    fn enable_feature_turns_on_delayed_name_removal() {
        assert!(!run(&[]).unwrap().promql_delayed_name_removal);
        for args in [
            &["--enable-feature=promql-delayed-name-removal"][..],
            &["--enable-feature", "promql-delayed-name-removal"][..],
            &["--enable-feature=promql-delayed-name-removal,"][..],
            &[
                "--enable-feature",
                "promql-delayed-name-removal",
                "--enable-feature=promql-delayed-name-removal",
            ][..],
        ] {
            assert!(run(args).unwrap().promql_delayed_name_removal, "{args:?}");
        }
        // An empty list enables nothing.
        assert!(
            !run(&["--enable-feature="])
                .unwrap()
                .promql_delayed_name_removal
        );
    }

    #[test]
    fn enable_feature_refuses_other_features() {
        for args in [
            &["--enable-feature=exemplar-storage"][..],
            &["--enable-feature=promql-delayed-name-removal,native-histograms"][..],
            &["--enable-feature", "PROMQL-DELAYED-NAME-REMOVAL"][..],
        ] {
            let e = run(args).unwrap_err().to_string();
            assert!(e.contains("--enable-feature: unknown feature"), "{e}");
            assert!(e.contains("promql-delayed-name-removal"), "{e}");
        }
        let e = run(&["--enable-feature"]).unwrap_err().to_string();
        assert!(e.contains("enable-feature"), "{e}");
        assert!(run(&["--no-enable-feature"]).is_err());
    }

    #[test]
    fn board_presets_apply_first() {
        let f = run(&["--storage.flush-interval=5s", "--board", "rpi-zero-2w"]).unwrap();
        assert_eq!(f.retention_size, 256 << 20);
        assert_eq!(f.flush_interval, Duration::from_secs(5));
        for (name, _) in BOARDS {
            board_args(name).unwrap();
            run(&["--board", name]).unwrap();
        }
        assert!(run(&["--board=nope"])
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn import_takes_a_file_anywhere() {
        for args in [
            &["import", "x.om", "--storage.tsdb.path", "d"][..],
            &["import", "--storage.tsdb.path", "d", "x.om"][..],
            &["import", "--storage.tsdb.path=d", "x.om"][..],
        ] {
            match Flags::parse(args.iter().copied()).unwrap() {
                Command::Import(f, file) => {
                    assert_eq!(file, PathBuf::from("x.om"));
                    assert_eq!(f.storage_path, PathBuf::from("d"));
                }
                c => panic!("{c:?}"),
            }
        }
        assert!(Flags::parse(["import"]).is_err());
    }

    #[test]
    fn bad_flags_are_named() {
        let e = run(&["--nope", "1"]).unwrap_err().to_string();
        assert!(e.contains("--nope"), "{e}");
        let e = run(&["--storage.tsdb.retention.time", "1x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--storage.tsdb.retention.time"), "{e}");
        assert!(matches!(Flags::parse(["--help"]), Ok(Command::Help)));
    }

    #[test]
    fn full_config() {
        let y = r#"
global:
  scrape_interval: 10s
  external_labels: {site: a}
rule_files: []
scrape_configs:
  - job_name: node
    scrape_interval: 5s
    params: {module: [x, y]}
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:9100", "localhost:9101"]
        labels: {env: lab}
  - job_name: other
"#;
        let c = parse_yaml(y, "t.yml").unwrap();
        assert_eq!(c.global.scrape_interval, Duration::from_secs(10));
        assert_eq!(c.global.scrape_timeout, Duration::from_secs(10));
        assert_eq!(c.global.external_labels.get("site"), "a");
        assert_eq!(c.ignored_sections, vec!["rule_files"]);
        let j = &c.scrape_configs[0];
        assert_eq!(j.scrape_interval, Duration::from_secs(5));
        assert_eq!(j.scrape_timeout, Duration::from_secs(5));
        assert_eq!(
            j.params,
            vec![("module".into(), "x".into()), ("module".into(), "y".into())]
        );
        assert!(j.honor_labels && j.honor_timestamps);
        assert_eq!(j.static_configs[0].targets.len(), 2);
        assert_eq!(j.static_configs[0].labels.get("env"), "lab");
        assert_eq!(c.scrape_configs[1].scrape_interval, Duration::from_secs(10));
        assert_eq!(c.scrape_configs[1].metrics_path, "/metrics");
    }

    #[test]
    fn empty_file_is_valid() {
        let c = parse_yaml("", "e.yml").unwrap();
        assert!(c.scrape_configs.is_empty());
        assert_eq!(c.global.scrape_interval, Duration::from_secs(60));
    }

    #[test]
    fn unknown_field_is_named_with_line() {
        let y = "global:\n  scrape_interval: 10s\nscrape_configs:\n  - job_name: x\n    scrape_intervall: 5s\n";
        let e = parse_yaml(y, "t.yml").unwrap_err().to_string();
        assert!(e.contains("scrape_intervall"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse_yaml("global:\n  scrape_interval: 10q\n", "t.yml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scrape_interval") || e.contains("10q"), "{e}");
        let e = parse_yaml(
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
            "t.yml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("scrape_timeout"), "{e}");
        let e = parse_yaml(
            "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
            "t.yml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("multiple"), "{e}");
        let e = parse_yaml(
            "scrape_configs:\n  - job_name: a\n    static_configs: [{targets: ['http://x:1/m']}]\n",
            "t.yml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("targets"), "{e}");
    }

    #[test]
    fn relabel_configs_are_validated_with_field_and_job() {
        let y = "scrape_configs:\n  - job_name: node\n    relabel_configs:\n      - {source_labels: [a], target_label: b}\n    metric_relabel_configs:\n      - {source_labels: [__name__], regex: 'go_.*', action: drop}\n      - {action: replace}\n";
        let e = parse_yaml(y, "t.yml").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid config file \"t.yml\": scrape_configs[0].metric_relabel_configs[1]: relabel configuration for replace action requires 'target_label' value (job \"node\")"
        );
        let y = "scrape_configs:\n  - job_name: node\n    relabel_configs:\n      -\n";
        let e = parse_yaml(y, "t.yml").unwrap_err().to_string();
        assert!(
            e.contains("relabel_configs[0]: empty or null target relabeling rule"),
            "{e}"
        );
        let y = "scrape_configs:\n  - job_name: node\n    relabel_configs:\n      - {source_labels: [a], target_label: b}\n    metric_relabel_configs:\n      - {source_labels: [__name__], regex: 'go_.*', action: drop}\n";
        let j = &parse_yaml(y, "t.yml").unwrap().scrape_configs[0];
        assert_eq!(j.relabel_configs[0].action, Action::Replace);
        assert_eq!(j.metric_relabel_configs[0].action, Action::Drop);
        assert_eq!(j.metric_relabel_configs[0].regex_source, "go_.*");
    }

    #[test]
    fn limits_auth_and_file_sd() {
        let y = r#"
scrape_configs:
  - job_name: a
    sample_limit: 100
    label_limit: 30
    label_name_length_limit: 64
    label_value_length_limit: 256
    body_size_limit: 10MB
    target_limit: 5
    basic_auth: {username: u, password_file: secrets/pw}
    follow_redirects: false
    file_sd_configs:
      - files: ['sd/*.json', '/abs/t?.yml']
      - files: [x.yaml]
        refresh_interval: 30s
  - job_name: b
    body_size_limit: 0
    bearer_token: t
"#;
        let c = parse_yaml(y, "/etc/perch/prometheus.yml").unwrap();
        let a = &c.scrape_configs[0];
        assert_eq!(
            a.limits,
            ScrapeLimits {
                sample_limit: 100,
                label_limit: 30,
                label_name_length_limit: 64,
                label_value_length_limit: 256,
                body_size_limit: 10 << 20,
                target_limit: 5,
            }
        );
        assert_eq!(
            a.auth,
            Some(Auth::Basic {
                username: "u".into(),
                password: auth::Secret::File("/etc/perch/secrets/pw".into())
            })
        );
        assert_eq!(
            a.file_sd_configs,
            vec![
                FileSdConfig {
                    files: vec!["/etc/perch/sd/*.json".into(), "/abs/t?.yml".into()],
                    refresh_interval: Duration::from_secs(300)
                },
                FileSdConfig {
                    files: vec!["/etc/perch/x.yaml".into()],
                    refresh_interval: Duration::from_secs(30)
                }
            ]
        );
        let b = &c.scrape_configs[1];
        assert_eq!(b.limits, ScrapeLimits::default());
        assert_eq!(b.auth.as_ref().unwrap().header().unwrap(), "Bearer t");
    }

    #[test]
    fn unsupported_and_bad_http_and_sd_fields_are_named() {
        for (field, want) in [
            ("tls_config: {cert_file: c.pem}", "scrape_configs[0].tls_config: exactly one of key or key_file must be configured when a client certificate is configured"),
            ("tls_config: {ca: x, ca_file: y}", "scrape_configs[0].tls_config: at most one of ca and ca_file must be configured"),
            ("tls_config: {min_version: TLS9}", "scrape_configs[0].tls_config.min_version: unknown TLS version: TLS9"),
            ("tls_config: {ca_files: x}", "unknown field `ca_files`"),
            ("proxy_url: http://p:3128", "scrape_configs[0].proxy_url: not supported by Perch"),
            ("oauth2: {client_id: x}", "scrape_configs[0].oauth2: not supported by Perch"),
            ("scheme: ftp", "scrape_configs[0].scheme: \"ftp\" is not supported (\"http\" or \"https\")"),
            ("bearer_token: a\n    bearer_token_file: b", "scrape_configs[0]: at most one of bearer_token & bearer_token_file must be configured"),
            ("body_size_limit: 100", "units: unknown unit  in 100"),
            ("sample_limit: -1", "sample_limit"),
            ("file_sd_configs: [{files: []}]", "scrape_configs[0].file_sd_configs[0].files: file service discovery config must contain at least one path name"),
            ("file_sd_configs: [{files: ['t.txt']}]", "path name \"t.txt\" is not valid for file discovery"),
            ("file_sd_configs: [{files: ['*/t.json']}]", "path name \"*/t.json\" is not valid for file discovery"),
            ("file_sd_configs: [{files: ['t[0-9].json']}]", "Perch matches only '*' and '?'"),
            ("file_sd_configs: [{files: ['t.json'], bogus: 1}]", "unknown field `bogus`"),
        ] {
            let y = format!("scrape_configs:\n  - job_name: a\n    {field}\n");
            let e = parse_yaml(&y, "t.yml").unwrap_err().to_string();
            assert!(e.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn dns_and_mdns_sd_as_2_42_and_perch() {
        let y = r#"
scrape_configs:
  - job_name: a
    dns_sd_configs:
      - names: [_node._tcp.lan]
      - names: [gw.lan, nas.lan]
        type: a
        port: 9100
        refresh_interval: 1m
    mdns_sd_configs:
      - {}
      - service: _node-exporter._tcp
        domain: local.
        interface: eth1
        refresh_interval: 10s
"#;
        let c = parse_yaml(y, "t.yml").unwrap();
        let j = &c.scrape_configs[0];
        assert_eq!(
            j.dns_sd_configs,
            vec![
                DnsSdConfig {
                    names: vec!["_node._tcp.lan".into()],
                    refresh_interval: Duration::from_secs(30),
                    kind: DnsSdType::Srv,
                    port: 0
                },
                DnsSdConfig {
                    names: vec!["gw.lan".into(), "nas.lan".into()],
                    refresh_interval: Duration::from_secs(60),
                    kind: DnsSdType::A,
                    port: 9100
                }
            ]
        );
        assert_eq!(
            j.mdns_sd_configs,
            vec![
                MdnsSdConfig {
                    service: "_prometheus-http._tcp".into(),
                    domain: "local".into(),
                    refresh_interval: Duration::from_secs(30),
                    interface: None
                },
                MdnsSdConfig {
                    service: "_node-exporter._tcp".into(),
                    domain: "local".into(),
                    refresh_interval: Duration::from_secs(10),
                    interface: Some("eth1".into())
                }
            ]
        );
        for (field, want) in [
            ("dns_sd_configs: [{names: []}]", "scrape_configs[0].dns_sd_configs[0].names: DNS-SD config must contain at least one SRV record name"),
            ("dns_sd_configs: [{names: [x], type: A}]", "scrape_configs[0].dns_sd_configs[0].port: a port is required in DNS-SD configs for all record types except SRV"),
            ("dns_sd_configs: [{names: [x], type: TXT}]", "scrape_configs[0].dns_sd_configs[0].type: invalid DNS-SD records type TXT"),
            ("dns_sd_configs: [{names: [x], port: 70000}]", "port"),
            ("dns_sd_configs: [{names: [x], bogus: 1}]", "unknown field `bogus`"),
            ("mdns_sd_configs: [{service: http}]", "scrape_configs[0].mdns_sd_configs[0].service: \"http\" is not a DNS-SD service type"),
            ("mdns_sd_configs: [{domain: ''}]", "scrape_configs[0].mdns_sd_configs[0].domain"),
            ("mdns_sd_configs: [{refresh_interval: 0s}]", "refresh_interval: must be greater than 0"),
            ("mdns_sd_configs: [{interface: 'a/b'}]", "is not a network interface name"),
            ("mdns_sd_configs: [{names: [x]}]", "unknown field `names`"),
        ] {
            let y = format!("scrape_configs:\n  - job_name: a\n    {field}\n");
            let e = parse_yaml(&y, "t.yml").unwrap_err().to_string();
            assert!(e.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn builtin_default_scrapes_itself() {
        let c = parse_yaml(&default_yaml("0.0.0.0:9090"), "d").unwrap();
        assert_eq!(c.scrape_configs[0].job_name, "perch");
        assert_eq!(c.scrape_configs[0].scrape_interval, Duration::from_secs(15));
        assert_eq!(
            c.scrape_configs[0].static_configs[0].targets,
            vec!["localhost:9090"]
        );
    }
}
