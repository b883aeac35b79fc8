//! Codec micro-benchmarks: the per-message framing work on the hot paths.
//!
//! - `publish_frame/encode`: a client encoding one `Publish` request frame.
//! - `publish_frame/decode`: the broker splitting frames off a read buffer
//!   (64 frames per buffer, as a pipelining client sends them) and decoding
//!   each `ClientFrame`; payloads share the buffer, none is copied.
//! - `delivery_frame/encode`: the broker's writer splicing a pre-encoded
//!   message into a `Delivery` frame (`encode_delivery_frame`).
//! - `delivery_frame/decode`: a client decoding one delivery frame.
//!
//! Each at 128 B and 1 KiB of payload. Run with `cargo bench --bench codec`.

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use prost::Message as _;
use roomq_wire::codec::{
    decode_client, decode_server, encode_delivery_frame, encode_frame, DeliveryHead,
};
use roomq_wire::{pb, FrameCodec, DEFAULT_MAX_FRAME};
use tokio_util::codec::Decoder as _;

const SIZES: [usize; 2] = [128, 1024];

/// Frames per read buffer in the decode benchmark.
const FRAMES_PER_READ: usize = 64;

/// A benchmark that cannot set up stops with a message (no unwrap here).
fn or_exit<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("codec bench: {what}: {e}");
            std::process::exit(1)
        }
    }
}

fn publish_frame(size: usize) -> pb::ClientFrame {
    pb::ClientFrame {
        request_id: 123_456,
        body: Some(pb::client_frame::Body::Publish(pb::Publish {
            rooms: vec!["bench-room".into()],
            event: "chat message".into(),
            payload: Bytes::from(vec![0xab; size]),
            dedup_id: Bytes::from_static(&[7; 16]),
            ..Default::default()
        })),
    }
}

/// The wire `Message` as the broker encodes it once at publish time
/// (without its seq).
fn stored_message(size: usize) -> Vec<u8> {
    pb::Message {
        seq: 0,
        event: "chat message".into(),
        payload: Bytes::from(vec![0xab; size]),
        headers: BTreeMap::new(),
        publisher_session: Bytes::from_static(&[9; 16]),
        timestamp_ms: 1_700_000_000_000,
        ..Default::default()
    }
    .encode_to_vec()
}

const HEAD: DeliveryHead<'static> = DeliveryHead {
    room: "bench-room",
    subscription: "",
    attempt: 1,
    redelivered: false,
    volatile: false,
};

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_frame");
    for size in SIZES {
        let frame = publish_frame(size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("encode", size), &frame, |b, f| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                buf.clear();
                or_exit(
                    encode_frame(black_box(f), DEFAULT_MAX_FRAME, &mut buf),
                    "encode",
                );
                black_box(buf.len())
            })
        });

        let mut wire = BytesMut::new();
        for _ in 0..FRAMES_PER_READ {
            or_exit(encode_frame(&frame, DEFAULT_MAX_FRAME, &mut wire), "encode");
        }
        let wire = wire.freeze();
        g.throughput(Throughput::Elements(FRAMES_PER_READ as u64));
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, w| {
            let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
            b.iter_batched(
                || BytesMut::from(w.as_ref()),
                |mut buf| {
                    let mut n = 0usize;
                    while let Some(raw) = or_exit(codec.decode(&mut buf), "split") {
                        let f = or_exit(decode_client(raw), "decode");
                        n += usize::from(f.body.is_some());
                    }
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn delivery(c: &mut Criterion) {
    let mut g = c.benchmark_group("delivery_frame");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let message = stored_message(size);
        g.bench_with_input(BenchmarkId::new("encode", size), &message, |b, m| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut seq = 1_000_000u64;
            b.iter(|| {
                buf.clear();
                seq += 1;
                or_exit(
                    encode_delivery_frame(HEAD, seq, black_box(m), DEFAULT_MAX_FRAME, &mut buf),
                    "encode",
                );
                black_box(buf.len())
            })
        });

        let mut one = BytesMut::new();
        or_exit(
            encode_delivery_frame(HEAD, 42, &message, DEFAULT_MAX_FRAME, &mut one),
            "encode",
        );
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let frame = match or_exit(codec.decode(&mut one), "split") {
            Some(f) => f,
            None => or_exit(Err("incomplete frame"), "split"),
        };
        g.bench_with_input(BenchmarkId::new("decode", size), &frame, |b, f| {
            b.iter(|| {
                let d = or_exit(decode_server(black_box(f.clone())), "decode");
                black_box(d.request_id)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, publish, delivery);
criterion_main!(benches);
