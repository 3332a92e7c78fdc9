//! A private Redis Cluster per test (`REDIS_MODE=cluster`): masters and their
//! replicas, all `redis-server` processes on free ports, killed on drop (their
//! temporary directory, with every node's `nodes-PORT.conf`, is removed).
//!
//! It exists so that tests can put nodes on a real cluster and then change the
//! cluster under them: SIGKILL a master and wait for its replica to take over,
//! or move a slot with its keys to another master while the cluster serves.
//!
//! Every node gets an explicit cluster bus port (`--cluster-port`, a free port):
//! the default PORT+10000 overflows for ephemeral ports above 55535. Slot owners
//! are read from `CLUSTER NODES` (one line per node, easy to parse from `redis-cli`;
//! the same owners as `CLUSTER SLOTS`). Every wait is a bounded poll.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::redis::{start_with_retries, RedisServer};
use super::sentinel::{data_server_command, info_field, try_redis_cli, wait_until};
use super::util::{free_port, lock, TempDir};

/// Hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: usize = 16384;
/// `cluster-node-timeout`: a silent master is suspected after this long, and
/// failed (and replaced by its replica) shortly after.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on `redis-cli --cluster create`, on the cluster then agreeing on the
/// slot owners and the replicas being in sync, and on agreeing after a slot moved.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one [`RedisCluster::cli_session`] (its `WAIT`s included).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Error replies that `redis-cli --raw` prints on stdout (exiting 0), beyond
/// those `try_redis_cli` already recognises.
const CLUSTER_ERRORS: [&str; 10] = [
    "MOVED ",
    "ASK ",
    "CLUSTERDOWN ",
    "TRYAGAIN ",
    "CROSSSLOT ",
    "BUSYKEY ",
    "IOERR ",
    "READONLY ",
    "MASTERDOWN ",
    "LOADING ",
];

/// A Redis Cluster of masters (3 at least, as `redis-cli --cluster create` asks)
/// with the same number of replicas each, every node a `redis-server` on
/// 127.0.0.1 killed on drop.
pub struct RedisCluster {
    // Fields drop in order: the servers, then their directory.
    nodes: Vec<RedisServer>,
    dir: TempDir,
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    /// Slot ranges it serves (in-flight `[slot->-id]` entries left out).
    slots: Vec<(usize, usize)>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` cluster-enabled servers (each
    /// retried on new ports if its port or bus port was taken), creates the cluster
    /// with `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`, agrees on every slot's owner, knows every other node and
    /// its role, every replica's link to its master is up and every master streams
    /// its writes to its replicas. Takes about 2 s: a new master reports
    /// `cluster_state:ok` 2 s after its start at the earliest.
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        assert!(
            masters >= 3,
            "a Redis Cluster needs 3 masters at least, not {masters}"
        );
        let dir = TempDir::new();
        let count = masters * (1 + replicas_per_master);
        let nodes = (0..count).map(|i| start_node(&dir, i)).collect();
        let cluster = Self { nodes, dir };
        cluster.create(replicas_per_master);
        cluster.wait_formed(masters);
        if replicas_per_master > 0 {
            cluster.wait_replicas_streaming(replicas_per_master);
        }
        cluster
    }

    /// `redis-cli --cluster create` over all nodes (the first `masters` become
    /// masters, the others their replicas).
    fn create(&self, replicas_per_master: usize) {
        let addrs: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let output = Command::new("timeout")
            .arg(FORM_TIMEOUT.as_secs().to_string())
            .args(["redis-cli", "--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (is it on PATH?): {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create {addrs:?} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Waits until the cluster is converged, every node knows all the others and
    /// sees `masters` masters (replicas start as masters: the others learn their
    /// role from gossip after their `CLUSTER REPLICATE`), and every replica's link
    /// to its master is up.
    fn wait_formed(&self, masters: usize) {
        let count = self.nodes.len();
        wait_until(
            FORM_TIMEOUT,
            format!("the {count} nodes to form a cluster of {masters} masters"),
            || {
                self.try_converged()?;
                for port in self.ports() {
                    let view = self.try_view(port)?;
                    let seen = view.iter().filter(|node| node.has_flag("master"));
                    if view.len() != count || seen.count() != masters {
                        let flags: Vec<_> = view.iter().map(|n| (n.port, &n.flags)).collect();
                        return Err(format!("node {port} sees {flags:?}"));
                    }
                    let replication = try_redis_cli(port, &["INFO", "replication"])?;
                    let link = info_field(&replication, "master_link_status");
                    if info_field(&replication, "role") == Some("slave") && link != Some("up") {
                        return Err(format!("replica {port}: master_link_status {link:?}"));
                    }
                }
                Ok(())
            },
        );
    }

    /// Waits until every master streams its writes to its `replicas` replicas: a
    /// replica's link is up once it has loaded the master's snapshot, but the master
    /// may hold the stream back until the replica's next `REPLCONF ACK` (up to 1 s
    /// later), and a master killed meanwhile loses what it acknowledged. A
    /// `FLUSHALL` (the cluster is still empty) then `WAIT` on the same connection
    /// returns once the replicas have it.
    fn wait_replicas_streaming(&self, replicas: usize) {
        let wait = [
            "WAIT",
            &replicas.to_string(),
            &FORM_TIMEOUT.as_millis().to_string(),
        ];
        for port in self.masters() {
            let reply = self.cli_session(port, &[&["FLUSHALL"], &wait]);
            assert_eq!(
                reply,
                format!("OK\n{replicas}\n"),
                "FLUSHALL then WAIT on master {port}"
            );
        }
    }

    /// Comma-separated `redis://127.0.0.1:PORT` of the current masters: the seeds a
    /// node gets as `REDIS_URL`.
    pub fn seeds(&self) -> String {
        self.masters()
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The env of a node in cluster mode: `REDIS_MODE=cluster`, `REDIS_URL` = the seeds.
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_MODE", "cluster".to_owned()),
            ("REDIS_URL", self.seeds()),
        ]
    }

    /// Every node's port, in start order, whether running or killed.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Ports of the nodes still running (not killed by the fixture), in start order.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| lock(&node.child).is_some())
            .map(RedisServer::port)
            .collect()
    }

    /// Whether the node on `port` is running (not killed by the fixture).
    pub fn is_alive(&self, port: u16) -> bool {
        self.live_ports().contains(&port)
    }

    /// The node on `port` (for `RedisServer`'s helpers: `hgetall`, `smembers`, `ttl`, ...;
    /// none of them follows redirections). Panics if no node of the cluster has it.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no node of the cluster on port {port}"))
    }

    /// The masters by port, as the first live node sees them now (`CLUSTER NODES`:
    /// flagged `master`, not `fail` nor `fail?`), sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .view(self.any_live())
            .into_iter()
            .filter(|node| {
                node.has_flag("master") && !node.has_flag("fail") && !node.has_flag("fail?")
            })
            .map(|node| node.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// Sets `cluster-node-timeout` on every live node: how long a silent master
    /// goes before it is failed and its replica promoted.
    pub fn set_node_timeout(&self, timeout: Duration) {
        let millis = timeout.as_millis().to_string();
        for port in self.live_ports() {
            self.cli(port, &["CONFIG", "SET", "cluster-node-timeout", &millis]);
        }
    }

    /// A master other than the one on `port` (the first, by port), e.g. where to
    /// move a slot.
    pub fn another_master(&self, port: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|&master| master != port)
            .unwrap_or_else(|| panic!("no master other than {port}"))
    }

    /// The replicas of the master on `master_port` by port, as the first live node sees
    /// them now (`CLUSTER REPLICAS`), sorted.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let id = self.node_id(master_port);
        let mut replicas: Vec<u16> = self
            .cli(self.any_live(), &["CLUSTER", "REPLICAS", &id])
            .lines()
            .filter_map(parse_node_line)
            .map(|node| node.port)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// The port of the master serving `slot`, as the first live node sees it now.
    /// Nodes may disagree for a moment after a change: [`RedisCluster::wait_converged`].
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let port = self.any_live();
        match slot_owners(&self.view(port)).get(usize::from(slot)) {
            Some(&owner) if owner != 0 => owner,
            _ => panic!("node {port} names no master for slot {slot}"),
        }
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on a live node).
    pub fn slot_of(&self, key: &str) -> u16 {
        let answer = self.cli(self.any_live(), &["CLUSTER", "KEYSLOT", key]);
        answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: unexpected reply {answer:?}"))
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    /// The node id (`CLUSTER MYID`) of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// Runs `redis-cli -p PORT --raw ARGS...` against that node only (no `-c`:
    /// redirections are not followed) and returns its stdout; panics on an error
    /// reply (`MOVED`, `ASK`, `CLUSTERDOWN`, `ERR`, ...) or a failure.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RedisCluster::cli`], with an error reply or a failure as `Err` (the reply
    /// text, e.g. `MOVED 1234 127.0.0.1:PORT`, is in the message).
    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let out = try_redis_cli(port, args)?;
        if CLUSTER_ERRORS.iter().any(|code| out.starts_with(code)) {
            return Err(format!("redis-cli -p {port} {args:?}: {}", out.trim()));
        }
        Ok(out)
    }

    /// Runs `commands` in order on one connection to the node on `port` (`redis-cli
    /// --raw` reading them from stdin) and returns the replies, one or more lines each
    /// (a nil is an empty line). One connection is what `WAIT` needs: it counts the
    /// replicas that acknowledged this connection's writes, so from a fresh
    /// connection it answers at once. Error replies are not told apart from values:
    /// compare the whole output.
    pub fn cli_session(&self, port: u16, commands: &[&[&str]]) -> String {
        let script: String = commands
            .iter()
            .map(|args| {
                let quoted: Vec<String> = args.iter().map(|arg| quote(arg)).collect();
                quoted.join(" ") + "\n"
            })
            .collect();
        let mut child = Command::new("timeout")
            .arg(SESSION_TIMEOUT.as_secs().to_string())
            .args(["redis-cli", "-p", &port.to_string(), "--raw"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (is it on PATH?): {e}"));
        let mut stdin = child.stdin.take().expect("redis-cli stdin");
        stdin
            .write_all(script.as_bytes())
            .unwrap_or_else(|e| panic!("write to redis-cli -p {port}: {e}"));
        drop(stdin);
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("redis-cli -p {port}: {e}"));
        assert!(
            output.status.success(),
            "redis-cli -p {port} with {commands:?}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The non-empty lines of [`RedisCluster::cli`], as a set.
    fn cli_set(&self, port: u16, args: &[&str]) -> BTreeSet<String> {
        self.cli(port, args)
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `PUBSUB SHARDCHANNELS` on the node on `port`: the shard channels (SSUBSCRIBE)
    /// with a subscriber on that node.
    pub fn shard_channels(&self, port: u16) -> BTreeSet<String> {
        self.cli_set(port, &["PUBSUB", "SHARDCHANNELS"])
    }

    /// `PUBSUB CHANNELS` on the node on `port`: the classic channels (SUBSCRIBE) with a
    /// subscriber on that node.
    pub fn classic_channels(&self, port: u16) -> BTreeSet<String> {
        self.cli_set(port, &["PUBSUB", "CHANNELS"])
    }

    /// `KEYS pattern` on the node on `port` only (the keys of its own slots).
    pub fn keys_on(&self, port: u16, pattern: &str) -> BTreeSet<String> {
        self.cli_set(port, &["KEYS", pattern])
    }

    /// SIGKILLs the master serving `slot` (no persistence: what its replica has not
    /// received is lost) and returns its port.
    pub fn kill_master_of_slot(&self, slot: u16) -> u16 {
        let port = self.master_of_slot(slot);
        assert!(
            self.is_alive(port),
            "the master of slot {slot} (port {port}) was already killed"
        );
        self.node(port).stop();
        port
    }

    /// Polls until the live nodes agree that a live master other than `old_port`
    /// serves `slot` and the cluster is converged (see
    /// [`RedisCluster::wait_converged`]); returns the new master's port. Panics after
    /// `within`.
    pub fn wait_for_failover(&self, slot: u16, old_port: u16, within: Duration) -> u16 {
        let mut new_port = 0;
        wait_until(
            within,
            format!("a master other than port {old_port} to serve slot {slot}"),
            || {
                let owner = self.try_converged()?[usize::from(slot)];
                if owner == old_port {
                    return Err(format!("port {old_port} still serves slot {slot}"));
                }
                new_port = owner;
                Ok(())
            },
        );
        new_port
    }

    /// Polls until every live node reports `cluster_state:ok` and the same owner for
    /// every slot, each owner being a live node. Panics after `within`.
    pub fn wait_converged(&self, within: Duration) {
        wait_until(within, "the live nodes of the cluster to converge", || {
            self.try_converged().map(drop)
        });
    }

    /// Moves `slot` with all its keys from its master to the master on `to_port`
    /// while the cluster serves (IMPORTING, MIGRATING, `MIGRATE` 100 keys at a time,
    /// then `SETSLOT NODE` on every master), then waits until the cluster is
    /// converged. Returns how many keys were moved.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) -> usize {
        self.migrate_slot_slowly(slot, to_port, Duration::ZERO, 100)
    }

    /// [`RedisCluster::migrate_slot`], `batch` keys per `MIGRATE`, sleeping `pause`
    /// before each batch after the first (pacing, so that traffic meets the slot
    /// half moved: keys that moved answer `ASK` on the source). Blocking: from async
    /// code run it on a blocking thread (`spawn_blocking`, `std::thread::scope`).
    pub fn migrate_slot_slowly(
        &self,
        slot: u16,
        to_port: u16,
        pause: Duration,
        batch: usize,
    ) -> usize {
        assert!(batch > 0, "a migration batch holds one key at least");
        let from_port = self.master_of_slot(slot);
        assert_ne!(
            from_port, to_port,
            "slot {slot} is already served by port {to_port}"
        );
        let masters = self.masters();
        assert!(
            masters.contains(&to_port),
            "port {to_port} is not a master (masters: {masters:?})"
        );
        let (slot, batch) = (slot.to_string(), batch.to_string());
        let from_id = self.node_id(from_port);
        let to_id = self.node_id(to_port);
        self.expect_ok(
            to_port,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
        );
        self.expect_ok(
            from_port,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
        );
        let to = to_port.to_string();
        let mut moved = 0;
        for round in 0.. {
            if round > 0 {
                std::thread::sleep(pause);
            }
            let keys = self.cli_set(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot, &batch]);
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let reply = self.cli(from_port, &migrate);
            assert!(
                matches!(reply.trim(), "OK" | "NOKEY"),
                "MIGRATE of slot {slot} from port {from_port} to {to_port}: {reply:?}"
            );
            moved += keys.len();
        }
        // The target first, then the source, then the other masters (the order the
        // Redis Cluster specification gives).
        self.expect_ok(to_port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        self.expect_ok(from_port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for port in masters {
            if port != to_port && port != from_port {
                self.expect_ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        self.wait_converged(FORM_TIMEOUT);
        moved
    }

    /// The cluster's directory (the nodes' `nodes-PORT.conf` and data directories).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs a command that must answer `OK`.
    fn expect_ok(&self, port: u16, args: &[&str]) {
        let reply = self.cli(port, args);
        assert_eq!(reply.trim(), "OK", "redis-cli -p {port} {args:?}");
    }

    /// The first live node; panics if all were killed.
    fn any_live(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .expect("every node of the cluster was killed")
    }

    /// `CLUSTER NODES` as the node on `port` sees it.
    fn view(&self, port: u16) -> Vec<NodeLine> {
        self.try_view(port).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_view(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        let answer = self.try_cli(port, &["CLUSTER", "NODES"])?;
        Ok(answer.lines().filter_map(parse_node_line).collect())
    }

    /// The slot owners (port per slot) if every live node reports `cluster_state:ok`
    /// and the same live owner for every slot; otherwise what is not so yet.
    fn try_converged(&self) -> Result<Vec<u16>, String> {
        let live = self.live_ports();
        let mut agreed: Option<(u16, Vec<u16>)> = None;
        for &port in &live {
            let info = self.try_cli(port, &["CLUSTER", "INFO"])?;
            let state = info_field(&info, "cluster_state");
            if state != Some("ok") {
                return Err(format!("node {port}: cluster_state {state:?}"));
            }
            let owners = slot_owners(&self.try_view(port)?);
            if let Some((slot, owner)) = owners
                .iter()
                .enumerate()
                .find(|(_, owner)| !live.contains(owner))
            {
                return Err(format!(
                    "node {port} names port {owner} (0: none) as the master of slot {slot}, \
                     not a live node"
                ));
            }
            match &agreed {
                None => agreed = Some((port, owners)),
                Some((first, theirs)) => {
                    if let Some(slot) = (0..CLUSTER_SLOTS).find(|&s| theirs[s] != owners[s]) {
                        return Err(format!(
                            "slot {slot}: node {first} names port {}, node {port} names port {}",
                            theirs[slot], owners[slot]
                        ));
                    }
                }
            }
        }
        agreed
            .map(|(_, owners)| owners)
            .ok_or_else(|| "every node of the cluster was killed".to_owned())
    }
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Starts cluster node `i` on a free port with its own free bus port, its config
/// file in the cluster's directory, and waits for PONG.
fn start_node(dir: &TempDir, i: usize) -> RedisServer {
    start_with_retries(&format!("redis cluster node {i}"), |port| {
        // A fresh data dir and config file per attempt: the port is new.
        let data = dir.path().join(format!("node-{port}"));
        std::fs::create_dir_all(&data).expect("create a redis data dir");
        let config = dir.path().join(format!("nodes-{port}.conf"));
        let bus = loop {
            let bus = free_port();
            if bus != port {
                break bus;
            }
        };
        let mut cmd = data_server_command(port, &data.to_string_lossy());
        cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(config)
            .args(["--cluster-port", &bus.to_string()])
            .args([
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
            ]);
        cmd
    })
}

/// `arg` double-quoted for a line `redis-cli` reads from stdin.
fn quote(arg: &str) -> String {
    let mut quoted = String::with_capacity(arg.len() + 2);
    quoted.push('"');
    for c in arg.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Parses `ID IP:PORT@BUS[,HOSTNAME] FLAGS MASTER PING PONG EPOCH LINK SLOT...`.
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let addr = fields[1].split(['@', ',']).next()?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    let flags = fields[2].split(',').map(str::to_owned).collect();
    let slots = fields[8..]
        .iter()
        .filter(|slot| !slot.starts_with('['))
        .filter_map(|slot| match slot.split_once('-') {
            Some((start, end)) => Some((start.parse().ok()?, end.parse().ok()?)),
            None => slot.parse().ok().map(|s| (s, s)),
        })
        .collect();
    Some(NodeLine { port, flags, slots })
}

/// The port serving each slot (0 where no node claims it) in one node's view.
fn slot_owners(view: &[NodeLine]) -> Vec<u16> {
    let mut owners = vec![0; CLUSTER_SLOTS];
    for node in view {
        for &(start, end) in &node.slots {
            for owner in owners.iter_mut().take(end + 1).skip(start) {
                *owner = node.port;
            }
        }
    }
    owners
}
