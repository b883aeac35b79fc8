//! The broker core: `broker.shards` actor tasks (shards), each owning its
//! rooms (placed by [`shard_of`]) with their members, timers and dedup
//! records, and an entry for every session. Sessions talk to them through
//! [`BrokerHandle`], one bounded command queue per shard; a shard answers
//! through each session's bounded outbound channel, never awaiting a
//! session (it uses `try_send` and a documented back-off when a session's
//! queue is full). Storage calls run beside each shard and report back as
//! events: writes one batch at a time per shard ([`commit`]), reads of
//! messages that are not in a room's cache ([`reads`]). No locks guard the
//! broker's tables: each shard is the only owner of its own. Shared between
//! shards are only the room id allocator, the tenants (with their atomic
//! counters) and each session's room set (`session::SessionRooms`).
//!
//! Layout:
//! - [`placement`]: which shard owns a room; [`handle`]: the handle over
//!   the shards' queues, and the merging of what every shard answers.
//! - [`room`]: rooms and members, the delivery rules (no I/O).
//! - [`error`](mod@error): [`BrokerError`], why a request is refused, turned into the
//!   wire's error in one place; `reply`: what a request is answered with
//!   (sent by the dispatcher in `Broker::handle`).
//! - [`commit`]: group commit beside the actor; [`reads`]: reads of stored
//!   messages beside the actor. Both report back as events.
//! - one file per operation: [`join`], [`leave`], [`publish`], [`ack`],
//!   [`nack`], [`in_progress`], [`list_rooms`], [`members`], [`admin`],
//!   each holding the request's checks (run by the session) and the
//!   actor's handling. Join, publish and admin are handled by methods on
//!   [`Broker`] (they use nearly every part); the other six by free
//!   functions that take only the parts they use (the rooms' `Registry`,
//!   the `SessionOutlet`, the `WritePipeline`, the `Config`), lent by
//!   `Broker::handle`.
//! - [`dead_letter`]: dead-lettering and redrive; [`retention`]: the
//!   retention sweep and the trim path it shares with purge and redrive.
//! - [`stats`]: the figures behind `/metrics` and the admin `Stats` op.

pub mod ack;
pub mod admin;
mod clock;
pub mod commit;
mod core;
pub mod dead_letter;
mod dedup;
pub mod error;
pub mod handle;
pub mod in_progress;
pub mod join;
pub mod leave;
pub mod list_rooms;
pub mod members;
pub mod nack;
mod outlet;
mod pipeline;
pub mod placement;
pub mod publish;
pub mod reads;
mod registry;
mod reply;
pub mod retention;
pub mod room;
pub mod stats;
mod timers;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use roomq_wire::{pb, ErrorCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

pub use self::core::Broker;
use crate::config::Config;
use crate::session::{Outbound, RequestSlot, SessionInfo};
use crate::storage::{RoomId, Store, StoreError, WriteBatch};
use crate::tenancy::{StoredNamespace, Tenants};
pub use clock::now_ms;
use commit::CommitOutcome;
use dedup::DedupTable;
pub use error::{BrokerError, BrokerGone};
pub use handle::BrokerHandle;
use outlet::{SessionEntry, SessionOutlet};
use pipeline::{Committed, InFlightBatch, PendingConfirm, PendingReply, WritePipeline};
pub use placement::shard_of;
use reads::{Reads, StoreEvent};
use registry::Registry;
use retention::RetentionState;
use room::{MemberKey, Room};

/// A request that has passed the session's checks.
#[derive(Debug)]
pub enum Request {
    Join(join::JoinReq),
    Leave(leave::LeaveReq),
    Publish(publish::PublishReq),
    Ack(ack::AckReq),
    Nack(nack::NackReq),
    InProgress(in_progress::InProgressReq),
    Members(members::MembersReq),
    Admin(admin::AdminReq),
}

impl Request {
    /// The room whose shard handles the request: `None` for a publish
    /// (the session splits it by its rooms) and for `/admin` (routed by
    /// operation, [`admin::AdminReq::room`]).
    pub fn room(&self) -> Option<&str> {
        match self {
            Request::Join(r) => Some(&r.room),
            Request::Leave(r) => Some(&r.room),
            Request::Ack(r) => Some(&r.room),
            Request::Nack(r) => Some(&r.room),
            Request::InProgress(r) => Some(&r.room),
            Request::Members(r) => Some(&r.room),
            Request::Publish(_) | Request::Admin(_) => None,
        }
    }
}

/// A request resumed after a read (`Reply::AfterRead`) becomes a
/// [`Request`] again without its operation file naming this module.
impl From<join::JoinReq> for Request {
    fn from(r: join::JoinReq) -> Self {
        Request::Join(r)
    }
}

impl From<admin::AdminReq> for Request {
    fn from(r: admin::AdminReq) -> Self {
        Request::Admin(r)
    }
}

/// Messages to a shard.
#[derive(Debug)]
pub enum Command {
    /// A session finished its handshake (sent to every shard). The reply
    /// says whether it resumes durable memberships on this shard.
    Register {
        info: Arc<SessionInfo>,
        tx: mpsc::Sender<Outbound>,
        blocked: Arc<AtomicBool>,
        kill: CancellationToken,
        /// `None`: the namespace was deleted while the handshake ran.
        reply: oneshot::Sender<Option<bool>>,
    },
    /// The session's connection is gone.
    Unregister { session: Uuid },
    /// A session's request.
    Request {
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        request: Request,
    },
    /// A session whose queue was full has drained.
    Writable { session: Uuid },
    /// A snapshot of this shard's figures (for `/metrics` and the admin
    /// `Stats` op, merged by [`BrokerHandle::stats`]).
    Stats {
        max_rooms: usize,
        order: pb::StatsOrder,
        reply: oneshot::Sender<pb::BrokerStats>,
    },
    /// This shard's rooms of `namespace`, for a session's `ListRooms`.
    ListRooms {
        namespace: Arc<str>,
        reply: oneshot::Sender<Vec<pb::RoomInfo>>,
    },
    /// This shard's rooms (of `namespace`, or of all) for `/admin`, sorted
    /// and cut at `budget` encoded bytes.
    AdminRooms {
        namespace: Option<String>,
        budget: usize,
        reply: oneshot::Sender<pb::AdminOk>,
    },
    /// `/admin` kick: closes the session here; whether it was here.
    Kick {
        session: Uuid,
        reply: oneshot::Sender<bool>,
    },
    /// `/admin` namespace deletion. On the `primary` shard (0): the
    /// checks, the tenant's removal and its record, then its rooms; on the
    /// others, their rooms. Answered with the rooms deleted once synced.
    DeleteNamespace {
        name: String,
        primary: bool,
        reply: oneshot::Sender<Result<u64, BrokerError>>,
    },
}

/// An error frame answering `request_id`.
pub fn error_frame(
    request_id: u64,
    code: ErrorCode,
    message: impl Into<String>,
) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id,
        body: Some(pb::server_frame::Body::Error(pb::Error::new(code, message))),
    }
}

impl Broker {
    /// Opens the broker on `store`: recovers rooms, cursors, dedup records
    /// and the namespaces created through `/admin` (into `tenants`) once,
    /// and builds `broker.shards` shards, each from its part of what was
    /// recovered: the rooms [`shard_of`] places on it, their cursors, and
    /// the dedup records of publishes to them. Shard 0 first.
    pub async fn open(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        tenants: Arc<Tenants>,
    ) -> Result<Vec<Broker>, StoreError> {
        let recovered = store.recover().await?;
        let mut stored_namespaces = Vec::new();
        for raw in &recovered.namespaces {
            match serde_json::from_slice::<StoredNamespace>(raw) {
                Ok(ns) => stored_namespaces.push(ns),
                Err(e) => warn!(error = %e, "stored namespace record unreadable; skipped"),
            }
        }
        tenants.restore(stored_namespaces);
        let shards = config.broker.shard_count().max(1);
        let ids = registry::room_ids(recovered.next_room_id);
        let mut brokers: Vec<Broker> = (0..shards)
            .map(|shard| Broker::shard(shard, shards, &config, &store, &tenants, ids.clone()))
            .collect();
        // Where each stored room went.
        let mut placed: HashMap<RoomId, usize> = HashMap::new();
        for r in recovered.rooms {
            let shard = shard_of(&r.namespace, &r.name, shards);
            let mut room = Room::new(r.id, r.namespace.clone(), r.name, r.last_seq);
            room.first_seq = r.stats.first_seq.max(1);
            room.stored_bytes = r.stats.stored_bytes;
            if let Some(t) = tenants.get(&r.namespace) {
                t.usage.add_stored(r.stats.stored_bytes, 0);
                t.usage.add_rooms(1);
            }
            if let Some(b) = brokers.get_mut(shard) {
                placed.insert(r.id, shard);
                b.rooms.restore(room);
            }
        }
        let limits = &config.limits;
        for (room_id, name, rec) in recovered.cursors {
            let room = placed
                .get(&room_id)
                .and_then(|shard| brokers.get_mut(*shard))
                .and_then(|b| b.rooms.get_mut(&room_id));
            match room {
                Some(room) => {
                    let mut m = room::Member::from_record(&rec, limits.max_deliveries);
                    // A cursor never moves past the log.
                    if m.next_seq > room.committed_seq + 1 {
                        warn!(room = %room.name, member = %name, "cursor past the end of the log; clamped");
                        m.next_seq = room.committed_seq + 1;
                    }
                    // Nor stays before it (the room was trimmed before the
                    // cursor was written): it is owed a gap notice.
                    m.trim(room.first_seq);
                    let key = MemberKey::from_stored(name);
                    if matches!(key, MemberKey::Group(_)) {
                        m.group = Some(room::GroupMode::KeyOrdered);
                        m.owner = None;
                    }
                    room.members.insert(key, m);
                }
                None => warn!(room_id, member = %name, "cursor of an unknown room ignored"),
            }
        }
        let window = limits.dedup_window_ms;
        let wall = now_ms();
        let mut dedup_records = recovered.dedup;
        dedup_records.sort_by_key(|(_, _, rec)| rec.timestamp_ms);
        for (ns, id, rec) in dedup_records {
            let age = wall.saturating_sub(rec.timestamp_ms);
            if age >= window {
                if let Some(b) = brokers.first_mut() {
                    b.pipeline.batch().dedup_expire_before = Some(wall.saturating_sub(window));
                }
                continue;
            }
            // Each shard remembers the id with the seqs of its own rooms.
            let mut parts: Vec<Vec<(Arc<str>, u64)>> = vec![Vec::new(); shards];
            for (room_id, seq) in rec.seqs {
                let Some(shard) = placed.get(&room_id).copied() else {
                    continue;
                };
                let name = brokers
                    .get(shard)
                    .and_then(|b| b.rooms.get(&room_id))
                    .map(|room| room.name.clone());
                if let (Some(name), Some(part)) = (name, parts.get_mut(shard)) {
                    part.push((name, seq));
                }
            }
            // Rooms all gone: every shard answers a retry (with no seqs).
            let everywhere = parts.iter().all(Vec::is_empty);
            let expires = Instant::now() + Duration::from_millis(window - age);
            for (b, seqs) in brokers.iter_mut().zip(parts) {
                if everywhere || !seqs.is_empty() {
                    b.dedup.restore(&ns, id, seqs.into(), expires);
                }
            }
        }
        info!(
            rooms = placed.len(),
            dedup_ids = brokers.iter().map(|b| b.dedup.len()).sum::<usize>(),
            shards,
            "storage recovered"
        );
        Ok(brokers)
    }

    /// Shard `shard` of `shards`, empty.
    fn shard(
        shard: usize,
        shards: usize,
        config: &Arc<Config>,
        store: &Arc<dyn Store>,
        tenants: &Arc<Tenants>,
        ids: Arc<std::sync::atomic::AtomicU64>,
    ) -> Broker {
        let metrics = tenants.metrics.clone();
        let lag = metrics.enabled.then(|| metrics.delivery_lag.clone());
        // The limit is the broker's: each shard holds its share.
        let max_ids = match config.limits.max_dedup_ids {
            0 => 0,
            n => n.div_ceil(shards as u64),
        };
        let dedup = DedupTable::new(
            config.limits.dedup_window(),
            max_ids,
            metrics.dedup_evicted.clone(),
        );
        let mut broker = Broker {
            shard,
            metrics,
            started: Instant::now(),
            config: config.clone(),
            outlet: SessionOutlet::new(
                Reads::new(store.clone(), config.storage.max_reads_in_flight as usize),
                crate::session::reply_slots(&config.limits, shards),
                lag,
            ),
            tenants: tenants.clone(),
            rooms: Registry::new(ids),
            dedup,
            pipeline: WritePipeline::new(
                store.clone(),
                Duration::from_millis(config.storage.cursor_sync_interval_ms),
                Duration::from_millis(config.storage.commit_timeout_ms),
            ),
            retention: RetentionState::default(),
        };
        broker.refresh_retention();
        broker
    }

    /// Runs the actor until `shutdown` is cancelled (then drains: writes
    /// and confirms what was accepted, syncs cursors) or the store fails.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let result = self.serve(&mut rx, &shutdown).await;
        if let Err(e) = &result {
            error!(error = %e, "storage failed; stopping the broker (fail-stop)");
            shutdown.cancel();
            self.kill_all();
            return result;
        }
        // Drain: take what sessions already queued, then write everything.
        rx.close();
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
        self.pipeline.mark_all_dirty(&self.rooms);
        loop {
            self.pipeline.start(true, &self.rooms);
            if self.pipeline.idle() {
                break;
            }
            let limit = Duration::from_millis(self.config.storage.commit_timeout_ms);
            let outcome = match tokio::time::timeout(limit, self.pipeline.finished()).await {
                Ok(outcome) => outcome,
                Err(_) => CommitOutcome::Failed(StoreError::Stalled(limit)),
            };
            if let Err(e) = self.on_commit(outcome) {
                error!(error = %e, "storage failed during shutdown");
                self.kill_all();
                return Err(e);
            }
        }
        let flushed = self.pipeline.flush().await;
        self.close_all(ErrorCode::ShuttingDown, "the broker is shutting down");
        flushed.map(|_| ())
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Command>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                outcome = self.pipeline.finished() => self.on_commit(outcome)?,
                _ = shutdown.cancelled() => return Ok(()),
                Some(event) = self.outlet.reads.next() => self.on_store_event(event),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.handle(cmd);
                        // Take what else is queued before writing, so one
                        // batch covers it all.
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return Ok(()),
                },
                _ = sleep_until_opt(wake) => {
                    self.pipeline.check_stall()?;
                    self.on_timers();
                    self.maybe_trim();
                }
            }
            // Under a steady stream of commands the select above may
            // never pick the timer branch: run what is due here too,
            // the commit watchdog included.
            if self.next_wake().is_some_and(|w| w <= Instant::now()) {
                self.pipeline.check_stall()?;
                self.on_timers();
                self.maybe_trim();
            }
            self.pipeline.start(false, &self.rooms);
            self.compact_timers();
            // A namespace made or deleted (through another shard, maybe)
            // may change whether retention sweeps.
            if self.retention.generation != self.tenants.generation() {
                self.refresh_retention();
            }
        }
    }

    /// Sweeps out timers whose member left or re-armed.
    fn compact_timers(&mut self) {
        let rooms = &self.rooms;
        self.outlet.timers.compact(|t| {
            rooms
                .get(&t.room)
                .and_then(|r| r.members.get(&t.member))
                .is_some_and(|m| m.armed == Some(t.deadline))
        });
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake = self.outlet.timers.next_deadline();
        let mut consider = |t: Instant| {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        };
        if let Some(t) = self.pipeline.next_wake() {
            consider(t);
        }
        if let Some(t) = self.dedup.next_expiry() {
            consider(t);
        }
        if let Some(t) = self.outlet.reads.next_retry() {
            consider(t);
        }
        if let Some(t) = self.retention.next_sweep() {
            consider(t);
        }
        wake
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register {
                info,
                tx,
                blocked,
                kill,
                reply,
            } => {
                // The namespace may have been deleted (or deleted and made
                // again) since the session looked it up.
                let current = self
                    .tenants
                    .get(&info.namespace)
                    .is_some_and(|t| Arc::ptr_eq(&t, &info.tenant));
                if !current {
                    let _ = reply.send(None);
                    return;
                }
                // (Logged by the session, with every shard's answer.)
                let resumed = self.has_durable_state(&info);
                self.outlet.sessions.insert(
                    info.id,
                    SessionEntry {
                        info,
                        tx,
                        blocked,
                        kill,
                        memberships: HashMap::new(),
                    },
                );
                let _ = reply.send(Some(resumed));
            }
            Command::Unregister { session } => self.unregister(session),
            Command::Request {
                session,
                request_id,
                permit,
                request,
            } => {
                if !self.outlet.sessions.contains_key(&session) {
                    return;
                }
                let admin = matches!(request, Request::Admin(_));
                // Join, publish and admin are methods (they use nearly
                // every part); the others are lent the parts they use.
                let result = match request {
                    Request::Join(r) => self.join(session, r),
                    Request::Leave(r) => leave::leave(
                        &mut self.rooms,
                        &mut self.outlet,
                        &mut self.pipeline,
                        session,
                        r,
                    ),
                    Request::Publish(r) => self.publish(session, r),
                    Request::Ack(r) => ack::ack(
                        &mut self.rooms,
                        &self.outlet,
                        &mut self.pipeline,
                        session,
                        r,
                    ),
                    Request::Nack(r) => nack::nack(
                        &mut self.rooms,
                        &mut self.outlet,
                        &mut self.pipeline,
                        session,
                        r,
                    ),
                    Request::InProgress(r) => {
                        in_progress::in_progress(&mut self.rooms, &mut self.outlet, session, r)
                    }
                    Request::Members(r) => {
                        members::members(&self.rooms, &self.outlet, &self.config, session, r)
                    }
                    Request::Admin(r) => self.admin(session, r),
                };
                // The one place where the actor turns an outcome into a frame.
                match result {
                    Ok(reply) => self.answer(session, request_id, permit, reply),
                    Err(e) => self.refuse(session, request_id, permit, e, admin),
                }
            }
            Command::Stats {
                max_rooms,
                order,
                reply,
            } => {
                let _ = reply.send(self.stats(max_rooms, order));
            }
            Command::ListRooms { namespace, reply } => {
                let _ = reply.send(list_rooms::list_rooms(&self.rooms, &namespace));
            }
            Command::AdminRooms {
                namespace,
                budget,
                reply,
            } => {
                let _ = reply.send(self.room_infos(namespace.as_deref(), budget));
            }
            Command::Kick { session, reply } => {
                let _ = reply.send(self.kick(session).is_ok());
            }
            Command::DeleteNamespace {
                name,
                primary,
                reply,
            } => self.delete_namespace(&name, primary, reply),
            Command::Writable { session } => {
                let members: Vec<(RoomId, MemberKey)> = match self.outlet.sessions.get(&session) {
                    Some(s) => s.memberships.values().cloned().collect(),
                    None => return,
                };
                for (room, key) in members {
                    self.pump(room, &key);
                }
            }
        }
    }

    fn has_durable_state(&self, info: &SessionInfo) -> bool {
        let Some(client) = &info.client_id else {
            return false;
        };
        let Some(rooms) = self.rooms.in_namespace(&info.namespace) else {
            return false;
        };
        rooms.values().any(|id| {
            self.rooms.get(id).is_some_and(|room| {
                room.members.iter().any(|(k, m)| {
                    matches!(k, MemberKey::Durable(_)) && m.owner.as_ref() == Some(client)
                        || matches!(k, MemberKey::Durable(n) if n == client)
                })
            })
        })
    }

    /// Tells every session why it is being closed, then drops them: each
    /// writer sends what is queued (this error last) and closes.
    fn close_all(&mut self, code: ErrorCode, message: &str) {
        for s in self.outlet.sessions.values() {
            let _ = s.tx.try_send(Outbound::Reply {
                frame: Box::new(error_frame(0, code, message)),
                permit: None,
            });
        }
        self.outlet.sessions.clear();
    }

    fn kill_all(&mut self) {
        self.close_all(ErrorCode::StorageFailure, "the broker's storage failed");
    }

    /// Answers a request with `error`. Logged like the session's own
    /// refusals (an admin request's with its own line).
    fn refuse(
        &mut self,
        session: Uuid,
        request_id: u64,
        permit: RequestSlot,
        error: BrokerError,
        admin: bool,
    ) {
        let error = pb::Error::from(error);
        if admin {
            info!(session = %session, request_id, code = error.name, message = %error.message, "admin request refused");
        } else {
            info!(session = %session, request_id, code = error.name, message = %error.message, "request refused");
        }
        let frame = pb::ServerFrame {
            request_id,
            body: Some(pb::server_frame::Body::Error(error)),
        };
        self.reply(session, frame, Some(permit));
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let mut to_pump = Vec::new();
        while let Some(t) = self.outlet.timers.pop_due(now) {
            let Some(m) = self
                .rooms
                .get_mut(&t.room)
                .and_then(|r| r.members.get_mut(&t.member))
            else {
                continue;
            };
            if m.on_timer(t.deadline, now, t.room, &t.member, &mut self.outlet.timers) {
                to_pump.push((t.room, t.member));
            }
        }
        to_pump.sort_by_key(|a| a.0);
        to_pump.dedup();
        for (room, key) in to_pump {
            self.pump(room, &key);
        }
        for room in self.outlet.reads.due_retries(now) {
            self.pump_room(room);
        }
        if self.dedup.expire(now) {
            let cutoff = now_ms().saturating_sub(self.config.limits.dedup_window_ms);
            self.pipeline.batch().dedup_expire_before = Some(cutoff);
        }
    }

    /// Storage work done beside the actor has reported.
    fn on_store_event(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Read { room, from, result } => {
                self.outlet.reads.finished(room, from);
                match result {
                    // Nothing there (trimmed meanwhile): the members moved
                    // on with the trim, or ask again when next pumped.
                    Ok(msgs) if msgs.is_empty() => {}
                    Ok(msgs) => {
                        let Some(r) = self.rooms.get_mut(&room) else {
                            return;
                        };
                        // Lent to the room for one pump of its members.
                        r.lend(from, msgs);
                        self.pump_room(room);
                        if let Some(r) = self.rooms.get_mut(&room) {
                            r.release();
                        }
                    }
                    // The members wait rather than lose the messages; the
                    // room is pumped again after `storage.read_retry_ms`,
                    // which asks for the read anew.
                    Err(e) => {
                        let retry = Duration::from_millis(self.config.storage.read_retry_ms);
                        error!(room_id = room, from, error = %e, retry_ms = self.config.storage.read_retry_ms, "cannot read stored messages; not delivered yet, will try again");
                        self.outlet.reads.retry_at(room, Instant::now() + retry);
                    }
                }
            }
            StoreEvent::Retention {
                room,
                first,
                floor,
                bytes,
            } => self.retention_scanned(room, first, floor, bytes),
            StoreEvent::Resume {
                session,
                request_id,
                permit,
                request,
            } => self.handle(Command::Request {
                session,
                request_id,
                permit,
                request,
            }),
        }
    }

    fn on_commit(&mut self, outcome: CommitOutcome) -> Result<(), StoreError> {
        match self.pipeline.complete(outcome)? {
            Committed::Synced {
                flushed,
                batch,
                done,
                took,
            } => {
                if self.metrics.enabled {
                    // The write and the sync, as the actor sees them end.
                    self.metrics.commit_flush.observe(took.as_secs_f64());
                    let messages: usize = batch.appends.iter().map(|(_, m)| m.len()).sum();
                    if messages > 0 {
                        self.metrics.commit_batch.observe(messages as f64);
                    }
                }
                self.confirm(&flushed, batch, done);
            }
            Committed::Written { batch, done } => self.written(batch, done),
        }
        Ok(())
    }

    /// A batch written but not synced: its (`batched`) messages become
    /// deliverable and its dedup ids stored, but nothing that promises
    /// "on disk" is sent: such replies, and retries waiting on a dedup id,
    /// wait for the next commit, which syncs.
    fn written(&mut self, batch: Arc<WriteBatch>, done: InFlightBatch) {
        self.make_visible(&batch);
        // Not expected (a batch with replies is synced), but never
        // answered early.
        for c in done.confirms {
            self.pipeline.after_sync(c);
        }
        for key in done.dedup {
            let Some((seqs, waiters)) = self.dedup.stored(key, Instant::now()) else {
                continue;
            };
            for (session, request_id, permit) in waiters {
                self.pipeline.after_sync(PendingConfirm {
                    session,
                    reply: PendingReply::Confirm {
                        request_id,
                        seqs: seqs.clone(),
                        duplicate: true,
                    },
                    permit,
                    then_pump: None,
                    received: None,
                });
            }
        }
    }

    /// Makes a committed batch's messages deliverable.
    fn make_visible(&mut self, batch: &WriteBatch) {
        let max_count = self.config.storage.room_cache_messages as usize;
        let max_bytes = usize::try_from(self.config.storage.room_cache_bytes).unwrap_or(usize::MAX);
        let mut touched = Vec::with_capacity(batch.appends.len());
        for (room_id, msgs) in &batch.appends {
            if let Some(room) = self.rooms.get_mut(room_id) {
                room.committed(msgs, max_count, max_bytes);
                touched.push(*room_id);
            }
        }
        for room_id in touched {
            self.pump_room(room_id);
        }
    }

    /// Makes a synced batch visible: messages become deliverable, publishes
    /// are confirmed. Requires the proof that the batch was synced.
    fn confirm(
        &mut self,
        _flushed: &crate::storage::Flushed,
        batch: Arc<WriteBatch>,
        done: InFlightBatch,
    ) {
        let max_count = self.config.storage.room_cache_messages as usize;
        let max_bytes = usize::try_from(self.config.storage.room_cache_bytes).unwrap_or(usize::MAX);
        let mut touched = Vec::with_capacity(batch.appends.len());
        for (room_id, msgs) in &batch.appends {
            if let Some(room) = self.rooms.get_mut(room_id) {
                room.committed(msgs, max_count, max_bytes);
                touched.push(*room_id);
            }
        }
        let mut joined = Vec::new();
        let metrics = self.metrics.clone();
        let confirm_time = metrics
            .enabled
            .then(|| (&metrics.publish_confirm, Instant::now()));
        for c in done.confirms {
            if let (Some((h, now)), Some(received)) = (confirm_time, c.received) {
                h.observe(now.saturating_duration_since(received).as_secs_f64());
            }
            match c.reply {
                PendingReply::Frame(frame) => self.reply(c.session, frame, Some(c.permit)),
                PendingReply::Notify(tx, count) => {
                    let _ = tx.send(Ok(count));
                }
                PendingReply::Confirm {
                    request_id,
                    seqs,
                    duplicate,
                } => self.confirm_publish(
                    c.session,
                    request_id,
                    seqs,
                    duplicate,
                    pb::Durability::Sync,
                    c.permit,
                ),
            }
            if let Some((room_id, key)) = c.then_pump {
                if let Some(m) = self
                    .rooms
                    .get_mut(&room_id)
                    .and_then(|r| r.members.get_mut(&key))
                {
                    m.joining = false;
                }
                joined.push((room_id, key));
            }
        }
        for key in done.dedup {
            let Some((seqs, waiters)) = self.dedup.stored(key, Instant::now()) else {
                continue;
            };
            for (session, request_id, permit) in waiters {
                let sync = pb::Durability::Sync;
                self.confirm_publish(session, request_id, seqs.clone(), true, sync, permit);
            }
        }
        for room_id in touched {
            self.pump_room(room_id);
        }
        for (room_id, key) in joined {
            self.pump(room_id, &key);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
