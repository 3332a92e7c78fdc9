//! The node as a process: graceful shutdown on SIGTERM (PROTOCOL.md sections 4 and
//! 6), refusal of bad configuration (section 10) and the standalone startup notice.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

/// How long a node may take to drain and exit after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

/// Expects error `shutdown` (with `retry_after_ms`) then close 1001. Local room mates shutting down at the
/// same moment (`also_leaving`) may be announced first with user_left "shutdown".
async fn expect_shutdown(client: &mut TestClient, room: &str, also_leaving: &[&str]) {
    let mut announced = BTreeSet::new();
    loop {
        let frame = client.recv_json().await;
        if frame["type"] == "user_left" {
            let user = frame["payload"]["user_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                also_leaving.contains(&user.as_str()) && announced.insert(user.clone()),
                "{}: unexpected {frame} before shutdown",
                client.label()
            );
            assert_eq!(
                frame,
                user_left(&user, room, "shutdown"),
                "{}",
                client.label()
            );
            continue;
        }
        assert_error_frame(&frame, "shutdown", client.label());
        // Section 6 (v2): the payload also carries `retry_after_ms`, 0 to 1000.
        assert_keys(
            &frame["payload"],
            &["code", "message", "retry_after_ms"],
            &format!("{}: {frame}", client.label()),
        );
        assert!(
            frame["payload"]["retry_after_ms"]
                .as_u64()
                .is_some_and(|ms| ms <= 1000),
            "{}: retry_after_ms must be an integer from 0 to 1000 in {frame}",
            client.label()
        );
        break;
    }
    client.expect_close(1001).await;
}

/// Waits for the node to exit after SIGTERM and asserts it exited with success.
async fn assert_clean_exit(node: &TestNode) {
    let status = node.wait_exit(DRAIN).await.unwrap_or_else(|| {
        panic!(
            "node {} still running {DRAIN:?} after SIGTERM",
            node.node_id()
        )
    });
    assert!(
        status.success(),
        "node {} exited with {status} after SIGTERM",
        node.node_id()
    );
}

/// SIGTERM tells local clients shutdown + 1001, remote members user_left "shutdown", clears their Redis state and exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_local_clients_and_notifies_remote_members() {
    let c = Cluster::redis(2).await;
    let redis = c.redis_server();
    let room = room_id();
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(0), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    let (mut carol, carol_user) = join(c.node(1), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    bob.expect_frame(&user_joined(&carol_user)).await;

    c.node(0).sigterm();
    expect_shutdown(&mut alice, &room, &["bob"]).await;
    expect_shutdown(&mut bob, &room, &["alice"]).await;
    let mut left = vec![
        carol.expect_type("user_left").await,
        carol.expect_type("user_left").await,
    ];
    left.sort_by(|a, b| {
        a["payload"]["user_id"]
            .as_str()
            .cmp(&b["payload"]["user_id"].as_str())
    });
    assert_eq!(
        left,
        vec![
            user_left("alice", &room, "shutdown"),
            user_left("bob", &room, "shutdown")
        ],
        "user_left frames seen by carol"
    );
    assert_clean_exit(c.node(0)).await;

    carol.expect_silence(QUIET).await;
    assert!(
        !redis.exists(&c.user_key("alice")),
        "alice's hash survived the shutdown"
    );
    assert!(
        !redis.exists(&c.user_key("bob")),
        "bob's hash survived the shutdown"
    );
    let members: Vec<String> = redis.smembers(&c.room_key(&room)).into_iter().collect();
    assert_eq!(
        members,
        vec!["carol".to_owned()],
        "room members after the shutdown"
    );
    assert_rest_members(c.node(1), &room, &[&carol_user]).await;
}

/// A standalone node on SIGTERM tells its clients shutdown + 1001 and exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_standalone_node_closes_clients_with_1001() {
    let c = Cluster::standalone().await;
    let room = room_id();
    let (mut alice, _) = join(c.node(0), &room, "alice").await;
    let (mut bob, bob_user) = join(c.node(0), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;

    c.node(0).sigterm();
    expect_shutdown(&mut alice, &room, &["bob"]).await;
    expect_shutdown(&mut bob, &room, &["alice"]).await;
    assert_clean_exit(c.node(0)).await;
}

/// Spawns a node with `env`, and asserts it exits (bounded wait) non-zero with a message naming `var`.
async fn assert_config_rejected(env: &[(&str, &str)], var: &str) {
    let node = TestNode::spawn(None, &key_prefix(), env);
    let status = node.wait_exit(DRAIN).await.unwrap_or_else(|| {
        panic!(
            "node with {env:?} still running after {DRAIN:?}; log:\n{}",
            node.log()
        )
    });
    let log = node.log();
    assert!(
        !status.success(),
        "node with {env:?} exited with success; log:\n{log}"
    );
    assert!(
        log.contains(var),
        "the output for {env:?} does not name {var}:\n{log}"
    );
}

/// PORT=abc is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_port_is_refused() {
    assert_config_rejected(&[("PORT", "abc")], "PORT").await;
}

/// REDIS_DB=-1 (with REDIS_HOST set) is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_redis_db_is_refused() {
    assert_config_rejected(
        &[("REDIS_HOST", "127.0.0.1"), ("REDIS_DB", "-1")],
        "REDIS_DB",
    )
    .await;
}

/// REDIS_PORT=x (with REDIS_HOST set) is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_redis_port_is_refused() {
    assert_config_rejected(
        &[("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", "x")],
        "REDIS_PORT",
    )
    .await;
}

/// REDIS_URL=not-a-url is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_redis_url_is_refused() {
    assert_config_rejected(&[("REDIS_URL", "not-a-url")], "REDIS_URL").await;
}

/// MAX_MESSAGE_BYTES=0 is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_max_message_bytes_is_refused() {
    assert_config_rejected(&[("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES").await;
}

/// MAX_MESSAGE_BYTES=abc is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_max_message_bytes_is_refused() {
    assert_config_rejected(&[("MAX_MESSAGE_BYTES", "abc")], "MAX_MESSAGE_BYTES").await;
}

/// ROOM_TTL_SECONDS=abc is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_room_ttl_is_refused() {
    assert_config_rejected(&[("ROOM_TTL_SECONDS", "abc")], "ROOM_TTL_SECONDS").await;
}

/// LOG_FORMAT=xml is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_log_format_is_refused() {
    assert_config_rejected(&[("LOG_FORMAT", "xml")], "LOG_FORMAT").await;
}

/// A node without any Redis setting says at startup that it runs standalone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_node_announces_its_mode() {
    let node = TestNode::start(None, &key_prefix(), &[]).await;
    assert!(
        node.wait_for_log("standalone", TIMEOUT).await,
        "the startup log does not mention standalone mode:\n{}",
        node.log()
    );
}

/// Spawns a node with `env` and asserts it exits non-zero with exactly one line of
/// output that names every variable in `vars` (a misconfigured node must say what
/// to fix in one line, not start and fail every request).
async fn assert_refused_in_one_line(env: &[(&str, &str)], vars: &[&str], reason: &str) {
    let node = TestNode::spawn(None, &key_prefix(), env);
    let status = node.wait_exit(DRAIN).await.unwrap_or_else(|| {
        panic!(
            "node with {env:?} still running after {DRAIN:?}; log:\n{}",
            node.log()
        )
    });
    let log = node.log();
    assert!(
        !status.success(),
        "node with {env:?} exited with success; log:\n{log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line for {env:?}, got:\n{log}");
    assert!(
        lines[0].starts_with("signal-node: configuration error: "),
        "{}",
        lines[0]
    );
    for var in vars {
        assert!(lines[0].contains(var), "{} does not name {var}", lines[0]);
    }
    assert!(
        lines[0].contains(reason),
        "{} does not say {reason:?}",
        lines[0]
    );
}

/// Numbers that parse but that Redis or time arithmetic cannot use (a TTL of
/// 2^64-1 seconds) stop the node at startup, with the accepted range in the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_numbers_are_refused_in_one_line() {
    for var in ["ROOM_TTL_SECONDS", "TOKEN_MAX_TTL_SECONDS"] {
        assert_refused_in_one_line(
            &[(var, "18446744073709551615")],
            &[var],
            "must be between 1 and ",
        )
        .await;
    }
    assert_refused_in_one_line(
        &[("MAX_CONNECTIONS", "99999999999")],
        &["MAX_CONNECTIONS"],
        "must be between 1 and ",
    )
    .await;
}

/// JWT_SECRET and JWT_PUBLIC_KEY_FILE together are refused: POST /tokens would
/// mint HS256 tokens that the node (verifying with the public key) refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_secret_with_public_key_is_refused() {
    let key = rcgen::KeyPair::generate().expect("generate a P-256 key");
    let dir = TempDir::new();
    let public = dir.write("public.pem", key.public_key_pem().as_bytes());
    for mode in ["jwt", "none"] {
        assert_refused_in_one_line(
            &[
                ("AUTH_MODE", mode),
                ("JWT_SECRET", "s3cret"),
                ("JWT_PUBLIC_KEY_FILE", &public),
            ],
            &["JWT_SECRET", "JWT_PUBLIC_KEY_FILE"],
            "not both",
        )
        .await;
    }
}
