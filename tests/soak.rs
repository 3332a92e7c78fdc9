//! Soak: three nodes, about a thousand connections, a minute of churn (joins,
//! leaves, replaced users, clients killed in the middle of a frame) around members
//! that stay connected and keep messaging each other, plus a fourth node that only
//! churners use, SIGKILLed half-way and restarted at once with the same `NODE_ID`.
//! At the end Redis holds exactly the live users and rooms (the killed run's
//! members evicted, the new run's never), and no directed message between two
//! members that stayed connected was lost or reordered (PROTOCOL.md section 5).
//!
//! A second run (`churn_with_resumes_loses_nothing`) does the same with resume on
//! (PROTOCOL.md section 11): every `SOAK_RESUME_SECONDS` on average (default 10)
//! each member that stays dies in the middle of a frame and resumes on a random
//! node, and still nothing sent to it is lost, repeated or reordered, its `seq` has
//! no gap, and its room hears nothing.
//!
//! `SOAK_SECONDS` sets the churn phase (default 60); `SOAK_ROOMS` the number of
//! rooms (default 100, ten users each: six stay, four churn).
//!
//! Ignored by default so a plain `cargo test` stays quick; `.ci/run` runs it on its
//! own with `cargo test --locked --test soak -- --ignored`.

#[macro_use]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const STABLE_PER_ROOM: usize = 6;
const CHURN_PER_ROOM: usize = 4;
/// How long the stable members may take to receive everything once sending stops.
const DRAIN: Duration = Duration::from_secs(20);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

async fn connect(url: &str) -> Option<Ws> {
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .ok()?
        .ok()?;
    Some(ws)
}

/// Reads until `room_users`; `None` if the connection ends first.
async fn await_room_users(ws: &mut Ws) -> Option<()> {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next()).await.ok()??.ok()?;
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).ok()?;
            return (v["type"] == "room_users").then_some(());
        }
    }
}

/// What a stable member saw: per sender, the sequence numbers in arrival order,
/// plus any error frame it got.
#[derive(Default)]
struct Received {
    seqs: HashMap<String, Vec<u64>>,
    errors: Vec<Value>,
    /// Resumes of a member that resumes ([`resuming_member`]).
    resumes: usize,
}

/// The run's phases and tallies, shared by every stable member.
#[derive(Clone)]
struct Phases {
    /// Every stable member has joined: sending may start.
    start: watch::Receiver<bool>,
    /// Churn is over: sending stops.
    stop: watch::Receiver<bool>,
    /// Everything has been received: members hang up and report.
    done: watch::Receiver<bool>,
    sent_total: Arc<AtomicU64>,
    received_total: Arc<AtomicU64>,
}

/// A member that stays for the whole run: between `start` and `stop` it sends
/// `message` frames with a per-target sequence number to random stable peers in its
/// room, and it records everything it receives until `done`.
async fn stable_member(
    mut ws: Ws,
    me: String,
    peers: Vec<String>,
    seed: u64,
    mut phases: Phases,
) -> (HashMap<String, u64>, Received) {
    let mut rng = Rng(seed | 1);
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut received = Received::default();
    let mut tick = tokio::time::interval(Duration::from_millis(400 + rng.below(400)));
    let mut sending = false;
    let mut started = false;
    let (sent_total, received_total) = (phases.sent_total.clone(), phases.received_total.clone());
    loop {
        tokio::select! {
            // `done` first, as in the loop below: the `user_left` of a peer that
            // closed after `done` must not count.
            biased;
            _ = phases.done.changed() => break,
            _ = phases.start.changed(), if !started => {
                started = true;
                sending = !*phases.stop.borrow();
            }
            _ = tick.tick(), if sending => {
                let target = peers[rng.below(peers.len() as u64) as usize].clone();
                let seq = sent.entry(target.clone()).or_insert(0);
                *seq += 1;
                let frame = json!({"type": "message", "target": target, "payload": {"seq": *seq, "from": me}});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    received.errors.push(json!({"local": "send failed"}));
                    break;
                }
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            _ = phases.stop.changed(), if sending => sending = false,
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else {
                    received.errors.push(json!({"local": "connection ended"}));
                    break;
                };
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["type"].as_str() {
                    Some("message") => {
                        let from = v["from"].as_str().unwrap_or_default().to_owned();
                        if let Some(seq) = v["payload"]["seq"].as_u64() {
                            if peers.contains(&from) {
                                received.seqs.entry(from).or_default().push(seq);
                                received_total.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Some("error") => received.errors.push(v),
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    (sent, received)
}

/// The stable peers a resuming member must still see join once (those after it in
/// the room's joining order), and the peers themselves.
struct Peers {
    all: Vec<String>,
    joining: BTreeSet<String>,
}

/// Records one frame a resuming member received: a stable peer's numbered message,
/// or a fault (an error, a stable peer leaving, or joining other than once at the
/// start: its room must hear nothing of the resumes).
fn record(v: &Value, peers: &mut Peers, received: &mut Received, total: &AtomicU64) {
    let about = v["payload"]["user_id"].as_str().unwrap_or_default();
    if v["type"] == "user_joined" && peers.joining.remove(about) {
        return;
    }
    let peers = &peers.all;
    match v["type"].as_str() {
        Some("message") => {
            let from = v["from"].as_str().unwrap_or_default().to_owned();
            if let Some(seq) = v["payload"]["seq"].as_u64() {
                if peers.contains(&from) {
                    received.seqs.entry(from).or_default().push(seq);
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Some("error") => received.errors.push(v.clone()),
        Some("user_left" | "user_joined") if peers.iter().any(|p| p == about) => {
            received.errors.push(v.clone());
        }
        _ => {}
    }
}

/// Dies in the middle of a frame and resumes on a random node of `bases` after up
/// to half a second. A ping barrier first: once its pong is back, the node has read
/// everything this member sent, so nothing it sent may be lost either.
async fn kill_and_resume(
    client: &mut ResumingClient,
    bases: &[String],
    rng: &mut Rng,
    peers: &mut Peers,
    received: &mut Received,
    total: &AtomicU64,
) -> Result<(), String> {
    let nonce = json!(format!("barrier-{}", rng.next()));
    client
        .try_send_json(json!({"type": "ping", "payload": &nonce}))
        .await?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match client
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            None => return Err(format!("no pong within {TIMEOUT:?}")),
            Some(Incoming::Frame(v)) if v == json!({"type": "pong", "payload": &nonce}) => break,
            Some(Incoming::Frame(v)) => record(&v, peers, received, total),
            Some(other) => return Err(format!("{other:?} while waiting for the pong")),
        }
    }
    let conn = client.take_connection().ok_or("not connected")?;
    let dropped_at = Instant::now();
    conn.drop_mid_frame().await;
    // Away for a moment while the peers keep sending: the fault itself.
    tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
    let mut refusals = Vec::new();
    for _attempt in 0..5 {
        let base = &bases[rng.below(bases.len() as u64) as usize];
        let last_seq = client.last_seq();
        match client.try_resume_at(base, last_seq).await {
            Ok(frame) if frame["payload"]["session"]["resumed"] == true => return Ok(()),
            Ok(frame) => {
                return Err(format!(
                    "the resume {:?} after the drop became an ordinary join: {frame}",
                    dropped_at.elapsed()
                ))
            }
            Err(e) => refusals.push(format!("{e} ({:?} after the drop)", dropped_at.elapsed())),
        }
        // Client backoff between attempts; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no node resumed the session: {refusals:?}"))
}

/// Like [`stable_member`], but every half to one and a half `SOAK_RESUME_SECONDS`
/// (while sending) the member dies in the
/// middle of a frame and resumes elsewhere ([`kill_and_resume`]); its `seq` gaps or
/// repeats and any ordinary join count as errors.
async fn resuming_member(
    mut client: ResumingClient,
    me: String,
    mut peers: Peers,
    bases: Vec<String>,
    seed: u64,
    mut phases: Phases,
) -> (HashMap<String, u64>, Received) {
    let mut rng = Rng(seed | 1);
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut received = Received::default();
    let mut tick = tokio::time::interval(Duration::from_millis(400 + rng.below(400)));
    let mean_ms = env_or("SOAK_RESUME_SECONDS", 10) * 1000;
    let kill_period = |rng: &mut Rng| Duration::from_millis(mean_ms / 2 + rng.below(mean_ms));
    let mut next_kill = tokio::time::Instant::now() + kill_period(&mut rng);
    let mut sending = false;
    let mut started = false;
    let (sent_total, received_total) = (phases.sent_total.clone(), phases.received_total.clone());
    loop {
        tokio::select! {
            // First: once the run is done, peers close, and their `user_left` must
            // not count (it was sent after `done`, so `done` is seen first).
            biased;
            _ = phases.done.changed() => break,
            _ = phases.start.changed(), if !started => {
                started = true;
                sending = !*phases.stop.borrow();
            }
            _ = tick.tick(), if sending => {
                let target = peers.all[rng.below(peers.all.len() as u64) as usize].clone();
                let seq = sent.get(&target).copied().unwrap_or(0) + 1;
                let frame = json!({"type": "message", "target": target, "payload": {"seq": seq, "from": me}});
                if let Err(e) = client.try_send_json(frame).await {
                    received.errors.push(json!({"local": e}));
                    break;
                }
                sent.insert(target, seq);
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(next_kill), if sending => {
                let outcome = kill_and_resume(
                    &mut client, &bases, &mut rng, &mut peers, &mut received, &received_total,
                )
                .await;
                if let Err(e) = outcome {
                    received.errors.push(json!({"local": e}));
                    break;
                }
                next_kill = tokio::time::Instant::now() + kill_period(&mut rng);
            }
            _ = phases.stop.changed(), if sending => sending = false,
            incoming = client.next(Duration::from_secs(3600)) => match incoming {
                None => {}
                Some(Incoming::Frame(v)) => record(&v, &mut peers, &mut received, &received_total),
                Some(other) => {
                    received.errors.push(json!({"local": format!("{other:?}")}));
                    break;
                }
            }
        }
    }
    received.resumes = client.resumes();
    received.errors.extend(
        client
            .seq_faults()
            .iter()
            .map(|fault| json!({"seq": fault})),
    );
    if client.fresh_joins() > 0 {
        received.errors.push(
            json!({"local": format!("{} resumes became ordinary joins", client.fresh_joins())}),
        );
    }
    if client.is_connected() {
        if let Err(e) = client.try_close().await {
            received.errors.push(json!({"local": e}));
        }
    }
    (sent, received)
}

/// The members' errors for a failure message: how many of each kind, then the first
/// client-side ones (a resume that failed, a connection that ended: usually the
/// cause of the frames that follow), then the first frames.
fn describe_errors(errors: &[(String, Value)]) -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, e) in errors {
        let kind = if e.get("local").is_some() {
            "local".to_owned()
        } else if e.get("seq").is_some() {
            "seq".to_owned()
        } else {
            format!(
                "{} {}{}",
                e["type"].as_str().unwrap_or("?"),
                e["payload"]["code"].as_str().unwrap_or_default(),
                e["payload"]["reason"].as_str().unwrap_or_default()
            )
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let first = |local: bool| -> Vec<&(String, Value)> {
        errors
            .iter()
            .filter(|(_, e)| (e.get("local").is_some() || e.get("seq").is_some()) == local)
            .take(10)
            .collect()
    };
    format!(
        "by kind {kinds:?}\nfirst client-side: {:?}\nfirst frames: {:?}",
        first(true),
        first(false)
    )
}

/// What churners did, for the summary.
#[derive(Default)]
struct ChurnStats {
    joins: AtomicU64,
    closes: AtomicU64,
    kills: AtomicU64,
    replacements: AtomicU64,
}

/// A user that comes and goes until `stop`: joins on a random node, talks a little,
/// then closes, is killed mid-frame, or is replaced by a new connection elsewhere.
/// It ends disconnected.
async fn churner(
    urls: Arc<std::sync::RwLock<Vec<String>>>,
    room: String,
    user: String,
    stable: Vec<String>,
    seed: u64,
    stop: watch::Receiver<bool>,
    stats: Arc<ChurnStats>,
) {
    let mut rng = Rng(seed | 1);
    let url = |rng: &mut Rng| {
        let urls = urls.read().unwrap_or_else(|e| e.into_inner());
        format!(
            "{}/ws/{room}/{user}",
            urls[rng.below(urls.len() as u64) as usize]
        )
    };
    let mut current: Option<Ws> = None;
    while !*stop.borrow() {
        let mut ws = match current.take() {
            Some(ws) => ws,
            None => {
                let Some(mut ws) = connect(&url(&mut rng)).await else {
                    // The restarted node's old address refuses for a moment: back off.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if await_room_users(&mut ws).await.is_none() {
                    continue;
                }
                stats.joins.fetch_add(1, Ordering::Relaxed);
                ws
            }
        };
        // Say something to a stable member (they ignore non-stable senders).
        let target = &stable[rng.below(stable.len() as u64) as usize];
        let _ = ws
            .send(Message::text(
                json!({"type": "message", "target": target, "payload": "hi"}).to_string(),
            ))
            .await;
        let linger = Duration::from_millis(100 + rng.below(1500));
        let _ = tokio::time::timeout(linger, async { while let Some(Ok(_)) = ws.next().await {} })
            .await;
        match rng.below(3) {
            0 => {
                let _ = ws.close(None).await;
                stats.closes.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                // Killed in the middle of a frame: a header promising 100 bytes, 3 sent.
                if let MaybeTlsStream::Plain(tcp) = ws.get_mut() {
                    let _ = tcp
                        .write_all(&[0x81, 0xE4, 1, 2, 3, 4, b'{', b'"', b't'])
                        .await;
                }
                drop(ws);
                stats.kills.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                // Replaced: the same user connects again, anywhere; the old one is closed by the server.
                if let Some(mut next) = connect(&url(&mut rng)).await {
                    if await_room_users(&mut next).await.is_some() {
                        stats.replacements.fetch_add(1, Ordering::Relaxed);
                        current = Some(next);
                    }
                }
                drop(ws);
            }
        }
    }
    if let Some(mut ws) = current {
        let _ = ws.close(None).await;
    }
}

/// Redis holds exactly the stable members: room sets, user hashes, node session lists.
fn redis_matches(c: &Cluster, rooms: &HashMap<String, Vec<String>>) -> Result<(), String> {
    let redis = c.redis_server();
    let p = c.prefix();
    let room_keys = redis.keys(&format!("{p}room:{{*}}"));
    let expected_rooms: BTreeSet<String> = rooms.keys().map(|r| c.room_key(r)).collect();
    if room_keys != expected_rooms {
        let extra: Vec<_> = room_keys.difference(&expected_rooms).collect();
        let missing: Vec<_> = expected_rooms.difference(&room_keys).collect();
        return Err(format!("room keys: extra {extra:?}, missing {missing:?}"));
    }
    for (room, members) in rooms {
        let actual = redis.smembers(&c.room_key(room));
        let expected: BTreeSet<String> = members.iter().cloned().collect();
        if actual != expected {
            return Err(format!("room {room}: {actual:?} != {expected:?}"));
        }
    }
    let user_keys = redis.keys(&format!("{p}user:*"));
    let expected_users: BTreeSet<String> =
        rooms.values().flatten().map(|u| c.user_key(u)).collect();
    if user_keys != expected_users {
        let extra: Vec<_> = user_keys.difference(&expected_users).collect();
        return Err(format!(
            "user keys: {} vs {} expected, extra {extra:?}",
            user_keys.len(),
            expected_users.len()
        ));
    }
    let mut registered = BTreeSet::new();
    for key in redis.keys(&format!("{p}node:*:sessions")) {
        registered.extend(
            redis
                .hgetall(&key)
                .into_values()
                .filter_map(|v| v.split(' ').next().map(str::to_owned)),
        );
    }
    let expected: BTreeSet<String> = rooms.values().flatten().cloned().collect();
    if registered != expected {
        let extra: Vec<_> = registered.difference(&expected).collect();
        return Err(format!("node session lists: extra {extra:?}"));
    }
    Ok(())
}

/// A minute of churn around stable members loses and reorders nothing, and leaks no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of churn over ~1,000 connections; .ci/run runs it with `cargo test --locked --test soak -- --ignored`"]
async fn churn_loses_nothing_and_leaks_nothing() {
    soak(None).await;
}

/// The grace of the resume soak: the members that stay are away for at most half a
/// second; what churners leave detached must be gone soon after the churn.
const SOAK_GRACE: &str = "5";
const SOAK_GRACE_SECONDS: u64 = 5;

/// The same minute of churn, with resume on and the members that stay dying in the
/// middle of a frame every few seconds and resuming on a random node: nothing lost,
/// repeated or reordered, no `seq` gap, no stable member seen leaving, no key leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of churn and resumes over ~1,000 connections; run with `cargo test --locked --test soak -- --ignored`"]
async fn churn_with_resumes_loses_nothing() {
    soak(Some(SOAK_GRACE)).await;
}

/// The soak; `resume_grace: Some(seconds)` turns resume on and makes every stable
/// member a [`resuming_member`].
/// The two soaks each load the machine fully; run side by side (as the test
/// harness would) they starve each other's nodes and measure the box, not the code.
static ONE_SOAK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn soak(resume_grace: Option<&str>) {
    let _alone = ONE_SOAK_AT_A_TIME.lock().await;
    let seconds = env_or("SOAK_SECONDS", 60);
    let room_count = env_or("SOAK_ROOMS", 100) as usize;
    let mut env = vec![
        ("RATE_LIMIT_PER_SECOND", "0"),
        ("RATE_LIMIT_BYTES_PER_SECOND", "0"),
    ];
    if let Some(grace) = resume_grace {
        env.push(("RESUME_GRACE_SECONDS", grace));
    }
    let c = Cluster::redis_with(3, &env).await;
    let urls: Vec<String> = (0..3)
        .map(|i| c.node(i).http_url().replacen("http", "ws", 1))
        .collect();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // The fourth node: churners only, killed and restarted with the same id.
    let restarted_id = format!("soak-restarted-{run}");
    let mut restarted =
        TestNode::start_named(c.redis_server(), c.prefix(), &restarted_id, &env).await;
    let churn_urls = Arc::new(std::sync::RwLock::new({
        let mut all = urls.clone();
        all.push(restarted.http_url().replacen("http", "ws", 1));
        all
    }));

    let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
    for r in 0..room_count {
        let room = format!("soak-{run}-{r}");
        let members = (0..STABLE_PER_ROOM).map(|i| format!("s{r}x{i}")).collect();
        rooms.insert(room, members);
    }

    // Stable members join first, so they can address each other from the start.
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let sent_total = Arc::new(AtomicU64::new(0));
    let received_total = Arc::new(AtomicU64::new(0));
    let phases = Phases {
        start: start_rx,
        stop: stop_rx.clone(),
        done: done_rx,
        sent_total: sent_total.clone(),
        received_total: received_total.clone(),
    };
    let mut stable_tasks = Vec::new();
    let mut seed = 0x5EED_u64;
    for (room, members) in &rooms {
        for (i, me) in members.iter().enumerate() {
            let peers: Vec<String> = members.iter().filter(|m| *m != me).cloned().collect();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let task = if resume_grace.is_some() {
                let (client, _) = ResumingClient::join_at(&urls[i % 3], room, me).await;
                let peers = Peers {
                    joining: members[i + 1..].iter().cloned().collect(),
                    all: peers,
                };
                tokio::spawn(resuming_member(
                    client,
                    me.clone(),
                    peers,
                    urls.clone(),
                    seed,
                    phases.clone(),
                ))
            } else {
                let url = format!("{}/ws/{room}/{me}", urls[i % 3]);
                let mut ws = connect(&url)
                    .await
                    .unwrap_or_else(|| panic!("{me} could not connect"));
                await_room_users(&mut ws)
                    .await
                    .unwrap_or_else(|| panic!("{me} got no room_users"));
                tokio::spawn(stable_member(ws, me.clone(), peers, seed, phases.clone()))
            };
            stable_tasks.push((me.clone(), task));
        }
    }

    start_tx.send(true).expect("start signal");
    let stats = Arc::new(ChurnStats::default());
    let mut churn_tasks = Vec::new();
    for (r, (room, members)) in rooms.iter().enumerate() {
        for i in 0..CHURN_PER_ROOM {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            churn_tasks.push(tokio::spawn(churner(
                churn_urls.clone(),
                room.clone(),
                format!("c{r}x{i}"),
                members.clone(),
                seed,
                stop_rx.clone(),
                stats.clone(),
            )));
        }
    }

    let started = Instant::now();
    // The soak itself, not a synchronisation; half-way the fourth node is killed
    // and a new process takes its NODE_ID at once.
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    restarted.sigkill().await;
    restarted = TestNode::start_named(c.redis_server(), c.prefix(), &restarted_id, &env).await;
    let new_url = restarted.http_url().replacen("http", "ws", 1);
    if let Some(last) = churn_urls
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .last_mut()
    {
        *last = new_url;
    }
    let restarted_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(seconds - seconds / 2)).await;
    stop_tx.send(true).expect("stop signal");
    for task in churn_tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a churner did not stop within 30 s")
            .expect("churner panicked");
    }
    let churned = started.elapsed();

    // Bounded poll for a state without an event; the last mismatch is the failure.
    // With resume, churners killed last stay detached for the grace first.
    let settle_within = match resume_grace {
        Some(_) => Duration::from_secs(20 + SOAK_GRACE_SECONDS),
        None => Duration::from_secs(20),
    };
    // Asserted after the members' errors, which usually say why it does not hold.
    let settle = Instant::now() + settle_within;
    let redis_state = loop {
        match redis_matches(&c, &rooms) {
            Ok(()) => break Ok(()),
            Err(e) if Instant::now() >= settle => break Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // Sending stopped with the churn; wait until every sent message has been received
    // (if one was lost this times out, and the tally below names the pair).
    let (sent_ref, received_ref) = (&sent_total, &received_total);
    let drained = tokio::time::timeout(DRAIN, async move {
        while received_ref.load(Ordering::Relaxed) < sent_ref.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("soak: not every message arrived within {DRAIN:?}; the tally names the pairs");
    }
    done_tx.send(true).expect("done signal");

    let mut sent: HashMap<(String, String), u64> = HashMap::new();
    let mut got: HashMap<(String, String), Vec<u64>> = HashMap::new();
    let mut errors = Vec::new();
    let mut resumes = 0;
    for (me, task) in stable_tasks {
        let (s, r) = tokio::time::timeout(DRAIN, task)
            .await
            .unwrap_or_else(|_| panic!("{me} did not finish"))
            .expect("stable member panicked");
        for (target, n) in s {
            sent.insert((me.clone(), target), n);
        }
        for (from, seqs) in r.seqs {
            got.insert((from, me.clone()), seqs);
        }
        errors.extend(r.errors.into_iter().map(|e| (me.clone(), e)));
        resumes += r.resumes;
    }
    assert!(
        errors.is_empty(),
        "stable members got {} errors: {}",
        errors.len(),
        describe_errors(&errors)
    );
    if let Err(e) = redis_state {
        panic!("Redis does not hold exactly the stable members after {settle_within:?}: {e}");
    }
    let mut delivered = 0;
    for ((from, to), n) in &sent {
        let seqs = got.remove(&(from.clone(), to.clone())).unwrap_or_default();
        let expected: Vec<u64> = (1..=*n).collect();
        assert_eq!(seqs, expected, "{from} -> {to}: lost or reordered messages");
        delivered += seqs.len();
    }
    assert!(
        got.values().all(Vec::is_empty),
        "messages nobody sent: {got:?}"
    );
    if resume_grace.is_some() {
        assert!(resumes > 0, "no stable member resumed");
    }
    eprintln!(
        "soak: {} stable members in {room_count} rooms on 3 nodes, {} churners on 4 nodes for {churned:?} \
         (the fourth killed and restarted with its NODE_ID at {restarted_at:?}): \
         {} churn joins, {} closes, {} mid-frame kills, {} replacements; \
         {resumes} resumes of stable members after a mid-frame kill; \
         {delivered} directed messages between stable members, all in order",
        room_count * STABLE_PER_ROOM,
        room_count * CHURN_PER_ROOM,
        stats.joins.load(Ordering::Relaxed),
        stats.closes.load(Ordering::Relaxed),
        stats.kills.load(Ordering::Relaxed),
        stats.replacements.load(Ordering::Relaxed),
    );
    assert!(delivered as u64 == sent_total.load(Ordering::Relaxed));
}
