//! The cluster engine. Commands go over two kinds of connection:
//! - relays (the hot path) over one multiplexed, auto-reconnecting connection, one
//!   `EVALSHA` per message with no pool checkout; a session awaits each relay before
//!   the next, so its messages leave in order;
//! - joins, leaves, REST queries, TTL refreshes and node upkeep over a deadpool
//!   pool, so a slow query never queues in front of relays.
//!
//! Deliveries come back through the [`Subscriber`]. Multi-key changes are Lua
//! scripts (`lua/`), atomic and one round trip each. Whether Redis answers is
//! tracked here and logged once per change, not once per failed command.

mod conn;
mod delivery_lag;
mod error;
mod gap_fill;
pub mod keys;
pub mod member_record;
mod pool;
mod pubsub_link;
mod relay_burst;
mod relay_conn;
mod renumber;
mod resume;
mod rooms;
mod script_keys;
mod shards;
mod source;
mod subscriber;
mod target;
pub mod upkeep;

pub use target::RedisTarget;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{AsyncConnectionConfig, Script};
use tokio_util::sync::CancellationToken;

use self::keys::Keys;
use self::member_record::MemberRecord;
use self::pool::{CommandPool, Pooled, PrimaryManager};
use self::relay_conn::RelayConn;
use self::source::Source;
use self::subscriber::Subscriber;
use super::{
    sort_members, BrokerError, Deliveries, JoinRequest, JoinResult, Joined, LeaveRequest,
    LocalSession, Member, NodeStatus, ResumeSettings,
};
use crate::crypto::{self, PayloadCipher};
use crate::envelope::{self, KickReason};
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::incarnation::{Incarnation, RunId};
use crate::protocol::{user_joined_frame, user_left_frame, LeaveReason, Role, User, UserInfo};

/// Longest wait for one command, so a hung Redis turns into `unavailable`, not a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_SIZE: usize = 16;
/// Checkout health check (a PING) bound: short, so after a network freeze the pool
/// discards its dead connections quickly instead of 3 s apiece.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(1);
const KEY_UNCHECKED: u8 = 0;
const KEY_MATCHES: u8 = 1;
const KEY_DIFFERS: u8 = 2;

/// How long the dead marker of an evicted node is kept for it to find.
const DEAD_MARKER_SECS: u64 = 3600;

struct Scripts {
    join_room: Script,
    claim_user: Script,
    leave_room: Script,
    leave_user: Script,
    burst: Script,
    broadcast_sealed: Script,
    restore_room: Script,
    heartbeat: Script,
    claim_dead: Script,
    deregister: Script,
    create_room: Script,
    close_room: Script,
    detach_room: Script,
    resume_room: Script,
    move_user: Script,
}

/// A relay script with the shared mailbox functions (lua/mailbox.lua) in front of
/// its body, after its shebang line.
fn with_mailbox(script: &str, publish: Publish) -> Script {
    let body = script.strip_prefix("#!lua\n").unwrap_or(script);
    publish.script(&format!(
        "#!lua\n{}\n{body}",
        include_str!("lua/mailbox.lua")
    ))
}

/// How deliveries are published: `PUBLISH` on one server, `SPUBLISH` (sharded
/// pub/sub, PROTOCOL.md section 13) on a Redis Cluster, so a message goes only to
/// the shard that owns its channel instead of to every shard.
#[derive(Clone, Copy)]
pub(super) enum Publish {
    Classic,
    Sharded,
}

impl Publish {
    fn command(self) -> &'static str {
        match self {
            Self::Classic => "PUBLISH",
            Self::Sharded => "SPUBLISH",
        }
    }

    /// `source` with its `redis.call('PUBLISH', ...)` calls made `SPUBLISH` when
    /// sharded (the scripts are written once, for both).
    fn script(self, source: &str) -> Script {
        match self {
            Self::Classic => Script::new(source),
            Self::Sharded => {
                Script::new(&source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',"))
            }
        }
    }
}

impl Scripts {
    fn load(publish: Publish) -> Self {
        Self {
            detach_room: Script::new(include_str!("lua/detach_room.lua")),
            resume_room: Script::new(include_str!("lua/resume_room.lua")),
            move_user: Script::new(include_str!("lua/move_user.lua")),
            join_room: publish.script(include_str!("lua/join_room.lua")),
            claim_user: Script::new(include_str!("lua/claim_user.lua")),
            leave_room: publish.script(include_str!("lua/leave_room.lua")),
            leave_user: Script::new(include_str!("lua/leave_user.lua")),
            burst: with_mailbox(include_str!("lua/relay_burst.lua"), publish),
            broadcast_sealed: with_mailbox(include_str!("lua/broadcast_sealed.lua"), publish),
            restore_room: Script::new(include_str!("lua/restore_room.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            claim_dead: Script::new(include_str!("lua/claim_dead.lua")),
            deregister: Script::new(include_str!("lua/deregister.lua")),
            create_room: Script::new(include_str!("lua/create_room.lua")),
            close_room: Script::new(include_str!("lua/close_room.lua")),
        }
    }
}

/// Rooms and users in Redis, shared by every node with the same `KEY_PREFIX`.
pub struct RedisBroker {
    keys: Keys,
    node_id: NodeId,
    /// This node's current run: sessions are recorded under it, and it is what
    /// the heartbeat registers.
    incarnation: Arc<Incarnation>,
    /// The node's local sessions: the subscriber delivers to them, the upkeep
    /// writes them back, reconciles and closes them.
    deliveries: Arc<dyn Deliveries>,
    ttl_secs: u64,
    pool: CommandPool,
    relay: RelayConn,
    subscriber: Arc<Subscriber>,
    scripts: Scripts,
    /// Last known reachability, so a loss and a recovery are each logged once.
    reachable: AtomicBool,
    /// Throttles the ERROR lines of commands Redis answered with an error.
    command_errors: CommandErrorLog,
    /// Seals relayed frames (`PAYLOAD_ENCRYPTION_KEY`).
    cipher: Option<Arc<PayloadCipher>>,
    /// Whether this node's payload key was compared with the cluster's, and matched:
    /// [`KEY_UNCHECKED`], [`KEY_MATCHES`] or [`KEY_DIFFERS`]. Only a match is ready.
    key_state: AtomicU8,
    /// Grace, mailbox bound and hold time of resume.
    resume: ResumeSettings,
    /// `single`, `sentinel` or `cluster`.
    redis_mode: &'static str,
    /// `PUBLISH` or `SPUBLISH`.
    publish: Publish,
    /// The source of connections (for the cluster's shard list).
    source: Arc<Source>,
}

impl RedisBroker {
    /// Sets up the connections. Nothing is dialled yet, so a node starts while Redis
    /// is down and becomes ready when it comes up.
    pub fn new(
        target: &RedisTarget,
        settings: &super::EngineSettings<'_>,
        incarnation: Arc<Incarnation>,
        deliveries: Arc<dyn Deliveries>,
    ) -> Result<Self, BrokerError> {
        let (prefix, node_id, ttl) = (
            settings.key_prefix,
            settings.node_id.clone(),
            settings.room_ttl,
        );
        let (payload_key, resume) = (settings.payload_key, settings.resume);
        let cipher = payload_key.map(|k| Arc::new(PayloadCipher::new(k)));
        let source = Arc::new(Source::new(target)?);
        let source_for_shards = source.clone();
        let publish = if source.is_cluster() {
            Publish::Sharded
        } else {
            Publish::Classic
        };
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let pool = CommandPool::builder(PrimaryManager::new(source.clone(), conn_config))
            .max_size(POOL_SIZE)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(COMMAND_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        let relay_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let relay = RelayConn::new(source.clone(), relay_config);
        let keys = Keys::new(prefix);
        let renumber = Arc::new(renumber::Renumberer::new(
            pool.clone(),
            keys.clone(),
            cipher.clone(),
            with_mailbox(include_str!("lua/relay.lua"), publish),
            resume,
        ));
        let subscriber = Arc::new(Subscriber::new(
            source,
            pool.clone(),
            keys.clone(),
            node_id.clone(),
            deliveries.clone(),
            cipher.clone(),
            renumber,
        ));
        Ok(Self {
            keys,
            node_id,
            incarnation,
            deliveries,
            ttl_secs: ttl.as_secs().max(1),
            pool,
            relay,
            subscriber,
            scripts: Scripts::load(publish),
            reachable: AtomicBool::new(true),
            command_errors: CommandErrorLog::default(),
            cipher,
            key_state: AtomicU8::new(KEY_UNCHECKED),
            resume,
            redis_mode: target.mode(),
            publish,
            source: source_for_shards,
        })
    }

    /// `single`, `sentinel` or `cluster`: how this node reaches Redis.
    pub fn redis_mode(&self) -> &'static str {
        self.redis_mode
    }

    /// Keeps the subscriber connection up until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        // Here, not at construction: the metrics recorder is installed by then.
        crate::metrics::redis_mode(self.redis_mode);
        self.subscriber.clone().run(cancel).await;
    }

    /// Runs the node upkeep (registration, dead runs, restore after Redis lost its
    /// state) until `cancel`, deregistering this run at the end.
    pub async fn upkeep(&self, node: &NodeStatus, cancel: CancellationToken) {
        upkeep::run(
            self,
            &*self.deliveries,
            &self.incarnation,
            &self.node_id,
            node,
            cancel,
        )
        .await;
    }

    /// Counts subscriber (re)connections; a change means Redis may have lost state.
    pub fn subscriber_epoch(&self) -> u64 {
        self.subscriber.epoch()
    }

    /// How long ago the subscription last met trouble (a shard failing over, Redis
    /// unreachable); `None` if never.
    pub fn since_subscriber_trouble(&self) -> Option<Duration> {
        self.subscriber.since_trouble()
    }

    /// Whether the subscriber connection is up.
    pub fn subscriber_connected(&self) -> bool {
        self.subscriber.is_connected()
    }

    /// Seals an envelope for `channel` when payload encryption is on.
    pub(super) fn seal(&self, channel: &str, envelope: String) -> String {
        crypto::seal(self.cipher.as_deref(), channel, envelope)
    }

    /// Compares this node's payload key with the cluster's (the first node to ask
    /// records its own). A mismatch is logged at ERROR and keeps the node unready,
    /// because its messages could not be read by the others, nor theirs by it.
    pub async fn check_payload_key(&self) -> Result<bool, BrokerError> {
        let mine = self
            .cipher
            .as_ref()
            .map_or_else(|| "none".to_owned(), |c| c.key_check());
        let key = self.keys.payload_key_check();
        let stored = self
            .pooled("payload_key_check", async |conn| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&mine)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut *conn)
                    .await?;
                let stored: String = redis::cmd("GET").arg(&key).query_async(&mut *conn).await?;
                Ok(stored)
            })
            .await?;
        let ok = match &self.cipher {
            Some(c) => c.matches_key_check(&stored),
            None => stored == "none",
        };
        let state = if ok { KEY_MATCHES } else { KEY_DIFFERS };
        if self.key_state.swap(state, Ordering::AcqRel) != state && !ok {
            tracing::error!(
                "PAYLOAD_ENCRYPTION_KEY differs from the key the cluster uses: this node cannot read its peers' messages; not ready"
            );
        }
        Ok(ok)
    }

    /// Records the outcome of command `op`. Reachability is logged once per change;
    /// a command Redis answered with an error proves Redis reachable, and is logged
    /// (throttled per command) and counted as a command failure instead.
    pub(super) fn note<T>(
        &self,
        op: &'static str,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let result = result.map_err(|e| e.in_op(op));
        match &result {
            Err(e) if e.is_outage() => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    crate::metrics::redis_up(false);
                    tracing::error!(error = %e, "redis unreachable: relays answer `unavailable`, joins are refused with 1013");
                }
            }
            answered => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    crate::metrics::redis_up(true);
                    tracing::info!("redis reachable again");
                }
                if let Err(BrokerError::Command { op, source }) = answered {
                    crate::metrics::redis_command_failed(op);
                    self.command_errors.report(op, &**source);
                }
            }
        }
        result
    }

    /// Runs `run` on a pooled connection and records whether Redis answered, so
    /// every control-plane command shares one checkout, error mapping and
    /// reachability log. `op` names the command in logs and metrics.
    async fn pooled<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut conn::RedisConn) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let result = async {
            let mut conn = self.conn().await?;
            let result = run(&mut *conn).await;
            if result.as_ref().is_err_and(BrokerError::is_outage) {
                // Checkouts soon after are not checked (pool.rs): a connection that
                // failed is dropped, so the next one dials afresh.
                drop(deadpool::managed::Object::take(conn));
            }
            result
        }
        .await;
        self.note(op, result)
    }

    async fn conn(&self) -> Result<Pooled, BrokerError> {
        self.pool
            .get()
            .await
            .map_err(|e| BrokerError::Pool(e.to_string()))
    }

    pub(super) async fn subscribe(&self, room: &RoomId, user: &UserId) -> Result<(), BrokerError> {
        self.subscriber.subscribe(room, user).await
    }

    pub(super) async fn unsubscribe(&self, room: &RoomId, user: &UserId) {
        self.subscriber.unsubscribe(room, user).await;
    }

    pub(super) fn fill(&self, room: &RoomId, user: &UserId) {
        self.subscriber.fill(room.as_str(), user.as_str());
    }

    /// A join, as single-slot steps (a script may touch one slot only). The order
    /// makes a crash between any two steps harmless:
    /// 1. a ticket from the user's claim counter (user slot): of two racing joins of
    ///    one user, the higher ticket wins wherever their steps interleave;
    /// 2. the session is recorded in this node's sessions hash (node slot) before it
    ///    is visible anywhere, so if this node dies from here on, the dead-node sweep
    ///    finds it and removes whatever the following steps wrote;
    /// 3. the room step (room slot): capacity, the member's record, `user_joined` to
    ///    the others, their records back. A refused join stops here and touches
    ///    nothing of the user's live session;
    /// 4. the user step (user slot): the user's hash now names this session; the
    ///    previous owner comes back;
    /// 5. the previous session is removed from its room (guarded by its session id)
    ///    with `user_left` (`replaced`) when it was in another room, and told to close.
    ///
    /// Steps that do not wait for each other share a round trip: 1 and 2, then 4
    /// and the room index, so a join without a previous session is three round
    /// trips (after the read of the room's settings and occupancy, which the
    /// session makes while its subscription is confirmed).
    ///
    /// A step after 3 that fails returns an error; the session then leaves, which
    /// undoes 2 to 4 (each removal is guarded by the session id).
    pub(super) async fn join(&self, req: &JoinRequest) -> Result<JoinResult, BrokerError> {
        let started = std::time::Instant::now();
        let result = self.join_steps(req).await;
        crate::metrics::redis_op("join", started.elapsed());
        result
    }

    async fn join_steps(&self, req: &JoinRequest) -> Result<JoinResult, BrokerError> {
        let (room, user) = (req.room.as_str(), req.user.as_str());
        let session = req.session.to_string();
        // A full room was refused before (session admission reads the occupancy
        // with the room's settings); the room step checks again, atomically, for
        // joins that race for the last seat.
        let ticket = self.take_ticket(&req.run, user, &session, room).await?;

        // Clear even with a payload key: the script publishes this one text to every
        // member's channel, so it cannot be sealed per channel, and it carries no
        // client payload (crypto.rs: membership may travel clear).
        let joined = envelope::joined(user, req.session, &user_joined_frame(&req.user_object()));
        let record = MemberRecord {
            session: req.session,
            ticket,
            node: self.node_id.to_string(),
            role: req.role,
            joined_at: req.joined_at.clone(),
            stream: req.session,
            digest: req.resume_digest.clone(),
            detached_until: 0,
        };
        let reply: Vec<String> = self
            .pooled("join", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.join_room,
                    script_keys::join_room(&self.keys, room, user),
                );
                let reply: Vec<String> = invocation
                    .arg(user)
                    .arg(record.encode())
                    .arg(self.ttl_secs)
                    .arg(self.keys.room_channel_prefix(room))
                    .arg(joined)
                    .arg(req.max_users.unwrap_or(0))
                    .arg(ticket)
                    .arg(&session)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await?;
        let (previous_here, members) = reply
            .split_first()
            .ok_or_else(|| BrokerError::Reply("empty join reply".into()))?;
        match previous_here.as_str() {
            "!full" | "!superseded" => {
                self.forget_session(&session).await;
                return Ok(if previous_here == "!full" {
                    JoinResult::Full
                } else {
                    JoinResult::Superseded
                });
            }
            _ => {}
        }
        let mut members = records_to_members(members, &req.room)?;
        sort_members(&mut members);

        // Steps 3b and 4 do not depend on each other: the room index (its own slot)
        // and the user step go out together, one round trip. Should either fail,
        // the session leaves, which undoes the user step; an index entry left
        // behind is dropped by the next listing that finds the room empty.
        let previous: Vec<String> = self
            .pooled("claim_user", async |conn| {
                let mut index = conn.clone();
                let index = async {
                    redis::cmd("ZADD")
                        .arg(self.keys.rooms())
                        .arg(0)
                        .arg(room)
                        .query_async::<i64>(&mut index)
                        .await
                };
                let mut invocation = with_keys(
                    &self.scripts.claim_user,
                    script_keys::user(&self.keys, user),
                );
                let claim = invocation
                    .arg(ticket)
                    .arg(&session)
                    .arg(room)
                    .arg(&req.joined_at)
                    .arg(req.role.as_str())
                    .arg(self.node_id.as_str())
                    .arg(self.ttl_secs)
                    .invoke_async::<Vec<String>>(&mut *conn);
                let (previous, _) = futures::future::try_join(claim, index).await?;
                Ok(previous)
            })
            .await?;
        let replaced = match previous.as_slice() {
            [superseded] if superseded == "!superseded" => {
                // A later join of this user owns it: undo the room step, then close.
                self.leave_room(&req.room, user, &session, LeaveReason::Replaced)
                    .await?;
                self.forget_session(&session).await;
                return Ok(JoinResult::Superseded);
            }
            [old_room, old_session, _old_node] => {
                self.displace(req, old_room, old_session, previous_here)
                    .await?
            }
            _ => return Err(BrokerError::Reply("claim_user: bad reply".into())),
        };
        Ok(JoinResult::Joined(Joined { members, replaced }))
    }

    /// Step 5 of a join: the user's previous session, if any, leaves its room (only
    /// if it was another room: in the same room the join already replaced its
    /// record and members see just the new `user_joined`) and is told to close.
    async fn displace(
        &self,
        req: &JoinRequest,
        old_room: &str,
        old_session: &str,
        previous_here: &str,
    ) -> Result<Option<SessionId>, BrokerError> {
        let user = req.user.as_str();
        // The owner by the user hash, or (after a lost user hash) the record this
        // join overwrote in its own room.
        let (old_room, old_session) = match SessionId::parse(old_session) {
            Some(s) if s != req.session => (old_room.to_owned(), s),
            _ => match MemberRecord::decode(previous_here) {
                Some(r) if r.session != req.session => (req.room.to_string(), r.session),
                _ => return Ok(None),
            },
        };
        let Ok(old_room) = RoomId::parse(&old_room) else {
            return Ok(None);
        };
        if old_room != req.room {
            self.leave_room(
                &old_room,
                user,
                &old_session.to_string(),
                LeaveReason::Replaced,
            )
            .await?;
        }
        // The old session's record in its node's run hash goes when that session
        // ends (Broker::forget), on whichever node and run it holds it.
        let kick = envelope::kick(old_session, KickReason::Replaced);
        self.publish(&old_room, user, kick).await?;
        Ok(Some(old_session))
    }

    /// Publishes an envelope on `user`'s channel in `room` (sealed when a key is set).
    pub(super) async fn publish(
        &self,
        room: &RoomId,
        user: &str,
        envelope: String,
    ) -> Result<(), BrokerError> {
        let channel = self.keys.user_channel(room.as_str(), user);
        let envelope = self.seal(&channel, envelope);
        self.pooled("publish", async |conn| {
            redis::cmd(self.publish.command())
                .arg(&channel)
                .arg(envelope)
                .query_async::<i64>(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Adds `room` to the room index (`GET /rooms`), its own slot.
    pub(super) async fn index_room(&self, room: &str) -> Result<(), BrokerError> {
        self.pooled("index_room", async |conn| {
            redis::cmd("ZADD")
                .arg(self.keys.rooms())
                .arg(0)
                .arg(room)
                .query_async::<i64>(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Drops `room` from the index if it is empty and was not created (re-checked
    /// here, so a join that raced in after the leave keeps it listed).
    pub(super) async fn unindex_room_if_gone(&self, room: &str) -> Result<(), BrokerError> {
        self.pooled("unindex_room", async |conn| {
            let (members, meta): (u64, u64) = redis::pipe()
                .scard(self.keys.room(room))
                .exists(self.keys.room_meta(room))
                .query_async(&mut *conn)
                .await?;
            if members == 0 && meta == 0 {
                redis::cmd("ZREM")
                    .arg(self.keys.rooms())
                    .arg(room)
                    .query_async::<i64>(&mut *conn)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Records a session of this node in its run's sessions hash (node slot):
    /// field the session id, value `user room`, so that if this run dies the sweep
    /// can evict it, room included. One field per session: a second connection of
    /// the same user on this node never overwrites the first one's record.
    async fn record_session(
        &self,
        run: &RunId,
        user: &str,
        session: &str,
        room: &str,
    ) -> Result<(), BrokerError> {
        let record = self.record_pipe(run, user, session, room);
        self.pooled("record_session", async |conn| {
            record.query_async::<()>(&mut *conn).await?;
            Ok(())
        })
        .await
    }

    /// The commands of [`Self::record_session`].
    fn record_pipe(&self, run: &RunId, user: &str, session: &str, room: &str) -> redis::Pipeline {
        let key = self
            .keys
            .run_sessions(self.node_id.as_str(), &run.to_string());
        let mut pipe = redis::pipe();
        pipe.hset(&key, session, format!("{user} {room}"))
            .ignore()
            .expire(&key, i64::try_from(self.ttl_secs).unwrap_or(i64::MAX))
            .ignore();
        pipe
    }

    /// Steps 1 and 2 of a join, in one round trip: a ticket from the user's claim
    /// counter (user slot), and [`Self::record_session`] (node slot). Neither
    /// needs the other; both are done before the room step makes the session
    /// visible.
    async fn take_ticket(
        &self,
        run: &RunId,
        user: &str,
        session: &str,
        room: &str,
    ) -> Result<u64, BrokerError> {
        let claim = self.keys.user_claim(user);
        let record = self.record_pipe(run, user, session, room);
        self.pooled("join_ticket", async |conn| {
            // Concurrent requests on one multiplexed connection share its writes.
            let mut other = conn.clone();
            let ticket = async {
                let (ticket,): (u64,) = redis::pipe()
                    .atomic()
                    .hincr(&claim, "next", 1)
                    .expire(&claim, i64::try_from(self.ttl_secs).unwrap_or(i64::MAX))
                    .ignore()
                    .query_async(&mut *conn)
                    .await?;
                Ok(ticket)
            };
            let (ticket, ()) =
                futures::future::try_join(ticket, record.query_async::<()>(&mut other)).await?;
            Ok(ticket)
        })
        .await
    }

    /// Drops this node's record of a session from the current run's hash (a
    /// session of an older run has none left: that run's hash was claimed when it
    /// was declared dead). Best effort: a record left behind is evicted harmlessly,
    /// since every removal is session-guarded.
    async fn forget_session(&self, session: &str) {
        let key = self.keys.run_sessions(
            self.node_id.as_str(),
            &self.incarnation.current().to_string(),
        );
        let _ = self
            .pooled("forget_session", async |conn| {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(session)
                    .query_async::<i64>(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
    }

    /// A local session that ends without leaving (it was replaced: its successor
    /// owns the user and its room record) gives up its record in this node's hash.
    pub(super) async fn forget(&self, session: SessionId) {
        self.forget_session(&session.to_string()).await;
    }

    /// The room step of a leave: removes `user`'s `session` from `room` if its
    /// record there is still that session's, announcing `reason`; then unlists an
    /// emptied room. Returns whether it was removed.
    async fn leave_room(
        &self,
        room: &RoomId,
        user: &str,
        session: &str,
        reason: LeaveReason,
    ) -> Result<bool, BrokerError> {
        self.leave_room_if(room, user, session, reason, 0).await
    }

    /// [`Self::leave_room`], and when `due_ms` is not 0 only for a member still
    /// detached whose grace ended by `due_ms` (the end of a grace).
    pub(super) async fn leave_room_if(
        &self,
        room: &RoomId,
        user: &str,
        session: &str,
        reason: LeaveReason,
        due_ms: u64,
    ) -> Result<bool, BrokerError> {
        let Some(session_id) = SessionId::parse(session) else {
            return Ok(false);
        };
        // Clear even with a payload key, like `J` (see join).
        let left = envelope::left(
            user,
            session_id,
            &user_left_frame(user, room.as_str(), reason),
        );
        let (removed, remaining, meta): (i64, i64, i64) = self
            .pooled("leave_room", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.leave_room,
                    script_keys::join_room(&self.keys, room.as_str(), user),
                );
                let reply: (i64, i64, i64) = invocation
                    .arg(user)
                    .arg(session)
                    .arg(self.keys.room_channel_prefix(room.as_str()))
                    .arg(left)
                    .arg(due_ms)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await?;
        if remaining == 0 && meta == 0 {
            self.unindex_room_if_gone(room.as_str()).await?;
        }
        Ok(removed == 1)
    }

    /// The user step of a leave: the user's hash and claim go if still `session`'s.
    pub(super) async fn leave_user(&self, user: &str, session: &str) -> Result<bool, BrokerError> {
        self.pooled("leave_user", async |conn| {
            let mut invocation = with_keys(
                &self.scripts.leave_user,
                script_keys::user(&self.keys, user),
            );
            let removed: i64 = invocation.arg(session).invoke_async(&mut *conn).await?;
            Ok(removed == 1)
        })
        .await
    }

    /// Session-guarded removal of `user`'s `session` from `room` (announced with
    /// `reason`), then of the user's hash. Room first, so the members hear it at
    /// once; a crash in between leaves a user hash that the sweep or the TTL ends.
    pub(super) async fn evict(
        &self,
        room: &RoomId,
        user: &str,
        session: &str,
        reason: LeaveReason,
    ) -> Result<bool, BrokerError> {
        let started = std::time::Instant::now();
        let result = async {
            let removed = self.leave_room(room, user, session, reason).await?;
            let user_removed = self.leave_user(user, session).await?;
            Ok(removed || user_removed)
        }
        .await;
        crate::metrics::redis_op("leave", started.elapsed());
        result
    }

    pub(super) async fn leave(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        let session = req.session.to_string();
        let removed = self
            .evict(&req.room, req.user.as_str(), &session, req.reason)
            .await?;
        self.forget_session(&session).await;
        Ok(removed)
    }

    /// Runs `invocation` on the relay connection, replacing it when Redis stopped answering.
    async fn relay_call(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<i64, BrokerError> {
        let (generation, mut conn) =
            self.note(op, self.relay.get().await.map_err(BrokerError::from))?;
        let started = std::time::Instant::now();
        let result = invocation.invoke_async::<i64>(&mut conn).await;
        crate::metrics::redis_op(op, started.elapsed());
        if let Err(e) = &result {
            self.relay.failed(generation, e);
        }
        self.note(op, result.map_err(BrokerError::from))
    }

    /// How far this node's subscriber is behind what Redis published for it
    /// (delivery_lag.rs).
    pub fn delivery_lag(&self) -> Duration {
        self.subscriber.lag.lag()
    }

    /// A PING over the relay connection, run with every heartbeat so a dead
    /// connection is found and replaced by upkeep rather than by a client's message.
    pub async fn ping_relay(&self) -> bool {
        let Ok((generation, mut conn)) = self.relay.get().await else {
            return false;
        };
        let ping = redis::cmd("PING");
        match tokio::time::timeout(COMMAND_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                self.relay.failed(generation, &e);
                false
            }
            Err(_) => {
                let timeout =
                    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
                self.relay.failed(generation, &timeout);
                false
            }
        }
    }

    /// A broadcast with payload encryption: each member's copy is sealed for its own
    /// channel, so one member's copy cannot be replayed to another. That needs the
    /// member list first: one SMEMBERS, then one script that publishes each copy if
    /// its member is still in the room.
    pub(super) async fn relay_to_room_sealed(
        &self,
        cipher: &PayloadCipher,
        room: &RoomId,
        sender: &UserId,
        frame: &str,
    ) -> Result<usize, BrokerError> {
        let room_key = self.keys.room(room.as_str());
        let members: Vec<String> = {
            let (generation, mut conn) = self.note(
                "broadcast_members",
                self.relay.get().await.map_err(BrokerError::from),
            )?;
            let started = std::time::Instant::now();
            let result = redis::cmd("SMEMBERS")
                .arg(&room_key)
                .query_async::<Vec<String>>(&mut conn)
                .await;
            crate::metrics::redis_op("broadcast_members", started.elapsed());
            if let Err(e) = &result {
                self.relay.failed(generation, e);
            }
            self.note("broadcast_members", result.map_err(BrokerError::from))?
        };
        let envelope = envelope::frame(frame);
        let others: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != sender.as_str())
            .collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut invocation = with_keys(
            &self.scripts.broadcast_sealed,
            script_keys::broadcast_sealed(&self.keys, room.as_str(), others.iter().copied()),
        );
        invocation
            .arg(now_ms())
            .arg(self.resume.buffer)
            .arg(duration_ms(self.resume.hold));
        for member in &others {
            let channel = self.keys.user_channel(room.as_str(), member);
            invocation
                .arg(*member)
                .arg(cipher.seal(&channel, &envelope));
        }
        let n = self.relay_call("broadcast", &invocation).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(super) async fn room_members(&self, room: &RoomId) -> Result<Vec<Member>, BrokerError> {
        // The set says who is a member; the records say as what.
        let (listed, flat): (Vec<String>, Vec<String>) = self
            .pooled("room_users", async |conn| {
                let reply = redis::pipe()
                    .smembers(self.keys.room(room.as_str()))
                    .hgetall(self.keys.room_members(room.as_str()))
                    .query_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await?;
        let mut members = records_to_members(&flat, room)?;
        members.retain(|(user, _)| listed.contains(&user.user_id));
        sort_members(&mut members);
        Ok(members)
    }

    pub(super) async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, BrokerError> {
        let fields = self
            .pooled("user", async |conn| {
                let fields: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(self.keys.user(user.as_str()))
                    .arg(&["room_id", "joined_at", "role", "node_id"])
                    .query_async(&mut *conn)
                    .await?;
                Ok(fields)
            })
            .await?;
        let [Some(room_id), joined_at, role, node_id] = <[Option<String>; 4]>::try_from(fields)
            .map_err(|_| BrokerError::Reply("HMGET returned the wrong arity".into()))?
        else {
            return Ok(None);
        };
        Ok(Some(UserInfo {
            user: User {
                user_id: user.to_string(),
                room_id,
                joined_at: joined_at.unwrap_or_default(),
                role: Role::parse(role.as_deref().unwrap_or("peer")),
            },
            node_id: node_id.unwrap_or_default(),
        }))
    }

    pub(super) async fn refresh(&self, members: &[(UserId, RoomId)]) -> Result<(), BrokerError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut rooms: Vec<&RoomId> = members.iter().map(|(_, r)| r).collect();
        rooms.sort();
        rooms.dedup();
        let mut keys = Vec::new();
        for (user, _) in members {
            keys.push(self.keys.user(user.as_str()));
            keys.push(self.keys.user_claim(user.as_str()));
        }
        for room in rooms {
            keys.push(self.keys.room(room.as_str()));
            keys.push(self.keys.room_members(room.as_str()));
            keys.push(self.keys.room_seq(room.as_str()));
            keys.push(self.keys.room_meta(room.as_str()));
        }
        let cmds = keys
            .into_iter()
            .map(|key| {
                let mut cmd = redis::cmd("EXPIRE");
                cmd.arg(key).arg(self.ttl_secs);
                cmd
            })
            .collect();
        self.pooled("refresh", async |conn| {
            conn::query_per_slot(conn, cmds).await?;
            Ok(())
        })
        .await
    }

    /// Each master of the cluster and whether it answers (cluster mode only);
    /// `Some(empty)` when the topology cannot be read at all.
    pub(super) async fn shard_health(&self) -> Option<Vec<super::ShardHealth>> {
        if !self.source.is_cluster() {
            return None;
        }
        let check = async {
            let mut conn = self.source.cluster().await.ok()?;
            let shards = shards::shards(&mut conn).await.ok()?;
            let pings = shards.iter().map(|shard| {
                let mut conn = conn.clone();
                async move { shards::answers(&mut conn, shard).await }
            });
            let answers = futures::future::join_all(pings).await;
            Some(
                shards
                    .iter()
                    .zip(answers)
                    .map(|(shard, up)| super::ShardHealth {
                        address: shard.address(),
                        slots: shard.slot_count(),
                        up,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let health = tokio::time::timeout(COMMAND_TIMEOUT, check)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let up = health.iter().filter(|s| s.up).count();
        crate::metrics::redis_shards(up, health.len() - up);
        Some(health)
    }

    pub(super) async fn ready(&self) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        if let Some(shards) = self.shard_health().await {
            // Every slot must be served: a master that does not answer means
            // some rooms cannot relay.
            return shards.iter().all(|s| s.up)
                && shards.iter().map(|s| s.slots).sum::<u32>() == 16384
                && self.key_ok().await;
        }
        if !self.key_ok().await {
            return false;
        }
        let Ok((_, mut conn)) = self.relay.get().await else {
            return false;
        };
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    /// Never ready before the payload key was compared with the cluster's.
    async fn key_ok(&self) -> bool {
        match self.key_state.load(Ordering::Acquire) {
            KEY_UNCHECKED => self.check_payload_key().await.unwrap_or(false),
            state => state == KEY_MATCHES,
        }
    }

    /// This node's current run if it is registered on the current subscriber
    /// connection: only then may it be called ready or accept a session.
    pub fn registered_run(&self) -> Option<RunId> {
        if !self.subscriber.is_connected() {
            return None;
        }
        self.incarnation.registered(self.subscriber.epoch())
    }

    /// Registers `run` and refreshes its heartbeat (TTL `ttl`) with `info`. Returns
    /// true when a survivor had declared `run` dead and evicted its sessions
    /// meanwhile (nothing is written then: the run is over).
    pub async fn heartbeat(
        &self,
        run: RunId,
        info: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let me = self.node_id.as_str();
        let run = run.to_string();
        // Two single-slot steps, in this order: the node set first, then the
        // heartbeat. A crash between them leaves a member without a heartbeat,
        // which the next sweep of any node claims and removes; the other order
        // could leave a heartbeat (and sessions) that no sweep ever looks at.
        // Repeated every beat, so a Redis that lost the set learns it again.
        self.pooled("register", async |conn| {
            redis::cmd("SADD")
                .arg(self.keys.nodes())
                .arg(keys::node_member(me, &run))
                .query_async::<()>(&mut *conn)
                .await?;
            Ok(())
        })
        .await?;
        self.pooled("heartbeat", async |conn| {
            let mut invocation = with_keys(
                &self.scripts.heartbeat,
                script_keys::heartbeat(&self.keys, me, &run),
            );
            let dead: i64 = invocation
                .arg(&run)
                .arg(info)
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .arg(self.ttl_secs)
                .invoke_async(&mut *conn)
                .await?;
            Ok(dead == 1)
        })
        .await
    }

    /// Removes this run from the registry at a clean shutdown: its heartbeat, and
    /// its node set entry unless sessions are still recorded (a drain cut short),
    /// which then stay for the next sweep to evict.
    pub async fn deregister(&self) -> Result<(), BrokerError> {
        let me = self.node_id.as_str();
        let run = self.incarnation.current().to_string();
        let left: i64 = self
            .pooled("deregister", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.deregister,
                    script_keys::deregister(&self.keys, me, &run),
                );
                let left: i64 = invocation.arg(&run).invoke_async(&mut *conn).await?;
                Ok(left)
            })
            .await?;
        if left > 0 {
            tracing::info!(
                sessions = left,
                "sessions still recorded at shutdown; the cluster evicts them at its next sweep"
            );
            return Ok(());
        }
        // After the heartbeat step: a crash between the two leaves a member without
        // a heartbeat, which any sweep removes.
        self.pooled("deregister", async |conn| {
            redis::cmd("SREM")
                .arg(self.keys.nodes())
                .arg(keys::node_member(me, &run))
                .query_async::<()>(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Every registered incarnation with what its node's heartbeat says: the run
    /// that beats and its info, `None` when the heartbeat is missing.
    async fn registered_runs(&self) -> Result<Vec<RegisteredRun>, BrokerError> {
        let members: Vec<String> = self
            .pooled("nodes", async |conn| {
                let members: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(self.keys.nodes())
                    .query_async(&mut *conn)
                    .await?;
                Ok(members)
            })
            .await?;
        let runs: Vec<(String, String)> = members
            .iter()
            .filter_map(|m| keys::parse_node_member(m))
            .map(|(n, r)| (n.to_owned(), r.to_owned()))
            .collect();
        let mut ids: Vec<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One read per heartbeat key (each its own slot), pipelined per slot.
        let cmds = ids
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.node(id)).arg("run").arg("info");
                cmd
            })
            .collect();
        let beats: Vec<(Option<String>, Option<String>)> = self
            .pooled("nodes", async |conn| {
                let replies = conn::query_per_slot(conn, cmds).await?;
                Ok(conn::parse(redis::Value::Array(replies))?)
            })
            .await?;
        let by_id: std::collections::HashMap<&str, &(Option<String>, Option<String>)> =
            ids.iter().copied().zip(beats.iter()).collect();
        Ok(runs
            .iter()
            .map(|(node, run)| {
                let beat = by_id.get(node.as_str());
                RegisteredRun {
                    node: node.clone(),
                    run: run.clone(),
                    beating: beat.and_then(|b| b.0.clone()),
                    info: beat.and_then(|b| b.1.clone()),
                }
            })
            .collect())
    }

    /// The heartbeat info (JSON) of every node with a live heartbeat, one per node id.
    pub async fn live_nodes(&self) -> Result<Vec<serde_json::Value>, BrokerError> {
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .registered_runs()
            .await?
            .into_iter()
            .filter(|r| seen.insert(r.node.clone()))
            .filter_map(|r| r.info)
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    /// Redis's `used_memory` (INFO memory), in bytes; on a cluster the sum over
    /// its masters.
    pub async fn used_memory(&self) -> Result<Option<u64>, BrokerError> {
        if self.source.is_cluster() {
            return self.cluster_used_memory().await;
        }
        let info = self
            .pooled("used_memory", async |conn| {
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut *conn)
                    .await?;
                Ok(info)
            })
            .await?;
        Ok(parse_used_memory(&info))
    }

    async fn cluster_used_memory(&self) -> Result<Option<u64>, BrokerError> {
        let read = async {
            let mut conn = self.source.cluster().await?;
            let mut total = 0;
            for shard in shards::shards(&mut conn).await? {
                let info = shards::info_memory(&mut conn, &shard).await?;
                total += parse_used_memory(&info).unwrap_or(0);
            }
            Ok::<_, redis::RedisError>(Some(total))
        };
        let result = tokio::time::timeout(COMMAND_TIMEOUT, read)
            .await
            .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))
            .and_then(|r| r.map_err(BrokerError::from));
        self.note("used_memory", result)
    }

    /// Registered incarnations, other than this node's current run, that are dead:
    /// their node's heartbeat carries another run (a restart or a renewal), or,
    /// unless `missing_counts` is false, has expired.
    pub async fn dead_runs(
        &self,
        missing_counts: bool,
    ) -> Result<Vec<(String, String)>, BrokerError> {
        let me = self.node_id.as_str();
        let mine = self.incarnation.current().to_string();
        Ok(self
            .registered_runs()
            .await?
            .into_iter()
            .filter(|r| !(r.node == me && r.run == mine))
            .filter(|r| match &r.beating {
                Some(beating) => *beating != r.run,
                None => missing_counts,
            })
            .map(|r| (r.node, r.run))
            .collect())
    }

    /// Claims a dead incarnation and evicts its sessions (`user_left`, `timeout`),
    /// then removes it from the node set. Returns how many were evicted, `None`
    /// when it turned out alive (it beat again meanwhile).
    pub async fn clean_dead_run(
        &self,
        node: &str,
        run: &str,
        missing_counts: bool,
    ) -> Result<Option<usize>, BrokerError> {
        let reply = self
            .pooled("claim_dead", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.claim_dead,
                    script_keys::claim_dead(&self.keys, node, run),
                );
                let reply: Vec<String> = invocation
                    .arg(run)
                    .arg(DEAD_MARKER_SECS)
                    .arg(if missing_counts { "1" } else { "0" })
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await?;
        let Some((status, flat)) = reply.split_first() else {
            return Err(BrokerError::Reply("empty claim reply".into()));
        };
        if status != "claimed" {
            return Ok(None);
        }
        // Evict, then drop the hash (node slot), then the set entry (cluster slot),
        // in this order: until the end, a failure or crash leaves the entry and the
        // list for the next sweep, which claims again and evicts what is left.
        let evicted = self.evict_pairs(flat).await?;
        self.pooled("unregister", async |conn| {
            redis::cmd("DEL")
                .arg(self.keys.run_sessions(node, run))
                .query_async::<()>(&mut *conn)
                .await?;
            redis::cmd("SREM")
                .arg(self.keys.nodes())
                .arg(keys::node_member(node, run))
                .query_async::<()>(&mut *conn)
                .await?;
            Ok(())
        })
        .await?;
        Ok(Some(evicted))
    }

    /// Evicts the sessions of a run's sessions hash, given as (field, value) pairs:
    /// (session, `user room`), as `record_session` writes them. A malformed entry
    /// cannot name a member, so it is skipped.
    async fn evict_pairs(&self, flat: &[String]) -> Result<usize, BrokerError> {
        let mut evicted = 0;
        for pair in flat.chunks_exact(2) {
            let (session, record) = (&pair[0], &pair[1]);
            let Some((user, room)) = record.split_once(' ') else {
                continue;
            };
            let Ok(room) = RoomId::parse(room) else {
                continue;
            };
            // With resume on, a dead node's members are detached, not gone: they
            // may resume elsewhere until their grace ends.
            if !self.resume.grace.is_zero() && self.detach_session(&room, user, session).await? {
                evicted += 1;
                continue;
            }
            if self
                .evict(&room, user, session, LeaveReason::Timeout)
                .await?
            {
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    /// Writes a live local session back after Redis lost it: the user step first
    /// (a user now owned by another session makes this one stale: nothing else is
    /// written), then the room step, then this node's record and the room index.
    /// Returns false when another session owns the user now.
    pub async fn restore(&self, handle: &LocalSession) -> Result<bool, BrokerError> {
        let user = &handle.user;
        let (room, session) = (handle.room.as_str(), handle.session.to_string());
        let me = User {
            user_id: user.to_string(),
            room_id: room.to_owned(),
            joined_at: handle.joined_at.clone(),
            role: handle.role,
        };
        // Writing a live session back is a move of the user onto that same session.
        if !self
            .move_user(user.as_str(), &session, &session, &me)
            .await?
        {
            return Ok(false);
        }
        let record = MemberRecord {
            session: handle.session,
            ticket: 0,
            node: self.node_id.to_string(),
            role: handle.role,
            joined_at: handle.joined_at.clone(),
            stream: handle.stream,
            digest: handle.resume_digest.clone(),
            detached_until: 0,
        };
        let restored: i64 = self
            .pooled("restore_room", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.restore_room,
                    script_keys::restore_room(&self.keys, room),
                );
                let restored: i64 = invocation
                    .arg(user.as_str())
                    .arg(record.encode())
                    .arg(&session)
                    .arg(self.ttl_secs)
                    .arg(handle.last_seq)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(restored)
            })
            .await?;
        if restored != 1 {
            return Ok(false);
        }
        self.record_session(&handle.run, user.as_str(), &session, room)
            .await?;
        self.index_room(room).await?;
        Ok(true)
    }
}

/// Wall-clock Unix milliseconds (0 before the epoch): what mailbox entries and
/// grace deadlines are stamped with, comparable across nodes whose clocks agree.
pub(super) fn now_ms() -> u64 {
    crate::envelope::now_us() / 1000
}

/// A duration in whole milliseconds, saturating.
pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// The user step of a resume or a restore (move_user.lua): `user`'s hash and
    /// claim move from session `from` to `to` (naming `me`'s room, role and join
    /// time) unless another session owns the user. Returns whether they moved.
    pub(super) async fn move_user(
        &self,
        user: &str,
        from: &str,
        to: &str,
        me: &User,
    ) -> Result<bool, BrokerError> {
        let moved: i64 = self
            .pooled("move_user", async |conn| {
                let mut invocation =
                    with_keys(&self.scripts.move_user, script_keys::user(&self.keys, user));
                let moved: i64 = invocation
                    .arg(from)
                    .arg(to)
                    .arg(&me.room_id)
                    .arg(&me.joined_at)
                    .arg(me.role.as_str())
                    .arg(self.node_id.as_str())
                    .arg(self.ttl_secs)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(moved)
            })
            .await?;
        Ok(moved == 1)
    }
}

/// A script invocation whose `KEYS` are `keys`, a list from [`script_keys`] (one
/// slot, proven there).
pub(super) fn with_keys(script: &Script, keys: Vec<String>) -> redis::ScriptInvocation<'_> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation
}

/// How often one command's failures are logged after the first: a key of the wrong
/// type fails every relay in its room, which must not flood the log at ERROR.
const COMMAND_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Per-command throttle of "redis command failed" lines: the first failure of a
/// command is logged at once, later ones at most every
/// [`COMMAND_ERROR_LOG_INTERVAL`] with how many were not logged in between.
#[derive(Default)]
struct CommandErrorLog {
    /// Per command: when it was last logged and the failures since.
    last: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl CommandErrorLog {
    fn report(&self, op: &'static str, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let now = std::time::Instant::now();
        let suppressed = {
            // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.get_mut(op) {
                Some((at, skipped)) if now.duration_since(*at) < COMMAND_ERROR_LOG_INTERVAL => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    last.insert(op, (now, 0));
                    0
                }
            }
        };
        tracing::error!(
            op,
            code = error
                .downcast_ref::<redis::RedisError>()
                .and_then(redis::RedisError::code)
                .unwrap_or("-"),
            %error,
            not_logged_since_last = suppressed,
            "redis command failed: Redis answered with an error (it is reachable); the caller got `unavailable`"
        );
    }
}

/// One member of the node set and its node's heartbeat.
struct RegisteredRun {
    node: String,
    run: String,
    /// The run the node's heartbeat names; `None` when it expired.
    beating: Option<String>,
    /// The heartbeat's JSON info.
    info: Option<String>,
}

/// Decodes `{member, record, member, record, ...}` (a room's members hash, or a
/// join's reply) into members; a malformed record is skipped (it is not a member).
fn records_to_members(flat: &[String], room: &RoomId) -> Result<Vec<Member>, BrokerError> {
    if !flat.len().is_multiple_of(2) {
        return Err(BrokerError::Reply(format!(
            "member list of length {}",
            flat.len()
        )));
    }
    Ok(flat
        .chunks_exact(2)
        .filter_map(|pair| {
            let record = MemberRecord::decode(&pair[1])?;
            Some((record.user(&pair[0], room.as_str()), record.session))
        })
        .collect())
}

/// `used_memory` of an `INFO memory` reply.
fn parse_used_memory(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}
