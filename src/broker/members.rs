//! Presence: `Members` lists who is in a room; members that joined with
//! `presence` are told, live, when others join or leave. Presence events
//! are never stored, and are dropped for a session whose queue is full.

use roomq_wire::names::check_name;
use roomq_wire::pb;
use uuid::Uuid;

use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::registry::Registry;
use super::reply::Reply;
use super::room::{Member, MemberKey};
use crate::config::Config;
use crate::session::{Outbound, SessionInfo};
use crate::storage::RoomId;
use crate::tenancy::pattern;

/// Most entries in one `MembersOk`.
pub const MAX_LISTED: usize = 10_000;

/// A checked `Members` request.
#[derive(Debug)]
pub struct MembersReq {
    pub room: String,
}

/// Checks a `Members` request; runs on the session's task. Listing a room's
/// members needs the permission to join it.
pub fn check(m: pb::Members, session: &SessionInfo) -> Result<MembersReq, BrokerError> {
    check_name("room", &m.room)?;
    if !pattern::any_matches(&session.grant.subscribe, &m.room) {
        return Err(BrokerError::MembersHidden { room: m.room });
    }
    Ok(MembersReq { room: m.room })
}

/// Answers a `Members` request of `session`: the consumers of the room of
/// that name in the session's namespace (none if there is no such room),
/// each as `SessionOutlet::presence_of` describes it, in session id order,
/// as many as fit in a frame (`config`'s frame limit) and `MAX_LISTED`.
pub(super) fn members(
    rooms: &Registry,
    outlet: &SessionOutlet,
    config: &Config,
    session: Uuid,
    req: MembersReq,
) -> Result<Reply, BrokerError> {
    let namespace = match outlet.sessions.get(&session) {
        Some(s) => s.info.namespace.clone(),
        None => return Ok(Reply::Gone),
    };
    let mut members = Vec::new();
    let mut truncated = false;
    // Keep the reply within the frame limit.
    let budget = config.limits.max_frame().saturating_sub(256);
    let mut used = 0;
    let room = rooms
        .find(&namespace, &req.room)
        .and_then(|id| rooms.get(&id));
    if let Some(room) = room {
        'all: for (key, m) in &room.members {
            for c in &m.consumers {
                let p = outlet.presence_of(key, m, c.session);
                used += prost::Message::encoded_len(&p) + 4;
                if members.len() >= MAX_LISTED || used > budget {
                    truncated = true;
                    break 'all;
                }
                members.push(p);
            }
        }
    }
    // A stable order for the reader.
    members.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let body = pb::server_frame::Body::MembersOk(pb::MembersOk { members, truncated });
    Ok(Reply::Now(body))
}

impl SessionOutlet {
    /// How consumer `session` of member `key` looks to others.
    fn presence_of(&self, key: &MemberKey, member: &Member, session: Uuid) -> pb::Presence {
        let info = self.sessions.get(&session).map(|s| &s.info);
        let (subscription, group) = match key {
            MemberKey::Durable(n) => (n.to_string(), String::new()),
            MemberKey::Group(g) => (String::new(), g.to_string()),
            MemberKey::Ephemeral(..) => (String::new(), String::new()),
        };
        pb::Presence {
            session_id: bytes::Bytes::copy_from_slice(session.as_bytes()),
            client_id: info
                .and_then(|i| i.client_id.as_deref())
                .unwrap_or("")
                .to_string(),
            client_name: info.map(|i| i.client_name.clone()).unwrap_or_default(),
            subscription,
            durable: member.durable,
            group,
        }
    }

    /// Tells the consumers of `room_id` (in `rooms`) that asked for
    /// presence that consumer `session` of member `key` joined or left.
    pub(super) fn presence_event(
        &mut self,
        rooms: &Registry,
        room_id: RoomId,
        key: &MemberKey,
        session: Uuid,
        kind: pb::presence_event::Kind,
    ) {
        let Some(room) = rooms.get(&room_id) else {
            return;
        };
        let listeners: Vec<(Uuid, std::sync::Arc<str>)> = room
            .members
            .values()
            .flat_map(|m| m.consumers.iter())
            .filter(|c| c.presence && c.session != session)
            .map(|c| (c.session, c.label.clone()))
            .collect();
        if listeners.is_empty() {
            return;
        }
        let room_name = room.name.to_string();
        // The member may be gone already (an ephemeral member that left):
        // describe it from a stand-in with its durability.
        let member = match room.members.get(key) {
            Some(m) => self.presence_of(key, m, session),
            None => {
                let durable = !matches!(key, MemberKey::Ephemeral(..));
                self.presence_of(key, &Member::new(durable, 0, 0), session)
            }
        };
        for (to, label) in listeners {
            let frame = pb::ServerFrame {
                request_id: 0,
                body: Some(pb::server_frame::Body::Presence(Box::new(
                    pb::PresenceEvent {
                        room: room_name.clone(),
                        subscription: label.to_string(),
                        kind: kind as i32,
                        member: Some(member.clone()),
                    },
                ))),
            };
            // Live only: dropped if the listener's queue is full.
            let _ = self.offer(
                to,
                Outbound::Reply {
                    frame: Box::new(frame),
                    permit: None,
                },
            );
        }
    }
}
