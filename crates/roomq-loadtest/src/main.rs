//! `roomq-loadtest`: load for a roomq broker, with honest figures and a
//! loss/duplicate/order check.
//!
//! ```text
//! roomq-loadtest --addr 127.0.0.1:7420 --publishers 4 --window 256 --size 128 --duration 10 --verify
//! roomq-loadtest --rate 10000 --subscribers 1 --duration 30 --json w3.json
//! roomq-loadtest chaos --roomqd target/release/roomqd --cycles 200 --json chaos.json
//! roomq-loadtest chaos --roomqd target/release/roomqd --power-loss --cycles 100
//! ```
//!
//! Open-loop runs (`--rate`) measure latency from each message's intended
//! send time, so a stalled broker cannot hide behind a stalled generator.
//! Latencies go into HdrHistograms; `docs/benchmarks.md` defines every
//! count in the report.
//!
//! Layout:
//! - `payload`: the stamp every message carries, and the clock.
//! - `verify`: the per-member tracker and the audit (lost, duplicate, order).
//! - `pacer`: the open-loop schedule, on its own thread.
//! - `load`: publishers, subscribers and the load run.
//! - `daemon`: a `roomqd` child process.
//! - `chaos`: kill -9 cycles.
//! - `power_loss`: `chaos --power-loss`, a power cut with every kill.
//! - `jetstream` (feature `jetstream`): the direct-JetStream baseline.
//! - `report`: histograms, live counters, the JSON report and the summary.

mod chaos;
mod cpu;
mod daemon;
#[cfg(feature = "jetstream")]
mod jetstream;
mod load;
mod pacer;
mod payload;
mod power_loss;
mod report;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit code when --verify (or chaos) found a problem.
const EXIT_VERIFY_FAILED: u8 = 1;
/// Exit code when the run could not be carried out.
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "roomq-loadtest",
    version,
    about = "Load generator for roomq: throughput, latency, and a loss/order check",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    run: load::RunArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start roomqd on a temporary directory and kill -9 it at random
    /// moments under load (with --power-loss: and cut the power), checking
    /// that no confirmed message is lost.
    Chaos(chaos::ChaosArgs),
    /// Publish the same load straight to a JetStream stream with async-nats:
    /// the baseline of roomq's JetStream engine (docs/benchmarks.md).
    #[cfg(feature = "jetstream")]
    Jetstream(jetstream::JetStreamArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roomq-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Chaos(args)) => {
                let json = args.json.clone();
                let r = chaos::run(args).await?;
                r.print_summary();
                if let Some(path) = json {
                    report::write_json(&path, &r)?;
                }
                Ok::<bool, anyhow::Error>(r.passed)
            }
            #[cfg(feature = "jetstream")]
            Some(Cmd::Jetstream(args)) => {
                jetstream::run(args).await?.print_summary();
                Ok(true)
            }
            None => {
                let json = cli.run.json.clone();
                let r = load::run(cli.run).await?;
                r.print_summary();
                if let Some(path) = json {
                    report::write_json(&path, &r)?;
                }
                Ok(!r.verify.enabled || r.verify.passed)
            }
        }
    });
    // Connections' background tasks may still be winding down.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_VERIFY_FAILED),
        Err(e) => {
            eprintln!("roomq-loadtest: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
