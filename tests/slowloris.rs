//! Floods (G6): connections that hold a slot without finishing a frame, and
//! a client that pipelines requests without reading its replies. Neither
//! may take the broker from a client that behaves: the slots come back at
//! the handshake deadline, and the pipelining client is slowed (the broker
//! stops reading it) rather than buffered without bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{error_of, frame, handshake, request, FrameReader};
use common::*;
use roomq_client::raw::{Connection, Deliveries};
use roomq_client::{proto as pb, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use pb::client_frame::Body as Req;
use pb::server_frame::Body as Rep;

/// A virtual day: the bound for waits under paused time.
const A_DAY: Duration = Duration::from_secs(24 * 3600);
/// How long a refusal may take.
const ANSWER: Duration = Duration::from_secs(1);

/// A client that keeps publishing to its own room and checks that every
/// message comes back, next in seq order.
struct Healthy {
    conn: Connection,
    deliveries: Deliveries,
    room: &'static str,
    seq: u64,
}

impl Healthy {
    async fn connect(broker: &TestBroker, room: &'static str) -> Healthy {
        let (conn, deliveries) = broker.connect("healthy").await;
        conn.join_with(join(room, pb::StartPosition::New, 0, 3_600_000))
            .await
            .unwrap();
        Healthy {
            conn,
            deliveries,
            room,
            seq: 0,
        }
    }

    /// Publishes one message and receives it; `wait` bounds each step.
    async fn round(&mut self, wait: Duration) {
        self.seq += 1;
        let body = format!("message {}", self.seq);
        let stored = tokio::time::timeout(wait, self.conn.publish(self.room, "e", body.clone()))
            .await
            .expect("the publish is confirmed in time")
            .unwrap();
        assert_eq!(stored, self.seq, "confirmed with the next seq");
        let got = tokio::time::timeout(wait, self.deliveries.next_delivery())
            .await
            .expect("the message is delivered in time")
            .expect("the connection is open");
        assert_eq!(seq(&got), self.seq, "delivered in seq order");
        assert_eq!(got.attempt, 1);
        assert_eq!(payload(&got), body.into_bytes());
        self.conn.ack(self.room, "", &[self.seq]).await.unwrap();
    }
}

/// Serialises the tests of this file (see each test's first line).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connects and expects the connection-limit refusal, then the close.
async fn expect_refused(broker: &TestBroker) {
    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, _write) = stream.into_split();
    let frames = FrameReader::new(read).until_closed(ANSWER).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let e = error_of(&frames[0]).expect("an error frame");
    assert_eq!(e.error_code(), Some(ErrorCode::TooManyConnections));
    assert!(e.fatal);
    assert_eq!(frames[0].request_id, 0);
}

#[tokio::test(start_paused = true)]
async fn silent_connections_fill_the_limit_until_the_handshake_deadline() {
    // One test of this file at a time: the flood test measures the
    // process's memory, which the others would disturb.
    let _serial = SERIAL.lock().await;
    const MAX: usize = 40;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_connections = MAX as u32;
    let deadline = config.limits.handshake_timeout();
    let broker = TestBroker::start_with(config, dir).await;
    let mut healthy = Healthy::connect(&broker, "sl-live").await;
    healthy.round(A_DAY).await;

    // A quarter of the slots go to connections that send nothing, the rest
    // to connections that send one to three bytes of a length prefix.
    let start = Instant::now();
    let mut silent = Vec::new();
    for i in 0..MAX - 1 {
        let mut s = TcpStream::connect(broker.addr).await.unwrap();
        let prefix = [0u8, 0, 0x10];
        s.write_all(&prefix[..i % 4]).await.unwrap();
        silent.push(s);
        healthy.round(A_DAY).await;
    }
    for _ in 0..3 {
        expect_refused(&broker).await;
        healthy.round(A_DAY).await;
    }
    // Virtual time only moves when nothing is runnable: the refusals above
    // happened while every silent connection was still inside its deadline.
    assert!(
        start.elapsed() < deadline,
        "the test outran its own premise: {:?} passed",
        start.elapsed()
    );

    for (i, s) in silent.into_iter().enumerate() {
        let (read, write) = s.into_split();
        let frames = FrameReader::new(read).until_closed(A_DAY).await;
        assert!(start.elapsed() >= deadline, "connection {i} closed early");
        assert_eq!(frames.len(), 1, "connection {i}: {frames:?}");
        let e = error_of(&frames[0]).expect("an error frame");
        assert_eq!(e.error_code(), Some(ErrorCode::HandshakeTimeout));
        drop(write);
    }
    let closed_at = start.elapsed();
    assert!(closed_at < deadline * 2, "closed after {closed_at:?}");
    // A refused connection lingers for at most 500 ms after its error.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every slot is back: MAX - 1 new sessions fit beside the healthy one,
    // and the limit still holds after them.
    let mut fresh = Vec::new();
    for i in 0..MAX - 1 {
        let (c, d) = Connection::connect(broker.options())
            .await
            .unwrap_or_else(|e| panic!("connection {i} after the deadline: {e}"));
        fresh.push((c, d));
    }
    expect_refused(&broker).await;
    fresh[0].0.ping().await.unwrap();
    healthy.round(A_DAY).await;
    drop(fresh);
    broker.stop().await;
}

/// Sends `bytes` on a fresh connection, then one byte of `trickle` every
/// `every` until the broker closes the connection. Returns the broker's
/// frames, when it closed (from the connect) and how many bytes trickled.
async fn trickle(
    broker: &TestBroker,
    bytes: &[u8],
    trickle: &[u8],
    every: Duration,
) -> (Vec<pb::ServerFrame>, Duration, usize) {
    let start = Instant::now();
    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(bytes).await.unwrap();
    let reader = tokio::spawn(async move {
        let frames = FrameReader::new(read).until_closed(A_DAY).await;
        (frames, start.elapsed())
    });
    let mut sent = 0;
    for b in trickle {
        tokio::time::sleep(every).await;
        if reader.is_finished() || write.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
    }
    let (frames, closed_after) = reader.await.unwrap();
    (frames, closed_after, sent)
}

/// Bytes that trickle in do not extend a deadline: the handshake deadline
/// and the idle timeout count from the start of the frame, not from the
/// last byte.
#[tokio::test(start_paused = true)]
async fn a_trickle_of_bytes_does_not_hold_a_connection_open() {
    // One test of this file at a time: the flood test measures the
    // process's memory, which the others would disturb.
    let _serial = SERIAL.lock().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(&dir);
    let handshake_deadline = config.limits.handshake_timeout();
    let idle = config.limits.idle_timeout();
    let broker = TestBroker::start_with(config, dir).await;

    // A handshake, one byte a second.
    let hello = frame(&handshake(1, "/", "trickler"));
    let (frames, closed_after, sent) = trickle(&broker, &[], &hello, Duration::from_secs(1)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        error_of(&frames[0]).and_then(|e| e.error_code()),
        Some(ErrorCode::HandshakeTimeout)
    );
    assert!(closed_after >= handshake_deadline && closed_after < handshake_deadline * 2);
    assert!(sent >= 4 && sent < hello.len(), "{sent} bytes trickled");

    // After the handshake: a ping, one byte every ten seconds.
    let ping = frame(&request(1, Req::Ping(pb::Ping { nonce: 1 })));
    let mut slow_ping = ping.clone();
    slow_ping.extend_from_slice(&[0; 64]); // more bytes than can trickle in time
    slow_ping[3] = u8::try_from(slow_ping.len() - 4).unwrap();
    let (frames, closed_after, sent) = trickle(
        &broker,
        &frame(&handshake(1, "/", "trickler")),
        &slow_ping,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(matches!(frames[0].body, Some(Rep::HandshakeOk(_))));
    assert_eq!(
        error_of(&frames[1]).and_then(|e| e.error_code()),
        Some(ErrorCode::IdleTimeout)
    );
    assert!(closed_after >= idle && closed_after < idle * 2);
    assert!(sent >= 5, "{sent} bytes trickled");
    broker.stop().await;
}

/// Requests of the flood: 99 pings, then a publish, over and over.
fn flood_request(id: u64) -> pb::ClientFrame {
    if id.is_multiple_of(100) {
        request(
            id,
            Req::Publish(pb::Publish {
                rooms: vec!["sl-flood".into()],
                event: "flood".into(),
                payload: Bytes::from_static(b"flood"),
                ..Default::default()
            }),
        )
    } else {
        request(id, Req::Ping(pb::Ping { nonce: id }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_slowed_and_others_are_not() {
    // One test of this file at a time: the flood test measures the
    // process's memory, which the others would disturb.
    let _serial = SERIAL.lock().await;
    // Far more than every socket buffer and the pending-request budget
    // together; a broker that kept reading would take all of it.
    const CAP: u64 = 64 * 1024 * 1024;
    const CHUNK: u64 = 1000;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    // This is about the read side: a slow machine must not turn the
    // flooder into a slow consumer (tests/slow_consumer.rs) before it reads.
    config.limits.write_timeout_ms = 600_000;
    let broker = TestBroker::start_with(config, dir).await;
    let mut healthy = Healthy::connect(&broker, "sl-live").await;

    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(&frame(&handshake(1, "/", "flooder")))
        .await
        .unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, requests, stop) = (written.clone(), requests.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next_id = 2;
            while !stop.load(Ordering::SeqCst) && written.load(Ordering::SeqCst) < CAP {
                let chunk: Vec<u8> = (next_id..next_id + CHUNK)
                    .flat_map(|id| frame(&flood_request(id)))
                    .collect();
                write.write_all(&chunk).await.unwrap();
                next_id += CHUNK;
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                requests.fetch_add(CHUNK, Ordering::SeqCst);
            }
            write
        })
    };

    // The flood stalls: its count stands still while the healthy client
    // does twenty rounds in a row, well before the cap.
    let started = Instant::now();
    let mut last = u64::MAX;
    let mut still = 0;
    let mut rounds = 0;
    while still < 20 {
        assert!(started.elapsed() < WAIT, "the flood never stalled");
        healthy.round(WAIT).await;
        rounds += 1;
        let now = written.load(Ordering::SeqCst);
        assert!(
            now < CAP,
            "the broker read {now} bytes of a client that reads nothing"
        );
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    println!(
        "the flood stalled at {} KiB ({} requests); the healthy client did {rounds} rounds meanwhile",
        last / 1024,
        requests.load(Ordering::SeqCst)
    );

    // Slowed, not refused: once the client reads, every request it managed
    // to send gets exactly one reply, the pongs in order, the publishes
    // confirmed with consecutive seqs.
    stop.store(true, Ordering::SeqCst);
    let mut reader = FrameReader::new(read);
    let first = reader.next(WAIT).await.expect("the handshake reply");
    assert!(matches!(first.body, Some(Rep::HandshakeOk(_))));
    let mut answered = HashSet::new();
    let mut last_pong = 1;
    let mut last_seq = 0;
    let write = loop {
        if writer.is_finished() && answered.len() as u64 == requests.load(Ordering::SeqCst) {
            break writer.await.unwrap();
        }
        let f = reader.next(WAIT).await.expect("the connection stays open");
        assert!(
            answered.insert(f.request_id),
            "two replies to {}",
            f.request_id
        );
        match f.body {
            Some(Rep::Pong(p)) => {
                assert_eq!(p.nonce, f.request_id);
                assert!(f.request_id > last_pong, "pongs out of order");
                last_pong = f.request_id;
            }
            Some(Rep::PublishOk(ok)) => {
                assert_eq!(
                    ok.seqs[0].seq,
                    last_seq + 1,
                    "publish confirmations in order"
                );
                last_seq += 1;
            }
            other => panic!("unexpected reply to {}: {other:?}", f.request_id),
        }
    };
    let total = requests.load(Ordering::SeqCst);
    assert_eq!(answered.len() as u64, total);
    assert!(answered.iter().all(|id| (2..2 + total).contains(id)));
    assert_eq!(
        last_seq,
        total / 100,
        "every publish of the flood stored once"
    );
    healthy.round(WAIT).await;
    drop(write);
    broker.stop().await;
}

/// Joins and leaves `cycles` times, pipelined 500 pairs at a time, an
/// ephemeral membership of `room` that starts at its first message (so a
/// join gets a delivery, which arms an ack timer of a day). Reads every
/// reply and delivery.
async fn churn(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    reader: &mut FrameReader,
    next_id: &mut u64,
    room: &str,
    cycles: u64,
) {
    let label = format!("churn-{}", "x".repeat(249)); // 255 bytes, the longest name
    for _ in 0..cycles / 500 {
        let mut bytes = Vec::new();
        for _ in 0..500 {
            let join = pb::Join {
                room: room.into(),
                subscription: label.clone(),
                mode: pb::MemberMode::Ephemeral as i32,
                start: pb::StartPosition::Earliest as i32,
                ack_timeout_ms: 86_400_000,
                ..Default::default()
            };
            let leave = pb::Leave {
                room: room.into(),
                subscription: label.clone(),
                forget: false,
            };
            bytes.extend(frame(&request(*next_id, Req::Join(join))));
            bytes.extend(frame(&request(*next_id + 1, Req::Leave(leave))));
            *next_id += 2;
        }
        write.write_all(&bytes).await.unwrap();
        // Every request is answered; a delivery may or may not make it
        // before its leave (the queue holds replies first).
        let mut replies = 0;
        while replies < 1000 {
            let f = reader.next(WAIT).await.expect("the connection stays open");
            match f.body {
                Some(Rep::JoinOk(_) | Rep::LeaveOk(_)) => replies += 1,
                Some(Rep::Delivery(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// A member that is gone costs nothing: a client that joins (getting a
/// delivery, so an ack timer is armed) and leaves over and over must not
/// leave memory behind for each membership it dropped. After a warm-up,
/// the cycles run in phases: a leak grows the process in every phase,
/// while allocator noise does not, so the smallest growth of a phase is
/// what is bounded.
#[tokio::test]
async fn a_flood_of_joins_and_leaves_leaves_no_memory_behind() {
    // One test of this file at a time: the flood test measures the
    // process's memory, which the others would disturb.
    let _serial = SERIAL.lock().await;
    const WARM_UP: u64 = 20_000;
    const PHASE: u64 = 25_000;
    const PHASES: usize = 3;
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("publisher").await;
    p.publish("sl-churn", "e", "one message").await.unwrap();
    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(&frame(&handshake(1, "/", "")))
        .await
        .unwrap();
    let mut reader = FrameReader::new(read);
    let hello = reader.next(WAIT).await.unwrap();
    assert!(matches!(hello.body, Some(Rep::HandshakeOk(_))));
    let mut id = 2;

    churn(&mut write, &mut reader, &mut id, "sl-churn", WARM_UP).await;
    let mut growth = Vec::new();
    for _ in 0..PHASES {
        let before = common::wire::rss_bytes();
        churn(&mut write, &mut reader, &mut id, "sl-churn", PHASE).await;
        growth.push(common::wire::rss_bytes().saturating_sub(before));
    }
    let least = growth.iter().copied().min().unwrap();
    println!(
        "RSS growth over {PHASES} phases of {PHASE} join/leave cycles: {:?} KiB",
        growth.iter().map(|g| g / 1024).collect::<Vec<_>>()
    );
    assert!(
        least < 2 * 1024 * 1024,
        "memory grew in every phase of {PHASE} join/leave cycles of one membership, \
         by at least {} KiB ({} bytes a cycle): something of every departed member is kept",
        least / 1024,
        least / PHASE
    );
    drop(write);
    broker.stop().await;
}
