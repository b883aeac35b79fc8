//! A connection whose outgoing queue is full is not given more deliveries
//! until it drains; nothing is dropped or reordered on the way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::proto as pb;
use std::sync::Arc;

#[tokio::test]
async fn a_tiny_delivery_queue_still_delivers_everything_in_order() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_queued_deliveries = 2;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("pub").await;
    for i in 1..=300 {
        p.publish("backlog", "e", vec![i as u8; 2048])
            .await
            .unwrap();
    }
    let (c, mut d) = broker.connect("reader").await;
    c.join_with(join("backlog", pb::StartPosition::Earliest, 1000, 0))
        .await
        .unwrap();
    c.join_with(pb::Join {
        room: "backlog".into(),
        subscription: "second".into(),
        start: pb::StartPosition::Earliest as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut next_for = std::collections::HashMap::new();
    for _ in 0..600 {
        let got = next(&mut d).await;
        let expected = next_for.entry(got.subscription.clone()).or_insert(1u64);
        assert_eq!(seq(&got), *expected, "membership {:?}", got.subscription);
        assert_eq!(got.attempt, 1);
        *expected += 1;
    }
    broker.stop().await;
}
