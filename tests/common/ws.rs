//! The HTTP listener in tests: a [`TestBroker`] that serves it too, raw
//! HTTP requests written by hand, and a raw WebSocket client that sends
//! exactly the bytes a test means (masked frames built here) and reads the
//! broker's frames (binary messages, pongs, the close code).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;
use roomq::config::Config;
use roomq::server::Server;
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection as Client, Deliveries};
use roomq_wire::codec::decode_server;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{TestBroker, WAIT};

/// The subprotocol the broker requires.
pub const SUBPROTOCOL: &str = "roomq.v1";
/// RFC 6455 §1.3's sample key, and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The masking key of every frame the raw client writes (RFC 6455 §5.7).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

// ---------------------------------------------------------------------------
// A broker with its HTTP listener.
// ---------------------------------------------------------------------------

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

impl TestBroker {
    /// Starts with the HTTP listener too, both on `127.0.0.1:0`; returns
    /// once `/readyz` says the broker serves.
    pub async fn start_ws(config: Config, dir: Arc<TempDir>) -> TestBroker {
        TestBroker::start_ws_on(any_port(), any_port(), config, dir, |s| s).await
    }

    /// [`TestBroker::start_ws`] with a default [`super::test_config`].
    pub async fn start_ws_default() -> TestBroker {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config = super::test_config(&dir);
        TestBroker::start_ws(config, dir).await
    }

    /// [`TestBroker::start_ws`] with the server built by `build` (to add
    /// middleware). [`TestBroker::restart_ws_same_ports`] brings it back
    /// without the middleware.
    pub async fn start_ws_server(
        config: Config,
        dir: Arc<TempDir>,
        build: impl FnOnce(Server) -> Server,
    ) -> TestBroker {
        TestBroker::start_ws_on(any_port(), any_port(), config, dir, build).await
    }

    /// Starts on these addresses (to come back on the same ports).
    pub async fn start_ws_on(
        tcp: SocketAddr,
        http: SocketAddr,
        config: Config,
        dir: Arc<TempDir>,
        build: impl FnOnce(Server) -> Server,
    ) -> TestBroker {
        let broker = TestBroker::start_ws_unready(tcp, http, config, dir, build).await;
        broker.wait_ready().await;
        broker
    }

    /// [`TestBroker::start_ws_on`] without waiting for `/readyz` (which a
    /// plain request cannot ask when the listener serves TLS).
    pub async fn start_ws_unready(
        tcp: SocketAddr,
        http: SocketAddr,
        mut config: Config,
        dir: Arc<TempDir>,
        build: impl FnOnce(Server) -> Server,
    ) -> TestBroker {
        super::sled_if_paused(&mut config);
        let listener = TcpListener::bind(tcp).await.expect("bind the TCP listener");
        let http_listener = TcpListener::bind(http)
            .await
            .expect("bind the HTTP listener");
        let addr = listener.local_addr().expect("addr");
        let http = http_listener.local_addr().expect("http addr");
        let shutdown = CancellationToken::new();
        let srv = build(Server::new(config.clone()).http(http_listener));
        let task = tokio::spawn(srv.run(listener, shutdown.clone()));
        TestBroker {
            addr,
            http: Some(http),
            dir,
            config,
            shutdown,
            task,
        }
    }

    /// Stops, then starts again on the same data directory and the same
    /// two ports, so that reconnecting clients find it.
    pub async fn restart_ws_same_ports(self) -> TestBroker {
        let (tcp, http) = (self.addr, self.http_addr());
        let (dir, config) = self.stop().await;
        TestBroker::start_ws_on(tcp, http, config, dir, |s| s).await
    }

    /// The HTTP listener's address (the broker must have been started with
    /// one).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("a broker started with its HTTP listener")
    }

    /// `ws://host:port`, which the SDK completes with `/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.http_addr())
    }

    /// Connect options for the WebSocket endpoint.
    pub fn ws_options(&self) -> ConnectOptions {
        ConnectOptions::new(self.ws_url())
    }

    /// An SDK connection over WebSocket.
    pub async fn connect_ws(&self, client_id: &str) -> (Client, Deliveries) {
        let opts = self.ws_options().client_id(client_id);
        Client::connect(opts).await.expect("connect over WebSocket")
    }

    /// Starts the shutdown without waiting for it ([`TestBroker::stop`]
    /// still waits for the end).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits (within [`WAIT`]) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let http = self.http_addr();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = get(http, "/readyz").await {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never said 200"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The real `roomqd` with its HTTP listener, both on 127.0.0.1 (`port` 0:
/// any free one for TCP; the HTTP port is always a free one). Returns the
/// daemon and the HTTP listener's address, read from its start-up line.
pub fn start_daemon_ws(dir: &std::path::Path, port: u16) -> (super::Daemon, SocketAddr) {
    use std::io::BufRead;
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomqd"))
        .args(["--listen", listen.as_str(), "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start roomqd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let field = |line: &str, name: &str| {
            line.split(name)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("roomqd serving") {
                continue;
            }
            if let (Some(tcp), Some(http)) = (field(&line, "listen="), field(&line, "http=")) {
                let _ = tx.send((tcp, http));
            }
        }
    });
    let (tcp, http) = rx.recv_timeout(WAIT).expect("roomqd reports its addresses");
    let daemon = super::Daemon {
        child,
        addr: tcp.parse().expect("TCP address"),
    };
    (daemon, http.parse().expect("HTTP address"))
}

// ---------------------------------------------------------------------------
// Raw HTTP.
// ---------------------------------------------------------------------------

/// A response as read off the socket.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP connection: requests written as given, responses parsed.
pub struct HttpConn {
    pub stream: TcpStream,
    /// Read but not yet consumed.
    pub buf: BytesMut,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Ok(HttpConn {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// An HTTP connection on a stream the test connected itself (to set
    /// socket options).
    pub fn from_stream(stream: TcpStream) -> HttpConn {
        HttpConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes; `Ok(false)` at the end of the stream.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, String> {
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
        match read {
            Err(_) => Err("nothing more within the wait".to_string()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
        }
    }

    /// Reads one response (within `wait`). `head_request`: the request was
    /// a HEAD, so the response has no body whatever its headers say.
    pub async fn response(
        &mut self,
        head_request: bool,
        wait: Duration,
    ) -> Result<HttpResponse, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill(deadline).await? {
                return Err(format!(
                    "the connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.advance(head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP/1 status line: {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {status_line:?}"))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("a header line without a colon: {line:?}"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 101 || status == 204 || status == 304 {
            return Ok(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("a bad content-length {len:?}"))?;
            while self.buf.len() < len {
                if !self.fill(deadline).await? {
                    return Err("the connection closed inside the body".into());
                }
            }
            response.body = self.buf.split_to(len).to_vec();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            response.body = self.chunked(deadline).await?;
        } else {
            // The body runs to the end of the stream.
            while self.fill(deadline).await? {}
            response.body = self.buf.split().to_vec();
        }
        Ok(response)
    }

    async fn line(&mut self, deadline: tokio::time::Instant) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.advance(i + 2);
                return Ok(line);
            }
            if !self.fill(deadline).await? {
                return Err("the connection closed inside a chunked body".into());
            }
        }
    }

    async fn chunked(&mut self, deadline: tokio::time::Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line(deadline).await?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("a bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line(deadline).await?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if !self.fill(deadline).await? {
                    return Err("the connection closed inside a chunk".into());
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }

    /// Whether the broker closes the connection within `wait`: `Ok(bytes)`
    /// with whatever it still sent (EOF or a reset both count as closed),
    /// `Err` if it stays open.
    pub async fn closed_within(&mut self, wait: Duration) -> Result<Vec<u8>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err(format!("still open after {wait:?}")),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(self.buf.split().to_vec()),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Sends `request` on a new connection and reads one response (within
/// [`WAIT`]).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<HttpResponse, String> {
    let mut conn = HttpConn::connect(addr).await?;
    conn.send(request)
        .await
        .map_err(|e| format!("write the request: {e}"))?;
    let head = request.starts_with(b"HEAD ");
    conn.response(head, WAIT).await
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, String> {
    exchange(addr, get_request(addr, path).as_bytes()).await
}

/// The text of `GET path` to `addr`, closing after the response.
pub fn get_request(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// A WebSocket upgrade request, header by header, so a test can leave one
/// out or change it.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    /// A valid upgrade of `/ws` on `host`, offering `roomq.v1`, with no
    /// `Origin` (a program, not a browser page).
    pub fn new(host: SocketAddr) -> UpgradeRequest {
        let headers = [
            ("Host", host.to_string()),
            ("Connection", "Upgrade".to_string()),
            ("Upgrade", "websocket".to_string()),
            ("Sec-WebSocket-Key", SAMPLE_KEY.to_string()),
            ("Sec-WebSocket-Version", "13".to_string()),
            ("Sec-WebSocket-Protocol", SUBPROTOCOL.to_string()),
        ];
        UpgradeRequest {
            method: "GET".to_string(),
            path: "/ws".to_string(),
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        }
    }

    /// Sets header `name` (replacing it if present).
    pub fn set(mut self, name: &str, value: &str) -> UpgradeRequest {
        self = self.without(name);
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Leaves header `name` out.
    pub fn without(mut self, name: &str) -> UpgradeRequest {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn method(mut self, method: &str) -> UpgradeRequest {
        self.method = method.to_string();
        self
    }

    pub fn path(mut self, path: &str) -> UpgradeRequest {
        self.path = path.to_string();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut text = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        for (n, v) in &self.headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    }
}

// ---------------------------------------------------------------------------
// WebSocket frames, built by hand.
// ---------------------------------------------------------------------------

/// The head of a client frame announcing `len` payload bytes: the first two
/// bytes, the extended length, and the masking key ([`MASK`]).
pub fn ws_head(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut v = head_unmasked(fin, opcode, len);
    if let Some(b) = v.get_mut(1) {
        *b |= 0x80;
    }
    v.extend_from_slice(&MASK);
    v
}

fn head_unmasked(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let first = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    let mut v = vec![first];
    if len < 126 {
        v.push(len as u8);
    } else if len <= u64::from(u16::MAX) {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&len.to_be_bytes());
    }
    v
}

/// A whole masked client frame.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ws_head(fin, opcode, payload.len() as u64);
    v.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    v
}

/// A whole frame without a mask (which a client must not send).
pub fn ws_frame_unmasked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = head_unmasked(fin, opcode, payload.len() as u64);
    v.extend_from_slice(payload);
    v
}

/// One binary message in one frame.
pub fn ws_binary(payload: &[u8]) -> Vec<u8> {
    ws_frame(true, op::BINARY, payload)
}

/// A client frame as one binary message.
pub fn ws_msg(frame: &pb::ClientFrame) -> Vec<u8> {
    ws_binary(&frame.encode_to_vec())
}

/// A close frame with `code` (and no reason).
pub fn ws_close(code: u16) -> Vec<u8> {
    ws_frame(true, op::CLOSE, &code.to_be_bytes())
}

/// What the broker sent, frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub enum WsIn {
    Binary(Bytes),
    Text(Bytes),
    /// The close code (if the frame had one) and the reason.
    Close(Option<u16>, String),
    Ping(Bytes),
    Pong(Bytes),
    /// A frame that a server must not send (masked, fragmented, unknown).
    Odd(String),
}

/// Everything a connection got until the broker closed it.
#[derive(Debug, Default)]
pub struct Closed {
    /// The binary messages, decoded.
    pub frames: Vec<pb::ServerFrame>,
    pub pongs: Vec<Bytes>,
    /// The close frame's code (`Some(None)`: a close frame without one).
    pub close: Option<Option<u16>>,
    pub close_reason: String,
    /// Frames after the close frame (there must be none).
    pub after_close: usize,
    /// The stream ended with a reset rather than a clean end.
    pub reset: bool,
}

impl Closed {
    pub fn close_code(&self) -> Option<u16> {
        self.close.flatten()
    }

    /// The last frame's error, if it is one.
    pub fn last_error(&self) -> Option<&pb::Error> {
        self.frames.last().and_then(super::wire::error_of)
    }
}

/// A WebSocket connection driven by hand.
pub struct RawWs {
    pub stream: TcpStream,
    /// Read but not yet parsed.
    buf: BytesMut,
}

impl RawWs {
    /// Sends `request` (and `then`, in the same write) and reads the
    /// response head; a 101 gives the connection.
    pub async fn upgrade_with(
        addr: SocketAddr,
        request: &UpgradeRequest,
        then: &[u8],
    ) -> Result<(HttpResponse, Option<RawWs>), String> {
        let mut conn = HttpConn::connect(addr).await?;
        let mut bytes = request.bytes();
        bytes.extend_from_slice(then);
        conn.send(&bytes)
            .await
            .map_err(|e| format!("write the upgrade: {e}"))?;
        let head = request.method.eq_ignore_ascii_case("HEAD");
        let response = conn.response(head, WAIT).await?;
        if response.status != 101 {
            return Ok((response, None));
        }
        let ws = RawWs {
            stream: conn.stream,
            buf: conn.buf,
        };
        Ok((response, Some(ws)))
    }

    /// The connection of a 101 response read with [`HttpConn::response`].
    pub fn from_http(conn: HttpConn) -> RawWs {
        RawWs {
            stream: conn.stream,
            buf: conn.buf,
        }
    }

    /// [`RawWs::upgrade_with`] without bytes behind the request.
    pub async fn upgrade(
        addr: SocketAddr,
        request: &UpgradeRequest,
    ) -> Result<(HttpResponse, Option<RawWs>), String> {
        RawWs::upgrade_with(addr, request, &[]).await
    }

    /// A valid upgrade of `/ws`; fails the test unless the broker answers
    /// 101 with the right accept key and the roomq subprotocol.
    pub async fn connect(addr: SocketAddr) -> RawWs {
        let (response, ws) = RawWs::upgrade(addr, &UpgradeRequest::new(addr))
            .await
            .expect("the upgrade request gets a response");
        check_switching(&response);
        ws.expect("a WebSocket after 101")
    }

    /// [`RawWs::connect`], then a handshake to `namespace` answered with
    /// HandshakeOk (request id 1).
    pub async fn connect_handshaken(addr: SocketAddr, namespace: &str, client_id: &str) -> RawWs {
        let mut ws = RawWs::connect(addr).await;
        ws.send_msg(&super::wire::handshake(1, namespace, client_id))
            .await
            .expect("send the handshake");
        let f = ws
            .next_server_frame(WAIT)
            .await
            .expect("a reply to the handshake");
        assert!(
            matches!(f.body, Some(pb::server_frame::Body::HandshakeOk(_))),
            "not a HandshakeOk: {f:?}"
        );
        ws
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes `frame` as one binary message.
    pub async fn send_msg(&mut self, frame: &pb::ClientFrame) -> std::io::Result<()> {
        self.send(&ws_msg(frame)).await
    }

    /// The next frame the broker sends; `Ok(None)` at the end of the stream.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<WsIn>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err(format!("nothing within {wait:?}")),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(format!(
                        "the stream ended inside a frame ({} bytes left)",
                        self.buf.len()
                    ))
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// A whole frame from the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<WsIn>, String> {
        let b = &self.buf[..];
        let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10) {
                Some(l) => {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(l);
                    (u64::from_be_bytes(x), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if masked {
            at += 4;
        }
        let len = usize::try_from(len).map_err(|_| "a frame longer than memory".to_string())?;
        if len > 256 * 1024 * 1024 {
            return Err(format!("the broker announces a frame of {len} bytes"));
        }
        if b.len() < at + len {
            return Ok(None);
        }
        self.buf.advance(at);
        let payload = self.buf.split_to(len).freeze();
        if masked || rsv != 0 || !fin {
            return Ok(Some(WsIn::Odd(format!(
                "opcode {opcode:#x}, fin {fin}, masked {masked}, rsv {rsv:#x}"
            ))));
        }
        Ok(Some(match opcode {
            op::BINARY => WsIn::Binary(payload),
            op::TEXT => WsIn::Text(payload),
            op::PING => WsIn::Ping(payload),
            op::PONG => WsIn::Pong(payload),
            op::CLOSE => {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                WsIn::Close(code, reason.into_owned())
            }
            other => WsIn::Odd(format!("opcode {other:#x}")),
        }))
    }

    /// The next binary message, decoded; anything else is an error.
    pub async fn next_server_frame(&mut self, wait: Duration) -> Result<pb::ServerFrame, String> {
        match self.next(wait).await? {
            Some(WsIn::Binary(b)) => {
                decode_server(b).map_err(|e| format!("not a server frame: {e}"))
            }
            other => Err(format!("expected a binary message, got {other:?}")),
        }
    }

    /// Everything until the broker ends the stream (within `wait`).
    pub async fn until_closed(&mut self, wait: Duration) -> Result<Closed, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut closed = Closed::default();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = match self.next(left).await {
                Ok(n) => n,
                Err(e) if e.starts_with("read:") => {
                    // A reset: what was read before it still counts.
                    closed.reset = true;
                    return Ok(closed);
                }
                Err(e) => return Err(format!("{e}; so far: {closed:?}")),
            };
            let Some(frame) = next else {
                return Ok(closed);
            };
            if closed.close.is_some() {
                closed.after_close += 1;
                continue;
            }
            match frame {
                WsIn::Binary(b) => closed
                    .frames
                    .push(decode_server(b).map_err(|e| format!("not a server frame: {e}"))?),
                WsIn::Pong(p) => closed.pongs.push(p),
                WsIn::Close(code, reason) => {
                    closed.close = Some(code);
                    closed.close_reason = reason;
                }
                other => return Err(format!("unexpected {other:?}; so far: {closed:?}")),
            }
        }
    }
}

/// Fails the test unless `response` accepts the sample key's upgrade with
/// the roomq subprotocol.
pub fn check_switching(response: &HttpResponse) {
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(SAMPLE_ACCEPT),
        "{response:?}"
    );
    assert_eq!(
        response.header("sec-websocket-protocol"),
        Some(SUBPROTOCOL),
        "{response:?}"
    );
    assert!(
        response
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
}
