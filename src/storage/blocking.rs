//! From a storage engine that does blocking I/O to the asynchronous
//! [`Store`] the broker uses: [`OnBlockingPool`] runs every call of a
//! [`BlockingStore`] on tokio's blocking pool.
//!
//! The blocking pool (rather than a thread of our own) has one more virtue:
//! tokio does not auto-advance paused time while a blocking task runs, so
//! timer tests with `tokio::time::pause()` see storage as instantaneous
//! instead of jumping the clock while a flush or a read is in progress.

use std::sync::Arc;

use super::{
    Flushed, Recovered, RoomId, Store, StoreError, StoreFuture, StoredMessage, WriteBatch,
};

/// A storage engine whose calls block the calling thread until the disk
/// answers. The contract of each call is that of the same [`Store`] call.
pub trait BlockingStore: Send + Sync + 'static {
    /// See [`Store::recover`].
    fn recover(&self) -> Result<Recovered, StoreError>;
    /// See [`Store::commit`].
    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError>;
    /// See [`Store::write`]; the default syncs, which is always allowed.
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.commit(batch).map(|_| ())
    }
    /// See [`Store::read`].
    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError>;
    /// See [`Store::flush`].
    fn flush(&self) -> Result<Flushed, StoreError>;
}

/// A [`BlockingStore`] as a [`Store`]: each call runs on the blocking pool.
pub struct OnBlockingPool<S> {
    engine: Arc<S>,
}

impl<S: BlockingStore> OnBlockingPool<S> {
    /// Wraps `engine`.
    pub fn new(engine: S) -> Self {
        OnBlockingPool {
            engine: Arc::new(engine),
        }
    }

    /// Runs `call` on the engine, on the blocking pool.
    fn run<T, F>(&self, call: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
    {
        let engine = self.engine.clone();
        let task = tokio::task::spawn_blocking(move || call(&engine));
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Task(e.to_string()))
                .and_then(|result| result)
        })
    }
}

impl<S: BlockingStore> Store for OnBlockingPool<S> {
    fn recover(&self) -> StoreFuture<Recovered> {
        self.run(|s| s.recover())
    }

    fn commit(&self, batch: Arc<WriteBatch>) -> StoreFuture<Flushed> {
        self.run(move |s| s.commit(&batch))
    }

    fn write(&self, batch: Arc<WriteBatch>) -> StoreFuture<()> {
        self.run(move |s| s.write(&batch))
    }

    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<Arc<StoredMessage>>> {
        self.run(move |s| s.read(room, from, max, max_bytes))
    }

    fn flush(&self) -> StoreFuture<Flushed> {
        self.run(|s| s.flush())
    }
}
