//! The protocol-level connection: one TCP (or TLS) connection, requests
//! pipelined by request id, pushed deliveries handed to a [`Deliveries`]
//! receiver. No reconnection, no ordering help: exactly what the broker
//! says. The [`crate::Client`] SDK is built on it; tests and the load
//! generator use it directly.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomq_client::ClientError> {
//! use roomq_client::raw::{Connection, ConnectOptions};
//! let (conn, mut deliveries) = Connection::connect(ConnectOptions::new("127.0.0.1:7420")).await?;
//! conn.join("general").await?;
//! conn.publish("general", "chat message", "hello").await?;
//! if let Some(d) = deliveries.next_delivery().await {
//!     let seq = d.message.as_ref().map_or(0, |m| m.seq);
//!     conn.ack(&d.room, &d.subscription, &[seq]).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use roomq_wire::codec::{decode_server, encode_frame};
use roomq_wire::{pb, FrameError, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};

use crate::transport::{FrameStream, FrameWriter};
use crate::{ClientError, TlsOptions};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` for TCP (TLS if [`ConnectOptions::tls`] is set), or
    /// `ws://host:port[/path]` / `wss://...` for the broker's WebSocket
    /// endpoint (the path defaults to `/ws`; `wss` needs TLS options).
    pub addr: String,
    pub namespace: String,
    pub token: String,
    pub client_id: String,
    pub client_name: String,
    pub max_frame: usize,
    pub connect_timeout: Duration,
    /// Deliveries buffered before the client stops reading the socket.
    pub delivery_buffer: usize,
    /// TLS, if the broker serves it (default: plain TCP).
    pub tls: Option<TlsOptions>,
}

impl ConnectOptions {
    /// Defaults for `addr`: namespace `/`, no client id.
    pub fn new(addr: impl Into<String>) -> Self {
        ConnectOptions {
            addr: addr.into(),
            namespace: "/".into(),
            token: String::new(),
            client_id: String::new(),
            client_name: String::new(),
            // Deliveries may carry a little more than a publish's bytes.
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(10),
            delivery_buffer: 4096,
            tls: None,
        }
    }

    /// Connects with TLS.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Sets the durable client id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets the client name shown in logs.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets the namespace's token (an admin token for `/admin`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
}

/// Something the broker pushed without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Delivery(pb::Delivery),
    Error(pb::Error),
    /// A membership's cursor was moved past messages it never got.
    Gap(pb::Gap),
    /// Someone joined or left a room whose membership asked for presence.
    Presence(pb::PresenceEvent),
}

/// What the broker pushes to one connection: deliveries, unsolicited
/// errors, gap notices and presence events.
pub struct Deliveries {
    rx: mpsc::Receiver<Push>,
}

impl Deliveries {
    /// The next push; `None` once the connection is closed.
    pub async fn next_push(&mut self) -> Option<Push> {
        self.rx.recv().await
    }

    /// The next delivery, skipping the other pushes (errors, gaps,
    /// presence); `None` once closed.
    pub async fn next_delivery(&mut self) -> Option<pb::Delivery> {
        loop {
            match self.rx.recv().await? {
                Push::Delivery(d) => return Some(d),
                Push::Error(_) | Push::Gap(_) | Push::Presence(_) => continue,
            }
        }
    }

    /// A delivery that is already buffered, without waiting.
    pub fn try_next_push(&mut self) -> Option<Push> {
        self.rx.try_recv().ok()
    }
}

type Waiter = oneshot::Sender<Result<pb::server_frame::Body, ClientError>>;

struct Shared {
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

/// A connection to a broker. Cheap to clone; requests from clones are
/// pipelined on the same connection.
#[derive(Clone)]
pub struct Connection {
    out: mpsc::Sender<pb::ClientFrame>,
    shared: Arc<Shared>,
    hello: Arc<pb::HandshakeOk>,
}

impl Connection {
    /// Connects and performs the handshake (the TLS one or the WebSocket
    /// upgrade first, if the address or options ask for one).
    pub async fn connect(opts: ConnectOptions) -> Result<(Connection, Deliveries), ClientError> {
        let (frames, writer) = crate::transport::open(&opts).await?;
        Connection::start(frames, writer, opts).await
    }

    /// Performs the roomq handshake on an open transport and starts the
    /// reader and writer tasks.
    async fn start(
        mut frames: FrameStream,
        mut writer: FrameWriter,
        opts: ConnectOptions,
    ) -> Result<(Connection, Deliveries), ClientError> {
        let hello = pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Handshake(pb::Handshake {
                protocol_version: PROTOCOL_VERSION,
                namespace: opts.namespace.clone(),
                token: opts.token.clone(),
                client_id: opts.client_id.clone(),
                client_name: opts.client_name.clone(),
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&hello, opts.max_frame, &mut buf)?;
        writer.write_batch(&mut buf).await?;
        let reply = tokio::time::timeout(opts.connect_timeout, frames.next())
            .await
            .map_err(|_| ClientError::Timeout)?
            .ok_or(ClientError::Closed)?
            .map_err(|e| match e {
                // A TLS record (an alert or a handshake message, version
                // 3.x) read as a length: the broker expects TLS.
                FrameError::TooLarge { len, .. } if matches!(len >> 16, 0x1503 | 0x1603) => {
                    ClientError::Tls("the broker answered with TLS; connect with TLS".into())
                }
                e => ClientError::Frame(e),
            })?;
        let hello = match decode_server(reply)?.body {
            Some(pb::server_frame::Body::HandshakeOk(ok)) => ok,
            Some(pb::server_frame::Body::Error(e)) => return Err(ClientError::from_wire(e)),
            _ => return Err(ClientError::Protocol("unexpected handshake reply".into())),
        };

        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(2),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let (out_tx, out_rx) = mpsc::channel(1024);
        let (push_tx, push_rx) = mpsc::channel(opts.delivery_buffer.max(1));
        tokio::spawn(write_loop(writer, out_rx, opts.max_frame));
        tokio::spawn(read_loop(frames, shared.clone(), push_tx));
        Ok((
            Connection {
                out: out_tx,
                shared,
                hello: Arc::new(hello),
            },
            Deliveries { rx: push_rx },
        ))
    }

    /// This session's id.
    pub fn session_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_slice(&self.hello.session_id).unwrap_or_default()
    }

    /// Whether the broker had durable memberships for this client id.
    pub fn resumed(&self) -> bool {
        self.hello.resumed
    }

    /// The broker's version, from its handshake reply.
    pub fn server_version(&self) -> &str {
        &self.hello.server_version
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The limits the broker announced.
    pub fn limits(&self) -> Option<&pb::Limits> {
        self.hello.limits.as_ref()
    }

    /// Sends one request and waits for its reply.
    pub async fn request(
        &self,
        body: pb::client_frame::Body,
    ) -> Result<pb::server_frame::Body, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .map_err(|_| ClientError::Closed)?;
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(ClientError::Closed);
            }
            pending.insert(id, tx);
        }
        let frame = pb::ClientFrame {
            request_id: id,
            body: Some(body),
        };
        if self.out.send(frame).await.is_err() {
            if let Ok(mut p) = self.shared.pending.lock() {
                p.remove(&id);
            }
            return Err(ClientError::Closed);
        }
        match rx.await {
            Ok(Ok(pb::server_frame::Body::Error(e))) => Err(ClientError::from_wire(e)),
            Ok(r) => r,
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Publishes `payload` as `event` to one room; returns its seq once the
    /// broker has stored it.
    pub async fn publish(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let ok = self
            .publish_with(pb::Publish {
                rooms: vec![room.to_string()],
                event: event.to_string(),
                payload: payload.into(),
                dedup_id: Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes()),
                ..Default::default()
            })
            .await?;
        ok.seqs
            .first()
            .map(|s| s.seq)
            .ok_or_else(|| ClientError::Protocol("publish confirmed without a seq".into()))
    }

    /// Publishes with every option of the protocol.
    pub async fn publish_with(&self, p: pb::Publish) -> Result<pb::PublishOk, ClientError> {
        match self.request(pb::client_frame::Body::Publish(p)).await? {
            pb::server_frame::Body::PublishOk(ok) => Ok(ok),
            other => Err(unexpected(other)),
        }
    }

    /// Joins `room` with the defaults: durable if the client has an id,
    /// resuming where it was.
    pub async fn join(&self, room: &str) -> Result<pb::JoinOk, ClientError> {
        self.join_with(pb::Join {
            room: room.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Joins with every option of the protocol.
    pub async fn join_with(&self, j: pb::Join) -> Result<pb::JoinOk, ClientError> {
        match self.request(pb::client_frame::Body::Join(j)).await? {
            pb::server_frame::Body::JoinOk(ok) => Ok(ok),
            other => Err(unexpected(other)),
        }
    }

    /// Leaves a room (keeping a durable cursor unless `forget`).
    pub async fn leave(
        &self,
        room: &str,
        subscription: &str,
        forget: bool,
    ) -> Result<(), ClientError> {
        let l = pb::Leave {
            room: room.to_string(),
            subscription: subscription.to_string(),
            forget,
        };
        match self.request(pb::client_frame::Body::Leave(l)).await? {
            pb::server_frame::Body::LeaveOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Acknowledges individual seqs; returns the member's new cursor.
    pub async fn ack(
        &self,
        room: &str,
        subscription: &str,
        seqs: &[u64],
    ) -> Result<u64, ClientError> {
        self.ack_with(room, subscription, seqs, 0).await
    }

    /// Acknowledges every delivered seq up to `up_to`.
    pub async fn ack_up_to(
        &self,
        room: &str,
        subscription: &str,
        up_to: u64,
    ) -> Result<u64, ClientError> {
        self.ack_with(room, subscription, &[], up_to).await
    }

    /// Acknowledges `seqs` and, cumulatively, every delivered seq up to
    /// `up_to` (0 = none), in one frame; returns the member's new cursor.
    pub async fn ack_with(
        &self,
        room: &str,
        subscription: &str,
        seqs: &[u64],
        up_to: u64,
    ) -> Result<u64, ClientError> {
        let a = pb::Ack {
            room: room.to_string(),
            subscription: subscription.to_string(),
            seqs: seqs.to_vec(),
            up_to,
        };
        match self.request(pb::client_frame::Body::Ack(a)).await? {
            pb::server_frame::Body::AckOk(ok) => Ok(ok.next_seq),
            other => Err(unexpected(other)),
        }
    }

    /// Hands deliveries back for redelivery after `delay`.
    pub async fn nack(
        &self,
        room: &str,
        subscription: &str,
        seqs: &[u64],
        delay: Duration,
    ) -> Result<(), ClientError> {
        self.nack_with_reason(room, subscription, seqs, delay, "")
            .await
    }

    /// Hands deliveries back for redelivery after `delay`, saying why. If
    /// one of them ends in the dead-letter room, `reason` is kept there as
    /// its `roomq-dead-reason` header (at most 255 bytes).
    pub async fn nack_with_reason(
        &self,
        room: &str,
        subscription: &str,
        seqs: &[u64],
        delay: Duration,
        reason: &str,
    ) -> Result<(), ClientError> {
        let n = pb::Nack {
            room: room.to_string(),
            subscription: subscription.to_string(),
            seqs: seqs.to_vec(),
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            reason: reason.to_string(),
        };
        match self.request(pb::client_frame::Body::Nack(n)).await? {
            pb::server_frame::Body::NackOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Restarts the ack timers of deliveries the application still holds.
    pub async fn in_progress(
        &self,
        room: &str,
        subscription: &str,
        seqs: &[u64],
    ) -> Result<(), ClientError> {
        let p = pb::InProgress {
            room: room.to_string(),
            subscription: subscription.to_string(),
            seqs: seqs.to_vec(),
        };
        match self.request(pb::client_frame::Body::InProgress(p)).await? {
            pb::server_frame::Body::InProgressOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The rooms of this session's namespace.
    pub async fn list_rooms(&self) -> Result<Vec<pb::RoomInfo>, ClientError> {
        match self
            .request(pb::client_frame::Body::ListRooms(pb::ListRooms {}))
            .await?
        {
            pb::server_frame::Body::ListRoomsOk(ok) => Ok(ok.rooms),
            other => Err(unexpected(other)),
        }
    }

    /// Who is in `room` now: one entry per joined session (per consumer of
    /// a group). `truncated` says more exist than fit in one reply.
    pub async fn members(&self, room: &str) -> Result<pb::MembersOk, ClientError> {
        let m = pb::Members {
            room: room.to_string(),
        };
        match self.request(pb::client_frame::Body::Members(m)).await? {
            pb::server_frame::Body::MembersOk(ok) => Ok(ok),
            other => Err(unexpected(other)),
        }
    }

    /// An administration request (the session must be in `/admin`).
    pub async fn admin(&self, op: pb::admin::Op) -> Result<pb::AdminOk, ClientError> {
        match self
            .request(pb::client_frame::Body::Admin(pb::Admin { op: Some(op) }))
            .await?
        {
            pb::server_frame::Body::AdminOk(ok) => Ok(ok),
            other => Err(unexpected(other)),
        }
    }

    /// Round trip to the broker.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self
            .request(pb::client_frame::Body::Ping(pb::Ping { nonce: 7 }))
            .await?
        {
            pb::server_frame::Body::Pong(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(body: pb::server_frame::Body) -> ClientError {
    ClientError::Protocol(format!("unexpected reply: {body:?}"))
}

async fn write_loop(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<pb::ClientFrame>,
    max_frame: usize,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next.take() {
            if encode_frame(&f, max_frame, &mut buf).is_err() {
                tracing::warn!("request larger than the frame limit not sent");
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if writer.write_batch(&mut buf).await.is_err() {
            return;
        }
    }
    writer.close().await;
}

async fn read_loop(mut frames: FrameStream, shared: Arc<Shared>, pushes: mpsc::Sender<Push>) {
    while let Some(Ok(raw)) = frames.next().await {
        let Ok(frame) = decode_server(raw) else {
            break;
        };
        let Some(body) = frame.body else { continue };
        if frame.request_id == 0 {
            let push = match body {
                pb::server_frame::Body::Delivery(d) => Push::Delivery(d),
                pb::server_frame::Body::Error(e) => Push::Error(e),
                pb::server_frame::Body::Gap(g) => Push::Gap(*g),
                pb::server_frame::Body::Presence(p) => Push::Presence(*p),
                _ => continue,
            };
            if pushes.send(push).await.is_err() {
                // Nobody reads deliveries; keep serving replies.
                continue;
            }
            continue;
        }
        let waiter = shared
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&frame.request_id));
        if let Some(w) = waiter {
            let _ = w.send(Ok(body));
        }
    }
    shared.closed.store(true, Ordering::SeqCst);
    if let Ok(mut p) = shared.pending.lock() {
        for (_, w) in p.drain() {
            let _ = w.send(Err(ClientError::Closed));
        }
    }
}
