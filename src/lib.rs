//! roomq, the broker: durable pub/sub rooms with guaranteed, ordered
//! delivery, served over length-prefixed protobuf on TCP, optionally inside
//! TLS. Usable as a library: build a [`config::Config`], bind a listener,
//! and call [`server::run`] with a shutdown token.
//!
//! Layout:
//! - [`server`]: accept loop and lifecycle (start, drain, stop).
//! - [`session`]: one connection: handshake, reader task, writer task.
//! - [`broker`]: the actor that owns rooms, members, timers and dedup; one
//!   file per operation.
//! - [`storage`]: the [`storage::Store`] trait and its sled implementation.
//! - [`config`]: layered configuration and its validation.
//! - [`tls`]: the optional TLS acceptor and the per-connection TLS handshake.

pub mod broker;
pub mod config;
pub mod server;
pub mod session;
pub mod storage;
pub mod tenancy;
pub mod tls;
