//! Figures: latency histograms, the live counters behind the progress bar,
//! and the JSON report with its human-readable summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::load::RunArgs;

/// Largest latency a histogram holds: an hour, in ns (larger values are
/// recorded as this).
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

/// A latency histogram in nanoseconds with three significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("creating a latency histogram")
}

/// Adds `from` into `into`.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(from).context("merging latency histograms")
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| round1(ns as f64 / 1_000.0);
        LatencySummary {
            count: h.len(),
            mean: round1(h.mean() / 1_000.0),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.p999),
            fmt_us(self.max),
            group(self.count)
        )
    }
}

/// Percentiles of a plain list of durations (recovery times), in ms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct MsSummary {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl MsSummary {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: &[Duration]) -> MsSummary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let n = ms.len();
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms.get(i).copied().map_or(0.0, round1)
        };
        MsSummary {
            count: ms.len() as u64,
            min: rank(0.0),
            p50: rank(0.50),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Counters shared by every task of a run, read by the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub failed: AtomicU64,
    /// First deliveries, summed over members.
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    /// Duplicates, conflicts: anything the verifier will fail on.
    pub anomalies: AtomicU64,
}

/// A snapshot of [`Live`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveSnapshot {
    pub published: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub anomalies: u64,
}

impl Live {
    pub fn snapshot(&self) -> LiveSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveSnapshot {
            published: r(&self.published),
            confirmed: r(&self.confirmed),
            failed: r(&self.failed),
            delivered: r(&self.delivered),
            redelivered: r(&self.redelivered),
            anomalies: r(&self.anomalies),
        }
    }
}

/// Adds one to a live counter.
pub fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The progress bar: live rates while a run goes on. Hidden when stderr is
/// not a terminal or `--no-progress` is given.
pub struct Progress {
    bar: ProgressBar,
    last: LiveSnapshot,
    last_at: std::time::Instant,
}

impl Progress {
    /// A bar of `len` steps (seconds or messages), or a spinner if `None`.
    pub fn new(enabled: bool, len: Option<u64>, unit: &str) -> Progress {
        let bar = if !enabled {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(4))
        };
        let template = match len {
            Some(_) => format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}"),
            None => "{elapsed_precise} {spinner} {msg}".to_string(),
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            last: LiveSnapshot::default(),
            last_at: std::time::Instant::now(),
        }
    }

    /// Shows the rates since the previous update.
    pub fn update(&mut self, live: &Live, position: Option<u64>, phase: &str) {
        let now = std::time::Instant::now();
        let s = live.snapshot();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| group((a.saturating_sub(b) as f64 / secs) as u64);
        let mut msg = format!(
            "{phase}: pub {}/s  conf {}/s  dlv {}/s  | conf {}  dlv {}",
            rate(s.published, self.last.published),
            rate(s.confirmed, self.last.confirmed),
            rate(s.delivered, self.last.delivered),
            group(s.confirmed),
            group(s.delivered),
        );
        if s.failed > 0 {
            msg.push_str(&format!("  failed {}", group(s.failed)));
        }
        if s.redelivered > 0 {
            msg.push_str(&format!("  redlv {}", group(s.redelivered)));
        }
        if s.anomalies > 0 {
            msg.push_str(&format!("  ANOMALIES {}", group(s.anomalies)));
        }
        self.bar.set_message(msg);
        if let Some(p) = position {
            self.bar.set_position(p);
        } else {
            self.bar.tick();
        }
        self.last = s;
        self.last_at = now;
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The outcome of `--verify`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    /// Whether `--verify` was given (the counts are reported either way).
    pub enabled: bool,
    pub passed: bool,
    /// Why it failed, one reason a line.
    pub failures: Vec<String>,
}

/// The JSON report of a load run. Counts cover the whole run (warm-up
/// included); rates and latencies cover the measured period only.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// `HandshakeOk.server_version` of the broker.
    pub broker_version: String,
    pub run_id: String,
    pub params: RunArgs,
    /// Open loop (`rate > 0`) or closed loop.
    pub mode: &'static str,
    pub started_unix_ms: u64,
    pub elapsed_secs: f64,
    /// Seconds over which `confirm_rate` is computed.
    pub measured_secs: f64,
    /// Seconds over which `deliver_rate` is computed.
    pub deliver_secs: f64,
    pub publishers_total: u64,
    pub members_total: u64,
    /// Publishes sent.
    pub published: u64,
    /// Publishes the broker confirmed.
    pub confirmed: u64,
    /// Publishes that got an error, or no answer before the drain timeout.
    pub failed: u64,
    /// Distinct (member, seq) first deliveries.
    pub delivered: u64,
    /// Confirmed messages times the members that should have received them.
    pub expected_deliveries: u64,
    pub redelivered: u64,
    /// (member, confirmed message) pairs never delivered.
    pub lost: u64,
    /// Distinct confirmed messages missing for at least one member.
    pub lost_messages: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Confirmed messages delivered with other content at their seq.
    pub mismatched: u64,
    /// A seq delivered twice with different content.
    pub conflicts: u64,
    /// Two confirmations naming the same seq of a room.
    pub confirm_conflicts: u64,
    /// Confirmations flagged `duplicate` (a dedup hit; none expected).
    pub duplicate_confirms: u64,
    /// Deliveries whose payload is not a load-test stamp.
    pub foreign: u64,
    pub ack_errors: u64,
    /// Confirmed messages per second in the measured period.
    pub confirm_rate: f64,
    /// First deliveries per second, summed over members.
    pub deliver_rate: f64,
    /// From intended send time to confirmation.
    pub confirm_latency_us: LatencySummary,
    /// From intended send time to delivery to a member.
    pub e2e_latency_us: LatencySummary,
    /// From intended send time to the publish being handed to its
    /// connection: the generator's own lateness, part of both latencies
    /// above (in a closed loop it is ~0 by definition).
    pub send_lag_us: LatencySummary,
    /// The broker's CPU time (user + system, all threads) from the end of
    /// the warm-up to the end of the measured period (without a duration:
    /// of publishing; a replay: of delivering), when
    /// its process could be read (`--roomqd`, or `--broker-pid`, on Linux).
    pub broker_cpu_secs: Option<f64>,
    /// `broker_cpu_secs` per message confirmed in the measured period (a
    /// replay: per first delivery), in microseconds.
    pub broker_cpu_us_per_msg: Option<f64>,
    pub verify: Verdict,
    /// The first error a publisher or subscriber saw, if any.
    pub first_error: Option<String>,
}

impl Report {
    pub fn print_summary(&self) {
        let p = &self.params;
        let shape = format!(
            "{} room(s) × {} publisher(s) × {} {} subscriber(s), {} B, window {}{}",
            p.rooms,
            p.publishers,
            p.subscribers,
            if p.ephemeral { "ephemeral" } else { "durable" },
            p.size,
            p.window,
            if p.dedup_ids { ", dedup ids" } else { "" }
        );
        println!();
        println!(
            "roomq-loadtest {}  broker {} at {}  run {}",
            self.tool_version, self.broker_version, p.addr, self.run_id
        );
        println!(
            "  {shape}, {} loop{}",
            self.mode,
            if p.rate > 0.0 {
                format!(" at {} msg/s", group(p.rate as u64))
            } else {
                String::new()
            }
        );
        println!(
            "  {:.1} s measured after {:.1} s warm-up ({:.1} s in all)",
            self.measured_secs, p.warmup, self.elapsed_secs
        );
        println!(
            "  published {}   confirmed {}   failed {}",
            group(self.published),
            group(self.confirmed),
            group(self.failed)
        );
        println!(
            "  delivered {} of {} expected   redelivered {}",
            group(self.delivered),
            group(self.expected_deliveries),
            group(self.redelivered)
        );
        println!(
            "  confirm rate  {:>12} msg/s",
            group(self.confirm_rate as u64)
        );
        println!(
            "  deliver rate  {:>12} msg/s (over {:.1} s, all members)",
            group(self.deliver_rate as u64),
            self.deliver_secs
        );
        if let (Some(secs), Some(us)) = (self.broker_cpu_secs, self.broker_cpu_us_per_msg) {
            println!("  broker CPU    {secs:>12.2} s    {us:.2} µs per message");
        }
        println!("  confirm latency  {}", self.confirm_latency_us.line());
        println!("  e2e latency      {}", self.e2e_latency_us.line());
        if self.params.rate > 0.0 {
            println!("  send lag         {}", self.send_lag_us.line());
        }
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
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
        print_verdict(&self.verify);
    }
}

pub fn print_verdict(v: &Verdict) {
    match (v.enabled, v.passed) {
        (false, _) => println!("  verify: not requested (--verify)"),
        (true, true) => println!("  verify: PASS"),
        (true, false) => {
            println!("  verify: FAIL");
            for f in &v.failures {
                println!("    - {f}");
            }
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_is_in_microseconds() {
        let mut h = new_histogram().unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1_000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() <= 1.0, "{s:?}");
        assert_eq!(LatencySummary::of(&new_histogram().unwrap()).count, 0);
    }

    #[test]
    fn ms_summary_uses_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = MsSummary::of(&d);
        assert_eq!(
            (s.count, s.min, s.p50, s.p99, s.max),
            (100, 1.0, 50.0, 99.0, 100.0)
        );
        assert_eq!(MsSummary::of(&[]).count, 0);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
