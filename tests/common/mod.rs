//! Test harness: a real broker started in-process on 127.0.0.1:0 with a
//! temporary data directory, and helpers to talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use roomq::config::Config;
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
    c
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
    pub async fn start_on(addr: SocketAddr, config: Config, dir: Arc<TempDir>) -> TestBroker {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(listener, config.clone(), shutdown.clone()));
        TestBroker {
            addr,
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
            .args(["--listen", listen.as_str(), "--data-dir"])
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
