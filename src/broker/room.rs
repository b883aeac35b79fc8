//! A room and its members: the log's recent tail held in memory, and for each
//! member the cursor, the unacknowledged deliveries and the rules that decide
//! what it gets next. Nothing here touches a socket: deliveries go out
//! through the [`Outlet`] trait, so the rules can be tested on their own.
//!
//! A member is read by *consumers*, the sessions joined to it: exactly one
//! for an ordinary member, any number for a group (competing consumers that
//! share the member's cursor). Every unacknowledged message of a member is
//! in one of three states:
//! - *in flight*: delivered to a consumer (`holder`), until its deadline;
//! - *waiting*: not to be delivered before its deadline (scheduled with
//!   deliver-at, or nacked with a delay);
//! - *due*: to be delivered as soon as a consumer can take it (`due`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::storage::{CursorRecord, RoomId, StoredMessage};

/// Prefix of a group's name in its stored cursor key. Names from the wire
/// cannot contain control characters, so it cannot clash with a durable
/// member's name.
pub const GROUP_PREFIX: char = '\u{1}';

/// How a member is found in its room.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberKey {
    /// Durable, by name; survives sessions and restarts.
    Durable(Arc<str>),
    /// Ephemeral, by the session holding it and the label it joined with.
    Ephemeral(Uuid, Arc<str>),
    /// A group of competing consumers, by group name; durable.
    Group(Arc<str>),
}

impl MemberKey {
    /// The name its cursor is stored under, if it has one.
    pub fn stored_name(&self) -> Option<Arc<str>> {
        match self {
            MemberKey::Durable(n) => Some(n.clone()),
            MemberKey::Group(n) => Some(Arc::from(format!("{GROUP_PREFIX}{n}"))),
            MemberKey::Ephemeral(..) => None,
        }
    }

    /// The key of a stored cursor name.
    pub fn from_stored(name: Arc<str>) -> Self {
        match name.strip_prefix(GROUP_PREFIX) {
            Some(group) => MemberKey::Group(Arc::from(group)),
            None => MemberKey::Durable(name),
        }
    }
}

/// How a group hands out messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMode {
    /// Same ordering key, same consumer (see the protocol).
    KeyOrdered,
    /// The first consumer gets everything; the others stand by.
    Exclusive,
}

/// One unacknowledged message of a member.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// Deliveries so far (0 for a message not yet delivered).
    pub attempts: u32,
    /// In flight: when it is due again. Waiting: when it becomes due.
    /// `None` while it is due.
    pub deadline: Option<Instant>,
    /// The consumer it is in flight at.
    pub holder: Option<Uuid>,
    /// The session it was last handed to (kept while it is due): a
    /// redelivery to that session follows the decision its first delivery
    /// made about `except_rooms` and once-per-session (see
    /// [`excluded_for`]).
    pub seen_by: Option<Uuid>,
    /// Hash of its ordering key (0 = none), for a group's key pins.
    pub key: u64,
    /// Why it was last handed back (a nack's reason, "ack timeout", ...).
    pub reason: Option<Arc<str>>,
}

/// A session reading a member.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub session: Uuid,
    /// The subscription label the session joined with; deliveries carry it.
    pub label: Arc<str>,
    pub max_in_flight: u32,
    pub ack_timeout: Duration,
    /// Ack timeouts by attempt (empty: `ack_timeout` for every attempt).
    pub backoff: Arc<[Duration]>,
    /// Wants presence events of its room.
    pub presence: bool,
    /// Messages in flight at it.
    pub in_flight: u32,
}

impl Consumer {
    /// A consumer with nothing in flight.
    pub fn new(session: Uuid, label: Arc<str>, max_in_flight: u32, ack_timeout: Duration) -> Self {
        Consumer {
            session,
            label,
            max_in_flight,
            ack_timeout,
            backoff: Arc::from(Vec::new()),
            presence: false,
            in_flight: 0,
        }
    }

    /// How long delivery number `attempt` (1, 2, ...) may stay unacked.
    pub fn timeout(&self, attempt: u32) -> Duration {
        let i = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
        self.backoff
            .get(i)
            .or_else(|| self.backoff.last())
            .copied()
            .unwrap_or(self.ack_timeout)
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }
}

/// A gap notice a member is owed: seqs `from..=to` were deleted before it
/// had them, `missed` of them not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub missed: u64,
}

/// A reader of a room: a cursor, what is unacknowledged, its consumers.
#[derive(Debug)]
pub struct Member {
    pub durable: bool,
    /// `Some` for a group.
    pub group: Option<GroupMode>,
    /// Client id of the session that last joined it (for `except_self`).
    pub owner: Option<Arc<str>>,
    /// Sessions reading it, in join order (at most one unless a group).
    pub consumers: Vec<Consumer>,
    /// The next seq to take from the log.
    pub next_seq: u64,
    /// Taken and unacknowledged. Every seq below `next_seq` that is not
    /// here is acknowledged (or was skipped for this member).
    pub unacked: BTreeMap<u64, Unacked>,
    /// Unacknowledged seqs due for delivery now, in seq order.
    pub due: BTreeSet<u64>,
    /// How many unacknowledged seqs are waiting (neither in flight nor due).
    pub waiting: usize,
    /// A group's ordering keys with messages in flight: the consumer they
    /// are at and how many. Later messages with the key go to it too.
    pins: HashMap<u64, (Uuid, u32)>,
    /// Deliveries before a message is dead-lettered (0 = no limit).
    pub max_deliveries: u32,
    /// Event patterns it wants (empty: all).
    pub events: Arc<[String]>,
    /// Set while the member's new cursor is being written: nothing is
    /// delivered until the join is confirmed.
    pub joining: bool,
    /// Deadline of the one timer armed for this member, if any. Timers are
    /// per member, not per delivery, so the timer heap stays as small as the
    /// number of members no matter how many deliveries are in flight.
    pub armed: Option<Instant>,
    /// A gap notice not yet sent.
    pub gap: Option<Gap>,
    /// Turns of the keyless round robin of a group.
    turn: usize,
}

/// Whether the member may take `msg` given its event filter.
fn wants(events: &[String], msg: &StoredMessage) -> bool {
    events.is_empty() || crate::tenancy::pattern::any_matches(events, msg.event())
}

impl Member {
    /// A member starting at `next_seq` with nothing taken.
    pub fn new(durable: bool, next_seq: u64, max_deliveries: u32) -> Self {
        Member {
            durable,
            group: None,
            owner: None,
            consumers: Vec::new(),
            next_seq,
            unacked: BTreeMap::new(),
            due: BTreeSet::new(),
            waiting: 0,
            pins: HashMap::new(),
            max_deliveries,
            events: Arc::from(Vec::new()),
            joining: false,
            armed: None,
            gap: None,
            turn: 0,
        }
    }

    /// A durable member (or group) restored from its stored cursor.
    /// Everything it had taken is due once a consumer joins.
    pub fn from_record(rec: &CursorRecord, max_deliveries: u32) -> Self {
        let mut m = Member::new(true, rec.next_seq.max(1), max_deliveries);
        m.owner = rec.owner.as_deref().map(Arc::from);
        m.gap = rec.gap.map(|(from, to, missed)| Gap { from, to, missed });
        for (seq, attempts) in &rec.unacked {
            if *seq < m.next_seq {
                m.unacked.insert(
                    *seq,
                    Unacked {
                        attempts: *attempts,
                        deadline: None,
                        holder: None,
                        seen_by: None,
                        key: 0,
                        reason: None,
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
            gap: self.gap.map(|g| (g.from, g.to, g.missed)),
        }
    }

    /// The first seq not yet acknowledged.
    pub fn ack_floor(&self) -> u64 {
        self.unacked.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// Whether any session reads it.
    pub fn connected(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// The consumer that is `session`.
    pub fn consumer(&self, session: Uuid) -> Option<&Consumer> {
        self.consumers.iter().find(|c| c.session == session)
    }

    /// Messages in flight at all consumers.
    pub fn in_flight(&self) -> usize {
        self.unacked.len() - self.due.len() - self.waiting
    }

    /// Moves the member to `next_seq`, forgetting what it had taken.
    pub fn reposition(&mut self, next_seq: u64) {
        self.next_seq = next_seq.max(1);
        self.unacked.clear();
        self.due.clear();
        self.waiting = 0;
        self.pins.clear();
        for c in &mut self.consumers {
            c.in_flight = 0;
        }
    }

    /// Takes `seq` out of whatever state it is in (in flight, waiting or
    /// due), keeping the counters right. Returns its entry.
    fn unstate(&mut self, seq: u64) -> Option<&mut Unacked> {
        let u = self.unacked.get_mut(&seq)?;
        match u.holder.take() {
            Some(holder) => {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.session == holder) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                if u.key != 0 {
                    if let Some(pin) = self.pins.get_mut(&u.key) {
                        pin.1 = pin.1.saturating_sub(1);
                        if pin.1 == 0 {
                            self.pins.remove(&u.key);
                        }
                    }
                }
            }
            None if u.deadline.is_some() => self.waiting = self.waiting.saturating_sub(1),
            None => {
                self.due.remove(&seq);
            }
        }
        u.deadline = None;
        Some(u)
    }

    /// Acknowledges (or drops) `seq`.
    pub fn remove(&mut self, seq: u64) {
        if self.unstate(seq).is_some() {
            self.unacked.remove(&seq);
        }
    }

    /// Makes `seq` due for delivery now, remembering why.
    pub fn make_due(&mut self, seq: u64, reason: Option<Arc<str>>) {
        if let Some(u) = self.unstate(seq) {
            if reason.is_some() {
                u.reason = reason;
            }
            self.due.insert(seq);
        }
    }

    /// Makes `seq` wait until `until`, then become due. The caller arms
    /// the member's timer ([`Member::schedule`]).
    pub fn wait(&mut self, seq: u64, until: Instant, reason: Option<Arc<str>>) {
        if let Some(u) = self.unstate(seq) {
            u.deadline = Some(until);
            if reason.is_some() {
                u.reason = reason;
            }
            self.waiting += 1;
        }
    }

    /// Takes the next message from the log into the member as due (or
    /// waiting until `until`), without delivering it.
    fn take(&mut self, msg: &StoredMessage, until: Option<Instant>) {
        let u = Unacked {
            attempts: 0,
            deadline: until,
            holder: None,
            seen_by: None,
            key: msg.info.key_hash,
            reason: None,
        };
        self.unacked.insert(msg.seq, u);
        match until {
            Some(_) => self.waiting += 1,
            None => {
                self.due.insert(msg.seq);
            }
        }
        self.next_seq = msg.seq + 1;
    }

    /// Records that `seq` was delivered to consumer `idx` for the
    /// `attempt`th time; returns when it is due again.
    fn hold(&mut self, seq: u64, idx: usize, attempt: u32, key: u64, now: Instant) -> Instant {
        let Some(c) = self.consumers.get_mut(idx) else {
            return now;
        };
        let session = c.session;
        c.in_flight += 1;
        let deadline = now + c.timeout(attempt);
        self.unstate(seq);
        let entry = self.unacked.entry(seq).or_insert(Unacked {
            attempts: 0,
            deadline: None,
            holder: None,
            seen_by: None,
            key,
            reason: None,
        });
        entry.attempts = attempt;
        entry.deadline = Some(deadline);
        entry.holder = Some(session);
        entry.seen_by = Some(session);
        entry.key = key;
        if self.group.is_some() && key != 0 {
            let pin = self.pins.entry(key).or_insert((session, 0));
            pin.0 = session;
            pin.1 += 1;
        }
        deadline
    }

    /// Adds a consumer.
    pub fn attach(&mut self, consumer: Consumer) {
        self.consumers.push(consumer);
    }

    /// Removes consumer `session`: what it had in flight becomes due, for
    /// the others or for whoever joins next. Returns whether it was one.
    pub fn detach(&mut self, session: Uuid) -> bool {
        let Some(i) = self.consumers.iter().position(|c| c.session == session) else {
            return false;
        };
        let held: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.holder == Some(session))
            .map(|(s, _)| *s)
            .collect();
        let reason: Arc<str> = Arc::from("consumer left");
        for seq in held {
            self.make_due(seq, Some(reason.clone()));
        }
        self.consumers.remove(i);
        true
    }

    /// Sets the deadline of `seq`, in flight at `session`, to `deadline`
    /// and makes sure the member's timer fires by then.
    pub fn extend(
        &mut self,
        seq: u64,
        session: Uuid,
        deadline: Instant,
        room: RoomId,
        key: &MemberKey,
        out: &mut impl Timers,
    ) {
        if let Some(u) = self.unacked.get_mut(&seq) {
            if u.holder == Some(session) {
                u.deadline = Some(deadline);
                self.schedule(deadline, room, key, out);
            }
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

    /// Handles the member's timer firing at `fired`: every message whose
    /// deadline has passed becomes due, and the timer is re-armed for the
    /// next deadline. Returns false for a stale timer (one since replaced)
    /// or when nothing became due.
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
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for (seq, u) in &self.unacked {
            match u.deadline {
                Some(d) if d <= now => expired.push((*seq, u.holder.is_some())),
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        let timeout: Arc<str> = Arc::from("ack timeout");
        for (seq, in_flight) in &expired {
            let reason = in_flight.then(|| timeout.clone());
            self.make_due(*seq, reason);
        }
        if let Some(d) = next {
            self.schedule(d, room, key, out);
        }
        !expired.is_empty()
    }

    /// Whether `msg` is excluded for this member as a whole: its event
    /// filter, or `except_self` of a durable member's own client.
    fn skips(&self, msg: &StoredMessage) -> bool {
        if !wants(&self.events, msg) {
            return true;
        }
        if self.durable {
            if let (Some(c), Some(o)) = (&msg.except_client, &self.owner) {
                return c == o;
            }
        }
        false
    }

    /// Acknowledges, for consumer `session`, `seqs` and everything it was
    /// delivered up to `up_to` (0 = none). Fails without changing anything
    /// if a seq was never delivered, or is in flight at another consumer.
    pub fn ack(&mut self, session: Uuid, seqs: &[u64], up_to: u64) -> Result<(), u64> {
        if up_to >= self.next_seq {
            return Err(up_to);
        }
        let foreign = |u: &Unacked| u.holder.is_some_and(|h| h != session);
        for s in seqs {
            if *s == 0 || *s >= self.next_seq {
                return Err(*s);
            }
            if let Some(u) = self.unacked.get(s) {
                if u.attempts == 0 || foreign(u) {
                    return Err(*s);
                }
            }
        }
        for s in seqs {
            self.remove(*s);
        }
        if up_to > 0 {
            // Only what this consumer was delivered: never a scheduled
            // message it has not seen, nor one in flight elsewhere.
            // In a group, only what is in flight at this consumer: a message
            // it handed back may be on its way to another.
            let grouped = self.group.is_some();
            let done: Vec<u64> = self
                .unacked
                .range(..=up_to)
                .filter(|(_, u)| {
                    if grouped {
                        u.holder == Some(session)
                    } else {
                        u.attempts > 0
                    }
                })
                .map(|(s, _)| *s)
                .collect();
            for s in done {
                self.remove(s);
            }
        }
        Ok(())
    }

    /// Moves the cursor to `floor` (messages below it were deleted),
    /// owing the member a gap notice for what it had not acknowledged.
    pub fn trim(&mut self, floor: u64) {
        if self.ack_floor() >= floor {
            return;
        }
        let from = self.ack_floor();
        let lost: Vec<u64> = self.unacked.range(..floor).map(|(s, _)| *s).collect();
        let mut missed = floor.saturating_sub(self.next_seq.max(from));
        missed += lost.len() as u64;
        for s in lost {
            self.remove(s);
        }
        self.next_seq = self.next_seq.max(floor);
        self.gap = Some(match self.gap {
            Some(g) => Gap {
                from: g.from.min(from),
                to: floor - 1,
                missed: g.missed + missed,
            },
            None => Gap {
                from,
                to: floor - 1,
                missed,
            },
        });
    }

    /// How many messages its consumers may have in flight together: a pump
    /// takes no more from the log while that many are in flight or due.
    fn window(&self) -> usize {
        self.consumers
            .iter()
            .map(|c| usize::try_from(c.max_in_flight).unwrap_or(usize::MAX))
            .sum()
    }

    /// Decides what becomes of `msg`, a candidate from `source`, by the
    /// delivery rules (the same for a due message and a new one), and
    /// delivers it if it goes to a consumer now. Changes nothing in the
    /// member but a group's round-robin turn: the pump records the outcome.
    fn hand_out(
        &mut self,
        msg: &Arc<StoredMessage>,
        source: Source,
        room: &Arc<str>,
        blocked: &[Uuid],
        now: Now,
        out: &mut impl Outlet,
    ) -> Outcome {
        if expired(msg, now) {
            return Outcome::Expired;
        }
        if self.skips(msg) {
            return Outcome::Unwanted;
        }
        if msg.info.deliver_at_ms > now.wall_ms {
            return Outcome::Early(now.instant_of(msg.info.deliver_at_ms));
        }
        // A new message has no deliveries yet: it never dies here.
        let attempts = source.attempts();
        if self.max_deliveries > 0 && attempts >= self.max_deliveries {
            return Outcome::Dead;
        }
        let idx = match self.choose(msg, room, source.seen_by(), blocked, &*out) {
            Ok(Some(i)) => i,
            Ok(None) => return Outcome::Busy,
            Err(()) => return Outcome::Unwanted,
        };
        // (`choose` returns the index of one of the consumers.)
        let Some(c) = self.consumers.get(idx) else {
            return Outcome::Busy;
        };
        let send = Handout {
            session: c.session,
            room,
            label: &c.label,
            attempt: attempts.saturating_add(1),
            redelivered: attempts > 0,
            volatile: false,
        };
        if out.deliver(send, msg) {
            Outcome::Delivered {
                idx,
                attempt: send.attempt,
            }
        } else {
            Outcome::Blocked(send.session)
        }
    }

    /// Takes candidate `msg` into the member if it is new (from the log),
    /// given its `outcome`: the cursor moves past it and it is due, like any
    /// message handed back, so that the pump records the outcome of either
    /// source alike. This is the one place where a new message differs
    /// from a due one: where the pump stops at it instead, leaving it in the
    /// log. `Continue(true)` when it was taken (the stored cursor changed).
    fn admit(
        &mut self,
        msg: &StoredMessage,
        source: Source,
        outcome: Outcome,
    ) -> ControlFlow<(), bool> {
        if let Source::Due { .. } = source {
            return ControlFlow::Continue(false);
        }
        let stop = match outcome {
            Outcome::Early(_) => self.waiting >= MAX_WAITING,
            // In a group, a message whose consumer is busy is handed out
            // from `due` when that consumer has room, and the others go on;
            // any other member takes the log strictly in order.
            Outcome::Busy => {
                self.group.is_none() || self.in_flight() + self.due.len() >= self.window()
            }
            Outcome::Blocked(_) => self.group.is_none(),
            Outcome::Expired | Outcome::Unwanted | Outcome::Dead | Outcome::Delivered { .. } => {
                false
            }
        };
        if stop {
            return ControlFlow::Break(());
        }
        self.take(msg, None);
        ControlFlow::Continue(true)
    }

    /// Which consumer gets `msg` now, if any may: `None` when none may
    /// have it at all (`Err`), or when the one that must have it is full
    /// (`Ok(None)`).
    fn choose(
        &mut self,
        msg: &StoredMessage,
        room: &str,
        seen_by: Option<Uuid>,
        blocked: &[Uuid],
        out: &impl Outlet,
    ) -> Result<Option<usize>, ()> {
        let eligible = |c: &Consumer| {
            let first = seen_by != Some(c.session);
            !excluded_for(msg, c.session, room, first, out)
        };
        let ready = |c: &Consumer| c.has_room() && !blocked.contains(&c.session);
        let pick = match self.group {
            None | Some(GroupMode::Exclusive) => {
                self.consumers.iter().position(eligible).ok_or(())?
            }
            Some(GroupMode::KeyOrdered) => {
                let key = msg.info.key_hash;
                let pinned = self.pins.get(&key).and_then(|(s, _)| {
                    self.consumers
                        .iter()
                        .position(|c| c.session == *s && eligible(c))
                });
                if let Some(i) = pinned {
                    i
                } else if key != 0 {
                    // Rendezvous hashing: a key stays with its consumer as
                    // long as that consumer is joined, and only the keys of
                    // a consumer that leaves (or of one that joins) move.
                    self.consumers
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| eligible(c))
                        .max_by_key(|(_, c)| rendezvous(c.session, key))
                        .map(|(i, _)| i)
                        .ok_or(())?
                } else {
                    // No key: the consumer with the most free slots, taking
                    // turns among equals.
                    let n = self.consumers.len();
                    let start = self.turn % n.max(1);
                    self.turn = self.turn.wrapping_add(1);
                    let best = (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|i| self.consumers.get(*i).is_some_and(eligible))
                        .max_by_key(|i| {
                            let c = self.consumers.get(*i);
                            let free = c.map_or(0, |c| c.max_in_flight.saturating_sub(c.in_flight));
                            (free, std::cmp::Reverse(*i))
                        });
                    best.ok_or(())?
                }
            }
        };
        Ok(self.consumers.get(pick).filter(|c| ready(c)).map(|_| pick))
    }
}

/// Where a pump's candidate comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Unacknowledged and due: delivered `attempts` times so far, last
    /// handed to session `seen_by`.
    Due {
        attempts: u32,
        seen_by: Option<Uuid>,
    },
    /// The message at the member's cursor, new to it.
    New,
}

impl Source {
    /// Deliveries so far.
    fn attempts(self) -> u32 {
        match self {
            Source::Due { attempts, .. } => attempts,
            Source::New => 0,
        }
    }

    /// The session it was last handed to.
    fn seen_by(self) -> Option<Uuid> {
        match self {
            Source::Due { seen_by, .. } => seen_by,
            Source::New => None,
        }
    }
}

/// What becomes of one candidate of a pump ([`Member::hand_out`]).
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Its TTL ran out: dropped, and counted.
    Expired,
    /// Excluded for the member (its filter, `except_self`), or for every
    /// consumer: dropped.
    Unwanted,
    /// Its deliver-at time is still to come: it waits until then.
    Early(Instant),
    /// Delivered as often as the member allows: dead-lettered.
    Dead,
    /// The consumer it must go to has no free slot: kept for later.
    Busy,
    /// That consumer's queue is full: kept for later, and nothing more is
    /// handed to the consumer in this pump.
    Blocked(Uuid),
    /// Delivered to consumer `idx`, its `attempt`th delivery.
    Delivered { idx: usize, attempt: u32 },
}

/// How far a pump has gone through a member's candidates.
#[derive(Debug)]
enum Next {
    /// Through its due seqs, up to `after` (0: none yet).
    Due { after: u64 },
    /// Through the log: what is left of the batch last read from it.
    New(std::vec::IntoIter<Arc<StoredMessage>>),
}

/// The rendezvous score of `key` for `session`.
fn rendezvous(session: Uuid, key: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Whether `msg` must not go to `session`, a consumer in `room`: its
/// publisher's `except_self` and `except_sessions`, at every hand-out; and
/// `except_rooms` and "once per session" of a multi-room publish, which
/// depend on the session's memberships, when it is the `first` hand-out to
/// this session. A redelivery to the session that last had the message
/// follows the decision made then (it has seen the message: joining a room
/// later does not take it back); a hand-out to any other session (another
/// consumer of a group, a new session of a durable member) decides anew.
fn excluded_for(
    msg: &StoredMessage,
    session: Uuid,
    room: &str,
    first: bool,
    out: &impl Outlet,
) -> bool {
    if msg.except_session == Some(*session.as_bytes()) {
        return true;
    }
    let Some(x) = &msg.extra else {
        return false;
    };
    if x.except_sessions
        .iter()
        .any(|s| s[..] == session.as_bytes()[..])
    {
        return true;
    }
    if !first {
        return false;
    }
    if x.except_rooms.iter().any(|r| out.in_room(session, r)) {
        return true;
    }
    // Delivered only in the first of the publish's rooms the session is in.
    x.rooms
        .iter()
        .take_while(|r| r.as_str() != room)
        .any(|r| out.in_room(session, r))
}

/// Arms redelivery timers on behalf of the member logic.
pub trait Timers {
    /// Arms a timer that fires for `member` at `deadline`.
    fn arm_timer(&mut self, deadline: Instant, room: RoomId, member: &MemberKey);
}

/// A delivery, as the room logic hands it out.
#[derive(Debug, Clone, Copy)]
pub struct Handout<'a> {
    pub session: Uuid,
    pub room: &'a Arc<str>,
    pub label: &'a Arc<str>,
    pub attempt: u32,
    pub redelivered: bool,
    pub volatile: bool,
}

/// Sends deliveries (and reads the store) on behalf of the room logic.
pub trait Outlet: Timers {
    /// Hands one delivery to its session. Returns false when the session
    /// cannot take more now (its queue is full, or it is gone); nothing is
    /// sent then.
    fn deliver(&mut self, to: Handout<'_>, msg: &Arc<StoredMessage>) -> bool;

    /// Sends a gap notice; false when the session cannot take it now.
    fn gap(&mut self, session: Uuid, room: &Arc<str>, label: &Arc<str>, gap: Gap) -> bool;

    /// Asks for the stored messages of `room` from `from` on. They come
    /// back later, through [`Room::loaded`], and the room's members are
    /// pumped again then.
    fn read(&mut self, room: RoomId, from: u64);

    /// Whether `session` is a member of the room named `room` (in the
    /// namespace being served).
    fn in_room(&self, session: Uuid, room: &str) -> bool;
}

/// The clock the delivery rules read: the monotonic instant (timers) and
/// the wall time it stands for (TTLs and deliver-at times, which are wall
/// times).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: u64,
}

impl Now {
    /// The instant at which wall time `ms` arrives (now if it has).
    pub fn instant_of(&self, ms: u64) -> Instant {
        self.instant + Duration::from_millis(ms.saturating_sub(self.wall_ms))
    }
}

/// A message a member gave up on: it goes to the room's dead-letter room.
#[derive(Debug)]
pub struct DeadLetter {
    pub msg: Arc<StoredMessage>,
    pub attempts: u32,
    pub reason: Option<Arc<str>>,
    /// Who gave up: the member's or group's name ("" if ephemeral).
    pub member: Arc<str>,
}

/// What a pump did.
#[derive(Debug, Default)]
pub struct Pumped {
    /// The member's stored cursor changed.
    pub changed: bool,
    pub dead: Vec<DeadLetter>,
    /// Messages dropped for the member because their TTL ran out.
    pub expired: u64,
}

/// Most messages one member keeps waiting for their deliver-at time.
/// Beyond it the member stops taking from the log until some are due.
pub const MAX_WAITING: usize = 10_000;

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
    /// First stored seq: everything below was purged or trimmed.
    pub first_seq: u64,
    /// Bytes of the stored messages (assigned ones included).
    pub stored_bytes: u64,
    pub rate: RateMeter,
    /// Redeliveries handed out since the room was loaded (for stats).
    pub redelivered: u64,
    /// Messages of this room moved to its dead-letter room, likewise.
    pub dead_lettered: u64,
    /// Messages read from the store for the pump running now (see
    /// [`Room::loaded`]).
    loaded: Option<Loaded>,
}

/// Stored messages read for a pump: those from `from` on, in order.
#[derive(Debug)]
struct Loaded {
    from: u64,
    msgs: Vec<Arc<StoredMessage>>,
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
            redelivered: 0,
            dead_lettered: 0,
            loaded: None,
        }
    }

    /// Lends the room `msgs`, read from the store from `from` on, for the
    /// pumps that follow, until [`Room::release`].
    pub fn lend(&mut self, from: u64, msgs: Vec<Arc<StoredMessage>>) {
        self.loaded = Some(Loaded { from, msgs });
    }

    /// Lets go of what [`Room::lend`] lent.
    pub fn release(&mut self) {
        self.loaded = None;
    }

    /// Deletes the stored messages below `floor`, which hold `bytes` (on
    /// disk, with the next commit). Members behind it move up to it and are
    /// owed a gap notice.
    pub fn trim(&mut self, floor: u64, bytes: u64) {
        if floor <= self.first_seq {
            return;
        }
        self.first_seq = floor;
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        while self.cache.front().is_some_and(|m| m.seq < floor) {
            if let Some(old) = self.cache.pop_front() {
                self.cache_bytes -= old.size();
            }
        }
        for m in self.members.values_mut() {
            m.trim(floor);
        }
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

    /// Up to `max` committed messages from `seq` on, in order, from the
    /// cache or from what was read for this pump. None at hand: they are
    /// asked for, and the member waits.
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
        if let Some(l) = &self.loaded {
            let covers = l.from <= seq && l.msgs.last().is_some_and(|m| m.seq >= seq);
            if covers {
                let start = l.msgs.partition_point(|m| m.seq < seq);
                return l
                    .msgs
                    .iter()
                    .skip(start)
                    .take_while(|m| m.seq <= self.committed_seq)
                    .take(max)
                    .cloned()
                    .collect();
            }
        }
        out.read(self.id, seq);
        Vec::new()
    }

    /// The message `seq`, from the cache or the store.
    fn message(&self, seq: u64, out: &mut impl Outlet) -> Option<Arc<StoredMessage>> {
        match self.cached(seq) {
            Some(m) => Some(m.clone()),
            None => self.fetch(seq, 1, out).into_iter().find(|m| m.seq == seq),
        }
    }

    /// Sends a member's pending gap notice to its consumers: `Ok(true)`
    /// if one was sent, `Err` if a consumer could not take it (it is sent
    /// again on the next pump).
    fn send_gap(&mut self, key: &MemberKey, out: &mut impl Outlet) -> Result<bool, ()> {
        let Some(member) = self.members.get_mut(key) else {
            return Err(());
        };
        let Some(gap) = member.gap else {
            return Ok(false);
        };
        for c in &member.consumers {
            if !out.gap(c.session, &self.name, &c.label, gap) {
                return Err(());
            }
        }
        member.gap = None;
        Ok(true)
    }

    /// Delivers to member `key` whatever it may have now: what is due
    /// first, in seq order, then new messages in seq order, each to the
    /// consumer it belongs to, within each consumer's in-flight limit.
    ///
    /// One loop over the member's candidates ([`Room::candidate`]): each
    /// is judged by the same rules ([`Member::hand_out`]); a new one is then
    /// taken from the log, or the pump stops at it ([`Member::admit`], the
    /// one place where the two sources differ); from there on it is one of
    /// the member's due messages, and what became of it is recorded alike.
    pub fn pump(&mut self, key: &MemberKey, now: Now, out: &mut impl Outlet) -> Pumped {
        let mut done = Pumped::default();
        match self.members.get(key) {
            Some(m) if m.connected() && !m.joining => {}
            _ => return done,
        }
        match self.send_gap(key, out) {
            // The stored cursor no longer owes it.
            Ok(sent) => done.changed = sent,
            Err(()) => return done,
        }
        // Consumers whose queues are full for the rest of this pump.
        let mut blocked: Vec<Uuid> = Vec::new();
        let name = self.name.clone();
        let mut next = Next::Due { after: 0 };
        while let Some((msg, source)) = self.candidate(key, &mut next, out) {
            let Some(member) = self.members.get_mut(key) else {
                break;
            };
            let seq = msg.seq;
            let outcome = member.hand_out(&msg, source, &name, &blocked, now, out);
            if let Outcome::Blocked(session) = outcome {
                blocked.push(session);
            }
            match member.admit(&msg, source, outcome) {
                ControlFlow::Continue(taken) => done.changed |= taken,
                ControlFlow::Break(()) => break,
            }
            match outcome {
                Outcome::Expired | Outcome::Unwanted => {
                    done.expired += u64::from(matches!(outcome, Outcome::Expired));
                    member.remove(seq);
                    done.changed = true;
                }
                Outcome::Dead => {
                    let reason = member.unacked.get(&seq).and_then(|u| u.reason.clone());
                    member.remove(seq);
                    done.dead.push(DeadLetter {
                        msg,
                        attempts: source.attempts(),
                        reason,
                        member: dead_letter_member(key),
                    });
                    done.changed = true;
                }
                // Waiting is not part of the stored cursor: nothing changed
                // there (but the taking of a new message).
                Outcome::Early(until) => {
                    member.wait(seq, until, None);
                    member.schedule(until, self.id, key, out);
                }
                // It stays due, for when its consumer can take it.
                Outcome::Busy | Outcome::Blocked(_) => {}
                Outcome::Delivered { idx, attempt } => {
                    let deadline = member.hold(seq, idx, attempt, msg.info.key_hash, now.instant);
                    member.schedule(deadline, self.id, key, out);
                    done.changed = true;
                }
            }
        }
        done
    }

    /// Member `key`'s next candidate for delivery in the pump at `next`:
    /// its lowest due seq not yet looked at, then, when none is left, the
    /// message at its cursor (a gap in the log, where messages were
    /// trimmed, is skipped). `None` ends the pump: the member has nothing
    /// more for now, may take no more from the log (its in-flight window is
    /// full, or too many messages wait), or waits for a message that is not
    /// at hand and was asked for ([`Outlet::read`]; the room is pumped again
    /// when it comes).
    fn candidate(
        &mut self,
        key: &MemberKey,
        next: &mut Next,
        out: &mut impl Outlet,
    ) -> Option<(Arc<StoredMessage>, Source)> {
        loop {
            match next {
                Next::Due { after } => {
                    let member = self.members.get(key)?;
                    let range = (Bound::Excluded(*after), Bound::Unbounded);
                    let Some(&seq) = member.due.range(range).next() else {
                        *next = Next::New(Vec::new().into_iter());
                        continue;
                    };
                    *after = seq;
                    // Unreadable (the read failed and was logged): the
                    // member waits here rather than lose the message.
                    let msg = self.message(seq, out)?;
                    let Some(u) = self.members.get(key)?.unacked.get(&seq) else {
                        continue;
                    };
                    let source = Source::Due {
                        attempts: u.attempts,
                        seen_by: u.seen_by,
                    };
                    return Some((msg, source));
                }
                Next::New(batch) => {
                    if batch.as_slice().is_empty() {
                        let member = self.members.get(key)?;
                        let window = member.window();
                        let taken = member.in_flight() + member.due.len();
                        // Waiting messages use no in-flight slot; this bounds
                        // them (and the stored cursor) however often a client
                        // nacks with a delay.
                        if taken >= window
                            || member.waiting >= MAX_WAITING
                            || member.next_seq > self.committed_seq
                        {
                            return None;
                        }
                        let max = (window - taken).min(256);
                        *batch = self.fetch(member.next_seq, max, out).into_iter();
                    }
                    let msg = batch.next()?;
                    let member = self.members.get_mut(key)?;
                    if msg.seq < member.next_seq {
                        continue;
                    }
                    member.next_seq = msg.seq;
                    return Some((msg, Source::New));
                }
            }
        }
    }

    /// Delivers a volatile message to the consumers joined now, at most
    /// once per session (`served`, shared by the rooms of one publish).
    /// Dropped wherever a queue is full.
    pub fn volatile(
        &mut self,
        msg: &Arc<StoredMessage>,
        served: &mut Vec<Uuid>,
        out: &mut impl Outlet,
    ) {
        let name = self.name.clone();
        for member in self.members.values_mut() {
            if !member.connected() || member.joining || member.skips(msg) {
                continue;
            }
            let none_blocked: [Uuid; 0] = [];
            // Capacity does not matter: volatile messages are not tracked.
            let pick = match member.group {
                None | Some(GroupMode::Exclusive) => member
                    .consumers
                    .iter()
                    .position(|c| !excluded_for(msg, c.session, &name, true, &*out)),
                Some(GroupMode::KeyOrdered) => {
                    match member.choose(msg, &name, None, &none_blocked, &*out) {
                        Ok(Some(i)) => Some(i),
                        Ok(None) => member
                            .consumers
                            .iter()
                            .position(|c| !excluded_for(msg, c.session, &name, true, &*out)),
                        Err(()) => None,
                    }
                }
            };
            let Some(c) = pick.and_then(|i| member.consumers.get(i)) else {
                continue;
            };
            if served.contains(&c.session) {
                continue;
            }
            let send = Handout {
                session: c.session,
                room: &name,
                label: &c.label,
                attempt: 1,
                redelivered: false,
                volatile: true,
            };
            if out.deliver(send, msg) {
                served.push(c.session);
            }
        }
    }
}

/// Whether `msg` has expired by `now`.
fn expired(msg: &StoredMessage, now: Now) -> bool {
    msg.info.expires_at_ms != 0 && msg.info.expires_at_ms <= now.wall_ms
}

/// The name a dead letter records for member `key`.
fn dead_letter_member(key: &MemberKey) -> Arc<str> {
    match key {
        MemberKey::Durable(n) | MemberKey::Group(n) => n.clone(),
        MemberKey::Ephemeral(..) => Arc::from(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message as _;

    #[derive(Default)]
    struct Recorder {
        /// (session, seq, attempt, redelivered)
        sent: Vec<(Uuid, u64, u32, bool)>,
        capacity: usize,
        gen: u64,
        gaps: Vec<Gap>,
        /// Sessions whose queues are full.
        full: Vec<Uuid>,
        /// Store reads asked for, by first seq.
        reads: Vec<u64>,
    }

    impl Recorder {
        fn seqs(&self) -> Vec<u64> {
            self.sent.iter().map(|s| s.1).collect()
        }
    }

    impl Outlet for Recorder {
        fn deliver(&mut self, to: Handout<'_>, msg: &Arc<StoredMessage>) -> bool {
            if self.sent.len() >= self.capacity || self.full.contains(&to.session) {
                return false;
            }
            self.sent
                .push((to.session, msg.seq, to.attempt, to.redelivered));
            true
        }
        fn gap(&mut self, _: Uuid, _: &Arc<str>, _: &Arc<str>, gap: Gap) -> bool {
            self.gaps.push(gap);
            true
        }
        fn read(&mut self, _: RoomId, from: u64) {
            self.reads.push(from);
        }
        fn in_room(&self, _: Uuid, _: &str) -> bool {
            false
        }
    }

    impl Timers for Recorder {
        fn arm_timer(&mut self, _: Instant, _: RoomId, _: &MemberKey) {
            self.gen += 1;
        }
    }

    fn out() -> Recorder {
        Recorder {
            capacity: 10_000,
            ..Default::default()
        }
    }

    fn now() -> Now {
        Now {
            instant: Instant::now(),
            wall_ms: 1_000_000,
        }
    }

    fn keyed(seq: u64, key: &str) -> Arc<StoredMessage> {
        let m = roomq_wire::pb::Message {
            event: "e".into(),
            key: key.into(),
            ..Default::default()
        };
        Arc::new(StoredMessage::new(seq, Bytes::from(m.encode_to_vec())))
    }

    fn msg(seq: u64, except_session: Option<Uuid>) -> Arc<StoredMessage> {
        let mut m = StoredMessage::new(seq, Bytes::new());
        m.except_session = except_session.map(|u| *u.as_bytes());
        Arc::new(m)
    }

    fn consumer(max_in_flight: u32) -> Consumer {
        Consumer::new(
            Uuid::new_v4(),
            "".into(),
            max_in_flight,
            Duration::from_secs(1),
        )
    }

    fn room_with(n: u64, max_in_flight: u32) -> (Room, MemberKey, Uuid) {
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        let msgs: Vec<_> = (1..=n).map(|s| msg(s, None)).collect();
        room.last_seq = n;
        room.committed(&msgs, 1000, usize::MAX);
        let key = MemberKey::Durable("m".into());
        let mut m = Member::new(true, 1, 0);
        let c = consumer(max_in_flight);
        let session = c.session;
        m.attach(c);
        room.members.insert(key.clone(), m);
        (room, key, session)
    }

    #[test]
    fn in_flight_limit_and_order() {
        let (mut room, key, s) = room_with(10, 3);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.seqs(), vec![1, 2, 3]);
        let m = room.members.get_mut(&key).unwrap();
        m.ack(s, &[2], 0).unwrap();
        assert_eq!(m.ack_floor(), 1);
        room.pump(&key, now(), &mut out);
        assert_eq!(out.seqs().last(), Some(&4));
        let m = room.members.get_mut(&key).unwrap();
        m.ack(s, &[], 4).unwrap();
        assert_eq!(m.ack_floor(), 5);
        assert!(m.ack(s, &[], 5).is_err(), "seq 5 was never delivered");
        assert!(m.ack(s, &[99], 0).is_err());
        assert!(m.ack(s, &[1], 0).is_ok(), "acking twice is harmless");
        assert_eq!(m.in_flight(), 0);
        assert_eq!(m.consumers[0].in_flight, 0);
    }

    #[test]
    fn detach_makes_unacked_due_and_redelivery_comes_first() {
        let (mut room, key, s) = room_with(5, 2);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        let m = room.members.get_mut(&key).unwrap();
        assert!(m.detach(s));
        let c = consumer(2);
        let s2 = c.session;
        m.attach(c);
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.sent, vec![(s2, 1, 2, true), (s2, 2, 2, true)]);
    }

    #[test]
    fn full_outlet_keeps_the_message_for_later() {
        let (mut room, key, _) = room_with(5, 10);
        let mut out = Recorder {
            capacity: 2,
            ..Default::default()
        };
        room.pump(&key, now(), &mut out);
        assert_eq!(room.members[&key].next_seq, 3);
        out.capacity = 100;
        room.pump(&key, now(), &mut out);
        assert_eq!(out.seqs(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn except_self_skips_own_session() {
        let (mut room, key, session) = room_with(0, 10);
        let msgs = vec![msg(1, Some(session)), msg(2, None)];
        room.committed(&msgs, 1000, usize::MAX);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.seqs(), vec![2]);
        assert_eq!(room.members[&key].ack_floor(), 2);
    }

    #[test]
    fn one_timer_per_member_however_many_deliveries() {
        let (mut room, key, s) = room_with(100, 1000);
        let mut out = out();
        let t0 = now();
        room.pump(&key, t0, &mut out);
        assert_eq!(out.sent.len(), 100);
        assert_eq!(out.gen, 1, "one timer armed for 100 deliveries");
        let m = room.members.get_mut(&key).unwrap();
        m.ack(s, &[], 50).unwrap();
        let fired = t0.instant + Duration::from_secs(1);
        assert!(
            !m.on_timer(fired - Duration::from_millis(1), fired, 1, &key, &mut out),
            "stale timer ignored"
        );
        assert!(m.on_timer(fired, fired, 1, &key, &mut out));
        assert_eq!(m.due.len(), 50);
        assert_eq!(m.in_flight(), 0);
        assert_eq!(m.armed, None, "nothing left to time");
    }

    fn group_room(msgs: &[Arc<StoredMessage>], consumers: usize, mif: u32) -> (Room, MemberKey) {
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        room.last_seq = msgs.len() as u64;
        room.committed(msgs, 10_000, usize::MAX);
        let key = MemberKey::Group("g".into());
        let mut m = Member::new(true, 1, 0);
        m.group = Some(GroupMode::KeyOrdered);
        for _ in 0..consumers {
            m.attach(consumer(mif));
        }
        room.members.insert(key.clone(), m);
        (room, key)
    }

    /// Acks everything in flight at `session`, as its client would.
    fn ack_all(room: &mut Room, key: &MemberKey, session: Uuid) {
        let m = room.members.get_mut(key).unwrap();
        let held: Vec<u64> = m
            .unacked
            .iter()
            .filter(|(_, u)| u.holder == Some(session))
            .map(|(s, _)| *s)
            .collect();
        m.ack(session, &held, 0).unwrap();
    }

    #[test]
    fn group_keys_stay_with_one_consumer_and_each_message_goes_once() {
        let keys = ["a", "b", "c", "d", "e", "f"];
        let msgs: Vec<_> = (1..=60).map(|s| keyed(s, keys[(s % 6) as usize])).collect();
        let (mut room, key) = group_room(&msgs, 3, 1000);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.sent.len(), 60, "every message handed out");
        let mut owner: HashMap<u64, Uuid> = HashMap::new();
        for (session, seq, _, _) in &out.sent {
            let k = seq % 6;
            assert_eq!(*owner.entry(k).or_insert(*session), *session, "key {k}");
        }
        let mut seqs = out.seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    }

    #[test]
    fn a_departing_consumer_hands_its_keys_over_in_order() {
        let msgs: Vec<_> = (1..=40).map(|s| keyed(s, &format!("k{}", s % 4))).collect();
        let (mut room, key) = group_room(&msgs, 2, 5);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        let first = out.sent.clone();
        let leaving = first[0].0;
        let staying = room.members[&key]
            .consumers
            .iter()
            .map(|c| c.session)
            .find(|s| *s != leaving)
            .unwrap();
        ack_all(&mut room, &key, staying);
        room.members.get_mut(&key).unwrap().detach(leaving);
        out.sent.clear();
        for _ in 0..40 {
            room.pump(&key, now(), &mut out);
            ack_all(&mut room, &key, staying);
        }
        // Every seq is processed by someone; what `leaving` never acked
        // comes again, and each key's messages reach `staying` in order.
        let mut got: Vec<u64> = out.seqs();
        let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
        for s in &got {
            by_key.entry(s % 4).or_default().push(*s);
        }
        for (k, v) in by_key {
            assert!(v.windows(2).all(|w| w[0] < w[1]), "key {k}: {v:?}");
        }
        got.extend(first.iter().filter(|f| f.0 == staying).map(|f| f.1));
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (1..=40).collect::<Vec<_>>());
        assert_eq!(room.members[&key].ack_floor(), 41);
    }

    #[test]
    fn a_pinned_key_waits_for_its_busy_consumer_while_others_go_on() {
        // Key "x" everywhere but seq 2 and 4, which have keys of their own.
        let msgs = vec![keyed(1, "x"), keyed(2, "y"), keyed(3, "x"), keyed(4, "z")];
        let (mut room, key) = group_room(&msgs, 2, 1);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        let m = &room.members[&key];
        // Seq 1 is in flight; seq 3 (same key) must not go elsewhere.
        let at_1 = m.unacked[&1].holder.unwrap();
        if let Some(u) = m.unacked.get(&3) {
            assert!(u.holder.is_none() || u.holder == Some(at_1));
        }
        let sessions: Vec<Uuid> = m.consumers.iter().map(|c| c.session).collect();
        for _ in 0..4 {
            for s in &sessions {
                ack_all(&mut room, &key, *s);
            }
            room.pump(&key, now(), &mut out);
        }
        assert_eq!(out.sent.len(), 4, "each message once: {:?}", out.sent);
        let pos = |s: u64| out.sent.iter().position(|x| x.1 == s).unwrap();
        assert!(pos(1) < pos(3));
        assert_eq!(out.sent[pos(3)].0, at_1);
    }

    #[test]
    fn exclusive_group_feeds_only_the_first_consumer() {
        let msgs: Vec<_> = (1..=5).map(|s| msg(s, None)).collect();
        let (mut room, key) = group_room(&msgs, 2, 10);
        room.members.get_mut(&key).unwrap().group = Some(GroupMode::Exclusive);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        let active = room.members[&key].consumers[0].session;
        assert!(out.sent.iter().all(|s| s.0 == active));
        room.members.get_mut(&key).unwrap().detach(active);
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        let standby = room.members[&key].consumers[0].session;
        assert_eq!(out.seqs(), vec![1, 2, 3, 4, 5]);
        assert!(out.sent.iter().all(|s| s.0 == standby && s.3));
    }

    #[test]
    fn dead_letter_after_max_deliveries() {
        let (mut room, key, s) = room_with(2, 10);
        room.members.get_mut(&key).unwrap().max_deliveries = 2;
        let mut out = out();
        let reason: Arc<str> = Arc::from("bad input");
        for round in 0..3 {
            let p = room.pump(&key, now(), &mut out);
            let m = room.members.get_mut(&key).unwrap();
            if round < 2 {
                assert!(p.dead.is_empty());
                m.ack(s, &[2], 0).unwrap();
                m.make_due(1, Some(reason.clone()));
            } else {
                assert_eq!(p.dead.len(), 1);
                assert_eq!(p.dead[0].msg.seq, 1);
                assert_eq!(p.dead[0].attempts, 2);
                assert_eq!(p.dead[0].reason.as_deref(), Some("bad input"));
            }
        }
        assert_eq!(room.members[&key].ack_floor(), 3, "the cursor moved on");
    }

    #[test]
    fn scheduled_messages_wait_without_blocking_later_ones() {
        let t = now();
        let later = roomq_wire::pb::Message {
            deliver_at_ms: t.wall_ms + 5_000,
            ..Default::default()
        };
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        let msgs = vec![
            Arc::new(StoredMessage::new(1, Bytes::from(later.encode_to_vec()))),
            msg(2, None),
        ];
        room.last_seq = 2;
        room.committed(&msgs, 100, usize::MAX);
        let key = MemberKey::Durable("m".into());
        let mut m = Member::new(true, 1, 0);
        let c = consumer(1);
        let s = c.session;
        m.attach(c);
        room.members.insert(key.clone(), m);
        let mut out = out();
        room.pump(&key, t, &mut out);
        assert_eq!(out.seqs(), vec![2], "seq 1 waits; it does not use a slot");
        let m = room.members.get_mut(&key).unwrap();
        assert!(m.ack(s, &[], 2).is_ok());
        assert_eq!(
            m.ack_floor(),
            1,
            "a cumulative ack skips what was never delivered"
        );
        let at = t.instant + Duration::from_secs(5);
        assert!(m.on_timer(m.armed.unwrap(), at, 1, &key, &mut out));
        let later = Now {
            instant: at,
            wall_ms: t.wall_ms + 5_000,
        };
        room.pump(&key, later, &mut out);
        assert_eq!(out.seqs(), vec![2, 1]);
    }

    #[test]
    fn trimming_owes_a_gap_notice() {
        let (mut room, key, s) = room_with(10, 3);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        room.members.get_mut(&key).unwrap().ack(s, &[1], 0).unwrap();
        room.trim(8, 0);
        let m = &room.members[&key];
        assert_eq!(m.ack_floor(), 8);
        assert_eq!(
            m.gap,
            Some(Gap {
                from: 2,
                to: 7,
                missed: 6
            })
        );
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.gaps.len(), 1);
        assert_eq!(out.seqs(), vec![8, 9, 10]);
        assert_eq!(room.members[&key].gap, None);
    }

    /// A message with an expiry and a deliver-at time (0: none).
    fn timed(seq: u64, expires_at_ms: u64, deliver_at_ms: u64) -> Arc<StoredMessage> {
        let m = roomq_wire::pb::Message {
            expires_at_ms,
            deliver_at_ms,
            ..Default::default()
        };
        Arc::new(StoredMessage::new(seq, Bytes::from(m.encode_to_vec())))
    }

    /// A room holding `msgs` (committed and cached) and a durable member
    /// restored from `rec` with one consumer.
    fn restored(
        msgs: &[Arc<StoredMessage>],
        rec: CursorRecord,
        mif: u32,
    ) -> (Room, MemberKey, Uuid) {
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        room.committed(msgs, 100_000, usize::MAX);
        room.last_seq = room.committed_seq;
        let key = MemberKey::Durable("m".into());
        let mut m = Member::from_record(&rec, 0);
        let c = consumer(mif);
        let s = c.session;
        m.attach(c);
        room.members.insert(key.clone(), m);
        (room, key, s)
    }

    fn record(next_seq: u64, unacked: Vec<(u64, u32)>) -> CursorRecord {
        CursorRecord {
            next_seq,
            unacked,
            owner: None,
            gap: None,
        }
    }

    /// Two ordering keys of `msgs`' kind that rendezvous hashing gives to
    /// `a` and to `b`.
    fn keys_for(a: Uuid, b: Uuid) -> (String, String) {
        let owner = |k: &str| {
            let h = keyed(1, k).info.key_hash;
            if rendezvous(a, h) > rendezvous(b, h) {
                a
            } else {
                b
            }
        };
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let ka = names.iter().find(|k| owner(k) == a).unwrap().clone();
        let kb = names.iter().find(|k| owner(k) == b).unwrap().clone();
        (ka, kb)
    }

    #[test]
    fn due_redeliveries_go_first_lowest_seq_first_then_new_ones_within_the_window() {
        let (mut room, key, s) = room_with(6, 4);
        let mut out = out();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.seqs(), vec![1, 2, 3, 4]);
        let m = room.members.get_mut(&key).unwrap();
        m.ack(s, &[2], 0).unwrap();
        m.make_due(3, None);
        m.make_due(1, None);
        out.sent.clear();
        let p = room.pump(&key, now(), &mut out);
        assert_eq!(
            out.sent,
            vec![(s, 1, 2, true), (s, 3, 2, true), (s, 5, 1, false)],
            "1 and 3 again, then one new message fills the window of 4"
        );
        assert!(p.changed);
        let m = &room.members[&key];
        assert_eq!(m.next_seq, 6);
        assert_eq!(m.in_flight(), 4);
        assert!(m.due.is_empty());
    }

    #[test]
    fn a_busy_group_consumer_takes_its_message_into_due_while_the_others_go_on() {
        let mut room = Room::new(1, "/".into(), "r".into(), 0);
        let key = MemberKey::Group("g".into());
        let mut m = Member::new(true, 1, 0);
        m.group = Some(GroupMode::KeyOrdered);
        let (a, b) = (consumer(1), consumer(3));
        let (sa, sb) = (a.session, b.session);
        m.attach(a);
        m.attach(b);
        room.members.insert(key.clone(), m);
        let (ka, kb) = keys_for(sa, sb);
        let msgs = vec![
            keyed(1, &ka),
            keyed(2, &ka),
            keyed(3, &kb),
            keyed(4, &ka),
            keyed(5, &kb),
        ];
        room.committed(&msgs, 100, usize::MAX);
        room.last_seq = 5;
        let mut out = out();
        let p = room.pump(&key, now(), &mut out);
        assert_eq!(out.sent, vec![(sa, 1, 1, false), (sb, 3, 1, false)]);
        assert!(p.changed);
        let m = &room.members[&key];
        assert_eq!(m.due.iter().copied().collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(m.next_seq, 5, "window of 4 full: 2 in flight, 2 due");
        assert_eq!(m.unacked[&2].attempts, 0);

        ack_all(&mut room, &key, sa);
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        // 2 goes to `a` (a first delivery), 4 stays due behind it, and `b`
        // takes the next new message.
        assert_eq!(out.sent, vec![(sa, 2, 1, false), (sb, 5, 1, false)]);
        let m = &room.members[&key];
        assert_eq!(m.due.iter().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(m.next_seq, 6);
    }

    #[test]
    fn a_group_consumer_with_a_full_queue_gets_its_messages_later_the_others_go_on() {
        let msgs: Vec<Arc<StoredMessage>> = Vec::new();
        let (mut room, key) = group_room(&msgs, 2, 10);
        let sessions: Vec<Uuid> = room.members[&key]
            .consumers
            .iter()
            .map(|c| c.session)
            .collect();
        let (sa, sb) = (sessions[0], sessions[1]);
        let (ka, kb) = keys_for(sa, sb);
        let msgs = vec![keyed(1, &ka), keyed(2, &kb), keyed(3, &ka), keyed(4, &kb)];
        room.committed(&msgs, 100, usize::MAX);
        room.last_seq = 4;
        let mut out = out();
        out.full.push(sa);
        let p = room.pump(&key, now(), &mut out);
        assert_eq!(out.sent, vec![(sb, 2, 1, false), (sb, 4, 1, false)]);
        assert!(p.changed);
        let m = &room.members[&key];
        assert_eq!(m.due.iter().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m.next_seq, 5);

        out.full.clear();
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        assert_eq!(out.sent, vec![(sa, 1, 1, false), (sa, 3, 1, false)]);
    }

    #[test]
    fn a_member_whose_redelivery_is_refused_takes_nothing_new() {
        let (mut room, key, s) = room_with(5, 10);
        let mut out = Recorder {
            capacity: 3,
            ..Default::default()
        };
        room.pump(&key, now(), &mut out);
        assert_eq!(room.members[&key].next_seq, 4);
        room.members.get_mut(&key).unwrap().make_due(1, None);
        let p = room.pump(&key, now(), &mut out);
        assert!(!p.changed, "nothing taken, nothing delivered");
        let m = &room.members[&key];
        assert_eq!(m.next_seq, 4, "the cursor stays at the first new one");
        assert_eq!(m.due.iter().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.unacked.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);

        out.capacity = 100;
        out.sent.clear();
        room.pump(&key, now(), &mut out);
        assert_eq!(
            out.sent,
            vec![(s, 1, 2, true), (s, 4, 1, false), (s, 5, 1, false)]
        );
    }

    #[test]
    fn waiting_messages_are_bounded() {
        let t = now();
        let later = t.wall_ms + 5_000;
        let n = MAX_WAITING as u64;
        let mut msgs: Vec<_> = (1..=n).map(|s| timed(s, 0, later)).collect();
        msgs.push(msg(n + 1, None));
        msgs.push(timed(n + 2, 0, later));
        msgs.push(msg(n + 3, None));
        let (mut room, key, s) = restored(&msgs, record(1, Vec::new()), 1000);
        let mut out = out();
        let p = room.pump(&key, t, &mut out);
        // The bound is looked at before each read of the log and before a
        // scheduled message is taken: a plain message read with the last
        // scheduled ones that fit still goes out; the next scheduled one
        // stops the member.
        assert_eq!(out.sent, vec![(s, n + 1, 1, false)]);
        assert!(p.changed);
        let m = &room.members[&key];
        assert_eq!(m.waiting, MAX_WAITING);
        assert_eq!(m.next_seq, n + 2);
        assert_eq!(
            out.gen, 2,
            "one timer for the waiting, one for the delivery"
        );

        let p = room.pump(&key, t, &mut out);
        assert_eq!(out.sent.len(), 1);
        assert!(!p.changed);
        assert_eq!(room.members[&key].next_seq, n + 2);
    }

    #[test]
    fn a_due_message_not_yet_deliverable_waits_without_changing_the_cursor() {
        let t = now();
        let msgs = vec![timed(1, 0, t.wall_ms + 5_000)];
        let (mut room, key, _) = restored(&msgs, record(2, vec![(1, 1)]), 10);
        let mut out = out();
        let p = room.pump(&key, t, &mut out);
        assert!(out.sent.is_empty());
        assert!(!p.changed, "waiting is not stored");
        let m = &room.members[&key];
        assert_eq!(m.waiting, 1);
        assert!(m.due.is_empty());
        assert_eq!(m.armed, Some(t.instant + Duration::from_secs(5)));
        assert_eq!(out.gen, 1);
    }

    #[test]
    fn expired_messages_are_dropped_and_counted_whether_due_or_new() {
        let t = now();
        let gone = t.wall_ms - 1;
        let msgs = vec![
            timed(1, gone, 0),
            msg(2, None),
            timed(3, gone, 0),
            msg(4, None),
        ];
        let (mut room, key, s) = restored(&msgs, record(3, vec![(1, 1)]), 10);
        let mut out = out();
        let p = room.pump(&key, t, &mut out);
        assert_eq!(p.expired, 2);
        assert!(p.changed);
        assert_eq!(out.sent, vec![(s, 4, 1, false)]);
        let m = &room.members[&key];
        assert_eq!(m.unacked.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(m.next_seq, 5);
    }

    #[test]
    fn a_due_message_not_at_hand_is_read_and_the_member_waits_for_it() {
        let msgs = vec![msg(5, None), msg(6, None)];
        let (mut room, key, s) = restored(&msgs, record(5, vec![(2, 1)]), 10);
        let mut out = out();
        let p = room.pump(&key, now(), &mut out);
        assert_eq!(out.reads, vec![2]);
        assert!(out.sent.is_empty(), "new messages wait behind it");
        assert!(!p.changed);

        room.lend(2, vec![msg(2, None)]);
        room.pump(&key, now(), &mut out);
        room.release();
        assert_eq!(
            out.sent,
            vec![(s, 2, 2, true), (s, 5, 1, false), (s, 6, 1, false)]
        );
        assert_eq!(out.reads, vec![2]);
    }
}
