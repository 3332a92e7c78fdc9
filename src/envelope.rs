//! What one node publishes on a user's channel for the node holding that user.
//!
//! An envelope is a one-line header, `\n`, then a body:
//! - `F {published_us}\n{frame}`: write `{frame}` (final JSON text) to the user's current
//!   session; `published_us` (Unix microseconds, optional) measures delivery latency.
//! - `J {user_id} {session_id}\n{frame}`: a `user_joined` frame for that member's session.
//! - `L {user_id} {session_id}\n{frame}`: a `user_left` frame.
//! - `K {session_id} {reason}\n`: close that one session (`replaced`, `kicked`,
//!   `resumed`: the member resumed elsewhere, close without a word).
//! - `S {seq} {stream} {ms}\n{F envelope}`: a relayed frame numbered for its target.
//!   The relay scripts wrap the node's `F` envelope (clear or sealed) in this header
//!   when they number it and store it in the member's mailbox: `seq` is the
//!   member's `seq` (PROTOCOL.md section 4), `stream` the session id of the ordinary
//!   join that started the numbering (a resume keeps it, a new join starts another,
//!   so numbers of an older stream are never mistaken for this one's), `ms` when it
//!   was stored (Unix milliseconds; the mailbox is trimmed by it). The header stays
//!   outside any seal, since Redis writes it.
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
    /// The member resumed on another connection: this one closes silently.
    Resumed,
}

impl KickReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "replaced",
            Self::Kicked => "kicked",
            Self::Resumed => "resumed",
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
    /// A relayed frame numbered `seq` in the member's stream `stream`.
    Numbered {
        seq: u64,
        stream: SessionId,
        frame: &'a str,
        published_us: Option<u64>,
    },
    /// Close one particular session of the user.
    Kick {
        session: SessionId,
        reason: KickReason,
    },
}

impl Envelope<'_> {
    /// When a relayed frame was published (its `F` header, bare or numbered);
    /// `None` for anything else. The subscriber measures its lag with it.
    pub fn published_us(&self) -> Option<u64> {
        match *self {
            Self::Frame { published_us, .. } | Self::Numbered { published_us, .. } => published_us,
            _ => None,
        }
    }
}

/// Wraps a finished frame, stamped with the time of publishing.
pub fn frame(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len() + 20);
    out.push_str("F ");
    // itoa: `to_string` goes through the formatting machinery and allocates.
    out.push_str(itoa::Buffer::new().format(now_us()));
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

/// Wraps an `F` envelope as a relay script does (the memory engine, which has no
/// scripts, numbers frames with this).
pub fn numbered(seq: u64, stream: SessionId, stored_ms: u64, inner: &str) -> String {
    format!("S {seq} {stream} {stored_ms}\n{inner}")
}

/// The header of an `S` envelope and the envelope it wraps (still sealed, if it
/// was): `(seq, stream, inner)`.
pub fn split_numbered(text: &str) -> Option<(u64, SessionId, &str)> {
    let rest = text.strip_prefix("S ")?;
    let (header, inner) = split_line(rest)?;
    let mut fields = Fields(header);
    let seq = fields.next()?.parse().ok()?;
    let stream = SessionId::parse(fields.next()?)?;
    Some((seq, stream, inner))
}

/// The space-separated fields of a header line. `str::split(' ')` goes through
/// the generic pattern searcher, which cost more than the rest of parsing on
/// every frame a node receives; headers are short and ASCII.
struct Fields<'a>(&'a str);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.0.is_empty() {
            return None;
        }
        let text = self.0;
        match text.bytes().position(|b| b == b' ') {
            // A space is ASCII: both sides are on character boundaries.
            Some(at) => {
                self.0 = text.get(at + 1..).unwrap_or("");
                text.get(..at)
            }
            None => {
                self.0 = "";
                Some(text)
            }
        }
    }
}

/// The header line and the rest: what `split_once('\n')` gives, with memchr's
/// scan (it runs several times on every frame a node receives).
pub fn split_line(text: &str) -> Option<(&str, &str)> {
    let at = memchr::memchr(b'\n', text.as_bytes())?;
    // `at` is the index of an ASCII byte, so both halves are valid UTF-8.
    Some((text.get(..at)?, text.get(at + 1..)?))
}

/// `frame` (a JSON object as the node serialized it) with `"seq":N` as its last field.
pub fn with_seq(frame: &str, seq: u64) -> String {
    let body = frame.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let mut out = String::with_capacity(body.len() + 24);
    out.push_str(body);
    out.push_str(",\"seq\":");
    out.push_str(itoa::Buffer::new().format(seq));
    out.push('}');
    out
}

/// Decodes an envelope; `None` for anything malformed (logged by the caller).
pub fn parse(text: &str) -> Option<Envelope<'_>> {
    if let Some((seq, stream, inner)) = split_numbered(text) {
        return match parse(inner)? {
            Envelope::Frame {
                frame,
                published_us,
            } => Some(Envelope::Numbered {
                seq,
                stream,
                frame,
                published_us,
            }),
            _ => None,
        };
    }
    let (header, body) = split_line(text)?;
    let mut fields = Fields(header);
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
                "resumed" => KickReason::Resumed,
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
        Some(Envelope::Frame { .. } | Envelope::Numbered { .. }) | None => false,
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
    fn numbered_frames_carry_their_seq() {
        let stream = SessionId::new();
        let text = numbered(7, stream, 123, &frame("{\"type\":\"x\"}"));
        let Some(Envelope::Numbered {
            seq,
            stream: s,
            frame: f,
            ..
        }) = parse(&text)
        else {
            panic!("not numbered")
        };
        assert_eq!((seq, s, f), (7, stream, "{\"type\":\"x\"}"));
        assert_eq!(with_seq(f, 7), "{\"type\":\"x\",\"seq\":7}");
        assert_eq!(
            parse(&numbered(1, stream, 0, &kick(stream, KickReason::Resumed))),
            None
        );
        assert_eq!(
            parse(&kick(stream, KickReason::Resumed)),
            Some(Envelope::Kick {
                session: stream,
                reason: KickReason::Resumed
            })
        );
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
