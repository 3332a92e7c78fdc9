//! Helpers shared by the security suites (tests/security_*.rs): the admin bearer
//! and JWT secret of the test nodes, token signing, joins with a query or headers,
//! expected refusals, admin requests, and room and membership assertions.
//!
//! Not re-exported by `support`: the security suites `use support::security::*;`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// The admin bearer of every node that has admin enabled.
pub const ADMIN: &str = "admin-T0ken_0123456789abcdef";

/// The HS256 secret of jwt-mode nodes.
pub const SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

pub fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit in i64")
}

/// `{"sub": user, "room": room, "exp": now + 600}`
pub fn claims(user: &str, room: &str) -> Value {
    json!({"sub": user, "room": room, "exp": now() + 600})
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a test token")
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// A token valid for the jwt-mode test nodes (HS256 with SECRET).
pub fn token(claims: &Value) -> String {
    hs256(SECRET, claims)
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn encode_query(value: &str) -> String {
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
pub fn ws_url(node: &TestNode, room: &str, user: &str, query: &str) -> String {
    let base = node.ws_url(room, user);
    if query.is_empty() {
        base
    } else {
        format!("{base}?{query}")
    }
}

/// Joins with `?{query}` and extra headers; returns the client and its own USER.
pub async fn join_with(
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
pub async fn join_token(
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
pub async fn rejected(
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

/// `METHOD path` with the admin bearer → (status, JSON or Null).
pub async fn admin(node: &TestNode, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    node.bearer_request(method, path, Some(ADMIN), body.as_ref())
        .await
}

/// POST /rooms with `body` (admin): must answer 201; returns the room object.
pub async fn create_room(node: &TestNode, body: Value) -> Value {
    let (status, room) = admin(node, "POST", "/rooms", Some(body.clone())).await;
    assert_eq!(status, 201, "POST /rooms {body}: status (body {room})");
    room
}

// ---------------------------------------------------------------------------
// Shapes and Redis writes
// ---------------------------------------------------------------------------

/// Asserts an RFC 3339 instant within `[lo, hi]` seconds from now; returns it.
#[track_caller]
pub fn assert_instant(value: &Value, lo: i64, hi: i64, what: &str) -> time::OffsetDateTime {
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
pub fn assert_room(
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

/// GET with a bearer; asserts 200 and that the listed users are exactly `users`.
pub async fn assert_members_with(node: &TestNode, room: &str, bearer: &str, users: &[&Value]) {
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
pub fn rejected_writes(
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
