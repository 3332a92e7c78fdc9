//! The standalone engine: the cluster's semantics in one process. Every operation
//! takes one lock and delivers through the node's delivery handler while holding it, which gives
//! the same atomicity and per-sender order as the Lua scripts give on Redis.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    sort_members, Deliveries, JoinRequest, JoinResult, Joined, LeaveRequest, Member, RelayOutcome,
    RoomInfo, RoomMeta, RoomPage,
};
use crate::envelope::{self, KickReason};
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::protocol::{user_joined_frame, user_left_frame, LeaveReason, User, UserInfo};

struct Entry {
    room: RoomId,
    session: SessionId,
    user: User,
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
}

impl MemoryBroker {
    /// An empty engine delivering to `deliveries`; created rooms last `ttl` once empty.
    pub fn new(deliveries: Arc<dyn Deliveries>, node_id: NodeId, ttl: Duration) -> Self {
        Self {
            state: Box::default(),
            deliveries,
            node_id,
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each operation leaves the maps consistent before it can panic.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Created rooms empty for longer than the TTL vanish, as their Redis keys would.
        state.expire(self.ttl);
        state
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
        if let Some(old) = state.users.remove(&req.user) {
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
            },
        );
        sort_members(&mut members);
        JoinResult::Joined(Joined { members, replaced })
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
        state.users.remove(&req.user);
        let frame = user_left_frame(req.user.as_str(), req.room.as_str(), req.reason);
        let left = envelope::left(req.user.as_str(), req.session, &frame);
        self.remove_member(&mut state, &req.room, &req.user, &left);
        true
    }

    pub(super) fn relay_to_user(&self, room: &RoomId, target: &str, frame: &str) -> RelayOutcome {
        let state = self.lock();
        if !state
            .rooms
            .get(room)
            .is_some_and(|set| set.contains(target))
        {
            return RelayOutcome::NotInRoom;
        }
        if self
            .deliveries
            .deliver(room.as_str(), target, &envelope::frame(frame))
        {
            RelayOutcome::Delivered
        } else {
            RelayOutcome::NotConnected
        }
    }

    pub(super) fn relay_to_room(&self, room: &RoomId, sender: &UserId, frame: &str) -> usize {
        let state = self.lock();
        let Some(set) = state.rooms.get(room) else {
            return 0;
        };
        let env = envelope::frame(frame);
        set.iter()
            .filter(|m| *m != sender)
            .filter(|m| self.deliveries.deliver(room.as_str(), m.as_str(), &env))
            .count()
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
            if let Some(entry) = state.users.remove(&user) {
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
        state.users.remove(user);
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
    use super::*;
    use crate::broker::LocalSession;
    use crate::incarnation::RunId;
    use crate::protocol::{Role, User};

    /// A node without sessions: every delivery finds nobody, like an empty registry.
    struct NoSessions;

    impl Deliveries for NoSessions {
        fn deliver(&self, _: &str, _: &str, _: &str) -> bool {
            false
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

    fn engine(ttl: Duration) -> MemoryBroker {
        let node = NodeId::parse("n1").unwrap();
        MemoryBroker::new(Arc::new(NoSessions), node, ttl)
    }

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    fn join(engine: &MemoryBroker, room: &RoomId, user: &str) -> SessionId {
        let session = SessionId::new();
        let req = JoinRequest {
            room: room.clone(),
            user: UserId::parse(user).unwrap(),
            session,
            role: Role::Peer,
            joined_at: "2026-01-01T00:00:00.000Z".into(),
            max_users: None,
            run: crate::incarnation::RunId::random(),
        };
        assert!(matches!(engine.join(&req), JoinResult::Joined(_)));
        session
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
        let leave = LeaveRequest {
            room: kept.clone(),
            user: UserId::parse("alice").unwrap(),
            session,
            reason: LeaveReason::Left,
        };
        assert!(e.leave(&leave));
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
