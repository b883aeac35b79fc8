//! `Leave`: stop being a member. A durable member keeps its cursor unless
//! `forget` is set; an ephemeral member is gone.

use std::sync::Arc;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use uuid::Uuid;

use super::core::Broker;
use super::error::BrokerError;
use super::reply::Reply;
use super::room::MemberKey;

/// A checked leave.
#[derive(Debug)]
pub struct LeaveReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub forget: bool,
}

/// Checks a leave; runs on the session's task.
pub fn check(l: pb::Leave) -> Result<LeaveReq, BrokerError> {
    check_name("room", &l.room)?;
    Ok(LeaveReq {
        room: Arc::from(l.room),
        label: Arc::from(l.subscription),
        forget: l.forget,
    })
}

impl Broker {
    pub(super) fn leave(&mut self, session: Uuid, req: LeaveReq) -> Result<Reply, BrokerError> {
        let removed = self
            .outlet
            .sessions
            .get_mut(&session)
            .and_then(|s| s.memberships.remove(&(req.room.clone(), req.label.clone())));
        let Some((room_id, key)) = removed else {
            return Err(BrokerError::NotJoined {
                room: req.room,
                subscription: req.label,
            });
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
                self.pipeline.mark_dirty(room_id, key);
            }
        }
        Ok(Reply::Now(pb::server_frame::Body::LeaveOk(pb::LeaveOk {})))
    }
}
