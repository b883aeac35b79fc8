//! Namespaces are separate: the same room name in two namespaces shares
//! nothing (G5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::raw::Connection as Client;
use roomq_client::ErrorCode;
use std::time::Duration;

#[tokio::test]
async fn same_room_name_in_two_namespaces_is_two_rooms() {
    let broker = TestBroker::start().await;
    let (orders, mut orders_d) = broker.connect_ns("/orders", "sam").await;
    let (users, mut users_d) = broker.connect_ns("/users", "sam").await;
    orders.join("general").await.unwrap();
    users.join("general").await.unwrap();

    assert_eq!(
        orders.publish("general", "e", "for orders").await.unwrap(),
        1
    );
    assert_eq!(users.publish("general", "e", "for users").await.unwrap(), 1);
    assert_eq!(orders.publish("general", "e", "orders 2").await.unwrap(), 2);

    assert_eq!(payload(&next(&mut orders_d).await), b"for orders");
    assert_eq!(payload(&next(&mut orders_d).await), b"orders 2");
    assert_eq!(payload(&next(&mut users_d).await), b"for users");
    assert_quiet(&mut users_d, Duration::from_millis(200)).await;

    // The same client id in another namespace is another identity.
    let (root, _rd) = broker.connect_ns("/", "sam").await;
    assert!(!root.resumed());
    broker.stop().await;
}

#[tokio::test]
async fn invalid_namespaces_are_refused_at_the_handshake() {
    let broker = TestBroker::start().await;
    for ns in ["orders", "/orders/", "/a\u{0}b"] {
        let err = Client::connect(broker.options().namespace(ns))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::InvalidName), "{ns:?}: {err}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn list_rooms_shows_only_the_sessions_namespace() {
    let broker = TestBroker::start().await;
    let (a, _ad) = broker.connect_ns("/a", "x").await;
    let (ab, _abd) = broker.connect_ns("/ab", "x").await;
    a.publish("orders.eu", "e", "1").await.unwrap();
    a.publish("orders.eu", "e", "2").await.unwrap();
    a.join("orders.us").await.unwrap();
    ab.publish("secret", "e", "1").await.unwrap();

    let rooms = a.list_rooms().await.unwrap();
    let summary: Vec<(String, u64, u32, u32)> = rooms
        .iter()
        .map(|r| (r.name.clone(), r.last_seq, r.members, r.connected_members))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("orders.eu".to_string(), 2, 0, 0),
            ("orders.us".to_string(), 0, 1, 1)
        ]
    );
    let rooms = ab.list_rooms().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].name, "secret");
    broker.stop().await;
}

#[tokio::test]
async fn the_admin_namespace_needs_an_admin_token() {
    let broker = TestBroker::start().await;
    let err = Client::connect(broker.options().namespace("/admin"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    let err = Client::connect(broker.options().namespace("/undeclared"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    // Names that merely start like it are ordinary tenants.
    let (c, _d) = broker.connect_ns("/administration", "x").await;
    c.ping().await.unwrap();
    broker.stop().await;
}
