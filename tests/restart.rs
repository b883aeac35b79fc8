//! Confirmed messages, cursors, unacked deliveries and dedup ids survive a
//! broker restart on the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::Bytes;
use common::*;
use roomq_client::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn messages_cursors_and_unacked_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (c, mut d) = broker.connect("reader").await;
    c.join_with(join("log", pb::StartPosition::Earliest, 100, 3_600_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("writer").await;
    for i in 1..=10 {
        p.publish("log", "e", format!("m{i}")).await.unwrap();
    }
    p.publish("other", "e", "x").await.unwrap();
    for i in 1..=10 {
        assert_eq!(seq(&next(&mut d).await), i);
    }
    c.ack_up_to("log", "", 4).await.unwrap();
    c.ack("log", "", &[6]).await.unwrap();
    drop((c, d, p, _pd));

    let broker = broker.restart().await;
    let (p, _pd) = broker.connect("writer").await;
    // Sequences continue where they were.
    assert_eq!(p.publish("log", "e", "m11").await.unwrap(), 11);
    assert_eq!(p.publish("other", "e", "y").await.unwrap(), 2);

    let (c, mut d) = broker.connect("reader").await;
    assert!(c.resumed());
    let ok = c.join("log").await.unwrap();
    assert_eq!(ok.next_seq, 5);
    assert_eq!(ok.last_seq, 11);
    // Unacked 5, 7..=10 come back flagged, in order; 6 was acked; then 11.
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = next(&mut d).await;
        got.push((seq(&m), m.redelivered, payload(&m)));
    }
    let expected: Vec<(u64, bool, Vec<u8>)> = [5, 7, 8, 9, 10]
        .iter()
        .map(|s| (*s, true, format!("m{s}").into_bytes()))
        .chain(std::iter::once((11, false, b"m11".to_vec())))
        .collect();
    assert_eq!(got, expected);
    assert_quiet(&mut d, Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn dedup_ids_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("writer").await;
    let id = Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    let publish = pb::Publish {
        rooms: vec!["a".into(), "b".into()],
        event: "e".into(),
        payload: Bytes::from_static(b"once"),
        dedup_id: id.clone(),
        ..Default::default()
    };
    let first = p.publish_with(publish.clone()).await.unwrap();
    assert!(!first.duplicate);
    let retry = p.publish_with(publish.clone()).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seqs, first.seqs);
    drop((p, _pd));

    let broker = broker.restart().await;
    let (p, _pd) = broker.connect("writer").await;
    let retry = p.publish_with(publish.clone()).await.unwrap();
    assert!(
        retry.duplicate,
        "the dedup id was forgotten across the restart"
    );
    assert_eq!(retry.seqs, first.seqs);
    // Nothing new was stored: the next message gets seq 2.
    assert_eq!(p.publish("a", "e", "next").await.unwrap(), 2);

    let (c, mut d) = broker.connect("reader").await;
    c.join_with(join("a", pb::StartPosition::Earliest, 100, 0))
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut d).await), b"once");
    assert_eq!(payload(&next(&mut d).await), b"next");
    assert_quiet(&mut d, Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn concurrent_retries_of_one_dedup_id_store_it_once() {
    let broker = TestBroker::start().await;
    let (p, _pd) = broker.connect("writer").await;
    let id = Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    let publish = pb::Publish {
        rooms: vec!["a".into()],
        event: "e".into(),
        payload: Bytes::from_static(b"once"),
        dedup_id: id,
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (p, publish) = (p.clone(), publish.clone());
        tasks.push(tokio::spawn(async move {
            p.publish_with(publish).await.unwrap()
        }));
    }
    let mut originals = 0;
    for t in tasks {
        let ok = t.await.unwrap();
        assert_eq!(ok.seqs[0].seq, 1);
        originals += usize::from(!ok.duplicate);
    }
    assert_eq!(originals, 1);
    assert_eq!(p.publish("a", "e", "next").await.unwrap(), 2);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dedup_ids_expire_after_the_window() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let broker = TestBroker::start_with(paused_config(&dir), dir).await;
    let (p, _pd) = broker.connect("writer").await;
    let publish = pb::Publish {
        rooms: vec!["a".into()],
        event: "e".into(),
        dedup_id: Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes()),
        ..Default::default()
    };
    assert!(!p.publish_with(publish.clone()).await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(p.publish_with(publish.clone()).await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let late = p.publish_with(publish).await.unwrap();
    assert!(!late.duplicate, "remembered past the 2-minute window");
    assert_eq!(late.seqs[0].seq, 2);
    broker.stop().await;
}
