//! The browser client's own tests (client/test/, Node's built-in test runner)
//! against this build of the node: the reconnect rules per close code, backoff
//! bounds, de-duplication by seq, a dropped connection resumed with nothing lost
//! or twice, sends held while reconnecting, refusals. They need Node.js 20+ and
//! `npm ci` in client/ (for the `ws` package); .ci/run does both.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[test]
fn client_tests_pass_with_node() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    assert!(
        client.join("node_modules/ws").is_dir(),
        "client/node_modules is missing: run `npm ci --prefix client` (Node.js 20+); .ci/run does"
    );
    let output = Command::new("timeout")
        .args(["120", "node", "--test", "test/"])
        .current_dir(&client)
        .env("SIGNAL_NODE_BIN", env!("CARGO_BIN_EXE_signal-node"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (install Node.js 20+): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 7,
        "expected the client's 7 tests to pass:\n{stdout}"
    );
    eprintln!("client tests: {passed} passed");
}

/// The node serves the client and its declarations exactly as in the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_the_client_as_built() {
    let node = TestNode::start(None, &key_prefix(), &[]).await;
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    for (path, file, kind) in [
        (
            "/client/signal-client.js",
            "signal-client.js",
            "text/javascript",
        ),
        (
            "/client/signal-client.d.ts",
            "signal-client.d.ts",
            "application/typescript",
        ),
    ] {
        let reply = node.request("GET", path, &[], None).await;
        assert_eq!(reply.status, 200, "{path}");
        let content_type = reply.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let expected = std::fs::read_to_string(client.join(file)).expect("read the client file");
        assert_eq!(reply.text, expected, "{path} differs from client/{file}");
    }
}

/// The demo page needs nothing from elsewhere (no CDN, no build step): its only
/// script is the module the node serves, and it reads room and name from the query.
#[test]
fn the_demo_page_is_self_contained() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("client/demo.html"))
            .expect("read client/demo.html");
    assert!(page.contains(r#"from "/client/signal-client.js""#));
    for outside in ["http://", "https://", "//cdn", "<script src"] {
        assert!(!page.contains(outside), "the demo page refers to {outside}");
    }
    for needed in [
        "getUserMedia",
        "sendData",
        "params.get(\"room\")",
        "params.get(\"user\")",
    ] {
        assert!(page.contains(needed), "the demo page lacks {needed}");
    }
}
