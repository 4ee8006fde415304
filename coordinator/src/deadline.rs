//! Deadlines of a run: how long the coordinator waits for each node, per
//! phase. A node that misses one ends the run with
//! [`CoordinatorError::Stalled`] naming it and the phase, and the other
//! nodes are told to abort.
//!
//! Unary calls (setup, mask sum, delivery, finish) get a deadline each, sent
//! to the node as gRPC's `grpc-timeout` too; the mask sum's grows with the
//! list's length. Streams (local step, re-blinding) carry fixed-size chunks,
//! so they are bounded per message instead: a stream on which the node owes
//! a message and sends none for `stall` has stalled. While a node runs its
//! query it sends heartbeats (see `ListChunk.heartbeat`), so a long query is
//! not a stall. HTTP/2 keepalive (`cleanroom_proto::KEEPALIVE`) detects a dead peer or
//! connection even when no call is in flight.

use std::future::Future;
use std::time::Duration;

use crate::run::{CoordinatorError, Peer};

/// Per-phase deadlines. Parse overrides with [`Deadlines::set`]
/// (`PHASE=SECONDS`, as the CLI's `--deadline` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connecting (TCP, TLS, HTTP/2) and setup: each node checks approval,
    /// policy and budget.
    pub setup: Duration,
    /// Streams: the longest silence while a node owes a message. Keep it
    /// well above the nodes' heartbeat ([`cleanroom_proto::HEARTBEAT`],
    /// 5 s), and below the nodes' `stream_idle_secs` (default 120).
    pub stall: Duration,
    /// The longest a node's local step (query and blinding) may take before
    /// its list starts, heartbeats or not.
    pub local: Duration,
    /// Mask sum and delivery: the base deadline of each call.
    pub release: Duration,
    /// Added to a mask sum's deadline per million rows of the list.
    pub release_per_million_rows: Duration,
    /// Finish (and abort) calls.
    pub finish: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            setup: Duration::from_secs(30),
            stall: Duration::from_secs(60),
            local: Duration::from_secs(4 * 3600),
            release: Duration::from_secs(30),
            release_per_million_rows: Duration::from_secs(10),
            finish: Duration::from_secs(10),
        }
    }
}

/// The phase names [`Deadlines::set`] accepts.
pub const DEADLINE_PHASES: [&str; 6] = [
    "setup",
    "stall",
    "local",
    "release",
    "release-per-1m",
    "finish",
];

impl Deadlines {
    /// Overrides one deadline from `PHASE=SECONDS` (seconds may be
    /// fractional; between 0.001 and 86400).
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (phase, secs) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected PHASE=SECONDS"))?;
        let secs: f64 = secs
            .trim()
            .parse()
            .map_err(|_| format!("{spec:?}: {secs:?} is not a number of seconds"))?;
        if !(0.001..=86_400.0).contains(&secs) {
            return Err(format!("{spec:?}: seconds must be between 0.001 and 86400"));
        }
        let d = Duration::from_secs_f64(secs);
        match phase.trim() {
            "setup" => self.setup = d,
            "stall" => self.stall = d,
            "local" => self.local = d,
            "release" => self.release = d,
            "release-per-1m" => self.release_per_million_rows = d,
            "finish" => self.finish = d,
            other => {
                return Err(format!(
                    "unknown deadline {other:?} (one of {})",
                    DEADLINE_PHASES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The deadline of a mask sum over a list of `rows` rows.
    pub fn mask_sum(&self, rows: u64) -> Duration {
        self.release + self.release_per_million_rows.mul_f64(rows as f64 / 1e6)
    }
}

/// A request for `body` carrying `limit` (plus a margin) as its
/// `grpc-timeout`, so the node stops working on it soon after the
/// coordinator stops waiting. The margin lets the coordinator's own timer
/// fire first, so a missed deadline reads as [`CoordinatorError::Stalled`].
pub(crate) fn request<T>(body: T, limit: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.set_timeout(limit + (limit / 10).max(Duration::from_secs(1)));
    req
}

/// Awaits a unary `call` to `peer` for at most `limit`.
pub(crate) async fn unary<T>(
    peer: &Peer,
    call: &'static str,
    limit: Duration,
    response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CoordinatorError> {
    match tokio::time::timeout(limit, response).await {
        Ok(r) => r.map(tonic::Response::into_inner).map_err(peer.fail(call)),
        Err(_) => Err(peer.stalled(call, limit)),
    }
}

/// The next message of a stream from `peer`, or [`CoordinatorError::Stalled`]
/// if none comes within `stall` while `owed()` says the node owes one. While
/// it owes none (nothing sent to it is unanswered), silence is fine.
pub(crate) async fn next_message<T>(
    peer: &Peer,
    call: &'static str,
    stream: &mut tonic::Streaming<T>,
    stall: Duration,
    owed: impl Fn() -> bool,
) -> Result<Option<T>, CoordinatorError> {
    loop {
        // `Streaming::message` is cancel-safe: a timeout loses nothing.
        match tokio::time::timeout(stall, stream.message()).await {
            Ok(r) => return r.map_err(peer.fail(call)),
            Err(_) if owed() => return Err(peer.stalled(call, stall)),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_strictly() {
        let mut d = Deadlines::default();
        d.set("setup=5").unwrap();
        d.set("stall = 0.5").unwrap();
        d.set("release-per-1m=2").unwrap();
        assert_eq!(d.setup, Duration::from_secs(5));
        assert_eq!(d.stall, Duration::from_millis(500));
        assert_eq!(d.mask_sum(3_000_000), Duration::from_secs(36));
        for bad in [
            "setup",
            "setup=x",
            "nap=3",
            "finish=0",
            "finish=1e9",
            "finish=-1",
        ] {
            assert!(d.set(bad).is_err(), "{bad}");
        }
        assert!(d.set("nap=3").unwrap_err().contains("setup, stall"));
    }
}
