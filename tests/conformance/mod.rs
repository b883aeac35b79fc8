//! The conformance suite of the storage seam: the properties any
//! [`Store`] engine must have before the broker may run on it, written once
//! and run against every engine.
//!
//! # Plugging in an engine
//!
//! An engine's test file (`tests/store_conformance.rs` for sled) implements
//! [`Engine`] — how to open a store in a directory, and how to damage a
//! stored record on disk, which only the engine knows — and names the
//! suite once:
//!
//! ```ignore
//! mod conformance;
//!
//! struct JetStream;
//! impl conformance::Engine for JetStream {
//!     async fn open(&self, dir: &Path) -> Result<Arc<dyn Store>, StoreError> { … }
//!     async fn damage(&self, dir: &Path, what: conformance::Damage<'_>) { … }
//! }
//!
//! conformance::suite!(JetStream);
//! ```
//!
//! [`suite!`] expands to one `#[tokio::test]` per property, named after it,
//! so a failure names the property it broke. The crash test re-runs the
//! test binary itself, filtered to that one test, as the process to kill
//! (see [`a_killed_process_loses_no_stored_batch`]).
//!
//! # What the suite relies on
//!
//! Only the `Store` trait and its documented contract, plus `Engine`. Every
//! test is bounded in time (no test waits longer than [`WAIT`] for
//! anything), and the suite itself uses no network. The properties:
//!
//! - `a_batch_is_applied_whole` — one batch of every kind of write is all
//!   there after a reopen.
//! - `reads_after_commit_return_exactly_what_was_stored`,
//!   `reads_after_write_return_exactly_what_was_stored` — `read` from any
//!   `from`, with `max` and `max_bytes`, right after `commit` or `write`.
//! - `recovery_returns_what_was_written`,
//!   `later_cursor_updates_override_earlier_ones`,
//!   `expired_dedup_records_are_deleted`,
//!   `a_deleted_room_leaves_nothing`, `namespaces_are_stored_and_deleted`.
//! - `a_killed_process_loses_no_stored_batch` — `kill -9` during commits;
//!   both rooms of a batch, or neither, for engines whose batches are
//!   atomic across rooms ([`Engine::ATOMIC_ACROSS_ROOMS`]), each room
//!   whole or not at all for the others.
//! - `damaged_messages_are_reported_corrupt`,
//!   `damaged_records_fail_recovery` — checksums.
//! - `purge_deletes_messages_below_first_seq`,
//!   `purge_in_the_batch_that_appends` — trims and purges.
//! - `flush_after_write_resolves` — the sync proof.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomq::storage::{
    CursorRecord, DedupRecord, Extra, Recovered, RoomId, RoomStats, Store, StoreError,
    StoredMessage, WriteBatch,
};

/// Upper bound of any single wait in the suite.
pub const WAIT: Duration = Duration::from_secs(20);

/// Set (to the data directory) in the child process of the crash test.
const CHILD_ENV: &str = "ROOMQ_CONFORMANCE_CHILD";

/// Precedes a batch number in what the crash test's child prints (maybe
/// after the test harness's own output on the same line).
const STORED_MARK: &str = "conformance: stored batch ";

/// A storage engine under test.
pub trait Engine {
    /// Whether one batch is applied atomically across all the rooms it
    /// touches (sled: one `apply_batch`), or only per room (JetStream: a
    /// record per room, acknowledged separately), so that a crash may
    /// leave one room's part of a batch stored and another's not. The
    /// crash test checks what the engine claims.
    const ATOMIC_ACROSS_ROOMS: bool = true;

    /// Environment the crash test's child process needs besides what the
    /// test binary inherits (a networked engine: where its servers are).
    fn child_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Opens (or creates) the store whose data lives in `dir`. Opening the
    /// same `dir` again, after the previous store was dropped or its
    /// process killed, finds what that store stored.
    fn open(&self, dir: &Path) -> impl Future<Output = Result<Arc<dyn Store>, StoreError>>;

    /// Damages, on disk, the stored record `what` in the store at `dir`,
    /// which is closed (its last `Arc<dyn Store>` was dropped), the way a
    /// bad sector or a stray write would: the record's bytes change, its
    /// checksum does not. An engine that derives a kind of record from
    /// others damages what it derives it from.
    fn damage(&self, dir: &Path, what: Damage<'_>) -> impl Future<Output = ()>;
}

/// A stored record to damage (see [`Engine::damage`]).
#[derive(Debug, Clone, Copy)]
pub enum Damage<'a> {
    /// The bytes of message `seq` of `room`.
    Message { room: RoomId, seq: u64 },
    /// The record of a room: its namespace and name.
    Room(RoomId),
    /// A room's stats (first seq, stored bytes).
    Stats(RoomId),
    /// The cursor of member `name` in `room`.
    Cursor { room: RoomId, name: &'a str },
    /// The dedup record of `id` in `namespace`.
    Dedup { namespace: &'a str, id: [u8; 16] },
    /// A namespace record, by name.
    Namespace(&'a str),
    /// The next room id.
    NextRoomId,
}

/// Expands to one `#[tokio::test]` per property of the suite, run against
/// the engine `$engine` (an expression of a type that implements
/// [`Engine`]). Use it at the top level of a test file.
macro_rules! suite {
    ($engine:expr) => {
        $crate::conformance::suite!(@tests $engine;
            a_batch_is_applied_whole,
            reads_after_commit_return_exactly_what_was_stored,
            reads_after_write_return_exactly_what_was_stored,
            recovery_returns_what_was_written,
            later_cursor_updates_override_earlier_ones,
            expired_dedup_records_are_deleted,
            a_deleted_room_leaves_nothing,
            namespaces_are_stored_and_deleted,
            damaged_messages_are_reported_corrupt,
            damaged_records_fail_recovery,
            purge_deletes_messages_below_first_seq,
            purge_in_the_batch_that_appends,
            flush_after_write_resolves,
        );

        #[tokio::test]
        async fn a_killed_process_loses_no_stored_batch() {
            // The test's name as the harness knows it: its path without
            // the crate's name.
            let path = concat!(module_path!(), "::a_killed_process_loses_no_stored_batch");
            let name = path.split_once("::").map_or(path, |(_, name)| name);
            $crate::conformance::a_killed_process_loses_no_stored_batch(&$engine, name).await;
        }
    };
    (@tests $engine:expr; $($property:ident,)*) => {
        $(
            #[tokio::test]
            async fn $property() {
                $crate::conformance::$property(&$engine).await;
            }
        )*
    };
}
pub(crate) use suite;

// ---------------------------------------------------------------------------
// Helpers

/// Opens the store in `dir`, failing the test if it cannot.
async fn open<E: Engine>(engine: &E, dir: &Path) -> Arc<dyn Store> {
    engine.open(dir).await.expect("the store opens")
}

/// The encoding of a wire message with `body` as payload, accepted at
/// `timestamp_ms`: what the broker stores as a message's `encoded`.
fn encoded(body: &[u8], timestamp_ms: u64) -> Bytes {
    use prost::Message as _;
    let m = roomq_wire::pb::Message {
        event: "conformance".into(),
        payload: Bytes::copy_from_slice(body),
        timestamp_ms,
        ..Default::default()
    };
    Bytes::from(m.encode_to_vec())
}

/// A message of `room` whose bytes are a function of (room, seq), with a
/// size that varies with `seq` (from a few bytes to a few KiB), and every
/// optional field set on some seqs.
fn message(room: RoomId, seq: u64) -> Arc<StoredMessage> {
    let len = usize::try_from((seq * 7919 + room * 104_729) % 3000).unwrap() + 1;
    let body: Vec<u8> = (0..len)
        .map(|i| u8::try_from((i as u64 + seq * 31 + room * 17) % 251).unwrap())
        .collect();
    let mut m = StoredMessage::new(seq, encoded(&body, 1_000 + seq));
    if seq.is_multiple_of(3) {
        m.except_session = Some([u8::try_from(seq % 256).unwrap(); 16]);
    }
    if seq.is_multiple_of(4) {
        m.except_client = Some(Arc::from(format!("client-{seq}")));
    }
    if seq.is_multiple_of(5) {
        m.extra = Some(Arc::new(Extra {
            except_sessions: vec![vec![7; 16]],
            except_rooms: vec![format!("elsewhere-{room}")],
            rooms: vec!["a".into(), "b".into()],
        }));
    }
    Arc::new(m)
}

/// Messages `seqs` of `room`.
fn messages(room: RoomId, seqs: std::ops::RangeInclusive<u64>) -> Vec<Arc<StoredMessage>> {
    seqs.map(|seq| message(room, seq)).collect()
}

/// Message bytes of `seqs` of `room`, as stats count them.
fn bytes_of(room: RoomId, seqs: std::ops::RangeInclusive<u64>) -> u64 {
    seqs.map(|seq| message(room, seq).encoded.len() as u64)
        .sum()
}

fn stats(first_seq: u64, stored_bytes: u64) -> RoomStats {
    RoomStats {
        first_seq,
        stored_bytes,
    }
}

fn cursor(next_seq: u64) -> CursorRecord {
    CursorRecord {
        next_seq,
        unacked: vec![
            (next_seq.saturating_sub(2), 3),
            (next_seq.saturating_sub(1), 1),
        ],
        owner: Some(format!("owner-{next_seq}")),
        gap: Some((1, next_seq, next_seq / 2)),
    }
}

fn dedup(timestamp_ms: u64, seqs: &[(RoomId, u64)]) -> DedupRecord {
    DedupRecord {
        timestamp_ms,
        seqs: seqs.to_vec(),
    }
}

/// A batch that creates `rooms` (id, namespace, name).
fn new_rooms(rooms: &[(RoomId, &str, &str)]) -> WriteBatch {
    WriteBatch {
        new_rooms: rooms
            .iter()
            .map(|(id, ns, name)| (*id, Arc::from(*ns), Arc::from(*name)))
            .collect(),
        next_room_id: rooms.iter().map(|r| r.0 + 1).max(),
        ..WriteBatch::default()
    }
}

async fn commit(store: &Arc<dyn Store>, batch: WriteBatch) {
    let _flushed = store.commit(Arc::new(batch)).await.expect("commit");
}

async fn write(store: &Arc<dyn Store>, batch: WriteBatch) {
    store.write(Arc::new(batch)).await.expect("write");
}

async fn read(
    store: &Arc<dyn Store>,
    room: RoomId,
    from: u64,
    max: usize,
    max_bytes: usize,
) -> Vec<Arc<StoredMessage>> {
    store
        .read(room, from, max, max_bytes)
        .await
        .unwrap_or_else(|e| panic!("read of room {room} from {from} failed: {e}"))
}

async fn recover(store: &Arc<dyn Store>) -> Recovered {
    store.recover().await.expect("recover")
}

/// Every message of `room` from `from` on, read in pieces.
async fn read_all(store: &Arc<dyn Store>, room: RoomId, from: u64) -> Vec<Arc<StoredMessage>> {
    let mut out: Vec<Arc<StoredMessage>> = Vec::new();
    loop {
        let next = out.last().map_or(from, |m| m.seq + 1);
        let got = read(store, room, next, 100, usize::MAX).await;
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn seqs(msgs: &[Arc<StoredMessage>]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// Checks that `got` are the messages `want`, seqs first, then every
/// field (without printing messages, which can be large).
fn assert_log(got: &[Arc<StoredMessage>], want: &[Arc<StoredMessage>], what: &str) {
    assert_eq!(seqs(got), seqs(want), "{what}: seqs");
    for (g, w) in got.iter().zip(want) {
        assert!(g == w, "{what}: message {} is not what was stored", w.seq);
    }
}

/// What `read(from, max, max_bytes)` must return when `log` (consecutive
/// seqs, in order) is what the room holds: the messages from `from` on, at
/// most `max` of them, stopping after the one that brings the message data
/// read (the sum of their `encoded` lengths) to `max_bytes` or more.
fn expected_read(
    log: &[Arc<StoredMessage>],
    from: u64,
    max: usize,
    max_bytes: usize,
) -> Vec<Arc<StoredMessage>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for m in log.iter().filter(|m| m.seq >= from) {
        if out.len() >= max || bytes >= max_bytes {
            break;
        }
        bytes += m.encoded.len();
        out.push(m.clone());
    }
    out
}

/// The recovered room `id`, failing the test if it is missing.
fn room(r: &Recovered, id: RoomId) -> &roomq::storage::RecoveredRoom {
    r.rooms
        .iter()
        .find(|room| room.id == id)
        .unwrap_or_else(|| panic!("room {id} is not recovered: {:?}", r.rooms))
}

/// Recovered cursors by (room, name).
fn cursors(r: &Recovered) -> BTreeMap<(RoomId, String), CursorRecord> {
    r.cursors
        .iter()
        .map(|(room, name, c)| ((*room, name.to_string()), c.clone()))
        .collect()
}

/// Recovered dedup records by (namespace, id).
fn dedups(r: &Recovered) -> BTreeMap<(String, [u8; 16]), DedupRecord> {
    r.dedup
        .iter()
        .map(|(ns, id, d)| ((ns.to_string(), *id), d.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Atomic batches

/// One batch of every kind of write (two new rooms, appends to both, their
/// stats, a cursor, two dedup records, a namespace, the next room id) is
/// all there once `commit` resolved, and after a reopen. (That a crash
/// leaves a batch whole or absent is
/// [`a_killed_process_loses_no_stored_batch`].)
pub async fn a_batch_is_applied_whole<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path()).await;
    let mut batch = new_rooms(&[(1, "/", "orders"), (2, "/billing", "orders")]);
    batch.appends = vec![(1, messages(1, 1..=40)), (2, messages(2, 1..=3))];
    batch.room_stats = vec![
        (1, stats(1, bytes_of(1, 1..=40))),
        (2, stats(1, bytes_of(2, 1..=3))),
    ];
    batch.cursors = vec![(1, "alice".into(), Some(cursor(38)))];
    batch.dedup_put = vec![
        ("/".into(), [1; 16], dedup(5_000, &[(1, 40)])),
        ("/billing".into(), [2; 16], dedup(5_000, &[(2, 3), (1, 39)])),
    ];
    batch.namespaces = vec![("/billing".into(), Some(b"billing record".to_vec()))];
    commit(&store, batch).await;
    holds_the_whole_batch(&store).await;
    drop(store);
    let store = open(engine, dir.path()).await;
    holds_the_whole_batch(&store).await;
}

/// Checks that `store` holds everything [`a_batch_is_applied_whole`]
/// stored.
async fn holds_the_whole_batch(store: &Arc<dyn Store>) {
    let r = recover(store).await;
    let one = room(&r, 1);
    assert_eq!((&*one.namespace, &*one.name), ("/", "orders"));
    assert_eq!(one.last_seq, 40);
    assert_eq!(one.stats, stats(1, bytes_of(1, 1..=40)));
    let two = room(&r, 2);
    assert_eq!((&*two.namespace, &*two.name), ("/billing", "orders"));
    assert_eq!(two.last_seq, 3);
    assert_eq!(two.stats, stats(1, bytes_of(2, 1..=3)));
    assert_eq!(r.rooms.len(), 2);
    assert_eq!(
        cursors(&r),
        BTreeMap::from([((1, "alice".to_string()), cursor(38))])
    );
    assert_eq!(
        dedups(&r),
        BTreeMap::from([
            (("/".to_string(), [1; 16]), dedup(5_000, &[(1, 40)])),
            (
                ("/billing".to_string(), [2; 16]),
                dedup(5_000, &[(2, 3), (1, 39)])
            ),
        ])
    );
    assert_eq!(r.namespaces, vec![b"billing record".to_vec()]);
    assert_eq!(r.next_room_id, 3);
    assert_log(
        &read_all(store, 1, 1).await,
        &messages(1, 1..=40),
        "room 1 from 1",
    );
    assert_log(
        &read_all(store, 2, 1).await,
        &messages(2, 1..=3),
        "room 2 from 1",
    );
}

// ---------------------------------------------------------------------------
// 2. Read after commit / write

/// How the reads tests store their batches.
#[derive(Clone, Copy, PartialEq)]
enum How {
    Commit,
    Write,
}

async fn store_batch(store: &Arc<dyn Store>, how: How, batch: WriteBatch) {
    match how {
        How::Commit => commit(store, batch).await,
        How::Write => write(store, batch).await,
    }
}

/// Stores room 1's seqs 1..=120 in batches of different sizes (one of
/// 90 messages, larger than any engine's natural unit is likely to be),
/// then checks `read` against [`expected_read`] from every `from`, with
/// several `max` and `max_bytes`.
async fn reads_return_exactly_what_was_stored<E: Engine>(engine: &E, how: How) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path()).await;
    store_batch(&store, how, new_rooms(&[(1, "/", "r"), (2, "/", "empty")])).await;
    let mut last = 0;
    for size in [1, 2, 5, 90, 7, 15] {
        let batch = WriteBatch {
            appends: vec![(1, messages(1, last + 1..=last + size))],
            room_stats: vec![(1, stats(1, bytes_of(1, 1..=last + size)))],
            ..WriteBatch::default()
        };
        store_batch(&store, how, batch).await;
        last += size;
        // Visible as soon as the call resolved.
        let tail = read(&store, 1, last, 10, usize::MAX).await;
        assert_eq!(seqs(&tail), vec![last], "the newest message is readable");
    }
    let log = messages(1, 1..=last);
    let one_message = log[60].encoded.len();
    for from in 0..=last + 2 {
        for max in [0, 1, 3, 100, 1000] {
            for max_bytes in [1, one_message, 3 * one_message + 1, 20_000, usize::MAX] {
                let got = read(&store, 1, from, max, max_bytes).await;
                let want = expected_read(&log, from, max, max_bytes);
                assert_log(
                    &got,
                    &want,
                    &format!("read(from {from}, max {max}, max_bytes {max_bytes})"),
                );
            }
        }
    }
    assert!(read(&store, 2, 1, 100, usize::MAX).await.is_empty());
    assert!(read(&store, 3, 1, 100, usize::MAX).await.is_empty());
    assert!(read(&store, 0, 0, 100, usize::MAX).await.is_empty());
}

/// After `commit` resolves, `read` returns exactly the stored messages, in
/// seq order, from any `from` (0, inside a batch, past the end), honouring
/// `max` and `max_bytes`; an empty or unknown room reads as empty.
pub async fn reads_after_commit_return_exactly_what_was_stored<E: Engine>(engine: &E) {
    reads_return_exactly_what_was_stored(engine, How::Commit).await;
}

/// The same after `write`, which does not sync: what it stored is visible
/// at once.
pub async fn reads_after_write_return_exactly_what_was_stored<E: Engine>(engine: &E) {
    reads_return_exactly_what_was_stored(engine, How::Write).await;
}

// ---------------------------------------------------------------------------
// 3. Recovery

/// A fresh store recovers empty; after several batches and a reopen,
/// `recover` returns rooms (ids, namespaces, names, last_seq, stats),
/// cursors (unacked list, owner, gap), dedup records, namespace records and
/// the next room id exactly as written.
pub async fn recovery_returns_what_was_written<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        let r = recover(&store).await;
        assert!(r.rooms.is_empty() && r.cursors.is_empty() && r.dedup.is_empty());
        assert!(r.namespaces.is_empty());
        assert!(r.next_room_id <= 1, "a fresh store has used no room id");

        commit(
            &store,
            new_rooms(&[(1, "/", "general"), (2, "/team-a", "general")]),
        )
        .await;
        let batch = WriteBatch {
            appends: vec![(1, messages(1, 1..=10))],
            room_stats: vec![(1, stats(1, bytes_of(1, 1..=10)))],
            cursors: vec![
                (1, "alice".into(), Some(cursor(4))),
                (2, "bob".into(), Some(CursorRecord::default())),
            ],
            dedup_put: vec![("/team-a".into(), [9; 16], dedup(77, &[(2, 1), (1, 10)]))],
            ..WriteBatch::default()
        };
        write(&store, batch).await;
        let mut batch = new_rooms(&[(7, "/team-a", "ops")]);
        batch.appends = vec![(1, messages(1, 11..=12)), (7, messages(7, 1..=1))];
        batch.room_stats = vec![
            (1, stats(1, bytes_of(1, 1..=12))),
            (7, stats(1, bytes_of(7, 1..=1))),
        ];
        batch.next_room_id = Some(9);
        batch.namespaces = vec![
            ("/team-a".into(), Some(vec![1, 2, 3])),
            ("/team-b".into(), Some(Vec::new())),
        ];
        commit(&store, batch).await;
    }
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    let mut rooms: Vec<_> = r
        .rooms
        .iter()
        .map(|r| {
            (
                r.id,
                r.namespace.to_string(),
                r.name.to_string(),
                r.last_seq,
                r.stats,
            )
        })
        .collect();
    rooms.sort_by_key(|r| r.0);
    assert_eq!(
        rooms,
        vec![
            (
                1,
                "/".into(),
                "general".into(),
                12,
                stats(1, bytes_of(1, 1..=12))
            ),
            // Never given stats: the stats of an empty room.
            (2, "/team-a".into(), "general".into(), 0, stats(1, 0)),
            (
                7,
                "/team-a".into(),
                "ops".into(),
                1,
                stats(1, bytes_of(7, 1..=1))
            ),
        ]
    );
    assert_eq!(
        cursors(&r),
        BTreeMap::from([
            ((1, "alice".to_string()), cursor(4)),
            ((2, "bob".to_string()), CursorRecord::default()),
        ])
    );
    assert_eq!(
        dedups(&r),
        BTreeMap::from([(
            ("/team-a".to_string(), [9; 16]),
            dedup(77, &[(2, 1), (1, 10)])
        )])
    );
    let mut namespaces = r.namespaces.clone();
    namespaces.sort();
    assert_eq!(namespaces, vec![Vec::new(), vec![1, 2, 3]]);
    assert_eq!(r.next_room_id, 9);
    assert_log(
        &read_all(&store, 1, 1).await,
        &messages(1, 1..=12),
        "room 1 from 1",
    );
    assert_log(
        &read_all(&store, 7, 1).await,
        &messages(7, 1..=1),
        "room 7 from 1",
    );
}

/// A later batch's cursor update overrides an earlier one, `None` deletes
/// the cursor, and a cursor written again after its deletion is back; the
/// same within one batch.
pub async fn later_cursor_updates_override_earlier_ones<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        let mut batch = new_rooms(&[(1, "/", "r"), (2, "/", "s")]);
        batch.cursors = vec![
            (1, "a".into(), Some(cursor(1))),
            (1, "b".into(), Some(cursor(1))),
            (1, "c".into(), Some(cursor(1))),
            (2, "a".into(), Some(cursor(5))),
        ];
        commit(&store, batch).await;
        let batch = WriteBatch {
            cursors: vec![
                (1, "a".into(), Some(cursor(2))),
                (1, "b".into(), None),
                // Written twice in one batch: the later one counts.
                (2, "a".into(), Some(cursor(6))),
                (2, "a".into(), Some(cursor(7))),
            ],
            ..WriteBatch::default()
        };
        write(&store, batch).await;
        let batch = WriteBatch {
            cursors: vec![
                (1, "a".into(), Some(cursor(3))),
                (1, "b".into(), Some(cursor(9))),
                (1, "c".into(), None),
            ],
            ..WriteBatch::default()
        };
        commit(&store, batch).await;
        let r = recover(&store).await;
        assert_eq!(
            cursors(&r),
            BTreeMap::from([
                ((1, "a".to_string()), cursor(3)),
                ((1, "b".to_string()), cursor(9)),
                ((2, "a".to_string()), cursor(7)),
            ]),
            "before a reopen"
        );
    }
    let store = open(engine, dir.path()).await;
    assert_eq!(
        cursors(&recover(&store).await),
        BTreeMap::from([
            ((1, "a".to_string()), cursor(3)),
            ((1, "b".to_string()), cursor(9)),
            ((2, "a".to_string()), cursor(7)),
        ]),
        "after a reopen"
    );
}

/// `dedup_expire_before` deletes the dedup records accepted before the
/// cutoff and keeps those accepted at or after it. (The records of one
/// batch share one acceptance time here, as the broker's records of one
/// commit are accepted within it; an engine may expire a batch's records
/// together.)
pub async fn expired_dedup_records_are_deleted<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path()).await;
    commit(&store, new_rooms(&[(1, "/", "r")])).await;
    for (t, ids) in [(100, [1u8, 2]), (200, [3, 4]), (300, [5, 6])] {
        let batch = WriteBatch {
            dedup_put: ids
                .iter()
                .map(|id| (Arc::from("/"), [*id; 16], dedup(t, &[(1, u64::from(*id))])))
                .collect(),
            ..WriteBatch::default()
        };
        commit(&store, batch).await;
    }
    let ids = |r: &Recovered| {
        let mut ids: Vec<u8> = r.dedup.iter().map(|d| d.1[0]).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(&recover(&store).await), vec![1, 2, 3, 4, 5, 6]);
    let expire = |before| WriteBatch {
        dedup_expire_before: Some(before),
        ..WriteBatch::default()
    };
    commit(&store, expire(200)).await;
    assert_eq!(
        ids(&recover(&store).await),
        vec![3, 4, 5, 6],
        "records accepted at the cutoff are kept"
    );
    write(&store, expire(201)).await;
    assert_eq!(ids(&recover(&store).await), vec![5, 6]);
    drop(store);
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    assert_eq!(ids(&r), vec![5, 6], "after a reopen");
    assert_eq!(
        dedups(&r)[&("/".to_string(), [6; 16])],
        dedup(300, &[(1, 6)])
    );
    commit(&store, expire(u64::MAX)).await;
    assert!(recover(&store).await.dedup.is_empty());
}

/// A deleted room is gone with its messages, stats and cursors, even what
/// the deleting batch itself writes for it; other rooms, and the next room
/// id, are untouched.
pub async fn a_deleted_room_leaves_nothing<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        let mut batch = new_rooms(&[(1, "/", "doomed"), (2, "/", "kept")]);
        batch.appends = vec![(1, messages(1, 1..=20)), (2, messages(2, 1..=5))];
        batch.room_stats = vec![
            (1, stats(1, bytes_of(1, 1..=20))),
            (2, stats(1, bytes_of(2, 1..=5))),
        ];
        batch.cursors = vec![
            (1, "a".into(), Some(cursor(3))),
            (2, "a".into(), Some(cursor(2))),
        ];
        commit(&store, batch).await;
        let batch = WriteBatch {
            appends: vec![(1, messages(1, 21..=22))],
            room_stats: vec![(1, stats(1, bytes_of(1, 1..=22)))],
            cursors: vec![(1, "b".into(), Some(cursor(21)))],
            deleted_rooms: vec![1],
            ..WriteBatch::default()
        };
        commit(&store, batch).await;
        assert!(read(&store, 1, 1, 100, usize::MAX).await.is_empty());
    }
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    assert_eq!(r.rooms.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(room(&r, 2).last_seq, 5);
    assert_eq!(
        cursors(&r),
        BTreeMap::from([((2, "a".to_string()), cursor(2))])
    );
    assert_eq!(r.next_room_id, 3, "a deleted room's id is never reused");
    assert!(read(&store, 1, 0, 100, usize::MAX).await.is_empty());
    assert_log(
        &read_all(&store, 2, 1).await,
        &messages(2, 1..=5),
        "room 2 from 1",
    );
}

/// Namespace records are stored by name, replaced by a later record of
/// the same name, and deleted by `None`.
pub async fn namespaces_are_stored_and_deleted<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        let batch = WriteBatch {
            namespaces: vec![
                ("/a".into(), Some(b"a1".to_vec())),
                ("/b".into(), Some(b"b1".to_vec())),
                ("/c".into(), Some(b"c1".to_vec())),
            ],
            ..WriteBatch::default()
        };
        commit(&store, batch).await;
        let batch = WriteBatch {
            namespaces: vec![("/a".into(), Some(b"a2".to_vec())), ("/b".into(), None)],
            ..WriteBatch::default()
        };
        commit(&store, batch).await;
    }
    let store = open(engine, dir.path()).await;
    let mut namespaces = recover(&store).await.namespaces;
    namespaces.sort();
    assert_eq!(namespaces, vec![b"a2".to_vec(), b"c1".to_vec()]);
}

// ---------------------------------------------------------------------------
// 4. Recovery after a crash

/// The batch number `b` (from 0) of the crash test appends this many
/// messages to each of its two rooms: mostly a few, and now and then
/// enough (about 200 KiB) that an engine has to store it in several parts.
fn crash_batch_size(b: u64) -> u64 {
    if b % 10 == 9 {
        130
    } else {
        1 + b % 7
    }
}

/// The last seq of both rooms once batches `0..batches` are stored.
fn crash_last_seq(batches: u64) -> u64 {
    (0..batches).map(crash_batch_size).sum()
}

/// The dedup id of crash batch `b`.
fn crash_dedup_id(b: u64) -> [u8; 16] {
    let mut id = [0xc7; 16];
    id[8..].copy_from_slice(&b.to_be_bytes());
    id
}

/// Crash batch `b`, which brings both rooms from `last` to `last + n`:
/// appends to rooms 1 and 2, both rooms' stats, room 1's cursor and a dedup
/// record naming both new last seqs. Every part of it says how many
/// batches are stored, so the parent can tell a partial batch.
fn crash_batch(b: u64) -> WriteBatch {
    let last = crash_last_seq(b);
    let end = last + crash_batch_size(b);
    WriteBatch {
        appends: vec![
            (1, messages(1, last + 1..=end)),
            (2, messages(2, last + 1..=end)),
        ],
        room_stats: vec![
            (1, stats(1, bytes_of(1, 1..=end))),
            (2, stats(1, bytes_of(2, 1..=end))),
        ],
        cursors: vec![(1, "reader".into(), Some(cursor(end + 1)))],
        dedup_put: vec![(
            "/".into(),
            crash_dedup_id(b),
            dedup(b + 1, &[(1, end), (2, end)]),
        )],
        ..WriteBatch::default()
    }
}

/// The number of crash batches whose appends end a room at `last`,
/// failing the test if `last` falls inside a batch.
fn crash_batches_of(room: RoomId, last: u64) -> u64 {
    let batches = (0..).find(|b| crash_last_seq(*b) >= last).unwrap();
    assert_eq!(
        crash_last_seq(batches),
        last,
        "room {room}: the log ends inside a batch: a batch was stored in part"
    );
    batches
}

/// Checks the store in `dir` after a crash, where batch `confirmed` (or
/// a later one) was the last a child reported stored: the two rooms
/// hold a gap-free prefix 1..=N of their messages, byte for byte, with
/// N at a batch boundary no earlier than `confirmed`'s, and every other
/// part of the batches up to there is stored, and nothing of later ones.
/// For an engine atomic only per room, each room is checked so, and the
/// rooms may differ by the one batch that was in flight (its cursor, which
/// is written after both rooms' records, may then be the previous one's).
/// Returns the number of batches stored in both rooms.
async fn check_after_crash<E: Engine>(engine: &E, dir: &Path, confirmed: Option<u64>) -> u64 {
    let store = open(engine, dir).await;
    let r = recover(&store).await;
    let (one, two) = (room(&r, 1), room(&r, 2));
    if E::ATOMIC_ACROSS_ROOMS {
        assert_eq!(
            one.last_seq, two.last_seq,
            "a batch appends to both rooms: both or neither"
        );
    }
    let stored_in = [
        crash_batches_of(1, one.last_seq),
        crash_batches_of(2, two.last_seq),
    ];
    let batches = stored_in[0].min(stored_in[1]);
    let most = stored_in[0].max(stored_in[1]);
    assert!(
        most - batches <= 1,
        "only the batch in flight may be in one room and not the other: {stored_in:?}"
    );
    if let Some(c) = confirmed {
        assert!(
            batches > c,
            "batch {c} was confirmed stored, but only {batches} batches are"
        );
    }
    assert_eq!(one.stats, stats(1, bytes_of(1, 1..=one.last_seq)));
    assert_eq!(two.stats, stats(1, bytes_of(2, 1..=two.last_seq)));
    let cursor_after = |n: u64| {
        if n == 0 {
            BTreeMap::new()
        } else {
            BTreeMap::from([((1, "reader".to_string()), cursor(crash_last_seq(n) + 1))])
        }
    };
    let got = cursors(&r);
    if E::ATOMIC_ACROSS_ROOMS || got == cursor_after(batches) {
        assert_eq!(got, cursor_after(batches), "the cursor of the last batch");
    } else {
        assert!(
            batches > 0 && confirmed.is_none_or(|c| c + 1 < batches),
            "the cursor is older than the last batch stored in both rooms, which was confirmed"
        );
        assert_eq!(
            got,
            cursor_after(batches - 1),
            "the cursor of the last batch or the one before"
        );
    }
    let want_dedup: BTreeMap<_, _> = (0..most)
        .map(|b| {
            let end = crash_last_seq(b + 1);
            let seqs: Vec<_> = [(1, end), (2, end)]
                .into_iter()
                .filter(|(id, _)| stored_in[usize::try_from(*id - 1).unwrap()] > b)
                .collect();
            (("/".to_string(), crash_dedup_id(b)), dedup(b + 1, &seqs))
        })
        .collect();
    assert_eq!(dedups(&r), want_dedup, "one dedup record per stored batch");
    for (id, last) in [(1, one.last_seq), (2, two.last_seq)] {
        let log = read_all(&store, id, 1).await;
        assert_eq!(seqs(&log), (1..=last).collect::<Vec<_>>(), "room {id}");
        assert_log(&log, &messages(id, 1..=last), &format!("room {id}"));
    }
    batches
}

/// What the child process of the crash test does: opens the store in
/// `dir`, continues the batches from what it recovers, alternating
/// `commit` and `write`, and after each one resolves prints `stored <b>`
/// (batch `b` is stored), until it is killed. It gives up after [`WAIT`],
/// or when nobody reads what it prints.
async fn crash_child<E: Engine>(engine: &E, dir: &Path) {
    let deadline = Instant::now() + WAIT;
    let store = open(engine, dir).await;
    let r = recover(&store).await;
    // Batches each room holds; they differ (by the batch in flight) only
    // for an engine atomic per room, and the child completes that batch.
    let mut stored_in = [0, 0];
    if r.rooms.is_empty() {
        commit(&store, new_rooms(&[(1, "/", "one"), (2, "/", "two")])).await;
    } else {
        for id in [1, 2] {
            stored_in[usize::try_from(id - 1).unwrap()] =
                crash_batches_of(id, room(&r, id).last_seq);
        }
    }
    let mut b = stored_in[0].min(stored_in[1]);
    let mut out = std::io::stdout().lock();
    while Instant::now() < deadline {
        let mut batch = crash_batch(b);
        let missing = |id: &RoomId| stored_in[usize::try_from(*id - 1).unwrap()] <= b;
        batch.appends.retain(|(id, _)| missing(id));
        batch.room_stats.retain(|(id, _)| missing(id));
        let batch = Arc::new(batch);
        let kind = if b.is_multiple_of(2) {
            store.commit(batch).await.map(|_flushed| "synced")
        } else {
            store.write(batch).await.map(|()| "written")
        };
        let kind = kind.expect("the child stores its batch");
        if writeln!(out, "{STORED_MARK}{b} {kind}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
        b += 1;
    }
}

/// A random duration below `limit`.
fn random_below(limit: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    limit.mul_f64((h.finish() >> 11) as f64 / (1u64 << 53) as f64)
}

/// The batch number in a line the crash test's child printed, if the line
/// reports one.
fn stored_batch(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(STORED_MARK)?;
    Some(rest.split_whitespace().next()?.parse().unwrap())
}

/// A process that stores batches is killed with SIGKILL while it is
/// storing more (eight times, each run continuing where the previous one
/// stopped). After each kill, every batch whose `commit` or `write` had
/// resolved is there, byte for byte, and every batch is there whole or
/// not at all: both rooms end at the same batch boundary, and the stats,
/// cursor and dedup records match the stored batches exactly.
///
/// The process is the test binary itself, run with `test_name` as its
/// filter and [`CHILD_ENV`] naming the data directory; in that process this
/// function plays the child ([`crash_child`]).
pub async fn a_killed_process_loses_no_stored_batch<E: Engine>(engine: &E, test_name: &str) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        crash_child(engine, Path::new(&dir)).await;
        return;
    }
    const ROUNDS: usize = 8;
    const CONFIRMATIONS_BEFORE_KILL: usize = 8;
    const KILL_WITHIN: Duration = Duration::from_millis(20);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut stored = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .envs(engine.child_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Lines arrive on a thread, so that waiting for them has a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut confirmed = Vec::new();
        while confirmed.len() < CONFIRMATIONS_BEFORE_KILL {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "round {round}: the child stopped confirming after {} batches: {e}",
                        confirmed.len()
                    );
                }
            };
            confirmed.extend(stored_batch(&line));
        }
        // Kill at a random moment of the next few batches, so that over
        // the rounds the kill lands in every part of a commit. (Nothing
        // waits for anything here: the child runs on regardless.) Killed
        // right after a confirmation instead, the child was always between
        // two batches: a store that wrote a batch as two writes, with no
        // delay between them, passed every run; with the random moment, it
        // failed 3 runs of 6.
        std::thread::sleep(random_below(KILL_WITHIN));
        child.kill().unwrap();
        child.wait().unwrap();
        // What the child printed before it died was confirmed too.
        reader.join().unwrap();
        for line in rx.try_iter() {
            confirmed.extend(stored_batch(&line));
        }
        let last_confirmed = confirmed.iter().copied().max();
        assert!(
            confirmed.first().copied() == Some(stored),
            "round {round}: the child continues from batch {stored}, got {confirmed:?}"
        );
        let now = check_after_crash(engine, dir.path(), last_confirmed).await;
        assert!(now >= stored);
        stored = now;
    }
}

// ---------------------------------------------------------------------------
// 5. Checksums

/// A damaged message is never read as if it were good: every read that
/// reaches it fails with [`StoreError::Corrupt`], and a read that succeeds
/// returns the stored messages unchanged.
pub async fn damaged_messages_are_reported_corrupt<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        commit(&store, new_rooms(&[(1, "/", "r")])).await;
        for (first, last) in [(1, 10), (11, 20), (21, 30)] {
            let batch = WriteBatch {
                appends: vec![(1, messages(1, first..=last))],
                room_stats: vec![(1, stats(1, bytes_of(1, 1..=last)))],
                ..WriteBatch::default()
            };
            commit(&store, batch).await;
        }
    }
    engine
        .damage(dir.path(), Damage::Message { room: 1, seq: 15 })
        .await;
    let store = open(engine, dir.path()).await;
    let log = messages(1, 1..=30);
    for from in [1, 11, 14, 15] {
        match store.read(1, from, 100, usize::MAX).await {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("read from {from} over damaged seq 15: {other:?}"),
        }
    }
    match store.read(1, 15, 1, usize::MAX).await {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("read of damaged seq 15 alone: {other:?}"),
    }
    for from in [1, 5, 16, 20, 21, 30] {
        for max in [1, 5] {
            match store.read(1, from, max, usize::MAX).await {
                Ok(got) => assert_log(
                    &got,
                    &expected_read(&log, from, max, usize::MAX),
                    "a read that succeeds after damage",
                ),
                Err(StoreError::Corrupt { .. }) => {}
                Err(e) => panic!("read from {from}: {e}"),
            }
        }
    }
}

/// Damage to any record `recover` returns (room, stats, cursor, dedup
/// record, namespace record, next room id) makes `recover` fail with
/// [`StoreError::Corrupt`]: it never returns a damaged record as good.
pub async fn damaged_records_fail_recovery<E: Engine>(engine: &E) {
    let kinds = [
        Damage::Room(2),
        Damage::Stats(2),
        Damage::Cursor {
            room: 2,
            name: "alice",
        },
        Damage::Dedup {
            namespace: "/",
            id: [3; 16],
        },
        Damage::Namespace("/n"),
        Damage::NextRoomId,
    ];
    for what in kinds {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(engine, dir.path()).await;
            let mut batch = new_rooms(&[(1, "/", "r"), (2, "/", "s")]);
            batch.next_room_id = Some(5);
            batch.appends = vec![(1, messages(1, 1..=3)), (2, messages(2, 1..=3))];
            batch.room_stats = vec![
                (1, stats(1, bytes_of(1, 1..=3))),
                (2, stats(1, bytes_of(2, 1..=3))),
            ];
            batch.cursors = vec![
                (1, "alice".into(), Some(cursor(2))),
                (2, "alice".into(), Some(cursor(3))),
            ];
            batch.namespaces = vec![
                ("/m".into(), Some(b"m".to_vec())),
                ("/n".into(), Some(b"n".to_vec())),
            ];
            commit(&store, batch).await;
            let batch = WriteBatch {
                dedup_put: vec![
                    ("/".into(), [3; 16], dedup(10, &[(2, 3)])),
                    ("/".into(), [4; 16], dedup(10, &[(1, 3)])),
                ],
                ..WriteBatch::default()
            };
            commit(&store, batch).await;
        }
        engine.damage(dir.path(), what).await;
        let store = open(engine, dir.path()).await;
        match store.recover().await {
            Err(StoreError::Corrupt { .. }) => {}
            Err(e) => panic!("damaged {what:?}: recover failed, but not as corrupt: {e}"),
            Ok(r) => panic!("damaged {what:?}: recover succeeded: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Purge and trim

/// A batch that raises a room's `first_seq` (in `room_stats`) and names it
/// in `purged` deletes its messages below: a read from below `first_seq`
/// returns only the messages from `first_seq` on, also when `first_seq`
/// falls inside an earlier batch; `recover` reports the stats as written
/// and the same last seq, also once everything was purged; and all of it
/// survives a reopen.
pub async fn purge_deletes_messages_below_first_seq<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    let purge = |first_seq, stored_bytes| WriteBatch {
        room_stats: vec![(1, stats(first_seq, stored_bytes))],
        purged: vec![1],
        ..WriteBatch::default()
    };
    {
        let store = open(engine, dir.path()).await;
        commit(&store, new_rooms(&[(1, "/", "r"), (2, "/", "s")])).await;
        for (first, last) in [(1, 10), (11, 100), (101, 120)] {
            let batch = WriteBatch {
                appends: vec![
                    (1, messages(1, first..=last)),
                    (2, messages(2, first..=last)),
                ],
                room_stats: vec![
                    (1, stats(1, bytes_of(1, 1..=last))),
                    (2, stats(1, bytes_of(2, 1..=last))),
                ],
                ..WriteBatch::default()
            };
            commit(&store, batch).await;
        }
        // A trim to the boundary of a batch, then into the middle of one.
        for first_seq in [11, 57] {
            commit(&store, purge(first_seq, bytes_of(1, first_seq..=120))).await;
            for from in [0, 1, 10, 11, first_seq - 1, first_seq] {
                assert_log(
                    &read_all(&store, 1, from).await,
                    &messages(1, first_seq..=120),
                    &format!("read from {from} after a trim to {first_seq}"),
                );
            }
            assert_eq!(
                seqs(&read(&store, 1, 1, 3, usize::MAX).await),
                vec![first_seq, first_seq + 1, first_seq + 2]
            );
            let r = recover(&store).await;
            assert_eq!(
                room(&r, 1).stats,
                stats(first_seq, bytes_of(1, first_seq..=120))
            );
            assert_eq!(room(&r, 1).last_seq, 120);
        }
        assert_log(
            &read_all(&store, 2, 1).await,
            &messages(2, 1..=120),
            "other rooms are untouched",
        );
    }
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    assert_eq!(room(&r, 1).stats, stats(57, bytes_of(1, 57..=120)));
    assert_eq!(room(&r, 1).last_seq, 120);
    assert_log(
        &read_all(&store, 1, 1).await,
        &messages(1, 57..=120),
        "room 1 from 1",
    );

    // A purge of everything: the room is empty and its seqs go on.
    commit(&store, purge(121, 0)).await;
    assert!(read(&store, 1, 0, 100, usize::MAX).await.is_empty());
    drop(store);
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    assert_eq!(room(&r, 1).stats, stats(121, 0));
    assert_eq!(room(&r, 1).last_seq, 120, "seqs are never reused");
    assert!(read(&store, 1, 0, 100, usize::MAX).await.is_empty());
    let batch = WriteBatch {
        appends: vec![(1, messages(1, 121..=125))],
        room_stats: vec![(1, stats(121, bytes_of(1, 121..=125)))],
        ..WriteBatch::default()
    };
    commit(&store, batch).await;
    assert_log(
        &read_all(&store, 1, 0).await,
        &messages(1, 121..=125),
        "room 1 from 0",
    );
    assert_eq!(room(&recover(&store).await, 1).last_seq, 125);
}

/// A batch that appends to a room and also trims it (the broker's open
/// batch can hold both) stores only the messages from `first_seq` on.
pub async fn purge_in_the_batch_that_appends<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path()).await;
    let mut batch = new_rooms(&[(1, "/", "r")]);
    batch.appends = vec![(1, messages(1, 1..=5))];
    batch.room_stats = vec![(1, stats(1, bytes_of(1, 1..=5)))];
    commit(&store, batch).await;
    let batch = WriteBatch {
        appends: vec![(1, messages(1, 6..=20))],
        room_stats: vec![(1, stats(9, bytes_of(1, 9..=20)))],
        purged: vec![1],
        ..WriteBatch::default()
    };
    commit(&store, batch).await;
    assert_log(
        &read_all(&store, 1, 0).await,
        &messages(1, 9..=20),
        "room 1 from 0",
    );
    drop(store);
    let store = open(engine, dir.path()).await;
    let r = recover(&store).await;
    assert_eq!(room(&r, 1).stats, stats(9, bytes_of(1, 9..=20)));
    assert_eq!(room(&r, 1).last_seq, 20);
    assert_log(
        &read_all(&store, 1, 1).await,
        &messages(1, 9..=20),
        "room 1 from 1",
    );
}

// ---------------------------------------------------------------------------
// 7. The sync proof

/// `flush` after `write`s resolves with the proof of a sync, and the data
/// it covers is readable and survives a reopen; `flush` with nothing
/// written resolves too.
pub async fn flush_after_write_resolves<E: Engine>(engine: &E) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(engine, dir.path()).await;
        let _flushed = store.flush().await.expect("flush of an empty store");
        write(&store, new_rooms(&[(1, "/", "r")])).await;
        for (first, last) in [(1, 4), (5, 9)] {
            let batch = WriteBatch {
                appends: vec![(1, messages(1, first..=last))],
                room_stats: vec![(1, stats(1, bytes_of(1, 1..=last)))],
                ..WriteBatch::default()
            };
            write(&store, batch).await;
        }
        let _flushed = store.flush().await.expect("flush after writes");
        let _flushed = store.flush().await.expect("a second flush");
        assert_log(
            &read_all(&store, 1, 1).await,
            &messages(1, 1..=9),
            "room 1 from 1",
        );
    }
    let store = open(engine, dir.path()).await;
    assert_eq!(room(&recover(&store).await, 1).last_seq, 9);
    assert_log(
        &read_all(&store, 1, 1).await,
        &messages(1, 1..=9),
        "room 1 from 1",
    );
}
