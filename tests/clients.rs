//! Faulty clients (PROTOCOL.md sections 4, 6 and 10): a client that stops answering,
//! a slow consumer, floods, the per-node connection limit and malformed frames, each
//! produced for real on both engines through `both_engines!`; plus a deterministic
//! fuzz of the frame parser at the library level (`parse_client_frame`).

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Parses an event that must be a JSON text frame.
#[track_caller]
fn text_json(event: Event, context: &str) -> Value {
    match event {
        Event::Text(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{context}: frame is not JSON ({e}): {text:?}")),
        other => panic!("{context}: expected a JSON text frame, got {other:?}"),
    }
}

/// `from` pings and gets its pong, then sends `to` a message that arrives.
async fn assert_relay_works(
    from: &mut TestClient,
    from_id: &str,
    to: &mut TestClient,
    to_id: &str,
) {
    let tag = format!("{from_id} still works");
    from.send_json(json!({"type": "ping", "payload": &tag}))
        .await;
    from.expect_frame(&json!({"type": "pong", "payload": &tag}))
        .await;
    from.send_json(json!({"type": "message", "target": to_id, "payload": &tag}))
        .await;
    to.expect_frame(&relayed("message", from_id, Some(to_id), json!(tag)))
        .await;
}

// ---------------------------------------------------------------------------
// Heartbeat: PING_INTERVAL_SECONDS
// ---------------------------------------------------------------------------

/// The heartbeat period configured below (`PING_INTERVAL_SECONDS=0.5`).
const PING_PERIOD: Duration = Duration::from_millis(500);

both_engines!(
    client_that_stops_reading_is_dropped_as_timeout,
    env = [("PING_INTERVAL_SECONDS", "0.5")],
    dead_client
);

/// A client that never reads again (so never answers pings) is dropped after two silent intervals: the room sees user_left "timeout" and REST unlists it.
async fn dead_client(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    // The server cannot have heard from bob before this instant.
    let bob_connecting = Instant::now();
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    // From here bob is never polled: tokio-tungstenite answers pings only while its
    // stream is read, so bob neither pongs nor sends anything. alice keeps reading.
    alice
        .expect_frame(&user_left("bob", &room, "timeout"))
        .await;
    let after = bob_connecting.elapsed();
    assert!(
        after >= 2 * PING_PERIOD - Duration::from_millis(100),
        "bob was dropped {after:?} after connecting, before two ping intervals ({:?}) of silence",
        2 * PING_PERIOD
    );
    assert!(
        after <= 6 * PING_PERIOD,
        "bob was dropped only {after:?} after connecting; two intervals of silence is {:?}",
        2 * PING_PERIOD
    );
    assert_rest_members(c.node(0), &room, &[&alice_user]).await;
    assert_rest_members(c.node(1), &room, &[&alice_user]).await;
    let (status, body) = c.node(0).get("/users/bob").await;
    assert_http_error(
        status,
        &body,
        404,
        "user_not_found",
        "GET /users/bob after timeout",
    );

    // What bob's socket holds now: pings, then (if it was not lost because bob never
    // read) error `timeout` and close 4408. A wrong code fails; a lost close does not.
    let mut saw_error = false;
    let close = loop {
        match bob.next_event(TIMEOUT).await {
            None => break Err(format!("nothing within {TIMEOUT:?}")),
            Some(Event::Text(text)) => {
                let frame: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("bob: frame is not JSON ({e}): {text:?}"));
                if let Some(mismatch) = error_echo_mismatch(&frame, "timeout", None, None) {
                    panic!("bob: the only data frame due is error timeout: {mismatch}");
                }
                saw_error = true;
            }
            Some(Event::Close(Some((code, _)))) => break Ok(code),
            Some(Event::Close(None)) => break Err("a close frame without code".into()),
            Some(Event::Binary(bytes)) => panic!("bob: unexpected binary frame {bytes:?}"),
            Some(Event::Ended(why)) => break Err(why),
        }
    };
    match close {
        Ok(code) => {
            assert_eq!(code, 4408, "bob: close code after a heartbeat timeout");
            assert!(
                saw_error,
                "bob: close 4408 came without error timeout first"
            );
        }
        Err(why) => eprintln!(
            "note: bob's farewell was not readable (error timeout seen: {saw_error}; {why}); \
             the user_left above is the contract"
        ),
    }

    assert_pong(&mut alice).await;
    alice.expect_silence(QUIET).await;
}

/// The sole remaining member still gets answers.
async fn assert_pong(alice: &mut TestClient) {
    alice
        .send_json(json!({"type": "ping", "payload": "alone"}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": "alone"}))
        .await;
}

both_engines!(
    idle_client_that_reads_survives_the_heartbeat,
    env = [("PING_INTERVAL_SECONDS", "0.5")],
    idle_reader
);

/// Two clients that keep reading (so auto-answer pings) but send no data for 3 s (6 intervals) stay connected.
async fn idle_reader(c: &Cluster) {
    let (room, mut alice, alice_user, mut bob, bob_user) = pair(c).await;

    let idle = 6 * PING_PERIOD;
    let (alice_pings, bob_pings) = tokio::join!(
        alice.expect_silence_counting_pings(idle),
        bob.expect_silence_counting_pings(idle)
    );
    // Without pings this test would prove nothing about the heartbeat.
    for (who, pings) in [("alice", alice_pings), ("bob", bob_pings)] {
        assert!(
            pings >= 3,
            "{who} got {pings} WebSocket pings in {idle:?} with PING_INTERVAL_SECONDS=0.5"
        );
    }

    assert_relay_works(&mut alice, "alice", &mut bob, "bob").await;
    assert_relay_works(&mut bob, "bob", &mut alice, "alice").await;
    assert_rest_members(c.node(0), &room, &[&alice_user, &bob_user]).await;
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

// ---------------------------------------------------------------------------
// Slow consumer: MAX_QUEUE_BYTES
// ---------------------------------------------------------------------------

both_engines!(
    slow_consumer_is_dropped_and_the_room_keeps_working,
    env = [
        ("MAX_QUEUE_BYTES", "65536"),
        ("RATE_LIMIT_PER_SECOND", "0"),
        ("RATE_LIMIT_BYTES_PER_SECOND", "0")
    ],
    slow_consumer
);

/// bob stops reading while alice streams 8 KiB messages to him: once the socket buffers and his 64 KiB queue are full he is dropped (user_left "timeout"), and alice and carol keep working.
async fn slow_consumer(c: &Cluster) {
    const MAX_MESSAGES: usize = 5000;
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(c.node(1), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    // bob is never polled again (not even dropped, so his TCP window closes).

    let node = c.node(1);
    let rss_before = node.rss_kib();
    let chunk = "x".repeat(8 * 1024);
    let started = Instant::now();
    let mut sent = 0;
    let mut seen = None;
    while sent < MAX_MESSAGES {
        let frame =
            json!({"type": "message", "target": "bob", "payload": {"seq": sent, "data": &chunk}});
        alice.send_text(&frame.to_string()).await;
        sent += 1;
        // A non-blocking look at carol: she gets nothing until bob is dropped.
        if let Some(event) = carol.next_event(Duration::ZERO).await {
            seen = Some(event);
            break;
        }
    }
    let frame = match seen {
        Some(event) => text_json(event, "carol"),
        None => match carol.next_event(TIMEOUT).await {
            Some(event) => text_json(event, "carol"),
            None => panic!(
                "carol: no user_left for bob after {sent} messages of 8 KiB ({} MiB) to a client \
                 that does not read, with MAX_QUEUE_BYTES=65536",
                sent * 8 / 1024
            ),
        },
    };
    assert_eq!(
        frame,
        user_left("bob", &room, "timeout"),
        "carol: expected bob's user_left after {sent} messages"
    );
    eprintln!(
        "slow consumer dropped after {sent} messages of 8 KiB in {:?}; VmRSS of {}: before {:?} KiB, after {:?} KiB",
        started.elapsed(),
        node.node_id(),
        rss_before,
        node.rss_kib()
    );
    drop(bob);

    // Messages alice sent after bob was gone were answered target_not_found.
    assert_rest_members(c.node(0), &room, &[&alice_user, &carol_user]).await;
    alice
        .send_json(json!({"type": "message", "target": "carol", "payload": "after"}))
        .await;
    carol
        .expect_frame(&relayed("message", "alice", Some("carol"), json!("after")))
        .await;
    carol
        .send_json(json!({"type": "message", "target": "alice", "payload": "back"}))
        .await;
    // alice, a member too, was told of bob's departure once, amid target_not_found
    // answers to what she sent him meanwhile.
    let (mut late_errors, mut told) = (0, 0);
    loop {
        let frame = alice.recv_json().await;
        if frame["type"] == "error" && frame["payload"]["code"] == "target_not_found" {
            assert_eq!(frame["payload"]["target"], "bob", "alice: {frame}");
            late_errors += 1;
            assert!(late_errors <= sent, "alice: endless target_not_found");
            continue;
        }
        if frame["type"] == "user_left" {
            assert_eq!(frame, user_left("bob", &room, "timeout"), "alice");
            told += 1;
            continue;
        }
        assert_eq!(
            frame,
            relayed("message", "carol", Some("alice"), json!("back")),
            "alice: expected carol's message"
        );
        break;
    }
    assert_eq!(
        told, 1,
        "alice: bob's user_left \"timeout\" must come exactly once"
    );
    expect_silence_all(&mut [&mut alice, &mut carol], QUIET).await;
}

// ---------------------------------------------------------------------------
// Rate limit: RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST
// ---------------------------------------------------------------------------

both_engines!(
    burst_over_the_rate_limit_is_dropped_with_rate_limited,
    env = [("RATE_LIMIT_PER_SECOND", "5"), ("RATE_LIMIT_BURST", "10")],
    flood
);

/// 30 frames back to back with a bucket of 10 refilled at 5/s: the first 10 at least are delivered in order, every other one is answered rate_limited with its id, none is both or lost.
async fn flood(c: &Cluster) {
    const SENT: u64 = 30;
    let (_room, mut alice, _, mut bob, _) = pair(c).await;

    for i in 0..SENT {
        alice
            .send_json(
                json!({"type": "message", "target": "bob", "payload": flood_payload(i), "id": i}),
            )
            .await;
    }

    let mut delivered: Vec<u64> = Vec::new();
    let mut limited: Vec<u64> = Vec::new();
    let mut echo_problems: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while (delivered.len() + limited.len()) < SENT as usize {
        tokio::select! {
            event = alice.next_event(2 * TIMEOUT) => {
                let frame = text_json(event.expect("alice: no frame"), "alice");
                assert_error_frame(&frame, "rate_limited", "alice during the flood");
                // Unechoed ids are counted in order of arrival, and reported below.
                let id = frame["payload"]["id"].as_u64().unwrap_or(u64::MAX);
                if id == u64::MAX {
                    echo_problems.push(format!("no id echoed: {frame}"));
                } else if let Some(mismatch) = error_echo_mismatch(&frame, "rate_limited", Some(json!(id)), Some("bob")) {
                    echo_problems.push(mismatch);
                }
                limited.push(id);
            }
            event = bob.next_event(2 * TIMEOUT) => {
                let frame = text_json(event.expect("bob: no frame"), "bob");
                let i = frame["payload"]["i"].as_u64().unwrap_or(u64::MAX);
                assert_eq!(frame, relayed("message", "alice", Some("bob"), flood_payload(i)), "bob");
                delivered.push(i);
            }
            _ = tokio::time::sleep_until(deadline) => panic!(
                "within {TIMEOUT:?} of the flood only {} delivered ({delivered:?}) and {} rate_limited ({limited:?}) of {SENT}",
                delivered.len(),
                limited.len()
            ),
        }
    }
    let summary = format!("delivered {delivered:?}, rate_limited {limited:?}");
    assert!(
        echo_problems.is_empty(),
        "rate_limited errors must echo the frame's id and string target (PROTOCOL.md section 4); \
         {} of {} did not (odd ids carry a 5 KB payload):\n{}",
        echo_problems.len(),
        limited.len(),
        echo_problems.join("\n")
    );
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "bob: deliveries out of order: {summary}"
    );
    assert!(
        (0..10).all(|i| delivered.contains(&i)),
        "the bucket is full at connect: frames 0..10 must all be delivered; {summary}"
    );
    assert!(delivered.len() >= 10, "{summary}");
    assert!(
        limited.len() >= 15,
        "refill is 5/s: at least 15 of 30 must be dropped; {summary}"
    );
    let all: BTreeSet<u64> = delivered.iter().chain(&limited).copied().collect();
    assert_eq!(
        all,
        (0..SENT).collect::<BTreeSet<_>>(),
        "each frame must be delivered or rate_limited, exactly once; {summary}"
    );
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;

    // The connection stays: once a token is back, a message goes through.
    relay_when_refilled(&mut alice, &mut bob).await;
}

/// The payload of flood frame `i`; odd frames are padded to 5 KB (still far under
/// MAX_MESSAGE_BYTES), so that echoing ids is checked on larger frames too.
fn flood_payload(i: u64) -> Value {
    if i % 2 == 1 {
        json!({"i": i, "pad": "p".repeat(5000)})
    } else {
        json!({"i": i})
    }
}

/// Sends alice→bob messages until one is delivered instead of rate_limited (bounded).
async fn relay_when_refilled(alice: &mut TestClient, bob: &mut TestClient) {
    for attempt in 0..25 {
        let id = format!("retry-{attempt}");
        alice
            .send_json(json!({"type": "message", "target": "bob", "payload": &id, "id": &id}))
            .await;
        tokio::select! {
            event = alice.next_event(TIMEOUT) => {
                let frame = text_json(event.expect("alice: no frame"), "alice");
                if let Some(mismatch) = error_echo_mismatch(&frame, "rate_limited", Some(json!(id)), Some("bob")) {
                    panic!("alice after the flood: {mismatch}");
                }
                // Pacing of the retries (a token comes back every 200 ms), not synchronization.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            event = bob.next_event(TIMEOUT) => {
                let frame = text_json(event.expect("bob: no frame"), "bob");
                assert_eq!(frame, relayed("message", "alice", Some("bob"), json!(id)), "bob");
                return;
            }
        }
    }
    panic!("alice: still rate_limited after 25 attempts over ~2.5 s at 5 tokens/s");
}

both_engines!(
    ice_trickle_within_default_limits_is_not_rate_limited,
    ice_trickle
);

/// With the default limits, an offer and 60 ICE candidates sent back to back all arrive, in order, without any error.
async fn ice_trickle(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": &offer, "id": "offer"}))
        .await;
    let candidate = |i: usize| {
        json!({
            "candidate": format!("candidate:{i} 1 udp 2122260223 192.0.2.{} {} typ host", i % 250, 50000 + i),
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "abcd"
        })
    };
    for i in 0..60 {
        alice
            .send_json(
                json!({"type": "ice_candidate", "target": "bob", "payload": candidate(i), "id": i}),
            )
            .await;
    }
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    for i in 0..60 {
        bob.expect_frame(&relayed(
            "ice_candidate",
            "alice",
            Some("bob"),
            candidate(i),
        ))
        .await;
    }
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

both_engines!(
    sustained_rate_abuse_closes_with_4429,
    env = [("RATE_LIMIT_PER_SECOND", "2"), ("RATE_LIMIT_BURST", "2")],
    sustained_abuse
);

/// alice sends 20 frames/s against 2 tokens/s: after drops in 10 consecutive seconds she gets error rate_limited then close 4429, and bob sees user_left "left".
async fn sustained_abuse(c: &Cluster) {
    let (room, mut alice, _, mut bob, bob_user) = pair(c).await;

    let started = Instant::now();
    let give_up = Duration::from_secs(15);
    // Load generation at 20 frames/s, not synchronization.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut send_failed, mut limited) = (0u64, None, 0u64);
    let mut last_frame: Option<Value> = None;
    let (code, at) = loop {
        assert!(
            started.elapsed() < give_up,
            "alice: no close within {give_up:?} of sustained abuse ({sent} sent, {limited} rate_limited)"
        );
        tokio::select! {
            _ = pace.tick(), if send_failed.is_none() => {
                let frame = json!({"type": "message", "target": "bob", "payload": sent, "id": sent});
                if let Err(e) = alice.try_send(Message::text(frame.to_string())).await {
                    send_failed = Some((e, started.elapsed()));
                }
                sent += 1;
            }
            event = alice.next_event(Duration::from_secs(1)) => match event {
                None => {}
                Some(Event::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("alice: frame is not JSON ({e}): {text:?}"));
                    assert_error_frame(&frame, "rate_limited", "alice during the flood");
                    limited += 1;
                    last_frame = Some(frame);
                }
                Some(Event::Close(Some((code, _)))) => break (code, started.elapsed()),
                Some(other) => panic!(
                    "alice: expected rate_limited errors then close 4429, got {other:?} after {:?} (send failure: {send_failed:?})",
                    started.elapsed()
                ),
            },
        }
    };
    eprintln!("sustained abuse: close {code} after {at:?}, {sent} sent, {limited} rate_limited");
    assert_eq!(
        code, 4429,
        "alice: close code for sustained rate abuse (after {at:?})"
    );
    let last = last_frame.expect("alice: no error frame before the close");
    assert_error_frame(
        &last,
        "rate_limited",
        "alice: the frame right before close 4429",
    );
    assert!(
        limited > 1,
        "alice: the drops before the close must each get rate_limited"
    );
    // Drops start within the first 0.2 s; 10 consecutive seconds with drops cannot be
    // complete before 8 s even with calendar-aligned seconds.
    assert!(
        at >= Duration::from_millis(7500),
        "alice was closed after {at:?}: too early for drops in 10 consecutive seconds"
    );
    assert!(
        at <= Duration::from_secs(14),
        "alice was closed only after {at:?} of drops in every second"
    );

    // bob got alice's few delivered messages, then her departure as "left".
    let mut relayed_count = 0;
    loop {
        let frame = bob.recv_json().await;
        if frame["type"] == "message" {
            relayed_count += 1;
            assert!(relayed_count <= sent, "bob: more messages than alice sent");
            continue;
        }
        assert_eq!(frame, user_left("alice", &room, "left"), "bob");
        break;
    }
    assert_rest_members(c.node(1), &room, &[&bob_user]).await;
    bob.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------
// Connection limit: MAX_CONNECTIONS
// ---------------------------------------------------------------------------

both_engines!(
    connections_past_the_limit_get_unavailable_1013,
    env = [("MAX_CONNECTIONS", "3")],
    connection_limit
);

/// With MAX_CONNECTIONS=3 on a node, a fourth connection (a new user, or an existing user's) is refused with unavailable + 1013, the node stays healthy and its members unaffected; when one leaves, a new connection is accepted.
async fn connection_limit(c: &Cluster) {
    let node = c.node(0);
    let room = room_id();
    let (mut alice, alice_user) = join(node, &room, "alice").await;
    let (mut bob, bob_user) = join(node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(node, &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    // A new user, and an existing user reconnecting: both refused, neither replaces anyone.
    for user in ["dave", "alice"] {
        let mut refused = TestClient::connect(&node.ws_url(&room, user)).await;
        refused.expect_error_then_close("unavailable", 1013).await;
    }
    for path in ["/healthz", "/readyz"] {
        let (status, body) = node.get(path).await;
        assert_eq!(status, 200, "{path} at the connection limit (body {body})");
    }
    expect_silence_all(&mut [&mut alice, &mut bob, &mut carol], QUIET).await;
    assert_rest_members(node, &room, &[&alice_user, &bob_user, &carol_user]).await;
    let (status, body) = node.get("/users/dave").await;
    assert_http_error(
        status,
        &body,
        404,
        "user_not_found",
        "GET /users/dave after refusal",
    );
    if c.is_redis() {
        let users = c.redis_server().keys(&format!("{}user:*", c.prefix()));
        let expected: BTreeSet<String> = ["alice", "bob", "carol"]
            .iter()
            .map(|u| c.user_key(u))
            .collect();
        assert_eq!(users, expected, "user keys after refused connections");
    }
    assert_relay_works(&mut alice, "alice", &mut bob, "bob").await;
    assert_relay_works(&mut bob, "bob", &mut carol, "carol").await;
    assert_relay_works(&mut carol, "carol", &mut alice, "alice").await;

    if c.is_redis() {
        // The limit is per node: node 1 still takes dave.
        let (dave, dave_user) = join(c.node(1), &room, "dave").await;
        for member in [&mut alice, &mut bob, &mut carol] {
            member.expect_frame(&user_joined(&dave_user)).await;
        }
        dave.close().await;
        for member in [&mut alice, &mut bob, &mut carol] {
            member.expect_frame(&user_left("dave", &room, "left")).await;
        }
    }

    // carol leaves; her slot is free again.
    carol.close().await;
    alice.expect_frame(&user_left("carol", &room, "left")).await;
    bob.expect_frame(&user_left("carol", &room, "left")).await;
    let mut erin = TestClient::connect(&node.ws_url(&room, "erin")).await;
    let first = erin.recv_json().await;
    assert_eq!(
        first["type"], "room_users",
        "erin: a connection after carol left (user_left seen) must be accepted, got {first}"
    );
    let erin_user = assert_room_users(&first, &room, "erin", &[&alice_user, &bob_user]);
    alice.expect_frame(&user_joined(&erin_user)).await;
    bob.expect_frame(&user_joined(&erin_user)).await;
    assert_relay_works(&mut erin, "erin", &mut alice, "alice").await;
    expect_silence_all(&mut [&mut alice, &mut bob, &mut erin], QUIET).await;
}

// ---------------------------------------------------------------------------
// Malformed and oversized frames
// ---------------------------------------------------------------------------

both_engines!(
    invalid_utf8_text_frame_is_refused_without_harm,
    invalid_utf8
);

/// A text frame that is not UTF-8 either gets invalid_message (connection kept) or closes the sender with 1007 (room told user_left "left"); nothing reaches bob.
async fn invalid_utf8(c: &Cluster) {
    let (room, mut alice, _, mut bob, bob_user) = pair(c).await;

    let bytes =
        b"{\"type\":\"message\",\"target\":\"bob\",\"payload\":\"\xff\xfe\xc3\x28\"}".to_vec();
    alice
        .send_message(Message::Frame(Frame::message(
            bytes,
            OpCode::Data(Data::Text),
            true,
        )))
        .await;

    match alice.next_event(TIMEOUT).await {
        Some(Event::Text(text)) => {
            let frame: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("alice: frame is not JSON ({e}): {text:?}"));
            assert_error_frame(&frame, "invalid_message", "alice after invalid UTF-8");
            match alice.next_event(QUIET).await {
                // Kept open: still usable, and bob got nothing.
                None => {
                    bob.expect_silence(QUIET).await;
                    assert_relay_works(&mut alice, "alice", &mut bob, "bob").await;
                }
                Some(Event::Close(Some((1007, _)))) => {
                    bob.expect_frame(&user_left("alice", &room, "left")).await;
                }
                Some(other) => panic!("alice: after invalid_message, got {other:?}"),
            }
        }
        Some(Event::Close(Some((1007, _)))) => {
            bob.expect_frame(&user_left("alice", &room, "left")).await;
            assert_rest_members(c.node(1), &room, &[&bob_user]).await;
        }
        other => panic!(
            "alice: a non-UTF-8 text frame must get invalid_message or close 1007, got {other:?}"
        ),
    }
    bob.expect_silence(QUIET).await;
}

both_engines!(
    oversized_binary_and_fragmented_frames_close_with_1009,
    env = [("MAX_MESSAGE_BYTES", "1024")],
    oversized_frames
);

/// A fragmented message under MAX_MESSAGE_BYTES is relayed; a binary frame over it, or a message whose fragments together exceed it, closes the sender with 1009 and the room sees user_left "left".
async fn oversized_frames(c: &Cluster) {
    let (room, mut alice, _, mut bob, bob_user) = pair(c).await;

    // Fragmentation is legal: three fragments, 600 bytes in all.
    let text = json!({"type": "message", "target": "bob", "payload": "y".repeat(540)}).to_string();
    let bytes = text.as_bytes();
    let parts = [&bytes[..200], &bytes[200..400], &bytes[400..]];
    send_fragments(&mut alice, &parts).await;
    bob.expect_frame(&relayed(
        "message",
        "alice",
        Some("bob"),
        json!("y".repeat(540)),
    ))
    .await;

    // A 2000-byte binary frame.
    alice.send_binary(vec![b'{'; 2000]).await;
    alice.expect_close(1009).await;
    bob.expect_frame(&user_left("alice", &room, "left")).await;
    assert_rest_members(c.node(1), &room, &[&bob_user]).await;

    // Fragments of 600 bytes each: 1800 in all, every fragment under the limit.
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    bob.expect_frame(&user_joined(&alice_user)).await;
    let text = json!({"type": "message", "target": "bob", "payload": "z".repeat(1750)}).to_string();
    let bytes = text.as_bytes();
    let parts = [&bytes[..600], &bytes[600..1200], &bytes[1200..]];
    send_fragments(&mut alice, &parts).await;
    alice.expect_close(1009).await;
    bob.expect_frame(&user_left("alice", &room, "left")).await;
    bob.expect_silence(QUIET).await;
}

/// Sends one text message as several WebSocket fragments.
async fn send_fragments(client: &mut TestClient, parts: &[&[u8]]) {
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = i + 1 == parts.len();
        client
            .send_message(Message::Frame(Frame::message(part.to_vec(), opcode, last)))
            .await;
    }
}

// ---------------------------------------------------------------------------
// Parser fuzz (library level)
// ---------------------------------------------------------------------------

mod parser_fuzz {
    //! `parse_client_frame` on hostile input: no panic, only the three parse-level
    //! codes, the documented echo of id and target, and an exact oracle for
    //! structurally generated frames.

    use serde_json::{json, Value};
    use signal_node::protocol::{parse_client_frame, ClientFrame};

    /// xorshift64: deterministic, no crate needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const CODES: [&str; 3] = ["invalid_message", "missing_target", "invalid_target"];
    const SERVER_TYPES: [&str; 5] = ["room_users", "user_joined", "user_left", "error", "pong"];
    const NEEDS_TARGET: [&str; 3] = ["sdp_offer", "sdp_answer", "ice_candidate"];
    const HUGE_NUMBERS: [&str; 8] = [
        "1e999999",
        "-1e999999",
        "18446744073709551616000",
        "-18446744073709551616000",
        "1E+999999999999",
        "0.00000000000000000000000000000000000000000000000000000000000000000000001e-999999",
        "123456789012345678901234567890123456789012345678901234567890.5e-3",
        "-0",
    ];

    fn is_valid_id(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    }

    fn is_valid_type(s: &str) -> bool {
        let b = s.as_bytes();
        (1..=32).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
    }

    /// Checks what must hold for any input; returns the outcome's short name.
    fn check_invariants(text: &str) {
        match parse_client_frame(text) {
            Ok(ClientFrame::Ping { payload }) => {
                if let Some(p) = payload {
                    assert!(
                        text.contains(p.get()),
                        "ping payload not from the input: {text:?}"
                    );
                }
            }
            Ok(ClientFrame::Relay(relay)) => {
                let context = || format!("accepted {:?}", truncate(text));
                assert!(
                    is_valid_type(&relay.kind),
                    "bad kind {:?}; {}",
                    relay.kind,
                    context()
                );
                assert!(
                    !SERVER_TYPES.contains(&relay.kind.as_str()) && relay.kind != "ping",
                    "server type or ping relayed; {}",
                    context()
                );
                match &relay.target {
                    Some(t) => assert!(is_valid_id(t), "invalid target {t:?}; {}", context()),
                    None => assert!(
                        !NEEDS_TARGET.contains(&relay.kind.as_str()),
                        "{} without target; {}",
                        relay.kind,
                        context()
                    ),
                }
                if let Some(p) = relay.payload {
                    assert!(
                        text.contains(p.get()),
                        "payload not from the input; {}",
                        context()
                    );
                }
                if let Some(id) = relay.id {
                    assert!(
                        is_string_or_number(id.get()),
                        "id {}; {}",
                        id.get(),
                        context()
                    );
                }
            }
            Err(rejection) => {
                let code = rejection.code.as_str();
                assert!(
                    CODES.contains(&code),
                    "code {code} for {:?}",
                    truncate(text)
                );
                assert!(
                    !rejection.message.is_empty(),
                    "empty message for {:?}",
                    truncate(text)
                );
                if let Some(id) = rejection.id {
                    assert!(
                        is_string_or_number(id.get()),
                        "echoed id {} for {:?}",
                        id.get(),
                        truncate(text)
                    );
                }
                let frame = rejection.to_frame();
                assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(&frame).is_ok(),
                    "error frame is not JSON: {:?}",
                    truncate(&frame)
                );
            }
        }
    }

    fn is_string_or_number(raw: &str) -> bool {
        matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
    }

    fn truncate(text: &str) -> String {
        if text.len() <= 300 {
            return text.to_owned();
        }
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &text[..end], text.len())
    }

    /// The code of a rejection, or "ok"/"ping".
    fn outcome(text: &str) -> String {
        match parse_client_frame(text) {
            Ok(ClientFrame::Ping { .. }) => "ping".into(),
            Ok(ClientFrame::Relay(_)) => "ok".into(),
            Err(r) => r.code.as_str().into(),
        }
    }

    // ---- structural generation with an oracle ----

    /// One field of a generated frame, as JSON text (None: absent).
    struct Generated {
        text: String,
        kind: Option<Value>,
        target: Option<Value>,
        payload: Option<String>,
        id: Option<String>,
        /// Nesting depth of the whole frame (the outer object is 1).
        depth: usize,
    }

    fn random_string(rng: &mut Rng, max: usize) -> String {
        const PIECES: [&str; 14] = [
            "a",
            "Z",
            "0",
            "_",
            "-",
            ".",
            " ",
            ":",
            "{",
            "\"",
            "\\",
            "é",
            "\u{1F600}",
            "\u{0}",
        ];
        let len = rng.below(max + 1);
        (0..len).map(|_| *rng.pick(&PIECES)).collect()
    }

    fn valid_id(rng: &mut Rng) -> String {
        const ALPHABET: &[u8] = b"ABCXYZabcxyz0189_.-";
        let len = if rng.chance(5) { 64 } else { 1 + rng.below(12) };
        (0..len).map(|_| *rng.pick(ALPHABET) as char).collect()
    }

    fn random_value(rng: &mut Rng, depth: usize) -> Value {
        let leaf = depth == 0 || rng.chance(40);
        if leaf {
            return match rng.below(7) {
                0 => Value::Null,
                1 => json!(rng.chance(50)),
                2 => json!(rng.next() as i64),
                3 => json!((rng.next() % 1_000_000) as f64 / 7.0),
                4 => json!(rng.next()),
                _ => json!(random_string(rng, 12)),
            };
        }
        if rng.chance(50) {
            Value::Array(
                (0..rng.below(4))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            )
        } else {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                map.insert(random_string(rng, 6), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
    }

    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// `n` nested arrays around `inner`: depth n (+ inner's).
    fn nested_arrays(n: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(n), "]".repeat(n))
    }

    fn whitespace(rng: &mut Rng) -> &'static str {
        const WHITESPACE: [&str; 7] = ["", "", "", " ", "\n", "\t", "\r\n  "];
        WHITESPACE[rng.below(WHITESPACE.len())]
    }

    fn generate(rng: &mut Rng) -> Generated {
        let kind: Option<Value> = match rng.below(12) {
            0 => None,
            1..=5 => Some(json!(*rng.pick(&[
                "sdp_offer",
                "sdp_answer",
                "ice_candidate",
                "message",
                "broadcast",
                "ping"
            ]))),
            6 => Some(json!(*rng.pick(&SERVER_TYPES))),
            7 => {
                let len = 1 + rng.below(32);
                let mut s = String::from("a");
                for _ in 1..len {
                    s.push(*rng.pick(&['a', 'z', '0', '9', '_']));
                }
                Some(json!(s))
            }
            8 => {
                let too_long = "a".repeat(33);
                let bad = [
                    "",
                    "Message",
                    "1abc",
                    "a-b",
                    "sdp offer",
                    "ünï",
                    too_long.as_str(),
                ];
                Some(json!(*rng.pick(&bad)))
            }
            9 => Some(json!(random_string(rng, 8))),
            _ => Some(random_value(rng, 2)),
        };
        let target: Option<Value> = match rng.below(10) {
            0..=2 => None,
            3 => Some(Value::Null),
            4..=6 => Some(json!(valid_id(rng))),
            7 => {
                let too_long = "a".repeat(65);
                let bad = ["", "bad id", "a:b", "{x}", "é", too_long.as_str()];
                Some(json!(*rng.pick(&bad)))
            }
            8 => Some(json!(random_string(rng, 8))),
            _ => Some(random_value(rng, 2)),
        };
        // Ids: absent, valid (string or number, possibly huge), or of another type.
        let id: Option<String> = match rng.below(8) {
            0..=2 => None,
            3 => Some(json!(random_string(rng, 10)).to_string()),
            4 => Some(json!(rng.next() as i64).to_string()),
            5 => Some(rng.pick(&HUGE_NUMBERS).to_string()),
            6 => Some(json!(1.5 * (rng.below(100) as f64)).to_string()),
            _ => Some((*rng.pick(&["true", "false", "[]", "[1]", "{}", "{\"a\":1}"])).to_string()),
        };
        let (payload, payload_depth): (Option<String>, usize) = match rng.below(10) {
            0..=1 => (None, 0),
            2 => (Some("null".into()), 0),
            3 => (Some(rng.pick(&HUGE_NUMBERS).to_string()), 0),
            4 => {
                // Deep, around the limit of 64 for the whole frame.
                let n = 58 + rng.below(10);
                (Some(nested_arrays(n, "1")), n)
            }
            _ => {
                let v = random_value(rng, 6);
                let d = value_depth(&v);
                (Some(v.to_string()), d)
            }
        };

        let mut fields: Vec<String> = Vec::new();
        let mut depth = 0;
        if let Some(k) = &kind {
            depth = depth.max(value_depth(k));
            push(&mut fields, "type", k.to_string(), rng);
        }
        if let Some(t) = &target {
            depth = depth.max(value_depth(t));
            push(&mut fields, "target", t.to_string(), rng);
        }
        if let Some(p) = &payload {
            depth = depth.max(payload_depth);
            push(&mut fields, "payload", p.clone(), rng);
        }
        if let Some(i) = &id {
            depth = depth.max(if i.starts_with('[') || i.starts_with('{') {
                1
            } else {
                0
            });
            push(&mut fields, "id", i.clone(), rng);
        }
        for _ in 0..rng.below(3) {
            let key = *rng.pick(&["from", "extra", "Type", "TARGET", "ids", "", "payload2"]);
            if fields.iter().any(|f| f.contains(&format!("\"{key}\""))) {
                continue;
            }
            let v = if rng.chance(20) {
                rng.pick(&HUGE_NUMBERS).to_string()
            } else {
                let v = random_value(rng, 3);
                depth = depth.max(value_depth(&v));
                v.to_string()
            };
            push(&mut fields, key, v, rng);
        }
        // Shuffle the field order.
        for i in (1..fields.len()).rev() {
            let j = rng.below(i + 1);
            fields.swap(i, j);
        }
        let text = format!(
            "{}{{{}}}{}",
            whitespace(rng),
            fields.join(","),
            whitespace(rng)
        );
        Generated {
            text,
            kind,
            target,
            payload,
            id,
            depth: depth + 1,
        }
    }

    /// Checks one generated frame against the contract of PROTOCOL.md section 3-4.
    fn check_oracle(g: &Generated) -> Result<(), String> {
        let text = &g.text;
        let result = parse_client_frame(text);
        let describe = |what: String| format!("{what}\n  input: {}", truncate(text));
        if g.depth > 64 {
            return match result {
                Err(r) if r.code.as_str() == "invalid_message" => Ok(()),
                Err(r) => Err(describe(format!(
                    "depth {}: got {}",
                    g.depth,
                    r.code.as_str()
                ))),
                Ok(_) => Err(describe(format!("depth {} accepted", g.depth))),
            };
        }
        let id_valid = g.id.as_deref().is_some_and(is_string_or_number);
        let id_invalid = g.id.is_some() && !id_valid;
        let kind = g.kind.as_ref().and_then(Value::as_str);
        let target_str = g.target.as_ref().and_then(Value::as_str);
        let target_other = g
            .target
            .as_ref()
            .is_some_and(|t| !t.is_null() && !t.is_string());
        let kind_ok = kind.is_some_and(|k| is_valid_type(k) && !SERVER_TYPES.contains(&k));

        // (acceptable outcomes) — "ok"/"ping" or a code.
        let expected: Vec<&str> = if id_invalid || !kind_ok {
            vec!["invalid_message"]
        } else if kind == Some("ping") {
            // "a target on a ping is ignored" vs "another JSON type is invalid_message".
            if target_other {
                vec!["ping", "invalid_message"]
            } else {
                vec!["ping"]
            }
        } else if target_other {
            vec!["invalid_message"]
        } else if target_str.is_none() && NEEDS_TARGET.contains(&kind.unwrap_or_default()) {
            vec!["missing_target"]
        } else if target_str.is_some_and(|t| !is_valid_id(t)) {
            vec!["invalid_target"]
        } else {
            vec!["ok"]
        };

        let (name, echo_id, echo_target) = match &result {
            Ok(ClientFrame::Ping { .. }) => ("ping", None, None),
            Ok(ClientFrame::Relay(_)) => ("ok", None, None),
            Err(r) => (
                r.code.as_str(),
                r.id.map(|raw| raw.get().to_owned()),
                r.target.clone(),
            ),
        };
        if !expected.contains(&name) {
            return Err(describe(format!(
                "expected one of {expected:?}, got {name}"
            )));
        }
        match result {
            Ok(ClientFrame::Ping { payload }) => {
                let got = payload.map(|p| p.get().to_owned());
                let want = g.payload.clone().filter(|p| p != "null");
                if got != want {
                    return Err(describe(format!("ping payload {got:?}, expected {want:?}")));
                }
            }
            Ok(ClientFrame::Relay(relay)) => {
                let want_target = target_str.map(str::to_owned);
                let got_payload = relay.payload.map(|p| p.get().to_owned());
                let want_payload = g.payload.clone().filter(|p| p != "null");
                let got_id = relay.id.map(|raw| raw.get().to_owned());
                if Some(relay.kind.as_str()) != kind
                    || relay.target != want_target
                    || got_payload != want_payload
                    || got_id != g.id
                {
                    return Err(describe(format!(
                        "relay ({}, {:?}, {got_payload:?}, {got_id:?}) differs from the input",
                        relay.kind, relay.target
                    )));
                }
            }
            Err(_) => {
                // The id is echoed when valid, never otherwise; a string target always.
                let want_id = if id_valid { g.id.clone() } else { None };
                if echo_id != want_id {
                    return Err(describe(format!(
                        "{name}: echoed id {echo_id:?}, expected {want_id:?}"
                    )));
                }
                let want_target = target_str.map(str::to_owned);
                if echo_target != want_target {
                    return Err(describe(format!(
                        "{name}: echoed target {echo_target:?}, expected {want_target:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn push(fields: &mut Vec<String>, key: &str, value: String, rng: &mut Rng) {
        fields.push(format!(
            "{}\"{key}\"{}:{}{value}{}",
            whitespace(rng),
            whitespace(rng),
            whitespace(rng),
            whitespace(rng)
        ));
    }

    // ---- unstructured generation ----

    fn token_soup(rng: &mut Rng) -> String {
        const TOKENS: [&str; 40] = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\"type\"",
            "\"target\"",
            "\"payload\"",
            "\"id\"",
            "\"from\"",
            "\"message\"",
            "\"sdp_offer\"",
            "\"ice_candidate\"",
            "\"ping\"",
            "\"pong\"",
            "\"bob\"",
            "\"alice\"",
            "\"a b\"",
            "null",
            "true",
            "false",
            "0",
            "-1",
            "1.5e3",
            "1e999999",
            "18446744073709551616000",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\\"\"",
            "\\",
            " ",
            "\n",
            "\u{a0}",
            "é",
            "\u{1F600}",
            "01",
            "NaN",
            "\"\\uZZZZ\"",
        ];
        let mut s = String::new();
        if rng.chance(70) {
            s.push('{');
        }
        for _ in 0..rng.below(24) {
            let token = rng.pick(&TOKENS);
            s.push_str(token);
        }
        s
    }

    fn random_bytes(rng: &mut Rng) -> String {
        const BIASED: &[u8] = b"{}[]:,\"\\ typeargdlmsi0123456789.-eE+nul\xff\xc3\x80";
        let len = rng.below(64);
        let mut bytes = Vec::with_capacity(len + 1);
        if rng.chance(60) {
            bytes.push(b'{');
        }
        for _ in 0..len {
            if rng.chance(60) {
                bytes.push(*rng.pick(BIASED));
            } else {
                bytes.push(rng.next() as u8);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Byte-level damage to an otherwise well-formed frame.
    fn mutate(rng: &mut Rng, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..1 + rng.below(3) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, *rng.pick(&b"{}[]\",:\\0e-"[..])),
                2 => bytes[at] = rng.next() as u8,
                3 => bytes.truncate(at),
                _ => {
                    let copy = bytes[at..].to_vec();
                    bytes.extend_from_slice(&copy[..copy.len().min(16)]);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn parser_survives_hostile_input_and_follows_the_contract() {
        let started = std::time::Instant::now();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut failures: Vec<String> = Vec::new();
        let mut inputs = 0usize;
        let mut outcomes = std::collections::BTreeMap::new();

        // Structural frames with an exact oracle, and byte-level mutations of them.
        for _ in 0..80_000 {
            let g = generate(&mut rng);
            check_invariants(&g.text);
            *outcomes.entry(outcome(&g.text)).or_insert(0usize) += 1;
            if let Err(e) = check_oracle(&g) {
                if failures.len() < 20 {
                    failures.push(e);
                }
            }
            let damaged = mutate(&mut rng, &g.text);
            check_invariants(&damaged);
            inputs += 2;
        }
        // JSON-ish token soups and random bytes taken lossily as UTF-8.
        for _ in 0..40_000 {
            check_invariants(&token_soup(&mut rng));
            check_invariants(&random_bytes(&mut rng));
            inputs += 2;
        }
        eprintln!(
            "parser fuzz: {inputs} generated inputs in {:?}; outcomes of the structural ones: {outcomes:?}",
            started.elapsed()
        );
        // Every outcome must be exercised, or the oracle checks little.
        for name in [
            "ok",
            "ping",
            "invalid_message",
            "missing_target",
            "invalid_target",
        ] {
            assert!(
                outcomes.get(name).is_some_and(|n| *n >= 500),
                "the generator rarely produces {name}: {outcomes:?}"
            );
        }
        assert!(inputs >= 200_000);
        assert!(
            failures.is_empty(),
            "oracle mismatches:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn parser_handles_huge_and_deep_inputs() {
        let mb = 1 << 20;
        let long_valid = "a".repeat(mb);
        let long_text = "x\\\"".repeat(mb / 3);
        // (input, expected outcome)
        let mut cases: Vec<(String, &str)> = vec![
            // 1 MB strings in every field.
            (
                format!(r#"{{"type":"message","target":"bob","payload":"{long_text}"}}"#),
                "ok",
            ),
            (format!(r#"{{"type":"{long_valid}"}}"#), "invalid_message"),
            (
                format!(r#"{{"type":"message","target":"{long_valid}"}}"#),
                "invalid_target",
            ),
            (format!(r#"{{"type":"message","id":"{long_text}"}}"#), "ok"),
            (format!(r#"{{"type":"message","{long_valid}":1}}"#), "ok"),
            (format!("{}{{\"type\":\"ping\"}}", " ".repeat(mb)), "ping"),
            (format!("{{\"type\":\"ping\"}}{}", "\n".repeat(mb)), "ping"),
            ("{".repeat(mb), "invalid_message"),
            ("\"".repeat(mb), "invalid_message"),
            // Huge numbers are JSON numbers: relayed untouched, echoed as ids.
            (r#"{"type":"message","payload":1e999999}"#.into(), "ok"),
            (
                r#"{"type":"message","payload":-1E+999999999999}"#.into(),
                "ok",
            ),
            (
                r#"{"type":"message","payload":18446744073709551616000}"#.into(),
                "ok",
            ),
            (
                format!(r#"{{"type":"message","payload":{}}}"#, "9".repeat(mb)),
                "ok",
            ),
            (
                r#"{"type":"message","id":1e999999,"extra":1e999999}"#.into(),
                "ok",
            ),
            (
                r#"{"type":1e999999,"id":18446744073709551616000}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","target":1e999}"#.into(),
                "invalid_message",
            ),
            // Not numbers.
            (
                r#"{"type":"message","payload":01}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","payload":NaN}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","payload":Infinity}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","payload":.5}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","payload":+1}"#.into(),
                "invalid_message",
            ),
            (
                r#"{"type":"message","payload":0x10}"#.into(),
                "invalid_message",
            ),
            // Deep nesting: 100k brackets at the top, in the payload, unclosed, in a string.
            ("[".repeat(100_000), "invalid_message"),
            (nested("[", "]", 100_000), "invalid_message"),
            (
                format!(r#"{{"type":"message","payload":{}}}"#, "[".repeat(100_000)),
                "invalid_message",
            ),
            (
                format!(
                    r#"{{"type":"message","payload":{}}}"#,
                    nested("[", "]", 100_000)
                ),
                "invalid_message",
            ),
            (
                format!(
                    r#"{{"type":"message","payload":{}1{}}}"#,
                    "{\"a\":".repeat(100_000),
                    "}".repeat(100_000)
                ),
                "invalid_message",
            ),
            (
                format!(
                    r#"{{"type":"message","payload":"{}"}}"#,
                    "[{".repeat(100_000)
                ),
                "ok",
            ),
            (
                format!(r#"{{"type":"message","payload":"\"{}"}}"#, "[".repeat(100)),
                "ok",
            ),
            // Exactly at the limit (the frame object counts as 1) and one past it.
            (
                format!(r#"{{"type":"message","payload":{}}}"#, nested("[", "]", 63)),
                "ok",
            ),
            (
                format!(r#"{{"type":"message","payload":{}}}"#, nested("[", "]", 64)),
                "invalid_message",
            ),
            (
                format!(
                    r#"{{"type":"message","payload":{}1{}}}"#,
                    "{\"k\":".repeat(63),
                    "}".repeat(63)
                ),
                "ok",
            ),
            (
                format!(
                    r#"{{"type":"message","payload":{}1{}}}"#,
                    "{\"k\":".repeat(64),
                    "}".repeat(64)
                ),
                "invalid_message",
            ),
            (
                format!(r#"{{"type":"message","extra":{}}}"#, nested("[", "]", 64)),
                "invalid_message",
            ),
            (
                format!(r#"{{"type":"message","id":{}}}"#, nested("[", "]", 64)),
                "invalid_message",
            ),
            // Nested objects in the payload, escapes in names.
            (
                r#"{"type":"message","payload":{"a":{"b":{"c":[{"d":{}}]}}}}"#.into(),
                "ok",
            ),
            (
                r#"{"type":"mess\u0061ge","target":"b\u006fb"}"#.into(),
                "ok",
            ),
            // Duplicate keys and trailing garbage.
            (r#"{"type":"message"} x"#.into(), "invalid_message"),
            (r#"{"type":"message"}{}"#.into(), "invalid_message"),
            (String::new(), "invalid_message"),
            ("\u{0}".into(), "invalid_message"),
        ];
        // 1 MB of random bytes, lossily decoded.
        let mut rng = Rng(42);
        let bytes: Vec<u8> = (0..mb).map(|_| rng.next() as u8).collect();
        cases.push((
            format!("{{{}", String::from_utf8_lossy(&bytes)),
            "invalid_message",
        ));

        let mut failures = Vec::new();
        for (input, expected) in &cases {
            check_invariants(input);
            let got = outcome(input);
            if got != *expected {
                failures.push(format!(
                    "expected {expected}, got {got}: {}",
                    truncate(input)
                ));
            }
        }
        // The huge-number id is echoed verbatim.
        match parse_client_frame(r#"{"type":"Bad","id":1e999999,"target":"x y"}"#) {
            Err(r) => {
                assert_eq!(r.id.map(|raw| raw.get()), Some("1e999999"), "echoed id");
                assert_eq!(r.target.as_deref(), Some("x y"), "echoed target");
            }
            Ok(_) => failures.push("a bad type was accepted".into()),
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// `n` times `open`, then `n` times `close`.
    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn duplicate_keys_never_panic() {
        for text in [
            r#"{"type":"message","type":"ping"}"#,
            r#"{"target":"a","target":5,"type":"message"}"#,
            r#"{"id":1,"id":{},"type":"message"}"#,
            r#"{"payload":1,"payload":[],"type":"message","target":"bob"}"#,
        ] {
            check_invariants(text);
        }
    }
}
