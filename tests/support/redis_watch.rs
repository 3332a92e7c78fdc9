//! Watching what goes through Redis: keyspace notifications and raw taps
//! (`MONITOR`, `PSUBSCRIBE`).

use std::sync::Mutex;

use super::redis::RedisServer;
use super::util::{eventually, lock, TIMEOUT};

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
