//! Time, passed in rather than read globally, so session expiry, analysis
//! expiry and audit timestamps are testable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock: monotonic time for timeouts, wall time for records and dates.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time elapsed since an arbitrary fixed origin (monotonic).
    fn now(&self) -> Duration;
    /// Seconds since the Unix epoch (wall clock, UTC).
    fn unix_now(&self) -> i64;
}

/// The real clocks.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock(Instant::now()))
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn unix_now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A clock that only moves when told to (tests). Its wall time starts at
/// the real time of its creation, or at a given instant.
#[derive(Debug)]
pub struct ManualClock {
    elapsed_ms: AtomicU64,
    start_unix: i64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::at(SystemClock(Instant::now()).unix_now())
    }
}

impl ManualClock {
    /// A clock whose wall time starts at `unix` seconds.
    pub fn at(unix: i64) -> Self {
        ManualClock {
            elapsed_ms: AtomicU64::new(0),
            start_unix: unix,
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
    fn unix_now(&self) -> i64 {
        self.start_unix + (self.elapsed_ms.load(Ordering::SeqCst) / 1000) as i64
    }
}

/// RFC 3339 UTC form of a Unix time, for records and listings.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
