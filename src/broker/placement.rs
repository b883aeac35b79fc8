//! Placement: which shard owns a room. A room is placed by a hash of its
//! namespace and its *base name*, the name with every trailing `.dlq`
//! removed, so that a room and its dead-letter rooms share a shard (a dead
//! letter is appended in the same batch as the member's moved cursor; see
//! `dead_letter.rs`). The hash is SipHash with fixed keys (std's
//! `DefaultHasher::new`), so that a room's shard is the same from one run
//! of a binary to the next; recovery places the stored rooms with the same
//! function at every start, so nothing on disk depends on it.

use std::hash::{DefaultHasher, Hasher};

use super::dead_letter::SUFFIX;

/// `room` without its trailing `.dlq` suffixes.
pub fn base_name(room: &str) -> &str {
    let mut base = room;
    while let Some(rest) = base.strip_suffix(SUFFIX) {
        base = rest;
    }
    base
}

/// The shard (of `shards`) that owns room `room` of `namespace`.
pub fn shard_of(namespace: &str, room: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    h.write(namespace.as_bytes());
    // Never part of a UTF-8 name: keeps ("/a", "bc") apart from ("/ab", "c").
    h.write_u8(0xff);
    h.write(base_name(room).as_bytes());
    (h.finish() % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_rooms_share_their_rooms_shard() {
        assert_eq!(base_name("orders.dlq.dlq"), "orders");
        assert_eq!(base_name("orders"), "orders");
        for n in [2, 3, 7, 64] {
            for room in ["a", "orders", "chat.general", "x.dlq.y"] {
                let s = shard_of("/", room, n);
                assert!(s < n);
                assert_eq!(shard_of("/", &format!("{room}.dlq"), n), s);
                assert_eq!(shard_of("/", &format!("{room}.dlq.dlq"), n), s);
            }
        }
    }

    #[test]
    fn rooms_spread_and_one_shard_takes_all() {
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let s = shard_of("/orders", &format!("room-{i}"), 4);
            if let Some(c) = seen.get_mut(s) {
                *c += 1;
            }
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        assert_eq!(shard_of("/", "anything", 1), 0);
        assert_eq!(shard_of("/", "anything", 0), 0);
    }
}
