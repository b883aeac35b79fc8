//! The client's error type.

use roomq_wire::{pb, ErrorCode, FrameError};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("broker error {name} ({code}): {message}")]
    Broker {
        /// The numeric code, as sent.
        code: u32,
        /// The code's stable name.
        name: String,
        message: String,
        /// The error's structured fields: the membership it concerns, the
        /// quota, the room's last seq.
        detail: Box<ErrorDetail>,
    },
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
    /// The call does not apply to this value, e.g. giving back (nack) a
    /// volatile delivery, which the broker never redelivers.
    #[error("invalid use: {0}")]
    InvalidUse(String),
    /// TLS could not be set up: an unreadable trust file, an invalid server
    /// name, or a broker certificate that TLS refused.
    #[error("tls: {0}")]
    Tls(String),
}

/// What a broker error says besides its code and message (see `Error` in
/// docs/protocol.md); empty where it does not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The membership an error is about (`MEMBERSHIP_TAKEN_OVER`, a deleted
    /// room's `NOT_FOUND`): its room and subscription handle.
    pub room: String,
    pub subscription: String,
    /// Which quota a `QUOTA_EXCEEDED` is about (`publish_rate` clears by
    /// itself; the others do not).
    pub quota: String,
    /// The room's last seq, for `PRECONDITION_FAILED`.
    pub last_seq: Option<u64>,
}

impl ClientError {
    /// An error the broker sent.
    pub fn from_wire(e: pb::Error) -> Self {
        ClientError::Broker {
            code: e.code,
            name: e.name,
            message: e.message,
            detail: Box::new(ErrorDetail {
                room: e.room,
                subscription: e.subscription,
                quota: e.quota,
                last_seq: e.last_seq,
            }),
        }
    }

    /// The structured fields of a broker error, if this is one.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ClientError::Broker { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Whether the connection was lost (the operation may be retried on a
    /// new one), as opposed to the broker refusing the request.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_) | ClientError::Closed | ClientError::Frame(FrameError::Io(_))
        )
    }

    /// The broker's error code, if this is a broker error with a known code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => ErrorCode::from_u32(*code),
            _ => None,
        }
    }
}

impl From<prost::DecodeError> for ClientError {
    fn from(e: prost::DecodeError) -> Self {
        ClientError::Frame(FrameError::Malformed(e))
    }
}
