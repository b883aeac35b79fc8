//! The HTTP listener (issue 12) with hand-written requests: what `/ws`
//! refuses before the upgrade (no upgrade headers, no subprotocol, a foreign
//! Origin, a bad key or version), malformed and oversized request heads,
//! heads that trickle in, an upgraded connection that never sends its
//! handshake, other methods, `/healthz`, `/readyz` (also while draining),
//! the embedded page and `http.static_dir`.
//!
//! Deadlines are tested on paused time: virtual seconds pass in no real
//! time while the broker waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::wire::{error_of, handshake, request};
use common::ws::*;
use common::*;
use roomq::tenancy::middleware::{ConnectCtx, Middleware, Verdict};
use roomq_client::{proto as pb, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A virtual day: the bound of waits under paused time.
const A_DAY: Duration = Duration::from_secs(24 * 3600);

async fn upgrade_status(http: SocketAddr, req: UpgradeRequest) -> HttpResponse {
    let (response, _ws) = RawWs::upgrade(http, &req).await.unwrap();
    response
}

/// Sends `raw` on a new connection; returns the response and whether the
/// broker then closed the connection (within [`WAIT`]).
async fn raw_exchange(http: SocketAddr, raw: &[u8]) -> (HttpResponse, bool) {
    let mut conn = HttpConn::connect(http).await.unwrap();
    conn.send(raw).await.unwrap();
    let response = conn.response(false, WAIT).await.unwrap();
    let closed = conn.closed_within(WAIT).await.is_ok();
    (response, closed)
}

// ---------------------------------------------------------------------------
// What /ws refuses before the upgrade.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ws_without_upgrade_headers_is_400() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let r = get(http, "/ws").await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    // Upgrade headers missing one of the two.
    for without in ["Connection", "Upgrade"] {
        let r = upgrade_status(http, UpgradeRequest::new(http).without(without)).await;
        assert_eq!(r.status, 400, "without {without}: {r:?}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_upgrade_must_offer_the_roomq_subprotocol() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let r = upgrade_status(
        http,
        UpgradeRequest::new(http).without("Sec-WebSocket-Protocol"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body_text().contains(SUBPROTOCOL), "{r:?}");
    let r = upgrade_status(
        http,
        UpgradeRequest::new(http).set("Sec-WebSocket-Protocol", "chat, superchat"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    // Offered among others: selected.
    let r = upgrade_status(
        http,
        UpgradeRequest::new(http).set("Sec-WebSocket-Protocol", "chat, roomq.v1"),
    )
    .await;
    check_switching(&r);
    // No extension is negotiated (frames with RSV bits set are refused).
    let r = upgrade_status(
        http,
        UpgradeRequest::new(http).set(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ),
    )
    .await;
    check_switching(&r);
    assert_eq!(r.header("sec-websocket-extensions"), None, "{r:?}");
    broker.stop().await;
}

#[tokio::test]
async fn foreign_origins_are_refused_with_403_and_allowed_ones_upgrade() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let with_origin = |origin: &str| UpgradeRequest::new(http).set("Origin", origin);
    for origin in [
        "http://evil.example",
        "https://evil.example:443",
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example:80",
        "file://",
    ] {
        let r = upgrade_status(http, with_origin(origin)).await;
        assert_eq!(r.status, 403, "Origin {origin}: {r:?}");
    }
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "https://localhost",
        "http://[::1]:5173",
        &format!("http://{http}"),
    ] {
        let r = upgrade_status(http, with_origin(origin)).await;
        check_switching(&r);
    }
    // A page this listener served: Origin names the Host it was sent to,
    // and the host is an address or localhost (which DNS rebinding cannot
    // take).
    let with_host = |host: &str, origin: &str| {
        UpgradeRequest::new(http)
            .set("Host", host)
            .set("Origin", origin)
    };
    check_switching(
        &upgrade_status(http, with_host("10.0.0.7:7421", "http://10.0.0.7:7421")).await,
    );
    check_switching(
        &upgrade_status(http, with_host("[fd00::7]:7421", "http://[fd00::7]:7421")).await,
    );
    for (host, origin, why) in [
        ("10.0.0.7:7421", "https://10.0.0.7:7421", "another scheme"),
        ("10.0.0.7:7421", "http://10.0.0.7:7422", "another port"),
        ("10.0.0.7:7421", "http://10.0.0.8:7421", "another address"),
        // A DNS name: a rebound page of another site would send these.
        (
            "roomq.example:7421",
            "http://roomq.example:7421",
            "a DNS name",
        ),
        (
            "rebind.evil.example",
            "http://rebind.evil.example",
            "a DNS name, default port",
        ),
    ] {
        let r = upgrade_status(http, with_host(host, origin)).await;
        assert_eq!(r.status, 403, "Host {host}, Origin {origin} ({why}): {r:?}");
    }
    broker.stop().await;

    // A configured list replaces the default one.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.http.allowed_origins = vec!["https://app.example".into()];
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();
    let with_origin = |origin: &str| UpgradeRequest::new(http).set("Origin", origin);
    check_switching(&upgrade_status(http, with_origin("https://app.example")).await);
    check_switching(&upgrade_status(http, with_origin("https://app.example:443")).await);
    for origin in ["http://app.example", "http://localhost:3000"] {
        let r = upgrade_status(http, with_origin(origin)).await;
        assert_eq!(r.status, 403, "Origin {origin}: {r:?}");
    }
    // The listener's own address is still its own origin; a DNS name must
    // be listed.
    let with_host = |host: &str, origin: &str| {
        UpgradeRequest::new(http)
            .set("Host", host)
            .set("Origin", origin)
    };
    check_switching(
        &upgrade_status(http, with_host("10.0.0.7:7421", "http://10.0.0.7:7421")).await,
    );
    check_switching(
        &upgrade_status(http, with_host("localhost:7421", "http://localhost:7421")).await,
    );
    let r = upgrade_status(
        http,
        with_host("roomq.example:7421", "http://roomq.example:7421"),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // No Origin: a program, not a browser page.
    check_switching(&upgrade_status(http, UpgradeRequest::new(http)).await);
    broker.stop().await;
}

#[tokio::test]
async fn a_missing_key_or_a_version_other_than_13_is_400() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let cases = [
        (
            "no Sec-WebSocket-Key",
            UpgradeRequest::new(http).without("Sec-WebSocket-Key"),
        ),
        (
            "no Sec-WebSocket-Version",
            UpgradeRequest::new(http).without("Sec-WebSocket-Version"),
        ),
        (
            "Sec-WebSocket-Version: 8",
            UpgradeRequest::new(http).set("Sec-WebSocket-Version", "8"),
        ),
        (
            "Sec-WebSocket-Version: 14",
            UpgradeRequest::new(http).set("Sec-WebSocket-Version", "14"),
        ),
    ];
    for (what, req) in cases {
        let r = upgrade_status(http, req).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    broker.stop().await;
}

/// RFC 6455 §4.2.1: the key is 16 bytes in base64; a request with anything
/// else is answered with an HTTP error (issue 12: "an upgrade with a
/// missing or bad key ... a clear HTTP error").
#[tokio::test]
async fn a_key_that_is_not_16_bytes_of_base64_is_400() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    for key in ["", "not a key", "AAAA", "dGhlIHNhbXBsZSBub25jZQ"] {
        let r = upgrade_status(
            http,
            UpgradeRequest::new(http).set("Sec-WebSocket-Key", key),
        )
        .await;
        assert_eq!(r.status, 400, "key {key:?}: {r:?}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn other_methods_get_405() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    for (method, path) in [
        ("POST", "/ws"),
        ("POST", "/"),
        ("PUT", "/healthz"),
        ("DELETE", "/index.html"),
    ] {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {http}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = exchange(http, raw.as_bytes()).await.unwrap();
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
    }
    // An upgrade by POST is not one.
    let r = upgrade_status(http, UpgradeRequest::new(http).method("POST")).await;
    assert_eq!(r.status, 405, "{r:?}");
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// Malformed and oversized heads, and heads that do not arrive.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_request_is_400_and_closed() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let (r, closed) = raw_exchange(http, raw).await;
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(raw));
        assert!(
            closed,
            "{:?}: the connection stays open",
            String::from_utf8_lossy(raw)
        );
    }
    // The listener still serves.
    assert_eq!(get(http, "/healthz").await.unwrap().status, 200);
    broker.stop().await;
}

#[tokio::test]
async fn a_head_larger_than_max_header_bytes_is_refused_and_closed() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.http.max_header_bytes = 8192;
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();

    // Just under the limit: served.
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nX-Pad: ");
    let mut ok = head.clone().into_bytes();
    ok.extend(vec![b'a'; 6000]);
    ok.extend_from_slice(b"\r\n\r\n");
    let r = exchange(http, &ok).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Exactly max_header_bytes without the end of the head: refused once
    // all of it is read (so no unread bytes turn the close into a reset).
    let mut big = head.into_bytes();
    big.resize(8192, b'a');
    let (r, closed) = raw_exchange(http, &big).await;
    assert!(r.status == 431 || r.status == 400, "{r:?}");
    assert!(closed, "the connection stays open");

    // Many small headers over the limit, on an upgrade.
    let mut req = UpgradeRequest::new(http);
    for i in 0..400 {
        req = req.set(&format!("X-H{i}"), "0123456789");
    }
    let mut conn = HttpConn::connect(http).await.unwrap();
    let _ = conn.send(&req.bytes()).await;
    match conn.response(false, WAIT).await {
        Ok(r) => assert!(r.status == 431 || r.status == 400, "{r:?}"),
        // Closed before the whole request was read: a reset may eat the
        // response, but the connection must be closed.
        Err(e) => assert!(e.contains("closed") || e.contains("read"), "{e}"),
    }
    assert!(conn.closed_within(WAIT).await.is_ok());
    assert_eq!(get(http, "/healthz").await.unwrap().status, 200);
    broker.stop().await;
}

/// Connects, writes `first`, then one byte of `rest` every `every`, and
/// reads until the broker closes the connection (within a virtual day).
/// Returns how long after the connect it closed, and what it sent.
async fn trickle(
    http: SocketAddr,
    first: &[u8],
    rest: &[u8],
    every: Duration,
) -> (Duration, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let stream = TcpStream::connect(http).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let writer = tokio::spawn(async move {
        if write.write_all(&first).await.is_err() {
            return;
        }
        for b in rest {
            tokio::time::sleep(every).await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Keep the write half open: the head is still not complete.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(A_DAY, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let after = start.elapsed();
    writer.abort();
    assert!(closed.is_ok(), "never closed");
    (after, got)
}

#[tokio::test(start_paused = true)]
async fn request_heads_that_do_not_arrive_in_time_are_closed_at_the_deadline() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let deadline = broker.config.limits.handshake_timeout();
    let upgrade = UpgradeRequest::new(http).bytes();
    // The head without its final CRLF: never complete.
    let endless = &upgrade[..upgrade.len() - 2];
    let mut long_header = b"GET /healthz HTTP/1.1\r\nX-Slow: ".to_vec();
    long_header.extend(vec![b'a'; 1000]);
    let cases: [(&str, &[u8], &[u8], Duration); 4] = [
        ("nothing at all", b"", b"", Duration::from_secs(1)),
        (
            "an upgrade request, a byte every half second",
            &endless[..10],
            &endless[10..],
            Duration::from_millis(500),
        ),
        (
            "a header that never ends, a byte every 100 ms",
            &long_header[..30],
            &long_header[30..],
            Duration::from_millis(100),
        ),
        (
            "a whole upgrade request but the final CRLF",
            endless,
            b"",
            Duration::from_secs(1),
        ),
    ];
    for (what, first, rest, every) in cases {
        let (after, got) = trickle(http, first, rest, every).await;
        assert!(
            after >= deadline && after < deadline + Duration::from_secs(1),
            "{what}: closed after {after:?}"
        );
        // Nothing, or an HTTP error: never a switch or a page.
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(get(http, "/healthz").await.unwrap().status, 200);
    broker.stop().await;
}

/// Reads the only frame of a connection refused for its handshake deadline.
async fn expect_handshake_timeout(ws: &mut RawWs) {
    let closed = ws.until_closed(A_DAY).await.unwrap();
    assert_eq!(closed.frames.len(), 1, "{closed:?}");
    let e = error_of(&closed.frames[0]).expect("an error frame");
    assert_eq!(
        e.error_code(),
        Some(ErrorCode::HandshakeTimeout),
        "{closed:?}"
    );
    assert!(e.fatal);
    assert_eq!(closed.frames[0].request_id, 0);
    assert_eq!(closed.close_code(), Some(1008), "{closed:?}");
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_without_a_handshake_is_closed_at_the_deadline_from_the_accept() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let deadline = broker.config.limits.handshake_timeout();
    for upgrade_after in [Duration::ZERO, Duration::from_secs(3)] {
        let start = Instant::now();
        let mut conn = HttpConn::connect(http).await.unwrap();
        tokio::time::sleep(upgrade_after).await;
        conn.send(&UpgradeRequest::new(http).bytes()).await.unwrap();
        let r = conn.response(false, A_DAY).await.unwrap();
        check_switching(&r);
        let mut ws = RawWs::from_http(conn);
        expect_handshake_timeout(&mut ws).await;
        let after = start.elapsed();
        assert!(
            after >= deadline && after < deadline + Duration::from_secs(1),
            "upgraded after {upgrade_after:?}, closed after {after:?} (the deadline counts from the accept)"
        );
    }
    // Half a handshake message, then silence: the same.
    let start = Instant::now();
    let mut ws = RawWs::connect(http).await;
    let hs = handshake(1, "/", "");
    let msg = ws_msg(&hs);
    ws.send(&msg[..msg.len() - 2]).await.unwrap();
    expect_handshake_timeout(&mut ws).await;
    let after = start.elapsed();
    assert!(
        after >= deadline && after < deadline + Duration::from_secs(1),
        "{after:?}"
    );
    broker.stop().await;
}

/// A kept-alive connection that asks for the upgrade after the handshake
/// deadline (counted from its accept) has spent it: it must be told so
/// (an HTTP error, or HANDSHAKE_TIMEOUT and close 1008), not get a 101 and
/// then a silently dropped connection.
#[tokio::test(start_paused = true)]
async fn an_upgrade_after_the_deadline_on_a_kept_alive_connection_is_told_why() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let mut conn = HttpConn::connect(http).await.unwrap();
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n");
    for wait in [Duration::ZERO, Duration::from_secs(4)] {
        tokio::time::sleep(wait).await;
        conn.send(healthz.as_bytes()).await.unwrap();
        let r = conn.response(false, A_DAY).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    // 6 s after the accept; 2 s after the last request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    conn.send(&UpgradeRequest::new(http).bytes()).await.unwrap();
    let r = conn.response(false, A_DAY).await.unwrap();
    if r.status == 101 {
        let mut ws = RawWs::from_http(conn);
        expect_handshake_timeout(&mut ws).await;
    } else {
        assert!((400..600).contains(&r.status), "{r:?}");
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// /healthz, /readyz, pages.
// ---------------------------------------------------------------------------

fn check_csp(r: &HttpResponse) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
}

#[tokio::test]
async fn healthz_readyz_and_the_embedded_page() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let r = get(http, "/healthz").await.unwrap();
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok\n"));
    let head = format!("HEAD /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    let r = exchange(http, head.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(http, "/readyz").await.unwrap();
    assert_eq!((r.status, r.body_text().as_str()), (200, "ready\n"));

    let page = get(http, "/").await.unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{page:?}"
    );
    check_csp(&page);
    assert!(
        page.body_text().to_ascii_lowercase().contains("<html"),
        "{page:?}"
    );
    let index = get(http, "/index.html").await.unwrap();
    assert_eq!((index.status, &index.body), (200, &page.body));
    let missing = get(http, "/nope.js").await.unwrap();
    assert_eq!(missing.status, 404, "{missing:?}");
    check_csp(&missing);

    // Keep-alive: several requests on one connection.
    let mut conn = HttpConn::connect(http).await.unwrap();
    for path in ["/healthz", "/readyz", "/"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n\r\n");
        conn.send(req.as_bytes()).await.unwrap();
        let r = conn.response(false, WAIT).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn static_dir_files_are_served_with_their_types_and_nothing_outside_or_listed() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let web = tempfile::tempdir().unwrap();
    let root = web.path();
    let secret = "TOP-SECRET-8f3a";
    std::fs::write(root.join("secret.txt"), secret).unwrap();
    let site = root.join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    std::fs::create_dir_all(site.join("empty")).unwrap();
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><html><title>site</title></html>",
    )
    .unwrap();
    std::fs::write(site.join("app.js"), "console.log('app');").unwrap();
    std::fs::write(site.join("style.css"), "body { color: black; }").unwrap();
    std::fs::write(site.join("data.json"), "{\"a\":1}").unwrap();
    std::fs::write(
        site.join("logo.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )
    .unwrap();
    std::fs::write(site.join("sub").join("inner.txt"), "inner file").unwrap();
    let mut config = test_config(&data);
    config.http.static_dir = site.clone();
    let broker = TestBroker::start_ws(config, data).await;
    let http = broker.http_addr();

    for (path, content_type, body) in [
        ("/", "text/html", "<title>site</title>"),
        ("/index.html", "text/html", "<title>site</title>"),
        ("/app.js", "javascript", "console.log"),
        ("/style.css", "text/css", "color: black"),
        ("/data.json", "application/json", "\"a\":1"),
        ("/logo.svg", "image/svg+xml", "<svg"),
        ("/sub/inner.txt", "text/plain", "inner file"),
    ] {
        let r = get(http, path).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.contains(content_type), "{path}: content-type {ct:?}");
        assert!(r.body_text().contains(body), "{path}: {r:?}");
        check_csp(&r);
    }
    // The embedded page is not served when static_dir is set.
    let embedded = get(http, "/").await.unwrap();
    assert!(embedded.body_text().contains("<title>site</title>"));

    // Traversal: nothing outside the directory, whatever the spelling.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/../../secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/.%2e/secret.txt",
        "//../secret.txt",
    ] {
        let raw = get_request(http, path);
        match exchange(http, raw.as_bytes()).await {
            Ok(r) => {
                assert!(
                    !r.body_text().contains(secret),
                    "{path}: the secret leaked: {r:?}"
                );
                assert!(r.status >= 400, "{path}: {r:?}");
            }
            // Refused before a response: nothing leaked either.
            Err(e) => panic!("{path}: no response: {e}"),
        }
    }
    let absolute = format!(
        "GET {} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n",
        root.join("secret.txt").display()
    );
    let r = exchange(http, absolute.as_bytes()).await.unwrap();
    assert!(!r.body_text().contains(secret), "{r:?}");

    // Directories: no listing.
    for path in ["/sub/", "/sub", "/empty/", "/empty"] {
        let r = get(http, path).await.unwrap();
        assert!(
            !r.body_text().contains("inner.txt"),
            "{path}: a listing: {r:?}"
        );
        assert_ne!(r.status, 200, "{path}: {r:?}");
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// /readyz while draining.
// ---------------------------------------------------------------------------

/// Holds the handshake of a client named "slow" for a while, so that the
/// drain of a shutdown (which waits for sessions) is long enough to see.
struct SlowConnect {
    entered: Arc<tokio::sync::Notify>,
    delay: Duration,
}

#[async_trait::async_trait]
impl Middleware for SlowConnect {
    fn name(&self) -> &str {
        "slow-connect"
    }
    async fn connect(&self, ctx: &mut ConnectCtx<'_>) -> Verdict {
        if ctx.client_name == "slow" {
            self.entered.notify_one();
            tokio::time::sleep(self.delay).await;
        }
        Verdict::Allow
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_drains_and_the_listener_stops_after() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(&dir);
    let entered = Arc::new(tokio::sync::Notify::new());
    let delay = Duration::from_secs(3);
    let hook = SlowConnect {
        entered: entered.clone(),
        delay,
    };
    let broker = TestBroker::start_ws_server(config, dir, |s| s.middleware_everywhere(hook)).await;
    let http = broker.http_addr();
    let r = get(http, "/readyz").await.unwrap();
    assert_eq!((r.status, r.body_text().as_str()), (200, "ready\n"));

    // A WebSocket client whose handshake the hook holds.
    let mut slow = RawWs::connect(http).await;
    let hs = request(
        1,
        pb::client_frame::Body::Handshake(pb::Handshake {
            protocol_version: 1,
            client_name: "slow".into(),
            ..Default::default()
        }),
    );
    slow.send_msg(&hs).await.unwrap();
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .expect("the hook holds the handshake");

    let began = Instant::now();
    broker.begin_shutdown();
    let draining = loop {
        let r = get(http, "/readyz")
            .await
            .expect("the listener is up while draining");
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(began.elapsed() < WAIT, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(draining.body_text(), "draining\n");
    // Meanwhile: alive, but no new WebSocket sessions.
    assert_eq!(get(http, "/healthz").await.unwrap().status, 200);
    let r = upgrade_status(http, UpgradeRequest::new(http)).await;
    assert_eq!(r.status, 503, "{r:?}");
    let r = get(http, "/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        began.elapsed() < delay,
        "all of this happened during the drain"
    );

    // The held session learns why it is closed.
    let closed = slow.until_closed(WAIT).await.unwrap();
    let e = closed.last_error().expect("an error frame");
    assert_eq!(e.error_code(), Some(ErrorCode::ShuttingDown), "{closed:?}");
    assert_eq!(closed.close_code(), Some(1001), "{closed:?}");

    broker.stop().await;
    // After the drain the listener is gone.
    assert!(
        get(http, "/healthz").await.is_err(),
        "the HTTP listener outlives the broker"
    );
}

/// A broker at `max_connections` is full, not dead: up to
/// `http.max_probe_connections` more connections may ask `/healthz` and
/// `/readyz`, and get 503 for anything else; beyond those, every request
/// gets 503.
#[tokio::test]
async fn health_checks_are_answered_at_the_connection_limit() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_connections = 1;
    config.http.max_probe_connections = 1;
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();
    let (session, _d) = broker.connect("holds-the-only-slot").await;

    assert_eq!(get(http, "/healthz").await.unwrap().status, 200);
    assert_eq!(get(http, "/readyz").await.unwrap().status, 200);
    assert_eq!(get(http, "/").await.unwrap().status, 503);
    let mut conn = HttpConn::connect(http).await.unwrap();
    conn.send(&UpgradeRequest::new(http).bytes()).await.unwrap();
    let r = conn.response(false, WAIT).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    conn.closed_within(WAIT).await.unwrap();

    // The probe slot is taken by a kept-alive connection: the next one is
    // refused whatever it asks.
    let mut held = HttpConn::connect(http).await.unwrap();
    held.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(held.response(false, WAIT).await.unwrap().status, 200);
    assert_eq!(get(http, "/healthz").await.unwrap().status, 503);
    drop(held);

    session.ping().await.unwrap();
    broker.stop().await;
}
