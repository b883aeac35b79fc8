//! The storage conformance suite (`tests/conformance/`) run against sled,
//! the engine roomq ships: one test per property.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod conformance;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::Damage;
use roomq::storage::{self, RoomId, Store, StoreError};

/// sled's page cache in these tests.
const CACHE_BYTES: u64 = 8 << 20;

struct Sled;

impl conformance::Engine for Sled {
    async fn open(&self, dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || storage::open(storage::Engine::Sled, &dir, CACHE_BYTES))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Damages a value through sled itself: the stored value changes and
    /// its checksum (`storage::record`) no longer matches, while sled's own
    /// checks, which cover what sled was given, still pass. Keys follow the
    /// table in `src/storage/sled_store.rs`. (Blocking, on the test's
    /// thread: nothing else runs while the store is closed.)
    async fn damage(&self, dir: &Path, what: Damage<'_>) {
        let db = open_raw(dir);
        let (key, value, at) = match what {
            Damage::Message { room, seq } => {
                let (key, value) = db
                    .range(log_key(room, 0)..=log_key(room, seq))
                    .next_back()
                    .expect("a log value at or before the seq")
                    .unwrap();
                let at = entry_end(&value, seq).expect("the seq is in the value");
                (key, value, at)
            }
            Damage::Room(room) => last_byte(&db, &id_key(b'R', room)),
            Damage::Stats(room) => last_byte(&db, &id_key(b'S', room)),
            Damage::Cursor { room, name } => {
                let mut key = id_key(b'C', room);
                key.extend_from_slice(name.as_bytes());
                last_byte(&db, &key)
            }
            Damage::Dedup { namespace, id } => {
                let (key, value) = db
                    .scan_prefix(b"D")
                    .map(Result::unwrap)
                    .find(|(_, v)| {
                        v.windows(namespace.len() + 16)
                            .any(|w| w.starts_with(namespace.as_bytes()) && w.ends_with(&id))
                    })
                    .expect("a dedup group holding the id");
                let at = value.len() - 1;
                (key, value, at)
            }
            Damage::Namespace(name) => last_byte(&db, format!("N{name}").as_bytes()),
            Damage::NextRoomId => last_byte(&db, b"Mnext_room_id"),
        };
        let mut damaged = value.to_vec();
        damaged[at] ^= 0x40;
        db.insert(key, damaged).unwrap();
        db.flush().unwrap();
    }
}

conformance::suite!(Sled);

/// Opens the sled `Db` in `dir` directly. The store that used it was
/// dropped, but sled's threads may hold the directory's lock for a moment
/// longer, and sled offers nothing to wait on: retry for a bounded time.
fn open_raw(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + conformance::WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(Instant::now() < deadline, "{dir:?} stays locked: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {dir:?} with sled: {e}"),
        }
    }
}

/// `prefix` followed by a big-endian room id.
fn id_key(prefix: u8, room: RoomId) -> Vec<u8> {
    let mut key = vec![prefix];
    key.extend_from_slice(&room.to_be_bytes());
    key
}

fn log_key(room: RoomId, first_seq: u64) -> Vec<u8> {
    let mut key = id_key(b'L', room);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// The value stored under `key`, and its last byte's position.
fn last_byte(db: &sled::Db, key: &[u8]) -> (sled::IVec, sled::IVec, usize) {
    let value = db
        .get(key)
        .unwrap()
        .unwrap_or_else(|| panic!("nothing stored under {key:?}"));
    let at = value.len() - 1;
    (sled::IVec::from(key), value, at)
}

/// The position of the last byte of message `seq` in a log value: the
/// value's checksum (4 bytes), version (1) and count (4), then per message
/// its length (4), checksum (4) and entry, which starts with the seq.
fn entry_end(value: &[u8], seq: u64) -> Option<usize> {
    let mut at = 9;
    loop {
        let len = u32::from_be_bytes(value.get(at..at + 4)?.try_into().ok()?) as usize;
        let entry = at + 8;
        let entry_seq = u64::from_be_bytes(value.get(entry..entry + 8)?.try_into().ok()?);
        if entry_seq == seq {
            return Some(entry + len - 1);
        }
        at = entry + len;
    }
}
