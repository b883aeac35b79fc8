//! Where a member starts: resume, new, earliest, or a given seq.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn start_positions() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("pub").await;
    for i in 1..=10 {
        p.publish("r", "e", format!("{i}")).await.unwrap();
    }
    let (c, mut d) = broker.connect("reader").await;

    // New: nothing stored is delivered.
    let ok = c
        .join_with(join("r", pb::StartPosition::New, 0, 0))
        .await
        .unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (11, 10));
    assert_quiet(&mut d, Duration::from_millis(150)).await;
    c.leave("r", "", false).await.unwrap();

    // Seq: from 7, a durable member repositioned.
    let mut at_seven = join("r", pb::StartPosition::Seq, 0, 0);
    at_seven.start_seq = 7;
    let ok = c.join_with(at_seven).await.unwrap();
    assert_eq!(ok.next_seq, 7);
    for s in 7..=10 {
        assert_eq!(seq(&next(&mut d).await), s);
    }
    c.ack_up_to("r", "", 8).await.unwrap();
    c.leave("r", "", false).await.unwrap();

    // Resume: where it was (9 and 10 unacked, so redelivered).
    let ok = c
        .join_with(join("r", pb::StartPosition::Resume, 0, 0))
        .await
        .unwrap();
    assert_eq!(ok.next_seq, 9);
    let got = next(&mut d).await;
    assert_eq!((seq(&got), got.redelivered), (9, true));
    assert_eq!(seq(&next(&mut d).await), 10);
    c.leave("r", "", false).await.unwrap();

    // Earliest: everything again, as first deliveries.
    let ok = c
        .join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    assert_eq!(ok.next_seq, 1);
    for s in 1..=10 {
        let got = next(&mut d).await;
        assert_eq!((seq(&got), got.attempt), (s, 1));
    }
    c.leave("r", "", false).await.unwrap();

    // A seq past the end is clamped to the end.
    let mut far = join("r", pb::StartPosition::Seq, 0, 0);
    far.start_seq = 1_000;
    let ok = c.join_with(far).await.unwrap();
    assert_eq!(ok.next_seq, 11);
    broker.stop().await;
}
