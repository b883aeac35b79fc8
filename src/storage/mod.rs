//! Durable storage of rooms, messages, cursors and dedup records.
//!
//! The broker talks to storage only through the [`Store`] trait, which names
//! no engine and never blocks its caller: every call returns a future that
//! the broker runs beside its actor, and the result comes back to the actor
//! as an event (a finished commit, a finished read). An engine is chosen by
//! `storage.engine` ([`open`]); sled ([`SledStore`]) is the one we ship. A
//! local engine that does blocking I/O implements the synchronous
//! [`BlockingStore`] and is wrapped in [`OnBlockingPool`], which runs each
//! call on tokio's blocking pool; a networked engine implements [`Store`]
//! directly. The conformance suite in `tests/conformance/` (run against
//! sled by `tests/store_conformance.rs`) is what any engine must pass.
//!
//! Everything written goes through [`Store::commit`] or [`Store::write`],
//! which apply one atomic batch. Two levels of "stored" are told apart in
//! the types:
//!
//! - **written** ([`Store::write`] returned `Ok(())`): the batch is in the
//!   operating system's page cache. It survives the broker process being
//!   killed, not a kernel crash or a power cut.
//! - **synced** (a [`Flushed`] was returned, by [`Store::commit`] or
//!   [`Store::flush`]): every byte written before, and the directory entries
//!   that name new files, were `fsync`ed. It survives a kernel crash and a
//!   power cut, on a disk that honours cache flushes.
//!
//! [`Flushed`] is the proof the broker needs before it may confirm a `sync`
//! publish: there is no other way to make one. A sync that fails poisons the
//! store: every later call fails too (fail-stop), because after a failed
//! `fsync` Linux may have dropped the dirty pages and a retry would report a
//! success that is not true.
//!
//! Layout:
//! - [`record`]: the byte layout of every stored value, each sealed with a
//!   CRC-32 (IEEE) checksum that is verified on read.
//! - [`sled_store`]: the sled 0.34 implementation.
//! - [`blocking`]: the adapter from a blocking engine to [`Store`].
//! - `sync`: what makes sled's writes survive a power cut (`fsync` of the
//!   data file, new blob files and the directories that name them).

pub mod blocking;
#[cfg(feature = "cluster")]
pub mod jetstream;
pub mod record;
pub mod sled_store;
mod sync;

use std::path::Path;
use std::sync::Arc;

pub use blocking::{BlockingStore, OnBlockingPool};

pub use record::{key_hash, CursorRecord, DedupRecord, Extra, MessageInfo, StoredMessage};

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

/// Proof that everything written before it was synced to disk (`fsync`).
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

/// Storage failures, whatever the engine. Any of these during a commit is
/// fatal for the broker (fail-stop): nothing in the failed batch is ever
/// confirmed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed; its own error says how.
    #[error("storage i/o failed: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The task running a storage call ended without an answer (it
    /// panicked or was cancelled).
    #[error("a storage call did not finish: {0}")]
    Task(String),
    #[error("a commit has not finished after {0:?}; storage is stuck")]
    Stalled(std::time::Duration),
    #[error("stored record {key} failed its checksum or layout check: {why}")]
    Corrupt { key: String, why: &'static str },
    #[error("syncing {path} to disk failed: {source}")]
    Sync {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("storage is poisoned by an earlier failed sync; restart to recover")]
    Poisoned,
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
    /// Highest seq the room has used: that of its newest stored message,
    /// or `stats.first_seq - 1` once everything was purged (seqs are never
    /// reused); 0 if the room never had a message.
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

/// What a [`Store`] call returns: a future that owns what it needs, so the
/// broker can run it beside its actor.
pub type StoreFuture<T> = futures::future::BoxFuture<'static, Result<T, StoreError>>;

/// A durable store of rooms, messages, cursors and dedup records, as the
/// broker sees it: engine-neutral and asynchronous. No call blocks the
/// caller; the futures may run concurrently with each other. Each shard
/// of the broker has at most one write (`commit`, `write`, `flush`) in
/// flight, so with several shards writes run concurrently, each on its own
/// rooms (the namespace records only from shard 0): an engine must apply
/// each batch atomically and may not assume the writes come one at a time.
pub trait Store: Send + Sync + 'static {
    /// Reads everything needed to resume serving.
    fn recover(&self) -> StoreFuture<Recovered>;

    /// Applies `batch` atomically and syncs it (and everything written
    /// before) to disk before it resolves.
    fn commit(&self, batch: Arc<WriteBatch>) -> StoreFuture<Flushed>;

    /// Applies `batch` atomically and hands it to the operating system, but
    /// does not sync: it survives a killed process, not a power cut, until
    /// the next [`Store::commit`] or [`Store::flush`]. Used for `batched`
    /// namespaces. The default syncs anyway, which is always allowed.
    fn write(&self, batch: Arc<WriteBatch>) -> StoreFuture<()> {
        let commit = self.commit(batch);
        Box::pin(async move { commit.await.map(|_| ()) })
    }

    /// Reads up to `max` messages of `room` with seq >= `from`, in order,
    /// stopping early once `max_bytes` of message data have been read: the
    /// last message returned is the one that brings the sum of their
    /// `encoded` lengths to `max_bytes` or more. Everything a resolved
    /// `commit` or `write` stored is visible; messages a purge deleted
    /// (below the room's `first_seq`) are not, even from a lower `from`.
    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<Arc<StoredMessage>>>;

    /// Syncs everything written so far (the background sync of `batched`
    /// data, and shutdown).
    fn flush(&self) -> StoreFuture<Flushed>;
}

/// The storage engines roomq can use (`storage.engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// sled 0.34 in the data directory.
    #[default]
    Sled,
    /// NATS JetStream (`[jetstream]`; needs the `cluster` cargo feature).
    Jetstream,
}

/// Opens a local engine in `dir` (which exists). Blocks: call it from a
/// blocking context. JetStream is not local: it is opened with
/// `jetstream::JetStreamStore::connect` (the server does so in
/// `server::open_store`).
pub fn open(engine: Engine, dir: &Path, cache_bytes: u64) -> Result<Arc<dyn Store>, StoreError> {
    match engine {
        Engine::Sled => Ok(Arc::new(OnBlockingPool::new(SledStore::open(
            dir,
            cache_bytes,
        )?))),
        Engine::Jetstream => Err(StoreError::Engine(
            "the jetstream engine is not opened from a data directory".into(),
        )),
    }
}
