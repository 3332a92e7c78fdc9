//! The node's one pub/sub connection. It carries every local user's channel and
//! hands each message to the registry. It is rebuilt with capped backoff when the
//! connection drops, and every local user is resubscribed (in batches) on reconnect.
//!
//! Subscribe and unsubscribe go through one lock that also holds the sink, and an
//! unsubscribe re-checks the registry under it: a user who reconnects while its
//! old session's unsubscribe is in flight can never end up without its channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::BrokerError;
use crate::ids::UserId;
use crate::registry::Registry;

/// Longest wait for any pub/sub command.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Owner of the pub/sub connection.
pub(super) struct Subscriber {
    client: redis::Client,
    keys: Keys,
    registry: Arc<Registry>,
    /// `None` while disconnected.
    sink: Mutex<Option<PubSubSink>>,
    connected: AtomicBool,
}

impl Subscriber {
    pub(super) fn new(client: redis::Client, keys: Keys, registry: Arc<Registry>) -> Self {
        Self {
            client,
            keys,
            registry,
            sink: Mutex::new(None),
            connected: AtomicBool::new(false),
        }
    }

    /// Whether the connection is up and every local user is subscribed.
    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Subscribes to `user`'s channel; resolves once Redis confirmed it.
    pub(super) async fn subscribe(&self, user: &UserId) -> Result<(), BrokerError> {
        let channel = self.keys.user_channel(user.as_str());
        let mut guard = tokio::time::timeout(OP_TIMEOUT, self.sink.lock())
            .await
            .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))?;
        let sink = guard.as_mut().ok_or(BrokerError::SubscriberDown)?;
        tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channel))
            .await
            .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))??;
        Ok(())
    }

    /// Unsubscribes from `user`'s channel unless a local session took it over meanwhile.
    pub(super) async fn unsubscribe(&self, user: &UserId) {
        let channel = self.keys.user_channel(user.as_str());
        let Ok(mut guard) = tokio::time::timeout(OP_TIMEOUT, self.sink.lock()).await else {
            return;
        };
        if self.registry.contains(user.as_str()) {
            return;
        }
        if let Some(sink) = guard.as_mut() {
            // Failure leaves a stray subscription whose messages find no session and
            // are dropped; the next reconnect does not restore it.
            match tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(user_id = %user, error = %e, "unsubscribe failed"),
                Err(_) => tracing::debug!(user_id = %user, "unsubscribe timed out"),
            }
        }
    }

    /// Keeps the connection up until `cancel`; logs once per state change.
    pub(super) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut reported_down = false;
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connect() => r,
            };
            match connected {
                Ok(stream) => {
                    if reported_down {
                        tracing::info!("redis subscriber reconnected; local users resubscribed");
                    }
                    backoff = MIN_BACKOFF;
                    self.pump(stream, &cancel).await;
                    *self.sink.lock().await = None;
                    self.connected.store(false, Ordering::Release);
                    if cancel.is_cancelled() {
                        return;
                    }
                    tracing::error!("redis subscriber connection lost; reconnecting");
                    reported_down = true;
                }
                Err(e) => {
                    if !reported_down {
                        tracing::error!(error = %e, "redis subscriber cannot connect; retrying with backoff");
                        reported_down = true;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens the connection and resubscribes every local user before it is used.
    async fn connect(&self) -> Result<PubSubStream, BrokerError> {
        let pubsub: PubSub = tokio::time::timeout(OP_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))??;
        let (mut sink, stream) = pubsub.split();
        // Held across the resubscription so no session's subscribe interleaves with it.
        let mut guard = self.sink.lock().await;
        let channels: Vec<String> = self
            .registry
            .snapshot()
            .iter()
            .map(|(user, _, _)| self.keys.user_channel(user.as_str()))
            .collect();
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            tokio::time::timeout(OP_TIMEOUT, sink.subscribe(batch))
                .await
                .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))??;
        }
        *guard = Some(sink);
        self.connected.store(true, Ordering::Release);
        Ok(stream)
    }

    /// Dispatches messages until the connection ends or the node stops.
    async fn pump(&self, mut stream: PubSubStream, cancel: &CancellationToken) {
        let prefix = self.keys.user_channel_prefix();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { return };
            let Some(user) = msg.get_channel_name().strip_prefix(prefix.as_str()) else {
                continue;
            };
            match std::str::from_utf8(msg.get_payload_bytes()) {
                Ok(text) => {
                    self.registry.deliver(user, text);
                }
                Err(_) => tracing::warn!(user_id = user, "dropping non-UTF-8 envelope"),
            }
        }
    }
}
