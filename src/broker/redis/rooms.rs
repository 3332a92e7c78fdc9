//! Room administration on the Redis engine: created rooms' settings, listing,
//! closing and kicking. Every change that touches several keys is one Lua script.

use super::member_record::MemberRecord;
use super::script_keys;
use super::with_keys;
use super::RedisBroker;
use crate::broker::{BrokerError, JoinView, RoomInfo, RoomMeta, RoomPage};
use crate::envelope::{self, KickReason};
use crate::ids::{RoomId, SessionId, UserId};
use crate::protocol::LeaveReason;

/// A room's settings from [`RedisBroker::meta_fields`]; `None` when not created.
fn parse_meta(fields: Vec<Option<String>>) -> Result<Option<RoomMeta>, BrokerError> {
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

impl RedisBroker {
    pub(in crate::broker) async fn room_meta(
        &self,
        room: &RoomId,
    ) -> Result<Option<RoomMeta>, BrokerError> {
        let fields = self
            .pooled("room_meta", async |conn| {
                let fields: Vec<Option<String>> = self
                    .meta_fields(room.as_str())
                    .query_async(&mut *conn)
                    .await?;
                Ok(fields)
            })
            .await?;
        parse_meta(fields)
    }

    /// The room's settings and its occupancy without `user`, in one round trip
    /// (one slot), so a join into a capped room needs no read of its own.
    pub(in crate::broker) async fn join_view(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<JoinView, BrokerError> {
        let set = self.keys.room(room.as_str());
        // Named `join` in logs and metrics: it is the join's first command.
        let (fields, members, here): (Vec<Option<String>>, u64, u64) = self
            .pooled("join", async |conn| {
                let view = redis::pipe()
                    .add_command(self.meta_fields(room.as_str()))
                    .scard(&set)
                    .sismember(&set, user.as_str())
                    .query_async(&mut *conn)
                    .await?;
                Ok(view)
            })
            .await?;
        let meta = parse_meta(fields)?;
        let full = meta
            .as_ref()
            .and_then(|m| m.max_users)
            .is_some_and(|max| members.saturating_sub(here) >= u64::from(max));
        Ok(JoinView { meta, full })
    }

    /// `HMGET` of the settings fields [`parse_meta`] reads.
    fn meta_fields(&self, room: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.room_meta(room)).arg(&[
            "created_at",
            "password_hash",
            "max_users",
            "moderated",
            "hosts",
        ]);
        cmd
    }

    pub(in crate::broker) async fn room_info(
        &self,
        room: &RoomId,
    ) -> Result<Option<RoomInfo>, BrokerError> {
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

    /// Creates the room's metadata (room slot), then lists it in the index.
    pub(in crate::broker) async fn create_room(
        &self,
        room: &RoomId,
        meta: &RoomMeta,
    ) -> Result<bool, BrokerError> {
        let created = self
            .pooled("create_room", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.create_room,
                    script_keys::create_room(&self.keys, room.as_str()),
                );
                let created: i64 = invocation
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
            .await?;
        if created {
            self.index_room(room.as_str()).await?;
        }
        Ok(created)
    }

    /// Closes a room: its keys go in one step (room slot), so nothing reaches its
    /// members any more; then each member's session is told to close (`kicked`),
    /// each member's user hash goes (session-guarded, user slots), and the index
    /// entry goes. Members hear no `user_left`: everyone is leaving.
    pub(in crate::broker) async fn close_room(
        &self,
        room: &RoomId,
    ) -> Result<Option<usize>, BrokerError> {
        let reply: Vec<String> = self
            .pooled("close_room", async |conn| {
                let invocation = with_keys(
                    &self.scripts.close_room,
                    script_keys::close_room(&self.keys, room.as_str()),
                );
                let reply: Vec<String> = invocation.invoke_async(&mut *conn).await?;
                Ok(reply)
            })
            .await?;
        let Some((status, members)) = reply.split_first() else {
            return Err(BrokerError::Reply("empty close_room reply".into()));
        };
        if status == "-1" {
            self.unindex_room_if_gone(room.as_str()).await?;
            return Ok(None);
        }
        let mut kicked = 0;
        for pair in members.chunks_exact(2) {
            let Some(record) = MemberRecord::decode(&pair[1]) else {
                continue;
            };
            let user = pair[0].as_str();
            self.publish(
                room,
                user,
                envelope::kick(record.session, KickReason::Kicked),
            )
            .await?;
            self.leave_user(user, &record.session.to_string()).await?;
            kicked += 1;
        }
        self.unindex_room_if_gone(room.as_str()).await?;
        Ok(Some(kicked))
    }

    pub(in crate::broker) async fn kick(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<bool, BrokerError> {
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
            .evict(room, user.as_str(), &session, LeaveReason::Kicked)
            .await?
        {
            return Ok(false);
        }
        if let Some(session) = SessionId::parse(&session) {
            self.publish(
                room,
                user.as_str(),
                envelope::kick(session, KickReason::Kicked),
            )
            .await?;
        }
        Ok(true)
    }

    /// One page of the room index in id order after `cursor`, with member counts.
    /// Entries whose room vanished (no members, metadata expired) are dropped from
    /// the index on the way. Each read is one key, so it works across slots.
    pub(in crate::broker) async fn list_rooms(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RoomPage, BrokerError> {
        let mut start = cursor.map_or_else(|| "-".to_owned(), |c| format!("({c}"));
        let mut rooms: Vec<(String, usize)> = Vec::new();
        loop {
            let batch: Vec<String> = self
                .pooled("list_rooms", async |conn| {
                    let batch: Vec<String> = redis::cmd("ZRANGEBYLEX")
                        .arg(self.keys.rooms())
                        .arg(&start)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit + 1)
                        .query_async(&mut *conn)
                        .await?;
                    Ok(batch)
                })
                .await?;
            if batch.is_empty() {
                return Ok(RoomPage {
                    rooms,
                    next_cursor: None,
                });
            }
            let counts: Vec<(usize, bool)> = self
                .pooled("list_rooms", async |conn| {
                    let mut cmds = Vec::with_capacity(batch.len() * 2);
                    for room in &batch {
                        let mut scard = redis::cmd("SCARD");
                        scard.arg(self.keys.room(room));
                        let mut exists = redis::cmd("EXISTS");
                        exists.arg(self.keys.room_meta(room));
                        cmds.extend([scard, exists]);
                    }
                    let replies = super::conn::query_per_slot(conn, cmds).await?;
                    let flat: Vec<usize> = super::conn::parse(redis::Value::Array(replies))?;
                    Ok(flat.chunks_exact(2).map(|c| (c[0], c[1] == 1)).collect())
                })
                .await?;
            for (room, (count, created)) in batch.iter().zip(counts) {
                if count == 0 && !created {
                    self.unindex_room_if_gone(room).await?;
                } else if rooms.len() == limit {
                    // A live room beyond this page: the page ends with the previous one.
                    let next_cursor = rooms.last().map(|(id, _)| id.clone());
                    return Ok(RoomPage { rooms, next_cursor });
                } else {
                    rooms.push((room.clone(), count));
                }
                start = format!("({room}");
            }
        }
    }
}
