//! The standalone engine: the cluster's semantics in one process. Every operation
//! takes one lock and delivers through the node's delivery handler while holding it, which gives
//! the same atomicity and per-sender order as the Lua scripts give on Redis.
//!
//! Resume (PROTOCOL.md section 11) works as on Redis: every relayed frame is numbered
//! per member (`seq` in the member's stream) and kept in the member's mailbox, trimmed
//! to `RESUME_BUFFER_MESSAGES` and to the hold time. A connection that ends without
//! the member's decision detaches it: the member stays, silently, until the grace's
//! deadline, which [`MemoryBroker::upkeep`] enforces with `user_left` `timeout`. A
//! resume that presents the current token in time, with every frame after its
//! `last_seq` still held, takes the session over and gets those frames to replay.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    sort_members, Deliveries, Delivery, JoinRequest, JoinResult, Joined, LeaveRequest, Member,
    RelayOutcome, ResumeRequest, ResumeResult, ResumeSettings, Resumed, RoomInfo, RoomMeta,
    RoomPage,
};
use crate::envelope::{self, KickReason};
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::protocol::{user_joined_frame, user_left_frame, LeaveReason, User, UserInfo};

/// How often [`MemoryBroker::upkeep`] looks for detached members whose grace ran out.
const UPKEEP_PERIOD: Duration = Duration::from_millis(100);

/// One frame numbered for a member, kept for its resume.
struct Held {
    seq: u64,
    /// When it was numbered: the mailbox drops it once older than the hold time.
    stored: Instant,
    /// The `S` envelope, as it was delivered.
    text: String,
}

struct Entry {
    room: RoomId,
    session: SessionId,
    user: User,
    /// The session id of the ordinary join that started this member's numbering;
    /// a resume keeps it, so the client's `last_seq` stays meaningful.
    stream: SessionId,
    /// Digest of the member's current resume token.
    digest: String,
    /// The last `seq` given to a frame for this member.
    seq: u64,
    /// The frames numbered for this member, oldest first, contiguous in `seq`.
    mailbox: VecDeque<Held>,
    /// Set while the member is detached: when its grace runs out. Exactly the
    /// entries with a deadline are in [`State::deadlines`].
    detached_until: Option<Instant>,
}

impl Entry {
    /// Numbers `env` (an `F` envelope) as the member's next frame, keeps it in the
    /// mailbox (trimmed to the buffer and the hold time) and returns the `S` envelope.
    fn number(&mut self, env: &str, now: Instant, now_ms: u64, resume: &ResumeSettings) -> String {
        self.seq += 1;
        let text = envelope::numbered(self.seq, self.stream, now_ms, env);
        self.mailbox.push_back(Held {
            seq: self.seq,
            stored: now,
            text: text.clone(),
        });
        while self.mailbox.front().is_some_and(|held| {
            self.mailbox.len() > resume.buffer
                || now.saturating_duration_since(held.stored) > resume.hold
        }) {
            self.mailbox.pop_front();
        }
        text
    }

    /// Whether `req` may take this member's session over at `now`: its token, its
    /// room, within the grace, and every frame after its `last_seq` still held.
    fn resumable(&self, req: &ResumeRequest, now: Instant, hold: Duration) -> bool {
        let ask = &req.ask;
        let in_time = self.detached_until.is_none_or(|until| until > now);
        // Frames older than the hold count as gone, as on Redis where the mailbox
        // expires `hold` after its last write; they are the oldest, a prefix.
        let oldest_kept = self
            .mailbox
            .iter()
            .find(|held| now.saturating_duration_since(held.stored) <= hold);
        // The mailbox is contiguous: holding `last_seq + 1` means holding all after it.
        let all_held = ask.last_seq == self.seq
            || oldest_kept.is_some_and(|held| held.seq <= ask.last_seq.saturating_add(1));
        self.room == req.room
            && !self.digest.is_empty()
            && self.digest == ask.digest
            && in_time
            && ask.last_seq <= self.seq
            && all_held
    }
}

/// A room made by `POST /rooms`: it outlives its members by the room TTL.
struct Created {
    meta: RoomMeta,
    empty_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomId, BTreeSet<UserId>>,
    users: HashMap<UserId, Entry>,
    created: HashMap<RoomId, Created>,
    /// The empty created rooms by the instant they became empty (exactly one entry
    /// per `Created` whose `empty_since` is set), so that expiry looks at the
    /// oldest only, instead of scanning every created room on every operation.
    empty: BTreeSet<(Instant, RoomId)>,
    /// The detached members by the end of their grace (exactly one entry per
    /// `Entry` whose `detached_until` is set), so that upkeep looks at the due ones only.
    deadlines: BTreeSet<(Instant, UserId)>,
}

impl State {
    /// Marks a created room empty from now; it expires `ttl` later unless joined.
    fn mark_empty(&mut self, room: &RoomId) {
        if let Some(created) = self.created.get_mut(room) {
            let now = Instant::now();
            if let Some(old) = created.empty_since.replace(now) {
                self.empty.remove(&(old, room.clone()));
            }
            self.empty.insert((now, room.clone()));
        }
    }

    /// Marks a created room occupied: it no longer expires.
    fn mark_occupied(&mut self, room: &RoomId) {
        if let Some(since) = self
            .created
            .get_mut(room)
            .and_then(|c| c.empty_since.take())
        {
            self.empty.remove(&(since, room.clone()));
        }
    }

    /// Removes the created rooms empty for `ttl` or longer, as their Redis keys
    /// would expire. Looks only at the due entries: the oldest first, stopping
    /// at the first one not due.
    fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        while let Some((since, _)) = self.empty.first() {
            if now.saturating_duration_since(*since) < ttl {
                break;
            }
            if let Some((_, room)) = self.empty.pop_first() {
                self.created.remove(&room);
            }
        }
    }

    /// Removes a user's record (its mailbox with it) and its deadline, if detached.
    /// The room's member set is left to the caller.
    fn remove_user(&mut self, user: &UserId) -> Option<Entry> {
        let entry = self.users.remove(user)?;
        if let Some(until) = entry.detached_until {
            self.deadlines.remove(&(until, user.clone()));
        }
        Some(entry)
    }

    /// Takes the detached member whose grace ended first, if it ended by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(UserId, Entry)> {
        loop {
            match self.deadlines.first() {
                Some((until, _)) if *until <= now => {}
                _ => return None,
            }
            let (_, user) = self.deadlines.pop_first()?;
            // The index holds exactly the detached records; skip anything else.
            if let Some(entry) = self.users.remove(&user) {
                return Some((user, entry));
            }
        }
    }

    /// The members of `room` but `user`, with their sessions, oldest first.
    fn members_except(&self, room: &RoomId, user: &UserId) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(|m| *m != user)
            .filter_map(|m| self.users.get(m).map(|e| (e.user.clone(), e.session)))
            .collect();
        sort_members(&mut members);
        members
    }
}

/// In-memory rooms and users for a single node.
pub struct MemoryBroker {
    /// Boxed: the maps and the expiry index would make `Broker::Memory` as large
    /// as the boxed Redis engine; one pointer keeps the enum small.
    state: Box<Mutex<State>>,
    /// Where deliveries go (the node's sessions).
    deliveries: Arc<dyn Deliveries>,
    node_id: NodeId,
    ttl: Duration,
    /// The grace of detached members and what their mailboxes hold.
    resume: ResumeSettings,
}

impl MemoryBroker {
    /// An empty engine delivering to `deliveries`; created rooms last `ttl` once
    /// empty; members are detached and resumed as `resume` says.
    pub fn new(
        deliveries: Arc<dyn Deliveries>,
        node_id: NodeId,
        ttl: Duration,
        resume: ResumeSettings,
    ) -> Self {
        Self {
            state: Box::default(),
            deliveries,
            node_id,
            ttl,
            resume,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each operation leaves the maps consistent before it can panic.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Created rooms empty for longer than the TTL vanish, as their Redis keys would.
        state.expire(self.ttl);
        state
    }

    /// Ends the grace of detached members until `cancel`: each whose deadline
    /// passed leaves its room with `user_left` `timeout`, its mailbox dropped.
    pub(super) async fn upkeep(&self, cancel: CancellationToken) {
        if self.resume.grace.is_zero() {
            // Nobody is ever detached.
            cancel.cancelled().await;
            return;
        }
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    self.end_graces(Instant::now());
                }
            }
        }
    }

    /// Removes the detached members whose grace ended by `now`; returns how many.
    fn end_graces(&self, now: Instant) -> usize {
        let mut state = self.lock();
        let mut ended = 0;
        while let Some((user, entry)) = state.pop_due(now) {
            tracing::debug!(user_id = %user, room_id = %entry.room, "resume grace ended");
            let frame = user_left_frame(user.as_str(), entry.room.as_str(), LeaveReason::Timeout);
            let left = envelope::left(user.as_str(), entry.session, &frame);
            self.remove_member(&mut state, &entry.room, &user, &left);
            ended += 1;
        }
        ended
    }

    pub(super) fn join(&self, req: &JoinRequest) -> JoinResult {
        let mut state = self.lock();
        if let Some(max) = req.max_users {
            let set = state.rooms.get(&req.room);
            let others = set.map_or(0, |s| s.len() - usize::from(s.contains(&req.user)));
            if others >= max as usize {
                return JoinResult::Full;
            }
        }
        state.mark_occupied(&req.room);
        let mut replaced = None;
        // A detached old session is replaced as an open one is; its mailbox goes with it.
        if let Some(old) = state.remove_user(&req.user) {
            replaced = Some(old.session);
            self.deliveries.deliver(
                old.room.as_str(),
                req.user.as_str(),
                &envelope::kick(old.session, KickReason::Replaced),
            );
            if old.room != req.room {
                let frame =
                    user_left_frame(req.user.as_str(), old.room.as_str(), LeaveReason::Replaced);
                let left = envelope::left(req.user.as_str(), old.session, &frame);
                self.remove_member(&mut state, &old.room, &req.user, &left);
            }
        }
        let joined = envelope::joined(
            req.user.as_str(),
            req.session,
            &user_joined_frame(&req.user_object()),
        );
        let room = state.rooms.entry(req.room.clone()).or_default();
        room.insert(req.user.clone());
        let others: Vec<UserId> = room.iter().filter(|m| **m != req.user).cloned().collect();
        let mut members = Vec::with_capacity(others.len());
        for m in &others {
            self.deliveries
                .deliver(req.room.as_str(), m.as_str(), &joined);
            if let Some(entry) = state.users.get(m) {
                members.push((entry.user.clone(), entry.session));
            }
        }
        state.users.insert(
            req.user.clone(),
            Entry {
                room: req.room.clone(),
                session: req.session,
                user: req.user_object(),
                // An ordinary join starts a new numbering, at 1.
                stream: req.session,
                digest: req.resume_digest.clone(),
                seq: 0,
                mailbox: VecDeque::new(),
                detached_until: None,
            },
        );
        sort_members(&mut members);
        JoinResult::Joined(Joined { members, replaced })
    }

    /// Takes a member's session over for a new connection (see [`ResumeResult`]):
    /// the room hears nothing; the old session, if still open, is told to close.
    pub(super) fn resume(&self, req: &ResumeRequest) -> ResumeResult {
        let mut state = self.lock();
        let now = Instant::now();
        let Some(entry) = state.users.get_mut(&req.user) else {
            return ResumeResult::Refused;
        };
        if !entry.resumable(req, now, self.resume.hold) {
            return ResumeResult::Refused;
        }
        let previous = std::mem::replace(&mut entry.session, req.session);
        entry.digest.clone_from(&req.new_digest);
        let deadline = entry.detached_until.take();
        let me = entry.user.clone();
        let stream = entry.stream;
        let replay: Vec<String> = entry
            .mailbox
            .iter()
            .filter(|held| held.seq > req.ask.last_seq)
            .map(|held| held.text.clone())
            .collect();
        if let Some(until) = deadline {
            state.deadlines.remove(&(until, req.user.clone()));
        }
        // Aimed at the old session id: the new session ignores it.
        self.deliveries.deliver(
            req.room.as_str(),
            req.user.as_str(),
            &envelope::kick(previous, KickReason::Resumed),
        );
        let members = state.members_except(&req.room, &req.user);
        ResumeResult::Resumed(Resumed {
            me,
            members,
            stream,
            replay,
            previous,
        })
    }

    fn remove_member(&self, state: &mut State, room: &RoomId, user: &UserId, envelope: &str) {
        let Some(set) = state.rooms.get_mut(room) else {
            return;
        };
        set.remove(user);
        for m in set.iter() {
            self.deliveries.deliver(room.as_str(), m.as_str(), envelope);
        }
        if set.is_empty() {
            state.rooms.remove(room);
            state.mark_empty(room);
        }
    }

    pub(super) fn leave(&self, req: &LeaveRequest) -> bool {
        let mut state = self.lock();
        match state.users.get(&req.user) {
            Some(m) if m.session == req.session => {}
            _ => return false,
        }
        state.remove_user(&req.user);
        let frame = user_left_frame(req.user.as_str(), req.room.as_str(), req.reason);
        let left = envelope::left(req.user.as_str(), req.session, &frame);
        self.remove_member(&mut state, &req.room, &req.user, &left);
        true
    }

    /// A connection ended without the member's decision: with a grace the member
    /// stays, detached and silent, until the grace ends; without one it leaves.
    /// Returns whether `req.session` was still the member's.
    pub(super) fn detach(&self, req: &LeaveRequest) -> bool {
        if self.resume.grace.is_zero() {
            return self.leave(req);
        }
        let mut state = self.lock();
        let Some(entry) = state.users.get_mut(&req.user) else {
            return false;
        };
        if entry.session != req.session {
            return false;
        }
        // Detached again (its node died as it dropped): the grace restarts, as on Redis.
        let until = Instant::now() + self.resume.grace;
        let earlier = entry.detached_until.replace(until);
        if let Some(earlier) = earlier {
            state.deadlines.remove(&(earlier, req.user.clone()));
        }
        state.deadlines.insert((until, req.user.clone()));
        true
    }

    /// Numbers `env` for `entry` (the record of `member` in `room`), keeps it in
    /// its mailbox and hands it to the node's sessions.
    fn number_and_deliver(
        &self,
        room: &RoomId,
        member: &str,
        entry: &mut Entry,
        env: &str,
        now: Instant,
        now_ms: u64,
    ) -> Delivery {
        let text = entry.number(env, now, now_ms, &self.resume);
        let delivery = self.deliveries.deliver(room.as_str(), member, &text);
        if delivery == Delivery::Gap {
            // A session saw a `seq` past one it never got: hand it the mailbox (it
            // drops what it has), and have it closed if that still leaves a gap.
            for held in &entry.mailbox {
                self.deliveries.deliver(room.as_str(), member, &held.text);
            }
            self.deliveries.gap_filled(room.as_str(), member);
        }
        delivery
    }

    pub(super) fn relay_to_user(&self, room: &RoomId, target: &str, frame: &str) -> RelayOutcome {
        let mut state = self.lock();
        if !state
            .rooms
            .get(room)
            .is_some_and(|set| set.contains(target))
        {
            return RelayOutcome::NotInRoom;
        }
        let Some(entry) = state.users.get_mut(target) else {
            return RelayOutcome::NotInRoom;
        };
        let env = envelope::frame(frame);
        let now_ms = envelope::now_us() / 1000;
        match self.number_and_deliver(room, target, entry, &env, Instant::now(), now_ms) {
            // The memory engine never loses a count: no frame is ever numbered again.
            Delivery::Taken | Delivery::Gap | Delivery::Renumber { .. } => RelayOutcome::Delivered,
            // Held in the mailbox for the member's resume.
            Delivery::Dropped if entry.detached_until.is_some() || !self.resume.grace.is_zero() => {
                RelayOutcome::Delivered
            }
            Delivery::Dropped => RelayOutcome::NotConnected,
        }
    }

    /// Returns how many members the frame was numbered for (held ones included).
    pub(super) fn relay_to_room(&self, room: &RoomId, sender: &UserId, frame: &str) -> usize {
        let mut state = self.lock();
        let State { rooms, users, .. } = &mut *state;
        let Some(set) = rooms.get(room) else {
            return 0;
        };
        let env = envelope::frame(frame);
        let (now, now_ms) = (Instant::now(), envelope::now_us() / 1000);
        let mut count = 0;
        for m in set.iter().filter(|m| *m != sender) {
            if let Some(entry) = users.get_mut(m) {
                self.number_and_deliver(room, m.as_str(), entry, &env, now, now_ms);
                count += 1;
            }
        }
        count
    }

    pub(super) fn room_members(&self, room: &RoomId) -> Vec<Member> {
        let state = self.lock();
        let mut members: Vec<Member> = state
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|u| state.users.get(u).map(|e| (e.user.clone(), e.session)))
            .collect();
        sort_members(&mut members);
        members
    }

    pub(super) fn room_meta(&self, room: &RoomId) -> Option<RoomMeta> {
        self.lock().created.get(room).map(|c| c.meta.clone())
    }

    pub(super) fn room_info(&self, room: &RoomId) -> Option<RoomInfo> {
        let state = self.lock();
        let count = state.rooms.get(room).map_or(0, BTreeSet::len);
        let meta = state.created.get(room).map(|c| c.meta.clone());
        (count > 0 || meta.is_some()).then_some(RoomInfo { count, meta })
    }

    pub(super) fn create_room(&self, room: &RoomId, meta: &RoomMeta) -> bool {
        let mut state = self.lock();
        if state.rooms.contains_key(room) || state.created.contains_key(room) {
            return false;
        }
        let created = Created {
            meta: meta.clone(),
            empty_since: None,
        };
        state.created.insert(room.clone(), created);
        state.mark_empty(room);
        true
    }

    pub(super) fn close_room(&self, room: &RoomId) -> Option<usize> {
        let mut state = self.lock();
        // Drops the room's expiry entry along with the room.
        state.mark_occupied(room);
        let created = state.created.remove(room).is_some();
        let members = state.rooms.remove(room);
        if !created && members.is_none() {
            return None;
        }
        let mut kicked = 0;
        for user in members.into_iter().flatten() {
            if let Some(entry) = state.remove_user(&user) {
                self.deliveries.deliver(
                    room.as_str(),
                    user.as_str(),
                    &envelope::kick(entry.session, KickReason::Kicked),
                );
                kicked += 1;
            }
        }
        Some(kicked)
    }

    pub(super) fn kick(&self, room: &RoomId, user: &UserId) -> bool {
        let mut state = self.lock();
        let session = match state.users.get(user) {
            Some(entry) if entry.room == *room => entry.session,
            _ => return false,
        };
        state.remove_user(user);
        let frame = user_left_frame(user.as_str(), room.as_str(), LeaveReason::Kicked);
        self.remove_member(
            &mut state,
            room,
            user,
            &envelope::left(user.as_str(), session, &frame),
        );
        self.deliveries.deliver(
            room.as_str(),
            user.as_str(),
            &envelope::kick(session, KickReason::Kicked),
        );
        true
    }

    pub(super) fn list_rooms(&self, cursor: Option<&str>, limit: usize) -> RoomPage {
        let state = self.lock();
        let mut ids: Vec<&RoomId> = state.rooms.keys().chain(state.created.keys()).collect();
        ids.sort();
        ids.dedup();
        let after: Vec<&RoomId> = ids
            .into_iter()
            .filter(|id| cursor.is_none_or(|c| id.as_str() > c))
            .collect();
        let rooms: Vec<(String, usize)> = after
            .iter()
            .take(limit)
            .map(|id| {
                (
                    id.to_string(),
                    state.rooms.get(*id).map_or(0, BTreeSet::len),
                )
            })
            .collect();
        let next_cursor = (after.len() > limit)
            .then(|| rooms.last().map(|(id, _)| id.clone()))
            .flatten();
        RoomPage { rooms, next_cursor }
    }

    pub(super) fn user(&self, user: &UserId) -> Option<UserInfo> {
        self.lock().users.get(user).map(|e| UserInfo {
            user: e.user.clone(),
            node_id: self.node_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::broker::LocalSession;
    use crate::envelope::Envelope;
    use crate::incarnation::RunId;
    use crate::protocol::{Role, User};
    use crate::resume_token::ResumeAsk;

    /// A node whose sessions are a set of connected users: records every delivery,
    /// which a user takes while connected and drops otherwise.
    #[derive(Default)]
    struct Recorder {
        connected: Mutex<HashSet<String>>,
        /// (room, user, text), in delivery order.
        log: Mutex<Vec<(String, String, String)>>,
        /// Users whose next numbered frame comes "past a gap".
        gapped: Mutex<HashSet<String>>,
        /// Calls of `gap_filled`.
        fills: Mutex<usize>,
    }

    impl Recorder {
        fn connect(&self, user: &str) {
            self.connected.lock().unwrap().insert(user.to_owned());
        }

        fn disconnect(&self, user: &str) {
            self.connected.lock().unwrap().remove(user);
        }

        /// What was delivered to `user` since the last call (any room).
        fn take(&self, user: &str) -> Vec<String> {
            let mut log = self.log.lock().unwrap();
            let (mine, rest) = log.drain(..).partition(|(_, u, _)| u == user);
            *log = rest;
            mine.into_iter().map(|(_, _, text)| text).collect()
        }
    }

    impl Deliveries for Recorder {
        fn deliver(&self, room: &str, user: &str, text: &str) -> Delivery {
            let entry = (room.to_owned(), user.to_owned(), text.to_owned());
            self.log.lock().unwrap().push(entry);
            if text.starts_with("S ") && self.gapped.lock().unwrap().remove(user) {
                return Delivery::Gap;
            }
            if self.connected.lock().unwrap().contains(user) {
                Delivery::Taken
            } else {
                Delivery::Dropped
            }
        }
        fn gap_filled(&self, _: &str, _: &str) -> usize {
            *self.fills.lock().unwrap() += 1;
            0
        }
        fn delivered_seq(&self, _: &str, _: &str) -> Option<u64> {
            None
        }
        fn channels(&self) -> Vec<(RoomId, UserId)> {
            Vec::new()
        }
        fn contains_in(&self, _: &str, _: &str) -> bool {
            false
        }
        fn sessions(&self) -> usize {
            0
        }
        fn local_sessions(&self) -> Vec<LocalSession> {
            Vec::new()
        }
        fn rooms(&self) -> Vec<RoomId> {
            Vec::new()
        }
        fn reconcile(&self, _: &RoomId, _: &[(User, SessionId)]) -> usize {
            0
        }
        fn close_expired_run(&self, _: RunId) -> usize {
            0
        }
        fn close_replaced(&self, _: &UserId, _: SessionId) {}
    }

    fn settings(grace: Duration, buffer: usize) -> ResumeSettings {
        ResumeSettings {
            grace,
            buffer,
            hold: Duration::from_secs(3600),
        }
    }

    fn engine_with(resume: ResumeSettings) -> (MemoryBroker, Arc<Recorder>) {
        let node = NodeId::parse("n1").unwrap();
        let recorder = Arc::new(Recorder::default());
        let engine = MemoryBroker::new(recorder.clone(), node, Duration::from_secs(3600), resume);
        (engine, recorder)
    }

    fn engine(ttl: Duration) -> MemoryBroker {
        let node = NodeId::parse("n1").unwrap();
        let resume = settings(Duration::from_secs(20), 256);
        MemoryBroker::new(Arc::new(Recorder::default()), node, ttl, resume)
    }

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    fn uid(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    /// The digest a user's `n`th token would have (any distinct strings do here).
    fn digest(user: &str, n: u32) -> String {
        crate::resume_token::digest(&format!("{user}-{n}"))
    }

    fn join(engine: &MemoryBroker, room: &RoomId, user: &str) -> SessionId {
        let session = SessionId::new();
        let req = JoinRequest {
            room: room.clone(),
            user: uid(user),
            session,
            role: Role::Peer,
            joined_at: "2026-01-01T00:00:00.000Z".into(),
            max_users: None,
            run: RunId::random(),
            resume_digest: digest(user, 0),
        };
        assert!(matches!(engine.join(&req), JoinResult::Joined(_)));
        session
    }

    fn leave_req(
        room: &RoomId,
        user: &str,
        session: SessionId,
        reason: LeaveReason,
    ) -> LeaveRequest {
        LeaveRequest {
            room: room.clone(),
            user: uid(user),
            session,
            reason,
        }
    }

    fn resume_req(room: &RoomId, user: &str, digest: String, last_seq: u64) -> ResumeRequest {
        ResumeRequest {
            room: room.clone(),
            user: uid(user),
            session: SessionId::new(),
            ask: ResumeAsk { digest, last_seq },
            new_digest: crate::resume_token::issue().digest,
            run: RunId::random(),
        }
    }

    /// The `(seq, stream, frame)` of each numbered envelope in `texts`.
    fn numbered(texts: &[String]) -> Vec<(u64, SessionId, String)> {
        texts
            .iter()
            .filter_map(|t| match envelope::parse(t) {
                Some(Envelope::Numbered {
                    seq, stream, frame, ..
                }) => Some((seq, stream, frame.to_owned())),
                _ => None,
            })
            .collect()
    }

    fn seqs(texts: &[String]) -> Vec<u64> {
        numbered(texts).into_iter().map(|(seq, _, _)| seq).collect()
    }

    /// Each member numbers the relayed frames it receives itself: 1, 2, 3, in its
    /// own stream, directed and broadcast alike; the sender gets none.
    #[test]
    fn relayed_frames_are_numbered_per_member() {
        let (e, rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        let carol = join(&e, &r, "carol");
        for u in ["alice", "bob", "carol"] {
            rec.connect(u);
            rec.take(u);
        }
        assert_eq!(e.relay_to_room(&r, &uid("alice"), "{\"n\":1}"), 2);
        assert_eq!(
            e.relay_to_user(&r, "bob", "{\"n\":2}"),
            RelayOutcome::Delivered
        );
        assert_eq!(e.relay_to_room(&r, &uid("alice"), "{\"n\":3}"), 2);
        let to_bob = numbered(&rec.take("bob"));
        let expected: Vec<(u64, SessionId, String)> = (1..=3)
            .map(|n| (n, bob, format!("{{\"n\":{n}}}")))
            .collect();
        assert_eq!(to_bob, expected);
        let to_carol = numbered(&rec.take("carol"));
        assert_eq!(
            to_carol
                .iter()
                .map(|(s, st, _)| (*s, *st))
                .collect::<Vec<_>>(),
            [(1, carol), (2, carol)]
        );
        assert!(rec.take("alice").is_empty());
        assert_eq!(e.relay_to_user(&r, "dave", "{}"), RelayOutcome::NotInRoom);
    }

    /// The mailbox keeps the newest frames up to the buffer, so a resume that needs
    /// an older one is refused, all or nothing.
    #[test]
    fn the_mailbox_keeps_the_newest_frames_up_to_the_buffer() {
        let (e, _rec) = engine_with(settings(Duration::from_secs(20), 3));
        let r = room("r");
        join(&e, &r, "alice");
        join(&e, &r, "bob");
        for n in 1..=5 {
            e.relay_to_user(&r, "bob", &format!("{{\"n\":{n}}}"));
        }
        let held: Vec<u64> = e.lock().users[&uid("bob")]
            .mailbox
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(held, [3, 4, 5]);
        let lost = resume_req(&r, "bob", digest("bob", 0), 1);
        assert!(matches!(e.resume(&lost), ResumeResult::Refused));
        let ResumeResult::Resumed(resumed) = e.resume(&resume_req(&r, "bob", digest("bob", 0), 2))
        else {
            panic!("not resumed")
        };
        assert_eq!(seqs(&resumed.replay), [3, 4, 5]);
    }

    /// Frames older than the hold time leave the mailbox at the next relay, and
    /// never serve a resume.
    #[test]
    fn the_mailbox_drops_frames_older_than_the_hold() {
        let mut resume = settings(Duration::from_secs(20), 100);
        resume.hold = Duration::from_millis(1);
        let (e, _rec) = engine_with(resume);
        let r = room("r");
        join(&e, &r, "bob");
        e.relay_to_user(&r, "bob", "{}");
        std::thread::sleep(Duration::from_millis(5));
        e.relay_to_user(&r, "bob", "{}");
        let held: Vec<u64> = e.lock().users[&uid("bob")]
            .mailbox
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(held, [2]);
        // Frame 2 is past the hold too: a resume that needs it is refused, as the
        // expired mailbox on Redis would refuse it.
        std::thread::sleep(Duration::from_millis(5));
        let req = resume_req(&r, "bob", digest("bob", 0), 1);
        assert!(matches!(e.resume(&req), ResumeResult::Refused));
        let req = resume_req(&r, "bob", digest("bob", 0), 2);
        assert!(matches!(e.resume(&req), ResumeResult::Resumed(_)));
    }

    /// A detached member stays silently; frames to it are accepted and held; its
    /// resume replays exactly those after `last_seq`, keeps the stream, and uses
    /// the token up.
    #[test]
    fn detach_then_resume_replays_exactly_what_the_client_missed() {
        let (e, rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        let alice = join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        rec.connect("alice");
        rec.connect("bob");
        rec.take("alice");
        for n in 1..=2 {
            e.relay_to_user(&r, "bob", &format!("{{\"n\":{n}}}"));
        }
        rec.disconnect("bob");
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        assert!(rec.take("alice").is_empty(), "the room hears nothing");
        assert_eq!(e.room_members(&r).len(), 2);
        assert!(e.user(&uid("bob")).is_some());
        for n in 3..=5 {
            let outcome = e.relay_to_user(&r, "bob", &format!("{{\"n\":{n}}}"));
            assert_eq!(outcome, RelayOutcome::Delivered);
        }
        rec.take("bob");

        let req = resume_req(&r, "bob", digest("bob", 0), 2);
        let ResumeResult::Resumed(resumed) = e.resume(&req) else {
            panic!("not resumed")
        };
        let replay = numbered(&resumed.replay);
        let expected: Vec<(u64, SessionId, String)> = (3..=5)
            .map(|n| (n, bob, format!("{{\"n\":{n}}}")))
            .collect();
        assert_eq!(replay, expected);
        assert_eq!(resumed.stream, bob);
        assert_eq!(resumed.previous, bob);
        assert_eq!(resumed.me.user_id, "bob");
        let members: Vec<(String, SessionId)> = resumed
            .members
            .iter()
            .map(|(u, s)| (u.user_id.clone(), *s))
            .collect();
        assert_eq!(members, [("alice".to_owned(), alice)]);
        // The old session is told to close; nobody else hears a thing.
        assert_eq!(rec.take("bob"), [envelope::kick(bob, KickReason::Resumed)]);
        assert!(rec.take("alice").is_empty());
        {
            let state = e.lock();
            let entry = &state.users[&uid("bob")];
            assert_eq!(entry.session, req.session);
            assert!(entry.detached_until.is_none());
            assert!(state.deadlines.is_empty());
        }
        // The token was single use; the new one works, and numbering goes on.
        let again = resume_req(&r, "bob", digest("bob", 0), 5);
        assert!(matches!(e.resume(&again), ResumeResult::Refused));
        rec.connect("bob");
        e.relay_to_user(&r, "bob", "{}");
        assert_eq!(numbered(&rec.take("bob"))[0].0, 6);
        let next = resume_req(&r, "bob", req.new_digest.clone(), 6);
        let ResumeResult::Resumed(resumed) = e.resume(&next) else {
            panic!("the new token must resume")
        };
        assert!(resumed.replay.is_empty());
        assert_eq!((resumed.stream, resumed.previous), (bob, req.session));
    }

    /// A resume with the wrong token, room or `last_seq`, or after the grace, is
    /// refused and changes nothing.
    #[test]
    fn resume_is_refused_unless_everything_matches() {
        let (e, rec) = engine_with(settings(Duration::from_secs(20), 16));
        let (r, other) = (room("r"), room("other"));
        join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        join(&e, &other, "carol");
        for _ in 0..3 {
            e.relay_to_user(&r, "bob", "{}");
        }
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        rec.take("bob");
        let refused = [
            resume_req(&r, "bob", digest("bob", 9), 0),
            resume_req(&other, "bob", digest("bob", 0), 0),
            resume_req(&r, "bob", digest("bob", 0), 4),
            resume_req(&r, "bob", digest("bob", 0), u64::MAX),
            resume_req(&r, "nobody", digest("nobody", 0), 0),
            resume_req(&other, "carol", String::new(), 0),
        ];
        for req in &refused {
            assert!(matches!(e.resume(req), ResumeResult::Refused), "{req:?}");
        }
        assert!(rec.take("bob").is_empty());
        {
            let state = e.lock();
            let entry = &state.users[&uid("bob")];
            assert_eq!((entry.session, entry.seq, entry.mailbox.len()), (bob, 3, 3));
            assert!(entry.detached_until.is_some());
            assert_eq!(state.deadlines.len(), 1);
        }
        // Past its deadline (upkeep not run yet) the member cannot be resumed either.
        {
            let mut state = e.lock();
            let past = Instant::now() - Duration::from_millis(1);
            state.deadlines.clear();
            state.deadlines.insert((past, uid("bob")));
            if let Some(entry) = state.users.get_mut(&uid("bob")) {
                entry.detached_until = Some(past);
            }
        }
        let late = resume_req(&r, "bob", digest("bob", 0), 3);
        assert!(matches!(e.resume(&late), ResumeResult::Refused));
        // With everything right, and `last_seq` = seq, it goes through with nothing to replay.
        e.lock().deadlines.clear();
        if let Some(entry) = e.lock().users.get_mut(&uid("bob")) {
            entry.detached_until = None;
        }
        let ok = resume_req(&r, "bob", digest("bob", 0), 3);
        let ResumeResult::Resumed(resumed) = e.resume(&ok) else {
            panic!("an open session must be resumable")
        };
        assert!(resumed.replay.is_empty());
    }

    /// Without a grace a detach is a leave: `user_left` at once with the reason
    /// given, and a frame to a member nobody holds is not connected.
    #[test]
    fn without_a_grace_detach_is_a_leave() {
        let (e, rec) = engine_with(settings(Duration::ZERO, 16));
        let r = room("r");
        join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        rec.connect("alice");
        rec.take("alice");
        assert_eq!(e.relay_to_user(&r, "bob", "{}"), RelayOutcome::NotConnected);
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        let frame = user_left_frame("bob", "r", LeaveReason::Timeout);
        assert_eq!(rec.take("alice"), [envelope::left("bob", bob, &frame)]);
        assert_eq!(e.room_members(&r).len(), 1);
        assert!(e.user(&uid("bob")).is_none());
        assert!(!e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        let req = resume_req(&r, "bob", digest("bob", 0), 0);
        assert!(matches!(e.resume(&req), ResumeResult::Refused));
    }

    /// With a grace, a frame to a member whose connection is not (yet) known to be
    /// gone is still accepted: it is held for the member's resume.
    #[test]
    fn with_a_grace_frames_to_an_unheld_member_are_accepted() {
        let (e, _rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        join(&e, &r, "alice");
        join(&e, &r, "bob");
        assert_eq!(e.relay_to_user(&r, "bob", "{}"), RelayOutcome::Delivered);
        assert_eq!(e.relay_to_room(&r, &uid("alice"), "{}"), 1);
        assert_eq!(e.lock().users[&uid("bob")].mailbox.len(), 2);
    }

    /// Only the member's current session detaches it.
    #[test]
    fn a_stale_session_cannot_detach_the_member() {
        let (e, _rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        let old = join(&e, &r, "bob");
        join(&e, &r, "bob");
        assert!(!e.detach(&leave_req(&r, "bob", old, LeaveReason::Timeout)));
        assert!(e.lock().deadlines.is_empty());
    }

    /// A second detach of the same session restarts the grace, keeping one deadline.
    #[test]
    fn a_second_detach_restarts_the_grace() {
        let (e, _rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        let bob = join(&e, &r, "bob");
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        let first = e.lock().users[&uid("bob")].detached_until;
        std::thread::sleep(Duration::from_millis(2));
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Shutdown)));
        let state = e.lock();
        let second = state.users[&uid("bob")].detached_until;
        assert!(second > first);
        assert_eq!(state.deadlines.len(), 1);
        assert_eq!(state.deadlines.first().map(|(t, _)| Some(*t)), Some(second));
    }

    /// Kicking, replacing or closing the room of a detached member drops it with
    /// its deadline; a new join starts a new numbering at 1.
    #[test]
    fn removing_a_detached_member_drops_its_deadline() {
        let (e, rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        e.relay_to_user(&r, "bob", "{}");
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        assert!(e.kick(&r, &uid("bob")));
        assert!(e.lock().deadlines.is_empty());
        assert!(e.user(&uid("bob")).is_none());

        // Replaced in the same room: a kick to the old session, no user_left.
        let bob = join(&e, &r, "bob");
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        rec.connect("alice");
        rec.take("alice");
        rec.take("bob");
        let newer = join(&e, &r, "bob");
        assert!(e.lock().deadlines.is_empty());
        assert_eq!(rec.take("bob"), [envelope::kick(bob, KickReason::Replaced)]);
        let to_alice = rec.take("alice");
        assert_eq!(to_alice.len(), 1);
        assert!(to_alice[0].starts_with("J bob "));
        rec.connect("bob");
        e.relay_to_user(&r, "bob", "{}");
        let n = numbered(&rec.take("bob"));
        assert_eq!((n[0].0, n[0].1), (1, newer));

        assert!(e.detach(&leave_req(&r, "bob", newer, LeaveReason::Timeout)));
        assert_eq!(e.close_room(&r), Some(2));
        assert!(e.lock().deadlines.is_empty() && e.lock().users.is_empty());
    }

    /// A session that reports a gap gets the whole mailbox handed over, in order,
    /// then is told the fill is done; the relay still counts as delivered.
    #[test]
    fn a_gap_is_filled_from_the_mailbox() {
        let (e, rec) = engine_with(settings(Duration::from_secs(20), 16));
        let r = room("r");
        join(&e, &r, "bob");
        rec.connect("bob");
        e.relay_to_user(&r, "bob", "{}");
        e.relay_to_user(&r, "bob", "{}");
        assert_eq!(*rec.fills.lock().unwrap(), 0);
        rec.gapped.lock().unwrap().insert("bob".to_owned());
        assert_eq!(e.relay_to_user(&r, "bob", "{}"), RelayOutcome::Delivered);
        assert_eq!(seqs(&rec.take("bob")), [1, 2, 3, 1, 2, 3]);
        assert_eq!(*rec.fills.lock().unwrap(), 1);
    }

    /// Upkeep ends the grace: the room hears `user_left` `timeout`, the member and
    /// its mailbox are gone, and it can no longer be resumed.
    #[tokio::test]
    async fn upkeep_removes_a_detached_member_after_the_grace() {
        let grace = Duration::from_millis(200);
        let (e, rec) = engine_with(settings(grace, 16));
        let e = Arc::new(e);
        let cancel = CancellationToken::new();
        let upkeep = tokio::spawn({
            let (e, cancel) = (e.clone(), cancel.clone());
            async move { e.upkeep(cancel).await }
        });
        let r = room("r");
        join(&e, &r, "alice");
        let bob = join(&e, &r, "bob");
        rec.connect("alice");
        rec.take("alice");
        e.relay_to_user(&r, "bob", "{}");
        let detached_at = Instant::now();
        assert!(e.detach(&leave_req(&r, "bob", bob, LeaveReason::Timeout)));
        let left = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let got = rec.take("alice");
                if !got.is_empty() {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("no user_left within 5 s");
        assert!(detached_at.elapsed() >= grace);
        let frame = user_left_frame("bob", "r", LeaveReason::Timeout);
        assert_eq!(left, [envelope::left("bob", bob, &frame)]);
        assert_eq!(e.room_members(&r).len(), 1);
        assert!(e.user(&uid("bob")).is_none());
        assert!(e.lock().deadlines.is_empty());
        let req = resume_req(&r, "bob", digest("bob", 0), 0);
        assert!(matches!(e.resume(&req), ResumeResult::Refused));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), upkeep)
            .await
            .expect("upkeep did not stop")
            .expect("upkeep panicked");
    }

    #[test]
    fn created_rooms_expire_only_after_being_empty_for_the_ttl() {
        let ttl = Duration::from_millis(300);
        let e = engine(ttl);
        let (kept, idle) = (room("kept"), room("idle"));
        assert!(e.create_room(&kept, &RoomMeta::default()));
        assert!(e.create_room(&idle, &RoomMeta::default()));
        let session = join(&e, &kept, "alice");
        std::thread::sleep(ttl + Duration::from_millis(50));
        // Never joined: gone. Occupied: kept, however long.
        assert!(e.room_meta(&idle).is_none());
        assert!(e.room_meta(&kept).is_some());
        assert!(e.leave(&leave_req(&kept, "alice", session, LeaveReason::Left)));
        // Counted from when it became empty, not from its creation.
        std::thread::sleep(ttl / 2);
        assert!(e.room_meta(&kept).is_some());
        std::thread::sleep(ttl / 2 + Duration::from_millis(50));
        assert!(e.room_meta(&kept).is_none());
        assert!(e.lock().empty.is_empty());
        // Its id is free again.
        assert!(e.create_room(&kept, &RoomMeta::default()));
    }

    #[test]
    fn the_expiry_index_holds_exactly_the_empty_created_rooms() {
        let e = engine(Duration::from_secs(3600));
        let (a, b) = (room("a"), room("b"));
        assert!(e.create_room(&a, &RoomMeta::default()));
        assert!(e.create_room(&b, &RoomMeta::default()));
        assert_eq!(e.lock().empty.len(), 2);
        join(&e, &a, "alice");
        assert_eq!(e.lock().empty.len(), 1);
        assert_eq!(e.close_room(&b), Some(0));
        assert!(e.lock().empty.is_empty());
        assert_eq!(e.close_room(&a), Some(1));
        assert!(e.lock().empty.is_empty() && e.lock().created.is_empty());
    }

    /// Before the index, every operation scanned every created room: with 20,000
    /// of them a relay cost about a millisecond. Now it must not depend on their number.
    #[test]
    fn operations_do_not_scale_with_created_rooms() {
        fn relay_time(e: &MemoryBroker) -> Duration {
            let (r, sender) = (room("busy"), UserId::parse("alice").unwrap());
            join(e, &r, "alice");
            join(e, &r, "bob");
            let start = Instant::now();
            for _ in 0..1_000 {
                e.relay_to_room(&r, &sender, "{}");
                e.relay_to_user(&r, "bob", "{}");
            }
            start.elapsed()
        }
        let baseline = relay_time(&engine(Duration::from_secs(3600)));
        let crowded = engine(Duration::from_secs(3600));
        for i in 0..20_000 {
            assert!(crowded.create_room(&room(&format!("c{i}")), &RoomMeta::default()));
        }
        let loaded = relay_time(&crowded);
        assert!(
            loaded < baseline * 20 + Duration::from_millis(500),
            "2,000 relays took {loaded:?} beside 20,000 created rooms, {baseline:?} without"
        );
    }
}
