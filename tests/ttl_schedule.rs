//! Message TTL and scheduled delivery (`delay_ms`, `deliver_at_ms`): an
//! expired message is never delivered (first or again) and the member moves
//! past it; a scheduled one is not delivered before its time and does not
//! hold back the messages after it. Timers run on paused tokio time, which
//! also drives the broker's wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::ErrorCode;
use tokio::time::Instant;

const HOUR_MS: u64 = 3_600_000;

fn member_join(room: &str, ack_timeout_ms: u64) -> pb::Join {
    join(room, pb::StartPosition::Earliest, 100, ack_timeout_ms)
}

fn with_ttl(room: &str, payload: &str, ttl_ms: u64) -> pb::Publish {
    pb::Publish {
        ttl_ms,
        ..publish_to(room, "e", payload)
    }
}

fn delayed(room: &str, payload: &str, delay_ms: u64) -> pb::Publish {
    pb::Publish {
        delay_ms,
        ..publish_to(room, "e", payload)
    }
}

/// The broker's wall clock now (ms since the epoch), read from the
/// timestamp of a message published to a room of its own.
async fn broker_now_ms(broker: &TestBroker) -> u64 {
    let (c, mut d) = broker.connect("").await;
    c.join_with(pb::Join {
        mode: pb::MemberMode::Ephemeral as i32,
        ..join("clock", pb::StartPosition::New, 0, 0)
    })
    .await
    .unwrap();
    c.publish("clock", "tick", "").await.unwrap();
    message(&next_paused(&mut d).await).timestamp_ms
}

async fn published_seq(p: &Client, publish: pb::Publish) -> u64 {
    p.publish_with(publish).await.unwrap().seqs[0].seq
}

#[tokio::test(start_paused = true)]
async fn a_message_is_delivered_before_its_ttl_and_skipped_after_it() {
    let broker = paused_broker().await;
    let (m, mut md) = broker.connect("early").await;
    m.join_with(member_join("r", HOUR_MS)).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    assert_eq!(published_seq(&p, with_ttl("r", "one", 10_000)).await, 1);
    let d = next_paused(&mut md).await;
    let msg = message(&d);
    assert_eq!(msg.seq, 1);
    assert_eq!(msg.expires_at_ms, msg.timestamp_ms + 10_000, "{msg:?}");
    assert_eq!(msg.deliver_at_ms, 0);
    assert_eq!(m.ack("r", "", &[1]).await.unwrap(), 2);

    assert_eq!(published_seq(&p, with_ttl("r", "two", 10_000)).await, 2);
    assert_eq!(seq(&next_paused(&mut md).await), 2);
    tokio::time::sleep(Duration::from_secs(15)).await;

    // A member that joins after both expired gets neither; the next
    // message is its first delivery, and its cursor moves past all three.
    let (late, mut ld) = broker.connect("late").await;
    late.join_with(member_join("r", HOUR_MS)).await.unwrap();
    assert_quiet(&mut ld, Duration::from_secs(60)).await;
    assert_eq!(p.publish("r", "e", "three").await.unwrap(), 3);
    let d = next_paused(&mut ld).await;
    assert_eq!((seq(&d), d.attempt), (3, 1), "{d:?}");
    assert_eq!(late.ack("r", "", &[3]).await.unwrap(), 4);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unacked_message_that_expires_is_not_redelivered() {
    let broker = paused_broker().await;
    let (m, mut md) = broker.connect("worker").await;
    m.join_with(member_join("r", 4_000)).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(with_ttl("r", "short-lived", 10_000))
        .await
        .unwrap();
    let t0 = Instant::now();
    // Delivered at 0 s, again at 4 s and 8 s: before the TTL.
    for attempt in 1..=3 {
        let d = next_paused(&mut md).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Not at 12 s nor ever after.
    assert_quiet(&mut md, Duration::from_secs(3600)).await;
    // It counts as done: acking the next message moves the cursor past both.
    assert_eq!(p.publish("r", "e", "next").await.unwrap(), 2);
    assert_eq!(seq(&next_paused(&mut md).await), 2);
    assert_eq!(m.ack("r", "", &[2]).await.unwrap(), 3);

    // Nor is it redelivered on reconnect once expired.
    p.publish_with(with_ttl("r", "again", 10_000))
        .await
        .unwrap();
    assert_eq!(seq(&next_paused(&mut md).await), 3);
    drop((m, md));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (m, mut md) = broker.connect("worker").await;
    m.join_with(join("r", pb::StartPosition::Resume, 100, 4_000))
        .await
        .unwrap();
    assert_quiet(&mut md, Duration::from_secs(60)).await;
    assert_eq!(p.publish("r", "e", "last").await.unwrap(), 4);
    let d = next_paused(&mut md).await;
    assert_eq!((seq(&d), d.attempt), (4, 1));
    assert_eq!(m.ack("r", "", &[4]).await.unwrap(), 5);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_message_waits_for_its_time_without_holding_back_later_ones() {
    let broker = paused_broker().await;
    let (m, mut md) = broker.connect("worker").await;
    m.join_with(member_join("r", HOUR_MS)).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    assert_eq!(published_seq(&p, delayed("r", "later", 10_000)).await, 1);
    let t0 = Instant::now();
    assert_eq!(p.publish("r", "e", "now").await.unwrap(), 2);
    let d = next_paused(&mut md).await;
    assert_eq!(seq(&d), 2, "the unscheduled message is not blocked");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Seq 1 is not yet acknowledged: the cursor stays below it.
    assert_eq!(m.ack("r", "", &[2]).await.unwrap(), 1);

    assert_quiet(
        &mut md,
        Duration::from_millis(9_500).saturating_sub(t0.elapsed()),
    )
    .await;
    let d = next_paused(&mut md).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(9_900),
        "{:?}",
        t0.elapsed()
    );
    let msg = message(&d);
    assert_eq!((msg.seq, d.attempt), (1, 1));
    assert_eq!(msg.deliver_at_ms, msg.timestamp_ms + 10_000, "{msg:?}");
    assert_eq!(m.ack("r", "", &[1]).await.unwrap(), 3);
    assert_quiet(&mut md, Duration::from_secs(60)).await;
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deliver_at_is_an_absolute_time_and_a_past_one_is_due_at_once() {
    let broker = paused_broker().await;
    let (m, mut md) = broker.connect("worker").await;
    m.join_with(member_join("r", HOUR_MS)).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    let now = broker_now_ms(&broker).await;
    let at = now + 30_000;
    p.publish_with(pb::Publish {
        deliver_at_ms: at,
        ..publish_to("r", "e", "at")
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    p.publish_with(pb::Publish {
        deliver_at_ms: now - 1_000,
        ..publish_to("r", "e", "past")
    })
    .await
    .unwrap();
    assert_eq!(
        seq(&next_paused(&mut md).await),
        2,
        "a past time is due now"
    );
    assert_quiet(&mut md, Duration::from_secs(29)).await;
    let d = next_paused(&mut md).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(29),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((seq(&d), message(&d).deliver_at_ms), (1, at));
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ttl_and_delay_survive_a_restart() {
    let broker = paused_broker().await;
    let (p, _pd) = broker.connect("").await;
    assert_eq!(published_seq(&p, delayed("r", "delayed", 60_000)).await, 1);
    assert_eq!(published_seq(&p, with_ttl("r", "short", 30_000)).await, 2);
    assert_eq!(p.publish("r", "e", "plain").await.unwrap(), 3);
    drop((p, _pd));

    let broker = broker.restart().await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(35)).await;
    let (m, mut md) = broker.connect("worker").await;
    m.join_with(member_join("r", HOUR_MS)).await.unwrap();
    // Seq 2 expired during those 35 s; seq 3 is due; seq 1 not yet.
    let d = next_paused(&mut md).await;
    assert_eq!(payload(&d), b"plain", "{d:?}");
    assert_quiet(
        &mut md,
        Duration::from_secs(55).saturating_sub(t0.elapsed()),
    )
    .await;
    let d = next_paused(&mut md).await;
    assert_eq!((seq(&d), payload(&d)), (1, b"delayed".to_vec()));
    assert_eq!(m.ack("r", "", &[1, 3]).await.unwrap(), 4);
    assert_quiet(&mut md, Duration::from_secs(3600)).await;
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ttl_and_delay_apply_to_groups() {
    let broker = paused_broker().await;
    let group = pb::Join {
        group: "workers".into(),
        ..member_join("r", HOUR_MS)
    };
    let (a, _ad) = broker.connect("a").await;
    a.join_with(group.clone()).await.unwrap();
    a.leave("r", "", false).await.unwrap();
    drop((a, _ad));
    // Published while the group has no consumer.
    let (p, _pd) = broker.connect("").await;
    p.publish_with(with_ttl("r", "expires", 10_000))
        .await
        .unwrap();
    p.publish("r", "e", "stays").await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;

    let (a, mut ad) = broker.connect("a").await;
    a.join_with(group).await.unwrap();
    let d = next_paused(&mut ad).await;
    assert_eq!((seq(&d), payload(&d)), (2, b"stays".to_vec()));
    assert_eq!(a.ack("r", "", &[2]).await.unwrap(), 3);

    assert_eq!(published_seq(&p, delayed("r", "delayed", 10_000)).await, 3);
    let t0 = Instant::now();
    p.publish("r", "e", "now").await.unwrap();
    assert_eq!(seq(&next_paused(&mut ad).await), 4);
    let d = next_paused(&mut ad).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(9_900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(seq(&d), 3);
    assert_eq!(a.ack("r", "", &[3, 4]).await.unwrap(), 5);
    broker.stop().await;
}

#[tokio::test]
async fn invalid_combinations_are_refused() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("").await;
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let century_ms = 100 * 365 * 24 * HOUR_MS;
    let cases = [
        (
            "volatile with a ttl",
            pb::Publish {
                volatile: true,
                ttl_ms: 1_000,
                ..publish_to("r", "e", "x")
            },
        ),
        (
            "both delay_ms and deliver_at_ms",
            pb::Publish {
                delay_ms: 1_000,
                deliver_at_ms: now_ms + 1_000,
                ..publish_to("r", "e", "x")
            },
        ),
        (
            "deliver_at_ms a century ahead",
            pb::Publish {
                deliver_at_ms: now_ms + century_ms,
                ..publish_to("r", "e", "x")
            },
        ),
    ];
    for (what, publish) in cases {
        let got = p.publish_with(publish).await;
        assert_eq!(code(got), ErrorCode::InvalidRequest, "{what}");
    }
    // Nothing was stored, and the session is fine.
    assert_eq!(p.publish("r", "e", "ok").await.unwrap(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn scheduling_further_ahead_than_max_schedule_ms_is_refused() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_schedule_ms = 60_000;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("").await;
    assert_eq!(
        p.limits().unwrap().max_schedule_ms,
        60_000,
        "announced in Limits"
    );
    let now_ms = || {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let refused = [
        pb::Publish {
            delay_ms: 60_001,
            ..publish_to("r", "e", "x")
        },
        pb::Publish {
            deliver_at_ms: now_ms() + 120_000,
            ..publish_to("r", "e", "x")
        },
    ];
    for publish in refused {
        let what = format!("{publish:?}");
        assert_eq!(
            code(p.publish_with(publish).await),
            ErrorCode::InvalidRequest,
            "{what}"
        );
    }
    let accepted = [
        pb::Publish {
            delay_ms: 60_000,
            ..publish_to("r", "e", "x")
        },
        pb::Publish {
            deliver_at_ms: now_ms() + 30_000,
            ..publish_to("r", "e", "x")
        },
    ];
    for (i, publish) in accepted.into_iter().enumerate() {
        assert_eq!(published_seq(&p, publish).await, i as u64 + 1);
    }
    broker.stop().await;
}

/// Expired messages are counted (`roomq_messages_expired_total`; the admin
/// `stats` reads the same counter): once per member that passes one over,
/// whether it expired before its first delivery or while unacked.
#[tokio::test(start_paused = true)]
async fn expired_messages_are_counted_per_member_that_skips_them() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let (mut config, token) = admin_config(&dir);
    config.limits.idle_timeout_ms = NEVER_MS;
    config.limits.handshake_timeout_ms = NEVER_MS;
    config.limits.write_timeout_ms = NEVER_MS;
    let broker = TestBroker::start_with(config, dir).await;
    let admin = broker.admin(&token).await;
    let expired = || async {
        let op = pb::admin::Op::Stats(pb::AdminStats {
            max_rooms: 0,
            order: pb::StatsOrder::Backlog as i32,
        });
        let stats = admin.admin(op).await.unwrap().stats.unwrap();
        stats
            .namespaces
            .iter()
            .find(|n| n.name == "/")
            .map_or(0, |n| n.expired)
    };
    assert_eq!(expired().await, 0);

    // A worker holds seq 1 unacked past its TTL: not redelivered, counted.
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(member_join("r", 4_000)).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(with_ttl("r", "short", 6_000)).await.unwrap();
    assert_eq!(seq(&next_paused(&mut wd).await), 1);
    assert_eq!(seq(&next_paused(&mut wd).await), 1);
    assert_quiet(&mut wd, Duration::from_secs(60)).await;
    assert_eq!(expired().await, 1);

    // A member that joins later passes over it too: counted again.
    let (late, mut ld) = broker.connect("late").await;
    late.join_with(member_join("r", HOUR_MS)).await.unwrap();
    assert_quiet(&mut ld, Duration::from_secs(60)).await;
    assert_eq!(expired().await, 2);
    // A message within its TTL is not.
    p.publish_with(with_ttl("r", "fresh", 60_000))
        .await
        .unwrap();
    assert_eq!(seq(&next_paused(&mut ld).await), 2);
    assert_eq!(expired().await, 2);
    broker.stop().await;
}
