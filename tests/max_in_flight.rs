//! A member never has more than `max_in_flight` unacknowledged deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn deliveries_stop_at_the_limit_and_resume_on_ack() {
    let broker = TestBroker::start().await;
    let (c, mut d) = broker.connect("worker").await;
    c.join_with(join("jobs", pb::StartPosition::Earliest, 3, 60_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("pub").await;
    for i in 0..10 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    for expected in 1..=3 {
        assert_eq!(seq(&next(&mut d).await), expected);
    }
    assert_quiet(&mut d, Duration::from_millis(300)).await;

    // Acking one frees exactly one slot.
    assert_eq!(c.ack("jobs", "", &[2]).await.unwrap(), 1);
    assert_eq!(seq(&next(&mut d).await), 4);
    assert_quiet(&mut d, Duration::from_millis(200)).await;

    // Acking through 4 frees all three slots.
    c.ack_up_to("jobs", "", 4).await.unwrap();
    for expected in 5..=7 {
        assert_eq!(seq(&next(&mut d).await), expected);
    }
    // Rejoined with max_in_flight = 1, the member is handed one message at
    // a time: first the three unacknowledged ones again, then the rest.
    c.leave("jobs", "", false).await.unwrap();
    c.join_with(join("jobs", pb::StartPosition::Resume, 1, 60_000))
        .await
        .unwrap();
    for expected in 5..=10 {
        let got = next(&mut d).await;
        assert_eq!(seq(&got), expected);
        assert_eq!(got.redelivered, expected <= 7);
        assert_eq!(got.attempt, if expected <= 7 { 2 } else { 1 });
        assert_quiet(&mut d, Duration::from_millis(50)).await;
        c.ack("jobs", "", &[expected]).await.unwrap();
    }
    broker.stop().await;
}
