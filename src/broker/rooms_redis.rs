//! Room administration on the Redis engine: created rooms' settings, listing,
//! closing and kicking. Every change that touches several keys is one Lua script.

use super::redis::RedisBroker;
use super::{BrokerError, RoomInfo, RoomMeta, RoomPage};
use crate::envelope::{self, KickReason};
use crate::ids::{RoomId, SessionId, UserId};
use crate::protocol::LeaveReason;

impl RedisBroker {
    pub(super) async fn room_meta(&self, room: &RoomId) -> Result<Option<RoomMeta>, BrokerError> {
        let fields = self
            .pooled("room_meta", async |conn| {
                let fields: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(self.keys.room_meta(room.as_str()))
                    .arg(&[
                        "created_at",
                        "password_hash",
                        "max_users",
                        "moderated",
                        "hosts",
                    ])
                    .query_async(&mut *conn)
                    .await?;
                Ok(fields)
            })
            .await?;
        let [Some(created_at), password_hash, max_users, moderated, hosts] =
            <[Option<String>; 5]>::try_from(fields)
                .map_err(|_| BrokerError::Reply("HMGET returned the wrong arity".into()))?
        else {
            return Ok(None);
        };
        Ok(Some(RoomMeta {
            created_at,
            password_hash: password_hash.filter(|h| !h.is_empty()),
            max_users: max_users.and_then(|m| m.parse().ok()),
            moderated: moderated.as_deref() == Some("1"),
            hosts: hosts
                .unwrap_or_default()
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
        }))
    }

    pub(super) async fn room_info(&self, room: &RoomId) -> Result<Option<RoomInfo>, BrokerError> {
        let meta = self.room_meta(room).await?;
        let count = self
            .pooled("room_info", async |conn| {
                let count: usize = redis::cmd("SCARD")
                    .arg(self.keys.room(room.as_str()))
                    .query_async(&mut *conn)
                    .await?;
                Ok(count)
            })
            .await?;
        Ok((count > 0 || meta.is_some()).then_some(RoomInfo { count, meta }))
    }

    pub(super) async fn create_room(
        &self,
        room: &RoomId,
        meta: &RoomMeta,
    ) -> Result<bool, BrokerError> {
        self.pooled("create_room", async |conn| {
            let created: i64 = self
                .scripts
                .create_room
                .key(self.keys.room_meta(room.as_str()))
                .key(self.keys.room(room.as_str()))
                .key(self.keys.rooms())
                .arg(room.as_str())
                .arg(&meta.created_at)
                .arg(meta.password_hash.as_deref().unwrap_or(""))
                .arg(meta.max_users.map(|m| m.to_string()).unwrap_or_default())
                .arg(if meta.moderated { "1" } else { "0" })
                .arg(meta.hosts.join(","))
                .arg(self.ttl_secs)
                .invoke_async(&mut *conn)
                .await?;
            Ok(created == 1)
        })
        .await
    }

    pub(super) async fn close_room(&self, room: &RoomId) -> Result<Option<usize>, BrokerError> {
        let kicked = self
            .pooled("close_room", async |conn| {
                let kicked: i64 = self
                    .scripts
                    .close_room
                    .key(self.keys.room(room.as_str()))
                    .key(self.keys.room_meta(room.as_str()))
                    .key(self.keys.rooms())
                    .arg(room.as_str())
                    .arg(self.keys.prefix())
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(kicked)
            })
            .await?;
        Ok(usize::try_from(kicked).ok())
    }

    pub(super) async fn kick(&self, room: &RoomId, user: &UserId) -> Result<bool, BrokerError> {
        let fields = self
            .pooled("kick_lookup", async |conn| {
                let fields: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(self.keys.user(user.as_str()))
                    .arg(&["room_id", "session_id"])
                    .query_async(&mut *conn)
                    .await?;
                Ok(fields)
            })
            .await?;
        let session = match fields.as_slice() {
            [Some(r), Some(s)] if r == room.as_str() => s.clone(),
            _ => return Ok(false),
        };
        // The room hears `kicked` from the store itself (session-guarded), so this
        // works even if the node holding the session is gone; then that node, if
        // alive, closes the socket.
        if !self
            .evict(user.as_str(), &session, LeaveReason::Kicked)
            .await?
        {
            return Ok(false);
        }
        if let Some(session) = SessionId::parse(&session) {
            let kick = envelope::kick(session, KickReason::Kicked);
            self.pooled("kick_publish", async |conn| {
                redis::cmd("PUBLISH")
                    .arg(self.keys.user_channel(user.as_str()))
                    .arg(kick)
                    .query_async::<i64>(&mut *conn)
                    .await?;
                Ok(())
            })
            .await?;
        }
        Ok(true)
    }

    pub(super) async fn list_rooms(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RoomPage, BrokerError> {
        let flat = self
            .pooled("list_rooms", async |conn| {
                let flat: Vec<String> = self
                    .scripts
                    .list_rooms
                    .key(self.keys.rooms())
                    .arg(self.keys.prefix())
                    .arg(cursor.unwrap_or(""))
                    .arg(limit)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(flat)
            })
            .await?;
        let (next, rest) = flat
            .split_first()
            .ok_or_else(|| BrokerError::Reply("empty room page".into()))?;
        let rooms = rest
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
            .collect();
        Ok(RoomPage {
            rooms,
            next_cursor: (!next.is_empty()).then(|| next.clone()),
        })
    }
}
