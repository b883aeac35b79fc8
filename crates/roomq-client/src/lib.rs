//! placeholder
mod error;
pub mod raw;
pub use error::ClientError;
pub use raw::{ConnectOptions, Deliveries, Push};
pub use roomq_wire::{pb as proto, ErrorCode};
