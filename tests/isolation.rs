//! G5: a session authenticated to one namespace can never read, write, list
//! or ack anything of another — whatever names it crafts — and one tenant's
//! flood does not cost another its quota.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq::config::Quotas;
use roomq_client::proto as pb;
use roomq_client::{ErrorCode, Push};

/// Tenants `/a`, `/ab` and `/b`, each closed with its own token, and an
/// admin token.
struct Tenants {
    broker: TestBroker,
    a: String,
    ab: String,
    b: String,
    admin: String,
}

async fn tenants_with(a_quotas: Quotas) -> Tenants {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (mut config, admin) = admin_config(&dir);
    let (a, a_entry) = new_token("a");
    let (ab, ab_entry) = new_token("ab");
    let (b, b_entry) = new_token("b");
    let mut a_ns = closed_namespace(vec![a_entry]);
    a_ns.quotas = a_quotas;
    config.namespaces.insert("/a".into(), a_ns);
    config
        .namespaces
        .insert("/ab".into(), closed_namespace(vec![ab_entry]));
    config
        .namespaces
        .insert("/b".into(), closed_namespace(vec![b_entry]));
    Tenants {
        broker: TestBroker::start_with(config, dir).await,
        a,
        ab,
        b,
        admin,
    }
}

async fn tenants() -> Tenants {
    tenants_with(Quotas::default()).await
}

fn names(rooms: &[pb::RoomInfo]) -> Vec<&str> {
    rooms.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn a_token_opens_only_its_own_namespace() {
    let t = tenants().await;
    let b = &t.broker;
    for (ns, token) in [
        ("/b", &t.a),
        ("/ab", &t.a),
        ("/admin", &t.a),
        // Open, but a token given must be one of its own.
        ("/", &t.a),
        ("/a", &t.b),
        ("/a", &t.ab),
    ] {
        let e = b.refused_connect(ns, token).await;
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{ns}: {e}");
    }
    // Crafted namespace names are not other tenants.
    for (ns, want) in [
        ("/a/../b", ErrorCode::NotFound),
        ("//b", ErrorCode::NotFound),
        ("/B", ErrorCode::NotFound),
        ("/a/b", ErrorCode::NotFound),
        ("/b/", ErrorCode::InvalidName),
        ("b", ErrorCode::InvalidName),
        ("../b", ErrorCode::InvalidName),
        ("/a\0/b", ErrorCode::InvalidName),
        ("/b\n", ErrorCode::InvalidName),
    ] {
        let e = b.refused_connect(ns, &t.a).await;
        assert_eq!(e.code(), Some(want), "{ns:?}: {e}");
    }
    let (a, _ad) = b.connect_token("/a", &t.a, "").await;
    a.ping().await.unwrap();
    t.broker.stop().await;
}

#[tokio::test]
async fn nothing_a_session_of_a_sends_reaches_b() {
    let t = tenants().await;
    let admin = t.broker.admin(&t.admin).await;

    // B: a member "bob" of general (seq 2 left unacked) and of secret.
    let (bob, mut bd) = t.broker.connect_token("/b", &t.b, "bob").await;
    bob.join("general").await.unwrap();
    bob.join("secret").await.unwrap();
    bob.publish("general", "e", "b:1").await.unwrap();
    bob.publish("general", "e", "b:2").await.unwrap();
    bob.publish("secret", "e", "b:secret").await.unwrap();
    for _ in 0..3 {
        next(&mut bd).await;
    }
    assert_eq!(bob.ack("general", "", &[1]).await.unwrap(), 2);
    assert_eq!(bob.ack("secret", "", &[1]).await.unwrap(), 2);

    // A: the same client id, and every trick it can think of.
    let (a, mut ad) = t.broker.connect_token("/a", &t.a, "bob").await;
    let crafted = [
        "/b/general",
        "../b/general",
        "b/general",
        "/b",
        "b",
        "..",
        "/",
        "general",
    ];
    for room in crafted {
        let ok = a
            .join_with(join(room, pb::StartPosition::Earliest, 0, 0))
            .await;
        let ok = ok.unwrap_or_else(|e| panic!("join {room:?}: {e}"));
        assert_eq!(
            (ok.last_seq, ok.next_seq),
            (0, 1),
            "{room:?} is a new room of A"
        );
        let seq = a.publish(room, "e", format!("a:{room}")).await.unwrap();
        assert_eq!(seq, 1, "{room:?} is a new room of A");
    }
    for _ in crafted {
        let d = next(&mut ad).await;
        assert_eq!(
            payload(&d),
            format!("a:{}", d.room).into_bytes(),
            "A gets only its own messages"
        );
        assert_eq!(seq(&d), 1);
    }
    for bad in ["b\0general", "general\0", "\u{7f}"] {
        assert_eq!(code(a.publish(bad, "e", "x").await), ErrorCode::InvalidName);
        assert_eq!(code(a.join(bad).await), ErrorCode::InvalidName);
        assert_eq!(code(a.ack(bad, "", &[1]).await), ErrorCode::InvalidName);
        assert_eq!(code(a.leave(bad, "", true).await), ErrorCode::InvalidName);
    }
    // B's memberships are not A's to ack, nack, extend or leave.
    for (room, sub) in [("general", "bob"), ("secret", ""), ("secret", "bob")] {
        assert_eq!(code(a.ack(room, sub, &[2]).await), ErrorCode::NotJoined);
        assert_eq!(code(a.ack_up_to(room, sub, 99).await), ErrorCode::NotJoined);
        assert_eq!(
            code(a.nack(room, sub, &[2], Duration::ZERO).await),
            ErrorCode::NotJoined
        );
        assert_eq!(
            code(a.in_progress(room, sub, &[2]).await),
            ErrorCode::NotJoined
        );
        assert_eq!(code(a.leave(room, sub, true).await), ErrorCode::NotJoined);
    }
    // A's own "general" never held B's seq 2.
    assert_eq!(
        code(a.ack("general", "", &[2]).await),
        ErrorCode::UnknownSeq
    );
    assert_eq!(
        code(a.nack("general", "", &[2], Duration::ZERO).await),
        ErrorCode::UnknownSeq
    );
    let list = a
        .admin(admin::Op::ListRooms(pb::AdminListRooms {
            namespace: "/b".into(),
        }))
        .await;
    assert_eq!(code(list), ErrorCode::PermissionDenied);

    // A's list holds only A's rooms, with A's figures.
    let rooms = a.list_rooms().await.unwrap();
    let mut expected = crafted.to_vec();
    expected.sort_unstable();
    assert_eq!(names(&rooms), expected);
    for r in &rooms {
        assert_eq!(
            (r.last_seq, r.members, r.connected_members),
            (1, 1, 1),
            "{r:?}"
        );
    }
    assert_quiet(&mut ad, Duration::from_millis(200)).await;

    // B saw none of it: its next push is its own next message.
    assert_eq!(bob.publish("general", "e", "b:3").await.unwrap(), 3);
    match tokio::time::timeout(WAIT, bd.next_push()).await.unwrap() {
        Some(Push::Delivery(d)) => {
            assert_eq!(
                (d.room.as_str(), seq(&d), payload(&d)),
                ("general", 3, b"b:3".to_vec())
            );
        }
        other => panic!("B's next push: {other:?}"),
    }
    let rooms = bob.list_rooms().await.unwrap();
    assert_eq!(names(&rooms), ["general", "secret"]);
    assert_eq!(rooms.iter().map(|r| r.last_seq).collect::<Vec<_>>(), [3, 1]);
    // Seq 2 is still B's to ack: A's attempts did not touch it.
    assert_eq!(bob.ack("general", "", &[2, 3]).await.unwrap(), 4);

    // The admin view agrees: B's rooms have only B's member.
    let b_rooms = admin::rooms(&admin, "/b").await;
    for r in &b_rooms {
        assert_eq!(r.namespace, "/b");
        assert_eq!(r.members.len(), 1, "{r:?}");
        assert_eq!(&r.members[0].session_id[..], bob.session_id().as_bytes());
    }
    let a_rooms = admin::rooms(&admin, "/a").await;
    assert!(a_rooms
        .iter()
        .all(|r| r.namespace == "/a" && r.last_seq == 1));
    assert!(!a_rooms.iter().any(|r| r.name == "secret"));
    t.broker.stop().await;
}

#[tokio::test]
async fn prefix_namespaces_share_nothing() {
    let t = tenants().await;
    let (a, mut ad) = t.broker.connect_token("/a", &t.a, "c").await;
    a.join("x").await.unwrap();
    let dedup = bytes::Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let publish = |payload: &'static str| pb::Publish {
        rooms: vec!["x".into()],
        event: "e".into(),
        payload: payload.into(),
        dedup_id: dedup.clone(),
        ..Default::default()
    };
    a.publish("x", "e", "a1").await.unwrap();
    a.publish("x", "e", "a2").await.unwrap();
    let first = a.publish_with(publish("a3")).await.unwrap();
    assert_eq!((first.seqs[0].seq, first.duplicate), (3, false));

    // Same client id, same room, same dedup id, in /ab.
    let (ab, mut abd) = t.broker.connect_token("/ab", &t.ab, "c").await;
    assert!(!ab.resumed(), "A's durable state is not AB's");
    let ok = ab
        .join_with(join("x", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    assert_eq!((ok.last_seq, ok.next_seq), (0, 1));
    let own = ab.publish_with(publish("ab1")).await.unwrap();
    assert_eq!(
        (own.seqs[0].seq, own.duplicate),
        (1, false),
        "not A's dedup record"
    );
    let d = next(&mut abd).await;
    assert_eq!((seq(&d), payload(&d)), (1, b"ab1".to_vec()));
    assert_quiet(&mut abd, Duration::from_millis(200)).await;

    // A's retry is still A's duplicate.
    let retry = a.publish_with(publish("a3")).await.unwrap();
    assert_eq!((retry.seqs[0].seq, retry.duplicate), (3, true));
    for i in 1..=3 {
        assert_eq!(seq(&next(&mut ad).await), i);
    }
    let a_rooms = a.list_rooms().await.unwrap();
    let ab_rooms = ab.list_rooms().await.unwrap();
    assert_eq!((a_rooms.len(), a_rooms[0].last_seq), (1, 3));
    assert_eq!((ab_rooms.len(), ab_rooms[0].last_seq), (1, 1));
    t.broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_tenants_flood_costs_another_nothing() {
    let t = tenants_with(Quotas {
        publish_rate: 5,
        publish_burst: 5,
        max_connections: 1,
        ..Quotas::default()
    })
    .await;
    let (a, _ad) = t.broker.connect_token("/a", &t.a, "").await;
    // A's connection quota is A's alone.
    let e = t.broker.refused_connect("/a", &t.a).await;
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    let (b, _bd) = t.broker.connect_token("/b", &t.b, "").await;
    let (b_sub, mut bsd) = t.broker.connect_token("/b", &t.b, "sub").await;
    let (b3, _b3d) = t.broker.connect_token("/b", &t.b, "").await;
    b3.ping().await.unwrap();
    b_sub.join("feed").await.unwrap();

    let start = tokio::time::Instant::now();
    let flood = async {
        let publishes = (0..100).map(|i| {
            a.publish_with(pb::Publish {
                rooms: vec!["feed".into()],
                event: "e".into(),
                payload: format!("a{i}").into(),
                ..Default::default()
            })
        });
        futures::future::join_all(publishes).await
    };
    let steady = async {
        let mut seqs = Vec::new();
        for i in 1..=50 {
            let ok = b
                .publish_with(pb::Publish {
                    rooms: vec!["feed".into()],
                    event: "e".into(),
                    payload: format!("b{i}").into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("B's publish {i}: {e}"));
            seqs.push(ok.seqs[0].seq);
        }
        seqs
    };
    let (flooded, b_seqs) = tokio::join!(flood, steady);
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "the rate had no time to refill: {:?}",
        start.elapsed()
    );
    let accepted = flooded.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 5, "A's burst");
    for r in flooded.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some(ErrorCode::QuotaExceeded), "{r}");
    }
    assert_eq!(b_seqs, (1..=50).collect::<Vec<u64>>());
    for i in 1..=50u64 {
        let d = next_paused(&mut bsd).await;
        assert_eq!((seq(&d), payload(&d)), (i, format!("b{i}").into_bytes()));
    }
    t.broker.stop().await;
}
