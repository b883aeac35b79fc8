//! The `roomq` CLI against an in-process broker on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use tokio_util::sync::CancellationToken;

fn roomq(addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roomq"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_and_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = roomq::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.namespaces.insert(
        "/other".into(),
        roomq::config::NamespaceConfig::open_default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(roomq::server::run(listener, config, shutdown.clone()));

    let a = addr.clone();
    let results = tokio::task::spawn_blocking(move || {
        let published = roomq(&a, &["publish", "general", "chat message", "hello"]);
        let published_json = roomq(
            &a,
            &[
                "--json",
                "publish",
                "general",
                "chat message",
                "again",
                "-H",
                "lang=en",
            ],
        );
        let bad = roomq(&a, &["publish", "general", "", "x"]);
        let stale = roomq(
            &a,
            &["publish", "general", "e", "x", "--expect-last-seq", "1"],
        );
        let subscribed = roomq(
            &a,
            &[
                "--json",
                "--client-id",
                "reader",
                "subscribe",
                "general",
                "--from",
                "earliest",
                "--count",
                "2",
            ],
        );
        let resumed = roomq(
            &a,
            &[
                "--client-id",
                "reader",
                "subscribe",
                "general",
                "--idle-exit",
                "300ms",
            ],
        );
        let rooms = roomq(&a, &["--json", "rooms"]);
        let other_ns = roomq(&a, &["--namespace", "/other", "rooms"]);
        (
            published,
            published_json,
            bad,
            stale,
            subscribed,
            resumed,
            rooms,
            other_ns,
        )
    })
    .await
    .unwrap();
    let (published, published_json, bad, stale, subscribed, resumed, rooms, other_ns) = results;
    assert!(!stale.0, "the room is at seq 2, not 1");
    assert!(stale.2.contains("PRECONDITION_FAILED"), "{}", stale.2);

    assert!(published.0, "{}", published.2);
    assert_eq!(published.1.trim(), "stored in general as seq 1");
    let v: serde_json::Value = serde_json::from_str(published_json.1.trim()).unwrap();
    assert_eq!(
        (v["room"].as_str(), v["seq"].as_u64()),
        (Some("general"), Some(2))
    );
    assert!(!bad.0, "an empty event name is refused");
    assert!(bad.2.contains("INVALID_NAME"), "{}", bad.2);

    assert!(subscribed.0, "{}", subscribed.2);
    let lines: Vec<serde_json::Value> = subscribed
        .1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["data"], "hello");
    assert_eq!(lines[1]["data"], "again");
    assert_eq!(lines[1]["headers"]["lang"], "en");
    // The durable reader acked both: resuming finds nothing new.
    assert!(resumed.0, "{}", resumed.2);
    assert_eq!(resumed.1.trim(), "");

    let v: serde_json::Value = serde_json::from_str(rooms.1.trim()).unwrap();
    assert_eq!(v["room"], "general");
    assert_eq!(v["last_seq"], 2);
    assert_eq!(other_ns.1.trim(), "no rooms in /other");

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_trusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut config = roomq::config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.tls.cert_path = cert.clone();
    config.tls.key_path = key;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(roomq::server::run(listener, config, shutdown.clone()));

    let ca = cert.to_str().unwrap().to_string();
    let (published, named, plain, wrong_name) = tokio::task::spawn_blocking(move || {
        // The server name defaults to the host of --addr: 127.0.0.1.
        let published = roomq(&addr, &["--tls-ca", &ca, "publish", "general", "e", "hi"]);
        let named = roomq(
            &addr,
            &["--tls-ca", &ca, "--tls-server-name", "localhost", "rooms"],
        );
        let plain = roomq(&addr, &["rooms"]);
        let wrong_name = roomq(
            &addr,
            &[
                "--tls-ca",
                &ca,
                "--tls-server-name",
                "elsewhere.test",
                "rooms",
            ],
        );
        (published, named, plain, wrong_name)
    })
    .await
    .unwrap();
    assert!(published.0, "{}", published.2);
    assert_eq!(published.1.trim(), "stored in general as seq 1");
    assert!(named.0, "{}", named.2);
    assert!(named.1.contains("general"), "{}", named.1);
    assert!(!plain.0, "a plaintext client is refused");
    assert!(!wrong_name.0, "a certificate for another name is refused");
    assert!(wrong_name.2.contains("tls"), "{}", wrong_name.2);

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_a_tenant_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = roomq::tenancy::token::generate().unwrap();
    let mut config = roomq::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.admin.tokens.push(roomq::config::TokenConfig {
        name: "ops".into(),
        hash: roomq::tenancy::token::TokenHash::of(&admin_token).to_text(),
        publish: vec![],
        subscribe: vec![],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(roomq::server::run(listener, config, shutdown.clone()));

    let a = addr.clone();
    tokio::task::spawn_blocking(move || {
        let admin = |args: &[&str]| {
            let mut all = vec!["--token", admin_token.as_str(), "admin"];
            all.extend_from_slice(args);
            roomq(&a, &all)
        };
        let created = admin(&["create-namespace", "/team", "--max-rooms", "5"]);
        assert!(created.0, "{}", created.2);
        let token = admin(&[
            "--json",
            "create-token",
            "/team",
            "app",
            "--publish",
            "jobs.*",
        ]);
        assert!(token.0, "{}", token.2);
        let v: serde_json::Value = serde_json::from_str(token.1.trim()).unwrap();
        let app_token = v["token"].as_str().unwrap().to_string();

        let ns = ["--namespace", "/team", "--token", app_token.as_str()];
        let mut publish = ns.to_vec();
        publish.extend_from_slice(&["publish", "jobs.a", "e", "work"]);
        let published = roomq(&a, &publish);
        assert!(published.0, "{}", published.2);
        let mut denied = ns.to_vec();
        denied.extend_from_slice(&["publish", "other", "e", "x"]);
        let denied = roomq(&a, &denied);
        assert!(!denied.0);
        assert!(denied.2.contains("PERMISSION_DENIED"), "{}", denied.2);
        let wrong = roomq(&a, &["--namespace", "/team", "publish", "jobs.a", "e", "x"]);
        assert!(!wrong.0);
        assert!(wrong.2.contains("UNAUTHENTICATED"), "{}", wrong.2);

        let rooms = admin(&["--json", "rooms", "/team"]);
        assert!(rooms.0, "{}", rooms.2);
        let v: serde_json::Value = serde_json::from_str(rooms.1.trim()).unwrap();
        assert_eq!(
            (v["room"].as_str(), v["last_seq"].as_u64()),
            (Some("jobs.a"), Some(1))
        );

        let namespaces = admin(&["namespaces"]);
        assert!(namespaces.1.contains("/team"), "{}", namespaces.1);
        assert!(!namespaces.1.contains(&app_token), "never prints a token");

        let purged = admin(&["purge", "/team", "jobs.a"]);
        assert!(purged.1.contains("1 messages purged"), "{}", purged.1);
        let not_admin = roomq(&a, &["admin", "namespaces"]);
        assert!(!not_admin.0);
        assert!(not_admin.2.contains("UNAUTHENTICATED"), "{}", not_admin.2);
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
