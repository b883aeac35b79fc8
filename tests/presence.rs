//! Presence: `Members` lists who is joined to a room now, and a membership
//! that joined with `presence` is told when others join or leave. Presence
//! events are not stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::{Deliveries, ErrorCode, Push};

const QUIET: Duration = Duration::from_millis(200);

async fn connect_named(broker: &TestBroker, client_id: &str, name: &str) -> (Client, Deliveries) {
    broker
        .connect_opts(broker.options().client_id(client_id).client_name(name))
        .await
}

fn presence_join(room: &str, subscription: &str) -> pb::Join {
    pb::Join {
        room: room.to_string(),
        subscription: subscription.to_string(),
        presence: true,
        ..Default::default()
    }
}

/// The next push, which must be a presence event.
async fn next_presence(d: &mut Deliveries) -> pb::PresenceEvent {
    match next_push(d).await {
        Push::Presence(p) => p,
        other => panic!("expected a presence event, got {other:?}"),
    }
}

fn kind(e: &pb::PresenceEvent) -> pb::presence_event::Kind {
    pb::presence_event::Kind::try_from(e.kind).expect("a known kind")
}

fn session_of(e: &pb::PresenceEvent) -> Vec<u8> {
    e.member
        .as_ref()
        .map_or_else(Vec::new, |m| m.session_id.to_vec())
}

#[tokio::test]
async fn members_lists_the_joined_sessions_of_a_room() {
    let broker = TestBroker::start().await;
    let (alice, _ad) = connect_named(&broker, "alice", "Alice").await;
    alice.join("r").await.unwrap();
    let (anon, _nd) = connect_named(&broker, "", "anon").await;
    anon.join_with(pb::Join {
        room: "r".into(),
        mode: pb::MemberMode::Ephemeral as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let (worker, _wd) = connect_named(&broker, "w1", "Worker").await;
    worker
        .join_with(pb::Join {
            room: "r".into(),
            group: "workers".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Not listed: a member that left, one whose connection is gone, and a
    // session joined to another room only.
    let (bob, _bd) = broker.connect("bob").await;
    bob.join("r").await.unwrap();
    bob.leave("r", "", false).await.unwrap();
    let (carol, carold) = broker.connect("carol").await;
    carol.join("r").await.unwrap();
    drop((carol, carold));
    let (elsewhere, _ed) = broker.connect("elsewhere").await;
    elsewhere.join("other").await.unwrap();

    let (asker, _askd) = broker.connect("").await;
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = members(&asker, "r").await.unwrap().members;
        if listed.len() == 3 {
            break;
        }
        // Carol's disconnect is noticed asynchronously.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ok = members(&asker, "r").await.unwrap();
    assert!(!ok.truncated);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let find = |c: &Client| {
        listed
            .iter()
            .find(|m| m.session_id[..] == c.session_id().as_bytes()[..])
            .unwrap_or_else(|| panic!("{} not listed: {listed:?}", c.session_id()))
            .clone()
    };
    let a = find(&alice);
    assert_eq!(
        (
            a.client_id.as_str(),
            a.client_name.as_str(),
            a.subscription.as_str(),
            a.durable,
            a.group.as_str()
        ),
        ("alice", "Alice", "alice", true, "")
    );
    let n = find(&anon);
    assert_eq!(
        (
            n.client_id.as_str(),
            n.client_name.as_str(),
            n.subscription.as_str(),
            n.durable,
            n.group.as_str()
        ),
        ("", "anon", "", false, "")
    );
    let w = find(&worker);
    assert_eq!(
        (
            w.client_id.as_str(),
            w.client_name.as_str(),
            w.durable,
            w.group.as_str()
        ),
        ("w1", "Worker", true, "workers")
    );
    broker.stop().await;
}

#[tokio::test]
async fn presence_members_are_told_when_others_join_and_leave() {
    let broker = TestBroker::start().await;
    let (watcher, mut wd) = broker.connect("watcher").await;
    watcher
        .join_with(presence_join("r", "watch"))
        .await
        .unwrap();
    // Not about itself.
    assert_quiet(&mut wd, QUIET).await;

    // Bob joins without presence and stays.
    let (bob, mut bd) = connect_named(&broker, "bob", "Bob").await;
    bob.join("r").await.unwrap();
    let e = next_presence(&mut wd).await;
    assert_eq!(
        (e.room.as_str(), e.subscription.as_str(), kind(&e)),
        ("r", "watch", pb::presence_event::Kind::Joined)
    );
    let m = e.member.as_ref().unwrap();
    assert_eq!(&m.session_id[..], bob.session_id().as_bytes());
    assert_eq!(
        (
            m.client_id.as_str(),
            m.client_name.as_str(),
            m.subscription.as_str(),
            m.durable
        ),
        ("bob", "Bob", "bob", true)
    );

    // An ephemeral session joins, then its connection drops.
    let (eph, ephd) = broker.connect("").await;
    eph.join_with(pb::Join {
        room: "r".into(),
        mode: pb::MemberMode::Ephemeral as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let eph_id = eph.session_id().as_bytes().to_vec();
    let e = next_presence(&mut wd).await;
    assert_eq!(
        (kind(&e), session_of(&e)),
        (pb::presence_event::Kind::Joined, eph_id.clone())
    );
    assert!(!e.member.as_ref().unwrap().durable);
    drop((eph, ephd));
    let e = next_presence(&mut wd).await;
    assert_eq!(
        (kind(&e), session_of(&e)),
        (pb::presence_event::Kind::Left, eph_id)
    );
    // Bob, without presence, was told nothing.
    assert_quiet(&mut bd, QUIET).await;

    // Events in another room are not this membership's business.
    let (other, _od) = broker.connect("other").await;
    other.join("elsewhere").await.unwrap();
    assert_quiet(&mut wd, QUIET).await;

    bob.leave("r", "", false).await.unwrap();
    let e = next_presence(&mut wd).await;
    assert_eq!(
        (kind(&e), session_of(&e)),
        (
            pb::presence_event::Kind::Left,
            bob.session_id().as_bytes().to_vec()
        )
    );
    assert_quiet(&mut wd, QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn presence_events_are_not_stored() {
    let broker = TestBroker::start().await;
    let (watcher, mut wd) = broker.connect("watcher").await;
    watcher
        .join_with(presence_join("r", "watch"))
        .await
        .unwrap();
    // Comings and goings before the late watcher joins.
    for name in ["a", "b"] {
        let (c, _cd) = broker.connect(name).await;
        c.join("r").await.unwrap();
        c.leave("r", "", false).await.unwrap();
        let joined = next_presence(&mut wd).await;
        let left = next_presence(&mut wd).await;
        assert_eq!(
            (kind(&joined), kind(&left)),
            (
                pb::presence_event::Kind::Joined,
                pb::presence_event::Kind::Left
            )
        );
    }

    let (late, mut ld) = broker.connect("late").await;
    late.join_with(presence_join("r", "")).await.unwrap();
    // The first watcher is told of the late one; the late one of nothing old.
    let e = next_presence(&mut wd).await;
    assert_eq!(session_of(&e), late.session_id().as_bytes().to_vec());
    assert_quiet(&mut ld, QUIET).await;

    // Its first event is the next join. Its subscription is the one it sent.
    let (next_one, _nd) = broker.connect("next").await;
    next_one.join("r").await.unwrap();
    let e = next_presence(&mut ld).await;
    assert_eq!(
        (kind(&e), session_of(&e), e.subscription.as_str()),
        (
            pb::presence_event::Kind::Joined,
            next_one.session_id().as_bytes().to_vec(),
            ""
        )
    );
    let e = next_presence(&mut wd).await;
    assert_eq!(session_of(&e), next_one.session_id().as_bytes().to_vec());

    // Across a restart nothing is replayed either.
    drop((watcher, wd, late, ld, next_one, _nd));
    let broker = broker.restart().await;
    let (watcher, mut wd) = broker.connect("watcher").await;
    watcher
        .join_with(presence_join("r", "watch"))
        .await
        .unwrap();
    assert_quiet(&mut wd, QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn members_needs_subscribe_permission_for_the_room() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let (token, entry) = new_token_for("reader", &["*"], &["public*"]);
    config
        .namespaces
        .insert("/p".into(), closed_namespace(vec![entry]));
    let broker = TestBroker::start_with(config, dir).await;
    let (c, _cd) = broker.connect_token("/p", &token, "reader").await;
    c.join("public-1").await.unwrap();
    // Someone publishes to the secret room, so it exists.
    c.publish("secret", "e", "x").await.unwrap();

    let ok = members(&c, "public-1").await.unwrap();
    assert_eq!(ok.members.len(), 1);
    assert_eq!(
        code(members(&c, "secret").await),
        ErrorCode::PermissionDenied
    );
    c.ping().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_group_consumer_is_announced_with_its_group() {
    let broker = TestBroker::start().await;
    let (watcher, mut wd) = broker.connect("watcher").await;
    watcher
        .join_with(presence_join("r", "watch"))
        .await
        .unwrap();
    let (c, _cd) = broker.connect("w1").await;
    c.join_with(pb::Join {
        room: "r".into(),
        group: "workers".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = next_presence(&mut wd).await;
    let m = e.member.as_ref().unwrap();
    assert_eq!(kind(&e), pb::presence_event::Kind::Joined);
    assert_eq!(
        (&m.session_id[..], m.group.as_str(), m.durable),
        (&c.session_id().as_bytes()[..], "workers", true)
    );
    c.leave("r", "", false).await.unwrap();
    let e = next_presence(&mut wd).await;
    assert_eq!(kind(&e), pb::presence_event::Kind::Left);
    assert_eq!(e.member.as_ref().unwrap().group, "workers");
    broker.stop().await;
}

/// A session whose connection drops is named in the `Left` event (its
/// client id and name), as in its `Joined` event.
#[tokio::test]
async fn a_dropped_connection_is_named_in_its_left_event() {
    let broker = TestBroker::start().await;
    let (watcher, mut wd) = broker.connect("watcher").await;
    watcher
        .join_with(pb::Join {
            room: "r".into(),
            presence: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let (carol, cd) = connect_named(&broker, "carol", "Carol").await;
    carol.join("r").await.unwrap();
    let joined = next_presence(&mut wd).await;
    assert_eq!(kind(&joined), pb::presence_event::Kind::Joined);
    drop((carol, cd));
    let left = next_presence(&mut wd).await;
    assert_eq!(kind(&left), pb::presence_event::Kind::Left);
    let m = left.member.as_ref().unwrap();
    assert_eq!(
        (m.client_id.as_str(), m.client_name.as_str()),
        ("carol", "Carol")
    );
    broker.stop().await;
}

/// A takeover of a durable membership: the listeners hear the previous
/// session leave, then the new one join; the session that lost the
/// membership hears no presence event about it, only its
/// `MEMBERSHIP_TAKEN_OVER` push.
#[tokio::test]
async fn a_takeover_is_heard_as_the_old_session_leaving_then_the_new_one_joining() {
    let broker = TestBroker::start().await;
    let (listener, mut ld) = broker.connect("listener").await;
    listener.join_with(presence_join("r", "")).await.unwrap();
    let (old, mut od) = connect_named(&broker, "m", "old").await;
    old.join_with(presence_join("r", "")).await.unwrap();
    let e = next_presence(&mut ld).await;
    assert_eq!(kind(&e), pb::presence_event::Kind::Joined);
    assert_eq!(session_of(&e), old.session_id().as_bytes().to_vec());

    let (new, _nd) = connect_named(&broker, "m", "new").await;
    new.join_with(presence_join("r", "")).await.unwrap();
    let left = next_presence(&mut ld).await;
    assert_eq!(
        (kind(&left), session_of(&left)),
        (
            pb::presence_event::Kind::Left,
            old.session_id().as_bytes().to_vec()
        )
    );
    let joined = next_presence(&mut ld).await;
    assert_eq!(
        (kind(&joined), session_of(&joined)),
        (
            pb::presence_event::Kind::Joined,
            new.session_id().as_bytes().to_vec()
        )
    );
    // The old session: the listener's join was before its own, so its
    // first push is the takeover itself.
    match next_push(&mut od).await {
        Push::Error(e) => assert_eq!(e.code, ErrorCode::MembershipTakenOver as u32),
        other => panic!("expected the takeover push, got {other:?}"),
    }
    assert_quiet(&mut ld, QUIET).await;
    broker.stop().await;
}
