//! The WebSocket test client: every wait bounded by TIMEOUT, failures naming the
//! client; connections with extra headers and with a small receive buffer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::assert::{assert_error_frame, error_echo_mismatch};
use super::node::TestNode;
use super::util::TIMEOUT;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent, WebSocket ping/pong excluded.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (`None` for a close frame without a code).
    Close(Option<(u16, String)>),
    /// The stream ended or failed without (further) close frame.
    Ended(String),
}

/// A WebSocket client with bounded waits and precise failure messages.
///
/// Every text frame it reads goes through [`SeqCheck`]: a relayed frame (one with
/// `from`) must carry `seq` (PROTOCOL.md section 4, v2), the next of the connection,
/// and any other frame none; a violation panics naming the client. The frame is then
/// handed to the test without `seq`, so that exact expectations built with
/// [`super::assert::relayed`] stay exact on every other field.
pub struct TestClient {
    ws: Ws,
    /// `user@room` (or the URL), to say which client failed.
    label: String,
    seq: SeqCheck,
}

/// What one connection has seen of `seq`.
#[derive(Debug, Default)]
struct SeqCheck {
    /// The last `seq` received. `None` before `room_users`, and after a resumed one
    /// (the first relayed frame then sets it; [`super::resume::ResumingClient`]
    /// checks resumed sessions against its own `last_seq`).
    last: Option<u64>,
    /// Contiguity is checked by someone else (the resuming client records gaps
    /// instead of panicking); presence of `seq` is still checked.
    contiguity_off: bool,
}

impl SeqCheck {
    /// Checks one parsed frame; returns the relayed frame's `seq`, if it is one.
    fn observe(&mut self, frame: &Value, label: &str) -> Option<u64> {
        let object = frame.as_object()?;
        if object.get("type").and_then(Value::as_str) == Some("room_users") {
            let resumed = frame["payload"]["session"]["resumed"] == Value::Bool(true);
            self.last = if resumed { None } else { Some(0) };
        }
        if !object.contains_key("from") {
            assert!(
                !object.contains_key("seq"),
                "{label}: only relayed frames carry seq, got {frame}"
            );
            return None;
        }
        let seq = object
            .get("seq")
            .and_then(Value::as_u64)
            .filter(|&seq| seq >= 1)
            .unwrap_or_else(|| {
                panic!("{label}: a relayed frame must carry a positive integer seq, got {frame}")
            });
        if !self.contiguity_off {
            if let Some(last) = self.last {
                assert_eq!(
                    seq,
                    last + 1,
                    "{label}: seq must follow {last} without gap or repeat, got {frame}"
                );
            }
        }
        self.last = Some(seq);
        Some(seq)
    }
}

impl TestClient {
    /// Opens a WebSocket to `url` (the upgrade itself must succeed).
    pub async fn connect(url: &str) -> Self {
        let (ws, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
        Self::from_ws(ws, url)
    }

    fn from_ws(ws: Ws, label: &str) -> Self {
        Self {
            ws,
            label: label.to_owned(),
            seq: SeqCheck::default(),
        }
    }

    /// Opens a WebSocket to `url`; `Err` (naming the URL) when the connection or the
    /// upgrade fails or times out, e.g. on a node that is going away.
    pub async fn try_connect(url: &str) -> Result<Self, String> {
        match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url)).await {
            Err(_) => Err(format!("timed out connecting to {url}")),
            Ok(Err(e)) => Err(format!("WebSocket connect to {url} failed: {e}")),
            Ok(Ok((ws, _response))) => Ok(Self::from_ws(ws, url)),
        }
    }

    /// Connects `user` to `room` on `node`; returns the client and its first frame,
    /// which must be `room_users`.
    pub async fn connect_join(node: &TestNode, room: &str, user: &str) -> (Self, Value) {
        let mut client = Self::connect(&node.ws_url(room, user)).await;
        client.label = format!("{user}@{room} on {}", node.node_id());
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{}: the first frame must be room_users, got {frame}",
            client.label
        );
        (client, frame)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    /// The `seq` of the last relayed frame this connection received (`Some(0)` after
    /// a fresh `room_users` and before any relayed frame).
    pub fn last_seq(&self) -> Option<u64> {
        self.seq.last
    }

    /// Leaves `seq` contiguity to the caller (presence is still checked).
    pub(super) fn leave_seq_contiguity_to_caller(&mut self) {
        self.seq.contiguity_off = true;
    }

    /// Ends the connection the way a lost network does for the server: the TCP
    /// socket goes away without a WebSocket close frame.
    pub fn drop_without_close(self) {
        drop(self.ws);
    }

    /// Dies in the middle of a frame: a masked text frame header promising 100 bytes,
    /// 3 of them written, then the socket goes away without a close frame.
    pub async fn drop_mid_frame(mut self) {
        use tokio::io::AsyncWriteExt;
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() {
            let _ = tcp
                .write_all(&[0x81, 0xE4, 1, 2, 3, 4, b'{', b'"', b't'])
                .await;
        }
        drop(self.ws);
    }

    /// Like [`TestClient::drop_without_close`], but the socket is reset (RST, through
    /// `SO_LINGER` 0) instead of shut down (FIN).
    pub fn reset_without_close(mut self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() {
            tcp.set_zero_linger()
                .unwrap_or_else(|e| panic!("{}: set SO_LINGER 0: {e}", self.label));
        }
        drop(self.ws);
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    /// Sends any WebSocket message, e.g. a hand-built `Message::Frame` (panics on failure).
    pub async fn send_message(&mut self, message: Message) {
        self.send(message).await;
    }

    /// Sends a message, reporting failure (the server may have closed the connection)
    /// instead of panicking. Still bounded by TIMEOUT.
    pub async fn try_send(&mut self, message: Message) -> Result<(), String> {
        match tokio::time::timeout(TIMEOUT, self.ws.send(message)).await {
            Err(_) => Err(format!("{}: send timed out", self.label)),
            Ok(Err(e)) => Err(format!("{}: send failed: {e}", self.label)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn send(&mut self, message: Message) {
        tokio::time::timeout(TIMEOUT, self.ws.send(message))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// The next frame that is not a WebSocket ping/pong, or `None` after `within`.
    /// A relayed frame's `seq` is checked and removed (see [`TestClient`]).
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        self.next_event_seq(within, true).await
    }

    /// Like [`TestClient::next_event`], but relayed frames keep their `seq`.
    pub async fn next_event_keeping_seq(&mut self, within: Duration) -> Option<Event> {
        self.next_event_seq(within, false).await
    }

    /// A text frame through the [`SeqCheck`]; without `seq` when `strip` and it is relayed.
    fn observe_text(&mut self, text: String, strip: bool) -> String {
        let Ok(mut frame) = serde_json::from_str::<Value>(&text) else {
            return text;
        };
        let relayed = self.seq.observe(&frame, &self.label).is_some();
        if !(relayed && strip) {
            return text;
        }
        if let Some(object) = frame.as_object_mut() {
            object.remove("seq");
        }
        frame.to_string()
    }

    async fn next_event_seq(&mut self, within: Duration, strip: bool) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Event::Ended("stream ended".into()),
                Some(Err(e)) => Event::Ended(format!("error: {e}")),
                Some(Ok(Message::Text(text))) => {
                    Event::Text(self.observe_text(text.to_string(), strip))
                }
                Some(Ok(Message::Binary(bytes))) => Event::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Event::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next data frame, which must be a JSON text frame (waits up to TIMEOUT).
    pub async fn recv_json(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            None => panic!("{}: no frame within {TIMEOUT:?}", self.label),
            Some(Event::Text(text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: frame is not JSON ({e}): {text:?}", self.label)),
            Some(other) => panic!("{}: expected a JSON text frame, got {other:?}", self.label),
        }
    }

    /// The next frame, which must have `"type": kind`; returns the whole frame.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(
            frame["type"], kind,
            "{}: expected a {kind} frame, got {frame}",
            self.label
        );
        frame
    }

    /// The next frame, which must equal `expected` exactly.
    pub async fn expect_frame(&mut self, expected: &Value) {
        let frame = self.recv_json().await;
        assert!(
            &frame == expected,
            "{}: unexpected frame\n  expected: {expected}\n    actual: {frame}",
            self.label
        );
    }

    /// The next frame, which must be an `error` with `code`; returns its payload.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv_json().await;
        assert_error_frame(&frame, code, &self.label);
        frame["payload"].clone()
    }

    /// The next frame must be an `error` with `code` whose payload has exactly
    /// `code`, `message`, plus `id` and `target` when given (with those values).
    pub async fn expect_error_echo(&mut self, code: &str, id: Option<Value>, target: Option<&str>) {
        let frame = self.recv_json().await;
        if let Some(mismatch) = error_echo_mismatch(&frame, code, id, target) {
            panic!("{}: {mismatch}", self.label);
        }
    }

    /// The next frame must be a close frame with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        match self.next_event(TIMEOUT).await {
            Some(Event::Close(Some((actual, _)))) if actual == code => {}
            None => panic!(
                "{}: expected close {code}, nothing within {TIMEOUT:?}",
                self.label
            ),
            Some(Event::Text(text)) => {
                panic!("{}: expected close {code}, got frame {text}", self.label)
            }
            Some(other) => panic!("{}: expected close {code}, got {other:?}", self.label),
        }
    }

    /// An `error` frame with exactly `code` and `message`, then a close with `close_code`.
    pub async fn expect_error_then_close(&mut self, code: &str, close_code: u16) {
        self.expect_error_echo(code, None, None).await;
        self.expect_close(close_code).await;
    }

    /// Asserts that no data frame (nor close) arrives within `within`. Only for
    /// asserting absence; never use it to wait for something to happen.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(event) = self.next_event(within).await {
            panic!(
                "{}: expected nothing for {within:?}, got {event:?}",
                self.label
            );
        }
    }

    /// Like [`TestClient::expect_silence`], but reading keeps answering the server's
    /// WebSocket pings; returns how many pings arrived within `within`.
    pub async fn expect_silence_counting_pings(&mut self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut pings = 0;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return pings;
            };
            match next {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                other => panic!(
                    "{}: expected nothing but pings for {within:?}, got {other:?}",
                    self.label
                ),
            }
        }
    }

    /// Closes with 1000 and waits (bounded) for the end of the closing handshake.
    /// Frames that were already in flight are discarded.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        tokio::time::timeout(TIMEOUT, self.ws.close(Some(frame)))
            .await
            .unwrap_or_else(|_| panic!("{}: sending close timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: sending close failed: {e}", self.label));
        self.wait_closed().await;
    }

    /// Answers the server's close frame (already received): sends the close reply and
    /// waits (bounded by TIMEOUT) for the end of the connection. Errors are ignored:
    /// the server may already have dropped the socket.
    pub async fn answer_close(&mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }

    /// Like [`TestClient::close`], but a failure (the server already closed or
    /// dropped the connection) is returned instead of panicking.
    pub async fn try_close(mut self) -> Result<(), String> {
        match tokio::time::timeout(TIMEOUT, self.ws.close(None)).await {
            Err(_) => return Err(format!("{}: sending close timed out", self.label)),
            Ok(Err(e)) => return Err(format!("{}: sending close failed: {e}", self.label)),
            Ok(Ok(())) => {}
        }
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
        Ok(())
    }

    /// Waits (bounded) until the server ends the connection, discarding frames.
    pub async fn wait_closed(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                None => panic!("{}: connection not closed within {TIMEOUT:?}", self.label),
                Some(Event::Ended(_)) => return,
                Some(_) => {}
            }
        }
    }
}

/// Waits on several clients at once for [`TestClient::expect_silence`].
pub async fn expect_silence_all(clients: &mut [&mut TestClient], within: Duration) {
    futures::future::join_all(clients.iter_mut().map(|c| c.expect_silence(within))).await;
}

impl TestClient {
    /// Opens a WebSocket to `url` with extra request `headers` (e.g. Origin,
    /// Authorization). `Err((status, body))` when the server answered the upgrade
    /// request with a plain HTTP response; any other failure panics.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        use tokio_tungstenite::tungstenite::Error as WsError;

        let mut request = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"));
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => panic!("timed out connecting to {url}"),
            Ok(Ok((ws, _response))) => Ok(Self::from_ws(ws, url)),
            Ok(Err(WsError::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
        }
    }

    /// Like [`TestClient::try_connect_with`], but the upgrade must succeed.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)], label: &str) -> Self {
        match Self::try_connect_with(url, headers).await {
            Ok(mut client) => {
                client.label = label.to_owned();
                client
            }
            Err((status, body)) => {
                panic!("{label}: upgrade refused with HTTP {status}: {body}")
            }
        }
    }

    /// Connects to `url` with `headers`; the first frame must be `room_users`,
    /// which is returned.
    pub async fn join_with(url: &str, headers: &[(&str, &str)], label: &str) -> (Self, Value) {
        let mut client = Self::connect_with(url, headers, label).await;
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{label}: the first frame must be room_users, got {frame}"
        );
        (client, frame)
    }

    /// Connects to `url` with `headers`: the upgrade must succeed, then the server
    /// must send exactly one `error` with `code` and close with `close_code`.
    pub async fn expect_rejected(
        url: &str,
        headers: &[(&str, &str)],
        code: &str,
        close_code: u16,
        label: &str,
    ) {
        let mut client = Self::connect_with(url, headers, label).await;
        client.expect_error_then_close(code, close_code).await;
    }
}

impl TestClient {
    /// Connects like [`TestClient::connect_join`], over a socket whose kernel receive
    /// buffer is only `recv_buffer` bytes: a client that stops reading then backs up
    /// into the server within kilobytes instead of megabytes of loopback buffers.
    pub async fn connect_join_small_buffer(
        node: &TestNode,
        room: &str,
        user: &str,
        recv_buffer: u32,
    ) -> (Self, Value) {
        let url = node.ws_url(room, user);
        let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        socket
            .set_recv_buffer_size(recv_buffer)
            .expect("set SO_RCVBUF");
        let addr: SocketAddr = ([127, 0, 0, 1], node.port()).into();
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        let (ws, _response) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .unwrap_or_else(|_| panic!("timed out upgrading {url}"))
        .unwrap_or_else(|e| panic!("WebSocket upgrade of {url} failed: {e}"));
        let mut client = Self::from_ws(
            ws,
            &format!("{user}@{room} on {} (small buffer)", node.node_id()),
        );
        let frame = client.recv_json().await;
        assert_eq!(
            frame["type"], "room_users",
            "{}: first frame {frame}",
            client.label
        );
        (client, frame)
    }
}
