//! Every Redis key and channel name (PROTOCOL.md section 7), built from `KEY_PREFIX`.
//! Only this module and the Lua scripts know the layout, so moving to sharded
//! pub/sub changes one place. The Lua scripts rebuild member keys from the prefix
//! with the same shapes (`room:{R}`, `user:{U}`, `user:{U}:ch`); the node scripts
//! get every key through `KEYS`.
//!
//! # Why two prefixes never meet
//!
//! Every name is `P WORD:{TAG}REST`: a word from [`WORDS`], a colon, then a hash
//! tag. Ids and prefixes never contain `{` or `}`. Suppose a name of prefix `P`
//! equals a name of a longer prefix `P X` (`X` not empty, so `signal:` and
//! `signal:room:`): `WORD1:{...` = `X WORD2:{...`. The first `{` stands at the same
//! place on both sides, and `X` has none, so `WORD1:` = `X WORD2:`: `WORD2` would
//! be a proper suffix of `WORD1`. No word of [`WORDS`] ends with another, so no name
//! of one prefix is ever a name of another, whatever the rooms are called (a room
//! named `nodes` is `P room:{nodes}`, never the registry `P cluster:{nodes}`).
//! The same holds for channel names.

/// The first word of every name; none is a suffix of another (tested below).
pub const WORDS: [&str; 4] = ["room", "user", "node", "cluster"];

/// The member of `P cluster:{nodes}` for one incarnation: `NODE_ID:RUN`. Neither
/// part contains `:` (ids are validated, run ids are hex), so it splits back.
pub fn node_member(node: &str, run: &str) -> String {
    format!("{node}:{run}")
}

/// `(node id, run)` of a `P cluster:{nodes}` member; `None` for anything else.
pub fn parse_node_member(member: &str) -> Option<(&str, &str)> {
    let (node, run) = member.split_once(':')?;
    (!node.is_empty() && !run.is_empty() && !run.contains(':')).then_some((node, run))
}

/// Key and channel names for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `signal:`), which has no `{` or `}` (config.rs).
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
        format!("{}room:{{{room}}}", self.prefix)
    }

    /// `P user:{user_id}`: hash with room_id, joined_at, role, node_id, session_id.
    pub fn user(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }

    /// `P user:{user_id}:ch`: the user's delivery channel.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}user:{{{user}}}:ch", self.prefix)
    }

    /// The user id of a delivery channel name, `None` for any other channel.
    pub fn user_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("user:{")?
            .strip_suffix("}:ch")
    }

    /// `P room:{room_id}:meta`: settings of a room created with `POST /rooms`.
    pub fn room_meta(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:meta", self.prefix)
    }

    /// `P cluster:{rooms}`: sorted set (all scores 0) of room ids, for `GET /rooms` paging.
    pub fn rooms(&self) -> String {
        format!("{}cluster:{{rooms}}", self.prefix)
    }

    /// `P cluster:{payload_key_check}`: the first node's sealed key check (crypto.rs).
    pub fn payload_key_check(&self) -> String {
        format!("{}cluster:{{payload_key_check}}", self.prefix)
    }

    /// `P cluster:{nodes}`: set of registered incarnations, members `NODE_ID:RUN`
    /// (see [`node_member`]). The dead-node sweep reads it.
    pub fn nodes(&self) -> String {
        format!("{}cluster:{{nodes}}", self.prefix)
    }

    /// `P node:{id}`: the node's heartbeat, a hash with `run` (the incarnation that
    /// beats) and `info` (JSON for `GET /nodes`), with a short TTL.
    pub fn node(&self, node: &str) -> String {
        format!("{}node:{{{node}}}", self.prefix)
    }

    /// `P node:{id}:run:RUN:sessions`: hash user_id -> session_id of the sessions
    /// that joined under one incarnation, so cleaning a dead or previous run never
    /// touches another run's sessions.
    pub fn run_sessions(&self, node: &str, run: &str) -> String {
        format!("{}node:{{{node}}}:run:{run}:sessions", self.prefix)
    }

    /// `P node:{id}:run:RUN:dead`: set by the survivor that evicted that run's
    /// sessions, for the run to find should it resume (paused, not dead).
    pub fn run_dead(&self, node: &str, run: &str) -> String {
        format!("{}node:{{{node}}}:run:{run}:dead", self.prefix)
    }

    /// `P node:{id}:ch`: the node's own channel (subscription probe).
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}node:{{{node}}}:ch", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_protocol() {
        let k = Keys::new("signal:");
        assert_eq!(k.room("r1"), "signal:room:{r1}");
        assert_eq!(k.user("bob"), "signal:user:{bob}");
        assert_eq!(k.user_channel("bob"), "signal:user:{bob}:ch");
        assert_eq!(k.user_of_channel(&k.user_channel("bob")), Some("bob"));
        assert_eq!(k.room_meta("r1"), "signal:room:{r1}:meta");
        assert_eq!(k.node("n1"), "signal:node:{n1}");
        assert_eq!(
            k.run_sessions("n1", "0123456789ab"),
            "signal:node:{n1}:run:0123456789ab:sessions"
        );
        assert_eq!(
            k.run_dead("n1", "0123456789ab"),
            "signal:node:{n1}:run:0123456789ab:dead"
        );
        assert_eq!(
            parse_node_member(&node_member("n1", "0123456789ab")),
            Some(("n1", "0123456789ab"))
        );
        assert_eq!(parse_node_member("n1"), None);
        assert_eq!(k.node_channel("n1"), "signal:node:{n1}:ch");
        assert_eq!(k.user_of_channel(&k.node_channel("n1")), None);
        assert_eq!(k.nodes(), "signal:cluster:{nodes}");
    }

    #[test]
    fn no_word_ends_with_another() {
        for a in WORDS {
            for b in WORDS {
                assert!(a == b || !a.ends_with(b), "{b} is a suffix of {a}");
            }
        }
    }

    /// Every name of `signal:` against every name of `signal:room:` (and the other
    /// nestings), with ids named like the other's internal words.
    #[test]
    fn nested_prefixes_never_share_a_name() {
        let ids = [
            "nodes", "rooms", "node", "user", "room", "cluster", "x", "ch", "meta",
        ];
        let names = |k: &Keys| -> Vec<String> {
            let mut all = vec![k.rooms(), k.nodes(), k.payload_key_check()];
            for id in ids {
                all.extend([
                    k.room(id),
                    k.user(id),
                    k.user_channel(id),
                    k.room_meta(id),
                    k.node(id),
                    k.run_sessions(id, "0123456789ab"),
                    k.run_dead(id, "0123456789ab"),
                    k.node_channel(id),
                ]);
            }
            all
        };
        let prefixes = [
            "signal:",
            "signal:room:",
            "signal:user:",
            "signal:node:",
            "signal:cluster:",
            "signal:r",
            "",
        ];
        for a in prefixes {
            for b in prefixes {
                if a == b {
                    continue;
                }
                let (ka, kb) = (Keys::new(a), Keys::new(b));
                let theirs = names(&kb);
                for name in names(&ka) {
                    assert!(
                        !theirs.contains(&name),
                        "{name} is a name of both {a:?} and {b:?}"
                    );
                    if let Some(user) = kb.user_of_channel(&name) {
                        panic!("{name} of {a:?} reads as {b:?}'s channel of {user}");
                    }
                }
            }
        }
    }
}
