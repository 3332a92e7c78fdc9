//! Real browsers (PROTOCOL.md section 14): Debian's Chromium, driven by
//! playwright-core (client/browser/call.mjs), opens the demo page twice. Chromium
//! gathers no ICE candidates on `lo`, so each test re-runs itself inside a private
//! network namespace (`unshare -n`, root) with a veth address 127.0.0.2, where the
//! browser, the nodes, Redis, nginx and coturn all live and vanish with it.
//!
//! 1. Two pages on two nodes behind the real nginx reach a connected call with
//!    video frames decoded and chat both ways over the data channel; SIGKILL of
//!    the node of one page: its client resumes through nginx on the other node,
//!    the data channel still carries messages, the other page never shows a leave.
//! 2. coturn with `use-auth-secret`, both pages relay-only: the call connects
//!    through coturn with the node's credentials, and does not when the node's
//!    TURN_SECRET differs from coturn's.
//!
//! Needs chromium, coturn, Node.js and `npm ci --prefix client` (.ci/run installs
//! them). Screenshots at `connected` are kept under target/browser/.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Set in the re-run inside the namespace.
const INSIDE: &str = "SIGNAL_BROWSER_NETNS";
/// Bound on one browser scenario.
const SCENARIO: Duration = Duration::from_secs(120);
/// The veth address candidates are gathered on.
const VETH: &str = "127.0.0.2";

/// Outside the namespace: re-runs test `name` of this binary inside a fresh one
/// and asserts it passed; returns false. Inside: sets the namespace up; true.
fn inside_namespace(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            vec!["addr", "add", "127.0.0.2/32", "dev", "v0"],
            vec!["link", "set", "v0", "up"],
            vec!["link", "set", "v1", "up"],
        ] {
            let status = Command::new("ip").args(&args).status().expect("run ip");
            assert!(status.success(), "ip {args:?} failed in the namespace");
        }
        return true;
    }
    let exe = std::env::current_exe().expect("this test binary");
    let output = Command::new("timeout")
        .arg(SCENARIO.as_secs().to_string())
        .args(["unshare", "-n", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare (util-linux, as root): {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(
        output.status.success() && text.contains("1 passed"),
        "{name} failed inside its network namespace ({})",
        output.status
    );
    false
}

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client")
}

/// Where screenshots go, per scenario.
fn shots(scenario: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/browser")
        .join(scenario);
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    dir
}

/// Starts call.mjs for `base_a` and `base_b`; `flags` as it documents.
fn start_call(base_a: &str, base_b: &str, flags: &[&str], scenario: &str) -> Child {
    assert!(
        client_dir().join("node_modules/playwright-core").is_dir(),
        "client/node_modules is missing: run `npm ci --prefix client`; .ci/run does"
    );
    Command::new("node")
        .arg("browser/call.mjs")
        .args([base_a, base_b, &room_id()])
        .args(flags)
        .current_dir(client_dir())
        .env("SHOTS", shots(scenario))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (Node.js 18+)")
}

/// The last line call.mjs printed: its result.
fn finish_call(child: Child, lines: impl Iterator<Item = String>) -> Value {
    let last = lines.last().unwrap_or_default();
    let output = child.wait_with_output().expect("wait for call.mjs");
    let result: Value = serde_json::from_str(&last)
        .unwrap_or_else(|_| panic!("call.mjs printed no result ({}): {last}", output.status));
    eprintln!("browser result: {}", summary(&result));
    assert_eq!(result["ok"], true, "the browsers failed: {result:#}");
    result
}

/// The result without the pages' logs (printed only on failure).
fn summary(result: &Value) -> Value {
    let mut short = result.clone();
    if let Some(object) = short.as_object_mut() {
        object.remove("logs");
    }
    short
}

/// Scenario 1: two pages, two nodes behind nginx; a node SIGKILLed mid-call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_nginx_survives_the_kill_of_a_node() {
    if !inside_namespace("a_call_through_nginx_survives_the_kill_of_a_node") {
        return;
    }
    let redis = RedisServer::start();
    let prefix = key_prefix();
    let env = [("RESUME_GRACE_SECONDS", "20")];
    let nodes = start_nodes(&redis, &prefix, 2, &env).await;
    let (a, b) = (nodes[0].port(), nodes[1].port());
    // Each page through its own nginx (the shipped config), so that alice is on
    // node 0 and bob on node 1, and bob's nginx fails over to node 0.
    let alice_proxy = Nginx::start_with_backups(&[a], &[b]).await;
    let bob_proxy = Nginx::start_with_backups(&[b], &[a]).await;
    let base_a = alice_proxy.url("").trim_end_matches('/').to_owned();
    let base_b = bob_proxy.url("").trim_end_matches('/').to_owned();
    let started = Instant::now();
    let mut call = start_call(&base_a, &base_b, &["kill"], "kill");
    let stdout = call.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let ready = lines
        .by_ref()
        .find(|l| l.contains("readyToKill"))
        .unwrap_or_else(|| panic!("the call never got ready: {:?}", lines.by_ref().last()));
    eprintln!(
        "timing: browsers connected, video and chat both ways after {:?} ({ready})",
        started.elapsed()
    );
    for (user, node) in [("alice", &nodes[0]), ("bob", &nodes[1])] {
        let (status, body) = alice_proxy.get(&format!("/users/{user}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node_id"], node.node_id(), "{user}'s node");
    }
    let doomed = &nodes[1];
    let killed_at = Instant::now();
    doomed.sigkill().await; // FAULT: the node of bob's page is SIGKILLed mid-call.
    let mut stdin = call.stdin.take().expect("piped stdin");
    writeln!(stdin, "killed").expect("tell call.mjs");
    let result = finish_call(call, lines);
    eprintln!(
        "timing: kill -> bob resumed and chatting again {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        result["aliceSawLeave"], false,
        "alice's page showed bob leaving"
    );
}

/// coturn on the veth address with `use-auth-secret`, killed on drop.
struct Coturn {
    child: Child,
    port: u16,
}

impl Coturn {
    fn start(secret: &str) -> Self {
        let port = free_port();
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--log-file=stdout",
            ])
            .arg(format!("--listening-ip={VETH}"))
            .arg(format!("--relay-ip={VETH}"))
            .arg(format!("--listening-port={port}"))
            .args(["--use-auth-secret", "--realm=example.org"])
            // The relay and peer addresses here are 127.0.0.2: loopback, which
            // coturn refuses as a peer unless told (a production TURN never is).
            .arg("--allow-loopback-peers")
            .arg(format!("--static-auth-secret={secret}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run turnserver (Debian coturn): {e}"));
        let coturn = Self { child, port };
        // Ready once it listens: a UDP port does not say, so ask the kernel.
        let deadline = Instant::now() + TIMEOUT;
        let needle = format!("{VETH}:{port}");
        while !String::from_utf8_lossy(
            &Command::new("ss")
                .args(["-lnu"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .contains(&needle)
        {
            assert!(
                Instant::now() < deadline,
                "coturn not listening on {needle}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        coturn
    }

    fn url(&self) -> String {
        format!("turn:{VETH}:{}?transport=udp", self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 2: relay-only pages connect through coturn with the node's TURN
/// credentials, and do not when the node's secret is not coturn's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_calls_go_through_coturn_with_the_nodes_credentials() {
    if !inside_namespace("relay_only_calls_go_through_coturn_with_the_nodes_credentials") {
        return;
    }
    let secret = "coturn-shared-secret-0123456789";
    let coturn = Coturn::start(secret);
    let turn_url = coturn.url();
    let good = TestNode::start(
        None,
        &key_prefix(),
        &[("TURN_URLS", turn_url.as_str()), ("TURN_SECRET", secret)],
    )
    .await;
    let base = good.http_url();
    let call = start_call(&base, &base, &["relay"], "relay");
    let mut call = call;
    let lines = BufReader::new(call.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok);
    let result = finish_call(call, lines);
    let kinds = result["localCandidates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| k == "relay"),
        "the selected pair is not relayed: {kinds:?}"
    );

    let wrong = TestNode::start(
        None,
        &key_prefix(),
        &[
            ("TURN_URLS", turn_url.as_str()),
            ("TURN_SECRET", "not-coturns-secret"),
        ],
    )
    .await;
    let base = wrong.http_url();
    let mut call = start_call(&base, &base, &["relay", "fail"], "relay-wrong-secret");
    let lines = BufReader::new(call.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok);
    let result = finish_call(call, lines);
    eprintln!(
        "with a wrong secret the peers stayed {}",
        result["peerStates"]
    );
}
