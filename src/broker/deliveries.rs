//! The way down from the engines to the node's sessions. An engine receives
//! envelopes (from Redis through the subscriber, or from itself in memory) and
//! hands them to the handler the node registers; it never holds the node's session
//! table, so the broker does not depend on it and deliveries flow one way:
//! client → session → broker → Redis → subscriber → handler → session.

use crate::envelope::Envelope;
use crate::ids::{RoomId, SessionId, UserId};
use crate::incarnation::RunId;
use crate::protocol::Role;

use super::Member;

/// One live local session as the broker needs to see it (to write it back after
/// Redis lost its state): who, where, since when, under which run.
#[derive(Debug, Clone)]
pub struct LocalSession {
    /// The member.
    pub user: UserId,
    /// The room it joined.
    pub room: RoomId,
    /// The session it is connected with.
    pub session: SessionId,
    /// Its role in the room.
    pub role: Role,
    /// When it joined (RFC 3339 UTC, milliseconds).
    pub joined_at: String,
    /// The incarnation of this node the session joined under.
    pub run: RunId,
    /// Its numbering stream (section 11): written back with the record.
    pub stream: SessionId,
    /// The last `seq` delivered to it: the member's counter is written back from
    /// it, so numbering goes on without a gap after Redis lost its state.
    pub last_seq: u64,
    /// Digest of its resume token, written back so it stays resumable.
    pub resume_digest: String,
}

/// What became of one envelope handed to the local sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A session took it (or it was a duplicate a session had already).
    Taken,
    /// No local session wants it.
    Dropped,
    /// A numbered frame arrived past a gap: it is held, and the engine must read
    /// the member's mailbox for the missing ones (then call
    /// [`Deliveries::gap_filled`]).
    Gap,
    /// A numbered frame came with a `seq` the session already delivered, but it
    /// is another frame: Redis lost its latest counts (a failover). The engine must
    /// number it again above `floor` (the last `seq` delivered) and publish it anew.
    Renumber {
        /// The last `seq` the session delivered.
        floor: u64,
    },
}

/// What an engine (and the node upkeep) may ask of the node's local sessions.
/// Implemented by the registry; engines get it as `Arc<dyn Deliveries>`.
pub trait Deliveries: Send + Sync {
    /// Hands an envelope published on `user`'s channel in `room` to the local
    /// sessions of that user in that room. Never blocks.
    fn deliver(&self, room: &str, user: &str, text: &str) -> Delivery;

    /// [`Self::deliver`] of `text` already parsed as `env`, for an engine that
    /// reads the envelope first (the subscriber, for its delivery lag): a frame is
    /// parsed once on its way through the node.
    fn deliver_parsed(&self, room: &str, user: &str, text: &str, env: Envelope<'_>) -> Delivery {
        let _ = env;
        self.deliver(room, user, text)
    }

    /// The lowest `seq` delivered to an active local session of `user` in `room`
    /// (what a mailbox read must go on from); `None` when no session there is
    /// active (a joining one gets its start from its join or resume).
    fn delivered_seq(&self, room: &str, user: &str) -> Option<u64>;

    /// After the engine handed over what the member's mailbox held: a session of
    /// `user` in `room` still waiting on a gap will never see it filled (the
    /// mailbox lost it), so it is closed (the client resumes or joins again)
    /// rather than shown a gap. Returns how many were closed.
    fn gap_filled(&self, room: &str, user: &str) -> usize;

    /// Every (room, user) with a local session: the channels this node needs.
    fn channels(&self) -> Vec<(RoomId, UserId)>;

    /// Whether the user has a session in `room` on this node.
    fn contains_in(&self, room: &str, user: &str) -> bool;

    /// Number of local sessions (for logs).
    fn sessions(&self) -> usize;

    /// Every local user with its current session, to write back after Redis lost
    /// its state.
    fn local_sessions(&self) -> Vec<LocalSession>;

    /// Rooms with at least one local member.
    fn rooms(&self) -> Vec<RoomId>;

    /// Brings the view of every local session in `room` in line with `truth`;
    /// returns the number of frames sent.
    fn reconcile(&self, room: &RoomId, truth: &[Member]) -> usize;

    /// Closes the sessions of incarnation `run`, which the cluster declared dead
    /// (clients hear `unavailable` + 1013); returns how many.
    fn close_expired_run(&self, run: RunId) -> usize;

    /// Closes `user`'s session `session` as replaced: another session owns the
    /// user in the store now, so this one is stale.
    fn close_replaced(&self, user: &UserId, session: SessionId);
}
