//! NATS JetStream as roomq's storage engine: one broker's rooms in
//! JetStream streams, its cursors and ids in KV buckets (docs/cluster.md
//! §3–4, step 1 of §9, with the simplifications below).
//!
//! A room's log is the chain of records on its subject, one record per
//! room per commit (several, chained, when its messages exceed
//! `record_max_bytes` or `record_max_messages`); each record names the
//! stream sequence of the room's previous one in
//! `Nats-Expected-Last-Subject-Sequence`. That chain is the fence: a
//! process that did not write the room's last record cannot append to it.
//! Recovery reads each room's last record from the stream leader and
//! remembers its sequence; an append JetStream refuses means another
//! process wrote the room, and the commit fails (the broker stops,
//! confirming nothing of it).
//!
//! What a commit promises: every record, cursor and key of the batch was
//! acknowledged by JetStream (by a quorum of the stream's replicas). A
//! batch is atomic **per room**, not across rooms: a crash during a
//! commit can leave one room's records stored and another's not; and a
//! room whose messages needed several records in one commit may keep a
//! prefix of them. Nothing of such a batch was confirmed.
//!
//! Simplified from the design, for one broker per prefix (step 1): room
//! ids are allocated by the broker, as with sled (`WriteBatch::new_rooms`,
//! keys `room.<room_id>`); no leases, ownership records or epoch markers;
//! cursors are written after every record of the commit is acknowledged;
//! a namespace whose rooms were all deleted keeps its (empty) stream; a
//! purge interrupted by a crash is not resumed (reads skip what lies below
//! the room's first seq, so the leftover records cost space only).
//!
//! State: one [`Inner`] behind an `Arc`; the maps of rooms and namespaces
//! are short `std::sync::Mutex`es never held across an `.await`; commits
//! run one at a time under `Inner::writing` (a tokio mutex), which also
//! makes `flush` wait for one in progress.
//!
//! Layout:
//! - [`layout`]: names of streams, subjects, buckets and keys.
//! - `head`: a record's headers (kind, seqs, stats, dedup parts), checked.
//! - `append`: the fenced append with its retries.
//! - `commit`: a `WriteBatch` as records, keys and purges.
//! - `read`: reads through the index and the binary search.
//! - `recover`: rebuilding [`Recovered`] from buckets and record headers.

mod append;
mod commit;
mod head;
pub mod layout;
mod read;
mod recover;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use super::{
    Flushed, Recovered, RoomId, Store, StoreError, StoreFuture, StoredMessage, WriteBatch,
};
use crate::config::Config;
use layout::Layout;

/// Headroom above `record_max_bytes` that the servers' `max_payload` must
/// leave for a record's headers.
const HEADER_ROOM: usize = 64 * 1024;

/// Most publish acknowledgements one connection waits for at once.
const MAX_ACK_INFLIGHT: usize = 4096;

/// Longest back-off between two tries of a failed JetStream write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Rooms read or written at once by recovery and by one commit's
/// preparation.
const CONCURRENCY: usize = 32;

/// Rooms stored in JetStream streams, cursors and ids in KV buckets.
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

/// A namespace: its id (the revision of its `ns.` key) and its stream.
#[derive(Clone)]
struct Namespace {
    id: u64,
    stream: Arc<stream::Stream>,
}

/// Where one record of a room is: its first seq maps to this.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    stream_seq: u64,
    count: u32,
}

/// What the store knows of a room it has read or written.
struct RoomState {
    namespace: Arc<str>,
    ns: Namespace,
    subject: Arc<str>,
    /// Stream sequence of the room's newest record (0: none yet): what the
    /// next append expects.
    tip: u64,
    /// The room's last seq, first stored seq and stored bytes, as its
    /// newest record says.
    last: u64,
    first: u64,
    bytes: u64,
    /// First seq → record, for records written or read (bounded).
    index: BTreeMap<u64, IndexEntry>,
}

/// The part of a [`RoomState`] a read or a commit works with, copied out
/// of the lock.
#[derive(Clone)]
struct RoomView {
    namespace: Arc<str>,
    stream: Arc<stream::Stream>,
    subject: Arc<str>,
    tip: u64,
    last: u64,
    first: u64,
    bytes: u64,
}

impl RoomState {
    fn view(&self) -> RoomView {
        RoomView {
            namespace: self.namespace.clone(),
            stream: self.ns.stream.clone(),
            subject: self.subject.clone(),
            tip: self.tip,
            last: self.last,
            first: self.first,
            bytes: self.bytes,
        }
    }
}

/// Entries an index keeps per room; beyond, every other entry of its older
/// half is dropped (a read there then searches a little longer).
const INDEX_ENTRIES: usize = 4096;

struct Inner {
    js: jetstream::Context,
    layout: Layout,
    meta: kv::Store,
    cursors: kv::Store,
    replicas: usize,
    record_max_bytes: usize,
    record_max_messages: usize,
    dedup_window: Duration,
    request_timeout: Duration,
    /// How long a failed write (an append, a KV put or delete, a purge) is
    /// tried again before the commit fails: two thirds of
    /// `storage.commit_timeout_ms`, so that a NATS leader election (seconds)
    /// passes without stopping the broker, and the commit still fails
    /// before the broker's own watchdog would call it stuck.
    retry_for: Duration,
    /// Distinguishes this process's `Nats-Msg-Id`s from any other's.
    incarnation: String,
    /// Held by a commit for its whole length.
    writing: tokio::sync::Mutex<()>,
    /// A commit failed: every later write fails too (fail-stop).
    poisoned: AtomicBool,
    /// The highest `dedup_expire_before` stored.
    dedup_cutoff: AtomicU64,
    rooms: Mutex<HashMap<RoomId, RoomState>>,
    namespaces: Mutex<HashMap<Arc<str>, Namespace>>,
}

/// An engine error with its context.
fn engine(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("{what}: {e}").into())
}

/// Runs `op` until it succeeds or `retry_for` has passed, backing off from
/// 50 ms to [`MAX_RETRY_DELAY`]. For writes that are safe to repeat: a KV
/// put or delete, a purge.
async fn retrying<T, E, F, Fut>(retry_for: Duration, what: &str, mut op: F) -> Result<T, StoreError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() + delay < retry_for => {
                tracing::warn!(what, error = %e, "JetStream write failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(e) => {
                return Err(engine(
                    format!("{what} (tried for {:?})", start.elapsed()),
                    e,
                ))
            }
        }
    }
}

/// Locks a map; a panic elsewhere while it was held leaves data that is
/// still consistent (every update is one assignment), so it is used on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JetStreamStore {
    /// Connects to the servers of `config.jetstream` and prepares the
    /// buckets roomq uses (streams are made per namespace when needed).
    /// Fails, naming the servers, when they cannot be reached, have no
    /// JetStream, or accept messages too small for a record.
    pub async fn connect(config: &Config) -> Result<JetStreamStore, StoreError> {
        let c = &config.jetstream;
        let urls = c.url_list();
        let timeout = Duration::from_millis(c.request_timeout_ms);
        let mut options = async_nats::ConnectOptions::new()
            .name("roomqd")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout));
        if !c.credentials_file.as_os_str().is_empty() {
            options = options
                .credentials_file(&c.credentials_file)
                .await
                .map_err(|e| engine(format!("jetstream: {:?}", c.credentials_file), e))?;
        }
        if !c.token.is_empty() {
            options = options.token(c.token.clone());
        }
        if !c.user.is_empty() {
            options = options.user_and_password(c.user.clone(), c.password.clone());
        }
        if !c.tls_ca_file.as_os_str().is_empty() {
            options = options.add_root_certificates(c.tls_ca_file.clone());
        }
        let client = options
            .connect(urls.as_slice())
            .await
            .map_err(|e| engine(format!("cannot connect to NATS at {}", urls.join(",")), e))?;
        let record_max_bytes = usize::try_from(c.record_max_bytes).unwrap_or(usize::MAX);
        let max_payload = client.server_info().max_payload;
        if max_payload < record_max_bytes.saturating_add(HEADER_ROOM) {
            return Err(engine(
                format!("NATS at {}", urls.join(",")),
                format!(
                    "max_payload is {max_payload} bytes; jetstream.record_max_bytes \
                     ({record_max_bytes}) needs at least {} (raise max_payload or lower \
                     record_max_bytes)",
                    record_max_bytes.saturating_add(HEADER_ROOM)
                ),
            ));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(MAX_ACK_INFLIGHT)
            .backpressure_on_inflight(true)
            .build(client);
        js.query_account().await.map_err(|e| {
            engine(
                format!("NATS at {} does not answer as JetStream", urls.join(",")),
                e,
            )
        })?;
        let layout = Layout::new(&c.prefix);
        let replicas = usize::try_from(c.replicas).unwrap_or(1);
        let meta = bucket(&js, layout.meta_bucket(), replicas).await?;
        let cursors = bucket(&js, layout.cursors_bucket(), replicas).await?;
        // A lower cutoff must never replace the stored one, recovered or
        // not.
        let dedup_cutoff = match leader_get(&meta, layout::DEDUP_CUTOFF).await? {
            Some((value, _)) => super::record::decode_u64(layout::DEDUP_CUTOFF.as_bytes(), &value)?,
            None => 0,
        };
        Ok(JetStreamStore {
            inner: Arc::new(Inner {
                js,
                layout,
                meta,
                cursors,
                replicas,
                record_max_bytes,
                record_max_messages: usize::try_from(c.record_max_messages)
                    .unwrap_or(usize::MAX)
                    .max(1),
                dedup_window: Duration::from_millis(config.limits.dedup_window_ms),
                request_timeout: timeout,
                retry_for: Duration::from_millis(config.storage.commit_timeout_ms / 3 * 2),
                incarnation: uuid::Uuid::new_v4().simple().to_string(),
                writing: tokio::sync::Mutex::new(()),
                poisoned: AtomicBool::new(false),
                dedup_cutoff: AtomicU64::new(dedup_cutoff),
                rooms: Mutex::new(HashMap::new()),
                namespaces: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Opens KV bucket `name`, creating it (history 1, file storage) if it
/// does not exist. An existing bucket keeps its settings.
async fn bucket(
    js: &jetstream::Context,
    name: String,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    match js.get_key_value(&name).await {
        Ok(store) => return Ok(store),
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {}
        Err(e) => return Err(engine(format!("open KV bucket {name}"), e)),
    }
    let config = kv::Config {
        bucket: name.clone(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_key_value(config)
        .await
        .map_err(|e| engine(format!("create KV bucket {name}"), e))
}

impl Inner {
    /// The settings of a namespace's stream (docs/cluster.md §3).
    fn stream_config(&self, ns_id: u64) -> stream::Config {
        stream::Config {
            name: self.layout.namespace_stream(ns_id),
            subjects: vec![self.layout.namespace_subjects(ns_id)],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            retention: stream::RetentionPolicy::Limits,
            // No server-side limit: it would delete messages without the
            // broker knowing.
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            max_age: Duration::ZERO,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            deny_delete: true,
            deny_purge: false,
            allow_rollup: false,
            ..Default::default()
        }
    }

    /// The namespace `name`: from memory, else its `ns.` key (created if
    /// `create`, which is how a namespace gets its id), and its stream.
    async fn namespace(&self, name: &str, create: bool) -> Result<Option<Namespace>, StoreError> {
        if let Some(ns) = lock(&self.namespaces).get(name) {
            return Ok(Some(ns.clone()));
        }
        let key = layout::namespace_key(name);
        let id = match leader_get(&self.meta, &key).await? {
            Some((_, revision)) => revision,
            None if create => {
                let value = Bytes::copy_from_slice(name.as_bytes());
                match self.meta.create(&key, value).await {
                    Ok(revision) => revision,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        match leader_get(&self.meta, &key).await? {
                            Some((_, revision)) => revision,
                            None => return Err(engine(format!("create {key}"), e)),
                        }
                    }
                    Err(e) => return Err(engine(format!("create {key}"), e)),
                }
            }
            None => return Ok(None),
        };
        self.namespace_with_id(name, id).await.map(Some)
    }

    /// The namespace `name` whose id is known, with its stream (created if
    /// missing).
    async fn namespace_with_id(&self, name: &str, id: u64) -> Result<Namespace, StoreError> {
        if let Some(ns) = lock(&self.namespaces).get(name) {
            if ns.id == id {
                return Ok(ns.clone());
            }
        }
        let config = self.stream_config(id);
        let stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| engine(format!("stream {}", self.layout.namespace_stream(id)), e))?;
        let ns = Namespace {
            id,
            stream: Arc::new(stream),
        };
        lock(&self.namespaces).insert(Arc::from(name), ns.clone());
        Ok(ns)
    }

    /// The room `room` as far as this store knows it: from memory, else
    /// from its `room.` key and its newest record. `None`: no such room
    /// (never created, or deleted).
    async fn room(&self, room: RoomId) -> Result<Option<RoomView>, StoreError> {
        if let Some(state) = lock(&self.rooms).get(&room) {
            return Ok(Some(state.view()));
        }
        let key = layout::room_key(room);
        let Some((value, _)) = leader_get(&self.meta, &key).await? else {
            return Ok(None);
        };
        let (namespace, _name) = super::record::decode_room(key.as_bytes(), &value)?;
        let Some(ns) = self.namespace(&namespace, false).await? else {
            return Err(StoreError::Corrupt {
                key,
                why: "the room's namespace has no id",
            });
        };
        let state = self.load_room(room, Arc::from(namespace), ns).await?;
        Ok(self.adopt(room, state))
    }

    /// A room's state from its newest record, read from the stream leader;
    /// `None` when that record is a tombstone (the room is being deleted).
    async fn load_room(
        &self,
        room: RoomId,
        namespace: Arc<str>,
        ns: Namespace,
    ) -> Result<Option<RoomState>, StoreError> {
        let subject: Arc<str> = Arc::from(self.layout.log_subject(ns.id, room));
        let mut state = RoomState {
            namespace,
            ns,
            subject,
            tip: 0,
            last: 0,
            first: 1,
            bytes: 0,
            index: BTreeMap::new(),
        };
        if let Some((seq, head)) = last_record(&state.ns.stream, &state.subject).await? {
            if head.kind == head::Kind::Tombstone {
                return Ok(None);
            }
            state.tip = seq;
            state.last = head.last;
            state.first = head.first;
            state.bytes = head.bytes;
            if head.kind == head::Kind::Messages {
                state.index.insert(
                    head.seq,
                    IndexEntry {
                        stream_seq: seq,
                        count: head.count,
                    },
                );
            }
        }
        Ok(Some(state))
    }

    /// Keeps a loaded state unless the room is known already (a commit may
    /// have moved it on meanwhile), and returns the room's view.
    fn adopt(&self, room: RoomId, state: Option<RoomState>) -> Option<RoomView> {
        let mut rooms = lock(&self.rooms);
        if let Some(known) = rooms.get(&room) {
            return Some(known.view());
        }
        let state = state?;
        let view = state.view();
        rooms.insert(room, state);
        Some(view)
    }

    /// Records where a record of `room` is, for later reads.
    fn remember(&self, room: RoomId, first_seq: u64, count: u32, stream_seq: u64) {
        let mut rooms = lock(&self.rooms);
        let Some(state) = rooms.get_mut(&room) else {
            return;
        };
        state
            .index
            .insert(first_seq, IndexEntry { stream_seq, count });
        if state.index.len() > INDEX_ENTRIES {
            let older: Vec<u64> = state
                .index
                .keys()
                .take(INDEX_ENTRIES / 2)
                .copied()
                .skip(1)
                .step_by(2)
                .collect();
            for key in older {
                state.index.remove(&key);
            }
        }
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }
}

/// A key's value and revision, read from the bucket's stream leader (a KV
/// `get` may be answered by a replica that lags); `None` if it has none or
/// was deleted.
async fn leader_get(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            if is_kv_removal(Some(&message.headers)) {
                return Ok(None);
            }
            Ok(Some((message.payload, message.sequence)))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(engine(format!("read {subject}"), e)),
    }
}

/// Whether a KV message is a delete or purge marker.
fn is_kv_removal(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

/// The name of record `seq` of `subject` in errors.
fn record_key(subject: &str, seq: u64) -> String {
    format!("{subject}@{seq}")
}

/// The newest record of `subject` and its stream sequence, from the stream
/// leader.
async fn last_record(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<(u64, head::Head)>, StoreError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let head = head::Head::from_headers(
                Some(&message.headers),
                &record_key(subject, message.sequence),
            )?;
            Ok(Some((message.sequence, head)))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(engine(format!("read the last record of {subject}"), e)),
    }
}

impl Store for JetStreamStore {
    fn recover(&self) -> StoreFuture<Recovered> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.recover().await })
    }

    fn commit(&self, batch: Arc<WriteBatch>) -> StoreFuture<Flushed> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.commit(&batch).await?;
            Ok(Flushed::new())
        })
    }

    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<Arc<StoredMessage>>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.read(room, from, max, max_bytes).await })
    }

    /// Everything a commit stored was acknowledged by JetStream before the
    /// commit resolved: there is nothing to sync. Waits for a commit in
    /// progress.
    fn flush(&self) -> StoreFuture<Flushed> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let _writing = inner.writing.lock().await;
            inner.check_poisoned()?;
            Ok(Flushed::new())
        })
    }
}
