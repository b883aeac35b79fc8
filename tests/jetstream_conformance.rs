//! The storage conformance suite (`tests/conformance/`) run against the
//! JetStream engine: the whole suite on one nats-server, started once for
//! this test process; the reads and purges again with records small
//! enough that every commit writes several; a subset on three servers with
//! three replicas; and the fence between two processes writing one room.
//!
//! Each test's data directory names its own prefix (`t` and a hash of the
//! path), so opening the same directory again finds the same store. The
//! crash test's child process gets the server's URL in
//! [`URL_ENV`](Engine::child_env) instead of starting servers of its own.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod conformance;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use common::nats::Nats;
use conformance::Damage;
use futures::StreamExt as _;
use roomq::config::Config;
use roomq::storage::jetstream::layout::{self, Layout};
use roomq::storage::jetstream::JetStreamStore;
use roomq::storage::record::decode_room;
use roomq::storage::{RoomId, Store, StoreError, StoredMessage, WriteBatch};

/// The crash test's child finds the server here.
const URL_ENV: &str = "ROOMQ_TEST_JETSTREAM_URL";

/// Which servers an engine uses.
#[derive(Clone, Copy, PartialEq)]
enum Servers {
    One,
    Three,
}

/// The JetStream engine with some settings.
#[derive(Clone, Copy)]
struct JetStream {
    servers: Servers,
    replicas: u32,
    record_max_bytes: u32,
    record_max_messages: u32,
}

/// One server, one replica, the default record sizes.
const ONE: JetStream = JetStream {
    servers: Servers::One,
    replicas: 1,
    record_max_bytes: 256 * 1024,
    record_max_messages: 1024,
};

/// Records of at most 4 KiB or 7 messages: most commits write a chain.
const SMALL_RECORDS: JetStream = JetStream {
    record_max_bytes: 4096,
    record_max_messages: 7,
    ..ONE
};

/// Three servers, three replicas.
const THREE: JetStream = JetStream {
    servers: Servers::Three,
    replicas: 3,
    ..ONE
};

static ONE_SERVER: OnceLock<Nats> = OnceLock::new();
static THREE_SERVERS: OnceLock<Nats> = OnceLock::new();

/// Starts `n` servers for the rest of this process. They die with it (the
/// harness sees to that), but a static is never dropped: a watcher removes
/// their files once this process has exited. (It is never waited for: it
/// is meant to outlive this process.)
#[allow(clippy::zombie_processes)]
fn start(n: usize) -> Nats {
    let nats = Nats::start(n);
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; sleep 1; rm -rf {:?}",
        std::process::id(),
        nats.dir.path()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watcher of the servers' files");
    nats
}

impl JetStream {
    fn url(&self) -> String {
        if let Ok(url) = std::env::var(URL_ENV) {
            return url;
        }
        match self.servers {
            Servers::One => ONE_SERVER.get_or_init(|| start(1)).url(0),
            Servers::Three => THREE_SERVERS.get_or_init(|| start(3)).urls(),
        }
    }

    fn config(&self, dir: &Path) -> Config {
        let mut config = Config::default();
        let js = &mut config.jetstream;
        js.urls = self.url();
        js.prefix = prefix(dir);
        js.replicas = self.replicas;
        js.record_max_bytes = self.record_max_bytes;
        js.record_max_messages = self.record_max_messages;
        config
    }

    /// A raw connection and the layout of the store of `dir`.
    async fn raw(&self, dir: &Path) -> (jetstream::Context, Layout) {
        let client = async_nats::connect(self.url()).await.unwrap();
        (jetstream::new(client), Layout::new(&prefix(dir)))
    }
}

/// The prefix of the store of `dir`: `t` and 15 hex digits of a hash of
/// the path (the same in the crash test's child: one binary).
fn prefix(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("t{:015x}", h.finish() >> 4)
}

impl conformance::Engine for JetStream {
    const ATOMIC_ACROSS_ROOMS: bool = false;

    fn child_env(&self) -> Vec<(String, String)> {
        vec![(URL_ENV.to_string(), self.url())]
    }

    async fn open(&self, dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        let config = self.config(dir);
        // Three servers elect their JetStream leaders a moment after they
        // answer their health checks.
        let deadline = Instant::now() + conformance::WAIT;
        loop {
            match JetStreamStore::connect(&config).await {
                Ok(store) => return Ok(Arc::new(store)),
                Err(e) if self.servers == Servers::Three && Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// JetStream cannot change a stored message, so a damaged record is
    /// made by rewriting the room's log: its records are read, the
    /// subject purged, and the records published again in order, one of
    /// them changed (its `Nats-*` headers dropped, so that the duplicate
    /// window does not swallow it). KV values are put again changed.
    /// Stats live in the headers of a room's newest record; a dedup record
    /// in the headers of the records of its rooms: those headers are
    /// changed, their `Roomq-Check` not.
    async fn damage(&self, dir: &Path, what: Damage<'_>) {
        let (js, layout) = self.raw(dir).await;
        let meta = js.get_key_value(layout.meta_bucket()).await.unwrap();
        let cursors = js.get_key_value(layout.cursors_bucket()).await.unwrap();
        match what {
            Damage::Room(room) => flip_value(&meta, &layout::room_key(room)).await,
            Damage::Cursor { room, name } => {
                flip_value(&cursors, &layout::cursor_key(room, name)).await
            }
            Damage::Namespace(name) => flip_value(&meta, &layout::namespace_record_key(name)).await,
            Damage::NextRoomId => flip_value(&meta, layout::NEXT_ROOM_ID).await,
            Damage::Message { room, seq } => {
                let (stream, subject) = room_log(&js, &layout, &meta, room).await;
                rewrite(&js, &stream, &subject, |headers, payload| {
                    let first = number(headers, "Roomq-Seq");
                    let count = number(headers, "Roomq-Count");
                    if headers.get("Roomq-Kind").unwrap().as_str() != "m"
                        || !(first..first + count).contains(&seq)
                    {
                        return false;
                    }
                    let at = entry_end(payload, seq).expect("the seq is in the record");
                    let mut bytes = payload.to_vec();
                    bytes[at] ^= 0x40;
                    *payload = Bytes::from(bytes);
                    true
                })
                .await;
            }
            Damage::Stats(room) => {
                let (stream, subject) = room_log(&js, &layout, &meta, room).await;
                let newest = records(&stream, &subject).await.len();
                let mut at = 0;
                rewrite(&js, &stream, &subject, |headers, _| {
                    at += 1;
                    if at < newest {
                        return false;
                    }
                    let bytes = number(headers, "Roomq-Bytes");
                    headers.insert("Roomq-Bytes", (bytes + 1).to_string());
                    true
                })
                .await;
            }
            Damage::Dedup { namespace, id } => {
                let mut names = js.stream_names();
                let mut found = false;
                while let Some(name) = names.next().await {
                    let name = name.unwrap();
                    if !name.starts_with(&format!("{}_ns_", prefix(dir))) {
                        continue;
                    }
                    let stream = js.get_stream(&name).await.unwrap();
                    let subjects: Vec<String> = records(&stream, ">")
                        .await
                        .into_iter()
                        .filter(|(_, headers, _)| holds_dedup_id(headers, &id))
                        .map(|(subject, _, _)| subject)
                        .collect();
                    for subject in subjects {
                        found = true;
                        rewrite(&js, &stream, &subject, |headers, _| {
                            if !holds_dedup_id(headers, &id) {
                                return false;
                            }
                            let value = headers.get("Roomq-Dedup").unwrap().as_str();
                            let (head, tail) = value.split_at(1);
                            let head = if head == "A" { "B" } else { "A" };
                            headers.insert("Roomq-Dedup", format!("{head}{tail}"));
                            true
                        })
                        .await;
                    }
                }
                assert!(found, "no record holds dedup id {id:?} of {namespace}");
            }
        }
    }
}

/// Puts the value of `key` again with its last byte changed.
async fn flip_value(store: &jetstream::kv::Store, key: &str) {
    let value = store
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("nothing stored under {key}"));
    let mut damaged = value.to_vec();
    *damaged.last_mut().unwrap() ^= 0x40;
    store.put(key, Bytes::from(damaged)).await.unwrap();
}

/// The stream and subject of `room`'s log, found through its keys.
async fn room_log(
    js: &jetstream::Context,
    layout: &Layout,
    meta: &jetstream::kv::Store,
    room: RoomId,
) -> (stream::Stream, String) {
    let key = layout::room_key(room);
    let value = meta.get(&key).await.unwrap().unwrap();
    let (namespace, _) = decode_room(key.as_bytes(), &value).unwrap();
    let ns_id = meta
        .entry(layout::namespace_key(&namespace))
        .await
        .unwrap()
        .unwrap()
        .revision;
    let stream = js.get_stream(layout.namespace_stream(ns_id)).await.unwrap();
    (stream, layout.log_subject(ns_id, room))
}

fn number(headers: &HeaderMap, name: &str) -> u64 {
    headers.get(name).map_or(0, |v| v.as_str().parse().unwrap())
}

fn holds_dedup_id(headers: &HeaderMap, id: &[u8; 16]) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get("Roomq-Dedup") else {
        return false;
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.as_str())
        .unwrap();
    raw.windows(16).any(|w| w == id)
}

/// Every record on `filter` in `stream`: subject, headers, payload.
async fn records(stream: &stream::Stream, filter: &str) -> Vec<(String, HeaderMap, Bytes)> {
    let filter = if filter == ">" {
        stream.cached_info().config.subjects[0].clone()
    } else {
        filter.to_string()
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    while pending > 0 {
        let m = tokio::time::timeout(conformance::WAIT, messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        pending = m.info().unwrap().pending;
        out.push((
            m.subject.to_string(),
            m.headers.clone().unwrap_or_default(),
            m.payload.clone(),
        ));
    }
    out
}

/// Rewrites the log `subject`: each record, in order, is passed to
/// `change`, which returns whether it changed it; exactly one must.
async fn rewrite(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: &str,
    mut change: impl FnMut(&mut HeaderMap, &mut Bytes) -> bool,
) {
    let old = records(stream, subject).await;
    stream
        .purge()
        .filter(subject.to_string())
        .await
        .expect("purge the subject");
    let mut changed = 0;
    for (_, headers, payload) in old {
        let mut kept = HeaderMap::new();
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if !name.starts_with("Nats-") {
                for value in values {
                    kept.append(name, value.as_str());
                }
            }
        }
        let mut payload = payload;
        if change(&mut kept, &mut payload) {
            changed += 1;
        }
        js.publish_with_headers(subject.to_string(), kept, payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(changed, 1, "one record of {subject} is damaged");
}

/// The position of the last byte of message `seq` in a log value (see
/// `tests/store_conformance.rs`).
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

conformance::suite!(ONE);

/// The properties that depend on how a room's log is cut into records,
/// with every commit cut into several.
mod small_records {
    use super::{conformance, SMALL_RECORDS};

    #[tokio::test]
    async fn reads_after_commit_return_exactly_what_was_stored() {
        conformance::reads_after_commit_return_exactly_what_was_stored(&SMALL_RECORDS).await;
    }

    #[tokio::test]
    async fn purge_deletes_messages_below_first_seq() {
        conformance::purge_deletes_messages_below_first_seq(&SMALL_RECORDS).await;
    }

    #[tokio::test]
    async fn purge_in_the_batch_that_appends() {
        conformance::purge_in_the_batch_that_appends(&SMALL_RECORDS).await;
    }

    #[tokio::test]
    async fn damaged_messages_are_reported_corrupt() {
        conformance::damaged_messages_are_reported_corrupt(&SMALL_RECORDS).await;
    }
}

/// A subset on three servers with three replicas: a commit of every kind
/// of write, reads, recovery after reopening, purges.
mod three_replicas {
    use super::{conformance, THREE};

    #[tokio::test]
    async fn a_batch_is_applied_whole() {
        conformance::a_batch_is_applied_whole(&THREE).await;
    }

    #[tokio::test]
    async fn recovery_returns_what_was_written() {
        conformance::recovery_returns_what_was_written(&THREE).await;
    }

    #[tokio::test]
    async fn purge_deletes_messages_below_first_seq() {
        conformance::purge_deletes_messages_below_first_seq(&THREE).await;
    }
}

fn message(seq: u64) -> Arc<StoredMessage> {
    Arc::new(StoredMessage::new(
        seq,
        Bytes::from(format!("message {seq}")),
    ))
}

fn appends(room: RoomId, seqs: std::ops::RangeInclusive<u64>) -> WriteBatch {
    WriteBatch {
        appends: vec![(room, seqs.map(message).collect())],
        ..WriteBatch::default()
    }
}

/// Two stores on one prefix, as two brokers configured alike: the one
/// that recovered last owns the rooms it writes. The other's next append
/// to such a room is refused, its commit fails and every later write
/// fails too; nothing of it is stored.
#[tokio::test]
async fn a_second_writer_fences_the_first() {
    use conformance::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let first = ONE.open(dir.path()).await.unwrap();
    let mut batch = appends(1, 1..=5);
    batch.new_rooms = vec![(1, Arc::from("/"), Arc::from("r"))];
    batch.next_room_id = Some(2);
    let _ = first.commit(Arc::new(batch)).await.unwrap();

    let second = ONE.open(dir.path()).await.unwrap();
    let r = second.recover().await.unwrap();
    assert_eq!(r.rooms[0].last_seq, 5);
    let _ = second.commit(Arc::new(appends(1, 6..=8))).await.unwrap();

    match first.commit(Arc::new(appends(1, 6..=7))).await {
        Err(StoreError::Engine(e)) => assert!(e.to_string().contains("fenced"), "{e}"),
        other => panic!("the deposed writer's commit: {other:?}"),
    }
    assert!(matches!(
        first.commit(Arc::new(WriteBatch::default())).await,
        Err(StoreError::Poisoned)
    ));
    assert!(matches!(first.flush().await, Err(StoreError::Poisoned)));

    let _ = second.commit(Arc::new(appends(1, 9..=9))).await.unwrap();
    let log = second.read(1, 1, 100, usize::MAX).await.unwrap();
    assert_eq!(
        log.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(log.iter().all(|m| **m == *message(m.seq)));
}

/// A broker that cannot reach NATS at start fails at once, naming where
/// it looked.
#[tokio::test]
async fn an_unreachable_server_is_named() {
    let mut config = Config::default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.jetstream.urls = format!("nats://127.0.0.1:{port}");
    config.jetstream.request_timeout_ms = 500;
    let started = Instant::now();
    match JetStreamStore::connect(&config).await {
        Err(e) => assert!(e.to_string().contains(&config.jetstream.urls), "{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A commit whose dedup records do not fit in one record's headers (2,000
/// publishes with dedup ids to one room, about 90 KiB of dedup parts)
/// spreads them over more records; all of them are recovered.
#[tokio::test]
async fn many_dedup_records_in_one_commit_are_all_recovered() {
    use conformance::Engine as _;
    use roomq::storage::DedupRecord;
    let dir = tempfile::tempdir().unwrap();
    let store = ONE.open(dir.path()).await.unwrap();
    let mut batch = appends(1, 1..=2000);
    batch.new_rooms = vec![(1, Arc::from("/"), Arc::from("r"))];
    batch.dedup_put = (1..=2000u64)
        .map(|seq| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&seq.to_be_bytes());
            let record = DedupRecord {
                timestamp_ms: 1_000_000 + seq,
                seqs: vec![(1, seq)],
            };
            (Arc::from("/"), id, record)
        })
        .collect();
    let _ = store.commit(Arc::new(batch)).await.unwrap();
    drop(store);
    let store = ONE.open(dir.path()).await.unwrap();
    let r = store.recover().await.unwrap();
    assert_eq!(r.rooms[0].last_seq, 2000);
    let mut got: Vec<(u64, u64)> = r
        .dedup
        .iter()
        .map(|(_, id, d)| {
            assert_eq!(d.seqs.len(), 1);
            let seq = u64::from_be_bytes(id[8..].try_into().unwrap());
            assert_eq!(d.timestamp_ms, 1_000_000 + seq);
            d.seqs[0]
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=2000).map(|seq| (1, seq)).collect::<Vec<_>>());
}

/// Servers whose `max_payload` leaves no room for a record and its
/// headers are refused at connect, saying which setting to change.
#[tokio::test]
async fn a_record_larger_than_max_payload_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ONE.config(dir.path());
    // The harness's servers accept 2 MB.
    config.jetstream.record_max_bytes = 2 * 1024 * 1024;
    match JetStreamStore::connect(&config).await {
        Err(e) => assert!(e.to_string().contains("max_payload"), "{e}"),
        Ok(_) => panic!("connected with records larger than max_payload"),
    }
}
