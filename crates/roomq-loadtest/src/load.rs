//! The load run: publishers and subscribers against a running broker.
//!
//! Each publisher is one connection that keeps up to `--window` publishes in
//! flight (pipelined on the connection). Each subscriber is one connection
//! holding one membership; it records every delivery in a
//! [`Tracker`](crate::verify::Tracker) and acknowledges cumulatively
//! (protocol-level connection), or, with `--sdk-acks`, through the SDK's
//! everyday API: a `Client`, a `Subscription` and `Delivery::ack()` per
//! message, awaited before the next one is taken. The
//! [`chaos`](crate::chaos) mode reuses the same publisher and subscriber
//! states across broker restarts.
//!
//! Timeline of a run: subscribers connect and join; publishers connect;
//! then the clock starts: warm-up, the measured period, the drain (no more
//! publishes; waiting for confirmations and deliveries), the audit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use roomq_client::proto as pb;
use roomq_client::raw::{ConnectOptions, Connection, Deliveries};
use roomq_client::{Client, ClientError, JoinOptions, ReconnectPolicy, Start, Subscription};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::pacer::{self, Schedule};
use crate::payload::{self, Clock, Stamp};
use crate::report::{self, bump, LatencySummary, Live, Progress, Report, Verdict};
use crate::verify::{self, Audit, Counts, Expected, Tracker, FOREIGN};

/// Where a new member starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only messages published after the join.
    New,
    /// From the first stored message (replay a backlog).
    Earliest,
    /// Where the member's stored cursor is (new for a new member).
    Resume,
}

impl StartAt {
    fn wire(self) -> pb::StartPosition {
        match self {
            StartAt::New => pb::StartPosition::New,
            StartAt::Earliest => pb::StartPosition::Earliest,
            StartAt::Resume => pb::StartPosition::Resume,
        }
    }

    fn sdk(self) -> Start {
        match self {
            StartAt::New => Start::New,
            StartAt::Earliest => Start::Earliest,
            StartAt::Resume => Start::Resume,
        }
    }
}

/// The load run's command line.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RunArgs {
    /// Broker address (loopback only in this project's benchmarks).
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub addr: String,
    /// Start this roomqd binary on a temporary data directory and a free
    /// 127.0.0.1 port for the run, instead of using --addr (for CI).
    #[arg(long)]
    pub roomqd: Option<std::path::PathBuf>,
    /// With --roomqd: connect over TCP, or WebSocket on the HTTP listener.
    /// (With --addr, the address says: `ws://host:port` is WebSocket.)
    #[arg(long, value_enum, default_value_t = crate::daemon::Transport::Tcp)]
    pub transport: crate::daemon::Transport,
    /// Namespace to connect to.
    #[arg(long, default_value = "/")]
    pub namespace: String,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishers per room, one connection each.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Subscribers per room, one connection each; durable members unless
    /// --ephemeral.
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// Subscribers join as ephemeral members.
    #[arg(long)]
    pub ephemeral: bool,
    /// Payload bytes per message (at least 32, the stamp).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 256)]
    pub window: u32,
    /// Give every publish a dedup id, as the SDKs do. Without it (the
    /// workloads' default) the broker keeps no dedup records.
    #[arg(long)]
    pub dedup_ids: bool,
    /// Total messages per second over all publishers; 0 = closed loop (as
    /// fast as confirmations allow). With a rate, latency is measured from
    /// each message's intended send time.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to measure, after the warm-up [default: 10 unless --messages].
    #[arg(long, conflicts_with = "messages")]
    pub duration: Option<f64>,
    /// Messages to publish in all (instead of --duration). With
    /// --publishers 0, the number of messages to replay is what the room
    /// holds at the join.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds at the start excluded from rates and latencies (not from the
    /// loss check).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Exit non-zero if any confirmed message was lost, duplicated or
    /// delivered out of order (see docs/benchmarks.md for the definitions).
    #[arg(long)]
    pub verify: bool,
    /// Where new members start.
    #[arg(long, value_enum, default_value_t = StartAt::New)]
    pub start: StartAt,
    /// Name rooms `PREFIX-0`, `PREFIX-1`, …; by default each run uses new
    /// rooms named after its run id. Reuse a prefix to replay a backlog.
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Members' max_in_flight; 0 = the broker's default.
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: u32,
    /// Subscribers acknowledge cumulatively after this many deliveries (and
    /// every 50 ms when any are unacknowledged).
    #[arg(long, default_value_t = 100)]
    pub ack_every: u32,
    /// Subscribers use the Rust SDK (`roomq_client::Client`) and
    /// acknowledge each delivery with `Delivery::ack().await`, the
    /// everyday API, instead of cumulative acks on a protocol-level
    /// connection (`--ack-every` does not apply).
    #[arg(long)]
    pub sdk_acks: bool,
    /// Seconds to wait, after publishing stops, for confirmations and
    /// deliveries.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 900.0)]
    pub max_secs: f64,
    /// The process id of the broker at --addr, to report its CPU time per
    /// message (Linux). Not needed with --roomqd.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Event name of the published messages.
    #[arg(long, default_value = "lt")]
    pub event: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl RunArgs {
    /// Checks the flags against each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.rooms == 0 {
            bail!("--rooms must be at least 1");
        }
        if self.publishers == 0 && self.subscribers == 0 {
            bail!("nothing to do: --publishers and --subscribers are both 0");
        }
        let publishers = u64::from(self.rooms) * u64::from(self.publishers);
        let subscribers = u64::from(self.rooms) * u64::from(self.subscribers);
        if publishers >= u64::from(payload::MAX_PUBLISHERS) {
            bail!("at most {} publishers in all", payload::MAX_PUBLISHERS - 1);
        }
        if publishers + subscribers > 10_000 {
            bail!("at most 10,000 connections (the broker's default limit)");
        }
        if self.size < payload::HEADER_LEN {
            bail!(
                "--size must be at least {} bytes (the stamp)",
                payload::HEADER_LEN
            );
        }
        if self.size > 1024 * 1024 - 2048 {
            bail!("--size must leave room below the 1 MiB frame limit");
        }
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be 0 (closed loop) or a positive number");
        }
        for (name, v) in [
            ("--warmup", self.warmup),
            ("--drain-timeout", self.drain_timeout),
            ("--max-secs", self.max_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be a non-negative number of seconds");
            }
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
        }
        if self.messages == Some(0) && self.publishers > 0 {
            bail!("--messages must be at least 1");
        }
        if self.ack_every == 0 {
            bail!("--ack-every must be at least 1");
        }
        Ok(())
    }

    fn measured(&self) -> Option<Duration> {
        match (self.duration, self.messages) {
            (Some(d), _) => Some(Duration::from_secs_f64(d)),
            (None, Some(_)) => None,
            (None, None) if self.publishers == 0 => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// What every task of a run shares.
#[derive(Debug)]
pub struct Ctx {
    pub clock: Clock,
    pub run_id: u32,
    pub size: usize,
    pub event: String,
    /// Samples sent (latency) or received (rates) before this are warm-up.
    pub warm_end_ns: u64,
    /// End of the measured period; `u64::MAX` when the run is counted in
    /// messages rather than time.
    pub measure_end_ns: u64,
    /// Nothing runs past this.
    pub hard_end: Instant,
    pub live: Live,
    /// Per room: the last seq to wait for (`u64::MAX` until known).
    pub targets: Vec<AtomicU64>,
    /// Subscribers give up waiting at this time (`u64::MAX` until set).
    pub drain_deadline_ns: AtomicU64,
    /// The first error seen, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
    /// Publishes carry a dedup id (`--dedup-ids`).
    pub dedup_ids: bool,
}

impl Ctx {
    pub fn new(clock: Clock, run_id: u32, size: usize, event: String, rooms: usize) -> Ctx {
        Ctx {
            clock,
            run_id,
            size,
            event,
            warm_end_ns: 0,
            measure_end_ns: u64::MAX,
            hard_end: Instant::now() + Duration::from_secs(24 * 3600),
            live: Live::default(),
            targets: (0..rooms).map(|_| AtomicU64::new(u64::MAX)).collect(),
            drain_deadline_ns: AtomicU64::new(u64::MAX),
            first_error: std::sync::Mutex::new(None),
            dedup_ids: false,
        }
    }

    fn in_measure(&self, ns: u64) -> bool {
        ns >= self.warm_end_ns && ns <= self.measure_end_ns
    }

    /// Keeps the first error for the report.
    pub fn note_error(&self, what: impl FnOnce() -> String) {
        if let Ok(mut e) = self.first_error.lock() {
            if e.is_none() {
                *e = Some(what());
            }
        }
    }
}

/// Why a publisher or subscriber session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It did what it was asked.
    Done,
    /// The connection closed (the broker went away).
    ConnectionLost,
    /// It ran out of time.
    Deadline,
}

/// Where a publisher's messages come from.
pub enum Feed {
    /// As fast as the window allows, until `stop_at` or `remaining` runs out.
    Closed {
        remaining: Option<u64>,
        stop_at: Instant,
    },
    /// When the pacer says (open loop); ends when the pacer hangs up.
    Open { ticks: mpsc::Receiver<u64> },
}

/// One publisher: its identity and everything it has counted. Survives
/// reconnects (chaos), so its sequence keeps growing.
pub struct Publisher {
    pub id: u32,
    pub room_index: usize,
    pub room: String,
    /// Next per-publisher sequence to send.
    pub next_seq: u64,
    /// Room seq confirmed for each sequence (index `seq - 1`); 0 = none.
    pub room_seqs: Vec<u64>,
    pub published: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub duplicate_confirms: u64,
    /// Confirmations received in the measured period.
    pub measured_confirms: u64,
    pub last_confirm_ns: u64,
    /// Intended send time → confirmation, ns.
    pub latency: Histogram<u64>,
    /// Intended send time → the publish handed to the connection, ns: the
    /// generator's own lateness (open loop), included in `latency`.
    pub send_lag: Histogram<u64>,
}

type PublishResult = (u64, u64, Result<pb::PublishOk, ClientError>);

impl Publisher {
    pub fn new(id: u32, room_index: usize, room: String) -> anyhow::Result<Publisher> {
        Ok(Publisher {
            id,
            room_index,
            room,
            next_seq: 1,
            room_seqs: Vec::new(),
            published: 0,
            confirmed: 0,
            failed: 0,
            duplicate_confirms: 0,
            measured_confirms: 0,
            last_confirm_ns: 0,
            latency: report::new_histogram()?,
            send_lag: report::new_histogram()?,
        })
    }

    /// Publishes from `feed` on `conn`, `window` at a time, until the feed
    /// ends, the connection is lost or `ctx.hard_end`. Waits for every
    /// publish in flight before returning (those unanswered by the hard end
    /// count as failed).
    pub async fn run(
        &mut self,
        conn: &Connection,
        ctx: &Ctx,
        window: usize,
        mut feed: Feed,
    ) -> Ended {
        let mut inflight = FuturesUnordered::new();
        let mut stopping = false;
        let mut ended = Ended::Done;
        loop {
            if !stopping {
                match &mut feed {
                    Feed::Closed { remaining, stop_at } => {
                        while inflight.len() < window {
                            if *remaining == Some(0)
                                || Instant::now() >= *stop_at
                                || self.next_seq > payload::MAX_PUBLISHER_SEQ
                            {
                                stopping = true;
                                break;
                            }
                            if let Some(r) = remaining {
                                *r -= 1;
                            }
                            inflight.push(self.send(conn, ctx, ctx.clock.now_ns()));
                        }
                    }
                    Feed::Open { ticks } => {
                        while inflight.len() < window {
                            match ticks.try_recv() {
                                Ok(due) => inflight.push(self.send(conn, ctx, due)),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => {
                                    stopping = true;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            if stopping && inflight.is_empty() {
                return ended;
            }
            let wait_tick = !stopping && inflight.len() < window;
            tokio::select! {
                Some((seq, intended, result)) = inflight.next(), if !inflight.is_empty() => {
                    if !self.on_reply(ctx, seq, intended, result) && !stopping {
                        stopping = true;
                        ended = Ended::ConnectionLost;
                    }
                }
                tick = next_tick(&mut feed), if wait_tick => match tick {
                    Some(due) => inflight.push(self.send(conn, ctx, due)),
                    None => stopping = true,
                },
                _ = tokio::time::sleep_until(ctx.hard_end) => {
                    let n = inflight.len() as u64;
                    self.failed += n;
                    ctx.live.failed.fetch_add(n, Ordering::Relaxed);
                    ctx.note_error(|| format!("{n} publishes unanswered at the time limit"));
                    return Ended::Deadline;
                }
            }
        }
    }

    /// Starts one publish; the returned future resolves with its outcome.
    fn send(
        &mut self,
        conn: &Connection,
        ctx: &Ctx,
        intended_ns: u64,
    ) -> impl std::future::Future<Output = PublishResult> + use<> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if ctx.in_measure(intended_ns) {
            let lag = ctx.clock.now_ns().saturating_sub(intended_ns);
            self.send_lag.saturating_record(lag.max(1));
        }
        self.room_seqs.push(0);
        self.published += 1;
        bump(&ctx.live.published);
        let stamp = Stamp {
            run: ctx.run_id,
            publisher: self.id,
            seq,
            intended_ns,
        };
        let dedup_id = if ctx.dedup_ids {
            // Unique per run, publisher and sequence.
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&ctx.run_id.to_be_bytes());
            id[4..8].copy_from_slice(&self.id.to_be_bytes());
            id[8..].copy_from_slice(&seq.to_be_bytes());
            bytes::Bytes::copy_from_slice(&id)
        } else {
            bytes::Bytes::new()
        };
        let publish = pb::Publish {
            rooms: vec![self.room.clone()],
            event: ctx.event.clone(),
            payload: stamp.encode(ctx.size),
            dedup_id,
            ..Default::default()
        };
        let conn = conn.clone();
        async move { (seq, intended_ns, conn.publish_with(publish).await) }
    }

    /// Records one answer; false if the connection is gone.
    fn on_reply(
        &mut self,
        ctx: &Ctx,
        seq: u64,
        intended_ns: u64,
        result: Result<pb::PublishOk, ClientError>,
    ) -> bool {
        let now = ctx.clock.now_ns();
        match result {
            Ok(ok) => {
                self.confirmed += 1;
                bump(&ctx.live.confirmed);
                let room_seq = ok.seqs.first().map_or(0, |s| s.seq);
                if let Some(slot) = usize::try_from(seq - 1)
                    .ok()
                    .and_then(|i| self.room_seqs.get_mut(i))
                {
                    *slot = room_seq;
                }
                if ok.duplicate {
                    self.duplicate_confirms += 1;
                }
                if ctx.in_measure(intended_ns) {
                    self.latency
                        .saturating_record(now.saturating_sub(intended_ns).max(1));
                }
                if ctx.in_measure(now) {
                    self.measured_confirms += 1;
                }
                self.last_confirm_ns = self.last_confirm_ns.max(now);
                true
            }
            Err(e) => {
                self.failed += 1;
                bump(&ctx.live.failed);
                let lost = matches!(e, ClientError::Closed | ClientError::Io(_));
                ctx.note_error(|| format!("publish failed: {e}"));
                !lost
            }
        }
    }

    /// Adds this publisher's confirmations to its room's expectations.
    pub fn expect_into(&self, expected: &mut Expected) {
        for (i, room_seq) in self.room_seqs.iter().enumerate() {
            if *room_seq != 0 {
                expected.insert(*room_seq, payload::message_key(self.id, i as u64 + 1));
            }
        }
    }
}

async fn next_tick(feed: &mut Feed) -> Option<u64> {
    match feed {
        Feed::Open { ticks } => ticks.recv().await,
        Feed::Closed { .. } => std::future::pending().await,
    }
}

/// When a subscriber session is done.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// When it has everything up to its room's target (set by the run once
    /// the publishers are done), or at the drain deadline.
    RoomTarget,
    /// When it has everything the room held at the join (backlog replay).
    StoredAtJoin,
    /// When the connection closes (chaos) or at the hard end.
    Closed,
}

/// How subscribers join.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    pub addr: String,
    pub namespace: String,
    pub ephemeral: bool,
    pub start: StartAt,
    pub max_in_flight: u32,
    pub ack_every: u64,
    /// Through the SDK, one `Delivery::ack()` per message (`--sdk-acks`).
    pub sdk_acks: bool,
}

/// One member: its identity and its record of deliveries. Survives
/// reconnects (chaos).
pub struct Subscriber {
    pub room_index: usize,
    pub room: String,
    pub client_id: String,
    pub tracker: Option<Tracker>,
    pub sessions: u32,
    /// `JoinOk.last_seq` of the latest join.
    pub last_seq_at_join: u64,
    /// Intended send time → delivery, ns (first deliveries only).
    pub latency: Histogram<u64>,
    pub measured_deliveries: u64,
    pub first_delivery_ns: u64,
    pub last_delivery_ns: u64,
    pub foreign: u64,
    pub ack_errors: Arc<AtomicU64>,
}

/// A subscriber's live session.
pub enum Session {
    /// A protocol-level connection, acknowledging cumulatively.
    Raw {
        conn: Connection,
        deliveries: Deliveries,
        subscription: String,
    },
    /// The SDK, acknowledging each delivery (`--sdk-acks`).
    Sdk { client: Client, sub: Subscription },
}

impl Subscriber {
    pub fn new(room_index: usize, room: String, client_id: String) -> anyhow::Result<Subscriber> {
        Ok(Subscriber {
            room_index,
            room,
            client_id,
            tracker: None,
            sessions: 0,
            last_seq_at_join: 0,
            latency: report::new_histogram()?,
            measured_deliveries: 0,
            first_delivery_ns: 0,
            last_delivery_ns: 0,
            foreign: 0,
            ack_errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Connects and joins. The first join starts at `plan.start`; later ones
    /// resume from the stored cursor.
    pub async fn join(&mut self, plan: &JoinPlan) -> anyhow::Result<Session> {
        if plan.sdk_acks {
            return self.join_sdk(plan).await;
        }
        let mut opts = ConnectOptions::new(plan.addr.clone())
            .namespace(plan.namespace.clone())
            .client_name("roomq-loadtest");
        if !plan.ephemeral {
            opts = opts.client_id(self.client_id.clone());
        }
        let (conn, deliveries) = Connection::connect(opts)
            .await
            .with_context(|| format!("subscriber {} connecting", self.client_id))?;
        let start = if self.sessions == 0 {
            plan.start
        } else {
            StartAt::Resume
        };
        let mode = if plan.ephemeral {
            pb::MemberMode::Ephemeral
        } else {
            pb::MemberMode::Durable
        };
        let ok = conn
            .join_with(pb::Join {
                room: self.room.clone(),
                mode: mode as i32,
                start: start.wire() as i32,
                max_in_flight: plan.max_in_flight,
                ..Default::default()
            })
            .await
            .with_context(|| format!("subscriber {} joining {}", self.client_id, self.room))?;
        match &mut self.tracker {
            None => self.tracker = Some(Tracker::new(ok.next_seq)),
            Some(t) => t.new_session(),
        }
        self.sessions += 1;
        self.last_seq_at_join = ok.last_seq;
        Ok(Session::Raw {
            conn,
            deliveries,
            // Acks name the membership by the label it was joined with (""
            // here), which deliveries carry too; `JoinOk.subscription` holds
            // the durable name instead, which the broker does not accept
            // in an ack.
            subscription: String::new(),
        })
    }

    /// [`Subscriber::join`] through the SDK: a client that does not
    /// reconnect (a lost connection ends the session, as on the raw path).
    async fn join_sdk(&mut self, plan: &JoinPlan) -> anyhow::Result<Session> {
        let mut builder = Client::builder(plan.addr.clone())
            .namespace(plan.namespace.clone())
            .client_name("roomq-loadtest")
            .reconnect(ReconnectPolicy::never());
        if !plan.ephemeral {
            builder = builder.client_id(self.client_id.clone());
        }
        let client = builder
            .connect()
            .await
            .with_context(|| format!("subscriber {} connecting", self.client_id))?;
        let start = if self.sessions == 0 {
            plan.start
        } else {
            StartAt::Resume
        };
        let mut opts = JoinOptions::new()
            .start(start.sdk())
            .max_in_flight(plan.max_in_flight);
        if plan.ephemeral {
            opts = opts.ephemeral();
        }
        let sub = client
            .join(&self.room, opts)
            .await
            .with_context(|| format!("subscriber {} joining {}", self.client_id, self.room))?;
        match &mut self.tracker {
            None => self.tracker = Some(Tracker::new(sub.next_seq_at_join())),
            Some(t) => t.new_session(),
        }
        self.sessions += 1;
        self.last_seq_at_join = sub.last_seq_at_join();
        Ok(Session::Sdk { client, sub })
    }

    fn target(&self, ctx: &Ctx, until: Until) -> u64 {
        match until {
            Until::RoomTarget => ctx
                .targets
                .get(self.room_index)
                .map_or(u64::MAX, |t| t.load(Ordering::Relaxed)),
            Until::StoredAtJoin => self.last_seq_at_join,
            Until::Closed => u64::MAX,
        }
    }

    fn done(&self, ctx: &Ctx, until: Until) -> bool {
        let target = self.target(ctx, until);
        target != u64::MAX
            && self
                .tracker
                .as_ref()
                .is_some_and(|t| t.next_missing() > target)
    }

    /// Receives, records and acknowledges deliveries until `until` says so,
    /// the connection closes, or time runs out.
    pub async fn consume(
        &mut self,
        session: Session,
        ctx: &Arc<Ctx>,
        until: Until,
        ack_every: u64,
    ) -> Ended {
        let (conn, mut deliveries, subscription) = match session {
            Session::Raw {
                conn,
                deliveries,
                subscription,
            } => (conn, deliveries, subscription),
            Session::Sdk { client, sub } => return self.consume_sdk(client, sub, ctx, until).await,
        };
        let (ack_tx, ack_rx) = watch::channel(0u64);
        let acker = tokio::spawn(acker(
            conn.clone(),
            self.room.clone(),
            subscription,
            ack_rx,
            self.ack_errors.clone(),
            ctx.clone(),
        ));
        let mut high = 0u64;
        let mut unacked = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if self.done(ctx, until) {
                break Ended::Done;
            }
            let drain_deadline = ctx.drain_deadline_ns.load(Ordering::Relaxed);
            if Instant::now() >= ctx.hard_end || ctx.clock.now_ns() >= drain_deadline {
                break Ended::Deadline;
            }
            tokio::select! {
                d = deliveries.next_delivery() => match d {
                    None => break Ended::ConnectionLost,
                    Some(d) => {
                        if let Some(seq) = self.on_wire_delivery(ctx, &d) {
                            high = high.max(seq);
                            unacked += 1;
                            if unacked >= ack_every {
                                ack_tx.send_replace(high);
                                unacked = 0;
                            }
                        }
                    }
                },
                _ = tick.tick() => {
                    if unacked > 0 {
                        ack_tx.send_replace(high);
                        unacked = 0;
                    }
                }
            }
        };
        if unacked > 0 {
            ack_tx.send_replace(high);
        }
        drop(ack_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
        ended
    }

    /// [`Subscriber::consume`] through the SDK: each delivery is recorded,
    /// then acknowledged with `Delivery::ack().await` before the next one
    /// is taken, as an application's loop would. The client is closed at
    /// the end (which sends the acks it still holds).
    async fn consume_sdk(
        &mut self,
        client: Client,
        mut sub: Subscription,
        ctx: &Arc<Ctx>,
        until: Until,
    ) -> Ended {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if self.done(ctx, until) {
                break Ended::Done;
            }
            let drain_deadline = ctx.drain_deadline_ns.load(Ordering::Relaxed);
            if Instant::now() >= ctx.hard_end || ctx.clock.now_ns() >= drain_deadline {
                break Ended::Deadline;
            }
            tokio::select! {
                d = sub.next() => match d {
                    None => break Ended::ConnectionLost,
                    Some(d) => {
                        let flagged = d.redelivered || d.attempt > 1;
                        self.on_delivery(ctx, d.seq, &d.payload, flagged);
                        match d.ack().await {
                            Ok(()) => {}
                            Err(ClientError::Closed | ClientError::Io(_)) => break Ended::ConnectionLost,
                            Err(e) => {
                                if self.ack_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    ctx.note_error(|| format!("ack failed: {e}"));
                                }
                            }
                        }
                    }
                },
                _ = tick.tick() => {}
            }
        };
        drop(sub);
        client.close().await;
        ended
    }

    /// Records one delivery of the protocol-level connection; returns its seq.
    fn on_wire_delivery(&mut self, ctx: &Ctx, d: &pb::Delivery) -> Option<u64> {
        let msg = d.message.as_ref()?;
        let flagged = d.redelivered || d.attempt > 1;
        self.on_delivery(ctx, msg.seq, &msg.payload, flagged);
        Some(msg.seq)
    }

    /// Records one delivery: `flagged` if the broker marked it as a
    /// redelivery.
    fn on_delivery(&mut self, ctx: &Ctx, seq: u64, payload: &[u8], flagged: bool) {
        let now = ctx.clock.now_ns();
        let stamp = Stamp::decode(payload);
        let key = stamp.map_or(FOREIGN, |s| s.key());
        if stamp.is_none() {
            self.foreign += 1;
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        match tracker.on_delivery(seq, key, flagged) {
            verify::Outcome::First => {
                bump(&ctx.live.delivered);
                if let Some(s) = stamp {
                    if ctx.in_measure(s.intended_ns) {
                        self.latency
                            .saturating_record(now.saturating_sub(s.intended_ns).max(1));
                    }
                }
                if ctx.in_measure(now) {
                    self.measured_deliveries += 1;
                    if self.first_delivery_ns == 0 {
                        self.first_delivery_ns = now;
                    }
                }
                self.last_delivery_ns = self.last_delivery_ns.max(now);
            }
            verify::Outcome::Redelivered => bump(&ctx.live.redelivered),
            verify::Outcome::Duplicate | verify::Outcome::Conflict => {
                bump(&ctx.live.anomalies);
            }
            verify::Outcome::Ignored => {}
        }
    }
}

/// Acknowledges cumulatively whatever `high` says, one ack in flight at a
/// time; pings when idle so the broker's idle timeout does not close a
/// quiet member. Ends when `high`'s sender is dropped (after a last ack).
async fn acker(
    conn: Connection,
    room: String,
    subscription: String,
    mut high: watch::Receiver<u64>,
    errors: Arc<AtomicU64>,
    ctx: Arc<Ctx>,
) {
    let mut acked = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), high.changed()).await {
            Err(_) => {
                if conn.ping().await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
        let up_to = *high.borrow_and_update();
        if up_to <= acked {
            continue;
        }
        match conn.ack_up_to(&room, &subscription, up_to).await {
            Ok(_) => acked = up_to,
            Err(ClientError::Closed | ClientError::Io(_)) => return,
            Err(e) => {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    ctx.note_error(|| format!("ack failed: {e}"));
                }
            }
        }
    }
}

/// A random id for a run.
pub fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut rng = SplitMix64(t as u64 ^ (u64::from(std::process::id()) << 32));
    rng.next() as u32
}

/// A small, seedable random number generator (SplitMix64); good enough
/// for choosing kill moments and run ids.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next() % (hi - lo + 1)
    }
}

/// Everything the audit found over all members.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub counts: Counts,
    pub audit: Audit,
    pub lost_messages: u64,
    pub confirm_conflicts: u64,
}

/// Audits every subscriber against its room's confirmations. With
/// `replay`, a room without publishers is audited against what it held
/// at the join instead.
pub fn audit_all(
    rooms: usize,
    publishers: &[Publisher],
    subscribers: &[Subscriber],
    replay: bool,
) -> Totals {
    let mut t = Totals::default();
    let mut expected: Vec<Expected> = (0..rooms).map(|_| Expected::default()).collect();
    for p in publishers {
        if let Some(e) = expected.get_mut(p.room_index) {
            p.expect_into(e);
        }
    }
    for e in &expected {
        t.confirm_conflicts += e.conflicts;
    }
    // Distinct lost messages: (room, seq) pairs.
    let mut lost = std::collections::HashSet::new();
    for s in subscribers {
        let Some(tracker) = &s.tracker else { continue };
        t.counts.add(&tracker.counts);
        let a = match expected.get(s.room_index) {
            Some(e) if !replay => verify::audit(tracker, e, |seq| {
                lost.insert((s.room_index, seq));
            }),
            _ => verify::audit_range(tracker, s.last_seq_at_join, |seq| {
                lost.insert((s.room_index, seq));
            }),
        };
        t.audit.add(&a);
    }
    t.lost_messages = lost.len() as u64;
    t
}

/// The verdict for a run's totals; `failed` publishes count against it too
/// (nothing in a load run should fail).
pub fn verdict(
    enabled: bool,
    t: &Totals,
    failed: u64,
    confirmed: u64,
    expect_some: bool,
) -> Verdict {
    let mut failures = Vec::new();
    let mut check = |n: u64, what: &str| {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    };
    check(t.audit.lost, "lost (member, message) pairs");
    check(t.audit.mismatched, "mismatched deliveries");
    check(t.counts.duplicates, "duplicates");
    check(t.counts.out_of_order, "out-of-order deliveries");
    check(t.counts.gaps, "gaps");
    check(t.counts.conflicts, "conflicting deliveries");
    check(t.confirm_conflicts, "conflicting confirmations");
    check(failed, "failed publishes");
    if expect_some && confirmed == 0 {
        failures.push("nothing was confirmed".into());
    }
    Verdict {
        enabled,
        passed: failures.is_empty(),
        failures,
    }
}

fn secs_between(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// Runs the load described by `args` against a broker already running.
pub async fn run(mut args: RunArgs) -> anyhow::Result<Report> {
    args.validate()?;
    // A broker of our own, killed (and its directory removed) when these
    // are dropped at the end of the run.
    let mut own_broker = None;
    if let Some(bin) = &args.roomqd {
        let dir = tempfile::Builder::new()
            .prefix("roomq-loadtest-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let mut daemon =
            crate::daemon::Daemon::start(bin, dir.path(), None, Duration::from_secs(30)).await?;
        daemon.transport = args.transport;
        args.addr = daemon.client_addr();
        args.broker_pid = Some(daemon.pid());
        own_broker = Some((daemon, dir));
    }
    let started = std::time::Instant::now();
    let hard_end = Instant::now() + Duration::from_secs_f64(args.max_secs);
    let clock = Clock::new();
    let run_id = run_id();
    let rooms = args.rooms as usize;
    let prefix = args
        .room_prefix
        .clone()
        .unwrap_or_else(|| format!("lt-{run_id:08x}"));
    let room_names: Vec<String> = (0..rooms).map(|r| format!("{prefix}-{r}")).collect();
    let replay = args.publishers == 0;

    let probe_opts = ConnectOptions::new(args.addr.clone()).namespace(args.namespace.clone());
    let (probe, _) = Connection::connect(probe_opts)
        .await
        .with_context(|| format!("connecting to the broker at {}", args.addr))?;
    let broker_version = match probe.server_version() {
        "" => "unknown".to_string(),
        v => v.to_string(),
    };
    drop(probe);

    // Subscribers join before anything is published.
    let plan = JoinPlan {
        addr: args.addr.clone(),
        namespace: args.namespace.clone(),
        ephemeral: args.ephemeral,
        start: args.start,
        max_in_flight: args.max_in_flight,
        ack_every: u64::from(args.ack_every),
        sdk_acks: args.sdk_acks,
    };
    let mut subscribers = Vec::new();
    let mut sessions = Vec::new();
    for (r, room) in room_names.iter().enumerate() {
        for i in 0..args.subscribers {
            let mut s = Subscriber::new(r, room.clone(), format!("lt-{run_id:08x}-r{r}-s{i}"))?;
            sessions.push(s.join(&plan).await?);
            subscribers.push(s);
        }
    }
    let mut publishers = Vec::new();
    let mut connections = Vec::new();
    for (r, room) in room_names.iter().enumerate() {
        for i in 0..args.publishers {
            let id = u32::try_from(publishers.len()).context("too many publishers")?;
            publishers.push(Publisher::new(id, r, room.clone())?);
            let opts = ConnectOptions::new(args.addr.clone())
                .namespace(args.namespace.clone())
                .client_name(format!("roomq-loadtest-p{r}-{i}"));
            let (conn, _pushes) = Connection::connect(opts)
                .await
                .context("publisher connecting")?;
            connections.push(conn);
        }
    }

    // The clock starts.
    let t0 = Instant::now();
    let mut ctx = Ctx::new(clock, run_id, args.size, args.event.clone(), rooms);
    ctx.dedup_ids = args.dedup_ids;
    ctx.hard_end = hard_end;
    ctx.warm_end_ns = clock.at(t0.into_std()) + (args.warmup * 1e9) as u64;
    let measured = args.measured();
    if let Some(m) = measured {
        ctx.measure_end_ns = ctx.warm_end_ns + u64::try_from(m.as_nanos()).unwrap_or(u64::MAX);
    }
    let ctx = Arc::new(ctx);
    // The broker's CPU time at the end of the warm-up, for its cost per
    // message over the measured period.
    let cpu_at_warm_end = args.broker_pid.map(|pid| {
        let at = clock.instant(ctx.warm_end_ns);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            crate::cpu::process_cpu(pid)
        })
    });
    let stop_at = match measured {
        Some(_) => clock.instant(ctx.measure_end_ns).into(),
        None => hard_end,
    };
    // With a measured duration, also at its end (the confirms counted end
    // there); otherwise when publishing ends.
    let cpu_at_measure_end = match (args.broker_pid, measured) {
        (Some(pid), Some(_)) => Some(tokio::spawn(async move {
            tokio::time::sleep_until(stop_at).await;
            crate::cpu::process_cpu(pid)
        })),
        _ => None,
    };

    let mut sub_tasks = Vec::new();
    let until = if replay {
        Until::StoredAtJoin
    } else {
        Until::RoomTarget
    };
    for (mut s, session) in subscribers.into_iter().zip(sessions) {
        let ctx = ctx.clone();
        let ack_every = plan.ack_every;
        sub_tasks.push(tokio::spawn(async move {
            let ended = s.consume(session, &ctx, until, ack_every).await;
            (s, ended)
        }));
    }

    // Publishers: closed loop, or fed by the pacer.
    let total_pubs = publishers.len() as u64;
    let pacer_stop = Arc::new(AtomicBool::new(false));
    let mut pacer = None;
    let mut feeds = Vec::new();
    if args.rate > 0.0 && total_pubs > 0 {
        let mut senders = Vec::new();
        for _ in 0..total_pubs {
            let (tx, rx) = mpsc::channel(pacer::TICK_BUFFER);
            senders.push(tx);
            feeds.push(Feed::Open { ticks: rx });
        }
        let schedule = Schedule {
            start_ns: clock.at(t0.into_std()),
            rate: args.rate,
            end_ns: ctx.measure_end_ns.min(clock.at(hard_end.into_std())),
            max_messages: args.messages,
        };
        pacer = Some(pacer::spawn(clock, schedule, senders, pacer_stop.clone())?);
    } else {
        for i in 0..total_pubs {
            let remaining = args
                .messages
                .map(|m| m / total_pubs + u64::from(i < m % total_pubs));
            feeds.push(Feed::Closed { remaining, stop_at });
        }
    }
    let window = args.window as usize;
    let mut pub_tasks = Vec::new();
    for ((mut p, conn), feed) in publishers.into_iter().zip(connections).zip(feeds) {
        let ctx = ctx.clone();
        pub_tasks.push(tokio::spawn(async move {
            let ended = p.run(&conn, &ctx, window, feed).await;
            (p, ended)
        }));
    }

    // Progress while publishing.
    let show = !args.no_progress;
    let mut progress = match (measured, args.messages) {
        (Some(m), _) => Progress::new(
            show,
            Some((args.warmup + m.as_secs_f64()).ceil() as u64),
            "s",
        ),
        (None, Some(n)) if !replay => Progress::new(show, Some(n), "msgs"),
        _ => Progress::new(show, None, ""),
    };
    while !pub_tasks.iter().all(|t| t.is_finished()) && Instant::now() < hard_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let pos = match (measured, args.messages) {
            (Some(_), _) => Some(t0.elapsed().as_secs()),
            (None, Some(_)) => Some(ctx.live.snapshot().confirmed),
            _ => None,
        };
        progress.update(&ctx.live, pos, "publishing");
    }
    pacer_stop.store(true, Ordering::Relaxed);
    let mut publishers = Vec::new();
    for t in pub_tasks {
        let (p, _ended) = t.await.context("a publisher task failed")?;
        publishers.push(p);
    }
    if let Some(p) = pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let publish_end_ns = clock.now_ns();
    let cpu_at_publish_end = match cpu_at_measure_end {
        Some(task) => task.await.ok().flatten(),
        None => args.broker_pid.and_then(crate::cpu::process_cpu),
    };

    // Drain: tell each room what to wait for. Each target is stored once,
    // as the maximum over all of its room's publishers: subscribers read it
    // while this runs, and one publisher's last seq alone would let them
    // stop before the others' messages arrived. (Rooms without publishers
    // wait for nothing.)
    let mut last_per_room = vec![0u64; ctx.targets.len()];
    for p in &publishers {
        let last = p.room_seqs.iter().copied().max().unwrap_or(0);
        if let Some(slot) = last_per_room.get_mut(p.room_index) {
            *slot = (*slot).max(last);
        }
    }
    for (t, last) in ctx.targets.iter().zip(last_per_room) {
        t.store(last, Ordering::Relaxed);
    }
    ctx.drain_deadline_ns.store(
        clock.now_ns() + (args.drain_timeout * 1e9) as u64,
        Ordering::Relaxed,
    );
    while !sub_tasks.iter().all(|t| t.is_finished()) && Instant::now() < hard_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.update(
            &ctx.live,
            None,
            if replay { "replaying" } else { "draining" },
        );
    }
    progress.finish();
    let mut subscribers = Vec::new();
    for t in sub_tasks {
        let (s, ended) = t.await.context("a subscriber task failed")?;
        if ended == Ended::ConnectionLost {
            // Whatever it missed is counted as lost; say why.
            ctx.note_error(|| format!("subscriber {} lost its connection", s.client_id));
        }
        subscribers.push(s);
    }
    let end_ns = clock.now_ns();
    if let Some((mut daemon, dir)) = own_broker {
        if let Some(status) = daemon.exited() {
            ctx.note_error(|| format!("roomqd exited during the run ({status})"));
        }
        daemon.kill9()?;
        drop(dir);
    }

    // Figures.
    let mut confirm_latency = report::new_histogram()?;
    let mut send_lag = report::new_histogram()?;
    let (mut published, mut confirmed, mut failed, mut dup_confirms, mut measured_confirms) =
        (0, 0, 0, 0, 0);
    let mut last_confirm_ns = 0;
    for p in &publishers {
        report::merge(&mut confirm_latency, &p.latency)?;
        report::merge(&mut send_lag, &p.send_lag)?;
        published += p.published;
        confirmed += p.confirmed;
        failed += p.failed;
        dup_confirms += p.duplicate_confirms;
        measured_confirms += p.measured_confirms;
        last_confirm_ns = last_confirm_ns.max(p.last_confirm_ns);
    }
    let mut e2e_latency = report::new_histogram()?;
    let (mut measured_deliveries, mut last_delivery_ns, mut foreign, mut ack_errors) = (0, 0, 0, 0);
    for s in &subscribers {
        report::merge(&mut e2e_latency, &s.latency)?;
        measured_deliveries += s.measured_deliveries;
        last_delivery_ns = last_delivery_ns.max(s.last_delivery_ns);
        foreign += s.foreign;
        ack_errors += s.ack_errors.load(Ordering::Relaxed);
    }
    let totals = audit_all(rooms, &publishers, &subscribers, replay);
    let measured_secs = if ctx.measure_end_ns != u64::MAX {
        secs_between(ctx.warm_end_ns, ctx.measure_end_ns.min(publish_end_ns))
    } else {
        secs_between(ctx.warm_end_ns, last_confirm_ns)
    };
    let deliver_secs = secs_between(ctx.warm_end_ns, last_delivery_ns);
    let rate = |n: u64, secs: f64| {
        if secs > 0.0 {
            report::round1(n as f64 / secs)
        } else {
            0.0
        }
    };
    let verify = verdict(args.verify, &totals, failed, confirmed, !replay);
    // What the broker spent per message it confirmed (a replay: per first
    // delivery) between the end of the warm-up and the end of the measured
    // period or of publishing (a replay: of delivering).
    let cpu_start = match cpu_at_warm_end {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    let cpu_end = if replay {
        args.broker_pid.and_then(crate::cpu::process_cpu)
    } else {
        cpu_at_publish_end
    };
    let broker_cpu_secs = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a).as_secs_f64() * 1000.0).round() / 1000.0),
        _ => None,
    };
    let per_msg = if replay {
        measured_deliveries
    } else {
        measured_confirms
    };
    let broker_cpu_us_per_msg = broker_cpu_secs
        .filter(|_| per_msg > 0)
        .map(|secs| (secs * 1e8 / per_msg as f64).round() / 100.0);
    let report = Report {
        tool: "roomq-loadtest",
        tool_version: env!("CARGO_PKG_VERSION"),
        broker_version,
        run_id: format!("{run_id:08x}"),
        mode: if args.rate > 0.0 { "open" } else { "closed" },
        started_unix_ms: clock.at(started) / 1_000_000,
        elapsed_secs: report::round1(secs_between(clock.at(started), end_ns)),
        measured_secs: (measured_secs * 1000.0).round() / 1000.0,
        deliver_secs: (deliver_secs * 1000.0).round() / 1000.0,
        publishers_total: total_pubs,
        members_total: subscribers.len() as u64,
        published,
        confirmed,
        failed,
        delivered: totals.counts.delivered,
        expected_deliveries: totals.audit.expected,
        redelivered: totals.counts.redelivered,
        lost: totals.audit.lost,
        lost_messages: totals.lost_messages,
        duplicates: totals.counts.duplicates,
        out_of_order: totals.counts.out_of_order,
        gaps: totals.counts.gaps,
        mismatched: totals.audit.mismatched,
        conflicts: totals.counts.conflicts,
        confirm_conflicts: totals.confirm_conflicts,
        duplicate_confirms: dup_confirms,
        foreign,
        ack_errors,
        confirm_rate: rate(measured_confirms, measured_secs),
        deliver_rate: rate(measured_deliveries, deliver_secs),
        confirm_latency_us: LatencySummary::of(&confirm_latency),
        e2e_latency_us: LatencySummary::of(&e2e_latency),
        send_lag_us: LatencySummary::of(&send_lag),
        broker_cpu_secs,
        broker_cpu_us_per_msg,
        verify,
        first_error: ctx.first_error.lock().ok().and_then(|e| e.clone()),
        params: args,
    };
    Ok(report)
}
