//! Every Redis key and channel name (PROTOCOL.md section 7), built from `KEY_PREFIX`.
//! Only this module and the Lua scripts know the layout, so moving to hash-tagged
//! keys and sharded pub/sub changes one place. The Lua scripts rebuild member keys
//! from the prefix with the same suffixes (`room:`, `user:`, `ch:user:`).

/// Key and channel names for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `signal:`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix, passed to Lua scripts that address members' keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P room:{room_id}`: set of user ids.
    pub fn room(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// `P user:{user_id}`: hash with room_id, joined_at, role, node_id, session_id.
    pub fn user(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }

    /// `P ch:user:{user_id}`: the user's delivery channel.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}{user}", self.user_channel_prefix())
    }

    /// `P roommeta:{room_id}`: settings of a room created with `POST /rooms`.
    pub fn room_meta(&self, room: &str) -> String {
        format!("{}roommeta:{room}", self.prefix)
    }

    /// `P rooms`: sorted set (all scores 0) of room ids, for `GET /rooms` paging.
    pub fn rooms(&self) -> String {
        format!("{}rooms", self.prefix)
    }

    /// `P payload_key_check`: the first node's sealed key check (crypto.rs).
    pub fn payload_key_check(&self) -> String {
        format!("{}payload_key_check", self.prefix)
    }

    /// `P nodes`: set of registered node ids.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// `P node:{id}`: the node's heartbeat (JSON info), with a short TTL.
    pub fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    /// `P node:{id}:sessions`: hash user_id -> session_id of the node's sessions.
    pub fn node_sessions(&self, node: &str) -> String {
        format!("{}node:{node}:sessions", self.prefix)
    }

    /// `P node:{id}:dead`: set by the survivor that evicted the node's sessions.
    pub fn node_dead(&self, node: &str) -> String {
        format!("{}node:{node}:dead", self.prefix)
    }

    /// `P ch:node:{id}`: the node's own channel (subscription probe).
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}ch:node:{node}", self.prefix)
    }

    /// What every user channel starts with, to recover the user id from a channel name.
    pub fn user_channel_prefix(&self) -> String {
        format!("{}ch:user:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_protocol() {
        let k = Keys::new("signal:");
        assert_eq!(k.room("r1"), "signal:room:r1");
        assert_eq!(k.user("bob"), "signal:user:bob");
        assert_eq!(k.user_channel("bob"), "signal:ch:user:bob");
        assert!(k.user_channel("bob").starts_with(&k.user_channel_prefix()));
        assert_eq!(k.node("n1"), "signal:node:n1");
        assert_eq!(k.node_sessions("n1"), "signal:node:n1:sessions");
        assert_eq!(k.node_channel("n1"), "signal:ch:node:n1");
        assert!(!k.node_channel("n1").starts_with(&k.user_channel_prefix()));
    }
}
