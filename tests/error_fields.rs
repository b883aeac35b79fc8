//! What a second client needs from the protocol without reading prose:
//! errors about one membership name it, `QUOTA_EXCEEDED` names its quota,
//! `PRECONDITION_FAILED` carries the room's last seq, `HandshakeOk` announces
//! the limits a client can trip, and `JoinOk` states the effective
//! `max_in_flight` and ack timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use roomq::config::{NamespaceConfig, Quotas};
use roomq_client::raw::Connection;
use roomq_client::{proto as pb, ClientError, ErrorCode};

fn detail(e: &ClientError) -> roomq_client::ErrorDetail {
    e.detail()
        .cloned()
        .unwrap_or_else(|| panic!("not a broker error: {e:?}"))
}

#[tokio::test]
async fn a_takeover_push_names_the_room_and_the_subscription() {
    let broker = TestBroker::start().await;
    let (first, mut first_d) = broker.connect("alice").await;
    first
        .join_with(pb::Join {
            room: "general".into(),
            subscription: "inbox".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (second, _d) = broker.connect("alice").await;
    second
        .join_with(pb::Join {
            room: "general".into(),
            subscription: "inbox".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = next_error(&mut first_d).await;
    assert_eq!(e.error_code(), Some(ErrorCode::MembershipTakenOver));
    assert_eq!(
        (e.room.as_str(), e.subscription.as_str()),
        ("general", "inbox")
    );
    assert!(!e.fatal);
    broker.stop().await;
}

#[tokio::test]
async fn a_deleted_rooms_push_names_the_membership() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, token) = admin_config(&dir);
    let broker = TestBroker::start_with(config, dir).await;
    let (member, mut member_d) = broker.connect("m").await;
    member.join("doomed").await.unwrap();
    let (admin, _a) = Connection::connect(broker.options().namespace("/admin").token(token))
        .await
        .unwrap();
    admin::delete_room(&admin, "/", "doomed").await.unwrap();
    let e = next_error(&mut member_d).await;
    assert_eq!(e.error_code(), Some(ErrorCode::NotFound));
    assert_eq!((e.room.as_str(), e.subscription.as_str()), ("doomed", ""));
    broker.stop().await;
}

#[tokio::test]
async fn quota_refusals_name_their_quota() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_memberships_per_session = 1;
    config.namespaces.insert(
        "/q".into(),
        NamespaceConfig {
            open: true,
            quotas: Quotas {
                max_message_bytes: 100,
                max_rooms: 1,
                publish_rate: 1,
                publish_burst: 3,
                ..Quotas::default()
            },
            ..NamespaceConfig::default()
        },
    );
    let broker = TestBroker::start_with(config, dir).await;
    let (c, _d) = broker.connect_ns("/q", "q").await;
    let quota = |r: Result<u64, ClientError>| detail(&r.unwrap_err()).quota;

    // The size check comes before the rate; the room quota after it.
    assert_eq!(
        quota(c.publish("a", "e", vec![0u8; 200]).await),
        "max_message_bytes"
    );
    c.publish("a", "e", "1").await.unwrap();
    assert_eq!(quota(c.publish("b", "e", "x").await), "max_rooms");
    // At one publish a second, ten quick ones cannot all pass, however
    // slowly this machine runs the test.
    let mut refusal = None;
    for i in 0..10 {
        if let Err(e) = c.publish("a", "e", format!("{i}")).await {
            refusal = Some(e);
            break;
        }
    }
    assert_eq!(detail(&refusal.expect("a refusal")).quota, "publish_rate");
    c.join("a").await.unwrap();
    let e = c.join("a2").await.unwrap_err();
    assert_eq!(detail(&e).quota, "max_memberships_per_session");
    broker.stop().await;
}

#[tokio::test]
async fn a_failed_precondition_carries_the_last_seq() {
    let broker = TestBroker::start().await;
    let (c, _d) = broker.connect("p").await;
    for _ in 0..3 {
        c.publish("r", "e", "x").await.unwrap();
    }
    let e = c
        .publish_with(pb::Publish {
            rooms: vec!["r".into()],
            event: "e".into(),
            payload: "y".into(),
            expected_last_seq: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PreconditionFailed));
    assert_eq!(detail(&e).last_seq, Some(3));
    broker.stop().await;
}

#[tokio::test]
async fn the_handshake_announces_limits_and_a_join_its_effective_settings() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_in_flight = 50;
    config.namespaces.insert(
        "/small".into(),
        NamespaceConfig {
            open: true,
            quotas: Quotas {
                max_message_bytes: 4096,
                ..Quotas::default()
            },
            ..NamespaceConfig::default()
        },
    );
    let limits = config.limits.clone();
    let broker = TestBroker::start_with(config, dir).await;
    let (c, _d) = broker.connect_ns("/small", "h").await;
    let l = c.limits().unwrap();
    assert_eq!(l.max_pending_bytes, limits.max_pending_bytes);
    assert_eq!(l.max_headers, limits.max_headers);
    assert_eq!(
        l.max_memberships_per_session,
        limits.max_memberships_per_session
    );
    assert_eq!(l.max_message_bytes, 4096);

    let ok = c
        .join_with(pb::Join {
            room: "r".into(),
            max_in_flight: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.max_in_flight, 50, "capped by limits.max_in_flight");
    assert_eq!(ok.ack_timeout_ms, limits.ack_timeout_ms, "the default");
    let ok = c
        .join_with(pb::Join {
            room: "s".into(),
            max_in_flight: 7,
            ack_timeout_ms: 1234,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((ok.max_in_flight, ok.ack_timeout_ms), (7, 1234));
    broker.stop().await;
}
