//! The TLS side of an `https` scrape: the handshake over a connected socket with the job's
//! client ([`crate::config::TlsClient`], built at config load), on the executor. rustls is
//! sans-IO and futures-rustls drives it through async-io's socket: no thread, nothing blocks.
//!
//! The server's certificate is checked against `tls_config.server_name`, else the target's
//! host (a name, or an IP address against the certificate's IP addresses), which is also sent
//! as SNI when it is a name. Errors that Go words in a way people search for keep Go's words
//! (`x509: certificate signed by unknown authority`).

use super::client::FetchError;
use crate::config::TlsClient;
use async_io::Async;
use rustls::pki_types::ServerName;
use std::net::TcpStream;

/// A scrape connection over TLS.
pub type TlsStream = futures_rustls::client::TlsStream<Async<TcpStream>>;

/// Runs the handshake on `tcp` for `host` (the target's host, without port or brackets).
pub async fn handshake(
    tcp: Async<TcpStream>,
    host: &str,
    client: &TlsClient,
) -> Result<TlsStream, FetchError> {
    let name = match &client.server_name {
        Some(n) => n.clone(),
        None => ServerName::try_from(host.to_owned()).map_err(|_| {
            FetchError::Tls(format!(
                "{host:?} is not a valid TLS server name; set tls_config.server_name"
            ))
        })?,
    };
    futures_rustls::TlsConnector::from(client.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(describe(&e)))
}

/// Lets rustls give back the record buffer it grew while reading a response (up to a full
/// record, ~18 KB): a read attempt that finds no bytes waiting shrinks an empty buffer to
/// 4 KiB. Called when a connection is kept after a complete response, so that an idle kept
/// connection costs little.
pub fn release_buffers(s: &mut TlsStream) {
    struct WouldBlock;
    impl std::io::Read for WouldBlock {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    let _ = s.get_mut().1.read_tls(&mut WouldBlock);
}

/// The words for a failed handshake.
fn describe(e: &std::io::Error) -> String {
    tls_error(e).unwrap_or_else(|| format!("tls handshake: {e}"))
}

/// The words for an I/O error that is a TLS error (e.g. an alert from the server after the
/// handshake: in TLS 1.3 a refused client certificate shows at the first read); `None` if it
/// is not one.
pub fn tls_error(e: &std::io::Error) -> Option<String> {
    use rustls::{CertificateError, Error};
    Some(match e.get_ref()?.downcast_ref::<Error>()? {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                .into()
        }
        Error::InvalidCertificate(c) => format!("tls: failed to verify certificate: {c}"),
        other => format!("tls: {other}"),
    })
}
