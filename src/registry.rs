//! The sessions live on this node: `UserId -> SessionHandle`. The subscriber
//! dispatches every delivery through it, and it decides when a user's channel is
//! needed (first local session) and no longer needed (last one gone).
//!
//! It also keeps each session's *view*: the members (and their session ids) that
//! the client has been told are in its room. Membership envelopes update it, which
//! drops duplicate announcements, and [`Registry::reconcile`] compares it with the
//! cluster's truth after a fault to announce the joins and leaves a client missed.
//!
//! While a session is joining, deliveries wait in a pending list: once the join
//! snapshot (`room_users`) is known they are replayed through the view, so nothing
//! overtakes `room_users` and no event older than the snapshot is shown twice.
//!
//! A user may have several local sessions for a moment (a reconnect racing its
//! old connection, or a second connection that the room will refuse). None of them
//! closes another here: only Redis's order of joins decides who owns the user, and
//! the join that wins tells the one it displaced to close (a `K` envelope aimed at
//! that session id). So a refused connection never touches the live one, and the
//! session Redis names as the owner is never the one closed.
//!
//! Each session remembers a digest of the last [`RECENT_FRAMES`] numbered frames
//! it was given. A frame numbered at or below the last `seq` delivered is then
//! either a duplicate (the same frame again: replayed and live both) or a frame
//! that Redis numbered again because it lost its latest counts (a failover to a
//! replica that had not yet received them). The second kind must not be shown with
//! a `seq` the client already has, nor dropped: the engine numbers it anew
//! ([`Delivery::Renumber`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use crate::broker::{Deliveries, Delivery, LocalSession};
use crate::envelope::{self, Envelope, KickReason};
use crate::ids::{RoomId, SessionId, UserId};
use crate::incarnation::RunId;
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{user_joined_frame, user_left_frame, LeaveReason, Role, User};

/// Envelopes a joining session may accumulate before it counts as a slow consumer.
const MAX_PENDING: usize = 4096;
/// Numbered frames a session may hold past a gap while its mailbox is read.
const MAX_HELD: usize = 4096;
/// Numbered frames whose digest a session remembers, to tell a duplicate from a
/// frame numbered again. Duplicates come from a mailbox read overlapping live
/// deliveries, a few frames; a counter Redis lost in a failover is behind by the
/// replication lag, a few frames too.
const RECENT_FRAMES: usize = 32;

/// What the node knows about one local session.
#[derive(Clone)]
pub struct SessionHandle {
    /// Compared with the session id in envelopes and Redis.
    pub session_id: SessionId,
    /// The room the session joined.
    pub room_id: RoomId,
    /// Where deliveries go.
    pub outbox: Outbox,
    /// When the session joined, kept to re-register it after Redis lost its state.
    pub joined_at: String,
    /// The member's role, kept for the same reason.
    pub role: Role,
    /// The incarnation of this node the session joined under: when that run is
    /// declared dead, exactly its sessions close ([`Registry::close_run`]).
    pub run: RunId,
    /// Digest of the session's resume token, kept to write it back after Redis
    /// lost its state.
    pub resume_digest: String,
}

/// Where a session's numbering starts, set when it becomes active.
#[derive(Debug, Clone, Copy)]
pub struct Numbering {
    /// The member's stream: its own session id after an ordinary join, the
    /// resumed session's stream after a resume.
    pub stream: SessionId,
    /// The last `seq` the client has (0 after an ordinary join).
    pub last_seq: u64,
}

struct Entry {
    handle: SessionHandle,
    /// Members the client was told about, with the session each announcement was for.
    view: View,
    /// `Some` until the join snapshot is applied.
    pending: Option<Vec<String>>,
    /// The numbering of relayed frames the client sees (section 11).
    numbering: Numbering,
    /// Numbered frames that came past a gap, by `seq`, until the gap is filled.
    held: BTreeMap<u64, (String, Option<u64>)>,
    /// (seq, digest) of the last numbered frames delivered, oldest first
    /// (allocated with the first one).
    recent: VecDeque<(u64, u64)>,
}

/// A session's view of its room: the members the client was told about, each
/// with the session it was announced for. Every idle session holds one (19
/// members in a room of 20), so it is packed into one allocation of exactly its
/// size, sorted by member id, one record per member: the id's length (one
/// byte), the id, the session id (16 bytes). A vector of (boxed id, session)
/// pairs took an allocation per member and about twice the bytes. Rooms are
/// small, and the view only changes with membership (each change also sends a
/// frame), so scanning the records costs nothing that matters.
#[derive(Default)]
struct View(Box<[u8]>);

/// Bytes of a session id in a [`View`] record.
const SESSION_BYTES: usize = 16;

/// One record of a [`View`]: where it starts and ends in the packed bytes.
struct Record<'a> {
    member: &'a [u8],
    session: SessionId,
    start: usize,
    end: usize,
}

impl View {
    /// The view of a join snapshot.
    fn of(members: &[(User, SessionId)]) -> Self {
        let mut sorted: Vec<(&str, SessionId)> = members
            .iter()
            .map(|(u, s)| (u.user_id.as_str(), *s))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        // A snapshot lists each member once; should it not, the last one counts,
        // as it did when the view was a map.
        sorted.reverse();
        sorted.dedup_by(|a, b| a.0 == b.0);
        sorted.reverse();
        let mut packed = Vec::with_capacity(sorted.iter().map(|(m, _)| record_len(m)).sum());
        for (member, session) in sorted {
            push_record(&mut packed, member, session);
        }
        Self(packed.into_boxed_slice())
    }

    fn records(&self) -> impl Iterator<Item = Record<'_>> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let start = at;
            let (&len, rest) = self.0.get(start..)?.split_first()?;
            let (member, rest) = rest.split_at_checked(usize::from(len))?;
            let session = rest.get(..SESSION_BYTES)?.try_into().ok()?;
            at = start + 1 + usize::from(len) + SESSION_BYTES;
            Some(Record {
                member,
                session: SessionId::from_bytes(session),
                start,
                end: at,
            })
        })
    }

    /// The record of `member`, or where it would go to keep the order.
    fn find(&self, member: &str) -> Result<Record<'_>, usize> {
        for record in self.records() {
            match record.member.cmp(member.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Ok(record),
                std::cmp::Ordering::Greater => return Err(record.start),
            }
        }
        Err(self.0.len())
    }

    fn get(&self, member: &str) -> Option<SessionId> {
        self.find(member).ok().map(|r| r.session)
    }

    /// Records `member` as announced for `session`. An id too long for a record
    /// (never a valid one: ids are at most 64 bytes) is not recorded: the only
    /// cost is that a repeated announcement of it is not recognised as one.
    fn insert(&mut self, member: &str, session: SessionId) {
        let at = match self.find(member) {
            Ok(record) => {
                // Announced again for another session: its 16 bytes in place.
                let (from, to) = (record.end - SESSION_BYTES, record.end);
                self.0[from..to].copy_from_slice(&session.to_bytes());
                return;
            }
            Err(at) => at,
        };
        if u8::try_from(member.len()).is_err() {
            return;
        }
        let mut packed = Vec::with_capacity(self.0.len() + record_len(member));
        packed.extend_from_slice(&self.0[..at]);
        push_record(&mut packed, member, session);
        packed.extend_from_slice(&self.0[at..]);
        self.0 = packed.into_boxed_slice();
    }

    /// Forgets `member`; returns the session it was announced for.
    fn remove(&mut self, member: &str) -> Option<SessionId> {
        let (start, end, session) = self
            .find(member)
            .ok()
            .map(|r| (r.start, r.end, r.session))?;
        let mut packed = Vec::with_capacity(self.0.len() - (end - start));
        packed.extend_from_slice(&self.0[..start]);
        packed.extend_from_slice(&self.0[end..]);
        self.0 = packed.into_boxed_slice();
        Some(session)
    }

    fn members(&self) -> impl Iterator<Item = &str> {
        self.records()
            .filter_map(|r| std::str::from_utf8(r.member).ok())
    }
}

/// Bytes of `member`'s record in a [`View`].
fn record_len(member: &str) -> usize {
    1 + member.len() + SESSION_BYTES
}

/// Appends `member`'s record; an id longer than a record holds is left out
/// (see [`View::insert`]).
fn push_record(packed: &mut Vec<u8>, member: &str, session: SessionId) {
    let Ok(len) = u8::try_from(member.len()) else {
        return;
    };
    packed.push(len);
    packed.extend_from_slice(member.as_bytes());
    packed.extend_from_slice(&session.to_bytes());
}

/// What tells two numbered frames apart: their text and when they were published.
fn frame_digest(frame: &str, published_us: Option<u64>) -> u64 {
    // Tells two frames under one `seq` apart; nothing adversarial to resist (a
    // client cannot choose what another frame hashes to), so a fast hash will do:
    // SipHash was a tenth of the instructions of a delivery.
    let mut hasher = foldhash::fast::FixedState::with_seed(0x5157_a1e5).build_hasher();
    frame.hash(&mut hasher);
    published_us.hash(&mut hasher);
    hasher.finish()
}

impl Entry {
    /// Writes the next numbered frame, then any held ones that follow it.
    fn push_numbered(&mut self, seq: u64, frame: &str, published_us: Option<u64>) -> bool {
        self.numbering.last_seq = seq;
        self.remember(seq, frame, published_us);
        let mut ok = self
            .handle
            .outbox
            .push_stamped(envelope::with_seq(frame, seq), published_us);
        while let Some(entry) = self.held.first_entry() {
            let next = *entry.key();
            if next > self.numbering.last_seq + 1 {
                break;
            }
            let (frame, published_us) = entry.remove();
            if next <= self.numbering.last_seq {
                continue;
            }
            self.numbering.last_seq = next;
            self.remember(next, &frame, published_us);
            ok &= self
                .handle
                .outbox
                .push_stamped(envelope::with_seq(&frame, next), published_us);
        }
        ok
    }

    fn remember(&mut self, seq: u64, frame: &str, published_us: Option<u64>) {
        if self.recent.len() == RECENT_FRAMES {
            self.recent.pop_front();
        }
        self.recent
            .push_back((seq, frame_digest(frame, published_us)));
    }

    /// A frame numbered `seq` <= the last delivered: a duplicate, or another frame
    /// that Redis numbered again (it lost its latest counts).
    fn behind(&self, seq: u64, frame: &str, published_us: Option<u64>) -> Delivery {
        match self.recent.iter().find(|(s, _)| *s == seq) {
            Some((_, digest)) if *digest != frame_digest(frame, published_us) => {
                Delivery::Renumber {
                    floor: self.numbering.last_seq,
                }
            }
            _ => Delivery::Taken,
        }
    }

    fn apply(&mut self, env: Envelope<'_>) -> Delivery {
        let taken = |ok: bool| {
            if ok {
                Delivery::Taken
            } else {
                Delivery::Dropped
            }
        };
        match env {
            Envelope::Numbered {
                seq,
                stream,
                frame,
                published_us,
            } => {
                // Another stream's numbers (a session this one replaced): not ours.
                if stream != self.numbering.stream {
                    return Delivery::Taken;
                }
                if seq <= self.numbering.last_seq {
                    return self.behind(seq, frame, published_us);
                }
                if seq == self.numbering.last_seq + 1 {
                    return taken(self.push_numbered(seq, frame, published_us));
                }
                if self.held.len() >= MAX_HELD {
                    self.handle.outbox.close(CloseReason::SlowConsumer);
                    return Delivery::Dropped;
                }
                self.held.insert(seq, (frame.to_owned(), published_us));
                Delivery::Gap
            }
            Envelope::Frame {
                frame,
                published_us,
            } => taken(
                self.handle
                    .outbox
                    .push_stamped(frame.to_owned(), published_us),
            ),
            Envelope::Joined {
                member,
                session,
                frame,
            } => {
                if self.view.get(member) == Some(session) {
                    return Delivery::Taken;
                }
                self.view.insert(member, session);
                taken(self.handle.outbox.push(frame.to_owned()))
            }
            Envelope::Left { member, frame, .. } => {
                if self.view.remove(member).is_none() {
                    return Delivery::Taken;
                }
                taken(self.handle.outbox.push(frame.to_owned()))
            }
            Envelope::Kick { session, reason } => {
                if self.handle.session_id != session {
                    return Delivery::Dropped;
                }
                self.handle.outbox.close(match reason {
                    KickReason::Replaced => CloseReason::Replaced,
                    KickReason::Kicked => CloseReason::Kicked,
                    KickReason::Resumed => CloseReason::Resumed,
                });
                Delivery::Taken
            }
        }
    }
}

/// Local sessions by user id, oldest first (almost always one per user).
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<UserId, Vec<Entry>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Vec<Entry>>> {
        // Every operation leaves the map consistent before anything can panic, so
        // poisoning carries no broken invariant and is ignored.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a joining session for the user (deliveries held until [`Self::activate`]).
    /// Other local sessions of the user stay as they are: the join decides.
    pub fn insert(&self, user: UserId, handle: SessionHandle) {
        let numbering = Numbering {
            stream: handle.session_id,
            last_seq: 0,
        };
        let entry = Entry {
            handle,
            view: View::default(),
            pending: Some(Vec::new()),
            numbering,
            held: BTreeMap::new(),
            recent: VecDeque::new(),
        };
        // Almost always the user's only session: room for one, not the four a
        // first push reserves (an entry is a few hundred bytes, held per session).
        let mut map = self.lock();
        let entries = map.entry(user).or_default();
        entries.reserve_exact(1);
        entries.push(entry);
    }

    /// Applies the join snapshot (`members`, newcomer excluded) and the numbering
    /// the client starts from, writes `replay` (a resume's held frames, in order),
    /// then releases the deliveries held meanwhile, in order, through the view and
    /// the numbering (so replayed and live frames merge without gap or duplicate).
    /// Returns [`Delivery::Gap`] when what it has leaves a gap to fill.
    pub fn activate(
        &self,
        user: &UserId,
        session: SessionId,
        me: &User,
        members: &[(User, SessionId)],
        numbering: Numbering,
        replay: &[String],
    ) -> Delivery {
        let mut map = self.lock();
        let Some(entry) = map
            .get_mut(user)
            .and_then(|entries| entries.iter_mut().find(|e| e.handle.session_id == session))
        else {
            return Delivery::Dropped;
        };
        entry.view = View::of(members);
        entry.numbering = numbering;
        // What the room knows of the member (a resume learns it from the store).
        entry.handle.role = me.role;
        entry.handle.joined_at.clone_from(&me.joined_at);
        let mut outcome = Delivery::Taken;
        let pending = entry.pending.take().unwrap_or_default();
        for text in replay.iter().chain(pending.iter()) {
            if let Some(env) = envelope::parse(text) {
                if entry.apply(env) == Delivery::Gap {
                    outcome = Delivery::Gap;
                }
            }
        }
        if entry.held.is_empty() {
            Delivery::Taken
        } else {
            outcome
        }
    }

    /// Removes the user's session `session`. Returns its room when no other local
    /// session of the user is in that room (the (room, user) channel can go).
    pub fn remove(&self, user: &UserId, session: SessionId) -> Option<RoomId> {
        let mut map = self.lock();
        let entries = map.get_mut(user)?;
        let at = entries
            .iter()
            .position(|e| e.handle.session_id == session)?;
        let room = entries.remove(at).handle.room_id;
        let room_still_used = entries.iter().any(|e| e.handle.room_id == room);
        if entries.is_empty() {
            map.remove(user);
        }
        (!room_still_used).then_some(room)
    }

    /// Whether the user has a session in `room` on this node.
    pub fn contains_in(&self, room: &str, user: &str) -> bool {
        self.lock()
            .get(user)
            .is_some_and(|entries| entries.iter().any(|e| e.handle.room_id.as_str() == room))
    }

    /// Every (room, user) with a local session: the channels this node needs.
    pub fn channels(&self) -> Vec<(RoomId, UserId)> {
        let channels: HashSet<(RoomId, UserId)> = self
            .lock()
            .iter()
            .flat_map(|(user, entries)| {
                entries
                    .iter()
                    .map(move |e| (e.handle.room_id.clone(), user.clone()))
            })
            .collect();
        channels.into_iter().collect()
    }

    /// Number of local sessions.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether no session is local.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every local user with its current session (the newest that joined, else
    /// the newest still joining), for TTL refresh, resubscription and re-registration.
    pub fn snapshot(&self) -> Vec<(UserId, SessionHandle)> {
        self.current().into_iter().map(|(u, h, _)| (u, h)).collect()
    }

    fn current(&self) -> Vec<(UserId, SessionHandle, Numbering)> {
        self.lock()
            .iter()
            .filter_map(|(u, entries)| {
                let current = entries
                    .iter()
                    .rev()
                    .find(|e| e.pending.is_none())
                    .or_else(|| entries.last())?;
                Some((u.clone(), current.handle.clone(), current.numbering))
            })
            .collect()
    }

    /// Rooms with at least one local member.
    pub fn rooms(&self) -> Vec<RoomId> {
        let rooms: HashSet<RoomId> = self
            .lock()
            .values()
            .flatten()
            .map(|e| e.handle.room_id.clone())
            .collect();
        rooms.into_iter().collect()
    }

    /// Closes the sessions that joined under incarnation `run` (declared dead while
    /// this node was paused: Redis no longer knows them); returns how many.
    pub fn close_run(&self, run: RunId, reason: CloseReason) -> usize {
        let mut closed = 0;
        for entry in self.lock().values().flatten() {
            if entry.handle.run == run {
                entry.handle.outbox.close(reason);
                closed += 1;
            }
        }
        closed
    }

    /// Closes every local session with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        for entry in self.lock().values().flatten() {
            entry.handle.outbox.close(reason);
        }
    }

    /// Hands an envelope published on `user`'s channel in `room` to the local
    /// sessions of that user in that room (a session in another room never sees
    /// it). Returns whether one took it. Never blocks: a full queue closes that one
    /// session.
    pub fn deliver(&self, room: &str, user: &str, text: &str) -> Delivery {
        let Some(env) = envelope::parse(text) else {
            tracing::warn!(user_id = user, "dropping malformed envelope");
            return Delivery::Dropped;
        };
        self.deliver_parsed(room, user, text, env)
    }

    /// [`Self::deliver`] of `text` the caller has already parsed as `env` (the
    /// subscriber reads its timestamp first, and parses once).
    pub fn deliver_parsed(
        &self,
        room: &str,
        user: &str,
        text: &str,
        env: Envelope<'_>,
    ) -> Delivery {
        let mut map = self.lock();
        let Some(entries) = map.get_mut(user) else {
            return Delivery::Dropped;
        };
        let in_room = entries
            .iter_mut()
            .filter(|e| e.handle.room_id.as_str() == room);
        if let Envelope::Kick { .. } = env {
            // Aimed at one session id: only that session may close.
            let taken = in_room
                .into_iter()
                .any(|entry| entry.apply(env) == Delivery::Taken);
            return if taken {
                Delivery::Taken
            } else {
                Delivery::Dropped
            };
        }
        let mut outcome = Delivery::Dropped;
        for entry in in_room {
            let this = match &mut entry.pending {
                Some(pending) if pending.len() >= MAX_PENDING => {
                    entry.handle.outbox.close(CloseReason::SlowConsumer);
                    Delivery::Dropped
                }
                Some(pending) => {
                    pending.push(text.to_owned());
                    Delivery::Taken
                }
                None => entry.apply(env),
            };
            outcome = match (outcome, this) {
                (Delivery::Gap, _) | (_, Delivery::Gap) => Delivery::Gap,
                (r @ Delivery::Renumber { .. }, _) | (_, r @ Delivery::Renumber { .. }) => r,
                (Delivery::Taken, _) | (_, Delivery::Taken) => Delivery::Taken,
                _ => Delivery::Dropped,
            };
        }
        outcome
    }

    /// The lowest `seq` delivered to an active session of `user` in `room`.
    pub fn delivered_seq(&self, room: &str, user: &str) -> Option<u64> {
        self.lock().get(user).and_then(|entries| {
            entries
                .iter()
                .filter(|e| e.handle.room_id.as_str() == room && e.pending.is_none())
                .map(|e| e.numbering.last_seq)
                .min()
        })
    }

    /// Closes the sessions of `user` in `room` still waiting on a gap after the
    /// mailbox was read: what they miss is gone.
    pub fn gap_filled(&self, room: &str, user: &str) -> usize {
        let mut closed = 0;
        if let Some(entries) = self.lock().get_mut(user) {
            for entry in entries
                .iter_mut()
                .filter(|e| e.handle.room_id.as_str() == room && !e.held.is_empty())
            {
                tracing::warn!(
                    user_id = user,
                    session_id = %entry.handle.session_id,
                    last_seq = entry.numbering.last_seq,
                    "frames for this session were lost and its mailbox no longer holds them; closing it"
                );
                entry.held.clear();
                entry.handle.outbox.close(CloseReason::Lost);
                closed += 1;
            }
        }
        closed
    }

    /// Brings the view of every local session in `room` in line with `truth` (the
    /// room's members and sessions): announces members it missed and departures it
    /// missed (as `timeout`). Returns the number of frames sent.
    pub fn reconcile(&self, room: &RoomId, truth: &[(User, SessionId)]) -> usize {
        let mut sent = 0;
        let mut map = self.lock();
        for (user, entry) in map
            .iter_mut()
            .flat_map(|(user, entries)| entries.iter_mut().map(move |e| (user, e)))
        {
            if entry.handle.room_id != *room || entry.pending.is_some() {
                continue;
            }
            for (member, session) in truth {
                if member.user_id == user.as_str()
                    || entry.view.get(&member.user_id) == Some(*session)
                {
                    continue;
                }
                entry.view.insert(&member.user_id, *session);
                entry.handle.outbox.push(user_joined_frame(member));
                sent += 1;
            }
            let gone: Vec<String> = entry
                .view
                .members()
                .filter(|m| !truth.iter().any(|(t, _)| t.user_id == *m))
                .map(str::to_owned)
                .collect();
            for member in gone {
                entry.view.remove(&member);
                entry.handle.outbox.push(user_left_frame(
                    &member,
                    room.as_str(),
                    LeaveReason::Timeout,
                ));
                sent += 1;
            }
        }
        sent
    }
}

/// The registry is the node's delivery handler: the engines hand it what they
/// receive without knowing it (see [`Deliveries`]).
impl Deliveries for Registry {
    fn deliver(&self, room: &str, user: &str, text: &str) -> Delivery {
        Registry::deliver(self, room, user, text)
    }

    fn deliver_parsed(&self, room: &str, user: &str, text: &str, env: Envelope<'_>) -> Delivery {
        Registry::deliver_parsed(self, room, user, text, env)
    }

    fn gap_filled(&self, room: &str, user: &str) -> usize {
        Registry::gap_filled(self, room, user)
    }

    fn delivered_seq(&self, room: &str, user: &str) -> Option<u64> {
        Registry::delivered_seq(self, room, user)
    }

    fn channels(&self) -> Vec<(RoomId, UserId)> {
        Registry::channels(self)
    }

    fn contains_in(&self, room: &str, user: &str) -> bool {
        Registry::contains_in(self, room, user)
    }

    fn sessions(&self) -> usize {
        self.len()
    }

    fn local_sessions(&self) -> Vec<LocalSession> {
        self.current()
            .into_iter()
            .map(|(user, h, numbering)| LocalSession {
                user,
                room: h.room_id,
                session: h.session_id,
                role: h.role,
                joined_at: h.joined_at,
                run: h.run,
                stream: numbering.stream,
                last_seq: numbering.last_seq,
                resume_digest: h.resume_digest,
            })
            .collect()
    }

    fn rooms(&self) -> Vec<RoomId> {
        Registry::rooms(self)
    }

    fn reconcile(&self, room: &RoomId, truth: &[(User, SessionId)]) -> usize {
        Registry::reconcile(self, room, truth)
    }

    fn close_expired_run(&self, run: RunId) -> usize {
        self.close_run(run, CloseReason::NodeExpired)
    }

    fn close_replaced(&self, user: &UserId, session: SessionId) {
        if let Some(entry) = self
            .lock()
            .get(user)
            .and_then(|entries| entries.iter().find(|e| e.handle.session_id == session))
        {
            entry.handle.outbox.close(CloseReason::Replaced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, Inbox};
    use tokio_util::sync::CancellationToken;

    /// The packed view keeps members sorted, finds, replaces and removes them,
    /// and leaves out only an id too long for a record.
    #[test]
    fn view_records_members_in_order() {
        let (a, b, c) = (SessionId::new(), SessionId::new(), SessionId::new());
        let mut view = View::of(&[(user("carol"), a), (user("al"), b), (user("carol"), c)]);
        assert_eq!(view.members().collect::<Vec<_>>(), ["al", "carol"]);
        assert_eq!(
            view.get("carol"),
            Some(c),
            "the last of a repeated member counts"
        );
        view.insert("bob", a);
        view.insert("zed", b);
        view.insert("al", c);
        assert_eq!(
            view.members().collect::<Vec<_>>(),
            ["al", "bob", "carol", "zed"]
        );
        assert_eq!(view.get("al"), Some(c));
        assert_eq!(view.get("bo"), None);
        assert_eq!(view.remove("carol"), Some(c));
        assert_eq!(view.remove("carol"), None);
        assert_eq!(view.members().collect::<Vec<_>>(), ["al", "bob", "zed"]);
        assert_eq!((view.get("bob"), view.get("zed")), (Some(a), Some(b)));
        let long = "x".repeat(300);
        view.insert(&long, a);
        assert_eq!(view.get(&long), None);
        assert_eq!(view.0.len(), 3 * (1 + SESSION_BYTES) + 2 + 3 + 3);
    }

    fn user(id: &str) -> User {
        User {
            user_id: id.into(),
            room_id: "r".into(),
            joined_at: "2026-01-01T00:00:00.000Z".into(),
            role: Role::Peer,
        }
    }

    fn add(reg: &Registry, root: &CancellationToken, id: &str) -> (SessionId, Inbox) {
        let (out, inbox) = outbox::channel(1 << 16, root);
        let sid = SessionId::new();
        let handle = SessionHandle {
            session_id: sid,
            room_id: RoomId::parse("r").unwrap(),
            outbox: out,
            joined_at: String::new(),
            role: Role::Peer,
            run: crate::incarnation::RunId::random(),
            resume_digest: String::new(),
        };
        reg.insert(UserId::parse(id).unwrap(), handle);
        (sid, inbox)
    }

    #[tokio::test]
    async fn holds_deliveries_until_the_snapshot_then_filters_them() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (sid, mut inbox) = add(&reg, &root, "bob");
        let (carol, dave) = (SessionId::new(), SessionId::new());
        // carol is in the snapshot: her (stale) user_joined must not be shown again.
        assert_eq!(
            reg.deliver("r", "bob", &envelope::joined("carol", carol, "J-carol")),
            Delivery::Taken
        );
        assert_eq!(
            reg.deliver("r", "bob", &envelope::joined("dave", dave, "J-dave")),
            Delivery::Taken
        );
        assert_eq!(
            reg.deliver("r", "bob", &envelope::frame("from-dave")),
            Delivery::Taken
        );
        reg.activate(
            &UserId::parse("bob").unwrap(),
            sid,
            &user("bob"),
            &[(user("carol"), carol)],
            Numbering {
                stream: sid,
                last_seq: 0,
            },
            &[],
        );
        assert_eq!(
            inbox.recv().await.map(|o| o.text).as_deref(),
            Some("J-dave")
        );
        assert_eq!(
            inbox.recv().await.map(|o| o.text).as_deref(),
            Some("from-dave")
        );
        // A user_left for someone never announced is dropped; for dave it goes through.
        assert_eq!(
            reg.deliver(
                "r",
                "bob",
                &envelope::left("eve", SessionId::new(), "L-eve")
            ),
            Delivery::Taken
        );
        assert_eq!(
            reg.deliver("r", "bob", &envelope::left("dave", dave, "L-dave")),
            Delivery::Taken
        );
        assert_eq!(
            inbox.recv().await.map(|o| o.text).as_deref(),
            Some("L-dave")
        );
    }

    #[tokio::test]
    async fn kicks_are_targeted_at_one_session() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (sid, inbox) = add(&reg, &root, "bob");
        assert_eq!(
            reg.deliver(
                "r",
                "bob",
                &envelope::kick(SessionId::new(), KickReason::Replaced)
            ),
            Delivery::Dropped
        );
        assert_eq!(inbox.close_reason(), None);
        assert_eq!(
            reg.deliver("r", "bob", &envelope::kick(sid, KickReason::Kicked)),
            Delivery::Taken
        );
        // The same session id on another room's channel closes nothing.
        assert_eq!(
            reg.deliver("other", "bob", &envelope::frame("x")),
            Delivery::Dropped
        );
        assert_eq!(inbox.close_reason(), Some(CloseReason::Kicked));
    }

    #[tokio::test]
    async fn reconcile_announces_what_a_view_missed() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (sid, mut inbox) = add(&reg, &root, "bob");
        let (carol, dave) = (SessionId::new(), SessionId::new());
        reg.activate(
            &UserId::parse("bob").unwrap(),
            sid,
            &user("bob"),
            &[(user("carol"), carol)],
            Numbering {
                stream: sid,
                last_seq: 0,
            },
            &[],
        );
        let room = RoomId::parse("r").unwrap();
        let truth = [(user("bob"), sid), (user("dave"), dave)];
        assert_eq!(reg.reconcile(&room, &truth), 2);
        assert_eq!(
            inbox.recv().await.map(|o| o.text),
            Some(user_joined_frame(&user("dave")))
        );
        assert_eq!(
            inbox.recv().await.map(|o| o.text),
            Some(user_left_frame("carol", "r", LeaveReason::Timeout))
        );
        assert_eq!(reg.reconcile(&room, &truth), 0);
    }

    #[tokio::test]
    async fn numbered_frames_merge_without_gap_or_duplicate() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (sid, mut inbox) = add(&reg, &root, "bob");
        let stream = SessionId::new();
        let n = |seq: u64| {
            envelope::numbered(
                seq,
                stream,
                0,
                &envelope::frame(&format!("{{\"n\":{seq}}}")),
            )
        };
        // Live frames 3 and 4 arrive while resuming from last_seq 1; 2 and 3 are replayed.
        assert_eq!(reg.deliver("r", "bob", &n(3)), Delivery::Taken);
        assert_eq!(reg.deliver("r", "bob", &n(4)), Delivery::Taken);
        let numbering = Numbering {
            stream,
            last_seq: 1,
        };
        let outcome = reg.activate(
            &UserId::parse("bob").unwrap(),
            sid,
            &user("bob"),
            &[],
            numbering,
            &[n(2), n(3)],
        );
        assert_eq!(outcome, Delivery::Taken);
        for seq in 2..=4 {
            let text = inbox.recv().await.map(|o| o.text);
            assert_eq!(text, Some(format!("{{\"n\":{seq},\"seq\":{seq}}}")));
        }
        // Another stream's frame is ignored; a frame past a gap waits for the fill.
        let other = envelope::numbered(5, SessionId::new(), 0, &envelope::frame("{}"));
        assert_eq!(reg.deliver("r", "bob", &other), Delivery::Taken);
        assert_eq!(reg.deliver("r", "bob", &n(6)), Delivery::Gap);
        assert_eq!(reg.deliver("r", "bob", &n(5)), Delivery::Taken);
        for seq in 5..=6 {
            let text = inbox.recv().await.map(|o| o.text);
            assert_eq!(text, Some(format!("{{\"n\":{seq},\"seq\":{seq}}}")));
        }
        assert_eq!(reg.gap_filled("r", "bob"), 0);
        // A gap the mailbox cannot fill closes the session instead of showing it.
        assert_eq!(reg.deliver("r", "bob", &n(9)), Delivery::Gap);
        assert_eq!(reg.gap_filled("r", "bob"), 1);
        assert_eq!(inbox.close_reason(), Some(CloseReason::Lost));
    }

    #[test]
    fn remove_never_drops_a_newer_session() {
        let root = CancellationToken::new();
        let reg = Registry::new();
        let (old, _a) = add(&reg, &root, "bob");
        let (new, _b) = add(&reg, &root, "bob");
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(reg.remove(&bob, old), None, "the room is still used");
        assert!(reg.contains_in("r", "bob"));
        assert_eq!(reg.remove(&bob, new), Some(RoomId::parse("r").unwrap()));
        assert!(reg.is_empty());
    }
}
