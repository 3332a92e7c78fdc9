//! The keys each script call touches, in one place: the engine passes exactly these
//! lists as `KEYS`, and the tests below prove that every list lies in ONE hash slot
//! (what Redis Cluster demands of a script, and what makes each step atomic there).
//! An operation that needs several slots is a sequence of these calls, ordered in
//! the engine (`mod.rs`) so that a crash between two steps never loses a member.

use super::keys::Keys;

/// A join's room step (join_room.lua), a leave's (leave_room.lua) and a resume's
/// (resume_room.lua): the room's keys and the user's mailbox.
pub(super) fn join_room(k: &Keys, room: &str, user: &str) -> Vec<String> {
    vec![
        k.room(room),
        k.room_members(room),
        k.room_meta(room),
        k.room_seq(room),
        k.mailbox(room, user),
    ]
}

/// A room's closing (close_room.lua).
pub(super) fn close_room(k: &Keys, room: &str) -> Vec<String> {
    vec![
        k.room(room),
        k.room_members(room),
        k.room_meta(room),
        k.room_seq(room),
    ]
}

/// A detach (detach_room.lua): the room's member records.
pub(super) fn detach_room(k: &Keys, room: &str) -> Vec<String> {
    vec![k.room_members(room)]
}

/// A join's user step (claim_user.lua), a leave's (leave_user.lua) and a restore's
/// (move_user.lua, which a resume uses too).
pub(super) fn user(k: &Keys, user: &str) -> Vec<String> {
    vec![k.user(user), k.user_claim(user)]
}

/// A restore's room step (restore_room.lua).
pub(super) fn restore_room(k: &Keys, room: &str) -> Vec<String> {
    vec![k.room(room), k.room_members(room), k.room_seq(room)]
}

/// A directed relay (relay.lua): the room's set, records and counters, the
/// target's mailbox and channel.
pub(super) fn relay(k: &Keys, room: &str, target: &str) -> Vec<String> {
    vec![
        k.room(room),
        k.room_members(room),
        k.room_seq(room),
        k.mailbox(room, target),
        k.user_channel(room, target),
    ]
}

/// A burst of relays (relay_burst.lua): the room's set, records and counters
/// (members' mailboxes and channels are named from the room's prefixes, in its slot).
pub(super) fn burst(k: &Keys, room: &str) -> Vec<String> {
    vec![k.room(room), k.room_members(room), k.room_seq(room)]
}

/// A sealed broadcast (broadcast_sealed.lua): the room's set, records and
/// counters, then each member's channel and mailbox.
pub(super) fn broadcast_sealed<'a>(
    k: &Keys,
    room: &str,
    members: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut keys = burst(k, room);
    for m in members {
        keys.push(k.user_channel(room, m));
        keys.push(k.mailbox(room, m));
    }
    keys
}

/// A room's creation (create_room.lua).
pub(super) fn create_room(k: &Keys, room: &str) -> Vec<String> {
    vec![k.room_meta(room), k.room(room)]
}

/// A run's heartbeat (heartbeat.lua): the node's heartbeat, the run's dead
/// marker and its sessions hash.
pub(super) fn heartbeat(k: &Keys, node: &str, run: &str) -> Vec<String> {
    vec![
        k.node(node),
        k.run_dead(node, run),
        k.run_sessions(node, run),
    ]
}

/// A run's clean shutdown (deregister.lua).
pub(super) fn deregister(k: &Keys, node: &str, run: &str) -> Vec<String> {
    vec![k.node(node), k.run_sessions(node, run)]
}

/// The claim of a dead run (claim_dead.lua).
pub(super) fn claim_dead(k: &Keys, node: &str, run: &str) -> Vec<String> {
    vec![
        k.node(node),
        k.run_sessions(node, run),
        k.run_dead(node, run),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redis::keys::slot;

    /// Every script call the engine makes, with ids that stress the layout.
    fn every_call(k: &Keys) -> Vec<(&'static str, Vec<String>)> {
        let (room, user) = ("r-1.x", "u_2");
        vec![
            ("join_room", join_room(k, room, user)),
            ("close_room", close_room(k, room)),
            ("detach_room", detach_room(k, room)),
            ("user", user_keys(k, user)),
            ("restore_room", restore_room(k, room)),
            ("relay", relay(k, room, user)),
            ("burst", burst(k, room)),
            (
                "broadcast_sealed",
                broadcast_sealed(k, room, ["a", "b", "nodes"]),
            ),
            ("create_room", create_room(k, room)),
            ("heartbeat", heartbeat(k, "node-1", "0a1b2c3d4e5f")),
            ("deregister", deregister(k, "node-1", "0a1b2c3d4e5f")),
            ("claim_dead", claim_dead(k, "node.2", "0a1b2c3d4e5f")),
        ]
    }

    fn user_keys(k: &Keys, u: &str) -> Vec<String> {
        user(k, u)
    }

    #[test]
    fn every_script_call_touches_one_slot() {
        for prefix in ["signal:", "x:{no}:"] {
            let k = Keys::new(prefix);
            for (name, keys) in every_call(&k) {
                let slots: Vec<u16> = keys.iter().map(|key| slot(key)).collect();
                assert!(
                    slots.windows(2).all(|w| w[0] == w[1]),
                    "{name} mixes slots: {keys:?} -> {slots:?}"
                );
            }
        }
    }
}
