//! Subscriptions: [`Client::join`] returns a [`Subscription`], a stream of
//! [`Delivery`] values that the application acknowledges one by one, and —
//! for those who ask with [`Subscription::next_event`] — of the notices
//! about the membership: [`Gap`]s and [`PresenceChange`]s.
//!
//! Each subscription owns a [`Filter`] (ordered mode by default for durable
//! members, shared mode for a group's consumers), a small task that keeps
//! the ack deadline of deliveries the application holds from expiring, up
//! to the client's `max_hold`, and a small task that sends the
//! application's acks, coalesced (see the `acks` module and
//! [`Delivery::ack`]). The filter and the queue of acks each sit behind a
//! short `std::sync::Mutex`, never held across an `.await`: the supervisor
//! offers deliveries, the application's acks and the two tasks update
//! them. Flushes of the ack queue take turns on an async mutex, so a
//! `leave()` sends its `Leave` only after every ack made before it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use roomq_wire::pb;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::acks::{plan_acks, AckQueue, MAX_SEQS_PER_ACK};
use crate::client::{Client, Event, Inner, SubKey};
use crate::filter::{Filter, Mode, Verdict};
use crate::presence::PresenceChange;
use crate::raw::Connection;
use crate::{ClientError, ErrorCode};

/// Volatile deliveries and notices (gaps, presence changes) that may wait in
/// a subscription's queue, on top of the room kept for ordinary deliveries.
/// Neither is bounded by `max_in_flight`, so they have their own budget: a
/// flood of them must not push out the deliveries the broker waits to see
/// acknowledged. Past it they are dropped (see [`Subscription::dropped`]).
pub const EXTRA_QUEUE: usize = 1024;

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
    /// From the first message the broker accepted at or after this time
    /// (the end of the log when there is none).
    Time(SystemTime),
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
    group: Option<String>,
    exclusive: bool,
    backoff: Vec<Duration>,
    max_deliveries: Option<u32>,
    events: Vec<String>,
    presence: bool,
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
    /// A group's consumers never use it; see [`JoinOptions::group`].
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = Some(ordered);
        self
    }

    /// Consumes for the group `name`: its consumers (in any number of
    /// clients) share one durable cursor, and each message goes to one of
    /// them. Messages with the same ordering key (see
    /// [`crate::PublishBuilder::key`]) go to the same consumer, in order.
    /// A group is durable; its start position applies only when the group
    /// is new.
    ///
    /// A consumer sees a subset of the room's seqs, and after another
    /// consumer leaves it may get that consumer's unacknowledged messages
    /// with lower seqs than some it already has; so the SDK hands them over
    /// as they come ([`JoinOptions::ordered`] does not apply), dropping only
    /// copies of what the application holds or has acknowledged.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// With [`JoinOptions::group`]: only the consumer that joined first gets
    /// messages; the others stand by, and the next one in join order takes
    /// over (with what was unacknowledged) when it leaves.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Ack timeouts per delivery attempt: attempt n waits `backoff[n-1]`
    /// (the last entry for later attempts) instead of the ack timeout. Each
    /// is sent in whole ms (at least 1); the broker caps the number of
    /// steps and their length (1 ms to 1 day).
    pub fn backoff(mut self, steps: Vec<Duration>) -> Self {
        self.backoff = steps;
        self
    }

    /// A message delivered this many times and still not acknowledged is
    /// moved to the dead-letter room `<room>.dlq` and the membership moves
    /// on. 0 = never. Default: the broker's (20).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n);
        self
    }

    /// Only messages whose event matches one of these patterns (`*` = any
    /// run of characters); the others are skipped as if acknowledged. Adds
    /// to the patterns already given; none = every event.
    pub fn events<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Receive a [`PresenceChange`] when someone joins or leaves the room;
    /// read them with [`Subscription::next_event`].
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// The join request these options make for `room`, and the filter mode
    /// of the subscription. `has_client_id`: whether the client has one.
    pub(crate) fn plan(&self, room: &str, has_client_id: bool) -> (pb::Join, Mode) {
        let label = self.subscription.clone().unwrap_or_default();
        let group = self.group.clone().unwrap_or_default();
        let durable = self
            .durable
            .unwrap_or(!label.is_empty() || has_client_id || !group.is_empty());
        let mode = if group.is_empty() {
            if self.ordered.unwrap_or(durable) {
                Mode::Ordered
            } else {
                Mode::Unordered
            }
        } else {
            Mode::Shared
        };
        let member_mode = match self.durable {
            Some(true) => pb::MemberMode::Durable,
            Some(false) => pb::MemberMode::Ephemeral,
            None => pb::MemberMode::Auto,
        };
        let (start, start_seq, start_time_ms) = match self.start {
            Start::Resume => (pb::StartPosition::Resume, 0, 0),
            Start::New => (pb::StartPosition::New, 0, 0),
            Start::Earliest => (pb::StartPosition::Earliest, 0, 0),
            Start::Seq(s) => (pb::StartPosition::Seq, s, 0),
            Start::Time(t) => (pb::StartPosition::Time, 0, epoch_ms(t)),
        };
        let group_mode = if self.exclusive {
            pb::GroupMode::Exclusive
        } else {
            pb::GroupMode::KeyOrdered
        };
        let join = pb::Join {
            room: room.to_string(),
            subscription: label,
            mode: member_mode as i32,
            start: start as i32,
            start_seq,
            max_in_flight: self.max_in_flight,
            ack_timeout_ms: self.ack_timeout.map_or(0, whole_ms),
            group,
            group_mode: group_mode as i32,
            backoff_ms: self.backoff.iter().map(|d| whole_ms(*d).max(1)).collect(),
            max_deliveries: self.max_deliveries,
            events: self.events.clone(),
            presence: self.presence,
            start_time_ms,
        };
        (join, mode)
    }
}

/// `d` in whole milliseconds, saturating.
pub(crate) fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `t` in ms since the Unix epoch (0 for a time before it).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, whole_ms)
}

/// The broker moved a membership's cursor past messages it never
/// acknowledged, because retention or a purge deleted them: seqs
/// `from_seq..=to_seq`, `missed` of them. The SDK has already stopped
/// waiting for them; this tells the application what it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub room: String,
    /// The subscription label it concerns.
    pub subscription: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub missed: u64,
}

impl From<pb::Gap> for Gap {
    fn from(g: pb::Gap) -> Self {
        Gap {
            room: g.room,
            subscription: g.subscription,
            from_seq: g.from_seq,
            to_seq: g.to_seq,
            missed: g.missed,
        }
    }
}

/// Why the broker ended a subscription; see [`Subscription::ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Another session joined the same durable membership (same client id
    /// or durable name) and holds it now (`MEMBERSHIP_TAKEN_OVER`). Joining
    /// it again would take it back.
    TakenOver,
    /// An administrator deleted the room, with its cursors (`NOT_FOUND`).
    Deleted,
}

impl EndReason {
    /// The reason a pushed error with this code gives, if it ends a
    /// membership.
    pub fn from_code(code: u32) -> Option<EndReason> {
        match ErrorCode::from_u32(code)? {
            ErrorCode::MembershipTakenOver => Some(EndReason::TakenOver),
            ErrorCode::NotFound => Some(EndReason::Deleted),
            _ => None,
        }
    }
}

/// The broker ended a subscription: the membership is no longer this
/// session's. The SDK does not join it again after a reconnect; its stream
/// yields what was already queued and then ends.
#[derive(Debug)]
pub struct Ended {
    pub reason: EndReason,
    /// The error the broker pushed: a [`ClientError::Broker`] whose
    /// [`ClientError::detail`] names the room and subscription.
    pub error: ClientError,
}

/// What [`Subscription::next_event`] yields: a message, or a notice about
/// the membership, in the order the broker sent them.
#[derive(Debug)]
pub enum SubscriptionEvent {
    Message(Delivery),
    /// Messages this membership will never get (deleted before it got to
    /// them); see [`Gap`].
    Gap(Gap),
    /// Someone joined or left the room (only with
    /// [`JoinOptions::presence`]).
    Presence(PresenceChange),
}

impl SubscriptionEvent {
    /// Whether it counts against [`EXTRA_QUEUE`].
    fn is_extra(&self) -> bool {
        match self {
            SubscriptionEvent::Message(d) => d.volatile,
            SubscriptionEvent::Gap(_) | SubscriptionEvent::Presence(_) => true,
        }
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
    /// Acks waiting for the next flush.
    acks: Mutex<AckQueue<Connection>>,
    /// Wakes the flusher: the first ack was queued, or the queue is full.
    ack_wake: Notify,
    /// Flushes take turns (the flusher, `leave`, `close`, `flush_acks`).
    flushing: tokio::sync::Mutex<()>,
    /// The client's `ack_flush`: the longest an ack waits in the queue.
    ack_flush: Duration,
    /// Acks that are flushed at once, without waiting for `ack_flush`: a
    /// quarter of the membership's `max_in_flight`, so that acks waiting
    /// for the timer never hold the broker's in-flight window shut.
    ack_batch: usize,
    tx: Mutex<Option<mpsc::Sender<SubscriptionEvent>>>,
    /// Volatile deliveries and notices in the queue now (at most
    /// [`EXTRA_QUEUE`]).
    extras: AtomicUsize,
    /// Volatile deliveries and notices dropped because the application
    /// did not read them in time.
    dropped: AtomicU64,
    closed: CancellationToken,
    /// Set once, when the broker ends the membership.
    ended: OnceLock<Ended>,
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
    pub(crate) fn offer(self: &Arc<Self>, mut d: pb::Delivery, conn: &Connection) {
        let Some(m) = d.message.take() else { return };
        let session = conn.session_id();
        if d.volatile {
            // Never stored, never redelivered, not to be acked: nothing for
            // the filter to order or remember. If the application is not
            // keeping up, it is lost, as a volatile message may be.
            let delivery = self.delivery(d, session, true, m);
            self.send_extra(SubscriptionEvent::Message(delivery));
            return;
        }
        let seq = m.seq;
        let verdict = lock(&self.filter).offer(seq, Instant::now());
        match verdict {
            Verdict::Drop => {}
            Verdict::Reack => self.queue_ack(seq, session, conn),
            Verdict::Hand => {
                if self.auto_ack {
                    lock(&self.filter).acked(seq);
                    self.queue_ack(seq, session, conn);
                }
                let delivery = self.delivery(d, session, false, m);
                let sent = lock(&self.tx)
                    .as_ref()
                    .map(|tx| tx.try_send(SubscriptionEvent::Message(delivery)).is_ok());
                if sent != Some(true) {
                    // The application is not reading (or left): let the
                    // broker redeliver it later.
                    lock(&self.filter).released(seq);
                }
            }
        }
    }

    fn delivery(
        self: &Arc<Self>,
        d: pb::Delivery,
        session: Uuid,
        volatile: bool,
        m: pb::Message,
    ) -> Delivery {
        Delivery {
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
            key: m.key,
            expires_at_ms: m.expires_at_ms,
            deliver_at_ms: m.deliver_at_ms,
            volatile,
            session,
            sub: self.clone(),
        }
    }

    /// The broker moved this membership's cursor past deleted messages.
    pub(crate) fn gap(&self, g: pb::Gap) {
        lock(&self.filter).skipped(g.from_seq, g.to_seq);
        self.send_extra(SubscriptionEvent::Gap(Gap::from(g)));
    }

    /// Someone joined or left the room.
    pub(crate) fn presence(&self, e: pb::PresenceEvent) {
        if let Some(change) = PresenceChange::from_wire(e) {
            self.send_extra(SubscriptionEvent::Presence(change));
        }
    }

    /// Queues a volatile delivery or a notice, within [`EXTRA_QUEUE`].
    fn send_extra(&self, event: SubscriptionEvent) {
        let tx = lock(&self.tx);
        let Some(tx) = tx.as_ref() else { return };
        let queued = self
            .extras
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < EXTRA_QUEUE).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tx.try_send(event).is_err() {
            self.extras.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The application took `event` from the queue.
    fn taken(&self, event: &SubscriptionEvent) {
        if event.is_extra() {
            self.extras.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Queues an ack of `seq`, made on `session` (`conn`), for the next
    /// flush.
    fn queue_ack(&self, seq: u64, session: Uuid, conn: &Connection) {
        let wake = lock(&self.acks).push(seq, session, conn, Instant::now(), self.ack_batch);
        if wake {
            self.ack_wake.notify_one();
        }
    }

    /// Sends the queued acks now, in as few frames as [`plan_acks`] allows,
    /// on the connection they were made on, and waits for the broker's
    /// answers. If that connection has broken, they are dropped: the
    /// broker redelivers those messages after the reconnect, and the
    /// filter acks them again. A refusal is also reported as
    /// [`Event::BrokerError`].
    pub(crate) async fn flush_acks(&self) -> Result<(), ClientError> {
        let _turn = self.flushing.lock().await;
        let Some((conn, seqs)) = lock(&self.acks).take() else {
            return Ok(());
        };
        let plans = {
            let filter = lock(&self.filter);
            let cumulative = filter.mode() != Mode::Shared;
            plan_acks(
                seqs,
                filter.lowest_outstanding(),
                cumulative,
                MAX_SEQS_PER_ACK,
            )
        };
        for plan in plans {
            match conn
                .ack_with(&self.room, &self.label, &plan.seqs, plan.up_to)
                .await
            {
                Ok(next_seq) => lock(&self.filter).advance_floor(next_seq),
                Err(e) if e.is_connection_loss() => return Ok(()),
                Err(e) => {
                    self.report_refused_ack(&e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A coalesced ack was refused: nobody awaits it, so the client's
    /// events say so.
    fn report_refused_ack(&self, e: &ClientError) {
        tracing::warn!(room = %self.room, subscription = %self.label, error = %e, "ack refused");
        if let (
            Some(inner),
            ClientError::Broker {
                code,
                name,
                message,
                ..
            },
        ) = (self.inner.upgrade(), e)
        {
            inner.emit(Event::BrokerError {
                code: *code,
                name: name.clone(),
                message: message.clone(),
            });
        }
    }

    /// Joins again on a new connection, from the stored cursor. Not if it
    /// has ended (or been dropped) since the reconnect began.
    pub(crate) async fn resume(self: &Arc<Self>, inner: &Inner, conn: &Connection) {
        if self.closed.is_cancelled() {
            return;
        }
        let mut join = self.join.clone();
        join.start = if join.mode == pb::MemberMode::Ephemeral as i32 {
            pb::StartPosition::New as i32
        } else {
            pb::StartPosition::Resume as i32
        };
        match conn.join_with(join).await {
            // Ended meanwhile (a takeover or deletion pushed before the
            // JoinOk): nothing was resumed.
            Ok(_) if self.ended.get().is_some() => {}
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
                inner.unregister(&self.key(), self);
                self.close();
            }
        }
    }

    fn key(&self) -> SubKey {
        (self.room.clone(), self.label.clone())
    }

    /// The broker ended the membership (taken over, or its room deleted):
    /// it is no longer this client's, so it leaves the subscription table
    /// (never to be resumed) and its stream ends after what is queued.
    pub(crate) fn end(&self, inner: &Inner, reason: EndReason, error: ClientError) {
        if self.ended.set(Ended { reason, error }).is_err() {
            return;
        }
        inner.unregister(&self.key(), self);
        self.close();
    }

    /// Ends the subscription's stream.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        lock(&self.tx).take();
    }

    fn connection_now(&self) -> Option<Connection> {
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
    /// The publish's ordering key ("" if none).
    pub key: String,
    /// When it expires, ms since the Unix epoch (0 = never).
    pub expires_at_ms: u64,
    /// When it could first be delivered, ms since the Unix epoch (0 = at
    /// once).
    pub deliver_at_ms: u64,
    /// A volatile message: never stored, `seq` 0, never redelivered.
    /// [`Delivery::ack`] and [`Delivery::in_progress`] do nothing for it,
    /// and [`Delivery::nack`] is refused.
    pub volatile: bool,
    /// The session (connection) it arrived on.
    session: Uuid,
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
            .field("key", &self.key)
            .field("volatile", &self.volatile)
            .finish()
    }
}

impl Delivery {
    /// Acknowledges it: it will not be handed to this subscription again,
    /// and the broker will not deliver it to this member again once the
    /// ack reaches it.
    ///
    /// Acks are coalesced: this returns as soon as the ack is **queued**,
    /// without a round trip to the broker. The subscription sends the acks
    /// of the moment together, in one `Ack` frame (cumulative where
    /// nothing held or given back lies below them), within the client's
    /// [`ack_flush`](crate::ClientBuilder::ack_flush) (default 5 ms), at
    /// once when a quarter of the membership's `max_in_flight` is waiting,
    /// and on [`Subscription::leave`], [`Subscription::flush_acks`] and
    /// [`Client::close`]. From the moment this returns, the SDK acks any
    /// redelivery of it silently instead of handing it over. To know that
    /// the broker has them, await [`Subscription::flush_acks`]; a refusal
    /// of a frame sent by the SDK's timer is reported as
    /// [`Event::BrokerError`]. An ack still queued when the process exits
    /// without `close()` or `leave()` is lost, and the message is
    /// redelivered (at least once).
    ///
    /// If the connection is down (or drops before the flush), the
    /// acknowledgement is completed when the broker redelivers it after
    /// the reconnect (the SDK acks it silently). A delivery that arrived
    /// on an earlier connection, or of a subscription that has been left
    /// or has ended, is acknowledged on its own and awaited, as the broker
    /// answers it: acknowledging a delivery of an ended subscription fails
    /// with `NOT_JOINED` (see [`Subscription::ended`]).
    ///
    /// A volatile delivery needs no acknowledgement: this does nothing.
    pub async fn ack(self) -> Result<(), ClientError> {
        if self.volatile {
            return Ok(());
        }
        lock(&self.sub.filter).acked(self.seq);
        let Some(conn) = self.sub.connection_now() else {
            return Ok(());
        };
        if !self.sub.closed.is_cancelled() && conn.session_id() == self.session {
            self.sub.queue_ack(self.seq, self.session, &conn);
            return Ok(());
        }
        // No flush will come (left, dropped, ended), or the broker may not
        // have redelivered it on this connection yet: on its own, so that
        // a refusal concerns it alone.
        match conn.ack(&self.room, &self.subscription, &[self.seq]).await {
            Ok(next_seq) => {
                lock(&self.sub.filter).advance_floor(next_seq);
                Ok(())
            }
            Err(e) if e.is_connection_loss() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives it back, to be delivered again after `delay`. A volatile
    /// delivery cannot be given back: [`ClientError::InvalidUse`].
    pub async fn nack(self, delay: Duration) -> Result<(), ClientError> {
        self.nack_with_reason(delay, "").await
    }

    /// Gives it back like [`Delivery::nack`], saying why: if this was its
    /// last allowed delivery (see [`JoinOptions::max_deliveries`]), the
    /// dead-letter copy keeps `reason` in its `roomq-dead-reason` header.
    /// At most 255 bytes.
    pub async fn nack_with_reason(self, delay: Duration, reason: &str) -> Result<(), ClientError> {
        if self.volatile {
            return Err(ClientError::InvalidUse(
                "a volatile delivery is never redelivered, so it cannot be given back".into(),
            ));
        }
        lock(&self.sub.filter).released(self.seq);
        let Some(conn) = self.sub.connection_now() else {
            return Ok(());
        };
        match conn
            .nack_with_reason(&self.room, &self.subscription, &[self.seq], delay, reason)
            .await
        {
            Err(e) if !e.is_connection_loss() => Err(e),
            _ => Ok(()),
        }
    }

    /// Tells the broker it is still being worked on (restarts its ack
    /// timer). The SDK does this by itself while the delivery is held; call
    /// it to be explicit. A volatile delivery has no timer: this does
    /// nothing.
    pub async fn in_progress(&self) -> Result<(), ClientError> {
        if self.volatile {
            return Ok(());
        }
        match self.sub.connection_now() {
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
/// [`Subscription::next`] (and the `Stream` impl) yields messages only;
/// [`Subscription::next_event`] yields them together with the notices
/// about the membership (gaps, presence changes), in the order the broker
/// sent them. Use one or the other: `next` discards the notices it meets.
///
/// Dropping it stops routing deliveries to it (a durable membership keeps
/// its cursor; unacknowledged deliveries are redelivered later). Call
/// [`Subscription::leave`] to leave explicitly.
///
/// The broker can end it: when another session takes the durable
/// membership over, or an administrator deletes the room. Its stream then
/// ends after the deliveries already queued, and [`Subscription::ended`]
/// says why.
pub struct Subscription {
    rx: mpsc::Receiver<SubscriptionEvent>,
    shared: Arc<SubShared>,
    client: Client,
    joined: pb::JoinOk,
    left: bool,
}

impl Subscription {
    /// The next delivery; `None` once the subscription has ended (left, the
    /// client closed, or the broker ended it: see [`Subscription::ended`]).
    /// Gap and presence notices met on the way are discarded (the SDK has
    /// already acted on a gap).
    pub async fn next(&mut self) -> Option<Delivery> {
        futures::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// The next message or notice; `None` once the subscription has ended
    /// (see [`Subscription::next`]).
    pub async fn next_event(&mut self) -> Option<SubscriptionEvent> {
        futures::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Messages and notices as a `Stream` (see [`Subscription::next_event`]).
    pub fn event_stream(&mut self) -> impl futures::Stream<Item = SubscriptionEvent> + '_ {
        futures::stream::poll_fn(move |cx| self.poll_event(cx))
    }

    /// Volatile deliveries and notices dropped so far because more than
    /// [`EXTRA_QUEUE`] of them were waiting to be read.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Why the broker ended this subscription, once it has: another
    /// session took the durable membership over, or the room was deleted.
    /// `None` while it lasts, and when it ended otherwise (left, client
    /// closed, [`Event::ResumeFailed`]). It is `Some` from the moment the
    /// broker's push is read: the stream still yields the deliveries
    /// queued before it, then ends; the SDK never joins the membership
    /// again (not after a reconnect either), and [`Subscription::leave`]
    /// and [`Subscription::forget`] do nothing. Acknowledging a delivery
    /// of an ended subscription fails with `NOT_JOINED`: after a takeover
    /// the broker redelivers it to the new holder; after a deletion it is
    /// gone.
    pub fn ended(&self) -> Option<&Ended> {
        self.shared.ended.get()
    }

    /// Sends the acknowledgements made so far ([`Delivery::ack`],
    /// auto-acks, the SDK's own re-acks) now, without waiting for the
    /// client's `ack_flush`, and waits until the broker has answered them:
    /// after `Ok`, the membership's cursor covers every delivery acked
    /// before the call (a frame the SDK's timer was sending is waited for
    /// too). `Ok` also when there was nothing to send, or the connection
    /// is down (those acks are completed when the broker redelivers after
    /// the reconnect). `Err` if the broker refused them.
    pub async fn flush_acks(&self) -> Result<(), ClientError> {
        self.shared.flush_acks().await
    }

    /// The group this subscription consumes for, if any.
    pub fn group(&self) -> Option<&str> {
        Some(self.shared.join.group.as_str()).filter(|g| !g.is_empty())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(event)) = &polled {
            self.shared.taken(event);
        }
        polled
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            match self.poll_event(cx) {
                Poll::Ready(Some(SubscriptionEvent::Message(d))) => return Poll::Ready(Some(d)),
                Poll::Ready(Some(_notice)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
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

    /// Leaves the room; a durable membership keeps its cursor. The acks
    /// made before are sent first (see [`Subscription::flush_acks`]); an
    /// error says the broker refused them or the leave.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        self.leave_inner(false).await
    }

    /// Leaves the room and deletes the durable membership's cursor (after
    /// sending the acks made before, like [`Subscription::leave`]).
    pub async fn forget(mut self) -> Result<(), ClientError> {
        self.leave_inner(true).await
    }

    async fn leave_inner(&mut self, forget: bool) -> Result<(), ClientError> {
        self.left = true;
        self.unregister();
        if self.ended().is_some() {
            // The membership is no longer this session's.
            return Ok(());
        }
        // Unregistered first, so that acks made from now on are sent on
        // their own; these were made before.
        let flushed = self.shared.flush_acks().await;
        let (conn, _) = self.client.inner.connection().await?;
        let left = conn
            .leave(&self.shared.room, &self.shared.label, forget)
            .await;
        left.and(flushed)
    }

    fn unregister(&self) {
        self.client
            .inner
            .unregister(&self.shared.key(), &self.shared);
        self.shared.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        self.unregister();
        if self.ended().is_some() {
            return;
        }
        // Best effort: send the acks made so far, then tell the broker, so
        // it stops sending.
        if let (Ok(handle), Some(conn)) = (
            tokio::runtime::Handle::try_current(),
            self.client.inner.connection_now(),
        ) {
            let shared = self.shared.clone();
            handle.spawn(async move {
                let _ = shared.flush_acks().await;
                let _ = conn.leave(&shared.room, &shared.label, false).await;
            });
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.poll_delivery(cx)
    }
}

/// Joins `room` for `client`; see [`Client::join`].
pub(crate) async fn join(
    client: &Client,
    room: &str,
    options: JoinOptions,
) -> Result<Subscription, ClientError> {
    let inner = &client.inner;
    let (request, filter_mode) = options.plan(room, !inner.settings.connect.client_id.is_empty());
    let label = request.subscription.clone();
    let key = (room.to_string(), label.clone());
    let (conn, _) = inner.connection().await?;
    let broker_max = conn.limits().map_or(1000, |l| l.max_in_flight);
    let in_flight = match options.max_in_flight {
        0 => broker_max,
        n => n.min(broker_max),
    };
    let ack_timeout = options.ack_timeout.unwrap_or_else(|| {
        Duration::from_millis(conn.limits().map_or(30_000, |l| l.ack_timeout_ms))
    });
    let (tx, rx) = mpsc::channel(in_flight as usize + 64 + EXTRA_QUEUE);
    let shared = Arc::new(SubShared {
        created: NEXT_SUB.fetch_add(1, Ordering::Relaxed),
        room: room.to_string(),
        label: label.clone(),
        join: request.clone(),
        auto_ack: options.auto_ack,
        filter: Mutex::new(Filter::with_mode(filter_mode)),
        acks: Mutex::new(AckQueue::default()),
        ack_wake: Notify::new(),
        flushing: tokio::sync::Mutex::new(()),
        ack_flush: inner.settings.ack_flush,
        ack_batch: (in_flight as usize / 4).clamp(1, 1000),
        tx: Mutex::new(Some(tx)),
        extras: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        closed: CancellationToken::new(),
        ended: OnceLock::new(),
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
            inner.unregister(&key, &shared);
            return Err(e);
        }
    };
    lock(&shared.filter).advance_floor(joined.next_seq);
    tokio::spawn(keep_alive(
        shared.clone(),
        ack_timeout,
        inner.settings.max_hold,
    ));
    tokio::spawn(flush_acks_in_time(shared.clone()));
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
        if let Some(conn) = shared.connection_now() {
            for chunk in held.chunks(1000) {
                let _ = conn.in_progress(&shared.room, &shared.label, chunk).await;
            }
        }
    }
}

/// Sends the queued acks when they are due: `ack_flush` after the oldest,
/// or at once when `ack_batch` are waiting. Ends with the subscription
/// (leave, drop, end and close flush for themselves).
async fn flush_acks_in_time(shared: Arc<SubShared>) {
    loop {
        let due = lock(&shared.acks).due(shared.ack_flush, shared.ack_batch);
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.closed.cancelled() => return,
            _ = shared.ack_wake.notified() => continue,
            _ = sleep => {}
        }
        // A refusal has been reported as an event.
        let _ = shared.flush_acks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_options_map_onto_the_join_request() {
        let opts = JoinOptions::new()
            .group("billing")
            .exclusive()
            .backoff(vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_micros(10),
            ])
            .max_deliveries(0)
            .events(["order.*"])
            .events(vec!["refund".to_string()])
            .presence(true)
            .ordered(true);
        let (join, mode) = opts.plan("orders", false);
        assert_eq!(join.room, "orders");
        assert_eq!(join.group, "billing");
        assert_eq!(join.group_mode, pb::GroupMode::Exclusive as i32);
        // A sub-millisecond step is sent as 1 ms, never as 0.
        assert_eq!(join.backoff_ms, vec![100, 1000, 1]);
        // 0 is "unlimited" and must be sent, not left absent.
        assert_eq!(join.max_deliveries, Some(0));
        assert_eq!(join.events, vec!["order.*", "refund"]);
        assert!(join.presence);
        assert_eq!(join.mode, pb::MemberMode::Auto as i32);
        // Groups never use the ordered filter, even when asked.
        assert_eq!(mode, Mode::Shared);
    }

    #[test]
    fn defaults_leave_the_new_fields_unset() {
        let (join, mode) = JoinOptions::new().plan("general", true);
        assert_eq!(join.group, "");
        assert_eq!(join.group_mode, pb::GroupMode::KeyOrdered as i32);
        assert!(join.backoff_ms.is_empty());
        assert_eq!(join.max_deliveries, None, "absent = the broker's default");
        assert!(join.events.is_empty());
        assert!(!join.presence);
        assert_eq!(join.start, pb::StartPosition::Resume as i32);
        assert_eq!(mode, Mode::Ordered, "durable by client id: ordered");
        let (_, mode) = JoinOptions::new().plan("general", false);
        assert_eq!(mode, Mode::Unordered, "ephemeral: unordered");
        let (join, mode) = JoinOptions::new().group("g").plan("general", false);
        assert_eq!(join.group, "g");
        assert_eq!(mode, Mode::Shared);
    }

    #[test]
    fn start_positions_map_onto_the_join_request() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let (join, _) = JoinOptions::new().start(Start::Time(at)).plan("r", true);
        assert_eq!(join.start, pb::StartPosition::Time as i32);
        assert_eq!(join.start_time_ms, 1_700_000_000_123);
        let (join, _) = JoinOptions::new().start(Start::Seq(42)).plan("r", true);
        assert_eq!(
            (join.start, join.start_seq, join.start_time_ms),
            (pb::StartPosition::Seq as i32, 42, 0)
        );
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(epoch_ms(before), 0);
    }
}
