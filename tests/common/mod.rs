//! Test harness: a real broker started in-process on 127.0.0.1:0 with a
//! temporary data directory, and helpers to talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use roomq::config::{Config, NamespaceConfig};
use roomq::server::{self, ServerError};
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection as Client, Deliveries};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in a test, so no test can hang.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestBroker {
    pub addr: SocketAddr,
    /// The HTTP listener's address, when started with one (see [`ws`]).
    pub http: Option<SocketAddr>,
    pub dir: Arc<TempDir>,
    pub config: Config,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

pub fn test_config(dir: &TempDir) -> Config {
    let mut c = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    c.storage.cache_bytes = 16 * 1024 * 1024;
    engine_from_env(&mut c, dir);
    // `ROOMQ_BROKER_SHARDS=1 cargo nextest run` runs the suite on one
    // shard; by default it runs on one per core, as roomqd does.
    if let Ok(n) = std::env::var("ROOMQ_BROKER_SHARDS") {
        c.broker.shards = n.parse().expect("ROOMQ_BROKER_SHARDS is a number");
    }
    // Open namespaces the tests use besides `/`.
    for ns in [
        "/a",
        "/ab",
        "/administration",
        "/fuzz",
        "/orders",
        "/other",
        "/users",
    ] {
        c.namespaces
            .insert(ns.to_string(), NamespaceConfig::open_default());
    }
    c
}

/// `ROOMQ_TEST_ENGINE=jetstream` (with the cluster feature): brokers made
/// from [`test_config`] store their rooms in JetStream, on one nats-server
/// shared by the test process, each data directory under a prefix of its
/// own (so a restart on the same directory finds its rooms again). CI runs
/// the real-time test files this way; see `.ci/run`.
#[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
fn engine_from_env(c: &mut Config, dir: &TempDir) {
    match std::env::var("ROOMQ_TEST_ENGINE").as_deref() {
        Err(_) | Ok("") | Ok("sled") => {}
        #[cfg(feature = "cluster")]
        Ok("jetstream") => {
            use std::hash::{Hash, Hasher};
            let nats = shared_nats();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.path().hash(&mut h);
            c.storage.engine = roomq::storage::Engine::Jetstream;
            c.jetstream.urls = nats.url(0);
            c.jetstream.replicas = 1;
            c.jetstream.prefix = format!("t{:015x}", h.finish() >> 4);
        }
        Ok(other) => {
            panic!("ROOMQ_TEST_ENGINE={other:?}: sled, or jetstream with --features cluster")
        }
    }
}

/// The nats-server of `ROOMQ_TEST_ENGINE=jetstream`, started on first use.
#[cfg(feature = "cluster")]
fn shared_nats() -> &'static nats::Nats {
    static NATS: std::sync::OnceLock<nats::Nats> = std::sync::OnceLock::new();
    NATS.get_or_init(|| nats::Nats::start(1))
}

/// Whether what the broker of `config` stored, in `dir` or wherever its
/// engine keeps it, contains `needle` anywhere (for checks that a secret
/// is never stored). For JetStream: the shared server's store directory.
pub fn storage_contains(config: &Config, dir: &std::path::Path, needle: &[u8]) -> bool {
    match config.storage.engine {
        roomq::storage::Engine::Sled => dir_contains(dir, needle),
        #[cfg(feature = "cluster")]
        roomq::storage::Engine::Jetstream => dir_contains(shared_nats().dir.path(), needle),
        #[cfg(not(feature = "cluster"))]
        roomq::storage::Engine::Jetstream => {
            panic!("the jetstream engine needs the cluster feature")
        }
    }
}

/// Paused time and a store on the network do not mix (a JetStream
/// request's timeout would pass in no real time): with time paused, a test
/// of timers keeps sled whatever `ROOMQ_TEST_ENGINE` says.
pub fn sled_if_paused(config: &mut Config) {
    if config.storage.engine != roomq::storage::Engine::Sled && time_is_paused() {
        config.storage.engine = roomq::storage::Engine::Sled;
    }
}

/// Whether the test runs on tokio's paused clock: the real clock moves
/// while tokio's stands still (nothing is awaited in between, so paused
/// time cannot auto-advance).
fn time_is_paused() -> bool {
    let (tokio_then, real_then) = (tokio::time::Instant::now(), std::time::Instant::now());
    std::thread::sleep(Duration::from_millis(2));
    tokio::time::Instant::now() == tokio_then && real_then.elapsed() >= Duration::from_millis(2)
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config = test_config(&dir);
        TestBroker::start_with(config, dir).await
    }

    pub async fn start_with(config: Config, dir: Arc<TempDir>) -> TestBroker {
        TestBroker::start_on("127.0.0.1:0".parse().expect("addr"), config, dir).await
    }

    /// Starts on a given address (to come back on the same port).
    pub async fn start_on(addr: SocketAddr, mut config: Config, dir: Arc<TempDir>) -> TestBroker {
        sled_if_paused(&mut config);
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(listener, config.clone(), shutdown.clone()));
        TestBroker {
            addr,
            http: None,
            dir,
            config,
            shutdown,
            task,
        }
    }

    /// Stops the broker cleanly and returns its data directory.
    pub async fn stop(self) -> (Arc<TempDir>, Config) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("broker stops in time")
            .expect("broker task");
        r.expect("broker stopped without error");
        (self.dir, self.config)
    }

    /// Stops and starts again on the same data directory and port, so that
    /// reconnecting clients find it.
    pub async fn restart_same_port(self) -> TestBroker {
        let addr = self.addr;
        let (dir, config) = self.stop().await;
        TestBroker::start_on(addr, config, dir).await
    }

    /// Stops and starts again on the same data directory.
    pub async fn restart(self) -> TestBroker {
        let (dir, config) = self.stop().await;
        TestBroker::start_with(config, dir).await
    }

    pub fn options(&self) -> ConnectOptions {
        ConnectOptions::new(self.addr.to_string())
    }

    pub async fn connect(&self, client_id: &str) -> (Client, Deliveries) {
        let opts = self.options().client_id(client_id);
        Client::connect(opts).await.expect("connect")
    }

    pub async fn connect_ns(&self, namespace: &str, client_id: &str) -> (Client, Deliveries) {
        let opts = self.options().namespace(namespace).client_id(client_id);
        Client::connect(opts).await.expect("connect")
    }
}

/// The next delivery, failing the test if none comes within [`WAIT`].
pub async fn next(d: &mut Deliveries) -> pb::Delivery {
    tokio::time::timeout(WAIT, d.next_delivery())
        .await
        .expect("a delivery within the wait")
        .expect("connection open")
}

/// Asserts that no delivery arrives within `quiet` (real time).
pub async fn assert_quiet(d: &mut Deliveries, quiet: Duration) {
    if let Ok(Some(p)) = tokio::time::timeout(quiet, d.next_push()).await {
        panic!("expected nothing, got {p:?}");
    }
}

pub fn seq(d: &pb::Delivery) -> u64 {
    d.message.as_ref().map_or(0, |m| m.seq)
}

pub fn payload(d: &pb::Delivery) -> Vec<u8> {
    d.message
        .as_ref()
        .map_or_else(Vec::new, |m| m.payload.to_vec())
}

/// Joins with explicit options.
pub fn join(
    room: &str,
    start: pb::StartPosition,
    max_in_flight: u32,
    ack_timeout_ms: u64,
) -> pb::Join {
    pb::Join {
        room: room.to_string(),
        start: start as i32,
        max_in_flight,
        ack_timeout_ms,
        ..Default::default()
    }
}

/// [`next`] for tests on paused time, where a timeout is virtual: waits up
/// to a virtual day (auto-advanced in no real time).
pub async fn next_paused(d: &mut Deliveries) -> pb::Delivery {
    tokio::time::timeout(Duration::from_secs(24 * 3600), d.next_delivery())
        .await
        .expect("a delivery within a virtual day")
        .expect("connection open")
}

/// The real `roomqd` binary, started as a child process on 127.0.0.1:0.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Daemon {
    pub fn start(dir: &std::path::Path) -> Daemon {
        Daemon::start_on(dir, 0)
    }

    /// Starts on a given loopback port (0: any free one).
    pub fn start_on(dir: &std::path::Path, port: u16) -> Daemon {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomqd"))
            .args(["--listen", listen.as_str(), "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start roomqd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("roomqd reports its address");
        Daemon {
            child,
            addr: addr.parse().expect("address"),
        }
    }

    pub fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

// ---------------------------------------------------------------------------
// Tenancy helpers: tokens, closed namespaces, `/admin`, embedding with
// middleware.
// ---------------------------------------------------------------------------

/// A new token and its config entry, allowed every room both ways.
pub fn new_token(name: &str) -> (String, roomq::config::TokenConfig) {
    new_token_for(name, &["*"], &["*"])
}

/// A new token and its config entry, limited to these room patterns.
pub fn new_token_for(
    name: &str,
    publish: &[&str],
    subscribe: &[&str],
) -> (String, roomq::config::TokenConfig) {
    let secret = roomq::tenancy::token::generate().expect("randomness");
    let config = roomq::config::TokenConfig {
        name: name.to_string(),
        hash: roomq::tenancy::token::TokenHash::of(&secret).to_text(),
        publish: publish.iter().map(|p| p.to_string()).collect(),
        subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
    };
    (secret, config)
}

/// A closed namespace (a token is required) with these tokens.
pub fn closed_namespace(tokens: Vec<roomq::config::TokenConfig>) -> NamespaceConfig {
    NamespaceConfig {
        open: false,
        tokens,
        ..NamespaceConfig::default()
    }
}

/// [`test_config`] with an `[admin]` token; returns the config and the token.
pub fn admin_config(dir: &TempDir) -> (Config, String) {
    let mut config = test_config(dir);
    let (secret, token) = new_token("root");
    config.admin.tokens.push(token);
    (config, secret)
}

/// The error of a result that must have failed.
pub fn refused<T: std::fmt::Debug>(
    r: Result<T, roomq_client::ClientError>,
) -> roomq_client::ClientError {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e,
    }
}

/// The broker's code of a result that must have failed.
pub fn code<T: std::fmt::Debug>(
    r: Result<T, roomq_client::ClientError>,
) -> roomq_client::ErrorCode {
    let e = refused(r);
    e.code()
        .unwrap_or_else(|| panic!("expected a broker error, got {e}"))
}

/// Reads pushes until the broker closes the connection (within [`WAIT`]);
/// returns what was pushed.
pub async fn pushes_until_closed(d: &mut Deliveries) -> Vec<roomq_client::Push> {
    let mut pushes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(p) = d.next_push().await {
            pushes.push(p);
        }
    })
    .await
    .expect("the broker closes the connection within the wait");
    pushes
}

/// The next push that is an error (deliveries before it are skipped).
pub async fn next_error(d: &mut Deliveries) -> pb::Error {
    tokio::time::timeout(WAIT, async {
        loop {
            match d.next_push().await {
                Some(roomq_client::Push::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("connection closed before an error was pushed"),
            }
        }
    })
    .await
    .expect("an error push within the wait")
}

/// Whether any file under `dir` contains `needle`.
pub fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read file");
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    false
}

/// Polls `check` (every few ms, for at most [`WAIT`]) until it holds. For
/// waiting on something the broker does asynchronously (a disconnect being
/// noticed), not for testing timers.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Admin requests, spelled shortly.
pub mod admin {
    use roomq_client::proto as pb;
    use roomq_client::raw::Connection as Client;
    use roomq_client::ClientError;

    pub use pb::admin::Op;

    pub async fn namespaces(admin: &Client) -> Vec<pb::NamespaceInfo> {
        let op = Op::ListNamespaces(pb::AdminListNamespaces {});
        admin.admin(op).await.expect("list namespaces").namespaces
    }

    pub async fn namespace(admin: &Client, name: &str) -> Option<pb::NamespaceInfo> {
        namespaces(admin).await.into_iter().find(|n| n.name == name)
    }

    /// The rooms of `ns` ("" = every namespace).
    pub async fn rooms(admin: &Client, ns: &str) -> Vec<pb::AdminRoomInfo> {
        let op = Op::ListRooms(pb::AdminListRooms {
            namespace: ns.to_string(),
        });
        admin.admin(op).await.expect("list rooms").rooms
    }

    pub async fn room(admin: &Client, ns: &str, name: &str) -> Option<pb::AdminRoomInfo> {
        rooms(admin, ns).await.into_iter().find(|r| r.name == name)
    }

    pub async fn create_namespace(
        admin: &Client,
        c: pb::AdminCreateNamespace,
    ) -> Result<pb::AdminOk, ClientError> {
        admin.admin(Op::CreateNamespace(c)).await
    }

    pub async fn delete_namespace(admin: &Client, name: &str) -> Result<pb::AdminOk, ClientError> {
        let op = Op::DeleteNamespace(pb::AdminDeleteNamespace {
            name: name.to_string(),
        });
        admin.admin(op).await
    }

    pub async fn create_room(
        admin: &Client,
        ns: &str,
        room: &str,
    ) -> Result<pb::AdminOk, ClientError> {
        let op = Op::CreateRoom(pb::AdminCreateRoom {
            namespace: ns.to_string(),
            room: room.to_string(),
        });
        admin.admin(op).await
    }

    pub async fn delete_room(
        admin: &Client,
        ns: &str,
        room: &str,
    ) -> Result<pb::AdminOk, ClientError> {
        let op = Op::DeleteRoom(pb::AdminDeleteRoom {
            namespace: ns.to_string(),
            room: room.to_string(),
        });
        admin.admin(op).await
    }

    pub async fn purge_room(
        admin: &Client,
        ns: &str,
        room: &str,
    ) -> Result<pb::AdminOk, ClientError> {
        let op = Op::PurgeRoom(pb::AdminPurgeRoom {
            namespace: ns.to_string(),
            room: room.to_string(),
        });
        admin.admin(op).await
    }

    /// Creates a token allowed every room; returns the token.
    pub async fn create_token(admin: &Client, ns: &str, name: &str) -> Result<String, ClientError> {
        let op = Op::CreateToken(pb::AdminCreateToken {
            namespace: ns.to_string(),
            name: name.to_string(),
            ..Default::default()
        });
        admin.admin(op).await.map(|ok| ok.token)
    }

    pub async fn delete_token(
        admin: &Client,
        ns: &str,
        name: &str,
    ) -> Result<pb::AdminOk, ClientError> {
        let op = Op::DeleteToken(pb::AdminDeleteToken {
            namespace: ns.to_string(),
            name: name.to_string(),
        });
        admin.admin(op).await
    }

    pub async fn kick(admin: &Client, session: &[u8]) -> Result<pb::AdminOk, ClientError> {
        let op = Op::Kick(pb::AdminKick {
            session_id: bytes::Bytes::copy_from_slice(session),
        });
        admin.admin(op).await
    }
}

impl TestBroker {
    /// Starts an embedded broker built with `build` (to add middleware), as
    /// [`TestBroker::start_on`] does. Note: `restart` brings it back
    /// without the middleware.
    pub async fn start_server(
        config: Config,
        dir: Arc<TempDir>,
        build: impl FnOnce(server::Server) -> server::Server,
    ) -> TestBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let srv = build(server::Server::new(config.clone()));
        let task = tokio::spawn(srv.run(listener, shutdown.clone()));
        TestBroker {
            addr,
            http: None,
            dir,
            config,
            shutdown,
            task,
        }
    }

    /// Connects with `opts` (the address is this broker's).
    pub async fn connect_opts(&self, opts: ConnectOptions) -> (Client, Deliveries) {
        let opts = ConnectOptions {
            addr: self.addr.to_string(),
            ..opts
        };
        Client::connect(opts).await.expect("connect")
    }

    /// Connects to `namespace` with `token` and `client_id` ("" for none).
    pub async fn connect_token(
        &self,
        namespace: &str,
        token: &str,
        client_id: &str,
    ) -> (Client, Deliveries) {
        let opts = self
            .options()
            .namespace(namespace)
            .token(token)
            .client_id(client_id);
        Client::connect(opts).await.expect("connect")
    }

    /// The error refusing a connection to `namespace` with `token`.
    pub async fn refused_connect(&self, namespace: &str, token: &str) -> roomq_client::ClientError {
        let opts = self.options().namespace(namespace).token(token);
        refused(Client::connect(opts).await.map(|(c, _)| c.session_id()))
    }

    /// An `/admin` session.
    pub async fn admin(&self, token: &str) -> Client {
        self.connect_token("/admin", token, "").await.0
    }
}

#[cfg(feature = "cluster")]
pub mod nats;
pub mod ws;

/// Helpers for tests that speak the wire protocol on a raw socket: frames
/// built and read by hand, so a test can send what no client would.
pub mod wire {
    use super::pb;
    use bytes::{BufMut, Bytes, BytesMut};
    use futures::StreamExt;
    use prost::Message as _;
    use roomq_wire::codec::decode_server;
    use roomq_wire::FrameCodec;
    use std::time::Duration;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio_util::codec::FramedRead;

    /// `body` behind its 4-byte big-endian length.
    pub fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(4 + body.len());
        out.put_u32(u32::try_from(body.len()).expect("frame fits a u32 length"));
        out.put_slice(body);
        out.to_vec()
    }

    /// One client frame, length prefix included.
    pub fn frame(msg: &pb::ClientFrame) -> Vec<u8> {
        framed(&msg.encode_to_vec())
    }

    /// A client frame with `body` and `request_id`.
    pub fn request(request_id: u64, body: pb::client_frame::Body) -> pb::ClientFrame {
        pb::ClientFrame {
            request_id,
            body: Some(body),
        }
    }

    /// A version-1 handshake for `namespace`, with an optional client id.
    pub fn handshake(request_id: u64, namespace: &str, client_id: &str) -> pb::ClientFrame {
        request(
            request_id,
            pb::client_frame::Body::Handshake(pb::Handshake {
                protocol_version: 1,
                namespace: namespace.into(),
                client_id: client_id.into(),
                ..Default::default()
            }),
        )
    }

    /// Reads and decodes server frames from one side of a socket.
    pub struct FrameReader {
        frames: FramedRead<OwnedReadHalf, FrameCodec>,
    }

    impl FrameReader {
        pub fn new(read: OwnedReadHalf) -> Self {
            // Deliveries may be a little larger than a publish's frame.
            FrameReader {
                frames: FramedRead::new(read, FrameCodec::new(64 * 1024 * 1024)),
            }
        }

        /// The next frame; `None` at the end of the stream. Fails the test
        /// if nothing arrives within `wait` (virtual under paused time) or
        /// the bytes are not a valid server frame.
        pub async fn next(&mut self, wait: Duration) -> Option<pb::ServerFrame> {
            self.next_within(wait).await.expect("the broker's stream")
        }

        /// [`FrameReader::next`], returning what went wrong instead of
        /// failing the test.
        pub async fn next_within(
            &mut self,
            wait: Duration,
        ) -> Result<Option<pb::ServerFrame>, String> {
            let got = tokio::time::timeout(wait, self.frames.next())
                .await
                .map_err(|_| format!("nothing within {wait:?}"))?;
            match got {
                None => Ok(None),
                Some(Err(e)) => Err(format!("reading the stream: {e}")),
                Some(Ok(raw)) => {
                    let raw: Bytes = raw;
                    decode_server(raw)
                        .map(Some)
                        .map_err(|e| format!("not a server frame: {e}"))
                }
            }
        }

        /// The socket back, with the bytes already read from it but not yet
        /// returned as frames.
        pub fn into_parts(self) -> (OwnedReadHalf, BytesMut) {
            let buffered = self.frames.read_buffer().clone();
            (self.frames.into_inner(), buffered)
        }

        /// Every frame until the broker closes the stream.
        pub async fn until_closed(&mut self, wait: Duration) -> Vec<pb::ServerFrame> {
            let deadline = tokio::time::Instant::now() + wait;
            let mut out = Vec::new();
            while let Some(f) = self
                .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                out.push(f);
            }
            out
        }
    }

    /// The error in `frame`, if it is one.
    pub fn error_of(frame: &pb::ServerFrame) -> Option<&pb::Error> {
        match &frame.body {
            Some(pb::server_frame::Body::Error(e)) => Some(e),
            _ => None,
        }
    }

    /// This process's resident set size, in bytes (from /proc; Linux only).
    /// The broker runs in-process, so this covers its memory too.
    pub fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in /proc/self/status");
        kib * 1024
    }
}

// ---------------------------------------------------------------------------
// Paused-time helpers and multi-consumer reading (issue 6 tests).
// ---------------------------------------------------------------------------

/// A virtual decade in ms: connection timers set to this cannot fire while a
/// test auto-advances paused time.
pub const NEVER_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A virtual day: the wait of the `*_paused` helpers.
pub const VIRTUAL_DAY: Duration = Duration::from_secs(24 * 3600);

/// [`test_config`] whose connection timers (handshake, idle, write) cannot
/// fire in a paused-time test: only the timers under test matter.
pub fn paused_config(dir: &TempDir) -> Config {
    let mut config = test_config(dir);
    config.limits.idle_timeout_ms = NEVER_MS;
    config.limits.handshake_timeout_ms = NEVER_MS;
    config.limits.write_timeout_ms = NEVER_MS;
    config
}

/// A broker with [`paused_config`].
pub async fn paused_broker() -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let config = paused_config(&dir);
    TestBroker::start_with(config, dir).await
}

/// The next push of any kind within a virtual day (paused time) or a real
/// day (which [`WAIT`]-bounded callers never reach).
pub async fn next_push_paused(d: &mut Deliveries) -> roomq_client::Push {
    tokio::time::timeout(VIRTUAL_DAY, d.next_push())
        .await
        .expect("a push within a virtual day")
        .expect("connection open")
}

/// The next push of any kind within [`WAIT`].
pub async fn next_push(d: &mut Deliveries) -> roomq_client::Push {
    tokio::time::timeout(WAIT, d.next_push())
        .await
        .expect("a push within the wait")
        .expect("connection open")
}

/// The delivery in `push`, failing the test on any other push.
pub fn delivery(push: roomq_client::Push) -> pb::Delivery {
    match push {
        roomq_client::Push::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// The next delivery on any of `ds`, with the index of the connection it
/// came on. Gaps and presence events are skipped; a pushed error fails the
/// test. Bounded by [`WAIT`].
pub async fn next_any(ds: &mut [Deliveries]) -> (usize, pb::Delivery) {
    tokio::time::timeout(WAIT, async {
        loop {
            let futs: Vec<_> = ds.iter_mut().map(|d| Box::pin(d.next_push())).collect();
            let (push, i, _) = futures::future::select_all(futs).await;
            match push {
                Some(roomq_client::Push::Delivery(d)) => return (i, d),
                Some(roomq_client::Push::Error(e)) => panic!("connection {i}: error pushed: {e:?}"),
                Some(_) => continue,
                None => panic!("connection {i} closed"),
            }
        }
    })
    .await
    .expect("a delivery on one of the connections within the wait")
}

/// The header `name` of a delivered message.
pub fn header<'a>(d: &'a pb::Delivery, name: &str) -> Option<&'a str> {
    d.message
        .as_ref()
        .and_then(|m| m.headers.get(name))
        .map(String::as_str)
}

/// The message of a delivery (fails the test when it has none).
pub fn message(d: &pb::Delivery) -> &pb::Message {
    d.message.as_ref().expect("a delivery carries its message")
}

/// A publish of `payload` as `event` to one room, with no other option set.
pub fn publish_to(room: &str, event: &str, payload: &str) -> pb::Publish {
    pb::Publish {
        rooms: vec![room.to_string()],
        event: event.to_string(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

/// The `Members` of a room, through the raw request.
pub async fn members(c: &Client, room: &str) -> Result<pb::MembersOk, roomq_client::ClientError> {
    let body = pb::client_frame::Body::Members(pb::Members {
        room: room.to_string(),
    });
    match c.request(body).await? {
        pb::server_frame::Body::MembersOk(ok) => Ok(ok),
        other => Err(roomq_client::ClientError::Protocol(format!(
            "unexpected reply to Members: {other:?}"
        ))),
    }
}

/// Total size in bytes of the files under `dir`.
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut stack = vec![dir.to_path_buf()];
    let mut total = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                total += entry.metadata().expect("metadata").len();
            }
        }
    }
    total
}

/// A broker on `store` (a wrapper that injects faults or records calls),
/// run on the blocking pool as the sled store is, on `127.0.0.1:0`: its
/// address, its shutdown token and its task.
pub async fn start_on_store<S>(
    config: Config,
    store: S,
) -> (
    SocketAddr,
    CancellationToken,
    JoinHandle<Result<(), ServerError>>,
)
where
    S: roomq::storage::BlockingStore + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run_with_store(
        listener,
        config,
        Arc::new(roomq::storage::OnBlockingPool::new(store)),
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}
