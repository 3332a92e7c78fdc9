//! A private `redis-server` per test, driven through `redis-cli` and raw RESP.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::util::{free_port, lock, POLL};

/// Bound on redis-server answering PING after spawn.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub(super) port: u16,
    pub(super) child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts redis-server (from PATH) and waits until it answers PING.
    pub fn start() -> Self {
        start_with_retries("redis-server", redis_command)
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

/// A plain private redis-server on `port`, without persistence.
fn redis_command(port: u16) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    command
}

/// Starts what `command` builds for a free port (three tries, in case another
/// process took the port first) and waits until it answers PING; `what` names it
/// in the panic.
pub(super) fn start_with_retries(what: &str, command: impl Fn(u16) -> Command) -> RedisServer {
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = free_port();
        let mut child = spawn(what, command(port));
        match wait_for_pong(port, &mut child) {
            Ok(()) => {
                return RedisServer {
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
    panic!("the {what} did not start: {last_error}");
}

fn spawn_redis(port: u16) -> Child {
    spawn("redis-server", redis_command(port))
}

fn spawn(what: &str, mut command: Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run the {what}: {e}; install redis-server and put it on PATH (e.g. apt-get install redis-server)")
        })
}

pub(super) fn wait_for_pong(port: u16, child: &mut Child) -> Result<(), String> {
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
