//! `signal-node` processes: spawn with a clean environment, readiness, logs,
//! signals (TERM, KILL, STOP, CONT) and process state.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::http::http_client;
use super::redis::RedisServer;
use super::util::{eventually, free_port, key_prefix, lock, POLL, TIMEOUT};

/// Bound on a node becoming ready after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every setting of the node (PROTOCOL.md section 10, README "Configuration"):
/// removed from a node's environment so that the parent's settings never leak into
/// a test, and what `signal-node --help` must list (tests/cli.rs).
pub const CONFIG_VARS: &[&str] = &[
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
    "RATE_LIMIT_BYTES_PER_SECOND",
    "RATE_LIMIT_BYTES_BURST",
    "ALERT_CONNECTION_SPIKE",
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
    "RESUME_GRACE_SECONDS",
    "RESUME_BUFFER_MESSAGES",
    "REDIS_MODE",
    "REDIS_SENTINEL_MASTER",
    "ICE_SERVERS",
    "TURN_URLS",
    "TURN_SECRET",
    "TURN_TTL_SECONDS",
];

/// `RESUME_GRACE_SECONDS` of every spawned node unless `SIGNAL_TEST_NODE_ENV` or the
/// test's `extra_env` sets it: resume off, so that the suites written before resume
/// keep testing what PROTOCOL.md section 11 says grace 0 preserves exactly (a drop is
/// a leave at once). The resume tests set their grace explicitly.
pub const DEFAULT_TEST_RESUME_GRACE: &str = "0";

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
    /// override anything (including the harness's `RESUME_GRACE_SECONDS=0`).
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
            .env("RUST_LOG", "info")
            .env("RESUME_GRACE_SECONDS", DEFAULT_TEST_RESUME_GRACE);
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

    /// Polls `GET /healthz` until 200 (for nodes that are expected not to become ready).
    pub async fn wait_healthy(&self) -> Result<(), String> {
        self.wait_for_200("/healthz", "healthy").await
    }

    /// The node's exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.try_exit_status()
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
            if std::env::var_os("SIGNAL_TEST_KEEP_LOGS").is_none() {
                let _ = fs::remove_file(&self.log_path);
            }
        }
    }
}

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
