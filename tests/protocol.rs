//! The client protocol and HTTP API of PROTOCOL.md (sections 1-6 and 8), checked
//! frame by frame. Every test body runs twice through `both_engines!`: once on a
//! standalone node, once on a Redis cluster with its clients spread over the nodes.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------
// Join sequence
// ---------------------------------------------------------------------------

both_engines!(
    join_sends_room_users_then_announces_newcomer,
    nodes = 3,
    join_sequence
);
on_redis_cluster!(join_sequence_on_redis_cluster, nodes = 3, join_sequence);

/// Each newcomer first gets one room_users listing the members already there; each member gets user_joined with its USER.
async fn join_sequence(c: &Cluster) {
    let room = room_id();
    let (mut alice, frame) = TestClient::connect_join(c.node(0), &room, "alice").await;
    let alice_user = assert_room_users(&frame, &room, "alice", &[]);

    let (mut bob, frame) = TestClient::connect_join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;

    let (mut carol, frame) = TestClient::connect_join(c.node(2), &room, "carol").await;
    let carol_user = assert_room_users(&frame, &room, "carol", &[&alice_user, &bob_user]);
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    expect_silence_all(&mut [&mut alice, &mut bob, &mut carol], QUIET).await;
}

// ---------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------

both_engines!(
    signaling_is_relayed_untouched_with_server_set_from,
    relay_signaling
);
on_redis_cluster!(relay_signaling_on_redis_cluster, relay_signaling);

/// sdp_offer, sdp_answer, ice_candidate and app messages reach their target exactly as sent, `from` set by the server, `id` dropped.
async fn relay_signaling(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;

    let offer = json!({
        "type": "offer",
        "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    });
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": &offer, "id": 17, "from": "mallory", "extra": [1]}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;

    let answer = json!({"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"});
    bob.send_json(json!({"type": "sdp_answer", "target": "alice", "payload": &answer, "id": "a-1", "from": "alice"}))
        .await;
    alice
        .expect_frame(&relayed("sdp_answer", "bob", Some("alice"), answer))
        .await;

    let candidate = json!({
        "candidate": "candidate:842163049 1 udp 1677729535 192.0.2.10 3478 typ srflx raddr 0.0.0.0 rport 0 generation 0",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "sEMT"
    });
    alice
        .send_json(
            json!({"type": "ice_candidate", "target": "bob", "payload": &candidate, "id": "c1"}),
        )
        .await;
    bob.expect_frame(&relayed("ice_candidate", "alice", Some("bob"), candidate))
        .await;

    // End of candidates: an explicit null payload is relayed as null.
    alice
        .send_json(json!({"type": "ice_candidate", "target": "bob", "payload": null}))
        .await;
    bob.expect_frame(&relayed("ice_candidate", "alice", Some("bob"), Value::Null))
        .await;

    // No payload at all: relayed with payload null.
    bob.send_json(json!({"type": "message", "target": "alice"}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", Some("alice"), Value::Null))
        .await;

    // An app-defined type is relayed like `message`; the payload survives byte-exotic values.
    let app = json!({
        "name": "ünïcødé \"quoted\" \\ / \u{1F600}",
        "size": 12345678901234567u64,
        "neg": -42,
        "ratio": 1.5,
        "nested": [null, true, false, {"a": []}, {}],
        "empty": ""
    });
    alice
        .send_json(json!({"type": "file_offer", "target": "bob", "payload": &app}))
        .await;
    bob.expect_frame(&relayed("file_offer", "alice", Some("bob"), app))
        .await;

    // A scalar payload.
    bob.send_json(json!({"type": "message", "target": "alice", "payload": "hi"}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", Some("alice"), json!("hi")))
        .await;

    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

// ---------------------------------------------------------------------------
// Broadcast
// ---------------------------------------------------------------------------

both_engines!(broadcast_reaches_every_other_member, nodes = 3, broadcast);
on_redis_cluster!(broadcast_on_redis_cluster, nodes = 3, broadcast);

/// A message without target (absent or null) reaches every other member of the room only, without a `target` key.
async fn broadcast(c: &Cluster) {
    let room = room_id();
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(c.node(2), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;
    // A member of another room on the same nodes must hear nothing.
    let (mut dave, _) = join(c.node(1), &room_id(), "dave").await;

    alice
        .send_json(json!({"type": "broadcast", "payload": {"hello": 1}, "id": 3}))
        .await;
    let expected = relayed("broadcast", "alice", None, json!({"hello": 1}));
    bob.expect_frame(&expected).await;
    carol.expect_frame(&expected).await;

    bob.send_json(json!({"type": "broadcast", "target": null}))
        .await;
    let expected = relayed("broadcast", "bob", None, Value::Null);
    alice.expect_frame(&expected).await;
    carol.expect_frame(&expected).await;

    // Any type without a target is a broadcast too.
    carol
        .send_json(json!({"type": "message", "payload": "to all"}))
        .await;
    let expected = relayed("message", "carol", None, json!("to all"));
    alice.expect_frame(&expected).await;
    bob.expect_frame(&expected).await;

    expect_silence_all(&mut [&mut alice, &mut bob, &mut carol, &mut dave], QUIET).await;
}

// ---------------------------------------------------------------------------
// Ping
// ---------------------------------------------------------------------------

both_engines!(ping_is_answered_with_pong_to_sender_only, ping_pong);

/// ping gets a pong with the same payload (null when absent), to the sender only, its target ignored.
async fn ping_pong(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;

    alice
        .send_json(json!({"type": "ping", "payload": {"t": 123, "s": "x"}}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": {"t": 123, "s": "x"}}))
        .await;

    alice.send_json(json!({"type": "ping"})).await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": null}))
        .await;

    alice
        .send_json(json!({"type": "ping", "target": "bob", "payload": 7, "id": 1}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": 7}))
        .await;

    alice
        .send_json(json!({"type": "ping", "target": "nobody", "payload": [1, 2]}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": [1, 2]}))
        .await;

    bob.send_json(json!({"type": "ping", "payload": "b"})).await;
    bob.expect_frame(&json!({"type": "pong", "payload": "b"}))
        .await;

    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

// ---------------------------------------------------------------------------
// Non-fatal errors
// ---------------------------------------------------------------------------

/// A frame a client may send, text or binary.
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    fn describe(&self) -> String {
        match self {
            Frame::Text(text) => format!("text frame {text}"),
            Frame::Binary(bytes) => format!("binary frame of {} bytes", bytes.len()),
        }
    }
}

async fn send_frame(client: &mut TestClient, frame: &Frame) {
    match frame {
        Frame::Text(text) => client.send_text(text).await,
        Frame::Binary(bytes) => client.send_binary(bytes.clone()).await,
    }
}

/// Checks the connection still works: a ping is answered and a message reaches bob.
async fn assert_still_usable(alice: &mut TestClient, bob: &mut TestClient) {
    alice
        .send_json(json!({"type": "ping", "payload": "still here"}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": "still here"}))
        .await;
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": 1}))
        .await;
    bob.expect_frame(&relayed("message", "alice", Some("bob"), json!(1)))
        .await;
}

both_engines!(
    invalid_messages_get_invalid_message_and_keep_the_connection,
    invalid_messages
);

/// Malformed frames each get invalid_message (a valid id and a string target echoed) and the connection stays usable.
async fn invalid_messages(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;
    let text = |v: Value| Frame::Text(v.to_string());

    // (frame, echoed id, echoed target)
    let mut cases: Vec<(Frame, Option<Value>, Option<&str>)> = vec![
        (Frame::Text("not json".into()), None, None),
        (Frame::Text("{\"type\":\"message\",".into()), None, None),
        (Frame::Text("[1,2,3]".into()), None, None),
        (Frame::Text("\"message\"".into()), None, None),
        (Frame::Text("null".into()), None, None),
        (
            Frame::Binary(br#"{"type":"message","target":"bob"}"#.to_vec()),
            None,
            None,
        ),
        (
            text(json!({"type": "Bad-Type", "target": "bob", "id": "x1"})),
            Some(json!("x1")),
            Some("bob"),
        ),
        (text(json!({"type": "1abc", "id": 2})), Some(json!(2)), None),
        (
            text(json!({"type": "a".repeat(33), "id": 3})),
            Some(json!(3)),
            None,
        ),
        (text(json!({"type": "", "id": 4})), Some(json!(4)), None),
        (text(json!({"type": 5, "id": 5})), Some(json!(5)), None),
        (text(json!({"payload": 1, "id": 6})), Some(json!(6)), None),
        (
            text(json!({"type": "message", "target": 5, "id": 7})),
            Some(json!(7)),
            None,
        ),
        (
            text(json!({"type": "message", "target": ["bob"], "id": "t8"})),
            Some(json!("t8")),
            None,
        ),
        (
            text(json!({"type": "message", "target": "bob", "id": {}})),
            None,
            Some("bob"),
        ),
        (
            text(json!({"type": "message", "target": "bob", "id": [1]})),
            None,
            Some("bob"),
        ),
        (
            text(json!({"type": "message", "target": "bob", "id": true})),
            None,
            Some("bob"),
        ),
    ];
    for (i, server_type) in ["room_users", "user_joined", "user_left", "error", "pong"]
        .iter()
        .enumerate()
    {
        let id = format!("s{i}");
        cases.push((
            text(json!({"type": server_type, "id": &id})),
            Some(json!(id)),
            None,
        ));
    }

    // Every case is checked before failing, so one report lists all deviations.
    let mut mismatches = Vec::new();
    for (frame, id, target) in &cases {
        send_frame(&mut alice, frame).await;
        let reply = alice.recv_json().await;
        if let Some(mismatch) = error_echo_mismatch(&reply, "invalid_message", id.clone(), *target)
        {
            mismatches.push(format!("after {}: {mismatch}", frame.describe()));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    bob.expect_silence(QUIET).await;
    assert_still_usable(&mut alice, &mut bob).await;
}

both_engines!(
    missing_target_is_reported_for_signaling_types,
    missing_target
);

/// sdp_offer, sdp_answer and ice_candidate without target (absent or null) get missing_target, id echoed.
async fn missing_target(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;

    alice
        .send_json(
            json!({"type": "sdp_offer", "payload": {"type": "offer", "sdp": "v=0"}, "id": "o1"}),
        )
        .await;
    alice
        .expect_error_echo("missing_target", Some(json!("o1")), None)
        .await;
    alice
        .send_json(json!({"type": "sdp_answer", "target": null, "id": 42}))
        .await;
    alice
        .expect_error_echo("missing_target", Some(json!(42)), None)
        .await;
    alice
        .send_json(json!({"type": "ice_candidate", "payload": null}))
        .await;
    alice.expect_error_echo("missing_target", None, None).await;

    bob.expect_silence(QUIET).await;
    assert_still_usable(&mut alice, &mut bob).await;
}

both_engines!(
    invalid_target_is_reported_for_self_and_bad_ids,
    invalid_target
);

/// A target that is the sender itself or not a valid id gets invalid_target, with id and target echoed.
async fn invalid_target(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;
    let too_long = "a".repeat(65);

    let cases: Vec<(&str, &str, Option<Value>)> = vec![
        ("sdp_offer", "alice", Some(json!("self1"))),
        ("message", "alice", None),
        ("message", "bad id!", Some(json!(9))),
        ("ice_candidate", "a:b", Some(json!("c"))),
        ("message", "", Some(json!(10))),
        ("message", &too_long, Some(json!(11))),
    ];
    for (kind, target, id) in cases {
        let mut frame = json!({"type": kind, "target": target, "payload": {"x": 1}});
        if let Some(id) = &id {
            frame["id"] = id.clone();
        }
        alice.send_json(frame).await;
        alice
            .expect_error_echo("invalid_target", id, Some(target))
            .await;
    }

    bob.expect_silence(QUIET).await;
    assert_still_usable(&mut alice, &mut bob).await;
}

both_engines!(
    target_not_found_for_absent_users_and_other_rooms,
    target_not_found
);

/// A valid target that is not in the sender's room (absent, or in another room) gets target_not_found and nothing is delivered.
async fn target_not_found(c: &Cluster) {
    let (_room, mut alice, _, mut bob, _) = pair(c).await;
    let (mut eve, _) = join(c.node(1), &room_id(), "eve").await;

    alice
        .send_json(json!({"type": "sdp_offer", "target": "nobody", "payload": {}, "id": "n1"}))
        .await;
    alice
        .expect_error_echo("target_not_found", Some(json!("n1")), Some("nobody"))
        .await;
    alice
        .send_json(json!({"type": "message", "target": "eve", "payload": "psst", "id": 12}))
        .await;
    alice
        .expect_error_echo("target_not_found", Some(json!(12)), Some("eve"))
        .await;
    alice
        .send_json(json!({"type": "ice_candidate", "target": "eve", "payload": null}))
        .await;
    alice
        .expect_error_echo("target_not_found", None, Some("eve"))
        .await;

    // The sender's node logs it at WARN, naming the target or the error.
    let logged = c
        .node(0)
        .wait_for_log_line(
            |line| {
                line.contains("WARN")
                    && (line.contains("nobody")
                        || line.contains("not found")
                        || line.contains("target_not_found"))
            },
            TIMEOUT,
        )
        .await;
    assert!(
        logged,
        "no WARN line about target nobody in the log of {}",
        c.node(0).node_id()
    );

    // eve cannot reach alice either.
    eve.send_json(json!({"type": "message", "target": "alice", "payload": 1}))
        .await;
    eve.expect_error_echo("target_not_found", None, Some("alice"))
        .await;

    expect_silence_all(&mut [&mut bob, &mut eve, &mut alice], QUIET).await;
    assert_still_usable(&mut alice, &mut bob).await;
}

// ---------------------------------------------------------------------------
// Invalid ids in the URL
// ---------------------------------------------------------------------------

both_engines!(invalid_ids_in_url_are_rejected_with_4400, invalid_url_ids);

/// A connection with an invalid room or user id gets invalid_id then close 4400, and leaves no trace.
async fn invalid_url_ids(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let too_long = "u".repeat(65);

    let bad: Vec<(String, String)> = vec![
        ("a%3Ab".into(), "bob".into()),
        ("%7Broom%7D".into(), "bob".into()),
        ("r%20oom".into(), "bob".into()),
        ("r%C3%A9".into(), "bob".into()),
        ("r".repeat(65), "bob".into()),
        (room.clone(), too_long.clone()),
        (room.clone(), "bad%20user".into()),
        (room.clone(), "a%3Ab".into()),
        (room.clone(), "%C3%BC".into()),
    ];
    for (bad_room, bad_user) in &bad {
        let mut client = TestClient::connect(&c.node(1).ws_url(bad_room, bad_user)).await;
        client.expect_error_then_close("invalid_id", 4400).await;
    }

    alice.expect_silence(QUIET).await;
    assert_rest_members(c.node(0), &room, &[&alice_user]).await;
    assert_rest_members(c.node(1), &room, &[&alice_user]).await;
    let (status, body) = c.node(1).get(&format!("/users/{too_long}")).await;
    assert_http_error(status, &body, 400, "invalid_id", "GET /users/<65 chars>");
    if c.is_redis() {
        // Nothing was written for the rejected connections.
        let redis = c.redis_server();
        let users = redis.keys(&format!("{}user:*", c.prefix()));
        let expected: std::collections::BTreeSet<String> = [c.user_key("alice")].into();
        assert_eq!(users, expected, "user keys after rejected connections");
        let members = redis.smembers(&c.room_key(&room));
        assert_eq!(
            members,
            ["alice".to_owned()].into(),
            "room members after rejected connections"
        );
    }

    // The longest valid id is accepted: the rejection above is about validity, not length alone.
    let longest = "u".repeat(64);
    let (_client, longest_user) = join(c.node(1), &room, &longest).await;
    alice.expect_frame(&user_joined(&longest_user)).await;
}

// ---------------------------------------------------------------------------
// Leave and replacement
// ---------------------------------------------------------------------------

both_engines!(closing_the_socket_announces_user_left, leave);
on_redis_cluster!(leave_on_redis_cluster, leave);

/// A member that closes its socket is announced as user_left "left" and vanishes from the REST API.
async fn leave(c: &Cluster) {
    let (room, mut alice, alice_user, bob, _) = pair(c).await;
    let (mut carol, carol_user) = join(c.node(0), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;

    bob.close().await;
    alice.expect_frame(&user_left("bob", &room, "left")).await;
    carol.expect_frame(&user_left("bob", &room, "left")).await;

    assert_rest_members(c.node(0), &room, &[&alice_user, &carol_user]).await;
    assert_rest_members(c.node(1), &room, &[&alice_user, &carol_user]).await;
    let (status, body) = c.node(1).get("/users/bob").await;
    assert_http_error(
        status,
        &body,
        404,
        "user_not_found",
        "GET /users/bob after leaving",
    );

    // The last members leave: the room is empty.
    carol.close().await;
    alice.expect_frame(&user_left("carol", &room, "left")).await;
    alice.close().await;
    // Nobody is left to be told, so poll (bounded) for the empty room.
    let node = c.node(1);
    let path = format!("/rooms/{room}/users");
    let path = &path;
    eventually(
        TIMEOUT,
        "the room to be empty after everyone left",
        move || async move { node.get(path).await.1["count"] == 0 },
    )
    .await;
    assert_rest_members(node, &room, &[]).await;
}

both_engines!(
    dropped_connection_is_announced_as_user_left,
    dropped_connection
);

/// A member whose TCP connection ends without a close frame is announced as user_left ("left" or "timeout") and unlisted.
async fn dropped_connection(c: &Cluster) {
    let (room, mut alice, alice_user, bob, _) = pair(c).await;

    drop(bob);
    let frame = alice.expect_type("user_left").await;
    let reason = frame["payload"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "left" || reason == "timeout",
        "reason for a dropped connection: {frame}"
    );
    assert_eq!(frame, user_left("bob", &room, reason));
    assert_rest_members(c.node(1), &room, &[&alice_user]).await;
    alice.expect_silence(QUIET).await;
}

both_engines!(
    same_room_reconnect_replaces_the_old_session,
    replace_same_room
);

/// The same user_id connecting again in its room closes the old socket with replaced + 4409; members see user_joined only.
async fn replace_same_room(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut old_bob, old_bob_user) = join(c.node(0), &room, "bob").await;
    alice.expect_frame(&user_joined(&old_bob_user)).await;

    let (mut bob, frame) = TestClient::connect_join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    old_bob.expect_error_then_close("replaced", 4409).await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    alice.expect_silence(QUIET).await;

    // The new session works both ways.
    alice
        .send_json(
            json!({"type": "sdp_offer", "target": "bob", "payload": {"type": "offer", "sdp": "x"}}),
        )
        .await;
    bob.expect_frame(&relayed(
        "sdp_offer",
        "alice",
        Some("bob"),
        json!({"type": "offer", "sdp": "x"}),
    ))
    .await;
    bob.send_json(
        json!({"type": "sdp_answer", "target": "alice", "payload": {"type": "answer", "sdp": "y"}}),
    )
    .await;
    alice
        .expect_frame(&relayed(
            "sdp_answer",
            "bob",
            Some("alice"),
            json!({"type": "answer", "sdp": "y"}),
        ))
        .await;

    assert_rest_members(c.node(0), &room, &[&alice_user, &bob_user]).await;
    assert_rest_user(c.node(0), &bob_user, c.node(1).node_id()).await;
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
}

both_engines!(
    reconnect_into_another_room_announces_replaced,
    replace_other_room
);
on_redis_cluster!(replace_other_room_on_redis_cluster, replace_other_room);

/// A user reconnecting into another room is replaced (4409), and its old room sees user_left "replaced".
async fn replace_other_room(c: &Cluster) {
    let first = room_id();
    let second = room_id();
    let (mut alice, alice_user) = join(c.node(0), &first, "alice").await;
    let (mut old_bob, old_bob_user) = join(c.node(0), &first, "bob").await;
    alice.expect_frame(&user_joined(&old_bob_user)).await;
    let (mut carol, carol_user) = join(c.node(1), &second, "carol").await;

    let (mut bob, frame) = TestClient::connect_join(c.node(1), &second, "bob").await;
    let bob_user = assert_room_users(&frame, &second, "bob", &[&carol_user]);
    old_bob.expect_error_then_close("replaced", 4409).await;
    alice
        .expect_frame(&user_left("bob", &first, "replaced"))
        .await;
    carol.expect_frame(&user_joined(&bob_user)).await;

    assert_rest_members(c.node(1), &first, &[&alice_user]).await;
    assert_rest_members(c.node(0), &second, &[&carol_user, &bob_user]).await;
    assert_rest_user(c.node(0), &bob_user, c.node(1).node_id()).await;

    bob.send_json(json!({"type": "message", "target": "carol", "payload": "hi"}))
        .await;
    carol
        .expect_frame(&relayed("message", "bob", Some("carol"), json!("hi")))
        .await;
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": "gone?"}))
        .await;
    alice
        .expect_error_echo("target_not_found", None, Some("bob"))
        .await;
    expect_silence_all(&mut [&mut alice, &mut bob, &mut carol], QUIET).await;
}

// ---------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------

both_engines!(rest_api_reports_members_users_and_health, rest_api);
on_redis_cluster!(rest_api_on_redis_cluster, rest_api);

/// GET /rooms/{r}/users, /users/{u}, /healthz and /readyz answer the documented shapes and errors on every node.
async fn rest_api(c: &Cluster) {
    let (room, _alice, alice_user, _bob, bob_user) = pair(c).await;

    for i in 0..2 {
        let node = c.node(i);
        assert_rest_members(node, &room, &[&alice_user, &bob_user]).await;
        assert_rest_user(node, &alice_user, c.node(0).node_id()).await;
        assert_rest_user(node, &bob_user, c.node(1).node_id()).await;
    }

    let node = c.node(1);
    let unknown = room_id();
    let (status, body) = node.get(&format!("/rooms/{unknown}/users")).await;
    assert_eq!(status, 200, "unknown room: status (body {body})");
    assert_eq!(
        body,
        json!({"room_id": unknown, "users": [], "count": 0}),
        "unknown room"
    );

    for bad in ["a%3Ab", "bad%20id", "%7Bx%7D", &"r".repeat(65)] {
        let (status, body) = node.get(&format!("/rooms/{bad}/users")).await;
        assert_http_error(
            status,
            &body,
            400,
            "invalid_id",
            &format!("GET /rooms/{bad}/users"),
        );
        let (status, body) = node.get(&format!("/users/{bad}")).await;
        assert_http_error(
            status,
            &body,
            400,
            "invalid_id",
            &format!("GET /users/{bad}"),
        );
    }

    let (status, body) = node.get("/users/nobody").await;
    assert_http_error(status, &body, 404, "user_not_found", "GET /users/nobody");

    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200, "/healthz status (body {body})");
    assert_eq!(body["status"], "ok", "/healthz body {body}");
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "/readyz status (body {body})");
    assert_eq!(body["status"], "ready", "/readyz body {body}");
}

// ---------------------------------------------------------------------------
// Size limit
// ---------------------------------------------------------------------------

both_engines!(
    oversized_frame_closes_with_1009,
    env = [("MAX_MESSAGE_BYTES", "1024")],
    oversized_frame
);

/// A frame over MAX_MESSAGE_BYTES closes the sender with 1009 (no error frame) and the others see user_left "left".
async fn oversized_frame(c: &Cluster) {
    let (room, mut alice, _, mut bob, bob_user) = pair(c).await;

    // Just under the limit passes.
    let fits = "x".repeat(900);
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": &fits}))
        .await;
    bob.expect_frame(&relayed("message", "alice", Some("bob"), json!(fits)))
        .await;

    let too_big = "x".repeat(2000);
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": too_big}))
        .await;
    alice.expect_close(1009).await;
    bob.expect_frame(&user_left("alice", &room, "left")).await;
    bob.expect_silence(QUIET).await;
    assert_rest_members(c.node(0), &room, &[&bob_user]).await;
}
