//! `REDIS_MODE=sentinel` (PROTOCOL.md section 13): nodes that find their Redis
//! through 3 sentinels serve exactly as on one Redis, follow a failover (the master
//! SIGKILLed, its replica promoted) without their clients reconnecting, and refuse
//! incomplete sentinel settings at startup.
//!
//! Every test owns its sentinel set (a master, a replica, 3 sentinels; see
//! `support::SentinelSet`) and its nodes. Waits are bounded: the sentinels promote
//! the replica within FAILOVER of the kill (`down-after-milliseconds` 1000), and the
//! cluster serves again within RECOVERY of the promotion. The line that injects the
//! fault is marked `// FAULT:`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Bound on the sentinels promoting the replica after the master's SIGKILL.
const FAILOVER: Duration = Duration::from_secs(20);
/// The cluster serves again (relays both ways, joins, REST) within this time of the
/// promotion.
const RECOVERY: Duration = Duration::from_secs(15);

/// A sentinel set named after the test, and `n` nodes in sentinel mode on it under
/// a fresh KEY_PREFIX.
async fn sentinel_cluster(n: usize) -> (SentinelSet, String, Vec<TestNode>) {
    let name = format!("m-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let set = SentinelSet::start(&name);
    let prefix = key_prefix();
    let owned = set.node_env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes =
        futures::future::join_all((0..n).map(|_| TestNode::start(None, &prefix, &env))).await;
    (set, prefix, nodes)
}

/// `P room:{room}`, as `Cluster::room_key` names it.
fn room_key(prefix: &str, room: &str) -> String {
    format!("{prefix}room:{{{room}}}")
}

/// `P node:{id}`, a node's heartbeat key.
fn heartbeat_key(prefix: &str, node: &TestNode) -> String {
    format!("{prefix}node:{{{}}}", node.node_id())
}

/// Waits (bounded) until every node's heartbeat key is on `redis`: the nodes run
/// their upkeep against the master.
async fn wait_heartbeats(redis: &RedisServer, prefix: &str, nodes: &[TestNode]) {
    for node in nodes {
        let key = heartbeat_key(prefix, node);
        let key = &key;
        eventually(
            TIMEOUT,
            format!("the heartbeat key {key} on port {}", redis.port()),
            move || async move { redis.exists(key) },
        )
        .await;
    }
}

/// Alice joins on node 0, bob on node 1, in a fresh room; both `room_users` are
/// exact and alice sees bob join.
async fn alice_and_bob(nodes: &[TestNode]) -> (String, TestClient, Value, TestClient, Value) {
    let room = room_id();
    let (mut alice, frame) = TestClient::connect_join(&nodes[0], &room, "alice").await;
    let alice_user = assert_room_users(&frame, &room, "alice", &[]);
    let (bob, frame) = TestClient::connect_join(&nodes[1], &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    (room, alice, alice_user, bob, bob_user)
}

/// A directed message each way arrives exactly.
async fn assert_messages_both_ways(alice: &mut TestClient, bob: &mut TestClient, tag: &str) {
    let payload = json!({"sdp": format!("offer {tag}")});
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": &payload}))
        .await;
    bob.expect_frame(&relayed("message", "alice", Some("bob"), payload))
        .await;
    let payload = json!({"sdp": format!("answer {tag}")});
    bob.send_json(json!({"type": "message", "target": "alice", "payload": &payload}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", Some("alice"), payload))
        .await;
}

/// Nodes in sentinel mode serve a room across nodes like on one Redis, and their
/// state lives on the master the sentinels name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_through_sentinel() {
    let (set, prefix, nodes) = sentinel_cluster(2).await;
    assert_eq!(set.current_master_port(), set.master_port());

    let (room, mut alice, alice_user, mut bob, bob_user) = alice_and_bob(&nodes).await;
    assert_messages_both_ways(&mut alice, &mut bob, "1").await;
    for node in &nodes {
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 200, "/readyz on {}: {body}", node.node_id());
    }

    let master = set.master();
    wait_heartbeats(master, &prefix, &nodes).await;
    let key = room_key(&prefix, &room);
    assert!(
        master.exists(&key),
        "the room key {key} is not on the master (port {}); keys of the prefix there: {:?}",
        master.port(),
        master.keys(&format!("{prefix}*"))
    );
    let keys = master.keys(&format!("*{room}*"));
    assert!(!keys.is_empty(), "no key of room {room} on the master");
    eprintln!("sentinel: keys of the room on the master: {keys:?}");
    assert_messages_both_ways(&mut alice, &mut bob, "2").await;
}

/// SIGKILL of the master under continuous traffic: the sentinels promote the
/// replica, and within RECOVERY of the promotion relays work both ways again on the
/// same connections, newcomers join on either node and are announced, REST answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_is_followed() {
    let (set, prefix, nodes) = sentinel_cluster(2).await;
    wait_heartbeats(set.master(), &prefix, &nodes).await;
    let (room, mut alice, alice_user, mut bob, bob_user) = alice_and_bob(&nodes).await;
    assert_messages_both_ways(&mut alice, &mut bob, "before").await;
    // The membership written so far is on the replica: what the failover may lose
    // (PROTOCOL.md section 13) is only the traffic of the last moments.
    tokio::task::block_in_place(|| set.wait_replica_caught_up(TIMEOUT));

    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let alice_log = Arc::new(Mutex::new(TrafficLog::default()));
    let bob_log = Arc::new(Mutex::new(TrafficLog::default()));
    let alice_task = tokio::spawn(run_traffic(
        alice,
        "alice".to_owned(),
        "bob".to_owned(),
        killed.clone(),
        stop.clone(),
        alice_log.clone(),
    ));
    let bob_task = tokio::spawn(run_traffic(
        bob,
        "bob".to_owned(),
        "alice".to_owned(),
        killed.clone(),
        stop.clone(),
        bob_log.clone(),
    ));
    let logs = [("alice", &*alice_log), ("bob", &*bob_log)];
    wait_traffic(
        &logs,
        Instant::now() + TIMEOUT,
        "probes flowing both ways before the kill",
        |log| log.received.len() >= 3,
    )
    .await;

    let old_port = set.master_port();
    let kill_at = Instant::now();
    set.kill_master(); // FAULT: the master is SIGKILLed (its data is gone).
    killed.store(true, Ordering::SeqCst);
    let new_port = tokio::task::block_in_place(|| set.wait_for_failover(FAILOVER));
    let promoted_at = Instant::now();
    assert_eq!(
        new_port,
        set.replica().port(),
        "the only replica is promoted"
    );
    eprintln!(
        "timing: sentinel failover: kill -> promotion seen by a sentinel {:?} (master port {old_port} -> {new_port})",
        promoted_at - kill_at
    );

    let recovered_by = promoted_at + RECOVERY;
    wait_traffic(
        &logs,
        recovered_by,
        "a probe sent after the kill delivered in each direction",
        |log| log.first_after_kill().is_some(),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let stopped = |task: tokio::task::JoinHandle<TestClient>, who: &'static str| async move {
        match tokio::time::timeout(PROBE_OUTCOME + TIMEOUT, task).await {
            Err(_) => panic!("{who}'s traffic did not stop"),
            // A panic of the client itself (e.g. a `seq` gap) keeps its message.
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{who}'s traffic task failed: {e}"),
            Ok(Ok(client)) => client,
        }
    };
    let mut alice = stopped(alice_task, "alice").await;
    let mut bob = stopped(bob_task, "bob").await;
    // The tasks are done: take their logs.
    let alice_log = std::mem::take(&mut *lock_log(&alice_log));
    let bob_log = std::mem::take(&mut *lock_log(&bob_log));
    assert!(
        alice_log.failures.is_empty() && bob_log.failures.is_empty(),
        "traffic failed\n  alice: {}\n  bob: {}",
        alice_log.summary(),
        bob_log.summary()
    );
    let to_alice = bob_log.first_after_kill().expect("checked above");
    let to_bob = alice_log.first_after_kill().expect("checked above");
    let since_promotion = |at: Instant| {
        at.checked_duration_since(promoted_at)
            .map(|d| format!("{d:?}"))
            .unwrap_or_else(|| format!("-{:?}", promoted_at - at))
    };
    eprintln!(
        "timing: sentinel failover: promotion -> first delivery alice->bob {}, bob->alice {}",
        since_promotion(to_bob),
        since_promotion(to_alice)
    );
    eprintln!(
        "traffic: alice: {}\ntraffic: bob: {}",
        alice_log.summary(),
        bob_log.summary()
    );

    // Newcomers on either node, announced to everyone; late probes may come first.
    let (mut carol, frame) = join_retrying(&nodes[1], &room, "carol", recovered_by).await;
    let carol_user = assert_room_users(&frame, &room, "carol", &[&alice_user, &bob_user]);
    for (client, peer, me) in [(&mut alice, "bob", "alice"), (&mut bob, "alice", "bob")] {
        let frame =
            next_skipping_probes(client, Some(peer), me, recovered_by, "carol joining").await;
        assert_eq!(frame, user_joined(&carol_user), "{}", client.label());
    }
    let (mut dave, frame) = join_retrying(&nodes[0], &room, "dave", recovered_by).await;
    let dave_user = assert_room_users(
        &frame,
        &room,
        "dave",
        &[&alice_user, &bob_user, &carol_user],
    );
    for (client, peer, me) in [
        (&mut alice, Some("bob"), "alice"),
        (&mut bob, Some("alice"), "bob"),
        (&mut carol, None, "carol"),
    ] {
        let frame = next_skipping_probes(client, peer, me, recovered_by, "dave joining").await;
        assert_eq!(frame, user_joined(&dave_user), "{}", client.label());
    }

    // A message to a newcomer across nodes, and REST on both nodes.
    let payload = json!({"candidate": "after failover"});
    dave.send_json(json!({"type": "message", "target": "carol", "payload": &payload}))
        .await;
    let frame =
        next_skipping_probes(&mut carol, None, "carol", recovered_by, "dave's message").await;
    assert_eq!(frame, relayed("message", "dave", Some("carol"), payload));
    for node in &nodes {
        assert_rest_members(
            node,
            &room,
            &[&alice_user, &bob_user, &carol_user, &dave_user],
        )
        .await;
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 200, "/readyz on {}: {body}", node.node_id());
    }
    let done_at = Instant::now();
    eprintln!(
        "timing: sentinel failover: promotion -> joins announced and REST answering {:?}",
        done_at - promoted_at
    );
    assert!(
        done_at <= recovered_by,
        "recovery took {:?} after the promotion (bound {RECOVERY:?})",
        done_at - promoted_at
    );

    // The state now lives on the promoted replica.
    let new_master = set.server(new_port);
    let key = room_key(&prefix, &room);
    assert!(
        new_master.exists(&key),
        "the room key {key} is not on the new master (port {new_port}); keys of the prefix: {:?}",
        new_master.keys(&format!("{prefix}*"))
    );
    wait_heartbeats(new_master, &prefix, &nodes).await;

    // The original connections still work, without reconnecting.
    let payload = json!({"sdp": "renegotiate"});
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": &payload}))
        .await;
    let frame = next_skipping_probes(
        &mut bob,
        Some("alice"),
        "bob",
        Instant::now() + TIMEOUT,
        "alice's message",
    )
    .await;
    assert_eq!(frame, relayed("message", "alice", Some("bob"), payload));
}

/// Sentinel mode without a master name, and an unknown mode, stop the node at startup.
#[test]
fn startup_refuses_bad_sentinel_settings() {
    // Nothing listens there: a node that tried to use them would not exit.
    let sentinels = "redis://127.0.0.1:1,redis://127.0.0.1:2";
    assert_refused(
        &[("REDIS_MODE", "sentinel"), ("REDIS_URL", sentinels)],
        "REDIS_SENTINEL_MASTER",
    );
    assert_refused(
        &[
            ("REDIS_MODE", "bogus"),
            ("REDIS_URL", "redis://127.0.0.1:1/0"),
        ],
        "REDIS_MODE",
    );
}
