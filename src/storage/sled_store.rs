//! [`Store`] on sled 0.34: one `Db` per data directory, one tree, keys
//! prefixed by kind so that one `apply_batch` writes a whole commit
//! atomically.
//!
//! | key | value |
//! |---|---|
//! | `R` room_id | namespace and room name |
//! | `L` room_id first_seq | the messages of one commit for that room |
//! | `C` room_id member_name | a durable member's cursor |
//! | `D` accepted_ms counter | the dedup records of one commit |
//! | `S` room_id | the room's first stored seq and stored bytes |
//! | `N` namespace | a namespace created or changed through `/admin` |
//! | `M` `next_room_id` | the lowest room id never used |
//!
//! Integers in keys are big-endian so that sled's byte order is numeric
//! order. Packing a commit's messages into one value (rather than a key per
//! message) is what makes the write path fast: sled's cost is per key.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::record::{
    decode_cursor, decode_dedup_group, decode_log_batch, decode_room, decode_room_stats,
    decode_u64, dedup_entry_len, encode_cursor, encode_dedup_group, encode_log_batch, encode_room,
    encode_room_stats, encode_u64, log_batch_count, log_entry_len, open as open_record, seal,
};
use super::sync::DiskSync;
use super::{
    BlockingStore, Flushed, Recovered, RecoveredRoom, RoomId, RoomStats, StoreError, StoredMessage,
    WriteBatch,
};

/// Target size of one log value. A commit's messages are split into values
/// of about this size (a single message larger than this gets a value of
/// its own). The size is set by sled's blob threshold: sled writes a page
/// larger than a quarter of a segment (128 KiB) to a blob file of its own,
/// which then needs an `fdatasync` and a directory `fsync` of its own, and a
/// leaf splits only once it holds more than 16 entries (and a merge can
/// leave 20). With values of at most 6 KiB, as [`log_entry_len`] measures
/// them, the largest leaf of the log stays near 123 KiB, below the
/// threshold (131,020 bytes), so ordinary commits create no blob files.
/// 64 KiB values left about one blob file per commit (docs/benchmarks.md).
/// It also bounds what reading one message (a redelivery, the start of a
/// replay) checks and decodes.
pub const LOG_VALUE_BYTES: usize = 6 * 1024;

/// Splits consecutive items into runs of about `target` bytes each, as
/// `size` measures them (an item larger than `target` gets a run of its
/// own).
fn chunks<T>(items: &[T], target: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && bytes + n > target {
            out.extend(items.get(start..i));
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    out.extend(items.get(start..));
    out.retain(|c| !c.is_empty());
    out
}

/// A room's messages cut into log values.
fn log_chunks(messages: &[Arc<StoredMessage>]) -> Vec<&[Arc<StoredMessage>]> {
    chunks(messages, LOG_VALUE_BYTES, |m| log_entry_len(m))
}

/// sled's log segment size: sled's default, stated so the choice is visible.
/// sled writes a page larger than a quarter of a segment to a blob file of
/// its own, and busy leaf nodes do pass 128 KiB; 8 MiB segments avoid those
/// files but measured 7 % (128 B) to 20 % (1 KiB) slower on W1
/// (docs/benchmarks.md), so the default stays.
const SEGMENT_BYTES: usize = 512 * 1024;

/// How long opening waits for a data directory locked by a Db being closed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

const ROOM: u8 = b'R';
const LOG: u8 = b'L';
const CURSOR: u8 = b'C';
const DEDUP: u8 = b'D';
const STATS: u8 = b'S';
const NAMESPACE: u8 = b'N';
const NEXT_ROOM_ID: &[u8] = b"Mnext_room_id";

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// Makes dedup group keys unique; starts from the clock so keys from an
    /// earlier run of the process are never reused.
    dedup_counter: std::sync::atomic::AtomicU64,
    /// Turns sled's `flush` (written) into synced; see `storage::sync`.
    disk: DiskSync,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with sled's page cache limited
    /// to `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled's I/O threads can hold the directory's lock for a moment after
        // the previous owner (an earlier run in this process, or a process
        // that is still exiting) dropped its Db: wait a little for it.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match Self::try_open(dir, cache_bytes) {
                Err(StoreError::Engine(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush (and sync, see `storage::sync`) explicitly after every
            // commit; sled's own timer only adds work.
            .flush_every_ms(None)
            .segment_size(SEGMENT_BYTES)
            .open()?;
        let disk = DiskSync::open(dir)?;
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(SledStore {
            db,
            dedup_counter: std::sync::atomic::AtomicU64::new(start),
            disk,
        })
    }
}

fn room_key(room: RoomId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ROOM;
    k[1..].copy_from_slice(&room.to_be_bytes());
    k
}

fn stats_key(room: RoomId) -> [u8; 9] {
    let mut k = room_key(room);
    k[0] = STATS;
    k
}

fn namespace_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(NAMESPACE);
    k.extend_from_slice(name.as_bytes());
    k
}

fn log_key(room: RoomId, first_seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = LOG;
    k[1..9].copy_from_slice(&room.to_be_bytes());
    k[9..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

fn cursor_key(room: RoomId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.push(CURSOR);
    k.extend_from_slice(&room.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn dedup_key(accepted_ms: u64, counter: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = DEDUP;
    k[1..9].copy_from_slice(&accepted_ms.to_be_bytes());
    k[9..].copy_from_slice(&counter.to_be_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn bad_key(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        why: "malformed key",
    }
}

/// sled's errors are the engine's own; the broker sees them as
/// [`StoreError::Engine`].
impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(Box::new(e))
    }
}

impl BlockingStore for SledStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        for item in self.db.scan_prefix([ROOM]) {
            let (key, value) = item?;
            let id = key.get(1..).and_then(be_u64).ok_or_else(|| bad_key(&key))?;
            let (namespace, name) = decode_room(&key, &value)?;
            let mut prefix = [0u8; 9];
            prefix[0] = LOG;
            prefix[1..].copy_from_slice(&id.to_be_bytes());
            let logged = match self.db.scan_prefix(prefix).next_back() {
                None => 0,
                Some(item) => {
                    let (k, v) = item?;
                    let first = k.get(9..).and_then(be_u64).ok_or_else(|| bad_key(&k))?;
                    let count = log_batch_count(&k, &v)?;
                    (first + u64::from(count)).saturating_sub(1)
                }
            };
            let stats_key = stats_key(id);
            let stats = match self.db.get(stats_key)? {
                Some(v) => decode_room_stats(&stats_key, &v)?,
                None => RoomStats {
                    first_seq: 1,
                    stored_bytes: 0,
                },
            };
            // A purged room has no log left: its seqs continue after the
            // purge point.
            let last_seq = logged.max(stats.first_seq.saturating_sub(1));
            out.next_room_id = out.next_room_id.max(id.saturating_add(1));
            out.rooms.push(RecoveredRoom {
                id,
                namespace: namespace.into(),
                name: name.into(),
                last_seq,
                stats,
            });
        }
        if let Some(v) = self.db.get(NEXT_ROOM_ID)? {
            out.next_room_id = out.next_room_id.max(decode_u64(NEXT_ROOM_ID, &v)?);
        }
        for item in self.db.scan_prefix([NAMESPACE]) {
            let (key, value) = item?;
            out.namespaces.push(open_record(&key, &value)?.to_vec());
        }
        for item in self.db.scan_prefix([CURSOR]) {
            let (key, value) = item?;
            let room = key.get(1..).and_then(be_u64).ok_or_else(|| bad_key(&key))?;
            let name = key
                .get(9..)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| bad_key(&key))?;
            out.cursors
                .push((room, Arc::from(name), decode_cursor(&key, &value)?));
        }
        for item in self.db.scan_prefix([DEDUP]) {
            let (key, value) = item?;
            out.dedup.extend(decode_dedup_group(&key, &value)?);
        }
        Ok(out)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Flushed, StoreError> {
        self.write(batch)?;
        self.disk.sync()
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.disk.check()?;
        let mut b = sled::Batch::default();
        let deleted: std::collections::HashSet<RoomId> =
            batch.deleted_rooms.iter().copied().collect();
        let live = |room: &RoomId| !deleted.contains(room);
        let floors: std::collections::HashMap<RoomId, u64> = batch
            .room_stats
            .iter()
            .filter(|(room, _)| batch.purged.contains(room) && live(room))
            .map(|(room, stats)| (*room, stats.first_seq))
            .collect();
        for (id, ns, name) in batch.new_rooms.iter().filter(|r| live(&r.0)) {
            b.insert(&room_key(*id), encode_room(ns, name));
        }
        for (room, messages) in batch.appends.iter().filter(|a| live(&a.0)) {
            // Messages purged before they were written are not written.
            let kept: Vec<Arc<StoredMessage>>;
            let messages = match floors.get(room) {
                Some(floor) => {
                    kept = messages
                        .iter()
                        .filter(|m| m.seq >= *floor)
                        .cloned()
                        .collect();
                    &kept
                }
                None => messages,
            };
            for chunk in log_chunks(messages) {
                if let Some(first) = chunk.first() {
                    b.insert(&log_key(*room, first.seq), encode_log_batch(chunk));
                }
            }
        }
        for (room, stats) in batch.room_stats.iter().filter(|s| live(&s.0)) {
            b.insert(&stats_key(*room), encode_room_stats(stats));
        }
        for (room, floor) in &floors {
            // Every value that starts below the floor goes. The one value
            // that may hold the floor too (a trim by retention falls
            // anywhere) is written again with its messages from the floor
            // on, under the floor's key: a read from below the floor must
            // not find the trimmed messages.
            for item in self.db.range(log_key(*room, 0)..log_key(*room, *floor)) {
                let (k, v) = item?;
                let first = k.get(9..).and_then(be_u64).ok_or_else(|| bad_key(&k))?;
                if first + u64::from(log_batch_count(&k, &v)?) > *floor {
                    let mut kept = Vec::new();
                    decode_log_batch(&k, Bytes::from_owner(v), *floor, &mut kept, usize::MAX)?;
                    b.insert(&log_key(*room, *floor), encode_log_batch(&kept));
                }
                b.remove(k);
            }
        }
        for room in &deleted {
            b.remove(&room_key(*room));
            b.remove(&stats_key(*room));
            for prefix in [LOG, CURSOR] {
                let mut p = [0u8; 9];
                p[0] = prefix;
                p[1..].copy_from_slice(&room.to_be_bytes());
                for item in self.db.scan_prefix(p) {
                    b.remove(item?.0);
                }
            }
        }
        for (name, record) in &batch.namespaces {
            match record {
                Some(body) => b.insert(namespace_key(name), seal(body)),
                None => b.remove(namespace_key(name)),
            }
        }
        if let Some(next) = batch.next_room_id {
            b.insert(NEXT_ROOM_ID, encode_u64(next));
        }
        for (room, name, cursor) in batch.cursors.iter().filter(|c| live(&c.0)) {
            let key = cursor_key(*room, name);
            match cursor {
                Some(c) => b.insert(key, encode_cursor(c)),
                None => b.remove(key),
            }
        }
        // A commit's dedup records, in values of the log's size (a busy
        // commit's records would otherwise make one value, and a leaf of
        // such values, large enough to be a blob file), each keyed by the
        // time of its own first record.
        for group in chunks(&batch.dedup_put, LOG_VALUE_BYTES, dedup_entry_len) {
            if let Some((_, _, first)) = group.first() {
                let counter = self
                    .dedup_counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                b.insert(
                    &dedup_key(first.timestamp_ms, counter),
                    encode_dedup_group(group),
                );
            }
        }
        if let Some(cutoff) = batch.dedup_expire_before {
            // Groups are keyed by the time their first record was accepted;
            // a group is deleted once that is past the cutoff. The records of
            // one group were accepted within one commit of each other.
            for item in self.db.range(dedup_key(0, 0)..dedup_key(cutoff, 0)) {
                b.remove(item?.0);
            }
        }
        self.db.apply_batch(b)?;
        // Written: sled's pwrite + sync_file_range, enough for a killed
        // process. `commit` syncs on top.
        self.db.flush()?;
        Ok(())
    }

    fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        let mut out = Vec::new();
        let start = log_key(room, from);
        // The batch holding `from` starts at or before it.
        let first_key = match self.db.range(log_key(room, 0)..=start).next_back() {
            Some(item) => item?.0,
            None => sled::IVec::from(&start[..]),
        };
        let end = log_key(room, u64::MAX);
        let mut bytes = 0usize;
        for item in self.db.range(first_key..=sled::IVec::from(&end[..])) {
            let (key, value) = item?;
            let before = out.len();
            decode_log_batch(&key, Bytes::from_owner(value), from, &mut out, max)?;
            // A value holds many messages: keep those up to the one that
            // brings the bytes read to `max_bytes`.
            let mut kept = before;
            for m in out.iter().skip(before) {
                if bytes >= max_bytes {
                    break;
                }
                bytes += m.encoded.len();
                kept += 1;
            }
            out.truncate(kept);
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<Flushed, StoreError> {
        self.disk.check()?;
        self.db.flush()?;
        self.disk.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CursorRecord, DedupRecord};

    fn msg(seq: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage::new(seq, Bytes::from(format!("m{seq}"))))
    }

    /// The reason for `LOG_VALUE_BYTES`: busy commits of small and 1 KiB
    /// messages, with dedup records and the optional fields, leave no blob
    /// files (each would cost the commit an extra `fdatasync` and a
    /// directory `fsync`). With 64 KiB values this left about one blob per
    /// commit; with one dedup value per commit, dedup leaves became blobs.
    #[test]
    fn busy_commits_of_ordinary_messages_create_no_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let mut seq = 0u64;
        for (commit, size) in (0..120).map(|c| (c, if c % 2 == 0 { 128 } else { 1024 })) {
            let mut b = WriteBatch::default();
            if commit == 0 {
                b.new_rooms.push((1, "/".into(), "r".into()));
            }
            // As the SDK sends them: a dedup id on every publish; some
            // with `except_self`, some to several rooms with except rules.
            let extra = Arc::new(crate::storage::Extra {
                except_sessions: vec![vec![9u8; 16]; 4],
                except_rooms: (0..8).map(|i| format!("muted-room-{i}")).collect(),
                rooms: (0..8).map(|i| format!("room-{i}")).collect(),
            });
            let msgs: Vec<_> = (0..400)
                .map(|i| {
                    seq += 1;
                    let mut m = StoredMessage::new(seq, Bytes::from(vec![7u8; size]));
                    if i % 3 == 0 {
                        m.except_session = Some([1u8; 16]);
                        m.except_client = Some("a-client-id".into());
                    }
                    if i % 5 == 0 {
                        m.extra = Some(extra.clone());
                    }
                    b.dedup_put.push((
                        "/".into(),
                        seq.to_be_bytes().repeat(2).try_into().unwrap(),
                        DedupRecord {
                            timestamp_ms: 1_000 + seq,
                            seqs: vec![(1, seq)],
                        },
                    ));
                    Arc::new(m)
                })
                .collect();
            b.appends.push((1, msgs));
            let _ = s.commit(&b).unwrap();
        }
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert_eq!(blobs, 0, "blob files after {seq} messages");
        assert_eq!(
            s.recover().unwrap().rooms.first().map(|r| r.last_seq),
            Some(seq)
        );
    }

    #[test]
    fn large_commits_are_split_below_the_blob_limit() {
        let big = |seq| Arc::new(StoredMessage::new(seq, Bytes::from(vec![7u8; 1000])));
        let msgs: Vec<_> = (1..=300).map(big).collect();
        let parts = log_chunks(&msgs);
        assert!(parts.len() >= 4);
        assert_eq!(parts.iter().map(|c| c.len()).sum::<usize>(), 300);
        assert!(parts
            .iter()
            .all(|c| c.iter().map(|m| log_entry_len(m)).sum::<usize>() <= LOG_VALUE_BYTES));
        let one_huge = vec![Arc::new(StoredMessage::new(
            1,
            Bytes::from(vec![0u8; 200_000]),
        ))];
        assert_eq!(log_chunks(&one_huge).len(), 1);
        assert!(log_chunks(&[]).is_empty());

        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let mut b = WriteBatch::default();
        b.new_rooms.push((1, "/".into(), "r".into()));
        b.appends.push((1, msgs));
        let _ = s.commit(&b).unwrap();
        let back = s.read(1, 1, 1000, usize::MAX).unwrap();
        assert_eq!(
            back.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=300).collect::<Vec<_>>()
        );
        let from_middle = s.read(1, 150, 10, usize::MAX).unwrap();
        assert_eq!(from_middle.first().map(|m| m.seq), Some(150));
        let r = s.recover().unwrap();
        assert_eq!(r.rooms.first().map(|r| r.last_seq), Some(300));
    }

    #[test]
    fn a_failed_sync_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let mut b = WriteBatch::default();
        b.new_rooms.push((1, "/".into(), "r".into()));
        b.appends.push((1, vec![msg(1)]));
        let _ = s.commit(&b).unwrap();
        // The sync watches `blobs/`: without it, the sync fails.
        std::fs::remove_dir(dir.path().join("blobs")).unwrap();
        let mut b = WriteBatch::default();
        b.appends.push((1, vec![msg(2)]));
        assert!(matches!(s.commit(&b), Err(StoreError::Sync { .. })));
        // Repaired or not, the store stays failed: no later call succeeds.
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        assert!(matches!(s.commit(&b), Err(StoreError::Poisoned)));
        assert!(matches!(s.write(&b), Err(StoreError::Poisoned)));
        assert!(matches!(s.flush(), Err(StoreError::Poisoned)));
    }

    #[test]
    fn commit_recover_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            let mut b = WriteBatch::default();
            b.new_rooms.push((1, "/".into(), "general".into()));
            b.new_rooms.push((2, "/x".into(), "general".into()));
            b.appends.push((1, (1..=3).map(msg).collect()));
            b.cursors.push((
                1,
                "alice".into(),
                Some(CursorRecord {
                    next_seq: 3,
                    unacked: vec![(2, 1)],
                    owner: None,
                    gap: None,
                }),
            ));
            b.dedup_put.push((
                "/".into(),
                [4; 16],
                DedupRecord {
                    timestamp_ms: 1,
                    seqs: vec![(1, 2)],
                },
            ));
            b.dedup_put.push((
                "/x".into(),
                [5; 16],
                DedupRecord {
                    timestamp_ms: 1,
                    seqs: vec![(2, 1)],
                },
            ));
            let _ = s.commit(&b).unwrap();
            let mut b = WriteBatch::default();
            b.appends.push((1, (4..=6).map(msg).collect()));
            let _ = s.commit(&b).unwrap();
        }
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let r = s.recover().unwrap();
        let mut rooms: Vec<_> = r.rooms.iter().map(|r| (r.id, r.last_seq)).collect();
        rooms.sort_unstable();
        assert_eq!(rooms, vec![(1, 6), (2, 0)]);
        assert_eq!(r.cursors.len(), 1);
        assert_eq!(r.dedup.len(), 2);
        drop(r);
        let b = WriteBatch {
            dedup_expire_before: Some(2),
            ..WriteBatch::default()
        };
        let _ = s.commit(&b).unwrap();
        assert!(
            s.recover().unwrap().dedup.is_empty(),
            "expired dedup groups deleted"
        );
        let seqs = |v: Vec<Arc<StoredMessage>>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(s.read(1, 2, 100, usize::MAX).unwrap()),
            vec![2, 3, 4, 5, 6]
        );
        assert_eq!(seqs(s.read(1, 5, 100, usize::MAX).unwrap()), vec![5, 6]);
        assert_eq!(seqs(s.read(1, 1, 2, usize::MAX).unwrap()), vec![1, 2]);
        assert!(s.read(1, 7, 100, usize::MAX).unwrap().is_empty());
        assert!(s.read(2, 1, 100, usize::MAX).unwrap().is_empty());
    }
}
