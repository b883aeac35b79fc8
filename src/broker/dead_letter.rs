//! Dead letters: a message a member could not get acknowledged in
//! `max_deliveries` attempts is stored in the room's dead-letter room
//! (`<room>.dlq`), with headers saying where it came from, and the member
//! moves on. `/admin` redrive moves a dead-letter room's messages back.
//!
//! The dead letter is appended in the same batch as the member's moved
//! cursor, so a crash keeps either both or neither (then the member gets
//! the message again).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use roomq_wire::names::MAX_NAME_BYTES;
use roomq_wire::pb;
use tracing::{info, warn};

use super::core::Broker;
use super::error::BrokerError;
use super::room::DeadLetter;
use crate::storage::{RoomId, StoredMessage};

/// Suffix of a room's dead-letter room.
pub const SUFFIX: &str = ".dlq";
/// Headers a dead letter carries.
pub const ROOM_HEADER: &str = "roomq-dead-room";
pub const SEQ_HEADER: &str = "roomq-dead-seq";
pub const DELIVERIES_HEADER: &str = "roomq-dead-deliveries";
pub const REASON_HEADER: &str = "roomq-dead-reason";
pub const MEMBER_HEADER: &str = "roomq-dead-member";
const HEADERS: [&str; 5] = [
    ROOM_HEADER,
    SEQ_HEADER,
    DELIVERIES_HEADER,
    REASON_HEADER,
    MEMBER_HEADER,
];

/// How many messages a redrive asked to move `max` moves.
pub(super) fn redrive_count(max: u32) -> usize {
    let n = if max == 0 { DEFAULT_REDRIVE } else { max };
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Most messages one redrive moves when the request does not say.
pub const DEFAULT_REDRIVE: u32 = 10_000;

/// The dead-letter room of `room`, if its name fits.
pub fn room_of(room: &str) -> Option<String> {
    let name = format!("{room}{SUFFIX}");
    (name.len() <= MAX_NAME_BYTES).then_some(name)
}

impl Broker {
    /// Stores `dead`, given up on by a member of `room_id`, in the room's
    /// dead-letter room.
    pub(super) fn dead_letter(&mut self, room_id: RoomId, dead: DeadLetter) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.dead_lettered += 1;
        let namespace = room.namespace.clone();
        let origin = room.name.clone();
        let Some(target) = room_of(&origin) else {
            // Not reachable through the wire: the join refuses dead
            // lettering in rooms whose dead-letter room name is too long.
            warn!(room = %origin, seq = dead.msg.seq, "no dead-letter room for a name this long; message dropped");
            return;
        };
        let Ok(mut message) = pb::Message::decode(dead.msg.encoded.clone()) else {
            warn!(room = %origin, seq = dead.msg.seq, "stored message undecodable; not dead-lettered");
            return;
        };
        let reason = dead.reason.as_deref().unwrap_or("not acknowledged");
        let headers: [(&str, String); 5] = [
            (ROOM_HEADER, origin.to_string()),
            (SEQ_HEADER, dead.msg.seq.to_string()),
            (DELIVERIES_HEADER, dead.attempts.to_string()),
            (REASON_HEADER, reason.to_string()),
            (MEMBER_HEADER, dead.member.to_string()),
        ];
        for (k, v) in headers {
            message.headers.insert(k.to_string(), v);
        }
        // The dead letter does not expire or wait again where it lands, and
        // its age (for retention and start-by-time) counts from now.
        message.expires_at_ms = 0;
        message.deliver_at_ms = 0;
        message.timestamp_ms = super::now_ms();
        // It must stay deliverable: a delivery adds the room and a
        // subscription label (each up to 255 bytes) around it. Where the
        // headers would not fit, the free-text ones are left out.
        let limit = self
            .config
            .limits
            .max_frame()
            .saturating_sub(target.len() + MAX_NAME_BYTES + 64);
        if message.encoded_len() > limit {
            message.headers.remove(REASON_HEADER);
            message.headers.remove(MEMBER_HEADER);
        }
        let encoded = Bytes::from(message.encode_to_vec());
        let size = encoded.len() as u64;
        let tenant = self.tenants.get(&namespace);
        let target_id = self.rooms.create_counted(
            tenant.as_deref(),
            &namespace,
            &target,
            self.pipeline.batch(),
        );
        let seq = self.append(target_id, StoredMessage::new(0, encoded));
        if let Some(t) = tenant {
            t.usage.add_stored(size, 1);
            let why = crate::metrics::DeadReason::of(dead.reason.as_deref());
            t.metrics.dead_lettered(why);
        }
        info!(
            namespace = %namespace,
            room = %origin,
            seq = dead.msg.seq,
            member = %dead.member,
            deliveries = dead.attempts,
            dead_letter_seq = seq,
            "message dead-lettered"
        );
    }

    /// Where a redrive of `room_id` starts reading: its first seq. Fails
    /// unless it is a dead-letter room.
    pub(super) fn redrivable(&self, room_id: RoomId) -> Result<u64, BrokerError> {
        let Some(room) = self.rooms.get(&room_id) else {
            return Ok(1);
        };
        let dlq = &room.name;
        if dlq.strip_suffix(SUFFIX).is_none_or(|o| o.is_empty()) {
            return Err(BrokerError::NotDeadLetterRoom { room: dlq.clone() });
        }
        Ok(room.first_seq)
    }

    /// Moves `msgs`, the oldest stored messages of dead-letter room
    /// `room_id` (read from its first seq), back to the room it is the
    /// dead-letter room of, without the dead-letter headers, and deletes
    /// them from the dead-letter room. Returns how many moved and whether
    /// more remain.
    pub(super) fn redrive(
        &mut self,
        room_id: RoomId,
        msgs: Vec<Arc<StoredMessage>>,
    ) -> Result<(u64, bool), BrokerError> {
        let from = self.redrivable(room_id)?;
        let Some(room) = self.rooms.get(&room_id) else {
            return Ok((0, false));
        };
        let namespace = room.namespace.clone();
        let dlq = room.name.clone();
        // Only back to the room this is the dead-letter room of (whatever a
        // message's headers say: anyone who may publish to the dead-letter
        // room could have written them).
        let origin = dlq.strip_suffix(SUFFIX).unwrap_or_default().to_string();
        let last = room.committed_seq;
        let msgs: Vec<Arc<StoredMessage>> = msgs.into_iter().filter(|m| m.seq <= last).collect();
        let mut moved = 0u64;
        let mut bytes = 0u64;
        let mut added = 0u64;
        let mut floor = from;
        for msg in &msgs {
            floor = msg.seq + 1;
            bytes += msg.encoded.len() as u64;
            let Ok(mut message) = pb::Message::decode(msg.encoded.clone()) else {
                warn!(room = %dlq, seq = msg.seq, "stored message undecodable; left out of the redrive");
                continue;
            };
            message.timestamp_ms = super::now_ms();
            message.headers = std::mem::take(&mut message.headers)
                .into_iter()
                .filter(|(k, _)| !HEADERS.contains(&k.as_str()))
                .collect::<BTreeMap<_, _>>();
            let encoded = Bytes::from(message.encode_to_vec());
            let tenant = self.tenants.get(&namespace);
            let target = self.rooms.create_counted(
                tenant.as_deref(),
                &namespace,
                &origin,
                self.pipeline.batch(),
            );
            added += encoded.len() as u64;
            self.append(target, StoredMessage::new(0, encoded));
            moved += 1;
        }
        let more = floor <= last;
        if let Some(t) = self.tenants.get(&namespace) {
            t.usage.add_stored(added, moved);
            self.trim_room(room_id, floor, bytes, &t);
        }
        info!(namespace = %namespace, room = %dlq, moved, more, "dead letters redriven");
        Ok((moved, more))
    }
}
