//! Storage micro-benchmarks: the sled store's append and read paths.
//!
//! - `commit/{size}/{n}`: `SledStore::commit` of a `WriteBatch` holding `n`
//!   consecutive messages of one room, flush included (the broker's group
//!   commit; one commit per batch of publishes). Throughput is messages.
//! - `read/{size}`: `SledStore::read` of 256 messages from a room holding
//!   100,000, walking the log front to back (a member replaying a backlog).
//!
//! Messages are the wire `Message` encodings the broker stores (payload of
//! `size` bytes plus about 40 bytes of fields). Each benchmark writes to its
//! own temporary directory. Run with `cargo bench --bench storage`; the
//! commit figures depend on the disk's flush latency.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use prost::Message as _;
use roomq::storage::{BlockingStore, SledStore, StoredMessage, WriteBatch};
use roomq_wire::pb;

const SIZES: [usize; 2] = [128, 1024];
const BATCHES: [usize; 3] = [1, 64, 512];
const ROOM: u64 = 1;
/// Messages in the room the read benchmark walks.
const READ_LOG: u64 = 100_000;
const READ_BATCH: usize = 256;
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A benchmark that cannot set up stops with a message (no unwrap here).
fn or_exit<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("storage bench: {what}: {e}");
            std::process::exit(1)
        }
    }
}

fn encoded(size: usize) -> Bytes {
    Bytes::from(
        pb::Message {
            seq: 0,
            event: "chat message".into(),
            payload: Bytes::from(vec![0x5a; size]),
            headers: Default::default(),
            publisher_session: Bytes::from_static(&[3; 16]),
            timestamp_ms: 1_700_000_000_000,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// `n` messages of `ROOM` from `first`, sharing one encoding.
fn batch(first: u64, n: usize, body: &Bytes) -> WriteBatch {
    let msgs = (first..first + n as u64)
        .map(|seq| Arc::new(StoredMessage::new(seq, body.clone())))
        .collect();
    WriteBatch {
        appends: vec![(ROOM, msgs)],
        ..Default::default()
    }
}

fn open(dir: &tempfile::TempDir) -> SledStore {
    or_exit(SledStore::open(dir.path(), CACHE_BYTES), "open the store")
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for size in SIZES {
        let body = encoded(size);
        for n in BATCHES {
            let dir = or_exit(tempfile::tempdir(), "tempdir");
            let store = open(&dir);
            let mut next = 1u64;
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(format!("{size}B"), n), |b| {
                b.iter_batched(
                    || {
                        let w = batch(next, n, &body);
                        next += n as u64;
                        w
                    },
                    |w| {
                        let _flushed = black_box(or_exit(store.commit(&w), "commit"));
                        w
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(READ_BATCH as u64));
    for size in SIZES {
        let body = encoded(size);
        let dir = or_exit(tempfile::tempdir(), "tempdir");
        let store = open(&dir);
        // Written in commits of 256, as the broker would under load.
        let mut first = 1u64;
        while first <= READ_LOG {
            let n = 256.min(READ_LOG + 1 - first) as usize;
            let _ = or_exit(store.commit(&batch(first, n, &body)), "prefill");
            first += n as u64;
        }
        let mut from = 1u64;
        g.bench_function(BenchmarkId::new("from_store", format!("{size}B")), |b| {
            b.iter(|| {
                let got = or_exit(store.read(ROOM, from, READ_BATCH, 4 * 1024 * 1024), "read");
                from = match got.last() {
                    Some(m) if m.seq < READ_LOG => m.seq + 1,
                    _ => 1,
                };
                black_box(got.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commit, read);
criterion_main!(benches);
