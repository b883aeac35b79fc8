//! Group commit. At most one batch is being written at a time, in a task
//! beside the actor; while it is written the broker keeps accepting
//! publishes into the next batch, so one flush — and one `fsync` — covers
//! everything that arrived during the previous one.
//!
//! A batch that nobody waits on (only `batched` publishes, lazily stored
//! cursors and the like) may be *written* without a sync ([`Sync::Later`]);
//! the broker then syncs within `cursor_sync_interval_ms`, or sooner with
//! the next batch that someone waits on.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::storage::{Flushed, Store, StoreError, StoreFuture, WriteBatch};

/// Whether a commit syncs before it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Write and sync (`fsync`): required before any confirmation.
    Now,
    /// Write only; a later sync covers it.
    Later,
}

/// What a commit ended in.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The batch, and everything written before it, is synced to disk.
    Done(Flushed, Arc<WriteBatch>),
    /// The batch is written but not synced (it survives a killed process,
    /// not a power cut).
    Written(Arc<WriteBatch>),
    /// The store failed; nothing of the batch may be confirmed, and the
    /// broker must stop (fail-stop).
    Failed(StoreError),
}

/// Writes `batch` and, with [`Sync::Now`], syncs it, in a task of its own.
/// An empty batch with [`Sync::Now`] only syncs what was written before.
pub fn spawn(store: Arc<dyn Store>, batch: WriteBatch, sync: Sync) -> JoinHandle<CommitOutcome> {
    let batch = Arc::new(batch);
    let call = match sync {
        Sync::Now if batch.is_empty() => Call::Sync(store.flush()),
        Sync::Now => Call::Sync(store.commit(batch.clone())),
        Sync::Later => Call::Write(store.write(batch.clone())),
    };
    tokio::spawn(async move {
        match call {
            Call::Sync(f) => match f.await {
                Ok(flushed) => CommitOutcome::Done(flushed, batch),
                Err(e) => CommitOutcome::Failed(e),
            },
            Call::Write(f) => match f.await {
                Ok(()) => CommitOutcome::Written(batch),
                Err(e) => CommitOutcome::Failed(e),
            },
        }
    })
}

/// The store call a commit makes.
enum Call {
    Sync(StoreFuture<Flushed>),
    Write(StoreFuture<()>),
}

/// Waits for the commit in progress, if any; never completes if none.
pub async fn finished(task: &mut Option<JoinHandle<CommitOutcome>>) -> CommitOutcome {
    match task {
        Some(t) => match t.await {
            Ok(outcome) => outcome,
            Err(e) => CommitOutcome::Failed(StoreError::Task(format!("commit task failed: {e}"))),
        },
        None => std::future::pending().await,
    }
}
