//! A broker storing its rooms in JetStream on three nats-servers with three
//! replicas keeps serving when the server leading its room's stream is
//! killed with `kill -9`: publishing goes on after NATS elects a new
//! leader, every confirmed message is delivered in order, and the killed
//! server catches up after its restart.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::nats::Nats;
use common::*;
use futures::StreamExt as _;
use roomq_client::proto as pb;

/// How long publishing goes on after the kill, at least.
const AFTER_KILL: Duration = Duration::from_secs(4);

/// Publishes confirmed before the kill, and at least after it.
const BEFORE: u64 = 200;
const AFTER: u64 = 200;

/// Most publishes in the test (a bound, so it always ends).
const MAX_PUBLISHES: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_no_confirmed_message() {
    let mut nats = tokio::task::spawn_blocking(|| Nats::start(3))
        .await
        .unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.storage.engine = roomq::storage::Engine::Jetstream;
    config.jetstream.urls = nats.urls();
    config.jetstream.replicas = 3;
    config.jetstream.prefix = "failover".to_string();
    // The JetStream meta leader is elected a moment after the servers are
    // healthy: a broker that starts before it fails at connect. Try again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let broker = loop {
        let b = TestBroker::start_with(config.clone(), dir.clone()).await;
        let (c, _d) = match tokio::time::timeout(Duration::from_secs(5), async {
            roomq_client::raw::Connection::connect(b.options().client_id("probe")).await
        })
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the broker did not start on JetStream"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if c.publish("warmup", "e", "x").await.is_ok() {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not start on JetStream"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let (p, _pd) = broker.connect("writer").await;
    let mut confirmed: Vec<(u64, Bytes)> = Vec::new();
    let publish = |n: u64| pb::Publish {
        rooms: vec!["log".into()],
        event: "e".into(),
        payload: Bytes::from(format!("m{n}")),
        dedup_id: Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes()),
        ..Default::default()
    };
    let mut n = 0;
    for _ in 0..BEFORE {
        n += 1;
        let ok = p.publish_with(publish(n)).await.unwrap();
        confirmed.push((ok.seqs[0].seq, Bytes::from(format!("m{n}"))));
    }

    // Kill the server that leads the room's stream.
    let client = async_nats::connect(nats.url(0)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let stream_name = names
        .into_iter()
        .find(|s| s.starts_with("failover_ns_"))
        .expect("the namespace's stream");
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap();
    let victim: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    drop(js);
    nats.kill9(victim);
    let killed_at = Instant::now();

    // Go on publishing; a publish may wait out the election. A retry with
    // the same dedup id is what the SDKs do after an error.
    let mut longest_wait = Duration::ZERO;
    while (killed_at.elapsed() < AFTER_KILL || n < BEFORE + AFTER) && n < MAX_PUBLISHES {
        n += 1;
        let request = publish(n);
        let sent = Instant::now();
        let ok = loop {
            match tokio::time::timeout(WAIT, p.publish_with(request.clone())).await {
                Ok(Ok(ok)) => break ok,
                Ok(Err(e)) => {
                    assert!(sent.elapsed() < WAIT, "publishing did not resume: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => panic!("a publish neither confirmed nor refused within {WAIT:?}"),
            }
        };
        longest_wait = longest_wait.max(sent.elapsed());
        confirmed.push((ok.seqs[0].seq, Bytes::from(format!("m{n}"))));
    }
    eprintln!(
        "{} publishes confirmed, {} after the kill; longest confirm {longest_wait:?}",
        confirmed.len(),
        n - BEFORE
    );

    // Every confirmed message, once, in order, with its payload.
    let (c, mut d) = broker.connect("reader").await;
    c.join_with(join("log", pb::StartPosition::Earliest, 1000, 60_000))
        .await
        .unwrap();
    for (want_seq, want_payload) in &confirmed {
        let got = next(&mut d).await;
        assert_eq!(seq(&got), *want_seq);
        assert_eq!(payload(&got), want_payload.to_vec());
    }
    drop((c, d, p, _pd));
    broker.stop().await;

    // The killed server catches up.
    let nats = tokio::task::spawn_blocking(move || {
        nats.restart(victim);
        nats
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream.info().await.unwrap().clone();
        let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
        if replicas.len() == 2 && replicas.iter().all(|r| r.current && !r.offline) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server did not catch up: {replicas:?}; {}",
            nats.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
