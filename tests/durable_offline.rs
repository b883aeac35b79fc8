//! A durable member that is offline while messages are published gets all of
//! them, in order, when it comes back (G2). An ephemeral member does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn offline_durable_member_gets_everything_in_order_on_return() {
    let broker = TestBroker::start().await;
    let (bob, mut bob_d) = broker.connect("bob").await;
    let ok = bob.join("general").await.unwrap();
    assert!(ok.durable);
    assert_eq!(ok.subscription, "bob");
    let (p, _pd) = broker.connect("alice").await;
    p.publish("general", "chat message", "before")
        .await
        .unwrap();
    let got = next(&mut bob_d).await;
    bob.ack(&got.room, &got.subscription, &[seq(&got)])
        .await
        .unwrap();

    // Bob goes away without leaving (a dropped connection).
    drop(bob);
    drop(bob_d);
    for i in 2..=51 {
        assert_eq!(
            p.publish("general", "chat message", format!("missed {i}"))
                .await
                .unwrap(),
            i
        );
    }

    let (bob, mut bob_d) = broker.connect("bob").await;
    assert!(bob.resumed(), "bob's durable membership is remembered");
    let ok = bob.join("general").await.unwrap();
    assert_eq!(ok.next_seq, 2);
    assert_eq!(ok.last_seq, 51);
    for i in 2..=51 {
        let got = next(&mut bob_d).await;
        assert_eq!(seq(&got), i);
        assert_eq!(payload(&got), format!("missed {i}").into_bytes());
        assert_eq!(got.attempt, 1, "never delivered before");
    }
    bob.ack_up_to("general", "", 51).await.unwrap();
    assert_quiet(&mut bob_d, Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn explicit_subscription_names_are_durable_without_a_client_id() {
    let broker = TestBroker::start().await;
    let opts = broker.options();
    let (c, mut d) = roomq_client::raw::Connection::connect(opts.clone())
        .await
        .unwrap();
    assert!(!c.resumed());
    let sub = pb::Join {
        room: "audit".into(),
        subscription: "auditor".into(),
        ..Default::default()
    };
    let ok = c.join_with(sub.clone()).await.unwrap();
    assert!(ok.durable);
    c.publish("audit", "e", "1").await.unwrap();
    let got = next(&mut d).await;
    assert_eq!(got.subscription, "auditor");
    drop(c);
    drop(d);

    let (p, _pd) = roomq_client::raw::Connection::connect(opts.clone())
        .await
        .unwrap();
    p.publish("audit", "e", "2").await.unwrap();

    let (c, mut d) = roomq_client::raw::Connection::connect(opts).await.unwrap();
    c.join_with(sub).await.unwrap();
    let got = next(&mut d).await;
    assert_eq!((seq(&got), got.redelivered), (1, true));
    let got = next(&mut d).await;
    assert_eq!((seq(&got), got.redelivered), (2, false));
    broker.stop().await;
}

#[tokio::test]
async fn ephemeral_members_get_only_what_is_published_while_joined() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("pub").await;
    p.publish("live", "e", "old").await.unwrap();
    // No client id: a plain join is ephemeral.
    let (c, mut d) = roomq_client::raw::Connection::connect(broker.options())
        .await
        .unwrap();
    let ok = c.join("live").await.unwrap();
    assert!(!ok.durable);
    assert_eq!(ok.next_seq, 2);
    p.publish("live", "e", "new").await.unwrap();
    let got = next(&mut d).await;
    assert_eq!(payload(&got), b"new");
    c.leave("live", "", false).await.unwrap();
    p.publish("live", "e", "after leave").await.unwrap();
    assert_quiet(&mut d, Duration::from_millis(200)).await;

    let err = c
        .join_with(pb::Join {
            room: "live".into(),
            mode: pb::MemberMode::Durable as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(roomq_client::ErrorCode::InvalidRequest));
    broker.stop().await;
}

#[tokio::test]
async fn a_second_session_takes_over_a_durable_membership() {
    let broker = TestBroker::start().await;
    let (a, mut a_d) = broker.connect("worker").await;
    a.join_with(join("jobs", pb::StartPosition::Earliest, 10, 3_600_000))
        .await
        .unwrap();
    a.publish("jobs", "e", "1").await.unwrap();
    assert_eq!(seq(&next(&mut a_d).await), 1);

    let (b, mut b_d) = broker.connect("worker").await;
    b.join("jobs").await.unwrap();
    let got = next(&mut b_d).await;
    assert_eq!((seq(&got), got.attempt), (1, 2));
    match tokio::time::timeout(WAIT, a_d.next_push()).await.unwrap() {
        Some(roomq_client::Push::Error(e)) => {
            assert_eq!(
                e.error_code(),
                Some(roomq_client::ErrorCode::MembershipTakenOver)
            )
        }
        other => panic!("expected a takeover notice, got {other:?}"),
    }
    let err = a.ack("jobs", "", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Some(roomq_client::ErrorCode::NotJoined));
    broker.stop().await;
}
