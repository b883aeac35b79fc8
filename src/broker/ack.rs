//! `Ack`: acknowledge deliveries, one by one (`seqs`) or cumulatively
//! (`up_to`). Acks are stored lazily (see `storage.cursor_sync_interval_ms`):
//! a crash may lose the latest ones, which causes redelivery, never loss.

use std::sync::Arc;

use super::RequestSlot;
use roomq_wire::names::check_name;
use roomq_wire::{pb, ErrorCode};
use uuid::Uuid;

use super::room::MemberKey;
use super::Broker;
use crate::storage::RoomId;

/// Most seqs one ack or nack may list.
pub const MAX_SEQS: usize = 10_000;

/// A checked ack.
#[derive(Debug)]
pub struct AckReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub seqs: Vec<u64>,
    pub up_to: u64,
}

/// Checks an ack; runs on the session's task.
pub fn check(a: pb::Ack) -> Result<AckReq, pb::Error> {
    check_name("room", &a.room)
        .map_err(|e| pb::Error::new(ErrorCode::InvalidName, e.to_string()))?;
    if a.seqs.len() > MAX_SEQS {
        return Err(pb::Error::new(
            ErrorCode::InvalidRequest,
            format!("{} seqs in one ack; the limit is {MAX_SEQS}", a.seqs.len()),
        ));
    }
    if a.seqs.is_empty() && a.up_to == 0 {
        return Err(pb::Error::new(
            ErrorCode::InvalidRequest,
            "ack names no seq",
        ));
    }
    Ok(AckReq {
        room: Arc::from(a.room),
        label: Arc::from(a.subscription),
        seqs: a.seqs,
        up_to: a.up_to,
    })
}

impl Broker {
    /// The membership (room, label) of `session`, or the error to send.
    pub(super) fn membership(
        &self,
        session: Uuid,
        room: &Arc<str>,
        label: &Arc<str>,
    ) -> Result<(RoomId, MemberKey), String> {
        self.sessions
            .get(&session)
            .and_then(|s| s.memberships.get(&(room.clone(), label.clone())))
            .cloned()
            .ok_or_else(|| format!("not a member of room {:?} as {:?}", &**room, &**label))
    }

    pub(super) fn ack(&mut self, session: Uuid, request_id: u64, permit: RequestSlot, req: AckReq) {
        let (room_id, key) = match self.membership(session, &req.room, &req.label) {
            Ok(m) => m,
            Err(msg) => {
                return self.reply_error(session, request_id, permit, ErrorCode::NotJoined, msg)
            }
        };
        let Some(member) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.members.get_mut(&key))
        else {
            return self.reply_error(
                session,
                request_id,
                permit,
                ErrorCode::NotJoined,
                "membership is gone",
            );
        };
        if let Err(seq) = member.ack(session, &req.seqs, req.up_to) {
            let msg = format!("seq {seq} has not been delivered to this session");
            return self.reply_error(session, request_id, permit, ErrorCode::UnknownSeq, msg);
        }
        let next_seq = member.ack_floor();
        if let Some(s) = self.sessions.get(&session) {
            s.info.tenant.metrics.acks.inc();
        }
        if member.durable {
            self.dirty.insert((room_id, key.clone()));
        }
        let frame = pb::ServerFrame {
            request_id,
            body: Some(pb::server_frame::Body::AckOk(pb::AckOk { next_seq })),
        };
        self.reply(session, frame, Some(permit));
        self.pump(room_id, &key);
    }
}
