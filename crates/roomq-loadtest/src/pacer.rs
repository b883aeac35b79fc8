//! The open-loop schedule: message `k` of the run is due at
//! `start + k / rate`, whatever happened to the messages before it.
//!
//! A dedicated OS thread walks the schedule and hands each due time to a
//! publisher (round-robin) as a *tick*. A publisher sends when it gets a
//! tick and its window has room; its latency is measured from the tick's
//! intended time, so a broker that falls behind is charged for every
//! message that waited, and the generator cannot coordinate with it to
//! hide a stall (no coordinated omission).
//!
//! The thread sleeps with the OS timer (tokio's timer wheel has 1 ms
//! granularity, too coarse for 10,000 msg/s). Its own lateness, typically
//! tens of microseconds, is included in the measured latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::payload::Clock;

/// Ticks buffered for one publisher before the pacer waits for it.
pub const TICK_BUFFER: usize = 1 << 16;

/// When each message of an open-loop run is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Intended time of message 0, ns since the Unix epoch.
    pub start_ns: u64,
    /// Messages per second, over all publishers.
    pub rate: f64,
    /// No message is due at or after this time.
    pub end_ns: u64,
    /// At most this many messages (`--messages`).
    pub max_messages: Option<u64>,
}

impl Schedule {
    /// Intended time of message `k`.
    pub fn due(&self, k: u64) -> u64 {
        let offset = (k as f64 * 1e9 / self.rate).round();
        self.start_ns.saturating_add(offset as u64)
    }

    /// Whether the schedule has message `k`.
    pub fn has(&self, k: u64) -> bool {
        self.max_messages.is_none_or(|m| k < m) && self.due(k) < self.end_ns
    }
}

/// Starts the pacer thread. It ends (dropping the senders, which tells each
/// publisher the schedule is over) when the schedule is exhausted or `stop`
/// is set; it returns the number of ticks handed out.
pub fn spawn(
    clock: Clock,
    schedule: Schedule,
    publishers: Vec<mpsc::Sender<u64>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<u64>> {
    std::thread::Builder::new()
        .name("roomq-pacer".into())
        .spawn(move || run(clock, schedule, publishers, &stop))
}

fn run(clock: Clock, s: Schedule, publishers: Vec<mpsc::Sender<u64>>, stop: &AtomicBool) -> u64 {
    let n = publishers.len() as u64;
    if n == 0 {
        return 0;
    }
    let mut k = 0u64;
    while s.has(k) && !stop.load(Ordering::Relaxed) {
        let due = s.due(k);
        let now = clock.now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
            continue;
        }
        let Some(tx) = usize::try_from(k % n).ok().and_then(|i| publishers.get(i)) else {
            break;
        };
        loop {
            match tx.try_send(due) {
                Ok(()) => break,
                // The publisher is behind: its ticks keep their intended
                // times, so the wait shows in its latency.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if stop.load(Ordering::Relaxed) {
                        return k;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        k += 1;
    }
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        let s = Schedule {
            start_ns: 1_000,
            rate: 10_000.0,
            end_ns: 1_000 + 1_000_000_000,
            max_messages: None,
        };
        assert_eq!(s.due(0), 1_000);
        assert_eq!(s.due(1), 1_000 + 100_000);
        assert_eq!(s.due(10_000), 1_000 + 1_000_000_000);
        assert!(s.has(9_999));
        assert!(!s.has(10_000), "the end is exclusive");
        let capped = Schedule {
            max_messages: Some(5),
            ..s
        };
        assert!(capped.has(4) && !capped.has(5));
    }

    #[test]
    fn ticks_go_round_robin_with_their_due_times() {
        let clock = Clock::new();
        let start = clock.now_ns();
        let s = Schedule {
            start_ns: start,
            rate: 100_000.0,
            end_ns: u64::MAX,
            max_messages: Some(10),
        };
        let (a_tx, mut a) = mpsc::channel(16);
        let (b_tx, mut b) = mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = spawn(clock, s, vec![a_tx, b_tx], stop)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(sent, 10);
        let mut got_a = Vec::new();
        while let Ok(t) = a.try_recv() {
            got_a.push(t);
        }
        let mut got_b = Vec::new();
        while let Ok(t) = b.try_recv() {
            got_b.push(t);
        }
        assert_eq!(
            got_a,
            (0..10).step_by(2).map(|k| s.due(k)).collect::<Vec<_>>()
        );
        assert_eq!(
            got_b,
            (1..10).step_by(2).map(|k| s.due(k)).collect::<Vec<_>>()
        );
        // Nothing was handed out before it was due.
        assert!(clock.now_ns() >= s.due(9));
    }
}
