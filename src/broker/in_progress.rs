//! `InProgress`: the member is still working on these deliveries; their ack
//! timers restart from now. Lets a slow consumer keep a message without it
//! being redelivered elsewhere or again.

use std::sync::Arc;

use super::RequestSlot;
use roomq_wire::names::check_name;
use roomq_wire::{pb, ErrorCode};
use tokio::time::Instant;
use uuid::Uuid;

use super::ack::MAX_SEQS;
use super::Broker;

/// A checked in-progress signal.
#[derive(Debug)]
pub struct InProgressReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub seqs: Vec<u64>,
}

/// Checks an in-progress signal; runs on the session's task.
pub fn check(p: pb::InProgress) -> Result<InProgressReq, pb::Error> {
    check_name("room", &p.room)
        .map_err(|e| pb::Error::new(ErrorCode::InvalidName, e.to_string()))?;
    if p.seqs.is_empty() || p.seqs.len() > MAX_SEQS {
        return Err(pb::Error::new(
            ErrorCode::InvalidRequest,
            format!(
                "in-progress lists 1 to {MAX_SEQS} seqs, not {}",
                p.seqs.len()
            ),
        ));
    }
    Ok(InProgressReq {
        room: Arc::from(p.room),
        label: Arc::from(p.subscription),
        seqs: p.seqs,
    })
}

impl Broker {
    pub(super) fn in_progress(
        &mut self,
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        req: InProgressReq,
    ) {
        let (room_id, key) = match self.membership(session, &req.room, &req.label) {
            Ok(m) => m,
            Err(msg) => {
                return self.reply_error(session, request_id, permit, ErrorCode::NotJoined, msg)
            }
        };
        let Some(member) = self.rooms.get(&room_id).and_then(|r| r.members.get(&key)) else {
            let msg = "membership is gone";
            return self.reply_error(session, request_id, permit, ErrorCode::NotJoined, msg);
        };
        // A seq never delivered is an error; one that is no longer out with
        // the client (acked, or already due again) is skipped: the client
        // may be a step behind the broker.
        if let Some(bad) = req.seqs.iter().find(|s| **s == 0 || **s >= member.next_seq) {
            let msg = format!("seq {bad} has not been delivered to this member");
            return self.reply_error(session, request_id, permit, ErrorCode::UnknownSeq, msg);
        }
        // Only what is in flight at this session; each by the ack timeout of
        // its attempt.
        let Some(consumer) = member.consumer(session) else {
            let msg = "membership is gone";
            return self.reply_error(session, request_id, permit, ErrorCode::NotJoined, msg);
        };
        let now = Instant::now();
        let extend: Vec<(u64, Instant)> = req
            .seqs
            .iter()
            .filter_map(|s| member.unacked.get(s).map(|u| (*s, u)))
            .filter(|(_, u)| u.holder == Some(session))
            .map(|(s, u)| (s, now + consumer.timeout(u.attempts)))
            .collect();
        if let Some(m) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.members.get_mut(&key))
        {
            let mut arm = super::TimerArm {
                timers: &mut self.timers,
                gen: &mut self.timer_gen,
            };
            for (seq, deadline) in extend {
                m.extend(seq, session, deadline, room_id, &key, &mut arm);
            }
        }
        let frame = pb::ServerFrame {
            request_id,
            body: Some(pb::server_frame::Body::InProgressOk(pb::InProgressOk {})),
        };
        self.reply(session, frame, Some(permit));
    }
}
