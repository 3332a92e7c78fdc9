//! nginx in front of real nodes, with the proxy configuration docker-compose runs:
//! nginx/signal-http.conf and nginx/signal-locations.conf are included unchanged, and
//! only what differs per machine (ports, paths, one worker) is written here. Checks
//! that WebSocket upgrades pass, that connections are spread round robin (no sticky
//! sessions), that relays cross nodes, and that a dead node is skipped.
//!
//! Needs Debian's nginx (`apt-get install -y nginx`, as .ci/run does); without it
//! these tests fail and say so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Bound on nginx answering after spawn, and on its graceful exit after QUIT.
const NGINX_TIMEOUT: Duration = Duration::from_secs(5);

/// An nginx master (one worker) on a free port proxying to `127.0.0.1:{upstreams}`;
/// stopped with QUIT (graceful), and killed if it lingers, on drop.
struct Nginx {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Nginx {
    async fn start(upstreams: &[u16]) -> Self {
        let binary = nginx_binary();
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let mut nginx = Self::spawn(&binary, upstreams);
            match nginx.wait_up().await {
                Ok(()) => return nginx,
                // The free port was taken between probe and bind: try another one.
                Err(e) if e.contains("in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
            nginx.stop();
        }
        panic!("nginx did not start: {last_error}");
    }

    fn spawn(binary: &Path, upstreams: &[u16]) -> Self {
        let dir = TempDir::new();
        let port = free_port();
        let conf = config(dir.path(), port, upstreams);
        let conf_path = dir.write("nginx.conf", conf.as_bytes());
        // -p: relative paths under the temp dir; -e: the startup error log too
        // (Debian's default may not be writable); `daemon off` keeps it our child.
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .args(["-c", &conf_path])
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    /// Polls `GET /healthz` through nginx until 200 (a node behind it answered).
    async fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + NGINX_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("nginx exited ({status}):\n{}", self.error_log()));
            }
            if let Ok(resp) = http().get(self.url("/healthz")).send().await {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx not answering within {NGINX_TIMEOUT:?}:\n{}",
                    self.error_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws_url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws/{room}/{user}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `GET path` through nginx → (status, JSON body or Null).
    async fn get(&self, path: &str) -> (u16, Value) {
        let url = self.url(path);
        let resp = http()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("read body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// QUIT (finish open requests, then exit), bounded; KILL if it lingers.
    /// Returns whether it exited gracefully in time.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + NGINX_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- nginx error.log ---\n{}", self.error_log());
        }
    }
}

/// The test's main config: compose's nginx/nginx.conf with local ports and paths.
fn config(dir: &Path, port: u16, upstreams: &[u16]) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx");
    let servers: String = upstreams
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .collect();
    let d = dir.display();
    let r = repo.display();
    format!(
        r#"# Written by tests/nginx.rs.
daemon off;
# One worker: round robin state is per worker, so with one it strictly alternates.
worker_processes 1;
pid "{d}/nginx.pid";
error_log "{d}/error.log" warn;
# Bounds a graceful stop if a test left a WebSocket open.
worker_shutdown_timeout 1s;
events {{
    worker_connections 256;
}}
http {{
    # Debian's compiled-in temp paths are under /var/lib/nginx: keep them private.
    client_body_temp_path "{d}/client_body";
    proxy_temp_path "{d}/proxy";
    fastcgi_temp_path "{d}/fastcgi";
    uwsgi_temp_path "{d}/uwsgi";
    scgi_temp_path "{d}/scgi";
    include "{r}/signal-http.conf";
    # The shipped format (signal-http.conf): no query strings.
    access_log "{d}/access.log" signal_redacted;
    upstream signal_nodes {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        include "{r}/signal-locations.conf";
    }}
}}
"#
    )
}

/// nginx from PATH or Debian's /usr/sbin (not on a non-root PATH); fails clearly.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: these tests run the real proxy config. Install it \
                 (Debian: apt-get install -y nginx; .ci/run does) and run them again."
            )
        })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("build reqwest client")
}

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

    let log = std::fs::read_to_string(nginx.dir.path().join("access.log"))
        .unwrap_or_else(|e| panic!("read nginx's access.log: {e}"));
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
