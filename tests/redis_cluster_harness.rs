//! The Redis Cluster fixture itself (`support::RedisCluster`), without any
//! signal-node: a cluster forms and hash tags keep a room's keys on one master, a
//! replica takes over a SIGKILLed master with the data it acknowledged, and a slot
//! moves to another master with all its keys, also while keys are being written.
//!
//! The tests of `REDIS_MODE=cluster` rely on these behaviours; this file makes a
//! fixture bug fail here, not there. Each test prints how long the cluster took to
//! form, to fail over or to move the slot (`cargo test --test redis_cluster_harness
//! -- --nocapture`).

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// Bound on a replica taking over after its master's SIGKILL (node timeout 1.5 s).
const FAILOVER: Duration = Duration::from_secs(20);

/// Runs `f`, printing how long it took under `what`.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("{what}: {:.2?}", started.elapsed());
    value
}

/// A `redis-cli` subscriber process, killed on drop.
struct Subscriber(Child);

impl Subscriber {
    /// `redis-cli -p PORT COMMAND CHANNEL` (SUBSCRIBE or SSUBSCRIBE), left running.
    fn start(port: u16, command: &str, channel: &str) -> Self {
        let child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), command, channel])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-cli");
        Self(child)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `SET key value` through `redis-cli -c` (follows MOVED and ASK) from the node on
/// `port`; the reply.
fn set_following_redirects(port: u16, key: &str, value: &str) -> String {
    let output = Command::new("timeout")
        .args(["3", "redis-cli", "-c", "-p", &port.to_string(), "--raw"])
        .args(["SET", key, value])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn three_masters_form_and_a_hash_tag_keeps_a_room_on_one_master() {
    let cluster = timed("formation, 3 masters", || RedisCluster::start(3, 0));
    let masters = cluster.masters();
    let mut ports = cluster.ports();
    ports.sort_unstable();
    assert_eq!(masters, ports, "all 3 nodes are masters");
    let seeds: Vec<String> = masters
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    assert_eq!(cluster.seeds(), seeds.join(","));
    assert_eq!(
        cluster.node_env(),
        vec![
            ("REDIS_MODE", "cluster".to_owned()),
            ("REDIS_URL", seeds.join(","))
        ]
    );

    let (room, seq) = ("signal:room:{r1}", "signal:room:{r1}:seq");
    let slot = cluster.slot_of(room);
    assert_eq!(cluster.slot_of(seq), slot);
    let owner = cluster.master_of_key(room);
    assert_eq!(cluster.master_of_key(seq), owner);
    assert_eq!(cluster.master_of_slot(slot), owner);
    assert_eq!(cluster.cli(owner, &["SET", room, "x"]).trim(), "OK");
    assert_eq!(cluster.cli(owner, &["INCR", seq]).trim(), "1");
    assert_eq!(
        cluster.keys_on(owner, "signal:room:*"),
        strings(&[room, seq])
    );
    for &other in masters.iter().filter(|&&port| port != owner) {
        assert!(cluster.keys_on(other, "signal:room:*").is_empty());
        let refused = cluster
            .try_cli(other, &["GET", room])
            .expect_err("a master that does not serve the slot redirects");
        assert!(
            refused.contains(&format!("MOVED {slot} 127.0.0.1:{owner}")),
            "{refused}"
        );
    }

    let spread: Vec<u16> = (0..50)
        .map(|i| cluster.master_of_key(&format!("signal:room:{{room-{i}}}")))
        .collect();
    let used: BTreeSet<u16> = spread.iter().copied().collect();
    assert_eq!(
        used,
        masters.iter().copied().collect(),
        "50 rooms over the masters: {spread:?}"
    );

    // A shard channel is seen on the node it was subscribed on, a classic one too.
    let other = *masters
        .iter()
        .find(|&&port| port != owner)
        .expect("3 masters");
    let _shard = Subscriber::start(owner, "SSUBSCRIBE", room);
    let _classic = Subscriber::start(other, "SUBSCRIBE", "signal:classic");
    eventually(TIMEOUT, "the two subscriptions to show", || async {
        cluster.shard_channels(owner) == strings(&[room])
            && cluster.classic_channels(other) == strings(&["signal:classic"])
    })
    .await;
    assert!(cluster.shard_channels(other).is_empty());
    assert!(cluster.classic_channels(owner).is_empty());
}

#[test]
fn a_replica_takes_over_a_killed_master_with_what_it_acknowledged() {
    let cluster = timed("formation, 3 masters + 3 replicas", || {
        RedisCluster::start(3, 1)
    });
    assert_eq!(cluster.masters().len(), 3);
    let key = "signal:room:{failover}";
    let slot = cluster.slot_of(key);
    let old = cluster.master_of_slot(slot);
    let replicas = cluster.replicas_of(old);
    assert_eq!(
        replicas.len(),
        1,
        "the master of slot {slot} has one replica"
    );
    // One connection: WAIT counts the replicas that have this connection's writes.
    let acknowledged = cluster.cli_session(old, &[&["SET", key, "before"], &["WAIT", "1", "1000"]]);
    assert_eq!(acknowledged, "OK\n1\n", "SET then WAIT on master {old}");

    let new = timed("failover (SIGKILL to converged)", || {
        assert_eq!(cluster.kill_master_of_slot(slot), old); // FAULT: the master dies.
        cluster.wait_for_failover(slot, old, FAILOVER)
    });
    assert_eq!(
        new, replicas[0],
        "the replica of the killed master took over"
    );
    assert!(!cluster.is_alive(old));
    assert_eq!(cluster.master_of_key(key), new);
    assert_eq!(cluster.cli(new, &["GET", key]).trim(), "before");
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters after the failover: {masters:?}");
    assert!(!masters.contains(&old));
    assert!(cluster
        .seeds()
        .split(',')
        .all(|seed| seed != format!("redis://127.0.0.1:{old}")));
}

#[test]
fn a_slot_moves_to_another_master_with_all_its_keys() {
    let cluster = timed("formation, 3 masters", || RedisCluster::start(3, 0));
    let keys: Vec<String> = (0..200)
        .map(|i| format!("signal:room:{{migrate}}:k{i}"))
        .collect();
    let slot = cluster.slot_of(&keys[0]);
    let from = cluster.master_of_slot(slot);
    let mut mset = vec!["MSET".to_owned()];
    for (i, key) in keys.iter().enumerate() {
        mset.extend([key.clone(), i.to_string()]);
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(cluster.cli(from, &mset).trim(), "OK");
    let to = cluster.another_master(from);

    let moved = timed("migration of a slot with 200 keys", || {
        cluster.migrate_slot(slot, to)
    });
    assert_eq!(moved, 200);
    assert_eq!(cluster.master_of_slot(slot), to);
    let pattern = "signal:room:{migrate}:*";
    assert_eq!(
        cluster.keys_on(to, pattern),
        keys.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(cluster.keys_on(from, pattern).is_empty());
    assert_eq!(cluster.cli(to, &["GET", &keys[7]]).trim(), "7");
    for port in cluster.ports().into_iter().filter(|&port| port != to) {
        let refused = cluster
            .try_cli(port, &["GET", &keys[7]])
            .expect_err("every other node redirects to the new master");
        assert!(
            refused.contains(&format!("MOVED {slot} 127.0.0.1:{to}")),
            "{refused}"
        );
    }
}

#[test]
fn a_slot_moves_slowly_while_keys_are_written_through_redirects() {
    let cluster = RedisCluster::start(3, 0);
    let before: Vec<String> = (0..100)
        .map(|i| format!("signal:room:{{slow}}:k{i}"))
        .collect();
    let slot = cluster.slot_of(&before[0]);
    let from = cluster.master_of_slot(slot);
    let mut mset = vec!["MSET"];
    for key in &before {
        mset.extend([key.as_str(), "v"]);
    }
    assert_eq!(cluster.cli(from, &mset).trim(), "OK");
    let to = cluster.another_master(from);

    // A writer keeps adding keys of the slot (following ASK and MOVED) until the
    // migration is over.
    let done = AtomicBool::new(false);
    let (moved, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut written = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let key = format!("signal:room:{{slow}}:w{}", written.len());
                let reply = set_following_redirects(from, &key, "w");
                assert_eq!(reply, "OK", "SET {key} during the migration");
                written.push(key);
            }
            written
        });
        let moved = timed(
            "slow migration of a slot (batches of 20, 50 ms apart)",
            || cluster.migrate_slot_slowly(slot, to, Duration::from_millis(50), 20),
        );
        done.store(true, Ordering::SeqCst);
        (moved, writer.join().expect("the writer"))
    });
    eprintln!(
        "{} keys written during the migration, {moved} keys migrated",
        written.len()
    );
    assert!(
        !written.is_empty(),
        "keys were written during the migration"
    );
    assert!(moved >= before.len());
    assert_eq!(cluster.master_of_slot(slot), to);
    let expected: BTreeSet<String> = before.iter().chain(&written).cloned().collect();
    assert_eq!(cluster.keys_on(to, "signal:room:{slow}:*"), expected);
    assert!(cluster.keys_on(from, "signal:room:{slow}:*").is_empty());
}
