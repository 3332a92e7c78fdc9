//! Hardening against misbehaving clients and leaky logs: connections that never
//! finish their request (slowloris, plain and TLS, and under a low file-descriptor
//! limit), payloads and credentials kept out of logs at any `RUST_LOG`, every HTTP
//! error in the documented JSON shape, and `target_not_found` WARN lines bounded.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// A request line cut short: the node must not wait for the rest forever.
const PARTIAL_REQUEST: &[u8] = b"GET /healthz HT";
/// `HTTP_HEADER_TIMEOUT_SECONDS` of the slowloris tests.
const SHORT_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads until the server closes the connection (EOF or reset), bounded by
/// `within`; returns how long the connection lived since `opened`.
async fn until_closed(
    mut stream: TcpStream,
    opened: Instant,
    within: Duration,
) -> Result<Duration, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {:?}", opened.elapsed())),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(opened.elapsed()),
            // An error response (408, 400) may come first; the close is what counts.
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens `n` connections that each send [`PARTIAL_REQUEST`] and stall.
async fn stall(port: u16, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut stalled = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: connect timed out"))
            .unwrap_or_else(|e| panic!("connection {i}: connect failed: {e}"));
        // The send may fail if the node already closed an evicted connection.
        let _ = stream.write_all(PARTIAL_REQUEST).await;
        stalled.push((stream, Instant::now()));
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_headers_are_closed_and_healthz_answers() {
    let node = TestNode::start(None, &key_prefix(), &[("HTTP_HEADER_TIMEOUT_SECONDS", "1")]).await;
    let mut stalled = stall(node.port(), 50).await;
    // Silent ones (not a byte sent), and a keep-alive connection idle after one
    // complete request: hyper's header timer covers both.
    stalled.extend(stall_silent(node.port(), 5).await);
    stalled.push(keep_alive_idle(node.port()).await);

    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200, "/healthz during the stall: {body}");

    let bound = SHORT_HEADER_TIMEOUT + TIMEOUT;
    let lived = futures::future::join_all(
        stalled
            .into_iter()
            .map(|(stream, opened)| until_closed(stream, opened, bound)),
    )
    .await;
    let mut longest = Duration::ZERO;
    for (i, result) in lived.into_iter().enumerate() {
        match result {
            Ok(lived) => longest = longest.max(lived),
            Err(e) => panic!("stalled connection {i} was not closed by the node: {e}"),
        }
    }
    eprintln!("56 stalled plain connections: the longest lived {longest:?}");

    // Upgraded connections are not pending: with three WebSockets open, the only
    // pending connection left is the one asking for /metrics.
    let room = room_id();
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3"] {
        clients.push(join(&node, &room, user).await.0);
    }
    eventually(TIMEOUT, "signal_http_pending_connections 1", || async {
        pending_gauge(&node).await == Some(1.0)
    })
    .await;
}

/// A connection that completes one `GET /healthz`, reads the answer and goes idle.
async fn keep_alive_idle(port: u16) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&head).contains("\"status\"") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("the /healthz answer within TIMEOUT")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    (stream, Instant::now())
}

/// `signal_http_pending_connections` from the node's `/metrics`.
async fn pending_gauge(node: &TestNode) -> Option<f64> {
    let reply = node.request("GET", "/metrics", &[], None).await;
    reply
        .text
        .lines()
        .find_map(|l| l.strip_prefix("signal_http_pending_connections "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_closed_after_the_idle_timeout() {
    let node = TestNode::start(
        None,
        &key_prefix(),
        &[
            ("ADMIN_TOKEN", "admin-secret"),
            ("HTTP_IDLE_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(("127.0.0.1", node.port()))
        .await
        .expect("connect");
    let opened = Instant::now();
    // A complete head announcing 100 bytes of body, then 2 of them and silence.
    stream
        .write_all(
            b"POST /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"",
        )
        .await
        .expect("write");
    let lived = until_closed(stream, opened, Duration::from_secs(1) + TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a stalled request body kept the connection: {e}"));
    eprintln!("a stalled request body: closed after {lived:?}");
}

/// Polls `GET path` over HTTPS until 200; bounded.
async fn https_ready(node: &TestNode, cert: &SelfSigned, path: &'static str) -> String {
    let port = node.port();
    let config = cert.client_config();
    let ready = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + TIMEOUT * 2;
        loop {
            match https_get_blocking(port, path, config.clone()) {
                Ok((200, body)) => return Ok(body),
                other if Instant::now() >= deadline => return Err(format!("{other:?}")),
                // A bounded poll: the node gives no event for "listening".
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
    .await
    .expect("join the HTTPS probe");
    ready.unwrap_or_else(|e| panic!("GET {path} over HTTPS: {e}\n{}", node.log()))
}

/// Over TLS, stalls with a completed handshake and a partial request; returns how
/// long the connection lived until the node closed it.
fn tls_stall(port: u16, config: std::sync::Arc<rustls::ClientConfig>) -> Result<Duration, String> {
    let opened = Instant::now();
    let mut stream = tls_connect(port, config)?;
    stream
        .write_all(PARTIAL_REQUEST)
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(opened.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("still open after {:?}", opened.elapsed()))
            }
            // A close without close_notify, or a reset.
            Err(_) => return Ok(opened.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_and_headers_are_closed() {
    let cert = SelfSigned::generate();
    let node = TestNode::spawn(
        None,
        &key_prefix(),
        &[
            ("TLS_CERT_FILE", &cert.cert_path),
            ("TLS_KEY_FILE", &cert.key_path),
            ("HTTP_HEADER_TIMEOUT_SECONDS", "1"),
        ],
    );
    https_ready(&node, &cert, "/readyz").await;
    let port = node.port();

    // 25 never start the TLS handshake; 25 finish it and stall in the request line.
    let silent = stall_silent(port, 25).await;
    let mut tls = Vec::new();
    for _ in 0..25 {
        let config = cert.client_config();
        tls.push(tokio::task::spawn_blocking(move || tls_stall(port, config)));
    }

    let body = https_ready(&node, &cert, "/healthz").await;
    assert!(body.contains("\"ok\""), "/healthz over TLS: {body}");

    let bound = SHORT_HEADER_TIMEOUT + TIMEOUT;
    let mut longest = Duration::ZERO;
    for (i, result) in futures::future::join_all(
        silent
            .into_iter()
            .map(|(stream, opened)| until_closed(stream, opened, bound)),
    )
    .await
    .into_iter()
    .enumerate()
    {
        let lived = result.unwrap_or_else(|e| panic!("silent TLS connection {i}: {e}"));
        longest = longest.max(lived);
    }
    eprintln!("25 connections without a TLS handshake: the longest lived {longest:?}");
    let mut longest = Duration::ZERO;
    for (i, handle) in tls.into_iter().enumerate() {
        let lived = handle
            .await
            .expect("join a TLS staller")
            .unwrap_or_else(|e| panic!("TLS connection {i} with a partial request: {e}"));
        longest = longest.max(lived);
    }
    eprintln!("25 TLS connections with a partial request: the longest lived {longest:?}");
}

/// Opens `n` connections that send nothing at all.
async fn stall_silent(port: u16, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: connect timed out"))
            .unwrap_or_else(|e| panic!("connection {i}: connect failed: {e}"));
        out.push((stream, Instant::now()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connections_are_capped_under_a_low_fd_limit() {
    // The header timeout is long: only the pending cap can keep the node usable.
    let node = TestNode::start_with_fd_limit(
        128,
        &[
            ("MAX_PENDING_CONNECTIONS", "32"),
            ("HTTP_HEADER_TIMEOUT_SECONDS", "60"),
        ],
    )
    .await;
    let room = room_id();
    // Upgraded before the flood: an upgraded connection is no longer pending, so
    // the flood must not evict it.
    let (mut alice, _) = join(&node, &room, "alice").await;

    let stalled = stall(node.port(), 130).await;
    let (status, body) = node.get("/healthz").await;
    assert_eq!(
        status, 200,
        "/healthz after 130 stalled connections: {body}"
    );
    let (mut bob, bob_user) = join(&node, &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    alice
        .send_json(json!({"type": "ping", "payload": "still here"}))
        .await;
    alice
        .expect_frame(&json!({"type": "pong", "payload": "still here"}))
        .await;

    // The oldest stalled connections were evicted (closed), far more than the cap left.
    let mut closed = 0;
    for (stream, opened) in stalled {
        if until_closed(stream, opened, Duration::from_millis(100))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 130 - 32,
        "only {closed} of 130 stalled connections were closed; the cap is 32"
    );
    bob.send_json(json!({"type": "ping", "payload": 1})).await;
    bob.expect_frame(&json!({"type": "pong", "payload": 1}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_credentials_never_reach_the_log_even_at_trace() {
    let node = TestNode::start(None, &key_prefix(), &[("RUST_LOG", "trace")]).await;
    let room = room_id();
    let password_mark = format!("PWMARK{}", Uuid::new_v4().simple());
    let sdp_mark = format!("SDPMARK{}", Uuid::new_v4().simple());
    // The room has no password: the parameter is ignored, but it is on the URL.
    let url = |user: &str| format!("{}?password={password_mark}", node.ws_url(&room, user));
    let (mut alice, _) = TestClient::join_with(&url("alice"), &[], "alice").await;
    let (mut bob, bob_frame) = TestClient::join_with(&url("bob"), &[], "bob").await;
    alice
        .expect_frame(&user_joined(&bob_frame["payload"]["self"]))
        .await;
    let offer = json!({"type": "offer", "sdp": format!("v=0 {sdp_mark}")});
    alice
        .send_json(json!({"type": "sdp_offer", "target": "bob", "payload": &offer}))
        .await;
    bob.expect_frame(&relayed("sdp_offer", "alice", Some("bob"), offer))
        .await;
    // A frame that is not JSON is logged at DEBUG by the node itself: proof that
    // RUST_LOG=trace took effect for the node's own code.
    alice.send_text("not json").await;
    alice.expect_type("error").await;
    alice.close().await;
    bob.close().await;
    node.sigterm();
    assert!(
        node.wait_exit(Duration::from_secs(10)).await.is_some(),
        "the node did not exit after SIGTERM"
    );

    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && l.contains("rejected frame")),
        "RUST_LOG=trace did not take effect for the node's own DEBUG lines"
    );
    for (mark, what) in [
        (&sdp_mark, "an SDP payload"),
        (&password_mark, "a password"),
    ] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(mark.as_str())).collect();
        assert!(
            leaks.is_empty(),
            "{what} reached the log at RUST_LOG=trace:\n{}",
            leaks.join("\n")
        );
    }
}

/// A raw request with an explicit content type (the harness's helper sets JSON).
async fn raw_request(
    node: &TestNode,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("reqwest client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client
        .request(method.clone(), format!("{}{path}", node.http_url()))
        .header("authorization", "Bearer admin-secret");
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} → {status}: the body is not JSON ({e}): {text:?}")
    });
    (status, body)
}

/// Method, path, content type, body → expected status and error code.
type ErrorCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<String>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_error_is_the_documented_json() {
    let node = TestNode::start(None, &key_prefix(), &[("ADMIN_TOKEN", "admin-secret")]).await;
    let json_ct = Some("application/json");
    let big = format!("{{\"room_id\":\"{}\"}}", "a".repeat(100 * 1024));
    let cases: Vec<ErrorCase> = vec![
        (
            "GET",
            "/rooms?limit=1&limit=2",
            None,
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/rooms?limit=%FF",
            None,
            None,
            400,
            "invalid_request",
        ),
        ("DELETE", "/healthz", None, None, 405, "method_not_allowed"),
        ("PUT", "/rooms", None, None, 405, "method_not_allowed"),
        (
            "POST",
            "/rooms",
            json_ct,
            Some(big),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/rooms",
            Some("text/plain"),
            Some("{}".into()),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/rooms",
            json_ct,
            Some("{bad".into()),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/tokens",
            json_ct,
            Some("[1,2]".into()),
            400,
            "invalid_request",
        ),
        ("GET", "/rooms/%FF", None, None, 400, "invalid_id"),
        (
            "DELETE",
            "/rooms/%C3%28/users/u1",
            None,
            None,
            400,
            "invalid_id",
        ),
        ("GET", "/users/%FF", None, None, 400, "invalid_id"),
        ("GET", "/rooms/%FF/users", None, None, 400, "invalid_id"),
        ("GET", "/ws/r1/u1", None, None, 426, "upgrade_required"),
        ("GET", "/nothing-here", None, None, 404, "not_found"),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let (got, reply) = raw_request(&node, method, path, content_type, body).await;
        assert_http_error(got, &reply, status, code, &format!("{method} {path}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_not_found_warnings_are_rate_limited() {
    // Rate limiting per connection is off, so all 500 frames reach the relay.
    let node = TestNode::start(
        None,
        &key_prefix(),
        &[
            ("RATE_LIMIT_PER_SECOND", "0"),
            ("RATE_LIMIT_BYTES_PER_SECOND", "0"),
        ],
    )
    .await;
    let room = room_id();
    let (mut alice, _) = join(&node, &room, "alice").await;
    for i in 0..500 {
        alice
            .send_json(json!({"type": "message", "target": "nobody", "payload": i}))
            .await;
    }
    for _ in 0..500 {
        alice.expect_error("target_not_found").await;
    }
    // Every frame was answered, so every warning that will be written has been.
    let log = node.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("relay target not found"))
        .count();
    assert!(
        warnings <= 20,
        "{warnings} WARN lines for 500 frames to a non-member: one client floods the log"
    );
    assert!(
        warnings >= 1,
        "target_not_found must still be logged at WARN"
    );
}
