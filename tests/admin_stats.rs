//! The `/admin` `Stats` op (issue 14), over TCP and WebSocket: the same
//! figures as `/metrics`, with the rooms of the largest backlog (or the
//! highest publish rate) first, at most the number asked for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;

async fn stats(admin: &Client, max_rooms: u32, order: pb::StatsOrder) -> pb::BrokerStats {
    let op = pb::admin::Op::Stats(pb::AdminStats {
        max_rooms,
        order: order as i32,
    });
    admin.admin(op).await.unwrap().stats.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_backlogs_members_and_counters_over_tcp_and_websocket() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (config, token) = admin_config(&dir);
    let broker = TestBroker::start_ws(config, dir).await;

    // A durable member that reads nothing of `slow` (max_in_flight 1, no
    // ack), and a room nobody reads.
    let (w, mut wd) = broker.connect("worker").await;
    w.join_with(join("slow", pb::StartPosition::Earliest, 1, 60_000))
        .await
        .unwrap();
    let (p, _pd) = broker.connect("").await;
    for i in 0..5 {
        p.publish("slow", "e", format!("m{i}")).await.unwrap();
    }
    p.publish("quiet", "e", "x").await.unwrap();
    let d = next(&mut wd).await;
    assert_eq!(seq(&d), 1);

    let tcp = Client::connect(broker.options().namespace("/admin").token(&token))
        .await
        .unwrap()
        .0;
    let ws = Client::connect(broker.ws_options().namespace("/admin").token(&token))
        .await
        .unwrap()
        .0;
    for admin in [&tcp, &ws] {
        let s = stats(admin, 10, pb::StatsOrder::Backlog).await;
        assert_eq!(s.rooms_total, 2);
        let first = &s.rooms[0];
        assert_eq!(
            (first.namespace.as_str(), first.name.as_str()),
            ("/", "slow")
        );
        assert_eq!(first.backlog, 5, "{first:?}");
        assert_eq!(first.last_seq, 5);
        assert_eq!((first.members, first.connected_members), (1, 1));
        let root = s.namespaces.iter().find(|n| n.name == "/").unwrap();
        assert_eq!(root.published, 6);
        assert_eq!(root.deliveries, 1);
        assert_eq!(root.sessions, 2);
        assert_eq!(s.connections_tcp, 3);
        assert_eq!(s.connections_ws, 1);
        assert!(s.commit_flush_seconds.unwrap().count > 0);
        // At most what was asked.
        let one = stats(admin, 1, pb::StatsOrder::PublishRate).await;
        assert_eq!(one.rooms.len(), 1);
    }
    broker.stop().await;
}
