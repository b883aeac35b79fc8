//! Deliveries of messages that are no longer in a room's cache: they are
//! read from the store beside the broker's actor and handed out when the
//! read comes back. Every message still arrives, once, in order, whatever
//! the members' positions, however few reads may run at once, and after a
//! restart or a `kill -9` (when no cache holds anything).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection as Client, Deliveries};

/// Receives `range` from `d` in order, acking each, and checks every
/// payload is the one published at that seq.
async fn take_in_order(
    c: &Client,
    d: &mut Deliveries,
    room: &str,
    range: std::ops::RangeInclusive<u64>,
) {
    for want in range {
        let got = next(d).await;
        assert_eq!(seq(&got), want, "{room}: out of order");
        assert_eq!(
            payload(&got),
            format!("m{want}").into_bytes(),
            "{room}: payload of {want}"
        );
        c.ack_up_to(room, &got.subscription, want).await.unwrap();
    }
}

async fn publish_n(p: &Client, room: &str, from: u64, to: u64) {
    for i in from..=to {
        assert_eq!(p.publish(room, "e", format!("m{i}")).await.unwrap(), i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_at_many_positions_replay_past_the_cache_one_read_at_a_time() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.storage.room_cache_messages = 16;
    // Every read waits for the one before: the queue is exercised.
    config.storage.max_reads_in_flight = 1;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("").await;
    publish_n(&p, "r", 1, 600).await;

    // Three durable members at three positions, all far behind the cache,
    // replaying at once with small windows (many reads each).
    let starts = [1u64, 200, 450];
    let mut tasks = Vec::new();
    for (i, start) in starts.into_iter().enumerate() {
        let (c, mut d) = broker.connect(&format!("m{i}")).await;
        tasks.push(tokio::spawn(async move {
            let ok = c
                .join_with(pb::Join {
                    start_seq: start,
                    ..join("r", pb::StartPosition::Seq, 7, 60_000)
                })
                .await
                .unwrap();
            assert_eq!((ok.next_seq, ok.last_seq), (start, 600));
            take_in_order(&c, &mut d, "r", start..=600).await;
            assert_quiet(&mut d, std::time::Duration::from_millis(200)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // New messages still flow to a caught-up member.
    let (c, mut d) = broker.connect("late").await;
    c.join_with(join("r", pb::StartPosition::Earliest, 64, 60_000))
        .await
        .unwrap();
    take_in_order(&c, &mut d, "r", 1..=600).await;
    publish_n(&p, "r", 601, 610).await;
    take_in_order(&c, &mut d, "r", 601..=610).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_of_messages_gone_from_the_cache_come_from_the_store() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.storage.room_cache_messages = 4;
    let broker = TestBroker::start_with(config, dir).await;
    let (c, mut d) = broker.connect("m").await;
    c.join_with(join("r", pb::StartPosition::New, 100, 60_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    publish_n(&p, "r", 1, 50).await;
    for want in 1..=50 {
        assert_eq!(seq(&next(&mut d).await), want);
    }
    // Seqs 1..=10 are long out of the cache: their redeliveries are read.
    let nacked: Vec<u64> = (1..=10).collect();
    c.nack("r", "", &nacked, std::time::Duration::ZERO)
        .await
        .unwrap();
    let mut again = Vec::new();
    for _ in &nacked {
        let got = next(&mut d).await;
        assert!(got.redelivered);
        assert_eq!(payload(&got), format!("m{}", seq(&got)).into_bytes());
        again.push(seq(&got));
    }
    assert_eq!(again, nacked);
    broker.stop().await;
}

#[test]
fn a_durable_member_resumes_from_the_store_after_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let daemon = Daemon::start(dir.path());
    let opts = |id: &str| ConnectOptions::new(daemon.addr.to_string()).client_id(id);
    rt.block_on(async {
        let (m, mut md) = Client::connect(opts("m")).await.unwrap();
        m.join_with(join("r", pb::StartPosition::Earliest, 32, 60_000))
            .await
            .unwrap();
        let (p, _pd) = Client::connect(opts("")).await.unwrap();
        publish_n(&p, "r", 1, 300).await;
        take_in_order(&m, &mut md, "r", 1..=100).await;
    });
    daemon.kill9();
    let daemon = Daemon::start(dir.path());
    rt.block_on(async {
        let opts = ConnectOptions::new(daemon.addr.to_string()).client_id("m");
        let (m, mut md) = Client::connect(opts).await.unwrap();
        let ok = m
            .join_with(join("r", pb::StartPosition::Resume, 32, 60_000))
            .await
            .unwrap();
        // Nothing confirmed is lost; acked messages may come again (acks
        // are stored lazily), never a gap.
        assert!(ok.next_seq <= 101, "resumed past what was acked: {ok:?}");
        assert_eq!(ok.last_seq, 300);
        take_in_order(&m, &mut md, "r", ok.next_seq..=300).await;
    });
    daemon.kill9();
}
