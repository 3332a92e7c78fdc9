//! The v2 Redis layout (PROTOCOL.md section 7) seen from outside: a delivery
//! channel per (room, user), so a message can only ever reach a session in the
//! sender's room, whatever moves and replacements race with it.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio_util::sync::CancellationToken;

/// Sends a directed message to `target` every few milliseconds until `stop`,
/// reading (and dropping) whatever comes back so its own queue never fills.
fn spawn_sender(
    mut client: TestClient,
    from: &'static str,
    target: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.is_cancelled() {
            client
                .send_json(json!({"type": "message", "target": target, "payload": {"from_room_of": from, "n": sent}}))
                .await;
            sent += 1;
            // Answers (target_not_found while bob is elsewhere) are read and dropped.
            for _ in 0..64 {
                if client.next_event(Duration::from_millis(2)).await.is_none() {
                    break;
                }
            }
        }
        sent
    })
}

/// Checks every frame a session of bob got: a relayed message must come from the
/// member of the session's own room. Returns how many relayed messages it saw.
fn check_frame(frame: &Value, room_sender: &str, context: &str) -> usize {
    if frame["type"] != "message" {
        return 0;
    }
    assert_eq!(
        frame["from"], room_sender,
        "{context}: a message from another room reached this session: {frame}"
    );
    1
}

/// Reads one of bob's replaced connections until it closes, checking each frame.
async fn drain(client: &mut TestClient, room_sender: &str, context: &str) -> usize {
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                seen += check_frame(&frame, room_sender, context);
            }
            Some(Event::Close(_) | Event::Ended(_)) => return seen,
            None => panic!("{context}: the replaced session was not closed within {TIMEOUT:?}"),
            Some(Event::Binary(_)) => panic!("{context}: binary frame"),
        }
    }
}

both_engines!(
    messages_never_cross_rooms_while_a_member_moves,
    moving_member
);

/// alice (room A) and carol (room B) send bob directed messages non-stop while bob
/// moves between A and B 30 times, each move a new connection on the other node
/// (which replaces the previous one). Every message any of bob's sessions receives
/// comes from the member of that session's room.
async fn moving_member(c: &Cluster) {
    let (room_a, room_b) = (room_id(), room_id());
    let (alice, _) = join(c.node(0), &room_a, "alice").await;
    let (carol, _) = join(c.node(1), &room_b, "carol").await;
    let stop = CancellationToken::new();
    // The senders stop with the test, also when it fails.
    let _stop_on_exit = stop.clone().drop_guard();
    let senders = [
        spawn_sender(alice, "alice", "bob", stop.clone()),
        spawn_sender(carol, "carol", "bob", stop.clone()),
    ];
    let mut previous: Option<(TestClient, &str, String)> = None;
    let mut delivered = 0;
    for hop in 0..30 {
        let (room, sender) = if hop % 2 == 0 {
            (&room_a, "alice")
        } else {
            (&room_b, "carol")
        };
        let (mut bob, _) = TestClient::connect_join(c.node(hop % 2), room, "bob").await;
        if let Some((mut old, old_sender, context)) = previous.take() {
            delivered += drain(&mut old, old_sender, &context).await;
        }
        // Let some traffic reach this session before the next move.
        let context = format!("hop {hop}: bob in the room of {sender}");
        for _ in 0..5 {
            if let Some(Event::Text(text)) = bob.next_event(Duration::from_millis(20)).await {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                delivered += check_frame(&frame, sender, &context);
            }
        }
        previous = Some((bob, sender, context));
    }
    stop.cancel();
    if let Some((old, _, _)) = previous.take() {
        old.close().await;
    }
    let mut sent = 0;
    for sender in senders {
        sent += sender.await.expect("sender task");
    }
    assert!(delivered > 0, "no message reached bob at all ({sent} sent)");
    println!(
        "measured: moving member: {sent} messages sent, {delivered} delivered, none across rooms"
    );
}
