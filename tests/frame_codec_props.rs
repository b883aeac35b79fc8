//! Properties of the frame codec (no network), beyond those beside it in
//! `crates/roomq-wire/src/codec.rs` (arbitrary bytes in arbitrary pieces
//! never panic and never grow the buffer past a frame; mutated frames never
//! panic):
//!
//! - many valid frames, cut anywhere, come back whole, in order, with
//!   nothing left over;
//! - the limit is inclusive for any maximum, and a length over it is
//!   refused before anything is reserved for its body;
//! - a delivery spliced from a pre-encoded message decodes exactly like
//!   the same delivery encoded whole, and is refused exactly when that
//!   would exceed the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use prost::Message as _;
use roomq_wire::codec::{decode_client, decode_server, encode_delivery_frame, DeliveryHead};
use roomq_wire::{pb, FrameCodec, FrameError};
use tokio_util::codec::{Decoder, Encoder};

use pb::client_frame::Body as Req;

fn name() -> impl Strategy<Value = String> {
    ".{0,8}"
}

fn client_frame() -> impl Strategy<Value = pb::ClientFrame> {
    let body = prop_oneof![
        any::<u64>().prop_map(|nonce| Some(Req::Ping(pb::Ping { nonce }))),
        (
            proptest::collection::vec(name(), 0..3),
            name(),
            proptest::collection::vec(any::<u8>(), 0..2000),
            proptest::collection::btree_map(name(), name(), 0..3),
            prop_oneof![Just(0usize), Just(16usize)],
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(rooms, event, payload, headers, dedup, except_self, expected)| {
                    Some(Req::Publish(pb::Publish {
                        rooms,
                        event,
                        payload: Bytes::from(payload),
                        headers,
                        dedup_id: Bytes::from(vec![7u8; dedup]),
                        except_self,
                        expected_last_seq: expected,
                        ..Default::default()
                    }))
                }
            ),
        (
            name(),
            name(),
            proptest::collection::vec(any::<u64>(), 0..5),
            any::<u64>()
        )
            .prop_map(|(room, subscription, seqs, up_to)| Some(Req::Ack(pb::Ack {
                room,
                subscription,
                seqs,
                up_to,
            }))),
        (name(), name(), any::<i32>(), any::<i32>(), any::<u64>()).prop_map(
            |(room, subscription, mode, start, start_seq)| Some(Req::Join(pb::Join {
                room,
                subscription,
                mode,
                start,
                start_seq,
                ..Default::default()
            }))
        ),
        Just(Some(Req::ListRooms(pb::ListRooms {}))),
        // Encodes to nothing at all with request id 0: a zero-length frame.
        Just(None),
    ];
    (prop_oneof![Just(0u64), any::<u64>()], body)
        .prop_map(|(request_id, body)| pb::ClientFrame { request_id, body })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn frames_cut_anywhere_come_back_whole_and_in_order(
        frames in proptest::collection::vec(client_frame(), 0..12),
        cuts in proptest::collection::vec(1usize..300, 1..32),
    ) {
        let mut codec = FrameCodec::new(1 << 20);
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(raw) = codec.decode(&mut buf).unwrap() {
                decoded.push(decode_client(raw).unwrap());
            }
        }
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn the_limit_is_inclusive_and_checked_before_reserving(
        max in 0usize..65_536,
        under in any::<prop::sample::Index>(),
        over in 1u64..=u64::from(u32::MAX),
    ) {
        let mut codec = FrameCodec::new(max);
        // At or under the limit: the whole frame, whatever its bytes.
        let len = under.index(max + 1);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(len).unwrap());
        buf.put_bytes(0xAB, len);
        let frame = codec.decode(&mut buf).unwrap().expect("a whole frame");
        prop_assert_eq!(frame.len(), len);
        prop_assert!(buf.is_empty());

        // A header alone (of a frame that has a body) may reserve room for
        // that body, never more.
        if len > 0 {
            let mut buf = BytesMut::new();
            buf.put_u32(u32::try_from(len).unwrap());
            prop_assert!(codec.decode(&mut buf).unwrap().is_none());
            prop_assert!(buf.capacity() <= 4 + len + 64, "reserved {} for {len}", buf.capacity());
        }

        // Over it: refused at once, and nothing reserved.
        let too_long = u64::try_from(max).unwrap() + over;
        if let Ok(too_long) = u32::try_from(too_long) {
            let mut buf = BytesMut::with_capacity(4);
            buf.put_u32(too_long);
            buf.put_bytes(0xAB, 16);
            let capacity = buf.capacity();
            match codec.decode(&mut buf) {
                Err(FrameError::TooLarge { len, max: m }) => {
                    prop_assert_eq!((len, m), (too_long as usize, max));
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
            prop_assert_eq!(buf.capacity(), capacity);
        }
    }

    #[test]
    fn a_spliced_delivery_is_the_delivery_encoded_whole(
        (room, subscription, event) in (name(), name(), name()),
        attempt in any::<u32>(),
        redelivered in any::<bool>(),
        seq in prop_oneof![Just(0u64), any::<u64>()],
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        headers in proptest::collection::btree_map(name(), name(), 0..3),
        timestamp_ms in any::<u64>(),
        slack in -40i64..40,
    ) {
        let message = pb::Message {
            seq,
            event,
            payload: Bytes::from(payload),
            headers: headers.into_iter().collect::<BTreeMap<_, _>>(),
            publisher_session: Bytes::from_static(&[9; 16]),
            timestamp_ms,
            key: subscription.clone(),
            expires_at_ms: timestamp_ms / 2,
            deliver_at_ms: timestamp_ms / 3,
        };
        let whole = pb::ServerFrame {
            request_id: 0,
            body: Some(pb::server_frame::Body::Delivery(pb::Delivery {
                room: room.clone(),
                subscription: subscription.clone(),
                attempt,
                redelivered,
                message: Some(message.clone()),
                volatile: attempt == 0,
            })),
        };
        // The stored form leaves the seq out; the splice puts it back.
        let stored = pb::Message { seq: 0, ..message }.encode_to_vec();
        let head = DeliveryHead {
            room: &room,
            subscription: &subscription,
            attempt,
            redelivered,
            volatile: attempt == 0,
        };
        // A limit around the frame's size, so both sides of it are tried.
        let max = usize::try_from(
            (i64::try_from(whole.encoded_len()).unwrap() + slack).max(0),
        )
        .unwrap();
        let mut buf = BytesMut::new();
        let spliced = encode_delivery_frame(head, seq, &stored, max, &mut buf);
        prop_assert_eq!(spliced.is_ok(), whole.encoded_len() <= max, "{:?}", spliced);
        if spliced.is_ok() {
            let raw = FrameCodec::new(max).decode(&mut buf).unwrap().expect("a whole frame");
            prop_assert!(buf.is_empty());
            prop_assert_eq!(raw.len(), whole.encoded_len());
            prop_assert_eq!(decode_server(raw).unwrap(), whole);
        } else {
            prop_assert!(buf.is_empty(), "nothing written for a refused frame");
        }
    }
}
