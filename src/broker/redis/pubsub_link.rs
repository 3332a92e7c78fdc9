//! The subscriber's connection, in the two shapes pub/sub takes (PROTOCOL.md
//! section 13): classic `SUBSCRIBE` on one server (single, sentinel), or sharded
//! `SSUBSCRIBE` on a Redis Cluster, where each channel is subscribed on the shard
//! that owns its slot and its messages come back as RESP3 pushes.
//!
//! The subscriber sees both as a [`Link`] it sends (un)subscriptions on and an
//! [`Incoming`] stream of [`Event`]s. The sharded shape reports two events the
//! classic one never has: a channel the cluster connection subscribed again by
//! itself (a shard reconnected, a replica was promoted), and a channel the server
//! dropped (its slot moved to another shard). Both may have missed messages, which
//! the subscriber then reads from the member's mailbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::keys;

/// Confirmations the node asked for and has not seen yet, per channel, so a
/// confirmation nobody asked for can be told apart (the cluster connection
/// resubscribed, or the server unsubscribed).
#[derive(Default)]
pub(super) struct Awaited {
    subscribes: HashMap<Vec<u8>, u32>,
    unsubscribes: HashMap<Vec<u8>, u32>,
}

type SharedAwaited = Arc<Mutex<Awaited>>;

fn lock(awaited: &SharedAwaited) -> MutexGuard<'_, Awaited> {
    // Counters only: a poisoned lock still holds usable counts.
    awaited.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one awaited confirmation per channel.
fn expect(map: &mut HashMap<Vec<u8>, u32>, channels: &[String]) {
    for channel in channels {
        *map.entry(channel.as_bytes().to_vec()).or_default() += 1;
    }
}

/// Takes one awaited confirmation of `channel`; false when none was awaited.
fn take(map: &mut HashMap<Vec<u8>, u32>, channel: &[u8]) -> bool {
    match map.get_mut(channel) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            map.remove(channel);
            true
        }
        None => false,
    }
}

/// The sending half: where (un)subscriptions go.
pub(super) enum Link {
    /// One server's pub/sub connection.
    Classic(PubSubSink),
    /// The cluster connection the subscriber owns (RESP3, pushes to [`Incoming`]).
    Sharded {
        conn: ClusterConnection,
        awaited: SharedAwaited,
    },
}

/// The receiving half.
pub(super) enum Incoming {
    Classic(PubSubStream),
    Sharded {
        pushes: UnboundedReceiver<PushInfo>,
        awaited: SharedAwaited,
    },
}

/// What the connection reports.
pub(super) enum Event {
    /// A message on `channel`.
    Message(Received),
    /// The cluster connection subscribed `channel` again by itself: messages
    /// published meanwhile were not received.
    Resubscribed(String),
    /// The server dropped `channel` (its slot moved): it must be subscribed again,
    /// on its new owner.
    Dropped(String),
    /// One shard's connection dropped; the cluster connection is reconnecting it.
    ShardLost,
    /// Nothing to report (a confirmation that was awaited, a push of no interest).
    Nothing,
}

/// A message as it came: the classic connection's is used in place (no copy on
/// the delivery path); a push's parts are taken out of it.
pub(super) enum Received {
    Classic(redis::Msg),
    Sharded { channel: String, payload: Vec<u8> },
}

impl Received {
    /// The channel it was published on.
    pub(super) fn channel(&self) -> &str {
        match self {
            Self::Classic(msg) => msg.get_channel_name(),
            Self::Sharded { channel, .. } => channel,
        }
    }

    /// Its payload.
    pub(super) fn payload(&self) -> &[u8] {
        match self {
            Self::Classic(msg) => msg.get_payload_bytes(),
            Self::Sharded { payload, .. } => payload,
        }
    }
}

/// A sharded link: the cluster connection and its pushes.
pub(super) fn sharded(
    conn: ClusterConnection,
    pushes: UnboundedReceiver<PushInfo>,
) -> (Link, Incoming) {
    let awaited = SharedAwaited::default();
    (
        Link::Sharded {
            conn,
            awaited: awaited.clone(),
        },
        Incoming::Sharded { pushes, awaited },
    )
}

impl Link {
    /// Subscribes `channels` (on a cluster: one SSUBSCRIBE per slot, concurrently).
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Classic(sink) => sink.subscribe(channels).await,
            Self::Sharded { conn, awaited } => {
                expect(&mut lock(awaited).subscribes, channels);
                per_slot(conn, channels, true).await
            }
        }
    }

    /// Drops `channels` (on a cluster: one SUNSUBSCRIBE per slot).
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Classic(sink) => sink.unsubscribe(channels).await,
            Self::Sharded { conn, awaited } => {
                expect(&mut lock(awaited).unsubscribes, channels);
                per_slot(conn, channels, false).await
            }
        }
    }
}

/// One SSUBSCRIBE (or SUNSUBSCRIBE) per slot of `channels`, concurrently.
async fn per_slot(
    conn: &ClusterConnection,
    channels: &[String],
    subscribe: bool,
) -> RedisResult<()> {
    let runs = by_slot(channels).into_iter().map(|group| {
        let mut conn = conn.clone();
        async move {
            if subscribe {
                conn.ssubscribe(&group).await
            } else {
                conn.sunsubscribe(&group).await
            }
        }
    });
    futures::future::join_all(runs).await.into_iter().collect()
}

/// `channels` grouped by cluster slot (SSUBSCRIBE takes channels of one slot).
fn by_slot(channels: &[String]) -> Vec<Vec<String>> {
    let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        groups
            .entry(keys::slot(channel))
            .or_default()
            .push(channel.clone());
    }
    groups.into_values().collect()
}

impl Incoming {
    /// The next event; `None` once the connection is gone for good.
    pub(super) async fn next(&mut self) -> Option<Event> {
        match self {
            Self::Classic(stream) => {
                let msg = stream.next().await?;
                Some(Event::Message(Received::Classic(msg)))
            }
            Self::Sharded { pushes, awaited } => {
                let push = pushes.recv().await?;
                Some(sharded_event(push, awaited))
            }
        }
    }
}

fn sharded_event(push: PushInfo, awaited: &SharedAwaited) -> Event {
    let mut data = push.data.into_iter();
    let channel = match data.next() {
        Some(Value::BulkString(bytes)) => bytes,
        _ => {
            return match push.kind {
                PushKind::Disconnection => Event::ShardLost,
                _ => Event::Nothing,
            }
        }
    };
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let payload = match data.next() {
                Some(Value::BulkString(bytes)) => bytes,
                _ => return Event::Nothing,
            };
            match String::from_utf8(channel) {
                Ok(channel) => Event::Message(Received::Sharded { channel, payload }),
                Err(_) => Event::Nothing,
            }
        }
        PushKind::SSubscribe => {
            if take(&mut lock(awaited).subscribes, &channel) {
                return Event::Nothing;
            }
            String::from_utf8(channel).map_or(Event::Nothing, Event::Resubscribed)
        }
        PushKind::SUnsubscribe => {
            if take(&mut lock(awaited).unsubscribes, &channel) {
                return Event::Nothing;
            }
            String::from_utf8(channel).map_or(Event::Nothing, Event::Dropped)
        }
        PushKind::Disconnection => Event::ShardLost,
        _ => Event::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_nobody_awaited_are_reported() {
        let awaited = SharedAwaited::default();
        expect(&mut lock(&awaited).subscribes, &["a".to_owned()]);
        let confirm = |kind, channel: &str| PushInfo {
            kind,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::Int(1),
            ],
        };
        assert!(matches!(
            sharded_event(confirm(PushKind::SSubscribe, "a"), &awaited),
            Event::Nothing
        ));
        assert!(matches!(
            sharded_event(confirm(PushKind::SSubscribe, "a"), &awaited),
            Event::Resubscribed(c) if c == "a"
        ));
        assert!(matches!(
            sharded_event(confirm(PushKind::SUnsubscribe, "b"), &awaited),
            Event::Dropped(c) if c == "b"
        ));
        let message = PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(b"c".to_vec()),
                Value::BulkString(b"hi".to_vec()),
            ],
        };
        assert!(matches!(
            sharded_event(message, &awaited),
            Event::Message(m) if m.channel() == "c" && m.payload() == b"hi"
        ));
    }

    #[test]
    fn channels_are_grouped_by_slot() {
        let channels: Vec<String> = ["p:room:{a}:ch:1", "p:room:{a}:ch:2", "p:room:{b}:ch:1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut sizes: Vec<usize> = by_slot(&channels).iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![1, 2]);
    }
}
