//! Resume (PROTOCOL.md section 11, and the v2 guarantees of sections 4 to 6): a
//! member whose connection ends without its own decision — the network dropped, its
//! node drained or died, its node's subscription was cut — is detached, stays in its
//! room unnoticed for `RESUME_GRACE_SECONDS`, and on resuming anywhere gets every
//! relayed message sent to it meanwhile, exactly once, in order, `seq` without gap.
//!
//! Every test sets `RESUME_GRACE_SECONDS` explicitly (the harness default is 0).
//! Tests marked "(both)" run on a standalone node and on a Redis cluster
//! (`both_engines!`); some also on nodes over a Redis Cluster
//! (`on_redis_cluster!`). Waits are bounded; sleeps only pace the senders or are
//! the fault itself (a client that stops reading).

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::sync::watch;

/// The grace of every test that does not test its end.
const GRACE: &str = "20";
const GRACE_SECONDS: u64 = 20;
/// Continuous traffic: how often each member sends one message to each peer.
const TICK: Duration = Duration::from_millis(50);
/// Bound on a client finding a node that resumes it.
const RECONNECT: Duration = Duration::from_secs(20);
/// Bound on every sent message arriving once sending stopped.
const DRAIN: Duration = Duration::from_secs(20);
/// Bound on a drained node exiting.
const EXIT: Duration = Duration::from_secs(15);
/// Bound on the survivors evicting a killed node (heartbeat TTL, then a sweep).
const EVICTION: Duration = Duration::from_secs(20);

/// `{"type":"message","target":target,"payload":{"n":n}}`, a numbered message.
fn numbered(target: &str, n: u64) -> Value {
    json!({"type": "message", "target": target, "payload": {"n": n}})
}

/// Sends a ping with a fresh nonce and returns every frame that arrived before its
/// pong (bounded): proof that nothing else (an error, a membership event) was due.
async fn frames_before_pong(client: &mut TestClient) -> Vec<Value> {
    let nonce = json!({"barrier": uuid::Uuid::new_v4().to_string()});
    client
        .send_json(json!({"type": "ping", "payload": &nonce}))
        .await;
    let mut before = Vec::new();
    loop {
        let frame = client.recv_json().await;
        if frame == json!({"type": "pong", "payload": &nonce}) {
            return before;
        }
        before.push(frame);
    }
}

/// Asserts that `client` had nothing pending (no error, no membership event).
async fn assert_heard_nothing(client: &mut TestClient, context: &str) {
    let frames = frames_before_pong(client).await;
    assert!(
        frames.is_empty(),
        "{}: {context}: expected nothing, got {frames:?}",
        client.label()
    );
}

/// `1, 2, 3, 7, 8` as `1-3, 7-8` (failure messages stay short).
fn runs(ns: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ns.len() {
        let mut j = i;
        while j + 1 < ns.len() && ns[j + 1] == ns[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ns[i].to_string()
        } else {
            format!("{}-{}", ns[i], ns[j])
        });
        i = j + 1;
    }
    format!("[{}]", out.join(", "))
}

/// Reads `count` relayed frames from `client`; returns them without `seq`, and
/// the `seq`s.
async fn recv_relayed_n(client: &mut ResumingClient, count: usize) -> (Vec<Value>, Vec<u64>) {
    let mut frames = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..count {
        let (frame, seq) = client.recv_relayed().await;
        frames.push(frame);
        seqs.push(seq);
    }
    (frames, seqs)
}

/// The resume token of a `room_users` frame (fresh session, grace `seconds`).
#[track_caller]
fn fresh_token(frame: &Value, seconds: u64) -> String {
    assert_session(&frame["payload"], false, Some(seconds))
}

// ---------------------------------------------------------------------------
// a. A dropped connection resumes on another node
// ---------------------------------------------------------------------------

/// alice on node 0, then bob (resuming) on node 1 in `room`; alice has seen bob
/// join. The starting point of most scenarios below.
async fn alice_and_bob(c: &Cluster, room: &str) -> (TestClient, Value, ResumingClient, Value) {
    let (mut alice, alice_user) = join(c.node(0), room, "alice").await;
    let (bob, frame) = ResumingClient::join(c.node(1), room, "bob").await;
    let bob_user = assert_room_users(&frame, room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    (alice, alice_user, bob, bob_user)
}

both_engines!(
    dropped_connection_resumes_elsewhere,
    env = [("RESUME_GRACE_SECONDS", "20")],
    dropped_connection_resumes_elsewhere_body
);
on_redis_cluster!(
    dropped_connection_resumes_elsewhere_on_redis_cluster,
    env = [("RESUME_GRACE_SECONDS", "20")],
    dropped_connection_resumes_elsewhere_body
);

/// bob (node 1) loses his TCP connection without a close frame while alice keeps
/// sending to him and carol broadcasts; he resumes on node 0 and gets every message
/// in order with `seq` contiguous, then live ones; alice and carol heard nothing,
/// nobody got an error, REST listed him all along, and no node logged a token.
async fn dropped_connection_resumes_elsewhere_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut carol, carol_user) = join(c.node(0), &room, "carol").await;
    alice.expect_frame(&user_joined(&carol_user)).await;
    let (mut bob, frame) = ResumingClient::join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user, &carol_user]);
    fresh_token(&frame, GRACE_SECONDS);
    alice.expect_frame(&user_joined(&bob_user)).await;
    carol.expect_frame(&user_joined(&bob_user)).await;

    for n in 1..=5 {
        alice.send_json(numbered("bob", n)).await;
    }
    for n in 1..=5 {
        let (frame, seq) = bob.recv_relayed().await;
        assert_eq!(
            frame,
            relayed("message", "alice", Some("bob"), json!({"n": n}))
        );
        assert_eq!(seq, n, "bob: seq of live message {n}");
    }
    let old_token = bob.token().to_owned();

    // FAULT: bob's network drops; the server gets no close frame.
    bob.drop_connection();
    for n in 6..=15 {
        alice.send_json(numbered("bob", n)).await;
        // Pacing: the messages reach bob's node before and after it notices the drop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    carol
        .send_json(json!({"type": "broadcast", "payload": "while away"}))
        .await;
    for n in 16..=20 {
        alice.send_json(numbered("bob", n)).await;
    }
    let broadcast = relayed("broadcast", "carol", None, json!("while away"));
    alice.expect_frame(&broadcast).await;
    assert_heard_nothing(&mut alice, "while bob is away").await;
    assert_heard_nothing(&mut carol, "while bob is away").await;
    for i in [0, 1] {
        assert_rest_members(c.node(i), &room, &[&alice_user, &bob_user, &carol_user]).await;
    }

    let frame = bob.resume(c.node(0)).await;
    let me = assert_room_users_session(&frame, &room, "bob", &[&alice_user, &carol_user], true);
    assert_eq!(me, bob_user, "bob's USER after the resume");
    assert_session(&frame["payload"], true, Some(GRACE_SECONDS));
    assert_ne!(bob.token(), old_token, "a resume gives a new token");

    // 15 from alice (6..=20) and carol's broadcast, seq 6..=21.
    let (frames, seqs) = recv_relayed_n(&mut bob, 16).await;
    assert_eq!(
        seqs,
        (6..=21).collect::<Vec<u64>>(),
        "bob: seq after the resume"
    );
    let from_alice: Vec<Value> = frames
        .iter()
        .filter(|f| f["from"] == "alice")
        .cloned()
        .collect();
    let expected: Vec<Value> = (6..=20)
        .map(|n| relayed("message", "alice", Some("bob"), json!({"n": n})))
        .collect();
    assert_eq!(
        from_alice, expected,
        "bob: alice's messages after the resume"
    );
    assert_eq!(
        frames.iter().filter(|f| **f == broadcast).count(),
        1,
        "bob: carol's broadcast exactly once in {frames:?}"
    );

    // Live again, on the new node.
    alice.send_json(numbered("bob", 21)).await;
    let (frame, seq) = bob.recv_relayed().await;
    assert_eq!(
        frame,
        relayed("message", "alice", Some("bob"), json!({"n": 21}))
    );
    assert_eq!(seq, 22, "bob: first live seq after the resume");
    bob.send_json(numbered("alice", 1)).await;
    alice
        .expect_frame(&relayed("message", "bob", Some("alice"), json!({"n": 1})))
        .await;

    assert_heard_nothing(&mut alice, "after bob's resume").await;
    assert_heard_nothing(&mut carol, "after bob's resume").await;
    bob.conn().expect_silence(QUIET).await;
    assert!(bob.seq_faults().is_empty(), "{:?}", bob.seq_faults());
    for i in [0, 1] {
        assert_rest_members(c.node(i), &room, &[&alice_user, &bob_user, &carol_user]).await;
    }
    for i in [0, 1] {
        let log = c.node(i).log();
        for token in [old_token.as_str(), bob.token()] {
            assert!(
                !log.contains(token),
                "node {} logged a resume token",
                c.node(i).node_id()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// b. A last_seq older than what was delivered
// ---------------------------------------------------------------------------

both_engines!(
    older_last_seq_is_replayed_once,
    env = [("RESUME_GRACE_SECONDS", "20")],
    older_last_seq_is_replayed_once_body
);
on_redis_cluster!(
    older_last_seq_is_replayed_once_on_redis_cluster,
    env = [("RESUME_GRACE_SECONDS", "20")],
    older_last_seq_is_replayed_once_body
);

/// bob received seq 1..=10 on a socket that was then reset; he resumes claiming only 4:
/// 5..=10 come again, then 11..=14 sent while he was away, each exactly once.
async fn older_last_seq_is_replayed_once_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user, mut bob, _) = alice_and_bob(c, &room).await;

    for n in 1..=10 {
        alice.send_json(numbered("bob", n)).await;
    }
    let (_, seqs) = recv_relayed_n(&mut bob, 10).await;
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());

    // FAULT: the connection is reset (RST, no close frame); alice sends four more.
    bob.reset_connection();
    for n in 11..=14 {
        alice.send_json(numbered("bob", n)).await;
    }
    assert_heard_nothing(&mut alice, "while bob is away").await;

    let frame = bob.resume_from(c.node(0), 4).await;
    assert_room_users_session(&frame, &room, "bob", &[&alice_user], true);
    let (frames, seqs) = recv_relayed_n(&mut bob, 10).await;
    assert_eq!(seqs, (5..=14).collect::<Vec<u64>>(), "bob: replayed seq");
    let expected: Vec<Value> = (5..=14)
        .map(|n| relayed("message", "alice", Some("bob"), json!({"n": n})))
        .collect();
    assert_eq!(frames, expected, "bob: replayed frames");
    bob.conn().expect_silence(QUIET).await;

    alice.send_json(numbered("bob", 15)).await;
    let (_, seq) = bob.recv_relayed().await;
    assert_eq!(seq, 15, "bob: first live seq");
    assert!(bob.seq_faults().is_empty(), "{:?}", bob.seq_faults());
    assert_heard_nothing(&mut alice, "after bob's resume").await;
}

// ---------------------------------------------------------------------------
// c. The grace runs out
// ---------------------------------------------------------------------------

/// The grace of the timeout test, and how late its `user_left` may come after it.
const SHORT_GRACE: Duration = Duration::from_secs(2);
const GRACE_END_MARGIN: Duration = Duration::from_secs(5);
/// How much earlier than the grace the `user_left` may come (clock and polling).
const GRACE_EARLY_SLACK: Duration = Duration::from_millis(250);

both_engines!(
    grace_runs_out,
    env = [("RESUME_GRACE_SECONDS", "2")],
    grace_runs_out_body
);

/// bob drops and does not come back: messages to him are accepted meanwhile; the
/// room hears user_left "timeout" no sooner than the grace and within a bounded
/// margin after it; then REST no longer lists him, messages to him are
/// `target_not_found`, and his old token gives an ordinary join (seq from 1, the
/// held message dropped, alice sees user_joined).
async fn grace_runs_out_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut bob, frame) = ResumingClient::join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    fresh_token(&frame, SHORT_GRACE.as_secs());
    alice.expect_frame(&user_joined(&bob_user)).await;
    alice.send_json(numbered("bob", 1)).await;
    assert_eq!(bob.recv_relayed().await.1, 1);

    // FAULT: bob's network drops for good.
    let dropped_at = Instant::now();
    bob.drop_connection();
    alice.send_json(numbered("bob", 2)).await;
    assert_heard_nothing(&mut alice, "a message to detached bob is accepted").await;

    let deadline = dropped_at + SHORT_GRACE + GRACE_END_MARGIN;
    let frame = match alice
        .next_event(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        Some(Event::Text(text)) => serde_json::from_str::<Value>(&text).expect("JSON"),
        other => panic!(
            "alice: expected user_left bob within {:?} of the drop, got {other:?}",
            SHORT_GRACE + GRACE_END_MARGIN
        ),
    };
    let after = dropped_at.elapsed();
    assert_eq!(frame, user_left("bob", &room, "timeout"), "alice");
    assert!(
        after + GRACE_EARLY_SLACK >= SHORT_GRACE,
        "user_left came {after:?} after the drop, before the grace of {SHORT_GRACE:?}"
    );
    eprintln!("timing: grace {SHORT_GRACE:?}: user_left {after:?} after the drop");
    for i in [0, 1] {
        assert_rest_members(c.node(i), &room, &[&alice_user]).await;
    }
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": 3, "id": 3}))
        .await;
    alice
        .expect_error_echo("target_not_found", Some(json!(3)), Some("bob"))
        .await;

    let frame = bob.resume(c.node(0)).await;
    let bob_again = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_again)).await;
    alice.send_json(numbered("bob", 4)).await;
    let (frame, seq) = bob.recv_relayed().await;
    assert_eq!(
        (frame, seq),
        (relayed("message", "alice", Some("bob"), json!({"n": 4})), 1),
        "bob after the ordinary join: seq from 1, nothing held"
    );
    assert_heard_nothing(&mut alice, "after bob's new join").await;
}

// ---------------------------------------------------------------------------
// d. Tokens and last_seq that do not resume
// ---------------------------------------------------------------------------

both_engines!(
    invalid_resumes_are_ordinary_joins,
    env = [("RESUME_GRACE_SECONDS", "20")],
    invalid_resumes_are_ordinary_joins_body
);

/// bob, detached with a message held for him, connects with `query`: it must be an
/// ordinary join (resumed false, alice sees user_joined and no user_left, the held
/// message is dropped and seq starts again at 1). Returns bob's new USER.
async fn expect_ordinary_join(
    node: &TestNode,
    room: &str,
    alice: &mut TestClient,
    alice_user: &Value,
    bob: &mut ResumingClient,
    query: &str,
    case: &str,
) -> Value {
    bob.drop_connection();
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": {"held": case}}))
        .await;
    assert_heard_nothing(alice, &format!("{case}: bob is detached")).await;
    let frame = bob.connect_with_query(node, query).await;
    assert_eq!(
        frame["payload"]["session"]["resumed"], false,
        "{case}: must be an ordinary join: {frame}"
    );
    let bob_user = assert_room_users(&frame, room, "bob", &[alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    assert_heard_nothing(alice, &format!("{case}: after bob's ordinary join")).await;
    alice
        .send_json(json!({"type": "message", "target": "bob", "payload": {"probe": case}}))
        .await;
    let (frame, seq) = bob.recv_relayed().await;
    assert_eq!(
        (frame, seq),
        (
            relayed("message", "alice", Some("bob"), json!({"probe": case})),
            1
        ),
        "{case}: bob's first frame after the ordinary join"
    );
    bob_user
}

/// Each of these makes a resume an ordinary join: a token already used, another
/// user's token, a token of another room, a garbage token, a last_seq above the last
/// seq sent, a last_seq that is not an integer, a negative last_seq.
async fn invalid_resumes_are_ordinary_joins_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, frame) = TestClient::connect_join(c.node(0), &room, "alice").await;
    let alice_user = assert_room_users(&frame, &room, "alice", &[]);
    let alice_token = fresh_token(&frame, GRACE_SECONDS);
    let (mut bob, frame) = ResumingClient::join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    let node = c.node(0);

    // A used token: one good resume, then the same token again.
    let used = bob.token().to_owned();
    bob.drop_connection();
    let frame = bob.resume(c.node(0)).await;
    assert_room_users_session(&frame, &room, "bob", &[&alice_user], true);
    assert_heard_nothing(&mut alice, "after bob's good resume").await;
    let query = format!("resume={}&last_seq={}", query_value(&used), bob.last_seq());
    expect_ordinary_join(
        node,
        &room,
        &mut alice,
        &alice_user,
        &mut bob,
        &query,
        "used token",
    )
    .await;

    // alice's token, for bob: alice herself stays connected and unaffected.
    let query = format!("resume={}&last_seq=0", query_value(&alice_token));
    expect_ordinary_join(
        node,
        &room,
        &mut alice,
        &alice_user,
        &mut bob,
        &query,
        "alice's token",
    )
    .await;
    alice.send_json(numbered("bob", 1)).await;
    assert_eq!(bob.recv_relayed().await.1, 2, "alice still relays to bob");

    // Garbage.
    let query = "resume=not-a-token-0123456789abcdef&last_seq=0";
    expect_ordinary_join(
        node,
        &room,
        &mut alice,
        &alice_user,
        &mut bob,
        query,
        "garbage token",
    )
    .await;

    // A valid token with a last_seq above the last seq sent (1).
    alice.send_json(numbered("bob", 1)).await;
    assert_eq!(bob.recv_relayed().await.1, 2);
    let query = format!(
        "resume={}&last_seq={}",
        query_value(bob.token()),
        bob.last_seq() + 2
    );
    expect_ordinary_join(
        node,
        &room,
        &mut alice,
        &alice_user,
        &mut bob,
        &query,
        "last_seq ahead",
    )
    .await;

    for bad in ["abc", "-1", "1.5"] {
        let query = format!("resume={}&last_seq={bad}", query_value(bob.token()));
        expect_ordinary_join(
            node,
            &room,
            &mut alice,
            &alice_user,
            &mut bob,
            &query,
            &format!("last_seq {bad:?}"),
        )
        .await;
    }

    // A token of another room: dave's, detached in room 2, used to enter this room.
    let room2 = room_id();
    let (mut erin, erin_user) = join(c.node(1), &room2, "erin").await;
    let (mut dave, frame) = ResumingClient::join(c.node(1), &room2, "dave").await;
    let dave_user = assert_room_users(&frame, &room2, "dave", &[&erin_user]);
    erin.expect_frame(&user_joined(&dave_user)).await;
    let dave_token = dave.token().to_owned();
    dave.drop_connection();
    let url = format!(
        "{}?resume={}&last_seq=0",
        node.ws_url(&room, "dave"),
        query_value(&dave_token)
    );
    let (mut dave_here, frame) = TestClient::join_with(&url, &[], "dave in room 1").await;
    assert_eq!(
        frame["payload"]["session"]["resumed"], false,
        "another room's token must give an ordinary join: {frame}"
    );
    let bob_user = frame["payload"]["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["user_id"] == "bob").cloned())
        .unwrap_or_else(|| panic!("bob is not listed in {frame}"));
    let dave_here_user = assert_room_users(&frame, &room, "dave", &[&alice_user, &bob_user]);
    alice.expect_frame(&user_joined(&dave_here_user)).await;
    assert_eq!(bob.recv().await, user_joined(&dave_here_user), "bob");
    // Connecting in another room replaces the detached session of room 2.
    erin.expect_frame(&user_left("dave", &room2, "replaced"))
        .await;
    assert_heard_nothing(&mut alice, "after dave's join").await;
    assert_heard_nothing(&mut erin, "after dave left room 2").await;
    dave_here.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------
// e. A drained node (SIGTERM)
// ---------------------------------------------------------------------------

/// Base URLs of the nodes a client may resume on: the test removes a node before it
/// drains or dies, and adds a replacement once it is ready.
type LiveNodes = Arc<RwLock<Vec<String>>>;

/// What every talker shares with the test.
#[derive(Clone)]
struct Traffic {
    /// Talkers send while this is true.
    sending: watch::Receiver<bool>,
    /// Talkers close and report once this is true.
    done: watch::Receiver<bool>,
    nodes: LiveNodes,
    /// Where each talker is connected (`ws://...`), or "" while it is not.
    locations: Arc<Mutex<BTreeMap<String, String>>>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

/// The test's side of [`Traffic`].
struct TrafficControl {
    sending: watch::Sender<bool>,
    done: watch::Sender<bool>,
    traffic: Traffic,
}

impl TrafficControl {
    fn new(nodes: &[String]) -> Self {
        let (sending, sending_rx) = watch::channel(true);
        let (done, done_rx) = watch::channel(false);
        Self {
            sending,
            done,
            traffic: Traffic {
                sending: sending_rx,
                done: done_rx,
                nodes: Arc::new(RwLock::new(nodes.to_vec())),
                locations: Arc::default(),
                sent: Arc::default(),
                received: Arc::default(),
            },
        }
    }

    fn remove_node(&self, base: &str) {
        self.traffic
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b| b != base);
    }

    fn add_node(&self, base: String) {
        self.traffic
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(base);
    }

    fn locations(&self) -> BTreeMap<String, String> {
        self.traffic
            .locations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (bounded) until every talker is connected, none to `gone`.
    async fn wait_everyone_moved_off(&self, gone: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let locations = self.locations();
            if locations.values().all(|at| !at.is_empty() && at != gone) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "within {within:?} not every client resumed off {gone}: {locations:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Pauses sending for `during` (the traffic itself, not a synchronisation).
    async fn run_for(&self, during: Duration) {
        tokio::time::sleep(during).await;
    }

    /// Stops sending and waits (bounded by DRAIN) until everything sent has been
    /// received, or nothing more arrived for 3 s; returns (sent, received).
    async fn stop_and_drain(&self) -> (u64, u64) {
        self.sending.send_replace(false);
        let deadline = Instant::now() + DRAIN;
        let mut last = (0, Instant::now());
        loop {
            // Talkers finish their tick before they see the switch: read sent after.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = self.traffic.sent.load(Ordering::SeqCst);
            let received = self.traffic.received.load(Ordering::SeqCst);
            if received >= sent && last.1.elapsed() > TICK * 4 {
                return (sent, received);
            }
            if received != last.0 {
                last = (received, Instant::now());
            }
            if Instant::now() >= deadline || last.1.elapsed() > Duration::from_secs(3) {
                return (sent, received);
            }
        }
    }

    /// Tells the talkers to close and report; returns their logs.
    async fn finish(&self, talkers: Vec<tokio::task::JoinHandle<TalkLog>>) -> Vec<TalkLog> {
        self.done.send_replace(true);
        let mut logs = Vec::new();
        for task in talkers {
            let log = tokio::time::timeout(TIMEOUT * 2, task)
                .await
                .expect("a talker did not finish")
                .expect("a talker panicked");
            logs.push(log);
        }
        logs
    }
}

/// What one talker did and saw.
#[derive(Debug, Default)]
struct TalkLog {
    me: String,
    /// Per target, `(n, connection index)` of every message sent, in order.
    sent: BTreeMap<String, Vec<(u64, usize)>>,
    /// Per sender, the `n` of every message received, in order.
    got: BTreeMap<String, Vec<u64>>,
    /// Connections (by index) that ended without a close frame.
    lost_connections: BTreeSet<usize>,
    /// Close codes the server sent.
    close_codes: Vec<Option<u16>>,
    /// `retry_after_ms` of every `shutdown` error.
    retry_after_ms: Vec<u64>,
    /// Frames other than a peer's message and a `shutdown` error.
    unexpected: Vec<Value>,
    resumes: usize,
    fresh_joins: usize,
    seq_faults: Vec<String>,
    /// Refused or failed resume attempts (informational), and a final give-up.
    reconnect_errors: Vec<String>,
    gave_up: bool,
}

/// A member of the continuous traffic: every TICK sends the next numbered message
/// to each peer; records everything it receives; when its connection ends (a
/// drain, a dead node), waits `retry_after_ms` if told, and resumes on another live
/// node. Messages are held back while it is not connected.
async fn talk(
    mut client: ResumingClient,
    peers: Vec<String>,
    traffic: Traffic,
    seed: u64,
) -> TalkLog {
    let me = client.user().to_owned();
    let mut log = TalkLog {
        me: me.clone(),
        ..TalkLog::default()
    };
    let set_location = |at: &str| {
        traffic
            .locations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(me.clone(), at.to_owned());
    };
    set_location(client.base());
    let mut rng = seed | 1;
    let mut next_n: BTreeMap<String, u64> = peers.iter().map(|p| (p.clone(), 1)).collect();
    let mut connection = 0;
    let mut retry_after = Duration::ZERO;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = traffic.sending.clone();
    let mut done = traffic.done.clone();
    loop {
        if *done.borrow() {
            break;
        }
        if !client.is_connected() {
            set_location("");
            // The protocol's jitter, as a client follows it; not a synchronisation.
            tokio::time::sleep(std::mem::take(&mut retry_after)).await;
            if !reconnect(&mut client, &traffic.nodes, &mut rng, &mut log).await {
                log.gave_up = true;
                break;
            }
            connection += 1;
            set_location(client.base());
            continue;
        }
        // Biased: `done` first. The first talkers to see it close at once, and the
        // `user_left` their close causes must not be read as unexpected by a talker
        // whose turn came later (done was set before any of them closed).
        tokio::select! {
            biased;
            _ = done.changed() => break,
            _ = sending.changed() => {}
            _ = tick.tick(), if *sending.borrow() => {
                for peer in &peers {
                    let n = next_n[peer];
                    if client.try_send_json(numbered(peer, n)).await.is_err() {
                        break;
                    }
                    log.sent.entry(peer.clone()).or_default().push((n, connection));
                    next_n.insert(peer.clone(), n + 1);
                    traffic.sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            incoming = client.next(Duration::from_secs(3600)) => match incoming {
                None => {}
                Some(Incoming::Frame(frame)) => {
                    let from = frame["from"].as_str().unwrap_or_default();
                    if frame["type"] == "message" && peers.iter().any(|p| p == from) {
                        if let Some(n) = frame["payload"]["n"].as_u64() {
                            log.got.entry(from.to_owned()).or_default().push(n);
                            traffic.received.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    }
                    if frame["type"] == "error" && frame["payload"]["code"] == "shutdown" {
                        let ms = frame["payload"]["retry_after_ms"].as_u64().unwrap_or(u64::MAX);
                        log.retry_after_ms.push(ms);
                        retry_after = Duration::from_millis(ms.min(1000));
                    } else {
                        log.unexpected.push(frame);
                    }
                }
                Some(Incoming::Closed(code)) => {
                    log.close_codes.push(code);
                    client.finish_close().await;
                }
                Some(Incoming::Ended(_)) => {
                    log.lost_connections.insert(connection);
                }
            }
        }
    }
    log.resumes = client.resumes();
    log.fresh_joins = client.fresh_joins();
    log.seq_faults = client.seq_faults().to_vec();
    if client.is_connected() {
        if let Err(e) = client.try_close().await {
            log.reconnect_errors.push(format!("final close: {e}"));
        }
    }
    log
}

/// Resumes `client` on a live node other than its last one (any, if it is the only
/// one), retrying with a short backoff; `false` after RECONNECT.
async fn reconnect(
    client: &mut ResumingClient,
    nodes: &LiveNodes,
    rng: &mut u64,
    log: &mut TalkLog,
) -> bool {
    let deadline = Instant::now() + RECONNECT;
    loop {
        let live = nodes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let others: Vec<&String> = live.iter().filter(|b| *b != client.base()).collect();
        let choices: Vec<&String> = if others.is_empty() {
            live.iter().collect()
        } else {
            others
        };
        if !choices.is_empty() {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let base = choices[(*rng % choices.len() as u64) as usize].clone();
            let last_seq = client.last_seq();
            match client.try_resume_at(&base, last_seq).await {
                Ok(_) => return true,
                Err(e) => log.reconnect_errors.push(format!("{base}: {e}")),
            }
        }
        if Instant::now() >= deadline {
            log.reconnect_errors
                .push(format!("gave up after {RECONNECT:?}"));
            return false;
        }
        // Client backoff between attempts; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins every room's members (each on its node, in order) with resuming clients;
/// every earlier member must see exactly the later ones join. Returns, per room, the
/// members and their clients.
async fn join_rooms(
    rooms: &[(String, Vec<(String, String)>)],
) -> Vec<(String, Vec<(String, ResumingClient)>)> {
    let mut joined = Vec::new();
    for (room, members) in rooms {
        let mut clients: Vec<(String, ResumingClient)> = Vec::new();
        for (user, base) in members {
            let (client, frame) = ResumingClient::join_at(base, room, user).await;
            let me = frame["payload"]["self"].clone();
            assert_user(&me, user, room);
            for (_, earlier) in clients.iter_mut() {
                assert_eq!(
                    earlier.recv().await,
                    user_joined(&me),
                    "{}",
                    earlier.label()
                );
            }
            clients.push((user.clone(), client));
        }
        joined.push((room.clone(), clients));
    }
    joined
}

/// Spawns one talker per member, talking to the other members of its room.
fn spawn_talkers(
    rooms: Vec<(String, Vec<(String, ResumingClient)>)>,
    control: &TrafficControl,
) -> Vec<tokio::task::JoinHandle<TalkLog>> {
    let mut tasks = Vec::new();
    let mut seed = 0x5EED_u64;
    for (_, members) in rooms {
        let ids: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
        for (id, client) in members {
            let peers: Vec<String> = ids.iter().filter(|p| **p != id).cloned().collect();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            tasks.push(tokio::spawn(talk(
                client,
                peers,
                control.traffic.clone(),
                seed,
            )));
        }
    }
    tasks
}

/// Every message sent arrived exactly once and in order, except, for a sender whose
/// connection ended without a close frame (its node killed), a tail of what it sent
/// on that connection (frames its node never read). Returns the problems, and how
/// many messages were tolerated as lost that way.
fn delivery_problems(logs: &[TalkLog]) -> (Vec<String>, usize) {
    let by_me: BTreeMap<&str, &TalkLog> = logs.iter().map(|l| (l.me.as_str(), l)).collect();
    let mut problems = Vec::new();
    let mut tolerated = 0;
    for sender in logs {
        for (target, sent) in &sender.sent {
            let pair = format!("{} -> {target}", sender.me);
            let got = by_me
                .get(target.as_str())
                .and_then(|t| t.got.get(&sender.me))
                .cloned()
                .unwrap_or_default();
            if got.windows(2).any(|w| w[1] <= w[0]) {
                problems.push(format!("{pair}: repeated or out of order: {}", runs(&got)));
            }
            let got_set: BTreeSet<u64> = got.iter().copied().collect();
            let sent_set: BTreeSet<u64> = sent.iter().map(|(n, _)| *n).collect();
            let unsent: Vec<u64> = got_set.difference(&sent_set).copied().collect();
            if !unsent.is_empty() {
                problems.push(format!(
                    "{pair}: received but never sent: {}",
                    runs(&unsent)
                ));
            }
            let mut by_connection: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (n, connection) in sent {
                by_connection.entry(*connection).or_default().push(*n);
            }
            for (connection, ns) in by_connection {
                let missing: Vec<u64> = ns
                    .iter()
                    .copied()
                    .filter(|n| !got_set.contains(n))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let is_tail = ns[ns.len() - missing.len()..] == missing[..];
                if is_tail && sender.lost_connections.contains(&connection) {
                    tolerated += missing.len();
                } else {
                    problems.push(format!(
                        "{pair}: lost {} of {} sent on connection {connection}",
                        runs(&missing),
                        runs(&ns)
                    ));
                }
            }
        }
        for (from, got) in &sender.got {
            if !by_me
                .get(from.as_str())
                .is_some_and(|f| f.sent.contains_key(&sender.me))
            {
                problems.push(format!(
                    "{from} -> {}: received {} but never sent",
                    sender.me,
                    runs(got)
                ));
            }
        }
    }
    (problems, tolerated)
}

/// The common verdict on continuous traffic: delivery, `seq`, no membership event
/// nor error after the initial joins, no resume that became a join, nobody gave up.
fn assert_traffic(logs: &[TalkLog], allow_lost_connections: bool) -> usize {
    let (mut problems, tolerated) = delivery_problems(logs);
    for log in logs {
        let me = &log.me;
        if !log.unexpected.is_empty() {
            problems.push(format!("{me} got unexpected frames: {:?}", log.unexpected));
        }
        if !log.seq_faults.is_empty() {
            problems.push(format!("{me}: seq faults {:?}", log.seq_faults));
        }
        if log.fresh_joins > 0 {
            problems.push(format!(
                "{me}: {} resume(s) became an ordinary join",
                log.fresh_joins
            ));
        }
        if log.gave_up {
            problems.push(format!("{me} could not resume: {:?}", log.reconnect_errors));
        }
        if !allow_lost_connections && !log.lost_connections.is_empty() {
            problems.push(format!(
                "{me}: connections {:?} ended without a close frame",
                log.lost_connections
            ));
        }
        if log.retry_after_ms.iter().any(|ms| *ms > 1000) {
            problems.push(format!(
                "{me}: retry_after_ms out of 0..=1000 (or missing): {:?}",
                log.retry_after_ms
            ));
        }
    }
    let delivered: usize = logs
        .iter()
        .map(|l| l.got.values().map(Vec::len).sum::<usize>())
        .sum();
    assert!(
        problems.is_empty(),
        "{} problem(s) in {delivered} delivered messages:\n  {}",
        problems.len(),
        problems[..problems.len().min(30)].join("\n  ")
    );
    tolerated
}

/// The talkers' summary line (for the test output).
fn summary(logs: &[TalkLog]) -> String {
    let sent: usize = logs
        .iter()
        .map(|l| l.sent.values().map(Vec::len).sum::<usize>())
        .sum();
    let resumes: usize = logs.iter().map(|l| l.resumes).sum();
    let refused: usize = logs.iter().map(|l| l.reconnect_errors.len()).sum();
    let retry: Vec<u64> = logs.iter().flat_map(|l| l.retry_after_ms.clone()).collect();
    format!(
        "{} members, {sent} messages sent, {resumes} resumes ({refused} refused attempts), retry_after_ms {retry:?}",
        logs.len()
    )
}

/// The log of `user`.
fn log_of<'a>(logs: &'a [TalkLog], user: &str) -> &'a TalkLog {
    logs.iter()
        .find(|l| l.me == user)
        .unwrap_or_else(|| panic!("no talker {user}"))
}

/// Settings of the continuous-traffic tests: resume on, no rate limit (each member
/// sends 20 messages a second to each peer).
const TRAFFIC_ENV: [(&str, &str); 3] = [
    ("RESUME_GRACE_SECONDS", GRACE),
    ("RATE_LIMIT_PER_SECOND", "0"),
    ("RATE_LIMIT_BYTES_PER_SECOND", "0"),
];

/// Node 0 is drained by SIGTERM while alice and bob (on it) and carol and dave (node
/// 1) message each other continuously: alice and bob get `shutdown` with
/// `retry_after_ms` 0..=1000 and close 1001, resume on node 1, and nothing is lost
/// or repeated in either direction; nobody hears a membership event; node 0 exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_node_clients_resume_elsewhere() {
    let c = Cluster::redis_with(2, &TRAFFIC_ENV).await;
    let (base0, base1) = (ws_base(c.node(0)), ws_base(c.node(1)));
    let room = room_id();
    let members: Vec<(String, String)> = [
        ("alice", &base0),
        ("bob", &base0),
        ("carol", &base1),
        ("dave", &base1),
    ]
    .iter()
    .map(|(u, b)| ((*u).to_owned(), (*b).clone()))
    .collect();
    let rooms = join_rooms(&[(room.clone(), members)]).await;
    let control = TrafficControl::new(&[base0.clone(), base1.clone()]);
    let talkers = spawn_talkers(rooms, &control);

    control.run_for(Duration::from_millis(700)).await;
    control.remove_node(&base0);
    c.node(0).sigterm();
    control.wait_everyone_moved_off(&base0, RECONNECT).await;
    let status = c
        .node(0)
        .wait_exit(EXIT)
        .await
        .unwrap_or_else(|| panic!("node 0 still running {EXIT:?} after SIGTERM"));
    assert!(status.success(), "node 0 exited with {status}");
    control.run_for(Duration::from_millis(700)).await;
    let (sent, received) = control.stop_and_drain().await;
    assert_rest_lists(c.node(1), &room, &["alice", "bob", "carol", "dave"]).await;
    let logs = control.finish(talkers).await;
    eprintln!("drain: {} ({received}/{sent} received)", summary(&logs));

    assert_traffic(&logs, false);
    for user in ["alice", "bob"] {
        let log = log_of(&logs, user);
        assert_eq!(log.resumes, 1, "{user}: resumes");
        assert_eq!(log.close_codes, vec![Some(1001)], "{user}: close codes");
        assert_eq!(log.retry_after_ms.len(), 1, "{user}: shutdown errors");
    }
    for user in ["carol", "dave"] {
        let log = log_of(&logs, user);
        assert_eq!(log.resumes, 0, "{user} never had to resume");
        assert!(log.close_codes.is_empty(), "{user}: {:?}", log.close_codes);
    }
}

/// Asserts `GET /rooms/{room}/users` on `node` lists exactly `ids`.
async fn assert_rest_lists(node: &TestNode, room: &str, ids: &[&str]) {
    let (status, body) = node.get(&format!("/rooms/{room}/users")).await;
    assert_eq!(status, 200, "GET /rooms/{room}/users: {body}");
    let listed: BTreeSet<String> = body["users"]
        .as_array()
        .map(|users| {
            users
                .iter()
                .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let expected: BTreeSet<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    assert_eq!(
        listed,
        expected,
        "members of {room} on {}: {body}",
        node.node_id()
    );
}

// ---------------------------------------------------------------------------
// f. A killed node (SIGKILL)
// ---------------------------------------------------------------------------

/// Node 0 is SIGKILLed during continuous traffic: alice and bob (on it) resume on
/// node 1 at once; every message sent to them arrives (of theirs, only what node 0
/// had not read yet may be lost); after the survivors evicted node 0 (its heartbeat
/// and session keys gone) they are still members, still get messages, and nobody
/// heard a membership event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_elsewhere() {
    let c = Cluster::redis_with(2, &TRAFFIC_ENV).await;
    let redis = c.redis_server();
    let (base0, base1) = (ws_base(c.node(0)), ws_base(c.node(1)));
    let beat = format!("{}node:{{{}}}", c.prefix(), c.node(0).node_id());
    let beat_ref = &beat;
    eventually(TIMEOUT, format!("{beat} written"), move || async move {
        redis.exists(beat_ref)
    })
    .await;
    let room = room_id();
    let members: Vec<(String, String)> = [
        ("alice", &base0),
        ("bob", &base0),
        ("carol", &base1),
        ("dave", &base1),
    ]
    .iter()
    .map(|(u, b)| ((*u).to_owned(), (*b).clone()))
    .collect();
    let rooms = join_rooms(&[(room.clone(), members)]).await;
    let run = redis.hgetall(&beat).get("run").cloned().unwrap_or_default();
    let sessions = format!(
        "{}node:{{{}}}:run:{run}:sessions",
        c.prefix(),
        c.node(0).node_id()
    );
    assert!(
        redis.exists(&sessions),
        "{sessions} (node 0's session list) should exist before the kill"
    );
    let control = TrafficControl::new(&[base0.clone(), base1.clone()]);
    let talkers = spawn_talkers(rooms, &control);

    control.run_for(Duration::from_millis(700)).await;
    control.remove_node(&base0);
    // FAULT: node 0 dies without any cleanup.
    let killed_at = Instant::now();
    c.node(0).sigkill().await;
    control.wait_everyone_moved_off(&base0, RECONNECT).await;
    let (beat_ref, sessions_ref) = (&beat, &sessions);
    eventually(
        EVICTION,
        format!("node 0 evicted ({beat} and {sessions} gone)"),
        move || async move { !redis.exists(beat_ref) && !redis.exists(sessions_ref) },
    )
    .await;
    eprintln!(
        "kill: node 0 evicted {:?} after SIGKILL",
        killed_at.elapsed()
    );
    // Traffic after the eviction: the resumed members must still be reachable.
    control.run_for(Duration::from_millis(1500)).await;
    let names = ["alice", "bob", "carol", "dave"];
    assert_rest_lists(c.node(1), &room, &names).await;
    let (sent, received) = control.stop_and_drain().await;
    let logs = control.finish(talkers).await;
    eprintln!("kill: {} ({received}/{sent} received)", summary(&logs));

    let tolerated = assert_traffic(&logs, true);
    eprintln!("kill: {tolerated} messages from alice/bob unread by node 0 when it died");
    for user in ["alice", "bob"] {
        let log = log_of(&logs, user);
        assert_eq!(log.resumes, 1, "{user}: resumes");
        assert_eq!(log.lost_connections, BTreeSet::from([0]), "{user}");
        let after: usize = log.got.values().map(Vec::len).sum();
        assert!(after > 0, "{user} received nothing");
    }
    for user in ["carol", "dave"] {
        let log = log_of(&logs, user);
        assert!(
            log.lost_connections.is_empty() && log.resumes == 0,
            "{user} was never on node 0: {log:?}"
        );
    }
    // The tail tolerance is only for alice and bob; carol's and dave's messages to
    // them are covered by delivery_problems without tolerance (their connections
    // never ended), including those sent after the eviction.
}

// ---------------------------------------------------------------------------
// g. Every pub/sub connection killed
// ---------------------------------------------------------------------------

/// `CLIENT KILL TYPE pubsub` during continuous traffic between two nodes: the nodes
/// rebuild their subscriptions and fill what they missed; no client reconnects, no
/// message is lost, repeated or reordered, and `seq` has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_leave_no_gap() {
    let c = Cluster::redis_with(2, &TRAFFIC_ENV).await;
    let redis = c.redis_server();
    let (base0, base1) = (ws_base(c.node(0)), ws_base(c.node(1)));
    let room = room_id();
    let members: Vec<(String, String)> = [
        ("alice", &base0),
        ("bob", &base1),
        ("carol", &base0),
        ("dave", &base1),
    ]
    .iter()
    .map(|(u, b)| ((*u).to_owned(), (*b).clone()))
    .collect();
    let rooms = join_rooms(&[(room.clone(), members)]).await;
    let control = TrafficControl::new(&[base0.clone(), base1.clone()]);
    let talkers = spawn_talkers(rooms, &control);

    control.run_for(Duration::from_millis(700)).await;
    // FAULT: Redis closes every pub/sub connection, twice.
    for _ in 0..2 {
        let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed.trim().parse::<u64>().is_ok_and(|n| n >= 2),
            "CLIENT KILL TYPE pubsub killed {killed:?}"
        );
        control.run_for(Duration::from_millis(1000)).await;
    }
    let (sent, received) = control.stop_and_drain().await;
    let logs = control.finish(talkers).await;
    eprintln!("pubsub: {} ({received}/{sent} received)", summary(&logs));
    assert_traffic(&logs, false);
    for log in &logs {
        assert!(
            log.resumes == 0 && log.close_codes.is_empty(),
            "{} had to reconnect: {log:?}",
            log.me
        );
    }
}

// ---------------------------------------------------------------------------
// h. A rolling restart of every node
// ---------------------------------------------------------------------------

const ROLLING_ROOMS: usize = 3;
const ROLLING_MEMBERS: usize = 4;

/// Three nodes, three rooms of four members spread over them, every member sending
/// to every other member of its room every 50 ms. Each node in turn is drained by
/// SIGTERM and replaced by a new node on the same Redis (or Redis Cluster) and
/// KEY_PREFIX; clients resume on a live node. Nothing is lost or repeated, nobody
/// sees a membership event, and every member resumed at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_nothing() {
    rolling_restart_body(&Cluster::redis_with(3, &TRAFFIC_ENV).await).await;
}
on_redis_cluster!(
    rolling_restart_loses_nothing_on_redis_cluster,
    nodes = 3,
    // Expanded inside the generated module, hence `super::`.
    env = [
        super::TRAFFIC_ENV[0],
        super::TRAFFIC_ENV[1],
        super::TRAFFIC_ENV[2]
    ],
    rolling_restart_body
);

async fn rolling_restart_body(c: &Cluster) {
    let bases: Vec<String> = (0..3).map(|i| ws_base(c.node(i))).collect();
    let mut plan = Vec::new();
    for r in 0..ROLLING_ROOMS {
        let room = room_id();
        let members = (0..ROLLING_MEMBERS)
            .map(|j| (format!("m{r}x{j}"), bases[(r + j) % 3].clone()))
            .collect();
        plan.push((room, members));
    }
    let rooms = join_rooms(&plan).await;
    let control = TrafficControl::new(&bases);
    let talkers = spawn_talkers(rooms, &control);
    let mut replacements: Vec<TestNode> = Vec::new();

    control.run_for(Duration::from_millis(700)).await;
    for (i, base) in bases.iter().enumerate() {
        control.remove_node(base);
        let started = Instant::now();
        c.node(i).sigterm();
        let replacement = c.start_node(&TRAFFIC_ENV).await;
        control.add_node(ws_base(&replacement));
        replacements.push(replacement);
        control.wait_everyone_moved_off(base, RECONNECT).await;
        let status = c
            .node(i)
            .wait_exit(EXIT)
            .await
            .unwrap_or_else(|| panic!("node {i} still running {EXIT:?} after SIGTERM"));
        assert!(status.success(), "node {i} exited with {status}");
        eprintln!(
            "rolling: node {i} drained and replaced in {:?}",
            started.elapsed()
        );
        control.run_for(Duration::from_millis(500)).await;
    }
    let (sent, received) = control.stop_and_drain().await;
    for (room, members) in &plan {
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        assert_rest_lists(&replacements[0], room, &ids).await;
    }
    let logs = control.finish(talkers).await;
    eprintln!("rolling: {} ({received}/{sent} received)", summary(&logs));

    assert_traffic(&logs, false);
    for log in &logs {
        assert!(log.resumes >= 1, "{} never resumed: {log:?}", log.me);
        assert!(
            log.close_codes.iter().all(|code| *code == Some(1001)),
            "{}: close codes {:?}",
            log.me,
            log.close_codes
        );
        assert_eq!(
            log.retry_after_ms.len(),
            log.close_codes.len(),
            "{}: one shutdown error per drain",
            log.me
        );
    }
}

// ---------------------------------------------------------------------------
// i. Grace 0: resume off
// ---------------------------------------------------------------------------

both_engines!(
    grace_zero_leaves_at_once,
    env = [("RESUME_GRACE_SECONDS", "0")],
    grace_zero_leaves_at_once_body
);

/// With RESUME_GRACE_SECONDS=0, room_users still carries a session (resume_seconds
/// 0); a resume while the old connection is open succeeds; a dropped connection is
/// a leave at once, and its token then gives an ordinary join.
async fn grace_zero_leaves_at_once_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (mut bob, frame) = ResumingClient::join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    fresh_token(&frame, 0);
    alice.expect_frame(&user_joined(&bob_user)).await;
    alice.send_json(numbered("bob", 1)).await;
    assert_eq!(bob.recv_relayed().await.1, 1);

    // Resume while the old connection is still open.
    let mut old = bob.take_connection().expect("bob is connected");
    let frame = bob.resume(c.node(0)).await;
    assert_room_users_session(&frame, &room, "bob", &[&alice_user], true);
    assert_session(&frame["payload"], true, Some(0));
    expect_closed_without_frame(&mut old, "bob's replaced connection").await;
    alice.send_json(numbered("bob", 2)).await;
    assert_eq!(bob.recv_relayed().await.1, 2, "bob: seq continues");
    assert_heard_nothing(&mut alice, "after bob's resume").await;

    // FAULT: the network drops: with grace 0 that is a leave, at once.
    let dropped_at = Instant::now();
    bob.drop_connection();
    let frame = alice.recv_json().await;
    assert!(
        frame == user_left("bob", &room, "timeout") || frame == user_left("bob", &room, "left"),
        "alice: expected user_left bob (timeout or left), got {frame}"
    );
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "user_left took {:?} with grace 0",
        dropped_at.elapsed()
    );
    assert_rest_members(c.node(0), &room, &[&alice_user]).await;
    let frame = bob.resume(c.node(0)).await;
    let bob_again = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_again)).await;
    alice.send_json(numbered("bob", 3)).await;
    assert_eq!(bob.recv_relayed().await.1, 1, "bob: seq restarts");
}

/// The connection must end (close frame or not) without any data frame.
async fn expect_closed_without_frame(client: &mut TestClient, what: &str) {
    match client.next_event(TIMEOUT).await {
        Some(Event::Close(_) | Event::Ended(_)) => {}
        None => panic!("{what}: not closed within {TIMEOUT:?}"),
        Some(other) => panic!("{what}: expected no frame before the end, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Beyond the list: leaving on purpose, and a half-dead connection
// ---------------------------------------------------------------------------

both_engines!(
    close_frame_leaves_at_once,
    env = [("RESUME_GRACE_SECONDS", "20")],
    close_frame_leaves_at_once_body
);

/// A client that sends a close frame leaves at once (user_left "left"), grace or
/// not; its token then gives an ordinary join.
async fn close_frame_leaves_at_once_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (bob, frame) = ResumingClient::join(c.node(1), &room, "bob").await;
    let bob_user = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_user)).await;
    let token = bob.token().to_owned();
    let closed_at = Instant::now();
    bob.close().await;
    alice.expect_frame(&user_left("bob", &room, "left")).await;
    assert!(
        closed_at.elapsed() < Duration::from_secs(2),
        "user_left took {:?} after a close frame",
        closed_at.elapsed()
    );
    let url = format!(
        "{}?resume={}&last_seq=0",
        c.node(0).ws_url(&room, "bob"),
        query_value(&token)
    );
    let (_bob, frame) = TestClient::join_with(&url, &[], "bob again").await;
    let bob_again = assert_room_users(&frame, &room, "bob", &[&alice_user]);
    alice.expect_frame(&user_joined(&bob_again)).await;
}

both_engines!(
    resume_replaces_a_half_dead_connection,
    env = [("RESUME_GRACE_SECONDS", "20")],
    resume_replaces_a_half_dead_connection_body
);

/// bob resumes on another node while his old connection is still open (the server
/// has not noticed it is dead): the old one is closed without a frame, the room
/// hears nothing, and seq continues on the new one.
async fn resume_replaces_a_half_dead_connection_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user, mut bob, bob_user) = alice_and_bob(c, &room).await;
    for n in 1..=3 {
        alice.send_json(numbered("bob", n)).await;
    }
    let (_, seqs) = recv_relayed_n(&mut bob, 3).await;
    assert_eq!(seqs, vec![1, 2, 3]);

    let mut old = bob.take_connection().expect("bob is connected");
    let frame = bob.resume(c.node(0)).await;
    let me = assert_room_users_session(&frame, &room, "bob", &[&alice_user], true);
    assert_eq!(me, bob_user, "bob's USER after the resume");
    expect_closed_without_frame(&mut old, "bob's half-dead connection").await;
    alice.send_json(numbered("bob", 4)).await;
    let (frame, seq) = bob.recv_relayed().await;
    assert_eq!(
        (frame, seq),
        (relayed("message", "alice", Some("bob"), json!({"n": 4})), 4)
    );
    assert_heard_nothing(&mut alice, "after bob's resume").await;
    assert!(bob.seq_faults().is_empty(), "{:?}", bob.seq_faults());
}

both_engines!(
    heartbeat_timeout_detaches,
    env = [
        ("RESUME_GRACE_SECONDS", "20"),
        ("PING_INTERVAL_SECONDS", "1")
    ],
    heartbeat_timeout_detaches_body
);

/// bob stops reading (so never answers a ping) while alice keeps sending to him: the
/// server closes him for the heartbeat (`timeout` + 4408), which detaches him; he
/// reads what his socket held, resumes on the other node and gets the rest, in
/// order, seq contiguous; alice heard nothing.
async fn heartbeat_timeout_detaches_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, alice_user, mut bob, _) = alice_and_bob(c, &room).await;
    for n in 1..=3 {
        alice.send_json(numbered("bob", n)).await;
    }
    let (_, seqs) = recv_relayed_n(&mut bob, 3).await;
    assert_eq!(seqs, vec![1, 2, 3]);

    // FAULT: bob stops reading for over two ping intervals (no pong, no frame);
    // alice's messages keep her alive.
    for n in 4..=12 {
        alice.send_json(numbered("bob", n)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut held_by_socket = Vec::new();
    let close = loop {
        match bob.next(TIMEOUT).await {
            Some(Incoming::Frame(frame)) if frame["type"] == "error" => {
                assert_error_frame(&frame, "timeout", "bob after the heartbeat timeout");
                match bob.next(TIMEOUT).await {
                    Some(Incoming::Closed(code)) => break code,
                    other => panic!("bob: expected close 4408 after error timeout, got {other:?}"),
                }
            }
            Some(Incoming::Frame(frame)) => held_by_socket.push(frame["seq"].clone()),
            other => panic!("bob: expected frames, then error timeout, got {other:?}"),
        }
    };
    assert_eq!(
        close,
        Some(4408),
        "bob: close code of the heartbeat timeout"
    );
    bob.finish_close().await;
    assert_heard_nothing(&mut alice, "bob was closed for the heartbeat").await;
    alice.send_json(numbered("bob", 13)).await;

    let last_seq = bob.last_seq();
    let frame = bob.resume(c.node(0)).await;
    assert_room_users_session(&frame, &room, "bob", &[&alice_user], true);
    let (frames, seqs) = recv_relayed_n(&mut bob, (13 - last_seq) as usize).await;
    assert_eq!(
        seqs,
        (last_seq + 1..=13).collect::<Vec<u64>>(),
        "bob: seq after the resume (the socket held {held_by_socket:?})"
    );
    let expected: Vec<Value> = (last_seq + 1..=13)
        .map(|n| relayed("message", "alice", Some("bob"), json!({"n": n})))
        .collect();
    assert_eq!(frames, expected, "bob: messages after the resume");
    assert!(bob.seq_faults().is_empty(), "{:?}", bob.seq_faults());
    assert_heard_nothing(&mut alice, "after bob's resume").await;
}

// ---------------------------------------------------------------------------
// The room password and a resume
// ---------------------------------------------------------------------------

both_engines!(
    resume_needs_no_room_password,
    env = [
        ("RESUME_GRACE_SECONDS", "20"),
        ("ADMIN_TOKEN", crate::support::security::ADMIN)
    ],
    resume_needs_no_room_password_body
);

/// In a password room the resume token stands for the password: a resume without
/// it succeeds; a resume that fails is an ordinary join, which needs it (4403).
async fn resume_needs_no_room_password_body(c: &Cluster) {
    let room = room_id();
    support::security::create_room(c.node(0), json!({"room_id": room, "password": "pw-1"})).await;
    let (mut bob, frame) =
        ResumingClient::join_with_query(&ws_base(c.node(1)), &room, "bob", "password=pw-1").await;
    assert_room_users_session(&frame, &room, "bob", &[], false);

    bob.drop_connection();
    let frame = bob.resume(c.node(0)).await;
    assert_room_users_session(&frame, &room, "bob", &[], true);

    bob.drop_connection();
    let url = format!(
        "{}?resume=not-a-token&last_seq=0",
        c.node(0).ws_url(&room, "bob")
    );
    TestClient::expect_rejected(&url, &[], "forbidden", 4403, "bob with a bad token").await;
}

both_engines!(
    a_kick_ends_the_token,
    env = [
        ("RESUME_GRACE_SECONDS", "20"),
        ("ADMIN_TOKEN", crate::support::security::ADMIN)
    ],
    a_kick_ends_the_token_body
);

/// A kicked member's token resumes nothing: the next connection is an ordinary join.
async fn a_kick_ends_the_token_body(c: &Cluster) {
    let room = room_id();
    let (mut alice, _alice_user, mut bob, _) = alice_and_bob(c, &room).await;
    let token = bob.token().to_owned();
    let path = format!("/rooms/{room}/users/bob");
    let (status, _) = crate::support::security::admin(c.node(0), "DELETE", &path, None).await;
    assert!((200..300).contains(&status), "kick: status {status}");
    alice.expect_type("user_left").await;
    bob.drop_connection();
    let query = format!("resume={}&last_seq=0", query_value(&token));
    let frame = bob.connect_with_query(c.node(0), &query).await;
    assert_eq!(
        frame["payload"]["session"]["resumed"], false,
        "after a kick: {frame}"
    );
    let joined = alice.expect_type("user_joined").await;
    assert_eq!(joined["payload"]["user_id"], "bob");
}
