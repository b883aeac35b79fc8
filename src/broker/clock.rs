//! The broker's clock: wall-clock milliseconds read once and advanced by
//! tokio's monotonic clock, and the `Now` the delivery rules read.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::room::Now;

/// Milliseconds since the Unix epoch, as the broker keeps time: the wall
/// clock read once, advanced by tokio's monotonic clock. Message
/// timestamps, TTLs and deliver-at times all use it, so they agree with the
/// broker's timers (and move with paused time in tests); a wall clock that
/// is stepped while the broker runs does not move it.
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (instant, wall) = *BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        (std::time::Instant::now(), wall)
    });
    let elapsed = Instant::now().into_std().saturating_duration_since(instant);
    wall.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The delivery rules' clock now.
pub fn clock_now() -> Now {
    Now {
        instant: Instant::now(),
        wall_ms: now_ms(),
    }
}
