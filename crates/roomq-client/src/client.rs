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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use roomq_wire::pb;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::raw::{ConnectOptions, Connection, Deliveries, Push};
use crate::subscription::{JoinOptions, SubShared, Subscription};
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
    /// The broker pushed an error not tied to a request.
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

    /// Starts a publish with more options: several rooms, headers,
    /// `except_self`, an explicit dedup id.
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

    /// Closes the client: no reconnects, subscriptions end.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        self.inner.link.send_replace(Link::Closed);
    }

    async fn send_publish(&self, publish: pb::Publish) -> Result<pb::PublishOk, ClientError> {
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
                Ok(Err(e)) if e.is_connection_loss() => {
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

/// A publish being built; see [`Client::message`].
pub struct PublishBuilder {
    client: Client,
    publish: pb::Publish,
    dedup_id: Option<Uuid>,
}

impl PublishBuilder {
    /// Adds a room (a message may go to several).
    pub fn to(mut self, room: &str) -> Self {
        self.publish.rooms.push(room.to_string());
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

    /// Sends and waits for the confirmation.
    pub async fn send(self) -> Result<Confirmation, ClientError> {
        let mut publish = self.publish;
        let id = self.dedup_id.unwrap_or_else(Uuid::now_v7);
        publish.dedup_id = Bytes::copy_from_slice(id.as_bytes());
        let ok = self.client.send_publish(publish).await?;
        Ok(Confirmation {
            seqs: ok.seqs.into_iter().map(|s| (s.room, s.seq)).collect(),
            duplicate: ok.duplicate,
            durable_on_disk: ok.durability == pb::Durability::Sync as i32,
            dedup_id: id,
        })
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
            let key = (d.room.clone(), d.subscription.clone());
            let sub = match inner.subs.lock() {
                Ok(s) => s.get(&key).cloned(),
                Err(poisoned) => poisoned.into_inner().get(&key).cloned(),
            };
            // Without a subscription (left or dropped) there is nothing to
            // do: the broker redelivers to the membership's next holder.
            if let Some(sub) = sub {
                sub.offer(d, conn);
            }
        }
        Push::Error(e) => inner.emit(Event::BrokerError {
            code: e.code,
            name: e.name,
            message: e.message,
        }),
        // Not surfaced by the SDK yet.
        Push::Gap(_) | Push::Presence(_) => {}
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
