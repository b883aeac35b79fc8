//! `limits.max_dedup_ids`: beyond it the oldest dedup ids are forgotten
//! before their window ends (a retry of one is stored again), the newest
//! still deduplicate, the evictions are counted, and a restart restores at
//! most the limit from the records on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;

fn publish(n: u8) -> pb::Publish {
    pb::Publish {
        rooms: vec!["a".into()],
        event: "e".into(),
        dedup_id: Bytes::from(vec![n; 16]),
        ..Default::default()
    }
}

async fn stats(broker: &TestBroker, token: &str) -> pb::BrokerStats {
    let admin = Client::connect(broker.options().namespace("/admin").token(token))
        .await
        .unwrap()
        .0;
    let op = pb::admin::Op::Stats(pb::AdminStats {
        max_rooms: 0,
        order: pb::StatsOrder::Backlog as i32,
    });
    admin.admin(op).await.unwrap().stats.unwrap()
}

#[tokio::test]
async fn beyond_the_limit_the_oldest_ids_are_forgotten_early() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (mut config, token) = admin_config(&dir);
    config.limits.max_dedup_ids = 3;
    // The limit is split evenly over the shards; on one, it holds it all.
    config.broker.shards = 1;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("writer").await;
    for n in 1..=5u8 {
        let ok = p.publish_with(publish(n)).await.unwrap();
        assert_eq!((ok.seqs[0].seq, ok.duplicate), (u64::from(n), false));
    }
    let s = stats(&broker, &token).await;
    assert_eq!((s.dedup_ids, s.dedup_evicted), (3, 2));

    // The three newest are still known.
    for n in 3..=5u8 {
        let ok = p.publish_with(publish(n)).await.unwrap();
        assert!(ok.duplicate, "id {n} forgotten");
        assert_eq!(ok.seqs[0].seq, u64::from(n));
    }
    // The oldest was forgotten early: its retry is stored again (and, being
    // new, pushes out id 3).
    let again = p.publish_with(publish(1)).await.unwrap();
    assert_eq!((again.seqs[0].seq, again.duplicate), (6, false));
    let s = stats(&broker, &token).await;
    assert_eq!((s.dedup_ids, s.dedup_evicted), (3, 3));
    drop((p, _pd));

    // The records on disk outlive the evictions; a restart restores the
    // newest of them, up to the limit.
    let broker = broker.restart().await;
    let (p, _pd) = broker.connect("writer").await;
    let s = stats(&broker, &token).await;
    assert_eq!(s.dedup_ids, 3);
    for (n, seq) in [(4u8, 4u64), (5, 5), (1, 6)] {
        let ok = p.publish_with(publish(n)).await.unwrap();
        assert!(ok.duplicate, "id {n} not restored");
        assert_eq!(ok.seqs[0].seq, seq);
    }
    broker.stop().await;
}

#[tokio::test]
async fn zero_means_no_limit() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (mut config, token) = admin_config(&dir);
    config.limits.max_dedup_ids = 0;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("writer").await;
    for n in 1..=50u8 {
        p.publish_with(publish(n)).await.unwrap();
    }
    assert!(p.publish_with(publish(1)).await.unwrap().duplicate);
    let s = stats(&broker, &token).await;
    assert_eq!((s.dedup_ids, s.dedup_evicted), (50, 0));
    broker.stop().await;
}
