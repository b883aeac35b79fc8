//! Dead letters: a message delivered `max_deliveries` times without an ack
//! moves to `<room>.dlq` with headers saying where it came from, and the
//! member moves on; backoff sets each attempt's ack timeout; an admin can
//! redrive a dead-letter room. Timers run on paused tokio time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::Deliveries;
use tokio::time::Instant;

const HOUR_MS: u64 = 3_600_000;

/// A worker's join of `room`: from the start, one message at a time.
fn worker_join(room: &str, max_deliveries: Option<u32>, ack_timeout_ms: u64) -> pb::Join {
    pb::Join {
        max_deliveries,
        ..join(room, pb::StartPosition::Earliest, 1, ack_timeout_ms)
    }
}

async fn nack_why(c: &Client, room: &str, s: u64, reason: &str) {
    let body = pb::client_frame::Body::Nack(pb::Nack {
        room: room.to_string(),
        subscription: String::new(),
        seqs: vec![s],
        delay_ms: 0,
        reason: reason.to_string(),
    });
    match c.request(body).await.unwrap() {
        pb::server_frame::Body::NackOk(_) => {}
        other => panic!("nack answered with {other:?}"),
    }
}

/// Everything stored in `room`, read by a new ephemeral member from the
/// start until nothing more comes for a while. (Dead letters are written to
/// their room asynchronously, so `JoinOk.last_seq` may not count one that
/// is being written.)
async fn read_all(broker: &TestBroker, room: &str) -> Vec<pb::Delivery> {
    let (c, mut d) = broker.connect("").await;
    c.join_with(pb::Join {
        mode: pb::MemberMode::Ephemeral as i32,
        ..join(room, pb::StartPosition::Earliest, 0, HOUR_MS)
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    for _ in 0..1_000 {
        match tokio::time::timeout(Duration::from_millis(300), d.next_push()).await {
            Ok(Some(p)) => out.push(delivery(p)),
            Ok(None) => panic!("connection closed"),
            Err(_) => return out,
        }
    }
    panic!("more than 1000 messages in {room}");
}

fn with_header(p: pb::Publish, k: &str, v: &str) -> pb::Publish {
    let mut p = p;
    p.headers.insert(k.to_string(), v.to_string());
    p
}

fn assert_dead_letter(d: &pb::Delivery, room: &str, s: u64, deliveries: u32) {
    assert_eq!(header(d, "roomq-dead-room"), Some(room), "{d:?}");
    assert_eq!(
        header(d, "roomq-dead-seq"),
        Some(s.to_string().as_str()),
        "{d:?}"
    );
    assert_eq!(
        header(d, "roomq-dead-deliveries"),
        Some(deliveries.to_string().as_str()),
        "{d:?}"
    );
}

#[tokio::test]
async fn a_message_nacked_max_deliveries_times_is_dead_lettered_and_the_member_moves_on() {
    let broker = TestBroker::start().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(3), HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish_with(with_header(
        publish_to("jobs", "job", "poison"),
        "trace",
        "t1",
    ))
    .await
    .unwrap();
    p.publish("jobs", "job", "fine").await.unwrap();

    for attempt in 1..=3 {
        let d = next(&mut wd).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
        nack_why(&w, "jobs", 1, &format!("boom #{attempt}")).await;
    }
    // Not a fourth time: the member moves on to seq 2, and past seq 1.
    let d = next(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (2, 1), "{d:?}");
    assert_eq!(w.ack("jobs", "", &[2]).await.unwrap(), 3);
    assert_quiet(&mut wd, Duration::from_millis(200)).await;

    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    let m = message(d);
    assert_eq!((m.seq, m.event.as_str()), (1, "job"));
    assert_eq!(&m.payload[..], b"poison");
    assert_eq!(
        header(d, "trace"),
        Some("t1"),
        "the message's own headers stay"
    );
    assert_dead_letter(d, "jobs", 1, 3);
    assert_eq!(header(d, "roomq-dead-reason"), Some("boom #3"));
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ack_timeouts_count_as_deliveries_toward_the_dead_letter_room() {
    let broker = paused_broker().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(3), 10_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "slow").await.unwrap();
    p.publish("jobs", "job", "next").await.unwrap();
    let t0 = Instant::now();
    for attempt in 1..=3 {
        let d = next_paused(&mut wd).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
    }
    // The third delivery times out too: seq 2 comes next, not a fourth try.
    let d = next_paused(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (2, 1), "{d:?}");
    assert!(
        t0.elapsed() >= Duration::from_secs(30),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(w.ack("jobs", "", &[2]).await.unwrap(), 3);

    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(&message(&dead[0]).payload[..], b"slow");
    assert_dead_letter(&dead[0], "jobs", 1, 3);
    assert!(header(&dead[0], "roomq-dead-reason").is_some());
    broker.stop().await;
}

#[tokio::test]
async fn max_deliveries_zero_is_unlimited() {
    let broker = TestBroker::start().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(0), HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "again and again").await.unwrap();
    for attempt in 1..=25 {
        let d = next(&mut wd).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
        nack_why(&w, "jobs", 1, "retry").await;
    }
    let d = next(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (1, 26));
    assert!(read_all(&broker, "jobs.dlq").await.is_empty());
    assert_eq!(w.ack("jobs", "", &[1]).await.unwrap(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn max_deliveries_defaults_to_twenty() {
    let broker = TestBroker::start().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", None, HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "poison").await.unwrap();
    for attempt in 1..=20 {
        let d = next(&mut wd).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
        nack_why(&w, "jobs", 1, "no").await;
    }
    assert_quiet(&mut wd, Duration::from_millis(300)).await;
    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_dead_letter(&dead[0], "jobs", 1, 20);
    assert_eq!(header(&dead[0], "roomq-dead-reason"), Some("no"));
    broker.stop().await;
}

/// The wait before the next delivery of seq 1, and that delivery.
async fn wait_for_attempt(wd: &mut Deliveries) -> (Duration, pb::Delivery) {
    let t = Instant::now();
    let d = next_paused(wd).await;
    (t.elapsed(), d)
}

#[tokio::test(start_paused = true)]
async fn backoff_sets_the_ack_timeout_of_each_attempt_and_the_last_step_repeats() {
    let broker = paused_broker().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        backoff_ms: vec![10_000, 20_000, 40_000],
        ..worker_join("jobs", Some(0), HOUR_MS)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "flaky").await.unwrap();
    assert_eq!(next_paused(&mut wd).await.attempt, 1);
    // Attempt n waits backoff[n-1] (then the last entry): not the hour of
    // the ack timeout, and not less than the step.
    for (attempt, step) in [(2, 10), (3, 20), (4, 40), (5, 40), (6, 40)] {
        let step = Duration::from_secs(step);
        let (waited, d) = wait_for_attempt(&mut wd).await;
        assert_eq!((seq(&d), d.attempt, d.redelivered), (1, attempt, true));
        assert!(
            waited >= step && waited < step * 2,
            "attempt {attempt} came after {waited:?}, its step is {step:?}"
        );
    }
    assert_eq!(w.ack("jobs", "", &[1]).await.unwrap(), 2);
    assert_quiet(&mut wd, Duration::from_secs(3 * 3600)).await;
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn in_progress_restarts_the_timer_and_is_not_a_delivery() {
    let broker = paused_broker().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(2), 10_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "long").await.unwrap();
    assert_eq!(next_paused(&mut wd).await.attempt, 1);
    let t0 = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        w.in_progress("jobs", "", &[1]).await.unwrap();
    }
    let d = next_paused(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (1, 2));
    assert!(
        t0.elapsed() >= Duration::from_secs(42),
        "{:?}",
        t0.elapsed()
    );
    // The second delivery was the last allowed one.
    assert_quiet(&mut wd, Duration::from_secs(3600)).await;
    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_dead_letter(&dead[0], "jobs", 1, 2);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_nack_delay_holds_the_redelivery_back() {
    let broker = paused_broker().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        backoff_ms: vec![HOUR_MS],
        ..worker_join("jobs", Some(5), HOUR_MS)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "later").await.unwrap();
    assert_eq!(next_paused(&mut wd).await.attempt, 1);
    w.nack("jobs", "", &[1], Duration::from_secs(10))
        .await
        .unwrap();
    let t0 = Instant::now();
    assert_quiet(&mut wd, Duration::from_millis(9_900)).await;
    let d = next_paused(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (1, 2));
    assert!(
        t0.elapsed() < Duration::from_secs(3600),
        "came from the backoff timer, not the nack delay: {:?}",
        t0.elapsed()
    );
    broker.stop().await;
}

#[tokio::test]
async fn dead_letters_and_the_moved_cursor_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(1), HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "poison").await.unwrap();
    assert_eq!(seq(&next(&mut wd).await), 1);
    nack_why(&w, "jobs", 1, "corrupt input").await;
    assert_quiet(&mut wd, Duration::from_millis(200)).await;
    drop((w, wd, p, _pd));

    let broker = broker.restart().await;
    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_dead_letter(&dead[0], "jobs", 1, 1);
    assert_eq!(header(&dead[0], "roomq-dead-reason"), Some("corrupt input"));
    assert_eq!(&message(&dead[0]).payload[..], b"poison");

    let (w, mut wd) = broker.connect("worker").await;
    let ok = w
        .join_with(pb::Join {
            start: pb::StartPosition::Resume as i32,
            ..worker_join("jobs", Some(1), HOUR_MS)
        })
        .await
        .unwrap();
    assert_eq!(
        (ok.next_seq, ok.last_seq),
        (2, 1),
        "the dead letter is behind the cursor"
    );
    assert_quiet(&mut wd, Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn redrive_moves_dead_letters_back_to_their_room_without_the_dead_headers() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, admin_token) = admin_config(&dir);
    let broker = TestBroker::start_with(config, dir).await;
    let admin = broker.admin(&admin_token).await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        max_in_flight: 10,
        ..worker_join("jobs", Some(1), HOUR_MS)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect("").await;
    for i in 1..=3 {
        let publish = with_header(
            publish_to("jobs", &format!("job{i}"), &format!("p{i}")),
            "n",
            &i.to_string(),
        );
        p.publish_with(publish).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(seq(&next(&mut wd).await), i);
        nack_why(&w, "jobs", i, "later").await;
    }
    assert_quiet(&mut wd, Duration::from_millis(200)).await;
    assert_eq!(read_all(&broker, "jobs.dlq").await.len(), 3);

    let redrive = |max: u32| {
        admin.admin(admin::Op::Redrive(pb::AdminRedrive {
            namespace: "/".into(),
            room: "jobs.dlq".into(),
            max,
        }))
    };
    let ok = redrive(2).await.unwrap();
    assert_eq!((ok.count, ok.truncated), (2, true));
    let ok = redrive(0).await.unwrap();
    assert_eq!((ok.count, ok.truncated), (1, false));
    let ok = redrive(0).await.unwrap();
    assert_eq!((ok.count, ok.truncated), (0, false));

    // Back in their room as new messages, in their dead-letter order, with
    // their own headers and none of the dead-letter ones.
    for i in 1..=3u64 {
        let d = next(&mut wd).await;
        let m = message(&d);
        assert_eq!((m.seq, d.attempt), (3 + i, 1), "{d:?}");
        assert_eq!(m.event, format!("job{i}"));
        assert_eq!(m.payload, format!("p{i}").into_bytes());
        assert_eq!(header(&d, "n"), Some(i.to_string().as_str()));
        let dead_headers: Vec<&String> = m
            .headers
            .keys()
            .filter(|k| k.starts_with("roomq-dead-"))
            .collect();
        assert!(dead_headers.is_empty(), "{dead_headers:?} kept: {d:?}");
        w.ack("jobs", "", &[m.seq]).await.unwrap();
    }
    assert_quiet(&mut wd, Duration::from_millis(200)).await;

    // The dead-letter room is empty.
    let dlq = admin::room(&admin, "/", "jobs.dlq").await.unwrap();
    assert_eq!(
        (dlq.first_seq, dlq.last_seq, dlq.stored_bytes),
        (4, 3, 0),
        "{dlq:?}"
    );
    assert!(read_all(&broker, "jobs.dlq").await.is_empty());
    broker.stop().await;
}

/// Redrives of one dead-letter room at once: each reads the room's oldest
/// messages beside the broker, and several reads start before any moves
/// anything; a redrive whose read was overtaken (the room's first seq
/// moved meanwhile) reads again. Each dead letter goes back exactly once
/// and the bytes are counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redrives_move_each_dead_letter_once() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, admin_token) = admin_config(&dir);
    let broker = TestBroker::start_with(config, dir).await;
    let admin = broker.admin(&admin_token).await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        max_in_flight: 20,
        ..worker_join("jobs", Some(1), HOUR_MS)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect("").await;
    for i in 1..=10 {
        p.publish_with(publish_to("jobs", &format!("job{i}"), "x"))
            .await
            .unwrap();
    }
    for i in 1..=10 {
        assert_eq!(seq(&next(&mut wd).await), i);
        nack_why(&w, "jobs", i, "later").await;
    }
    assert_quiet(&mut wd, Duration::from_millis(200)).await;
    assert_eq!(read_all(&broker, "jobs.dlq").await.len(), 10);

    let redrive = || {
        admin.admin(admin::Op::Redrive(pb::AdminRedrive {
            namespace: "/".into(),
            room: "jobs.dlq".into(),
            max: 0,
        }))
    };
    // Sent back to back on one connection, before any is answered.
    let oks = futures::future::join_all((0..8).map(|_| redrive())).await;
    let moved: u64 = oks.iter().map(|ok| ok.as_ref().unwrap().count).sum();
    assert_eq!(moved, 10, "{oks:?}");

    // Each job is back once, as seqs 11..=20, in dead-letter order.
    for i in 1..=10u64 {
        let d = next(&mut wd).await;
        let m = message(&d);
        assert_eq!(
            (m.seq, m.event.as_str()),
            (10 + i, format!("job{i}").as_str())
        );
        w.ack("jobs", "", &[m.seq]).await.unwrap();
    }
    assert_quiet(&mut wd, Duration::from_millis(300)).await;
    let jobs = admin::room(&admin, "/", "jobs").await.unwrap();
    assert_eq!(jobs.last_seq, 20, "{jobs:?}");
    let dlq = admin::room(&admin, "/", "jobs.dlq").await.unwrap();
    assert_eq!(
        (dlq.first_seq, dlq.last_seq, dlq.stored_bytes),
        (11, 10, 0),
        "{dlq:?}"
    );
    // The namespace's stored bytes are its rooms' (a dead letter moved
    // twice would be taken off twice).
    let rooms: u64 = admin::rooms(&admin, "/")
        .await
        .iter()
        .map(|r| r.stored_bytes)
        .sum();
    let ns = admin::namespace(&admin, "/").await.unwrap();
    assert_eq!(ns.stored_bytes, rooms, "{ns:?}");
    broker.stop().await;
}

#[tokio::test]
async fn the_default_max_deliveries_comes_from_the_config_and_a_join_overrides_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_deliveries = 2;
    let broker = TestBroker::start_with(config, dir).await;
    let (p, _pd) = broker.connect("").await;
    let (w, mut wd) = broker.connect("worker").await;
    assert_eq!(w.limits().unwrap().max_deliveries, 2, "announced in Limits");
    w.join_with(worker_join("a", None, HOUR_MS)).await.unwrap();
    let (o, mut od) = broker.connect("overrider").await;
    o.join_with(worker_join("b", Some(4), HOUR_MS))
        .await
        .unwrap();
    p.publish("a", "job", "x").await.unwrap();
    p.publish("b", "job", "y").await.unwrap();
    for attempt in 1..=2 {
        assert_eq!(next(&mut wd).await.attempt, attempt);
        nack_why(&w, "a", 1, "no").await;
    }
    assert_quiet(&mut wd, Duration::from_millis(200)).await;
    for attempt in 1..=4 {
        assert_eq!(next(&mut od).await.attempt, attempt);
        nack_why(&o, "b", 1, "no").await;
    }
    assert_quiet(&mut od, Duration::from_millis(200)).await;
    assert_dead_letter(&read_all(&broker, "a.dlq").await[0], "a", 1, 2);
    assert_dead_letter(&read_all(&broker, "b.dlq").await[0], "b", 1, 4);
    broker.stop().await;
}

#[tokio::test]
async fn a_backoff_list_is_checked() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_backoff_steps = 3;
    let broker = TestBroker::start_with(config, dir).await;
    let (w, _wd) = broker.connect("worker").await;
    assert_eq!(
        w.limits().unwrap().max_backoff_steps,
        3,
        "announced in Limits"
    );
    let with = |backoff_ms: Vec<u64>| pb::Join {
        backoff_ms,
        ..worker_join("jobs", None, HOUR_MS)
    };
    assert_eq!(
        code(w.join_with(with(vec![1_000; 4])).await),
        roomq_client::ErrorCode::InvalidRequest,
        "more steps than limits.max_backoff_steps"
    );
    assert_eq!(
        code(w.join_with(with(vec![1_000, 0])).await),
        roomq_client::ErrorCode::InvalidRequest,
        "a step of 0 ms"
    );
    w.join_with(with(vec![1, 1_000, 24 * HOUR_MS]))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_group_dead_letters_and_moves_on_too() {
    let broker = TestBroker::start().await;
    let group = pb::Join {
        group: "workers".into(),
        ..worker_join("jobs", Some(2), HOUR_MS)
    };
    let (a, mut ad) = broker.connect("a").await;
    a.join_with(group.clone()).await.unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "poison").await.unwrap();
    p.publish("jobs", "job", "fine").await.unwrap();
    for attempt in 1..=2 {
        let d = next(&mut ad).await;
        assert_eq!((seq(&d), d.attempt), (1, attempt));
        nack_why(&a, "jobs", 1, "bad").await;
    }
    let d = next(&mut ad).await;
    assert_eq!((seq(&d), d.attempt), (2, 1));
    assert_eq!(a.ack("jobs", "", &[2]).await.unwrap(), 3);
    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_dead_letter(&dead[0], "jobs", 1, 2);
    broker.stop().await;
}

/// Deliveries so far are part of the stored cursor: a restart does not
/// give a message a fresh set of attempts. Delivered 3 times of 3 before the
/// restart, it is dead-lettered after it instead of delivered a 4th time.
#[tokio::test]
async fn delivery_counts_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(worker_join("jobs", Some(3), HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "job", "poison").await.unwrap();
    p.publish("jobs", "job", "fine").await.unwrap();
    for attempt in 1..=2 {
        assert_eq!(next(&mut wd).await.attempt, attempt);
        nack_why(&w, "jobs", 1, "no").await;
    }
    let third = next(&mut wd).await;
    assert_eq!((seq(&third), third.attempt), (1, 3));
    drop((w, wd, p, _pd));

    let broker = broker.restart().await;
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        start: pb::StartPosition::Resume as i32,
        ..worker_join("jobs", Some(3), HOUR_MS)
    })
    .await
    .unwrap();
    let d = next(&mut wd).await;
    assert_eq!(
        (seq(&d), d.attempt),
        (2, 1),
        "a 4th delivery of seq 1 instead of seq 2: {d:?}"
    );
    assert_eq!(w.ack("jobs", "", &[2]).await.unwrap(), 3);
    let dead = read_all(&broker, "jobs.dlq").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_dead_letter(&dead[0], "jobs", 1, 3);
    broker.stop().await;
}
