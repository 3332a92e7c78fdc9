//! A room member's record in the room's own slot (`P room:{R}:members`): what room
//! scripts and `room_users` need about a member without reading the member's user
//! hash, which lives in another slot. One line, space-separated, written here and
//! read here and by the room scripts, which match it with the pattern
//! [`LUA_PATTERN`] documents: session, ticket, node, role, joined_at, stream,
//! resume digest, detached deadline.

use crate::ids::SessionId;
use crate::protocol::{Role, User};

/// The fields of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's session in this room; every removal is guarded by it.
    pub session: SessionId,
    /// The claim ticket of the join that wrote it: of two racing joins of one user,
    /// the higher ticket wins (join_room.lua, claim_user.lua). A resume keeps it.
    pub ticket: u64,
    /// The node holding the session (the last one, while detached).
    pub node: String,
    /// The member's role.
    pub role: Role,
    /// RFC 3339 UTC with milliseconds.
    pub joined_at: String,
    /// The numbering stream of the member's relayed frames: the session id of the
    /// ordinary join that started it (envelope.rs, `S`).
    pub stream: SessionId,
    /// SHA-256 hex of the member's current resume token.
    pub digest: String,
    /// Unix ms when a detached member's grace ends; 0 while connected.
    pub detached_until: u64,
}

/// The Lua pattern of a record, one capture per field in [`MemberRecord::encode`]
/// order (documentation for the scripts, which spell it out).
pub const LUA_PATTERN: &str = "^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$";

impl MemberRecord {
    /// `session ticket node role joined_at stream digest detached_until`.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.session,
            self.ticket,
            self.node,
            self.role.as_str(),
            self.joined_at,
            self.stream,
            self.digest,
            self.detached_until
        )
    }

    /// Parses a record; `None` for anything malformed.
    pub fn decode(text: &str) -> Option<Self> {
        let mut fields = text.split(' ');
        let session = SessionId::parse(fields.next()?)?;
        let ticket = fields.next()?.parse().ok()?;
        let node = fields.next()?.to_owned();
        let role = Role::parse(fields.next()?);
        let joined_at = fields.next()?.to_owned();
        let stream = SessionId::parse(fields.next()?)?;
        let digest = fields.next()?.to_owned();
        let detached_until = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Self {
            session,
            ticket,
            node,
            role,
            joined_at,
            stream,
            digest,
            detached_until,
        })
    }

    /// The `USER` object of `user` in `room` this record describes.
    pub fn user(&self, user: &str, room: &str) -> User {
        User {
            user_id: user.to_owned(),
            room_id: room.to_owned(),
            joined_at: self.joined_at.clone(),
            role: self.role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let record = MemberRecord {
            session: SessionId::new(),
            ticket: 42,
            node: "node-a".into(),
            role: Role::Host,
            joined_at: "2026-11-30T05:00:00.000Z".into(),
            stream: SessionId::new(),
            digest: crate::resume_token::digest("t"),
            detached_until: 0,
        };
        let text = record.encode();
        assert_eq!(MemberRecord::decode(&text), Some(record.clone()));
        assert_eq!(
            text.split(' ').count(),
            LUA_PATTERN.matches("(%S+)").count()
        );
        assert_eq!(MemberRecord::decode("x 1 n peer t"), None);
        assert_eq!(
            MemberRecord::decode(&format!("{} 1 n peer t", record.session)),
            None
        );
        assert_eq!(MemberRecord::decode(&format!("{text} extra")), None);
    }
}
