//! The write pipeline: what the actor has accepted and not yet stored (the
//! open batch), the batch being written (at most one, see [`commit`]),
//! the durable cursors that are behind on disk, and what waits for a sync.
//!
//! Everything that changes stored state goes into the open batch; the
//! actor hands it to the store when the committer is idle, so one write and
//! one `fsync` cover everything that arrived during the previous one.
//! Replies that promise "on disk" are filed with the batch that carries
//! their change and sent when that batch is synced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use roomq_wire::pb;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::commit::{self, CommitOutcome};
use super::dedup::DedupKey;
use super::error::BrokerError;
use super::registry::Registry;
use super::room::MemberKey;
use crate::session::{RequestSlot, Seqs};
use crate::storage::{Flushed, RoomId, RoomStats, Store, StoreError, StoredMessage, WriteBatch};

/// What a pending reply will say.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PendingReply {
    /// A prepared frame (a join's reply).
    Frame(pb::ServerFrame),
    /// A publish confirmation; `duplicate` for a retry answered from the
    /// dedup table.
    Confirm {
        request_id: u64,
        seqs: Seqs,
        duplicate: bool,
    },
    /// An answer to another task (a namespace's deletion on this shard,
    /// which the session gathers from every shard): the rooms deleted.
    Notify(tokio::sync::oneshot::Sender<Result<u64, BrokerError>>, u64),
}

/// A reply that may only be sent once its batch is synced to disk: a publish
/// confirmation, or the reply to a durable join whose new cursor must exist
/// before the client can rely on it.
#[derive(Debug)]
pub struct PendingConfirm {
    pub session: Uuid,
    pub reply: PendingReply,
    pub permit: RequestSlot,
    /// A member to start delivering to once the reply is out.
    pub then_pump: Option<(RoomId, MemberKey)>,
    /// When the broker took the publish (for `roomq_publish_confirm_seconds`).
    pub received: Option<Instant>,
}

/// The writes gathered while the committer is busy.
#[derive(Debug, Default)]
struct OpenBatch {
    write: WriteBatch,
    /// Index into `write.appends` per room.
    rooms: HashMap<RoomId, usize>,
    confirms: Vec<PendingConfirm>,
    dedup: Vec<DedupKey>,
}

/// What a batch will answer once stored: the replies that wait for it, and
/// the dedup ids it stores.
#[derive(Debug, Default)]
pub struct InFlightBatch {
    pub confirms: Vec<PendingConfirm>,
    pub dedup: Vec<DedupKey>,
}

/// A batch the store has finished with.
#[derive(Debug)]
pub enum Committed {
    /// Written and synced (after `took`): its replies may be sent.
    Synced {
        flushed: Flushed,
        batch: Arc<WriteBatch>,
        done: InFlightBatch,
        took: Duration,
    },
    /// Written, not synced: its messages may be delivered, its replies
    /// wait for the next sync.
    Written {
        batch: Arc<WriteBatch>,
        done: InFlightBatch,
    },
}

/// The write side of one actor.
pub struct WritePipeline {
    store: Arc<dyn Store>,
    open: OpenBatch,
    /// What the batch being written will answer, while one is.
    committing: Option<InFlightBatch>,
    task: Option<JoinHandle<CommitOutcome>>,
    /// When the commit in progress started (for the commit watchdog).
    started: Instant,
    /// Since when some written batch is not yet synced (`batched` data and
    /// other writes nobody waits on). A sync follows within the cursor sync
    /// interval.
    unsynced_since: Option<Instant>,
    /// Durable members whose stored cursor is behind.
    dirty: HashSet<(RoomId, MemberKey)>,
    last_cursor_sync: Instant,
    cursor_interval: Duration,
    commit_timeout: Duration,
}

impl WritePipeline {
    /// An idle pipeline writing to `store`.
    pub fn new(store: Arc<dyn Store>, cursor_interval: Duration, commit_timeout: Duration) -> Self {
        WritePipeline {
            store,
            open: OpenBatch::default(),
            committing: None,
            task: None,
            started: Instant::now(),
            unsynced_since: None,
            dirty: HashSet::new(),
            last_cursor_sync: Instant::now(),
            cursor_interval,
            commit_timeout,
        }
    }

    /// The open batch, for changes other than appends.
    pub fn batch(&mut self) -> &mut WriteBatch {
        &mut self.open.write
    }

    /// Whether the open batch writes nothing.
    pub fn batch_is_empty(&self) -> bool {
        self.open.write.is_empty()
    }

    /// Adds `msg` (its seq assigned) to room `room`'s appends.
    pub fn append(&mut self, room: RoomId, msg: Arc<StoredMessage>) {
        let open = &mut self.open;
        let slot = *open.rooms.entry(room).or_insert_with(|| {
            open.write.appends.push((room, Vec::new()));
            open.write.appends.len() - 1
        });
        if let Some((_, v)) = open.write.appends.get_mut(slot) {
            v.push(msg);
        }
    }

    /// Files `reply` to be sent once the open batch is synced.
    pub fn after_sync(&mut self, reply: PendingConfirm) {
        self.open.confirms.push(reply);
    }

    /// Notes that the open batch stores dedup id `key`.
    pub fn stores_dedup(&mut self, key: DedupKey) {
        self.open.dedup.push(key);
    }

    /// Whether something was written and not synced yet.
    pub fn unsynced(&self) -> bool {
        self.unsynced_since.is_some()
    }

    /// Durable member `key` of `room` has moved: its cursor is written with
    /// a coming batch.
    pub fn mark_dirty(&mut self, room: RoomId, key: MemberKey) {
        self.dirty.insert((room, key));
    }

    /// Forgets the cursors of room `room` (deleted).
    pub fn forget_room(&mut self, room: RoomId) {
        self.dirty.retain(|(r, _)| *r != room);
    }

    /// Fails if the commit in progress has run past the commit timeout.
    pub fn check_stall(&self) -> Result<(), StoreError> {
        if self.task.is_some() && self.started.elapsed() >= self.commit_timeout {
            return Err(StoreError::Stalled(self.commit_timeout));
        }
        Ok(())
    }

    /// Whether no batch is being written.
    pub fn idle(&self) -> bool {
        self.committing.is_none()
    }

    /// The next time the pipeline has something to do on its own: the
    /// commit watchdog, the cursor sync, the sync of `batched` writes.
    pub fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.task.is_some() {
            consider(self.started + self.commit_timeout);
        }
        if self.idle() {
            if !self.dirty.is_empty() {
                consider(self.last_cursor_sync + self.cursor_interval);
            }
            if let Some(since) = self.unsynced_since {
                consider(since + self.cursor_interval);
            }
        }
        wake
    }

    /// Hands the open batch to the store if the committer is idle and there
    /// is something worth writing. Cursor-only batches wait for the cursor
    /// sync interval unless `force` is set. `rooms` gives the cursors and
    /// room stats to write.
    pub fn start(&mut self, force: bool, rooms: &Registry) {
        if !self.idle() {
            return;
        }
        let now = Instant::now();
        let cursors_due = !self.dirty.is_empty()
            && (force
                || !self.open.write.is_empty()
                || now >= self.last_cursor_sync + self.cursor_interval);
        if cursors_due {
            for (room_id, key) in std::mem::take(&mut self.dirty) {
                let Some(name) = key.stored_name() else {
                    continue;
                };
                let record = rooms
                    .get(&room_id)
                    .and_then(|r| r.members.get(&key))
                    .map(|m| m.record());
                self.open.write.cursors.push((room_id, name, record));
            }
            self.last_cursor_sync = now;
        }
        let sync_due = self
            .unsynced_since
            .is_some_and(|since| force || now >= since + self.cursor_interval);
        if self.open.write.is_empty() && self.open.confirms.is_empty() && !sync_due {
            return;
        }
        // A batch someone waits on (a confirmation, a reply) is synced
        // before it is answered, and so is one that changes cursors,
        // namespaces or deletes; one that holds only `batched` publishes
        // is written now and synced within the interval.
        let w = &self.open.write;
        let sync = if self.open.confirms.is_empty()
            && !sync_due
            && w.cursors.is_empty()
            && w.namespaces.is_empty()
            && w.deleted_rooms.is_empty()
            && w.purged.is_empty()
        {
            commit::Sync::Later
        } else {
            commit::Sync::Now
        };
        let mut open = std::mem::take(&mut self.open);
        for (room_id, _) in &open.write.appends {
            if let Some(room) = rooms.get(room_id) {
                let stats = RoomStats {
                    first_seq: room.first_seq,
                    stored_bytes: room.stored_bytes,
                };
                open.write.room_stats.push((*room_id, stats));
            }
        }
        self.committing = Some(InFlightBatch {
            confirms: open.confirms,
            dedup: open.dedup,
        });
        self.started = Instant::now();
        self.task = Some(commit::spawn(self.store.clone(), open.write, sync));
    }

    /// Waits for the commit in progress; never completes if there is none.
    pub async fn finished(&mut self) -> CommitOutcome {
        commit::finished(&mut self.task).await
    }

    /// Takes the outcome of the commit that [`WritePipeline::finished`]
    /// reported. A failed commit is an error: the broker stops.
    pub fn complete(&mut self, outcome: CommitOutcome) -> Result<Committed, StoreError> {
        self.task = None;
        let done = self.committing.take().unwrap_or_default();
        match outcome {
            CommitOutcome::Done(flushed, batch) => {
                self.unsynced_since = None;
                Ok(Committed::Synced {
                    flushed,
                    batch,
                    done,
                    took: self.started.elapsed(),
                })
            }
            CommitOutcome::Written(batch) => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                Ok(Committed::Written { batch, done })
            }
            CommitOutcome::Failed(e) => Err(e),
        }
    }

    /// Marks every durable cursor of `rooms` to be written (at shutdown).
    pub fn mark_all_dirty(&mut self, rooms: &Registry) {
        for (id, room) in rooms.iter() {
            for (key, m) in &room.members {
                if m.durable {
                    self.dirty.insert((*id, key.clone()));
                }
            }
        }
    }

    /// Syncs everything written so far (shutdown).
    pub async fn flush(&self) -> Result<Flushed, StoreError> {
        self.store.flush().await
    }
}
