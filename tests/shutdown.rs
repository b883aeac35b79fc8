//! A clean shutdown confirms what was accepted, tells connected clients why
//! they are being closed, and keeps everything for the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use roomq_client::{ErrorCode, Push};

#[tokio::test]
async fn clients_are_told_the_broker_is_shutting_down() {
    let broker = TestBroker::start().await;
    let (c, mut d) = broker.connect("client").await;
    c.publish("r", "e", "kept").await.unwrap();
    let (dir, config) = broker.stop().await;
    let mut saw_notice = false;
    while let Some(push) = tokio::time::timeout(WAIT, d.next_push()).await.unwrap() {
        if let Push::Error(e) = push {
            assert_eq!(e.error_code(), Some(ErrorCode::ShuttingDown));
            assert!(e.fatal);
            saw_notice = true;
        }
    }
    assert!(saw_notice, "no SHUTTING_DOWN notice before the close");
    assert!(c.ping().await.is_err());

    let broker = TestBroker::start_with(config, dir).await;
    let (c, _d) = broker.connect("client").await;
    assert_eq!(c.publish("r", "e", "after").await.unwrap(), 2);
    broker.stop().await;
}
