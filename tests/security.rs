//! Security (PROTOCOL.md sections 2, 6, 8 and 9): configuration errors, JWT auth on
//! WebSockets and on the membership endpoints, the admin REST API (rooms, kicks,
//! tokens) acting cluster-wide, password and capacity rooms, moderated rooms and
//! roles, allowed origins and CORS, TLS for clients and for Redis, and payload
//! encryption of everything that crosses Redis.
//!
//! Cluster tests send admin requests to the node that does not hold the users, so
//! that every action is proven to work across nodes.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

/// The admin bearer of every node that has admin enabled.
const ADMIN: &str = "admin-T0ken_0123456789abcdef";
/// The HS256 secret of jwt-mode nodes.
const SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit in i64")
}

/// `{"sub": user, "room": room, "exp": now + 600}`
fn claims(user: &str, room: &str) -> Value {
    json!({"sub": user, "room": room, "exp": now() + 600})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a test token")
}

fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// A token valid for the jwt-mode test nodes (HS256 with SECRET).
fn token(claims: &Value) -> String {
    hs256(SECRET, claims)
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `alg: none`: header and claims, no signature.
fn unsigned_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// The claims inside a token (its middle part), unverified.
fn token_claims(token: &str) -> Value {
    let middle = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = URL_SAFE_NO_PAD
        .decode(middle.trim_end_matches('='))
        .expect("JWT claims are base64url");
    serde_json::from_slice(&bytes).expect("JWT claims are JSON")
}

/// The 32-byte key of PAYLOAD_ENCRYPTION_KEY, base64, random per call.
fn encryption_key() -> String {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    STANDARD.encode(bytes)
}

/// Percent-encodes everything but unreserved characters (for query values).
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// `ws://.../ws/{room}/{user}?{query}` (no `?` when `query` is empty).
fn ws_url(node: &TestNode, room: &str, user: &str, query: &str) -> String {
    let base = node.ws_url(room, user);
    if query.is_empty() {
        base
    } else {
        format!("{base}?{query}")
    }
}

/// Joins with `?{query}` and extra headers; returns the client and its own USER.
async fn join_with(
    node: &TestNode,
    room: &str,
    user: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> (TestClient, Value) {
    let label = format!("{user}@{room} on {}", node.node_id());
    let (client, frame) =
        TestClient::join_with(&ws_url(node, room, user, query), headers, &label).await;
    let me = frame["payload"]["self"].clone();
    (client, me)
}

/// Joins with `?token=...`; the USER must have `role`.
async fn join_token(
    node: &TestNode,
    room: &str,
    user: &str,
    token: &str,
    role: &str,
) -> (TestClient, Value) {
    let (client, me) = join_with(node, room, user, &format!("token={token}"), &[]).await;
    assert_user_with_role(&me, user, room, role);
    (client, me)
}

/// The connection is upgraded, then gets exactly `error` `code` and close `close_code`.
async fn rejected(
    node: &TestNode,
    room: &str,
    user: &str,
    query: &str,
    headers: &[(&str, &str)],
    (code, close_code): (&str, u16),
    case: &str,
) {
    let label = format!("{case}: {user}@{room} on {}", node.node_id());
    TestClient::expect_rejected(
        &ws_url(node, room, user, query),
        headers,
        code,
        close_code,
        &label,
    )
    .await;
}

/// What a connection attempt ended with, as text: `"{code} {close}"` for an upgraded
/// connection refused with exactly one well-formed `error` then a close, `"HTTP
/// {status}"` for a refused upgrade, `"joined"` for an accepted one (then closed),
/// or a description of anything else.
async fn outcome(
    node: &TestNode,
    room: &str,
    user: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> String {
    let url = ws_url(node, room, user, query);
    let mut client = match TestClient::try_connect_with(&url, headers).await {
        Err((status, _)) => return format!("HTTP {status}"),
        Ok(client) => client,
    };
    let frame = match client.next_event(TIMEOUT).await {
        Some(Event::Text(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(frame) => frame,
            Err(_) => return format!("a non-JSON frame {text:?}"),
        },
        other => return format!("{other:?} instead of a frame"),
    };
    if frame["type"] == "room_users" {
        client.close().await;
        return "joined".to_owned();
    }
    let code = frame["payload"]["code"].as_str().unwrap_or("?").to_owned();
    if let Some(mismatch) = error_echo_mismatch(&frame, &code, None, None) {
        return mismatch;
    }
    match client.next_event(TIMEOUT).await {
        Some(Event::Close(Some((close, _)))) => format!("{code} {close}"),
        other => format!("{code} then {other:?} instead of a close"),
    }
}

/// `METHOD path` with the admin bearer → (status, JSON or Null).
async fn admin(node: &TestNode, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    node.bearer_request(method, path, Some(ADMIN), body.as_ref())
        .await
}

/// POST /rooms with `body` (admin): must answer 201; returns the room object.
async fn create_room(node: &TestNode, body: Value) -> Value {
    let (status, room) = admin(node, "POST", "/rooms", Some(body.clone())).await;
    assert_eq!(status, 201, "POST /rooms {body}: status (body {room})");
    room
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

// ---------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------

/// Asserts an RFC 3339 instant within `[lo, hi]` seconds from now; returns it.
#[track_caller]
fn assert_instant(value: &Value, lo: i64, hi: i64, what: &str) -> time::OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} must be an RFC 3339 string, got {value}"));
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what} {text:?} is not RFC 3339: {e}"));
    let offset = at.unix_timestamp() - now();
    assert!(
        (lo..=hi).contains(&offset),
        "{what} {text:?} is {offset} s from now, expected within [{lo}, {hi}]"
    );
    at
}

/// Asserts the room object of POST /rooms and GET /rooms/{id}.
#[track_caller]
#[allow(clippy::too_many_arguments)] // One argument per field of the room object.
fn assert_room(
    body: &Value,
    room: &str,
    count: u64,
    password_protected: bool,
    moderated: bool,
    max_users: Option<u64>,
    created: bool,
) {
    let context = format!("room object {body}");
    assert_keys(
        body,
        &[
            "room_id",
            "count",
            "password_protected",
            "moderated",
            "max_users",
            "created_at",
        ],
        &context,
    );
    assert_eq!(body["room_id"], room, "{context}: room_id");
    assert_eq!(body["count"], count, "{context}: count");
    assert_eq!(
        body["password_protected"], password_protected,
        "{context}: password_protected"
    );
    assert_eq!(body["moderated"], moderated, "{context}: moderated");
    assert_eq!(body["max_users"], json!(max_users), "{context}: max_users");
    if created {
        assert_instant(&body["created_at"], -300, 5, "created_at");
    } else {
        assert_eq!(body["created_at"], Value::Null, "{context}: created_at");
    }
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

/// GET with a bearer; asserts 200 and that the listed users are exactly `users`.
async fn assert_members_with(node: &TestNode, room: &str, bearer: &str, users: &[&Value]) {
    let (status, body) = node
        .bearer_request("GET", &format!("/rooms/{room}/users"), Some(bearer), None)
        .await;
    let context = format!("GET /rooms/{room}/users on {}", node.node_id());
    assert_eq!(status, 200, "{context}: status (body {body})");
    assert_eq!(body["count"], users.len(), "{context}: count in {body}");
    let expected = sorted_users(&Value::Array(users.iter().map(|u| (*u).clone()).collect()));
    assert_eq!(
        sorted_users(&body["users"]),
        expected,
        "{context}: users in {body}"
    );
}

/// Redis writes (keyspace events) that a rejected connection of `rejected` to `room`
/// may have caused: any write to a key naming the room or the user, or to a node's
/// session registry, except TTL refreshes of keys that do not name the user (the
/// members' own activity). Cluster housekeeping (heartbeats, ...) is not counted.
fn rejected_writes(
    events: &[(String, String)],
    prefix: &str,
    room: &str,
    rejected: &str,
) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|(key, event)| {
            let rest = key.strip_prefix(prefix).unwrap_or(key);
            let names_user = rest.contains(rejected);
            let relevant = names_user || rest.contains(room) || rest.ends_with(":sessions");
            let refresh = event == "expire" && !names_user;
            relevant && !refresh
        })
        .cloned()
        .collect()
}

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
// Configuration
// ---------------------------------------------------------------------------

/// Invalid security settings stop the node at startup with a non-zero exit and a log naming the variable; secrets are not echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_security_config_exits_naming_the_variable() {
    let dir = TempDir::new();
    let cert = SelfSigned::generate();
    let missing = dir
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();
    let garbage = dir.write(
        "garbage.pem",
        b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
    );
    let short_key = STANDARD.encode([7u8; 16]);
    let long_key = STANDARD.encode([7u8; 33]);
    let not_base64 = "this is not base64 at all!".to_owned();

    // (case, environment, the log must name one of these, secret that must not appear)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, String)>,
        &'a [&'a str],
        Option<String>,
    );
    let cases: Vec<Case> = vec![
        (
            "jwt without a key",
            vec![("AUTH_MODE", "jwt".into())],
            &["JWT_SECRET", "JWT_PUBLIC_KEY_FILE"],
            None,
        ),
        (
            "unknown auth mode",
            vec![("AUTH_MODE", "oauth".into())],
            &["AUTH_MODE"],
            None,
        ),
        (
            "missing public key file",
            vec![
                ("AUTH_MODE", "jwt".into()),
                ("JWT_PUBLIC_KEY_FILE", missing.clone()),
            ],
            &["JWT_PUBLIC_KEY_FILE"],
            None,
        ),
        (
            "public key file that is no key",
            vec![
                ("AUTH_MODE", "jwt".into()),
                ("JWT_PUBLIC_KEY_FILE", garbage.clone()),
            ],
            &["JWT_PUBLIC_KEY_FILE"],
            None,
        ),
        (
            "encryption key of 16 bytes",
            vec![("PAYLOAD_ENCRYPTION_KEY", short_key.clone())],
            &["PAYLOAD_ENCRYPTION_KEY"],
            Some(short_key.clone()),
        ),
        (
            "encryption key of 33 bytes",
            vec![("PAYLOAD_ENCRYPTION_KEY", long_key.clone())],
            &["PAYLOAD_ENCRYPTION_KEY"],
            Some(long_key.clone()),
        ),
        (
            "encryption key not base64",
            vec![("PAYLOAD_ENCRYPTION_KEY", not_base64.clone())],
            &["PAYLOAD_ENCRYPTION_KEY"],
            Some(not_base64.clone()),
        ),
        (
            "certificate without key",
            vec![("TLS_CERT_FILE", cert.cert_path.clone())],
            &["TLS_KEY_FILE", "TLS_CERT_FILE"],
            None,
        ),
        (
            "key without certificate",
            vec![("TLS_KEY_FILE", cert.key_path.clone())],
            &["TLS_KEY_FILE", "TLS_CERT_FILE"],
            None,
        ),
        (
            "unreadable certificate files",
            vec![
                ("TLS_CERT_FILE", missing.clone()),
                ("TLS_KEY_FILE", missing.clone()),
            ],
            &["TLS_KEY_FILE", "TLS_CERT_FILE"],
            None,
        ),
        (
            "token max ttl not a number",
            vec![("TOKEN_MAX_TTL_SECONDS", "soon".into())],
            &["TOKEN_MAX_TTL_SECONDS"],
            None,
        ),
    ];

    let prefix = key_prefix();
    let nodes: Vec<TestNode> = cases
        .iter()
        .map(|(_, env, _, _)| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            TestNode::spawn(None, &prefix, &env)
        })
        .collect();
    let mut failures = Vec::new();
    for ((case, _, names, secret), node) in cases.iter().zip(&nodes) {
        let Some(status) = node.wait_exit(TIMEOUT * 2).await else {
            failures.push(format!("{case}: the node is still running"));
            continue;
        };
        let log = node.log();
        if status.success() || status.code().is_none() {
            failures.push(format!(
                "{case}: expected a non-zero exit code, got {status}; log:\n{log}"
            ));
        }
        if !names.iter().any(|name| log.contains(name)) {
            failures.push(format!("{case}: the log names none of {names:?}:\n{log}"));
        }
        if let Some(secret) = secret {
            if log.contains(secret.as_str()) {
                failures.push(format!("{case}: the log echoes the secret value:\n{log}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
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

// ---------------------------------------------------------------------------
// JWT on WebSockets
// ---------------------------------------------------------------------------

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "signal-tests";

/// Valid claims for the issuer/audience-checking cluster.
fn full_claims(user: &str, room: &str) -> Value {
    let mut c = claims(user, room);
    c["iss"] = json!(ISSUER);
    c["aud"] = json!(AUDIENCE);
    c
}

/// jwt mode (HS256, issuer and audience set): every bad token is refused with unauthorized + 4401, a token for another user or room with forbidden + 4403; nothing is written to Redis, nobody is notified, no token is logged; good tokens (query or header, room or *) join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_are_verified_on_every_node() {
    let c = Cluster::redis_with(
        2,
        &[
            ("AUTH_MODE", "jwt"),
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
            ("ADMIN_TOKEN", ADMIN),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    let redis = c.redis_server();
    let room = room_id();
    let carol_token = token(&full_claims("carol", &room));
    let carol_auth = format!("Bearer {carol_token}");
    let (mut carol, carol_user) = join_with(
        c.node(1),
        &room,
        "carol",
        "",
        &[("authorization", &carol_auth)],
    )
    .await;
    assert_user_with_role(&carol_user, "carol", &room, "peer");
    let watch = KeyspaceWatch::start(redis, &format!("{}*", c.prefix())).await;

    let good = full_claims("eve", &room);
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let without = |field: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().expect("object").remove(field);
        claims
    };
    let mallory = token(&full_claims("mallory", &room));
    let eve_claims_b64 = b64url(good.to_string().as_bytes());
    let mut parts = mallory.split('.');
    let (head, _, signature) = (
        parts.next().expect("header"),
        parts.next(),
        parts.next().expect("signature"),
    );
    let tampered = format!("{head}.{eve_claims_b64}.{signature}");

    // (case, token, sent as header)
    let unauthorized: Vec<(&str, String, bool)> = vec![
        ("empty token", String::new(), false),
        ("garbage", "not-a-jwt".into(), false),
        ("three garbage parts", "aaa.bbb.ccc".into(), false),
        (
            "bad signature",
            hs256("another-secret-0123456789", &good),
            false,
        ),
        ("tampered claims", tampered, false),
        ("expired", token(&with("exp", json!(now() - 600))), false),
        ("no exp", token(&without("exp")), false),
        (
            "exp not a number",
            token(&with("exp", json!("tomorrow"))),
            false,
        ),
        (
            "not yet valid (nbf)",
            token(&with("nbf", json!(now() + 600))),
            false,
        ),
        ("alg none", unsigned_token(&good), false),
        (
            "wrong issuer",
            token(&with("iss", json!("https://evil.example"))),
            false,
        ),
        ("no issuer", token(&without("iss")), false),
        (
            "wrong audience",
            token(&with("aud", json!("someone-else"))),
            false,
        ),
        ("no audience", token(&without("aud")), false),
        (
            "header: bad signature",
            hs256("another-secret-0123456789", &good),
            true,
        ),
        ("header: alg none", unsigned_token(&good), true),
    ];
    let other_room = token(&full_claims("eve", &room_id()));
    let forbidden: Vec<(&str, String, bool)> = vec![
        ("token of another user", mallory.clone(), false),
        ("token for another room", other_room.clone(), false),
        ("header: token of another user", mallory.clone(), true),
        ("header: token for another room", other_room, true),
    ];
    let basic = format!("Basic {}", STANDARD.encode("eve:password"));

    // Every case runs (alternating nodes) before the verdict, so that one report
    // lists every token the server mishandles.
    let mut used_tokens = vec![carol_token.clone()];
    let mut wrong = Vec::new();
    let mut check = |case: String, actual: String, expected: &str| {
        if actual != expected {
            wrong.push(format!("{case}: expected {expected}, got {actual}"));
        }
    };
    check(
        "no token".into(),
        outcome(c.node(0), &room, "eve", "", &[]).await,
        "unauthorized 4401",
    );
    check(
        "Basic credentials instead of a bearer".into(),
        outcome(c.node(1), &room, "eve", "", &[("authorization", &basic)]).await,
        "unauthorized 4401",
    );
    let cases = unauthorized
        .iter()
        .map(|case| (case, "unauthorized 4401"))
        .chain(forbidden.iter().map(|case| (case, "forbidden 4403")));
    for (i, ((case, tok, as_header), expected)) in cases.enumerate() {
        let node = c.node(i % 2);
        let actual = if *as_header {
            let auth = format!("Bearer {tok}");
            outcome(node, &room, "eve", "", &[("authorization", &auth)]).await
        } else {
            let query = format!("token={}", encode_query(tok));
            outcome(node, &room, "eve", &query, &[]).await
        };
        check((*case).to_owned(), actual, expected);
        used_tokens.push(tok.clone());
    }
    assert!(
        wrong.is_empty(),
        "tokens mishandled by the jwt-mode nodes:\n{}",
        wrong.join("\n")
    );

    // Nobody was notified, and nothing was written for the rejected connections.
    carol.expect_silence(QUIET).await;
    assert_members_with(c.node(0), &room, ADMIN, &[&carol_user]).await;
    let (status, reply) = admin(c.node(0), "GET", "/users/eve", None).await;
    assert_http_error(
        status,
        &reply,
        404,
        "user_not_found",
        "GET /users/eve after rejections",
    );
    let writes = rejected_writes(&watch.events(), c.prefix(), &room, "eve");
    assert!(
        writes.is_empty(),
        "rejected connections wrote to Redis: {writes:?}"
    );

    // Good tokens: query, header, room "*", and a role claim in an ordinary room.
    let eve_token = token(&good);
    let (_eve, eve_user) = join_token(c.node(0), &room, "eve", &eve_token, "peer").await;
    carol.expect_frame(&user_joined(&eve_user)).await;
    let frank_token = token(&full_claims("frank", "*"));
    let frank_auth = format!("Bearer {frank_token}");
    let (_frank, frank_user) = join_with(
        c.node(1),
        &room,
        "frank",
        "",
        &[("authorization", &frank_auth)],
    )
    .await;
    assert_user_with_role(&frank_user, "frank", &room, "peer");
    carol.expect_frame(&user_joined(&frank_user)).await;
    let mut grace = full_claims("grace", &room);
    grace["role"] = json!("host");
    let grace_token = token(&grace);
    let (_grace, grace_user) = join_token(c.node(0), &room, "grace", &grace_token, "peer").await;
    carol.expect_frame(&user_joined(&grace_user)).await;
    used_tokens.extend([eve_token, frank_token, grace_token]);

    // No token (nor its signature) in any log, at debug level.
    for node in [c.node(0), c.node(1)] {
        let log = node.log();
        for tok in used_tokens.iter().filter(|t| t.len() > 20) {
            let signature = tok.rsplit('.').next().unwrap_or_default();
            let leaked =
                log.contains(tok.as_str()) || (signature.len() > 20 && log.contains(signature));
            assert!(
                !leaked,
                "node {} logged a token ({tok}):\n{}",
                node.node_id(),
                log.lines()
                    .filter(|l| l.contains(signature) || l.contains(tok.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// JWT_PUBLIC_KEY_FILE with an EC P-256 key: ES256 tokens from that key join; HS256 tokens (even keyed with the public key), tokens of another key and alg none get 4401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_key_verifies_tokens() {
    let key = rcgen::KeyPair::generate().expect("generate a P-256 key");
    let other_key = rcgen::KeyPair::generate().expect("generate a P-256 key");
    let dir = TempDir::new();
    let public_pem = key.public_key_pem();
    let public = dir.write("public.pem", public_pem.as_bytes());
    let c =
        Cluster::standalone_with(&[("AUTH_MODE", "jwt"), ("JWT_PUBLIC_KEY_FILE", &public)]).await;
    let node = c.node(0);
    let room = room_id();
    let es256 = |key: &rcgen::KeyPair, claims: &Value| {
        let pem = key.serialize_pem();
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC PEM for signing");
        sign(Algorithm::ES256, &encoding, claims)
    };

    let (mut alice, _) = join_token(
        node,
        &room,
        "alice",
        &es256(&key, &claims("alice", &room)),
        "peer",
    )
    .await;
    let good = claims("bob", &room);
    let cases = [
        ("HS256 when ES256 is expected", hs256(SECRET, &good)),
        ("HS256 keyed with the public key", hs256(&public_pem, &good)),
        ("ES256 from another key", es256(&other_key, &good)),
        ("alg none", unsigned_token(&good)),
        (
            "ES256 expired",
            es256(
                &key,
                &json!({"sub": "bob", "room": room, "exp": now() - 600}),
            ),
        ),
    ];
    for (case, tok) in &cases {
        let query = format!("token={tok}");
        rejected(
            node,
            &room,
            "bob",
            &query,
            &[],
            ("unauthorized", 4401),
            case,
        )
        .await;
    }
    rejected(
        node,
        &room,
        "bob",
        &format!("token={}", es256(&key, &claims("mallory", &room))),
        &[],
        ("forbidden", 4403),
        "ES256 token of another user",
    )
    .await;
    alice.expect_silence(QUIET).await;
    let (_bob, bob_user) = join_token(node, &room, "bob", &es256(&key, &good), "peer").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
}

/// JWT_PUBLIC_KEY_FILE with an RSA key (made by openssl): RS256 tokens join; HS256 keyed with the public key and ES256 tokens get 4401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_key_verifies_tokens() {
    let dir = TempDir::new();
    let private = dir.path().join("rsa.pem");
    let public = dir.path().join("rsa.pub.pem");
    let generated = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status();
    if !generated.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED rs256_public_key_verifies_tokens: openssl cannot generate an RSA key here"
        );
        return;
    }
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl pkey");
    assert!(status.success(), "openssl pkey -pubout failed");
    let private_pem = std::fs::read(&private).expect("read the RSA key");
    let public_pem = std::fs::read_to_string(&public).expect("read the RSA public key");
    let public_path = public.to_string_lossy().into_owned();
    let c =
        Cluster::standalone_with(&[("AUTH_MODE", "jwt"), ("JWT_PUBLIC_KEY_FILE", &public_path)])
            .await;
    let node = c.node(0);
    let room = room_id();
    let rs256 = |claims: &Value| {
        let key = EncodingKey::from_rsa_pem(&private_pem).expect("RSA PEM for signing");
        sign(Algorithm::RS256, &key, claims)
    };
    let (mut alice, _) = join_token(
        node,
        &room,
        "alice",
        &rs256(&claims("alice", &room)),
        "peer",
    )
    .await;
    let good = claims("bob", &room);
    let ec = rcgen::KeyPair::generate().expect("generate a P-256 key");
    let es256 = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC PEM"),
        &good,
    );
    for (case, tok) in [
        (
            "HS256 keyed with the RSA public key",
            hs256(&public_pem, &good),
        ),
        ("ES256 when RS256 is expected", es256),
        ("alg none", unsigned_token(&good)),
    ] {
        rejected(
            node,
            &room,
            "bob",
            &format!("token={tok}"),
            &[],
            ("unauthorized", 4401),
            case,
        )
        .await;
    }
    alice.expect_silence(QUIET).await;
    let (_bob, bob_user) = join_token(node, &room, "bob", &rs256(&good), "peer").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
}

both_engines!(
    membership_endpoints_need_a_bearer_in_jwt_mode,
    env = [
        ("ADMIN_TOKEN", crate::ADMIN),
        ("AUTH_MODE", "jwt"),
        ("JWT_SECRET", crate::SECRET)
    ],
    membership_bearer
);

/// jwt mode: /rooms/{id}/users and /users/{id} need the admin token or a client token covering the room (401 without or invalid, 403 for another room); /healthz and /readyz stay open.
async fn membership_bearer(c: &Cluster) {
    let room = room_id();
    let (_alice, alice_user) = join_token(
        c.node(0),
        &room,
        "alice",
        &token(&claims("alice", &room)),
        "peer",
    )
    .await;
    let for_room = token(&claims("viewer", &room));
    let for_any = token(&claims("viewer", "*"));
    let for_other = token(&claims("viewer", &room_id()));
    let expired = token(&json!({"sub": "viewer", "room": room, "exp": now() - 600}));
    let badly_signed = hs256("another-secret-0123456789", &claims("viewer", &room));
    let unsigned = unsigned_token(&claims("viewer", &room));
    let node = c.node(1);

    let users_path = format!("/rooms/{room}/users");
    let user_path = "/users/alice".to_owned();
    for path in [&users_path, &user_path] {
        for (bearer, what) in [
            (None, "no bearer"),
            (Some("garbage"), "a garbage bearer"),
            (Some(expired.as_str()), "an expired token"),
            (Some(badly_signed.as_str()), "a badly signed token"),
            (Some(unsigned.as_str()), "an unsigned token"),
            (Some("wrong-admin-token"), "a wrong admin token"),
        ] {
            let (status, reply) = node.bearer_request("GET", path, bearer, None).await;
            assert_http_error(
                status,
                &reply,
                401,
                "unauthorized",
                &format!("GET {path} with {what}"),
            );
        }
        let (status, reply) = node
            .bearer_request("GET", path, Some(&for_other), None)
            .await;
        assert_http_error(
            status,
            &reply,
            403,
            "forbidden",
            &format!("GET {path}, token for another room"),
        );
    }
    for bearer in [ADMIN, for_room.as_str(), for_any.as_str()] {
        assert_members_with(node, &room, bearer, &[&alice_user]).await;
        let (status, body) = node
            .bearer_request("GET", &user_path, Some(bearer), None)
            .await;
        let mut expected = alice_user.clone();
        expected["node_id"] = json!(c.node(0).node_id());
        assert_eq!(status, 200, "GET /users/alice (body {body})");
        assert_eq!(body, expected, "GET /users/alice");
    }
    // A user that does not exist: 403 for a client token, 404 for the admin.
    let (status, reply) = node
        .bearer_request("GET", "/users/ghost", Some(&for_room), None)
        .await;
    assert_http_error(
        status,
        &reply,
        403,
        "forbidden",
        "GET /users/ghost with a client token",
    );
    let (status, reply) = node
        .bearer_request("GET", "/users/ghost", Some(ADMIN), None)
        .await;
    assert_http_error(
        status,
        &reply,
        404,
        "user_not_found",
        "GET /users/ghost as admin",
    );

    for path in ["/healthz", "/readyz"] {
        let (status, body) = node.get(path).await;
        assert_eq!(status, 200, "GET {path} without bearer (body {body})");
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

// ---------------------------------------------------------------------------
// Order of the connection checks
// ---------------------------------------------------------------------------

/// The checks run in order: invalid ids (4400), origin (HTTP 403), node full (1013), token (4401/4403), then the room's password (4403) and capacity (room_full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_checks_run_in_the_documented_order() {
    let jwt = [("AUTH_MODE", "jwt"), ("JWT_SECRET", SECRET)];
    let mut full_env = jwt.to_vec();
    full_env.push(("MAX_CONNECTIONS", "1"));
    let full = Cluster::standalone_with(&full_env).await;
    let mut rooms_env = jwt.to_vec();
    rooms_env.extend([
        ("ADMIN_TOKEN", ADMIN),
        ("ALLOWED_ORIGINS", "https://app.example"),
    ]);
    let rooms = Cluster::standalone_with(&rooms_env).await;

    // A full node: an invalid id is still 4400; a valid one is 1013 before any token check.
    let node = full.node(0);
    let room = room_id();
    let (mut alice, _) = join_token(
        node,
        &room,
        "alice",
        &token(&claims("alice", &room)),
        "peer",
    )
    .await;
    rejected(
        node,
        &room,
        "bad:id",
        "",
        &[],
        ("invalid_id", 4400),
        "invalid id, full node",
    )
    .await;
    rejected(
        node,
        &room,
        "bob",
        "",
        &[],
        ("unavailable", 1013),
        "full node, no token",
    )
    .await;
    rejected(
        node,
        &room,
        "bob",
        "token=garbage",
        &[],
        ("unavailable", 1013),
        "full node, bad token",
    )
    .await;
    alice.expect_silence(QUIET).await;

    // Rooms: invalid id before origin, origin before token, token before password,
    // password before capacity.
    let node = rooms.node(0);
    let room = room_id();
    create_room(
        node,
        json!({"room_id": room, "password": "pw-1", "max_users": 1}),
    )
    .await;
    let evil = [("origin", "https://evil.example")];
    rejected(
        node,
        &room,
        "a%20b",
        "",
        &evil,
        ("invalid_id", 4400),
        "invalid id, evil origin",
    )
    .await;
    let refused = TestClient::try_connect_with(&ws_url(node, &room, "bob", ""), &evil).await;
    match refused {
        Err((status, _)) => assert_eq!(status, 403, "evil origin without token: HTTP status"),
        Ok(_) => panic!("evil origin without token: the upgrade must be refused with HTTP 403"),
    }
    rejected(
        node,
        &room,
        "bob",
        "password=pw-1",
        &[],
        ("unauthorized", 4401),
        "right password, no token",
    )
    .await;
    let other_room = token(&claims("bob", &room_id()));
    rejected(
        node,
        &room,
        "bob",
        &format!("password=pw-1&token={other_room}"),
        &[],
        ("forbidden", 4403),
        "right password, token for another room",
    )
    .await;
    let bob_token = token(&claims("bob", &room));
    rejected(
        node,
        &room,
        "bob",
        &format!("token={bob_token}"),
        &[],
        ("forbidden", 4403),
        "valid token, no password",
    )
    .await;
    let (mut bob, _) = join_with(
        node,
        &room,
        "bob",
        &format!("token={bob_token}&password=pw-1"),
        &[],
    )
    .await;
    let carol_token = token(&claims("carol", &room));
    rejected(
        node,
        &room,
        "carol",
        &format!("token={carol_token}&password=nope"),
        &[],
        ("forbidden", 4403),
        "full room, wrong password",
    )
    .await;
    rejected(
        node,
        &room,
        "carol",
        &format!("token={carol_token}&password=pw-1"),
        &[],
        ("room_full", 4403),
        "full room, right password",
    )
    .await;
    bob.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------
// Origins and CORS
// ---------------------------------------------------------------------------

/// ALLOWED_ORIGINS: a WebSocket from another origin is refused with HTTP 403 forbidden_origin before the upgrade; listed origins and no Origin join; CORS answers listed origins only. Without the setting any origin joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_origins_may_connect() {
    let c = Cluster::standalone_with(&[(
        "ALLOWED_ORIGINS",
        "https://app.example,https://second.example",
    )])
    .await;
    let open = Cluster::standalone().await;
    let node = c.node(0);
    let room = room_id();
    let (mut alice, _) = join_with(node, &room, "alice", "", &[]).await;

    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "https://app.example:8443",
        "null",
    ] {
        let url = ws_url(node, &room, "mallory", "");
        match TestClient::try_connect_with(&url, &[("origin", origin)]).await {
            Ok(_) => panic!("Origin {origin}: the upgrade must be refused"),
            Err((status, body)) => {
                let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
                    panic!("Origin {origin}: the 403 body is not JSON ({e}): {body:?}")
                });
                assert_http_error(
                    status,
                    &body,
                    403,
                    "forbidden_origin",
                    &format!("Origin {origin}"),
                );
            }
        }
    }
    alice.expect_silence(QUIET).await;

    let (_bob, bob_user) =
        join_with(node, &room, "bob", "", &[("origin", "https://app.example")]).await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (_carol, carol_user) = join_with(
        node,
        &room,
        "carol",
        "",
        &[("origin", "https://second.example")],
    )
    .await;
    alice.expect_frame(&user_joined(&carol_user)).await;

    // CORS: preflight and simple requests.
    let path = format!("/rooms/{room}/users");
    let preflight = |origin: &'static str| {
        let path = path.clone();
        async move {
            node.request(
                "OPTIONS",
                &path,
                &[("origin", origin), ("access-control-request-method", "GET")],
                None,
            )
            .await
        }
    };
    let reply = preflight("https://app.example").await;
    assert!(
        (200..300).contains(&reply.status),
        "preflight from an allowed origin: status {} ({reply:?})",
        reply.status
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("https://app.example"),
        "preflight from an allowed origin: {reply:?}"
    );
    let reply = preflight("https://evil.example").await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        None,
        "preflight from another origin must not be allowed: {reply:?}"
    );
    let reply = node
        .request("GET", &path, &[("origin", "https://second.example")], None)
        .await;
    assert_eq!(reply.status, 200, "GET with an allowed origin: {reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("https://second.example"),
        "GET with an allowed origin: {reply:?}"
    );
    let reply = node
        .request("GET", &path, &[("origin", "https://evil.example")], None)
        .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        None,
        "GET from another origin: {reply:?}"
    );

    // Default: any origin.
    let (_dave, _) = join_with(
        open.node(0),
        &room_id(),
        "dave",
        "",
        &[("origin", "https://evil.example")],
    )
    .await;
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// TLS_CERT_FILE/TLS_KEY_FILE: the node serves HTTPS and WSS with that certificate (a join and a relay work over wss://) and no plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_wss() {
    let cert = SelfSigned::generate();
    let node = TestNode::spawn(
        None,
        &key_prefix(),
        &[
            ("TLS_CERT_FILE", &cert.cert_path),
            ("TLS_KEY_FILE", &cert.key_path),
        ],
    );
    let port = node.port();
    let config = cert.client_config();

    // Ready over HTTPS (bounded poll).
    let probe = config.clone();
    let ready = tokio::time::timeout(
        TIMEOUT * 2,
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + TIMEOUT * 2;
            loop {
                match https_get_blocking(port, "/readyz", probe.clone()) {
                    Ok((200, body)) => return Ok(body),
                    other if std::time::Instant::now() >= deadline => {
                        return Err(format!("last answer: {other:?}"))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }),
    )
    .await;
    match ready {
        Ok(Ok(Ok(_))) => {}
        other => panic!(
            "the node did not become ready over HTTPS: {other:?}\n{}",
            node.log()
        ),
    }
    let health = config.clone();
    let (status, body) =
        tokio::task::spawn_blocking(move || https_get_blocking(port, "/healthz", health))
            .await
            .expect("join the HTTPS probe")
            .unwrap_or_else(|e| panic!("GET https://localhost:{port}/healthz failed: {e}"));
    assert_eq!(status, 200, "GET /healthz over HTTPS: {body}");
    let body: Value = serde_json::from_str(&body).expect("healthz body is JSON");
    assert_eq!(body["status"], "ok", "healthz body: {body}");

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("reqwest client")
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    if let Ok(resp) = plain {
        assert_ne!(
            resp.status().as_u16(),
            200,
            "plain HTTP must not be served on a TLS port"
        );
    }

    // A client that trusts another certificate refuses the node's.
    let stranger = SelfSigned::generate().client_config();
    let refused = tokio::task::spawn_blocking(move || tls_connect(port, stranger).map(|_| ()))
        .await
        .expect("join the TLS probe");
    assert!(
        refused.is_err(),
        "a client trusting another certificate connected"
    );

    // wss://: join, announce, relay.
    let room = room_id();
    let wss = config.clone();
    let result = tokio::time::timeout(
        TIMEOUT * 4,
        tokio::task::spawn_blocking(move || {
            let mut alice = BlockingWs::connect(port, &format!("/ws/{room}/alice"), wss.clone())
                .expect("wss connect alice");
            let frame = alice.recv_json();
            let alice_user = assert_room_users(&frame, &room, "alice", &[]);
            let mut bob = BlockingWs::connect(port, &format!("/ws/{room}/bob"), wss)
                .expect("wss connect bob");
            let frame = bob.recv_json();
            let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
            assert_eq!(alice.recv_json(), user_joined(&bob_user), "alice over wss");
            let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
            bob.send_json(&json!({"type": "sdp_offer", "target": "alice", "payload": offer}));
            assert_eq!(
                alice.recv_json(),
                relayed("sdp_offer", "bob", Some("alice"), offer),
                "relayed over wss"
            );
            bob.close();
            assert_eq!(
                alice.recv_json(),
                user_left("bob", &room, "left"),
                "alice over wss"
            );
            alice.close();
        }),
    )
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic.into_panic()),
        Err(_) => panic!("the wss scenario did not finish within {:?}", TIMEOUT * 4),
    }
}

/// REDIS_URL=rediss://...#insecure: two nodes talk to a TLS-only Redis port and relay between each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_relay_over_redis_with_tls() {
    let Some(tls) = RedisServer::start_tls() else {
        eprintln!("SKIPPED nodes_relay_over_redis_with_tls: this redis-server has no TLS support");
        return;
    };
    let prefix = key_prefix();
    let url = tls.url();
    let env = [("REDIS_URL", url.as_str())];
    let nodes =
        futures::future::join_all((0..2).map(|_| TestNode::start(None, &prefix, &env))).await;
    let room = room_id();
    let (mut alice, alice_user) = join(&nodes[0], &room, "alice").await;
    let (mut bob, frame) = TestClient::connect_join(&nodes[1], &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": offer}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    bob.send_json(json!({"type": "message", "target": "alice", "payload": "over tls"}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", Some("alice"), json!("over tls")))
        .await;

    // The state is in this Redis, and the nodes are connected to its TLS port.
    let redis = &tls.server;
    assert_eq!(
        redis.smembers(&format!("{prefix}room:{{{room}}}")),
        ["alice", "bob"].iter().map(|s| (*s).to_owned()).collect(),
        "room members in the TLS Redis"
    );
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let tls_local = format!("laddr=127.0.0.1:{}", tls.tls_port());
    let over_tls = clients.lines().filter(|l| l.contains(&tls_local)).count();
    assert!(
        over_tls >= 2,
        "expected the nodes' connections on the TLS port {}:\n{clients}",
        tls.tls_port()
    );
    let plain_local = format!("laddr=127.0.0.1:{}", redis.port());
    let over_plain: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains(&plain_local) && !l.contains("cmd=client"))
        .collect();
    assert!(
        over_plain.is_empty(),
        "node connections on the plain port: {over_plain:?}"
    );
}

// ---------------------------------------------------------------------------
// Payload encryption
// ---------------------------------------------------------------------------

/// PAYLOAD_ENCRYPTION_KEY (same on both nodes): payloads relayed across Redis arrive exactly, yet their text never crosses Redis (MONITOR, pub/sub) nor is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_cross_redis_encrypted() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 2, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let monitor = RedisTap::start(redis.port(), &["MONITOR"]).await;
    let pattern = format!("{prefix}*");
    let published = RedisTap::start(redis.port(), &["PSUBSCRIBE", &pattern]).await;

    let room = room_id();
    let (mut alice, _) = join(&nodes[0], &room, "alice").await;
    let (mut bob, bob_user) = join(&nodes[1], &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let offer = json!({"type": "offer", "sdp": format!("v=0\r\na=x-marker:{marker}\r\n")});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": offer, "id": 1}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    let marker2 = format!("SECOND{}", uuid::Uuid::new_v4().simple());
    bob.send_json(json!({"type": "message", "payload": {"note": marker2}}))
        .await;
    alice
        .expect_frame(&relayed("message", "bob", None, json!({"note": marker2})))
        .await;

    // The taps did see the traffic to bob and to alice...
    let bob_channel = user_channel(&prefix, &room, "bob");
    let alice_channel = user_channel(&prefix, &room, "alice");
    let (taps, channels) = (&(&monitor, &published), &(&bob_channel, &alice_channel));
    eventually(
        TIMEOUT,
        "the Redis taps to see messages on the users' channels",
        move || async move {
            taps.1.contains(channels.0)
                && taps.1.contains(channels.1)
                && taps.0.contains(channels.0)
        },
    )
    .await;
    // ...but never the payloads' text.
    for (tap, name) in [(&monitor, "MONITOR"), (&published, "PSUBSCRIBE")] {
        for needle in [&marker, &marker2] {
            assert!(
                !tap.contains(needle),
                "{name} saw the plain payload text {needle}:\n{}",
                tap.text()
            );
        }
    }
    let stored: Vec<(String, String)> = redis
        .dump("*")
        .into_iter()
        .filter(|(key, content)| {
            key.contains(&marker) || content.contains(&marker) || content.contains(&marker2)
        })
        .collect();
    assert!(
        stored.is_empty(),
        "plain payload stored in Redis: {stored:?}"
    );
    for node in &nodes {
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 200, "readyz of {} (body {body})", node.node_id());
    }
}

/// A node whose PAYLOAD_ENCRYPTION_KEY differs from the cluster's fails loudly: an ERROR log naming PAYLOAD_ENCRYPTION_KEY, /readyz 503, and no payload is delivered through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_encryption_key_fails_loudly() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let first_key = encryption_key();
    let other_key = encryption_key();
    let first = TestNode::start(
        Some(&redis),
        &prefix,
        &[("PAYLOAD_ENCRYPTION_KEY", &first_key)],
    )
    .await;
    let other = TestNode::spawn(
        Some(&redis),
        &prefix,
        &[("PAYLOAD_ENCRYPTION_KEY", &other_key)],
    );
    if let Err(e) = other.wait_healthy().await {
        panic!("{e}\n--- log ---\n{}", other.log());
    }

    let room = room_id();
    let (mut alice, _) = join(&first, &room, "alice").await;
    let mut bob = TestClient::connect(&other.ws_url(&room, "bob")).await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    match bob.recv_json().await {
        frame if frame["type"] == "room_users" => {
            // bob was admitted by the mismatched node: a payload for him must not arrive.
            alice
                .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": {"type": "offer", "sdp": marker}}))
                .await;
            let deadline = std::time::Instant::now() + QUIET * 3;
            while let Some(remaining) = deadline.checked_duration_since(std::time::Instant::now()) {
                match bob.next_event(remaining).await {
                    None => break,
                    Some(Event::Text(text)) => assert!(
                        !text.contains(&marker) && !text.contains("sdp_offer"),
                        "bob received the offer through a node with another key: {text}"
                    ),
                    Some(_) => break,
                }
            }
        }
        frame => {
            // Refusing joins while misconfigured is loud enough; it must be `unavailable`.
            if let Some(mismatch) = error_echo_mismatch(&frame, "unavailable", None, None) {
                panic!("bob on the mismatched node: {mismatch}");
            }
            bob.expect_close(1013).await;
        }
    }
    let logged = other
        .wait_for_log_line(
            |line| line.contains("ERROR") && line.contains("PAYLOAD_ENCRYPTION_KEY"),
            TIMEOUT,
        )
        .await;
    assert!(
        logged,
        "no ERROR log line naming PAYLOAD_ENCRYPTION_KEY on the mismatched node:\n{}",
        other.log()
    );
    assert!(
        !other.log().contains(&other_key) && !other.log().contains(&first_key),
        "a node logged an encryption key"
    );
    // The node that was ready first holds the cluster's key: it stays ready, and the
    // newcomer with another key becomes (and stays) unready.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut last = (0, 0);
    while std::time::Instant::now() < deadline {
        last = (first.get("/readyz").await.0, other.get("/readyz").await.0);
        if last == (200, 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last,
        (200, 503),
        "/readyz of (the cluster's first node, the node with another key) after {TIMEOUT:?}"
    );
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (first.get("/readyz").await.0, other.get("/readyz").await.0);
        assert_eq!(
            now,
            (200, 503),
            "/readyz of (first node, node with another key) later on"
        );
    }
}

/// The channel `user`'s envelopes in `room` are published on: the one place these
/// tests name it.
fn user_channel(prefix: &str, room: &str, user: &str) -> String {
    format!("{prefix}room:{{{room}}}:ch:{user}")
}

/// The sealed envelopes (`E ...`) a tap subscribed to one channel has seen, in order.
fn sealed_envelopes(tap: &RedisTap) -> Vec<String> {
    tap.text()
        .split("\r\n")
        .filter(|part| part.starts_with("E "))
        .map(str::to_owned)
        .collect()
}

/// `GET /metrics` of `node`, as text.
async fn metrics_text(node: &TestNode) -> String {
    let reply = node.request("GET", "/metrics", &[], None).await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
    reply.text
}

/// With PAYLOAD_ENCRYPTION_KEY, a clear frame envelope published into Redis on a
/// user's channel (or a clear membership envelope smuggling a frame) is dropped:
/// the next thing the user sees is the legitimate message sent after it. The drop
/// is counted and logged at WARN, without the injected text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_envelopes_are_refused_when_a_key_is_set() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 1, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let node = &nodes[0];
    let room = room_id();
    let (mut alice, _) = join(node, &room, "alice").await;
    let (mut bob, bob_user) = join(node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    let channel = user_channel(&prefix, &room, "bob");
    let marker = format!("INJECTED{}", uuid::Uuid::new_v4().simple());
    let forged =
        json!({"type": "message", "from": "alice", "target": "bob", "payload": marker}).to_string();
    let session = uuid::Uuid::new_v4();
    for envelope in [
        format!("F 0\n{forged}"),
        format!("J alice {session}\n{forged}"),
    ] {
        assert_eq!(
            redis.cli(&["PUBLISH", &channel, &envelope]).trim(),
            "1",
            "the node must be subscribed to {channel}"
        );
    }
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": "real"}))
        .await;
    bob.expect_frame(&relayed("message", "alice", Some("bob"), json!("real")))
        .await;

    let metrics = metrics_text(node).await;
    assert!(
        metrics.contains("signal_envelopes_dropped_total{reason=\"clear\"} 2"),
        "two clear envelopes must be counted as dropped:\n{metrics}"
    );
    assert!(
        node.wait_for_log_line(
            |l| l.contains("WARN") && l.contains("dropping an envelope"),
            TIMEOUT
        )
        .await,
        "no WARN about the dropped envelope:\n{}",
        node.log()
    );
    assert!(
        !node.log().contains(&marker),
        "the dropped envelope's text reached the log"
    );
}

/// A sealed envelope is bound to its channel: copies captured on alice's channel
/// (a directed message and her copy of a broadcast), re-published on bob's channel
/// in the same room, never reach bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_envelopes_cannot_be_replayed_to_another_user() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let nodes = start_nodes(&redis, &prefix, 1, &[("PAYLOAD_ENCRYPTION_KEY", &key)]).await;
    let node = &nodes[0];
    let room = room_id();
    let (mut alice, _) = join(node, &room, "alice").await;
    let (mut bob, bob_user) = join(node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(node, &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    let alice_channel = user_channel(&prefix, &room, "alice");
    let tap = RedisTap::start(redis.port(), &["SUBSCRIBE", &alice_channel]).await;
    carol
        .send_json(json!({"type": "message", "target": "alice", "payload": "for-alice"}))
        .await;
    alice
        .expect_frame(&relayed(
            "message",
            "carol",
            Some("alice"),
            json!("for-alice"),
        ))
        .await;
    carol
        .send_json(json!({"type": "message", "payload": "to-all"}))
        .await;
    let broadcast = relayed("message", "carol", None, json!("to-all"));
    alice.expect_frame(&broadcast).await;
    bob.expect_frame(&broadcast).await;
    let tap_ref = &tap;
    eventually(
        TIMEOUT,
        "the tap to see alice's two sealed envelopes",
        move || async move { sealed_envelopes(tap_ref).len() >= 2 },
    )
    .await;

    let bob_channel = user_channel(&prefix, &room, "bob");
    for sealed in sealed_envelopes(&tap) {
        assert_eq!(redis.cli(&["PUBLISH", &bob_channel, &sealed]).trim(), "1");
    }
    carol
        .send_json(json!({"type": "message", "target": "bob", "payload": "real"}))
        .await;
    bob.expect_frame(&relayed("message", "carol", Some("bob"), json!("real")))
        .await;
    let metrics = metrics_text(node).await;
    assert!(
        metrics.contains("signal_envelopes_dropped_total{reason=\"unopenable\"} 2"),
        "the two replays must be counted as dropped:\n{metrics}"
    );
}

/// With PAYLOAD_ENCRYPTION_KEY on two nodes, every envelope kind still works across
/// them: joins (`J`), directed and broadcast frames (`F`, sealed), an admin kick and
/// a room close (`K` and `L`, some built by Lua), a replacement across nodes and a
/// leave; and nothing legitimate is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_kind_works_with_a_key() {
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let key = encryption_key();
    let env = [
        ("PAYLOAD_ENCRYPTION_KEY", key.as_str()),
        ("ADMIN_TOKEN", ADMIN),
    ];
    let nodes = start_nodes(&redis, &prefix, 2, &env).await;
    let room = room_id();
    let (mut alice, _) = join(&nodes[0], &room, "alice").await;
    let (mut bob, bob_user) = join(&nodes[1], &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": {"sdp": "x"}}))
        .await;
    bob.expect_frame(&relayed(
        "sdp_offer",
        "alice",
        Some("bob"),
        json!({"sdp": "x"}),
    ))
    .await;
    bob.send_json(json!({"type": "broadcast", "payload": 7}))
        .await;
    alice
        .expect_frame(&relayed("broadcast", "bob", None, json!(7)))
        .await;

    let (mut carol, carol_user) = join(&nodes[1], &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;
    let (status, body) = admin(
        &nodes[0],
        "DELETE",
        &format!("/rooms/{room}/users/carol"),
        None,
    )
    .await;
    assert_eq!(status, 204, "kick carol: {body}");
    carol.expect_error_then_close("kicked", 4410).await;
    alice
        .expect_frame(&user_left("carol", &room, "kicked"))
        .await;
    bob.expect_frame(&user_left("carol", &room, "kicked")).await;

    // bob again, on the other node: the old session is replaced.
    let (bob2, bob2_user) = join(&nodes[0], &room, "bob").await;
    bob.expect_error_then_close("replaced", 4409).await;
    alice.expect_frame(&user_joined(&bob2_user)).await;
    bob2.close().await;
    alice.expect_frame(&user_left("bob", &room, "left")).await;

    let (status, body) = admin(&nodes[1], "DELETE", &format!("/rooms/{room}"), None).await;
    assert!(
        status == 200 || status == 204,
        "close the room: {status} {body}"
    );
    alice.expect_error_then_close("kicked", 4410).await;

    for node in &nodes {
        let metrics = metrics_text(node).await;
        assert!(
            !metrics.contains("signal_envelopes_dropped_total"),
            "{} dropped a legitimate envelope:\n{metrics}",
            node.node_id()
        );
    }
}
