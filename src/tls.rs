//! Optional TLS for client connections (SPEC §4: "TCP (TLS optional)").
//!
//! [`acceptor`] loads the certificate chain and key named in `[tls]` once,
//! when the broker starts; a file that cannot be read or used stops the
//! start with [`TlsError`]. [`accept`] runs one connection's TLS handshake
//! inside that connection's task, never in the accept loop, and within the
//! connection's handshake deadline: the same deadline then covers the roomq
//! `Handshake` frame (see `session::serve`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::TlsConfig;

/// Why the TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {what} from {path}: {source}")]
    Read {
        /// "certificate" or "private key".
        what: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("tls: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls: {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("tls: certificate {cert} with key {key}: {source}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The acceptor for `config`, or `None` when TLS is off. Reads and checks
/// both files now, so that a bad file is an error at start-up, not at the
/// first client.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some((cert_path, key_path)) = config.files() else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(read_error("certificate", cert_path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_path_buf(),
            })
        }
        Err(e) => return Err(read_error("private key", key_path)(e)),
    };
    let unusable = |source| TlsError::Unusable {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    // The provider is named rather than taken from the process default, so
    // that nothing depends on which rustls features other crates enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(unusable)?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Maps a PEM read error of `path` to [`TlsError::Read`].
fn read_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(pem::Error) -> TlsError + 'a {
    move |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the TLS handshake of an accepted connection, to be finished by
/// `deadline`. `None` when it failed, ran out of time or the broker is
/// shutting down; the connection is then closed without a roomq frame (there
/// is no TLS session to send one in).
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
    };
    match handshake {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed; connection closed");
            None
        }
        Err(_) => {
            info!(
                %peer,
                error = "no TLS handshake before the handshake deadline",
                "TLS handshake failed; connection closed"
            );
            None
        }
    }
}
