//! Retention: a namespace's rules bound what each room keeps (messages,
//! bytes, age); the broker trims the oldest in the background, moves the
//! members left behind past what was deleted and tells them with a `Gap`.
//! The sweeps run every `storage.retention_interval_ms` of paused tokio
//! time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq::config::{NamespaceConfig, RetentionRule};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::{Deliveries, Push};

const NS: &str = "/ret";
const HOUR_MS: u64 = 3_600_000;

fn rule(rooms: &str, max_messages: u64, max_bytes: u64, max_age_ms: u64) -> RetentionRule {
    RetentionRule {
        rooms: rooms.to_string(),
        max_messages,
        max_bytes,
        max_age_ms,
    }
}

/// A paused-time broker with an open `/ret` holding `rules`, and an admin
/// token.
struct Setup {
    broker: TestBroker,
    admin_token: String,
}

impl Setup {
    async fn start(rules: Vec<RetentionRule>) -> Setup {
        Setup::start_cached(rules, 8_192).await
    }

    /// [`Setup::start`] with rooms caching only `room_cache_messages`.
    async fn start_cached(rules: Vec<RetentionRule>, room_cache_messages: u32) -> Setup {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = paused_config(&dir);
        config.storage.room_cache_messages = room_cache_messages;
        let (admin_token, entry) = new_token("root");
        config.admin.tokens.push(entry);
        config.namespaces.insert(
            NS.to_string(),
            NamespaceConfig {
                retention: rules,
                ..NamespaceConfig::open_default()
            },
        );
        Setup {
            broker: TestBroker::start_with(config, dir).await,
            admin_token,
        }
    }

    async fn admin(&self) -> Client {
        self.broker.admin(&self.admin_token).await
    }

    async fn connect(&self, client_id: &str) -> (Client, Deliveries) {
        self.broker.connect_ns(NS, client_id).await
    }

    async fn restart(self) -> Setup {
        Setup {
            broker: self.broker.restart().await,
            ..self
        }
    }

    /// The room's figures once `done` holds of them, waiting through
    /// retention sweeps (at most a virtual minute).
    async fn room_when(
        &self,
        room: &str,
        what: &str,
        done: impl Fn(&pb::AdminRoomInfo) -> bool,
    ) -> pb::AdminRoomInfo {
        let admin = self.admin().await;
        let mut info = None;
        for _ in 0..120 {
            let r = admin::room(&admin, NS, room).await.expect("the room");
            if done(&r) {
                return r;
            }
            info = Some(r);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("never {what}: {info:?}");
    }

    async fn first_seq_becomes(&self, room: &str, first_seq: u64) -> pb::AdminRoomInfo {
        self.room_when(room, &format!("first_seq {first_seq}"), |r| {
            r.first_seq == first_seq
        })
        .await
    }
}

async fn publish_n(p: &Client, room: &str, n: u64) {
    for i in 0..n {
        p.publish(room, "e", format!("{room}-{i}")).await.unwrap();
    }
}

/// Joins `room` from the earliest stored message; returns its `JoinOk` and
/// the seqs then delivered.
async fn read_from_earliest(s: &Setup, client_id: &str, room: &str) -> (pb::JoinOk, Vec<u64>) {
    let (c, mut d) = s.connect(client_id).await;
    let ok = c
        .join_with(join(room, pb::StartPosition::Earliest, 0, HOUR_MS))
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for _ in ok.next_seq..=ok.last_seq {
        seqs.push(seq(&next_paused(&mut d).await));
    }
    assert_quiet(&mut d, Duration::from_secs(5)).await;
    (ok, seqs)
}

/// Asserts that `gaps` (a trim may take several sweeps, each with its own
/// notice) together cover `from..=to` without overlap and count `missed`.
fn assert_gaps(gaps: &[pb::Gap], room: &str, from: u64, to: u64, missed: u64) {
    assert!(!gaps.is_empty(), "no gap notice");
    let mut expect_from = from;
    for g in gaps {
        assert_eq!(
            (g.room.as_str(), g.subscription.as_str(), g.from_seq),
            (room, "", expect_from),
            "{gaps:?}"
        );
        assert!(g.to_seq >= g.from_seq, "{gaps:?}");
        expect_from = g.to_seq + 1;
    }
    assert_eq!(expect_from - 1, to, "{gaps:?}");
    let total: u64 = gaps.iter().map(|g| g.missed).sum();
    assert_eq!(total, missed, "{gaps:?}");
}

/// [`gaps_and_deliveries`], asserting that every gap notice came before
/// every delivery ("before any later delivery").
async fn gaps_before_deliveries(
    md: &mut Deliveries,
    to_seq: u64,
    n: usize,
) -> (Vec<pb::Gap>, Vec<pb::Delivery>) {
    let (gaps, ds, order) = gaps_and_deliveries_in_order(md, to_seq, n).await;
    let first_delivery = order.iter().position(|is_gap| !is_gap);
    let last_gap = order.iter().rposition(|is_gap| *is_gap);
    if let (Some(d), Some(g)) = (first_delivery, last_gap) {
        let seqs: Vec<u64> = ds.iter().map(seq).collect();
        assert!(
            g < d,
            "a gap notice came after a delivery: gaps {gaps:?}, seqs {seqs:?}, order (gap?) {order:?}"
        );
    }
    (gaps, ds)
}

async fn gaps_and_deliveries(
    md: &mut Deliveries,
    to_seq: u64,
    n: usize,
) -> (Vec<pb::Gap>, Vec<pb::Delivery>) {
    let (gaps, ds, _) = gaps_and_deliveries_in_order(md, to_seq, n).await;
    (gaps, ds)
}

/// Reads pushes until the gap notices reach `to_seq` and `n` deliveries
/// came, or until nothing more comes for a while once `n` deliveries did
/// (then the caller's checks say what is missing). Deliveries are not acked.
/// Also returns the order of the pushes (true for a gap).
async fn gaps_and_deliveries_in_order(
    md: &mut Deliveries,
    to_seq: u64,
    n: usize,
) -> (Vec<pb::Gap>, Vec<pb::Delivery>, Vec<bool>) {
    let (mut gaps, mut ds) = (Vec::<pb::Gap>::new(), Vec::new());
    let mut order = Vec::new();
    for _ in 0..100 {
        let gaps_done = gaps.last().map(|g| g.to_seq) == Some(to_seq);
        if ds.len() >= n && gaps_done {
            return (gaps, ds, order);
        }
        let wait = if ds.len() >= n {
            Duration::from_secs(5)
        } else {
            VIRTUAL_DAY
        };
        match tokio::time::timeout(wait, md.next_push()).await {
            Ok(Some(Push::Gap(g))) => {
                gaps.push(g);
                order.push(true);
            }
            Ok(Some(Push::Delivery(d))) => {
                ds.push(d);
                order.push(false);
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => return (gaps, ds, order),
        }
    }
    let seqs: Vec<(u64, u32)> = ds.iter().map(|d| (seq(d), d.attempt)).collect();
    panic!("gaps {gaps:?}, deliveries (seq, attempt) {seqs:?}");
}

#[tokio::test(start_paused = true)]
async fn max_messages_trims_the_oldest_in_the_background() {
    let s = Setup::start(vec![rule("log*", 5, 0, 0)]).await;
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "logs", 12).await;
    publish_n(&p, "other", 12).await;

    let r = s.first_seq_becomes("logs", 8).await;
    assert_eq!(r.last_seq, 12);
    let (ok, seqs) = read_from_earliest(&s, "reader", "logs").await;
    assert_eq!((ok.next_seq, seqs), (8, vec![8, 9, 10, 11, 12]));

    // A room no rule matches keeps everything.
    let other = admin::room(&s.admin().await, NS, "other").await.unwrap();
    assert_eq!((other.first_seq, other.last_seq), (1, 12));
    // Nor is a room of the same name in another namespace touched.
    let (root, _rd) = s.broker.connect("").await;
    publish_n(&root, "logs", 12).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = admin::room(&s.admin().await, "/", "logs").await.unwrap();
    assert_eq!((r.first_seq, r.last_seq), (1, 12));
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn max_bytes_trims_down_to_the_byte_bound() {
    let s = Setup::start(vec![rule("*", 0, 5_000, 0)]).await;
    let (p, _pd) = s.connect("").await;
    for i in 0..20 {
        p.publish("r", "e", vec![b'x' + (i % 3); 1_000])
            .await
            .unwrap();
    }
    let r = s
        .room_when("r", "within 5000 bytes", |r| r.stored_bytes <= 5_000)
        .await;
    assert_eq!(r.last_seq, 20);
    // Each message is over 1000 bytes stored: at most 5 are kept; the
    // newest one fits.
    assert!(
        (16..=20).contains(&r.first_seq) && r.stored_bytes > 0,
        "{r:?}"
    );
    let (ok, seqs) = read_from_earliest(&s, "reader", "r").await;
    assert_eq!(ok.next_seq, r.first_seq);
    assert_eq!(seqs, (r.first_seq..=20).collect::<Vec<_>>());
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn max_age_trims_what_is_older() {
    max_age_trims_with_cache(8_192).await;
}

/// The same with a room cache of 2 messages: the oldest are looked at in
/// the stored log, beside the broker's actor.
#[tokio::test(start_paused = true)]
async fn max_age_trims_from_the_stored_log_past_the_cache() {
    max_age_trims_with_cache(2).await;
}

async fn max_age_trims_with_cache(room_cache_messages: u32) {
    let s = Setup::start_cached(vec![rule("*", 0, 0, 10_000)], room_cache_messages).await;
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 5).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    publish_n(&p, "r", 5).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The first five are 11 s old, the others 5 s.
    let r = s.first_seq_becomes("r", 6).await;
    assert_eq!(r.last_seq, 10);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let r = s.first_seq_becomes("r", 11).await;
    assert_eq!((r.last_seq, r.stored_bytes), (10, 0));
    // Seqs go on.
    assert_eq!(p.publish("r", "e", "new").await.unwrap(), 11);
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_durable_member_left_behind_gets_a_gap_when_it_rejoins() {
    let s = Setup::start(vec![rule("*", 5, 0, 0)]).await;
    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 0, HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 2).await;
    for i in 1..=2 {
        assert_eq!(seq(&next_paused(&mut md).await), i);
    }
    assert_eq!(m.ack_up_to("r", "", 2).await.unwrap(), 3);
    m.leave("r", "", false).await.unwrap();
    drop((m, md));

    publish_n(&p, "r", 10).await;
    s.first_seq_becomes("r", 8).await;

    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Resume, 0, HOUR_MS))
        .await
        .unwrap();
    let (gaps, ds) = gaps_before_deliveries(&mut md, 7, 5).await;
    assert_gaps(&gaps, "r", 3, 7, 5);
    let got: Vec<(u64, u32)> = ds.iter().map(|d| (seq(d), d.attempt)).collect();
    assert_eq!(got, [(8, 1), (9, 1), (10, 1), (11, 1), (12, 1)]);
    assert_eq!(m.ack_up_to("r", "", 12).await.unwrap(), 13);
    assert_quiet(&mut md, Duration::from_secs(5)).await;
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_connected_member_left_behind_gets_a_gap_and_goes_on() {
    let s = Setup::start(vec![rule("*", 5, 0, 0)]).await;
    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 1, HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 12).await;
    // One at a time: seq 1 is in flight and unacked when 1..7 are trimmed.
    assert_eq!(seq(&next_paused(&mut md).await), 1);
    let mut gaps = Vec::new();
    let mut next_seq = 8;
    for _ in 0..100 {
        if next_seq == 13 && gaps.last().map(|g: &pb::Gap| g.to_seq) == Some(7) {
            break;
        }
        match next_push_paused(&mut md).await {
            Push::Gap(g) => gaps.push(g),
            Push::Delivery(d) => {
                assert_eq!((seq(&d), d.attempt), (next_seq, 1), "{d:?}");
                assert_eq!(
                    gaps.last().map(|g: &pb::Gap| g.to_seq),
                    Some(7),
                    "seq {next_seq} delivered before the gap notice"
                );
                assert_eq!(m.ack("r", "", &[next_seq]).await.unwrap(), next_seq + 1);
                next_seq += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next_seq, 13);
    assert_gaps(&gaps, "r", 1, 7, 7);
    assert_quiet(&mut md, Duration::from_secs(5)).await;
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_gap_counts_only_what_was_not_acknowledged() {
    let s = Setup::start(vec![rule("*", 5, 0, 0)]).await;
    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 10, HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = s.connect("").await;
    // Ten delivered at once; 2 and 3 acked; then two more published, and
    // 1..7 are trimmed.
    publish_n(&p, "r", 10).await;
    for i in 1..=10 {
        assert_eq!(seq(&next_paused(&mut md).await), i);
    }
    assert_eq!(m.ack("r", "", &[2, 3]).await.unwrap(), 1);
    publish_n(&p, "r", 2).await;
    let (gaps, ds) = gaps_and_deliveries(&mut md, 7, 2).await;
    let seqs: Vec<u64> = ds.iter().map(seq).collect();
    assert_eq!(seqs, [11, 12]);
    assert_gaps(&gaps, "r", 1, 7, 5);
    // 8, 9 and 10 are still this member's to acknowledge.
    assert_eq!(m.ack_up_to("r", "", 12).await.unwrap(), 13);
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn trimming_survives_a_restart() {
    let s = Setup::start(vec![rule("*", 5, 0, 0)]).await;
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 12).await;
    let before = s.first_seq_becomes("r", 8).await;
    drop((p, _pd));
    let s = s.restart().await;
    let after = admin::room(&s.admin().await, NS, "r").await.unwrap();
    assert_eq!(
        (after.first_seq, after.last_seq, after.stored_bytes),
        (8, 12, before.stored_bytes)
    );
    let (ok, seqs) = read_from_earliest(&s, "reader", "r").await;
    assert_eq!((ok.next_seq, seqs), (8, vec![8, 9, 10, 11, 12]));
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_gap_owed_to_a_detached_member_survives_a_restart() {
    let s = Setup::start(vec![rule("*", 5, 0, 0)]).await;
    let (m, _md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 0, HOUR_MS))
        .await
        .unwrap();
    m.leave("r", "", false).await.unwrap();
    drop((m, _md));
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 12).await;
    s.first_seq_becomes("r", 8).await;
    drop((p, _pd));

    let s = s.restart().await;
    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Resume, 0, HOUR_MS))
        .await
        .unwrap();
    let (gaps, ds) = gaps_before_deliveries(&mut md, 7, 5).await;
    assert_gaps(&gaps, "r", 1, 7, 7);
    let seqs: Vec<u64> = ds.iter().map(seq).collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
    s.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retention_rules_of_a_namespace_created_through_admin_apply_and_persist() {
    let s = Setup::start(Vec::new()).await;
    let admin = s.admin().await;
    let rules = vec![pb::RetentionRule {
        rooms: "r*".into(),
        max_messages: 3,
        max_bytes: 0,
        max_age_ms: 0,
    }];
    let ok = admin::create_namespace(
        &admin,
        pb::AdminCreateNamespace {
            name: "/made".into(),
            open: true,
            retention: rules.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ok.namespaces[0].retention, rules);
    let (p, _pd) = s.broker.connect_ns("/made", "").await;
    publish_n(&p, "r1", 10).await;
    let mut trimmed = None;
    for _ in 0..120 {
        let r = admin::room(&admin, "/made", "r1").await.unwrap();
        if r.first_seq == 8 {
            trimmed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(trimmed.is_some(), "never trimmed to the last 3");
    drop((p, _pd, admin));

    let s = s.restart().await;
    let admin = s.admin().await;
    let info = admin::namespace(&admin, "/made").await.unwrap();
    assert_eq!(info.retention, rules, "the rules persist");
    let (p, _pd) = s.broker.connect_ns("/made", "").await;
    publish_n(&p, "r1", 2).await;
    let mut first = 0;
    for _ in 0..120 {
        first = admin::room(&admin, "/made", "r1").await.unwrap().first_seq;
        if first == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(first, 10, "still trimmed to the last 3 after a restart");
    s.broker.stop().await;
}

/// SPEC §5: "disk space of trimmed messages is reused". 64 MiB go through a
/// room that keeps 256 KiB; the data directory must not grow with what was
/// written. sled reclaims lazily, so the bounds are generous: the directory
/// ends under half of what was written, and over the second half of the run
/// it grows by less than half of what that half wrote.
#[tokio::test(start_paused = true)]
async fn the_disk_space_of_trimmed_messages_is_reused() {
    const ROUNDS: usize = 32;
    let s = Setup::start(vec![rule("big", 0, 256 * 1024, 0)]).await;
    let (p, _pd) = s.connect("").await;
    let payload = vec![b'z'; 32 * 1024];
    let round_bytes = 64 * payload.len() as u64;
    let mut sizes = Vec::new();
    for _round in 0..ROUNDS {
        for _ in 0..64 {
            p.publish("big", "e", payload.clone()).await.unwrap();
        }
        // Let retention run (its deletions commit with the next round).
        tokio::time::sleep(Duration::from_secs(3)).await;
        sizes.push(dir_size(s.broker.dir.path()));
    }
    let written = round_bytes * ROUNDS as u64;
    let r = s
        .room_when("big", "within its byte bound", |r| {
            r.stored_bytes <= 256 * 1024
        })
        .await;
    assert!(r.first_seq > 1000, "{r:?}");
    let last = sizes[ROUNDS - 1];
    assert!(
        last < written / 2,
        "the data dir holds {last} bytes after {written} written through a 256 KiB room; sizes per round: {sizes:?}"
    );
    let half = ROUNDS / 2;
    let growth = last.saturating_sub(sizes[half - 1]);
    let written_since = round_bytes * (ROUNDS - half) as u64;
    assert!(
        growth < written_since / 2,
        "the data dir grew by {growth} bytes while {written_since} went through; sizes per round: {sizes:?}"
    );
    s.broker.stop().await;
}

/// Gap notices are for purges too ("because retention or a purge deleted
/// them").
#[tokio::test(start_paused = true)]
async fn a_purge_sends_gap_notices_to_members_left_behind() {
    let s = Setup::start(Vec::new()).await;
    let (m, mut md) = s.connect("m").await;
    m.join_with(join("r", pb::StartPosition::Earliest, 2, HOUR_MS))
        .await
        .unwrap();
    let (p, _pd) = s.connect("").await;
    publish_n(&p, "r", 5).await;
    assert_eq!(seq(&next_paused(&mut md).await), 1);
    assert_eq!(seq(&next_paused(&mut md).await), 2);
    assert_eq!(m.ack("r", "", &[1]).await.unwrap(), 2);
    assert_eq!(seq(&next_paused(&mut md).await), 3);
    let admin = s.admin().await;
    let ok = admin::purge_room(&admin, NS, "r").await.unwrap();
    assert_eq!(ok.count, 5);
    let (gaps, ds) = gaps_and_deliveries(&mut md, 5, 0).await;
    assert!(ds.is_empty(), "{ds:?}");
    assert_gaps(&gaps, "r", 2, 5, 4);
    p.publish("r", "e", "after").await.unwrap();
    let d = delivery(next_push_paused(&mut md).await);
    assert_eq!(seq(&d), 6);
    s.broker.stop().await;
}
