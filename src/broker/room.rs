//! A room and its members: the log's recent tail held in memory, and for each
//! member the cursor, the unacknowledged deliveries and the rules that decide
//! what it gets next. Nothing here touches a socket: deliveries go out
//! through the [`Outlet`] trait, so the rules can be tested on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::storage::{CursorRecord, RoomId, StoredMessage};

/// How a member is found in its room.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberKey {
    /// Durable, by name; survives sessions and restarts.
    Durable(Arc<str>),
    /// Ephemeral, by the session holding it and the label it joined with.
    Ephemeral(Uuid, Arc<str>),
}

/// One delivered, unacknowledged message of a member.
#[derive(Debug, Clone, Copy)]
pub struct Unacked {
    /// Deliveries so far.
    pub attempts: u32,
    /// When it is due for redelivery; `None` while it is waiting to be
    /// redelivered (it is in `Member::due` then) or the member is detached.
    pub deadline: Option<Instant>,
}

/// Where a member's deliveries go.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub session: Uuid,
    /// The subscription label the session joined with; deliveries carry it.
    pub label: Arc<str>,
}

/// A reader of a room.
#[derive(Debug)]
pub struct Member {
    pub durable: bool,
    /// Client id of the session that last joined it (for `except_self`).
    pub owner: Option<Arc<str>>,
    pub attached: Option<Attachment>,
    /// The next seq to deliver for the first time.
    pub next_seq: u64,
    /// Delivered and unacknowledged. Every seq below `next_seq` that is not
    /// here is acknowledged (or was filtered out for this member).
    pub unacked: BTreeMap<u64, Unacked>,
    /// Unacknowledged seqs due for redelivery now, in seq order.
    pub due: BTreeSet<u64>,
    pub max_in_flight: u32,
    pub ack_timeout: Duration,
    /// Set while the member's new cursor is being written: nothing is
    /// delivered until the join is confirmed.
    pub joining: bool,
    /// Deadline of the one timer armed for this member, if any. Timers are
    /// per member, not per delivery, so the timer heap stays as small as the
    /// number of members no matter how many deliveries are in flight.
    pub armed: Option<Instant>,
}

impl Member {
    /// A member starting at `next_seq` with nothing in flight.
    pub fn new(durable: bool, next_seq: u64, max_in_flight: u32, ack_timeout: Duration) -> Self {
        Member {
            durable,
            owner: None,
            attached: None,
            next_seq,
            unacked: BTreeMap::new(),
            due: BTreeSet::new(),
            max_in_flight,
            ack_timeout,
            joining: false,
            armed: None,
        }
    }

    /// A durable member restored from its stored cursor. Everything it had in
    /// flight is due for redelivery once it is joined again.
    pub fn from_record(rec: &CursorRecord, max_in_flight: u32, ack_timeout: Duration) -> Self {
        let mut m = Member::new(true, rec.next_seq.max(1), max_in_flight, ack_timeout);
        m.owner = rec.owner.as_deref().map(Arc::from);
        for (seq, attempts) in &rec.unacked {
            if *seq < m.next_seq {
                m.unacked.insert(
                    *seq,
                    Unacked {
                        attempts: *attempts,
                        deadline: None,
                    },
                );
                m.due.insert(*seq);
            }
        }
        m
    }

    /// The stored form of this member's position.
    pub fn record(&self) -> CursorRecord {
        CursorRecord {
            next_seq: self.next_seq,
            unacked: self.unacked.iter().map(|(s, u)| (*s, u.attempts)).collect(),
            owner: self.owner.as_deref().map(str::to_string),
        }
    }

    /// The first seq not yet acknowledged.
    pub fn ack_floor(&self) -> u64 {
        self.unacked.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// Moves the member to `next_seq`, forgetting what was in flight.
    pub fn reposition(&mut self, next_seq: u64) {
        self.next_seq = next_seq.max(1);
        self.unacked.clear();
        self.due.clear();
    }

    /// Detaches from its session; what was in flight will be redelivered
    /// when a session joins it again.
    pub fn detach(&mut self) {
        self.attached = None;
        for (seq, u) in self.unacked.iter_mut() {
            u.deadline = None;
            self.due.insert(*seq);
        }
    }

    /// Sets the redelivery deadline of an unacknowledged `seq` and makes
    /// sure the member's timer fires by then.
    pub fn set_deadline(
        &mut self,
        seq: u64,
        deadline: Instant,
        room: RoomId,
        key: &MemberKey,
        out: &mut impl Timers,
    ) {
        if let Some(u) = self.unacked.get_mut(&seq) {
            u.deadline = Some(deadline);
            self.due.remove(&seq);
            self.schedule(deadline, room, key, out);
        }
    }

    /// Arms the member's timer for `deadline` unless it fires sooner.
    pub fn schedule(
        &mut self,
        deadline: Instant,
        room: RoomId,
        key: &MemberKey,
        out: &mut impl Timers,
    ) {
        if self.armed.is_none_or(|a| deadline < a) {
            out.arm_timer(deadline, room, key);
            self.armed = Some(deadline);
        }
    }

    /// Handles the member's timer firing at `fired`: every delivery whose
    /// deadline has passed becomes due, and the timer is re-armed for the
    /// next deadline. Returns false for a stale timer (one since replaced).
    pub fn on_timer(
        &mut self,
        fired: Instant,
        now: Instant,
        room: RoomId,
        key: &MemberKey,
        out: &mut impl Timers,
    ) -> bool {
        if self.armed != Some(fired) {
            return false;
        }
        self.armed = None;
        if self.attached.is_none() {
            // Everything becomes due when a session joins again.
            return false;
        }
        let mut next: Option<Instant> = None;
        let mut expired = false;
        for (seq, u) in self.unacked.iter_mut() {
            match u.deadline {
                Some(d) if d <= now => {
                    u.deadline = None;
                    self.due.insert(*seq);
                    expired = true;
                }
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        if let Some(d) = next {
            self.schedule(d, room, key, out);
        }
        expired
    }

    /// Whether `msg` is excluded for this member by its publisher's
    /// `except_self`.
    pub fn excludes(&self, msg: &StoredMessage) -> bool {
        if let (Some(s), Some(a)) = (&msg.except_session, &self.attached) {
            if *s == *a.session.as_bytes() {
                return true;
            }
        }
        if self.durable {
            if let (Some(c), Some(o)) = (&msg.except_client, &self.owner) {
                return c == o;
            }
        }
        false
    }

    /// Acknowledges `seqs` and everything delivered up to `up_to` (0 = none).
    /// Fails without changing anything if a seq was never delivered.
    pub fn ack(&mut self, seqs: &[u64], up_to: u64) -> Result<(), u64> {
        if up_to >= self.next_seq {
            return Err(up_to);
        }
        if let Some(bad) = seqs.iter().find(|s| **s == 0 || **s >= self.next_seq) {
            return Err(*bad);
        }
        for s in seqs {
            self.unacked.remove(s);
            self.due.remove(s);
        }
        if up_to > 0 {
            let keep = self.unacked.split_off(&(up_to + 1));
            for s in self.unacked.keys() {
                self.due.remove(s);
            }
            self.unacked = keep;
        }
        Ok(())
    }
}

/// Arms redelivery timers on behalf of the member logic.
pub trait Timers {
    /// Arms a timer that fires for `member` at `deadline`.
    fn arm_timer(&mut self, deadline: Instant, room: RoomId, member: &MemberKey);
}

/// Sends deliveries (and reads the store) on behalf of the room logic.
pub trait Outlet: Timers {
    /// Hands one delivery to `session`. Returns false when the session cannot
    /// take more now (its queue is full, or it is gone); nothing is sent then.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        session: Uuid,
        room: &Arc<str>,
        label: &Arc<str>,
        attempt: u32,
        redelivered: bool,
        msg: &Arc<StoredMessage>,
    ) -> bool;

    /// Messages of `room` from `from`, in order, at most `max`, all <= `last`.
    fn read(&mut self, room: RoomId, from: u64, max: usize, last: u64) -> Vec<Arc<StoredMessage>>;
}

/// A room: its name, its committed log tail, its members.
#[derive(Debug)]
pub struct Room {
    pub id: RoomId,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Highest seq assigned (possibly not yet on disk).
    pub last_seq: u64,
    /// Highest seq on disk; only these are delivered.
    pub committed_seq: u64,
    /// Consecutive committed messages ending at `committed_seq`.
    pub cache: VecDeque<Arc<StoredMessage>>,
    pub cache_bytes: usize,
    pub members: HashMap<MemberKey, Member>,
    /// First stored seq: everything below was purged.
    pub first_seq: u64,
    /// Bytes of the stored messages (assigned ones included).
    pub stored_bytes: u64,
    pub rate: RateMeter,
}

/// Messages stored per second, over the last full second.
#[derive(Debug)]
pub struct RateMeter {
    window_start: Instant,
    count: u64,
    last_rate: f64,
}

impl RateMeter {
    fn new() -> Self {
        RateMeter {
            window_start: Instant::now(),
            count: 0,
            last_rate: 0.0,
        }
    }

    /// Counts `n` messages stored at `now`.
    pub fn record(&mut self, now: Instant, n: u64) {
        self.roll(now);
        self.count += n;
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            // A window older than two seconds saw nothing after it.
            self.last_rate = if elapsed >= Duration::from_secs(2) {
                0.0
            } else {
                self.count as f64 / elapsed.as_secs_f64()
            };
            self.count = 0;
            self.window_start = now;
        }
    }

    /// The rate over the last full second.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        self.last_rate
    }
}

impl Room {
    pub fn new(id: RoomId, namespace: Arc<str>, name: Arc<str>, last_seq: u64) -> Self {
        Room {
            id,
            namespace,
            name,
            last_seq,
            committed_seq: last_seq,
            cache: VecDeque::new(),
            cache_bytes: 0,
            members: HashMap::new(),
            first_seq: 1,
            stored_bytes: 0,
            rate: RateMeter::new(),
        }
    }

    /// Deletes every stored message (on disk, with the next commit): seqs
    /// go on from `last_seq`, every member moves past the purged messages.
    /// Returns how many messages were stored.
    pub fn purge(&mut self) -> u64 {
        let floor = self.last_seq + 1;
        let purged = floor.saturating_sub(self.first_seq);
        self.first_seq = floor;
        self.stored_bytes = 0;
        self.cache.clear();
        self.cache_bytes = 0;
        for m in self.members.values_mut() {
            m.reposition(floor);
        }
        purged
    }

    /// Records that `msgs` (the next consecutive seqs) are on disk.
    pub fn committed(&mut self, msgs: &[Arc<StoredMessage>], max_count: usize, max_bytes: usize) {
        for m in msgs {
            self.committed_seq = m.seq;
            self.cache_bytes += m.size();
            self.cache.push_back(m.clone());
        }
        while self.cache.len() > max_count || (self.cache_bytes > max_bytes && self.cache.len() > 1)
        {
            if let Some(old) = self.cache.pop_front() {
                self.cache_bytes -= old.size();
            }
        }
    }

    fn cached(&self, seq: u64) -> Option<&Arc<StoredMessage>> {
        let first = self.cache.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.cache.get(idx)
    }

    fn fetch(&self, seq: u64, max: usize, out: &mut impl Outlet) -> Vec<Arc<StoredMessage>> {
        if seq > self.committed_seq {
            return Vec::new();
        }
        if let Some(first) = self.cache.front().map(|m| m.seq) {
            if seq >= first {
                let idx = usize::try_from(seq - first).unwrap_or(usize::MAX);
                return self.cache.range(idx..).take(max).cloned().collect();
            }
        }
        out.read(self.id, seq, max, self.committed_seq)
    }

    /// Delivers to member `key` whatever it may have now: due redeliveries
    /// first, then new messages in seq order, up to its in-flight limit.
    /// Returns true if the member's stored cursor changed.
    pub fn pump(&mut self, key: &MemberKey, now: Instant, out: &mut impl Outlet) -> bool {
        let Some(member) = self.members.get(key) else {
            return false;
        };
        let Some(att) = member.attached.clone() else {
            return false;
        };
        if member.joining {
            return false;
        }
        let mut changed = false;

        // Redeliveries, lowest seq first.
        let due: Vec<u64> = member.due.iter().copied().collect();
        for seq in due {
            let msg = match self.cached(seq) {
                Some(m) => Some(m.clone()),
                None => self.fetch(seq, 1, out).into_iter().find(|m| m.seq == seq),
            };
            let Some(member) = self.members.get_mut(key) else {
                return changed;
            };
            // Redeliveries count against the in-flight limit too: with
            // max_in_flight = 1 a member is handed one message at a time,
            // also after a reconnect.
            let outstanding = member.unacked.len() - member.due.len();
            if outstanding >= usize::try_from(member.max_in_flight).unwrap_or(usize::MAX) {
                return changed;
            }
            let Some(msg) = msg else {
                // Unreadable (the read failed and was logged): the member
                // waits here rather than lose the message.
                return changed;
            };
            let attempt = member
                .unacked
                .get(&seq)
                .map_or(1, |u| u.attempts.saturating_add(1));
            if !out.deliver(att.session, &self.name, &att.label, attempt, true, &msg) {
                return changed;
            }
            let deadline = now + member.ack_timeout;
            member.due.remove(&seq);
            member.unacked.insert(
                seq,
                Unacked {
                    attempts: attempt,
                    deadline: Some(deadline),
                },
            );
            member.schedule(deadline, self.id, key, out);
            changed = true;
        }

        // First deliveries.
        loop {
            let Some(member) = self.members.get(key) else {
                return changed;
            };
            let room_free = usize::try_from(member.max_in_flight)
                .unwrap_or(usize::MAX)
                .saturating_sub(member.unacked.len());
            if room_free == 0 || member.next_seq > self.committed_seq {
                return changed;
            }
            let batch = self.fetch(member.next_seq, room_free.min(256), out);
            if batch.is_empty() {
                return changed;
            }
            for msg in batch {
                let Some(member) = self.members.get_mut(key) else {
                    return changed;
                };
                if msg.seq != member.next_seq {
                    // The log has a hole (trimmed): skip to what exists.
                    if msg.seq < member.next_seq {
                        continue;
                    }
                    member.next_seq = msg.seq;
                }
                if member.excludes(&msg) {
                    member.next_seq += 1;
                    changed = true;
                    continue;
                }
                if member.unacked.len() >= usize::try_from(member.max_in_flight).unwrap_or(0) {
                    return changed;
                }
                if !out.deliver(att.session, &self.name, &att.label, 1, false, &msg) {
                    return changed;
                }
                let deadline = now + member.ack_timeout;
                member.unacked.insert(
                    msg.seq,
                    Unacked {
                        attempts: 1,
                        deadline: Some(deadline),
                    },
                );
                member.schedule(deadline, self.id, key, out);
                member.next_seq = msg.seq + 1;
                changed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[derive(Default)]
    struct Recorder {
        sent: Vec<(u64, u32, bool)>,
        capacity: usize,
        gen: u64,
    }

    impl Outlet for Recorder {
        fn deliver(
            &mut self,
            _: Uuid,
            _: &Arc<str>,
            _: &Arc<str>,
            attempt: u32,
            redelivered: bool,
            msg: &Arc<StoredMessage>,
        ) -> bool {
            if self.sent.len() >= self.capacity {
                return false;
            }
            self.sent.push((msg.seq, attempt, redelivered));
            true
        }
        fn read(&mut self, _: RoomId, _: u64, _: usize, _: u64) -> Vec<Arc<StoredMessage>> {
            Vec::new()
        }
    }

    impl Timers for Recorder {
        fn arm_timer(&mut self, _: Instant, _: RoomId, _: &MemberKey) {
            self.gen += 1;
        }
    }

    fn msg(seq: u64, except_session: Option<Uuid>) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            seq,
            encoded: Bytes::new(),
            except_session: except_session.map(|u| *u.as_bytes()),
            except_client: None,
        })
    }

    fn room_with(n: u64, max_in_flight: u32) -> (Room, MemberKey, Uuid) {
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        let msgs: Vec<_> = (1..=n).map(|s| msg(s, None)).collect();
        room.last_seq = n;
        room.committed(&msgs, 1000, usize::MAX);
        let session = Uuid::new_v4();
        let key = MemberKey::Durable("m".into());
        let mut m = Member::new(true, 1, max_in_flight, Duration::from_secs(1));
        m.attached = Some(Attachment {
            session,
            label: "".into(),
        });
        room.members.insert(key.clone(), m);
        (room, key, session)
    }

    #[test]
    fn in_flight_limit_and_order() {
        let (mut room, key, _) = room_with(10, 3);
        let mut out = Recorder {
            capacity: 100,
            ..Default::default()
        };
        room.pump(&key, Instant::now(), &mut out);
        assert_eq!(out.sent, vec![(1, 1, false), (2, 1, false), (3, 1, false)]);
        let m = room.members.get_mut(&key).unwrap();
        m.ack(&[2], 0).unwrap();
        assert_eq!(m.ack_floor(), 1);
        room.pump(&key, Instant::now(), &mut out);
        assert_eq!(out.sent.last(), Some(&(4, 1, false)));
        let m = room.members.get_mut(&key).unwrap();
        m.ack(&[], 4).unwrap();
        assert_eq!(m.ack_floor(), 5);
        assert!(m.ack(&[], 5).is_err(), "seq 5 was never delivered");
        assert!(m.ack(&[99], 0).is_err());
        assert!(m.ack(&[1], 0).is_ok(), "acking twice is harmless");
    }

    #[test]
    fn detach_makes_unacked_due_and_redelivery_comes_first() {
        let (mut room, key, _) = room_with(5, 2);
        let mut out = Recorder {
            capacity: 100,
            ..Default::default()
        };
        room.pump(&key, Instant::now(), &mut out);
        let m = room.members.get_mut(&key).unwrap();
        m.detach();
        m.attached = Some(Attachment {
            session: Uuid::new_v4(),
            label: "".into(),
        });
        out.sent.clear();
        room.pump(&key, Instant::now(), &mut out);
        assert_eq!(out.sent, vec![(1, 2, true), (2, 2, true)]);
    }

    #[test]
    fn full_outlet_keeps_the_message_for_later() {
        let (mut room, key, _) = room_with(5, 10);
        let mut out = Recorder {
            capacity: 2,
            ..Default::default()
        };
        room.pump(&key, Instant::now(), &mut out);
        assert_eq!(room.members[&key].next_seq, 3);
        out.capacity = 100;
        room.pump(&key, Instant::now(), &mut out);
        let seqs: Vec<u64> = out.sent.iter().map(|s| s.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn except_self_skips_own_session() {
        let (mut room, key, session) = room_with(0, 10);
        let msgs = vec![msg(1, Some(session)), msg(2, None)];
        room.committed(&msgs, 1000, usize::MAX);
        let mut out = Recorder {
            capacity: 100,
            ..Default::default()
        };
        room.pump(&key, Instant::now(), &mut out);
        assert_eq!(out.sent, vec![(2, 1, false)]);
        assert_eq!(room.members[&key].ack_floor(), 2);
    }

    #[test]
    fn one_timer_per_member_however_many_deliveries() {
        let (mut room, key, _) = room_with(100, 1000);
        let mut out = Recorder {
            capacity: 1000,
            ..Default::default()
        };
        let t0 = Instant::now();
        room.pump(&key, t0, &mut out);
        assert_eq!(out.sent.len(), 100);
        assert_eq!(out.gen, 1, "one timer armed for 100 deliveries");
        let m = room.members.get_mut(&key).unwrap();
        m.ack(&[], 50).unwrap();
        let fired = t0 + Duration::from_secs(1);
        assert!(
            !m.on_timer(fired - Duration::from_millis(1), fired, 1, &key, &mut out),
            "stale timer ignored"
        );
        assert!(m.on_timer(fired, fired, 1, &key, &mut out));
        assert_eq!(m.due.len(), 50);
        assert_eq!(m.armed, None, "nothing left to time");
    }
}
