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

use std::fs::File;
use std::process::{Command, ExitStatus, Stdio};
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
/// Bound on one probe's outcome (its error or nothing, then the barrier's pong)
/// while the master is gone: a command may wait for the node's Redis timeout.
const PROBE_OUTCOME: Duration = Duration::from_secs(10);
/// Client pacing between two probes (not a synchronisation).
const PROBE_PACE: Duration = Duration::from_millis(50);
/// Bound on a refused node exiting.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What one client's traffic task saw.
#[derive(Debug, Default)]
struct TrafficLog {
    /// Outcome of every probe sent, in order: `accepted` or the error codes.
    outcomes: Vec<String>,
    /// Probes received from the peer: (number, sent after the kill, arrival).
    received: Vec<(u64, bool, Instant)>,
    /// Unexpected frames, or the end of the connection.
    failures: Vec<String>,
}

impl TrafficLog {
    fn first_after_kill(&self) -> Option<Instant> {
        self.received
            .iter()
            .filter(|(_, after_kill, _)| *after_kill)
            .map(|(_, _, at)| *at)
            .min()
    }

    fn summary(&self) -> String {
        format!(
            "{} probes sent ({}); {} received ({} sent after the kill); failures: {:?}",
            self.outcomes.len(),
            runs(&self.outcomes),
            self.received.len(),
            self.received.iter().filter(|(_, k, _)| *k).count(),
            self.failures
        )
    }
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
    out.into_iter()
        .map(|(item, n)| if n == 1 { item } else { format!("{item} x{n}") })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_probe_from(frame: &Value, from: &str, to: &str) -> bool {
    frame["type"] == "message"
        && frame["from"] == from
        && frame["target"] == to
        && frame["payload"]["probe"].is_u64()
}

/// An error a sender may get for a message to `target` while Redis fails over:
/// `unavailable`, or `target_not_found` (the target's node has not re-registered
/// or resubscribed it yet).
fn is_healing_error(frame: &Value, target: &str) -> bool {
    ["unavailable", "target_not_found"]
        .iter()
        .any(|code| error_echo_mismatch(frame, code, None, Some(target)).is_none())
}

fn lock_log(log: &Mutex<TrafficLog>) -> std::sync::MutexGuard<'_, TrafficLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Continuous traffic from one client: a probe message to `peer`, then a barrier
/// ping whose pong says every outcome of the probe was written; probes from the
/// peer are recorded as they arrive. Runs until `stop`, or until the connection
/// ends; returns the client.
async fn run_traffic(
    mut client: TestClient,
    me: &'static str,
    peer: &'static str,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TrafficLog>>,
) -> TestClient {
    let mut n = 0u64;
    'probes: while !stop.load(Ordering::SeqCst) {
        n += 1;
        let after_kill = killed.load(Ordering::SeqCst);
        let probe = json!({"type": "message", "target": peer,
                           "payload": {"probe": n, "after_kill": after_kill}});
        let nonce = json!({"barrier": n});
        for frame in [probe, json!({"type": "ping", "payload": &nonce})] {
            let message = tokio_tungstenite::tungstenite::Message::text(frame.to_string());
            if let Err(e) = client.try_send(message).await {
                lock_log(&log).failures.push(format!("{me}: {e}"));
                break 'probes;
            }
        }
        let deadline = Instant::now() + PROBE_OUTCOME;
        let mut codes: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let text = match client.next_event(left).await {
                None => {
                    lock_log(&log).failures.push(format!(
                        "{me}: no pong to the barrier after probe {n} within {PROBE_OUTCOME:?}"
                    ));
                    break 'probes;
                }
                Some(Event::Text(text)) => text,
                Some(other) => {
                    lock_log(&log).failures.push(format!(
                        "{me}: the connection ended after probe {n}: {other:?}"
                    ));
                    break 'probes;
                }
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                lock_log(&log)
                    .failures
                    .push(format!("{me}: frame is not JSON: {text:?}"));
                continue;
            };
            if frame == json!({"type": "pong", "payload": &nonce}) {
                break;
            }
            if is_probe_from(&frame, peer, me) {
                let number = frame["payload"]["probe"].as_u64().unwrap_or_default();
                let sent_after_kill = frame["payload"]["after_kill"] == json!(true);
                lock_log(&log)
                    .received
                    .push((number, sent_after_kill, Instant::now()));
            } else if is_healing_error(&frame, peer) {
                codes.push(frame["payload"]["code"].as_str().unwrap_or("?").to_owned());
            } else {
                lock_log(&log)
                    .failures
                    .push(format!("{me}: unexpected frame: {frame}"));
            }
        }
        let outcome = if codes.is_empty() {
            "accepted".to_owned()
        } else {
            codes.join("+")
        };
        lock_log(&log).outcomes.push(outcome);
        tokio::time::sleep(PROBE_PACE).await;
    }
    client
}

/// Polls the two traffic logs until `done` holds for both, or panics (with both
/// summaries) at `deadline` or as soon as a log records a failure.
async fn wait_traffic(
    logs: [&Mutex<TrafficLog>; 2],
    deadline: Instant,
    what: &str,
    done: impl Fn(&TrafficLog) -> bool,
) {
    loop {
        let problem = {
            let (a, b) = (lock_log(logs[0]), lock_log(logs[1]));
            let state = format!("\n  alice: {}\n  bob: {}", a.summary(), b.summary());
            if !a.failures.is_empty() || !b.failures.is_empty() {
                Some(format!("traffic failed while waiting for {what}{state}"))
            } else if done(&a) && done(&b) {
                return;
            } else if Instant::now() >= deadline {
                Some(format!("timed out waiting for {what}{state}"))
            } else {
                None
            }
        };
        if let Some(problem) = problem {
            panic!("{problem}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next frame of `client` before `deadline` that is not a late probe from
/// `peer` (probes accepted during the failover may arrive after the traffic stopped).
async fn next_skipping_probes(
    client: &mut TestClient,
    peer: Option<&str>,
    me: &str,
    deadline: Instant,
    what: &str,
) -> Value {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame: Value = match client.next_event(left).await {
            None => panic!("{}: timed out waiting for {what}", client.label()),
            Some(Event::Text(text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text:?}", client.label())),
            Some(other) => panic!(
                "{}: expected {what}, got {other:?} (connection ended?)",
                client.label()
            ),
        };
        if peer.is_some_and(|peer| is_probe_from(&frame, peer, me)) {
            continue;
        }
        return frame;
    }
}

/// Joins like a client following PROTOCOL.md section 6: an `unavailable` + 1013
/// refusal is retried after a short backoff until `deadline`. Returns the client
/// and its `room_users` frame.
async fn join_retrying(
    node: &TestNode,
    room: &str,
    user: &str,
    deadline: Instant,
) -> (TestClient, Value) {
    let mut refusals = 0;
    loop {
        let mut client = TestClient::connect(&node.ws_url(room, user)).await;
        client.set_label(format!("{user}@{room} on {}", node.node_id()));
        let frame = client.recv_json().await;
        if frame["type"] == "room_users" {
            return (client, frame);
        }
        assert_error_frame(&frame, "unavailable", client.label());
        client.expect_close(1013).await;
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "{user} refused {refusals} times by {} (unavailable + 1013)",
            node.node_id()
        );
        // Client backoff between attempts, as the protocol asks; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        "alice",
        "bob",
        killed.clone(),
        stop.clone(),
        alice_log.clone(),
    ));
    let bob_task = tokio::spawn(run_traffic(
        bob,
        "bob",
        "alice",
        killed.clone(),
        stop.clone(),
        bob_log.clone(),
    ));
    let logs = [&*alice_log, &*bob_log];
    wait_traffic(
        logs,
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
        logs,
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

/// Runs the node binary with exactly `env` (plus HOST and a free PORT); it must exit
/// (bounded wait). Returns its status, stderr and stdout.
fn run_node_expecting_exit(env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let dir = TempDir::new();
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_signal-node"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", free_port().to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("spawn signal-node");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node with {env:?} still running after {EXIT_TIMEOUT:?}\nstderr:\n{}\nstdout:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                std::fs::read_to_string(&stdout_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    (status, stderr, stdout)
}

/// Asserts that the node refuses `env`: non-zero exit, one line on stderr naming `var`.
fn assert_refused(env: &[(&str, &str)], var: &str) {
    let (status, stderr, stdout) = run_node_expecting_exit(env);
    assert!(
        !status.success(),
        "node with {env:?} exited with success\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "node with {env:?} ({status}): expected one line on stderr, got:\n{stderr}\nstdout:\n{stdout}"
    );
    assert!(
        lines[0].contains(var),
        "node with {env:?} ({status}): stderr does not name {var}: {}",
        lines[0]
    );
    eprintln!("refused {env:?}: {status}: {}", lines[0]);
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
