//! `Join`: become a member of a room — durable (a stored cursor, named by
//! the subscription or the client id) or ephemeral — from a start position.

use std::sync::Arc;
use std::time::Duration;

use super::RequestSlot;
use roomq_wire::names::check_name;
use roomq_wire::{pb, ErrorCode};
use tracing::info;
use uuid::Uuid;

use super::room::{Attachment, Member, MemberKey};
use super::{error_frame, Broker, PendingConfirm, PendingReply};
use crate::config::Limits;

/// Longest ack timeout a member may ask for: one day.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Where a member starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Resume,
    New,
    Earliest,
    Seq(u64),
}

/// A checked join.
#[derive(Debug)]
pub struct JoinReq {
    pub room: String,
    /// The subscription label as the client gave it ("" allowed).
    pub label: Arc<str>,
    pub mode: pb::MemberMode,
    pub start: Start,
    pub max_in_flight: u32,
    pub ack_timeout: Duration,
}

/// Checks a join; runs on the session's task.
pub fn check(j: pb::Join, limits: &Limits) -> Result<JoinReq, pb::Error> {
    let bad_name =
        |e: roomq_wire::names::NameError| pb::Error::new(ErrorCode::InvalidName, e.to_string());
    check_name("room", &j.room).map_err(bad_name)?;
    if !j.subscription.is_empty() {
        check_name("subscription", &j.subscription).map_err(bad_name)?;
    }
    let mode = pb::MemberMode::try_from(j.mode).map_err(|_| {
        pb::Error::new(
            ErrorCode::InvalidRequest,
            format!("unknown member mode {}", j.mode),
        )
    })?;
    let start = match pb::StartPosition::try_from(j.start) {
        Ok(pb::StartPosition::Resume) => Start::Resume,
        Ok(pb::StartPosition::New) => Start::New,
        Ok(pb::StartPosition::Earliest) => Start::Earliest,
        Ok(pb::StartPosition::Seq) => Start::Seq(j.start_seq),
        Ok(pb::StartPosition::Time) | Err(_) => {
            return Err(pb::Error::new(
                ErrorCode::InvalidRequest,
                format!("unknown start position {}", j.start),
            ))
        }
    };
    let max_in_flight = match j.max_in_flight {
        0 => limits.max_in_flight,
        n => n.min(limits.max_in_flight),
    };
    let ack_timeout = match j.ack_timeout_ms {
        0 => limits.ack_timeout(),
        ms => Duration::from_millis(ms).min(MAX_ACK_TIMEOUT),
    };
    Ok(JoinReq {
        room: j.room,
        label: Arc::from(j.subscription),
        mode,
        start,
        max_in_flight,
        ack_timeout,
    })
}

impl Broker {
    pub(super) fn join(
        &mut self,
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        req: JoinReq,
    ) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        let info = entry.info.clone();
        if entry
            .memberships
            .contains_key(&(Arc::from(req.room.as_str()), req.label.clone()))
        {
            let msg = format!("already joined room {:?} as {:?}", req.room, &*req.label);
            return self.reply_error(session, request_id, permit, ErrorCode::AlreadyJoined, msg);
        }
        if entry.memberships.len() >= self.config.limits.max_memberships_per_session as usize {
            let msg = format!(
                "a session may hold {} memberships",
                self.config.limits.max_memberships_per_session
            );
            return self.reply_error(session, request_id, permit, ErrorCode::QuotaExceeded, msg);
        }
        let name: Option<Arc<str>> = if req.label.is_empty() {
            info.client_id.clone()
        } else {
            Some(req.label.clone())
        };
        let durable_name = match (req.mode, name) {
            (pb::MemberMode::Ephemeral, _) => None,
            (pb::MemberMode::Auto, name) => name,
            (pb::MemberMode::Durable, Some(name)) => Some(name),
            (pb::MemberMode::Durable, None) => {
                let msg = "a durable membership needs a subscription name or a client id";
                return self.reply_error(
                    session,
                    request_id,
                    permit,
                    ErrorCode::InvalidRequest,
                    msg,
                );
            }
        };
        if let Err((code, msg)) = self.check_rooms(&info.tenant, [req.room.as_str()]) {
            return self.reply_error(session, request_id, permit, code, msg);
        }
        let room_id = self.room_id(&info.namespace, &req.room);
        let key = match &durable_name {
            Some(n) => MemberKey::Durable(n.clone()),
            None => MemberKey::Ephemeral(session, req.label.clone()),
        };

        // A durable member held by another session moves to this one.
        let previous = self
            .rooms
            .get(&room_id)
            .and_then(|r| r.members.get(&key))
            .and_then(|m| m.attached.clone());
        if let Some(prev) = previous.as_ref().filter(|p| p.session == session) {
            let msg = format!(
                "this session already holds membership {:?} of room {:?} as {:?}",
                durable_name.as_deref().unwrap_or(""),
                req.room,
                &*prev.label
            );
            return self.reply_error(session, request_id, permit, ErrorCode::AlreadyJoined, msg);
        }
        if let Some(prev) = previous {
            let room_name: Arc<str> = Arc::from(req.room.as_str());
            if let Some(other) = self.sessions.get_mut(&prev.session) {
                other.memberships.remove(&(room_name, prev.label.clone()));
            }
            if let Some(m) = self
                .rooms
                .get_mut(&room_id)
                .and_then(|r| r.members.get_mut(&key))
            {
                m.detach();
            }
            let msg = format!(
                "membership {:?} of room {:?} was joined by another session",
                durable_name.as_deref().unwrap_or(""),
                req.room
            );
            self.reply(
                prev.session,
                error_frame(0, ErrorCode::MembershipTakenOver, msg),
                None,
            );
        }

        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        // (After a purge the log may start past what is committed yet.)
        let end = (room.committed_seq + 1).max(room.first_seq);
        let position = match req.start {
            Start::Resume | Start::New => end,
            Start::Earliest => room.first_seq,
            Start::Seq(s) => s.clamp(room.first_seq, end),
        };
        let is_new = !room.members.contains_key(&key);
        let member = room.members.entry(key.clone()).or_insert_with(|| {
            Member::new(
                durable_name.is_some(),
                position,
                req.max_in_flight,
                req.ack_timeout,
            )
        });
        if req.start != Start::Resume {
            member.reposition(position);
        }
        // A durable member's new position must be on disk before the client
        // is told it joined. Otherwise a crash could forget the member while a
        // publish that was already being written when it joined is confirmed;
        // it would come back "new", past that confirmed message.
        let must_persist = member.durable && (is_new || req.start != Start::Resume);
        member.max_in_flight = req.max_in_flight;
        member.ack_timeout = req.ack_timeout;
        if member.durable {
            member.owner = info.client_id.clone();
        }
        member.attached = Some(Attachment {
            session,
            label: req.label.clone(),
        });
        let reply = pb::JoinOk {
            room: req.room.clone(),
            subscription: durable_name.as_deref().unwrap_or("").to_string(),
            durable: member.durable,
            next_seq: member.ack_floor(),
            last_seq: room.committed_seq,
        };
        let room_name = room.name.clone();
        if must_persist {
            member.joining = true;
            if let Some(name) = &durable_name {
                self.open
                    .write
                    .cursors
                    .push((room_id, name.clone(), Some(member.record())));
            }
        } else if durable_name.is_some() {
            self.dirty.insert((room_id, key.clone()));
        }
        if let Some(entry) = self.sessions.get_mut(&session) {
            entry
                .memberships
                .insert((room_name, req.label.clone()), (room_id, key.clone()));
        }
        info!(
            namespace = %info.namespace,
            session = %session,
            room = %req.room,
            subscription = durable_name.as_deref().unwrap_or(""),
            durable = reply.durable,
            next_seq = reply.next_seq,
            "joined"
        );
        let frame = pb::ServerFrame {
            request_id,
            body: Some(pb::server_frame::Body::JoinOk(reply)),
        };
        if must_persist {
            self.open.confirms.push(PendingConfirm {
                session,
                reply: PendingReply::Frame(frame),
                permit,
                then_pump: Some((room_id, key)),
            });
        } else {
            self.reply(session, frame, Some(permit));
            self.pump(room_id, &key);
        }
    }
}
