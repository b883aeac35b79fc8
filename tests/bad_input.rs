//! The bad-input corpus (G6): every hostile input gets its documented error
//! code, or a close, within a second; a client that was already connected
//! keeps publishing and receiving after every case; and running the whole
//! corpus again and again does not grow the process's memory.
//!
//! `raw_protocol.rs` already covers the basic framing refusals (0xFFFFFFFF
//! and max+1 before the handshake, max+1 after it, HTTP and non-protobuf
//! bytes, a first frame that is not a handshake, half a frame then EOF, a
//! second handshake, a header then silence before the handshake); this file
//! covers the rest of the corpus and does not repeat those.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{error_of, frame, framed, handshake, request, rss_bytes, FrameReader};
use common::*;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;
use roomq_client::{proto as pb, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use pb::client_frame::Body as Req;
use pb::server_frame::Body as Rep;

/// How long a bad input may take to be answered.
const ANSWER: Duration = Duration::from_secs(1);
/// Request id of the ping sent behind a case to prove the session is open.
const SENTINEL: u64 = 0xC0FFEE;
/// A room the corpus joins but nobody publishes to.
const QUIET: &str = "bi-quiet";
/// A room holding exactly three messages, published before the corpus runs.
const LOG: &str = "bi-log";
/// A room no case joins.
const NONE: &str = "bi-none";
/// The room of the client that must keep working.
const HEALTH: &str = "bi-health";
/// `max_memberships_per_session` for the corpus broker.
const MAX_MEMBERSHIPS: u32 = 8;

/// What a request must be answered with.
#[derive(Clone, Copy)]
enum Reply {
    /// A success body that passes the check.
    Ok(&'static str, fn(&Rep) -> bool),
    /// A non-fatal error with this code.
    Err(ErrorCode),
}

/// How the connection must end up.
#[derive(Clone, Copy, PartialEq, Debug)]
enum End {
    /// Still open: a ping sent behind the case is answered.
    Open,
    /// A fatal error with request id 0, then the broker closes.
    Fatal(ErrorCode),
    /// Either served (every reply arrives) or this fatal error and a close:
    /// for inputs where both are acceptable, never anything else.
    OpenOrFatal(ErrorCode),
    /// We close our side in the middle of a frame: the broker closes too,
    /// without a frame.
    Quiet,
}

struct Case {
    name: String,
    /// Sent behind a good handshake (request id 1), or as the first bytes.
    after_handshake: bool,
    bytes: Vec<u8>,
    /// Replies expected, by request id (0 for an error about a frame that
    /// carried no request id).
    replies: Vec<(u64, Reply)>,
    end: End,
    /// Some expected reply waits for a disk flush: allow more than
    /// [`ANSWER`], since a flush is not an answer to bad input.
    flush: bool,
}

/// A case sent as the first bytes of a connection.
fn pre(name: impl Into<String>, bytes: Vec<u8>, end: End) -> Case {
    case(name, false, bytes, end)
}

/// A case sent behind a good handshake.
fn post(name: impl Into<String>, bytes: Vec<u8>, end: End) -> Case {
    case(name, true, bytes, end)
}

fn case(name: impl Into<String>, after_handshake: bool, bytes: Vec<u8>, end: End) -> Case {
    Case {
        name: name.into(),
        after_handshake,
        bytes,
        replies: Vec::new(),
        end,
        flush: false,
    }
}

impl Case {
    fn reply(mut self, id: u64, r: Reply) -> Case {
        self.replies.push((id, r));
        self
    }
    fn flushed(mut self) -> Case {
        self.flush = true;
        self
    }
}

// ---- success checks -------------------------------------------------------

fn is_handshake_ok(b: &Rep) -> bool {
    matches!(b, Rep::HandshakeOk(_))
}
fn is_pong(b: &Rep) -> bool {
    matches!(b, Rep::Pong(_))
}
fn is_publish_ok(b: &Rep) -> bool {
    matches!(b, Rep::PublishOk(ok) if !ok.seqs.is_empty() && ok.seqs.iter().all(|s| s.seq > 0))
}
fn is_join_ok(b: &Rep) -> bool {
    matches!(b, Rep::JoinOk(_))
}
fn is_leave_ok(b: &Rep) -> bool {
    matches!(b, Rep::LeaveOk(_))
}
fn is_list_rooms_ok(b: &Rep) -> bool {
    matches!(b, Rep::ListRoomsOk(_))
}
/// The listing of namespace `/`, where the healthy client's room lives.
fn lists_the_health_room(b: &Rep) -> bool {
    matches!(b, Rep::ListRoomsOk(ok) if ok.rooms.iter().any(|r| r.name == HEALTH))
}
/// An ack of seq 1 of [`LOG`] while seq 2 is still unacknowledged.
fn cursor_at_two(b: &Rep) -> bool {
    matches!(b, Rep::AckOk(ok) if ok.next_seq == 2)
}

/// A join of [`LOG`] (three messages) from a seq past its end.
fn joined_at_the_end(b: &Rep) -> bool {
    matches!(b, Rep::JoinOk(ok) if ok.next_seq == 4 && ok.last_seq == 3)
}
fn pong_max(b: &Rep) -> bool {
    matches!(b, Rep::Pong(p) if p.nonce == u64::MAX)
}
fn is_nack_ok(b: &Rep) -> bool {
    matches!(b, Rep::NackOk(_))
}
fn is_in_progress_ok(b: &Rep) -> bool {
    matches!(b, Rep::InProgressOk(_))
}

const OK_NACK: Reply = Reply::Ok("NackOk", is_nack_ok);
const OK_IN_PROGRESS: Reply = Reply::Ok("InProgressOk", is_in_progress_ok);
const OK_HANDSHAKE: Reply = Reply::Ok("HandshakeOk", is_handshake_ok);
const OK_PONG: Reply = Reply::Ok("Pong", is_pong);
const OK_PUBLISH: Reply = Reply::Ok("PublishOk", is_publish_ok);
const OK_JOIN: Reply = Reply::Ok("JoinOk", is_join_ok);
const OK_LEAVE: Reply = Reply::Ok("LeaveOk", is_leave_ok);
const OK_LIST: Reply = Reply::Ok("ListRoomsOk", is_list_rooms_ok);

// ---- hand-made protobuf ---------------------------------------------------

fn key(field: u32, wt: WireType) -> Vec<u8> {
    let mut v = Vec::new();
    encode_key(field, wt, &mut v);
    v
}

/// A length-delimited field.
fn len_field(field: u32, body: &[u8]) -> Vec<u8> {
    let mut v = key(field, WireType::LengthDelimited);
    encode_varint(body.len() as u64, &mut v);
    v.extend_from_slice(body);
    v
}

/// A varint field.
fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut v = key(field, WireType::Varint);
    encode_varint(value, &mut v);
    v
}

/// A `ClientFrame` built by hand: the request id, then `body` as the
/// length-delimited field `field` (2 = handshake ... 10 = list_rooms).
fn envelope(request_id: u64, field: u32, body: &[u8]) -> Vec<u8> {
    let mut v = varint_field(1, request_id);
    v.extend(len_field(field, body));
    v
}

/// Unknown fields of every wire type, numbered where no message has fields.
fn unknown_fields() -> Vec<u8> {
    let mut v = varint_field(1001, 42);
    v.extend(key(1002, WireType::SixtyFourBit));
    v.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    v.extend(key(1003, WireType::ThirtyTwoBit));
    v.extend([1, 2, 3, 4]);
    v.extend(len_field(1004, b"future stuff"));
    v.extend(key(1005, WireType::StartGroup));
    v.extend(varint_field(1, 7));
    v.extend(key(1005, WireType::EndGroup));
    v
}

/// `depth` unknown groups, each inside the previous one.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth {
        v.extend(key(1010, WireType::StartGroup));
    }
    for _ in 0..depth {
        v.extend(key(1010, WireType::EndGroup));
    }
    v
}

/// `depth` unknown length-delimited fields, each inside the previous one.
fn nested_lengths(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth {
        v = len_field(1011, &v);
    }
    v
}

/// Marks a string field that [`break_utf8`] turns into invalid UTF-8.
const MARK: &str = "ZZBADZZ";

/// Replaces [`MARK`] in an encoded message with as many bytes that are not
/// UTF-8 (an overlong NUL and a UTF-16 surrogate), so every length stays
/// right and only the string's contents are wrong.
fn break_utf8(mut encoded: Vec<u8>) -> Vec<u8> {
    let bad = [b'a', 0xC0, 0x80, b'b', 0xED, 0xA0, 0x80];
    assert_eq!(bad.len(), MARK.len());
    let at = encoded
        .windows(MARK.len())
        .position(|w| w == MARK.as_bytes())
        .expect("the marker is in the message");
    encoded[at..at + MARK.len()].copy_from_slice(&bad);
    encoded
}

// ---- requests -------------------------------------------------------------

fn req(id: u64, body: Req) -> Vec<u8> {
    frame(&request(id, body))
}

fn ping(id: u64) -> Vec<u8> {
    req(id, Req::Ping(pb::Ping { nonce: id }))
}

fn publish(rooms: &[&str], event: &str) -> pb::Publish {
    pb::Publish {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        event: event.into(),
        payload: Bytes::from_static(b"payload"),
        ..Default::default()
    }
}

fn with_headers(n: usize) -> pb::Publish {
    let headers: BTreeMap<String, String> =
        (0..n).map(|i| (format!("h{i}"), "v".to_string())).collect();
    pb::Publish {
        headers,
        ..publish(&["bi-headers"], "e")
    }
}

/// An ephemeral join (no client id, no subscription name needed).
fn join_eph(id: u64, room: &str, label: &str, start: pb::StartPosition) -> Vec<u8> {
    req(
        id,
        Req::Join(pb::Join {
            room: room.into(),
            subscription: label.into(),
            mode: pb::MemberMode::Ephemeral as i32,
            start: start as i32,
            ack_timeout_ms: 3_600_000,
            ..Default::default()
        }),
    )
}

fn ack(id: u64, room: &str, label: &str, seqs: Vec<u64>, up_to: u64) -> Vec<u8> {
    req(
        id,
        Req::Ack(pb::Ack {
            room: room.into(),
            subscription: label.into(),
            seqs,
            up_to,
        }),
    )
}

fn nack(id: u64, room: &str, label: &str, seqs: Vec<u64>) -> Vec<u8> {
    req(
        id,
        Req::Nack(pb::Nack {
            room: room.into(),
            subscription: label.into(),
            seqs,
            delay_ms: 0,
            reason: String::new(),
        }),
    )
}

fn in_progress(id: u64, room: &str, label: &str, seqs: Vec<u64>) -> Vec<u8> {
    req(
        id,
        Req::InProgress(pb::InProgress {
            room: room.into(),
            subscription: label.into(),
            seqs,
        }),
    )
}

fn leave(id: u64, room: &str, label: &str) -> Vec<u8> {
    req(
        id,
        Req::Leave(pb::Leave {
            room: room.into(),
            subscription: label.into(),
            forget: false,
        }),
    )
}

fn handshake_with(h: pb::Handshake) -> Vec<u8> {
    req(
        1,
        Req::Handshake(pb::Handshake {
            protocol_version: 1,
            ..h
        }),
    )
}

/// A publish frame whose encoding is exactly `max` bytes long.
fn publish_of_exactly(max: usize) -> Vec<u8> {
    let mut size = max - 64;
    for _ in 0..8 {
        let f = request(
            7,
            Req::Publish(pb::Publish {
                payload: Bytes::from(vec![b'x'; size]),
                ..publish(&["bi-big"], "e")
            }),
        );
        let len = f.encoded_len();
        if len == max {
            return frame(&f);
        }
        size = (size + max).checked_sub(len).expect("a sane frame size");
    }
    panic!("no payload size gives a frame of exactly {max} bytes");
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---- the corpus -----------------------------------------------------------

fn corpus(max_frame: usize) -> Vec<Case> {
    use pb::StartPosition::{Earliest, New};
    use End::{Fatal, Open, OpenOrFatal, Quiet};
    use ErrorCode as C;
    let max_handshake = roomq::config::Limits::default().max_handshake_bytes as usize;
    let err = Reply::Err;
    let e_acute_128 = "é".repeat(128); // 128 characters, 256 bytes
    let e_acute_255 = format!("{}x", "é".repeat(127)); // 255 bytes
    let long = "x".repeat(256);
    let mut v = vec![
        // -- framing --
        post(
            "a zero-length frame after the handshake",
            vec![0, 0, 0, 0],
            Open,
        )
        .reply(0, err(C::InvalidRequest)),
        pre(
            "a one-byte frame (a cut varint) before the handshake",
            framed(&[0x08]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a one-byte frame (field number 0) after the handshake",
            framed(&[0x00]),
            Fatal(C::MalformedFrame),
        ),
        pre(
            "a frame of exactly max_handshake_bytes of garbage before the handshake",
            framed(&vec![0xFF; max_handshake]),
            Fatal(C::MalformedFrame),
        ),
        pre(
            "a frame over max_handshake_bytes before the handshake: refused unread",
            framed(&vec![0xFF; max_handshake + 1]),
            Fatal(C::FrameTooLarge),
        ),
        pre(
            "a frame of exactly max_frame_bytes before the handshake: refused unread",
            framed(&vec![0xFF; max_frame]),
            Fatal(C::FrameTooLarge),
        ),
        post(
            "a frame of exactly max_frame_bytes of garbage after the handshake",
            framed(&vec![0xFF; max_frame]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a publish frame of exactly max_frame_bytes: read, then MESSAGE_TOO_LARGE",
            publish_of_exactly(max_frame),
            Open,
        )
        .reply(7, err(C::MessageTooLarge)),
        post(
            "a length of 0xFFFFFFFF after the handshake",
            vec![0xFF; 4],
            Fatal(C::FrameTooLarge),
        ),
        pre(
            "half a length prefix, then EOF, before the handshake",
            vec![0, 0],
            Quiet,
        ),
        post(
            "three bytes of a length prefix, then EOF, after the handshake",
            vec![0, 0, 0],
            Quiet,
        ),
        // -- protobuf that does not parse --
        pre(
            "wire type 7 before the handshake",
            framed(&[0x0F]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a length-delimited field longer than its frame",
            framed(&[0x12, 0x7F, 0x01]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a group that is never closed",
            framed(&[0x0B, 0x08, 0x01]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a group end without a start",
            framed(&[0x0C]),
            Fatal(C::MalformedFrame),
        ),
        post(
            "an eleven-byte varint",
            framed(&cat(&[vec![0x08], vec![0xFF; 10], vec![0x01]])),
            Fatal(C::MalformedFrame),
        ),
        post(
            "the request id sent as a string",
            framed(&len_field(1, b"seven")),
            Fatal(C::MalformedFrame),
        ),
        post(
            "the ping body sent as a varint",
            framed(&varint_field(8, 1)),
            Fatal(C::MalformedFrame),
        ),
        post(
            "a publish whose room string runs past the publish",
            framed(&envelope(7, 5, &[0x0A, 0x05, b'a'])),
            Fatal(C::MalformedFrame),
        ),
        // -- deep nesting --
        post(
            "5,000 nested unknown groups inside a ping",
            framed(&envelope(
                7,
                8,
                &cat(&[pb::Ping { nonce: 7 }.encode_to_vec(), nested_groups(5000)]),
            )),
            OpenOrFatal(C::MalformedFrame),
        )
        .reply(7, OK_PONG),
        post(
            "5,000 nested unknown groups in the envelope of a ping",
            framed(&cat(&[
                pb::ClientFrame {
                    request_id: 7,
                    body: Some(Req::Ping(pb::Ping { nonce: 7 })),
                }
                .encode_to_vec(),
                nested_groups(5000),
            ])),
            OpenOrFatal(C::MalformedFrame),
        )
        .reply(7, OK_PONG),
        pre(
            "1,000 nested unknown groups inside the handshake",
            framed(&envelope(
                1,
                2,
                &cat(&[
                    pb::Handshake {
                        protocol_version: 1,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                    nested_groups(1000),
                ]),
            )),
            OpenOrFatal(C::MalformedFrame),
        )
        .reply(1, OK_HANDSHAKE),
        post(
            "20 nested unknown groups are skipped like any unknown field",
            framed(&envelope(
                7,
                8,
                &cat(&[pb::Ping { nonce: 7 }.encode_to_vec(), nested_groups(20)]),
            )),
            Open,
        )
        .reply(7, OK_PONG),
        post(
            "1,000 nested unknown length-delimited fields inside a publish",
            framed(&envelope(
                7,
                5,
                &cat(&[
                    publish(&["bi-unknown"], "e").encode_to_vec(),
                    nested_lengths(1000),
                ]),
            )),
            Open,
        )
        .reply(7, OK_PUBLISH)
        .flushed(),
        // -- unknown fields are ignored --
        pre(
            "a handshake with unknown fields of every wire type",
            framed(&cat(&[
                unknown_fields(),
                envelope(
                    1,
                    2,
                    &cat(&[
                        pb::Handshake {
                            protocol_version: 1,
                            namespace: "/".into(),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                        unknown_fields(),
                    ]),
                ),
                unknown_fields(),
            ])),
            Open,
        )
        .reply(1, OK_HANDSHAKE),
        post(
            "a publish with unknown fields",
            framed(&cat(&[
                envelope(
                    7,
                    5,
                    &cat(&[
                        publish(&["bi-unknown"], "e").encode_to_vec(),
                        unknown_fields(),
                    ]),
                ),
                unknown_fields(),
            ])),
            Open,
        )
        .reply(7, OK_PUBLISH)
        .flushed(),
        post(
            "a join, a list of rooms and a leave with unknown fields",
            cat(&[
                framed(&envelope(
                    7,
                    3,
                    &cat(&[
                        pb::Join {
                            room: "bi-unknown".into(),
                            mode: pb::MemberMode::Ephemeral as i32,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                        unknown_fields(),
                    ]),
                )),
                framed(&envelope(8, 10, &unknown_fields())),
                framed(&cat(&[
                    envelope(
                        9,
                        4,
                        &cat(&[
                            pb::Leave {
                                room: "bi-unknown".into(),
                                ..Default::default()
                            }
                            .encode_to_vec(),
                            unknown_fields(),
                        ]),
                    ),
                    unknown_fields(),
                ])),
            ]),
            Open,
        )
        .reply(7, OK_JOIN)
        .reply(8, OK_LIST)
        .reply(9, OK_LEAVE),
        post(
            "a frame whose only body is one this broker does not know",
            cat(&[
                framed(&envelope(7, 99, b"")),
                framed(&cat(&[varint_field(1, 8), unknown_fields()])),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, err(C::InvalidRequest)),
        post(
            "a join with unknown enum values",
            cat(&[
                req(
                    7,
                    Req::Join(pb::Join {
                        room: QUIET.into(),
                        mode: 9,
                        ..Default::default()
                    }),
                ),
                req(
                    8,
                    Req::Join(pb::Join {
                        room: QUIET.into(),
                        start: 17,
                        ..Default::default()
                    }),
                ),
                req(
                    9,
                    Req::Join(pb::Join {
                        room: QUIET.into(),
                        mode: -1,
                        ..Default::default()
                    }),
                ),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, err(C::InvalidRequest))
        .reply(9, err(C::InvalidRequest)),
        post("a request id of u64::MAX is echoed", ping(u64::MAX), Open).reply(u64::MAX, OK_PONG),
        // -- invalid UTF-8 in a string --
        pre(
            "invalid UTF-8 in the handshake's namespace",
            framed(&break_utf8(
                handshake(1, &format!("/{MARK}"), "").encode_to_vec(),
            )),
            Fatal(C::MalformedFrame),
        ),
        pre(
            "invalid UTF-8 in the handshake's client id",
            framed(&break_utf8(handshake(1, "/", MARK).encode_to_vec())),
            Fatal(C::MalformedFrame),
        ),
    ];
    let utf8_requests: Vec<(&str, Req)> = vec![
        ("a publish's room", Req::Publish(publish(&[MARK], "e"))),
        (
            "a publish's event",
            Req::Publish(publish(&["bi-utf8"], MARK)),
        ),
        (
            "a header name",
            Req::Publish(pb::Publish {
                headers: [(MARK.to_string(), "v".to_string())].into(),
                ..publish(&["bi-utf8"], "e")
            }),
        ),
        (
            "a header value",
            Req::Publish(pb::Publish {
                headers: [("k".to_string(), MARK.to_string())].into(),
                ..publish(&["bi-utf8"], "e")
            }),
        ),
        (
            "a join's room",
            Req::Join(pb::Join {
                room: MARK.into(),
                ..Default::default()
            }),
        ),
        (
            "a join's subscription",
            Req::Join(pb::Join {
                room: "bi-utf8".into(),
                subscription: MARK.into(),
                ..Default::default()
            }),
        ),
        (
            "an ack's room",
            Req::Ack(pb::Ack {
                room: MARK.into(),
                seqs: vec![1],
                ..Default::default()
            }),
        ),
        (
            "a leave's room",
            Req::Leave(pb::Leave {
                room: MARK.into(),
                ..Default::default()
            }),
        ),
    ];
    for (what, body) in utf8_requests {
        v.push(post(
            format!("invalid UTF-8 in {what}"),
            framed(&break_utf8(request(7, body).encode_to_vec())),
            Fatal(C::MalformedFrame),
        ));
    }
    // -- names in the handshake: refused, and fatal there --
    let bad_handshakes = [
        (
            "a namespace of 256 bytes",
            pb::Handshake {
                namespace: format!("/{}", "n".repeat(255)),
                ..Default::default()
            },
        ),
        (
            "a client id with a NUL",
            pb::Handshake {
                client_id: "a\0b".into(),
                ..Default::default()
            },
        ),
        (
            "a client id of 128 characters but 256 bytes",
            pb::Handshake {
                client_id: e_acute_128.clone(),
                ..Default::default()
            },
        ),
        (
            "a client name with an escape character",
            pb::Handshake {
                client_name: "name\u{1b}[31m".into(),
                ..Default::default()
            },
        ),
    ];
    for (what, h) in bad_handshakes {
        v.push(pre(
            format!("a handshake with {what}"),
            handshake_with(h),
            Fatal(C::InvalidName),
        ));
    }
    v.push(
        pre(
            "a handshake with a namespace of exactly 255 bytes",
            handshake_with(pb::Handshake {
                namespace: format!("/{}", "n".repeat(254)),
                ..Default::default()
            }),
            Open,
        )
        .reply(1, OK_HANDSHAKE),
    );
    // -- names in requests: refused, the session goes on --
    let bad_names: Vec<(&str, Req)> = vec![
        ("a room with a NUL", Req::Publish(publish(&["a\0b"], "e"))),
        (
            "a room of 128 characters but 256 bytes",
            Req::Publish(publish(&[&e_acute_128], "e")),
        ),
        (
            "an event of 256 bytes",
            Req::Publish(publish(&["bi-names"], &long)),
        ),
        (
            "an event with a C1 control character",
            Req::Publish(publish(&["bi-names"], "e\u{85}")),
        ),
        (
            "an event with DEL",
            Req::Publish(publish(&["bi-names"], "e\u{7f}")),
        ),
        (
            "an empty header name",
            Req::Publish(pb::Publish {
                headers: [(String::new(), "v".to_string())].into(),
                ..publish(&["bi-names"], "e")
            }),
        ),
        (
            "a header name with a NUL",
            Req::Publish(pb::Publish {
                headers: [("k\0".to_string(), "v".to_string())].into(),
                ..publish(&["bi-names"], "e")
            }),
        ),
        (
            "a header name of 256 bytes",
            Req::Publish(pb::Publish {
                headers: [(long.clone(), "v".to_string())].into(),
                ..publish(&["bi-names"], "e")
            }),
        ),
        (
            "a join of a room with a newline",
            Req::Join(pb::Join {
                room: "a\nb".into(),
                ..Default::default()
            }),
        ),
        (
            "a join with a subscription of 256 bytes",
            Req::Join(pb::Join {
                room: "bi-names".into(),
                subscription: long.clone(),
                ..Default::default()
            }),
        ),
        (
            "a join with a subscription with a NUL",
            Req::Join(pb::Join {
                room: "bi-names".into(),
                subscription: "\0".into(),
                ..Default::default()
            }),
        ),
        (
            "an ack of a room with a NUL",
            Req::Ack(pb::Ack {
                room: "\0".into(),
                seqs: vec![1],
                ..Default::default()
            }),
        ),
        (
            "a nack of an empty room name",
            Req::Nack(pb::Nack {
                room: String::new(),
                seqs: vec![1],
                ..Default::default()
            }),
        ),
        (
            "an in-progress of a room with a tab",
            Req::InProgress(pb::InProgress {
                room: "a\tb".into(),
                seqs: vec![1],
                ..Default::default()
            }),
        ),
        (
            "a leave of a room of 256 bytes",
            Req::Leave(pb::Leave {
                room: long.clone(),
                ..Default::default()
            }),
        ),
    ];
    for (what, body) in bad_names {
        v.push(
            post(format!("{what} is an invalid name"), req(7, body), Open)
                .reply(7, err(C::InvalidName)),
        );
    }
    v.push(
        post(
            "names at the limits are served: 255 bytes, a format character, any header value",
            cat(&[
                req(7, Req::Publish(publish(&[&e_acute_255], "e"))),
                req(8, Req::Publish(publish(&["zero\u{200b}width"], "e"))),
                req(
                    9,
                    Req::Publish(pb::Publish {
                        headers: [("k".to_string(), "line\nbreak\0nul".to_string())].into(),
                        ..publish(&["bi-names"], "e")
                    }),
                ),
            ]),
            Open,
        )
        .reply(7, OK_PUBLISH)
        .reply(8, OK_PUBLISH)
        .reply(9, OK_PUBLISH)
        .flushed(),
    );
    // -- requests out of order, or about seqs and memberships that are not there --
    v.extend([
        post(
            "a second handshake naming another namespace leaves the session where it was",
            cat(&[
                frame(&handshake(7, "/other", "")),
                req(8, Req::ListRooms(pb::ListRooms {})),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, Reply::Ok("ListRoomsOk of /", lists_the_health_room)),
        post(
            "acks, nacks and in-progress of seqs never delivered",
            cat(&[
                join_eph(2, QUIET, "q", New),
                ack(3, QUIET, "q", vec![0], 0),
                ack(4, QUIET, "q", vec![], 1_000_000),
                ack(5, QUIET, "q", vec![u64::MAX], 0),
                nack(6, QUIET, "q", vec![1]),
                nack(7, QUIET, "q", vec![0]),
                in_progress(8, QUIET, "q", vec![0]),
                in_progress(9, QUIET, "q", vec![u64::MAX]),
                // 10,000 seqs pass the count check and fail on the seqs.
                ack(10, QUIET, "q", (1..=10_000).collect(), 0),
            ]),
            Open,
        )
        .reply(2, OK_JOIN)
        .reply(3, err(C::UnknownSeq))
        .reply(4, err(C::UnknownSeq))
        .reply(5, err(C::UnknownSeq))
        .reply(6, err(C::UnknownSeq))
        .reply(7, err(C::UnknownSeq))
        .reply(8, err(C::UnknownSeq))
        .reply(9, err(C::UnknownSeq))
        .reply(10, err(C::UnknownSeq)),
        post(
            "a refused ack or nack changes nothing",
            cat(&[
                join_eph(2, LOG, "l", Earliest),
                ack(3, LOG, "l", vec![2, 1_000_000_000], 0),
                nack(4, LOG, "l", vec![2, 1_000_000_000]),
                ack(5, LOG, "l", vec![1], 0),
            ]),
            Open,
        )
        .reply(2, OK_JOIN)
        .reply(3, err(C::UnknownSeq))
        .reply(4, err(C::UnknownSeq))
        .reply(5, Reply::Ok("AckOk with next_seq 2", cursor_at_two)),
        post(
            "a nack, in-progress and leave of a room never joined",
            cat(&[
                nack(7, NONE, "", vec![1]),
                in_progress(8, NONE, "", vec![1]),
                leave(9, NONE, ""),
            ]),
            Open,
        )
        .reply(7, err(C::NotJoined))
        .reply(8, err(C::NotJoined))
        .reply(9, err(C::NotJoined)),
        post(
            "an ack and a leave with another subscription label than the join's",
            cat(&[
                join_eph(2, QUIET, "", New),
                ack(3, QUIET, "other", vec![1], 0),
                leave(4, QUIET, "other"),
            ]),
            Open,
        )
        .reply(2, OK_JOIN)
        .reply(3, err(C::NotJoined))
        .reply(4, err(C::NotJoined)),
        post(
            "an ack and a leave after the leave",
            cat(&[
                join_eph(2, QUIET, "x", New),
                leave(3, QUIET, "x"),
                ack(4, QUIET, "x", vec![1], 0),
                leave(5, QUIET, "x"),
            ]),
            Open,
        )
        .reply(2, OK_JOIN)
        .reply(3, OK_LEAVE)
        .reply(4, err(C::NotJoined))
        .reply(5, err(C::NotJoined)),
        post(
            "a second join of the same membership",
            cat(&[
                join_eph(2, QUIET, "a", New),
                join_eph(3, QUIET, "a", New),
                join_eph(4, QUIET, "a", Earliest),
            ]),
            Open,
        )
        .reply(2, OK_JOIN)
        .reply(3, err(C::AlreadyJoined))
        .reply(4, err(C::AlreadyJoined)),
        post(
            "numbers at their extremes are clamped or refused, never overflowed",
            cat(&[
                req(
                    2,
                    Req::Join(pb::Join {
                        room: LOG.into(),
                        subscription: "x".into(),
                        mode: pb::MemberMode::Ephemeral as i32,
                        start: pb::StartPosition::Seq as i32,
                        start_seq: u64::MAX,
                        max_in_flight: u32::MAX,
                        ack_timeout_ms: u64::MAX,
                        backoff_ms: vec![u64::MAX, 1],
                        max_deliveries: Some(u32::MAX),
                        start_time_ms: u64::MAX,
                        ..Default::default()
                    }),
                ),
                ack(3, LOG, "x", vec![], u64::MAX),
                join_eph(4, LOG, "y", Earliest),
                req(
                    5,
                    Req::Nack(pb::Nack {
                        room: LOG.into(),
                        subscription: "y".into(),
                        seqs: vec![1],
                        delay_ms: u64::MAX,
                        reason: "x".repeat(255),
                    }),
                ),
                in_progress(6, LOG, "y", vec![1, 2, 3]),
                req(
                    7,
                    Req::Publish(pb::Publish {
                        expected_last_seq: Some(u64::MAX),
                        ..publish(&[LOG], "e")
                    }),
                ),
                req(8, Req::Ping(pb::Ping { nonce: u64::MAX })),
            ]),
            Open,
        )
        .reply(
            2,
            Reply::Ok("JoinOk at the end of the log", joined_at_the_end),
        )
        .reply(3, err(C::UnknownSeq))
        .reply(4, OK_JOIN)
        .reply(5, OK_NACK)
        .reply(6, OK_IN_PROGRESS)
        .reply(7, err(C::PreconditionFailed))
        .reply(8, Reply::Ok("Pong with nonce u64::MAX", pong_max)),
    ]);
    // -- too many of something in one request --
    let rooms_65: Vec<String> = (0..65).map(|i| format!("bi-many-{i}")).collect();
    let rooms_65: Vec<&str> = rooms_65.iter().map(String::as_str).collect();
    let too_many_seqs: Vec<u64> = (1..=10_001).collect();
    v.extend([
        post(
            "a publish to 65 rooms, and to 64",
            cat(&[
                req(7, Req::Publish(publish(&rooms_65, "e"))),
                req(8, Req::Publish(publish(&rooms_65[..64], "e"))),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, OK_PUBLISH)
        .flushed(),
        post(
            "a publish with 65 headers, and with 64",
            cat(&[
                req(7, Req::Publish(with_headers(65))),
                req(8, Req::Publish(with_headers(64))),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, OK_PUBLISH)
        .flushed(),
        post(
            "acks, nacks and in-progress with 10,001 seqs, or none (checked before membership)",
            cat(&[
                ack(7, NONE, "", too_many_seqs.clone(), 0),
                nack(8, NONE, "", too_many_seqs.clone()),
                in_progress(9, NONE, "", too_many_seqs.clone()),
                ack(10, NONE, "", vec![], 0),
                nack(11, NONE, "", vec![]),
                in_progress(12, NONE, "", vec![]),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, err(C::InvalidRequest))
        .reply(9, err(C::InvalidRequest))
        .reply(10, err(C::InvalidRequest))
        .reply(11, err(C::InvalidRequest))
        .reply(12, err(C::InvalidRequest)),
        post(
            "a durable join without a client id or a subscription name",
            req(
                7,
                Req::Join(pb::Join {
                    room: QUIET.into(),
                    mode: pb::MemberMode::Durable as i32,
                    ..Default::default()
                }),
            ),
            Open,
        )
        .reply(7, err(C::InvalidRequest)),
        post(
            "a publish with expected_last_seq to two rooms, and a 17-byte dedup id",
            cat(&[
                req(
                    7,
                    Req::Publish(pb::Publish {
                        expected_last_seq: Some(0),
                        ..publish(&["bi-a", "bi-b"], "e")
                    }),
                ),
                req(
                    8,
                    Req::Publish(pb::Publish {
                        dedup_id: Bytes::from(vec![1u8; 17]),
                        ..publish(&["bi-a"], "e")
                    }),
                ),
            ]),
            Open,
        )
        .reply(7, err(C::InvalidRequest))
        .reply(8, err(C::InvalidRequest)),
    ]);
    let mut joins = Vec::new();
    let mut quota = post(
        "one membership more than max_memberships_per_session",
        Vec::new(),
        Open,
    );
    for i in 0..=MAX_MEMBERSHIPS {
        let id = 10 + u64::from(i);
        joins.push(join_eph(id, QUIET, &format!("m{i}"), New));
        quota = quota.reply(
            id,
            if i < MAX_MEMBERSHIPS {
                OK_JOIN
            } else {
                err(C::QuotaExceeded)
            },
        );
    }
    quota.bytes = joins.concat();
    v.push(quota);
    v
}

// ---- running a case -------------------------------------------------------

/// Runs one case on a fresh connection; returns what was wrong, if anything.
async fn run(addr: std::net::SocketAddr, case: &Case) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let mut bytes = Vec::new();
    if case.after_handshake {
        bytes.extend(frame(&handshake(1, "/", "")));
    }
    bytes.extend_from_slice(&case.bytes);
    if case.end == End::Open {
        bytes.extend(ping(SENTINEL));
    }
    let half_close = case.end == End::Quiet;
    // Written from a task so that a broker that stops reading cannot block
    // the test; the socket's write half stays open until the case is over,
    // since closing it would end the session before its replies.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        if half_close {
            let _ = write.shutdown().await;
        }
        let _ = done_rx.await;
    });

    let wait = if case.flush { WAIT } else { ANSWER };
    let deadline = tokio::time::Instant::now() + wait;
    let mut frames = Vec::new();
    let mut closed = false;
    let mut wanted: Vec<u64> = case.replies.iter().map(|(id, _)| *id).collect();
    if case.end == End::Open {
        wanted.push(SENTINEL);
    }
    if case.after_handshake {
        wanted.push(1);
    }
    loop {
        let got_all = wanted.iter().all(|id| {
            frames.iter().any(|f: &pb::ServerFrame| {
                f.request_id == *id && (*id != 0 || error_of(f).is_some())
            })
        });
        if got_all && matches!(case.end, End::Open | End::OpenOrFatal(_)) {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match reader.next_within(left).await {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                closed = true;
                break;
            }
            Err(e) => {
                let _ = done_tx.send(());
                writer.abort();
                return Err(format!("{e}; frames so far: {frames:?}"));
            }
        }
    }
    let _ = done_tx.send(());
    let _ = writer.await;
    check(case, &frames, closed).map_err(|e| format!("{e}; frames: {frames:?}"))
}

/// Checks the frames a case got against what it expects.
fn check(case: &Case, frames: &[pb::ServerFrame], closed: bool) -> Result<(), String> {
    let mut rest = frames;
    if case.after_handshake {
        match rest.split_first() {
            Some((f, tail)) if f.request_id == 1 && matches!(f.body, Some(Rep::HandshakeOk(_))) => {
                rest = tail
            }
            _ => return Err("the first frame is not the HandshakeOk".into()),
        }
    }
    // A fatal error is always the last frame, and only where allowed.
    let fatal = rest.last().and_then(error_of).filter(|e| e.fatal).cloned();
    if let Some(e) = &fatal {
        if rest.last().map(|f| f.request_id) != Some(0) {
            return Err("a fatal error that answers a request id".into());
        }
        rest = &rest[..rest.len() - 1];
        match case.end {
            End::Fatal(code) | End::OpenOrFatal(code) if e.error_code() == Some(code) => {}
            _ => return Err(format!("unexpected fatal error {}", e.name)),
        }
        if !closed {
            return Err("a fatal error, but the connection stays open".into());
        }
    }
    match (case.end, &fatal, closed) {
        (End::Open, _, true) => return Err("the connection was closed".into()),
        (End::Fatal(code), None, _) => return Err(format!("no fatal {}", code.name())),
        (End::Quiet, _, false) => return Err("the connection stays open".into()),
        (End::Quiet, Some(_), _) => return Err("a frame before the close".into()),
        (End::OpenOrFatal(_), None, true) => return Err("closed without an error".into()),
        _ => {}
    }

    let mut answers: HashMap<u64, Vec<&pb::ServerFrame>> = HashMap::new();
    for f in rest {
        if f.request_id == 0 {
            match &f.body {
                Some(Rep::Delivery(_)) => continue,
                Some(Rep::Error(e)) if !e.fatal => {}
                other => return Err(format!("unexpected push {other:?}")),
            }
        }
        answers.entry(f.request_id).or_default().push(f);
    }
    if case.end == End::Open {
        match answers.remove(&SENTINEL).as_deref() {
            Some([f]) if matches!(f.body, Some(Rep::Pong(_))) => {}
            other => return Err(format!("the trailing ping got {other:?}")),
        }
    }
    let served = fatal.is_none();
    for (id, expected) in &case.replies {
        let got = answers.remove(id).unwrap_or_default();
        if got.is_empty() && !served {
            continue; // cut short by the fatal error
        }
        let [f] = got.as_slice() else {
            return Err(format!("request {id}: {} replies, not one", got.len()));
        };
        let body = f
            .body
            .as_ref()
            .ok_or(format!("request {id}: an empty reply"))?;
        match (expected, body) {
            (Reply::Ok(_, ok), b) if ok(b) => {}
            (Reply::Err(code), Rep::Error(e)) if e.error_code() == Some(*code) && !e.fatal => {
                if e.name != code.name() {
                    return Err(format!("request {id}: code {} named {}", e.code, e.name));
                }
            }
            (Reply::Ok(what, _), b) => return Err(format!("request {id}: {b:?}, not {what}")),
            (Reply::Err(code), b) => {
                return Err(format!("request {id}: {b:?}, not {}", code.name()))
            }
        }
    }
    if let Some((id, _)) = answers.iter().next() {
        return Err(format!("a reply to request {id}, which nobody sent"));
    }
    Ok(())
}

// ---- the tests ------------------------------------------------------------

/// The client that must keep working: after every case it publishes to its
/// room and receives that message, next in seq order.
struct Health {
    conn: roomq_client::raw::Connection,
    deliveries: roomq_client::Deliveries,
    seq: u64,
}

impl Health {
    async fn check(&mut self, after: &str) {
        self.seq += 1;
        let body = format!("alive after {after}");
        let stored = self.conn.publish(HEALTH, "e", body.clone()).await;
        assert_eq!(stored.unwrap(), self.seq, "publish after {after}");
        let got = next(&mut self.deliveries).await;
        assert_eq!(seq(&got), self.seq, "delivery after {after}");
        assert_eq!(payload(&got), body.into_bytes());
        self.conn.ack(HEALTH, "", &[self.seq]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_answered_others_keep_working_and_memory_stays_flat() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    config.limits.max_memberships_per_session = MAX_MEMBERSHIPS;
    // Small caches, so that what the rounds store does not hide what the
    // connections cost.
    config.storage.room_cache_messages = 16;
    config.storage.cache_bytes = 1024 * 1024;
    // The longest namespace name is accepted (it must exist, like any).
    config.namespaces.insert(
        format!("/{}", "n".repeat(254)),
        roomq::config::NamespaceConfig::open_default(),
    );
    let max_frame = config.limits.max_frame();
    let broker = TestBroker::start_with(config, dir).await;

    let (healthy, deliveries) = broker.connect("healthy").await;
    healthy
        .join_with(join(HEALTH, pb::StartPosition::New, 0, 3_600_000))
        .await
        .unwrap();
    for i in 1..=3 {
        assert_eq!(healthy.publish(LOG, "e", "log").await.unwrap(), i);
    }
    let mut health = Health {
        conn: healthy,
        deliveries,
        seq: 0,
    };

    let cases = corpus(max_frame);
    const ROUNDS: usize = 30;
    let mut rss_after_warmup = 0;
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        for case in &cases {
            if let Err(e) = run(broker.addr, case).await {
                panic!("round {round}, case {:?}: {e}", case.name);
            }
            health.check(&case.name).await;
        }
        if round == 0 {
            rss_after_warmup = rss_bytes();
        }
    }
    let rss_end = rss_bytes();
    let growth = rss_end.saturating_sub(rss_after_warmup);
    println!(
        "{} cases x {ROUNDS} rounds in {:?}; RSS {} KiB after the warm-up round, {} KiB at the end",
        cases.len(),
        started.elapsed(),
        rss_after_warmup / 1024,
        rss_end / 1024
    );
    assert!(
        growth < 32 * 1024 * 1024,
        "memory grew by {} KiB over {} rounds of the corpus",
        growth / 1024,
        ROUNDS - 1
    );
    broker.stop().await;
}

/// The deadlines bound what a partial frame can hold: a connection that
/// sends part of a frame and then nothing is closed at the handshake
/// deadline (before the handshake) or the idle timeout (after it).
#[tokio::test(start_paused = true)]
async fn a_partial_frame_then_silence_runs_into_the_deadlines() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(&dir);
    let broker = TestBroker::start_with(config, dir).await;
    let handshake_deadline = Duration::from_secs(5);
    let idle = Duration::from_secs(60);
    let a_day = Duration::from_secs(24 * 3600);

    let max_handshake = roomq::config::Limits::default().max_handshake_bytes;
    let mut header_of_max = max_handshake.to_be_bytes().to_vec();
    header_of_max.extend_from_slice(&[0x08; 100]);
    let silent_before = [
        ("two bytes of a length prefix", vec![0, 0]),
        (
            "a length of exactly max_handshake_bytes and 100 bytes of body",
            header_of_max,
        ),
    ];
    for (what, bytes) in silent_before {
        let start = tokio::time::Instant::now();
        let stream = TcpStream::connect(broker.addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(&bytes).await.unwrap();
        let frames = FrameReader::new(read).until_closed(a_day).await;
        let closed_after = start.elapsed();
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        let e = error_of(&frames[0]).expect("an error frame");
        assert_eq!(e.error_code(), Some(ErrorCode::HandshakeTimeout), "{what}");
        assert!(e.fatal);
        assert!(
            closed_after >= handshake_deadline && closed_after < handshake_deadline * 2,
            "{what}: closed after {closed_after:?}"
        );
        drop(write);
    }

    // After the handshake: the idle timeout, not the handshake deadline.
    let start = tokio::time::Instant::now();
    let stream = TcpStream::connect(broker.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut bytes = frame(&handshake(1, "/", ""));
    bytes.extend_from_slice(&[0, 0, 1, 0, 0x08, 0x07]);
    write.write_all(&bytes).await.unwrap();
    let frames = FrameReader::new(read).until_closed(a_day).await;
    let closed_after = start.elapsed();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(matches!(frames[0].body, Some(Rep::HandshakeOk(_))));
    let e = error_of(&frames[1]).expect("an error frame");
    assert_eq!(e.error_code(), Some(ErrorCode::IdleTimeout));
    assert!(
        closed_after >= idle && closed_after < idle * 2,
        "closed after {closed_after:?}"
    );
    drop(write);
    broker.stop().await;
}
