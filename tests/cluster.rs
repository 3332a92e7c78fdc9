//! Redis-backed clusters: the key layout of PROTOCOL.md section 7, TTL refresh,
//! cross-node delivery guarantees (section 5), the one-session-per-user rule
//! across nodes, readiness while Redis is down, and KEY_PREFIX isolation. The
//! scenarios that hold on every deployment also run on nodes over a Redis Cluster
//! (`on_redis_cluster!`); the keys are read through `Cluster::store`.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Asserts a key's TTL lies in (0, max].
#[track_caller]
fn assert_ttl(store: &dyn KeyStore, key: &str, max: i64) {
    let ttl = store.ttl(key);
    assert!(
        ttl > 0 && ttl <= max,
        "TTL of {key} is {ttl}, expected in (0, {max}]"
    );
}

/// Asserts `P user:{user}` holds exactly the five documented fields; returns them.
#[track_caller]
fn assert_user_hash(
    c: &Cluster,
    user: &str,
    room: &str,
    node_id: &str,
) -> std::collections::BTreeMap<String, String> {
    let key = c.user_key(user);
    let store = c.store();
    assert_eq!(store.key_type(&key), "hash", "type of {key}");
    let fields = store.hgetall(&key);
    let names: BTreeSet<String> = fields.keys().cloned().collect();
    assert_eq!(
        names,
        set(&["room_id", "joined_at", "role", "node_id", "session_id"]),
        "fields of {key}: {fields:?}"
    );
    assert_eq!(fields["room_id"], room, "{key} room_id");
    assert_eq!(fields["role"], "peer", "{key} role");
    assert_eq!(fields["node_id"], node_id, "{key} node_id");
    assert!(!fields["joined_at"].is_empty(), "{key} joined_at is empty");
    assert!(
        !fields["session_id"].is_empty(),
        "{key} session_id is empty"
    );
    fields
}

/// Waits (bounded) until no room, user or node-session key is left under `prefix`
/// (the live nodes' own heartbeat keys stay while they run).
async fn wait_no_member_keys(store: &dyn KeyStore, prefix: &str) {
    let patterns = [
        format!("{prefix}room:*"),
        format!("{prefix}user:*"),
        format!("{prefix}node:*:sessions"),
    ];
    let patterns = &patterns;
    eventually(
        TIMEOUT,
        format!("no key matching {patterns:?}"),
        move || async move { patterns.iter().all(|p| store.keys(p).is_empty()) },
    )
    .await;
}

/// Joined users appear as the documented set and hashes with TTLs, under the prefix only, and vanish when they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_layout_matches_the_contract_and_is_cleaned_up() {
    redis_layout_body(&Cluster::redis(2).await).await;
}
on_redis_cluster!(
    redis_layout_matches_the_contract_and_is_cleaned_up_on_redis_cluster,
    redis_layout_body
);

async fn redis_layout_body(c: &Cluster) {
    let store = c.store();
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let room_key = c.room_key(&room);
    assert_eq!(store.key_type(&room_key), "set", "type of {room_key}");
    assert_eq!(
        store.smembers(&room_key),
        set(&["alice", "bob"]),
        "members of {room_key}"
    );
    assert_ttl(store, &room_key, 1800);
    let alice_hash = assert_user_hash(c, "alice", &room, c.node(0).node_id());
    let bob_hash = assert_user_hash(c, "bob", &room, c.node(1).node_id());
    assert_ne!(
        alice_hash["session_id"], bob_hash["session_id"],
        "session ids must differ"
    );
    assert_ttl(store, &c.user_key("alice"), 1800);
    assert_ttl(store, &c.user_key("bob"), 1800);

    let outside: Vec<String> = store
        .keys("*")
        .into_iter()
        .filter(|k| !k.starts_with(c.prefix()))
        .collect();
    assert!(
        outside.is_empty(),
        "keys outside KEY_PREFIX {}: {outside:?}",
        c.prefix()
    );

    bob.close().await;
    alice.expect_frame(&user_left("bob", &room, "left")).await;
    assert!(
        !store.exists(&c.user_key("bob")),
        "bob's hash survived his leave"
    );
    assert_eq!(
        store.smembers(&room_key),
        set(&["alice"]),
        "members after bob left"
    );
    assert_rest_members(c.node(1), &room, &[&alice_user]).await;

    alice.close().await;
    wait_no_member_keys(store, c.prefix()).await;
}

/// With ROOM_TTL_SECONDS=2, members active for 5 s keep their keys and stay listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_members_keys_do_not_expire() {
    active_members_body(&Cluster::redis_with(2, &[("ROOM_TTL_SECONDS", "2")]).await).await;
}
on_redis_cluster!(
    active_members_keys_do_not_expire_on_redis_cluster,
    env = [("ROOM_TTL_SECONDS", "2")],
    active_members_body
);

async fn active_members_body(c: &Cluster) {
    let store = c.store();
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    // Pacing the activity, not synchronising: each exchange is awaited end to end.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        alice
            .send_json(json!({"type": "message", "target": "bob", "payload": seq}))
            .await;
        bob.expect_frame(&relayed("message", "alice", Some("bob"), json!(seq)))
            .await;
        bob.send_json(json!({"type": "message", "target": "alice", "payload": seq}))
            .await;
        alice
            .expect_frame(&relayed("message", "bob", Some("alice"), json!(seq)))
            .await;
        seq += 1;
    }

    for key in [c.room_key(&room), c.user_key("alice"), c.user_key("bob")] {
        assert_ttl(store, &key, 2);
    }
    assert_eq!(store.smembers(&c.room_key(&room)), set(&["alice", "bob"]));
    assert_rest_members(c.node(0), &room, &[&alice_user, &bob_user]).await;
    assert_rest_user(c.node(1), &alice_user, c.node(0).node_id()).await;
}

/// A member that has just seen user_joined(X) can reach X at once, across nodes, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_sent_on_user_joined_always_reaches_the_newcomer() {
    offer_on_user_joined_body(&Cluster::redis(2).await).await;
}
on_redis_cluster!(
    offer_sent_on_user_joined_always_reaches_the_newcomer_on_redis_cluster,
    offer_on_user_joined_body
);

async fn offer_on_user_joined_body(c: &Cluster) {
    for i in 0..30 {
        let room = room_id();
        let (alice_node, bob_node) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let alice_id = format!("alice-{i}");
        let bob_id = format!("bob-{i}");
        let offer = json!({"type": "offer", "sdp": format!("v=0 iteration {i}")});
        let (mut alice, _) = join(c.node(alice_node), &room, &alice_id).await;

        let alice_side = async {
            let joined = alice.expect_type("user_joined").await;
            assert_eq!(
                joined["payload"]["user_id"],
                bob_id.as_str(),
                "iteration {i}: {joined}"
            );
            alice
                .send_json(
                    json!({"type": "sdp_offer", "target": &bob_id, "payload": &offer, "id": i}),
                )
                .await;
        };
        let bob_side = TestClient::connect_join(c.node(bob_node), &room, &bob_id);
        let ((), (mut bob, _)) = tokio::join!(alice_side, bob_side);

        let frame = bob.recv_json().await;
        let expected = relayed("sdp_offer", &alice_id, Some(&bob_id), offer.clone());
        if frame != expected {
            // Say what alice got back, e.g. target_not_found.
            let reply = alice.next_event(QUIET).await;
            panic!("iteration {i}: bob expected {expected}\n got {frame}\n alice got {reply:?}");
        }
        alice.close().await;
        bob.close().await;
    }
}

/// 3,000 messages sent back-to-back from node 0 to node 1 all arrive, in order, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_messages_arrives_complete_and_in_order() {
    // Rate limiting (a later feature) would drop a burst; it is not under test here.
    let env = [
        ("RATE_LIMIT_PER_SECOND", "0"),
        ("RATE_LIMIT_BYTES_PER_SECOND", "0"),
    ];
    burst_body(&Cluster::redis_with(2, &env).await).await;
}
on_redis_cluster!(
    burst_of_messages_arrives_complete_and_in_order_on_redis_cluster,
    env = [
        ("RATE_LIMIT_PER_SECOND", "0"),
        ("RATE_LIMIT_BYTES_PER_SECOND", "0"),
    ],
    burst_body
);

async fn burst_body(c: &Cluster) {
    const COUNT: u64 = 3000;
    let room = room_id();
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let send = async {
        for seq in 0..COUNT {
            alice
                .send_json(json!({"type": "message", "target": "bob", "payload": {"seq": seq}}))
                .await;
        }
    };
    let receive = async {
        for seq in 0..COUNT {
            let frame = bob.recv_json().await;
            let expected = relayed("message", "alice", Some("bob"), json!({"seq": seq}));
            assert!(
                frame == expected,
                "message {seq}: expected {expected}, got {frame}"
            );
        }
    };
    tokio::join!(send, receive);
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// Broadcasts from each of six members spread over three nodes reach the five others exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_members_on_all_nodes() {
    broadcast_on_all_nodes_body(&Cluster::redis(3).await).await;
}
on_redis_cluster!(
    broadcast_reaches_members_on_all_nodes_on_redis_cluster,
    nodes = 3,
    broadcast_on_all_nodes_body
);

async fn broadcast_on_all_nodes_body(c: &Cluster) {
    let room = room_id();
    let mut members: Vec<(String, TestClient)> = Vec::new();
    for i in 0..6 {
        let id = format!("m{i}");
        let (client, frame) = TestClient::connect_join(c.node(i % 3), &room, &id).await;
        let listed: BTreeSet<String> = sorted_users(&frame["payload"]["users"])
            .iter()
            .map(|u| u["user_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let present: BTreeSet<String> = members.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(listed, present, "room_users of {id}");
        let me = frame["payload"]["self"].clone();
        for (_, other) in members.iter_mut() {
            other.expect_frame(&user_joined(&me)).await;
        }
        members.push((id, client));
    }

    for sender in 0..members.len() {
        let from = members[sender].0.clone();
        let payload = json!({"from_index": sender});
        members[sender]
            .1
            .send_json(json!({"type": "broadcast", "payload": &payload}))
            .await;
        let expected = relayed("broadcast", &from, None, payload);
        for (i, (_, member)) in members.iter_mut().enumerate() {
            if i != sender {
                member.expect_frame(&expected).await;
            }
        }
    }
    let mut clients: Vec<&mut TestClient> = members.iter_mut().map(|(_, c)| c).collect();
    expect_silence_all(&mut clients, QUIET).await;
}

/// A user replaced from another node moves to that node, and the old session's cleanup leaves the new session intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_across_nodes_keeps_the_new_session() {
    replacement_across_nodes_body(&Cluster::redis(2).await).await;
}
on_redis_cluster!(
    replacement_across_nodes_keeps_the_new_session_on_redis_cluster,
    replacement_across_nodes_body
);

async fn replacement_across_nodes_body(c: &Cluster) {
    let store = c.store();
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut old_bob, old_bob_user) = join(c.node(0), &room, "bob").await;
    alice.expect_frame(&user_joined(&old_bob_user)).await;
    let old_session = assert_user_hash(c, "bob", &room, c.node(0).node_id())["session_id"].clone();

    let (mut bob, frame) = TestClient::connect_join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    old_bob.expect_error_then_close("replaced", 4409).await;
    old_bob.wait_closed().await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    // Give the old session's cleanup time to do harm: no user_left may follow.
    alice.expect_silence(Duration::from_secs(1)).await;
    let new_session = assert_user_hash(c, "bob", &room, c.node(1).node_id())["session_id"].clone();
    assert_ne!(
        new_session, old_session,
        "the replacement kept the old session_id"
    );
    assert_eq!(store.smembers(&c.room_key(&room)), set(&["alice", "bob"]));
    assert_ttl(store, &c.user_key("bob"), 1800);
    for i in 0..2 {
        assert_rest_user(c.node(i), &bob_user, c.node(1).node_id()).await;
        assert_rest_members(c.node(i), &room, &[&alice_user, &bob_user]).await;
    }

    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": {"sdp": "1"}}))
        .await;
    bob.expect_frame(&relayed(
        "sdp_offer",
        "alice",
        Some("bob"),
        json!({"sdp": "1"}),
    ))
    .await;
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// /readyz answers 503 while Redis is down and 200 again once it is back; /healthz stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_availability() {
    let c = Cluster::redis(1).await;
    let node = c.node(0);

    c.redis_server().stop();
    eventually(
        Duration::from_secs(10),
        "/readyz to answer 503 with Redis down",
        move || async move { node.get("/readyz").await.0 == 503 },
    )
    .await;
    let (_, body) = node.get("/readyz").await;
    assert!(
        body["status"].as_str().is_some_and(|s| s != "ready"),
        "/readyz body while Redis is down: {body}"
    );
    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200, "/healthz with Redis down (body {body})");
    assert_eq!(body["status"], "ok", "/healthz body {body}");

    c.redis_server().restart();
    eventually(
        Duration::from_secs(15),
        "/readyz to answer 200 after Redis restarted",
        move || async move { node.get("/readyz").await.0 == 200 },
    )
    .await;
    let (_, body) = node.get("/readyz").await;
    assert_eq!(
        body["status"], "ready",
        "/readyz body after recovery: {body}"
    );
}

/// Two clusters with different KEY_PREFIX on one Redis never see each other's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_isolate_clusters_on_one_redis() {
    let redis = RedisServer::start();
    let (prefix_a, prefix_b) = (key_prefix(), key_prefix());
    let node_a = TestNode::start(Some(&redis), &prefix_a, &[]).await;
    let node_b = TestNode::start(Some(&redis), &prefix_b, &[]).await;
    let room = room_id();

    let (mut alice, frame) = TestClient::connect_join(&node_a, &room, "alice").await;
    let alice_user = assert_room_users(&frame, &room, "alice", &[]);
    let (mut bob, frame) = TestClient::connect_join(&node_b, &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[]);
    // The same user_id in both clusters: two independent sessions, no replacement.
    let (mut carol_a, _) = join(&node_a, &room_id(), "carol").await;
    let (mut carol_b, _) = join(&node_b, &room_id(), "carol").await;

    assert_rest_members(&node_a, &room, &[&alice_user]).await;
    assert_rest_members(&node_b, &room, &[&bob_user]).await;
    let (status, body) = node_a.get("/users/bob").await;
    assert_http_error(
        status,
        &body,
        404,
        "user_not_found",
        "GET /users/bob in cluster A",
    );

    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": 1}))
        .await;
    alice
        .expect_error_echo("target_not_found", None, Some("bob"))
        .await;
    bob.send_json(json!({"type": "broadcast", "payload": 2}))
        .await;

    expect_silence_all(
        &mut [&mut alice, &mut bob, &mut carol_a, &mut carol_b],
        QUIET,
    )
    .await;
    for key in redis.keys("*") {
        assert!(
            key.starts_with(&prefix_a) || key.starts_with(&prefix_b),
            "key {key} is under neither prefix"
        );
    }
    assert_eq!(
        redis.smembers(&format!("{prefix_a}room:{{{room}}}")),
        set(&["alice"])
    );
    assert_eq!(
        redis.smembers(&format!("{prefix_b}room:{{{room}}}")),
        set(&["bob"])
    );
}
