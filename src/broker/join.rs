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
use super::outlet::SessionEntry;
use super::pipeline::WritePipeline;
use super::reply::{Deferred, Reply, Resume};
use super::room::{Consumer, GroupMode, Member, MemberKey, Room};
use crate::config::Limits;
use crate::metrics::Quota;
use crate::storage::{RoomId, Store, StoreError};

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
    /// A `Time` start whose search of the stored log could not read it:
    /// the join is refused (the client may try again) rather than started
    /// somewhere other than asked.
    Unfound,
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
    /// Makes `session` a member of a room as `req` asks. The steps run in
    /// this order and the first refusal wins: the start by time is found,
    /// the session is admitted, the member is named, the room is checked
    /// (and created), the member is taken over from another session, the
    /// consumer is attached and its position filed for disk; then the
    /// membership is recorded, logged and announced, and the reply goes.
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
                            req.start = match search_time(store, room_id, ms, lo, hi).await {
                                Ok(seq) => Start::Found(seq),
                                Err(e) => {
                                    tracing::error!(room_id, error = %e, "cannot read the log to find a start time; join refused");
                                    Start::Unfound
                                }
                            };
                            req
                        })));
                    }
                }
            }
        }
        if req.start == Start::Unfound {
            return Err(BrokerError::Internal(
                "the stored log could not be read to find the start time; try again".into(),
            ));
        }
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Ok(Reply::Gone);
        };
        admit(entry, &req, &self.config.limits)?;
        let info = entry.info.clone();
        let joined = self.join_admitted(session, req, &info);
        if !matches!(joined, Ok(Reply::NowThenPump(..) | Reply::AfterSync(_))) {
            // The membership reserved by `admit` was not made.
            info.rooms.release();
        }
        joined
    }

    /// The join of `session` (`info`) once `admit` reserved its
    /// membership: the member is named, the room checked (and created),
    /// taken over, attached, recorded and announced.
    fn join_admitted(
        &mut self,
        session: Uuid,
        req: JoinReq,
        info: &Arc<crate::session::SessionInfo>,
    ) -> Result<Reply, BrokerError> {
        let group_name = req.group.as_ref().map(|(name, _)| name);
        let (key, durable_name) = member_key(
            req.mode,
            &req.label,
            info.client_id.as_ref(),
            group_name,
            session,
        )?;
        self.rooms.check(&info.tenant, [req.room.as_str()])?;
        let room_id = self
            .rooms
            .create(&info.namespace, &req.room, self.pipeline.batch());
        self.take_over(room_id, &key, session, &req.room)?;
        let durable = durable_name.is_some() || req.group.is_some();
        let Some(joined) = self.attach(room_id, &key, durable, session, &req, &info.client_id)
        else {
            return Ok(Reply::Gone);
        };
        if let Some(entry) = self.outlet.sessions.get_mut(&session) {
            entry.add_membership(
                joined.room_name.clone(),
                req.label.clone(),
                room_id,
                key.clone(),
            );
        }
        info!(
            namespace = %info.namespace,
            session = %session,
            room = %req.room,
            member = key_name(&key),
            group = req.group.is_some(),
            durable = joined.durable,
            next_seq = joined.next_seq,
            "joined"
        );
        self.outlet.presence_event(
            &self.rooms,
            room_id,
            &key,
            session,
            pb::presence_event::Kind::Joined,
        );
        Ok(reply(&req, key, room_id, &joined))
    }

    /// Moves member `key` of `room_id` to `session` from the session that
    /// holds it, if another one does. A session cannot hold a member twice
    /// (under another label): that is refused with `AlreadyHeld`. A group
    /// takes any number of sessions, so nothing moves; a durable member has
    /// one, so the one it had loses it. That session forgets the
    /// membership, its consumer is detached (what it had in flight becomes
    /// due), the room's listeners hear it left, and it is told
    /// (`MembershipTakenOver`), in that order.
    fn take_over(
        &mut self,
        room_id: RoomId,
        key: &MemberKey,
        session: Uuid,
        room: &str,
    ) -> Result<(), BrokerError> {
        let member = self.rooms.get(&room_id).and_then(|r| r.members.get(key));
        if member.is_some_and(|m| m.consumer(session).is_some()) {
            return Err(BrokerError::AlreadyHeld {
                member: key_name(key).to_string(),
                room: room.to_string(),
            });
        }
        // The key is a group's exactly when the join names a group.
        if matches!(key, MemberKey::Group(_)) {
            return Ok(());
        }
        let Some((prev, prev_label)) = member
            .and_then(|m| m.consumers.first())
            .map(|c| (c.session, c.label.clone()))
        else {
            return Ok(());
        };
        let taken = BrokerError::MembershipTakenOver {
            room: room.to_string(),
            subscription: prev_label.clone(),
            member: key_name(key).to_string(),
        };
        if let Some(other) = self.outlet.sessions.get_mut(&prev) {
            other.remove_membership(&Arc::from(room), &prev_label);
        }
        if let Some(m) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.members.get_mut(key))
        {
            m.detach(prev);
        }
        self.outlet.presence_event(
            &self.rooms,
            room_id,
            key,
            prev,
            pb::presence_event::Kind::Left,
        );
        self.push_error(prev, taken);
        Ok(())
    }

    /// Attaches `session` as a consumer of member `key` of `room_id` with
    /// the settings `req` asks for, creating the member (at its start
    /// position) or moving it there, and files its position for disk.
    /// Returns what the reply needs, or `None` if the room is gone.
    ///
    /// A new member starts at the start position. An existing one moves
    /// there unless the start is `Resume`, or it is a group: a group's
    /// cursor is shared, so only its first join places it. A durable member
    /// that was created or moved must be stored before the reply (see
    /// [`file_position`]). The member takes the join's group mode,
    /// delivery limit and event patterns; a durable member that is not a
    /// group is owned by the joining session's client id.
    fn attach(
        &mut self,
        room_id: RoomId,
        key: &MemberKey,
        durable: bool,
        session: Uuid,
        req: &JoinReq,
        owner: &Option<Arc<str>>,
    ) -> Option<Joined> {
        let room = self.rooms.get_mut(&room_id)?;
        let position = start_position(room, req.start);
        let group = req.group.as_ref().map(|(_, mode)| *mode);
        let is_new = !room.members.contains_key(key);
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
            member.owner = owner.clone();
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
        let joined = Joined {
            durable: member.durable,
            next_seq: member.ack_floor(),
            last_seq: room.committed_seq,
            room_name: room.name.clone(),
            must_persist,
        };
        file_position(&mut self.pipeline, room_id, key, member, must_persist);
        Some(joined)
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

/// Whether the session may take one more membership: not if it is in the
/// room under this label already (`AlreadyJoined`), nor if it holds as
/// many memberships as a session may (`QuotaExceeded`, counted in the
/// namespace's metrics), checked in that order. Reserves the membership
/// (`SessionRooms::reserve`).
fn admit(entry: &SessionEntry, req: &JoinReq, limits: &Limits) -> Result<(), BrokerError> {
    if entry
        .memberships
        .contains_key(&(Arc::from(req.room.as_str()), req.label.clone()))
    {
        return Err(BrokerError::AlreadyJoined {
            room: req.room.clone(),
            subscription: req.label.clone(),
        });
    }
    // Counted on every shard (the session's other rooms may be elsewhere),
    // and reserved here.
    if !entry.info.rooms.reserve(limits.max_memberships_per_session) {
        let detail = format!(
            "a session may hold {} memberships",
            limits.max_memberships_per_session
        );
        entry.info.tenant.metrics.quota_refused(Quota::Memberships);
        return Err(BrokerError::QuotaExceeded {
            quota: Quota::Memberships,
            detail,
        });
    }
    Ok(())
}

/// Which member a join in `mode` with `label` names, and its durable name
/// if it has one. The name is the label, or the session's client id when
/// the label is empty. An ephemeral join has no durable name; an auto join
/// is durable when it has a name; a durable join must have one unless it
/// joins a group (`NoDurableName`). The member is the group if there is
/// one, else the durable member of that name, else an ephemeral member of
/// this session and label.
fn member_key(
    mode: pb::MemberMode,
    label: &Arc<str>,
    client_id: Option<&Arc<str>>,
    group: Option<&Arc<str>>,
    session: Uuid,
) -> Result<(MemberKey, Option<Arc<str>>), BrokerError> {
    let name: Option<Arc<str>> = if label.is_empty() {
        client_id.cloned()
    } else {
        Some(label.clone())
    };
    let durable_name = match (mode, name) {
        (pb::MemberMode::Ephemeral, _) => None,
        (pb::MemberMode::Auto, name) => name,
        (pb::MemberMode::Durable, Some(name)) => Some(name),
        (pb::MemberMode::Durable, None) if group.is_some() => None,
        (pb::MemberMode::Durable, None) => return Err(BrokerError::NoDurableName),
    };
    let key = match (group, &durable_name) {
        (Some(g), _) => MemberKey::Group(g.clone()),
        (None, Some(n)) => MemberKey::Durable(n.clone()),
        (None, None) => MemberKey::Ephemeral(session, label.clone()),
    };
    Ok((key, durable_name))
}

/// The seq a member joining `room` at `start` is placed at: the end of the
/// log (after the last committed message) for `Resume` and `New`, its first
/// stored message for `Earliest`, and a requested or found seq clamped to
/// the stored log or its end. After a purge the log may start past what is
/// committed yet; then its first seq is the end.
fn start_position(room: &Room, start: Start) -> u64 {
    let end = (room.committed_seq + 1).max(room.first_seq);
    match start {
        Start::Resume | Start::New => end,
        Start::Earliest => room.first_seq,
        Start::Seq(s) => s.clamp(room.first_seq, end),
        Start::Found(s) => s.clamp(room.first_seq, end),
        // The room is new: nothing was stored at any time. (`Unfound` is
        // refused before a position is taken.)
        Start::Time(_) | Start::Unfound => end,
    }
}

/// Files member `key`'s position for disk. A durable member that was
/// created or moved (`must_persist`) goes into the open batch and takes
/// nothing (`joining`) until that batch is synced, when its join is
/// answered. A durable member that stayed where it was is written with a
/// coming batch. An ephemeral member has nothing stored.
fn file_position(
    pipeline: &mut WritePipeline,
    room_id: RoomId,
    key: &MemberKey,
    member: &mut Member,
    must_persist: bool,
) {
    if must_persist {
        member.joining = true;
        if let Some(name) = key.stored_name() {
            pipeline
                .batch()
                .cursors
                .push((room_id, name, Some(member.record())));
        }
    } else if member.durable {
        pipeline.mark_dirty(room_id, key.clone());
    }
}

/// What the answer to a join needs from the member it attached to.
#[derive(Debug)]
struct Joined {
    durable: bool,
    /// The member's first seq not acknowledged.
    next_seq: u64,
    /// The room's last committed seq.
    last_seq: u64,
    /// The room's name, shared with the room.
    room_name: Arc<str>,
    /// The member's position is in the open batch: answer once it is synced.
    must_persist: bool,
}

/// The answer to a join: its `JoinOk`, sent once the member's position is
/// on disk if it had to be stored, otherwise now; either way the member is
/// pumped after it.
fn reply(req: &JoinReq, key: MemberKey, room_id: RoomId, joined: &Joined) -> Reply {
    let body = pb::server_frame::Body::JoinOk(join_ok(req, &key, joined));
    if joined.must_persist {
        Reply::AfterSync(Deferred::Frame {
            body,
            then_pump: Some((room_id, key)),
        })
    } else {
        Reply::NowThenPump(body, room_id, key)
    }
}

/// The `JoinOk` for member `key`: the name a durable member or group goes
/// by (none for an ephemeral one), where it reads from, and the limits the
/// join was granted.
fn join_ok(req: &JoinReq, key: &MemberKey, joined: &Joined) -> pb::JoinOk {
    pb::JoinOk {
        room: req.room.clone(),
        subscription: match key {
            MemberKey::Durable(n) | MemberKey::Group(n) => n.to_string(),
            MemberKey::Ephemeral(..) => String::new(),
        },
        durable: joined.durable,
        next_seq: joined.next_seq,
        last_seq: joined.last_seq,
        max_in_flight: req.max_in_flight,
        ack_timeout_ms: u64::try_from(req.ack_timeout.as_millis()).unwrap_or(u64::MAX),
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
/// time `ms`, or `hi` if none: a binary search over the stored log. Fails
/// if a read fails (the join is then refused, not started elsewhere).
async fn search_time(
    store: Arc<dyn Store>,
    room: RoomId,
    ms: u64,
    mut lo: u64,
    mut hi: u64,
) -> Result<u64, StoreError> {
    // Invariant: every seq below `lo` is older than `ms`; `hi` is the end
    // of the range or at/after `ms`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found = store
            .read(room, mid, 1, usize::MAX)
            .await?
            .into_iter()
            .next();
        match found {
            // `mid` itself may be trimmed: the next stored one stands in.
            Some(m) if m.seq < hi && m.info.timestamp_ms < ms => lo = m.seq + 1,
            Some(m) if m.seq < hi => hi = mid.max(lo).min(m.seq),
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// A member's name for logs and errors.
fn key_name(key: &MemberKey) -> &str {
    match key {
        MemberKey::Durable(n) | MemberKey::Group(n) => n,
        MemberKey::Ephemeral(_, label) => label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(
        mode: pb::MemberMode,
        label: &str,
        client_id: Option<&str>,
        group: Option<&str>,
        session: Uuid,
    ) -> Result<(MemberKey, Option<Arc<str>>), BrokerError> {
        let label: Arc<str> = label.into();
        let client_id: Option<Arc<str>> = client_id.map(Arc::from);
        let group: Option<Arc<str>> = group.map(Arc::from);
        member_key(mode, &label, client_id.as_ref(), group.as_ref(), session)
    }

    fn durable(n: &str) -> MemberKey {
        MemberKey::Durable(n.into())
    }

    #[test]
    fn naming_policy() {
        use pb::MemberMode::{Auto, Durable, Ephemeral};
        let s = Uuid::new_v4();
        let eph = |label: &str| MemberKey::Ephemeral(s, label.into());
        let group = |g: &str| MemberKey::Group(g.into());
        let some = |n: &str| Some(Arc::<str>::from(n));
        // (mode, label, client id, group) -> (key, durable name)
        let table = [
            // Ephemeral: never a durable name, even with a label or client id.
            (Ephemeral, "", None, None, eph(""), None),
            (Ephemeral, "sub", Some("c"), None, eph("sub"), None),
            (Ephemeral, "", Some("c"), None, eph(""), None),
            // Auto: durable when it has a name, the label before the client id.
            (Auto, "sub", None, None, durable("sub"), some("sub")),
            (Auto, "sub", Some("c"), None, durable("sub"), some("sub")),
            (Auto, "", Some("c"), None, durable("c"), some("c")),
            (Auto, "", None, None, eph(""), None),
            (Auto, "", None, Some("g"), group("g"), None),
            (Auto, "sub", Some("c"), Some("g"), group("g"), some("sub")),
            // Durable: named by the label, else the client id.
            (Durable, "sub", None, None, durable("sub"), some("sub")),
            (Durable, "sub", Some("c"), None, durable("sub"), some("sub")),
            (Durable, "", Some("c"), None, durable("c"), some("c")),
            // A group names the member; no durable name is needed.
            (Durable, "", None, Some("g"), group("g"), None),
            (Durable, "", Some("c"), Some("g"), group("g"), some("c")),
            // Refused by `check`, but named like this: the group wins.
            (Ephemeral, "", None, Some("g"), group("g"), None),
        ];
        for (mode, label, client, g, key, name) in table {
            let (k, n) = named(mode, label, client, g, s).unwrap();
            assert_eq!(
                (&k, &n),
                (&key, &name),
                "{mode:?} label {label:?} client {client:?} group {g:?}"
            );
        }
    }

    #[test]
    fn durable_without_a_name_or_group_is_refused() {
        let s = Uuid::new_v4();
        let r = named(pb::MemberMode::Durable, "", None, None, s);
        assert!(matches!(r, Err(BrokerError::NoDurableName)), "{r:?}");
    }

    /// A room whose log holds `first..=committed`.
    fn room(first: u64, committed: u64) -> Room {
        let mut room = Room::new(1, "/".into(), "r".into(), committed);
        room.first_seq = first;
        room
    }

    #[test]
    fn start_at_the_end_or_the_beginning() {
        let r = room(1, 10);
        assert_eq!(start_position(&r, Start::Resume), 11);
        assert_eq!(start_position(&r, Start::New), 11);
        assert_eq!(start_position(&r, Start::Earliest), 1);
        // A time start in a room that did not exist: the end.
        assert_eq!(start_position(&r, Start::Time(5)), 11);
        let empty = room(1, 0);
        assert_eq!(start_position(&empty, Start::New), 1);
        assert_eq!(start_position(&empty, Start::Earliest), 1);
    }

    #[test]
    fn start_seq_is_clamped_to_the_log() {
        let r = room(4, 10);
        for start in [Start::Seq as fn(u64) -> Start, Start::Found] {
            assert_eq!(start_position(&r, start(0)), 4);
            assert_eq!(start_position(&r, start(2)), 4);
            assert_eq!(start_position(&r, start(4)), 4);
            assert_eq!(start_position(&r, start(7)), 7);
            assert_eq!(start_position(&r, start(11)), 11);
            assert_eq!(start_position(&r, start(12)), 11);
            assert_eq!(start_position(&r, start(u64::MAX)), 11);
        }
        assert_eq!(start_position(&r, Start::Earliest), 4);
    }

    #[test]
    fn after_a_purge_the_log_starts_past_what_is_committed() {
        // Purged through 20 while only 10 is committed.
        let r = room(21, 10);
        assert_eq!(start_position(&r, Start::Resume), 21);
        assert_eq!(start_position(&r, Start::New), 21);
        assert_eq!(start_position(&r, Start::Earliest), 21);
        assert_eq!(start_position(&r, Start::Seq(5)), 21);
        assert_eq!(start_position(&r, Start::Seq(30)), 21);
        assert_eq!(start_position(&r, Start::Found(11)), 21);
        assert_eq!(start_position(&r, Start::Found(30)), 21);
        assert_eq!(start_position(&r, Start::Time(0)), 21);
    }
}
