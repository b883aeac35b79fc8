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
//!
//! Shared mode is for a consumer of a group. The group's messages are split
//! between its consumers, so one consumer sees a subset of the seqs, with
//! holes; and when a consumer leaves, its unacknowledged messages move to
//! the others, so a consumer may get a lower seq after a higher one. Order
//! within a group is the broker's business (per ordering key), so this mode
//! only drops what the application must not see twice: a copy of a message
//! it still holds, or one it has already acknowledged.
//!
//! Volatile deliveries (seq 0, never stored) do not pass through the filter
//! at all: there is nothing to order, hold or acknowledge.

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

/// How a [`Filter`] treats deliveries; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Seq order; nothing seen twice unless given back.
    Ordered,
    /// Everything except what was already acknowledged.
    Unordered,
    /// A consumer of a group: everything except what was acknowledged or
    /// is still held, in whatever order the broker sends it.
    Shared,
}

/// In shared mode, how many acknowledged seqs above the floor are
/// remembered. The floor is the group's cursor, which another consumer can
/// hold back for as long as it keeps a message; past this many, the oldest
/// are forgotten (a redelivery of one would then be handed over again,
/// which at-least-once allows).
const SHARED_ACKED_CAP: usize = 65_536;

/// The filter's state for one subscription.
#[derive(Debug)]
pub struct Filter {
    mode: Mode,
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
        Filter::with_mode(if ordered {
            Mode::Ordered
        } else {
            Mode::Unordered
        })
    }

    /// A filter in any mode.
    pub fn with_mode(mode: Mode) -> Self {
        Filter {
            mode,
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
        match self.mode {
            Mode::Ordered => {
                if self.held.contains_key(&seq) {
                    return Verdict::Drop;
                }
                if seq <= self.last_handed && !self.released.remove(&seq) {
                    return Verdict::Drop;
                }
            }
            Mode::Shared => {
                if self.held.contains_key(&seq) {
                    return Verdict::Drop;
                }
                self.released.remove(&seq);
            }
            Mode::Unordered => {
                self.released.remove(&seq);
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
        if self.mode == Mode::Shared && self.acked.len() > SHARED_ACKED_CAP {
            self.acked.pop_first();
        }
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

    /// The broker moved the cursor past `from_seq..=to_seq` because those
    /// messages were deleted (retention or a purge): nothing there will be
    /// delivered again, so stop holding any of them and treat everything
    /// below `to_seq + 1` as done.
    pub fn skipped(&mut self, from_seq: u64, to_seq: u64) {
        if from_seq <= to_seq {
            let gone: Vec<u64> = self
                .held
                .range(from_seq..=to_seq)
                .map(|(s, _)| *s)
                .collect();
            for s in gone {
                self.held.remove(&s);
            }
            let gone: Vec<u64> = self.released.range(from_seq..=to_seq).copied().collect();
            for s in gone {
                self.released.remove(&s);
            }
        }
        self.advance_floor(to_seq.saturating_add(1));
    }

    /// The mode it was made with.
    pub fn mode(&self) -> Mode {
        self.mode
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

    /// The lowest seq a cumulative ack must not cover: one handed over and
    /// not yet acknowledged (held by the application, or still in the
    /// subscription's queue), or one given back or held too long, which
    /// the broker will redeliver. `None` if there is none.
    pub fn lowest_outstanding(&self) -> Option<u64> {
        let held = self.held.keys().next().copied();
        let released = self.released.first().copied();
        match (held, released) {
            (Some(h), Some(r)) => Some(h.min(r)),
            (h, r) => h.or(r),
        }
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

    #[test]
    fn shared_hands_holes_and_lower_seqs_after_a_handoff() {
        let now = Instant::now();
        let mut f = Filter::with_mode(Mode::Shared);
        // This consumer's share of the group: a subset, with holes.
        assert_eq!(f.offer(2, now), Verdict::Hand);
        assert_eq!(f.offer(5, now), Verdict::Hand);
        assert_eq!(f.offer(9, now), Verdict::Hand);
        // Another consumer left: its unacked 3 and 4 move here, after 9.
        assert_eq!(f.offer(3, now), Verdict::Hand);
        assert_eq!(f.offer(4, now), Verdict::Hand);
        // A copy of something still held (e.g. after a reconnect): dropped.
        assert_eq!(f.offer(5, now), Verdict::Drop);
        f.acked(5);
        assert_eq!(f.offer(5, now), Verdict::Reack);
        // Given back: its redelivery comes through, once.
        f.released(9);
        assert_eq!(f.offer(9, now), Verdict::Hand);
        assert_eq!(f.offer(9, now), Verdict::Drop);
        assert_eq!(f.held(), vec![2, 3, 4, 9]);
    }

    #[test]
    fn ordered_mode_would_lose_a_group_handoff() {
        // Why groups do not use ordered mode: the lower seqs moved here
        // after a handoff would be dropped as stale.
        let now = Instant::now();
        let mut f = Filter::new(true);
        assert_eq!(f.offer(9, now), Verdict::Hand);
        assert_eq!(f.offer(3, now), Verdict::Drop);
    }

    #[test]
    fn shared_forgets_the_oldest_acks_past_its_cap() {
        let now = Instant::now();
        let mut f = Filter::with_mode(Mode::Shared);
        // Seq 1 is held by another consumer: the group's floor stays at 1.
        let last = 2 + SHARED_ACKED_CAP as u64;
        for s in 2..=last {
            f.offer(s, now);
            f.acked(s);
        }
        assert_eq!(f.acked.len(), SHARED_ACKED_CAP);
        assert_eq!(f.offer(2, now), Verdict::Hand, "forgotten: handed again");
        assert_eq!(f.offer(last, now), Verdict::Reack);
    }

    #[test]
    fn the_lowest_outstanding_seq_is_held_or_given_back() {
        let now = Instant::now();
        let mut f = Filter::new(true);
        assert_eq!(f.lowest_outstanding(), None);
        for s in 1..=6 {
            f.offer(s, now);
        }
        f.acked(1);
        f.acked(2);
        assert_eq!(f.lowest_outstanding(), Some(3), "handed, not acked");
        f.released(4);
        f.acked(3);
        assert_eq!(f.lowest_outstanding(), Some(4), "given back");
        f.acked(5);
        f.acked(6);
        assert_eq!(
            f.lowest_outstanding(),
            Some(4),
            "until redelivered and acked"
        );
        assert_eq!(f.offer(4, now), Verdict::Hand);
        f.acked(4);
        assert_eq!(f.lowest_outstanding(), None);
    }

    #[test]
    fn a_gap_releases_held_seqs_and_moves_the_floor() {
        let now = Instant::now();
        let mut f = Filter::new(true);
        for s in 1..=4 {
            assert_eq!(f.offer(s, now), Verdict::Hand);
        }
        f.released(4);
        // Retention deleted 1..=5; 1..=4 were delivered, 5 never was.
        f.skipped(1, 5);
        assert!(f.held().is_empty());
        assert!(f.released.is_empty());
        assert_eq!(f.acked_floor, 6);
        assert_eq!(f.offer(5, now), Verdict::Reack);
        assert_eq!(f.offer(6, now), Verdict::Hand);
        // A gap the floor is already past changes nothing.
        f.skipped(2, 3);
        assert_eq!(f.acked_floor, 6);
        assert_eq!(f.held(), vec![6]);
    }
}
