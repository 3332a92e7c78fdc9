//! Frame builders and exact shape assertions (frames, USER objects, HTTP errors,
//! REST membership) per PROTOCOL.md.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::node::TestNode;

/// `{"type":"user_joined","payload":USER}`
pub fn user_joined(user: &Value) -> Value {
    json!({"type": "user_joined", "payload": user})
}

/// `{"type":"user_left","payload":{"user_id","room_id","reason"}}`
pub fn user_left(user: &str, room: &str, reason: &str) -> Value {
    json!({"type": "user_left", "payload": {"user_id": user, "room_id": room, "reason": reason}})
}

/// A relayed frame as the receiver must see it (`target` absent on broadcasts).
pub fn relayed(kind: &str, from: &str, target: Option<&str>, payload: Value) -> Value {
    match target {
        Some(target) => json!({"type": kind, "from": from, "target": target, "payload": payload}),
        None => json!({"type": kind, "from": from, "payload": payload}),
    }
}

/// `frame` (a relayed frame) with its `seq`, for clients that keep it (PROTOCOL.md
/// section 4, v2); [`super::client::TestClient`] checks and removes it instead.
pub fn with_seq(mut frame: Value, seq: u64) -> Value {
    frame["seq"] = json!(seq);
    frame
}

/// The keys of a JSON object, sorted.
#[track_caller]
pub fn key_set(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Asserts that `value` is an object with exactly `keys`.
#[track_caller]
pub fn assert_keys(value: &Value, keys: &[&str], context: &str) {
    let expected: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(key_set(value), expected, "{context}: wrong set of keys");
}

/// Asserts a `joined_at`: RFC 3339 UTC with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`),
/// a real instant within the last hour.
#[track_caller]
pub fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("joined_at must be a string, got {value}"));
    let shape_ok = text.len() == 24
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "joined_at {text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("joined_at {text:?} is not RFC 3339: {e}"));
    let age = time::OffsetDateTime::now_utc() - at;
    assert!(
        age > time::Duration::seconds(-60) && age < time::Duration::hours(1),
        "joined_at {text:?} is not a recent instant"
    );
}

/// Asserts a USER object: exactly user_id, room_id, joined_at, role; role `peer`.
#[track_caller]
pub fn assert_user(user: &Value, user_id: &str, room: &str) {
    assert_keys(
        user,
        &["user_id", "room_id", "joined_at", "role"],
        &format!("USER {user}"),
    );
    assert_eq!(user["user_id"], user_id, "USER {user}: user_id");
    assert_eq!(user["room_id"], room, "USER {user}: room_id");
    assert_eq!(user["role"], "peer", "USER {user}: role");
    assert_timestamp(&user["joined_at"]);
}

/// Sorts a JSON array of USER objects by user_id.
#[track_caller]
pub fn sorted_users(users: &Value) -> Vec<Value> {
    let mut list = users
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of USER, got {users}"))
        .clone();
    list.sort_by(|a, b| a["user_id"].as_str().cmp(&b["user_id"].as_str()));
    list
}

/// Asserts `room_users.payload.session` (PROTOCOL.md sections 2 and 11, v2):
/// exactly `resume_token` (opaque text long enough for 128 random bits),
/// `resume_seconds` (a non-negative integer, `resume_seconds` when given) and
/// `resumed`; returns the token.
#[track_caller]
pub fn assert_session(payload: &Value, resumed: bool, resume_seconds: Option<u64>) -> String {
    let session = &payload["session"];
    assert_keys(
        session,
        &["resume_token", "resume_seconds", "resumed"],
        &format!("room_users session {session}"),
    );
    let token = session["resume_token"]
        .as_str()
        .unwrap_or_else(|| panic!("resume_token must be a string in {session}"));
    assert!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "resume_token {token:?} is too short for 128 random bits, or not printable ASCII"
    );
    let seconds = session["resume_seconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("resume_seconds must be a non-negative integer in {session}"));
    if let Some(expected) = resume_seconds {
        assert_eq!(seconds, expected, "resume_seconds in {session}");
    }
    assert_eq!(
        session["resumed"],
        Value::Bool(resumed),
        "session.resumed in {session}"
    );
    token.to_owned()
}

/// Asserts a `room_users` frame for `user` in `room` whose `users` are exactly
/// `others` (any order), with a fresh (not resumed) `session` and an `ice_servers`
/// array; returns the newcomer's own USER (`self`).
#[track_caller]
pub fn assert_room_users(frame: &Value, room: &str, user: &str, others: &[&Value]) -> Value {
    assert_room_users_session(frame, room, user, others, false)
}

/// [`assert_room_users`] for a session that is `resumed` or not.
#[track_caller]
pub fn assert_room_users_session(
    frame: &Value,
    room: &str,
    user: &str,
    others: &[&Value],
    resumed: bool,
) -> Value {
    assert_keys(
        frame,
        &["type", "payload"],
        &format!("room_users frame {frame}"),
    );
    assert_eq!(frame["type"], "room_users");
    let payload = &frame["payload"];
    assert_keys(
        payload,
        &["room_id", "self", "users", "session", "ice_servers"],
        &format!("room_users payload {payload}"),
    );
    assert_eq!(payload["room_id"], room, "room_users room_id");
    assert_session(payload, resumed, None);
    assert!(
        payload["ice_servers"].is_array(),
        "room_users ice_servers must be an array in {payload}"
    );
    assert_user(&payload["self"], user, room);
    let users = sorted_users(&payload["users"]);
    for listed in &users {
        let id = listed["user_id"].as_str().unwrap_or_default();
        assert_user(listed, id, room);
    }
    let expected = sorted_users(&Value::Array(others.iter().map(|u| (*u).clone()).collect()));
    assert!(
        users == expected,
        "room_users for {user}: wrong users\n  expected: {}\n    actual: {}",
        Value::Array(expected.clone()),
        Value::Array(users.clone())
    );
    payload["self"].clone()
}

/// Asserts `{"type":"error","payload":{"code":code,"message":"<text>",...}}`.
#[track_caller]
pub fn assert_error_frame(frame: &Value, code: &str, context: &str) {
    assert_keys(
        frame,
        &["type", "payload"],
        &format!("{context}: error frame {frame}"),
    );
    assert_eq!(
        frame["type"], "error",
        "{context}: expected an error frame, got {frame}"
    );
    assert_eq!(
        frame["payload"]["code"], code,
        "{context}: error code in {frame}"
    );
    assert!(
        frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: error message must be a non-empty string in {frame}"
    );
}

/// Compares `frame` with `{"type":"error","payload":{"code","message",["id"],["target"]}}`
/// (any non-empty message); describes the difference, if any.
pub fn error_echo_mismatch(
    frame: &Value,
    code: &str,
    id: Option<Value>,
    target: Option<&str>,
) -> Option<String> {
    let message = &frame["payload"]["message"];
    if message.as_str().is_none_or(str::is_empty) {
        return Some(format!(
            "expected an error frame with a non-empty message, got {frame}"
        ));
    }
    let mut payload = json!({"code": code, "message": message});
    if let Some(id) = id {
        payload["id"] = id;
    }
    if let Some(target) = target {
        payload["target"] = json!(target);
    }
    let expected = json!({"type": "error", "payload": payload});
    (frame != &expected)
        .then(|| format!("unexpected error frame\n  expected: {expected}\n    actual: {frame}"))
}

/// Asserts an HTTP error body `{"error":{"code":code,"message":"<text>"}}`.
#[track_caller]
pub fn assert_http_error(
    status: u16,
    body: &Value,
    expected_status: u16,
    code: &str,
    context: &str,
) {
    assert_eq!(status, expected_status, "{context}: status (body {body})");
    assert_keys(body, &["error"], &format!("{context}: body {body}"));
    assert_keys(
        &body["error"],
        &["code", "message"],
        &format!("{context}: body {body}"),
    );
    assert_eq!(
        body["error"]["code"], code,
        "{context}: error code in {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: error message must be a non-empty string in {body}"
    );
}

/// Asserts `GET /rooms/{room}/users` on `node` lists exactly `users` (any order).
pub async fn assert_rest_members(node: &TestNode, room: &str, users: &[&Value]) {
    let (status, body) = node.get(&format!("/rooms/{room}/users")).await;
    let context = format!("GET /rooms/{room}/users on {}", node.node_id());
    assert_eq!(status, 200, "{context}: status (body {body})");
    assert_keys(
        &body,
        &["room_id", "users", "count"],
        &format!("{context}: body {body}"),
    );
    assert_eq!(body["room_id"], room, "{context}: room_id");
    assert_eq!(body["count"], users.len(), "{context}: count in {body}");
    let actual = sorted_users(&body["users"]);
    let expected = sorted_users(&Value::Array(users.iter().map(|u| (*u).clone()).collect()));
    assert!(
        actual == expected,
        "{context}: wrong users\n  expected: {}\n    actual: {}",
        Value::Array(expected.clone()),
        Value::Array(actual.clone())
    );
}

/// Asserts `GET /users/{user}` on `node` is `user` plus `node_id`.
pub async fn assert_rest_user(node: &TestNode, user: &Value, node_id: &str) {
    let id = user["user_id"].as_str().expect("USER has a user_id");
    let (status, body) = node.get(&format!("/users/{id}")).await;
    let mut expected = user.clone();
    expected["node_id"] = json!(node_id);
    assert_eq!(
        status,
        200,
        "GET /users/{id} on {}: status (body {body})",
        node.node_id()
    );
    assert!(
        body == expected,
        "GET /users/{id} on {}\n  expected: {expected}\n    actual: {body}",
        node.node_id()
    );
}

/// Asserts a USER object: exactly user_id, room_id, joined_at, role, with `role`.
#[track_caller]
pub fn assert_user_with_role(user: &Value, user_id: &str, room: &str, role: &str) {
    assert_keys(
        user,
        &["user_id", "room_id", "joined_at", "role"],
        &format!("USER {user}"),
    );
    assert_eq!(user["user_id"], user_id, "USER {user}: user_id");
    assert_eq!(user["room_id"], room, "USER {user}: room_id");
    assert_eq!(user["role"], role, "USER {user}: role");
    assert_timestamp(&user["joined_at"]);
}
