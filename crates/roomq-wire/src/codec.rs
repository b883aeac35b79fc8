//! The frame codec: a 4-byte big-endian length, then that many bytes of one
//! protobuf message.
//!
//! Decoding is two steps, as in mini-redis: [`FrameCodec`] first checks the
//! length prefix against the limit *before* reserving any memory and yields
//! the raw frame bytes; the caller then decodes them with [`decode_client`] or
//! [`decode_server`]. Payloads decoded from the frame share its buffer
//! (`bytes::Bytes`), so no payload is copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use crate::pb;
use crate::LENGTH_PREFIX;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A frame over the limit whose exact length the transport does not
    /// report (a WebSocket message refused from its announced length).
    #[error("frame exceeds the limit of {max} bytes")]
    Oversized { max: usize },
    #[error("frame is not a valid protobuf message: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The transport's own framing was broken (a WebSocket protocol
    /// violation, such as a text message or a stray continuation frame).
    #[error("{0}")]
    Transport(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Length-prefixed framing with a maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame` bytes (prefix
    /// excluded), in both directions.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }

    /// The maximum frame size.
    /// Changes the limit for the frames decoded from now on (the broker
    /// reads the handshake with a small one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let mut prefix_bytes = [0u8; LENGTH_PREFIX];
        prefix_bytes.copy_from_slice(prefix);
        // u32 always fits in usize on the 32- and 64-bit targets we build for.
        let len = u32::from_be_bytes(prefix_bytes) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        // Cannot overflow: len <= max_frame, which is far below usize::MAX.
        let total = LENGTH_PREFIX + len;
        if src.len() < total {
            // Safe to reserve: the length was checked against the limit above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl<M: prost::Message> Encoder<&M> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(item, self.max_frame, dst)
    }
}

/// Appends `msg` as one frame to `dst`, refusing it if it exceeds `max_frame`.
pub fn encode_frame<M: prost::Message>(
    msg: &M,
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    dst.reserve(LENGTH_PREFIX + len);
    dst.put_u32(frame_len_u32(len));
    msg.encode_raw(dst);
    Ok(())
}

fn frame_len_u32(len: usize) -> u32 {
    // Every caller has checked `len` against a max_frame that is a u32.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Decodes a client frame's bytes.
pub fn decode_client(frame: Bytes) -> Result<pb::ClientFrame, FrameError> {
    Ok(pb::ClientFrame::decode(frame)?)
}

/// Decodes a server frame's bytes.
pub fn decode_server(frame: Bytes) -> Result<pb::ServerFrame, FrameError> {
    Ok(pb::ServerFrame::decode(frame)?)
}

/// The fields of a [`pb::Delivery`] other than the message itself.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryHead<'a> {
    pub room: &'a str,
    pub subscription: &'a str,
    pub attempt: u32,
    pub redelivered: bool,
    /// A volatile message (seq 0, never stored).
    pub volatile: bool,
}

/// Appends a `ServerFrame { delivery }` frame to `dst`, splicing in a
/// [`pb::Message`] that was encoded once, *without* its `seq`, when it was
/// published. The result is byte-for-byte a valid `ServerFrame`: protobuf
/// allows a message's fields in any order, so `seq` is written first and the
/// pre-encoded fields follow. Broadcasting one message to many members (or
/// storing it in several rooms) therefore never re-encodes it.
pub fn encode_delivery_frame(
    head: DeliveryHead<'_>,
    seq: u64,
    message: &[u8],
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    const DELIVERY_FIELD: u32 = 9; // ServerFrame.delivery
    const MESSAGE_FIELD: u32 = 5; // Delivery.message
    let head_msg = pb::Delivery {
        room: head.room.to_string(),
        subscription: head.subscription.to_string(),
        attempt: head.attempt,
        redelivered: head.redelivered,
        message: None,
        volatile: head.volatile,
    };
    const SEQ_FIELD: u32 = 1; // Message.seq
    let seq_len = if seq == 0 {
        0
    } else {
        key_len(SEQ_FIELD) + encoded_len_varint(seq)
    };
    let message_len = seq_len + message.len();
    let delivery_len = head_msg.encoded_len()
        + key_len(MESSAGE_FIELD)
        + encoded_len_varint(message_len as u64)
        + message_len;
    let frame_len =
        key_len(DELIVERY_FIELD) + encoded_len_varint(delivery_len as u64) + delivery_len;
    if frame_len > max_frame {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: max_frame,
        });
    }
    dst.reserve(LENGTH_PREFIX + frame_len);
    dst.put_u32(frame_len_u32(frame_len));
    encode_key(DELIVERY_FIELD, WireType::LengthDelimited, dst);
    encode_varint(delivery_len as u64, dst);
    head_msg.encode_raw(dst);
    encode_key(MESSAGE_FIELD, WireType::LengthDelimited, dst);
    encode_varint(message_len as u64, dst);
    if seq != 0 {
        encode_key(SEQ_FIELD, WireType::Varint, dst);
        encode_varint(seq, dst);
    }
    dst.put_slice(message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample_message() -> pb::Message {
        let mut headers = BTreeMap::new();
        headers.insert("k".to_string(), "v".to_string());
        pb::Message {
            seq: 42,
            event: "chat message".into(),
            payload: Bytes::from_static(b"hello"),
            headers,
            publisher_session: Bytes::from_static(&[7; 16]),
            timestamp_ms: 1_700_000_000_000,
            key: "k1".into(),
            expires_at_ms: 1_700_000_060_000,
            deliver_at_ms: 1_700_000_001_000,
        }
    }

    #[test]
    fn round_trip_every_client_frame() {
        use pb::client_frame::Body;
        let bodies = vec![
            Body::Handshake(pb::Handshake {
                protocol_version: 1,
                namespace: "/orders".into(),
                token: "t".into(),
                client_id: "c".into(),
                client_name: "n".into(),
            }),
            Body::Join(pb::Join {
                room: "r".into(),
                subscription: "s".into(),
                mode: pb::MemberMode::Durable as i32,
                start: pb::StartPosition::Seq as i32,
                start_seq: 9,
                max_in_flight: 3,
                ack_timeout_ms: 100,
                group: "g".into(),
                group_mode: pb::GroupMode::Exclusive as i32,
                backoff_ms: vec![10, 100],
                max_deliveries: Some(0),
                events: vec!["chat*".into()],
                presence: true,
                start_time_ms: 5,
            }),
            Body::Leave(pb::Leave {
                room: "r".into(),
                subscription: String::new(),
                forget: true,
            }),
            Body::Publish(pb::Publish {
                rooms: vec!["a".into(), "b".into()],
                event: "e".into(),
                payload: Bytes::from_static(b"xyz"),
                headers: BTreeMap::new(),
                dedup_id: Bytes::from_static(&[1; 16]),
                except_self: true,
                expected_last_seq: Some(0),
                key: "k".into(),
                ttl_ms: 1000,
                deliver_at_ms: 0,
                delay_ms: 50,
                volatile: false,
                except_rooms: vec!["c".into()],
                except_sessions: vec![Bytes::from_static(&[2; 16])],
            }),
            Body::Ack(pb::Ack {
                room: "r".into(),
                subscription: String::new(),
                seqs: vec![1, 2],
                up_to: 5,
            }),
            Body::Nack(pb::Nack {
                room: "r".into(),
                subscription: String::new(),
                seqs: vec![3],
                delay_ms: 10,
                reason: "busy".into(),
            }),
            Body::Ping(pb::Ping { nonce: 77 }),
            Body::InProgress(pb::InProgress {
                room: "r".into(),
                subscription: "s".into(),
                seqs: vec![4, 5],
            }),
            Body::ListRooms(pb::ListRooms {}),
            Body::Admin(pb::Admin {
                op: Some(pb::admin::Op::Stats(pb::AdminStats {
                    max_rooms: 20,
                    order: pb::StatsOrder::PublishRate as i32,
                })),
            }),
        ];
        let mut codec = FrameCodec::new(1024);
        for (i, body) in bodies.into_iter().enumerate() {
            let frame = pb::ClientFrame {
                request_id: i as u64 + 1,
                body: Some(body),
            };
            let mut buf = BytesMut::new();
            codec.encode(&frame, &mut buf).unwrap();
            let raw = codec.decode(&mut buf).unwrap().unwrap();
            assert!(buf.is_empty());
            assert_eq!(decode_client(raw).unwrap(), frame);
        }
    }

    #[test]
    fn round_trip_admin_stats_reply() {
        let stats = pb::BrokerStats {
            time_ms: 1_700_000_000_000,
            uptime_ms: 5_000,
            connections_tcp: 3,
            connections_ws: 1,
            storage_bytes: 1 << 20,
            rooms_total: 2,
            namespaces: vec![pb::NamespaceStats {
                name: "/".into(),
                sessions: 4,
                rooms: 2,
                members: 3,
                published: 100,
                stored_bytes: 12_800,
                duplicates: 1,
                deliveries: 90,
                redeliveries: 5,
                acks: 80,
                nacks: 2,
                dead_lettered: 1,
                expired: 0,
            }],
            rooms: vec![pb::RoomStats {
                namespace: "/".into(),
                name: "orders".into(),
                last_seq: 100,
                publish_rate: 12.5,
                backlog: 10,
                members: 2,
                connected_members: 1,
                redeliveries: 5,
                dead_lettered: 1,
            }],
            commit_flush_seconds: Some(pb::HistogramSummary {
                count: 7,
                sum: 0.25,
            }),
            commit_batch_messages: None,
            publish_confirm_seconds: None,
            delivery_lag_seconds: None,
            errors: 1,
            handshakes_refused: 2,
            slow_consumer_disconnects: 0,
            quota_refusals: 3,
            dedup_ids: 1_200_000,
            dedup_evicted: 4,
        };
        let frame = pb::ServerFrame {
            request_id: 9,
            body: Some(pb::server_frame::Body::AdminOk(pb::AdminOk {
                stats: Some(stats),
                ..pb::AdminOk::default()
            })),
        };
        let mut codec = FrameCodec::new(4096);
        let mut buf = BytesMut::new();
        codec.encode(&frame, &mut buf).unwrap();
        let raw = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_server(raw).unwrap(), frame);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = FrameCodec::new(1024);
        let frame = pb::ClientFrame {
            request_id: 5,
            body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce: 1 })),
        };
        let mut whole = BytesMut::new();
        codec.encode(&frame, &mut whole).unwrap();
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let out = codec.decode(&mut buf).unwrap();
            assert_eq!(out.is_some(), i + 1 == whole.len());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reserving() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        let cap_before = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 0xFFFF_FFFF,
                max: 1024
            })
        ));
        assert_eq!(buf.capacity(), cap_before);
        let mut buf = BytesMut::from(&1025u32.to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&1024u32.to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let garbage = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        assert!(matches!(
            decode_client(garbage),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn spliced_delivery_decodes_as_a_normal_frame() {
        let msg = sample_message();
        let without_seq = pb::Message {
            seq: 0,
            ..msg.clone()
        };
        let encoded = without_seq.encode_to_vec();
        let mut buf = BytesMut::new();
        let head = DeliveryHead {
            room: "general",
            subscription: "alice",
            attempt: 2,
            redelivered: true,
            volatile: false,
        };
        encode_delivery_frame(head, 42, &encoded, 1 << 20, &mut buf).unwrap();
        let mut codec = FrameCodec::new(1 << 20);
        let raw = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let frame = decode_server(raw).unwrap();
        let expected = pb::ServerFrame {
            request_id: 0,
            body: Some(pb::server_frame::Body::Delivery(pb::Delivery {
                room: "general".into(),
                subscription: "alice".into(),
                attempt: 2,
                redelivered: true,
                message: Some(msg),
                volatile: false,
            })),
        };
        assert_eq!(frame, expected);
        let mut small = BytesMut::new();
        assert!(encode_delivery_frame(head, 42, &encoded, 10, &mut small).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Arbitrary bytes, fed in arbitrary pieces, never panic the
            /// decoder, and it never holds more than one frame's worth.
            #[test]
            fn any_bytes_in_any_pieces(
                bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                cut in 1usize..64,
            ) {
                let mut codec = FrameCodec::new(1024);
                let mut buf = BytesMut::new();
                for piece in bytes.chunks(cut) {
                    buf.extend_from_slice(piece);
                    loop {
                        match codec.decode(&mut buf) {
                            Ok(Some(frame)) => {
                                prop_assert!(frame.len() <= 1024);
                                let _ = decode_client(frame);
                            }
                            Ok(None) => break,
                            Err(FrameError::TooLarge { len, max }) => {
                                prop_assert!(len > max);
                                return Ok(());
                            }
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    prop_assert!(buf.capacity() <= 4 * 1024 + 1024 + 64);
                }
            }

            /// Valid frames with bytes flipped decode to a frame or an
            /// error, never a panic.
            #[test]
            fn mutated_valid_frames(
                payload in proptest::collection::vec(any::<u8>(), 0..256),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            ) {
                let frame = pb::ClientFrame {
                    request_id: 9,
                    body: Some(pb::client_frame::Body::Publish(pb::Publish {
                        rooms: vec!["room".into()],
                        event: "event".into(),
                        payload: Bytes::from(payload),
                        ..Default::default()
                    })),
                };
                let mut raw = frame.encode_to_vec();
                for (at, x) in flips {
                    if !raw.is_empty() {
                        let i = at % raw.len();
                        raw[i] ^= x;
                    }
                }
                let _ = decode_client(Bytes::from(raw));
            }
        }
    }
}
