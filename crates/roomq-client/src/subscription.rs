//! Subscriptions: [`Client::join`] returns a [`Subscription`], a stream of
//! [`Delivery`] values that the application acknowledges one by one.
//!
//! Each subscription owns a [`Filter`] (ordered mode by default for durable
//! members) and a small task that keeps the ack deadline of deliveries the
//! application holds from expiring, up to the client's `max_hold`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use roomq_wire::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::{Client, Event, Inner};
use crate::filter::{Filter, Verdict};
use crate::raw::Connection;
use crate::ClientError;

/// Where a new membership starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Where its stored cursor is (a new member starts at `New`).
    #[default]
    Resume,
    /// Only messages published from now on.
    New,
    /// From the first stored message.
    Earliest,
    /// From this seq.
    Seq(u64),
}

/// How to join a room.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    subscription: Option<String>,
    durable: Option<bool>,
    start: Start,
    max_in_flight: u32,
    ack_timeout: Option<Duration>,
    auto_ack: bool,
    ordered: Option<bool>,
}

impl JoinOptions {
    /// Defaults: durable if the client has a client id (named by it), from
    /// the stored cursor, broker limits, ordered, manual acks.
    pub fn new() -> Self {
        JoinOptions::default()
    }

    /// A durable membership with this name (instead of the client id).
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.subscription = Some(name.into());
        self.durable = Some(true);
        self
    }

    /// An ephemeral membership: no stored cursor; gets what is published
    /// while it is joined (unless `start` says otherwise).
    pub fn ephemeral(mut self) -> Self {
        self.durable = Some(false);
        self
    }

    /// Where to start.
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// At most this many unacknowledged deliveries at a time.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Redeliver a delivery not acknowledged within this time (the SDK keeps
    /// extending it while the application holds it).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Acknowledge each delivery as it is handed over (at-most-once
    /// processing from the application's side).
    pub fn auto_ack(mut self) -> Self {
        self.auto_ack = true;
        self
    }

    /// Ordered mode on or off (default: on for durable, off for ephemeral).
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = Some(ordered);
        self
    }
}

static NEXT_SUB: AtomicU64 = AtomicU64::new(1);

/// What a subscription shares with the supervisor that routes to it.
pub(crate) struct SubShared {
    /// Creation order, so subscriptions resume in the order they joined.
    pub(crate) created: u64,
    room: String,
    label: String,
    join: pb::Join,
    auto_ack: bool,
    filter: Mutex<Filter>,
    tx: Mutex<Option<mpsc::Sender<Delivery>>>,
    closed: CancellationToken,
    inner: std::sync::Weak<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl SubShared {
    /// A delivery arrived on `conn` for this subscription.
    pub(crate) fn offer(self: &Arc<Self>, d: pb::Delivery, conn: &Connection) {
        let Some(m) = d.message else { return };
        let verdict = lock(&self.filter).offer(m.seq, Instant::now());
        match verdict {
            Verdict::Drop => {}
            Verdict::Reack => self.spawn_ack(conn, m.seq),
            Verdict::Hand => {
                if self.auto_ack {
                    lock(&self.filter).acked(m.seq);
                    self.spawn_ack(conn, m.seq);
                }
                let delivery = Delivery {
                    room: d.room,
                    subscription: d.subscription,
                    seq: m.seq,
                    event: m.event,
                    payload: m.payload,
                    headers: m.headers,
                    publisher_session: Uuid::from_slice(&m.publisher_session).ok(),
                    timestamp_ms: m.timestamp_ms,
                    attempt: d.attempt,
                    redelivered: d.redelivered,
                    sub: self.clone(),
                };
                let sent = lock(&self.tx)
                    .as_ref()
                    .map(|tx| tx.try_send(delivery).is_ok());
                if sent != Some(true) {
                    // The application is not reading (or left): let the
                    // broker redeliver it later.
                    lock(&self.filter).released(m.seq);
                }
            }
        }
    }

    fn spawn_ack(&self, conn: &Connection, seq: u64) {
        let (conn, room, label) = (conn.clone(), self.room.clone(), self.label.clone());
        tokio::spawn(async move {
            let _ = conn.ack(&room, &label, &[seq]).await;
        });
    }

    /// Joins again on a new connection, from the stored cursor.
    pub(crate) async fn resume(self: &Arc<Self>, inner: &Inner, conn: &Connection) {
        let mut join = self.join.clone();
        join.start = if join.mode == pb::MemberMode::Ephemeral as i32 {
            pb::StartPosition::New as i32
        } else {
            pb::StartPosition::Resume as i32
        };
        match conn.join_with(join).await {
            Ok(ok) => {
                lock(&self.filter).advance_floor(ok.next_seq);
                inner.emit(Event::Resumed {
                    room: self.room.clone(),
                    subscription: ok.subscription,
                    next_seq: ok.next_seq,
                });
            }
            Err(e) => {
                inner.emit(Event::ResumeFailed {
                    room: self.room.clone(),
                    error: e.to_string(),
                });
                lock(&inner.subs).remove(&(self.room.clone(), self.label.clone()));
                self.close();
            }
        }
    }

    /// Ends the subscription's stream.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        lock(&self.tx).take();
    }

    async fn connection(&self) -> Option<Connection> {
        self.inner.upgrade()?.connection_now()
    }
}

/// A message handed to the application. Acknowledge it with [`ack`]
/// (or give it back with [`nack`]); until then the SDK keeps the broker from
/// redelivering it, up to the client's `max_hold`.
///
/// [`ack`]: Delivery::ack
/// [`nack`]: Delivery::nack
pub struct Delivery {
    pub room: String,
    /// The subscription label it was delivered under ("" for the default).
    pub subscription: String,
    pub seq: u64,
    pub event: String,
    pub payload: Bytes,
    pub headers: BTreeMap<String, String>,
    /// The session that published it.
    pub publisher_session: Option<Uuid>,
    /// When the broker accepted it, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// 1 for the first delivery to this member, then 2, 3, ...
    pub attempt: u32,
    /// The member may have seen it before (a previous connection, or a
    /// previous run of the application).
    pub redelivered: bool,
    sub: Arc<SubShared>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("room", &self.room)
            .field("seq", &self.seq)
            .field("event", &self.event)
            .field("payload_len", &self.payload.len())
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// Acknowledges it: it will not be delivered to this member again. If
    /// the connection is down, the acknowledgement is completed when the
    /// broker redelivers it after the reconnect (the SDK acks it silently).
    pub async fn ack(self) -> Result<(), ClientError> {
        lock(&self.sub.filter).acked(self.seq);
        let Some(conn) = self.sub.connection().await else {
            return Ok(());
        };
        match conn.ack(&self.room, &self.subscription, &[self.seq]).await {
            Ok(next_seq) => {
                lock(&self.sub.filter).advance_floor(next_seq);
                Ok(())
            }
            Err(e) if e.is_connection_loss() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives it back, to be delivered again after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<(), ClientError> {
        lock(&self.sub.filter).released(self.seq);
        let Some(conn) = self.sub.connection().await else {
            return Ok(());
        };
        match conn
            .nack(&self.room, &self.subscription, &[self.seq], delay)
            .await
        {
            Err(e) if !e.is_connection_loss() => Err(e),
            _ => Ok(()),
        }
    }

    /// Tells the broker it is still being worked on (restarts its ack
    /// timer). The SDK does this by itself while the delivery is held; call
    /// it to be explicit.
    pub async fn in_progress(&self) -> Result<(), ClientError> {
        match self.sub.connection().await {
            Some(conn) => {
                conn.in_progress(&self.room, &self.subscription, &[self.seq])
                    .await
            }
            None => Err(ClientError::Closed),
        }
    }
}

/// A membership of a room: a stream of deliveries.
///
/// Dropping it stops routing deliveries to it (a durable membership keeps
/// its cursor; unacknowledged deliveries are redelivered later). Call
/// [`Subscription::leave`] to leave explicitly.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    shared: Arc<SubShared>,
    client: Client,
    joined: pb::JoinOk,
    left: bool,
}

impl Subscription {
    /// The next delivery; `None` once the subscription has ended (left, or
    /// the client closed).
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The room.
    pub fn room(&self) -> &str {
        &self.shared.room
    }

    /// The durable name the membership resolved to ("" if ephemeral).
    pub fn durable_name(&self) -> &str {
        &self.joined.subscription
    }

    /// Whether the membership is durable.
    pub fn is_durable(&self) -> bool {
        self.joined.durable
    }

    /// The first unacknowledged seq when it joined.
    pub fn next_seq_at_join(&self) -> u64 {
        self.joined.next_seq
    }

    /// The room's last stored seq when it joined.
    pub fn last_seq_at_join(&self) -> u64 {
        self.joined.last_seq
    }

    /// Leaves the room; a durable membership keeps its cursor.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        self.leave_inner(false).await
    }

    /// Leaves the room and deletes the durable membership's cursor.
    pub async fn forget(mut self) -> Result<(), ClientError> {
        self.leave_inner(true).await
    }

    async fn leave_inner(&mut self, forget: bool) -> Result<(), ClientError> {
        self.left = true;
        self.unregister();
        let (conn, _) = self.client.inner.connection().await?;
        conn.leave(&self.shared.room, &self.shared.label, forget)
            .await
    }

    fn unregister(&self) {
        lock(&self.client.inner.subs)
            .remove(&(self.shared.room.clone(), self.shared.label.clone()));
        self.shared.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        self.unregister();
        // Best effort: tell the broker, so it stops sending.
        if let (Ok(handle), Some(conn)) = (
            tokio::runtime::Handle::try_current(),
            self.client.inner.connection_now(),
        ) {
            let (room, label) = (self.shared.room.clone(), self.shared.label.clone());
            handle.spawn(async move {
                let _ = conn.leave(&room, &label, false).await;
            });
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// Joins `room` for `client`; see [`Client::join`].
pub(crate) async fn join(
    client: &Client,
    room: &str,
    options: JoinOptions,
) -> Result<Subscription, ClientError> {
    let inner = &client.inner;
    let label = options.subscription.clone().unwrap_or_default();
    let key = (room.to_string(), label.clone());
    let has_name = !label.is_empty() || !inner.settings.connect.client_id.is_empty();
    let durable = options.durable.unwrap_or(has_name);
    let ordered = options.ordered.unwrap_or(durable);
    let mode = match options.durable {
        Some(true) => pb::MemberMode::Durable,
        Some(false) => pb::MemberMode::Ephemeral,
        None => pb::MemberMode::Auto,
    };
    let (start, start_seq) = match options.start {
        Start::Resume => (pb::StartPosition::Resume, 0),
        Start::New => (pb::StartPosition::New, 0),
        Start::Earliest => (pb::StartPosition::Earliest, 0),
        Start::Seq(s) => (pb::StartPosition::Seq, s),
    };
    let request = pb::Join {
        room: room.to_string(),
        subscription: label.clone(),
        mode: mode as i32,
        start: start as i32,
        start_seq,
        max_in_flight: options.max_in_flight,
        ack_timeout_ms: options
            .ack_timeout
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ..Default::default()
    };
    let (conn, _) = inner.connection().await?;
    let broker_max = conn.limits().map_or(1000, |l| l.max_in_flight);
    let in_flight = match options.max_in_flight {
        0 => broker_max,
        n => n.min(broker_max),
    };
    let ack_timeout = options.ack_timeout.unwrap_or_else(|| {
        Duration::from_millis(conn.limits().map_or(30_000, |l| l.ack_timeout_ms))
    });
    let (tx, rx) = mpsc::channel(in_flight as usize + 64);
    let shared = Arc::new(SubShared {
        created: NEXT_SUB.fetch_add(1, Ordering::Relaxed),
        room: room.to_string(),
        label: label.clone(),
        join: request.clone(),
        auto_ack: options.auto_ack,
        filter: Mutex::new(Filter::new(ordered)),
        tx: Mutex::new(Some(tx)),
        closed: CancellationToken::new(),
        inner: Arc::downgrade(inner),
    });
    {
        let mut subs = lock(&inner.subs);
        if subs.contains_key(&key) {
            return Err(ClientError::Protocol(format!(
                "already joined {room:?} as {label:?}"
            )));
        }
        subs.insert(key.clone(), shared.clone());
    }
    let joined = match conn.join_with(request).await {
        Ok(ok) => ok,
        Err(e) => {
            lock(&inner.subs).remove(&key);
            return Err(e);
        }
    };
    lock(&shared.filter).advance_floor(joined.next_seq);
    tokio::spawn(keep_alive(
        shared.clone(),
        ack_timeout,
        inner.settings.max_hold,
    ));
    Ok(Subscription {
        rx,
        shared,
        client: client.clone(),
        joined,
        left: false,
    })
}

/// While the application holds deliveries, tells the broker they are in
/// progress, often enough that their ack timers never run out, until they
/// have been held for `max_hold`.
async fn keep_alive(shared: Arc<SubShared>, ack_timeout: Duration, max_hold: Duration) {
    let every = (ack_timeout / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let held = {
            let mut filter = lock(&shared.filter);
            if let Some(cutoff) = Instant::now().checked_sub(max_hold) {
                filter.expire_held(cutoff);
            }
            filter.held()
        };
        if held.is_empty() {
            continue;
        }
        if let Some(conn) = shared.connection().await {
            for chunk in held.chunks(1000) {
                let _ = conn.in_progress(&shared.room, &shared.label, chunk).await;
            }
        }
    }
}
