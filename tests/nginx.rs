//! nginx in front of real nodes, with the proxy configuration docker-compose runs:
//! nginx/signal-http.conf and nginx/signal-locations.conf are included unchanged, and
//! only what differs per machine (ports, paths, one worker) is written here. Checks
//! that WebSocket upgrades pass, that connections are spread round robin (no sticky
//! sessions), that relays cross nodes, and that a dead node is skipped.
//!
//! Needs Debian's nginx (`apt-get install -y nginx`, as .ci/run does); without it
//! these tests fail and say so.

mod support;

use serde_json::{json, Value};
use support::*;

/// `GET /users/{user}` through `nginx` → the node holding the user's session.
async fn node_of(nginx: &Nginx, user: &str) -> String {
    let (status, body) = nginx.get(&format!("/users/{user}")).await;
    assert_eq!(status, 200, "GET /users/{user} through nginx: {body}");
    body["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("GET /users/{user}: no node_id in {body}"))
        .to_owned()
}

async fn join_via(nginx: &Nginx, room: &str, user: &str) -> (TestClient, Value) {
    let label = format!("{user}@{room} via nginx");
    let (client, frame) = TestClient::join_with(&nginx.ws_url(room, user), &[], &label).await;
    let me = frame["payload"]["self"].clone();
    assert_user(&me, user, room);
    (client, me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_passes_through_round_robin_and_metrics_stay_private() {
    let redis = RedisServer::start();
    let nodes = start_nodes(&redis, &key_prefix(), 2, &[]).await;
    let mut nginx = Nginx::start(&[nodes[0].port(), nodes[1].port()]).await;

    let mut answered = Vec::new();
    for _ in 0..2 {
        let (status, body) = nginx.get("/healthz").await;
        assert_eq!(status, 200, "GET /healthz through nginx: {body}");
        answered.push(body["node_id"].as_str().unwrap_or_default().to_owned());
    }
    let mut expected = vec![nodes[0].node_id().to_owned(), nodes[1].node_id().to_owned()];
    expected.sort();
    answered.sort();
    assert_eq!(
        answered, expected,
        "two consecutive /healthz through one round-robin worker must reach both nodes"
    );

    // Prometheus scrapes each node itself; one random node's numbers are not served.
    let (status, _) = nginx.get("/metrics").await;
    assert_eq!(status, 404, "/metrics must not be proxied");
    assert!(nginx.stop(), "nginx did not exit gracefully on QUIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_spread_round_robin_and_relay_across_nodes() {
    let redis = RedisServer::start();
    let nodes = start_nodes(&redis, &key_prefix(), 2, &[]).await;
    let mut nginx = Nginx::start(&[nodes[0].port(), nodes[1].port()]).await;
    let room = room_id();

    // Two consecutive connections through one round-robin worker: different nodes.
    let (mut alice, _) = join_via(&nginx, &room, "alice").await;
    let (mut bob, bob_user) = join_via(&nginx, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (alice_node, bob_node) = (node_of(&nginx, "alice").await, node_of(&nginx, "bob").await);
    assert_ne!(
        alice_node, bob_node,
        "alice and bob must be on different nodes (round robin, no stickiness)"
    );

    // The relay crosses nodes, both ways, through the proxied WebSockets.
    let offer = json!({"type": "offer", "sdp": "v=0 via nginx"});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": &offer}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    let answer = json!({"type": "answer", "sdp": "v=0 back"});
    bob.send_json(json!({"type": "sdp_answer", "target": "alice", "payload": &answer}))
        .await;
    alice
        .expect_frame(&relayed("sdp_answer", "bob", Some("alice"), answer))
        .await;

    // One client reconnecting: each new connection lands on the other node. Its node
    // is read from a node directly, so that only carol's connections go through nginx.
    let mut landed = Vec::new();
    for _ in 0..4 {
        let (carol, _) = join_via(&nginx, &room, "carol").await;
        let (status, body) = nodes[0].get("/users/carol").await;
        assert_eq!(status, 200, "GET /users/carol: {body}");
        landed.push(body["node_id"].as_str().unwrap_or_default().to_owned());
        carol.close().await;
    }
    for pair in landed.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "consecutive reconnects must alternate nodes: {landed:?}"
        );
    }

    alice.close().await;
    bob.close().await;
    assert!(nginx.stop(), "nginx did not exit gracefully on QUIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped() {
    let redis = RedisServer::start();
    let nodes = start_nodes(&redis, &key_prefix(), 2, &[]).await;
    let mut nginx = Nginx::start(&[nodes[0].port(), nodes[1].port()]).await;
    nodes[1].sigkill().await;

    // Refused connections go to the next node (proxy_next_upstream error): every
    // join succeeds, whichever node round robin picked first.
    let room = room_id();
    for i in 0..3 {
        let user = format!("u{i}");
        let (client, _) = join_via(&nginx, &room, &user).await;
        assert_eq!(node_of(&nginx, &user).await, nodes[0].node_id());
        client.close().await;
    }
    assert!(nginx.stop(), "nginx did not exit gracefully on QUIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_no_query_strings() {
    let node = TestNode::start(None, &key_prefix(), &[]).await;
    let mut nginx = Nginx::start(&[node.port()]).await;
    let room = room_id();
    // Browsers cannot set headers on a WebSocket: tokens and passwords ride the URL.
    let url = format!(
        "{}?token=SECRETMARK&password=PWMARK",
        nginx.ws_url(&room, "alice")
    );
    let (alice, _) = TestClient::join_with(&url, &[], "alice via nginx").await;
    alice.close().await;
    let (status, _) = nginx.get("/rooms?cursor=QUERYMARK").await;
    assert!(status > 0);
    // QUIT flushes and closes the log: afterwards every request is in it.
    assert!(nginx.stop(), "nginx did not exit gracefully on QUIT");

    let log = nginx.access_log();
    let path = format!("GET /ws/{room}/alice HTTP/1.1");
    assert!(
        log.contains(&path),
        "the access log must still name the request ({path}):\n{log}"
    );
    for mark in ["SECRETMARK", "PWMARK", "QUERYMARK"] {
        assert!(
            !log.contains(mark),
            "the access log contains the query string ({mark}):\n{log}"
        );
    }
}
