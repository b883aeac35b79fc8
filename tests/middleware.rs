//! Middleware added by an embedding program (`Server::middleware`): connect,
//! join and publish hooks, run per namespace, in registration order, after
//! the built-in policies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use roomq::server::Server;
use roomq::tenancy::middleware::{ConnectCtx, JoinCtx, Middleware, PublishCtx, Verdict};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;
use roomq_client::ErrorCode;

async fn start(build: impl FnOnce(Server) -> Server) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(&dir);
    TestBroker::start_server(config, dir, build).await
}

fn headers(d: &pb::Delivery) -> std::collections::BTreeMap<String, String> {
    d.message
        .as_ref()
        .map(|m| m.headers.clone().into_iter().collect())
        .unwrap_or_default()
}

/// Refuses clients by name.
struct NoClientNamed(&'static str);

#[async_trait::async_trait]
impl Middleware for NoClientNamed {
    fn name(&self) -> &str {
        "no-client-named"
    }
    async fn connect(&self, ctx: &mut ConnectCtx<'_>) -> Verdict {
        if ctx.client_name == self.0 {
            return Verdict::Reject {
                code: ErrorCode::PermissionDenied,
                reason: format!("{} may not connect here", self.0),
            };
        }
        Verdict::Allow
    }
}

/// Refuses joins of one room.
struct NoJoining(&'static str);

#[async_trait::async_trait]
impl Middleware for NoJoining {
    fn name(&self) -> &str {
        "no-joining"
    }
    async fn join(&self, ctx: &JoinCtx<'_>) -> Verdict {
        if ctx.room == self.0 {
            return Verdict::deny(format!("room {} is closed to members", self.0));
        }
        Verdict::Allow
    }
}

/// Adds a header to every publish; records every call in a shared log.
struct Stamp {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Stamp {
    fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Stamp {
        Stamp {
            name,
            log: log.clone(),
        }
    }
    fn record(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.name));
    }
}

#[async_trait::async_trait]
impl Middleware for Stamp {
    fn name(&self) -> &str {
        self.name
    }
    async fn connect(&self, _ctx: &mut ConnectCtx<'_>) -> Verdict {
        self.record("connect");
        Verdict::Allow
    }
    async fn join(&self, _ctx: &JoinCtx<'_>) -> Verdict {
        self.record("join");
        Verdict::Allow
    }
    async fn publish(&self, ctx: &mut PublishCtx<'_>) -> Verdict {
        self.record("publish");
        // What the hooks before this one stamped.
        let before: Vec<String> = ctx.headers.keys().cloned().collect();
        ctx.headers
            .insert(format!("stamp-{}", self.name), before.join(","));
        Verdict::Allow
    }
}

/// Refuses publishes of one event with a custom code.
struct NoEvent(&'static str);

#[async_trait::async_trait]
impl Middleware for NoEvent {
    fn name(&self) -> &str {
        "no-event"
    }
    async fn publish(&self, ctx: &mut PublishCtx<'_>) -> Verdict {
        if ctx.event == self.0 {
            return Verdict::Reject {
                code: ErrorCode::QuotaExceeded,
                reason: format!("event {} is rationed", self.0),
            };
        }
        Verdict::Allow
    }
}

#[tokio::test]
async fn a_connect_hook_refuses_with_its_code_and_reason() {
    let broker = start(|s| s.middleware("/", NoClientNamed("bot"))).await;
    let opts = broker.options().client_name("bot");
    let e = refused(Client::connect(opts).await.map(|(c, _)| c.session_id()));
    match &e {
        roomq_client::ClientError::Broker {
            code,
            name,
            message,
            ..
        } => {
            assert_eq!(*code, ErrorCode::PermissionDenied as u32);
            assert_eq!(name, "PERMISSION_DENIED");
            assert_eq!(message, "bot may not connect here");
        }
        other => panic!("{other}"),
    }
    let (c, _d) = broker
        .connect_opts(broker.options().client_name("human"))
        .await;
    c.ping().await.unwrap();
    // Only in the namespace it was added to.
    let (o, _od) = broker
        .connect_opts(broker.options().namespace("/orders").client_name("bot"))
        .await;
    o.ping().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_connect_refusal_takes_no_connection_slot() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config
        .namespaces
        .get_mut("/")
        .unwrap()
        .quotas
        .max_connections = 1;
    let broker =
        TestBroker::start_server(config, dir, |s| s.middleware("/", NoClientNamed("bot"))).await;
    for _ in 0..3 {
        let opts = broker.options().client_name("bot");
        let e = refused(Client::connect(opts).await.map(|(c, _)| c.session_id()));
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    }
    let (c, _d) = broker
        .connect_opts(broker.options().client_name("human"))
        .await;
    c.ping().await.unwrap();
    let e = refused(
        Client::connect(broker.options())
            .await
            .map(|(c, _)| c.session_id()),
    );
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    broker.stop().await;
}

#[tokio::test]
async fn a_join_hook_denies_a_room() {
    let broker = start(|s| s.middleware("/", NoJoining("vip"))).await;
    let (c, mut d) = broker.connect("m").await;
    let e = refused(c.join("vip").await);
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    assert!(
        e.to_string().contains("room vip is closed to members"),
        "{e}"
    );
    c.join("lobby").await.unwrap();
    // Publishing to the room is not joining it.
    assert_eq!(c.publish("vip", "e", "x").await.unwrap(), 1);
    c.publish("lobby", "e", "y").await.unwrap();
    let got = next(&mut d).await;
    assert_eq!((got.room.as_str(), payload(&got)), ("lobby", b"y".to_vec()));
    // No membership was made in the denied room.
    let rooms = c.list_rooms().await.unwrap();
    let vip = rooms.iter().find(|r| r.name == "vip").unwrap();
    assert_eq!(vip.members, 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_hook_adds_headers_subscribers_see_and_may_refuse() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stamp = Stamp::new("one", &log);
    let broker = start(|s| s.middleware("/", stamp).middleware("/", NoEvent("spam"))).await;
    let (sub, mut sd) = broker.connect("sub").await;
    sub.join("r").await.unwrap();
    let (publisher, _pd) = broker.connect("").await;
    let mut p = pb::Publish {
        rooms: vec!["r".into()],
        event: "e".into(),
        payload: "x".into(),
        ..Default::default()
    };
    p.headers.insert("own".into(), "kept".into());
    publisher.publish_with(p).await.unwrap();
    let d = next(&mut sd).await;
    let h = headers(&d);
    assert_eq!(h.get("own").map(String::as_str), Some("kept"));
    assert_eq!(h.get("stamp-one").map(String::as_str), Some("own"));

    let e = refused(publisher.publish("r", "spam", "x").await);
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    assert!(e.to_string().contains("event spam is rationed"), "{e}");
    // Refused: not stored, not delivered.
    assert_eq!(publisher.publish("r", "e", "after").await.unwrap(), 2);
    let d = next(&mut sd).await;
    assert_eq!((seq(&d), payload(&d)), (2, b"after".to_vec()));
    broker.stop().await;
}

#[tokio::test]
async fn hooks_run_in_registration_order_after_hooks_for_every_namespace() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (first, second, everywhere) = (
        Stamp::new("first", &log),
        Stamp::new("second", &log),
        Stamp::new("every", &log),
    );
    let broker = start(|s| {
        s.middleware("/", first)
            .middleware_everywhere(everywhere)
            .middleware("/", second)
    })
    .await;
    let (c, mut d) = broker.connect("m").await;
    c.join("r").await.unwrap();
    c.publish("r", "e", "x").await.unwrap();
    let h = headers(&next(&mut d).await);
    assert_eq!(h.get("stamp-every").map(String::as_str), Some(""));
    assert_eq!(
        h.get("stamp-first").map(String::as_str),
        Some("stamp-every")
    );
    assert_eq!(
        h.get("stamp-second").map(String::as_str),
        Some("stamp-every,stamp-first")
    );
    let calls = log.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "every:connect",
            "first:connect",
            "second:connect",
            "every:join",
            "first:join",
            "second:join",
            "every:publish",
            "first:publish",
            "second:publish",
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn middleware_of_one_namespace_does_not_run_in_another() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stamp = Stamp::new("orders", &log);
    // A refusal ends the chain: the stamp never sees the denied join.
    let broker = start(|s| {
        s.middleware("/orders", NoJoining("r"))
            .middleware("/orders", stamp)
    })
    .await;

    // In `/`: nothing runs.
    let (root, mut rd) = broker.connect("m").await;
    root.join("r").await.unwrap();
    root.publish("r", "e", "x").await.unwrap();
    let d = next(&mut rd).await;
    assert!(headers(&d).is_empty(), "{d:?}");
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    // Nor in a namespace whose name starts the same.
    let (a, _ad) = broker.connect_ns("/other", "m").await;
    a.join("r").await.unwrap();

    // In `/orders`: it does.
    let (orders, mut od) = broker.connect_ns("/orders", "m").await;
    assert_eq!(code(orders.join("r").await), ErrorCode::PermissionDenied);
    orders.join("s").await.unwrap();
    orders.publish("s", "e", "x").await.unwrap();
    let d = next(&mut od).await;
    assert!(headers(&d).contains_key("stamp-orders"), "{d:?}");
    assert_eq!(
        *log.lock().unwrap(),
        ["orders:connect", "orders:join", "orders:publish"]
    );
    broker.stop().await;
}

#[tokio::test]
async fn built_in_policies_run_before_hooks() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stamp = Stamp::new("hook", &log);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let (token, entry) = new_token_for("limited", &["ok"], &["ok"]);
    config
        .namespaces
        .insert("/closed".into(), closed_namespace(vec![entry]));
    let broker = TestBroker::start_server(config, dir, |s| s.middleware("/closed", stamp)).await;

    // A bad token is refused before any hook sees the connection.
    let e = broker.refused_connect("/closed", "wrong").await;
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    assert!(log.lock().unwrap().is_empty());
    // Requests the token does not allow never reach the hook either.
    let (c, _d) = broker.connect_token("/closed", &token, "").await;
    assert_eq!(code(c.join("no").await), ErrorCode::PermissionDenied);
    assert_eq!(
        code(c.publish("no", "e", "x").await),
        ErrorCode::PermissionDenied
    );
    c.publish("ok", "e", "x").await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["hook:connect", "hook:publish"]);
    broker.stop().await;
}
