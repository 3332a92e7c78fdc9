//! `REDIS_MODE=cluster` (PROTOCOL.md section 13) on real Redis Clusters started by
//! the tests: the keys of a room live on one shard and rooms spread over all of
//! them, deliveries use sharded channels only, every shard is reported; a master
//! SIGKILLed under traffic is replaced by its replica and every room relays again
//! without a reconnect; a busy room's slot moves to another master under traffic;
//! and frames that Redis numbered again after losing its latest counts (what a
//! failover to a lagging replica does) still reach their member, in `seq` order.
//!
//! The shared protocol scenarios also run on a cluster, beside their single-Redis
//! runs (`on_redis_cluster!` in protocol.rs, cluster.rs, resume.rs). Waits are
//! bounded; the line that injects each fault is marked `// FAULT:`.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Bound on the cluster promoting a replica after its master's SIGKILL
/// (`cluster-node-timeout` 1500 ms: about 3 s here).
const FAILOVER: Duration = Duration::from_secs(20);
/// Every room relays again within this time of the promotion (the bound).
const RECOVERY: Duration = Duration::from_secs(15);
/// Resume on: a member's mailbox is what a rebuilt subscription reads from.
const GRACE: (&str, &str) = ("RESUME_GRACE_SECONDS", "20");

/// A private cluster (`masters` masters with `replicas` replicas each) and `n`
/// nodes in cluster mode on it under a fresh KEY_PREFIX.
async fn on_cluster(
    masters: usize,
    replicas: usize,
    n: usize,
    env: &[(&str, &str)],
) -> (RedisCluster, String, Vec<TestNode>) {
    let rc = tokio::task::spawn_blocking(move || RedisCluster::start(masters, replicas))
        .await
        .expect("start a Redis Cluster");
    let prefix = key_prefix();
    let nodes = start_cluster_nodes(&rc, &prefix, n, env).await;
    (rc, prefix, nodes)
}

/// `per_master` fresh room ids for each master, with the master that owns each
/// room's slot (asked of the cluster), so that every shard carries rooms.
fn rooms_on_every_master(rc: &RedisCluster, prefix: &str, per_master: usize) -> Vec<(String, u16)> {
    let masters = rc.masters();
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for _ in 0..1000 {
        if masters
            .iter()
            .all(|m| rooms.iter().filter(|(_, o)| o == m).count() >= per_master)
        {
            return rooms;
        }
        let room = room_id();
        let owner = rc.master_of_key(&format!("{prefix}room:{{{room}}}"));
        if rooms.iter().filter(|(_, o)| *o == owner).count() < per_master {
            rooms.push((room, owner));
        }
    }
    panic!("could not find {per_master} rooms on each of the masters {masters:?}");
}

/// `a` joins `room` on node 0 and `b` on node 1; `a` sees `b` join.
async fn pair_in(
    nodes: &[TestNode],
    room: &str,
    a: &str,
    b: &str,
) -> (TestClient, Value, TestClient, Value) {
    let (mut first, frame) = TestClient::connect_join(&nodes[0], room, a).await;
    let first_user = assert_room_users(&frame, room, a, &[]);
    let (second, frame) = TestClient::connect_join(&nodes[1], room, b).await;
    let second_user = assert_room_users(&frame, room, b, &[&first_user]);
    first.expect_frame(&user_joined(&second_user)).await;
    (first, first_user, second, second_user)
}

/// A message from `a` to `b` and one back arrive exactly.
async fn exchange(a: &mut TestClient, a_id: &str, b: &mut TestClient, b_id: &str, tag: &str) {
    let payload = json!({"sdp": format!("offer {tag}")});
    a.send_json(json!({"type": "message", "target": b_id, "payload": &payload}))
        .await;
    b.expect_frame(&relayed("message", a_id, Some(b_id), payload))
        .await;
    let payload = json!({"sdp": format!("answer {tag}")});
    b.send_json(json!({"type": "message", "target": a_id, "payload": &payload}))
        .await;
    a.expect_frame(&relayed("message", b_id, Some(a_id), payload))
        .await;
}

/// `/readyz` of `node` lists every master as answering, with all 16384 slots.
async fn assert_all_shards_ready(node: &TestNode, masters: usize) -> Value {
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "/readyz on {}: {body}", node.node_id());
    assert_eq!(body["redis_mode"], "cluster", "{body}");
    let shards = body["shards"].as_array().cloned().unwrap_or_default();
    assert_eq!(shards.len(), masters, "shards in /readyz: {body}");
    assert!(shards.iter().all(|s| s["up"] == true), "{body}");
    let slots: u64 = shards.iter().filter_map(|s| s["slots"].as_u64()).sum();
    assert_eq!(slots, 16384, "{body}");
    body
}

/// The keys of one room are all on the master that owns its slot, rooms spread
/// over every master, the members' channels are sharded channels on that master
/// and no classic channel carries them; `/readyz`, `/stats` and `/metrics` show
/// the mode and every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_live_on_one_shard_and_deliver_over_sharded_channels() {
    let env = [GRACE, ("ADMIN_TOKEN", security::ADMIN)];
    let (rc, prefix, nodes) = on_cluster(3, 0, 2, &env).await;
    let rooms = tokio::task::block_in_place(|| rooms_on_every_master(&rc, &prefix, 2));
    let mut clients = Vec::new();
    for (i, (room, _)) in rooms.iter().enumerate() {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let (mut first, _, mut second, _) = pair_in(&nodes, room, &a, &b).await;
        exchange(&mut first, &a, &mut second, &b, room).await;
        clients.push((first, second));
    }

    let masters = rc.masters();
    for (i, (room, owner)) in rooms.iter().enumerate() {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let pattern = format!("{prefix}*{{{room}}}*");
        for port in &masters {
            let keys = rc.keys_on(*port, &pattern);
            if port != owner {
                assert!(
                    keys.is_empty(),
                    "keys of {room} on master {port}, not its owner {owner}: {keys:?}"
                );
                continue;
            }
            let expected: BTreeSet<String> = [
                format!("{prefix}room:{{{room}}}"),
                format!("{prefix}room:{{{room}}}:members"),
                format!("{prefix}room:{{{room}}}:seq"),
                format!("{prefix}room:{{{room}}}:mb:{a}"),
                format!("{prefix}room:{{{room}}}:mb:{b}"),
            ]
            .into();
            assert!(
                keys.is_superset(&expected),
                "keys of {room} on {port}: {keys:?}"
            );
        }
        let channels: Vec<String> = [&a, &b]
            .iter()
            .map(|u| format!("{prefix}room:{{{room}}}:ch:{u}"))
            .collect();
        for port in &masters {
            let sharded = rc.shard_channels(*port);
            for channel in &channels {
                assert_eq!(
                    sharded.contains(channel),
                    port == owner,
                    "sharded channel {channel} on master {port} (owner {owner}): {sharded:?}"
                );
            }
        }
    }
    let owners: BTreeSet<u16> = rooms.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        owners.len(),
        masters.len(),
        "rooms spread over every master"
    );
    for port in &masters {
        let classic = rc.classic_channels(*port);
        assert!(
            !classic.iter().any(|c| c.starts_with(&prefix)),
            "classic channels of the prefix on {port}: {classic:?}"
        );
    }

    for node in &nodes {
        assert_all_shards_ready(node, masters.len()).await;
        let (status, stats) = security::admin(node, "GET", "/stats", None).await;
        assert_eq!(status, 200, "/stats: {stats}");
        assert_eq!(stats["redis_mode"], "cluster", "{stats}");
        assert_eq!(stats["redis"]["state"], "up", "{stats}");
        assert!(
            stats["redis"]["used_memory"].as_u64().unwrap_or(0) > 0,
            "{stats}"
        );
        let shards = stats["redis"]["shards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(shards.len(), masters.len(), "{stats}");
        let metrics = node.request("GET", "/metrics", &[], None).await.text;
        for line in [
            "signal_redis_mode_info{mode=\"cluster\"} 1",
            "signal_redis_shards{state=\"up\"} 3",
            "signal_redis_shards{state=\"down\"} 0",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no `{line}` in /metrics:\n{metrics}"
            );
        }
    }
    for (i, (first, second)) in clients.iter_mut().enumerate() {
        exchange(first, &format!("a{i}"), second, &format!("b{i}"), "again").await;
    }
}

/// Cluster mode without seeds, with a bad seed, or with a sentinel setting stops
/// the node at startup with one line.
#[test]
fn startup_refuses_bad_cluster_settings() {
    assert_refused(&[("REDIS_MODE", "cluster")], "REDIS_URL");
    assert_refused(
        &[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://127.0.0.1:1,not a url"),
        ],
        "REDIS_URL",
    );
    assert_refused(
        &[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_SENTINEL_MASTER", "m"),
        ],
        "REDIS_SENTINEL_MASTER",
    );
}

/// One pair's traffic: its two clients' tasks and logs.
struct PairTraffic {
    names: [String; 2],
    tasks: Vec<tokio::task::JoinHandle<TestClient>>,
    logs: [Arc<Mutex<TrafficLog>>; 2],
}

/// Starts probes both ways between the two clients of a pair.
fn start_pair_traffic(
    clients: (TestClient, TestClient),
    names: [String; 2],
    marked: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) -> PairTraffic {
    let logs = [
        Arc::new(Mutex::new(TrafficLog::default())),
        Arc::new(Mutex::new(TrafficLog::default())),
    ];
    let tasks = vec![
        tokio::spawn(run_traffic(
            clients.0,
            names[0].clone(),
            names[1].clone(),
            marked.clone(),
            stop.clone(),
            logs[0].clone(),
        )),
        tokio::spawn(run_traffic(
            clients.1,
            names[1].clone(),
            names[0].clone(),
            marked.clone(),
            stop.clone(),
            logs[1].clone(),
        )),
    ];
    PairTraffic { names, tasks, logs }
}

/// Waits until `done` holds for every log of every pair (panics at `deadline`).
async fn wait_all(
    pairs: &[PairTraffic],
    deadline: Instant,
    what: &str,
    done: impl Fn(&TrafficLog) -> bool + Copy,
) {
    for pair in pairs {
        let logs = [
            (pair.names[0].as_str(), &*pair.logs[0]),
            (pair.names[1].as_str(), &*pair.logs[1]),
        ];
        wait_traffic(&logs, deadline, what, done).await;
    }
}

/// What a pair's traffic left: its names, its two logs, its two clients (still
/// connected, so their members stay in the room for the checks that follow).
type PairResult = ([String; 2], [TrafficLog; 2], Vec<TestClient>);

/// Stops every pair's traffic and reads what was still on its way.
async fn stop_all(pairs: Vec<PairTraffic>, stop: &AtomicBool) -> Vec<PairResult> {
    stop.store(true, Ordering::SeqCst);
    let mut out = Vec::new();
    for pair in pairs {
        let mut clients = Vec::new();
        for task in pair.tasks {
            match tokio::time::timeout(PROBE_OUTCOME + TIMEOUT, task).await {
                Err(_) => panic!("a traffic task of {:?} did not stop", pair.names),
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("a traffic task of {:?} failed: {e}", pair.names),
                Ok(Ok(client)) => clients.push(client),
            }
        }
        // Probes accepted just before the stop may still be on their way.
        for (i, client) in clients.iter_mut().enumerate() {
            let (me, peer) = (&pair.names[i], &pair.names[1 - i]);
            while let Some(event) = client.next_event(QUIET).await {
                let Event::Text(text) = event else {
                    panic!("{me}: the connection ended after the traffic: {event:?}");
                };
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if is_probe_from(&frame, peer, me) {
                    let n = frame["payload"]["probe"].as_u64().unwrap_or_default();
                    let marked = frame["payload"]["after_kill"] == json!(true);
                    lock_log(&pair.logs[i])
                        .received
                        .push((n, marked, Instant::now()));
                } else {
                    panic!("{me}: unexpected frame after the traffic: {frame}");
                }
            }
        }
        let logs = [
            std::mem::take(&mut *lock_log(&pair.logs[0])),
            std::mem::take(&mut *lock_log(&pair.logs[1])),
        ];
        out.push((pair.names, logs, clients));
    }
    out
}

/// Lost (accepted, never received), refused and out-of-order probes over every
/// pair; panics on a traffic failure (a connection that ended, an odd frame).
fn tally(results: &[PairResult]) -> (Vec<String>, usize, usize) {
    let (mut lost, mut refused, mut accepted) = (Vec::new(), 0, 0);
    for (names, logs, _) in results {
        for i in 0..2 {
            let (log, peer_log) = (&logs[i], &logs[1 - i]);
            assert!(log.failures.is_empty(), "{}: {}", names[i], log.summary());
            assert!(
                log.in_order(),
                "{} received probes out of order or twice: {:?}",
                names[i],
                log.received.iter().map(|r| r.0).collect::<Vec<_>>()
            );
            lost.extend(
                log.lost_by(peer_log)
                    .iter()
                    .map(|n| format!("{}#{n}", names[i])),
            );
            refused += log.refused();
            accepted += log.outcomes.len() - log.refused();
        }
    }
    (lost, refused, accepted)
}

/// Lets the traffic go on until every side has received 5 probes sent after the
/// fault (by `deadline`), stops it, prints the tally for `what`, and asserts that no
/// accepted probe was lost. Returns what is left: the clients, still connected.
async fn finish(
    pairs: Vec<PairTraffic>,
    stop: &AtomicBool,
    deadline: Instant,
    what: &str,
) -> Vec<PairResult> {
    wait_all(
        &pairs,
        deadline,
        &format!("probes after the {what}"),
        |log| log.received.iter().filter(|r| r.1).count() >= 5,
    )
    .await;
    let results = stop_all(pairs, stop).await;
    let (lost, refused, accepted) = tally(&results);
    eprintln!(
        "{what}: {accepted} probes accepted, {refused} refused (their senders got an error), {} lost: {lost:?}",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "accepted probes that never arrived: {lost:?}"
    );
    results
}

/// SIGKILL of a master while every room (two per shard) exchanges probes both
/// ways: its replica is promoted, every room relays again within RECOVERY of the
/// promotion on the same connections, nothing a sender was told was accepted is
/// lost, nothing arrives twice or out of order, REST and /readyz answer right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_under_traffic_is_followed() {
    failover_under_traffic(None).await;
}

/// The same with Redis's failover slower than a node heartbeat's TTL
/// (`cluster-node-timeout` 7 s, where production clusters often run 15 s), and the
/// master killed the one holding node 0's heartbeat: that heartbeat expires while its
/// shard is down, yet no node is declared dead, no session closes, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_failover_of_a_heartbeat_shard_declares_no_node_dead() {
    failover_under_traffic(Some(Duration::from_secs(7))).await;
}

/// The failover scenario; `slow`: the cluster's node timeout, and the victim is
/// the master of node 0's heartbeat (else the master of the first room).
async fn failover_under_traffic(slow: Option<Duration>) {
    let (rc, prefix, nodes) = on_cluster(3, 1, 2, &[GRACE]).await;
    if let Some(timeout) = slow {
        tokio::task::block_in_place(|| rc.set_node_timeout(timeout));
    }
    let rooms = tokio::task::block_in_place(|| rooms_on_every_master(&rc, &prefix, 2));
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut pairs = Vec::new();
    let mut members = Vec::new();
    for (i, (room, _)) in rooms.iter().enumerate() {
        let names = [format!("a{i}"), format!("b{i}")];
        let (first, first_user, second, second_user) =
            pair_in(&nodes, room, &names[0], &names[1]).await;
        members.push((room.clone(), first_user, second_user));
        pairs.push(start_pair_traffic((first, second), names, &killed, &stop));
    }
    wait_all(
        &pairs,
        Instant::now() + TIMEOUT,
        "probes flowing in every room",
        |log| log.received.len() >= 3,
    )
    .await;

    let victim_key = match slow {
        Some(_) => format!("{prefix}node:{{{}}}", nodes[0].node_id()),
        None => format!("{prefix}room:{{{}}}", rooms[0].0),
    };
    let slot = rc.slot_of(&victim_key);
    let kill_at = Instant::now();
    let old = tokio::task::block_in_place(|| rc.kill_master_of_slot(slot)); // FAULT: a master is SIGKILLed.
    killed.store(true, Ordering::SeqCst);
    let bound = FAILOVER + slow.unwrap_or_default() * 2;
    let new = tokio::task::block_in_place(|| rc.wait_for_failover(slot, old, bound));
    let promoted_at = Instant::now();
    eprintln!(
        "timing: cluster failover: kill -> promotion {:?} (master {old} -> {new})",
        promoted_at - kill_at
    );

    let recovered_by = promoted_at + RECOVERY;
    wait_all(
        &pairs,
        recovered_by,
        "a probe sent after the kill delivered in every room and direction",
        |log| log.first_after_kill().is_some(),
    )
    .await;
    let mut slowest = Duration::ZERO;
    for pair in &pairs {
        for log in &pair.logs {
            if let Some(at) = lock_log(log).first_after_kill() {
                slowest = slowest.max(at.saturating_duration_since(promoted_at));
            }
        }
    }
    eprintln!("timing: cluster failover: promotion -> every room relaying again {slowest:?}");
    // Steady again: a few more each way, then stop.
    let _clients = finish(pairs, &stop, recovered_by, "failover").await;

    for node in &nodes {
        for (room, first_user, second_user) in &members {
            assert_rest_members(node, room, &[first_user, second_user]).await;
        }
        let node = &node;
        eventually(
            RECOVERY,
            "every shard answering in /readyz",
            move || async move {
                let (status, body) = node.get("/readyz").await;
                status == 200 && body["shards"].as_array().is_some_and(|s| s.len() == 3)
            },
        )
        .await;
    }
}

/// The slot of a busy room moves to another master, key by key, while its two
/// members exchange probes: nothing accepted is lost or reordered, the room's keys
/// and sharded channels end on the new master, and messages keep flowing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_under_traffic_loses_nothing() {
    let (rc, prefix, nodes) = on_cluster(3, 0, 2, &[GRACE]).await;
    let room = room_id();
    let names = [String::from("alice"), String::from("bob")];
    let (first, _, second, _) = pair_in(&nodes, &room, &names[0], &names[1]).await;
    let moved = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = vec![start_pair_traffic((first, second), names, &moved, &stop)];
    wait_all(&pairs, Instant::now() + TIMEOUT, "probes flowing", |log| {
        log.received.len() >= 5
    })
    .await;

    let room_key = format!("{prefix}room:{{{room}}}");
    let slot = rc.slot_of(&room_key);
    let source = rc.master_of_slot(slot);
    let target = rc.another_master(source);
    let started = Instant::now();
    let keys_moved = tokio::task::block_in_place(|| {
        // FAULT: the slot moves key by key, a pause between keys.
        rc.migrate_slot_slowly(slot, target, Duration::from_millis(150), 1)
    });
    moved.store(true, Ordering::SeqCst);
    eprintln!(
        "migration: slot {slot} ({keys_moved} keys) {source} -> {target} in {:?}",
        started.elapsed()
    );
    let _clients = finish(pairs, &stop, Instant::now() + RECOVERY, "migration").await;

    assert_eq!(rc.master_of_key(&room_key), target);
    assert!(rc
        .keys_on(source, &format!("{prefix}*{{{room}}}*"))
        .is_empty());
    assert!(rc
        .keys_on(target, &format!("{prefix}*{{{room}}}*"))
        .contains(&room_key));
    let sharded = rc.shard_channels(target);
    for user in ["alice", "bob"] {
        let channel = format!("{prefix}room:{{{room}}}:ch:{user}");
        assert!(
            sharded.contains(&channel),
            "{channel} not subscribed on {target}: {sharded:?}"
        );
    }
    for node in &nodes {
        assert_all_shards_ready(node, 3).await;
    }
}

/// Redis takes back a member's last counts (and their mailbox entries), as a
/// failover to a replica that had not received them does: the next frames for the
/// member get `seq` numbers it already has. They still arrive, numbered above
/// what it has, in order, with no gap.
async fn lost_counts_are_numbered_again(c: &Cluster) {
    let (room, mut alice, _, mut bob, _) = pair(c).await;
    let send = |n: u64| json!({"type": "message", "target": "bob", "payload": {"n": n}});
    for n in 1..=5 {
        alice.send_json(send(n)).await;
        bob.expect_frame(&relayed("message", "alice", Some("bob"), json!({"n": n})))
            .await;
    }
    assert_eq!(bob.last_seq(), Some(5));
    let seq_key = format!("{}room:{{{room}}}:seq", c.prefix());
    let mailbox = format!("{}room:{{{room}}}:mb:bob", c.prefix());
    // FAULT: the counter goes back to 2, and the mailbox loses frames 3 to 5.
    c.store().command(&seq_key, &["HSET", &seq_key, "bob", "2"]);
    c.store().command(&mailbox, &["LTRIM", &mailbox, "0", "1"]);
    for n in 6..=9 {
        alice.send_json(send(n)).await;
        bob.expect_frame(&relayed("message", "alice", Some("bob"), json!({"n": n})))
            .await;
        assert_eq!(bob.last_seq(), Some(n), "bob's seq after message {n}");
    }
    let metrics = c.node(1).request("GET", "/metrics", &[], None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "signal_renumbered_frames_total 1"),
        "one frame numbered again on bob's node (the counter is raised with it):\n{metrics}"
    );
}

mod lost_counts {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        let c = crate::support::Cluster::redis_with(2, &[super::GRACE]).await;
        super::lost_counts_are_numbered_again(&c).await;
    }
}
on_redis_cluster!(
    lost_counts_on_redis_cluster,
    env = [super::GRACE],
    lost_counts_are_numbered_again
);
