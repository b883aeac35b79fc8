//! A consumer that stops reading its socket (SPEC §6, protocol.md §7): the
//! broker hands it no more than its bounded queue holds and goes on
//! confirming publishes, disconnects it when a write makes no progress for
//! the write deadline, and its durable membership keeps every message for
//! its return.
//!
//! The memory bound is checked on what the broker handed the connection
//! (counted when it comes back as redeliveries), not on the process's RSS:
//! sled 0.34's memory grows with the bytes written, far past its
//! `cache_capacity`, which would drown what a queue costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{frame, handshake, request, FrameReader};
use common::*;
use futures::{StreamExt, TryStreamExt};
use prost::Message as _;
use roomq_client::proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use pb::server_frame::Body as Rep;

const ROOM: &str = "sc-room";
/// Messages published while the consumer does not read.
const MESSAGES: u64 = 768;
/// Payload size: 768 x 64 KiB = 48 MiB, far more than socket buffers hold.
const SIZE: usize = 64 * 1024;

/// A payload that says which message it is.
fn payload_of(i: u64) -> Bytes {
    let mut p = vec![(i % 251) as u8; SIZE];
    p[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(p)
}

async fn connected_members(c: &roomq_client::raw::Connection) -> u32 {
    let rooms = c.list_rooms().await.unwrap();
    rooms
        .iter()
        .find(|r| r.name == ROOM)
        .map(|r| r.connected_members)
        .expect("the room is listed")
}

/// Complete server frames at the start of `raw`; a frame cut short at the
/// end (the broker stopped writing in the middle of it) is left out.
fn whole_frames(raw: &[u8]) -> Vec<pb::ServerFrame> {
    let mut frames = Vec::new();
    let mut rest = raw;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + len {
            break;
        }
        frames.push(pb::ServerFrame::decode(&rest[4..4 + len]).expect("a valid server frame"));
        rest = &rest[4 + len..];
    }
    frames
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_stops_reading_is_cut_off_at_the_write_deadline_and_loses_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.write_timeout_ms = 2_000;
    config.limits.max_queued_deliveries = 16;
    // Small caches, so that memory measures what is queued for the consumer.
    config.storage.room_cache_bytes = 1024 * 1024;
    config.storage.cache_bytes = 4 * 1024 * 1024;
    let write_deadline = config.limits.write_timeout();
    let queued = u64::from(config.limits.max_queued_deliveries);
    let broker = TestBroker::start_with(config, dir).await;

    // The slow consumer: a durable member that reads its two replies and
    // then nothing. Its receive buffer is small, so the broker's writes
    // stall early.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut hello = frame(&handshake(1, "/", "slow"));
    hello.extend(frame(&request(
        2,
        pb::client_frame::Body::Join(join(ROOM, pb::StartPosition::New, 0, 86_400_000)),
    )));
    write.write_all(&hello).await.unwrap();
    let mut reader = FrameReader::new(read);
    let ok = reader.next(WAIT).await.unwrap();
    assert!(matches!(ok.body, Some(Rep::HandshakeOk(_))));
    let joined = reader.next(WAIT).await.unwrap();
    assert!(
        matches!(joined.body, Some(Rep::JoinOk(ref j)) if j.durable),
        "{joined:?}"
    );

    // The publisher goes on being confirmed, though the consumer takes
    // nothing after its first few hundred KiB.
    let (publisher, _pd) = broker.connect("publisher").await;
    let start = Instant::now();
    let mut seqs: Vec<u64> = futures::stream::iter(1..=MESSAGES)
        .map(|i| {
            let p = publisher.clone();
            async move { p.publish(ROOM, "e", payload_of(i)).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "every publish confirmed"
    );
    // Virtual time moves only when nothing can run, so all of this happened
    // inside the write deadline: the consumer is still connected.
    assert!(
        start.elapsed() < write_deadline / 2,
        "{:?}",
        start.elapsed()
    );
    assert_eq!(connected_members(&publisher).await, 1);

    // Not before the deadline...
    tokio::time::sleep(write_deadline - Duration::from_millis(500)).await;
    assert_eq!(connected_members(&publisher).await, 1, "cut off early");
    // ...but at it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(connected_members(&publisher).await, 0, "still connected");

    // What reached the socket before the cut is a prefix of the log, and
    // the connection ends there (no error frame: the socket was not taking
    // any).
    let (mut read, buffered) = reader.into_parts();
    let mut raw = buffered.to_vec();
    tokio::time::timeout(WAIT, read.read_to_end(&mut raw))
        .await
        .expect("the broker closed the connection")
        .expect("a clean close");
    let seen: Vec<u64> = whole_frames(&raw)
        .iter()
        .map(|f| match &f.body {
            Some(Rep::Delivery(d)) => seq(d),
            other => panic!("only deliveries after the join, not {other:?}"),
        })
        .collect();
    assert!(!seen.is_empty() && (seen.len() as u64) < MESSAGES / 4);
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
    drop(write);

    // The same client id comes back and resumes: every message, in seq
    // order, nothing lost. What was handed to the old connection comes
    // first, as redeliveries.
    let (slow, mut d) = broker.connect("slow").await;
    assert!(slow.resumed());
    let ok = slow
        .join_with(join(ROOM, pb::StartPosition::Resume, 0, 86_400_000))
        .await
        .unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (1, MESSAGES));
    let mut redelivered = 0u64;
    for i in 1..=MESSAGES {
        let got = next_paused(&mut d).await;
        assert_eq!(seq(&got), i, "in seq order");
        let body = payload(&got);
        assert_eq!(body.len(), SIZE);
        assert_eq!(body[..8], i.to_be_bytes());
        if got.redelivered {
            assert_eq!(got.attempt, 2);
            assert_eq!(redelivered + 1, i, "redeliveries come first");
            redelivered += 1;
        } else {
            assert_eq!(got.attempt, 1);
        }
        if i % 64 == 0 {
            slow.ack_up_to(ROOM, "", i).await.unwrap();
        }
    }
    // What the broker handed the stalled connection is what its socket
    // took, plus its bounded queue and the writer's batch in progress (four
    // frames of this size): the rest stayed in the log.
    let seen = seen.len() as u64;
    assert!(
        redelivered >= seen,
        "what the old connection saw comes back"
    );
    assert!(
        redelivered - seen <= queued + 8,
        "{redelivered} messages were handed to a connection whose socket took {seen}"
    );
    println!("the stalled connection received {seen} messages; {redelivered} were redelivered");
    broker.stop().await;
}
