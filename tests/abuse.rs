//! One client against the node (issue: hardening): memory a single connection
//! could take (ping floods, wrong-password storms), sessions that one client or bad
//! luck could break (racing connections of one user, a refused second connection,
//! a member flooding its room with bytes), and clusters with nested key prefixes
//! sharing one Redis. Memory bounds are read from the node's RSS, never timed.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-T0ken_0123456789abcdef";

async fn admin(node: &TestNode, method: &str, path: &str, body: Value) -> (u16, Value) {
    node.bearer_request(method, path, Some(ADMIN), Some(&body))
        .await
}

// ---------------------------------------------------------------------------
// Ping flood: control-frame replies count against the connection's bound
// ---------------------------------------------------------------------------

/// A WebSocket upgrade by hand, so the test can write frames and never read.
async fn raw_upgrade(node: &TestNode, room: &str, user: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = tokio::time::timeout(
        TIMEOUT,
        socket.connect(([127, 0, 0, 1], node.port()).into()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let mut stream = stream;
    let request = format!(
        "GET /ws/{room}/{user} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut byte))
            .await
            .expect("upgrade answer in time")
            .expect("read upgrade answer");
        assert_eq!(n, 1, "connection closed during the upgrade: {head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// `count` masked client ping frames with 125-byte payloads (the largest a control
/// frame may carry), ready to write.
fn ping_frames(count: usize) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut one = vec![0x89, 0x80 | 125];
    one.extend_from_slice(&mask);
    one.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    one.repeat(count)
}

both_engines!(
    ping_flood_from_a_client_that_never_reads_is_bounded_and_closed,
    env = [("PING_INTERVAL_SECONDS", "0.5")],
    ping_flood
);

/// A member that never reads and floods pings: the node's memory stays bounded
/// (replies to pings are held to the socket's write bound; the WebSocket library
/// keeps only the latest unsent one), the client is closed as a slow consumer
/// within a few ping intervals, and its room hears it leave with `timeout`. How
/// many bytes of pings the node reads meanwhile depends on how fast this machine
/// reads them: the bound is the time, not the bytes.
async fn ping_flood(c: &Cluster) {
    // Two ping intervals of silence or a write stalled for two: well inside this.
    const DEADLINE: Duration = Duration::from_secs(15);
    const GROWTH_KIB: u64 = 128 * 1024;
    let node = c.node(0);
    let room = room_id();
    let (mut alice, _) = join(node, &room, "alice").await;
    let mut flooder = raw_upgrade(node, &room, "mallory").await;
    let joined = alice.expect_type("user_joined").await;
    assert_eq!(joined["payload"]["user_id"], "mallory");

    let base = node.rss_kib().expect("node RSS");
    let pid = node.pid();
    let started = Instant::now();
    // The flood runs beside alice, who keeps reading (and so answering pings).
    let flood = tokio::spawn(async move {
        let chunk = ping_frames(1000);
        let (mut sent, mut peak) = (0usize, base);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), flooder.write_all(&chunk)).await {
                Err(_) => panic!("the node neither read the pings nor closed within 10 s"),
                Ok(Err(_)) => return (sent, peak),
                Ok(Ok(())) => sent += chunk.len(),
            }
            if sent % (8 * chunk.len()) == 0 {
                let rss = rss_kib(pid);
                peak = peak.max(rss);
                assert!(
                    rss < base + GROWTH_KIB,
                    "node RSS grew from {base} KiB to {rss} KiB after {} MiB of pings",
                    sent >> 20
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the node still took pings {:?} after the flood began ({} MiB) from a client that never reads",
                started.elapsed(),
                sent >> 20
            );
        }
    });
    match alice.next_event(Duration::from_secs(60)).await {
        Some(Event::Text(text)) => assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON"),
            user_left("mallory", &room, "timeout"),
            "alice"
        ),
        other => panic!("alice: expected mallory to leave, got {other:?}"),
    }
    let (sent, peak) = tokio::time::timeout(TIMEOUT, flood)
        .await
        .expect("the flooder's writes fail once the node closed it")
        .expect("flood task");
    let rss = node.rss_kib().unwrap_or(0);
    assert!(
        rss < base + GROWTH_KIB,
        "node RSS {rss} KiB after the flood, {base} KiB before"
    );
    println!(
        "measured: ping flood: {} MiB of pings in {:?} until closed; node RSS {base} KiB -> peak {peak} KiB -> {rss} KiB",
        sent >> 20,
        started.elapsed()
    );
}

/// `VmRSS` of a process in KiB (0 when unreadable).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Wrong-password storm: argon2 checks are bounded
// ---------------------------------------------------------------------------

/// 40 parallel wrong-password joins: each is refused (4403, or 1013 when the
/// checks stayed busy), and the node's memory stays far below 40 parallel argon2
/// checks (19 MiB each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_storm_is_bounded() {
    const JOINS: usize = 40;
    const GROWTH_KIB: u64 = 200 * 1024;
    let c = Cluster::standalone_with(&[("ADMIN_TOKEN", ADMIN)]).await;
    let node = c.node(0);
    let room = room_id();
    let (status, body) = admin(
        node,
        "POST",
        "/rooms",
        json!({"room_id": room, "password": "right-one"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let base = node.rss_kib().expect("node RSS");
    let started = Instant::now();
    let attempts = (0..JOINS).map(|i| {
        let url = format!(
            "{}?password=wrong-{i}",
            node.ws_url(&room, &format!("u{i}"))
        );
        async move {
            let mut client = TestClient::connect(&url).await;
            let frame = client.recv_json().await;
            let code = frame["payload"]["code"].as_str().unwrap_or("").to_owned();
            let close = match client.next_event(TIMEOUT).await {
                Some(Event::Close(Some((close, _)))) => close,
                other => panic!("u{i}: expected a close after {frame}, got {other:?}"),
            };
            (code, close)
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let peak = node.rss_kib().unwrap_or(0);
    let (mut forbidden, mut busy) = (0, 0);
    for (code, close) in &outcomes {
        match (code.as_str(), *close) {
            ("forbidden", 4403) => forbidden += 1,
            ("unavailable", 1013) => busy += 1,
            other => panic!("a wrong password must be refused, got {other:?}"),
        }
    }
    assert!(
        peak < base + GROWTH_KIB,
        "node RSS grew from {base} KiB to {peak} KiB over {JOINS} wrong-password joins"
    );
    println!(
        "measured: password storm: {JOINS} joins in {:?}: {forbidden} forbidden, {busy} busy; node RSS {base} KiB -> {peak} KiB",
        started.elapsed()
    );
    // The right password still gets in.
    let url = format!("{}?password=right-one", node.ws_url(&room, "owner"));
    let mut owner = TestClient::connect(&url).await;
    assert_eq!(owner.recv_json().await["type"], "room_users");
}

// ---------------------------------------------------------------------------
// One user, one live session, whatever the interleaving
// ---------------------------------------------------------------------------

both_engines!(
    racing_connections_of_one_user_leave_exactly_one_live_session,
    racing_connections
);

/// 40 connections of alice at once, alternating between the nodes, 30 times:
/// every time exactly one stays open, it is the one Redis names (it receives
/// bob's message), and the others were closed as replaced.
async fn racing_connections(c: &Cluster) {
    const RACERS: usize = 40;
    for trial in 0..30 {
        let room = room_id();
        let (mut bob, _) = join(c.node(0), &room, "bob").await;
        let stop = CancellationToken::new();
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let url = c.node(i % 2).ws_url(&room, "alice");
                let (stop, closed_tx) = (stop.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let mut client = TestClient::connect(&url).await;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return Some(client),
                            event = client.next_event(Duration::from_secs(30)) => match event {
                                Some(Event::Text(_)) => {}
                                Some(Event::Close(close)) => {
                                    let _ = closed_tx.send(close.map(|(code, _)| code));
                                    return None;
                                }
                                other => panic!("racer {i}: unexpected {other:?}"),
                            },
                        }
                    }
                })
            })
            .collect();
        for _ in 0..RACERS - 1 {
            let close = tokio::time::timeout(TIMEOUT, closed_rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("trial {trial}: fewer than {} racers closed", RACERS - 1)
                })
                .flatten();
            assert_eq!(
                close,
                Some(4409),
                "trial {trial}: a losing racer must close as replaced"
            );
        }
        stop.cancel();
        let mut survivors = Vec::new();
        for racer in racers {
            if let Some(client) = racer.await.expect("racer task") {
                survivors.push(client);
            }
        }
        assert_eq!(
            survivors.len(),
            1,
            "trial {trial}: live connections of alice"
        );
        let mut alice = survivors.pop().expect("one survivor");
        // The survivor is live: bob's message reaches it.
        bob.send_json(json!({"type": "message", "target": "alice", "payload": trial}))
            .await;
        let want = relayed("message", "bob", Some("alice"), json!(trial));
        loop {
            let frame = alice.recv_json().await;
            if frame["type"] == "message" {
                assert_eq!(frame, want, "trial {trial}");
                break;
            }
            assert!(
                frame["type"] == "room_users" || frame["type"] == "user_joined",
                "trial {trial}: the survivor got {frame}"
            );
        }
        let (status, user) = c.node(1).get("/users/alice").await;
        assert_eq!(status, 200, "trial {trial}: /users/alice: {user}");
        assert_eq!(user["room_id"], json!(room), "trial {trial}");
    }
}

both_engines!(
    a_reconnect_racing_the_old_connections_drop_always_wins,
    reconnect_while_dropping
);

/// 150 times in a row bob opens a new connection (into a new room) at the moment
/// his previous connection drops: every new connection joins and stays (it must
/// never lose to the session that is leaving, which would leave bob with none).
async fn reconnect_while_dropping(c: &Cluster) {
    let room = room_id();
    let (mut previous, _) = join(c.node(0), &room, "bob").await;
    for round in 0..150 {
        let room = room_id();
        let url = c.node(round % 2).ws_url(&room, "bob");
        let connect = tokio::spawn(async move {
            let mut client = TestClient::connect(&url).await;
            let first = client.recv_json().await;
            (client, first)
        });
        drop(previous);
        let (mut client, first) = connect.await.expect("connect task");
        assert_eq!(
            first["type"], "room_users",
            "round {round}: the new connection was refused: {first}"
        );
        // Still bob's live session once the old one is surely gone: it answers a
        // ping, and REST names its room.
        client
            .send_json(json!({"type": "ping", "payload": round}))
            .await;
        loop {
            match client.next_event(TIMEOUT).await {
                Some(Event::Text(text)) if text.contains("\"pong\"") => break,
                Some(Event::Text(_)) => {}
                other => panic!("round {round}: the new connection ended: {other:?}"),
            }
        }
        previous = client;
    }
    let (status, user) = c.node(1).get("/users/bob").await;
    assert_eq!(status, 200, "{user}");
}

// ---------------------------------------------------------------------------
// A refused connection never touches the user's live session
// ---------------------------------------------------------------------------

both_engines!(
    refused_second_connection_leaves_the_live_session_alone,
    env = [("ADMIN_TOKEN", super::ADMIN)],
    refused_second_connection
);

/// alice is in `home`. A second alice connection on the same node into a full
/// room, and another into a password room with a wrong password, are refused; her
/// first session goes on: nobody hears her leave, messages still reach her, and
/// REST still lists her in `home`.
async fn refused_second_connection(c: &Cluster) {
    let home = room_id();
    let (full, locked) = (room_id(), room_id());
    for body in [
        json!({"room_id": full, "max_users": 1}),
        json!({"room_id": locked, "password": "s3cret"}),
    ] {
        let (status, reply) = admin(c.node(0), "POST", "/rooms", body).await;
        assert_eq!(status, 201, "{reply}");
    }
    let (_dave, _) = join(c.node(1), &full, "dave").await;
    let (mut alice, alice_user) = join(c.node(0), &home, "alice").await;
    let (mut carol, _) = join(c.node(1), &home, "carol").await;
    alice.expect_type("user_joined").await;

    let mut refused = TestClient::connect(&c.node(0).ws_url(&full, "alice")).await;
    refused.expect_error_then_close("room_full", 4403).await;
    let url = format!("{}?password=wrong", c.node(0).ws_url(&locked, "alice"));
    let mut refused = TestClient::connect(&url).await;
    refused.expect_error_then_close("forbidden", 4403).await;

    carol
        .send_json(json!({"type": "message", "target": "alice", "payload": "still there?"}))
        .await;
    alice
        .expect_frame(&relayed(
            "message",
            "carol",
            Some("alice"),
            json!("still there?"),
        ))
        .await;
    alice
        .send_json(json!({"type": "message", "target": "carol", "payload": "yes"}))
        .await;
    carol
        .expect_frame(&relayed("message", "alice", Some("carol"), json!("yes")))
        .await;
    assert_rest_user(c.node(1), &alice_user, c.node(0).node_id()).await;
    expect_silence_all(&mut [&mut alice, &mut carol], QUIET).await;
}

// ---------------------------------------------------------------------------
// One member cannot disconnect its room with bytes
// ---------------------------------------------------------------------------

both_engines!(
    byte_flood_from_one_member_does_not_disconnect_its_room,
    byte_flood
);

/// With the default limits, alice sends 200 broadcasts of 60 KB at once (inside
/// the frame burst) while bob and carol, on small socket buffers, do not read.
/// The byte bucket drops most of them (`rate_limited` to alice), so bob's and
/// carol's queues never overflow: both then read what got through, nobody leaves.
async fn byte_flood(c: &Cluster) {
    const FRAMES: usize = 200;
    let room = room_id();
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, _) = TestClient::connect_join_small_buffer(c.node(1), &room, "bob", 4096).await;
    alice.expect_type("user_joined").await;
    let (mut carol, _) =
        TestClient::connect_join_small_buffer(c.node(1), &room, "carol", 4096).await;
    alice.expect_type("user_joined").await;
    bob.expect_type("user_joined").await;

    let blob = "x".repeat(60_000);
    for i in 0..FRAMES {
        alice
            .send_json(json!({"type": "broadcast", "payload": &blob, "id": i}))
            .await;
    }
    // alice hears about every frame that did not pass; then a small message to bob
    // is retried until the bucket has refilled enough for it.
    let mut limited = 0;
    let mut attempt = 0;
    'final_message: loop {
        attempt += 1;
        assert!(
            attempt < 100,
            "the final message never passed the byte bucket"
        );
        let id = format!("final-{attempt}");
        alice
            .send_json(json!({"type": "message", "target": "bob", "payload": "done", "id": id}))
            .await;
        alice
            .send_json(json!({"type": "ping", "payload": &id}))
            .await;
        loop {
            let frame = alice.recv_json().await;
            match frame["type"].as_str() {
                Some("error") if frame["payload"]["code"] == "rate_limited" => {
                    if frame["payload"]["id"] == json!(id) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'final_message;
                    }
                    limited += 1;
                }
                Some("pong") if frame["payload"] == json!(id) => break 'final_message,
                Some("pong") => {}
                _ => panic!("alice: unexpected {frame}"),
            }
        }
    }
    assert!(
        limited > 0,
        "no broadcast of {FRAMES} x 60 KB was rate limited"
    );

    // bob and carol read everything that got through, then bob the final message.
    let mut got = [0usize; 2];
    for (n, client) in [&mut bob, &mut carol].into_iter().enumerate() {
        loop {
            let frame = client.recv_json().await;
            match frame["type"].as_str() {
                Some("broadcast") => got[n] += 1,
                Some("message") if n == 0 && frame["payload"] == "done" => break,
                _ => panic!("{}: unexpected {frame}", client.label()),
            }
            if n == 1 && got[1] == got[0] {
                break;
            }
        }
    }
    assert_eq!(
        got[0] + limited,
        FRAMES,
        "bob: broadcasts received + dropped"
    );
    expect_silence_all(&mut [&mut alice, &mut bob, &mut carol], QUIET).await;
    println!(
        "measured: byte flood: {FRAMES} x 60 KB broadcasts, {} relayed, {limited} rate limited",
        got[0]
    );
}

// ---------------------------------------------------------------------------
// Nested key prefixes on one Redis
// ---------------------------------------------------------------------------

/// Cluster A (`P`) and cluster B (`P room:`) share one Redis. A has rooms named
/// like B's internal keys (`nodes`, `cluster`, `node`). B loses a node, and its
/// dead-node sweep evicts that node's member: A's members are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_key_prefixes_never_see_each_other() {
    let redis = RedisServer::start();
    let prefix_a = key_prefix();
    let prefix_b = format!("{prefix_a}room:");
    let a = TestNode::start(Some(&redis), &prefix_a, &[]).await;
    let b1 = TestNode::start(Some(&redis), &prefix_b, &[]).await;
    let b2 = TestNode::start(Some(&redis), &prefix_b, &[]).await;

    let mut members = Vec::new();
    for room in ["nodes", "cluster", "node"] {
        let (alice_id, bob_id) = (format!("a-{room}"), format!("b-{room}"));
        let (mut alice, _) = join(&a, room, &alice_id).await;
        let (bob, bob_user) = join(&a, room, &bob_id).await;
        alice.expect_frame(&user_joined(&bob_user)).await;
        members.push((room, alice_id, alice, bob_id, bob));
    }
    // Cluster B: a member on b2, watched from b1; then b2 dies.
    let room_b = room_id();
    let (mut watcher, _) = join(&b1, &room_b, "watcher").await;
    let (_doomed, _) = join(&b2, &room_b, "doomed").await;
    watcher.expect_type("user_joined").await;
    // Only a node that has beaten once is known to the cluster (and can be found dead).
    let beat = format!("{prefix_b}node:{{{}}}", b2.node_id());
    let redis_ref = &redis;
    eventually(TIMEOUT, format!("{beat} written"), move || {
        let beat = beat.clone();
        async move { redis_ref.exists(&beat) }
    })
    .await;
    b2.sigkill().await;
    // Eviction takes a heartbeat TTL and a sweep: a few seconds.
    match watcher.next_event(Duration::from_secs(20)).await {
        Some(Event::Text(text)) => assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON"),
            user_left("doomed", &room_b, "timeout")
        ),
        other => panic!("watcher: expected doomed to be evicted, got {other:?}"),
    }

    // A's rooms still have both members, who still talk and heard nothing else.
    for (room, alice_id, alice, bob_id, bob) in &mut members {
        let (status, users) = a.get(&format!("/rooms/{room}/users")).await;
        assert_eq!(status, 200);
        assert_eq!(users["count"], 2, "room {room} of cluster A: {users}");
        alice
            .send_json(json!({"type": "message", "target": bob_id, "payload": room}))
            .await;
        bob.expect_frame(&relayed("message", alice_id, Some(bob_id), json!(room)))
            .await;
        expect_silence_all(&mut [alice, bob], QUIET).await;
    }
}
