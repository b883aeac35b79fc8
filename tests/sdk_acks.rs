//! The Rust SDK's coalesced acks against a real broker: the acks of a
//! moment reach it as one `Ack` request (counted by `roomq_acks_total`),
//! acks made just before `close()` are stored (the cursor survives a
//! restart), a held message below acked ones stays unacknowledged, and
//! acks that were still queued when the connection broke are completed by
//! the redelivery after the reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::ws::exchange;
use common::*;
use roomq_client::proto as pb;
use roomq_client::{Client, Delivery, JoinOptions, Start, Subscription};

/// A client whose acks are sent only when something asks for it (leave,
/// close, `flush_acks`) or a quarter of `max_in_flight` is waiting: the
/// timer never fires within a test.
async fn lazy_acker(addr: &str, client_id: &str) -> Client {
    Client::builder(addr)
        .client_id(client_id)
        .ack_flush(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap()
}

async fn next_delivery(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery within the wait")
        .expect("subscription open")
}

/// `roomq_acks_total` of namespace `/`, from `/metrics`.
async fn acks_total(broker: &TestBroker) -> u64 {
    let http = broker.http_addr();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    let r = exchange(http, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    r.body_text()
        .lines()
        .find(|l| l.starts_with("roomq_acks_total{") && l.contains(r#"namespace="/""#))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// The stored cursor of `client_id`'s durable membership of `room`, read by
/// joining it again on a protocol-level connection.
async fn stored_cursor(broker: &TestBroker, client_id: &str, room: &str) -> pb::JoinOk {
    let (conn, _) = broker.connect(client_id).await;
    conn.join_with(join(room, pb::StartPosition::Resume, 0, 0))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_acks_of_a_moment_reach_the_broker_as_one_request() {
    let broker = TestBroker::start_ws_default().await;
    let client = lazy_acker(&broker.addr.to_string(), "reader").await;
    for i in 0..200 {
        client.publish("r", "e", format!("{i}")).await.unwrap();
    }
    // max_in_flight 1000: a frame would go at 250 waiting acks.
    let mut sub = client
        .join("r", JoinOptions::new().start(Start::Earliest))
        .await
        .unwrap();
    let before = acks_total(&broker).await;
    for seq in 1..=200 {
        let d = next_delivery(&mut sub).await;
        assert_eq!(d.seq, seq);
        d.ack().await.unwrap();
    }
    assert_eq!(acks_total(&broker).await, before, "nothing sent yet");
    sub.flush_acks().await.unwrap();
    assert_eq!(acks_total(&broker).await, before + 1, "one Ack request");
    client.close().await;
    assert_eq!(stored_cursor(&broker, "reader", "r").await.next_seq, 201);
    broker.stop().await;
}

#[tokio::test]
async fn acks_made_just_before_close_are_stored_and_a_held_one_is_not_covered() {
    let broker = TestBroker::start().await;
    let client = lazy_acker(&broker.addr.to_string(), "reader").await;
    for i in 1..=5 {
        client.publish("r", "e", format!("{i}")).await.unwrap();
    }
    let mut sub = client
        .join("r", JoinOptions::new().start(Start::Earliest))
        .await
        .unwrap();
    let mut held = None;
    for seq in 1..=5 {
        let d = next_delivery(&mut sub).await;
        if seq == 2 {
            held = Some(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    // Closed with 2 still held: 1, 3, 4 and 5 are sent, 2 is not.
    client.close().await;
    drop(held);
    let broker = broker.restart().await;
    let ok = stored_cursor(&broker, "reader", "r").await;
    assert_eq!((ok.next_seq, ok.last_seq), (2, 5));

    // Only 2 comes back: 3..=5 were acknowledged one by one.
    let client = lazy_acker(&broker.addr.to_string(), "reader").await;
    let mut sub = client.join("r", JoinOptions::new()).await.unwrap();
    let d = next_delivery(&mut sub).await;
    assert_eq!(d.seq, 2);
    d.ack().await.unwrap();
    client.publish("r", "e", "6").await.unwrap();
    // Held, not acked, when the subscription leaves.
    assert_eq!(next_delivery(&mut sub).await.seq, 6);
    sub.leave().await.unwrap();
    client.close().await;
    assert_eq!(stored_cursor(&broker, "reader", "r").await.next_seq, 6);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_queued_when_the_connection_breaks_are_completed_by_the_redelivery() {
    let broker = TestBroker::start().await;
    let addr = broker.addr.to_string();
    let client = lazy_acker(&addr, "reader").await;
    for i in 1..=5 {
        client.publish("r", "e", format!("{i}")).await.unwrap();
    }
    let mut sub = client
        .join("r", JoinOptions::new().start(Start::Earliest))
        .await
        .unwrap();
    for seq in 1..=5 {
        let d = next_delivery(&mut sub).await;
        assert_eq!(d.seq, seq);
        d.ack().await.unwrap();
    }
    // The acks are still queued: the restart loses them, and the broker
    // redelivers 1..=5 after the reconnect. The SDK acks those copies
    // itself; the application does not see them again.
    let broker = broker.restart_same_port().await;
    client.publish("r", "e", "6").await.unwrap();
    let d = next_delivery(&mut sub).await;
    assert_eq!(d.seq, 6, "an acked message was handed over again");
    d.ack().await.unwrap();
    sub.flush_acks().await.unwrap();
    client.close().await;
    let ok = stored_cursor(&broker, "reader", "r").await;
    assert_eq!((ok.next_seq, ok.last_seq), (7, 6));
    broker.stop().await;
}
