//! Every Redis key and channel name (PROTOCOL.md section 7), built from `KEY_PREFIX`.
//! Only this module knows the layout: scripts get every key through `KEYS`, and
//! where a script publishes to each member of a room it gets the room's channel
//! prefix ([`Keys::room_channel_prefix`]) and appends member ids.
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
pub const WORDS: [&str; 5] = ["room", "user", "claim", "node", "cluster"];

/// The Redis Cluster hash slot of a key or channel: CRC16 (XMODEM) of its hash tag
/// (the text between the first `{` and the next `}`, when not empty), else of the
/// whole name, modulo 16384. Used to prove every script call stays in one slot.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

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

    /// `P room:{room_id}`: set of user ids.
    pub fn room(&self, room: &str) -> String {
        format!("{}room:{{{room}}}", self.prefix)
    }

    /// `P user:{user_id}`: hash with room_id, joined_at, role, node_id, session_id.
    pub fn user(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }

    /// `P claim:{user_id}`: hash with the user's join ticket counter (`next`) and the
    /// ticket and session of the join that owns the user (`ticket`, `session`), in
    /// the user's slot: it orders racing joins of one user (claim_user.lua).
    pub fn user_claim(&self, user: &str) -> String {
        format!("{}claim:{{{user}}}", self.prefix)
    }

    /// `P room:{room_id}:members`: hash user_id -> [`MemberRecord`](super::member_record::MemberRecord) of
    /// the room's members, in the room's slot so that room scripts never read a
    /// user's hash (another slot).
    pub fn room_members(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:members", self.prefix)
    }

    /// `P room:{room_id}:ch:user_id`: the delivery channel of `user` in `room`. One
    /// per (room, user), in the room's slot: a message for a room can only ever
    /// reach a session of that room, whatever moves race with it.
    pub fn user_channel(&self, room: &str, user: &str) -> String {
        format!("{}{user}", self.room_channel_prefix(room))
    }

    /// `P room:{room_id}:seq`: hash user_id -> the last `seq` given to that member
    /// (PROTOCOL.md section 4), in the room's slot so a relay numbers in one step.
    pub fn room_seq(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:seq", self.prefix)
    }

    /// `P room:{room_id}:mb:user_id`: list of the member's recent numbered frames
    /// (`S` envelopes, oldest first), replayed on resume and read to fill gaps.
    /// Trimmed to `RESUME_BUFFER_MESSAGES` and by age, expiring when idle.
    pub fn mailbox(&self, room: &str, user: &str) -> String {
        format!("{}{user}", self.room_mailbox_prefix(room))
    }

    /// What every mailbox of `room` starts with (broadcast scripts append ids).
    pub fn room_mailbox_prefix(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:mb:", self.prefix)
    }

    /// `P cluster:{detached}`: sorted set of detached sessions by the Unix ms their
    /// grace ends (member `room user session`), swept by every node, so a grace
    /// ends even when the node that detached the member is gone.
    pub fn detached(&self) -> String {
        format!("{}cluster:{{detached}}", self.prefix)
    }

    /// What every delivery channel of `room` starts with; scripts that publish to
    /// each member append the member's id (they never learn the layout).
    pub fn room_channel_prefix(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:ch:", self.prefix)
    }

    /// The (room, user) of a delivery channel name, `None` for any other channel.
    pub fn channel_target<'a>(&self, channel: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("room:{")?;
        // memchr: this runs for every frame the node receives.
        let at = memchr::memchr(b'}', rest.as_bytes())?;
        let (room, rest) = (rest.get(..at)?, rest.get(at + 1..)?);
        let user = rest.strip_prefix(":ch:")?;
        Some((room, user))
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
    /// beats), `info` (JSON for `GET /nodes`) and, while that run drains,
    /// `draining` (the run again), with a short TTL.
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
        assert_eq!(k.user_channel("r1", "bob"), "signal:room:{r1}:ch:bob");
        assert_eq!(
            k.channel_target(&k.user_channel("r1", "bob")),
            Some(("r1", "bob"))
        );
        assert_eq!(k.room_members("r1"), "signal:room:{r1}:members");
        assert_eq!(k.room_meta("r1"), "signal:room:{r1}:meta");
        assert_eq!(k.room_seq("r1"), "signal:room:{r1}:seq");
        assert_eq!(k.mailbox("r1", "bob"), "signal:room:{r1}:mb:bob");
        assert_eq!(k.detached(), "signal:cluster:{detached}");
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
        assert_eq!(k.channel_target(&k.node_channel("n1")), None);
        assert_eq!(k.nodes(), "signal:cluster:{nodes}");
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
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
            "nodes", "rooms", "node", "user", "room", "cluster", "claim", "x", "ch", "meta", "mb",
            "seq", "detached",
        ];
        let names = |k: &Keys| -> Vec<String> {
            let mut all = vec![k.rooms(), k.nodes(), k.payload_key_check(), k.detached()];
            for id in ids {
                all.extend([
                    k.room(id),
                    k.user(id),
                    k.user_channel(id, id),
                    k.user_channel("r", id),
                    k.room_members(id),
                    k.room_seq(id),
                    k.mailbox(id, id),
                    k.mailbox("r", id),
                    k.user_claim(id),
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
            "signal:claim:",
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
                    if let Some(target) = kb.channel_target(&name) {
                        panic!("{name} of {a:?} reads as {b:?}'s channel of {target:?}");
                    }
                }
            }
        }
    }
}
