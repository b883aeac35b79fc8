//! Publish is confirmed with consecutive seqs per room, after storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::Bytes;
use common::*;
use roomq_client::{proto as pb, ErrorCode};

#[tokio::test]
async fn seqs_start_at_one_and_increase_by_one_per_room() {
    let broker = TestBroker::start().await;
    let (c, _d) = broker.connect("pub").await;
    for expected in 1..=5u64 {
        assert_eq!(c.publish("a", "e", "x").await.unwrap(), expected);
    }
    assert_eq!(c.publish("b", "e", "x").await.unwrap(), 1);
    let ok = c
        .publish_with(pb::Publish {
            rooms: vec!["a".into(), "b".into(), "c".into()],
            event: "e".into(),
            payload: Bytes::from_static(b"multi"),
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<(String, u64)> = ok.seqs.into_iter().map(|s| (s.room, s.seq)).collect();
    assert_eq!(
        seqs,
        vec![("a".into(), 6), ("b".into(), 2), ("c".into(), 1)]
    );
    assert_eq!(ok.durability, pb::Durability::Sync as i32);
    assert!(!ok.duplicate);
    broker.stop().await;
}

#[tokio::test]
async fn pipelined_publishes_from_one_connection_are_all_confirmed() {
    let broker = TestBroker::start().await;
    let (c, _d) = broker.connect("pub").await;
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.publish("room", "e", i.to_string()).await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    broker.stop().await;
}

#[tokio::test]
async fn invalid_publishes_get_typed_errors_and_the_session_survives() {
    let broker = TestBroker::start().await;
    let (c, _d) = broker.connect("pub").await;
    let cases = vec![
        (
            pb::Publish {
                rooms: vec![],
                event: "e".into(),
                ..Default::default()
            },
            ErrorCode::InvalidRequest,
        ),
        (
            pb::Publish {
                rooms: vec!["".into()],
                event: "e".into(),
                ..Default::default()
            },
            ErrorCode::InvalidName,
        ),
        (
            pb::Publish {
                rooms: vec!["a\u{7}".into()],
                event: "e".into(),
                ..Default::default()
            },
            ErrorCode::InvalidName,
        ),
        (
            pb::Publish {
                rooms: vec!["x".repeat(256)],
                event: "e".into(),
                ..Default::default()
            },
            ErrorCode::InvalidName,
        ),
        (
            pb::Publish {
                rooms: vec!["a".into()],
                event: "".into(),
                ..Default::default()
            },
            ErrorCode::InvalidName,
        ),
        (
            pb::Publish {
                rooms: vec!["a".into(), "a".into()],
                event: "e".into(),
                ..Default::default()
            },
            ErrorCode::InvalidRequest,
        ),
        (
            pb::Publish {
                rooms: vec!["a".into()],
                event: "e".into(),
                dedup_id: Bytes::from_static(b"short"),
                ..Default::default()
            },
            ErrorCode::InvalidRequest,
        ),
        (
            pb::Publish {
                rooms: vec!["a".into()],
                event: "e".into(),
                payload: Bytes::from(vec![0u8; 1024 * 1024 - 900]),
                ..Default::default()
            },
            ErrorCode::MessageTooLarge,
        ),
    ];
    for (p, code) in cases {
        let err = c.publish_with(p).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{err}");
    }
    // Nothing was stored by the refused publishes.
    assert_eq!(c.publish("a", "e", "ok").await.unwrap(), 1);
    broker.stop().await;
}
