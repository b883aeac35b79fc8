//! `roomq-loadtest jetstream`: the baseline for roomq's JetStream engine.
//! The same publishers, window and message size as a W1 run, publishing
//! each message straight to a JetStream stream with `async-nats` (one
//! subject per room, asynchronous publish acknowledgements, at most
//! `window` unacknowledged per publisher), so that roomq's cost over its
//! engine is a ratio measured on one machine in one session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use crate::report::MsSummary;

/// The baseline's command line.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct JetStreamArgs {
    /// A NATS server with JetStream.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Replicas of the stream the run creates (and deletes afterwards).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Rooms: one subject each; publishers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishing tasks, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// Unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

/// What one baseline run measured.
#[derive(Debug, Serialize)]
pub struct JetStreamReport {
    pub args: JetStreamArgs,
    /// Acknowledged publishes per second in the measured period.
    pub msgs_per_sec: f64,
    /// From the publish to its acknowledgement.
    pub ack_ms: MsSummary,
}

impl JetStreamReport {
    pub fn print_summary(&self) {
        let a = &self.ack_ms;
        println!(
            "jetstream baseline: {:.0} msg/s acknowledged ({} publishers x {} in flight, {} B, R{}); ack ms p50 {:.3} p99 {:.3} max {:.3}",
            self.msgs_per_sec,
            self.args.publishers,
            self.args.window,
            self.args.size,
            self.args.replicas,
            a.p50,
            a.p99,
            a.max
        );
    }
}

pub async fn run(args: JetStreamArgs) -> anyhow::Result<JetStreamReport> {
    if args.publishers == 0 || args.rooms == 0 || args.window == 0 {
        bail!("--publishers, --rooms and --window must be at least 1");
    }
    if !(args.duration > 0.0
        && args.duration <= 3600.0
        && args.warmup >= 0.0
        && args.warmup <= 600.0)
    {
        bail!("--duration must be in (0, 3600] and --warmup in [0, 600]");
    }
    let name = format!("loadtest_{:08x}", std::process::id());
    let admin = jetstream::new(
        async_nats::connect(&args.nats_url)
            .await
            .with_context(|| format!("connecting to {}", args.nats_url))?,
    );
    admin
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            num_replicas: args.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let result = measure(&args, &name).await;
    if let Err(e) = admin.delete_stream(&name).await {
        eprintln!("roomq-loadtest: could not delete stream {name}: {e}");
    }
    let (count, samples, secs) = result?;
    Ok(JetStreamReport {
        msgs_per_sec: count as f64 / secs,
        ack_ms: MsSummary::of(&samples),
        args,
    })
}

/// Runs the publishers; returns the acknowledgements counted in the
/// measured period, their latencies, and the period's length in seconds.
async fn measure(args: &JetStreamArgs, name: &str) -> anyhow::Result<(u64, Vec<Duration>, f64)> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let counted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let client = async_nats::connect(&args.nats_url).await?;
        let js = jetstream::new(client);
        let subject = format!("{name}.room{}", p % args.rooms);
        let payload = bytes::Bytes::from(vec![0x5a; args.size]);
        let window = args.window;
        let counted = counted.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
            let mut sending = true;
            loop {
                while sending && in_flight.len() < window {
                    if Instant::now() >= end {
                        sending = false;
                        break;
                    }
                    let sent = Instant::now();
                    let ack: PublishAckFuture =
                        js.publish(subject.clone(), payload.clone()).await?;
                    in_flight.push(async move { (sent, ack.await) });
                }
                let Some((sent, ack)) = in_flight.next().await else {
                    break;
                };
                ack?;
                let now = Instant::now();
                if sent >= measure_from && now <= end {
                    counted.fetch_add(1, Ordering::Relaxed);
                    samples.push(now - sent);
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    Ok((counted.load(Ordering::Relaxed), samples, args.duration))
}
