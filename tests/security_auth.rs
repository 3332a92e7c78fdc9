//! Security, authentication (PROTOCOL.md sections 2, 6, 8, 9 and 10): invalid
//! security settings stop a node at startup naming the variable; JWT on WebSockets
//! (HS256 with issuer and audience, ES256 and RS256 public keys) verified on every
//! node; bearers on the membership endpoints in jwt mode; and the documented order
//! of the connection checks (ids, origin, node full, token, password, capacity).

#[macro_use]
mod support;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use support::security::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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
