//! Coalescing of acknowledgements, free of I/O: [`plan_acks`] turns the
//! seqs acknowledged since the last flush into as few `Ack` frames as the
//! protocol allows, and [`AckQueue`] holds them until then.
//!
//! `Delivery::ack()` does not send a frame: it records the seq in its
//! subscription's queue, and the subscription sends what has gathered
//! within the client's `ack_flush` (a few ms), or at once when the queue
//! reaches a quarter of the membership's `max_in_flight` (so the broker's
//! in-flight window never waits on the timer), or on `leave()`, `close()`
//! and `Subscription::flush_acks()`.
//!
//! Where the acked seqs lie below everything still outstanding, the frame
//! uses the cumulative `up_to` instead of listing them. `up_to`
//! acknowledges *every delivered seq* at or below it — including one the
//! application still holds (or that waits in the subscription's queue) and
//! one it gave back with a nack — so it is used only below the lowest such
//! seq, and never for a group's consumer, whose `up_to` would also cover
//! what the broker redelivers to the group (docs/protocol.md, "Ack").

use tokio::time::Instant;
use uuid::Uuid;

/// The broker's limit of seqs in one `Ack` (more is `INVALID_REQUEST`).
pub(crate) const MAX_SEQS_PER_ACK: usize = 10_000;

/// One `Ack` frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckPlan {
    /// Cumulative: every delivered seq ≤ `up_to` (0 = none).
    pub(crate) up_to: u64,
    /// Individual seqs, ascending.
    pub(crate) seqs: Vec<u64>,
}

/// The `Ack` frames for `pending`. `lowest_outstanding` is the lowest seq
/// the application holds or gave back (`None`: nothing); `cumulative` is
/// false for a group's consumer. Seq 0 (never a stored message) and
/// repeats are dropped; at most `max_seqs` seqs go in one frame.
pub(crate) fn plan_acks(
    mut pending: Vec<u64>,
    lowest_outstanding: Option<u64>,
    cumulative: bool,
    max_seqs: usize,
) -> Vec<AckPlan> {
    pending.sort_unstable();
    pending.dedup();
    pending.retain(|s| *s > 0);
    if pending.is_empty() {
        return Vec::new();
    }
    let mut up_to = 0;
    let mut rest = pending.as_slice();
    if cumulative {
        let below = match lowest_outstanding {
            Some(low) => pending.partition_point(|s| *s < low),
            None => pending.len(),
        };
        // Worth it only where it replaces more than one seq.
        if below > 1 {
            if let (Some(last), Some(after)) = (pending.get(below - 1), pending.get(below..)) {
                up_to = *last;
                rest = after;
            }
        }
    }
    if rest.is_empty() {
        return vec![AckPlan {
            up_to,
            seqs: Vec::new(),
        }];
    }
    rest.chunks(max_seqs.max(1))
        .enumerate()
        .map(|(i, chunk)| AckPlan {
            up_to: if i == 0 { up_to } else { 0 },
            seqs: chunk.to_vec(),
        })
        .collect()
}

/// The acks of one subscription waiting for the next flush, with the
/// connection (`C`) they are to be sent on.
#[derive(Debug)]
pub(crate) struct AckQueue<C> {
    /// The session the acks were made on, and its connection. An `Ack`
    /// names seqs delivered on that session, so it is sent there or not at
    /// all: after a reconnect the broker redelivers whatever it had not
    /// seen acknowledged, and the SDK acks those copies again (see
    /// [`crate::filter::Verdict::Reack`]). Sent on the new connection
    /// instead, a seq not redelivered yet would get the whole frame
    /// refused.
    session: Option<(Uuid, C)>,
    seqs: Vec<u64>,
    /// When the oldest of `seqs` was queued.
    since: Option<Instant>,
}

impl<C> Default for AckQueue<C> {
    fn default() -> Self {
        AckQueue {
            session: None,
            seqs: Vec::new(),
            since: None,
        }
    }
}

impl<C: Clone> AckQueue<C> {
    /// Queues `seq`, acked on `session` (over `conn`) at `now`; returns
    /// whether the flusher should look again (the queue was empty, or
    /// reached `batch`). Acks of an earlier session still queued are
    /// dropped.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        session: Uuid,
        conn: &C,
        now: Instant,
        batch: usize,
    ) -> bool {
        if self.session.as_ref().map(|(s, _)| *s) != Some(session) {
            self.seqs.clear();
            self.since = None;
            self.session = Some((session, conn.clone()));
        }
        self.seqs.push(seq);
        let first = self.since.is_none();
        if first {
            self.since = Some(now);
        }
        first || self.seqs.len() >= batch
    }

    /// When the queue is due to be sent: `None` if it is empty, at once if
    /// it holds `batch` acks, else `flush` after the oldest.
    pub(crate) fn due(&self, flush: std::time::Duration, batch: usize) -> Option<Instant> {
        let since = self.since?;
        if self.seqs.len() >= batch {
            Some(since)
        } else {
            Some(since + flush)
        }
    }

    /// Empties the queue: the connection its acks are to be sent on, and
    /// the acks.
    pub(crate) fn take(&mut self) -> Option<(C, Vec<u64>)> {
        self.since = None;
        let seqs = std::mem::take(&mut self.seqs);
        let (_, conn) = self.session.take()?;
        Some((conn, seqs)).filter(|(_, seqs)| !seqs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(up_to: u64, seqs: &[u64]) -> AckPlan {
        AckPlan {
            up_to,
            seqs: seqs.to_vec(),
        }
    }

    #[test]
    fn acks_below_everything_outstanding_become_one_cumulative_ack() {
        let plans = plan_acks(vec![3, 1, 2, 4], None, true, MAX_SEQS_PER_ACK);
        assert_eq!(plans, vec![plan(4, &[])]);
    }

    #[test]
    fn up_to_stops_below_a_held_or_given_back_seq() {
        // 5 is held or nacked: 1..=3 go cumulatively, 6 and 7 are listed.
        let plans = plan_acks(vec![1, 2, 3, 6, 7], Some(5), true, MAX_SEQS_PER_ACK);
        assert_eq!(plans, vec![plan(3, &[6, 7])]);
        // Nothing below it: everything listed.
        let plans = plan_acks(vec![6, 7], Some(5), true, MAX_SEQS_PER_ACK);
        assert_eq!(plans, vec![plan(0, &[6, 7])]);
        // The outstanding seq itself is never covered, even if listed
        // (an ack of a copy the filter handed twice in unordered mode).
        let plans = plan_acks(vec![1, 2, 5], Some(5), true, MAX_SEQS_PER_ACK);
        assert_eq!(plans, vec![plan(2, &[5])]);
    }

    #[test]
    fn a_single_seq_is_listed_not_sent_as_up_to() {
        assert_eq!(
            plan_acks(vec![4], None, true, MAX_SEQS_PER_ACK),
            vec![plan(0, &[4])]
        );
        assert_eq!(
            plan_acks(vec![4, 9], Some(5), true, MAX_SEQS_PER_ACK),
            vec![plan(0, &[4, 9])]
        );
    }

    #[test]
    fn a_group_consumer_never_acks_cumulatively() {
        assert_eq!(
            plan_acks(vec![1, 2, 3], None, false, MAX_SEQS_PER_ACK),
            vec![plan(0, &[1, 2, 3])]
        );
    }

    #[test]
    fn repeats_and_zero_are_dropped_and_nothing_plans_nothing() {
        assert_eq!(
            plan_acks(vec![7, 0, 7, 9], Some(8), true, MAX_SEQS_PER_ACK),
            vec![plan(0, &[7, 9])]
        );
        assert!(plan_acks(vec![], None, true, MAX_SEQS_PER_ACK).is_empty());
        assert!(plan_acks(vec![0], None, true, MAX_SEQS_PER_ACK).is_empty());
    }

    #[test]
    fn at_most_max_seqs_per_frame_and_up_to_only_in_the_first() {
        let seqs: Vec<u64> = (0..25_000).map(|i| 2 * i + 10).collect();
        let plans = plan_acks(seqs.clone(), Some(1), true, MAX_SEQS_PER_ACK);
        assert_eq!(
            plans.iter().map(|p| p.seqs.len()).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_000]
        );
        assert!(plans.iter().all(|p| p.up_to == 0));
        let mut all: Vec<u64> = plans.into_iter().flat_map(|p| p.seqs).collect();
        all.sort_unstable();
        assert_eq!(all, seqs);
        // With a cumulative part: it goes in the first frame only.
        let plans = plan_acks(vec![1, 2, 3, 10, 11, 12], Some(5), true, 2);
        assert_eq!(plans, vec![plan(3, &[10, 11]), plan(0, &[12])]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_due_after_the_flush_bound_or_at_once_when_full() {
        let flush = Duration::from_millis(5);
        let session = Uuid::now_v7();
        let mut q = AckQueue::default();
        assert_eq!(q.due(flush, 3), None);
        let t0 = Instant::now();
        assert!(
            q.push(1, session, &"conn", t0, 3),
            "the first ack starts the timer"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!q.push(2, session, &"conn", Instant::now(), 3));
        // Due `flush` after the oldest ack, not the newest.
        assert_eq!(q.due(flush, 3), Some(t0 + flush));
        assert!(
            q.push(3, session, &"conn", Instant::now(), 3),
            "full: flush now"
        );
        assert_eq!(q.due(flush, 3), Some(t0));
        assert_eq!(q.take(), Some(("conn", vec![1, 2, 3])));
        assert_eq!(q.due(flush, 3), None);
        assert_eq!(q.take(), None);
    }

    #[test]
    fn acks_of_an_earlier_session_are_dropped() {
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        let mut q = AckQueue::default();
        q.push(1, old, &"old", now, 100);
        q.push(2, old, &"old", now, 100);
        assert!(
            q.push(3, new, &"new", now, 100),
            "a new session starts anew"
        );
        assert_eq!(q.take(), Some(("new", vec![3])));
    }
}
