//! Security, room policies (PROTOCOL.md sections 6 and 9): password and capacity
//! rooms (refused joins leave no trace in Redis), moderated rooms whose roles come
//! from the hosts list or from the token's role claim.
//!
//! Cluster tests send admin requests to the node that does not hold the users, so
//! that every action is proven to work across nodes.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::security::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Starts a keyspace watch on every key of the cluster (Redis engine only).
async fn watch_writes(c: &Cluster) -> Option<KeyspaceWatch> {
    if !c.is_redis() {
        return None;
    }
    Some(KeyspaceWatch::start(c.redis_server(), &format!("{}*", c.prefix())).await)
}

/// Asserts that the watch saw no write attributable to rejected connections of
/// `rejected` to `room`.
#[track_caller]
fn assert_no_rejected_writes(
    watch: &Option<KeyspaceWatch>,
    c: &Cluster,
    room: &str,
    rejected: &str,
) {
    if let Some(watch) = watch {
        let writes = rejected_writes(&watch.events(), c.prefix(), room, rejected);
        assert!(
            writes.is_empty(),
            "rejected connections of {rejected} wrote to Redis: {writes:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Password and capacity
// ---------------------------------------------------------------------------

both_engines!(
    password_rooms_refuse_every_wrong_password,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    password_room
);

/// A password room: missing or wrong passwords get forbidden + 4403 every time (20 in a row), the right one joins; the password is never returned, logged or stored in clear (argon2 in Redis).
async fn password_room(c: &Cluster) {
    let room = room_id();
    let password = "p@ss w/rd&x=1";
    let right = format!("password={}", encode_query(password));
    let created = create_room(c.node(0), json!({"room_id": room, "password": password})).await;
    assert_room(&created, &room, 0, true, false, None, true);
    assert!(
        !created.to_string().contains(password),
        "POST /rooms returns the password"
    );

    let (mut alice, alice_user) = join_with(c.node(1), &room, "alice", &right, &[]).await;
    assert_user(&alice_user, "alice", &room);
    let watch = watch_writes(c).await;
    rejected(
        c.node(0),
        &room,
        "bob",
        "",
        &[],
        ("forbidden", 4403),
        "no password",
    )
    .await;
    rejected(
        c.node(1),
        &room,
        "bob",
        "password=",
        &[],
        ("forbidden", 4403),
        "empty password",
    )
    .await;
    for i in 0..20 {
        let query = format!("password={}", encode_query(&format!("{password}{i}")));
        let case = format!("wrong password #{}", i + 1);
        rejected(
            c.node(i % 2),
            &room,
            "bob",
            &query,
            &[],
            ("forbidden", 4403),
            &case,
        )
        .await;
    }
    let prefix_only = format!("password={}", encode_query(&password[..5]));
    rejected(
        c.node(0),
        &room,
        "bob",
        &prefix_only,
        &[],
        ("forbidden", 4403),
        "password prefix",
    )
    .await;
    alice.expect_silence(QUIET).await;
    assert_no_rejected_writes(&watch, c, &room, "bob");

    let (_bob, bob_user) = join_with(c.node(0), &room, "bob", &right, &[]).await;
    assert_user(&bob_user, "bob", &room);
    alice.expect_frame(&user_joined(&bob_user)).await;

    let (status, read) = admin(c.node(1), "GET", &format!("/rooms/{room}"), None).await;
    assert_eq!(status, 200, "GET /rooms/{room} (body {read})");
    assert_room(&read, &room, 2, true, false, None, true);

    let encoded = encode_query(password);
    for node in [c.node(0), c.node(1)] {
        let log = node.log();
        assert!(
            !log.contains(password) && !log.contains(&encoded),
            "node {} logged the room password:\n{log}",
            node.node_id()
        );
    }
    if c.is_redis() {
        let dump = c.redis_server().dump(&format!("{}*", c.prefix()));
        let leaks: Vec<&(String, String)> = dump
            .iter()
            .filter(|(key, content)| key.contains(password) || content.contains(password))
            .collect();
        assert!(
            leaks.is_empty(),
            "the plain password is in Redis: {leaks:?}"
        );
        assert!(
            dump.iter()
                .any(|(_, content)| content.lines().any(|l| l.starts_with("$argon2"))),
            "no argon2 hash ($argon2...) stored in Redis: {dump:?}"
        );
    }
}

both_engines!(
    full_rooms_refuse_newcomers_but_not_replacements,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    room_capacity
);

/// max_users=2: a third user gets room_full + 4403 on any node and nobody is notified; a member reconnecting (replacement) is not an extra member; a freed seat can be taken.
async fn room_capacity(c: &Cluster) {
    let room = room_id();
    let created = create_room(c.node(1), json!({"room_id": room, "max_users": 2})).await;
    assert_room(&created, &room, 0, false, false, Some(2), true);
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let watch = watch_writes(c).await;
    rejected(
        c.node(0),
        &room,
        "carol",
        "",
        &[],
        ("room_full", 4403),
        "third user on node 0",
    )
    .await;
    rejected(
        c.node(1),
        &room,
        "carol",
        "",
        &[],
        ("room_full", 4403),
        "third user on node 1",
    )
    .await;
    expect_silence_all(&mut [&mut alice, &mut bob], QUIET).await;
    assert_no_rejected_writes(&watch, c, &room, "carol");
    let (status, read) = admin(c.node(0), "GET", &format!("/rooms/{room}"), None).await;
    assert_eq!(status, 200, "GET /rooms/{room} (body {read})");
    assert_room(&read, &room, 2, false, false, Some(2), true);

    // alice reconnects on the other node: a replacement, not a third member.
    let (mut alice2, frame) = TestClient::connect_join(c.node(1), &room, "alice").await;
    let alice2_user = assert_room_users(&frame, &room, "alice", &[&bob_user]);
    alice.expect_error_then_close("replaced", 4409).await;
    bob.expect_frame(&user_joined(&alice2_user)).await;

    bob.close().await;
    alice2.expect_frame(&user_left("bob", &room, "left")).await;
    let (_carol, carol_user) = join(c.node(0), &room, "carol").await;
    alice2.expect_frame(&user_joined(&carol_user)).await;
    rejected(
        c.node(1),
        &room,
        "dave",
        "",
        &[],
        ("room_full", 4403),
        "full again",
    )
    .await;
    alice2.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------
// Moderated rooms
// ---------------------------------------------------------------------------

both_engines!(
    moderated_rooms_let_only_hosts_publish,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    moderated_by_hosts
);

/// AUTH_MODE=none, moderated room with hosts ["host1"]: roles appear everywhere; audience gets forbidden (id/target echoed, nothing relayed, connection open) for sdp_offer with or without a valid target and for broadcasts, and may answer, send candidates and direct messages.
async fn moderated_by_hosts(c: &Cluster) {
    let room = room_id();
    let created = create_room(
        c.node(1),
        json!({"room_id": room, "moderated": true, "hosts": ["host1"]}),
    )
    .await;
    assert_room(&created, &room, 0, false, true, None, true);

    let (mut host, host_user) = join_with(c.node(0), &room, "host1", "", &[]).await;
    assert_user_with_role(&host_user, "host1", &room, "host");
    let (mut aud1, frame) = TestClient::connect_join(c.node(1), &room, "aud1").await;
    let aud1_user = frame["payload"]["self"].clone();
    assert_user_with_role(&aud1_user, "aud1", &room, "audience");
    assert_eq!(
        frame["payload"]["users"],
        json!([host_user]),
        "room_users of aud1: {frame}"
    );
    host.expect_frame(&user_joined(&aud1_user)).await;
    let (mut aud2, aud2_user) = join_with(c.node(0), &room, "aud2", "", &[]).await;
    assert_user_with_role(&aud2_user, "aud2", &room, "audience");
    host.expect_frame(&user_joined(&aud2_user)).await;
    aud1.expect_frame(&user_joined(&aud2_user)).await;

    assert_rest_members(c.node(1), &room, &[&host_user, &aud1_user, &aud2_user]).await;
    assert_rest_user(c.node(0), &aud1_user, c.node(1).node_id()).await;
    assert_rest_user(c.node(1), &host_user, c.node(0).node_id()).await;

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    let refused = [
        (
            json!({"type": "sdp_offer", "target": "host1", "payload": offer, "id": 5}),
            Some(json!(5)),
            Some("host1"),
        ),
        (
            json!({"type": "sdp_offer", "payload": offer, "id": "no-target"}),
            Some(json!("no-target")),
            None,
        ),
        (
            json!({"type": "sdp_offer", "target": "nobody", "payload": offer, "id": 6}),
            Some(json!(6)),
            Some("nobody"),
        ),
        (
            json!({"type": "sdp_offer", "target": "aud1", "payload": offer}),
            None,
            Some("aud1"),
        ),
        (
            json!({"type": "message", "payload": "hello all", "id": 8}),
            Some(json!(8)),
            None,
        ),
        (
            json!({"type": "broadcast", "target": null, "payload": 1}),
            None,
            None,
        ),
        (
            json!({"type": "chat", "payload": {"text": "hi"}, "id": "c"}),
            Some(json!("c")),
            None,
        ),
    ];
    for (frame, id, target) in refused {
        aud1.send_json(frame).await;
        aud1.expect_error_echo("forbidden", id, target).await;
    }
    expect_silence_all(&mut [&mut host, &mut aud2], QUIET).await;

    // What audience may send.
    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    aud1.send_json(json!({"type": "sdp_answer", "target": "host1", "payload": answer}))
        .await;
    host.expect_frame(&relayed("sdp_answer", "aud1", Some("host1"), answer))
        .await;
    let candidate = json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    aud1.send_json(json!({"type": "ice_candidate", "target": "host1", "payload": candidate}))
        .await;
    host.expect_frame(&relayed("ice_candidate", "aud1", Some("host1"), candidate))
        .await;
    aud1.send_json(json!({"type": "message", "target": "aud2", "payload": "psst"}))
        .await;
    aud2.expect_frame(&relayed("message", "aud1", Some("aud2"), json!("psst")))
        .await;

    // What hosts may send.
    host.send_json(json!({"type": "sdp_offer", "target": "aud1", "payload": offer}))
        .await;
    aud1.expect_frame(&relayed("sdp_offer", "host1", Some("aud1"), offer.clone()))
        .await;
    host.send_json(json!({"type": "broadcast", "payload": "welcome"}))
        .await;
    let welcome = relayed("broadcast", "host1", None, json!("welcome"));
    aud1.expect_frame(&welcome).await;
    aud2.expect_frame(&welcome).await;

    // The audience connection is still open.
    aud1.send_json(json!({"type": "ping", "payload": 1})).await;
    aud1.expect_frame(&json!({"type": "pong", "payload": 1}))
        .await;
    expect_silence_all(&mut [&mut host, &mut aud1, &mut aud2], QUIET).await;
}

/// jwt mode: in a moderated room the role comes from the token (host → host; audience, other or missing → audience, even for a user in the hosts list); in an ordinary room everyone is a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_role_claim_sets_the_role_in_moderated_rooms() {
    let c = Cluster::redis_with(
        2,
        &[
            ("ADMIN_TOKEN", ADMIN),
            ("AUTH_MODE", "jwt"),
            ("JWT_SECRET", SECRET),
        ],
    )
    .await;
    let room = room_id();
    create_room(
        c.node(1),
        json!({"room_id": room, "moderated": true, "hosts": ["carol"]}),
    )
    .await;
    let with_role = |user: &str, room: &str, role: Option<&str>| {
        let mut claims = claims(user, room);
        if let Some(role) = role {
            claims["role"] = json!(role);
        }
        token(&claims)
    };
    let (mut host, host_user) = join_token(
        c.node(0),
        &room,
        "h",
        &with_role("h", &room, Some("host")),
        "host",
    )
    .await;
    let (mut aud, aud_user) = join_token(
        c.node(1),
        &room,
        "a",
        &with_role("a", &room, Some("audience")),
        "audience",
    )
    .await;
    host.expect_frame(&user_joined(&aud_user)).await;
    // (client, USER) of the audience members that joined after "a".
    let mut others: Vec<(TestClient, Value)> = Vec::new();
    for (i, (user, role)) in [
        ("carol", None),
        ("dave", Some("admin")),
        ("erin", Some("peer")),
    ]
    .into_iter()
    .enumerate()
    {
        let (client, user_obj) = join_token(
            c.node(i % 2),
            &room,
            user,
            &with_role(user, &room, role),
            "audience",
        )
        .await;
        host.expect_frame(&user_joined(&user_obj)).await;
        aud.expect_frame(&user_joined(&user_obj)).await;
        for (earlier, _) in &mut others {
            earlier.expect_frame(&user_joined(&user_obj)).await;
        }
        others.push((client, user_obj));
    }
    // A host token minted by POST /tokens.
    let (status, body) = admin(
        c.node(0),
        "POST",
        "/tokens",
        Some(json!({"user_id": "frank", "room_id": room, "role": "host"})),
    )
    .await;
    assert_eq!(status, 201, "POST /tokens role host (body {body})");
    let minted = body["token"].as_str().expect("token");
    let (_frank, frank_user) = join_token(c.node(1), &room, "frank", minted, "host").await;
    host.expect_frame(&user_joined(&frank_user)).await;
    aud.expect_frame(&user_joined(&frank_user)).await;
    for (client, _) in &mut others {
        client.expect_frame(&user_joined(&frank_user)).await;
    }

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    aud.send_json(json!({"type": "sdp_offer", "target": "h", "payload": offer, "id": 1}))
        .await;
    aud.expect_error_echo("forbidden", Some(json!(1)), Some("h"))
        .await;
    let (carol, _) = &mut others[0];
    carol
        .send_json(json!({"type": "sdp_offer", "target": "h", "payload": offer}))
        .await;
    carol.expect_error_echo("forbidden", None, Some("h")).await;
    host.expect_silence(QUIET).await;
    host.send_json(json!({"type": "sdp_offer", "target": "a", "payload": offer}))
        .await;
    aud.expect_frame(&relayed("sdp_offer", "h", Some("a"), offer.clone()))
        .await;
    let mut everyone = vec![&host_user, &aud_user, &frank_user];
    everyone.extend(others.iter().map(|(_, user)| user));
    assert_members_with(c.node(0), &room, ADMIN, &everyone).await;
    let (mut carol, _) = others.remove(0);
    expect_silence_all(&mut [&mut host, &mut aud, &mut carol], QUIET).await;

    // Ordinary room: peers whatever the token says.
    let plain = room_id();
    let (_p1, _) = join_token(
        c.node(0),
        &plain,
        "p1",
        &with_role("p1", &plain, Some("host")),
        "peer",
    )
    .await;
    let (_p2, _) = join_token(
        c.node(1),
        &plain,
        "p2",
        &with_role("p2", &plain, Some("audience")),
        "peer",
    )
    .await;
}
