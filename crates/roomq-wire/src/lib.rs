//! The roomq wire protocol: the protobuf messages generated from
//! `proto/roomq.proto`, the length-prefixed frame codec, and the stable error
//! codes. Both the broker and the client depend on this crate; it depends on
//! neither.
//!
//! Layout:
//! - [`pb`]: generated protobuf types (`ClientFrame`, `ServerFrame`, ...).
//! - [`codec`]: [`FrameCodec`], a `tokio_util` codec that checks a frame's
//!   length against the limit before reserving memory, then decodes.
//! - [`code`]: [`ErrorCode`], the numbered error codes.
//! - [`names`]: validation of namespace, room and event names.

pub mod code;
pub mod codec;
pub mod names;

/// Generated protobuf types for `roomq.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/roomq.v1.rs"));
}

pub use code::ErrorCode;
pub use codec::{FrameCodec, FrameError};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum frame size (length prefix excluded): 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Room for the delivery fields around a stored message: a publish whose
/// message would leave less than this below the frame limit is refused, so
/// every stored message can be delivered within the limit.
pub const DELIVERY_OVERHEAD: usize = 1024;

/// Length of the frame's big-endian length prefix.
pub const LENGTH_PREFIX: usize = 4;

impl pb::Error {
    /// An error frame body for `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        pb::Error {
            code: code as u32,
            name: code.name().to_string(),
            message: message.into(),
            fatal: code.is_fatal(),
            ..Default::default()
        }
    }

    /// Names the membership the error is about (its room, and its
    /// subscription handle as the client sent it).
    pub fn for_membership(mut self, room: &str, subscription: &str) -> Self {
        self.room = room.to_string();
        self.subscription = subscription.to_string();
        self
    }

    /// Names the quota a `QUOTA_EXCEEDED` is about.
    pub fn with_quota(mut self, quota: &str) -> Self {
        self.quota = quota.to_string();
        self
    }

    /// The room's last seq, for `PRECONDITION_FAILED`.
    pub fn with_last_seq(mut self, last_seq: u64) -> Self {
        self.last_seq = Some(last_seq);
        self
    }

    /// The error code, if the broker sent one this crate knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.code)
    }
}
