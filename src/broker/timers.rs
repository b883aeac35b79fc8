//! The members' redelivery timers (ack timeouts, nack delays, deliver-at
//! times): one heap of deadlines. At most one timer is live per member; an
//! entry whose deadline no longer matches the member's `armed` is stale and
//! skipped when it fires, and swept out when stale ones pile up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

use super::room::{MemberKey, Timers};
use crate::storage::RoomId;

/// The heap is never swept below this size.
const COMPACT_MIN: usize = 4096;

/// A member's timer.
#[derive(Debug, PartialEq, Eq)]
pub struct Timer {
    pub deadline: Instant,
    /// Insertion order, to break ties.
    gen: u64,
    pub room: RoomId,
    pub member: MemberKey,
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.gen).cmp(&(other.deadline, other.gen))
    }
}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The timers of the members one actor owns.
#[derive(Debug)]
pub struct TimerHeap {
    heap: BinaryHeap<Reverse<Timer>>,
    gen: u64,
    /// Size at which stale timers are swept out (see [`TimerHeap::compact`]).
    compact_at: usize,
}

impl Default for TimerHeap {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            gen: 0,
            compact_at: COMPACT_MIN,
        }
    }
}

impl TimerHeap {
    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(t)| t.deadline)
    }

    /// Takes the earliest timer if it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(t)| t)
    }

    /// Drops timers that can no longer fire for anyone (`live` says which
    /// still can): their member left, or re-armed for another deadline.
    /// Without this, members that come and go would leave their timers in
    /// the heap until the deadline (up to a day). Runs when the heap has
    /// doubled since the last sweep, so its cost is amortised over the
    /// timers armed in between.
    pub fn compact(&mut self, live: impl Fn(&Timer) -> bool) {
        if self.heap.len() <= self.compact_at {
            return;
        }
        let kept: Vec<Reverse<Timer>> = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .filter(|Reverse(t)| live(t))
            .collect();
        self.heap = BinaryHeap::from(kept);
        self.compact_at = (2 * self.heap.len()).max(COMPACT_MIN);
    }
}

impl Timers for TimerHeap {
    fn arm_timer(&mut self, deadline: Instant, room: RoomId, member: &MemberKey) {
        self.gen += 1;
        self.heap.push(Reverse(Timer {
            deadline,
            gen: self.gen,
            room,
            member: member.clone(),
        }));
    }
}
