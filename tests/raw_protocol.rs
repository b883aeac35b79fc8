//! Raw bytes on the socket: every malformed or out-of-order input gets its
//! documented error (or a close) and the broker keeps serving others (G6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use prost::Message as _;
use roomq_client::{proto as pb, ErrorCode};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn frame(msg: &pb::ClientFrame) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.to_vec()
}

fn handshake() -> pb::ClientFrame {
    pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Handshake(pb::Handshake {
            protocol_version: 1,
            namespace: "/".into(),
            ..Default::default()
        })),
    }
}

/// Reads server frames until the broker closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<pb::ServerFrame> {
    read_until_closed_within(stream, WAIT).await
}

/// As [`read_until_closed`], with a wait that may be virtual (paused time).
async fn read_until_closed_within(
    stream: &mut TcpStream,
    wait: std::time::Duration,
) -> Vec<pb::ServerFrame> {
    let mut raw = Vec::new();
    tokio::time::timeout(wait, stream.read_to_end(&mut raw))
        .await
        .expect("the broker closes the connection")
        .expect("read");
    let mut frames = Vec::new();
    let mut rest = &raw[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        frames.push(pb::ServerFrame::decode(&rest[4..4 + len]).expect("valid server frame"));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing partial frame");
    frames
}

fn last_error(frames: &[pb::ServerFrame]) -> pb::Error {
    match frames.last().and_then(|f| f.body.clone()) {
        Some(pb::server_frame::Body::Error(e)) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Sends `bytes` on a fresh connection and returns the closing error.
async fn send_and_expect(broker: &TestBroker, bytes: &[u8], code: ErrorCode) {
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    let e = last_error(&frames);
    assert_eq!(e.error_code(), Some(code), "{e:?}");
    assert_eq!(e.name, code.name());
    assert!(e.fatal);
}

async fn still_serving(broker: &TestBroker) {
    let (c, _d) = broker.connect("healthy").await;
    c.ping().await.unwrap();
    c.publish("health", "e", "ok").await.unwrap();
}

#[tokio::test]
async fn oversized_lengths_are_refused_before_buffering() {
    let broker = TestBroker::start().await;
    send_and_expect(&broker, &[0xFF, 0xFF, 0xFF, 0xFF], ErrorCode::FrameTooLarge).await;
    let over = (1024 * 1024 + 1u32).to_be_bytes();
    send_and_expect(&broker, &over, ErrorCode::FrameTooLarge).await;

    // After the handshake too.
    let mut bytes = frame(&handshake());
    bytes.extend_from_slice(&over);
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert!(matches!(
        frames.first().and_then(|f| f.body.clone()),
        Some(pb::server_frame::Body::HandshakeOk(_))
    ));
    assert_eq!(
        last_error(&frames).error_code(),
        Some(ErrorCode::FrameTooLarge)
    );
    still_serving(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn garbage_is_answered_and_closed() {
    let broker = TestBroker::start().await;
    // An HTTP request reads as a huge length prefix.
    send_and_expect(
        &broker,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ErrorCode::FrameTooLarge,
    )
    .await;
    // A plausible length followed by bytes that are not protobuf.
    let mut bytes = vec![0, 0, 0, 6];
    bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    send_and_expect(&broker, &bytes, ErrorCode::MalformedFrame).await;
    // The same after a good handshake.
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let mut after = frame(&handshake());
    after.extend_from_slice(&bytes);
    s.write_all(&after).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(
        last_error(&frames).error_code(),
        Some(ErrorCode::MalformedFrame)
    );
    still_serving(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn anything_but_a_handshake_first_is_refused() {
    let broker = TestBroker::start().await;
    let ping = pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce: 1 })),
    };
    send_and_expect(&broker, &frame(&ping), ErrorCode::HandshakeRequired).await;
    let publish = pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Publish(pb::Publish {
            rooms: vec!["a".into()],
            event: "e".into(),
            ..Default::default()
        })),
    };
    send_and_expect(&broker, &frame(&publish), ErrorCode::HandshakeRequired).await;
    // A zero-length frame is an empty ClientFrame: no handshake either.
    send_and_expect(&broker, &[0, 0, 0, 0], ErrorCode::HandshakeRequired).await;
    let mut v2 = handshake();
    if let Some(pb::client_frame::Body::Handshake(h)) = &mut v2.body {
        h.protocol_version = 2;
    }
    send_and_expect(&broker, &frame(&v2), ErrorCode::UnsupportedVersion).await;
    still_serving(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn half_a_frame_then_eof_is_a_quiet_close() {
    let broker = TestBroker::start().await;
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let bytes = frame(&handshake());
    s.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert!(frames.is_empty());

    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let mut bytes = frame(&handshake());
    bytes.extend_from_slice(&[0, 0, 1, 0, 1, 2, 3]);
    s.write_all(&bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames.len(), 1, "only the handshake reply");
    still_serving(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn requests_after_the_handshake_are_pipelined_and_errors_are_not_fatal() {
    let broker = TestBroker::start().await;
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let mut bytes = frame(&handshake());
    for id in 10..20u64 {
        bytes.extend(frame(&pb::ClientFrame {
            request_id: id,
            body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce: id })),
        }));
    }
    // A second handshake and an empty frame: typed errors, not closes.
    bytes.extend(frame(&pb::ClientFrame {
        request_id: 30,
        ..handshake()
    }));
    bytes.extend(frame(&pb::ClientFrame {
        request_id: 31,
        body: None,
    }));
    bytes.extend(frame(&pb::ClientFrame {
        request_id: 32,
        body: Some(pb::client_frame::Body::Ack(pb::Ack {
            room: "nowhere".into(),
            seqs: vec![1],
            ..Default::default()
        })),
    }));
    s.write_all(&bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let frames = read_until_closed(&mut s).await;
    let ids: Vec<u64> = frames.iter().map(|f| f.request_id).collect();
    assert_eq!(ids, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 30, 31, 32]);
    for f in &frames[1..11] {
        assert!(
            matches!(f.body, Some(pb::server_frame::Body::Pong(pb::Pong { nonce })) if nonce == f.request_id)
        );
    }
    let codes: Vec<_> = frames[11..]
        .iter()
        .map(|f| match &f.body {
            Some(pb::server_frame::Body::Error(e)) => (e.error_code(), e.fatal),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (Some(ErrorCode::InvalidRequest), false),
            (Some(ErrorCode::InvalidRequest), false),
            (Some(ErrorCode::NotJoined), false),
        ]
    );
    broker.stop().await;
}

async fn paused_broker() -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    TestBroker::start_with(test_config(&dir), dir).await
}

#[tokio::test(start_paused = true)]
async fn silent_connections_hit_the_handshake_deadline() {
    let broker = paused_broker().await;
    let start = tokio::time::Instant::now();
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(
        last_error(&frames).error_code(),
        Some(ErrorCode::HandshakeTimeout)
    );
    assert!(start.elapsed() >= std::time::Duration::from_secs(5));
    // A header and then silence is the same.
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 50]).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(
        last_error(&frames).error_code(),
        Some(ErrorCode::HandshakeTimeout)
    );
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let broker = paused_broker().await;
    let start = tokio::time::Instant::now();
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(&frame(&handshake())).await.unwrap();
    let frames = read_until_closed_within(&mut s, std::time::Duration::from_secs(3600)).await;
    assert_eq!(
        last_error(&frames).error_code(),
        Some(ErrorCode::IdleTimeout)
    );
    assert!(start.elapsed() >= std::time::Duration::from_secs(60));
    broker.stop().await;
}
