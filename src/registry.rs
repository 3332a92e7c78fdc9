//! The sessions live on this node: `UserId -> SessionHandle`. The subscriber
//! dispatches every delivery through it, and it decides when a user's channel is
//! needed (first local session) and no longer needed (last one gone).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::envelope::{self, Envelope, KickReason};
use crate::ids::{RoomId, SessionId, UserId};
use crate::session::outbox::{CloseReason, Outbox};

/// What the node knows about one local session.
#[derive(Clone)]
pub struct SessionHandle {
    /// Compared with the session id in envelopes and Redis.
    pub session_id: SessionId,
    /// The room the session joined.
    pub room_id: RoomId,
    /// Where deliveries go.
    pub outbox: Outbox,
}

/// Local sessions by user id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<UserId, SessionHandle>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, SessionHandle>> {
        // A panic while holding this lock leaves the map itself consistent (every
        // operation is a single insert/remove), so poisoning is safe to ignore.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `handle` the user's local session. Returns the session it displaced,
    /// which the caller must close as replaced.
    pub fn insert(&self, user: UserId, handle: SessionHandle) -> Option<SessionHandle> {
        self.lock().insert(user, handle)
    }

    /// Removes the user's session if it is still `session`. Returns true when the
    /// user has no local session left (its channel can be dropped).
    pub fn remove(&self, user: &UserId, session: SessionId) -> bool {
        let mut map = self.lock();
        match map.get(user) {
            Some(h) if h.session_id == session => {
                map.remove(user);
                true
            }
            _ => false,
        }
    }

    /// Whether the user has a session on this node.
    pub fn contains(&self, user: &str) -> bool {
        self.lock().contains_key(user)
    }

    /// Number of local sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is local.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every local user with its room and session, for TTL refresh and resubscription.
    pub fn snapshot(&self) -> Vec<(UserId, RoomId, SessionId)> {
        self.lock()
            .iter()
            .map(|(u, h)| (u.clone(), h.room_id.clone(), h.session_id))
            .collect()
    }

    /// Every local session's outbox, to close them all at shutdown.
    pub fn outboxes(&self) -> Vec<Outbox> {
        self.lock().values().map(|h| h.outbox.clone()).collect()
    }

    /// Hands an envelope published on `user`'s channel to the local session.
    /// Returns whether a local session took it. Never blocks: a full queue closes
    /// that one session.
    pub fn deliver(&self, user: &str, text: &str) -> bool {
        let Some(env) = envelope::parse(text) else {
            tracing::warn!(user_id = user, "dropping malformed envelope");
            return false;
        };
        let map = self.lock();
        let Some(handle) = map.get(user) else {
            return false;
        };
        match env {
            Envelope::Frame(frame) => handle.outbox.push(frame.to_owned()),
            Envelope::Kick { session, reason } => {
                if handle.session_id != session {
                    return false;
                }
                handle.outbox.close(match reason {
                    KickReason::Replaced => CloseReason::Replaced,
                    KickReason::Kicked => CloseReason::Kicked,
                });
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outbox;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn delivers_frames_and_targeted_kicks() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (out, mut inbox) = outbox::channel(1024, &root);
        let sid = SessionId::new();
        let user = UserId::parse("bob").unwrap();
        let room = RoomId::parse("r").unwrap();
        reg.insert(
            user.clone(),
            SessionHandle {
                session_id: sid,
                room_id: room,
                outbox: out,
            },
        );

        assert!(reg.deliver("bob", &envelope::frame("{}")));
        assert_eq!(inbox.recv().await.as_deref(), Some("{}"));
        assert!(!reg.deliver("alice", &envelope::frame("{}")));
        assert!(!reg.deliver(
            "bob",
            &envelope::kick(SessionId::new(), KickReason::Replaced)
        ));
        assert_eq!(inbox.close_reason(), None);
        assert!(reg.deliver("bob", &envelope::kick(sid, KickReason::Kicked)));
        assert_eq!(inbox.close_reason(), Some(CloseReason::Kicked));
    }

    #[test]
    fn remove_never_drops_a_newer_session() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let user = UserId::parse("bob").unwrap();
        let room = RoomId::parse("r").unwrap();
        let (old, new) = (SessionId::new(), SessionId::new());
        for sid in [old, new] {
            let (out, _inbox) = outbox::channel(16, &root);
            reg.insert(
                user.clone(),
                SessionHandle {
                    session_id: sid,
                    room_id: room.clone(),
                    outbox: out,
                },
            );
        }
        assert!(!reg.remove(&user, old));
        assert!(reg.contains("bob"));
        assert!(reg.remove(&user, new));
        assert!(reg.is_empty());
    }
}
