//! roomq, the broker: durable pub/sub rooms with guaranteed, ordered
//! delivery, served over length-prefixed protobuf on TCP, optionally inside
//! TLS, and over WebSocket on the HTTP listener. Usable as a library: build a
//! [`config::Config`], bind a listener, and call [`server::run`] with a
//! shutdown token (or [`server::Server`] to add middleware and the HTTP
//! listener).
//!
//! Layout:
//! - [`server`]: accept loop and lifecycle (start, drain, stop).
//! - [`session`]: one connection: handshake, reader task, writer task.
//! - [`broker`]: the actor that owns rooms, members, timers and dedup; one
//!   file per operation.
//! - [`storage`]: the [`storage::Store`] trait and its sled implementation.
//! - [`config`]: layered configuration and its validation.
//! - [`tls`]: the optional TLS acceptor and the per-connection TLS handshake.
//! - [`transport`]: what a session needs from a transport (frames in, bytes
//!   out); the length-prefixed TCP framing.
//! - [`http`]: the HTTP listener: `/ws`, `/healthz`, `/readyz`, `/metrics`,
//!   the web page.
//! - [`ws`]: the WebSocket transport behind `/ws`.
//! - [`metrics`]: the Prometheus registry behind `/metrics` and `roomq stats`.

pub mod broker;
pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod session;
pub mod storage;
pub mod tenancy;
pub mod tls;
pub mod transport;
pub mod ws;
