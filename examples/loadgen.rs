//! Load generator for a running cluster: relay throughput and latency between
//! nodes, and memory per idle connection. Numbers go into README.md; nothing here
//! is a test.
//!
//! ```sh
//! cargo run --release --example loadgen -- relay ws://127.0.0.1:8001 ws://127.0.0.1:8002 PAIRS MESSAGES [RATE]
//! cargo run --release --example loadgen -- idle ws://127.0.0.1:8001 CONNECTIONS NODE_PID
//! ```
//! `relay`: PAIRS senders on the first node each send MESSAGES messages (as fast as
//! the server takes them, or RATE per second) to a partner on the second node;
//! prints messages/s and latency percentiles (send to receive, in this process).
//! `idle`: opens CONNECTIONS sessions (20 per room) and prints the node's RSS
//! growth per connection, read from /proc.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(base: &str, room: &str, user: &str) -> Ws {
    let url = format!("{base}/ws/{room}/{user}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    // The first frame is room_users.
    let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    ws
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn relay(a: String, b: String, pairs: usize, messages: usize, rate: Option<u64>) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    let start = Instant::now();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    for p in 0..pairs {
        let room = format!("load-{}-{p}", &run[..8]);
        // User ids are cluster-wide: one pair's ids must not replace another's.
        let (rx, tx) = (format!("rx{p}"), format!("tx{p}"));
        let mut receiver = join(&b, &room, &rx).await;
        let mut sender = join(&a, &room, &tx).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), receiver.next()).await; // user_joined(tx)
        let epoch = start;
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = go.changed().await;
            let send = async {
                let mut pace = rate.map(|r| tokio::time::interval(Duration::from_micros(1_000_000 / r.max(1))));
                for i in 0..messages {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    let micros = epoch.elapsed().as_micros();
                    let frame = format!(
                        r#"{{"type":"ice_candidate","target":"{rx}","payload":{{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host","sdpMid":"0","sdpMLineIndex":0,"i":{i},"t":{micros}}}}}"#
                    );
                    sender.send(Message::text(frame)).await.expect("send");
                }
                sender
            };
            let receive = async {
                let mut latencies = Vec::with_capacity(messages);
                while latencies.len() < messages {
                    let t = match tokio::time::timeout(Duration::from_secs(30), receiver.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(_))) => continue, // the server's WebSocket pings
                        _ => break,
                    };
                    if let Some(pos) = t.find(r#""t":"#) {
                        let digits: String = t[pos + 4..].chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(sent) = digits.parse::<u128>() {
                            latencies.push(epoch.elapsed().as_micros().saturating_sub(sent) as u64);
                        }
                    }
                }
                latencies
            };
            let (_sender, latencies) = tokio::join!(send, receive);
            latencies
        }));
    }
    let sending = Instant::now();
    go_tx.send(true).expect("start");
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("pair task"));
    }
    let elapsed = sending.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "relay: {pairs} pairs x {messages} messages ({}): {} delivered in {:.2}s = {:.0} msg/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        rate.map_or("as fast as possible".to_owned(), |r| format!("{r}/s per pair")),
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
}

async fn idle(base: String, connections: usize, pid: String) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let before = rss_kib(&pid);
    let mut open = Vec::with_capacity(connections);
    for i in 0..connections {
        open.push(
            join(
                &base,
                &format!("idle-{}-{}", &run[..8], i / 20),
                &format!("u{i}"),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let the node settle before reading RSS
    let after = rss_kib(&pid);
    println!(
        "idle: {connections} sessions: node RSS {before} KiB -> {after} KiB = {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / connections as f64
    );
    drop(open);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["relay", a, b, pairs, messages, rest @ ..] => {
            let rate = rest.first().map(|r| r.parse().expect("RATE"));
            relay(
                a.to_string(),
                b.to_string(),
                pairs.parse().expect("PAIRS"),
                messages.parse().expect("MESSAGES"),
                rate,
            )
            .await
        }
        ["idle", base, n, pid] => {
            idle(
                base.to_string(),
                n.parse().expect("CONNECTIONS"),
                pid.to_string(),
            )
            .await
        }
        _ => eprintln!(
            "usage: loadgen relay WS_A WS_B PAIRS MESSAGES | loadgen idle WS CONNECTIONS NODE_PID"
        ),
    }
}
