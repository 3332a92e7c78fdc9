//! Real faults in a Redis cluster and how it heals (PROTOCOL.md section 5, "after a
//! fault heals", and section 6's `unavailable` + 1013): node processes killed
//! (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted under the same NODE_ID;
//! redis-server stopped and restarted empty; every subscriber connection killed;
//! Redis connections frozen by a proxy.
//!
//! Every test owns its cluster and its redis-server, so the faults it injects never
//! reach another test and the tests run in parallel. Waits for recovery are bounded
//! by the figures the cluster promises (eviction within 15 s of a crash, healing
//! within 15 s of Redis coming back); fixed waits only assert that nothing happens.
//! In each test, the line that injects the fault (kills, pauses or stops a process
//! the cluster shares) is marked `// FAULT:`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A dead node's users are evicted within this time of the SIGKILL (or SIGSTOP).
const EVICTION: Duration = Duration::from_secs(15);
/// The cluster serves again within this time of Redis coming back (or of a freeze).
const HEAL: Duration = Duration::from_secs(15);
/// Bound on one relay's outcome (an error, or nothing) while Redis is unhealthy:
/// a command against a frozen connection takes up to its 3 s response timeout.
const RELAY_OUTCOME: Duration = Duration::from_secs(8);
/// How long a probe message that Redis accepted may take to reach its target.
const PROBE_WINDOW: Duration = Duration::from_secs(1);

/// Waits (bounded) until every node has written its heartbeat key `P node:{id}`:
/// its upkeep loop has run once with the subscriber up, so the faults of this file
/// hit a running cluster, not one still starting (a separate scenario).
async fn wait_heartbeats(redis: &RedisServer, prefix: &str, nodes: &[&TestNode]) {
    for node in nodes {
        let key = format!("{prefix}node:{{{}}}", node.node_id());
        let key = &key;
        eventually(
            TIMEOUT,
            format!("the heartbeat key {key}"),
            move || async move { redis.exists(key) },
        )
        .await;
    }
}

/// A Redis cluster of `n` nodes that have all beaten once.
async fn running_cluster(n: usize) -> Cluster {
    let c = Cluster::redis(n).await;
    let nodes: Vec<&TestNode> = (0..n).map(|i| c.node(i)).collect();
    wait_heartbeats(c.redis_server(), c.prefix(), &nodes).await;
    c
}

/// The users of a node's sessions hash (session id -> `user room`).
fn users_recorded(hash: &BTreeMap<String, String>) -> BTreeSet<String> {
    hash.values()
        .filter_map(|v| v.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// `P node:{id}:run:RUN:sessions` of the run that beats now for `node_id`.
fn run_sessions_key(redis: &RedisServer, prefix: &str, node_id: &str) -> String {
    let beat = redis.hgetall(&format!("{prefix}node:{{{node_id}}}"));
    let run = beat.get("run").cloned().unwrap_or_default();
    format!("{prefix}node:{{{node_id}}}:run:{run}:sessions")
}

/// Time left until `deadline` (zero once passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The next data frame of `client` before `deadline`, parsed; panics naming `what`.
async fn next_frame_by(client: &mut TestClient, deadline: Instant, what: &str) -> Value {
    match client.next_event(left(deadline)).await {
        None => panic!("{}: timed out waiting for {what}", client.label()),
        Some(Event::Text(text)) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: frame is not JSON ({e}): {text:?}", client.label())),
        Some(other) => panic!(
            "{}: expected {what}, got {other:?} (connection ended?)",
            client.label()
        ),
    }
}

/// Reads frames until every one of `expected` has arrived (any order, each once)
/// before `deadline`; any other frame fails. Returns when the last one arrived.
async fn expect_frames_by(
    client: &mut TestClient,
    expected: &[Value],
    deadline: Instant,
) -> Instant {
    let mut missing: Vec<Value> = expected.to_vec();
    while !missing.is_empty() {
        let what = format!("{}", Value::Array(missing.clone()));
        let frame = next_frame_by(client, deadline, &what).await;
        let Some(i) = missing.iter().position(|f| f == &frame) else {
            panic!(
                "{}: unexpected frame {frame}\n  still expected: {what}",
                client.label()
            );
        };
        missing.remove(i);
    }
    Instant::now()
}

/// The next frame must be an `error` with exactly `code` and `message`, then a close
/// with `close_code`, both before `deadline`.
async fn expect_error_then_close_by(
    client: &mut TestClient,
    code: &str,
    close_code: u16,
    deadline: Instant,
) {
    let frame = next_frame_by(client, deadline, &format!("error {code}")).await;
    if let Some(mismatch) = error_echo_mismatch(&frame, code, None, None) {
        panic!("{}: {mismatch}", client.label());
    }
    match client.next_event(left(deadline)).await {
        Some(Event::Close(Some((actual, _)))) if actual == close_code => {}
        other => panic!(
            "{}: expected close {close_code} after the {code} error, got {other:?}",
            client.label()
        ),
    }
}

/// Sends a `ping` and reads up to its `pong`: the session handles its frames in
/// order, so every outcome of the messages sent before (an `error`, or nothing) has
/// been written by then. Returns the frames that came before the pong.
async fn frames_before_pong(client: &mut TestClient, within: Duration) -> Vec<Value> {
    match try_frames_before_pong(client, Instant::now() + within).await {
        Ok(before) => before,
        Err(before) => panic!(
            "{}: no pong to a barrier ping within {within:?}; frames before: {before:?}",
            client.label()
        ),
    }
}

/// [`frames_before_pong`] bounded by `deadline`; `Err` with the frames read so far
/// when the pong did not come in time.
async fn try_frames_before_pong(
    client: &mut TestClient,
    deadline: Instant,
) -> Result<Vec<Value>, Vec<Value>> {
    let nonce = json!({"barrier": uuid::Uuid::new_v4().to_string()});
    client
        .send_json(json!({"type": "ping", "payload": &nonce}))
        .await;
    let mut before = Vec::new();
    loop {
        let text = match client.next_event(left(deadline)).await {
            None => return Err(before),
            Some(Event::Text(text)) => text,
            Some(other) => panic!(
                "{}: expected frames up to a pong, got {other:?} (connection ended?)",
                client.label()
            ),
        };
        let frame: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: frame is not JSON ({e}): {text:?}", client.label()));
        if frame == json!({"type": "pong", "payload": &nonce}) {
            return Ok(before);
        }
        before.push(frame);
    }
}

/// Whether `frame` is an error a sender may get for a message to `target` while the
/// cluster heals: `unavailable` (Redis unreachable) or `target_not_found` (the
/// target's node has not re-registered or resubscribed it yet).
fn is_healing_error(frame: &Value, target: &str) -> bool {
    ["unavailable", "target_not_found"]
        .iter()
        .any(|code| error_echo_mismatch(frame, code, None, Some(target)).is_none())
}

/// Whether `frame` is a probe message of [`wait_for_delivery`] from `from` to `to`.
fn is_probe(frame: &Value, from: &str, to: &str) -> bool {
    frame["type"] == "message"
        && frame["from"] == from
        && frame["target"] == to
        && frame["payload"]["probe"].is_u64()
}

/// Sends probe messages from `from` to `to` until one arrives, before `deadline`,
/// the way a client retries while the cluster heals: errors allowed by
/// [`is_healing_error`] are drained, anything else at either end fails. Returns
/// when the first probe arrived.
async fn wait_for_delivery(
    from: (&mut TestClient, &str),
    to: (&mut TestClient, &str),
    deadline: Instant,
) -> Instant {
    let ((sender, from_id), (receiver, to_id)) = (from, to);
    // What the sender got back, per attempt: the error codes, or "accepted".
    let mut outcomes: Vec<String> = Vec::new();
    let give_up = |outcomes: &[String], last: &str| -> ! {
        panic!(
            "no message from {from_id} reached {to_id} in time; {} probes, their outcomes \
             in order: {}; {last}",
            outcomes.len(),
            runs(outcomes)
        )
    };
    for attempt in 1u64.. {
        if Instant::now() >= deadline {
            give_up(&outcomes, "deadline reached");
        }
        sender
            .send_json(json!({"type": "message", "target": to_id, "payload": {"probe": attempt}}))
            .await;
        let barrier = deadline.min(Instant::now() + RELAY_OUTCOME);
        let outcome = match try_frames_before_pong(sender, barrier).await {
            Ok(outcome) => outcome,
            Err(_) => give_up(
                &outcomes,
                "the last probe got no outcome before the deadline",
            ),
        };
        // A probe of the other direction accepted earlier may arrive now: what a
        // frozen subscription missed is delivered later from the mailbox (gap fill).
        let outcome: Vec<Value> = outcome
            .into_iter()
            .filter(|frame| !is_probe(frame, to_id, from_id))
            .collect();
        for frame in &outcome {
            assert!(
                is_healing_error(frame, to_id),
                "{}: unexpected frame while healing: {frame}",
                sender.label()
            );
        }
        outcomes.push(if outcome.is_empty() {
            "accepted".to_owned()
        } else {
            let codes: Vec<&str> = outcome
                .iter()
                .filter_map(|f| f["payload"]["code"].as_str())
                .collect();
            codes.join("+")
        });
        // A refused probe cannot arrive, but an earlier accepted one still may.
        let window = if outcome.is_empty() {
            PROBE_WINDOW
        } else {
            Duration::from_millis(250)
        };
        match receiver.next_event(window.min(left(deadline))).await {
            None => {}
            Some(Event::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("{}: frame is not JSON ({e}): {text:?}", receiver.label())
                });
                assert!(
                    is_probe(&frame, from_id, to_id),
                    "{}: unexpected frame while healing: {frame}",
                    receiver.label()
                );
                return Instant::now();
            }
            Some(other) => panic!(
                "{}: expected a probe from {from_id}, got {other:?}",
                receiver.label()
            ),
        }
    }
    unreachable!("the attempt counter is unbounded")
}

/// `a, a, b` as `a x2, b`.
fn runs(items: &[String]) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some((last, n)) if last == item => *n += 1,
            _ => out.push((item.clone(), 1)),
        }
    }
    let parts: Vec<String> = out
        .into_iter()
        .map(|(item, n)| if n == 1 { item } else { format!("{item} x{n}") })
        .collect();
    parts.join(", ")
}

/// The next frame of `receiver` must be `expected`; probes of [`wait_for_delivery`]
/// that were still in flight may come first (a sender's messages stay in order).
async fn expect_frame_after_probes(receiver: &mut TestClient, from: &str, expected: &Value) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let frame = next_frame_by(receiver, deadline, &format!("{expected}")).await;
        if frame == *expected {
            return;
        }
        let target = expected["target"].as_str().unwrap_or_default();
        assert!(
            is_probe(&frame, from, target),
            "{}: unexpected frame\n  expected: {expected}\n    actual: {frame}",
            receiver.label()
        );
    }
}

/// One message each way arrives exactly, and neither sender gets an error.
async fn assert_messaging(a: (&mut TestClient, &str), b: (&mut TestClient, &str), tag: &str) {
    let ((a, a_id), (b, b_id)) = (a, b);
    assert_one_way((a, a_id), (b, b_id), tag).await;
    assert_one_way((b, b_id), (a, a_id), tag).await;
}

/// One message from `from` arrives exactly at `to`, and the sender gets no error.
async fn assert_one_way(from: (&mut TestClient, &str), to: (&mut TestClient, &str), tag: &str) {
    let ((sender, from_id), (receiver, to_id)) = (from, to);
    let payload = json!({"check": tag});
    sender
        .send_json(json!({"type": "message", "target": to_id, "payload": &payload, "id": tag}))
        .await;
    expect_frame_after_probes(
        receiver,
        from_id,
        &relayed("message", from_id, Some(to_id), payload),
    )
    .await;
    // A probe of the other direction that was accepted while a subscription was
    // frozen may still arrive (filled from the mailbox, in its sender's order).
    let errors: Vec<Value> = frames_before_pong(sender, TIMEOUT)
        .await
        .into_iter()
        .filter(|frame| !is_probe(frame, to_id, from_id))
        .collect();
    assert!(
        errors.is_empty(),
        "{}: unexpected frames after a delivered message: {errors:?}",
        sender.label()
    );
}

/// Waits (bounded) until `node` answers `/readyz` with `status`.
async fn wait_readyz(node: &TestNode, status: u16, within: Duration, why: &str) {
    eventually(
        within,
        format!("/readyz on {} to answer {status} ({why})", node.node_id()),
        move || async move { node.get("/readyz").await.0 == status },
    )
    .await;
}

/// Waits (bounded) until `GET /rooms/{room}/users` on `node` answers 200 with exactly
/// the users `ids` (a pooled connection may still fail once after a fault).
async fn wait_rest_lists(node: &TestNode, room: &str, ids: &[&str], within: Duration) {
    let expected: BTreeSet<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    let expected = &expected;
    let path = format!("/rooms/{room}/users");
    let path = &path;
    eventually(
        within,
        format!("GET {path} on {} to list {expected:?}", node.node_id()),
        move || async move {
            let (status, body) = node.get(path).await;
            let listed: BTreeSet<String> = body["users"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
                .collect();
            status == 200 && listed == *expected
        },
    )
    .await;
}

/// Asserts `GET /users/{user}` on `node` is 404 `user_not_found`.
async fn assert_rest_user_gone(node: &TestNode, user: &str) {
    let (status, body) = node.get(&format!("/users/{user}")).await;
    assert_http_error(
        status,
        &body,
        404,
        "user_not_found",
        &format!("GET /users/{user} on {}", node.node_id()),
    );
}

/// Asserts a user's Redis hash is gone.
#[track_caller]
fn assert_user_key_gone(c: &Cluster, user: &str) {
    let key = c.user_key(user);
    assert!(
        !c.redis_server().exists(&key),
        "{key} still exists: {:?}",
        c.redis_server().hgetall(&key)
    );
}

/// Kills the process of node 2 (SIGKILL), which holds carol and dave: within 15 s alice
/// (node 0) and bob (node 1) each hear user_left "timeout" for both, once; REST and
/// Redis forget them; the survivors keep relaying and accepting joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_crash_evicts_its_users_within_15s() {
    let c = running_cluster(3).await;
    let redis = c.redis_server();
    let (survivor_a, survivor_b, doomed) = (c.node(0), c.node(1), c.node(2));
    let room = room_id();
    let (mut alice, alice_user) = join(survivor_a, &room, "alice").await;
    let (mut bob, bob_user) = join(survivor_b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(doomed, &room, "carol").await;
    let (_dave, dave_user) = join(doomed, &room, "dave").await;
    for (client, newcomers) in [
        (&mut alice, vec![&carol_user, &dave_user]),
        (&mut bob, vec![&carol_user, &dave_user]),
        (&mut carol, vec![&dave_user]),
    ] {
        for user in newcomers {
            client.expect_frame(&user_joined(user)).await;
        }
    }
    let sessions_key = run_sessions_key(redis, c.prefix(), doomed.node_id());
    let held = users_recorded(&redis.hgetall(&sessions_key));
    assert_eq!(
        held,
        BTreeSet::from(["carol".to_owned(), "dave".to_owned()]),
        "{sessions_key} before the crash"
    );

    // FAULT: the process of node 2 is killed, without any chance to clean up.
    let killed_at = Instant::now();
    doomed.sigkill().await;
    carol.wait_closed().await;
    let expected = [
        user_left("carol", &room, "timeout"),
        user_left("dave", &room, "timeout"),
    ];
    let deadline = killed_at + EVICTION;
    let (alice_heard, bob_heard) = tokio::join!(
        expect_frames_by(&mut alice, &expected, deadline),
        expect_frames_by(&mut bob, &expected, deadline),
    );
    eprintln!(
        "timing: node_crash: user_left after SIGKILL: alice {:?}, bob {:?}",
        alice_heard - killed_at,
        bob_heard - killed_at
    );

    for node in [survivor_a, survivor_b] {
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        assert_rest_user_gone(node, "carol").await;
        assert_rest_user_gone(node, "dave").await;
    }
    assert_user_key_gone(&c, "carol");
    assert_user_key_gone(&c, "dave");
    assert!(
        !redis.exists(&sessions_key),
        "{sessions_key} survived the eviction: {:?}",
        redis.hgetall(&sessions_key)
    );
    assert_eq!(
        redis.smembers(&c.room_key(&room)),
        BTreeSet::from(["alice".to_owned(), "bob".to_owned()]),
        "members of {} after the eviction",
        c.room_key(&room)
    );

    // The survivors keep working: relays both ways, and a newcomer joins.
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after-crash").await;
    let (mut eve, frame) = TestClient::connect_join(survivor_b, &room, "eve").await;
    let eve_user = assert_room_users(&frame, &room, "eve", &[&alice_user, &bob_user]);
    alice.expect_frame(&user_joined(&eve_user)).await;
    bob.expect_frame(&user_joined(&eve_user)).await;
    // Over a whole heartbeat period more: the other survivor must not evict again.
    expect_silence_all(
        &mut [&mut alice, &mut bob, &mut eve],
        Duration::from_millis(2500),
    )
    .await;
}

/// Pauses node B (SIGSTOP) with alice on it until bob (node A) hears user_left
/// "timeout"; resumed (SIGCONT), B closes alice with `unavailable` + 1013 and never
/// writes her back (REST and a keyspace watch on her hash); alice then reconnects to
/// B and bob sees her join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_is_not_resurrected() {
    let c = running_cluster(2).await;
    let redis = c.redis_server();
    let (a, b) = (c.node(0), c.node(1));
    let room = room_id();
    let (mut bob, bob_user) = join(a, &room, "bob").await;
    let (mut alice, alice_user) = join(b, &room, "alice").await;
    bob.expect_frame(&user_joined(&alice_user)).await;

    // FAULT: the process of node B is paused past its heartbeat TTL.
    let paused_at = Instant::now();
    b.sigstop().await;
    expect_frames_by(
        &mut bob,
        &[user_left("alice", &room, "timeout")],
        paused_at + EVICTION,
    )
    .await;
    let evicted_after = paused_at.elapsed();
    assert_user_key_gone(&c, "alice");
    assert_rest_members(a, &room, &[&bob_user]).await;
    // From now on, any write to alice's hash (however brief) is recorded.
    let watch = KeyspaceWatch::start(redis, &c.user_key("alice")).await;

    let resumed_at = Instant::now();
    b.sigcont().await;
    expect_error_then_close_by(&mut alice, "unavailable", 1013, resumed_at + TIMEOUT * 2).await;
    let closed_after = resumed_at.elapsed();
    eprintln!(
        "timing: paused_node: user_left {evicted_after:?} after SIGSTOP; \
         stale session closed {closed_after:?} after SIGCONT"
    );

    // Absence: for a few seconds neither node lists alice again.
    for _ in 0..6 {
        for node in [a, b] {
            assert_rest_members(node, &room, &[&bob_user]).await;
            assert_rest_user_gone(node, "alice").await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let writes = watch.events();
    assert!(
        writes.is_empty(),
        "alice's stale session was written back to Redis after node B resumed: {writes:?}"
    );
    bob.expect_silence(QUIET).await;

    // alice reconnects as a client does (to the resumed node) and bob sees her.
    let (mut alice, frame) = join_retrying(b, &room, "alice", Instant::now() + TIMEOUT * 2).await;
    let alice_user = assert_room_users(&frame, &room, "alice", &[&bob_user]);
    bob.expect_frame(&user_joined(&alice_user)).await;
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after-rejoin").await;
    assert_rest_members(a, &room, &[&alice_user, &bob_user]).await;
    assert_rest_user(a, &alice_user, b.node_id()).await;
    // The session of the resumed node's new run stays across its next beats.
    expect_silence_all(&mut [&mut alice, &mut bob], Duration::from_secs(5)).await;
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after-beats").await;
}

/// Stops redis-server under a two-node cluster: readiness drops, relays and joins
/// answer `unavailable` (joins with 1013), open WebSockets stay open; restarted
/// empty, within 15 s the same sockets exchange messages again and REST lists
/// everyone with the right node_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_heals_without_reconnects() {
    let c = running_cluster(2).await;
    let redis = c.redis_server();
    let (a, b) = (c.node(0), c.node(1));
    let room = room_id();
    let (mut alice, alice_user) = join(a, &room, "alice").await;
    let (mut bob, bob_user) = join(b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "before").await;

    // FAULT: the cluster's redis-server is stopped (its data is lost).
    let stopped_at = Instant::now();
    redis.stop();
    for node in [a, b] {
        wait_readyz(node, 503, TIMEOUT * 2, "Redis stopped").await;
    }
    let unready_after = stopped_at.elapsed();
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": 1, "id": "m1"}))
        .await;
    alice
        .expect_error_echo("unavailable", Some(json!("m1")), Some("bob"))
        .await;
    bob.send_json(json!({"type": "broadcast", "payload": 2, "id": 2}))
        .await;
    bob.expect_error_echo("unavailable", Some(json!(2)), None)
        .await;
    let mut dave = TestClient::connect(&a.ws_url(&room, "dave")).await;
    dave.expect_error_then_close("unavailable", 1013).await;
    // The open sockets are still served (a ping is answered by the node itself).
    for client in [&mut alice, &mut bob] {
        let before = frames_before_pong(client, TIMEOUT).await;
        assert!(
            before.is_empty(),
            "{}: unexpected frames with Redis down: {before:?}",
            client.label()
        );
    }

    redis.restart();
    let restarted_at = Instant::now();
    let deadline = restarted_at + HEAL;
    let to_bob = wait_for_delivery((&mut alice, "alice"), (&mut bob, "bob"), deadline).await;
    let to_alice = wait_for_delivery((&mut bob, "bob"), (&mut alice, "alice"), deadline).await;
    eprintln!(
        "timing: redis_restart: /readyz 503 within {unready_after:?} of the stop; \
         after the restart alice->bob {:?}, bob->alice {:?}",
        to_bob - restarted_at,
        to_alice - restarted_at
    );
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after").await;

    for node in [a, b] {
        wait_rest_lists(node, &room, &["alice", "bob"], TIMEOUT).await;
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        assert_rest_user(node, &alice_user, a.node_id()).await;
        assert_rest_user(node, &bob_user, b.node_id()).await;
        wait_readyz(node, 200, TIMEOUT, "Redis back").await;
    }
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// Redis restarts empty right after the nodes became ready, before their upkeep
/// loop first ran with a subscriber: the sessions they already hold must be
/// re-registered all the same, so messages flow again within 15 s and REST lists
/// everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_right_after_startup_heals() {
    // Deliberately not `running_cluster`: the fault hits nodes still starting.
    let c = Cluster::redis(2).await;
    let redis = c.redis_server();
    let (a, b) = (c.node(0), c.node(1));
    let room = room_id();
    let (mut alice, alice_user) = join(a, &room, "alice").await;
    let (mut bob, bob_user) = join(b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    // FAULT: the cluster's redis-server is replaced by an empty one.
    redis.restart();
    let restarted_at = Instant::now();
    let deadline = restarted_at + HEAL;
    let to_bob = wait_for_delivery((&mut alice, "alice"), (&mut bob, "bob"), deadline).await;
    let to_alice = wait_for_delivery((&mut bob, "bob"), (&mut alice, "alice"), deadline).await;
    eprintln!(
        "timing: redis_restart_at_startup: alice->bob {:?}, bob->alice {:?}",
        to_bob - restarted_at,
        to_alice - restarted_at
    );
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after").await;
    for node in [a, b] {
        wait_rest_lists(node, &room, &["alice", "bob"], TIMEOUT).await;
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        assert_rest_user(node, &alice_user, a.node_id()).await;
        assert_rest_user(node, &bob_user, b.node_id()).await;
    }
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// carol (node B) disconnects while Redis is down, so nobody can be told; after Redis
/// restarts empty, alice (node A) and bob (node B) hear user_left carol "timeout"
/// within 15 s, and nothing else; REST no longer lists her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_gone_during_redis_outage_is_announced_after_restart() {
    let c = running_cluster(2).await;
    let redis = c.redis_server();
    let (a, b) = (c.node(0), c.node(1));
    let room = room_id();
    let (mut alice, alice_user) = join(a, &room, "alice").await;
    let (mut bob, bob_user) = join(b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (carol, carol_user) = join(b, &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    // FAULT: Redis stops, and carol leaves while it is down.
    redis.stop();
    for node in [a, b] {
        wait_readyz(node, 503, TIMEOUT * 2, "Redis stopped").await;
    }
    carol.close().await;

    redis.restart();
    let restarted_at = Instant::now();
    let expected = [user_left("carol", &room, "timeout")];
    let deadline = restarted_at + HEAL;
    let (alice_heard, bob_heard) = tokio::join!(
        expect_frames_by(&mut alice, &expected, deadline),
        expect_frames_by(&mut bob, &expected, deadline),
    );
    eprintln!(
        "timing: member_gone_during_outage: user_left after the restart: alice {:?}, bob {:?}",
        alice_heard - restarted_at,
        bob_heard - restarted_at
    );

    for node in [a, b] {
        wait_rest_lists(node, &room, &["alice", "bob"], TIMEOUT).await;
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        assert_rest_user_gone(node, "carol").await;
    }
    assert_user_key_gone(&c, "carol");
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after").await;
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// `CLIENT KILL TYPE pubsub` drops both nodes' subscriber connections at once: the
/// nodes rebuild them and the same clients exchange messages again, without
/// reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connections_are_rebuilt() {
    let c = running_cluster(2).await;
    let redis = c.redis_server();
    let (a, b) = (c.node(0), c.node(1));
    let room = room_id();
    let (mut alice, alice_user) = join(a, &room, "alice").await;
    let (mut bob, bob_user) = join(b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "before").await;
    let subscribers = || {
        redis
            .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .lines()
            .filter(|line| line.starts_with("id="))
            .count()
    };
    assert_eq!(subscribers(), 2, "pub/sub connections: one per node");

    // FAULT: Redis closes every pub/sub connection.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let killed_at = Instant::now();
    assert_eq!(
        killed.trim(),
        "2",
        "CLIENT KILL TYPE pubsub killed {killed:?}"
    );
    let deadline = killed_at + HEAL;
    let to_bob = wait_for_delivery((&mut alice, "alice"), (&mut bob, "bob"), deadline).await;
    let to_alice = wait_for_delivery((&mut bob, "bob"), (&mut alice, "alice"), deadline).await;
    eprintln!(
        "timing: killed_subscribers: after CLIENT KILL alice->bob {:?}, bob->alice {:?}",
        to_bob - killed_at,
        to_alice - killed_at
    );
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after").await;
    eventually(
        TIMEOUT,
        "two pub/sub connections again",
        move || async move { subscribers() == 2 },
    )
    .await;
    for node in [a, b] {
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
    }
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// Both nodes reach Redis through a proxy that freezes every open connection (bytes
/// stop both ways, sockets stay open): the frozen subscriber is caught by its lost
/// probe and rebuilt, the command connections time out and reconnect, and within
/// 15 s the same clients exchange messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_connection_is_detected_by_the_probe() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(redis.port()).await;
    let prefix = key_prefix();
    let url = proxy.url();
    let env = [("REDIS_URL", url.as_str())];
    let (a, b) = tokio::join!(
        TestNode::start(Some(&redis), &prefix, &env),
        TestNode::start(Some(&redis), &prefix, &env),
    );
    wait_heartbeats(&redis, &prefix, &[&a, &b]).await;
    let room = room_id();
    let (mut alice, alice_user) = join(&a, &room, "alice").await;
    let (mut bob, bob_user) = join(&b, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "before").await;

    // FAULT: every connection open now stops forwarding, without being closed.
    let frozen = proxy.freeze();
    let frozen_at = Instant::now();
    assert!(
        frozen >= 4,
        "expected at least a subscriber and a command connection per node, froze {frozen}"
    );
    let deadline = frozen_at + HEAL;
    let to_bob = wait_for_delivery((&mut alice, "alice"), (&mut bob, "bob"), deadline).await;
    let to_alice = wait_for_delivery((&mut bob, "bob"), (&mut alice, "alice"), deadline).await;
    eprintln!(
        "timing: frozen_connection: {frozen} connections frozen; alice->bob {:?}, bob->alice {:?}",
        to_bob - frozen_at,
        to_alice - frozen_at
    );
    assert_messaging((&mut alice, "alice"), (&mut bob, "bob"), "after").await;
    for node in [&a, &b] {
        wait_rest_lists(node, &room, &["alice", "bob"], TIMEOUT).await;
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
    }
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

/// Node B (carol, dave) is killed and a new process with the same NODE_ID is up
/// within 2 s, before the survivor could see the old heartbeat expire: the new run
/// evicts the previous run's sessions (alice hears user_left "timeout" within 15 s),
/// and carol can join the new run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_with_same_id_evicts_its_previous_sessions() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let node_id = format!(
        "node-same-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (a, old_b) = tokio::join!(
        TestNode::start(Some(&redis), &prefix, &[]),
        TestNode::start_named(&redis, &prefix, &node_id, &[]),
    );
    wait_heartbeats(&redis, &prefix, &[&a, &old_b]).await;
    let room = room_id();
    let (mut alice, alice_user) = join(&a, &room, "alice").await;
    let (mut carol, carol_user) = join(&old_b, &room, "carol").await;
    let (_dave, dave_user) = join(&old_b, &room, "dave").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    alice.expect_frame(&user_joined(&dave_user)).await;
    carol.expect_frame(&user_joined(&dave_user)).await;

    // FAULT: node B's process is killed and replaced by a new one with its NODE_ID.
    let killed_at = Instant::now();
    old_b.sigkill().await;
    let new_b = TestNode::start_named(&redis, &prefix, &node_id, &[]).await;
    let restarted_after = killed_at.elapsed();
    assert!(
        restarted_after < Duration::from_secs(2),
        "precondition: the new run must be up within 2 s (took {restarted_after:?}), \
         before the old heartbeat could expire"
    );
    expect_frames_by(
        &mut alice,
        &[
            user_left("carol", &room, "timeout"),
            user_left("dave", &room, "timeout"),
        ],
        killed_at + EVICTION,
    )
    .await;
    let evicted_after = killed_at.elapsed();
    eprintln!(
        "timing: same_id_restart: new run ready {restarted_after:?} after SIGKILL; \
         user_left {evicted_after:?} after SIGKILL"
    );
    // The previous run left the node set; the new one is in it.
    let members = redis.smembers(&format!("{prefix}cluster:{{nodes}}"));
    assert_eq!(
        members
            .iter()
            .filter(|m| m.starts_with(&format!("{node_id}:")))
            .count(),
        1,
        "runs of {node_id} in the node set: {members:?}"
    );

    for node in [&a, &new_b] {
        assert_rest_members(node, &room, &[&alice_user]).await;
        assert_rest_user_gone(node, "carol").await;
        assert_rest_user_gone(node, "dave").await;
    }
    for user in ["carol", "dave"] {
        let key = format!("{prefix}user:{{{user}}}");
        assert!(!redis.exists(&key), "{key} survived the previous run");
    }

    // The new run serves: carol comes back to it and alice sees her.
    let (mut carol, frame) = TestClient::connect_join(&new_b, &room, "carol").await;
    let carol_user = assert_room_users(&frame, &room, "carol", &[&alice_user]);
    alice.expect_frame(&user_joined(&carol_user)).await;
    assert_messaging((&mut alice, "alice"), (&mut carol, "carol"), "after").await;
    assert_rest_user(&a, &carol_user, &node_id).await;
    let sessions_key = run_sessions_key(&redis, &prefix, &node_id);
    let held = users_recorded(&redis.hgetall(&sessions_key));
    assert_eq!(
        held,
        BTreeSet::from(["carol".to_owned()]),
        "{sessions_key} after the new run's eviction"
    );
    expect_silence_all(&mut [&mut alice, &mut carol], QUIET).await;
}

/// Reads `client`'s frames until `expected` arrives (by `deadline`); fails on any
/// `user_left` about one of `kept` (probes and other frames pass).
async fn expect_kept_frame(
    client: &mut TestClient,
    expected: &Value,
    kept: &[&str],
    deadline: Instant,
) {
    loop {
        let frame = next_frame_by(client, deadline, &format!("{expected}")).await;
        if frame == *expected {
            return;
        }
        if frame["type"] == "user_left" {
            let who = frame["payload"]["user_id"].as_str().unwrap_or_default();
            assert!(
                !kept.contains(&who),
                "{}: a live member of the new run was evicted: {frame}",
                client.label()
            );
        }
    }
}

/// Node B is killed just before its heartbeat would expire (paused first, so the
/// cluster is about to declare it dead) and a new process with the same NODE_ID is
/// started at once; clients join the new run right after it is ready and while the
/// cleanup of the old run happens. The old run's member (carol) is evicted with
/// `user_left` `timeout`; for 15 s after the restart every broadcast and directed
/// message to the new members arrives and nobody hears `user_left` about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_same_id_keeps_the_new_runs_members() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let node_id = format!(
        "node-keep-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (a, old_b) = tokio::join!(
        TestNode::start(Some(&redis), &prefix, &[]),
        TestNode::start_named(&redis, &prefix, &node_id, &[]),
    );
    wait_heartbeats(&redis, &prefix, &[&a, &old_b]).await;
    let room = room_id();
    let (mut alice, _alice_user) = join(&a, &room, "alice").await;
    let (_carol, carol_user) = join(&old_b, &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;

    // FAULT: B stops beating, and is killed when its heartbeat has about a second
    // left, then restarted at once with the same NODE_ID.
    old_b.sigstop().await;
    let beat_key = format!("{prefix}node:{{{node_id}}}");
    let beat_key = &beat_key;
    let redis_ref = &redis;
    eventually(
        TIMEOUT,
        "B's heartbeat about to expire",
        move || async move { redis_ref.ttl(beat_key) <= 1 },
    )
    .await;
    let killed_at = Instant::now();
    old_b.sigkill().await;
    let new_b = TestNode::start_named(&redis, &prefix, &node_id, &[]).await;
    let kept = ["dave", "erin"];
    let (mut dave, _) = join_retrying(&new_b, &room, "dave", Instant::now() + TIMEOUT).await;
    let (mut erin, _) = join_retrying(&new_b, &room, "erin", Instant::now() + TIMEOUT).await;
    let restarted_after = killed_at.elapsed();

    // The previous run's member is evicted, as before.
    let deadline = killed_at + EVICTION;
    loop {
        let frame = next_frame_by(&mut alice, deadline, "user_left carol").await;
        if frame == user_left("carol", &room, "timeout") {
            break;
        }
        if frame["type"] == "user_left" {
            panic!("alice heard an unexpected user_left: {frame}");
        }
    }
    let carol_gone_after = killed_at.elapsed();

    // For 15 s, every broadcast and directed message reaches the new members.
    let until = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let payload = json!({"round": round});
        alice
            .send_json(json!({"type": "message", "payload": &payload}))
            .await;
        let broadcast = relayed("message", "alice", None, payload.clone());
        let by = Instant::now() + TIMEOUT;
        expect_kept_frame(&mut dave, &broadcast, &kept, by).await;
        expect_kept_frame(&mut erin, &broadcast, &kept, by).await;
        for target in kept {
            alice
                .send_json(json!({"type": "message", "target": target, "payload": &payload}))
                .await;
        }
        let direct = |t: &str| relayed("message", "alice", Some(t), payload.clone());
        expect_kept_frame(&mut dave, &direct("dave"), &kept, by).await;
        expect_kept_frame(&mut erin, &direct("erin"), &kept, by).await;
        // Pacing of the rounds, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // alice got no error and heard no user_left about dave or erin.
    let frames = frames_before_pong(&mut alice, TIMEOUT).await;
    for frame in &frames {
        assert!(
            frame["type"] != "error"
                && !(frame["type"] == "user_left"
                    && kept.contains(&frame["payload"]["user_id"].as_str().unwrap_or_default())),
            "alice: {frame}"
        );
    }
    for node in [&a, &new_b] {
        wait_rest_lists(node, &room, &["alice", "dave", "erin"], TIMEOUT).await;
    }
    eprintln!(
        "timing: restart_keeps_new_members: new run serving {restarted_after:?} after SIGKILL; \
         previous run's member evicted {carol_gone_after:?} after SIGKILL; {round} rounds"
    );
}

/// Ten times: a node becomes ready, takes a member, and is paused 100 ms later.
/// Each time the member is evicted (`user_left` `timeout`) within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_paused_right_after_ready_is_declared_dead() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let a = TestNode::start(Some(&redis), &prefix, &[]).await;
    let room = room_id();
    let (mut alice, _) = join(&a, &room, "alice").await;
    let mut times = Vec::new();
    for i in 0..10 {
        let b = TestNode::start(Some(&redis), &prefix, &[]).await;
        let user = format!("m{i}");
        let (_member, member_user) = join(&b, &room, &user).await;
        alice.expect_frame(&user_joined(&member_user)).await;
        // FAULT: paused 100 ms after it became ready with a member.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paused_at = Instant::now();
        b.sigstop().await;
        expect_frames_by(
            &mut alice,
            &[user_left(&user, &room, "timeout")],
            paused_at + Duration::from_secs(10),
        )
        .await;
        times.push(paused_at.elapsed());
        b.sigkill().await;
    }
    eprintln!("timing: paused_after_ready: evicted after SIGSTOP: {times:?}");
}
