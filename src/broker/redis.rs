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

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::ConnectionManagerConfig;
use redis::{AsyncConnectionConfig, Script};
use tokio_util::sync::CancellationToken;

use super::keys::{self, Keys};
use super::relay_conn::RelayConn;
use super::subscriber::Subscriber;
use super::{
    sort_members, BrokerError, JoinRequest, JoinResult, Joined, LeaveRequest, Member, RelayOutcome,
};
use crate::config::RedisTarget;
use crate::crypto::{self, PayloadCipher};
use crate::envelope;
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::incarnation::{Incarnation, RunId};
use crate::protocol::{user_joined_frame, LeaveReason, Role, User, UserInfo};
use crate::registry::{Registry, SessionHandle};

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

pub(super) struct Scripts {
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) relay: Script,
    pub(super) broadcast: Script,
    pub(super) broadcast_sealed: Script,
    pub(super) room_users: Script,
    pub(super) restore: Script,
    pub(super) heartbeat: Script,
    pub(super) claim_dead: Script,
    pub(super) deregister: Script,
    pub(super) forget_session: Script,
    pub(super) create_room: Script,
    pub(super) close_room: Script,
    pub(super) list_rooms: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            join: Script::new(include_str!("lua/join.lua")),
            leave: Script::new(include_str!("lua/leave.lua")),
            relay: Script::new(include_str!("lua/relay.lua")),
            broadcast: Script::new(include_str!("lua/broadcast.lua")),
            broadcast_sealed: Script::new(include_str!("lua/broadcast_sealed.lua")),
            room_users: Script::new(include_str!("lua/room_users.lua")),
            restore: Script::new(include_str!("lua/restore.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            claim_dead: Script::new(include_str!("lua/claim_dead.lua")),
            deregister: Script::new(include_str!("lua/deregister.lua")),
            forget_session: Script::new(include_str!("lua/forget_session.lua")),
            create_room: Script::new(include_str!("lua/create_room.lua")),
            close_room: Script::new(include_str!("lua/close_room.lua")),
            list_rooms: Script::new(include_str!("lua/list_rooms.lua")),
        }
    }
}

/// Rooms and users in Redis, shared by every node with the same `KEY_PREFIX`.
pub struct RedisBroker {
    pub(super) keys: Keys,
    pub(super) node_id: NodeId,
    /// This node's current run: sessions are recorded under it, and it is what
    /// the heartbeat registers.
    pub(super) incarnation: Arc<Incarnation>,
    pub(super) ttl_secs: u64,
    pub(super) pool: Pool,
    pub(super) relay: RelayConn,
    pub(super) subscriber: Arc<Subscriber>,
    pub(super) scripts: Scripts,
    /// Last known reachability, so a loss and a recovery are each logged once.
    reachable: AtomicBool,
    /// Throttles the ERROR lines of commands Redis answered with an error.
    command_errors: CommandErrorLog,
    /// Seals relayed frames (`PAYLOAD_ENCRYPTION_KEY`).
    cipher: Option<Arc<PayloadCipher>>,
    /// Whether this node's payload key was compared with the cluster's, and matched:
    /// [`KEY_UNCHECKED`], [`KEY_MATCHES`] or [`KEY_DIFFERS`]. Only a match is ready.
    key_state: AtomicU8,
}

impl RedisBroker {
    /// Sets up the connections. Nothing is dialled yet, so a node starts while Redis
    /// is down and becomes ready when it comes up.
    pub fn new(
        target: &RedisTarget,
        prefix: &str,
        node_id: NodeId,
        incarnation: Arc<Incarnation>,
        ttl: Duration,
        registry: Arc<Registry>,
        payload_key: Option<&[u8; 32]>,
    ) -> Result<Self, BrokerError> {
        let cipher = payload_key.map(|k| Arc::new(PayloadCipher::new(k)));
        let client = redis::Client::open(target.info.clone())?;
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let manager = Manager::new_with_config(target.info.clone(), conn_config)?;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
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
        let relay = RelayConn::new(client.clone(), relay_config)?;
        let keys = Keys::new(prefix);
        let subscriber = Arc::new(Subscriber::new(
            client,
            pool.clone(),
            keys.clone(),
            node_id.clone(),
            registry,
            cipher.clone(),
        ));
        Ok(Self {
            keys,
            node_id,
            incarnation,
            ttl_secs: ttl.as_secs().max(1),
            pool,
            relay,
            subscriber,
            scripts: Scripts::load(),
            reachable: AtomicBool::new(true),
            command_errors: CommandErrorLog::default(),
            cipher,
            key_state: AtomicU8::new(KEY_UNCHECKED),
        })
    }

    /// Keeps the subscriber connection up until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        self.subscriber.clone().run(cancel).await;
    }

    /// Counts subscriber (re)connections; a change means Redis may have lost state.
    pub fn subscriber_epoch(&self) -> u64 {
        self.subscriber.epoch()
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
                    self.command_errors.report(op, source);
                }
            }
        }
        result
    }

    /// Runs `run` on a pooled connection and records whether Redis answered, so
    /// every control-plane command shares one checkout, error mapping and
    /// reachability log. `op` names the command in logs and metrics.
    pub(super) async fn pooled<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let result = async {
            let mut conn = self.conn().await?;
            run(&mut conn).await
        }
        .await;
        self.note(op, result)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.pool
            .get()
            .await
            .map_err(|e| BrokerError::Pool(e.to_string()))
    }

    pub(super) async fn subscribe(&self, user: &UserId) -> Result<(), BrokerError> {
        self.subscriber.subscribe(user).await
    }

    pub(super) async fn unsubscribe(&self, user: &UserId) {
        self.subscriber.unsubscribe(user).await;
    }

    pub(super) async fn join(&self, req: &JoinRequest) -> Result<JoinResult, BrokerError> {
        // Clear even with a payload key: the script publishes this one text to every
        // member's channel, so it cannot be sealed per channel, and it carries no
        // client payload (crypto.rs: membership may travel clear).
        let joined = envelope::joined(
            req.user.as_str(),
            req.session,
            &user_joined_frame(&req.user_object()),
        );
        let started = std::time::Instant::now();
        let result = self
            .pooled("join", async |conn| {
                let reply: Vec<String> = self
                    .scripts
                    .join
                    .key(self.keys.room(req.room.as_str()))
                    .key(self.keys.user(req.user.as_str()))
                    .key(
                        self.keys
                            .run_sessions(self.node_id.as_str(), &req.run.to_string()),
                    )
                    .key(self.keys.rooms())
                    .key(self.keys.room_meta(req.room.as_str()))
                    .arg(req.user.as_str())
                    .arg(req.room.as_str())
                    .arg(req.session.to_string())
                    .arg(self.node_id.as_str())
                    .arg(&req.joined_at)
                    .arg(req.role.as_str())
                    .arg(self.ttl_secs)
                    .arg(self.keys.prefix())
                    .arg(joined)
                    .arg(req.max_users.unwrap_or(0))
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await;
        crate::metrics::redis_op("join", started.elapsed());
        let reply = result?;
        let (replaced, members) = reply
            .split_first()
            .ok_or_else(|| BrokerError::Reply("empty join reply".into()))?;
        if replaced == "!full" {
            return Ok(JoinResult::Full);
        }
        let mut members = members_from_quads(members, &req.room)?;
        sort_members(&mut members);
        Ok(JoinResult::Joined(Joined {
            members,
            replaced: SessionId::parse(replaced),
        }))
    }

    /// Session-guarded removal of `user`'s `session`, announced with `reason`.
    pub(super) async fn evict(
        &self,
        user: &str,
        session: &str,
        reason: LeaveReason,
    ) -> Result<bool, BrokerError> {
        let started = std::time::Instant::now();
        let result = self
            .pooled("leave", async |conn| {
                let removed: i64 = self
                    .scripts
                    .leave
                    .key(self.keys.user(user))
                    .arg(user)
                    .arg(session)
                    .arg(self.keys.prefix())
                    .arg(reason.as_str())
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(removed == 1)
            })
            .await;
        crate::metrics::redis_op("leave", started.elapsed());
        result
    }

    pub(super) async fn leave(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        let session = req.session.to_string();
        let removed = self.evict(req.user.as_str(), &session, req.reason).await?;
        // Second step, on the node's slot: the entry in the current run's sessions
        // hash. After the leave, never before: a crash between the two leaves an
        // entry whose (session-guarded) eviction removes nothing, while the other
        // order could leave a member that no node records. A session of an older
        // run has no entry here; that run's hash was claimed when it was declared dead.
        let run = self.incarnation.current().to_string();
        self.pooled("forget_session", async |conn| {
            let _: i64 = self
                .scripts
                .forget_session
                .key(self.keys.run_sessions(self.node_id.as_str(), &run))
                .arg(req.user.as_str())
                .arg(&session)
                .invoke_async(&mut *conn)
                .await?;
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    /// Runs `invocation` on the relay connection, replacing it when Redis stopped answering.
    async fn relay_call(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<i64, BrokerError> {
        let (generation, mut conn) = self.relay.get();
        let started = std::time::Instant::now();
        let result = invocation.invoke_async::<i64>(&mut conn).await;
        crate::metrics::redis_op(op, started.elapsed());
        if let Err(e) = &result {
            self.relay.failed(generation, e);
        }
        self.note(op, result.map_err(BrokerError::from))
    }

    /// A PING over the relay connection, run with every heartbeat so a dead
    /// connection is found and replaced by upkeep rather than by a client's message.
    pub async fn ping_relay(&self) -> bool {
        let (generation, mut conn) = self.relay.get();
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

    pub(super) async fn relay_to_user(
        &self,
        room: &RoomId,
        target: &str,
        frame: &str,
    ) -> Result<RelayOutcome, BrokerError> {
        let channel = self.keys.user_channel(target);
        let envelope = self.seal(&channel, envelope::frame(frame));
        let mut invocation = self.scripts.relay.prepare_invoke();
        invocation
            .key(self.keys.room(room.as_str()))
            .key(channel)
            .arg(target)
            .arg(envelope);
        let n = self.relay_call("relay", &invocation).await?;
        Ok(match n {
            n if n < 0 => RelayOutcome::NotInRoom,
            0 => RelayOutcome::NotConnected,
            _ => RelayOutcome::Delivered,
        })
    }

    pub(super) async fn relay_to_room(
        &self,
        room: &RoomId,
        sender: &UserId,
        frame: &str,
    ) -> Result<usize, BrokerError> {
        if let Some(cipher) = &self.cipher {
            return self.relay_to_room_sealed(cipher, room, sender, frame).await;
        }
        let envelope = envelope::frame(frame);
        let mut invocation = self.scripts.broadcast.prepare_invoke();
        invocation
            .key(self.keys.room(room.as_str()))
            .arg(sender.as_str())
            .arg(self.keys.prefix())
            .arg(envelope);
        let n = self.relay_call("broadcast", &invocation).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// A broadcast with payload encryption: each member's copy is sealed for its own
    /// channel, so one member's copy cannot be replayed to another. That needs the
    /// member list first: one SMEMBERS, then one script that publishes each copy if
    /// its member is still in the room.
    async fn relay_to_room_sealed(
        &self,
        cipher: &PayloadCipher,
        room: &RoomId,
        sender: &UserId,
        frame: &str,
    ) -> Result<usize, BrokerError> {
        let room_key = self.keys.room(room.as_str());
        let members: Vec<String> = {
            let (generation, mut conn) = self.relay.get();
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
        let mut invocation = self.scripts.broadcast_sealed.prepare_invoke();
        invocation.key(room_key);
        let mut copies = 0;
        for member in members.iter().filter(|m| m.as_str() != sender.as_str()) {
            let channel = self.keys.user_channel(member);
            let sealed = cipher.seal(&channel, &envelope);
            invocation.key(channel).arg(member).arg(sealed);
            copies += 1;
        }
        if copies == 0 {
            return Ok(0);
        }
        let n = self.relay_call("broadcast", &invocation).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(super) async fn room_members(&self, room: &RoomId) -> Result<Vec<Member>, BrokerError> {
        let result = self
            .pooled("room_users", async |conn| {
                let reply: Vec<String> = self
                    .scripts
                    .room_users
                    .key(self.keys.room(room.as_str()))
                    .arg(self.keys.prefix())
                    .arg(room.as_str())
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await;
        let mut members = members_from_quads(&result?, room)?;
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
        let mut pipe = redis::pipe();
        for (user, _) in members {
            pipe.cmd("EXPIRE")
                .arg(self.keys.user(user.as_str()))
                .arg(self.ttl_secs)
                .ignore();
        }
        for room in rooms {
            pipe.cmd("EXPIRE")
                .arg(self.keys.room(room.as_str()))
                .arg(self.ttl_secs)
                .ignore();
            pipe.cmd("EXPIRE")
                .arg(self.keys.room_meta(room.as_str()))
                .arg(self.ttl_secs)
                .ignore();
        }
        self.pooled("refresh", async |conn| {
            pipe.query_async::<()>(&mut *conn).await?;
            Ok(())
        })
        .await
    }

    pub(super) async fn ready(&self) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        // Never ready before the payload key was compared with the cluster's.
        let key_ok = match self.key_state.load(Ordering::Acquire) {
            KEY_UNCHECKED => self.check_payload_key().await.unwrap_or(false),
            state => state == KEY_MATCHES,
        };
        if !key_ok {
            return false;
        }
        let (_, mut conn) = self.relay.get();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
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
            let dead: i64 = self
                .scripts
                .heartbeat
                .key(self.keys.node(me))
                .key(self.keys.run_dead(me, &run))
                .key(self.keys.run_sessions(me, &run))
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
                let left: i64 = self
                    .scripts
                    .deregister
                    .key(self.keys.node(me))
                    .key(self.keys.run_sessions(me, &run))
                    .arg(&run)
                    .invoke_async(&mut *conn)
                    .await?;
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
        // One read per heartbeat key (each its own slot), pipelined.
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.keys.node(id))
                .arg("run")
                .arg("info");
        }
        let beats: Vec<(Option<String>, Option<String>)> = self
            .pooled("nodes", async |conn| {
                let beats: Vec<(Option<String>, Option<String>)> =
                    pipe.query_async(&mut *conn).await?;
                Ok(beats)
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

    /// Redis's `used_memory` (INFO memory), in bytes.
    pub async fn used_memory(&self) -> Result<Option<u64>, BrokerError> {
        let info = self
            .pooled("used_memory", async |conn| {
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut *conn)
                    .await?;
                Ok(info)
            })
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok()))
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
                let reply: Vec<String> = self
                    .scripts
                    .claim_dead
                    .key(self.keys.node(node))
                    .key(self.keys.run_sessions(node, run))
                    .key(self.keys.run_dead(node, run))
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

    async fn evict_pairs(&self, flat: &[String]) -> Result<usize, BrokerError> {
        let mut evicted = 0;
        for pair in flat.chunks_exact(2) {
            if self.evict(&pair[0], &pair[1], LeaveReason::Timeout).await? {
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    /// Writes a live local session back after Redis lost it. Returns false when
    /// another session owns the user now (this one is stale).
    pub async fn restore(
        &self,
        user: &UserId,
        handle: &SessionHandle,
    ) -> Result<bool, BrokerError> {
        self.pooled("restore", async |conn| {
            let restored: i64 = self
                .scripts
                .restore
                .key(self.keys.room(handle.room_id.as_str()))
                .key(self.keys.user(user.as_str()))
                .key(
                    self.keys
                        .run_sessions(self.node_id.as_str(), &handle.run.to_string()),
                )
                .arg(user.as_str())
                .arg(handle.room_id.as_str())
                .arg(handle.session_id.to_string())
                .arg(self.node_id.as_str())
                .arg(&handle.joined_at)
                .arg(handle.role.as_str())
                .arg(self.ttl_secs)
                .invoke_async(&mut *conn)
                .await?;
            Ok(restored == 1)
        })
        .await
    }
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
    fn report(&self, op: &'static str, error: &redis::RedisError) {
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
            code = error.code().unwrap_or("-"),
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

/// Decodes `{member, joined_at, role, session_id, ...}` from the scripts.
fn members_from_quads(flat: &[String], room: &RoomId) -> Result<Vec<Member>, BrokerError> {
    if !flat.len().is_multiple_of(4) {
        return Err(BrokerError::Reply(format!(
            "member list of length {}",
            flat.len()
        )));
    }
    flat.chunks_exact(4)
        .map(|q| {
            let session = SessionId::parse(&q[3])
                .ok_or_else(|| BrokerError::Reply(format!("bad session id for {}", q[0])))?;
            let user = User {
                user_id: q[0].clone(),
                room_id: room.to_string(),
                joined_at: q[1].clone(),
                role: Role::parse(&q[2]),
            };
            Ok((user, session))
        })
        .collect()
}
