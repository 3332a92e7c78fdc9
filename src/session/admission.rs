//! Whether a connection may join its room, and as what: the room's password and
//! its role rules (PROTOCOL.md section 9). The token itself was checked before the
//! session started; capacity is read here (a full room refuses before anything is
//! written) and checked again atomically by the join.

use crate::auth::Claims;
use crate::broker::RoomMeta;
use crate::ids::{RoomId, UserId};
use crate::protocol::{close_code, ErrorCode, Role};
use crate::state::AppState;

/// What the client presented.
#[derive(Default)]
pub struct Credentials {
    /// Verified token claims, in `AUTH_MODE=jwt`.
    pub claims: Option<Claims>,
    /// The `password` query parameter.
    pub password: Option<String>,
    /// `resume` and `last_seq`, when the client asks to resume (the password is
    /// then only checked if the resume fails and the connection joins anew).
    pub resume: Option<crate::resume_token::ResumeAsk>,
}

/// A connection the room accepts.
pub(super) struct Admitted {
    pub role: Role,
    pub max_users: Option<u32>,
}

/// A connection the room refuses: the `error` code and close code to send.
pub(super) struct Refusal {
    pub code: ErrorCode,
    pub close: u16,
    pub text: &'static str,
}

const UNAVAILABLE: Refusal = Refusal {
    code: ErrorCode::Unavailable,
    close: close_code::TRY_AGAIN_LATER,
    text: "signaling unavailable; retry",
};

/// Checks the room's password and decides the member's role.
pub(super) async fn admit(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    credentials: &Credentials,
) -> Result<Admitted, Refusal> {
    let (meta, full) = match state.broker.join_view(room, user).await {
        Ok(view) => (view.meta.unwrap_or_default(), view.full),
        Err(e) => {
            tracing::warn!(error = %e, "join refused: room settings unavailable");
            return Err(UNAVAILABLE);
        }
    };
    if let Some(hash) = meta.password_hash.clone() {
        let password = credentials.password.clone().unwrap_or_default();
        let Ok(matches) = state.passwords.verify(password, hash).await else {
            tracing::warn!("join refused: every room-password check stayed busy");
            return Err(Refusal {
                code: ErrorCode::Unavailable,
                close: close_code::TRY_AGAIN_LATER,
                text: "too many password checks at once; retry",
            });
        };
        if !matches {
            tracing::info!("join refused: wrong or missing room password");
            return Err(Refusal {
                code: ErrorCode::Forbidden,
                close: close_code::FORBIDDEN,
                text: "wrong or missing room password",
            });
        }
    }
    // A full room refuses before anything is written (a refused connection leaves
    // nothing behind, not even undone steps); the join checks again, atomically,
    // for joins that race for the last seat.
    if full {
        tracing::info!("join refused: room full");
        return Err(ROOM_FULL);
    }
    Ok(Admitted {
        role: role(&meta, user, credentials.claims.as_ref()),
        max_users: meta.max_users,
    })
}

/// `peer` in ordinary rooms; in a moderated room the token's role, or without
/// tokens the room's host list, decides between `host` and `audience`.
fn role(meta: &RoomMeta, user: &UserId, claims: Option<&Claims>) -> Role {
    if !meta.moderated {
        return Role::Peer;
    }
    match claims {
        Some(claims) => claims.moderated_role(),
        None if meta.hosts.iter().any(|h| h == user.as_str()) => Role::Host,
        None => Role::Audience,
    }
}

/// The refusal for a room at `max_users`.
pub(super) const ROOM_FULL: Refusal = Refusal {
    code: ErrorCode::RoomFull,
    close: close_code::FORBIDDEN,
    text: "the room is full",
};

/// The refusal of a join that a newer connection of the same user overtook: as
/// for any replaced session.
pub(super) const SUPERSEDED: Refusal = Refusal {
    code: ErrorCode::Replaced,
    close: close_code::REPLACED,
    text: "replaced by a newer connection",
};

/// The refusal when the store cannot be reached.
pub(super) const STORE_DOWN: Refusal = UNAVAILABLE;

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Option<&str>) -> Claims {
        Claims {
            sub: "u".into(),
            room: "*".into(),
            role: role.map(str::to_owned),
            exp: 0,
            nbf: None,
            iss: None,
            aud: None,
        }
    }

    #[test]
    fn roles_follow_the_protocol() {
        let user = UserId::parse("alice").unwrap();
        let ordinary = RoomMeta::default();
        assert_eq!(
            role(&ordinary, &user, Some(&claims(Some("host")))),
            Role::Peer
        );
        let moderated = RoomMeta {
            moderated: true,
            hosts: vec!["alice".into()],
            ..RoomMeta::default()
        };
        assert_eq!(role(&moderated, &user, None), Role::Host);
        assert_eq!(
            role(&moderated, &UserId::parse("bob").unwrap(), None),
            Role::Audience
        );
        assert_eq!(role(&moderated, &user, Some(&claims(None))), Role::Audience);
        assert_eq!(
            role(&moderated, &user, Some(&claims(Some("host")))),
            Role::Host
        );
    }
}
