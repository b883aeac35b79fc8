//! `roomq-loadtest chaos`: publish and consume with the verifier on while
//! the broker is killed with SIGKILL at random moments and restarted.
//!
//! One cycle: start `roomqd` on the same temporary data directory (a new
//! loopback port each time); subscribers reconnect and resume their durable
//! memberships; publishers connect and publish in a closed loop; after a
//! random time the broker is killed. After the last cycle the broker is
//! started once more and every subscriber drains what the rooms hold. Then
//! the audit: every confirmed message must have reached every member, with
//! the same content. Repeats after a crash are expected (acks are stored
//! lazily) and counted as `redelivered`; see `docs/benchmarks.md`.
//!
//! `recovery_ms` is measured from spawning the process after a kill to the
//! first successful ping on a fresh connection.
//!
//! With `--power-loss` the data directory is on a power-cut file system
//! ([`crate::power_loss`]) and every kill is followed by a power cut: what
//! the broker had not `fsync`ed is gone when it starts again.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use roomq_client::raw::{ConnectOptions, Connection};
use serde::Serialize;
use tokio::time::Instant;

use crate::daemon::{Daemon, Transport};
use crate::load::{
    self, audit_all, Ctx, Feed, JoinPlan, Publisher, SplitMix64, StartAt, Subscriber, Until,
};
use crate::payload::{self, Clock};
use crate::power_loss::{CutTotals, PowerLoss};
use crate::report::{self, group, MsSummary, Progress, Verdict};

/// The chaos mode's command line.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChaosArgs {
    /// The roomqd binary to run.
    #[arg(long)]
    pub roomqd: PathBuf,
    /// How clients connect: TCP, or WebSocket on the HTTP listener.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishers per room.
    #[arg(long, default_value_t = 2)]
    pub publishers: u32,
    /// Durable subscribers per room.
    #[arg(long, default_value_t = 2)]
    pub subscribers: u32,
    /// Payload bytes per message (at least 32).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: u32,
    /// Shortest time the broker serves before it is killed, ms.
    #[arg(long, default_value_t = 50)]
    pub min_up_ms: u64,
    /// Longest time the broker serves before it is killed, ms.
    #[arg(long, default_value_t = 1000)]
    pub max_up_ms: u64,
    /// Messages stored (in a room of their own) before the first cycle, so
    /// recovery is measured with that much data.
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Seed for the kill moments [default: random; the report says which].
    #[arg(long)]
    pub seed: Option<u64>,
    /// A roomqd configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds the final drain may take.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_secs: f64,
    /// Subscribers acknowledge cumulatively after this many deliveries.
    #[arg(long, default_value_t = 100)]
    pub ack_every: u32,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Cut the power with every kill: the data directory is on a FUSE file
    /// system that then drops everything not fsynced (needs /dev/fuse and
    /// root).
    #[arg(long)]
    pub power_loss: bool,
    /// With --power-loss: some 4 KiB sectors of unsynced overwrites survive
    /// a cut (torn writes).
    #[arg(long, requires = "power_loss")]
    pub tear: bool,
}

impl ChaosArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.cycles == 0 {
            bail!("--cycles must be at least 1");
        }
        if self.rooms == 0 || self.publishers == 0 || self.subscribers == 0 {
            bail!("--rooms, --publishers and --subscribers must be at least 1");
        }
        if u64::from(self.rooms) * u64::from(self.publishers + self.subscribers) > 1_000 {
            bail!("at most 1,000 connections in chaos mode");
        }
        if self.size < payload::HEADER_LEN || self.size > 64 * 1024 {
            bail!("--size must be between {} and 65536", payload::HEADER_LEN);
        }
        if self.window == 0 || self.ack_every == 0 {
            bail!("--window and --ack-every must be at least 1");
        }
        if self.min_up_ms > self.max_up_ms {
            bail!("--min-up-ms must not exceed --max-up-ms");
        }
        for (name, v) in [
            ("--drain-timeout", self.drain_timeout),
            ("--max-secs", self.max_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds");
            }
        }
        Ok(())
    }
}

/// The JSON report of a chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub tool: &'static str,
    pub tool_version: &'static str,
    pub broker_version: String,
    pub params: ChaosArgs,
    pub seed: u64,
    /// Kill-and-restart cycles completed.
    pub cycles: u32,
    pub cycles_requested: u32,
    pub elapsed_secs: f64,
    pub published: u64,
    pub confirmed: u64,
    /// Publishes without a confirmation (cut off by a kill): they may or
    /// may not be stored, and are not held against the broker.
    pub unconfirmed: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub redelivered: u64,
    pub lost: u64,
    pub lost_messages: u64,
    /// Confirmed messages that a fresh reader of the room, after the final
    /// restart, does not find at the seq they were confirmed with.
    pub confirmed_lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub mismatched: u64,
    pub conflicts: u64,
    pub confirm_conflicts: u64,
    pub ack_errors: u64,
    /// Subscriber sessions that could not connect or join in a cycle.
    pub session_errors: u64,
    pub prefill: u64,
    /// Messages stored at the end, prefill included.
    pub stored_messages: u64,
    /// Spawn after a kill → first successful ping, ms.
    pub recovery_ms: MsSummary,
    /// Spawn after a kill → the "serving" log line, ms.
    pub serving_log_ms: MsSummary,
    /// With --power-loss: what the cuts dropped.
    pub power_loss: Option<CutTotals>,
    pub passed: bool,
    pub failures: Vec<String>,
}

impl ChaosReport {
    pub fn print_summary(&self) {
        println!();
        println!(
            "roomq-loadtest chaos  broker {}  seed {}",
            self.broker_version, self.seed
        );
        println!(
            "  cycles {}/{}   {:.1} s   stored at the end {} (prefill {})",
            self.cycles,
            self.cycles_requested,
            self.elapsed_secs,
            group(self.stored_messages),
            group(self.prefill)
        );
        println!(
            "  published {}   confirmed {}   unconfirmed {}",
            group(self.published),
            group(self.confirmed),
            group(self.unconfirmed)
        );
        println!(
            "  delivered {} of {} expected   redelivered {}",
            group(self.delivered),
            group(self.expected_deliveries),
            group(self.redelivered)
        );
        println!(
            "  recovery ms  p50 {}  p99 {}  max {}   (serving line: p50 {}  max {})",
            self.recovery_ms.p50,
            self.recovery_ms.p99,
            self.recovery_ms.max,
            self.serving_log_ms.p50,
            self.serving_log_ms.max
        );
        println!(
            "  confirmed messages not stored at the end {}",
            group(self.confirmed_lost)
        );
        println!(
            "  lost {} ({} messages)  duplicates {}  out of order {}  gaps {}  mismatched {}  conflicts {}",
            self.lost,
            self.lost_messages,
            self.duplicates,
            self.out_of_order,
            self.gaps,
            self.mismatched,
            self.conflicts + self.confirm_conflicts
        );
        if let Some(p) = &self.power_loss {
            println!(
                "  power cuts {}   unsynced bytes dropped {}   torn sectors kept {}   directories reverted {}",
                p.cuts,
                group(p.dropped_bytes),
                group(p.torn_sectors),
                group(p.reverted_dirs)
            );
        }
        report::print_verdict(&Verdict {
            enabled: true,
            passed: self.passed,
            failures: self.failures.clone(),
        });
    }
}

/// Starts the broker after a kill and waits until it answers a ping.
/// Returns it with (spawn → ping, spawn → serving line).
async fn restart(
    args: &ChaosArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(Daemon, Duration, Duration)> {
    let spawned = Instant::now();
    let daemon = Daemon::start(
        &args.roomqd,
        dir,
        args.config.as_deref(),
        Duration::from_secs(30),
    )
    .await?;
    let mut daemon = daemon;
    daemon.transport = args.transport;
    let serving = daemon.serving_after;
    let deadline = spawned + Duration::from_secs(30);
    loop {
        let mut opts = ConnectOptions::new(daemon.client_addr());
        opts.connect_timeout = Duration::from_secs(2);
        if let Ok((conn, _)) = Connection::connect(opts).await {
            if tokio::time::timeout(Duration::from_secs(2), conn.ping())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok((daemon, spawned.elapsed(), serving));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "roomqd serves but does not answer a ping; its log:\n{}",
                daemon.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stores `n` messages in a room of their own, as fast as the broker takes
/// them.
async fn prefill(addr: &str, n: u64, ctx: &Arc<Ctx>, first_id: u32) -> anyhow::Result<u64> {
    const PUBLISHERS: u64 = 4;
    let mut tasks = Vec::new();
    for i in 0..PUBLISHERS {
        let mut p = Publisher::new(first_id + i as u32, usize::MAX, "chaos-prefill".into())?;
        let (conn, _) = Connection::connect(ConnectOptions::new(addr.to_string()))
            .await
            .context("prefill publisher connecting")?;
        let ctx = ctx.clone();
        let remaining = Some(n / PUBLISHERS + u64::from(i < n % PUBLISHERS));
        tasks.push(tokio::spawn(async move {
            let feed = Feed::Closed {
                remaining,
                stop_at: ctx.hard_end,
            };
            p.run(&conn, &ctx, 256, feed).await;
            p.confirmed
        }));
    }
    let mut confirmed = 0;
    for t in tasks {
        confirmed += t.await.context("a prefill task failed")?;
    }
    Ok(confirmed)
}

/// Confirmed messages that the room (read in full by `readers`, one per
/// room, in room order) does not hold at the seq they were confirmed with.
fn confirmed_not_stored(publishers: &[Publisher], readers: &[Subscriber]) -> u64 {
    let mut lost = 0;
    for p in publishers {
        let tracker = readers.get(p.room_index).and_then(|r| r.tracker.as_ref());
        for (i, seq) in p.room_seqs.iter().enumerate() {
            if *seq == 0 {
                continue;
            }
            let key = payload::message_key(p.id, i as u64 + 1);
            if tracker.is_none_or(|t| t.key_at(*seq) != key) {
                lost += 1;
            }
        }
    }
    lost
}

/// Runs the chaos test.
/// Joins every subscriber again (durable, resuming; a new member starts at
/// the earliest message) and consumes until `until`. Each task gives the
/// subscriber back with whether it joined and, for `Until::StoredAtJoin`,
/// drained everything.
fn spawn_subscribers(
    subscribers: &mut Vec<Subscriber>,
    daemon: &Daemon,
    ctx: &Arc<Ctx>,
    until: Until,
    ack_every: u64,
) -> Vec<tokio::task::JoinHandle<(Subscriber, bool)>> {
    let plan = JoinPlan {
        addr: daemon.client_addr(),
        namespace: "/".into(),
        ephemeral: false,
        start: StartAt::Earliest,
        max_in_flight: 0,
        ack_every,
        sdk_acks: false,
    };
    let drain = matches!(until, Until::StoredAtJoin);
    subscribers
        .drain(..)
        .map(|mut s| {
            let (ctx, plan) = (ctx.clone(), plan.clone());
            tokio::spawn(async move {
                let ok = match s.join(&plan).await {
                    Ok(session) => {
                        let ended = s.consume(session, &ctx, until, ack_every).await;
                        !drain || ended == load::Ended::Done
                    }
                    Err(_) => false,
                };
                (s, ok)
            })
        })
        .collect()
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosReport> {
    args.validate()?;
    let started = Instant::now();
    let hard_end = started + Duration::from_secs_f64(args.max_secs);
    let tmp = tempfile::Builder::new()
        .prefix("roomq-chaos-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let seed = args
        .seed
        .unwrap_or_else(|| u64::from(load::run_id()) << 16 ^ 0x5eed);
    let (mut power, data_dir) = if args.power_loss {
        let (p, data) = PowerLoss::mount(tmp.path(), args.tear, seed)?;
        (Some(p), data)
    } else {
        (None, tmp.path().to_path_buf())
    };
    let dir = data_dir.as_path();
    let mut rng = SplitMix64(seed);
    let clock = Clock::new();
    let rooms = args.rooms as usize;
    let room_names: Vec<String> = (0..rooms).map(|r| format!("chaos-{r}")).collect();
    let mut ctx = Ctx::new(clock, load::run_id(), args.size, "chaos".into(), rooms);
    ctx.hard_end = hard_end;
    let ctx = Arc::new(ctx);

    let mut publishers = Vec::new();
    let mut subscribers = Vec::new();
    for (r, room) in room_names.iter().enumerate() {
        for _ in 0..args.publishers {
            let id = u32::try_from(publishers.len()).context("too many publishers")?;
            publishers.push(Publisher::new(id, r, room.clone())?);
        }
        for i in 0..args.subscribers {
            subscribers.push(Subscriber::new(
                r,
                room.clone(),
                format!("chaos-r{r}-s{i}"),
            )?);
        }
    }

    let mut progress = Progress::new(!args.no_progress, Some(u64::from(args.cycles)), "cycles");
    let mut daemon = Daemon::start(
        &args.roomqd,
        dir,
        args.config.as_deref(),
        Duration::from_secs(30),
    )
    .await?;
    daemon.transport = args.transport;
    let broker_version = if daemon.version.is_empty() {
        "unknown".to_string()
    } else {
        daemon.version.clone()
    };
    let mut prefilled = 0;
    if args.prefill > 0 {
        progress.println(format!("prefilling {} messages", group(args.prefill)));
        let first_id = u32::try_from(publishers.len()).context("too many publishers")?;
        prefilled = prefill(&daemon.client_addr(), args.prefill, &ctx, first_id).await?;
        progress.println(format!("prefilled {} messages", group(prefilled)));
    }

    let mut recoveries = Vec::new();
    let mut serving_lines = Vec::new();
    let mut session_errors = 0u64;
    let mut cycles = 0u32;
    let window = args.window as usize;
    let ack_every = u64::from(args.ack_every);
    for cycle in 0..args.cycles {
        if Instant::now() + Duration::from_millis(args.max_up_ms) >= hard_end {
            progress.println("time limit reached; stopping early");
            break;
        }
        if cycle > 0 {
            let (d, recovery, serving) = restart(&args, dir).await?;
            daemon = d;
            recoveries.push(recovery);
            serving_lines.push(serving);
        }
        let sub_tasks =
            spawn_subscribers(&mut subscribers, &daemon, &ctx, Until::Closed, ack_every);
        let mut pub_tasks = Vec::new();
        for mut p in publishers.drain(..) {
            let (ctx, addr) = (ctx.clone(), daemon.client_addr());
            pub_tasks.push(tokio::spawn(async move {
                if let Ok((conn, _)) = Connection::connect(ConnectOptions::new(addr)).await {
                    let feed = Feed::Closed {
                        remaining: None,
                        stop_at: ctx.hard_end,
                    };
                    p.run(&conn, &ctx, window, feed).await;
                }
                p
            }));
        }
        let up = Duration::from_millis(rng.between(args.min_up_ms, args.max_up_ms));
        let until = Instant::now() + up;
        while Instant::now() < until {
            tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(250))).await;
            progress.update(&ctx.live, Some(u64::from(cycle)), "chaos");
        }
        if let Some(status) = daemon.exited() {
            bail!(
                "roomqd exited by itself ({status}); its log:\n{}",
                daemon.tail()
            );
        }
        daemon.kill9()?;
        if let Some(p) = power.as_mut() {
            p.cut().await?;
        }
        for t in sub_tasks {
            let (s, ok) = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .context("a subscriber did not notice the kill within 30 s")?
                .context("a subscriber task failed")?;
            session_errors += u64::from(!ok);
            subscribers.push(s);
        }
        for t in pub_tasks {
            let p = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .context("a publisher did not notice the kill within 30 s")?
                .context("a publisher task failed")?;
            publishers.push(p);
        }
        cycles += 1;
        progress.update(&ctx.live, Some(u64::from(cycles)), "chaos");
    }

    // The last restart, then drain everything the rooms hold.
    let (d, recovery, serving) = restart(&args, dir).await?;
    daemon = d;
    recoveries.push(recovery);
    serving_lines.push(serving);
    ctx.drain_deadline_ns.store(
        clock.now_ns() + (args.drain_timeout * 1e9) as u64,
        Ordering::Relaxed,
    );
    let sub_tasks = spawn_subscribers(
        &mut subscribers,
        &daemon,
        &ctx,
        Until::StoredAtJoin,
        ack_every,
    );
    let mut drained_all = true;
    while !sub_tasks.iter().all(|t| t.is_finished()) && Instant::now() < hard_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.update(&ctx.live, Some(u64::from(cycles)), "final drain");
    }
    for t in sub_tasks {
        let (s, ok) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .context("a subscriber did not finish its drain")?
            .context("a subscriber task failed")?;
        drained_all &= ok;
        subscribers.push(s);
    }
    // A fresh member per room reads everything the room holds: a
    // confirmed message the room does not hold at its confirmed seq is lost,
    // whatever the members saw before (after a power cut seqs can be given
    // out again).
    let mut readers = Vec::new();
    for (r, room) in room_names.iter().enumerate() {
        readers.push(Subscriber::new(
            r,
            room.clone(),
            format!("chaos-audit-r{r}"),
        )?);
    }
    let reader_tasks =
        spawn_subscribers(&mut readers, &daemon, &ctx, Until::StoredAtJoin, ack_every);
    for t in reader_tasks {
        let (s, ok) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .context("an audit reader did not finish")?
            .context("an audit reader failed")?;
        drained_all &= ok;
        readers.push(s);
    }
    readers.sort_by_key(|s| s.room_index);
    let confirmed_lost = confirmed_not_stored(&publishers, &readers);
    progress.finish();
    let mut stored = prefilled;
    let mut per_room = vec![0u64; rooms];
    for s in &subscribers {
        if let Some(v) = per_room.get_mut(s.room_index) {
            *v = (*v).max(s.last_seq_at_join);
        }
    }
    stored += per_room.iter().sum::<u64>();
    if let Some(status) = daemon.exited() {
        bail!(
            "roomqd exited by itself ({status}); its log:\n{}",
            daemon.tail()
        );
    }
    daemon.kill9()?;
    drop(daemon);

    let totals = audit_all(rooms, &publishers, &subscribers, false);
    let (mut published, mut confirmed, mut unconfirmed) = (0, 0, 0);
    for p in &publishers {
        published += p.published;
        confirmed += p.confirmed;
        unconfirmed += p.failed;
    }
    let ack_errors = subscribers
        .iter()
        .map(|s| s.ack_errors.load(Ordering::Relaxed))
        .sum();
    let mut verdict = load::verdict(true, &totals, 0, confirmed, true);
    if cycles < args.cycles {
        verdict.failures.push(format!(
            "only {cycles} of {} cycles ran in the time limit",
            args.cycles
        ));
    }
    if confirmed_lost > 0 {
        verdict.failures.push(format!(
            "{confirmed_lost} confirmed messages are not stored at their confirmed seq"
        ));
    }
    if !drained_all {
        verdict
            .failures
            .push("not every subscriber drained its room in time".into());
    }
    verdict.passed = verdict.failures.is_empty();
    let report = ChaosReport {
        tool: "roomq-loadtest chaos",
        tool_version: env!("CARGO_PKG_VERSION"),
        broker_version,
        seed,
        cycles,
        cycles_requested: args.cycles,
        elapsed_secs: report::round1(started.elapsed().as_secs_f64()),
        published,
        confirmed,
        unconfirmed,
        delivered: totals.counts.delivered,
        expected_deliveries: totals.audit.expected,
        redelivered: totals.counts.redelivered,
        lost: totals.audit.lost,
        lost_messages: totals.lost_messages,
        confirmed_lost,
        duplicates: totals.counts.duplicates,
        out_of_order: totals.counts.out_of_order,
        gaps: totals.counts.gaps,
        mismatched: totals.audit.mismatched,
        conflicts: totals.counts.conflicts,
        confirm_conflicts: totals.confirm_conflicts,
        ack_errors,
        session_errors,
        prefill: prefilled,
        stored_messages: stored,
        recovery_ms: MsSummary::of(&recoveries),
        serving_log_ms: MsSummary::of(&serving_lines),
        power_loss: power.as_ref().map(|p| p.totals),
        passed: verdict.passed,
        failures: verdict.failures,
        params: args,
    };
    if let Some(p) = power {
        p.unmount()?;
    }
    drop(tmp);
    Ok(report)
}
