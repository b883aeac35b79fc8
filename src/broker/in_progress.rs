//! `InProgress`: the member is still working on these deliveries; their ack
//! timers restart from now. Lets a slow consumer keep a message without it
//! being redelivered elsewhere or again.

use std::sync::Arc;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use tokio::time::Instant;
use uuid::Uuid;

use super::ack::MAX_SEQS;
use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::registry::Registry;
use super::reply::Reply;

/// A checked in-progress signal.
#[derive(Debug)]
pub struct InProgressReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub seqs: Vec<u64>,
}

/// Checks an in-progress signal; runs on the session's task.
pub fn check(p: pb::InProgress) -> Result<InProgressReq, BrokerError> {
    check_name("room", &p.room)?;
    if p.seqs.is_empty() || p.seqs.len() > MAX_SEQS {
        return Err(BrokerError::InvalidRequest(format!(
            "in-progress lists 1 to {MAX_SEQS} seqs, not {}",
            p.seqs.len()
        )));
    }
    Ok(InProgressReq {
        room: Arc::from(p.room),
        label: Arc::from(p.subscription),
        seqs: p.seqs,
    })
}

/// Restarts the ack timers of the deliveries of `session` that are in
/// flight at it, in the member it names (through the session's memberships
/// in `outlet`) in `rooms`, each from now by its attempt's ack timeout,
/// re-arming them in `outlet`'s timers.
pub(super) fn in_progress(
    rooms: &mut Registry,
    outlet: &mut SessionOutlet,
    session: Uuid,
    req: InProgressReq,
) -> Result<Reply, BrokerError> {
    let (room_id, key) = outlet.membership(session, &req.room, &req.label)?;
    let member = rooms.member_mut(&room_id, &key)?;
    // A seq never delivered is an error; one that is no longer out with
    // the client (acked, or already due again) is skipped: the client
    // may be a step behind the broker.
    if let Some(bad) = req.seqs.iter().find(|s| **s == 0 || **s >= member.next_seq) {
        return Err(BrokerError::UnknownSeq {
            seq: *bad,
            why: "has not been delivered to this member",
        });
    }
    // Only what is in flight at this session; each by the ack timeout of
    // its attempt.
    let consumer = member
        .consumer(session)
        .ok_or(BrokerError::MembershipGone)?;
    let now = Instant::now();
    let extend: Vec<(u64, Instant)> = req
        .seqs
        .iter()
        .filter_map(|s| member.unacked.get(s).map(|u| (*s, u)))
        .filter(|(_, u)| u.holder == Some(session))
        .map(|(s, u)| (s, now + consumer.timeout(u.attempts)))
        .collect();
    for (seq, deadline) in extend {
        member.extend(seq, session, deadline, room_id, &key, &mut outlet.timers);
    }
    let body = pb::server_frame::Body::InProgressOk(pb::InProgressOk {});
    Ok(Reply::Now(body))
}
