//! The cluster engine. Commands go over two kinds of connection:
//! - relays (the hot path) over one multiplexed, auto-reconnecting connection, one
//!   `EVALSHA` per message with no pool checkout; a session awaits each relay before
//!   the next, so its messages leave in order;
//! - joins, leaves, REST queries and TTL refreshes over a deadpool pool, so a slow
//!   query never queues in front of relays.
//!
//! Deliveries come back through the [`Subscriber`]. Multi-key changes are Lua
//! scripts (`lua/`), atomic and one round trip each.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Script};
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::subscriber::Subscriber;
use super::{sort_members, BrokerError, JoinRequest, Joined, LeaveRequest, RelayOutcome};
use crate::config::RedisTarget;
use crate::envelope;
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::protocol::{user_joined_frame, user_left_frame, Role, User, UserInfo};
use crate::registry::Registry;

/// Longest wait for one command, so a hung Redis turns into `unavailable`, not a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_SIZE: usize = 16;

struct Scripts {
    join: Script,
    leave: Script,
    relay: Script,
    broadcast: Script,
    room_users: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            join: Script::new(include_str!("lua/join.lua")),
            leave: Script::new(include_str!("lua/leave.lua")),
            relay: Script::new(include_str!("lua/relay.lua")),
            broadcast: Script::new(include_str!("lua/broadcast.lua")),
            room_users: Script::new(include_str!("lua/room_users.lua")),
        }
    }
}

/// Rooms and users in Redis, shared by every node with the same `KEY_PREFIX`.
pub struct RedisBroker {
    keys: Keys,
    node_id: NodeId,
    ttl_secs: u64,
    pool: Pool,
    relay: ConnectionManager,
    subscriber: Arc<Subscriber>,
    scripts: Scripts,
}

impl RedisBroker {
    /// Sets up the connections. Nothing is dialled yet, so a node starts while Redis
    /// is down and becomes ready when it comes up.
    pub fn new(
        target: &RedisTarget,
        prefix: &str,
        node_id: NodeId,
        ttl: Duration,
        registry: Arc<Registry>,
    ) -> Result<Self, BrokerError> {
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
            .recycle_timeout(Some(COMMAND_TIMEOUT))
            .build()
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        let relay_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let relay = ConnectionManager::new_lazy_with_config(client.clone(), relay_config)?;
        let keys = Keys::new(prefix);
        let subscriber = Arc::new(Subscriber::new(client, keys.clone(), registry));
        Ok(Self {
            keys,
            node_id,
            ttl_secs: ttl.as_secs().max(1),
            pool,
            relay,
            subscriber,
            scripts: Scripts::load(),
        })
    }

    /// Keeps the subscriber connection up until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        self.subscriber.clone().run(cancel).await;
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

    pub(super) async fn join(&self, req: &JoinRequest) -> Result<Joined, BrokerError> {
        let joined = envelope::frame(&user_joined_frame(&req.user_object()));
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .scripts
            .join
            .key(self.keys.room(req.room.as_str()))
            .key(self.keys.user(req.user.as_str()))
            .arg(req.user.as_str())
            .arg(req.room.as_str())
            .arg(req.session.to_string())
            .arg(self.node_id.as_str())
            .arg(&req.joined_at)
            .arg(req.role.as_str())
            .arg(self.ttl_secs)
            .arg(self.keys.prefix())
            .arg(joined)
            .invoke_async(&mut *conn)
            .await?;
        let (replaced, members) = reply
            .split_first()
            .ok_or_else(|| BrokerError::Reply("empty join reply".into()))?;
        let mut members = users_from_triples(members, &req.room)?;
        sort_members(&mut members);
        Ok(Joined {
            members,
            replaced: SessionId::parse(replaced),
        })
    }

    pub(super) async fn leave(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        let left = envelope::frame(&user_left_frame(
            req.user.as_str(),
            req.room.as_str(),
            req.reason,
        ));
        let mut conn = self.conn().await?;
        let removed: i64 = self
            .scripts
            .leave
            .key(self.keys.room(req.room.as_str()))
            .key(self.keys.user(req.user.as_str()))
            .arg(req.user.as_str())
            .arg(req.session.to_string())
            .arg(self.keys.prefix())
            .arg(left)
            .invoke_async(&mut *conn)
            .await?;
        Ok(removed == 1)
    }

    pub(super) async fn relay_to_user(
        &self,
        room: &RoomId,
        target: &str,
        frame: &str,
    ) -> Result<RelayOutcome, BrokerError> {
        let mut conn = self.relay.clone();
        let n: i64 = self
            .scripts
            .relay
            .key(self.keys.room(room.as_str()))
            .key(self.keys.user_channel(target))
            .arg(target)
            .arg(envelope::frame(frame))
            .invoke_async(&mut conn)
            .await?;
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
        let mut conn = self.relay.clone();
        let n: i64 = self
            .scripts
            .broadcast
            .key(self.keys.room(room.as_str()))
            .arg(sender.as_str())
            .arg(self.keys.prefix())
            .arg(envelope::frame(frame))
            .invoke_async(&mut conn)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(super) async fn room_users(&self, room: &RoomId) -> Result<Vec<User>, BrokerError> {
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .scripts
            .room_users
            .key(self.keys.room(room.as_str()))
            .arg(self.keys.prefix())
            .arg(room.as_str())
            .invoke_async(&mut *conn)
            .await?;
        let mut users = users_from_triples(&reply, room)?;
        sort_members(&mut users);
        Ok(users)
    }

    pub(super) async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, BrokerError> {
        let mut conn = self.conn().await?;
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.user(user.as_str()))
            .arg(&["room_id", "joined_at", "role", "node_id"])
            .query_async(&mut *conn)
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
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    pub(super) async fn ready(&self) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        let mut conn = self.relay.clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}

/// Decodes `{member, joined_at, role, ...}` from the scripts.
fn users_from_triples(flat: &[String], room: &RoomId) -> Result<Vec<User>, BrokerError> {
    if !flat.len().is_multiple_of(3) {
        return Err(BrokerError::Reply(format!(
            "member list of length {}",
            flat.len()
        )));
    }
    Ok(flat
        .chunks_exact(3)
        .map(|t| User {
            user_id: t[0].clone(),
            room_id: room.to_string(),
            joined_at: t[1].clone(),
            role: Role::parse(&t[2]),
        })
        .collect())
}
