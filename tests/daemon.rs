//! The `roomqd` binary: configuration errors exit with code 2 and a clear
//! message, `print-config` prints a valid configuration, and SIGTERM drains
//! and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn roomqd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roomqd"))
}

#[test]
fn invalid_configuration_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_frame_bytes = 10\n").unwrap();
    let out = roomqd()
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_frame_bytes"), "{err}");

    std::fs::write(&bad, "[limits]\nno_such_setting = 1\n").unwrap();
    let out = roomqd()
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_setting"));

    let out = roomqd()
        .arg("check-config")
        .env("ROOMQ_LIMITS_MAX_IN_FLIGHT", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROOMQ_LIMITS_MAX_IN_FLIGHT"));

    let out = roomqd()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn print_config_round_trips_through_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = roomqd().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let path = dir.path().join("roomq.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let out = roomqd()
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_and_nothing_confirmed_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let (p, _pd) = roomq_client::raw::Connection::connect(roomq_client::ConnectOptions::new(
        daemon.addr.to_string(),
    ))
    .await
    .unwrap();
    for i in 1..=100 {
        assert_eq!(p.publish("r", "e", format!("{i}")).await.unwrap(), i);
    }
    let pid = daemon.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + WAIT;
    let code = loop {
        if let Some(s) = daemon.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "roomqd did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));

    let daemon = Daemon::start(dir.path());
    let (c, mut d) = roomq_client::raw::Connection::connect(roomq_client::ConnectOptions::new(
        daemon.addr.to_string(),
    ))
    .await
    .unwrap();
    let ok = c
        .join_with(join(
            "r",
            roomq_client::proto::StartPosition::Earliest,
            0,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(ok.last_seq, 100);
    for i in 1..=100 {
        assert_eq!(seq(&next(&mut d).await), i);
    }
    daemon.kill9();
}
