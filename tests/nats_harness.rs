//! The nats-server harness the JetStream engine's tests stand on: three
//! servers with routes come up with JetStream, keep a three-replica stream
//! writable when one of them is killed with `kill -9`, and the killed one
//! catches up after a restart.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::nats::Nats;

/// Retries `f` every 100 ms until it succeeds or `limit` passes.
async fn retry<T, E: std::fmt::Debug, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {limit:?}: {e:?}"),
        }
    }
}

async fn publish(js: &jetstream::Context, subject: &str, n: u64) -> u64 {
    let ack = js
        .publish(subject.to_string(), n.to_string().into())
        .await
        .expect("publish sent")
        .await
        .expect("publish acknowledged");
    ack.sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_keep_a_replicated_stream_through_a_kill_and_a_restart() {
    let mut nats = tokio::task::spawn_blocking(|| Nats::start(3))
        .await
        .unwrap();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url(0))
        .await
        .expect("connect to n1");
    let js = jetstream::new(client);
    // The meta leader is elected a moment after the servers are healthy.
    let config = stream::Config {
        name: "harness".to_string(),
        subjects: vec!["harness.>".to_string()],
        num_replicas: 3,
        ..Default::default()
    };
    let mut s = retry("create an R3 stream", Duration::from_secs(30), || {
        js.get_or_create_stream(config.clone())
    })
    .await;
    let mut last = 0;
    for n in 1..=10 {
        last = publish(&js, "harness.a", n).await;
    }
    assert_eq!(last, 10);

    // Kill a server that is not the one the client is connected to, and
    // preferably the stream's leader, so that a new one is elected.
    let info = s.info().await.expect("stream info").clone();
    let leader = info.cluster.and_then(|c| c.leader).unwrap_or_default();
    let victim = match leader.as_str() {
        "n2" => 1,
        _ => 2,
    };
    nats.kill9(victim);
    let mut n = 10;
    let after_kill = retry(
        "publish with one server dead",
        Duration::from_secs(30),
        || {
            n += 1;
            let js = js.clone();
            let value = n;
            async move {
                js.publish("harness.a", value.to_string().into())
                    .await?
                    .await
                    .map(|ack| ack.sequence)
                    .map_err(async_nats::Error::from)
            }
        },
    )
    .await;
    assert!(
        after_kill > 10,
        "the stream took new messages: {after_kill}"
    );

    let nats = tokio::task::spawn_blocking(move || {
        nats.restart(victim);
        nats
    })
    .await
    .unwrap();
    // Every replica current again: the restarted one caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = s.info().await.expect("stream info").clone();
        let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
        let all_current = replicas.len() == 2 && replicas.iter().all(|r| r.current && !r.offline);
        if all_current && info.state.messages == after_kill {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server did not catch up: {replicas:?}, {} messages; log: {}",
            info.state.messages,
            nats.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
