//! Group commit. At most one batch is being written at a time, on tokio's
//! blocking pool; while it is written the broker keeps accepting publishes
//! into the next batch, so one flush — and one `fsync` — covers everything
//! that arrived during the previous one.
//!
//! A batch that nobody waits on (only `batched` publishes, lazily stored
//! cursors and the like) may be *written* without a sync ([`Sync::Later`]);
//! the broker then syncs within `cursor_sync_interval_ms`, or sooner with
//! the next batch that someone waits on.
//!
//! The blocking pool (rather than a thread of our own) has one more virtue:
//! tokio does not auto-advance paused time while a blocking task runs, so
//! timer tests with `tokio::time::pause()` see storage as instantaneous
//! instead of jumping the clock while a flush is in progress.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::storage::{Flushed, Store, StoreError, WriteBatch};

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
    Done(Flushed, WriteBatch),
    /// The batch is written but not synced (it survives a killed process,
    /// not a power cut).
    Written(WriteBatch),
    /// The store failed; nothing of the batch may be confirmed, and the
    /// broker must stop (fail-stop).
    Failed(StoreError),
}

/// Writes `batch` and, with [`Sync::Now`], syncs it, off the async threads.
/// An empty batch with [`Sync::Now`] only syncs what was written before.
pub fn spawn(store: Arc<dyn Store>, batch: WriteBatch, sync: Sync) -> JoinHandle<CommitOutcome> {
    tokio::task::spawn_blocking(move || {
        let result = match sync {
            Sync::Now if batch.is_empty() => store.flush().map(Some),
            Sync::Now => store.commit(&batch).map(Some),
            Sync::Later => store.write(&batch).map(|()| None),
        };
        match result {
            Ok(Some(flushed)) => CommitOutcome::Done(flushed, batch),
            Ok(None) => CommitOutcome::Written(batch),
            Err(e) => CommitOutcome::Failed(e),
        }
    })
}

/// Waits for the commit in progress, if any; never completes if none.
pub async fn finished(task: &mut Option<JoinHandle<CommitOutcome>>) -> CommitOutcome {
    match task {
        Some(t) => match t.await {
            Ok(outcome) => outcome,
            Err(e) => CommitOutcome::Failed(StoreError::Sled(sled::Error::ReportableBug(format!(
                "commit task failed: {e}"
            )))),
        },
        None => std::future::pending().await,
    }
}
