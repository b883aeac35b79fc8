//! The WebSocket transport (issue 12) against a real broker with both
//! listeners on 127.0.0.1:0: a WebSocket session and a TCP session share a
//! room; a durable member resumes over WebSocket across a restart; every bad
//! input over WebSocket gets its typed error frame (where one can still be
//! sent) and its documented close code, leaves the broker serving a healthy
//! client, and does not grow memory when repeated; the connection cap is
//! shared by both listeners.
//!
//! Raw cases use [`common::ws::RawWs`], which writes masked frames byte by
//! byte, so a case sends exactly what it means; happy paths use the SDK
//! with a `ws://` address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{error_of, handshake, request, rss_bytes};
use common::ws::*;
use common::*;
use prost::Message as _;
use roomq_client::raw::{ConnectOptions, Connection};
use roomq_client::{proto as pb, Client, ErrorCode, JoinOptions};

use pb::client_frame::Body as Req;
use pb::server_frame::Body as Rep;

/// How long a bad input may take to be answered (two cores, debug build).
const ANSWER: Duration = Duration::from_secs(2);
/// Request id of the ping sent behind an `Open` case.
const SENTINEL: u64 = 0xC0FFEE;
/// The room of the client that must keep working.
const HEALTH: &str = "ws-health";

fn ping_req(id: u64) -> pb::ClientFrame {
    request(id, Req::Ping(pb::Ping { nonce: id }))
}

fn except_self(room: &str, payload: String) -> pb::Publish {
    pb::Publish {
        rooms: vec![room.to_string()],
        event: "chat message".into(),
        payload: Bytes::from(payload),
        except_self: true,
        ..Default::default()
    }
}

fn text(d: &pb::Delivery) -> String {
    String::from_utf8(payload(d)).unwrap()
}

// ---------------------------------------------------------------------------
// 1. One room, both transports.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_and_a_tcp_session_get_each_others_messages_in_order_with_except_self() {
    const N: usize = 40;
    let broker = TestBroker::start_ws_default().await;
    let (web, mut web_d) = broker.connect_ws("web").await;
    let (tcp, mut tcp_d) = broker.connect("tcp").await;
    for c in [&web, &tcp] {
        c.join_with(join("chat", pb::StartPosition::New, 1000, 3_600_000))
            .await
            .unwrap();
    }

    // Both publish at once, each leaving itself out.
    let from_web = async {
        for i in 0..N {
            web.publish_with(except_self("chat", format!("web {i}")))
                .await
                .unwrap();
        }
    };
    let from_tcp = async {
        for i in 0..N {
            tcp.publish_with(except_self("chat", format!("tcp {i}")))
                .await
                .unwrap();
        }
    };
    tokio::join!(from_web, from_tcp);

    for (who, d, conn, other) in [
        ("web", &mut web_d, &web, "tcp"),
        ("tcp", &mut tcp_d, &tcp, "web"),
    ] {
        let mut last_seq = 0;
        for i in 0..N {
            let got = next(d).await;
            assert_eq!(
                text(&got),
                format!("{other} {i}"),
                "{who} gets {other}'s in order"
            );
            assert!(seq(&got) > last_seq, "{who}: seqs increase");
            last_seq = seq(&got);
            conn.ack("chat", "", &[seq(&got)]).await.unwrap();
        }
    }

    // Without except_self, each gets its own message and the other's.
    let s1 = web.publish("chat", "e", "both from web").await.unwrap();
    let s2 = tcp.publish("chat", "e", "both from tcp").await.unwrap();
    assert!(s2 > s1);
    for (d, conn) in [(&mut web_d, &web), (&mut tcp_d, &tcp)] {
        let a = next(d).await;
        let b = next(d).await;
        assert_eq!(
            (text(&a).as_str(), text(&b).as_str()),
            ("both from web", "both from tcp")
        );
        conn.ack("chat", "", &[seq(&a), seq(&b)]).await.unwrap();
    }
    assert_quiet(&mut web_d, Duration::from_millis(200)).await;
    assert_quiet(&mut tcp_d, Duration::from_millis(200)).await;
    broker.stop().await;
}

/// The handshake message may arrive in the same packet as the upgrade
/// request: the bytes hyper read past the request are not lost.
#[tokio::test]
async fn a_handshake_pipelined_behind_the_upgrade_request_is_served() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let mut then = ws_msg(&handshake(1, "/", ""));
    then.extend(ws_msg(&ping_req(2)));
    let (response, ws) = RawWs::upgrade_with(http, &UpgradeRequest::new(http), &then)
        .await
        .unwrap();
    check_switching(&response);
    let mut ws = ws.unwrap();
    let f = ws.next_server_frame(WAIT).await.unwrap();
    assert!(matches!(f.body, Some(Rep::HandshakeOk(_))), "{f:?}");
    let f = ws.next_server_frame(WAIT).await.unwrap();
    assert_eq!(f.request_id, 2);
    assert!(matches!(f.body, Some(Rep::Pong(_))), "{f:?}");
    // A normal close is echoed with 1000.
    ws.send(&ws_close(1000)).await.unwrap();
    let closed = ws.until_closed(WAIT).await.unwrap();
    assert_eq!(closed.close_code(), Some(1000), "{closed:?}");
    assert!(closed.frames.is_empty(), "{closed:?}");
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Durable resume over WebSocket across a restart.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_durable_member_resumes_over_websocket_across_a_restart() {
    let broker = TestBroker::start_ws_default().await;
    let (tcp_before, http_before) = (broker.addr, broker.http_addr());
    let (member, mut md) = broker.connect_ws("member").await;
    member
        .join_with(join("log", pb::StartPosition::Earliest, 100, 3_600_000))
        .await
        .unwrap();
    let (writer, _wd) = broker.connect("writer").await;
    for i in 1..=5 {
        assert_eq!(
            writer.publish("log", "e", format!("m{i}")).await.unwrap(),
            i
        );
    }
    for i in 1..=5 {
        let got = next(&mut md).await;
        assert_eq!((seq(&got), text(&got)), (i, format!("m{i}")));
    }
    // 1..=3 acknowledged; 4 and 5 delivered but not acknowledged.
    member.ack_up_to("log", "", 3).await.unwrap();
    drop((member, md));
    // Missed while away.
    for i in 6..=8 {
        assert_eq!(
            writer.publish("log", "e", format!("m{i}")).await.unwrap(),
            i
        );
    }
    drop((writer, _wd));

    let broker = broker.restart_ws_same_ports().await;
    assert_eq!((broker.addr, broker.http_addr()), (tcp_before, http_before));
    let (writer, _wd) = broker.connect("writer").await;
    for i in 9..=10 {
        assert_eq!(
            writer.publish("log", "e", format!("m{i}")).await.unwrap(),
            i
        );
    }
    let (member, mut md) = broker.connect_ws("member").await;
    assert!(member.resumed(), "the durable session is resumed");
    let ok = member.join("log").await.unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (4, 10));
    let mut got = Vec::new();
    for _ in 4..=10 {
        let d = next(&mut md).await;
        got.push((seq(&d), d.redelivered, text(&d)));
        member.ack("log", "", &[seq(&d)]).await.unwrap();
    }
    let want: Vec<(u64, bool, String)> = (4..=10).map(|s| (s, s <= 5, format!("m{s}"))).collect();
    assert_eq!(got, want, "what was missed, in order, once");
    assert_quiet(&mut md, Duration::from_millis(300)).await;
    broker.stop().await;
}

/// The SDK over `ws://` reconnects, resumes and re-sends across a restart
/// as it does over TCP: nothing lost, nothing twice, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_over_websocket_lives_through_a_restart_without_loss_or_duplicates() {
    const TOTAL: u64 = 200;
    let mut broker = TestBroker::start_ws_default().await;
    let sdk = |id: &'static str, url: String| async move {
        Client::builder(url).client_id(id).connect().await.unwrap()
    };
    let publisher = sdk("publisher", broker.ws_url()).await;
    let subscriber = sdk("subscriber", broker.ws_url()).await;
    let mut sub = subscriber
        .join("ledger", JoinOptions::new().max_in_flight(50))
        .await
        .unwrap();
    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 1..=TOTAL {
            let ok = publisher
                .publish("ledger", "entry", format!("{i}"))
                .await
                .unwrap();
            seqs.push(ok.seq());
        }
        seqs
    });
    let mut seen = Vec::new();
    let mut restarted = false;
    while (seen.len() as u64) < TOTAL {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a delivery within the wait")
            .expect("subscription open");
        seen.push(
            String::from_utf8(d.payload.to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        d.ack().await.unwrap();
        if !restarted && seen.len() as u64 == TOTAL / 2 {
            broker = broker.restart_ws_same_ports().await;
            restarted = true;
        }
    }
    let confirmed = tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(confirmed, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_err());
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Bad input over WebSocket.
// ---------------------------------------------------------------------------

/// What a request must be answered with.
#[derive(Clone, Copy, Debug)]
enum Want {
    HandshakeOk,
    Pong,
    /// A non-fatal error with this code.
    Err(ErrorCode),
}

/// How the connection must end up.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// Still open: a ping request sent behind the case is answered; then a
    /// close from the test is echoed with 1000.
    Open,
    /// A fatal error with this code (request id 0), then a close frame with
    /// one of these codes, then the end of the stream.
    Fatal(ErrorCode, &'static [u16]),
    /// No error frame; a close frame with this code, then the end.
    Close(u16),
}

struct Case {
    name: String,
    /// Sent behind a good handshake (request id 1), or as the first bytes.
    after_handshake: bool,
    bytes: Vec<u8>,
    replies: Vec<(u64, Want)>,
    /// Payloads of the WebSocket pongs the broker must send, in order.
    pongs: Vec<&'static [u8]>,
    end: End,
}

fn pre(name: &str, bytes: Vec<u8>, end: End) -> Case {
    Case {
        name: format!("before the handshake: {name}"),
        after_handshake: false,
        bytes,
        replies: Vec::new(),
        pongs: Vec::new(),
        end,
    }
}

fn post(name: &str, bytes: Vec<u8>, end: End) -> Case {
    Case {
        name: format!("after the handshake: {name}"),
        after_handshake: true,
        ..pre(name, bytes, end)
    }
}

impl Case {
    fn reply(mut self, id: u64, want: Want) -> Case {
        self.replies.push((id, want));
        self
    }
    fn pong(mut self, payload: &'static [u8]) -> Case {
        self.pongs.push(payload);
        self
    }
}

/// `frame` as a message split into fragments of at most `piece` bytes
/// (at least two fragments).
fn fragmented(body: &[u8], piece: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = body.chunks(piece).collect();
    assert!(chunks.len() >= 2, "split into at least two fragments");
    let mut v = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
        v.extend(ws_frame(i + 1 == chunks.len(), opcode, c));
    }
    v
}

/// `body` as exactly `n` fragments (one byte each while it lasts, then
/// empty ones).
fn in_n_fragments(body: &[u8], n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
        let piece = body.get(i..i + 1).unwrap_or_default();
        let piece = if i + 1 == n {
            body.get(i..).unwrap_or_default()
        } else {
            piece
        };
        v.extend(ws_frame(i + 1 == n, opcode, piece));
    }
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn corpus(max_frame: usize, max_handshake: usize, max_fragments: usize) -> Vec<Case> {
    use End::{Close, Fatal, Open};
    use ErrorCode as C;
    let ping7 = ping_req(7).encode_to_vec();
    let hs = handshake(1, "/", "").encode_to_vec();
    vec![
        // -- text --
        post(
            "a text message",
            ws_frame(true, op::TEXT, b"hello"),
            Fatal(C::MalformedFrame, &[1003]),
        ),
        post(
            "the first fragment of a text message",
            ws_frame(false, op::TEXT, b"hel"),
            Fatal(C::MalformedFrame, &[1003]),
        ),
        post(
            "a text message that is not UTF-8",
            ws_frame(true, op::TEXT, &[0xC0, 0x80]),
            Fatal(C::MalformedFrame, &[1003]),
        ),
        pre(
            "a text message",
            ws_frame(true, op::TEXT, b"{\"hello\":1}"),
            Fatal(C::MalformedFrame, &[1003]),
        ),
        // -- size, refused from the announced length: only the head is sent --
        post(
            "a message announced one byte over max_frame_bytes (head only)",
            ws_head(true, op::BINARY, max_frame as u64 + 1),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        post(
            "a message announced with a 63-bit length (head only)",
            ws_head(true, op::BINARY, u64::MAX >> 1),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        post(
            "a first fragment announced over max_frame_bytes (head only)",
            ws_head(false, op::BINARY, max_frame as u64 + 1),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        post(
            "fragments filling max_frame_bytes, then one announcing 1,000 more (head only)",
            cat(&[
                ws_frame(false, op::BINARY, &vec![0xFF; max_frame / 2]),
                ws_frame(false, op::CONTINUATION, &vec![0xFF; max_frame / 2]),
                ws_head(true, op::CONTINUATION, 1000),
            ]),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        post(
            "fragments 10 bytes short of max_frame_bytes, then 50 more",
            cat(&[
                ws_frame(false, op::BINARY, &vec![0xFF; max_frame - 10]),
                ws_frame(true, op::CONTINUATION, &[0xFF; 50]),
            ]),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        post(
            "a message of exactly max_frame_bytes of garbage: read, then refused",
            ws_binary(&vec![0xFF; max_frame]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        pre(
            "a handshake message announced over max_handshake_bytes (head only)",
            ws_head(true, op::BINARY, max_handshake as u64 + 1),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        pre(
            "handshake fragments that grow past max_handshake_bytes (head only)",
            cat(&[
                ws_frame(false, op::BINARY, &vec![0x08; max_handshake - 100]),
                ws_head(true, op::CONTINUATION, 200),
            ]),
            Fatal(C::FrameTooLarge, &[1009]),
        ),
        pre(
            "a message of exactly max_handshake_bytes of garbage",
            ws_binary(&vec![0xFF; max_handshake]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        // -- fragments --
        post(
            "a continuation flood: one frame more than max_ws_fragments",
            cat(&[
                ws_frame(false, op::BINARY, &[0x08]),
                (0..max_fragments)
                    .flat_map(|_| ws_frame(false, op::CONTINUATION, &[0x07]))
                    .collect(),
            ]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "a request in exactly max_ws_fragments fragments",
            in_n_fragments(&ping7, max_fragments),
            Open,
        )
        .reply(7, Want::Pong),
        post(
            "a continuation frame with no message to continue",
            ws_frame(true, op::CONTINUATION, &ping7),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "a new message before the previous one ended",
            cat(&[ws_frame(false, op::BINARY, &[0x08]), ws_binary(&ping7)]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "a close in the middle of a fragmented message",
            cat(&[ws_frame(false, op::BINARY, &ping7[..2]), ws_close(1000)]),
            Close(1000),
        ),
        pre(
            "a handshake in three fragments",
            fragmented(&hs, hs.len().div_ceil(3)),
            Open,
        )
        .reply(1, Want::HandshakeOk),
        post(
            "a ping between the fragments of a request",
            cat(&[
                ws_frame(false, op::BINARY, &ping7[..2]),
                ws_frame(true, op::PING, b"mid"),
                ws_frame(true, op::CONTINUATION, &ping7[2..]),
            ]),
            Open,
        )
        .reply(7, Want::Pong)
        .pong(b"mid"),
        // -- bytes that are not a frame of the protocol --
        post(
            "undecodable protobuf (wire type 7)",
            ws_binary(&[0x0F]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        pre(
            "undecodable protobuf (wire type 7)",
            ws_binary(&[0x0F]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post("an empty binary message", ws_binary(&[]), Open)
            .reply(0, Want::Err(C::InvalidRequest)),
        pre(
            "a request that is not a handshake",
            ws_msg(&ping_req(7)),
            Fatal(C::HandshakeRequired, &[1008]),
        ),
        // -- WebSocket framing violations --
        post(
            "reserved bits set",
            {
                let mut f = ws_binary(&ping7);
                f[0] |= 0x40;
                f
            },
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "an unknown opcode (0x3)",
            ws_frame(true, 0x3, &ping7),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "a fragmented ping (a control frame without FIN)",
            ws_frame(false, op::PING, b"x"),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        post(
            "a ping with 126 bytes of payload",
            ws_frame(true, op::PING, &[b'p'; 126]),
            Fatal(C::MalformedFrame, &[1002]),
        ),
        // -- control frames --
        post(
            "a WebSocket ping",
            ws_frame(true, op::PING, b"are you there"),
            Open,
        )
        .pong(b"are you there"),
        post(
            "an unsolicited pong",
            ws_frame(true, op::PONG, b"unasked"),
            Open,
        ),
        post("a close with 1000", ws_close(1000), Close(1000)),
        post(
            "a close without a code",
            ws_frame(true, op::CLOSE, &[]),
            Close(1000),
        ),
    ]
}

/// Runs one case on a fresh WebSocket; returns what was wrong, if anything.
async fn run(http: std::net::SocketAddr, case: &Case) -> Result<(), String> {
    let mut ws = RawWs::connect(http).await;
    let mut bytes = Vec::new();
    if case.after_handshake {
        bytes.extend(ws_msg(&handshake(1, "/", "")));
    }
    bytes.extend_from_slice(&case.bytes);
    if case.end == End::Open {
        bytes.extend(ws_msg(&ping_req(SENTINEL)));
    }
    // The broker may close before it has read everything; what it answered
    // is read below either way.
    let _ = ws.send(&bytes).await;

    let mut frames: Vec<pb::ServerFrame>;
    match case.end {
        End::Open => {
            frames = Vec::new();
            let mut pongs: Vec<Bytes> = Vec::new();
            let mut wanted: Vec<u64> = case.replies.iter().map(|(id, _)| *id).collect();
            wanted.push(SENTINEL);
            if case.after_handshake {
                wanted.push(1);
            }
            let deadline = tokio::time::Instant::now() + ANSWER;
            while !(wanted
                .iter()
                .all(|id| frames.iter().any(|f| f.request_id == *id))
                && pongs.len() >= case.pongs.len())
            {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match ws.next(left).await {
                    Ok(Some(WsIn::Binary(b))) => {
                        frames.push(roomq_wire::codec::decode_server(b).map_err(|e| e.to_string())?)
                    }
                    Ok(Some(WsIn::Pong(p))) => pongs.push(p),
                    other => {
                        return Err(format!(
                            "{other:?}; frames so far: {frames:?}, pongs {pongs:?}"
                        ))
                    }
                }
            }
            let want_pongs: Vec<Bytes> = case.pongs.iter().map(|p| Bytes::from_static(p)).collect();
            if pongs != want_pongs {
                return Err(format!("pongs {pongs:?}, not {want_pongs:?}"));
            }
            check_replies(case, &mut frames)?;
            match frames.iter().position(|f| f.request_id == SENTINEL) {
                Some(i) if matches!(frames[i].body, Some(Rep::Pong(_))) => {
                    frames.remove(i);
                }
                _ => return Err(format!("the trailing ping got {frames:?}")),
            }
            if !frames.is_empty() {
                return Err(format!("unexpected frames {frames:?}"));
            }
            // Still a WebSocket that closes normally.
            ws.send(&ws_close(1000))
                .await
                .map_err(|e| format!("send a close: {e}"))?;
            let closed = ws.until_closed(ANSWER).await?;
            if closed.close_code() != Some(1000) || !closed.frames.is_empty() {
                return Err(format!("our close got {closed:?}"));
            }
        }
        End::Fatal(code, close_codes) => {
            let closed = ws.until_closed(ANSWER).await?;
            frames = closed.frames.clone();
            let Some(e) = closed.last_error().filter(|e| e.fatal).cloned() else {
                return Err(format!("no fatal error: {closed:?}"));
            };
            if e.error_code() != Some(code) || frames.last().map(|f| f.request_id) != Some(0) {
                return Err(format!(
                    "a fatal {} (want {}): {closed:?}",
                    e.name,
                    code.name()
                ));
            }
            frames.pop();
            if !closed
                .close_code()
                .is_some_and(|c| close_codes.contains(&c))
            {
                return Err(format!(
                    "close code {:?}, not one of {close_codes:?}: {closed:?}",
                    closed.close
                ));
            }
            if closed.after_close > 0 {
                return Err(format!("frames after the close: {closed:?}"));
            }
            check_replies(case, &mut frames)?;
            if !frames.is_empty() {
                return Err(format!("unexpected frames {frames:?}"));
            }
        }
        End::Close(close_code) => {
            let closed = ws.until_closed(ANSWER).await?;
            frames = closed.frames.clone();
            if closed.close_code() != Some(close_code) || closed.after_close > 0 {
                return Err(format!("want a close with {close_code}: {closed:?}"));
            }
            check_replies(case, &mut frames)?;
            if !frames.is_empty() {
                return Err(format!("unexpected frames {frames:?}"));
            }
        }
    }
    Ok(())
}

/// Takes the HandshakeOk (if the case sent a handshake first) and every
/// expected reply out of `frames`.
fn check_replies(case: &Case, frames: &mut Vec<pb::ServerFrame>) -> Result<(), String> {
    if case.after_handshake {
        match frames.first() {
            Some(f) if f.request_id == 1 && matches!(f.body, Some(Rep::HandshakeOk(_))) => {
                frames.remove(0);
            }
            _ => {
                return Err(format!(
                    "the first frame is not the HandshakeOk: {frames:?}"
                ))
            }
        }
    }
    for (id, want) in &case.replies {
        let i = frames
            .iter()
            .position(|f| f.request_id == *id)
            .ok_or_else(|| format!("no reply to request {id}: {frames:?}"))?;
        let f = frames.remove(i);
        let ok = match (want, &f.body) {
            (Want::HandshakeOk, Some(Rep::HandshakeOk(_))) => true,
            (Want::Pong, Some(Rep::Pong(_))) => true,
            (Want::Err(code), Some(Rep::Error(e))) => e.error_code() == Some(*code) && !e.fatal,
            _ => false,
        };
        if !ok {
            return Err(format!("request {id}: {f:?}, not {want:?}"));
        }
    }
    Ok(())
}

/// The client that must keep working: a WebSocket SDK connection that
/// publishes to its room and receives that message, next in seq order.
struct Health {
    conn: Connection,
    deliveries: roomq_client::Deliveries,
    seq: u64,
}

impl Health {
    async fn connect(broker: &TestBroker) -> Health {
        let (conn, deliveries) = broker.connect_ws("healthy").await;
        conn.join_with(join(HEALTH, pb::StartPosition::New, 0, 3_600_000))
            .await
            .unwrap();
        Health {
            conn,
            deliveries,
            seq: 0,
        }
    }

    async fn check(&mut self, after: &str) {
        self.seq += 1;
        let body = format!("alive after {after}");
        let stored = self.conn.publish(HEALTH, "e", body.clone()).await;
        assert_eq!(stored.unwrap(), self.seq, "publish after {after}");
        let got = next(&mut self.deliveries).await;
        assert_eq!(seq(&got), self.seq, "delivery after {after}");
        assert_eq!(payload(&got), body.into_bytes());
        self.conn.ack(HEALTH, "", &[self.seq]).await.unwrap();
    }
}

fn corpus_config(dir: &tempfile::TempDir) -> roomq::config::Config {
    let mut config = test_config(dir);
    // Small enough that the size cases cost little per round.
    config.limits.max_frame_bytes = 128 * 1024;
    config.http.max_ws_fragments = 32;
    config.storage.room_cache_messages = 16;
    config.storage.cache_bytes = 1024 * 1024;
    config
}

/// Every case once, each followed by the healthy client's round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_over_websocket_is_answered_and_others_keep_working() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = corpus_config(&dir);
    let limits = config.limits.clone();
    let cases = corpus(
        limits.max_frame(),
        limits.max_handshake_bytes as usize,
        config.http.max_ws_fragments as usize,
    );
    let broker = TestBroker::start_ws(config, dir).await;
    let mut health = Health::connect(&broker).await;
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run(broker.http_addr(), case).await {
            failures.push(format!("{}: {e}", case.name));
        }
        health.check(&case.name).await;
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    broker.stop().await;
}

/// The corpus again and again: the process's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_the_websocket_bad_input_corpus_keeps_memory_flat() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = corpus_config(&dir);
    let limits = config.limits.clone();
    let cases = corpus(
        limits.max_frame(),
        limits.max_handshake_bytes as usize,
        config.http.max_ws_fragments as usize,
    );
    let broker = TestBroker::start_ws(config, dir).await;
    let mut health = Health::connect(&broker).await;
    const ROUNDS: usize = 60;
    let mut rss_after_warmup = 0;
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        for case in &cases {
            if let Err(e) = run(broker.http_addr(), case).await {
                panic!("round {round}, case {:?}: {e}", case.name);
            }
        }
        health.check(&format!("round {round}")).await;
        if round == 0 {
            rss_after_warmup = rss_bytes();
        }
    }
    let rss_end = rss_bytes();
    let growth = rss_end.saturating_sub(rss_after_warmup);
    println!(
        "{} cases x {ROUNDS} rounds in {:?}; RSS {} KiB after the warm-up round, {} KiB at the end",
        cases.len(),
        started.elapsed(),
        rss_after_warmup / 1024,
        rss_end / 1024
    );
    assert!(
        growth < 32 * 1024 * 1024,
        "memory grew by {} KiB over {} rounds of the corpus",
        growth / 1024,
        ROUNDS - 1
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// 5. One connection cap for both listeners.
// ---------------------------------------------------------------------------

/// A TCP session, retried while the cap is still held by a connection
/// that is closing (within [`WAIT`]).
async fn tcp_session(broker: &TestBroker, id: &str) -> (Connection, roomq_client::Deliveries) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Connection::connect(broker.options().client_id(id)).await {
            Ok(c) => return c,
            Err(e) if e.code() == Some(ErrorCode::TooManyConnections) => {
                assert!(tokio::time::Instant::now() < deadline, "never a free slot");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

#[tokio::test]
async fn max_connections_counts_tcp_and_websocket_together() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_connections = 2;
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();

    // Two TCP sessions: a WebSocket upgrade is refused with 503.
    let t1 = tcp_session(&broker, "t1").await;
    let t2 = tcp_session(&broker, "t2").await;
    let mut conn = HttpConn::connect(http).await.unwrap();
    conn.send(&UpgradeRequest::new(http).bytes()).await.unwrap();
    let r = conn.response(false, WAIT).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    conn.closed_within(WAIT).await.unwrap();
    let refused = Connection::connect(broker.ws_options()).await;
    assert!(refused.is_err(), "the SDK over ws is refused at the cap");

    // One WebSocket and one TCP session: a third TCP connection is refused.
    drop(t2);
    let deadline = tokio::time::Instant::now() + WAIT;
    let (web, _web_d) = loop {
        match Connection::connect(broker.ws_options().client_id("web")).await {
            Ok(c) => break c,
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let e = code(
        Connection::connect(ConnectOptions::new(broker.addr.to_string()))
            .await
            .map(|(c, _)| c.session_id()),
    );
    assert_eq!(e, ErrorCode::TooManyConnections);
    // Both still work.
    web.ping().await.unwrap();
    t1.0.ping().await.unwrap();

    // The WebSocket's slot comes back when it closes.
    drop(web);
    let (t3, _) = tcp_session(&broker, "t3").await;
    t3.ping().await.unwrap();
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// RFC 6455 conformance beyond the corpus.
// ---------------------------------------------------------------------------

/// RFC 6455 §5.1: "The server MUST close the connection upon receiving a
/// frame that is not masked" (and may send 1002).
#[tokio::test]
async fn an_unmasked_client_frame_is_a_protocol_error() {
    let broker = TestBroker::start_ws_default().await;
    let mut ws = RawWs::connect_handshaken(broker.http_addr(), "/", "").await;
    ws.send(&ws_frame_unmasked(
        true,
        op::BINARY,
        &ping_req(7).encode_to_vec(),
    ))
    .await
    .unwrap();
    let got = ws.next(ANSWER).await;
    let closed = match got {
        Ok(Some(WsIn::Binary(b))) => {
            let f = roomq_wire::codec::decode_server(b).unwrap();
            assert!(
                error_of(&f).is_some(),
                "the unmasked request was served: {f:?}"
            );
            ws.until_closed(ANSWER).await.unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(closed.close_code(), Some(1002), "{closed:?}");
    broker.stop().await;
}

/// RFC 6455 §5.5.1: a close frame is answered with a close frame, also
/// before the roomq handshake.
#[tokio::test]
async fn a_close_before_the_handshake_is_answered_with_a_close() {
    let broker = TestBroker::start_ws_default().await;
    for (what, bytes) in [
        ("a close", ws_close(1000)),
        (
            "half a handshake message, then a close",
            cat(&[
                ws_frame(
                    false,
                    op::BINARY,
                    &handshake(1, "/", "").encode_to_vec()[..3],
                ),
                ws_close(1000),
            ]),
        ),
    ] {
        let mut ws = RawWs::connect(broker.http_addr()).await;
        ws.send(&bytes).await.unwrap();
        let closed = ws.until_closed(ANSWER).await.unwrap();
        assert!(closed.frames.is_empty(), "{what}: {closed:?}");
        assert_eq!(closed.close_code(), Some(1000), "{what}: {closed:?}");
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------
// Crashes, TLS, timers and slow consumers over WebSocket.
// ---------------------------------------------------------------------------

/// An SDK connection to `url`, retried while the broker is still starting
/// (the HTTP listener answers 503 until storage is recovered).
async fn connect_retry(opts: ConnectOptions) -> (Connection, roomq_client::Deliveries) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Connection::connect(opts.clone()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never connected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `kill -9` of the real `roomqd` while WebSocket publishers are publishing
/// and a WebSocket member is acknowledging: every confirmed message is
/// there after the restart, sequences stay gapless, and the member's cursor
/// never moves past what it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_over_websocket_survive_sigkill() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    const CYCLES: usize = 2;
    const PUBLISHERS: usize = 16;
    const CONFIRMED_BEFORE_KILL: usize = 300;

    let dir = tempfile::tempdir().unwrap();
    let confirmed: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let mut acked_through = 0u64;
    for cycle in 0..CYCLES {
        let (daemon, http) = start_daemon_ws(dir.path(), 0);
        let url = format!("ws://{http}");
        let (reader, mut reader_d) =
            connect_retry(ConnectOptions::new(url.clone()).client_id("reader")).await;
        let ok = reader.join("log").await.unwrap();
        assert!(
            ok.next_seq <= acked_through + 1,
            "cursor {} moved past the acknowledged {acked_through}",
            ok.next_seq
        );
        assert!(ok.next_seq <= ok.last_seq + 1, "cursor past the log");
        let ack_task = tokio::spawn(async move {
            // An ack sent but not answered may still have been stored.
            let mut high = 0;
            while let Some(d) = reader_d.next_delivery().await {
                high = seq(&d);
                if reader
                    .ack_up_to(&d.room, &d.subscription, seq(&d))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            high
        });

        let (p, _pd) = connect_retry(ConnectOptions::new(url.clone()).client_id("writer")).await;
        let count = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..PUBLISHERS {
            let (p, confirmed, count) = (p.clone(), confirmed.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let body = format!("c{cycle}-t{t}-{i}").into_bytes();
                    match p.publish("log", "e", body.clone()).await {
                        Ok(_) => {
                            confirmed.lock().unwrap().insert(body);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while count.load(Ordering::Relaxed) < CONFIRMED_BEFORE_KILL {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing too slow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        daemon.kill9();
        for t in tasks {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
        acked_through =
            acked_through.max(tokio::time::timeout(WAIT, ack_task).await.unwrap().unwrap());
    }

    let (daemon, http) = start_daemon_ws(dir.path(), 0);
    let (c, mut d) =
        connect_retry(ConnectOptions::new(format!("ws://{http}")).client_id("verifier")).await;
    let ok = c
        .join_with(join("log", pb::StartPosition::Earliest, 1000, 3_600_000))
        .await
        .unwrap();
    let mut stored = std::collections::HashSet::new();
    for expected in 1..=ok.last_seq {
        let got = next(&mut d).await;
        assert_eq!(seq(&got), expected, "a gap or a reordering");
        assert!(stored.insert(payload(&got)), "a message stored twice");
        if expected % 500 == 0 {
            c.ack_up_to("log", "", expected).await.unwrap();
        }
    }
    let confirmed = confirmed.lock().unwrap();
    let lost = confirmed.difference(&stored).count();
    assert_eq!(lost, 0, "{lost} confirmed messages lost");
    assert!(confirmed.len() >= CYCLES * CONFIRMED_BEFORE_KILL);
    daemon.kill9();
}

/// A self-signed certificate for "localhost" and 127.0.0.1, as PEM files.
struct Certs {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Certs {
            _dir: dir,
            cert,
            key,
        }
    }

    fn trust(&self) -> roomq_client::TlsOptions {
        roomq_client::TlsOptions::trusting_pem_file(&self.cert, "localhost").unwrap()
    }
}

/// With `[tls]` configured, the HTTP listener serves WSS with the same
/// certificate, and a WSS session and a TLS session share a room.
#[tokio::test]
async fn with_tls_the_http_listener_serves_wss_with_the_same_certificate() {
    let certs = Certs::new();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.tls.cert_path = certs.cert.clone();
    config.tls.key_path = certs.key.clone();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let broker = TestBroker::start_ws_unready(any, any, config, dir, |s| s).await;
    let http = broker.http_addr();

    let wss = ConnectOptions::new(format!("wss://{http}")).tls(certs.trust());
    let (web, mut web_d) = connect_retry(wss.clone().client_id("web")).await;
    let (tls, mut tls_d) =
        connect_retry(broker.options().tls(certs.trust()).client_id("tls")).await;
    for c in [&web, &tls] {
        c.join_with(join("secure", pb::StartPosition::New, 0, 3_600_000))
            .await
            .unwrap();
    }
    web.publish_with(except_self("secure", "from wss".into()))
        .await
        .unwrap();
    tls.publish_with(except_self("secure", "from tls".into()))
        .await
        .unwrap();
    assert_eq!(text(&next(&mut tls_d).await), "from wss");
    assert_eq!(text(&next(&mut web_d).await), "from tls");

    // Plain ws:// and plain HTTP get no service from the TLS listener.
    let plain = tokio::time::timeout(
        WAIT,
        Connection::connect(ConnectOptions::new(format!("ws://{http}"))),
    )
    .await
    .expect("refused within the wait");
    assert!(plain.is_err(), "plain ws:// to the TLS listener");
    assert!(
        get(http, "/healthz").await.is_err(),
        "plain HTTP to the TLS listener"
    );
    // A client that does not trust the certificate is refused.
    let untrusting =
        roomq_client::TlsOptions::trusting_pem_file(&Certs::new().cert, "localhost").unwrap();
    let refused = tokio::time::timeout(
        WAIT,
        Connection::connect(ConnectOptions::new(format!("wss://{http}")).tls(untrusting)),
    )
    .await
    .expect("refused within the wait");
    assert!(refused.is_err(), "a certificate the client does not trust");
    broker.stop().await;
}

/// The idle timeout applies over WebSocket as over TCP: IDLE_TIMEOUT, then
/// close code 1008.
#[tokio::test(start_paused = true)]
async fn a_silent_websocket_session_gets_idle_timeout_then_1008_and_pings_do_not_count() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(&dir);
    let idle = config.limits.idle_timeout();
    let broker = TestBroker::start_ws(config, dir).await;
    let start = tokio::time::Instant::now();
    let mut ws = RawWs::connect_handshaken(broker.http_addr(), "/", "").await;
    let closed = ws
        .until_closed(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    let after = start.elapsed();
    let e = closed.last_error().expect("an error frame");
    assert_eq!(e.error_code(), Some(ErrorCode::IdleTimeout), "{closed:?}");
    assert!(e.fatal);
    assert_eq!(closed.close_code(), Some(1008), "{closed:?}");
    assert!(
        after >= idle && after < idle + Duration::from_secs(1),
        "closed after {after:?}"
    );

    // WebSocket pings are answered but are not activity (protocol.md §10):
    // only complete messages are.
    let start = tokio::time::Instant::now();
    let mut ws = RawWs::connect_handshaken(broker.http_addr(), "/", "").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(25)).await;
        ws.send(&ws_frame(true, op::PING, b"keepalive"))
            .await
            .unwrap();
        let got = ws.next(WAIT).await.unwrap();
        assert_eq!(got, Some(WsIn::Pong(Bytes::from_static(b"keepalive"))));
    }
    // No more pings: the timeout counts from the handshake, not the pings.
    let closed = ws
        .until_closed(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    let after = start.elapsed();
    let e = closed.last_error().expect("an error frame");
    assert_eq!(e.error_code(), Some(ErrorCode::IdleTimeout), "{closed:?}");
    assert_eq!(closed.close_code(), Some(1008), "{closed:?}");
    assert!(
        after >= idle && after < idle + Duration::from_secs(1),
        "closed after {after:?}"
    );
    broker.stop().await;
}

/// A WebSocket member that stops reading is cut off at the write deadline
/// while the publisher goes on being confirmed, and its durable membership
/// gives it everything when it comes back over WebSocket.
#[tokio::test(start_paused = true)]
async fn a_websocket_consumer_that_stops_reading_is_cut_off_and_loses_nothing() {
    const ROOM: &str = "ws-slow";
    const MESSAGES: u64 = 256;
    const SIZE: usize = 64 * 1024;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.write_timeout_ms = 2_000;
    config.limits.max_queued_deliveries = 16;
    config.storage.room_cache_bytes = 1024 * 1024;
    config.storage.cache_bytes = 4 * 1024 * 1024;
    let write_deadline = config.limits.write_timeout();
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(http).await.unwrap();
    let mut conn = HttpConn::from_stream(stream);
    conn.send(&UpgradeRequest::new(http).bytes()).await.unwrap();
    check_switching(&conn.response(false, WAIT).await.unwrap());
    let mut ws = RawWs::from_http(conn);
    let mut hello = ws_msg(&handshake(1, "/", "slow"));
    hello.extend(ws_msg(&request(
        2,
        Req::Join(join(ROOM, pb::StartPosition::New, 0, 86_400_000)),
    )));
    ws.send(&hello).await.unwrap();
    assert!(matches!(
        ws.next_server_frame(WAIT).await.unwrap().body,
        Some(Rep::HandshakeOk(_))
    ));
    let joined = ws.next_server_frame(WAIT).await.unwrap();
    assert!(
        matches!(joined.body, Some(Rep::JoinOk(ref j)) if j.durable),
        "{joined:?}"
    );

    let members = |c: Connection| async move {
        let rooms = c.list_rooms().await.unwrap();
        rooms
            .iter()
            .find(|r| r.name == ROOM)
            .map(|r| r.connected_members)
            .expect("the room is listed")
    };
    let (publisher, _pd) = broker.connect("publisher").await;
    let start = tokio::time::Instant::now();
    for i in 1..=MESSAGES {
        let mut body = vec![(i % 251) as u8; SIZE];
        body[..8].copy_from_slice(&i.to_be_bytes());
        assert_eq!(publisher.publish(ROOM, "e", body).await.unwrap(), i);
    }
    assert!(
        start.elapsed() < write_deadline / 2,
        "{:?}",
        start.elapsed()
    );
    assert_eq!(members(publisher.clone()).await, 1);
    tokio::time::sleep(write_deadline - Duration::from_millis(500)).await;
    assert_eq!(members(publisher.clone()).await, 1, "cut off early");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(members(publisher.clone()).await, 0, "still connected");
    drop(ws);

    let (slow, mut d) = broker.connect_ws("slow").await;
    assert!(slow.resumed());
    let ok = slow
        .join_with(join(ROOM, pb::StartPosition::Resume, 0, 86_400_000))
        .await
        .unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (1, MESSAGES));
    for i in 1..=MESSAGES {
        let got = next_paused(&mut d).await;
        assert_eq!(seq(&got), i, "in seq order");
        let body = payload(&got);
        assert_eq!((body.len(), &body[..8]), (SIZE, &i.to_be_bytes()[..]));
        if i % 64 == 0 {
            slow.ack_up_to(ROOM, "", i).await.unwrap();
        }
    }
    broker.stop().await;
}
