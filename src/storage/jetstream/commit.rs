//! A [`WriteBatch`] as JetStream writes, in three steps:
//!
//! 1. **Keys first**: new rooms' `room.` keys (and their namespace's id
//!    and stream), namespace records, the next room id. A room's key is
//!    stored before any record of it, so no record belongs to an unknown
//!    room.
//! 2. **Records**, one chain per room, the rooms at once: the room's
//!    messages (`m`, split at `record_max_bytes` / `record_max_messages`),
//!    else a `f` record for a purge or a `s` record for changed stats or
//!    dedup parts; a `t` record for a deleted room. A room's dedup parts
//!    ride on its last record (more `s` records if they do not fit). Then,
//!    in the same room's task, the purge below a new floor (never the
//!    newest record), or a deleted room's cleanup.
//! 3. **Cursors** (all of them, after every record was acknowledged, so a
//!    stored cursor never covers a message, dead letter or trim that is
//!    not stored) and the dedup cutoff.
//!
//! The commit resolves when all of it was acknowledged. Any failure fails
//! the commit, and the store stays failed (fail-stop).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::head::{DedupPart, Head, Kind, DEDUP_BYTES_PER_RECORD};
use super::layout::{self, CURSOR_VERSION};
use super::{engine, lock, retrying, Inner, RoomView, CONCURRENCY};
use crate::storage::record::{
    encode_cursor, encode_log_batch, encode_room, encode_u64, log_entry_len, seal,
};
use crate::storage::{RoomId, RoomStats, StoreError, StoredMessage, WriteBatch};

/// Bytes a log value takes beyond its entries: checksum, version, count.
const LOG_VALUE_OVERHEAD: usize = 9;

/// What one room's task writes.
struct RoomPlan {
    room: RoomId,
    view: RoomView,
    records: Vec<(Head, Bytes)>,
    /// Purge the records wholly below this seq after the records.
    floor: Option<u64>,
    /// The room is deleted: clean up after its tombstone.
    delete: bool,
}

impl Inner {
    pub(super) async fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        self.check_poisoned()?;
        let result = self.apply(batch).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "jetstream commit failed; the store refuses further writes");
            self.poisoned.store(true, Ordering::Release);
        }
        result
    }

    async fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let deleted: HashSet<RoomId> = batch.deleted_rooms.iter().copied().collect();
        self.write_keys(batch, &deleted).await?;
        let plans = self.plan(batch, &deleted).await?;
        futures::future::try_join_all(plans.into_iter().map(|plan| self.write_room(plan))).await?;
        self.write_cursors(batch, &deleted).await
    }

    /// Step 1: new rooms, namespace records, the next room id.
    async fn write_keys(
        &self,
        batch: &WriteBatch,
        deleted: &HashSet<RoomId>,
    ) -> Result<(), StoreError> {
        let mut puts: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut created = Vec::new();
        for (id, namespace, name) in batch.new_rooms.iter().filter(|r| !deleted.contains(&r.0)) {
            let Some(ns) = self.namespace(namespace, true).await? else {
                return Err(engine(format!("namespace {namespace:?}"), "has no id"));
            };
            puts.push((layout::room_key(*id), Some(encode_room(namespace, name))));
            created.push((*id, namespace.clone(), ns));
        }
        for (name, record) in &batch.namespaces {
            let key = layout::namespace_record_key(name);
            puts.push((key, record.as_ref().map(|body| seal(body))));
        }
        if let Some(next) = batch.next_room_id {
            puts.push((layout::NEXT_ROOM_ID.to_string(), Some(encode_u64(next))));
        }
        let meta = &self.meta;
        let retry_for = self.retry_for;
        futures::stream::iter(puts)
            .map(|(key, value)| async move { kv_write(meta, &key, value, retry_for).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        for (id, namespace, ns) in created {
            let state = self.load_room(id, namespace, ns).await?;
            self.adopt(id, state);
        }
        Ok(())
    }

    /// The records of every room the batch touches.
    async fn plan(
        &self,
        batch: &WriteBatch,
        deleted: &HashSet<RoomId>,
    ) -> Result<Vec<RoomPlan>, StoreError> {
        let live = |room: &RoomId| !deleted.contains(room);
        let mut stats: HashMap<RoomId, RoomStats> = HashMap::new();
        for (room, s) in batch.room_stats.iter().filter(|s| live(&s.0)) {
            stats.insert(*room, *s);
        }
        let floors: HashMap<RoomId, u64> = batch
            .purged
            .iter()
            .filter(|room| live(room))
            .filter_map(|room| Some((*room, stats.get(room)?.first_seq)))
            .collect();
        let mut appends: HashMap<RoomId, Vec<Arc<StoredMessage>>> = HashMap::new();
        for (room, messages) in batch.appends.iter().filter(|a| live(&a.0)) {
            appends
                .entry(*room)
                .or_default()
                .extend(messages.iter().cloned());
        }
        // Every room touched, in a stable order.
        let mut rooms: Vec<RoomId> = appends
            .keys()
            .chain(stats.keys())
            .chain(floors.keys())
            .copied()
            .chain(
                batch
                    .dedup_put
                    .iter()
                    .flat_map(|d| d.2.seqs.iter().map(|s| s.0)),
            )
            .chain(deleted.iter().copied())
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        let views: HashMap<RoomId, RoomView> = futures::stream::iter(rooms)
            .map(|room| async move { Ok::<_, StoreError>((room, self.room(room).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|(room, view)| async move { Ok(view.map(|v| (room, v))) })
            .try_collect()
            .await?;
        let unknown = |room: &RoomId| -> StoreError {
            engine(
                format!("commit names room {room}"),
                "no such room (never created, or deleted)",
            )
        };
        let mut parts: HashMap<RoomId, Vec<DedupPart>> = HashMap::new();
        for (namespace, id, record) in &batch.dedup_put {
            let of = u32::try_from(record.seqs.len()).unwrap_or(u32::MAX);
            for (index, (room, seq)) in record.seqs.iter().enumerate() {
                let Some(view) = views.get(room).filter(|_| live(room)) else {
                    tracing::warn!(
                        room,
                        "dedup record names a room that does not exist; dropped"
                    );
                    continue;
                };
                parts.entry(*room).or_default().push(DedupPart {
                    namespace: (view.namespace != *namespace).then(|| namespace.clone()),
                    id: *id,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    of,
                    seq: *seq,
                    timestamp_ms: record.timestamp_ms,
                });
            }
        }
        let mut plans = Vec::new();
        for (room, view) in &views {
            if deleted.contains(room) {
                plans.push(RoomPlan {
                    room: *room,
                    view: view.clone(),
                    records: vec![(
                        Head::control(Kind::Tombstone, view.last, view.first, view.bytes),
                        Bytes::new(),
                    )],
                    floor: None,
                    delete: true,
                });
                continue;
            }
            let records = self.records(
                view,
                appends.remove(room).unwrap_or_default(),
                stats.get(room).copied(),
                floors.get(room).copied(),
                parts.remove(room).unwrap_or_default(),
            );
            if !records.is_empty() {
                plans.push(RoomPlan {
                    room: *room,
                    view: view.clone(),
                    records,
                    floor: floors.get(room).copied(),
                    delete: false,
                });
            }
        }
        for room in appends.keys().chain(stats.keys()).chain(floors.keys()) {
            if !views.contains_key(room) {
                return Err(unknown(room));
            }
        }
        Ok(plans)
    }

    /// The records one live room gets: its messages from `floor` on, its
    /// new stats (`stats`, else unchanged) and its dedup parts.
    fn records(
        &self,
        view: &RoomView,
        appended: Vec<Arc<StoredMessage>>,
        stats: Option<RoomStats>,
        floor: Option<u64>,
        mut parts: Vec<DedupPart>,
    ) -> Vec<(Head, Bytes)> {
        let stats = stats.unwrap_or(RoomStats {
            first_seq: view.first,
            stored_bytes: view.bytes,
        });
        let appended_last = appended.iter().map(|m| m.seq).max().unwrap_or(0);
        let kept: Vec<Arc<StoredMessage>> = appended
            .into_iter()
            .filter(|m| floor.is_none_or(|f| m.seq >= f))
            .collect();
        let mut records = Vec::new();
        let mut later: u64 = kept.iter().map(|m| m.encoded.len() as u64).sum();
        for chunk in self.chunks(&kept) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            later = later.saturating_sub(chunk.iter().map(|m| m.encoded.len() as u64).sum());
            let head = Head {
                kind: Kind::Messages,
                seq: first.seq,
                count: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                last: last.seq,
                first: stats.first_seq,
                bytes: stats.stored_bytes.saturating_sub(later),
                time: Some((first.info.timestamp_ms, last.info.timestamp_ms)),
                dedup: Vec::new(),
            };
            records.push((head, Bytes::from(encode_log_batch(chunk))));
        }
        let changed = stats.first_seq != view.first || stats.stored_bytes != view.bytes;
        let last = view
            .last
            .max(appended_last)
            .max(stats.first_seq.saturating_sub(1));
        if records.is_empty() && (floor.is_some() || changed || !parts.is_empty()) {
            let kind = if floor.is_some() {
                Kind::Floor
            } else {
                Kind::State
            };
            records.push((
                Head::control(kind, last, stats.first_seq, stats.stored_bytes),
                Bytes::new(),
            ));
        }
        // Dedup parts on the last record, and on more `s` records when
        // they do not fit in its header.
        while !parts.is_empty() {
            let Some((tail, _)) = records.last_mut() else {
                break;
            };
            let mut room_left = DEDUP_BYTES_PER_RECORD
                .saturating_sub(tail.dedup.iter().map(DedupPart::encoded_len).sum());
            let mut taken = 0;
            for part in &parts {
                let n = part.encoded_len();
                if n > room_left && (taken > 0 || !tail.dedup.is_empty()) {
                    break;
                }
                room_left = room_left.saturating_sub(n);
                taken += 1;
            }
            tail.dedup.extend(parts.drain(..taken));
            if !parts.is_empty() {
                let next = Head::control(Kind::State, tail.last, tail.first, tail.bytes);
                records.push((next, Bytes::new()));
            }
        }
        records
    }

    /// Consecutive messages cut into records of at most
    /// `record_max_messages` and about `record_max_bytes` (a message
    /// larger than that gets a record of its own).
    fn chunks<'a>(&self, messages: &'a [Arc<StoredMessage>]) -> Vec<&'a [Arc<StoredMessage>]> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut bytes = LOG_VALUE_OVERHEAD;
        for (i, m) in messages.iter().enumerate() {
            let n = log_entry_len(m);
            let full = i - start >= self.record_max_messages || bytes + n > self.record_max_bytes;
            if i > start && full {
                out.extend(messages.get(start..i));
                start = i;
                bytes = LOG_VALUE_OVERHEAD;
            }
            bytes += n;
        }
        out.extend(messages.get(start..).filter(|rest| !rest.is_empty()));
        out
    }

    /// Step 2 for one room: its chain of records, then its purge or its
    /// deletion's cleanup.
    async fn write_room(&self, plan: RoomPlan) -> Result<(), StoreError> {
        let RoomPlan {
            room,
            view,
            records,
            floor,
            delete,
        } = plan;
        let mut tip = view.tip;
        for (head, payload) in records {
            tip = self
                .append(&view.stream, &view.subject, room, &head, payload, tip)
                .await?;
            let mut rooms = lock(&self.rooms);
            if let Some(state) = rooms.get_mut(&room) {
                state.tip = tip;
                state.last = head.last;
                state.first = head.first;
                state.bytes = head.bytes;
            }
            drop(rooms);
            if head.kind == Kind::Messages {
                self.remember(room, head.seq, head.count, tip);
            }
        }
        if delete {
            return self.clean_up_deleted(room, &view, tip).await;
        }
        if let Some(floor) = floor {
            self.purge_below(room, floor).await?;
        }
        Ok(())
    }

    /// Removes the records of `room` that hold only messages below
    /// `floor`, never its newest record.
    async fn purge_below(&self, room: RoomId, floor: u64) -> Result<(), StoreError> {
        let Some(view) = self.room(room).await? else {
            return Ok(());
        };
        let keep = if floor > view.last {
            view.tip
        } else {
            self.find_record(room, &view, floor)
                .await?
                .sequence
                .min(view.tip)
        };
        let what = format!("purge {} below {keep}", view.subject);
        retrying(self.retry_for, &what, || async {
            view.stream
                .purge()
                .filter(view.subject.to_string())
                .sequence(keep)
                .await
        })
        .await?;
        if let Some(state) = lock(&self.rooms).get_mut(&room) {
            state.index.retain(|_, e| e.stream_seq >= keep);
        }
        Ok(())
    }

    /// After a deleted room's tombstone (at `tip`): its records below the
    /// tombstone, its cursors, its key, then the tombstone. A crash before
    /// the key is gone leaves the tombstone as the room's newest record,
    /// which recovery reads as "finish deleting".
    pub(super) async fn clean_up_deleted(
        &self,
        room: RoomId,
        view: &RoomView,
        tip: u64,
    ) -> Result<(), StoreError> {
        let what = format!("purge {}", view.subject);
        let purge = |sequence: Option<u64>| {
            retrying(self.retry_for, &what, move || async move {
                let request = view.stream.purge().filter(view.subject.to_string());
                match sequence {
                    Some(s) => request.sequence(s).await,
                    None => request.await,
                }
            })
        };
        purge(Some(tip)).await?;
        let cursors = format!("{}c.{room}.>", self.cursors.prefix);
        retrying(self.retry_for, &format!("purge {cursors}"), || async {
            self.cursors.stream.purge().filter(cursors.clone()).await
        })
        .await?;
        kv_write(&self.meta, &layout::room_key(room), None, self.retry_for).await?;
        lock(&self.rooms).remove(&room);
        purge(None).await?;
        Ok(())
    }

    /// Step 3: cursors (the last update of each wins) and the dedup cutoff.
    async fn write_cursors(
        &self,
        batch: &WriteBatch,
        deleted: &HashSet<RoomId>,
    ) -> Result<(), StoreError> {
        let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        for (room, name, cursor) in batch.cursors.iter().filter(|c| !deleted.contains(&c.0)) {
            let value = cursor.as_ref().map(|c| {
                let mut value = vec![CURSOR_VERSION];
                value.extend(encode_cursor(c));
                value
            });
            latest.insert(layout::cursor_key(*room, name), value);
        }
        let cursors = &self.cursors;
        let retry_for = self.retry_for;
        futures::stream::iter(latest)
            .map(|(key, value)| async move { kv_write(cursors, &key, value, retry_for).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        if let Some(cutoff) = batch.dedup_expire_before {
            if cutoff > self.dedup_cutoff.load(Ordering::Acquire) {
                kv_write(
                    &self.meta,
                    layout::DEDUP_CUTOFF,
                    Some(encode_u64(cutoff)),
                    self.retry_for,
                )
                .await?;
                self.dedup_cutoff.fetch_max(cutoff, Ordering::AcqRel);
            }
        }
        Ok(())
    }
}

/// Puts `value` under `key`, or deletes the key for `None`, trying again
/// for up to `retry_for` (both are safe to repeat).
async fn kv_write(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    value: Option<Vec<u8>>,
    retry_for: Duration,
) -> Result<(), StoreError> {
    match value {
        Some(value) => {
            let value = Bytes::from(value);
            let what = format!("put {}{key}", store.prefix);
            retrying(retry_for, &what, || store.put(key, value.clone()))
                .await
                .map(|_| ())
        }
        None => {
            let what = format!("delete {}{key}", store.prefix);
            retrying(retry_for, &what, || store.delete(key)).await
        }
    }
}
