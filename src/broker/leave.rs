//! `Leave`: stop being a member. A durable member keeps its cursor unless
//! `forget` is set; an ephemeral member is gone.

use std::sync::Arc;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use uuid::Uuid;

use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::pipeline::WritePipeline;
use super::registry::Registry;
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

/// Ends the membership (room, label) of `session`: it leaves the session's
/// memberships in `outlet`, its consumer is released from the member in
/// `rooms` ([`SessionOutlet::release_member`]), and, with `forget`, a
/// member left idle is removed and its removal filed in `pipeline`. If the
/// member has other consumers, the dispatcher pumps it before it sends the
/// answer (`Reply::PumpThenNow`), so they take over what this one had in
/// flight, first.
pub(super) fn leave(
    rooms: &mut Registry,
    outlet: &mut SessionOutlet,
    pipeline: &mut WritePipeline,
    session: Uuid,
    req: LeaveReq,
) -> Result<Reply, BrokerError> {
    let removed = outlet
        .sessions
        .get_mut(&session)
        .and_then(|s| s.remove_membership(&req.room, &req.label));
    let Some((room_id, key)) = removed else {
        return Err(BrokerError::NotJoined {
            room: req.room,
            subscription: req.label,
        });
    };
    let others = outlet.release_member(rooms, room_id, &key, session);
    // With others, the member is still connected, so `forget` leaves it
    // alone: the dispatcher's pump after this (before the answer) does
    // what a pump here would.
    if req.forget {
        let removed = match &key {
            MemberKey::Ephemeral(..) => false,
            // A group is forgotten only by its last consumer.
            _ => rooms.get_mut(&room_id).is_some_and(|room| {
                let idle = room.members.get(&key).is_some_and(|m| !m.connected());
                idle && room.members.remove(&key).is_some()
            }),
        };
        if removed {
            pipeline.mark_dirty(room_id, key.clone());
        }
    }
    let body = pb::server_frame::Body::LeaveOk(pb::LeaveOk {});
    Ok(if others {
        Reply::PumpThenNow(body, room_id, key)
    } else {
        Reply::Now(body)
    })
}
