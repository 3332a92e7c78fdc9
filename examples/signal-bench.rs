//! `signal-bench`: the load tool of the benchmarks (README "Measured numbers",
//! issue 13). It speaks the core protocol only, so it drives this server and the
//! Node.js reference alike. Progress goes to stderr, one JSON object to stdout.
//!
//! ```sh
//! cargo run --release --example signal-bench -- relay --a ws://127.0.0.1:8001 --b ws://127.0.0.1:8002
//! cargo run --release --example signal-bench -- fanout --url ws://127.0.0.1:8001 --url ws://127.0.0.1:8002
//! cargo run --release --example signal-bench -- conns --url ws://127.0.0.1:8001 --connections 5000 --pid 1234
//! ```
//!
//! - `relay`: pairs (sender on A, receiver on B) each send `--messages` frames of
//!   `--size` bytes with at most `--in-flight` unreceived, or at `--rate` per pair
//!   (open loop); throughput and send-to-receive latency percentiles.
//! - `fanout`: rooms of `--members` spread over the URLs, every member broadcasting;
//!   deliveries per second.
//! - `conns`: `--connections` joins, `--in-flight` at a time (rooms of 20): joins per
//!   second, join latency, then the node's RSS per idle connection (`--pid`).
//!
//! `--pids` lists processes (nodes, Redis) whose CPU seconds during the run are
//! reported from /proc. Sockets come from `--sources` addresses 127.0.0.1, .2, ...
//! so that local ports do not run out first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Longest wait for one frame before a run is declared stuck.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "signal-bench",
    about = "Load tool for signal-node and the Node.js reference"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// Processes whose CPU seconds during the run are reported (comma list of pids)
    #[arg(long, global = true, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Local source addresses 127.0.0.1 .. 127.0.0.N to spread sockets over
    #[arg(long, global = true, default_value_t = 4)]
    sources: u8,
    /// A label copied into the JSON (e.g. the system under test)
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Scenario {
    /// Cross-node directed relay between pairs
    Relay {
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: String,
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Frame size in bytes (the payload is padded to it)
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Most frames sent and not yet received, per pair (closed loop)
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Frames per second per pair (open loop); overrides --in-flight
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Broadcasts in rooms spread over the nodes
    Fanout {
        #[arg(long, required = true)]
        url: Vec<String>,
        #[arg(long, default_value_t = 20)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        members: usize,
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
    },
    /// Joins, then idle connections
    Conns {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// The node whose RSS per idle connection is measured
        #[arg(long)]
        pid: Option<u32>,
    },
}

/// CPU seconds (user + system) of `pid` so far; 0 when it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The load tool's own CPU microseconds per unit since `before` (its CPU seconds
/// then), reported apart from the server's: on a 2-core box it shows when the
/// tool, not the server, is the ceiling.
fn tool_cpu(before: f64, units: usize) -> f64 {
    (cpu_seconds(std::process::id()) - before) * 1e6 / units.max(1) as f64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens `base/ws/room/user` from source address 127.0.0.`source` and reads the
/// first frame (`room_users`).
async fn join(base: &str, room: &str, user: &str, source: u8) -> Result<Ws, String> {
    let url = format!("{base}/ws/{room}/{user}");
    let authority = base
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{base}: only ws:// URLs"))?;
    let addr: std::net::SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, source.max(1)], 0)))
        .map_err(|e| format!("bind 127.0.0.{source}: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    // As browsers do: small frames go out at once, for either server.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(&url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("room_users") => Ok(ws),
        other => Err(format!("{url}: no room_users: {other:?}")),
    }
}

/// tungstenite's defaults allocate and zero a 128 KiB read buffer per socket: in
/// `conns` that was most of the tool's own CPU per join, taken from the server
/// under test on a 2-core box. Signaling frames are small; a larger one still
/// grows the buffer.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// The next text frame (skipping pings); `None` on timeout or end.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Percentiles (ms) of microsecond samples.
fn percentiles(mut samples: Vec<u64>) -> Value {
    samples.sort_unstable();
    let pick = |p: f64| {
        let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
        samples.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    json!({"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": pick(1.0), "samples": samples.len()})
}

/// The `"t":` timestamp (microseconds since the run's epoch) in a frame.
fn stamp(text: &str) -> Option<u128> {
    let at = text.find(r#""t":"#)? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

struct Relay {
    pairs: usize,
    messages: usize,
    size: usize,
    in_flight: usize,
    rate: Option<u64>,
}

async fn relay(a: &str, b: &str, r: Relay, common: &Common) -> Result<Value, String> {
    let run = run_id();
    let epoch = Instant::now();
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for p in 0..r.pairs {
        let room = format!("bench-{run}-{p}");
        let (rx, tx) = (format!("rx{run}{p}"), format!("tx{run}{p}"));
        let source = (p % usize::from(common.sources.max(1))) as u8 + 1;
        let mut receiver = join(b, &room, &rx, source).await?;
        let mut sender = join(a, &room, &tx, source).await?;
        next_text(&mut receiver).await; // user_joined(tx)
        let window = Arc::new(tokio::sync::Semaphore::new(r.in_flight.max(1)));
        let mut ready = ready.clone();
        let (messages, size, rate) = (r.messages, r.size, r.rate);
        tasks.push(tokio::spawn(async move {
            let _ = ready.changed().await;
            let credit = window.clone();
            let send = async move {
                let mut pace = rate
                    .map(|r| tokio::time::interval(Duration::from_micros(1_000_000 / r.max(1))));
                for i in 0..messages {
                    match pace.as_mut() {
                        Some(pace) => {
                            pace.tick().await;
                        }
                        None => match credit.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        },
                    }
                    let t = epoch.elapsed().as_micros();
                    let head = format!(
                        r#"{{"type":"message","target":"{rx}","payload":{{"i":{i},"t":{t},"pad":""#
                    );
                    let pad = size.saturating_sub(head.len() + 3);
                    let frame = format!("{head}{}\"}}}}", "x".repeat(pad));
                    if sender.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                }
                sender
            };
            let receive = async move {
                let mut latencies = Vec::with_capacity(messages);
                while latencies.len() < messages {
                    let Some(text) = next_text(&mut receiver).await else {
                        break;
                    };
                    if let Some(sent) = stamp(&text) {
                        latencies.push(epoch.elapsed().as_micros().saturating_sub(sent) as u64);
                        window.add_permits(1);
                    }
                }
                latencies
            };
            let (_sender, latencies) = tokio::join!(send, receive);
            latencies
        }));
    }
    eprintln!("relay: {} pairs joined; sending", r.pairs);
    let cpu_before: Vec<f64> = common.pids.iter().map(|p| cpu_seconds(*p)).collect();
    let tool_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let _ = go.send(true);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let delivered = latencies.len();
    Ok(json!({
        "scenario": "relay",
        "pairs": r.pairs, "messages_per_pair": r.messages, "size": r.size,
        "in_flight": r.in_flight, "rate_per_pair": r.rate,
        "delivered": delivered, "expected": r.pairs * r.messages,
        "seconds": seconds, "per_second": delivered as f64 / seconds,
        "latency_ms": percentiles(latencies),
        "cpu": cpu_report(common, &cpu_before, delivered),
        "tool_cpu_us_per_unit": tool_cpu(tool_before, delivered),
    }))
}

/// CPU seconds per watched process during the run, and microseconds per unit.
fn cpu_report(common: &Common, before: &[f64], units: usize) -> Value {
    let per: Vec<Value> = common
        .pids
        .iter()
        .zip(before)
        .map(|(pid, b)| {
            let used = cpu_seconds(*pid) - b;
            json!({"pid": pid, "seconds": used, "us_per_unit": used * 1e6 / units.max(1) as f64})
        })
        .collect();
    Value::Array(per)
}

async fn fanout(
    urls: &[String],
    rooms: usize,
    members: usize,
    messages: usize,
    common: &Common,
) -> Result<Value, String> {
    let run = run_id();
    let delivered = Arc::new(AtomicUsize::new(0));
    let expected = rooms * members * members.saturating_sub(1) * messages;
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for r in 0..rooms {
        let room = format!("fan-{run}-{r}");
        let mut sockets = Vec::new();
        for m in 0..members {
            let url = &urls[(r + m) % urls.len()];
            let source = (m % usize::from(common.sources.max(1))) as u8 + 1;
            sockets.push(join(url, &room, &format!("m{run}{r}x{m}"), source).await?);
        }
        // Everyone's user_joined of the later members.
        for (m, ws) in sockets.iter_mut().enumerate() {
            for _ in m + 1..members {
                next_text(ws).await;
            }
        }
        for ws in sockets {
            let (delivered, mut ready) = (delivered.clone(), ready.clone());
            let others = members - 1;
            tasks.push(tokio::spawn(async move {
                let _ = ready.changed().await;
                let (mut sink, mut stream) = ws.split();
                let send = async move {
                    for i in 0..messages {
                        let frame = format!(r#"{{"type":"broadcast","payload":{{"i":{i}}}}}"#);
                        if sink.send(Message::text(frame)).await.is_err() {
                            break;
                        }
                    }
                    sink
                };
                let receive = async move {
                    let mut got = 0;
                    while got < others * messages {
                        match tokio::time::timeout(FRAME_TIMEOUT, stream.next()).await {
                            Ok(Some(Ok(Message::Text(_)))) => {
                                got += 1;
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                    }
                };
                let _ = tokio::join!(send, receive);
            }));
        }
    }
    eprintln!("fanout: {rooms} rooms of {members} joined; broadcasting");
    let cpu_before: Vec<f64> = common.pids.iter().map(|p| cpu_seconds(*p)).collect();
    let tool_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let _ = go.send(true);
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let got = delivered.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "fanout", "rooms": rooms, "members": members, "messages_per_member": messages,
        "delivered": got, "expected": expected, "seconds": seconds, "per_second": got as f64 / seconds,
        "cpu": cpu_report(common, &cpu_before, got),
        "tool_cpu_us_per_unit": tool_cpu(tool_before, got),
    }))
}

async fn conns(
    url: &str,
    connections: usize,
    in_flight: usize,
    pid: Option<u32>,
    common: &Common,
) -> Result<Value, String> {
    let run = run_id();
    let rss_before = pid.map(rss_kib);
    let cpu_before: Vec<f64> = common.pids.iter().map(|p| cpu_seconds(*p)).collect();
    let tool_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let window = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let permit = window
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (url, room, user) = (
            url.to_owned(),
            format!("conn-{run}-{}", i / 20),
            format!("c{run}x{i}"),
        );
        let source = (i % usize::from(common.sources.max(1))) as u8 + 1;
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let ws = join(&url, &room, &user, source).await;
            drop(permit);
            ws.map(|ws| (ws, at.elapsed().as_micros() as u64))
        }));
        if (i + 1) % 1000 == 0 {
            eprintln!("conns: {} opened", i + 1);
        }
    }
    let mut open = Vec::with_capacity(connections);
    let mut latencies = Vec::with_capacity(connections);
    for task in tasks {
        let (ws, micros) = task.await.map_err(|e| e.to_string())??;
        open.push(ws);
        latencies.push(micros);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_report(common, &cpu_before, connections);
    let tool = tool_cpu(tool_before, connections);
    // Idle: let the node settle (its upkeep, the joins' tasks ending) before RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = pid.map(rss_kib);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / connections as f64),
        _ => None,
    };
    drop(open);
    Ok(json!({
        "scenario": "conns", "connections": connections, "in_flight": in_flight,
        "seconds": seconds, "per_second": connections as f64 / seconds,
        "join_ms": percentiles(latencies),
        "rss_kib": {"before": rss_before, "after": rss_after, "per_connection": per_conn},
        "cpu": cpu,
        "tool_cpu_us_per_unit": tool,
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    let result = match cli.scenario {
        Scenario::Relay {
            a,
            b,
            pairs,
            messages,
            size,
            in_flight,
            rate,
        } => {
            relay(
                &a,
                &b,
                Relay {
                    pairs,
                    messages,
                    size,
                    in_flight,
                    rate,
                },
                &common,
            )
            .await
        }
        Scenario::Fanout {
            url,
            rooms,
            members,
            messages,
        } => fanout(&url, rooms, members.max(2), messages, &common).await,
        Scenario::Conns {
            url,
            connections,
            in_flight,
            pid,
        } => conns(&url, connections, in_flight, pid, &common).await,
    };
    match result {
        Ok(mut value) => {
            value["label"] = json!(common.label);
            println!("{value}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("signal-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
