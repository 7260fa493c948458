//! A scrape job's or a `remote_write` entry's `tls_config`, as Prometheus 2.42 configures it
//! (prometheus/common's `TLSConfig`), validated and built into a [`TlsClient`] at load time.
//!
//! Understood: `ca_file` / `ca`, `cert_file` / `cert`, `key_file` / `key` (PEM, in a file or
//! inline), `server_name`, `insecure_skip_verify` and `min_version` (`TLS10` … `TLS13`; Perch
//! speaks TLS 1.2 and 1.3, so `TLS10` and `TLS11` allow what `TLS12` allows). The trusted roots
//! are the CA certificates given, and only those, as in Go; without them, the system's file:
//! `$SSL_CERT_FILE`, else the first of Go's list that exists (`/etc/ssl/certs/
//! ca-certificates.crt` on Debian). Every file is read and parsed here, so a missing or bad
//! file is a config error naming its field; a reload reads them again, and a client built from
//! rewritten files is not equal to the old one (so the job or sender using it is restarted).
//! The system roots are read once per load and shared by the clients that use them.
//!
//! A job gets a [`TlsClient`] when it says `scheme: https` or has a `tls_config`; a
//! `remote_write` entry when its URL is `https://` or it has a `tls_config`. A build without
//! the `tls` cargo feature has no TLS: all of these are refused with [`NO_TLS`], which says how
//! to get a build with it.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why a build without TLS refuses `https`, and how to get one with it.
pub const NO_TLS: &str = "this build of Perch has no TLS (built without the `tls` feature); \
     build with default features (`cargo build --release`), or use `perch-tls`, which \
     cross/build.sh builds beside the board binary";

/// `tls_config`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsConfig {
    ca: Option<String>,
    ca_file: Option<String>,
    cert: Option<String>,
    cert_file: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
    insecure_skip_verify: Option<bool>,
    min_version: Option<String>,
}

/// PEM text, inline in the config or in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    Inline(String),
    File(PathBuf),
}

/// A validated `tls_config`: what the client is built from, and what a reload compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificates to trust instead of the system's.
    pub ca: Option<Pem>,
    /// The client certificate chain and its key (both or neither).
    pub cert: Option<Pem>,
    pub key: Option<Pem>,
    /// The name the server's certificate is checked against and sent as SNI, instead of the
    /// target's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// `min_version: TLS13`: TLS 1.2 is not offered.
    pub tls13_only: bool,
}

/// One side of a `x` / `x_file` pair, checked as 2.42 checks it.
fn pem(
    at: &str,
    name: &str,
    inline: Option<String>,
    file: Option<String>,
    dir: &Path,
) -> Result<Option<Pem>, String> {
    match (
        inline.filter(|s| !s.is_empty()),
        file.filter(|s| !s.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(format!(
            "{at}: at most one of {name} and {name}_file must be configured"
        )),
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(f)) => Ok(Some(Pem::File(super::auth::join_dir(dir, &f)))),
        (None, None) => Ok(None),
    }
}

impl RawTlsConfig {
    /// Checks the fields with 2.42's rules; `at` names the section (`scrape_configs[0].
    /// tls_config`), `dir` is where relative file names are resolved. Files are read by
    /// [`TlsClient::build`].
    pub(super) fn validate(self, at: &str, dir: &Path) -> Result<TlsConfig, String> {
        let ca = pem(at, "ca", self.ca, self.ca_file, dir)?;
        let cert = pem(at, "cert", self.cert, self.cert_file, dir)?;
        let key = pem(at, "key", self.key, self.key_file, dir)?;
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(format!(
                "{at}: exactly one of key or key_file must be configured when a client certificate is configured"
            ))
            }
            (None, Some(_)) => {
                return Err(format!(
                "{at}: exactly one of cert or cert_file must be configured when a client key is configured"
            ))
            }
            _ => {}
        }
        let tls13_only = match self.min_version.as_deref() {
            None | Some("" | "TLS10" | "TLS11" | "TLS12") => false,
            Some("TLS13") => true,
            Some(v) => {
                return Err(format!(
                    "{at}.min_version: unknown TLS version: {v} (want TLS10, TLS11, TLS12 or TLS13)"
                ))
            }
        };
        Ok(TlsConfig {
            ca,
            cert,
            key,
            server_name: self.server_name.filter(|s| !s.is_empty()),
            insecure_skip_verify: self.insecure_skip_verify.unwrap_or(false),
            tls13_only,
        })
    }
}

#[cfg(feature = "tls")]
pub use with_tls::{SystemRoots, TlsClient};

#[cfg(not(feature = "tls"))]
pub use without_tls::{SystemRoots, TlsClient};

#[cfg(not(feature = "tls"))]
mod without_tls {
    use super::{TlsConfig, NO_TLS};

    /// In a build without TLS there is never a client: the type has no values.
    #[derive(Debug, Clone, PartialEq)]
    pub enum TlsClient {}

    /// Nothing to share without TLS (the same constructor as with it).
    #[derive(Default)]
    pub struct SystemRoots(());

    impl TlsClient {
        pub(in crate::config) fn build(
            _: TlsConfig,
            at: &str,
            _: &mut SystemRoots,
        ) -> Result<TlsClient, String> {
            Err(format!("{at}: {NO_TLS}"))
        }
    }
}

#[cfg(feature = "tls")]
mod with_tls {
    use super::{Pem, TlsConfig};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{ring, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
    use std::fmt;
    use std::hash::{DefaultHasher, Hasher};
    use std::sync::Arc;

    /// Where Go looks for the system's CA certificates on Linux, in its order.
    const SYSTEM_CA_FILES: [&str; 6] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];

    /// The system's roots, read at most once per config load, with the hash of the file.
    #[derive(Default)]
    pub struct SystemRoots(Option<(Arc<RootCertStore>, u64)>);

    impl SystemRoots {
        fn get(&mut self, at: &str) -> Result<(Arc<RootCertStore>, u64), String> {
            if let Some(r) = &self.0 {
                return Ok(r.clone());
            }
            let env = std::env::var("SSL_CERT_FILE").ok();
            let path = env
                .as_deref()
                .into_iter()
                .chain(SYSTEM_CA_FILES)
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or_else(|| {
                    format!(
                        "{at}: no system CA certificates found ($SSL_CERT_FILE, {}); give tls_config.ca_file",
                        SYSTEM_CA_FILES.join(", ")
                    )
                })?;
            let mut seen = DefaultHasher::new();
            let roots = roots(&Pem::File(path.into()), at, "system CA file", &mut seen)?;
            let roots = (Arc::new(roots), seen.finish());
            self.0 = Some(roots.clone());
            Ok(roots)
        }
    }

    /// A job's (or a `remote_write` entry's) TLS client: the rustls config built from its
    /// `tls_config`, shared by its connections.
    #[derive(Clone)]
    pub struct TlsClient {
        pub settings: TlsConfig,
        pub config: Arc<rustls::ClientConfig>,
        /// `server_name`, checked once here.
        pub server_name: Option<ServerName<'static>>,
        /// A hash of the PEM text read (files and inline), so that a reload sees a rotated file.
        material: u64,
    }

    impl PartialEq for TlsClient {
        /// The same settings and the same files build the same client: a reload keeps a job
        /// (or sender) whose config is unchanged, and replaces one whose certificate or key
        /// file was rewritten.
        fn eq(&self, other: &TlsClient) -> bool {
            self.settings == other.settings && self.material == other.material
        }
    }

    impl fmt::Debug for TlsClient {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.settings.fmt(f)
        }
    }

    /// The PEM text of `source`, also fed to `seen`; `at` names the section, `what` the
    /// contents, in errors.
    fn read(
        source: &Pem,
        at: &str,
        what: &str,
        seen: &mut DefaultHasher,
    ) -> Result<Vec<u8>, String> {
        let text = match source {
            Pem::Inline(text) => text.as_bytes().to_vec(),
            Pem::File(path) => std::fs::read(path)
                .map_err(|e| format!("{at}: unable to read {what} {}: {e}", path.display()))?,
        };
        seen.write(&text);
        Ok(text)
    }

    /// `at` with the field `source` came from: `name`, or `name_file`.
    fn field(at: &str, name: &str, source: &Pem) -> String {
        match source {
            Pem::Inline(_) => format!("{at}.{name}"),
            Pem::File(_) => format!("{at}.{name}_file"),
        }
    }

    fn certs(
        source: &Pem,
        at: &str,
        what: &str,
        seen: &mut DefaultHasher,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        let text = read(source, at, what, seen)?;
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{at}: {what}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{at}: {what}: no PEM certificate found"));
        }
        Ok(certs)
    }

    fn roots(
        source: &Pem,
        at: &str,
        what: &str,
        seen: &mut DefaultHasher,
    ) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs(source, at, what, seen)?);
        if added == 0 {
            return Err(format!("{at}: {what}: no usable CA certificate"));
        }
        Ok(store)
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring::default_provider())
    }

    impl TlsClient {
        /// Reads the files of `settings` and builds the client; `at` names the section.
        pub(in crate::config) fn build(
            settings: TlsConfig,
            at: &str,
            system: &mut SystemRoots,
        ) -> Result<TlsClient, String> {
            let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls13_only {
                &[&rustls::version::TLS13]
            } else {
                &[&rustls::version::TLS13, &rustls::version::TLS12]
            };
            let mut seen = DefaultHasher::new();
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map_err(|e| format!("{at}: {e}"))?;
            let builder = if settings.insecure_skip_verify {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(SkipVerify(provider())))
            } else {
                let roots = match &settings.ca {
                    Some(ca) => Arc::new(roots(
                        ca,
                        &field(at, "ca", ca),
                        "CA certificate",
                        &mut seen,
                    )?),
                    None => {
                        let (roots, hash) = system.get(at)?;
                        seen.write_u64(hash);
                        roots
                    }
                };
                builder.with_root_certificates(roots)
            };
            let config = match (&settings.cert, &settings.key) {
                (Some(cert), Some(key)) => {
                    let chain = certs(
                        cert,
                        &field(at, "cert", cert),
                        "client certificate",
                        &mut seen,
                    )?;
                    let key_at = field(at, "key", key);
                    let key_text = read(key, &key_at, "client key", &mut seen)?;
                    let key = PrivateKeyDer::from_pem_slice(&key_text)
                        .map_err(|e| format!("{key_at}: client key: {e}"))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| format!("{at}: client certificate and key: {e}"))?
                }
                _ => builder.with_no_client_auth(),
            };
            let server_name = match &settings.server_name {
                Some(n) => Some(
                    ServerName::try_from(n.clone())
                        .map_err(|_| format!("{at}.server_name: {n:?} is not a valid name"))?,
                ),
                None => None,
            };
            Ok(TlsClient {
                settings,
                config: Arc::new(config),
                server_name,
                material: seen.finish(),
            })
        }
    }

    /// `insecure_skip_verify`: any certificate is accepted, as Go's `InsecureSkipVerify`;
    /// the handshake's signatures are still checked against the certificate's key.
    #[derive(Debug)]
    struct SkipVerify(Arc<CryptoProvider>);

    impl ServerCertVerifier for SkipVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_yaml;

    /// The error of a config whose only job has `fields`, read as if from `tests/data/tls/`
    /// (relative file names resolve there); `None` if it loads.
    fn error(fields: &str) -> Option<String> {
        let yaml = format!("scrape_configs:\n  - job_name: a\n    {fields}\n");
        let at = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls/prometheus.yml");
        parse_yaml(&yaml, at).err().map(|e| e.to_string())
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_config_files_are_read_at_load() {
        for ok in [
            "scheme: https",
            "scheme: https\n    tls_config: {ca_file: ca.crt, server_name: localhost}",
            "tls_config: {insecure_skip_verify: true, min_version: TLS13}",
            "tls_config: {ca_file: ca.crt, cert_file: client.crt, key_file: client.key}",
        ] {
            assert_eq!(error(ok), None, "{ok}");
        }
        for (fields, want) in [
            (
                "tls_config: {ca_file: missing.crt}",
                "scrape_configs[0].tls_config.ca_file: unable to read CA certificate",
            ),
            (
                "tls_config: {ca_file: gen.sh}",
                "scrape_configs[0].tls_config.ca_file: CA certificate: no PEM certificate found",
            ),
            (
                "tls_config: {ca: not pem}",
                "scrape_configs[0].tls_config.ca: CA certificate: no PEM certificate found",
            ),
            (
                "tls_config: {cert_file: client.crt, key_file: ca.crt}",
                "scrape_configs[0].tls_config.key_file: client key:",
            ),
            (
                "tls_config: {cert_file: client.crt, key_file: server.key}",
                "scrape_configs[0].tls_config: client certificate and key:",
            ),
            (
                "tls_config: {server_name: 'a b'}",
                "scrape_configs[0].tls_config.server_name: \"a b\" is not a valid name",
            ),
        ] {
            let e = error(fields).unwrap_or_default();
            assert!(e.contains(want), "{fields}: {e:?}");
        }
    }

    #[test]
    #[cfg(not(feature = "tls"))]
    fn a_build_without_tls_says_how_to_get_one() {
        for (fields, at) in [
            ("scheme: https", "scrape_configs[0].scheme: "),
            (
                "tls_config: {insecure_skip_verify: true}",
                "scrape_configs[0].tls_config: ",
            ),
        ] {
            let e = error(fields).unwrap();
            assert!(e.contains(&format!("{at}{}", super::NO_TLS)), "{e}");
        }
    }
}
