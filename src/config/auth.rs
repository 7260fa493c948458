//! HTTP client credentials as Prometheus 2.42 configures them (prometheus/common v0.39's
//! `HTTPClientConfig`), shared by `scrape_configs` and `remote_write`.
//!
//! Understood: `basic_auth` (`username`, `password` / `password_file`), `authorization`
//! (`type`, `credentials` / `credentials_file`) and the older `bearer_token` /
//! `bearer_token_file`, which become an `authorization` of type `Bearer` as in 2.42. The
//! result is an [`Auth`]: the value of the `Authorization` header, with a file's secret read
//! each time the header is built ([`Auth::header`]), as 2.42 reads it on every request, so a
//! rotated secret is picked up without a reload.
//!
//! Refused with a clear error (no OAuth client in the binary, no proxy support):
//! `proxy_url`, `proxy_connect_header`, `oauth2` — see [`refuse_unsupported`]. `tls_config`
//! is [`super::tls`]'s.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `basic_auth`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

/// `authorization`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    #[serde(rename = "type")]
    kind: Option<String>,
    credentials: Option<String>,
    credentials_file: Option<String>,
}

/// The credential fields of one HTTP client config, as written.
#[derive(Debug, Default)]
pub(super) struct RawAuth {
    pub basic_auth: Option<RawBasicAuth>,
    pub authorization: Option<RawAuthorization>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<String>,
}

/// A secret given inline or in a file (read when used; trimmed of surrounding white space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

/// Validated credentials: what goes into the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Basic base64(username:password)`.
    Basic { username: String, password: Secret },
    /// `<kind> <credentials>` (`Bearer` unless `authorization.type` says otherwise).
    Credentials { kind: String, credentials: Secret },
}

impl Auth {
    /// The `Authorization` header value. A file is read now; the error says which and why,
    /// in 2.42's words.
    pub fn header(&self) -> Result<String, String> {
        match self {
            Auth::Basic { username, password } => {
                let pass = match password {
                    // As Go's basicAuthRoundTripper: the inline password is trimmed too.
                    Secret::Inline(p) => p.trim().to_owned(),
                    Secret::File(f) => std::fs::read_to_string(f)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| {
                            format!(
                                "unable to read basic auth password file {}: {}",
                                f.display(),
                                io_text(&e)
                            )
                        })?,
                };
                Ok(format!(
                    "Basic {}",
                    base64(format!("{username}:{pass}").as_bytes())
                ))
            }
            Auth::Credentials { kind, credentials } => {
                let cred = match credentials {
                    // Inline credentials are sent as written (2.42 does not trim them).
                    Secret::Inline(c) => c.clone(),
                    Secret::File(f) => std::fs::read_to_string(f)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| {
                            format!(
                                "unable to read authorization credentials file {}: {}",
                                f.display(),
                                io_text(&e)
                            )
                        })?,
                };
                Ok(format!("{kind} {cred}"))
            }
        }
    }
}

/// An I/O error in Go's words where they differ (`open x: no such file or directory`).
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Base64 (standard alphabet, padded), for basic auth.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Resolves a file named in the config against the config file's directory, as Prometheus's
/// `SetDirectory` does (absolute paths stay as they are).
pub fn join_dir(dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() || file.is_empty() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// An error for each HTTP client field Perch cannot honour; `at` names the section.
pub(super) fn refuse_unsupported(at: &str, present: &[(bool, &str)]) -> Result<(), String> {
    for (is, field) in present {
        if *is {
            let why = match *field {
                "oauth2" => "no OAuth 2.0 client in the binary",
                "proxy_url" | "proxy_connect_header" => "Perch connects directly",
                _ => "not built in",
            };
            return Err(format!("{at}.{field}: not supported by Perch ({why})"));
        }
    }
    Ok(())
}

impl RawAuth {
    /// Validates the credentials with 2.42's rules and messages; `at` names the section in
    /// errors, `dir` is where relative file names are resolved. Files are not read here.
    pub(super) fn validate(self, at: &str, dir: &Path) -> Result<Option<Auth>, String> {
        let has_bearer = self.bearer_token.as_deref().is_some_and(|t| !t.is_empty())
            || self
                .bearer_token_file
                .as_deref()
                .is_some_and(|t| !t.is_empty());
        if self.bearer_token.as_deref().is_some_and(|t| !t.is_empty())
            && self
                .bearer_token_file
                .as_deref()
                .is_some_and(|t| !t.is_empty())
        {
            return Err(format!(
                "{at}: at most one of bearer_token & bearer_token_file must be configured"
            ));
        }
        if self.basic_auth.is_some() && has_bearer {
            return Err(format!(
                "{at}: at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be configured"
            ));
        }
        let mut auth = None;
        if let Some(b) = self.basic_auth {
            let password = match (b.password, b.password_file) {
                (Some(p), Some(f)) if !p.is_empty() && !f.is_empty() => {
                    return Err(format!(
                        "{at}.basic_auth: at most one of basic_auth password & password_file must be configured"
                    ))
                }
                (_, Some(f)) if !f.is_empty() => Secret::File(join_dir(dir, &f)),
                (p, _) => Secret::Inline(p.unwrap_or_default()),
            };
            auth = Some(Auth::Basic {
                username: b.username.unwrap_or_default(),
                password,
            });
        }
        if let Some(a) = self.authorization {
            if has_bearer {
                return Err(format!(
                    "{at}: authorization is not compatible with bearer_token & bearer_token_file"
                ));
            }
            let credentials = match (a.credentials, a.credentials_file) {
                (Some(c), Some(f)) if !c.is_empty() && !f.is_empty() => {
                    return Err(format!(
                        "{at}.authorization: at most one of authorization credentials & credentials_file must be configured"
                    ))
                }
                (_, Some(f)) if !f.is_empty() => Secret::File(join_dir(dir, &f)),
                (c, _) => Secret::Inline(c.unwrap_or_default()),
            };
            let kind = a.kind.unwrap_or_default().trim().to_owned();
            let kind = if kind.is_empty() {
                "Bearer".to_owned()
            } else {
                kind
            };
            if kind.eq_ignore_ascii_case("basic") {
                return Err(format!(
                    "{at}.authorization: authorization type cannot be set to \"basic\", use \"basic_auth\" instead"
                ));
            }
            if auth.is_some() {
                return Err(format!(
                    "{at}: at most one of basic_auth, oauth2 & authorization must be configured"
                ));
            }
            auth = Some(Auth::Credentials { kind, credentials });
        } else if has_bearer {
            let credentials = match (self.bearer_token, self.bearer_token_file) {
                (Some(t), _) if !t.is_empty() => Secret::Inline(t),
                (_, Some(f)) => Secret::File(join_dir(dir, &f)),
                _ => unreachable!("has_bearer"),
            };
            auth = Some(Auth::Credentials {
                kind: "Bearer".into(),
                credentials,
            });
        }
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(y: &str) -> Result<Option<Auth>, String> {
        #[derive(Deserialize)]
        struct T {
            basic_auth: Option<RawBasicAuth>,
            authorization: Option<RawAuthorization>,
            bearer_token: Option<String>,
            bearer_token_file: Option<String>,
        }
        let t: T = serde_norway::from_str(y).map_err(|e| e.to_string())?;
        RawAuth {
            basic_auth: t.basic_auth,
            authorization: t.authorization,
            bearer_token: t.bearer_token,
            bearer_token_file: t.bearer_token_file,
        }
        .validate("x", Path::new("/etc/perch"))
    }

    fn header(y: &str) -> String {
        auth(y).unwrap().unwrap().header().unwrap()
    }

    #[test]
    fn headers_as_prometheus_sends_them() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
        // As captured from 2.42: user/pass → dXNlcjpwYXNz; the inline password trimmed.
        assert_eq!(
            header("basic_auth: {username: user, password: ' pass '}"),
            "Basic dXNlcjpwYXNz"
        );
        assert_eq!(header("bearer_token: tok"), "Bearer tok");
        assert_eq!(
            header("authorization: {type: Custom, credentials: '  sec'}"),
            "Custom   sec"
        );
        assert_eq!(header("authorization: {credentials: c}"), "Bearer c");
    }

    #[test]
    fn files_are_resolved_against_the_config_dir_and_read_when_used() {
        let a = auth("bearer_token_file: tok.txt").unwrap().unwrap();
        assert_eq!(
            a,
            Auth::Credentials {
                kind: "Bearer".into(),
                credentials: Secret::File("/etc/perch/tok.txt".into())
            }
        );
        assert_eq!(
            a.header().unwrap_err(),
            "unable to read authorization credentials file /etc/perch/tok.txt: no such file or directory"
        );
        let dir = std::env::temp_dir().join(format!("perch-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), " pass\n").unwrap();
        let y = format!(
            "basic_auth: {{username: user, password_file: {}}}",
            dir.join("pw").display()
        );
        assert_eq!(header(&y), "Basic dXNlcjpwYXNz");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conflicts_are_refused_with_2_42_messages() {
        for (y, want) in [
            (
                "bearer_token: a\nbearer_token_file: b",
                "x: at most one of bearer_token & bearer_token_file must be configured",
            ),
            (
                "basic_auth: {username: a}\nbearer_token: b",
                "x: at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be configured",
            ),
            (
                "basic_auth: {username: a, password: p, password_file: f}",
                "x.basic_auth: at most one of basic_auth password & password_file must be configured",
            ),
            (
                "authorization: {credentials: a}\nbearer_token: b",
                "x: authorization is not compatible with bearer_token & bearer_token_file",
            ),
            (
                "authorization: {type: Basic}",
                "x.authorization: authorization type cannot be set to \"basic\", use \"basic_auth\" instead",
            ),
            (
                "authorization: {credentials: a}\nbasic_auth: {username: a}",
                "x: at most one of basic_auth, oauth2 & authorization must be configured",
            ),
        ] {
            assert_eq!(auth(y).unwrap_err(), want, "{y}");
        }
        assert_eq!(auth("{}").unwrap(), None);
    }
}
