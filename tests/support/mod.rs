//! Harness for the integration tests: real `redis-server` and `signal-node`
//! processes, a WebSocket client whose every wait is bounded, and assertions on
//! the frame and USER shapes of PROTOCOL.md.
//!
//! It owns process lifetimes (everything it starts is killed on drop) and all
//! timeouts. It does not decide what a test expects: tests build the exact frames.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// Bound on every network wait (connect, send, receive, HTTP request).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Window used only to assert that nothing arrives; never to wait for something.
pub const QUIET: Duration = Duration::from_millis(300);
/// Bound on a node becoming ready after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on redis-server answering PING after spawn.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Period of every bounded poll.
const POLL: Duration = Duration::from_millis(25);

/// Every variable of PROTOCOL.md section 10: removed from a node's environment so
/// that the parent's settings never leak into a test.
const CONFIG_VARS: &[&str] = &[
    "HOST",
    "PORT",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "KEY_PREFIX",
    "ROOM_TTL_SECONDS",
    "NODE_ID",
    "RUST_LOG",
    "LOG_FORMAT",
    "MAX_MESSAGE_BYTES",
    "PING_INTERVAL_SECONDS",
    "RATE_LIMIT_PER_SECOND",
    "RATE_LIMIT_BURST",
    "MAX_QUEUE_BYTES",
    "ADMIN_TOKEN",
    "METRICS_TOKEN",
    "AUTH_MODE",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "TOKEN_MAX_TTL_SECONDS",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "ALLOWED_ORIGINS",
    "PAYLOAD_ENCRYPTION_KEY",
    "MAX_CONNECTIONS",
    "HTTP_HEADER_TIMEOUT_SECONDS",
    "HTTP_IDLE_TIMEOUT_SECONDS",
    "MAX_PENDING_CONNECTIONS",
];

// ---------------------------------------------------------------------------
// Ids and small utilities
// ---------------------------------------------------------------------------

/// A fresh room id, unique per call, valid per PROTOCOL.md section 1.
pub fn room_id() -> String {
    format!("r-{}", Uuid::new_v4().simple())
}

/// A fresh KEY_PREFIX, unique per call.
pub fn key_prefix() -> String {
    format!("t-{}:", Uuid::new_v4().simple())
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener; the
/// small race with other processes is known and accepted).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` every few milliseconds until it holds; panics naming `what` after
/// `within`. This is the only acceptable way to wait for a state without an event.
pub async fn eventually<F, Fut>(within: Duration, what: impl Display, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock already failed the test; keep going for Drop.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts redis-server (from PATH) and waits until it answers PING.
    pub fn start() -> Self {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut child = spawn_redis(port);
            match wait_for_pong(port, &mut child) {
                Ok(()) => {
                    return Self {
                        port,
                        child: Mutex::new(Some(child)),
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = e;
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data is lost: it runs without persistence).
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if running and starts an empty one on the same port.
    pub fn restart(&self) {
        self.stop();
        let mut child = spawn_redis(self.port);
        if let Err(e) = wait_for_pong(self.port, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
        *lock(&self.child) = Some(child);
    }

    /// Runs `redis-cli -p PORT --raw ARGS...` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (is it on PATH?): {e}"));
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("redis-cli output is UTF-8")
    }

    fn lines(&self, args: &[&str]) -> Vec<String> {
        self.cli(args)
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> BTreeSet<String> {
        self.lines(&["KEYS", pattern]).into_iter().collect()
    }

    /// `TTL key`: seconds left, -1 without expiry, -2 when the key is missing.
    pub fn ttl(&self, key: &str) -> i64 {
        let out = self.cli(&["TTL", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("TTL {key}: unexpected reply {out:?}"))
    }

    pub fn exists(&self, key: &str) -> bool {
        self.cli(&["EXISTS", key]).trim() == "1"
    }

    /// `TYPE key` (`set`, `hash`, `none`, ...).
    pub fn key_type(&self, key: &str) -> String {
        self.cli(&["TYPE", key]).trim().to_owned()
    }

    pub fn smembers(&self, key: &str) -> BTreeSet<String> {
        self.lines(&["SMEMBERS", key]).into_iter().collect()
    }

    pub fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        let out = self.cli(&["HGETALL", key]);
        let mut fields = BTreeMap::new();
        let mut lines = out.lines();
        while let Some(field) = lines.next() {
            if field.is_empty() {
                continue;
            }
            let value = lines.next().unwrap_or_default();
            fields.insert(field.to_owned(), value.to_owned());
        }
        fields
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server: {e}; install it and put it on PATH (e.g. apt-get install redis-server)")
        })
}

fn wait_for_pong(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + REDIS_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        if ping(port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no PONG on port {port} within {REDIS_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Speaks raw RESP, so the tests need no Redis client crate.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
}

// ---------------------------------------------------------------------------
// signal-node
// ---------------------------------------------------------------------------

/// One `signal-node` process. Its stdout and stderr go to a log file, printed when
/// the test fails and deleted otherwise. Killed on drop.
pub struct TestNode {
    port: u16,
    node_id: String,
    log_path: PathBuf,
    child: Mutex<Child>,
}

impl TestNode {
    /// Spawns a node and waits until `GET /readyz` answers 200.
    ///
    /// `redis: None` runs it standalone. `extra_env` is applied last, so it can
    /// override anything.
    pub async fn start(
        redis: Option<&RedisServer>,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let node = Self::spawn(redis, prefix, extra_env);
            match node.wait_ready().await {
                Ok(()) => return node,
                // The free port was taken between probe and bind: try another one.
                Err(_) if attempt < 3 && node.log().to_lowercase().contains("in use") => continue,
                Err(e) => panic!("{e}\n--- log of {} ---\n{}", node.node_id, node.log()),
            }
        }
    }

    /// Spawns a node without waiting for it (for configuration tests).
    pub fn spawn(redis: Option<&RedisServer>, prefix: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn_limited(redis, prefix, extra_env, None)
    }

    /// Spawns a standalone node whose open-file limit is `fd_limit` (through
    /// `sh -c 'ulimit -n N; exec node'`, so the node keeps the shell's pid) and
    /// waits until it is ready.
    pub async fn start_with_fd_limit(fd_limit: u32, extra_env: &[(&str, &str)]) -> Self {
        let node = Self::spawn_limited(None, &key_prefix(), extra_env, Some(fd_limit));
        if let Err(e) = node.wait_ready().await {
            panic!("{e}\n--- log of {} ---\n{}", node.node_id, node.log());
        }
        node
    }

    fn spawn_limited(
        redis: Option<&RedisServer>,
        prefix: &str,
        extra_env: &[(&str, &str)],
        fd_limit: Option<u32>,
    ) -> Self {
        let port = free_port();
        let node_id = extra_env
            .iter()
            .find(|(k, _)| *k == "NODE_ID")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| format!("node-{}", &Uuid::new_v4().simple().to_string()[..12]));
        let dir = std::env::temp_dir().join("signal-node-tests");
        fs::create_dir_all(&dir).expect("create log dir");
        let log_path = dir.join(format!("{node_id}-{}.log", Uuid::new_v4().simple()));
        let log = File::create(&log_path).expect("create node log file");

        let binary = env!("CARGO_BIN_EXE_signal-node");
        let mut cmd = match fd_limit {
            None => Command::new(binary),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {limit} && exec \"$0\""), binary]);
                sh
            }
        };
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REDIS_") {
                cmd.env_remove(name);
            }
        }
        for name in CONFIG_VARS {
            cmd.env_remove(name);
        }
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("NODE_ID", &node_id)
            .env("KEY_PREFIX", prefix)
            .env("RUST_LOG", "info");
        if let Some(redis) = redis {
            cmd.env("REDIS_URL", redis.url());
        }
        // `SIGNAL_TEST_NODE_ENV="NAME=value;NAME=value"` adds settings to every node,
        // so a whole suite can run under them (e.g. PAYLOAD_ENCRYPTION_KEY).
        if let Ok(settings) = std::env::var("SIGNAL_TEST_NODE_ENV") {
            for (name, value) in settings.split(';').filter_map(|kv| kv.split_once('=')) {
                cmd.env(name.trim(), value.trim());
            }
        }
        for (name, value) in extra_env {
            cmd.env(name, value);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn signal-node");
        Self {
            port,
            node_id,
            log_path,
            child: Mutex::new(child),
        }
    }

    /// Polls `GET /readyz` until 200; errors if the process exits or time runs out.
    pub async fn wait_ready(&self) -> Result<(), String> {
        self.wait_for_200("/readyz", "ready").await
    }

    /// Polls `GET path` until it answers 200, or the node exits, or READY_TIMEOUT passes.
    async fn wait_for_200(&self, path: &str, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = http_client();
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "node {} exited before {what}: {status}",
                    self.node_id
                ));
            }
            let url = format!("{}{path}", self.http_url());
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {} not {what} within {READY_TIMEOUT:?}",
                    self.node_id
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://.../ws/{room}/{user}`; both are inserted as given (already encoded).
    pub fn ws_url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws/{room}/{user}", self.port)
    }

    /// `GET path` → (status, JSON body). Panics if the body is not JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.http_url());
        let resp = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: reading body failed: {e}"));
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {url} ({status}): body is not JSON ({e}): {text:?}"));
        (status, body)
    }

    /// Sends SIGTERM (through `kill`, so the tests need no libc binding).
    pub fn sigterm(&self) {
        let pid = lock(&self.child).id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits (bounded poll) for the process to exit.
    pub async fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    /// The node's resident set size in KiB (`VmRSS` of `/proc/PID/status`), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    }

    fn try_exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Everything the node wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits (bounded poll) until one log line satisfies `matches`.
    pub async fn wait_for_log_line(
        &self,
        matches: impl Fn(&str) -> bool,
        within: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().lines().any(&matches) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded poll) until the log contains `needle`, case-insensitively.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let needle = needle.to_lowercase();
        self.wait_for_log_line(|line| line.to_lowercase().contains(&needle), within)
            .await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- log of node {} ({}) ---\n{}--- end of log ---",
                self.node_id,
                self.log_path.display(),
                self.log()
            );
        } else {
            let _ = fs::remove_file(&self.log_path);
        }
    }
}

fn http_client() -> reqwest::Client {
    // One client per call: a pooled client must not outlive the runtime of the
    // test that created it.
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------
// Cluster: one test body, both engines
// ---------------------------------------------------------------------------

/// Either one standalone node, or one RedisServer plus `n` nodes sharing a unique
/// KEY_PREFIX.
pub struct Cluster {
    // Nodes are declared first so that they are dropped before their Redis.
    nodes: Vec<TestNode>,
    redis: Option<RedisServer>,
    prefix: String,
}

impl Cluster {
    pub async fn standalone() -> Self {
        Self::standalone_with(&[]).await
    }

    pub async fn standalone_with(extra_env: &[(&str, &str)]) -> Self {
        let prefix = key_prefix();
        let node = TestNode::start(None, &prefix, extra_env).await;
        Self {
            nodes: vec![node],
            redis: None,
            prefix,
        }
    }

    pub async fn redis(n: usize) -> Self {
        Self::redis_with(n, &[]).await
    }

    pub async fn redis_with(n: usize, extra_env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let prefix = key_prefix();
        let nodes = start_nodes(&redis, &prefix, n, extra_env).await;
        Self {
            nodes,
            redis: Some(redis),
            prefix,
        }
    }

    /// Node `i`. Standalone: the only node, whatever `i` is.
    pub fn node(&self, i: usize) -> &TestNode {
        match self.redis {
            None => &self.nodes[0],
            Some(_) => self.nodes.get(i).unwrap_or_else(|| {
                panic!("the cluster has {} nodes, no node({i})", self.nodes.len())
            }),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The cluster's Redis; panics on a standalone cluster.
    pub fn redis_server(&self) -> &RedisServer {
        self.redis.as_ref().expect("this cluster has no Redis")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P room:{room}`
    pub fn room_key(&self, room: &str) -> String {
        format!("{}room:{{{room}}}", self.prefix)
    }

    /// `P user:{user}`
    pub fn user_key(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }
}

/// Starts `n` nodes on one Redis concurrently.
pub async fn start_nodes(
    redis: &RedisServer,
    prefix: &str,
    n: usize,
    extra_env: &[(&str, &str)],
) -> Vec<TestNode> {
    futures::future::join_all((0..n).map(|_| TestNode::start(Some(redis), prefix, extra_env))).await
}

/// Generates `mod $name { standalone, redis }`: the async fn `$body(&Cluster)` runs
/// once on a standalone node and once on a Redis cluster (2 nodes unless `nodes = N`).
/// `env = [("VAR", "value"), ...]` configures every node.
#[allow(unused_macros)] // Only tests/protocol.rs uses it.
macro_rules! both_engines {
    ($name:ident, $body:ident) => {
        both_engines!($name, nodes = 2, env = [], $body);
    };
    ($name:ident, nodes = $n:expr, $body:ident) => {
        both_engines!($name, nodes = $n, env = [], $body);
    };
    ($name:ident, env = [$($kv:expr),* $(,)?], $body:ident) => {
        both_engines!($name, nodes = 2, env = [$($kv),*], $body);
    };
    ($name:ident, nodes = $n:expr, env = [$($kv:expr),* $(,)?], $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                let cluster = $crate::support::Cluster::standalone_with(&[$($kv),*]).await;
                super::$body(&cluster).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let cluster = $crate::support::Cluster::redis_with($n, &[$($kv),*]).await;
                super::$body(&cluster).await;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent, WebSocket ping/pong excluded.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (`None` for a close frame without a code).
    Close(Option<(u16, String)>),
    /// The stream ended or failed without (further) close frame.
    Ended(String),
}

/// A WebSocket client with bounded waits and precise failure messages.
pub struct TestClient {
    ws: Ws,
    /// `user@room` (or the URL), to say which client failed.
    label: String,
}

impl TestClient {
    /// Opens a WebSocket to `url` (the upgrade itself must succeed).
    pub async fn connect(url: &str) -> Self {
        let (ws, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
        Self {
            ws,
            label: url.to_owned(),
        }
    }

    /// Connects `user` to `room` on `node`; returns the client and its first frame,
    /// which must be `room_users`.
    pub async fn connect_join(node: &TestNode, room: &str, user: &str) -> (Self, Value) {
        let mut client = Self::connect(&node.ws_url(room, user)).await;
        client.label = format!("{user}@{room} on {}", node.node_id());
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{}: the first frame must be room_users, got {frame}",
            client.label
        );
        (client, frame)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    /// Sends any WebSocket message, e.g. a hand-built `Message::Frame` (panics on failure).
    pub async fn send_message(&mut self, message: Message) {
        self.send(message).await;
    }

    /// Sends a message, reporting failure (the server may have closed the connection)
    /// instead of panicking. Still bounded by TIMEOUT.
    pub async fn try_send(&mut self, message: Message) -> Result<(), String> {
        match tokio::time::timeout(TIMEOUT, self.ws.send(message)).await {
            Err(_) => Err(format!("{}: send timed out", self.label)),
            Ok(Err(e)) => Err(format!("{}: send failed: {e}", self.label)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn send(&mut self, message: Message) {
        tokio::time::timeout(TIMEOUT, self.ws.send(message))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// The next frame that is not a WebSocket ping/pong, or `None` after `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Event::Ended("stream ended".into()),
                Some(Err(e)) => Event::Ended(format!("error: {e}")),
                Some(Ok(Message::Text(text))) => Event::Text(text.to_string()),
                Some(Ok(Message::Binary(bytes))) => Event::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Event::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next data frame, which must be a JSON text frame (waits up to TIMEOUT).
    pub async fn recv_json(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            None => panic!("{}: no frame within {TIMEOUT:?}", self.label),
            Some(Event::Text(text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: frame is not JSON ({e}): {text:?}", self.label)),
            Some(other) => panic!("{}: expected a JSON text frame, got {other:?}", self.label),
        }
    }

    /// The next frame, which must have `"type": kind`; returns the whole frame.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(
            frame["type"], kind,
            "{}: expected a {kind} frame, got {frame}",
            self.label
        );
        frame
    }

    /// The next frame, which must equal `expected` exactly.
    pub async fn expect_frame(&mut self, expected: &Value) {
        let frame = self.recv_json().await;
        assert!(
            &frame == expected,
            "{}: unexpected frame\n  expected: {expected}\n    actual: {frame}",
            self.label
        );
    }

    /// The next frame, which must be an `error` with `code`; returns its payload.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv_json().await;
        assert_error_frame(&frame, code, &self.label);
        frame["payload"].clone()
    }

    /// The next frame must be an `error` with `code` whose payload has exactly
    /// `code`, `message`, plus `id` and `target` when given (with those values).
    pub async fn expect_error_echo(&mut self, code: &str, id: Option<Value>, target: Option<&str>) {
        let frame = self.recv_json().await;
        if let Some(mismatch) = error_echo_mismatch(&frame, code, id, target) {
            panic!("{}: {mismatch}", self.label);
        }
    }

    /// The next frame must be a close frame with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        match self.next_event(TIMEOUT).await {
            Some(Event::Close(Some((actual, _)))) if actual == code => {}
            None => panic!(
                "{}: expected close {code}, nothing within {TIMEOUT:?}",
                self.label
            ),
            Some(Event::Text(text)) => {
                panic!("{}: expected close {code}, got frame {text}", self.label)
            }
            Some(other) => panic!("{}: expected close {code}, got {other:?}", self.label),
        }
    }

    /// An `error` frame with exactly `code` and `message`, then a close with `close_code`.
    pub async fn expect_error_then_close(&mut self, code: &str, close_code: u16) {
        self.expect_error_echo(code, None, None).await;
        self.expect_close(close_code).await;
    }

    /// Asserts that no data frame (nor close) arrives within `within`. Only for
    /// asserting absence; never use it to wait for something to happen.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(event) = self.next_event(within).await {
            panic!(
                "{}: expected nothing for {within:?}, got {event:?}",
                self.label
            );
        }
    }

    /// Like [`TestClient::expect_silence`], but reading keeps answering the server's
    /// WebSocket pings; returns how many pings arrived within `within`.
    pub async fn expect_silence_counting_pings(&mut self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut pings = 0;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return pings;
            };
            match next {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                other => panic!(
                    "{}: expected nothing but pings for {within:?}, got {other:?}",
                    self.label
                ),
            }
        }
    }

    /// Closes with 1000 and waits (bounded) for the end of the closing handshake.
    /// Frames that were already in flight are discarded.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        tokio::time::timeout(TIMEOUT, self.ws.close(Some(frame)))
            .await
            .unwrap_or_else(|_| panic!("{}: sending close timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: sending close failed: {e}", self.label));
        self.wait_closed().await;
    }

    /// Waits (bounded) until the server ends the connection, discarding frames.
    pub async fn wait_closed(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                None => panic!("{}: connection not closed within {TIMEOUT:?}", self.label),
                Some(Event::Ended(_)) => return,
                Some(_) => {}
            }
        }
    }
}

/// Waits on several clients at once for [`TestClient::expect_silence`].
pub async fn expect_silence_all(clients: &mut [&mut TestClient], within: Duration) {
    futures::future::join_all(clients.iter_mut().map(|c| c.expect_silence(within))).await;
}

// ---------------------------------------------------------------------------
// Frame builders and shape assertions
// ---------------------------------------------------------------------------

/// `{"type":"user_joined","payload":USER}`
pub fn user_joined(user: &Value) -> Value {
    json!({"type": "user_joined", "payload": user})
}

/// `{"type":"user_left","payload":{"user_id","room_id","reason"}}`
pub fn user_left(user: &str, room: &str, reason: &str) -> Value {
    json!({"type": "user_left", "payload": {"user_id": user, "room_id": room, "reason": reason}})
}

/// A relayed frame as the receiver must see it (`target` absent on broadcasts).
pub fn relayed(kind: &str, from: &str, target: Option<&str>, payload: Value) -> Value {
    match target {
        Some(target) => json!({"type": kind, "from": from, "target": target, "payload": payload}),
        None => json!({"type": kind, "from": from, "payload": payload}),
    }
}

/// The keys of a JSON object, sorted.
#[track_caller]
pub fn key_set(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Asserts that `value` is an object with exactly `keys`.
#[track_caller]
pub fn assert_keys(value: &Value, keys: &[&str], context: &str) {
    let expected: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(key_set(value), expected, "{context}: wrong set of keys");
}

/// Asserts a `joined_at`: RFC 3339 UTC with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`),
/// a real instant within the last hour.
#[track_caller]
pub fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("joined_at must be a string, got {value}"));
    let shape_ok = text.len() == 24
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "joined_at {text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("joined_at {text:?} is not RFC 3339: {e}"));
    let age = time::OffsetDateTime::now_utc() - at;
    assert!(
        age > time::Duration::seconds(-60) && age < time::Duration::hours(1),
        "joined_at {text:?} is not a recent instant"
    );
}

/// Asserts a USER object: exactly user_id, room_id, joined_at, role; role `peer`.
#[track_caller]
pub fn assert_user(user: &Value, user_id: &str, room: &str) {
    assert_keys(
        user,
        &["user_id", "room_id", "joined_at", "role"],
        &format!("USER {user}"),
    );
    assert_eq!(user["user_id"], user_id, "USER {user}: user_id");
    assert_eq!(user["room_id"], room, "USER {user}: room_id");
    assert_eq!(user["role"], "peer", "USER {user}: role");
    assert_timestamp(&user["joined_at"]);
}

/// Sorts a JSON array of USER objects by user_id.
#[track_caller]
pub fn sorted_users(users: &Value) -> Vec<Value> {
    let mut list = users
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of USER, got {users}"))
        .clone();
    list.sort_by(|a, b| a["user_id"].as_str().cmp(&b["user_id"].as_str()));
    list
}

/// Asserts a `room_users` frame for `user` in `room` whose `users` are exactly
/// `others` (any order); returns the newcomer's own USER (`self`).
#[track_caller]
pub fn assert_room_users(frame: &Value, room: &str, user: &str, others: &[&Value]) -> Value {
    assert_keys(
        frame,
        &["type", "payload"],
        &format!("room_users frame {frame}"),
    );
    assert_eq!(frame["type"], "room_users");
    let payload = &frame["payload"];
    assert_keys(
        payload,
        &["room_id", "self", "users"],
        &format!("room_users payload {payload}"),
    );
    assert_eq!(payload["room_id"], room, "room_users room_id");
    assert_user(&payload["self"], user, room);
    let users = sorted_users(&payload["users"]);
    for listed in &users {
        let id = listed["user_id"].as_str().unwrap_or_default();
        assert_user(listed, id, room);
    }
    let expected = sorted_users(&Value::Array(others.iter().map(|u| (*u).clone()).collect()));
    assert!(
        users == expected,
        "room_users for {user}: wrong users\n  expected: {}\n    actual: {}",
        Value::Array(expected.clone()),
        Value::Array(users.clone())
    );
    payload["self"].clone()
}

/// Asserts `{"type":"error","payload":{"code":code,"message":"<text>",...}}`.
#[track_caller]
pub fn assert_error_frame(frame: &Value, code: &str, context: &str) {
    assert_keys(
        frame,
        &["type", "payload"],
        &format!("{context}: error frame {frame}"),
    );
    assert_eq!(
        frame["type"], "error",
        "{context}: expected an error frame, got {frame}"
    );
    assert_eq!(
        frame["payload"]["code"], code,
        "{context}: error code in {frame}"
    );
    assert!(
        frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: error message must be a non-empty string in {frame}"
    );
}

/// Compares `frame` with `{"type":"error","payload":{"code","message",["id"],["target"]}}`
/// (any non-empty message); describes the difference, if any.
pub fn error_echo_mismatch(
    frame: &Value,
    code: &str,
    id: Option<Value>,
    target: Option<&str>,
) -> Option<String> {
    let message = &frame["payload"]["message"];
    if message.as_str().is_none_or(str::is_empty) {
        return Some(format!(
            "expected an error frame with a non-empty message, got {frame}"
        ));
    }
    let mut payload = json!({"code": code, "message": message});
    if let Some(id) = id {
        payload["id"] = id;
    }
    if let Some(target) = target {
        payload["target"] = json!(target);
    }
    let expected = json!({"type": "error", "payload": payload});
    (frame != &expected)
        .then(|| format!("unexpected error frame\n  expected: {expected}\n    actual: {frame}"))
}

/// Asserts an HTTP error body `{"error":{"code":code,"message":"<text>"}}`.
#[track_caller]
pub fn assert_http_error(
    status: u16,
    body: &Value,
    expected_status: u16,
    code: &str,
    context: &str,
) {
    assert_eq!(status, expected_status, "{context}: status (body {body})");
    assert_keys(body, &["error"], &format!("{context}: body {body}"));
    assert_keys(
        &body["error"],
        &["code", "message"],
        &format!("{context}: body {body}"),
    );
    assert_eq!(
        body["error"]["code"], code,
        "{context}: error code in {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: error message must be a non-empty string in {body}"
    );
}

/// Asserts `GET /rooms/{room}/users` on `node` lists exactly `users` (any order).
pub async fn assert_rest_members(node: &TestNode, room: &str, users: &[&Value]) {
    let (status, body) = node.get(&format!("/rooms/{room}/users")).await;
    let context = format!("GET /rooms/{room}/users on {}", node.node_id());
    assert_eq!(status, 200, "{context}: status (body {body})");
    assert_keys(
        &body,
        &["room_id", "users", "count"],
        &format!("{context}: body {body}"),
    );
    assert_eq!(body["room_id"], room, "{context}: room_id");
    assert_eq!(body["count"], users.len(), "{context}: count in {body}");
    let actual = sorted_users(&body["users"]);
    let expected = sorted_users(&Value::Array(users.iter().map(|u| (*u).clone()).collect()));
    assert!(
        actual == expected,
        "{context}: wrong users\n  expected: {}\n    actual: {}",
        Value::Array(expected.clone()),
        Value::Array(actual.clone())
    );
}

/// Asserts `GET /users/{user}` on `node` is `user` plus `node_id`.
pub async fn assert_rest_user(node: &TestNode, user: &Value, node_id: &str) {
    let id = user["user_id"].as_str().expect("USER has a user_id");
    let (status, body) = node.get(&format!("/users/{id}")).await;
    let mut expected = user.clone();
    expected["node_id"] = json!(node_id);
    assert_eq!(
        status,
        200,
        "GET /users/{id} on {}: status (body {body})",
        node.node_id()
    );
    assert!(
        body == expected,
        "GET /users/{id} on {}\n  expected: {expected}\n    actual: {body}",
        node.node_id()
    );
}

// ---------------------------------------------------------------------------
// Faults: signals to a node, a freezable TCP proxy, a keyspace watch
// ---------------------------------------------------------------------------

impl TestNode {
    /// Starts a node with the given NODE_ID on `redis` (e.g. a new process that
    /// takes over the id of a killed one) and waits until it is ready.
    pub async fn start_named(
        redis: &RedisServer,
        prefix: &str,
        node_id: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut env: Vec<(&str, &str)> = extra_env.to_vec();
        env.retain(|(k, _)| *k != "NODE_ID");
        env.push(("NODE_ID", node_id));
        Self::start(Some(redis), prefix, &env).await
    }

    /// SIGKILL (no drain, no cleanup), then waits (bounded) until the process is gone.
    pub async fn sigkill(&self) {
        self.signal("KILL");
        if self.wait_exit(TIMEOUT).await.is_none() {
            panic!(
                "node {} still running {TIMEOUT:?} after SIGKILL",
                self.node_id
            );
        }
    }

    /// SIGSTOP, then waits (bounded) until the kernel reports the process stopped.
    pub async fn sigstop(&self) {
        self.signal("STOP");
        let node = self;
        eventually(
            TIMEOUT,
            format!("node {} to be stopped after SIGSTOP", self.node_id),
            move || async move { node.process_state() == Some('T') },
        )
        .await;
    }

    /// SIGCONT, then waits (bounded) until the process is no longer stopped.
    pub async fn sigcont(&self) {
        self.signal("CONT");
        let node = self;
        eventually(
            TIMEOUT,
            format!("node {} to run again after SIGCONT", self.node_id),
            move || async move { node.process_state().is_some_and(|s| s != 'T') },
        )
        .await;
    }

    /// Sends `SIG{name}` through `kill`, so the tests need no libc binding.
    fn signal(&self, name: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{name} {pid} (node {}) failed",
            self.node_id
        );
    }

    /// The state letter of `/proc/PID/stat` (`R`, `S`, `T` for stopped, ...).
    fn process_state(&self) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // `pid (comm) S ...`: comm may hold spaces or parentheses, so split at the last ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }
}

/// A TCP proxy in front of a Redis port. [`TcpProxy::freeze`] makes every
/// connection open at that moment stop forwarding in both directions while both
/// of its sockets stay open (a hung middlebox, a half-dead failover), and lets new
/// connections through normally. Dropping the proxy closes everything.
pub struct TcpProxy {
    port: u16,
    /// One switch per connection accepted so far; `true` freezes it.
    switches: std::sync::Arc<Mutex<Vec<tokio::sync::watch::Sender<bool>>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy local_addr").port();
        let switches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let registry = switches.clone();
        let accept_task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting this task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (switch, frozen) = tokio::sync::watch::channel(false);
                        lock(&registry).push(switch);
                        connections.spawn(proxy_connection(client, upstream_port, frozen));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self {
            port,
            switches,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`, for a node's REDIS_URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes every connection accepted so far; returns how many were still open.
    pub fn freeze(&self) -> usize {
        let switches = lock(&self.switches);
        let open: Vec<_> = switches.iter().filter(|s| !s.is_closed()).collect();
        for switch in &open {
            switch.send_replace(true);
        }
        open.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn proxy_connection(
    mut client: tokio::net::TcpStream,
    upstream_port: u16,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
    else {
        return; // Dropping the client socket refuses it, as a dead upstream would.
    };
    let froze = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
        Ok(_) = frozen.wait_for(|frozen| *frozen) => true,
    };
    if froze {
        // Both sockets stay open and unread until the proxy is dropped.
        std::future::pending::<()>().await;
    }
}

/// Records Redis keyspace notifications for the keys matching a glob, to prove
/// that a key was never written during a window (a poll could miss a brief write).
pub struct KeyspaceWatch {
    /// `(key, event)` in arrival order, e.g. `("p:user:alice", "hset")`.
    events: std::sync::Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyspaceWatch {
    /// Turns keyspace notifications on in `redis` and subscribes to the keys that
    /// match `key_glob` (in db 0); returns once Redis confirmed the subscription.
    pub async fn start(redis: &RedisServer, key_glob: &str) -> Self {
        use tokio::io::AsyncWriteExt;

        redis.cli(&["CONFIG", "SET", "notify-keyspace-events", "KA"]);
        let pattern = format!("__keyspace@0__:{key_glob}");
        let mut stream = tokio::time::timeout(
            TIMEOUT,
            tokio::net::TcpStream::connect(("127.0.0.1", redis.port())),
        )
        .await
        .expect("keyspace watch: connect timed out")
        .expect("keyspace watch: connect failed");
        let command = format!(
            "*2\r\n$10\r\nPSUBSCRIBE\r\n${}\r\n{pattern}\r\n",
            pattern.len()
        );
        tokio::time::timeout(TIMEOUT, stream.write_all(command.as_bytes()))
            .await
            .expect("keyspace watch: sending PSUBSCRIBE timed out")
            .expect("keyspace watch: send PSUBSCRIBE");
        let mut reader = tokio::io::BufReader::new(stream);
        let confirmation = tokio::time::timeout(TIMEOUT, read_resp(&mut reader))
            .await
            .expect("keyspace watch: no PSUBSCRIBE confirmation")
            .expect("keyspace watch: reading the confirmation failed");
        assert_eq!(
            confirmation.first().map(String::as_str),
            Some("psubscribe"),
            "keyspace watch: unexpected reply {confirmation:?}"
        );

        let events = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let prefix = "__keyspace@0__:";
        let task = tokio::spawn(async move {
            while let Ok(message) = read_resp(&mut reader).await {
                if let [kind, _pattern, channel, event] = message.as_slice() {
                    if kind == "pmessage" {
                        let key = channel.strip_prefix(prefix).unwrap_or(channel).to_owned();
                        lock(&sink).push((key, event.clone()));
                    }
                }
            }
        });
        Self { events, task }
    }

    /// Every `(key, event)` seen so far.
    pub fn events(&self) -> Vec<(String, String)> {
        lock(&self.events).clone()
    }
}

impl Drop for KeyspaceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one RESP array of bulk strings and integers (what pub/sub sends) as strings.
async fn read_resp(
    reader: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> std::io::Result<Vec<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    async fn line(
        reader: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    ) -> std::io::Result<String> {
        let mut text = String::new();
        if reader.read_line(&mut text).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(text.trim_end_matches("\r\n").to_owned())
    }
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);

    let header = line(reader).await?;
    let count: usize = header
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(format!("expected a RESP array, got {header:?}")))?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let item = line(reader).await?;
        if let Some(len) = item.strip_prefix('$') {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("bad bulk length {item:?}")))?;
            let mut bytes = vec![0; len + 2];
            reader.read_exact(&mut bytes).await?;
            bytes.truncate(len);
            items.push(String::from_utf8_lossy(&bytes).into_owned());
        } else if let Some(value) = item.strip_prefix(':') {
            items.push(value.to_owned());
        } else {
            return Err(bad(format!("unexpected RESP item {item:?}")));
        }
    }
    Ok(items)
}

/// Connects `user` to `room` on `node` and returns the client and its own USER.
pub async fn join(node: &TestNode, room: &str, user: &str) -> (TestClient, Value) {
    let (client, frame) = TestClient::connect_join(node, room, user).await;
    let me = frame["payload"]["self"].clone();
    assert_user(&me, user, room);
    (client, me)
}

/// Connects alice on node 0 and bob on node 1 into a fresh room; alice has seen bob join.
pub async fn pair(c: &Cluster) -> (String, TestClient, Value, TestClient, Value) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    (room, alice, alice_user, bob, bob_user)
}

// ---------------------------------------------------------------------------
// Security: HTTP and WebSocket requests with headers, TLS, Redis taps
// ---------------------------------------------------------------------------

/// An HTTP reply: status, headers and the body as text.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl HttpReply {
    /// The body as JSON (`Null` when empty); panics naming the body otherwise.
    #[track_caller]
    pub fn json(&self) -> Value {
        if self.text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

impl TestNode {
    /// `METHOD path` with extra `headers` and an optional raw body (sent as
    /// `application/json`); bounded by TIMEOUT.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpReply {
        let url = format!("{}{path}", self.http_url());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = http_client().request(method.clone(), &url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"));
        HttpReply {
            status,
            headers,
            text,
        }
    }

    /// `METHOD path` with `Authorization: Bearer {bearer}` (none when `None`) and an
    /// optional JSON body → (status, JSON body or `Null` when empty).
    pub async fn bearer_request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let body = body.map(Value::to_string);
        let reply = self.request(method, path, &headers, body.as_deref()).await;
        (reply.status, reply.json())
    }

    /// Polls `GET /healthz` until 200 (for nodes that are expected not to become ready).
    pub async fn wait_healthy(&self) -> Result<(), String> {
        self.wait_for_200("/healthz", "healthy").await
    }

    /// The node's exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.try_exit_status()
    }
}

impl TestClient {
    /// Opens a WebSocket to `url` with extra request `headers` (e.g. Origin,
    /// Authorization). `Err((status, body))` when the server answered the upgrade
    /// request with a plain HTTP response; any other failure panics.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        use tokio_tungstenite::tungstenite::Error as WsError;

        let mut request = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"));
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => panic!("timed out connecting to {url}"),
            Ok(Ok((ws, _response))) => Ok(Self {
                ws,
                label: url.to_owned(),
            }),
            Ok(Err(WsError::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
        }
    }

    /// Like [`TestClient::try_connect_with`], but the upgrade must succeed.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)], label: &str) -> Self {
        match Self::try_connect_with(url, headers).await {
            Ok(mut client) => {
                client.label = label.to_owned();
                client
            }
            Err((status, body)) => {
                panic!("{label}: upgrade refused with HTTP {status}: {body}")
            }
        }
    }

    /// Connects to `url` with `headers`; the first frame must be `room_users`,
    /// which is returned.
    pub async fn join_with(url: &str, headers: &[(&str, &str)], label: &str) -> (Self, Value) {
        let mut client = Self::connect_with(url, headers, label).await;
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{label}: the first frame must be room_users, got {frame}"
        );
        (client, frame)
    }

    /// Connects to `url` with `headers`: the upgrade must succeed, then the server
    /// must send exactly one `error` with `code` and close with `close_code`.
    pub async fn expect_rejected(
        url: &str,
        headers: &[(&str, &str)],
        code: &str,
        close_code: u16,
        label: &str,
    ) {
        let mut client = Self::connect_with(url, headers, label).await;
        client.expect_error_then_close(code, close_code).await;
    }
}

/// Asserts a USER object: exactly user_id, room_id, joined_at, role, with `role`.
#[track_caller]
pub fn assert_user_with_role(user: &Value, user_id: &str, room: &str, role: &str) {
    assert_keys(
        user,
        &["user_id", "room_id", "joined_at", "role"],
        &format!("USER {user}"),
    );
    assert_eq!(user["user_id"], user_id, "USER {user}: user_id");
    assert_eq!(user["room_id"], room, "USER {user}: room_id");
    assert_eq!(user["role"], role, "USER {user}: role");
    assert_timestamp(&user["joined_at"]);
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir()
            .join("signal-node-tests")
            .join(format!("d-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory; returns the full path as text.
    pub fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.path.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
pub struct SelfSigned {
    pub cert_der: Vec<u8>,
    pub cert_path: String,
    pub key_path: String,
    _dir: TempDir,
}

impl SelfSigned {
    pub fn generate() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a self-signed certificate");
        let dir = TempDir::new();
        let cert_path = dir.write("cert.pem", certified.cert.pem().as_bytes());
        let key_path = dir.write("key.pem", certified.signing_key.serialize_pem().as_bytes());
        Self {
            cert_der: certified.cert.der().to_vec(),
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// A rustls client configuration that trusts only this certificate.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.cert_der.clone(),
            ))
            .expect("add the self-signed certificate as a root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }
}

/// A blocking TLS stream to `127.0.0.1:port` verified as `localhost`; every read
/// and write is bounded by TIMEOUT.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn tls_connect(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    tcp.set_write_timeout(Some(TIMEOUT))
        .expect("set_write_timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut conn =
        rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS client: {e}"))?;
    let mut tcp = tcp;
    // Complete the handshake now, so that certificate errors surface here.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Blocking `GET path` over TLS (HTTP/1.1, `Connection: close`) → (status, body).
pub fn https_get_blocking(
    port: u16,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    let mut stream = tls_connect(port, config)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write request: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify: keep what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(format!("read response: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A blocking WebSocket client over TLS (tungstenite over rustls), for `wss://`
/// tests without a TLS feature in tokio-tungstenite. Reads are bounded by TIMEOUT.
pub struct BlockingWs {
    ws: tungstenite::WebSocket<TlsStream>,
    label: String,
}

impl BlockingWs {
    /// Connects to `wss://localhost:{port}{path}`.
    pub fn connect(
        port: u16,
        path: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let stream = tls_connect(port, config)?;
        let url = format!("wss://localhost:{port}{path}");
        let (ws, _response) =
            tungstenite::client::client(url.as_str(), stream).map_err(|e| format!("{url}: {e}"))?;
        Ok(Self { ws, label: url })
    }

    pub fn send_json(&mut self, frame: &Value) {
        self.ws
            .send(tungstenite::Message::text(frame.to_string()))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// The next JSON text frame (ping/pong skipped).
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    return serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{}: frame is not JSON ({e}): {text:?}", self.label)
                    })
                }
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                Ok(other) => panic!("{}: expected a JSON text frame, got {other:?}", self.label),
                Err(e) => panic!("{}: no frame (within {TIMEOUT:?}): {e}", self.label),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        // Drain until the server's close arrives or the stream ends (bounded by the read timeout).
        while self.ws.read().is_ok() {}
    }
}

/// A redis-server listening on a plain port (for `redis-cli` and PING) and on a TLS
/// port (for the nodes, `rediss://`). Killed on drop.
pub struct TlsRedis {
    pub server: RedisServer,
    tls_port: u16,
    _cert: SelfSigned,
}

impl TlsRedis {
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://127.0.0.1:TLS_PORT/0#insecure` (self-signed: no verification).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0#insecure", self.tls_port)
    }
}

impl RedisServer {
    /// Starts a redis-server with TLS on a second port. `None` (with the reason on
    /// stderr) when this redis-server was built without TLS.
    pub fn start_tls() -> Option<TlsRedis> {
        let cert = SelfSigned::generate();
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let tls_port = free_port();
            let log = TempDir::new();
            let log_path = log.path().join("redis.log");
            let log_file = File::create(&log_path).expect("create redis log");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--tls-port", &tls_port.to_string()])
                .args(["--tls-cert-file", &cert.cert_path])
                .args(["--tls-key-file", &cert.key_path])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
            match wait_for_pong(port, &mut child) {
                Ok(()) => {
                    return Some(TlsRedis {
                        server: RedisServer {
                            port,
                            child: Mutex::new(Some(child)),
                        },
                        tls_port,
                        _cert: cert,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let output = fs::read_to_string(&log_path).unwrap_or_default();
                    if output.to_lowercase().contains("in use") {
                        last_error = format!("{e}: {output}");
                        continue;
                    }
                    eprintln!("redis-server cannot serve TLS here ({e}):\n{output}");
                    return None;
                }
            }
        }
        panic!("TLS redis-server did not start: {last_error}");
    }
}

impl RedisServer {
    /// Every key matching `pattern` with its type and full content as text
    /// (`GET`, `HGETALL`, `SMEMBERS`, `LRANGE`, `ZRANGE`, `XRANGE`).
    pub fn dump(&self, pattern: &str) -> Vec<(String, String)> {
        self.keys(pattern)
            .into_iter()
            .map(|key| {
                let kind = self.key_type(&key);
                let content = match kind.as_str() {
                    "string" => self.cli(&["GET", &key]),
                    "hash" => self.cli(&["HGETALL", &key]),
                    "set" => self.cli(&["SMEMBERS", &key]),
                    "list" => self.cli(&["LRANGE", &key, "0", "-1"]),
                    "zset" => self.cli(&["ZRANGE", &key, "0", "-1", "WITHSCORES"]),
                    "stream" => self.cli(&["XRANGE", &key, "-", "+"]),
                    _ => String::new(),
                };
                (key, format!("{kind}: {content}"))
            })
            .collect()
    }
}

/// A raw connection to Redis that sent one command (`MONITOR`, `PSUBSCRIBE ...`)
/// and records every byte Redis sends back from then on.
pub struct RedisTap {
    bytes: std::sync::Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisTap {
    /// Sends `command` on a fresh connection to `port`; returns once Redis answered
    /// (the subscription or MONITOR is active from then on).
    pub async fn start(port: u16, command: &[&str]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut stream =
            tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
                .await
                .expect("redis tap: connect timed out")
                .expect("redis tap: connect failed");
        let mut resp = format!("*{}\r\n", command.len());
        for arg in command {
            resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        tokio::time::timeout(TIMEOUT, stream.write_all(resp.as_bytes()))
            .await
            .expect("redis tap: sending the command timed out")
            .expect("redis tap: send the command");
        let bytes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                lock(&sink).extend_from_slice(&buf[..n]);
            }
        });
        let tap = Self { bytes, task };
        let probe = &tap;
        eventually(
            TIMEOUT,
            format!("Redis to answer {command:?}"),
            move || async move { !lock(&probe.bytes).is_empty() },
        )
        .await;
        tap
    }

    /// Everything recorded so far, as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.bytes)).into_owned()
    }

    /// Whether the recorded bytes contain `needle` (byte-exact).
    pub fn contains(&self, needle: &str) -> bool {
        let bytes = lock(&self.bytes);
        let needle = needle.as_bytes();
        !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
    }
}

impl Drop for RedisTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestClient {
    /// Connects like [`TestClient::connect_join`], over a socket whose kernel receive
    /// buffer is only `recv_buffer` bytes: a client that stops reading then backs up
    /// into the server within kilobytes instead of megabytes of loopback buffers.
    pub async fn connect_join_small_buffer(
        node: &TestNode,
        room: &str,
        user: &str,
        recv_buffer: u32,
    ) -> (Self, Value) {
        let url = node.ws_url(room, user);
        let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        socket
            .set_recv_buffer_size(recv_buffer)
            .expect("set SO_RCVBUF");
        let addr: SocketAddr = ([127, 0, 0, 1], node.port()).into();
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        let (ws, _response) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .unwrap_or_else(|_| panic!("timed out upgrading {url}"))
        .unwrap_or_else(|e| panic!("WebSocket upgrade of {url} failed: {e}"));
        let mut client = Self {
            ws,
            label: format!("{user}@{room} on {} (small buffer)", node.node_id()),
        };
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{}: first frame {frame}",
            client.label
        );
        (client, frame)
    }
}
