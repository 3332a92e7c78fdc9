//! The node's one pub/sub connection ([`Link`]: classic on one server, sharded on a
//! Redis Cluster). It carries the channel of every (room, user) with a local
//! session and hands each message to the node's [`Deliveries`](crate::broker::Deliveries)
//! handler. It is rebuilt with capped backoff when the connection drops, and every
//! local user is resubscribed (in batches) on reconnect.
//!
//! A connection can look alive yet deliver nothing (a failover, a proxy that
//! stopped forwarding). So the subscriber also holds the node's own probe channels
//! (one; on a cluster one per shard) and probes them: every [`PROBE_INTERVAL`] it
//! publishes a nonce on each and expects all back within [`PROBE_TIMEOUT`]; a lost
//! probe rebuilds the connection. The probe is published by a task of its own, so
//! deliveries never wait behind it. On a cluster, a shard's connection dropping
//! makes it probe every [`FAST_PROBE_INTERVAL`] until a round comes back whole,
//! so a promoted replica is found within about a second of the promotion.
//!
//! On a cluster the connection also reports channels it subscribed again by itself
//! and channels a moved slot took away; the first get their mailbox read, the
//! second are subscribed again on their new shard, then read.
//!
//! Subscribe and unsubscribe requests queue up for one task that sends them in
//! batches (one SUBSCRIBE and one UNSUBSCRIBE per batch, whatever the number of
//! channels), so under churn a join waits for one round trip, not for every
//! subscription queued before it. That task holds the sink's lock for a batch, and
//! an unsubscribe re-checks the local sessions then: a user who reconnects while its
//! old session's unsubscribe is queued can never end up without its channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use futures::FutureExt;
use redis::aio::PubSub;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::gap_fill::GapFiller;
use super::keys::Keys;
use super::pubsub_link::{self, Event, Incoming, Link};
use super::renumber::Renumberer;
use crate::broker::{BrokerError, Deliveries, Delivery};
use crate::crypto::{self, PayloadCipher};
use crate::ids::{NodeId, RoomId, UserId};

/// Longest wait for any pub/sub command.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most channels one batched SUBSCRIBE or UNSUBSCRIBE carries.
const OP_BATCH: usize = 500;
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Short enough that a node is back within seconds of Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the subscription is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take to come back before the connection is rebuilt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a cluster's shards are probed after one shard's connection dropped.
const FAST_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The probe timeout meanwhile: the shard's replica may have taken over.
const FAST_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Owner of the pub/sub connection.
pub(super) struct Subscriber {
    /// Where the connection goes (the master the sentinels name, in that mode).
    source: Arc<super::source::Source>,
    /// For publishing probes: pooled, so a probe never depends on the relay connection.
    commands: super::pool::CommandPool,
    keys: Keys,
    node_id: NodeId,
    /// The probe channels subscribed on the current connection (one per shard).
    probes: std::sync::Mutex<HashSet<String>>,
    /// Where received envelopes go (the node's sessions).
    deliveries: Arc<dyn Deliveries>,
    /// `None` while disconnected.
    sink: Mutex<Option<Link>>,
    /// Asks the dispatch loop to rebuild the connection (a dropped channel could
    /// not be subscribed again).
    rebuild: Notify,
    connected: AtomicBool,
    epoch: AtomicU64,
    /// Opens sealed envelopes.
    cipher: Option<Arc<PayloadCipher>>,
    /// When an unreadable envelope was last logged (milliseconds since start), so a
    /// key mismatch is reported loudly but not once per message.
    last_open_error: AtomicU64,
    started: Instant,
    /// When the subscription last met trouble (milliseconds since `started`, 0:
    /// never): a shard's connection dropped, a probe could not be published, the
    /// connection subscribed channels again or lost them. Heartbeats missing around
    /// then prove nothing (upkeep.rs).
    troubled_at: AtomicU64,
    /// Reads mailboxes when a gap shows, and after every rebuilt connection.
    gaps: Arc<GapFiller>,
    /// Numbers frames again that Redis numbered with a `seq` already delivered.
    renumber: Arc<Renumberer>,
    /// How far behind the published frames this subscriber reads them.
    pub(super) lag: super::delivery_lag::DeliveryLag,
    /// Subscribe and unsubscribe requests, for the batching task.
    ops: mpsc::UnboundedSender<SubscriptionOp>,
    /// Its receiving end, taken by [`Subscriber::run`] for that task.
    ops_queue: std::sync::Mutex<Option<mpsc::UnboundedReceiver<SubscriptionOp>>>,
}

/// One request to the batching task.
enum SubscriptionOp {
    /// Subscribe to a channel; the sender learns when Redis confirmed it.
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    /// Drop (room, user)'s channel unless a local session needs it by then.
    Unsubscribe(RoomId, UserId),
    /// Subscribe again a channel the server dropped (its slot moved), then read
    /// the member's mailbox; `None` for a probe channel.
    Restore(String, Option<(String, String)>),
}

/// Why a connection stopped being used.
enum Lost {
    Stopping,
    Closed,
    Silent,
}

impl Subscriber {
    pub(super) fn new(
        source: Arc<super::source::Source>,
        commands: super::pool::CommandPool,
        keys: Keys,
        node_id: NodeId,
        deliveries: Arc<dyn Deliveries>,
        cipher: Option<Arc<PayloadCipher>>,
        renumber: Arc<Renumberer>,
    ) -> Self {
        let gaps = Arc::new(GapFiller::new(
            commands.clone(),
            keys.clone(),
            deliveries.clone(),
            cipher.clone(),
            renumber.clone(),
        ));
        let (ops, ops_queue) = mpsc::unbounded_channel();
        Self {
            gaps,
            ops,
            ops_queue: std::sync::Mutex::new(Some(ops_queue)),
            lag: super::delivery_lag::DeliveryLag::new(),
            source,
            commands,
            node_id,
            probes: std::sync::Mutex::new(HashSet::new()),
            keys,
            deliveries,
            sink: Mutex::new(None),
            rebuild: Notify::new(),
            renumber,
            connected: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            cipher,
            last_open_error: AtomicU64::new(0),
            started: Instant::now(),
            troubled_at: AtomicU64::new(0),
        }
    }

    /// Whether the connection is up and every local user is subscribed.
    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long ago the subscription last met trouble; `None` if it never did.
    pub(super) fn since_trouble(&self) -> Option<Duration> {
        match self.troubled_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at)),
            ),
        }
    }

    fn troubled(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.troubled_at.store(now.max(1), Ordering::Release);
    }

    /// How many times the connection has been (re)established.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Subscribes to `user`'s channel in `room`; resolves once Redis confirmed it.
    pub(super) async fn subscribe(&self, room: &RoomId, user: &UserId) -> Result<(), BrokerError> {
        let channel = self.keys.user_channel(room.as_str(), user.as_str());
        let (done, confirmed) = oneshot::channel();
        self.ops
            .send(SubscriptionOp::Subscribe(channel, done))
            .map_err(|_| BrokerError::SubscriberDown)?;
        match tokio::time::timeout(OP_TIMEOUT, confirmed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::SubscriberDown),
            Err(_) => Err(BrokerError::Timeout(OP_TIMEOUT)),
        }
    }

    /// Drops `user`'s channel in `room` (soon, in a batch) unless a local session
    /// of that user in that room needs it by then.
    pub(super) async fn unsubscribe(&self, room: &RoomId, user: &UserId) {
        // Only fails once the node stops: nothing to unsubscribe from then.
        let _ = self
            .ops
            .send(SubscriptionOp::Unsubscribe(room.clone(), user.clone()));
    }

    /// Sends queued subscription requests in batches until the queue closes.
    async fn run_subscriptions(&self, mut queue: mpsc::UnboundedReceiver<SubscriptionOp>) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < OP_BATCH {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(batch).await;
        }
    }

    /// One batch: a SUBSCRIBE for every channel asked for (each waiter learns the
    /// outcome), then an UNSUBSCRIBE for those no local session needs any more.
    async fn apply(&self, batch: Vec<SubscriptionOp>) {
        let mut subscribe = Vec::new();
        let mut waiters = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut restored = Vec::new();
        for op in batch {
            match op {
                SubscriptionOp::Subscribe(channel, done) => {
                    subscribe.push(channel);
                    waiters.push(done);
                }
                SubscriptionOp::Unsubscribe(room, user) => unsubscribe.push((room, user)),
                SubscriptionOp::Restore(channel, member) => {
                    subscribe.push(channel);
                    restored.extend(member);
                }
            }
        }
        let Ok(mut guard) = tokio::time::timeout(OP_TIMEOUT, self.sink.lock()).await else {
            for done in waiters {
                let _ = done.send(Err(BrokerError::Timeout(OP_TIMEOUT)));
            }
            return;
        };
        let Some(sink) = guard.as_mut() else {
            // Down: waiters are refused; unsubscribes are moot (the next connection
            // subscribes only the channels local sessions need).
            for done in waiters {
                let _ = done.send(Err(BrokerError::SubscriberDown));
            }
            return;
        };
        if !subscribe.is_empty() {
            let result = match tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&subscribe)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    for done in waiters {
                        let _ = done.send(Err(BrokerError::Timeout(OP_TIMEOUT)));
                    }
                    if !restored.is_empty() {
                        self.rebuild.notify_one();
                    }
                    return;
                }
            };
            let failed = result.as_ref().err().map(ToString::to_string);
            match &failed {
                None => {
                    for (room, user) in &restored {
                        self.gaps.request(room, user);
                    }
                }
                Some(e) if !restored.is_empty() => {
                    tracing::warn!(error = %e, "could not subscribe again the channels of a moved slot; rebuilding the subscription");
                    self.rebuild.notify_one();
                }
                Some(_) => {}
            }
            for done in waiters {
                let _ = done.send(match &failed {
                    None => Ok(()),
                    Some(e) => Err(BrokerError::Reply(format!("subscribe failed: {e}"))),
                });
            }
        }
        // Re-checked under the lock: a session that joined since keeps its channel.
        let gone: Vec<String> = unsubscribe
            .iter()
            .filter(|(room, user)| !self.deliveries.contains_in(room.as_str(), user.as_str()))
            .map(|(room, user)| self.keys.user_channel(room.as_str(), user.as_str()))
            .filter(|channel| !subscribe.contains(channel))
            .collect();
        if !gone.is_empty() {
            // A failure leaves stray subscriptions whose messages find no session
            // and are dropped; the next reconnect does not restore them.
            match tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(&gone)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(channels = gone.len(), error = %e, "unsubscribe failed")
                }
                Err(_) => tracing::debug!(channels = gone.len(), "unsubscribe timed out"),
            }
        }
    }

    /// Reads `user`'s mailbox in `room` into its local sessions (a gap showed).
    pub(super) fn fill(&self, room: &str, user: &str) {
        self.gaps.request(room, user);
    }

    /// Keeps the connection up until `cancel`; logs once per state change.
    pub(super) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let queue = self
            .ops_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(queue) = queue {
            let subscriptions = self.clone();
            let stop = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = subscriptions.run_subscriptions(queue) => {}
                }
            });
        }
        let mut backoff = MIN_BACKOFF;
        let mut reported_down = false;
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connect() => r,
            };
            match connected {
                Ok(stream) => {
                    if self.epoch() > 1 {
                        // Whatever was published while no connection listened is
                        // in the mailboxes.
                        self.gaps.request_all();
                    }
                    if reported_down {
                        crate::metrics::reconnected("subscriber");
                        tracing::info!(
                            users = self.deliveries.sessions(),
                            "redis subscriber reconnected; local users resubscribed"
                        );
                    }
                    backoff = MIN_BACKOFF;
                    let lost = self.pump(stream, &cancel).await;
                    *self.sink.lock().await = None;
                    self.connected.store(false, Ordering::Release);
                    match lost {
                        Lost::Stopping => return,
                        Lost::Closed => tracing::error!("redis subscriber connection lost; reconnecting"),
                        Lost::Silent => tracing::error!(
                            "redis subscriber delivers nothing (probe lost); rebuilding the connection"
                        ),
                    }
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

    /// Opens the connection and resubscribes every local user (and the probe
    /// channels) before it is used.
    async fn connect(&self) -> Result<Incoming, BrokerError> {
        let (mut link, incoming, probes) = tokio::time::timeout(OP_TIMEOUT, self.dial())
            .await
            .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))??;
        // Held across the resubscription so no session's subscribe interleaves with it.
        let mut guard = self.sink.lock().await;
        let mut channels: Vec<String> = probes.clone();
        channels.extend(
            self.deliveries
                .channels()
                .iter()
                .map(|(room, user)| self.keys.user_channel(room.as_str(), user.as_str())),
        );
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            tokio::time::timeout(OP_TIMEOUT, link.subscribe(batch))
                .await
                .map_err(|_| BrokerError::Timeout(OP_TIMEOUT))??;
        }
        *self.probes_guard() = probes.into_iter().collect();
        *guard = Some(link);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.connected.store(true, Ordering::Release);
        Ok(incoming)
    }

    /// A new connection and the probe channels to hold on it.
    async fn dial(&self) -> Result<(Link, Incoming, Vec<String>), BrokerError> {
        if self.source.is_cluster() {
            let (pushes, received) = mpsc::unbounded_channel();
            let conn = self.source.cluster_pubsub(pushes).await?;
            let probes = self.shard_probes().await?;
            let (link, incoming) = pubsub_link::sharded(conn, received);
            return Ok((link, incoming, probes));
        }
        let pubsub: PubSub = self.source.client().await?.get_async_pubsub().await?;
        let (sink, stream) = pubsub.split();
        let probes = vec![self.keys.node_channel(self.node_id.as_str())];
        Ok((Link::Classic(sink), Incoming::Classic(stream), probes))
    }

    /// One probe channel per shard of the cluster as it is now.
    async fn shard_probes(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.source.cluster().await?;
        let shards = super::shards::shards(&mut conn).await?;
        if shards.is_empty() {
            return Err(BrokerError::Reply("CLUSTER SLOTS named no shard".into()));
        }
        Ok(super::shards::probe_channels(
            &self.keys,
            self.node_id.as_str(),
            &shards,
        ))
    }

    fn probes_guard(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A set of names: a panic elsewhere cannot leave it half-written.
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dispatches messages until the connection ends, a probe is lost, or the node stops.
    async fn pump(&self, mut incoming: Incoming, cancel: &CancellationToken) -> Lost {
        let mut probe_tick = tokio::time::interval(FAST_PROBE_INTERVAL);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The probe in flight, and the publish of it while that runs.
        let mut outstanding: Option<Probe> = None;
        let mut publishing: Option<oneshot::Receiver<Option<Vec<String>>>> = None;
        let mut last_probe = Instant::now();
        // Set while a shard's connection is being repaired: probe fast until a
        // round comes back whole.
        let mut fast = false;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return Lost::Stopping,
                _ = self.rebuild.notified() => return Lost::Closed,
                _ = probe_tick.tick() => {
                    let timeout = if fast { FAST_PROBE_TIMEOUT } else { PROBE_TIMEOUT };
                    match &outstanding {
                        Some(Probe { published_at: Some(at), .. }) if at.elapsed() > timeout => {
                            return Lost::Silent
                        }
                        Some(_) => {}
                        None if fast || last_probe.elapsed() >= PROBE_INTERVAL => {
                            last_probe = Instant::now();
                            let (nonce, done) = self.spawn_probe();
                            outstanding = Some(Probe { nonce, waiting: HashSet::new(), echoed: HashSet::new(), published_at: None });
                            publishing = Some(done);
                        }
                        None => {}
                    }
                    continue;
                }
                published = wait_published(&mut publishing) => {
                    publishing = None;
                    match (published, outstanding.as_mut()) {
                        (Some(channels), Some(probe)) => {
                            probe.published_at = Some(Instant::now());
                            // Only channels subscribed here can echo; a shard that
                            // appeared since gets its probe channel subscribed now.
                            let held = self.probes_guard().clone();
                            for channel in &channels {
                                if !held.contains(channel) {
                                    self.restore(channel.clone(), None);
                                }
                            }
                            probe.waiting = channels.into_iter().filter(|c| held.contains(c)).collect();
                            probe.waiting.retain(|c| !probe.echoed.contains(c));
                            if probe.waiting.is_empty() {
                                outstanding = None;
                                fast = false;
                            }
                        }
                        // Came back before its publish was confirmed: nothing to wait for.
                        (Some(_), None) => {}
                        // The command path failed (reported there): not a lost probe.
                        (None, _) => {
                            outstanding = None;
                            self.troubled();
                        }
                    }
                    continue;
                }
                event = incoming.next() => event,
            };
            let Some(event) = event else {
                return Lost::Closed;
            };
            self.on_event(event, &mut outstanding, &mut fast);
            // What else has already arrived is handled before the other arms
            // are polled again: under load that is many frames per wake-up, each
            // of which would otherwise rebuild and poll every arm above.
            for _ in 0..DRAIN_BOUND {
                match incoming.next().now_or_never() {
                    Some(Some(event)) => self.on_event(event, &mut outstanding, &mut fast),
                    Some(None) => return Lost::Closed,
                    None => break,
                }
            }
        }
    }

    /// Handles one event of the subscriber connection: a message is a probe's
    /// echo or a delivery; the others are the connection's troubles.
    fn on_event(&self, event: Event, outstanding: &mut Option<Probe>, fast: &mut bool) {
        match event {
            Event::Message(received) => {
                let (channel, payload) = (received.channel(), received.payload());
                if let Some(probe) = outstanding.as_mut() {
                    if probe.nonce.as_bytes() == payload {
                        probe.echoed.insert(channel.to_owned());
                        probe.waiting.remove(channel);
                        if probe.published_at.is_some() && probe.waiting.is_empty() {
                            *outstanding = None;
                            *fast = false;
                        }
                        return;
                    }
                }
                self.dispatch(channel, payload);
            }
            Event::Resubscribed(channel) => {
                self.troubled();
                if let Some((room, user)) = self.keys.channel_target(&channel) {
                    self.gaps.request(room, user);
                }
            }
            Event::Dropped(channel) => {
                self.troubled();
                let member = self
                    .keys
                    .channel_target(&channel)
                    .map(|(room, user)| (room.to_owned(), user.to_owned()));
                let needed = match &member {
                    Some((room, user)) => self.deliveries.contains_in(room, user),
                    None => self.probes_guard().contains(&channel),
                };
                if needed {
                    self.restore(channel, member);
                }
            }
            Event::ShardLost => {
                self.troubled();
                if !*fast {
                    tracing::warn!("a shard's subscriber connection dropped; probing every shard until all answer");
                }
                *fast = true;
            }
            Event::Nothing => {}
        }
    }

    /// Queues a dropped channel to be subscribed again (and its mailbox read).
    fn restore(&self, channel: String, member: Option<(String, String)>) {
        if member.is_none() {
            self.probes_guard().insert(channel.clone());
        }
        // Only fails once the node stops.
        let _ = self.ops.send(SubscriptionOp::Restore(channel, member));
    }

    /// Hands a message on a member's channel to its sessions.
    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some((room, user)) = self.keys.channel_target(channel) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            tracing::warn!(user_id = user, "dropping non-UTF-8 envelope");
            return;
        };
        match crypto::open(self.cipher.as_deref(), channel, text) {
            Ok(text) => {
                let Some(env) = crate::envelope::parse(&text) else {
                    tracing::warn!(user_id = user, "dropping malformed envelope");
                    return;
                };
                if let Some(published) = env.published_us() {
                    self.lag.observe(published);
                }
                match self.deliveries.deliver_parsed(room, user, &text, env) {
                    Delivery::Gap => self.gaps.request(room, user),
                    Delivery::Renumber { floor } => self.renumber.request(room, user, floor, &text),
                    Delivery::Taken | Delivery::Dropped => {}
                }
            }
            Err(e) => self.report_unreadable(user, e),
        }
    }

    /// Drops an envelope that may not be delivered: counted every time, logged at
    /// WARN at most every 10 s, never with its content (it may be a payload, or an
    /// attacker's text).
    fn report_unreadable(&self, user: &str, error: crypto::OpenError) {
        crate::metrics::envelope_dropped(error.label());
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_open_error.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= 10_000 {
            self.last_open_error.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                user_id = user,
                %error,
                reason = error.label(),
                "dropping an envelope from Redis: not sealed for this channel with this node's PAYLOAD_ENCRYPTION_KEY (injected, replayed from another channel, or another key)"
            );
        }
    }

    /// Publishes a probe on every probe channel from a task of its own, so the
    /// dispatch loop never waits for the command pool. The receiver gets the
    /// channels it was published on, or `None` when the publish failed (the command
    /// path's outage, not a lost probe). On a cluster the channels are those of the
    /// shards as they are now.
    fn spawn_probe(&self) -> (String, oneshot::Receiver<Option<Vec<String>>>) {
        let nonce = uuid::Uuid::new_v4().to_string();
        let (done, published) = oneshot::channel();
        let cluster = self.source.is_cluster();
        let held: Vec<String> = self.probes_guard().iter().cloned().collect();
        let (pool, source, keys, node, text) = (
            self.commands.clone(),
            self.source.clone(),
            self.keys.clone(),
            self.node_id.clone(),
            nonce.clone(),
        );
        tokio::spawn(async move {
            let publish = async {
                let channels = if cluster {
                    let mut conn = source.cluster().await.ok()?;
                    let shards = super::shards::shards(&mut conn).await.ok()?;
                    super::shards::probe_channels(&keys, node.as_str(), &shards)
                } else {
                    held
                };
                let command = if cluster { "SPUBLISH" } else { "PUBLISH" };
                let mut conn = pool.get().await.ok()?;
                for channel in &channels {
                    let mut cmd = redis::cmd(command);
                    cmd.arg(channel).arg(&text);
                    cmd.query_async::<i64>(&mut *conn).await.ok()?;
                }
                Some(channels)
            };
            let outcome = tokio::time::timeout(OP_TIMEOUT, publish)
                .await
                .ok()
                .flatten();
            let _ = done.send(outcome);
        });
        (nonce, published)
    }
}

/// A probe on its way: its nonce, the channels it has yet to come back on, those
/// it came back on before its publish was confirmed, and when that was.
/// Most events the pump handles in a row from what already arrived.
const DRAIN_BOUND: usize = 256;

struct Probe {
    nonce: String,
    waiting: HashSet<String>,
    echoed: HashSet<String>,
    published_at: Option<Instant>,
}

/// The outcome of the probe publish in flight; never resolves while none is.
async fn wait_published(
    publishing: &mut Option<oneshot::Receiver<Option<Vec<String>>>>,
) -> Option<Vec<String>> {
    match publishing {
        Some(done) => done.await.unwrap_or(None),
        None => std::future::pending().await,
    }
}
