//! The `/admin` namespace: who may use it, and what each operation does to
//! tenants, tokens, rooms and sessions — also across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use roomq::tenancy::middleware::{ConnectCtx, Middleware, Verdict};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::{ErrorCode, Push};
use tokio::sync::{Notify, Semaphore};

/// A broker with an admin token and a closed `/t` holding the config token
/// `cfg`.
struct Setup {
    broker: TestBroker,
    admin_token: String,
    cfg: String,
}

async fn setup() -> Setup {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (mut config, admin_token) = admin_config(&dir);
    let (cfg, entry) = new_token("cfg");
    config
        .namespaces
        .insert("/t".into(), closed_namespace(vec![entry]));
    Setup {
        broker: TestBroker::start_with(config, dir).await,
        admin_token,
        cfg,
    }
}

impl Setup {
    async fn admin(&self) -> Client {
        self.broker.admin(&self.admin_token).await
    }
    async fn tenant(&self, client_id: &str) -> (Client, roomq_client::Deliveries) {
        self.broker.connect_token("/t", &self.cfg, client_id).await
    }
    async fn restart(self) -> Setup {
        Setup {
            broker: self.broker.restart().await,
            ..self
        }
    }
}

fn create(name: &str, open: bool) -> pb::AdminCreateNamespace {
    pb::AdminCreateNamespace {
        name: name.to_string(),
        open,
        ..Default::default()
    }
}

async fn join_earliest(c: &Client, room: &str) -> pb::JoinOk {
    c.join_with(join(room, pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_admin_namespace_takes_only_admin_tokens() {
    let s = setup().await;
    let b = &s.broker;
    let (random, _) = new_token("random");
    for token in ["", s.cfg.as_str(), random.as_str()] {
        let e = b.refused_connect("/admin", token).await;
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{token:?}: {e}");
    }
    // Nor is an admin token a tenant's token.
    let e = b.refused_connect("/t", &s.admin_token).await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");

    let admin = s.admin().await;
    let names: Vec<String> = admin::namespaces(&admin)
        .await
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(names.contains(&"/t".to_string()) && names.contains(&"/".to_string()));
    assert!(!names.contains(&"/admin".to_string()), "{names:?}");
    s.broker.stop().await;
}

#[tokio::test]
async fn admin_sessions_only_administer_and_tenants_cannot_administer() {
    let s = setup().await;
    let admin = s.admin().await;
    assert_eq!(code(admin.join("r").await), ErrorCode::PermissionDenied);
    assert_eq!(
        code(admin.publish("r", "e", "x").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(code(admin.list_rooms().await), ErrorCode::PermissionDenied);
    assert_eq!(
        code(admin.ack("r", "", &[1]).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(admin.leave("r", "", false).await),
        ErrorCode::PermissionDenied
    );
    // The admin session is still fine.
    admin.ping().await.unwrap();

    let (t, _td) = s.tenant("").await;
    let (root, _rd) = s.broker.connect("").await;
    let (lookalike, _ld) = s.broker.connect_ns("/administration", "").await;
    for c in [&t, &root, &lookalike] {
        let list = c
            .admin(admin::Op::ListNamespaces(pb::AdminListNamespaces {}))
            .await;
        assert_eq!(code(list), ErrorCode::PermissionDenied);
        let kick = admin::kick(c, t.session_id().as_bytes()).await;
        assert_eq!(code(kick), ErrorCode::PermissionDenied);
        let purge = admin::delete_namespace(c, "/t").await;
        assert_eq!(code(purge), ErrorCode::PermissionDenied);
        c.ping().await.unwrap();
    }
    // None of it did anything.
    assert!(admin::rooms(&admin, "").await.is_empty());
    assert!(admin::namespace(&admin, "/t").await.is_some());
    t.ping().await.unwrap();
    s.broker.stop().await;
}

#[tokio::test]
async fn a_created_namespace_and_token_work_and_persist_but_the_token_is_not_stored() {
    let s = setup().await;
    let admin = s.admin().await;
    let ok = admin::create_namespace(&admin, create("/new", false))
        .await
        .unwrap();
    let info = &ok.namespaces[0];
    assert_eq!(
        (info.name.as_str(), info.open, info.from_config),
        ("/new", false, false)
    );
    assert!(info.tokens.is_empty());
    for (name, want) in [
        ("/new", ErrorCode::InvalidRequest),
        ("/t", ErrorCode::InvalidRequest),
        ("/", ErrorCode::InvalidRequest),
        ("/admin", ErrorCode::InvalidRequest),
        ("new", ErrorCode::InvalidName),
        ("/new/", ErrorCode::InvalidName),
    ] {
        let r = admin::create_namespace(&admin, create(name, true)).await;
        assert_eq!(code(r), want, "create {name:?}");
    }
    let e = s.broker.refused_connect("/new", "").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");

    let token = admin::create_token(&admin, "/new", "app").await.unwrap();
    assert!(token.starts_with("rq_") && token.len() == 67, "{token}");
    let r = admin::create_token(&admin, "/new", "app").await;
    assert_eq!(code(r), ErrorCode::InvalidRequest, "a name is used once");
    let r = admin::create_token(&admin, "/nowhere", "app").await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let r = admin::create_token(&admin, "/admin", "app").await;
    assert_eq!(code(r), ErrorCode::NotFound, "/admin is not a tenant");

    let (c, _d) = s.broker.connect_token("/new", &token, "").await;
    assert_eq!(c.publish("r", "e", "before").await.unwrap(), 1);
    let info = admin::namespace(&admin, "/new").await.unwrap();
    assert_eq!(info.tokens, ["app"]);
    drop((c, admin));

    let (dir, config) = s.broker.stop().await;
    let hash = roomq::tenancy::token::TokenHash::of(&token).to_text();
    assert!(
        storage_contains(&config, dir.path(), hash.as_bytes()),
        "the token's hash is stored"
    );
    assert!(
        !storage_contains(&config, dir.path(), token.as_bytes()),
        "the token is stored"
    );
    assert!(
        !storage_contains(&config, dir.path(), &token.as_bytes()[3..]),
        "the token's digits are stored"
    );

    let s = Setup {
        broker: TestBroker::start_with(config, dir).await,
        ..s
    };
    let admin = s.admin().await;
    let info = admin::namespace(&admin, "/new").await.unwrap();
    assert_eq!((info.open, info.from_config), (false, false));
    assert_eq!(info.tokens, ["app"]);
    let e = s.broker.refused_connect("/new", "").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    let (c, mut d) = s.broker.connect_token("/new", &token, "").await;
    assert_eq!(c.publish("r", "e", "after").await.unwrap(), 2);
    join_earliest(&c, "r").await;
    assert_eq!(payload(&next(&mut d).await), b"before");
    assert_eq!(payload(&next(&mut d).await), b"after");
    s.broker.stop().await;
}

#[tokio::test]
async fn a_deleted_token_admits_no_new_connections() {
    let s = setup().await;
    let admin = s.admin().await;
    let a = admin::create_token(&admin, "/t", "a").await.unwrap();
    let b = admin::create_token(&admin, "/t", "b").await.unwrap();
    let (by_a, _ad) = s.broker.connect_token("/t", &a, "").await;

    assert_eq!(
        admin::delete_token(&admin, "/t", "a").await.unwrap().count,
        1
    );
    let e = s.broker.refused_connect("/t", &a).await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    // Documented: a session it authenticated stays until it reconnects.
    assert_eq!(by_a.publish("r", "e", "x").await.unwrap(), 1);
    let (by_b, _bd) = s.broker.connect_token("/t", &b, "").await;
    by_b.ping().await.unwrap();

    // Unknown and config-declared tokens cannot be deleted here.
    assert_eq!(
        code(admin::delete_token(&admin, "/t", "a").await),
        ErrorCode::NotFound
    );
    assert!(admin::delete_token(&admin, "/t", "cfg").await.is_err());
    assert_eq!(
        code(admin::delete_token(&admin, "/nowhere", "b").await),
        ErrorCode::NotFound
    );
    let info = admin::namespace(&admin, "/t").await.unwrap();
    assert_eq!(info.tokens, ["cfg", "b"]);
    drop((by_a, by_b, admin));

    let s = s.restart().await;
    let e = s.broker.refused_connect("/t", &a).await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    let (by_b, _bd) = s.broker.connect_token("/t", &b, "").await;
    by_b.ping().await.unwrap();
    let (by_cfg, _cd) = s.tenant("").await;
    by_cfg.ping().await.unwrap();
    let info = admin::namespace(&s.admin().await, "/t").await.unwrap();
    assert_eq!(info.tokens, ["cfg", "b"]);
    s.broker.stop().await;
}

#[tokio::test]
async fn list_namespaces_shows_figures_and_token_names_never_tokens() {
    let s = setup().await;
    let admin = s.admin().await;
    let made = admin::create_token(&admin, "/t", "made").await.unwrap();
    let (c1, _d1) = s.tenant("").await;
    let (c2, _d2) = s.broker.connect_token("/t", &made, "").await;
    c1.publish("r1", "e", "x").await.unwrap();
    c1.publish("r1", "e", "y").await.unwrap();
    c2.publish("r2", "e", "z").await.unwrap();
    c2.join("r3").await.unwrap();

    let all = admin::namespaces(&admin).await;
    let t = all.iter().find(|n| n.name == "/t").unwrap();
    assert_eq!(t.connections, 2);
    assert_eq!(t.rooms, 3);
    assert_eq!(t.published, 3);
    let rooms = admin::rooms(&admin, "/t").await;
    let bytes: u64 = rooms.iter().map(|r| r.stored_bytes).sum();
    assert!(t.stored_bytes > 0);
    assert_eq!(t.stored_bytes, bytes);
    assert_eq!(t.tokens, ["cfg", "made"]);
    assert!(t.from_config && !t.open);
    assert_eq!(t.durability(), pb::Durability::Sync);
    assert!(t.quotas.is_some());
    // The other namespaces have their own (empty) figures.
    let root = all.iter().find(|n| n.name == "/").unwrap();
    assert_eq!((root.connections, root.rooms, root.stored_bytes), (0, 0, 0));
    assert!(root.open);

    // Neither the tokens nor their hashes are shown anywhere.
    let text = format!("{all:?}");
    for secret in [&s.cfg, &made, &s.admin_token] {
        assert!(!text.contains(secret.as_str()));
        assert!(!text.contains(&secret[3..]));
        let hash = roomq::tenancy::token::TokenHash::of(secret).to_text();
        assert!(!text.contains(&hash["sha256:".len()..]));
    }

    // A closed connection is no longer counted.
    drop(c2);
    eventually("the connection count drops", || async {
        admin::namespace(&admin, "/t").await.unwrap().connections == 1
    })
    .await;
    c1.ping().await.unwrap();
    drop((c1, admin));

    // Rooms and stored bytes are recovered; connections and the publish
    // count start again.
    let s = s.restart().await;
    let after = admin::namespace(&s.admin().await, "/t").await.unwrap();
    assert_eq!((after.rooms, after.stored_bytes), (3, t.stored_bytes));
    assert_eq!((after.connections, after.published), (0, 0));
    s.broker.stop().await;
}

#[tokio::test]
async fn list_rooms_shows_rooms_and_members() {
    let s = setup().await;
    let admin = s.admin().await;
    let (publisher, _pd) = s.tenant("").await;
    let (d1, mut d1d) = s.tenant("d1").await;
    let (d2, mut d2d) = s.tenant("d2").await;
    let (e, mut ed) = s.tenant("").await;
    d1.join("r").await.unwrap();
    d2.join("r").await.unwrap();
    e.join_with(pb::Join {
        room: "r".into(),
        mode: pb::MemberMode::Ephemeral as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 1..=3 {
        publisher.publish("r", "e", format!("m{i}")).await.unwrap();
    }
    for _ in 0..3 {
        next(&mut d1d).await;
        next(&mut d2d).await;
        next(&mut ed).await;
    }
    assert_eq!(d1.ack_up_to("r", "", 3).await.unwrap(), 4);
    assert_eq!(d2.ack_up_to("r", "", 3).await.unwrap(), 4);
    // d1 leaves (keeping its cursor) and misses two more.
    d1.leave("r", "", false).await.unwrap();
    for i in 4..=5 {
        publisher.publish("r", "e", format!("m{i}")).await.unwrap();
    }
    next(&mut d2d).await;
    next(&mut d2d).await;
    assert_eq!(d2.ack_up_to("r", "", 5).await.unwrap(), 6);
    publisher.publish("other", "e", "x").await.unwrap();
    let (root, _rd) = s.broker.connect("").await;
    root.publish("r", "e", "root").await.unwrap();

    let rooms = admin::rooms(&admin, "/t").await;
    let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["other", "r"]);
    let r = &rooms[1];
    assert_eq!(
        (r.namespace.as_str(), r.first_seq, r.last_seq),
        ("/t", 1, 5)
    );
    assert!(r.stored_bytes > 0 && r.stored_bytes > rooms[0].stored_bytes);
    assert_eq!(r.members.len(), 3);
    let member = |name: &str| r.members.iter().find(|m| m.name == name).unwrap();
    let m1 = member("d1");
    assert!(m1.durable && !m1.connected && m1.session_id.is_empty());
    assert_eq!((m1.next_seq, m1.backlog, m1.unacked), (4, 2, 0));
    let m2 = member("d2");
    assert!(m2.durable && m2.connected);
    assert_eq!(&m2.session_id[..], d2.session_id().as_bytes());
    assert_eq!((m2.next_seq, m2.backlog, m2.unacked), (6, 0, 0));
    let me = member("");
    assert!(!me.durable && me.connected);
    assert_eq!(&me.session_id[..], e.session_id().as_bytes());
    assert_eq!(me.unacked, 5);

    // "" lists every namespace, sorted by namespace then name.
    let every = admin::rooms(&admin, "").await;
    let keys: Vec<(&str, &str)> = every
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(keys, [("/", "r"), ("/t", "other"), ("/t", "r")]);
    assert!(admin::rooms(&admin, "/other").await.is_empty());
    s.broker.stop().await;
}

/// docs/protocol.md: `backlog` = stored messages not yet acknowledged;
/// `next_seq`, as everywhere, the lowest seq not yet acknowledged.
#[tokio::test]
async fn list_rooms_backlog_counts_delivered_but_unacked_messages() {
    let s = setup().await;
    let admin = s.admin().await;
    let (publisher, _pd) = s.tenant("").await;
    let (m, mut md) = s.tenant("m").await;
    m.join_with(join("r", pb::StartPosition::Resume, 2, 0))
        .await
        .unwrap();
    for i in 1..=5 {
        publisher.publish("r", "e", format!("m{i}")).await.unwrap();
    }
    assert_eq!(seq(&next(&mut md).await), 1);
    assert_eq!(seq(&next(&mut md).await), 2);
    // Acking 1 lets 3 in: 2 and 3 in flight, 4 and 5 not yet delivered.
    assert_eq!(m.ack("r", "", &[1]).await.unwrap(), 2);
    assert_eq!(seq(&next(&mut md).await), 3);
    let r = admin::room(&admin, "/t", "r").await.unwrap();
    let info = &r.members[0];
    assert_eq!(info.unacked, 2);
    assert_eq!(
        (info.next_seq, info.backlog),
        (2, 4),
        "(next_seq, backlog) of a member that acked only 1 of 5"
    );
    s.broker.stop().await;
}

#[tokio::test]
async fn purge_room_empties_it_and_seqs_continue_also_after_restart() {
    let s = setup().await;
    let admin = s.admin().await;
    let (m, mut md) = s.tenant("m").await;
    m.join("r").await.unwrap();
    for i in 1..=5 {
        m.publish("r", "e", format!("old{i}")).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(seq(&next(&mut md).await), i);
    }
    m.ack_up_to("r", "", 2).await.unwrap();
    // The same room name elsewhere is not touched.
    let (root, _rd) = s.broker.connect("").await;
    root.publish("r", "e", "root").await.unwrap();

    assert_eq!(admin::purge_room(&admin, "/t", "r").await.unwrap().count, 5);
    let r = admin::room(&admin, "/t", "r").await.unwrap();
    assert_eq!((r.first_seq, r.last_seq, r.stored_bytes), (6, 5, 0));
    let info = &r.members[0];
    assert_eq!((info.next_seq, info.backlog, info.unacked), (6, 0, 0));
    assert_eq!(admin::room(&admin, "/", "r").await.unwrap().last_seq, 1);

    // The next publish gets the next seq; the member moves on to it (no
    // redelivery of what was purged while in flight).
    assert_eq!(m.publish("r", "e", "new6").await.unwrap(), 6);
    let d = next(&mut md).await;
    assert_eq!((seq(&d), d.attempt, payload(&d)), (6, 1, b"new6".to_vec()));
    let (late, mut ld) = s.tenant("late").await;
    assert_eq!(join_earliest(&late, "r").await.next_seq, 6);
    assert_eq!(payload(&next(&mut ld).await), b"new6");
    drop((late, ld));

    // Purged again, then restarted with nothing stored: seqs are not reused.
    assert_eq!(admin::purge_room(&admin, "/t", "r").await.unwrap().count, 1);
    drop((m, md, root, admin));
    let s = s.restart().await;
    let admin = s.admin().await;
    let r = admin::room(&admin, "/t", "r").await.unwrap();
    assert_eq!((r.first_seq, r.last_seq, r.stored_bytes), (7, 6, 0));
    let (m, mut md) = s.tenant("m").await;
    m.join("r").await.unwrap();
    assert_eq!(m.publish("r", "e", "new7").await.unwrap(), 7);
    let d = next(&mut md).await;
    assert_eq!((seq(&d), payload(&d)), (7, b"new7".to_vec()));
    let (fresh, mut fd) = s.tenant("fresh").await;
    join_earliest(&fresh, "r").await;
    assert_eq!(seq(&next(&mut fd).await), 7);

    for (ns, room) in [("/t", "nowhere"), ("/nowhere", "r")] {
        assert_eq!(
            code(admin::purge_room(&admin, ns, room).await),
            ErrorCode::NotFound
        );
    }
    s.broker.stop().await;
}

#[tokio::test]
async fn delete_room_tells_members_and_a_recreated_room_starts_afresh() {
    let s = setup().await;
    let admin = s.admin().await;
    let (m, mut md) = s.tenant("m").await;
    m.join("r").await.unwrap();
    for i in 1..=3 {
        m.publish("r", "e", format!("old{i}")).await.unwrap();
    }
    for _ in 0..3 {
        next(&mut md).await;
    }
    m.publish("keep", "e", "kept").await.unwrap();
    m.publish("gone", "e", "x").await.unwrap();
    let (root, _rd) = s.broker.connect("").await;
    root.publish("r", "e", "root").await.unwrap();

    assert_eq!(
        admin::delete_room(&admin, "/t", "r").await.unwrap().count,
        1
    );
    let e = next_error(&mut md).await;
    assert_eq!(e.error_code(), Some(ErrorCode::NotFound), "{e:?}");
    assert!(!e.fatal && e.message.contains("\"r\""), "{e:?}");
    // The member's session stays; its membership is gone.
    m.ping().await.unwrap();
    assert_eq!(code(m.ack("r", "", &[1]).await), ErrorCode::NotJoined);
    let names = |rooms: Vec<pb::AdminRoomInfo>| -> Vec<String> {
        rooms.into_iter().map(|r| r.name).collect()
    };
    assert_eq!(names(admin::rooms(&admin, "/t").await), ["gone", "keep"]);
    let listed: Vec<String> = m
        .list_rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, ["gone", "keep"]);
    assert_eq!(admin::room(&admin, "/", "r").await.unwrap().last_seq, 1);
    assert_eq!(
        code(admin::delete_room(&admin, "/t", "r").await),
        ErrorCode::NotFound
    );

    // Used again, it is a new room: seq 1, none of the old messages.
    assert_eq!(m.publish("r", "e", "new").await.unwrap(), 1);
    let (late, mut ld) = s.tenant("late").await;
    let ok = join_earliest(&late, "r").await;
    assert_eq!((ok.next_seq, ok.last_seq), (1, 1));
    assert_eq!(payload(&next(&mut ld).await), b"new");
    assert_quiet(&mut ld, std::time::Duration::from_millis(200)).await;
    assert_eq!(
        admin::delete_room(&admin, "/t", "gone")
            .await
            .unwrap()
            .count,
        1
    );
    drop((m, md, late, ld, root, admin));

    let s = s.restart().await;
    let admin = s.admin().await;
    assert_eq!(names(admin::rooms(&admin, "/t").await), ["keep", "r"]);
    let r = admin::room(&admin, "/t", "r").await.unwrap();
    assert_eq!((r.first_seq, r.last_seq), (1, 1));
    let (fresh, mut fd) = s.tenant("fresh").await;
    join_earliest(&fresh, "r").await;
    let d = next(&mut fd).await;
    assert_eq!((seq(&d), payload(&d)), (1, b"new".to_vec()));
    assert_eq!(fresh.publish("r", "e", "next").await.unwrap(), 2);
    assert_eq!(seq(&next(&mut fd).await), 2);
    // A deleted room's seqs are not carried over either.
    assert_eq!(fresh.publish("gone", "e", "again").await.unwrap(), 1);
    s.broker.stop().await;
}

#[tokio::test]
async fn delete_namespace_closes_its_sessions_and_removes_it_for_good() {
    let s = setup().await;
    let admin = s.admin().await;
    admin::create_namespace(&admin, create("/tmp1", false))
        .await
        .unwrap();
    let old_token = admin::create_token(&admin, "/tmp1", "app").await.unwrap();
    let (c, mut cd) = s.broker.connect_token("/tmp1", &old_token, "x").await;
    c.join("r").await.unwrap();
    c.publish("r", "e", "1").await.unwrap();
    c.publish("r2", "e", "2").await.unwrap();
    let (t, _td) = s.tenant("").await;

    let ok = admin::delete_namespace(&admin, "/tmp1").await.unwrap();
    assert_eq!(ok.count, 2, "rooms deleted");
    let pushes = pushes_until_closed(&mut cd).await;
    let closing = pushes
        .iter()
        .find_map(|p| match p {
            Push::Error(e) => Some(e.clone()),
            _ => None,
        })
        .expect("an error before the close");
    assert_eq!(
        closing.error_code(),
        Some(ErrorCode::NotFound),
        "{closing:?}"
    );
    assert!(closing.fatal);
    assert!(c.ping().await.is_err());
    assert!(admin::namespace(&admin, "/tmp1").await.is_none());
    assert!(admin::rooms(&admin, "/tmp1").await.is_empty());
    let e = s.broker.refused_connect("/tmp1", &old_token).await;
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    t.ping().await.unwrap();

    // Config-declared namespaces stay.
    for name in ["/t", "/"] {
        let r = admin::delete_namespace(&admin, name).await;
        assert_eq!(code(r), ErrorCode::InvalidRequest, "{name}");
    }
    for name in ["/admin", "/tmp1", "/nowhere"] {
        let r = admin::delete_namespace(&admin, name).await;
        assert_eq!(code(r), ErrorCode::NotFound, "{name}");
    }
    t.ping().await.unwrap();
    drop((admin, t));

    let s = s.restart().await;
    let admin = s.admin().await;
    assert!(admin::namespace(&admin, "/tmp1").await.is_none());
    assert!(admin::namespace(&admin, "/t").await.is_some());
    let e = s.broker.refused_connect("/tmp1", &old_token).await;
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // Created again, it has nothing of the old one: no tokens, no rooms.
    admin::create_namespace(&admin, create("/tmp1", false))
        .await
        .unwrap();
    let e = s.broker.refused_connect("/tmp1", &old_token).await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    let token = admin::create_token(&admin, "/tmp1", "app").await.unwrap();
    let (c, _cd) = s.broker.connect_token("/tmp1", &token, "x").await;
    assert!(!c.resumed());
    assert!(c.list_rooms().await.unwrap().is_empty());
    assert_eq!(c.publish("r", "e", "fresh").await.unwrap(), 1);
    s.broker.stop().await;
}

#[tokio::test]
async fn kick_closes_the_session_with_kicked() {
    let s = setup().await;
    let admin = s.admin().await;
    let (victim, mut vd) = s.tenant("v").await;
    let (other, _od) = s.tenant("").await;
    victim.join("r").await.unwrap();

    let ok = admin::kick(&admin, victim.session_id().as_bytes())
        .await
        .unwrap();
    assert_eq!(ok.count, 1);
    let pushes = pushes_until_closed(&mut vd).await;
    let kicked = pushes.iter().any(
        |p| matches!(p, Push::Error(e) if e.error_code() == Some(ErrorCode::Kicked) && e.fatal),
    );
    assert!(kicked, "{pushes:?}");
    assert!(victim.ping().await.is_err());
    other.ping().await.unwrap();

    // Gone: kicking it again, or a session that never was, finds nothing.
    let again = admin::kick(&admin, victim.session_id().as_bytes()).await;
    assert_eq!(code(again), ErrorCode::NotFound);
    let never = admin::kick(&admin, uuid::Uuid::new_v4().as_bytes()).await;
    assert_eq!(code(never), ErrorCode::NotFound);
    assert_eq!(
        code(admin::kick(&admin, &[1, 2, 3]).await),
        ErrorCode::InvalidRequest
    );
    // The client may come back; its durable membership is there.
    let (back, _bd) = s.tenant("v").await;
    assert!(back.resumed());
    let r = admin::room(&admin, "/t", "r").await.unwrap();
    assert_eq!(r.members.len(), 1);
    assert!(!r.members[0].connected);
    s.broker.stop().await;
}

/// Holds the handshake of a client named "gated" (after the broker has
/// looked up its namespace) until released.
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl Middleware for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn connect(&self, ctx: &mut ConnectCtx<'_>) -> Verdict {
        if ctx.client_name == "gated" {
            self.entered.notify_one();
            self.release.acquire().await.unwrap().forget();
        }
        Verdict::Allow
    }
}

/// A handshake under way while its namespace is deleted must not end in a
/// session of the deleted namespace: whatever it does must not be stored,
/// nor show up in a namespace created later under the same name.
#[tokio::test]
async fn a_handshake_racing_delete_namespace_leaves_nothing_behind() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, admin_token) = admin_config(&dir);
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let gate = Gate {
        entered: entered.clone(),
        release: release.clone(),
    };
    let broker = TestBroker::start_server(config, dir, |s| s.middleware("/x", gate)).await;
    let admin = broker.admin(&admin_token).await;
    admin::create_namespace(&admin, create("/x", true))
        .await
        .unwrap();

    let opts = broker.options().namespace("/x").client_name("gated");
    let connecting = tokio::spawn(Client::connect(opts));
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .expect("the handshake reaches the hook");
    admin::delete_namespace(&admin, "/x").await.unwrap();
    release.add_permits(1);
    let connected = tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap()
        .unwrap();

    // (Kept open until the end, so the broker cannot have closed it.)
    let mut stored = None;
    let mut session = None;
    if let Ok((c, d)) = connected {
        stored = Some(c.publish("leak", "e", "after the delete").await);
        session = Some((c, d));
    }
    let listed = admin::rooms(&admin, "/x").await;
    admin::create_namespace(&admin, create("/x", true))
        .await
        .unwrap();
    let (fresh, _fd) = broker.connect_ns("/x", "").await;
    let rooms = fresh.list_rooms().await.unwrap();
    assert!(
        !matches!(stored, Some(Ok(_))) && listed.is_empty() && rooms.is_empty(),
        "publish by the late session: {stored:?}; /x rooms listed after the \
         delete: {}; rooms of the re-created /x: {rooms:?}",
        listed.len()
    );
    drop(session);
    broker.stop().await;
}
