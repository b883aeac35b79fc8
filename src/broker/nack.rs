//! `Nack`: hand deliveries back for redelivery, now or after a delay.

use std::sync::Arc;
use std::time::Duration;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use tokio::time::Instant;
use uuid::Uuid;

use super::ack::MAX_SEQS;
use super::error::BrokerError;
use super::join::MAX_ACK_TIMEOUT;
use super::outlet::SessionOutlet;
use super::pipeline::WritePipeline;
use super::registry::Registry;
use super::reply::Reply;
use super::room::MemberKey;

/// A checked nack.
#[derive(Debug)]
pub struct NackReq {
    pub room: Arc<str>,
    pub label: Arc<str>,
    pub seqs: Vec<u64>,
    pub delay: Duration,
    pub reason: Option<Arc<str>>,
}

/// Longest nack reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 255;

/// Checks a nack; runs on the session's task.
pub fn check(n: pb::Nack) -> Result<NackReq, BrokerError> {
    check_name("room", &n.room)?;
    if n.seqs.is_empty() || n.seqs.len() > MAX_SEQS {
        return Err(BrokerError::InvalidRequest(format!(
            "a nack lists 1 to {MAX_SEQS} seqs, not {}",
            n.seqs.len()
        )));
    }
    if n.reason.len() > MAX_REASON_BYTES {
        return Err(BrokerError::InvalidRequest(format!(
            "a nack reason is at most {MAX_REASON_BYTES} bytes, not {}",
            n.reason.len()
        )));
    }
    Ok(NackReq {
        room: Arc::from(n.room),
        label: Arc::from(n.subscription),
        seqs: n.seqs,
        delay: Duration::from_millis(n.delay_ms).min(MAX_ACK_TIMEOUT),
        reason: Some(Arc::from(if n.reason.is_empty() {
            "nacked".to_string()
        } else {
            n.reason
        })),
    })
}

/// Hands deliveries of `session` back to the member it names (through the
/// session's memberships in `outlet`) in `rooms`: due now, or after the
/// delay, with a timer armed in `outlet`'s timers. Marks the cursor of a
/// member that is not ephemeral dirty in `pipeline` and counts the nack in
/// the tenant's metrics; the dispatcher then pumps the member.
pub(super) fn nack(
    rooms: &mut Registry,
    outlet: &mut SessionOutlet,
    pipeline: &mut WritePipeline,
    session: Uuid,
    req: NackReq,
) -> Result<Reply, BrokerError> {
    let (room_id, key) = outlet.membership(session, &req.room, &req.label)?;
    let member = rooms.member_mut(&room_id, &key)?;
    // Only what was delivered, and is not in flight at another
    // consumer of a group.
    let handed_back = |s: &u64| {
        member
            .unacked
            .get(s)
            .is_some_and(|u| u.attempts > 0 && u.holder.is_none_or(|h| h == session))
    };
    if let Some(bad) = req.seqs.iter().find(|s| !handed_back(s)) {
        return Err(BrokerError::UnknownSeq {
            seq: *bad,
            why: "is not an unacknowledged delivery of this session",
        });
    }
    let deadline = Instant::now() + req.delay;
    for seq in &req.seqs {
        if req.delay.is_zero() {
            member.make_due(*seq, req.reason.clone());
        } else {
            member.wait(*seq, deadline, req.reason.clone());
        }
    }
    if !req.delay.is_zero() {
        member.schedule(deadline, room_id, &key, &mut outlet.timers);
    }
    if !matches!(key, MemberKey::Ephemeral(..)) {
        pipeline.mark_dirty(room_id, key.clone());
    }
    if let Some(s) = outlet.sessions.get(&session) {
        s.info.tenant.metrics.nacks.inc();
    }
    let body = pb::server_frame::Body::NackOk(pb::NackOk {});
    Ok(Reply::NowThenPump(body, room_id, key))
}
