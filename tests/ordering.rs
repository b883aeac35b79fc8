//! Per-member order under concurrent publishers (G3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_sees_seqs_in_order_and_each_publishers_messages_in_its_order() {
    let broker = TestBroker::start().await;
    let mut subs = Vec::new();
    for i in 0..3 {
        let (c, d) = broker.connect(&format!("sub{i}")).await;
        c.join("orders").await.unwrap();
        subs.push((c, d));
    }
    const PUBLISHERS: usize = 4;
    const EACH: usize = 250;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (c, _d) = broker.connect(&format!("pub{p}")).await;
        tasks.push(tokio::spawn(async move {
            let _keep = _d;
            for i in 0..EACH {
                // Publish with a small pipeline so batches interleave.
                c.publish("orders", "e", format!("{p}:{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (PUBLISHERS * EACH) as u64;
    for (c, d) in &mut subs {
        let mut last_per_publisher: HashMap<String, usize> = HashMap::new();
        for expected in 1..=total {
            let got = next(d).await;
            assert_eq!(seq(&got), expected, "gap or reordering");
            let text = String::from_utf8(payload(&got)).unwrap();
            let (p, i) = text.split_once(':').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some(prev) = last_per_publisher.insert(p.to_string(), i) {
                assert_eq!(i, prev + 1, "publisher {p} reordered");
            }
            if expected % 100 == 0 {
                c.ack_up_to(&got.room, &got.subscription, expected)
                    .await
                    .unwrap();
            }
        }
    }
    broker.stop().await;
}
