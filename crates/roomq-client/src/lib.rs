//! The roomq client SDK: publish to rooms, join them, receive and
//! acknowledge messages — with the broker's guarantees carried through to
//! the application across disconnects and broker restarts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomq_client::ClientError> {
//! use roomq_client::{Client, JoinOptions};
//!
//! let client = Client::builder("127.0.0.1:7420").client_id("bob").connect().await?;
//! let mut general = client.join("general", JoinOptions::new()).await?;
//!
//! let confirmed = client.publish("general", "chat message", "hello").await?;
//! println!("stored as seq {}", confirmed.seq());
//!
//! while let Some(delivery) = general.next().await {
//!     println!("{}: {}", delivery.event, String::from_utf8_lossy(&delivery.payload));
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! - [`Client`] is a cheap, cloneable handle. It reconnects by itself (with
//!   backoff and jitter) and resumes every subscription from its stored
//!   cursor; [`Client::events`] reports what happened.
//! - Every publish carries a dedup id (UUID v7), so the SDK can safely send
//!   it again after a reconnect: the broker stores it once. Many publishes
//!   may be in flight at once (see [`ClientBuilder::publish_window`]); drive
//!   them concurrently, e.g. with `futures::stream::StreamExt::buffer_unordered`.
//! - A [`Subscription`] is a `Stream` of [`Delivery`] values. Durable
//!   subscriptions are *ordered*: the application sees messages in seq
//!   order, never one it has already acknowledged, and never a second copy
//!   of one it still holds. A group's consumers share the work instead
//!   ([`JoinOptions::group`]). [`Delivery::ack`] queues the ack and
//!   returns; the subscription sends the acks of a few ms in one frame
//!   ([`ClientBuilder::ack_flush`]), and `leave`, `close` and
//!   [`Subscription::flush_acks`] send them at once and wait for the
//!   broker. [`Subscription::next_event`] also yields
//!   [`Gap`] notices and [`PresenceChange`]s. A subscription the broker
//!   ends (another session took the durable membership over, or the room
//!   was deleted) ends its stream, says why in [`Subscription::ended`], and
//!   is not joined again on a reconnect.
//!
//! Layout:
//! - [`client`]: `Client`, its builder, publishing, the reconnecting supervisor.
//! - [`subscription`]: `Subscription`, `Delivery`, `JoinOptions`, gap notices.
//! - [`presence`]: who is in a room (`Client::members`, presence changes).
//! - [`filter`]: the ordered-mode state machine (no I/O).
//! - `acks`: how acknowledgements are coalesced into few frames (no I/O).
//! - [`raw`]: the protocol-level connection the SDK is built on.
//! - [`tls`]: TLS options for the connection (trusted roots, server name).
//! - [`transport`]: TCP or WebSocket: `host:port` or `ws://host:port` (and
//!   `wss://`), the same protocol and semantics either way.

mod acks;
pub mod client;
mod error;
pub mod filter;
pub mod presence;
pub mod raw;
pub mod subscription;
pub mod tls;
pub mod transport;

pub use client::{
    Client, ClientBuilder, Confirmation, Event, PublishBuilder, ReconnectPolicy, Stored, Volatile,
    DEFAULT_ACK_FLUSH,
};
pub use error::{ClientError, ErrorDetail};
pub use presence::{Member, Members, PresenceChange, PresenceKind};
pub use raw::{ConnectOptions, Deliveries, Push};
pub use roomq_wire::{pb as proto, ErrorCode};
pub use subscription::{
    Delivery, EndReason, Ended, Gap, JoinOptions, Start, Subscription, SubscriptionEvent,
};
pub use tls::TlsOptions;
/// The rustls this crate uses, for building a [`TlsOptions`] by hand.
pub use tokio_rustls::rustls;
