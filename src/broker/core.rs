//! The actor's state: the broker's owned parts, and what the operations
//! share on top of them (sending a reply, pumping a member, letting a
//! session go). The dispatcher that drives it is in `mod.rs`; the
//! operations are in their own files: `join`, `publish` and `admin` as
//! `impl Broker` blocks, the others as free functions over the parts they
//! use, which the dispatcher lends them.

use std::sync::Arc;

use roomq_wire::pb;
use tokio::time::Instant;
use tracing::{info, warn};
use uuid::Uuid;

use super::clock::clock_now;
use super::dedup::DedupTable;
use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::pipeline::WritePipeline;
use super::registry::Registry;
use super::retention::RetentionState;
use super::room::MemberKey;
use crate::config::Config;
use crate::session::{Outbound, RequestSlot, Seqs};
use crate::storage::RoomId;
use crate::tenancy::Tenants;

/// The actor: one shard of the broker, owning its rooms outright.
pub struct Broker {
    /// Which shard this is (0 writes the namespace records and logs what
    /// every shard sees, such as a session leaving).
    pub(super) shard: usize,
    pub(super) config: Arc<Config>,
    pub(super) tenants: Arc<Tenants>,
    pub(super) rooms: Registry,
    /// Sessions, their queues and memberships; timers; reads.
    pub(super) outlet: SessionOutlet,
    pub(super) dedup: DedupTable,
    /// The open batch, the batch being written, cursors behind on disk.
    pub(super) pipeline: WritePipeline,
    /// When retention sweeps, and the scans of stored logs it runs.
    pub(super) retention: RetentionState,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) started: Instant,
}

impl Broker {
    pub(super) fn unregister(&mut self, session: Uuid) {
        let Some(entry) = self.outlet.sessions.get_mut(&session) else {
            return;
        };
        // Every shard has the session; one says so.
        if self.shard == 0 {
            info!(
                namespace = %entry.info.namespace,
                session = %session,
                peer = %entry.info.peer,
                "client disconnected"
            );
        }
        let memberships = entry.take_memberships();
        // Released while the session is still known, so that the presence
        // events name who left.
        for (room_id, key) in memberships {
            self.release_member(room_id, &key, session);
        }
        self.outlet.sessions.remove(&session);
    }

    /// Takes `session` off member `key` (dropping an ephemeral member) and
    /// tells the room's presence listeners
    /// ([`SessionOutlet::release_member`]); what it had in flight goes to
    /// the member's other consumers, pumped here, if any, or waits for the
    /// next. For `unregister`; `leave` has the dispatcher pump
    /// (`Reply::PumpThenNow`).
    pub(super) fn release_member(&mut self, room_id: RoomId, key: &MemberKey, session: Uuid) {
        if self
            .outlet
            .release_member(&mut self.rooms, room_id, key, session)
        {
            self.pump(room_id, key);
        }
    }

    /// Sends a reply or push to a session. A session whose queue cannot take
    /// it is disconnected (it broke the pending-request budget).
    pub(super) fn reply(
        &mut self,
        session: Uuid,
        frame: pb::ServerFrame,
        permit: Option<RequestSlot>,
    ) {
        let Some(s) = self.outlet.sessions.get(&session) else {
            return;
        };
        let out = Outbound::Reply {
            frame: Box::new(frame),
            permit,
        };
        if s.tx.try_send(out).is_err() {
            warn!(session = %session, "outbound queue full for a reply; disconnecting");
            s.kill.cancel();
            self.unregister(session);
        }
    }

    /// Sends a publish confirmation (see [`Outbound::Confirm`]).
    pub(super) fn confirm_publish(
        &mut self,
        session: Uuid,
        request_id: u64,
        seqs: Seqs,
        duplicate: bool,
        durability: pb::Durability,
        permit: RequestSlot,
    ) {
        let Some(s) = self.outlet.sessions.get(&session) else {
            return;
        };
        let out = Outbound::Confirm {
            request_id,
            seqs,
            duplicate,
            durability,
            permit,
        };
        if s.tx.try_send(out).is_err() {
            warn!(session = %session, "outbound queue full for a reply; disconnecting");
            s.kill.cancel();
            self.unregister(session);
        }
    }

    /// Sends `push` (an error that is not an answer) to `session`.
    pub(super) fn push_error(&mut self, session: Uuid, push: BrokerError) {
        let frame = pb::ServerFrame {
            request_id: 0,
            body: Some(pb::server_frame::Body::Error(push.into())),
        };
        self.reply(session, frame, None);
    }

    /// Delivers what member `key` of `room_id` may have now, and moves what
    /// it gave up on to the dead-letter room.
    pub(super) fn pump(&mut self, room_id: RoomId, key: &MemberKey) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        self.outlet.begin();
        let pumped = room.pump(key, clock_now(), &mut self.outlet);
        let tally = self.outlet.tally();
        room.redelivered += tally.redelivered;
        if tally.delivered > 0 || pumped.expired > 0 {
            let namespace = room.namespace.clone();
            self.count_deliveries(&namespace, tally, pumped.expired);
        }
        if pumped.changed && !matches!(key, MemberKey::Ephemeral(..)) {
            self.pipeline.mark_dirty(room_id, key.clone());
        }
        for dead in pumped.dead {
            self.dead_letter(room_id, dead);
        }
    }

    /// Pumps every connected member of `room_id`.
    pub(super) fn pump_room(&mut self, room_id: RoomId) {
        let keys: Vec<MemberKey> = match self.rooms.get(&room_id) {
            Some(room) => room
                .members
                .iter()
                .filter(|(_, m)| m.connected())
                .map(|(k, _)| k.clone())
                .collect(),
            None => return,
        };
        for key in keys {
            self.pump(room_id, &key);
        }
    }
}
