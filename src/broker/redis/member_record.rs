//! A room member's record in the room's own slot (`P room:{R}:members`): what room
//! scripts and `room_users` need about a member without reading the member's user
//! hash, which lives in another slot. One line, space-separated, written and read
//! only here (scripts compare the first two fields: session and ticket).

use crate::ids::SessionId;
use crate::protocol::{Role, User};

/// The fields of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's session in this room; every removal is guarded by it.
    pub session: SessionId,
    /// The claim ticket of the join that wrote it: of two racing joins of one user,
    /// the higher ticket wins (join_room.lua, claim_user.lua).
    pub ticket: u64,
    /// The node holding the session.
    pub node: String,
    /// The member's role.
    pub role: Role,
    /// RFC 3339 UTC with milliseconds.
    pub joined_at: String,
}

impl MemberRecord {
    /// `session ticket node role joined_at`.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.session,
            self.ticket,
            self.node,
            self.role.as_str(),
            self.joined_at
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
        fields.next().is_none().then_some(Self {
            session,
            ticket,
            node,
            role,
            joined_at,
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
        };
        assert_eq!(MemberRecord::decode(&record.encode()), Some(record.clone()));
        assert_eq!(MemberRecord::decode("x 1 n peer t"), None);
        assert_eq!(
            MemberRecord::decode(&format!("{} 1 n peer", record.session)),
            None
        );
        assert_eq!(
            MemberRecord::decode(&format!("{} 1 n peer t extra", record.session)),
            None
        );
    }
}
