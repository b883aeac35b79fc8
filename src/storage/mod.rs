//! Durable storage of rooms, messages, cursors and dedup records.
//!
//! The broker talks to storage only through the [`Store`] trait so that a
//! second backend can be added; [`SledStore`] is the one we ship. Everything
//! written goes through [`Store::commit`], which applies one atomic batch and
//! returns only after a flush that covers it has completed. Its [`Flushed`]
//! return value is the proof the broker needs before it may confirm a
//! publish: there is no other way to make one.
//!
//! Layout:
//! - [`record`]: the byte layout of every stored value, each sealed with a
//!   CRC-32 (IEEE) checksum that is verified on read.
//! - [`sled_store`]: the sled 0.34 implementation.

pub mod record;
pub mod sled_store;

use std::sync::Arc;

pub use record::{CursorRecord, DedupRecord, Extra, MessageInfo, StoredMessage};

/// What a room keeps beside its log: where the log starts (messages below
/// were purged) and how many message bytes it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomStats {
    pub first_seq: u64,
    pub stored_bytes: u64,
}
pub use sled_store::SledStore;

/// Numeric id of a room, assigned by the broker when the room is created.
pub type RoomId = u64;

/// Proof that a [`Store::commit`] returned after its data reached disk.
///
/// Only storage code can construct it; the broker requires one to confirm a
/// `sync` publish.
#[derive(Debug)]
#[must_use]
pub struct Flushed(());

impl Flushed {
    fn new() -> Self {
        Flushed(())
    }
}

/// Storage failures. Any of these during a commit is fatal for the broker
/// (fail-stop): nothing in the failed batch is ever confirmed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage i/o failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("a commit has not finished after {0:?}; storage is stuck")]
    Stalled(std::time::Duration),
    #[error("stored record {key} failed its checksum or layout check: {why}")]
    Corrupt { key: String, why: &'static str },
}

/// One atomic unit of writes. Built by the broker, applied by the committer.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Rooms created since the previous batch.
    pub new_rooms: Vec<(RoomId, Arc<str>, Arc<str>)>,
    /// Messages appended to each room, consecutive seqs per entry.
    pub appends: Vec<(RoomId, Vec<Arc<StoredMessage>>)>,
    /// Cursor updates; `None` deletes the cursor.
    pub cursors: Vec<(RoomId, Arc<str>, Option<CursorRecord>)>,
    /// New dedup records, keyed by namespace and dedup id. All of one batch
    /// are stored together in one value.
    pub dedup_put: Vec<(Arc<str>, [u8; 16], DedupRecord)>,
    /// Delete the dedup records accepted before this time (ms since the
    /// Unix epoch): they are past the dedup window.
    pub dedup_expire_before: Option<u64>,
    /// Stats of rooms whose log changed in this batch.
    pub room_stats: Vec<(RoomId, RoomStats)>,
    /// Rooms whose stored messages below their `first_seq` (given in
    /// `room_stats`) are deleted.
    pub purged: Vec<RoomId>,
    /// Rooms deleted with everything they hold. Anything else in this
    /// batch for them is dropped.
    pub deleted_rooms: Vec<RoomId>,
    /// Namespace records to store (`Some`) or delete (`None`), by name.
    pub namespaces: Vec<(String, Option<Vec<u8>>)>,
    /// The next room id, so that ids of deleted rooms are never reused.
    pub next_room_id: Option<RoomId>,
}

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.new_rooms.is_empty()
            && self.appends.is_empty()
            && self.cursors.is_empty()
            && self.dedup_put.is_empty()
            && self.dedup_expire_before.is_none()
            && self.room_stats.is_empty()
            && self.purged.is_empty()
            && self.deleted_rooms.is_empty()
            && self.namespaces.is_empty()
            && self.next_room_id.is_none()
    }
}

/// A room as found on disk.
#[derive(Debug, Clone)]
pub struct RecoveredRoom {
    pub id: RoomId,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Highest stored seq, 0 if the room is empty.
    pub last_seq: u64,
    /// First stored seq and stored bytes.
    pub stats: RoomStats,
}

/// Everything the broker needs to resume after a restart or crash.
#[derive(Debug, Default)]
pub struct Recovered {
    pub rooms: Vec<RecoveredRoom>,
    pub cursors: Vec<(RoomId, Arc<str>, CursorRecord)>,
    pub dedup: Vec<(Arc<str>, [u8; 16], DedupRecord)>,
    /// Namespace records (created or changed through `/admin`), as stored.
    pub namespaces: Vec<Vec<u8>>,
    /// The lowest room id never used.
    pub next_room_id: RoomId,
}

/// A durable store of rooms, messages, cursors and dedup records.
pub trait Store: Send + Sync + 'static {
    /// Reads everything needed to resume serving.
    fn recover(&self) -> Result<Recovered, StoreError>;

    /// Applies `batch` atomically and flushes it to disk before returning.
    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError>;

    /// Reads up to `max` messages of `room` with seq >= `from`, in order,
    /// stopping early once `max_bytes` of message data have been read.
    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError>;

    /// Flushes whatever is buffered (used at shutdown).
    fn flush(&self) -> Result<Flushed, StoreError>;
}
