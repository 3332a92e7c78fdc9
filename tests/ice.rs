//! ICE servers and TURN credentials (PROTOCOL.md section 12) through real node
//! processes: `room_users` (fresh and resumed) and `GET /ice-servers` carry the
//! configured servers plus a TURN entry whose credentials are what coturn's
//! `use-auth-secret` checks (recomputed here with HMAC-SHA1 independently of the
//! node's code); jwt mode ties them to the token's user; bad settings stop startup
//! with one line that never shows a secret; the secret never reaches the log.
//! A real coturn accepting them is proven with the browsers (tests/browser.rs).

#[macro_use]
mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "turn-shared-secret-0123456789";
const STUN: &str = r#"[{"urls":"stun:stun.example.org:3478"},{"urls":["turn:static.example.org:3478"],"username":"u","credential":"c"}]"#;
const TURN_URLS: &str = "turn:127.0.0.1:3478?transport=udp,turns:turn.example.org:5349";
const TTL: i64 = 3600;

/// The settings of every node here: two fixed servers, TURN with a 1 h TTL.
const ENV: [(&str, &str); 4] = [
    ("ICE_SERVERS", STUN),
    ("TURN_URLS", TURN_URLS),
    ("TURN_SECRET", SECRET),
    ("TURN_TTL_SECONDS", "3600"),
];

/// base64(HMAC-SHA1(SECRET, username)), computed here, not by the node.
fn expected_credential(username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Asserts `servers` is the two fixed entries then a TURN entry for `user`,
/// expiring a TTL from now; returns the expiry (Unix seconds).
fn assert_ice_servers(servers: &Value, user: &str) -> i64 {
    let fixed: Value = serde_json::from_str(STUN).expect("STUN is JSON");
    let list = servers
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {servers}"));
    assert_eq!(list.len(), 3, "{servers}");
    assert_eq!(
        list[..2],
        fixed.as_array().expect("array")[..],
        "fixed entries as configured"
    );
    let turn = &list[2];
    assert_keys(turn, &["urls", "username", "credential"], "the TURN entry");
    assert_eq!(
        turn["urls"],
        json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turns:turn.example.org:5349"
        ])
    );
    let username = turn["username"].as_str().expect("username is a string");
    let (expiry, who) = username.split_once(':').expect("expiry:user");
    assert_eq!(who, user, "{username}");
    let expiry: i64 = expiry.parse().expect("expiry is Unix seconds");
    let left = expiry - security::now();
    assert!(
        (TTL - 10..=TTL + 1).contains(&left),
        "expires in {left} s: {username}"
    );
    assert_eq!(turn["credential"], expected_credential(username), "{turn}");
    expiry
}

/// Every `room_users` carries the servers, with TURN credentials for its member;
/// a resumed one carries fresh ones.
async fn room_users_carry_ice_servers(c: &Cluster) {
    let room = room_id();
    let (mut alice, frame) = ResumingClient::join(c.node(0), &room, "alice").await;
    assert_ice_servers(&frame["payload"]["ice_servers"], "alice");
    let (bob, frame) = TestClient::connect_join(c.node(1), &room, "bob").await;
    assert_ice_servers(&frame["payload"]["ice_servers"], "bob");
    alice.conn().expect_type("user_joined").await;
    alice.drop_connection();
    let frame = alice.resume(c.node(1)).await;
    assert_eq!(frame["payload"]["session"]["resumed"], true, "{frame}");
    assert_ice_servers(&frame["payload"]["ice_servers"], "alice");
    bob.close().await;
}

both_engines!(
    room_users_carry_ice_servers_and_turn_credentials,
    env = [
        super::ENV[0],
        super::ENV[1],
        super::ENV[2],
        super::ENV[3],
        ("RESUME_GRACE_SECONDS", "20")
    ],
    room_users_carry_ice_servers
);

/// `GET /ice-servers` answers the same list for the `user_id` asked (a random id
/// when it is not valid), with `expires_at`, and is never cached; without TURN it
/// is the fixed list and `expires_at` null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ice_servers_answers_the_same_list() {
    let node = TestNode::start(None, &key_prefix(), &ENV).await;
    let reply = node
        .request("GET", "/ice-servers?user_id=carol", &[], None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    let body = reply.json();
    assert_keys(&body, &["ice_servers", "expires_at"], "GET /ice-servers");
    let expiry = assert_ice_servers(&body["ice_servers"], "carol");
    let expires_at = security::assert_instant(&body["expires_at"], TTL - 10, TTL + 1, "expires_at");
    assert_eq!(expires_at.unix_timestamp(), expiry);
    let text = body["expires_at"].as_str().unwrap_or_default();
    assert!(
        text.ends_with('Z') && text.contains('.'),
        "RFC 3339 UTC with milliseconds: {text}"
    );

    let (status, body) = node.get("/ice-servers?user_id=not%20valid").await;
    assert_eq!(status, 200);
    let username = body["ice_servers"][2]["username"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let user = username.split_once(':').map(|(_, u)| u).unwrap_or_default();
    assert!(
        user.starts_with("anon-") && user.len() > 10,
        "random user: {username}"
    );
    assert_ice_servers(&body["ice_servers"], user);

    let plain = TestNode::start(None, &key_prefix(), &[("ICE_SERVERS", STUN)]).await;
    let (status, body) = plain.get("/ice-servers").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ice_servers": serde_json::from_str::<Value>(STUN).expect("JSON"), "expires_at": null})
    );
    let bare = TestNode::start(None, &key_prefix(), &[]).await;
    assert_eq!(
        bare.get("/ice-servers").await.1,
        json!({"ice_servers": [], "expires_at": null})
    );
}

/// In jwt mode `GET /ice-servers` needs a bearer; a client token's `sub` names the
/// credentials' user whatever `user_id` says; the admin token may ask for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_ties_the_credentials_to_the_token() {
    let mut env = ENV.to_vec();
    env.extend([
        ("AUTH_MODE", "jwt"),
        ("JWT_SECRET", security::SECRET),
        ("ADMIN_TOKEN", security::ADMIN),
    ]);
    let node = TestNode::start(None, &key_prefix(), &env).await;
    let (status, body) = node.bearer_request("GET", "/ice-servers", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let (status, _) = node
        .bearer_request("GET", "/ice-servers", Some("not-a-token"), None)
        .await;
    assert_eq!(status, 401);
    let token = security::token(&security::claims("dave", "*"));
    let (status, body) = node
        .bearer_request("GET", "/ice-servers?user_id=mallory", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ice_servers(&body["ice_servers"], "dave");
    let (status, body) = node
        .bearer_request(
            "GET",
            "/ice-servers?user_id=erin",
            Some(security::ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ice_servers(&body["ice_servers"], "erin");
}

/// Bad ICE settings stop startup with one line naming the variable, never
/// showing a value (it may hold credentials).
#[test]
fn bad_ice_settings_stop_startup() {
    let refused = |env: &[(&str, &str)], var: &str| {
        let (_, stderr, _) = run_node_expecting_exit(env);
        assert_refused(env, var);
        assert!(!stderr.contains(SECRET), "the secret in: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "a static credential in: {stderr}"
        );
    };
    refused(&[("ICE_SERVERS", "stun:stun.example.org")], "ICE_SERVERS");
    refused(&[("ICE_SERVERS", r#"{"urls":"stun:x"}"#)], "ICE_SERVERS");
    refused(
        &[("ICE_SERVERS", r#"[{"urls":"turn:x","username":"u"}]"#)],
        "ICE_SERVERS",
    );
    refused(
        &[(
            "ICE_SERVERS",
            r#"[{"urls":"http://x","credential":"hunter2"}]"#,
        )],
        "ICE_SERVERS",
    );
    refused(&[("TURN_URLS", TURN_URLS)], "TURN_SECRET");
    refused(&[("TURN_SECRET", SECRET)], "TURN_URLS");
    refused(
        &[("TURN_URLS", "stun:x:3478"), ("TURN_SECRET", SECRET)],
        "TURN_URLS",
    );
    refused(
        &[
            ("TURN_URLS", TURN_URLS),
            ("TURN_SECRET", SECRET),
            ("TURN_TTL_SECONDS", "5"),
        ],
        "TURN_TTL_SECONDS",
    );
}

/// The TURN secret appears in no log line, even at debug level, across joins and
/// `GET /ice-servers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_secret_is_never_logged() {
    let mut env = ENV.to_vec();
    env.push(("RUST_LOG", "debug"));
    let node = TestNode::start(None, &key_prefix(), &env).await;
    let (client, _) = TestClient::connect_join(&node, &room_id(), "alice").await;
    assert_eq!(node.get("/ice-servers?user_id=bob").await.0, 200);
    client.close().await;
    let log = node.log();
    assert!(log.contains("listening"), "the node's log was read: {log}");
    assert!(!log.contains(SECRET), "the TURN secret is in the log");
}
