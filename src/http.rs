//! The HTTP listener: `GET /ws` upgrades to a WebSocket that carries the
//! same protocol as the TCP listener, `/healthz` and `/readyz` answer load
//! balancers, `/metrics` answers Prometheus, and `/` serves the web page embedded in the binary (or the
//! files of `http.static_dir`).
//!
//! HTTP/1.1 is served by hyper; the WebSocket upgrade and frames by
//! fastwebsockets (see [`crate::ws`]). A connection counts against
//! `limits.max_connections` together with the TCP listener's, from its
//! accept until it closes, upgraded or not. The handshake deadline starts at
//! the accept, so a slow TLS handshake or HTTP upgrade spends it; request
//! heads must arrive within the same time (`limits.handshake_timeout_ms`)
//! and fit in `http.max_header_bytes`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tracing::{debug, info, warn};

use crate::broker::BrokerHandle;
use crate::config::{Config, HttpConfig, MetricsConfig};
use crate::server::Readiness;
use crate::tenancy::Tenants;
use crate::ws::{WsSource, SUBPROTOCOL};
use crate::{session, tls};

/// Every response body: small fixed ones, or files from `static_dir`.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The files served when no `static_dir` is set, built into the binary:
/// path, content type, bytes. `/` serves the first.
const EMBEDDED: &[(&str, &str, &[u8])] = &[
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("web/index.html"),
    ),
    (
        "/chat.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/chat.js"),
    ),
    (
        "/chat.css",
        "text/css; charset=utf-8",
        include_bytes!("web/chat.css"),
    ),
];

/// Sent with every response. Pages may load only what this listener serves
/// and talk only to it (`'self'` covers `ws:`/`wss:` to the same host).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'self'";

/// Why an origin list entry is not valid.
#[derive(Debug, thiserror::Error)]
#[error(
    "http.allowed_origins: {entry:?} is not an origin (scheme://host[:port], a port of *, or *)"
)]
pub struct OriginError {
    entry: String,
}

/// One entry of `http.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginRule {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

/// The origins whose pages may open a WebSocket.
#[derive(Debug, Clone)]
pub struct Origins {
    any: bool,
    rules: Vec<OriginRule>,
}

/// An origin's parts, with the scheme's default port filled in.
fn parse_origin(text: &str) -> Option<(String, String, u16)> {
    let uri: Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return None;
    }
    let port = match (uri.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "http") => 80,
        (None, "https") => 443,
        (None, _) => return None,
    };
    Some((scheme, host, port))
}

/// Whether `host` (as [`Uri::host`] gives it) is an address or `localhost`,
/// names that DNS rebinding cannot take over.
fn cannot_be_rebound(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<std::net::IpAddr>().is_ok()
}

impl Origins {
    /// Parses `http.allowed_origins`.
    pub fn parse(entries: &[String]) -> Result<Origins, OriginError> {
        let mut origins = Origins {
            any: false,
            rules: Vec::new(),
        };
        for entry in entries {
            let bad = || OriginError {
                entry: entry.clone(),
            };
            let text = entry.trim();
            if text == "*" {
                origins.any = true;
                continue;
            }
            let rule = match text.strip_suffix(":*") {
                Some(base) => {
                    let (scheme, host, _) = parse_origin(base).ok_or_else(bad)?;
                    OriginRule {
                        scheme,
                        host,
                        port: None,
                    }
                }
                None => {
                    let (scheme, host, port) = parse_origin(text).ok_or_else(bad)?;
                    OriginRule {
                        scheme,
                        host,
                        port: Some(port),
                    }
                }
            };
            origins.rules.push(rule);
        }
        Ok(origins)
    }

    /// Whether a WebSocket upgrade with these headers may proceed. A page
    /// of this listener itself (the `Origin` names the `Host` it was sent
    /// to) is always allowed; a request without `Origin` comes from a
    /// program, not a browser page, and is allowed too.
    fn allow(&self, headers: &HeaderMap, tls: bool) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if self.any {
            return true;
        }
        let Some((scheme, host, port)) = origin.to_str().ok().and_then(parse_origin) else {
            // `null` (a sandboxed or file page) and anything unparsable.
            return false;
        };
        let own_scheme = if tls { "https" } else { "http" };
        // The Host header is the browser's, so a page of another site can
        // name its own host there after DNS rebinding. Only an address or
        // `localhost` cannot be rebound: a listener reached by a DNS name
        // lists its origin in `http.allowed_origins`.
        let same_origin = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| parse_origin(&format!("{own_scheme}://{h}")))
            .is_some_and(|own| {
                own == (scheme.clone(), host.clone(), port) && cannot_be_rebound(&own.1)
            });
        same_origin
            || self
                .rules
                .iter()
                .any(|r| r.scheme == scheme && r.host == host && r.port.is_none_or(|p| p == port))
    }
}

/// What every connection of the HTTP listener shares.
pub struct HttpShared {
    pub config: Arc<Config>,
    pub tenants: Arc<Tenants>,
    pub broker: BrokerHandle,
    /// The broker's shutdown: upgraded sessions end with it.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Shared with the TCP listener.
    pub connections: Arc<Semaphore>,
    pub tls: Option<TlsAcceptor>,
    pub readiness: Arc<Readiness>,
    pub origins: Origins,
}

/// One accepted connection's view of the listener.
struct Conn {
    shared: Arc<HttpShared>,
    peer: SocketAddr,
    /// The roomq handshake must arrive by then (counted from the accept).
    deadline: Instant,
    /// Held until the connection closes; an upgraded session holds a clone.
    permit: Arc<OwnedSemaphorePermit>,
    /// Accepted beyond `max_connections` for health checks only: it may ask
    /// `/healthz` and `/readyz` and nothing else.
    probe_only: bool,
    static_dir: Option<ServeDir>,
}

/// Serves HTTP on `listener` until `stop` is cancelled. The broker keeps
/// this listener up while it drains, so `/readyz` can answer 503; `stop`
/// comes after the drain.
pub async fn serve(listener: TcpListener, shared: Arc<HttpShared>, stop: CancellationToken) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(http = %local, tls = shared.tls.is_some(), "HTTP listener serving /ws, /healthz, /readyz, /metrics");
    // Connections are tracked here and stop with `stop`; sessions on
    // upgraded connections are the broker's (`shared.tracker`).
    let connections = TaskTracker::new();
    // A broker at its connection limit is full, not dead: a few more
    // connections may still ask whether it is healthy and ready.
    let probes = Arc::new(Semaphore::new(
        shared.config.http.max_probe_connections as usize,
    ));
    let static_dir = match &shared.config.http.static_dir {
        d if d.as_os_str().is_empty() => None,
        d => Some(ServeDir::new(d).append_index_html_on_directories(true)),
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let accepted_at = Instant::now();
        let (permit, probe_only) = match shared.connections.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => match probes.clone().try_acquire_owned() {
                Ok(p) => (p, true),
                Err(_) => {
                    warn!(%peer, max_connections = shared.config.limits.max_connections, "HTTP connection refused: at the limit");
                    connections.spawn(refuse_at_limit(stream, shared.tls.clone(), stop.clone()));
                    continue;
                }
            },
        };
        let conn = Arc::new(Conn {
            shared: shared.clone(),
            peer,
            deadline: accepted_at + shared.config.limits.handshake_timeout(),
            permit: Arc::new(permit),
            probe_only,
            static_dir: static_dir.clone(),
        });
        let stop = stop.clone();
        connections.spawn(async move {
            match conn.shared.tls.clone() {
                None => serve_conn(TokioIo::new(stream), conn, stop).await,
                Some(acceptor) => {
                    let stream = tls::accept(
                        &acceptor,
                        stream,
                        peer,
                        conn.deadline,
                        &conn.shared.shutdown,
                    )
                    .await;
                    if let Some(stream) = stream {
                        serve_conn(TokioIo::new(stream), conn, stop).await;
                    }
                }
            }
        });
    }
    connections.close();
    // Each connection finishes within a second of `stop`.
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}

/// Serves HTTP requests on one connection until it closes, is upgraded, or
/// the listener stops.
async fn serve_conn<I>(io: TokioIo<I>, conn: Arc<Conn>, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_config = &conn.shared.config.http;
    let service = {
        let conn = conn.clone();
        service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(route(req, &conn).await) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(conn.shared.config.limits.handshake_timeout())
        .max_buf_size(http_config.max_header_bytes as usize)
        .keep_alive(true);
    let served = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(1), served.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Answers one request.
async fn route(req: Request<Incoming>, conn: &Arc<Conn>) -> Response<Body> {
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    let mut response = match (req.method(), req.uri().path()) {
        _ if conn.probe_only && !probe => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker is at its connection limit\n",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        (&Method::GET, "/ws") => upgrade(req, conn),
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(req.headers(), conn).await,
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if conn.shared.readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                let state = conn.shared.readiness.describe();
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("{state}\n"))
            }
        }
        (&Method::GET | &Method::HEAD, _) => static_file(req, conn).await,
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in
/// constant time).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

/// Why `/metrics` is refused to `peer` with `headers`, if it is: off
/// (404); no token set and the peer is not loopback (403; an IPv4 peer
/// seen on a dual-stack listener as `::ffff:127.0.0.1` is loopback); a
/// token set and not given (401).
fn metrics_refusal(
    settings: &MetricsConfig,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    if !settings.enabled {
        return Some(text(
            StatusCode::NOT_FOUND,
            "metrics are off (metrics.enabled)\n",
        ));
    }
    if settings.token.is_empty() {
        if !peer.to_canonical().is_loopback() {
            return Some(text(
                StatusCode::FORBIDDEN,
                "set metrics.token to scrape from another host\n",
            ));
        }
    } else if !bearer_matches(headers, &settings.token) {
        let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"roomq metrics\""),
        );
        return Some(r);
    }
    None
}

/// `/metrics`: the Prometheus text exposition, or OpenMetrics when the
/// `Accept` header prefers it. With `metrics.token` set, a
/// request must carry it as a bearer token; without one, only loopback
/// peers are answered. The broker actor takes a snapshot for the gauges
/// of its tables; counters and histograms are read from the registry.
async fn metrics(headers: &HeaderMap, conn: &Conn) -> Response<Body> {
    let shared = &conn.shared;
    if let Some(refusal) = metrics_refusal(&shared.config.metrics, conn.peer.ip(), headers) {
        if refusal.status() == StatusCode::FORBIDDEN {
            info!(peer = %conn.peer, "/metrics refused: no metrics.token set, and the peer is not loopback");
        }
        return refusal;
    }
    let registry = &shared.tenants.metrics;
    let stats = shared.broker.stats(
        registry.max_room_series(),
        roomq_wire::pb::StatsOrder::Backlog,
    );
    match tokio::time::timeout(Duration::from_secs(5), stats).await {
        Ok(Ok(stats)) => registry.update(&stats),
        _ => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker did not answer\n",
            )
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match registry.encode(crate::metrics::Exposition::negotiate(accept)) {
        Ok((body, content_type)) => bytes_response(StatusCode::OK, content_type, Bytes::from(body)),
        Err(e) => {
            warn!(error = %e, "metrics not encoded");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    bytes_response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body.to_string()),
    )
}

fn bytes_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The embedded page, or a file of `static_dir`.
async fn static_file(req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    match &conn.static_dir {
        None => {
            let path = match req.uri().path() {
                "/" => "/index.html",
                p => p,
            };
            match EMBEDDED.iter().find(|(p, _, _)| *p == path) {
                Some((_, content_type, body)) => {
                    bytes_response(StatusCode::OK, content_type, Bytes::from_static(body))
                }
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
        Some(dir) => match dir.clone().try_call(req).await {
            Ok(r) => r.map(|b| b.boxed_unsync()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                text(StatusCode::NOT_FOUND, "not found\n")
            }
            Err(e) => {
                warn!(error = %e, "static file not served");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        },
    }
}

/// Whether the request offers the roomq subprotocol.
fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Whether `Sec-WebSocket-Key` is what RFC 6455 §4.1 asks of a client: 16
/// random bytes in base64, which is 22 characters and `==`.
fn valid_key(headers: &HeaderMap) -> bool {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return false;
    };
    let key = key.as_bytes();
    key.len() == 24
        && key.ends_with(b"==")
        && key
            .iter()
            .take(22)
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Checks an upgrade request and, if it may proceed, answers 101 and
/// starts a session on the upgraded connection. A refusal closes the
/// connection: a client that got one has no reason to keep it.
fn upgrade(req: Request<Incoming>, conn: &Arc<Conn>) -> Response<Body> {
    let mut response = upgrade_or_refuse(req, conn);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn upgrade_or_refuse(mut req: Request<Incoming>, conn: &Arc<Conn>) -> Response<Body> {
    let shared = &conn.shared;
    let peer = conn.peer;
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(
            StatusCode::BAD_REQUEST,
            "/ws takes a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)\n",
        );
    }
    if !offers_subprotocol(req.headers()) {
        info!(%peer, "WebSocket upgrade refused: subprotocol not offered");
        return text(
            StatusCode::BAD_REQUEST,
            &format!("offer the WebSocket subprotocol {SUBPROTOCOL}\n"),
        );
    }
    if !shared.origins.allow(req.headers(), shared.tls.is_some()) {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("?")
            .to_string();
        info!(%peer, %origin, "WebSocket upgrade refused: origin not allowed");
        return text(
            StatusCode::FORBIDDEN,
            "this origin may not open a WebSocket here (http.allowed_origins)\n",
        );
    }
    if !shared.readiness.is_ready() {
        let state = shared.readiness.describe();
        return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{state}\n"));
    }
    if !valid_key(req.headers()) {
        info!(%peer, "WebSocket upgrade refused: bad Sec-WebSocket-Key");
        return text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)\n",
        );
    }
    let (response, upgrading) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            info!(%peer, error = %e, "WebSocket upgrade refused");
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    };
    let conn = conn.clone();
    shared.tracker.spawn(async move {
        let upgraded = tokio::select! {
            _ = conn.shared.shutdown.cancelled() => return,
            u = tokio::time::timeout_at(conn.deadline, upgrading) => u,
        };
        match upgraded {
            Ok(Ok(ws)) => run_session(ws.into_inner().into_inner(), conn).await,
            Ok(Err(e)) => debug!(peer = %conn.peer, error = %e, "WebSocket upgrade failed"),
            Err(_) => {
                debug!(peer = %conn.peer, "WebSocket upgrade not done by the handshake deadline")
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Response::from_parts(
        parts,
        Full::default().map_err(|e| match e {}).boxed_unsync(),
    )
}

/// Runs a roomq session on an upgraded connection, with owned socket
/// halves where the stream underneath allows it.
async fn run_session(upgraded: hyper::upgrade::Upgraded, conn: Arc<Conn>) {
    let shared = conn.shared.clone();
    let limits = &shared.config.limits;
    let max_fragments = shared.config.http.max_ws_fragments;
    let first = limits.max_handshake_bytes as usize;
    // Bytes hyper read past the upgrade request come first.
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            let read = std::io::Cursor::new(detach(parts.read_buf)).chain(read);
            let (source, framing) = WsSource::new(read, first, max_fragments);
            return start(source, write, framing, &conn).await;
        }
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            let (read, write) = tokio::io::split(parts.io.into_inner());
            let read = std::io::Cursor::new(detach(parts.read_buf)).chain(read);
            let (source, framing) = WsSource::new(read, first, max_fragments);
            start(source, write, framing, &conn).await;
        }
        Err(u) => {
            let (read, write) = tokio::io::split(TokioIo::new(u));
            let (source, framing) = WsSource::new(read, first, max_fragments);
            start(source, write, framing, &conn).await;
        }
    }
}

/// Bytes hyper read past the upgrade request, in an allocation of their
/// own: the slice may point into hyper's read buffer, which would otherwise
/// stay allocated for the session's whole life.
fn detach(read_buf: Bytes) -> Bytes {
    if read_buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&read_buf)
    }
}

async fn start<R, W>(source: WsSource<R>, write: W, framing: crate::ws::WsFraming, conn: &Conn)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = &conn.shared;
    // The permit lives as long as the session.
    let _permit = conn.permit.clone();
    session::serve(
        source,
        write,
        framing,
        conn.peer,
        shared.config.clone(),
        shared.tenants.clone(),
        shared.broker.clone(),
        shared.shutdown.clone(),
        shared.tracker.clone(),
        conn.deadline,
        crate::transport::Transport::WebSocket,
    )
    .await;
}

/// Answers a connection beyond `max_connections` with 503, within a second.
async fn refuse_at_limit(stream: TcpStream, tls: Option<TlsAcceptor>, stop: CancellationToken) {
    let service = service_fn(|_req: Request<Incoming>| async {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is at its connection limit\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(r)
    });
    let refuse = async {
        let mut builder = http1::Builder::new();
        builder.keep_alive(false);
        match tls {
            None => {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(stream).await {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::timeout(Duration::from_secs(1), refuse) => {}
    }
}

/// Checks the `[http]` settings that [`Config::validate`] cannot.
pub fn validate(config: &HttpConfig) -> Result<Origins, OriginError> {
    Origins::parse(&config.allowed_origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_without_a_token_answer_loopback_peers_only() {
        let settings = MetricsConfig {
            enabled: true,
            token: String::new(),
            ..MetricsConfig::default()
        };
        let none = HeaderMap::new();
        let status = |ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            metrics_refusal(&settings, ip, &none).map(|r| r.status())
        };
        assert_eq!(status("127.0.0.1"), None);
        assert_eq!(status("127.8.9.10"), None);
        assert_eq!(status("::1"), None);
        assert_eq!(status("::ffff:127.0.0.1"), None);
        assert_eq!(status("10.0.0.7"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status("192.168.1.2"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status("::ffff:10.0.0.7"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status("2001:db8::1"), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn metrics_with_a_token_need_it_from_every_peer_and_off_is_404() {
        let settings = MetricsConfig {
            enabled: true,
            token: "s3cret".into(),
            ..MetricsConfig::default()
        };
        let mut good = HeaderMap::new();
        good.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        let mut bad = HeaderMap::new();
        bad.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        let far: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let near: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(metrics_refusal(&settings, far, &good).is_none());
        let status = |ip, h| metrics_refusal(&settings, ip, h).map(|r| r.status());
        assert_eq!(status(far, &bad), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(near, &HeaderMap::new()),
            Some(StatusCode::UNAUTHORIZED)
        );
        let off = MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        };
        let r = metrics_refusal(&off, near, &good).map(|r| r.status());
        assert_eq!(r, Some(StatusCode::NOT_FOUND));
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn default_origins_allow_loopback_pages_and_refuse_others() {
        let origins = Origins::parse(&HttpConfig::default().allowed_origins).unwrap();
        let host = "broker.example:7421";
        assert!(origins.allow(&headers(None, host), false));
        assert!(origins.allow(&headers(Some("http://localhost:5173"), host), false));
        assert!(origins.allow(&headers(Some("http://127.0.0.1"), host), false));
        assert!(origins.allow(&headers(Some("https://[::1]:8443"), host), false));
        // The page this listener served, reached by address or localhost.
        let by_ip = "10.1.2.3:7421";
        assert!(origins.allow(&headers(Some("http://10.1.2.3:7421"), by_ip), false));
        assert!(!origins.allow(&headers(Some("https://10.1.2.3:7421"), by_ip), false));
        // Reached by a DNS name, the same rule would let a rebound name in.
        assert!(!origins.allow(&headers(Some("http://broker.example:7421"), host), false));
        assert!(!origins.allow(&headers(Some("http://evil.example"), host), false));
        assert!(!origins.allow(&headers(Some("null"), host), false));
        assert!(!origins.allow(&headers(Some("http://localhost.evil.example"), host), false));
    }

    #[test]
    fn explicit_origins_match_scheme_host_and_port() {
        let list = [
            "https://app.example".to_string(),
            "http://dev.example:*".to_string(),
        ];
        let origins = Origins::parse(&list).unwrap();
        let host = "roomq.internal";
        assert!(origins.allow(&headers(Some("https://app.example"), host), true));
        assert!(origins.allow(&headers(Some("https://app.example:443"), host), true));
        assert!(!origins.allow(&headers(Some("https://app.example:8443"), host), true));
        assert!(!origins.allow(&headers(Some("http://app.example"), host), true));
        assert!(origins.allow(&headers(Some("http://dev.example:3000"), host), true));
        let any = Origins::parse(&["*".to_string()]).unwrap();
        assert!(any.allow(&headers(Some("http://anything.example"), host), false));
        assert!(Origins::parse(&["not an origin".to_string()]).is_err());
        assert!(Origins::parse(&["https://x.example/path".to_string()]).is_err());
    }
}
