//! Operations: Prometheus metrics, `/stats`, `/nodes`, JSON logs and the alerts a
//! node logs (connection spike, Redis lost and back), through real nodes and Redis.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "ops-admin";

/// The value of the first sample of `name` whose labels contain every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let base = series.split('{').next().unwrap_or(series);
            base == name
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

async fn metrics_of(node: &TestNode) -> String {
    let reply = node.request("GET", "/metrics", &[], None).await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
    reply.text
}

/// Relays, errors, joins and delivery latency show up in `/metrics` on the nodes involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_relays_errors_and_latency() {
    let c = Cluster::redis_with(2, &[("ADMIN_TOKEN", ADMIN)]).await;
    let (_room, mut alice, _a, mut bob, _b) = pair(&c).await;
    let offer = json!({"type": "offer", "sdp": "v=0"});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": offer}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    alice
        .send_json(json!({"type": "custom_app_thing", "target": "bob", "payload": 1}))
        .await;
    bob.expect_frame(&relayed("custom_app_thing", "alice", Some("bob"), json!(1)))
        .await;
    alice
        .send_json(json!({"type": "broadcast", "payload": 2}))
        .await;
    bob.expect_frame(&relayed("broadcast", "alice", None, json!(2)))
        .await;
    alice
        .send_json(json!({"type": "message", "target": "nobody", "id": 1}))
        .await;
    alice.expect_error("target_not_found").await;

    let sender = metrics_of(c.node(0)).await;
    let directed = [("type", "sdp_offer"), ("kind", "directed")];
    assert_eq!(
        sample(&sender, "signal_relayed_messages_total", &directed),
        Some(1.0),
        "{sender}"
    );
    let other = [("type", "other"), ("kind", "directed")];
    assert_eq!(
        sample(&sender, "signal_relayed_messages_total", &other),
        Some(1.0),
        "app types are `other`"
    );
    let broadcast = [("type", "broadcast"), ("kind", "broadcast")];
    assert_eq!(
        sample(&sender, "signal_relayed_messages_total", &broadcast),
        Some(1.0)
    );
    let not_found = [("code", "target_not_found")];
    assert_eq!(
        sample(&sender, "signal_errors_total", &not_found),
        Some(1.0)
    );
    assert_eq!(
        sample(&sender, "signal_relay_errors_total", &not_found),
        Some(1.0)
    );
    assert!(sample(&sender, "signal_relay_publish_seconds_count", &[]).is_some_and(|n| n >= 3.0));
    assert!(sample(
        &sender,
        "signal_redis_command_seconds_count",
        &[("op", "relay")]
    )
    .is_some_and(|n| n >= 2.0));
    assert_eq!(sample(&sender, "signal_connections", &[]), Some(1.0));
    assert_eq!(sample(&sender, "signal_joins_total", &[]), Some(1.0));

    let receiver = metrics_of(c.node(1)).await;
    assert!(
        sample(&receiver, "signal_relay_delivery_seconds_count", &[]).is_some_and(|n| n >= 3.0),
        "published-to-written latency is measured where the frame is written: {receiver}"
    );
    eventually(
        TIMEOUT,
        "signal_redis_up and signal_ready are 1",
        || async {
            let m = metrics_of(c.node(1)).await;
            sample(&m, "signal_redis_up", &[]) == Some(1.0)
                && sample(&m, "signal_ready", &[]) == Some(1.0)
        },
    )
    .await;

    bob.close().await;
    alice.expect_frame(&user_left("bob", &_room, "left")).await;
    // The room hears the leave at its first step; the count follows the last one.
    eventually(TIMEOUT, "signal_leaves_total{reason=left} is 1", || async {
        let m = metrics_of(c.node(1)).await;
        sample(&m, "signal_leaves_total", &[("reason", "left")]) == Some(1.0)
    })
    .await;
}

/// With METRICS_TOKEN set, /metrics needs that bearer; without it, it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_guards_the_scrape() {
    let c = Cluster::standalone_with(&[("METRICS_TOKEN", "scrape")]).await;
    let node = c.node(0);
    assert_eq!(
        node.bearer_request("GET", "/metrics", None, None).await.0,
        401
    );
    assert_eq!(
        node.bearer_request("GET", "/metrics", Some("nope"), None)
            .await
            .0,
        403
    );
    let reply = node
        .request(
            "GET",
            "/metrics",
            &[("authorization", "Bearer scrape")],
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text.contains("signal_redis_up"), "{}", reply.text);
}

async fn check_stats_and_nodes(c: &Cluster) {
    let node = c.node(0);
    assert_eq!(
        node.bearer_request("GET", "/stats", None, None).await.0,
        401
    );
    assert_eq!(
        node.bearer_request("GET", "/nodes", Some("wrong"), None)
            .await
            .0,
        403
    );

    let (room, mut alice, _a, mut bob, _b) = pair(c).await;
    alice
        .send_json(json!({"type": "message", "target": "bob"}))
        .await;
    bob.expect_type("message").await;

    let (status, stats) = node
        .bearer_request("GET", "/stats", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["node_id"], node.node_id());
    assert!(
        stats["connections"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(stats["rooms"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    assert!(
        stats["messages_in"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(stats["messages_out"].as_u64().is_some(), "{stats}");
    for key in [
        "messages_in_per_second",
        "messages_out_per_second",
        "cpu_seconds",
    ] {
        assert!(stats[key].is_number(), "{key} in {stats}");
    }
    assert!(
        stats["rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20),
        "{stats}"
    );
    assert!(stats["uptime_seconds"].is_u64(), "{stats}");

    let (status, nodes) = node
        .bearer_request("GET", "/nodes", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{nodes}");
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["node_id"].as_str()).collect())
        .unwrap_or_default();
    if c.is_redis() {
        assert_eq!(stats["redis"]["state"], "up", "{stats}");
        assert!(stats["redis"]["used_memory"]
            .as_u64()
            .is_some_and(|m| m > 0));
        // Node 1 may not have beaten yet at the very start: wait for both.
        eventually(TIMEOUT, "both nodes listed by /nodes", || async {
            let (_, n) = node
                .bearer_request("GET", "/nodes", Some(ADMIN), None)
                .await;
            n["count"] == 2
        })
        .await;
        let (_, nodes) = node
            .bearer_request("GET", "/nodes", Some(ADMIN), None)
            .await;
        for n in nodes["nodes"].as_array().into_iter().flatten() {
            for key in ["node_id", "addr", "connections", "rooms", "heartbeat_at"] {
                assert!(!n[key].is_null(), "{key} missing in {n}");
            }
        }
    } else {
        assert_eq!(stats["redis"]["state"], "standalone", "{stats}");
        assert_eq!(ids, vec![node.node_id()]);
    }
    let _ = room;
}

both_engines!(
    stats_and_nodes_are_admin_only_and_describe_the_node,
    nodes = 2,
    env = [("ADMIN_TOKEN", super::ADMIN)],
    check_stats_and_nodes
);

/// LOG_FORMAT=json: every line is one JSON object with timestamp, level, target and
/// a top-level node id (once); session lines carry room, user and session ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_node_and_session_fields() {
    let c = Cluster::redis_with(1, &[("LOG_FORMAT", "json")]).await;
    let node = c.node(0);
    let room = room_id();
    let (alice, _) = join(node, &room, "alice").await;
    alice.close().await;
    assert!(
        node.wait_for_log("\"disconnected\"", TIMEOUT).await,
        "no disconnect line: {}",
        node.log()
    );
    let log = node.log();
    let mut session_lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
        // At the top level of every line, not only under `span`.
        assert_eq!(
            v["node_id"].as_str(),
            Some(node.node_id()),
            "top-level node_id missing: {line}"
        );
        assert_eq!(
            line.matches("\"node_id\"").count(),
            1 + usize::from(v["span"]["node_id"].is_string()),
            "{line}"
        );
        if v["span"]["name"] == "session" {
            session_lines += 1;
            assert_eq!(v["span"]["room_id"], room.as_str(), "{line}");
            assert_eq!(v["span"]["user_id"], "alice", "{line}");
            assert!(v["span"]["session_id"].is_string(), "{line}");
        }
    }
    assert!(
        session_lines >= 3,
        "expected connect, join and disconnect lines: {log}"
    );
}

/// More connections than ALERT_CONNECTION_SPIKE within a minute log a WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_spike_is_logged() {
    let c = Cluster::standalone_with(&[("ALERT_CONNECTION_SPIKE", "3")]).await;
    let node = c.node(0);
    let room = room_id();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(join(node, &room, &format!("u{i}")).await.0);
    }
    // The sampler runs every 5 s.
    assert!(
        node.wait_for_log("connection spike", Duration::from_secs(12))
            .await,
        "no spike warning: {}",
        node.log()
    );
    drop(clients);
}

/// Losing Redis is logged at ERROR once, and its return at INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loss_and_recovery_are_logged_once() {
    let c = Cluster::redis(1).await;
    let node = c.node(0);
    let redis = c.redis_server();
    redis.stop();
    assert!(
        node.wait_for_log_line(|l| l.contains("ERROR") && l.contains("redis"), TIMEOUT * 2)
            .await,
        "no ERROR line about Redis: {}",
        node.log()
    );
    redis.restart();
    assert!(
        node.wait_for_log_line(
            |l| l.contains("INFO") && (l.contains("reachable again") || l.contains("reconnected")),
            Duration::from_secs(15)
        )
        .await,
        "no INFO line about Redis coming back: {}",
        node.log()
    );
    let errors = node
        .log()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("redis subscriber"))
        .count();
    assert!(
        errors <= 2,
        "the loss must be logged per state change, not per retry: {errors} lines"
    );
}

/// A Redis command that fails while Redis answers (WRONGTYPE: a room key holding a
/// string) is a command failure, not an outage: the node logs it at ERROR with the
/// command's name, answers `unavailable` / 503 as for any store failure, and keeps
/// `signal_redis_up` at 1 and `/readyz` at 200, so no false RedisDown alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_command_errors_are_not_outages() {
    let c = Cluster::redis(1).await;
    let node = c.node(0);
    let redis = c.redis_server();
    let (room, poisoned) = (room_id(), room_id());
    let (mut alice, _) = TestClient::connect_join(node, &room, "alice").await;
    let (mut bob, _) = TestClient::connect_join(node, &room, "bob").await;
    alice.expect_type("user_joined").await;

    // A join whose room key is a string: the join script fails with WRONGTYPE.
    redis.cli(&["SET", &c.room_key(&poisoned), "x"]);
    let mut carol = TestClient::connect(&node.ws_url(&poisoned, "carol")).await;
    carol.expect_error_then_close("unavailable", 1013).await;
    // The same room over REST: 503 with the JSON error body.
    let (status, body) = node.get(&format!("/rooms/{poisoned}/users")).await;
    assert_eq!(status, 503, "GET /rooms/{poisoned}/users: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // A relay in a room whose key turned into a string: the relay script fails.
    redis.cli(&["DEL", &c.room_key(&room)]);
    redis.cli(&["SET", &c.room_key(&room), "x"]);
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": {"n": 1}, "id": 1}))
        .await;
    alice.expect_error("unavailable").await;

    for op in ["join", "room_users", "relay"] {
        assert!(
            node.wait_for_log_line(
                |l| l.contains("ERROR")
                    && l.contains("redis command failed")
                    && l.contains(&format!("op=\"{op}\"")),
                TIMEOUT
            )
            .await,
            "no ERROR line naming the failed command {op}:\n{}",
            node.log()
        );
    }
    let metrics = metrics_of(node).await;
    assert_eq!(
        sample(&metrics, "signal_redis_up", &[]),
        Some(1.0),
        "Redis answered every command; signal_redis_up must stay 1:\n{metrics}"
    );
    for op in ["join", "relay"] {
        assert!(
            sample(&metrics, "signal_redis_command_errors_total", &[("op", op)])
                .is_some_and(|n| n >= 1.0),
            "no command error counted for {op}:\n{metrics}"
        );
    }
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "/readyz after command errors: {body}");
    let log = node.log();
    assert!(
        !log.to_lowercase().contains("unreachable"),
        "a command error was reported as Redis being unreachable:\n{log}"
    );
    bob.expect_silence(QUIET).await;
}

/// Right after every node answered `/readyz` 200, `GET /nodes` lists every node:
/// a node registers itself before it says it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_every_node_right_after_ready() {
    let c = Cluster::redis_with(3, &[("ADMIN_TOKEN", ADMIN)]).await;
    let mut want: Vec<&str> = (0..3).map(|i| c.node(i).node_id()).collect();
    want.sort_unstable();
    for i in 0..3 {
        let (status, nodes) = c
            .node(i)
            .bearer_request("GET", "/nodes", Some(ADMIN), None)
            .await;
        assert_eq!(status, 200, "{nodes}");
        let mut ids: Vec<&str> = nodes["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["node_id"].as_str()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        assert_eq!(ids, want, "node {i}: {nodes}");
        assert_eq!(nodes["count"], 3, "{nodes}");
    }
}
