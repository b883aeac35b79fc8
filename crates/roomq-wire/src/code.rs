//! Stable error codes. A code's number and name never change once released;
//! new codes are appended. `docs/protocol.md` lists them all.

/// Why a request failed or a connection is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The frame could not be decoded as the expected protobuf message.
    MalformedFrame = 1,
    /// The frame's length prefix exceeds the maximum frame size.
    FrameTooLarge = 2,
    /// A frame other than `Handshake` arrived first. (A second handshake
    /// later is answered with `INVALID_REQUEST`.)
    HandshakeRequired = 3,
    /// No handshake arrived within the handshake deadline.
    HandshakeTimeout = 4,
    /// The handshake asked for a protocol version the broker does not speak.
    UnsupportedVersion = 5,
    /// A namespace, room, event or subscription name is invalid.
    InvalidName = 6,
    /// A request is well-formed protobuf but its fields make no sense.
    InvalidRequest = 7,
    /// Ack, nack or leave for a membership this session does not hold.
    NotJoined = 8,
    /// Ack or nack of a seq that is not delivered and unacknowledged.
    UnknownSeq = 9,
    /// Join of a membership this session already holds.
    AlreadyJoined = 10,
    /// Nothing was received for longer than the idle timeout.
    IdleTimeout = 11,
    /// Reserved: the client does not read its frames. Today such a client is
    /// disconnected without this frame, since its socket would not take it.
    SlowConsumer = 12,
    /// Another session joined the same durable membership; this session no
    /// longer receives its deliveries.
    MembershipTakenOver = 13,
    /// The broker is shutting down.
    ShuttingDown = 14,
    /// The broker could not store the message; nothing was confirmed.
    StorageFailure = 15,
    /// The broker is at its connection limit.
    TooManyConnections = 16,
    /// The credentials were missing or wrong.
    Unauthenticated = 17,
    /// The credentials do not allow this operation.
    PermissionDenied = 18,
    /// A quota of the namespace is exhausted.
    QuotaExceeded = 19,
    /// Reserved. Today a client at its pending-request budget is slowed
    /// (the broker stops reading), not refused.
    TooManyPendingRequests = 20,
    /// Reserved: stored data failed its checksum. Today the broker logs it
    /// and holds the affected member at that message.
    CorruptData = 21,
    /// An unexpected broker-side failure that does not stop the broker.
    Internal = 22,
    /// The message is larger than the broker can deliver within its frame
    /// limit.
    MessageTooLarge = 23,
    /// A publish's `expected_last_seq` did not match the room's last seq.
    PreconditionFailed = 24,
    /// The namespace, room, token or session named does not exist (or, for
    /// a room, was deleted).
    NotFound = 25,
    /// An administrator closed this session.
    Kicked = 26,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::HandshakeRequired,
        ErrorCode::HandshakeTimeout,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidName,
        ErrorCode::InvalidRequest,
        ErrorCode::NotJoined,
        ErrorCode::UnknownSeq,
        ErrorCode::AlreadyJoined,
        ErrorCode::IdleTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::MembershipTakenOver,
        ErrorCode::ShuttingDown,
        ErrorCode::StorageFailure,
        ErrorCode::TooManyConnections,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::QuotaExceeded,
        ErrorCode::TooManyPendingRequests,
        ErrorCode::CorruptData,
        ErrorCode::Internal,
        ErrorCode::MessageTooLarge,
        ErrorCode::PreconditionFailed,
        ErrorCode::NotFound,
        ErrorCode::Kicked,
    ];

    /// The code for a number, if it is one.
    pub fn from_u32(n: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u32 == n)
    }

    /// The stable short name, e.g. `FRAME_TOO_LARGE`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::HandshakeRequired => "HANDSHAKE_REQUIRED",
            ErrorCode::HandshakeTimeout => "HANDSHAKE_TIMEOUT",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::InvalidName => "INVALID_NAME",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::NotJoined => "NOT_JOINED",
            ErrorCode::UnknownSeq => "UNKNOWN_SEQ",
            ErrorCode::AlreadyJoined => "ALREADY_JOINED",
            ErrorCode::IdleTimeout => "IDLE_TIMEOUT",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::MembershipTakenOver => "MEMBERSHIP_TAKEN_OVER",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::StorageFailure => "STORAGE_FAILURE",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::TooManyPendingRequests => "TOO_MANY_PENDING_REQUESTS",
            ErrorCode::CorruptData => "CORRUPT_DATA",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::PreconditionFailed => "PRECONDITION_FAILED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Kicked => "KICKED",
        }
    }

    /// Whether the broker closes the connection after sending this code.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::HandshakeRequired
                | ErrorCode::HandshakeTimeout
                | ErrorCode::UnsupportedVersion
                | ErrorCode::IdleTimeout
                | ErrorCode::SlowConsumer
                | ErrorCode::ShuttingDown
                | ErrorCode::StorageFailure
                | ErrorCode::TooManyConnections
                | ErrorCode::Unauthenticated
                | ErrorCode::TooManyPendingRequests
                | ErrorCode::Kicked
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_unique_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as u32, i as u32 + 1);
            assert_eq!(ErrorCode::from_u32(*code as u32), Some(*code));
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(10_000), None);
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
