//! Continuous traffic between two members while the tests break Redis under them
//! (a Sentinel or Redis Cluster failover, a slot migration): each side sends
//! numbered probes, learns every probe's outcome (accepted, or the error codes it
//! got) from a barrier ping, and records what the peer's probes brought. From the
//! logs a test tells how long delivery stopped and which accepted probes never
//! arrived (lost). Also: joining the way a client retries a refusal, and running a
//! node that must refuse its settings at startup.

use std::fs::File;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::assert::{assert_error_frame, error_echo_mismatch};
use super::client::{Event, TestClient};
use super::node::TestNode;
use super::util::{free_port, TempDir};

/// Bound on one probe's outcome (its error or nothing, then the barrier's pong)
/// while Redis heals: a command may wait for the node's Redis timeout.
pub const PROBE_OUTCOME: Duration = Duration::from_secs(10);
/// Client pacing between two probes (not a synchronisation).
pub const PROBE_PACE: Duration = Duration::from_millis(50);
/// Bound on a refused node exiting.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client's traffic task saw.
#[derive(Debug, Default)]
pub struct TrafficLog {
    /// Outcome of every probe sent, in order (probe `n` at `n - 1`): `accepted`
    /// or the error codes.
    pub outcomes: Vec<String>,
    /// Probes received from the peer: (number, sent after the kill, arrival).
    pub received: Vec<(u64, bool, Instant)>,
    /// Unexpected frames, or the end of the connection.
    pub failures: Vec<String>,
}

impl TrafficLog {
    /// When the first probe sent after the fault arrived.
    pub fn first_after_kill(&self) -> Option<Instant> {
        self.received
            .iter()
            .filter(|(_, after_kill, _)| *after_kill)
            .map(|(_, _, at)| *at)
            .min()
    }

    /// The numbers of the probes this side sent that were accepted (no error)
    /// but that `peer` never received: lost.
    pub fn lost_by(&self, peer: &TrafficLog) -> Vec<u64> {
        let received: std::collections::HashSet<u64> =
            peer.received.iter().map(|(n, _, _)| *n).collect();
        (1u64..)
            .zip(&self.outcomes)
            .filter(|(n, outcome)| outcome.as_str() == "accepted" && !received.contains(n))
            .map(|(n, _)| n)
            .collect()
    }

    /// How many probes got an error (their senders know they were not delivered).
    pub fn refused(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.as_str() != "accepted")
            .count()
    }

    /// Whether the peer's probes arrived in the order they were sent.
    pub fn in_order(&self) -> bool {
        self.received.windows(2).all(|w| w[0].0 < w[1].0)
    }

    pub fn summary(&self) -> String {
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
pub fn runs(items: &[String]) -> String {
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

pub fn is_probe_from(frame: &Value, from: &str, to: &str) -> bool {
    frame["type"] == "message"
        && frame["from"] == from
        && frame["target"] == to
        && frame["payload"]["probe"].is_u64()
}

/// An error a sender may get for a message to `target` while Redis fails over:
/// `unavailable`, or `target_not_found` (the target's node has not re-registered
/// or resubscribed it yet).
pub fn is_healing_error(frame: &Value, target: &str) -> bool {
    ["unavailable", "target_not_found"]
        .iter()
        .any(|code| error_echo_mismatch(frame, code, None, Some(target)).is_none())
}

pub fn lock_log(log: &Mutex<TrafficLog>) -> std::sync::MutexGuard<'_, TrafficLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Continuous traffic from one client: a probe message to `peer`, then a barrier
/// ping whose pong says every outcome of the probe was written; probes from the
/// peer are recorded as they arrive. Runs until `stop`, or until the connection
/// ends; returns the client.
pub async fn run_traffic(
    mut client: TestClient,
    me: String,
    peer: String,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TrafficLog>>,
) -> TestClient {
    let mut n = 0u64;
    'probes: while !stop.load(Ordering::SeqCst) {
        n += 1;
        let after_kill = killed.load(Ordering::SeqCst);
        let probe = json!({"type": "message", "target": &peer,
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
            if is_probe_from(&frame, &peer, &me) {
                let number = frame["payload"]["probe"].as_u64().unwrap_or_default();
                let sent_after_kill = frame["payload"]["after_kill"] == json!(true);
                lock_log(&log)
                    .received
                    .push((number, sent_after_kill, Instant::now()));
            } else if is_healing_error(&frame, &peer) {
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

/// Polls the traffic logs until `done` holds for all, or panics (with every
/// summary) at `deadline` or as soon as a log records a failure.
pub async fn wait_traffic(
    logs: &[(&str, &Mutex<TrafficLog>)],
    deadline: Instant,
    what: &str,
    done: impl Fn(&TrafficLog) -> bool,
) {
    loop {
        let problem = {
            let guards: Vec<_> = logs
                .iter()
                .map(|(who, log)| (*who, lock_log(log)))
                .collect();
            let state: String = guards
                .iter()
                .map(|(who, log)| format!("\n  {who}: {}", log.summary()))
                .collect();
            if guards.iter().any(|(_, log)| !log.failures.is_empty()) {
                Some(format!("traffic failed while waiting for {what}{state}"))
            } else if guards.iter().all(|(_, log)| done(log)) {
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
pub async fn next_skipping_probes(
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
pub async fn join_retrying(
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

/// Runs the node binary with exactly `env` (plus HOST and a free PORT); it must exit
/// (bounded wait). Returns its status, stderr and stdout.
pub fn run_node_expecting_exit(env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    run_command_expecting_exit(&[], env)
}

/// [`run_node_expecting_exit`] with command-line arguments (a subcommand, flags).
pub fn run_command_expecting_exit(
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String, String) {
    let dir = TempDir::new();
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_signal-node"))
        .args(args)
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
pub fn assert_refused(env: &[(&str, &str)], var: &str) {
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
