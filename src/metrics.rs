//! Prometheus metrics: every name and label in one place, recorded through the
//! `metrics` facade and rendered by `GET /metrics`. Message types are labels only
//! for the protocol's known types; app-defined types count as `other`, so a client
//! cannot grow the label set without bound.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// WebSocket sessions open on this node (gauge).
pub const CONNECTIONS: &str = "signal_connections";
/// Rooms with at least one member on this node (gauge).
pub const ROOMS: &str = "signal_rooms";
/// Completed joins (counter).
pub const JOINS: &str = "signal_joins_total";
/// Leaves by `reason` (counter).
pub const LEAVES: &str = "signal_leaves_total";
/// Relayed messages by `type` and `kind` (directed, broadcast) (counter).
pub const RELAYED: &str = "signal_relayed_messages_total";
/// Relays that failed, by `code` (target_not_found, unavailable, forbidden) (counter).
pub const RELAY_ERRORS: &str = "signal_relay_errors_total";
/// `error` frames sent, by `code` (counter).
pub const ERRORS: &str = "signal_errors_total";
/// Close codes sent by the server, by `code` (counter).
pub const CLOSES: &str = "signal_closes_total";
/// Frame received from a client until published to Redis (histogram, seconds).
pub const RELAY_PUBLISH_SECONDS: &str = "signal_relay_publish_seconds";
/// Published by the sending node until written to the target's socket (histogram,
/// seconds; across hosts it includes their clock difference).
pub const RELAY_DELIVERY_SECONDS: &str = "signal_relay_delivery_seconds";
/// Whether Redis answers (gauge 0/1; 1 in standalone mode).
pub const REDIS_UP: &str = "signal_redis_up";
/// How this node reaches Redis: 1 for its `mode` (`single`, `sentinel`, `cluster`)
/// (gauge, set once at startup).
pub const REDIS_MODE: &str = "signal_redis_mode_info";
/// Redis Cluster masters by `state` (`up`: answered the last check, `down`), as
/// `/readyz` last saw them (gauge; cluster mode only).
pub const REDIS_SHARDS: &str = "signal_redis_shards";
/// Redis commands that Redis answered with an error (WRONGTYPE, a script error),
/// by `op` (counter). Not an outage: `signal_redis_up` stays 1.
pub const REDIS_COMMAND_ERRORS: &str = "signal_redis_command_errors_total";
/// Envelopes from Redis dropped because they may not be delivered, by `reason`
/// (`clear`: not sealed though a payload key is set; `unopenable`: sealed for
/// another channel or with another key; `no_key`: sealed, but this node has no key)
/// (counter).
pub const ENVELOPES_DROPPED: &str = "signal_envelopes_dropped_total";
/// Redis command round trips by `op` (histogram, seconds).
pub const REDIS_SECONDS: &str = "signal_redis_command_seconds";
/// Redis connections rebuilt, by `connection` (subscriber, relay) (counter).
pub const RECONNECTS: &str = "signal_redis_reconnects_total";
/// Mailbox reads that filled (or looked for) missed frames (counter).
pub const GAP_FILLS: &str = "signal_gap_fills_total";
/// Frames numbered again because Redis had lost its latest counts (a failover to
/// a replica behind its master) (counter).
pub const RENUMBERED: &str = "signal_renumbered_frames_total";
/// Resume attempts, by `outcome` (resumed, refused, superseded) (counter).
pub const RESUMES: &str = "signal_resumes_total";
/// Sessions detached (kept resumable) instead of leaving, by `reason` (counter).
pub const DETACHES: &str = "signal_detaches_total";
/// Dead nodes whose sessions this node evicted (counter).
pub const NODE_CLEANUPS: &str = "signal_node_cleanups_total";
/// Whether `/readyz` would answer 200 (gauge 0/1).
pub const READY: &str = "signal_ready";
/// HTTP connections not (yet) upgraded to WebSocket (gauge).
pub const HTTP_PENDING: &str = "signal_http_pending_connections";
/// Pending HTTP connections closed at `MAX_PENDING_CONNECTIONS` to make room (counter).
pub const HTTP_EVICTED: &str = "signal_http_evicted_connections_total";

const LATENCY_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Installs the process-wide recorder; `None` if one is installed already (tests).
pub fn install() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()
}

/// The label for a message type: known types as they are, the rest `other`.
pub fn type_label(kind: &str) -> &'static str {
    TYPE_LABELS[type_index(kind)]
}

/// The `type` labels of relayed messages, in the order of [`type_index`].
const TYPE_LABELS: [&str; 6] = [
    "sdp_offer",
    "sdp_answer",
    "ice_candidate",
    "message",
    "broadcast",
    "other",
];

fn type_index(kind: &str) -> usize {
    match kind {
        "sdp_offer" => 0,
        "sdp_answer" => 1,
        "ice_candidate" => 2,
        "message" => 3,
        "broadcast" => 4,
        _ => 5,
    }
}

/// The relayed-message counters (type × directed/broadcast) and the publish
/// histogram, looked up once: the `counter!` macro builds its key and searches the
/// registry on every call, a tenth of a relay's instructions on the sending node.
/// Taken at the first relay, long after the recorder is installed at startup.
struct RelayHandles {
    relayed: Vec<[Counter; 2]>,
    publish: Histogram,
    delivery: Histogram,
}

fn relay_handles() -> &'static RelayHandles {
    static HANDLES: OnceLock<RelayHandles> = OnceLock::new();
    HANDLES.get_or_init(|| RelayHandles {
        relayed: TYPE_LABELS
            .iter()
            .map(|t| {
                [
                    counter!(RELAYED, "type" => *t, "kind" => "broadcast"),
                    counter!(RELAYED, "type" => *t, "kind" => "directed"),
                ]
            })
            .collect(),
        publish: histogram!(RELAY_PUBLISH_SECONDS),
        delivery: histogram!(RELAY_DELIVERY_SECONDS),
    })
}

/// A relayed message.
pub fn relayed(kind: &str, directed: bool, publish: Duration) {
    let handles = relay_handles();
    if let Some(pair) = handles.relayed.get(type_index(kind)) {
        pair[usize::from(directed)].increment(1);
    }
    handles.publish.record(publish.as_secs_f64());
}

/// A relay that failed with `code`.
pub fn relay_failed(code: &'static str) {
    counter!(RELAY_ERRORS, "code" => code).increment(1);
}

/// An `error` frame sent.
pub fn error_sent(code: &'static str) {
    counter!(ERRORS, "code" => code).increment(1);
}

/// A close code sent.
pub fn closed(code: u16) {
    counter!(CLOSES, "code" => code.to_string()).increment(1);
}

/// A frame written to its target's socket, `age` after it was published.
pub fn delivered(age: Duration) {
    relay_handles().delivery.record(age.as_secs_f64());
}

/// A session opened (+1) or closed (-1).
pub fn connection(delta: f64) {
    gauge!(CONNECTIONS).increment(delta);
}

/// A completed join.
pub fn joined() {
    counter!(JOINS).increment(1);
}

/// A leave, by reason.
pub fn left(reason: &'static str) {
    counter!(LEAVES, "reason" => reason).increment(1);
}

/// A Redis round trip for `op`.
pub fn redis_op(op: &'static str, took: Duration) {
    histogram!(REDIS_SECONDS, "op" => op).record(took.as_secs_f64());
}

/// Redis reachability changed.
pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Records how this node reaches Redis.
pub fn redis_mode(mode: &'static str) {
    gauge!(REDIS_MODE, "mode" => mode).set(1.0);
}

/// Records how many cluster masters answered the last check.
pub fn redis_shards(up: usize, down: usize) {
    gauge!(REDIS_SHARDS, "state" => "up").set(up as f64);
    gauge!(REDIS_SHARDS, "state" => "down").set(down as f64);
}

/// Redis answered the command `op` with an error.
pub fn redis_command_failed(op: &'static str) {
    counter!(REDIS_COMMAND_ERRORS, "op" => op).increment(1);
}

/// An envelope from Redis was dropped unread.
pub fn envelope_dropped(reason: &'static str) {
    counter!(ENVELOPES_DROPPED, "reason" => reason).increment(1);
}

/// A mailbox was read to fill a gap.
pub fn gap_filled() {
    counter!(GAP_FILLS).increment(1);
}

/// A frame was numbered again (Redis lost its latest counts).
pub fn renumbered() {
    counter!(RENUMBERED).increment(1);
}

/// A resume ended with `outcome`.
pub fn resumed(outcome: &'static str) {
    counter!(RESUMES, "outcome" => outcome).increment(1);
}

/// A session was detached; `reason` is what ended its connection.
pub fn detached(reason: &'static str) {
    counter!(DETACHES, "reason" => reason).increment(1);
}

/// A Redis connection was rebuilt.
pub fn reconnected(connection: &'static str) {
    counter!(RECONNECTS, "connection" => connection).increment(1);
}

/// A dead node was cleaned up by this node.
pub fn node_cleaned() {
    counter!(NODE_CLEANUPS).increment(1);
}

/// Rooms with local members, and readiness, sampled by the upkeep.
pub fn sample(rooms: usize, ready: bool) {
    gauge!(ROOMS).set(rooms as f64);
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_types_do_not_become_labels() {
        assert_eq!(type_label("ice_candidate"), "ice_candidate");
        assert_eq!(type_label("file_offer_v2"), "other");
    }
}
