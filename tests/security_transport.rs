//! Security, transport (PROTOCOL.md sections 2, 8 and 10): allowed origins and CORS,
//! TLS for clients (HTTPS and WSS) and for Redis (`rediss://`).

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::security::*;
use support::*;

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
                with_seq(relayed("sdp_offer", "bob", Some("alice"), offer), 1),
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
