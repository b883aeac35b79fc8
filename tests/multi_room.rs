//! Who gets a message: a multi-room publish reaches a session once, in the
//! first of its rooms the session is in; `except_rooms` and
//! `except_sessions` leave sessions out (decided at delivery); a join's
//! event filter skips other events as if they were acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::Deliveries;

const QUIET: Duration = Duration::from_millis(200);

async fn joined(broker: &TestBroker, client_id: &str, rooms: &[&str]) -> (Client, Deliveries) {
    let (c, d) = broker.connect(client_id).await;
    for room in rooms {
        c.join_with(join(room, pb::StartPosition::Earliest, 0, 0))
            .await
            .unwrap();
    }
    (c, d)
}

fn to_rooms(rooms: &[&str], payload: &str) -> pb::Publish {
    pb::Publish {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ..publish_to("unused", "e", payload)
    }
}

fn room_seq(d: &pb::Delivery) -> (String, u64) {
    (d.room.clone(), seq(d))
}

#[tokio::test]
async fn a_session_in_several_target_rooms_gets_a_publish_once_in_the_first_of_them() {
    let broker = TestBroker::start().await;
    let (both, mut bothd) = joined(&broker, "both", &["a", "b"]).await;
    let (_aonly, mut ad) = joined(&broker, "aonly", &["a"]).await;
    let (_bonly, mut bd) = joined(&broker, "bonly", &["b"]).await;
    let (p, _pd) = broker.connect("").await;

    let ok = p.publish_with(to_rooms(&["a", "b"], "ab")).await.unwrap();
    let seqs: Vec<(String, u64)> = ok.seqs.iter().map(|s| (s.room.clone(), s.seq)).collect();
    assert_eq!(seqs, [("a".to_string(), 1), ("b".to_string(), 1)]);
    assert_eq!(room_seq(&next(&mut bothd).await), ("a".into(), 1));
    assert_quiet(&mut bothd, QUIET).await;
    assert_eq!(room_seq(&next(&mut ad).await), ("a".into(), 1));
    assert_eq!(room_seq(&next(&mut bd).await), ("b".into(), 1));

    // The order of the publish decides which room it comes in.
    p.publish_with(to_rooms(&["b", "a"], "ba")).await.unwrap();
    let d = next(&mut bothd).await;
    assert_eq!(
        (room_seq(&d), payload(&d)),
        (("b".into(), 2), b"ba".to_vec())
    );
    assert_quiet(&mut bothd, QUIET).await;
    assert_eq!(room_seq(&next(&mut ad).await), ("a".into(), 2));
    assert_eq!(room_seq(&next(&mut bd).await), ("b".into(), 2));

    // What was skipped counts as done in each room: acking what came moves
    // each cursor past both publishes.
    assert_eq!(both.ack("a", "", &[1]).await.unwrap(), 3);
    assert_eq!(both.ack("b", "", &[2]).await.unwrap(), 3);
    // A publish to one room only still reaches it there.
    p.publish("b", "e", "b only").await.unwrap();
    assert_eq!(room_seq(&next(&mut bothd).await), ("b".into(), 3));
    broker.stop().await;
}

#[tokio::test]
async fn except_rooms_leaves_out_sessions_in_those_rooms_at_delivery() {
    let broker = TestBroker::start().await;
    let (in_ac, mut acd) = joined(&broker, "in-a-and-c", &["a", "c"]).await;
    let (_in_a, mut ad) = joined(&broker, "in-a", &["a"]).await;
    // A durable member of `a` that is away when the message is published.
    let (away, _awayd) = joined(&broker, "away", &["a"]).await;
    away.leave("a", "", false).await.unwrap();
    drop((away, _awayd));
    let (p, _pd) = broker.connect("").await;

    p.publish_with(pb::Publish {
        except_rooms: vec!["c".into()],
        ..publish_to("a", "e", "not for c")
    })
    .await
    .unwrap();
    assert_eq!(payload(&next(&mut ad).await), b"not for c");
    assert_quiet(&mut acd, QUIET).await;
    // The skipped member's cursor moves on with the next message.
    p.publish("a", "e", "for all").await.unwrap();
    let d = next(&mut acd).await;
    assert_eq!((seq(&d), d.attempt), (2, 1));
    assert_eq!(in_ac.ack("a", "", &[2]).await.unwrap(), 3);
    assert_eq!(seq(&next(&mut ad).await), 2);

    // Decided at delivery: the away member comes back in `c` first, then in
    // `a`, so it is in `c` when seq 1 would be delivered to it.
    let (back, mut backd) = joined(&broker, "away", &["c", "a"]).await;
    let d = next(&mut backd).await;
    assert_eq!((d.room.as_str(), seq(&d)), ("a", 2), "{d:?}");
    assert_quiet(&mut backd, QUIET).await;
    drop((back, backd));
    broker.stop().await;
}

#[tokio::test]
async fn except_rooms_is_decided_when_the_message_is_delivered_not_when_published() {
    let broker = TestBroker::start().await;
    let (away, _awayd) = joined(&broker, "away", &["a", "c"]).await;
    away.leave("a", "", false).await.unwrap();
    drop((away, _awayd));
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_rooms: vec!["c".into()],
        ..publish_to("a", "e", "not for c")
    })
    .await
    .unwrap();
    // Back in `a` only (its `c` membership is not joined by this session).
    let (back, mut backd) = joined(&broker, "away", &["a"]).await;
    let d = next(&mut backd).await;
    assert_eq!((seq(&d), payload(&d)), (1, b"not for c".to_vec()));
    assert_eq!(back.ack("a", "", &[1]).await.unwrap(), 2);
    broker.stop().await;
}

/// A redelivery to the session that already had the message follows the
/// decision its first delivery made: joining an `except_rooms` room, or an
/// earlier room of a multi-room publish, later does not take it back.
#[tokio::test]
async fn a_redelivery_to_the_same_session_keeps_its_first_decision() {
    let broker = TestBroker::start().await;
    let (s, mut sd) = joined(&broker, "s", &["b"]).await;
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_rooms: vec!["c".into()],
        ..to_rooms(&["a", "b"], "m")
    })
    .await
    .unwrap();
    let d = next(&mut sd).await;
    assert_eq!((room_seq(&d), d.attempt), (("b".into(), 1), 1));
    // Now in `c` (excluded) and in `a` (the publish's first room).
    for room in ["c", "a"] {
        s.join_with(join(room, pb::StartPosition::New, 0, 0))
            .await
            .unwrap();
    }
    s.nack("b", "", &[1], Duration::ZERO).await.unwrap();
    let d = next(&mut sd).await;
    assert_eq!((room_seq(&d), d.attempt), (("b".into(), 1), 2));
    assert!(d.redelivered);
    broker.stop().await;
}

/// A redelivery that goes to another session is that session's first
/// delivery: in a group, a consumer in an `except_rooms` room, or in an
/// earlier room of the publish, does not get it when the consumer that had
/// it leaves; if no consumer may have it, it counts as acknowledged.
#[tokio::test]
async fn a_redelivery_to_another_consumer_of_a_group_checks_its_rooms() {
    let broker = TestBroker::start().await;
    let group = |room: &str| pb::Join {
        group: "g".into(),
        ..join(room, pb::StartPosition::Earliest, 0, 0)
    };
    // `first` joins alone, so the first delivery goes to it.
    let (first, mut firstd) = broker.connect("first").await;
    first.join_with(group("b")).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_rooms: vec!["c".into()],
        ..publish_to("b", "e", "not for c")
    })
    .await
    .unwrap();
    p.publish_with(to_rooms(&["a", "b"], "once")).await.unwrap();
    assert_eq!(seq(&next(&mut firstd).await), 1);
    assert_eq!(seq(&next(&mut firstd).await), 2);
    // Two more consumers: one in `c`, one in `a`.
    let (in_c, mut cd) = joined(&broker, "in-c", &["c"]).await;
    in_c.join_with(group("b")).await.unwrap();
    let (in_a, mut ad) = joined(&broker, "in-a", &["a"]).await;
    in_a.join_with(group("b")).await.unwrap();
    // `in-a` has the multi-room publish in `a`, its first room.
    assert_eq!(room_seq(&next(&mut ad).await), ("a".into(), 1));
    // `first` goes away with both in flight: seq 1 may go to `in-a` (not
    // in `c`), seq 2 to `in-c` (not in `a`).
    drop((first, firstd));
    let d = next(&mut cd).await;
    assert_eq!((room_seq(&d), d.attempt), (("b".into(), 2), 2), "{d:?}");
    let d = next(&mut ad).await;
    assert_eq!((room_seq(&d), d.attempt), (("b".into(), 1), 2), "{d:?}");
    assert_quiet(&mut cd, QUIET).await;
    assert_quiet(&mut ad, QUIET).await;
    broker.stop().await;
}

/// When every consumer left is excluded, the redelivery counts as
/// acknowledged for the group.
#[tokio::test]
async fn a_redelivery_no_consumer_may_have_counts_as_acknowledged() {
    let broker = TestBroker::start().await;
    let group = pb::Join {
        group: "g".into(),
        ..join("b", pb::StartPosition::Earliest, 0, 0)
    };
    let (first, mut firstd) = broker.connect("first").await;
    first.join_with(group.clone()).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_rooms: vec!["c".into()],
        ..publish_to("b", "e", "not for c")
    })
    .await
    .unwrap();
    assert_eq!(seq(&next(&mut firstd).await), 1);
    let (in_c, mut cd) = joined(&broker, "in-c", &["c"]).await;
    in_c.join_with(group).await.unwrap();
    drop((first, firstd));
    assert_quiet(&mut cd, QUIET).await;
    // The group moved past it: the next message is the next one delivered.
    p.publish("b", "e", "for all").await.unwrap();
    let d = next(&mut cd).await;
    assert_eq!((seq(&d), d.attempt), (2, 1));
    assert_eq!(in_c.ack("b", "", &[2]).await.unwrap(), 3);
    broker.stop().await;
}

#[tokio::test]
async fn except_sessions_leaves_out_those_sessions() {
    let broker = TestBroker::start().await;
    let (s1, mut d1) = joined(&broker, "s1", &["a"]).await;
    let (_s2, mut d2) = joined(&broker, "s2", &["a"]).await;
    let (s3, mut d3) = joined(&broker, "s3", &["a"]).await;
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_sessions: vec![
            Bytes::copy_from_slice(s1.session_id().as_bytes()),
            Bytes::copy_from_slice(s3.session_id().as_bytes()),
        ],
        ..publish_to("a", "e", "only s2")
    })
    .await
    .unwrap();
    assert_eq!(payload(&next(&mut d2).await), b"only s2");
    assert_quiet(&mut d1, QUIET).await;
    assert_quiet(&mut d3, QUIET).await;
    p.publish("a", "e", "all").await.unwrap();
    for (c, d) in [(&s1, &mut d1), (&s3, &mut d3)] {
        assert_eq!(seq(&next(d).await), 2);
        assert_eq!(c.ack("a", "", &[2]).await.unwrap(), 3);
    }
    assert_eq!(seq(&next(&mut d2).await), 2);
    broker.stop().await;
}

#[tokio::test]
async fn an_event_filter_skips_other_events_as_if_acknowledged() {
    let broker = TestBroker::start().await;
    let (f, mut fd) = broker.connect("filtered").await;
    f.join_with(pb::Join {
        events: vec!["chat*".into(), "typing".into()],
        ..join("r", pb::StartPosition::Earliest, 0, 0)
    })
    .await
    .unwrap();
    let (all, mut alld) = joined(&broker, "all", &["r"]).await;
    let (p, _pd) = broker.connect("").await;
    let events = [
        "chat message", // 1
        "presence",     // 2
        "chat.edit",    // 3
        "typing2",      // 4
        "typing",       // 5
        "chat",         // 6
        "xchat",        // 7
    ];
    for e in events {
        p.publish("r", e, e.to_string()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut fd).await;
        got.push((seq(&d), message(&d).event.clone()));
    }
    assert_eq!(
        got,
        [
            (1, "chat message".to_string()),
            (3, "chat.edit".to_string()),
            (5, "typing".to_string()),
            (6, "chat".to_string()),
        ]
    );
    assert_quiet(&mut fd, QUIET).await;
    // Acking what came moves the cursor past what was skipped (7 included).
    assert_eq!(f.ack("r", "", &[1, 3, 5, 6]).await.unwrap(), 8);
    // A member without a filter gets everything.
    for s in 1..=7 {
        assert_eq!(seq(&next(&mut alld).await), s);
    }
    all.ack_up_to("r", "", 7).await.unwrap();
    broker.stop().await;
}
