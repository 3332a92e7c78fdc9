//! This node's numbers for `GET /stats`: frames in and out with their recent
//! rates, uptime, and the process's memory and CPU from /proc. A sampler updates
//! the rates, feeds the gauges of [`crate::metrics`], and warns when connections
//! jump by more than `ALERT_CONNECTION_SPIKE` within a minute.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often rates, gauges and the spike check are updated.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window of the connection-spike alert.
const SPIKE_WINDOW: Duration = Duration::from_secs(60);

/// Counters shared by every session of the node.
pub struct Stats {
    started: Instant,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Per-second rates over the last sample period, as f64 bits.
    rate_in: AtomicU64,
    rate_out: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            rate_in: AtomicU64::new(0),
            rate_out: AtomicU64::new(0),
        }
    }
}

/// A snapshot for `GET /stats`.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub uptime_seconds: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl Stats {
    /// A frame received from a client.
    pub fn frame_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame written to a client.
    pub fn frame_out(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The current numbers.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            uptime_seconds: self.started.elapsed().as_secs(),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            messages_in_per_second: f64::from_bits(self.rate_in.load(Ordering::Relaxed)),
            messages_out_per_second: f64::from_bits(self.rate_out.load(Ordering::Relaxed)),
            rss_bytes: rss_bytes(),
            cpu_seconds: cpu_seconds(),
        }
    }
}

/// Resident memory of this process (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of this process (Linux; clock ticks of 1/100 s).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// What the sampler reads from the node besides its counters; implemented by the
/// node's state, so this module does not depend on it.
pub trait NodeGauges: Send + Sync {
    /// Whether the node can serve (not draining, the store answers).
    fn ready(&self) -> impl std::future::Future<Output = bool> + Send;
    /// Rooms with at least one local member.
    fn rooms(&self) -> usize;
    /// WebSocket sessions open on the node.
    fn connections(&self) -> usize;
}

/// Updates `stats`' rates and the gauges read from `node` every [`SAMPLE_EVERY`]
/// until `cancel`.
pub async fn run_sampler(
    stats: Arc<Stats>,
    node: impl NodeGauges,
    spike_threshold: usize,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_in, mut last_out, mut last_at) = (0u64, 0u64, Instant::now());
    let history: Mutex<VecDeque<(Instant, usize)>> = Mutex::new(VecDeque::new());
    let mut spiking = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let secs = now.duration_since(last_at).as_secs_f64().max(0.001);
        let (total_in, total_out) = (
            stats.messages_in.load(Ordering::Relaxed),
            stats.messages_out.load(Ordering::Relaxed),
        );
        let rate = |now: u64, before: u64| ((now - before) as f64 / secs).to_bits();
        stats
            .rate_in
            .store(rate(total_in, last_in), Ordering::Relaxed);
        stats
            .rate_out
            .store(rate(total_out, last_out), Ordering::Relaxed);
        (last_in, last_out, last_at) = (total_in, total_out, now);

        let ready = node.ready().await;
        crate::metrics::sample(node.rooms(), ready);

        let connections = node.connections();
        let lowest = {
            let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
            history.push_back((now, connections));
            while history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > SPIKE_WINDOW)
            {
                history.pop_front();
            }
            history.iter().map(|(_, c)| *c).min().unwrap_or(connections)
        };
        let jump = connections.saturating_sub(lowest);
        if jump > spike_threshold && !spiking {
            tracing::warn!(
                connections,
                jump,
                threshold = spike_threshold,
                "connection spike: connections rose sharply within a minute"
            );
        }
        spiking = jump > spike_threshold;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
        assert!(cpu_seconds().is_some());
    }
}
