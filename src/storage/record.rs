//! Byte layouts of stored values. Every value starts with a CRC-32 checksum
//! (IEEE polynomial, via crc32fast) of the rest, checked on every read;
//! a mismatch is reported as [`StoreError::Corrupt`] and the data is never
//! used as if it were good. Inside a log batch each message carries its own
//! checksum as well, so a damaged message is pinpointed.
//!
//! All integers are big-endian. Decoders use checked reads only: a damaged
//! length can never cause a panic or an oversized allocation.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};

use super::RoomStats;
use super::StoreError;

/// A message as stored in a room's log and held in the broker's caches.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub seq: u64,
    /// The protobuf encoding of the wire `Message` *without* its seq; the
    /// seq is stored beside it and spliced in front when a delivery frame is
    /// written.
    pub encoded: Bytes,
    /// Session that published with `except_self`, if it did.
    pub except_session: Option<[u8; 16]>,
    /// Client id that published with `except_self`, if it had one.
    pub except_client: Option<Arc<str>>,
    /// Who else must not get it, and the rooms of a multi-room publish.
    pub extra: Option<Arc<Extra>>,
    /// What the broker reads from `encoded` (not stored separately).
    pub info: MessageInfo,
}

/// Routing data of a message that its receivers never see.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extra {
    /// Sessions (16 bytes each) it is not delivered to.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub except_sessions: Vec<Vec<u8>>,
    /// Sessions that are members of these rooms do not get it.
    #[prost(string, repeated, tag = "2")]
    pub except_rooms: Vec<String>,
    /// All the rooms of a publish to more than one, in the order given: a
    /// session gets the message only in the first of them it is in.
    #[prost(string, repeated, tag = "3")]
    pub rooms: Vec<String>,
}

/// Fields of the encoded wire `Message` the broker routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageInfo {
    /// Hash of the ordering key; 0 when there is none.
    pub key_hash: u64,
    /// When the broker accepted it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// 0 = never expires.
    pub expires_at_ms: u64,
    /// 0 = deliverable at once.
    pub deliver_at_ms: u64,
}

/// Field numbers of the wire `Message` (see proto/roomq.proto).
mod field {
    pub const EVENT: u32 = 2;
    pub const TIMESTAMP: u32 = 6;
    pub const KEY: u32 = 7;
    pub const EXPIRES_AT: u32 = 8;
    pub const DELIVER_AT: u32 = 9;
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Walks the top-level fields of an encoded message, handing each varint
/// or length-delimited field to `f`; stops at the first malformed byte.
fn scan<'a>(mut buf: &'a [u8], mut f: impl FnMut(u32, Option<u64>, &'a [u8])) {
    while !buf.is_empty() {
        let Some(tag) = read_varint(&mut buf) else {
            return;
        };
        let number = u32::try_from(tag >> 3).unwrap_or(0);
        match tag & 7 {
            0 => match read_varint(&mut buf) {
                Some(v) => f(number, Some(v), &[]),
                None => return,
            },
            1 => match buf.get(8..) {
                Some(rest) => buf = rest,
                None => return,
            },
            2 => {
                let Some(len) = read_varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return;
                };
                let Some(bytes) = buf.get(..len) else {
                    return;
                };
                f(number, None, bytes);
                buf = buf.get(len..).unwrap_or_default();
            }
            5 => match buf.get(4..) {
                Some(rest) => buf = rest,
                None => return,
            },
            _ => return,
        }
    }
}

impl MessageInfo {
    /// Reads the routing fields of an encoded wire `Message`.
    pub fn of(encoded: &[u8]) -> Self {
        let mut info = MessageInfo::default();
        scan(encoded, |number, varint, bytes| match (number, varint) {
            (field::TIMESTAMP, Some(v)) => info.timestamp_ms = v,
            (field::EXPIRES_AT, Some(v)) => info.expires_at_ms = v,
            (field::DELIVER_AT, Some(v)) => info.deliver_at_ms = v,
            (field::KEY, None) if !bytes.is_empty() => info.key_hash = key_hash(bytes),
            _ => {}
        });
        info
    }
}

/// A nonzero hash of an ordering key, stable within one broker process.
pub fn key_hash(key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish().max(1)
}

impl StoredMessage {
    /// A message with nothing excluded.
    pub fn new(seq: u64, encoded: Bytes) -> Self {
        let info = MessageInfo::of(&encoded);
        StoredMessage {
            seq,
            encoded,
            except_session: None,
            except_client: None,
            extra: None,
            info,
        }
    }

    /// Bytes this message occupies in memory, for cache accounting.
    pub fn size(&self) -> usize {
        self.encoded.len() + 64
    }

    /// The message's event name (read from its encoding).
    pub fn event(&self) -> &str {
        let mut event = "";
        scan(&self.encoded, |number, varint, bytes| {
            if number == field::EVENT && varint.is_none() {
                event = std::str::from_utf8(bytes).unwrap_or("");
            }
        });
        event
    }
}

/// A durable member's position in a room.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CursorRecord {
    /// The next seq to deliver for the first time.
    pub next_seq: u64,
    /// Delivered but unacknowledged seqs below `next_seq`, with the number of
    /// deliveries so far. Every other seq below `next_seq` is acknowledged.
    pub unacked: Vec<(u64, u32)>,
    /// Client id of the session that last joined this membership, used by
    /// `except_self`.
    pub owner: Option<String>,
    /// A gap notice the member is owed: (from seq, to seq, missed).
    pub gap: Option<(u64, u64, u64)>,
}

/// What a dedup id resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupRecord {
    /// When the original publish was accepted, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// (room id, seq) for each room of the original publish, in order.
    pub seqs: Vec<(u64, u64)>,
}

const LOG_VERSION: u8 = 1;
const FLAG_EXCEPT_SESSION: u8 = 1;
const FLAG_EXCEPT_CLIENT: u8 = 2;
const FLAG_EXTRA: u8 = 4;
/// Marks a gap notice in a cursor value.
const GAP_TAG: u8 = 2;

fn corrupt(key: &[u8], why: &'static str) -> StoreError {
    StoreError::Corrupt { key: hex(key), why }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefixes `body` with its checksum.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.put_u32(crc32fast::hash(body));
    out.extend_from_slice(body);
    out
}

/// Verifies and strips the checksum that [`seal`] added.
pub fn open<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let (crc, body) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(key, "value shorter than its checksum"))?;
    if u32::from_be_bytes(*crc) != crc32fast::hash(body) {
        return Err(corrupt(key, "checksum mismatch"));
    }
    Ok(body)
}

/// The bytes `m` takes in a log value written by [`encode_log_batch`]: its
/// length and checksum, seq, flags, the optional fields, the message.
pub fn log_entry_len(m: &StoredMessage) -> usize {
    use prost::Message as _;
    let mut n = 4 + 4 + 8 + 1 + m.encoded.len();
    if m.except_session.is_some() {
        n += 16;
    }
    if let Some(c) = &m.except_client {
        n += 1 + c.len().min(255);
    }
    if let Some(x) = &m.extra {
        n += 4 + x.encoded_len();
    }
    n
}

/// Encodes consecutive messages of one room as one log value: what
/// [`seal`] would make of the body, built in place (each message is copied
/// once, straight into the value).
pub fn encode_log_batch(messages: &[Arc<StoredMessage>]) -> Vec<u8> {
    let data: usize = messages.iter().map(|m| log_entry_len(m)).sum();
    let mut out = Vec::with_capacity(4 + 5 + data);
    // The value's checksum, filled in at the end.
    out.put_u32(0);
    out.put_u8(LOG_VERSION);
    out.put_u32(u32::try_from(messages.len()).unwrap_or(u32::MAX));
    for m in messages {
        let head = out.len();
        // The entry's length and checksum, filled in once it is written.
        out.put_u64(0);
        out.put_u64(m.seq);
        let mut flags = 0;
        if m.except_session.is_some() {
            flags |= FLAG_EXCEPT_SESSION;
        }
        if m.except_client.is_some() {
            flags |= FLAG_EXCEPT_CLIENT;
        }
        if m.extra.is_some() {
            flags |= FLAG_EXTRA;
        }
        out.put_u8(flags);
        if let Some(s) = &m.except_session {
            out.put_slice(s);
        }
        if let Some(c) = &m.except_client {
            // Client ids are validated to at most 255 bytes.
            let c = c.as_bytes().get(..255).unwrap_or(c.as_bytes());
            out.put_u8(u8::try_from(c.len()).unwrap_or(u8::MAX));
            out.put_slice(c);
        }
        if let Some(x) = &m.extra {
            use prost::Message as _;
            out.put_u32(u32::try_from(x.encoded_len()).unwrap_or(u32::MAX));
            x.encode_raw(&mut out);
        }
        out.put_slice(&m.encoded);
        let entry = out.get(head + 8..).unwrap_or_default();
        let len = u32::try_from(entry.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(entry);
        // Big-endian length, then big-endian checksum.
        let patch = ((u64::from(len) << 32) | u64::from(crc)).to_be_bytes();
        if let Some(slot) = out.get_mut(head..head + 8) {
            slot.copy_from_slice(&patch);
        }
    }
    let crc = crc32fast::hash(out.get(4..).unwrap_or_default());
    if let Some(slot) = out.get_mut(..4) {
        slot.copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// Number of messages in a log value, after verifying its checksum.
pub fn log_batch_count(key: &[u8], value: &[u8]) -> Result<u32, StoreError> {
    let mut body = open(key, value)?;
    if body.remaining() < 5 || body.get_u8() != LOG_VERSION {
        return Err(corrupt(key, "bad log batch header"));
    }
    Ok(body.get_u32())
}

/// Decodes a log value, keeping messages with seq >= `from`. `value` is the
/// sled value turned into `Bytes`, so message bytes share its buffer.
pub fn decode_log_batch(
    key: &[u8],
    value: Bytes,
    from: u64,
    out: &mut Vec<Arc<StoredMessage>>,
    max: usize,
) -> Result<(), StoreError> {
    open(key, &value)?;
    let mut body = value.slice(4..);
    if body.remaining() < 5 || body.get_u8() != LOG_VERSION {
        return Err(corrupt(key, "bad log batch header"));
    }
    let count = body.get_u32();
    for _ in 0..count {
        if out.len() >= max {
            return Ok(());
        }
        if body.remaining() < 8 {
            return Err(corrupt(key, "truncated entry header"));
        }
        let len = body.get_u32() as usize;
        let crc = body.get_u32();
        if body.remaining() < len {
            return Err(corrupt(key, "truncated entry"));
        }
        let mut entry = body.split_to(len);
        if crc32fast::hash(&entry) != crc {
            return Err(corrupt(key, "entry checksum mismatch"));
        }
        if entry.remaining() < 9 {
            return Err(corrupt(key, "entry too short"));
        }
        let seq = entry.get_u64();
        if seq < from {
            continue;
        }
        let flags = entry.get_u8();
        let mut except_session = None;
        if flags & FLAG_EXCEPT_SESSION != 0 {
            let mut s = [0u8; 16];
            if entry.remaining() < 16 {
                return Err(corrupt(key, "truncated session id"));
            }
            entry.copy_to_slice(&mut s);
            except_session = Some(s);
        }
        let mut except_client = None;
        if flags & FLAG_EXCEPT_CLIENT != 0 {
            if entry.remaining() < 1 {
                return Err(corrupt(key, "truncated client id"));
            }
            let n = entry.get_u8() as usize;
            if entry.remaining() < n {
                return Err(corrupt(key, "truncated client id"));
            }
            let raw = entry.split_to(n);
            let s = std::str::from_utf8(&raw).map_err(|_| corrupt(key, "client id not UTF-8"))?;
            except_client = Some(Arc::from(s));
        }
        let mut extra = None;
        if flags & FLAG_EXTRA != 0 {
            use prost::Message as _;
            if entry.remaining() < 4 {
                return Err(corrupt(key, "truncated routing data"));
            }
            let n = entry.get_u32() as usize;
            if entry.remaining() < n {
                return Err(corrupt(key, "truncated routing data"));
            }
            let raw = entry.split_to(n);
            let x = Extra::decode(raw).map_err(|_| corrupt(key, "routing data undecodable"))?;
            extra = Some(Arc::new(x));
        }
        let info = MessageInfo::of(&entry);
        out.push(Arc::new(StoredMessage {
            seq,
            encoded: entry,
            except_session,
            except_client,
            extra,
            info,
        }));
    }
    Ok(())
}

/// Encodes a cursor value.
pub fn encode_cursor(c: &CursorRecord) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + c.unacked.len() * 12);
    body.put_u64(c.next_seq);
    body.put_u32(u32::try_from(c.unacked.len()).unwrap_or(u32::MAX));
    for (seq, attempts) in &c.unacked {
        body.put_u64(*seq);
        body.put_u32(*attempts);
    }
    // (Records written before gap notices existed start here with the
    // owner flag, 0 or 1.)
    if let Some((from, to, missed)) = c.gap {
        body.put_u8(GAP_TAG);
        body.put_u64(from);
        body.put_u64(to);
        body.put_u64(missed);
    }
    match &c.owner {
        Some(owner) => {
            body.put_u8(1);
            body.put_slice(owner.as_bytes());
        }
        None => body.put_u8(0),
    }
    seal(&body)
}

/// Decodes a cursor value.
pub fn decode_cursor(key: &[u8], value: &[u8]) -> Result<CursorRecord, StoreError> {
    let mut body = open(key, value)?;
    if body.remaining() < 12 {
        return Err(corrupt(key, "cursor too short"));
    }
    let next_seq = body.get_u64();
    let n = body.get_u32() as usize;
    if body.remaining() < n.saturating_mul(12) {
        return Err(corrupt(key, "cursor list truncated"));
    }
    let mut unacked = Vec::with_capacity(n);
    for _ in 0..n {
        unacked.push((body.get_u64(), body.get_u32()));
    }
    let mut gap = None;
    if body.first() == Some(&GAP_TAG) {
        if body.remaining() < 25 {
            return Err(corrupt(key, "cursor gap truncated"));
        }
        body.advance(1);
        gap = Some((body.get_u64(), body.get_u64(), body.get_u64()));
    }
    let owner = match body.first() {
        Some(1) => Some(
            std::str::from_utf8(body.get(1..).unwrap_or_default())
                .map_err(|_| corrupt(key, "cursor owner not UTF-8"))?
                .to_string(),
        ),
        _ => None,
    };
    Ok(CursorRecord {
        next_seq,
        unacked,
        owner,
        gap,
    })
}

/// A dedup record with its namespace and id.
pub type DedupEntry = (Arc<str>, [u8; 16], DedupRecord);

/// The bytes one record takes in a value written by [`encode_dedup_group`].
pub fn dedup_entry_len((ns, _, rec): &DedupEntry) -> usize {
    1 + ns.len().min(255) + 16 + 8 + 4 + 16 * rec.seqs.len()
}

/// Encodes the dedup records of one commit as one value.
pub fn encode_dedup_group(records: &[DedupEntry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + records.len() * 64);
    body.put_u32(u32::try_from(records.len()).unwrap_or(u32::MAX));
    for (ns, id, rec) in records {
        body.put_u8(u8::try_from(ns.len()).unwrap_or(u8::MAX));
        body.put_slice(ns.as_bytes().get(..255).unwrap_or(ns.as_bytes()));
        body.put_slice(id);
        body.put_u64(rec.timestamp_ms);
        body.put_u32(u32::try_from(rec.seqs.len()).unwrap_or(u32::MAX));
        for (room, seq) in &rec.seqs {
            body.put_u64(*room);
            body.put_u64(*seq);
        }
    }
    seal(&body)
}

/// Decodes a value written by [`encode_dedup_group`].
pub fn decode_dedup_group(key: &[u8], value: &[u8]) -> Result<Vec<DedupEntry>, StoreError> {
    let mut body = open(key, value)?;
    let short = || corrupt(key, "dedup group truncated");
    if body.remaining() < 4 {
        return Err(short());
    }
    let count = body.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(body.remaining() / 29 + 1));
    for _ in 0..count {
        if body.remaining() < 1 {
            return Err(short());
        }
        let ns_len = body.get_u8() as usize;
        if body.remaining() < ns_len + 16 + 12 {
            return Err(short());
        }
        let ns = std::str::from_utf8(body.get(..ns_len).unwrap_or_default())
            .map_err(|_| corrupt(key, "namespace not UTF-8"))?;
        let ns: Arc<str> = Arc::from(ns);
        body.advance(ns_len);
        let mut id = [0u8; 16];
        body.copy_to_slice(&mut id);
        let timestamp_ms = body.get_u64();
        let n = body.get_u32() as usize;
        if body.remaining() < n.saturating_mul(16) {
            return Err(short());
        }
        let seqs = (0..n).map(|_| (body.get_u64(), body.get_u64())).collect();
        out.push((ns, id, DedupRecord { timestamp_ms, seqs }));
    }
    if body.has_remaining() {
        return Err(corrupt(key, "dedup group has trailing bytes"));
    }
    Ok(out)
}

/// Encodes a room value: namespace and name, each with a one-byte length.
pub fn encode_room(namespace: &str, name: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + namespace.len() + name.len());
    for s in [namespace, name] {
        body.put_u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
        body.put_slice(s.as_bytes().get(..255).unwrap_or(s.as_bytes()));
    }
    seal(&body)
}

/// Decodes a room value into (namespace, name).
pub fn decode_room(key: &[u8], value: &[u8]) -> Result<(String, String), StoreError> {
    let mut body = open(key, value)?;
    let mut out = Vec::with_capacity(2);
    for _ in 0..2 {
        if body.remaining() < 1 {
            return Err(corrupt(key, "room record truncated"));
        }
        let n = body.get_u8() as usize;
        if body.remaining() < n {
            return Err(corrupt(key, "room record truncated"));
        }
        let s = std::str::from_utf8(body.get(..n).unwrap_or_default())
            .map_err(|_| corrupt(key, "room name not UTF-8"))?;
        out.push(s.to_string());
        body.advance(n);
    }
    let name = out.pop().unwrap_or_default();
    let namespace = out.pop().unwrap_or_default();
    Ok((namespace, name))
}

/// Encodes a room's stats value: first stored seq and stored bytes.
pub fn encode_room_stats(stats: &RoomStats) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.put_u64(stats.first_seq);
    body.put_u64(stats.stored_bytes);
    seal(&body)
}

/// Decodes a room's stats value.
pub fn decode_room_stats(key: &[u8], value: &[u8]) -> Result<RoomStats, StoreError> {
    let mut body = open(key, value)?;
    if body.remaining() != 16 {
        return Err(corrupt(key, "room stats record has the wrong length"));
    }
    Ok(RoomStats {
        first_seq: body.get_u64(),
        stored_bytes: body.get_u64(),
    })
}

/// Encodes a single u64 (the next room id).
pub fn encode_u64(n: u64) -> Vec<u8> {
    seal(&n.to_be_bytes())
}

/// Decodes [`encode_u64`].
pub fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let mut body = open(key, value)?;
    if body.remaining() != 8 {
        return Err(corrupt(key, "counter record has the wrong length"));
    }
    Ok(body.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, except: bool) -> Arc<StoredMessage> {
        let mut m = StoredMessage::new(seq, Bytes::from(format!("message {seq}")));
        m.except_session = except.then_some([9; 16]);
        m.except_client = except.then(|| Arc::from("alice"));
        if seq.is_multiple_of(3) {
            m.extra = Some(Arc::new(Extra {
                except_sessions: vec![vec![1; 16]],
                except_rooms: vec!["x".into()],
                rooms: vec!["a".into(), "b".into()],
            }));
        }
        Arc::new(m)
    }

    #[test]
    fn message_info_is_read_from_the_encoding() {
        use prost::Message as _;
        let m = roomq_wire::pb::Message {
            event: "chat".into(),
            payload: Bytes::from_static(b"\x38\x01 not a field"),
            timestamp_ms: 1_000,
            key: "k".into(),
            expires_at_ms: 5_000,
            deliver_at_ms: 2_000,
            ..Default::default()
        };
        let stored = StoredMessage::new(1, Bytes::from(m.encode_to_vec()));
        assert_eq!(stored.event(), "chat");
        assert_eq!(stored.info.timestamp_ms, 1_000);
        assert_eq!(stored.info.expires_at_ms, 5_000);
        assert_eq!(stored.info.deliver_at_ms, 2_000);
        assert_eq!(stored.info.key_hash, key_hash(b"k"));
        let plain = StoredMessage::new(2, Bytes::from_static(b"\xff\xff"));
        assert_eq!(
            plain.info,
            MessageInfo::default(),
            "garbage reads as nothing"
        );
    }

    #[test]
    fn log_batch_round_trip_and_from_filter() {
        let msgs: Vec<_> = (10..15).map(|s| msg(s, s % 2 == 0)).collect();
        let value = encode_log_batch(&msgs);
        assert_eq!(log_batch_count(b"k", &value).unwrap(), 5);
        let mut out = Vec::new();
        decode_log_batch(b"k", Bytes::from(value.clone()), 0, &mut out, 100).unwrap();
        assert_eq!(out, msgs);
        let mut out = Vec::new();
        decode_log_batch(b"k", Bytes::from(value), 12, &mut out, 2).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![12, 13]);
    }

    /// The layout written before values were built in place: each entry
    /// assembled on its own, then the body, then sealed. The in-place
    /// encoder must write the same bytes (data directories hold both).
    fn reference_log_batch(messages: &[Arc<StoredMessage>]) -> Vec<u8> {
        use bytes::BytesMut;
        let mut body = BytesMut::new();
        body.put_u8(LOG_VERSION);
        body.put_u32(messages.len() as u32);
        for m in messages {
            let mut entry = BytesMut::new();
            entry.put_u64(m.seq);
            let mut flags = 0;
            if m.except_session.is_some() {
                flags |= FLAG_EXCEPT_SESSION;
            }
            if m.except_client.is_some() {
                flags |= FLAG_EXCEPT_CLIENT;
            }
            if m.extra.is_some() {
                flags |= FLAG_EXTRA;
            }
            entry.put_u8(flags);
            if let Some(s) = &m.except_session {
                entry.put_slice(s);
            }
            if let Some(c) = &m.except_client {
                entry.put_u8(c.len() as u8);
                entry.put_slice(c.as_bytes());
            }
            if let Some(x) = &m.extra {
                use prost::Message as _;
                entry.put_u32(x.encoded_len() as u32);
                x.encode_raw(&mut entry);
            }
            entry.put_slice(&m.encoded);
            body.put_u32(entry.len() as u32);
            body.put_u32(crc32fast::hash(&entry));
            body.put_slice(&entry);
        }
        seal(&body)
    }

    #[test]
    fn log_values_are_built_in_place_with_the_same_bytes() {
        let msgs: Vec<_> = (1..40).map(|s| msg(s, s % 4 == 1)).collect();
        assert_eq!(encode_log_batch(&msgs), reference_log_batch(&msgs));
        assert_eq!(encode_log_batch(&[]), reference_log_batch(&[]));
        let value = encode_log_batch(&msgs);
        assert_eq!(
            value.len(),
            4 + 5 + msgs.iter().map(|m| log_entry_len(m)).sum::<usize>(),
            "log_entry_len measures what is written"
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let value = encode_log_batch(&[msg(1, true), msg(2, false)]);
        for i in 0..value.len() {
            for bit in 0..8 {
                let mut damaged = value.clone();
                damaged[i] ^= 1 << bit;
                let mut out = Vec::new();
                let r = decode_log_batch(b"k", Bytes::from(damaged), 0, &mut out, 100);
                assert!(r.is_err(), "flip of byte {i} bit {bit} went unnoticed");
            }
        }
        for len in 0..value.len() {
            let mut out = Vec::new();
            let r = decode_log_batch(b"k", Bytes::from(value[..len].to_vec()), 0, &mut out, 9);
            assert!(r.is_err());
        }
    }

    #[test]
    fn cursor_dedup_room_round_trip() {
        let c = CursorRecord {
            next_seq: 77,
            unacked: vec![(70, 1), (75, 3)],
            owner: Some("bob".into()),
            gap: None,
        };
        assert_eq!(decode_cursor(b"k", &encode_cursor(&c)).unwrap(), c);
        let owed = CursorRecord {
            gap: Some((3, 60, 41)),
            ..c.clone()
        };
        assert_eq!(decode_cursor(b"k", &encode_cursor(&owed)).unwrap(), owed);
        let owed_anonymous = CursorRecord {
            owner: None,
            ..owed
        };
        let value = encode_cursor(&owed_anonymous);
        assert_eq!(decode_cursor(b"k", &value).unwrap(), owed_anonymous);
        for len in 4..value.len() {
            // Every prefix fails its checksum or its layout check.
            assert!(decode_cursor(b"k", &value[..len]).is_err());
        }
        let c = CursorRecord::default();
        assert_eq!(decode_cursor(b"k", &encode_cursor(&c)).unwrap(), c);
        let group = vec![
            (
                Arc::from("/"),
                [1u8; 16],
                DedupRecord {
                    timestamp_ms: 5,
                    seqs: vec![(1, 2), (3, 4)],
                },
            ),
            (
                Arc::from("/orders"),
                [2u8; 16],
                DedupRecord {
                    timestamp_ms: 6,
                    seqs: vec![],
                },
            ),
        ];
        let value = encode_dedup_group(&group);
        assert_eq!(decode_dedup_group(b"k", &value).unwrap(), group);
        for len in 0..value.len() {
            assert!(decode_dedup_group(b"k", &value[..len]).is_err());
        }
        let r = encode_room("/orders", "general");
        assert_eq!(
            decode_room(b"k", &r).unwrap(),
            ("/orders".to_string(), "general".to_string())
        );
        let mut bad = encode_cursor(&CursorRecord::default());
        bad[5] ^= 1;
        assert!(decode_cursor(b"k", &bad).is_err());
    }
}
