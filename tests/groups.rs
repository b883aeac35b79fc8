//! Groups: competing consumers that share one durable cursor. Each message
//! goes to one consumer; messages with the same ordering key go to the same
//! consumer, in order; a departing consumer's unacknowledged messages and
//! keys move to the others; an exclusive group feeds one consumer at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::{Deliveries, ErrorCode};

/// Long enough that no ack timer fires during a test on real time.
const HOUR_MS: u64 = 3_600_000;

fn group_join(room: &str, group: &str, mode: pb::GroupMode, max_in_flight: u32) -> pb::Join {
    pb::Join {
        room: room.to_string(),
        group: group.to_string(),
        group_mode: mode as i32,
        start: pb::StartPosition::Earliest as i32,
        max_in_flight,
        ack_timeout_ms: HOUR_MS,
        ..Default::default()
    }
}

/// Consumers of one group, each on its own connection with its own client id.
struct Consumers {
    conns: Vec<Client>,
    ds: Vec<Deliveries>,
}

impl Consumers {
    fn new() -> Self {
        Consumers {
            conns: Vec::new(),
            ds: Vec::new(),
        }
    }

    /// Connects `client_id` and joins with `j`; returns its index.
    async fn add(&mut self, broker: &TestBroker, client_id: &str, j: pb::Join) -> usize {
        let (c, d) = broker.connect(client_id).await;
        c.join_with(j).await.expect("group join");
        self.conns.push(c);
        self.ds.push(d);
        self.conns.len() - 1
    }

    /// Reads `n` deliveries from any consumer, in the order they are read.
    async fn collect(&mut self, n: usize) -> Vec<(usize, pb::Delivery)> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(next_any(&mut self.ds).await);
        }
        got
    }

    async fn assert_all_quiet(&mut self, skip: &[usize]) {
        for (i, d) in self.ds.iter_mut().enumerate() {
            if !skip.contains(&i) {
                assert_quiet(d, Duration::from_millis(200)).await;
            }
        }
    }
}

fn keyed(room: &str, key: &str, payload: String) -> pb::Publish {
    pb::Publish {
        key: key.to_string(),
        ..publish_to(room, "job", &payload)
    }
}

fn key_of(d: &pb::Delivery) -> String {
    message(d).key.clone()
}

#[tokio::test]
async fn each_message_goes_to_exactly_one_consumer_and_every_consumer_gets_a_share() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    for name in ["w0", "w1", "w2"] {
        g.add(
            &broker,
            name,
            group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100),
        )
        .await;
    }
    let (p, _pd) = broker.connect("").await;
    for i in 1..=60 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }

    let got = g.collect(60).await;
    let mut per: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (i, d) in &got {
        assert_eq!((d.attempt, d.redelivered), (1, false), "{d:?}");
        per.entry(*i).or_default().push(seq(d));
    }
    let all: Vec<u64> = {
        let mut v: Vec<u64> = per.values().flatten().copied().collect();
        v.sort_unstable();
        v
    };
    assert_eq!(all, (1..=60).collect::<Vec<_>>(), "missing or duplicated");
    // Unkeyed messages go to the consumer with the most free slots: with
    // nothing acknowledged, all three get some.
    assert_eq!(per.len(), 3, "not every consumer got a share: {per:?}");

    let mut floor = 0;
    for (i, seqs) in &per {
        floor = g.conns[*i].ack("jobs", "", seqs).await.unwrap();
    }
    assert_eq!(floor, 61, "the shared cursor after every ack");
    g.assert_all_quiet(&[]).await;

    // The next message goes to exactly one of them.
    p.publish("jobs", "job", "61").await.unwrap();
    let (i, d) = next_any(&mut g.ds).await;
    assert_eq!(seq(&d), 61);
    g.assert_all_quiet(&[]).await;
    g.conns[i].ack("jobs", "", &[61]).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn messages_with_one_key_go_to_one_consumer_in_seq_order() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    for name in ["w0", "w1", "w2"] {
        g.add(
            &broker,
            name,
            group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100),
        )
        .await;
    }
    let (p, _pd) = broker.connect("").await;
    for i in 0..50 {
        p.publish_with(keyed("jobs", &format!("k{}", i % 5), format!("{i}")))
            .await
            .unwrap();
    }
    let got = g.collect(50).await;
    let mut by_key: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
    for (i, d) in &got {
        by_key.entry(key_of(d)).or_default().push((*i, seq(d)));
    }
    assert_eq!(by_key.len(), 5, "{by_key:?}");
    for (key, seen) in &by_key {
        let consumers: BTreeSet<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(consumers.len(), 1, "key {key} split over {consumers:?}");
        let seqs: Vec<u64> = seen.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs.len(), 10, "key {key}: {seqs:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {seqs:?}"
        );
    }
    for (i, d) in &got {
        g.conns[*i].ack("jobs", "", &[seq(d)]).await.unwrap();
    }
    g.assert_all_quiet(&[]).await;
    broker.stop().await;
}

#[derive(Debug, Clone, Copy)]
enum Departure {
    Disconnect,
    Leave,
}

/// Consumer A holds every key (it was alone when they were first seen) and
/// some of each key unacknowledged; B and C join. New messages of A's keys
/// still go to A, unkeyed ones to the freer B and C. Then A departs: its
/// unacknowledged messages and its keys move to B and C, each key's earlier
/// messages first, and each key stays with one consumer.
async fn a_departing_consumer_hands_over(how: Departure) {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    let j = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100);
    let a = g.add(&broker, "a", j.clone()).await;
    let (p, _pd) = broker.connect("").await;
    let keys: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
    // Phase 1: 5 messages per key, all to A.
    let mut seqs_of: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for round in 0..5 {
        for key in &keys {
            let ok = p
                .publish_with(keyed("jobs", key, format!("{key}/{round}")))
                .await
                .unwrap();
            seqs_of.entry(key.clone()).or_default().push(ok.seqs[0].seq);
        }
    }
    let phase1 = g.collect(40).await;
    assert!(phase1.iter().all(|(i, _)| *i == a));
    // A processes the first two of each key.
    let mut processed_by_a: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for key in &keys {
        let first_two = seqs_of[key][..2].to_vec();
        g.conns[a].ack("jobs", "", &first_two).await.unwrap();
        processed_by_a.insert(key.clone(), first_two);
    }

    let b = g.add(&broker, "b", j.clone()).await;
    let c = g.add(&broker, "c", j.clone()).await;
    // Phase 2: two more per key, and four without a key.
    for round in 5..7 {
        for key in &keys {
            let ok = p
                .publish_with(keyed("jobs", key, format!("{key}/{round}")))
                .await
                .unwrap();
            seqs_of.get_mut(key).unwrap().push(ok.seqs[0].seq);
        }
    }
    let mut unkeyed = BTreeSet::new();
    for i in 0..4 {
        unkeyed.insert(p.publish("jobs", "job", format!("free{i}")).await.unwrap());
    }
    let phase2 = g.collect(20).await;
    let mut unkeyed_at: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, d) in &phase2 {
        if key_of(d).is_empty() {
            unkeyed_at.insert(seq(d), *i);
        } else {
            assert_eq!(
                *i,
                a,
                "{} went to {i}, but A holds unacked messages of its key",
                key_of(d)
            );
        }
    }
    assert_eq!(unkeyed_at.keys().copied().collect::<BTreeSet<_>>(), unkeyed);
    assert!(
        unkeyed_at.values().all(|i| *i == b || *i == c),
        "unkeyed messages go to the consumers with the most free slots: {unkeyed_at:?}"
    );
    g.assert_all_quiet(&[]).await;

    // A departs with 5 unacked messages per key.
    let a_conn = g.conns[a].clone();
    match how {
        Departure::Leave => a_conn.leave("jobs", "", false).await.unwrap(),
        Departure::Disconnect => {
            // Replace its connection and deliveries with closed ones.
            let (dead, dead_d) = broker.connect("").await;
            let old_conn = std::mem::replace(&mut g.conns[a], dead);
            let old_d = std::mem::replace(&mut g.ds[a], dead_d);
            drop((old_conn, old_d, a_conn));
        }
    }
    // Phase 3: one more per key.
    for key in &keys {
        let ok = p
            .publish_with(keyed("jobs", key, format!("{key}/7")))
            .await
            .unwrap();
        seqs_of.get_mut(key).unwrap().push(ok.seqs[0].seq);
    }
    // 8 keys x (5 unacked + 1 new) arrive at B and C.
    let phase3 = g.collect(48).await;
    let mut after: BTreeMap<String, Vec<(usize, pb::Delivery)>> = BTreeMap::new();
    for (i, d) in phase3 {
        assert!(i == b || i == c, "delivery to the departed consumer: {d:?}");
        after.entry(key_of(&d)).or_default().push((i, d));
    }
    for key in &keys {
        let seen = &after[key];
        let consumers: BTreeSet<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(consumers.len(), 1, "key {key} split over {consumers:?}");
        let seqs: Vec<u64> = seen.iter().map(|(_, d)| seq(d)).collect();
        // What A processed, then what B or C processed: increasing.
        let processed: Vec<u64> = processed_by_a[key].iter().copied().chain(seqs).collect();
        assert_eq!(
            processed, seqs_of[key],
            "key {key}: order of processing (A's acks, then the new owner's deliveries)"
        );
        for (_, d) in &seen[..5] {
            assert!(
                d.redelivered && d.attempt == 2,
                "A's unacked message handed over: {d:?}"
            );
        }
        let (_, last) = &seen[5];
        assert_eq!((last.attempt, last.redelivered), (1, false));
    }
    g.assert_all_quiet(&[a]).await;

    // Everything acknowledged: the group's cursor is past the end.
    let mut floor = 0;
    for (key, seen) in &after {
        for (i, d) in seen {
            floor = g.conns[*i].ack("jobs", "", &[seq(d)]).await.unwrap();
        }
        assert!(!key.is_empty());
    }
    for (s, i) in &unkeyed_at {
        floor = g.conns[*i].ack("jobs", "", &[*s]).await.unwrap();
    }
    assert_eq!(floor, 40 + 16 + 4 + 8 + 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_disconnected_consumers_unacked_messages_and_keys_move_to_the_others_in_order() {
    a_departing_consumer_hands_over(Departure::Disconnect).await;
}

#[tokio::test]
async fn a_leaving_consumers_unacked_messages_and_keys_move_to_the_others_in_order() {
    a_departing_consumer_hands_over(Departure::Leave).await;
}

/// Consumers join while a keyed backlog is being worked through (each
/// delivery acknowledged as soon as it is read): every message is processed
/// once, and each key's messages in seq order.
#[tokio::test]
async fn consumers_joining_mid_stream_keep_each_keys_order() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    let j = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 4);
    g.add(&broker, "a", j.clone()).await;
    let (p, _pd) = broker.connect("").await;
    let mut key_of_seq = BTreeMap::new();
    for i in 0..90 {
        let key = format!("k{}", i % 6);
        let ok = p
            .publish_with(keyed("jobs", &key, format!("{i}")))
            .await
            .unwrap();
        key_of_seq.insert(ok.seqs[0].seq, key);
    }
    // The log in the order read; each delivery is acked before the next read,
    // so for one key, a read on another consumer cannot overtake it.
    let mut log: Vec<(usize, u64)> = Vec::new();
    let mut processed = BTreeSet::new();
    for _ in 0..500 {
        if processed.len() == 90 {
            break;
        }
        if log.len() == 10 {
            g.add(&broker, "b", j.clone()).await;
        }
        if log.len() == 30 {
            g.add(&broker, "c", j.clone()).await;
        }
        let (i, d) = next_any(&mut g.ds).await;
        assert_eq!(key_of(&d), key_of_seq[&seq(&d)]);
        assert!(
            processed.insert(seq(&d)),
            "seq {} processed twice: {d:?}",
            seq(&d)
        );
        log.push((i, seq(&d)));
        g.conns[i].ack("jobs", "", &[seq(&d)]).await.unwrap();
    }
    assert_eq!(processed.len(), 90, "not every message was processed");
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, s) in &log {
        per_key.entry(&key_of_seq[s]).or_default().push(*s);
    }
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} processed out of order: {seqs:?} (log {log:?})"
        );
    }
    g.assert_all_quiet(&[]).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_exclusive_group_feeds_only_its_first_consumer_and_the_next_takes_over() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    let j = group_join("jobs", "single", pb::GroupMode::Exclusive, 100);
    let a = g.add(&broker, "a", j.clone()).await;
    let b = g.add(&broker, "b", j.clone()).await;
    let c = g.add(&broker, "c", j.clone()).await;
    let (p, _pd) = broker.connect("").await;
    for i in 1..=10 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    for s in 1..=10 {
        let (i, d) = next_any(&mut g.ds).await;
        assert_eq!((i, seq(&d), d.attempt), (a, s, 1));
    }
    g.assert_all_quiet(&[]).await;
    assert_eq!(g.conns[a].ack_up_to("jobs", "", 4).await.unwrap(), 5);

    // A leaves: B, next in join order, takes over what A had not acked.
    g.conns[a].leave("jobs", "", false).await.unwrap();
    for s in 5..=10 {
        let (i, d) = next_any(&mut g.ds).await;
        assert_eq!((i, seq(&d), d.attempt, d.redelivered), (b, s, 2, true));
    }
    p.publish("jobs", "job", "11").await.unwrap();
    let (i, d) = next_any(&mut g.ds).await;
    assert_eq!((i, seq(&d), d.attempt), (b, 11, 1));
    g.assert_all_quiet(&[]).await;
    assert_eq!(g.conns[b].ack_up_to("jobs", "", 7).await.unwrap(), 8);

    // B's connection drops: C takes over.
    let (dead, dead_d) = broker.connect("").await;
    drop(std::mem::replace(&mut g.conns[b], dead));
    drop(std::mem::replace(&mut g.ds[b], dead_d));
    for s in 8..=11 {
        let (i, d) = next_any(&mut g.ds).await;
        assert_eq!((i, seq(&d), d.redelivered), (c, s, true), "{d:?}");
    }
    g.assert_all_quiet(&[]).await;
    assert_eq!(g.conns[c].ack_up_to("jobs", "", 11).await.unwrap(), 12);
    broker.stop().await;
}

#[tokio::test]
async fn a_groups_cursor_survives_a_restart() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("").await;
    let (a, mut ad) = broker.connect("a").await;
    a.join_with(group_join(
        "jobs",
        "workers",
        pb::GroupMode::KeyOrdered,
        100,
    ))
    .await
    .unwrap();
    for i in 1..=10 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    for s in 1..=10 {
        assert_eq!(seq(&next(&mut ad).await), s);
    }
    assert_eq!(a.ack_up_to("jobs", "", 6).await.unwrap(), 7);
    drop((a, ad, p, _pd));

    let broker = broker.restart().await;
    // Another consumer (another client id) joins the group: the group's
    // cursor, not a client's, decides; the start position is ignored for a
    // group that exists.
    let (b, mut bd) = broker.connect("b").await;
    let ok = b
        .join_with(group_join(
            "jobs",
            "workers",
            pb::GroupMode::KeyOrdered,
            100,
        ))
        .await
        .unwrap();
    assert_eq!((ok.next_seq, ok.last_seq), (7, 10));
    for s in 7..=10 {
        let d = next(&mut bd).await;
        assert_eq!((seq(&d), d.redelivered), (s, true), "{d:?}");
    }
    assert_quiet(&mut bd, Duration::from_millis(200)).await;
    assert_eq!(b.ack_up_to("jobs", "", 10).await.unwrap(), 11);
    broker.stop().await;
}

#[tokio::test]
async fn forget_deletes_a_group_only_when_its_last_consumer_leaves() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("").await;
    let j = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100);
    let mut g = Consumers::new();
    let a = g.add(&broker, "a", j.clone()).await;
    let b = g.add(&broker, "b", j.clone()).await;
    for i in 1..=4 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    for (i, d) in g.collect(4).await {
        g.conns[i].ack("jobs", "", &[seq(&d)]).await.unwrap();
    }

    // A forgets, but B is still a consumer: the group and its cursor stay.
    g.conns[a].leave("jobs", "", true).await.unwrap();
    p.publish("jobs", "job", "5").await.unwrap();
    let d = next(&mut g.ds[b]).await;
    assert_eq!(seq(&d), 5);
    assert_eq!(g.conns[b].ack("jobs", "", &[5]).await.unwrap(), 6);
    g.assert_all_quiet(&[]).await;
    // B leaves without forgetting: the group stays with no consumer.
    g.conns[b].leave("jobs", "", false).await.unwrap();

    let (c, mut cd) = broker.connect("c").await;
    let ok = c.join_with(j.clone()).await.unwrap();
    assert_eq!(ok.next_seq, 6, "the group's cursor, not EARLIEST");
    assert_quiet(&mut cd, Duration::from_millis(200)).await;
    // C is the last consumer: forget deletes the group.
    c.leave("jobs", "", true).await.unwrap();

    let (d2, mut dd) = broker.connect("d").await;
    let ok = d2.join_with(j).await.unwrap();
    assert_eq!(ok.next_seq, 1, "a new group starts at its start position");
    for s in 1..=5 {
        assert_eq!(seq(&next(&mut dd).await), s);
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_group_cannot_be_ephemeral() {
    let broker = TestBroker::start().await;
    let (c, _cd) = broker.connect("a").await;
    let j = pb::Join {
        mode: pb::MemberMode::Ephemeral as i32,
        ..group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 10)
    };
    assert_eq!(code(c.join_with(j).await), ErrorCode::InvalidRequest);
    c.ping().await.unwrap();
    broker.stop().await;
}

/// A key whose consumer is full waits for it: its messages do not spill
/// over to a consumer with free slots, while unkeyed ones do.
#[tokio::test]
async fn a_key_waits_for_its_consumer_instead_of_spilling_over() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    let j = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 2);
    g.add(&broker, "a", j.clone()).await;
    g.add(&broker, "b", j.clone()).await;
    let (p, _pd) = broker.connect("").await;
    for i in 0..8 {
        p.publish_with(keyed("jobs", "k", format!("k{i}")))
            .await
            .unwrap();
    }
    for i in 0..4 {
        p.publish("jobs", "job", format!("free{i}")).await.unwrap();
    }
    let mut keyed_at = BTreeSet::new();
    let mut keyed_seqs = Vec::new();
    let mut unkeyed = 0;
    // Each delivery is acked after it is read, so the key's consumer keeps
    // being freed; the other consumer must still not get the key.
    for _ in 0..12 {
        let (i, d) = next_any(&mut g.ds).await;
        if key_of(&d) == "k" {
            keyed_at.insert(i);
            keyed_seqs.push(seq(&d));
        } else {
            unkeyed += 1;
        }
        g.conns[i].ack("jobs", "", &[seq(&d)]).await.unwrap();
    }
    assert_eq!(keyed_at.len(), 1, "key k went to {keyed_at:?}");
    assert_eq!(keyed_seqs, (1..=8).collect::<Vec<_>>());
    assert_eq!(unkeyed, 4);
    g.assert_all_quiet(&[]).await;
    broker.stop().await;
}

/// "Group-wide settings (group_mode, events, max_deliveries) are those of
/// the latest join."
#[tokio::test]
async fn group_wide_settings_are_those_of_the_latest_join() {
    let broker = TestBroker::start().await;
    let mut g = Consumers::new();
    let base = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100);
    g.add(
        &broker,
        "a",
        pb::Join {
            events: vec!["a*".into()],
            max_deliveries: Some(5),
            ..base.clone()
        },
    )
    .await;
    g.add(
        &broker,
        "b",
        pb::Join {
            events: vec!["b*".into()],
            max_deliveries: Some(1),
            ..base
        },
    )
    .await;
    let (p, _pd) = broker.connect("").await;
    p.publish("jobs", "apple", "1").await.unwrap();
    p.publish("jobs", "banana", "2").await.unwrap();
    let (i, d) = next_any(&mut g.ds).await;
    assert_eq!(
        (seq(&d), message(&d).event.as_str()),
        (2, "banana"),
        "the latest join's filter applies to the whole group"
    );
    g.assert_all_quiet(&[]).await;
    // One delivery is the group's limit now: a nack dead-letters it.
    g.conns[i]
        .nack("jobs", "", &[2], Duration::ZERO)
        .await
        .unwrap();
    g.assert_all_quiet(&[]).await;
    p.publish("jobs", "banana", "3").await.unwrap();
    let (i, d) = next_any(&mut g.ds).await;
    assert_eq!(seq(&d), 3);
    assert_eq!(g.conns[i].ack("jobs", "", &[3]).await.unwrap(), 4);
    broker.stop().await;
}

#[tokio::test]
async fn admin_lists_a_group_as_one_member_with_its_consumers() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let (config, admin_token) = admin_config(&dir);
    let broker = TestBroker::start_with(config, dir).await;
    let mut g = Consumers::new();
    let j = group_join("jobs", "workers", pb::GroupMode::KeyOrdered, 100);
    g.add(&broker, "a", j.clone()).await;
    g.add(&broker, "b", j).await;
    let (p, _pd) = broker.connect("").await;
    for i in 1..=4 {
        p.publish("jobs", "job", format!("{i}")).await.unwrap();
    }
    let got = g.collect(4).await;
    let (i, d) = &got[0];
    g.conns[*i].ack("jobs", "", &[seq(d)]).await.unwrap();
    let admin = broker.admin(&admin_token).await;
    let room = admin::room(&admin, "/", "jobs").await.unwrap();
    assert_eq!(room.members.len(), 1, "{room:?}");
    let m = &room.members[0];
    assert_eq!(
        (m.group.as_str(), m.durable, m.connected, m.consumers),
        ("workers", true, true, 2),
        "{m:?}"
    );
    assert_eq!(m.unacked, 3, "{m:?}");
    broker.stop().await;
}
