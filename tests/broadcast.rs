//! Every member of a room gets every message (the Socket.IO room model), and
//! `except_self` leaves out the publisher.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::Bytes;
use common::*;
use roomq_client::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn three_members_each_get_every_message_in_order() {
    let broker = TestBroker::start().await;
    let mut members = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (c, d) = broker.connect(name).await;
        c.join("general").await.unwrap();
        members.push((c, d));
    }
    let (p, _pd) = broker.connect("publisher").await;
    for i in 1..=20u64 {
        assert_eq!(
            p.publish("general", "chat message", format!("m{i}"))
                .await
                .unwrap(),
            i
        );
    }
    for (c, d) in &mut members {
        for i in 1..=20u64 {
            let got = next(d).await;
            assert_eq!(seq(&got), i);
            assert_eq!(payload(&got), format!("m{i}").into_bytes());
            assert_eq!(got.attempt, 1);
            assert!(!got.redelivered);
            let m = got.message.as_ref().unwrap();
            assert_eq!(m.event, "chat message");
            assert_eq!(m.publisher_session.as_ref(), p.session_id().as_bytes());
            assert!(m.timestamp_ms > 0);
            c.ack(&got.room, &got.subscription, &[i]).await.unwrap();
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn except_self_skips_the_publisher_and_its_durable_membership_only() {
    let broker = TestBroker::start().await;
    let (alice, mut alice_d) = broker.connect("alice").await;
    let (bob, mut bob_d) = broker.connect("bob").await;
    // An ephemeral member on alice's own session is skipped too.
    alice.join("general").await.unwrap();
    alice
        .join_with(pb::Join {
            room: "general".into(),
            subscription: "alice-live".into(),
            mode: pb::MemberMode::Ephemeral as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    bob.join("general").await.unwrap();

    let broadcast = pb::Publish {
        rooms: vec!["general".into()],
        event: "chat message".into(),
        payload: Bytes::from_static(b"hi all but me"),
        except_self: true,
        ..Default::default()
    };
    alice.publish_with(broadcast).await.unwrap();
    alice
        .publish("general", "chat message", "to everyone")
        .await
        .unwrap();

    let got = next(&mut bob_d).await;
    assert_eq!(payload(&got), b"hi all but me");
    let got = next(&mut bob_d).await;
    assert_eq!(payload(&got), b"to everyone");

    // Alice sees only the second message, once per membership.
    let mut alice_seen = Vec::new();
    for _ in 0..2 {
        let got = next(&mut alice_d).await;
        alice_seen.push((got.subscription.clone(), seq(&got)));
    }
    alice_seen.sort();
    assert_eq!(
        alice_seen,
        vec![("".to_string(), 2), ("alice-live".to_string(), 2)]
    );
    assert_quiet(&mut alice_d, Duration::from_millis(200)).await;

    // Alice's durable membership, resumed from another connection, does not
    // get the excluded message later either.
    drop(alice);
    drop(alice_d);
    let (alice2, mut alice2_d) = broker.connect("alice").await;
    alice2
        .join_with(join("general", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    let got = next(&mut alice2_d).await;
    assert_eq!(seq(&got), 2);
    broker.stop().await;
}
