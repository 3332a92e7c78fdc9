//! `floor-relay`: the least a node of this architecture can do, to measure what
//! the machine itself costs (README "Measured numbers", issue 13). It accepts
//! `GET /ws/{room}/{user}`, answers a `room_users` frame, tells the room when
//! someone joins, and publishes every text frame that has a `"target"` on the
//! target's Redis channel, from where the node holding the target writes it out
//! as is. No validation, no membership, no mailbox, no numbering, no metrics:
//! the same libraries (tokio, tungstenite, redis-rs) and the same hops (client →
//! node → Redis → node → client) as signal-node, nothing else. `signal-bench`
//! drives it like a real node, so a figure it cannot reach against this server is
//! out of the machine's reach, not the server's.
//!
//! ```sh
//! cargo run --release --example floor-relay -- --port 8101 --redis redis://127.0.0.1:6379/
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::{FutureExt, SinkExt, StreamExt};
use redis::{AsyncCommands, IntoConnectionInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "floor-relay",
    about = "A do-nothing relay node: the machine's floor"
)]
struct Cli {
    #[arg(long, default_value_t = 8101)]
    port: u16,
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
}

/// Local sessions by channel name: where the one subscriber hands frames.
type Sessions = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>>;

fn channel(room: &str, user: &str) -> String {
    format!("floor:{room}:{user}")
}

/// The `"target":"…"` of a frame, found without parsing it.
fn target(frame: &str) -> Option<&str> {
    let at = frame.find(r#""target":""#)? + 10;
    let rest = frame.get(at..)?;
    rest.get(..rest.find('"')?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    // As signal-node dials Redis: Nagle off.
    let info = cli
        .redis
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    let publisher = client.get_multiplexed_async_connection().await?;
    let (subscriber, mut messages) = client.get_async_pubsub().await?.split();
    let sessions: Sessions = Arc::default();
    let dispatch = sessions.clone();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            let map = dispatch.lock().unwrap_or_else(|e| e.into_inner());
            for session in map.get(message.get_channel_name()).into_iter().flatten() {
                let _ = session.send(text.clone());
            }
        }
    });
    let listener = TcpListener::bind(("127.0.0.1", cli.port)).await?;
    eprintln!("floor-relay: listening on {}", cli.port);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (sessions, publisher, subscriber) =
            (sessions.clone(), publisher.clone(), subscriber.clone());
        tokio::spawn(async move {
            if let Err(e) = session(stream, sessions, publisher, subscriber).await {
                eprintln!("floor-relay: session: {e}");
            }
        });
    }
}

// tungstenite's handshake callback returns its own (large) error type.
#[allow(clippy::result_large_err)]
async fn session(
    stream: TcpStream,
    sessions: Sessions,
    mut publisher: redis::aio::MultiplexedConnection,
    mut subscriber: redis::aio::PubSubSink,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut path = String::new();
    // Small buffers, as signal-node has: the defaults (128 KiB zeroed per socket)
    // would make the floor's joins dearer than the server's.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, res: Response| {
            path = req.uri().path().to_owned();
            Ok(res)
        },
        Some(config),
    )
    .await?;
    let mut parts = path.trim_start_matches("/ws/").split('/');
    let (Some(room), Some(user)) = (parts.next(), parts.next()) else {
        return Err(format!("bad path {path}").into());
    };
    let (room, user) = (room.to_owned(), user.to_owned());
    let (mine, everyone) = (channel(&room, &user), channel(&room, "*room"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for name in [&mine, &everyone] {
        let first = {
            let mut map = sessions.lock().unwrap_or_else(|e| e.into_inner());
            let list = map.entry(name.clone()).or_default();
            list.push(tx.clone());
            list.len() == 1
        };
        if first {
            subscriber.subscribe(name).await?;
        }
    }
    let (mut sink, mut source) = ws.split();
    sink.send(Message::text(format!(
        r#"{{"type":"room_users","payload":{{"room_id":"{room}","users":[]}}}}"#
    )))
    .await?;
    publisher
        .publish::<_, _, ()>(
            &everyone,
            format!(r#"{{"type":"user_joined","payload":{{"user_id":"{user}"}}}}"#),
        )
        .await?;
    let writer = async move {
        while let Some(frame) = rx.recv().await {
            sink.feed(Message::text(frame)).await?;
            while let Ok(frame) = rx.try_recv() {
                sink.feed(Message::text(frame)).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    };
    // Everything the client has already sent goes out as one pipeline, as
    // signal-node sends a burst as one script call: the floor batches too.
    let reader = async move {
        while let Some(Ok(first)) = source.next().await {
            let mut pipe = redis::pipe();
            let mut next = Some(first);
            while let Some(message) = next.take() {
                if let Message::Text(text) = message {
                    if let Some(to) = target(&text) {
                        pipe.publish(channel(&room, to), text.as_str()).ignore();
                    }
                }
                next = match source.next().now_or_never() {
                    Some(Some(Ok(message))) => Some(message),
                    _ => None,
                };
            }
            pipe.query_async::<()>(&mut publisher).await?;
        }
        Ok::<_, redis::RedisError>(())
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    let mut map = sessions.lock().unwrap_or_else(|e| e.into_inner());
    for name in [&mine, &everyone] {
        if let Some(list) = map.get_mut(name.as_str()) {
            list.retain(|s| !s.same_channel(&tx));
            if list.is_empty() {
                map.remove(name.as_str());
            }
        }
    }
    Ok(())
}
