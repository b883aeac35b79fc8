//! The accept loop and the broker's lifecycle.
//!
//! [`run`] takes a bound listener and a shutdown token, like mini-redis's
//! `server::run`, so tests start a real broker on `127.0.0.1:0` and stop it
//! at will; [`Server::http`] adds the HTTP listener ([`crate::http`]) the
//! same way. Start order: the HTTP listener answers first (`/readyz` says
//! 503 while storage is recovered), then the store opens and the TCP
//! listener serves. Shutdown order: stop accepting TCP and WebSocket
//! sessions (`/readyz` turns 503); sessions stop reading; the broker drains
//! what was queued, writes and confirms it, syncs cursors and flushes;
//! writers send what is left and close; then the HTTP listener stops.

use std::sync::atomic::{AtomicU8, Ordering};
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
use crate::http::{self, HttpShared};
use crate::session;
use crate::storage::{self, Store, StoreError};
use crate::tenancy::{Hooks, Middleware, Tenants};
use crate::tls;
use crate::transport::{PrefixedFraming, PrefixedSource, Transport};

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
    #[error("{0}")]
    Http(#[from] http::OriginError),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("broker task failed: {0}")]
    Task(String),
}

/// Opens the configured storage engine: sled in the data directory (on the
/// blocking pool), or a connection to NATS JetStream.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config.storage.engine {
        storage::Engine::Sled => {
            let c = config.clone();
            tokio::task::spawn_blocking(move || open_data_dir(&c))
                .await
                .unwrap_or_else(|e| Err(ServerError::Task(e.to_string())))
        }
        #[cfg(feature = "cluster")]
        storage::Engine::Jetstream => Ok(Arc::new(
            storage::jetstream::JetStreamStore::connect(config).await?,
        )),
        // Refused by `Config::validate` before it gets here.
        #[cfg(not(feature = "cluster"))]
        storage::Engine::Jetstream => {
            Err(ServerError::Config(crate::config::ConfigError::Invalid(
                "storage.engine = \"jetstream\" needs the cluster feature".into(),
            )))
        }
    }
}

/// Opens sled in the data directory, creating it. Blocks.
fn open_data_dir(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let storage = &config.storage;
    Ok(storage::open(
        storage.engine,
        &config.data_dir,
        storage.cache_bytes,
    )?)
}

/// Serves `listener` with the store in `config.data_dir` until `shutdown`
/// is cancelled or storage fails. Returns an error on storage failure
/// (fail-stop: nothing after the failure was confirmed).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::new(config).run(listener, shutdown).await
}

/// [`run`] on a store the caller opened (for embedding and tests).
pub async fn run_with_store(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::new(config)
        .store(store)
        .run(listener, shutdown)
        .await
}

/// The broker as a library: a configuration, optionally a store opened by
/// the caller, and middleware per namespace (Socket.IO's
/// `io.of("/orders").use(...)`).
///
/// ```no_run
/// # async fn demo(listener: tokio::net::TcpListener) -> Result<(), roomq::server::ServerError> {
/// use roomq::tenancy::middleware::{Middleware, PublishCtx, Verdict};
///
/// struct Stamp;
///
/// #[async_trait::async_trait]
/// impl Middleware for Stamp {
///     fn name(&self) -> &str { "stamp" }
///     async fn publish(&self, ctx: &mut PublishCtx<'_>) -> Verdict {
///         ctx.headers.insert("stamped-by".into(), "stamp".into());
///         Verdict::Allow
///     }
/// }
///
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// roomq::server::Server::new(roomq::config::Config::default())
///     .middleware("/", Stamp)
///     .run(listener, shutdown)
///     .await
/// # }
/// ```
pub struct Server {
    config: Config,
    store: Option<Arc<dyn Store>>,
    hooks: Hooks,
    http: Option<TcpListener>,
}

/// Whether the broker accepts sessions: what `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) == READY
    }

    /// A word for people: `starting`, `ready` or `draining`.
    pub fn describe(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }
}

impl Server {
    pub fn new(config: Config) -> Server {
        Server {
            config,
            store: None,
            hooks: Hooks::default(),
            http: None,
        }
    }

    /// Serves the HTTP listener (`/ws`, `/healthz`, `/readyz`, the web
    /// page) on `listener` too. `roomqd` binds `http.listen` for it; an
    /// embedding program binds what it likes.
    pub fn http(mut self, listener: TcpListener) -> Server {
        self.http = Some(listener);
        self
    }

    /// Serves from `store` instead of opening `config.data_dir`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Server {
        self.store = Some(store);
        self
    }

    /// Runs `m` on connect, join and publish in `namespace`, after the
    /// built-in policies and the hooks added before it.
    pub fn middleware(mut self, namespace: &str, m: impl Middleware) -> Server {
        self.hooks.add(namespace, Arc::new(m));
        self
    }

    /// Runs `m` in every namespace (`/admin` excepted), after the built-in
    /// policies and before per-namespace hooks.
    pub fn middleware_everywhere(mut self, m: impl Middleware) -> Server {
        self.hooks.add_everywhere(Arc::new(m));
        self
    }

    /// Serves `listener` until `shutdown` is cancelled or storage fails.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        // Embedders build a Config in code: check it as `roomqd` does.
        self.config.validate()?;
        // Built once (before anything is created on disk); each
        // connection's TLS handshake runs in its own task.
        let tls = tls::acceptor(&self.config.tls)?;
        let origins = http::validate(&self.config.http)?;
        let tenants = Arc::new(Tenants::new(&self.config, self.hooks)?);
        let config = Arc::new(self.config);
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.broker.shard_count().max(1) {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            queues.push(tx);
            receivers.push(rx);
        }
        let handle = BrokerHandle::new(queues);
        let readiness = Arc::new(Readiness::default());
        let tracker = TaskTracker::new();
        let connections = Arc::new(Semaphore::new(config.limits.max_connections as usize));
        // Up first, so that `/healthz` and `/readyz` answer during recovery.
        let http_stop = CancellationToken::new();
        let http_addr = self.http.as_ref().and_then(|l| l.local_addr().ok());
        let http_task = self.http.map(|listener| {
            let shared = Arc::new(HttpShared {
                config: config.clone(),
                tenants: tenants.clone(),
                broker: handle.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                connections: connections.clone(),
                tls: tls.clone(),
                readiness: readiness.clone(),
                origins,
            });
            tokio::spawn(http::serve(listener, shared, http_stop.clone()))
        });
        let store = match self.store {
            Some(s) => Ok(s),
            None => open_store(&config).await,
        };
        let opened = match store {
            Ok(store) => Broker::open(config.clone(), store, tenants.clone())
                .await
                .map_err(ServerError::from),
            Err(e) => Err(e),
        };
        let shards = match opened {
            Ok(b) => b,
            Err(e) => {
                http_stop.cancel();
                if let Some(t) = http_task {
                    let _ = t.await;
                }
                return Err(e);
            }
        };
        // One task per shard; the broker has stopped when every shard has,
        // with the first storage failure, if any.
        let shard_tasks: Vec<_> = shards
            .into_iter()
            .zip(receivers)
            .map(|(shard, rx)| tokio::spawn(shard.run(rx, shutdown.clone())))
            .collect();
        let broker_task = tokio::spawn(async move {
            let mut result = Ok(());
            for task in shard_tasks {
                let outcome = match task.await {
                    Ok(r) => r,
                    Err(e) => Err(StoreError::Task(format!("a shard's task failed: {e}"))),
                };
                if result.is_ok() {
                    result = outcome;
                }
            }
            result
        });
        // JetStream keeps nothing in the data directory: its space is
        // NATS's to report (`/jsz`).
        if config.storage.engine == storage::Engine::Sled {
            tokio::spawn(measure_disk(
                tenants.metrics.clone(),
                config.data_dir.clone(),
                shutdown.clone(),
            ));
        }
        readiness.set(READY);
        let lifecycle = Lifecycle {
            http_addr,
            readiness,
            tracker,
            connections,
            http_stop,
            http_task,
        };
        serve(
            listener,
            config,
            tenants,
            tls,
            handle,
            broker_task,
            lifecycle,
            shutdown,
        )
        .await
    }
}

/// Sets `roomq_storage_bytes` from the data directory every few seconds
/// until `shutdown`.
async fn measure_disk(
    metrics: Arc<crate::metrics::Metrics>,
    dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        let d = dir.clone();
        if let Ok(n) = tokio::task::spawn_blocking(move || crate::metrics::dir_bytes(&d)).await {
            metrics
                .storage_bytes
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// What [`serve`] needs to stop the rest of the broker in order.
struct Lifecycle {
    /// Where the HTTP listener is, for the start-up line.
    http_addr: Option<std::net::SocketAddr>,
    readiness: Arc<Readiness>,
    tracker: TaskTracker,
    connections: Arc<Semaphore>,
    http_stop: CancellationToken,
    http_task: Option<tokio::task::JoinHandle<()>>,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    tenants: Arc<Tenants>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: BrokerHandle,
    broker_task: tokio::task::JoinHandle<Result<(), StoreError>>,
    lifecycle: Lifecycle,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let Lifecycle {
        http_addr,
        readiness,
        tracker,
        connections,
        http_stop,
        http_task,
    } = lifecycle;

    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let http = http_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    info!(
        listen = %local,
        http = %http,
        data_dir = %config.data_dir.display(),
        tls = tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "roomqd serving"
    );
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
        let (config, tenants, handle, shutdown, inner, tls) = (
            config.clone(),
            tenants.clone(),
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
                    let frames = PrefixedSource::new(read_half, config.limits.max_frame());
                    session::serve(
                        frames,
                        write_half,
                        PrefixedFraming,
                        peer,
                        config,
                        tenants,
                        handle,
                        shutdown,
                        inner,
                        deadline,
                        Transport::Tcp,
                    )
                    .await;
                }
                Some(acceptor) => {
                    if let Some(stream) =
                        tls::accept(&acceptor, stream, peer, deadline, &shutdown).await
                    {
                        let (read_half, write_half) = tokio::io::split(stream);
                        let frames = PrefixedSource::new(read_half, config.limits.max_frame());
                        session::serve(
                            frames,
                            write_half,
                            PrefixedFraming,
                            peer,
                            config,
                            tenants,
                            handle,
                            shutdown,
                            inner,
                            deadline,
                            Transport::Tcp,
                        )
                        .await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    readiness.set(DRAINING);
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
    http_stop.cancel();
    if let Some(task) = http_task {
        let _ = task.await;
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
