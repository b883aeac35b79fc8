//! [`Client`]: the SDK's handle. Cheap to clone; one background task (the
//! supervisor) owns the connection, routes deliveries to subscriptions and
//! reconnects with backoff and jitter when the connection breaks, resuming
//! every subscription from its stored cursor.
//!
//! Publishes do not go through the supervisor: each publish future sends on
//! the current connection and, if that connection breaks before the
//! confirmation, waits for the next one and sends again with the *same*
//! dedup id. The broker answers such a retry with the original seq, so the
//! application sees one confirmation and the room holds one copy.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use roomq_wire::pb;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::presence::Members;
use crate::raw::{ConnectOptions, Connection, Deliveries, Push};
use crate::subscription::{epoch_ms, whole_ms, EndReason, JoinOptions, SubShared, Subscription};
use crate::ClientError;

/// How the client reconnects after losing its connection.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// First delay after a loss.
    pub initial_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Each delay is this fraction longer or shorter, at random, so clients
    /// that lost the broker together do not return together. 0.0 to 1.0.
    pub jitter: f64,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            jitter: 0.3,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: a lost connection closes the client.
    pub fn never() -> Self {
        ReconnectPolicy {
            max_attempts: Some(0),
            ..ReconnectPolicy::default()
        }
    }

    /// The delay before attempt `attempt` (0-based), with jitter from `unit`
    /// (a number in [0, 1)).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

/// The default of [`ClientBuilder::ack_flush`]: short next to any ack
/// timeout, long enough to gather the acks of a busy subscription into
/// one frame.
pub const DEFAULT_ACK_FLUSH: Duration = Duration::from_millis(5);

/// Something that happened to the client's connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is up (the first one, or after a reconnect).
    Connected {
        session_id: Uuid,
        /// The broker had durable memberships for this client id.
        resumed: bool,
        /// False for the first connection.
        reconnected: bool,
    },
    /// The connection was lost.
    Disconnected { reason: String },
    /// Waiting before the next connection attempt.
    Reconnecting { attempt: u32, delay: Duration },
    /// A subscription was joined again on a new connection.
    Resumed {
        room: String,
        subscription: String,
        next_seq: u64,
    },
    /// A subscription could not be joined again and was closed.
    ResumeFailed { room: String, error: String },
    /// The broker pushed an error not tied to a request. Also emitted for
    /// a `MEMBERSHIP_TAKEN_OVER` or deleted-room `NOT_FOUND` that ended a
    /// subscription (see [`Subscription::ended`]), and when the broker
    /// refused a frame of coalesced acks that nobody awaited (see
    /// [`crate::Delivery::ack`]).
    BrokerError {
        code: u32,
        name: String,
        message: String,
    },
    /// The client gave up reconnecting, or was closed.
    Closed,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) connect: ConnectOptions,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) publish_window: usize,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_hold: Duration,
    pub(crate) ack_flush: Duration,
}

impl ClientBuilder {
    /// A builder for a broker at `addr` (host:port).
    pub fn new(addr: impl Into<String>) -> Self {
        ClientBuilder {
            connect: ConnectOptions::new(addr),
            reconnect: ReconnectPolicy::default(),
            publish_window: 1024,
            operation_timeout: Duration::from_secs(60),
            max_hold: Duration::from_secs(300),
            ack_flush: DEFAULT_ACK_FLUSH,
        }
    }

    /// The namespace to connect to (default `/`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.connect.namespace = namespace.into();
        self
    }

    /// The namespace's token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.connect.token = token.into();
        self
    }

    /// The durable identity of this client: it names its durable
    /// memberships, which survive disconnects and restarts.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.connect.client_id = id.into();
        self
    }

    /// A name for logs and presence.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.connect.client_name = name.into();
        self
    }

    /// Connects with TLS; reconnects use it too. See [`crate::TlsOptions`].
    pub fn tls(mut self, tls: crate::TlsOptions) -> Self {
        self.connect.tls = Some(tls);
        self
    }

    /// Time allowed for one connection attempt, handshake included.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect.connect_timeout = timeout;
        self
    }

    /// Longest wait for one operation (publish, join, ...), reconnects
    /// included. Default 60 s.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// How the client reconnects.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Publishes that may await their confirmation at once (default 1024).
    /// Further publishes wait for a slot.
    pub fn publish_window(mut self, window: usize) -> Self {
        self.publish_window = window.max(1);
        self
    }

    /// How long the SDK keeps a delivery the application holds from being
    /// redelivered (by signalling "in progress"). Default 5 minutes.
    pub fn max_hold(mut self, hold: Duration) -> Self {
        self.max_hold = hold;
        self
    }

    /// The longest an acknowledgement waits before it is sent (default
    /// [`DEFAULT_ACK_FLUSH`], 5 ms). [`crate::Delivery::ack`] queues the
    /// ack and returns; each subscription sends the acks of that interval
    /// together, in one frame, or earlier when a quarter of its
    /// `max_in_flight` is waiting. `Duration::ZERO` sends each at once (one
    /// frame per ack, except those that gather while a frame is on its
    /// way).
    pub fn ack_flush(mut self, flush: Duration) -> Self {
        self.ack_flush = flush;
        self
    }

    /// Connects. The first connection must succeed; later losses are
    /// repaired by reconnecting.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let (conn, deliveries) = Connection::connect(self.connect.clone()).await?;
        let (state_tx, _) = watch::channel(Link::Up {
            conn: conn.clone(),
            generation: 1,
        });
        let (events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            window: Arc::new(Semaphore::new(self.publish_window)),
            settings: self,
            link: state_tx,
            subs: Mutex::new(HashMap::new()),
            events,
            closed: CancellationToken::new(),
        });
        let _ = inner.events.send(Event::Connected {
            session_id: conn.session_id(),
            resumed: conn.resumed(),
            reconnected: false,
        });
        tokio::spawn(supervise(inner.clone(), conn, deliveries));
        Ok(Client {
            _alive: Arc::new(inner.closed.clone().drop_guard()),
            inner,
        })
    }
}

/// The state of the client's link to the broker.
#[derive(Clone)]
pub(crate) enum Link {
    Up { conn: Connection, generation: u64 },
    Down { generation: u64 },
    Closed,
}

pub(crate) type SubKey = (String, String);

pub(crate) struct Inner {
    pub(crate) settings: ClientBuilder,
    pub(crate) link: watch::Sender<Link>,
    pub(crate) subs: Mutex<HashMap<SubKey, Arc<SubShared>>>,
    window: Arc<Semaphore>,
    events: broadcast::Sender<Event>,
    closed: CancellationToken,
}

impl Inner {
    /// The current connection, waiting (within the operation timeout) for
    /// one if the link is down.
    pub(crate) async fn connection(&self) -> Result<(Connection, u64), ClientError> {
        let mut rx = self.link.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    Link::Up { conn, generation } => return Ok((conn.clone(), *generation)),
                    Link::Closed => return Err(ClientError::Closed),
                    Link::Down { .. } => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(self.settings.operation_timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// The current connection if the link is up, without waiting.
    pub(crate) fn connection_now(&self) -> Option<Connection> {
        match &*self.link.borrow() {
            Link::Up { conn, .. } => Some(conn.clone()),
            _ => None,
        }
    }

    /// Waits until the link has moved past `generation`.
    async fn next_generation(&self, generation: u64) {
        let mut rx = self.link.subscribe();
        loop {
            let moved = match &*rx.borrow_and_update() {
                Link::Up { generation: g, .. } | Link::Down { generation: g } => *g > generation,
                Link::Closed => true,
            };
            if moved || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Removes `sub` from the subscription table, if it is still the one
    /// registered under `key` (the label may have been joined again since
    /// `sub` ended).
    pub(crate) fn unregister(&self, key: &SubKey, sub: &SubShared) {
        let mut subs = match self.subs.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if subs
            .get(key)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), sub))
        {
            subs.remove(key);
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// A connection to a roomq broker that survives disconnects. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), roomq_client::ClientError> {
/// use roomq_client::{Client, JoinOptions};
/// let client = Client::builder("127.0.0.1:7420").client_id("bob").connect().await?;
/// let mut sub = client.join("general", JoinOptions::default()).await?;
/// client.publish("general", "chat message", "hello").await?;
/// while let Some(delivery) = sub.next().await {
///     println!("{}: {:?}", delivery.event, delivery.payload);
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Closes the client when the last handle (and subscription) is gone.
    _alive: Arc<tokio_util::sync::DropGuard>,
}

impl Client {
    /// A builder for a broker at `addr`.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// Connects with defaults: namespace `/`, no client id.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, ClientError> {
        ClientBuilder::new(addr).connect().await
    }

    /// Connection events (connected, lost, reconnecting, resumed, ...). Each
    /// call gets its own receiver; events before the call are not replayed.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The current session's id, if connected.
    pub fn session_id(&self) -> Option<Uuid> {
        self.inner.connection_now().map(|c| c.session_id())
    }

    /// The broker's version, if connected.
    pub fn server_version(&self) -> Option<String> {
        self.inner
            .connection_now()
            .map(|c| c.server_version().to_string())
    }

    /// Publishes `payload` as `event` to `room`, returning once the broker
    /// has stored it. Retries across reconnects are safe: every publish
    /// carries a dedup id.
    pub async fn publish(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Confirmation, ClientError> {
        self.message(event, payload).to(room).send().await
    }

    /// Starts a publish with more options: several rooms, headers, an
    /// ordering key, a TTL or delay, exclusions, an explicit dedup id, or
    /// a volatile (unstored) send.
    ///
    /// ```no_run
    /// # async fn demo(client: roomq_client::Client) -> Result<(), roomq_client::ClientError> {
    /// client
    ///     .message("chat message", "hi everyone else")
    ///     .to("general")
    ///     .to("lobby")
    ///     .header("lang", "en")
    ///     .except_self()
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn message(&self, event: &str, payload: impl Into<Bytes>) -> PublishBuilder {
        PublishBuilder {
            client: self.clone(),
            publish: pb::Publish {
                event: event.to_string(),
                payload: payload.into(),
                ..Default::default()
            },
            dedup_id: None,
            kind: PhantomData,
        }
    }

    /// Joins `room`. With a client id (or `JoinOptions::durable`) the
    /// membership is durable: it keeps its cursor while the client is away.
    pub async fn join(
        &self,
        room: &str,
        options: JoinOptions,
    ) -> Result<Subscription, ClientError> {
        crate::subscription::join(self, room, options).await
    }

    /// The rooms of this client's namespace.
    pub async fn rooms(&self) -> Result<Vec<pb::RoomInfo>, ClientError> {
        let (conn, _) = self.inner.connection().await?;
        conn.list_rooms().await
    }

    /// Who is in `room` now: one [`crate::Member`] per joined session (per
    /// consumer, for a group). Needs permission to join the room.
    pub async fn members(&self, room: &str) -> Result<Members, ClientError> {
        let (conn, _) = self.inner.connection().await?;
        conn.members(room).await.map(Members::from)
    }

    /// Closes the client: no reconnects, subscriptions end. The
    /// acknowledgements made before are sent first and answered (within
    /// the operation timeout), if the connection is up.
    pub async fn close(&self) {
        let flushes = snapshot(&self.inner)
            .into_iter()
            .map(|sub| async move { sub.flush_acks().await });
        let all = futures::future::join_all(flushes);
        let _ = tokio::time::timeout(self.inner.settings.operation_timeout, all).await;
        self.inner.closed.cancel();
        self.inner.link.send_replace(Link::Closed);
    }

    /// Sends a publish within the publish window. With `retry`, a publish
    /// whose connection broke is sent again on the next one (safe only with
    /// a dedup id).
    async fn send_publish(
        &self,
        publish: pb::Publish,
        retry: bool,
    ) -> Result<pb::PublishOk, ClientError> {
        let _slot = self
            .inner
            .window
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let deadline = tokio::time::Instant::now() + self.inner.settings.operation_timeout;
        loop {
            let (conn, generation) = self.inner.connection().await?;
            let sent = tokio::time::timeout_at(deadline, conn.publish_with(publish.clone())).await;
            match sent {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Ok(ok)) => return Ok(ok),
                Ok(Err(e)) if retry && e.is_connection_loss() => {
                    // Same dedup id on the next connection: stored once.
                    let wait = self.inner.next_generation(generation);
                    if tokio::time::timeout_at(deadline, wait).await.is_err() {
                        return Err(ClientError::Timeout);
                    }
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// Marks a [`PublishBuilder`] for a stored message (the default): it gets a
/// seq in each room and a [`Confirmation`].
#[derive(Debug, Clone, Copy)]
pub struct Stored;

/// Marks a [`PublishBuilder`] for a volatile message (see
/// [`PublishBuilder::volatile`]): not stored, no seq, no confirmation.
#[derive(Debug, Clone, Copy)]
pub struct Volatile;

/// A publish being built; see [`Client::message`]. `K` is [`Stored`] until
/// [`PublishBuilder::volatile`] makes it [`Volatile`]; the options that
/// only make sense for a stored message (TTL, delay, dedup id, ...) exist
/// only on the stored kind.
pub struct PublishBuilder<K = Stored> {
    client: Client,
    publish: pb::Publish,
    dedup_id: Option<Uuid>,
    kind: PhantomData<K>,
}

impl<K> PublishBuilder<K> {
    /// Adds a room (a message may go to several). The message is stored
    /// once in each, but a session that is a member of several of them
    /// gets it once: in the first room listed that it is a member of.
    pub fn to(mut self, room: &str) -> Self {
        self.publish.rooms.push(room.to_string());
        self
    }

    /// The ordering key: within a group (see [`JoinOptions::group`]),
    /// messages with the same key go to the same consumer, in order. At
    /// most 255 bytes.
    pub fn key(mut self, key: &str) -> Self {
        self.publish.key = key.to_string();
        self
    }

    /// Not to sessions that are members of `room` (Socket.IO's
    /// `except(room)`), decided at delivery. Repeatable.
    pub fn except_room(mut self, room: &str) -> Self {
        self.publish.except_rooms.push(room.to_string());
        self
    }

    /// Not to the session `session` (e.g. a [`crate::Member`]'s
    /// `session_id`). Repeatable.
    pub fn except_session(mut self, session: Uuid) -> Self {
        self.publish
            .except_sessions
            .push(Bytes::copy_from_slice(session.as_bytes()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.publish
            .headers
            .insert(name.to_string(), value.to_string());
        self
    }

    /// Not to this client's own session or durable memberships
    /// (Socket.IO's `socket.broadcast.to(room).emit`).
    pub fn except_self(mut self) -> Self {
        self.publish.except_self = true;
        self
    }
}

impl PublishBuilder<Stored> {
    /// Stores the message only if the room's last seq is `seq` (0: the room
    /// is empty); otherwise the publish fails with `PRECONDITION_FAILED`.
    /// Optimistic concurrency for a single room.
    pub fn expect_last_seq(mut self, seq: u64) -> Self {
        self.publish.expected_last_seq = Some(seq);
        self
    }

    /// Uses this dedup id instead of a fresh UUID v7: a publish sent again
    /// with the same id within the broker's dedup window is stored once.
    pub fn dedup_id(mut self, id: Uuid) -> Self {
        self.dedup_id = Some(id);
        self
    }

    /// Not delivered (first or again) once `ttl` has passed since the
    /// broker accepted it. Sent in whole ms, rounded up; `Duration::ZERO`
    /// means it never expires (the default).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let ms = whole_ms(ttl);
        self.publish.ttl_ms = if Duration::from_millis(ms) < ttl {
            ms.saturating_add(1)
        } else {
            ms
        };
        self
    }

    /// Not delivered before `delay` has passed since the broker accepted
    /// it (whole ms). Replaces an earlier [`PublishBuilder::deliver_at`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.publish.delay_ms = whole_ms(delay);
        self.publish.deliver_at_ms = 0;
        self
    }

    /// Not delivered before `at` (the broker's clock decides). Replaces an
    /// earlier [`PublishBuilder::delay`]. The broker refuses times too far
    /// ahead.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.publish.deliver_at_ms = epoch_ms(at);
        self.publish.delay_ms = 0;
        self
    }

    /// Makes it volatile (Socket.IO's `volatile.emit`): not stored, no seq,
    /// delivered only to the members joined now whose queues have room, and
    /// never redelivered. Its `send` returns once the broker has taken it,
    /// with no confirmation to speak of, and is not retried if the
    /// connection breaks. Set no TTL, delay, deliver-at, dedup id or
    /// expected seq before this: the broker refuses them with a volatile
    /// message.
    pub fn volatile(self) -> PublishBuilder<Volatile> {
        PublishBuilder {
            client: self.client,
            publish: self.publish,
            dedup_id: self.dedup_id,
            kind: PhantomData,
        }
    }

    /// Sends and waits for the confirmation.
    pub async fn send(self) -> Result<Confirmation, ClientError> {
        let mut publish = self.publish;
        let id = self.dedup_id.unwrap_or_else(Uuid::now_v7);
        publish.dedup_id = Bytes::copy_from_slice(id.as_bytes());
        let ok = self.client.send_publish(publish, true).await?;
        Ok(Confirmation {
            seqs: ok.seqs.into_iter().map(|s| (s.room, s.seq)).collect(),
            duplicate: ok.duplicate,
            durable_on_disk: ok.durability == pb::Durability::Sync as i32,
            dedup_id: id,
        })
    }
}

impl PublishBuilder<Volatile> {
    /// Sends it and waits for the broker to take it. `Ok` promises nothing
    /// about delivery: the message was not stored, and members whose
    /// queues were full did not get it. Not retried after a connection
    /// loss (without a dedup id a retry could deliver it twice).
    pub async fn send(self) -> Result<(), ClientError> {
        let mut publish = self.publish;
        publish.volatile = true;
        if let Some(id) = self.dedup_id {
            // Refused by the broker; sent so that it says so.
            publish.dedup_id = Bytes::copy_from_slice(id.as_bytes());
        }
        let ok = self.client.send_publish(publish, false).await?;
        check_volatile_reply(&ok)
    }
}

/// A volatile publish must come back with no seqs and VOLATILE durability;
/// anything else means the broker stored it (a broker that does not know
/// volatile publishes).
fn check_volatile_reply(ok: &pb::PublishOk) -> Result<(), ClientError> {
    if ok.seqs.is_empty() && ok.durability == pb::Durability::Volatile as i32 {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "a volatile publish was answered as stored ({} seqs, durability {}): \
             the broker does not support volatile publishes",
            ok.seqs.len(),
            ok.durability
        )))
    }
}

/// The broker's confirmation of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// (room, seq) per room, in the order the rooms were given.
    pub seqs: Vec<(String, u64)>,
    /// The dedup id had been seen: these are the original seqs.
    pub duplicate: bool,
    /// The message was on disk when confirmed (`sync` durability).
    pub durable_on_disk: bool,
    /// The dedup id the publish carried.
    pub dedup_id: Uuid,
}

impl Confirmation {
    /// The seq in the first (or only) room.
    pub fn seq(&self) -> u64 {
        self.seqs.first().map_or(0, |(_, s)| *s)
    }
}

/// A number in [0, 1) from the system's randomness, for jitter.
fn unit_random() -> f64 {
    let bits = (Uuid::new_v4().as_u128() >> 75) as u64; // 53 random bits
    bits as f64 / (1u64 << 53) as f64
}

/// Owns the connection: routes deliveries, reconnects, resumes.
async fn supervise(inner: Arc<Inner>, first: Connection, first_deliveries: Deliveries) {
    let mut conn = first;
    let mut deliveries = first_deliveries;
    let mut generation = 1;
    loop {
        let reason = route(&inner, &conn, &mut deliveries).await;
        drop(conn);
        if inner.closed.is_cancelled() {
            break;
        }
        generation += 1;
        inner.link.send_replace(Link::Down { generation });
        inner.emit(Event::Disconnected { reason });
        match reconnect(&inner).await {
            Some((c, d)) => {
                conn = c;
                deliveries = d;
            }
            None => break,
        }
        generation += 1;
        // Resume subscriptions while deliveries are already being routed, so
        // a full delivery queue can never hold up a join reply.
        let (resumed_tx, resumed_rx) = tokio::sync::oneshot::channel();
        let resume_inner = inner.clone();
        let resume_conn = conn.clone();
        tokio::spawn(async move {
            for sub in snapshot(&resume_inner) {
                sub.resume(&resume_inner, &resume_conn).await;
            }
            let _ = resumed_tx.send(());
        });
        let up = Link::Up {
            conn: conn.clone(),
            generation,
        };
        inner.emit(Event::Connected {
            session_id: conn.session_id(),
            resumed: conn.resumed(),
            reconnected: true,
        });
        let resumed = async {
            let _ = resumed_rx.await;
        };
        // Publishes wait until the subscriptions are back, so that a
        // client's own messages are not published into a gap it cannot see.
        let mut resumed = std::pin::pin!(resumed);
        loop {
            tokio::select! {
                _ = &mut resumed => break,
                push = deliveries.next_push() => match push {
                    Some(p) => dispatch(&inner, &conn, p),
                    None => break,
                },
            }
        }
        inner.link.send_replace(up);
    }
    inner.link.send_replace(Link::Closed);
    for sub in snapshot(&inner) {
        sub.close();
    }
    inner.emit(Event::Closed);
}

fn snapshot(inner: &Inner) -> Vec<Arc<SubShared>> {
    let subs = match inner.subs.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut all: Vec<_> = subs.values().cloned().collect();
    all.sort_by_key(|s| s.created);
    all
}

/// Routes pushes until the connection closes; returns why it closed.
async fn route(inner: &Arc<Inner>, conn: &Connection, deliveries: &mut Deliveries) -> String {
    let mut reason = "connection closed".to_string();
    loop {
        let push = tokio::select! {
            _ = inner.closed.cancelled() => return "client closed".into(),
            p = deliveries.next_push() => p,
        };
        match push {
            Some(Push::Error(e)) if e.fatal => {
                reason = format!("{}: {}", e.name, e.message);
                dispatch(inner, conn, Push::Error(e));
            }
            Some(p) => dispatch(inner, conn, p),
            None => return reason,
        }
    }
}

fn dispatch(inner: &Arc<Inner>, conn: &Connection, push: Push) {
    match push {
        Push::Delivery(d) => {
            let sub = find_sub(inner, &d.room, &d.subscription);
            // Without a subscription (left or dropped) there is nothing to
            // do: the broker redelivers to the membership's next holder.
            if let Some(sub) = sub {
                sub.offer(d, conn);
            }
        }
        Push::Error(e) => {
            // A membership-scoped error ends that membership here: it must
            // not be joined again on a reconnect (which would take a durable
            // membership back from the session that took it over).
            let reason = (!e.fatal && !e.room.is_empty())
                .then(|| EndReason::from_code(e.code))
                .flatten();
            if let Some(reason) = reason {
                if let Some(sub) = find_sub(inner, &e.room, &e.subscription) {
                    sub.end(inner, reason, ClientError::from_wire(e.clone()));
                }
            }
            inner.emit(Event::BrokerError {
                code: e.code,
                name: e.name,
                message: e.message,
            });
        }
        Push::Gap(g) => {
            if let Some(sub) = find_sub(inner, &g.room, &g.subscription) {
                sub.gap(g);
            }
        }
        Push::Presence(p) => {
            if let Some(sub) = find_sub(inner, &p.room, &p.subscription) {
                sub.presence(p);
            }
        }
    }
}

/// The subscription a push names, by room and subscription label.
fn find_sub(inner: &Inner, room: &str, label: &str) -> Option<Arc<SubShared>> {
    let key = (room.to_string(), label.to_string());
    match inner.subs.lock() {
        Ok(s) => s.get(&key).cloned(),
        Err(poisoned) => poisoned.into_inner().get(&key).cloned(),
    }
}

/// Connects again with backoff and jitter; `None` if the client was closed
/// or the policy gave up.
async fn reconnect(inner: &Arc<Inner>) -> Option<(Connection, Deliveries)> {
    let policy = inner.settings.reconnect.clone();
    let mut attempt = 0u32;
    loop {
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let delay = policy.delay(attempt, unit_random());
        inner.emit(Event::Reconnecting {
            attempt: attempt + 1,
            delay,
        });
        tokio::select! {
            _ = inner.closed.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match Connection::connect(inner.settings.connect.clone()).await {
            Ok(pair) => return Some(pair),
            Err(e) => {
                tracing::debug!(error = %e, attempt, "reconnect failed");
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose link is closed: enough to build requests.
    fn offline() -> Client {
        let (link, _) = watch::channel(Link::Closed);
        let (events, _) = broadcast::channel(1);
        let inner = Arc::new(Inner {
            window: Arc::new(Semaphore::new(1)),
            settings: ClientBuilder::new("127.0.0.1:1"),
            link,
            subs: Mutex::new(HashMap::new()),
            events,
            closed: CancellationToken::new(),
        });
        Client {
            _alive: Arc::new(inner.closed.clone().drop_guard()),
            inner,
        }
    }

    #[test]
    fn publish_options_map_onto_the_request() {
        let session = Uuid::now_v7();
        let b = offline()
            .message("order.created", "{}")
            .to("orders")
            .to("audit")
            .key("customer-7")
            .ttl(Duration::from_micros(1500))
            .delay(Duration::from_secs(2))
            .except_room("muted")
            .except_room("banned")
            .except_session(session);
        let p = &b.publish;
        assert_eq!(p.rooms, vec!["orders", "audit"]);
        assert_eq!(p.key, "customer-7");
        // Rounded up: a TTL below a millisecond must not mean "never".
        assert_eq!(p.ttl_ms, 2);
        assert_eq!(p.delay_ms, 2000);
        assert_eq!(p.except_rooms, vec!["muted", "banned"]);
        assert_eq!(p.except_sessions, vec![session.as_bytes().to_vec()]);
        assert!(!p.volatile);

        // deliver_at and delay exclude each other: the later call wins.
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let b = b.deliver_at(at);
        assert_eq!(
            (b.publish.deliver_at_ms, b.publish.delay_ms),
            (1_800_000_000_000, 0)
        );
        let b = b.delay(Duration::from_millis(5));
        assert_eq!((b.publish.deliver_at_ms, b.publish.delay_ms), (0, 5));
        let b = b.ttl(Duration::ZERO);
        assert_eq!(b.publish.ttl_ms, 0);
    }

    #[test]
    fn volatile_keeps_the_common_options() {
        let v = offline()
            .message("typing", "")
            .to("general")
            .volatile()
            .except_self()
            .key("k");
        assert_eq!(v.publish.rooms, vec!["general"]);
        assert!(v.publish.except_self);
        assert_eq!(v.publish.key, "k");
        assert!(v.dedup_id.is_none(), "no automatic dedup id");
    }

    #[test]
    fn a_volatile_publish_answered_as_stored_is_an_error() {
        let volatile = pb::PublishOk {
            seqs: vec![],
            duplicate: false,
            durability: pb::Durability::Volatile as i32,
        };
        assert!(check_volatile_reply(&volatile).is_ok());
        let stored = pb::PublishOk {
            seqs: vec![pb::RoomSeq {
                room: "general".into(),
                seq: 3,
            }],
            duplicate: false,
            durability: pb::Durability::Sync as i32,
        };
        assert!(matches!(
            check_volatile_reply(&stored),
            Err(ClientError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn a_volatile_send_on_a_closed_client_fails_without_retrying() {
        let err = offline()
            .message("typing", "")
            .to("general")
            .volatile()
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err}");
    }
}
