//! What every load-test message carries, and the clock its times come from.
//!
//! A payload starts with a 32-byte [`Stamp`] and is padded with zeros to
//! `--size`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `RQLT` |
//! | 4..8 | run id (u32) |
//! | 8..12 | publisher id (u32) |
//! | 12..16 | check word over the other fields |
//! | 16..24 | per-publisher sequence, from 1 (u64) |
//! | 24..32 | intended send time, ns since the Unix epoch (u64) |
//!
//! All integers are big-endian. The check word lets a subscriber tell a
//! damaged stamp from a good one without trusting any of its fields.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the stamp at the start of every payload; the smallest `--size`.
pub const HEADER_LEN: usize = 32;

const MAGIC: u32 = u32::from_be_bytes(*b"RQLT");

/// Most publishers one run may have: their id must fit in a [`Stamp::key`].
pub const MAX_PUBLISHERS: u32 = 1 << 23;

/// Most messages one publisher may send: the sequence must fit in a key.
pub const MAX_PUBLISHER_SEQ: u64 = (1 << 40) - 1;

/// Who sent a message, which one it was, and when it was meant to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random id of the run, so runs sharing a room can be told apart.
    pub run: u32,
    /// Publisher id, unique within the run.
    pub publisher: u32,
    /// The publisher's sequence number, from 1.
    pub seq: u64,
    /// When the message was scheduled to be sent (open loop) or was sent
    /// (closed loop), in ns since the Unix epoch. Latency is measured from
    /// here, so a late send counts against the broker's figures, never for
    /// them.
    pub intended_ns: u64,
}

impl Stamp {
    /// The payload: this stamp, padded with zeros to `size` bytes (at least
    /// [`HEADER_LEN`]).
    pub fn encode(&self, size: usize) -> Bytes {
        let len = size.max(HEADER_LEN);
        let mut b = BytesMut::with_capacity(len);
        b.put_u32(MAGIC);
        b.put_u32(self.run);
        b.put_u32(self.publisher);
        b.put_u32(self.check());
        b.put_u64(self.seq);
        b.put_u64(self.intended_ns);
        b.resize(len, 0);
        b.freeze()
    }

    /// Reads the stamp at the start of `payload`; `None` if it is too short,
    /// lacks the magic or fails its check word.
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        let mut p = payload.get(..HEADER_LEN)?;
        if p.get_u32() != MAGIC {
            return None;
        }
        let run = p.get_u32();
        let publisher = p.get_u32();
        let check = p.get_u32();
        let seq = p.get_u64();
        let intended_ns = p.get_u64();
        let stamp = Stamp {
            run,
            publisher,
            seq,
            intended_ns,
        };
        (stamp.check() == check).then_some(stamp)
    }

    /// A non-zero number naming (publisher, seq) uniquely within a run, for
    /// the verifier's tables. Requires `publisher < MAX_PUBLISHERS` and
    /// `seq <= MAX_PUBLISHER_SEQ`, which the command line enforces.
    pub fn key(&self) -> u64 {
        message_key(self.publisher, self.seq)
    }

    /// FNV-1a over the fields' 32-bit halves.
    fn check(&self) -> u32 {
        let words = [
            self.run,
            self.publisher,
            self.seq as u32,
            (self.seq >> 32) as u32,
            self.intended_ns as u32,
            (self.intended_ns >> 32) as u32,
        ];
        words.iter().fold(0x811c_9dc5u32, |h, w| {
            (h ^ w).wrapping_mul(0x0100_0193) ^ (h >> 15)
        })
    }
}

/// The key of message `seq` of `publisher` (see [`Stamp::key`]).
pub fn message_key(publisher: u32, seq: u64) -> u64 {
    ((u64::from(publisher) + 1) << 40) | (seq & MAX_PUBLISHER_SEQ)
}

/// Wall-clock nanoseconds that advance with the monotonic clock: taken from
/// the system clock once, then from [`Instant`]. Stamps written by one
/// process can be compared with this clock in another process on the same
/// machine (the backlog replay does), to within the system clock's accuracy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let base_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            base: Instant::now(),
            base_unix_ns,
        }
    }

    /// Now, in ns since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `t`, in ns since the Unix epoch.
    pub fn at(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.base).as_nanos();
        self.base_unix_ns
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The instant at `ns` since the Unix epoch (clamped to the clock's
    /// start).
    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns.saturating_sub(self.base_unix_ns))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            run: 0xdead_beef,
            publisher: 7,
            seq: (1 << 35) | 12345,
            intended_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn round_trip_at_every_size() {
        for size in [0, 1, HEADER_LEN, 128, 1024, 4096] {
            let p = stamp().encode(size);
            assert_eq!(p.len(), size.max(HEADER_LEN));
            assert_eq!(Stamp::decode(&p), Some(stamp()));
            assert!(p[HEADER_LEN..].iter().all(|b| *b == 0), "padding is zeros");
        }
    }

    #[test]
    fn damaged_or_foreign_payloads_are_refused() {
        let good = stamp().encode(64);
        assert_eq!(Stamp::decode(&good[..HEADER_LEN - 1]), None, "too short");
        assert_eq!(Stamp::decode(b"hello, world"), None);
        assert_eq!(Stamp::decode(&[0u8; 64]), None);
        // Flip one bit in each field in turn: the check word catches it.
        for byte in 0..HEADER_LEN {
            let mut bad = good.to_vec();
            bad[byte] ^= 0x10;
            assert_eq!(Stamp::decode(&bad), None, "bit flip in byte {byte}");
        }
    }

    #[test]
    fn keys_are_unique_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for publisher in [0, 1, 2, MAX_PUBLISHERS - 1] {
            for seq in [0, 1, 2, MAX_PUBLISHER_SEQ] {
                let k = message_key(publisher, seq);
                assert_ne!(k, 0);
                assert!(seen.insert(k), "key of ({publisher}, {seq}) repeats");
            }
        }
    }

    #[test]
    fn clock_is_monotonic_and_invertible() {
        let c = Clock::new();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        let t = Instant::now();
        let back = c.instant(c.at(t));
        let diff = if back > t { back - t } else { t - back };
        assert!(diff < Duration::from_micros(1));
    }
}
