//! Presence: who is in a room. [`crate::Client::members`] lists the
//! sessions joined to a room now; a subscription joined with
//! [`crate::JoinOptions::presence`] also receives a [`PresenceChange`] each
//! time someone joins or leaves (see [`crate::SubscriptionEvent`]).

use roomq_wire::pb;
use uuid::Uuid;

/// One session joined to a room (one consumer, for a group).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The joined session (nil if the broker sent something that is not a
    /// UUID). Usable with [`crate::PublishBuilder::except_session`].
    pub session_id: Uuid,
    /// The session's durable identity ("" if it has none).
    pub client_id: String,
    /// The session's free-text name ("" if it gave none).
    pub client_name: String,
    /// The durable membership's name, or "" when ephemeral.
    pub subscription: String,
    pub durable: bool,
    /// The group it consumes for, or "".
    pub group: String,
}

impl From<pb::Presence> for Member {
    fn from(p: pb::Presence) -> Self {
        Member {
            session_id: Uuid::from_slice(&p.session_id).unwrap_or_default(),
            client_id: p.client_id,
            client_name: p.client_name,
            subscription: p.subscription,
            durable: p.durable,
            group: p.group,
        }
    }
}

/// The members of a room, as [`crate::Client::members`] returns them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    pub members: Vec<Member>,
    /// More members exist than fit in one reply.
    pub truncated: bool,
}

impl From<pb::MembersOk> for Members {
    fn from(ok: pb::MembersOk) -> Self {
        Members {
            members: ok.members.into_iter().map(Member::from).collect(),
            truncated: ok.truncated,
        }
    }
}

/// Whether a member came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Joined,
    Left,
}

/// Someone joined or left a room whose subscription asked for presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub room: String,
    /// The subscription label that asked for presence.
    pub subscription: String,
    pub kind: PresenceKind,
    pub member: Member,
}

impl PresenceChange {
    /// The SDK's view of a pushed event; `None` for a kind this SDK does not
    /// know (unspecified, or added by a newer broker).
    pub fn from_wire(e: pb::PresenceEvent) -> Option<Self> {
        let kind = match pb::presence_event::Kind::try_from(e.kind) {
            Ok(pb::presence_event::Kind::Joined) => PresenceKind::Joined,
            Ok(pb::presence_event::Kind::Left) => PresenceKind::Left,
            Ok(pb::presence_event::Kind::Unspecified) | Err(_) => return None,
        };
        Some(PresenceChange {
            room: e.room,
            subscription: e.subscription,
            kind,
            member: e.member.map(Member::from).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(id: Uuid) -> pb::Presence {
        pb::Presence {
            session_id: id.as_bytes().to_vec().into(),
            client_id: "bob".into(),
            client_name: "Bob's phone".into(),
            subscription: "bob".into(),
            durable: true,
            group: String::new(),
        }
    }

    #[test]
    fn members_and_changes_come_from_the_wire() {
        let id = Uuid::now_v7();
        let list = Members::from(pb::MembersOk {
            members: vec![presence(id)],
            truncated: true,
        });
        assert!(list.truncated);
        assert_eq!(list.members.len(), 1);
        assert_eq!(list.members[0].session_id, id);
        assert_eq!(list.members[0].client_name, "Bob's phone");

        let change = PresenceChange::from_wire(pb::PresenceEvent {
            room: "general".into(),
            subscription: "".into(),
            kind: pb::presence_event::Kind::Left as i32,
            member: Some(presence(id)),
        })
        .unwrap();
        assert_eq!(change.kind, PresenceKind::Left);
        assert_eq!(change.member.client_id, "bob");

        let unknown = pb::PresenceEvent {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(PresenceChange::from_wire(unknown), None);
        let bad_id = Member::from(pb::Presence {
            session_id: vec![1, 2, 3].into(),
            ..Default::default()
        });
        assert_eq!(bad_id.session_id, Uuid::nil());
    }
}
