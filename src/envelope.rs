//! What one node publishes on a user's channel for the node holding that user.
//!
//! An envelope is a one-line header, `\n`, then a body:
//! - `F\n{frame}`: write `{frame}` (final JSON text) to the user's current session.
//! - `K {session_id} {reason}\n`: close that one session (`replaced`, `kicked`).
//!
//! The frame is serialized once, by the sending node, and written to the socket as
//! is on the receiving one. Header fields after the first are ignored, so a later
//! version can add some (a timestamp) without breaking older nodes in a rolling update.
//! The Lua scripts in `broker/lua/` build `K` envelopes and `user_left` frames
//! themselves; they follow this format.

use crate::ids::SessionId;

/// Why a session is told to close by another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// A newer connection of the same user id joined.
    Replaced,
    /// An administrator removed it.
    Kicked,
}

impl KickReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "replaced",
            Self::Kicked => "kicked",
        }
    }
}

/// A decoded envelope, borrowing from the published text.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A finished frame for the user's current session.
    Frame(&'a str),
    /// Close one particular session of the user.
    Kick {
        session: SessionId,
        reason: KickReason,
    },
}

/// Wraps a finished frame.
pub fn frame(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len() + 2);
    out.push_str("F\n");
    out.push_str(frame);
    out
}

/// Asks whichever node holds `session` to close it.
pub fn kick(session: SessionId, reason: KickReason) -> String {
    format!("K {session} {}\n", reason.as_str())
}

/// Decodes an envelope; `None` for anything malformed (logged by the caller).
pub fn parse(text: &str) -> Option<Envelope<'_>> {
    let (header, body) = text.split_once('\n')?;
    let mut fields = header.split(' ');
    match fields.next()? {
        "F" => Some(Envelope::Frame(body)),
        "K" => {
            let session = SessionId::parse(fields.next()?)?;
            let reason = match fields.next()? {
                "replaced" => KickReason::Replaced,
                "kicked" => KickReason::Kicked,
                _ => return None,
            };
            Some(Envelope::Kick { session, reason })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            parse(&frame("{\"a\":1}")),
            Some(Envelope::Frame("{\"a\":1}"))
        );
        let s = SessionId::new();
        assert_eq!(
            parse(&kick(s, KickReason::Replaced)),
            Some(Envelope::Kick {
                session: s,
                reason: KickReason::Replaced
            })
        );
    }

    #[test]
    fn tolerates_extra_header_fields_and_rejects_garbage() {
        assert_eq!(parse("F 123 x\n{}"), Some(Envelope::Frame("{}")));
        assert_eq!(parse("F{}"), None);
        assert_eq!(parse("K nope replaced\n"), None);
        assert_eq!(parse("X\n{}"), None);
    }
}
