//! The session outlet: the sessions one actor serves (their queues, their
//! memberships), the members' timers and the reads of stored messages. It
//! is what the delivery rules hand messages to (it implements
//! [`room::Outlet`](Outlet)): a delivery goes into its session's bounded
//! queue if the queue has room beyond the slots kept for replies, or waits
//! until the session's writer says it has drained.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use roomq_wire::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::now_ms;
use super::error::BrokerError;
use super::reads::Reads;
use super::registry::Registry;
use super::room::{Gap, Handout, MemberKey, Outlet, Timers};
use super::timers::TimerHeap;
use crate::session::{Outbound, SessionInfo};
use crate::storage::{RoomId, StoredMessage};

/// The broker's view of a connected session.
pub struct SessionEntry {
    pub info: Arc<SessionInfo>,
    pub tx: mpsc::Sender<Outbound>,
    /// Set by the broker when the queue is full; the writer clears it and
    /// sends [`Command::Writable`] once it has drained.
    pub blocked: Arc<AtomicBool>,
    pub kill: CancellationToken,
    /// Memberships by (room, label), in this shard's rooms. Changed only
    /// through the methods below, which keep the session's shared room set
    /// (`SessionInfo::rooms`) in step.
    pub memberships: HashMap<(Arc<str>, Arc<str>), (RoomId, MemberKey)>,
}

impl SessionEntry {
    /// Records a membership whose join reserved it
    /// (`SessionRooms::reserve`).
    pub fn add_membership(&mut self, room: Arc<str>, label: Arc<str>, id: RoomId, key: MemberKey) {
        if self
            .memberships
            .insert((room.clone(), label), (id, key))
            .is_none()
        {
            self.info.rooms.joined(room);
        } else {
            self.info.rooms.release();
        }
    }

    /// Forgets membership (room, label), if the session has it.
    pub fn remove_membership(
        &mut self,
        room: &Arc<str>,
        label: &Arc<str>,
    ) -> Option<(RoomId, MemberKey)> {
        let gone = self.memberships.remove(&(room.clone(), label.clone()));
        if gone.is_some() {
            self.info.rooms.left(room);
        }
        gone
    }

    /// Forgets every membership (the session is going).
    pub fn take_memberships(&mut self) -> Vec<(RoomId, MemberKey)> {
        let all = std::mem::take(&mut self.memberships);
        all.into_iter()
            .map(|((room, _), m)| {
                self.info.rooms.left(&room);
                m
            })
            .collect()
    }
}

/// Deliveries handed out since [`SessionOutlet::begin`], counted into the
/// namespace's counters once per pump rather than once per message.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeliveryTally {
    /// Every delivery, redeliveries included.
    pub delivered: u64,
    pub redelivered: u64,
}

/// The sessions, timers and reads of one actor.
pub struct SessionOutlet {
    pub sessions: HashMap<Uuid, SessionEntry>,
    pub timers: TimerHeap,
    pub reads: Reads,
    /// Queue slots kept free for replies.
    reserve: usize,
    /// `roomq_delivery_lag_seconds`, when metrics are on.
    lag: Option<prometheus::Histogram>,
    /// The broker's clock when the pump began (for the lag).
    wall_ms: u64,
    tally: DeliveryTally,
}

impl SessionOutlet {
    /// An outlet with no sessions, keeping `reserve` queue slots of each
    /// session for replies.
    pub fn new(reads: Reads, reserve: usize, lag: Option<prometheus::Histogram>) -> Self {
        SessionOutlet {
            sessions: HashMap::new(),
            timers: TimerHeap::default(),
            reads,
            reserve,
            lag,
            wall_ms: now_ms(),
            tally: DeliveryTally::default(),
        }
    }

    /// Starts a round of hand-outs (a pump, a volatile publish).
    pub fn begin(&mut self) {
        self.wall_ms = now_ms();
        self.tally = DeliveryTally::default();
    }

    /// What was handed out since [`SessionOutlet::begin`].
    pub fn tally(&self) -> DeliveryTally {
        self.tally
    }

    /// The membership (room, label) of `session`: the room's id and the
    /// member's key. `NotJoined` if the session has no such membership.
    pub fn membership(
        &self,
        session: Uuid,
        room: &Arc<str>,
        label: &Arc<str>,
    ) -> Result<(RoomId, MemberKey), BrokerError> {
        self.sessions
            .get(&session)
            .and_then(|s| s.memberships.get(&(room.clone(), label.clone())))
            .cloned()
            .ok_or_else(|| BrokerError::NotJoined {
                room: room.clone(),
                subscription: label.clone(),
            })
    }

    /// Takes `session` off member `key` of `room_id` (dropping an ephemeral
    /// member) and tells the room's presence listeners. What it had in
    /// flight goes to the member's other consumers, if any, or waits for
    /// the next: returns whether there are others, which the caller then
    /// pumps (`Broker::pump`) before anything else happens.
    pub fn release_member(
        &mut self,
        rooms: &mut Registry,
        room_id: RoomId,
        key: &MemberKey,
        session: Uuid,
    ) -> bool {
        let Some(room) = rooms.get_mut(&room_id) else {
            return false;
        };
        let Some(m) = room.members.get_mut(key) else {
            return false;
        };
        let label = m.consumer(session).map(|c| c.label.clone());
        if !m.detach(session) {
            return false;
        }
        let others = m.connected();
        if let MemberKey::Ephemeral(..) = key {
            room.members.remove(key);
        }
        if label.is_some() {
            self.presence_event(rooms, room_id, key, session, pb::presence_event::Kind::Left);
        }
        others
    }

    /// Queues `out` for `session` if its queue has room beyond the slots
    /// kept for replies.
    pub fn offer(&mut self, session: Uuid, out: Outbound) -> bool {
        let Some(s) = self.sessions.get(&session) else {
            return false;
        };
        if s.tx.capacity() <= self.reserve {
            // Announce interest first, then look again: the writer clears
            // the flag after draining, so one of the two sees the other.
            s.blocked.store(true, Ordering::SeqCst);
            if s.tx.capacity() <= self.reserve {
                return false;
            }
        }
        match s.tx.try_send(out) {
            Ok(()) => true,
            Err(_) => {
                s.blocked.store(true, Ordering::SeqCst);
                false
            }
        }
    }
}

impl Outlet for SessionOutlet {
    fn deliver(&mut self, to: Handout<'_>, msg: &Arc<StoredMessage>) -> bool {
        let out = Outbound::Delivery {
            room: to.room.clone(),
            label: to.label.clone(),
            attempt: to.attempt,
            redelivered: to.redelivered,
            volatile: to.volatile,
            msg: msg.clone(),
        };
        let (attempt, redelivered, volatile) = (to.attempt, to.redelivered, to.volatile);
        if !self.offer(to.session, out) {
            return false;
        }
        self.tally.delivered += 1;
        if redelivered {
            self.tally.redelivered += 1;
        }
        if let Some(h) = self.lag.as_ref().filter(|_| attempt == 1 && !volatile) {
            let ms = self.wall_ms.saturating_sub(msg.info.timestamp_ms);
            h.observe(ms as f64 / 1000.0);
        }
        true
    }

    fn gap(&mut self, session: Uuid, room: &Arc<str>, label: &Arc<str>, gap: Gap) -> bool {
        let frame = pb::ServerFrame {
            request_id: 0,
            body: Some(pb::server_frame::Body::Gap(Box::new(pb::Gap {
                room: room.to_string(),
                subscription: label.to_string(),
                from_seq: gap.from,
                to_seq: gap.to,
                missed: gap.missed,
            }))),
        };
        let out = Outbound::Reply {
            frame: Box::new(frame),
            permit: None,
        };
        self.offer(session, out)
    }

    fn in_room(&self, session: Uuid, room: &str) -> bool {
        // The shared set: the room may be on another shard.
        self.sessions
            .get(&session)
            .is_some_and(|s| s.info.rooms.contains(room))
    }

    fn read(&mut self, room: RoomId, from: u64) {
        self.reads.request(room, from);
    }
}

impl Timers for SessionOutlet {
    fn arm_timer(&mut self, deadline: Instant, room: RoomId, member: &MemberKey) {
        self.timers.arm_timer(deadline, room, member);
    }
}
