//! Volatile publishes (Socket.IO's volatile emit): not stored, no seq,
//! delivered only to the members joined at the time, never redelivered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use roomq_client::proto as pb;
use roomq_client::ErrorCode;

fn volatile(room: &str, payload: &str) -> pb::Publish {
    pb::Publish {
        volatile: true,
        ..publish_to(room, "cursor", payload)
    }
}

#[tokio::test]
async fn a_volatile_publish_is_answered_without_seqs_and_delivered_to_joined_members() {
    let broker = TestBroker::start().await;
    let (durable, mut dd) = broker.connect("durable").await;
    durable
        .join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    let (eph, mut ed) = broker.connect("").await;
    eph.join_with(pb::Join {
        mode: pb::MemberMode::Ephemeral as i32,
        ..join("r", pb::StartPosition::New, 0, 0)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect("").await;
    let ok = p.publish_with(volatile("r", "x=1")).await.unwrap();
    assert!(ok.seqs.is_empty(), "{ok:?}");
    assert_eq!(ok.durability, pb::Durability::Volatile as i32);
    assert!(!ok.duplicate);

    for d in [&mut dd, &mut ed] {
        let got = next(d).await;
        assert!(got.volatile, "{got:?}");
        let m = message(&got);
        assert_eq!((m.seq, m.event.as_str()), (0, "cursor"));
        assert_eq!(&m.payload[..], b"x=1");
        assert_eq!(
            &m.publisher_session[..],
            p.session_id().as_bytes(),
            "{got:?}"
        );
    }
    // A stored publish after it takes seq 1: the volatile one used none.
    assert_eq!(p.publish("r", "e", "stored").await.unwrap(), 1);
    for d in [&mut dd, &mut ed] {
        let got = next(d).await;
        assert_eq!((seq(&got), got.volatile), (1, false));
    }
    assert_eq!(durable.ack("r", "", &[1]).await.unwrap(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn a_volatile_message_is_not_kept_for_later_members_nor_across_a_restart() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("").await;
    assert_eq!(p.publish("r", "e", "one").await.unwrap(), 1);
    p.publish_with(volatile("r", "gone")).await.unwrap();
    assert_eq!(p.publish("r", "e", "two").await.unwrap(), 2);

    // A durable member joining afterwards reads the log: no volatile message.
    let (late, mut ld) = broker.connect("late").await;
    let ok = late
        .join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    assert_eq!(ok.last_seq, 2);
    for s in 1..=2 {
        let d = next(&mut ld).await;
        assert_eq!((seq(&d), d.volatile), (s, false), "{d:?}");
    }
    assert_quiet(&mut ld, Duration::from_millis(200)).await;
    // A member that left is not sent it when it comes back.
    late.leave("r", "", false).await.unwrap();
    p.publish_with(volatile("r", "missed")).await.unwrap();
    late.join_with(join("r", pb::StartPosition::Resume, 0, 0))
        .await
        .unwrap();
    for s in 1..=2 {
        let d = next(&mut ld).await;
        assert_eq!((seq(&d), d.volatile), (s, false), "{d:?}");
    }
    assert_quiet(&mut ld, Duration::from_millis(200)).await;
    drop((late, ld, p, _pd));

    let broker = broker.restart().await;
    let (fresh, mut fd) = broker.connect("fresh").await;
    let ok = fresh
        .join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    assert_eq!(ok.last_seq, 2);
    for s in 1..=2 {
        assert_eq!(seq(&next(&mut fd).await), s);
    }
    assert_quiet(&mut fd, Duration::from_millis(200)).await;
    assert_eq!(fresh.publish("r", "e", "three").await.unwrap(), 3);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_volatile_delivery_is_never_redelivered() {
    let broker = paused_broker().await;
    let (m, mut md) = broker.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 10, 1_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(volatile("r", "once")).await.unwrap();
    let d = next_paused(&mut md).await;
    assert!(d.volatile);
    // Not acked, and many ack timeouts pass: nothing comes again.
    assert_quiet(&mut md, Duration::from_secs(3600)).await;
    // Nor on reconnect.
    drop((m, md));
    let (m, mut md) = broker.connect("m").await;
    let ok = m
        .join_with(join("r", pb::StartPosition::Resume, 10, 1_000))
        .await
        .unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (1, 0));
    assert_quiet(&mut md, Duration::from_secs(3600)).await;
    broker.stop().await;
}

#[tokio::test]
async fn volatile_with_a_storage_option_is_refused() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("").await;
    let dedup = bytes::Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    let cases = [
        (
            "dedup_id",
            pb::Publish {
                dedup_id: dedup,
                ..volatile("r", "x")
            },
        ),
        (
            "expected_last_seq",
            pb::Publish {
                expected_last_seq: Some(0),
                ..volatile("r", "x")
            },
        ),
        (
            "ttl_ms",
            pb::Publish {
                ttl_ms: 1_000,
                ..volatile("r", "x")
            },
        ),
        (
            "delay_ms",
            pb::Publish {
                delay_ms: 1_000,
                ..volatile("r", "x")
            },
        ),
        (
            "deliver_at_ms",
            pb::Publish {
                deliver_at_ms: 1,
                ..volatile("r", "x")
            },
        ),
    ];
    for (what, publish) in cases {
        assert_eq!(
            code(p.publish_with(publish).await),
            ErrorCode::InvalidRequest,
            "volatile with {what}"
        );
    }
    assert_eq!(p.publish("r", "e", "ok").await.unwrap(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_volatile_publish_reaches_a_session_once_and_a_group_once() {
    let broker = TestBroker::start().await;
    let (both, mut bd) = broker.connect("both").await;
    both.join("a").await.unwrap();
    both.join("b").await.unwrap();
    let group = pb::Join {
        room: "a".into(),
        group: "workers".into(),
        ..Default::default()
    };
    let (g1, mut g1d) = broker.connect("g1").await;
    g1.join_with(group.clone()).await.unwrap();
    let (g2, mut g2d) = broker.connect("g2").await;
    g2.join_with(group).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        rooms: vec!["a".into(), "b".into()],
        ..volatile("unused", "v")
    })
    .await
    .unwrap();
    let d = next(&mut bd).await;
    assert!(d.volatile && d.room == "a", "{d:?}");
    assert_quiet(&mut bd, Duration::from_millis(200)).await;
    // One consumer of the group gets it, not both.
    let mut ds = [g1d, g2d];
    let (_, d) = next_any(&mut ds).await;
    assert!(d.volatile);
    for d in ds.iter_mut() {
        assert_quiet(d, Duration::from_millis(200)).await;
    }
    [g1d, g2d] = ds;
    drop((g1, g2, g1d, g2d));
    broker.stop().await;
}

/// "Event filters and the except fields apply."
#[tokio::test]
async fn event_filters_and_except_fields_apply_to_volatile_messages() {
    let broker = TestBroker::start().await;
    let (filtered, mut fd) = broker.connect("filtered").await;
    filtered
        .join_with(pb::Join {
            room: "r".into(),
            events: vec!["chat*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (excepted, mut xd) = broker.connect("excepted").await;
    excepted.join("r").await.unwrap();
    let (in_c, mut cd) = broker.connect("in-c").await;
    in_c.join("r").await.unwrap();
    in_c.join("c").await.unwrap();
    let (plain, mut pd) = broker.connect("plain").await;
    plain.join("r").await.unwrap();
    let (p, _ppd) = broker.connect("").await;
    p.publish_with(pb::Publish {
        except_sessions: vec![bytes::Bytes::copy_from_slice(
            excepted.session_id().as_bytes(),
        )],
        except_rooms: vec!["c".into()],
        ..volatile("r", "v")
    })
    .await
    .unwrap();
    let d = next(&mut pd).await;
    assert!(d.volatile && message(&d).event == "cursor");
    for d in [&mut fd, &mut xd, &mut cd] {
        assert_quiet(d, Duration::from_millis(200)).await;
    }
    // The filter lets a matching volatile event through.
    p.publish_with(pb::Publish {
        event: "chat typing".into(),
        ..volatile("r", "t")
    })
    .await
    .unwrap();
    let d = next(&mut fd).await;
    assert!(d.volatile && message(&d).event == "chat typing");
    broker.stop().await;
}
