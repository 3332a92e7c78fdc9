//! The standalone engine: the cluster's semantics in one process. Every operation
//! takes one lock and delivers through the registry while holding it, which gives
//! the same atomicity and per-sender order as the Lua scripts give on Redis.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{sort_members, JoinRequest, Joined, LeaveRequest, Member, RelayOutcome};
use crate::envelope::{self, KickReason};
use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::protocol::{user_joined_frame, user_left_frame, LeaveReason, User, UserInfo};
use crate::registry::Registry;

struct Entry {
    room: RoomId,
    session: SessionId,
    user: User,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomId, BTreeSet<UserId>>,
    users: HashMap<UserId, Entry>,
}

/// In-memory rooms and users for a single node.
pub struct MemoryBroker {
    state: Mutex<State>,
    registry: Arc<Registry>,
    node_id: NodeId,
}

impl MemoryBroker {
    /// An empty engine delivering to `registry`.
    pub fn new(registry: Arc<Registry>, node_id: NodeId) -> Self {
        Self {
            state: Mutex::default(),
            registry,
            node_id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each operation leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn join(&self, req: &JoinRequest) -> Joined {
        let mut state = self.lock();
        let mut replaced = None;
        if let Some(old) = state.users.remove(&req.user) {
            replaced = Some(old.session);
            self.registry.deliver(
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
            self.registry.deliver(m.as_str(), &joined);
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
        Joined { members, replaced }
    }

    fn remove_member(&self, state: &mut State, room: &RoomId, user: &UserId, envelope: &str) {
        let Some(set) = state.rooms.get_mut(room) else {
            return;
        };
        set.remove(user);
        for m in set.iter() {
            self.registry.deliver(m.as_str(), envelope);
        }
        if set.is_empty() {
            state.rooms.remove(room);
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
        if self.registry.deliver(target, &envelope::frame(frame)) {
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
            .filter(|m| self.registry.deliver(m.as_str(), &env))
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

    pub(super) fn user(&self, user: &UserId) -> Option<UserInfo> {
        self.lock().users.get(user).map(|e| UserInfo {
            user: e.user.clone(),
            node_id: self.node_id.to_string(),
        })
    }
}
