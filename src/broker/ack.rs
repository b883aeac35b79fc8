//! `Ack`: acknowledge deliveries, one by one (`seqs`) or cumulatively
//! (`up_to`). Acks are stored lazily (see `storage.cursor_sync_interval_ms`):
//! a crash may lose the latest ones, which causes redelivery, never loss.

use std::sync::Arc;

use roomq_wire::names::check_name;
use roomq_wire::pb;
use uuid::Uuid;

use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::pipeline::WritePipeline;
use super::registry::Registry;
use super::reply::Reply;

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
pub fn check(a: pb::Ack) -> Result<AckReq, BrokerError> {
    check_name("room", &a.room)?;
    if a.seqs.len() > MAX_SEQS {
        return Err(BrokerError::InvalidRequest(format!(
            "{} seqs in one ack; the limit is {MAX_SEQS}",
            a.seqs.len()
        )));
    }
    if a.seqs.is_empty() && a.up_to == 0 {
        return Err(BrokerError::InvalidRequest("ack names no seq".into()));
    }
    Ok(AckReq {
        room: Arc::from(a.room),
        label: Arc::from(a.subscription),
        seqs: a.seqs,
        up_to: a.up_to,
    })
}

/// Applies an ack of `session` to the member it names (through the
/// session's memberships in `outlet`) in `rooms`, counts it in the tenant's
/// metrics, and marks a durable member's cursor dirty in `pipeline`. The
/// answer carries the member's ack floor; the dispatcher then pumps the
/// member, since the ack may have freed room for more deliveries.
pub(super) fn ack(
    rooms: &mut Registry,
    outlet: &SessionOutlet,
    pipeline: &mut WritePipeline,
    session: Uuid,
    req: AckReq,
) -> Result<Reply, BrokerError> {
    let (room_id, key) = outlet.membership(session, &req.room, &req.label)?;
    let member = rooms.member_mut(&room_id, &key)?;
    member
        .ack(session, &req.seqs, req.up_to)
        .map_err(|seq| BrokerError::UnknownSeq {
            seq,
            why: "has not been delivered to this session",
        })?;
    let next_seq = member.ack_floor();
    if let Some(s) = outlet.sessions.get(&session) {
        s.info.tenant.metrics.acks.inc();
    }
    if member.durable {
        pipeline.mark_dirty(room_id, key.clone());
    }
    let body = pb::server_frame::Body::AckOk(pb::AckOk { next_seq });
    Ok(Reply::NowThenPump(body, room_id, key))
}
