//! Group commit. At most one batch is being written at a time, on tokio's
//! blocking pool; while it is written the broker keeps accepting publishes
//! into the next batch, so one flush covers everything that arrived during
//! the previous one.
//!
//! The blocking pool (rather than a thread of our own) has one more virtue:
//! tokio does not auto-advance paused time while a blocking task runs, so
//! timer tests with `tokio::time::pause()` see storage as instantaneous
//! instead of jumping the clock while a flush is in progress.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::storage::{Flushed, Store, StoreError, WriteBatch};

/// What a commit ended in.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The batch is on disk.
    Done(Flushed, WriteBatch),
    /// The store failed; nothing of the batch may be confirmed, and the
    /// broker must stop (fail-stop).
    Failed(StoreError),
}

/// Writes `batch` and flushes it, off the async threads.
pub fn spawn(store: Arc<dyn Store>, batch: WriteBatch) -> JoinHandle<CommitOutcome> {
    tokio::task::spawn_blocking(move || match store.commit(&batch) {
        Ok(flushed) => CommitOutcome::Done(flushed, batch),
        Err(e) => CommitOutcome::Failed(e),
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
