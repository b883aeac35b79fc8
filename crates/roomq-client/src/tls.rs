//! TLS for the connection to the broker: what to trust and which name the
//! broker's certificate must carry.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomq_client::ClientError> {
//! use roomq_client::{Client, TlsOptions};
//!
//! let tls = TlsOptions::trusting_pem_file("/etc/roomq/ca.pem", "broker.example.com")?;
//! let client = Client::builder("broker.example.com:7420").tls(tls).connect().await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// How a connection uses TLS: the rustls configuration (trusted roots,
/// protocol versions, client certificate if any) and the name the broker's
/// certificate must be valid for.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsOptions {
    /// TLS with a configuration of the caller's own, checking the broker's
    /// certificate against `server_name` (a DNS name or an IP address).
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, ClientError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        Ok(TlsOptions {
            config,
            server_name,
        })
    }

    /// TLS trusting the certificates in a PEM file: the CA that signed the
    /// broker's certificate, or the broker's self-signed certificate itself.
    pub fn trusting_pem_file(
        path: impl AsRef<Path>,
        server_name: &str,
    ) -> Result<Self, ClientError> {
        TlsOptions::new(client_config_trusting(path)?, server_name)
    }

    /// Runs the TLS handshake on a connected socket.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| {
                // A refused certificate is not a lost connection: say what
                // TLS objected to.
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => ClientError::Tls(tls.to_string()),
                    None => ClientError::Io(e),
                }
            })
    }
}

/// A rustls client configuration that trusts exactly the certificates in
/// the PEM file at `path` (a CA, or a self-signed broker certificate).
pub fn client_config_trusting(
    path: impl AsRef<Path>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let path = path.as_ref();
    let unreadable = |e: pem::Error| ClientError::Tls(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(unreadable)? {
        roots
            .add(cert.map_err(unreadable)?)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    // The provider is named rather than taken from the process default, so
    // that nothing depends on which rustls features other crates enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
