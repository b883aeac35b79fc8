//! Fail-stop (G1): a failed or stuck commit is never followed by a
//! confirmation; the broker stops with an error, and what was confirmed
//! before is still there when it is started again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use roomq::server::ServerError;
use roomq::storage::{
    BlockingStore, Flushed, Recovered, RoomId, SledStore, StoreError, StoredMessage, WriteBatch,
};
use roomq_client::raw::Connection;

/// How the faulty store misbehaves once its good commits are used up.
#[derive(Clone, Copy)]
enum Fault {
    /// The commit returns an I/O error.
    Fail,
    /// The commit never returns (a stuck disk), until the test ends.
    Hang,
}

struct FaultyStore {
    inner: SledStore,
    good_commits: AtomicUsize,
    fault: Fault,
    /// A hanging commit waits until the test drops the sending side.
    gate: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BlockingStore for FaultyStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError> {
        let left = self.good_commits.load(Ordering::SeqCst);
        if left > 0 {
            self.good_commits.store(left - 1, Ordering::SeqCst);
            return self.inner.commit(batch);
        }
        match self.fault {
            Fault::Fail => Err(StoreError::Engine(Box::new(std::io::Error::other(
                "injected: disk gone",
            )))),
            Fault::Hang => {
                if let Ok(rx) = self.gate.lock() {
                    let _ = rx.recv();
                }
                Err(StoreError::Engine(Box::new(std::io::Error::other(
                    "released",
                ))))
            }
        }
    }

    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        self.inner.read(room, from, max, max_bytes)
    }

    fn flush(&self) -> Result<Flushed, StoreError> {
        self.inner.flush()
    }
}

/// Runs a broker on a faulty store; returns its address and its task.
async fn start(
    dir: &tempfile::TempDir,
    good_commits: usize,
    fault: Fault,
    gate: std::sync::mpsc::Receiver<()>,
    commit_timeout_ms: u64,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), ServerError>>,
) {
    let mut config = test_config(dir);
    config.storage.commit_timeout_ms = commit_timeout_ms;
    let store = FaultyStore {
        inner: SledStore::open(dir.path(), 8 << 20).unwrap(),
        good_commits: AtomicUsize::new(good_commits),
        fault,
        gate: Mutex::new(gate),
    };
    let (addr, _shutdown, task) = start_on_store(config, store).await;
    (addr, task)
}

async fn publish_until_refused(addr: std::net::SocketAddr) -> Vec<u64> {
    let opts = roomq_client::ConnectOptions::new(addr.to_string());
    let (c, _d) = Connection::connect(opts).await.unwrap();
    let mut confirmed = Vec::new();
    for i in 0..10 {
        match tokio::time::timeout(WAIT, c.publish("r", "e", format!("{i}"))).await {
            Ok(Ok(seq)) => confirmed.push(seq),
            Ok(Err(_)) => break,
            Err(_) => panic!("publish neither confirmed nor refused"),
        }
    }
    confirmed
}

async fn stored_after_restart(dir: &tempfile::TempDir) -> u64 {
    // The failing store wrapped sled in `dir`: read it back with sled.
    let mut config = test_config(dir);
    config.storage.engine = roomq::storage::Engine::Sled;
    let broker = TestBroker::start_with(config, Arc::new(tempfile::tempdir().unwrap())).await;
    let (c, _d) = broker.connect("check").await;
    let rooms = c.list_rooms().await.unwrap();
    let last = rooms
        .iter()
        .find(|r| r.name == "r")
        .map_or(0, |r| r.last_seq);
    drop((c, _d));
    broker.stop().await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_never_confirmed_and_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    // Commit 1 creates the room and stores seq 1 (and the connection's
    // first batch); then the disk "goes away".
    let (_release, gate) = std::sync::mpsc::channel();
    let (addr, task) = start(&dir, 1, Fault::Fail, gate, 30_000).await;
    let confirmed = publish_until_refused(addr).await;
    assert_eq!(
        confirmed,
        vec![1],
        "nothing after the failure may be confirmed"
    );
    let result = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(matches!(result, Err(ServerError::Storage(_))), "{result:?}");
    assert_eq!(stored_after_restart(&dir).await, 1);
}

/// A stuck disk cannot be simulated on paused time: tokio does not advance
/// paused time while a blocking task (the stuck commit) runs. So this test
/// uses a short real commit timeout (200 ms) and a commit that blocks on a
/// channel the test holds open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_commit_fails_stop_after_the_commit_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (addr, task) = start(&dir, 1, Fault::Hang, gate, 200).await;
    let confirmed = publish_until_refused(addr).await;
    assert_eq!(confirmed, vec![1]);
    let result = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    match result {
        Err(ServerError::Storage(StoreError::Stalled(d))) => {
            assert_eq!(d, Duration::from_millis(200))
        }
        other => panic!("expected a stall, got {other:?}"),
    }
    drop(release);
}
