//! Every frame that crosses the WebSocket, in one file so it can be checked line by
//! line against PROTOCOL.md sections 2 (`room_users`, `USER`), 3, 4, 6 and 9 (roles).
//!
//! Client frames are parsed into borrowed [`RawValue`]s: the payload is never
//! built into a tree, and is relayed byte for byte as the client sent it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{is_valid_id, RoomId, UserId};

/// Frame types only the server may send.
const SERVER_TYPES: [&str; 5] = ["room_users", "user_joined", "user_left", "error", "pong"];

/// Deepest nesting of arrays and objects accepted in a frame. SDP and ICE payloads
/// are two or three levels deep; anything near this is abuse.
pub const MAX_NESTING: usize = 64;

/// `sdp_*` and `ice_candidate` make no sense as broadcasts.
const NEEDS_TARGET: [&str; 3] = ["sdp_offer", "sdp_answer", "ice_candidate"];

/// The `code` of an `error` frame (PROTOCOL.md sections 4 and 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidMessage,
    MissingTarget,
    InvalidTarget,
    TargetNotFound,
    Forbidden,
    RateLimited,
    Unavailable,
    InvalidId,
    Unauthorized,
    RoomFull,
    Timeout,
    Replaced,
    Kicked,
    SlowConsumer,
    Shutdown,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::MissingTarget => "missing_target",
            Self::InvalidTarget => "invalid_target",
            Self::TargetNotFound => "target_not_found",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InvalidId => "invalid_id",
            Self::Unauthorized => "unauthorized",
            Self::RoomFull => "room_full",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
            Self::Kicked => "kicked",
            Self::SlowConsumer => "slow_consumer",
            Self::Shutdown => "shutdown",
        }
    }
}

/// WebSocket close codes (PROTOCOL.md section 6).
pub mod close_code {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame over `MAX_MESSAGE_BYTES`.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later (Redis unreachable, node full, or this node lost its
    /// cluster membership while paused).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Invalid room or user id.
    pub const INVALID_ID: u16 = 4400;
    /// Missing or bad token.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Not allowed into this room.
    pub const FORBIDDEN: u16 = 4403;
    /// No heartbeat answer.
    pub const TIMEOUT: u16 = 4408;
    /// A newer connection of the same user id took over.
    pub const REPLACED: u16 = 4409;
    /// Removed by an administrator, or the room was closed.
    pub const KICKED: u16 = 4410;
    /// Outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4413;
    /// Sustained rate-limit abuse.
    pub const RATE_LIMITED: u16 = 4429;
}

/// Why a member left, as `user_left.payload.reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left,
    Timeout,
    Replaced,
    Kicked,
    Shutdown,
}

impl LeaveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
            Self::Kicked => "kicked",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A member's role (PROTOCOL.md section 9): `peer` in an ordinary room; `host` or
/// `audience` in a moderated one (from the room's hosts or the client token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Peer,
    Host,
    Audience,
}

impl Role {
    /// The wire name, also stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Host => "host",
            Self::Audience => "audience",
        }
    }

    /// Reads the stored form; unknown values are treated as `peer`.
    pub fn parse(s: &str) -> Self {
        match s {
            "host" => Self::Host,
            "audience" => Self::Audience,
            _ => Self::Peer,
        }
    }
}

/// The `USER` object: exactly these keys (PROTOCOL.md section 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub user_id: String,
    pub room_id: String,
    /// RFC 3339 UTC with milliseconds, as stored at join.
    pub joined_at: String,
    pub role: Role,
}

/// `GET /users/{id}`: a `USER` plus the node holding the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    #[serde(flatten)]
    pub user: User,
    pub node_id: String,
}

/// A client frame that passed validation.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Answered with `pong` to the sender only.
    Ping { payload: Option<&'a RawValue> },
    /// Relayed to one member (`target` set) or to every other member.
    Relay(Relay<'a>),
}

/// A message to relay, borrowed from the frame text.
#[derive(Debug)]
pub struct Relay<'a> {
    pub kind: String,
    /// `None` for a broadcast. Checked against the id rules; whether it is the
    /// sender itself or a member of its room is the session's to check.
    pub target: Option<String>,
    pub payload: Option<&'a RawValue>,
    pub id: Option<&'a RawValue>,
}

/// A frame that cannot be relayed; it becomes one `error` frame to its sender.
#[derive(Debug)]
pub struct Rejection<'a> {
    pub code: ErrorCode,
    pub message: &'static str,
    pub id: Option<&'a RawValue>,
    pub target: Option<String>,
}

impl Rejection<'_> {
    /// The `error` frame for this rejection.
    pub fn to_frame(&self) -> String {
        error_frame(self.code, self.message, self.id, self.target.as_deref())
    }
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    target: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// Parses and validates one text frame from a `peer` (PROTOCOL.md section 3).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, Rejection<'_>> {
    parse_client_frame_as(text, Role::Peer)
}

/// Parses and validates one text frame from a member with `role`. The role check
/// (section 9: audience may not offer or broadcast) comes before the target checks.
/// Target rules that need the sender (itself, membership) are the session's.
pub fn parse_client_frame_as(text: &str, role: Role) -> Result<ClientFrame<'_>, Rejection<'_>> {
    let reject = |code, message, id, target| Rejection {
        code,
        message,
        id,
        target,
    };
    // serde would read a JSON array into the struct positionally; only objects are frames.
    if !text.trim_start().starts_with('{') {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "a frame must be one JSON object",
            None,
            None,
        ));
    }
    if nesting_exceeds(text, MAX_NESTING) {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "a frame may nest arrays and objects at most 64 deep",
            None,
            None,
        ));
    }
    let wire: WireFrame<'_> = serde_json::from_str(text).map_err(|_| {
        reject(
            ErrorCode::InvalidMessage,
            "a frame must be one valid JSON object",
            None,
            None,
        )
    })?;

    // Errors echo the target whenever it was a string, whatever else is wrong.
    let target = wire.target.and_then(as_string);
    let id = match wire.id {
        None => None,
        Some(raw) if is_string_or_number(raw) => Some(raw),
        Some(_) => {
            return Err(reject(
                ErrorCode::InvalidMessage,
                "id must be a string or a number",
                None,
                target,
            ))
        }
    };
    let Some(kind) = wire.kind.and_then(as_string) else {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "type must be a string",
            id,
            target,
        ));
    };
    if !is_valid_type(&kind) {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "type must match ^[a-z][a-z0-9_]{0,31}$",
            id,
            target,
        ));
    }
    if SERVER_TYPES.contains(&kind.as_str()) {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "clients may not send server frame types",
            id,
            target,
        ));
    }
    if kind == "ping" {
        return Ok(ClientFrame::Ping {
            payload: wire.payload,
        });
    }
    // Option<&RawValue> already maps JSON null to None; anything else must be a string.
    if wire.target.is_some() && target.is_none() {
        return Err(reject(
            ErrorCode::InvalidMessage,
            "target must be a string or null",
            id,
            None,
        ));
    }
    if role == Role::Audience && (kind == "sdp_offer" || target.is_none()) {
        return Err(reject(
            ErrorCode::Forbidden,
            "audience members may not send offers or broadcasts",
            id,
            target,
        ));
    }
    if target.is_none() && NEEDS_TARGET.contains(&kind.as_str()) {
        return Err(reject(
            ErrorCode::MissingTarget,
            "this message type needs a target",
            id,
            None,
        ));
    }
    if let Some(t) = &target {
        if !is_valid_id(t) {
            return Err(reject(
                ErrorCode::InvalidTarget,
                "target is not a valid user id",
                id,
                target,
            ));
        }
    }
    Ok(ClientFrame::Relay(Relay {
        kind,
        target,
        payload: wire.payload,
        id,
    }))
}

/// The `id` (string or number) and string `target` of a frame that is dropped
/// without being handled (over the rate limit), so its error can still echo them.
pub fn echo_fields(text: &str) -> (Option<&RawValue>, Option<String>) {
    if !text.trim_start().starts_with('{') || nesting_exceeds(text, MAX_NESTING) {
        return (None, None);
    }
    match serde_json::from_str::<WireFrame<'_>>(text) {
        Ok(wire) => (
            wire.id.filter(|id| is_string_or_number(id)),
            wire.target.and_then(as_string),
        ),
        Err(_) => (None, None),
    }
}

/// Whether arrays/objects nest deeper than `limit`, counting outside strings only.
/// One pass over the bytes, no recursion.
fn nesting_exceeds(text: &str, limit: usize) -> bool {
    // Nesting needs an opening bracket per level: a frame with few of them (every
    // signaling frame) cannot exceed the limit, and counting them is one
    // vectorised pass instead of a byte-by-byte walk through every string.
    let openings = text
        .as_bytes()
        .iter()
        .fold(0usize, |n, &b| n + usize::from(b == b'{' || b == b'['));
    if openings <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn is_valid_type(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn is_string_or_number(raw: &RawValue) -> bool {
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9')
    )
}

fn as_string(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    // serde_json validated the string; without a backslash its text between the
    // quotes is its value (every type and target of a well-behaved client).
    match text.get(1..text.len().saturating_sub(1)) {
        Some(inner) if text.len() >= 2 && !inner.contains('\\') => Some(inner.to_owned()),
        _ => serde_json::from_str(text).ok(),
    }
}

fn null_if_absent(payload: Option<&RawValue>) -> &RawValue {
    payload.unwrap_or(RawValue::NULL)
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs of strings and RawValues cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

/// `{"type":T,"from":F,"target":X,"payload":P}`, the one shape of a relayed message.
/// Written by hand, not through serde: it runs for every relayed frame, and the
/// type and ids are checked plain text by then (escaped anyway when they are not).
pub fn relayed_frame(
    kind: &str,
    from: &UserId,
    target: Option<&str>,
    payload: Option<&RawValue>,
) -> String {
    let payload = null_if_absent(payload).get();
    let mut out = String::with_capacity(
        48 + kind.len() + from.as_str().len() + target.map_or(0, str::len) + payload.len(),
    );
    out.push_str(r#"{"type":"#);
    push_json_string(&mut out, kind);
    out.push_str(r#","from":"#);
    push_json_string(&mut out, from.as_str());
    if let Some(target) = target {
        out.push_str(r#","target":"#);
        push_json_string(&mut out, target);
    }
    out.push_str(r#","payload":"#);
    out.push_str(payload);
    out.push('}');
    out
}

/// Appends `text` as a JSON string: as is between quotes when nothing in it needs
/// escaping, through serde_json otherwise.
fn push_json_string(out: &mut String, text: &str) {
    // A fold, not `all`: without the early exit the check vectorises.
    let plain = text
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&to_json(&text));
    }
}

/// `{"type":"pong","payload":X}`.
pub fn pong_frame(payload: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: &'a RawValue,
    }
    to_json(&Out {
        kind: "pong",
        payload: null_if_absent(payload),
    })
}

/// `{"type":"error","payload":{"code","message","id"?,"target"?}}`.
pub fn error_frame(
    code: ErrorCode,
    message: &str,
    id: Option<&RawValue>,
    target: Option<&str>,
) -> String {
    error_frame_with(code, message, id, target, None)
}

fn error_frame_with(
    code: ErrorCode,
    message: &str,
    id: Option<&RawValue>,
    target: Option<&str>,
    retry_after_ms: Option<u64>,
) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: Payload<'a>,
    }
    to_json(&Out {
        kind: "error",
        payload: Payload {
            code: code.as_str(),
            message,
            id,
            target,
            retry_after_ms,
        },
    })
}

/// `room_users.payload.session` (PROTOCOL.md section 11): how this session can be
/// resumed, and whether it was.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo<'a> {
    /// Single use; never logged.
    pub resume_token: &'a str,
    /// `RESUME_GRACE_SECONDS`.
    pub resume_seconds: u64,
    /// Whether this connection resumed a session.
    pub resumed: bool,
}

/// The `shutdown` error of a draining node: `retry_after_ms` spreads the
/// reconnects of its clients over a second (PROTOCOL.md section 6).
pub fn shutdown_frame(message: &str, retry_after_ms: u64) -> String {
    error_frame_with(
        ErrorCode::Shutdown,
        message,
        None,
        None,
        Some(retry_after_ms),
    )
}

/// The newcomer's first frame: who it is, who is already there, how to resume,
/// and the ICE servers to use (`ice_servers`, a JSON array).
pub fn room_users_frame(
    room: &RoomId,
    me: &User,
    users: &[User],
    session: &SessionInfo<'_>,
    ice_servers: &[serde_json::Value],
) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        room_id: &'a str,
        #[serde(rename = "self")]
        me: &'a User,
        users: &'a [User],
        session: &'a SessionInfo<'a>,
        ice_servers: &'a [serde_json::Value],
    }
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: Payload<'a>,
    }
    to_json(&Out {
        kind: "room_users",
        payload: Payload {
            room_id: room.as_str(),
            me,
            users,
            session,
            ice_servers,
        },
    })
}

/// `{"type":"user_joined","payload":USER}`.
pub fn user_joined_frame(user: &User) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: &'a User,
    }
    to_json(&Out {
        kind: "user_joined",
        payload: user,
    })
}

/// `{"type":"user_left","payload":{"user_id","room_id","reason"}}`.
pub fn user_left_frame(user: &str, room: &str, reason: LeaveReason) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        user_id: &'a str,
        room_id: &'a str,
        reason: &'static str,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: Payload<'a>,
    }
    to_json(&Out {
        kind: "user_left",
        payload: Payload {
            user_id: user,
            room_id: room,
            reason: reason.as_str(),
        },
    })
}

/// `joined_at` for a join happening now: RFC 3339 UTC with milliseconds.
pub fn now_rfc3339_millis() -> String {
    format_millis(time::OffsetDateTime::now_utc())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// Unix seconds as RFC 3339 UTC with milliseconds (`expires_at` of `POST /tokens`
/// and `GET /ice-servers`); `None` outside the calendar's range.
pub fn rfc3339_millis(unix_secs: u64) -> Option<String> {
    let secs = i64::try_from(unix_secs).ok()?;
    format_millis(time::OffsetDateTime::from_unix_timestamp(secs).ok()?)
}

fn format_millis(at: time::OffsetDateTime) -> Option<String> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(text: &str) -> (ErrorCode, Option<String>, Option<String>) {
        match parse_client_frame(text) {
            Ok(f) => panic!("{text} should be rejected, got {f:?}"),
            Err(r) => (r.code, r.id.map(|i| i.get().to_owned()), r.target),
        }
    }

    #[test]
    fn relay_keeps_payload_bytes() {
        let text = r#"{"type":"sdp_offer","target":"bob","payload":{"type":"offer","sdp":"v=0\r\n"},"id":17,"from":"mallory"}"#;
        let ClientFrame::Relay(r) = parse_client_frame(text).unwrap() else {
            panic!("not a relay")
        };
        assert_eq!(r.kind, "sdp_offer");
        assert_eq!(r.target.as_deref(), Some("bob"));
        assert_eq!(r.id.map(|i| i.get()), Some("17"));
        let from = UserId::parse("alice").unwrap();
        assert_eq!(
            relayed_frame(&r.kind, &from, r.target.as_deref(), r.payload),
            r#"{"type":"sdp_offer","from":"alice","target":"bob","payload":{"type":"offer","sdp":"v=0\r\n"}}"#
        );
    }

    #[test]
    fn escaped_strings_are_read_and_written_as_json() {
        // A target spelled with an escape is the same id; the hand-written frame
        // escapes anything that needs it, as serde would.
        let text = r#"{"type":"ice_candidate","target":"b\u006fb","payload":1}"#;
        let ClientFrame::Relay(r) = parse_client_frame(text).unwrap() else {
            panic!("not a relay")
        };
        assert_eq!(r.target.as_deref(), Some("bob"));
        let from = UserId::parse("a").unwrap();
        assert_eq!(
            relayed_frame("x\"y", &from, Some("t\n"), None),
            r#"{"type":"x\"y","from":"a","target":"t\n","payload":null}"#
        );
    }

    #[test]
    fn broadcast_has_no_target_and_null_payload() {
        for text in [
            r#"{"type":"broadcast"}"#,
            r#"{"type":"broadcast","target":null}"#,
        ] {
            let ClientFrame::Relay(r) = parse_client_frame(text).unwrap() else {
                panic!("not a relay")
            };
            assert!(r.target.is_none());
            let from = UserId::parse("a").unwrap();
            assert_eq!(
                relayed_frame(&r.kind, &from, None, r.payload),
                r#"{"type":"broadcast","from":"a","payload":null}"#
            );
        }
    }

    #[test]
    fn ping_ignores_target() {
        let f = parse_client_frame(r#"{"type":"ping","target":5,"payload":[1]}"#).unwrap();
        let ClientFrame::Ping { payload } = f else {
            panic!("not a ping")
        };
        assert_eq!(pong_frame(payload), r#"{"type":"pong","payload":[1]}"#);
        assert_eq!(pong_frame(None), r#"{"type":"pong","payload":null}"#);
    }

    #[test]
    fn invalid_frames_are_rejected_with_their_code() {
        use ErrorCode::*;
        assert_eq!(rejected("nope").0, InvalidMessage);
        assert_eq!(rejected("[1,2]").0, InvalidMessage);
        assert_eq!(rejected("{").0, InvalidMessage);
        assert_eq!(rejected(r#"{"payload":1}"#).0, InvalidMessage);
        assert_eq!(rejected(r#"{"type":"Bad"}"#).0, InvalidMessage);
        assert_eq!(rejected(r#"{"type":7}"#).0, InvalidMessage);
        assert_eq!(
            rejected(&format!(r#"{{"type":"{}"}}"#, "a".repeat(33))).0,
            InvalidMessage
        );
        assert_eq!(rejected(r#"{"type":"user_joined"}"#).0, InvalidMessage);
        assert_eq!(
            rejected(r#"{"type":"message","target":5,"id":"x"}"#),
            (InvalidMessage, Some(r#""x""#.into()), None)
        );
        assert_eq!(
            rejected(r#"{"type":"message","id":{}}"#),
            (InvalidMessage, None, None)
        );
        assert_eq!(
            rejected(r#"{"type":"sdp_offer","id":3}"#),
            (MissingTarget, Some("3".into()), None)
        );
        assert_eq!(
            rejected(r#"{"type":"ice_candidate","target":null}"#).0,
            MissingTarget
        );
        assert_eq!(
            rejected(r#"{"type":"message","target":"bad id!"}"#),
            (InvalidTarget, None, Some("bad id!".into()))
        );
    }

    #[test]
    fn dropped_frames_still_echo_id_and_target() {
        let (id, target) =
            echo_fields(r#"{"type":"message","target":"bob","id":"m1","payload":"x"}"#);
        assert_eq!(
            (id.map(|i| i.get()), target.as_deref()),
            (Some(r#""m1""#), Some("bob"))
        );
        let big = format!(
            r#"{{"type":"m","id":7,"target":"bob","payload":"{}"}}"#,
            "x".repeat(10_000)
        );
        assert_eq!(echo_fields(&big).0.map(|i| i.get()), Some("7"));
        assert!(echo_fields(r#"{"id":{},"target":5}"#).0.is_none());
        assert_eq!(echo_fields("[1]").1, None);
    }

    #[test]
    fn audience_may_answer_but_not_offer_or_broadcast() {
        let audience = |t: &str| match parse_client_frame_as(t, Role::Audience) {
            Ok(_) => None,
            Err(r) => Some(r.code),
        };
        assert_eq!(
            audience(r#"{"type":"sdp_offer","target":"h"}"#),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            audience(r#"{"type":"sdp_offer"}"#),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            audience(r#"{"type":"message"}"#),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            audience(r#"{"type":"sdp_offer","target":"bad id"}"#),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(audience(r#"{"type":"sdp_answer","target":"h"}"#), None);
        assert_eq!(audience(r#"{"type":"ice_candidate","target":"h"}"#), None);
        assert_eq!(audience(r#"{"type":"ping"}"#), None);
        assert!(parse_client_frame_as(r#"{"type":"sdp_offer","target":"h"}"#, Role::Host).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!(
            r#"{{"type":"message","payload":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(rejected(&deep).0, ErrorCode::InvalidMessage);
        let ok = format!(
            r#"{{"type":"message","payload":{}"[[{{}}"{}}}"#,
            "[".repeat(63),
            "]".repeat(63)
        );
        assert!(
            parse_client_frame(&ok).is_ok(),
            "63 levels inside the frame object must pass"
        );
    }

    #[test]
    fn error_frame_echoes_id_and_target() {
        let id = RawValue::from_string("\"m1\"".into()).unwrap();
        assert_eq!(
            error_frame(ErrorCode::TargetNotFound, "no", Some(&id), Some("bob")),
            r#"{"type":"error","payload":{"code":"target_not_found","message":"no","id":"m1","target":"bob"}}"#
        );
        assert_eq!(
            error_frame(ErrorCode::Shutdown, "bye", None, None),
            r#"{"type":"error","payload":{"code":"shutdown","message":"bye"}}"#
        );
    }

    #[test]
    fn membership_frames_have_documented_shapes() {
        let user = User {
            user_id: "bob".into(),
            room_id: "r1".into(),
            joined_at: "2026-11-24T08:00:00.123Z".into(),
            role: Role::Peer,
        };
        assert_eq!(
            user_joined_frame(&user),
            r#"{"type":"user_joined","payload":{"user_id":"bob","room_id":"r1","joined_at":"2026-11-24T08:00:00.123Z","role":"peer"}}"#
        );
        assert_eq!(
            user_left_frame("bob", "r1", LeaveReason::Left),
            r#"{"type":"user_left","payload":{"user_id":"bob","room_id":"r1","reason":"left"}}"#
        );
        let room = RoomId::parse("r1").unwrap();
        let session = SessionInfo {
            resume_token: "tok",
            resume_seconds: 20,
            resumed: false,
        };
        assert_eq!(
            room_users_frame(&room, &user, &[], &session, &[]),
            r#"{"type":"room_users","payload":{"room_id":"r1","self":{"user_id":"bob","room_id":"r1","joined_at":"2026-11-24T08:00:00.123Z","role":"peer"},"users":[],"session":{"resume_token":"tok","resume_seconds":20,"resumed":false},"ice_servers":[]}}"#
        );
        assert_eq!(
            shutdown_frame("bye", 250),
            r#"{"type":"error","payload":{"code":"shutdown","message":"bye","retry_after_ms":250}}"#
        );
    }

    #[test]
    fn joined_at_has_milliseconds() {
        let t = now_rfc3339_millis();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.');
    }
}
