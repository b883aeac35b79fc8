//! What is synced when (G1 with `batched` namespaces): a batch that holds
//! only `batched` publishes is written without a sync and synced within the
//! cursor sync interval; a batch with a `sync` publish is synced before its
//! confirmation; and a retry of a `batched` publish, which is answered
//! `SYNC`, is answered only after a sync covers the original.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use roomq::config::{DurabilityMode, NamespaceConfig};
use roomq::storage::{
    BlockingStore, Flushed, Recovered, RoomId, SledStore, StoreError, StoredMessage, WriteBatch,
};
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Written, not synced, with this many appended messages.
    Write(usize),
    /// Written and synced.
    Commit(usize),
    /// Synced.
    Flush,
}

/// A sled store that records which calls the broker made.
struct Recording {
    inner: SledStore,
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
}

fn appended(batch: &WriteBatch) -> usize {
    batch.appends.iter().map(|(_, m)| m.len()).sum()
}

impl Recording {
    fn log(&self, call: Call) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }
}

impl BlockingStore for Recording {
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError> {
        let r = self.inner.commit(batch);
        self.log(Call::Commit(appended(batch)));
        r
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let r = self.inner.write(batch);
        self.log(Call::Write(appended(batch)));
        r
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
        let r = self.inner.flush();
        self.log(Call::Flush);
        r
    }
}

fn publish(room: &str, payload: &str, dedup: [u8; 16]) -> pb::Publish {
    pb::Publish {
        rooms: vec![room.to_string()],
        event: "e".into(),
        payload: payload.to_string().into_bytes().into(),
        dedup_id: dedup.to_vec().into(),
        ..Default::default()
    }
}

/// Whether a sync (a commit or a flush) was recorded after `since`.
fn synced_after(calls: &[(Instant, Call)], since: usize) -> bool {
    calls
        .iter()
        .skip(since + 1)
        .any(|(_, c)| matches!(c, Call::Commit(_) | Call::Flush))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_are_synced_within_the_interval_and_retries_wait_for_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    // Long enough that a retry sent right away arrives before the
    // background sync.
    config.storage.cursor_sync_interval_ms = 1_000;
    let batched = NamespaceConfig {
        durability: DurabilityMode::Batched,
        ..NamespaceConfig::open_default()
    };
    config.namespaces.insert("/b".into(), batched);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let store = Recording {
        inner: SledStore::open(dir.path(), 8 << 20).unwrap(),
        calls: calls.clone(),
    };
    let (addr, shutdown, task) = start_on_store(config, store).await;

    let mut opts = ConnectOptions::new(addr.to_string());
    opts = opts.namespace("/b");
    let (b, _bd) = Connection::connect(opts).await.unwrap();

    // A batched publish: confirmed at once, then written without a sync,
    // then synced by the background sync about an interval later.
    let sent = Instant::now();
    let ok = b.publish_with(publish("r", "one", [1; 16])).await.unwrap();
    assert_eq!(ok.durability(), pb::Durability::Batched);
    eventually("the batched publish is written and then synced", || {
        let calls = calls.clone();
        async move {
            let calls = calls.lock().unwrap();
            let w = calls.iter().position(|(_, c)| *c == Call::Write(1));
            w.is_some_and(|w| synced_after(&calls, w))
        }
    })
    .await;
    {
        let calls = calls.lock().unwrap();
        let w = calls
            .iter()
            .position(|(_, c)| *c == Call::Write(1))
            .unwrap();
        let (at, _) = calls[w + 1..]
            .iter()
            .find(|(_, c)| matches!(c, Call::Commit(_) | Call::Flush))
            .unwrap();
        assert!(
            at.duration_since(sent) >= Duration::from_millis(500),
            "the background sync waits for the interval"
        );
        assert!(
            !calls.iter().any(|(_, c)| *c == Call::Commit(1)),
            "the batched message was not written with a sync: {calls:?}"
        );
    }

    // A batched publish and its retry at once: the retry's answer says SYNC
    // and comes only after a sync that follows the original's write.
    let before = calls.lock().unwrap().len();
    let ok = b.publish_with(publish("r", "two", [2; 16])).await.unwrap();
    assert_eq!(ok.durability(), pb::Durability::Batched);
    let again = b.publish_with(publish("r", "two", [2; 16])).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.durability(), pb::Durability::Sync);
    assert_eq!(again.seqs[0].seq, ok.seqs[0].seq);
    {
        let calls = calls.lock().unwrap();
        let w = calls
            .iter()
            .enumerate()
            .skip(before)
            .find(|(_, (_, c))| matches!(c, Call::Write(1) | Call::Commit(1)))
            .map(|(i, _)| i)
            .expect("the original was written");
        assert!(
            matches!(calls[w].1, Call::Commit(_)) || synced_after(&calls, w),
            "the duplicate was answered SYNC before a sync: {calls:?}"
        );
    }

    // A sync publish in another namespace is synced before its confirmation.
    let (s, _sd) = Connection::connect(ConnectOptions::new(addr.to_string()))
        .await
        .unwrap();
    let before = calls.lock().unwrap().len();
    let ok = s
        .publish_with(publish("r", "three", [3; 16]))
        .await
        .unwrap();
    assert_eq!(ok.durability(), pb::Durability::Sync);
    assert!(
        calls.lock().unwrap()[before..]
            .iter()
            .any(|(_, c)| matches!(c, Call::Commit(n) if *n >= 1)),
        "a sync publish is confirmed after a commit that syncs"
    );

    drop((b, s));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
