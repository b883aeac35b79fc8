//! Redelivery after the ack timeout, nack with and without delay, and
//! cumulative acks. Timers run on paused tokio time: no test sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::{proto as pb, ErrorCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A broker whose connection timers cannot fire while time is paused and
/// auto-advanced: only ack timers matter in these tests.
async fn paused_broker() -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.idle_timeout_ms = 10 * 365 * 24 * 3600 * 1000;
    config.limits.handshake_timeout_ms = 10 * 365 * 24 * 3600 * 1000;
    TestBroker::start_with(config, dir).await
}

#[tokio::test(start_paused = true)]
async fn unacked_delivery_is_redelivered_after_the_ack_timeout_and_acked_never_again() {
    let broker = paused_broker().await;
    let (c, mut d) = broker.connect("worker").await;
    c.join_with(join("jobs", pb::StartPosition::Earliest, 10, 30_000))
        .await
        .unwrap();
    c.publish("jobs", "job", "one").await.unwrap();
    let first = next_paused(&mut d).await;
    let t0 = Instant::now();
    assert_eq!(
        (seq(&first), first.attempt, first.redelivered),
        (1, 1, false)
    );

    let again = next_paused(&mut d).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(30),
        "redelivered early: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        (seq(&again), again.attempt, again.redelivered),
        (1, 2, true)
    );
    let third = next_paused(&mut d).await;
    assert!(t0.elapsed() >= Duration::from_secs(60));
    assert_eq!((seq(&third), third.attempt), (1, 3));

    c.ack("jobs", "", &[1]).await.unwrap();
    // Long after every timer would have fired, seq 1 does not come back; the
    // next delivery is the next message.
    tokio::time::sleep(Duration::from_secs(300)).await;
    c.publish("jobs", "job", "two").await.unwrap();
    let next_one = next_paused(&mut d).await;
    assert_eq!((seq(&next_one), next_one.attempt), (2, 1));
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn nack_redelivers_now_or_after_its_delay() {
    let broker = paused_broker().await;
    let (c, mut d) = broker.connect("worker").await;
    c.join_with(join("jobs", pb::StartPosition::Earliest, 10, 3_600_000))
        .await
        .unwrap();
    c.publish("jobs", "job", "one").await.unwrap();
    assert_eq!(next_paused(&mut d).await.attempt, 1);

    let t0 = Instant::now();
    c.nack("jobs", "", &[1], Duration::from_secs(10))
        .await
        .unwrap();
    let got = next_paused(&mut d).await;
    assert!(t0.elapsed() >= Duration::from_secs(10));
    assert!(
        t0.elapsed() < Duration::from_secs(3600),
        "came from the ack timer, not the nack"
    );
    assert_eq!((seq(&got), got.attempt, got.redelivered), (1, 2, true));

    let t1 = Instant::now();
    c.nack("jobs", "", &[1], Duration::ZERO).await.unwrap();
    let got = next_paused(&mut d).await;
    assert!(t1.elapsed() < Duration::from_secs(1));
    assert_eq!((seq(&got), got.attempt), (1, 3));

    // Nack of something not in flight is refused.
    let err = c.nack("jobs", "", &[7], Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownSeq));
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn in_progress_postpones_redelivery() {
    let broker = paused_broker().await;
    let (c, mut d) = broker.connect("worker").await;
    c.join_with(join("jobs", pb::StartPosition::Earliest, 10, 30_000))
        .await
        .unwrap();
    c.publish("jobs", "job", "slow").await.unwrap();
    assert_eq!(next_paused(&mut d).await.attempt, 1);
    let t0 = Instant::now();
    // Keep signalling every 20 s for a minute: no redelivery meanwhile.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        c.in_progress("jobs", "", &[1]).await.unwrap();
    }
    let again = next_paused(&mut d).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(90),
        "redelivered at {:?}",
        t0.elapsed()
    );
    assert_eq!((again.attempt, again.redelivered), (2, true));
    let err = c.in_progress("jobs", "", &[9]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownSeq));
    broker.stop().await;
}

#[tokio::test]
async fn cumulative_ack_moves_the_cursor_and_only_the_rest_is_redelivered() {
    let broker = TestBroker::start().await;
    let (c, mut d) = broker.connect("worker").await;
    c.join_with(join("jobs", pb::StartPosition::Earliest, 100, 3_600_000))
        .await
        .unwrap();
    for i in 1..=5 {
        c.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(seq(&next_paused(&mut d).await), i);
    }
    assert_eq!(c.ack_up_to("jobs", "", 3).await.unwrap(), 4);
    // Individual ack above the floor leaves the floor where it is.
    assert_eq!(c.ack("jobs", "", &[5]).await.unwrap(), 4);

    let err = c.ack("jobs", "", &[99]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownSeq));
    let err = c.ack_up_to("jobs", "", 6).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownSeq));
    let err = c.ack("other-room", "", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined));
    // Acking again is harmless.
    assert_eq!(c.ack("jobs", "", &[1, 2]).await.unwrap(), 4);

    // Reconnect: only seq 4 was left unacknowledged.
    drop(c);
    drop(d);
    let (c, mut d) = broker.connect("worker").await;
    assert!(c.resumed());
    let ok = c.join("jobs").await.unwrap();
    assert_eq!(ok.next_seq, 4);
    let got = next_paused(&mut d).await;
    assert_eq!((seq(&got), got.attempt, got.redelivered), (4, 2, true));
    assert_quiet(&mut d, Duration::from_millis(200)).await;
    broker.stop().await;
}
