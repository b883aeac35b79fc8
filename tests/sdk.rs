//! The client SDK against a real broker: round trip, dedup on retry, many
//! publishes in flight from one task, and — the point of it all — a client
//! that lives through broker restarts in the middle of publishing and
//! subscribing without losing or duplicating anything the application sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use futures::StreamExt;
use roomq_client::{Client, ErrorCode, Event, JoinOptions, Start};
use std::collections::BTreeSet;
use std::time::Duration;

async fn sdk(broker: &TestBroker, client_id: &str) -> Client {
    Client::builder(broker.addr.to_string())
        .client_id(client_id)
        .connect()
        .await
        .unwrap()
}

async fn next_delivery(sub: &mut roomq_client::Subscription) -> roomq_client::Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery within the wait")
        .expect("subscription open")
}

#[tokio::test]
async fn round_trip() {
    let broker = TestBroker::start().await;
    let alice = sdk(&broker, "alice").await;
    let bob = sdk(&broker, "bob").await;
    let mut sub = bob.join("general", JoinOptions::new()).await.unwrap();
    assert!(sub.is_durable());
    assert_eq!(sub.durable_name(), "bob");

    let ok = alice
        .message("chat message", "hello bob")
        .to("general")
        .header("lang", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.seq(), 1);
    assert!(ok.durable_on_disk);
    let d = next_delivery(&mut sub).await;
    assert_eq!(
        (d.seq, d.event.as_str(), &d.payload[..]),
        (1, "chat message", &b"hello bob"[..])
    );
    assert_eq!(d.headers.get("lang").map(String::as_str), Some("en"));
    assert_eq!(d.publisher_session, alice.session_id());
    d.ack().await.unwrap();

    // except_self: Bob's broadcast reaches Alice's room membership, not his own.
    let mut alice_sub = alice
        .join("general", JoinOptions::new().start(Start::New))
        .await
        .unwrap();
    bob.message("chat message", "hi all but me")
        .to("general")
        .except_self()
        .send()
        .await
        .unwrap();
    let d = next_delivery(&mut alice_sub).await;
    assert_eq!(&d.payload[..], b"hi all but me");
    d.ack().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
        .await
        .is_err());

    let rooms = bob.rooms().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].last_seq, 2);
    sub.leave().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn an_explicit_dedup_id_is_stored_once() {
    let broker = TestBroker::start().await;
    let client = sdk(&broker, "pub").await;
    let id = uuid::Uuid::now_v7();
    let first = client
        .message("e", "x")
        .to("r")
        .dedup_id(id)
        .send()
        .await
        .unwrap();
    let retry = client
        .message("e", "x")
        .to("r")
        .dedup_id(id)
        .send()
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(first.seqs, retry.seqs);
    assert_eq!(client.publish("r", "e", "y").await.unwrap().seq(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn one_task_keeps_many_publishes_in_flight() {
    let broker = TestBroker::start().await;
    for window in [1usize, 64] {
        let client = Client::builder(broker.addr.to_string())
            .publish_window(window)
            .connect()
            .await
            .unwrap();
        let room = format!("w{window}");
        let seqs: Vec<u64> = futures::stream::iter(0..300)
            .map(|i| {
                let (client, room) = (client.clone(), room.clone());
                async move {
                    client
                        .publish(&room, "e", format!("{i}"))
                        .await
                        .unwrap()
                        .seq()
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(distinct, (1..=300).collect(), "window {window}");
        if window == 1 {
            // One publish at a time: confirmations come back in seq order.
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn invalid_requests_surface_the_broker_code() {
    let broker = TestBroker::start().await;
    let client = sdk(&broker, "c").await;
    let err = client.publish("bad\u{1}room", "e", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidName));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lives_through_broker_restarts_without_loss_or_duplicates() {
    const TOTAL: u64 = 600;
    let mut broker = TestBroker::start().await;
    let publisher = sdk(&broker, "publisher").await;
    let subscriber = sdk(&broker, "subscriber").await;
    let mut events = subscriber.events();
    let mut sub = subscriber
        .join("ledger", JoinOptions::new().max_in_flight(50))
        .await
        .unwrap();

    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 1..=TOTAL {
            let ok = publisher
                .publish("ledger", "entry", format!("{i}"))
                .await
                .unwrap();
            seqs.push(ok.seq());
        }
        seqs
    });

    let mut seen = Vec::new();
    let mut restarts = 0;
    while (seen.len() as u64) < TOTAL {
        let d = next_delivery(&mut sub).await;
        seen.push(
            String::from_utf8(d.payload.to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        d.ack().await.unwrap();
        if restarts < 2 && seen.len() as u64 == (restarts + 1) * TOTAL / 3 {
            broker = broker.restart_same_port().await;
            restarts += 1;
        }
    }
    let confirmed = tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(restarts, 2);
    // Every publish confirmed exactly once, each stored once, in order.
    assert_eq!(confirmed, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_err());

    let mut saw = (false, false, false);
    while let Ok(e) = events.try_recv() {
        match e {
            Event::Disconnected { .. } => saw.0 = true,
            Event::Connected {
                reconnected: true,
                resumed: true,
                ..
            } => saw.1 = true,
            Event::Resumed { room, .. } if room == "ledger" => saw.2 = true,
            _ => {}
        }
    }
    assert_eq!(saw, (true, true, true), "reconnect events");
    broker.stop().await;
}

#[tokio::test]
async fn auto_ack_and_ephemeral_subscriptions() {
    let broker = TestBroker::start().await;
    let client = sdk(&broker, "c").await;
    client.publish("r", "e", "old").await.unwrap();
    let mut live = client
        .join("r", JoinOptions::new().ephemeral().auto_ack())
        .await
        .unwrap();
    assert!(!live.is_durable());
    client.publish("r", "e", "new").await.unwrap();
    let d = next_delivery(&mut live).await;
    assert_eq!(&d.payload[..], b"new");
    drop(d);
    // Auto-acked: not redelivered even though the application did not ack.
    let mut durable = client
        .join(
            "r",
            JoinOptions::new()
                .durable("reader")
                .start(Start::Earliest)
                .auto_ack(),
        )
        .await
        .unwrap();
    assert_eq!(next_delivery(&mut durable).await.seq, 1);
    assert_eq!(next_delivery(&mut durable).await.seq, 2);
    durable.leave().await.unwrap();
    let mut durable = client
        .join("r", JoinOptions::new().durable("reader"))
        .await
        .unwrap();
    assert_eq!(durable.next_seq_at_join(), 3);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), durable.next())
            .await
            .is_err()
    );
    broker.stop().await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let broker = TestBroker::start().await;
    let client = sdk(&broker, "short-lived").await;
    let mut events = client.events();
    let sub = client.join("r", JoinOptions::new()).await.unwrap();
    drop(client);
    // The subscription keeps the client alive.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), events.recv())
            .await
            .is_err()
    );
    drop(sub);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Closed) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the supervisor did not stop");
    broker.stop().await;
}

#[tokio::test]
async fn expected_last_seq_is_optimistic_concurrency() {
    let broker = TestBroker::start().await;
    let client = sdk(&broker, "writer").await;
    let first = client
        .message("e", "a")
        .to("r")
        .expect_last_seq(0)
        .send()
        .await
        .unwrap();
    assert_eq!(first.seq(), 1);
    // Someone else's view of the room is stale now.
    let err = client
        .message("e", "b")
        .to("r")
        .expect_last_seq(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed), "{err}");
    assert_eq!(
        client
            .message("e", "b")
            .to("r")
            .expect_last_seq(1)
            .send()
            .await
            .unwrap()
            .seq(),
        2
    );
    // A retry of a stored publish gets its original seq, whatever the room did since.
    let retry = client
        .message("e", "a")
        .to("r")
        .expect_last_seq(0)
        .dedup_id(first.dedup_id)
        .send()
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq(), 1);
    let err = client
        .message("e", "x")
        .to("r")
        .to("s")
        .expect_last_seq(2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    broker.stop().await;
}
