//! `kill -9` of the real `roomqd` process while publishes are in flight: every
//! confirmed message is there after the restart, sequences stay gapless, and
//! a durable cursor never moves past what was acknowledged or past the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{payload, seq, Daemon, WAIT};
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection as Client};

async fn connect(addr: SocketAddr, client_id: &str) -> (Client, roomq_client::Deliveries) {
    Client::connect(ConnectOptions::new(addr.to_string()).client_id(client_id))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill() {
    const CYCLES: usize = 3;
    const PUBLISHERS: usize = 32;
    const CONFIRMED_BEFORE_KILL: usize = 400;

    let dir = tempfile::tempdir().unwrap();
    let confirmed: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let mut acked_through = 0u64;

    for cycle in 0..CYCLES {
        let daemon = Daemon::start(dir.path());

        // A durable reader acks what it gets, so cursors are written too.
        let (reader, mut reader_d) = connect(daemon.addr, "reader").await;
        let ok = reader.join("log").await.unwrap();
        assert!(
            ok.next_seq <= acked_through + 1,
            "cursor {} moved past the acknowledged {acked_through}",
            ok.next_seq
        );
        assert!(ok.next_seq <= ok.last_seq + 1, "cursor past the log");
        let ack_task = tokio::spawn(async move {
            // The highest seq an ack was sent for: the broker may store an
            // ack and be killed before its reply leaves, so an unanswered
            // ack still counts.
            let mut high = 0;
            while let Some(d) = reader_d.next_delivery().await {
                high = seq(&d);
                if reader
                    .ack_up_to(&d.room, &d.subscription, seq(&d))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            high
        });

        let (p, _pd) = connect(daemon.addr, "writer").await;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..PUBLISHERS {
            let (p, confirmed, count) = (p.clone(), confirmed.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let body = format!("c{cycle}-t{t}-{i}").into_bytes();
                    match p.publish("log", "e", body.clone()).await {
                        Ok(_) => {
                            confirmed.lock().unwrap().insert(body);
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while count.load(std::sync::atomic::Ordering::Relaxed) < CONFIRMED_BEFORE_KILL {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing too slow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Kill in the middle of the stream of publishes.
        daemon.kill9();
        for t in tasks {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
        acked_through =
            acked_through.max(tokio::time::timeout(WAIT, ack_task).await.unwrap().unwrap());
    }

    // Read the whole log back after the last crash.
    let daemon = Daemon::start(dir.path());
    let (c, mut d) = connect(daemon.addr, "verifier").await;
    let ok = c
        .join_with(pb::Join {
            room: "log".into(),
            start: pb::StartPosition::Earliest as i32,
            max_in_flight: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = HashSet::new();
    for expected in 1..=ok.last_seq {
        let got = tokio::time::timeout(WAIT, d.next_delivery())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq(&got), expected, "sequence has a gap or is out of order");
        assert!(stored.insert(payload(&got)), "a message was stored twice");
        if expected % 500 == 0 {
            c.ack_up_to("log", "", expected).await.unwrap();
        }
    }
    let confirmed = confirmed.lock().unwrap();
    let lost: Vec<_> = confirmed.difference(&stored).collect();
    assert!(lost.is_empty(), "{} confirmed messages lost", lost.len());
    assert!(confirmed.len() >= CYCLES * CONFIRMED_BEFORE_KILL);
    daemon.kill9();
}

/// A new durable member must not be forgotten by a crash that follows a
/// confirmed publish, even though acks are otherwise written lazily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_member_survives_a_crash_right_after_a_confirmed_publish() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let (p, _pd) = connect(daemon.addr, "writer").await;
    p.publish("news", "e", "before the join").await.unwrap();
    // A new durable member that starts at the end of the room.
    let (late, _ld) = connect(daemon.addr, "late").await;
    let ok = late.join("news").await.unwrap();
    assert_eq!(ok.next_seq, 2);
    // Confirmed right after the join, then the broker dies at once, well
    // inside the interval at which cursors are otherwise written.
    p.publish("news", "e", "after the join").await.unwrap();
    daemon.kill9();

    let daemon = Daemon::start(dir.path());
    let (late, mut late_d) = connect(daemon.addr, "late").await;
    assert!(late.resumed(), "the membership was forgotten");
    let ok = late.join("news").await.unwrap();
    assert_eq!(ok.next_seq, 2);
    let got = tokio::time::timeout(WAIT, late_d.next_delivery())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload(&got), b"after the join");
    daemon.kill9();
}

/// A free loopback port for a daemon that must come back on the same one.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The SDK across `kill -9`: the application publishes 1..=N and reads them
/// back in order, exactly once each, while the broker is killed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_hides_sigkill_from_the_application() {
    const TOTAL: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = Daemon::start_on(dir.path(), port);
    let addr = format!("127.0.0.1:{port}");
    let publisher = roomq_client::Client::builder(addr.clone())
        .client_id("p")
        .connect()
        .await
        .unwrap();
    let subscriber = roomq_client::Client::builder(addr)
        .client_id("s")
        .connect()
        .await
        .unwrap();
    let mut sub = subscriber
        .join("ledger", roomq_client::JoinOptions::new().max_in_flight(20))
        .await
        .unwrap();
    let publishing = tokio::spawn(async move {
        for i in 1..=TOTAL {
            publisher
                .publish("ledger", "entry", format!("{i}"))
                .await
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    let mut kills = 0;
    while (seen.len() as u64) < TOTAL {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(
            String::from_utf8(d.payload.to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        d.ack().await.unwrap();
        if kills < 2 && seen.len() as u64 == (kills + 1) * TOTAL / 3 {
            daemon.kill9();
            daemon = Daemon::start_on(dir.path(), port);
            kills += 1;
        }
    }
    tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    daemon.kill9();
}
