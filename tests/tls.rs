//! TLS: clients of a broker with `[tls]` set talk to it through TLS, the
//! handshake deadline covers the TLS handshake and the roomq handshake
//! together, and certificate files that cannot be used stop the start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use prost::Message as _;
use roomq::server::{self, ServerError};
use roomq::tls::TlsError;
use roomq_client::raw::Connection;
use roomq_client::rustls::pki_types::ServerName;
use roomq_client::{proto as pb, Client, ClientError, ErrorCode, Event, JoinOptions, TlsOptions};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for "localhost" and 127.0.0.1, and its key, as
/// PEM files.
struct Certs {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Certs { dir, cert, key }
    }

    /// Client options trusting this certificate.
    fn trust(&self) -> TlsOptions {
        TlsOptions::trusting_pem_file(&self.cert, "localhost").unwrap()
    }
}

fn tls_config(certs: &Certs, data: &TempDir) -> roomq::config::Config {
    let mut config = test_config(data);
    config.tls.cert_path = certs.cert.clone();
    config.tls.key_path = certs.key.clone();
    config
}

async fn tls_broker(certs: &Certs) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    TestBroker::start_with(tls_config(certs, &dir), dir).await
}

/// Decodes the server frames in `raw`.
fn frames(raw: &[u8]) -> Vec<pb::ServerFrame> {
    let mut frames = Vec::new();
    let mut rest = raw;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        frames.push(pb::ServerFrame::decode(&rest[4..4 + len]).expect("valid server frame"));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing partial frame");
    frames
}

#[tokio::test]
async fn sdk_publishes_and_receives_over_tls_across_a_restart() {
    let certs = Certs::new();
    let broker = tls_broker(&certs).await;
    let client = Client::builder(broker.addr.to_string())
        .client_id("reader")
        .tls(certs.trust())
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    let mut general = client.join("general", JoinOptions::new()).await.unwrap();
    assert_eq!(
        client
            .publish("general", "chat", "one")
            .await
            .unwrap()
            .seq(),
        1
    );
    let d = timeout(WAIT, general.next()).await.unwrap().unwrap();
    assert_eq!(&d.payload[..], b"one");
    d.ack().await.unwrap();

    // The client reconnects by itself, over TLS again, and the room kept
    // its log: the next message is seq 2.
    let broker = broker.restart_same_port().await;
    let confirmed = client.publish("general", "chat", "two").await.unwrap();
    assert_eq!(confirmed.seq(), 2);
    let d = timeout(WAIT, general.next()).await.unwrap().unwrap();
    assert_eq!((d.seq, &d.payload[..]), (2, &b"two"[..]));
    d.ack().await.unwrap();
    let reconnected = timeout(WAIT, async {
        loop {
            if let Event::Connected {
                reconnected: true, ..
            } = events.recv().await.unwrap()
            {
                return;
            }
        }
    })
    .await;
    assert!(reconnected.is_ok(), "a Connected event after the restart");

    client.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn clients_without_the_right_tls_fail_quickly() {
    let certs = Certs::new();
    let broker = tls_broker(&certs).await;

    // Plain roomq frames on the TLS port: the broker's TLS rejects them
    // and closes; the client gets an error, not a hang.
    let plain = timeout(WAIT, Connection::connect(broker.options()))
        .await
        .expect("a plaintext client fails within the wait");
    match plain {
        Err(ClientError::Tls(why)) => assert!(why.contains("answered with TLS"), "{why}"),
        // The broker may close before its alert is read.
        Err(e) => assert!(e.is_connection_loss(), "{e}"),
        Ok(_) => panic!("a plaintext client was served on the TLS port"),
    }

    // TLS that trusts another certificate: TLS itself refuses.
    let stranger = Certs::new();
    let refused = timeout(
        WAIT,
        Connection::connect(broker.options().tls(stranger.trust())),
    )
    .await
    .unwrap();
    match refused {
        Err(ClientError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("an untrusted certificate was accepted"),
    }

    // The right name is checked too.
    let wrong_name = TlsOptions::trusting_pem_file(&certs.cert, "elsewhere.test").unwrap();
    let refused = Connection::connect(broker.options().tls(wrong_name)).await;
    assert!(matches!(refused, Err(ClientError::Tls(_))));

    // The broker serves the next TLS client as usual.
    let (c, _d) = Connection::connect(broker.options().client_id("ok").tls(certs.trust()))
        .await
        .unwrap();
    c.ping().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn the_connection_limit_is_told_over_tls() {
    let certs = Certs::new();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = tls_config(&certs, &dir);
    config.limits.max_connections = 1;
    let broker = TestBroker::start_with(config, dir).await;
    let (first, _d) = Connection::connect(broker.options().tls(certs.trust()))
        .await
        .unwrap();
    let second = Connection::connect(broker.options().tls(certs.trust())).await;
    match second {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{e}"),
        Ok(_) => panic!("a second connection beyond max_connections = 1"),
    }
    first.ping().await.unwrap();
    drop(first);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let certs = Certs::new();
    let broker = tls_broker(&certs).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let mut raw = Vec::new();
    // Virtual time: an hour passes in no real time if nothing closes it.
    let _ = timeout(Duration::from_secs(3600), s.read_to_end(&mut raw))
        .await
        .expect("the broker closes the connection");
    assert!(raw.is_empty(), "no TLS session, so no frame: {raw:?}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "closed after {waited:?}, the deadline is 5 s"
    );
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tls_without_a_roomq_handshake_is_closed_by_the_same_deadline() {
    let certs = Certs::new();
    let broker = tls_broker(&certs).await;
    let start = Instant::now();
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    // Three of the five seconds pass (virtually) before the client starts
    // its TLS handshake: the broker's clock runs from the accept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tls = certs.trust();
    let connector = tokio_rustls::TlsConnector::from(tls.config);
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let mut raw = Vec::new();
    let read = timeout(Duration::from_secs(3600), stream.read_to_end(&mut raw))
        .await
        .expect("the broker closes the connection");
    read.expect("closed with a TLS close_notify");
    let error = match frames(&raw).last().and_then(|f| f.body.clone()) {
        Some(pb::server_frame::Body::Error(e)) => e,
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert_eq!(error.error_code(), Some(ErrorCode::HandshakeTimeout));
    assert!(error.fatal);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "closed after {waited:?}: one 5 s deadline from the accept, not a new one after TLS"
    );
    broker.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_are_config_errors() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let run = |config: roomq::config::Config| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let result = timeout(WAIT, server::run(listener, config, shutdown.clone())).await;
        shutdown.cancel();
        result.expect("the start fails at once")
    };

    let mut missing = tls_config(&certs, &data);
    missing.tls.cert_path = certs.dir.path().join("missing.pem");
    let e = run(missing).await.unwrap_err();
    assert!(matches!(e, ServerError::Tls(TlsError::Read { .. })), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let mut swapped = tls_config(&certs, &data);
    swapped.tls.cert_path = certs.key.clone();
    let e = run(swapped).await.unwrap_err();
    assert!(
        matches!(e, ServerError::Tls(TlsError::NoCertificate { .. })),
        "{e}"
    );

    let mut half = tls_config(&certs, &data);
    half.tls.key_path = PathBuf::new();
    let e = run(half).await.unwrap_err();
    assert!(matches!(e, ServerError::Config(_)), "{e}");

    // roomqd: exit 2, like any other configuration error, both when only
    // checking the configuration and when starting.
    let missing = certs.dir.path().join("missing.pem");
    for check_only in [true, false] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomqd"));
        cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .env("ROOMQ_TLS_CERT_PATH", &missing)
            .env("ROOMQ_TLS_KEY_PATH", &certs.key)
            .kill_on_drop(true);
        if check_only {
            cmd.arg("check-config");
        }
        let out = timeout(WAIT, cmd.output())
            .await
            .expect("roomqd exits at once")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("missing.pem"), "{stderr}");
    }
}
