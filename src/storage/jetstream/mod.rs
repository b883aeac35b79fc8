//! NATS JetStream as roomq's storage engine (skeleton; being written).
use std::sync::Arc;

use super::{Flushed, Recovered, Store, StoreError, StoreFuture, StoredMessage, WriteBatch};
use crate::config::JetStreamConfig;

/// Rooms stored in JetStream streams, cursors and metadata in KV buckets.
pub struct JetStreamStore {}

impl JetStreamStore {
    /// Connects to the servers of `config` and prepares the streams and
    /// buckets roomq uses.
    pub async fn connect(_config: &JetStreamConfig) -> Result<JetStreamStore, StoreError> {
        Err(StoreError::Engine("not written yet".into()))
    }
}

impl Store for JetStreamStore {
    fn recover(&self) -> StoreFuture<Recovered> {
        Box::pin(async { Err(StoreError::Engine("not written yet".into())) })
    }
    fn commit(&self, _batch: Arc<WriteBatch>) -> StoreFuture<Flushed> {
        Box::pin(async { Err(StoreError::Engine("not written yet".into())) })
    }
    fn read(
        &self,
        _room: super::RoomId,
        _from: u64,
        _max: usize,
        _max_bytes: usize,
    ) -> StoreFuture<Vec<Arc<StoredMessage>>> {
        Box::pin(async { Err(StoreError::Engine("not written yet".into())) })
    }
    fn flush(&self) -> StoreFuture<Flushed> {
        Box::pin(async { Err(StoreError::Engine("not written yet".into())) })
    }
}
