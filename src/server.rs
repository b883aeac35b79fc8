//! The accept loop and the broker's lifecycle.
//!
//! [`run`] takes a bound listener and a shutdown token, like mini-redis's
//! `server::run`, so tests start a real broker on `127.0.0.1:0` and stop it
//! at will. Shutdown order: stop accepting; sessions stop reading; the
//! broker drains what was queued, writes and confirms it, syncs cursors and
//! flushes; writers send what is left and close.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use roomq_wire::codec::encode_frame;
use roomq_wire::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::{error_frame, Broker, BrokerHandle};
use crate::config::Config;
use crate::session;
use crate::storage::{SledStore, Store, StoreError};
use crate::tls;

/// Capacity of the broker's command queue.
const COMMAND_QUEUE: usize = 8192;

/// Why the broker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("broker task failed: {0}")]
    Task(String),
}

/// Opens the sled store in the configured data directory.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = SledStore::open(&config.data_dir, config.storage.cache_bytes)?;
    Ok(Arc::new(store))
}

/// Serves `listener` with the store in `config.data_dir` until `shutdown`
/// is cancelled or storage fails. Returns an error on storage failure
/// (fail-stop: nothing after the failure was confirmed).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    config.validate()?;
    let store = open_store(&config)?;
    run_with_store(listener, config, store, shutdown).await
}

/// [`run`] on a store the caller opened (for embedding and tests).
pub async fn run_with_store(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // Embedders build a Config in code: check it as `roomqd` does.
    config.validate()?;
    // Built once; each connection's handshake runs in its own task.
    let tls = tls::acceptor(&config.tls)?;
    let config = Arc::new(config);
    let broker = Broker::open(config.clone(), store)?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let handle = BrokerHandle::new(tx);
    let broker_task = tokio::spawn(broker.run(rx, shutdown.clone()));

    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        listen = %local,
        data_dir = %config.data_dir.display(),
        tls = tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "roomqd serving"
    );
    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(config.limits.max_connections as usize));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!(%peer, max_connections = config.limits.max_connections, "connection refused: at the limit");
            tracker.spawn(refuse_at_limit(
                stream,
                tls.clone(),
                config.limits.max_frame(),
            ));
            continue;
        };
        let (config, handle, shutdown, inner, tls) = (
            config.clone(),
            handle.clone(),
            shutdown.clone(),
            tracker.clone(),
            tls.clone(),
        );
        tracker.spawn(async move {
            // One deadline for the TLS handshake and the roomq handshake.
            let deadline = tokio::time::Instant::now() + config.limits.handshake_timeout();
            match tls {
                None => {
                    // Owned halves: no lock between the reader and the writer.
                    let (read_half, write_half) = stream.into_split();
                    session::serve(
                        read_half, write_half, peer, config, handle, shutdown, inner, deadline,
                    )
                    .await;
                }
                Some(acceptor) => {
                    if let Some(stream) =
                        tls::accept(&acceptor, stream, peer, deadline, &shutdown).await
                    {
                        let (read_half, write_half) = tokio::io::split(stream);
                        session::serve(
                            read_half, write_half, peer, config, handle, shutdown, inner, deadline,
                        )
                        .await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    info!("shutting down: draining");
    drop(handle);
    let result = match broker_task.await {
        Ok(r) => r.map_err(ServerError::from),
        Err(e) => Err(ServerError::Task(e.to_string())),
    };
    tracker.close();
    let grace = config.limits.write_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("some connections did not close in time");
    }
    match &result {
        Ok(()) => info!("shut down cleanly"),
        Err(e) => error!(error = %e, "stopped on error"),
    }
    result
}

/// Tells a connection beyond `max_connections` why it is closed, within a
/// second. Over TLS the refusal needs a TLS session, so the handshake is
/// part of that second.
async fn refuse_at_limit(stream: TcpStream, tls: Option<TlsAcceptor>, max_frame: usize) {
    let mut buf = BytesMut::new();
    let frame = error_frame(
        0,
        ErrorCode::TooManyConnections,
        "the broker is at its connection limit",
    );
    if encode_frame(&frame, max_frame, &mut buf).is_err() {
        return;
    }
    let refuse = async {
        match tls {
            None => {
                let mut stream = stream;
                stream.write_all(&buf).await
            }
            Some(acceptor) => {
                let mut stream = acceptor.accept(stream).await?;
                stream.write_all(&buf).await?;
                stream.shutdown().await?;
                // The client sends its handshake meanwhile. Closing with it
                // unread would reset the connection, which can destroy the
                // refusal before the client reads it: read until it closes.
                let mut scratch = [0u8; 1024];
                while stream.read(&mut scratch).await? > 0 {}
                Ok(())
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
}
