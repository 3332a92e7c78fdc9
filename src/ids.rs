//! Validated identifiers. A `RoomId` or `UserId` can only be built from a string
//! that matches PROTOCOL.md section 1, so every key and channel name built from
//! one is safe: no `:`, braces, spaces or non-ASCII ever reach Redis.

use std::fmt;
use std::sync::Arc;

/// Longest accepted room or user id (PROTOCOL.md section 1).
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid room or user id: `^[A-Za-z0-9_.-]{1,64}$`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The id was not of the form PROTOCOL.md section 1 requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: expected 1 to 64 characters from A-Z a-z 0-9 _ - .")]
pub struct InvalidId(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if is_valid_id(s) {
                    Ok(Self(Arc::from(s)))
                } else {
                    Err(InvalidId(s.to_owned()))
                }
            }

            /// The id as it appears on the wire and in Redis.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

id_type!(
    /// A room, as named by clients in `/ws/{room_id}/{user_id}`.
    RoomId
);
id_type!(
    /// A user; one live session per user id across the cluster.
    UserId
);
id_type!(
    /// A node of the cluster; appears in Redis (`user:{id}.node_id`), logs and `/users`.
    NodeId
);

/// One WebSocket session. A user who reconnects gets a new one, and Redis cleanup
/// compares it so an old session can never remove its successor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    /// A fresh random session id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parses the hyphenated form stored in Redis.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s).ok().map(Self)
    }

    /// The id's 16 bytes, for tables packed byte by byte (the registry's
    /// room views, held per idle session).
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The id whose bytes [`Self::to_bytes`] gave.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("Room_1.x-Y"));
        assert!(is_valid_id(&"x".repeat(64)));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "a:b", "{a}", "a b", "é", "a/b", "a\0", "a*"] {
            assert!(!is_valid_id(bad), "{bad:?} should be invalid");
        }
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(RoomId::parse("a:b").is_err());
        assert_eq!(
            UserId::parse("bob").map(|u| u.to_string()),
            Ok("bob".into())
        );
    }

    #[test]
    fn session_ids_round_trip() {
        let s = SessionId::new();
        assert_eq!(SessionId::parse(&s.to_string()), Some(s));
        assert_eq!(SessionId::parse("nope"), None);
    }
}
