//! The headers of a record (docs/cluster.md §3, "Records"): what a record
//! is and the room's state after it, so that the newest record alone tells
//! a recovering process where the room stands.
//!
//! | header | in | value |
//! |---|---|---|
//! | `Roomq-Kind` | every record | `m` messages, `s` state (stats or dedup records only), `f` floor (a purge follows), `t` tombstone |
//! | `Roomq-Seq`, `Roomq-Count` | `m` | seq of the first message, and how many |
//! | `Roomq-Last`, `Roomq-First`, `Roomq-Bytes` | every record | the room's last seq, first stored seq and stored bytes after this record |
//! | `Roomq-Time` | `m` | `timestamp_ms` of the first and last message, `a-b` |
//! | `Roomq-Dedup` | when any | base64url of the dedup parts ([`DedupPart`]) |
//! | `Roomq-Dedup-Ms` | with `Roomq-Dedup` | the earliest acceptance time of those parts; each part stores its own as a difference |
//! | `Roomq-Check` | every record | CRC-32 of the headers above (hex): headers have no checksum of their own, and a damaged header must read as damage, not as another state |
//!
//! The payload of an `m` record is `record::encode_log_batch` of its
//! messages, unchanged, with its own checksums; other records have none.
//! Numbers are decimal. Decoding never panics and reports anything
//! malformed as [`StoreError::Corrupt`].

use std::sync::Arc;

use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::storage::StoreError;

pub const KIND: &str = "Roomq-Kind";
pub const SEQ: &str = "Roomq-Seq";
pub const COUNT: &str = "Roomq-Count";
pub const LAST: &str = "Roomq-Last";
pub const FIRST: &str = "Roomq-First";
pub const BYTES: &str = "Roomq-Bytes";
pub const TIME: &str = "Roomq-Time";
pub const DEDUP: &str = "Roomq-Dedup";
pub const DEDUP_MS: &str = "Roomq-Dedup-Ms";
pub const CHECK: &str = "Roomq-Check";

/// The headers the check covers, in the order it covers them.
const CHECKED: [&str; 9] = [KIND, SEQ, COUNT, LAST, FIRST, BYTES, TIME, DEDUP, DEDUP_MS];

/// Most bytes of dedup parts (before base64) one record carries: about
/// 43 KiB of header, under JetStream's 64 KiB for a message's headers.
pub const DEDUP_BYTES_PER_RECORD: usize = 32 * 1024;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Messages (`m`).
    Messages,
    /// The room's stats or dedup records changed, no messages (`s`).
    State,
    /// A new first seq; the records below it are purged after it (`f`).
    Floor,
    /// The room is deleted (`t`).
    Tombstone,
}

impl Kind {
    fn letter(self) -> &'static str {
        match self {
            Kind::Messages => "m",
            Kind::State => "s",
            Kind::Floor => "f",
            Kind::Tombstone => "t",
        }
    }
}

/// One room's share of a dedup record: the seq this room got from the
/// publish with dedup id `id`, which is pair `index` of `of` in the
/// record's `seqs`. Recovery puts the pairs of one id back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupPart {
    /// The dedup record's namespace, when it is not the room's own.
    pub namespace: Option<Arc<str>>,
    pub id: [u8; 16],
    pub index: u32,
    pub of: u32,
    pub seq: u64,
    pub timestamp_ms: u64,
}

impl DedupPart {
    /// Bytes this part takes in `Roomq-Dedup` before base64 (an upper
    /// bound: varints are counted at their longest).
    pub fn encoded_len(&self) -> usize {
        1 + self.namespace.as_ref().map_or(0, |n| 1 + n.len().min(255)) + 16 + 5 + 5 + 10 + 10
    }
}

/// A record's headers, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    /// First message's seq (`m` only; 0 otherwise).
    pub seq: u64,
    /// Number of messages (`m` only; 0 otherwise).
    pub count: u32,
    pub last: u64,
    pub first: u64,
    pub bytes: u64,
    /// First and last message's `timestamp_ms` (`m` only).
    pub time: Option<(u64, u64)>,
    pub dedup: Vec<DedupPart>,
}

impl Head {
    /// A record that holds no messages.
    pub fn control(kind: Kind, last: u64, first: u64, bytes: u64) -> Self {
        Head {
            kind,
            seq: 0,
            count: 0,
            last,
            first,
            bytes,
            time: None,
            dedup: Vec::new(),
        }
    }

    /// The headers of this record, with the check; the caller adds the
    /// `Nats-*` ones.
    pub fn to_headers(&self) -> HeaderMap {
        let mut values: Vec<(&str, String)> = vec![(KIND, self.kind.letter().to_string())];
        if self.kind == Kind::Messages {
            values.push((SEQ, self.seq.to_string()));
            values.push((COUNT, self.count.to_string()));
        }
        values.push((LAST, self.last.to_string()));
        values.push((FIRST, self.first.to_string()));
        values.push((BYTES, self.bytes.to_string()));
        if let Some((a, b)) = self.time {
            values.push((TIME, format!("{a}-{b}")));
        }
        if let Some(base) = self.dedup.iter().map(|p| p.timestamp_ms).min() {
            values.push((
                DEDUP,
                URL_SAFE_NO_PAD.encode(encode_dedup(&self.dedup, base)),
            ));
            values.push((DEDUP_MS, base.to_string()));
        }
        let check = check_of(values.iter().map(|(n, v)| (*n, v.as_str())));
        let mut headers = HeaderMap::new();
        for (name, value) in values {
            headers.insert(name, value);
        }
        headers.insert(CHECK, format!("{check:08x}"));
        headers
    }

    /// Decodes and verifies the headers of the record `key` (a name for
    /// errors: subject and stream sequence).
    pub fn from_headers(headers: Option<&HeaderMap>, key: &str) -> Result<Head, StoreError> {
        let bad = |why: &'static str| StoreError::Corrupt {
            key: key.to_string(),
            why,
        };
        let headers = headers.ok_or_else(|| bad("record has no headers"))?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str());
        let check = get(CHECK).ok_or_else(|| bad("record has no Roomq-Check"))?;
        let want = check_of(CHECKED.iter().filter_map(|n| Some((*n, get(n)?))));
        if u32::from_str_radix(check, 16).ok() != Some(want) || check.len() != 8 {
            return Err(bad("record headers fail their check"));
        }
        let number = |name: &str| -> Result<u64, StoreError> {
            let text = get(name).ok_or_else(|| bad("record header missing"))?;
            parse_decimal(text).ok_or_else(|| bad("record header is not a number"))
        };
        let kind = match get(KIND) {
            Some("m") => Kind::Messages,
            Some("s") => Kind::State,
            Some("f") => Kind::Floor,
            Some("t") => Kind::Tombstone,
            _ => return Err(bad("unknown record kind")),
        };
        let mut head = Head::control(kind, number(LAST)?, number(FIRST)?, number(BYTES)?);
        if kind == Kind::Messages {
            head.seq = number(SEQ)?;
            head.count =
                u32::try_from(number(COUNT)?).map_err(|_| bad("record count out of range"))?;
            if head.count == 0 || head.seq.checked_add(u64::from(head.count) - 1) != Some(head.last)
            {
                return Err(bad("record seqs disagree with its last seq"));
            }
            let time = get(TIME).ok_or_else(|| bad("record has no Roomq-Time"))?;
            let (a, b) = time
                .split_once('-')
                .and_then(|(a, b)| Some((parse_decimal(a)?, parse_decimal(b)?)))
                .ok_or_else(|| bad("malformed Roomq-Time"))?;
            head.time = Some((a, b));
        }
        if let Some(text) = get(DEDUP) {
            let base = number(DEDUP_MS)?;
            let raw = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| bad("Roomq-Dedup is not base64url"))?;
            head.dedup = decode_dedup(&raw, base).ok_or_else(|| bad("malformed Roomq-Dedup"))?;
        }
        Ok(head)
    }
}

fn check_of<'a>(values: impl Iterator<Item = (&'a str, &'a str)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (name, value) in values {
        h.update(name.as_bytes());
        h.update(b":");
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
}

/// A decimal u64 without sign or spaces.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f).checked_shl(7 * i)?;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Namespace follows (length byte, bytes).
const PART_NAMESPACE: u8 = 1;

/// Parts as: flags, [namespace], id, then varints index, of, seq and
/// `timestamp_ms - base`.
fn encode_dedup(parts: &[DedupPart], base: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(DedupPart::encoded_len).sum());
    for p in parts {
        match &p.namespace {
            Some(ns) => {
                let ns = ns.as_bytes().get(..255).unwrap_or(ns.as_bytes());
                out.push(PART_NAMESPACE);
                out.push(u8::try_from(ns.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(ns);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&p.id);
        put_varint(&mut out, u64::from(p.index));
        put_varint(&mut out, u64::from(p.of));
        put_varint(&mut out, p.seq);
        put_varint(&mut out, p.timestamp_ms.saturating_sub(base));
    }
    out
}

fn decode_dedup(mut buf: &[u8], base: u64) -> Option<Vec<DedupPart>> {
    let mut parts = Vec::new();
    while let Some((&flags, rest)) = buf.split_first() {
        buf = rest;
        let namespace = match flags {
            0 => None,
            PART_NAMESPACE => {
                let (&len, rest) = buf.split_first()?;
                let name = rest.get(..usize::from(len))?;
                buf = rest.get(usize::from(len)..)?;
                Some(Arc::from(std::str::from_utf8(name).ok()?))
            }
            _ => return None,
        };
        let id: [u8; 16] = buf.get(..16)?.try_into().ok()?;
        buf = buf.get(16..)?;
        let index = u32::try_from(get_varint(&mut buf)?).ok()?;
        let of = u32::try_from(get_varint(&mut buf)?).ok()?;
        if index >= of {
            return None;
        }
        let seq = get_varint(&mut buf)?;
        let timestamp_ms = base.checked_add(get_varint(&mut buf)?)?;
        parts.push(DedupPart {
            namespace,
            id,
            index,
            of,
            seq,
            timestamp_ms,
        });
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Head {
        Head {
            kind: Kind::Messages,
            seq: 11,
            count: 10,
            last: 20,
            first: 3,
            bytes: 12_345,
            time: Some((1_000, 1_009)),
            dedup: vec![
                DedupPart {
                    namespace: None,
                    id: [7; 16],
                    index: 0,
                    of: 2,
                    seq: 12,
                    timestamp_ms: 5_000,
                },
                DedupPart {
                    namespace: Some(Arc::from("/billing")),
                    id: [8; 16],
                    index: 1,
                    of: 2,
                    seq: 20,
                    timestamp_ms: 4_000,
                },
            ],
        }
    }

    #[test]
    fn heads_round_trip() {
        let head = sample();
        let headers = head.to_headers();
        assert_eq!(Head::from_headers(Some(&headers), "k").unwrap(), head);
        let control = Head::control(Kind::Floor, 120, 121, 0);
        let headers = control.to_headers();
        assert_eq!(Head::from_headers(Some(&headers), "k").unwrap(), control);
        assert!(sample()
            .dedup
            .iter()
            .all(|p| p.encoded_len() >= encode_dedup(std::slice::from_ref(p), 0).len()));
    }

    #[test]
    fn damaged_headers_are_corrupt() {
        let headers = sample().to_headers();
        for name in CHECKED.iter().chain([&CHECK]) {
            let Some(value) = headers.get(*name) else {
                continue;
            };
            let mut damaged = headers.clone();
            let mut text = value.as_str().to_string();
            let last = text.pop().unwrap();
            text.push(if last == '1' { '2' } else { '1' });
            damaged.insert(*name, text);
            assert!(
                matches!(
                    Head::from_headers(Some(&damaged), "k"),
                    Err(StoreError::Corrupt { .. })
                ),
                "damage to {name} went unnoticed"
            );
        }
        assert!(Head::from_headers(None, "k").is_err());
        assert!(Head::from_headers(Some(&HeaderMap::new()), "k").is_err());
    }

    #[test]
    fn malformed_dedup_parts_never_panic() {
        let raw = encode_dedup(&sample().dedup, 4_000);
        for len in 0..raw.len() {
            let _ = decode_dedup(&raw[..len], 0);
        }
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0xff;
            let _ = decode_dedup(&bad, u64::MAX);
        }
        assert_eq!(decode_dedup(&raw, 4_000), Some(sample().dedup));
    }
}
