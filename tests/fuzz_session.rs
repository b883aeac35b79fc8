//! Random sessions against a live broker: a valid handshake, then a seeded
//! random mix of well-formed requests with hostile field values, mutated
//! frames, garbage and oversized lengths. Whatever a session sends, the
//! broker must answer or close it, never panic, and keep serving others.
//! Bounded: 150 sessions of at most 24 frames, a fixed seed per run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use prost::Message as _;
use roomq_client::proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// xorshift64*: a small deterministic generator, so a failure can be
/// replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
    fn name(&mut self) -> String {
        match self.below(6) {
            0 => String::new(),
            1 => "x".repeat(256),
            2 => "a\u{0}b".into(),
            3 => "../etc".into(),
            4 => String::from_utf8_lossy(&self.bytes(8)).into_owned(),
            _ => format!("room{}", self.below(3)),
        }
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.to_vec()
}

fn request(rng: &mut Rng) -> Vec<u8> {
    use pb::client_frame::Body;
    let room = rng.name();
    let sub = if rng.below(2) == 0 {
        String::new()
    } else {
        rng.name()
    };
    let seqs: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(20)).collect();
    let body = match rng.below(10) {
        0 => Body::Join(pb::Join {
            room,
            subscription: sub,
            mode: rng.below(5) as i32,
            start: rng.below(6) as i32,
            start_seq: rng.next(),
            max_in_flight: rng.below(3000) as u32,
            ack_timeout_ms: rng.next(),
            group: if rng.below(3) == 0 {
                rng.name()
            } else {
                String::new()
            },
            group_mode: rng.below(3) as i32,
            backoff_ms: (0..rng.below(4)).map(|_| rng.next()).collect(),
            max_deliveries: [None, Some(0), Some(1)][rng.below(3) as usize],
            events: (0..rng.below(3)).map(|_| rng.name()).collect(),
            presence: rng.below(2) == 0,
            start_time_ms: rng.next(),
        }),
        1 => Body::Leave(pb::Leave {
            room,
            subscription: sub,
            forget: rng.below(2) == 0,
        }),
        2 | 3 => Body::Publish(pb::Publish {
            rooms: (0..rng.below(4)).map(|_| rng.name()).collect(),
            event: rng.name(),
            payload: Bytes::from(rng.some_bytes(300)),
            dedup_id: {
                let len = [0, 16, 5][rng.below(3) as usize];
                Bytes::from(rng.bytes(len))
            },
            except_self: rng.below(2) == 0,
            key: if rng.below(2) == 0 {
                rng.name()
            } else {
                String::new()
            },
            ttl_ms: [0, 1, rng.next()][rng.below(3) as usize],
            delay_ms: [0, 1, rng.next()][rng.below(3) as usize],
            deliver_at_ms: [0, rng.next()][rng.below(2) as usize],
            volatile: rng.below(4) == 0,
            except_rooms: (0..rng.below(3)).map(|_| rng.name()).collect(),
            except_sessions: (0..rng.below(3))
                .map(|_| {
                    let len = [16, 3][rng.below(2) as usize];
                    Bytes::from(rng.bytes(len))
                })
                .collect(),
            ..Default::default()
        }),
        4 => Body::Ack(pb::Ack {
            room,
            subscription: sub,
            seqs,
            up_to: rng.below(30),
        }),
        5 => Body::Nack(pb::Nack {
            room,
            subscription: sub,
            seqs,
            delay_ms: rng.next(),
            reason: rng.name(),
        }),
        6 => Body::InProgress(pb::InProgress {
            room,
            subscription: sub,
            seqs,
        }),
        7 if rng.below(2) == 0 => Body::Members(pb::Members { room }),
        7 => Body::ListRooms(pb::ListRooms {}),
        8 => Body::Handshake(pb::Handshake::default()),
        _ => Body::Ping(pb::Ping { nonce: rng.next() }),
    };
    let mut raw = pb::ClientFrame {
        request_id: rng.next(),
        body: Some(body),
    }
    .encode_to_vec();
    if rng.below(8) == 0 && !raw.is_empty() {
        let i = rng.below(raw.len() as u64) as usize;
        raw[i] ^= rng.next() as u8 | 1;
    }
    framed(&raw)
}

fn hostile(rng: &mut Rng) -> Vec<u8> {
    match rng.below(12) {
        0 => vec![0xFF, 0xFF, 0xFF, 0xFF],
        1 => framed(&rng.some_bytes(64)),
        2 => rng.some_bytes(16),
        _ => request(rng),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_never_hurt_the_broker() {
    let broker = TestBroker::start().await;
    let (healthy, _hd) = broker.connect("healthy").await;
    let seed = 0x5EED_0000_0000_0001u64;
    let mut rng = Rng(seed);
    let handshake = framed(
        &pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Handshake(pb::Handshake {
                protocol_version: 1,
                namespace: "/fuzz".into(),
                client_id: "fuzzer".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    );
    for session in 0..150 {
        let mut s = TcpStream::connect(broker.addr).await.unwrap();
        let mut bytes = handshake.clone();
        for _ in 0..rng.below(24) {
            bytes.extend(hostile(&mut rng));
        }
        // The broker may close early on a fatal frame: a failed write is fine.
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok(),
            "session {session} (seed {seed:#x}) was neither answered nor closed"
        );
        if session % 25 == 0 {
            healthy.ping().await.unwrap();
        }
    }
    healthy.ping().await.unwrap();
    assert_eq!(healthy.publish("after-fuzz", "e", "ok").await.unwrap(), 1);
    broker.stop().await;
}
