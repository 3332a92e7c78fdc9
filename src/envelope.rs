//! What one node publishes on a user's channel for the node holding that user.
//!
//! An envelope is a one-line header, `\n`, then a body:
//! - `F {published_us}\n{frame}`: write `{frame}` (final JSON text) to the user's current
//!   session; `published_us` (Unix microseconds, optional) measures delivery latency.
//! - `J {user_id} {session_id}\n{frame}`: a `user_joined` frame for that member's session.
//! - `L {user_id} {session_id}\n{frame}`: a `user_left` frame.
//! - `K {session_id} {reason}\n`: close that one session (`replaced`, `kicked`).
//!
//! Frames are serialized once, by the sending node, and written to the socket as is
//! on the receiving one. `J` and `L` carry the member in the header so the receiving
//! node can track what each session was told about its room without parsing JSON
//! (used to drop duplicates and to heal views after a fault). Header fields past
//! the known ones are ignored, so a later version can add some (a timestamp) without
//! breaking older nodes in a rolling update. The Lua scripts in `broker/redis/lua/` build
//! `K` and `L` envelopes themselves; they follow this format.

use serde::Deserialize;

use crate::ids::{is_valid_id, SessionId};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A finished frame for the user's current session, and when it was published.
    Frame {
        frame: &'a str,
        published_us: Option<u64>,
    },
    /// `user_joined` for `member`'s session `session`.
    Joined {
        member: &'a str,
        session: SessionId,
        frame: &'a str,
    },
    /// `user_left` for `member`.
    Left {
        member: &'a str,
        session: SessionId,
        frame: &'a str,
    },
    /// Close one particular session of the user.
    Kick {
        session: SessionId,
        reason: KickReason,
    },
}

/// Wraps a finished frame, stamped with the time of publishing.
pub fn frame(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len() + 20);
    out.push_str("F ");
    out.push_str(&now_us().to_string());
    out.push('\n');
    out.push_str(frame);
    out
}

/// Wall-clock microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Wraps a `user_joined` frame for `member`.
pub fn joined(member: &str, session: SessionId, frame: &str) -> String {
    format!("J {member} {session}\n{frame}")
}

/// Wraps a `user_left` frame for `member`.
pub fn left(member: &str, session: SessionId, frame: &str) -> String {
    format!("L {member} {session}\n{frame}")
}

/// Asks whichever node holds `session` to close it.
pub fn kick(session: SessionId, reason: KickReason) -> String {
    format!("K {session} {}\n", reason.as_str())
}

/// Decodes an envelope; `None` for anything malformed (logged by the caller).
pub fn parse(text: &str) -> Option<Envelope<'_>> {
    let (header, body) = text.split_once('\n')?;
    let mut fields = header.split(' ');
    let kind = fields.next()?;
    match kind {
        "F" => Some(Envelope::Frame {
            frame: body,
            published_us: fields.next().and_then(|t| t.parse().ok()),
        }),
        "J" | "L" => {
            let member = fields.next()?;
            let session = SessionId::parse(fields.next()?)?;
            Some(if kind == "J" {
                Envelope::Joined {
                    member,
                    session,
                    frame: body,
                }
            } else {
                Envelope::Left {
                    member,
                    session,
                    frame: body,
                }
            })
        }
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

/// Whether a clear envelope carries no client payload, so it may travel unsealed
/// while `PAYLOAD_ENCRYPTION_KEY` is set (crypto.rs): a well-formed `K`, or a `J`/`L`
/// whose body is exactly a membership frame about the member in its header, every
/// field in its protocol form. Lua scripts build these inside Redis and cannot
/// seal them; the strict shape keeps anything client-like from riding along.
pub fn carries_no_client_payload(text: &str) -> bool {
    match parse(text) {
        Some(Envelope::Kick { .. }) => true,
        Some(Envelope::Joined { member, frame, .. }) => {
            membership::<JoinedPayload>(frame, "user_joined").is_some_and(|p| {
                p.user_id == member
                    && is_valid_id(&p.room_id)
                    && matches!(p.role.as_str(), "peer" | "host" | "audience")
                    && p.joined_at.len() <= 40
                    && p.joined_at
                        .chars()
                        .all(|c| c.is_ascii_digit() || "-:.TZ+".contains(c))
            })
        }
        Some(Envelope::Left { member, frame, .. }) => membership::<LeftPayload>(frame, "user_left")
            .is_some_and(|p| {
                p.user_id == member
                    && is_valid_id(&p.room_id)
                    && matches!(
                        p.reason.as_str(),
                        "left" | "timeout" | "replaced" | "kicked" | "shutdown"
                    )
            }),
        Some(Envelope::Frame { .. }) | None => false,
    }
}

/// A membership frame, nothing more: `{"type":..,"payload":{..}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership<P> {
    #[serde(rename = "type")]
    kind: String,
    payload: P,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinedPayload {
    user_id: String,
    room_id: String,
    joined_at: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeftPayload {
    user_id: String,
    room_id: String,
    reason: String,
}

fn membership<P: serde::de::DeserializeOwned>(frame: &str, kind: &str) -> Option<P> {
    serde_json::from_str::<Membership<P>>(frame)
        .ok()
        .filter(|m| m.kind == kind)
        .map(|m| m.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let stamped = frame("{\"a\":1}");
        let Some(Envelope::Frame {
            frame: f,
            published_us,
        }) = parse(&stamped)
        else {
            panic!("not a frame")
        };
        assert_eq!(f, "{\"a\":1}");
        assert!(published_us.is_some_and(|t| t > 0));
        let s = SessionId::new();
        assert_eq!(
            parse(&kick(s, KickReason::Replaced)),
            Some(Envelope::Kick {
                session: s,
                reason: KickReason::Replaced
            })
        );
        assert_eq!(
            parse(&joined("bob", s, "{}")),
            Some(Envelope::Joined {
                member: "bob",
                session: s,
                frame: "{}"
            })
        );
        assert_eq!(
            parse(&left("bob", s, "{}")),
            Some(Envelope::Left {
                member: "bob",
                session: s,
                frame: "{}"
            })
        );
    }

    #[test]
    fn only_membership_and_kicks_count_as_payload_free() {
        let s = SessionId::new();
        let joined_frame = crate::protocol::user_joined_frame(&crate::protocol::User {
            user_id: "bob".into(),
            room_id: "r1".into(),
            joined_at: "2026-01-02T03:04:05.678Z".into(),
            role: crate::protocol::Role::Peer,
        });
        assert!(carries_no_client_payload(&joined("bob", s, &joined_frame)));
        let left_frame =
            crate::protocol::user_left_frame("bob", "r1", crate::protocol::LeaveReason::Kicked);
        assert!(carries_no_client_payload(&left("bob", s, &left_frame)));
        assert!(carries_no_client_payload(&kick(s, KickReason::Replaced)));
        // Frames, and membership envelopes smuggling anything else, are not.
        assert!(!carries_no_client_payload(&frame(&joined_frame)));
        assert!(!carries_no_client_payload(&joined("eve", s, &joined_frame)));
        assert!(!carries_no_client_payload(&left("bob", s, &joined_frame)));
        for body in [
            r#"{"type":"message","from":"bob","payload":"hi"}"#,
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r1","reason":"left","x":1}}"#,
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r1","reason":"left"},"payload2":1}"#,
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r 1","reason":"left"}}"#,
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r1","reason":"<script>"}}"#,
        ] {
            assert!(!carries_no_client_payload(&left("bob", s, body)), "{body}");
        }
        assert!(!carries_no_client_payload("garbage"));
    }

    #[test]
    fn tolerates_extra_header_fields_and_rejects_garbage() {
        assert_eq!(
            parse("F 123 x\n{}"),
            Some(Envelope::Frame {
                frame: "{}",
                published_us: Some(123)
            })
        );
        assert_eq!(
            parse("F\n{}"),
            Some(Envelope::Frame {
                frame: "{}",
                published_us: None
            })
        );
        assert_eq!(parse("F{}"), None);
        assert_eq!(parse("K nope replaced\n"), None);
        assert_eq!(parse("J bob nope\n{}"), None);
        assert_eq!(parse("X\n{}"), None);
    }
}
