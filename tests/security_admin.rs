//! Security, the admin REST API (PROTOCOL.md sections 8 and 9): the admin bearer
//! (and the API disabled without ADMIN_TOKEN), rooms created, read, listed and
//! deleted, kicks, and tokens minted by POST /tokens (TTL cap and range, disabled
//! without JWT_SECRET), all acting cluster-wide.
//!
//! Cluster tests send admin requests to the node that does not hold the users, so
//! that every action is proven to work across nodes.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::security::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The claims inside a token (its middle part), unverified.
fn token_claims(token: &str) -> Value {
    let middle = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = URL_SAFE_NO_PAD
        .decode(middle.trim_end_matches('='))
        .expect("JWT claims are base64url");
    serde_json::from_slice(&bytes).expect("JWT claims are JSON")
}

/// Expects the `kicked` error and close 4410, tolerating `user_left` (reason
/// `kicked`) of other members of `room` sent before it.
async fn expect_kicked(client: &mut TestClient, room: &str) {
    for _ in 0..10 {
        let frame = client.recv_json().await;
        if frame["type"] == "user_left" {
            assert_eq!(
                frame["payload"]["room_id"],
                room,
                "{}: user_left before kicked: {frame}",
                client.label()
            );
            assert_eq!(
                frame["payload"]["reason"],
                "kicked",
                "{}: user_left before kicked: {frame}",
                client.label()
            );
            continue;
        }
        if let Some(mismatch) = error_echo_mismatch(&frame, "kicked", None, None) {
            panic!("{}: {mismatch}", client.label());
        }
        client.expect_close(4410).await;
        return;
    }
    panic!("{}: no kicked error among 10 frames", client.label());
}

/// Asserts a valid id per PROTOCOL.md section 1.
#[track_caller]
fn assert_valid_id(id: &Value) {
    let text = id
        .as_str()
        .unwrap_or_else(|| panic!("expected an id string, got {id}"));
    assert!(
        (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
        "{text:?} is not a valid id"
    );
}

// ---------------------------------------------------------------------------
// Admin authorization
// ---------------------------------------------------------------------------

/// One request to every admin endpoint (method, path, body).
fn admin_endpoints(room: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "/rooms".to_owned(), None),
        ("POST", "/rooms".to_owned(), Some(json!({"room_id": room}))),
        ("GET", format!("/rooms/{room}"), None),
        ("DELETE", format!("/rooms/{room}"), None),
        ("DELETE", format!("/rooms/{room}/users/alice"), None),
        (
            "POST",
            "/tokens".to_owned(),
            Some(json!({"user_id": "alice", "room_id": room})),
        ),
    ]
}

/// Without ADMIN_TOKEN every admin endpoint answers 403 admin_disabled whatever is sent, and the node says so at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_disabled_without_admin_token() {
    let c = Cluster::standalone_with(&[("JWT_SECRET", SECRET)]).await;
    let node = c.node(0);
    let room = room_id();
    for (method, path, body) in admin_endpoints(&room) {
        for bearer in [None, Some(""), Some("anything"), Some(ADMIN)] {
            let (status, reply) = node
                .bearer_request(method, &path, bearer, body.as_ref())
                .await;
            assert_http_error(
                status,
                &reply,
                403,
                "admin_disabled",
                &format!("{method} {path} with bearer {bearer:?}"),
            );
        }
    }
    assert!(
        node.wait_for_log_line(
            |line| {
                let line = line.to_lowercase();
                line.contains("admin") && line.contains("disabled")
            },
            TIMEOUT
        )
        .await,
        "no startup log line saying that admin is disabled:\n{}",
        node.log()
    );
    // The open endpoints stay open (AUTH_MODE=none).
    let (status, _) = node.get(&format!("/rooms/{room}/users")).await;
    assert_eq!(status, 200, "GET /rooms/{{id}}/users without admin");
}

both_engines!(
    admin_bearer_is_required_and_compared_exactly,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    admin_bearer
);

/// With ADMIN_TOKEN: no bearer → 401 unauthorized; a wrong, truncated or extended one → 403 forbidden; the right one works.
async fn admin_bearer(c: &Cluster) {
    let room = room_id();
    let truncated = &ADMIN[..ADMIN.len() - 1];
    let extended = format!("{ADMIN}x");
    let upper = ADMIN.to_uppercase();
    for (i, (method, path, body)) in admin_endpoints(&room).into_iter().enumerate() {
        let node = c.node(i % 2);
        let context = format!("{method} {path} on {}", node.node_id());
        let (status, reply) = node
            .bearer_request(method, &path, None, body.as_ref())
            .await;
        assert_http_error(
            status,
            &reply,
            401,
            "unauthorized",
            &format!("{context} without bearer"),
        );
        for wrong in ["wrong", truncated, extended.as_str(), upper.as_str()] {
            let (status, reply) = node
                .bearer_request(method, &path, Some(wrong), body.as_ref())
                .await;
            assert_http_error(
                status,
                &reply,
                403,
                "forbidden",
                &format!("{context} with bearer {wrong:?}"),
            );
        }
    }
    let (status, body) = admin(c.node(1), "GET", "/rooms", None).await;
    assert_eq!(
        status, 200,
        "GET /rooms with the admin bearer (body {body})"
    );
    // None of the refused requests created the room.
    let (status, body) = admin(c.node(0), "GET", &format!("/rooms/{room}"), None).await;
    assert_http_error(
        status,
        &body,
        404,
        "room_not_found",
        "GET /rooms/{id} after refusals",
    );
}

// ---------------------------------------------------------------------------
// Rooms: create, read, list
// ---------------------------------------------------------------------------

both_engines!(
    rooms_are_created_read_and_validated,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    rooms_create_and_read
);

/// POST /rooms returns the room object (201), GET reads it on any node, duplicates are 409, bad input 400; rooms that appeared by joining have created_at null.
async fn rooms_create_and_read(c: &Cluster) {
    let room = room_id();
    let body = json!({"room_id": room, "password": "s3cret-pw", "max_users": 3, "moderated": true, "hosts": ["h1", "h.2"]});
    let created = create_room(c.node(0), body.clone()).await;
    assert_room(&created, &room, 0, true, true, Some(3), true);
    assert!(
        !created.to_string().contains("s3cret-pw"),
        "the room object leaks the password: {created}"
    );
    let (status, read) = admin(c.node(1), "GET", &format!("/rooms/{room}"), None).await;
    assert_eq!(status, 200, "GET /rooms/{room} (body {read})");
    assert_eq!(read, created, "GET /rooms/{room} on the other node");

    let (status, reply) = admin(c.node(1), "POST", "/rooms", Some(body)).await;
    assert_http_error(status, &reply, 409, "room_exists", "POST /rooms twice");
    let (status, reply) = admin(c.node(0), "POST", "/rooms", Some(json!({"room_id": room}))).await;
    assert_http_error(
        status,
        &reply,
        409,
        "room_exists",
        "POST /rooms again, other settings",
    );

    // No room_id: a generated valid id; minimal settings.
    let generated = create_room(c.node(1), json!({})).await;
    assert_valid_id(&generated["room_id"]);
    let id = generated["room_id"].as_str().expect("room_id").to_owned();
    assert_room(&generated, &id, 0, false, false, None, true);
    let (status, read) = admin(c.node(0), "GET", &format!("/rooms/{id}"), None).await;
    assert_eq!(status, 200, "GET the generated room (body {read})");
    assert_eq!(read, generated, "GET the generated room");
    let other = create_room(c.node(0), json!({})).await;
    assert_ne!(other["room_id"], generated["room_id"], "two generated ids");

    // A room that appeared on first join: no creation time, no settings; it exists.
    let joined_room = room_id();
    let (alice, _) = join(c.node(0), &joined_room, "alice").await;
    let (status, read) = admin(c.node(1), "GET", &format!("/rooms/{joined_room}"), None).await;
    assert_eq!(
        status, 200,
        "GET a room that appeared by joining (body {read})"
    );
    assert_room(&read, &joined_room, 1, false, false, None, false);
    let (status, reply) = admin(
        c.node(1),
        "POST",
        "/rooms",
        Some(json!({"room_id": joined_room})),
    )
    .await;
    assert_http_error(
        status,
        &reply,
        409,
        "room_exists",
        "POST /rooms over a room with members",
    );
    alice.close().await;

    let (status, reply) = admin(c.node(1), "GET", &format!("/rooms/{}", room_id()), None).await;
    assert_http_error(status, &reply, 404, "room_not_found", "GET an unknown room");

    // Validation.
    let invalid_ids = [
        json!({"room_id": "a b"}),
        json!({"room_id": "a:b"}),
        json!({"room_id": ""}),
        json!({"room_id": "x".repeat(65)}),
        json!({"room_id": room_id(), "moderated": true, "hosts": ["ok", "not ok"]}),
        json!({"room_id": room_id(), "moderated": true, "hosts": ["{x}"]}),
    ];
    for body in invalid_ids {
        let (status, reply) = admin(c.node(0), "POST", "/rooms", Some(body.clone())).await;
        assert_http_error(
            status,
            &reply,
            400,
            "invalid_id",
            &format!("POST /rooms {body}"),
        );
    }
    let invalid_requests = [
        json!({"room_id": room_id(), "colour": "blue"}),
        json!({"room_id": room_id(), "max_users": 0}),
        json!({"room_id": room_id(), "max_users": -1}),
        json!({"room_id": room_id(), "max_users": "3"}),
        json!({"room_id": room_id(), "password": ""}),
        json!({"room_id": room_id(), "moderated": "yes"}),
        json!([1, 2]),
    ];
    for body in invalid_requests {
        let (status, reply) = admin(c.node(1), "POST", "/rooms", Some(body.clone())).await;
        assert_http_error(
            status,
            &reply,
            400,
            "invalid_request",
            &format!("POST /rooms {body}"),
        );
    }
    let auth = format!("Bearer {ADMIN}");
    for raw in ["{", "not json", ""] {
        let reply = c
            .node(0)
            .request("POST", "/rooms", &[("authorization", &auth)], Some(raw))
            .await;
        assert_http_error(
            reply.status,
            &reply.json(),
            400,
            "invalid_request",
            &format!("POST /rooms with body {raw:?}"),
        );
    }
    // None of the refused bodies created a room: the listing holds exactly the three
    // created ones (alice's room may still be on its way out).
    let mut listed = list_rooms(c.node(0)).await;
    listed.remove(&joined_room);
    let expected: BTreeMap<String, u64> = [
        room.clone(),
        id,
        other["room_id"].as_str().expect("room_id").to_owned(),
    ]
    .into_iter()
    .map(|r| (r, 0))
    .collect();
    assert_eq!(listed, expected, "rooms listed after the refused requests");
}

/// Every room of GET /rooms (limit 100, following next_cursor) → count.
async fn list_rooms(node: &TestNode) -> BTreeMap<String, u64> {
    let mut rooms = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let path = match &cursor {
            None => "/rooms?limit=100".to_owned(),
            Some(cursor) => format!("/rooms?limit=100&cursor={}", encode_query(cursor)),
        };
        let (status, body) = admin(node, "GET", &path, None).await;
        assert_eq!(status, 200, "GET {path} (body {body})");
        for item in body["rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: rooms must be an array: {body}"))
        {
            let id = item["room_id"].as_str().expect("room_id is a string");
            rooms.insert(id.to_owned(), item["count"].as_u64().expect("count"));
        }
        match &body["next_cursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            _ => return rooms,
        }
    }
    panic!("GET /rooms: more than 50 pages");
}

both_engines!(
    room_listing_pages_through_every_room_once,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    rooms_listing
);

/// GET /rooms?limit=2 followed through next_cursor (alternating nodes) lists every room, created or joined, exactly once with its count.
async fn rooms_listing(c: &Cluster) {
    let mut expected = BTreeMap::new();
    for _ in 0..3 {
        let room = room_id();
        create_room(c.node(0), json!({"room_id": room})).await;
        expected.insert(room, 0u64);
    }
    let (joined_a, joined_b) = (room_id(), room_id());
    let (_alice, _) = join(c.node(0), &joined_a, "alice").await;
    let (_bob, _) = join(c.node(1), &joined_b, "bob").await;
    expected.insert(joined_a, 1);
    expected.insert(joined_b, 1);

    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 20, "more than 20 pages for 5 rooms: {seen:?}");
        let node = c.node(pages % 2);
        let path = match &cursor {
            None => "/rooms?limit=2".to_owned(),
            Some(cursor) => format!("/rooms?limit=2&cursor={}", encode_query(cursor)),
        };
        let (status, body) = admin(node, "GET", &path, None).await;
        assert_eq!(
            status,
            200,
            "GET {path} on {} (body {body})",
            node.node_id()
        );
        assert_keys(
            &body,
            &["rooms", "next_cursor"],
            &format!("GET {path}: {body}"),
        );
        let rooms = body["rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: rooms must be an array: {body}"));
        assert!(
            rooms.len() <= 2,
            "GET {path}: more rooms than the limit: {body}"
        );
        for item in rooms {
            assert_keys(
                item,
                &["room_id", "count"],
                &format!("GET {path}: item {item}"),
            );
            let id = item["room_id"].as_str().expect("room_id is a string");
            let count = item["count"].as_u64().expect("count is a number");
            seen.push((id.to_owned(), count));
        }
        match &body["next_cursor"] {
            Value::Null => break,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("GET {path}: next_cursor must be a string or null, got {other}"),
        }
    }
    let ids: Vec<&String> = seen.iter().map(|(id, _)| id).collect();
    let unique: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a room was listed twice: {seen:?}");
    let seen: BTreeMap<String, u64> = seen.into_iter().collect();
    assert_eq!(seen, expected, "rooms listed through the pages");

    for bad in ["0", "abc", "-1", ""] {
        let (status, body) = admin(c.node(0), "GET", &format!("/rooms?limit={bad}"), None).await;
        assert_http_error(
            status,
            &body,
            400,
            "invalid_request",
            &format!("GET /rooms?limit={bad}"),
        );
    }
}

// ---------------------------------------------------------------------------
// Rooms: delete, kick
// ---------------------------------------------------------------------------

both_engines!(
    deleting_a_room_kicks_every_member_on_every_node,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    delete_room
);

/// DELETE /rooms/{id} (204): every member on every node gets kicked + 4410, the room's keys are gone, it is then unknown (404).
async fn delete_room(c: &Cluster) {
    let room = room_id();
    create_room(c.node(1), json!({"room_id": room, "max_users": 5})).await;
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(c.node(1), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;
    // A member of another room must not be touched.
    let other_room = room_id();
    let (mut dave, dave_user) = join(c.node(0), &other_room, "dave").await;

    let (status, body) = admin(c.node(0), "DELETE", &format!("/rooms/{room}"), None).await;
    assert_eq!(status, 204, "DELETE /rooms/{room} (body {body})");
    assert_eq!(body, Value::Null, "DELETE /rooms/{room}: 204 has no body");
    for client in [&mut alice, &mut bob, &mut carol] {
        expect_kicked(client, &room).await;
    }
    dave.expect_silence(QUIET).await;
    assert_rest_members(c.node(1), &other_room, &[&dave_user]).await;

    let (status, reply) = admin(c.node(1), "GET", &format!("/rooms/{room}"), None).await;
    assert_http_error(status, &reply, 404, "room_not_found", "GET a deleted room");
    assert_rest_members(c.node(1), &room, &[]).await;
    for user in ["alice", "bob", "carol"] {
        let (status, _) = c.node(0).get(&format!("/users/{user}")).await;
        assert_eq!(status, 404, "GET /users/{user} after the room was deleted");
    }
    if c.is_redis() {
        let redis = c.redis_server();
        let pattern = format!("{}*{room}*", c.prefix());
        let users: Vec<String> = ["alice", "bob", "carol"]
            .iter()
            .map(|u| c.user_key(u))
            .collect();
        let (pattern, users) = (&pattern, &users);
        eventually(
            TIMEOUT,
            format!("no key matching {pattern} nor {users:?}"),
            move || async move {
                redis.keys(pattern).is_empty() && users.iter().all(|k| !redis.exists(k))
            },
        )
        .await;
    }
    let (status, reply) = admin(c.node(0), "DELETE", &format!("/rooms/{room}"), None).await;
    assert_http_error(
        status,
        &reply,
        404,
        "room_not_found",
        "DELETE a deleted room",
    );
    let (status, reply) = admin(c.node(1), "DELETE", &format!("/rooms/{}", room_id()), None).await;
    assert_http_error(
        status,
        &reply,
        404,
        "room_not_found",
        "DELETE an unknown room",
    );

    // A room that only appeared by joining can be deleted too.
    let (mut erin, _) = join(c.node(1), &other_room, "erin").await;
    dave.expect_type("user_joined").await;
    let (status, _) = admin(c.node(0), "DELETE", &format!("/rooms/{other_room}"), None).await;
    assert_eq!(status, 204, "DELETE a room that appeared by joining");
    expect_kicked(&mut dave, &other_room).await;
    expect_kicked(&mut erin, &other_room).await;
}

both_engines!(
    kicking_a_user_disconnects_it_on_any_node,
    env = [("ADMIN_TOKEN", crate::ADMIN)],
    kick_user
);

/// DELETE /rooms/{room}/users/{user} sent to the other node (204): the user gets kicked + 4410, the others user_left kicked; unknown → 404.
async fn kick_user(c: &Cluster) {
    let (room, mut alice, alice_user, mut bob, _) = pair(c).await;
    let (mut carol, carol_user) = join(c.node(0), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    // bob is on node 1: the request goes to node 0.
    let (status, body) = admin(
        c.node(0),
        "DELETE",
        &format!("/rooms/{room}/users/bob"),
        None,
    )
    .await;
    assert_eq!(status, 204, "DELETE /rooms/{room}/users/bob (body {body})");
    assert_eq!(body, Value::Null, "204 has no body");
    bob.expect_error_then_close("kicked", 4410).await;
    let left = user_left("bob", &room, "kicked");
    alice.expect_frame(&left).await;
    carol.expect_frame(&left).await;
    assert_rest_members(c.node(0), &room, &[&alice_user, &carol_user]).await;
    if c.is_redis() {
        let (redis, key) = (c.redis_server(), c.user_key("bob"));
        let key = &key;
        eventually(
            TIMEOUT,
            format!("{key} to be deleted after the kick"),
            move || async move { !redis.exists(key) },
        )
        .await;
    }

    // alice is on node 0: the request goes to node 1.
    let (status, _) = admin(
        c.node(1),
        "DELETE",
        &format!("/rooms/{room}/users/alice"),
        None,
    )
    .await;
    assert_eq!(status, 204, "DELETE /rooms/{room}/users/alice");
    alice.expect_error_then_close("kicked", 4410).await;
    carol
        .expect_frame(&user_left("alice", &room, "kicked"))
        .await;

    for (path, what) in [
        (format!("/rooms/{room}/users/bob"), "an already kicked user"),
        (format!("/rooms/{room}/users/nobody"), "an unknown user"),
        (
            format!("/rooms/{}/users/carol", room_id()),
            "a user of another room",
        ),
    ] {
        let (status, reply) = admin(c.node(1), "DELETE", &path, None).await;
        assert_http_error(
            status,
            &reply,
            404,
            "user_not_found",
            &format!("DELETE {what}"),
        );
    }
    carol.expect_silence(QUIET).await;
    assert_rest_members(c.node(1), &room, &[&carol_user]).await;
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

both_engines!(
    issued_tokens_admit_their_user_to_their_room,
    env = [
        ("ADMIN_TOKEN", crate::ADMIN),
        ("AUTH_MODE", "jwt"),
        ("JWT_SECRET", crate::SECRET)
    ],
    issued_tokens
);

/// POST /tokens → 201 {token, expires_at}: an HS256 token with sub, room, exp (default 3600 s, capped at 86400) that lets the user join in jwt mode.
async fn issued_tokens(c: &Cluster) {
    let room = room_id();
    let (status, body) = admin(
        c.node(1),
        "POST",
        "/tokens",
        Some(json!({"user_id": "alice", "room_id": room})),
    )
    .await;
    assert_eq!(status, 201, "POST /tokens (body {body})");
    assert_keys(
        &body,
        &["token", "expires_at"],
        &format!("POST /tokens: {body}"),
    );
    let expires = assert_instant(&body["expires_at"], 3590, 3610, "expires_at (default ttl)");
    assert!(expires.offset().is_utc(), "expires_at must be UTC: {body}");
    let alice_token = body["token"]
        .as_str()
        .expect("token is a string")
        .to_owned();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let verified = jsonwebtoken::decode::<Value>(
        &alice_token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("the issued token does not verify with JWT_SECRET: {e}"))
    .claims;
    assert_eq!(verified["sub"], "alice", "sub of {verified}");
    assert_eq!(verified["room"], room.as_str(), "room of {verified}");
    assert_eq!(
        verified["exp"].as_i64(),
        Some(expires.unix_timestamp()),
        "exp of {verified} must match expires_at {}",
        body["expires_at"]
    );

    // End to end: the issued token admits alice on the other node.
    let (mut alice, _) = join_token(c.node(0), &room, "alice", &alice_token, "peer").await;

    // room "*", a role and a ttl; used through the Authorization header.
    let (status, body) = admin(
        c.node(0),
        "POST",
        "/tokens",
        Some(json!({"user_id": "bob", "room_id": "*", "role": "host", "ttl_seconds": 120})),
    )
    .await;
    assert_eq!(status, 201, "POST /tokens for room * (body {body})");
    assert_instant(&body["expires_at"], 110, 130, "expires_at (ttl 120)");
    let bob_token = body["token"].as_str().expect("token").to_owned();
    let claims = token_claims(&bob_token);
    assert_eq!(claims["room"], "*", "room claim of {claims}");
    assert_eq!(claims["role"], "host", "role claim of {claims}");
    let auth = format!("Bearer {bob_token}");
    let (_bob, bob_user) =
        join_with(c.node(1), &room, "bob", "", &[("authorization", &auth)]).await;
    // An ordinary room: everyone is a peer, whatever the token says.
    assert_user_with_role(&bob_user, "bob", &room, "peer");
    alice.expect_frame(&user_joined(&bob_user)).await;

    // The issued token is for alice only.
    rejected(
        c.node(1),
        &room,
        "mallory",
        &format!("token={alice_token}"),
        &[],
        ("forbidden", 4403),
        "alice's token used by mallory",
    )
    .await;
    rejected(
        c.node(0),
        &room_id(),
        "alice",
        &format!("token={alice_token}"),
        &[],
        ("forbidden", 4403),
        "alice's token for another room",
    )
    .await;

    // The ttl is capped at TOKEN_MAX_TTL_SECONDS (86400 by default).
    let (status, body) = admin(
        c.node(1),
        "POST",
        "/tokens",
        Some(json!({"user_id": "carol", "room_id": room, "ttl_seconds": 999_999})),
    )
    .await;
    assert_eq!(status, 201, "POST /tokens ttl 999999 (body {body})");
    assert_instant(&body["expires_at"], 86_390, 86_410, "expires_at (capped)");

    for (body, code) in [
        (json!({"user_id": "a b", "room_id": room}), "invalid_id"),
        (json!({"user_id": "alice", "room_id": "r:1"}), "invalid_id"),
        (json!({"user_id": "", "room_id": room}), "invalid_id"),
        (
            json!({"user_id": "alice", "room_id": room, "role": "king"}),
            "invalid_request",
        ),
        (json!({"room_id": room}), "invalid_request"),
        (json!({"user_id": "alice"}), "invalid_request"),
    ] {
        let (status, reply) = admin(c.node(0), "POST", "/tokens", Some(body.clone())).await;
        assert_http_error(status, &reply, 400, code, &format!("POST /tokens {body}"));
    }
    alice.expect_silence(QUIET).await;
}

/// TOKEN_MAX_TTL_SECONDS=60 caps every ttl (and the default) at 60 s; POST /tokens works without jwt mode as long as JWT_SECRET is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_is_capped_by_token_max_ttl() {
    let c = Cluster::standalone_with(&[
        ("ADMIN_TOKEN", ADMIN),
        ("JWT_SECRET", SECRET),
        ("TOKEN_MAX_TTL_SECONDS", "60"),
    ])
    .await;
    for body in [
        json!({"user_id": "alice", "room_id": "r1", "ttl_seconds": 999_999}),
        json!({"user_id": "alice", "room_id": "r1"}),
    ] {
        let (status, reply) = admin(c.node(0), "POST", "/tokens", Some(body.clone())).await;
        assert_eq!(status, 201, "POST /tokens {body} (body {reply})");
        let expires = assert_instant(&reply["expires_at"], 50, 65, "expires_at (max 60)");
        let claims = token_claims(reply["token"].as_str().expect("token"));
        assert_eq!(
            claims["exp"].as_i64(),
            Some(expires.unix_timestamp()),
            "exp of {claims}"
        );
    }
    let (status, reply) = admin(
        c.node(0),
        "POST",
        "/tokens",
        Some(json!({"user_id": "alice", "room_id": "r1", "ttl_seconds": 30})),
    )
    .await;
    assert_eq!(status, 201, "POST /tokens ttl 30 (body {reply})");
    assert_instant(&reply["expires_at"], 20, 35, "expires_at (ttl 30)");
}

/// `ttl_seconds` is client input: 0, negative, fractional or past u64 is a 400
/// JSON error, and the largest u64 is capped (no overflow into a bad expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_out_of_range_is_refused_with_400() {
    let c = Cluster::standalone_with(&[("ADMIN_TOKEN", ADMIN), ("JWT_SECRET", SECRET)]).await;
    for ttl in [json!(0), json!(-1), json!(1.5), json!(1e20), json!("60")] {
        let body = json!({"user_id": "alice", "room_id": "r1", "ttl_seconds": ttl});
        let (status, reply) = admin(c.node(0), "POST", "/tokens", Some(body.clone())).await;
        assert_http_error(
            status,
            &reply,
            400,
            "invalid_request",
            &format!("POST /tokens {body}"),
        );
    }
    let body = json!({"user_id": "alice", "room_id": "r1", "ttl_seconds": u64::MAX});
    let (status, reply) = admin(c.node(0), "POST", "/tokens", Some(body)).await;
    assert_eq!(status, 201, "POST /tokens ttl u64::MAX (body {reply})");
    assert_instant(&reply["expires_at"], 86_390, 86_410, "expires_at (capped)");
}

/// Without JWT_SECRET, POST /tokens answers 409 tokens_disabled (also in jwt mode with a public key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_disabled_without_jwt_secret() {
    let key = rcgen::KeyPair::generate().expect("generate a P-256 key");
    let dir = TempDir::new();
    let public = dir.write("public.pem", key.public_key_pem().as_bytes());
    let plain = Cluster::standalone_with(&[("ADMIN_TOKEN", ADMIN)]).await;
    let keyed = Cluster::standalone_with(&[
        ("ADMIN_TOKEN", ADMIN),
        ("AUTH_MODE", "jwt"),
        ("JWT_PUBLIC_KEY_FILE", &public),
    ])
    .await;
    for (c, what) in [
        (&plain, "no JWT settings"),
        (&keyed, "JWT_PUBLIC_KEY_FILE only"),
    ] {
        let (status, reply) = admin(
            c.node(0),
            "POST",
            "/tokens",
            Some(json!({"user_id": "alice", "room_id": "r1"})),
        )
        .await;
        assert_http_error(
            status,
            &reply,
            409,
            "tokens_disabled",
            &format!("POST /tokens, {what}"),
        );
    }
}
