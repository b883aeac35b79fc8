//! `Join`: become a member of a room — durable (a stored cursor, named by
//! the subscription or the client id) or ephemeral — from a start position.

use std::sync::Arc;
use std::time::Duration;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use tracing::info;
use uuid::Uuid;

use super::core::Broker;
use super::dead_letter;
use super::error::BrokerError;
use super::reply::{Deferred, Reply, Resume};
use super::room::{Consumer, GroupMode, Member, MemberKey};
use crate::config::Limits;
use crate::metrics::Quota;
use crate::storage::{RoomId, Store};

/// Longest ack timeout a member may ask for: one day.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Where a member starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Resume,
    New,
    Earliest,
    Seq(u64),
    /// The first message accepted at or after this wall time (ms).
    Time(u64),
    /// A `Time` start, found: this seq (or the end of the log, if past it).
    Found(u64),
}

/// A checked join.
#[derive(Debug)]
pub struct JoinReq {
    pub room: String,
    /// The subscription label as the client gave it ("" allowed).
    pub label: Arc<str>,
    pub mode: pb::MemberMode,
    pub start: Start,
    pub max_in_flight: u32,
    pub ack_timeout: Duration,
    /// The group joined, if any, and how it hands out messages.
    pub group: Option<(Arc<str>, GroupMode)>,
    pub backoff: Arc<[Duration]>,
    pub max_deliveries: u32,
    pub events: Arc<[String]>,
    pub presence: bool,
}

/// Checks a join; runs on the session's task.
pub fn check(j: pb::Join, limits: &Limits) -> Result<JoinReq, BrokerError> {
    let invalid = BrokerError::InvalidRequest;
    check_name("room", &j.room)?;
    if !j.subscription.is_empty() {
        check_name("subscription", &j.subscription)?;
    }
    let mode = pb::MemberMode::try_from(j.mode)
        .map_err(|_| invalid(format!("unknown member mode {}", j.mode)))?;
    let start = match pb::StartPosition::try_from(j.start) {
        Ok(pb::StartPosition::Resume) => Start::Resume,
        Ok(pb::StartPosition::New) => Start::New,
        Ok(pb::StartPosition::Earliest) => Start::Earliest,
        Ok(pb::StartPosition::Seq) => Start::Seq(j.start_seq),
        Ok(pb::StartPosition::Time) => Start::Time(j.start_time_ms),
        Err(_) => return Err(invalid(format!("unknown start position {}", j.start))),
    };
    let max_in_flight = match j.max_in_flight {
        0 => limits.max_in_flight,
        n => n.min(limits.max_in_flight),
    };
    let ack_timeout = match j.ack_timeout_ms {
        0 => limits.ack_timeout(),
        ms => Duration::from_millis(ms).min(MAX_ACK_TIMEOUT),
    };
    let group = if j.group.is_empty() {
        None
    } else {
        check_name("group", &j.group)?;
        if mode == pb::MemberMode::Ephemeral {
            return Err(invalid(
                "a group is durable; it cannot be joined as ephemeral".into(),
            ));
        }
        let gm = match pb::GroupMode::try_from(j.group_mode) {
            Ok(pb::GroupMode::KeyOrdered) => GroupMode::KeyOrdered,
            Ok(pb::GroupMode::Exclusive) => GroupMode::Exclusive,
            Err(_) => return Err(invalid(format!("unknown group mode {}", j.group_mode))),
        };
        Some((Arc::from(j.group), gm))
    };
    if j.backoff_ms.len() > limits.max_backoff_steps as usize {
        return Err(invalid(format!(
            "backoff_ms has {} entries; the limit is {}",
            j.backoff_ms.len(),
            limits.max_backoff_steps
        )));
    }
    if j.backoff_ms.contains(&0) {
        return Err(invalid("backoff_ms entries must be at least 1 ms".into()));
    }
    let backoff: Arc<[Duration]> = j
        .backoff_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms).min(MAX_ACK_TIMEOUT))
        .collect();
    let max_deliveries = j.max_deliveries.unwrap_or(limits.max_deliveries);
    if max_deliveries > 0 && dead_letter::room_of(&j.room).is_none() {
        return Err(invalid(format!(
            "room {:?} is too long to have a dead-letter room; join with max_deliveries 0",
            j.room
        )));
    }
    if j.events.len() > limits.max_headers as usize {
        return Err(invalid(format!(
            "{} event patterns; the limit is {}",
            j.events.len(),
            limits.max_headers
        )));
    }
    for e in &j.events {
        check_name("event pattern", e)?;
    }
    Ok(JoinReq {
        room: j.room,
        label: Arc::from(j.subscription),
        mode,
        start,
        max_in_flight,
        ack_timeout,
        group,
        backoff,
        max_deliveries,
        events: Arc::from(j.events),
        presence: j.presence,
    })
}

impl Broker {
    pub(super) fn join(&mut self, session: Uuid, mut req: JoinReq) -> Result<Reply, BrokerError> {
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Ok(Reply::Gone);
        };
        // A start by time that the room's cache cannot answer searches the
        // stored log beside the actor; the join goes on when it is found.
        if let Start::Time(ms) = req.start {
            if let Some(room_id) = self.rooms.find(&entry.info.namespace, &req.room) {
                match self.time_search(room_id, ms) {
                    TimeSearch::At(seq) => req.start = Start::Found(seq),
                    TimeSearch::Store { lo, hi } => {
                        let store = self.outlet.reads.store();
                        return Ok(Reply::AfterRead(Resume::new(async move {
                            req.start = Start::Found(search_time(store, room_id, ms, lo, hi).await);
                            req
                        })));
                    }
                }
            }
        }
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Ok(Reply::Gone);
        };
        let info = entry.info.clone();
        if entry
            .memberships
            .contains_key(&(Arc::from(req.room.as_str()), req.label.clone()))
        {
            return Err(BrokerError::AlreadyJoined {
                room: req.room,
                subscription: req.label,
            });
        }
        if entry.memberships.len() >= self.config.limits.max_memberships_per_session as usize {
            let detail = format!(
                "a session may hold {} memberships",
                self.config.limits.max_memberships_per_session
            );
            entry.info.tenant.metrics.quota_refused(Quota::Memberships);
            return Err(BrokerError::QuotaExceeded {
                quota: Quota::Memberships,
                detail,
            });
        }
        let name: Option<Arc<str>> = if req.label.is_empty() {
            info.client_id.clone()
        } else {
            Some(req.label.clone())
        };
        let durable_name = match (req.mode, name) {
            (pb::MemberMode::Ephemeral, _) => None,
            (pb::MemberMode::Auto, name) => name,
            (pb::MemberMode::Durable, Some(name)) => Some(name),
            (pb::MemberMode::Durable, None) if req.group.is_some() => None,
            (pb::MemberMode::Durable, None) => return Err(BrokerError::NoDurableName),
        };
        self.rooms.check(&info.tenant, [req.room.as_str()])?;
        let room_id = self
            .rooms
            .create(&info.namespace, &req.room, self.pipeline.batch());
        let key = match (&req.group, &durable_name) {
            (Some((g, _)), _) => MemberKey::Group(g.clone()),
            (None, Some(n)) => MemberKey::Durable(n.clone()),
            (None, None) => MemberKey::Ephemeral(session, req.label.clone()),
        };
        let group = req.group.as_ref().map(|(_, mode)| *mode);

        // A durable member held by another session moves to this one (a
        // group takes any number of sessions).
        let previous = match group {
            Some(_) => None,
            None => self
                .rooms
                .get(&room_id)
                .and_then(|r| r.members.get(&key))
                .and_then(|m| m.consumers.first())
                .map(|c| (c.session, c.label.clone())),
        };
        let holds_already = self
            .rooms
            .get(&room_id)
            .and_then(|r| r.members.get(&key))
            .is_some_and(|m| m.consumer(session).is_some());
        if holds_already {
            return Err(BrokerError::AlreadyHeld {
                member: key_name(&key).to_string(),
                room: req.room,
            });
        }
        if let Some((prev, prev_label)) = previous {
            let room_name: Arc<str> = Arc::from(req.room.as_str());
            let taken = BrokerError::MembershipTakenOver {
                room: req.room.clone(),
                subscription: prev_label.clone(),
                member: key_name(&key).to_string(),
            };
            if let Some(other) = self.outlet.sessions.get_mut(&prev) {
                other.memberships.remove(&(room_name, prev_label));
            }
            if let Some(m) = self
                .rooms
                .get_mut(&room_id)
                .and_then(|r| r.members.get_mut(&key))
            {
                m.detach(prev);
            }
            self.presence_event(room_id, &key, prev, pb::presence_event::Kind::Left);
            self.push_error(prev, taken);
        }

        let Some(room) = self.rooms.get_mut(&room_id) else {
            return Ok(Reply::Gone);
        };
        // (After a purge the log may start past what is committed yet.)
        let end = (room.committed_seq + 1).max(room.first_seq);
        let position = match req.start {
            Start::Resume | Start::New => end,
            Start::Earliest => room.first_seq,
            Start::Seq(s) => s.clamp(room.first_seq, end),
            Start::Found(s) => s.clamp(room.first_seq, end),
            // The room is new: nothing was stored at any time.
            Start::Time(_) => end,
        };
        let is_new = !room.members.contains_key(&key);
        let durable = durable_name.is_some() || group.is_some();
        let member = room
            .members
            .entry(key.clone())
            .or_insert_with(|| Member::new(durable, position, req.max_deliveries));
        // A group's cursor is shared: only its first join places it.
        let reposition = req.start != Start::Resume && (group.is_none() || is_new);
        if reposition && !is_new {
            member.reposition(position);
        }
        // A durable member's new position must be on disk before the client
        // is told it joined. Otherwise a crash could forget the member while a
        // publish that was already being written when it joined is confirmed;
        // it would come back "new", past that confirmed message.
        let must_persist = member.durable && (is_new || reposition);
        member.group = group;
        member.max_deliveries = req.max_deliveries;
        member.events = req.events.clone();
        if member.durable && group.is_none() {
            member.owner = info.client_id.clone();
        }
        let mut consumer = Consumer::new(
            session,
            req.label.clone(),
            req.max_in_flight,
            req.ack_timeout,
        );
        consumer.backoff = req.backoff.clone();
        consumer.presence = req.presence;
        member.attach(consumer);
        let reply = pb::JoinOk {
            room: req.room.clone(),
            subscription: match &key {
                MemberKey::Durable(n) | MemberKey::Group(n) => n.to_string(),
                MemberKey::Ephemeral(..) => String::new(),
            },
            durable: member.durable,
            next_seq: member.ack_floor(),
            last_seq: room.committed_seq,
            max_in_flight: req.max_in_flight,
            ack_timeout_ms: u64::try_from(req.ack_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let room_name = room.name.clone();
        if must_persist {
            member.joining = true;
            if let Some(name) = key.stored_name() {
                self.pipeline
                    .batch()
                    .cursors
                    .push((room_id, name, Some(member.record())));
            }
        } else if member.durable {
            self.pipeline.mark_dirty(room_id, key.clone());
        }
        if let Some(entry) = self.outlet.sessions.get_mut(&session) {
            entry
                .memberships
                .insert((room_name, req.label.clone()), (room_id, key.clone()));
        }
        info!(
            namespace = %info.namespace,
            session = %session,
            room = %req.room,
            member = key_name(&key),
            group = group.is_some(),
            durable = reply.durable,
            next_seq = reply.next_seq,
            "joined"
        );
        self.presence_event(room_id, &key, session, pb::presence_event::Kind::Joined);
        let body = pb::server_frame::Body::JoinOk(reply);
        if must_persist {
            Ok(Reply::AfterSync(Deferred::Frame {
                body,
                then_pump: Some((room_id, key)),
            }))
        } else {
            Ok(Reply::NowThenPump(body, room_id, key))
        }
    }

    /// Where a start at wall time `ms` in `room_id` is, if the room's
    /// cache (its newest committed messages) tells; otherwise the range of
    /// the stored log to search. Accept times grow with seqs.
    fn time_search(&self, room_id: RoomId, ms: u64) -> TimeSearch {
        let Some(room) = self.rooms.get(&room_id) else {
            return TimeSearch::At(1);
        };
        let end = room.committed_seq + 1;
        let cache = &room.cache;
        if cache.front().is_some_and(|m| m.info.timestamp_ms < ms) {
            let idx = cache.partition_point(|m| m.info.timestamp_ms < ms);
            return TimeSearch::At(cache.get(idx).map_or(end, |m| m.seq));
        }
        // Everything cached is at or after `ms`: the start is at or before
        // the cache's first message.
        let hi = cache.front().map_or(end, |m| m.seq);
        let lo = room.first_seq;
        if lo >= hi {
            TimeSearch::At(hi)
        } else {
            TimeSearch::Store { lo, hi }
        }
    }
}

/// Where a start by time is.
enum TimeSearch {
    /// At this seq.
    At(u64),
    /// In the stored log, in `lo..=hi` (`hi`: none before it qualifies).
    Store { lo: u64, hi: u64 },
}

/// The first stored seq of `room` in `lo..hi` accepted at or after wall
/// time `ms`, or `hi` if none: a binary search over the stored log.
async fn search_time(
    store: Arc<dyn Store>,
    room: RoomId,
    ms: u64,
    mut lo: u64,
    mut hi: u64,
) -> u64 {
    // Invariant: every seq below `lo` is older than `ms`; `hi` is the end
    // of the range or at/after `ms`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found = match store.read(room, mid, 1, usize::MAX).await {
            Ok(v) => v.into_iter().next(),
            Err(e) => {
                tracing::error!(room_id = room, error = %e, "cannot read the log to find a start time");
                return hi;
            }
        };
        match found {
            // `mid` itself may be trimmed: the next stored one stands in.
            Some(m) if m.seq < hi && m.info.timestamp_ms < ms => lo = m.seq + 1,
            Some(m) if m.seq < hi => hi = mid.max(lo).min(m.seq),
            _ => hi = mid,
        }
    }
    lo
}

/// A member's name for logs and errors.
fn key_name(key: &MemberKey) -> &str {
    match key {
        MemberKey::Durable(n) | MemberKey::Group(n) => n,
        MemberKey::Ephemeral(_, label) => label,
    }
}
