//! The loss, duplicate and order check.
//!
//! Each member (subscriber of one room) has a [`Tracker`] that records, for
//! every room seq it was handed, the [message key](crate::payload::Stamp::key)
//! it carried, and classifies each delivery as it arrives. At the end,
//! [`Expected`] (built from the publishers' confirmations: room seq → key)
//! is audited against every tracker of the room.
//!
//! The definitions, also in `docs/benchmarks.md`:
//!
//! - A delivery is *flagged* when the broker marks it as a possible repeat
//!   (`redelivered`, or `attempt > 1`).
//! - A **session** is one connection of the member; it restarts after a
//!   broker crash or a reconnect.
//! - **delivered**: distinct room seqs the member received at least once.
//! - **redelivered**: a seq received again with the same content, either
//!   flagged, or first received in an earlier session. At-least-once
//!   delivery allows both (acks are stored lazily, so a crash may replay
//!   what was acknowledged); they are reported, never a failure.
//! - **duplicate**: a seq received again in the *same* session without the
//!   flag — the broker handed the application the same message twice as new.
//! - **out_of_order**: an unflagged delivery whose seq is not above every
//!   unflagged seq already received in this session.
//! - **gap**: an unflagged delivery whose seq skips past the next one
//!   expected in this session (G3 allows no gap in these runs: nothing
//!   expires, nothing is filtered, there are no groups).
//! - **conflict**: a seq received again with *different* content.
//! - **lost**: a confirmed message whose room seq the member never received
//!   (counted per member, and as distinct messages).
//! - **mismatched**: a confirmed message whose room seq reached the member
//!   with other content.

use serde::Serialize;

/// The key recorded for a delivery whose payload is not a load-test stamp.
pub const FOREIGN: u64 = u64::MAX;

/// Seqs further than this beyond a tracker's first are counted, not stored,
/// so a wild seq from the broker cannot exhaust memory.
pub const MAX_TRACKED: u64 = 1 << 31;

/// What a tracker counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub delivered: u64,
    pub redelivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub conflicts: u64,
    /// Deliveries of seqs below the member's starting point (old messages
    /// of a resumed durable member); ignored.
    pub before_start: u64,
    /// Deliveries too far ahead to be tracked (see [`MAX_TRACKED`]).
    pub untracked: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.redelivered += o.redelivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.gaps += o.gaps;
        self.conflicts += o.conflicts;
        self.before_start += o.before_start;
        self.untracked += o.untracked;
    }
}

/// How one delivery was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Seen for the first time.
    First,
    /// Seen before; allowed (see `redelivered`).
    Redelivered,
    /// Seen before in this session, unflagged.
    Duplicate,
    /// Seen before with other content.
    Conflict,
    /// Not tracked (before the start, or too far ahead).
    Ignored,
}

/// One member's record of what it was handed.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// The first seq this member is expected to receive.
    base: u64,
    /// Key received at `base + i`; 0 = never received.
    keys: Vec<u64>,
    /// Bit `i`: `base + i` was received in the current session.
    session: Vec<u64>,
    /// Highest unflagged seq of the current session (0 = none yet).
    high: u64,
    /// Lowest seq >= base never received.
    next_missing: u64,
    pub counts: Counts,
}

impl Tracker {
    /// A tracker for a member that starts at `base` (its join's `next_seq`).
    pub fn new(base: u64) -> Tracker {
        let base = base.max(1);
        Tracker {
            base,
            keys: Vec::new(),
            session: Vec::new(),
            high: 0,
            next_missing: base,
            counts: Counts::default(),
        }
    }

    /// The first seq this member is expected to receive.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Starts a new session (the member reconnected).
    pub fn new_session(&mut self) {
        self.session.iter_mut().for_each(|w| *w = 0);
        self.high = 0;
    }

    /// Every seq in `base..next_missing()` has been received.
    pub fn next_missing(&self) -> u64 {
        self.next_missing
    }

    /// The key received at `seq`, 0 if none (or not tracked).
    pub fn key_at(&self, seq: u64) -> u64 {
        self.index(seq)
            .and_then(|i| self.keys.get(i).copied())
            .unwrap_or(0)
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let off = seq.checked_sub(self.base)?;
        if off >= MAX_TRACKED {
            return None;
        }
        usize::try_from(off).ok()
    }

    /// Records one delivery of `seq` carrying `key`; `flagged` if the broker
    /// marked it as a possible repeat.
    pub fn on_delivery(&mut self, seq: u64, key: u64, flagged: bool) -> Outcome {
        if seq < self.base {
            self.counts.before_start += 1;
            return Outcome::Ignored;
        }
        let Some(i) = self.index(seq) else {
            self.counts.untracked += 1;
            return Outcome::Ignored;
        };
        if i >= self.keys.len() {
            self.keys.resize(i + 1, 0);
        }
        let word = i / 64;
        if word >= self.session.len() {
            self.session.resize(word + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        let in_session = self.session.get(word).is_some_and(|w| w & bit != 0);
        let Some(slot) = self.keys.get_mut(i) else {
            return Outcome::Ignored;
        };
        let outcome = if *slot == 0 {
            *slot = key;
            self.counts.delivered += 1;
            Outcome::First
        } else if *slot != key {
            self.counts.conflicts += 1;
            Outcome::Conflict
        } else if flagged || !in_session {
            self.counts.redelivered += 1;
            Outcome::Redelivered
        } else {
            self.counts.duplicates += 1;
            Outcome::Duplicate
        };
        if let Some(w) = self.session.get_mut(word) {
            *w |= bit;
        }
        if !flagged && matches!(outcome, Outcome::First | Outcome::Redelivered) {
            if self.high != 0 {
                if seq <= self.high {
                    self.counts.out_of_order += 1;
                } else if seq > self.high + 1 {
                    self.counts.gaps += 1;
                }
            }
            self.high = self.high.max(seq);
        }
        while self.key_at(self.next_missing) != 0 {
            self.next_missing += 1;
        }
        outcome
    }
}

/// The confirmed messages of one room: room seq → key.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Index `seq`; 0 = no confirmed message known at that seq.
    keys: Vec<u64>,
    /// Two confirmations named the same seq with different messages.
    pub conflicts: u64,
    /// Highest confirmed seq.
    pub last: u64,
}

impl Expected {
    /// Records that the message `key` was confirmed at `seq`.
    pub fn insert(&mut self, seq: u64, key: u64) {
        let Ok(i) = usize::try_from(seq) else {
            self.conflicts += 1;
            return;
        };
        if seq == 0 || seq > MAX_TRACKED * 4 {
            self.conflicts += 1;
            return;
        }
        if i >= self.keys.len() {
            self.keys.resize(i + 1, 0);
        }
        if let Some(slot) = self.keys.get_mut(i) {
            if *slot != 0 && *slot != key {
                self.conflicts += 1;
            }
            *slot = key;
        }
        self.last = self.last.max(seq);
    }

    /// The confirmed (seq, key) pairs, in seq order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != 0)
            .map(|(i, k)| (i as u64, *k))
    }
}

/// What the audit of one member found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Confirmed messages this member should have received.
    pub expected: u64,
    pub lost: u64,
    pub mismatched: u64,
}

impl Audit {
    pub fn add(&mut self, o: &Audit) {
        self.expected += o.expected;
        self.lost += o.lost;
        self.mismatched += o.mismatched;
    }
}

/// Checks every confirmed message at or after the member's start against
/// what it received; calls `on_lost(seq)` for each one missing.
pub fn audit(tracker: &Tracker, expected: &Expected, mut on_lost: impl FnMut(u64)) -> Audit {
    let mut a = Audit::default();
    for (seq, key) in expected.iter().filter(|(s, _)| *s >= tracker.base()) {
        a.expected += 1;
        match tracker.key_at(seq) {
            0 => {
                a.lost += 1;
                on_lost(seq);
            }
            got if got != key => a.mismatched += 1,
            _ => {}
        }
    }
    a
}

/// Checks that the member received every seq of `tracker.base()..=last`
/// (when no confirmations are known: a replay of a stored backlog).
pub fn audit_range(tracker: &Tracker, last: u64, mut on_lost: impl FnMut(u64)) -> Audit {
    let mut a = Audit::default();
    for seq in tracker.base()..=last {
        a.expected += 1;
        if tracker.key_at(seq) == 0 {
            a.lost += 1;
            on_lost(seq);
        }
    }
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn k(seq: u64) -> u64 {
        1000 + seq
    }

    fn feed(t: &mut Tracker, seqs: &[u64]) -> Vec<Outcome> {
        seqs.iter()
            .map(|s| t.on_delivery(*s, k(*s), false))
            .collect()
    }

    #[test]
    fn an_in_order_stream_is_clean() {
        let mut t = Tracker::new(1);
        assert!(feed(&mut t, &[1, 2, 3, 4, 5])
            .iter()
            .all(|o| *o == Outcome::First));
        assert_eq!(
            t.counts,
            Counts {
                delivered: 5,
                ..Counts::default()
            }
        );
        assert_eq!(t.next_missing(), 6);
    }

    #[test]
    fn an_unflagged_repeat_in_the_same_session_is_a_duplicate() {
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 2, 3]);
        assert_eq!(t.on_delivery(2, k(2), false), Outcome::Duplicate);
        assert_eq!(t.counts.duplicates, 1);
        assert_eq!(t.counts.out_of_order, 0, "counted once, as a duplicate");
        assert_eq!(t.counts.delivered, 3);
    }

    #[test]
    fn flagged_repeats_and_repeats_after_a_reconnect_are_redeliveries() {
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 2, 3, 4]);
        assert_eq!(t.on_delivery(2, k(2), true), Outcome::Redelivered);
        t.new_session();
        // After a crash: the unacked tail comes back flagged, then the
        // stored cursor's first deliveries repeat what was already seen.
        assert_eq!(t.on_delivery(3, k(3), true), Outcome::Redelivered);
        assert_eq!(t.on_delivery(4, k(4), false), Outcome::Redelivered);
        assert_eq!(t.on_delivery(5, k(5), false), Outcome::First);
        assert_eq!(t.counts.redelivered, 3);
        assert_eq!(t.counts.duplicates, 0);
        assert_eq!(t.counts.out_of_order, 0);
        assert_eq!(t.counts.gaps, 0);
        // But a second unflagged copy in the new session is a duplicate.
        assert_eq!(t.on_delivery(4, k(4), false), Outcome::Duplicate);
    }

    #[test]
    fn reordering_and_skips_are_counted() {
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 3, 2, 4, 7]);
        assert_eq!(t.counts.gaps, 2, "1→3 and 4→7 skip");
        assert_eq!(t.counts.out_of_order, 1, "2 after 3");
        assert_eq!(t.counts.delivered, 5);
        assert_eq!(t.next_missing(), 5);
    }

    #[test]
    fn flagged_deliveries_do_not_count_for_order() {
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 2, 3]);
        t.on_delivery(1, k(1), true);
        t.on_delivery(4, k(4), false);
        assert_eq!(t.counts.out_of_order, 0);
        assert_eq!(t.counts.gaps, 0);
    }

    #[test]
    fn other_content_at_a_seen_seq_is_a_conflict() {
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 2]);
        assert_eq!(t.on_delivery(2, 99, true), Outcome::Conflict);
        assert_eq!(t.counts.conflicts, 1);
        assert_eq!(t.key_at(2), k(2), "the first content is kept");
    }

    #[test]
    fn seqs_before_the_start_or_far_ahead_are_ignored() {
        let mut t = Tracker::new(10);
        assert_eq!(t.on_delivery(9, k(9), true), Outcome::Ignored);
        assert_eq!(t.on_delivery(10 + MAX_TRACKED, 1, false), Outcome::Ignored);
        assert_eq!(t.counts.before_start, 1);
        assert_eq!(t.counts.untracked, 1);
        assert_eq!(t.counts.delivered, 0);
        assert_eq!(t.next_missing(), 10);
    }

    #[test]
    fn audit_counts_lost_and_mismatched_per_member() {
        let mut e = Expected::default();
        for s in 1..=6 {
            e.insert(s, k(s));
        }
        // Seq 7 was stored but never confirmed: not expected.
        let mut t = Tracker::new(1);
        feed(&mut t, &[1, 2, 4, 6, 7]);
        t.on_delivery(5, 55, false);
        let mut lost = Vec::new();
        let a = audit(&t, &e, |s| lost.push(s));
        assert_eq!(
            a,
            Audit {
                expected: 6,
                lost: 1,
                mismatched: 1
            }
        );
        assert_eq!(lost, vec![3]);
        // A member that joined at seq 4 is only held to 4..=6.
        let mut late = Tracker::new(4);
        feed(&mut late, &[4, 5, 6]);
        assert_eq!(audit(&late, &e, |_| {}).expected, 3);
        assert_eq!(audit(&late, &e, |_| {}).lost, 0);
    }

    #[test]
    fn expected_notices_two_messages_at_one_seq() {
        let mut e = Expected::default();
        e.insert(1, k(1));
        e.insert(1, k(1));
        assert_eq!(e.conflicts, 0, "the same confirmation twice is fine");
        e.insert(1, 5);
        e.insert(0, 5);
        assert_eq!(e.conflicts, 2);
        assert_eq!(e.last, 1);
    }

    #[test]
    fn audit_range_checks_a_replayed_backlog() {
        let mut t = Tracker::new(3);
        feed(&mut t, &[3, 4, 6]);
        let mut lost = Vec::new();
        let a = audit_range(&t, 6, |s| lost.push(s));
        assert_eq!((a.expected, a.lost), (4, 1));
        assert_eq!(lost, vec![5]);
    }
}
