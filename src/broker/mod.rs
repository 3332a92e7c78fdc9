//! The seam between sessions and the cluster: everything a session or an HTTP
//! handler needs (join, leave, relay, membership queries), in domain terms.
//!
//! Two engines sit behind one enum (STYLE.md section 2): [`redis::RedisBroker`] for a
//! cluster, [`memory::MemoryBroker`] for a standalone node. Both hand deliveries to
//! the [`Deliveries`] handler the node registers (its session registry, which the
//! broker never names) and behave the same; the integration tests run one suite
//! against each.

mod deliveries;
pub mod memory;
pub mod redis;

pub use deliveries::{Deliveries, Delivery, LocalSession};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::incarnation::Incarnation;
use crate::protocol::{LeaveReason, Role, User, UserInfo};

/// The store's own error behind a [`BrokerError`], kept opaque so that only the
/// engine that produced it knows its type (the Redis engine's are redis-rs errors).
pub type StoreFault = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of the shared state store. Sessions answer it with `unavailable`,
/// HTTP with 503. Outages ([`BrokerError::is_outage`]) and commands Redis answered
/// with an error are told apart, so only a real outage turns `signal_redis_up` to 0
/// (a WRONGTYPE must not page anyone with a false RedisDown).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis could not be reached or cannot serve now: I/O, a refused or dropped
    /// connection, a timeout, a parse failure on the wire, failed authentication,
    /// or a server that is loading, failing over or read-only.
    #[error("redis unreachable: {0}")]
    Unreachable(StoreFault),
    /// Redis answered this command (or script) with an error: WRONGTYPE, an
    /// out-of-range argument, a script error. Redis itself is up.
    #[error("redis command {op} failed: {source}")]
    Command {
        /// The command or script, as named by the broker (`join`, `relay`, ...).
        op: &'static str,
        #[source]
        source: StoreFault,
    },
    /// No pooled connection could be had.
    #[error("redis pool: {0}")]
    Pool(String),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The node's subscriber connection is down, so it cannot receive for new users.
    #[error("the subscriber connection to redis is down")]
    SubscriberDown,
    /// Redis returned something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl BrokerError {
    /// Whether this says Redis is unreachable or cannot serve (as opposed to one
    /// command failing on a server that answered, or a malformed reply).
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Pool(_) | Self::Timeout(_) | Self::SubscriberDown => true,
            Self::Command { .. } | Self::Reply(_) => false,
        }
    }

    /// Names the command a [`BrokerError::Command`] came from.
    pub fn in_op(self, op: &'static str) -> Self {
        match self {
            Self::Command { source, .. } => Self::Command { op, source },
            other => other,
        }
    }
}

/// A session asking to become a member of a room.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomId,
    pub user: UserId,
    pub session: SessionId,
    pub role: Role,
    pub joined_at: String,
    /// The room's capacity, checked atomically with the join.
    pub max_users: Option<u32>,
    /// The incarnation of this node the session is recorded under.
    pub run: crate::incarnation::RunId,
    /// Digest of the resume token issued to this session (section 11).
    pub resume_digest: String,
}

/// A connection asking to take a member's session back (PROTOCOL.md section 11).
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    pub room: RoomId,
    pub user: UserId,
    /// The new connection's session id.
    pub session: SessionId,
    /// What the client presented: its token's digest and the last `seq` it got.
    pub ask: crate::resume_token::ResumeAsk,
    /// Digest of the token issued to the new session.
    pub new_digest: String,
    /// The incarnation of this node the session is recorded under.
    pub run: crate::incarnation::RunId,
}

/// How a resume ended when the store answered.
#[derive(Debug)]
pub enum ResumeResult {
    /// The session is this connection's now.
    Resumed(Resumed),
    /// Not resumable (unknown, used or expired token, grace over, messages lost,
    /// another room, kicked or replaced meanwhile): nothing was written; the
    /// connection goes on as an ordinary join.
    Refused,
    /// A newer connection of the same user won while this resume ran; this session
    /// is closed as replaced and nothing of it stays.
    Superseded,
}

/// What a successful resume returns.
#[derive(Debug)]
pub struct Resumed {
    /// The member as the room knows it (role and `joined_at` of its first join).
    pub me: User,
    /// The other members, ordered by join time.
    pub members: Vec<Member>,
    /// The member's numbering stream, kept across resumes.
    pub stream: SessionId,
    /// The held frames after the client's `last_seq`, in order: `S` envelopes,
    /// opened (never sealed).
    pub replay: Vec<String>,
    /// The session this resume took over; told to close without a word.
    pub previous: SessionId,
}

/// Settings of a room created with `POST /rooms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomMeta {
    /// RFC 3339 UTC, milliseconds.
    pub created_at: String,
    /// argon2 PHC string; the password itself is never stored.
    pub password_hash: Option<String>,
    pub max_users: Option<u32>,
    pub moderated: bool,
    /// Members who are hosts in a moderated room (when tokens do not say).
    pub hosts: Vec<String>,
}

/// What a join reads of its room before it writes anything.
#[derive(Debug, Clone, Default)]
pub struct JoinView {
    /// The room's settings, if it was created.
    pub meta: Option<RoomMeta>,
    /// Whether the room is at `max_users` without the user (a first refusal, before
    /// anything is written; the join checks again atomically).
    pub full: bool,
}

/// What `GET /rooms/{id}` shows.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub count: usize,
    /// `None` for a room that only exists through its members.
    pub meta: Option<RoomMeta>,
}

/// One page of `GET /rooms`.
#[derive(Debug, Clone, Default)]
pub struct RoomPage {
    pub rooms: Vec<(String, usize)>,
    pub next_cursor: Option<String>,
}

/// How a join ended when the store answered.
#[derive(Debug)]
pub enum JoinResult {
    Joined(Joined),
    /// The room is at `max_users`; nothing was written.
    Full,
    /// A later connection of the same user won the race for it; this session is
    /// closed as replaced and nothing of it stays.
    Superseded,
}

impl JoinRequest {
    /// The `USER` object this join announces.
    pub fn user_object(&self) -> User {
        User {
            user_id: self.user.to_string(),
            room_id: self.room.to_string(),
            joined_at: self.joined_at.clone(),
            role: self.role,
        }
    }
}

/// A room member and the session it is connected with.
pub type Member = (User, SessionId);

/// What a successful join returns.
#[derive(Debug)]
pub struct Joined {
    /// The members already in the room, newcomer excluded, ordered by join time.
    pub members: Vec<Member>,
    /// The session this join displaced, if the user was connected elsewhere.
    pub replaced: Option<SessionId>,
}

/// A session leaving its room.
#[derive(Debug, Clone)]
pub struct LeaveRequest {
    pub room: RoomId,
    pub user: UserId,
    pub session: SessionId,
    pub reason: LeaveReason,
}

/// What happened to a directed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Handed to the node holding the target.
    Delivered,
    /// The target is not a member of the sender's room.
    NotInRoom,
    /// The target is listed but no node holds its session.
    NotConnected,
}

/// One relay of a sender's burst: consecutive frames of one session are handed
/// to the store together, in order, so a burst costs one round trip instead of
/// one per frame (where the engine can keep the order; see `relay_burst`).
#[derive(Debug)]
pub enum Outbound<'a> {
    /// A finished frame for one member.
    ToUser {
        /// The member it is for.
        target: &'a str,
        /// The final JSON text.
        frame: String,
    },
    /// A finished frame for every other member.
    ToRoom {
        /// The final JSON text.
        frame: String,
    },
}

/// What became of one [`Outbound`], in the burst's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// A directed relay's outcome.
    ToUser(RelayOutcome),
    /// How many nodes a broadcast reached.
    ToRoom(usize),
}

/// What the node tells the cluster about itself in its heartbeat, beyond what the
/// broker knows: where it listens and how many WebSockets it holds.
pub struct NodeStatus {
    /// The address the node listens on.
    pub addr: SocketAddr,
    /// WebSocket sessions open on the node (read at each beat).
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The settings an engine is built from (read from the environment by
/// [`crate::config`]).
pub struct EngineSettings<'a> {
    /// The Redis to share with other nodes; `None` runs standalone in memory.
    pub redis: Option<&'a redis::RedisTarget>,
    /// `KEY_PREFIX`: what keeps clusters sharing one Redis apart.
    pub key_prefix: &'a str,
    /// This node's id.
    pub node_id: NodeId,
    /// How long rooms and users outlive their last refresh.
    pub room_ttl: Duration,
    /// `PAYLOAD_ENCRYPTION_KEY`, sealing relayed frames in Redis.
    pub payload_key: Option<&'a [u8; 32]>,
    /// How the engine keeps members resumable.
    pub resume: ResumeSettings,
}

/// Resume in an engine (PROTOCOL.md section 11).
#[derive(Debug, Clone, Copy)]
pub struct ResumeSettings {
    /// `RESUME_GRACE_SECONDS`: how long a detached member stays; zero: never detached.
    pub grace: Duration,
    /// `RESUME_BUFFER_MESSAGES`: most frames held per member.
    pub buffer: usize,
    /// How long a held frame is kept: the grace plus the time a dead connection can
    /// go unnoticed (two ping intervals) and some slack. Past it nobody can need it.
    pub hold: Duration,
}

impl ResumeSettings {
    /// The settings for a grace, a buffer and the server's ping interval.
    pub fn new(grace: Duration, buffer: usize, ping_interval: Duration) -> Self {
        Self {
            grace,
            buffer: buffer.max(1),
            hold: grace + 2 * ping_interval + Duration::from_secs(5),
        }
    }
}

/// One Redis Cluster master as `/readyz` and `/stats` show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShardHealth {
    /// `host:port` of the master.
    pub address: String,
    /// How many of the 16384 slots it serves.
    pub slots: u32,
    /// Whether it answered a PING just now.
    pub up: bool,
}

/// The state store as `/stats` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStatus {
    /// No shared store: the node runs standalone, in memory.
    Standalone,
    /// The store answers; `used_memory` when it says.
    Up {
        /// Bytes the store uses, if it reported them.
        used_memory: Option<u64>,
    },
    /// The store does not answer.
    Down,
}

/// The cluster engine in use.
pub enum Broker {
    /// Several nodes sharing one Redis.
    /// Boxed: it is far larger than the memory engine, and built once per node.
    Redis(Box<redis::RedisBroker>),
    /// One node, state in memory.
    Memory(memory::MemoryBroker),
}

impl Broker {
    /// Builds the engine `settings` ask for (Redis when a target is set, else
    /// memory), delivering to `deliveries` and registering `incarnation`'s runs.
    /// Nothing is dialled yet: a node starts while Redis is down.
    pub fn new(
        settings: EngineSettings<'_>,
        deliveries: Arc<dyn Deliveries>,
        incarnation: Arc<Incarnation>,
    ) -> Result<Self, BrokerError> {
        Ok(match settings.redis {
            Some(target) => Self::Redis(Box::new(redis::RedisBroker::new(
                target,
                &settings,
                incarnation,
                deliveries,
            )?)),
            None => Self::Memory(memory::MemoryBroker::new(
                deliveries,
                settings.node_id,
                settings.room_ttl,
                settings.resume,
            )),
        })
    }

    /// Keeps the engine's connections up (the Redis subscriber) until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        match self {
            Self::Redis(b) => b.run(cancel).await,
            Self::Memory(_) => cancel.cancelled().await,
        }
    }

    /// Runs the node upkeep until `cancel`: registration and heartbeat, dead-run
    /// cleanup, restore after the store lost its state, and the end of resume
    /// graces (the only upkeep a standalone node has).
    pub async fn upkeep(&self, node: NodeStatus, cancel: CancellationToken) {
        match self {
            Self::Redis(b) => b.upkeep(&node, cancel).await,
            Self::Memory(b) => b.upkeep(cancel).await,
        }
    }

    /// Tells the cluster this node is draining: a resume of one of its sessions
    /// waits until the node has relayed what that client sent before its close.
    pub async fn draining(&self) {
        match self {
            Self::Redis(b) => b.mark_draining().await,
            Self::Memory(_) => {}
        }
    }

    /// The state store's health and memory, for `/stats`.
    pub async fn store_status(&self) -> StoreStatus {
        match self {
            Self::Redis(b) => match b.used_memory().await {
                Ok(used_memory) => StoreStatus::Up { used_memory },
                Err(_) => StoreStatus::Down,
            },
            Self::Memory(_) => StoreStatus::Standalone,
        }
    }

    /// The live nodes of the cluster as `/nodes` lists them; `None` for a
    /// standalone node, which is the whole cluster and describes itself.
    pub async fn nodes(&self) -> Result<Option<Vec<serde_json::Value>>, BrokerError> {
        match self {
            Self::Redis(b) => b.live_nodes().await.map(Some),
            Self::Memory(_) => Ok(None),
        }
    }

    /// Each Redis Cluster master, its slot count and whether it answers a PING now
    /// (for `/readyz` and `/stats`); `None` unless the node runs on a cluster.
    pub async fn shards(&self) -> Option<Vec<ShardHealth>> {
        match self {
            Self::Redis(b) => b.shard_health().await,
            Self::Memory(_) => None,
        }
    }

    /// How Redis is reached (`single`, `sentinel` or `cluster`, PROTOCOL.md
    /// section 13); `None` standalone.
    pub fn redis_mode(&self) -> Option<&'static str> {
        match self {
            Self::Redis(b) => Some(b.redis_mode()),
            Self::Memory(_) => None,
        }
    }

    /// `redis` or `standalone`, for logs and status endpoints.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "standalone",
        }
    }

    /// This node's current incarnation once the cluster knows it (registered and
    /// beating on the current Redis connection); `None` before, when the node is
    /// neither ready nor accepts sessions. A standalone node is always registered.
    pub fn registered_run(
        &self,
        incarnation: &crate::incarnation::Incarnation,
    ) -> Option<crate::incarnation::RunId> {
        match self {
            Self::Redis(b) => b.registered_run(),
            Self::Memory(_) => Some(incarnation.current()),
        }
    }

    /// Makes sure this node receives `user`'s channel. Called before the user
    /// becomes visible, so nothing sent to the user right after its join is lost.
    pub async fn subscribe(&self, room: &RoomId, user: &UserId) -> Result<(), BrokerError> {
        match self {
            Self::Redis(b) => b.subscribe(room, user).await,
            Self::Memory(_) => Ok(()),
        }
    }

    /// Drops this node's record of a session that ends without leaving (it was
    /// replaced: its successor owns the user's keys), so the record cannot outlive it.
    pub async fn forget_session(&self, session: SessionId) {
        match self {
            Self::Redis(b) => b.forget(session).await,
            Self::Memory(_) => {}
        }
    }

    /// Drops `user`'s channel in `room` unless a local session still needs it.
    pub async fn unsubscribe(&self, room: &RoomId, user: &UserId) {
        match self {
            Self::Redis(b) => b.unsubscribe(room, user).await,
            Self::Memory(_) => {}
        }
    }

    /// Registers the session atomically, replaces any older session of the user,
    /// announces `user_joined` to the members and returns them.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResult, BrokerError> {
        match self {
            Self::Redis(b) => b.join(req).await,
            Self::Memory(b) => Ok(b.join(req)),
        }
    }

    /// Takes a detached (or still open) member's session over for a new connection,
    /// replaying what was held for it; see [`ResumeResult`].
    pub async fn resume(&self, req: &ResumeRequest) -> Result<ResumeResult, BrokerError> {
        match self {
            Self::Redis(b) => b.resume(req).await,
            Self::Memory(b) => Ok(b.resume(req)),
        }
    }

    /// A session whose connection ended without the member's decision: with a
    /// grace the member stays, detached and resumable, and the room hears nothing
    /// (the grace's end announces `user_left` `timeout`); without one it leaves as
    /// [`Self::leave`] does. Returns whether the session was still the member's.
    pub async fn detach(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        match self {
            Self::Redis(b) => b.detach(req).await,
            Self::Memory(b) => Ok(b.detach(req)),
        }
    }

    /// Looks for frames `user` in `room` missed (a session saw a gap): the Redis
    /// engine reads the member's mailbox into its local sessions. Never blocks.
    pub fn fill(&self, room: &RoomId, user: &UserId) {
        match self {
            Self::Redis(b) => b.fill(room, user),
            Self::Memory(_) => {}
        }
    }

    /// The settings of a created room.
    pub async fn room_meta(&self, room: &RoomId) -> Result<Option<RoomMeta>, BrokerError> {
        match self {
            Self::Redis(b) => b.room_meta(room).await,
            Self::Memory(b) => Ok(b.room_meta(room)),
        }
    }

    /// The room's settings and whether it has a seat for `user`, in one read.
    pub async fn join_view(&self, room: &RoomId, user: &UserId) -> Result<JoinView, BrokerError> {
        match self {
            Self::Redis(b) => b.join_view(room, user).await,
            // Its join checks the capacity under its lock and writes nothing when full.
            Self::Memory(b) => Ok(JoinView {
                meta: b.room_meta(room),
                full: false,
            }),
        }
    }

    /// Member count and settings; `None` when the room does not exist.
    pub async fn room_info(&self, room: &RoomId) -> Result<Option<RoomInfo>, BrokerError> {
        match self {
            Self::Redis(b) => b.room_info(room).await,
            Self::Memory(b) => Ok(b.room_info(room)),
        }
    }

    /// Creates a room; false when it exists (created or with members).
    pub async fn create_room(&self, room: &RoomId, meta: &RoomMeta) -> Result<bool, BrokerError> {
        match self {
            Self::Redis(b) => b.create_room(room, meta).await,
            Self::Memory(b) => Ok(b.create_room(room, meta)),
        }
    }

    /// Closes a room: every member is kicked wherever it is connected. `None` when
    /// the room does not exist, else how many members were kicked.
    pub async fn close_room(&self, room: &RoomId) -> Result<Option<usize>, BrokerError> {
        match self {
            Self::Redis(b) => b.close_room(room).await,
            Self::Memory(b) => Ok(b.close_room(room)),
        }
    }

    /// Removes a member wherever it is connected: its room hears `kicked`, its
    /// session closes with 4410. False when the user is not in that room.
    pub async fn kick(&self, room: &RoomId, user: &UserId) -> Result<bool, BrokerError> {
        match self {
            Self::Redis(b) => b.kick(room, user).await,
            Self::Memory(b) => Ok(b.kick(room, user)),
        }
    }

    /// A page of rooms in id order, after `cursor`.
    pub async fn list_rooms(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RoomPage, BrokerError> {
        match self {
            Self::Redis(b) => b.list_rooms(cursor, limit).await,
            Self::Memory(b) => Ok(b.list_rooms(cursor, limit)),
        }
    }

    /// Removes the session if it is still the user's, and announces `user_left`.
    /// Returns whether it was removed.
    pub async fn leave(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        match self {
            Self::Redis(b) => b.leave(req).await,
            Self::Memory(b) => Ok(b.leave(req)),
        }
    }

    /// How far behind this node reads what other nodes publish for its sessions;
    /// sessions read their clients more slowly while it is high (the memory
    /// engine delivers in the sender's call: never behind).
    pub fn delivery_lag(&self) -> std::time::Duration {
        match self {
            Self::Redis(b) => b.delivery_lag(),
            Self::Memory(_) => std::time::Duration::ZERO,
        }
    }

    /// Relays a sender's burst in order: one result per item, or one error for
    /// the whole burst when the store could not be asked (nothing was relayed, or
    /// the reply was lost, as with a single relay).
    pub async fn relay_burst(
        &self,
        room: &RoomId,
        sender: &UserId,
        burst: &[Outbound<'_>],
    ) -> Result<Vec<Result<Relayed, BrokerError>>, BrokerError> {
        match self {
            Self::Redis(b) => b.relay_burst(room, sender, burst).await,
            Self::Memory(b) => Ok(burst
                .iter()
                .map(|item| {
                    Ok(match item {
                        Outbound::ToUser { target, frame } => {
                            Relayed::ToUser(b.relay_to_user(room, target, frame))
                        }
                        Outbound::ToRoom { frame } => {
                            Relayed::ToRoom(b.relay_to_room(room, sender, frame))
                        }
                    })
                })
                .collect()),
        }
    }

    /// The room's members, ordered by join time.
    pub async fn room_users(&self, room: &RoomId) -> Result<Vec<User>, BrokerError> {
        let members = self.room_members(room).await?;
        Ok(members.into_iter().map(|(user, _)| user).collect())
    }

    /// The room's members with their sessions, ordered by join time.
    pub async fn room_members(&self, room: &RoomId) -> Result<Vec<Member>, BrokerError> {
        match self {
            Self::Redis(b) => b.room_members(room).await,
            Self::Memory(b) => Ok(b.room_members(room)),
        }
    }

    /// A connected user and the node holding it.
    pub async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, BrokerError> {
        match self {
            Self::Redis(b) => b.user(user).await,
            Self::Memory(b) => Ok(b.user(user)),
        }
    }

    /// Pushes back the expiry of the given members' keys, so connected users never expire.
    pub async fn refresh(&self, members: &[(UserId, RoomId)]) -> Result<(), BrokerError> {
        match self {
            Self::Redis(b) => b.refresh(members).await,
            Self::Memory(_) => Ok(()),
        }
    }

    /// Whether the node can serve: Redis answers and the subscriber is connected.
    pub async fn ready(&self) -> bool {
        match self {
            Self::Redis(b) => b.ready().await,
            Self::Memory(_) => true,
        }
    }
}

/// Orders members as clients expect to see them: oldest first.
fn sort_members(members: &mut [Member]) {
    members.sort_by(|(a, _), (b, _)| (&a.joined_at, &a.user_id).cmp(&(&b.joined_at, &b.user_id)));
}
