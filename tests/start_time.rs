//! START_POSITION_TIME: a member starts at the first stored message accepted
//! at or after `start_time_ms`, or at the end of the log when there is none.
//! Paused tokio time drives the broker's clock, so the two batches of
//! publishes get timestamps ten seconds apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;

const QUIET: Duration = Duration::from_secs(5);

fn at_time(room: &str, start_time_ms: u64) -> pb::Join {
    pb::Join {
        start_time_ms,
        ..join(room, pb::StartPosition::Time, 0, 3_600_000)
    }
}

/// Publishes `n` messages to `room` and returns their timestamps, as a
/// member reading them sees them.
async fn publish_batch(p: &Client, reader: &mut roomq_client::Deliveries, n: u64) -> Vec<u64> {
    for i in 0..n {
        p.publish("r", "e", format!("{i}")).await.unwrap();
    }
    let mut stamps = Vec::new();
    for _ in 0..n {
        stamps.push(message(&next_paused(reader).await).timestamp_ms);
    }
    stamps
}

/// A fresh durable member joined at `start_time_ms`: its `JoinOk` and the
/// seqs it is then sent.
async fn join_at(broker: &TestBroker, client_id: &str, start_time_ms: u64) -> (u64, Vec<u64>) {
    let (c, mut d) = broker.connect(client_id).await;
    let ok = c.join_with(at_time("r", start_time_ms)).await.unwrap();
    let mut seqs = Vec::new();
    for _ in ok.next_seq..=ok.last_seq {
        seqs.push(seq(&next_paused(&mut d).await));
    }
    assert_quiet(&mut d, QUIET).await;
    (ok.next_seq, seqs)
}

#[tokio::test(start_paused = true)]
async fn start_time_picks_the_first_message_accepted_at_or_after_it() {
    start_time_with_cache(8_192).await;
}

/// The same, with a room cache of 3 messages: every start but the last
/// ones is searched for in the stored log, beside the broker's actor.
#[tokio::test(start_paused = true)]
async fn start_time_is_found_in_the_stored_log_past_the_cache() {
    start_time_with_cache(3).await;
}

async fn start_time_with_cache(room_cache_messages: u32) {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut config = paused_config(&dir);
    config.storage.room_cache_messages = room_cache_messages;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("").await;
    let (reader, mut rd) = broker.connect("").await;
    reader
        .join_with(pb::Join {
            mode: pb::MemberMode::Ephemeral as i32,
            ..join("r", pb::StartPosition::New, 0, 0)
        })
        .await
        .unwrap();
    let first = publish_batch(&p, &mut rd, 5).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = publish_batch(&p, &mut rd, 5).await;
    let (last_of_first, first_of_second) = (first[4], second[0]);
    // (Not exactly 10 s apart: the broker's clock starts from the first
    // time it is read, and loses the real time a paused test spent before.)
    assert!(
        first_of_second > last_of_first + 5_000,
        "timestamps {first:?} then {second:?}"
    );

    // Between the batches: the second batch.
    let (next_seq, seqs) = join_at(&broker, "between", last_of_first + 5_000).await;
    assert_eq!((next_seq, seqs), (6, vec![6, 7, 8, 9, 10]));
    // At or after: exactly the time of seq 6, and just after seq 5.
    assert_eq!(join_at(&broker, "exact", first_of_second).await.0, 6);
    assert_eq!(join_at(&broker, "just-after", last_of_first + 1).await.0, 6);
    // Before everything: from the start.
    let (next_seq, seqs) = join_at(&broker, "before", first[0] - 60_000).await;
    assert_eq!((next_seq, seqs.len()), (1, 10));
    // After everything: the end of the log, then only new messages.
    let (c, mut d) = broker.connect("after").await;
    let ok = c.join_with(at_time("r", second[4] + 1_000)).await.unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (11, 10));
    assert_quiet(&mut d, QUIET).await;
    assert_eq!(p.publish("r", "e", "new").await.unwrap(), 11);
    assert_eq!(seq(&next_paused(&mut d).await), 11);
    drop((c, d));

    // A new group starts there too, and so does a member after a restart.
    let (g, mut gd) = broker.connect("g1").await;
    let ok = g
        .join_with(pb::Join {
            group: "workers".into(),
            ..at_time("r", last_of_first + 5_000)
        })
        .await
        .unwrap();
    assert_eq!(ok.next_seq, 6);
    assert_eq!(seq(&next_paused(&mut gd).await), 6);
    drop((g, gd, p, _pd, reader, rd));
    let broker = broker.restart().await;
    assert_eq!(
        join_at(&broker, "after-restart", last_of_first + 5_000)
            .await
            .0,
        6
    );
    broker.stop().await;
}
