//! Why the broker refused a request, or why it tells a session that
//! something it held is gone, in the broker's own terms. The checks run on a
//! session's task and the operations run on the actor both return a
//! [`BrokerError`]; it becomes a wire error (`pb::Error`: code, message and
//! the structured fields a client routes on) in one place, the
//! `From<BrokerError> for pb::Error` below, called where a frame is built:
//! the actor's dispatcher ([`super::Broker`]'s `handle`), the session's
//! reader, and the pushes (takeover, deleted room or namespace, kick).

use std::sync::Arc;

use roomq_wire::names::NameError;
use roomq_wire::{pb, ErrorCode};
use uuid::Uuid;

use super::dead_letter;
use crate::metrics::Quota;
use crate::storage::StoreError;
use crate::tenancy::Verdict;

/// A refusal (or a push saying a membership or session ended).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A room, event, subscription, group, header or other name is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A request's fields make no sense (the text says which).
    #[error("{0}")]
    InvalidRequest(String),
    /// A durable join named no subscription and the session has no client id.
    #[error("a durable membership needs a subscription name or a client id")]
    NoDurableName,
    /// A publish whose message could not be delivered within the frame limit.
    #[error("message is {size} bytes; the limit is {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    /// The session's grant does not let it join `room`, so it may not list
    /// its members either.
    #[error("this session may not see the members of room {room:?}")]
    MembersHidden { room: String },
    /// An admin request outside the `/admin` namespace.
    #[error("admin requests are served only in the /admin namespace")]
    AdminOnly,
    /// A room request in the `/admin` namespace.
    #[error("the /admin namespace has no rooms; it serves admin requests only")]
    AdminHasNoRooms,
    /// A namespace hook refused the request with its own code, naming a
    /// quota if it refused with `QUOTA_EXCEEDED` through `Verdict::Quota`.
    #[error("{reason}")]
    Hook {
        code: ErrorCode,
        reason: String,
        quota: Option<&'static str>,
    },
    /// The session holds no membership `(room, subscription)`.
    #[error("not a member of room {room:?} as {subscription:?}")]
    NotJoined {
        room: Arc<str>,
        subscription: Arc<str>,
    },
    /// The session held the membership, but its member is gone.
    #[error("membership is gone")]
    MembershipGone,
    /// `seq` is not a delivery the request may act on; `why` says what it
    /// should have been.
    #[error("seq {seq} {why}")]
    UnknownSeq { seq: u64, why: &'static str },
    /// The session already holds membership `(room, subscription)`.
    #[error("already joined room {room:?} as {subscription:?}")]
    AlreadyJoined {
        room: String,
        subscription: Arc<str>,
    },
    /// The session already consumes for durable member `member` of `room`
    /// (under another subscription handle).
    #[error("this session already holds membership {member:?} of room {room:?}")]
    AlreadyHeld { member: String, room: String },
    /// A quota of the namespace (or the session's membership limit) is
    /// exhausted; `detail` says by how much.
    #[error("{detail}")]
    QuotaExceeded { quota: Quota, detail: String },
    /// A publish's `expected_last_seq` was not the room's last seq.
    #[error("the room's last seq is {last_seq}, not {expected}")]
    PreconditionFailed { last_seq: u64, expected: u64 },
    /// A room that does not exist, in a namespace that creates rooms only
    /// through `/admin`.
    #[error("there is no room {room:?}; namespace {namespace} creates rooms through /admin only")]
    RoomNotCreated { namespace: String, room: String },
    /// An admin request named a room that does not exist.
    #[error("there is no room {room:?} in {namespace}")]
    RoomNotFound { namespace: String, room: String },
    /// An admin request named a namespace that does not exist (or `/admin`).
    #[error("there is no namespace {0}")]
    NamespaceNotFound(String),
    /// An admin request named a session that is not connected.
    #[error("there is no session {0}")]
    SessionNotFound(Uuid),
    /// A token that does not exist, or one the config file declares, was
    /// to be deleted (the text says which).
    #[error("{0}")]
    TokenNotFound(String),
    /// A redrive of a room that is not a dead-letter room.
    #[error(
        "{room:?} is not a dead-letter room (its name does not end in {:?})",
        dead_letter::SUFFIX
    )]
    NotDeadLetterRoom { room: Arc<str> },
    /// A read of the store failed (a request that needed it fails; the
    /// broker goes on).
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// Something the broker needed was not available (randomness for a
    /// token).
    #[error("{0}")]
    Internal(String),
    /// Push: another session joined the durable membership that this
    /// session held as `(room, subscription)`.
    #[error("membership {member:?} of room {room:?} was joined by another session")]
    MembershipTakenOver {
        room: String,
        subscription: Arc<str>,
        member: String,
    },
    /// Push: `/admin` deleted the room of membership `(room, subscription)`.
    #[error("room {room:?} was deleted")]
    RoomDeleted {
        room: Arc<str>,
        subscription: Arc<str>,
    },
    /// Push, fatal: `/admin` deleted the session's namespace.
    #[error("namespace {0} was deleted")]
    NamespaceDeleted(String),
    /// Push, fatal: an administrator closed the session.
    #[error("an administrator closed this session")]
    Kicked,
}

/// The broker actor has stopped: a command sent to it is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker has stopped")]
pub struct BrokerGone;

impl BrokerError {
    /// The refusal in a hook's verdict; `None` if it allows.
    pub fn refused_by(verdict: Verdict) -> Option<BrokerError> {
        match verdict {
            Verdict::Allow => None,
            Verdict::Reject { code, reason } => Some(BrokerError::Hook {
                code,
                reason,
                quota: None,
            }),
            Verdict::Quota { quota, reason } => Some(BrokerError::Hook {
                code: ErrorCode::QuotaExceeded,
                reason,
                quota: Some(quota),
            }),
        }
    }

    /// The wire code this error is sent with.
    pub fn code(&self) -> ErrorCode {
        use BrokerError as E;
        match self {
            E::InvalidName(_) => ErrorCode::InvalidName,
            E::InvalidRequest(_) | E::NoDurableName | E::NotDeadLetterRoom { .. } => {
                ErrorCode::InvalidRequest
            }
            E::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            E::MembersHidden { .. } | E::AdminOnly | E::AdminHasNoRooms => {
                ErrorCode::PermissionDenied
            }
            E::Hook { code, .. } => *code,
            E::NotJoined { .. } | E::MembershipGone => ErrorCode::NotJoined,
            E::UnknownSeq { .. } => ErrorCode::UnknownSeq,
            E::AlreadyJoined { .. } | E::AlreadyHeld { .. } => ErrorCode::AlreadyJoined,
            E::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            E::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            E::RoomNotCreated { .. }
            | E::RoomNotFound { .. }
            | E::NamespaceNotFound(_)
            | E::SessionNotFound(_)
            | E::TokenNotFound(_)
            | E::RoomDeleted { .. }
            | E::NamespaceDeleted(_) => ErrorCode::NotFound,
            E::Storage(_) | E::Internal(_) => ErrorCode::Internal,
            E::MembershipTakenOver { .. } => ErrorCode::MembershipTakenOver,
            E::Kicked => ErrorCode::Kicked,
        }
    }
}

/// The `quota` field's name for `quota` (see `Error.quota` in the proto).
fn quota_name(quota: Quota) -> &'static str {
    match quota {
        Quota::Connections => "max_connections",
        Quota::MessageBytes => "max_message_bytes",
        Quota::PublishRate => "publish_rate",
        Quota::StoredBytes => "max_stored_bytes",
        Quota::Rooms => "max_rooms",
        Quota::Memberships => "max_memberships_per_session",
    }
}

impl From<BrokerError> for pb::Error {
    fn from(e: BrokerError) -> pb::Error {
        let error = pb::Error::new(e.code(), e.to_string());
        match e {
            BrokerError::Hook {
                quota: Some(quota), ..
            } => error.with_quota(quota),
            BrokerError::QuotaExceeded { quota, .. } => error.with_quota(quota_name(quota)),
            BrokerError::PreconditionFailed { last_seq, .. } => error.with_last_seq(last_seq),
            BrokerError::MembershipTakenOver {
                room, subscription, ..
            } => error.for_membership(&room, &subscription),
            BrokerError::RoomDeleted { room, subscription } => {
                error.for_membership(&room, &subscription)
            }
            // `NOT_FOUND` is not fatal for a request; for the sessions of a
            // deleted namespace it is the last frame.
            BrokerError::NamespaceDeleted(_) => pb::Error {
                fatal: true,
                ..error
            },
            _ => error,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_quota_refusal_names_its_quota() {
        let e = pb::Error::from(BrokerError::QuotaExceeded {
            quota: Quota::StoredBytes,
            detail: "full".into(),
        });
        assert_eq!(e.error_code(), Some(ErrorCode::QuotaExceeded));
        assert_eq!(
            (e.name.as_str(), e.message.as_str()),
            ("QUOTA_EXCEEDED", "full")
        );
        assert_eq!(e.quota, "max_stored_bytes");
        assert!(!e.fatal && e.last_seq.is_none() && e.room.is_empty());
    }

    #[test]
    fn a_failed_precondition_carries_the_last_seq() {
        let e = pb::Error::from(BrokerError::PreconditionFailed {
            last_seq: 7,
            expected: 5,
        });
        assert_eq!(e.error_code(), Some(ErrorCode::PreconditionFailed));
        assert_eq!(e.last_seq, Some(7));
        assert_eq!(e.message, "the room's last seq is 7, not 5");
        assert!(e.quota.is_empty());
    }

    #[test]
    fn membership_pushes_name_the_membership() {
        let e = pb::Error::from(BrokerError::MembershipTakenOver {
            room: "general".into(),
            subscription: Arc::from("inbox"),
            member: "alice".into(),
        });
        assert_eq!(e.error_code(), Some(ErrorCode::MembershipTakenOver));
        assert_eq!(
            (e.room.as_str(), e.subscription.as_str()),
            ("general", "inbox")
        );
        assert!(!e.fatal);
        let e = pb::Error::from(BrokerError::RoomDeleted {
            room: Arc::from("doomed"),
            subscription: Arc::from(""),
        });
        assert_eq!(e.error_code(), Some(ErrorCode::NotFound));
        assert_eq!(e.message, "room \"doomed\" was deleted");
        assert_eq!(e.room, "doomed");
    }

    #[test]
    fn a_not_joined_refusal_has_no_structured_fields() {
        // The protocol names the membership only for pushes (see
        // `Error.room` in the proto); a refused request is matched by its
        // request id.
        let e = pb::Error::from(BrokerError::NotJoined {
            room: Arc::from("r"),
            subscription: Arc::from("s"),
        });
        assert_eq!(e.error_code(), Some(ErrorCode::NotJoined));
        assert_eq!(e.message, "not a member of room \"r\" as \"s\"");
        assert!(e.room.is_empty() && e.subscription.is_empty());
    }

    #[test]
    fn a_deleted_namespace_is_fatal_and_a_hook_keeps_its_code() {
        let e = pb::Error::from(BrokerError::NamespaceDeleted("/x".into()));
        assert_eq!(e.error_code(), Some(ErrorCode::NotFound));
        assert!(e.fatal);
        let hook = Verdict::Quota {
            quota: "publish_rate",
            reason: "slow down".into(),
        };
        let e = pb::Error::from(BrokerError::refused_by(hook).unwrap());
        assert_eq!(e.error_code(), Some(ErrorCode::QuotaExceeded));
        assert_eq!(
            (e.quota.as_str(), e.message.as_str()),
            ("publish_rate", "slow down")
        );
        assert!(BrokerError::refused_by(Verdict::Allow).is_none());
        let e = pb::Error::from(BrokerError::Kicked);
        assert!(e.fatal && e.error_code() == Some(ErrorCode::Kicked));
    }

    #[test]
    fn it_is_small_enough_to_return_by_value() {
        // `clippy::result_large_err` warns from 128 bytes.
        assert!(std::mem::size_of::<BrokerError>() <= 128);
    }
}
