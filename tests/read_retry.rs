//! Failed reads of the stored log. A read for delivery is tried again after
//! `storage.read_retry_ms`, without anything else happening in the room:
//! the member that needed it waits at the message it could not read, then
//! gets everything, in order, once. A join by time whose search cannot read
//! the log is refused, not started elsewhere. Timers run on paused tokio
//! time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use roomq::storage::{
    BlockingStore, Flushed, Recovered, RoomId, SledStore, StoreError, StoredMessage, WriteBatch,
};
use roomq_client::proto as pb;
use roomq_client::raw::Connection as Client;

/// sled, whose first `failures` reads fail.
struct FlakyReads {
    inner: SledStore,
    /// Reads still to fail (the test may add some later).
    failures: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

impl BlockingStore for FlakyReads {
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError> {
        self.inner.commit(batch)
    }

    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Engine(Box::new(std::io::Error::other(
                "injected: read failed",
            ))));
        }
        self.inner.read(room, from, max, max_bytes)
    }

    fn flush(&self) -> Result<Flushed, StoreError> {
        self.inner.flush()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_is_tried_again_and_the_member_gets_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = paused_config(&dir);
    // Only the newest 4 messages stay in the room's cache.
    config.storage.room_cache_messages = 4;
    config.storage.read_retry_ms = 1_000;
    let reads = Arc::new(AtomicUsize::new(0));
    let store = FlakyReads {
        inner: SledStore::open(dir.path(), 8 << 20).unwrap(),
        failures: Arc::new(AtomicUsize::new(3)),
        reads: reads.clone(),
    };
    let (addr, shutdown, task) = start_on_store(config, store).await;
    let opts = |id: &str| roomq_client::ConnectOptions::new(addr.to_string()).client_id(id);

    let (p, _pd) = Client::connect(opts("publisher")).await.unwrap();
    for i in 1..=40u64 {
        assert_eq!(p.publish("r", "e", format!("m{i}")).await.unwrap(), i);
    }
    // A member from the start: seqs 1..=36 are only in the store, and the
    // first three reads of them fail. Nothing else happens in the room.
    let (m, mut md) = Client::connect(opts("late")).await.unwrap();
    m.join_with(join("r", pb::StartPosition::Earliest, 100, 3_600_000))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    for want in 1..=40u64 {
        let d = next_paused(&mut md).await;
        assert_eq!(seq(&d), want, "out of order");
        assert_eq!(payload(&d), format!("m{want}").into_bytes());
    }
    // Three failures, each followed by a retry a second later.
    assert!(reads.load(Ordering::SeqCst) >= 4);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    m.ack_up_to("r", "", 40).await.unwrap();
    assert_quiet(&mut md, Duration::from_secs(10)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A join by time whose search of the stored log cannot read it is refused
/// with `INTERNAL` (nothing is joined), rather than started later than
/// asked; joined again, it starts at the right message.
#[tokio::test(start_paused = true)]
async fn a_join_by_time_whose_search_cannot_read_the_log_is_refused_not_misplaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = paused_config(&dir);
    config.storage.room_cache_messages = 4;
    let failures = Arc::new(AtomicUsize::new(0));
    let store = FlakyReads {
        inner: SledStore::open(dir.path(), 8 << 20).unwrap(),
        failures: failures.clone(),
        reads: Arc::new(AtomicUsize::new(0)),
    };
    let (addr, shutdown, task) = start_on_store(config, store).await;
    let opts = |id: &str| roomq_client::ConnectOptions::new(addr.to_string()).client_id(id);
    let (p, _pd) = Client::connect(opts("publisher")).await.unwrap();
    // Seqs 1..=20 a second apart; the start time is seq 8's.
    let mut stamps = Vec::new();
    let (w, mut wd) = Client::connect(opts("watcher")).await.unwrap();
    w.join_with(join("r", pb::StartPosition::New, 100, 3_600_000))
        .await
        .unwrap();
    for i in 1..=20u64 {
        assert_eq!(p.publish("r", "e", format!("m{i}")).await.unwrap(), i);
        let d = next_paused(&mut wd).await;
        stamps.push(d.message.unwrap().timestamp_ms);
        w.ack_up_to("r", "", i).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let at = stamps[7];

    failures.store(1, Ordering::SeqCst);
    let (m, mut md) = Client::connect(opts("late")).await.unwrap();
    let join_at = || pb::Join {
        start_time_ms: at,
        ..join("r", pb::StartPosition::Time, 100, 3_600_000)
    };
    assert_eq!(
        code(m.join_with(join_at()).await),
        roomq_client::ErrorCode::Internal
    );
    assert_quiet(&mut md, Duration::from_secs(10)).await;

    m.join_with(join_at()).await.unwrap();
    for want in 8..=20u64 {
        assert_eq!(seq(&next_paused(&mut md).await), want);
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
