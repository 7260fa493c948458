//! The `remote_write` section: Prometheus 2.42's fields, validated into [`RemoteWriteConfig`].
//!
//! Understood: `url` (`http://` or `https://`), `tls_config` (the fields a scrape job has, see
//! [`super::tls`]: the client is built here, at load, files read and errors naming the field;
//! it is used for an `https` URL), `name`, `remote_timeout`, `headers`, `write_relabel_configs`, `basic_auth` (`username`, `password`/`password_file`),
//! `authorization` (`type`, `credentials`/`credentials_file`), `bearer_token(_file)` (checked
//! by [`super::auth`], as for scrapes; secret files are read once, at load time), and in
//! `queue_config`: `capacity`, `max_samples_per_send`, `batch_send_deadline`, `min_backoff`,
//! `max_backoff`, `retry_on_http_429`, plus Perch's own `backfill_samples_per_second` (the
//! rate at which a gap is sent after an outage). Accepted and ignored, with no effect on what
//! is sent: `min_shards`/`max_shards` (one sender), `metadata_config`, `send_exemplars`,
//! `send_native_histograms`, `follow_redirects`, `enable_http2`. Refused with a clear error:
//! `proxy_url`, `oauth2`, `sigv4`, `azuread`; in a build without the `tls` feature, an `https`
//! URL and `tls_config` too ([`super::tls::NO_TLS`]).

use super::auth::{RawAuth, RawAuthorization, RawBasicAuth};
use super::relabel::{RawRelabelConfig, RelabelConfig};
use super::tls::{RawTlsConfig, SystemRoots, TlsClient};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    super::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoteWrite {
    url: String,
    name: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    remote_timeout: Option<Duration>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    write_relabel_configs: Option<Vec<Option<RawRelabelConfig>>>,
    basic_auth: Option<RawBasicAuth>,
    authorization: Option<RawAuthorization>,
    bearer_token: Option<String>,
    bearer_token_file: Option<String>,
    #[serde(default)]
    queue_config: Option<RawQueue>,
    metadata_config: Option<serde_norway::Value>,
    send_exemplars: Option<bool>,
    send_native_histograms: Option<bool>,
    follow_redirects: Option<bool>,
    enable_http2: Option<bool>,
    tls_config: Option<RawTlsConfig>,
    proxy_url: Option<serde_norway::Value>,
    oauth2: Option<serde_norway::Value>,
    sigv4: Option<serde_norway::Value>,
    azuread: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    capacity: Option<usize>,
    max_shards: Option<usize>,
    min_shards: Option<usize>,
    max_samples_per_send: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    batch_send_deadline: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    min_backoff: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    max_backoff: Option<Duration>,
    retry_on_http_429: Option<bool>,
    backfill_samples_per_second: Option<u64>,
}

/// One validated `remote_write` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteConfig {
    /// The URL as written (for logs, metrics and the status page).
    pub url: String,
    /// `host:port` and the path with query, from the URL.
    pub host: String,
    pub path: String,
    /// The TLS client for an `https` URL, built at load from `tls_config`; `None`: plain http.
    pub tls: Option<TlsClient>,
    /// `name`, or a short hash of the URL as Prometheus derives it when unnamed.
    pub name: String,
    pub remote_timeout: Duration,
    /// Extra headers, in name order.
    pub headers: Vec<(String, String)>,
    pub write_relabel_configs: Vec<RelabelConfig>,
    /// The `Authorization` header value, if any (basic or bearer, files read at load time).
    pub authorization: Option<String>,
    /// Most samples buffered in memory for live sending.
    pub capacity: usize,
    pub max_samples_per_send: usize,
    pub batch_send_deadline: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub retry_on_http_429: bool,
    /// How fast a gap left by an outage is sent, samples per second.
    pub backfill_samples_per_second: u64,
}

impl RawRemoteWrite {
    /// Validates one entry; `at` names it in errors (`remote_write[0]`), `dir` is where
    /// relative file names are resolved (the config file's directory); `system` holds the
    /// system's CA certificates once read.
    pub(super) fn validate(
        self,
        at: &str,
        dir: &std::path::Path,
        system: &mut SystemRoots,
    ) -> Result<RemoteWriteConfig, String> {
        super::auth::refuse_unsupported(
            at,
            &[
                (self.proxy_url.is_some(), "proxy_url"),
                (self.oauth2.is_some(), "oauth2"),
                (self.sigv4.is_some(), "sigv4"),
                (self.azuread.is_some(), "azuread"),
            ],
        )?;
        let _ = (
            self.metadata_config,
            self.send_exemplars,
            self.send_native_histograms,
            self.follow_redirects,
            self.enable_http2,
        );
        let (https, rest) = match self.url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "{at}.url: {:?} is not an http:// or https:// URL",
                    self.url
                ))
            }
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!(
                "{at}.url: {:?} needs a host (and credentials go in basic_auth)",
                self.url
            ));
        }
        let host = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']')
        {
            host.to_owned()
        } else {
            format!("{host}:{}", if https { 443 } else { 80 })
        };
        // Built for an `https` URL, or to check a `tls_config` an http URL does not use (as
        // 2.42 does); errors name `tls_config`'s fields, or `url` when there is none.
        let tls = match (self.tls_config, https) {
            (None, false) => None,
            (raw, _) => {
                let field = if raw.is_some() { "tls_config" } else { "url" };
                let settings = raw
                    .unwrap_or_default()
                    .validate(&format!("{at}.tls_config"), dir)?;
                let client = TlsClient::build(settings, &format!("{at}.{field}"), system)?;
                https.then_some(client)
            }
        };
        // Secret files are read once, here: the sender keeps the header for its lifetime.
        let authorization = RawAuth {
            basic_auth: self.basic_auth,
            authorization: self.authorization,
            bearer_token: self.bearer_token,
            bearer_token_file: self.bearer_token_file,
        }
        .validate(at, dir)?
        .map(|a| a.header().map_err(|e| format!("{at}: {e}")))
        .transpose()?;
        let mut headers = Vec::new();
        for (k, v) in self.headers.unwrap_or_default() {
            let reserved = [
                "authorization",
                "host",
                "content-encoding",
                "content-length",
                "content-type",
                "user-agent",
                "connection",
                "keep-alive",
                "proxy-authenticate",
                "proxy-authorization",
                "www-authenticate",
                "accept-encoding",
                "x-prometheus-remote-write-version",
                "x-prometheus-scrape-timeout-seconds",
            ];
            if reserved.contains(&k.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "{at}.headers: {k} is a reserved header. It must not be changed"
                ));
            }
            if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                return Err(format!("{at}.headers: {k:?} is not a valid header"));
            }
            headers.push((k, v));
        }
        let mut write_relabel_configs = Vec::new();
        for (k, r) in self
            .write_relabel_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let r = r.ok_or_else(|| {
                format!("{at}.write_relabel_configs[{k}]: empty or null relabeling rule in remote write config")
            })?;
            write_relabel_configs.push(
                RelabelConfig::from_raw(r)
                    .map_err(|e| format!("{at}.write_relabel_configs[{k}]: {e}"))?,
            );
        }
        let q = self.queue_config.unwrap_or_default();
        let _ = (q.min_shards, q.max_shards);
        let name = match self.name {
            Some(n) if !n.is_empty() => n,
            _ => {
                // A short, stable name from the URL, as Prometheus shows unnamed queues.
                use md5::{Digest, Md5};
                let h = Md5::digest(self.url.as_bytes());
                h[..3].iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        let positive = |v: Option<usize>, d: usize, f: &str| -> Result<usize, String> {
            match v {
                Some(0) => Err(format!("{at}.queue_config.{f}: must be greater than 0")),
                Some(n) => Ok(n),
                None => Ok(d),
            }
        };
        Ok(RemoteWriteConfig {
            url: self.url.clone(),
            host,
            path: path.to_owned(),
            tls,
            name,
            remote_timeout: self.remote_timeout.unwrap_or(Duration::from_secs(30)),
            headers,
            write_relabel_configs,
            authorization,
            capacity: positive(q.capacity, 2500, "capacity")?,
            max_samples_per_send: positive(q.max_samples_per_send, 500, "max_samples_per_send")?,
            batch_send_deadline: q.batch_send_deadline.unwrap_or(Duration::from_secs(5)),
            min_backoff: q.min_backoff.unwrap_or(Duration::from_millis(30)),
            max_backoff: q.max_backoff.unwrap_or(Duration::from_secs(5)),
            retry_on_http_429: q.retry_on_http_429.unwrap_or(false),
            backfill_samples_per_second: q.backfill_samples_per_second.unwrap_or(20_000).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry, its relative file names resolved in `tests/data/tls/`.
    fn parse(y: &str) -> Result<RemoteWriteConfig, String> {
        let raw: RawRemoteWrite = serde_norway::from_str(y).map_err(|e| e.to_string())?;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        raw.validate("remote_write[0]", &dir, &mut SystemRoots::default())
    }

    #[test]
    fn urls_auth_and_defaults() {
        let c = parse(
            "url: http://central:9090/api/v1/write\nbasic_auth: {username: u, password: p}\n",
        )
        .unwrap();
        assert_eq!(c.host, "central:9090");
        assert_eq!(c.path, "/api/v1/write");
        assert_eq!(c.authorization.as_deref(), Some("Basic dTpw"));
        assert_eq!(c.max_samples_per_send, 500);
        assert_eq!(c.name.len(), 6);
        let c =
            parse("url: http://central/w\nauthorization: {credentials: tok}\nname: hq\n").unwrap();
        assert_eq!(c.host, "central:80");
        assert_eq!(c.authorization.as_deref(), Some("Bearer tok"));
        assert_eq!(c.name, "hq");
    }

    /// Each entry is refused with an error that says the words given.
    fn assert_refused<const N: usize>(cases: [(&str, &str); N]) {
        for (y, want) in cases {
            let e = parse(y).unwrap_err();
            assert!(e.contains(want), "{y}: {e}");
        }
    }

    #[test]
    fn clear_errors() {
        assert_refused([
            ("url: ftp://x/w\n", "is not an http:// or https:// URL"),
            (
                "url: http://x/w\nproxy_url: http://p\n",
                "proxy_url: not supported",
            ),
            (
                "url: http://x/w\nheaders: {Content-Type: x}\n",
                "reserved header",
            ),
            (
                "url: http://x/w\nqueue_config: {capacity: 0}\n",
                "capacity: must be greater than 0",
            ),
            ("url: http://x/w\nbogus: 1\n", "unknown field `bogus`"),
            (
                "url: http://x/w\nbasic_auth: {username: a}\nbearer_token: b\n",
                "at most one of",
            ),
        ]);
    }

    #[test]
    #[cfg(feature = "tls")]
    fn https_with_tls_config() {
        let c = parse("url: https://central/api/v1/write\ntls_config: {ca_file: ca.crt, server_name: localhost, min_version: TLS13}\n").unwrap();
        assert_eq!(c.host, "central:443");
        let tls = c.tls.expect("a TLS client for https");
        assert_eq!(tls.settings.server_name.as_deref(), Some("localhost"));
        assert!(tls.settings.tls13_only);
        let c = parse("url: https://[::1]:8443/w\ntls_config: {ca_file: ca.crt, cert_file: client.crt, key_file: client.key}\n").unwrap();
        assert_eq!(c.host, "[::1]:8443");
        assert!(c.tls.is_some());
        // Checked, as 2.42 does, but not used for an http URL.
        let c = parse("url: http://central/w\ntls_config: {insecure_skip_verify: true}\n").unwrap();
        assert_eq!((c.host.as_str(), c.tls), ("central:80", None));
        assert_refused([
            (
                "url: https://x/w\ntls_config: {ca_file: missing.crt}\n",
                "remote_write[0].tls_config.ca_file: unable to read CA certificate",
            ),
            (
                "url: https://x/w\ntls_config: {ca_file: gen.sh}\n",
                "remote_write[0].tls_config.ca_file: CA certificate: no PEM certificate found",
            ),
            (
                "url: http://x/w\ntls_config: {ca_file: missing.crt}\n",
                "remote_write[0].tls_config.ca_file: unable to read",
            ),
            (
                "url: https://x/w\ntls_config: {cert_file: client.crt}\n",
                "remote_write[0].tls_config: exactly one of key or key_file",
            ),
            (
                "url: https://x/w\ntls_config: {min_version: TLS9}\n",
                "remote_write[0].tls_config.min_version: unknown TLS version",
            ),
        ]);
    }

    /// A reload builds the client again: equal when the files are the same, not equal (so the
    /// sender restarts with the new client) when the CA file was rewritten.
    #[test]
    #[cfg(feature = "tls")]
    fn a_rewritten_ca_file_makes_a_different_client() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let dir = std::env::temp_dir().join(format!("perch-rw-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        let y = format!(
            "url: https://x/w\ntls_config: {{ca_file: {}}}\n",
            ca.display()
        );
        std::fs::copy(data.join("ca.crt"), &ca).unwrap();
        let (a, b) = (parse(&y).unwrap(), parse(&y).unwrap());
        assert_eq!(a, b);
        std::fs::copy(data.join("other-ca.crt"), &ca).unwrap();
        let c = parse(&y).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            a.tls.as_ref().unwrap().settings,
            c.tls.as_ref().unwrap().settings
        );
        assert_ne!(a, c);
    }

    #[test]
    #[cfg(not(feature = "tls"))]
    fn a_build_without_tls_refuses_https() {
        for (y, at) in [
            ("url: https://x/w\n", "remote_write[0].url: "),
            (
                "url: http://x/w\ntls_config: {insecure_skip_verify: true}\n",
                "remote_write[0].tls_config: ",
            ),
        ] {
            let e = parse(y).unwrap_err();
            assert!(
                e.contains(&format!("{at}{}", super::super::tls::NO_TLS)),
                "{e}"
            );
        }
    }
}
