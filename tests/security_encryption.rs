//! Security, payload encryption (PAYLOAD_ENCRYPTION_KEY, PROTOCOL.md section 10):
//! relayed payloads cross Redis sealed and are never stored in clear, a node with
//! another key fails loudly, clear envelopes are refused, sealed envelopes cannot
//! be replayed to another user, and every envelope kind works with a key.

#[macro_use]
mod support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use support::security::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The 32-byte key of PAYLOAD_ENCRYPTION_KEY, base64, random per call.
fn encryption_key() -> String {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Payload encryption
// ---------------------------------------------------------------------------

/// PAYLOAD_ENCRYPTION_KEY (same on both nodes): payloads relayed across Redis arrive exactly, yet their text never crosses Redis (MONITOR, pub/sub) nor is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_cross_redis_encrypted() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 2, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let monitor = RedisTap::start(redis.port(), &["MONITOR"]).await;
    let pattern = format!("{prefix}*");
    let published = RedisTap::start(redis.port(), &["PSUBSCRIBE", &pattern]).await;

    let room = room_id();
    let (mut alice, _) = join(&nodes[0], &room, "alice").await;
    let (mut bob, bob_user) = join(&nodes[1], &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let offer = json!({"type": "offer", "sdp": format!("v=0\r\na=x-marker:{marker}\r\n")});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": offer, "id": 1}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    let marker2 = format!("SECOND{}", uuid::Uuid::new_v4().simple());
    bob.send_json(json!({"type": "message", "payload": {"note": marker2}}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", None, json!({"note": marker2})))
        .await;

    // The taps did see the traffic to bob and to alice...
    let bob_channel = user_channel(&prefix, &room, "bob");
    let alice_channel = user_channel(&prefix, &room, "alice");
    let (taps, channels) = (&(&monitor, &published), &(&bob_channel, &alice_channel));
    eventually(
        TIMEOUT,
        "the Redis taps to see messages on the users' channels",
        move || async move {
            taps.1.contains(channels.0)
                && taps.1.contains(channels.1)
                && taps.0.contains(channels.0)
        },
    )
    .await;
    // ...but never the payloads' text.
    for (tap, name) in [(&monitor, "MONITOR"), (&published, "PSUBSCRIBE")] {
        for needle in [&marker, &marker2] {
            assert!(
                !tap.contains(needle),
                "{name} saw the plain payload text {needle}:\n{}",
                tap.text()
            );
        }
    }
    let stored: Vec<(String, String)> = redis
        .dump("*")
        .into_iter()
        .filter(|(key, content)| {
            key.contains(&marker) || content.contains(&marker) || content.contains(&marker2)
        })
        .collect();
    assert!(
        stored.is_empty(),
        "plain payload stored in Redis: {stored:?}"
    );
    for node in &nodes {
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 200, "readyz of {} (body {body})", node.node_id());
    }
}

/// A node whose PAYLOAD_ENCRYPTION_KEY differs from the cluster's fails loudly: an ERROR log naming PAYLOAD_ENCRYPTION_KEY, /readyz 503, and no payload is delivered through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_encryption_key_fails_loudly() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let first_key = encryption_key();
    let other_key = encryption_key();
    let first = TestNode::start(
        Some(&redis),
        &prefix,
        &[("PAYLOAD_ENCRYPTION_KEY", &first_key)],
    )
    .await;
    let other = TestNode::spawn(
        Some(&redis),
        &prefix,
        &[("PAYLOAD_ENCRYPTION_KEY", &other_key)],
    );
    if let Err(e) = other.wait_healthy().await {
        panic!("{e}\n--- log ---\n{}", other.log());
    }

    let room = room_id();
    let (mut alice, _) = join(&first, &room, "alice").await;
    let mut bob = TestClient::connect(&other.ws_url(&room, "bob")).await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    match bob.recv_json().await {
        frame if frame["type"] == "room_users" => {
            // bob was admitted by the mismatched node: a payload for him must not arrive.
            alice
                .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": {"type": "offer", "sdp": marker}}))
                .await;
            let deadline = std::time::Instant::now() + QUIET * 3;
            while let Some(remaining) = deadline.checked_duration_since(std::time::Instant::now()) {
                match bob.next_event(remaining).await {
                    None => break,
                    Some(Event::Text(text)) => assert!(
                        !text.contains(&marker) && !text.contains("sdp_offer"),
                        "bob received the offer through a node with another key: {text}"
                    ),
                    Some(_) => break,
                }
            }
        }
        frame => {
            // Refusing joins while misconfigured is loud enough; it must be `unavailable`.
            if let Some(mismatch) = error_echo_mismatch(&frame, "unavailable", None, None) {
                panic!("bob on the mismatched node: {mismatch}");
            }
            bob.expect_close(1013).await;
        }
    }
    let logged = other
        .wait_for_log_line(
            |line| line.contains("ERROR") && line.contains("PAYLOAD_ENCRYPTION_KEY"),
            TIMEOUT,
        )
        .await;
    assert!(
        logged,
        "no ERROR log line naming PAYLOAD_ENCRYPTION_KEY on the mismatched node:\n{}",
        other.log()
    );
    assert!(
        !other.log().contains(&other_key) && !other.log().contains(&first_key),
        "a node logged an encryption key"
    );
    // The node that was ready first holds the cluster's key: it stays ready, and the
    // newcomer with another key becomes (and stays) unready.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut last = (0, 0);
    while std::time::Instant::now() < deadline {
        last = (first.get("/readyz").await.0, other.get("/readyz").await.0);
        if last == (200, 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last,
        (200, 503),
        "/readyz of (the cluster's first node, the node with another key) after {TIMEOUT:?}"
    );
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (first.get("/readyz").await.0, other.get("/readyz").await.0);
        assert_eq!(
            now,
            (200, 503),
            "/readyz of (first node, node with another key) later on"
        );
    }
}

/// The channel `user`'s envelopes in `room` are published on: the one place these
/// tests name it.
fn user_channel(prefix: &str, room: &str, user: &str) -> String {
    format!("{prefix}room:{{{room}}}:ch:{user}")
}

/// The sealed envelopes (`E ...`) a tap subscribed to one channel has seen, in order,
/// whole: a relayed frame's sealed envelope comes inside the `S {seq} ...` header
/// line the relay adds (v2, outside the seal, since Redis writes it).
fn sealed_envelopes(tap: &RedisTap) -> Vec<String> {
    let is_sealed = |part: &str| {
        part.starts_with("E ")
            || (part.starts_with("S ")
                && part
                    .split_once('\n')
                    .is_some_and(|(_, inner)| inner.starts_with("E ")))
    };
    tap.text()
        .split("\r\n")
        .filter(|part| is_sealed(part))
        .map(str::to_owned)
        .collect()
}

/// `GET /metrics` of `node`, as text.
async fn metrics_text(node: &TestNode) -> String {
    let reply = node.request("GET", "/metrics", &[], None).await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
    reply.text
}

/// With PAYLOAD_ENCRYPTION_KEY, a clear frame envelope published into Redis on a
/// user's channel (or a clear membership envelope smuggling a frame) is dropped:
/// the next thing the user sees is the legitimate message sent after it. The drop
/// is counted and logged at WARN, without the injected text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_envelopes_are_refused_when_a_key_is_set() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 1, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let node = &nodes[0];
    let room = room_id();
    let (mut alice, _) = join(node, &room, "alice").await;
    let (mut bob, bob_user) = join(node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let channel = user_channel(&prefix, &room, "bob");
    let marker = format!("INJECTED{}", uuid::Uuid::new_v4().simple());
    let forged =
        json!({"type": "message", "from": "alice", "target": "bob", "payload": marker}).to_string();
    let session = uuid::Uuid::new_v4();
    for envelope in [
        format!("F 0\n{forged}"),
        format!("J alice {session}\n{forged}"),
    ] {
        assert_eq!(
            redis.cli(&["PUBLISH", &channel, &envelope]).trim(),
            "1",
            "the node must be subscribed to {channel}"
        );
    }
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": "real"}))
        .await;
    bob.expect_frame(&relayed("message", "alice", Some("bob"), json!("real")))
        .await;

    let metrics = metrics_text(node).await;
    assert!(
        metrics.contains("signal_envelopes_dropped_total{reason=\"clear\"} 2"),
        "two clear envelopes must be counted as dropped:\n{metrics}"
    );
    assert!(
        node.wait_for_log_line(
            |l| l.contains("WARN") && l.contains("dropping an envelope"),
            TIMEOUT
        )
        .await,
        "no WARN about the dropped envelope:\n{}",
        node.log()
    );
    assert!(
        !node.log().contains(&marker),
        "the dropped envelope's text reached the log"
    );
}

/// A sealed envelope is bound to its channel: copies captured on alice's channel
/// (a directed message and her copy of a broadcast), re-published on bob's channel
/// in the same room, never reach bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_envelopes_cannot_be_replayed_to_another_user() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 1, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let node = &nodes[0];
    let room = room_id();
    let (mut alice, _) = join(node, &room, "alice").await;
    let (mut bob, bob_user) = join(node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(node, &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    let alice_channel = user_channel(&prefix, &room, "alice");
    let tap = RedisTap::start(redis.port(), &["SUBSCRIBE", &alice_channel]).await;
    carol
        .send_json(json!({"type": "message", "target": "alice", "payload": "for-alice"}))
        .await;
    alice
        .expect_frame(&relayed(
            "message",
            "carol",
            Some("alice"),
            json!("for-alice"),
        ))
        .await;
    carol
        .send_json(json!({"type": "message", "payload": "to-all"}))
        .await;
    let broadcast = relayed("message", "carol", None, json!("to-all"));
    alice.expect_frame(&broadcast).await;
    bob.expect_frame(&broadcast).await;
    let tap_ref = &tap;
    eventually(
        TIMEOUT,
        "the tap to see alice's two sealed envelopes",
        move || async move { sealed_envelopes(tap_ref).len() >= 2 },
    )
    .await;

    let bob_channel = user_channel(&prefix, &room, "bob");
    for sealed in sealed_envelopes(&tap) {
        assert_eq!(redis.cli(&["PUBLISH", &bob_channel, &sealed]).trim(), "1");
    }
    carol
        .send_json(json!({"type": "message", "target": "bob", "payload": "real"}))
        .await;
    bob.expect_frame(&relayed("message", "carol", Some("bob"), json!("real")))
        .await;
    let metrics = metrics_text(node).await;
    assert!(
        metrics.contains("signal_envelopes_dropped_total{reason=\"unopenable\"} 2"),
        "the two replays must be counted as dropped:\n{metrics}"
    );
}

/// With PAYLOAD_ENCRYPTION_KEY on two nodes, every envelope kind still works across
/// them: joins (`J`), directed and broadcast frames (`F`, sealed), an admin kick and
/// a room close (`K` and `L`, some built by Lua), a replacement across nodes and a
/// leave; and nothing legitimate is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_kind_works_with_a_key() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let env = [
        ("PAYLOAD_ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", ADMIN),
    ];
    let nodes = start_nodes(&redis, &prefix, 2, &env).await;
    let room = room_id();
    let (mut alice, _) = join(&nodes[0], &room, "alice").await;
    let (mut bob, bob_user) = join(&nodes[1], &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": {"sdp": "x"}}))
        .await;
    bob.expect_frame(&relayed(
        "sdp_offer",
        "alice",
        Some("bob"),
        json!({"sdp": "x"}),
    ))
    .await;
    bob.send_json(json!({"type": "broadcast", "payload": 7}))
        .await;
    alice
        .expect_frame(&relayed("broadcast", "bob", None, json!(7)))
        .await;

    let (mut carol, carol_user) = join(&nodes[1], &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;
    let (status, body) = admin(
        &nodes[0],
        "DELETE",
        &format!("/rooms/{room}/users/carol"),
        None,
    )
    .await;
    assert_eq!(status, 204, "kick carol: {body}");
    carol.expect_error_then_close("kicked", 4410).await;
    alice
        .expect_frame(&user_left("carol", &room, "kicked"))
        .await;
    bob.expect_frame(&user_left("carol", &room, "kicked")).await;

    // bob again, on the other node: the old session is replaced.
    let (bob2, bob2_user) = join(&nodes[0], &room, "bob").await;
    bob.expect_error_then_close("replaced", 4409).await;
    alice.expect_frame(&user_joined(&bob2_user)).await;
    bob2.close().await;
    alice.expect_frame(&user_left("bob", &room, "left")).await;

    let (status, body) = admin(&nodes[1], "DELETE", &format!("/rooms/{room}"), None).await;
    assert!(
        status == 200 || status == 204,
        "close the room: {status} {body}"
    );
    alice.expect_error_then_close("kicked", 4410).await;

    for node in &nodes {
        let metrics = metrics_text(node).await;
        assert!(
            !metrics.contains("signal_envelopes_dropped_total"),
            "{} dropped a legitimate envelope:\n{metrics}",
            node.node_id()
        );
    }
}
