//! Rooms on several shards: rooms are placed on purpose (names chosen by
//! `shard_of`) on different shards of a broker with two, and what the
//! protocol promises holds across them: a publish split over shards is
//! confirmed once, in room order, atomically per shard, and a retry with
//! its dedup id makes a partly refused one whole; once-per-session
//! delivery, except rules and volatile messages span shards; dead letters
//! stay on their room's shard; quotas count every shard; deleting a
//! namespace reaches every shard; a restart places the rooms again; room
//! ids stay unique; stats and room lists are merged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use roomq::broker::shard_of;
use roomq::config::{Config, NamespaceConfig};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::{Deliveries, ErrorCode};

const SHARDS: usize = 2;
const QUIET: Duration = Duration::from_millis(200);

/// The first `n` room names starting with `prefix` that live on `shard`
/// in `namespace`.
fn rooms_on(namespace: &str, prefix: &str, shard: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|r| shard_of(namespace, r, SHARDS) == shard)
        .take(n)
        .collect()
}

fn room_on(namespace: &str, prefix: &str, shard: usize) -> String {
    rooms_on(namespace, prefix, shard, 1).remove(0)
}

fn two_shards(mut config: Config) -> Config {
    config.broker.shards = SHARDS as u32;
    config
}

async fn start() -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = two_shards(test_config(&dir));
    TestBroker::start_with(config, dir).await
}

async fn start_admin() -> (TestBroker, String) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, token) = admin_config(&dir);
    let broker = TestBroker::start_with(two_shards(config), dir).await;
    (broker, token)
}

fn to_rooms(rooms: &[&str], payload: &str, dedup: Option<u8>) -> pb::Publish {
    pb::Publish {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        dedup_id: dedup.map_or_else(Bytes::new, |d| Bytes::from(vec![d; 16])),
        ..publish_to("unused", "e", payload)
    }
}

fn seqs(ok: &pb::PublishOk) -> Vec<(String, u64)> {
    ok.seqs.iter().map(|s| (s.room.clone(), s.seq)).collect()
}

async fn joined(broker: &TestBroker, client_id: &str, rooms: &[&str]) -> (Client, Deliveries) {
    let (c, d) = broker.connect(client_id).await;
    for room in rooms {
        c.join_with(join(room, pb::StartPosition::Earliest, 0, 0))
            .await
            .unwrap();
    }
    (c, d)
}

fn room_seq(d: &pb::Delivery) -> (String, u64) {
    (d.room.clone(), seq(d))
}

#[test]
fn the_rooms_the_tests_use_are_on_different_shards() {
    let a = room_on("/", "a", 0);
    let b = room_on("/", "b", 1);
    assert_ne!(shard_of("/", &a, SHARDS), shard_of("/", &b, SHARDS));
    // A dead-letter room is on its room's shard.
    assert_eq!(shard_of("/", &format!("{b}.dlq"), SHARDS), 1);
}

#[tokio::test]
async fn a_publish_split_over_shards_is_confirmed_once_in_room_order() {
    let broker = start().await;
    let a = room_on("/", "a", 0);
    let b = room_on("/", "b", 1);
    let c = room_on("/", "c", 0);
    let (p, _pd) = broker.connect("").await;
    let ok = p
        .publish_with(to_rooms(&[&b, &a, &c], "one", Some(1)))
        .await
        .unwrap();
    assert_eq!(seqs(&ok), [(b.clone(), 1), (a.clone(), 1), (c.clone(), 1)]);
    assert!(!ok.duplicate);
    assert_eq!(ok.durability, pb::Durability::Sync as i32);
    // A retry is a duplicate on every shard, with the original seqs.
    p.publish_with(to_rooms(&[&a], "other", None))
        .await
        .unwrap();
    let again = p
        .publish_with(to_rooms(&[&b, &a, &c], "one", Some(1)))
        .await
        .unwrap();
    assert_eq!(seqs(&again), seqs(&ok));
    assert!(again.duplicate);
    // Pipelined split publishes are each answered once.
    let sends: Vec<_> = (0..20u8)
        .map(|i| p.publish_with(to_rooms(&[&a, &b], "many", Some(100 + i))))
        .collect();
    for (i, r) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        let ok = r.unwrap();
        let i = i as u64;
        assert_eq!(seqs(&ok), [(a.clone(), 3 + i), (b.clone(), 2 + i)]);
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_part_refused_on_one_shard_leaves_the_others_stored_until_a_retry_makes_it_whole() {
    let (broker, token) = start_admin().await;
    let admin = broker.admin(&token).await;
    let ns = "/quota";
    admin::create_namespace(
        &admin,
        pb::AdminCreateNamespace {
            name: ns.into(),
            open: true,
            quotas: Some(pb::NamespaceQuotas {
                max_rooms: 2,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a = room_on(ns, "a", 0);
    let b = room_on(ns, "b", 1);
    let spare = room_on(ns, "spare", 0);
    let (p, _pd) = broker.connect_ns(ns, "").await;
    p.publish_with(to_rooms(&[&a], "first", None))
        .await
        .unwrap();
    p.publish_with(to_rooms(&[&spare], "x", None))
        .await
        .unwrap();
    // `b` would be a third room: its shard refuses its part, `a`'s stores.
    let e = p.publish_with(to_rooms(&[&a, &b], "split", Some(7))).await;
    assert_eq!(code(e), ErrorCode::QuotaExceeded);
    let listed = p.list_rooms().await.unwrap();
    let a_info = listed.iter().find(|r| r.name == a).unwrap();
    assert_eq!(a_info.last_seq, 2, "{listed:?}");
    assert!(listed.iter().all(|r| r.name != b), "{listed:?}");
    // Room made: the retry stores the missing part, and `a` answers with
    // its original seq.
    admin::delete_room(&admin, ns, &spare).await.unwrap();
    let ok = p
        .publish_with(to_rooms(&[&a, &b], "split", Some(7)))
        .await
        .unwrap();
    assert_eq!(seqs(&ok), [(a.clone(), 2), (b.clone(), 1)]);
    assert!(!ok.duplicate, "b was stored now");
    // The quota counted both shards' rooms exactly.
    let c = room_on(ns, "c", 1);
    let e = p.publish_with(to_rooms(&[&c], "x", None)).await;
    assert_eq!(code(e), ErrorCode::QuotaExceeded);
    let info = admin::namespace(&admin, ns).await.unwrap();
    assert_eq!(info.rooms, 2);
    broker.stop().await;
}

#[tokio::test]
async fn once_per_session_and_except_rules_hold_across_shards() {
    let broker = start().await;
    let a = room_on("/", "a", 0);
    let b = room_on("/", "b", 1);
    let (_both, mut bothd) = joined(&broker, "both", &[&a, &b]).await;
    let (_aonly, mut ad) = joined(&broker, "aonly", &[&a]).await;
    let (_bonly, mut bd) = joined(&broker, "bonly", &[&b]).await;
    let (p, _pd) = broker.connect("").await;

    p.publish_with(to_rooms(&[&a, &b], "ab", None))
        .await
        .unwrap();
    assert_eq!(room_seq(&next(&mut bothd).await), (a.clone(), 1));
    assert_quiet(&mut bothd, QUIET).await;
    assert_eq!(room_seq(&next(&mut ad).await), (a.clone(), 1));
    assert_eq!(room_seq(&next(&mut bd).await), (b.clone(), 1));

    p.publish_with(to_rooms(&[&b, &a], "ba", None))
        .await
        .unwrap();
    assert_eq!(room_seq(&next(&mut bothd).await), (b.clone(), 2));
    assert_quiet(&mut bothd, QUIET).await;
    next(&mut ad).await;
    next(&mut bd).await;

    // Sessions in `b` (on the other shard) are left out of `a`.
    p.publish_with(pb::Publish {
        except_rooms: vec![b.clone()],
        ..publish_to(&a, "e", "not for b")
    })
    .await
    .unwrap();
    let d = next(&mut ad).await;
    assert_eq!(payload(&d), b"not for b");
    assert_quiet(&mut bothd, QUIET).await;

    // A volatile message, too, reaches a session once.
    p.publish_with(pb::Publish {
        volatile: true,
        ..to_rooms(&[&b, &a], "live", None)
    })
    .await
    .unwrap();
    let d = next(&mut bothd).await;
    assert_eq!(
        (d.room.as_str(), payload(&d)),
        (b.as_str(), b"live".to_vec())
    );
    assert_quiet(&mut bothd, QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_memberships_quota_counts_every_shard() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = two_shards(test_config(&dir));
    config.limits.max_memberships_per_session = 1;
    let broker = TestBroker::start_with(config, dir).await;
    let a = room_on("/", "a", 0);
    let b = room_on("/", "b", 1);
    let (c, _d) = broker.connect("").await;
    c.join_with(join(&a, pb::StartPosition::New, 0, 0))
        .await
        .unwrap();
    let e = c.join_with(join(&b, pb::StartPosition::New, 0, 0)).await;
    assert_eq!(code(e), ErrorCode::QuotaExceeded);
    c.leave(&a, "", false).await.unwrap();
    c.join_with(join(&b, pb::StartPosition::New, 0, 0))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_dead_letter_lands_on_its_rooms_shard() {
    let broker = start().await;
    let jobs = room_on("/", "jobs", 1);
    let dlq = format!("{jobs}.dlq");
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(pb::Join {
        max_deliveries: Some(1),
        ..join(&jobs, pb::StartPosition::Earliest, 0, 0)
    })
    .await
    .unwrap();
    let (r, mut rd) = joined(&broker, "reader", &[&dlq]).await;
    let (p, _pd) = broker.connect("").await;
    p.publish(&jobs, "e", "doomed").await.unwrap();
    let d = next(&mut wd).await;
    w.nack(&jobs, "", &[seq(&d)], Duration::ZERO).await.unwrap();
    let dead = next(&mut rd).await;
    assert_eq!(
        (dead.room.as_str(), payload(&dead)),
        (dlq.as_str(), b"doomed".to_vec())
    );
    r.ack(&dlq, "", &[seq(&dead)]).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_namespace_reaches_every_shard() {
    let (broker, token) = start_admin().await;
    let admin = broker.admin(&token).await;
    let ns = "/gone";
    admin::create_namespace(
        &admin,
        pb::AdminCreateNamespace {
            name: ns.into(),
            open: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut rooms = rooms_on(ns, "r", 0, 2);
    rooms.extend(rooms_on(ns, "r", 1, 2));
    let (p, mut pd) = broker.connect_ns(ns, "").await;
    for r in &rooms {
        p.publish(r, "e", "x").await.unwrap();
    }
    assert_eq!(admin::namespace(&admin, ns).await.unwrap().rooms, 4);
    let ok = admin::delete_namespace(&admin, ns).await.unwrap();
    assert_eq!(ok.count, 4);
    // The session there is closed, the namespace and its rooms are gone.
    let pushes = pushes_until_closed(&mut pd).await;
    assert!(!pushes.is_empty());
    assert!(admin::namespace(&admin, ns).await.is_none());
    assert!(admin::rooms(&admin, ns).await.is_empty());
    // Made again, it starts empty on every shard.
    admin::create_namespace(
        &admin,
        pb::AdminCreateNamespace {
            name: ns.into(),
            open: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (p, _pd) = broker.connect_ns(ns, "").await;
    assert!(p.list_rooms().await.unwrap().is_empty());
    for r in &rooms {
        assert_eq!(p.publish(r, "e", "y").await.unwrap(), 1);
    }
    let broker = broker.restart().await;
    let admin = broker.admin(&token).await;
    assert_eq!(admin::namespace(&admin, ns).await.unwrap().rooms, 4);
    broker.stop().await;
}

#[tokio::test]
async fn a_restart_finds_every_shards_rooms_members_and_dedup_ids() {
    let broker = start().await;
    let a = room_on("/", "a", 0);
    let b = room_on("/", "b", 1);
    let (m, mut md) = joined(&broker, "member", &[&a, &b]).await;
    let (p, _pd) = broker.connect("").await;
    for i in 0..3 {
        p.publish(&a, "e", format!("a{i}")).await.unwrap();
        p.publish(&b, "e", format!("b{i}")).await.unwrap();
    }
    let split = p
        .publish_with(to_rooms(&[&a, &b], "ab", Some(9)))
        .await
        .unwrap();
    for _ in 0..7 {
        next(&mut md).await;
    }
    // (The split publish came once, in `a`.)
    m.ack_up_to(&a, "", 4).await.unwrap();
    m.ack_up_to(&b, "", 3).await.unwrap();
    drop((m, md, p, _pd));

    let broker = broker.restart().await;
    let (p, _pd) = broker.connect("").await;
    let again = p
        .publish_with(to_rooms(&[&a, &b], "ab", Some(9)))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(seqs(&again), seqs(&split));
    assert_eq!(p.publish(&b, "e", "later").await.unwrap(), 5);
    // The durable member resumes on both shards where it acked.
    let (m, mut md) = broker.connect("member").await;
    for r in [&a, &b] {
        m.join_with(join(r, pb::StartPosition::Resume, 0, 0))
            .await
            .unwrap();
    }
    assert_eq!(room_seq(&next(&mut md).await), (b.clone(), 5));
    assert_quiet(&mut md, QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn rooms_made_at_once_on_both_shards_keep_their_own_messages_across_a_restart() {
    let broker = start().await;
    let mut rooms = rooms_on("/", "id", 0, 10);
    rooms.extend(rooms_on("/", "id", 1, 10));
    let (p, _pd) = broker.connect("").await;
    // Created concurrently: ids come from one allocator.
    let sends: Vec<_> = rooms.iter().map(|r| p.publish(r, "e", r.clone())).collect();
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.unwrap(), 1);
    }
    let broker = broker.restart().await;
    let (c, mut d) = broker.connect("").await;
    for r in &rooms {
        c.join_with(join(r, pb::StartPosition::Earliest, 0, 0))
            .await
            .unwrap();
        let m = next(&mut d).await;
        assert_eq!(
            (m.room.as_str(), payload(&m)),
            (r.as_str(), r.as_bytes().to_vec())
        );
    }
    assert_quiet(&mut d, QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn stats_and_room_lists_merge_every_shard() {
    let (broker, token) = start_admin().await;
    let admin = broker.admin(&token).await;
    let mut rooms = rooms_on("/", "s", 0, 3);
    rooms.extend(rooms_on("/", "s", 1, 3));
    let (p, _pd) = broker.connect("").await;
    let (_m, _md) = joined(&broker, "m", &[&rooms[0], &rooms[5]]).await;
    for (i, r) in rooms.iter().enumerate() {
        for _ in 0..=i {
            p.publish(r, "e", "x").await.unwrap();
        }
    }
    let mut names: Vec<String> = p
        .list_rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut want = rooms.clone();
    want.sort();
    assert_eq!(names, want);
    names = admin::rooms(&admin, "/")
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, want);

    let op = pb::admin::Op::Stats(pb::AdminStats {
        max_rooms: 2,
        order: pb::StatsOrder::Backlog as i32,
    });
    let s = admin.admin(op).await.unwrap().stats.unwrap();
    assert_eq!(s.rooms_total, 6);
    let root = s.namespaces.iter().find(|n| n.name == "/").unwrap();
    // Two sessions in `/` (the publisher and the member), counted once.
    assert_eq!((root.sessions, root.rooms, root.members), (2, 6, 2));
    assert_eq!(s.connections_tcp, 3);
    // The largest backlogs of all shards: the member's rooms.
    let top: Vec<(&str, u64)> = s
        .rooms
        .iter()
        .map(|r| (r.name.as_str(), r.backlog))
        .collect();
    assert_eq!(top, [(rooms[5].as_str(), 6), (rooms[0].as_str(), 1)]);
    broker.stop().await;
}

#[test]
fn a_config_with_too_many_shards_is_refused() {
    let mut config = Config {
        namespaces: [("/".to_string(), NamespaceConfig::open_default())].into(),
        ..Config::default()
    };
    config.broker.shards = 1025;
    assert!(config.validate().is_err());
    config.broker.shards = 1;
    assert!(config.validate().is_ok());
    config.broker.shards = 0;
    assert!(config.broker.shard_count() >= 1);
}
