//! The committer: one thread that applies write batches to the store, each
//! followed by a flush. While it flushes, the broker keeps accepting
//! publishes into the next batch, so one flush covers everything that arrived
//! during the previous one (group commit).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::storage::{Flushed, Store, StoreError, WriteBatch};

/// What the committer reports for each batch, in order.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The batch is on disk.
    Done(Flushed, WriteBatch),
    /// The store failed; nothing of the batch may be confirmed, and the
    /// broker must stop (fail-stop).
    Failed(StoreError),
}

/// Handle to the committer thread.
pub struct Committer {
    tx: Option<std::sync::mpsc::Sender<WriteBatch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread. Outcomes arrive on the returned receiver.
    pub fn start(
        store: Arc<dyn Store>,
    ) -> std::io::Result<(Committer, mpsc::UnboundedReceiver<CommitOutcome>)> {
        let (tx, rx) = std::sync::mpsc::channel::<WriteBatch>();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("roomq-commit".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    let outcome = match store.commit(&batch) {
                        Ok(flushed) => CommitOutcome::Done(flushed, batch),
                        Err(e) => CommitOutcome::Failed(e),
                    };
                    let failed = matches!(outcome, CommitOutcome::Failed(_));
                    if out_tx.send(outcome).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok((
            Committer {
                tx: Some(tx),
                thread: Some(thread),
            },
            out_rx,
        ))
    }

    /// Queues a batch. Returns false if the thread has stopped.
    pub fn send(&self, batch: WriteBatch) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok())
    }

    /// Stops the thread after the batches already queued.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}
