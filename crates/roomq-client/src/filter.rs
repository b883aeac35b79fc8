//! The per-subscription delivery filter: a state machine with no I/O that
//! decides, for each delivery the broker pushes, whether the application
//! sees it. Unit-tested on its own.
//!
//! Ordered mode (the default for durable members) promises the application:
//! - messages in seq order;
//! - never a message it has already acknowledged (the SDK acks such a
//!   redelivery again, silently);
//! - never a second copy of a message it is still holding;
//! - a redelivery only when the application gave the message back (nack),
//!   or held it past the hold limit, or the SDK itself restarted.
//!
//! Unordered mode passes everything through except messages already
//! acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the application.
    Hand,
    /// Drop it, and acknowledge it again: the application already did.
    Reack,
    /// Drop it: the application holds it, or it is stale.
    Drop,
}

/// The filter's state for one subscription.
#[derive(Debug)]
pub struct Filter {
    ordered: bool,
    /// Every seq below this is acknowledged by the application.
    acked_floor: u64,
    /// Seqs at or above `acked_floor` the application acknowledged.
    acked: BTreeSet<u64>,
    /// Seqs handed to the application and not yet acked or nacked, with
    /// when they were handed.
    held: BTreeMap<u64, Instant>,
    /// Highest seq handed out (ordered mode hands nothing at or below it,
    /// except seqs given back).
    last_handed: u64,
    /// Seqs the application gave back (nack) or held too long: their
    /// redelivery is let through once.
    released: BTreeSet<u64>,
}

impl Filter {
    /// A filter in ordered or unordered mode.
    pub fn new(ordered: bool) -> Self {
        Filter {
            ordered,
            acked_floor: 1,
            acked: BTreeSet::new(),
            held: BTreeMap::new(),
            last_handed: 0,
            released: BTreeSet::new(),
        }
    }

    /// Decides about a delivery of `seq` arriving at `now`.
    pub fn offer(&mut self, seq: u64, now: Instant) -> Verdict {
        if seq < self.acked_floor || self.acked.contains(&seq) {
            return Verdict::Reack;
        }
        if self.ordered {
            if self.held.contains_key(&seq) {
                return Verdict::Drop;
            }
            if seq <= self.last_handed && !self.released.remove(&seq) {
                return Verdict::Drop;
            }
        }
        self.held.insert(seq, now);
        self.last_handed = self.last_handed.max(seq);
        Verdict::Hand
    }

    /// The application acknowledged `seq`.
    pub fn acked(&mut self, seq: u64) {
        self.held.remove(&seq);
        self.released.remove(&seq);
        if seq >= self.acked_floor {
            self.acked.insert(seq);
        }
        self.compact();
    }

    /// The application acknowledged everything up to `up_to`.
    pub fn acked_up_to(&mut self, up_to: u64) {
        let keep = self.held.split_off(&(up_to + 1));
        self.held = keep;
        self.released = self.released.split_off(&(up_to + 1));
        self.advance_floor(up_to + 1);
    }

    /// The broker reported that every seq below `next_seq` is acknowledged.
    pub fn advance_floor(&mut self, next_seq: u64) {
        if next_seq > self.acked_floor {
            self.acked_floor = next_seq;
            self.acked = self.acked.split_off(&next_seq);
        }
        self.compact();
    }

    /// The application gave `seq` back: its redelivery will be let through.
    pub fn released(&mut self, seq: u64) {
        if self.held.remove(&seq).is_some() {
            self.released.insert(seq);
        }
    }

    /// Seqs held since before `cutoff` are released (the application kept
    /// them too long); returns them. Others are returned by [`Self::held`].
    pub fn expire_held(&mut self, cutoff: Instant) -> Vec<u64> {
        let old: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, t)| **t < cutoff)
            .map(|(s, _)| *s)
            .collect();
        for s in &old {
            self.held.remove(s);
            self.released.insert(*s);
        }
        old
    }

    /// Seqs the application holds now.
    pub fn held(&self) -> Vec<u64> {
        self.held.keys().copied().collect()
    }

    /// Moves the floor past acked seqs that are contiguous with it.
    fn compact(&mut self) {
        while self.acked.first() == Some(&self.acked_floor) {
            self.acked.pop_first();
            self.acked_floor += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ordered_hands_each_message_once_in_order() {
        let now = Instant::now();
        let mut f = Filter::new(true);
        assert_eq!(f.offer(1, now), Verdict::Hand);
        assert_eq!(f.offer(2, now), Verdict::Hand);
        // A redelivery of something held (e.g. after a reconnect): dropped.
        assert_eq!(f.offer(1, now), Verdict::Drop);
        f.acked(1);
        // A redelivery of something acked: acked again, not handed.
        assert_eq!(f.offer(1, now), Verdict::Reack);
        f.acked(2);
        assert_eq!(f.offer(2, now), Verdict::Reack);
        assert_eq!(f.offer(3, now), Verdict::Hand);
        assert_eq!(f.held(), vec![3]);
    }

    #[test]
    fn nacked_and_expired_messages_come_back_once() {
        let t0 = Instant::now();
        let mut f = Filter::new(true);
        for s in 1..=3 {
            assert_eq!(f.offer(s, t0), Verdict::Hand);
        }
        f.released(2);
        assert_eq!(f.offer(2, t0), Verdict::Hand);
        assert_eq!(f.offer(2, t0), Verdict::Drop);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(f.expire_held(later), vec![1, 2, 3]);
        assert_eq!(f.offer(3, later), Verdict::Hand);
        assert_eq!(f.offer(3, later), Verdict::Drop);
    }

    #[test]
    fn the_floor_follows_acks_and_bounds_memory() {
        let now = Instant::now();
        let mut f = Filter::new(true);
        for s in 1..=100 {
            f.offer(s, now);
        }
        for s in (1..=100).rev() {
            f.acked(s);
        }
        assert_eq!(f.acked_floor, 101);
        assert!(f.acked.is_empty());
        f.acked_up_to(150);
        assert_eq!(f.acked_floor, 151);
        assert_eq!(f.offer(120, now), Verdict::Reack);
        f.advance_floor(10);
        assert_eq!(f.acked_floor, 151);
    }

    #[test]
    fn unordered_passes_redeliveries_but_not_acked_ones() {
        let now = Instant::now();
        let mut f = Filter::new(false);
        assert_eq!(f.offer(5, now), Verdict::Hand);
        assert_eq!(f.offer(5, now), Verdict::Hand);
        assert_eq!(f.offer(4, now), Verdict::Hand);
        f.acked(5);
        assert_eq!(f.offer(5, now), Verdict::Reack);
    }
}
