//! The dedup table: which publish ids were accepted in the dedup window,
//! and with which seqs, so that a retry is answered with the original's
//! seqs instead of being stored twice. A record is *pending* while its
//! batch is being written (retries wait for it) and *stored* once the batch
//! is on disk, until the window has passed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::session::{RequestSlot, Seqs};

/// A dedup id: its namespace and the client's 16 bytes.
pub type DedupKey = (Arc<str>, [u8; 16]);

/// A retry waiting for its original's batch: session, request id, slot.
pub type Waiter = (Uuid, u64, RequestSlot);

/// Where a dedup id stands.
#[derive(Debug)]
pub enum DedupState {
    /// Its batch is being written; retries wait for it.
    Pending { seqs: Seqs, waiters: Vec<Waiter> },
    /// Stored; retries get these seqs back.
    Stored { seqs: Seqs },
}

/// The dedup ids of the namespaces one actor serves.
#[derive(Debug)]
pub struct DedupTable {
    ids: HashMap<DedupKey, DedupState>,
    /// Stored ids by expiry, oldest first.
    expiry: VecDeque<(Instant, DedupKey)>,
    window: Duration,
}

impl DedupTable {
    /// An empty table keeping ids for `window`.
    pub fn new(window: Duration) -> Self {
        DedupTable {
            ids: HashMap::new(),
            expiry: VecDeque::new(),
            window,
        }
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Where `key` stands, if it is known.
    pub fn get(&self, key: &DedupKey) -> Option<&DedupState> {
        self.ids.get(key)
    }

    /// An id recovered from disk, stored with `seqs`, expiring at `expires`.
    /// Recovered ids come oldest first.
    pub fn restore(&mut self, key: DedupKey, seqs: Seqs, expires: Instant) {
        self.expiry.push_back((expires, key.clone()));
        self.ids.insert(key, DedupState::Stored { seqs });
    }

    /// A new publish with id `key`, given `seqs`, whose batch is open.
    pub fn pending(&mut self, key: DedupKey, seqs: Seqs) {
        let waiters = Vec::new();
        self.ids.insert(key, DedupState::Pending { seqs, waiters });
    }

    /// Files a retry of pending id `key` to be answered with the original.
    /// Gives it back if `key` is not pending.
    pub fn wait(&mut self, key: &DedupKey, waiter: Waiter) -> Result<(), Waiter> {
        match self.ids.get_mut(key) {
            Some(DedupState::Pending { waiters, .. }) => {
                waiters.push(waiter);
                Ok(())
            }
            _ => Err(waiter),
        }
    }

    /// The batch of pending id `key` is stored: the id is kept for the
    /// window from `now`. Returns its seqs and the retries that waited.
    pub fn stored(&mut self, key: DedupKey, now: Instant) -> Option<(Seqs, Vec<Waiter>)> {
        let state = self.ids.get_mut(&key)?;
        let DedupState::Pending { seqs, waiters } = state else {
            return None;
        };
        let seqs = seqs.clone();
        let waiters = std::mem::take(waiters);
        *state = DedupState::Stored { seqs: seqs.clone() };
        self.expiry.push_back((now + self.window, key));
        Some((seqs, waiters))
    }

    /// When the oldest stored id expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|(t, _)| *t)
    }

    /// Forgets the stored ids whose window has passed by `now`; true if
    /// any was (their records on disk are then due for deletion).
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut any = false;
        while self.expiry.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, key)) = self.expiry.pop_front() else {
                break;
            };
            if matches!(self.ids.get(&key), Some(DedupState::Stored { .. })) {
                self.ids.remove(&key);
                any = true;
            }
        }
        any
    }

    /// Forgets every id of namespace `name` (it was deleted).
    pub fn forget_namespace(&mut self, name: &str) {
        self.ids.retain(|(ns, _), _| &**ns != name);
    }
}
