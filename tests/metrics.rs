//! `/metrics` (issue 14): scraped from an in-process broker and parsed with
//! a Prometheus text-format parser (and, when asked for, as OpenMetrics,
//! parsed by an OpenMetrics parser). Counters move with traffic (publishes,
//! deliveries, redeliveries after an ack timeout, dead letters, acks,
//! refused handshakes); the series count stays bounded however many rooms
//! and namespaces exist; the bearer token is enforced when set; the switch
//! turns the endpoint off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::ws::*;
use common::*;
use prometheus_parse::{Sample, Scrape, Value};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;

/// `GET /metrics`, with a bearer token if given.
async fn scrape_raw(http: SocketAddr, token: Option<&str>) -> HttpResponse {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\n{auth}Connection: close\r\n\r\n");
    exchange(http, req.as_bytes()).await.unwrap()
}

async fn scrape(http: SocketAddr) -> Scrape {
    let r = scrape_raw(http, None).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    let text = r.body_text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

/// The value of `metric` whose labels include `labels` (0 when absent).
fn get(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic() {
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let before = scrape(http).await;
    assert_eq!(get(&before, "roomq_messages_published_total", &[]), 0.0);
    // The process collector's names.
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }

    let ns = [("namespace", "/orders")];
    let (w, mut wd) = broker.connect_ns("/orders", "worker").await;
    // One message at a time, a 100 ms ack timeout, two deliveries at most.
    w.join_with(pb::Join {
        max_deliveries: Some(2),
        ..join("jobs", pb::StartPosition::Earliest, 1, 100)
    })
    .await
    .unwrap();
    let (p, _pd) = broker.connect_ns("/orders", "").await;
    p.publish("jobs", "job", "never acked").await.unwrap();
    p.publish("jobs", "job", "acked").await.unwrap();
    // Seq 1 twice (the second after the ack timeout), then seq 2.
    let d = next(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (1, 1));
    let d = next(&mut wd).await;
    assert_eq!((seq(&d), d.attempt, d.redelivered), (1, 2, true));
    let d = next(&mut wd).await;
    assert_eq!((seq(&d), d.attempt), (2, 1));
    w.ack("jobs", "", &[2]).await.unwrap();
    // A publish with a dedup id seen before.
    let dedup = Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    for _ in 0..2 {
        p.publish_with(pb::Publish {
            rooms: vec!["other".into()],
            event: "e".into(),
            payload: Bytes::from_static(b"x"),
            dedup_id: dedup.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A handshake to a namespace that does not exist.
    let refused = Client::connect(broker.options().namespace("/nowhere")).await;
    assert!(refused.is_err());

    let s = scrape(http).await;
    assert_eq!(get(&s, "roomq_messages_published_total", &ns), 3.0);
    assert!(get(&s, "roomq_messages_stored_bytes_total", &ns) > 0.0);
    assert_eq!(get(&s, "roomq_publish_duplicates_total", &ns), 1.0);
    assert_eq!(get(&s, "roomq_deliveries_total", &ns), 3.0);
    assert_eq!(get(&s, "roomq_redeliveries_total", &ns), 1.0);
    assert_eq!(get(&s, "roomq_acks_total", &ns), 1.0);
    assert_eq!(
        get(
            &s,
            "roomq_handshakes_refused_total",
            &[("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert!(get(&s, "roomq_errors_total", &[("code", "NOT_FOUND")]) >= 1.0);
    // Sessions and connections: the worker and the publisher.
    assert_eq!(get(&s, "roomq_sessions", &ns), 2.0);
    assert_eq!(get(&s, "roomq_connections", &[("transport", "tcp")]), 2.0);
    assert!(get(&s, "roomq_rooms", &ns) >= 2.0);
    // Histograms were observed.
    for h in [
        "roomq_commit_flush_seconds_count",
        "roomq_commit_batch_messages_count",
        "roomq_publish_confirm_seconds_count",
        "roomq_delivery_lag_seconds_count",
    ] {
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric.starts_with(h.trim_end_matches("_count"))),
            "{h} missing"
        );
    }

    // The second delivery of seq 1 times out too: it is dead-lettered.
    eventually("the dead letter is counted", || async {
        let s = scrape(http).await;
        get(
            &s,
            "roomq_dead_lettered_total",
            &[("namespace", "/orders"), ("reason", "ack_timeout")],
        ) == 1.0
    })
    .await;
    let s = scrape(http).await;
    // The room's backlog: seq 1 is gone to the dead-letter room, seq 2 is
    // acked.
    assert_eq!(
        get(
            &s,
            "roomq_room_backlog_messages",
            &[("namespace", "/orders"), ("room", "jobs")]
        ),
        0.0
    );
    broker.stop().await;
}

/// What Prometheus 2.x sends by default: OpenMetrics first.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraper_that_asks_for_openmetrics_gets_it_with_the_same_figures() {
    use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
    let broker = TestBroker::start_ws_default().await;
    let http = broker.http_addr();
    let (p, _pd) = broker.connect("").await;
    for i in 0..3 {
        p.publish("om", "e", format!("m{i}")).await.unwrap();
    }
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
    );
    let r = exchange(http, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text; version=1.0.0")),
        "{r:?}"
    );
    let text = r.body_text();
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"));
    let family = |name: &str| {
        exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    // Counters are families without the suffix their samples carry.
    let published = family("roomq_messages_published");
    assert!(matches!(published.family_type, OpenMetricsType::Counter));
    let total: f64 = published
        .iter_samples()
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("not a counter: {other:?}"),
        })
        .sum();
    assert_eq!(total, 3.0);
    // A histogram with its buckets, and the process collector's figures.
    let flush = family("roomq_commit_flush_seconds");
    assert!(matches!(flush.family_type, OpenMetricsType::Histogram));
    let observed: u64 = flush
        .iter_samples()
        .map(|s| match &s.value {
            OpenMetricsValue::Histogram(h) => {
                assert!(!h.buckets.is_empty());
                h.count.unwrap_or(0)
            }
            other => panic!("not a histogram: {other:?}"),
        })
        .sum();
    assert!(observed >= 1, "no flush observed");
    assert!(matches!(
        family("process_cpu_seconds").family_type,
        OpenMetricsType::Counter
    ));
    assert!(matches!(
        family("process_resident_memory_bytes").family_type,
        OpenMetricsType::Gauge
    ));
    // The same figures in the default format.
    let s = scrape(http).await;
    assert_eq!(get(&s, "roomq_messages_published_total", &[]), 3.0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms_and_many_namespaces_stay_within_a_bounded_series_count() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.metrics.max_namespace_series = 3;
    config.metrics.max_room_series = 50;
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();
    let baseline = scrape(http).await.samples.len();

    // 10,000 rooms, 64 per publish, from every configured namespace.
    let (p, _pd) = broker.connect("").await;
    let names: Vec<String> = (0..10_000).map(|i| format!("room-{i}")).collect();
    let publishes = names.chunks(64).map(|rooms| {
        p.publish_with(pb::Publish {
            rooms: rooms.to_vec(),
            event: "e".into(),
            payload: Bytes::from_static(b"x"),
            ..Default::default()
        })
    });
    for r in futures::future::join_all(publishes).await {
        r.unwrap();
    }
    let mut clients = Vec::new();
    for ns in ["/a", "/ab", "/orders", "/other", "/users"] {
        let (c, d) = broker.connect_ns(ns, "").await;
        c.publish("r", "e", "x").await.unwrap();
        clients.push((c, d));
    }

    let s = scrape(http).await;
    let backlog = s
        .samples
        .iter()
        .filter(|x| x.metric == "roomq_room_backlog_messages")
        .count();
    assert_eq!(backlog, 50);
    let labels: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .filter_map(|x| x.labels.get("namespace"))
        .filter(|_| true)
        .collect();
    // Three namespaces of their own (taken in order of creation), the rest
    // under `_other`; backlog rooms keep their own namespace's name.
    let counted: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.metric == "roomq_messages_published_total")
        .filter_map(|x| x.labels.get("namespace"))
        .collect();
    assert!(counted.contains("_other"), "{counted:?}");
    assert!(counted.len() <= 4, "{counted:?}");
    assert!(labels.len() <= 4 + 1, "{labels:?}");
    // A fixed bound, whatever the number of rooms: the baseline, the
    // backlog series and a few per namespace label.
    let total = s.samples.len();
    assert!(
        total <= baseline + 50 + 4 * 20,
        "{total} series (baseline {baseline})"
    );
    assert_eq!(get(&s, "roomq_rooms", &[]) as u64, 10_000 + 5);
    broker.stop().await;
}

#[tokio::test]
async fn the_token_is_required_when_set_and_the_switch_turns_metrics_off() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.metrics.token = "s3cret-scrape".into();
    let broker = TestBroker::start_ws(config, dir).await;
    let http = broker.http_addr();
    let none = scrape_raw(http, None).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    assert_eq!(scrape_raw(http, Some("wrong")).await.status, 401);
    let ok = scrape_raw(http, Some("s3cret-scrape")).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body_text().contains("roomq_connections"));
    broker.stop().await;

    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.metrics.enabled = false;
    let broker = TestBroker::start_ws(config, dir).await;
    assert_eq!(scrape_raw(broker.http_addr(), None).await.status, 404);
    broker.stop().await;
}
