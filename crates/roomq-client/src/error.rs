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

impl ClientError {
    /// An error the broker sent.
    pub fn from_wire(e: pb::Error) -> Self {
        ClientError::Broker {
            code: e.code,
            name: e.name,
            message: e.message,
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
