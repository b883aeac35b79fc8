//! Namespaces as tenants: tokens (and their rotation), per-token room
//! permissions, quotas, and each namespace's durability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq::config::{Config, DurabilityMode, NamespaceConfig, Quotas};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::ErrorCode;

/// A broker whose `/t` is closed with the given settings (and `token`, a
/// token allowed everything), plus an admin token.
struct Tenant {
    broker: TestBroker,
    token: String,
    admin_token: String,
}

async fn tenant_with(settings: NamespaceConfig) -> Tenant {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (mut config, admin_token) = admin_config(&dir);
    let (token, entry) = new_token("app");
    let mut settings = settings;
    settings.open = false;
    settings.tokens.push(entry);
    config.namespaces.insert("/t".into(), settings);
    Tenant {
        broker: TestBroker::start_with(config, dir).await,
        token,
        admin_token,
    }
}

async fn tenant_with_quotas(quotas: Quotas) -> Tenant {
    tenant_with(NamespaceConfig {
        quotas,
        ..NamespaceConfig::default()
    })
    .await
}

impl Tenant {
    async fn connect(&self, client_id: &str) -> (Client, roomq_client::Deliveries) {
        self.broker
            .connect_token("/t", &self.token, client_id)
            .await
    }
}

fn publish(room: &str, payload: impl Into<bytes::Bytes>) -> pb::Publish {
    pb::Publish {
        rooms: vec![room.to_string()],
        event: "e".into(),
        payload: payload.into(),
        ..Default::default()
    }
}

fn last_seq(rooms: &[pb::RoomInfo], name: &str) -> Option<u64> {
    rooms.iter().find(|r| r.name == name).map(|r| r.last_seq)
}

#[tokio::test]
async fn a_closed_namespace_refuses_missing_and_wrong_tokens() {
    let t = tenant_with(NamespaceConfig::default()).await;
    let b = &t.broker;
    let missing = b.refused_connect("/t", "").await;
    assert_eq!(
        missing.code(),
        Some(ErrorCode::Unauthenticated),
        "{missing}"
    );
    let (other, _) = new_token("other");
    let wrong = [
        other.as_str(),
        "nope",
        &t.token[..t.token.len() - 1],
        &format!("{}0", t.token),
        &t.token.to_uppercase(),
        // The stored form is not a credential.
        &roomq::tenancy::token::TokenHash::of(&t.token).to_text(),
    ];
    for token in wrong {
        let e = b.refused_connect("/t", token).await;
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{token:?}: {e}");
    }
    // The right one works.
    let (c, _d) = t.connect("").await;
    assert_eq!(c.publish("r", "e", "x").await.unwrap(), 1);
    t.broker.stop().await;
}

#[tokio::test]
async fn two_tokens_are_valid_at_once_so_they_can_be_rotated() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let (old, old_entry) = new_token("old");
    let (new, new_entry) = new_token("new");
    config.namespaces.insert(
        "/t".into(),
        closed_namespace(vec![old_entry, new_entry.clone()]),
    );
    let broker = TestBroker::start_with(config, dir).await;

    let (reader, mut rd) = broker.connect_token("/t", &new, "reader").await;
    reader.join("r").await.unwrap();
    let (writer, _wd) = broker.connect_token("/t", &old, "").await;
    assert_eq!(writer.publish("r", "e", "by old").await.unwrap(), 1);
    assert_eq!(payload(&next(&mut rd).await), b"by old");
    drop((reader, rd, writer));

    // Rotation done: the config keeps only the new token.
    let (dir, mut config) = broker.stop().await;
    config
        .namespaces
        .insert("/t".into(), closed_namespace(vec![new_entry]));
    let broker = TestBroker::start_with(config, dir).await;
    let e = broker.refused_connect("/t", &old).await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    let (c, _d) = broker.connect_token("/t", &new, "").await;
    assert_eq!(c.publish("r", "e", "by new").await.unwrap(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn root_is_open_by_default_and_closed_when_declared_so() {
    // Open: no token needed, but a token given must be valid.
    let broker = TestBroker::start().await;
    let (c, _d) = Client::connect(broker.options()).await.unwrap();
    assert_eq!(c.publish("r", "e", "x").await.unwrap(), 1);
    let e = broker.refused_connect("/", "made-up").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    broker.stop().await;

    // Also when built from a config file that declares other namespaces.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[namespaces.\"/orders\"]\nopen = false\n").unwrap();
    let loaded = Config::load(Some(file.path()), Vec::new()).unwrap();
    assert!(loaded.namespaces["/"].open);
    assert!(!loaded.namespaces["/orders"].open);

    // Declared with open = false: closed.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let (token, entry) = new_token("root");
    config
        .namespaces
        .insert("/".into(), closed_namespace(vec![entry]));
    let broker = TestBroker::start_with(config, dir).await;
    let e = broker.refused_connect("/", "").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    // An empty namespace in the handshake means `/`.
    let e = broker.refused_connect("", "").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    let (c, _d) = broker.connect_token("/", &token, "").await;
    assert_eq!(c.publish("r", "e", "x").await.unwrap(), 1);
    // Other namespaces stay as declared (open).
    let (o, _od) = broker.connect_ns("/orders", "").await;
    o.ping().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn token_permissions_limit_publish_and_join_by_room_pattern() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let (limited, limited_entry) = new_token_for("limited", &["orders.*"], &["audit"]);
    let (full, full_entry) = new_token("full");
    config.namespaces.insert(
        "/t".into(),
        closed_namespace(vec![limited_entry, full_entry]),
    );
    let broker = TestBroker::start_with(config, dir).await;
    let (c, _d) = broker.connect_token("/t", &limited, "").await;

    assert_eq!(c.publish("orders.eu", "e", "1").await.unwrap(), 1);
    assert_eq!(c.publish("orders.eu.1", "e", "1").await.unwrap(), 1);
    for room in ["audit", "orders", "ordersx", "x.orders.eu"] {
        let r = c.publish(room, "e", "no").await;
        assert_eq!(code(r), ErrorCode::PermissionDenied, "publish {room}");
    }
    // A publish to several rooms needs every one: nothing is stored.
    let mut both = publish("orders.eu", "no");
    both.rooms.push("audit".into());
    assert_eq!(
        code(c.publish_with(both).await),
        ErrorCode::PermissionDenied
    );

    c.join("audit").await.unwrap();
    for room in ["orders.eu", "audit2", "audi"] {
        assert_eq!(
            code(c.join(room).await),
            ErrorCode::PermissionDenied,
            "join {room}"
        );
    }

    // The refused requests left nothing behind.
    let (f, _fd) = broker.connect_token("/t", &full, "").await;
    let rooms = f.list_rooms().await.unwrap();
    let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["audit", "orders.eu", "orders.eu.1"]);
    assert_eq!(last_seq(&rooms, "orders.eu"), Some(1));
    assert_eq!(last_seq(&rooms, "audit"), Some(0));
    // The session is still usable after its refusals.
    assert_eq!(c.publish("orders.eu", "e", "2").await.unwrap(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_the_extra_connection() {
    let t = tenant_with_quotas(Quotas {
        max_connections: 2,
        ..Quotas::default()
    })
    .await;
    let b = &t.broker;
    let (c1, _d1) = t.connect("").await;
    let (c2, d2) = t.connect("").await;
    let e = b.refused_connect("/t", &t.token).await;
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    // Refused handshakes (bad token) take no slot and change nothing.
    for _ in 0..3 {
        let e = b.refused_connect("/t", "wrong").await;
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    }
    // Other namespaces are not counted.
    let (root, _rd) = b.connect("").await;
    root.ping().await.unwrap();
    c1.ping().await.unwrap();

    // A closed connection frees its slot (once the broker has noticed).
    drop((c2, d2));
    let opts = b.options().namespace("/t").token(t.token.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        match Client::connect(opts.clone()).await {
            Ok(c) => break c,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot is never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    third.0.ping().await.unwrap();
    let e = b.refused_connect("/t", &t.token).await;
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    t.broker.stop().await;
}

#[tokio::test]
async fn max_message_bytes_refuses_larger_messages_and_stores_nothing() {
    let t = tenant_with_quotas(Quotas {
        max_message_bytes: 100,
        ..Quotas::default()
    })
    .await;
    let (c, mut d) = t.connect("m").await;
    c.join("r").await.unwrap();
    assert_eq!(c.publish("r", "e", vec![b'a'; 100]).await.unwrap(), 1);
    let r = c.publish("r", "e", vec![b'b'; 101]).await;
    assert_eq!(code(r), ErrorCode::QuotaExceeded);
    // Headers count too: 90 + 1 + 10 bytes.
    let mut p = publish("r", vec![b'c'; 90]);
    p.headers = BTreeMap::from([("k".to_string(), "v".repeat(10))]);
    assert_eq!(code(c.publish_with(p).await), ErrorCode::QuotaExceeded);
    // A message that fits afterwards gets the next seq: nothing was stored.
    assert_eq!(c.publish("r", "e", "small").await.unwrap(), 2);
    assert_eq!(payload(&next(&mut d).await), vec![b'a'; 100]);
    let second = next(&mut d).await;
    assert_eq!((seq(&second), payload(&second)), (2, b"small".to_vec()));
    let rooms = c.list_rooms().await.unwrap();
    assert_eq!(last_seq(&rooms, "r"), Some(2));
    t.broker.stop().await;
}

#[tokio::test]
async fn max_stored_bytes_refuses_publishes_beyond_it() {
    let t = tenant_with_quotas(Quotas {
        max_stored_bytes: 2_000,
        ..Quotas::default()
    })
    .await;
    let (c, _d) = t.connect("").await;
    let mut accepted = 0u64;
    let refusal = loop {
        match c.publish("r", "e", vec![b'x'; 300]).await {
            Ok(seq) => {
                accepted += 1;
                assert_eq!(seq, accepted);
                assert!(accepted <= 7, "2000 bytes hold at most 6 of 300");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Some(ErrorCode::QuotaExceeded), "{refusal}");
    assert!(accepted >= 1, "the first publish fits");
    // Further publishes are refused too, and nothing more is stored.
    for _ in 0..3 {
        assert_eq!(
            code(c.publish("r", "e", vec![b'y'; 300]).await),
            ErrorCode::QuotaExceeded
        );
    }
    let rooms = c.list_rooms().await.unwrap();
    assert_eq!(last_seq(&rooms, "r"), Some(accepted));

    // Purging frees the space (and the figure says so).
    let admin = t.broker.admin(&t.admin_token).await;
    let before = admin::namespace(&admin, "/t").await.unwrap();
    assert!(before.stored_bytes > 0);
    admin::purge_room(&admin, "/t", "r").await.unwrap();
    assert_eq!(
        admin::namespace(&admin, "/t").await.unwrap().stored_bytes,
        0
    );
    assert_eq!(
        c.publish("r", "e", vec![b'z'; 300]).await.unwrap(),
        accepted + 1
    );
    t.broker.stop().await;
}

/// The quota bounds what the namespace reports as stored. 300-byte
/// payloads are stored as 331-byte messages (event, publisher, timestamp),
/// so a check made with the payload's size lets the sixth one through with
/// 1655 + 300 <= 1980 and then reports 1986 bytes stored.
#[tokio::test]
async fn stored_bytes_never_exceed_max_stored_bytes_one_by_one() {
    const MAX: u64 = 1_980;
    let t = tenant_with_quotas(Quotas {
        max_stored_bytes: MAX,
        ..Quotas::default()
    })
    .await;
    let admin = t.broker.admin(&t.admin_token).await;
    let (c, _d) = t.connect("").await;
    let mut accepted = 0;
    while c.publish("one", "e", vec![b'x'; 300]).await.is_ok() {
        accepted += 1;
    }
    let stored = admin::namespace(&admin, "/t").await.unwrap().stored_bytes;
    assert!(
        stored <= MAX,
        "{accepted} accepted, {stored} bytes stored; quota {MAX}"
    );
    t.broker.stop().await;
}

/// The quota holds when publishes are pipelined on one connection (each
/// must not be checked against a figure that omits the ones before it).
#[tokio::test]
async fn stored_bytes_never_exceed_max_stored_bytes_pipelined() {
    const MAX: u64 = 2_000;
    let t = tenant_with_quotas(Quotas {
        max_stored_bytes: MAX,
        ..Quotas::default()
    })
    .await;
    let admin = t.broker.admin(&t.admin_token).await;
    let (c, _d) = t.connect("").await;
    let publishes = (0..40).map(|_| c.publish("piped", "e", vec![b'x'; 300]));
    let results = futures::future::join_all(publishes).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some(ErrorCode::QuotaExceeded), "{r}");
    }
    let stored = admin::namespace(&admin, "/t").await.unwrap().stored_bytes;
    assert!(
        stored <= MAX,
        "{accepted} of 40 accepted, {stored} bytes stored; quota {MAX}"
    );
    t.broker.stop().await;
}

#[tokio::test]
async fn max_rooms_refuses_the_room_one_too_many() {
    let t = tenant_with_quotas(Quotas {
        max_rooms: 2,
        ..Quotas::default()
    })
    .await;
    let (c, _d) = t.connect("").await;
    assert_eq!(c.publish("r1", "e", "x").await.unwrap(), 1);
    c.join("r2").await.unwrap();
    assert_eq!(
        code(c.publish("r3", "e", "x").await),
        ErrorCode::QuotaExceeded
    );
    assert_eq!(code(c.join("r3").await), ErrorCode::QuotaExceeded);
    // A publish naming an existing and a new room stores in neither.
    let mut p = publish("r1", "no");
    p.rooms.push("r3".into());
    assert_eq!(code(c.publish_with(p).await), ErrorCode::QuotaExceeded);
    // Existing rooms stay usable.
    assert_eq!(c.publish("r1", "e", "x").await.unwrap(), 2);
    assert_eq!(c.publish("r2", "e", "x").await.unwrap(), 1);
    let rooms = c.list_rooms().await.unwrap();
    let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2"]);
    // Deleting a room makes room for another.
    let admin = t.broker.admin(&t.admin_token).await;
    admin::delete_room(&admin, "/t", "r2").await.unwrap();
    assert_eq!(c.publish("r3", "e", "x").await.unwrap(), 1);
    assert_eq!(
        code(c.publish("r4", "e", "x").await),
        ErrorCode::QuotaExceeded
    );
    t.broker.stop().await;
}

#[tokio::test]
async fn without_create_rooms_only_admin_creates_rooms() {
    let t = tenant_with(NamespaceConfig {
        create_rooms: false,
        ..NamespaceConfig::default()
    })
    .await;
    let (c, mut d) = t.connect("m").await;
    assert_eq!(code(c.join("news").await), ErrorCode::NotFound);
    assert_eq!(code(c.publish("news", "e", "x").await), ErrorCode::NotFound);
    assert!(c.list_rooms().await.unwrap().is_empty());

    let admin = t.broker.admin(&t.admin_token).await;
    let created = admin::create_room(&admin, "/t", "news").await.unwrap();
    assert_eq!(created.count, 1);
    // Creating it again is harmless and says it created nothing.
    assert_eq!(
        admin::create_room(&admin, "/t", "news")
            .await
            .unwrap()
            .count,
        0
    );

    let ok = c.join("news").await.unwrap();
    assert_eq!(ok.last_seq, 0);
    assert_eq!(c.publish("news", "e", "x").await.unwrap(), 1);
    assert_eq!(payload(&next(&mut d).await), b"x");
    // Still no room on first use.
    assert_eq!(
        code(c.publish("other", "e", "x").await),
        ErrorCode::NotFound
    );
    t.broker.stop().await;
}

/// Publishes without a dedup id, so no dedup-expiry timer is armed.
async fn rate_publish(
    c: &Client,
    rooms: &[&str],
) -> Result<pb::PublishOk, roomq_client::ClientError> {
    c.publish_with(pb::Publish {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        event: "e".into(),
        payload: "x".into(),
        ..Default::default()
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn publish_rate_allows_a_burst_then_refills_with_time() {
    let t = tenant_with_quotas(Quotas {
        publish_rate: 10,
        publish_burst: 3,
        ..Quotas::default()
    })
    .await;
    let (c, _d) = t.connect("").await;
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        rate_publish(&c, &["r"]).await.unwrap();
    }
    assert_eq!(
        code(rate_publish(&c, &["r"]).await),
        ErrorCode::QuotaExceeded
    );
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "no time passed: {:?}",
        start.elapsed()
    );

    // 10 per second: after 100 ms one more.
    tokio::time::advance(Duration::from_millis(100)).await;
    rate_publish(&c, &["r"]).await.unwrap();
    assert_eq!(
        code(rate_publish(&c, &["r"]).await),
        ErrorCode::QuotaExceeded
    );

    // A long pause (shorter than the idle timeout) refills to the burst,
    // no more.
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..3 {
        rate_publish(&c, &["r"]).await.unwrap();
    }
    assert_eq!(
        code(rate_publish(&c, &["r"]).await),
        ErrorCode::QuotaExceeded
    );

    // A publish to two rooms counts twice, and a refused one takes nothing.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(
        code(rate_publish(&c, &["r", "s"]).await),
        ErrorCode::QuotaExceeded
    );
    rate_publish(&c, &["r"]).await.unwrap();
    tokio::time::advance(Duration::from_millis(200)).await;
    let ok = rate_publish(&c, &["r", "s"]).await.unwrap();
    assert_eq!(ok.seqs.len(), 2);
    // Every accepted publish was stored: 3 + 1 + 3 + 1 + 1.
    let rooms = c.list_rooms().await.unwrap();
    assert_eq!(last_seq(&rooms, "r"), Some(9));
    assert_eq!(last_seq(&rooms, "s"), Some(1));
    t.broker.stop().await;
}

#[tokio::test]
async fn batched_durability_is_reported_and_survives_a_clean_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let batched = NamespaceConfig {
        durability: DurabilityMode::Batched,
        ..NamespaceConfig::open_default()
    };
    config.namespaces.insert("/batched".into(), batched);
    let broker = TestBroker::start_with(config, dir).await;

    let (b, mut bd) = broker.connect_ns("/batched", "m").await;
    b.join("r").await.unwrap();
    for i in 1..=3u64 {
        let ok = b.publish_with(publish("r", format!("b{i}"))).await.unwrap();
        assert_eq!(ok.durability(), pb::Durability::Batched);
        assert_eq!(ok.seqs[0].seq, i);
    }
    for i in 1..=3u64 {
        let d = next(&mut bd).await;
        assert_eq!((seq(&d), payload(&d)), (i, format!("b{i}").into_bytes()));
    }
    // `/` (and every namespace not saying otherwise) is sync.
    let (s, _sd) = broker.connect("").await;
    let ok = s.publish_with(publish("r", "s1")).await.unwrap();
    assert_eq!(ok.durability(), pb::Durability::Sync);
    drop((b, bd, s));

    let broker = broker.restart().await;
    let (b, mut bd) = broker.connect_ns("/batched", "late").await;
    b.join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    for i in 1..=3u64 {
        let d = next(&mut bd).await;
        assert_eq!((seq(&d), payload(&d)), (i, format!("b{i}").into_bytes()));
    }
    let ok = b.publish_with(publish("r", "b4")).await.unwrap();
    assert_eq!(
        (ok.seqs[0].seq, ok.durability()),
        (4, pb::Durability::Batched)
    );
    broker.stop().await;
}

#[tokio::test]
async fn sync_durability_is_reported() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let sync = NamespaceConfig {
        durability: DurabilityMode::Sync,
        ..NamespaceConfig::open_default()
    };
    config.namespaces.insert("/sync".into(), sync);
    let broker = TestBroker::start_with(config, dir).await;
    let (c, _d) = broker.connect_ns("/sync", "").await;
    let ok = c.publish_with(publish("r", "x")).await.unwrap();
    assert_eq!(ok.durability(), pb::Durability::Sync);
    assert_eq!(ok.seqs[0].seq, 1);
    let broker = broker.restart().await;
    let (c, mut d) = broker.connect_ns("/sync", "").await;
    c.join_with(join("r", pb::StartPosition::Earliest, 0, 0))
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut d).await), b"x");
    broker.stop().await;
}
