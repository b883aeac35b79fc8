//! `Leave`: stop being a member. A durable member keeps its cursor unless
//! `forget` is set; an ephemeral member is gone.

use std::sync::Arc;

use super::RequestSlot;
use roomq_wire::names::check_name;
use roomq_wire::{pb, ErrorCode};
use uuid::Uuid;

use super::room::MemberKey;
use super::Broker;

/// A checked leave.
#[derive(Debug)]
pub struct LeaveReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub forget: bool,
}

/// Checks a leave; runs on the session's task.
pub fn check(l: pb::Leave) -> Result<LeaveReq, pb::Error> {
    check_name("room", &l.room)
        .map_err(|e| pb::Error::new(ErrorCode::InvalidName, e.to_string()))?;
    Ok(LeaveReq {
        room: Arc::from(l.room),
        label: Arc::from(l.subscription),
        forget: l.forget,
    })
}

impl Broker {
    pub(super) fn leave(
        &mut self,
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        req: LeaveReq,
    ) {
        let removed = self
            .sessions
            .get_mut(&session)
            .and_then(|s| s.memberships.remove(&(req.room.clone(), req.label.clone())));
        let Some((room_id, key)) = removed else {
            let msg = format!("not a member of room {:?} as {:?}", &*req.room, &*req.label);
            return self.reply_error(session, request_id, permit, ErrorCode::NotJoined, msg);
        };
        self.release_member(room_id, &key, session);
        if req.forget {
            let removed = match &key {
                MemberKey::Ephemeral(..) => false,
                // A group is forgotten only by its last consumer.
                _ => self.rooms.get_mut(&room_id).is_some_and(|room| {
                    let idle = room.members.get(&key).is_some_and(|m| !m.connected());
                    idle && room.members.remove(&key).is_some()
                }),
            };
            if removed {
                self.dirty.insert((room_id, key));
            }
        }
        let frame = pb::ServerFrame {
            request_id,
            body: Some(pb::server_frame::Body::LeaveOk(pb::LeaveOk {})),
        };
        self.reply(session, frame, Some(permit));
    }
}
