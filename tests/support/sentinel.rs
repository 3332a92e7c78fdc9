//! A private Redis Sentinel deployment per test (PROTOCOL.md section 13): a master,
//! one replica and 3 sentinels, all `redis-server` processes on free ports, killed on
//! drop (their temporary directory is removed).
//!
//! The sentinels run as `redis-server FILE --sentinel` (the Debian `redis-sentinel`
//! binary is the same program and may be absent); each rewrites its own config file,
//! so every one gets a writable file in the set's temporary directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{start_with_retries, RedisServer};
use super::util::{TempDir, POLL};

/// Bound on the replica's first sync and on the sentinels discovering the
/// replica and each other (hello messages go out every 2 s).
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// The sentinels' quorum and timings (`down-after-milliseconds` 1000 and
/// `failover-timeout` 3000: a dead master is replaced within a few seconds).
const QUORUM: u32 = 2;
const DOWN_AFTER_MS: u32 = 1000;
const FAILOVER_TIMEOUT_MS: u32 = 3000;
/// Bound on one `redis-cli` call of the harness.
const CLI_TIMEOUT: Duration = Duration::from_secs(3);

/// A master, its replica and 3 sentinels monitoring it under `master_name`.
pub struct SentinelSet {
    // Fields drop in order: sentinels first (so they do not react to the servers
    // going away), then the servers, then the directory.
    sentinels: Vec<RedisServer>,
    master: RedisServer,
    replica: RedisServer,
    master_name: String,
    dir: TempDir,
}

impl SentinelSet {
    /// Starts the master, the replica (waits until it is in sync), then 3 sentinels
    /// (waits until each knows the master, sees the replica and the 2 others).
    pub fn start(master_name: &str) -> Self {
        let dir = TempDir::new();
        let master = start_server(&dir, "master", &[]);
        let master_port = master.port().to_string();
        let replica = start_server(&dir, "replica", &["--replicaof", "127.0.0.1", &master_port]);
        wait_until(
            FORM_TIMEOUT,
            "the replica to be in sync with the master",
            || {
                let on_master = try_redis_cli(master.port(), &["INFO", "replication"]);
                let on_replica = try_redis_cli(replica.port(), &["INFO", "replication"]);
                let ok = matches!(&on_master, Ok(info) if info_field(info, "connected_slaves") == Some("1"))
                    && matches!(&on_replica, Ok(info) if info_field(info, "master_link_status") == Some("up"));
                ok.then_some(()).ok_or_else(|| {
                format!(
                    "master INFO replication: {on_master:?}; replica INFO replication: {on_replica:?}"
                )
            })
            },
        );
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|i| start_sentinel(&dir, i, master_name, master.port()))
            .collect();
        let set = Self {
            sentinels,
            master,
            replica,
            master_name: master_name.to_owned(),
            dir,
        };
        set.wait_formed();
        set
    }

    /// Waits until every sentinel names the master, lists the replica and the 2
    /// other sentinels.
    fn wait_formed(&self) {
        let name = self.master_name.as_str();
        for sentinel in &self.sentinels {
            let port = sentinel.port();
            wait_until(
                FORM_TIMEOUT,
                format!("sentinel on port {port} to know master {name}, its replica and 2 other sentinels"),
                || {
                    let master = try_redis_cli(port, &["SENTINEL", "get-master-addr-by-name", name])?;
                    if parse_addr(&master) != Some(self.master.port()) {
                        return Err(format!("get-master-addr-by-name answered {master:?}"));
                    }
                    let replicas = try_redis_cli(port, &["SENTINEL", "replicas", name])?;
                    let replica_ports = entries_field(&replicas, "port");
                    if replica_ports != [self.replica.port().to_string()]
                        || entries_field(&replicas, "flags") != ["slave"]
                    {
                        return Err(format!("SENTINEL replicas answered {replicas:?}"));
                    }
                    let others = try_redis_cli(port, &["SENTINEL", "sentinels", name])?;
                    if entries_field(&others, "flags") != ["sentinel", "sentinel"] {
                        return Err(format!("SENTINEL sentinels answered {others:?}"));
                    }
                    Ok(())
                },
            );
        }
    }

    /// The `REDIS_URL` of a node in sentinel mode: the 3 sentinels, comma-separated.
    pub fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The name the sentinels monitor (`REDIS_SENTINEL_MASTER`).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The env of a node in sentinel mode: `REDIS_MODE`, `REDIS_URL`, `REDIS_SENTINEL_MASTER`.
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_MODE", "sentinel".to_owned()),
            ("REDIS_URL", self.urls()),
            ("REDIS_SENTINEL_MASTER", self.master_name.clone()),
        ]
    }

    /// The port of the original master (dead or alive).
    pub fn master_port(&self) -> u16 {
        self.master.port()
    }

    /// The original master.
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The original replica (the master after a failover).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The server on `port` (the original master or replica); panics otherwise.
    pub fn server(&self, port: u16) -> &RedisServer {
        [&self.master, &self.replica]
            .into_iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of the sentinel set on port {port}"))
    }

    /// Sentinel ports, in the order of [`SentinelSet::urls`].
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// SIGKILLs the master (no persistence: its data is gone) and reaps it.
    pub fn kill_master(&self) {
        self.master.stop();
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn current_master_port(&self) -> u16 {
        self.try_current_master_port()
            .unwrap_or_else(|e| panic!("no sentinel names master {}: {e}", self.master_name))
    }

    fn try_current_master_port(&self) -> Result<u16, String> {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            let answer = try_redis_cli(
                sentinel.port(),
                &["SENTINEL", "get-master-addr-by-name", &self.master_name],
            );
            match answer.as_deref().map(parse_addr) {
                Ok(Some(port)) => return Ok(port),
                Ok(None) => errors.push(format!("{}: answered {answer:?}", sentinel.port())),
                Err(e) => errors.push(format!("{}: {e}", sentinel.port())),
            }
        }
        Err(errors.join("; "))
    }

    /// Polls the sentinels until they name a master other than the original one and
    /// that server answers `ROLE` as a master; returns its port. Panics after `within`.
    pub fn wait_for_failover(&self, within: Duration) -> u16 {
        let old = self.master.port();
        let mut new_port = 0;
        wait_until(
            within,
            format!("the sentinels to promote a new master instead of port {old}"),
            || {
                let port = self.try_current_master_port()?;
                if port == old {
                    return Err(format!("the sentinels still name port {old}"));
                }
                let role = try_redis_cli(port, &["ROLE"])?;
                if role.lines().next() != Some("master") {
                    return Err(format!("port {port} is named but ROLE answers {role:?}"));
                }
                new_port = port;
                Ok(())
            },
        );
        new_port
    }

    /// Waits until the replica has applied everything the master had written when
    /// this was called (`slave_repl_offset` reaches the master's `master_repl_offset`).
    pub fn wait_replica_caught_up(&self, within: Duration) {
        let info = try_redis_cli(self.master.port(), &["INFO", "replication"])
            .unwrap_or_else(|e| panic!("INFO replication on the master: {e}"));
        let target: u64 = info_field(&info, "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no master_repl_offset in {info:?}"));
        wait_until(
            within,
            format!("the replica to reach replication offset {target}"),
            || {
                let info = try_redis_cli(self.replica.port(), &["INFO", "replication"])?;
                match info_field(&info, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok()) {
                    Some(offset) if offset >= target => Ok(()),
                    other => Err(format!("slave_repl_offset {other:?}")),
                }
            },
        );
    }

    /// The set's directory (config files of the sentinels).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for sentinel in &self.sentinels {
            sentinel.stop();
        }
        self.master.stop();
        self.replica.stop();
    }
}

/// Starts a data server (`--dir` in the set's directory, no persistence, diskless
/// replication without delay) with `extra` arguments and waits for PONG.
fn start_server(dir: &TempDir, role: &str, extra: &[&str]) -> RedisServer {
    let data = dir.path().join(role);
    std::fs::create_dir_all(&data).expect("create a redis data dir");
    let data = data.to_string_lossy().into_owned();
    start_with_retries(role, |port| {
        let mut cmd = data_server_command(port, &data);
        cmd.args(extra);
        cmd
    })
}

/// `redis-server` on `port` holding data (also the Redis Cluster's nodes): files in
/// `data`, no persistence, diskless replication without delay.
pub(super) fn data_server_command(port: u16, data: &str) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir", data])
        .args([
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]);
    cmd
}

/// Starts sentinel `i` watching `master_port` under `name`, from its own config file.
fn start_sentinel(dir: &TempDir, i: usize, name: &str, master_port: u16) -> RedisServer {
    let work = dir.path().join(format!("sentinel-{i}"));
    std::fs::create_dir_all(&work).expect("create a sentinel dir");
    let work = work.to_string_lossy().into_owned();
    start_with_retries(&format!("sentinel {i}"), |port| {
        // A fresh file per attempt: a sentinel rewrites its config (its id, the
        // port it ran on) and a retry must not inherit that.
        let config = dir.write(
            &format!("sentinel-{i}-{port}.conf"),
            format!(
                "bind 127.0.0.1\n\
                 dir {work}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} {QUORUM}\n\
                 sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n"
            )
            .as_bytes(),
        );
        let mut cmd = Command::new("redis-server");
        cmd.arg(config)
            .arg("--sentinel")
            .args(["--port", &port.to_string()]);
        cmd
    })
}

/// Runs `redis-cli -p PORT --raw ARGS...` (bounded by CLI_TIMEOUT); its stdout, or
/// why it failed. An error reply counts as a failure.
pub fn try_redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let timeout = format!("{}", CLI_TIMEOUT.as_secs_f64());
    let output = Command::new("timeout")
        .args([
            timeout.as_str(),
            "redis-cli",
            "-p",
            &port.to_string(),
            "--raw",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli (is it on PATH?): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "redis-cli -p {port} {args:?}: {} {}{}",
            output.status,
            stdout.trim(),
            stderr.trim()
        ));
    }
    if stdout.starts_with("ERR") || stdout.starts_with("WRONGTYPE") || stdout.starts_with("NOAUTH")
    {
        return Err(format!("redis-cli -p {port} {args:?}: {}", stdout.trim()));
    }
    Ok(stdout)
}

/// The value of `field:value` in an INFO answer.
pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// The port of a `get-master-addr-by-name` answer (`IP\nPORT\n`).
fn parse_addr(answer: &str) -> Option<u16> {
    let mut lines = answer.lines().filter(|l| !l.is_empty());
    let _ip = lines.next()?;
    lines.next()?.trim().parse().ok()
}

/// In a `--raw` list of field/value lists (`SENTINEL replicas|sentinels NAME`), the
/// value after every line equal to `field`.
fn entries_field(answer: &str, field: &str) -> Vec<String> {
    let lines: Vec<&str> = answer.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == field)
        .map(|pair| pair[1].to_owned())
        .collect()
}

/// Polls `check` until it is `Ok`; panics naming `what` and the last error after
/// `within`. Blocking (the harness's process helpers are synchronous).
pub(super) fn wait_until(
    within: Duration,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(POLL);
    }
}
