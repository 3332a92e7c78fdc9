//! A client that resumes (PROTOCOL.md section 11): it keeps its resume token and
//! the last `seq` it received, records every gap or repeat of `seq`, can lose its
//! TCP connection without a close frame, answers a drain (`shutdown` + 1001), and
//! reconnects with `?resume=<token>&last_seq=<N>` to any node.

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::assert::{assert_error_frame, assert_session};
use super::client::{Event, TestClient};
use super::node::TestNode;
use super::util::TIMEOUT;

/// `ws://127.0.0.1:PORT` of `node`: the part of a WebSocket URL before `/ws/...`.
pub fn ws_base(node: &TestNode) -> String {
    format!("ws://127.0.0.1:{}", node.port())
}

/// Percent-encodes a query value (everything but the unreserved characters).
pub fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a [`ResumingClient`] read.
#[derive(Debug)]
pub enum Incoming {
    /// A JSON text frame; relayed frames keep their `seq`.
    Frame(Value),
    /// The server's close frame with its code. The connection is closing: answer it
    /// with [`ResumingClient::finish_close`].
    Closed(Option<u16>),
    /// The connection ended (or failed) without a close frame.
    Ended(String),
}

/// A member that survives its connections: one [`TestClient`] at a time, the
/// session's resume token and last `seq` across them.
pub struct ResumingClient {
    room: String,
    user: String,
    /// The open connection, if any.
    conn: Option<TestClient>,
    /// The base URL (`ws://host:port`) of the node the connection goes to.
    base: String,
    /// The resume token of the last `room_users`.
    token: String,
    /// The last `seq` received in this session (0 right after an ordinary join).
    last_seq: u64,
    /// Every gap or repeat of `seq`, in order (`"gap: seq 7 after 5"`).
    seq_faults: Vec<String>,
    /// `room_users` with `resumed: true` received after a resume attempt.
    resumes: usize,
    /// Resume attempts that became an ordinary join (`resumed: false`).
    fresh_joins: usize,
    /// `retry_after_ms` of every `shutdown` error received.
    retry_after_ms: Vec<u64>,
}

impl ResumingClient {
    /// Joins `room` as `user` on `node` (an ordinary join); returns the client and
    /// its `room_users` frame (with a fresh session).
    pub async fn join(node: &TestNode, room: &str, user: &str) -> (Self, Value) {
        Self::join_at(&ws_base(node), room, user).await
    }

    /// [`ResumingClient::join`] on the node at `base` (`ws://host:port`).
    pub async fn join_at(base: &str, room: &str, user: &str) -> (Self, Value) {
        Self::join_with_query(base, room, user, "").await
    }

    /// [`ResumingClient::join_at`] with a query string (e.g. `password=...`).
    pub async fn join_with_query(base: &str, room: &str, user: &str, query: &str) -> (Self, Value) {
        let mut client = Self {
            room: room.to_owned(),
            user: user.to_owned(),
            conn: None,
            base: base.to_owned(),
            token: String::new(),
            last_seq: 0,
            seq_faults: Vec::new(),
            resumes: 0,
            fresh_joins: 0,
            retry_after_ms: Vec::new(),
        };
        let frame = client
            .connect(base, query, 0)
            .await
            .unwrap_or_else(|e| panic!("{user}@{room}: join failed: {e}"));
        assert_eq!(
            frame["payload"]["session"]["resumed"], false,
            "{user}@{room}: an ordinary join must not be resumed: {frame}"
        );
        // The ordinary join is not a failed resume.
        client.fresh_joins = 0;
        (client, frame)
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn room(&self) -> &str {
        &self.room
    }

    /// `user@room on ws://host:port`.
    pub fn label(&self) -> String {
        format!("{}@{} on {}", self.user, self.room, self.base)
    }

    /// The base URL of the node of the current (or last) connection.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn seq_faults(&self) -> &[String] {
        &self.seq_faults
    }

    pub fn resumes(&self) -> usize {
        self.resumes
    }

    pub fn fresh_joins(&self) -> usize {
        self.fresh_joins
    }

    pub fn retry_after_ms(&self) -> &[u64] {
        &self.retry_after_ms
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The open connection (panics naming the client when there is none).
    pub fn conn(&mut self) -> &mut TestClient {
        let label = self.label();
        self.conn
            .as_mut()
            .unwrap_or_else(|| panic!("{label}: not connected"))
    }

    /// Loses the connection without a close frame (a dropped network, as the server
    /// sees it). Nothing happens when there is no connection.
    pub fn drop_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.drop_without_close();
        }
    }

    /// Like [`ResumingClient::drop_connection`], but the TCP socket is reset (RST).
    pub fn reset_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.reset_without_close();
        }
    }

    /// Hands the open connection over to the caller and forgets it: the next
    /// (re)connection then leaves it open (a half-dead connection, as the server
    /// sees it, until the resume replaces it).
    pub fn take_connection(&mut self) -> Option<TestClient> {
        self.conn.take()
    }

    /// Sends a JSON frame on the open connection (panics on failure).
    pub async fn send_json(&mut self, frame: Value) {
        self.conn().send_json(frame).await;
    }

    /// Sends a JSON frame; `Err` when not connected or the connection is closing.
    pub async fn try_send_json(&mut self, frame: Value) -> Result<(), String> {
        match self.conn.as_mut() {
            None => Err("not connected".into()),
            Some(conn) => conn.try_send(Message::text(frame.to_string())).await,
        }
    }

    /// Closes the connection with a close frame: the member leaves (its decision).
    pub async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    /// Like [`ResumingClient::close`], but a failure (the server closed first) is
    /// returned instead of panicking.
    pub async fn try_close(mut self) -> Result<(), String> {
        match self.conn.take() {
            Some(conn) => conn.try_close().await,
            None => Ok(()),
        }
    }

    /// Resumes on `node` with the current token and last `seq`; returns `room_users`
    /// (`session.resumed` tells whether it was a resume or an ordinary join).
    pub async fn resume(&mut self, node: &TestNode) -> Value {
        let last_seq = self.last_seq;
        self.resume_from(node, last_seq).await
    }

    /// Resumes on `node` claiming `last_seq` (e.g. older than what it received: the
    /// frames after it must be replayed; the `seq` check restarts from it).
    pub async fn resume_from(&mut self, node: &TestNode, last_seq: u64) -> Value {
        let label = self.label();
        self.try_resume_at(&ws_base(node), last_seq)
            .await
            .unwrap_or_else(|e| panic!("{label}: resume on {} failed: {e}", node.node_id()))
    }

    /// Resumes at `base` claiming `last_seq`; `Err` when the node could not be
    /// reached or refused the connection (an `error` frame, then a close).
    pub async fn try_resume_at(&mut self, base: &str, last_seq: u64) -> Result<Value, String> {
        let query = format!("resume={}&last_seq={last_seq}", query_value(&self.token));
        self.connect(base, &query, last_seq).await
    }

    /// Connects to `node` with the raw `query` (e.g. a foreign token or a
    /// `last_seq` that is not a number); returns `room_users`. For a resumed
    /// session the `seq` check continues from the client's own last `seq`.
    pub async fn connect_with_query(&mut self, node: &TestNode, query: &str) -> Value {
        let label = self.label();
        let last_seq = self.last_seq;
        self.connect(&ws_base(node), query, last_seq)
            .await
            .unwrap_or_else(|e| panic!("{label}: connect with ?{query} failed: {e}"))
    }

    /// Opens `base/ws/room/user[?query]` (dropping any current connection without
    /// a close frame) and reads the first frame. On `room_users`: keeps the new
    /// token, and continues `seq` after `last_seq` when resumed, from 0 otherwise.
    async fn connect(&mut self, base: &str, query: &str, last_seq: u64) -> Result<Value, String> {
        self.drop_connection();
        let mut url = format!("{base}/ws/{}/{}", self.room, self.user);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let mut conn = TestClient::try_connect(&url).await?;
        self.base = base.to_owned();
        conn.set_label(self.label());
        conn.leave_seq_contiguity_to_caller();
        let frame = match conn.next_event_keeping_seq(TIMEOUT).await {
            None => return Err(format!("no frame within {TIMEOUT:?}")),
            Some(Event::Text(text)) => serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("first frame is not JSON ({e}): {text:?}"))?,
            Some(other) => return Err(format!("first event {other:?}")),
        };
        if frame["type"] != "room_users" {
            // A refusal: `error`, then a close; the connection is finished here.
            conn.answer_close().await;
            return Err(format!("refused with {frame}"));
        }
        let resumed = frame["payload"]["session"]["resumed"] == Value::Bool(true);
        self.token = assert_session(&frame["payload"], resumed, None);
        if resumed {
            self.resumes += 1;
            self.last_seq = last_seq;
        } else {
            self.fresh_joins += 1;
            self.last_seq = 0;
        }
        self.conn = Some(conn);
        Ok(frame)
    }

    /// Checks a relayed frame's `seq` against the last one, recording a gap or repeat.
    fn observe_seq(&mut self, frame: &Value) {
        if frame.get("from").is_none() {
            return;
        }
        let Some(seq) = frame["seq"].as_u64() else {
            self.seq_faults
                .push(format!("no seq after {}: {frame}", self.last_seq));
            return;
        };
        let last = self.last_seq;
        if seq <= last {
            self.seq_faults
                .push(format!("repeat: seq {seq} after {last}: {frame}"));
        } else {
            if seq != last + 1 {
                self.seq_faults
                    .push(format!("gap: seq {seq} after {last}: {frame}"));
            }
            self.last_seq = seq;
        }
    }

    /// The next event within `within`, or `None`. Relayed frames keep their `seq`
    /// (checked and recorded); a `shutdown` error's `retry_after_ms` is recorded; an
    /// end without close frame drops the connection. Cancel-safe: nothing is awaited
    /// after a frame was read.
    pub async fn next(&mut self, within: Duration) -> Option<Incoming> {
        let label = self.label();
        let conn = self
            .conn
            .as_mut()
            .unwrap_or_else(|| panic!("{label}: reading while not connected"));
        let event = conn.next_event_keeping_seq(within).await?;
        Some(match event {
            Event::Text(text) => {
                let frame: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{label}: frame is not JSON ({e}): {text:?}"));
                self.observe_seq(&frame);
                if frame["type"] == "error" && frame["payload"]["code"] == "shutdown" {
                    if let Some(ms) = frame["payload"]["retry_after_ms"].as_u64() {
                        self.retry_after_ms.push(ms);
                    }
                }
                Incoming::Frame(frame)
            }
            Event::Close(close) => Incoming::Closed(close.map(|(code, _)| code)),
            Event::Ended(why) => {
                self.conn = None;
                Incoming::Ended(why)
            }
            Event::Binary(bytes) => panic!("{label}: unexpected binary frame {bytes:?}"),
        })
    }

    /// After [`Incoming::Closed`]: answers the server's close (the client decided
    /// nothing) and forgets the connection.
    pub async fn finish_close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.answer_close().await;
        }
    }

    /// The next data frame (within TIMEOUT), which must be JSON text.
    pub async fn recv(&mut self) -> Value {
        let label = self.label();
        match self.next(TIMEOUT).await {
            Some(Incoming::Frame(frame)) => frame,
            None => panic!("{label}: no frame within {TIMEOUT:?}"),
            Some(other) => panic!("{label}: expected a frame, got {other:?}"),
        }
    }

    /// The next frame must be a relayed one; returns it without `seq`, and the `seq`.
    pub async fn recv_relayed(&mut self) -> (Value, u64) {
        let mut frame = self.recv().await;
        let seq = frame["seq"].as_u64().unwrap_or_else(|| {
            panic!(
                "{}: expected a relayed frame with seq, got {frame}",
                self.label()
            )
        });
        if let Some(object) = frame.as_object_mut() {
            object.remove("seq");
        }
        (frame, seq)
    }

    /// A drain: frames (returned, relayed ones with `seq`), then error `shutdown`
    /// with `retry_after_ms` 0 to 1000, then close 1001, which is answered. Returns
    /// the frames before the error and `retry_after_ms`.
    pub async fn expect_drained(&mut self) -> (Vec<Value>, u64) {
        let label = self.label();
        let mut before = Vec::new();
        let retry_after = loop {
            let frame = self.recv().await;
            if frame["type"] != "error" {
                before.push(frame);
                continue;
            }
            assert_error_frame(&frame, "shutdown", &label);
            let ms = frame["payload"]["retry_after_ms"].as_u64();
            assert!(
                ms.is_some_and(|ms| ms <= 1000),
                "{label}: shutdown needs retry_after_ms from 0 to 1000: {frame}"
            );
            break ms.unwrap_or_default();
        };
        match self.next(TIMEOUT).await {
            Some(Incoming::Closed(Some(1001))) => {}
            other => panic!("{label}: after shutdown expected close 1001, got {other:?}"),
        }
        self.finish_close().await;
        (before, retry_after)
    }
}
